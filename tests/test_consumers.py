"""The chat consumer, driven through the real config.asgi.application (docs/protocol.md §3-§7)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import DatabaseError

import parley.consumer_db
import parley.consumers
import parley.session
from parley import fanout, services
from parley.models import Membership, Message, Room
from tests.conftest import Client, make_room, make_token, make_user
from tests.support.inprocess import *  # noqa: F403  (the `server` fixture: a real uvicorn)
from tests.support.inprocess import open_and_join

pytestmark = pytest.mark.django_db(transaction=True)


# --- helpers ----------------------------------------------------------------------------------

@database_sync_to_async
def store(room: Room, author: Any, count: int, *, start: int = 0) -> list[Message]:
    """Commit messages straight to the database (no broadcast): as if another process did."""
    return [
        services.message_create(room_id=room.pk, author=author, text=f"m{start + i}", client_id=None)[0]
        for i in range(count)
    ]


@database_sync_to_async
def message_count(**filters: Any) -> int:
    return Message.objects.filter(**filters).count()


@database_sync_to_async
def add_member(room: Room, user: Any) -> None:
    services.membership_add(room=room, user=user)


@database_sync_to_async
def remove_member(room: Room, user: Any) -> None:
    services.membership_remove(room=room, user=user)


async def still_open(client: Client) -> None:
    """The connection survived: a ping is answered with a pong carrying the same ref."""
    reply = await client.request({"type": "ping"})
    assert reply["type"] == "pong", reply


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]


async def broadcast(room: Room, message: Message) -> None:
    await fanout.broadcast_message(room_id=room.pk, room_slug=room.slug, message=message)


# --- basic delivery ---------------------------------------------------------------------------

async def test_two_clients_see_each_others_messages_in_sequence(connect):
    await make_room("lobby")
    ada, bob = await make_user("ada"), await make_user("bob")
    a, b = await connect(ada), await connect(bob)
    await a.join("lobby")
    await b.join("lobby")
    for i in range(3):
        await a.say("lobby", f"from ada {i}")
        await b.say("lobby", f"from bob {i}")
    for client in (a, b):
        got = await client.messages(6)
        assert [m["seq"] for m in got] == [1, 2, 3, 4, 5, 6]
        assert [m["author"]["username"] for m in got] == ["ada", "bob"] * 3
    await a.close()
    await b.close()


async def test_hello_describes_the_session(connect):
    ada = await make_user("ada")
    a = await connect(ada)
    assert a.hello["protocol"] == 1
    assert a.hello["user"] == {"id": ada.pk, "username": "ada"}
    assert a.hello["heartbeat_secs"] == 25
    assert a.hello["limits"]["max_text_chars"] == 4000
    assert a.hello["limits"]["history_page_max"] == 100


async def test_sender_gets_ack_then_its_own_message(connect):
    await make_room("lobby")
    a = await connect(await make_user("ada"))
    await a.join("lobby")
    await a.send({"type": "send", "ref": "s1", "room": "lobby", "text": "  hello  ", "client_id": "c1"})
    frames: list[dict[str, Any]] = []
    while len(frames) < 2:
        frame = await a.recv()
        if frame["type"] != "presence":  # (a's own presence join, if the server sends it)
            frames.append(frame)
    ack = frames[0]
    assert ack["type"] == "ack", ack
    assert ack["ref"] == "s1" and ack["room"] == "lobby" and ack["client_id"] == "c1"
    assert ack["seq"] == 1 and ack["duplicate"] is False
    assert ack["ts"].endswith("Z") and len(ack["ts"]) == len("2026-11-25T10:00:00.123Z")
    event = frames[1]
    assert event["type"] == "message" and event["room"] == "lobby"
    msg = event["message"]
    assert msg["text"] == "hello"  # trimmed
    assert msg["seq"] == 1 and msg["id"] == ack["id"] and msg["ts"] == ack["ts"]
    assert msg["client_id"] == "c1" and msg["author"]["username"] == "ada" and msg["room"] == "lobby"
    assert await a.nothing()


async def test_send_without_client_id_has_null_client_id(connect):
    await make_room("lobby")
    a = await connect(await make_user("ada"))
    await a.join("lobby")
    ack = await a.say("lobby", "x")
    assert ack["client_id"] is None
    assert (await a.messages(1))[0]["client_id"] is None


async def test_join_returns_newest_page_and_history_pages_back_to_seq_1(connect):
    ada = await make_user("ada")
    room = await make_room("lobby")
    await store(room, ada, 60)
    a = await connect(ada)
    joined = await a.join("lobby")
    assert seqs(joined["messages"]) == list(range(11, 61))
    assert joined["has_more"] is True
    assert joined["recovered"] is None
    assert joined["room"]["slug"] == "lobby" and joined["room"]["last_seq"] == 60
    assert joined["room"]["private"] is False and joined["room"]["epoch"]

    page = await a.request({"type": "history", "room": "lobby", "before": 11})
    assert page["type"] == "history" and page["room"] == "lobby"
    assert seqs(page["messages"]) == list(range(1, 11)) and page["has_more"] is False

    # Page all the way back with a small limit.
    got: list[int] = []
    before = None
    while True:
        frame: dict[str, Any] = {"type": "history", "room": "lobby", "limit": 17}
        if before is not None:
            frame["before"] = before
        page = await a.request(frame)
        got = seqs(page["messages"]) + got
        if not page["has_more"]:
            break
        before = page["messages"][0]["seq"]
    assert got == list(range(1, 61))

    small = await a.join("lobby", limit=5)
    assert seqs(small["messages"]) == [56, 57, 58, 59, 60] and small["has_more"] is True


async def test_join_empty_room_and_short_room(connect):
    ada = await make_user("ada")
    room = await make_room("lobby")
    a = await connect(ada)
    joined = await a.join("lobby")
    assert joined["messages"] == [] and joined["has_more"] is False and joined["room"]["last_seq"] == 0
    await store(room, ada, 3)
    joined = await a.join("lobby")
    assert seqs(joined["messages"]) == [1, 2, 3] and joined["has_more"] is False
    page = await a.request({"type": "history", "room": "lobby", "before": 1})
    assert page["messages"] == [] and page["has_more"] is False


async def test_leave_stops_delivery(connect):
    await make_room("lobby")
    a, b = await connect(await make_user("ada")), await connect(await make_user("bob"))
    await a.join("lobby")
    await b.join("lobby")
    left = await a.request({"type": "leave", "room": "lobby"})
    assert left["type"] == "left" and left["room"] == "lobby"
    await b.say("lobby", "after ada left")
    assert seqs(await b.messages(1)) == [1]  # delivery works: the other client still gets it
    assert await a.nothing()
    # Leaving means not joined any more.
    err = await a.request({"type": "send", "room": "lobby", "text": "x"})
    assert err["code"] == "not_joined"
    err = await a.request({"type": "leave", "room": "lobby"})
    assert err["code"] == "not_joined"


async def test_joining_twice_is_harmless(connect):
    await make_room("lobby")
    a, b = await connect(await make_user("ada")), await connect(await make_user("bob"))
    await a.join("lobby")
    await b.join("lobby")
    await b.say("lobby", "one")
    assert seqs(await a.messages(1)) == [1]
    again = await a.join("lobby")
    assert seqs(again["messages"]) == [1]
    await b.say("lobby", "two")
    assert seqs(await a.messages(1)) == [2]
    assert await a.nothing()
    # Only one presence entry per socket: one leave (of b) leaves a alone, then b alone.
    members = (await a.join("lobby"))["members"]
    assert sorted(m["username"] for m in members) == ["ada", "bob"]


async def test_one_socket_in_two_rooms_gets_each_rooms_messages_tagged(connect):
    await make_room("red")
    await make_room("blue")
    a, b = await connect(await make_user("ada")), await connect(await make_user("bob"))
    for room in ("red", "blue"):
        await a.join(room)
        await b.join(room)
    await b.say("red", "r1")
    await b.say("blue", "b1")
    await b.say("red", "r2")
    got = await a.messages(3)
    assert [(m["room"], m["seq"], m["text"]) for m in got] == [("red", 1, "r1"), ("blue", 1, "b1"), ("red", 2, "r2")]
    await a.request({"type": "leave", "room": "red"})
    await b.say("red", "r3")
    await b.say("blue", "b2")
    got = await a.messages(1)
    assert (got[0]["room"], got[0]["seq"], got[0]["text"]) == ("blue", 2, "b2")
    assert await a.nothing()


# --- presence and typing ----------------------------------------------------------------------

async def test_presence_members_and_join_leave_events(connect):
    await make_room("lobby")
    ada, bob = await make_user("ada"), await make_user("bob")
    a = await connect(ada)
    joined = await a.join("lobby")
    assert joined["members"] == [{"id": ada.pk, "username": "ada"}]

    b1 = await connect(bob)
    joined = await b1.join("lobby")
    assert [m["username"] for m in joined["members"]] == ["ada", "bob"]
    ev = await a.recv_type("presence")
    assert ev == {"type": "presence", "room": "lobby", "event": "join",
                  "user": {"id": bob.pk, "username": "bob"}, "members": 2}

    # bob's second socket: no new presence event, members still lists bob once.
    b2 = await connect(bob)
    joined = await b2.join("lobby")
    assert [m["username"] for m in joined["members"]] == ["ada", "bob"]
    assert await a.nothing("presence")

    # bob's first socket leaves: he is still online through the second one.
    await b1.request({"type": "leave", "room": "lobby"})
    assert await a.nothing("presence")

    # bob's last socket disconnects: leave event.
    await b2.close()
    ev = await a.recv_type("presence")
    assert ev["event"] == "leave" and ev["user"]["username"] == "bob" and ev["members"] == 1
    assert [m["username"] for m in (await a.join("lobby"))["members"]] == ["ada"]


async def test_disconnect_emits_presence_leave(connect):
    await make_room("lobby")
    a, b = await connect(await make_user("ada")), await connect(await make_user("bob"))
    await a.join("lobby")
    await b.join("lobby")
    assert (await a.recv_type("presence"))["event"] == "join"
    await b.close()
    ev = await a.recv_type("presence")
    assert (ev["event"], ev["user"]["username"], ev["members"]) == ("leave", "bob", 1)


async def test_explicit_leave_emits_presence_leave(connect):
    await make_room("lobby")
    a, b = await connect(await make_user("ada")), await connect(await make_user("bob"))
    await a.join("lobby")
    await b.join("lobby")
    await a.recv_type("presence")
    await b.request({"type": "leave", "room": "lobby"})
    ev = await a.recv_type("presence")
    assert (ev["event"], ev["user"]["username"]) == ("leave", "bob")


async def test_typing_reaches_others_but_not_the_typist(connect):
    await make_room("lobby")
    ada, bob = await make_user("ada"), await make_user("bob")
    a1, a2, b = await connect(ada), await connect(ada), await connect(bob)
    for c in (a1, a2, b):
        await c.join("lobby")
    await a1.send({"type": "typing", "room": "lobby", "ref": "t"})
    ev = await b.recv_type("typing")
    assert ev == {"type": "typing", "room": "lobby", "user": {"id": ada.pk, "username": "ada"}}
    assert await a1.nothing("typing")
    assert await a2.nothing("typing")  # the typist's other sockets skip it too
    # typing has no reply, not even to a ref
    assert await a1.nothing("error", timeout=0.1)
    await still_open(a1)


# --- bad input: documented error code, connection stays open --------------------------------

async def expect_error(client: Client, code: str, *, raw: str | None = None, frame: dict | None = None,
                       field: str | None = None, with_ref: bool = True) -> dict[str, Any]:
    if frame is not None and with_ref:
        err = await client.request(frame)
    else:
        if frame is not None:
            await client.send(frame)
        else:
            await client.ws.send_input({"type": "websocket.receive", "text": raw})
        err = await client.recv_type("error")
    assert err["type"] == "error", err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    if field is not None:
        assert err.get("field") == field, err
    await still_open(client)
    return err


@pytest.fixture
async def joined_client(connect):
    await make_room("lobby")
    await make_room("other")
    client = await connect(await make_user("ada"))
    await client.join("lobby")
    return client


@pytest.mark.parametrize("raw", ['{"type": "ping"', "not json", "", "{'type': 'ping'}", '{"type": "ping"} x',
                                 '{"type": "ping", "n": NaN}', '{"type": "ping", "n": 1e400}'])
async def test_malformed_json_is_bad_json(joined_client, raw):
    err = await expect_error(joined_client, "bad_json", raw=raw)
    assert "ref" not in err


@pytest.mark.parametrize("raw", ["[]", '["ping"]', "1", '"ping"', "null", "true"])
async def test_non_object_json_is_bad_frame(joined_client, raw):
    await expect_error(joined_client, "bad_frame", raw=raw)


@pytest.mark.parametrize("frame", [{}, {"ref": "x"}, {"type": None}, {"type": 1}, {"type": ["ping"]},
                                   {"type": {"a": 1}}, {"type": True}])
async def test_missing_or_non_string_type_is_bad_frame(joined_client, frame):
    await expect_error(joined_client, "bad_frame", frame=frame, with_ref=False)


@pytest.mark.parametrize("kind", ["pong", "PING", "", "message", "send ", "x" * 1000])
async def test_unknown_type(joined_client, kind):
    err = await expect_error(joined_client, "unknown_type", frame={"type": kind})
    assert err["ref"].startswith("r")  # the ref is echoed on errors too


@pytest.mark.parametrize(("frame", "field"), [
    ({"type": "join"}, "room"),
    ({"type": "leave"}, "room"),
    ({"type": "send", "text": "x"}, "room"),
    ({"type": "send", "room": "lobby"}, "text"),
    ({"type": "send", "room": "lobby", "text": None}, "text"),
    ({"type": "history"}, "room"),
    ({"type": "typing"}, "room"),
])
async def test_missing_field(joined_client, frame, field):
    await expect_error(joined_client, "missing_field", frame=frame, field=field)


@pytest.mark.parametrize(("frame", "field"), [
    ({"type": "join", "room": 1}, "room"),
    ({"type": "join", "room": ""}, "room"),
    ({"type": "join", "room": "x" * 51}, "room"),
    ({"type": "join", "room": ["lobby"]}, "room"),
    ({"type": "join", "room": "lobby", "after_seq": -1}, "after_seq"),
    ({"type": "join", "room": "lobby", "after_seq": "3"}, "after_seq"),
    ({"type": "join", "room": "lobby", "after_seq": True}, "after_seq"),
    ({"type": "join", "room": "lobby", "after_seq": 1.5}, "after_seq"),
    ({"type": "join", "room": "lobby", "epoch": 5}, "epoch"),
    ({"type": "join", "room": "lobby", "epoch": ""}, "epoch"),
    ({"type": "join", "room": "lobby", "limit": 0}, "limit"),
    ({"type": "join", "room": "lobby", "limit": True}, "limit"),
    ({"type": "join", "room": "lobby", "limit": False}, "limit"),
    ({"type": "send", "room": "lobby", "text": 5}, "text"),
    ({"type": "send", "room": "lobby", "text": ["hi"]}, "text"),
    ({"type": "send", "room": "lobby", "text": True}, "text"),
    ({"type": "send", "room": "lobby", "text": "hi", "client_id": 7}, "client_id"),
    ({"type": "send", "room": "lobby", "text": "hi", "client_id": ""}, "client_id"),
    ({"type": "send", "room": "lobby", "text": "hi", "client_id": "c" * 65}, "client_id"),
    ({"type": "history", "room": "lobby", "before": 0}, "before"),
    ({"type": "history", "room": "lobby", "before": "5"}, "before"),
    ({"type": "history", "room": "lobby", "before": True}, "before"),
    ({"type": "history", "room": "lobby", "limit": -5}, "limit"),
    ({"type": "typing", "room": 0}, "room"),
    ({"type": "leave", "room": None, "ref": "x"}, "room"),
])
async def test_wrong_field_types(joined_client, frame, field):
    code = "missing_field" if frame.get(field, 0) is None else "bad_field"
    await expect_error(joined_client, code, frame=frame, field=field)


@pytest.mark.parametrize(("frame", "field"), [
    ({"type": "join", "room": "lobby", "after_seq": 10**30}, "after_seq"),
    ({"type": "join", "room": "lobby", "after_seq": 2**53 + 1}, "after_seq"),
    ({"type": "join", "room": "lobby", "after_seq": 2**64}, "after_seq"),
    ({"type": "join", "room": "lobby", "limit": -(10**25)}, "limit"),
    ({"type": "history", "room": "lobby", "before": 10**300}, "before"),
    ({"type": "history", "room": "lobby", "before": 2**63}, "before"),
])
async def test_huge_integers_are_bad_field(joined_client, frame, field):
    await expect_error(joined_client, "bad_field", frame=frame, field=field)


async def test_text_limits(joined_client):
    c = joined_client
    await expect_error(c, "text_empty", frame={"type": "send", "room": "lobby", "text": ""}, field="text")
    await expect_error(c, "text_empty", frame={"type": "send", "room": "lobby", "text": " \n\t "}, field="text")
    await expect_error(c, "text_too_long", frame={"type": "send", "room": "lobby", "text": "x" * 4001}, field="text")
    await expect_error(c, "text_too_long", frame={"type": "send", "room": "lobby", "text": "é" * 4001}, field="text")
    assert await message_count() == 0
    ack = await c.say("lobby", "x" * 4000)
    assert ack["seq"] == 1
    ack = await c.say("lobby", "  " + "y" * 4000 + "  ")  # 4,000 after trimming
    assert ack["seq"] == 2
    got = await c.messages(2)
    assert [len(m["text"]) for m in got] == [4000, 4000]


async def test_room_that_does_not_exist(joined_client):
    err = await expect_error(joined_client, "room_not_found", frame={"type": "join", "room": "nope"})
    assert err["room"] == "nope"


@pytest.mark.parametrize("frame", [
    {"type": "send", "room": "other", "text": "hi"},
    {"type": "history", "room": "other"},
    {"type": "typing", "room": "other"},
    {"type": "leave", "room": "other"},
    {"type": "send", "room": "nope", "text": "hi"},
])
async def test_commands_without_join_are_not_joined(joined_client, frame):
    err = await expect_error(joined_client, "not_joined", frame=frame)
    assert err["room"] == frame["room"]
    assert await message_count() == 0


async def test_typing_without_join_answers_even_without_ref(joined_client):
    await expect_error(joined_client, "not_joined", frame={"type": "typing", "room": "other"}, with_ref=False)


async def test_binary_frame(joined_client):
    await joined_client.ws.send_to(bytes_data=b'{"type": "ping"}')
    err = await joined_client.recv_type("error")
    assert err["code"] == "binary_not_supported"
    await still_open(joined_client)


async def test_frame_over_max_frame_bytes(joined_client, parley_settings):
    text = "x" * 70_000
    await expect_error(joined_client, "frame_too_large", raw='{"type":"send","room":"lobby","text":"' + text + '"}')
    # 40,000 characters but 80,000 bytes of UTF-8
    await expect_error(joined_client, "frame_too_large", raw='{"type":"ping","pad":"' + "é" * 40_000 + '"}')
    parley_settings.MAX_FRAME_BYTES = 100
    await expect_error(joined_client, "frame_too_large", raw='{"type":"ping","pad":"' + "x" * 100 + '"}')
    parley_settings.MAX_FRAME_BYTES = 65536
    assert await message_count() == 0


async def test_frame_just_under_the_limit_is_fine(joined_client):
    frame = '{"type":"ping","ref":"big","pad":"' + "x" * (65536 - 40) + '"}'
    assert len(frame.encode()) <= 65536
    await joined_client.ws.send_input({"type": "websocket.receive", "text": frame})
    assert (await joined_client.recv())["type"] == "pong"


@pytest.mark.parametrize("ref", [1, "", "r" * 65, ["a"], {"a": 1}, True])
async def test_bad_ref(joined_client, ref):
    err = await expect_error(joined_client, "bad_field", frame={"type": "ping", "ref": ref}, field="ref",
                             with_ref=False)
    assert "ref" not in err  # an invalid ref is reported, not echoed


async def test_ref_is_echoed(joined_client):
    await joined_client.send({"type": "ping", "ref": "r" * 64})
    assert await joined_client.recv() == {"type": "pong", "ref": "r" * 64}
    await joined_client.send({"type": "ping"})
    assert await joined_client.recv() == {"type": "pong"}


@pytest.mark.parametrize("depth", [100, 1000, 5000])
async def test_deep_nesting(joined_client, depth):
    raw = '{"type":"ping","ref":"d","x":' + "[" * depth + "]" * depth + "}"
    if depth <= 1000:  # valid JSON within the decoder's nesting limit: extra fields are ignored
        await joined_client.ws.send_input({"type": "websocket.receive", "text": raw})
        assert await joined_client.recv() == {"type": "pong", "ref": "d"}
    else:
        await expect_error(joined_client, "bad_json", raw=raw)


async def test_unknown_fields_are_ignored(joined_client):
    ack = await joined_client.request({"type": "send", "room": "lobby", "text": "hi", "extra": {"a": [1]},
                                       "seq": 99, "author": "mallory"})
    assert ack["type"] == "ack" and ack["seq"] == 1
    msg = (await joined_client.messages(1))[0]
    assert msg["author"]["username"] == "ada" and msg["seq"] == 1


async def test_lone_surrogates(joined_client):
    # A JSON escape of a lone surrogate is refused by the decoder.
    await expect_error(joined_client, "bad_json", raw='{"type":"send","room":"lobby","text":"\\ud800"}')
    # A (nonsense) str with a surrogate code point, as a buggy ASGI server might hand over.
    await expect_error(joined_client, "bad_json", raw='{"type":"ping","x":"\ud800"}')
    assert await message_count() == 0


# --- private rooms ----------------------------------------------------------------------------

async def test_private_room_is_invisible_to_non_members(connect):
    owner, eve = await make_user("owner"), await make_user("eve")
    room = await make_room("secret", owner=owner, private=True)
    await store(room, owner, 2)
    e = await connect(eve)
    err = await e.request({"type": "join", "room": "secret"})
    assert (err["type"], err["code"]) == ("error", "room_not_found")
    # the error does not differ from a room that does not exist
    err2 = await e.request({"type": "join", "room": "nosuch"})
    assert err2["code"] == "room_not_found"
    assert err["message"].replace("secret", "X") == err2["message"].replace("nosuch", "X")
    o = await connect(owner)
    joined = await o.join("secret")
    assert joined["room"]["private"] is True and seqs(joined["messages"]) == [1, 2]


async def test_private_room_member_can_join(connect):
    owner, bob = await make_user("owner"), await make_user("bob")
    room = await make_room("secret", owner=owner, private=True)
    await add_member(room, bob)
    b = await connect(bob)
    await b.join("secret")
    ack = await b.say("secret", "hi")
    assert ack["seq"] == 1


async def test_a_refused_join_of_a_known_private_room_leaks_no_events(connect, monkeypatch):
    """The owner's join taught the process the room's id, so eve's join subscribes before the
    access check: nothing of the room may reach her meanwhile, and she is left unsubscribed."""
    owner, eve = await make_user("owner"), await make_user("eve")
    room = await make_room("secret", owner=owner, private=True)
    o = await connect(owner)
    await o.join("secret")
    assert parley.session._room_ids["secret"] == room.pk
    e = await connect(eve)
    snapshot = parley.consumer_db.join_snapshot

    async def slow_snapshot(*args: Any) -> Any:
        # while eve's join waits on the database, the room is busy
        await o.send({"type": "typing", "room": "secret"})
        await o.say("secret", "for members only")
        await asyncio.sleep(0.1)
        return await snapshot(*args)

    monkeypatch.setattr(parley.consumer_db, "join_snapshot", slow_snapshot)
    err = await e.request({"type": "join", "room": "secret"})
    assert (err["type"], err["code"]) == ("error", "room_not_found")
    monkeypatch.undo()
    await o.say("secret", "still private")
    for kind in ("typing", "message", "presence"):
        assert await e.nothing(kind)
    await still_open(e)


async def test_a_join_learns_a_recreated_room(connect):
    """A room deleted and made again under the same slug has a new id: a join with the old id
    learnt by this process still ends in the new room, with its new epoch."""
    ada = await make_user("ada")
    old = await make_room("phoenix")
    a = await connect(ada)
    first = await a.join("phoenix")
    await a.request({"type": "leave", "room": "phoenix"})
    old_pk = old.pk
    await database_sync_to_async(old.delete)()
    new = await make_room("phoenix")
    assert parley.session._room_ids["phoenix"] == old_pk != new.pk
    b = await connect(ada)
    again = await b.join("phoenix")
    assert again["room"]["epoch"] == new.epoch != first["room"]["epoch"]
    ack = await b.say("phoenix", "reborn")
    assert ack["seq"] == 1 and seqs(await b.messages(1)) == [1]


async def test_a_second_join_of_a_room_costs_one_database_hop(connect, monkeypatch):
    await make_room("lobby")
    a, b = await connect(await make_user("ada")), await connect(await make_user("bob"))
    await a.join("lobby")
    lookups = []
    load_room = parley.consumer_db.load_room

    async def counting(user: Any, slug: str) -> Any:
        lookups.append(slug)
        return await load_room(user, slug)

    monkeypatch.setattr(parley.consumer_db, "load_room", counting)
    await b.join("lobby")
    assert lookups == []  # the snapshot hop alone checked access and read the room


REMOVED_FRAMES = [
    {"type": "send", "room": "secret", "text": "hi", "client_id": "c1"},
    {"type": "history", "room": "secret"},
    {"type": "typing", "room": "secret"},
]


@database_sync_to_async
def delete_membership_quietly(room: Room, user: Any) -> None:
    """Remove a membership without any notification (another process, the admin, a raw SQL fix)."""
    Membership.objects.filter(room=room, user=user).delete()


@pytest.mark.parametrize("frame", REMOVED_FRAMES)
async def test_membership_removed_mid_session_is_checked_on_every_command(connect, frame):
    owner, bob = await make_user("owner"), await make_user("bob")
    room = await make_room("secret", owner=owner, private=True)
    await add_member(room, bob)
    b, o = await connect(bob), await connect(owner)
    await b.join("secret")
    await o.join("secret")
    await delete_membership_quietly(room, bob)
    err = await b.request(frame)
    assert (err["type"], err["code"], err["room"]) == ("error", "room_not_found", "secret")
    await still_open(b)
    # b was unsubscribed: no more of the room's events
    await o.say("secret", "after removal")
    assert await b.nothing()
    assert await message_count(author=bob) == 0
    # and b cannot join again
    err = await b.request({"type": "join", "room": "secret"})
    assert err["code"] == "room_not_found"


@pytest.mark.parametrize("frame", REMOVED_FRAMES)
async def test_membership_removed_by_the_service_mid_session(connect, frame):
    owner, bob = await make_user("owner"), await make_user("bob")
    room = await make_room("secret", owner=owner, private=True)
    await add_member(room, bob)
    b, o = await connect(bob), await connect(owner)
    await b.join("secret")
    await o.join("secret")
    await remove_member(room, bob)
    # The server makes the socket leave at once and says so (docs/protocol.md §3 leave).
    left = await b.recv_type("left")
    assert left == {"type": "left", "room": "secret", "reason": "removed"}
    err = await b.request(frame)
    assert err["type"] == "error" and err["code"] in ("room_not_found", "not_joined"), err
    assert err["room"] == "secret"
    await o.say("secret", "after removal")
    assert await b.nothing()
    assert await message_count(author=bob) == 0
    await still_open(b)
    # b no longer gets the room's events
    await o.say("secret", "after removal")
    assert await b.nothing()
    assert await message_count(author=bob) == 0
    # and b cannot join again
    err = await b.request({"type": "join", "room": "secret"})
    assert err["code"] == "room_not_found"


# --- idempotency and concurrency ------------------------------------------------------------

async def test_same_client_id_twice_is_one_message(connect):
    await make_room("lobby")
    a, b = await connect(await make_user("ada")), await connect(await make_user("bob"))
    await a.join("lobby")
    await b.join("lobby")
    first = await a.say("lobby", "hello", client_id="c-1")
    second = await a.say("lobby", "hello again", client_id="c-1")
    assert first["duplicate"] is False and second["duplicate"] is True
    assert (second["seq"], second["id"], second["ts"]) == (first["seq"], first["id"], first["ts"])
    assert await message_count() == 1
    assert seqs(await b.messages(1)) == [1]
    assert await b.nothing()
    # same client_id, different user: a different message
    third = await b.say("lobby", "mine", client_id="c-1")
    assert third["duplicate"] is False and third["seq"] == 2


async def test_same_client_id_from_another_socket_is_a_duplicate(connect):
    await make_room("lobby")
    ada = await make_user("ada")
    a1, a2 = await connect(ada), await connect(ada)
    await a1.join("lobby")
    await a2.join("lobby")
    first = await a1.say("lobby", "hi", client_id="dup")
    second = await a2.say("lobby", "hi", client_id="dup")
    assert second["duplicate"] is True and second["seq"] == first["seq"]


async def _burst(client: Client, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send all frames at once, then collect the replies by ref."""
    refs = []
    for i, frame in enumerate(frames):
        ref = f"b{i}"
        refs.append(ref)
        await client.send({**frame, "ref": ref})
    replies = []
    for ref in refs:
        replies.append(await client._take(lambda f, ref=ref: f.get("ref") == ref, 10))
    return replies


