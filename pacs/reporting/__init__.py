"""Radiology reports: the reading worklist, drafts, signing and verification, and what a signed
report becomes (PDF, HL7 ORU^R01, FHIR DiagnosticReport, DICOM SR in the archive)."""
