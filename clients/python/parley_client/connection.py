"""ParleyClient: one WebSocket that survives reconnects without losing or doubling messages.

How the guarantees are kept (docs/client-python.md has the user-level description):

- every `send` goes through the Outbox with a client_id fixed at creation and is retransmitted on
  each new connection until its `ack` arrives; the server stores one message per client_id;
- every joined room remembers its epoch and the highest seq delivered; a reconnect rejoins with
  `after_seq`/`epoch`, and `RoomState.offer` drops what was seen and holds back what is early;
- a gap (a seq that arrives ahead of its predecessor, or a resume the server refused because the
  gap was too large) is filled from `history`; only a new epoch makes the client start over, and
  then it says so with a `reset` event;
- a heartbeat `ping` goes out whenever the socket has been quiet; no frame within
  `dead_after_secs` of a ping means the connection is dead: it is aborted and replaced.

Everything runs on the caller's event loop. One reader task per connection applies frames in
arrival order, synchronously, so the room state always reflects the wire order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from parley_client.backoff import Backoff, TokenBucket
from parley_client.errors import AuthError, ClientClosed, ConnectionLost, ParleyError
from parley_client.outbox import Outbox
from parley_client.rooms import RoomState

log = logging.getLogger("parley_client")

CLOSE_CREDENTIALS_REVOKED = 4401
# Send errors that no retry can fix: the request itself is wrong. Everything else (commit_failed,
# internal_error, not_joined during a rejoin, rate limits with retry_after_ms) is retried.
PERMANENT_SEND_ERRORS = frozenset({
    "text_empty", "text_too_long", "bad_field", "missing_field", "room_not_found",
    "frame_too_large", "bad_frame", "bad_json", "unknown_type", "forbidden",
})
PERMANENT_JOIN_ERRORS = frozenset({"room_not_found", "bad_field", "missing_field", "forbidden",
                                   "too_many_rooms"})


@dataclass
class ClientStats:
    connections: int = 0          # successful handshakes (hello received)
    connect_failures: int = 0
    dead_connections: int = 0     # closed by the heartbeat watchdog
    resumes_recovered: int = 0    # joined with recovered: true
    resumes_refused: int = 0      # joined with recovered: false
    catchups: int = 0             # refused resumes repaired from history (same epoch)
    delivered: int = 0            # message events handed to the application
    send_retries: int = 0         # retransmissions of a send (reconnect or retryable error)


@dataclass(eq=False)
class _Conn:
    id: int
    ws: ClientConnection
    hello: dict[str, Any]
    outq: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    refs: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    send_refs: dict[str, str] = field(default_factory=dict)  # ref -> client_id
    last_sent: float = field(default_factory=time.monotonic)
    last_recv: float = field(default_factory=time.monotonic)
    ping_sent_at: float | None = None
    closed: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def history_page_max(self) -> int:
        return int(self.hello.get("limits", {}).get("history_page_max", 100))


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done-callback: mark an exception as seen (tasks nobody awaits must not warn)."""
    if not task.cancelled():
        task.exception()


