"""Page helpers shared by the browser tests and make_screenshot.py."""

from __future__ import annotations

import uuid
from typing import Any

from playwright.sync_api import expect

PASSWORD = "correct-horse-battery-9"


def unique(name: str) -> str:
    return f"{name}_{uuid.uuid4().hex[:6]}"


def signup(page: Any, base_url: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/accounts/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password1", password)
    page.fill("#id_password2", password)
    page.get_by_test_id("signup-submit").click()
    page.wait_for_url(f"{base_url}/**")
    wait_connected(page)


def login(page: Any, base_url: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.get_by_test_id("login-submit").click()
    wait_connected(page)


def wait_connected(page: Any, timeout: float = 20_000) -> None:
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected", timeout=timeout)


def wait_joined(page: Any, slug: str) -> None:
    page.wait_for_function(
        "slug => window.parley && window.parley.room(slug) && window.parley.room(slug).live", arg=slug)


def open_room(page: Any, slug: str) -> None:
    page.evaluate("slug => { location.hash = '#/' + slug; }", slug)
    wait_joined(page, slug)


def create_room(page: Any, slug: str, title: str | None = None, private: bool = False) -> None:
    """Create a room from the sidebar's "New room" form and wait until the page has joined it."""
    page.get_by_test_id("new-room-toggle").click()
    page.get_by_test_id("new-room-title").fill(title or f"Room {slug}")
    page.get_by_test_id("new-room-slug").fill(slug)
    if private:
        page.get_by_test_id("new-room-private").check()
    page.get_by_test_id("new-room-submit").click()
    # The create's answer is in (the form is reset and enabled again) once the page shows the
    # room: its room_added may have joined it in the background before that (ui/attention.js).
    page.wait_for_function("slug => location.hash === '#/' + slug", arg=slug)
    wait_joined(page, slug)


def seq_of(page: Any, slug: str, text: str) -> int:
    """The seq of the delivered message with this text, once the page has it."""
    page.wait_for_function(
        "([slug, text]) => window.parley.room(slug).messages.some((m) => m.text === text && !m._fromAck)",
        arg=[slug, text])
    return int(page.evaluate(
        "([slug, text]) => window.parley.room(slug).messages.find((m) => m.text === text).seq", [slug, text]))


def say(page: Any, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")


def delivered(page: Any, text: str) -> Any:
    """Locator: delivered (not pending) messages whose text is exactly `text`."""
    return page.locator('[data-testid="message"]:not([data-pending]) [data-testid="message-text"]').filter(
        has_text=_exact(text))


def pending(page: Any, text: str | None = None) -> Any:
    loc = page.locator('[data-testid="message"][data-pending] [data-testid="message-text"]')
    return loc if text is None else loc.filter(has_text=_exact(text))


def all_with_text(page: Any, text: str) -> Any:
    return page.locator('[data-testid="message-text"]').filter(has_text=_exact(text))


def _exact(text: str) -> Any:
    import re

    return re.compile(r"^\s*" + re.escape(text) + r"\s*$")
