"""Rules of docs/protocol.md that a client written from it alone relies on (§2, §3, §7, §8):
which error wins, null fields, integer ranges, a resume past last_seq, the one limit rule, what
`GET …/members` lists, who counts as an admin, and the handshake limit's token bucket."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient

from parley import limits, protocol, ws_auth
from tests.conftest import make_room, make_token, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def test_which_error_wins_for_a_room_not_joined(connect):
    """§3: a slug the socket has not joined is not_joined for leave/send/history/typing whether
    or not the room exists (nothing is revealed); a string that cannot be a slug is
    room_not_found; only join looks the room up."""
    owner = await make_user("owner")
    await make_room("lobby")
    await make_room("secret", owner=owner, private=True)
    c = await connect(await make_user("ada"))
    for room in ("nosuch", "lobby", "secret"):
        for frame in ({"type": "send", "room": room, "text": "hi", "client_id": "k"},
                      {"type": "history", "room": room}, {"type": "typing", "room": room},
                      {"type": "leave", "room": room}):
            err = await c.request(frame)
            assert (err["code"], err["room"]) == ("not_joined", room), (frame, err)
    for frame in ({"type": "send", "room": "NoSuch", "text": "hi"}, {"type": "history", "room": "lo\x00bby"},
                  {"type": "join", "room": "Lobby"}):
        assert (await c.request(frame))["code"] == "room_not_found", frame
    for room in ("nosuch", "secret"):
        err = await c.request({"type": "join", "room": room})
        assert (err["code"], err["room"]) == ("room_not_found", room)


async def test_null_fields_are_absent_on_the_wire(connect):
    room = await make_room("lobby")
    c = await connect(await make_user("ada"))
    joined = await c.join("lobby", after_seq=None, epoch=None, limit=None)
    assert joined["recovered"] is None  # not a resume: after_seq null is no after_seq
    ack = await c.say("lobby", "hello")
    await c.send({"type": "ping", "ref": None})  # ref null: a pong without ref, not bad_field
    assert await c.recv_type("pong") == {"type": "pong"}
    resumed = await c.join("lobby", after_seq=ack["seq"] - 1, epoch=room.epoch, limit=None)
    assert resumed["recovered"] is True


async def test_bad_frame_echoes_a_valid_ref(connect):
    c = await connect(await make_user("ada"))
    for frame in ({"ref": "no-type"}, {"type": None, "ref": "null-type"}, {"type": 5, "ref": "int-type"}):
        await c.send(frame)
        err = await c.recv()
        assert (err["code"], err.get("ref")) == ("bad_frame", frame["ref"]), err


async def test_a_resume_past_last_seq_is_not_recovered(connect):
    """§3/§5: after_seq above the room's last_seq: recovered false and the newest page."""
    room = await make_room("lobby")
    writer = await connect(await make_user("writer"))
    await writer.join("lobby")
    for i in range(3):
        await writer.say("lobby", f"m{i}")
    reader = await connect(await make_user("reader"))
    for after in (4, 1000, 2**53):
        joined = await reader.join("lobby", after_seq=after, epoch=room.epoch)
        assert joined["recovered"] is False and [m["seq"] for m in joined["messages"]] == [1, 2, 3]
        assert joined["room"]["last_seq"] == 3
    err = await reader.request({"type": "join", "room": "lobby", "after_seq": 2**53 + 1, "epoch": room.epoch})
    assert (err["code"], err["field"]) == ("bad_field", "after_seq")


@pytest.mark.parametrize("limit", [101, 1000, 2**53])
async def test_a_limit_above_the_page_max_is_clamped_on_the_socket_and_over_http(connect, parley_settings, limit):
    """One rule, both paths (security.md): clamped to PARLEY_HISTORY_PAGE_MAX."""
    parley_settings.HISTORY_PAGE_MAX = 4
    await make_room("lobby")
    user = await make_user("ada")
    c = await connect(user)
    await c.join("lobby")
    for i in range(6):
        await c.say("lobby", f"m{i}")
    joined = await c.join("lobby", limit=limit)
    assert [m["seq"] for m in joined["messages"]] == [3, 4, 5, 6] and joined["has_more"] is True
    page = await c.request({"type": "history", "room": "lobby", "limit": limit})
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5, 6] and page["has_more"] is True
    token = await make_token(user)
    http = HttpClient(headers={"Authorization": f"Bearer {token}"})
    response = await database_sync_to_async(http.get)(f"/api/rooms/lobby/messages?limit={limit}")
    assert [m["seq"] for m in json.loads(response.content)["messages"]] == [3, 4, 5, 6]
    for bad in (0, -1, 2**53 + 1):
        err = await c.request({"type": "history", "room": "lobby", "limit": bad})
        assert (err["code"], err["field"]) == ("bad_field", "limit")
        response = await database_sync_to_async(http.get)(f"/api/rooms/lobby/messages?limit={bad}")
        assert response.status_code == 400 and json.loads(response.content)["error"]["code"] == "bad_field"


