"""Audit entries for the HTTP side: an ASGI middleware that records who read, searched or stored
what over DICOMweb, FHIR and the JSON API, from the request and its response status, without
the routers knowing about it.

| request | entry |
|---|---|
| QIDO-RS, FHIR and API searches | Query (110112, E) with the query string |
| WADO-RS (study, series, instance, metadata, frames, rendered, thumbnails) | DICOM Instances Accessed (110103, R) |
| STOW-RS | DICOM Instances Transferred (110104, C) with the studies stored |
| FHIR Patient read, API message read | Patient Record (110110, R) |
| FHIR ServiceRequest read, API order read | Order Record (110109, R); check-in: U |
| FHIR ImagingStudy read | DICOM Instances Accessed (110103, R) |
| /api/audit | Audit Log Used (110101, R) |

FHIR creates and updates go through the interface engine's channel, which audits them as patient
and order record changes. A viewer fetching a study's frames one request at a time makes one
entry per study and client within ``[audit] coalesce_seconds``. A route that records its own
entry sets ``request.state.audited = True`` and the middleware records nothing for it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qsl, unquote

from pacs.audit import codes
from pacs.audit.codes import Action, Code, Outcome
from pacs.audit.service import Auditor, Event

UID = r"[0-9.]+"
STUDY_PATH = re.compile(rf"^/dicomweb/studies/({UID})(?:/series/({UID}))?(?:/instances/({UID}))?(/.*)?$")
SEARCH_TAIL = re.compile(r"/(studies|series|instances)$")
FHIR_READ = re.compile(r"^/fhir/([A-Za-z]+)/([^/]+)$")
FHIR_SEARCH = re.compile(r"^/fhir/([A-Za-z]+)$")
API_ORDER = re.compile(r"^/api/orders/(\d+)(/arrive)?$")
API_MESSAGE = re.compile(r"^/api/messages/(\d+)$")
STOW_BODY_LIMIT = 4 * 1024 * 1024
RETRIEVE_URL = re.compile(rf"/studies/({UID})")


def _outcome(status: int) -> int:
    if status < 400 and status != 202:
        return Outcome.SUCCESS
    return Outcome.SERIOUS_FAILURE if status >= 500 else Outcome.MINOR_FAILURE


class Rule:
    """What a request is, in the audit vocabulary."""

    def __init__(self, event_id: Code, action: Action, *, studies: list[str] | None = None,
                 patients: list[str] | None = None, fhir: tuple[str, str] | None = None, query: bool = False,
                 capture_body: bool = False, coalesce: bool = False, kind: str = ""):
        self.event_id, self.action = event_id, action
        self.studies, self.patients = studies or [], patients or []
        self.fhir, self.query, self.capture_body, self.coalesce = fhir, query, capture_body, coalesce
        self.kind = kind


def classify(method: str, path: str, params: list[tuple[str, str]]) -> Rule | None:
    """The audit rule for a request, or None for requests that touch no patient data."""
    if path.startswith("/dicomweb"):
        match = STUDY_PATH.match(path)
        if method == "POST" and (path == "/dicomweb/studies" or (match and not match.group(2))):
            return Rule(codes.INSTANCES_TRANSFERRED, Action.CREATE, studies=[match.group(1)] if match else [],
                        capture_body=True, kind="STOW-RS")
        if method != "GET":
            return None
        if SEARCH_TAIL.search(path):
            patients = [v for k, v in params if k in ("PatientID", "00100020") and v and "*" not in v]
            return Rule(codes.QUERY, Action.EXECUTE, studies=[match.group(1)] if match else [], patients=patients,
                        query=True, kind="QIDO-RS")
        if match:
            return Rule(codes.INSTANCES_ACCESSED, Action.READ, studies=[match.group(1)], coalesce=True, kind="WADO-RS")
        return None
    if path.startswith("/fhir"):
        if method != "GET" or path in ("/fhir/metadata", "/fhir"):
            return None
        read = FHIR_READ.match(path)
        if read:
            kind, logical = read.groups()
            event = {"Patient": codes.PATIENT_RECORD, "ServiceRequest": codes.ORDER_RECORD,
                     "ImagingStudy": codes.INSTANCES_ACCESSED}.get(kind)
            return Rule(event, Action.READ, fhir=(kind, logical), coalesce=True, kind=f"FHIR {kind} read") \
                if event else None
        search = FHIR_SEARCH.match(path)
        if search and search.group(1) != "Endpoint":
            patients = [v.rsplit("|", 1)[-1] for k, v in params if k == "identifier" and search.group(1) == "Patient"]
            return Rule(codes.QUERY, Action.EXECUTE, patients=patients, query=True, kind=f"FHIR {search.group(1)} search")
        return None
    if path.startswith("/api/"):
        if path.startswith("/api/audit"):
            return Rule(codes.AUDIT_LOG_USED, Action.READ, query=True, kind="audit log")
        order = API_ORDER.match(path)
        if order:
            if order.group(2) and method == "POST":
                return Rule(codes.ORDER_RECORD, Action.UPDATE, fhir=("ServiceRequest", order.group(1)), kind="check-in")
            return Rule(codes.ORDER_RECORD, Action.READ, fhir=("ServiceRequest", order.group(1)), kind="order") \
                if method == "GET" else None
        message = API_MESSAGE.match(path)
        if message and method == "GET":
            return Rule(codes.PATIENT_RECORD, Action.READ, fhir=("Message", message.group(1)), kind="HL7 message")
        if method == "GET" and path.rstrip("/") in ("/api/orders", "/api/messages", "/api/outbox"):
            patients = [v for k, v in params if k == "patient_id" and v]
            return Rule(codes.QUERY, Action.EXECUTE, patients=patients, query=True, kind=path.rstrip("/"))
    return None


class AuditMiddleware:
    """ASGI middleware: records one audit entry per request that touches patient data."""

    def __init__(self, app: Any, auditor: Auditor) -> None:
        self.app = app
        self.auditor = auditor
        self._recent: OrderedDict[tuple[str, ...], float] = OrderedDict()
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        query_string = scope.get("query_string", b"").decode("latin-1")
        params = parse_qsl(query_string, keep_blank_values=True)
        rule = classify(method, path, params)
        if rule is None:
            await self.app(scope, receive, send)
            return
        status = 500
        body = bytearray()

        async def recording_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and rule.capture_body and len(body) < STOW_BODY_LIMIT:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if not (scope.get("state") or {}).get("audited"):
                try:
                    self._record(scope, rule, status, method, path, query_string, bytes(body))
                except Exception:  # auditing never fails the request
                    import logging

                    logging.getLogger("pacs.audit").exception("HTTP request not audited")

    def _record(self, scope: dict[str, Any], rule: Rule, status: int, method: str, path: str, query: str,
                body: bytes) -> None:
        client = scope.get("client") or ("", 0)
        address = str(client[0] or "")
        state = scope.get("state") or {}
        user = str(state.get("user") or address)
        if rule.coalesce and status < 400:
            key = (rule.event_id.value, user, address, *rule.studies, *(rule.fhir or ()))
            if self._seen(key):
                return
        studies = list(rule.studies)
        stored = 0
        if rule.capture_body and body:
            try:
                data = json.loads(body)
                referenced = (data.get("00081199") or {}).get("Value") or []
                stored = len(referenced)
                for item in referenced:
                    url = ((item.get("00081190") or {}).get("Value") or [""])[0]
                    found = RETRIEVE_URL.search(url)
                    if found:
                        studies.append(found.group(1))
            except (ValueError, AttributeError):
                pass
        details: dict[str, Any] = {"service": rule.kind, "method": method, "path": path, "status": status}
        if rule.query:
            details["query"] = unquote(query)
        if rule.capture_body:
            details["instances"] = stored
        event = Event(rule.event_id, rule.action, _outcome(status), user=user,
                      user_kind="user" if state.get("user") else "http", address=address,
                      patients=list(rule.patients), studies=list(dict.fromkeys(studies)), fhir=rule.fhir,
                      resolve_patients=bool(studies), details=details,
                      description=f"{rule.kind}: {method} {path}{'?' + query if query else ''} → {status}"[:500])
        self.auditor.record(event)

    def _seen(self, key: tuple[str, ...]) -> bool:
        window = float(getattr(self.auditor.settings.audit, "coalesce_seconds", 60.0))
        now = time.monotonic()
        with self._lock:
            last = self._recent.get(key)
            if last is not None and now - last < window:
                return True
            self._recent[key] = now
            self._recent.move_to_end(key)
            while len(self._recent) > 10000:
                self._recent.popitem(last=False)
        return False
