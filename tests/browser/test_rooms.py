"""Rooms, members and direct messages in real Chromium (docs/protocol.md §12), at desktop and at
phone width (375 px): ada adds bob to a private room with the members panel's autocomplete and
the room appears in bob's list live; ada removes him and his page says so, composer off; a
message bob could not send when he was removed is kept as failed — Copy / Discard — across a
reload; a DM started from the people picker lands in both "Direct messages" lists.

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_rooms.py
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import (
    create_room,
    open_room,
    pending,
    say,
    signup,
    unique,
    wait_connected,
    wait_joined,
)

pytestmark = [pytest.mark.browser]

SIZES = {"desktop": (1280, 800), "phone": (375, 740)}


def _api(page: Any, method: str, path: str, body: Any = None) -> Any:
    """A call to the API from the page, with its session and CSRF token (as the app makes them)."""
    return page.evaluate("""async ([method, path, body]) => {
        const csrf = (document.cookie.split('; ').find((c) => c.startsWith('csrftoken=')) || '').split('=')[1];
        const res = await fetch(path, {method, credentials: 'same-origin', headers: {'Content-Type': 'application/json',
            'X-CSRFToken': csrf}, body: body === null ? undefined : JSON.stringify(body)});
        return {status: res.status, body: await res.json()};
    }""", [method, path, body])


def _members_panel(page: Any, phone: bool) -> Any:
    if phone:
        page.get_by_test_id("members-toggle").click()
    panel = page.get_by_test_id("members-panel")
    expect(panel).to_be_visible()
    return panel


def _close_panels(page: Any) -> None:
    page.keyboard.press("Escape")


# Two sign-ups, an offline spell, a reconnect and a reload: on a loaded 2-core machine this takes
# more than the suite's 120 s default.
@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", list(SIZES))
def test_add_member_live_remove_and_the_failed_message_kept(parley: Any, new_page: Any, size: str) -> None:
    width, height = SIZES[size]
    phone = size == "phone"
    ada_page, bob_page = new_page(width, height), new_page(width, height)
    ada, bob = unique("ada"), unique("bob")
    signup(ada_page, parley.url, ada)
    signup(bob_page, parley.url, bob)
    slug = unique("team").replace("_", "-")
    assert _api(ada_page, "POST", "/api/rooms", {"slug": slug, "title": "Team", "private": True})["status"] == 201
    open_room(ada_page, slug)

    # Add bob from the members panel: typing offers him, picking adds him.
    panel = _members_panel(ada_page, phone)
    panel.get_by_test_id("member-add-input").fill(bob[:5])
    option = panel.locator(f'[data-testid="user-option"][data-username="{bob}"]')
    expect(option).to_be_visible()
    option.click()
    expect(panel.locator(f'[data-testid="roster-member"][data-username="{bob}"]')).to_be_visible()

    # bob's list gets the room live, without a reload.
    link = bob_page.locator(f'[data-testid="room-link"][data-slug="{slug}"]')
    expect(link).to_have_count(1)
    if phone:
        bob_page.get_by_test_id("sidebar-toggle").click()
    link.click()
    wait_joined(bob_page, slug)
    say(bob_page, "hello team")
    expect(ada_page.get_by_test_id("message-text").filter(has_text="hello team")).to_be_visible()

    # bob goes offline and writes: pending. Meanwhile ada removes him.
    bob_page.context.set_offline(True)
    bob_page.wait_for_function("() => window.parley.state !== 'connected'")
    say(bob_page, "kept text")
    expect(pending(bob_page, "kept text")).to_be_visible()
    remove = panel.locator(f'[data-testid="roster-member"][data-username="{bob}"] [data-testid="member-remove"]')
    remove.click()
    expect(panel.locator(f'[data-testid="roster-member"][data-username="{bob}"]')).to_have_count(0)
    bob_page.context.set_offline(False)
    wait_connected(bob_page)

    # Back online: the room is lost, the message failed — its text kept, Copy and Discard offered.
    failed = bob_page.locator('[data-testid="message"][data-status="failed"]')
    expect(failed).to_have_count(1)
    expect(failed.get_by_test_id("message-text")).to_have_text("kept text")
    expect(failed.get_by_test_id("failed-copy")).to_be_visible()
    expect(failed.get_by_test_id("failed-discard")).to_be_visible()
    expect(failed.get_by_test_id("failed-retry")).to_have_count(0)  # cannot work in a room lost
    expect(bob_page.get_by_test_id("room-notice")).to_be_visible()
    expect(bob_page.get_by_test_id("composer-input")).to_be_disabled()

    # A reload keeps it, failed, in the room it was written in.
    bob_page.reload()
    wait_connected(bob_page)
    failed = bob_page.locator('[data-testid="message"][data-status="failed"]')
    expect(failed.get_by_test_id("message-text")).to_have_text("kept text")
    failed.get_by_test_id("failed-discard").click()
    expect(failed).to_have_count(0)
    assert bob_page.evaluate("() => window.parley.failedSends().length") == 0
    assert not ada_page.errors and not bob_page.errors


@pytest.mark.parametrize("size", list(SIZES))
def test_removed_live_says_so_and_turns_the_composer_off(parley: Any, new_page: Any, size: str) -> None:
    width, height = SIZES[size]
    ada_page, bob_page = new_page(width, height), new_page(width, height)
    ada, bob = unique("ada"), unique("bob")
    signup(ada_page, parley.url, ada)
    signup(bob_page, parley.url, bob)
    slug = unique("crew").replace("_", "-")
    assert _api(ada_page, "POST", "/api/rooms", {"slug": slug, "title": "Crew", "private": True})["status"] == 201
    assert _api(ada_page, "POST", f"/api/rooms/{slug}/members", {"username": bob})["status"] == 201
    open_room(bob_page, slug)
    assert _api(ada_page, "DELETE", f"/api/rooms/{slug}/members/{bob}")["status"] == 200
    notice = bob_page.get_by_test_id("room-notice")
    expect(notice).to_have_text(f"You were removed from #{slug}.")
    expect(bob_page.get_by_test_id("composer-input")).to_be_disabled()
    expect(bob_page.locator(f'[data-testid="room-link"][data-slug="{slug}"]')).to_have_count(0)
    assert not bob_page.errors


@pytest.mark.parametrize("size", list(SIZES))
def test_a_dm_from_the_people_picker_is_in_both_direct_message_lists(parley: Any, new_page: Any, size: str) -> None:
    width, height = SIZES[size]
    phone = size == "phone"
    ada_page, bob_page = new_page(width, height), new_page(width, height)
    ada, bob = unique("ada"), unique("bob")
    signup(ada_page, parley.url, ada)
    signup(bob_page, parley.url, bob)
    if phone:
        ada_page.get_by_test_id("sidebar-toggle").click()
    ada_page.get_by_test_id("new-dm-toggle").click()
    ada_page.get_by_test_id("dm-input").fill(bob[:6])
    ada_page.locator(f'[data-testid="user-option"][data-username="{bob}"]').click()
    expect(ada_page.get_by_test_id("dm-chip")).to_have_text(bob)
    ada_page.get_by_test_id("new-dm-submit").click()
    ada_page.wait_for_function("() => /^#\\/dm-/.test(location.hash)")
    slug = ada_page.evaluate("() => location.hash.slice(2)")
    wait_joined(ada_page, slug)
    expect(ada_page.get_by_test_id("room-title")).to_have_text(bob)
    say(ada_page, "psst")
    # bob's "Direct messages" list has it, named after ada, live; it is not among the rooms.
    dm = bob_page.locator(f'[data-testid="dm-link"][data-slug="{slug}"]')
    expect(dm).to_have_count(1)
    expect(dm).to_have_text(ada)
    expect(bob_page.locator(f'[data-testid="room-link"][data-slug="{slug}"]')).to_have_count(0)
    if phone:
        bob_page.get_by_test_id("sidebar-toggle").click()
    dm.click()
    wait_joined(bob_page, slug)
    expect(bob_page.get_by_test_id("message-text").filter(has_text="psst")).to_be_visible()
    assert not ada_page.errors and not bob_page.errors


def test_the_room_list_pages_with_more_rooms(chromium_path: str, new_page: Any) -> None:
    """GET /api/rooms answers a page at a time (PARLEY_ROOMS_PAGE_MAX, 2 here): the sidebar
    shows the first page and a "More rooms…" button that brings the next."""
    from tests.browser.server import Server

    srv = Server(extra_env={"PARLEY_ROOMS_PAGE_MAX": "2"})
    srv.start()
    try:
        page = new_page()
        signup(page, srv.url, unique("ada"))
        slugs = [unique("page").replace("_", "-") for _ in range(3)]
        for slug in slugs:
            create_room(page, slug)
        page.reload()
        links = page.get_by_test_id("room-link")
        expect(links).to_have_count(2)
        more = page.get_by_test_id("rooms-more")
        more.click()
        expect(links).to_have_count(4)  # lobby and the three, by slug
        expect(more).to_have_count(0)
        assert sorted(links.evaluate_all("els => els.map((e) => e.dataset.slug)")) == sorted(["lobby", *slugs])
        assert page.errors == []
    finally:
        srv.close()
