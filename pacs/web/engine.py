"""The interface analysts' console at ``/engine``: dashboard, message browser, outbox, mapping bench.

Server-rendered pages with plain forms (every action a POST carrying the session's CSRF token),
so each works from the keyboard alone; the project's own ``static/engine.js`` refreshes the
dashboard in place, ticks a selection's boxes, and gives each action its Alt key. What the pages
do is what ``pacs messages``, ``pacs outbox`` and ``pacs mappings`` do, on the same services:

- the message browser searches the message store (:func:`pacs.integration.message_store.search`),
  shows one message with its segments, fields and components named
  (:mod:`pacs.integration.fieldnames`), its mapped content, what it changed, and the ACK sent;
  reprocessing runs stored messages through the channel again, each a new message;
- the outbox lists deliveries by destination and status and sends dead ones again;
- the bench tries a message on the mappings in force and on a draft of one mapping file side by
  side, writing nothing, and saves a draft that checks clean (:mod:`pacs.integration.bench`).

Every action (a message read, a reprocess, a retry, a saved mapping, an export) is audited in
the analyst's name. Texts come from the message catalogues (``engine.*``).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, select

from pacs.audit import codes
from pacs.audit.codes import Action, Outcome
from pacs.audit.service import Event
from pacs.auth.access import Principal
from pacs.auth.pages import page_language, render, require_page
from pacs.auth.roles import Permission
from pacs.db import utcnow
from pacs.http import RowId, ServicesDep, SessionDep
from pacs.integration import bench, message_store, outbox
from pacs.integration.channel import Inbound
from pacs.integration.fieldnames import name_of, named_segments
from pacs.integration.message_store import Status, StoredMessage
from pacs.integration.outbox import OutboxItem, OutboxStatus
from pacs.web.i18n import translator
from pacs.web.technologist import page_form

router = APIRouter(tags=["engine"], include_in_schema=False)
PAGE = "/engine"
SHOWN = 100  # messages or outbox items on a page
PART_SHOWN = 8_000  # characters of an outbox item's payload or answer shown on the page; the rest is downloaded
REPROCESS_MAX = 500  # messages reprocessed by one press
REPROCESS_WAIT_SECONDS = 60.0
EXPORT_MAX = 10_000

EngineReader = Annotated[Principal, Depends(require_page(Permission.MESSAGES_READ))]
OutboxReader = Annotated[Principal, Depends(require_page(Permission.OUTBOX_READ))]
BenchReader = Annotated[Principal, Depends(require_page(Permission.MAPPINGS_READ))]
ReprocessForm = Annotated[Principal, Depends(page_form(Permission.MESSAGES_REPROCESS))]
RetryForm = Annotated[Principal, Depends(page_form(Permission.OUTBOX_RETRY))]
BenchForm = Annotated[Principal, Depends(page_form(Permission.MAPPINGS_READ))]
SaveForm = Annotated[Principal, Depends(page_form(Permission.MAPPINGS_WRITE))]


def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    """:func:`render` with ``local(moment)``: a stored time in the hospital's zone."""
    zone = request.app.state.services.settings.zone

    def local(moment: datetime | None) -> str:
        return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"

    return render(request, template, local=local, **context)


def _audit(request: Request, principal: Principal, event_id: codes.Code, action: Action, *, description: str,
           patients: list[str] | None = None, outcome: int = Outcome.SUCCESS, **details: Any) -> None:
    auditor = request.app.state.services.audit
    if auditor is None:
        return
    auditor.record(Event(event_id, action, outcome, user=principal.name, user_kind=principal.kind,
                         address=request.client.host if request.client else "", description=description,
                         patients=[p for p in (patients or []) if p], details=details))


# -- dashboard ----------------------------------------------------------------------------------

def dashboard_context(request: Request, session: Session) -> dict[str, Any]:
    services = request.app.state.services
    now = utcnow()
    hour = {(t.sending_application, t.sending_facility, t.message_type): t.counts
            for t in message_store.traffic(session, now - timedelta(hours=1))}
    day = message_store.traffic(session, now - timedelta(days=1))
    holder = services.mappings
    return {
        "traffic": [{"application": t.sending_application, "facility": t.sending_facility, "type": t.message_type,
                     "hour": hour.get((t.sending_application, t.sending_facility, t.message_type), {}),
                     "day": t.counts} for t in day],
        "statuses": [s.value for s in Status],
        "queues": outbox.queues(session),
        "mappings": {"root": str(holder.root), "version": holder.version,
                     "loaded_at": getattr(holder, "loaded_at", None), "problems": list(holder.last_problems)},
        "now": now,
    }


