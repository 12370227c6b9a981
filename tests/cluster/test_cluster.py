"""Three `pacs serve` nodes behind HAProxy on one PostgreSQL database and one S3 object store
(deploy/cluster.sh with moto's S3 server), started once for everything below:

- HL7 senders (MLLP) and modalities (DCMTK's storescu, one process per association) stream
  through HAProxy while node 1 is SIGKILLed; every acknowledged message is applied exactly once,
  and every acknowledged object is indexed exactly once and readable from the object store
  through the nodes still running, before node 1 comes back;
- node 1 restarts and rejoins: it serves what the others stored;
- storage commitment (N-ACTION, the N-EVENT-REPORT on the same association) through HAProxy
  commits what any node stored;
- C-MOVE (DCMTK's movescu) to a loopback storescp that every node knows as a peer, through
  HAProxy and to each node in turn: every node sends the whole study, whoever stored it;
- query and retrieve (findscu at study and image level, getscu), QIDO-RS and the FHIR
  ImagingStudy through HAProxy and from each node: the same answers everywhere, every object
  retrieved as sent; a FHIR ServiceRequest posted to one node is on the next one's worklist and
  read back from the third, and posted again there with If-None-Exist it is not ordered twice;
  an object stored by STOW-RS on one node is found by QIDO-RS and retrieved by WADO-RS from the
  others.

One test function: a cluster costs most of a minute to start on a loaded machine, and pytest-xdist
could hand the tests of one module to different workers, each starting its own.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel
from sqlalchemy import text
from sqlmodel import select

from pacs.db import Database
from pacs.integration.message_store import Status, StoredMessage
from tests.archive.storage_helpers import make_study
from tests.dicom import findscu
from tests.helpers import DATA, MLLPClient, ack_fields, load
from tests.process import free_cluster_base

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster.sh"
MOTO = Path(sys.executable).parent / "moto_server"
MESSAGES = 60  # HL7 messages, node 1 killed after the first third
INSTANCES = 60  # one CT series, 256 x 256
CHUNK = 10  # files per storescu process (one association each): node 1 is killed in the first
# round, while each of the MODALITIES associations is under way
MODALITIES = 3  # storescu processes at a time
PASSWORD = "cluster-admin-1"
COMMITMENT_UID = "1.2.840.10008.1.20.1.1"
COMMITTED = 12  # instances asked to be committed: each copy is read back from S3 and hashed


class Cluster:
    def __init__(self, folder: Path, env: dict[str, str], base: int) -> None:
        self.folder, self.env, self.base = folder, env, base
        self.dicom, self.mllp, self.http, self.s3 = base, base + 1, base + 2, f"http://127.0.0.1:{base + 3}"

    def __call__(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run([str(CLUSTER), *args, str(self.folder)], check=False,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def log_size(self) -> int:
        return (self.folder / "haproxy.log").stat().st_size

    def wait_in_log(self, lines: list[str], after: int, timeout: float = 60) -> None:
        """Wait until HAProxy's log says each of ``lines`` (a server taken out or back) past
        its first ``after`` bytes."""
        deadline = time.monotonic() + timeout
        while True:
            text = (self.folder / "haproxy.log").read_bytes()[after:].decode(errors="replace")
            missing = [line for line in lines if line not in text]
            if not missing:
                return
            assert time.monotonic() < deadline, f"HAProxy's log never said {missing}"
            time.sleep(0.2)

    def node(self, n: int, what: int) -> int:
        """Node n's own port: 0 DICOM, 1 MLLP, 2 HTTP (deploy/cluster.sh)."""
        return self.base + 10 * n + what


