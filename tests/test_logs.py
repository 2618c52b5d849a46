"""LOG_FORMAT=json on a real server process: every line JSON, with the ids, never a secret.

The server (the production launcher, uvicorn's access log on) is given a token in a header and
in a query string, a message with a distinctive text, a request that Django logs (a 404) and a
socket that floods until it is closed (a warning logged in the socket's own task). Then every
line it wrote parses as one JSON object, the socket's and the request's lines carry their ids,
and neither the token nor the text is anywhere in its output.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from parley import logs
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import RawSocket, make_room, make_user_token


def get(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers


TEXT = "zebra-quartz-7781 the secret plans"


@pytest.mark.django_db(transaction=True)
async def test_json_lines_with_ids_and_no_secrets(servers: Any) -> None:
    server = servers(log_level="INFO", server_args=["--access-log"], extra_env={
        "LOG_FORMAT": "json",
        # Two frames (the join and the send) pass; the pings after them are refused, and the
        # second refusal closes the socket (4429) with a warning.
        "PARLEY_FRAMES_PER_SEC": "0.01", "PARLEY_FRAMES_BURST": "2", "PARLEY_RATE_LIMIT_STRIKES": "2"})
    await make_room("logged")
    _name, token = await make_user_token()

    sock = await RawSocket.open(server.ws_url + f"?token={token}", token)
    await sock.request({"type": "join", "room": "logged"})
    ack = await sock.request({"type": "send", "room": "logged", "text": TEXT, "client_id": "l-1"})
    assert ack["type"] == "ack"
    for _ in range(3):
        await sock.send({"type": "ping"})
    with pytest.raises(ConnectionClosed) as closed:
        await sock.drain()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429

    status, headers = await asyncio.to_thread(get, f"{server.http_url}/api/nothing-here?token={token}",
                                              {"Authorization": f"Bearer {token}", "X-Request-ID": "req-abc-123"})
    assert status == 404
    assert headers["X-Request-ID"] == "req-abc-123"
    server.stop()

    output = server.log_path.read_text()
    print(output)  # shown when the test fails
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("--- start")]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)

    flooding = [r for r in records if "kept flooding" in r["message"]]
    assert len(flooding) == 1 and flooding[0]["level"] == "WARNING"
    assert flooding[0]["socket_id"].startswith("hub.") and isinstance(flooding[0]["user_id"], int)
    not_found = [r for r in records if r["logger"] == "django.request"]
    assert not_found and not_found[0]["request_id"] == "req-abc-123"
    assert any(r["logger"] == "uvicorn.access" for r in records)  # uvicorn's lines are JSON too

    assert token not in output
    assert token[4:20] not in output
    assert "zebra-quartz" not in output


def test_redaction_is_a_second_line_of_defence() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "header %s, url %s, %s",
                               ("Authorization: Bearer abc.def-123", "/ws/?token=s3cr3t&x=1",
                                "raw prl_" + "A" * 43), None)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "header Authorization: Bearer [redacted], url /ws/?token=[redacted]&x=1, raw [redacted]"
    assert logs.redact("token revoked for user 5") == "token revoked for user 5"
    plain = logs.PlainFormatter("%(message)s").format(record)
    assert "s3cr3t" not in plain and "abc.def" not in plain


def test_ids_come_from_the_record_first_then_the_context() -> None:
    token = logs.socket_id.set("hub.context")
    try:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
        assert json.loads(logs.JsonFormatter().format(record))["socket_id"] == "hub.context"
        record.socket_id = "hub.extra"
        assert json.loads(logs.JsonFormatter().format(record))["socket_id"] == "hub.extra"
    finally:
        logs.socket_id.reset(token)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    assert "socket_id" not in json.loads(logs.JsonFormatter().format(record))
    record.request_id, record.user_id = "r-1", 7
    assert logs.PlainFormatter("%(message)s").format(record) == "m [request_id=r-1 user_id=7]"
