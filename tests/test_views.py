"""HTTP: the JSON API (docs/protocol.md §8), the account pages, /healthz and the admin."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from parley import services
from parley.models import ApiToken, Room
from tests.conftest import PASSWORD, user

pytestmark = pytest.mark.django_db


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
    assert response.status_code == 401


# --- errors: the documented JSON, in the documented order (docs/protocol.md §8) ---------------

WRITES = [("post", "/api/rooms"), ("post", "/api/tokens"), ("delete", "/api/tokens/{token}"),
          ("post", "/api/rooms/secret/members"), ("delete", "/api/rooms/secret/members/bob"),
          ("post", "/api/rooms/secret/messages")]


def call(client: Client, method: str, path: str, **kwargs: Any) -> Any:
    if method in ("post", "put"):
        return getattr(client, method)(path, data=json.dumps({"slug": "x", "title": "X", "name": "n",
                                                               "username": "bob", "text": "hi"}),
                                       content_type="application/json", **kwargs)
    return getattr(client, method)(path, **kwargs)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json", response.content[:300]
    error = response.json()["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_unauthenticated_writes_are_401_json_not_the_csrf_page(method, path):
    """Authentication is checked before CSRF: no credentials is a 401, as for reads."""
    assert_error(call(Client(enforce_csrf_checks=True), method, path.format(token=1)), 401,
                 "unauthenticated")


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_session_writes_without_the_csrf_token_are_403_json(method, path):
    ada, bob = user("ada"), user("bob")
    secret = services.room_create(slug="secret", title="S", owner=ada, is_private=True)
    services.membership_add(room=secret, user=bob)
    path = path.format(token=services.token_create(user=ada, name="t")[0].pk)
    client = logged_in("ada", csrf=True)
    error = assert_error(call(client, method, path), 403, "csrf_failed")
    assert "X-CSRFToken" in error["message"]
    assert Room.objects.count() == 1 and ApiToken.objects.filter(revoked_at=None).count() == 1
    assert secret.memberships.count() == 2
    # with the token the same request goes through
    response = call(client, method, path, headers={"X-CSRFToken": csrf_token(client)})
    assert response.status_code in (200, 201), response.content


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("post", "/api/me", "GET"),
    ("delete", "/api/me", "GET"),
    ("delete", "/api/rooms", "GET, POST"),
    ("put", "/api/rooms/lobby/messages", "GET, POST"),
    ("delete", "/api/rooms/lobby/messages", "GET, POST"),
    ("put", "/api/tokens", "GET, POST"),
    ("get", "/api/tokens/1", "DELETE"),
    ("put", "/api/rooms/lobby/members", "GET, POST"),
    ("get", "/api/rooms/lobby/members/ada", "DELETE, PATCH"),
    ("get", "/api/rooms/lobby", "PATCH"),  # (docs/protocol.md §12)
    ("get", "/api/rooms/lobby/leave", "POST"),
    ("get", "/api/dms", "POST"),
    ("post", "/api/users", "GET"),
])
def test_other_methods_are_405_json(method, path, allow):
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    for client, kwargs in ((Client(), {"headers": auth(token(ada))}), (logged_in("ada", csrf=True), {})):
        response = call(client, method, path, **kwargs)
        assert_error(response, 405, "method_not_allowed")
        assert response["Allow"] == allow
    assert Room.objects.count() == 1


def test_head_is_not_taken_for_a_write():
    """HEAD is refused, not served: the views would take any method but GET for a write."""
    user("ada")
    client = logged_in("ada")
    for path in ("/api/me", "/api/rooms", "/api/tokens"):
        response = client.head(path)  # (the test client drops a HEAD answer's body)
        assert response.status_code == 405 and "HEAD" not in response["Allow"]
    assert not Room.objects.exists() and not ApiToken.objects.exists()


@pytest.mark.parametrize("path", ["/api/", "/api/nope", "/api/rooms/", "/api/rooms/lobby/nope",
                                  "/api/rooms/lobby/messages/", "/api/tokens/x", "/api/me/", "/api/dms/x"])
def test_unknown_api_paths_are_404_json(path):
    ada = user("ada")
    for client, kwargs in ((Client(), {}), (Client(), {"headers": auth(token(ada))}),
                           (logged_in("ada", csrf=True), {})):
        assert_error(client.get(path, **kwargs), 404, "not_found")
        assert_error(call(client, "post", path, **kwargs), 404, "not_found")


def test_an_unexpected_error_is_500_json(monkeypatch):
    ada = user("ada")

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("parley.selectors.room_list_visible", broken)
    response = Client(raise_request_exception=False).get("/api/rooms", headers=auth(token(ada)))
    assert_error(response, 500, "internal_error")


def test_a_body_over_djangos_size_cap_is_400_json(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    ada = user("ada")
    response = post_json(Client(), "/api/rooms", {"slug": "big", "title": "t" * 2000}, headers=auth(token(ada)))
    assert_error(response, 400, "bad_request")


@pytest.mark.parametrize("path", ["/api/rooms", "/api/tokens", "/api/rooms/secret/members"])
@pytest.mark.parametrize("raw", ["[" * 100_000, '{"a":' * 100_000, "not json", "[1]"])
def test_bad_json_bodies_are_400_bad_json(path, raw):
    ada = user("ada")  # a session: POST /api/tokens takes no bearer token
    services.room_create(slug="secret", title="S", owner=ada, is_private=True)
    response = logged_in("ada").post(path, data=raw, content_type="application/json")
    assert_error(response, 400, "bad_json")
    assert Room.objects.count() == 1 and ApiToken.objects.count() == 0


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


def test_rooms_list_pages_by_slug(parley_settings):
    """ROOMS_PAGE_MAX: however many public rooms there are, one answer holds at most a page;
    `next` leads through the rest, each room once, private rooms still only their members'."""
    ada, bob = user("ada"), user("bob")
    for i in range(7):
        services.room_create(slug=f"r{i}", title=f"R{i}")
    services.room_create(slug="r3x", title="Bob's", owner=bob, is_private=True)
    parley_settings.ROOMS_PAGE_MAX = 3
    raw, seen, after = token(ada), [], None
    while True:
        body = Client().get("/api/rooms", {"after": after} if after else {}, headers=auth(raw)).json()
        assert len(body["rooms"]) <= 3
        seen += [r["slug"] for r in body["rooms"]]
        if body["next"] is None:
            break
        after = body["next"]
    assert seen == [f"r{i}" for i in range(7)]
    small = Client().get("/api/rooms", {"limit": "2", "after": "r4"}, headers=auth(raw)).json()
    assert [r["slug"] for r in small["rooms"]] == ["r5", "r6"] and small["next"] is None
    clamped = Client().get("/api/rooms", {"limit": "100"}, headers=auth(raw)).json()
    assert len(clamped["rooms"]) == 3 and clamped["next"] == "r2"
    for bad in ({"limit": "0"}, {"limit": "x"}, {"after": "Not A Slug"}):
        assert_error(Client().get("/api/rooms", bad, headers=auth(raw)), 400, "bad_field")


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


