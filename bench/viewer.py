#!/usr/bin/env python
"""The image viewer (/viewer) in headless Chromium: time to the first image of a 300-slice CT,
with the viewer's files cached and cold, and the rate of scrolling through the stack.

Starts ``pacs serve`` on a fresh data folder with the installed viewer (``pacs assets install``
into ``--assets-dir``, default the tests' ``~/.cache/pacs/assets``), stores a CT phantom of
``--slices`` 512×512 slices through STOW-RS, logs a radiologist in, then opens
``/viewer/viewer?StudyInstanceUIDs=…`` in Debian's Chromium (WebGL2 from SwiftShader) and reads
from the page itself (``performance.now()``, from navigation start):

- ``first image``: cornerstone's first ``IMAGE_RENDERED`` event of a viewport;
- ``study to first image``: from the first DICOMweb request the viewer makes to that event
  (the part the archive and the image pipeline own, without loading the viewer's script);

cold (a new browser context each time: nothing cached) and cached (the same context, the study
opened twice more: the viewer's files come from the browser's cache, and by the third opening
its compiled code too, as on a reading workstation). Then ``scroll``: from the
first image, every slice in turn, each step waiting for the slice to be drawn (cornerstone's
``setImageIdIndex`` then its ``IMAGE_RENDERED``), as a radiologist holding the arrow key sees
them: images per second, first pass (slices fetched as it goes, as far as the viewer's own
prefetch has not fetched them) and second pass (all in the viewer's cache); then the slice on
screen drawn again as many times (cornerstone's ``render``): the cost of drawing alone, without a
new image's texture. Last, ``next study``: a second study of as many slices shown in that open
viewer (``window.pacsViewer.open``, which the reading worklist and the desk use when the viewer's
window is open), from the call to its first image drawn: no page load, the viewer's scripts
already running, as a radiologist going from one study of the worklist to the next has it.

Goals: first image under 1 s cached, under 3 s cold; 30 images/s or more scrolling.

``--profile-scroll`` samples the page's main thread (V8's profiler) during the scrolling and
prints the functions its time went to.

``--variant NAME=JSON`` (repeatable) compares settings of the app configuration A/B on the same
run: each round opens the study with the shipped configuration, then with each variant in turn
(alternating, so the machine's load falls on all alike), a variant being the shipped
configuration with the JSON's keys set over it (``dataSource`` merges into the data source's
configuration). ``--scroll-slices`` limits the scrolling passes to the first N slices.

Run from the project root::

    .venv/bin/python bench/viewer.py
    .venv/bin/python bench/viewer.py --rounds 5 --slices 300
    .venv/bin/python bench/viewer.py --variant 'thumbs={"dataSource": {"thumbnailRendering": "thumbnailDirect"}}'
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the imports below need both paths

from common import ADMIN_PASSWORD, ADMIN_USER, admin_env, cpu_model, git_state, load_average, session_login  # noqa: E402
from playwright.sync_api import Browser, BrowserContext, sync_playwright  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from sqlmodel import Session  # noqa: E402

from pacs import assets  # noqa: E402
from pacs.auth import accounts  # noqa: E402
from pacs.db import Database  # noqa: E402
from tests.process import ServeProcess  # noqa: E402
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.web.viewer_studies import ct_phantom, stow  # noqa: E402

GOAL_CACHED_MS = 1000
GOAL_COLD_MS = 3000
GOAL_SCROLL_PER_S = 30
PASSWORD = "viewer bench password"
LOAD_TIMEOUT_MS = 120_000
# Chromium keeps the compiled code of a script it has run from its cache the second time it runs it
# (V8's code cache), so the study is opened three times in one browser: the last is "cached".
REOPENINGS = 3
PROFILE_INTERVAL_US = 200
GL_ARGS = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + [
    "--use-gl=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
# In every page before its own script: when the first image was drawn and when the first
# DICOMweb request started (cornerstone's events are dispatched on the viewport's element; a
# listener capturing on the document sees them all).
TIMING = """
window.__bench = {firstImage: null};
document.addEventListener('CORNERSTONE_IMAGE_RENDERED', () => {
  if (window.__bench.firstImage === null) window.__bench.firstImage = performance.now();
}, true);
"""
# A variant: the keys set over window.config as OHIF's page reads it (app-config.js assigns it).
VARIANT = """
(function (variant) {
  let config;
  Object.defineProperty(window, 'config', {configurable: true, get: () => config, set: (value) => {
    const {dataSource, ...top} = variant;
    config = Object.assign(value, top);
    if (dataSource) Object.assign(value.dataSources[0].configuration, dataSource);
  }});
})(%s);
"""
SHIPPED = "shipped"
FIRST_IMAGE = "window.__bench.firstImage"
# The scripts and the DICOMweb requests that started before the first image: how many, how many
# bytes over the network.
BEFORE_FIRST = """(() => {
  const until = window.__bench.firstImage;
  const entries = performance.getEntriesByType('resource').filter(e => e.startTime < until);
  const scripts = entries.filter(e => e.initiatorType === 'script' || e.name.endsWith('.js'));
  const dicomweb = entries.filter(e => e.name.includes('/dicomweb/'));
  return [scripts.length, scripts.reduce((n, e) => n + e.encodedBodySize, 0),
          dicomweb.length, dicomweb.reduce((n, e) => n + e.encodedBodySize, 0)];
})()"""
FIRST_DICOMWEB = ("performance.getEntriesByType('resource').filter(e => e.name.includes('/dicomweb/'))"
                  ".map(e => e.startTime).sort((a, b) => a - b)[0] ?? null")
SCROLL = """(limit) => {
  const viewport = cornerstone.getEnabledElements()[0].viewport;
  const count = Math.min(limit || Infinity, viewport.getImageIds().length);
  const step = (index) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('slice ' + index + ' not drawn in 10 s')), 10000);
    viewport.element.addEventListener('CORNERSTONE_IMAGE_RENDERED', () => { clearTimeout(timer); resolve(); },
                                      {once: true});
    viewport.setImageIdIndex(index);
  });
  const pass = async () => {  // every slice once: 1, 2, …, count - 1, then back to 0
    const start = performance.now();
    for (let n = 1; n <= count; n++) {
      await step(n % count);
    }
    return count / ((performance.now() - start) / 1000);
  };
  const redraw = async () => {  // the slice on screen drawn again: drawing alone, no new texture
    const start = performance.now();
    for (let n = 0; n < count; n++) {
      await new Promise((resolve) => {
        viewport.element.addEventListener('CORNERSTONE_IMAGE_RENDERED', resolve, {once: true});
        viewport.render();
      });
    }
    return count / ((performance.now() - start) / 1000);
  };
  window.__bench.scroll = null;
  (async () => { window.__bench.scroll = [count, await pass(), await pass(), await redraw()]; })()
    .catch(error => { window.__bench.scroll = String(error); });
}"""


# Another study in the viewer already open (what the reading worklist and the desk do when the
# viewer's window is open: window.pacsViewer.open, no page load): from the call to the first image
# of that study drawn.
NEXT_STUDY = """(uid) => {
  window.__bench.next = null;
  const start = performance.now();
  document.addEventListener('CORNERSTONE_IMAGE_RENDERED', function drawn() {
    const shown = cornerstone.getEnabledElements().some(
      (e) => (e.viewport.getCurrentImageId?.() || '').includes(uid));
    if (shown && window.__bench.next === null) {
      window.__bench.next = performance.now() - start;
      document.removeEventListener('CORNERSTONE_IMAGE_RENDERED', drawn, true);
    }
  }, true);
  if (!window.pacsViewer.open(uid)) window.__bench.next = 'the viewer would not open it in place';
}"""


def open_study(context: BrowserContext, url: str, before: list[list[float]] | None = None
               ) -> tuple[float, float, object]:
    """First image and study-to-first-image (ms), and the page; what was fetched before the
    first image appended to ``before``."""
    page = context.new_page()
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    page.goto(url)
    page.wait_for_function(f"{FIRST_IMAGE} !== null")
    first = float(page.evaluate(FIRST_IMAGE))
    dicomweb = page.evaluate(FIRST_DICOMWEB)
    if before is not None:
        before.append(page.evaluate(BEFORE_FIRST))
    return first, first - float(dicomweb if dicomweb is not None else 0), page


def row(name: str, values: list[float], unit: str = "ms") -> str:
    return (f"| {name} | {statistics.median(values):.0f} {unit} | {min(values):.0f} | {max(values):.0f} |"
            if unit == "ms" else f"| {name} | {statistics.median(values):.1f} {unit} | {min(values):.1f} | "
                                 f"{max(values):.1f} |")


@dataclasses.dataclass
class Results:
    cold: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    reopened: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # files cached, code not yet
    cached: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    scroll: list[tuple[int, float, float, float]] = dataclasses.field(default_factory=list)
    next_study: list[float] = dataclasses.field(default_factory=list)  # in the open viewer
    scroll_profile: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # V8 CPU profiles
    before_cold: list[list[float]] = dataclasses.field(default_factory=list)
    before_cached: list[list[float]] = dataclasses.field(default_factory=list)


def measure(browser: Browser, cookie: dict[str, str], target: str, variant: dict[str, Any], got: Results,
            scroll_slices: int, next_study: str, profile: bool = False) -> None:
    """One round of one configuration: cold, reopened twice in the same context, scrolled, then
    the next study in the open viewer."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    context.add_cookies([cookie])  # type: ignore[list-item]
    context.add_init_script(TIMING)
    if variant:
        context.add_init_script(VARIANT % json.dumps(variant))
    first, to_image, page = open_study(context, target, got.before_cold)
    got.cold.append((first, to_image))
    page.close()  # type: ignore[attr-defined]
    for reopening in range(REOPENINGS):
        last = reopening == REOPENINGS - 1
        first, to_image, page = open_study(context, target, got.before_cached if last else None)
        (got.cached if last else got.reopened).append((first, to_image))
        if not last:
            page.close()  # type: ignore[attr-defined]
    page.wait_for_timeout(1000)  # type: ignore[attr-defined]
    profiler = context.new_cdp_session(page) if profile else None  # type: ignore[arg-type]
    if profiler:
        profiler.send("Profiler.enable")
        profiler.send("Profiler.setSamplingInterval", {"interval": PROFILE_INTERVAL_US})
        profiler.send("Profiler.start")
    page.evaluate(SCROLL, scroll_slices)  # type: ignore[attr-defined]
    page.wait_for_function("window.__bench.scroll !== null")  # type: ignore[attr-defined]
    if profiler:
        got.scroll_profile.append(profiler.send("Profiler.stop")["profile"])
    result = page.evaluate("window.__bench.scroll")  # type: ignore[attr-defined]
    if isinstance(result, str):
        raise RuntimeError(f"scrolling failed: {result}")
    got.scroll.append(result)
    page.evaluate(NEXT_STUDY, next_study)  # type: ignore[attr-defined]
    page.wait_for_function("window.__bench.next !== null")  # type: ignore[attr-defined]
    result = page.evaluate("window.__bench.next")  # type: ignore[attr-defined]
    if isinstance(result, str):
        raise RuntimeError(f"the next study: {result}")
    got.next_study.append(result)
    context.close()


