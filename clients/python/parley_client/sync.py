"""Room sync: which rooms are joined, and their log entries delivered once each, in seq order.

A room's log (docs/protocol.md §10) holds entries — `message`, `edit`, `delete`, `reaction` —
each with the room's next seq. Every joined room has a RoomState (parley_client.rooms): its epoch
and the highest entry seq delivered. On every new connection each room is rejoined with
`after_seq`/`epoch`, and:

- `recovered: true`: the reply's `events` are the entries missed; live entries follow;
- `recovered: false` with the *same* epoch (the gap was larger than the server's resume window):
  the reply's page (messages in their current state) goes into the reorder buffer and the
  messages below it are read from `history`, page by page, up to `catchup_max`. Pages hold
  messages only, so the seqs between them (edits, deletes, reactions, folded into the pages'
  messages) are skipped; if any were, older messages may have changed unseen, and the
  application gets a `stale` event;
- a *different* epoch (the room was deleted and created again), or more than `catchup_max`
  behind: the log starts over, and the application gets a `reset` event;
- a resume cut off twice before its `joined` arrived by the server (4413, or a drop without a
  close frame that this client did not make: the server could not send the whole gap) becomes
  a fresh join whose gap is paged from `history` the same way.

Every entry passes `RoomState.offer`: a seq already delivered is dropped, one ahead of a gap is
held back, and a gap still open after `gap_fill_delay` is filled by a resume `join` on the same
socket (after_seq = the high-water mark), whose `events` are exactly the missing entries; a gap
below `RoomState.history_until` (a catch-up in progress) is paged from `history` instead.

A join's frame leaving the socket opens the room for sends on that connection
(`join_sent_on`, read by parley_client.sending): the server handles a socket's frames in
order, so sends pipelined after the join are handled after it.

The conversation requests (`edit`, `delete`, `react`, `unreact`) change nothing when repeated
(protocol §10), so they are retried like `history`: on the next connection, and after a
refusal a retry can fix; they are paced by the server's edit bucket (hello.limits.edits_*).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from parley_client.backoff import retry_delay
from parley_client.errors import ConnectionLost, ParleyError
from parley_client.pacing import TokenBucket, bucket_from_limits
from parley_client.requests import Requests
from parley_client.rooms import RoomState, entry_seq
from parley_client.sending import Sender
from parley_client.stats import ClientStats
from parley_client.transport import Connection, retrieve

log = logging.getLogger("parley_client")

PERMANENT_JOIN_ERRORS = frozenset({"room_not_found", "bad_field", "missing_field", "forbidden",
                                   "too_many_rooms"})
# Refusals of a request that the same request can get past later: wait (retry_after_ms, or a
# jittered delay) and send it again. not_joined: the room's rejoin is still on its way.
RETRYABLE_REQUEST_ERRORS = frozenset({"rate_limited", "commit_failed", "internal_error", "not_joined"})
# The log's entry events (protocol §10): each takes the room's next seq.
ENTRY_TYPES = frozenset({"message", "edit", "delete", "reaction"})


def _held(st: RoomState, entry: dict[str, Any]) -> bool:
    try:
        seq = entry_seq(entry)
    except (KeyError, TypeError, ValueError):
        return False
    return seq <= st.high_seq or seq in st.pending


def message_event(message: dict[str, Any]) -> dict[str, Any]:
    """A page's message as the `message` entry event it is in the log."""
    return {"type": "message", "room": message.get("room"), "message": message}


