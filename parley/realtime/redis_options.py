"""How Parley's Redis clients ride out a Redis restart.

redis-py's default retries three times within milliseconds: far shorter than a restart, so every
pooled connection failed at once and took the sockets of a whole process down with it. These
options retry with jittered backoff for several seconds and check idle connections' health.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

RETRIES = 10  # with the backoff below: about 5 s of trying before an error surfaces
HEALTH_CHECK_INTERVAL_SECS = 15


def redis_client_options() -> dict[str, Any]:
    """Keyword arguments for redis.asyncio clients and pools."""
    return {
        "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), RETRIES),
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECS,
        "socket_keepalive": True,
    }
