"""Uploading a file for a message (docs/protocol.md §14): `POST /api/rooms/<slug>/uploads`.

Files go up over HTTP, not the socket: a multipart body with the API token, read into the
server's storage; the answer's upload object has the id a `send` then names in `attachments`.
The standard library's urllib in a worker thread: no HTTP dependency for one request.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import secrets
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from parley_client.errors import ParleyError

SOCKET_PATH = "ws/chat/"  # where a Parley server mounts its socket, under the site's prefix


def api_base(socket_url: str) -> str:
    """The HTTP API's base URL (ending in /api/) for a socket URL under the same prefix:
    wss://chat.example.com/parley/ws/chat/ → https://chat.example.com/parley/api/."""
    parts = urllib.parse.urlsplit(socket_url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.path.endswith(SOCKET_PATH):
        raise ValueError(f"cannot tell the API's URL from {socket_url!r}: pass api_url=")
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path[: -len(SOCKET_PATH)] + "api/", "", ""))


def _multipart(name: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = f"parley-{secrets.token_hex(12)}"
    quoted = name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{quoted}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(url: str, headers: dict[str, str], body: bytes, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error") or {}
        except ValueError:
            error = {}
        raise ParleyError(str(error.get("code") or f"http_{exc.code}"),
                          str(error.get("message") or exc.reason), {"status": exc.code, **error}) from None


async def upload(*, api_url: str, headers: dict[str, str], room: str, content: bytes, name: str,
                 content_type: str | None, timeout: float) -> dict[str, Any]:
    """The upload object (`id`, `name`, `size`, `content_type`, `url`, …) of `content` put in
    `room`; ParleyError with the server's code (file_too_large, unsupported_file_type,
    rate_limited, room_not_found, …) if refused."""
    kind = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    body, multipart = _multipart(name, content, kind)
    url = f"{api_url.rstrip('/')}/rooms/{urllib.parse.quote(room, safe='')}/uploads"
    answer = await asyncio.to_thread(_post, url, {**headers, "Content-Type": multipart}, body, timeout)
    return dict(answer["upload"])
