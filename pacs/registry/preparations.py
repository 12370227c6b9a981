"""What a patient must do before an exam: ``mappings/preparations.yaml``, printed on the slip.

The department writes the text once per procedure code, or once per modality for every
procedure of it that has none of its own::

    by_modality:
      MR: 请去除身上所有金属物品；体内有起搏器者请告知医生。
    by_procedure:
      CT0002: 增强检查：检查前禁食4小时，携带近期肾功能结果。

Codes are checked against ``codes/procedures.csv`` (``pacs mappings check``). A mappings folder
without the file prints no preparation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacs.integration.mapping import Problems, Procedure, read_mapping

FILE_NAME = "preparations.yaml"
KEYS = {"by_modality", "by_procedure"}
MAX_CHARACTERS = 400  # what a slip has room for


@dataclass
class Preparations:
    by_modality: dict[str, str] = field(default_factory=dict)
    by_procedure: dict[str, str] = field(default_factory=dict)

    def text(self, procedure_code: str, modality: str) -> str:
        """The preparation for an exam: its procedure's own, else its modality's, else none."""
        return self.by_procedure.get(procedure_code.strip().upper()) or self.by_modality.get(modality.upper(), "")


def load_preparations(mappings_dir: Path, procedures: dict[str, Procedure]) -> tuple[Preparations | None, list[str]]:
    """Read and check ``preparations.yaml``: the texts and no problems, or None and the problems."""
    path = Path(mappings_dir) / FILE_NAME
    problems = Problems()
    if not path.exists():
        return Preparations(), []
    data = read_mapping(path, problems, "preparations.yaml is a mapping with by_modality and by_procedure")
    if data is None:
        return None, problems
    for key in sorted(set(data) - KEYS):
        problems.add(path, getattr(data, "line", 1), f"unknown key {key!r}; the file holds by_modality and by_procedure")
    out = Preparations()
    for key, target in (("by_modality", out.by_modality), ("by_procedure", out.by_procedure)):
        node: Any = data.get(key) or {}
        line = getattr(node, "line", 1)
        if not isinstance(node, dict):
            problems.add(path, line, f"{key} maps a code to its text, e.g. {{MR: 请去除金属物品}}")
            continue
        for code, text in node.items():
            if not isinstance(text, str) or not text.strip():
                problems.add(path, line, f"{key} {code}: give the text to print")
                continue
            if len(text.strip()) > MAX_CHARACTERS:
                problems.add(path, line, f"{key} {code}: {len(text.strip())} characters; a slip has room for "
                                         f"{MAX_CHARACTERS}")
            if key == "by_procedure" and code.strip().upper() not in procedures:
                problems.add(path, line, f"by_procedure: procedure {code!r} is not in codes/procedures.csv")
            target[code.strip().upper()] = " ".join(text.split())
    if problems:
        return None, list(dict.fromkeys(problems))
    return out, []
