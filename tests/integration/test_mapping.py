"""Mappings: checked with file:line problems, tried without writing, reloaded without a restart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, func, select

from pacs.integration.mapping import Problems, load, read_mapping
from pacs.integration.message_store import StoredMessage
from pacs.settings import SHIPPED_MAPPINGS
from tests.helpers import DATA, MLLPClient, ack_fields, load as load_message


def pacs(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    """A copy of the shipped mappings that a test may break."""
    target = tmp_path / "mappings"
    shutil.copytree(SHIPPED_MAPPINGS, target)
    return target


def test_shipped_mappings_are_valid():
    mappings, problems = load(SHIPPED_MAPPINGS)
    assert problems == [] and mappings is not None
    result = pacs("mappings", "check")
    assert result.returncode == 0 and "valid" in result.stdout


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


def test_check_reports_each_problem_with_file_and_line(mappings_dir):
    ihe = mappings_dir / "hl7v2" / "ihe.yaml"
    edit(ihe, "target: patient.birth_date, source: PID-7}", "target: patient.birthday, source: PID-7}")
    edit(ihe, "source: PV1-3.2}", "source: PV1-3x2}")
    edit(ihe, "source: PID-8, codes: sex}", "source: PID-8, codes: gender}")
    edit(ihe, "target: visit.bed, source: PV1-3.3}", "target: visit.bed, source: PV1-99}")
    edit(mappings_dir / "codes" / "sex.csv", "F,F,female", "F,Female,female")
    edit(mappings_dir / "codes" / "procedures.csv", "CT0002,CT,CT1,CT Room 1,20,", "CT0002,CT,CT1,CT Room 1,twenty,")
    edit(mappings_dir / "facilities.yaml", "profile: hl7v2/china-his.yaml", "profile: hl7v2/nowhere.yaml")
    result = pacs("mappings", "check", "--dir", str(mappings_dir))
    assert result.returncode == 1
    out = result.stdout
    assert f"{ihe}:{line_of(ihe, 'patient.birthday')}: unknown target 'patient.birthday'" in out
    assert f"{ihe}:{line_of(ihe, 'PV1-3x2')}: 'PV1-3x2' is not a field address" in out
    assert f"{ihe}:{line_of(ihe, 'codes: gender')}: code table 'gender' not found" in out
    assert f"{ihe}:{line_of(ihe, 'PV1-99')}: PV1 has fields 1 to" in out
    assert "sex.csv:" in out and "'Female' must be one of F, M, O" in out
    assert "procedures.csv:" in out and "'twenty' is not a whole number" in out
    assert "facilities.yaml:" in out and "'hl7v2/nowhere.yaml' not found" in out
    assert len(out.strip().splitlines()) == 7


def test_invalid_yaml_is_reported_with_its_line(mappings_dir):
    china = mappings_dir / "hl7v2" / "china-his.yaml"
    edit(china, "  - {target: patient.name_pinyin, source: PID-9}", "  - {target: patient.name_pinyin, source: [PID-9}")
    mappings, problems = load(mappings_dir)
    assert mappings is None
    assert any(p.startswith(f"{china}:") and "not valid YAML" in p for p in problems), problems


def test_mappings_test_shows_the_result_and_writes_nothing(tmp_path, settings, database_url):
    env = {"PACS_DATABASE_URL": database_url, "PACS_TIMEZONE": "Asia/Shanghai"}
    result = pacs("mappings", "test", str(DATA / "hl7" / "orm_o01_multi_china.hl7"), **env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["sender"]["profile"] == "hl7v2/china-his.yaml"
    assert shown["patient"]["name"]["dicom"] == "OUYANG^NANA=欧阳^娜娜"
    items = [item for order in shown["orders"] for item in order["worklist_items"]]
    assert [(i["modality"], i["scheduled_station_ae_title"]) for i in items] == [("CT", "CT1"), ("DX", "DR1")]
    assert shown["sources"]["patient.national_id"].startswith("PID-19")
    assert shown["ack"][1] == "MSA|AA|CN0002"

    fhir = pacs("mappings", "test", str(DATA / "fhir" / "bundle_transaction.json"), **env)
    assert fhir.returncode == 0, fhir.stderr
    assert json.loads(fhir.stdout)["items"][0]["orders"][0]["worklist_items"][0]["start"] == "2026-11-25 10:00:00"

    bad = tmp_path / "bad.hl7"
    bad.write_bytes(load_message("adt_a01_ihe.hl7").replace(b"|M|", b"|Q|"))
    failed = pacs("mappings", "test", str(bad), **env)
    assert failed.returncode == 1 and "MSA|AE|ADT0001" in failed.stdout

    from pacs.db import Database

    db = Database(database_url)
    with Session(db.engine) as session:
        assert session.exec(select(func.count()).select_from(StoredMessage)).one() == 0
    db.dispose()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_server_reloads_changes_and_keeps_the_last_good_set(server, mappings_dir):
    unknown = load_message("orm_o01_nw_ihe.hl7").replace(b"CT0001^", b"NEW001^").replace(b"|CT|", b"||")
    with MLLPClient(server.mllp_port) as client:
        assert ack_fields(client.send(unknown))["code"] == "AE"  # NEW001 is not in procedures.csv

    procedures = mappings_dir / "codes" / "procedures.csv"
    with procedures.open("a", encoding="utf-8") as handle:
        handle.write("NEW001,CT,CT9,CT Room 9,10,HEAD,新检查,\n")
    wait_for(lambda: server.server.services.mappings.current().procedures.get("NEW001") is not None)
    with MLLPClient(server.mllp_port) as client:
        retry = unknown.replace(b"ORM0001", b"ORM0001B")
        assert ack_fields(client.send(retry))["code"] == "AA"

    edit(mappings_dir / "hl7v2" / "ihe.yaml", "target: patient.sex,", "target: patient.gender,")
    wait_for(lambda: bool(server.server.services.mappings.last_problems))
    health = httpx.get(server.http_url + "/healthz").json()
    assert "problem" in health["mappings"]
    with MLLPClient(server.mllp_port) as client:  # the last good set is still in force
        assert ack_fields(client.send(load_message("adt_a01_ihe.hl7")))["code"] == "AA"


def test_check_covers_device_rules_and_surnames(mappings_dir):
    devices = mappings_dir / "devices.yaml"
    edit(devices, "match: [accession, patient_id]", "match: [accession, telepathy]")
    with (mappings_dir / "names" / "surnames.csv").open("a", encoding="utf-8") as handle:
        handle.write("张,ZH4NG,bad pinyin\n")
    result = pacs("mappings", "check", "--dir", str(mappings_dir))
    assert result.returncode == 1
    assert f"{devices}:{line_of(devices, 'telepathy')}:" in result.stdout and "telepathy" in result.stdout
    assert "surnames.csv:" in result.stdout


def test_a_mapping_file_that_is_not_yaml_or_not_a_mapping_is_a_problem_at_its_line(tmp_path):
    problems = Problems()
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n", encoding="utf-8")
    assert read_mapping(empty, problems, "a mapping") == {} and problems == []
    broken = tmp_path / "broken.yaml"
    broken.write_text("CT:\n  - name: lung\n  window: [1500\n", encoding="utf-8")
    assert read_mapping(broken, problems, "a mapping") is None
    assert problems[-1].startswith(f"{broken}:") and "not valid YAML" in problems[-1]
    listed = tmp_path / "listed.yaml"
    listed.write_text("- CT\n- MR\n", encoding="utf-8")
    assert read_mapping(listed, problems, "maps each modality to its presets") is None
    assert problems[-1] == f"{listed}:1: maps each modality to its presets"
    assert read_mapping(tmp_path / "absent.yaml", problems, "a mapping") is None
    assert problems[-1].endswith("cannot read: No such file or directory")
