"""/metrics: a real server process counts a join and a send; who may read it.

The counts come from a subprocess (ServerProcess, the production launcher), so they are the
process's own, not the test's; who may read /metrics is checked through the real ASGI stack
(Django's test client sets the peer address), and once through a real server behind a proxy
that forwards the client's address (uvicorn --proxy-headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from tests.conftest import override_parley
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import RawSocket, make_room, make_user_token
from tests.support.server import ServerProcess


def fetch(server: ServerProcess, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(server.http_url + "/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db(transaction=True)
async def test_a_join_and_a_send_move_the_counters(servers: Any) -> None:
    server = servers()
    room = await make_room("metrics-room")
    _name, token = await make_user_token()
    status, before_text = await asyncio.to_thread(fetch, server)
    assert status == 200
    before = samples(before_text)
    assert value(before, "parley_open_sockets") == 0

    sock = await RawSocket.open(server.ws_url, token)
    listener = await RawSocket.open(server.ws_url, token)
    try:
        assert (await sock.request({"type": "join", "room": "metrics-room"}))["type"] == "joined"
        assert (await listener.request({"type": "join", "room": "metrics-room"}))["type"] == "joined"
        ack = await sock.request({"type": "send", "room": "metrics-room", "text": "counted", "client_id": "m-1"})
        assert ack["type"] == "ack"
        await listener.take(lambda f: f.get("type") == "message")
        # Two resumes: one that gets what it missed, one from another epoch (a page instead).
        resumed = await listener.request({"type": "join", "room": "metrics-room", "after_seq": 0,
                                          "epoch": room["epoch"]})
        assert resumed["recovered"] is True
        await listener.request({"type": "leave", "room": "metrics-room"})
        paged = await listener.request({"type": "join", "room": "metrics-room", "after_seq": 0,
                                        "epoch": "another-epoch"})
        assert paged["recovered"] is False
        status, text = await asyncio.to_thread(fetch, server)
    finally:
        await sock.close()
        await listener.close()
    assert status == 200
    after = samples(text)
    assert value(after, "parley_resumes_total", recovered="true") == 1
    assert value(after, "parley_resumes_total", recovered="false") == 1
    # Closed sockets give their count back.
    await until(server, lambda found: value(found, "parley_open_sockets") == 0, "closed sockets still counted")

    assert value(after, "parley_open_sockets") == 2
    assert value(after, "parley_joins_total") - value(before, "parley_joins_total") == 4
    assert value(after, "parley_messages_acked_total") - value(before, "parley_messages_acked_total") == 1
    assert value(after, "parley_ack_latency_seconds_count") - value(before, "parley_ack_latency_seconds_count") == 1
    assert value(after, "parley_fanout_latency_seconds_count") - value(
        before, "parley_fanout_latency_seconds_count") == 1
    assert value(after, "parley_ingest_batch_size_count") - value(before, "parley_ingest_batch_size_count") == 1
    # The message reached both sockets of the room (the presence of the second join, one).
    assert value(after, "parley_deliveries_total") - value(before, "parley_deliveries_total") >= 2
    assert value(after, "parley_broadcasts_total") > value(before, "parley_broadcasts_total")
    # Served by uvicorn's websockets-sansio: both sockets written directly, none fell back.
    assert value(after, "parley_writer_sockets_total", path="direct", reason="") == 2
    assert not any(name == "parley_writer_sockets_total" and dict(labels).get("path") == "asgi"
                   for name, labels in after)
    assert ("parley_db_queue_depth", ()) in after
    if server.redis_url:
        assert value(after, "parley_redis_up") == 1
    else:
        assert ("parley_redis_up", ()) not in after


@pytest.mark.django_db(transaction=True)
async def test_refusals_are_counted_by_limit(servers: Any) -> None:
    server = servers(extra_env={"PARLEY_MESSAGES_PER_SEC": "0.001", "PARLEY_MESSAGES_BURST": "1"})
    await make_room("limited")
    _name, token = await make_user_token()
    sock = await RawSocket.open(server.ws_url, token)
    try:
        await sock.request({"type": "join", "room": "limited"})
        assert (await sock.request({"type": "send", "room": "limited", "text": "a", "client_id": "a"}))["type"] == "ack"
        refused = await sock.request({"type": "send", "room": "limited", "text": "b", "client_id": "b"})
        assert refused["type"] == "error" and refused["code"] == "rate_limited"
    finally:
        await sock.close()
    found = samples((await asyncio.to_thread(fetch, server))[1])
    assert value(found, "parley_rate_limited_total", limit="messages") == 1


def test_resumes_and_gap_fills_are_declared() -> None:
    """Counters with labels appear once a label is used; their HELP is there from the start."""
    text = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    for name in ("parley_resumes", "parley_gap_fills", "parley_slow_reader_closes", "parley_rate_limited"):
        assert f"# HELP {name}_total " in text


def test_publishes_redis_did_not_take_are_counted() -> None:
    """The hub counts in a plain integer (parley.realtime.hub.stats); a scrape copies it."""
    from parley.realtime import hub

    def dropped() -> float:
        text = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
        return samples(text).get(("parley_redis_publishes_dropped_total", ()), 0.0)

    before = dropped()
    hub.stats.dropped_publishes += 3
    assert dropped() == before + 3


# --- who may read /metrics ---------------------------------------------------------------------


def test_loopback_may_read_other_addresses_may_not() -> None:
    client = Client()
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.5")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert b"parley_" not in refused.content


@override_parley(METRICS_ALLOWED_IPS=["203.0.113.0/24", "2001:db8::1"])
def test_the_allow_list_lets_its_networks_in() -> None:
    client = Client()
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.5").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="2001:db8::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="198.51.100.7").status_code == 403


@override_parley(METRICS_TOKEN="metrics-secret-123")
@pytest.mark.django_db
def test_with_a_token_only_the_token_counts() -> None:
    client = Client()
    # Loopback is no longer enough, and the token is not an API token (no 401 invalid_token).
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer wrong").status_code in (401, 403)
    ok = client.get("/metrics", REMOTE_ADDR="203.0.113.5", HTTP_AUTHORIZATION="Bearer metrics-secret-123")
    assert ok.status_code == 200 and b"parley_open_sockets" in ok.content
    assert ok["Content-Type"].startswith("text/plain")
    # The metrics token authenticates nobody on the API.
    api = client.get("/api/me", HTTP_AUTHORIZATION="Bearer metrics-secret-123")
    assert api.status_code in (401, 403)


@pytest.mark.django_db(transaction=True)
def test_behind_a_proxy_the_forwarded_client_is_checked(servers: Any) -> None:
    """The standalone server trusts X-Forwarded-For from a proxy on loopback (config/serve.py's
    defaults, --proxy-headers): a proxy on the same machine does not make every client "loopback"."""
    server = servers()
    assert fetch(server)[0] == 200  # the proxy's own request
    assert fetch(server, {"X-Forwarded-For": "203.0.113.5"})[0] == 403


def sockets_by_pid(directory: Any) -> dict[int, float]:
    """parley_open_sockets per process, from each process's own gauge file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    for path in directory.glob("gauge_livesum_*.db"):
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in metric.samples:
                if sample.name == "parley_open_sockets":
                    out[int(path.stem.rsplit("_", 1)[-1])] = sample.value
    return out


