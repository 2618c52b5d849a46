"""People in real Chromium (docs/protocol.md §15): a user sets a display name and a picture in
the profile dialog; another user sees them on messages, in the member list, in the `@`
autocomplete and on the person's card. At desktop and at phone width (375 px).

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_profiles.py
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.helpers import open_room, say, signup, unique

pytestmark = [pytest.mark.browser]


def _png(colour: str = "#d6456b", size: tuple[int, int] = (400, 300)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _open_profile(page: Any) -> None:
    """Your profile sits at the foot of the sidebar: a drawer at phone width."""
    if page.get_by_test_id("sidebar-toggle").is_visible():
        page.get_by_test_id("sidebar-toggle").click()
    page.get_by_test_id("profile-open").click()


def _close_drawer(page: Any) -> None:
    if page.get_by_test_id("sidebar-close").is_visible():
        page.get_by_test_id("sidebar-close").click()


def _set_profile(page: Any, name: str, picture: bytes | None) -> None:
    _open_profile(page)
    dialog = page.get_by_test_id("profile-dialog")
    expect(dialog).to_be_visible()
    if picture is not None:
        page.get_by_test_id("profile-avatar-file").set_input_files(
            files=[{"name": "me.png", "mimeType": "image/png", "buffer": picture}])
        expect(dialog.locator("img.avatar--large")).to_have_count(1)
    page.get_by_test_id("profile-name").fill(name)
    page.get_by_test_id("profile-save").click()
    expect(dialog).to_have_count(0)
    _close_drawer(page)


@pytest.mark.parametrize("width", [1280, 375])
def test_a_display_name_and_picture_show_everywhere_the_person_does(parley: Any, new_page: Any, width: int) -> None:
    ada_name, bob_name = unique("ada"), unique("bob")
    # Her own surname: the lobby is shared with earlier tests' people, whose names the @ list matches too.
    surname = unique("Lovelace").replace("_", "")
    shown = f"Ada {surname}"
    ada, bob = new_page(width=width), new_page(width=width)
    signup(ada, parley.url, ada_name)
    slug = "lobby"
    open_room(ada, slug)
    _set_profile(ada, shown, _png())
    expect(ada.get_by_test_id("me")).to_have_text(shown)
    if width == 375:  # the dialog fits the phone's width
        _open_profile(ada)
        box = ada.get_by_test_id("profile-dialog").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
        ada.get_by_test_id("profile-cancel").click()
        _close_drawer(ada)

    signup(bob, parley.url, bob_name)
    open_room(bob, slug)
    text = unique("hello from ada")
    say(ada, text)
    group = bob.locator('[data-testid="message-group"]').filter(has_text=text)
    expect(group.get_by_test_id("message-author")).to_have_text(shown)
    expect(group.get_by_test_id("message-author")).to_have_attribute("title", f"@{ada_name}")
    picture = group.locator("img.msg-avatar")
    expect(picture).to_have_count(1)
    # The picture keeps its box while it loads (no jump), and it is the 128 px PNG the server made.
    assert picture.get_attribute("width") == "32" and picture.get_attribute("height") == "32"
    bob.wait_for_function("img => img.complete && img.naturalWidth === 128", arg=picture.element_handle())

    if width == 375:
        bob.get_by_test_id("members-toggle").click()
    member = bob.locator(f'[data-testid="member"][data-username="{ada_name}"]')
    expect(member.locator(".member-name")).to_have_text(shown)
    if width == 375:
        bob.get_by_test_id("members-toggle").click()

    group.get_by_test_id("message-author").click()
    card = bob.get_by_test_id("profile-card")
    expect(card.get_by_test_id("profile-card-name")).to_have_text(shown)
    expect(card.get_by_test_id("profile-card-username")).to_have_text(f"@{ada_name}")
    bob.keyboard.press("Escape")
    expect(card).to_have_count(0)

    # The @ autocomplete finds her by her display name and inserts her username.
    box = bob.get_by_test_id("composer-input")
    box.click()
    box.press_sequentially(f"hi @{surname.lower()}")
    option = bob.get_by_test_id("mention-option").filter(has_text=shown)
    expect(option).to_have_count(1)
    # Focus leaving and coming straight back (a click on a name, then on the box) does not
    # close, a moment later, the list opened since.
    bob.evaluate("""() => {
      const box = document.querySelector('[data-testid="composer-input"]');
      box.blur(); box.focus(); box.dispatchEvent(new Event("input", { bubbles: true }));
    }""")
    bob.wait_for_timeout(300)
    expect(option).to_have_count(1)
    expect(option).to_contain_text(f"@{ada_name}")
    box.press("Enter")
    expect(box).to_have_value(f"hi @{ada_name} ")

    # A later change reaches a page that has her already: re-read once the cached profile is
    # older than its time to live (a minute; none here) and she shows up again.
    _set_profile(ada, "Countess Ada", None)
    bob.evaluate("() => { window.parleyPeople.ttlMs = 0; }")
    say(ada, unique("again"))
    expect(bob.get_by_test_id("message-author").filter(has_text="Countess Ada").first).to_be_visible()
    assert ada.errors == [] and bob.errors == []


def test_a_file_that_is_not_a_picture_is_refused_with_a_message(parley: Any, new_page: Any) -> None:
    page = new_page()
    signup(page, parley.url, unique("eve"))
    _open_profile(page)
    page.get_by_test_id("profile-avatar-file").set_input_files(
        files=[{"name": "x.svg", "mimeType": "image/svg+xml",
                "buffer": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'}])
    expect(page.get_by_test_id("profile-error")).to_contain_text("not an image")
    expect(page.get_by_test_id("profile-dialog").locator("img")).to_have_count(0)
    # Clearing the name shows the username again.
    page.get_by_test_id("profile-name").fill("")
    page.get_by_test_id("profile-save").click()
    expect(page.get_by_test_id("me")).to_have_text(page.evaluate("JSON.parse(document.getElementById('parley-me').textContent).username"))
    assert page.errors == []
