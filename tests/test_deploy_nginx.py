"""deploy/nginx.conf, for real: nginx (Debian's) in front of three Parley processes on PostgreSQL
+ Redis, as docs/deploy.md tells an operator to run them.

- messages cross processes: members on different backends receive each other's messages;
- SIGKILL of one backend: its clients reconnect through nginx to the others and resume with
  nothing lost and nothing doubled;
- the per-address limits see the client's address, not nginx's: clients bound to 127.0.0.2 and
  127.0.0.3 (Linux routes all of 127.0.0.0/8 on lo) are counted apart.

Runs in scripts/test's PostgreSQL + Redis pass (three processes share nothing else). Without
nginx it is skipped loudly, and fails under PARLEY_REQUIRE_SERVICES=1 (scripts/test installs
Debian's nginx when it runs as root, as it does Chromium).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

import tests.support  # noqa: F401  (puts clients/python on sys.path first)
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import (
    REQUIRE_SERVICES,
    assert_exactly_once,
    make_room,
    make_user_token,
    start_clients,
    wait_for,
)
from tests.support.nginx import NginxProcess, nginx_binary
from tests.support.server import redis_url_for_tests

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOM = "lobby"


@pytest.fixture
def needs_nginx() -> None:
    if nginx_binary() is None:
        msg = "needs Debian's nginx (apt-get install nginx-light; scripts/test installs it as root)"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " (PARLEY_REQUIRE_SERVICES=1)")
        pytest.skip("SKIPPED LOUDLY: " + msg)


@pytest.fixture
def on_postgres_and_redis(needs_nginx: None, transactional_db: Any) -> None:
    from django.db import connection

    if connection.vendor != "postgresql" or not redis_url_for_tests():
        pytest.skip("several processes need PostgreSQL + Redis: runs in scripts/test's second pass")


@pytest.fixture
def cluster(on_postgres_and_redis: None, servers: Any) -> Iterator[Any]:
    """Three Parley processes sharing a Redis prefix, and nginx in front of them."""
    prefix = "nginx" + uuid.uuid4().hex[:8]

    def make(*, count: int = 3, tls: bool = False, **env: str) -> tuple[list[Any], NginxProcess]:
        backends = [servers(redis_prefix=prefix, extra_env=dict(env)) for _ in range(count)]
        proxy = NginxProcess(backend_ports=[b.port for b in backends], tls=tls).start()
        made.append(proxy)
        return backends, proxy

    made: list[NginxProcess] = []
    yield make
    for proxy in made:
        print(f"\n--- nginx error.log tail ---\n{proxy.log_tail()}")
        proxy.stop()


def established_from_nginx(port: int) -> int:
    """Open TCP connections to a backend's port (nginx's, one per proxied socket), from /proc."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def send_stream(client: Any, prefix: str, n: int, until: asyncio.Task[Any]) -> list[dict[str, Any]]:
    acks = []
    i = 0
    while i < n or not until.done():
        acks.append(await client.send(ROOM, f"{prefix} #{i}", timeout=60))
        await asyncio.sleep(0.01)
        i += 1
    return acks