def where_scrolling_goes(profiles: list[dict[str, Any]], top: int = 6) -> None:
    """The page's main thread while scrolling (V8's sampling profiler, Profiler domain of the
    DevTools protocol): the functions it spent most time in, their own time."""
    spent: collections.Counter[str] = collections.Counter()
    for profile in profiles:
        nodes = {node["id"]: node["callFrame"] for node in profile["nodes"]}
        for sample, delta in zip(profile["samples"], profile["timeDeltas"], strict=True):
            frame = nodes[sample]
            spent[f"{frame['functionName'] or '(anonymous)'} ({frame['url'].rsplit('/', 1)[-1] or 'native'})"] += delta
    total = sum(spent.values())
    print(f"\nscrolling, the main thread's time by function (own time, {total / 1000:.0f} ms sampled):")
    for name, micros in spent.most_common(top):
        print(f"  {micros / total:6.1%}  {micros / 1000:7.0f} ms  {name}")


def report(got: Results) -> None:
    print("| measure | median | min | max |")
    print("|---|---:|---:|---:|")
    print(row("first image, cold (nothing cached)", [f for f, _ in got.cold]))
    print(row("study to first image, cold", [s for _, s in got.cold]))
    print(row("first image, files cached (first reopening)", [f for f, _ in got.reopened]))
    print(row("first image, viewer cached (third opening)", [f for f, _ in got.cached]))
    print(row("study to first image, viewer cached", [s for _, s in got.cached]))
    print(row("first image of the next study, in the open viewer", got.next_study))
    print(row("scroll, first pass", [first for _, first, _, _ in got.scroll], "images/s"))
    print(row("scroll, second pass (cached)", [second for _, _, second, _ in got.scroll], "images/s"))
    print(row("the same slice drawn again", [again for _, _, _, again in got.scroll], "images/s"))
    scripts, script_bytes, requests, request_bytes = (statistics.median(v) for v in zip(*got.before_cold, strict=True))
    print(f"\nbefore the first image, cold: {scripts:.0f} scripts ({script_bytes / 1e6:.1f} MB over the network), "
          f"{requests:.0f} DICOMweb requests ({request_bytes / 1e6:.2f} MB)")
    worst_cold = max(f for f, _ in got.cold)
    worst_cached = max(f for f, _ in got.cached)
    slowest = min(first for _, first, _, _ in got.scroll)
    worst_next = max(got.next_study)
    print(f"goals: first image cached < {GOAL_CACHED_MS} ms: page load "
          f"{'met' if worst_cached < GOAL_CACHED_MS else 'NOT met'} (slowest {worst_cached:.0f}), next study in "
          f"the open viewer {'met' if worst_next < GOAL_CACHED_MS else 'NOT met'} (slowest {worst_next:.0f}); "
          f"cold < {GOAL_COLD_MS} ms: "
          f"{'met' if worst_cold < GOAL_COLD_MS else 'NOT met'} (slowest {worst_cold:.0f}); scroll ≥ "
          f"{GOAL_SCROLL_PER_S} images/s: {'met' if slowest >= GOAL_SCROLL_PER_S else 'NOT met'} "
          f"(slowest first pass {slowest:.1f})")
    if got.scroll_profile:
        where_scrolling_goes(got.scroll_profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="study openings of each kind")
    parser.add_argument("--slices", type=int, default=300, help="slices of the CT")
    parser.add_argument("--assets-dir", type=Path, default=Path(os.environ.get("PACS_TEST_ASSETS_DIR") or
                                                                   Path.home() / ".cache" / "pacs" / "assets"),
                        help="where the viewer is installed (installed there if it is not)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="settings set over the shipped configuration, compared with it")
    parser.add_argument("--scroll-slices", type=int, default=0, help="scroll through the first N slices only")
    parser.add_argument("--profile-scroll", action="store_true",
                        help="sample the page's main thread while scrolling and say where its time went")
    args = parser.parse_args(argv)
    variants: dict[str, dict[str, Any]] = {SHIPPED: {}}
    for given in args.variant:
        name, _, settings = given.partition("=")
        variants[name] = json.loads(settings)
    assets.install(args.assets_dir, [assets.OHIF_VIEWER], say=print)
    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    data_dir = tmp / "data"
    url = f"sqlite:///{data_dir / 'pacs.db'}"
    server = ServeProcess(data_dir, url, PACS_ASSETS__DIR=str(args.assets_dir), **admin_env())
    try:
        print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}, "
              f"Python {platform.python_version()}; load average at start: {load_average()}")
        print(f"code: {git_state()}")
        server.start()
        base = f"http://127.0.0.1:{server.http_port}"
        db = Database(url)
        with Session(db.engine) as session:
            accounts.add_user(session, username="reader", password=PASSWORD, roles=["radiologist"])
            session.commit()
        db.engine.dispose()
        study, next_study = generate_uid(), generate_uid()
        started = time.monotonic()
        stored = sum(stow(base, ct_phantom(args.slices, 512, study_uid=uid), auth=(ADMIN_USER, ADMIN_PASSWORD))
                     for uid in (study, next_study))
        print(f"stored two studies of {args.slices} CT slices (512×512, 16 bits), {stored} in all, through STOW-RS "
              f"in {time.monotonic() - started:.1f} s")
        cookie_header, _csrf = session_login(base, "reader", PASSWORD)
        cookie_name, _, value = cookie_header.partition("=")
        cookie = {"name": cookie_name, "value": value, "url": base}
        target = f"{base}/viewer/viewer?StudyInstanceUIDs={study}"
        results = {name: Results() for name in variants}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=GL_ARGS)
            for _ in range(args.rounds):
                for name, variant in variants.items():  # alternating: the load falls on each alike
                    measure(browser, cookie, target, variant, results[name], args.scroll_slices, next_study,
                            args.profile_scroll)
                    print(f"  {name}: load average {load_average()}", flush=True)
            browser.close()
        scrolled = f"the first {args.scroll_slices} slices" if args.scroll_slices else "every slice"
        print(f"\n/viewer in headless Chromium (SwiftShader WebGL2), a {args.slices}-slice CT, {args.rounds} "
              f"openings of each kind (ms from navigation start); scrolling {scrolled}; "
              f"load average at the end: {load_average()}")
        for name, got in results.items():
            print(f"\n{name}: {json.dumps(variants[name], ensure_ascii=False) if variants[name] else 'as shipped'}\n")
            report(got)
        print(f"reproduce: cd {ROOT} && {shlex.join([sys.executable, *sys.argv])}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
