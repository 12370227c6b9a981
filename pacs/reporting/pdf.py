"""A signed report version as a PDF (ISO 32000-1), A4, with the Hanzi embedded.

The page carries the hospital's header (``[report] hospital``, ``department``, an optional
``logo``), the report's status (初步报告 preliminary, 正式报告 final, 更正报告 corrected) and
version, the patient (name in Hanzi and pinyin, ID, sex, age), the exam (accession number,
procedure, when it was made), the findings and the impression, a critical result (危急值) with
whom it was told and when, an amendment's reason, and who signed and verified it, when. A
cloud-film link (云胶片, :mod:`pacs.auth.links`) is printed as a QR code (ISO/IEC 18004) for
the patient's phone. Text is drawn with the same Noto Sans SC the desk's labels embed
(:mod:`pacs.registry.labels`), as a subset of the glyphs used; the document is built with
reportlab's ``invariant`` mode, so the same version gives the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas

from pacs.registry.labels import FontMissing, _font, _lock, _wrap, age, qr_code

STATUS_TITLE = {"P": "初步报告", "F": "正式报告", "C": "更正报告"}
SEX = {"M": "男", "F": "女", "O": "其他"}
MARGIN = 18 * mm
QR_SIZE = 28 * mm
BODY_SIZE = 10.5
LEADING = 16.0


@dataclass(frozen=True)
class ReportPage:
    """What the PDF of one signed version shows; times are the hospital's wall clock."""

    status: str  # P, F, C
    version: int
    hospital: str
    department: str
    name_ideographic: str  # 张三
    name_alphabetic: str  # ZHANG SAN
    patient_id: str
    sex: str
    birth_date: date | None
    accession_number: str
    procedure: str
    modality: str
    study_time: datetime | None
    requesting_department: str
    findings: str
    impression: str
    author_name: str
    signed_at: datetime
    verifier_name: str = ""
    verified_at: datetime | None = None
    critical: bool = False
    critical_told: str = ""
    critical_told_at: datetime | None = None
    reason: str = ""
    logo: Path | None = None
    film_url: str = ""  # the cloud-film link, printed as a QR code
    inpatient: str = field(default="")  # ward and bed, for an inpatient


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else ""


