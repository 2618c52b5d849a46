"""Group commit: sends that arrive while a commit is in flight share the next transaction.

Every send's commit runs on one thread (parley.realtime.dbthread, in its write lane, ahead of the
consumers' reads), and a commit costs more than the inserts in it; one message per transaction
capped a process at roughly the inverse of the commit time. The writer keeps one batch in flight at a time: the first send goes
straight to the database (no added latency when idle), and whatever queues up meanwhile goes in
the next transaction together, each item in its own savepoint (parley.services).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from parley import events, metrics, services
from parley.models import Message
from parley.realtime.dbthread import database_thread
from parley.realtime.loops import per_loop

MAX_BATCH = 256


@dataclass(slots=True)
class _Send:
    user: Any
    room_id: int
    text: str
    client_id: str | None
    token_id: int | None  # the API token of the sender's socket (None: a session)
    reply_to: int | None  # the seq the message replies to (version 2)
    attachments: tuple[int, ...]  # upload ids (version 2, docs/protocol.md §14); () for none
    future: asyncio.Future[tuple[Message, bool] | None]


def _store(batch: list[_Send]) -> list[Any]:
    """Runs on the database thread."""
    return services.message_create_batch(
        items=[(item.user, item.room_id, item.text, item.client_id) for item in batch],
        tokens=[item.token_id for item in batch],
        replies=[item.reply_to for item in batch] if any(item.reply_to is not None for item in batch) else None,
        # None for a batch of plain sends: the batch's write stays the one fast statement.
        attachments=[item.attachments for item in batch] if any(item.attachments for item in batch) else None,
    )


class MessageWriter:
    def __init__(self) -> None:
        self._queue: list[_Send] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, *, user: Any, room_id: int, text: str, client_id: str | None,
                     token_id: int | None = None, reply_to: int | None = None,
                     attachments: tuple[int, ...] = ()) -> tuple[Message, bool] | None:
        """Store one message; (message, duplicate), or None if the user may no longer use the room.

        Raises parley.revocation.CredentialsRevoked (nothing stored) if the user was deactivated or
        deleted, or the API token `token_id` revoked; parley.services.MessageRefused if `reply_to`
        is no message of the room or a deleted one, or an upload of `attachments` is not the
        user's own unattached one in the room; the database's error if the transaction
        could not commit (nothing was stored).
        """
        future: asyncio.Future[tuple[Message, bool] | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Send(user, room_id, text, client_id, token_id, reply_to, attachments, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            metrics.INGEST_BATCH.observe(len(batch))
            try:
                results = await database_thread.submit(_store, batch)
            except Exception as exc:  # the commit failed: none of the batch was stored
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            announce = events.has_subscribers(events.MessagePosted)
            for item, result in zip(batch, results, strict=True):
                if announce and isinstance(result, tuple) and not result[1]:
                    # Committed (the batch's transaction is over): parley.events' subscribers,
                    # the message_posted signal among them. Fan-out leaves this to the consumer,
                    # which broadcasts after its ack. Even if the socket is gone: it was stored.
                    events.send_event(events.MessagePosted(message=result[0], room_id=item.room_id,
                                                           room_slug=None, source="socket"))
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)


@per_loop
def get_writer() -> MessageWriter:
    """The running loop's writer (one per loop, like parley.realtime.hub)."""
    return MessageWriter()
