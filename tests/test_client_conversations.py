"""parley_client and protocol version 2 (docs/protocol.md §10): apply() and the entry reorder
buffer on their own, then the client against real server subprocesses — every conversation
request, entries in seq order across forced reconnects, a resume after an edit, a lost entry
filled by a resume join, a refused resume caught up from history, the edit bucket.

Every test against a server ends by comparing each client's folded view of every message
(its entries through parley_client.apply) with the server's pages (GET …/messages, `me` for
that user): they must be equal, key for key.
"""

from __future__ import annotations  # noqa: I001  (tests.support must come before parley_client)

import asyncio
import random
from typing import Any

import pytest

import tests.support  # noqa: F401  (puts clients/python on sys.path first)
from parley_client import ParleyClient, ParleyError, RoomState, apply
from parley_client.transport import versioned_url
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import Collector, entry_seq, fast_client, make_room, make_user_token, wait_for

ROOM = "lobby"
ADA, BOB = {"id": 1, "username": "ada"}, {"id": 2, "username": "bob"}
# The edit bucket's defaults (2/s, burst 20) are for people; these tests make bursts of requests.
RELAXED_EDITS = {"PARLEY_EDITS_PER_SEC": "100000", "PARLEY_EDITS_BURST": "100000"}


# --- apply(), on its own ---------------------------------------------------------------------

def _message(seq: int, text: str, author: dict[str, Any] = ADA, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "room": ROOM, "message": {
        "room": ROOM, "seq": seq, "id": 100 + seq, "client_id": None, "author": author, "text": text,
        "ts": "2026-12-02T10:00:00.000Z", **extra}}


def _reaction(seq: int, target: int, emoji: str, user: dict[str, Any], op: str, count: int) -> dict[str, Any]:
    return {"type": "reaction", "room": ROOM, "seq": seq, "target": target, "emoji": emoji, "user": user,
            "op": op, "count": count}


def _log() -> list[dict[str, Any]]:
    return [
        _message(1, "hello"),
        _message(2, "re: hello", BOB, reply_to={"seq": 1, "author": ADA, "excerpt": "hello", "deleted": False}),
        {"type": "edit", "room": ROOM, "seq": 3, "target": 1, "text": "hello @bob " + "x" * 200,
         "edited_at": "2026-12-02T10:00:01.000Z", "by": ADA, "mentions": [BOB]},
        _reaction(4, 1, "👍", BOB, "add", 1),
        _reaction(5, 1, "🎉", ADA, "add", 1),
        _reaction(6, 1, "👍", ADA, "add", 2),
        _reaction(7, 1, "👍", BOB, "remove", 1),
        _reaction(8, 2, "👍🏽", ADA, "add", 1),
    ]


def test_apply_folds_edits_reactions_and_reply_quotes() -> None:
    state: dict[int, dict[str, Any]] = {}
    for entry in _log():
        apply(state, entry, me=ADA["id"])
    first, reply = state[1], state[2]
    assert first["text"].startswith("hello @bob") and first["edited_at"] == "2026-12-02T10:00:01.000Z"
    assert first["mentions"] == [BOB] and "mention_room" not in first
    # In the order each emoji was first added; `me` from ada's own reaction entries.
    assert first["reactions"] == [{"emoji": "👍", "count": 1, "me": True}, {"emoji": "🎉", "count": 1, "me": True}]
    assert reply["reply_to"] == {"seq": 1, "author": ADA, "excerpt": first["text"][:100], "deleted": False}
    assert reply["reactions"] == [{"emoji": "👍🏽", "count": 1, "me": True}]
    # Bob's view of the same log: the same counts, his own `me`.
    bob: dict[int, dict[str, Any]] = {}
    for entry in _log():
        apply(bob, entry, me=BOB["id"])
    assert bob[1]["reactions"] == [{"emoji": "👍", "count": 1, "me": False}, {"emoji": "🎉", "count": 1, "me": False}]


def test_apply_delete_makes_a_tombstone_and_later_entries_leave_it_one() -> None:
    state: dict[int, dict[str, Any]] = {}
    log = [*_log(), {"type": "delete", "room": ROOM, "seq": 9, "target": 1, "by": ADA}]
    for entry in log:
        apply(state, entry, me=ADA["id"])
    tomb = state[1]
    assert tomb["deleted"] is True and tomb["text"] == ""
    assert not {"mentions", "mention_room", "reactions", "edited_at"} & tomb.keys()
    assert state[2]["reply_to"] == {"seq": 1, "author": ADA, "excerpt": "", "deleted": True}
    # An edit read back from the log after the delete (text ""), a late reaction: still a tombstone.
    apply(state, {"type": "edit", "room": ROOM, "seq": 3, "target": 1, "text": "", "edited_at": "x", "by": ADA})
    apply(state, _reaction(10, 1, "👍", ADA, "add", 1), me=ADA["id"])
    assert state[1] == tomb