async def test_concurrent_sends_with_one_client_id_make_one_row(connect):
    await make_room("lobby")
    ada = await make_user("ada")
    sockets = [await connect(ada) for _ in range(4)]
    for s in sockets:
        await s.join("lobby")
    frame = {"type": "send", "room": "lobby", "text": "once", "client_id": "same"}
    results = await asyncio.gather(*[_burst(s, [frame] * 5) for s in sockets])
    acks = [r for replies in results for r in replies]
    assert all(a["type"] == "ack" for a in acks), acks
    assert len({(a["seq"], a["id"]) for a in acks}) == 1
    assert sum(not a["duplicate"] for a in acks) == 1
    assert await message_count() == 1
    for s in sockets:
        assert seqs(await s.messages(1)) == [1]
        assert await s.nothing(timeout=0.1)


async def test_concurrent_distinct_sends_get_gapless_seqs(connect):
    await make_room("lobby")
    users = [await make_user(f"u{i}") for i in range(4)]
    sockets = [await connect(u) for u in users]
    watcher = await connect(await make_user("watcher"))
    await watcher.join("lobby")
    for s in sockets:
        await s.join("lobby")
    per_socket = 10
    results = await asyncio.gather(*[
        _burst(s, [{"type": "send", "room": "lobby", "text": f"{i}-{j}", "client_id": f"{i}-{j}"}
                   for j in range(per_socket)])
        for i, s in enumerate(sockets)
    ])
    acks = [r for replies in results for r in replies]
    assert all(a["type"] == "ack" and a["duplicate"] is False for a in acks), acks
    n = len(sockets) * per_socket
    assert sorted(a["seq"] for a in acks) == list(range(1, n + 1))
    # each socket's own sends are numbered in the order it sent them
    for replies in results:
        own = [a["seq"] for a in replies]
        assert own == sorted(own)
    got = await watcher.messages(n, timeout=10)
    assert seqs(got) == list(range(1, n + 1))
    assert await message_count() == n


