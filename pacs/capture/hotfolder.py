"""Hot folders: a device that can only write files (an endoscopy tower's export, a scanner's
share, an ECG cart's PDF folder) drops them in its folder of ``capture.yaml``, and each is taken
once it is whole.

Whole means its size and modification time have not changed for the device's
``settle_seconds`` (:class:`Watch`): a file still being copied, or a network copy that pauses,
keeps growing or being touched and is left alone until it stops. Then it goes through
:meth:`pacs.capture.service.Capture.capture` like an upload naming no order (the accession number
at the start of its name, and ``devices.yaml``'s rules for the device) and is moved aside:

- stored, or kept on the reconciliation list: to the ``done`` folder;
- not an image or PDF, truncated, several pages: to the ``error`` folder, with ``NAME.reason.txt``
  beside it saying why;
- the archive could not store it (storage full): left where it is and tried again later.

Files of one accession number found whole in the same look are taken together (up to
:data:`GROUP_MAX`), as one series, their objects stored side by side so the index files them in
shared commits; one of them that cannot be converted goes to ``error/`` alone.

Files whose names start with ``.`` or end in ``.tmp``, ``.part`` or ``.partial`` (what copy
tools write before renaming) are not looked at, nor are sub-folders.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pacs.capture.convert import inspect
from pacs.capture.devices import CaptureDevice
from pacs.capture.reasons import reason_text
from pacs.capture.service import Capture, StoreFailed, Unconvertible, accession_in_name

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the folders are listed
GROUP_MAX = 32  # files of one accession number taken together (one series, shared commits)
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".reason.txt")


@dataclass
class Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time the file was first seen as it is


class Watch:
    """What a folder's files looked like, to tell a whole file from one still being written."""

    def __init__(self) -> None:
        self.seen: dict[Path, Seen] = {}

    def settled(self, folder: Path, settle_seconds: float, now: float) -> list[Path]:
        """The files of ``folder`` unchanged for ``settle_seconds`` (and not empty), oldest first."""
        ready, present = [], set()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = Path(entry.path)
            present.add(path)
            before = self.seen.get(path)
            if before is None or (before.size, before.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                self.seen[path] = Seen(stat.st_size, stat.st_mtime_ns, now)
                continue
            if stat.st_size > 0 and now - before.since >= settle_seconds:
                ready.append((stat.st_mtime_ns, path))
        for gone in set(self.seen) - present:
            del self.seen[gone]
        return [path for _, path in sorted(ready)]

    def forget(self, path: Path) -> None:
        self.seen.pop(path, None)


def aside(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` under its name (``name.1.jpg`` ... if it is taken)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    number = 1
    while target.exists():
        target = folder / f"{path.stem}.{number}{path.suffix}"
        number += 1
    os.replace(path, target)
    return target


class HotFolders:
    """The hot folders of every device of ``capture.yaml`` that has one, looked at in a thread."""

    def __init__(self, capture: Capture, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.capture = capture
        self.poll_seconds = poll_seconds
        self.watches: dict[str, Watch] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hot-folders", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan(time.monotonic())
            except Exception:  # a folder's trouble must not end the watching
                log.exception("hot folders: looking at the folders failed; trying again")
            self._stop.wait(self.poll_seconds)

    def scan(self, now: float) -> int:
        """Take every whole file of every hot folder once; returns how many were moved aside."""
        taken = 0
        for device in self.capture.devices().devices:
            folders = device.folders(self.capture.settings.data_dir)
            if folders is None:
                continue
            hot, done, error = folders
            hot.mkdir(parents=True, exist_ok=True)
            watch = self.watches.setdefault(device.name, Watch())
            groups: dict[str, list[Path]] = {}
            for path in watch.settled(hot, device.settle_seconds, now):
                groups.setdefault(accession_in_name(path.name), []).append(path)
            for paths in groups.values():
                for start in range(0, len(paths), GROUP_MAX):
                    if self._stop.is_set():
                        return taken
                    chunk = paths[start:start + GROUP_MAX]
                    taken += self.take_group(device, chunk, done, error)
                    for path in chunk:
                        watch.forget(path)
        return taken

    def take_group(self, device: CaptureDevice, paths: list[Path], done: Path, error: Path) -> int:
        """Files of one accession number found whole together: each looked at, those that
        cannot be converted to error/, the rest in one capture, one series (their objects
        share the index's commits)."""
        if len(paths) == 1:
            return self.take(device, paths[0], done, error)
        taken, good = 0, []
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                good.append((path, inspect(data, path.name)))
            except Unconvertible as exc:
                taken += self._refuse(device, path, len(data), error, exc)
        if not good:
            return taken
        try:
            results = self.capture.capture_sources([source for _, source in good], device=device,
                                                   by=f"hot folder {device.name}")
        except StoreFailed as exc:
            log.error("hot folder %s: %d files not stored, tried again later: %s", device.name, len(good), exc)
            return taken
        for path, _ in good:
            aside(path, done)
        log.info("hot folder %s: %d files %s", device.name, len(good), results[0].outcome)
        return taken + len(good)

    def _refuse(self, device: CaptureDevice, path: Path, size: int, error: Path, exc: Exception) -> int:
        if _changed(path, size):
            return 0  # written to again while it was read: not whole after all
        moved = aside(path, error)
        moved.with_name(moved.name + ".reason.txt").write_text(self._reason(exc), encoding="utf-8")
        log.warning("hot folder %s: %s moved to %s: %s", device.name, path.name, error, exc)
        return 1

    def _reason(self, exc: Exception) -> str:
        """A refused file's reason: in the site's language (``[auth] default_language``), then in
        English when that differs (:mod:`pacs.capture.reasons`)."""
        from pacs.web.i18n import translator

        english = f"{exc}"
        local = reason_text(exc, translator(self.capture.settings.auth.default_language))
        return f"{local}\n" if local == english else f"{local}\n{english}\n"

    def take(self, device: CaptureDevice, path: Path, done: Path, error: Path) -> int:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        try:
            [result] = self.capture.capture([(path.name, data)], device=device, by=f"hot folder {device.name}")
        except Unconvertible as exc:
            return self._refuse(device, path, len(data), error, exc)
        except StoreFailed as exc:
            log.error("hot folder %s: %s not stored, tried again later: %s", device.name, path.name, exc)
            return 0
        aside(path, done)
        log.info("hot folder %s: %s %s", device.name, path.name, result.outcome)
        return 1


def _changed(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size != size
    except FileNotFoundError:
        return True
