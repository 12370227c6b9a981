#!/usr/bin/env python
"""Film printing: the time to print a 4 × 5 film of 512 × 512 CT slices on DCMTK's ``dcmprscp``
(a Basic Grayscale Print Management SCP, PS3.4 Annex H) on loopback.

Times :func:`pacs.film.print_management.print_job` end to end: windowing the images to 12 bits,
the association, film session N-CREATE, film box N-CREATE, an image box N-SET per image (the
pixel data, 512 KB each), N-ACTION print and N-DELETE. Reports the median and the slowest of
``--rounds`` jobs, for ``--films`` films each.

Run from the project root::

    .venv/bin/python bench/film.py
    .venv/bin/python bench/film.py --rounds 5 --films 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pacs.film.print_management import Job, Window, print_job
from pacs.settings import Settings
from tests.film.printer import film_printer
from tests.web.viewer_studies import ct_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--films", type=int, default=1)
    args = parser.parse_args()
    images = [(ds, 1) for ds in ct_phantom(20 * args.films, 512)]
    with tempfile.TemporaryDirectory() as folder, film_printer(Path(folder)) as printer:
        settings = Settings(data_dir=Path(folder) / "data")
        target = printer.printer_settings()
        times = []
        for _ in range(args.rounds):
            job = Job(images=images, columns=4, rows=5, window=Window(40, 400), label="bench")
            started = time.perf_counter()
            printed = print_job(settings, target, job)
            times.append(time.perf_counter() - started)
            assert printed.films == args.films
    print(f"film printing, 4x5 of 512x512 CT, {args.films} film(s) of 20 images, 12 bits, dcmprscp on loopback")
    print(f"  median {statistics.median(times):.2f} s, slowest {max(times):.2f} s over {args.rounds} jobs")
    print(f"  command: .venv/bin/python bench/film.py --rounds {args.rounds} --films {args.films}")


if __name__ == "__main__":
    main()