def test_apply_is_idempotent_and_ignores_what_it_does_not_hold() -> None:
    once: dict[int, dict[str, Any]] = {}
    twice: dict[int, dict[str, Any]] = {}
    for entry in _log():
        apply(once, entry, me=1)
    for entry in _log() + _log():  # every event is absolute (protocol §10)
        apply(twice, entry, me=1)
    assert once == twice
    # A page's message with reactions, then its `message` event read again (a resume): kept.
    held = {1: {**_log()[0]["message"], "reactions": [{"emoji": "👍", "count": 3, "me": False}]}}
    apply(held, _log()[0])
    assert held[1]["reactions"] == [{"emoji": "👍", "count": 3, "me": False}]
    assert apply({}, _reaction(4, 99, "👍", ADA, "add", 1)) is None  # older than what is held
    assert apply({}, {"type": "presence", "room": ROOM}) is None
    # Reaching count 0 removes the emoji; the field goes once no emoji is left.
    state: dict[int, dict[str, Any]] = {}
    apply(state, _log()[0])
    apply(state, _reaction(2, 1, "👍", BOB, "add", 1), me=1)
    apply(state, _reaction(3, 1, "👍", BOB, "remove", 0), me=1)
    assert "reactions" not in state[1]


def test_room_state_orders_entries_of_every_kind() -> None:
    room = RoomState(ROOM, epoch="e")
    log = _log()
    delivered = []
    for entry in [log[2], log[0], log[4], log[1], log[3], log[3], log[7], log[6], log[5]]:
        delivered += [entry_seq(e) for e in room.offer(entry)]
    assert delivered == list(range(1, 9))
    assert room.stats.duplicates == 1 and room.high_seq == 8


def test_room_state_catch_up_gap_reaches_history_until_without_pending() -> None:
    room = RoomState(ROOM, epoch="e", high_seq=4)
    room.history_until = 9
    assert room.gap() == (5, 10)  # nothing held back, but seqs 5..9 are still to be paged
    assert room.skip_to(9) == [] and room.stats.skipped == 5 and room.gap() is None


def test_the_socket_url_asks_for_version_2() -> None:
    assert versioned_url("ws://h:8000/ws/chat/") == "ws://h:8000/ws/chat/?protocol=2"
    assert versioned_url("wss://h/chat/ws/chat/?x=1") == "wss://h/chat/ws/chat/?x=1&protocol=2"
    assert versioned_url("ws://h/ws/chat/?protocol=1") == "ws://h/ws/chat/?protocol=1"  # asked: left alone


# --- against real servers --------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


async def _pair(server: Any, **kw: Any) -> tuple[tuple[ParleyClient, Collector, str], tuple[ParleyClient, Collector, str]]:
    await make_room(ROOM)
    out = []
    for name in ("ada", "bob"):
        _, token = await make_user_token(name)
        client = fast_client(server.ws_url, token, **kw)
        await client.start()
        collector = Collector(client)
        await client.join(ROOM)
        out.append((client, collector, token))
    return out[0], out[1]


async def _pages(client: ParleyClient) -> dict[int, dict[str, Any]]:
    """Every message of the room as the server's pages show it to this client (`history`,
    read from the database, with the reader's `me`), by seq."""
    out: dict[int, dict[str, Any]] = {}
    before: int | None = None
    while True:
        page = await client.history(ROOM, before=before, limit=100)
        out.update({m["seq"]: m for m in page["messages"]})
        if not page["has_more"] or not page["messages"]:
            return dict(sorted(out.items()))
        before = page["messages"][0]["seq"]


