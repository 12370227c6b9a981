"""Orthanc as a second peer: we C-MOVE to it; it queries and retrieves from us."""

from __future__ import annotations

import os
import subprocess

import httpx
import pydicom
import pytest

from pacs.settings import Peer
from tests.archive.corpus import build, storescu
from tests.dicom import needs_dcmtk
from tests.orthanc import Orthanc, free_port, needs_orthanc

pytestmark = [needs_orthanc, needs_dcmtk]


@pytest.fixture
def pair(start_server, tmp_path):
    orthanc_port = free_port()
    server = start_server(peers=[Peer(ae_title="ORTHANC", host="127.0.0.1", port=orthanc_port)])
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"pacs": ["PACS", "127.0.0.1", server.dicom_port]})
    orthanc.dicom_port = orthanc_port
    orthanc.start()
    corpus = build(tmp_path / "corpus", [("CT_small.dcm", ""), ("chrX1.dcm", ""), ("MR_small_jp2klossless.dcm", "-xv")])
    assert storescu(server.dicom_port, corpus).returncode == 0
    yield server, orthanc, corpus
    orthanc.stop()


def test_we_move_to_orthanc(pair):
    server, orthanc, corpus = pair
    for item in corpus:
        result = subprocess.run(["movescu", "-S", "-aec", "PACS", "-aem", "ORTHANC", "-k", "QueryRetrieveLevel=STUDY",
                                 "-k", f"StudyInstanceUID={item.study_instance_uid}", "127.0.0.1",
                                 str(server.dicom_port)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "TCP_NODELAY": "1"})
        assert result.returncode == 0, result.stdout + result.stderr
    instances = httpx.get(orthanc.url + "/instances?expand").json()
    received = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    assert received == {c.sop_instance_uid for c in corpus}


def test_orthanc_queries_and_retrieves_from_us(pair):
    server, orthanc, corpus = pair
    echo = httpx.post(orthanc.url + "/modalities/pacs/echo", json={}, timeout=30)
    assert echo.status_code == 200
    query = httpx.post(orthanc.url + "/modalities/pacs/query", timeout=30,
                       json={"Level": "Study", "Query": {"PatientName": "*", "StudyInstanceUID": ""}}).json()
    answers = httpx.get(orthanc.url + f"/queries/{query['ID']}/answers?expand", timeout=30).json()
    found = {a["0020,000d"]["Value"] for a in answers}
    assert found == {c.study_instance_uid for c in corpus}
    chinese = next(c for c in corpus if c.source == "chrX1.dcm")
    retrieve = httpx.post(orthanc.url + f"/queries/{query['ID']}/retrieve", json={"TargetAet": "ORTHANC"}, timeout=60)
    assert retrieve.status_code == 200, retrieve.text
    instances = httpx.get(orthanc.url + "/instances?expand").json()
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in instances} == {c.sop_instance_uid for c in corpus}
    stored = next(i for i in instances if i["MainDicomTags"]["SOPInstanceUID"] == chinese.sop_instance_uid)
    data = httpx.get(orthanc.url + f"/instances/{stored['ID']}/file").content
    from io import BytesIO

    assert "王" in str(pydicom.dcmread(BytesIO(data)).PatientName)
