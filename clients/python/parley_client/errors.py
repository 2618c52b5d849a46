"""Exceptions raised by the client."""

from __future__ import annotations

from typing import Any


class ParleyError(Exception):
    """The server refused a request with an `error` frame (docs/protocol.md §6)."""

    def __init__(self, code: str, message: str = "", frame: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.frame = frame or {}


class ConnectionLost(Exception):
    """The socket closed while a request was in flight (internal: requests retry on the next one)."""


class AuthError(ParleyError):
    """The handshake was refused (HTTP 403) or the server closed with 4401: the client stops."""


class ClientClosed(Exception):
    """The client was closed (by `close()` or a fatal error) before the request completed."""
