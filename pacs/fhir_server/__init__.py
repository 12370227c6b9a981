"""FHIR R4 REST at /fhir: one module per resource type, OperationOutcome errors."""

from pacs.fhir_server.api import router

__all__ = ["router"]
