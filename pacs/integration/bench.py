"""The mapping bench: a draft of one mapping file, checked and tried without writing anything,
then saved into the mappings folder when it checks clean.

A draft is the mappings in force with one file's text replaced, loaded from a copy of the folder
(so ``pacs mappings check`` finds exactly what it would find after the save) and tried on a
message with :func:`pacs.integration.trial.try_raw`, beside the mappings in force. Saving keeps
the file it replaces under ``.previous/`` in the mappings folder (``codes/priority.csv`` becomes
``.previous/codes/priority.csv.20261206T172500Z``) and refuses a file changed since the draft
began; the hot reload (:class:`pacs.integration.mapping.MappingHolder`) then puts it in force.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacs.db import utcnow
from pacs.integration import mapping
from pacs.integration.trial import try_raw

PREVIOUS = ".previous"  # earlier versions of saved files, inside the mappings folder
EDITABLE = (".yaml", ".csv")
MAX_DRAFT_BYTES = 1024 * 1024


class DraftRefused(Exception):
    """The draft may not be saved: it has problems, or the file changed since it was read."""


def files(root: Path) -> list[str]:
    """The mapping files an analyst may edit, as paths relative to ``root`` ("codes/sex.csv")."""
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and path.suffix in EDITABLE and not any(p.startswith(".") or p == "__pycache__"
                                                                  for p in relative.parts):
            found.append(relative.as_posix())
    return found


def path_of(root: Path, name: str) -> Path:
    """The file ``name`` names in ``root``; a name that is no mapping file there is a LookupError."""
    if name not in files(root):
        raise LookupError(f"{name!r} is not a mapping file in {root}")
    return root / name


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read(root: Path, name: str) -> str:
    return path_of(root, name).read_text(encoding="utf-8")


def check_folder(root: Path) -> tuple[mapping.Mappings | None, list[str]]:
    """What ``pacs mappings check`` says of ``root``: the mappings and every problem."""
    from pacs.reporting.phrases import load_report_phrases
    from pacs.reporting.templates import load_report_templates
    from pacs.web.scanners import load_scanners
    from pacs.web.window_presets import load_window_presets

    loaded, problems = mapping.load(root)
    problems = [*problems, *load_scanners(root)[1], *load_window_presets(root)[1],
                *load_report_templates(root)[1], *load_report_phrases(root)[1]]
    return (loaded if not problems else None), problems


@contextmanager
def draft(root: Path, name: str, text: str) -> Iterator[tuple[mapping.Mappings | None, list[str]]]:
    """The mappings ``root`` would hold with ``name`` reading ``text``, and their problems, each
    ``file:line: what`` with the file relative to the folder (``codes/priority.csv:14: …``)."""
    target = path_of(root, name)
    if len(text.encode("utf-8")) > MAX_DRAFT_BYTES:
        raise DraftRefused(f"a draft holds at most {MAX_DRAFT_BYTES} bytes")
    with tempfile.TemporaryDirectory(prefix="pacs-draft-") as folder:
        copy = Path(folder) / "mappings"
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns(PREVIOUS, "__pycache__"))
        (copy / target.relative_to(root)).write_text(text, encoding="utf-8", newline="")
        loaded, problems = check_folder(copy)
        prefix = str(copy.resolve()) + os.sep
        yield loaded, [problem.replace(prefix, "") for problem in problems]


def dry_run(raw: bytes, mappings: mapping.Mappings | None, settings: Any) -> dict[str, Any] | None:
    """What ``raw`` would make with ``mappings`` (patient, orders, worklist items, ACK), or None."""
    if mappings is None:
        return None
    result, applies = try_raw(raw, mappings, settings)
    return {**result, "applies": applies}


def save(root: Path, name: str, text: str, *, based_on: str) -> Path:
    """Write a draft that checks clean over ``name``, keeping the file it replaces; ``based_on``
    is the digest of the text the draft began from. Returns where the previous version went."""
    target = path_of(root, name)
    current = target.read_text(encoding="utf-8")
    if digest(current) != based_on:
        raise DraftRefused(f"{name} changed since this draft began; open it again and redo the change")
    with draft(root, name, text) as (_loaded, problems):
        if problems:
            raise DraftRefused(f"{len(problems)} problem(s): " + "; ".join(problems[:5]))
    kept = root / PREVIOUS / f"{name}.{utcnow().strftime('%Y%m%dT%H%M%S%fZ')}"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(target, kept)
    fresh = target.with_name(f".{target.name}.draft")
    fresh.write_text(text, encoding="utf-8", newline="")
    os.replace(fresh, target)  # readers see the old file or the new one, never half of it
    return kept
