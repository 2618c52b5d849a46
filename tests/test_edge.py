"""The connection edge (parley/edge.py) in a real server process started by the production
launcher (config/serve.py): connection caps, the header timeout, the header size cap, no query
strings in the logs, and the SIGTERM drain (every frame received is answered, then 1001).

The attacker connects from 127.0.0.1, the victim from 127.0.0.2 (also loopback).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from typing import Any

import psutil
import pytest
import websockets

import tests.support  # noqa: F401
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import closing_db, make_room, make_user_token
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

VICTIM = "127.0.0.2"


def victim_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((VICTIM, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def http_get(sock: socket.socket, path: str = "/healthz") -> bytes:
    """The whole answer to one request on `sock` (Connection: close), which is then closed."""
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """(everything received, seconds until EOF or reset); `sock` is closed then."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    with sock:
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data, time.monotonic() - start


async def victim_handshake(port: int, token: str) -> dict[str, Any]:
    sock = victim_socket(port)
    sock.setblocking(False)
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/", sock=sock, open_timeout=10,
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


# --- connection exhaustion and slowloris -------------------------------------------------------

HALF_HTTP = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
HALF_WS = (b"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\n")


def test_one_address_cannot_hoard_connections_and_half_sent_heads_time_out():
    cap, timeout_secs = 60, 3
    env = {"PARLEY_MAX_CONNECTIONS_PER_IP": str(cap), "PARLEY_HEADER_TIMEOUT_SECS": str(timeout_secs),
           # The attacker connects from 127.0.0.1, by default a trusted proxy, whose connections
           # are counted per forwarded client once a request head is complete
           # (tests/test_proxy_headers.py). Here it is just a client.
           "FORWARDED_ALLOW_IPS": "192.0.2.1"}
    with ServerProcess(extra_env=env) as server:
        token = server.create_token("victim")
        hoard: list[socket.socket] = []
        try:
            # The attacker's slots: half-sent HTTP requests and WebSocket handshakes, and idle TCP.
            for i in range(cap):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                if i % 3 == 0:
                    sock.sendall(HALF_HTTP)
                elif i % 3 == 1:
                    sock.sendall(HALF_WS)
                hoard.append(sock)
            opened_at = time.monotonic()
            time.sleep(0.3)
            # Beyond the cap, the same address is closed at once: nothing read, nothing answered.
            extra = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(200)]
            try:
                for sock in extra:
                    data, took = read_until_closed(sock, timeout=timeout_secs - 1)
                    assert data == b"" and took < timeout_secs - 1, (data, took)
            finally:
                for sock in extra:
                    sock.close()

            # Another address is served meanwhile: HTTP and a WebSocket handshake.
            assert http_get(victim_socket(server.port)).startswith(b"HTTP/1.1 200")
            assert asyncio.run(victim_handshake(server.port, token))["type"] == "hello"

            # Every hoarded connection is closed once the header timeout passes: 408 for those
            # that had started a request, a silent close for the idle ones.
            for i, sock in enumerate(hoard):
                data, _ = read_until_closed(sock, timeout=timeout_secs + 10)
                if i % 3 == 2:
                    assert data == b"", data
                else:
                    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
                    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
            took = time.monotonic() - opened_at
            assert timeout_secs - 0.5 < took < timeout_secs + 10, took
            # ... and the address has its slots back.
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            assert http_get(sock).startswith(b"HTTP/1.1 200")
        finally:
            for sock in hoard:
                sock.close()


def test_the_per_address_cap_counts_an_ipv6_host_by_its_64():
    from parley.edge import address_key

    assert address_key(("2001:db8:1:2::1", 1)) == address_key(("2001:db8:1:2:ffff::9", 2)) == "2001:db8:1:2::/64"
    assert address_key(("2001:db8:1:3::1", 1)) != address_key(("2001:db8:1:2::1", 1))
    assert address_key(("::ffff:192.0.2.7", 1)) == address_key(("192.0.2.7", 1)) == "192.0.2.7"
    assert address_key(None) is None  # a Unix socket


def test_connections_beyond_the_process_cap_are_closed_at_once():
    env = {"PARLEY_MAX_CONNECTIONS": "40", "PARLEY_MAX_CONNECTIONS_PER_IP": "0"}
    with ServerProcess(extra_env=env, log_level="INFO") as server:
        hoard = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(40)]
        try:
            time.sleep(0.3)
            data, took = read_until_closed(victim_socket(server.port), timeout=5)
            assert data == b"" and took < 4, (data, took)
        finally:
            for sock in hoard:
                sock.close()
        time.sleep(0.3)
        assert http_get(victim_socket(server.port)).startswith(b"HTTP/1.1 200")
        assert "refusing connections" in server.log_path.read_text()


# --- one oversized request header --------------------------------------------------------------

