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

from tests.browser.helpers import create_room, open_room, say, seq_of, signup, unique, wait_joined

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


def _busy_room(parley: Any, new_page: Any, width: int = 1280) -> tuple[Any, Any, str, str]:
    """ada's page on a room where most of the app's surfaces show: messages grouped by author, a
    mention of her, a reply, reactions (hers and not), an edit, code, a quote, a link, a pending
    delete confirmation, members online, someone typing, an unread badge on another room."""
    ada_name, bob_name = unique("ada"), unique("bob")
    ada, bob = new_page(), new_page()
    signup(ada, parley.url, ada_name)
    signup(bob, parley.url, bob_name)
    slug, other = unique("a11y").lower(), unique("side").lower()
    create_room(ada, other)
    create_room(ada, slug)
    open_room(bob, slug)
    say(bob, "hi there")
    hi = seq_of(ada, slug, "hi there")
    say(bob, f"@{ada_name} have a look at `code`, https://example.com and\n> a quote")
    seq_of(ada, slug, "hi there")
    say(ada, "an answer that I will edit")
    mine = seq_of(ada, slug, "an answer that I will edit")
    ada.evaluate("([slug, seq]) => window.parley.edit(slug, seq, 'an edited answer')", [slug, mine])
    ada.evaluate("([slug, seq]) => window.parley.react(slug, seq, '👍')", [slug, hi])
    bob.evaluate("([slug, seq]) => window.parley.react(slug, seq, '🎉')", [slug, hi])
    ada.evaluate("([slug, seq]) => window.parley.send(slug, 'a reply', {replyTo: seq})", [slug, hi])
    seq_of(ada, slug, "a reply")
    open_room(bob, other)
    say(bob, "over here")
    expect(ada.get_by_test_id("unread")).to_have_count(1)
    open_room(bob, slug)
    # The server relays one `typing` per socket and room a second (protocol §3): one that lands
    # just inside it (bob's last keystrokes in this room, delayed) is dropped, and his client
    # then waits 2 s before announcing again. Keep typing, as a person would.
    for _ in range(4):
        bob.get_by_test_id("composer-input").press_sequentially("typing")
        if ada.get_by_test_id("typing").evaluate("el => el.textContent !== ''"):
            break
        ada.wait_for_timeout(1000)
    expect(ada.get_by_test_id("typing")).not_to_be_empty()
    if width != 1280:
        ada.set_viewport_size({"width": width, "height": 740})
    return ada, bob, slug, ada_name


@pytest.mark.parametrize("theme", THEMES)
def test_app_page_contrast(parley: Any, new_page: Any, theme: str) -> None:
    ada, _bob, slug, _ = _busy_room(parley, new_page)
    ada.emulate_media(color_scheme=theme)
    assert_contrast(ada, f"app, {theme}", min_checked=40)
    # The action bar of a message (shown on hover/focus) and a pending delete confirmation.
    seq = seq_of(ada, slug, "an edited answer")
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


