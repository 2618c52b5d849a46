"""Handshake authentication and Origin checks (parley/ws_auth.py), and bearer auth on HTTP (parley/http_auth.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client as DjangoClient
from django.test import override_settings

from config.asgi import application
from parley import services, ws_auth
from parley.models import ApiToken
from tests.conftest import (
    ORIGIN,
    Client,
    make_room,
    make_token,
    make_user,
    open_socket,
    override_parley,
)

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct-horse-battery"  # conftest.make_user's


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {token}".encode())


async def handshake(headers: list[tuple[bytes, bytes]]) -> tuple[bool, Any]:
    connected, communicator = await open_socket(headers=headers)
    if connected:
        hello = await communicator.receive_json_from(timeout=3)
        assert hello["type"] == "hello"
        return True, Client(communicator, None, hello)
    return False, communicator


@database_sync_to_async
def revoke_all(user: Any) -> None:
    for token in ApiToken.objects.filter(user=user):
        services.token_revoke(token=token)


@database_sync_to_async
def deactivate(user: Any) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


@database_sync_to_async
def session_cookie(username: str, password: str = PASSWORD) -> str:
    client = DjangoClient()
    assert client.login(username=username, password=password)
    return client.cookies["sessionid"].value


# --- bearer tokens ----------------------------------------------------------------------------

async def test_valid_token_is_accepted_and_hello_names_the_user():
    ada = await make_user("ada")
    ok, client = await handshake([bearer(await make_token(ada)), (b"origin", ORIGIN)])
    assert ok
    assert client.hello["user"] == {"id": ada.pk, "username": "ada"}
    await client.close()


async def test_unauthenticated_handshake_is_refused():
    ok, _ = await handshake([(b"origin", ORIGIN)])
    assert not ok


@pytest.mark.parametrize("value", [b"Bearer prl_not-a-real-token", b"Bearer ", b"Bearer", b"Basic YWRhOnB3",
                                   b"prl_no_scheme"])
async def test_invalid_or_malformed_token_is_refused(value):
    await make_user("ada")
    ok, _ = await handshake([(b"authorization", value), (b"origin", ORIGIN)])
    assert not ok


async def test_revoked_token_is_refused():
    ada = await make_user("ada")
    token = await make_token(ada)
    await revoke_all(ada)
    ok, _ = await handshake([bearer(token), (b"origin", ORIGIN)])
    assert not ok


async def test_token_of_a_deactivated_user_is_refused():
    ada = await make_user("ada")
    token = await make_token(ada)
    await deactivate(ada)
    ok, _ = await handshake([bearer(token)])
    assert not ok


async def test_bearer_scheme_is_case_insensitive():
    ada = await make_user("ada")
    token = await make_token(ada)
    ok, client = await handshake([(b"authorization", f"bearer {token}".encode())])
    assert ok
    await client.close()


async def test_token_use_is_recorded():
    ada = await make_user("ada")
    token = await make_token(ada)
    ok, client = await handshake([bearer(token)])
    assert ok
    last_used = await database_sync_to_async(
        lambda: ApiToken.objects.get(user=ada).last_used_at)()
    assert last_used is not None
    await client.close()


async def test_handshakes_at_once_each_get_their_own_token_user(monkeypatch):
    """Handshakes that reach the database thread together share one token query
    (parley.ws_auth, parley.realtime.dbthread.Batched): each must still get its own user, and a bad token
    among them refused without taking the others down. The thread is held busy meanwhile so
    that they do arrive together."""
    import asyncio
    import threading

    from parley import ws_auth
    from parley.realtime.dbthread import database_thread

    batches: list[int] = []
    many = ws_auth._token_user.many
    monkeypatch.setattr(ws_auth._token_user, "many", lambda raws: (batches.append(len(raws)), many(raws))[1])
    ada, bob = await make_user("ada"), await make_user("bob")
    tokens = {"ada": await make_token(ada), "bob": await make_token(bob)}
    release = threading.Event()
    busy = database_thread.submit(release.wait, 5)
    who = ["ada", "bob", "nobody", "bob", "ada", "ada"]
    attempts = [asyncio.ensure_future(handshake([bearer(tokens.get(name, "prl_not-a-real-token"))])) for name in who]
    await asyncio.sleep(0.2)
    release.set()
    await busy
    results = await asyncio.gather(*attempts)
    assert batches == [6]
    assert [r[0] for r in results] == [name != "nobody" for name in who]
    assert [r[1].hello["user"]["username"] for r in results if r[0]] == [n for n in who if n != "nobody"]
    for ok, client in results:
        if ok:
            await client.close()


# --- Origin -----------------------------------------------------------------------------------

async def origin_handshake(origin: bytes | None, host: bytes | None = b"localhost", *,
                           scheme: str | None = None, cookie_of: str | None = None,
                           token_of: Any = None) -> bool:
    """A handshake with exactly these Origin and Host headers (either may be absent), as the
    user's session cookie (cookie_of) or bearer token (token_of)."""
    headers = []
    if origin is not None:
        headers.append((b"origin", origin))
    if host is not None:
        headers.append((b"host", host))
    if cookie_of is not None:
        headers.append((b"cookie", f"sessionid={await session_cookie(cookie_of)}".encode()))
    if token_of is not None:
        headers.append(bearer(await make_token(token_of)))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    if scheme is not None:
        communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=5)
    if connected:
        assert (await communicator.receive_json_from(timeout=3))["type"] == "hello"
        await communicator.disconnect()
    return connected


