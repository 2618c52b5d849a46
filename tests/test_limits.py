"""parley.limits and the limits the consumer enforces: each limit's error or close code, tested."""

import asyncio
import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from parley import limits
from parley.models import Message
from tests.conftest import HOST, ORIGIN, make_room, make_token, make_user, override_parley

pytestmark = pytest.mark.django_db(transaction=True)


async def next_close(client, timeout: float = 3) -> int:
    """The close code the server sends, skipping (and keeping) frames queued before it."""
    async with asyncio.timeout(timeout):
        while True:
            out = await client.ws.output_queue.get()
            if out["type"] == "websocket.close":
                return out.get("code", 1000)


# --- the module itself -------------------------------------------------------------------------

def test_token_bucket_allows_burst_then_rate(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    bucket = limits.TokenBucket(rate=2, burst=3)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token refills in 1/rate seconds
    clock[0] += 0.5
    assert bucket.take() == 0.0
    clock[0] += 100
    assert [bucket.take() for _ in range(4)][-1] > 0  # refill is capped at the burst


def test_strikes_count_within_the_window(monkeypatch, parley_settings):
    parley_settings.RATE_LIMIT_STRIKES = 3
    clock = [0.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    strikes = limits.Strikes()
    assert not strikes.add() and not strikes.add()
    clock[0] += limits.STRIKE_WINDOW_SECS + 1  # the old ones age out
    assert not strikes.add() and not strikes.add()
    assert strikes.add()


def test_every_limit_has_a_key_and_a_default(parley_settings):
    keys = {limit.key for limit in limits.ALL}
    assert len(keys) == len(limits.ALL) >= 15
    for limit in limits.ALL:
        # The key is the PARLEY dict's; the environment variable adds the prefix.
        assert not limit.key.startswith("PARLEY_") and limit.env == f"PARLEY_{limit.key}"
        assert limit.default > 0 and limit.unit
        assert isinstance(getattr(parley_settings, limit.key), int | float), limit.key


# --- through the consumer ----------------------------------------------------------------------

@override_parley(FRAMES_PER_SEC=1, FRAMES_BURST=3, RATE_LIMIT_STRIKES=4)
async def test_frame_flood_is_refused_then_cut_off(connect):
    c = await connect(await make_user("flood"))
    for _ in range(3):
        assert (await c.request({"type": "ping"}))["type"] == "pong"
    refused = await c.request({"type": "ping"})
    assert refused["code"] == "rate_limited" and 0 < refused["retry_after_ms"] <= 1000
    for _ in range(3):
        await c.send({"type": "ping"})
    assert await next_close(c) == 4429


async def raw_frames(client, frames: list[str | bytes]) -> None:
    for frame in frames:
        key = "bytes" if isinstance(frame, bytes) else "text"
        await client.ws.send_input({"type": "websocket.receive", key: frame})


async def frames_until_close(client, timeout: float = 3) -> tuple[list[dict], int | None]:
    """Every frame the server sends until it closes (or falls silent for `timeout`), and the code."""
    import json

    got: list[dict] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                out = await client.ws.output_queue.get()
                if out["type"] == "websocket.close":
                    return got, out.get("code", 1000)
                got.append(json.loads(out["text"]))
    except TimeoutError:
        return got, None


@override_parley(FRAMES_PER_SEC=1, FRAMES_BURST=3, RATE_LIMIT_STRIKES=4)
async def test_garbage_frames_are_charged_and_strike_like_any_other(connect):
    """protocol.md §6: every frame — not JSON, not an object, binary, too large — takes a token
    from the socket's frame bucket before it is read, and a refused one is a strike."""
    c = await connect(await make_user("garbage"))
    await raw_frames(c, ["{", "[]", b"\x00"])  # within the burst: each answered with its error
    assert [(await c.recv())["code"] for _ in range(3)] == ["bad_json", "bad_frame", "binary_not_supported"]
    await raw_frames(c, ["{"])
    refused = await c.recv()
    assert refused["code"] == "rate_limited" and refused["retry_after_ms"] > 0
    await raw_frames(c, ["{", "x" * 70_000, b"\x01"])  # strikes 2-4: the socket is closed
    frames, code = await frames_until_close(c)
    assert code == 4429 and all(f["code"] == "rate_limited" for f in frames), frames


@override_parley(FRAMES_PER_SEC=1, FRAMES_BURST=2, RATE_LIMIT_STRIKES=5)
async def test_every_refused_frame_is_answered_and_the_strikes_bound_the_replies(connect):
    """protocol.md §6: a refused frame gets `rate_limited` with its ref (a client waiting on that
    ref retries rather than hangs), and the strikes bound the replies: the 5th refusal in 10 s
    closes the socket, however many frames the flood still sends."""
    c = await connect(await make_user("hammer"))
    assert (await c.request({"type": "ping"}))["type"] == "pong"
    assert (await c.request({"type": "ping"}))["type"] == "pong"
    await raw_frames(c, [f'{{"type": "ping", "ref": "r{i}"}}' for i in range(4)] + ["{"] * 50)
    frames, code = await frames_until_close(c)
    assert code == 4429
    assert [f["code"] for f in frames] == ["rate_limited"] * 4, frames
    assert [f["ref"] for f in frames] == ["r0", "r1", "r2", "r3"]
    assert all(f["retry_after_ms"] > 0 for f in frames)


@override_parley(MESSAGES_PER_SEC=1, MESSAGES_BURST=2)
async def test_message_rate_is_per_user_across_sockets(connect):
    await make_room("lobby")
    user = await make_user("chatty")
    one, two = await connect(user), await connect(user)
    await one.join("lobby")
    await two.join("lobby")
    await one.say("lobby", "a")
    await two.say("lobby", "b")
    refused = await one.request({"type": "send", "room": "lobby", "text": "c", "client_id": "k3"})
    assert refused["code"] == "rate_limited" and refused["retry_after_ms"] > 0
    assert await database_sync_to_async(Message.objects.count)() == 2  # refused means not stored
    await asyncio.sleep(refused["retry_after_ms"] / 1000 + 0.05)
    assert (await one.say("lobby", "c", client_id="k3"))["seq"] == 3  # the retry goes through


@override_parley(MAX_ROOMS_PER_SOCKET=2)
async def test_rooms_per_socket(connect):
    for slug in ("r1", "r2", "r3"):
        await make_room(slug)
    c = await connect(await make_user("roamer"))
    await c.join("r1")
    await c.join("r2")
    await c.join("r2")  # re-joining a joined room is not another room
    refused = await c.request({"type": "join", "room": "r3"})
    assert refused["code"] == "too_many_rooms"
    await c.request({"type": "leave", "room": "r1"})
    await c.join("r3")


@override_parley(MAX_SOCKETS_PER_USER=2)
async def test_sockets_per_user(connect):
    user = await make_user("tabs")
    first, _second = await connect(user), await connect(user)
    token = await make_token(user)
    third = WebsocketCommunicator(application, "/ws/chat/",
                                  headers=[(b"authorization", f"Bearer {token}".encode()), (b"origin", ORIGIN),
                                          (b"host", HOST)])
    connected, _ = await third.connect()
    assert connected
    assert (await third.receive_json_from())["code"] == "too_many_sockets"
    assert (await third.receive_output())["code"] == 4409
    await first.close()
    await asyncio.sleep(0.05)
    fourth = await connect(user)  # a slot is free again
    assert fourth.hello["type"] == "hello"


async def handshake_from(address: str, headers: list[tuple[bytes, bytes]]) -> bool:
    ws = WebsocketCommunicator(application, "/ws/chat/", headers=[*headers, (b"host", HOST)])
    ws.scope["client"] = (address, 5555)  # read by the app when it starts running
    connected, _ = await ws.connect()
    if connected:
        await ws.disconnect()
    return connected


def session_cookie(username: str) -> tuple[bytes, bytes]:
    from django.test import Client as HttpClient

    client = HttpClient()
    assert client.login(username=username, password="correct-horse-battery")
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


async def test_refused_handshakes_spend_the_address_budget_not_its_users(parley_settings, caplog):
    """Someone behind the same address (NAT) failing handshakes must not lock the others out."""
    parley_settings.HANDSHAKES_PER_IP_PER_MIN = 3
    address = "198.51.100.7"
    ada = await make_user("ada")
    token = await make_token(ada)
    cookie = await database_sync_to_async(session_cookie)("ada")
    anonymous = [[(b"origin", ORIGIN)], [], [(b"origin", b"http://evil.example"), (b"authorization", b"Bearer x")],
                 [(b"origin", ORIGIN), (b"cookie", b"sessionid=made-up")]]
    assert [await handshake_from(address, h) for h in anonymous] == [False] * 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="parley.security"):
        # spent: a handshake without credentials is refused before any check (and not logged) …
        assert not await handshake_from(address, [(b"origin", ORIGIN)])
    assert not [r for r in caplog.records if r.name == "parley.security"]
    # … while real users at the address still get in, by token and by cookie, again and again
    for _ in range(5):
        assert await handshake_from(address, [(b"authorization", f"Bearer {token}".encode())])
        assert await handshake_from(address, [(b"origin", ORIGIN), cookie])
    assert await handshake_from("198.51.100.8", [(b"origin", ORIGIN)]) is False  # another address


async def test_authenticated_handshakes_spend_their_users_budget(parley_settings, caplog):
    parley_settings.HANDSHAKES_PER_USER_PER_MIN = 2
    ada, bob = await make_user("ada"), await make_user("bob")
    ada_token, bob_token = await make_token(ada), await make_token(bob)
    address = "198.51.100.9"
    with caplog.at_level(logging.WARNING, logger="parley.security"):
        results = [await handshake_from(address, [(b"authorization", f"Bearer {ada_token}".encode())])
                   for _ in range(3)]
    assert results == [True, True, False]
    assert any("handshake rate limit" in r.getMessage() for r in caplog.records)
    # the address is not blamed: another user there, and ada from elsewhere, carry on
    assert await handshake_from(address, [(b"authorization", f"Bearer {bob_token}".encode())])
    parley_settings.HANDSHAKES_PER_USER_PER_MIN = 60  # one a second: ada waits ~1 s, no minute
    await asyncio.sleep(1.1)
    assert await handshake_from("198.51.100.10", [(b"authorization", f"Bearer {ada_token}".encode())])


@override_parley(OUTBOUND_MAX_MESSAGES=5)
async def test_a_reader_that_stops_reading_is_cut_off_and_others_carry_on(connect):
    await make_room("lobby")
    stuck = asyncio.Event()  # never set: the "network" of the slow socket never drains

    async def slow_network(scope, receive, send):
        """The app behind a transport that stays paused: every frame's send waits forever."""
        async def paused_send(message):
            if message["type"] == "websocket.send":
                await stuck.wait()
            await send(message)
        return await application(scope, receive, paused_send)

    fast, slow = await connect(await make_user("fast")), None
    await fast.join("lobby")
    token = await make_token(await make_user("slow"))
    slow = WebsocketCommunicator(slow_network, "/ws/chat/",
                                 headers=[(b"authorization", f"Bearer {token}".encode()), (b"origin", ORIGIN),
                                          (b"host", HOST)])
    assert (await slow.connect())[0]
    await slow.send_json_to({"type": "join", "room": "lobby"})
    # Its join is done (its joined reply waits in the stuck send) once the room hears it came:
    # only then do the messages below reach it live. Sent earlier, writes go before the join's
    # read (parley.realtime.dbthread's lanes) and the joined reply alone would carry all twelve.
    assert (await fast.recv_type("presence"))["user"]["username"] == "slow"
    for i in range(12):
        await fast.say("lobby", f"m{i}")
    assert [m["seq"] for m in await fast.messages(12)] == list(range(1, 13))
    closed = await slow.receive_output(timeout=3)  # nothing was written, then the close
    assert closed == {"type": "websocket.close", "code": 4413}


@override_parley(REPLY_MAX_BYTES=3000)
async def test_a_resume_too_large_for_one_frame_is_not_recovered(connect):
    room = await make_room("lobby")
    writer = await connect(await make_user("writer"))
    await writer.join("lobby")
    for i in range(4):
        await writer.say("lobby", f"{i}" * 900)  # ~4.4 KB of replay with the fields
    reader = await connect(await make_user("reader"))
    too_big = await reader.join("lobby", after_seq=0, epoch=room.epoch)
    assert too_big["recovered"] is False  # the client pages history instead
    fits = await reader.join("lobby", after_seq=2, epoch=room.epoch)
    assert fits["recovered"] is True and [m["seq"] for m in fits["messages"]] == [3, 4]


@override_parley(REPLY_MAX_BYTES=3000)
async def test_pages_are_cut_to_fit_one_frame(connect):
    await make_room("lobby")
    writer = await connect(await make_user("writer"))
    await writer.join("lobby")
    for i in range(5):
        await writer.say("lobby", f"{i}" * 900)
    reader = await connect(await make_user("reader"))
    # ~1,100 bytes a message against 3,000: two fit. The newest are kept, has_more points on.
    page = await reader.join("lobby")
    assert [m["seq"] for m in page["messages"]] == [4, 5] and page["has_more"] is True
    older = await reader.request({"type": "history", "room": "lobby", "before": 4})
    assert [m["seq"] for m in older["messages"]] == [2, 3] and older["has_more"] is True
    oldest = await reader.request({"type": "history", "room": "lobby", "before": 2})
    assert [m["seq"] for m in oldest["messages"]] == [1] and oldest["has_more"] is False
