"""The package as a site installs it: a wheel, installed (not editable) into a venv of its own,
and ``pacs serve`` run from a folder that has nothing to do with the repository."""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from tests.helpers import MLLPClient, ack_fields, load
from tests.process import free_port

REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0  # seconds for the installed server to open its ports
INDEX_TIMEOUT = 30.0  # seconds for a stored object to be found by C-FIND


def build_wheel(out: Path) -> Path:
    """A wheel of the project, built from a copy of its sources (the work tree stays as it is)."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    shutil.copytree(REPOSITORY / "pacs", source / "pacs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = out / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(wheels), str(source)], check=True, timeout=300)
    (wheel,) = wheels.glob("pacs-*.whl")
    return wheel


def venv_with(wheel: Path, target: Path) -> Path:
    """A fresh venv holding the wheel; its dependencies are the ones this test run has (a path
    file names this interpreter's site-packages, after the venv's own), so no index is asked."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
    python = target / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    (Path(own) / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, timeout=300)
    return target / "bin" / "pacs"


def c_store_and_find(port: int) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, str(ds.file_meta.TransferSyntaxUID))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(ds).Status) == 0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ds.StudyInstanceUID
        deadline = time.monotonic() + INDEX_TIMEOUT
        while True:
            found = [answer for status, answer in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                     if status.Status in (0xFF00, 0xFF01)]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [str(answer.StudyInstanceUID) for answer in found] == [ds.StudyInstanceUID]
    finally:
        assoc.release()


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_serves_from_any_folder(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "build")
    pacs = venv_with(wheel, tmp_path / "venv")
    python = pacs.parent / "python"
    where = subprocess.run([str(python), "-c", "import pacs, pacs.settings as s; print(pacs.__file__); "
                            "print(s.SHIPPED_MAPPINGS)"], check=True, capture_output=True, text=True,
                           cwd=tmp_path).stdout.split()
    assert all(Path(path).is_relative_to(tmp_path / "venv") for path in where), where
    assert (Path(where[1]) / "facilities.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = subprocess.run([str(pacs), "mappings", "export", "site-mappings"], cwd=elsewhere,
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    assert (elsewhere / "site-mappings" / "codes" / "procedures.csv").is_file()

    env = {key: value for key, value in os.environ.items() if not key.startswith("PACS_")}
    http, mllp, dicom = free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([str(pacs), "serve", "--host", "127.0.0.1", "--http-port", str(http),
                             "--mllp-port", str(mllp), "--dicom-port", str(dicom)],
                            cwd=elsewhere, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with MLLPClient(mllp) as client:
            assert ack_fields(client.send(load("adt_a01_ihe.hl7")))["code"] == "AA"
        c_store_and_find(dicom)
        assert (elsewhere / "pacs-data" / "pacs.db").is_file()  # the default data folder, where it was run
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()
