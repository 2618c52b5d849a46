"""Posting from server code (README "Posting from your own code"): parley.post_message,
apost_message and publish_event, POST /api/rooms/<slug>/messages (docs/protocol.md §8) and the
message_posted signal, on the real ASGI application and its real consumers.

The cross-process paths — a management command beside a running server, on the embedded default
and with Redis — are in tests/test_post_server.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import transaction
from django.test import Client as HttpClient

import parley
from parley import services
from parley.models import Message, Room
from parley.signals import message_posted
from tests.conftest import make_room, make_user, override_parley

pytestmark = pytest.mark.django_db(transaction=True)


class Posted:
    """A message_posted receiver that records (source, message id, thread name)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.lock = threading.Lock()

    def __call__(self, sender: Any, message: Message, source: str, **kwargs: Any) -> None:
        assert sender is Message
        with self.lock:
            self.calls.append((source, message.pk, threading.current_thread().name))

    async def wait(self, count: int, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                await asyncio.sleep(0.01)


@pytest.fixture
def posted():
    receiver = Posted()
    message_posted.connect(receiver, dispatch_uid="test-posted")
    yield receiver
    message_posted.disconnect(dispatch_uid="test-posted")


def bearer(user: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {services.token_create(user=user, name='t')[1]}"}


def post_json(client: HttpClient, path: str, body: Any, **kwargs: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", **kwargs)


# --- parley.post_message --------------------------------------------------------------------


async def test_post_message_reaches_every_joined_socket_live(connect, posted):
    ada, bob, bot = await make_user("ada"), await make_user("bob"), await make_user("bot")
    await make_room("lobby")
    a, b = await connect(ada), await connect(bob)
    await a.join("lobby")
    await b.join("lobby")
    await a.say("lobby", "first")  # seq 1
    await a.messages(1)
    await b.messages(1)

    message = await database_sync_to_async(parley.post_message)("lobby", "  deploy finished  ", author=bot)
    assert isinstance(message, Message) and message.seq == 2 and message.text == "deploy finished"
    for client in (a, b):
        got = (await client.messages(1))[0]
        assert (got["seq"], got["text"], got["author"]["username"]) == (2, "deploy finished", "bot")
    assert await Room.objects.filter(slug="lobby").values_list("last_seq", flat=True).aget() == 2

    # the async flavour, with a Room instead of a slug
    room = await Room.objects.aget(slug="lobby")
    third = await parley.apost_message(room, "third", author=bot)
    assert third.seq == 3
    assert [m["seq"] for m in await a.messages(1)] == [3]
    await posted.wait(3)
    assert sorted(source for source, _, _ in posted.calls) == ["python", "python", "socket"]


async def test_post_message_in_a_rolled_back_transaction_delivers_nothing(connect, posted):
    ada, bot = await make_user("ada"), await make_user("bot")
    await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")

    def post_then_roll_back() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            parley.post_message("lobby", "never", author=bot)
            raise RuntimeError("the caller's work failed")

    await database_sync_to_async(post_then_roll_back)()
    assert await a.nothing("message", timeout=0.5)
    assert await Message.objects.acount() == 0 and posted.calls == []

    def post_in_a_committed_block() -> list[bool]:
        seen_before_commit = []
        with transaction.atomic():
            parley.post_message("lobby", "after commit", author=bot)
            seen_before_commit.append(bool(posted.calls))
        return seen_before_commit

    assert await database_sync_to_async(post_in_a_committed_block)() == [False]
    got = (await a.messages(1))[0]
    assert (got["seq"], got["text"]) == (1, "after commit")  # the rolled-back seq was not used
    assert [source for source, _, _ in posted.calls] == ["python"]


async def test_post_message_client_id_is_idempotent(connect, posted):
    ada, bot = await make_user("ada"), await make_user("bot")
    await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")
    post = database_sync_to_async(parley.post_message)
    first = await post("lobby", "once", author=bot, client_id="job-7")
    again = await post("lobby", "once", author=bot, client_id="job-7")
    assert first.pk == again.pk and await Message.objects.acount() == 1
    assert len(await a.messages(1)) == 1 and await a.nothing("message", timeout=0.4)
    assert len(posted.calls) == 1


@pytest.mark.django_db
def test_post_message_refusals_are_documented_exceptions():
    ada, bob = services.user_create(username="ada"), services.user_create(username="bob")
    services.room_create(slug="lobby", title="Lobby")
    services.room_create(slug="secret", title="S", owner=ada, is_private=True)
    with pytest.raises(parley.RoomNotFound) as unknown:
        parley.post_message("nowhere", "hi", author=ada)
    assert unknown.value.code == "room_not_found"
    with pytest.raises(parley.RoomNotFound):  # a private room bob is not a member of
        parley.post_message("secret", "hi", author=bob)
    with pytest.raises(parley.RoomNotFound):  # not a slug at all
        parley.post_message("Lo bby", "hi", author=ada)
    bob.is_active = False
    bob.save()
    with pytest.raises(parley.PostForbidden) as forbidden:
        parley.post_message("lobby", "hi", author=bob)
    assert forbidden.value.code == "forbidden"
    for text, code in (("   ", "text_empty"), ("x" * 4001, "text_too_long"), ("a\x00b", "bad_field"),
                       (None, "missing_field"), (7, "bad_field")):
        with pytest.raises(parley.MessageRefused) as refused:
            parley.post_message("lobby", text, author=ada)  # type: ignore[arg-type]
        assert refused.value.code == code, text
    with pytest.raises(parley.MessageRefused) as bad_key:
        parley.post_message("lobby", "hi", author=ada, client_id="k" * 65)
    assert bad_key.value.code == "bad_field"
    assert isinstance(bad_key.value, ValueError)
    assert Message.objects.count() == 0
    assert parley.post_message("secret", "mine", author=ada).seq == 1


def test_import_parley_needs_no_app_registry():
    """INSTALLED_APPS imports the package before the registry is ready: nothing may load models."""
    code = ("import sys, parley; assert 'parley.api' not in sys.modules and 'parley.models' not in sys.modules;"
            "assert 'post_message' in dir(parley); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    from parley import api
    assert parley.post_message is api.post_message and parley.publish_event is api.publish_event
    with pytest.raises(AttributeError):
        parley.no_such_name  # noqa: B018


# --- parley.publish_event -------------------------------------------------------------------


async def test_publish_event_is_a_custom_frame_for_joined_sockets(connect):
    ada, bob, carol = await make_user("ada"), await make_user("bob"), await make_user("carol")
    await make_room("lobby")
    await make_room("other")
    a, b, c = await connect(ada), await connect(bob), await connect(carol)
    await a.join("lobby")
    await b.join("lobby")
    await c.join("other")
    payload = {"kind": "order_shipped", "order": 42, "note": "é"}
    await database_sync_to_async(parley.publish_event)("lobby", payload)
    for client in (a, b):
        assert await client.recv_type("custom") == {"type": "custom", "room": "lobby", "payload": payload}
    assert await c.nothing("custom", timeout=0.4)
    assert await Message.objects.acount() == 0  # not stored

    def refusals() -> None:
        with pytest.raises(parley.RoomNotFound):
            parley.publish_event("nowhere", {})
        with override_parley(CUSTOM_PAYLOAD_MAX_BYTES=100), pytest.raises(parley.EventRefused) as big:
            parley.publish_event("lobby", {"x": "y" * 100})
        assert big.value.code == "payload_too_large"
        with pytest.raises(parley.EventRefused) as bad:
            parley.publish_event("lobby", {"x": object()})
        assert bad.value.code == "bad_payload"
        with pytest.raises(RuntimeError), transaction.atomic():
            parley.publish_event("lobby", {"rolled": "back"})
            raise RuntimeError

    await database_sync_to_async(refusals)()
    assert await a.nothing("custom", timeout=0.4)


# --- POST /api/rooms/<slug>/messages ----------------------------------------------------------


async def test_http_post_with_token_is_delivered_and_signalled(connect, posted):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")

    def post() -> Any:
        return post_json(HttpClient(), "/api/rooms/lobby/messages", {"text": " from a bot "}, headers=bearer(bob))

    response = await database_sync_to_async(post)()
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["duplicate"] is False
    assert (body["message"]["seq"], body["message"]["text"], body["message"]["author"]["username"]) == (1, "from a bot", "bob")
    got = (await a.messages(1))[0]
    assert got == body["message"]
    await posted.wait(1)
    assert posted.calls[0][:2] == ("http", body["message"]["id"])


@pytest.mark.django_db
def test_http_post_idempotency_key_in_body_or_header():
    ada = services.user_create(username="ada")
    services.room_create(slug="lobby", title="Lobby")
    h = bearer(ada)
    c = HttpClient()
    first = post_json(c, "/api/rooms/lobby/messages", {"text": "once", "client_id": "k1"}, headers=h)
    replay = post_json(c, "/api/rooms/lobby/messages", {"text": "once"}, headers={**h, "Idempotency-Key": "k1"})
    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["duplicate"] is True and replay.json()["message"] == first.json()["message"]
    assert Message.objects.count() == 1
    differ = post_json(c, "/api/rooms/lobby/messages", {"text": "x", "client_id": "a"},
                       headers={**h, "Idempotency-Key": "b"})
    assert differ.status_code == 400 and differ.json()["error"]["code"] == "bad_field"
    assert Message.objects.count() == 1


@pytest.mark.django_db
def test_http_post_with_session_needs_csrf():
    services.user_create(username="ada", password="correct-horse-battery")
    services.room_create(slug="lobby", title="Lobby")
    c = HttpClient(enforce_csrf_checks=True)
    assert c.login(username="ada", password="correct-horse-battery")
    refused = post_json(c, "/api/rooms/lobby/messages", {"text": "hi"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    assert Message.objects.count() == 0
    c.get("/accounts/login/")
    ok = post_json(c, "/api/rooms/lobby/messages", {"text": "hi"}, headers={"X-CSRFToken": c.cookies["csrftoken"].value})
    assert ok.status_code == 201 and ok.json()["message"]["text"] == "hi"


@pytest.mark.django_db
@override_parley(MESSAGES_BURST=3, MESSAGES_PER_SEC=0.01)
def test_http_post_shares_the_per_user_message_rate():
    ada = services.user_create(username="ada")
    services.room_create(slug="lobby", title="Lobby")
    h = bearer(ada)
    codes = [post_json(HttpClient(), "/api/rooms/lobby/messages", {"text": f"m{i}"}, headers=h).status_code
             for i in range(4)]
    assert codes == [201, 201, 201, 429]
    refused = post_json(HttpClient(), "/api/rooms/lobby/messages", {"text": "m"}, headers=h)
    assert refused.json()["error"]["code"] == "rate_limited" and refused.json()["error"]["retry_after_ms"] > 0
    assert int(refused["Retry-After"]) >= 1
    assert Message.objects.count() == 3


@pytest.mark.django_db
def test_http_post_refusals():
    ada, bob = services.user_create(username="ada"), services.user_create(username="bob")
    services.room_create(slug="lobby", title="Lobby")
    services.room_create(slug="secret", title="S", owner=ada, is_private=True)
    h = bearer(bob)
    c = HttpClient()

    def error(path: str, body: Any) -> tuple[int, str]:
        r = c.post(path, data=body if isinstance(body, str) else json.dumps(body),
                   content_type="application/json", headers=h)
        return r.status_code, r.json()["error"]["code"]

    assert error("/api/rooms/nowhere/messages", {"text": "hi"}) == (404, "room_not_found")
    assert error("/api/rooms/secret/messages", {"text": "hi"}) == (404, "room_not_found")  # not a member
    assert error("/api/rooms/lobby/messages", {"text": "  "}) == (400, "text_empty")
    assert error("/api/rooms/lobby/messages", {"text": "x" * 4001}) == (400, "text_too_long")
    assert error("/api/rooms/lobby/messages", {}) == (400, "missing_field")
    assert error("/api/rooms/lobby/messages", {"text": "hi", "client_id": 5}) == (400, "bad_field")
    assert error("/api/rooms/lobby/messages", "[1, 2]") == (400, "bad_json")
    unauthenticated = HttpClient().post("/api/rooms/lobby/messages", data="{}", content_type="application/json")
    assert unauthenticated.status_code == 401
    assert Message.objects.count() == 0


# --- message_posted from the socket path ------------------------------------------------------


async def test_message_posted_once_per_socket_send_on_the_signal_thread(connect, posted):
    ada = await make_user("ada")
    await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")
    ack = await a.say("lobby", "one", client_id="c1")
    await a.say("lobby", "one", client_id="c1")  # a replay: nothing stored, nothing sent
    await a.say("lobby", "two")
    await posted.wait(2)
    await asyncio.sleep(0.2)
    assert [(s, i) for s, i, _ in posted.calls][:1] == [("socket", ack["id"])]
    assert len(posted.calls) == 2
    assert {thread for _, _, thread in posted.calls} == {"parley-signals_0"}


async def test_a_raising_receiver_costs_nothing(connect):
    ada = await make_user("ada")
    await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")

    def broken(**kwargs: Any) -> None:
        raise ValueError("a broken webhook")

    message_posted.connect(broken, dispatch_uid="test-broken")
    try:
        message = await database_sync_to_async(parley.post_message)("lobby", "still here", author=ada)
        assert message.seq == 1
        assert (await a.messages(1))[0]["text"] == "still here"
        await a.say("lobby", "and this")
        assert (await a.messages(1))[0]["text"] == "and this"
    finally:
        message_posted.disconnect(dispatch_uid="test-broken")


# --- the room-log watch (no Redis): messages stored without any event ------------------------


def store_behind_parleys_back(slug: str, author: Any, text: str) -> Message:
    """What another process's post_message leaves in this one's view without Redis: a committed
    row, and no event here."""
    room = Room.objects.get(slug=slug)
    return services.message_create(room_id=room.pk, author=author, text=text, client_id=None)[0]


async def test_the_room_log_watch_delivers_what_others_stored(connect, settings, parley_settings):
    if parley_settings.REDIS_URL:
        pytest.skip("with Redis, other processes publish on the hub's channel (tests/test_post_server.py)")
    parley_settings.ROOM_LOG_POLL_MS = 50
    ada, bob, bot = await make_user("ada"), await make_user("bob"), await make_user("bot")
    await make_room("lobby")
    a, b = await connect(ada), await connect(bob)
    await a.join("lobby")
    await b.join("lobby")
    store = database_sync_to_async(store_behind_parleys_back)
    await store("lobby", bot, "one")
    await store("lobby", bot, "two")
    for client in (a, b):
        assert [(m["seq"], m["text"]) for m in await client.messages(2, timeout=5)] == [(1, "one"), (2, "two")]
    await a.say("lobby", "live")  # delivered live; the watch does not send it again
    assert [m["seq"] for m in await b.messages(1)] == [3]
    assert await b.nothing("message", timeout=0.5)


async def test_with_the_room_log_watch_off_such_messages_wait_for_the_next_live_one(connect, settings, parley_settings):
    if parley_settings.REDIS_URL:
        pytest.skip("the watch runs only without Redis")
    parley_settings.ROOM_LOG_POLL_MS = 0
    parley_settings.GAP_FILL_DELAY_MS = 50
    ada, bot = await make_user("ada"), await make_user("bot")
    await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")
    await database_sync_to_async(store_behind_parleys_back)("lobby", bot, "unseen")
    assert await a.nothing("message", timeout=0.6)
    await a.say("lobby", "live")  # seq 2 opens a gap: the socket reads seq 1 from the database
    assert [m["seq"] for m in await a.messages(2)] == [1, 2]
