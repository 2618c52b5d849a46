"""Requests: a frame with a `ref`, and the future its reply resolves.

The server answers every request (docs/protocol.md §2), in order, with the request's `ref`.
A reply that does not come within `timeout` seconds *of the frame leaving* means the connection
is dead (a hung server, a black-holed path): the connection is aborted, and every request still
waiting on it fails with ConnectionLost, which the callers answer by retrying on the next
connection. The clock starts when the writer hands the frame to the socket, not when it is
queued, so frames held back by pacing (parley_client.pacing) are not mistaken for lost ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parley_client.errors import ConnectionLost
from parley_client.transport import Connection, retrieve

log = logging.getLogger("parley_client")


@dataclass(eq=False)
class _Waiting:
    future: asyncio.Future[dict[str, Any]]
    timer: asyncio.TimerHandle | None = None


class Requests:
    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self._refs = itertools.count(1)
        self._waiting: dict[int, dict[str, _Waiting]] = {}  # connection id -> ref -> waiting

    def new_ref(self) -> str:
        return f"r{next(self._refs)}"

    async def request(self, conn: Connection, frame: dict[str, Any],
                      on_written: Callable[[], None] | None = None) -> dict[str, Any]:
        """Send `frame` with a new ref on `conn`; the reply (an `error` frame included).

        Raises ConnectionLost if the connection closes first or the reply is late. The future
        survives the caller's cancellation, so a late reply still finds its entry."""
        if conn.closed:
            raise ConnectionLost()
        ref = self.new_ref()
        waiting = _Waiting(asyncio.get_running_loop().create_future())
        waiting.future.add_done_callback(retrieve)
        self._waiting.setdefault(conn.id, {})[ref] = waiting

        def written() -> None:
            waiting.timer = asyncio.get_running_loop().call_later(self.timeout, self._late, conn)
            if on_written is not None:
                on_written()

        conn.send({**frame, "ref": ref}, on_written=written)
        return await asyncio.shield(waiting.future)

    def _late(self, conn: Connection) -> None:
        if not conn.closed:
            log.warning("parley: no reply within %.0f s; dropping the connection", self.timeout)
            conn.abort()

    def resolve(self, conn: Connection, frame: dict[str, Any]) -> bool:
        """Hand a frame with a ref to the request waiting for it; False if none is."""
        ref = frame.get("ref")
        waiting = self._waiting.get(conn.id, {}).pop(ref, None) if isinstance(ref, str) else None
        if waiting is None:
            return False
        if waiting.timer is not None:
            waiting.timer.cancel()
        if not waiting.future.done():
            waiting.future.set_result(frame)
        return True

    def connection_lost(self, conn: Connection) -> None:
        for waiting in self._waiting.pop(conn.id, {}).values():
            if waiting.timer is not None:
                waiting.timer.cancel()
            if not waiting.future.done():
                waiting.future.set_exception(ConnectionLost())
