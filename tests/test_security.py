"""Authorization and revocation, live: private rooms, removed members, revoked tokens, headers."""

import json
import logging

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client as HttpClient
from django.utils import timezone

from parley import services
from parley.models import ApiToken, Membership, Message
from tests.conftest import make_room, make_token, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def close_code(client, timeout: float = 3) -> int:
    while True:
        out = await client.ws.receive_output(timeout=timeout)
        if out["type"] == "websocket.close":
            return out.get("code", 1000)


def api(user_token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {user_token}"}


async def test_revoking_a_token_closes_its_sockets_only(connect):
    user = await make_user("ada")
    revoked_socket, other_socket = await connect(user), await connect(user)
    token = await database_sync_to_async(ApiToken.objects.filter(user=user).order_by("pk").first)()
    await database_sync_to_async(services.token_revoke)(token=token)
    assert await close_code(revoked_socket) == 4401
    assert (await other_socket.request({"type": "ping"}))["type"] == "pong"  # its own token is fine


async def test_deactivating_a_user_closes_all_their_sockets_in_every_room(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    first, second, other = await connect(ada), await connect(ada), await connect(bob)

    def deactivate() -> None:
        ada.is_active = False
        ada.save()  # a plain save, as the admin's user form does

    await database_sync_to_async(deactivate)()
    assert await close_code(first) == 4401 and await close_code(second) == 4401
    assert (await other.request({"type": "ping"}))["type"] == "pong"


async def test_deleting_a_user_closes_their_sockets(connect):
    ada = await make_user("ada")
    socket = await connect(ada)
    await database_sync_to_async(ada.delete)()
    assert await close_code(socket) == 4401


async def test_saving_an_active_user_closes_nothing(connect):
    ada = await make_user("ada")
    socket = await connect(ada)
    await database_sync_to_async(ada.save)()
    assert (await socket.request({"type": "ping"}))["type"] == "pong"


async def test_a_send_after_a_deactivation_without_signal_is_refused(connect, parley_settings):
    """`QuerySet.update` sends no signal, and the periodic check is off: the send's own access
    check (the ingest batch's query) sees the user inactive, stores nothing, closes 4401."""
    parley_settings.REVOCATION_CHECK_SECS = 0
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a, b = await connect(ada), await connect(bob)
    await a.join("lobby")
    await b.join("lobby")
    await database_sync_to_async(get_user_model().objects.filter(pk=ada.pk).update)(is_active=False)
    await a.send({"type": "send", "ref": "s", "room": "lobby", "text": "too late", "client_id": "c"})
    assert await close_code(a) == 4401
    assert await b.nothing("message")
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert (await b.say("lobby", "bob is fine"))["seq"] == 1


async def test_history_join_and_typing_check_the_token(connect, parley_settings):
    parley_settings.REVOCATION_CHECK_SECS = 0
    ada = await make_user("ada")
    await make_room("lobby")
    socks = [await connect(ada) for _ in range(3)]
    for sock in socks[:2]:
        await sock.join("lobby")
    await database_sync_to_async(ApiToken.objects.filter(user=ada).update)(revoked_at=timezone.now())
    await socks[0].send({"type": "history", "room": "lobby"})
    await socks[1].send({"type": "typing", "room": "lobby"})
    await socks[2].send({"type": "join", "room": "lobby"})
    assert [await close_code(sock) for sock in socks] == [4401, 4401, 4401]


async def test_the_periodic_check_closes_idle_sockets_of_a_silent_revocation(connect, parley_settings):
    parley_settings.REVOCATION_CHECK_SECS = 1
    ada, bob, carol = await make_user("ada"), await make_user("bob"), await make_user("carol")
    a, b, c = await connect(ada), await connect(bob), await connect(carol)
    await database_sync_to_async(get_user_model().objects.filter(pk=ada.pk).update)(is_active=False)
    await database_sync_to_async(ApiToken.objects.filter(user=bob).update)(revoked_at=timezone.now())
    assert await close_code(a, timeout=4) == 4401 and await close_code(b, timeout=4) == 4401
    assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_revoked_token_is_refused_at_the_next_handshake(connect):
    from tests.conftest import open_socket

    user = await make_user("ada")
    raw = await make_token(user)
    token = await database_sync_to_async(ApiToken.objects.get)(user=user)
    await database_sync_to_async(services.token_revoke)(token=token)
    connected, _ = await open_socket(headers=[(b"authorization", f"Bearer {raw}".encode())])
    assert not connected


async def test_removed_member_leaves_the_room_at_once(connect):
    owner, guest = await make_user("owner"), await make_user("guest")
    room = await make_room("secret", owner=owner, private=True)
    await database_sync_to_async(services.membership_add)(room=room, user=guest)
    o, g = await connect(owner), await connect(guest)
    await o.join("secret")
    await g.join("secret")
    await o.say("secret", "before")
    assert [m["text"] for m in await g.messages(1)] == ["before"]
    await database_sync_to_async(services.membership_remove)(room=room, user=guest)
    left = await g.recv_type("left")
    assert left == {"type": "left", "room": "secret", "reason": "removed"}
    await o.say("secret", "after")
    assert await g.nothing("message", timeout=0.3)
    refused = await g.request({"type": "join", "room": "secret"})
    assert refused["code"] == "room_not_found"


def test_member_management_api():
    owner = services.user_create(username="owner", password="pw-owner-123")
    guest = services.user_create(username="guest", password="pw-guest-123")
    stranger = services.user_create(username="stranger", password="pw-x-12345")
    owner_t, guest_t, stranger_t = (services.token_create(user=u)[1] for u in (owner, guest, stranger))
    http = HttpClient()
    made = http.post("/api/rooms", json.dumps({"slug": "team", "title": "Team", "private": True}),
                     content_type="application/json", **api(owner_t))
    assert made.status_code == 201
    assert http.get("/api/rooms/team/messages", **api(guest_t)).status_code == 404  # invisible
    add = {"data": json.dumps({"username": "guest"}), "content_type": "application/json"}
    assert http.post("/api/rooms/team/members", **add, **api(stranger_t)).status_code == 404
    assert http.post("/api/rooms/team/members", **add, **api(owner_t)).status_code == 201
    assert http.post("/api/rooms/team/members", json.dumps({"username": "stranger"}),
                     content_type="application/json", **api(guest_t)).status_code == 403  # members can't add
    members = http.get("/api/rooms/team/members", **api(guest_t)).json()["members"]
    assert [(m["username"], m["role"]) for m in members] == [("guest", "member"), ("owner", "owner")]
    assert http.delete("/api/rooms/team/members/owner", **api(owner_t)).status_code == 404  # owner stays
    assert http.delete("/api/rooms/team/members/guest", **api(owner_t)).status_code == 200
    assert not Membership.objects.filter(user=guest).exists()
    assert http.get("/api/rooms/team/messages", **api(guest_t)).status_code == 404


def test_staff_manage_any_private_room():
    owner = services.user_create(username="owner", password="pw-owner-123")
    admin = services.user_create(username="root", password="pw-root-1234")
    admin.is_staff = True
    admin.save()
    services.room_create(slug="team", title="Team", owner=owner, is_private=True)
    services.user_create(username="guest", password="pw-guest-123")
    token = services.token_create(user=admin)[1]
    response = HttpClient().post("/api/rooms/team/members", json.dumps({"username": "guest"}),
                                 content_type="application/json", **api(token))
    assert response.status_code == 201


def test_token_list_and_revoke_api():
    user = services.user_create(username="ada", password="pw-ada-12345")
    _, raw = services.token_create(user=user, name="laptop")
    other = services.token_create(user=services.user_create(username="eve", password="pw-eve-12345"))[0]
    http = HttpClient()
    listed = http.get("/api/tokens", **api(raw)).json()["tokens"]
    assert [(t["name"], t["revoked"]) for t in listed] == [("laptop", False)]
    assert "key_hash" not in listed[0] and raw not in json.dumps(listed)
    assert http.delete(f"/api/tokens/{other.pk}", **api(raw)).status_code == 404  # not yours
    assert http.delete(f"/api/tokens/{listed[0]['id']}", **api(raw)).status_code == 200
    assert http.get("/api/me", **api(raw)).status_code == 401  # revoked now


def test_tokens_are_stored_hashed():
    user = services.user_create(username="ada", password="pw-ada-12345")
    token, raw = services.token_create(user=user)
    stored = ApiToken.objects.get(pk=token.pk)
    assert raw not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64
    assert raw.startswith(stored.prefix)


def test_security_headers_on_pages():
    response = HttpClient().get("/accounts/login/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


async def test_tokens_never_reach_the_logs(caplog):
    from tests.conftest import open_socket

    caplog.set_level(logging.DEBUG)
    secret = "prl_this-is-not-a-valid-token-but-still-secret"
    connected, _ = await open_socket(headers=[(b"authorization", f"Bearer {secret}".encode())])
    assert not connected
    assert "invalid token" in caplog.text  # the refusal is logged …
    assert secret not in caplog.text  # … without the credential


def test_security_doc_lists_every_limit():
    """docs/security.md is the public limits table: a row for every limit parley/limits.py has,
    naming it, its PARLEY key and its environment variable."""
    from pathlib import Path

    from parley import limits

    doc = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    missing = [limit.key for limit in limits.ALL
               if f"| {limit.name} | `{limit.key}` | `{limit.env}` |" not in doc]
    assert missing == []
