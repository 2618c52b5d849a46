"""Real Parley server processes (and private Redis and PostgreSQL servers) for tests, benchmarks and drills.

    server = ServerProcess(database_url=..., redis_url=..., extra_env={"PARLEY_RESUME_MAX_GAP": "5"})
    server.start()            # python -m config.serve on a free port; waits for /healthz
    server.kill()             # SIGKILL, no cleanup (the port stays the same for start())
    server.start()            # same port again
    server.stop()             # SIGTERM, then SIGKILL after a grace period

Inside pytest, `database_url_for_tests()` (called from a `django_db(transaction=True)` test)
points the subprocess at the very database pytest-django created, so the SQLite+memory run and
the PostgreSQL+Redis run of the suite both exercise it. Without a database_url the process gets
a private SQLite file in its data dir, migrated by `start()`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
# The interpreter running the tests when it is a venv's (scripts/test's .venv or .venv-3.13: the
# servers then run on the Python under test), else the repository's .venv.
_REPO_VENV = REPO / ".venv" / "bin" / "python"
PYTHON = sys.executable if sys.prefix != sys.base_prefix or not _REPO_VENV.exists() else str(_REPO_VENV)


def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url_for_tests() -> str:
    """DATABASE_URL of the database the current (pytest-django) test process uses.

    Call it inside a `django_db(transaction=True)` test or fixture: data the subprocess commits
    is then visible to the test's ORM and is flushed after the test like the test's own.
    """
    from django.db import connection

    s = connection.settings_dict
    engine = s["ENGINE"]
    if engine.endswith("sqlite3"):
        return "sqlite:///" + str(Path(s["NAME"]).resolve())
    if "postgresql" in engine:
        user = quote(s.get("USER") or "", safe="")
        password = quote(s.get("PASSWORD") or "", safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = s.get("HOST") or "127.0.0.1"
        port = s.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{quote(s['NAME'], safe='')}"
    raise RuntimeError(f"no DATABASE_URL for engine {engine}")


def redis_url_for_tests() -> str:
    from parley.conf import parley_settings

    return parley_settings.REDIS_URL or ""


class ServerProcess:
    """One `python -m config.serve` (uvicorn, production flags) subprocess with its own data dir
    and port."""

    def __init__(
        self,
        *,
        port: int | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        extra_env: dict[str, str] | None = None,
        data_dir: str | Path | None = None,
        secret_key: str = "test-only-secret-key",
        log_level: str = "WARNING",
        server_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="parley-srv-"))
        self.database_url = database_url or ""
        self.redis_url = redis_url or ""
        self.redis_prefix = redis_prefix or f"pt{uuid.uuid4().hex[:10]}"
        self.extra_env = dict(extra_env or {})
        self.secret_key = secret_key
        self.log_level = log_level
        self.server_args = list(server_args or [])  # more uvicorn options, e.g. ["--access-log"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "server.log"
        self.starts = 0
        self._migrated = False

    # --- environment --------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PARLEY_", "DJANGO_", "PYTEST_")) and k not in ("DATABASE_URL", "REDIS_URL")}
        env.update({
            "PARLEY_DATA_DIR": str(self.data_dir),
            "SECRET_KEY": self.secret_key,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "PARLEY_REDIS_PREFIX": self.redis_prefix,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "LOG_LEVEL": self.log_level,
            "PYTHONUNBUFFERED": "1",
            # Hermetic: a developer's .env must not reach the servers tests start.
            "PARLEY_ENV_FILE": "",
            # Tests stop many servers; production waits PARLEY_SHUTDOWN_GRACE_SECS' default.
            "PARLEY_SHUTDOWN_GRACE_SECS": "1",
        })
        env.update(self.extra_env)
        return env

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- management commands ------------------------------------------------------------------

    def manage(self, *args: str, timeout: float = 60) -> str:
        out = subprocess.run([PYTHON, "manage.py", *args], cwd=REPO, env=self.env(), capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def migrate(self) -> None:
        self.manage("migrate", "--noinput", "-v", "0")
        self._migrated = True

    def create_token(self, username: str) -> str:
        """A bearer token for username (created if missing), via manage.py create_token."""
        return self.manage("create_token", username, "--create-user").strip().splitlines()[-1]

    # --- process control ----------------------------------------------------------------------

    def start(self, timeout: float = 30) -> ServerProcess:
        if self.running:
            return self
        if not self.database_url and not self._migrated:
            self.migrate()  # a private SQLite file: fresh, so migrate it
        # The production launcher (config/serve.py): the flags under test are the flags served.
        cmd = [PYTHON, "-m", "config.serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", self.log_level.lower(), *self.server_args]
        log = open(self.log_path, "ab")
        log.write(f"\n--- start {self.starts + 1} ---\n".encode())
        log.flush()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.starts += 1
        self.wait_healthy(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.http_url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server on port {self.port} not healthy after {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to close sockets or clean up presence."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing answers (a hung server)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    def stop(self, grace: float = 5) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- HTTP API -----------------------------------------------------------------------------

    def api(self, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.http_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code} {exc.read()[:500]!r}") from None

    def all_messages(self, room: str, token: str) -> list[dict[str, Any]]:
        """Every message of a room, ascending, paged through GET /api/rooms/<slug>/messages."""
        out: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            query = "?limit=100" + (f"&before={before}" if before else "")
            page = self.api("GET", f"/api/rooms/{room}/messages{query}", token)
            out[:0] = page["messages"]
            if not page["has_more"] or not page["messages"]:
                return out
            before = page["messages"][0]["seq"]


class RedisProcess:
    """A private, non-persistent redis-server on a free port (can be killed and restarted)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="parley-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisProcess:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresProcess:
    """A private PostgreSQL server (initdb into a temporary directory, trust auth, loopback and a
    socket in that directory) on a free port, which a test may stop and start again.

        pg = PostgresProcess().start()
        pg.url  # postgres://postgres@127.0.0.1:<port>/postgres
        pg.stop(); pg.start()
        pg.cleanup()

    As root (initdb refuses root), the server runs as the `postgres` user through runuser.
    """

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="parley-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._initialised = False

    @classmethod
    def available(cls) -> bool:
        return (cls.BIN / "initdb").exists() and (os.geteuid() != 0 or shutil.which("runuser") is not None)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed:\n{out.stdout}\n{out.stderr}\n{self.log_tail()}")

    def start(self, timeout: float = 30) -> PostgresProcess:
        if not self._initialised:
            if os.geteuid() == 0:
                shutil.chown(self.dir, "postgres", "postgres")
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync")
            self._initialised = True
        # -w: wait until it accepts connections. fsync off: a test's data needs no durability.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", str(int(timeout)),
                  "-o", f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start", timeout=timeout + 10)
        return self

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut off, as in an outage."""
        if self._initialised and (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
