"""Conversations in real Chromium (docs/protocol.md §10): two users edit, delete, react, reply
and mention each other through the app's own controls; both pages update live, and a reload
shows the same state. At desktop and at phone width (375 px, touch).

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_conversations.py
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import (
    create_room,
    open_room,
    seq_of,
    signup,
    unique,
    wait_connected,
    wait_joined,
)
from tests.browser.server import PYTHON, REPO

pytestmark = [pytest.mark.browser]


def _msg(page: Any, seq: int) -> Any:
    return page.locator(f'[data-testid="message"][data-seq="{seq}"]')


def _chip(page: Any, seq: int, emoji: str) -> Any:
    return _msg(page, seq).locator(f'[data-testid="reaction"][data-emoji="{emoji}"]')


def _expect_chip(page: Any, seq: int, emoji: str, count: int, mine: bool) -> None:
    chip = _chip(page, seq, emoji)
    expect(chip).to_have_attribute("data-count", str(count))
    expect(chip).to_have_attribute("data-mine", "true" if mine else "false")
    expect(chip).to_have_class(re.compile(r"reaction--mine") if mine else re.compile(r"^reaction$"))


def _action(page: Any, seq: int, testid: str) -> Any:
    """Hover the message (desktop) and return its action button."""
    _msg(page, seq).hover()
    return _msg(page, seq).get_by_test_id(testid)


def _type(page: Any, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.press_sequentially(text)


def test_two_users_edit_delete_react_reply_and_mention(parley: Any, new_page: Any) -> None:
    ada_name, bob_name = unique("ada"), unique("bob")
    ada, bob = new_page(), new_page()
    signup(ada, parley.url, ada_name)
    signup(bob, parley.url, bob_name)
    slug = unique("conv").lower()
    create_room(ada, slug)
    open_room(bob, slug)
    expect(ada.locator(f'[data-testid="member"][data-username="{bob_name}"]')).to_have_count(1)
    # In a public room a mention names its owner or someone who has posted there: bob says hi.
    bob.get_by_test_id("composer-input").fill("hi")
    bob.get_by_test_id("composer-input").press("Enter")
    seq_of(ada, slug, "hi")

    # ada mentions bob through the @ autocomplete (bob is online in the room).
    _type(ada, "hello @" + bob_name[:4])
    option = ada.locator(f'[data-testid="mention-option"][data-username="{bob_name}"]')
    expect(option).to_be_visible()
    ada.get_by_test_id("composer-input").press("Enter")  # picks the name, does not send
    expect(ada.get_by_test_id("composer-input")).to_have_value(f"hello @{bob_name} ")
    _type(ada, "look at **this**")
    ada.get_by_test_id("composer-input").press("Enter")
    m1_text = f"hello @{bob_name} look at **this**"
    m1 = seq_of(bob, slug, m1_text)
    assert seq_of(ada, slug, m1_text) == m1
    # Rendered: bold, and the mention — strongly on bob's page, plainly on ada's.
    expect(_msg(bob, m1).locator("strong")).to_have_text("this")
    expect(_msg(bob, m1).locator('[data-testid="mention"]')).to_have_class("mention mention--me")
    expect(_msg(bob, m1)).to_have_class(re.compile(r"msg--mention"))
    expect(_msg(ada, m1).locator('[data-testid="mention"]')).to_have_class("mention")
    expect(_msg(ada, m1)).not_to_have_class(re.compile(r"msg--mention"))

    # Reactions: bob 👍 from the hover bar; ada adds hers with the chip; bob toggles his off.
    _msg(bob, m1).hover()
    _msg(bob, m1).locator('[data-testid="quick-react"][data-emoji="👍"]').click()
    for p, mine in ((bob, True), (ada, False)):
        _expect_chip(p, m1, "👍", 1, mine)
    _chip(ada, m1, "👍").click()
    _expect_chip(ada, m1, "👍", 2, True)
    _expect_chip(bob, m1, "👍", 2, True)
    _chip(bob, m1, "👍").click()
    _expect_chip(bob, m1, "👍", 1, False)
    _expect_chip(ada, m1, "👍", 1, True)
    # bob picks 🎉 from the emoji picker (Escape closes it; arrow keys move through it).
    _action(bob, m1, "action-react").click()
    expect(bob.get_by_test_id("emoji-picker")).to_be_visible()
    bob.keyboard.press("Escape")
    expect(bob.get_by_test_id("emoji-picker")).to_be_hidden()
    _action(bob, m1, "action-react").click()
    expect(bob.locator('[data-testid="emoji-option"]').first).to_be_focused()
    bob.keyboard.press("ArrowRight")
    expect(bob.locator('[data-testid="emoji-option"]').nth(1)).to_be_focused()
    bob.locator('[data-testid="emoji-option"][data-emoji="🎉"]').click()
    expect(bob.get_by_test_id("emoji-picker")).to_be_hidden()
    _expect_chip(bob, m1, "🎉", 1, True)
    _expect_chip(ada, m1, "🎉", 1, False)

    # bob replies to m1, mentioning ada.
    _action(bob, m1, "action-reply").click()
    expect(bob.get_by_test_id("reply-bar")).to_be_visible()
    expect(bob.get_by_test_id("reply-bar-author")).to_have_text(f"@{ada_name}")
    _type(bob, f"on it @{ada_name}")
    # The name typed in full still lists it: Enter takes it (and a space), the next Enter sends.
    bob.get_by_test_id("composer-input").press("Enter")
    expect(bob.get_by_test_id("composer-input")).to_have_value(f"on it @{ada_name} ")
    bob.get_by_test_id("composer-input").press("Enter")
    expect(bob.get_by_test_id("reply-bar")).to_be_hidden()
    m2 = seq_of(ada, slug, f"on it @{ada_name}")
    for p in (ada, bob):
        quote = _msg(p, m2).get_by_test_id("reply-quote")
        expect(quote).to_have_attribute("data-target", str(m1))
        expect(quote).to_contain_text(f"@{ada_name}")
        expect(quote).to_contain_text("look at **this**")  # the excerpt is the source text
    expect(_msg(ada, m2).locator('[data-testid="mention"]')).to_have_class("mention mention--me")
    # The quote scrolls to its target and flashes it.
    ada.evaluate("() => { document.querySelector('[data-testid=timeline]').scrollTop = 1e6; }")
    _msg(ada, m2).get_by_test_id("reply-quote").click()
    expect(_msg(ada, m1)).to_have_class(re.compile(r"msg--flash"))
    expect(_msg(ada, m1)).to_be_in_viewport()

    # ada: Up arrow in the empty composer edits her last message; Escape cancels, Enter saves.
    ada.get_by_test_id("composer-input").focus()
    ada.get_by_test_id("composer-input").press("ArrowUp")
    edit_box = ada.get_by_test_id("edit-input")
    expect(edit_box).to_be_visible()
    expect(edit_box).to_have_value(m1_text)
    edit_box.fill("never saved")
    edit_box.press("Escape")
    expect(ada.get_by_test_id("edit-input")).to_have_count(0)
    expect(_msg(ada, m1).get_by_test_id("message-text")).to_have_text(f"hello @{bob_name} look at this")
    _action(ada, m1, "action-edit").click()
    edit_box = ada.get_by_test_id("edit-input")
    edit_box.fill(f"hello @{bob_name} look at ~~this~~ _that_")
    edit_box.press("Enter")
    for p in (ada, bob):
        text = _msg(p, m1).get_by_test_id("message-text")
        expect(text).to_have_text(f"hello @{bob_name} look at this that")
        expect(text.locator("del")).to_have_text("this")
        expect(text.locator("em")).to_have_text("that")
        expect(_msg(p, m1).get_by_test_id("edited")).to_have_text("(edited)")
        expect(_msg(p, m2).get_by_test_id("reply-quote")).to_contain_text("~~this~~ _that_")
    # The edit keeps the reactions and the mention.
    _expect_chip(bob, m1, "👍", 1, False)
    expect(_msg(bob, m1).locator('[data-testid="mention"]')).to_have_class("mention mention--me")
    # Only the author gets an edit action; delete, the author and the room's owner (ada).
    _msg(bob, m1).hover()
    expect(_msg(bob, m1).get_by_test_id("action-edit")).to_have_count(0)
    expect(_msg(bob, m1).get_by_test_id("action-delete")).to_have_count(0)
    _msg(ada, m2).hover()
    expect(_msg(ada, m2).get_by_test_id("action-edit")).to_have_count(0)
    expect(_msg(ada, m2).get_by_test_id("action-delete")).to_have_count(1)

    # bob deletes a message of his: a second click confirms; both pages show a tombstone.
    bob.get_by_test_id("composer-input").fill("oops, wrong room")
    bob.get_by_test_id("composer-input").press("Enter")
    m3 = seq_of(ada, slug, "oops, wrong room")
    _action(bob, m3, "action-delete").click()
    expect(_msg(bob, m3).get_by_test_id("action-delete")).to_have_text("Delete?")
    _msg(bob, m3).get_by_test_id("action-delete").click()
    for p in (ada, bob):
        expect(_msg(p, m3).get_by_test_id("message-tombstone")).to_have_text("message deleted")
        expect(_msg(p, m3).get_by_test_id("message-text")).to_have_count(0)

    def check_state(p: Any, me_is_ada: bool) -> None:
        expect(_msg(p, m1).get_by_test_id("message-text")).to_have_text(f"hello @{bob_name} look at this that")
        expect(_msg(p, m1).get_by_test_id("edited")).to_have_count(1)
        _expect_chip(p, m1, "👍", 1, me_is_ada)
        _expect_chip(p, m1, "🎉", 1, not me_is_ada)
        expect(_msg(p, m2).get_by_test_id("reply-quote")).to_have_attribute("data-target", str(m1))
        expect(_msg(p, m3).get_by_test_id("message-tombstone")).to_have_count(1)

    for p, is_ada in ((ada, True), (bob, False)):
        check_state(p, is_ada)
        p.reload()
        wait_connected(p)
        wait_joined(p, slug)
        check_state(p, is_ada)

    # ada deletes m1: its reactions go, and bob's reply quotes it as deleted, live and after reload.
    _action(ada, m1, "action-delete").click()
    _msg(ada, m1).get_by_test_id("action-delete").click()
    for p in (ada, bob):
        expect(_msg(p, m1).get_by_test_id("message-tombstone")).to_have_count(1)
        expect(_msg(p, m1).get_by_test_id("reaction")).to_have_count(0)
        expect(_msg(p, m2).get_by_test_id("reply-quote")).to_contain_text("message deleted")
    # @room is offered to the room's owner only (once the page knows it is hers: delete on m2).
    expect(_action(ada, m2, "action-delete")).to_have_count(1)
    _type(ada, "@ro")
    expect(ada.locator('[data-testid="mention-option"][data-username="room"]')).to_be_visible()
    ada.get_by_test_id("composer-input").fill("")
    _type(bob, "@ro")
    expect(bob.locator('[data-testid="mention-option"]')).to_have_count(0)
    bob.get_by_test_id("composer-input").fill("")
    bob.reload()
    wait_joined(bob, slug)
    expect(_msg(bob, m1).get_by_test_id("message-tombstone")).to_have_count(1)
    expect(_msg(bob, m2).get_by_test_id("reply-quote")).to_have_class(re.compile(r"reply-quote--deleted"))
    expect(_msg(bob, m2).get_by_test_id("message-text")).to_have_text(f"on it @{ada_name}")
    assert ada.errors == [] and bob.errors == []


@pytest.fixture
def phone_page(browser: Any) -> Iterator[Any]:
    """`phone_page()` → a 375 px wide touch page in a fresh context."""
    contexts: list[Any] = []

    def make() -> Any:
        ctx = browser.new_context(viewport={"width": 375, "height": 740}, has_touch=True, is_mobile=True)
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        page = ctx.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        return page

    yield make
    for ctx in contexts:
        ctx.close()


def _long_press(page: Any, seq: int) -> None:
    box = _msg(page, seq).get_by_test_id("message-text").bounding_box()
    at = {"pointerType": "touch", "isPrimary": True, "bubbles": True,
          "clientX": box["x"] + 5, "clientY": box["y"] + 5}
    target = _msg(page, seq).get_by_test_id("message-text")
    target.dispatch_event("pointerdown", at)
    page.wait_for_timeout(700)
    target.dispatch_event("pointerup", at)


def test_phone_width_long_press_actions(parley: Any, phone_page: Any) -> None:
    ada_name, bob_name = unique("ada"), unique("bob")
    ada, bob = phone_page(), phone_page()
    signup(ada, parley.url, ada_name)
    signup(bob, parley.url, bob_name)
    slug = unique("phone").lower()
    ada.get_by_test_id("sidebar-toggle").tap()
    create_room(ada, slug)
    open_room(bob, slug)

    ada.get_by_test_id("composer-input").fill("a long message from the phone " + "word " * 30)
    ada.get_by_test_id("composer-input").press("Enter")
    m1 = seq_of(bob, slug, ("a long message from the phone " + "word " * 30).strip())

    # No hover on a phone: a long-press opens the actions, sized for a finger, inside the screen.
    tools = _msg(bob, m1).get_by_test_id("message-actions")
    expect(tools).to_be_hidden()
    _long_press(bob, m1)
    expect(tools).to_be_visible()
    for testid in ("action-react", "action-reply", "action-link"):
        b = tools.get_by_test_id(testid).bounding_box()
        assert b["x"] >= 0 and b["x"] + b["width"] <= 375, testid
        assert b["height"] >= 28, testid
    tools.get_by_test_id("action-react").tap()
    picker = bob.get_by_test_id("emoji-picker")
    expect(picker).to_be_visible()
    pb = picker.bounding_box()
    assert pb["x"] >= 0 and pb["x"] + pb["width"] <= 375
    bob.locator('[data-testid="emoji-option"][data-emoji="🚀"]').tap()
    _expect_chip(ada, m1, "🚀", 1, False)
    _expect_chip(bob, m1, "🚀", 1, True)

    # Reply from the long-press bar, with an @ mention picked by tapping.
    _long_press(bob, m1)
    _msg(bob, m1).get_by_test_id("action-reply").tap()
    expect(bob.get_by_test_id("reply-bar")).to_be_visible()
    bob.get_by_test_id("composer-input").press_sequentially("thanks @" + ada_name[:3])
    bob.locator(f'[data-testid="mention-option"][data-username="{ada_name}"]').tap()
    bob.get_by_test_id("send").tap()
    m2 = seq_of(ada, slug, f"thanks @{ada_name}")
    expect(_msg(ada, m2).get_by_test_id("reply-quote")).to_have_attribute("data-target", str(m1))
    expect(_msg(ada, m2).locator('[data-testid="mention"]')).to_have_class("mention mention--me")

    # ada edits from her long-press bar and deletes the reply's target afterwards.
    _long_press(ada, m1)
    _msg(ada, m1).get_by_test_id("action-edit").tap()
    ada.get_by_test_id("edit-input").fill("short now")
    ada.get_by_test_id("edit-input").press("Enter")
    expect(_msg(bob, m1).get_by_test_id("message-text")).to_have_text("short now")
    expect(_msg(bob, m1).get_by_test_id("edited")).to_have_count(1)
    _long_press(ada, m1)
    _msg(ada, m1).get_by_test_id("action-delete").tap()
    _msg(ada, m1).get_by_test_id("action-delete").tap()
    expect(_msg(bob, m1).get_by_test_id("message-tombstone")).to_have_count(1)
    expect(_msg(bob, m2).get_by_test_id("reply-quote")).to_contain_text("message deleted")

    # Nothing is wider than the phone.
    for p in (ada, bob):
        assert p.evaluate("() => document.documentElement.scrollWidth") <= 375
    assert ada.errors == [] and bob.errors == []


VIEW = """slug => window.parley.room(slug).messages.filter((m) => !m._fromAck).map((m) => ({
  seq: m.seq, text: m.text, deleted: !!m.deleted, edited: !!m.edited_at,
  reactions: (m.reactions || []).map((r) => [r.emoji, r.count]),
  reply: m.reply_to ? [m.reply_to.seq, m.reply_to.deleted] : null,
}))"""


def test_changes_made_while_offline_arrive_on_resume(parley: Any, new_page: Any) -> None:
    ada_name, bob_name = unique("ada"), unique("bob")
    ada, bob = new_page(), new_page()
    signup(ada, parley.url, ada_name)
    signup(bob, parley.url, bob_name)
    slug = unique("resume").lower()
    create_room(ada, slug)
    open_room(bob, slug)
    call = "([slug, op, args]) => window.parley[op](slug, ...args)"
    seqs = [ada.evaluate(call, [slug, "send", [f"m{i}"]])["seq"] for i in range(4)]
    for s in seqs:
        expect(_msg(bob, s)).to_have_count(1)

    bob.evaluate("() => { window.__reasons = []; window.parley.on('room', (e) => window.__reasons.push(e.reason)); }")
    bob.context.set_offline(True)
    expect(bob.get_by_test_id("conn-state")).to_have_attribute("data-state", "offline")
    ada.evaluate(call, [slug, "edit", [seqs[0], "m0 **edited**"]])
    ada.evaluate(call, [slug, "react", [seqs[1], "👍"]])
    ada.evaluate(call, [slug, "react", [seqs[1], "🎉"]])
    ada.evaluate(call, [slug, "unreact", [seqs[1], "🎉"]])
    ada.evaluate(call, [slug, "delete", [seqs[2]]])
    reply = ada.evaluate("([slug, text, to]) => window.parley.send(slug, text, {replyTo: to})", [slug, "re m3", seqs[3]])
    ada.evaluate(call, [slug, "delete", [seqs[3]]])
    expect(_msg(ada, seqs[3]).get_by_test_id("message-tombstone")).to_have_count(1)
    assert _msg(bob, seqs[0]).get_by_test_id("message-text").text_content() == "m0"  # bob missed it all

    bob.context.set_offline(False)
    wait_connected(bob)
    expect(_msg(bob, seqs[0]).get_by_test_id("message-text")).to_have_text("m0 edited")
    expect(_msg(bob, reply["seq"]).get_by_test_id("reply-quote")).to_contain_text("message deleted")
    # The resume was a recovered one (events), not a fresh page, and bob's copy equals ada's.
    reasons = bob.evaluate("() => window.__reasons")
    assert "joined" in reasons and "reset" not in reasons, reasons
    assert bob.evaluate("slug => window.parley.room(slug).epoch", slug) == ada.evaluate(
        "slug => window.parley.room(slug).epoch", slug)
    ada_view = ada.evaluate(VIEW, slug)
    assert bob.evaluate(VIEW, slug) == ada_view
    assert ada_view[1]["reactions"] == [["👍", 1]]
    assert bob.evaluate("slug => window.parley.room(slug).highSeq", slug) == ada.evaluate(
        "slug => window.parley.room(slug).highSeq", slug)
    bob.reload()
    wait_joined(bob, slug)
    assert bob.evaluate(VIEW, slug) == ada_view
    assert ada.errors == [] and bob.errors == []


def test_copy_link_opens_the_message(parley: Any, new_page: Any) -> None:
    ada = new_page()
    signup(ada, parley.url, unique("ada"))
    slug = unique("link").lower()
    create_room(ada, slug)
    call = "([slug, text]) => window.parley.send(slug, text)"
    first = ada.evaluate(call, [slug, "the one to link to"])["seq"]
    for i in range(40):  # enough below it that it is scrolled out of view
        ada.evaluate(call, [slug, f"filler {i}"])
    expect(_msg(ada, first)).to_have_count(1)
    ada.context.grant_permissions(["clipboard-read", "clipboard-write"])
    _action(ada, first, "action-link").click()
    expect(ada.get_by_test_id("flash")).to_have_text("Link copied.")
    link = ada.evaluate("() => navigator.clipboard.readText()")
    assert link.endswith(f"#/{slug}/{first}"), link

    # A second tab of the same user (same cookies) opens the link.
    other = ada.context.new_page()
    other.errors = []
    other.on("pageerror", lambda exc: other.errors.append(str(exc)))
    other.goto(link)
    wait_joined(other, slug)
    expect(_msg(other, first)).to_have_class(re.compile(r"msg--flash"))
    expect(_msg(other, first)).to_be_in_viewport()
    assert ada.errors == [] and other.errors == []


def _make_staff(server: Any, username: str) -> None:
    code = ("from django.contrib.auth import get_user_model; "
            f"get_user_model().objects.filter(username={username!r}).update(is_staff=True)")
    subprocess.run([PYTHON, "manage.py", "shell", "-c", code], cwd=REPO, env=server.env, check=True,
                   capture_output=True, timeout=60)


def test_the_rooms_owner_and_an_admin_delete_anyones_message(parley: Any, new_page: Any) -> None:
    admin_name, bob_name = unique("admin"), unique("bob")
    admin, bob = new_page(), new_page()
    signup(admin, parley.url, admin_name)
    signup(bob, parley.url, bob_name)
    slug = unique("mod").lower()
    create_room(bob, slug)
    open_room(admin, slug)
    bob.get_by_test_id("composer-input").fill("spam spam spam")
    bob.get_by_test_id("composer-input").press("Enter")
    seq = seq_of(admin, slug, "spam spam spam")
    _msg(admin, seq).hover()
    expect(_msg(admin, seq).get_by_test_id("action-delete")).to_have_count(0)  # not an admin yet

    _make_staff(parley, admin_name)
    admin.reload()
    wait_joined(admin, slug)
    _action(admin, seq, "action-delete").click()
    _msg(admin, seq).get_by_test_id("action-delete").click()
    for p in (admin, bob):
        expect(_msg(p, seq).get_by_test_id("message-tombstone")).to_have_count(1)

    # bob owns the room: he deletes the admin's message too.
    admin.get_by_test_id("composer-input").fill("an admin's note")
    admin.get_by_test_id("composer-input").press("Enter")
    note = seq_of(bob, slug, "an admin's note")
    _action(bob, note, "action-delete").click()
    _msg(bob, note).get_by_test_id("action-delete").click()
    for p in (admin, bob):
        expect(_msg(p, note).get_by_test_id("message-tombstone")).to_have_count(1)
    assert admin.errors == [] and bob.errors == []
