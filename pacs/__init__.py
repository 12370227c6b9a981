"""Hospital imaging system: PACS archive, RIS front desk and HL7/FHIR interface engine."""

__version__ = "0.1.0"
