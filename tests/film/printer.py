"""DCMTK's ``dcmprscp`` as a film printer on loopback: a Basic Grayscale Print Management SCP
that keeps every film session it prints in its database folder (a Stored Print object, SP_*,
and a Hardcopy Grayscale Image, HG_*, per image box)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pacs.settings import Printer
from tests.process import free_port

AE_TITLE = "FILMER"
DISPLAY_FORMATS = r"1,1\1,2\2,1\2,2\2,3\3,3\3,4\3,5\4,4\4,5"  # what it prints; 5,6 it refuses
CONFIG = """\
[[GENERAL]]
[APPLICATION]
LogDirectory = {root}/log
LogFile = general.log
LogLevel = INFO
[DATABASE]
Directory = {root}/db
[PRINT]
Directory = {root}/spool
DetailedLog = false
BinaryLog = false
[[COMMUNICATION]]
[{ae}]
Aetitle = {ae}
Description = film printer of the tests
Hostname = localhost
Port = {port}
Type = LOCALPRINTER
DisplayFormat = {formats}
FilmSizeID = 8INX10IN\\14INX17IN
MediumType = PAPER\\CLEAR FILM\\BLUE FILM
FilmDestination = MAGAZINE\\PROCESSOR
MagnificationType = REPLICATE\\BILINEAR\\CUBIC\\NONE
ResolutionID = STANDARD\\HIGH
Supports12Bit = true
SupportsImageSize = true
MaxPDU = 32768
ImplicitOnly = false
DisableNewVRs = false
MaxDensity = 320
MinDensity = 20
BorderDensity = BLACK\\WHITE
EmptyImageDensity = BLACK\\WHITE
OmitSOPClassUIDFromCreateResponse = false
PresentationLUTMatchRequired = false
PresentationLUTinFilmSession = false
SupportsPresentationLUT = false
SupportsTrim = false
SupportsDecimateCrop = false
SmoothingType = NONE
"""


@dataclass
class FilmPrinter:
    port: int
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "db"

    def stored_prints(self) -> list[Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.database.glob("SP_*.dcm"))]

    def films(self) -> list[Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.database.glob("HG_*.dcm"))]

    def printer_settings(self, **changes: object) -> Printer:
        return Printer.model_validate({"ae_title": AE_TITLE, "host": "127.0.0.1", "port": self.port,
                                       "name": "CT 胶片", **changes})


@contextmanager
def film_printer(root: Path) -> Iterator[FilmPrinter]:
    """``dcmprscp`` listening on a free port, its configuration and database under ``root``."""
    for folder in ("db", "spool", "log"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "dcmpstat.cfg"
    config.write_text(CONFIG.format(root=root, ae=AE_TITLE, port=port, formats=DISPLAY_FORMATS))
    log = (root / "dcmprscp.log").open("wb")
    process = subprocess.Popen(["dcmprscp", "-c", str(config), "-p", AE_TITLE], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "TCP_NODELAY": "1"}, cwd=root)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dcmprscp did not start: {(root / 'dcmprscp.log').read_text()}") from None
                time.sleep(0.05)
        yield FilmPrinter(port, root)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