async def test_messages_cross_backends_and_a_killed_backends_clients_resume_elsewhere(cluster: Any) -> None:
    backends, proxy = cluster()
    await make_room(ROOM)
    tokens = [(await make_user_token(f"n{i}"))[1] for i in range(6)]
    # One of them as a browser would come: its Origin is nginx's address, which nginx passes on
    # as Host (port included), so Parley's Origin check accepts it.
    members = await start_clients(proxy.ws_url, tokens[:1], ROOM, origin=proxy.http_url)
    members += await start_clients(proxy.ws_url, tokens[1:], ROOM)
    on_backend = [established_from_nginx(b.port) for b in backends]
    assert on_backend == [2, 2, 2], f"nginx spread 6 sockets over 3 backends as {on_backend}"

    # (a) messages cross processes: one from each member, every member receives all six.
    first = [await client.send(ROOM, f"hello from {i}", timeout=15) for i, (client, _) in enumerate(members)]
    await wait_for(lambda: all(len(c.seqs(ROOM)) >= 6 for _, c in members), 20, "six messages everywhere")

    # (b) SIGKILL one backend while everyone sends.
    victim = backends[0]

    async def kill() -> None:
        await asyncio.sleep(0.8)
        await asyncio.to_thread(victim.kill)

    killer = asyncio.create_task(kill())
    results = await asyncio.gather(*(send_stream(c, f"m{i}", 20, killer) for i, (c, _) in enumerate(members)))
    acks = first + [a for r in results for a in r]
    await wait_for(lambda: all(len(c.seqs(ROOM)) >= len(acks) for _, c in members), 30,
                   f"{len(acks)} messages at every member")
    await asyncio.sleep(0.3)  # anything doubled would arrive now
    moved = [c for c, col in members if any(e["type"] == "disconnected" for e in col.events)]
    assert len(moved) == 2, f"{len(moved)} clients lost their socket; the killed backend held 2"
    assert all(c.connected for c, _ in members)
    assert [established_from_nginx(b.port) for b in backends[1:]] in ([3, 3], [2, 4], [4, 2]), \
        "the moved clients are on the surviving backends"
    db = backends[1].all_messages(ROOM, tokens[0])
    assert_exactly_once(ROOM, acks, db, [c for _, c in members])
    for client, collector in members:
        await client.close()
        await collector.stop()


async def test_a_rolling_restart_one_backend_at_a_time_loses_and_doubles_nothing(cluster: Any) -> None:
    """docs/deploy.md's upgrade: restart the processes one at a time (SIGTERM drains: 1001, and the
    clients reconnect through nginx to the others) while everyone keeps sending."""
    backends, proxy = cluster()
    await make_room(ROOM)
    tokens = [(await make_user_token(f"r{i}"))[1] for i in range(6)]
    members = await start_clients(proxy.ws_url, tokens, ROOM)

    async def restart_each() -> None:
        for backend in backends:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(backend.stop, 30)
            await asyncio.to_thread(backend.start)

    restarts = asyncio.create_task(restart_each())
    results = await asyncio.gather(*(send_stream(c, f"r{i}", 20, restarts) for i, (c, _) in enumerate(members)))
    await restarts
    acks = [a for r in results for a in r]
    await wait_for(lambda: all(len(c.seqs(ROOM)) >= len(acks) for _, c in members), 30,
                   f"{len(acks)} messages at every member")
    await asyncio.sleep(0.3)
    codes = [e["code"] for _, col in members for e in col.events if e["type"] == "disconnected"]
    assert codes and set(codes) == {1001}, f"closes seen by the clients: {codes}"
    assert all(c.connected for c, _ in members)
    assert_exactly_once(ROOM, acks, backends[0].all_messages(ROOM, tokens[0]), [c for _, c in members])
    for client, collector in members:
        await client.close()
        await collector.stop()


