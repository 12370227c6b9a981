"""The viewer's window presets (window_presets.yaml): the shipped file, and mistakes reported as
``file:line: what`` by ``pacs mappings check``."""

from __future__ import annotations

from pathlib import Path

from pacs.settings import SHIPPED_MAPPINGS
from pacs.web.window_presets import FILE_NAME, for_viewer, load_window_presets


def test_the_shipped_presets_load_per_modality():
    presets, problems = load_window_presets(SHIPPED_MAPPINGS)
    assert problems == []
    lung = presets["CT"][0]
    assert (lung.name, lung.name_en, lung.window, lung.level) == ("肺窗", "Lung", 1500.0, -600.0)
    assert "CHEST" in lung.body_parts
    assert {"CT", "MR", "DX"} <= set(presets)
    assert for_viewer(presets)["CT"][0]["body_parts"] == ("CHEST", "LUNG")


def test_mistakes_are_reported_at_their_line(tmp_path: Path):
    (tmp_path / FILE_NAME).write_text(
        "CT:\n"
        "  - {name: 肺窗, window: 1500, level: -600}\n"
        "  - {name: 骨窗, window: wide, level: 500}\n"
        "  - {name: 脑窗, window: -80, level: 40, body_parts: [head]}\n"
        "ct:\n"
        "  - {name: x, window: 1, level: 1}\n", encoding="utf-8")
    presets, problems = load_window_presets(tmp_path)
    assert presets == {}  # a file with mistakes gives none: the viewer keeps its own
    path = tmp_path / FILE_NAME
    assert problems == [
        f"{path}:3: CT preset 2: window is a number, not 'wide'",
        f"{path}:4: CT preset 3: window (the width) is more than 0, not -80",
        f"{path}:4: CT preset 3: body_parts is a list of Body Part Examined values (CHEST, HEAD, …), not ['head']",
        f"{path}:5: 'ct' is not a modality (two to four capitals: CT, MR, DX)",
    ]


def test_no_file_no_presets(tmp_path: Path):
    assert load_window_presets(tmp_path) == ({}, [])
