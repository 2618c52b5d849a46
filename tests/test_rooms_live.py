"""Rooms and members, live (docs/protocol.md §12): the HTTP calls that add, remove, rename,
archive and hand over, and the `room_added` / `room_removed` / `room_updated` frames they send
to every version 2 socket of each user concerned — through the real ASGI application, on SQLite
and on PostgreSQL + Redis. Version 1 sockets keep exactly the frames they had."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient

from parley import services
from parley.models import Membership, Room, RoomState
from tests.conftest import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)

STATE_KEYS = {"room", "last_read_seq", "unread", "mentions", "notify", "muted"}


@database_sync_to_async
def http(user: Any, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """One API call as `user` (a session; the test client does not enforce CSRF)."""
    client = HttpClient()
    client.force_login(user)
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs = {"data": json.dumps(body), "content_type": "application/json"}
    response = getattr(client, method.lower())(path, **kwargs)
    return response.status_code, response.json()


@database_sync_to_async
def post(room: Room, author: Any, text: str) -> Any:
    return services.message_post(room=room, text=text, author=author, source="python")[0]


@database_sync_to_async
def state_of(user: Any, room: Room) -> RoomState | None:
    return RoomState.objects.filter(user=user, room=room).first()


async def test_adding_a_member_sends_room_added_with_their_room_state(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    team = await make_room("team", owner=ada, private=True)
    for i in range(3):
        await post(team, ada, f"m{i}")
    bob_v2, bob_v1, ada_v2 = await connect(bob, protocol=2), await connect(bob), await connect(ada, protocol=2)
    status, body = await http(ada, "POST", "/api/rooms/team/members", {"username": "bob"})
    assert status == 201 and body["member"]["role"] == "member"
    added = await bob_v2.recv_type("room_added")
    state = added["state"]
    assert set(state) == STATE_KEYS
    assert state["room"] == {"slug": "team", "title": "Team", "private": True, "epoch": team.epoch,
                             "last_seq": 3, "kind": "room", "archived": False}
    # Nothing read yet: the three messages by ada are unread; a room notifies mentions by default.
    assert (state["last_read_seq"], state["unread"], state["mentions"], state["notify"], state["muted"]) == (
        0, 3, 0, "mentions", False)
    row = await state_of(bob, team)
    assert row is not None and row.listed and row.last_read_seq == 0
    # The joined room of the new member works at once; version 1 sockets and others get nothing.
    await bob_v2.join("team")
    assert await bob_v1.nothing("room_added") and await ada_v2.nothing("room_added")
    # Adding again changes nothing and announces nothing.
    assert (await http(ada, "POST", "/api/rooms/team/members", {"username": "bob"}))[0] == 201
    assert await bob_v2.nothing("room_added")


async def test_removing_a_member_makes_their_sockets_leave_then_says_why(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    team = await make_room("team", owner=ada, private=True)
    await database_sync_to_async(services.membership_add)(room=team, user=bob)
    v2, v1, idle = await connect(bob, protocol=2), await connect(bob), await connect(bob, protocol=2)
    await v2.join("team")
    await v1.join("team")
    status, body = await http(ada, "DELETE", "/api/rooms/team/members/bob")
    assert status == 200 and body["removed"]["username"] == "bob"
    # The joined version 2 socket: `left` first (as today), then room_removed.
    left = await v2.recv_type("left")
    assert left == {"type": "left", "room": "team", "reason": "removed"}
    assert await v2.recv_type("room_removed") == {"type": "room_removed", "room": "team", "reason": "removed"}
    assert await v2.nothing("left")  # one `left`, though the removal reached it twice
    # A socket that had not joined the room hears room_removed alone.
    assert await idle.recv_type("room_removed") == {"type": "room_removed", "room": "team", "reason": "removed"}
    assert await idle.nothing("left")
    # Version 1: exactly the frame it always had, once, and nothing new.
    assert await v1.recv_type("left") == {"type": "left", "room": "team", "reason": "removed"}
    assert await v1.nothing("room_removed") and await v1.nothing("left")
    assert await state_of(bob, team) is None
    # The room is gone for them: a send is room_not_found.
    reply = await v2.request({"type": "join", "room": "team"})
    assert reply["type"] == "error" and reply["code"] == "room_not_found"


async def test_leaving_a_private_room_and_the_owner_who_must_hand_over_first(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    team = await make_room("team", owner=ada, private=True)
    await database_sync_to_async(services.membership_add)(room=team, user=bob)
    bob_v2, ada_v2 = await connect(bob, protocol=2), await connect(ada, protocol=2)
    await bob_v2.join("team")
    status, body = await http(ada, "POST", "/api/rooms/team/leave")
    assert (status, body["error"]["code"]) == (409, "owner_cannot_leave")
    assert await ada_v2.nothing("room_removed")
    status, body = await http(bob, "POST", "/api/rooms/team/leave")
    assert status == 200 and body == {"left": "team"}
    assert (await bob_v2.recv_type("left"))["reason"] == "removed"
    assert await bob_v2.recv_type("room_removed") == {"type": "room_removed", "room": "team", "reason": "left"}
    assert not await database_sync_to_async(Membership.objects.filter(room=team, user=bob).exists)()
    # Hand the room over: bob again, made owner; ada becomes a moderator and may leave.
    await database_sync_to_async(services.membership_add)(room=team, user=bob)
    status, body = await http(ada, "PATCH", "/api/rooms/team/members/bob", {"role": "owner"})
    assert status == 200 and body["member"]["role"] == "owner"
    roles = await database_sync_to_async(lambda: dict(Membership.objects.filter(room=team).values_list(
        "user__username", "role")))()
    assert roles == {"ada": "moderator", "bob": "owner"}
    assert (await database_sync_to_async(Room.objects.get)(pk=team.pk)).owner_id == bob.pk
    assert (await http(ada, "POST", "/api/rooms/team/leave"))[0] == 200
    # The owner's own role changes only by handing over.
    status, body = await http(bob, "PATCH", "/api/rooms/team/members/bob", {"role": "member"})
    assert (status, body["error"]["code"]) == (409, "owner_role")


async def test_leaving_a_public_room_unlists_it_and_keeps_access(connect):
    ada = await make_user("ada")
    await make_room("lobby")
    v2 = await connect(ada, protocol=2)
    await v2.join("lobby")
    status, _ = await http(ada, "POST", "/api/rooms/lobby/leave")
    assert status == 200
    assert await v2.recv_type("room_removed") == {"type": "room_removed", "room": "lobby", "reason": "left"}
    row = await state_of(ada, await database_sync_to_async(Room.objects.get)(slug="lobby"))
    assert row is not None and not row.listed
    await v2.join("lobby")  # still open to every signed-in user


async def test_rename_archive_and_roles_reach_every_member_as_room_updated(connect):
    ada, bob, eve = await make_user("ada"), await make_user("bob"), await make_user("eve")
    team = await make_room("team", owner=ada, private=True)
    await database_sync_to_async(services.membership_add)(room=team, user=bob)
    bob_v2, eve_v2, bob_v1 = await connect(bob, protocol=2), await connect(eve, protocol=2), await connect(bob)
    status, body = await http(ada, "PATCH", "/api/rooms/team", {"title": "  The team "})
    assert status == 200 and body["room"]["title"] == "The team" and body["room"]["kind"] == "room"
    updated = await bob_v2.recv_type("room_updated")
    assert updated["room"]["title"] == "The team" and updated["room"]["archived"] is False
    assert await eve_v2.nothing("room_updated") and await bob_v1.nothing("room_updated")
    # Members may not change the room; nobody outside it learns it exists.
    assert (await http(bob, "PATCH", "/api/rooms/team", {"title": "x"}))[0] == 403
    assert (await http(eve, "PATCH", "/api/rooms/team", {"title": "x"}))[0] == 404
    for bad in ({"title": ""}, {"title": "x" * 101}, {"archived": "yes"}, {}):
        status, body = await http(ada, "PATCH", "/api/rooms/team", bad)
        assert status == 400, bad
    status, body = await http(ada, "PATCH", "/api/rooms/team/members/bob", {"role": "moderator"})
    assert status == 200 and body["member"]["role"] == "moderator"
    assert (await bob_v2.recv_type("room_updated"))["room"]["slug"] == "team"
    status, body = await http(ada, "PATCH", "/api/rooms/team/members/bob", {"role": "admin"})
    assert (status, body["error"]["code"]) == (400, "bad_field")
    assert (await http(bob, "PATCH", "/api/rooms/team/members/ada", {"role": "member"}))[0] == 403


async def test_an_archived_room_is_read_only(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    team = await make_room("team", owner=ada, private=True)
    await database_sync_to_async(services.membership_add)(room=team, user=bob)
    first = await post(team, bob, "before")
    v2 = await connect(bob, protocol=2)
    await v2.join("team")
    status, body = await http(ada, "PATCH", "/api/rooms/team", {"archived": True})
    assert status == 200 and body["room"]["archived"] is True
    assert (await v2.recv_type("room_updated"))["room"]["archived"] is True
    for frame in ({"type": "send", "room": "team", "text": "hi", "client_id": "c1"},
                  {"type": "edit", "room": "team", "seq": first.seq, "text": "changed"},
                  {"type": "react", "room": "team", "seq": first.seq, "emoji": "👍"}):
        reply = await v2.request(frame)
        assert reply["type"] == "error" and reply["code"] == "room_archived" and reply["room"] == "team", frame
    status, body = await http(bob, "POST", "/api/rooms/team/messages", {"text": "hi"})
    assert (status, body["error"]["code"]) == (409, "room_archived")
    status, body = await http(bob, "PATCH", f"/api/rooms/team/messages/{first.seq}", {"text": "x"})
    assert (status, body["error"]["code"]) == (409, "room_archived")
    # Reading works, and a text can still be erased.
    assert (await v2.request({"type": "history", "room": "team"}))["type"] == "history"
    assert (await v2.request({"type": "delete", "room": "team", "seq": first.seq}))["type"] == "deleted"
    # A join says so; unarchived, it takes messages again.
    assert (await v2.join("team"))["room"]["archived"] is True
    assert (await http(ada, "PATCH", "/api/rooms/team", {"archived": False}))[0] == 200
    assert (await v2.say("team", "after", client_id="c1"))["duplicate"] is False


async def test_a_moderator_may_delete_others_messages_a_member_may_not(connect):
    ada, bob, cat = await make_user("ada"), await make_user("bob"), await make_user("cat")
    team = await make_room("team", owner=ada, private=True)
    for u in (bob, cat):
        await database_sync_to_async(services.membership_add)(room=team, user=u)
    target = await post(team, cat, "spam")
    bob_v2 = await connect(bob, protocol=2)
    await bob_v2.join("team")
    reply = await bob_v2.request({"type": "delete", "room": "team", "seq": target.seq})
    assert reply["type"] == "error" and reply["code"] == "forbidden"
    await http(ada, "PATCH", "/api/rooms/team/members/bob", {"role": "moderator"})
    reply = await bob_v2.request({"type": "delete", "room": "team", "seq": target.seq})
    assert reply["type"] == "deleted" and reply["target"] == target.seq


async def test_a_deleted_room_is_removed_from_its_members_lists(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    team = await make_room("team", owner=ada, private=True)
    await database_sync_to_async(services.membership_add)(room=team, user=bob)
    v2 = await connect(bob, protocol=2)
    await v2.join("team")
    await database_sync_to_async(Room.objects.filter(pk=team.pk).delete)()
    assert (await v2.recv_type("left"))["room"] == "team"
    assert await v2.recv_type("room_removed") == {"type": "room_removed", "room": "team", "reason": "deleted"}


async def test_version_1_joined_room_object_is_unchanged_version_2_has_kind_and_archived(connect):
    ada = await make_user("ada")
    await make_room("lobby")
    v1, v2 = await connect(ada), await connect(ada, protocol=2)
    assert set((await v1.join("lobby"))["room"]) == {"slug", "title", "private", "epoch", "last_seq"}
    room = (await v2.join("lobby"))["room"]
    assert (room["kind"], room["archived"]) == ("room", False) and "members" not in room
    status, body = await http(ada, "GET", "/api/rooms")
    assert status == 200 and body["rooms"][0]["kind"] == "room" and body["rooms"][0]["archived"] is False


async def test_the_django_admin_adding_a_member_or_renaming_tells_them_live(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    team = await make_room("team", owner=ada, private=True)

    @database_sync_to_async
    def admin_save(title: str, members: list[Any]) -> int:
        boss = services.user_create(username=f"boss{len(members)}", password="correct-horse-battery")
        boss.is_staff = boss.is_superuser = True
        boss.save()
        client = HttpClient()
        client.force_login(boss)
        current = list(Membership.objects.filter(room=team).order_by("pk"))
        data = {"slug": "team", "title": title, "kind": "room", "is_private": "on", "owner": str(ada.pk),
                "memberships-TOTAL_FORMS": str(len(current) + len(members)),
                "memberships-INITIAL_FORMS": str(len(current)), "memberships-MIN_NUM_FORMS": "0",
                "memberships-MAX_NUM_FORMS": "1000"}
        rows = [(m.pk, m.user_id, m.role) for m in current] + [("", u.pk, "member") for u in members]
        for i, (pk, user_id, role) in enumerate(rows):
            data.update({f"memberships-{i}-id": str(pk), f"memberships-{i}-room": str(team.pk),
                         f"memberships-{i}-user": str(user_id), f"memberships-{i}-role": role})
        return client.post(f"/admin/parley/room/{team.pk}/change/", data).status_code

    bob_v2 = await connect(bob, protocol=2)
    assert await admin_save("Team", [bob]) == 302
    assert (await bob_v2.recv_type("room_added"))["state"]["room"]["slug"] == "team"
    assert (await state_of(bob, team)).listed
    assert await admin_save("Renamed", []) == 302
    assert (await bob_v2.recv_type("room_updated"))["room"]["title"] == "Renamed"
