"""``pacs doctor`` against real setups: a healthy one with a DICOM peer that answers, and broken
ones (a read-only storage area, an unreachable database, a peer that never answers, a port held
by another program, bad settings); certificates made for the test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs.doctor import EXPIRY_WARNING_DAYS, check_certificate
from tests.process import ServeProcess, free_port

SILENT_PEER_TIMEOUT = "1"  # seconds pacs doctor waits for the peer that never answers


def doctor(tmp_path: Path, config: str = "", *args: str, **env: str) -> tuple[int, list[str]]:
    """Run ``pacs doctor``; its exit code and lines."""
    config_file = tmp_path / "pacs.toml"
    config_file.write_text(config)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PACS_")}
    environment.update({"PACS_DICOM_PORT": str(free_port()), "PACS_MLLP_PORT": str(free_port()),
                        "PACS_HTTP_PORT": str(free_port()), "PACS_HOST": "127.0.0.1", **env})
    result = subprocess.run([sys.executable, "-m", "pacs.cli", "doctor", "--config", str(config_file),
                             "--data-dir", str(tmp_path / "data"), *args],
                            capture_output=True, text=True, timeout=120, env=environment, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert all(line.startswith(("ok: ", "problem: ")) for line in lines[:-1]), result.stdout + result.stderr
    return result.returncode, lines


@pytest.fixture
def echo_peer():
    """A Verification SCP on loopback: (AE title, port)."""
    ae = AE(ae_title="ECHOSCP")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    yield "ECHOSCP", port
    server.shutdown()


@pytest.fixture
def silent_peer():
    """A port that accepts connections and never says anything."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_healthy_installation(tmp_path, database_url, echo_peer):
    (tmp_path / "data" / "storage").mkdir(parents=True)
    title, port = echo_peer
    code, lines = doctor(tmp_path, f'[[peers]]\nae_title = "{title}"\nhost = "127.0.0.1"\nport = {port}\n',
                         PACS_DATABASE_URL=database_url, PACS_ARCHIVE__MIN_FREE_BYTES="0")
    assert code == 0, lines
    text = "\n".join(lines)
    assert "ok: database: " in text and "ok: database: schema at the newest migration" in text
    assert f"ok: peer ECHOSCP (127.0.0.1:{port}) answers C-ECHO" in text
    assert "ok: storage area online (filesystem" in text and "is writable" in text
    assert "ok: mappings in " in text and "ok: certificates: none configured" in text
    assert sum(line.startswith("ok: port ") and line.endswith("is free") for line in lines) == 3
    assert any(line.startswith("ok: clock: ") for line in lines), lines
    assert lines[-1] == "no problem found"


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a file system mounted read-only (root writes anywhere else)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "pacs-doctor-test", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only file system here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_each_broken_part_is_one_problem_line(tmp_path, read_only_folder, silent_peer):
    (tmp_path / "data" / "storage").mkdir(parents=True)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    http_port = taken.getsockname()[1]
    config = (f'[[storage.areas]]\nname = "nearline"\ntier = "nearline"\npath = "{read_only_folder}"\n\n'
              f'[[peers]]\nae_title = "SILENT"\nhost = "127.0.0.1"\nport = {silent_peer}\n')
    try:
        code, lines = doctor(tmp_path, config, "--timeout", SILENT_PEER_TIMEOUT,
                             PACS_DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere",
                             PACS_HTTP_PORT=str(http_port), PACS_ARCHIVE__MIN_FREE_BYTES=str(1 << 60),
                             PACS_MAPPINGS_DIR=str(tmp_path / "no-mappings"))
    finally:
        taken.close()
    assert code == 1
    problems = [line for line in lines if line.startswith("problem: ")]
    expected = [
        "problem: database: postgresql://postgres@127.0.0.1:1/nowhere does not answer",
        f"problem: storage area nearline (filesystem, {read_only_folder}) is not writable",
        "problem: storage area online (filesystem, ",  # below min_free_bytes
        f"problem: port {http_port} (HTTP) is taken by another program: pid {os.getpid()}",
        "problem: mappings: ",
        f"problem: peer SILENT (127.0.0.1:{silent_peer}) does not answer within 1 s",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in problems) == 1, (start, problems)
    assert "below [archive] min_free_bytes" in next(p for p in problems if "area online" in p)
    assert len(problems) == len(expected), problems
    assert lines[-1] == f"{len(expected)} problem(s)"


def test_ports_held_by_a_running_pacs_serve_are_fine(tmp_path):
    server = ServeProcess(tmp_path / "serve", f"sqlite:///{tmp_path / 'serve.db'}").start()
    try:
        code, lines = doctor(tmp_path, "", PACS_DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}",
                             PACS_DICOM_PORT=str(server.dicom_port), PACS_MLLP_PORT=str(server.mllp_port),
                             PACS_HTTP_PORT=str(server.http_port), PACS_ARCHIVE__MIN_FREE_BYTES="0",
                             PACS_ARCHIVE__STORAGE_DIR=str(tmp_path / "serve" / "storage"))
    finally:
        server.stop()
    assert server.proc is not None
    for name, port in (("DICOM", server.dicom_port), ("MLLP", server.mllp_port), ("HTTP", server.http_port)):
        assert f"ok: port {port} ({name}) is held by a running pacs serve (pid {server.proc.pid})" in lines, lines
    assert code == 0, lines


def test_settings_that_do_not_load(tmp_path):
    code, lines = doctor(tmp_path, "[dicom]\nprocesses = 0\n")
    assert code == 1
    assert lines[0].startswith("problem: configuration: dicom.processes: "), lines
    assert lines[-1] == "1 problem(s)"


def certificate(path: Path, *, days_left: float, days_valid: float = 365) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacs.test")])
    now = datetime.now(UTC)
    built = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now + timedelta(days=days_left) - timedelta(days=days_valid))
             .not_valid_after(now + timedelta(days=days_left)).sign(key, hashes.SHA256()))
    path.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificates(tmp_path):
    def findings(path: Path) -> list[str]:
        return [str(finding) for finding in check_certificate("http.certificate", path)]

    valid = findings(certificate(tmp_path / "valid.pem", days_left=200))
    assert len(valid) == 1 and valid[0].startswith("ok: certificate ") and "CN=pacs.test" in valid[0]
    soon = findings(certificate(tmp_path / "soon.pem", days_left=EXPIRY_WARNING_DAYS - 10))
    assert len(soon) == 1 and soon[0].startswith("problem: ") and "expires on" in soon[0]
    expired = findings(certificate(tmp_path / "expired.pem", days_left=-1))
    assert len(expired) == 1 and expired[0].startswith("problem: ") and "expired on" in expired[0]
    future = findings(certificate(tmp_path / "future.pem", days_left=400, days_valid=30))
    assert len(future) == 1 and "not valid before" in future[0]
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    assert findings(tmp_path / "garbage.pem")[0].startswith("problem: certificate ")
    assert findings(tmp_path / "missing.pem")[0].startswith("problem: certificate ")


def test_every_tls_file_the_settings_name_is_checked(tmp_path):
    """The certificate and CA files of the TLS settings ([http], [dicom], [mllp], [[peers]], [his],
    [publish], S3 areas) are found by their names; private keys are not certificates."""
    from pacs.doctor import certificate_files
    from pacs.settings import Peer, Settings

    pem = tmp_path / "x.pem"
    settings = Settings(
        http={"tls_cert": pem, "tls_key": pem}, dicom={"tls_cert": pem, "tls_key": pem, "tls_client_ca": pem},
        mllp={"tls_cert": pem, "tls_client_ca": pem}, his={"host": "his", "port": 2576, "tls": True, "tls_ca": pem},
        publish={"fhir_base_url": "https://platform/fhir", "tls_ca": pem, "tls_cert": pem, "tls_key": pem},
        peers=[Peer(ae_title="VIEWER1", host="v", port=2762, tls=True, tls_ca=pem, tls_cert=pem, tls_key=pem)],
        storage={"areas": [{"name": "s3", "kind": "s3", "bucket": "b", "tls_ca": pem}]})
    named = {setting for setting, _path in certificate_files(settings)}
    assert named >= {"http.tls_cert", "dicom.tls_cert", "dicom.tls_client_ca", "mllp.tls_cert", "mllp.tls_client_ca",
                     "his.tls_ca", "publish.tls_ca", "publish.tls_cert", "peers[0].tls_ca", "peers[0].tls_cert",
                     "storage.areas[0].tls_ca"}
    assert not [setting for setting in named if setting.endswith("_key")]