@router.get(PAGE)
def dashboard(request: Request, principal: EngineReader, session: SessionDep) -> HTMLResponse:
    """Traffic by sender and type in the last hour and day, the outboxes, the mappings in force."""
    return _render(request, "engine_dashboard.html", principal=principal, view="dashboard",
                  **dashboard_context(request, session))


@router.get(PAGE + "/dashboard.part")
def dashboard_part(request: Request, principal: EngineReader, session: SessionDep) -> HTMLResponse:
    """The dashboard's figures alone, which the page fetches every few seconds."""
    return _render(request, "engine_dashboard_part.html", principal=principal, **dashboard_context(request, session))


# -- message browser ----------------------------------------------------------------------------

def _moment(value: str | None, zone: Any) -> datetime | None:
    """A time typed in the page (``2026-12-06T08:00``, the hospital's time) or ISO 8601."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=zone) if zone is not None else moment.astimezone()


@router.get(PAGE + "/messages")
def messages(
    request: Request, principal: EngineReader, session: SessionDep,
    since: str = "", until: str = "", type: str = "", status: str = "", sender: str = "",
    control_id: str = "", patient_id: str = "", accession: str = "", text: str = "",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0, done: str = "",
) -> HTMLResponse:
    """Stored messages, newest first, filtered by every field filled in. The response's
    ``Server-Timing`` header (W3C Server Timing) gives the search's time and the whole page's."""
    began = time.perf_counter()
    t = translator(page_language(request, principal))
    filters = {"since": since, "until": until, "type": type, "status": status, "sender": sender,
               "control_id": control_id, "patient_id": patient_id, "accession": accession, "text": text}
    error = ""
    try:
        zone = request.app.state.services.settings.zone
        start, end = _moment(since, zone), _moment(until, zone)
    except ValueError:
        start = end = None
        error = t("engine.messages.bad_time")
    if status and status.upper() not in Status.__members__:
        status, error = "", t("engine.messages.bad_status", status=status)
    started = time.perf_counter()
    total, rows = message_store.search(
        session, message_type=type.strip() or None, status=status or None, since=start, until=end,
        patient_id=patient_id.strip() or None, control_id=control_id.strip() or None,
        sender=sender.strip() or None, accession_number=accession.strip() or None, text=text or None,
        limit=SHOWN, offset=offset)
    searched_ms = (time.perf_counter() - started) * 1000
    if any(filters.values()):
        _audit(request, principal, codes.QUERY, Action.EXECUTE, description="message browser search",
               patients=[patient_id.strip()], query={k: v for k, v in filters.items() if v})
    query = urlencode({k: v for k, v in filters.items() if v})
    response = _render(request, "engine_messages.html", principal=principal, view="messages", filters=filters,
                       statuses=[s.value for s in Status], total=total, rows=rows, offset=offset, shown=SHOWN,
                       query=query, error=error, done=done)
    page_ms = (time.perf_counter() - began) * 1000
    response.headers["Server-Timing"] = f"search;dur={searched_ms:.2f}, page;dur={page_ms:.2f}"
    return response


def _error_location(ack: list[Any]) -> str:
    """The field an ACK's ERR names (ERR-2 ERL in v2.5, ERR-1 ELD before), with its name."""
    for segment in ack:
        if segment.id != "ERR":
            continue
        for position in (1, 0):  # ERR-2, else ERR-1
            if position >= len(segment.fields) or not segment.fields[position]:
                continue
            part = segment.fields[position][0]
            values = [c.value for c in part.components] or [part.value]
            if len(values) >= 3 and values[0] and values[2].isdigit():
                address = f"{values[0]}-{values[2]}"
                if position == 1 and len(values) >= 5 and values[4].isdigit():
                    address += f".{values[4]}"
                return f"{address} {name_of(address)}".strip()
    return ""


def message_context(row: StoredMessage) -> dict[str, Any]:
    text = message_store.decoded(row)
    hl7 = text.startswith("MSH")
    segments = named_segments(text) if hl7 else []
    ack = named_segments(row.response) if row.response.startswith("MSH") else []
    return {
        "row": row,
        "text": text if hl7 else _pretty(text),
        "segments": segments,
        "mapped": json.dumps(row.mapped, ensure_ascii=False, indent=2) if row.mapped else "",
        "applied": json.dumps(row.applied, ensure_ascii=False, indent=2) if row.applied else "",
        "ack": ack,
        "response": row.response if ack else _pretty(row.response),
        "error_field": _error_location(ack),
    }


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    except ValueError:
        return text


