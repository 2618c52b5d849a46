"""deploy/parley@.service: systemd accepts it, its settings fit Parley's, and its commands, run by
hand as systemd would run them (with the example environment file), start a server that drains on
SIGTERM within TimeoutStopSec.

The unit and deploy/parley.env are rendered for this checkout: /srv/parley becomes the repository
and the environment file a temp copy; nothing else changes.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from config.serve import FD_HEADROOM
from parley import limits
from tests.support.server import REPO, ServerProcess, free_port

UNIT = REPO / "deploy" / "parley@.service"
ENV_FILE = REPO / "deploy" / "parley.env"
DOCS = REPO / "docs" / "deploy.md"
CHECKOUT = "/srv/parley"


def directives(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit, every value of a repeated key in order (sections ignored)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(unit: dict[str, list[str]], key: str) -> str:
    values = unit[key]
    assert len(values) == 1, f"{key} appears {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def rendered(env_file: Path) -> str:
    text = UNIT.read_text()
    assert text.count(f"{CHECKOUT}/.venv/bin/python") == 2 and f"WorkingDirectory={CHECKOUT}\n" in text
    text = text.replace(f"{CHECKOUT}/.venv/bin/python", str(REPO / ".venv" / "bin" / "python"))
    text = text.replace(f"WorkingDirectory={CHECKOUT}\n", f"WorkingDirectory={REPO}\n")
    return text.replace("EnvironmentFile=/etc/parley/parley.env", f"EnvironmentFile={env_file}")


def test_the_unit_runs_what_the_docs_say_with_parleys_limits() -> None:
    unit = directives(UNIT.read_text())
    start = one(unit, "ExecStart")
    assert start == f"{CHECKOUT}/.venv/bin/python -m config.serve --host 127.0.0.1 --port %i"
    assert f"ExecStart={start}" in DOCS.read_text()
    assert one(unit, "ExecStartPre") == f"{CHECKOUT}/.venv/bin/python manage.py migrate --noinput"
    assert one(unit, "KillSignal") == "SIGTERM"
    # systemd must not SIGKILL a process still draining its sockets.
    assert seconds(one(unit, "TimeoutStopSec")) >= 2 * limits.SHUTDOWN_GRACE_SECS.default
    assert int(one(unit, "LimitNOFILE")) >= limits.MAX_CONNECTIONS.default + FD_HEADROOM
    assert one(unit, "Restart") in ("on-failure", "always")
    assert one(unit, "EnvironmentFile") == "/etc/parley/parley.env"
    assert "FORWARDED_ALLOW_IPS=127.0.0.1,::1" in unit["Environment"]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here (the structural test above still runs)")
    env_file = tmp_path / "parley.env"
    shutil.copy(ENV_FILE, env_file)
    (tmp_path / "parley@.service").write_text(rendered(env_file))
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "parley@8001.service")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr


def environment(unit: dict[str, list[str]], env_file: Path) -> dict[str, str]:
    """What systemd gives the process: Environment= lines, then the EnvironmentFile over them."""
    env: dict[str, str] = {}
    for line in unit["Environment"]:
        key, _, value = line.partition("=")
        env[key] = value
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def get(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@pytest.mark.slow
def test_the_units_commands_start_a_server_that_drains_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    # The example environment file as shipped, but on SQLite (no shared services in this test).
    env_file = tmp_path / "parley.env"
    text = ENV_FILE.read_text()
    for line in ("DATABASE_URL=postgres://parley:PASSWORD@127.0.0.1:5432/parley",
                 "REDIS_URL=redis://127.0.0.1:6379/0", "ALLOWED_HOSTS=chat.example.com",
                 "STATIC_ROOT=/srv/parley/static"):
        assert line in text
    text = (text.replace("DATABASE_URL=postgres://parley:PASSWORD@127.0.0.1:5432/parley", "DATABASE_URL=")
                .replace("REDIS_URL=redis://127.0.0.1:6379/0", "REDIS_URL=")
                .replace("ALLOWED_HOSTS=chat.example.com", "ALLOWED_HOSTS=chat.example.com,127.0.0.1")
                .replace("STATIC_ROOT=/srv/parley/static", f"STATIC_ROOT={tmp_path / 'static'}"))
    env_file.write_text(text)
    unit = directives(rendered(env_file).replace("%i", str(port)))
    base = ServerProcess(data_dir=tmp_path / "base").env()  # the machine's PATH etc., nothing of ours
    env = {**{k: v for k, v in base.items() if not k.startswith(("PARLEY_", "DJANGO_"))},
           **environment(unit, env_file), "PARLEY_DATA_DIR": str(tmp_path / "state"),
           "PARLEY_ENV_FILE": "", "DJANGO_SETTINGS_MODULE": "config.settings"}
    cwd = one(unit, "WorkingDirectory")
    pre = subprocess.run(shlex.split(one(unit, "ExecStartPre")), cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(shlex.split(one(unit, "ExecStart")), cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 60
        status = 0
        while status != 200:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                # nginx says the client came over https: from loopback that is believed, so
                # SECURE_SSL_REDIRECT (on in the example file) lets the request through …
                status = get(url, {"X-Forwarded-Proto": "https", "Host": "chat.example.com"})
            except OSError:
                time.sleep(0.2)
        # … while a plain-http request is sent to https.
        assert get(url, {"Host": "chat.example.com"}) == 301
        proc.send_signal(signal.SIGTERM)
        # uvicorn drains, then ends by the signal it got (systemd counts death by SIGTERM as a
        # clean stop), well within the time systemd gives it.
        assert proc.wait(seconds(one(unit, "TimeoutStopSec"))) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert f"Parley is running at http://127.0.0.1:{port}/" in (tmp_path / "server.log").read_text()
