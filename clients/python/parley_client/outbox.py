"""The outbox: sends that are not acked yet, in the order the application made them.

Every entry has a client_id, fixed when the entry is created. An entry is (re)transmitted on each
new connection until an `ack` with its client_id arrives; the server never stores two messages
for one client_id (docs/protocol.md §3, `send`), so retrying is always safe.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parley_client.errors import ParleyError, SendFailed


def new_client_id() -> str:
    return "c-" + uuid.uuid4().hex


@dataclass(eq=False)
class OutboxEntry:
    room: str
    text: str
    client_id: str
    future: asyncio.Future[dict[str, Any]]
    sent_on: int | None = None  # id of the connection that carries the latest transmission
    attempts: int = 0
    not_before: float = 0.0  # monotonic time before which a retry must not leave (retry_after_ms)
    errors: list[str] = field(default_factory=list)
    reply_to: int | None = None  # the seq of the message this one replies to (protocol §10)
    attachments: tuple[int, ...] = ()  # upload ids the message carries (protocol §14)

    def frame(self, ref: str) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "send", "ref": ref, "room": self.room, "text": self.text,
                                 "client_id": self.client_id}
        if self.reply_to is not None:
            frame["reply_to"] = self.reply_to
        if self.attachments:
            frame["attachments"] = list(self.attachments)
        return frame


class Outbox:
    def __init__(self, on_failed: Callable[[SendFailed], None] | None = None) -> None:
        self._entries: OrderedDict[str, OutboxEntry] = OrderedDict()
        # Sends that failed for good, by client_id, until retried or discarded: never dropped
        # without the application hearing of it (on_failed: the client's send_failed event).
        self.failed: OrderedDict[str, SendFailed] = OrderedDict()
        self._on_failed = on_failed

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._entries

    def get(self, client_id: str) -> OutboxEntry | None:
        return self._entries.get(client_id)

    def add(self, room: str, text: str, client_id: str | None = None, reply_to: int | None = None,
            attachments: tuple[int, ...] = ()) -> OutboxEntry:
        """A new entry, or the pending one with the same client_id (two callers, one message)."""
        cid = client_id or new_client_id()
        existing = self._entries.get(cid)
        if existing is not None:
            if existing.room != room:
                raise ValueError(f"client_id {cid!r} is already pending for room {existing.room!r}")
            return existing
        entry = OutboxEntry(room, text, cid, asyncio.get_running_loop().create_future(), reply_to=reply_to,
                            attachments=attachments)
        self._entries[cid] = entry
        return entry

    def to_transmit(self, connection_id: int, rooms: set[str] | None = None,
                    limit: int | None = None) -> list[OutboxEntry]:
        """Entries not yet sent on this connection (optionally only for these rooms), oldest first,
        at most `limit`; they are marked as sent on it."""
        out: list[OutboxEntry] = []
        for entry in self._entries.values():
            if limit is not None and len(out) >= limit:
                break
            if entry.sent_on != connection_id and (rooms is None or entry.room in rooms):
                entry.sent_on = connection_id
                entry.attempts += 1
                out.append(entry)
        return out

    def acked(self, client_id: str, ack: dict[str, Any]) -> OutboxEntry | None:
        entry = self._entries.pop(client_id, None)
        if entry is not None and not entry.future.done():
            entry.future.set_result(ack)
        return entry

    def fail(self, client_id: str, exc: BaseException) -> OutboxEntry | None:
        """The entry failed: its caller gets `exc` — as a SendFailed carrying the text when it is
        a refusal (ParleyError) — and the failure is kept in `failed` and reported."""
        entry = self._entries.pop(client_id, None)
        if entry is None:
            return None
        if isinstance(exc, ParleyError) and not isinstance(exc, SendFailed):
            exc = SendFailed(exc.code, exc.message, exc.frame, room=entry.room, text=entry.text,
                             client_id=entry.client_id, reply_to=entry.reply_to, attachments=entry.attachments)
        if isinstance(exc, SendFailed):
            self.failed[client_id] = exc
            if self._on_failed is not None:
                self._on_failed(exc)
        if not entry.future.done():
            entry.future.set_exception(exc)
            entry.future.exception()  # retrieved: a caller that did not await it is told by the event
        return entry

    def discard_failed(self, client_id: str) -> SendFailed | None:
        return self.failed.pop(client_id, None)

    def forget(self, client_id: str) -> None:
        self._entries.pop(client_id, None)

    def mark_unsent(self, client_id: str) -> None:
        entry = self._entries.get(client_id)
        if entry is not None:
            entry.sent_on = None

    def fail_all(self, exc: BaseException) -> None:
        for cid in list(self._entries):
            self.fail(cid, exc)

    def waiting(self, connection_id: int, rooms: set[str] | None = None) -> int:
        """How many entries this connection has not carried yet."""
        return sum(1 for e in self._entries.values()
                   if e.sent_on != connection_id and (rooms is None or e.room in rooms))

    def pending(self) -> list[OutboxEntry]:
        return list(self._entries.values())
