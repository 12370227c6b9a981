"""FHIR R4 REST at /fhir: one module per resource type, OperationOutcome errors."""