def test_a_taken_slug_says_room_exists_only_for_a_room_the_caller_can_see(parley_settings):
    """Others' private rooms and reserved slugs get one answer, so it cannot tell them apart."""
    parley_settings.RESERVED_SLUGS = ["reserved"]
    ada, bob, carol = user("ada"), user("bob"), user("carol")
    services.room_create(slug="lobby", title="Lobby")
    shared = services.room_create(slug="shared", title="S", owner=bob, is_private=True)
    services.membership_add(room=shared, user=ada)
    services.room_create(slug="hidden", title="H", owner=bob, is_private=True)
    h = auth(token(ada))
    answers = {slug: post_json(Client(), "/api/rooms", {"slug": slug, "title": "Mine", "private": private},
                               headers=h)
               for slug, private in (("lobby", False), ("shared", True), ("hidden", False),
                                     ("reserved", False))}
    for slug in ("lobby", "shared"):
        assert_error(answers[slug], 409, "room_exists")
    hidden, reserved = (assert_error(answers[s], 409, "slug_unavailable") for s in ("hidden", "reserved"))
    assert hidden == {**reserved, "message": reserved["message"].replace("reserved", "hidden")}
    assert "private" not in hidden["message"] and "exists" not in hidden["message"]
    assert Room.objects.count() == 3
    # the room's owner, and a member, are told it exists
    assert_error(post_json(Client(), "/api/rooms", {"slug": "hidden", "title": "X"}, headers=auth(token(bob))),
                 409, "room_exists")
    assert_error(post_json(Client(), "/api/rooms", {"slug": "hidden", "title": "X"}, headers=auth(token(carol))),
                 409, "slug_unavailable")


def test_a_slug_the_api_uses_for_its_own_paths_is_unavailable():
    """GET /api/rooms/state comes before /api/rooms/<slug>: a room "state" could not be reached."""
    h = auth(token(user("ada")))
    assert_error(post_json(Client(), "/api/rooms", {"slug": "state", "title": "State"}, headers=h),
                 409, "slug_unavailable")
    assert not Room.objects.filter(slug="state").exists()
    assert Client().get("/api/rooms/state", headers=h).status_code == 200  # the list, not a room


@pytest.fixture
def room_buckets() -> Any:
    """Forgets the room-creation buckets a test drained: user ids come round again."""
    from parley import views

    used: list[int] = []
    yield used.append
    for pk in used:
        views._room_creations.forget(pk)


def test_room_creation_is_rate_limited_per_user(parley_settings, room_buckets):
    parley_settings.ROOMS_CREATED_PER_USER_PER_HOUR = 3
    ada, bob = user("ada"), user("bob")
    room_buckets(ada.pk)
    room_buckets(bob.pk)
    services.room_create(slug="lobby", title="Lobby")
    h = auth(token(ada))
    assert post_json(Client(), "/api/rooms", {"slug": "lobby", "title": "X"}, headers=h).status_code == 409
    assert post_json(Client(), "/api/rooms", {"slug": "bad slug", "title": "X"}, headers=h).status_code == 400
    assert post_json(Client(), "/api/rooms", {"slug": "r1", "title": "X"}, headers=h).status_code == 201
    response = post_json(Client(), "/api/rooms", {"slug": "r2", "title": "X"}, headers=h)
    error = assert_error(response, 429, "rate_limited")
    assert 1_100_000 < error["retry_after_ms"] <= 1_200_000  # 3 an hour: one every 20 minutes
    assert 1100 < int(response["Retry-After"]) <= 1200
    assert not Room.objects.filter(slug="r2").exists()
    assert Client().get("/api/rooms", headers=h).status_code == 200  # listing is not charged
    assert post_json(Client(), "/api/rooms", {"slug": "r2", "title": "X"}, headers=auth(token(bob))).status_code == 201


def test_rooms_owned_per_user_are_capped(parley_settings):
    parley_settings.MAX_ROOMS_OWNED_PER_USER = 2
    ada, bob = user("ada"), user("bob")
    h = auth(token(ada))
    for slug in ("a1", "a2"):
        assert post_json(Client(), "/api/rooms", {"slug": slug, "title": "A", "private": True}, headers=h).status_code == 201
    assert_error(post_json(Client(), "/api/rooms", {"slug": "a3", "title": "A"}, headers=h), 403,
                 "too_many_rooms_owned")
    assert not Room.objects.filter(slug="a3").exists()
    assert post_json(Client(), "/api/rooms", {"slug": "b1", "title": "B"}, headers=auth(token(bob))).status_code == 201
    Room.objects.filter(slug="a1").delete()  # a deleted room frees its place
    assert post_json(Client(), "/api/rooms", {"slug": "a3", "title": "A"}, headers=h).status_code == 201


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
    assert_error(Client().delete("/api/rooms", headers=auth(token(ada))), 405, "method_not_allowed")


def test_create_room_with_session_needs_csrf():
    user("ada")
    client = logged_in("ada", csrf=True)
    assert_error(post_json(client, "/api/rooms", {"slug": "a", "title": "A"}), 403, "csrf_failed")
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
    page = c.get(f"/api/rooms/lobby/messages?before={2**53}&limit=2", headers=h).json()
    assert [m["seq"] for m in page["messages"]] == [119, 120]


@pytest.mark.parametrize("query", [
    "?before=x", "?limit=ten", "?before=1.5", "?limit=0", "?limit=-3", f"?limit={10**30}",
    # beyond 64 bits (SQLite raised OverflowError: a 500), beyond 2^53, and not plain digits
    "?before=18446744073709551616", "?before=9223372036854775808", f"?before={2**53 + 1}",
    f"?before={'9' * 5000}", "?before=0", "?before=-1", "?before=%2B5", "?before=%205", "?before=1_0",
    "?before=%D9%A3",
])
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


# --- sign-in and sign-up limits (parley/throttles.py; axes's lockout: tests/test_accounts.py) ---