# --- ordering and gap fill ------------------------------------------------------------------

async def test_out_of_order_broadcasts_are_delivered_in_order(connect, parley_settings):
    parley_settings.GAP_FILL_DELAY_MS = 2000  # reordering from the buffer alone, not the database
    ada = await make_user("ada")
    room = await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")
    m1, m2, m3, m4 = await store(room, ada, 4)
    await broadcast(room, m1)
    await broadcast(room, m4)
    await broadcast(room, m3)
    await broadcast(room, m2)
    assert seqs(await a.messages(4, timeout=1.5)) == [1, 2, 3, 4]
    for m in (m1, m2, m3, m4):  # late duplicates are dropped
        await broadcast(room, m)
    assert await a.nothing()


async def test_held_messages_wait_behind_a_remaining_hole(connect, parley_settings):
    """2 fills the first gap, but 4 is still missing: 5 must wait for it (from the database)."""
    parley_settings.GAP_FILL_DELAY_MS = 50
    ada = await make_user("ada")
    room = await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")
    m1, m2, m3, m4, m5 = await store(room, ada, 5)
    await broadcast(room, m1)
    await broadcast(room, m3)
    await broadcast(room, m5)
    await broadcast(room, m2)  # releases 2 and 3; 5 still waits for 4, which was "dropped"
    got = await a.messages(5)
    assert seqs(got) == [1, 2, 3, 4, 5]
    assert got[3]["id"] == m4.pk
    assert await a.nothing()


