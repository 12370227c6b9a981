"""Audit entries for the DICOM front end, without touching its handlers.

:meth:`DicomAudit.wrap` takes the AE's handler bindings and wraps the intervention handlers
(C-STORE, C-FIND, C-MOVE, C-GET) so that the handlers stay thin and unaware of auditing:

- C-STORE: one "DICOM Instances Transferred" (110104, C) per association, when its connection
  closes, with every study and patient it brought (resolved from the index) and the SOP classes
  and counts per study: never an entry per instance;
- C-FIND: one "Query" (110112) per request, with the identifier as sent (PS3.15 A.5.3.12) and
  the number of matches;
- C-MOVE and C-GET: one "DICOM Instances Transferred" (110104, R) per request, with the
  destination, the studies and patients sent and the sub-operations the receiver acknowledged;
- MPPS N-CREATE and N-SET: "Procedure Record" (110111), C and U.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import evt

from pacs.archive.query import elements, keyword_of
from pacs.audit import codes
from pacs.audit.codes import Action, Outcome
from pacs.audit.service import Auditor, Event

log = logging.getLogger("pacs.audit")

PENDING = (0xFF00, 0xFF01)
CANCEL = 0xFE00
SUCCESS_OR_WARNING = (0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007)


def _status(value: Any) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(value.Status)
    except Exception:
        return 0xC000


def _peer(event: evt.Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return requestor.ae_title.strip(), str(requestor.address or "")


def _failure_outcome(status: int | None) -> int:
    if status is None or status in (0x0000, CANCEL) or 0xB000 <= status <= 0xBFFF:
        return Outcome.SUCCESS
    if status in (0xC001, 0xC511, 0xA700):  # unable to process, a fault of ours, out of resources
        return Outcome.SERIOUS_FAILURE
    return Outcome.MINOR_FAILURE


@dataclass
class Transfer:
    """What one association stored."""

    user: str
    address: str
    called: str
    instances: list[str] = field(default_factory=list)
    failed: int = 0


class DicomAudit:
    def __init__(self, auditor: Auditor) -> None:
        self.auditor = auditor
        self._transfers: dict[int, Transfer] = {}
        self._lock = threading.Lock()

    def wrap(self, bindings: list[Any]) -> list[Any]:
        """The same bindings with C-STORE, C-FIND, C-MOVE and C-GET audited."""
        wrappers: dict[Any, Callable[..., Any]] = {
            evt.EVT_C_STORE: self._store, evt.EVT_C_FIND: self._find,
            evt.EVT_C_MOVE: self._move, evt.EVT_C_GET: self._get,
            evt.EVT_N_CREATE: self._mpps, evt.EVT_N_SET: self._mpps,
        }
        out = []
        for binding in bindings:
            wrapper = wrappers.get(binding[0])
            if wrapper is None:
                out.append(binding)
            else:
                out.append((binding[0], wrapper, [binding[1], list(binding[2]) if len(binding) > 2 else []]))
        out.append((evt.EVT_CONN_CLOSE, self._closed))
        out.append((evt.EVT_REJECTED, self._rejected))
        return out

    # -- association refused: the DICOM node's "login" failed (PS3.15 A.5.3.11) ------------------
    def _rejected(self, event: evt.Event) -> None:
        """Security Alert (110113) of type Node Authentication (110126): a peer asked for an
        association and was refused (an unknown calling AE title, a wrong called one)."""
        try:
            user, address = _peer(event)
            called = event.assoc.acceptor.ae_title.strip()
            self.auditor.record(Event(
                codes.SECURITY_ALERT, Action.EXECUTE, Outcome.MINOR_FAILURE, types=(codes.NODE_AUTHENTICATION,),
                user=user, user_kind="dicom", address=address,
                description=f"association from {user or '(no AE title)'} at {address} to {called} refused",
                details={"calling_ae": user, "called_ae": called}))
        except Exception:
            log.exception("refused association not audited")

    # -- MPPS: N-CREATE and N-SET ---------------------------------------------------------------
    def _mpps(self, event: evt.Event, handler: Callable[..., Any], args: list[Any]) -> Any:
        """Procedure Record (110111): C for an N-CREATE, U for an N-SET of a performed procedure step."""
        answer = handler(event, *args)
        try:
            creating = event.event == evt.EVT_N_CREATE
            try:
                attributes = event.attribute_list if creating else event.modification_list
            except Exception:  # a list that can't be decoded was refused; its request is still audited
                attributes = Dataset()
            user, address = _peer(event)
            steps = _items(attributes, "ScheduledStepAttributesSequence")
            studies = [_text(s, "StudyInstanceUID") for s in steps]
            accessions = [_text(s, "AccessionNumber") for s in steps]
            status = _text(attributes, "PerformedProcedureStepStatus")
            uid = str(event.request.AffectedSOPInstanceUID if creating else event.request.RequestedSOPInstanceUID)
            code = _status(answer[0] if isinstance(answer, tuple) else answer)
            patient = _text(attributes, "PatientID")
            self.auditor.record(Event(
                codes.PROCEDURE_RECORD, Action.CREATE if creating else Action.UPDATE, _failure_outcome(code),
                user=user, user_kind="dicom", address=address, patients=[patient] if patient else [],
                studies=[s for s in studies if s], resolve_patients=not patient,
                description=f"MPPS {'N-CREATE' if creating else 'N-SET'} {uid}: {status or 'changed'}"
                            + (f", status 0x{code:04X}" if code else ""),
                details={"service": "N-CREATE" if creating else "N-SET", "mpps": uid, "status": status,
                         "accession_numbers": [a for a in accessions if a]}))
        except Exception:
            log.exception("MPPS not audited")
        return answer

    # -- C-STORE ------------------------------------------------------------------------------
    def _store(self, event: evt.Event, handler: Callable[..., Any], args: list[Any]) -> Any:
        status = handler(event, *args)
        try:
            code = _status(status)
            key = id(event.assoc)
            with self._lock:
                transfer = self._transfers.get(key)
                if transfer is None:
                    user, address = _peer(event)
                    transfer = self._transfers[key] = Transfer(user, address, event.assoc.acceptor.ae_title.strip())
            if code in SUCCESS_OR_WARNING:
                transfer.instances.append(str(event.request.AffectedSOPInstanceUID))
            else:
                transfer.failed += 1
        except Exception:
            log.exception("C-STORE not audited")
        return status

    def _closed(self, event: evt.Event) -> None:
        with self._lock:
            transfer = self._transfers.pop(id(event.assoc), None)
        if transfer is None:
            return
        stored = len(transfer.instances)
        outcome = (Outcome.SUCCESS if not transfer.failed else
                   Outcome.MINOR_FAILURE if stored else Outcome.SERIOUS_FAILURE)
        self.auditor.record(Event(
            codes.INSTANCES_TRANSFERRED, Action.CREATE, outcome, user=transfer.user, user_kind="dicom",
            address=transfer.address, instances=transfer.instances,
            description=f"C-STORE: {stored} instance(s) received" + (f", {transfer.failed} refused"
                                                                     if transfer.failed else ""),
            details={"service": "C-STORE", "called_ae": transfer.called, "instances": stored,
                     "failed": transfer.failed}))

    # -- C-FIND -------------------------------------------------------------------------------
    def _find(self, event: evt.Event, handler: Callable[..., Any], args: list[Any]) -> Iterator[Any]:
        matches, final = 0, None
        try:
            for item in handler(event, *args):
                code = _status(item[0])
                if code in PENDING:
                    matches += 1
                else:
                    final = code
                yield item
        finally:
            try:
                self._query(event, matches + getattr(event, "direct_answers", 0), final)
            except Exception:
                log.exception("C-FIND not audited")

    def _query(self, event: evt.Event, matches: int, final: int | None) -> None:
        user, address = _peer(event)
        raw = event.request.Identifier.getvalue() if event.request.Identifier is not None else b""
        keys: dict[str, str] = {}
        try:
            identifier = event.identifier
            for element in elements(identifier):  # decoded already by the query, mostly
                keyword = keyword_of(element.tag)
                if element.VR != "SQ" and keyword and not element.tag.is_private:
                    keys[keyword] = str(element.value if element.value is not None else "")
        except Exception:
            identifier = Dataset()
        patient = keys.get("PatientID", "")
        study = keys.get("StudyInstanceUID", "")
        exact = lambda v: bool(v) and "*" not in v and "?" not in v and "\\" not in v  # noqa: E731
        self.auditor.record(Event(
            codes.QUERY, Action.EXECUTE, _failure_outcome(final), user=user, user_kind="dicom", address=address,
            patients=[patient] if exact(patient) else [], studies=[study] if exact(study) else [],
            description=f"C-FIND {keys.get('QueryRetrieveLevel', 'WORKLIST')}: {matches} match(es)"
                        + (f", status 0x{final:04X}" if final not in (None, 0) else ""),
            details={"service": "C-FIND", "sop_class": str(event.request.AffectedSOPClassUID),
                     "transfer_syntax": str(event.context.transfer_syntax), "keys": keys,
                     "query": base64.b64encode(raw).decode("ascii"), "matches": matches}))

    # -- C-MOVE and C-GET ---------------------------------------------------------------------
    def _move(self, event: evt.Event, handler: Callable[..., Any], args: list[Any]) -> Iterator[Any]:
        destination = event.move_destination
        target = (destination.decode(errors="replace") if isinstance(destination, bytes) else str(destination)).strip()
        yield from self._retrieve(event, handler(event, *args), "C-MOVE", target, first=1)

    def _get(self, event: evt.Event, handler: Callable[..., Any], args: list[Any]) -> Iterator[Any]:
        user, _ = _peer(event)
        yield from self._retrieve(event, handler(event, *args), "C-GET", user, first=0)

    def _retrieve(self, event: evt.Event, items: Iterator[Any], service: str, target: str,
                  first: int) -> Iterator[Any]:
        sent: dict[str, Counter[str]] = {}
        patients: dict[str, None] = {}
        acknowledged = Counter[str]()
        state = {"final": None, "expected": 0, "position": 0}

        def count(received: evt.Event) -> None:
            message = received.message
            if type(message).__name__ == "C_STORE_RSP":
                code = int(getattr(message.command_set, "Status", 0xC000))
                acknowledged["completed" if code == 0 else "warning" if 0xB000 <= code <= 0xBFFF else "failed"] += 1

        bound = False
        try:
            if service == "C-GET":
                event.assoc.bind(evt.EVT_DIMSE_RECV, count)
                bound = True
            for item in items:
                position = state["position"]
                if position < first:  # C-MOVE: the destination (host, port[, association options])
                    if isinstance(item, tuple) and len(item) >= 2 and None not in item[:2]:
                        options = dict(item[2]) if len(item) > 2 and item[2] else {}
                        options["evt_handlers"] = [*options.get("evt_handlers", []), (evt.EVT_DIMSE_RECV, count)]
                        item = (item[0], item[1], options)
                    else:
                        state["final"] = 0xA801  # move destination unknown
                elif position == first:
                    state["expected"] = int(item) if isinstance(item, int) else 0
                else:
                    code = _status(item[0])
                    dataset = item[1] if isinstance(item, tuple) and len(item) > 1 else None
                    if code in PENDING and isinstance(dataset, Dataset):
                        study = str(dataset.get("StudyInstanceUID", "") or "")
                        sent.setdefault(study, Counter())[str(dataset.get("SOPClassUID", "") or "")] += 1
                        patients[str(dataset.get("PatientID", "") or "")] = None
                    elif code not in PENDING:
                        state["final"] = code
                state["position"] = position + 1
                yield item
        finally:
            if bound:
                try:
                    event.assoc.unbind(evt.EVT_DIMSE_RECV, count)
                except Exception:
                    pass
            try:
                self._retrieved(event, service, target, sent, list(patients), acknowledged, state)
            except Exception:
                log.exception("%s not audited", service)

    def _retrieved(self, event: evt.Event, service: str, target: str, sent: dict[str, Counter[str]],
                   patients: list[str], acknowledged: Counter[str], state: dict[str, Any]) -> None:
        user, address = _peer(event)
        final, expected = state["final"], state["expected"]
        completed = acknowledged["completed"] + acknowledged["warning"]
        failed = max(expected - completed, 0)
        if final is not None and final not in (0, CANCEL) and not 0xB000 <= final <= 0xBFFF:
            outcome = Outcome.MINOR_FAILURE if completed else max(_failure_outcome(final), Outcome.MINOR_FAILURE)
        elif failed and final != CANCEL:
            outcome = Outcome.MINOR_FAILURE if completed else Outcome.SERIOUS_FAILURE
        else:
            outcome = Outcome.SUCCESS
        self.auditor.record(Event(
            codes.INSTANCES_TRANSFERRED, Action.READ, outcome, user=user, user_kind="dicom", address=address,
            target=target, patients=[p for p in patients if p], studies=[s for s in sent if s],
            description=f"{service} to {target}: {completed} of {expected} instance(s) sent"
                        + (f", status 0x{final:04X}" if final not in (None, 0) else ""),
            details={"service": service, "destination": target, "instances": expected, "completed": completed,
                     "failed": failed, "sop_classes": {s: dict(c) for s, c in sent.items() if s}}))


def _text(ds: Dataset, keyword: str) -> str:
    """A value of a request as text for the audit record; "" for one absent, of another VR or
    not decodable (the request is audited whatever it held)."""
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom's converters raise many kinds of errors
        return ""
    if value is None or isinstance(value, (Dataset, Sequence, bytes)):
        return ""
    return str(value).replace("\0", "\ufffd")


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    """The items of sequence ``keyword``; none when it is absent or not a sequence."""
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom's converters raise many kinds of errors
        return []
    return [item for item in value if isinstance(item, Dataset)] if isinstance(value, Sequence) else []
