"""The user's room list and read markers (docs/protocol.md §11), kept up to date.

A version 2 server sends the list (`rooms`, a room-state object per room) after every `hello`;
`read` frames (a marker moved by another of the user's sockets) and `room_state` frames (notify
or mute changed) update it. `ParleyClient.room_states` is the latest of each room, by slug.
`ParleyClient.read` moves a marker: it is retried across reconnects (a repeated mark changes
nothing: the server's marker only moves forward).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from parley_client.backoff import retry_delay
from parley_client.errors import ConnectionLost, ParleyError
from parley_client.requests import Requests
from parley_client.transport import Connection

ATTENTION_TYPES = frozenset({"rooms", "read", "room_state"})
RETRYABLE = frozenset({"rate_limited", "commit_failed", "internal_error"})


class Attention:
    def __init__(self, *, requests: Requests, ready: Callable[[], Awaitable[Connection]],
                 emit: Callable[[dict[str, Any]], None]) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.listed = asyncio.Event()  # set once a `rooms` list arrived
        self._requests = requests
        self._ready = ready
        self._emit = emit

    def on_frame(self, frame: dict[str, Any]) -> None:
        """A `rooms`, `read` or `room_state` frame (a reply or not): fold it into the list."""
        kind = frame.get("type")
        if kind == "rooms":
            self.states = {s["room"]["slug"]: s for s in frame.get("rooms", [])}
            self.listed.set()
        elif kind == "read":
            state = self.states.get(frame.get("room", ""))
            if state is not None:
                state.update(last_read_seq=frame["seq"], unread=frame["unread"], mentions=frame["mentions"])
        elif kind == "room_state":
            state = frame.get("state") or {}
            self.states[state["room"]["slug"]] = state
        if "ref" not in frame:
            self._emit(frame)

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send until answered (on the next connection if this one drops); ParleyError for a
        refusal that waiting cannot fix."""
        refusals = 0
        while True:
            conn = await self._ready()
            try:
                reply = await self._requests.request(conn, frame)
            except ConnectionLost:
                continue
            if reply.get("type") != "error":
                self.on_frame(reply)
                return reply
            code = reply.get("code", "error")
            if code not in RETRYABLE:
                raise ParleyError(code, reply.get("message", ""), reply)
            refusals += 1
            await asyncio.sleep(retry_delay(reply, refusals))