async def test_members_of_a_public_room_are_its_memberships_not_who_is_online(connect):
    """§8: GET …/members lists memberships: for a public room only its creator's owner row."""
    creator = await make_user("creator")
    await make_room("made", owner=creator)
    await make_room("lobby")  # no owner (manage.py bootstrap's kind)
    ada = await make_user("ada")
    online = await connect(ada)
    await online.join("made")
    http = HttpClient(headers={"Authorization": f"Bearer {await make_token(ada)}"})
    made = json.loads((await database_sync_to_async(http.get)("/api/rooms/made/members")).content)
    assert made == {"members": [{"id": creator.pk, "username": "creator", "role": "owner"}]}
    lobby = json.loads((await database_sync_to_async(http.get)("/api/rooms/lobby/members")).content)
    assert lobby == {"members": []}
    response = await database_sync_to_async(http.post)("/api/rooms/made/members", {"username": "ada"},
                                                       content_type="application/json")
    assert response.status_code == 400 and json.loads(response.content)["error"]["code"] == "room_public"


@database_sync_to_async
def make_admin(name: str, **flags: bool):
    from parley import services

    user = services.user_create(username=name, password="correct-horse-battery")
    for key, value in flags.items():
        setattr(user, key, value)
    user.save()
    return user


@pytest.mark.parametrize("flags", [{"is_staff": True}, {"is_superuser": True}])
async def test_an_admin_is_staff_or_superuser(connect, flags):
    """§8: "admin" = Django is_staff or is_superuser: sees every private room, manages members."""
    owner = await make_user("owner")
    await make_room("secret", owner=owner, private=True)
    await make_user("guest")
    admin = await make_admin("root", **flags)
    c = await connect(admin)
    assert (await c.join("secret"))["room"]["private"] is True
    http = HttpClient(headers={"Authorization": f"Bearer {await make_token(admin)}"})
    response = await database_sync_to_async(http.post)("/api/rooms/secret/members", {"username": "guest"},
                                                       content_type="application/json")
    assert response.status_code == 201
    plain = await connect(await make_user("plain"))
    assert (await plain.request({"type": "join", "room": "secret"}))["code"] == "room_not_found"


@pytest.mark.parametrize("bucket_map", ["_refused_by_address", "_by_user"])
def test_the_handshake_limits_are_token_buckets(monkeypatch, parley_settings, bucket_map):
    """§7: PARLEY_HANDSHAKES_PER_IP_PER_MIN (refused handshakes per address) and
    PARLEY_HANDSHAKES_PER_USER_PER_MIN are that many tokens per key, refilled continuously at
    that many per minute: neither a fixed nor a sliding window."""
    parley_settings.HANDSHAKES_PER_IP_PER_MIN = parley_settings.HANDSHAKES_PER_USER_PER_MIN = 120
    clock = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    buckets = getattr(ws_auth, bucket_map)
    monkeypatch.setattr(buckets, "_buckets", {})
    assert all(buckets.take("k1") == 0 for _ in range(120))  # the whole burst at once
    assert buckets.take("k1") == pytest.approx(0.5)  # then one every 60/120 s
    clock[0] += 0.5
    assert buckets.take("k1") == 0
    assert buckets.take("k1") > 0
    clock[0] += 30  # half a minute refills 60, not a window's worth
    assert sum(buckets.take("k1") == 0 for _ in range(100)) == 60
    assert buckets.take("k2") == 0  # per key


def test_protocol_max_seq_is_two_to_the_53():
    assert protocol.MAX_SEQ == 2**53 == 9_007_199_254_740_992