async def test_dropped_broadcasts_are_filled_from_the_database(connect, parley_settings):
    parley_settings.GAP_FILL_DELAY_MS = 50
    ada = await make_user("ada")
    room = await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")
    m1, m2 = await store(room, ada, 2)          # committed, never broadcast
    m3 = (await store(room, ada, 1, start=2))[0]
    await broadcast(room, m3)
    got = await a.messages(3)
    assert seqs(got) == [1, 2, 3]
    assert [m["text"] for m in got] == ["m0", "m1", "m2"]
    assert got[0] == {"room": "lobby", "seq": 1, "id": m1.pk, "client_id": None,
                      "author": {"id": ada.pk, "username": "ada"}, "text": "m0", "ts": got[0]["ts"]}
    # a gap in the middle, and the original broadcasts arriving late
    m4, m5, m6 = await store(room, ada, 3, start=3)
    await broadcast(room, m4)
    await broadcast(room, m6)
    assert seqs(await a.messages(3)) == [4, 5, 6]
    for m in (m1, m2, m5):
        await broadcast(room, m)
    assert await a.nothing(timeout=0.3)


async def test_gap_fill_and_live_sends_mix(connect, parley_settings):
    parley_settings.GAP_FILL_DELAY_MS = 30
    ada, bob = await make_user("ada"), await make_user("bob")
    room = await make_room("lobby")
    a, b = await connect(ada), await connect(bob)
    await a.join("lobby")
    await b.join("lobby")
    await store(room, ada, 2)  # as if another process's broadcasts were lost
    await b.say("lobby", "live")  # seq 3, broadcast normally
    for c in (a, b):
        assert seqs(await c.messages(3)) == [1, 2, 3]
    await b.say("lobby", "live 2")
    for c in (a, b):
        assert seqs(await c.messages(1)) == [4]
        assert await c.nothing(timeout=0.1)


