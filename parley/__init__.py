"""Parley: real-time chat rooms for a Django project.

The Python API for server code lives in parley.api and is importable from here, lazily (PEP 562)
so that `INSTALLED_APPS = [..., "parley"]` imports this package before the app registry is
ready without touching models:

    import parley
    parley.post_message("lobby", "hello", author=user)
"""

from __future__ import annotations

from typing import Any

_API = frozenset({
    "post_message", "apost_message", "publish_event", "apublish_event",
    "MessageRefused", "RoomNotFound", "PostForbidden", "EventRefused", "EventNotDeliverable",
})

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        from parley import api

        return getattr(api, name)
    raise AttributeError(f"module 'parley' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