async def _settled(server: Any, members: list[tuple[ParleyClient, Collector, str]]) -> None:
    """Every member's entries are 1..last_seq once each, and their folded view of every message
    equals the server's pages (socket and HTTP, with their own `me`)."""
    rooms = (await asyncio.to_thread(server.api, "GET", "/api/rooms", members[0][2]))["rooms"]
    last_seq = next(r["last_seq"] for r in rooms if r["slug"] == ROOM)
    for client, collector, _ in members:
        await wait_for(lambda c=collector: c.entry_seqs(ROOM)[-1:] == [last_seq], 15,
                       f"{client.user} to reach seq {last_seq}; has {collector.entry_seqs(ROOM)[-3:]}")
    await asyncio.sleep(0.3)  # anything doubled would arrive now
    for client, collector, token in members:
        assert collector.entry_seqs(ROOM) == list(range(1, last_seq + 1)), client.user
        db = await _pages(client)
        # The HTTP API's pages (GET …/messages) are the same objects, `me` included.
        http = {m["seq"]: m for m in await asyncio.to_thread(server.all_messages, ROOM, token)}
        assert http == db, client.user
        view = collector.state(ROOM)
        assert view.keys() == db.keys(), client.user
        for seq, message in db.items():
            assert view[seq] == message, (client.user, seq)


@pytestmark_db
async def test_every_conversation_request_and_its_errors(servers: Any) -> None:
    server = servers(extra_env=RELAXED_EDITS)
    (ada, a_events, a_token), (bob, b_events, b_token) = await _pair(server)
    assert ada.hello["protocol"] == 2
    first = await ada.send(ROOM, "hello **world**")
    reply = await bob.send(ROOM, "a reply", reply_to=first["seq"])
    edited = await ada.edit(ROOM, first["seq"], "hello @bob")
    assert edited["type"] == "edited" and edited["target"] == first["seq"] and edited["seq"] == reply["seq"] + 1
    assert (await ada.edit(ROOM, first["seq"], "hello @bob"))["seq"] is None  # no change, no entry
    thumbs = await bob.react(ROOM, first["seq"], "👍")
    assert (thumbs["type"], thumbs["op"], thumbs["count"], thumbs["emoji"]) == ("reacted", "add", 1, "👍")
    assert (await ada.react(ROOM, first["seq"], "👍"))["count"] == 2
    again = await ada.react(ROOM, first["seq"], "👍")  # the same reaction twice is one
    assert again["seq"] is None and again["count"] == 2
    gone = await bob.unreact(ROOM, first["seq"], "👍")
    assert gone["op"] == "remove" and gone["count"] == 1
    assert (await bob.unreact(ROOM, first["seq"], "👍"))["seq"] is None
    await ada.react(ROOM, reply["seq"], "👩🏽‍💻")  # a ZWJ sequence with a skin tone: one emoji

    for call, code in [
        (bob.edit(ROOM, first["seq"], "not mine"), "forbidden"),
        (bob.delete(ROOM, first["seq"]), "forbidden"),
        (ada.react(ROOM, 10_000, "👍"), "message_not_found"),
        (ada.react(ROOM, edited["seq"], "👍"), "message_not_found"),  # an edit entry is no message
        (ada.react(ROOM, first["seq"], "not an emoji"), "bad_field"),
        (ada.edit(ROOM, first["seq"], "   "), "text_empty"),
        (ada.send(ROOM, "reply to nothing", reply_to=10_000), "message_not_found"),
    ]:
        with pytest.raises(ParleyError) as err:
            await asyncio.wait_for(call, 10)
        assert err.value.code == code

    deleted = await ada.delete(ROOM, first["seq"])
    assert deleted["type"] == "deleted" and deleted["target"] == first["seq"] and isinstance(deleted["seq"], int)
    assert (await ada.delete(ROOM, first["seq"]))["seq"] is None  # a tombstone deleted again
    for call in (ada.edit(ROOM, first["seq"], "back"), bob.react(ROOM, first["seq"], "🎉"),
                 bob.send(ROOM, "reply to a tombstone", reply_to=first["seq"])):
        with pytest.raises(ParleyError) as err:
            await asyncio.wait_for(call, 10)
        assert err.value.code == "message_deleted"
    assert ada.pending_sends == 0 and bob.pending_sends == 0

    await _settled(server, [(ada, a_events, a_token), (bob, b_events, b_token)])
    kinds = [e["type"] for e in b_events.entries[ROOM]]
    assert kinds == ["message", "message", "edit", "reaction", "reaction", "reaction", "reaction", "delete"]
    tomb = b_events.state(ROOM)[first["seq"]]
    assert tomb["deleted"] is True and tomb["text"] == ""
    assert b_events.state(ROOM)[reply["seq"]]["reply_to"]["deleted"] is True
    for client in (ada, bob):
        await client.close()
    await a_events.stop()
    await b_events.stop()


