"""Server subprocesses for the benchmark: Parley (own temp data dir, secret, Redis prefix,
scratch PostgreSQL database) and the baselines, all under the same launcher (config/serve.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_BASE = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# Rate limits and per-user socket caps (if the server has them) must not throttle the benchmark.
UNTHROTTLED = {
    "PARLEY_FRAMES_PER_SEC": "1000000", "PARLEY_FRAMES_BURST": "1000000",
    "PARLEY_MESSAGES_PER_SEC": "1000000", "PARLEY_MESSAGES_BURST": "1000000",
    "PARLEY_HANDSHAKES_PER_IP_PER_MIN": "100000000", "PARLEY_MAX_SOCKETS_PER_USER": "100000",
    "PARLEY_HANDSHAKES_PER_USER_PER_MIN": "100000000",
    "PARLEY_EDITS_PER_SEC": "1000000", "PARLEY_EDITS_BURST": "1000000",  # edits and reactions
}
# Every client of the benchmark comes from 127.0.0.1, thousands at once: the connection caps of
# parley/edge.py (per address, per process) are off for every target, the baselines included.
UNCAPPED_CONNECTIONS = {"PARLEY_MAX_CONNECTIONS_PER_IP": "0", "PARLEY_MAX_CONNECTIONS": "0"}
UNTHROTTLED.update(UNCAPPED_CONNECTIONS)
PARLEY_APP = "config.asgi:application"
# Parley with its room broadcasts through stock group_send (bench/baselines/parley_layer.py).
PARLEY_LAYER_APP = "bench.baselines.parley_layer:application"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvicorn_cmd(app: str, port: int, ws: str = "auto") -> list[str]:
    """The server command for every target: Parley's launcher (config/serve.py, what
    scripts/serve runs), so each target gets the production uvicorn flags and protocols.
    "auto" is the production WebSocket implementation: for Parley parley.edge's subclass of
    websockets-sansio; for the baselines websockets-sansio itself, whose frames go out the same way
    (the subclass differs only in shutdown, which the baselines' apps do not speak).

    BENCH_SERVER=daphne runs every target under daphne instead, to compare ASGI servers."""
    if os.environ.get("BENCH_SERVER") == "daphne":
        return [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "--websocket-max-message-size",
                "65536", app]
    cmd = [PY, "-m", "config.serve", "--app", app, "--host", "127.0.0.1", "--port", str(port)]
    if ws != "auto":
        cmd += ["--ws", ws]
    elif app not in (PARLEY_APP, PARLEY_LAYER_APP):
        cmd += ["--ws", "websockets-sansio"]
    return cmd


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not listen within {timeout} s")


@dataclass
class Server:
    name: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def rss_bytes(self) -> int:
        total = 0
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(p.pid).memory_info().rss
        return total

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def log_tail(self, n: int = 20) -> str:
        out = []
        for log in self.logs:
            with contextlib.suppress(OSError):
                out += log.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)


def start_processes(name: str, app: str, env: dict[str, str], nproc: int, workdir: Path,
                    ws: str = "auto") -> Server:
    """Start nproc uvicorn processes on free ports; a process that fails to start (e.g. its port
    was taken between free_port() and bind, on a machine shared with other runs) is retried."""
    srv = Server(name)
    try:
        for i in range(nproc):
            for attempt in range(3):
                port = free_port()
                log = workdir / f"{name}-{i}-{attempt}.log"
                fh = open(log, "wb")
                proc = subprocess.Popen(uvicorn_cmd(app, port, ws), cwd=ROOT, env=env, stdout=fh,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                fh.close()
                try:
                    wait_port(port, proc)
                except RuntimeError:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(timeout=5)
                    if attempt == 2:
                        raise RuntimeError(f"{name}: {log.read_text(errors='replace')[-2000:]}") from None
                    continue
                srv.procs.append(proc)
                srv.ports.append(port)
                srv.logs.append(log)
                break
    except Exception:
        srv.stop()
        raise
    return srv


class ParleyEnv:
    """One Parley deployment for a scenario: temp data dir, database, users/tokens, rooms."""

    def __init__(self, workdir: Path, *, db: str = "sqlite", redis: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="parley-bench-", dir=workdir))
        self.db = db
        self.pg_name: str | None = None
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
        self.env.update(UNTHROTTLED)
        self.env.update({"PARLEY_DATA_DIR": str(self.dir), "SECRET_KEY": secrets.token_urlsafe(40),
                         "DEBUG": "0", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
        self.env.update(extra_env or {})
        if db == "postgres":
            self.pg_name = f"parley_bench_{os.getpid()}_{secrets.token_hex(3)}"
            self._pg(f'CREATE DATABASE "{self.pg_name}"')
            self.env["DATABASE_URL"] = PG_BASE.rsplit("/", 1)[0] + "/" + self.pg_name
        if redis:
            self.env["REDIS_URL"] = REDIS_URL
            self.env["PARLEY_REDIS_PREFIX"] = f"parley-bench-{os.getpid()}-{secrets.token_hex(3)}"
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env,
                       check=True, timeout=300)

    def _pg(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(PG_BASE, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def mint(self, users: int, rooms: list[str] | int, prefix: str = "b") -> dict:
        import json

        out = self.dir / f"tokens-{prefix}.json"
        spec = str(rooms) if isinstance(rooms, int) else ",".join(rooms)
        subprocess.run([PY, "-m", "bench.mint_tokens", "--users", str(users), "--rooms", spec,
                        "--prefix", prefix, "--out", str(out)], cwd=ROOT, env=self.env, check=True,
                       timeout=600)
        return json.loads(out.read_text())

    def start(self, nproc: int = 1, ws: str = "auto", name: str = "parley", app: str = PARLEY_APP) -> Server:
        return start_processes(name, app, self.env, nproc, self.dir, ws)

    def cleanup(self) -> None:
        if self.pg_name:
            with contextlib.suppress(Exception):
                self._pg(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        if "PARLEY_REDIS_PREFIX" in self.env:
            delete_redis_prefix(self.env["PARLEY_REDIS_PREFIX"])
        shutil.rmtree(self.dir, ignore_errors=True)


def delete_redis_prefix(prefix: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])


def start_baseline(kind: str, workdir: Path, nproc: int = 1, ws: str = "auto") -> tuple[Server, str | None]:
    """kind: bare | tutorial-memory | tutorial-redis. Returns (server, redis prefix to delete)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "REDIS_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(UNCAPPED_CONNECTIONS)
    prefix = None
    if kind == "bare":
        app = "bench.baselines.bare_asgi:app"
    elif kind in ("tutorial-memory", "tutorial-redis"):
        app = "bench.baselines.tutorial_asgi:application"
        env["BENCH_LAYER"] = "memory" if kind == "tutorial-memory" else "redis_pubsub"
        if kind == "tutorial-redis":
            prefix = f"bench-tut-{os.getpid()}-{secrets.token_hex(3)}"
            env["REDIS_URL"] = REDIS_URL
            env["BENCH_REDIS_PREFIX"] = prefix
    else:
        raise ValueError(kind)
    return start_processes(kind, app, env, nproc, workdir, ws), prefix
