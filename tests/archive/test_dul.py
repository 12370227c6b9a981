"""The reactors' sleeps end when there is work (pacs.archive.dul.wake_up), and serving over a
woken association is what it was: every exchange answered, release and abort seen."""

from __future__ import annotations

import os
import socket
import threading
import time

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlmodel import Session, select

from pacs.archive import dul
from pacs.archive.index import Instance
from tests.archive.raw import RawStorer, plain_ct

LONG = 5.0  # seconds a sleep would last if nothing woke it


def _sleeping(setup) -> tuple[threading.Thread, list[float]]:  # type: ignore[no-untyped-def]
    took: list[float] = []

    def run() -> None:
        setup(threading.current_thread())
        start = time.monotonic()
        dul._sleep(LONG)
        took.append(time.monotonic() - start)

    thread = threading.Thread(target=run)
    return thread, took


def test_an_association_thread_sleeps_until_woken():
    wake = threading.Event()
    thread, took = _sleeping(lambda t: setattr(t, "_pacs_wake", wake))
    thread.start()
    time.sleep(0.05)
    wake.set()  # what every DUL state-machine action does
    thread.join(LONG)
    assert took and took[0] < LONG / 2 and not wake.is_set()  # woken, and the event cleared for the next sleep


def test_a_dul_thread_sleeps_until_data_arrives_or_something_is_to_be_sent():
    server, client = socket.socketpair()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        class Wrapped:  # pynetdicom's AssociationSocket keeps the socket as .socket
            socket = server

        def setup(thread):  # type: ignore[no-untyped-def]
            thread._pacs_wake_fd = fd
            thread.socket = Wrapped()

        thread, took = _sleeping(setup)
        thread.start()
        time.sleep(0.05)
        client.send(b"\x04")  # a PDU begins to arrive
        thread.join(LONG)
        assert took and took[0] < LONG / 2
        server.recv(1)

        thread, took = _sleeping(setup)
        thread.start()
        time.sleep(0.05)
        os.eventfd_write(fd, 1)  # what send_pdu does
        thread.join(LONG)
        assert took and took[0] < LONG / 2
    finally:
        os.close(fd)
        server.close()
        client.close()


def test_a_woken_association_serves_as_before(server):
    """The server's associations are woken (EVT_CONN_OPEN); many exchanges on one, released or
    aborted, are all answered, and the next association is served."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    for ending in ("release", "abort"):
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        assert assoc.is_established
        assert [int(assoc.send_c_echo().Status) for _ in range(20)] == [0] * 20
        getattr(assoc, ending)()
        assert not assoc.is_established
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert int(assoc.send_c_echo().Status) == 0
    woken = [a for a in server.server._dicom.ae.active_associations if hasattr(a, "_pacs_wake")]
    assoc.release()
    assert woken  # the association the server was serving was a woken one


def test_a_sender_goes_on_only_once_the_reactor_is_held(server):
    """pynetdicom issue #875: to another thread, an association's reactor is paused only while
    it is held at its checkpoint, never in the instants around it when pynetdicom's own flag
    says so, and a handler on the reactor's thread still reads that flag."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established and isinstance(assoc._reactor_checkpoint, dul._Checkpoint)
    try:
        # Running freely, the reactor turns every millisecond, raising its flag at each turn.
        seen = []
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            seen.append(assoc._is_paused)
        assert not any(seen)
        assoc._reactor_checkpoint.clear()
        deadline = time.monotonic() + 5
        while not assoc._is_paused and time.monotonic() < deadline:
            time.sleep(0.0001)
        assert assoc._is_paused and assoc._reactor_checkpoint.held
        assoc._reactor_checkpoint.set()
        assert [int(assoc.send_c_echo().Status) for _ in range(50)] == [0] * 50
    finally:
        assoc.release()
    assert not assoc.is_established


