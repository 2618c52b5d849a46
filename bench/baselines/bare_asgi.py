"""Baseline: a bare ASGI broadcast app, no framework, no channel layer.

Mini-protocol shared by all baselines (the Channels tutorial's): connect to /ws/chat/<room>/,
send `{"message": "..."}`; every socket in the room (the sender's included) receives
`{"message": "..."}`. The broadcast is encoded once and the app awaits each socket's send in turn,
which is what "a bare ASGI app that loops over its sockets" means in the issue.

Run: python -m uvicorn bench.baselines.bare_asgi:app --lifespan off ...
"""

from __future__ import annotations

from typing import Any

import orjson

rooms: dict[str, set[Any]] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})
        return
    if scope["type"] != "websocket":
        return
    parts = scope["path"].strip("/").split("/")
    if len(parts) != 3 or parts[:2] != ["ws", "chat"]:
        await receive()
        await send({"type": "websocket.close", "code": 1008})
        return
    room = rooms.setdefault(parts[2], set())
    try:
        while True:
            event = await receive()
            kind = event["type"]
            if kind == "websocket.connect":
                room.add(send)
                await send({"type": "websocket.accept"})
            elif kind == "websocket.receive":
                text = event.get("text")
                if text is None:
                    continue
                message = orjson.loads(text)["message"]
                out = orjson.dumps({"message": message}).decode()
                frame = {"type": "websocket.send", "text": out}
                for peer in list(room):
                    try:
                        await peer(frame)
                    except Exception:  # a peer that closed meanwhile
                        room.discard(peer)
            elif kind == "websocket.disconnect":
                return
    finally:
        room.discard(send)
