"""``[dicom] processes``: receiver processes serve the connections ``pacs serve`` accepts.

New connections go to the receivers in turn, the main process indexing what they receive;
objects of one study sent over several associations at once end up in one study, every one kept
byte for byte; the receivers stop with the server, die with it when it is killed, and nothing
they acknowledged is lost; a receiver that is gone leaves its turns to the main process."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlmodel import Session, func, select

from pacs.archive.index import Instance, InstanceFile, Series, Study
from pacs.db import Database
from tests.archive.corpus import dataset_bytes
from tests.archive.test_durability import (
    COUNT,
    assert_kept,
    make_instances,
    successes,
    verbose_storescu,
)
from tests.conftest import one_database
from tests.dicom import needs_dcmtk
from tests.process import DEFAULT_PROCESSES, ServeProcess, alive, spawned_children

# The MLLP front process is another spawned interpreter: left out, so that every child is a receiver.
ENV = {"PACS_DICOM__PROCESSES": "2", "PACS_ARCHIVE__MIN_FREE_BYTES": "0", "PACS_MLLP__FRONT_PROCESS": "false"}


def receivers(parent: int) -> list[int]:
    """The receiver processes ``pacs serve`` started (multiprocessing's spawned interpreters)."""
    return spawned_children(parent)


def serving_process(server_port: int, client_port: int, candidates: list[int]) -> int | None:
    """Which of ``candidates`` holds the server end of the TCP connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    if inode is None:
        return None
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def test_associations_are_spread_over_the_receivers_and_every_object_is_kept(tmp_path, database_url):
    files = make_instances(tmp_path / "in")  # one study, one series
    server = ServeProcess(tmp_path / "data", database_url, **{**ENV, "PACS_DICOM__PROCESSES": "3"}).start().wait_for_receivers()
    try:
        children = receivers(server.proc.pid)
        assert len(children) == 2 and all(alive(pid) for pid in children)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(Verification)
        associations = [ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS") for _ in range(16)]
        assert all(a.is_established for a in associations)
        served_by = [serving_process(server.dicom_port, a.dul.socket.socket.getsockname()[1],
                                     [server.proc.pid, *children]) for a in associations]
        # The least busy process, the main one counting one more for its indexing: the
        # receivers share most, the main process takes some once they are busier.
        main, *by_receivers = [served_by.count(pid) for pid in (server.proc.pid, *children)]
        assert main + sum(by_receivers) == 16 and 1 <= main < min(by_receivers), served_by
        assert max(by_receivers) - min(by_receivers) <= 2, served_by

        paths = list(files.values())
        statuses: list[int] = []

        def send(assoc, part):  # type: ignore[no-untyped-def]
            for path in part:
                statuses.append(int(assoc.send_c_store(path).Status))
            assert int(assoc.send_c_echo().Status) == 0
            assoc.release()

        threads = [threading.Thread(target=send, args=(a, paths[i::16])) for i, a in enumerate(associations)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert statuses == [0] * len(paths)

        db = Database(database_url)
        with Session(db.engine) as session:
            assert session.exec(select(func.count()).select_from(Study)).one() == 1  # one study, whoever filed first
            assert session.exec(select(func.count()).select_from(Series)).one() == 1
            study = session.exec(select(Study)).one()
            assert study.number_of_instances == len(files)
            rows = session.exec(select(Instance.sop_instance_uid, InstanceFile.key)
                                .join(InstanceFile, InstanceFile.instance == Instance.id)).all()
        db.dispose()
        storage = tmp_path / "data" / "storage"
        assert {uid for uid, _ in rows} == set(files)
        for uid, key in rows:
            assert dataset_bytes(storage / key[:2] / key[2:4] / key) == dataset_bytes(files[uid])
        assert list((storage / ".incoming").iterdir()) == []
        assert "indexing" not in server.log.read_text()  # nothing left for a restart to index
        time.sleep(0.3)  # the receivers report their associations gone
        lone = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        assert serving_process(server.dicom_port, lone.dul.socket.socket.getsockname()[1],
                               [server.proc.pid, *children]) in children  # received on one core, indexed on another
        lone.release()
    finally:
        assert server.terminate() == 0
    assert not any(alive(pid) for pid in children)  # stopped with the server


@needs_dcmtk
def test_nothing_acknowledged_by_any_process_is_lost_when_the_server_is_killed(tmp_path, database_url):
    files = make_instances(tmp_path / "in")
    by_path = {str(p): uid for uid, p in files.items()}
    ordered = sorted(by_path)
    server = ServeProcess(tmp_path / "data", database_url, **ENV).start().wait_for_receivers()
    children = receivers(server.proc.pid)
    assert len(children) == 1
    senders = [verbose_storescu(server.dicom_port, ordered[i::4]) for i in range(4)]
    acknowledged: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def read(sender: subprocess.Popen[str]) -> None:
        for path in successes(sender):
            with lock:
                acknowledged.append(by_path[path])
                if len(acknowledged) >= COUNT // 3 and not killed.is_set():
                    killed.set()
                    server.kill()  # mid-stream, objects in flight in both processes

    readers = [threading.Thread(target=read, args=(s,)) for s in senders]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(120)
    for sender in senders:
        sender.wait(60)
    assert killed.is_set() and COUNT // 3 <= len(acknowledged) < COUNT
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in children)  # the receiver died with the server

    restarted = ServeProcess(tmp_path / "data", database_url, **ENV)
    restarted.dicom_port = server.dicom_port  # the same port again: nothing holds it
    restarted.start()
    try:
        assert_kept(database_url, tmp_path / "data" / "storage", acknowledged, files)
    finally:
        assert restarted.terminate() == 0


@one_database
def test_a_receiver_that_is_gone_leaves_its_turns_to_the_main_process(tmp_path, database_url):
    server = ServeProcess(tmp_path / "data", database_url, **ENV).start().wait_for_receivers()
    try:
        [child] = receivers(server.proc.pid)
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        for _ in range(4):  # every turn, the receiver's included, is served
            assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
            assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
            assoc.release()
        assert "is gone" in server.log.read_text()
    finally:
        assert server.terminate() == 0


@one_database
def test_by_default_one_process_serves_dicom(tmp_path, database_url):
    """``[dicom] processes`` unset: the main process serves every association and starts no
    receiver (the MLLP front process, left out here, has its own tests)."""
    server = ServeProcess(tmp_path / "data", database_url, PACS_ARCHIVE__MIN_FREE_BYTES="0",
                          PACS_MLLP__FRONT_PROCESS="false", PACS_DICOM__PROCESSES=DEFAULT_PROCESSES).start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert receivers(server.proc.pid) == []
        assert "receiver" not in server.log.read_text()
    finally:
        assert server.terminate() == 0


@one_database
def test_with_three_processes_the_server_is_ready_first_then_the_receivers_join(tmp_path, database_url):
    """The server answers DICOM as soon as it is ready, from the main process, and the two
    receivers join once started."""
    server = ServeProcess(tmp_path / "data", database_url, PACS_ARCHIVE__MIN_FREE_BYTES="0",
                          PACS_MLLP__FRONT_PROCESS="false", PACS_DICOM__PROCESSES="3").start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="PACS")  # receivers or not
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
        server.wait_for_receivers()
        assert len(receivers(server.proc.pid)) == 2
    finally:
        assert server.terminate() == 0
