"""Parley's uvicorn protocols: the limits that must hold before a request reaches the ASGI app,
and a shutdown that answers what it has already received.

config/serve.py runs uvicorn with `--http parley.edge:ParleyHttpProtocol` and
`--ws parley.edge:ParleyWebSocketProtocol` (subclasses of uvicorn's httptools and websockets-sansio
protocols; parley.realtime.uvicorn_writer still writes prepared frames to the latter, whose `send` is unchanged).

Why in the protocol and not in the app: an idle or half-sent connection costs a file descriptor
and buffers long before the app sees a request. uvicorn with httptools has no header timeout and
no header size cap, and its `--limit-concurrency` is checked only once a request's headers are
complete, and not at all for WebSocket upgrades, so it protects neither file descriptors nor
handshakes. Here each connection is admitted (or closed at once) when it is accepted:

- PARLEY_MAX_CONNECTIONS_PER_IP, PARLEY_MAX_CONNECTIONS: a connection beyond either is closed
  before any byte is read (no HTTP answer: answering would mean reading its request);
- PARLEY_HEADER_TIMEOUT_SECS: a request's line and headers (a WebSocket handshake's too) must be
  complete this long after its first byte, or after the connection opened; else 408, or a
  silent close when no byte of the request came at all (an idle keep-alive connection is closed
  by uvicorn's own --timeout-keep-alive first);
- PARLEY_MAX_HEADER_BYTES: request line + headers above it are answered 431. The parser is fed
  at most that many bytes at a time, so no more than twice the cap is ever buffered.

After a 408 or 431 the rest of what the client sends is read and dropped for LINGER_SECS, then
the connection is closed: closing a socket with unread data sends a reset, and the client might
lose the answer.

Behind a reverse proxy every connection comes from the proxy, so counting connections by peer
would put all its clients under one address. A connection from a peer uvicorn trusts for proxy
headers (`--proxy-headers --forwarded-allow-ips`, config/serve.py) is therefore counted, once its
request head is complete, under the client address its X-Forwarded-For names, read the way
uvicorn's ProxyHeadersMiddleware reads it (so the app's scope["client"] and this count agree);
one beyond PARLEY_MAX_CONNECTIONS_PER_IP is answered 429 `too_many_connections` (the proxy passes
the answer on; a silent close would look to the proxy like a failed backend). PARLEY_MAX_CONNECTIONS
still counts the proxy's connections when they open.

Shutdown (SIGTERM): uvicorn's websockets-sansio closes every socket at once with 1012, dropping
what the app was still answering. ParleyWebSocketProtocol.shutdown() instead stops reading from
the socket and queues a `websocket.shutdown` event behind the frames already received; the chat
consumer handles those frames first (acks, errors), then closes with 1001 once its replies are
written (ChatConsumer.websocket_shutdown). uvicorn waits up to --timeout-graceful-shutdown
(PARLEY_SHUTDOWN_GRACE_SECS) for that. `websocket.shutdown` is Parley's, not ASGI's: an app that
does not handle it is served with `--ws websockets-sansio` (the benchmark's baselines are).

The limits are the PARLEY setting's when Django runs with Parley (edge_limit), else the
environment's, as config/settings.py reads it: the same protocols serve the benchmark's bare
ASGI baselines, which have no Parley settings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from parley import conf, limits, metrics

log = logging.getLogger("parley.edge")

# After a 408/431: how long the rest of the request is read and dropped before the close.
LINGER_SECS = 2.0
# Refused connections are counted and logged at most this often (a flood must not flood the log).
REFUSAL_LOG_INTERVAL_SECS = 10.0


def env_limit(limit: limits.Limit) -> int:
    """A limit's value as config/settings.py reads it: `PARLEY_<KEY>` from the environment, else
    the default. For the launcher (config/serve.py), which runs before any Django settings."""
    return int(conf.from_environ().get(limit.key, limit.default))


def edge_limit(limit: limits.Limit) -> int:
    """A limit's value where a connection is served: the PARLEY setting once Django runs with
    Parley installed (the standalone server fills it from the same environment), else
    env_limit(): the same protocols serve the benchmark's baselines, which have no Parley."""
    if django_settings.configured and apps.ready and apps.is_installed("parley"):
        return int(getattr(conf.parley_settings, limit.key))
    return env_limit(limit)