async def until(server: ServerProcess, check: Any, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check(samples((await asyncio.to_thread(fetch, server))[1])):
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)


@pytest.mark.django_db(transaction=True)
async def test_several_workers_answer_for_all_of_them(servers: Any, tmp_path: Any) -> None:
    """uvicorn --workers 2 with PROMETHEUS_MULTIPROC_DIR: whichever worker answers a scrape, the
    answer is the sum over every worker's files, so it is the same from both; and a worker that
    is gone stops being counted."""
    # (A loaded machine can take more than uvicorn's 5 s to start a worker: it would be replaced.)
    server = servers(server_args=["--workers", "2", "--timeout-worker-healthcheck", "60"],
                     extra_env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    await make_room("workers")
    _name, token = await make_user_token()
    socks = [await RawSocket.open(server.ws_url, token) for _ in range(6)]
    try:
        for sock in socks:
            assert (await sock.request({"type": "join", "room": "workers"}))["type"] == "joined"
        await socks[0].request({"type": "send", "room": "workers", "text": "to all", "client_id": "w-1"})
        for _ in range(8):  # scrapes reach either worker
            found = samples((await asyncio.to_thread(fetch, server))[1])
            assert value(found, "parley_open_sockets") == 6
            assert value(found, "parley_joins_total") == 6
            assert value(found, "parley_messages_acked_total") == 1
        # The engine's counters reach the shared files within a sync interval of each worker.
        await until(server, lambda found: value(found, "parley_writer_sockets_total", path="direct", reason="") >= 6,
                    "the workers' engine counters never arrived")

        # A worker killed with its sockets: they are no longer counted (its gauge file is dropped).
        pid, held = next((pid, n) for pid, n in sockets_by_pid(tmp_path).items() if n and pid != server.pid)
        os.kill(pid, signal.SIGKILL)
        await until(server, lambda found: value(found, "parley_open_sockets") == 6 - held,
                    f"the killed worker's {held} sockets are still counted")
    finally:
        for sock in socks:
            with contextlib.suppress(ConnectionClosed):
                await sock.close()
