"""Procedure status back to the HIS (IHE RAD-3 filler order management, RAD-13 procedure update).

When ``[his] host`` is configured, every change of an order's status that did not come from the
HIS itself goes out through the outbox as ORM^O01 (v2.3.x/2.4) or OMI^O23 (v2.5.x), ORC-5
carrying the new status (HL7 table 0038). The order control (ORC-1, HL7 table 0119; HL7 v2.5
ch. 4.5.1) says what happened:

- SC, status changed: in progress, completed, images available; and a booking moved or
  confirmed at the desk (ORC-5 SC, scheduled, with the start in ORC-7/TQ1);
- OC, order cancelled, and OD, order discontinued, by the filler (IHE RAD TF-2 4.3, RAD-3),
  with ORC-5 CA or DC and the reason in ORC-16 and an NTE;
- SN, send order number: an order the registration desk made (a paper requisition, a walk-in)
  goes to the HIS as a filler order with its filler number in ORC-3 and ORC-2 empty, asking
  for a placer number; the HIS answers with NA (number assigned), which the interface engine
  takes from an ORM^O01/OMI^O23 (``codes/order_control.csv``: NA → number_assigned).

Messages are built with hl7apy, which knows each version's structures.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import datetime

from hl7apy.core import Message
from sqlmodel import Session, col, select

from pacs.integration import mllp
from pacs.integration.ack import next_control_id
from pacs.integration.hl7v2 import escape, parse
from pacs.integration.outbox import Delivered, DeliveryRefused, OutboxItem, enqueue
from pacs.registry.models import (
    ImagingOrder,
    OrderEvent,
    OrderStatus,
    Patient,
    ProcedureStep,
    Visit,
)
from pacs.settings import HISDestination, Settings

DESTINATION = "his"
# HL7 table 0038 order status for the registry's statuses the HIS hears about
ORDER_STATUS_OUT = {
    OrderStatus.IN_PROGRESS: "IP",
    OrderStatus.COMPLETED: "CM",
    OrderStatus.CANCELLED: "CA",
    OrderStatus.DISCONTINUED: "DC",
}
FROM_THE_HIS = ("mllp:", "fhir:", "reprocess:")
IMAGES_AVAILABLE = "A"  # HL7 table 0038: some, but not all, results available
SCHEDULED = "SC"  # HL7 table 0038: in process, scheduled
# HL7 table 0119 order control codes this system sends
STATUS_CHANGED = "SC"
SEND_ORDER_NUMBER = "SN"  # a new order from the filler, asking the placer for its number
ORDER_CONTROL_OUT = {
    OrderStatus.CANCELLED: "OC",  # order cancelled (by the filler, unsolicited)
    OrderStatus.DISCONTINUED: "OD",  # order discontinued
}
# Registry patient class → PV1-2 (HL7 table 0004)
PATIENT_CLASS_OUT = {"outpatient": "O", "emergency": "E", "inpatient": "I", "preadmit": "P"}


def _v25(version: str) -> bool:
    return version.startswith("2.5")


def _pn(value: str) -> str:
    return value.replace("|", " ")


def _xcn(value: str) -> str:
    """A person's name as XCN without an ID (XCN.2 family, XCN.3 given)."""
    return "^" + "^".join(escape(p) for p in value.split("^")[:2]) if value else ""


def _ts(moment: datetime | None) -> str:
    return moment.strftime("%Y%m%d%H%M%S") if moment else ""


def status_message(session: Session, order: ImagingOrder, status: str, his: HISDestination,
                   settings: Settings) -> str:
    """ORM^O01 / OMI^O23 with ORC-1 SC and ORC-5 ``status`` for ``order``."""
    return order_message(session, order, control=STATUS_CHANGED, status=status, his=his, settings=settings)


