"""Test helpers: an MLLP client on a plain socket, golden files, registry snapshots."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from pacs.db import Database
from pacs.integration.message_store import StoredMessage
from pacs.registry.models import ImagingOrder, OrderEvent, Patient, PatientIdentifier, ProcedureStep, Visit

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def load(name: str) -> bytes:
    """A test message exactly as it goes on the wire (files keep their \\r segment ends)."""
    return (DATA / "hl7" / name).read_bytes()


class MLLPClient:
    """A minimal MLLP sender over a plain socket (HL7 v2.5.1 Appendix C)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, payload: bytes) -> bytes:
        self.sock.sendall(VT + payload + FS + CR)
        return self.read()

    def read(self) -> bytes:
        while FS + CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(FS + CR)
        return frame[frame.index(VT) + 1:]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MLLPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ack_fields(ack: bytes, codec: str = "utf-8") -> dict[str, Any]:
    """MSA-1, MSA-2 and the ERR segment of an ACK, for assertions."""
    text = ack.decode(codec)
    segments = {s.split("|", 1)[0]: s.split("|") for s in text.split("\r") if s}
    msa = segments.get("MSA", [])
    return {
        "code": msa[1] if len(msa) > 1 else "",
        "control_id": msa[2] if len(msa) > 2 else "",
        "msh": segments.get("MSH", []),
        "err": segments.get("ERR"),
        "text": text,
    }


def send_all(port: int, names: list[str]) -> list[dict[str, Any]]:
    with MLLPClient(port) as client:
        return [ack_fields(client.send(load(name)), "gb18030" if "china" in name else "utf-8") for name in names]


_UID_GENERATED = re.compile(r"^2\.25\.\d+$|^1\.2\.826\.0\.1\.3680043\.8\.498\.\d+$")


def snapshot(db: Database) -> dict[str, Any]:
    """The registry and message store as plain data, with volatile values (times, generated UIDs,
    database ids) replaced so that the same messages give the same snapshot on any database."""
    with Session(db.engine) as session:
        patients = session.exec(select(Patient).order_by(col(Patient.patient_id), col(Patient.id))).all()
        key = {p.id: p.patient_id for p in patients}
        out: dict[str, Any] = {"patients": [], "orders": [], "messages": []}
        for p in patients:
            identifiers = session.exec(select(PatientIdentifier).where(PatientIdentifier.patient == p.id)
                                       .order_by(col(PatientIdentifier.value))).all()
            visits = session.exec(select(Visit).where(Visit.patient == p.id).order_by(col(Visit.visit_number))).all()
            out["patients"].append({
                "patient_id": p.patient_id, "issuer": p.issuer,
                "name": [p.family_name, p.given_name, p.name_alphabetic, p.name_ideographic],
                "sex": p.sex, "birth_date": str(p.birth_date or ""), "address": p.address, "phone": p.phone,
                "national_id": p.national_id,
                "merged_into": key.get(p.merged_into) if p.merged_into else None,
                "identifiers": [[i.value, i.authority, i.type_code, i.active] for i in identifiers],
                "visits": [{"number": v.visit_number, "class": v.patient_class, "location": [v.ward, v.room, v.bed],
                            "attending": v.attending_doctor, "admitted": str(v.admitted_at or ""),
                            "discharged": str(v.discharged_at or ""), "status": v.status} for v in visits],
            })
        orders = session.exec(select(ImagingOrder).order_by(col(ImagingOrder.placer_number))).all()
        for o in orders:
            steps = session.exec(select(ProcedureStep).where(ProcedureStep.order == o.id)
                                 .order_by(col(ProcedureStep.sps_id))).all()
            events = session.exec(select(OrderEvent).where(OrderEvent.order == o.id).order_by(col(OrderEvent.id))).all()
            out["orders"].append({
                "patient": key.get(o.patient),
                **{f: getattr(o, f) for f in (
                    "placer_number", "placer_authority", "filler_number", "requested_procedure_id",
                    "procedure_code", "procedure_scheme", "procedure_text", "body_part", "reason", "priority",
                    "referring_physician", "requesting_physician", "department", "status")},
                "accession_number": o.accession_number if not o.accession_number.startswith("A0") else "<assigned>",
                "study_instance_uid": "<generated>" if _UID_GENERATED.match(o.study_instance_uid) else o.study_instance_uid,
                "steps": [{f: (str(getattr(s, f)) if f == "start" else getattr(s, f)) for f in (
                    "sps_id", "modality", "station_ae_title", "station_name", "location", "start",
                    "duration_minutes", "protocol_code", "protocol_text", "description", "status")} for s in steps],
                "events": [[e.from_status, e.to_status, e.note] for e in events],
            })
        messages = session.exec(select(StoredMessage).order_by(col(StoredMessage.id))).all()
        for m in messages:
            out["messages"].append([m.message_type, m.control_id, m.status, m.ack_code, m.patient_id,
                                    m.error or ""])
    return out


def golden(name: str, actual: Any) -> None:
    """Compare with tests/data/golden/NAME.json; PACS_UPDATE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / f"{name}.json"
    text = json.dumps(actual, ensure_ascii=False, indent=1, sort_keys=True, default=str) + "\n"
    if os.environ.get("PACS_UPDATE_GOLDEN") or not path.exists():
        if not os.environ.get("PACS_UPDATE_GOLDEN") and os.environ.get("CI"):
            raise AssertionError(f"golden file {path} is missing")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert json.loads(text) == expected, f"differs from golden {path} (PACS_UPDATE_GOLDEN=1 to accept)"
