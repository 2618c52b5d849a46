"""Revocations made in another process close a real server's sockets (docs/security.md).

The server runs the embedded default — no Redis, so nothing tells it about a revocation made
elsewhere — and the revocations come from `manage.py shell -c`, as an operator would make
them: the admin's plain save, services.token_revoke, a `QuerySet.update` (no signal at all) and
a deleted token row. parley.revocation's periodic check must close idle sockets within
PARLEY_REVOCATION_CHECK_SECS, and every command that does work must refuse at once.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from channels.db import database_sync_to_async

from tests.support.fixtures import RawSocket, make_room, make_user_token, servers  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHECK_SECS = 1
# A busy 2-core box: the check's period, its query, and the close reaching the client.
CLOSE_BOUND_SECS = CHECK_SECS + 4

REVOKE = """
from django.contrib.auth import get_user_model
from parley import services
from parley.models import ApiToken
User = get_user_model()
ada = User.objects.get(username="ada")
ada.is_active = False
ada.save()  # a plain save, as the admin's user form does
services.token_revoke(token=ApiToken.objects.get(user__username="bob"))
User.objects.filter(username="carol").update(is_active=False)  # no signal at all
ApiToken.objects.filter(user__username="dave").delete()
"""


async def close_code(sock: RawSocket, timeout: float) -> int | None:
    """The close code the server sent (None: still open after `timeout`), reading frames into
    sock.inbox until it closes."""
    try:
        async with asyncio.timeout(timeout):
            async for raw in sock.ws:
                sock.inbox.append(json.loads(raw))
    except TimeoutError:
        return None
    except websockets.ConnectionClosed:
        pass
    return sock.ws.close_code


async def open_users(server, names: list[str]) -> dict[str, RawSocket]:
    socks = {}
    for name in names:
        _, token = await make_user_token(name)
        socks[name] = await RawSocket.open(server.ws_url, token)
        joined = await socks[name].request({"type": "join", "room": "lobby"})
        assert joined["type"] == "joined", joined
    return socks


@database_sync_to_async
def stored_texts() -> list[str]:
    from django.db import connection

    from parley.models import Message

    try:
        return list(Message.objects.values_list("text", flat=True))
    finally:
        connection.close()


async def test_revocations_from_a_shell_close_idle_sockets_within_the_check_period(servers):  # noqa: F811
    await make_room("lobby")
    server = servers(redis_url="", extra_env={"PARLEY_REVOCATION_CHECK_SECS": str(CHECK_SECS)})
    socks = await open_users(server, ["ada", "bob", "carol", "dave", "eve"])
    await asyncio.to_thread(server.manage, "shell", "-c", REVOKE)
    revoked_at = time.monotonic()
    codes = await asyncio.gather(*(close_code(socks[n], CLOSE_BOUND_SECS) for n in ("ada", "bob", "carol", "dave")))
    took = time.monotonic() - revoked_at
    assert codes == [4401, 4401, 4401, 4401], codes
    assert took <= CLOSE_BOUND_SECS
    assert (await socks["eve"].request({"type": "ping"}))["type"] == "pong"  # nothing of hers was revoked
    await socks["eve"].close()


async def test_every_command_refuses_lost_credentials_at_once(servers):  # noqa: F811
    """With the periodic check off, only the commands can notice: a send right after the
    deactivation is neither acked nor stored, and history, typing and join refuse too; each
    closes the socket with 4401."""
    await make_room("lobby")
    server = servers(redis_url="", extra_env={"PARLEY_REVOCATION_CHECK_SECS": "0"})
    socks = await open_users(server, ["ada", "bob", "carol", "dave", "eve"])
    await asyncio.to_thread(server.manage, "shell", "-c", REVOKE)
    frames = {
        "ada": {"type": "send", "room": "lobby", "text": "after deactivation", "client_id": "a1"},
        "bob": {"type": "history", "room": "lobby"},
        "carol": {"type": "send", "room": "lobby", "text": "after update()", "client_id": "c1"},
        "dave": {"type": "join", "room": "lobby"},
    }
    for name, frame in frames.items():
        await socks[name].send({**frame, "ref": "r"})
    await socks["eve"].send({"type": "typing", "room": "lobby"})  # she may: delivered to the others
    codes = {name: await close_code(socks[name], 10) for name in frames}
    assert codes == {"ada": 4401, "bob": 4401, "carol": 4401, "dave": 4401}
    answers = {name: [f["type"] for f in socks[name].inbox if f.get("ref") == "r"] for name in frames}
    assert answers == {name: [] for name in frames}  # no ack, no history page, no joined
    assert await stored_texts() == []
    ok = await socks["eve"].request({"type": "send", "room": "lobby", "text": "still here", "client_id": "e1"})
    assert ok["type"] == "ack", ok
    assert await stored_texts() == ["still here"]
    await socks["eve"].close()


async def test_typing_of_a_deactivated_user_is_refused(servers):  # noqa: F811
    await make_room("lobby")
    server = servers(redis_url="", extra_env={"PARLEY_REVOCATION_CHECK_SECS": "0"})
    socks = await open_users(server, ["ada", "eve"])
    await asyncio.to_thread(server.manage, "shell", "-c", "from django.contrib.auth import get_user_model; "
                            "get_user_model().objects.filter(username='ada').update(is_active=False)")
    await socks["ada"].send({"type": "typing", "room": "lobby"})
    assert await close_code(socks["ada"], 10) == 4401
    assert not any(f["type"] == "typing" for f in await socks["eve"].drain(0.5))
    await socks["eve"].close()
