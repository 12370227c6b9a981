"""The label and the slip as a printer gets them: a PDF that poppler renders, whose Hanzi are
drawn with the embedded Noto Sans SC subset, whose Code 128 barcode (ISO/IEC 15417) zbar reads
back as the accession number, and on the slip a QR code (ISO/IEC 18004) of the cloud-film page; 503 with the fix when the font is not installed."""

from __future__ import annotations

import shutil
import subprocess
from datetime import date, datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops

from pacs import assets
from pacs.registry.labels import LabelData, age, label_pdf
from tests.registry.test_booking import admit, at, book, exam, tomorrow

TOOLS = {"pdftoppm": "poppler-utils", "pdffonts": "poppler-utils", "pdftotext": "poppler-utils",
         "zbarimg": "zbar-tools"}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: apt-get install {TOOLS[name]} (the README's test command does)")
    return found


def render(pdf: Path, dpi: int = 300) -> Path:
    subprocess.run([tool("pdftoppm"), "-r", str(dpi), "-png", "-singlefile", str(pdf), str(pdf.with_suffix(""))],
                   check=True)
    return pdf.with_suffix(".png")


def barcodes(png: Path) -> list[str]:
    done = subprocess.run([tool("zbarimg"), "-q", "--raw", str(png)], capture_output=True, text=True,
                          check=False)  # exit 4: no symbol found, which the caller's assertion says
    return done.stdout.split()


def fonts(pdf: Path) -> str:
    return subprocess.run([tool("pdffonts"), str(pdf)], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("kind", ["label", "slip"])
def test_the_label_renders_with_hanzi_and_a_barcode_of_the_accession(server, installed_assets, tmp_path, kind):
    admit(server, "P20001", "欧阳", "娜娜", "OUYANG NANA")
    order = book(server, {"patient_id": "P20001", "department": "呼吸内科",
                          "exams": [exam("CT0201", "CT2", at(tomorrow(), 9))]}).json()["orders"][0]
    answer = httpx.get(f"{server.http_url}/api/orders/{order['id']}/label.pdf", params={"kind": kind})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/pdf"
    pdf = tmp_path / f"{kind}.pdf"
    pdf.write_bytes(answer.content)

    # the Hanzi come from the embedded subset of Noto Sans SC, and nothing else is left to the printer
    listed = fonts(pdf).splitlines()[2:]
    assert listed and all(line.split()[-5:-3] == ["yes", "yes"] for line in listed), listed  # emb, sub
    assert any("NotoSansSC" in line for line in listed)
    text = subprocess.run([tool("pdftotext"), str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "欧阳娜娜" in text and "OUYANG NANA" in text and "P20001" in text
    assert "上腹部CT增强" in text and "CT 2室" in text and f"{tomorrow()} 09:00" in text
    if kind == "slip":
        assert "禁食4小时" in text  # the preparation of preparations.yaml

    png = render(pdf)
    width, height = Image.open(png).size
    expected = (60, 40) if kind == "label" else (80, 120)  # [desk] label_mm, slip_mm
    assert (round(width / 300 * 25.4), round(height / 300 * 25.4)) == expected
    if kind == "label":
        assert barcodes(png) == [order["accession_number"]]
        return
    # the slip: the accession's barcode, and a QR code of the exam's cloud-film page, which opens
    # on a phone without an account and shows the exam (its report once one is final)
    read = barcodes(png)
    films = [code for code in read if "/s/" in code]
    assert order["accession_number"] in read and len(films) == 1 and len(read) == 2, read
    assert films[0].startswith(server.http_url.replace("127.0.0.1", "localhost")) or \
        films[0].startswith(server.http_url), films[0]
    page = httpx.get(server.http_url + films[0][films[0].index("/s/"):])
    assert page.status_code == 200 and "上腹部CT增强" in page.text, page.text[:300]


def test_the_name_is_drawn_in_hanzi(installed_assets, tmp_path):
    """The same label with and without the name: the name's line differs (glyphs were drawn,
    not boxes or nothing)."""
    font = assets.font_path(installed_assets)
    data = LabelData(accession_number="A00000042", patient_id="P20001", name_ideographic="欧阳娜娜",
                     name_alphabetic="", sex="F", birth_date=date(1981, 3, 4), procedure_text="", room="",
                     location="", start=datetime(2026, 12, 7, 9))
    with_name, without = tmp_path / "with.pdf", tmp_path / "without.pdf"
    with_name.write_bytes(label_pdf(data, font=font, size_mm=(60, 40)))
    blank = LabelData(**{**data.__dict__, "name_ideographic": ""})
    without.write_bytes(label_pdf(blank, font=font, size_mm=(60, 40)))
    a, b = Image.open(render(with_name)).convert("L"), Image.open(render(without)).convert("L")
    name_line = (0, 0, a.width * 2 // 3, a.height // 5)
    box = ImageChops.difference(a.crop(name_line), b.crop(name_line)).getbbox()
    assert box is not None and box[2] - box[0] > 100  # four glyphs' width at 300 dpi, about 15 mm
    assert barcodes(render(with_name)) == ["A00000042"]


def test_without_the_font_the_label_says_how_to_install_it(start_server, tmp_path):
    server = start_server(assets={"dir": tmp_path / "no-assets"})
    admit(server, "P20001", "欧阳", "娜娜", "OUYANG NANA")
    order = book(server, {"patient_id": "P20001", "exams": [exam("CT0001", "CT2", at(tomorrow(), 9))]}).json()
    answer = httpx.get(f"{server.http_url}/api/orders/{order['orders'][0]['id']}/label.pdf")
    assert answer.status_code == 503 and "pacs assets install" in answer.json()["detail"]
    assert httpx.get(f"{server.http_url}/api/orders/999999/label.pdf").status_code == 503


def test_an_install_checks_the_pinned_hash(installed_assets, tmp_path):
    """`pacs assets install --from` takes a tarball only with the pinned integrity."""
    forged = tmp_path / "forged.tgz"
    forged.write_bytes(b"not the package")
    with pytest.raises(assets.AssetError, match="none of the pinned assets"):
        assets.install(tmp_path / "cache", source=forged)
    assert not assets.installed(tmp_path / "cache", assets.NOTO_SANS_SC)
    from pacs.cli import main

    assert main(["assets", "list", "--dir", str(installed_assets)]) == 0


def test_ages_as_hospitals_print_them():
    on = date(2026, 12, 7)
    assert age(date(1981, 3, 4), on, "zh-CN") == "45岁"
    assert age(date(2026, 9, 1), on, "zh-CN") == "3月"
    assert age(date(2026, 11, 30), on, "zh-CN") == "7天"
    assert age(date(1981, 12, 8), on, "en") == "44 y"
