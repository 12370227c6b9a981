"""A real browser for the pages: Playwright for Python driving Debian's Chromium (no browser
download), headless, with the flags this closed network needs. Screenshots of each step go to
``PACS_SCREENSHOTS`` (default: the test's temporary folder) to be looked at."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.conftest import ONE_DATABASE, database_on

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying hosts this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
STEP_TIMEOUT_MS = 15_000


@pytest.fixture(params=[ONE_DATABASE])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path,
                 pg_database: str | None) -> str:
    """A page's flow runs on one database: PostgreSQL where the run has one (as CI does),
    SQLite otherwise. What the pages ask of the database goes through the same services as the
    API, whose tests run on both; a browser flow is the suite's dearest test, and running each
    twice cost minutes for nothing the API tests do not already check."""
    return database_on(request.param, tmp_path, sqlite_template, pg_database)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    """Playwright, once per test process: its sync API runs one instance at a time, so every
    browser the tests launch comes from this one."""
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


class Steps:
    """A page and where its screenshots go, one file per step of a person's flow."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.taken: list[Path] = []

    def shot(self, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def steps(browser: Browser, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Steps]:
    folder = Path(os.environ.get("PACS_SCREENSHOTS", tmp_path)) / request.node.name.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a run's screenshots only
        old.unlink()
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN",
                                  timezone_id="Asia/Shanghai")  # a desk's computer in China
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    taken = Steps(page, folder)
    yield taken
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:  # what the page showed when the test failed
        taken.shot("failed")
        print(f"screenshots of {request.node.name}: {folder}")
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test, so that `steps` knows whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
