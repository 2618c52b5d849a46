"""Parley's own settings (config.settings) plus the channel layer of the parley-layer baseline
(parley_layer.py): the lean in-memory layer (lean_layer.py), or with REDIS_URL channels_redis's,
its connection pool sized as Parley's own Redis clients are."""

from config.env import env_str
from config.settings import *  # noqa: F403
from config.settings import REDIS_MAX_CONNECTIONS, REDIS_URL
from parley.realtime.redis_options import redis_client_options

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "max_connections": REDIS_MAX_CONNECTIONS,
                           **redis_client_options()}],
                "prefix": env_str("PARLEY_REDIS_PREFIX", "parley"),
                "capacity": 1000,
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "bench.baselines.lean_layer.LeanInMemoryChannelLayer"}}
