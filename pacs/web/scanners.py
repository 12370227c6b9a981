"""Keyboard-wedge devices of the registration desk (``scanners.yaml`` in the mappings): what a
card reader or a barcode scanner types, so the page can tell it from a person typing."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pacs.integration.mapping import Problems, read_mapping

FILE_NAME = "scanners.yaml"
KINDS = ("card", "barcode")
DEFAULT_INTERVAL_MS = 30
DEFAULT_MIN_LENGTH = 6
TOP_KEYS = {"max_key_interval_ms", "min_length", "devices"}
DEVICE_KEYS = {"name", "kind", "prefix", "suffix", "pattern"}


@dataclass(frozen=True)
class Scanner:
    name: str
    kind: str
    prefix: str = ""
    suffix: str = ""
    pattern: str = ""


@dataclass(frozen=True)
class Scanners:
    max_key_interval_ms: int = DEFAULT_INTERVAL_MS
    min_length: int = DEFAULT_MIN_LENGTH
    devices: list[Scanner] = field(default_factory=list)

    def for_page(self) -> dict[str, Any]:
        """What the page's script needs (patterns as JavaScript reads them: same syntax here)."""
        return asdict(self)


def load_scanners(mappings_dir: Path) -> tuple[Scanners, list[str]]:
    """The desk's scanners from ``scanners.yaml`` (none when the file is absent), and each
    problem as ``file:line: what``; a file with problems gives no devices."""
    path = Path(mappings_dir) / FILE_NAME
    problems = Problems()
    if not path.exists():
        return Scanners(), problems
    data = read_mapping(path, problems, f"{FILE_NAME} is a mapping with max_key_interval_ms, min_length and devices")
    if data is None:
        return Scanners(), problems
    for key in sorted(set(data) - TOP_KEYS):
        problems.add(path, _line_of(path, key), f"unknown key {key!r} (known: {', '.join(sorted(TOP_KEYS))})")
    numbers = {}
    for key, default in (("max_key_interval_ms", DEFAULT_INTERVAL_MS), ("min_length", DEFAULT_MIN_LENGTH)):
        value = str(data.get(key, default)).strip()
        if not value.isdigit() or int(value) < 1:
            problems.add(path, _line_of(path, key), f"{key} is a whole number of at least 1, not {value!r}")
            value = str(default)
        numbers[key] = int(value)
    devices = []
    entries = data.get("devices") or []
    if not isinstance(entries, list):
        problems.add(path, _line_of(path, "devices"), "devices is a list")
        entries = []
    for number, entry in enumerate(entries, 1):
        where = _line_of(path, "- name", number)
        if not isinstance(entry, dict):
            problems.add(path, where, f"device {number} is a mapping with {', '.join(sorted(DEVICE_KEYS))}")
            continue
        for key in sorted(set(entry) - DEVICE_KEYS):
            problems.add(path, where, f"device {number}: unknown key {key!r}")
        kind = str(entry.get("kind", "")).strip()
        if kind not in KINDS:
            problems.add(path, where, f"device {number}: kind is one of {', '.join(KINDS)}, not {kind!r}")
            continue
        pattern = str(entry.get("pattern", "") or "")
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.add(path, where, f"device {number}: pattern is not a regular expression: {exc}")
            continue
        devices.append(Scanner(name=str(entry.get("name", "")).strip() or f"{kind} {number}", kind=kind,
                               prefix=str(entry.get("prefix", "") or ""), suffix=str(entry.get("suffix", "") or ""),
                               pattern=pattern))
    if problems:
        return Scanners(), problems
    return Scanners(numbers["max_key_interval_ms"], numbers["min_length"], devices), problems


def _line_of(path: Path, text: str, occurrence: int = 1) -> int:
    """The line where ``text`` starts a line for the ``occurrence``-th time (1 if not found)."""
    seen = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith(text):
            seen += 1
            if seen == occurrence:
                return number
    return 1
