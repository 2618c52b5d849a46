"""Protocol version 2 on the socket (docs/protocol.md §10): edit, delete, reactions, replies and
mentions as entries of the room's one log, driven through the real ASGI application."""

from __future__ import annotations

import random
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from parley import services
from parley.models import Membership, Message, Reaction
from tests.conftest import make_room, make_user, override_parley

pytestmark = pytest.mark.django_db(transaction=True)


def fold(state: dict[int, dict[str, Any]], frame: dict[str, Any], me: int) -> None:
    """Apply one log event to a client's copy of the room's messages, as §10 says a client does."""
    kind = frame["type"]
    if kind == "message":
        m = frame["message"]
        state[m["seq"]] = {"text": m["text"], "deleted": m.get("deleted", False), "edited": "edited_at" in m,
                           "mentions": [u["id"] for u in m.get("mentions", [])], "reactions": {}, "mine": set()}
        return
    m = state.get(frame["target"])
    if m is None:
        return
    if kind == "edit":
        m.update(text=frame["text"], edited=True, mentions=[u["id"] for u in frame.get("mentions", [])])
    elif kind == "delete":
        m.update(text="", deleted=True, mentions=[], reactions={}, mine=set())
    elif kind == "reaction":
        if frame["count"]:
            m["reactions"][frame["emoji"]] = frame["count"]
        else:
            m["reactions"].pop(frame["emoji"], None)
        if frame["user"]["id"] == me:
            (m["mine"].add if frame["op"] == "add" else m["mine"].discard)(frame["emoji"])


@database_sync_to_async
def db_view(room: Any, me: int) -> dict[int, dict[str, Any]]:
    """The database's state of every message of the room, in fold()'s shape."""
    mine = set(Reaction.objects.filter(message__room=room, user_id=me).values_list("message__seq", "emoji"))
    return {m.seq: {"text": m.text, "deleted": m.deleted_at is not None, "edited": m.edited_at is not None,
                    "mentions": [u["id"] for u in m.mentions or []], "reactions": dict(m.reactions or []),
                    "mine": {e for s, e in mine if s == m.seq}}
            for m in Message.objects.filter(room=room, kind=Message.Kind.MESSAGE)}


async def post(client: Any, room: str, text: str, **extra: Any) -> dict[str, Any]:
    ack = await client.request({"type": "send", "room": room, "text": text, **extra})
    assert ack["type"] == "ack", ack
    return ack


async def next_event(client: Any, kinds: tuple[str, ...] = ("message", "edit", "delete", "reaction")) -> dict[str, Any]:
    return await client._take(lambda f: f["type"] in kinds and "ref" not in f, 3)


# --- the version -----------------------------------------------------------------------------

async def test_the_url_chooses_the_version_and_an_unknown_one_is_refused(connect):
    from tests.conftest import ORIGIN, make_token, open_socket

    ada = await make_user("ada")
    v1, v2 = await connect(ada), await connect(ada, protocol=2)
    assert v1.hello["protocol"] == 1 and "edits_burst" not in v1.hello["limits"]
    assert v2.hello["protocol"] == 2 and v2.hello["limits"]["edits_burst"] >= 1
    token = await make_token(ada)
    for bad in ("3", "two", "2&protocol=2", "%D9%A2", "", " 2"):
        connected, _ws = await open_socket(headers=[(b"authorization", f"Bearer {token}".encode()), (b"origin", ORIGIN)],
                                          path=f"/ws/chat/?protocol={bad}")
        assert not connected, bad
    connected, other = await open_socket(headers=[(b"authorization", f"Bearer {token}".encode()), (b"origin", ORIGIN)],
                                         path="/ws/chat/?xprotocol=2&protocolx=9")
    assert connected and (await other.receive_json_from())["protocol"] == 1  # no `protocol` parameter: 1
    await other.disconnect()
    await make_room("lobby")
    await v1.join("lobby")
    err = await v1.request({"type": "edit", "room": "lobby", "seq": 1, "text": "x"})
    assert err["code"] == "unknown_type"  # version 1 has no edit


