"""parley-client.js in node against a real server process, across a server restart.

Needs node ≥ 20 (WebSocket with --experimental-websocket), not Chromium. Marked `browser` with the
page tests because, like them, it talks to a server subprocess on SQLite whatever DATABASE_URL /
REDIS_URL say, so the PostgreSQL + Redis run (`-m "not browser"`) would only repeat it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest

from tests.browser.server import REPO, Server

REQUIRE_SERVICES = os.environ.get("PARLEY_REQUIRE_SERVICES") == "1"
SCRIPT = REPO / "clients" / "js" / "live" / "restart.live.mjs"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _node() -> str:
    node = shutil.which("node")
    if not node:
        if REQUIRE_SERVICES:
            pytest.fail("node is not installed but PARLEY_REQUIRE_SERVICES=1")
        pytest.skip("node is not installed; the JS client live test NOT run")
    return node


def test_js_client_resumes_and_resends_across_a_server_restart(server: Server) -> None:
    node = _node()
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    env = {**os.environ, "PARLEY_URL": server.url,
           "PARLEY_TOKEN_A": server.create_token("js_live_a"), "PARLEY_TOKEN_B": server.create_token("js_live_b")}
    proc = subprocess.Popen([node, "--experimental-websocket", "--no-warnings", str(SCRIPT)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        for line in proc.stdout:
            out.append(line.rstrip())
            if line.startswith("STEP stop"):
                server.stop()
            elif line.startswith("STEP start"):
                server.start()
            else:
                continue
            proc.stdin.write("ok\n")
            proc.stdin.flush()
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
        if server.proc is None:
            server.start()
    stderr = proc.stderr.read() if proc.stderr else ""
    result: Any = out[-1] if out else ""
    assert proc.returncode == 0 and result.startswith("OK"), f"{out}\n{stderr[-2000:]}\n{server.log_tail()}"
