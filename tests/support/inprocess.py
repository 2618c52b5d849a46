"""config.asgi.application under a real uvicorn inside the test's own event loop.

Unlike tests/support/server.py (a subprocess), the test can reach into the server process: patch
a class, look at its tasks, publish on its hub. The same flags as scripts/serve: uvicorn's
websockets-sansio implementation, permessage-deflate off.

Use with `from tests.support.inprocess import *` in a test module (the `server` fixture).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
import websockets

from tests.support.server import free_port

__all__ = ["open_and_join", "server"]


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """config.asgi.application under uvicorn --ws websockets-sansio, deflate off (scripts/serve)."""
    from config.asgi import application

    port = free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, ws="websockets-sansio",
                            ws_per_message_deflate=False, lifespan="off", log_level="warning")
    srv = uvicorn.Server(config)
    task = asyncio.ensure_future(srv.serve())
    while not srv.started:
        assert not task.done(), task.exception()
        await asyncio.sleep(0.02)
    try:
        yield f"ws://127.0.0.1:{port}/ws/chat/"
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 10)


async def open_and_join(url: str, token: str, room: str, **kw: Any) -> Any:
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                  compression=None, **kw)
    await ws.send(json.dumps({"type": "join", "ref": "j", "room": room}))
    while json.loads(await ws.recv()).get("ref") != "j":
        pass
    return ws