def _spawn_detached(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    # Not tied to a connection: join tasks end by themselves (ConnectionLost) and may be awaited.
    task = asyncio.create_task(coro)
    task.add_done_callback(retrieve)
    return task


class RoomSync:
    def __init__(self, *, requests: Requests, sender: Sender, stats: ClientStats,
                 emit: Callable[[dict[str, Any]], None], ready: Callable[[], Awaitable[Connection]],
                 current: Callable[[], Connection | None], check_alive: Callable[[], None],
                 gap_fill_delay: float, catchup_max: int, emit_backlog: bool) -> None:
        self.rooms: dict[str, RoomState] = {}
        self._requests = requests
        self._sender = sender
        self.stats = stats
        self._emit = emit
        self._ready = ready
        self._current = current
        self._check_alive = check_alive
        self.gap_fill_delay = gap_fill_delay
        self.catchup_max = catchup_max
        self.emit_backlog = emit_backlog
        self._edits: TokenBucket | None = None  # the user's edit bucket, mirrored (pacing)

    def may_send(self, conn: Connection, room: str) -> bool:
        st = self.rooms.get(room)
        return st is not None and st.join_sent_on == conn.id

    # --- the application's calls ------------------------------------------------------------

    async def join(self, room: str, timeout: float | None) -> dict[str, Any]:
        st = self.rooms.get(room)
        if st is None:
            st = self.rooms[room] = RoomState(room)
        return await asyncio.wait_for(self._joined(st), timeout)

    async def _joined(self, st: RoomState) -> dict[str, Any]:
        while True:
            conn = await self._ready()
            if self.rooms.get(st.slug) is not st:
                raise ParleyError("not_joined", f"left {st.slug!r}")
            try:
                reply = await asyncio.shield(self._joiner(conn, st))
            except ConnectionLost:
                continue
            if reply is None:
                continue
            if reply["type"] == "error":
                raise ParleyError(reply.get("code", "error"), reply.get("message", ""), reply)
            return reply

    async def leave(self, room: str) -> None:
        st = self.rooms.pop(room, None)
        if st is None:
            return
        self._sender.fail_room(room, ParleyError("not_joined", f"left {room!r}"))
        conn = self._current()
        if conn is not None:
            try:
                await self._requests.request(conn, {"type": "leave", "room": room})
            except ConnectionLost:
                pass

    async def history(self, room: str, before: int | None, limit: int) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "history", "room": room, "limit": limit}
        if before is not None:
            frame["before"] = before
        # Only the user's history byte budget (protocol §3) is transient for a page.
        return await self.room_request(room, frame, retry=frozenset({"rate_limited"}))

    async def room_request(self, room: str, frame: dict[str, Any], *,
                           retry: frozenset[str] = RETRYABLE_REQUEST_ERRORS,
                           edit_bucket: bool = False) -> dict[str, Any]:
        """Send a request about a joined room until it is answered; the reply, or ParleyError
        for a refusal not in `retry`. Only for requests that may be repeated safely: a
        connection lost before the reply sends it again on the next one, after the room's
        rejoin. `edit_bucket`: it takes a token of the user's edit bucket (protocol §10)."""
        self._check_alive()
        st = self.rooms.get(room)
        if st is None:
            raise ParleyError("not_joined", f"join {room!r} first")
        refusals = 0
        while True:
            await self._joined(st)
            conn = await self._ready()
            if edit_bucket:
                await self._edit_token()
                if conn.closed:
                    continue
            try:
                reply = await self._requests.request(conn, frame)
            except ConnectionLost:
                continue
            if reply["type"] == "error":
                code = reply.get("code", "error")
                if code in retry:
                    refusals += 1
                    self.stats.request_retries += 1
                    await asyncio.sleep(retry_delay(reply, refusals))
                    continue
                if code == "room_not_found" and self.rooms.get(room) is st:
                    self._drop(st, reply)  # access was lost: the server's socket left the room
                raise ParleyError(code, reply.get("message", ""), reply)
            return reply

    async def _edit_token(self) -> None:
        # Waiting here, not in the writer: the frame still waits for its frame token there.
        while self._edits is not None:
            wait = self._edits.take()
            if wait == 0.0:
                return
            self.stats.paced_waits += 1
            await asyncio.sleep(wait)

    def typing(self, room: str) -> None:
        conn, st = self._current(), self.rooms.get(room)
        if conn is None or st is None or st.joined_on != conn.id:
            return
        # The server relays one `typing` per socket and room per typing_interval_ms and drops
        # the rest; dropping them here instead keeps them out of the frame budget.
        interval = conn.limits.get("typing_interval_ms")
        now = time.monotonic()
        if isinstance(interval, int | float) and (now - st.typing_at) * 1000 < interval:
            return
        st.typing_at = now
        conn.send({"type": "typing", "room": room})

    # --- connections ------------------------------------------------------------------------

    def connected(self, conn: Connection) -> None:
        # Per user on the server (on all processes with Redis): refilled full, as the message
        # bucket is (parley_client.sending).
        self._edits = bucket_from_limits(conn.limits, "edits_per_sec", "edits_burst")
        for st in list(self.rooms.values()):  # rejoin (resume) everything; sends follow each join
            self._joiner(conn, st)

    def connection_lost(self, conn: Connection, code: int | None = None) -> None:
        # A resume cut off before its `joined` arrived counts against resuming only when the
        # resume may be why: the server's 4413 (its reply and what followed overflowed the
        # socket's queue), or a drop without a close frame that this client did not make (a
        # reader cut off that way may get no close frame, protocol §7). Not a drop made here
        # (abort_connection(), a dead heartbeat, a late reply) nor another close code: paging
        # a fresh join instead would pass over the gap's edits, deletes and reactions.
        resume_cut = code == 4413 or (code in (None, 1006) and not conn.aborted_here)
        for st in self.rooms.values():
            if st.join_sent_on == conn.id:
                st.join_sent_on = None
            if st.joined_on == conn.id:
                st.joined_on = None
            elif st.known and st.join_task_conn == conn.id and resume_cut:
                st.resume_failures += 1

    def _joiner(self, conn: Connection, st: RoomState) -> asyncio.Task[dict[str, Any] | None]:
        """The task that joins this room on this connection (one per room and connection)."""
        if st.join_task is None or st.join_task_conn != conn.id:
            st.join_task = _spawn_detached(self._keep_joined(conn, st))
            st.join_task_conn = conn.id
        return st.join_task

    async def _keep_joined(self, conn: Connection, st: RoomState) -> dict[str, Any] | None:
        attempt = 0

        def opened() -> None:
            st.join_sent_on = conn.id  # the writer may now pull this room's sends

        while not conn.closed and self.rooms.get(st.slug) is st:
            frame: dict[str, Any] = {"type": "join", "room": st.slug}
            if st.known and st.resume_failures < 2:
                frame["after_seq"] = st.high_seq
                frame["epoch"] = st.epoch
            # else: a fresh join (newest page); on_joined catches up from history instead.
            reply = await self._requests.request(conn, frame, on_written=opened)
            if reply["type"] == "joined":
                return reply
            code = reply.get("code", "")
            st.join_sent_on = None
            if code in PERMANENT_JOIN_ERRORS:
                self._drop(st, reply)
                return reply
            attempt += 1
            self._sender.requeue_room(conn, st.slug)
            await asyncio.sleep(retry_delay(reply, attempt))
        return None

    def _drop(self, st: RoomState, reply: dict[str, Any]) -> None:
        """The server refused the room for good (it is gone, or access was lost)."""
        code = reply.get("code", "")
        if self.rooms.get(st.slug) is st:
            self.rooms.pop(st.slug, None)
        self._sender.fail_room(st.slug, ParleyError(code, reply.get("message", ""), reply))
        self._emit(reply)

    # --- frames in --------------------------------------------------------------------------

    def on_left(self, frame: dict[str, Any]) -> None:
        # Sent unasked when the user was removed from a private room: do not rejoin it.
        st = self.rooms.pop(frame.get("room", ""), None)
        if st is not None:
            self._sender.fail_room(st.slug, ParleyError("room_not_found", f"removed from {st.slug!r}", frame))
        self._emit(frame)

    def on_room_removed(self, frame: dict[str, Any]) -> None:
        # Removed, left from another client, or deleted: no rejoin; what was pending for it fails
        # with its text (SendFailed, `send_failed`), never dropped.
        slug = frame.get("room", "")
        st = self.rooms.pop(slug, None) if isinstance(slug, str) else None
        if st is not None:
            reason = frame.get("reason", "removed")
            self._sender.fail_room(st.slug, ParleyError("room_removed", f"{st.slug!r}: {reason}", frame))
        self._emit(frame)

    def on_joined(self, conn: Connection, frame: dict[str, Any]) -> None:
        info = frame["room"]
        st = self.rooms.get(info["slug"])
        if st is None:
            return
        messages = frame.get("messages") or []
        epoch = info["epoch"]
        recovered = frame.get("recovered")
        page_high = messages[-1]["seq"] if messages else 0
        # After a join that is not a recovered resume the server delivers live every entry after
        # the room's last_seq as the join read it (docs/protocol.md §10, "Pages"): the page
        # shows the effect of every entry up to it.
        live_high = max(page_high, int(info.get("last_seq") or 0))
        gap_fill = st.filling  # a resume this client sent to fill a gap, not a reconnect's
        st.joined_on = conn.id
        st.last_joined = frame
        st.resume_failures = 0
        entries: list[dict[str, Any]] = []
        if not st.known:
            st.epoch = epoch
            if self.emit_backlog:
                # The whole log from its start: the page, and history below it.
                entries = [message_event(m) for m in messages]
                # Up to the room's last_seq as the join read it: the seqs after the page's
                # newest message are entries folded into it, and none comes live.
                st.history_until = max(st.history_until, live_high)
            else:
                st.high_seq = live_high
        elif recovered is True:
            if not gap_fill:
                self.stats.resumes_recovered += 1
            events = frame.get("events")
            # A version 1 server lists the missed messages instead of the entries.
            entries = events if isinstance(events, list) else [message_event(m) for m in messages]
        else:
            if not gap_fill:
                self.stats.resumes_refused += 1
            behind = max(int(info.get("last_seq") or 0), page_high) - st.high_seq
            if epoch == st.epoch and 0 <= behind <= self.catchup_max:
                # Same log, only too far behind for the server: the page goes into the reorder
                # buffer and the messages below it are read from history, so none is lost.
                self.stats.catchups += 1
                entries = [message_event(m) for m in messages if m["seq"] > st.high_seq]
                if live_high > st.high_seq:
                    if st.catchup_from is None:
                        st.catchup_from, st.catchup_skipped = st.high_seq, st.stats.skipped
                    # Through last_seq, not the page's newest message: the entries after it are
                    # folded into the page and never come live, so they are passed over too.
                    st.history_until = max(st.history_until, live_high)
            else:
                st.pending.clear()
                st.reset(epoch, live_high)
                st.catchup_from = None
                self._emit({"type": "reset", "room": st.slug, "epoch": epoch, "messages": messages,
                            "has_more": frame.get("has_more", False)})
        if gap_fill:
            # A gap's resume lists everything after the gap too, which is held back already:
            # expected, not the duplicates RoomStats counts.
            entries = [e for e in entries if not _held(st, e)]
        for entry in entries:
            self._offer(st, entry)
        if st.high_seq >= st.history_until:
            self._catchup_done(st)  # e.g. a recovered resume finished an interrupted catch-up
        self._check_gap(conn, st, delay=0.0)

    def on_entry(self, conn: Connection, frame: dict[str, Any]) -> None:
        """A live log entry: `message`, `edit`, `delete` or `reaction`."""
        st = self.rooms.get(frame.get("room", ""))
        if st is None or st.joined_on != conn.id:
            return
        self._offer(st, frame)
        self._check_gap(conn, st, delay=self.gap_fill_delay)

    on_message = on_entry

    def _offer(self, st: RoomState, entry: dict[str, Any]) -> None:
        try:
            entry_seq(entry)
        except (KeyError, TypeError, ValueError):
            log.warning("parley: ignoring a %s entry without a seq in %s", entry.get("type"), st.slug)
            return
        self._deliver(st, st.offer(entry))

    def _deliver(self, st: RoomState, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            self.stats.delivered += 1
            self._emit(entry)

    # --- gaps -------------------------------------------------------------------------------

    def _check_gap(self, conn: Connection, st: RoomState, *, delay: float) -> None:
        if st.gap() is not None and (st.gap_task is None or st.gap_task.done()):
            st.gap_task = conn.spawn(self._fill_gap(conn, st, delay))

    async def _fill_gap(self, conn: Connection, st: RoomState, delay: float) -> None:
        """Fill the room's gaps, oldest first, until nothing is missing."""
        await asyncio.sleep(delay)
        failures = 0
        # Narrowed when the server cuts a page to fit one frame.
        window = int(conn.limits.get("history_page_max", 100))
        resumed_from: int | None = None  # the high-water mark of the last recovered gap resume
        while not conn.closed and st.joined_on == conn.id and self.rooms.get(st.slug) is st:
            gap = st.gap()
            if gap is None or gap[0] > st.history_until:
                self._catchup_done(st)
            if gap is None:
                return
            first_missing, past = gap
            try:
                if first_missing <= st.history_until:
                    reply = await self._page_gap(conn, st, first_missing, min(past, st.history_until + 1), window)
                    if isinstance(reply, int):
                        window, reply = reply, None
                elif resumed_from == st.high_seq:
                    # A recovered resume lists every entry after after_seq (protocol §10): the
                    # server has no such seqs. It never skips one; do not wait forever.
                    log.error("parley: %s seqs %s..%s missing on the server; skipping them",
                              st.slug, first_missing, past - 1)
                    self._deliver(st, st.skip_to(past - 1))
                    continue
                else:
                    resumed_from = st.high_seq
                    reply = await self._resume_gap(conn, st)
            except ConnectionLost:
                return  # the resume on the next connection covers it
            if reply is None:
                continue
            if reply.get("type") != "error":
                if reply.get("type") == "joined" and reply.get("recovered") is not True:
                    resumed_from = None  # refused: a catch-up from history is under way
                continue
            code = reply.get("code", "")
            if code in PERMANENT_JOIN_ERRORS:
                self._drop(st, reply)  # e.g. room_not_found: access was lost, the socket left it
                return
            if code == "not_joined":
                return  # the server and this state disagree: the next connection's rejoin settles it
            resumed_from = None
            failures += 1
            await asyncio.sleep(retry_delay(reply, failures))

    async def _resume_gap(self, conn: Connection, st: RoomState) -> dict[str, Any]:
        """A resume join on this socket: on_joined takes its `events` (the missing entries)."""
        st.stats.gap_fills += 1
        st.filling = True
        try:
            return await self._requests.request(conn, {"type": "join", "room": st.slug,
                                                       "after_seq": st.high_seq, "epoch": st.epoch})
        finally:
            st.filling = False

    async def _page_gap(self, conn: Connection, st: RoomState, first_missing: int, past: int,
                        window: int) -> dict[str, Any] | int | None:
        """Read the messages with seqs first_missing..past-1 from history and deliver them; pass
        over the seqs between them (not messages: folded into the pages). Returns the error
        reply, a narrower window (the server cut the page to fit one frame), or None."""
        before = min(past, first_missing + window)
        st.stats.gap_fills += 1
        reply = await self._requests.request(conn, {"type": "history", "room": st.slug,
                                                    "before": before, "limit": before - first_missing})
        if reply["type"] == "error":
            return reply
        got = [m for m in reply.get("messages") or [] if isinstance(m, dict) and isinstance(m.get("seq"), int)]
        if got and got[0]["seq"] > first_missing and reply.get("has_more"):
            # Cut short by PARLEY_REPLY_MAX_BYTES (protocol §3): ask for fewer, older ones.
            # (Not by `limit`: that many messages cannot fit above first_missing.)
            return max(1, min(window - 1, len(got)))
        for message in got:
            if first_missing <= message["seq"] < before:
                self._deliver(st, st.skip_to(message["seq"] - 1))
                self._offer(st, message_event(message))
        self._deliver(st, st.skip_to(before - 1))
        return None

    def _catchup_done(self, st: RoomState) -> None:
        """After a catch-up from history: if it passed over entries, older messages than the
        resume point may have been edited, deleted or reacted to unseen. Tell the application."""
        if st.catchup_from is None:
            return
        since, skipped_before = st.catchup_from, st.catchup_skipped
        st.catchup_from = None
        if since > 0 and st.stats.skipped > skipped_before:
            self._emit({"type": "stale", "room": st.slug, "through_seq": since})
