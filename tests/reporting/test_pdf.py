"""The report's PDF on its own: long text runs onto more A4 pages, the same version gives the
same bytes, and only a final report carries the cloud-film QR code."""

from __future__ import annotations

import subprocess
from datetime import date, datetime
from pathlib import Path

import pytest

from pacs import assets
from pacs.registry.labels import FontMissing
from pacs.reporting.pdf import ReportPage, report_pdf

LINE = "双肺纹理清晰，走行自然。右肺上叶见一约8mm结节影，边界清楚，周围可见毛刺征及胸膜牵拉。"


def page(**changes) -> ReportPage:
    values = {"status": "P", "version": 1, "hospital": "市第一人民医院", "department": "放射科",
              "name_ideographic": "张三", "name_alphabetic": "ZHANG SAN", "patient_id": "P10001", "sex": "F",
              "birth_date": date(2026, 10, 1), "accession_number": "ACC0001", "procedure": "胸部CT平扫",
              "modality": "CT", "study_time": datetime(2026, 12, 6, 9, 30), "requesting_department": "呼吸内科",
              "findings": LINE, "impression": "右肺上叶结节。", "author_name": "李住院",
              "signed_at": datetime(2026, 12, 6, 10, 0)}
    return ReportPage(**(values | changes))


def run(*command: str, data: bytes) -> str:
    return subprocess.run(command, input=data, capture_output=True, check=True, timeout=60).stdout.decode()


def test_long_findings_run_onto_more_pages(installed_assets):
    font = assets.font_path(installed_assets)
    data = report_pdf(page(findings="\n".join(f"{n}. {LINE}" for n in range(1, 61))), font=font)
    info = dict(line.split(":", 1) for line in run("pdfinfo", "-", data=data).splitlines() if ":" in line)
    pages = int(info["Pages"])
    assert pages > 1 and "(A4)" in info["Page size"]
    text = run("pdftotext", "-", "-", data=data)
    assert all(f"{n}. 双肺纹理清晰" in text for n in range(1, 61))
    assert text.count("市第一人民医院") == pages and f"第 {pages} 页" in text  # each page headed and numbered
    assert "2月" in text  # a two-month-old's age, as hospitals print it
    assert report_pdf(page(findings="\n".join(f"{n}. {LINE}" for n in range(1, 61))), font=font) == data


def test_only_a_final_report_carries_the_qr_code(installed_assets, tmp_path: Path):
    font = assets.font_path(installed_assets)
    for name, made in (("p", page()), ("f", page(status="F", film_url="https://pacs.example.cn/s/abc.def"))):
        subprocess.run(["pdftoppm", "-r", "100", "-png", "-singlefile", "-", str(tmp_path / name)],
                       input=report_pdf(made, font=font), check=True, timeout=60)
    found = subprocess.run(["zbarimg", "--raw", "-q", str(tmp_path / "f.png")], capture_output=True, text=True,
                           timeout=60, check=True)
    assert found.stdout.strip() == "https://pacs.example.cn/s/abc.def"
    none = subprocess.run(["zbarimg", "--raw", "-q", str(tmp_path / "p.png")], capture_output=True, text=True,
                          timeout=60, check=False)  # zbarimg exits 4 when it finds no symbol
    assert none.stdout.strip() == ""


def test_without_the_font_it_says_how_to_install_it():
    with pytest.raises(FontMissing, match="pacs assets install"):
        report_pdf(page(), font=None)
