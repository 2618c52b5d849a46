"""Parley's logs: one JSON object per line (LOG_FORMAT=json) or plain text, ids from context,
and secrets redacted.

    LOGGING = {..., "formatters": {"json": {"()": "parley.logs.JsonFormatter"}}, ...}

What each line carries beside time, level, logger and message: the ids of what the record is
about, from `extra={"socket_id": ...}` when the code logging it knows (a socket's close is often
logged from another socket's task: the fan-out that found it behind), else from the context
variables below, which the chat consumer sets for its socket's task when the socket opens and
RequestContextMiddleware sets for an HTTP request.

What a line never carries: a bearer token, a password or a message text. Parley's own log calls
name users by id and rooms by slug, never a frame's content; as a second line of defence every
formatted line (exception text included) has `Bearer <…>`, `token=<…>` and the like replaced
by `[redacted]` (redact()).
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse

socket_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("parley_socket_id", default=None)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("parley_request_id", default=None)
user_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("parley_user_id", default=None)

CONTEXT_FIELDS = ("socket_id", "request_id", "user_id")
_CONTEXT: dict[str, contextvars.ContextVar[Any]] = {"socket_id": socket_id, "request_id": request_id, "user_id": user_id}

# `Bearer <anything>`, `Token <20+ token characters>` ("token revoked" stays: a word after
# "token" is not a secret), `token=…` / `"token": "…"` / `password=…` / `secret: …`, and a Parley
# API token (parley.services: "prl_" + 43 characters) wherever it stands.
_SECRETS = re.compile(
    r"(?i)\b(bearer\s+)[^\s\"',;]+"
    r"|\b(token\s+)[A-Za-z0-9._~+/=-]{20,}"
    r"|((?:access_|api_|auth_|metrics_)?(?:token|password|passwd|secret)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;}]+"
    r"|()\bprl_[A-Za-z0-9_-]{16,}")

# An X-Request-ID a client or proxy sent is kept if it looks like an id, not arbitrary text.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
REQUEST_ID_HEADER = "X-Request-ID"


def redact(text: str) -> str:
    """`text` with anything that looks like a credential replaced by `[redacted]`."""
    if not text:
        return text
    return _SECRETS.sub(_redacted, text)


def _redacted(match: re.Match[str]) -> str:
    kept = next(group for group in match.groups() if group is not None)
    return f"{kept}[redacted]"


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ids a record is about: its own `extra=` first, else the context's."""
    found = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = _CONTEXT[name].get()
        if value is not None:
            found[name] = value
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, logger, message,
    the context's ids, and `exc_info` (the traceback as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(context_of(record))
        if record.exc_info:
            entry["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(entry, default=str).decode()


class PlainFormatter(logging.Formatter):
    """The plain-text line, with the context's ids appended and secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = context_of(record)
        if ids:
            line += " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]"
        return redact(line)


def logging_config(*, json: bool, level: str) -> dict[str, Any]:
    """A dictConfig for the standalone server (config/settings.py): plain text by default, one
    JSON object per line with LOG_FORMAT=json."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"()": "parley.logs.PlainFormatter", "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "json": {"()": "parley.logs.JsonFormatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json" if json else "plain"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.channels.server": {"level": "WARNING"}},
    }


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own loggers (uvicorn.error, uvicorn.access) in JSON, for `--log-config` in
    config/serve.py when LOG_FORMAT=json; their levels stay uvicorn's (`--log-level`)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "parley.logs.JsonFormatter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stderr"},
                     "access": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stdout"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def json_line(message: str, *, level: str = "INFO", logger: str = "parley") -> str:
    """One JSON log line for text printed outside logging (config/serve.py's start-up lines)."""
    return orjson.dumps({
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "level": level, "logger": logger, "message": redact(message),
    }).decode()


class RequestContextMiddleware:
    """Gives each HTTP request an id for its log lines (the client's or proxy's X-Request-ID when
    it looks like one, else a new one), returned in the response's X-Request-ID; and the user's
    id once authentication has run (place it after the authentication middlewares)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        # Not reset after the response: Django logs a 4xx/5xx response ("Not Found: …") after
        # the middlewares return, and under ASGI each request has a context of its own anyway.
        request_id.set(rid)
        user = getattr(request, "user", None)
        # Only a user already loaded (a bearer token's): never a session lookup just to log.
        wrapped: Any = getattr(user, "_wrapped", user)
        loaded = getattr(wrapped, "is_authenticated", False) is True
        user_id.set(wrapped.pk if loaded else None)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = rid
        return response
