"""HTTP views: the browser app's pages, sign-up, and the small JSON API (docs/protocol.md §8)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any, Literal

import orjson
from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from chat import protocol, selectors, services
from chat.http_auth import api_error
from chat.payloads import fit_page, message_payload, room_payload, timestamp, user_payload


@login_required
def app(request: HttpRequest) -> HttpResponse:
    """The single-page chat app; everything after load goes over the WebSocket."""
    return render(request, "chat/app.html", {"me": user_payload(request.user)})


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat:app")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat:app")
    return render(request, "registration/signup.html", {"form": form})


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


# --- JSON API -------------------------------------------------------------------------------

def api(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    """JSON API views: a signed-in user (session or bearer token) or a 401 in JSON."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        if not request.user.is_authenticated:
            return api_error(401, "unauthenticated", "sign in or send Authorization: Bearer <token>")
        return view(request, *args, **kwargs)

    return wrapper


def _json_body(request: HttpRequest) -> dict[str, Any] | None:
    """The body as a JSON object, or None. Strings with U+0000 count as invalid: PostgreSQL
    cannot store or even compare them."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    if not isinstance(body, dict) or any(isinstance(v, str) and "\x00" in v for v in body.values()):
        return None
    return body


@api
def me(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": user_payload(request.user)})


@api
@require_http_methods(["GET", "POST"])
def rooms(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return JsonResponse({"rooms": [room_payload(r) for r in selectors.room_list_visible(user=request.user)]})
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    slug, title, private = body.get("slug"), body.get("title"), body.get("private", False)
    if not isinstance(slug, str) or not isinstance(title, str) or not isinstance(private, bool):
        return api_error(400, "bad_field", "need string 'slug' and 'title', boolean 'private'")
    try:
        room = services.room_create(slug=slug.strip().lower(), title=title.strip(), owner=request.user,
                                    is_private=private)
    except ValidationError as exc:
        if "slug" in exc.message_dict and any("already exists" in m for m in exc.message_dict["slug"]):
            return api_error(409, "room_exists", f"a room {slug!r} already exists")
        return api_error(400, "bad_field", "invalid room", fields=exc.message_dict)
    except IntegrityError:
        return api_error(409, "room_exists", f"a room {slug!r} already exists")
    return JsonResponse({"room": room_payload(room)}, status=201)


@api
def room_messages(request: HttpRequest, slug: str) -> HttpResponse:
    """A page of history, by the WebSocket `history` rules: the same range for `before` and
    `limit` (a limit above the page maximum is clamped), the same byte budget for the page.

    Encoded with orjson, as WebSocket frames are (UTF-8, not \\u-escaped): what
    PARLEY_REPLY_MAX_BYTES measures is then exactly what the body holds.
    """
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    before = _query_int(request, "before", 1)
    limit = _query_int(request, "limit", 1)
    if before is False or limit is False:
        return api_error(400, "bad_field", f"'before' and 'limit' must be integers from 1 to {protocol.MAX_SEQ}")
    page = selectors.message_page(room_id=room.pk, before=before, limit=protocol.page_limit(limit))
    messages, has_more = fit_page(*page, room_slug=room.slug, budget_bytes=settings.PARLEY_REPLY_MAX_BYTES)
    body = {"messages": [message_payload(m, room_slug=room.slug) for m in messages], "has_more": has_more}
    return HttpResponse(orjson.dumps(body), content_type="application/json")


def _query_int(request: HttpRequest, name: str, low: int) -> int | None | Literal[False]:
    """The query parameter as an integer from `low` to 2^53, None if absent or empty, False if
    it is anything else."""
    raw = request.GET.get(name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        return False
    return value if low <= value <= protocol.MAX_SEQ else False


def _token_payload(token: Any) -> dict[str, Any]:
    return {"id": token.pk, "name": token.name, "prefix": token.prefix,
            "created_at": timestamp(token.created_at),
            "last_used_at": timestamp(token.last_used_at) if token.last_used_at else None,
            "revoked": token.revoked_at is not None}


@api
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return JsonResponse({"tokens": [_token_payload(t) for t in selectors.token_list(user=request.user)]})
    if getattr(request, "auth_token", None) is not None:
        return api_error(403, "session_required", "tokens are made from a signed-in browser session")
    body = _json_body(request)
    name = (body or {}).get("name", "")
    if not isinstance(name, str) or len(name) > 100:
        return api_error(400, "bad_field", "'name' must be a string of at most 100 characters")
    token, raw = services.token_create(user=request.user, name=name)
    return JsonResponse({"token": raw, "id": token.pk}, status=201)


@api
@require_http_methods(["DELETE"])
def token_detail(request: HttpRequest, token_id: int) -> JsonResponse:
    """Revoke one of your tokens; sockets opened with it close with 4401."""
    token = next((t for t in selectors.token_list(user=request.user) if t.pk == token_id), None)
    if token is None:
        return api_error(404, "token_not_found", "no such token of yours")
    services.token_revoke(token=token)
    return JsonResponse({"token": _token_payload(token)})


def _managed_room(request: HttpRequest, slug: str) -> Any:
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    if not room.is_private:
        return api_error(400, "room_public", "public rooms are open to every signed-in user")
    if not selectors.room_user_can_manage(room=room, user=request.user):
        return api_error(403, "forbidden", "only the room's owner or an admin manages members")
    return room


@api
@require_http_methods(["GET", "POST"])
def room_members(request: HttpRequest, slug: str) -> JsonResponse:
    """List (any member) or add (owner/admin) the members of a private room."""
    if request.method == "GET":
        room = selectors.room_get_visible(user=request.user, slug=slug)
        if room is None:
            return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
        return JsonResponse({"members": [{**user_payload(m.user), "role": m.role}
                                         for m in selectors.membership_list(room=room)]})
    room = _managed_room(request, slug)
    if isinstance(room, JsonResponse):
        return room
    body = _json_body(request) or {}
    user = get_user_model().objects.filter(username=body.get("username") or "").first()
    if user is None:
        return api_error(404, "user_not_found", "no such user")
    membership = services.membership_add(room=room, user=user)
    return JsonResponse({"member": {**user_payload(user), "role": membership.role}}, status=201)


@api
@require_http_methods(["DELETE"])
def room_member_detail(request: HttpRequest, slug: str, username: str) -> JsonResponse:
    """Remove a member (owner/admin); their open sockets leave the room at once."""
    room = _managed_room(request, slug)
    if isinstance(room, JsonResponse):
        return room
    user = get_user_model().objects.filter(username=username).first() if "\x00" not in username else None
    if user is None or not services.membership_remove(room=room, user=user):
        return api_error(404, "member_not_found", "no such member (the owner cannot be removed)")
    return JsonResponse({"removed": user_payload(user)})
