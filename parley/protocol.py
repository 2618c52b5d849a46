"""The wire protocol: decoding and validating client frames, error codes, close codes, encoding.

docs/protocol.md is the public description of everything here; change both in the same commit.
Nothing in this module touches the database or the socket, so it can be fuzzed on its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import emoji as emoji_lib
import orjson

from parley.conf import parley_settings
from parley.models import SLUG_RE

# The newest version; a socket speaks 1 unless its URL asks for 2 (`?protocol=2`, docs/protocol.md §10).
PROTOCOL_VERSION = 2
PROTOCOL_VERSIONS = (1, 2)

# Where the socket is, relative to the ASGI root path (parley.routing mounts the consumer here).
WEBSOCKET_PATH = "ws/chat/"

# Close codes (4000-4999 are the application's own range in RFC 6455).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_SERVER_ERROR = 1011
CLOSE_CREDENTIALS_REVOKED = 4401
CLOSE_HEARTBEAT_TIMEOUT = 4408  # no frame from the client for 2 heartbeats + 5 s
CLOSE_TOO_MANY_SOCKETS = 4409  # the user has PARLEY_MAX_SOCKETS_PER_USER open already
CLOSE_SLOW_READER = 4413  # the outbound queue exceeded its frame or byte budget
CLOSE_RATE_LIMIT = 4429  # kept sending after PARLEY_RATE_LIMIT_STRIKES rate-limit refusals

# Error codes sent in {"type": "error", "code": ...} frames; the connection stays open.
BAD_JSON = "bad_json"
BAD_FRAME = "bad_frame"
BINARY_NOT_SUPPORTED = "binary_not_supported"
FRAME_TOO_LARGE = "frame_too_large"
UNKNOWN_TYPE = "unknown_type"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
TEXT_EMPTY = "text_empty"
TEXT_TOO_LONG = "text_too_long"
ROOM_NOT_FOUND = "room_not_found"
NOT_JOINED = "not_joined"
COMMIT_FAILED = "commit_failed"
RATE_LIMITED = "rate_limited"
TOO_MANY_ROOMS = "too_many_rooms"
TOO_MANY_SOCKETS = "too_many_sockets"
INTERNAL_ERROR = "internal_error"
# Version 2 (docs/protocol.md §10).
MESSAGE_NOT_FOUND = "message_not_found"
MESSAGE_DELETED = "message_deleted"
FORBIDDEN = "forbidden"
TOO_MANY_REACTIONS = "too_many_reactions"
ATTACHMENT_NOT_FOUND = "attachment_not_found"  # version 2's send (docs/protocol.md §14)
TOO_MANY_ATTACHMENTS = "too_many_attachments"
ROOM_ARCHIVED = "room_archived"  # send/edit/react in an archived (read-only) room (§12)
UNSUPPORTED_PROTOCOL = "unsupported_protocol"  # the handshake's ?protocol= (an HTTP 400)
MAX_EMOJI_CHARS = 32

MAX_REF_CHARS = 64
MAX_CLIENT_ID_CHARS = 64
MAX_SLUG_CHARS = 50
MAX_EPOCH_CHARS = 64
MAX_SEQ = 2**53  # stays exact in JavaScript numbers

# The largest frame the server sends is a joined/history reply: its messages take at most
# PARLEY_REPLY_MAX_BYTES encoded, and everything else in it (room, members, ref) at most this,
# so by default no server frame exceeds 1 MiB, websockets' default max_size (docs/protocol.md §1).
REPLY_ENVELOPE_MAX_BYTES = 256 * 1024
# Of that, what the room, ref and keys of a joined reply may take; members get the rest.
REPLY_ENVELOPE_FIXED_BYTES = 4 * 1024


def max_server_frame_bytes() -> int:
    """The largest frame a client must accept (protocol.md §1): 1 MiB with default settings."""
    return parley_settings.REPLY_MAX_BYTES + REPLY_ENVELOPE_MAX_BYTES


class ProtocolError(Exception):
    """A request the server refuses; becomes one `error` frame, and the socket stays open."""

    def __init__(self, code: str, message: str, *, field: str | None = None,
                 room: str | None = None, retry_after_ms: int | None = None,
                 ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.room = room
        self.retry_after_ms = retry_after_ms
        self.ref = ref  # the frame's ref when known before the caller could read it (bad_frame)

    def to_frame(self, ref: str | None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        for key in ("field", "room", "retry_after_ms"):
            value = getattr(self, key)
            if value is not None:
                frame[key] = value
        if ref is None:
            ref = self.ref
        if ref is not None:
            frame["ref"] = ref
        return frame


def encode(frame: dict[str, Any]) -> str:
    """Serialise one frame to the text sent on the wire."""
    return orjson.dumps(frame).decode()


def encode_sized(frame: dict[str, Any]) -> tuple[str, int]:
    """The frame's text and its UTF-8 size, which the outbound queue accounts (no re-encoding)."""
    data = orjson.dumps(frame)
    return data.decode(), len(data)


