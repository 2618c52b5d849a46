"""Cluster-wide counters in Redis, for the limits that count per user or per address.

With REDIS_URL set, every server process counts in the same Redis keys, so N processes behind a
balancer allow the setting once, not N times (docs/security.md says which limits):

- token buckets (parley.limits.BucketMap with a `shared` kind: the per-user message rate, the
  per-address and per-user handshake rates): one hash per key, refilled and taken by one Lua
  script (BUCKET_LUA), so a check is a single EVALSHA round trip — the message rate's is on
  every send, and that one round trip is its whole cost;
- open sockets per user (SLOTS_LUA): one sorted set per user of socket ids, each scored by the
  Redis time at which it stops counting. Each process re-scores its own sockets every third of
  PARLEY_HEARTBEAT_INTERVAL_SECS, so the sockets of a process that died without closing them
  (SIGKILL, a lost machine) stop counting at most one heartbeat interval after it died, and a
  user is never locked out for longer.

Without REDIS_URL nothing here runs: the counters stay in process memory (the embedded default).

Redis is an accelerator here, never a gate: when it does not answer (refused, or no reply within
TIMEOUT_SECS), the callers fall back to their per-process counters — the limits then hold per
process, as without Redis — and a warning is logged at most every WARN_INTERVAL_SECS. Redis is
tried again RETRY_SECS after a failure, so a send does not wait on a dead server each time, and
the counting is back in Redis as soon as it answers (the sockets' entries are re-added by the
next refresh round: a restarted Redis has lost them).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from redis.exceptions import RedisError

from parley.conf import parley_settings
from parley.realtime.loops import per_loop
from parley.realtime.tasks import spawn

log = logging.getLogger("parley.limits")

TIMEOUT_SECS = 0.5  # connect and reply timeout of a counter's Redis call; then per process
RETRY_SECS = 1.0  # after a failure, per-process counters for this long before Redis is tried again
WARN_INTERVAL_SECS = 30.0  # at most one "Redis unavailable" warning this often

# KEYS[1]: the bucket's hash. ARGV: rate (tokens/s), burst, cost (0: only say how long until one
# token is there, taking nothing). Returns the seconds to wait as a string (Lua numbers become
# integers on the way out); "0": allowed (and taken), "-1": never (rate 0 and empty).
BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local need = cost
if cost == 0 then need = 1 end
local wait = 0
if tokens >= need then
  if cost == 0 then return '0' end
  tokens = tokens - cost
elseif rate > 0 then
  wait = (need - tokens) / rate
else
  wait = -1
end
if cost == 0 then return tostring(wait) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 's', tostring(now))
local ttl = 3600000
if rate > 0 then ttl = math.ceil(burst / rate * 1000) + 1000 end
redis.call('PEXPIRE', KEYS[1], ttl)
return tostring(wait)
"""

# KEYS[1]: the user's sorted set of sockets (score: Redis time at which the entry stops counting).
# ARGV: limit, ttl (s), socket id(s). limit >= 0: admit the one socket if fewer than `limit`
# others count (1) or refuse (0); limit < 0: re-score every socket given (a refresh round).
SLOTS_LUA = """
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if limit >= 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
return 1
"""


def enabled() -> bool:
    """Whether the counters are cluster-wide (REDIS_URL is set)."""
    return bool(parley_settings.REDIS_URL)


def _key(kind: str, key: object) -> str:
    return f"{parley_settings.REDIS_PREFIX}:limit:{kind}:{key}"


def slot_ttl_secs() -> float:
    """How long a socket's entry counts without a refresh: a process that died stops counting
    its sockets at most this long after (one heartbeat interval)."""
    return max(1.0, float(parley_settings.HEARTBEAT_INTERVAL_SECS))


# --- Redis health: shared by the event loop's and the worker threads' clients ------------------

class _Health:
    def __init__(self) -> None:
        self.down_until = 0.0
        self.down = False
        self.warned_at = -WARN_INTERVAL_SECS

    def usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        self.down_until = now + RETRY_SECS
        self.down = True
        if now - self.warned_at >= WARN_INTERVAL_SECS:
            self.warned_at = now
            log.warning("Redis unavailable for the cluster-wide limits (%s): counting per process "
                        "until it answers", type(error).__name__)

    def answered(self) -> None:
        if self.down:
            self.down = False
            log.warning("Redis answers again: the limits are cluster-wide again")


health = _Health()


def _client_options() -> dict[str, Any]:
    """No retries, short timeouts: a counter that cannot ask Redis at once counts per process."""
    return {"socket_timeout": TIMEOUT_SECS, "socket_connect_timeout": TIMEOUT_SECS,
            "health_check_interval": 15}