def order_message(session: Session, order: ImagingOrder, *, control: str, status: str, his: HISDestination,
                  settings: Settings, reason: str = "", notes: tuple[str, ...] = (), timing: bool = False) -> str:
    """ORM^O01 (v2.3.x/2.4) or OMI^O23 (v2.5.x) about ``order``: ORC-1 ``control``, ORC-5
    ``status``, ORC-16 and an NTE with ``reason``, an NTE for each of ``notes``; with ``timing``,
    the start of its first step (ORC-7.4 and OBR-27.4, or TQ1-7) and who asked for it (ORC-12,
    ORC-17, OBR-31, PV1-2), as a filler order or a booking carries them (IHE RAD-3)."""
    patient = session.get_one(Patient, order.patient)
    visit = session.get(Visit, order.visit) if order.visit else None
    steps = session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                         .order_by(col(ProcedureStep.id))).all()
    start = next((s.start for s in steps if s.start), None)
    version = his.version
    modern = _v25(version)
    structure = "OMI_O23" if modern else "ORM_O01"
    message = Message(structure, version=version)
    msh = message.msh
    msh.msh_3 = escape(settings.hl7.application)
    msh.msh_4 = escape(settings.hl7.facility)
    msh.msh_5 = escape(his.application)
    msh.msh_6 = escape(his.facility)
    msh.msh_7 = datetime.now().strftime("%Y%m%d%H%M%S")
    msh.msh_9 = "OMI^O23^OMI_O23" if modern else "ORM^O01^ORM_O01"
    msh.msh_10 = next_control_id()
    msh.msh_11 = "P"
    msh.msh_18 = his.charset
    patient_group = message.add_group(f"{structure}_PATIENT")
    patient_group.pid.pid_3 = f"{escape(patient.patient_id)}^^^{escape(patient.issuer)}"
    name = patient.name_ideographic or patient.name_alphabetic
    patient_group.pid.pid_5 = "^".join(escape(p) for p in name.split("^")[:2])
    if timing:
        if patient.birth_date:
            patient_group.pid.pid_7 = patient.birth_date.strftime("%Y%m%d")
        if patient.sex:
            patient_group.pid.pid_8 = escape(patient.sex)
        if visit is not None and visit.patient_class in PATIENT_CLASS_OUT:
            pv1 = patient_group.add_group(f"{structure}_PATIENT_VISIT").pv1
            pv1.pv1_2 = PATIENT_CLASS_OUT[visit.patient_class]
            if visit.visit_number:
                pv1.pv1_19 = escape(visit.visit_number)
    order_group = message.add_group(f"{structure}_ORDER")
    orc = order_group.orc
    orc.orc_1 = control
    orc.orc_2 = f"{escape(order.placer_number)}^{escape(order.placer_authority)}" if order.placer_number else ""
    orc.orc_3 = f"{escape(order.filler_number or order.accession_number)}^{escape(settings.hl7.application)}"
    orc.orc_5 = status
    if timing and start and not modern:
        orc.orc_7 = f"^^^{_ts(start)}"
    orc.orc_9 = datetime.now().strftime("%Y%m%d%H%M%S")
    if timing and order.requesting_physician:
        orc.orc_12 = _xcn(order.requesting_physician)
    if reason:
        orc.orc_16 = f"^{escape(reason)}"  # CE.2: the reason as text
    if timing and order.department:
        orc.orc_17 = f"^{escape(order.department)}"
    procedure = f"{escape(order.procedure_code)}^{escape(order.procedure_text)}^{escape(order.procedure_scheme)}"
    texts = ([reason] if reason else []) + list(notes)
    if modern:
        if timing and start:
            order_group.add_group("OMI_O23_TIMING").tq1.tq1_7 = _ts(start)
        obr = order_group.add_segment("OBR")
        obr.obr_2 = orc.orc_2.value
        obr.obr_3 = orc.orc_3.value
        obr.obr_4 = procedure
        if timing and order.reason:
            obr.obr_31 = f"^{escape(order.reason)}"
        for number, text in enumerate(texts, 1):
            nte = order_group.add_segment("NTE")
            nte.nte_1 = str(number)
            nte.nte_3 = escape(text)
        for step in steps:
            ipc = order_group.add_segment("IPC")
            ipc.ipc_1 = escape(order.accession_number)
            ipc.ipc_2 = escape(order.requested_procedure_id)
            ipc.ipc_3 = escape(order.study_instance_uid)
            ipc.ipc_4 = escape(step.sps_id)
            ipc.ipc_5 = escape(step.modality)
            if timing and step.station_ae_title:
                ipc.ipc_9 = escape(step.station_ae_title)
    else:
        detail = order_group.add_group("ORM_O01_ORDER_DETAIL")
        obr = detail.add_group("ORM_O01_CHOICE").obr
        obr.obr_2 = orc.orc_2.value
        obr.obr_3 = orc.orc_3.value
        obr.obr_4 = procedure
        obr.obr_18 = escape(order.accession_number)
        obr.obr_19 = escape(order.requested_procedure_id)
        if steps:
            obr.obr_20 = escape(steps[0].sps_id)
            obr.obr_24 = escape(steps[0].modality)
        if timing and start:
            obr.obr_27 = f"^^^{_ts(start)}"
        if timing and order.reason:
            obr.obr_31 = f"^{escape(order.reason)}"
        for number, text in enumerate(texts, 1):
            nte = detail.add_segment("NTE")
            nte.nte_1 = str(number)
            nte.nte_3 = escape(text)
        detail.add_segment("ZDS").zds_1 = f"{escape(order.study_instance_uid)}^{escape(settings.hl7.application)}^Application^DICOM"
    return message.to_er7()