def test_a_pdu_is_read_whole_whatever_pieces_it_arrives_in():
    """dul._recv (AssociationSocket.recv): every byte asked for, in order, however the peer's
    writes split it; what arrived when the peer closes early (pynetdicom then reports the PDU
    short and ends the association, Evt17)."""
    from pynetdicom.transport import AssociationSocket

    ours, peer = socket.socketpair()
    payload = os.urandom(300_000)

    def send() -> None:
        for start in range(0, len(payload), 7_001):  # odd-sized pieces with pauses between some
            peer.sendall(payload[start:start + 7_001])
            if start % 70_010 == 0:
                time.sleep(0.002)
        peer.sendall(b"tail")
        peer.close()

    sender = threading.Thread(target=send)
    sender.start()
    transport = AssociationSocket.__new__(AssociationSocket)  # only its socket is read here
    transport.socket = ours
    try:
        assert bytes(dul._recv(transport, len(payload))) == payload
        assert bytes(dul._recv(transport, 100)) == b"tail"  # closed after 4 of 100 bytes
    finally:
        sender.join(LONG)
        ours.close()


def test_an_idle_dul_thread_waits_and_an_abort_still_goes_at_once(server):
    """pynetdicom's DUL thread turns every millisecond; a woken one waits for its socket, its
    wake-up fd or DUL_POLL, so an association doing nothing leaves the GIL to those that work.
    An abort of ours is sent at once, and the DUL thread stops as soon as it is told to."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    [theirs] = [a for a in server.server._dicom.ae.active_associations if hasattr(a, "_pacs_wake")]
    provider = theirs.dul
    turns = []
    look = provider._is_transport_event

    def counted():  # type: ignore[no-untyped-def]
        turns.append(time.monotonic())
        return look()

    provider._is_transport_event = counted  # the reactor looks at its socket once a turn
    time.sleep(1.0)
    assert 0 < len(turns) <= 100  # turning every millisecond: ~1,000; waiting DUL_POLL: ~20
    assert int(assoc.send_c_echo().Status) == 0  # the request is read as it arrives

    start = time.monotonic()
    theirs.abort()  # sends the A-ABORT, then waits for its DUL thread to stop
    took = time.monotonic() - start
    deadline = time.monotonic() + LONG
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assoc.is_aborted and not provider.is_alive()
    assert took < 1.0, took


def test_a_c_store_is_served_by_the_dul_thread_that_read_it(server, tmp_path, monkeypatch):
    """Each C-STORE request the DUL thread completes is served there (dul._serve_store), not
    handed to the association's thread: answered, and the object filed and indexed."""
    served: list[tuple[bool, bool]] = []
    serve = dul._serve_store

    def spy(provider):  # type: ignore[no-untyped-def]
        result = serve(provider)
        served.append((result, threading.current_thread() is provider))
        return result

    monkeypatch.setattr(dul, "_serve_store", spy)
    uids = []
    with RawStorer(server.dicom_port, [CTImageStorage, Verification]) as scu:
        for _ in range(3):
            ds, data = plain_ct(tmp_path)
            assert scu.store(CTImageStorage, ds.SOPInstanceUID, data).Status == 0
            uids.append(str(ds.SOPInstanceUID))
        assert int(scu.assoc.send_c_echo().Status) == 0  # a C-ECHO goes the association thread's way
    assert [on_dul for taken, on_dul in served if taken] == [True] * 3
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        with Session(server.db.engine) as session:
            indexed = session.exec(select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(uids))).all()
        if len(indexed) == len(uids):
            break
        time.sleep(0.05)
    assert sorted(indexed) == sorted(uids)


def test_an_idle_association_waits_and_a_pause_still_holds_it_at_once(server):
    """pynetdicom's reactor turns every millisecond; a woken association's waits for its work or
    ASSOCIATION_POLL, and a thread that pauses it (pynetdicom's send_* methods) wakes it, so the
    pause holds it at once rather than after its wait."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    try:
        [theirs] = [a for a in server.server._dicom.ae.active_associations if hasattr(a, "_pacs_wake")]
        turns = []
        look = theirs.dimse.get_msg

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            turns.append(time.monotonic())
            return look(*args, **kwargs)

        theirs.dimse.get_msg = counted  # the reactor looks for a message once a turn
        time.sleep(1.0)
        assert 0 < len(turns) <= 100  # turning every millisecond: ~1,000; waiting ASSOCIATION_POLL: ~20
        for _ in range(5):
            time.sleep(0.013)
            start = time.monotonic()
            theirs._reactor_checkpoint.clear()
            while not theirs._is_paused and time.monotonic() - start < 5:
                time.sleep(0.0001)
            held_after = time.monotonic() - start
            theirs._reactor_checkpoint.set()
            assert held_after < dul.ASSOCIATION_POLL / 2, held_after
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
