"""Procedure status back to the HIS (IHE RAD-3 filler order management, RAD-13 procedure update).

When ``[his] host`` is configured, every change of an order's status that did not come from the
HIS itself goes out through the outbox as ORM^O01 with order control SC (v2.3.x/2.4) or OMI^O23
(v2.5.x), ORC-5 carrying the new status (HL7 table 0038). Messages are built with hl7apy, which
knows each version's structures.
"""

from __future__ import annotations

import socket
from datetime import datetime

from hl7apy.core import Message
from sqlmodel import Session, col, select

from pacs.integration import mllp
from pacs.integration.ack import next_control_id
from pacs.integration.hl7v2 import escape, parse
from pacs.integration.outbox import Delivered, DeliveryRefused, OutboxItem, enqueue
from pacs.registry.models import ImagingOrder, OrderStatus, Patient, ProcedureStep
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


def _v25(version: str) -> bool:
    return version.startswith("2.5")


def _pn(value: str) -> str:
    return value.replace("|", " ")


def status_message(session: Session, order: ImagingOrder, status: str, his: HISDestination,
                   settings: Settings) -> str:
    """ORM^O01 / OMI^O23 with ORC-1 SC and ORC-5 ``status`` for ``order``."""
    patient = session.get_one(Patient, order.patient)
    steps = session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                         .order_by(col(ProcedureStep.id))).all()
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
    msh.msh_18 = "UNICODE UTF-8"
    patient_group = message.add_group(f"{structure}_PATIENT")
    patient_group.pid.pid_3 = f"{escape(patient.patient_id)}^^^{escape(patient.issuer)}"
    name = patient.name_ideographic or patient.name_alphabetic
    patient_group.pid.pid_5 = "^".join(escape(p) for p in name.split("^")[:2])
    order_group = message.add_group(f"{structure}_ORDER")
    orc = order_group.orc
    orc.orc_1 = "SC"
    orc.orc_2 = f"{escape(order.placer_number)}^{escape(order.placer_authority)}" if order.placer_number else ""
    orc.orc_3 = f"{escape(order.filler_number or order.accession_number)}^{escape(settings.hl7.application)}"
    orc.orc_5 = status
    orc.orc_9 = datetime.now().strftime("%Y%m%d%H%M%S")
    procedure = f"{escape(order.procedure_code)}^{escape(order.procedure_text)}^{escape(order.procedure_scheme)}"
    if modern:
        obr = order_group.add_segment("OBR")
        obr.obr_2 = orc.orc_2.value
        obr.obr_3 = orc.orc_3.value
        obr.obr_4 = procedure
        for step in steps:
            ipc = order_group.add_segment("IPC")
            ipc.ipc_1 = escape(order.accession_number)
            ipc.ipc_2 = escape(order.requested_procedure_id)
            ipc.ipc_3 = escape(order.study_instance_uid)
            ipc.ipc_4 = escape(step.sps_id)
            ipc.ipc_5 = escape(step.modality)
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
        detail.add_segment("ZDS").zds_1 = f"{escape(order.study_instance_uid)}^{escape(settings.hl7.application)}^Application^DICOM"
    return message.to_er7()


class HISNotifier:
    """Called on every order transition; enqueues what the HIS should hear."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, session: Session, order: ImagingOrder, before: str, after: str, by: str) -> None:
        status = ORDER_STATUS_OUT.get(OrderStatus(after))
        if after == OrderStatus.IMAGES_RECEIVED and self.settings.his.notify_images_available:
            status = IMAGES_AVAILABLE
        if status is None or by.startswith(FROM_THE_HIS):
            return  # nothing to say, or the HIS said it first
        payload = status_message(session, order, status, self.settings.his, self.settings)
        enqueue(session, destination=DESTINATION, kind="hl7v2", payload=payload, order=order.id,
                description=f"{'OMI^O23' if _v25(self.settings.his.version) else 'ORM^O01'} SC {status} "
                            f"for {order.accession_number}")


def mllp_deliverer(host: str, port: int, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    """Send an HL7 v2 item over MLLP and read its ACK: AA/CA delivered, AE/AR/CE/CR refused."""

    def deliver(item: OutboxItem) -> Delivered:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(mllp.frame(item.payload.encode("utf-8")))
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
