"""The registry services as the interface engine drives them: what a message changes, and only that."""

from __future__ import annotations

from sqlmodel import Session, col, select

from pacs.registry.models import Patient, PatientIdentifier, Visit
from tests.helpers import MLLPClient, ack_fields, load


def send(server, *messages: bytes) -> None:
    with MLLPClient(server.mllp_port) as client:
        for message in messages:
            ack = ack_fields(client.send(message))
            assert ack["code"] == "AA", ack["text"]


def again(message: bytes, control_id: str, *changes: tuple[str, str]) -> bytes:
    """The same message with another MSH-10 (so it is applied, not taken for a duplicate)."""
    text = message.decode("utf-8").replace("|ADT0001|", f"|{control_id}|", 1)
    for old, new in changes:
        text = text.replace(old, new)
    return text.encode("utf-8")


def registry(db) -> tuple[list[Patient], list[Visit], list[PatientIdentifier]]:
    with Session(db.engine) as session:
        return (list(session.exec(select(Patient))), list(session.exec(select(Visit))),
                list(session.exec(select(PatientIdentifier).order_by(col(PatientIdentifier.id)))))


def test_a_message_repeating_what_is_stored_writes_nothing(server):
    admit = load("adt_a01_ihe.hl7")
    send(server, admit)
    [patient], [visit], _ = registry(server.db)
    send(server, again(admit, "ADT0009"))
    [patient_after], [visit_after], _ = registry(server.db)
    assert patient_after.updated_at == patient.updated_at
    assert visit_after.updated_at == visit.updated_at


def test_a_changed_detail_is_written(server):
    admit = load("adt_a01_ihe.hl7")
    send(server, admit, again(admit, "ADT0009", ("|19900101|M|", "|19900102|M|"), ("|W3^301^2^", "|W3^302^2^")))
    [patient], [visit], _ = registry(server.db)
    assert str(patient.birth_date) == "1990-01-02" and patient.name_ideographic == "张^三"
    assert (visit.ward, visit.room) == ("W3", "302") and visit.patient_class == "inpatient"
    assert patient.updated_at > patient.created_at


def test_identifier_type_follows_the_sender(server):
    admit = load("adt_a01_ihe.hl7")
    send(server, admit, again(admit, "ADT0009", ("P10001^^^HOSP^PI~", "P10001^^^HOSP^MR~")))
    [patient], _, identifiers = registry(server.db)
    assert [(i.value, i.authority, i.type_code) for i in identifiers] == [
        ("P10001", "HOSP", "MR"), ("110101199001011234", "CHN", "NI")]
    assert {i.patient for i in identifiers} == {patient.id}


def test_an_identifier_sent_twice_is_stored_once_with_the_type_sent_last(server):
    admit = load("adt_a01_ihe.hl7")
    send(server, again(admit, "ADT0009", ("P10001^^^HOSP^PI~110101199001011234^^^CHN^NI",
                                          "P20002^^^HOSP^PI~P20002^^^HOSP^MR~P20002^^^HOSP")))
    [patient], _, identifiers = registry(server.db)
    assert patient.patient_id == "P20002"
    assert [(i.value, i.authority, i.type_code, i.patient) for i in identifiers] == [
        ("P20002", "HOSP", "MR", patient.id)]
