"""The patient's label and slip, printed at the registration desk: PDF with the Hanzi embedded.

The label (``[desk] label_mm``, 60 × 40 mm by default, a thermal label printer's roll) carries
the name in Hanzi and in pinyin, the patient ID, sex and age, the exam, its room and time, and
the accession number as a Code 128 barcode (ISO/IEC 15417) that the modality's or the desk's
scanner reads back. The slip (``[desk] slip_mm``, 80 mm receipt paper or A5) carries the same
and where to go and how to prepare (``mappings/preparations.yaml``).

Hanzi are drawn with Noto Sans SC, embedded as a subset of the glyphs used (a few kilobytes), so
the PDF prints the same on any printer or viewer. The font is a pinned asset (``pacs assets
install``, :mod:`pacs.assets`); without it :class:`FontMissing` says so.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from reportlab.graphics.barcode.code128 import Code128
from reportlab.graphics.barcode.qr import QrCodeWidget
from reportlab.graphics.shapes import Rect
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

FONT_NAME = "NotoSansSC"
QUIET_ZONE_MODULES = 10  # ISO/IEC 15417 4.4.2: at least ten modules of quiet zone on each side
MODULE_MM = 0.33  # X dimension of the bars when the label is wide enough (300 dpi printers: 4 dots)
MIN_MODULE_MM = 0.25  # narrower bars than this a 203 dpi label printer cannot print (2 dots)
MARGIN_MM = 2.5
BAR_HEIGHT_LABEL_MM = 9.0
BAR_HEIGHT_SLIP_MM = 12.0
QR_SLIP_MM = 22.0  # the cloud-film link's QR code on the slip: a phone reads it at arm's length

_lock = threading.Lock()  # reportlab's font subsetting keeps per-document state in the font object
_registered: dict[Path, str] = {}

TEXT = {
    "zh-CN": {"sex": {"M": "男", "F": "女", "O": "其他"}, "years": "{n}岁", "months": "{n}月", "days": "{n}天",
              "title": "检查单", "exam": "检查", "room": "检查室", "time": "时间", "where": "地点", "id": "ID",
              "accession": "检查号", "preparation": "检查前准备", "department": "申请科室", "priority": "优先级",
              "requisition": "申请单号", "film": "扫码查看云胶片",
              "priorities": {"stat": "急", "urgent": "急", "asap": "尽快", "routine": "普通"}},
    "en": {"sex": {"M": "male", "F": "female", "O": "other"}, "years": "{n} y", "months": "{n} mo", "days": "{n} d",
           "title": "Examination slip", "exam": "Exam", "room": "Room", "time": "Time", "where": "Where", "id": "ID",
           "accession": "Accession", "preparation": "Preparation", "department": "Requested by",
           "priority": "Priority", "requisition": "Requisition", "film": "Scan for your images",
           "priorities": {"stat": "STAT", "urgent": "urgent", "asap": "ASAP", "routine": "routine"}},
}
LANGUAGES = tuple(TEXT)


class NotEncodable(ValueError):
    """A value Code 128 cannot carry (it encodes ASCII only, ISO/IEC 15417 4.1)."""


class FontMissing(Exception):
    """The CJK font is not installed; the message says how to install it."""


@dataclass(frozen=True)
class LabelData:
    """What a label and a slip show of one exam."""

    accession_number: str
    patient_id: str
    name_ideographic: str  # 张三 (the PN ideographic group, components joined)
    name_alphabetic: str  # ZHANG SAN
    sex: str  # M, F, O or empty
    birth_date: date | None
    procedure_text: str
    room: str  # what the slip calls the room (CT 2室)
    location: str
    start: datetime | None
    preparation: str = ""
    department: str = ""
    priority: str = ""
    requisition_number: str = ""
    film_url: str = ""  # the cloud-film page of the exam (pacs.auth.links), printed as a QR code


def age(birth: date | None, on: date, language: str) -> str:
    """The patient's age on ``on`` as Chinese hospitals print it: years, or months under one
    year, or days under one month."""
    if birth is None or birth > on:
        return ""
    words = TEXT[language]
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if years >= 1:
        return words["years"].format(n=years)
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    if months >= 1:
        return words["months"].format(n=months)
    return words["days"].format(n=(on - birth).days)


def _font(path: Path) -> str:
    name = _registered.get(path)
    if name is None:
        name = f"{FONT_NAME}-{len(_registered)}" if _registered else FONT_NAME
        pdfmetrics.registerFont(TTFont(name, str(path)))  # subset and embedded per document
        _registered[path] = name
    return name


def _fit(text: str, font: str, size: float, width: float) -> str:
    """``text`` cut (with …) to ``width`` points."""
    if pdfmetrics.stringWidth(text, font, size) <= width:
        return text
    while text and pdfmetrics.stringWidth(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, font: str, size: float, width: float) -> list[str]:
    """``text`` in lines of at most ``width`` points: Hanzi break anywhere, Latin words at spaces."""
    lines: list[str] = []
    line = ""
    for token in _tokens(text):
        if pdfmetrics.stringWidth(line + token, font, size) <= width or not line:
            line += token
        else:
            lines.append(line.rstrip())
            line = token.lstrip()
    if line.strip():
        lines.append(line.rstrip())
    return lines


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    word = ""
    for char in text:
        if char.isascii() and not char.isspace():
            word += char
            continue
        if word:
            tokens.append(word)
            word = ""
        tokens.append(char)
    if word:
        tokens.append(word)
    return tokens


def _barcode(value: str, width: float, height: float) -> Code128:
    """A Code 128 symbol (ISO/IEC 15417) of ``value`` no wider than ``width`` points, quiet
    zones included, with the widest bars up to :data:`MODULE_MM`."""
    if not value or not value.isascii() or not value.isprintable():
        raise NotEncodable(f"accession number {value!r} cannot be a Code 128 barcode: it encodes printable ASCII only")
    module = MODULE_MM * mm
    probe = Code128(value, barWidth=1, barHeight=height, quiet=0, humanReadable=0)
    modules = probe.width + 2 * QUIET_ZONE_MODULES
    module = max(MIN_MODULE_MM * mm, min(module, width / modules))
    return Code128(value, barWidth=module, barHeight=height, quiet=1, lquiet=QUIET_ZONE_MODULES * module,
                   rquiet=QUIET_ZONE_MODULES * module, humanReadable=0)


def qr_code(canvas: Canvas, url: str, x: float, y: float, size: float) -> None:
    """``url`` as a QR code (ISO/IEC 18004, error correction level M) of ``size`` points square,
    its lower left corner at (``x``, ``y``): the code's dark modules drawn as filled rectangles,
    so the page needs no font but its own."""
    widget = QrCodeWidget(url, barLevel="M")
    x0, y0, x1, y1 = widget.getBounds()
    scale_x, scale_y = size / (x1 - x0), size / (y1 - y0)
    canvas.saveState()
    canvas.setFillColorRGB(1, 1, 1)
    canvas.rect(x, y, size, size, stroke=0, fill=1)  # the quiet zone stays white on any paper
    canvas.setFillColorRGB(0, 0, 0)
    for shape in widget.draw().contents:
        if isinstance(shape, Rect) and shape.fillColor is not None and shape.fillColor.red == 0:
            canvas.rect(x + (shape.x - x0) * scale_x, y + (shape.y - y0) * scale_y,
                        shape.width * scale_x, shape.height * scale_y, stroke=0, fill=1)
    canvas.restoreState()


def _when(start: datetime | None) -> str:
    return f"{start:%Y-%m-%d %H:%M}" if start else ""


def _who(data: LabelData, language: str) -> str:
    words = TEXT[language]
    parts = [words["sex"].get(data.sex, data.sex), age(data.birth_date, (data.start or datetime.now()).date(), language)]
    return " ".join(p for p in parts if p)


def label_pdf(data: LabelData, *, font: Path | None, size_mm: tuple[float, float], language: str = "zh-CN") -> bytes:
    """The patient label of one exam: one page of ``size_mm``."""
    if font is None:
        raise FontMissing("the labels' CJK font is not installed: run `pacs assets install`")
    language = language if language in TEXT else LANGUAGES[0]
    width, height = size_mm[0] * mm, size_mm[1] * mm
    margin = MARGIN_MM * mm
    usable = width - 2 * margin
    out = io.BytesIO()
    with _lock:
        name = _font(font)
        canvas = Canvas(out, pagesize=(width, height), pageCompression=1, initialFontName=name)
        canvas.setTitle(f"label {data.accession_number}")
        canvas.setCreator("pacs")
        y = height - margin - 11
        canvas.setFont(name, 11)
        head = data.name_ideographic or data.name_alphabetic
        canvas.drawString(margin, y, _fit(head, name, 11, usable * 0.62))
        canvas.setFont(name, 8)
        canvas.drawRightString(width - margin, y, _who(data, language))
        y -= 10
        second = "  ".join(p for p in (data.name_alphabetic if data.name_ideographic else "",
                                       f"{TEXT[language]['id']} {data.patient_id}") if p)
        canvas.drawString(margin, y, _fit(second, name, 8, usable))
        y -= 10
        canvas.drawString(margin, y, _fit(data.procedure_text, name, 8, usable))
        y -= 10
        canvas.drawString(margin, y, _fit(f"{data.room}  {_when(data.start)}", name, 8, usable))
        text_size = 7
        bar_bottom = margin + text_size + 1
        bar_height = min(BAR_HEIGHT_LABEL_MM * mm, y - 3 - bar_bottom)
        symbol = _barcode(data.accession_number, usable, bar_height)
        symbol.drawOn(canvas, (width - symbol.width) / 2, bar_bottom)
        canvas.setFont(name, text_size)
        canvas.drawCentredString(width / 2, margin, data.accession_number)
        canvas.showPage()
        canvas.save()
    return out.getvalue()


def slip_pdf(data: LabelData, *, font: Path | None, size_mm: tuple[float, float], language: str = "zh-CN") -> bytes:
    """The patient's slip: who, what, where, when, how to prepare, the accession barcode, and
    with ``film_url`` a QR code of the exam's cloud-film page (云胶片)."""
    if font is None:
        raise FontMissing("the labels' CJK font is not installed: run `pacs assets install`")
    language = language if language in TEXT else LANGUAGES[0]
    words = TEXT[language]
    width, height = size_mm[0] * mm, size_mm[1] * mm
    margin = 4 * mm
    usable = width - 2 * margin
    out = io.BytesIO()
    with _lock:
        name = _font(font)
        canvas = Canvas(out, pagesize=(width, height), pageCompression=1, initialFontName=name)
        canvas.setTitle(f"slip {data.accession_number}")
        canvas.setCreator("pacs")
        y = height - margin - 13
        canvas.setFont(name, 13)
        canvas.drawCentredString(width / 2, y, words["title"])
        y -= 20
        canvas.setFont(name, 14)
        head = data.name_ideographic or data.name_alphabetic
        canvas.drawString(margin, y, _fit(head, name, 14, usable * 0.6))
        canvas.setFont(name, 9)
        canvas.drawRightString(width - margin, y, _who(data, language))
        y -= 13
        if data.name_ideographic and data.name_alphabetic:
            canvas.drawString(margin, y, _fit(data.name_alphabetic, name, 9, usable))
            y -= 13
        rows = [
            (words["id"], data.patient_id),
            (words["accession"], data.accession_number),
            (words["exam"], data.procedure_text),
            (words["room"], data.room),
            (words["where"], data.location),
            (words["time"], _when(data.start)),
            (words["department"], data.department),
            (words["priority"], words["priorities"].get(data.priority, data.priority)),
            (words["requisition"], data.requisition_number),
        ]
        label_width = max(pdfmetrics.stringWidth(k, name, 9) for k, v in rows if v) + 6
        for key, value in rows:
            if not value:
                continue
            canvas.drawString(margin, y, key)
            for line in _wrap(value, name, 9, usable - label_width):
                canvas.drawString(margin + label_width, y, line)
                y -= 12
        symbol = _barcode(data.accession_number, usable, BAR_HEIGHT_SLIP_MM * mm)
        bottom = margin + symbol.height + 12
        if data.film_url:
            size = QR_SLIP_MM * mm
            qr_code(canvas, data.film_url, width - margin - size, bottom, size)
            canvas.setFont(name, 8)
            canvas.drawRightString(width - margin - size - 2 * mm, bottom + size / 2 - 3, words["film"])
            bottom += size + 3
        if data.preparation:
            y -= 3
            canvas.setFont(name, 9)
            canvas.drawString(margin, y, words["preparation"])
            y -= 12
            canvas.setFont(name, 8)
            for line in _wrap(data.preparation, name, 8, usable):
                if y < bottom:
                    break
                canvas.drawString(margin, y, line)
                y -= 10.5
        symbol.drawOn(canvas, (width - symbol.width) / 2, margin + 9)
        canvas.setFont(name, 8)
        canvas.drawCentredString(width / 2, margin, data.accession_number)
        canvas.showPage()
        canvas.save()
    return out.getvalue()