SAME_ORIGIN = [  # (Origin, Host, the ASGI scope's scheme)
    (b"http://localhost", b"localhost", "ws"),
    (b"http://localhost:80", b"localhost", "ws"),
    (b"http://LOCALHOST", b"localhost:80", "ws"),
    (b"http://127.0.0.1:8000", b"127.0.0.1:8000", "ws"),
    (b"http://[::1]:8000", b"[::1]:8000", "ws"),
    (b"https://localhost:4443", b"localhost:4443", "wss"),
    (b"https://localhost", b"localhost", "wss"),
]


@pytest.mark.parametrize(("origin", "host", "scheme"), SAME_ORIGIN)
async def test_same_origin_is_accepted_with_the_session_cookie(origin, host, scheme):
    await make_user("ada")
    assert await origin_handshake(origin, host, scheme=scheme, cookie_of="ada")


CROSS_ORIGIN = [
    (b"http://127.0.0.1:18250", b"127.0.0.1:8000", "ws"),  # another port of the same host
    (b"http://localhost:8000", b"localhost", "ws"),
    (b"https://localhost", b"localhost", "ws"),  # another scheme
    (b"http://localhost", b"localhost", "wss"),  # an http page must not use the wss socket
    (b"https://localhost:443", b"localhost:443", "ws"),
    (b"http://127.0.0.1:8000", b"localhost:8000", "ws"),  # another host name
    (b"http://evil.example", b"evil.example", "ws"),  # Host not in ALLOWED_HOSTS (DNS rebinding)
    (b"http://localhost", None, "ws"),  # no Host: no own origin to compare with
    (b"http://evil.example", b"localhost", "ws"),
    (b"https://localhost.evil.example", b"localhost", "ws"),
    (b"null", b"localhost", "ws"),
    (b"file://", b"localhost", "ws"),
    (b"ws://localhost", b"localhost", "ws"),
    (b"http://evil.example@localhost", b"localhost", "ws"),
    (b"http://localhost/", b"localhost", "ws"),
]


@pytest.mark.parametrize(("origin", "host", "scheme"), CROSS_ORIGIN)
async def test_cross_origin_is_refused_and_logged(caplog, origin, host, scheme):
    ada = await make_user("ada")
    with caplog.at_level(logging.WARNING, logger="parley.security"):
        assert not await origin_handshake(origin, host, scheme=scheme, cookie_of="ada")
        assert not await origin_handshake(origin, host, scheme=scheme, token_of=ada)
    assert any("origin" in r.getMessage().lower() for r in caplog.records if r.name == "parley.security")


@pytest.mark.parametrize("origin", [b"http://[", b"http://[::1", b"http://localhost:99999",
                                    b"http://localhost:port", b"http://", b"\xff\xfe", b"", b" "])
async def test_malformed_origin_is_refused_not_an_error(origin):
    ada = await make_user("ada")
    assert not await origin_handshake(origin, cookie_of="ada")
    assert not await origin_handshake(origin, token_of=ada)


@pytest.mark.parametrize("value", ["http://[", "http://a:99999", "http://a:x", "null", "", "ftp://a",
                                   "http://", "//localhost", "localhost", "http://localhost/",
                                   "http://localhost/x", "http://u@localhost", "http://localhost?q",
                                   "http://localhost#f"])
def test_parse_origin_refuses_what_is_not_an_origin(value):
    assert ws_auth.parse_origin(value) is None


def test_parse_origin_normalizes():
    assert ws_auth.parse_origin("HTTP://LocalHost") == ("http", "localhost", 80)
    assert ws_auth.parse_origin("https://[::1]") == ("https", "::1", 443)
    assert ws_auth.parse_origin("http://a.example:8080") == ("http", "a.example", 8080)


@override_settings(CSRF_TRUSTED_ORIGINS=["https://admin.example.org"])
@override_parley(ALLOWED_ORIGINS=["https://chat.example.com/", "https://*.apps.example.com:8443"])
@pytest.mark.parametrize(("origin", "accepted"), [
    (b"https://chat.example.com", True),
    (b"https://chat.example.com:443", True),
    (b"https://admin.example.org", True),  # CSRF_TRUSTED_ORIGINS count too
    (b"https://apps.example.com:8443", True),
    (b"https://a.apps.example.com:8443", True),
    (b"http://chat.example.com", False),
    (b"https://chat.example.com:8443", False),
    (b"https://a.apps.example.com", False),
    (b"https://badapps.example.com:8443", False),
    (b"https://example.com", False),
])
async def test_configured_origins(origin, accepted):
    """Behind a proxy that sends its own Host (or terminates TLS without X-Forwarded-Proto) the
    public origin is configured: only it, exactly, is accepted."""
    await make_user("ada")
    assert await origin_handshake(origin, b"127.0.0.1:8000", cookie_of="ada") is accepted


