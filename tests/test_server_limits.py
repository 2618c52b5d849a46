"""Limits at work in a real server process (uvicorn over TCP), as a hostile client meets them.

- the ASGI server refuses oversized frames (scripts/serve passes --ws-max-size);
- a client that stops reading is cut off (4413) and the server's memory stays flat;
- a flooder is throttled, then cut off (4429), while everyone else keeps chatting on time,
  and no acknowledged message is lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import tempfile
import time

import psutil
import pytest
import websockets

from tests.support.server import PYTHON, REPO, ServerProcess, free_port

pytestmark = pytest.mark.slow


def auth(token: str) -> dict:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


async def join(ws, room: str = "lobby") -> dict:
    await ws.send(json.dumps({"type": "join", "ref": "j", "room": room}))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("ref") == "j":
            return frame


@pytest.fixture
def serve_process():
    """`scripts/serve` itself, so the production uvicorn flags are what is tested."""
    data_dir = tempfile.mkdtemp(prefix="parley-serve-")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PARLEY_", "DJANGO_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"PARLEY_DATA_DIR": data_dir, "PORT": str(port), "HOST": "127.0.0.1",
                "SECRET_KEY": "test-only", "PARLEY_HANDSHAKES_PER_IP_PER_MIN": "1000"})
    proc = subprocess.Popen([str(REPO / "scripts" / "serve")], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("scripts/serve did not come up")
            time.sleep(0.2)

    def token(username: str) -> str:
        out = subprocess.run([PYTHON, "manage.py", "create_token", username, "--create-user"], cwd=REPO,
                             env=env, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    yield f"ws://127.0.0.1:{port}/ws/chat/", token
    os.killpg(proc.pid, 15)
    proc.wait(10)


async def test_the_asgi_server_refuses_oversized_frames(serve_process):
    url, token = serve_process
    async with websockets.connect(url, **auth(token("big"))) as big, \
               websockets.connect(url, **auth(token("bystander"))) as bystander:
        await big.recv()  # hello
        await bystander.recv()
        await big.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(big.recv(), 5)
        assert closed.value.rcvd.code == 1009  # message too big
        await bystander.send(json.dumps({"type": "ping", "ref": "p"}))
        assert json.loads(await asyncio.wait_for(bystander.recv(), 5)) == {"type": "pong", "ref": "p"}


async def test_a_client_that_stops_reading_is_cut_off_and_memory_stays_flat():
    limits = {"PARLEY_MESSAGES_PER_SEC": "100000", "PARLEY_MESSAGES_BURST": "100000",
              "PARLEY_FRAMES_PER_SEC": "100000", "PARLEY_FRAMES_BURST": "100000",
              "PARLEY_OUTBOUND_MAX_BYTES": str(512 * 1024)}
    with ServerProcess(extra_env=limits) as server:
        server.start()
        server.manage("bootstrap")
        sender_token, reader_token = server.create_token("sender"), server.create_token("stalled")
        process = psutil.Process(server.pid)
        # Incompressible: with permessage-deflate a repetitive text would shrink to a few bytes.
        text = base64.b64encode(os.urandom(2900)).decode()
        async with websockets.connect(server.ws_url, max_size=2**20, **auth(sender_token)) as sender:
            await sender.recv()
            await join(sender)

            async def send_many(count: int) -> None:
                for i in range(count):
                    await sender.send(json.dumps({"type": "send", "room": "lobby", "text": text, "client_id": f"w{i}-{time.time_ns()}"}))
                    while json.loads(await sender.recv())["type"] != "ack":
                        pass

            await send_many(200)  # warm up: allocator pools, caches
            baseline = process.memory_info().rss
            # max_queue=1: the client library stops reading the socket once one frame waits,
            # so TCP backpressure reaches the server as it would with a frozen browser tab. A
            # small fixed receive buffer stops Linux autotuning it up to 32 MB on loopback,
            # which would otherwise absorb the whole backlog in the kernel.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.connect(("127.0.0.1", server.port))
            sock.setblocking(False)
            stalled = await websockets.connect(server.ws_url, sock=sock, max_queue=1, max_size=2**20,
                                               **auth(reader_token))
            await stalled.recv()
            await join(stalled)
            await send_many(3000)  # ~12 MB towards a reader that takes none of it
            grown = process.memory_info().rss - baseline
            frames, code = 0, None
            try:
                while True:
                    await asyncio.wait_for(stalled.recv(), 10)
                    frames += 1
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
            # 4413 if its close frame was read within PARLEY_CLOSE_GRACE_SECS, else the
            # connection was reset (no close frame): either way the server cut it.
            assert code in (4413, None), (code, frames)
            assert frames < 3000  # it was cut off, not served the whole backlog
            # The backlog was dropped when the reader was cut off; what remains is allocator noise.
            assert grown < 40 * 1024 * 1024, f"server RSS grew by {grown / 2**20:.1f} MiB"
            await sender.send(json.dumps({"type": "ping", "ref": "still-here"}))
            while json.loads(await sender.recv()).get("ref") != "still-here":
                pass


async def test_a_flooder_is_throttled_then_cut_off_while_others_chat():
    """Production limits (the server process gets none of the tests' generous overrides)."""
    with ServerProcess() as server:
        server.start()
        server.manage("bootstrap")
        tokens = {name: server.create_token(name) for name in ("flooder", "ann", "ben", "cat")}
        chatters = {}
        for name in ("ann", "ben", "cat"):
            ws = await websockets.connect(server.ws_url, **auth(tokens[name]))
            await ws.recv()
            await join(ws)
            chatters[name] = ws
        flooder = await websockets.connect(server.ws_url, **auth(tokens["flooder"]))
        await flooder.recv()
        await join(flooder)

        flood_acks, refusals, flood_close = [], 0, None

        async def flood() -> None:
            nonlocal refusals, flood_close
            reader = asyncio.ensure_future(read_flood())
            try:
                for i in range(5000):
                    await flooder.send(json.dumps({"type": "send", "room": "lobby", "text": f"spam {i}",
                                                   "client_id": f"spam-{i}"}))
                    await asyncio.sleep(0)
            except websockets.ConnectionClosed:
                pass
            await asyncio.wait_for(reader, 10)

        async def read_flood() -> None:
            nonlocal refusals, flood_close
            try:
                async for raw in flooder:
                    frame = json.loads(raw)
                    if frame["type"] == "ack":
                        flood_acks.append(frame["seq"])
                    elif frame.get("code") == "rate_limited":
                        refusals += 1
            except websockets.ConnectionClosed:
                pass
            flood_close = flooder.close_code

        sent_at: dict[str, float] = {}
        acked: dict[str, int] = {}
        received: dict[str, list[tuple[int, str]]] = {name: [] for name in chatters}
        latencies: list[float] = []

        async def chat(name: str, ws) -> None:
            for i in range(10):
                client_id = f"{name}-{i}"
                sent_at[client_id] = time.monotonic()
                await ws.send(json.dumps({"type": "send", "room": "lobby", "text": client_id, "client_id": client_id}))
                await asyncio.sleep(0.3)  # a person, well inside 5 messages/s

        async def listen(name: str, ws, until: float) -> None:
            try:
                while time.monotonic() < until:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.05, until - time.monotonic())))
                    if frame["type"] == "ack":
                        acked[frame["client_id"]] = frame["seq"]
                    elif frame["type"] == "message":
                        message = frame["message"]
                        received[name].append((message["seq"], message["client_id"] or ""))
                        origin = message["client_id"] or ""
                        if origin in sent_at and not origin.startswith(name):
                            latencies.append(time.monotonic() - sent_at[origin])
            except TimeoutError:
                pass

        until = time.monotonic() + 6
        await asyncio.gather(flood(), *(chat(n, ws) for n, ws in chatters.items()),
                             *(listen(n, ws, until) for n, ws in chatters.items()))

        assert refusals > 0 and flood_close == 4429  # throttled, then cut off
        assert len(acked) == 30  # every normal send was accepted
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert len(latencies) == 60 and p99 < 0.5, f"p99 {p99 * 1000:.0f} ms over {len(latencies)} deliveries"
        # Nothing acked is lost: every chatter saw every acked message, flooder's included,
        # exactly once and in order.
        all_acked = sorted(set(acked.values()) | set(flood_acks))
        for name, got in received.items():
            seqs = [seq for seq, _ in got]
            assert seqs == sorted(set(seqs)), f"{name}: duplicates or disorder"
            assert set(all_acked) <= set(seqs), f"{name} missed {sorted(set(all_acked) - set(seqs))}"
        for ws in chatters.values():
            await ws.close()