def test_an_oversized_header_is_answered_431_without_being_buffered():
    with ServerProcess() as server:
        # A large but allowed head is still served (the cap is 16 KiB).
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Pad: "
                     + b"a" * 12_000 + b"\r\n\r\n")
        assert read_until_closed(sock, 10)[0].startswith(b"HTTP/1.1 200")

        process = psutil.Process(server.pid)
        baseline = process.memory_info().rss
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sent = [0]

        def send_64_mib() -> None:
            chunk = b"a" * (1 << 20)
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
                for _ in range(64):
                    sock.sendall(chunk)
                    sent[0] += len(chunk)
                sock.sendall(b"\r\n\r\n")
            except OSError:
                pass  # the server stopped reading and closed: expected

        sender = threading.Thread(target=send_64_mib, daemon=True)
        sender.start()
        answer, _ = read_until_closed(sock, timeout=30)
        peak = process.memory_info().rss
        sender.join(30)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
        grown = max(peak, process.memory_info().rss) - baseline
        assert grown < 8 * 2**20, f"server RSS grew by {grown / 2**20:.1f} MiB"
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert http_get(sock).startswith(b"HTTP/1.1 200")  # and it keeps serving


# --- no query string in the logs ---------------------------------------------------------------

def test_no_query_string_reaches_the_server_log_even_with_the_access_log_on():
    with ServerProcess(log_level="INFO", server_args=["--access-log"]) as server:
        token = server.create_token("logged")
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert http_get(sock, "/healthz?token=prl_secretHTTP&x=1").startswith(b"HTTP/1.1 200")

        async def handshakes() -> None:
            url = f"ws://127.0.0.1:{server.port}/ws/chat/?token=prl_secretWS"
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
            with pytest.raises(websockets.InvalidStatus):  # refused (no credentials): logged 403
                async with websockets.connect(url.replace("WS", "WS403")):
                    pass

        asyncio.run(handshakes())
        server.stop()
        log = server.log_path.read_text()
        assert "GET /healthz?" in log and "WebSocket /ws/chat/?" in log, log[-3000:]  # the lines are there
        assert "secret" not in log, [line for line in log.splitlines() if "secret" in line]


# --- SIGTERM: every received frame answered, then 1001 ------------------------------------------

@closing_db
def stored_client_ids(room: str) -> set[str]:
    from parley.models import Message

    return set(Message.objects.filter(room__slug=room).values_list("client_id", flat=True))


@pytest.mark.django_db(transaction=True)
async def test_sigterm_answers_every_frame_received_then_closes_1001(servers):
    server = servers(extra_env={"PARLEY_SHUTDOWN_GRACE_SECS": "20"})
    await make_room("drain")
    clients = 12
    tokens = [(await make_user_token())[1] for _ in range(clients)]
    answers: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    sent = [0] * clients
    codes: list[int | None] = [None] * clients
    acked = 0

    async def run(n: int, token: str) -> None:
        nonlocal acked
        ws = await websockets.connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                      ping_interval=None, max_size=2**22)
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"type": "join", "ref": "join", "room": "drain"}))
        while json.loads(await ws.recv()).get("ref") != "join":
            pass

        async def write() -> None:
            try:
                for i in range(100_000):
                    await ws.send(json.dumps({"type": "send", "ref": f"{n}-{i}", "room": "drain",
                                              "text": f"m {n} {i}", "client_id": f"c{n}-{i}"}))
                    sent[n] = i + 1
                    await asyncio.sleep(0.01)
            except websockets.ConnectionClosed:
                pass

        writer = asyncio.create_task(write())
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("ref", "").startswith(f"{n}-"):
                    answers[n].append(frame)
                    acked += frame["type"] == "ack"
        except websockets.ConnectionClosed:
            pass
        codes[n] = ws.close_code
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)

    tasks = [asyncio.create_task(run(n, t)) for n, t in enumerate(tokens)]
    deadline = time.monotonic() + 30
    while acked < 150:
        assert time.monotonic() < deadline, f"only {acked} acks before SIGTERM"
        await asyncio.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*tasks), 40)
    returncode = await asyncio.to_thread(server.proc.wait, 30)
    # uvicorn re-raises the signal once its graceful shutdown is done: -15 is a clean exit.
    assert returncode in (0, -signal.SIGTERM), server.log_tail()
    assert "Cancel" not in server.log_tail(), server.log_tail()  # not cut short by the grace

    assert codes == [1001] * clients, codes
    stored = await stored_client_ids("drain")
    unanswered_total = 0
    for n in range(clients):
        refs = [int(frame["ref"].split("-")[1]) for frame in answers[n]]
        # Answered in order, with no hole: the frames the server read, and no more.
        assert refs == list(range(len(refs))), refs[:50]
        kinds = {frame["type"] if frame["type"] == "ack" else frame["code"] for frame in answers[n]}
        assert kinds <= {"ack", "commit_failed", "internal_error"}, kinds
        acks = {f["client_id"] for f in answers[n] if f["type"] == "ack"}
        mine = {cid for cid in stored if cid.startswith(f"c{n}-")}
        # Nothing acked is missing, and nothing was stored without its ack reaching the client.
        assert mine == acks, (sorted(mine - acks)[:5], sorted(acks - mine)[:5])
        unanswered_total += sent[n] - len(refs)
    # Some sends were still on the wire when reading stopped: those get no answer (the 1001
    # tells the client to resend them, with the same client_id, to another process).
    assert unanswered_total >= 0
