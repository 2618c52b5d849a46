"""Reconnect delays: exponential backoff with full jitter, capped.

delay(n) = uniform(0, min(cap, base * factor**n)). Full jitter (AWS architecture blog,
"Exponential Backoff And Jitter") spreads a herd of clients that lost the same server over the
whole window instead of letting them return in synchronised waves.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable


class Backoff:
    def __init__(self, *, base: float = 0.25, cap: float = 10.0, factor: float = 2.0,
                 rng: Callable[[], float] = random.random) -> None:
        if base <= 0 or cap <= 0 or factor < 1:
            raise ValueError("base and cap must be > 0 and factor >= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempt = 0
        self._rng = rng

    def ceiling(self, attempt: int | None = None) -> float:
        """The upper bound of the delay for this attempt (0-based)."""
        n = self.attempt if attempt is None else attempt
        # Compare logarithms first, so a long outage cannot overflow a float.
        if n * math.log(self.factor) >= math.log(self.cap / self.base):
            return self.cap
        return min(self.cap, self.base * self.factor**n)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call moves one attempt further."""
        delay = self._rng() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Call after a connection that worked (hello received)."""
        self.attempt = 0


class TokenBucket:
    """Client-side pacing, so a busy client stays inside the server's message rate
    (hello.limits.messages_per_sec) instead of collecting `rate_limited` refusals."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] | None = None) -> None:
        import time

        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock or time.monotonic
        self.stamp = self._clock()

    def take(self) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
