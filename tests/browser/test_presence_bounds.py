"""A user whose browser tab closes leaves the member lists at once: Chromium sends the close
frame, the server removes the presence and tells the room (docs/protocol.md §3, "How long a
user who left stays listed"; the other ways to go: tests/test_presence_bounds.py).

Run: .venv/bin/python -m pytest -p no:cacheprovider -q -s tests/browser/test_presence_bounds.py
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from tests.browser.helpers import signup, unique, wait_joined

pytestmark = [pytest.mark.browser]


def test_a_closed_tab_leaves_the_room_at_once(parley: Any, new_page: Any) -> None:
    watcher_name, ada_name = unique("watch"), unique("ada")
    token = parley.create_token(watcher_name)
    with connect(parley.url.replace("http", "ws") + "/ws/chat/", additional_headers={"Authorization": f"Bearer {token}"},
                 proxy=None) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        ws.send(json.dumps({"type": "join", "ref": "j", "room": "lobby"}))
        page = new_page()
        signup(page, parley.url, ada_name)
        wait_joined(page, "lobby")
        expect(page.locator(f'[data-testid="member"][data-username="{watcher_name}"]')).to_have_count(1)

        def next_presence(event: str, deadline: float) -> None:
            while True:
                frame = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
                if frame.get("type") == "presence" and frame["event"] == event and frame["user"]["username"] == ada_name:
                    return

        next_presence("join", time.monotonic() + 10)
        closed_at = time.monotonic()
        page.close()
        next_presence("leave", closed_at + 10)
        took = time.monotonic() - closed_at
        print(f"closed tab: listed {took:.2f} s after the tab closed")
        assert took < 2.0
