"""Per-room state: the room's epoch, the highest seq delivered, and the reorder buffer.

The server already delivers each room's messages in order and once (docs/protocol.md §5); this
layer makes the client's promise independent of that: `offer()` drops any seq at or below the
high-water mark and holds back anything ahead of a gap until the gap is filled (from `history`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoomStats:
    duplicates: int = 0        # frames dropped because their seq was already delivered
    out_of_order: int = 0      # frames that arrived ahead of a gap and were held back
    gap_fills: int = 0         # history requests made to fill a gap
    resets: int = 0            # times the log had to be dropped (new epoch / catch-up too long)


@dataclass
class RoomState:
    slug: str
    epoch: str | None = None
    high_seq: int = 0
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

    @property
    def known(self) -> bool:
        """Whether a resume is possible (the room was joined before on some connection)."""
        return self.epoch is not None

    def offer(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Take one message payload; return the messages that are now deliverable, in seq order."""
        seq = message["seq"]
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
        """(first missing seq, first pending seq) if something is held back behind a gap."""
        if not self.pending:
            return None
        first_pending = min(self.pending)
        return self.high_seq + 1, first_pending

    def skip_to(self, seq: int) -> list[dict[str, Any]]:
        """Give up on everything up to seq (it does not exist); return what is deliverable now."""
        out: list[dict[str, Any]] = []
        if seq > self.high_seq:
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
        self.stats.resets += 1
