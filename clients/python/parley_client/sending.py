"""Sending: the outbox's way onto the wire, paced by the server's message rate.

Every `send` becomes an Outbox entry (parley_client.outbox) and is written by the connection's
writer when three things hold: the entry's room has its `join` written on this connection (the
server handles a socket's frames in order, so a send may follow its join without waiting for the
`joined`); a retry delay, if the server asked for one, has passed; and the message bucket
(hello.limits.messages_per_sec/messages_burst, parley_client.pacing) has a token. The writer
pulls entries (`FrameSource`), so the token is taken when the frame leaves; taken when the entry
was queued, a send held back by frame pacing could reach the server bunched with later ones.

An entry is retransmitted on every new connection until its `ack` arrives (same client_id, so
the server stores it once); a retryable refusal is retried after the server's `retry_after_ms`
or a jittered delay; a permanent one fails the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from parley_client.backoff import retry_delay
from parley_client.errors import ParleyError, SendFailed
from parley_client.outbox import Outbox, OutboxEntry
from parley_client.pacing import TokenBucket, bucket_from_limits
from parley_client.stats import ClientStats
from parley_client.transport import Connection, encode

# Send errors that no retry can fix: the request itself is wrong. Everything else (commit_failed,
# internal_error, not_joined during a rejoin, rate limits with retry_after_ms) is retried.
PERMANENT_SEND_ERRORS = frozenset({
    "text_empty", "text_too_long", "bad_field", "missing_field", "room_not_found",
    "frame_too_large", "bad_frame", "bad_json", "unknown_type", "forbidden",
    "message_not_found", "message_deleted",  # reply_to names no message, or a tombstone
    "room_archived",  # read-only until an owner unarchives it (docs/protocol.md §12)
})


class Sender:
    def __init__(self, *, stats: ClientStats, pace: bool, new_ref: Callable[[], str],
                 may_send: Callable[[Connection, str], bool],
                 current: Callable[[], Connection | None],
                 on_failed: Callable[[SendFailed], None] | None = None) -> None:
        self.outbox = Outbox(on_failed)
        self.stats = stats
        self.pace = pace
        self._new_ref = new_ref
        self._may_send = may_send      # room sync: has this room's join left on this connection?
        self._current = current
        self._bucket: TokenBucket | None = None
        self._sent: dict[int, dict[str, str]] = {}  # connection id -> ref -> client_id

    def connected(self, conn: Connection) -> None:
        # Per user on the server (all their sockets in one process); a client with one socket
        # per user matches it. A new connection keeps no tokens of the old one's: refilled full,
        # as the server's bucket has most likely refilled during the reconnect.
        self._bucket = bucket_from_limits(conn.limits, "messages_per_sec", "messages_burst") if self.pace else None

    def connection_lost(self, conn: Connection) -> None:
        self._sent.pop(conn.id, None)

    async def send(self, room: str, text: str, client_id: str | None,
                   timeout: float | None, reply_to: int | None = None,
                   attachments: tuple[int, ...] = ()) -> dict[str, Any]:
        entry = self.outbox.add(room, text, client_id, reply_to, attachments)
        conn = self._current()
        if conn is not None:
            conn.wake()
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), timeout)
        except TimeoutError:
            self.outbox.forget(entry.client_id)
            raise

    # --- the writer's frame source ----------------------------------------------------------

    def _next(self, conn: Connection, now: float) -> tuple[OutboxEntry | None, float | None]:
        """(the oldest entry that may leave now, else None; the soonest a held-back one may)."""
        soonest: float | None = None
        for entry in self.outbox.pending():
            if entry.sent_on == conn.id or not self._may_send(conn, entry.room):
                continue
            if entry.not_before > now:
                wait = entry.not_before - now
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            return entry, None
        return None, soonest

    def ready(self, conn: Connection) -> float | None:
        entry, soonest = self._next(conn, time.monotonic())
        if entry is None:
            return soonest
        return self._bucket.wait() if self._bucket is not None else 0.0

    def pull(self, conn: Connection) -> str | None:
        entry, _ = self._next(conn, time.monotonic())
        if entry is None or (self._bucket is not None and self._bucket.take() > 0):
            return None
        entry.sent_on = conn.id
        entry.attempts += 1
        if entry.attempts > 1:
            self.stats.send_retries += 1
        ref = self._new_ref()
        self._sent.setdefault(conn.id, {})[ref] = entry.client_id
        return encode(entry.frame(ref))

    # --- replies ----------------------------------------------------------------------------

    def on_ack(self, conn: Connection, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        if isinstance(ref, str):
            self._sent.get(conn.id, {}).pop(ref, None)
        client_id = frame.get("client_id")
        if isinstance(client_id, str):
            self.outbox.acked(client_id, frame)

    def on_error(self, conn: Connection, frame: dict[str, Any]) -> bool:
        """Take an `error` frame if it answers a send; False if it does not."""
        ref = frame.get("ref")
        client_id = self._sent.get(conn.id, {}).pop(ref, None) if isinstance(ref, str) else None
        if client_id is None:
            return False
        entry = self.outbox.get(client_id)
        if entry is None:
            return True
        code = frame.get("code", "")
        entry.errors.append(code)
        if code in PERMANENT_SEND_ERRORS:
            self.outbox.fail(client_id, ParleyError(code, frame.get("message", ""), frame))
            return True
        self.retry_later(conn, entry, retry_delay(frame, len(entry.errors)))
        return True

    def retry_later(self, conn: Connection, entry: OutboxEntry, delay: float) -> None:
        entry.sent_on = None
        entry.not_before = time.monotonic() + delay
        asyncio.get_running_loop().call_later(delay, conn.wake)

    def requeue_room(self, conn: Connection, room: str) -> None:
        """The room's join on this connection failed: what it carried for the room goes again
        after the next join."""
        for entry in self.outbox.pending():
            if entry.room == room and entry.sent_on == conn.id:
                entry.sent_on = None

    def fail_room(self, room: str, exc: BaseException) -> None:
        for entry in self.outbox.pending():
            if entry.room == room:
                self.outbox.fail(entry.client_id, exc)

    def fail_all(self, exc: BaseException) -> None:
        self.outbox.fail_all(exc)
