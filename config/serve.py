"""Run Parley's server: `python -m config.serve [uvicorn options…]`.

scripts/serve, the tests' ServerProcess (tests/support/server.py) and the benchmark
(bench/servers.py) all start the server through this, so the flags the tests run are the flags
production runs. Options on the command line go to uvicorn after Parley's own, so they win
(`--port 9000`, `--access-log`, `--log-level debug`); `--app MODULE:ATTR` serves another ASGI
app under the same flags (the benchmark's baselines). Reads `.env` like every entry point
(config/env.py).
"""

from __future__ import annotations

import errno
import resource
import socket
import sys

import click
from uvicorn.main import main as uvicorn_main

from config.env import env_bool, env_int, env_str, load_dotenv
from parley import edge, limits, logs
from parley.realtime import uvicorn_writer

APP = "config.asgi:application"
# uvicorn's websockets-sansio implementation (parley.edge's subclass adds connection limits and
# shutdown), named rather than left to `--ws auto`: which implementation `auto` picks has changed
# between uvicorn versions, and the direct write path (parley/realtime/uvicorn_writer.py) needs
# this one. The benchmark's baselines pass `--ws websockets-sansio` itself.
WS_PROTOCOL = "parley.edge:ParleyWebSocketProtocol"
# File descriptors kept beyond PARLEY_MAX_CONNECTIONS: database and Redis connections, log
# files, the listening socket.
FD_HEADROOM = 1024
# Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (FORWARDED_ALLOW_IPS): loopback,
# i.e. a proxy on the same machine (deploy/nginx.conf). Trusting nobody by default would make every
# client behind such a proxy one address, 127.0.0.1, so the per-address limits would lock them all
# out together; trusting loopback costs nothing when there is no proxy, because a client that is
# not on this machine never connects from loopback and its headers are ignored. A proxy on another
# machine: FORWARDED_ALLOW_IPS=its address (or network). `*` trusts any peer: only when the port
# is reachable from the proxy alone.
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"


def production_args() -> list[str]:
    """uvicorn's options for Parley, from the environment (HOST, PORT and the limits)."""
    return [
        "--host", env_str("HOST", "127.0.0.1"), "--port", str(env_int("PORT", 8000)),
        "--loop", "uvloop",
        # uvicorn's httptools and websockets-sansio, with Parley's connection limits and
        # shutdown (parley/edge.py).
        "--http", "parley.edge:ParleyHttpProtocol", "--ws", WS_PROTOCOL,
        "--ws-max-size", str(edge.env_limit(limits.MAX_FRAME_BYTES)),
        # Deflate keeps one compression context per connection, so a broadcast would be
        # compressed again for every recipient; chat frames are small, and fan-out speed comes
        # from encoding each message once (docs/benchmarks.md).
        "--ws-per-message-deflate", "false",
        # A socket whose network went silent (no close frame, no FIN: a pulled cable, a phone
        # leaving Wi-Fi) is dropped, and its user leaves the rooms' member lists, within one
        # heartbeat: uvicorn pings each socket every half heartbeat and drops it when the pong
        # has not come within another half. uvicorn's own 20 s + 20 s kept such a user listed
        # for up to 40 s, past the 25 s heartbeat (tests/test_presence_bounds.py).
        "--ws-ping-interval", str(edge.env_limit(limits.HEARTBEAT_INTERVAL_SECS) / 2),
        "--ws-ping-timeout", str(edge.env_limit(limits.HEARTBEAT_INTERVAL_SECS) / 2),
        # After a network blip every client reconnects at once. uvicorn's default listen backlog
        # (2048) overflowed in the 5,000-client reconnect storm, and every dropped handshake
        # waited for TCP's retransmit (1 s, then 3 s, ...) while the server sat idle
        # (docs/benchmarks.md). The kernel caps it at net.core.somaxconn.
        "--backlog", str(env_int("PARLEY_LISTEN_BACKLOG", 8192)),
        "--lifespan", "off",
        # Off by default; with --access-log on, parley.edge strips query strings from it.
        "--no-access-log",
        # SIGTERM: sockets answer what they received and close with 1001 within this (parley/edge.py).
        "--timeout-graceful-shutdown", str(edge.env_limit(limits.SHUTDOWN_GRACE_SECS)),
        # Behind a reverse proxy the client's address and scheme come from its X-Forwarded-For and
        # X-Forwarded-Proto, believed from these peers only; the per-address limits (parley/edge.py,
        # parley/ws_auth.py, parley/throttles.py) and the Origin check then see the real client.
        # Named here rather than left to uvicorn's defaults (the same today) so the docs can say
        # what runs: docs/deploy.md "Behind a proxy".
        "--proxy-headers" if env_bool("PROXY_HEADERS", True) else "--no-proxy-headers",
        "--forwarded-allow-ips", env_str("FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS),
    ]


def json_logs() -> bool:
    return env_str("LOG_FORMAT", "plain").lower() == "json"


def say(text: str) -> None:
    if json_logs():  # every line of the server's output is then one JSON object
        print(logs.json_line(text, logger="parley.serve"), file=sys.stderr, flush=True)
    else:
        print(f"[parley] {text}", file=sys.stderr, flush=True)


def port_in_use(host: str, port: int) -> bool:
    """True when another process listens on host:port (tried the way uvicorn binds)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False  # uvicorn reports a bad host itself
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def raise_open_file_limit() -> None:
    """Make room for PARLEY_MAX_CONNECTIONS: the soft limit is often 1,024."""
    wanted = edge.env_limit(limits.MAX_CONNECTIONS) + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        say(f"warning: {soft} open files allowed (ulimit -n), PARLEY_MAX_CONNECTIONS needs "
            f"{wanted}: lower PARLEY_MAX_CONNECTIONS or raise the limit")


def main(argv: list[str] | None = None) -> None:
    load_dotenv()
    args = list(sys.argv[1:] if argv is None else argv)
    app = APP
    if "--app" in args:
        at = args.index("--app")
        app = args[at + 1]
        del args[at:at + 2]
    try:
        ctx = uvicorn_main.make_context("python -m config.serve", [app, *production_args(), *args])
    except click.exceptions.Exit as exc:  # --help
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    params = ctx.params
    if params.get("fd") is None and params.get("uds") is None:
        host, port = params["host"], params["port"]
        if port_in_use(host, port):
            say(f"cannot start: port {port} on {host} is in use (another server?). Stop it, or "
                f"pick another port: PORT=… scripts/serve, or --port …")
            sys.exit(1)
        shown = f"[{host}]" if ":" in host else host
        what = "Parley is running" if app == APP else f"serving {app}"
        say(f"{what} at http://{shown}:{port}/  (Ctrl-C to stop)")
    if app == APP:
        # Which way frames leave, from the options uvicorn is about to get: a `--ws` or deflate
        # given on the command line can turn the direct path off without an error anywhere else.
        _, line = uvicorn_writer.write_path(params["ws"], params["ws_per_message_deflate"],
                                            env_bool("PARLEY_PREPARED_FRAMES", True))
        say(line)
    raise_open_file_limit()
    if json_logs() and "--log-config" not in args:
        params["log_config"] = logs.uvicorn_log_config()  # uvicorn's own lines in JSON too
    with ctx:
        uvicorn_main.invoke(ctx)


if __name__ == "__main__":
    main()
