"""Per-socket, per-room delivery order: every log entry once, in seq order, no gaps.

Broadcasts can arrive out of order (two senders on two processes), twice (history and live
overlap at join), or not at all (Redis pub/sub is at-most-once). Each socket therefore tracks,
per joined room, the highest seq it delivered and holds anything that arrives ahead of a gap
until the gap is filled — live, or from the database.
All methods are synchronous: called from the hub's loop, they run atomically for the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Put = Callable[[str, "int | None"], None]
# An entry this socket takes its place in the order of but is not sent (a version 1 socket's
# edits, deletes and reactions): offered with frame None, it moves high_seq and nothing is put.
SKIP = None


@dataclass(slots=True, eq=False)
class Subscription:
    """One joined room on one socket."""

    room_id: int
    slug: str
    high_seq: int = 0  # the highest seq delivered to this socket (history or live)
    # Until the join's history is read and sent, live events only queue here.
    ready: bool = False
    pending: dict[int, tuple[str | None, int | None]] = field(default_factory=dict)
    gap_fill_scheduled: bool = False
    presence_touched: float = 0.0
    typing_at: float = 0.0  # when this socket last relayed a typing event for the room

    def offer(self, seq: int, frame: str | None, size: int | None, put: Put) -> bool:
        """Deliver (or hold) one log entry; True if a gap is open and should be filled. A frame
        of None (SKIP) takes its seq's place without being sent.

        The only place a live entry is let through: called once per recipient of every
        broadcast (parley.delivery), so the usual case — next in line, nothing held — costs one
        comparison chain and the put, without a call to drain.
        """
        if seq <= self.high_seq:
            return False  # already delivered
        if not self.ready or seq != self.high_seq + 1:
            self.pending[seq] = (frame, size)
            return self.ready
        if frame is not None:
            put(frame, size)
        self.high_seq = seq
        return self.drain(put) if self.pending else False

    def start(self, high_seq: int, put: Put) -> bool:
        """The join's snapshot (up to high_seq) was sent: go live. True if a gap is open."""
        self.high_seq = high_seq
        self.ready = True
        return self.drain(put)

    def drain(self, put: Put) -> bool:
        """Send held frames that are next in line; True if some wait behind a gap."""
        while self.pending:
            item = self.pending.pop(self.high_seq + 1, None)
            if item is None:
                stale = [s for s in self.pending if s <= self.high_seq]
                for s in stale:
                    del self.pending[s]
                return bool(self.pending)
            if item[0] is not None:
                put(item[0], item[1])
            self.high_seq += 1
        return False

    def first_pending(self) -> int | None:
        return min(self.pending) if self.pending else None