# --- edit ------------------------------------------------------------------------------------

async def test_edit_is_an_entry_everyone_gets_in_order_and_version_1_skips(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a, b, old = await connect(ada, protocol=2), await connect(bob, protocol=2), await connect(bob)
    for c in (a, b, old):
        await c.join("lobby")
    ack = await post(a, "lobby", "helo")
    for c in (a, b, old):
        assert (await next_event(c))["message"]["seq"] == ack["seq"]
    edited = await a.request({"type": "edit", "room": "lobby", "seq": ack["seq"], "text": " hello **all** "})
    assert edited["type"] == "edited" and edited["target"] == ack["seq"] and edited["seq"] == ack["seq"] + 1
    for c in (a, b):
        event = await next_event(c)
        assert event == {"type": "edit", "room": "lobby", "seq": ack["seq"] + 1, "target": ack["seq"],
                         "text": "hello **all**", "edited_at": edited["edited_at"],
                         "by": {"id": ada.pk, "username": "ada"}}
    nxt = await post(b, "lobby", "after")
    assert nxt["seq"] == ack["seq"] + 2
    assert (await next_event(old))["message"]["seq"] == nxt["seq"]  # the edit's seq skipped, no stall
    page = await b.request({"type": "history", "room": "lobby"})
    assert [(m["seq"], m["text"], "edited_at" in m) for m in page["messages"]] == [
        (ack["seq"], "hello **all**", True), (nxt["seq"], "after", False)]  # messages only, current


async def test_edit_refusals(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a, b = await connect(ada, protocol=2), await connect(bob, protocol=2)
    await a.join("lobby")
    await b.join("lobby")
    ack = await post(a, "lobby", "mine")

    async def code(client: Any, frame: dict[str, Any]) -> str:
        reply = await client.request({"room": "lobby", **frame})
        return reply.get("code", reply["type"])

    assert await code(b, {"type": "edit", "seq": ack["seq"], "text": "yours now"}) == "forbidden"
    assert await code(a, {"type": "edit", "seq": 999, "text": "x"}) == "message_not_found"
    assert await code(a, {"type": "edit", "seq": ack["seq"], "text": "   "}) == "text_empty"
    assert await code(a, {"type": "edit", "seq": 0, "text": "x"}) == "bad_field"
    assert await code(a, {"type": "edit", "text": "x"}) == "missing_field"
    edited = await a.request({"type": "edit", "room": "lobby", "seq": ack["seq"], "text": "v2"})
    # an edit entry is not a message: it cannot be edited, reacted to or replied to
    assert await code(a, {"type": "edit", "seq": edited["seq"], "text": "x"}) == "message_not_found"
    assert await code(a, {"type": "react", "seq": edited["seq"], "emoji": "👍"}) == "message_not_found"
    assert await code(a, {"type": "send", "text": "re", "reply_to": edited["seq"]}) == "message_not_found"
    same = await a.request({"type": "edit", "room": "lobby", "seq": ack["seq"], "text": "v2"})
    assert same["type"] == "edited" and same["seq"] is None  # nothing changed, nothing stored
    assert await code(a, {"type": "edit", "room": "elsewhere", "seq": 1, "text": "x"}) == "not_joined"


# --- delete ----------------------------------------------------------------------------------

async def test_delete_erases_the_text_and_its_versions(connect):
    ada, bob, owner = await make_user("ada"), await make_user("bob"), await make_user("olga")
    room = await make_room("team", owner=owner, private=True)
    await database_sync_to_async(services.membership_add)(room=room, user=ada)
    await database_sync_to_async(services.membership_add)(room=room, user=bob)
    a, b, o = await connect(ada, protocol=2), await connect(bob, protocol=2), await connect(owner, protocol=2)
    for c in (a, b, o):
        await c.join("team")
    first = await post(a, "team", "secret plan")
    await a.request({"type": "edit", "room": "team", "seq": first["seq"], "text": "secret plan v2"})
    await b.request({"type": "react", "room": "team", "seq": first["seq"], "emoji": "👀"})
    assert (await b.request({"type": "delete", "room": "team", "seq": first["seq"]}))["code"] == "forbidden"
    deleted = await a.request({"type": "delete", "room": "team", "seq": first["seq"]})
    assert deleted["type"] == "deleted" and deleted["seq"] == first["seq"] + 3
    texts = await database_sync_to_async(lambda: list(Message.objects.filter(room=room).values_list("kind", "text")))()
    assert not any("secret" in text for _, text in texts)  # gone from the database, every version
    assert await database_sync_to_async(Reaction.objects.count)() == 0
    again = await a.request({"type": "delete", "room": "team", "seq": first["seq"]})
    assert again["seq"] is None
    assert (await a.request({"type": "edit", "room": "team", "seq": first["seq"], "text": "x"}))["code"] == "message_deleted"
    assert (await b.request({"type": "react", "room": "team", "seq": first["seq"], "emoji": "👍"}))["code"] == "message_deleted"
    assert (await b.request({"type": "send", "room": "team", "text": "re", "reply_to": first["seq"]}))["code"] == "message_deleted"
    # the room's owner deletes anyone's
    second = await post(b, "team", "oops")
    assert (await o.request({"type": "delete", "room": "team", "seq": second["seq"]}))["seq"] is not None
    page = await b.request({"type": "history", "room": "team"})
    assert [(m["seq"], m["text"], m.get("deleted")) for m in page["messages"]] == [
        (first["seq"], "", True), (second["seq"], "", True)]  # tombstones keep their seq
    state: dict[int, dict[str, Any]] = {}
    events = [await next_event(b) for _ in range(6)]
    assert [e["type"] for e in events] == ["message", "edit", "reaction", "delete", "message", "delete"]
    for frame in events:
        fold(state, frame, bob.pk)
    assert state == await db_view(room, bob.pk)


# --- reactions -------------------------------------------------------------------------------

async def test_reactions_count_once_per_user_and_pages_say_mine(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a, b = await connect(ada, protocol=2), await connect(bob, protocol=2)
    await a.join("lobby")
    await b.join("lobby")
    ack = await post(a, "lobby", "vote")
    r1 = await a.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "👍"})
    assert (r1["type"], r1["op"], r1["count"], r1["seq"]) == ("reacted", "add", 1, ack["seq"] + 1)
    again = await a.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "👍"})
    assert (again["seq"], again["count"]) == (None, 1)  # adding twice is one reaction
    r2 = await b.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "👍"})
    r3 = await b.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "👨‍👩‍👧"})
    assert (r2["count"], r3["count"]) == (2, 1)
    page = await a.request({"type": "history", "room": "lobby"})
    assert page["messages"][0]["reactions"] == [{"emoji": "👍", "count": 2, "me": True},
                                                {"emoji": "👨‍👩‍👧", "count": 1, "me": False}]
    off = await b.request({"type": "unreact", "room": "lobby", "seq": ack["seq"], "emoji": "👍"})
    assert (off["op"], off["count"]) == ("remove", 1)
    none = await b.request({"type": "unreact", "room": "lobby", "seq": ack["seq"], "emoji": "👍"})
    assert none["seq"] is None
    events = [await next_event(a) for _ in range(5)]
    assert [(e["type"], e.get("emoji"), e.get("op"), e.get("count")) for e in events] == [
        ("message", None, None, None), ("reaction", "👍", "add", 1), ("reaction", "👍", "add", 2),
        ("reaction", "👨‍👩‍👧", "add", 1), ("reaction", "👍", "remove", 1)]
    for bad in ("x", "👍👍", ":)", "", 7, "a" * 40):
        reply = await a.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": bad})
        assert (reply["code"], reply.get("field")) == ("bad_field", "emoji"), bad


