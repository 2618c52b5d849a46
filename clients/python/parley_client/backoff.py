"""Retry delays: reconnects (exponential backoff with full jitter, capped) and refused requests.

delay(n) = uniform(0, min(cap, base * factor**n)). Full jitter (AWS architecture blog,
"Exponential Backoff And Jitter") spreads a herd of clients that lost the same server over the
whole window instead of letting them return in synchronised waves.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any


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



def retry_delay(frame: dict[str, Any], attempt: int) -> float:
    """How long to wait before retrying a request the server refused with `frame`: its
    `retry_after_ms` if it gave one, else a jittered delay that grows with the attempt (≤ 5 s)."""
    hint = frame.get("retry_after_ms")
    if isinstance(hint, int | float) and hint > 0:
        return float(hint) / 1000
    return random.random() * min(5.0, 0.1 * 2.0 ** min(attempt, 10))
