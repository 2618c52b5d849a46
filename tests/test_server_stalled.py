"""Clients that stop reading are cut, and really gone, within a bound (a real server process).

Twenty raw TCP clients complete a WebSocket handshake, join a busy room and never read again.
Each must be closed (4413), its TCP connection gone on the server's side and the kernel's send
queue for it freed within the bound, and its user able to open new sockets, while two other users
keep chatting in the same room. Before, the close waited inside uvicorn's `send` for a writable
transport, forever: the sockets stayed open holding megabytes of kernel send queue each and their
users' socket slots.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import textwrap
import time

import pytest
import websockets

from tests.support.rawws import stalled_client
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

STALLED_USERS = 10
SOCKETS_PER_USER = 2  # PARLEY_MAX_SOCKETS_PER_USER: a user whose stalled sockets hold it is locked out
CUT_BOUND_SECS = 20.0  # from the blast's start: fill the kernel and the budget, then the 2 s grace
P99_BOUND_SECS = 1.0
CHAT_MESSAGES = 30


def tokens_for(server: ServerProcess, usernames: list[str]) -> dict[str, str]:
    code = textwrap.dedent(f"""
        import json
        from parley import services
        print("TOKENS" + json.dumps({{name: services.token_create(user=services.user_create(username=name))[1]
                                     for name in {usernames!r}}}))
    """)
    out = server.manage("shell", "-c", code)
    return json.loads(out.split("TOKENS", 1)[1].strip().splitlines()[0])


def server_side(port: int, client_ports: set[int]) -> dict[int, tuple[int, int]]:
    """{client port: (TCP state, bytes in the send queue)} of the server's end of each
    connection still known to the kernel (/proc/net/tcp; state 1 is ESTABLISHED, 6 TIME_WAIT)."""
    found = {}
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) in client_ports:
                found[int(remote.split(":")[1], 16)] = (int(state, 16), int(queues.split(":")[0], 16))
    return found


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[max(0, int(len(values) * 0.99 + 0.999) - 1)]


async def test_clients_that_stop_reading_are_cut_and_gone_while_others_chat():
    env = {"PARLEY_MESSAGES_PER_SEC": "100000", "PARLEY_MESSAGES_BURST": "100000",
           "PARLEY_FRAMES_PER_SEC": "100000", "PARLEY_FRAMES_BURST": "100000",
           "PARLEY_HANDSHAKES_PER_IP_PER_MIN": "10000",
           "PARLEY_MAX_SOCKETS_PER_USER": str(SOCKETS_PER_USER),
           "PARLEY_OUTBOUND_MAX_BYTES": str(1024 * 1024)}
    with ServerProcess(extra_env=env) as server:
        server.manage("bootstrap")
        stalled_users = [f"stalled{i}" for i in range(STALLED_USERS)]
        tokens = tokens_for(server, [*stalled_users, "blaster", "ann", "ben"])

        async def joined(name: str):
            # close_timeout: a client that stopped reading its backlog need not wait for the
            # server's close frame behind it when the test ends.
            ws = await websockets.connect(server.ws_url, max_size=2**22, close_timeout=0.5,
                                          additional_headers={"Authorization": f"Bearer {tokens[name]}"})
            hello = json.loads(await ws.recv())
            if hello["type"] != "hello":
                return ws, hello
            await ws.send(json.dumps({"type": "join", "ref": "j", "room": "lobby", "limit": 1}))
            while json.loads(await ws.recv()).get("ref") != "j":
                pass
            return ws, hello

        stalled = [await asyncio.to_thread(stalled_client, server.port, tokens[name])
                   for name in stalled_users for _ in range(SOCKETS_PER_USER)]
        ports = {sock.getsockname()[1] for sock in stalled}
        (blaster, _), (ann, _), (ben, _) = await joined("blaster"), await joined("ann"), await joined("ben")
        assert len(server_side(server.port, ports)) == len(stalled)

        # Incompressible text, 4,000 characters a message: a busy room.
        text = base64.b64encode(os.urandom(3000)).decode()
        start = time.monotonic()
        gone_after: float | None = None
        sent_at: dict[str, float] = {}
        acks: list[float] = []
        deliveries: list[float] = []
        delivered: list[str] = []

        window = asyncio.Semaphore(20)  # sends awaiting their ack: busy, not a flood of its own

        async def blast() -> None:
            nonlocal gone_after
            i = 0
            while time.monotonic() - start < CUT_BOUND_SECS + 2:
                if gone_after is None and all(state == 6 for state, _ in server_side(server.port, ports).values()):
                    gone_after = time.monotonic() - start
                if gone_after is not None and chatting.done():
                    return
                for _ in range(10):
                    await window.acquire()
                    i += 1
                    await blaster.send(json.dumps({"type": "send", "room": "lobby", "text": text,
                                                   "client_id": f"b{i}"}))

        async def drain_blaster() -> None:
            async for raw in blaster:  # it reads: it is no slow reader
                if json.loads(raw)["type"] in ("ack", "error"):
                    window.release()

        async def chat() -> None:
            await asyncio.sleep(0.5)  # once the room is busy
            for i in range(CHAT_MESSAGES):
                client_id = f"ann-{i}"
                sent_at[client_id] = time.monotonic()
                await ann.send(json.dumps({"type": "send", "room": "lobby", "text": f"hi {i}", "client_id": client_id}))
                await asyncio.sleep(0.2)

        async def listen_ann() -> None:
            while len(acks) < CHAT_MESSAGES:
                frame = json.loads(await ann.recv())
                if frame["type"] == "ack" and frame["client_id"] in sent_at:
                    acks.append(time.monotonic() - sent_at[frame["client_id"]])

        async def listen_ben() -> None:
            while len(delivered) < CHAT_MESSAGES:
                frame = json.loads(await ben.recv())
                if frame["type"] == "message" and frame["message"]["client_id"] in sent_at:
                    delivered.append(frame["message"]["client_id"])
                    deliveries.append(time.monotonic() - sent_at[frame["message"]["client_id"]])

        reader = asyncio.ensure_future(drain_blaster())
        chatting = asyncio.gather(chat(), listen_ann(), listen_ben())
        await blast()
        try:
            await asyncio.wait_for(chatting, 20)
        except TimeoutError:
            pass
        left = server_side(server.port, ports)

        # Their users get their socket slots back: each opens as many new sockets as it may.
        reopened = [await joined(name) for name in stalled_users for _ in range(SOCKETS_PER_USER)]
        refused = [hello for _, hello in reopened if hello["type"] != "hello"]
        for ws, _ in reopened:
            await ws.close()
        reader.cancel()
        for ws in (blaster, ann, ben):
            await ws.close()
        for sock in stalled:
            sock.close()

        assert gone_after is not None, f"still open {CUT_BOUND_SECS + 2} s later: {left}"
        assert gone_after < CUT_BOUND_SECS, f"the stalled connections took {gone_after:.1f} s to go"
        # Gone, not lingering: no server-side end holds data (an orphaned FIN_WAIT1 would).
        assert all(state == 6 and queued == 0 for state, queued in left.values()), left
        assert refused == [], refused
        assert delivered == [f"ann-{i}" for i in range(CHAT_MESSAGES)]
        report = f"cut after {gone_after:.1f} s; ack p99 {p99(acks) * 1000:.0f} ms, delivery p99 {p99(deliveries) * 1000:.0f} ms"
        assert p99(acks) < P99_BOUND_SECS and p99(deliveries) < P99_BOUND_SECS, report
        print(report)
