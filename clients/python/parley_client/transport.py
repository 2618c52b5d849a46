"""Transport: one WebSocket at a time, reconnected with backoff, kept alive by a heartbeat.

`Transport.run` connects, waits for `hello`, serves the connection until it closes and starts
over after a backoff delay, until the client closes or a failure no retry can fix (bad
credentials, 4401, a bad URL). Each `Connection` has three tasks: the reader hands every frame
to the listener in arrival order, synchronously, so the listener's state follows the wire; the
writer sends frames one at a time in the order they were queued; the heartbeat pings a quiet
socket and aborts one that stopped answering.

The writer is also where frames are paced: it writes a frame only when the connection's frame
bucket (hello.limits.frames_per_sec/frames_burst, parley_client.pacing) holds a token. It has
two lanes — control frames queued with `Connection.send` (joins, history, pings, …) in FIFO
order, and a `FrameSource` it pulls sends from at write time (parley_client.sending), so that
the send's own message token is taken when the frame actually leaves. When both lanes have a
frame ready they take turns: neither can starve the other.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from parley_client.backoff import Backoff
from parley_client.errors import AuthError, ClientClosed
from parley_client.pacing import TokenBucket, bucket_from_limits
from parley_client.stats import ClientStats

log = logging.getLogger("parley_client")

CLOSE_CREDENTIALS_REVOKED = 4401
PROTOCOL_VERSION = 2  # docs/protocol.md §10: the log's edits, deletes and reactions as entries


def versioned_url(url: str, version: int = PROTOCOL_VERSION) -> str:
    """The socket URL asking for this protocol version (`?protocol=2`), unless it asks already."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "protocol" for key, _ in query):
        return url
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode([*query, ("protocol", str(version))])))


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def retrieve(task: asyncio.Future[Any]) -> None:
    """Done-callback: mark an exception as seen (tasks nobody awaits must not warn)."""
    if not task.cancelled():
        task.exception()


class FrameSource(Protocol):
    """The writer's second lane (the outbox): frames that are made when they can leave."""

    def ready(self, conn: Connection) -> float | None:
        """0.0: a frame can be pulled now; > 0: not before that many seconds; None: nothing."""

    def pull(self, conn: Connection) -> str | None:
        """The next frame, encoded, now that it leaves (after `ready` said 0.0)."""


class Listener(Protocol):
    def connected(self, conn: Connection) -> None: ...
    def frame(self, conn: Connection, frame: dict[str, Any]) -> None: ...
    def disconnected(self, conn: Connection, code: int | None) -> None: ...
    def stopped(self, exc: BaseException) -> None: ...


@dataclass(eq=False)
class Connection:
    """One open socket, from its `hello` to its close."""

    id: int
    ws: ClientConnection
    hello: dict[str, Any]
    frames: TokenBucket | None = None     # paces every frame written (None: no limit announced)
    source: FrameSource | None = None
    control: deque[tuple[str, Callable[[], None] | None]] = field(default_factory=deque)
    last_sent: float = field(default_factory=time.monotonic)
    last_recv: float = field(default_factory=time.monotonic)
    ping_queued: bool = False
    ping_sent_at: float | None = None
    closed: bool = False
    aborted_here: bool = False  # this client dropped it (abort(): a dead heartbeat, a late reply, the app)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def limits(self) -> dict[str, Any]:
        limits = self.hello.get("limits")
        return limits if isinstance(limits, dict) else {}

    def send(self, frame: dict[str, Any], on_written: Callable[[], None] | None = None) -> None:
        """Queue a frame; `on_written` is called once it has been handed to the socket."""
        self.control.append((encode(frame), on_written))
        self.wakeup.set()

    def wake(self) -> None:
        """Tell the writer the frame source may have something ready."""
        self.wakeup.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task that lives as long as this connection (cancelled when it closes)."""
        task = asyncio.create_task(coro)
        task.add_done_callback(retrieve)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake."""
        if not self.closed:
            self.aborted_here = True
            self.ws.transport.abort()


