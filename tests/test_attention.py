"""Attention (docs/protocol.md §11): the room list with unread and mention counts, read markers
and per-room settings, on version 2 sockets through the real ASGI application and over HTTP.
Runs on SQLite and on PostgreSQL + Redis (the counts' SQL differs by vendor)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

import parley
from parley import conversation, selectors, services
from parley.models import Membership, Message, Room, RoomState
from tests.conftest import make_room, make_user, override_parley, user

pytestmark = pytest.mark.django_db(transaction=True)


def by_slug(frame: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["room"]["slug"]: s for s in frame["rooms"]}


@database_sync_to_async
def post(slug: str, text: str, author: Any) -> Any:
    return parley.post_message(slug, text, author=author)


@database_sync_to_async
def state_of(u: Any, slug: str) -> RoomState | None:
    return RoomState.objects.filter(user=u, room__slug=slug).first()


async def wait_for_state(u: Any, slug: str) -> RoomState:
    """The RoomState a join writes after its reply (parley.commands._open_state)."""
    for _ in range(100):
        state = await state_of(u, slug)
        if state is not None:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"no RoomState of {u} in {slug}")


def http(u: Any, method: str, path: str, body: Any = None) -> Any:
    raw = services.token_create(user=u, name="t")[1]
    headers = {"Authorization": f"Bearer {raw}"}
    client = Client()
    if method == "get":
        return client.get(path, headers=headers)
    return getattr(client, method)(path, data=json.dumps(body) if body is not None else None,
                                   content_type="application/json", headers=headers)


async def test_rooms_follows_hello_on_v2_only_and_lists_what_the_user_has(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    await make_room("secret", owner=bob, private=True)
    await make_room("zoo")
    fresh = await connect(ada, protocol=2)
    assert fresh.rooms == {"type": "rooms", "rooms": []}  # nothing opened yet, no private room
    v1 = await connect(ada)
    await v1.join("lobby")
    assert await v1.nothing("rooms")  # version 1 never gets it
    await wait_for_state(ada, "lobby")  # a join of a public room, by any version, lists it
    await database_sync_to_async(lambda: services.membership_add(room=Room.objects.get(slug="secret"), user=ada))()
    again = await connect(ada, protocol=2)
    listed = by_slug(again.rooms)
    assert sorted(listed) == ["lobby", "secret"]  # zoo: never opened; secret: a member
    assert listed["lobby"] == {"room": listed["lobby"]["room"], "last_read_seq": 0, "unread": 0,
                               "mentions": 0, "notify": "mentions", "muted": False}
    assert listed["lobby"]["room"]["slug"] == "lobby"
    reply = await again.request({"type": "rooms"})
    assert reply["type"] == "rooms" and by_slug(reply) == listed


async def test_unread_and_mentions_count_others_messages_after_the_marker(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    await post("lobby", "before ada came", bob)
    client = await connect(ada, protocol=2)
    joined = await client.join("lobby")
    state = await wait_for_state(ada, "lobby")
    assert state.last_read_seq == joined["room"]["last_seq"] == 1  # read up to the join's last_seq
    await post("lobby", "one", bob)
    await post("lobby", "hi @ada", bob)
    await post("lobby", "mine", ada)  # the user's own messages are never unread
    gone = await post("lobby", "to be deleted @ada", bob)
    await database_sync_to_async(lambda: conversation.message_delete(
        room=Room.objects.get(slug="lobby"), actor=bob, seq=gone.seq, source="python"))()
    listed = by_slug(await client.request({"type": "rooms"}))
    assert (listed["lobby"]["unread"], listed["lobby"]["mentions"]) == (2, 1)


async def test_read_moves_forward_only_is_clamped_and_tells_the_other_sockets(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    for text in ("a", "b @ada", "c"):
        await post("lobby", text, bob)
    here, there = await connect(ada, protocol=2), await connect(ada, protocol=2)
    # No join needed: access is what counts.
    reply = await here.request({"type": "read", "room": "lobby", "seq": 2})
    assert {k: reply[k] for k in ("type", "room", "seq", "unread", "mentions")} == \
        {"type": "read", "room": "lobby", "seq": 2, "unread": 1, "mentions": 0}
    told = await there.recv_type("read")
    assert told == {"type": "read", "room": "lobby", "seq": 2, "unread": 1, "mentions": 0}
    assert await here.nothing("read")  # its own reply said so already
    back = await here.request({"type": "read", "room": "lobby", "seq": 1})
    assert back["seq"] == 2  # never backwards
    assert await there.nothing("read")  # nothing moved, nothing told
    ahead = await here.request({"type": "read", "room": "lobby", "seq": 10**9})
    assert (ahead["seq"], ahead["unread"]) == (3, 0)  # clamped to the room's last_seq
    assert (await there.recv_type("read"))["seq"] == 3


async def test_read_refusals(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("secret", owner=bob, private=True)
    client = await connect(ada, protocol=2)
    for frame, code in [({"room": "secret", "seq": 1}, "room_not_found"),
                        ({"room": "nope", "seq": 1}, "room_not_found"),
                        ({"room": "secret"}, "missing_field"),
                        ({"room": "secret", "seq": -1}, "bad_field"),
                        ({"room": "secret", "seq": True}, "bad_field"),
                        ({"seq": 1}, "missing_field")]:
        reply = await client.request({"type": "read", **frame})
        assert (reply["type"], reply["code"]) == ("error", code), (frame, reply)
    v1 = await connect(ada)
    for kind in ("read", "rooms"):
        reply = await v1.request({"type": kind, "room": "secret", "seq": 1})
        assert reply["code"] == "unknown_type"


async def test_read_budget_refuses_with_retry_after(connect):
    ada = await make_user("ada")
    await make_room("lobby")
    with override_parley(READS_BURST=3, READS_PER_SEC=0.01):
        client = await connect(ada, protocol=2)  # the snapshot after hello is not charged
        for _ in range(3):
            assert (await client.request({"type": "read", "room": "lobby", "seq": 0}))["type"] == "read"
        refused = await client.request({"type": "rooms"})
        assert refused["code"] == "rate_limited" and refused["retry_after_ms"] > 0
        limited = await database_sync_to_async(http)(ada, "put", "/api/rooms/lobby/read", {"seq": 0})
        assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1  # one budget, HTTP too


async def test_counts_are_capped(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    client = await connect(ada, protocol=2)
    await client.join("lobby")
    await wait_for_state(ada, "lobby")
    for i in range(5):
        await post("lobby", f"@ada {i}", bob)
    with override_parley(UNREAD_COUNT_MAX=3):
        listed = by_slug(await client.request({"type": "rooms"}))
    assert (listed["lobby"]["unread"], listed["lobby"]["mentions"]) == (3, 3)


def test_the_list_is_one_query_whatever_its_length():
    ada, bob = user("ada"), user("bob")
    for i in range(6):
        room = services.room_create(slug=f"r{i}", title="R", owner=bob, is_private=i % 2 == 0)
        Membership.objects.get_or_create(room=room, user=ada)
        if i % 2:
            services.room_states_open(opened=[(ada.pk, room.pk, 0)])
        parley.post_message(room.slug, "hello @ada", author=bob)
    with CaptureQueriesContext(connection) as queries:
        rows = selectors.room_state_list(user=ada)
    assert len(queries) == 1
    assert [(r.slug, counts) for r, _, counts in rows] == [(f"r{i}", (1, 1)) for i in range(6)]
    with override_parley(MAX_ROOMS_LISTED=2):
        assert [r.slug for r, _, _ in selectors.room_state_list(user=ada)] == ["r0", "r1"]


async def test_http_state_read_and_settings(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    await make_room("secret", owner=bob, private=True)
    for text in ("a", "b"):
        await post("lobby", text, bob)
    watcher = await connect(ada, protocol=2)
    call = database_sync_to_async(http)
    read = await call(ada, "put", "/api/rooms/lobby/read", {"seq": 1})
    assert read.status_code == 200, read.content
    assert {k: read.json()["state"][k] for k in ("last_read_seq", "unread", "mentions")} == \
        {"last_read_seq": 1, "unread": 1, "mentions": 0}
    assert (await watcher.recv_type("read"))["seq"] == 1  # HTTP skips no socket
    listed = (await call(ada, "get", "/api/rooms/state")).json()
    assert [s["room"]["slug"] for s in listed["rooms"]] == ["lobby"]
    changed = await call(ada, "patch", "/api/rooms/lobby/state", {"notify": "all", "muted": True})
    assert changed.status_code == 200
    assert (changed.json()["state"]["notify"], changed.json()["state"]["muted"]) == ("all", True)
    frame = await watcher.recv_type("room_state")
    assert frame["state"] == changed.json()["state"]
    default = await call(ada, "patch", "/api/rooms/lobby/state", {"notify": ""})
    assert default.json()["state"]["notify"] == "mentions"  # "" is the room's default again
    for method, path, body, status, code in [
            ("patch", "/api/rooms/lobby/state", {"notify": "loud"}, 400, "bad_field"),
            ("patch", "/api/rooms/lobby/state", {"muted": "yes"}, 400, "bad_field"),
            ("put", "/api/rooms/lobby/read", {}, 400, "missing_field"),
            ("put", "/api/rooms/lobby/read", {"seq": "1"}, 400, "bad_field"),
            ("put", "/api/rooms/secret/read", {"seq": 1}, 404, "room_not_found"),
            ("patch", "/api/rooms/secret/state", {"muted": True}, 404, "room_not_found"),
            ("get", "/api/rooms/lobby/read", None, 405, "method_not_allowed")]:
        response = await call(ada, method, path, body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (path, body)
    anonymous = await database_sync_to_async(lambda: Client().get("/api/rooms/state"))()
    assert anonymous.status_code == 401


async def _listed_again(u: Any, slug: str) -> bool:
    for _ in range(100):
        state = await state_of(u, slug)
        if state is not None and state.listed:
            return True
        await asyncio.sleep(0.02)
    return False


@database_sync_to_async
def _left_on_another_process(u: Any, room: Room, *, tell_sockets: bool) -> None:
    """What another server process's room_leave does: the room leaves the user's list there
    (this process's memory of the pair untouched), and `room_removed` reaches the user's
    sockets through their event channel if `tell_sockets`."""
    RoomState.objects.filter(user=u, room=room).update(listed=False)
    if tell_sockets:
        from parley import fanout

        frame = {"type": "room_removed", "room": room.slug, "reason": "left"}
        fanout.deliver_user_from_sync(u.pk, fanout.user_event(user_id=u.pk, frame=frame, leave_room_id=room.pk))


async def _in_the_lobby(connect: Any) -> tuple[Any, Room, Any]:
    """Ada, the public lobby, and her version 2 socket that joined it (so it is in her list)."""
    ada = await make_user("ada")
    room = await make_room("lobby")
    client = await connect(ada, protocol=2)
    await client.join("lobby")
    assert await _listed_again(ada, "lobby")
    return ada, room, client


async def test_a_leave_on_another_process_is_undone_by_a_join_here(connect):
    """This process remembers which public rooms a user has listed, so a join writes nothing
    after the first; a leave on another process must not leave that memory standing: the
    `room_removed` reaching the user's socket here forgets it, and the next join lists the
    room again."""
    ada, room, client = await _in_the_lobby(connect)
    await _left_on_another_process(ada, room, tell_sockets=True)
    assert (await client.recv_type("room_removed"))["reason"] == "left"
    await client.join("lobby")
    assert await _listed_again(ada, "lobby")


async def test_a_leave_on_another_process_while_no_socket_was_here_is_undone_too(connect):
    """With no socket of the user here, another process's leave reaches nothing here: the
    memory went with the user's last socket, and a later join lists the room again."""
    ada, room, first = await _in_the_lobby(connect)
    await first.close()
    await _left_on_another_process(ada, room, tell_sockets=False)
    again = await connect(ada, protocol=2)
    assert again.rooms["rooms"] == []
    await again.join("lobby")
    assert await _listed_again(ada, "lobby")


async def test_a_dm_defaults_to_all(connect):
    from parley import rooms

    ada, bob = await make_user("ada"), await make_user("bob")
    room, created = await database_sync_to_async(rooms.dm_open)(creator=bob, usernames=["ada"])
    assert created and room.kind == "dm"
    client = await connect(ada, protocol=2)
    assert by_slug(client.rooms)[room.slug]["notify"] == "all"


async def test_joining_a_public_room_again_lists_it_and_keeps_the_marker(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    room = await make_room("lobby")
    await post("lobby", "one", bob)
    await database_sync_to_async(RoomState.objects.create)(user=ada, room=room, last_read_seq=0, listed=False)
    client = await connect(ada, protocol=2)
    assert client.rooms["rooms"] == []  # left (unlisted): not in the list
    await client.join("lobby")
    for _ in range(100):
        state = await state_of(ada, "lobby")
        if state is not None and state.listed:
            break
        await asyncio.sleep(0.02)
    assert state is not None and state.listed and state.last_read_seq == 0  # listed again, marker kept
    assert by_slug(await client.request({"type": "rooms"}))["lobby"]["unread"] == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite's writes are serial: no such race")
def test_a_room_deleted_while_a_room_state_is_being_written_is_deleted():
    """A join writes the user's RoomState after its reply, off the join's path: the room can be
    deleted meanwhile. Django's foreign keys are checked at commit on PostgreSQL, so a write
    that commits after the delete removed the room's RoomStates and before it removed the room
    failed the delete (CI saw it). The delete locks the room's row first: that write's check
    waits for the delete, then the write fails, and the delete goes through.

    Played here: the write is held open on another connection; it is let go while the delete
    removes the room's messages (a post_delete receiver), after its RoomStates were removed."""
    import threading

    from django.db import IntegrityError, transaction
    from django.db.models.signals import post_delete

    ada = user("ada")
    room = services.room_create(slug="doomed", title="Doomed")
    parley.post_message("doomed", "one", author=ada)
    written, release, outcome = threading.Event(), threading.Event(), []

    def writer() -> None:
        try:
            with transaction.atomic():
                RoomState.objects.create(user=ada, room=room, listed=True)
                written.set()
                release.wait(10)
            outcome.append("committed")
        except IntegrityError:
            outcome.append("refused")
        finally:
            connection.close()  # this thread's own connection

    def let_the_write_commit(**kwargs: Any) -> None:
        if not release.is_set():
            release.set()
            thread.join(1)  # with the lock it cannot finish before the delete commits

    thread = threading.Thread(target=writer)
    thread.start()
    assert written.wait(10)
    post_delete.connect(let_the_write_commit, sender=Message, dispatch_uid="test-let-the-write-commit")
    try:
        Room.objects.get(pk=room.pk).delete()
    finally:
        post_delete.disconnect(dispatch_uid="test-let-the-write-commit", sender=Message)
    thread.join(10)
    assert outcome == ["refused"]
    assert not Room.objects.filter(pk=room.pk).exists() and not RoomState.objects.filter(room_id=room.pk).exists()