@router.get(PAGE + "/messages/export")
def export_messages(request: Request, principal: EngineReader, session: SessionDep,
                    id: Annotated[list[int], Query(max_length=EXPORT_MAX)]) -> Response:
    """The chosen messages as one file, each exactly as received (segments ended by ``\\r``),
    one message a line group: what ``pacs mappings test`` and the site's own tools read."""
    _total, rows = message_store.search(session, ids=id, limit=EXPORT_MAX)
    rows.sort(key=lambda r: r.id or 0)
    body = b"".join(r.raw.rstrip(b"\r\n") + b"\r\n" for r in rows)
    _audit(request, principal, codes.EXPORT, Action.READ, description="messages exported",
           patients=sorted({r.patient_id for r in rows}), messages=[r.id for r in rows])
    return Response(body, media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="messages.hl7"'})


@router.get(PAGE + "/messages/{message_id}")
def message(message_id: RowId, request: Request, principal: EngineReader, session: SessionDep,
            done: str = "") -> HTMLResponse:
    """One message: raw with fields named, mapped content, what it changed, the ACK sent."""
    row = session.get(StoredMessage, message_id)
    if row is None:
        t = translator(page_language(request, principal))
        return _render(request, "engine_messages.html", status=HTTPStatus.NOT_FOUND, principal=principal,
                      view="messages", filters={}, statuses=[s.value for s in Status], total=0, rows=[], offset=0,
                      shown=SHOWN, query="", error=t("engine.message.missing", id=message_id), done="")
    _audit(request, principal, codes.PATIENT_RECORD, Action.READ, description="message read",
           patients=[row.patient_id], message=message_id)
    return _render(request, "engine_message.html", principal=principal, view="messages", done=done,
                  **message_context(row))


@router.post(PAGE + "/messages/reprocess")
def reprocess(request: Request, principal: ReprocessForm, services: ServicesDep,
              id: Annotated[list[int], Form(max_length=REPROCESS_MAX)], back: Annotated[str, Form()] = "") -> Response:
    """Run each chosen message through the channel again (a new message each), in id order."""
    t = translator(page_language(request, principal))
    results = []
    for message_id in sorted(set(id)):
        with services.db.session() as session:
            original = session.get(StoredMessage, message_id)
            if original is None:
                continue
            inbound = Inbound(raw=original.raw, source="reprocess", peer=f"engine:{principal.name}",
                              reprocess_of=message_id, endpoint=original.endpoint)
            patient = original.patient_id
        outcome = services.intake.submit(inbound).result(REPROCESS_WAIT_SECONDS)
        with services.db.session() as session:
            row = session.get_one(StoredMessage, outcome.message_id)
            results.append((message_id, row.id, row.status, row.patient_id or patient))
    for original_id, new_id, status, patient in results:
        _audit(request, principal, codes.IMPORT, Action.EXECUTE, description="message reprocessed",
               patients=[patient], message=original_id, result=new_id, status=status,
               outcome=Outcome.SUCCESS if status in (Status.PROCESSED, Status.FILTERED) else Outcome.MINOR_FAILURE)
    done = t("engine.reprocess.done", count=len(results),
             results=", ".join(f"#{o} → #{n} {t('engine.status.' + s)}" for o, n, s, _p in results))
    if len(results) == 1 and back != "list":
        return RedirectResponse(f"{PAGE}/messages/{results[0][1]}?done={_q(done)}", status_code=HTTPStatus.SEE_OTHER)
    return RedirectResponse(f"{PAGE}/messages?done={_q(done)}", status_code=HTTPStatus.SEE_OTHER)


def _named_hl7(text: str) -> list[Any]:
    """An HL7 v2 message's segments named, or [] for anything else (a FHIR resource)."""
    return named_segments(text) if text.startswith("MSH") else []


def _q(text: str) -> str:
    return quote(text, safe="")


# -- outbox -------------------------------------------------------------------------------------

@router.get(PAGE + "/outbox")
def outbox_page(request: Request, principal: OutboxReader, session: SessionDep, status: str = "",
                destination: str = "", offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
                done: str = "") -> HTMLResponse:
    """Deliveries by destination and status, each with what was sent and the answer received."""
    status = status.upper() if status.upper() in OutboxStatus.__members__ else ""
    total, rows = outbox.search(session, status=status or None, destination=destination or None, limit=SHOWN,
                                offset=offset)
    return _render(request, "engine_outbox.html", principal=principal, view="outbox", rows=rows, total=total,
                  statuses=[s.value for s in OutboxStatus], chosen_status=status, destination=destination,
                  queues=outbox.queues(session), offset=offset, shown=SHOWN, done=done, named=_named_hl7,
                  part_shown=PART_SHOWN)


@router.get(PAGE + "/outbox/{item_id}/{part}")
def outbox_part(item_id: RowId, part: str, principal: OutboxReader, session: SessionDep) -> Response:
    """An outbox item's whole payload or answer as text, for one the page shows only the start
    of (a report's ORU carries its PDF: tens of kilobytes)."""
    item = session.get(OutboxItem, item_id)
    if item is None or part not in ("payload", "response"):
        return Response(f"no outbox item {item_id} {part}", status_code=HTTPStatus.NOT_FOUND, media_type="text/plain")
    return Response(getattr(item, part) or "", media_type="text/plain; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="outbox-{item_id}-{part}.txt"'})


@router.post(PAGE + "/outbox/retry")
def retry(request: Request, principal: RetryForm, services: ServicesDep,
          id: Annotated[list[int], Form(max_length=REPROCESS_MAX)] = [],  # noqa: B006 - FastAPI copies it
          all_dead: Annotated[str, Form()] = "") -> Response:
    """Send items again now: those chosen, or every dead one (of one destination, if given)."""
    t = translator(page_language(request, principal))
    with services.db.session() as session:
        if all_dead:
            query = select(OutboxItem.id).where(OutboxItem.status == OutboxStatus.DEAD)
            if all_dead != "*":
                query = query.where(OutboxItem.destination == all_dead)
            chosen = sorted(session.exec(query).all())
        else:
            chosen = sorted(set(id))
        retried = []
        for item_id in chosen:
            try:
                item = outbox.retry(session, item_id)
            except (LookupError, ValueError):
                continue
            retried.append((item.id, item.destination, item.description))
    services.outbox.wake()
    for item_id, destination, description in retried:
        _audit(request, principal, codes.EXPORT, Action.EXECUTE, description="outbox item sent again",
               item=item_id, destination=destination, what=description)
    done = t("engine.outbox.retried", count=len(retried), ids=", ".join(f"#{i}" for i, _d, _w in retried))
    return RedirectResponse(f"{PAGE}/outbox?done={_q(done)}", status_code=HTTPStatus.SEE_OTHER)


# -- mapping bench ------------------------------------------------------------------------------

def _bench(request: Request, principal: Principal, *, status: int = HTTPStatus.OK, **context: Any) -> HTMLResponse:
    root = request.app.state.services.settings.mappings_dir
    defaults = {"message_id": "", "raw": "", "file": "", "draft": "", "based_on": "", "problems": None,
                "in_force": None, "drafted": None, "error": "", "done": ""}
    return _render(request, "engine_bench.html", status=status, principal=principal, view="bench",
                  files=bench.files(root), **{**defaults, **context})


@router.get(PAGE + "/bench")
def bench_page(request: Request, principal: BenchReader, message: int | None = None,
               file: str = "") -> HTMLResponse:
    """The bench, with a stored message and a mapping file to start a draft from, if named."""
    root = request.app.state.services.settings.mappings_dir
    draft = based_on = ""
    if file:
        try:
            draft = bench.read(root, file)
            based_on = bench.digest(draft)
        except LookupError:
            file = ""
    return _bench(request, principal, message_id=str(message or ""), file=file, draft=draft, based_on=based_on)


def _message_bytes(request: Request, principal: Principal, message_id: str, raw: str) -> bytes:
    if message_id.strip():
        with request.app.state.services.db.session() as session:
            row = session.get(StoredMessage, int(message_id))
            if row is None:
                raise LookupError(message_id)
            _audit(request, principal, codes.PATIENT_RECORD, Action.READ, description="message tried on the bench",
                   patients=[row.patient_id], message=row.id)
            return row.raw
    text = raw.strip()
    if not text.startswith("{"):  # typed or pasted: newlines between segments, as the wire has \r
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.encode("utf-8")


@router.post(PAGE + "/bench")
def bench_try(request: Request, principal: BenchForm, message_id: Annotated[str, Form()] = "",
              raw: Annotated[str, Form()] = "", file: Annotated[str, Form()] = "",
              draft: Annotated[str, Form()] = "", based_on: Annotated[str, Form()] = "",
              load: Annotated[str, Form()] = "") -> HTMLResponse:
    """Try the message on the mappings in force and on the draft, side by side; write nothing."""
    services = request.app.state.services
    t = translator(page_language(request, principal))
    root = services.settings.mappings_dir
    form = {"message_id": message_id, "raw": raw, "file": file, "draft": draft, "based_on": based_on}
    if load or (file and not draft):  # the file chosen: start the draft from it
        try:
            form["draft"] = bench.read(root, file)
            form["based_on"] = bench.digest(form["draft"])
        except LookupError:
            return _bench(request, principal, status=HTTPStatus.NOT_FOUND, error=t("engine.bench.no_file", file=file),
                          **form)
        if load:
            return _bench(request, principal, **form)
    if not message_id.strip() and not raw.strip():
        return _bench(request, principal, status=HTTPStatus.UNPROCESSABLE_ENTITY, error=t("engine.bench.no_message"),
                      **form)
    try:
        payload = _message_bytes(request, principal, message_id, raw)
    except (LookupError, ValueError):
        return _bench(request, principal, status=HTTPStatus.NOT_FOUND,
                      error=t("engine.message.missing", id=message_id), **form)
    in_force = _shown(bench.dry_run(payload, services.mappings.current(), services.settings))
    drafted = problems = None
    if file:
        try:
            with bench.draft(root, file, form["draft"]) as (loaded, problems):
                drafted = _shown(bench.dry_run(payload, loaded, services.settings))
        except (LookupError, bench.DraftRefused) as exc:
            return _bench(request, principal, status=HTTPStatus.UNPROCESSABLE_ENTITY, error=str(exc), **form)
    return _bench(request, principal, in_force=in_force, drafted=drafted, problems=problems, **form)


def _shown(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A dry run's result as the bench shows it: the verdict, the ACK named, the rest as JSON."""
    if result is None:
        return None
    ack_lines = result.get("ack") or []
    ack = named_segments("\r".join(ack_lines)) if ack_lines else []
    content = {k: v for k, v in result.items() if k not in ("ack", "applies", "error", "filtered")}
    return {"applies": result.get("applies", False), "error": result.get("error", ""),
            "filtered": result.get("filtered", ""), "ack": ack, "error_field": _error_location(ack),
            "patient": result.get("patient"), "orders": result.get("orders", []),
            "content": json.dumps(content, ensure_ascii=False, indent=2, default=str)}


@router.post(PAGE + "/bench/save")
def bench_save(request: Request, principal: SaveForm, file: Annotated[str, Form()],
               draft: Annotated[str, Form()], based_on: Annotated[str, Form()],
               message_id: Annotated[str, Form()] = "", raw: Annotated[str, Form()] = "") -> HTMLResponse:
    """Save a draft that checks clean into the mappings folder (the previous version kept) and
    put it in force; audited in the analyst's name."""
    services = request.app.state.services
    t = translator(page_language(request, principal))
    root = services.settings.mappings_dir
    form = {"message_id": message_id, "raw": raw, "file": file, "draft": draft, "based_on": based_on}
    try:
        kept = bench.save(root, file, draft, based_on=based_on)
    except LookupError:
        return _bench(request, principal, status=HTTPStatus.NOT_FOUND, error=t("engine.bench.no_file", file=file),
                      **form)
    except bench.DraftRefused as exc:
        _audit(request, principal, codes.SECURITY_ALERT, Action.UPDATE, description="mapping draft refused",
               outcome=Outcome.MINOR_FAILURE, kind="mappings", object=file, reason=str(exc))
        return _bench(request, principal, status=HTTPStatus.CONFLICT, error=t("engine.bench.refused", reason=str(exc)),
                      **form)
    _audit(request, principal, codes.SECURITY_ALERT, Action.UPDATE, description="mapping file saved",
           kind="mappings", object=file, previous=str(kept.relative_to(root)), sha256=bench.digest(draft))
    services.mappings.reload_if_changed()  # in force now, not at the next look
    done = t("engine.bench.saved", file=file, previous=kept.relative_to(root).as_posix())
    return _bench(request, principal, done=done, message_id=message_id, raw=raw, file=file, draft=draft,
                  based_on=bench.digest(draft))


@router.post(PAGE + "/bench/download")
def bench_download(request: Request, principal: BenchForm, file: Annotated[str, Form()],
                   draft: Annotated[str, Form()]) -> Response:
    """The draft as a file named as the mapping file it drafts, for the site's own version control."""
    if file not in bench.files(request.app.state.services.settings.mappings_dir):
        t = translator(page_language(request, principal))
        return _bench(request, principal, status=HTTPStatus.NOT_FOUND, error=t("engine.bench.no_file", file=file),
                      file="", draft=draft)
    name = file.rsplit("/", 1)[-1]
    return Response(draft.encode("utf-8"), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
