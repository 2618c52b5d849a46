"""A raw WebSocket client over a plain TCP socket: one that shakes hands and then reads nothing.

What a client that stopped reading looks like to the server (tests/test_slow_reader.py,
tests/test_server_stalled.py). Its small receive buffer stops Linux autotuning it up to
megabytes on loopback, so the server's side fills up within a few frames.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

from websockets.frames import Frame, Opcode

RECEIVE_BUFFER_BYTES = 16 * 1024


def handshake(port: int, token: str) -> socket.socket:
    """A socket on 127.0.0.1:port that completed the WebSocket handshake with a bearer token."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def send_frame(sock: socket.socket, frame: dict[str, Any]) -> None:
    """One masked text frame, as a client must send it."""
    sock.sendall(Frame(Opcode.TEXT, json.dumps(frame).encode()).serialize(mask=True, extensions=[]))


def stalled_client(port: int, token: str, room: str = "lobby") -> socket.socket:
    """Shakes hands, joins `room`, and from then on reads nothing."""
    sock = handshake(port, token)
    send_frame(sock, {"type": "join", "room": room, "limit": 1})
    return sock
