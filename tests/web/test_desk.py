"""The registration desk in a real browser: a registrar's day, from the keyboard."""

from __future__ import annotations

import re

from sqlmodel import Session

from pacs.auth import accounts
from pacs.web.i18n import catalogue

ZH = catalogue("zh-CN")


def add_user(server, username: str, roles: list[str], display_name: str = "") -> None:  # type: ignore[no-untyped-def]
    with Session(server.db.engine) as session:
        accounts.add_user(session, username=username, password="correct horse 1", roles=roles,
                          display_name=display_name)
        session.commit()


def log_in(page, server, username: str, target: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server.http_url}{target}")
    page.fill("#username", username)
    page.fill("#password", "correct horse 1")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(re.escape(server.http_url + target)))


def test_the_desk_opens_for_a_registrar_and_shows_its_keys(guarded_server, steps):
    add_user(guarded_server, "zhangsan", ["registrar"], "张三")
    page = steps.page
    log_in(page, guarded_server, "zhangsan", "/desk")
    assert page.locator("label.search-label").inner_text().startswith(ZH["desk.search.label"])
    assert page.evaluate("document.activeElement.id") == "search"
    steps.shot("desk")
    page.keyboard.press("F1")
    assert page.locator("dialog#keys").is_visible()
    assert ZH["desk.key.F9"] in page.locator("dialog#keys").inner_text()
    steps.shot("keys")
    page.keyboard.press("Escape")
    assert not page.locator("dialog#keys").is_visible()


def test_a_role_without_the_desk_is_told_so(guarded_server, steps):
    add_user(guarded_server, "li", ["clinician"])
    page = steps.page
    log_in(page, guarded_server, "li", "/desk")
    assert page.locator("h1").inner_text() == ZH["error.forbidden"]
    steps.shot("denied")
