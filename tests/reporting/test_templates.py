"""Report templates and phrases from the mappings: checked by `pacs mappings check` (a broken
placeholder named with its file and line), offered to an order with its facts filled in, an
edit in force at the next request; and each radiologist's own phrases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pacs.cli import main
from pacs.reporting.templates import load_report_templates, placeholder_problem
from tests.conftest import mappings_dir_default
from tests.reporting.studies import add_user, ct_study
from tests.reporting.test_api import As

BROKEN = """CT/HEAD:
  - name: 头颅CT
    findings: |
      {patient_name}，{sex}。
      脑实质未见异常，{patient_nam}。
    impression: 未见异常。
CT/CHEST:
  - name: 胸部
    findings: 双肺清晰。
    impression: 未见异常 {age:>3}。
MR:
  - name: 磁共振
    findings: 见 {study_date 所示。
    impression: 无。
"""


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    """A copy of the shipped mappings the test may edit."""
    copy = tmp_path / "mappings"
    shutil.copytree(mappings_dir_default(), copy)
    return copy


def test_the_shipped_templates_and_phrases_are_valid(capsys):
    assert main(["mappings", "check", "--dir", str(mappings_dir_default())]) == 0
    templates, problems = load_report_templates(mappings_dir_default())
    assert problems == [] and [t.name for t in templates["CT0001"]][:1] == ["胸部CT平扫（正常）"]


def test_a_broken_placeholder_is_named_with_its_file_and_line(mappings_dir, capsys):
    path = mappings_dir / "report_templates.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    assert main(["mappings", "check", "--dir", str(mappings_dir)]) == 1
    said = capsys.readouterr().out
    assert f"{path}:5: CT/HEAD template 1 findings: unknown placeholder {{patient_nam}}" in said, said
    assert f"{path}:10: CT/CHEST template 1 impression: placeholder {{age}} takes no format" in said, said
    assert f"{path}:13: MR template 1 findings: " in said and "write {{ or }}" in said, said
    assert placeholder_problem("{patient_name}，{{括号}}") == ""


def test_phrase_file_problems_are_named_too(mappings_dir, capsys):
    (mappings_dir / "report_phrases.yaml").write_text(
        "CT:\n  - {abbreviation: fwqx, title: a, text: b}\n  - {abbreviation: FW QX, text: c}\n"
        "  - {abbreviation: fwqx, text: d}\nchest:\n  - {abbreviation: a, text: b}\n", encoding="utf-8")
    assert main(["mappings", "check", "--dir", str(mappings_dir)]) == 1
    said = capsys.readouterr().out
    assert "report_phrases.yaml:3: CT phrase 2: abbreviation is 1 to 16 lower-case" in said, said
    assert "report_phrases.yaml:4: CT phrase 3: abbreviation 'fwqx' is listed twice" in said, said
    assert "report_phrases.yaml:6: 'chest' is not a modality" in said, said


def test_an_order_is_offered_its_templates_filled_and_an_edit_counts_at_once(guarded_server, mappings_dir):
    server = guarded_server
    add_user(server, "liyi", ["radiologist"], "李医生")
    resident = As(server, "liyi")
    oid = ct_study(server, 7201, "P72001", ("张", "三", "ZHANG SAN"), birth="19800101")["id"]
    offered = resident.get(f"/reports/{oid}/templates").json()
    assert offered["problems"] == []
    assert [t["key"] for t in offered["templates"]] == ["CT0001", "CT0001", "CT/CHEST", "CT"][:len(offered["templates"])]
    first = offered["templates"][0]
    assert first["name"] == "胸部CT平扫（正常）"
    assert first["findings"].startswith("张三，男，") and "岁。胸部CT平扫。" in first["findings"]

    path = mappings_dir / "report_templates.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    broken = resident.get(f"/reports/{oid}/templates").json()
    assert broken["templates"] == []
    assert any(p.startswith("report_templates.yaml:5: CT/HEAD template 1 findings: unknown placeholder "
                            "{patient_nam};") for p in broken["problems"]), broken
    path.write_text(BROKEN.replace("{patient_nam}", "{patient_id}").replace("{age:>3}", "{age}")
                    .replace("{study_date ", "{study_date} "), encoding="utf-8")
    fixed = resident.get(f"/reports/{oid}/templates").json()
    assert fixed["problems"] == [] and [t["name"] for t in fixed["templates"]] == ["胸部"]


def test_phrases_of_the_department_and_ones_own(guarded_server):
    server = guarded_server
    add_user(server, "liyi", ["radiologist"], "李医生")
    add_user(server, "zhaoyi", ["radiologist"], "赵医生")
    liyi, zhaoyi = As(server, "liyi"), As(server, "zhaoyi")
    listed = liyi.get("/reports/phrases", modality="CT").json()
    abbreviations = [p["abbreviation"] for p in listed["department"]]
    assert abbreviations.index("fwqx") < abbreviations.index("jyfc")  # the modality's own first
    assert "nszc" not in abbreviations and listed["mine"] == []
    made = liyi.post("/reports/phrases", {"abbreviation": "wdjj", "title": "未见结节", "text": "双肺未见结节。",
                                          "modality": "CT"})
    assert made.status_code == 201, made.text
    again = liyi.post("/reports/phrases", {"abbreviation": "wdjj", "text": "别的"})
    assert again.status_code == 409 and "wdjj" in again.json()["detail"]
    assert liyi.post("/reports/phrases", {"abbreviation": "未见", "text": "x"}).status_code == 422
    assert [p["text"] for p in liyi.get("/reports/phrases", modality="CT").json()["mine"]] == ["双肺未见结节。"]
    assert liyi.get("/reports/phrases", modality="MR").json()["mine"] == []
    assert zhaoyi.get("/reports/phrases", modality="CT").json()["mine"] == []
    phrase_id = made.json()["id"]
    assert zhaoyi.delete(f"/reports/phrases/{phrase_id}").status_code == 404
    assert liyi.delete(f"/reports/phrases/{phrase_id}").status_code == 204