async def handshake(url: str, source: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a WebSocket handshake from `source` (101 when accepted, then closed)."""
    try:
        async with websockets.connect(url, additional_headers=headers or {}, local_addr=(source, 0),
                                      proxy=None, open_timeout=10, ping_interval=None) as ws:
            json.loads(await asyncio.wait_for(ws.recv(), 10))  # hello
            return 101
    except websockets.exceptions.InvalidStatus as exc:
        return exc.response.status_code


def refusals_logged(backends: list[Any], address: str) -> int:
    """Refused handshakes the backends logged under `address` (parley.security's lines)."""
    line = re.compile(rf"refused .*WebSocket handshake .*from {re.escape(address)}:")
    return sum(len(line.findall(b.log_path.read_text(errors="replace"))) for b in backends)


async def test_the_per_address_limits_count_clients_not_nginx(cluster: Any) -> None:
    # Two refused handshakes per address per process; two connections per address per process.
    backends, proxy = cluster(PARLEY_HANDSHAKES_PER_IP_PER_MIN="2", PARLEY_MAX_CONNECTIONS_PER_IP="2")
    _, token = await make_user_token("limited")
    auth = {"Authorization": f"Bearer {token}"}

    # Handshakes without credentials from 127.0.0.2: each is refused (403) and, until the
    # address's budget is spent on the backend that got it, logged under 127.0.0.2 — the client,
    # not nginx's 127.0.0.1. Ten of them spend the budget on all three backends.
    assert {await handshake(proxy.ws_url, "127.0.0.2") for _ in range(10)} == {403}
    spent = refusals_logged(backends, "127.0.0.2")
    assert 0 < spent <= 6
    assert refusals_logged(backends, "127.0.0.1") == 0
    # Spent: refused again before any work (not even logged) …
    assert {await handshake(proxy.ws_url, "127.0.0.2") for _ in range(3)} == {403}
    assert refusals_logged(backends, "127.0.0.2") == spent
    # … while 127.0.0.3 has its own budget, and a token still gets in from 127.0.0.2.
    assert await handshake(proxy.ws_url, "127.0.0.3") == 403
    assert refusals_logged(backends, "127.0.0.3") == 1
    assert await handshake(proxy.ws_url, "127.0.0.2", auth) == 101

    # Connections: 2 per address per process, so 6 from 127.0.0.2 through nginx, and the 7th is
    # answered 429 whichever backend gets it; 127.0.0.3 still gets in.
    held = []
    for _ in range(6):
        held.append(await websockets.connect(proxy.ws_url, additional_headers=auth, local_addr=("127.0.0.2", 0),
                                             proxy=None, open_timeout=10, ping_interval=None))
    assert [established_from_nginx(b.port) for b in backends] == [2, 2, 2]
    assert await handshake(proxy.ws_url, "127.0.0.2", auth) == 429
    assert await handshake(proxy.ws_url, "127.0.0.3", auth) == 101
    for ws in held:
        await ws.close()


async def test_tls_terminates_at_nginx_and_parley_sees_the_https_origin(cluster: Any) -> None:
    """The TLS lines of deploy/nginx.conf switched on as docs/deploy.md says (a self-signed
    certificate): a browser-like handshake over wss with Origin https://host:port gets in, because
    nginx passes Host and X-Forwarded-Proto and Parley believes them from loopback; the same
    Origin straight at a backend (plain ws) is refused."""
    backends, proxy = cluster(count=1, tls=True)
    _, token = await make_user_token("tls")
    assert proxy.certificate is not None
    context = ssl.create_default_context(cafile=str(proxy.certificate))
    headers = {"Authorization": f"Bearer {token}", "Origin": proxy.http_url}
    assert proxy.http_url.startswith("https://")
    async with websockets.connect(proxy.ws_url, ssl=context, additional_headers=headers, proxy=None,
                                  open_timeout=10) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert hello["type"] == "hello" and hello["user"]["username"] == "tls"
    direct = backends[0].ws_url
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(direct, additional_headers={**headers, "Host": f"127.0.0.1:{proxy.port}"},
                                      proxy=None, open_timeout=10):
            pass
    assert refused.value.response.status_code == 403

    def healthz() -> int:
        with urllib.request.urlopen(proxy.http_url + "/healthz", context=context, timeout=10) as response:
            return int(response.status)

    assert await asyncio.to_thread(healthz) == 200


def test_nginx_checks_the_shipped_file_as_written(needs_nginx: None, tmp_path: Path) -> None:
    """The file as an operator installs it (paths under /etc, /run, /var/log) passes `nginx -t`;
    only the test's rendering changes ports and paths."""
    import os
    import subprocess

    from tests.support.nginx import CONF

    if os.geteuid() != 0:
        pytest.skip("nginx -t on the shipped paths (/run, /var/log/nginx) needs root")
    out = subprocess.run([nginx_binary() or "nginx", "-t", "-c", str(CONF), "-p", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
