"""/readyz on a real server process whose PostgreSQL and Redis are stopped and started again.

Both are the test's own (tests/support/server.py: PostgresProcess, RedisProcess), never the
shared ones. /healthz says "alive" throughout: only /readyz follows the dependencies.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fixtures import require_redis_server
from tests.support.server import PostgresProcess, RedisProcess, ServerProcess


def get(server: ServerProcess, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def stack() -> Iterator[tuple[ServerProcess, PostgresProcess, RedisProcess]]:
    if not PostgresProcess.available():
        pytest.skip("SKIPPED LOUDLY: needs PostgreSQL 15's initdb/pg_ctl for a private, stoppable server")
    require_redis_server()
    pg = PostgresProcess().start()
    redis = RedisProcess().start()
    server = ServerProcess(database_url=pg.url, redis_url=redis.url)
    try:
        server.migrate()  # a fresh database: the server's tables first
        server.start()
        yield server, pg, redis
    finally:
        server.cleanup()
        redis.stop()
        pg.cleanup()


def test_readyz_follows_the_database_and_redis(stack: tuple[ServerProcess, PostgresProcess, RedisProcess]) -> None:
    server, pg, redis = stack
    assert get(server, "/readyz") == (200, {"ok": True, "checks": {"database": "ok", "redis": "ok"}})

    redis.kill()
    status, body = get(server, "/readyz")
    assert status == 503 and body["ok"] is False
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("redis unreachable")
    assert get(server, "/healthz") == (200, {"ok": True})  # alive all the same

    redis.start()
    assert get(server, "/readyz")[0] == 200

    pg.stop()
    status, body = get(server, "/readyz")
    assert status == 503 and body["ok"] is False
    assert body["checks"]["database"].startswith("database unreachable")
    assert body["checks"]["redis"] == "ok"
    assert get(server, "/healthz") == (200, {"ok": True})

    pg.start()
    assert get(server, "/readyz") == (200, {"ok": True, "checks": {"database": "ok", "redis": "ok"}})


def test_readyz_without_redis_checks_the_database_only(tmp_path: Any) -> None:
    with ServerProcess() as server:  # the embedded default: an SQLite file, no REDIS_URL
        assert get(server, "/readyz") == (200, {"ok": True, "checks": {"database": "ok"}})