class Edge:
    """One process's limits (read once) and its open connections per client address."""

    def __init__(self) -> None:
        self.header_timeout_secs = float(edge_limit(limits.HEADER_TIMEOUT_SECS))
        self.max_header_bytes = max(1, edge_limit(limits.MAX_HEADER_BYTES))
        self.max_per_address = edge_limit(limits.MAX_CONNECTIONS_PER_IP)
        self.max_connections = edge_limit(limits.MAX_CONNECTIONS)
        self.open_by_address: dict[str, int] = {}
        self.refused = 0
        self._logged_at = 0.0

    def admit(self, address: str | None, open_now: int) -> str | None:
        """Count a new connection from `address`; or say why it is refused (not counted then)."""
        if self.max_connections > 0 and open_now >= self.max_connections:
            return f"{self.max_connections} connections open (PARLEY_MAX_CONNECTIONS)"
        return self.admit_address(address)

    def admit_address(self, address: str | None) -> str | None:
        """Count a connection under `address` alone (PARLEY_MAX_CONNECTIONS_PER_IP)."""
        if address is None:
            return None
        count = self.open_by_address.get(address, 0)
        if 0 < self.max_per_address <= count:
            return f"{count} connections open from {address} (PARLEY_MAX_CONNECTIONS_PER_IP)"
        self.open_by_address[address] = count + 1
        return None

    def release(self, address: str) -> None:
        left = self.open_by_address.get(address, 0) - 1
        if left > 0:
            self.open_by_address[address] = left
        else:
            self.open_by_address.pop(address, None)

    def note_refusal(self, reason: str) -> None:
        self.refused += 1
        metrics.refused("connections")
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL_SECS:
            self._logged_at = now
            log.warning("refusing connections: %s (%d refused so far)", reason, self.refused)


_edge: Edge | None = None


def edge() -> Edge:
    global _edge
    if _edge is None:
        _edge = Edge()
    return _edge


def address_key(client: tuple[str, int] | None) -> str | None:
    """What the per-address cap counts: the IPv4 address, or the IPv6 /64 (one subscriber's
    network: a single host can use any address in it)."""
    if client is None:
        return None  # a Unix socket: the proxy in front is the only client
    host = client[0]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


_proxies: tuple[Any, _TrustedHosts | None] | None = None


def trusted_proxies(config: Any) -> _TrustedHosts | None:
    """The peers whose X-Forwarded-For uvicorn believes (its config's --forwarded-allow-ips), or
    None when it runs without --proxy-headers. Built once per configuration."""
    global _proxies
    allow = config.forwarded_allow_ips if config.proxy_headers else None
    if _proxies is None or _proxies[0] != allow:
        _proxies = (allow, None if allow is None else _TrustedHosts(allow))
    return _proxies[1]


def forwarded_client(proxies: _TrustedHosts, peer: tuple[str, int] | None,
                     headers: list[tuple[bytes, bytes]]) -> tuple[str, int] | None:
    """The client a trusted proxy's X-Forwarded-For names (every such header, joined, the nearest
    untrusted hop: uvicorn's ProxyHeadersMiddleware's reading), else the peer itself."""
    values = [value for name, value in headers if name == b"x-forwarded-for"]
    if not values:
        return peer
    host, port = proxies.get_trusted_client_address(b", ".join(values).decode("latin1"))
    return (host, port) if host else peer


class ParleyHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with connection caps, a header timeout and a header size cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.edge = edge()
        self.address: str | None = None  # counted in edge.open_by_address while set
        self.refused = False
        self.in_head = True  # between requests or inside a request line + headers
        self.head_bytes = 0  # bytes fed to the parser since this request's head began
        self.head_timer: asyncio.TimerHandle | None = None
        self.lingering = False
        # From a trusted proxy: counted per client once X-Forwarded-For is read (on_headers_complete).
        self.proxied = False

    # --- admission ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = get_remote_addr(transport)
        proxies = trusted_proxies(self.config)
        self.proxied = proxies is not None and peer is not None and peer[0] in proxies
        address = None if self.proxied else address_key(peer)
        reason = self.edge.admit(address, len(self.connections))
        if reason is not None:
            self.refused = True
            self.transport = transport
            transport.close()
            self.edge.note_refusal(reason)
            return
        self.address = address
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._release()
        if not self.refused:
            super().connection_lost(exc)

    def _release(self) -> None:
        if self.address is not None:
            self.edge.release(self.address)
            self.address = None

    def admit_forwarded(self) -> bool:
        """A proxied request: count its connection under the client X-Forwarded-For names (the
        same proxy connection may carry another client's request next); or answer 429."""
        proxies = trusted_proxies(self.config)
        assert proxies is not None
        address = address_key(forwarded_client(proxies, self.client, self.headers))
        if address == self.address:
            return True
        self._release()
        reason = self.edge.admit_address(address)
        if reason is None:
            self.address = address
            return True
        self.edge.note_refusal(reason)
        self._refuse(429, "too_many_connections",
                     "too many connections open from your address (PARLEY_MAX_CONNECTIONS_PER_IP)")
        return False

    def handle_websocket_upgrade(self) -> None:
        if self.lingering:
            return  # refused (429) when its head was complete
        super().handle_websocket_upgrade()
        # The connection now belongs to the WebSocket protocol: its slot goes with it.
        ws = self.transport.get_protocol()
        if isinstance(ws, ParleyWebSocketProtocol):
            ws.address, self.address = self.address, None
        else:
            self._release()  # another --ws implementation: it is not counted from here on

    # --- the request head: bytes and time -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # answered 408/431 already: drop the rest
        cap = self.edge.max_header_bytes
        while data:
            if self.in_head:
                if self.head_timer is None:
                    self._arm_head_timer()
                # Feed no more than the cap allows: httptools buffers a header until it ends.
                piece, data = data[:cap - self.head_bytes], data[cap - self.head_bytes:]
                self.head_bytes += len(piece)
            else:
                # A body, in pieces of the cap too: a pipelined request's head may follow it.
                piece, data = data[:cap], data[cap:]
            super().data_received(piece)
            transport = self.transport
            if transport.is_closing() or self.lingering:
                return
            if transport.get_protocol() is not self:
                # Became a WebSocket. A client may send frames only after the 101, so what came
                # with the handshake is dropped, as uvicorn drops it (the piece's tail too).
                return
            if self.in_head and self.head_bytes >= cap:
                self._refuse(431, "headers_too_large",
                             f"the request line and headers exceed {cap} bytes")
                return

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self._cancel_head_timer()
        if self.proxied and not self.admit_forwarded():
            return  # answered 429: no request for the app
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.lingering:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.lingering:
            return
        super().on_message_complete()
        self.in_head = True  # the timer starts again with the next request's first byte

    def _arm_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.edge.header_timeout_secs, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self.in_head or self.lingering:
            return
        if self.head_bytes == 0:
            self.transport.close()  # nothing of a request came: nobody to answer
            return
        self._refuse(408, "request_timeout",
                     f"the request line and headers took longer than {self.edge.header_timeout_secs:g} s")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer `status` with Parley's JSON error, then drop the rest and close."""
        self._cancel_head_timer()
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n",
                 b"content-length: " + str(len(body)).encode() + b"\r\n",
                 b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.lingering = True
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer, then our end of the stream
        self.loop.call_later(LINGER_SECS, self._end_linger)

    def _end_linger(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        self._cancel_head_timer()
        if self.lingering:
            self.transport.close()
            return
        super().shutdown()


class ParleyWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol that, on shutdown, lets the app answer what it has
    received and close with its own code (Parley: 1001), and that carries the connection's
    per-address slot from the HTTP protocol it was upgraded from."""

    address: str | None = None
    draining = False

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self.address is not None:
                edge().release(self.address)
                self.address = None

    def shutdown(self) -> None:
        if (self.close_sent or self.disconnected or not self.handshake_complete
                or self.initial_response is not None):
            super().shutdown()  # not an open chat socket: uvicorn's own handling
            return
        self.stop_keepalive()
        self.draining = True
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        # Behind the frames already queued: the app handles those first, then closes.
        self.queue.put_nowait({"type": "websocket.shutdown"})  # type: ignore[misc,arg-type]  # (Parley's own event: not in asgiref's types)

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty() and not self.draining:
            self.read_paused = False
            self.transport.resume_reading()
        return message


# --- no query string in uvicorn's logs -----------------------------------------------------------

_QUERY = re.compile(r'(/[^\s"?]*)\?[^\s"]*')


def _path_only(value: Any) -> Any:
    if type(value) is str and value.startswith("/") and "?" in value:
        return value.split("?", 1)[0] + "?…"
    return value


class StripQueryStrings(logging.Filter):
    """Cuts the query string off every request path uvicorn logs (the access log's request line,
    the WebSocket "[accepted]"/403 lines): a `?token=…` or any other secret a client put in a URL
    must not land in a log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_path_only(a) for a in args)
        elif isinstance(record.msg, str) and "?" in record.msg:
            record.msg = _QUERY.sub(r"\1?…", record.msg)
        return True


def install_log_filters() -> None:
    """Idempotent. Filters stay on a logger through later dictConfig calls (uvicorn's, Django's)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, StripQueryStrings) for f in logger.filters):
            logger.addFilter(StripQueryStrings())


install_log_filters()
