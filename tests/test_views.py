"""HTTP: the JSON API (docs/protocol.md §8), the account pages, /healthz and the admin."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from chat import services
from chat.models import ApiToken, Room

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"


def user(name: str, **extra: Any) -> Any:
    u = services.user_create(username=name, password=PASSWORD)
    for key, value in extra.items():
        setattr(u, key, value)
    if extra:
        u.save()
    return u


def token(u: Any) -> str:
    return services.token_create(user=u, name="t")[1]


def auth(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def logged_in(name: str, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    assert client.login(username=name, password=PASSWORD)
    return client


def csrf_token(client: Client) -> str:
    client.get("/accounts/login/")  # any page with a form sets the cookie
    return client.cookies["csrftoken"].value


def post_json(client: Client, path: str, body: Any, **kwargs: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", **kwargs)


def make_messages(room: Room, author: Any, count: int) -> None:
    for i in range(count):
        services.message_create(room_id=room.pk, author=author, text=f"m{i + 1}", client_id=None)


# --- /healthz, /api/me ------------------------------------------------------------------------

def test_healthz_needs_no_auth():
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"ok": True}


def test_me_with_session_and_with_token():
    ada = user("ada")
    assert logged_in("ada").get("/api/me").json() == {"user": {"id": ada.pk, "username": "ada"}}
    assert Client().get("/api/me", headers=auth(token(ada))).json() == {"user": {"id": ada.pk, "username": "ada"}}


def test_api_unauthenticated_is_json_401():
    for path in ("/api/me", "/api/rooms", "/api/rooms/lobby/messages"):
        response = Client().get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthenticated"
    response = post_json(Client(), "/api/tokens", {"name": "x"})
    assert response.status_code in (401, 403)


# --- /api/rooms -------------------------------------------------------------------------------

def test_rooms_list_shows_public_and_own_private_rooms():
    ada, bob = user("ada"), user("bob")
    services.room_create(slug="lobby", title="Lobby")
    secret = services.room_create(slug="secret", title="Secret", owner=ada, is_private=True)
    services.room_create(slug="hidden", title="Hidden", owner=bob, is_private=True)
    rooms = Client().get("/api/rooms", headers=auth(token(ada))).json()["rooms"]
    assert [r["slug"] for r in rooms] == ["lobby", "secret"]
    first = rooms[0]
    assert set(first) >= {"slug", "title", "private", "epoch", "last_seq"}
    assert first["private"] is False and first["last_seq"] == 0
    assert rooms[1]["epoch"] == secret.epoch
    bob_rooms = [r["slug"] for r in Client().get("/api/rooms", headers=auth(token(bob))).json()["rooms"]]
    assert bob_rooms == ["hidden", "lobby"]
    services.membership_add(room=secret, user=bob)
    bob_rooms = [r["slug"] for r in Client().get("/api/rooms", headers=auth(token(bob))).json()["rooms"]]
    assert bob_rooms == ["hidden", "lobby", "secret"]


def test_create_room_with_token():
    ada = user("ada")
    response = post_json(Client(), "/api/rooms", {"slug": "Dev-Talk_1", "title": "  Dev talk "}, headers=auth(token(ada)))
    assert response.status_code == 201, response.content
    room = response.json()["room"]
    assert room["slug"] == "dev-talk_1" and room["title"] == "Dev talk" and room["private"] is False
    assert room["last_seq"] == 0 and room["epoch"]
    assert Room.objects.get(slug="dev-talk_1").owner == ada


def test_create_private_room_is_visible_only_to_members():
    ada, bob = user("ada"), user("bob")
    response = post_json(Client(), "/api/rooms", {"slug": "priv", "title": "P", "private": True}, headers=auth(token(ada)))
    assert response.status_code == 201 and response.json()["room"]["private"] is True
    assert "priv" in [r["slug"] for r in Client().get("/api/rooms", headers=auth(token(ada))).json()["rooms"]]
    assert "priv" not in [r["slug"] for r in Client().get("/api/rooms", headers=auth(token(bob))).json()["rooms"]]
    assert Client().get("/api/rooms/priv/messages", headers=auth(token(bob))).status_code == 404


def test_create_duplicate_room_is_409():
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    for slug in ("lobby", "LOBBY", " lobby "):
        response = post_json(Client(), "/api/rooms", {"slug": slug, "title": "Again"}, headers=auth(token(ada)))
        assert response.status_code == 409, (slug, response.content)
        assert response.json()["error"]["code"] == "room_exists"
    assert Room.objects.count() == 1


@pytest.mark.parametrize("body", [
    {"slug": "", "title": "x"},
    {"slug": "has space", "title": "x"},
    {"slug": "dot.slug", "title": "x"},
    {"slug": "s" * 51, "title": "x"},
    {"slug": "ok", "title": ""},
    {"slug": "ok", "title": "t" * 101},
    {"slug": "ok"},
    {"title": "x"},
    {"slug": 5, "title": "x"},
    {"slug": "ok", "title": "x", "private": "yes"},
    {"slug": "ok", "title": "x", "private": 1},
    {"slug": "émoji", "title": "x"},
])
def test_create_room_validation(body):
    ada = user("ada")
    response = post_json(Client(), "/api/rooms", body, headers=auth(token(ada)))
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "bad_field"
    assert Room.objects.count() == 0


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"str"'])
def test_create_room_bad_json(raw):
    ada = user("ada")
    response = Client().post("/api/rooms", data=raw, content_type="application/json", headers=auth(token(ada)))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_json"


def test_rooms_other_methods_are_refused():
    ada = user("ada")
    assert Client().delete("/api/rooms", headers=auth(token(ada))).status_code == 405


def test_create_room_with_session_needs_csrf():
    user("ada")
    client = logged_in("ada", csrf=True)
    assert post_json(client, "/api/rooms", {"slug": "a", "title": "A"}).status_code == 403
    csrf = csrf_token(client)
    response = post_json(client, "/api/rooms", {"slug": "a", "title": "A"}, headers={"X-CSRFToken": csrf})
    assert response.status_code == 201


def test_bearer_post_needs_no_csrf():
    ada = user("ada")
    response = post_json(Client(enforce_csrf_checks=True), "/api/rooms", {"slug": "a", "title": "A"}, headers=auth(token(ada)))
    assert response.status_code == 201


# --- /api/rooms/<slug>/messages ---------------------------------------------------------------

def test_messages_paging():
    ada = user("ada")
    lobby = services.room_create(slug="lobby", title="Lobby")
    make_messages(lobby, ada, 120)
    c, h = Client(), auth(token(ada))
    page = c.get("/api/rooms/lobby/messages", headers=h).json()
    assert [m["seq"] for m in page["messages"]] == list(range(71, 121)) and page["has_more"] is True
    m = page["messages"][0]
    assert m == {"room": "lobby", "seq": 71, "id": m["id"], "client_id": None,
                 "author": {"id": ada.pk, "username": "ada"}, "text": "m71", "ts": m["ts"]}
    assert m["ts"].endswith("Z")
    page = c.get("/api/rooms/lobby/messages?before=71&limit=70", headers=h).json()
    assert [m["seq"] for m in page["messages"]] == list(range(1, 71)) and page["has_more"] is False
    page = c.get("/api/rooms/lobby/messages?before=11&limit=5", headers=h).json()
    assert [m["seq"] for m in page["messages"]] == [6, 7, 8, 9, 10] and page["has_more"] is True
    page = c.get("/api/rooms/lobby/messages?limit=1000", headers=h).json()
    assert len(page["messages"]) == 100  # clamped to the page maximum
    page = c.get("/api/rooms/lobby/messages?before=1", headers=h).json()
    assert page == {"messages": [], "has_more": False}


@pytest.mark.parametrize("query", ["?before=x", "?limit=ten", "?before=1.5", "?limit=0", "?limit=-3",
                                   "?before=0", f"?before={2**53 + 1}", f"?before={2**64}", f"?limit={10**30}"])
def test_messages_bad_query(query):
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    response = Client().get(f"/api/rooms/lobby/messages{query}", headers=auth(token(ada)))
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_field"


def test_messages_unknown_room_is_404():
    ada = user("ada")
    response = Client().get("/api/rooms/nope/messages", headers=auth(token(ada)))
    assert response.status_code == 404 and response.json()["error"]["code"] == "room_not_found"


def test_private_room_messages_for_members_only():
    ada, bob = user("ada"), user("bob")
    secret = services.room_create(slug="secret", title="S", owner=ada, is_private=True)
    make_messages(secret, ada, 2)
    assert Client().get("/api/rooms/secret/messages", headers=auth(token(bob))).status_code == 404
    services.membership_add(room=secret, user=bob)
    page = Client().get("/api/rooms/secret/messages", headers=auth(token(bob))).json()
    assert [m["text"] for m in page["messages"]] == ["m1", "m2"]


# --- /api/tokens ------------------------------------------------------------------------------

def test_tokens_from_a_session_with_csrf():
    ada = user("ada")
    client = logged_in("ada", csrf=True)
    assert post_json(client, "/api/tokens", {"name": "laptop"}).status_code == 403  # no CSRF token
    assert ApiToken.objects.count() == 0
    response = post_json(client, "/api/tokens", {"name": "laptop"}, headers={"X-CSRFToken": csrf_token(client)})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["token"].startswith("prl_") and isinstance(body["id"], int)
    row = ApiToken.objects.get(pk=body["id"])
    assert row.user == ada and row.name == "laptop"
    assert body["token"] not in (row.key_hash, row.prefix)  # stored hashed
    # the new token works
    assert Client().get("/api/me", headers=auth(body["token"])).json()["user"]["username"] == "ada"


def test_tokens_refused_with_bearer_auth():
    ada = user("ada")
    response = post_json(Client(), "/api/tokens", {"name": "x"}, headers=auth(token(ada)))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "session_required"
    assert ApiToken.objects.count() == 1


def test_tokens_validation_and_methods():
    user("ada")
    client = logged_in("ada")
    assert post_json(client, "/api/tokens", {"name": 5}).status_code == 400
    assert post_json(client, "/api/tokens", {"name": "n" * 101}).status_code == 400
    listed = client.get("/api/tokens")
    assert listed.status_code == 200 and isinstance(listed.json()["tokens"], list)
    assert client.put("/api/tokens").status_code == 405
    assert post_json(client, "/api/tokens", {}).status_code == 201  # name is optional


# --- account pages ----------------------------------------------------------------------------

def test_signup_creates_user_and_logs_in():
    client = Client()
    assert client.get("/accounts/signup/").status_code == 200
    response = client.post("/accounts/signup/", {"username": "newbie", "password1": "a-Str0ng-passphrase!",
                                                 "password2": "a-Str0ng-passphrase!"})
    assert response.status_code == 302
    assert get_user_model().objects.filter(username="newbie").exists()
    assert client.get("/api/me").json()["user"]["username"] == "newbie"
    assert client.get("/").status_code == 200


def test_signup_rejects_mismatch_and_weak_passwords():
    client = Client()
    response = client.post("/accounts/signup/", {"username": "x", "password1": "a-Str0ng-passphrase!",
                                                 "password2": "different-passphrase!"})
    assert response.status_code == 200
    response = client.post("/accounts/signup/", {"username": "y", "password1": "123", "password2": "123"})
    assert response.status_code == 200
    assert not get_user_model().objects.exists()


def test_login_and_logout_pages():
    user("ada")
    client = Client()
    assert client.get("/").status_code == 302  # the app needs a login
    assert client.get("/accounts/login/").status_code == 200
    response = client.post("/accounts/login/", {"username": "ada", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    assert client.get("/api/me").status_code == 200
    response = client.post("/accounts/logout/")
    assert response.status_code in (200, 302)
    assert client.get("/api/me").status_code == 401


def test_login_with_wrong_password_stays_on_the_page():
    user("ada")
    client = Client()
    response = client.post("/accounts/login/", {"username": "ada", "password": "wrong"})
    assert response.status_code == 200
    assert client.get("/api/me").status_code == 401


def test_signup_when_logged_in_redirects():
    user("ada")
    assert logged_in("ada").get("/accounts/signup/").status_code == 302


# --- admin ------------------------------------------------------------------------------------

def test_admin_pages_load_for_a_superuser():
    admin = get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)
    lobby = services.room_create(slug="lobby", title="Lobby", owner=admin)
    make_messages(lobby, admin, 3)
    token(admin)
    client = Client()
    client.force_login(admin)
    for path in ("/admin/", "/admin/chat/room/", "/admin/chat/message/", "/admin/chat/apitoken/",
                 f"/admin/chat/room/{lobby.pk}/change/", "/admin/chat/message/?q=m1"):
        assert client.get(path).status_code == 200, path
    assert client.get("/admin/chat/message/add/").status_code == 403
    assert client.get("/admin/chat/apitoken/add/").status_code == 403


def test_admin_revoke_action():
    admin = get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)
    raw = token(admin)
    client = Client()
    client.force_login(admin)
    row = ApiToken.objects.get()
    response = client.post("/admin/chat/apitoken/", {"action": "revoke", "_selected_action": [row.pk]})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert Client().get("/api/me", headers=auth(raw)).status_code == 401


def test_admin_refuses_ordinary_users():
    user("ada")
    assert logged_in("ada").get("/admin/chat/room/").status_code == 302