# --- Commands -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Join:
    room: str
    after_seq: int | None
    epoch: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class Leave:
    room: str


@dataclass(frozen=True, slots=True)
class Send:
    room: str
    text: str
    client_id: str | None
    reply_to: int | None = None  # version 2
    attachments: tuple[int, ...] = ()  # version 2: upload ids (docs/protocol.md §14)


@dataclass(frozen=True, slots=True)
class Edit:
    room: str
    seq: int
    text: str


@dataclass(frozen=True, slots=True)
class Delete:
    room: str
    seq: int


@dataclass(frozen=True, slots=True)
class React:
    room: str
    seq: int
    emoji: str
    add: bool  # react (True) or unreact (False)


@dataclass(frozen=True, slots=True)
class History:
    room: str
    before: int | None
    limit: int


@dataclass(frozen=True, slots=True)
class Typing:
    room: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Read:
    """Version 2 (docs/protocol.md §11): move the user's read marker in a room forward."""

    room: str
    seq: int


@dataclass(frozen=True, slots=True)
class Rooms:
    """Version 2 (docs/protocol.md §11): the user's room list again."""


Command = Join | Leave | Send | History | Typing | Ping | Edit | Delete | React | Read | Rooms


def decode_frame(text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
    """Turn one received WebSocket frame into a JSON object, or raise ProtocolError."""
    if text_data is None:
        raise ProtocolError(BINARY_NOT_SUPPORTED, "binary frames are not supported; send JSON text")
    limit = parley_settings.MAX_FRAME_BYTES
    # len(str) <= len(utf-8 bytes) <= 4 * len(str): only encode when the cheap bound is unsure.
    if len(text_data) > limit or (4 * len(text_data) > limit and len(text_data.encode()) > limit):
        raise ProtocolError(FRAME_TOO_LARGE, f"frames are limited to {limit} bytes")
    try:
        frame = orjson.loads(text_data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(BAD_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ProtocolError(BAD_FRAME, "a frame must be a JSON object")
    if not isinstance(frame.get("type"), str):
        # An object: its ref can be read, and answering with it tells the client which frame.
        raise ProtocolError(BAD_FRAME, "a frame needs a string field 'type'", field="type",
                            ref=frame_ref(frame))
    return frame


def peek_ref(text_data: str | None) -> str | None:
    """The ref of a frame if it decodes to an object with a valid one, else None; never raises.
    For answering a frame that is refused, not handled (a rate-limited one)."""
    try:
        return frame_ref(decode_frame(text_data, None))
    except ProtocolError as err:
        return err.ref


def frame_ref(frame: dict[str, Any]) -> str | None:
    """The client's correlation id, if it is a valid one (an invalid ref is reported, not echoed)."""
    ref = frame.get("ref")
    if isinstance(ref, str) and 1 <= len(ref) <= MAX_REF_CHARS:
        return ref
    return None


def parse_command(frame: dict[str, Any], *, version: int = PROTOCOL_VERSION) -> Command:
    """Validate a decoded frame against its type's fields (docs/protocol.md §3, §10), as the
    socket's protocol `version` has them: version 1 knows neither the commands of version 2
    (`unknown_type`) nor `send`'s `reply_to` (ignored)."""
    if frame.get("ref") is not None and frame_ref(frame) is None:  # null is absent, as everywhere
        raise ProtocolError(BAD_FIELD, f"'ref' must be a string of 1-{MAX_REF_CHARS} characters", field="ref")
    kind = frame["type"]
    parser = (_PARSERS_V2 if version >= 2 else _PARSERS).get(kind)
    if parser is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}", field="type")
    return parser(frame)


def _string(frame: dict[str, Any], name: str, max_chars: int, *, required: bool = True) -> str | None:
    value = frame.get(name)
    if value is None:
        if required:
            raise ProtocolError(MISSING_FIELD, f"'{name}' is required", field=name)
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise ProtocolError(BAD_FIELD, f"'{name}' must be a string of 1-{max_chars} characters", field=name)
    _no_nul(value, name)
    return value


def _no_nul(value: str, name: str) -> None:
    # PostgreSQL text cannot hold U+0000: refuse it here, as a field error the client can fix,
    # rather than let it fail at commit (a commit_failed whose retry could never succeed).
    if "\x00" in value:
        raise ProtocolError(BAD_FIELD, f"'{name}' must not contain U+0000 (NUL)", field=name)


def _integer(frame: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = frame.get(name)
    if value is None:
        return None
    # bool is an int in Python; true/false are not numbers on the wire.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(BAD_FIELD, f"'{name}' must be an integer from {low} to {high}", field=name)
    return value


def _room(frame: dict[str, Any]) -> str:
    value = frame.get("room")
    if isinstance(value, str) and 1 <= len(value) <= MAX_SLUG_CHARS and not SLUG_RE.match(value):
        # Well-formed but impossible as a slug (e.g. "lo\x00bby"): no such room can exist.
        raise ProtocolError(ROOM_NOT_FOUND, f"no room {value[:50]!r} that you may see", room=value)
    return _string(frame, "room", MAX_SLUG_CHARS)  # type: ignore[return-value]


def _limit(frame: dict[str, Any]) -> int:
    limit = _integer(frame, "limit", 1, MAX_SEQ)
    return page_limit(limit)


def page_limit(limit: int | None) -> int:
    """A page's size: the default if none was asked for, and never more than
    PARLEY_HISTORY_PAGE_MAX (a larger one is clamped, not refused: a client need not know the
    server's setting). The one rule of the WebSocket and of GET /api/rooms/<slug>/messages."""
    page_max = parley_settings.HISTORY_PAGE_MAX
    return min(parley_settings.HISTORY_PAGE_DEFAULT if limit is None else limit, page_max)


def _parse_join(frame: dict[str, Any]) -> Join:
    return Join(
        room=_room(frame),
        after_seq=_integer(frame, "after_seq", 0, MAX_SEQ),
        epoch=_string(frame, "epoch", MAX_EPOCH_CHARS, required=False),
        limit=_limit(frame),
    )


def _parse_send(frame: dict[str, Any]) -> Send:
    room = _room(frame)
    text = _text(frame)
    client_id = _string(frame, "client_id", MAX_CLIENT_ID_CHARS, required=False)
    return Send(room=room, text=text, client_id=client_id)


def _parse_send_v2(frame: dict[str, Any]) -> Send:
    attachments = _attachments(frame)
    if not attachments:
        send = _parse_send(frame)
        return Send(room=send.room, text=send.text, client_id=send.client_id,
                    reply_to=_integer(frame, "reply_to", 1, MAX_SEQ))
    # With files a message may have no text (absent, or empty after trimming).
    room = _room(frame)
    text = "" if frame.get("text") is None or (isinstance(frame["text"], str) and not frame["text"].strip()) \
        else _text(frame)
    return Send(room=room, text=text, client_id=_string(frame, "client_id", MAX_CLIENT_ID_CHARS, required=False),
                reply_to=_integer(frame, "reply_to", 1, MAX_SEQ), attachments=attachments)


def _attachments(frame: dict[str, Any]) -> tuple[int, ...]:
    """A send's `attachments`: a list of upload ids (integers 1 to 2^53), at most
    PARLEY_MAX_ATTACHMENTS_PER_MESSAGE of them; absent, null or [] is none."""
    value = frame.get("attachments")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              and 1 <= v <= MAX_SEQ for v in value):
        raise ProtocolError(BAD_FIELD, "'attachments' must be a list of upload ids", field="attachments")
    limit = parley_settings.MAX_ATTACHMENTS_PER_MESSAGE
    if len(value) > limit:
        raise ProtocolError(TOO_MANY_ATTACHMENTS, f"a message carries at most {limit:.0f} attachments",
                            field="attachments")
    return tuple(value)


def _seq(frame: dict[str, Any]) -> int:
    seq = _integer(frame, "seq", 1, MAX_SEQ)
    if seq is None:
        raise ProtocolError(MISSING_FIELD, "'seq' is required", field="seq")
    return seq


def _emoji(frame: dict[str, Any]) -> str:
    """One emoji, as Unicode's fully-qualified form: "❤" and "❤️" are one reaction (the second),
    and a component alone (a skin tone, a hair style) is none."""
    value = _string(frame, "emoji", MAX_EMOJI_CHARS)
    assert value is not None
    canonical = _fully_qualified().get(value.replace("\ufe0f", ""))
    if canonical is None:
        raise ProtocolError(BAD_FIELD, "'emoji' must be one Unicode emoji", field="emoji")
    return canonical


@functools.cache
def _fully_qualified() -> dict[str, str]:
    """Each fully-qualified emoji by its form without variation selector 16 (U+FE0F)."""
    wanted = emoji_lib.STATUS["fully_qualified"]
    return {e.replace("\ufe0f", ""): e for e, data in emoji_lib.EMOJI_DATA.items() if data.get("status") == wanted}


def message_text(value: Any) -> str:
    """A message's text (a `send`'s or an `edit`'s) checked and trimmed as a frame's `text`
    field is: for server code and the admin, which take no frame. Raises ProtocolError."""
    return _text({"text": value})


def reaction_emoji(value: Any) -> str:
    """A reaction's emoji checked and made fully qualified as a frame's `emoji` field is."""
    return _emoji({"emoji": value})


def _parse_react(frame: dict[str, Any], add: bool) -> React:
    room, seq = _room(frame), _seq(frame)
    return React(room=room, seq=seq, emoji=_emoji(frame), add=add)


def _parse_edit(frame: dict[str, Any]) -> Edit:
    room, seq = _room(frame), _seq(frame)
    return Edit(room=room, seq=seq, text=_text(frame))


def _text(frame: dict[str, Any]) -> str:
    """A message's text (send, edit): trimmed, 1 to MAX_TEXT_CHARS characters, no NUL."""
    text = frame.get("text")
    if text is None:
        raise ProtocolError(MISSING_FIELD, "'text' is required", field="text")
    if not isinstance(text, str):
        raise ProtocolError(BAD_FIELD, "'text' must be a string", field="text")
    text = text.strip()
    _no_nul(text, "text")
    max_chars = parley_settings.MAX_TEXT_CHARS
    if not text:
        raise ProtocolError(TEXT_EMPTY, "'text' is empty after trimming whitespace", field="text")
    if len(text) > max_chars:
        raise ProtocolError(
            TEXT_TOO_LONG, f"text is {len(text):,} characters; the limit is {max_chars:,}", field="text"
        )
    return text


def _parse_history(frame: dict[str, Any]) -> History:
    return History(room=_room(frame), before=_integer(frame, "before", 1, MAX_SEQ), limit=_limit(frame))


_PARSERS: dict[str, Callable[[dict[str, Any]], Command]] = {
    "join": _parse_join,
    "leave": lambda f: Leave(room=_room(f)),
    "send": _parse_send,
    "history": _parse_history,
    "typing": lambda f: Typing(room=_room(f)),
    "ping": lambda f: Ping(),
}

_PARSERS_V2: dict[str, Callable[[dict[str, Any]], Command]] = {
    **_PARSERS,
    "send": _parse_send_v2,
    "edit": _parse_edit,
    "delete": lambda f: Delete(room=_room(f), seq=_seq(f)),
    "react": lambda f: _parse_react(f, True),
    "unreact": lambda f: _parse_react(f, False),
    "read": lambda f: _parse_read(f),
    "rooms": lambda f: Rooms(),
}


def _parse_read(frame: dict[str, Any]) -> Read:
    room = _room(frame)
    seq = _integer(frame, "seq", 0, MAX_SEQ)
    if seq is None:
        raise ProtocolError(MISSING_FIELD, "'seq' is required", field="seq")
    return Read(room=room, seq=seq)
