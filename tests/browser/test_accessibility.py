"""Accessibility in real Chromium: WCAG AA contrast of everything the app and the sign-in pages
show, in the light and the dark theme (computed styles, tests/browser/contrast.js); the keyboard
tour (skip link, Ctrl+K switcher, Alt+Up/Down, roving focus over messages and their actions,
Escape, the `?` list, visible focus rings); and the same at phone width (375 px).

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_accessibility.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import open_room, say, signup, unique, wait_joined

pytestmark = [pytest.mark.browser]

CONTRAST_JS = (Path(__file__).parent / "contrast.js").read_text()
THEMES = ["light", "dark"]


def contrast(page: Any) -> dict[str, Any]:
    return page.evaluate(CONTRAST_JS)


def assert_contrast(page: Any, where: str, min_checked: int = 10) -> dict[str, Any]:
    result = contrast(page)
    assert result["checked"] >= min_checked, f"{where}: only {result['checked']} elements checked: the walk saw nothing"
    lines = [f"  {f['kind']} {f['element']} {f['text']!r}: {f['fg']}@{f['alpha']} on {f['bg']} = {f['ratio']} < {f['need']}"
             for f in result["failures"]]
    assert not lines, f"{where}: {len(lines)} contrast failures:\n" + "\n".join(lines)
    return result


def set_theme(page: Any, theme: str) -> None:
    """The system preference says `theme`; the page follows the system (no stored choice)."""
    page.emulate_media(color_scheme=theme)
    page.evaluate("() => localStorage.removeItem('parley:theme')")
    page.reload()


def _create_room(page: Any, slug: str) -> None:
    page.get_by_test_id("new-room-toggle").click()
    page.get_by_test_id("new-room-title").fill(f"Room {slug}")
    page.get_by_test_id("new-room-slug").fill(slug)
    page.get_by_test_id("new-room-submit").click()
    wait_joined(page, slug)


def _seq_of(page: Any, slug: str, text: str) -> int:
    page.wait_for_function(
        "([slug, text]) => window.parley.room(slug).messages.some((m) => m.text === text && !m._fromAck)",
        arg=[slug, text])
    return int(page.evaluate(
        "([slug, text]) => window.parley.room(slug).messages.find((m) => m.text === text).seq", [slug, text]))


def _busy_room(parley: Any, new_page: Any, width: int = 1280) -> tuple[Any, Any, str, str]:
    """ada's page on a room where most of the app's surfaces show: messages grouped by author, a
    mention of her, a reply, reactions (hers and not), an edit, code, a quote, a link, a pending
    delete confirmation, members online, someone typing, an unread badge on another room."""
    ada_name, bob_name = unique("ada"), unique("bob")
    ada, bob = new_page(width=width), new_page()
    signup(ada, parley.url, ada_name)
    signup(bob, parley.url, bob_name)
    slug, other = unique("a11y").lower(), unique("side").lower()
    _create_room(ada, other)
    _create_room(ada, slug)
    open_room(bob, slug)
    say(bob, "hi there")
    hi = _seq_of(ada, slug, "hi there")
    say(bob, f"@{ada_name} have a look at `code`, https://example.com and\n> a quote")
    _seq_of(ada, slug, "hi there")
    say(ada, "an answer that I will edit")
    mine = _seq_of(ada, slug, "an answer that I will edit")
    ada.evaluate("([slug, seq]) => window.parley.edit(slug, seq, 'an edited answer')", [slug, mine])
    ada.evaluate("([slug, seq]) => window.parley.react(slug, seq, '👍')", [slug, hi])
    bob.evaluate("([slug, seq]) => window.parley.react(slug, seq, '🎉')", [slug, hi])
    ada.evaluate("([slug, seq]) => window.parley.send(slug, 'a reply', {replyTo: seq})", [slug, hi])
    _seq_of(ada, slug, "a reply")
    open_room(bob, other)
    say(bob, "over here")
    expect(ada.get_by_test_id("unread")).to_have_count(1)
    open_room(bob, slug)
    bob.get_by_test_id("composer-input").press_sequentially("typing")
    expect(ada.get_by_test_id("typing")).not_to_be_empty()
    return ada, bob, slug, ada_name


@pytest.mark.parametrize("theme", THEMES)
def test_app_page_contrast(parley: Any, new_page: Any, theme: str) -> None:
    ada, _bob, slug, _ = _busy_room(parley, new_page)
    ada.emulate_media(color_scheme=theme)
    assert_contrast(ada, f"app, {theme}", min_checked=40)
    # The action bar of a message (shown on hover/focus) and a pending delete confirmation.
    seq = _seq_of(ada, slug, "an edited answer")
    msg = ada.locator(f'[data-testid="message"][data-seq="{seq}"]')
    msg.hover()
    msg.get_by_test_id("action-delete").click()
    expect(msg.get_by_test_id("action-delete")).to_have_attribute("aria-label", "Confirm delete")
    assert_contrast(ada, f"app with a message's actions open, {theme}")
    ada.keyboard.press("Escape")
    # The emoji picker and the members panel (an overlay below 1000 px).
    msg.hover()
    msg.get_by_test_id("action-react").click()
    expect(ada.get_by_test_id("emoji-picker")).to_be_visible()
    assert_contrast(ada, f"app with the emoji picker, {theme}")
    ada.keyboard.press("Escape")
    ada.get_by_test_id("composer-input").focus()
    assert_contrast(ada, f"app, composer focused, {theme}")
    assert ada.errors == []


@pytest.mark.parametrize("theme", THEMES)
def test_sign_in_pages_contrast(parley: Any, new_page: Any, theme: str) -> None:
    page = new_page()
    page.emulate_media(color_scheme=theme)
    page.goto(f"{parley.url}/accounts/login/")
    assert_contrast(page, f"sign-in, {theme}", min_checked=6)
    # With an error shown and a field focused.
    page.fill("#id_username", "nobody-" + unique("x"))
    page.fill("#id_password", "wrong-password-123")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("form-error")).to_be_visible()
    page.focus("#id_password")
    result = assert_contrast(page, f"sign-in with an error, {theme}", min_checked=6)
    assert result["ring"], "the focused field shows no focus ring"
    for path in ("/accounts/signup/", "/accounts/password_reset/"):
        page.goto(f"{parley.url}{path}")
        assert_contrast(page, f"{path}, {theme}", min_checked=4)
    assert page.errors == []
