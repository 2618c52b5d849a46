"""Direct conversations (docs/protocol.md §12): POST /api/dms, one DM per set of people, private
by construction (staff included), the same log as a room (send, edit, react, resume), their
limits; and GET /api/users, the people picker. Through the real ASGI application, on SQLite
and on PostgreSQL + Redis."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from parley import room_views
from parley.models import Membership, Room, RoomState
from tests.conftest import make_room, make_user, override_parley
from tests.test_rooms_live import http

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def staff(name: str) -> Any:
    from parley import services

    u = services.user_create(username=name, password="correct-horse-battery")
    u.is_staff = True
    u.save()
    return u


async def test_opening_a_dm_makes_it_once_for_that_set_of_people(connect):
    ada, bob, _cat = await make_user("ada"), await make_user("bob"), await make_user("cat")
    bob_v2, ada_v2 = await connect(bob, protocol=2), await connect(ada, protocol=2)
    status, body = await http(ada, "POST", "/api/dms", {"usernames": ["bob"]})
    assert status == 201
    room = body["room"]
    assert room["slug"].startswith("dm-") and room["kind"] == "dm" and room["private"] is True
    assert room["archived"] is False and room["title"] == "ada, bob"
    assert [u["username"] for u in room["members"]] == ["ada", "bob"]
    # Every member hears of it, the creator's sockets too (an HTTP request has no socket to skip).
    for sock in (ada_v2, bob_v2):
        state = (await sock.recv_type("room_added"))["state"]
        assert state["room"]["slug"] == room["slug"] and state["notify"] == "all" and state["unread"] == 0
    # The same people, in any order, with the creator named or not: the same DM, 200.
    for who, names in ((ada, ["bob"]), (bob, ["ada"]), (ada, ["bob", "ada", "bob"])):
        status, again = await http(who, "POST", "/api/dms", {"usernames": names})
        assert status == 200 and again["room"]["slug"] == room["slug"]
    assert await bob_v2.nothing("room_added")  # reopening a listed DM announces nothing
    # Another set of people is another DM.
    status, group = await http(ada, "POST", "/api/dms", {"usernames": ["bob", "cat"]})
    assert status == 201 and group["room"]["slug"] != room["slug"]
    assert [u["username"] for u in group["room"]["members"]] == ["ada", "bob", "cat"]
    rows = await database_sync_to_async(lambda: sorted(RoomState.objects.filter(
        room__slug=group["room"]["slug"]).values_list("user__username", "listed", "last_read_seq")))()
    assert rows == [("ada", True, 0), ("bob", True, 0), ("cat", True, 0)]


async def test_a_dm_is_its_members_only_admins_included(connect):
    ada, _bob, eve = await make_user("ada"), await make_user("bob"), await make_user("eve")
    boss = await staff("boss")
    slug = (await http(ada, "POST", "/api/dms", {"usernames": ["bob"]}))[1]["room"]["slug"]
    for outsider in (eve, boss):
        sock = await connect(outsider, protocol=2)
        reply = await sock.request({"type": "join", "room": slug})
        assert reply["type"] == "error" and reply["code"] == "room_not_found"
        assert (await http(outsider, "GET", f"/api/rooms/{slug}/messages"))[0] == 404
        assert (await http(outsider, "POST", f"/api/rooms/{slug}/messages", {"text": "hi"}))[0] == 404
        listed = [r["slug"] for r in (await http(outsider, "GET", "/api/rooms"))[1]["rooms"]]
        assert slug not in listed
    # Staff still see and manage other private rooms.
    await make_room("team", owner=ada, private=True)
    assert "team" in [r["slug"] for r in (await http(boss, "GET", "/api/rooms"))[1]["rooms"]]
    # Its members are fixed and it has no owner to rename or archive it.
    for method, path, body in (("POST", f"/api/rooms/{slug}/members", {"username": "eve"}),
                               ("DELETE", f"/api/rooms/{slug}/members/bob", None),
                               ("PATCH", f"/api/rooms/{slug}", {"title": "x"})):
        status, answer = await http(ada, method, path, body)
        assert (status, answer["error"]["code"]) == (409, "dm_fixed"), path
    # Nobody names a room dm-…: that namespace is the DMs'.
    status, answer = await http(ada, "POST", "/api/rooms", {"slug": "dm-mine", "title": "x"})
    assert (status, answer["error"]["code"]) == (409, "slug_unavailable")


async def test_a_dm_has_the_same_log_as_a_room(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    slug = (await http(ada, "POST", "/api/dms", {"usernames": ["bob"]}))[1]["room"]["slug"]
    a, b = await connect(ada, protocol=2), await connect(bob, protocol=2)
    joined = await b.join(slug)
    assert [u["username"] for u in joined["room"]["members"]] == ["ada", "bob"]
    await a.join(slug)
    ack = await a.say(slug, "hello @bob", client_id="d1")
    message = (await b.recv_type("message"))["message"]
    assert message["text"] == "hello @bob" and message["mentions"] == [{"id": bob.pk, "username": "bob"}]
    assert (await a.request({"type": "edit", "room": slug, "seq": ack["seq"], "text": "hi"}))["type"] == "edited"
    assert (await b.request({"type": "react", "room": slug, "seq": ack["seq"], "emoji": "👍"}))["type"] == "reacted"
    # A resume replays every entry after the seq the client had.
    resumed = await b.join(slug, after_seq=ack["seq"], epoch=joined["room"]["epoch"])
    assert resumed["recovered"] is True and [e["type"] for e in resumed["events"]] == ["edit", "reaction"]
    # Only the author may edit, and a member deletes only their own messages in a DM.
    assert (await b.request({"type": "delete", "room": slug, "seq": ack["seq"]}))["code"] == "forbidden"
    # Leaving hides it from the list; opening it again brings it back (room_added).
    assert (await http(bob, "POST", f"/api/rooms/{slug}/leave"))[0] == 200
    assert (await b.recv_type("room_removed"))["reason"] == "left"
    assert (await http(bob, "POST", "/api/dms", {"usernames": ["ada"]}))[0] == 200
    assert (await b.recv_type("room_added"))["state"]["room"]["slug"] == slug
    assert await database_sync_to_async(Membership.objects.filter(room__slug=slug).count)() == 2


async def test_dm_requests_that_are_refused():
    ada, bob = await make_user("ada"), await make_user("bob")
    others = [await make_user(f"u{i}") for i in range(8)]
    cases = [
        ({"usernames": []}, 400, "bad_field"),
        ({"usernames": ["ada"]}, 400, "bad_field"),  # nobody else
        ({"usernames": "bob"}, 400, "bad_field"),
        ({"usernames": [7]}, 400, "bad_field"),
        ({}, 400, "bad_field"),
        ({"usernames": ["nobody"]}, 404, "user_not_found"),
        # MAX_DM_MEMBERS (8) counts the creator: seven others at most.
        ({"usernames": [u.username for u in others]}, 400, "too_many_members"),
    ]
    for body, status, code in cases:
        got, answer = await http(ada, "POST", "/api/dms", body)
        assert (got, answer["error"]["code"]) == (status, code), body
    assert (await http(ada, "POST", "/api/dms", {"usernames": [u.username for u in others[:7]]}))[0] == 201
    assert not await database_sync_to_async(Room.objects.filter(kind="dm", memberships__user=bob).exists)()


async def test_dm_creation_and_user_search_are_rate_limited():
    ada, bob = await make_user("ada"), await make_user("bob")
    room_views._dm_creations.forget(ada.pk)
    room_views._user_searches.forget(ada.pk)
    with override_parley(DMS_CREATED_PER_USER_PER_HOUR=2, USER_SEARCHES_PER_MIN=2):
        assert (await http(ada, "POST", "/api/dms", {"usernames": ["bob"]}))[0] == 201
        assert (await http(ada, "POST", "/api/dms", {"usernames": ["nobody"]}))[0] == 404  # refused ones count
        status, body = await http(ada, "POST", "/api/dms", {"usernames": ["bob"]})
        assert (status, body["error"]["code"]) == (429, "rate_limited") and body["error"]["retry_after_ms"] > 0
        assert (await http(ada, "GET", "/api/users?q=b"))[0] == 200
        assert (await http(ada, "GET", "/api/users?q=b"))[0] == 200
        status, body = await http(ada, "GET", "/api/users?q=b")
        assert (status, body["error"]["code"]) == (429, "rate_limited")
    with override_parley(USER_SEARCHES_PER_MIN=0):
        status, body = await http(bob, "GET", "/api/users?q=a")
        assert (status, body["error"]["code"]) == (403, "user_search_disabled")
    room_views._dm_creations.forget(ada.pk)
    room_views._user_searches.forget(ada.pk)


async def test_user_search_is_a_bounded_prefix_match_of_active_users():
    ada = await make_user("ada")
    for i in range(12):
        await make_user(f"sam{i:02d}")
    await make_user("samantha")

    @database_sync_to_async
    def deactivate(name: str) -> None:
        from django.contrib.auth import get_user_model

        get_user_model().objects.filter(username=name).update(is_active=False)

    await deactivate("sam00")
    status, body = await http(ada, "GET", "/api/users?q=SAM")
    assert status == 200
    names = [u["username"] for u in body["users"]]
    assert len(names) == 10 and names == sorted(names) and "sam00" not in names
    assert set(body["users"][0]) == {"id", "username"}  # nothing but what a message shows
    assert [u["username"] for u in (await http(ada, "GET", "/api/users?q=samant"))[1]["users"]] == ["samantha"]
    assert (await http(ada, "GET", "/api/users?q=zz"))[1] == {"users": []}
    for q in ("", "%20%20", "x" * 151):
        status, body = await http(ada, "GET", f"/api/users?q={q}")
        assert (status, body["error"]["code"]) == (400, "bad_field"), q
