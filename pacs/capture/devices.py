"""``mappings/capture.yaml``: the non-DICOM devices (cameras, endoscopes, ECG carts, scanners),
what their files become and where their hot folders are.

Beside ``devices.yaml``, which says how any device's images find their order: a capture device's
name is the calling AE title its objects arrive under, so a ``devices.yaml`` entry with that
``calling_ae`` decides how files that name no order are matched (the ``accession`` strategy
reads the accession number at the start of the file's name, ``A0017_1.jpg``).

The file, in short (its header explains every key)::

    devices:
      - name: ENDO2
        kind: endoscope
        manufacturer: Olympus
        hot_folder: /srv/capture/endo2
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pacs.capture.convert import Equipment, Kind
from pacs.integration.mapping import Problems, read_yaml

FILE_NAME = "capture.yaml"
AE_TITLE_MAX = 16  # PS3.5 6.2: the name is the calling AE title and Station Name (SH, 16)
LO_MAX = 64  # PS3.5 6.2, LO
CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")  # PS3.5 6.2, CS
TEXT_KEYS = {"manufacturer": LO_MAX, "model": LO_MAX, "serial_number": LO_MAX, "institution": LO_MAX,
             "department": LO_MAX, "comment": 10_000}
PATH_KEYS = ("hot_folder", "done_folder", "error_folder")
KEYS = {"name", "kind", "modality", "settle_seconds", *TEXT_KEYS, *PATH_KEYS}
DEFAULT_SETTLE_SECONDS = 2.0  # a hot folder's file is whole once unchanged this long
SETTLE_RANGE = (0.2, 600.0)
DEFAULT_NAME = "CAPTURE"  # the device of uploads that name none (the /capture page, scripts)


@dataclass(frozen=True)
class CaptureDevice:
    """One entry of capture.yaml."""

    equipment: Equipment
    hot_folder: Path | None = None  # relative paths are under the data folder
    done_folder: Path | None = None  # default hot_folder/done
    error_folder: Path | None = None  # default hot_folder/error
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    line: int = 0

    @property
    def name(self) -> str:
        return self.equipment.name

    @property
    def label(self) -> str:
        return f"{FILE_NAME}:{self.line} ({self.name})" if self.line else f"{FILE_NAME} ({self.name})"

    def folders(self, data_dir: Path) -> tuple[Path, Path, Path] | None:
        """(hot, done, error) folders, made absolute under ``data_dir``; None without a hot folder."""
        if self.hot_folder is None:
            return None
        hot = data_dir / self.hot_folder
        return hot, data_dir / (self.done_folder or hot / "done"), data_dir / (self.error_folder or hot / "error")


DEFAULT_DEVICE = CaptureDevice(Equipment(DEFAULT_NAME, Kind.PHOTO))


@dataclass(frozen=True)
class CaptureDevices:
    path: Path | None
    devices: tuple[CaptureDevice, ...]

    def get(self, name: str | None) -> CaptureDevice | None:
        """The entry named ``name`` (case ignored); the built-in ``CAPTURE`` photo device when
        no name is given (or capture.yaml names none such); None for an unknown name."""
        if not name:
            return self.get(DEFAULT_NAME) if any(d.name == DEFAULT_NAME for d in self.devices) else DEFAULT_DEVICE
        wanted = name.strip().upper()
        found = next((d for d in self.devices if d.name == wanted), None)
        if found is None and wanted == DEFAULT_NAME:
            return DEFAULT_DEVICE
        return found

    @property
    def names(self) -> list[str]:
        return sorted({d.name for d in self.devices} | {DEFAULT_NAME})


def load_capture_devices(mappings_dir: Path) -> tuple[CaptureDevices, list[str]]:
    """Read and check ``capture.yaml`` in ``mappings_dir`` (an absent file: no devices but the
    built-in one). Returns the devices (those read without problems) and every problem as
    ``file:line: what``."""
    path = Path(mappings_dir) / FILE_NAME
    problems = Problems()
    if not path.exists():
        return CaptureDevices(None, ()), problems
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.add(path, (mark.line + 1) if mark else 1, f"not valid YAML: {getattr(exc, 'problem', exc)}")
        return CaptureDevices(path, ()), problems
    data = data or {}
    if not isinstance(data, dict) or set(data) - {"devices"}:
        problems.add(path, 1, "capture.yaml is a mapping with one key, devices: a list of entries")
        return CaptureDevices(path, ()), problems
    entries = data.get("devices") or []
    if not isinstance(entries, list):
        problems.add(path, getattr(entries, "line", 1), "devices must be a list of entries, each starting with `- `")
        return CaptureDevices(path, ()), problems
    devices: list[CaptureDevice] = []
    seen: dict[str, int] = {}
    folders: dict[str, int] = {}
    for entry in entries:
        device = _read(entry, path, problems)
        if device is None:
            continue
        if device.name in seen:
            problems.add(path, device.line, f"device {device.name} is already named at line {seen[device.name]}")
            continue
        seen[device.name] = device.line
        if device.hot_folder is not None:
            where = str(device.hot_folder)
            if where in folders:
                problems.add(path, device.line, f"hot_folder {where} is already the folder of the entry at line "
                                                f"{folders[where]}; a file there would not know its device")
            folders[where] = device.line
        devices.append(device)
    return CaptureDevices(path, tuple(devices)), list(problems)


def _read(entry: Any, path: Path, problems: Problems) -> CaptureDevice | None:
    line = getattr(entry, "line", 0)
    if not isinstance(entry, dict):
        problems.add(path, line, "each device is a mapping of keys such as name and kind")
        return None
    before = len(problems)
    for key in sorted(set(entry) - KEYS, key=str):
        close = difflib.get_close_matches(str(key), sorted(KEYS), n=1)
        problems.add(path, line, f"unknown key {key!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    name = str(entry.get("name") or "").strip().upper()
    if not name:
        problems.add(path, line, "name: give the device's name, e.g. ENDO2 (its calling AE title)")
    elif len(name) > AE_TITLE_MAX or "\\" in name:
        problems.add(path, line, f"name {name!r} must be an AE title: at most {AE_TITLE_MAX} characters, no backslash")
    kind_text = str(entry.get("kind") or "").strip().lower()
    if kind_text not in {k.value for k in Kind}:
        problems.add(path, line, f"kind {kind_text!r} is not one of {', '.join(k.value for k in Kind)} "
                                 "(which IOD its images become)")
    modality = str(entry.get("modality") or "").strip().upper()
    if modality and not CS.match(modality):
        problems.add(path, line, f"modality {modality!r} is not a DICOM code string such as XC, ES or OT")
    texts: dict[str, str] = {}
    for key, limit in TEXT_KEYS.items():
        value = entry.get(key)
        if value is not None and not isinstance(value, (str, int)):
            problems.add(path, line, f"{key} is one line of text")
            continue
        texts[key] = str(value or "").strip()
        if len(texts[key]) > limit:
            problems.add(path, line, f"{key} has {len(texts[key])} characters; at most {limit}")
    paths: dict[str, Path | None] = {}
    for key in PATH_KEYS:
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.add(path, line, f"{key} is a folder path")
            value = None
        paths[key] = Path(value.strip()) if value else None
    for key in ("done_folder", "error_folder", "settle_seconds"):
        if (paths.get(key) is not None or key in entry) and paths["hot_folder"] is None:
            problems.add(path, line, f"{key} needs a hot_folder")
    given = entry.get("settle_seconds", DEFAULT_SETTLE_SECONDS)
    try:  # the mappings' loader reads scalars as text
        settle = float(str(given).strip())
    except ValueError:
        settle = -1.0
    if not SETTLE_RANGE[0] <= settle <= SETTLE_RANGE[1]:
        problems.add(path, line, f"settle_seconds {given}: give a number of seconds from {SETTLE_RANGE[0]} "
                                 f"to {SETTLE_RANGE[1]:.0f} (how long a file must stay unchanged to be taken)")
        settle = DEFAULT_SETTLE_SECONDS
    if len(problems) > before:
        return None
    equipment = Equipment(name=name, kind=Kind(kind_text), modality=modality, manufacturer=texts["manufacturer"],
                          model=texts["model"], serial_number=texts["serial_number"],
                          institution=texts["institution"], department=texts["department"])
    return CaptureDevice(equipment, hot_folder=paths["hot_folder"], done_folder=paths["done_folder"],
                         error_folder=paths["error_folder"], settle_seconds=float(settle), line=line)
