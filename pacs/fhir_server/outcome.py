"""OperationOutcome (FHIR R4 §2.36 / http.html#2.21.0.17 status codes) for every error answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from pacs.integration.ack import AckCode, ErrorCode, MessageError

FHIR_JSON = "application/fhir+json"

# HL7 table 0357 error → (HTTP status, FHIR issue type, value set IssueType)
HTTP_FOR_ERROR: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.REQUIRED_FIELD_MISSING: (422, "required"),
    ErrorCode.DATA_TYPE_ERROR: (422, "value"),
    ErrorCode.TABLE_VALUE_NOT_FOUND: (422, "code-invalid"),
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: (422, "not-found"),
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: (409, "duplicate"),
    ErrorCode.APPLICATION_INTERNAL_ERROR: (409, "conflict"),
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: (400, "not-supported"),
    ErrorCode.SEGMENT_SEQUENCE_ERROR: (400, "structure"),
}


def operation_outcome(
    diagnostics: str,
    *,
    code: str = "invalid",
    severity: str = "error",
    expression: str | None = None,
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def for_error(error: MessageError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OperationOutcome for a message error."""
    status, code = HTTP_FOR_ERROR.get(error.code, (400 if error.ack == AckCode.REJECT else 422, "invalid"))
    if error.ack == AckCode.REJECT and status == 422:
        status = 400
    expression = error.location if isinstance(error.location, str) else None
    return status, operation_outcome(error.text, code=code, expression=expression)


# HTTP status → the IssueType (valueset-issue-type) of an error no resource handler described
ISSUE_FOR_STATUS: dict[int, str] = {
    400: "invalid",
    401: "login",  # the client must authenticate (FHIR R4 issue-type)
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    500: "exception",
}


def response(status: int, diagnostics: str, *, code: str = "invalid", expression: str | None = None,
             severity: str = "error", headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        operation_outcome(diagnostics, code=code, expression=expression, severity=severity),
        status_code=status, media_type=FHIR_JSON, headers=dict(headers or {}),
    )
