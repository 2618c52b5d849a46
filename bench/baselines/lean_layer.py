"""Channels' InMemoryChannelLayer without its scan on every receive: the layer of the
parley-layer baseline (parley_layer.py), as Parley's embedded layer was when it had one.

Stock InMemoryChannelLayer.receive() first runs _clean_expired(), which walks every channel and
every group of the process. Every consumer keeps one receive() waiting, so each new socket paid
for a walk over all the others: a connect storm was O(sockets²). py-spy put 44% of a 5,000-client
reconnect storm there, and Parley accepted ~85 handshakes a second (docs/benchmarks.md). Expiry is
about messages left unread for `expiry` (60 s) seconds, so walking at most once per
CLEAN_INTERVAL_SECS changes nothing a client can notice.
"""

from __future__ import annotations

import time

from channels.layers import InMemoryChannelLayer

CLEAN_INTERVAL_SECS = 1.0


class LeanInMemoryChannelLayer(InMemoryChannelLayer):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._cleaned_at = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._cleaned_at < CLEAN_INTERVAL_SECS:
            return
        self._cleaned_at = now
        super()._clean_expired()
