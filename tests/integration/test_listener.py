"""The MLLP listener under bad input: every case answered correctly, the listener still serving."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from sqlmodel import Session, col, func, select

from pacs.integration.front import STOP_GRACE
from pacs.integration.message_store import Status, StoredMessage
from pacs.registry.models import ImagingOrder, OrderEvent, Patient
from tests.conftest import RunningServer, front_process_settings, one_database
from tests.helpers import CR, FS, VT, MLLPClient, ack_fields, load

ADT = load("adt_a01_ihe.hl7")


@pytest.fixture
def settings(settings):
    """As `pacs serve` runs: the MLLP connections served by the front process."""
    return front_process_settings(settings)


def still_serving(port: int) -> None:
    with MLLPClient(port) as client:
        assert ack_fields(client.send(ADT))["code"] == "AA"


def stored(db, **where) -> list[StoredMessage]:
    with Session(db.engine) as session:
        query = select(StoredMessage).order_by(col(StoredMessage.id))
        for key, value in where.items():
            query = query.where(getattr(StoredMessage, key) == value)
        return list(session.exec(query))


def count(db, model) -> int:
    with Session(db.engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def replace(message: bytes, old: str, new: str, codec: str = "utf-8") -> bytes:
    return message.decode(codec).replace(old, new).encode(codec)


# (case, payload, acknowledgement code, HL7 error code in ERR-3)
BAD_MESSAGES = [
        ("no MSH", b"PID|1||X\rPV1|1|O", "AR", "100"),
        ("field separator is a letter", replace(ADT, "MSH|^~\\&|", "MSHA^~\\&A").replace(b"|", b"A"), "AR", "100"),
        ("encoding characters missing", replace(ADT, "MSH|^~\\&|", "MSH||"), "AR", "100"),
        ("unknown message type", replace(ADT, "ADT^A01^ADT_A01", "ORU^R01^ORU_R01"), "AR", "200"),
        ("unsupported order event", replace(ADT, "ADT^A01^ADT_A01", "ORM^O02"), "AR", "201"),
        ("unsupported version", replace(ADT, "|P|2.5|", "|P|2.7|"), "AR", "203"),
        ("unsupported processing id", replace(ADT, "|P|2.5|", "|X|2.5|"), "AR", "202"),
        ("empty control id", replace(ADT, "|ADT0001|", "||"), "AR", "101"),
        ("invalid UTF-8 bytes", ADT.replace("张".encode(), b"\xff\xfe", 1), "AR", "102"),
        ("segment break right after MSH", ADT.replace(b"MSH|", b"MSH\r|", 1), "AR", "100"),
        ("NUL byte in MSH-18", replace(ADT, "UNICODE UTF-8", "UNI\0CODE UTF-8"), "AR", "102"),
        ("unknown sex code", replace(ADT, "|19900101|M|", "|19900101|X|"), "AE", "103"),
        ("bad birth date", replace(ADT, "|19900101|M|", "|19901301|M|"), "AE", "102"),
        ("no patient identifier", replace(ADT, "P10001^^^HOSP^PI~110101199001011234^^^CHN^NI", ""), "AE", "101"),
]


def test_bad_messages_are_answered_and_stored(server):
    """One server for every case (a front process is a Python start): each bad message, then a
    good one on the same connection, each case on a connection of its own."""
    for number, (name, payload, code, error) in enumerate(BAD_MESSAGES):
        good_adt = replace(ADT, "|ADT0001|", f"|GOOD{number:04d}|")  # not a resend of the last case's
        seen = len(stored(server.db))
        with MLLPClient(server.mllp_port) as client:
            ack = ack_fields(client.send(payload))
            assert ack["code"] == code, f"{name}: {ack['text']}"
            assert ack["err"] is not None and error in "|".join(ack["err"]), f"{name}: {ack['text']}"
            # the same connection keeps working
            assert ack_fields(client.send(good_adt))["code"] == "AA", name
        bad, good = stored(server.db)[seen:]
        assert bad.raw == payload, name  # kept byte for byte, whatever it was
        assert bad.status == Status.ERROR and bad.error, name
        assert good.status == Status.PROCESSED, name
        assert count(server.db, Patient) == 1, name  # only the good ADTs did anything


@one_database
def test_err_segment_names_segment_and_field_v25(server):
    with MLLPClient(server.mllp_port) as client:
        ack = ack_fields(client.send(replace(ADT, "|19900101|M|", "|19900101|X|")))
    err = ack["err"]
    assert err[2] == "PID^1^8^1"  # ERR-2 error location: segment, sequence, field, repetition
    assert err[3] == "103^Table value not found^HL70357"  # ERR-3
    assert err[4] == "E"  # ERR-4 severity
    assert "'X'" in err[8]  # ERR-8 user message says what was wrong


@one_database
def test_err_segment_v231_uses_err1_and_msa3(server):
    order = load("orm_o01_nw_ihe.hl7").replace(b"ORC|NW|PL0001^HIS|", b"ORC|NW||").replace(
        b"OBR|1|PL0001^HIS|", b"OBR|1||")
    with MLLPClient(server.mllp_port) as client:
        ack = ack_fields(client.send(order))
    assert ack["code"] == "AE"
    assert ack["err"][1] == "ORC^1^2^101&Required field missing&HL70357"
    msa = [s for s in ack["text"].split("\r") if s.startswith("MSA")][0].split("|")
    assert "order.placer" in msa[3]


def test_update_or_cancel_for_unknown_order_is_ae_204(server):
    with MLLPClient(server.mllp_port) as client:
        for name in ("orm_o01_xo_ihe.hl7", "orm_o01_ca_ihe.hl7"):
            ack = ack_fields(client.send(load(name)))
            assert ack["code"] == "AE"
            assert ack["err"][1].startswith("ORC^1^2^204&Unknown key identifier")
    assert count(server.db, ImagingOrder) == 0


def test_unknown_procedure_without_modality_is_ae_103(server):
    order = load("orm_o01_nw_ihe.hl7").replace(b"CT0001^", b"ZZ999^").replace(b"|CT|", b"||")
    with MLLPClient(server.mllp_port) as client:
        ack = ack_fields(client.send(order))
    assert ack["code"] == "AE" and "103" in ack["err"][1] and "ZZ999" in ack["text"]
    assert count(server.db, ImagingOrder) == 0 and count(server.db, Patient) == 0  # nothing half-applied


def test_cancel_after_exam_started_is_refused(server):
    with MLLPClient(server.mllp_port) as client:
        for name in ("orm_o01_nw_ihe.hl7", "orm_o01_sc_ihe.hl7"):
            assert ack_fields(client.send(load(name)))["code"] == "AA"
        cancel = load("orm_o01_ca_ihe.hl7").replace(b"PL0002", b"PL0001")
        ack = ack_fields(client.send(cancel))
    assert ack["code"] == "AE" and "in_progress" in ack["text"]


def test_duplicate_control_id_is_acknowledged_again_not_applied_twice(server):
    order = load("orm_o01_nw_ihe.hl7")
    with MLLPClient(server.mllp_port) as client:
        first = client.send(order)
        second = client.send(order)
    assert ack_fields(first)["code"] == ack_fields(second)["code"] == "AA"
    assert count(server.db, ImagingOrder) == 1
    assert count(server.db, OrderEvent) == 1
    rows = stored(server.db)
    assert [r.status for r in rows] == [Status.PROCESSED, Status.FILTERED]
    assert "duplicate of message" in rows[1].error


@one_database
def test_truncated_frame_and_dropped_connection_are_discarded(server):
    with socket.create_connection(("127.0.0.1", server.mllp_port)) as sock:
        sock.sendall(VT + ADT[:40])  # the sender dies mid-frame
    still_serving(server.mllp_port)
    assert len(stored(server.db)) == 1  # never acknowledged, never stored


@one_database
def test_new_start_block_abandons_the_partial_frame(server):
    with MLLPClient(server.mllp_port) as client:
        client.sock.sendall(VT + b"MSH|^~\\&|HIS|IHE_OP|PA")
        assert ack_fields(client.send(ADT))["code"] == "AA"


@one_database
def test_frame_over_size_limit_is_rejected_and_connection_continues(start_server):
    server = start_server(mllp={"max_message_bytes": 2000})
    big = ADT + b"NTE|1||" + b"x" * 5000 + CR
    with MLLPClient(server.mllp_port) as client:
        ack = ack_fields(client.send(big))
        assert ack["code"] == "AR" and "exceeds" in ack["text"] and ack["control_id"] == "ADT0001"
        assert ack_fields(client.send(ADT))["code"] == "AA"
    assert len(stored(server.db)) == 1


@one_database
def test_silent_connection_is_closed_after_idle_timeout(start_server):
    server = start_server(mllp={"idle_timeout_seconds": 0.5})
    with socket.create_connection(("127.0.0.1", server.mllp_port)) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server
        assert time.monotonic() - started < 4
    still_serving(server.mllp_port)


def test_many_connections_many_messages(server):
    errors: list[str] = []

    def sender(n: int) -> None:
        try:
            with MLLPClient(server.mllp_port) as client:
                for i in range(20):
                    message = replace(ADT, "ADT0001", f"C{n}M{i}").replace(
                        b"P10001^^^HOSP^PI~110101199001011234", f"Q{n}X{i}^^^HOSP^PI~N{n}X{i}".encode())
                    ack = ack_fields(client.send(message))
                    if ack["code"] != "AA" or ack["control_id"] != f"C{n}M{i}":
                        errors.append(ack["text"])
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert count(server.db, Patient) == 160
    assert len(stored(server.db, status=Status.PROCESSED)) == 160


@one_database
def test_keepalive_bytes_between_frames_are_ignored(server):
    with MLLPClient(server.mllp_port) as client:
        client.sock.sendall(b"\r\n")
        assert ack_fields(client.send(ADT))["code"] == "AA"


def test_filtered_event_is_acknowledged(server):
    message = replace(ADT, "ADT^A01^ADT_A01", "ADT^A60^ADT_A60")
    with MLLPClient(server.mllp_port) as client:
        assert ack_fields(client.send(message))["code"] == "AA"
    [row] = stored(server.db)
    assert row.status == Status.FILTERED and "A60" in row.error
    assert count(server.db, Patient) == 0


def test_strict_mode_rejects_segments_that_break_their_definition(start_server):
    server = start_server(hl7={"strict": True})
    with MLLPClient(server.mllp_port) as client:
        for name in ("adt_a01_ihe.hl7", "orm_o01_nw_ihe.hl7", "omi_o23_nw_ihe.hl7"):
            assert ack_fields(client.send(load(name)))["code"] == "AA"  # Z-segments pass
        bad_type = replace(load("adt_a08_ihe.hl7"), "|19900101|M|", "|1990-01-01|M|")
        ack = ack_fields(client.send(bad_type))
        assert ack["code"] == "AR" and ack["err"][2].startswith("PID^1") and "102" in ack["err"][3]
        extra = load("adt_a08_ihe.hl7").replace(b"\rPV1|", b"|" * 60 + b"x\rPV1|")
        ack = ack_fields(client.send(extra))
        assert ack["code"] == "AR" and "more fields than PID" in ack["text"]


def test_tolerant_mode_takes_what_strict_mode_rejects(server):
    with MLLPClient(server.mllp_port) as client:
        extra = load("adt_a08_ihe.hl7").replace(b"\rPV1|", b"|" * 60 + b"x\rPV1|")
        assert ack_fields(client.send(extra))["code"] == "AA"


@one_database
@pytest.mark.parametrize("front", [True, False], ids=["front process", "in the main process"])
def test_at_stop_a_connection_between_messages_closes_at_once_one_in_a_message_is_not_cut(settings, front):
    """A stop closes at once what has no message in flight (it used to wait out the whole grace
    for an idle sender) and leaves a connection that is in a message open until it arrives. In
    the main process the message is answered; the front process has stopped taking messages by
    then (the main process stops it last), so it closes without an ACK and the sender resends."""
    running = RunningServer(settings.model_copy(
        update={"mllp": settings.mllp.model_copy(update={"front_process": front})})).start()
    idle = MLLPClient(running.mllp_port, timeout=STOP_GRACE)
    busy = MLLPClient(running.mllp_port, timeout=STOP_GRACE)
    stopper = threading.Thread(target=running.stop)
    try:
        assert ack_fields(idle.send(ADT))["code"] == "AA"  # and now between two messages
        half = len(ADT) // 2
        busy.sock.sendall(VT + ADT[:half])
        time.sleep(0.5)  # the start block and half the message are in before the stop
        asked = time.monotonic()
        stopper.start()
        assert idle.sock.recv(1) == b""  # closed by the server, not timed out
        assert time.monotonic() - asked < STOP_GRACE / 2
        busy.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            busy.sock.recv(1)  # still open
        busy.sock.settimeout(STOP_GRACE)
        busy.sock.sendall(ADT[half:] + FS + CR)
        if front:
            with pytest.raises(ConnectionError):
                busy.read()
        else:
            assert ack_fields(busy.read())["code"] == "AA"
    finally:
        if stopper.ident is None:
            running.stop()
        else:
            stopper.join(60)
        idle.close()
        busy.close()
