"""One object per running event loop, for the process-wide services that hold asyncio state.

A server has one event loop, so these are singletons there; a test suite opens many loops, and
asyncio primitives and redis-py's asyncio connections belong to the loop that created them.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_loop(factory: Callable[[], T]) -> Callable[[], T]:
    """Wrap `factory` so each event loop gets (and keeps) one instance."""
    instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get() -> T:
        loop = asyncio.get_running_loop()
        instance = instances.get(loop)
        if instance is None:
            instance = instances[loop] = factory()
        return instance

    get.__doc__ = factory.__doc__
    return get
