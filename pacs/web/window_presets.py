"""Window presets of the viewer (``window_presets.yaml`` in the mappings): the windows a
radiologist picks from the viewer's W/L menu, per modality, each suited to some body parts.

A window is a width and a centre in the modality's output units (Hounsfield units for CT:
PS3.3 C.11.2.1.2, Window Center and Window Width); the viewer offers them after the image's own
values (its Window Center/Width), those whose body parts include the series' Body Part Examined
(0018,0015) first. ``pacs mappings check`` reports each problem as ``file:line: what``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pacs.integration.mapping import Problems, read_mapping

FILE_NAME = "window_presets.yaml"
PRESET_KEYS = {"name", "name_en", "window", "level", "body_parts"}
MODALITY = re.compile(r"^[A-Z]{2,4}$")  # PS3.3 C.7.3.1.1.1: CT, MR, DX, …
BODY_PART = re.compile(r"^[A-Z0-9_ ]{1,16}$")  # a CS value of (0018,0015), PS3.16 CID 4031


@dataclass(frozen=True)
class WindowPreset:
    name: str  # as shown in Chinese
    name_en: str
    window: float  # width, > 0
    level: float  # centre
    body_parts: tuple[str, ...] = ()


def load_window_presets(mappings_dir: Path) -> tuple[dict[str, list[WindowPreset]], list[str]]:
    """The presets by modality (none when the file is absent), and each problem; a file with
    problems gives none (the viewer's own defaults stay)."""
    path = Path(mappings_dir) / FILE_NAME
    problems = Problems()
    if not path.exists():
        return {}, problems
    data = read_mapping(path, problems, f"{FILE_NAME} maps each modality (CT, MR, …) to a list of presets")
    if data is None:
        return {}, problems
    lines = path.read_text(encoding="utf-8").splitlines()
    found: dict[str, list[WindowPreset]] = {}
    for modality, entries in data.items():
        where = _line_of(lines, f"{modality}:")
        if not isinstance(modality, str) or not MODALITY.match(modality):
            problems.add(path, where, f"{modality!r} is not a modality (two to four capitals: CT, MR, DX)")
            continue
        if not isinstance(entries, list) or not entries:
            problems.add(path, where, f"{modality}: a list of presets, each with name, window and level")
            continue
        presets = []
        for number, entry in enumerate(entries, 1):
            at = _line_of(lines, "- ", number, after=where)
            preset = _preset(entry, f"{modality} preset {number}", path, at, problems)
            if preset is not None:
                presets.append(preset)
        found[modality] = presets
    return ({} if problems else found), problems


def _preset(entry: Any, label: str, path: Path, at: int, problems: Problems) -> WindowPreset | None:
    if not isinstance(entry, dict):
        problems.add(path, at, f"{label}: a mapping with {', '.join(sorted(PRESET_KEYS))}")
        return None
    for key in sorted(set(entry) - PRESET_KEYS):
        problems.add(path, at, f"{label}: unknown key {key!r} (known: {', '.join(sorted(PRESET_KEYS))})")
    name = str(entry.get("name") or "").strip()
    if not name:
        problems.add(path, at, f"{label}: a name is needed (as the menu shows it)")
    numbers = {}
    for key in ("window", "level"):
        value = entry.get(key)  # the mappings' YAML loader reads every scalar as text
        try:
            numbers[key] = float(str(value).strip())
        except ValueError:
            numbers[key] = float("nan")
        if value is None or numbers[key] != numbers[key] or abs(numbers[key]) == float("inf"):
            problems.add(path, at, f"{label}: {key} is a number, not {value!r}")
            return None
    if numbers["window"] <= 0:
        problems.add(path, at, f"{label}: window (the width) is more than 0, not {numbers['window']:g}")
    parts = entry.get("body_parts") or []
    if not isinstance(parts, list) or not all(isinstance(p, str) and BODY_PART.match(p) for p in parts):
        problems.add(path, at, f"{label}: body_parts is a list of Body Part Examined values (CHEST, HEAD, …), "
                               f"not {parts!r}")
        parts = []
    return WindowPreset(name=name, name_en=str(entry.get("name_en") or name).strip(), window=numbers["window"],
                        level=numbers["level"], body_parts=tuple(parts))


def for_viewer(presets: dict[str, list[WindowPreset]]) -> dict[str, list[dict[str, Any]]]:
    """What the viewer's configuration reads: by modality, each preset as a plain object."""
    return {modality: [asdict(p) for p in items] for modality, items in presets.items()}


def _line_of(lines: list[str], text: str, occurrence: int = 1, *, after: int = 0) -> int:
    """The line (from 1) where ``text`` starts a line, stripped, for the ``occurrence``-th time
    after line ``after``; ``after`` (or 1) when not found."""
    seen = 0
    for number, line in enumerate(lines[after:], after + 1):
        if line.strip().startswith(text):
            seen += 1
            if seen == occurrence:
                return number
    return after or 1