def established_to(port: int) -> bool:
    """Whether a TCP connection to local ``port`` is established now (/proc/net/tcp, IPv4)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == TCP_ESTABLISHED and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return True
    return False


TCP_ESTABLISHED = "01"  # /proc/net/tcp's st column


# -- HL7 --------------------------------------------------------------------------------------
def send_until_acknowledged(port: int, message: bytes, deadline: float) -> bytes:
    """One connection per message, so HAProxy spreads them; a connection lost to a dead node is
    answered by sending again, as an HIS does (the duplicate check keeps it applied once)."""
    while True:
        try:
            with MLLPClient(port, timeout=20) as client:
                ack = client.send(message)
            if ack_fields(ack)["code"] == "AA":
                return ack
        except OSError:
            pass
        assert time.monotonic() < deadline, "a message was never acknowledged"
        time.sleep(0.2)


def send_hl7(port: int, sent: list[str], killed: threading.Event, deadline: float) -> None:
    for n in range(MESSAGES):
        if n == MESSAGES // 3:
            assert killed.wait(max(0.0, deadline - time.monotonic())), "node 1 was never killed"
        message = (load("adt_a01_ihe.hl7").replace(b"|ADT0001|", f"|HA{n}|".encode())
                   .replace(b"P10001^", f"PHA{n}^".encode()))
        send_until_acknowledged(port, message, deadline)
        sent.append(f"HA{n}")


# -- DICOM ------------------------------------------------------------------------------------
def storescu(port: int, paths: list[Path]) -> tuple[list[Path], int]:
    """One association sending ``paths``: the files it saw acknowledged, and its exit status
    (non-zero when the association broke off). A Warning is an acknowledgement too (PS3.4
    B.2.3): a file sent again after its first answer was lost with node 1 may find its first
    copy indexed already (taken over from node 1's staging), and is answered 0xB006, a copy
    already held."""
    done = subprocess.run(["storescu", "-v", "-aet", "CT1", "-aec", "PACS", "-to", "30", "-ta", "30",
                           "-td", "60", "127.0.0.1", str(port), *map(str, paths)],
                          capture_output=True, text=True, timeout=300, check=False)
    acknowledged, current = [], None
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif line.startswith(("I: Received Store Response (Success)", "I: Received Store Response (Warning")) \
                and current is not None:
            acknowledged.append(current)
            current = None
    return acknowledged, done.returncode


def modalities(port: int, paths: list[Path], acknowledged: set[Path], broken: list[int],
               deadline: float) -> None:
    """MODALITIES senders, each taking CHUNK files at a time for one association; what an
    association did not see acknowledged goes back in the queue for another (a modality sends
    again what it was not answered for)."""
    todo: queue.Queue[list[Path]] = queue.Queue()
    for start in range(0, len(paths), CHUNK):
        todo.put(paths[start:start + CHUNK])
    lock = threading.Lock()
    failures: list[Exception] = []

    def sender() -> None:
        try:
            while time.monotonic() < deadline:
                with lock:
                    if len(acknowledged) == len(paths):
                        return
                try:
                    chunk = todo.get(timeout=0.5)
                except queue.Empty:
                    continue
                seen, status = storescu(port, chunk)
                with lock:
                    acknowledged.update(seen)
                    if status != 0:
                        broken.append(status)
                rest = [path for path in chunk if path not in seen]
                if rest:
                    todo.put(rest)
                    time.sleep(0.2)
        except (OSError, subprocess.SubprocessError) as exc:  # reported by the caller
            failures.append(exc)

    threads = [threading.Thread(target=sender) for _ in range(MODALITIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert len(acknowledged) == len(paths), f"{len(paths) - len(acknowledged)} object(s) never acknowledged"


def multipart(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related response (PS3.18 8.6.1.2)."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"]).group(1).encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        parts.append(chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n"))
    return parts


def pixels(raw: bytes) -> tuple[str, bytes]:
    """A Part 10 object's SOP Instance UID and pixel data (what a retrieve must give back; the
    header may be updated from the registry on the way out)."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    return str(ds.SOPInstanceUID), ds.PixelData


def wado_study(port: int, study_uid: str) -> dict[str, bytes]:
    """WADO-RS of the whole study: SOP Instance UID → pixel data as retrieved."""
    response = httpx.get(f"http://127.0.0.1:{port}/dicomweb/studies/{study_uid}", auth=("admin", PASSWORD),
                         headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                         timeout=120)
    assert response.status_code == 200, response.text[:500]
    return dict(map(pixels, multipart(response)))


def commit(port: int, uids: list[str]) -> Dataset:
    """Storage commitment through ``port``: N-ACTION for ``uids`` and one instance never sent;
    the N-EVENT-REPORT on the same association."""
    reports: list[Dataset] = []
    answered = threading.Event()

    def on_report(event):  # type: ignore[no-untyped-def]
        reports.append(event.event_information)
        return 0x0000, None

    def on_sent(event):  # type: ignore[no-untyped-def]
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            answered.set()  # released only once the report is answered

    ae = AE(ae_title="CT1")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=[
        (evt.EVT_N_EVENT_REPORT, on_report), (evt.EVT_DIMSE_SENT, on_sent)])
    assert assoc.is_established
    try:
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = []
        for uid in [*uids, "1.2.3.4.5.404"]:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, uid
            request.ReferencedSOPSequence.append(item)
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_UID)
        assert status is not None and status.Status == 0
        assert answered.wait(120), "no N-EVENT-REPORT on the association"
    finally:
        assoc.release()
    assert reports[0].TransactionUID == request.TransactionUID
    return reports[0]