async def test_no_origin_with_token_is_accepted():
    ada = await make_user("ada")
    ok, client = await handshake([bearer(await make_token(ada))])
    assert ok
    await client.close()


async def test_no_origin_and_no_token_is_refused(caplog):
    with caplog.at_level(logging.WARNING, logger="parley.security"):
        ok, _ = await handshake([])
    assert not ok
    assert any(r.name == "parley.security" for r in caplog.records)


# --- session cookie ---------------------------------------------------------------------------

async def test_session_cookie_auth_works():
    ada = await make_user("ada")
    await make_room("lobby")
    sid = await session_cookie("ada")
    ok, client = await handshake([(b"cookie", f"sessionid={sid}".encode()), (b"origin", ORIGIN)])
    assert ok
    assert client.hello["user"]["username"] == "ada"
    client.user = ada
    reply = await client.join("lobby")
    assert reply["room"]["slug"] == "lobby"
    await client.say("lobby", "from the browser")
    assert (await client.messages(1))[0]["author"]["username"] == "ada"
    await client.close()


async def test_session_cookie_without_origin_is_refused():
    await make_user("ada")
    sid = await session_cookie("ada")
    ok, _ = await handshake([(b"cookie", f"sessionid={sid}".encode())])
    assert not ok


async def test_session_cookie_from_foreign_origin_is_refused():
    await make_user("ada")
    sid = await session_cookie("ada")
    ok, _ = await handshake([(b"cookie", f"sessionid={sid}".encode()), (b"origin", b"http://evil.example")])
    assert not ok


async def test_bogus_session_cookie_is_refused():
    ok, _ = await handshake([(b"cookie", b"sessionid=nonsense"), (b"origin", ORIGIN)])
    assert not ok


async def test_invalid_token_does_not_fall_back_to_the_cookie():
    await make_user("ada")
    sid = await session_cookie("ada")
    ok, _ = await handshake([(b"cookie", f"sessionid={sid}".encode()), (b"origin", ORIGIN),
                             (b"authorization", b"Bearer prl_wrong")])
    assert not ok


async def test_token_wins_over_cookie():
    await make_user("ada")
    bob = await make_user("bob")
    sid = await session_cookie("ada")
    ok, client = await handshake([(b"cookie", f"sessionid={sid}".encode()), (b"origin", ORIGIN),
                                  bearer(await make_token(bob))])
    assert ok and client.hello["user"]["username"] == "bob"
    await client.close()


# --- HTTP bearer middleware -------------------------------------------------------------------

def _token_for(username: str) -> str:
    user = services.user_create(username=username, password=PASSWORD)
    return services.token_create(user=user, name="t")[1]


def test_http_bearer_valid():
    token = _token_for("ada")
    response = DjangoClient().get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["user"]["username"] == "ada"


@pytest.mark.parametrize("value", ["Bearer prl_wrong", "Bearer ", "bearer nope"])
def test_http_bearer_invalid_is_401(value):
    _token_for("ada")
    response = DjangoClient().get("/api/me", headers={"Authorization": value})
    assert response.status_code == 401
    assert response.json()["error"]["code"] in ("invalid_token", "unauthenticated")


def test_http_bearer_revoked_is_401():
    token = _token_for("ada")
    for t in ApiToken.objects.all():
        services.token_revoke(token=t)
    response = DjangoClient().get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_http_invalid_bearer_does_not_fall_back_to_the_session():
    services.user_create(username="ada", password=PASSWORD)
    client = DjangoClient()
    assert client.login(username="ada", password=PASSWORD)
    assert client.get("/api/me").status_code == 200
    assert client.get("/api/me", headers={"Authorization": "Bearer prl_wrong"}).status_code == 401


def test_http_no_credentials_is_401():
    response = DjangoClient().get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


# --- through a real uvicorn -------------------------------------------------------------------

def raw_exchange(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply


@pytest.mark.slow
def test_malformed_origin_and_api_errors_through_uvicorn():
    """What the wire shows: a 403 for `Origin: http://[` (it was a ValueError and a 500), and a
    JSON 401 where Django's CSRF page was."""
    from tests.support.server import ServerProcess

    with ServerProcess() as server:
        token = server.create_token("ada")
        for origin in (b"http://[", b"http://127.0.0.1:1", b"http://127.0.0.1:99999"):
            reply = raw_exchange(server.port, b"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: %s\r\n"
                                 b"Authorization: Bearer %s\r\n\r\n" % (server.port, origin, token.encode()))
            assert reply.startswith(b"HTTP/1.1 403"), (origin, reply[:200])
        reply = raw_exchange(server.port, b"POST /api/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert reply.startswith(b"HTTP/1.1 401") and b"application/json" in reply, reply[:300]
        assert "ValueError" not in server.log_tail(200)