class ParleyClient:
    """An auto-reconnecting Parley client. Use as `async with ParleyClient(url, token=...) as c:`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        origin: str | None = None,
        backoff: Backoff | None = None,
        heartbeat_secs: float | None = None,
        dead_after_secs: float | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 15.0,
        gap_fill_delay: float = 0.3,
        catchup_max: int = 5000,
        emit_backlog: bool = False,
        pace_sends: bool = True,
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        if origin:
            self.headers["Origin"] = origin
        self.backoff = backoff or Backoff()
        self.heartbeat_secs = heartbeat_secs      # None: the server's hello.heartbeat_secs
        self.dead_after_secs = dead_after_secs    # None: the heartbeat interval (protocol §3)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.gap_fill_delay = gap_fill_delay
        self.catchup_max = catchup_max
        self.emit_backlog = emit_backlog
        self.pace_sends = pace_sends
        self.stats = ClientStats()
        self._bucket: TokenBucket | None = None
        self._pacer: asyncio.TimerHandle | None = None
        self.hello: dict[str, Any] | None = None

        self._rooms: dict[str, RoomState] = {}
        self._outbox = Outbox()
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._conn: _Conn | None = None
        self._conn_ids = itertools.count(1)
        self._refs = itertools.count(1)
        self._runner: asyncio.Task[None] | None = None
        self._state_changed = asyncio.Event()
        self._closing = False
        self._fatal: BaseException | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> ParleyClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, *, wait: bool = True) -> None:
        """Start connecting (and reconnecting); with wait, return once the first hello arrived."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="parley-client")
            self._runner.add_done_callback(_retrieve)
        if wait:
            await self.wait_connected()

    async def close(self) -> None:
        """Close the socket and stop; unacked sends fail with ClientClosed."""
        if self._closing:
            return
        self._closing = True
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                await asyncio.wait_for(conn.ws.close(), 2)
            except Exception:  # noqa: BLE001 - closing anyway
                conn.ws.transport.abort()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._finish(ClientClosed("client closed"))

    def _finish(self, exc: BaseException) -> None:
        self._outbox.fail_all(exc)
        self._events.put_nowait({"type": "closed", "reason": str(exc)})
        self._events.put_nowait(None)
        self._notify()

    def _die(self, exc: BaseException) -> None:
        log.warning("parley client stops: %s", exc)
        self._fatal = exc
        self._closing = True
        self._finish(exc)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def user(self) -> dict[str, Any] | None:
        return self.hello["user"] if self.hello else None

    @property
    def pending_sends(self) -> int:
        return len(self._outbox)

    def room(self, slug: str) -> RoomState | None:
        return self._rooms.get(slug)

    async def wait_connected(self) -> None:
        await self._wait_ready()

    def abort_connection(self) -> None:
        """Drop the current TCP connection without a close handshake (for tests and chaos drills)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.ws.transport.abort()

    # --- public requests --------------------------------------------------------------------

    async def join(self, room: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Join (or confirm) a room; the room is rejoined with resume after every reconnect.

        Returns the server's `joined` frame. With emit_backlog=True the first page is also
        delivered through events(); otherwise events() starts after it.
        """
        st = self._rooms.get(room)
        if st is None:
            st = self._rooms[room] = RoomState(room)
        return await asyncio.wait_for(self._joined(st), timeout)

    async def _joined(self, st: RoomState) -> dict[str, Any]:
        while True:
            conn = await self._wait_ready()
            if self._rooms.get(st.slug) is not st:
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
        st = self._rooms.pop(room, None)
        if st is None:
            return
        for entry in self._outbox.pending():
            if entry.room == room:
                self._outbox.fail(entry.client_id, ParleyError("not_joined", f"left {room!r}"))
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                await self._request(conn, {"type": "leave", "room": room})
            except ConnectionLost:
                pass

    async def send(self, room: str, text: str, *, client_id: str | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """Send a message; returns its `ack` once it is stored.

        Retried with the same client_id across reconnects until acked, so the message is stored
        once. On timeout the send is abandoned and TimeoutError raised: the message may or may
        not be stored; sending again with the same client_id settles it.
        """
        self._check_alive()
        if room not in self._rooms:
            raise ParleyError("not_joined", f"join {room!r} first")
        entry = self._outbox.add(room, text, client_id)
        conn = self._conn
        st = self._rooms[room]
        if conn is not None and not conn.closed and st.joined_on == conn.id:
            self._transmit(conn, {room})
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), timeout)
        except TimeoutError:
            self._outbox.forget(entry.client_id)
            raise

    async def history(self, room: str, *, before: int | None = None, limit: int = 50) -> dict[str, Any]:
        """One page of older messages (seq < before), ascending. Retried across reconnects."""
        self._check_alive()
        st = self._rooms.get(room)
        if st is None:
            raise ParleyError("not_joined", f"join {room!r} first")
        frame: dict[str, Any] = {"type": "history", "room": room, "limit": limit}
        if before is not None:
            frame["before"] = before
        while True:
            await self._joined(st)
            conn = await self._wait_ready()
            try:
                reply = await self._request(conn, frame)
            except ConnectionLost:
                continue
            if reply["type"] == "error":
                raise ParleyError(reply.get("code", "error"), reply.get("message", ""), reply)
            return reply

    async def typing(self, room: str) -> None:
        """Tell the room you are typing (best effort: dropped while disconnected)."""
        conn, st = self._conn, self._rooms.get(room)
        if conn is not None and not conn.closed and st is not None and st.joined_on == conn.id:
            self._enqueue(conn, {"type": "typing", "room": room})

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events in arrival order: `message` (each once, in seq order per room),
        `presence`, `typing`, `error` (unsolicited), plus the client's own `connected`,
        `disconnected`, `reset` and, last, `closed`. Meant for one consumer."""
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)  # later iterators end too
                return
            yield event

    # --- connection loop --------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise ClientClosed("client closed")

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    async def _wait_ready(self) -> _Conn:
        while True:
            self._check_alive()
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            await self._state_changed.wait()

    async def _run(self) -> None:
        try:
            while not self._closing:
                try:
                    ws = await connect(
                        self.url, additional_headers=self.headers, open_timeout=self.connect_timeout,
                        ping_interval=None, close_timeout=2, proxy=None, max_size=2**22,
                    )
                except InvalidURI as exc:
                    self._die(exc)
                    return
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    if status in (401, 403) and await self._credentials_invalid():
                        self._die(AuthError("handshake_refused", f"HTTP {status}: the credentials are refused"))
                        return
                    # 403 with a token the API still accepts: the handshake rate limit (or Origin).
                    await self._pause(f"HTTP {status}")
                    continue
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                    await self._pause(repr(exc))
                    continue
                code = await self._serve(ws)
                if code == CLOSE_CREDENTIALS_REVOKED:
                    self._die(AuthError("credentials_revoked", "server closed with 4401"))
                    return
                if not self._closing:
                    await self._pause(f"closed ({code})")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave callers waiting forever
            log.exception("parley client crashed")
            self._die(exc)

    async def _credentials_invalid(self) -> bool:
        """After a refused handshake: ask GET /api/me whether the token itself is the problem.

        A 403 handshake means bad credentials, a foreign Origin or the per-address handshake rate
        limit; only the first is final. Without a bearer token there is nothing to ask: final.
        """
        auth = self.headers.get("Authorization")
        if not auth:
            return True
        http = "http" + self.url[2:] if self.url.startswith("ws") else self.url
        scheme, _, rest = http.partition("://")
        probe = f"{scheme}://{rest.split('/', 1)[0]}/api/me"

        def ask() -> int | None:
            req = urllib.request.Request(probe, headers={"Authorization": auth})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return None

        status = await asyncio.to_thread(ask)
        return status == 401

    async def _pause(self, why: str) -> None:
        self.stats.connect_failures += 1
        delay = self.backoff.next_delay()
        log.info("parley: reconnecting in %.2f s (%s)", delay, why)
        await asyncio.sleep(delay)

    async def _serve(self, ws: ClientConnection) -> int | None:
        """Run one connection until it closes; returns the close code the server sent, if any."""
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), self.connect_timeout))
        except (TimeoutError, ConnectionClosed, ValueError):
            ws.transport.abort()
            return ws.close_code
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            ws.transport.abort()
            return None
        self.hello = hello
        self.backoff.reset()
        limits = hello.get("limits", {})
        rate, burst = limits.get("messages_per_sec"), limits.get("messages_burst")
        if self.pace_sends and isinstance(rate, int | float) and rate > 0:
            # The bucket is per user on the server (all sockets); a client with one socket per
            # user matches it. Older servers do not announce the burst: twice the rate.
            if not isinstance(burst, int | float) or burst < 1:
                burst = 2.0 * rate
            self._bucket = TokenBucket(rate, max(1.0, float(burst)))
        else:
            self._bucket = None
        self.stats.connections += 1
        conn = _Conn(next(self._conn_ids), ws, hello)
        self._conn = conn
        for coro in (self._writer(conn), self._heartbeat(conn)):
            self._spawn(conn, coro)
        self._emit({"type": "connected", "connection": conn.id, "user": hello.get("user")})
        self._notify()
        for st in list(self._rooms.values()):  # rejoin (resume) everything, sends follow each join
            self._joiner(conn, st)
        try:
            await self._reader(conn)
        finally:
            conn.closed = True
            if self._conn is conn:
                self._conn = None
            for task in list(conn.tasks):
                task.cancel()
            for fut in conn.refs.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost())
            conn.refs.clear()
            for st in self._rooms.values():
                if st.joined_on == conn.id:
                    st.joined_on = None
                elif st.known and st.join_task_conn == conn.id:
                    st.resume_failures += 1  # cut off before the resume's `joined` arrived
            ws.transport.abort()
            self._notify()
        code = ws.close_code
        self._emit({"type": "disconnected", "connection": conn.id, "code": code})
        return code

    def _spawn(self, conn: _Conn, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        task.add_done_callback(_retrieve)
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)
        return task

    async def _reader(self, conn: _Conn) -> None:
        try:
            async for raw in conn.ws:
                conn.last_recv = time.monotonic()
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("parley: ignoring a frame that is not JSON")
                    continue
                if isinstance(frame, dict):
                    self._dispatch(conn, frame)
        except ConnectionClosed:
            pass

    async def _writer(self, conn: _Conn) -> None:
        try:
            while True:
                data = await conn.outq.get()
                await conn.ws.send(data)
        except ConnectionClosed:
            pass

    async def _heartbeat(self, conn: _Conn) -> None:
        interval = float(self.heartbeat_secs or conn.hello.get("heartbeat_secs") or 25)
        dead_after = float(self.dead_after_secs or interval)
        tick = min(interval, dead_after) / 4
        while not conn.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if conn.ping_sent_at is not None:
                if conn.last_recv >= conn.ping_sent_at:
                    conn.ping_sent_at = None
                elif now - conn.ping_sent_at >= dead_after:
                    log.warning("parley: no answer to a ping for %.1f s; reconnecting", now - conn.ping_sent_at)
                    self.stats.dead_connections += 1
                    conn.ws.transport.abort()
                    return
            if conn.ping_sent_at is None and (now - conn.last_sent >= interval or now - conn.last_recv >= interval):
                conn.ping_sent_at = now
                self._enqueue(conn, {"type": "ping", "ref": f"hb{next(self._refs)}"})

    # --- frames out -------------------------------------------------------------------------

    def _enqueue(self, conn: _Conn, frame: dict[str, Any]) -> None:
        """Queue a frame for the connection's writer; frames leave in the order queued."""
        conn.outq.put_nowait(json.dumps(frame, separators=(",", ":")))
        conn.last_sent = time.monotonic()

    def _new_ref(self) -> str:
        return f"r{next(self._refs)}"

    async def _request(self, conn: _Conn, frame: dict[str, Any]) -> dict[str, Any]:
        ref = self._new_ref()
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        conn.refs[ref] = fut
        self._enqueue(conn, {**frame, "ref": ref})
        return await self._await_reply(conn, fut)

    async def _await_reply(self, conn: _Conn, fut: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.request_timeout)
        except TimeoutError:
            # The server answers every request; silence this long means the connection is dead.
            log.warning("parley: no reply within %.0f s; dropping the connection", self.request_timeout)
            conn.ws.transport.abort()
            raise ConnectionLost() from None

    def _transmit(self, conn: _Conn, rooms: set[str] | None) -> None:
        """Send the outbox entries of these rooms that this connection has not carried yet,
        paced by the token bucket; what must wait is sent by a timer."""
        while True:
            wait = self._bucket.take() if self._bucket is not None else 0.0
            if wait > 0:  # no token taken
                if self._pacer is None and self._outbox.waiting(conn.id, rooms):
                    self._pacer = asyncio.get_running_loop().call_later(wait, self._paced)
                return
            batch = self._outbox.to_transmit(conn.id, rooms, limit=1)
            if not batch:
                if self._bucket is not None:
                    self._bucket.tokens += 1  # taken but not used
                return
            entry = batch[0]
            if entry.attempts > 1:
                self.stats.send_retries += 1
            ref = self._new_ref()
            conn.send_refs[ref] = entry.client_id
            self._enqueue(conn, entry.frame(ref))

    def _paced(self) -> None:
        self._pacer = None
        conn = self._conn
        if conn is not None and not conn.closed:
            joined = {slug for slug, st in self._rooms.items() if st.joined_on == conn.id}
            self._transmit(conn, joined)

    def _joiner(self, conn: _Conn, st: RoomState) -> asyncio.Task[dict[str, Any] | None]:
        """The task that joins this room on this connection (one per room and connection)."""
        if st.join_task is None or st.join_task_conn != conn.id:
            st.join_task = self._spawn_detached(self._keep_joined(conn, st))
            st.join_task_conn = conn.id
        return st.join_task

    def _spawn_detached(self, coro: Any) -> asyncio.Task[Any]:
        # Not in conn.tasks: join tasks end by themselves (ConnectionLost) and may be awaited.
        task = asyncio.create_task(coro)
        task.add_done_callback(_retrieve)
        return task

    async def _keep_joined(self, conn: _Conn, st: RoomState) -> dict[str, Any] | None:
        attempt = 0
        while not conn.closed and self._rooms.get(st.slug) is st:
            frame: dict[str, Any] = {"type": "join", "room": st.slug}
            if st.known and st.resume_failures < 2:
                frame["after_seq"] = st.high_seq
                frame["epoch"] = st.epoch
            # else: a fresh join (newest page); _on_joined catches up from history instead.
            ref = self._new_ref()
            fut = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieve)
            conn.refs[ref] = fut
            self._enqueue(conn, {**frame, "ref": ref})
            # Pipelined: the server handles one socket's frames in order, so these sends are
            # processed after the join. If the join fails they get not_joined and are retried.
            self._transmit(conn, {st.slug})
            reply = await self._await_reply(conn, fut)
            if reply["type"] == "joined":
                return reply
            code = reply.get("code", "")
            if code in PERMANENT_JOIN_ERRORS:
                self._rooms.pop(st.slug, None)
                exc = ParleyError(code, reply.get("message", ""), reply)
                for entry in self._outbox.pending():
                    if entry.room == st.slug:
                        self._outbox.fail(entry.client_id, exc)
                self._emit(reply)
                return reply
            attempt += 1
            await asyncio.sleep(_retry_delay(reply, attempt))
            for entry in self._outbox.pending():
                if entry.room == st.slug and entry.sent_on == conn.id:
                    entry.sent_on = None
        return None

    # --- frames in --------------------------------------------------------------------------

    def _dispatch(self, conn: _Conn, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        ref = frame.get("ref")
        if kind == "message":
            self._on_message(conn, frame.get("room", ""), frame["message"])
        elif kind == "ack":
            conn.send_refs.pop(ref, None)
            self._outbox.acked(frame.get("client_id"), frame)
        elif kind == "error" and ref in conn.send_refs:
            self._on_send_error(conn, conn.send_refs.pop(ref), frame)
        elif kind == "joined":
            self._on_joined(conn, frame)
            self._resolve(conn, ref, frame)
        elif ref is not None and ref in conn.refs:
            self._resolve(conn, ref, frame)
        elif kind == "left":
            # Sent unasked when the user was removed from a private room: do not rejoin it.
            st = self._rooms.pop(frame.get("room", ""), None)
            if st is not None:
                exc = ParleyError("room_not_found", f"removed from {st.slug!r}", frame)
                for entry in self._outbox.pending():
                    if entry.room == st.slug:
                        self._outbox.fail(entry.client_id, exc)
            self._emit(frame)
        elif kind in ("presence", "typing", "error"):
            self._emit(frame)

    def _resolve(self, conn: _Conn, ref: Any, frame: dict[str, Any]) -> None:
        fut = conn.refs.pop(ref, None) if isinstance(ref, str) else None
        if fut is not None and not fut.done():
            fut.set_result(frame)

    def _on_send_error(self, conn: _Conn, client_id: str, frame: dict[str, Any]) -> None:
        entry = self._outbox.get(client_id)
        if entry is None:
            return
        code = frame.get("code", "")
        entry.errors.append(code)
        if code in PERMANENT_SEND_ERRORS:
            self._outbox.fail(client_id, ParleyError(code, frame.get("message", ""), frame))
            return
        entry.sent_on = None
        delay = _retry_delay(frame, len(entry.errors))
        asyncio.get_running_loop().call_later(delay, self._retransmit, conn, entry.room)

    def _retransmit(self, conn: _Conn, room: str) -> None:
        st = self._rooms.get(room)
        if not conn.closed and st is not None and st.joined_on == conn.id:
            self._transmit(conn, {room})

    def _on_joined(self, conn: _Conn, frame: dict[str, Any]) -> None:
        info = frame["room"]
        st = self._rooms.get(info["slug"])
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

    def _on_message(self, conn: _Conn, slug: str, message: dict[str, Any]) -> None:
        st = self._rooms.get(slug)
        if st is None or st.joined_on != conn.id:
            return
        self._deliver(st, st.offer(message))
        self._check_gap(conn, st, delay=self.gap_fill_delay)

    def _deliver(self, st: RoomState, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.stats.delivered += 1
            self._emit({"type": "message", "room": st.slug, "message": message})

    def _emit(self, event: dict[str, Any]) -> None:
        self._events.put_nowait(event)

    def _check_gap(self, conn: _Conn, st: RoomState, *, delay: float) -> None:
        if st.gap() is not None and (st.gap_task is None or st.gap_task.done()):
            st.gap_task = self._spawn(conn, self._fill_gap(conn, st, delay))

    async def _fill_gap(self, conn: _Conn, st: RoomState, delay: float) -> None:
        """Read missing seqs from history, oldest first, until nothing is held back."""
        await asyncio.sleep(delay)
        failures = 0
        window = conn.history_page_max  # narrowed when the server cuts a page to fit one frame
        while not conn.closed and st.joined_on == conn.id and self._rooms.get(st.slug) is st:
            gap = st.gap()
            if gap is None:
                return
            first_missing, first_pending = gap
            before = min(first_pending, first_missing + window)
            st.stats.gap_fills += 1
            try:
                reply = await self._request(conn, {"type": "history", "room": st.slug,
                                                   "before": before, "limit": before - first_missing})
            except ConnectionLost:
                return  # the resume on the next connection covers it
            if reply["type"] == "error":
                failures += 1
                await asyncio.sleep(_retry_delay(reply, failures))
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


def _retry_delay(frame: dict[str, Any], attempt: int) -> float:
    hint = frame.get("retry_after_ms")
    if isinstance(hint, int | float) and hint > 0:
        return hint / 1000
    return random.random() * min(5.0, 0.1 * 2 ** min(attempt, 10))
