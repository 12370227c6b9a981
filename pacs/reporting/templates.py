"""Report templates (报告模板) from the mappings: ``report_templates.yaml``.

Each key is a requested procedure code (``CT0001``, as in ``codes/procedures.csv``), a modality
and body part (``CT/CHEST``: DICOM (0008,0060) and (0018,0015)), or a modality alone (``CT``);
each holds a list of templates, each with a ``name``, ``findings`` and ``impression``. An order
is offered those of its procedure code first, then of its modality and body part, then of its
modality. The text may name facts of the order in braces, filled in when the template is used::

    CT/CHEST:
      - name: 胸部CT平扫（正常）
        findings: |
          {patient_name}，{sex}，{age}。胸廓对称……
        impression: 胸部CT平扫未见明显异常。

A placeholder that is not one of :data:`PLACEHOLDERS`, a format specification, or a lone brace
is a problem that ``pacs mappings check`` reports as ``file:line: what``; a file with problems
offers no templates until it is fixed. The file is read when the editor asks, so an edit is in
force at the next report opened.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs.integration.mapping import Problems, read_mapping

FILE_NAME = "report_templates.yaml"
TEMPLATE_KEYS = {"name", "findings", "impression"}
# What a template may name, each from the order, its patient and its study
PLACEHOLDERS = {
    "patient_name": "the patient's name as read (张三)",
    "patient_id": "Patient ID (0010,0020)",
    "sex": "男, 女 or 其他 (0010,0040)",
    "age": "age at the study (45岁, 8个月, 12天)",
    "modality": "modality (0008,0060): CT, MR, …",
    "body_part": "body part examined (0018,0015), as the procedure table names it",
    "procedure": "requested procedure description (0032,1060)",
    "accession_number": "accession number (0008,0050)",
    "study_date": "the study's date, YYYY-MM-DD",
    "referring_physician": "referring physician (0008,0090)",
    "reason": "reason for the requested procedure (0040,1002)",
    "department": "requesting service (0032,1033)",
}
KEY = re.compile(r"^([A-Z]{2,4})(/[A-Z0-9_ ]{1,16})?$|^[A-Za-z0-9._-]{1,32}$")
SEX = {"M": "男", "F": "女", "O": "其他"}
AGE_UNITS = {"Y": "岁", "M": "个月", "D": "天"}


@dataclass(frozen=True)
class Template:
    key: str  # where it is listed: CT0001, CT/CHEST, CT
    name: str
    findings: str
    impression: str

    @property
    def id(self) -> str:
        return f"{self.key}:{self.name}"


def placeholder_problem(text: str) -> str:
    """What is wrong with the placeholders of ``text`` ("" when nothing): an unknown name, a
    conversion or format specification, or a lone ``{`` or ``}`` (write ``{{`` for a brace)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        return f"{exc} (write {{{{ or }}}} for a brace itself)"
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            return (f"unknown placeholder {{{field}}}; known: "
                    + ", ".join("{" + name + "}" for name in PLACEHOLDERS))
        if spec or conversion:
            return f"placeholder {{{field}}} takes no format or conversion (write it {{{field}}})"
    return ""


def _line(lines: list[str], start: int, field: str) -> int:
    """The line (from 1) of ``field``'s placeholder problem in the template starting at line
    ``start``: the first line of its text whose own placeholders are wrong, else its key's line."""
    at = next((n for n in range(max(start, 1), len(lines) + 1) if lines[n - 1].strip().startswith(f"{field}:")),
              start or 1)
    for number in range(at, len(lines) + 1):
        text = lines[number - 1]
        if number == at:
            text = text.split(":", 1)[1]
        elif number > at and re.match(r"^\s*(- )?[a-z_]+:", text):
            break  # the next key: the problem spans lines
        if placeholder_problem(text):
            return number
    return at


def load_report_templates(mappings_dir: Path) -> tuple[dict[str, list[Template]], list[str]]:
    """The templates by key (none when the file is absent), and each problem as ``file:line:
    what``; a file with problems gives none."""
    path = Path(mappings_dir) / FILE_NAME
    problems = Problems()
    if not path.exists():
        return {}, problems
    data = read_mapping(path, problems, f"{FILE_NAME} maps a procedure code, MODALITY/BODY_PART or MODALITY to a list "
                              "of templates")
    if data is None:
        return {}, problems
    lines = path.read_text(encoding="utf-8").splitlines()
    found: dict[str, list[Template]] = {}
    for key, entries in data.items():
        where = next((n for n, line in enumerate(lines, 1) if line.startswith(f"{key}:")), 1)
        if not KEY.match(key):
            problems.add(path, where, f"{key!r} is not a procedure code, MODALITY/BODY_PART (CT/CHEST) or MODALITY")
            continue
        if not isinstance(entries, list) or not entries:
            problems.add(path, where, f"{key}: a list of templates, each with name, findings and impression")
            continue
        made = []
        for number, entry in enumerate(entries, 1):
            at = getattr(entry, "line", where)
            label = f"{key} template {number}"
            if not isinstance(entry, dict):
                problems.add(path, at, f"{label}: a mapping with name, findings and impression")
                continue
            for unknown in sorted(set(entry) - TEMPLATE_KEYS):
                problems.add(path, at, f"{label}: unknown key {unknown!r} (known: {', '.join(sorted(TEMPLATE_KEYS))})")
            name = str(entry.get("name") or "").strip()
            if not name:
                problems.add(path, at, f"{label}: a name is needed (as the editor lists it)")
            texts = {}
            for field in ("findings", "impression"):
                value = entry.get(field)
                if not isinstance(value, str) or not value.strip():
                    problems.add(path, at, f"{label}: {field} is the text the report starts from")
                    continue
                problem = placeholder_problem(value)
                if problem:
                    problems.add(path, _line(lines, at, field), f"{label} {field}: {problem}")
                texts[field] = value.rstrip("\n")
            if name and len(texts) == 2:
                made.append(Template(key=key, name=name, findings=texts["findings"], impression=texts["impression"]))
        found[key] = made
    return ({} if problems else found), problems


def for_order(templates: dict[str, list[Template]], *, procedure_code: str, modality: str,
              body_part: str) -> list[Template]:
    """The templates an order is offered: its procedure code's, then its modality and body
    part's, then its modality's."""
    keys = [procedure_code.strip(), f"{modality}/{body_part}".upper(), modality.upper()]
    offered: list[Template] = []
    for key in dict.fromkeys(k for k in keys if k and not k.startswith("/") and not k.endswith("/")):
        offered.extend(templates.get(key, []))
    return offered


def facts(header: Any) -> dict[str, str]:
    """The placeholders' values for an order (:class:`pacs.reporting.api.OrderHeader`)."""
    age = header.age
    if age and age[-1] in AGE_UNITS:
        age = f"{int(age[:-1])}{AGE_UNITS[age[-1]]}"
    name = header.patient_name.split(" (")[0]
    return {"patient_name": name, "patient_id": header.patient_id, "sex": SEX.get(header.sex, header.sex),
            "age": age, "modality": header.modality, "body_part": header.body_part, "procedure": header.procedure,
            "accession_number": header.accession_number, "study_date": header.study_date,
            "referring_physician": header.referring_physician, "reason": header.reason,
            "department": header.department}


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with its placeholders filled (each checked by :func:`placeholder_problem`)."""
    return text.format_map({name: values.get(name, "") for name in PLACEHOLDERS})
