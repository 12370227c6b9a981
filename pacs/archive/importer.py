"""``pacs import PATH``: a folder or a DICOMDIR into the archive, through the same store()."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pacs.archive.store import Archive, Outcome

log = logging.getLogger(__name__)


def files_to_import(path: Path) -> Iterator[Path]:
    """Every file under a folder, or the files a DICOMDIR references (PS3.10 Annex F)."""
    if path.is_file() and path.name.upper() == "DICOMDIR":
        from pydicom import dcmread
        from pydicom.fileset import FileSet

        for instance in FileSet(dcmread(path)):
            yield Path(instance.path)
        return
    if path.is_file():
        yield path
        return
    for folder, _dirs, names in os.walk(path):
        for name in sorted(names):
            if name.upper() != "DICOMDIR":
                yield Path(folder) / name


def import_path(archive: Archive, path: Path, *, workers: int = 4, progress: bool = True) -> Counter[str]:
    """Store every file found; returns how many ended how (stored, already stored, refused ...)."""
    files = list(files_to_import(path))
    counts: Counter[str] = Counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", desc="import")

    def one(file: Path) -> None:
        result = archive.store(file, calling_ae="IMPORT", move=False)
        counts[result.outcome.value] += 1
        if result.outcome == Outcome.REFUSED:
            log.info("%s: %s", file, result.comment)
        if bar is not None:
            bar.update(1)

    # Several stores in flight let the index writer commit them together.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, files))
    if bar is not None:
        bar.close()
    return counts
