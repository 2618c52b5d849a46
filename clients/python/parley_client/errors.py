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


class SendFailed(ParleyError):
    """A send that cannot succeed as it is (its room was lost, the room is archived, the text is
    refused…). Nothing was stored. It carries the message, never dropped silently: `room`,
    `text`, `client_id`, `reply_to`, `attachments`; `code` and `message` are the refusal's. The
    client also emits a `send_failed` event and keeps it in `client.failed_sends` until retried
    or discarded."""

    def __init__(self, code: str, message: str = "", frame: dict[str, Any] | None = None, *, room: str,
                 text: str, client_id: str, reply_to: int | None = None, attachments: tuple[int, ...] = ()) -> None:
        super().__init__(code, message, frame)
        self.room = room
        self.text = text
        self.client_id = client_id
        self.reply_to = reply_to
        self.attachments = attachments

    def event(self) -> dict[str, Any]:
        """The `send_failed` event of client.events()."""
        return {"type": "send_failed", "room": self.room, "client_id": self.client_id, "text": self.text,
                "reply_to": self.reply_to, "attachments": list(self.attachments), "code": self.code,
                "message": self.message}


class ConnectionLost(Exception):
    """The socket closed while a request was in flight (internal: requests retry on the next one)."""


class AuthError(ParleyError):
    """The handshake was refused (HTTP 403) or the server closed with 4401: the client stops."""


class ClientClosed(Exception):
    """The client was closed (by `close()` or a fatal error) before the request completed."""