def _last_note(session: Session, order: ImagingOrder) -> str:
    """The note of the order's latest event: the reason given for the transition being told."""
    event = session.exec(select(OrderEvent).where(OrderEvent.order == order.id)
                         .order_by(col(OrderEvent.id).desc()).limit(1)).first()
    return event.note if event is not None else ""


class HISNotifier:
    """Called on every order transition; enqueues what the HIS should hear. The registration
    desk also calls it for the orders it makes (:meth:`filler_order`) and the bookings it
    moves or confirms (:meth:`scheduled`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _kind(self) -> str:
        return "OMI^O23" if _v25(self.settings.his.version) else "ORM^O01"

    def __call__(self, session: Session, order: ImagingOrder, before: str, after: str, by: str) -> None:
        status = ORDER_STATUS_OUT.get(OrderStatus(after))
        if after == OrderStatus.IMAGES_RECEIVED and self.settings.his.notify_images_available:
            status = IMAGES_AVAILABLE
        if status is None or by.startswith(FROM_THE_HIS):
            return  # nothing to say, or the HIS said it first
        control = ORDER_CONTROL_OUT.get(OrderStatus(after), STATUS_CHANGED)
        reason = _last_note(session, order) if control != STATUS_CHANGED else ""
        payload = order_message(session, order, control=control, status=status, his=self.settings.his,
                                settings=self.settings, reason=reason)
        enqueue(session, destination=DESTINATION, kind="hl7v2", payload=payload, order=order.id,
                description=f"{self._kind()} {control} {status} for {order.accession_number}")

    def filler_order(self, session: Session, order: ImagingOrder, notes: tuple[str, ...] = ()) -> None:
        """An order made at the desk: ORC-1 SN, ORC-5 SC, asking the HIS for its placer number (RAD-3)."""
        payload = order_message(session, order, control=SEND_ORDER_NUMBER, status=SCHEDULED, his=self.settings.his,
                                settings=self.settings, notes=notes, timing=True)
        enqueue(session, destination=DESTINATION, kind="hl7v2", payload=payload, order=order.id,
                description=f"{self._kind()} {SEND_ORDER_NUMBER} for {order.accession_number}")

    def scheduled(self, session: Session, order: ImagingOrder, note: str = "") -> None:
        """A booking moved or confirmed at the desk: ORC-1 SC, ORC-5 SC, with its start."""
        payload = order_message(session, order, control=STATUS_CHANGED, status=SCHEDULED, his=self.settings.his,
                                settings=self.settings, notes=(note,) if note else (), timing=True)
        enqueue(session, destination=DESTINATION, kind="hl7v2", payload=payload, order=order.id,
                description=f"{self._kind()} {STATUS_CHANGED} {SCHEDULED} for {order.accession_number}")


def mllp_deliverer(host: str, port: int, timeout: float = 30.0,  # type: ignore[no-untyped-def]
                   tls: Callable[[], ssl.SSLContext] | None = None):
    """Send an HL7 v2 item over MLLP, encoded as its MSH-18 says (``[his] charset``), and read
    its ACK: AA/CA delivered, AE/AR/CE/CR refused.
    Over TLS with ``tls``, which gives the client context for each connection
    (``[his] tls = true``: :func:`pacs.tls.client_context`)."""

    def deliver(item: OutboxItem) -> Delivered:
        with mllp.connect(host, port, timeout, tls() if tls is not None else None) as sock:
            raw = item.payload.encode("ascii", "replace")  # MSH is ASCII whatever MSH-18 says
            sock.sendall(mllp.frame(mllp.encode(item.payload, mllp.declared_charset(raw) or "UNICODE UTF-8")))
            buffer = b""
            while mllp.TRAILER not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the HIS closed the connection without an ACK")
                buffer += chunk
        ack = buffer[buffer.find(mllp.START_BLOCK) + 1: buffer.find(mllp.TRAILER)]
        text, _charset = mllp.decode(ack, "UNICODE UTF-8")
        code = parse(text).get("MSA-1").upper()
        if code in ("AA", "CA"):
            return Delivered(response=text)
        if code in ("AE", "AR", "CE", "CR"):
            raise DeliveryRefused(f"the HIS answered {code}: {parse(text).get('MSA-3') or parse(text).get('ERR-8')}",
                                  text)
        raise ConnectionError(f"unreadable ACK from the HIS: {text[:80]!r}")

    return deliver