def movescu(port: int, study_uid: str) -> None:
    """C-MOVE of the study to DEST; the final response must say Success (no sub-operation
    failed, PS3.4 C.4.2.1.5)."""
    done = subprocess.run(["movescu", "-v", "-S", "-aet", "VIEWER", "-aec", "PACS", "-aem", "DEST",
                           "-to", "30", "-ta", "30", "-td", "120", "-k", "QueryRetrieveLevel=STUDY",
                           "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Received Final Move Response (Success)" in output, output


@pytest.mark.timeout(900)  # three nodes to start, kill, restart and stop on a loaded machine
def test_a_cluster_through_haproxy_while_a_node_is_killed(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite: one process owns the database, so there is no cluster")
    for command in ("haproxy", "storescu", "storescp", "movescu"):
        if shutil.which(command) is None:
            pytest.skip(f"{command} is not installed (Debian: apt-get install haproxy dcmtk)")
    if not MOTO.exists():
        pytest.skip("moto_server is missing: pip install -e '.[test]' installs moto[server]")
    base = free_cluster_base()
    destination_port = base + 5
    received = tmp_path / "received"
    received.mkdir()
    config = tmp_path / "cluster.toml"  # what every node shares besides the database
    config.write_text(f'[[peers]]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {destination_port}\n')
    env = {**os.environ, "PACS_DATABASE_URL": database_url, "PACS_CLUSTER_PORT": str(base),
           "PACS_CLUSTER_S3": "moto", "PACS_CONFIG": str(config), "PACS_ADMIN_PASSWORD": PASSWORD,
           "PACS_TIMEZONE": "Asia/Shanghai"}
    study = make_study(tmp_path / "study", INSTANCES, size=256, patient_id="PCLUSTER")
    cluster = Cluster(tmp_path / "cluster", env, base)
    destination = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(received), "-fe", ".dcm",
                                    str(destination_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cluster("start")  # inside: what a start that fails half-way started is stopped too
        # 1. HL7 and DICOM through HAProxy; node 1 SIGKILLed with associations under way
        deadline = time.monotonic() + 400
        killed = threading.Event()
        sent: list[str] = []
        acknowledged: set[Path] = set()
        broken: list[int] = []
        hl7 = threading.Thread(target=send_hl7, args=(cluster.mllp, sent, killed, deadline))
        dicom = threading.Thread(target=modalities,
                                 args=(cluster.dicom, study.paths, acknowledged, broken, deadline))
        hl7.start()
        dicom.start()
        while len(acknowledged) < INSTANCES // 3 and dicom.is_alive():  # HL7 waits at a third
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # the kill must hit an association under way: each storescu sends a few files and ends,
        # so node 1 can be between two when a third is acknowledged. SIGKILL from here the moment
        # one is seen (the script's own kill starts a shell first: on a loaded machine the
        # association could end meanwhile); the script then finds node 1 gone and forgets it.
        before = cluster.log_size()
        while not established_to(cluster.node(1, 0)) and dicom.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(int((cluster.folder / "node1.pid").read_text()), signal.SIGKILL)
        cluster("kill", "1")
        killed.set()
        hl7.join()
        dicom.join()
        assert len(sent) == MESSAGES and len(acknowledged) == INSTANCES
        assert broken, "no association broke off when node 1 was killed: the kill hit nothing under way"
        cluster.wait_in_log([f"Server pacs_{side}/node1 is DOWN" for side in ("dicom", "mllp", "http")], before)
        status = cluster("status")
        assert "node 1: down" in status and "node 2: ok" in status and "haproxy: ok" in status, status

        # 2. before node 1 is back: everything acknowledged is indexed once, in the object store,
        # and served by the others (so nothing waited on node 1's disk)
        keys = check_indexed_once(database_url, study.study_uid, study.sop_instance_uids)
        bucket = bucket_keys(cluster.s3)
        assert set(keys) <= bucket, "an indexed object is not in the object store"
        originals = dict(pixels(path.read_bytes()) for path in study.paths)
        assert wado_study(cluster.http, study.study_uid) == originals

        # 3. node 1 restarts and rejoins: it serves what the others stored, and adds nothing
        before = cluster.log_size()
        cluster("restart", "1")
        assert "node 1: ok" in cluster("status")
        cluster.wait_in_log([f"Server pacs_{side}/node1 is UP" for side in ("dicom", "mllp", "http")], before)
        assert wado_study(cluster.node(1, 2), study.study_uid) == originals
        assert check_indexed_once(database_url, study.study_uid, study.sop_instance_uids) == keys

        # 4. storage commitment through HAProxy: what any node stored is committed
        asked = study.sop_instance_uids[::INSTANCES // COMMITTED]  # across the study, so its nodes
        report = commit(cluster.dicom, asked)
        assert sorted(i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence) == sorted(asked)
        assert [i.ReferencedSOPInstanceUID for i in report.FailedSOPSequence] == ["1.2.3.4.5.404"]

        # 5. C-MOVE to a peer every node knows: through HAProxy, then each node in turn
        for port in (cluster.dicom, cluster.node(1, 0), cluster.node(2, 0), cluster.node(3, 0)):
            movescu(port, study.study_uid)
            files = sorted(received.glob("*.dcm"))
            moved = dict(pixels(path.read_bytes()) for path in files)
            assert len(files) == INSTANCES and moved == originals, port
            for path in files:
                path.unlink()

        # 6. query, retrieve, DICOMweb and FHIR: every node answers as HAProxy does, and what
        # one node is given the others serve at once
        answers = {port: served(port, study.study_uid, tmp_path / f"served-{port}", originals)
                   for port in (cluster.dicom, cluster.node(1, 0), cluster.node(2, 0), cluster.node(3, 0))}
        first = answers[cluster.dicom]
        assert first["C-FIND"] == [("PCLUSTER", study.study_uid, "1", str(INSTANCES))], first["C-FIND"]
        assert all(answer == first for answer in answers.values()), answers
        ordered_on_one_node_found_on_the_others(cluster, tmp_path)
        stored_on_one_node_served_by_the_others(cluster, study.paths[0])
    finally:
        try:
            cluster("stop")
        finally:
            destination.terminate()
            destination.wait(10)

    db = Database(database_url)
    try:
        with db.session(read_only=True) as session:
            rows = session.exec(select(StoredMessage.control_id, StoredMessage.status)).all()
    finally:
        db.dispose()
    applied = [control for control, status in rows if status == Status.PROCESSED]
    # and the ServiceRequest of step 6 once, by its placer number, though posted twice
    assert sorted(applied) == sorted([*sent, "PL0001"]), "an acknowledged message is missing or applied twice"
    assert not [control for control, status in rows if status not in (Status.PROCESSED, Status.FILTERED)]


def served(dicom_port: int, study_uid: str, out: Path, originals: dict[str, bytes]) -> dict[str, object]:
    """What the node behind ``dicom_port`` (or HAProxy; its HTTP port is two above) answers about
    the study: C-FIND at study and image level (DCMTK findscu), QIDO-RS, the FHIR ImagingStudy;
    its C-GET (DCMTK getscu) must give back every object as it was sent."""
    studies = findscu(dicom_port, ["QueryRetrieveLevel=STUDY", "PatientID=PCLUSTER", "StudyInstanceUID",
                                   "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"],
                      out / "studies", calling="VIEWER", model="-S")
    images = findscu(dicom_port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid}", "SeriesInstanceUID",
                                  "SOPInstanceUID"], out / "images", calling="VIEWER", model="-S")
    got = out / "got"
    got.mkdir()
    done = subprocess.run(["getscu", "-S", "-aet", "VIEWER", "-aec", "PACS", "-od", str(got), "-k",
                           "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1",
                           str(dicom_port)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dict(pixels(path.read_bytes()) for path in got.iterdir()) == originals, dicom_port
    http = f"http://127.0.0.1:{dicom_port + 2}"
    qido = httpx.get(f"{http}/dicomweb/studies/{study_uid}/instances", auth=("admin", PASSWORD), timeout=60)
    assert qido.status_code == 200, qido.text[:500]
    fhir = httpx.get(f"{http}/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"},
                     auth=("admin", PASSWORD), timeout=60)
    assert fhir.status_code == 200, fhir.text[:500]
    [imaging_study] = [entry["resource"] for entry in fhir.json().get("entry", [])]
    return {
        "C-FIND": [(str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.NumberOfStudyRelatedSeries),
                    str(ds.NumberOfStudyRelatedInstances)) for ds in studies],
        "C-FIND images": sorted(str(ds.SOPInstanceUID) for ds in images),
        "QIDO-RS": sorted(item["00080018"]["Value"][0] for item in qido.json()),
        "ImagingStudy": (imaging_study["id"], imaging_study["numberOfSeries"], imaging_study["numberOfInstances"]),
    }


def ordered_on_one_node_found_on_the_others(cluster: Cluster, tmp_path: Path) -> None:
    """A FHIR ServiceRequest posted to node 2 is on node 3's worklist and read back from node 1;
    posted again through node 3 with If-None-Exist, it is found, not ordered twice."""
    body = json.dumps(json.loads((DATA / "fhir" / "servicerequest_contained.json").read_text(encoding="utf-8")),
                      ensure_ascii=False).encode()
    headers = {"Content-Type": "application/fhir+json"}
    created = httpx.post(f"http://127.0.0.1:{cluster.node(2, 2)}/fhir/ServiceRequest", content=body,
                         headers=headers, auth=("admin", PASSWORD), timeout=60)
    assert created.status_code == 201, created.text[:500]
    [item] = findscu(cluster.node(3, 0), ["AccessionNumber=ACC0001", "PatientID", "ScheduledProcedureStepSequence"],
                     tmp_path / "worklist")
    assert item.PatientID == "P10001"  # the contained Patient's
    read = httpx.get(f"http://127.0.0.1:{cluster.node(1, 2)}/fhir/ServiceRequest",
                     params={"identifier": "ACC0001"}, auth=("admin", PASSWORD), timeout=60)
    assert [entry["resource"]["id"] for entry in read.json().get("entry", [])] == [created.json()["id"]]
    again = httpx.post(f"http://127.0.0.1:{cluster.node(3, 2)}/fhir/ServiceRequest", content=body,
                       headers={**headers, "If-None-Exist": "identifier=ACC0001"}, auth=("admin", PASSWORD), timeout=60)
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"], again.text[:500]


def stored_on_one_node_served_by_the_others(cluster: Cluster, template: Path) -> None:
    """An object stored by STOW-RS on node 3 (a new series of the study) is found by QIDO-RS on
    node 1 and retrieved by WADO-RS from node 2, as sent."""
    ds = pydicom.dcmread(template)
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesNumber = generate_uid(), generate_uid(), 99
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    boundary = "cluster-stow"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
            + f"\r\n--{boundary}--\r\n".encode())
    stored = httpx.post(f"http://127.0.0.1:{cluster.node(3, 2)}/dicomweb/studies", content=body,
                        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                                 "Accept": "application/dicom+json"}, auth=("admin", PASSWORD), timeout=60)
    assert stored.status_code == 200, stored.text[:500]
    series = f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    found = httpx.get(f"http://127.0.0.1:{cluster.node(1, 2)}/dicomweb/{series}/instances",
                      auth=("admin", PASSWORD), timeout=60)
    assert found.status_code == 200 and [item["00080018"]["Value"][0] for item in found.json()] == [ds.SOPInstanceUID]
    got = httpx.get(f"http://127.0.0.1:{cluster.node(2, 2)}/dicomweb/{series}/instances/{ds.SOPInstanceUID}",
                    headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                    auth=("admin", PASSWORD), timeout=60)
    assert got.status_code == 200, got.text[:500]
    assert [pixels(part) for part in multipart(got)] == [(ds.SOPInstanceUID, ds.PixelData)]


def check_indexed_once(database_url: str, study_uid: str, uids: list[str]) -> list[str]:
    """Each instance of the study once in the index, with one copy, in the S3 area "online";
    the study's and series' counts agree. Returns the copies' keys."""
    db = Database(database_url)
    try:
        with db.engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT i.sop_instance_uid, f.area, f.key FROM instance i "
                "JOIN series s ON s.id = i.series JOIN study st ON st.id = s.study "
                "LEFT JOIN instance_file f ON f.instance = i.id "
                "WHERE st.study_instance_uid = :study"), {"study": study_uid}).all()
            counts = connection.execute(text(
                "SELECT st.number_of_instances, s.number_of_instances FROM study st "
                "JOIN series s ON s.study = st.id WHERE st.study_instance_uid = :study"),
                {"study": study_uid}).all()
    finally:
        db.dispose()
    assert sorted(uid for uid, _, _ in rows) == sorted(uids), "an acknowledged object is missing or indexed twice"
    assert {area for _, area, _ in rows} == {"online"}
    assert counts == [(len(uids), len(uids))]
    return sorted(key for _, _, key in rows)


def bucket_keys(endpoint: str) -> set[str]:
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="cluster",
                          aws_secret_access_key="cluster", region_name="us-east-1")
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="pacs-cluster"):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys

