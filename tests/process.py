"""`pacs serve` as a real process, for tests that kill, stop and restart it."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FREE_PORTS = range(3000, 10000)  # below the cluster's bases and the ephemeral range
_handed_out: set[int] = set()


def free_port() -> int:
    """A port for a server a test starts later, free now. Not one the kernel hands out: a port from
    the ephemeral range (32768-60999 on Linux) can be taken by an outgoing connection (to
    PostgreSQL, say) between this check and the server's bind. Each pytest-xdist worker draws from
    its own stripe, so two workers never pick the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    stripe = FREE_PORTS[index % workers::workers]
    for _ in range(200):
        port = random.choice(stripe)
        if port in _handed_out:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def free_cluster_base(nodes: int = 3, front_ports: int = 6) -> int:
    """A first port for deploy/cluster.sh (``PACS_CLUSTER_PORT``) whose ports are all free:
    ``front_ports`` from it (HAProxy's DICOM, MLLP and HTTP, moto's S3, and what the caller puts
    beside them) and three for each node N at PORT+10N. Below the ephemeral range (32768-60999
    on Linux), where outgoing connections could take one before a node binds it."""
    for _ in range(50):
        base = random.randrange(10000, 32000, 100)
        ports = [base + k for k in range(front_ports)] + [base + 10 * n + k for n in range(1, nodes + 1)
                                                          for k in range(3)]
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports for the cluster")


def spawned_children(parent: int) -> list[int]:
    """The helper processes ``pacs serve`` started (multiprocessing's spawned interpreters)."""
    found = []
    for task in Path(f"/proc/{parent}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # a thread that ended since the listing
            continue
        for child in children:
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in command:
                found.append(int(child))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not). A killed process's first thread is a
    zombie while its other threads still exit, holding its files open: it is dead only when
    every thread is."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            return True
    return False


DEFAULT_PROCESSES = "default"  # ServeProcess(..., PACS_DICOM__PROCESSES=DEFAULT_PROCESSES)


class ServeProcess:
    def __init__(self, data_dir: Path, database_url: str, **env: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.mllp_port = free_port()
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"serve-{self.mllp_port}.log"

    def start(self, timeout: float = 60) -> ServeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # One DICOM process unless a test asks (a receiver is a Python start: seconds of CPU on a
        # loaded machine); DEFAULT_PROCESSES leaves ``[dicom] processes`` to the server's default.
        env = {**os.environ, "PACS_DATABASE_URL": self.database_url, "PACS_TIMEZONE": "Asia/Shanghai",
               "PACS_DICOM__PROCESSES": "1", **self.env}
        if env["PACS_DICOM__PROCESSES"] == DEFAULT_PROCESSES:
            del env["PACS_DICOM__PROCESSES"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacs.cli", "serve", "--host", "127.0.0.1", "--data-dir", str(self.data_dir),
             "--mllp-port", str(self.mllp_port), "--http-port", str(self.http_port),
             "--dicom-port", str(self.dicom_port)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pacs serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.http_port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.mllp_port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"pacs serve did not start:\n{self.log.read_text()}")

    def wait_for_receivers(self, timeout: float = 120) -> ServeProcess:
        """Wait until the DICOM receiver processes, started once the server is ready, serve
        (pacs.archive.receivers); they say so in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "DICOM connections handed to" in text:
                return self
            assert "DICOM receivers did not start" not in text, text
            assert self.proc is not None and self.proc.poll() is None, text
            time.sleep(0.1)
        raise TimeoutError(f"the DICOM receivers did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
