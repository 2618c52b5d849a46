"""scripts/serve on a fresh machine: first-run setup (SQLite, migrations, lobby, secret key), a
no-op second run, a real uvicorn server that a `websockets` client can chat through, and
manage.py seeing the same configuration (.env, the generated key) as the server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "scripts" / "serve"
PY = ROOT / ".venv" / "bin" / "python"

pytestmark = pytest.mark.slow


def fresh_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh machine: embedded defaults, no secret, our own data dir."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE",
                        "PARLEY_REDIS_PREFIX", "PARLEY_TEST_DB_NAME", "DEBUG", "PORT", "HOST")}
    env["PARLEY_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def setup_only(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SERVE), "--setup-only"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"  # does not exist yet: serve must create it
    return d


def test_setup_only_on_a_fresh_machine_then_again(data_dir):
    env = fresh_env(data_dir)
    first = setup_only(env)
    assert first.returncode == 0, first.stdout + first.stderr

    db = data_dir / "parley.sqlite3"
    assert db.is_file()
    key_file = data_dir / "secret_key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 50

    with sqlite3.connect(db) as conn:
        applied = {row[0] for row in conn.execute("SELECT app FROM django_migrations")}
        assert {"parley", "auth", "sessions", "admin", "contenttypes"} <= applied
        app_migrations = sorted(r[0] for r in conn.execute("SELECT name FROM django_migrations WHERE app='parley'"))
        rooms = conn.execute("SELECT slug, title, is_private FROM parley_room").fetchall()
    assert rooms == [("lobby", "Lobby", 0)]
    shipped = sorted(p.stem for p in (ROOT / "parley" / "migrations").glob("[0-9]*.py"))
    assert app_migrations == shipped

    second = setup_only(env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert key_file.read_text().strip() == key  # the key is kept, so sessions survive restarts
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM parley_room").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM django_migrations WHERE app='parley'").fetchone() == (len(shipped),)


def test_setup_only_respects_a_given_secret_key(data_dir):
    result = setup_only(fresh_env(data_dir, SECRET_KEY="given-secret-key-for-this-test"))
    assert result.returncode == 0, result.stderr
    assert not (data_dir / "secret_key").exists()


def test_serve_runs_a_server_a_websocket_client_can_chat_through(data_dir, tmp_path):
    port = free_port()
    env = fresh_env(data_dir, HOST="127.0.0.1", PORT=str(port))
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(SERVE)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while url not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "serve never printed its URL:\n" + log_path.read_text()
            time.sleep(0.2)
        health = None
        while health is None:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no /healthz:\n" + log_path.read_text()
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    health = (response.status, json.loads(response.read()))
            except OSError:
                time.sleep(0.2)
        assert health == (200, {"ok": True})

        # A token minted the README's way, with nothing exported: manage.py finds the data dir's
        # generated key and database as the server did.
        minted = subprocess.run([str(PY), "manage.py", "create_token", "x", "--create-user"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=60)
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.splitlines()[-1]
        asyncio.run(_chat(port, token))
    finally:
        stop(proc)
    assert proc.returncode is not None


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a running scripts/serve, then SIGKILL if it has not exited within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _chat(port: int, token: str) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/",
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert hello["type"] == "hello" and hello["user"]["username"] == "x"
        await ws.send(json.dumps({"type": "join", "ref": "j", "room": "lobby"}))
        await ws.send(json.dumps({"type": "send", "ref": "s", "room": "lobby", "text": "hi from serve",
                                  "client_id": "serve-1"}))
        seen: dict[str, dict] = {}
        while not {"joined", "ack", "message"} <= seen.keys():
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            seen.setdefault(frame["type"], frame)
        assert seen["joined"]["ref"] == "j" and seen["joined"]["room"]["slug"] == "lobby"
        assert seen["ack"]["ref"] == "s" and seen["ack"]["seq"] == 1
        assert seen["message"]["message"]["text"] == "hi from serve"

    # Without credentials the upgrade is refused with 403.
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/"):
            pass
    assert refused.value.response.status_code == 403


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PY), "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def tokens_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM parley_apitoken").fetchone()[0]


def test_manage_py_uses_the_key_and_database_setup_made(data_dir):
    env = fresh_env(data_dir)  # no SECRET_KEY anywhere
    assert setup_only(env).returncode == 0
    minted = manage(env, "create_token", "ada", "--create-user")
    assert minted.returncode == 0, minted.stdout + minted.stderr
    assert minted.stdout.splitlines()[-1].startswith("prl_")
    assert tokens_in(data_dir / "parley.sqlite3") == 1
    su = manage({**env, "DJANGO_SUPERUSER_PASSWORD": "a-long-admin-password"}, "createsuperuser",
                "--noinput", "--username", "root", "--email", "root@example.com")
    assert su.returncode == 0, su.stdout + su.stderr


def test_manage_py_reads_the_dotenv_file(tmp_path, data_dir):
    other_db = tmp_path / "from-dotenv.sqlite3"
    dotenv = tmp_path / "dotenv"
    dotenv.write_text(f"# as .env.example\nSECRET_KEY=\nDATABASE_URL=sqlite:///{other_db}\n"
                      f"PARLEY_DATA_DIR={data_dir}\n")
    env = fresh_env(data_dir, PARLEY_ENV_FILE=str(dotenv))
    del env["PARLEY_DATA_DIR"]  # from the file too
    assert manage(env, "migrate", "--noinput", "-v", "0").returncode == 0
    minted = manage(env, "create_token", "ada", "--create-user")
    assert minted.returncode == 0, minted.stdout + minted.stderr
    assert tokens_in(other_db) == 1  # the database .env names, not the default SQLite file
    assert not (data_dir / "parley.sqlite3").exists()
    assert (data_dir / "secret_key").is_file()  # the data dir .env names
    # The environment wins over the file.
    env_db = tmp_path / "from-env.sqlite3"
    assert manage({**env, "DATABASE_URL": f"sqlite:///{env_db}"}, "migrate", "-v", "0").returncode == 0
    assert env_db.is_file()


def test_a_bad_setting_is_reported_as_itself_not_as_an_unknown_command(data_dir):
    out = manage(fresh_env(data_dir, PARLEY_ALLOWED_ORIGINS="sideways"), "create_token", "ada", "--create-user")
    assert out.returncode != 0
    assert "PARLEY_ALLOWED_ORIGINS='sideways': 'sideways' is not an origin" in out.stderr, out.stderr
    assert "Unknown command" not in out.stdout + out.stderr


def test_serve_says_the_port_is_taken_instead_of_running(data_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([str(SERVE)], cwd=ROOT, env=fresh_env(data_dir, PORT=str(port)),
                             capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"port {port} on 127.0.0.1 is in use" in out.stderr, out.stderr
    assert "is running" not in out.stdout + out.stderr


def test_serve_passes_its_arguments_to_uvicorn_and_they_win(data_dir, tmp_path):
    """`scripts/serve --port N …`: options go through to uvicorn after Parley's own, so a port on
    the command line wins over PORT; and a taken port given there is refused the same clear way."""
    assert setup_only(fresh_env(data_dir)).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        refused = subprocess.run([str(SERVE), "--port", str(busy)], cwd=ROOT, env=fresh_env(data_dir),
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0
        assert f"port {busy} on 127.0.0.1 is in use" in refused.stderr, refused.stderr

        port = free_port()
        log_path = tmp_path / "args.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([str(SERVE), "--port", str(port), "--access-log"], cwd=ROOT,
                                    env=fresh_env(data_dir, PORT=str(busy)), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                        assert response.status == 200
                        break
                except OSError:
                    time.sleep(0.2)
            # --access-log reached uvicorn: the request is in its access log.
            deadline = time.monotonic() + 10
            while "GET /healthz" not in log_path.read_text():
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        finally:
            stop(proc)
    assert f"Parley is running at http://127.0.0.1:{port}/" in log_path.read_text()
