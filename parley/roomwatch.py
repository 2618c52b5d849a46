"""Without Redis, messages stored by other processes reach this process's sockets through the
room log: every PARLEY_ROOM_LOG_POLL_MS, while any local socket is in a room, one query reads
the `last_seq` of those rooms; messages the log held at the previous round that live delivery
has not brought since are read (one query for all rooms) and handed to the hub as live ones.
A message stored elsewhere therefore arrives within two rounds (one to see it, one to be sure
it is not this process's own, committed a moment before its broadcast).

Why the log rather than an outbox table or a loopback endpoint: the log is already the truth
every delivery rests on (acks follow commits; sockets fill gaps and resume from it), so a
message posted from a management command, a worker or the shell needs nothing more than its
commit — no second write, no server address to know, nothing to clean up, and nothing lost
when no server runs (clients read it when they join or resume). It costs one indexed read per
interval while sockets are in rooms, none while there are none; messages stored by this
process move `LocalHub.seen` as they are delivered, so they are not read again. The figures:
`python -m bench.external_post` (docs/benchmarks.md, "Posting from another process").

With Redis the hub hears other processes on its subscription and this watch does not run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from parley import fanout, selectors
from parley.conf import parley_settings
from parley.models import Room
from parley.realtime import hub as hub_module
from parley.realtime.dbthread import DatabaseThread
from parley.realtime.hub import LocalHub
from parley.realtime.tasks import Periodic
from parley.storage.rows import fetch, qn, select_exprs

log = logging.getLogger(__name__)

# A thread and connection of its own, as parley.revocation's check: the poll must neither wait
# behind the sockets' commands on parley.realtime.dbthread nor hold them up.
watch_thread = DatabaseThread("parley-roomwatch")

# A room's first socket reads its history before the watch's first read of that room's log: a
# message another process committed in between is below the watch's starting point. So the
# first read of a room also takes its newest messages created since shortly before its first
# socket subscribed (at most FIRST_READ_MESSAGES); sockets drop the ones they have.
FIRST_READ_SLACK_SECS = 5.0
FIRST_READ_MESSAGES = 100
HEADS_PER_QUERY = 5000


def poll_interval_secs() -> float:
    return float(parley_settings.ROOM_LOG_POLL_MS) / 1000


def _room_heads(room_ids: list[int]) -> dict[int, int]:
    """last_seq of these rooms (those that still exist), by id. The one query an idle process
    makes each round: plain SQL (parley.storage.rows), without the ORM's compiler."""
    table = qn(Room._meta.db_table)
    heads: dict[int, int] = {}
    for start in range(0, len(room_ids), HEADS_PER_QUERY):  # within every database's parameter cap
        chunk = room_ids[start:start + HEADS_PER_QUERY]
        query = select_exprs(["id", "last_seq"], f"FROM {table} WHERE id IN ({', '.join(['%s'] * len(chunk))})")
        heads.update((int(room_id), int(last)) for room_id, last in fetch(query, chunk))
    return heads


def _new_messages(ranges: list[tuple[int, int, int]], since: dict[int, float]) -> tuple[dict[int, str], list[list[Any]]]:
    """The rooms' slugs, and the messages of each (room id, after, up_to) range."""
    slugs = dict(Room.objects.filter(pk__in=[r for r, _, _ in ranges]).values_list("pk", "slug"))
    out = selectors.messages_in_ranges(ranges=ranges)
    for i, (room_id, _, _) in enumerate(ranges):
        cutoff = since.get(room_id)
        if cutoff is not None:  # a first read: only what was created since its socket came
            out[i] = [m for m in out[i] if m.created_at.timestamp() >= cutoff]
    return slugs, out


class RoomLogWatch(Periodic):
    """One hub's (one event loop's) watch over its rooms' logs. Runs while the hub has rooms."""

    what = "reading the room logs"

    def __init__(self, hub: LocalHub) -> None:
        super().__init__()
        self.hub = hub
        self.heads: dict[int, int] = {}  # room id → its last_seq at the previous round
        self.done: dict[int, int] = {}  # room id → the seq up to which the watch has delivered
        self.added: dict[int, float] = {}  # rooms not read yet → when their first socket came

    def room_added(self, room_id: int) -> None:
        self.added.setdefault(room_id, time.time())
        self.heads.pop(room_id, None)
        self.done.pop(room_id, None)
        self.ensure_running()

    def interval_secs(self) -> float:
        return poll_interval_secs()

    def active(self) -> bool:
        return bool(self.hub.rooms)

    async def round(self) -> object:
        return await self.poll_once()

    async def poll_once(self) -> int:
        """Deliver what other processes stored in this hub's rooms; how many messages."""
        rooms = list(self.hub.rooms)
        for room_id in [r for r in self.heads if r not in self.hub.rooms]:
            del self.heads[room_id]
            self.done.pop(room_id, None)
        if not rooms:
            return 0
        heads = await watch_thread.submit(_room_heads, rooms)
        ranges: list[tuple[int, int, int]] = []
        first: dict[int, float] = {}
        gap = int(parley_settings.RESUME_MAX_GAP)
        for room_id, last in heads.items():
            if room_id in self.added:
                first[room_id] = self.added.pop(room_id) - FIRST_READ_SLACK_SECS
                if last > 0:
                    ranges.append((room_id, max(0, last - FIRST_READ_MESSAGES), last))
            else:
                # Only what the log held one round ago and live delivery has not brought since:
                # this process's own messages, committed a moment before their broadcast, are
                # not read again (under load every round would catch some in flight).
                ready = self.heads.get(room_id, last)
                after = max(self.done.get(room_id, 0), self.hub.seen.get(room_id, 0))
                if ready > after:
                    ranges.append((room_id, after, min(ready, after + gap)))
            self.heads[room_id] = last
        if not ranges:
            return 0
        slugs, batches = await watch_thread.submit(_new_messages, ranges, first)
        delivered = 0
        for (room_id, _, up_to), messages in zip(ranges, batches, strict=True):
            self.done[room_id] = up_to
            if room_id not in self.hub.rooms or room_id not in slugs:
                continue
            for message in messages:
                if message.seq > self.hub.seen.get(room_id, 0) or room_id in first:
                    self.hub.deliver(room_id, fanout.log_event(room_id=room_id, room_slug=slugs[room_id],
                                                               entry=message))
                    delivered += 1
        return delivered


hub_module.set_room_log_watch(RoomLogWatch)
