"""Attention in real Chromium (docs/protocol.md §11, ui/attention.js): unread and mention badges
for a room not on screen, the tab title's count, the "new messages" line and jump-to-unread, the
room marked read once it is looked at (on every tab of the user), the notify/mute menu, and
desktop notifications — asked for from a button, never on load, none for the room on screen.
At desktop and at phone width (375 px).

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_attention.py
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import (
    create_room,
    delivered,
    open_room,
    say,
    signup,
    unique,
    wait_joined,
)

pytestmark = [pytest.mark.browser]

# Records what the page does with the Notification API (Chromium headless shows none).
NOTIFICATION_STUB = """
window.__notes = []; window.__asked = 0;
class FakeNotification {
  constructor(title, options) { window.__notes.push({ title, body: options && options.body }); }
  static requestPermission() { window.__asked += 1; FakeNotification.permission = "granted"; return Promise.resolve("granted"); }
}
FakeNotification.permission = "default";
window.Notification = FakeNotification;
"""


def _link(page: Any, slug: str) -> Any:
    return page.locator(f'[data-testid="room-link"][data-slug="{slug}"]')


def _listed(page: Any, slug: str) -> None:
    page.wait_for_function("slug => !!window.parley.roomState(slug)", arg=slug)


def _two_users(parley: Any, new_page: Any, width: int) -> tuple[Any, Any, str, str]:
    """ada and bob; bob's room `slug`, which ada opened once (so it is in her list), then ada
    back in the lobby."""
    ada, bob = new_page(width=width), new_page(width=width)
    for page in (ada, bob):
        page.add_init_script(NOTIFICATION_STUB)
    ada_name, bob_name = unique("ada"), unique("bob")
    signup(ada, parley.url, ada_name)
    signup(bob, parley.url, bob_name)
    slug = unique("att").lower()
    if width < 600:
        bob.get_by_test_id("sidebar-toggle").click()
    create_room(bob, slug)
    open_room(ada, slug)
    ada.goto(f"{parley.url}/#/lobby")  # a fresh page: the room is in ada's list now
    ada.reload()
    wait_joined(ada, "lobby")
    _listed(ada, slug)
    wait_joined(ada, slug)
    return ada, bob, ada_name, slug


@pytest.mark.parametrize("width", [1280, 375])
def test_badges_title_divider_and_mark_read(parley: Any, new_page: Any, width: int) -> None:
    ada, bob, ada_name, slug = _two_users(parley, new_page, width)
    for text in ("first news", f"hey @{ada_name} look", "third news"):
        say(bob, text)
        expect(delivered(bob, text)).to_have_count(1)
    if width < 600:
        ada.get_by_test_id("sidebar-toggle").click()
    link = _link(ada, slug)
    expect(link.get_by_test_id("unread")).to_have_text("3")
    expect(link.get_by_test_id("mention-badge")).to_have_text("@1")
    expect(link).to_have_class(re.compile(r"room-link--unread"))
    expect(ada).to_have_title(re.compile(r"^\(3\) "))
    # A second tab of ada's shows the same counts (the server's list).
    tab = ada.context.new_page()
    tab.goto(ada.url)
    expect(_link(tab, slug).get_by_test_id("unread")).to_have_text("3")

    ada.bring_to_front()  # the tab took the focus; reading is done in a focused window
    link.click()
    wait_joined(ada, slug)
    expect(ada.get_by_test_id("new-messages")).to_have_count(1)
    # The line is right above the first unread message.
    first_unread = ada.locator('[data-testid="new-messages"] + [data-testid="message"] [data-testid="message-text"]')
    expect(first_unread).to_have_text("first news")
    # On screen in a focused window: read. The badges go, here and on the other tab.
    expect(link.get_by_test_id("unread")).to_have_count(0)
    expect(ada).not_to_have_title(re.compile(r"^\("))
    expect(_link(tab, slug).get_by_test_id("unread")).to_have_count(0)
    assert ada.errors == [] and bob.errors == []


def test_jump_to_unread_pages_in_what_was_not_loaded(parley: Any, new_page: Any) -> None:
    ada, bob, _, slug = _two_users(parley, new_page, 1280)
    for i in range(70):  # more than one page: the first unread is not in the first page loaded
        bob.evaluate("([slug, i]) => window.parley.send(slug, 'bulk ' + i)", [slug, i])
    bob.wait_for_function("slug => window.parley.room(slug).pending.length === 0", arg=slug, timeout=60_000)
    expect(_link(ada, slug).get_by_test_id("unread")).to_have_text("70", timeout=30_000)
    _link(ada, slug).click()
    wait_joined(ada, slug)
    jump = ada.get_by_test_id("jump-unread")
    expect(jump).to_be_visible()
    jump.click()
    expect(ada.get_by_test_id("new-messages")).to_be_in_viewport()
    expect(ada.locator('[data-testid="new-messages"] + [data-testid="message"] [data-testid="message-text"]')).to_have_text("bulk 0")
    assert ada.errors == []


def test_notify_menu_mute_and_desktop_notifications(parley: Any, new_page: Any) -> None:
    ada, bob, ada_name, slug = _two_users(parley, new_page, 1280)
    # Never asked on load; a visible control asks.
    assert ada.evaluate("window.__asked") == 0
    enable = ada.get_by_test_id("notifications-enable")
    expect(enable).to_be_visible()
    enable.click()
    expect(enable).to_have_count(0)
    assert ada.evaluate("window.__asked") == 1

    say(bob, "no mention here")
    say(bob, f"@{ada_name} ping")
    ada.wait_for_function("() => window.__notes.length >= 1")
    ada.wait_for_timeout(500)
    notes = ada.evaluate("window.__notes")
    assert [n["body"] for n in notes] == [f"@{ada_name} ping"]  # "mentions", a room's default
    assert notes[0]["title"].endswith(f"in #{slug}")

    # In the room on screen, focused: no desktop notification.
    ada.bring_to_front()
    open_room(ada, slug)
    say(bob, f"@{ada_name} you are here")
    expect(delivered(ada, f"@{ada_name} you are here")).to_have_count(1)
    ada.wait_for_timeout(500)
    assert len(ada.evaluate("window.__notes")) == 1

    # The menu: all messages, then muted. Both saved on the server (a reload shows them).
    ada.get_by_test_id("room-notify").click()
    ada.get_by_test_id("notify-all").check()
    ada.wait_for_function("slug => window.parley.roomState(slug).notify === 'all'", arg=slug)
    ada.get_by_test_id("notify-mute").check()
    ada.wait_for_function("slug => window.parley.roomState(slug).muted", arg=slug)
    open_room(ada, "lobby")
    say(bob, f"@{ada_name} muted now")
    expect(_link(ada, slug).get_by_test_id("unread")).to_have_class(re.compile(r"badge--quiet"))
    expect(ada).not_to_have_title(re.compile(r"^\("))  # muted rooms leave the title alone
    assert len(ada.evaluate("window.__notes")) == 1
    ada.reload()
    _listed(ada, slug)
    open_room(ada, slug)
    ada.get_by_test_id("room-notify").click()
    expect(ada.get_by_test_id("notify-mute")).to_be_checked()
    expect(ada.get_by_test_id("notify-all")).to_be_checked()
    assert ada.errors == []
