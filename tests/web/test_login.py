"""Logging in and out in a real browser, as a registrar does at the start of a shift: the form
in Chinese, a wrong password told plainly, the keyboard alone (Tab, Enter), the home page
with the user's roles, English on request, logging out."""

from __future__ import annotations

from sqlmodel import Session

from pacs.auth import accounts
from pacs.web.i18n import catalogue


def test_a_registrar_logs_in_and_out_from_the_keyboard(guarded_server, steps):
    with Session(guarded_server.db.engine) as session:
        accounts.add_user(session, username="zhangsan", password="correct horse 1", roles=["registrar"],
                          display_name="张三")
        session.commit()
    zh, en = catalogue("zh-CN"), catalogue("en")
    page = steps.page
    page.goto(f"{guarded_server.http_url}/")  # not logged in: the login form, and back here afterwards
    assert page.url.startswith(f"{guarded_server.http_url}/login?next=/")
    assert page.locator("h1").inner_text() == zh["login.title"]
    assert page.evaluate("document.activeElement.id") == "username"  # typing can start at once
    steps.shot("login-form")

    page.keyboard.type("zhangsan")
    page.keyboard.press("Tab")
    page.keyboard.type("wrong password")
    page.keyboard.press("Enter")
    page.wait_for_selector(".message.error")
    assert page.locator(".message.error").inner_text() == zh["login.failed"]
    assert page.input_value("#username") == "zhangsan"  # kept; the password field has the focus
    assert page.evaluate("document.activeElement.id") == "password"
    steps.shot("wrong-password")

    page.keyboard.type("correct horse 1")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{guarded_server.http_url}/")
    assert zh["home.signed_in_as"].format(name="张三") in page.locator("header").inner_text()
    assert zh["role.registrar"] in page.locator("main").inner_text()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["pacs_session"]["httpOnly"] and cookies["pacs_session"]["sameSite"] == "Lax"
    steps.shot("home")

    page.click("a.language")  # English on request, remembered
    assert page.locator("h1").inner_text() == en["home.title"]
    page.goto(f"{guarded_server.http_url}/")
    assert page.locator("h1").inner_text() == en["home.title"]
    steps.shot("home-english")

    page.click("button.link")  # log out
    page.wait_for_url("**/login?reason=logout")
    assert page.locator(".message").inner_text() == en["logout.done"]
    assert "pacs_session" not in {c["name"] for c in page.context.cookies()}
    steps.shot("logged-out")
    page.goto(f"{guarded_server.http_url}/api/orders")
    assert "401" in page.content() or "log in" in page.content()


def test_the_catalogues_hold_the_same_keys():
    assert set(catalogue("zh-CN")) == set(catalogue("en"))
