"""Room sync: which rooms are joined, and their messages delivered once each, in seq order.

Every joined room has a RoomState (parley_client.rooms): its epoch and the highest seq
delivered. On every new connection each room is rejoined with `after_seq`/`epoch`, and:

- `recovered: true`: the reply holds what was missed; live messages follow;
- `recovered: false` with the *same* epoch (the gap was larger than the server's resume window):
  the reply's page goes into the reorder buffer and the gap below it is read from `history`,
  page by page, up to `catchup_max` messages, so nothing is lost;
- a *different* epoch (the room was deleted and created again), or more than `catchup_max`
  behind: the log starts over, and the application gets a `reset` event;
- a resume cut off twice before its `joined` arrived (4413: the server could not send the whole
  gap) becomes a fresh join whose gap is paged from `history` the same way.

Every message passes `RoomState.offer`: a seq already delivered is dropped, one ahead of a gap is
held back, and a gap still open after `gap_fill_delay` is read from `history`.

A join's frame leaving the socket opens the room for sends on that connection
(`join_sent_on`, read by parley_client.sending): the server handles a socket's frames in
order, so sends pipelined after the join are handled after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from parley_client.backoff import retry_delay
from parley_client.errors import ConnectionLost, ParleyError
from parley_client.requests import Requests
from parley_client.rooms import RoomState
from parley_client.sending import Sender
from parley_client.stats import ClientStats
from parley_client.transport import Connection, retrieve

log = logging.getLogger("parley_client")

PERMANENT_JOIN_ERRORS = frozenset({"room_not_found", "bad_field", "missing_field", "forbidden",
                                   "too_many_rooms"})


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
        self._check_alive()
        st = self.rooms.get(room)
        if st is None:
            raise ParleyError("not_joined", f"join {room!r} first")
        frame: dict[str, Any] = {"type": "history", "room": room, "limit": limit}
        if before is not None:
            frame["before"] = before
        refusals = 0
        while True:
            await self._joined(st)
            conn = await self._ready()
            try:
                reply = await self._requests.request(conn, frame)
            except ConnectionLost:
                continue
            if reply["type"] == "error":
                if reply.get("code") == "rate_limited":
                    # The user's history byte budget (protocol §3): transient, wait as told.
                    refusals += 1
                    await asyncio.sleep(retry_delay(reply, refusals))
                    continue
                raise ParleyError(reply.get("code", "error"), reply.get("message", ""), reply)
            return reply

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
        for st in list(self.rooms.values()):  # rejoin (resume) everything; sends follow each join
            self._joiner(conn, st)

    def connection_lost(self, conn: Connection) -> None:
        for st in self.rooms.values():
            if st.join_sent_on == conn.id:
                st.join_sent_on = None
            if st.joined_on == conn.id:
                st.joined_on = None
            elif st.known and st.join_task_conn == conn.id:
                st.resume_failures += 1  # cut off before the resume's `joined` arrived

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
                self.rooms.pop(st.slug, None)
                self._sender.fail_room(st.slug, ParleyError(code, reply.get("message", ""), reply))
                self._emit(reply)
                return reply
            attempt += 1
            self._sender.requeue_room(conn, st.slug)
            await asyncio.sleep(retry_delay(reply, attempt))
        return None

    # --- frames in --------------------------------------------------------------------------

    def on_left(self, frame: dict[str, Any]) -> None:
        # Sent unasked when the user was removed from a private room: do not rejoin it.
        st = self.rooms.pop(frame.get("room", ""), None)
        if st is not None:
            self._sender.fail_room(st.slug, ParleyError("room_not_found", f"removed from {st.slug!r}", frame))
        self._emit(frame)

    def on_joined(self, conn: Connection, frame: dict[str, Any]) -> None:
        info = frame["room"]
        st = self.rooms.get(info["slug"])
        if st is None:
            return
        messages = frame.get("messages", [])
        epoch = info["epoch"]
        recovered = frame.get("recovered")
        st.joined_on = conn.id
        st.last_joined = frame
        st.resume_failures = 0
        if not st.known:
            st.epoch = epoch
            if not self.emit_backlog:
                st.high_seq = messages[-1]["seq"] if messages else 0
                messages = []
        elif recovered is True:
            self.stats.resumes_recovered += 1
        else:
            self.stats.resumes_refused += 1
            behind = info["last_seq"] - st.high_seq
            if epoch == st.epoch and 0 <= behind <= self.catchup_max:
                # Same log, only too far behind for the server: the page goes into the reorder
                # buffer and the gap below it is read from history, so nothing is lost.
                self.stats.catchups += 1
                messages = [m for m in messages if m["seq"] > st.high_seq]  # overlap: not the server's fault
            else:
                st.pending.clear()
                st.reset(epoch, messages[-1]["seq"] if messages else 0)
                self._emit({"type": "reset", "room": st.slug, "epoch": epoch, "messages": messages,
                            "has_more": frame.get("has_more", False)})
                messages = []
        for message in messages:
            self._deliver(st, st.offer(message))
        self._check_gap(conn, st, delay=0.0)

    def on_message(self, conn: Connection, frame: dict[str, Any]) -> None:
        st = self.rooms.get(frame.get("room", ""))
        if st is None or st.joined_on != conn.id:
            return
        self._deliver(st, st.offer(frame["message"]))
        self._check_gap(conn, st, delay=self.gap_fill_delay)

    def _deliver(self, st: RoomState, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.stats.delivered += 1
            self._emit({"type": "message", "room": st.slug, "message": message})

    # --- gaps -------------------------------------------------------------------------------

    def _check_gap(self, conn: Connection, st: RoomState, *, delay: float) -> None:
        if st.gap() is not None and (st.gap_task is None or st.gap_task.done()):
            st.gap_task = conn.spawn(self._fill_gap(conn, st, delay))

    async def _fill_gap(self, conn: Connection, st: RoomState, delay: float) -> None:
        """Read missing seqs from history, oldest first, until nothing is held back."""
        await asyncio.sleep(delay)
        failures = 0
        # Narrowed when the server cuts a page to fit one frame.
        window = int(conn.limits.get("history_page_max", 100))
        while not conn.closed and st.joined_on == conn.id and self.rooms.get(st.slug) is st:
            gap = st.gap()
            if gap is None:
                return
            first_missing, first_pending = gap
            before = min(first_pending, first_missing + window)
            st.stats.gap_fills += 1
            try:
                reply = await self._requests.request(conn, {"type": "history", "room": st.slug,
                                                            "before": before, "limit": before - first_missing})
            except ConnectionLost:
                return  # the resume on the next connection covers it
            if reply["type"] == "error":
                failures += 1
                await asyncio.sleep(retry_delay(reply, failures))
                continue
            got = reply["messages"]
            if got and got[0]["seq"] > first_missing and reply.get("has_more"):
                # Cut short by PARLEY_REPLY_MAX_BYTES (protocol §3): ask for fewer, older ones.
                window = max(1, len(got))
                continue
            for message in got:
                self._deliver(st, st.offer(message))
            if st.high_seq < first_missing:
                # The server has no such messages (it never skips seqs; see protocol §2).
                log.error("parley: %s seqs %s..%s missing on the server; skipping them",
                          st.slug, first_missing, before - 1)
                self._deliver(st, st.skip_to(before - 1))