async def test_reaction_limits(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a, b = await connect(ada, protocol=2), await connect(bob, protocol=2)
    await a.join("lobby")
    await b.join("lobby")
    ack = await post(a, "lobby", "react to me")
    with override_parley(MAX_REACTIONS_PER_MESSAGE=3, MAX_REACTIONS_PER_USER=2):
        for emoji in ("😀", "😁"):
            assert (await a.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": emoji}))["seq"]
        assert (await a.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "😂"}))["code"] == "too_many_reactions"
        assert (await b.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "😂"}))["seq"]
        assert (await b.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "🤣"}))["code"] == "too_many_reactions"
        assert (await b.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "😀"}))["seq"]  # not a new emoji


async def test_edits_and_reactions_take_the_edit_bucket(connect):
    ada = await make_user("ada")
    await make_room("lobby")
    a = await connect(ada, protocol=2)
    await a.join("lobby")
    ack = await post(a, "lobby", "m")
    with override_parley(EDITS_BURST=2, EDITS_PER_SEC=0.01):
        assert (await a.request({"type": "react", "room": "lobby", "seq": ack["seq"], "emoji": "😀"}))["type"] == "reacted"
        assert (await a.request({"type": "edit", "room": "lobby", "seq": ack["seq"], "text": "n"}))["type"] == "edited"
        refused = await a.request({"type": "delete", "room": "lobby", "seq": ack["seq"]})
        assert refused["code"] == "rate_limited" and refused["room"] == "lobby" and refused["retry_after_ms"] > 0
        assert (await post(a, "lobby", "sends have their own bucket"))["seq"]
    assert await database_sync_to_async(lambda: Message.objects.get(seq=ack["seq"]).deleted_at)() is None


