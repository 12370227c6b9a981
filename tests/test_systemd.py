"""``pacs serve`` under systemd: READY=1, the watchdog answered only while healthy, STOPPING=1;
and the unit file in deploy/."""

from __future__ import annotations

import configparser
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_URL, _pg_admin_url
from tests.process import ServeProcess

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "pacs.service"
WATCHDOG_USEC = 1_000_000  # a one-second watchdog: a ping every half second


class NotifySocket:
    """The datagram socket systemd listens on for a Type=notify service (sd_notify(3))."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def wait_for(self, line: str, timeout: float) -> list[str]:
        """Read datagrams until one holds ``line``; every line read until then."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                datagram = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            lines = datagram.split("\n")
            seen += lines
            self.received += lines
            if line in lines:
                return seen
        raise AssertionError(f"no {line} within {timeout} s; got {seen}")

    def lines_within(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                seen += self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                break
        return seen

    def close(self) -> None:
        self.sock.close()


def test_ready_then_watchdog_pings_then_stopping(tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    server = ServeProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'pacs.db'}",
                          NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        server.start()
        before_ready = notify.wait_for("READY=1", 60)
        assert "WATCHDOG=1" not in before_ready and any(line.startswith("STATUS=serving") for line in before_ready)
        assert httpx.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=10).status_code == 200
        pings = notify.lines_within(2.2).count("WATCHDOG=1")
        assert 3 <= pings <= 6, pings  # every half second
        assert server.proc is not None
        server.proc.send_signal(15)
        notify.wait_for("STOPPING=1", 30)
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
        notify.close()


def test_a_watchdog_for_another_process_is_not_answered(tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    server = ServeProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'pacs.db'}", NOTIFY_SOCKET=str(notify.path),
                          WATCHDOG_USEC=str(WATCHDOG_USEC), WATCHDOG_PID="1")
    try:
        server.start()
        notify.wait_for("READY=1", 60)
        assert "WATCHDOG=1" not in notify.lines_within(1.5)
    finally:
        server.stop()
        notify.close()


@pytest.mark.skipif(not PG_URL, reason="set PACS_TEST_DATABASE_URL: the database is taken away from the server")
def test_the_watchdog_goes_unanswered_while_the_database_is_down(tmp_path):
    name = f"pacs_watchdog_{tmp_path.name[-12:].lower()}"
    admin = create_engine(_pg_admin_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    notify = NotifySocket(tmp_path / "notify")
    server = ServeProcess(tmp_path / "data", PG_URL.rsplit("/", 1)[0] + "/" + name,
                          NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        server.start()
        notify.wait_for("READY=1", 60)
        notify.wait_for("WATCHDOG=1", 5)
        with admin.connect() as connection:  # the database refuses the server, and drops what it had
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        seen = notify.lines_within(3)
        assert any(line.startswith("STATUS=not healthy: the database does not answer") for line in seen), seen
        assert "WATCHDOG=1" not in notify.lines_within(2)
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        notify.wait_for("WATCHDOG=1", 10)
    finally:
        server.stop()
        notify.close()
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_the_unit_is_hardened_and_notifies():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0 and service["Restart"] == "on-failure"
    assert service["ExecStart"].split()[1:3] == ["serve", "--config"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": ""}.items():
        assert service[key] == value, key
    assert "/var/lib/pacs" in service["ReadWritePaths"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    unit = tmp_path / "pacs.service"
    # verify wants the ExecStart binary to exist: point it at one that does
    unit.write_text(UNIT.read_text().replace("/opt/pacs/bin/pacs", shutil.which("true") or "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "pacs.service" in line]
    assert not problems, result.stdout + result.stderr
