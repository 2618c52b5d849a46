"""History reads within every limit must not starve other users (a real server process).

Five accounts page a room of 4,000-character messages as fast as the frame limit lets them
(and wait as long as `retry_after_ms` says when refused), while two other users chat. The chatters'
acks and deliveries must stay quick: reads are charged to a byte budget per user and per process
(parley.limits.ByteBudget), and the group commit does not queue behind reads (parley.realtime.dbthread).
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time

import pytest
import websockets

from tests.support.fixtures import *  # noqa: F403  (the `servers` fixture)
from tests.support.server import PYTHON, REPO, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FLOODERS = 5
SOCKETS_PER_FLOODER = 10  # 50 sockets; the report saw 100 (sized down for a busy 2-core box)
HISTORY_PER_SEC = 19  # per socket, inside PARLEY_FRAMES_PER_SEC (20)
FLOOD_SECS = 9.0
CHAT_MESSAGES = 30
CHAT_INTERVAL_SECS = 0.2
# Starvation is systematic: when reads and the group commit shared one FIFO thread, every ack
# queued behind the flood and the median went to seconds. The median is held to the tight bound;
# the tail (with 30 samples p99 is the slowest one) gets room for one stall of a loaded machine:
# quiet, both are ~35 ms here, and one CI run saw a single 754 ms ack with the median unaffected.
MEDIAN_BOUND_SECS = 0.5
P99_BOUND_SECS = 2.0


def world(server: ServerProcess, usernames: list[str], *, messages: int, chars: int) -> dict[str, str]:
    """Users with a token each, and `messages` messages of `chars` characters in the lobby, made
    in one manage.py run (one Django start-up instead of one per user)."""
    code = textwrap.dedent(f"""
        import json
        from parley import services
        from parley.models import Room
        lobby = Room.objects.get(slug="lobby")
        tokens = {{}}
        for name in {usernames!r}:
            user = services.user_create(username=name)
            tokens[name] = services.token_create(user=user)[1]
        author = services.user_create(username="author")
        for i in range({messages}):
            services.message_create(room_id=lobby.pk, author=author, text=(str(i) + "x" * {chars})[:{chars}],
                                    client_id=None)
        print("TOKENS" + json.dumps(tokens))
    """)
    out = server.manage("shell", "-c", code)
    return json.loads(out.split("TOKENS", 1)[1].strip().splitlines()[0])


# The flood runs in a process of its own: 50 sockets reading 400 KB frames would otherwise share
# the test's event loop with the chatters and distort their latencies.
FLOOD_SCRIPT = r"""
import asyncio, json, sys, time
import websockets

url, tokens, sockets, per_sec, secs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
stats = {"pages": 0, "bytes": 0, "refused": 0, "closed": 0}

async def one(token):
    end = time.monotonic() + secs
    while time.monotonic() < end:  # closed (4429: refused too often)? come back, within the limits
        try:
            await page(token, end)
        except websockets.ConnectionClosed:
            stats["closed"] += 1

async def page(token, end):
    ws = await websockets.connect(url, max_size=2**22, additional_headers={"Authorization": f"Bearer {token}"})
    await ws.recv()
    await ws.send(json.dumps({"type": "join", "ref": "j", "room": "lobby", "limit": 1}))
    while json.loads(await ws.recv()).get("ref") != "j":
        pass
    resume_at = 0.0
    async def read():
        nonlocal resume_at
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "history":
                stats["pages"] += 1
                stats["bytes"] += len(raw.encode())
            elif frame.get("code") == "rate_limited":
                stats["refused"] += 1
                resume_at = max(resume_at, time.monotonic() + frame["retry_after_ms"] / 1000)
    reader = asyncio.ensure_future(read())
    i = 0
    try:
        while time.monotonic() < end:
            if time.monotonic() >= resume_at:  # waits when told to
                await ws.send(json.dumps({"type": "history", "ref": f"h{i}", "room": "lobby", "limit": 100}))
                i += 1
            await asyncio.sleep(1 / per_sec)
    finally:
        reader.cancel()
        await ws.close()

async def main():
    print("READY", flush=True)
    await asyncio.gather(*(one(t) for t in tokens for _ in range(sockets)))
    print("STATS" + json.dumps(stats), flush=True)