class _AsyncCounters:
    """The running loop's Redis client, scripts and the sockets it keeps counted."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.redis = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **_client_options())
        self.bucket = self.redis.register_script(BUCKET_LUA)
        self.slots = self.redis.register_script(SLOTS_LUA)
        self.sockets: dict[int, set[str]] = {}  # user id → ids of this loop's counted sockets
        self.refresher: asyncio.Future[None] | None = None

    def ensure_refreshing(self) -> None:
        if self.refresher is None or self.refresher.done():
            self.refresher = spawn(self._refresh())

    async def _refresh(self) -> None:
        """Re-score this loop's sockets every third of their ttl while it has any (re-adding
        them where Redis lost them), in one pipelined round trip per round."""
        while self.sockets:
            ttl = slot_ttl_secs()
            await asyncio.sleep(ttl / 3)
            if not self.sockets or not health.usable():
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for user_id, ids in list(self.sockets.items()):
                        await self.slots(keys=[_key("sockets", user_id)], args=[-1, ttl, *ids], client=pipe)
                    await pipe.execute()
                health.answered()
            except (RedisError, OSError) as error:
                health.failed(error)


@per_loop
def _counters_for_loop() -> dict[str, _AsyncCounters]:
    return {}


def _counters() -> _AsyncCounters:
    url = parley_settings.REDIS_URL
    by_url = _counters_for_loop()
    counters = by_url.get(url)
    if counters is None:
        counters = by_url[url] = _AsyncCounters(url)
    return counters


def _wait(raw: Any) -> float:
    wait = float(raw)
    return float("inf") if wait < 0 else wait


async def take(kind: str, key: object, rate: float, burst: float, cost: float = 1.0) -> float | None:
    """Take `cost` tokens from the cluster-wide bucket `kind`/`key` (cost 0: take nothing, only
    ask): 0.0 if allowed, else the seconds until it would be; None when Redis does not answer
    (the caller counts per process then). One round trip."""
    if not health.usable():
        return None
    counters = _counters()
    try:
        raw = await counters.bucket(keys=[_key(kind, key)], args=[rate, burst, cost])
    except (RedisError, OSError) as error:
        health.failed(error)
        return None
    health.answered()
    return _wait(raw)


# --- the same bucket from synchronous code in a worker thread (the HTTP API's views) -----------

_sync_lock = threading.Lock()
_sync_clients: dict[str, Any] = {}


def _sync_script() -> Any:
    url = parley_settings.REDIS_URL
    with _sync_lock:
        script = _sync_clients.get(url)
        if script is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **_client_options())
            script = _sync_clients[url] = client.register_script(BUCKET_LUA)
    return script


def take_blocking(kind: str, key: object, rate: float, burst: float, cost: float = 1.0) -> float | None:
    """take() for synchronous code off the event loop (it blocks for the round trip)."""
    if not health.usable():
        return None
    try:
        raw = _sync_script()(keys=[_key(kind, key)], args=[rate, burst, cost])
    except (RedisError, OSError) as error:
        health.failed(error)
        return None
    health.answered()
    return _wait(raw)


# --- open sockets per user ------------------------------------------------------------------

async def admit_socket(user_id: int, socket_id: str, limit: int) -> bool | None:
    """Count the socket among its user's if fewer than `limit` count cluster-wide (True), else
    False; None when Redis does not answer (the caller's per-process count decides). Whatever
    the answer, a True or None socket is kept counted (refreshed) until release_socket()."""
    counters = _counters()
    admitted: bool | None = None
    if health.usable():
        try:
            admitted = bool(await counters.slots(keys=[_key("sockets", user_id)],
                                                 args=[limit, slot_ttl_secs(), socket_id]))
            health.answered()
        except (RedisError, OSError) as error:
            health.failed(error)
    if admitted is not False:
        counters.sockets.setdefault(user_id, set()).add(socket_id)
        counters.ensure_refreshing()
    return admitted


def release_socket(user_id: int, socket_id: str) -> None:
    """The socket closed: it stops counting at once (in a task: callers are synchronous)."""
    counters = _counters()
    ids = counters.sockets.get(user_id)
    if ids is not None:
        ids.discard(socket_id)
        if not ids:
            del counters.sockets[user_id]
    if not counters.sockets and counters.refresher is not None:
        counters.refresher.cancel()  # nothing left to refresh: no task sleeping in an idle process
        counters.refresher = None  # (the next admitted socket starts another at once)
    if health.usable():
        spawn(_forget(counters, user_id, socket_id))


async def _forget(counters: _AsyncCounters, user_id: int, socket_id: str) -> None:
    try:
        await counters.redis.zrem(_key("sockets", user_id), socket_id)
    except (RedisError, OSError) as error:
        health.failed(error)  # its entry expires by itself within slot_ttl_secs()