# --- replies and mentions --------------------------------------------------------------------

async def test_a_reply_quotes_its_target_as_it_is_now(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a, b = await connect(ada, protocol=2), await connect(bob, protocol=2)
    await a.join("lobby")
    await b.join("lobby")
    target = await post(a, "lobby", "x" * 150)
    reply = await post(b, "lobby", "agreed", reply_to=target["seq"])
    live = [await next_event(a) for _ in range(2)][1]["message"]
    assert live["reply_to"] == {"seq": target["seq"], "author": {"id": ada.pk, "username": "ada"},
                                "excerpt": "x" * 100, "deleted": False}
    assert (await b.request({"type": "send", "room": "lobby", "text": "?", "reply_to": 4242}))["code"] == "message_not_found"
    await a.request({"type": "delete", "room": "lobby", "seq": target["seq"]})
    page = await b.request({"type": "history", "room": "lobby"})
    quoted = next(m for m in page["messages"] if m["seq"] == reply["seq"])
    assert quoted["reply_to"] == {"seq": target["seq"], "author": {"id": ada.pk, "username": "ada"},
                                  "excerpt": "", "deleted": True}


async def test_mentions_name_only_people_who_can_see_the_room(connect):
    ada, bob, carol = await make_user("ada"), await make_user("bob"), await make_user("carol")
    await make_user("dave")
    await database_sync_to_async(get_user_model().objects.create_superuser)("root", "root@example.com", "x")
    team = await make_room("team", owner=ada, private=True)
    await database_sync_to_async(services.membership_add)(room=team, user=bob)
    lobby = await make_room("lobby")
    await database_sync_to_async(services.message_create)(room_id=lobby.pk, author=carol, text="hi", client_id=None)
    a, b = await connect(ada, protocol=2), await connect(bob, protocol=2)
    await a.join("team")
    await a.join("lobby")
    await b.join("team")
    ack = await post(a, "team", "@bob and @carol and @ghost, see @bob. @root @room! mail ada@bob.com")
    got = (await next_event(b))["message"]
    # carol cannot see it; ghost is no one; root (staff) sees every room but is not in this one
    assert got["mentions"] == [{"id": bob.pk, "username": "bob"}]
    assert got["mention_room"] is True  # ada owns the room
    by_member = await post(b, "team", "@room hello @ada")
    got = (await next_event(a, ("message",)))
    while got["message"]["seq"] != by_member["seq"]:
        got = await next_event(a, ("message",))
    assert "mention_room" not in got["message"] and got["message"]["mentions"] == [{"id": ada.pk, "username": "ada"}]
    public = await post(a, "lobby", "hi @carol @dave")
    page = await a.request({"type": "history", "room": "lobby"})
    # in a public room: people who posted in it (carol), not every account (dave never did)
    assert [u["username"] for u in page["messages"][-1]["mentions"]] == ["carol"]
    edited = await a.request({"type": "edit", "room": "lobby", "seq": public["seq"], "text": "hi @ada @carol @bob"})
    assert edited["seq"]
    stored = await database_sync_to_async(lambda: Message.objects.get(room__slug="lobby", seq=public["seq"]).mentions)()
    assert stored == [{"id": ada.pk, "username": "ada"}, {"id": carol.pk, "username": "carol"}]
    assert ack["seq"] == 1
    assert (await post(a, "lobby", "@zed @nobody.")) and True
    with override_parley(ROOM_MENTIONS_PER_HOUR=1):
        from parley import limits
        limits.ROOM_MENTION_BUCKETS.forget(ada.pk)
        first = await post(a, "team", "@room one")
        second = await post(a, "team", "@room two")
    flags = await database_sync_to_async(lambda: dict(
        Message.objects.filter(room=team, seq__in=[first["seq"], second["seq"]]).values_list("seq", "mention_room")))()
    assert flags == {first["seq"]: True, second["seq"]: False}


# --- access ----------------------------------------------------------------------------------

async def test_a_member_removed_cannot_change_anything(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    team = await make_room("team", owner=ada, private=True)
    await database_sync_to_async(services.membership_add)(room=team, user=bob)
    b = await connect(bob, protocol=2)
    await b.join("team")
    ack = await post(b, "team", "mine")
    await database_sync_to_async(Membership.objects.filter(room=team, user=bob).delete)()  # no broadcast
    reply = await b.request({"type": "edit", "room": "team", "seq": ack["seq"], "text": "still mine?"})
    assert reply["code"] == "room_not_found"
    assert (await b.request({"type": "react", "room": "team", "seq": ack["seq"], "emoji": "👍"}))["code"] == "not_joined"


# --- resume ----------------------------------------------------------------------------------

async def test_resume_replays_every_entry_and_version_1_gets_the_messages(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a = await connect(ada, protocol=2)
    joined = await a.join("lobby")
    first = await post(a, "lobby", "one")
    await next_event(a)
    epoch, seen = joined["room"]["epoch"], first["seq"]
    await a.close()
    b = await connect(bob, protocol=2)
    await b.join("lobby")
    await b.request({"type": "react", "room": "lobby", "seq": first["seq"], "emoji": "🎉"})
    second = await post(b, "lobby", "two", reply_to=first["seq"])
    await b.request({"type": "edit", "room": "lobby", "seq": second["seq"], "text": "two!"})
    third = await post(b, "lobby", "three")
    await b.request({"type": "delete", "room": "lobby", "seq": third["seq"]})
    back = await connect(ada, protocol=2)
    resumed = await back.join("lobby", after_seq=seen, epoch=epoch)
    assert resumed["recovered"] is True and resumed["messages"] == []
    assert [(e["type"], e.get("seq") or e["message"]["seq"]) for e in resumed["events"]] == [
        ("reaction", seen + 1), ("message", seen + 2), ("edit", seen + 3), ("message", seen + 4), ("delete", seen + 5)]
    assert resumed["events"][1]["message"]["reply_to"]["seq"] == first["seq"]
    assert resumed["events"][3]["message"]["deleted"] is True  # as it is now; its delete follows
    old = await connect(ada)
    v1 = await old.join("lobby", after_seq=seen, epoch=epoch)
    assert v1["recovered"] is True and "events" not in v1
    assert [m["seq"] for m in v1["messages"]] == [second["seq"], third["seq"]]
    live = await post(b, "lobby", "four")
    assert (await next_event(back))["message"]["seq"] == live["seq"] == seen + 6


async def test_three_clients_dropping_mid_stream_end_with_the_database_view(connect):
    """Messages, edits, deletes and reactions interleaved by three users, each of whom drops its
    socket now and then and resumes: every client's fold of what it received equals the
    database's state of every message (seeded: a failure reruns the same way)."""
    rng = random.Random(15)
    users = [await make_user(n) for n in ("ada", "bob", "cy")]
    room = await make_room("lobby")
    clients = [await connect(u, protocol=2) for u in users]
    states: list[dict[int, dict[str, Any]]] = [{}, {}, {}]
    highs = [0, 0, 0]
    epoch = (await clients[0].join("lobby"))["room"]["epoch"]
    for c in clients[1:]:
        await c.join("lobby")
    mine: list[list[int]] = [[], [], []]
    everyone: list[int] = []

    async def drain(i: int) -> None:
        """Fold every log event client i has received so far (replies and presence skipped).
        receive_nothing, not a receive with a timeout: a timeout cancels the application."""
        c = clients[i]
        while True:
            if c.inbox:
                frame = c.inbox.pop(0)
            elif await c.ws.receive_nothing(timeout=0.05, interval=0.01):
                return
            else:
                frame = await c.ws.receive_json_from()
            if frame["type"] not in ("message", "edit", "delete", "reaction") or "ref" in frame:
                continue
            seq = frame["message"]["seq"] if frame["type"] == "message" else frame["seq"]
            assert seq == highs[i] + 1, (i, seq, highs[i])  # in order, no gap, no duplicate
            highs[i] = seq
            fold(states[i], frame, users[i].pk)

    for step in range(90):
        i = rng.randrange(3)
        c = clients[i]
        action = rng.random()
        if action < 0.1:  # drop the socket and resume
            await drain(i)
            await c.close()
            clients[i] = c = await connect(users[i], protocol=2)
            reply = await c.join("lobby", after_seq=highs[i], epoch=epoch)
            assert reply["recovered"] is True
            for frame in reply["events"]:
                seq = frame["message"]["seq"] if frame["type"] == "message" else frame["seq"]
                assert seq == highs[i] + 1
                highs[i] = seq
                fold(states[i], frame, users[i].pk)
        elif action < 0.45 or not everyone or (not mine[i] and action < 0.68):
            ack = await post(c, "lobby", f"m{step} @{rng.choice(['ada', 'bob', 'cy'])}",
                             **({"reply_to": rng.choice(everyone)} if everyone and rng.random() < 0.3 else {}))
            mine[i].append(ack["seq"])
            everyone.append(ack["seq"])
        elif action < 0.6 and mine[i]:
            edited = await c.request({"type": "edit", "room": "lobby", "seq": rng.choice(mine[i]), "text": f"e{step} @cy"})
            assert edited["type"] == "edited", edited
        elif action < 0.68 and mine[i]:
            seq = mine[i].pop(rng.randrange(len(mine[i])))
            everyone.remove(seq)
            assert (await c.request({"type": "delete", "room": "lobby", "seq": seq}))["type"] == "deleted"
        else:
            kind = "react" if rng.random() < 0.7 else "unreact"
            reacted = await c.request({"type": kind, "room": "lobby", "seq": rng.choice(everyone),
                                       "emoji": rng.choice("👍🎉😀")})
            assert reacted["type"] == "reacted", reacted
        if rng.random() < 0.3:
            await drain(rng.randrange(3))
    for i in range(3):
        await drain(i)
        await drain(i)
    kinds = await database_sync_to_async(lambda: set(Message.objects.filter(room=room).values_list("kind", flat=True)))()
    assert kinds == set(Message.Kind.values)  # the mix had every kind of entry
    last = await database_sync_to_async(lambda: type(room).objects.get(pk=room.pk).last_seq)()
    assert highs == [last] * 3
    for i in range(3):
        assert states[i] == await db_view(room, users[i].pk), users[i].username


async def test_entries_missed_live_are_filled_from_the_log_in_order(connect, parley_settings):
    """Changes stored without a broadcast (as another process's, whose broadcast was lost) reach
    a version 2 socket by gap fill, in seq order, as their live events would; a version 1 socket
    skips them and gets the message after them."""
    from parley import conversation, fanout

    parley_settings.GAP_FILL_DELAY_MS = 50
    ada = await make_user("ada")
    room = await make_room("lobby")
    a, old = await connect(ada, protocol=2), await connect(ada)
    await a.join("lobby")
    await old.join("lobby")
    first = await post(a, "lobby", "one")
    await next_event(a)
    await next_event(old)

    def quietly() -> None:  # no hub delivery: parley.fanout's subscriber is skipped for "socket"
        conversation.message_edit(room=room, actor=ada, seq=first["seq"], text="uno", source="socket")
        conversation.reaction_set(room=room, actor=ada, seq=first["seq"], emoji="🎉", add=True, source="socket")

    await database_sync_to_async(quietly)()
    last = (await database_sync_to_async(services.message_create)(room_id=room.pk, author=ada, text="two",
                                                                    client_id=None))[0]
    await fanout.broadcast_message(room_id=room.pk, room_slug="lobby", message=last)
    got = [await next_event(a) for _ in range(3)]
    assert [(f["type"], f.get("seq") or f["message"]["seq"]) for f in got] == [
        ("edit", first["seq"] + 1), ("reaction", first["seq"] + 2), ("message", last.seq)]
    assert got[0]["text"] == "uno" and got[1]["count"] == 1
    assert (await next_event(old))["message"]["seq"] == last.seq
    assert await old.nothing(timeout=0.2)


async def test_review_fixes_v1_resume_me_emoji_forms_tombstone_rights_and_the_join_mark(connect):
    """A version 1 resume says `me` right; "❤" and "❤️" are one reaction and a skin tone alone
    none; deleting someone's tombstone is forbidden, not a no-op; a fresh join does not resend
    the entries its page already shows."""
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a, b = await connect(ada, protocol=2), await connect(bob, protocol=2)
    joined = await a.join("lobby")
    await b.join("lobby")
    first = await post(a, "lobby", "love it")
    assert (await a.request({"type": "react", "room": "lobby", "seq": first["seq"], "emoji": "❤"}))["emoji"] == "❤️"
    again = await a.request({"type": "react", "room": "lobby", "seq": first["seq"], "emoji": "❤️"})
    assert (again["seq"], again["count"]) == (None, 1)
    assert (await a.request({"type": "react", "room": "lobby", "seq": first["seq"], "emoji": "🏻"}))["code"] == "bad_field"
    old = await connect(ada)
    resumed = await old.join("lobby", after_seq=0, epoch=joined["room"]["epoch"])
    assert resumed["recovered"] is True
    assert resumed["messages"][0]["reactions"] == [{"emoji": "❤️", "count": 1, "me": True}]
    await a.request({"type": "delete", "room": "lobby", "seq": first["seq"]})
    assert (await b.request({"type": "delete", "room": "lobby", "seq": first["seq"]}))["code"] == "forbidden"
    fresh = await connect(bob, protocol=2)
    page = await fresh.join("lobby")
    assert page["room"]["last_seq"] == first["seq"] + 2  # the message, its reaction, its delete
    nxt = await post(b, "lobby", "next")
    assert (await next_event(fresh))["message"]["seq"] == nxt["seq"]  # not the delete again


async def test_a_reply_racing_the_delete_of_its_target_never_lands_after_it(connect):
    """The reply's target is read under the room's lock (PostgreSQL: a transaction that locks
    the room first), so a reply is stored before the delete or refused after it."""
    import asyncio

    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a, b = await connect(ada, protocol=2), await connect(bob, protocol=2)
    await a.join("lobby")
    await b.join("lobby")
    for i in range(20):
        target = await post(a, "lobby", f"secret {i}")
        reply, deleted = await asyncio.gather(
            b.request({"type": "send", "room": "lobby", "text": "re", "reply_to": target["seq"]}),
            a.request({"type": "delete", "room": "lobby", "seq": target["seq"]}))
        assert deleted["type"] == "deleted"
        if reply["type"] == "ack":
            assert reply["seq"] < deleted["seq"], (reply, deleted)
        else:
            assert reply["code"] == "message_deleted"
