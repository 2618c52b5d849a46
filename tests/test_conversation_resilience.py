"""Protocol version 2's promise under faults: messages, edits, deletes and reactions interleaved by
three users whose server is SIGKILLed twice mid-stream and whose sockets are cut; each member
resumes with after_seq + epoch (docs/protocol.md §10) and must receive every log entry once, in
seq order, so that at the end its fold of the entries equals the database's state of every
message. Real server subprocesses on the suite's database and channel backend (SQLite +
in-memory, or PostgreSQL + Redis), raw `websockets` clients written from the protocol alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import pytest
from channels.db import database_sync_to_async

from parley.models import Message, Room
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import closing_db, make_room, make_user_token, wait_for
from tests.test_conversations import db_view, fold

pytestmark = pytest.mark.django_db(transaction=True)

ROOM = "lobby"
KINDS = ("message", "edit", "delete", "reaction")


class Member:
    """One user's version 2 socket that reconnects and resumes on its own, folding each entry."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.state: dict[int, dict[str, Any]] = {}
        self.high = 0
        self.epoch: str | None = None
        self.me = 0
        self.ws: Any = None
        self.live = asyncio.Event()
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ref = 0
        self.connections = 0
        self.task = asyncio.create_task(self.run())

    def take(self, frame: dict[str, Any]) -> None:
        seq = frame["message"]["seq"] if frame["type"] == "message" else frame["seq"]
        if seq <= self.high:
            raise AssertionError(f"entry {seq} again (high {self.high})")
        if seq != self.high + 1:
            raise AssertionError(f"entry {seq} after {self.high}: a gap")
        self.high = seq
        fold(self.state, frame, self.me)

    async def run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                async with connect(f"{self.url}?protocol=2", additional_headers={"Authorization": f"Bearer {self.token}"},
                                   ping_interval=None, proxy=None, open_timeout=3, max_size=2**22) as ws:
                    hello = json.loads(await ws.recv())
                    assert hello["type"] == "hello" and hello["protocol"] == 2
                    self.me = hello["user"]["id"]
                    join: dict[str, Any] = {"type": "join", "room": ROOM, "ref": "join"}
                    if self.epoch is not None:
                        join.update(after_seq=self.high, epoch=self.epoch)
                    await ws.send(json.dumps(join))
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame.get("ref") == "join":
                            break
                    assert frame["type"] == "joined", frame
                    if self.epoch is None:
                        self.epoch = frame["room"]["epoch"]
                        for m in frame["messages"]:
                            fold(self.state, {"type": "message", "message": m}, self.me)
                        self.high = frame["room"]["last_seq"] if not frame["messages"] else frame["messages"][-1]["seq"]
                    else:
                        assert frame["recovered"] is True, frame  # the gaps here are far inside the window
                        for event in frame["events"]:
                            self.take(event)
                    self.ws = ws
                    self.connections += 1
                    self.live.set()
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame["type"] in KINDS and "ref" not in frame:
                            self.take(frame)
                        elif "ref" in frame and frame["ref"] in self.replies:
                            self.replies.pop(frame["ref"]).set_result(frame)
            except (TimeoutError, ConnectionClosed, OSError):
                pass
            self.live.clear()
            self.ws = None
            for future in self.replies.values():
                future.cancel()
            self.replies.clear()
            await asyncio.sleep(0.05)

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send until answered: every request here is safe to repeat (sends carry a client_id;
        an edit, delete or reaction repeated changes nothing)."""
        while True:
            await asyncio.wait_for(self.live.wait(), 30)
            self.ref += 1
            ref = f"r{self.ref}"
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self.replies[ref] = future
            try:
                await self.ws.send(json.dumps({**frame, "ref": ref}))
                return await asyncio.wait_for(future, 10)
            except (TimeoutError, asyncio.CancelledError, AttributeError, OSError, Exception) as exc:
                if isinstance(exc, AssertionError):
                    raise
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


@closing_db
def last_seq() -> int:
    return Room.objects.get(slug=ROOM).last_seq


@closing_db
def kinds() -> set[str]:
    return set(Message.objects.filter(room__slug=ROOM).values_list("kind", flat=True))


@pytest.mark.slow
async def test_server_sigkill_and_cut_sockets_every_member_folds_to_the_database(servers: Any) -> None:
    # Each member makes ~22 edits and reactions in a few seconds: past the edit bucket's
    # defaults (burst 20, then 2/s), which tests/test_client_conversations.py tests.
    server = servers(extra_env={"PARLEY_EDITS_PER_SEC": "100000", "PARLEY_EDITS_BURST": "100000"})
    await make_room(ROOM)
    tokens = [(await make_user_token(name))[1] for name in ("ada", "bob", "cy")]
    members = [Member(server.ws_url, token) for token in tokens]
    await wait_for(lambda: all(m.live.is_set() for m in members), 15, "every member to join")
    rng = random.Random(1515)
    mine: list[list[int]] = [[], [], []]
    alive: list[int] = []

    async def act(i: int, step: int) -> None:
        m = members[i]
        roll = rng.random()
        if roll < 0.45 or not alive or (not mine[i] and roll < 0.7):
            extra = {"reply_to": rng.choice(alive)} if alive and rng.random() < 0.3 else {}
            reply = await m.request({"type": "send", "room": ROOM, "text": f"m{step} @bob", "client_id": f"c{i}-{step}", **extra})
            if reply["type"] == "error" and reply["code"] == "message_deleted":
                return  # its target was deleted meanwhile
            assert reply["type"] == "ack", reply
            if not reply["duplicate"]:
                mine[i].append(reply["seq"])
                alive.append(reply["seq"])
        elif roll < 0.6:
            reply = await m.request({"type": "edit", "room": ROOM, "seq": rng.choice(mine[i]), "text": f"e{step}"})
            assert reply["type"] == "edited" or reply.get("code") == "message_deleted", reply
        elif roll < 0.7:
            seq = mine[i].pop(rng.randrange(len(mine[i])))
            if seq in alive:
                alive.remove(seq)
            reply = await m.request({"type": "delete", "room": ROOM, "seq": seq})
            assert reply["type"] == "deleted", reply
        else:
            mine_now = [(s, e) for s, entry in m.state.items() for e in entry["mine"] if s in alive]
            if mine_now and rng.random() < 0.4:
                (seq, emoji), kind = rng.choice(mine_now), "unreact"
            else:
                seq, emoji, kind = rng.choice(alive), rng.choice("👍🎉😀"), "react"
            reply = await m.request({"type": kind, "room": ROOM, "seq": seq, "emoji": emoji})
            assert reply["type"] == "reacted" or reply.get("code") == "message_deleted", reply

    async def chaos() -> None:
        for _ in range(2):
            await asyncio.sleep(0.8)
            await asyncio.to_thread(server.kill)  # no close frames, nothing flushed
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start)
            await wait_for(lambda: all(m.live.is_set() for m in members), 20, "every member to resume")
            await asyncio.sleep(0.5)
            victim = rng.choice(members)  # and one socket cut without a close frame
            if victim.ws is not None:
                victim.ws.transport.abort()

    async def actor(i: int) -> None:
        for step in range(40):
            await act(i, step)
            await asyncio.sleep(rng.uniform(0, 0.05))

    chaos_task = asyncio.create_task(chaos())
    await asyncio.gather(*(actor(i) for i in range(3)))
    await chaos_task
    total = await last_seq()
    await wait_for(lambda: all(m.high == total for m in members), 20,
                   f"every member to reach seq {total}; at {[m.high for m in members]}")
    await asyncio.sleep(0.3)  # a duplicate would arrive now (and fail take())
    for m in members:
        await m.stop()
    assert server.starts == 3 and all(m.connections >= 3 for m in members), [m.connections for m in members]
    assert await kinds() == set(Message.Kind.values)
    room = await database_sync_to_async(Room.objects.get)(slug=ROOM)
    for m in members:
        assert m.high == total
        assert m.state == await db_view(room, m.me)


async def test_an_unknown_protocol_version_is_a_400_under_uvicorn(servers: Any) -> None:
    """docs/protocol.md §10: the handshake of ?protocol=3 is answered 400 with a JSON error."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    server = servers()
    _, token = await make_user_token("ada")
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{server.ws_url}?protocol=3", additional_headers={"Authorization": f"Bearer {token}"},
                      proxy=None, open_timeout=5)
    response = refused.value.response
    assert response.status_code == 400
    assert json.loads(response.body)["error"]["code"] == "unsupported_protocol"
    async with connect(f"{server.ws_url}?protocol=2", additional_headers={"Authorization": f"Bearer {token}"},
                       proxy=None, open_timeout=5) as ws:
        assert json.loads(await ws.recv())["protocol"] == 2