async def test_message_committed_between_page_read_and_join_reply(connect):
    """A join page that already holds a seq drops the later live event of that seq."""
    ada = await make_user("ada")
    room = await make_room("lobby")
    a = await connect(ada)
    _m1, m2 = await store(room, ada, 2)
    joined = await a.join("lobby")
    assert seqs(joined["messages"]) == [1, 2]
    await broadcast(room, m2)  # stale event for a seq the page had
    m3 = (await store(room, ada, 1, start=2))[0]
    await broadcast(room, m3)
    assert seqs(await a.messages(1)) == [3]
    assert await a.nothing()


# --- resume ---------------------------------------------------------------------------------

async def test_resume_gets_exactly_the_missed_messages(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a = await connect(ada)
    joined = await a.join("lobby")
    epoch = joined["room"]["epoch"]
    for i in range(3):
        await a.say("lobby", f"a{i}")
    assert seqs(await a.messages(3)) == [1, 2, 3]
    await a.close()

    b = await connect(bob)
    await b.join("lobby")
    await b.say("lobby", "while ada was away 1")
    await b.say("lobby", "while ada was away 2")

    a2 = await connect(ada)
    resumed = await a2.join("lobby", after_seq=3, epoch=epoch)
    assert resumed["recovered"] is True
    assert seqs(resumed["messages"]) == [4, 5]
    assert resumed["room"]["epoch"] == epoch and resumed["room"]["last_seq"] == 5
    await b.say("lobby", "live")
    assert seqs(await a2.messages(1)) == [6]
    assert await a2.nothing()


async def test_resume_with_nothing_missed(connect):
    ada = await make_user("ada")
    room = await make_room("lobby")
    await store(room, ada, 3)
    a = await connect(ada)
    epoch = (await a.join("lobby"))["room"]["epoch"]
    a2 = await connect(ada)
    resumed = await a2.join("lobby", after_seq=3, epoch=epoch)
    assert resumed["recovered"] is True and resumed["messages"] == []
    await a.say("lobby", "next")
    assert seqs(await a2.messages(1)) == [4]


async def test_resume_from_zero(connect):
    ada = await make_user("ada")
    room = await make_room("lobby")
    await store(room, ada, 3)
    a = await connect(ada)
    epoch = (await a.join("lobby"))["room"]["epoch"]
    resumed = await a.join("lobby", after_seq=0, epoch=epoch)
    assert resumed["recovered"] is True and seqs(resumed["messages"]) == [1, 2, 3]


@pytest.mark.parametrize("case", ["wrong_epoch", "gap_too_large", "after_seq_beyond_last"])
async def test_resume_not_possible_gives_the_newest_page(connect, parley_settings, case):
    parley_settings.RESUME_MAX_GAP = 5
    ada = await make_user("ada")
    room = await make_room("lobby")
    await store(room, ada, 60)
    a = await connect(ada)
    epoch = (await a.join("lobby"))["room"]["epoch"]
    after_seq, sent_epoch = {
        "wrong_epoch": (58, "0" * 32),
        "gap_too_large": (54, epoch),  # 6 missed > 5
        "after_seq_beyond_last": (61, epoch),
    }[case]
    a2 = await connect(ada)
    resumed = await a2.join("lobby", after_seq=after_seq, epoch=sent_epoch)
    assert resumed["recovered"] is False
    assert seqs(resumed["messages"]) == list(range(11, 61)) and resumed["has_more"] is True
    # and live delivery continues after the page
    await a.say("lobby", "next")
    assert seqs(await a2.messages(1)) == [61]


async def test_resume_at_exactly_the_max_gap(connect, parley_settings):
    parley_settings.RESUME_MAX_GAP = 5
    ada = await make_user("ada")
    room = await make_room("lobby")
    await store(room, ada, 10)
    a = await connect(ada)
    epoch = (await a.join("lobby"))["room"]["epoch"]
    resumed = await a.join("lobby", after_seq=5, epoch=epoch)
    assert resumed["recovered"] is True and seqs(resumed["messages"]) == [6, 7, 8, 9, 10]


# --- heartbeat --------------------------------------------------------------------------------

async def _next_close(client: Client, timeout: float) -> dict[str, Any]:
    while True:
        out = await client.ws.receive_output(timeout)
        if out["type"] == "websocket.close":
            return out


async def test_silent_socket_is_closed_with_4408(connect, parley_settings, monkeypatch):
    parley_settings.HEARTBEAT_INTERVAL_SECS = 1
    monkeypatch.setattr(parley.consumers, "heartbeat_timeout_secs", lambda: 1.0)
    ada = await make_user("ada")
    loop = asyncio.get_running_loop()
    started = loop.time()
    a = await connect(ada)
    assert a.hello["heartbeat_secs"] == 1
    close = await _next_close(a, timeout=5)
    assert close["code"] == 4408
    assert loop.time() - started >= 1.0  # not before the timeout (counted from before the handshake)


async def test_pings_keep_the_socket_open(connect, parley_settings, monkeypatch):
    parley_settings.HEARTBEAT_INTERVAL_SECS = 1
    monkeypatch.setattr(parley.consumers, "heartbeat_timeout_secs", lambda: 1.0)
    a = await connect(await make_user("ada"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 2.5:  # well past the timeout, kept alive by pings
        await still_open(a)
        await asyncio.sleep(0.2)
    close = await _next_close(a, timeout=5)  # then silence closes it
    assert close["code"] == 4408
    assert loop.time() - started >= 2.5


async def test_any_frame_counts_as_a_heartbeat(connect, parley_settings, monkeypatch):
    parley_settings.HEARTBEAT_INTERVAL_SECS = 1
    monkeypatch.setattr(parley.consumers, "heartbeat_timeout_secs", lambda: 1.0)
    await make_room("lobby")
    a = await connect(await make_user("ada"))
    await a.join("lobby")
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 2.0:
        await a.request({"type": "history", "room": "lobby"})  # not a ping, still a frame
        await asyncio.sleep(0.2)
    await still_open(a)


def test_heartbeat_timeout_formula(parley_settings):
    parley_settings.HEARTBEAT_INTERVAL_SECS = 25
    assert parley.consumers.heartbeat_timeout_secs() == 55


# --- commit failure ---------------------------------------------------------------------------

async def test_commit_failure_then_retry(connect, monkeypatch):
    await make_room("lobby")
    a, b = await connect(await make_user("ada")), await connect(await make_user("bob"))
    await a.join("lobby")
    await b.join("lobby")

    def broken(**kwargs: Any) -> Any:
        raise DatabaseError("disk on fire")

    monkeypatch.setattr(services, "message_create_batch", broken)
    err = await a.request({"type": "send", "room": "lobby", "text": "hi", "client_id": "retry-me"})
    assert (err["type"], err["code"], err["room"]) == ("error", "commit_failed", "lobby")
    assert await a.nothing()
    assert await b.nothing()
    assert await message_count() == 0
    await still_open(a)

    monkeypatch.undo()
    ack = await a.say("lobby", "hi", client_id="retry-me")
    assert ack["duplicate"] is False and ack["seq"] == 1
    again = await a.say("lobby", "hi", client_id="retry-me")
    assert again["duplicate"] is True and again["seq"] == 1
    for c in (a, b):
        assert seqs(await c.messages(1)) == [1]
        assert await c.nothing(timeout=0.1)
    assert await message_count() == 1


async def test_unexpected_error_is_internal_error_and_keeps_the_socket(connect, monkeypatch):
    await make_room("lobby")
    a = await connect(await make_user("ada"))
    await a.join("lobby")

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(services, "message_create_batch", broken)
    err = await a.request({"type": "send", "room": "lobby", "text": "hi"})
    assert (err["type"], err["code"]) == ("error", "internal_error")
    await still_open(a)


# --- NUL characters (PostgreSQL text cannot hold U+0000) ---------------------------------------

async def test_text_with_nul_is_stored_or_refused_as_a_field_error(joined_client):
    """A text of 1-4,000 characters is valid; it must not end in commit_failed, whose retry can never succeed."""
    reply = await joined_client.request({"type": "send", "room": "lobby", "text": "a\u0000b", "client_id": "nul-1"})
    assert reply["type"] == "ack" or (reply["code"] == "bad_field" and reply["field"] == "text"), reply
    await still_open(joined_client)


async def test_client_id_with_nul_is_stored_or_refused_as_a_field_error(joined_client):
    reply = await joined_client.request({"type": "send", "room": "lobby", "text": "hi", "client_id": "c\u0000"})
    assert reply["type"] == "ack" or (reply["code"] == "bad_field" and reply["field"] == "client_id"), reply


async def test_room_slug_with_nul_is_room_not_found(joined_client):
    await expect_error(joined_client, "room_not_found", frame={"type": "join", "room": "lo\u0000bby"})


# --- the consumer's lifetime under a real server -------------------------------------------------

async def test_closed_sockets_end_their_consumers_at_once(server):
    """A socket's consumer ends when its socket closes. On Redis, with several sockets in one
    process, a consumer with a channel-layer receive could outlive its socket (the cancel was
    lost inside channels_redis/redis-py's shared blocking pop); Parley's has no layer channel."""
    ada = await make_user("ada")
    await make_room("lobby")
    token = await make_token(ada)
    sockets = [await open_and_join(server, token, "lobby") for _ in range(3)]

    def consumers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if "run_asgi" in repr(t.get_coro())]

    assert len(consumers()) == 3
    for ws in sockets:
        await ws.close()
    for _ in range(100):
        if not consumers():
            break
        await asyncio.sleep(0.02)
    assert consumers() == []


# --- no channel layer -----------------------------------------------------------------------------

async def test_parley_needs_no_channel_layer(connect):
    """The standalone server configures none, and chats (rooms and revocation go through the hub)."""
    from channels.layers import get_channel_layer
    from django.conf import settings

    assert not getattr(settings, "CHANNEL_LAYERS", None) and get_channel_layer() is None
    await make_room("lobby")
    ada, bob = await connect(await make_user("ada")), await connect(await make_user("bob"))
    await ada.join("lobby")
    await bob.join("lobby")
    await ada.say("lobby", "no layer")
    assert [m["text"] for m in await bob.messages(1)] == ["no layer"]


async def test_a_host_projects_channel_layer_is_left_to_its_own_consumers(connect):
    """A host that configures CHANNEL_LAYERS for its own consumers: Parley's sockets open no
    channel and join no group on it, chat as without it, and the layer still works for the host."""
    from channels.layers import get_channel_layer
    from django.test import override_settings

    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}):
        layer = get_channel_layer()
        assert layer is not None
        await make_room("lobby")
        ada, bob = await connect(await make_user("ada")), await connect(await make_user("bob"))
        await ada.join("lobby")
        await bob.join("lobby")
        await ada.say("lobby", "beside a layer")
        assert [m["text"] for m in await bob.messages(1)] == ["beside a layer"]
        assert layer.channels == {} and layer.groups == {}
        await layer.group_add("host.group", "host.channel")
        await layer.group_send("host.group", {"type": "host.event"})
        assert await layer.receive("host.channel") == {"type": "host.event"}
        await ada.close()
        await bob.close()
