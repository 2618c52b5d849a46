"""Behind a reverse proxy: whose X-Forwarded-For the server believes, and what it counts by.

config/serve.py runs uvicorn with `--proxy-headers --forwarded-allow-ips $FORWARDED_ALLOW_IPS`
(default: loopback, a proxy on the same machine). The app's scope["client"] (the handshake limit,
login throttling, the logs) and parley/edge.py's connection count both take the client from a
trusted peer's X-Forwarded-For, read the same way; an untrusted peer's header is ignored.
tests/test_deploy_nginx.py shows the same through nginx.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from config import serve
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def server_with(tmp_path: Any) -> Iterator[Any]:
    made: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        server = ServerProcess(data_dir=tmp_path / f"s{len(made)}",
                               extra_env={"PARLEY_MAX_CONNECTIONS_PER_IP": "2", **env})
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()


async def open_socket(server: ServerProcess, forwarded_for: str | None, token: str | None) -> Any:
    headers = {}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    ws = await websockets.connect(server.ws_url, additional_headers=headers, proxy=None, open_timeout=5,
                                  ping_interval=None)
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"
    return ws


async def test_a_trusted_proxys_clients_are_counted_by_x_forwarded_for(server_with: Any) -> None:
    server = server_with()  # FORWARDED_ALLOW_IPS unset: loopback is trusted
    token = server.create_token("ada")
    held = [await open_socket(server, "203.0.113.5", token) for _ in range(2)]
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await open_socket(server, "203.0.113.5", token)
    assert refused.value.response.status_code == 429
    assert json.loads(refused.value.response.body)["error"]["code"] == "too_many_connections"
    # Another client behind the same proxy, and a client hopping through two proxies (the nearest
    # untrusted hop counts: the first entry is whatever the client wrote).
    held.append(await open_socket(server, "203.0.113.6", token))
    held.append(await open_socket(server, "203.0.113.5, 203.0.113.7", token))
    # One proxy connection's slot follows its request: closing a socket frees it.
    await held[0].close()
    await asyncio.sleep(0.2)
    held.append(await open_socket(server, "203.0.113.5", token))
    for ws in held:
        await ws.close()


async def test_an_untrusted_peers_x_forwarded_for_is_ignored(server_with: Any) -> None:
    server = server_with(FORWARDED_ALLOW_IPS="192.0.2.1")  # a proxy elsewhere: not us
    token = server.create_token("ada")
    held = [await open_socket(server, f"203.0.113.{i}", token) for i in (1, 2)]
    # Counted as 127.0.0.1 whatever the header says: the third is closed before a byte is read.
    with pytest.raises((websockets.exceptions.InvalidMessage, ConnectionError, EOFError)):
        await open_socket(server, "203.0.113.3", token)
    for ws in held:
        await ws.close()


def logged_refusal_addresses(server: ServerProcess) -> list[str]:
    return re.findall(r"refused .*WebSocket handshake .*from ([0-9.]+):", server.log_path.read_text())


async def refused_handshake(server: ServerProcess, forwarded_for: str) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await open_socket(server, forwarded_for, None)
    assert refused.value.response.status_code == 403


async def test_the_app_sees_the_forwarded_client_only_from_a_trusted_peer(server_with: Any) -> None:
    trusting = server_with()
    await refused_handshake(trusting, "198.51.100.4")
    assert logged_refusal_addresses(trusting) == ["198.51.100.4"]
    distrusting = server_with(FORWARDED_ALLOW_IPS="192.0.2.1")
    await refused_handshake(distrusting, "198.51.100.4")
    assert logged_refusal_addresses(distrusting) == ["127.0.0.1"]
    off = server_with(PROXY_HEADERS="0")
    await refused_handshake(off, "198.51.100.4")
    assert logged_refusal_addresses(off) == ["127.0.0.1"]


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1,::1"]),
    ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, ["--proxy-headers", "--forwarded-allow-ips", "10.0.0.0/8"]),
    ({"PROXY_HEADERS": "0"}, ["--no-proxy-headers", "--forwarded-allow-ips", "127.0.0.1,::1"]),
])
def test_the_proxy_flags_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                   expected: list[str]) -> None:
    for name in ("FORWARDED_ALLOW_IPS", "PROXY_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = serve.production_args()
    at = next(i for i, a in enumerate(args) if a.endswith("proxy-headers"))
    assert args[at:at + 3] == expected
