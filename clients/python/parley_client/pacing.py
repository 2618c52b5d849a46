"""Client-side token buckets that keep a client inside the limits the server announces.

The server counts every frame of a socket against `hello.limits.frames_per_sec`/`frames_burst`
and every `send` of a user against `messages_per_sec`/`messages_burst` (docs/protocol.md §6); a
socket that keeps going past them collects strikes and is closed with 4429. The client mirrors
both buckets and writes a frame only when its own bucket has a token, so a well-behaved client is
never refused — a reconnect that rejoins a hundred rooms included.

The mirror is conservative on purpose: the server takes its token when it *handles* the frame,
not when the client wrote it, so network jitter or a server busy with a slow join can bunch
frames the client spaced out. Holding back a share of the burst (HEADROOM_BURST) absorbs the
bunching, and a slightly lower rate (HEADROOM_RATE) lets the server's bucket refill past the
client's while the client runs at its sustained rate, so a longer stall is absorbed too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

HEADROOM_RATE = 0.9    # share of the announced rate the client uses
HEADROOM_BURST = 0.75  # share of the announced burst the client uses


class TokenBucket:
    """`rate` tokens per second, refilled up to `burst`; starts full, like the server's."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock or time.monotonic
        self.stamp = self._clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self) -> float:
        """Seconds until a token is there (0.0: now), without taking it."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be."""
        wait = self.wait()
        if wait == 0.0:
            self.tokens -= 1
        return wait


def bucket_from_limits(limits: Mapping[str, Any], rate_key: str, burst_key: str) -> TokenBucket | None:
    """The client's bucket for one of hello.limits' rate/burst pairs (None: not announced).

    A server that announces the rate but not the burst gets twice the rate as its burst."""
    rate, burst = limits.get(rate_key), limits.get(burst_key)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
        return None
    if not isinstance(burst, int | float) or isinstance(burst, bool) or burst < 1:
        burst = 2.0 * rate
    return TokenBucket(rate * HEADROOM_RATE, max(1.0, float(burst) * HEADROOM_BURST))
