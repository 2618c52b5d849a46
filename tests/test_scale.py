"""Many concurrent sockets — and why the Redis pool is sized.

redis-py 8's asyncio pool refuses the 101st concurrent connection (MaxConnectionsError), and a
join storm's presence calls each hold one; Parley sizes its pools with
PARLEY["REDIS_MAX_CONNECTIONS"]. The first test reproduces the failure with the default pool, the
second runs 110 sockets through Parley's real settings.
"""

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from tests.conftest import make_room, make_user, require_redis

SOCKETS = 110  # past redis-py's default pool of 100


async def test_default_redis_pool_fails_past_100_concurrent_calls(parley_settings):
    require_redis()
    key = f"{parley_settings.REDIS_PREFIX}:scale-{uuid.uuid4().hex[:8]}"

    async def blocked_calls(client):
        # BLPOP on an empty list holds its connection for the whole timeout.
        calls = [asyncio.ensure_future(client.blpop([key], timeout=1)) for _ in range(SOCKETS)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await client.aclose()
        return [r for r in results if isinstance(r, BaseException)]

    failures = await blocked_calls(aioredis.Redis.from_url(parley_settings.REDIS_URL))
    assert failures and all(type(f).__name__ == "MaxConnectionsError" for f in failures)
    assert await blocked_calls(aioredis.Redis.from_url(parley_settings.REDIS_URL, max_connections=1000)) == []


# Slow: ~60 s on this 2-core machine, on every pass. It runs in both Python 3.11 passes; the
# 3.13 pass (scripts/test: not slow) has the pool test above and the write-path files.
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_110_sockets_in_one_room(connect):
    await make_room("lobby")
    users = [await make_user(f"u{i}") for i in range(SOCKETS)]
    clients = await asyncio.gather(*(connect(user) for user in users))
    # 110 joins at once, each announcing presence to the others: on a slow 2-core machine
    # with Redis the last reply took 1.3-2.1 s (3 s was the default timeout, and a CI run
    # hit it). This test is about 110 sockets working, not how fast: no deadline worth
    # asserting here (the speed is the benchmark's, scripts/bench).
    await asyncio.gather(*(client.join("lobby", timeout=30) for client in clients))
    await clients[0].say("lobby", "hello, everyone")
    received = await asyncio.gather(*(client.messages(1, timeout=10) for client in clients))
    assert all(got[0]["text"] == "hello, everyone" and got[0]["seq"] == 1 for got in received)
