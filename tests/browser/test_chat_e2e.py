"""End-to-end: real server subprocess, Debian's Chromium, two users talking (docs/protocol.md).

Run: .venv/bin/python -m pytest tests/browser -p no:cacheprovider
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import (
    all_with_text,
    delivered,
    open_room,
    pending,
    say,
    signup,
    unique,
    wait_connected,
    wait_joined,
)

pytestmark = [pytest.mark.browser]


def _two_users(parley: Any, new_page: Any) -> tuple[Any, Any, str, str]:
    ada, bob = unique("ada"), unique("bob")
    p1, p2 = new_page(), new_page()
    signup(p1, parley.url, ada)
    signup(p2, parley.url, bob)
    return p1, p2, ada, bob


def _create_room(page: Any, slug: str, title: str, private: bool = False) -> None:
    page.get_by_test_id("new-room-toggle").click()
    page.get_by_test_id("new-room-title").fill(title)
    page.get_by_test_id("new-room-slug").fill(slug)
    if private:
        page.get_by_test_id("new-room-private").check()
    page.get_by_test_id("new-room-submit").click()
    expect(page.locator(f'[data-testid="room-link"][data-slug="{slug}"]')).to_have_count(1)
    wait_joined(page, slug)


def test_two_users_chat_and_history_survives_reload(parley: Any, new_page: Any) -> None:
    p1, p2, ada, bob = _two_users(parley, new_page)
    for p in (p1, p2):
        wait_joined(p, "lobby")
        expect(p.get_by_test_id("room-title")).to_have_text("Lobby")
        expect(p.get_by_test_id("me")).to_have_text(ada if p is p1 else bob)

    # Presence: each sees the other in the member list.
    expect(p1.locator(f'[data-testid="member"][data-username="{bob}"]')).to_have_count(1)
    expect(p2.locator(f'[data-testid="member"][data-username="{ada}"]')).to_have_count(1)

    hello = f"hello from {ada}"
    say(p1, hello)
    expect(delivered(p2, hello)).to_have_count(1)
    expect(delivered(p1, hello)).to_have_count(1)
    # The other side shows who wrote it.
    msg = p2.locator('[data-testid="message"]').filter(
        has=p2.get_by_test_id("message-text").filter(has_text=re.compile(f"^{re.escape(hello)}$")))
    expect(msg).to_have_attribute("data-author", ada)

    # Typing indicator: bob types, ada sees it; then bob sends.
    p2.get_by_test_id("composer-input").press_sequentially("hi a")
    expect(p1.get_by_test_id("typing")).to_have_text(f"{bob} is typing…")
    reply = f"hi {ada}, {bob} here\nsecond line"
    p2.get_by_test_id("composer-input").fill("")
    p2.get_by_test_id("composer-input").type(f"hi {ada}, {bob} here")
    p2.get_by_test_id("composer-input").press("Shift+Enter")  # newline, not send
    p2.get_by_test_id("composer-input").type("second line")
    expect(pending(p2)).to_have_count(0)
    p2.get_by_test_id("composer-input").press("Enter")
    expect(delivered(p1, reply)).to_have_count(1)
    expect(delivered(p2, reply)).to_have_count(1)
    expect(p2.get_by_test_id("composer-input")).to_have_value("")

    # Ordering is the same on both pages.
    texts1 = p1.locator('[data-testid="message"]:not([data-pending]) [data-testid="message-text"]').all_inner_texts()
    texts2 = p2.locator('[data-testid="message"]:not([data-pending]) [data-testid="message-text"]').all_inner_texts()
    assert texts1.index(hello) < texts1.index(reply)
    assert texts1 == texts2

    # Reload: history comes back from the server.
    p2.reload()
    wait_connected(p2)
    wait_joined(p2, "lobby")
    expect(delivered(p2, hello)).to_have_count(1)
    expect(delivered(p2, reply)).to_have_count(1)
    assert p1.errors == [] and p2.errors == []


@pytest.mark.slow
def test_messages_typed_while_server_restarts_go_through_once(parley: Any, new_page: Any) -> None:
    p1, p2, _ada, _bob = _two_users(parley, new_page)
    slug = unique("ops").lower()
    _create_room(p1, slug, "Ops war room")
    open_room(p2, slug)
    say(p1, "before the restart")
    expect(delivered(p2, "before the restart")).to_have_count(1)

    parley.stop()
    for p in (p1, p2):
        expect(p.get_by_test_id("conn-state")).not_to_have_attribute("data-state", "connected", timeout=10_000)

    during = [f"typed during the outage {i}" for i in range(3)]
    for text in during:
        say(p1, text)
    bob_during = "bob also typed during the outage"
    say(p2, bob_during)
    # Shown at once, styled as pending, not delivered yet.
    for text in during:
        expect(pending(p1, text)).to_have_count(1)
        expect(delivered(p1, text)).to_have_count(0)
    expect(pending(p2, bob_during)).to_have_count(1)
    expect(p1.locator('[data-testid="message"][data-pending]').first).to_have_class(r"msg msg--pending")
    badge = p1.get_by_test_id("conn-state")
    expect(badge).to_have_attribute("data-state", re.compile(r"^(reconnecting|connecting)$"))

    time.sleep(1.0)  # a few refused attempts while the server is down
    parley.start()
    wait_connected(p1)
    wait_connected(p2)

    for text in [*during, bob_during]:
        for p in (p1, p2):
            expect(delivered(p, text)).to_have_count(1, timeout=20_000)
    expect(pending(p1)).to_have_count(0)
    expect(pending(p2)).to_have_count(0)

    # Give stray duplicates (a resend racing a resume) time to show up, then count DOM nodes.
    time.sleep(1.5)
    for text in ["before the restart", *during, bob_during]:
        for p in (p1, p2):
            assert all_with_text(p, text).count() == 1, (text, p)
    # Same order everywhere, in the order ada typed them.
    texts = p2.locator('[data-testid="message-text"]').all_inner_texts()
    assert [t for t in texts if t in during] == during
    assert texts == p1.locator('[data-testid="message-text"]').all_inner_texts()

    # A reload agrees with what the live pages show.
    p2.reload()
    wait_joined(p2, slug)
    for text in ["before the restart", *during, bob_during]:
        expect(delivered(p2, text)).to_have_count(1)
    assert p1.errors == [] and p2.errors == []


PAYLOADS = [
    "<img src=x onerror=window.__pwned=1>",
    "<script>window.__pwned=1</script>",
    '"><svg onload=window.__pwned=1>',
    "<a href=\"javascript:window.__pwned=1\">click</a>",
    "&lt;b&gt;not bold&lt;/b&gt; & <b>not bold either</b>",
]


def test_user_text_is_rendered_as_text_never_markup(parley: Any, new_page: Any) -> None:
    p1, p2, _ada, _bob = _two_users(parley, new_page)
    for p in (p1, p2):
        wait_joined(p, "lobby")
    for payload in PAYLOADS:
        say(p1, payload)
    for payload in PAYLOADS:
        expect(delivered(p2, payload)).to_have_count(1)
        expect(delivered(p1, payload)).to_have_count(1)
    # A room title with markup, created by ada, shows up literally in bob's sidebar.
    evil_title = "<img src=x onerror=window.__pwned=1> Evil"
    _create_room(p1, unique("evil").lower(), evil_title)
    p2.reload()
    wait_connected(p2)
    expect(p2.get_by_test_id("room-list")).to_contain_text(evil_title)
    expect(p1.get_by_test_id("room-title")).to_have_text(evil_title)

    for p in (p1, p2):
        assert p.evaluate("typeof window.__pwned") == "undefined"
        assert p.locator('[data-testid="messages"] img, [data-testid="messages"] script, '
                         '[data-testid="messages"] svg[onload], [data-testid="messages"] a, '
                         '[data-testid="messages"] b, [data-testid="room-list"] img').count() == 0
    texts = p2.locator('[data-testid="message-text"]').all_text_contents()
    for payload in PAYLOADS:
        assert payload in texts
    assert p1.errors == [] and p2.errors == []


def test_phone_width_sidebar_collapses_behind_a_toggle(parley: Any, new_page: Any) -> None:
    page = new_page(width=375, height=740)
    signup(page, parley.url, unique("cleo"))
    wait_joined(page, "lobby")
    sidebar = page.get_by_test_id("sidebar")
    toggle = page.get_by_test_id("sidebar-toggle")
    expect(toggle).to_be_visible()
    expect(sidebar).not_to_be_in_viewport()
    # A long title and a long unbroken word must not widen the page.
    toggle.click()
    expect(sidebar).to_be_in_viewport()
    _create_room(page, unique("plan").lower(), "Quarterly planning and roadmap review for the platform team")
    expect(sidebar).not_to_be_in_viewport()  # choosing a room closes the menu
    say(page, "x" * 300)
    expect(delivered(page, "x" * 300)).to_have_count(1)
    # Nothing overflows the 375 px viewport horizontally.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    for testid in ("composer", "room-title", "conn-state", "members-toggle", "timeline"):
        box = page.get_by_test_id(testid).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, (testid, box)
    # Back to the lobby through the toggle.
    toggle.click()
    expect(sidebar).to_be_in_viewport()
    expect(page.get_by_test_id("room-list")).to_be_visible()
    page.locator('[data-testid="room-link"][data-slug="lobby"]').click()
    expect(sidebar).not_to_be_in_viewport()
    say(page, "sent from a phone")
    expect(delivered(page, "sent from a phone")).to_have_count(1)
    assert page.errors == []


def test_composer_counter_and_limit(parley: Any, new_page: Any) -> None:
    page = new_page()
    signup(page, parley.url, unique("dora"))
    wait_joined(page, "lobby")
    box = page.get_by_test_id("composer-input")
    expect(page.get_by_test_id("send")).to_be_disabled()
    box.fill("x" * 4001)
    expect(page.get_by_test_id("char-count")).to_have_text("4001 / 4000")
    expect(page.get_by_test_id("send")).to_be_disabled()
    box.press("Enter")
    expect(pending(page)).to_have_count(0)
    box.fill("y" * 4000)
    expect(page.get_by_test_id("send")).to_be_enabled()
    page.get_by_test_id("send").click()
    expect(delivered(page, "y" * 4000)).to_have_count(1)
    # Characters are code points, as the server counts them: 4000 emoji are within the limit.
    box.fill("\U0001F680" * 4000)
    expect(page.get_by_test_id("char-count")).to_have_text("4000 / 4000")
    expect(page.get_by_test_id("send")).to_be_enabled()
    box.press("Enter")
    expect(delivered(page, "\U0001F680" * 4000)).to_have_count(1)


def test_load_older_pages_history(fast_server: Any, new_page: Any) -> None:
    page = new_page()
    signup(page, fast_server.url, unique("eve"))
    slug = unique("busy").lower()
    _create_room(page, slug, "Busy room")
    # 70 messages through the client library, all at once: acks settle them in order.
    page.evaluate("""async (slug) => {
        await Promise.all(Array.from({length: 70}, (_, i) => window.parley.send(slug, `line ${i + 1}`)));
    }""", slug)
    expect(delivered(page, "line 70")).to_have_count(1)
    page.reload()
    wait_joined(page, slug)
    texts = page.get_by_test_id("message-text")
    expect(texts).to_have_count(50)  # the join page
    expect(texts.first).to_have_text("line 21")
    older = page.get_by_test_id("load-older")
    expect(older).to_be_visible()
    older.click()
    expect(texts).to_have_count(70)
    expect(texts.first).to_have_text("line 1")
    expect(older).to_be_hidden()
    expect(page.get_by_test_id("timeline-start")).to_be_visible()
    got = texts.all_inner_texts()
    assert got == [f"line {i}" for i in range(1, 71)]
    # Scrolling to the top pages in older messages without the button.
    page.reload()
    wait_joined(page, slug)
    expect(texts).to_have_count(50)
    page.get_by_test_id("timeline").hover()
    for _ in range(40):
        page.mouse.wheel(0, -2000)
        if texts.count() == 70:
            break
        time.sleep(0.1)
    expect(texts).to_have_count(70)
    expect(texts.first).to_have_text("line 1")


def test_offline_badge_and_immediate_retry_when_back_online(parley: Any, new_page: Any) -> None:
    p1, p2, ada, _bob = _two_users(parley, new_page)
    for p in (p1, p2):
        wait_joined(p, "lobby")
    badge = p1.get_by_test_id("conn-state")
    p1.context.set_offline(True)
    expect(badge).to_have_attribute("data-state", "offline")
    expect(badge).to_contain_text("Offline")
    text = f"written offline by {ada}"
    say(p1, text)
    expect(pending(p1, text)).to_have_count(1)
    time.sleep(1.0)
    expect(delivered(p2, text)).to_have_count(0)
    started = time.monotonic()
    p1.context.set_offline(False)  # fires "online": the client tries at once, no backoff wait
    wait_connected(p1, timeout=5_000)
    assert time.monotonic() - started < 3
    expect(delivered(p2, text)).to_have_count(1)
    expect(pending(p1)).to_have_count(0)
    assert all_with_text(p1, text).count() == 1


def test_reading_is_not_disturbed_by_typing_and_new_messages(parley: Any, new_page: Any) -> None:
    """A selection in the timeline survives peers typing and posting; the new message shows after."""
    p1, p2, ada, _bob = _two_users(parley, new_page)
    slug = unique("quiet").lower()
    _create_room(p1, slug, "Quiet room")
    open_room(p2, slug)
    quote = "a sentence worth copying"
    say(p1, quote)
    expect(delivered(p2, quote)).to_have_count(1)
    # bob selects ada's text (as if to copy it)
    p2.evaluate("""(q) => {
        const node = [...document.querySelectorAll('[data-testid="message-text"]')].find(n => n.textContent === q);
        const range = document.createRange(); range.selectNodeContents(node);
        const sel = document.getSelection(); sel.removeAllRanges(); sel.addRange(range);
    }""", quote)
    p1.get_by_test_id("composer-input").press_sequentially("typing away", delay=150)  # human speed
    expect(p2.get_by_test_id("typing")).to_have_text(f"{ada} is typing…")
    p1.get_by_test_id("composer-input").press("Enter")
    expect(p1.get_by_test_id("typing")).to_have_text("")
    time.sleep(0.5)
    assert p2.evaluate("document.getSelection().toString()") == quote
    p2.evaluate("document.getSelection().removeAllRanges()")
    expect(delivered(p2, "typing away")).to_have_count(1)


def test_refused_send_is_shown_failed_and_can_be_edited(parley: Any, new_page: Any) -> None:
    page = new_page(width=375, height=740)
    signup(page, parley.url, unique("finn"))
    wait_joined(page, "lobby")
    too_long = "z" * 4001  # the composer refuses this; the library lets the server say no
    page.evaluate("t => window.parley.send('lobby', t).catch(() => {})", too_long)
    failed = page.get_by_test_id("message-failed")
    expect(failed).to_contain_text("4,000")
    text_box = page.locator('[data-status="failed"] [data-testid="message-text"]').bounding_box()
    assert text_box["width"] > 200, text_box  # the text keeps its width next to the error
    failed.get_by_role("button", name="Edit").click()
    expect(page.get_by_test_id("composer-input")).to_have_value(too_long)
    expect(pending(page)).to_have_count(0)


def test_private_room_is_invisible_to_others(parley: Any, new_page: Any) -> None:
    p1, p2, _ada, _bob = _two_users(parley, new_page)
    slug = unique("secret").lower()
    _create_room(p1, slug, "Secret plans", private=True)
    say(p1, "for my eyes only")
    expect(delivered(p1, "for my eyes only")).to_have_count(1)
    p2.reload()
    wait_connected(p2)
    expect(p2.locator(f'[data-testid="room-link"][data-slug="{slug}"]')).to_have_count(0)
    p2.evaluate("slug => { location.hash = '#/' + slug; }", slug)
    expect(p2.get_by_test_id("flash")).to_contain_text("No room")
    expect(p2.get_by_test_id("room-title")).to_have_text("Lobby")
    wait_joined(p2, "lobby")
    assert all_with_text(p2, "for my eyes only").count() == 0