def sign_in(username: str, password: str, address: str, path: str = "/accounts/login/") -> Any:
    client = Client()
    response = client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)
    response.signed_in = client.get("/api/me").status_code == 200
    return response


def assert_throttled(response: Any, max_wait_secs: float) -> None:
    assert response.status_code == 429, response.status_code
    assert 0 < int(response["Retry-After"]) <= max_wait_secs
    assert b"Too many" in response.content and b"Try again in" in response.content
    assert not response.signed_in


def test_login_failures_per_address_lock_the_address(parley_settings):
    parley_settings.LOGIN_FAILURES_PER_IP_PER_HOUR = 3
    user("erin_a")
    for name in ("nobody_a1", "nobody_a2", "erin_a"):
        assert sign_in(name, "wrong-password", "203.0.113.3").status_code == 200
    assert_throttled(sign_in("erin_a", PASSWORD, "203.0.113.3"), 1200)
    assert_throttled(sign_in("nobody_a3", "x", "203.0.113.3"), 1200)
    assert_throttled(sign_in("erin_a", PASSWORD, "203.0.113.3", path="/admin/login/"), 1200)
    assert sign_in("erin_a", PASSWORD, "203.0.113.4").signed_in


def signup_post(username: str, address: str, password: str = "a-Str0ng-passphrase!",
                again: str | None = None) -> Any:
    return Client().post("/accounts/signup/", {"username": username, "password1": password,
                                               "password2": again or password}, REMOTE_ADDR=address)


def test_signups_per_address_are_limited(parley_settings):
    parley_settings.SIGNUPS_PER_IP_PER_HOUR = 2
    assert signup_post("s_one", "203.0.113.7", again="mismatch-passphrase!").status_code == 200  # free
    assert signup_post("s_one", "203.0.113.7").status_code == 302
    assert signup_post("s_two", "203.0.113.7").status_code == 302
    response = signup_post("s_three", "203.0.113.7")
    assert response.status_code == 429 and 1700 < int(response["Retry-After"]) <= 1800
    assert b"Too many accounts" in response.content
    assert not get_user_model().objects.filter(username="s_three").exists()
    assert signup_post("s_three", "203.0.113.8").status_code == 302


def test_signup_answers_about_taken_usernames_within_the_same_limit(parley_settings):
    """"Already exists" tells which usernames exist: each such answer costs the address one
    sign-up, and once they are spent a taken name and a free one get the same refusal."""
    parley_settings.SIGNUPS_PER_IP_PER_HOUR = 2
    user("taken_t")
    for _ in range(2):
        response = signup_post("taken_t", "203.0.113.11")
        assert response.status_code == 200 and b"already exists" in response.content
    for name in ("taken_t", "free_t"):
        response = signup_post(name, "203.0.113.11")
        assert response.status_code == 429 and b"Too many accounts" in response.content
        assert b"already exists" not in response.content
    assert not get_user_model().objects.filter(username="free_t").exists()


@pytest.mark.parametrize("password", ["86753091234567", " " * 12, "\t" * 10, "a" + " " * 11,
                                      "ab  cd  ef  g"])
def test_signup_refuses_numeric_and_mostly_blank_passwords(password):
    response = signup_post("weak", "203.0.113.9", password=password)
    assert response.status_code == 200
    assert not get_user_model().objects.filter(username="weak").exists()


def test_signup_accepts_a_passphrase_with_spaces():
    assert signup_post("phrase", "203.0.113.10", password="  purple otter ladder  ").status_code == 302


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
    for path in ("/admin/", "/admin/parley/room/", "/admin/parley/message/", "/admin/parley/apitoken/",
                 f"/admin/parley/room/{lobby.pk}/change/", "/admin/parley/message/?q=m1"):
        assert client.get(path).status_code == 200, path
    assert client.get("/admin/parley/message/add/").status_code == 403
    assert client.get("/admin/parley/apitoken/add/").status_code == 403


def test_admin_revoke_action():
    admin = get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)
    raw = token(admin)
    client = Client()
    client.force_login(admin)
    row = ApiToken.objects.get()
    response = client.post("/admin/parley/apitoken/", {"action": "revoke", "_selected_action": [row.pk]})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert Client().get("/api/me", headers=auth(raw)).status_code == 401


def test_admin_refuses_ordinary_users():
    user("ada")
    assert logged_in("ada").get("/admin/parley/room/").status_code == 302