def report_pdf(page: ReportPage, *, font: Path | None) -> bytes:
    """The PDF of one signed report version (as many A4 pages as its text takes)."""
    if font is None:
        raise FontMissing("the reports' CJK font is not installed: run `pacs assets install`")
    out = io.BytesIO()
    width, height = A4
    usable = width - 2 * MARGIN
    with _lock:
        name = _font(font)
        canvas = Canvas(out, pagesize=A4, pageCompression=1, initialFontName=name, invariant=1)
        canvas.setTitle(f"{page.hospital} {STATUS_TITLE.get(page.status, '')} {page.accession_number}".strip())
        canvas.setAuthor(page.verifier_name or page.author_name)
        canvas.setSubject(page.procedure)
        canvas.setCreator("pacs")
        pages = [1]

        def header() -> float:
            y = height - MARGIN
            if page.logo is not None and page.logo.is_file():
                canvas.drawImage(str(page.logo), MARGIN, y - 14 * mm, 14 * mm, 14 * mm,
                                 preserveAspectRatio=True, mask="auto")
            canvas.setFont(name, 17)
            canvas.drawCentredString(width / 2, y - 7 * mm, page.hospital or page.department)
            canvas.setFont(name, 13)
            subtitle = f"{page.department} 影像诊断报告" if page.hospital else "影像诊断报告"
            canvas.drawCentredString(width / 2, y - 14 * mm, subtitle)
            canvas.setFont(name, 11)
            canvas.drawRightString(width - MARGIN, y - 7 * mm, STATUS_TITLE.get(page.status, page.status))
            canvas.setFont(name, 8)
            canvas.drawRightString(width - MARGIN, y - 12 * mm, f"第 {page.version} 版")
            y -= 18 * mm
            canvas.setLineWidth(0.8)
            canvas.line(MARGIN, y, width - MARGIN, y)
            return y - 6 * mm

        def footer() -> None:
            canvas.setFont(name, 7.5)
            canvas.drawString(MARGIN, 10 * mm, f"{page.accession_number}  {page.patient_id}  "
                                               f"{STATUS_TITLE.get(page.status, '')} 第 {page.version} 版  "
                                               f"第 {pages[-1]} 页")

        def new_page() -> float:
            footer()
            canvas.showPage()
            pages.append(pages[-1] + 1)
            canvas.setFont(name, BODY_SIZE)
            return header()

        y = header()
        # the patient and the exam, in two columns
        on = (page.study_time or page.signed_at).date()
        pinyin = f"（{page.name_alphabetic}）" if page.name_ideographic and page.name_alphabetic else ""
        left = [("姓名", f"{page.name_ideographic or page.name_alphabetic}{pinyin}"),
                ("性别", SEX.get(page.sex, page.sex)), ("年龄", age(page.birth_date, on, "zh-CN")),
                ("患者ID", page.patient_id)]
        right = [("检查号", page.accession_number), ("检查项目", page.procedure),
                 ("检查时间", _when(page.study_time)), ("申请科室", page.requesting_department)]
        if page.inpatient:
            left.append(("病区床号", page.inpatient))
        canvas.setFont(name, 9.5)
        top = y
        for column, rows in ((MARGIN, left), (MARGIN + usable / 2, right)):
            y = top
            for key, value in rows:
                canvas.drawString(column, y, f"{key}：")
                lines = _wrap(value, name, 9.5, usable / 2 - 20 * mm) or [""]
                for line in lines:
                    canvas.drawString(column + 17 * mm, y, line)
                    y -= 13
        y = min(top - 13 * max(len(left), len(right)), y) - 2 * mm
        canvas.setLineWidth(0.4)
        canvas.line(MARGIN, y, width - MARGIN, y)
        y -= 8 * mm

        floor = 42 * mm  # the signatures and the QR code below

        def section(title: str, text: str, y: float) -> float:
            canvas.setFont(name, 12)
            if y < floor:
                y = new_page()
            canvas.drawString(MARGIN, y, title)
            y -= LEADING + 2
            canvas.setFont(name, BODY_SIZE)
            for paragraph in text.replace("\r\n", "\n").split("\n"):
                for line in _wrap(paragraph, name, BODY_SIZE, usable - 8 * mm) or [""]:
                    if y < floor:
                        y = new_page()
                        canvas.setFont(name, BODY_SIZE)
                    canvas.drawString(MARGIN + 8 * mm, y, line)
                    y -= LEADING
            return y - 4 * mm

        y = section("检查所见", page.findings, y)
        y = section("诊断意见", page.impression, y)
        if page.critical:
            told = f"已通知 {page.critical_told}" if page.critical_told else "尚未记录通知对象"
            at = f"，{_when(page.critical_told_at)}" if page.critical_told_at else ""
            y = section("危急值", f"本检查结果为危急值，{told}{at}。", y)
        if page.reason:
            y = section("更正原因", page.reason, y)

        # signatures, at the foot of the last page
        canvas.setLineWidth(0.4)
        canvas.line(MARGIN, 38 * mm, width - MARGIN - (QR_SIZE + 4 * mm if page.film_url else 0), 38 * mm)
        canvas.setFont(name, 10)
        canvas.drawString(MARGIN, 31 * mm, f"报告医师：{page.author_name}")
        canvas.drawString(MARGIN, 25 * mm, f"报告时间：{_when(page.signed_at)}")
        if page.verifier_name:
            canvas.drawString(MARGIN + 62 * mm, 31 * mm, f"审核医师：{page.verifier_name}")
            canvas.drawString(MARGIN + 62 * mm, 25 * mm, f"审核时间：{_when(page.verified_at)}")
        canvas.setFont(name, 7.5)
        canvas.drawString(MARGIN, 17 * mm, "本报告仅供临床参考，以签名医师意见为准。")
        if page.film_url:
            qr_code(canvas, page.film_url, width - MARGIN - QR_SIZE, 12 * mm, QR_SIZE)
            canvas.setFont(name, 7.5)
            canvas.drawCentredString(width - MARGIN - QR_SIZE / 2, 9 * mm, "扫码查看云胶片")
        footer()
        canvas.showPage()
        canvas.save()
    return out.getvalue()