asyncio.run(main())
"""


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[max(0, int(len(values) * 0.99 + 0.999) - 1)]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def test_history_flood_from_several_accounts_does_not_starve_others_acks_or_deliveries(servers):
    """On the test run's database and channel layer (SQLite + memory, or PostgreSQL + Redis),
    with the production limits but the handshake rate (every socket comes from 127.0.0.1)."""
    server = servers(default_limits=True, extra_env={"PARLEY_HANDSHAKES_PER_IP_PER_MIN": "10000"})
    server.manage("bootstrap")
    flooders = [f"flood{i}" for i in range(FLOODERS)]
    tokens = world(server, [*flooders, "ann", "ben"], messages=100, chars=4000)
    auth = {name: {"additional_headers": {"Authorization": f"Bearer {tokens[name]}"}} for name in tokens}

    async def joined(name: str):
        ws = await websockets.connect(server.ws_url, max_size=2**22, **auth[name])
        await ws.recv()
        await ws.send(json.dumps({"type": "join", "ref": "j", "room": "lobby", "limit": 1}))
        while json.loads(await ws.recv()).get("ref") != "j":
            pass
        return ws

    ann, ben = await joined("ann"), await joined("ben")
    flood = await asyncio.create_subprocess_exec(
        PYTHON, "-c", FLOOD_SCRIPT, server.ws_url, json.dumps([tokens[n] for n in flooders]),
        str(SOCKETS_PER_FLOODER), str(HISTORY_PER_SEC), str(FLOOD_SECS),
        cwd=REPO, stdout=asyncio.subprocess.PIPE)
    try:
        assert flood.stdout is not None
        assert (await flood.stdout.readline()).strip() == b"READY"
        await asyncio.sleep(2.0)  # the flood's sockets connect and start paging

        sent_at: dict[str, float] = {}
        ack_latency: list[float] = []
        delivery_latency: list[float] = []
        delivered: list[str] = []

        async def listen_ann() -> None:
            while len(ack_latency) < CHAT_MESSAGES:
                frame = json.loads(await ann.recv())
                if frame["type"] == "ack":
                    ack_latency.append(time.monotonic() - sent_at[frame["client_id"]])

        async def listen_ben() -> None:
            while len(delivered) < CHAT_MESSAGES:
                frame = json.loads(await ben.recv())
                if frame["type"] == "message" and frame["message"]["client_id"] in sent_at:
                    delivered.append(frame["message"]["client_id"])
                    delivery_latency.append(time.monotonic() - sent_at[frame["message"]["client_id"]])

        async def chat() -> None:
            for i in range(CHAT_MESSAGES):
                client_id = f"ann-{i}"
                sent_at[client_id] = time.monotonic()
                await ann.send(json.dumps({"type": "send", "room": "lobby", "text": f"hi {i}",
                                           "client_id": client_id}))
                await asyncio.sleep(CHAT_INTERVAL_SECS)

        listeners = asyncio.gather(listen_ann(), listen_ben())
        await chat()
        try:
            await asyncio.wait_for(listeners, 15)
        except TimeoutError:
            pass
        out = (await asyncio.wait_for(flood.communicate(), 60))[0].decode()
        stats = json.loads(out.split("STATS", 1)[1]) if "STATS" in out else {}
    finally:
        if flood.returncode is None:
            flood.kill()
            await flood.wait()
    await ann.close()
    await ben.close()

    assert stats.get("pages", 0) > 0, stats  # the flood did read history
    # … within its budget: each account's rate (1 MiB/s) over the flood, plus its burst (4 MiB),
    # with slack for connecting.
    assert stats["bytes"] <= FLOODERS * ((FLOOD_SECS + 3) * 2**20 + 4 * 2**20), stats
    assert len(ack_latency) == CHAT_MESSAGES, f"{len(ack_latency)} of {CHAT_MESSAGES} acks"
    assert delivered == [f"ann-{i}" for i in range(CHAT_MESSAGES)]  # every message, in order
    report = (f"ack median {median(ack_latency) * 1000:.0f} ms p99 {p99(ack_latency) * 1000:.0f} ms, "
              f"delivery median {median(delivery_latency) * 1000:.0f} ms p99 {p99(delivery_latency) * 1000:.0f} ms, "
              f"flood {stats}")
    for latencies in (ack_latency, delivery_latency):
        assert median(latencies) < MEDIAN_BOUND_SECS, report
        assert p99(latencies) < P99_BOUND_SECS, report
    print(report)
