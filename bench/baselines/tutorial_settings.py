"""Tiny Django settings for the Channels-tutorial baseline (never touches Parley's settings).

BENCH_LAYER=memory (default) → channels.layers.InMemoryChannelLayer;
BENCH_LAYER=redis_pubsub → channels_redis.pubsub.RedisPubSubChannelLayer at REDIS_URL with
the unique prefix BENCH_REDIS_PREFIX.
"""

import os

SECRET_KEY = "bench-tutorial-baseline-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
DATABASES: dict = {}
USE_TZ = True
ASGI_APPLICATION = "bench.baselines.tutorial_asgi.application"

_layer = os.environ.get("BENCH_LAYER", "memory")
if _layer == "memory":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
elif _layer == "redis_pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")],
                "prefix": os.environ.get("BENCH_REDIS_PREFIX", "bench-tutorial"),
            },
        }
    }
else:
    raise RuntimeError(f"BENCH_LAYER={_layer!r}: use memory or redis_pubsub")
