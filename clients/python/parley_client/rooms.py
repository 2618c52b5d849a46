"""Per-room state: the room's epoch, the highest entry seq delivered, and the reorder buffer.

A room's log is a sequence of entries (docs/protocol.md §10): messages, edits, deletes and
reactions, each with the room's next seq. The server already delivers them in order and once
(§5); this layer makes the client's promise independent of that: `offer()` drops any seq at or
below the high-water mark and holds back anything ahead of a gap until the gap is filled (by a
resume `join`, or, below `history_until`, from `history`, which holds messages only).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


def entry_seq(entry: dict[str, Any]) -> int:
    """The log seq of an entry: a `message` event's is its message's; the other kinds carry it.
    (A bare message object, which has `seq` itself, works too.)"""
    message = entry.get("message")
    if isinstance(message, dict):
        return int(message["seq"])
    return int(entry["seq"])


@dataclass
class RoomStats:
    duplicates: int = 0        # entries dropped because their seq was already delivered
    out_of_order: int = 0      # entries that arrived ahead of a gap and were held back
    gap_fills: int = 0         # requests (resume joins, history pages) made to fill a gap
    resets: int = 0            # times the log had to be dropped (new epoch / catch-up too long)
    skipped: int = 0           # seqs passed over: entries no history page holds (catch-up)


@dataclass
class RoomState:
    slug: str
    epoch: str | None = None
    high_seq: int = 0          # the highest entry seq delivered (each one up to it was, or was skipped)
    joined_on: int | None = None   # connection id on which the server confirmed the join
    last_joined: dict[str, Any] | None = None
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    stats: RoomStats = field(default_factory=RoomStats)
    # bookkeeping of the client (parley_client.sync)
    join_task: asyncio.Task[Any] | None = None
    join_task_conn: int | None = None
    join_sent_on: int | None = None  # connection whose writer has sent this room's join: sends may follow
    typing_at: float = 0.0           # when the last `typing` for the room was queued (monotonic)
    gap_task: asyncio.Task[Any] | None = None
    # Resumes of this room whose connection was cut before `joined` arrived (e.g. 4413: the
    # server could not send the whole gap in one frame). After two, rejoin fresh and page.
    resume_failures: int = 0
    # Seqs up to this one are caught up from `history` (a refused resume, a fresh join, the
    # backlog): pages hold messages only, so a seq below it that no page holds is an edit,
    # delete or reaction folded into the pages' messages, and is skipped. Above it, a gap is
    # filled by a resume `join`, whose `events` are exactly the missing entries.
    history_until: int = 0
    catchup_from: int | None = None  # high_seq when a catch-up from history began
    catchup_skipped: int = 0         # stats.skipped then
    filling: bool = False      # a gap-filling resume join is in flight (its `joined` is no resume)

    @property
    def known(self) -> bool:
        """Whether a resume is possible (the room was joined before on some connection)."""
        return self.epoch is not None

    def offer(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Take one entry (an event frame); return the entries now deliverable, in seq order."""
        seq = entry_seq(message)
        if seq <= self.high_seq or seq in self.pending:
            self.stats.duplicates += 1
            return []
        if seq != self.high_seq + 1:
            self.stats.out_of_order += 1
            self.pending[seq] = message
            return []
        out = [message]
        self.high_seq = seq
        while self.high_seq + 1 in self.pending:
            self.high_seq += 1
            out.append(self.pending.pop(self.high_seq))
        return out

    def gap(self) -> tuple[int, int] | None:
        """(first missing seq, first seq past the gap) if seqs are missing: something is held
        back behind them, or the catch-up from history has not reached `history_until` yet."""
        if self.pending:
            return self.high_seq + 1, min(self.pending)
        if self.high_seq < self.history_until:
            return self.high_seq + 1, self.history_until + 1
        return None

    def skip_to(self, seq: int) -> list[dict[str, Any]]:
        """Pass over every seq up to seq (none will come); return what is deliverable now."""
        out: list[dict[str, Any]] = []
        if seq > self.high_seq:
            self.stats.skipped += seq - self.high_seq
            self.high_seq = seq
        self.pending = {s: m for s, m in self.pending.items() if s > self.high_seq}
        while self.high_seq + 1 in self.pending:
            self.high_seq += 1
            out.append(self.pending.pop(self.high_seq))
        return out

    def reset(self, epoch: str, high_seq: int) -> None:
        """Start over: nothing at or below high_seq will be delivered; a new epoch drops the buffer."""
        if epoch != self.epoch:
            self.pending.clear()
        self.epoch = epoch
        self.high_seq = high_seq
        self.pending = {s: m for s, m in self.pending.items() if s > high_seq}
        self.history_until = 0  # the application starts over from the page: nothing to catch up
        self.stats.resets += 1
