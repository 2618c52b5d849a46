"""Search in real Chromium (docs/protocol.md §13): the header's search box finds a message far
back in a room's history, shows its snippet with the hit marked (text only: a message that looks
like markup stays text), and a click opens the room at that message, scrolled into view and
highlighted. At desktop width and at 375 px (touch), where the panel covers the conversation.

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_search.py
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import open_room, signup, unique, wait_joined

pytestmark = [pytest.mark.browser]


def _post(base_url: str, token: str, slug: str, text: str) -> int:
    request = urllib.request.Request(
        f"{base_url}/api/rooms/{slug}/messages", data=json.dumps({"text": text}).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as res:
        return int(json.loads(res.read())["message"]["seq"])


def _make_room(base_url: str, token: str, slug: str) -> None:
    request = urllib.request.Request(
        f"{base_url}/api/rooms", data=json.dumps({"slug": slug, "title": slug.title()}).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()


def _in_view(page: Any, element_id: str) -> bool:
    return page.evaluate("""id => {
        const el = document.getElementById(id), box = document.querySelector('[data-testid="timeline"]');
        if (!el) return false;
        const r = el.getBoundingClientRect(), b = box.getBoundingClientRect();
        return r.bottom > b.top && r.top < b.bottom;
    }""", element_id)


@pytest.mark.parametrize("width", [1280, 375])
def test_search_finds_an_old_message_and_opens_it_in_context(fast_server: Any, new_page: Any, width: int) -> None:
    base = fast_server.url
    slug = unique("srch").lower()
    word = unique("zebra").replace("_", "")
    poster = unique("bot")
    token = fast_server.create_token(poster)
    _make_room(base, token, slug)
    seq = _post(base, token, slug, f"the {word} crossed the road")
    _post(base, token, slug, f"<img src=x onerror=alert(1)> {word} stays text")
    for i in range(70):  # the match is beyond the newest page a join shows (50)
        _post(base, token, slug, f"filler message {i}")

    page = new_page(width=width, height=800) if width > 400 else new_page(width=375, height=740)
    signup(page, base, unique("reader"))
    open_room(page, "lobby")
    toggle = page.get_by_test_id("search-toggle")
    expect(toggle).to_be_visible()
    toggle.click()
    panel = page.get_by_test_id("search-panel")
    expect(panel).to_be_visible()
    box = page.get_by_test_id("search-input")
    expect(box).to_be_focused()
    box.fill(f"{word} in:#{slug}")
    box.press("Enter")
    results = page.get_by_test_id("search-result")
    expect(results).to_have_count(2)
    expect(page.get_by_test_id("search-status")).to_have_text("2 results")
    # Hits are <mark> elements made with textContent; the rest is text, markup included.
    marks = page.locator('[data-testid="search-result"] mark')
    expect(marks).to_have_count(2)
    assert set(marks.all_text_contents()) == {word}
    assert page.locator('[data-testid="search-results"] img').count() == 0
    expect(results.filter(has_text="<img src=x onerror=alert(1)>")).to_have_count(1)
    if width <= 400:  # the panel covers the conversation, nothing sticks out sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        box_rect = panel.bounding_box()
        assert box_rect is not None and box_rect["width"] <= 375

    target = page.locator(f'[data-testid="search-result"][data-seq="{seq}"]')
    target.click()
    wait_joined(page, slug)
    if width <= 400:
        expect(panel).to_be_hidden()
    message = page.locator(f"#msg-{seq}")
    expect(message).to_be_visible(timeout=15_000)
    expect(message).to_have_class(lambda_has("msg--flash"))
    assert _in_view(page, f"msg-{seq}")
    assert page.evaluate("location.hash") == f"#/{slug}/{seq}"
    # Escape closes the panel (desktop keeps it open after a click).
    if width > 400:
        expect(panel).to_be_visible()
        box.press("Escape")
        expect(panel).to_be_hidden()
    assert page.errors == []


def lambda_has(cls: str) -> Any:
    import re

    return re.compile(rf"(^|\s){re.escape(cls)}(\s|$)")
