"""rooms.yaml as an analyst edits it: checked by `pacs mappings check` with file:line problems,
taken by a running server within seconds, a broken edit refused with the last good rooms kept."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from pacs.cli import main
from pacs.integration.mapping import load
from pacs.settings import SHIPPED_MAPPINGS


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "mappings"
    shutil.copytree(SHIPPED_MAPPINGS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_shipped_rooms_are_valid():
    mappings, problems = load(SHIPPED_MAPPINGS)
    assert problems == []
    assert sorted(mappings.rooms.rooms) == ["CT1", "CT2", "DR1", "MG1", "MR1", "US1"]  # type: ignore[union-attr]
    assert mappings.preparations.text("CT0002", "CT").startswith("增强检查")  # type: ignore[union-attr]
    assert mappings.preparations.text("MR0001", "MR").startswith("请去除")  # type: ignore[union-attr]


def test_mappings_check_names_the_line_of_each_problem(mappings_dir, capsys):
    rooms = mappings_dir / "rooms.yaml"
    text = rooms.read_text(encoding="utf-8")
    text = text.replace("    capacity: 2                          # two stands", "    capacity: two")
    text = text.replace("      mon-fri: [08:00-12:00, 14:00-17:00]", "      mon-fry: [08:00-12:00, 14:00-17:00]")
    text = text.replace("  by_procedure: {CT0002: 20, CT0201: 20, MR0101: 40}", "  by_procedure: {CT9999: 20}")
    rooms.write_text(text, encoding="utf-8")
    (mappings_dir / "preparations.yaml").write_text("by_procedure:\n  NOPE: 禁食\n", encoding="utf-8")
    assert main(["mappings", "check", "--dir", str(mappings_dir)]) == 1
    out = capsys.readouterr().out
    lines = text.splitlines()
    capacity_line = next(i for i, line in enumerate(lines, 1) if line.strip() == "- room: DR1")
    assert f"{rooms}:{capacity_line}: capacity 'two' is not a whole number" in out
    assert "'mon-fry' is not a weekday" in out
    assert "by_procedure: procedure 'CT9999' is not in codes/procedures.csv" in out
    assert f"{mappings_dir / 'preparations.yaml'}:2: by_procedure: procedure 'NOPE'" in out


def test_a_running_server_takes_changed_rooms_and_keeps_the_last_good_ones(server, mappings_dir):
    url = server.http_url + "/api/desk/rooms"

    def ct2() -> dict:  # type: ignore[type-arg]
        return next(r for r in httpx.get(url).json() if r["room"] == "CT2")

    assert ct2()["capacity"] == 1
    rooms = mappings_dir / "rooms.yaml"
    good = rooms.read_text(encoding="utf-8").replace(
        "    slot_minutes: {CT0201: 25}", "    slot_minutes: {CT0201: 25}\n    capacity: 2")
    rooms.write_text(good, encoding="utf-8")
    deadline = time.monotonic() + 20
    while ct2()["capacity"] != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ct2()["capacity"] == 2
    rooms.write_text(good.replace("    capacity: 2\n", "    capacity: 0\n"), encoding="utf-8")
    deadline = time.monotonic() + 20
    while httpx.get(server.http_url + "/healthz").json()["mappings"] == "ok" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "problem" in httpx.get(server.http_url + "/healthz").json()["mappings"]
    assert ct2()["capacity"] == 2  # the last good rooms stay in force