def _focused(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => {
        const a = document.activeElement;
        const msg = a && a.closest && a.closest('[data-testid="message"]');
        return {testid: a && a.dataset ? a.dataset.testid || null : null, tag: a ? a.tagName : null,
                seq: msg ? msg.dataset.seq || null : null, isMessage: !!a && a === msg};
    }""")


def _ring(page: Any, where: str) -> None:
    """The focused element shows a focus ring of at least 3:1, and nothing on screen fails."""
    result = assert_contrast(page, where, min_checked=5)
    assert result["ring"], f"{where}: no visible focus ring on {result['focused']}"


@pytest.mark.parametrize("theme", THEMES)
def test_keyboard_tour(parley: Any, new_page: Any, theme: str) -> None:
    ada, _bob, slug, _ada_name = _busy_room(parley, new_page)
    ada.emulate_media(color_scheme=theme)
    rooms = ada.evaluate("() => window.parleyShortcuts.rooms().map((r) => r.slug)")
    assert slug in rooms and "lobby" in rooms

    # The first Tab reaches the skip link, visible when focused; Enter lands in the composer.
    # From the top of the page (the app puts the focus in the composer on load).
    ada.evaluate("() => { document.body.tabIndex = -1; document.body.focus(); document.body.removeAttribute('tabindex'); }")
    ada.keyboard.press("Tab")
    assert _focused(ada)["testid"] == "skip-composer"
    expect(ada.get_by_test_id("skip-composer")).to_be_in_viewport()
    _ring(ada, f"skip link, {theme}")
    ada.keyboard.press("Enter")
    assert _focused(ada)["testid"] == "composer-input"
    assert ada.evaluate("() => location.hash") == f"#/{slug}", "a skip link must not change the route"
    _ring(ada, f"composer, {theme}")

    # `?` in the composer is a character; outside it, the shortcut list.
    ada.keyboard.type("?")
    expect(ada.get_by_test_id("composer-input")).to_have_value("?")
    expect(ada.get_by_test_id("shortcuts")).to_be_hidden()
    ada.get_by_test_id("composer-input").fill("")
    ada.get_by_test_id("skip-messages").focus()
    ada.keyboard.press("?")
    expect(ada.get_by_test_id("shortcuts")).to_be_visible()
    expect(ada.get_by_test_id("shortcuts")).to_contain_text("Ctrl K")
    assert _focused(ada)["testid"] == "shortcuts-close"
    _ring(ada, f"shortcut list, {theme}")
    ada.keyboard.press("Escape")
    expect(ada.get_by_test_id("shortcuts")).to_be_hidden()

    # Ctrl+K: type to filter, Enter opens; Escape closes and gives the focus back.
    ada.get_by_test_id("composer-input").focus()
    ada.keyboard.press("Control+k")
    expect(ada.get_by_test_id("switcher")).to_be_visible()
    assert _focused(ada)["testid"] == "switcher-input"
    _ring(ada, f"switcher, {theme}")
    ada.keyboard.type("lob")
    expect(ada.get_by_test_id("switcher-option")).to_have_count(1)
    ada.keyboard.press("Enter")
    expect(ada.get_by_test_id("switcher")).to_be_hidden()
    wait_joined(ada, "lobby")
    expect(ada.get_by_test_id("room-title")).to_have_text("Lobby")
    assert _focused(ada)["testid"] == "composer-input"
    ada.keyboard.press("Control+k")
    ada.keyboard.type("no-such-room-at-all")
    expect(ada.get_by_test_id("switcher-empty")).to_be_visible()
    ada.keyboard.press("Escape")
    expect(ada.get_by_test_id("switcher")).to_be_hidden()
    assert _focused(ada)["testid"] == "composer-input"

    # Alt+Down / Alt+Up: the next / previous room of the sidebar, wrapping around.
    at = rooms.index("lobby")
    ada.keyboard.press("Alt+ArrowDown")
    wait_joined(ada, rooms[(at + 1) % len(rooms)])
    ada.keyboard.press("Alt+ArrowUp")
    wait_joined(ada, "lobby")
    ada.keyboard.press("Control+k")
    ada.keyboard.type(slug)
    ada.keyboard.press("Enter")
    wait_joined(ada, slug)

    # The timeline: one tab stop; arrows between messages; Enter into a message's actions.
    expect(ada.locator('[data-testid="message"]').filter(has_text="a reply")).to_have_count(1)
    ada.get_by_test_id("skip-messages").focus()
    ada.keyboard.press("Enter")
    newest = _focused(ada)
    assert newest["isMessage"], newest
    assert ada.locator('[data-testid="message"][tabindex="0"]').count() == 1
    _ring(ada, f"a message, {theme}")
    ada.keyboard.press("ArrowUp")
    up = _focused(ada)
    assert up["isMessage"] and int(up["seq"]) < int(newest["seq"])
    ada.keyboard.press("End")
    assert _focused(ada)["seq"] == newest["seq"]
    ada.keyboard.press("Home")
    first_seq = _focused(ada)["seq"]
    assert int(first_seq) < int(up["seq"])
    # Only the focused message is in the tab order, its buttons with it.
    assert ada.locator('[data-testid="message"][tabindex="0"]').evaluate_all("els => els.map((e) => e.dataset.seq)") == [first_seq]

    # My edited message: Enter, then along the toolbar to Delete; the confirm keeps the focus.
    mine = seq_of(ada, slug, "an edited answer")
    ada.locator(f'[data-testid="message"][data-seq="{mine}"]').focus()
    ada.keyboard.press("Enter")
    assert _focused(ada)["testid"] == "quick-react"
    expect(ada.locator(f'[data-testid="message"][data-seq="{mine}"] [data-testid="message-actions"]')).to_be_visible()
    _ring(ada, f"a message's action, {theme}")
    for _ in range(10):
        if _focused(ada)["testid"] == "action-delete":
            break
        ada.keyboard.press("ArrowRight")
    assert _focused(ada)["testid"] == "action-delete"
    ada.keyboard.press("Enter")
    delete = ada.locator(f'[data-testid="message"][data-seq="{mine}"] [data-testid="action-delete"]')
    expect(delete).to_have_attribute("aria-label", "Confirm delete")
    assert _focused(ada)["testid"] == "action-delete", "the re-render lost the focus"
    # Escape backs out to the message and drops the confirmation.
    ada.keyboard.press("Escape")
    expect(delete).to_have_attribute("aria-label", "Delete")
    assert _focused(ada) == {"testid": "message", "tag": "DIV", "seq": str(mine), "isMessage": True}

    # The emoji picker from the keyboard; Escape closes it and returns to its button.
    ada.keyboard.press("Enter")
    for _ in range(10):
        if _focused(ada)["testid"] == "action-react":
            break
        ada.keyboard.press("ArrowRight")
    ada.keyboard.press("Enter")
    expect(ada.get_by_test_id("emoji-picker")).to_be_visible()
    assert _focused(ada)["testid"] == "emoji-option"
    _ring(ada, f"emoji picker, {theme}")
    ada.keyboard.press("Escape")
    expect(ada.get_by_test_id("emoji-picker")).to_be_hidden()
    assert _focused(ada)["testid"] == "action-react"

    # Reply from the keyboard: the composer gets the focus and the reply bar shows.
    ada.keyboard.press("Escape")
    ada.keyboard.press("ArrowUp")
    ada.keyboard.press("Enter")
    for _ in range(10):
        if _focused(ada)["testid"] == "action-reply":
            break
        ada.keyboard.press("ArrowRight")
    ada.keyboard.press("Enter")
    expect(ada.get_by_test_id("reply-bar")).to_be_visible()
    assert _focused(ada)["testid"] == "composer-input"
    ada.keyboard.press("Escape")
    expect(ada.get_by_test_id("reply-bar")).to_be_hidden()

    # The theme switch and the shortcut button are reachable and ringed too.
    ada.get_by_test_id("theme-system").focus()
    ada.keyboard.press("ArrowRight")  # radios: arrows move the choice
    _ring(ada, f"theme switch, {theme}")
    assert ada.evaluate("() => document.documentElement.dataset.theme") in ("light", "dark")
    assert ada.errors == []


def test_escape_closes_every_panel_at_phone_width(parley: Any, new_page: Any) -> None:
    ada = new_page(width=375, height=740)
    signup(ada, parley.url, unique("ada"))
    wait_joined(ada, "lobby")
    # The sidebar drawer.
    ada.get_by_test_id("sidebar-toggle").click()
    expect(ada.get_by_test_id("sidebar")).to_be_in_viewport()
    ada.get_by_test_id("new-room-toggle").click()
    expect(ada.get_by_test_id("new-room-form")).to_be_visible()
    ada.keyboard.press("Escape")
    expect(ada.get_by_test_id("backdrop")).to_be_hidden()
    expect(ada.get_by_test_id("sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    expect(ada.get_by_test_id("new-room-form")).to_be_hidden()
    # The members overlay.
    ada.get_by_test_id("members-toggle").click()
    expect(ada.get_by_test_id("members")).to_be_visible()
    ada.keyboard.press("Escape")
    expect(ada.get_by_test_id("members")).to_be_hidden()
    # Another module's panel hears Escape through the `parley:escape` event.
    ada.evaluate("() => { window.heard = 0; document.addEventListener('parley:escape', () => { window.heard += 1; }); }")
    ada.keyboard.press("Escape")
    assert ada.evaluate("() => window.heard") == 1
    # The switcher fits the phone's width.
    ada.keyboard.press("Control+k")
    box = ada.locator(".switcher").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    ada.keyboard.press("Escape")
    expect(ada.get_by_test_id("switcher")).to_be_hidden()
    assert ada.errors == []


@pytest.mark.parametrize("theme", THEMES)
def test_phone_width_contrast(parley: Any, new_page: Any, theme: str) -> None:
    ada, _bob, _slug, _ = _busy_room(parley, new_page, width=375)
    ada.emulate_media(color_scheme=theme)
    assert_contrast(ada, f"phone, {theme}", min_checked=25)
    ada.get_by_test_id("sidebar-toggle").click()
    expect(ada.get_by_test_id("sidebar")).to_be_in_viewport()
    assert_contrast(ada, f"phone, drawer open, {theme}", min_checked=10)
    ada.keyboard.press("Escape")
    ada.get_by_test_id("members-toggle").click()
    assert_contrast(ada, f"phone, members open, {theme}", min_checked=10)
    assert ada.errors == []