@pytestmark_db
async def test_entries_arrive_in_order_across_forced_reconnects(servers: Any) -> None:
    """Bob's socket is dropped (no close frame) again and again while ada posts, edits, reacts
    and deletes: he receives every entry once, in seq order, and ends with the server's view."""
    server = servers(extra_env=RELAXED_EDITS)
    (ada, a_events, a_token), (bob, b_events, b_token) = await _pair(server)
    seqs: list[int] = []
    deleted: set[int] = set()
    aborts = 0
    for i in range(24):
        if i % 4 == 1:
            # Once the last resume is through: each drop is then one recovered resume.
            await wait_for(lambda: bob.connected and bob.room(ROOM).joined_on is not None, 10, "bob to rejoin")
            bob.abort_connection()
            aborts += 1
        ack = await ada.send(ROOM, f"m{i}", reply_to=seqs[-1] if seqs and i % 3 == 0 else None)
        seqs.append(ack["seq"])
        if seqs[i // 2] not in deleted:
            await ada.react(ROOM, seqs[i // 2], "👍" if i % 2 else "🎉")
        if i % 5 == 2 and seqs[i - 1] not in deleted:
            await ada.edit(ROOM, seqs[i - 1], f"m{i - 1} edited")
        if i % 7 == 6:
            await ada.delete(ROOM, seqs[i - 3])
            deleted.add(seqs[i - 3])
            await bob.react(ROOM, seqs[i], "👀")  # bob's own requests cross his reconnects too
    await _settled(server, [(ada, a_events, a_token), (bob, b_events, b_token)])
    assert bob.stats.connections == 1 + aborts and bob.stats.resumes_recovered == aborts == 6
    stats = bob.room(ROOM).stats
    assert stats.duplicates == 0 and stats.out_of_order == 0 and stats.resets == 0
    for client in (ada, bob):
        await client.close()
    await a_events.stop()
    await b_events.stop()


@pytestmark_db
async def test_a_resume_after_an_edit_sees_the_edit(servers: Any, unused_tcp_port: int) -> None:
    server = servers(extra_env=RELAXED_EDITS)
    (ada, a_events, a_token), (bob, b_events, b_token) = await _pair(server)
    first = await ada.send(ROOM, "before")
    await wait_for(lambda: b_events.entry_seqs(ROOM) == [first["seq"]], 5, "bob to see the message")
    real_url = bob.url
    bob.url = f"ws://127.0.0.1:{unused_tcp_port}/ws/chat/"  # nothing listens: bob stays away
    bob.abort_connection()
    await wait_for(lambda: not bob.connected, 5, "bob's connection to drop")
    edited = await ada.edit(ROOM, first["seq"], "after the edit")
    await ada.react(ROOM, first["seq"], "🎉")
    bob.url = real_url
    await wait_for(lambda: b_events.entry_seqs(ROOM)[-1:] == [edited["seq"] + 1], 15, "bob to resume")
    edit = next(e for e in b_events.entries[ROOM] if e["type"] == "edit")
    assert edit["text"] == "after the edit" and edit["target"] == first["seq"]
    assert bob.stats.resumes_recovered == 1 and bob.room(ROOM).stats.gap_fills == 0
    assert b_events.state(ROOM)[first["seq"]]["text"] == "after the edit"
    await _settled(server, [(ada, a_events, a_token), (bob, b_events, b_token)])
    for client in (ada, bob):
        await client.close()
    await a_events.stop()
    await b_events.stop()


@pytestmark_db
async def test_a_lost_entry_is_filled_by_a_resume_join(servers: Any) -> None:
    """An entry frame lost on the way in (dropped here, before the client reads it) leaves a
    gap that history cannot fill (pages hold messages only): the client resumes on the same
    socket, and the resume's events are the missing entries."""
    server = servers(extra_env=RELAXED_EDITS)
    (ada, a_events, a_token), (bob, b_events, b_token) = await _pair(server, gap_fill_delay=0.05)
    listener = bob._transport.listener
    real_frame = listener.frame
    dropped: list[dict[str, Any]] = []

    def lossy(conn: Any, frame: dict[str, Any]) -> None:
        if frame.get("type") in ("edit", "reaction") and len(dropped) < 2:
            dropped.append(frame)
            return
        real_frame(conn, frame)

    listener.frame = lossy  # type: ignore[method-assign]
    first = await ada.send(ROOM, "one")
    await ada.edit(ROOM, first["seq"], "one, edited")  # lost
    await ada.react(ROOM, first["seq"], "👍")  # lost
    await ada.send(ROOM, "two")  # arrives ahead of the gap: held back until it is filled
    await _settled(server, [(ada, a_events, a_token), (bob, b_events, b_token)])
    assert [e["type"] for e in dropped] == ["edit", "reaction"]
    stats = bob.room(ROOM).stats
    assert stats.gap_fills >= 1 and stats.out_of_order == 1 and stats.skipped == 0
    assert bob.stats.connections == 1 and bob.stats.resumes_recovered == 0  # same socket, not counted as one
    for client in (ada, bob):
        await client.close()
    await a_events.stop()
    await b_events.stop()


@pytest.mark.slow
@pytestmark_db
async def test_a_refused_resume_catches_up_messages_and_says_what_may_be_stale(
        servers: Any, unused_tcp_port: int) -> None:
    """Away for more entries than PARLEY_RESUME_MAX_GAP: the client pages the messages it missed
    from history (each once, in order, in its current state), passes over the seqs of the
    entries pages fold in, and emits `stale`: messages it had may have changed meanwhile."""
    env = {**RELAXED_EDITS, "PARLEY_RESUME_MAX_GAP": "3", "PARLEY_HISTORY_PAGE_MAX": "4",
           "PARLEY_HISTORY_PAGE_DEFAULT": "4"}
    server = servers(extra_env=env)
    (ada, a_events, _), (bob, b_events, _) = await _pair(server)
    old = await ada.send(ROOM, "old")
    await wait_for(lambda: b_events.entry_seqs(ROOM) == [old["seq"]], 5, "bob to see the message")
    real_url = bob.url
    bob.url = f"ws://127.0.0.1:{unused_tcp_port}/ws/chat/"
    bob.abort_connection()
    await wait_for(lambda: not bob.connected, 5, "bob's connection to drop")
    await ada.edit(ROOM, old["seq"], "old, edited while bob was away")
    new = [await ada.send(ROOM, f"new {i}") for i in range(9)]
    await ada.react(ROOM, new[2]["seq"], "👍")
    await ada.edit(ROOM, new[4]["seq"], "new 4, edited")
    bob.url = real_url
    await wait_for(lambda: any(e["type"] == "stale" for e in b_events.events), 15, "a stale event")
    stale = next(e for e in b_events.events if e["type"] == "stale")
    assert stale == {"type": "stale", "room": ROOM, "through_seq": old["seq"]}
    got = [m for m in b_events.messages[ROOM] if m["seq"] > old["seq"]]
    assert [m["seq"] for m in got] == [a["seq"] for a in new]
    db = await _pages(bob)
    for m in got:  # current state: the reaction and the edit are folded in
        assert m == db[m["seq"]]
    assert bob.stats.resumes_refused == 1 and bob.stats.catchups == 1
    room = bob.room(ROOM)
    # The edit of `old`: the one seq no page holds (the later reaction and edit came live).
    assert room.stats.skipped >= 1 and room.stats.resets == 0 and room.high_seq >= new[-1]["seq"]
    view = b_events.state(ROOM)
    assert view[old["seq"]]["text"] == "old"  # what `stale` warns of
    # What it asks for: read again what you hold; then the view is the server's.
    page = await bob.history(ROOM, before=old["seq"] + 1, limit=10)
    view.update({m["seq"]: m for m in page["messages"]})
    assert view == db
    # Live delivery goes on from the caught-up log.
    later = await ada.send(ROOM, "later")
    await wait_for(lambda: b_events.seqs(ROOM)[-1:] == [later["seq"]], 5, "live delivery after the catch-up")
    for client in (ada, bob):
        await client.close()
    await a_events.stop()
    await b_events.stop()


@pytestmark_db
async def test_conversation_requests_stay_inside_the_default_edit_bucket(servers: Any) -> None:
    """Default PARLEY_EDITS_PER_SEC (2) and PARLEY_EDITS_BURST (20): 28 reactions at once are
    paced by the client, not refused (a refusal is a strike toward 4429)."""
    server = servers()
    (ada, a_events, a_token), (bob, b_events, b_token) = await _pair(server)
    limits = ada.hello["limits"]
    assert (limits["edits_per_sec"], limits["edits_burst"]) == (2, 20)
    targets = [(await ada.send(ROOM, f"m{i}"))["seq"] for i in range(4)]
    emoji = ["👍", "🎉", "👀", "🚀", "❤️", "😂", "🙏"]
    replies = await asyncio.wait_for(asyncio.gather(*(ada.react(ROOM, t, e) for t in targets for e in emoji)), 30)
    assert all(r["type"] == "reacted" and r["count"] == 1 for r in replies)
    assert ada.stats.paced_waits > 0 and ada.stats.connections == 1
    assert ada.stats.request_retries == 0  # no rate_limited was answered (it would be retried)
    await _settled(server, [(ada, a_events, a_token), (bob, b_events, b_token)])
    for client in (ada, bob):
        await client.close()
    await a_events.stop()
    await b_events.stop()


@pytest.mark.slow
@pytestmark_db
async def test_three_members_see_every_entry_once_across_drops_and_a_sigkill(servers: Any) -> None:
    """Three members post, reply, edit, react and delete at once while their sockets are dropped
    and the server is SIGKILLed and restarted: each receives every entry of the log once, in
    seq order, and ends with the server's view of every message."""
    server = servers(extra_env=RELAXED_EDITS)
    await make_room(ROOM)
    members: list[tuple[ParleyClient, Collector, str]] = []
    for name in ("ada", "bob", "cy"):
        _, token = await make_user_token(name)
        client = fast_client(server.ws_url, token)
        await client.start()
        members.append((client, Collector(client), token))
        await client.join(ROOM)
    posted: list[int] = []  # every member's messages, for the others' reactions
    refused: list[str] = []

    async def tolerate(call: Any) -> Any:
        # Another member may delete a message between our choosing it and our request landing.
        try:
            return await asyncio.wait_for(call, 60)
        except ParleyError as err:
            assert err.code == "message_deleted", err
            refused.append(err.code)
            return None

    async def member(i: int, client: ParleyClient) -> None:
        rng = random.Random(i)
        mine: list[int] = []
        for k in range(20):
            reply_to = rng.choice(posted) if posted and rng.random() < 0.3 else None
            ack = await tolerate(client.send(ROOM, f"{i}:{k}", reply_to=reply_to))
            if ack is not None:
                mine.append(ack["seq"])
                posted.append(ack["seq"])
            if mine and rng.random() < 0.4:
                await client.edit(ROOM, rng.choice(mine), f"{i}:{k} edited @ada", timeout=60)
            if posted:
                await tolerate(client.react(ROOM, rng.choice(posted), rng.choice(["👍", "🎉", "👀"])))
            if posted and rng.random() < 0.2:
                await tolerate(client.unreact(ROOM, rng.choice(posted), "👍"))
            if len(mine) > 3 and rng.random() < 0.15:
                await client.delete(ROOM, mine.pop(rng.randrange(len(mine))), timeout=60)
            await asyncio.sleep(rng.uniform(0.0, 0.03))

    async def chaos() -> None:
        rng = random.Random(99)
        for n in range(7):
            await asyncio.sleep(rng.uniform(0.1, 0.3))
            if n == 3:
                await asyncio.to_thread(server.kill)  # no close frames, no cleanup
                await asyncio.sleep(0.3)
                await asyncio.to_thread(server.start)  # same port, same database
                continue
            client = rng.choice(members)[0]
            if client.connected:
                client.abort_connection()

    await asyncio.wait_for(asyncio.gather(chaos(), *(member(i, c) for i, (c, _, _) in enumerate(members))), 120)
    await _settled(server, members)
    assert server.starts == 2
    kinds = {e["type"] for e in members[0][1].entries[ROOM]}
    assert kinds == {"message", "edit", "delete", "reaction"}
    for client, _, _ in members:
        assert client.stats.resumes_recovered >= 1
        stats = client.room(ROOM).stats
        assert (stats.duplicates, stats.out_of_order, stats.resets) == (0, 0, 0), (client.user, stats)
    for client, collector, _ in members:
        await client.close()
        await collector.stop()


async def _resume_cut_three_times(server: Any, *, like_the_servers: bool) -> tuple[Any, Any, dict[str, Any]]:
    """Ada drops her socket; while she is away bob posts a message, edits and reacts (seqs 2-4);
    her next three resumes are cut off right after their join frame is written, before
    `joined` can arrive. `like_the_servers`: each cut looks to her client like the server's (a
    drop without a close frame it did not make), not like her own abort."""
    (ada, a_events, a_token), (bob, b_events, b_token) = await _pair(server)
    first = await bob.send(ROOM, "before the drop")
    await wait_for(lambda: a_events.entry_seqs(ROOM) == [first["seq"]], 10, "ada to see the first message")
    requests = ada._sync._requests
    original = requests.request
    cut: list[int] = []
    away_done = asyncio.Event()

    async def cutting(conn: Any, frame: dict[str, Any], on_written: Any = None) -> dict[str, Any]:
        if frame.get("type") == "join" and "after_seq" in frame and len(cut) < 3:
            if not cut:
                await bob.send(ROOM, "while ada is away")
                await bob.edit(ROOM, first["seq"], "before the drop, edited")
                await bob.react(ROOM, first["seq"], "👍")
                away_done.set()
            cut.append(conn.id)

            def written() -> None:
                if on_written is not None:
                    on_written()
                conn.abort()  # the resume is out; its `joined` will never arrive on this socket
                conn.aborted_here = not like_the_servers

            return await original(conn, frame, written)
        return await original(conn, frame, on_written)

    requests.request = cutting  # type: ignore[method-assign]
    ada.abort_connection()
    await asyncio.wait_for(away_done.wait(), 30)
    return (ada, a_events, a_token), (bob, b_events, b_token), {"cut": cut, "first": first}


@pytestmark_db
async def test_resumes_cut_off_by_the_client_itself_stay_resumes(servers: Any) -> None:
    """A resume whose connection this client drops before `joined` arrives (its own abort, a
    dead heartbeat) is sent again as a resume however often that happens: only the server's
    cut-offs (4413, a drop without a close frame) turn it into a fresh join paged from history,
    which passes over the gap's edits and reactions."""
    server = servers(extra_env=RELAXED_EDITS)
    a, b, seen = await _resume_cut_three_times(server, like_the_servers=False)
    await _settled(server, [a, b])
    ada = a[0]
    assert len(seen["cut"]) == 3
    assert ada.room(ROOM).stats.skipped == 0 and ada.stats.catchups == 0 and ada.stats.resumes_recovered >= 1
    for client, collector, _ in (a, b):
        await client.close()
        await collector.stop()


@pytestmark_db
async def test_two_resumes_cut_off_by_the_server_become_a_catch_up_through_last_seq(servers: Any) -> None:
    """After two resumes the server cut off, the client joins fresh and catches up from history:
    the page's messages are delivered, the edit and reaction folded into them are passed over
    up to the room's last_seq as the join read it (none of them comes live), the application
    is told older messages may be stale, and the next live entry follows with no gap to fill."""
    server = servers(extra_env=RELAXED_EDITS)
    (ada, a_events, _), (bob, b_events, _), seen = await _resume_cut_three_times(server, like_the_servers=True)
    await wait_for(lambda: ada.room(ROOM).high_seq == 4, 15, "ada's catch-up to reach seq 4")
    assert len(seen["cut"]) == 2  # the third join was a fresh one
    st = ada.room(ROOM)
    assert a_events.entry_seqs(ROOM) == [1, 2] and st.stats.skipped == 2 and ada.stats.catchups == 1
    await wait_for(lambda: any(e["type"] == "stale" for e in a_events.events), 5, "a stale event")
    assert [e for e in a_events.events if e["type"] == "stale"] == [{"type": "stale", "room": ROOM, "through_seq": 1}]
    fills = st.stats.gap_fills
    later = await bob.send(ROOM, "after the catch-up")
    await wait_for(lambda: a_events.entry_seqs(ROOM)[-1:] == [later["seq"]], 10, "ada to see the next message live")
    assert later["seq"] == 5 and st.stats.gap_fills == fills
    for client, collector in ((ada, a_events), (bob, b_events)):
        await client.close()
        await collector.stop()


@pytestmark_db
async def test_a_fresh_join_and_the_backlog_of_a_log_with_edits_and_reactions(servers: Any) -> None:
    """A page folds the entries in: a fresh join's view is its page, and live delivery goes on
    after the room's last_seq (nothing the page shows comes again); the backlog (emit_backlog=True) pages the messages from history and passes
    over the other seqs."""
    server = servers(extra_env={**RELAXED_EDITS, "PARLEY_HISTORY_PAGE_MAX": "3", "PARLEY_HISTORY_PAGE_DEFAULT": "3"})
    await make_room(ROOM)
    _, a_token = await make_user_token("ada")
    _, b_token = await make_user_token("bob")
    async with fast_client(server.ws_url, a_token) as ada:
        await ada.join(ROOM)
        acks = [await ada.send(ROOM, f"m{i}") for i in range(7)]
        await ada.edit(ROOM, acks[1]["seq"], "m1 edited")
        await ada.react(ROOM, acks[2]["seq"], "👍")
        await ada.delete(ROOM, acks[3]["seq"])
        await ada.react(ROOM, acks[6]["seq"], "🎉")  # after the newest message: in no page's seqs
        last = await ada.react(ROOM, acks[5]["seq"], "👀")
        async with fast_client(server.ws_url, b_token) as fresh:
            events = Collector(fresh)
            joined = await fresh.join(ROOM)
            assert [m["seq"] for m in joined["messages"]] == [a["seq"] for a in acks[-3:]]
            pages = await _pages(fresh)
            assert {m["seq"]: m for m in joined["messages"]} == {s: m for s, m in pages.items() if s >= acks[-3]["seq"]}
            later = await ada.send(ROOM, "later")
            await wait_for(lambda: events.entry_seqs(ROOM)[-1:] == [later["seq"]], 5, "the next entry")
            # Live delivery starts after the room's last_seq as the join read it: the entries
            # the page already folded in are not sent again (docs/protocol.md §10, "Pages").
            assert joined["room"]["last_seq"] == last["seq"]
            assert events.entry_seqs(ROOM) == [later["seq"]]
            assert later["seq"] == last["seq"] + 1
            view = events.state(ROOM, start=joined["messages"])
            assert view == {s: m for s, m in (await _pages(fresh)).items() if s >= acks[-3]["seq"]}
            stats = fresh.room(ROOM).stats
            assert (stats.gap_fills, stats.out_of_order, stats.duplicates, stats.skipped) == (0, 0, 0, 0)
            await events.stop()
    async with fast_client(server.ws_url, b_token, emit_backlog=True) as backlog:
        events = Collector(backlog)
        await backlog.join(ROOM)
        await wait_for(lambda: events.entry_seqs(ROOM)[-1:] == [later["seq"]], 10, "the whole backlog")
        await asyncio.sleep(0.2)
        # Every message once, in order, as it is now; the five other seqs passed over.
        assert events.seqs(ROOM) == [a["seq"] for a in [*acks, later]]
        assert events.state(ROOM) == await _pages(backlog)
        room = backlog.room(ROOM)
        assert room.stats.skipped == 5 and room.stats.gap_fills >= 3  # pages of 3
        assert not [e for e in events.events if e["type"] in ("stale", "reset")]
        await events.stop()


def test_the_api_url_is_under_the_sockets_prefix() -> None:
    from parley_client.uploads import api_base

    assert api_base("ws://127.0.0.1:8000/ws/chat/") == "http://127.0.0.1:8000/api/"
    assert api_base("wss://chat.example.com/parley/ws/chat/?protocol=2") == "https://chat.example.com/parley/api/"
    with pytest.raises(ValueError, match="api_url"):
        api_base("wss://chat.example.com/socket")


@pytestmark_db
async def test_a_file_uploaded_by_the_client_goes_with_its_message(servers: Any) -> None:
    """upload() puts a file in the room over HTTP with the client's token; send(attachments=)
    carries it; the other member gets the message with it, and the file's URL serves its bytes.
    A refused file is a ParleyError with the server's code."""
    import urllib.request

    server = servers(extra_env={"PARLEY_UPLOAD_MAX_BYTES": "1000"})
    (ada, a_events, a_token), (bob, b_events, _) = await _pair(server)
    up = await ada.upload(ROOM, b"hello, file", "notes.txt")
    assert (up["name"], up["size"]) == ("notes.txt", 11)
    ack = await ada.send(ROOM, "see the notes", attachments=[up["id"]])
    await wait_for(lambda: b_events.seqs(ROOM)[-1:] == [ack["seq"]], 10, "bob to get the message")
    got = b_events.messages[ROOM][-1]
    assert [a["id"] for a in got["attachments"]] == [up["id"]]
    request = urllib.request.Request(server.http_url + got["attachments"][0]["url"],
                                     headers={"Authorization": f"Bearer {a_token}"})
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).read())
    assert body == b"hello, file"
    with pytest.raises(ParleyError) as refused:
        await ada.upload(ROOM, b"x" * 1001, "big.bin")
    assert refused.value.code == "file_too_large" and refused.value.frame["status"] == 413
    for client, collector in ((ada, a_events), (bob, b_events)):
        await client.close()
        await collector.stop()