class Transport:
    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str],
        backoff: Backoff,
        listener: Listener,
        stats: ClientStats,
        heartbeat_secs: float | None,
        dead_after_secs: float | None,
        connect_timeout: float,
    ) -> None:
        self.url = url
        self.headers = headers
        self.backoff = backoff
        self.listener = listener
        self.stats = stats
        self.heartbeat_secs = heartbeat_secs      # None: the server's hello.heartbeat_secs
        self.dead_after_secs = dead_after_secs    # None: the heartbeat interval (protocol §3)
        self.connect_timeout = connect_timeout
        self.source: FrameSource | None = None
        self.hello: dict[str, Any] | None = None
        self.conn: Connection | None = None
        self.closing = False
        self.fatal: BaseException | None = None
        self._conn_ids = itertools.count(1)
        self._pings = itertools.count(1)
        self._runner: asyncio.Task[None] | None = None
        self._state_changed = asyncio.Event()

    # --- state ------------------------------------------------------------------------------

    def current(self) -> Connection | None:
        """The open connection, if there is one."""
        conn = self.conn
        return conn if conn is not None and not conn.closed else None

    def check_alive(self) -> None:
        if self.fatal is not None:
            raise self.fatal
        if self.closing:
            raise ClientClosed("client closed")

    async def ready(self) -> Connection:
        """The open connection, once there is one (raises once the client stopped)."""
        while True:
            self.check_alive()
            conn = self.current()
            if conn is not None:
                return conn
            await self._state_changed.wait()

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="parley-client")
            self._runner.add_done_callback(retrieve)

    async def close(self) -> bool:
        """Close the socket and stop reconnecting; False if it was stopped already."""
        if self.closing:
            return False
        self.closing = True
        conn = self.current()
        if conn is not None:
            try:
                await asyncio.wait_for(conn.ws.close(), 2)
            except Exception:
                conn.abort()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._notify()
        return True

    def _die(self, exc: BaseException) -> None:
        log.warning("parley client stops: %s", exc)
        self.fatal = exc
        self.closing = True
        self.listener.stopped(exc)
        self._notify()

    # --- the connection loop ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self.closing:
                try:
                    ws = await connect(
                        versioned_url(self.url), additional_headers=self.headers, open_timeout=self.connect_timeout,
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
                if not self.closing:
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
                    return int(resp.status)
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
        self.stats.connections += 1
        conn = Connection(next(self._conn_ids), ws, hello, source=self.source)
        # Per socket on the server, as here: every connection starts with a full bucket.
        conn.frames = bucket_from_limits(conn.limits, "frames_per_sec", "frames_burst")
        self.conn = conn
        conn.spawn(self._writer(conn))
        conn.spawn(self._heartbeat(conn))
        self.listener.connected(conn)
        self._notify()
        try:
            await self._reader(conn)
        finally:
            conn.closed = True
            if self.conn is conn:
                self.conn = None
            for task in list(conn.tasks):
                task.cancel()
            ws.transport.abort()
            self._notify()
        code = ws.close_code
        self.listener.disconnected(conn, code)
        return code

    async def _reader(self, conn: Connection) -> None:
        try:
            async for raw in conn.ws:
                conn.last_recv = time.monotonic()
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("parley: ignoring a frame that is not JSON")
                    continue
                if isinstance(frame, dict):
                    self.listener.frame(conn, frame)
        except ConnectionClosed:
            pass

    async def _writer(self, conn: Connection) -> None:
        source_turn = False  # whose turn it is when both lanes have a frame ready
        try:
            while not conn.closed:
                from_source = conn.source.ready(conn) if conn.source is not None else None
                if not conn.control and from_source != 0.0:
                    conn.wakeup.clear()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(conn.wakeup.wait(), from_source)
                    continue
                if conn.frames is not None:
                    wait = conn.frames.wait()
                    if wait > 0:
                        self.stats.paced_waits += 1
                        await asyncio.sleep(wait)
                        continue
                on_written: Callable[[], None] | None = None
                if from_source == 0.0 and (source_turn or not conn.control):
                    assert conn.source is not None
                    data = conn.source.pull(conn)
                    source_turn = False
                    if data is None:
                        continue
                else:
                    data, on_written = conn.control.popleft()
                    source_turn = True
                if conn.frames is not None:
                    conn.frames.take()
                await conn.ws.send(data)
                conn.last_sent = time.monotonic()
                if on_written is not None:
                    on_written()
        except ConnectionClosed:
            pass
        except Exception:
            # Without its writer the connection would hang; a new one starts from a clean state.
            log.exception("parley: the writer failed; dropping the connection")
            conn.abort()

    async def _heartbeat(self, conn: Connection) -> None:
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
                    conn.abort()
                    return
            quiet = now - conn.last_sent >= interval or now - conn.last_recv >= interval
            if conn.ping_sent_at is None and not conn.ping_queued and quiet:
                conn.ping_queued = True
                conn.send({"type": "ping", "ref": f"hb{next(self._pings)}"}, on_written=_ping_written(conn))


def _ping_written(conn: Connection) -> Callable[[], None]:
    # The watchdog counts from when the ping left, not from when it was queued: a ping queued
    # behind paced frames is not unanswered yet.
    def written() -> None:
        conn.ping_queued = False
        conn.ping_sent_at = time.monotonic()

    return written
