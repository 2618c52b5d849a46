"""The HTTP API of one message (docs/protocol.md §10, "HTTP API, version 2"): read it, edit it,
delete it, react to it. The same services as the socket's commands (parley.conversation), the
same edit bucket, the same errors as HTTP statuses; the entries they store reach every socket as
the socket commands' do (parley.fanout, on commit).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

from parley import conversation, limits, metrics, protocol, selectors
from parley.conversation import Change
from parley.http_auth import api_error
from parley.payloads import message_payload
from parley.services import MessageRefused
from parley.views import _json_body, api, rate_limited

log = logging.getLogger(__name__)

# The status of each refusal (the body's `code` is the protocol's).
STATUS = {protocol.ROOM_NOT_FOUND: 404, protocol.MESSAGE_NOT_FOUND: 404, protocol.MESSAGE_DELETED: 409,
          protocol.FORBIDDEN: 403, protocol.TOO_MANY_REACTIONS: 409, protocol.ROOM_ARCHIVED: 409}


def refusal(exc: MessageRefused) -> HttpResponse:
    extra = {"field": exc.field} if exc.field else {}
    return api_error(STATUS.get(exc.code, 400), exc.code, exc.message, **extra)


def answer(request: HttpRequest, room_slug: str, message: Any, **extra: Any) -> HttpResponse:
    """The message as the caller sees it now (`reactions` with their `me`), encoded as frames are."""
    mine = selectors.reactions_mine(user_id=request.user.pk, messages=[message])
    body = {"message": message_payload(message, room_slug=room_slug, reader_reactions=mine), **extra}
    return HttpResponse(orjson.dumps(body), content_type="application/json")


def _seq(raw: str) -> int | None:
    """A path's seq: digits only, 1 to 2^53 (as the socket's), else None."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 16) or not 1 <= int(raw) <= protocol.MAX_SEQ:
        return None
    return int(raw)


def _target(request: HttpRequest, slug: str, seq: str) -> tuple[Any, int] | HttpResponse:
    """(the room, the seq) of a message path, or the error answer: 400 for a seq that is not one,
    404 for a room the caller may not see."""
    number = _seq(seq)
    if number is None:
        return api_error(400, protocol.BAD_FIELD, f"the seq must be an integer from 1 to {protocol.MAX_SEQ}",
                         field="seq")
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, protocol.ROOM_NOT_FOUND, f"no room {slug!r} that you may see")
    return room, number


@api("GET", "PATCH", "DELETE")
def message_detail(request: HttpRequest, slug: str, seq: str) -> HttpResponse:
    """GET the message; PATCH {"text"} edits it (its author); DELETE makes it a tombstone (its
    author, the room's owner, an admin)."""
    if request.method != "GET" and (refused := _charge(request)) is not None:
        return refused
    found = _target(request, slug, seq)
    if isinstance(found, HttpResponse):
        return found
    room, number = found
    if request.method == "GET":
        message = selectors.message_get(room_id=room.pk, seq=number)
        if message is None:
            return api_error(404, protocol.MESSAGE_NOT_FOUND, f"no message {number} in this room")
        return answer(request, room.slug, message)
    if request.method == "DELETE":
        return _changed(request, room, lambda: conversation.message_delete(
            room=room, actor=request.user, seq=number, source="http"))
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    # The text is checked by the service, as a socket's edit's is (its MessageRefused: 400).
    return _changed(request, room, lambda: conversation.message_edit(
        room=room, actor=request.user, seq=number, text=body.get("text"), source="http"))


@api("PUT", "DELETE")
def message_reaction(request: HttpRequest, slug: str, seq: str, emoji: str) -> HttpResponse:
    """PUT adds the caller's reaction `emoji` (percent-encoded in the path), DELETE removes it."""
    if (refused := _charge(request)) is not None:
        return refused
    found = _target(request, slug, seq)
    if isinstance(found, HttpResponse):
        return found
    room, number = found
    # The emoji is checked by the service, as a socket's react's is (its MessageRefused: 400).
    return _changed(request, room, lambda: conversation.reaction_set(
        room=room, actor=request.user, seq=number, emoji=emoji, add=request.method == "PUT", source="http"))


def _charge(request: HttpRequest) -> HttpResponse | None:
    """Take a token of the user's edit bucket before any other work (a refusal, else None)."""
    wait = limits.USER_EDIT_BUCKETS.shared_take_blocking(request.user.pk)
    if wait:
        metrics.refused("edits")
        return rate_limited(wait, "too many edits and reactions; retry later")
    return None


def _changed(request: HttpRequest, room: Any, make: Any) -> HttpResponse:
    """Make the change (charged already), answer with the message as it is now."""
    try:
        change: Change = make()
    except MessageRefused as exc:
        return refusal(exc)
    except DatabaseError:
        log.exception("could not store a change in room %s", room.slug)
        return api_error(503, protocol.COMMIT_FAILED, "nothing was changed; retry")
    return answer(request, room.slug, change.message, seq=change.entry.seq if change.entry is not None else None)
