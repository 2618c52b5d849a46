"""HTTP views: the browser app's pages, sign-up and password reset, and the small JSON API
(docs/protocol.md §8)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from functools import wraps
from typing import Any, Literal

import orjson
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import login
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordResetForm, UserCreationForm
from django.contrib.auth.views import LoginView, PasswordResetView
from django.core.exceptions import ValidationError
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import NoReverseMatch, get_script_prefix, reverse
from django.utils.module_loading import import_string
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from parley import limits, metrics, protocol, selectors, services, throttles
from parley.conf import parley_settings
from parley.http_auth import api_error, bearer_authenticate
from parley.models import SLUG_RE
from parley.payloads import (
    fit_page,
    message_payload,
    room_payload,
    room_state_payload,
    timestamp,
    user_payload,
)

log = logging.getLogger(__name__)


@login_required
def app(request: HttpRequest) -> HttpResponse:
    """The single-page chat app; everything after load goes over the WebSocket. Anonymous
    visitors go to settings.LOGIN_URL: the host's sign-in page, or the standalone server's."""
    return render(request, "parley/app.html", {
        "me": user_payload(request.user),
        # The socket is routed by ASGI, not by urls.py, so {% url %} cannot name it.
        "socket_path": get_script_prefix() + protocol.WEBSOCKET_PATH,
        "login_url": resolve_url(settings.LOGIN_URL),
        "logout_url": _logout_url(),
    })


def _logout_url() -> str | None:
    """Django's `logout` view if the project routes one (the standalone server does; a host may
    name its own differently): without it the page shows no log-out button."""
    try:
        return reverse("logout")
    except NoReverseMatch:
        return None


@throttles.throttled_status
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("parley:app")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST":
        valid = form.is_valid()
        # "Already taken" tells which usernames exist, so it is charged as an account made
        # would be; other mistakes in the form cost nothing.
        taken = any(e.code == "unique" for e in form.errors.as_data().get("username", []))
        if valid or taken:
            refusal = throttles.signup_refusal(request)
            if refusal is None and valid:
                user = form.save()
                login(request, user, backend=_password_backend())
                return redirect("parley:app")
            if refusal is not None:
                form.errors.pop("username", None)  # refused: taken or not, the same answer
                form.add_error(None, refusal)
    return render(request, "registration/signup.html", {"form": form})


def _password_backend() -> str:
    """The first configured backend that checks passwords (Django's ModelBackend or a subclass,
    such as parley.auth_backends'): the one a new account is signed in with."""
    return next(path for path in settings.AUTHENTICATION_BACKENDS
                if issubclass(import_string(path), ModelBackend))


# Django's sign-in pages, with parley/throttles.py's limits on failed attempts.
login_page = throttles.throttled_status(LoginView.as_view(authentication_form=throttles.LoginForm))


class _PasswordResetView(PasswordResetView):
    """Django's, with each request charged to its client address and to the e-mail address it
    names before any mail goes out (parley/throttles.py)."""

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        refusal = throttles.password_reset_refusal(self.request, form.cleaned_data["email"])
        if refusal is not None:
            form.add_error(None, refusal)
            return self.form_invalid(form)
        return super().form_valid(form)


password_reset = throttles.throttled_status(_PasswordResetView.as_view())


@throttles.throttled_status
def admin_login(request: HttpRequest) -> HttpResponse:
    return admin.site.login(request)  # its form is throttles.AdminLoginForm (parley/admin.py)


# --- JSON API -------------------------------------------------------------------------------


_room_creations = limits.BucketMap(limits.ROOMS_CREATED_PER_USER_PER_HOUR, per=3600.0)


def rate_limited(wait_secs: float, message: str) -> JsonResponse:
    response = api_error(429, "rate_limited", message, retry_after_ms=math.ceil(wait_secs * 1000))
    response["Retry-After"] = str(math.ceil(wait_secs))
    return response


def api(*methods: str, before_body: Callable[..., HttpResponse | None] | None = None,
        ) -> Callable[[Callable[..., JsonResponse]], Callable[..., JsonResponse]]:
    """JSON API views taking `methods`. Checked in this order, each answered in
    JSON: a signed-in user, by session or bearer token (401 `unauthenticated`); the method (405
    `method_not_allowed`, with Allow); for a session request that writes, Django's CSRF check
    (403 `csrf_failed`). Authentication comes before CSRF so that a client without credentials
    is told so, rather than handed Django's CSRF page. `before_body(request, *args, **kwargs)`
    runs after the method check and before CSRF, the first thing that may read the body (its
    answer, if any, is the response): the upload view charges its rate and installs its size
    limit there (parley.upload_views)."""
    # No HEAD: the views tell a read from a write by `method == "GET"`.
    allowed = set(methods)
    allow_header = ", ".join(sorted(allowed))

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        checked = csrf_protect(view)

        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            refusal = bearer_authenticate(request)
            if refusal is not None:
                return refusal
            if not request.user.is_authenticated:
                return api_error(401, "unauthenticated", "sign in or send Authorization: Bearer <token>")
            if request.method not in allowed:
                response = api_error(405, "method_not_allowed",
                                     f"{request.method} is not allowed here; use {allow_header}")
                response["Allow"] = allow_header
                return response
            if before_body is not None and (refusal := before_body(request, *args, **kwargs)) is not None:
                return refusal
            return checked(request, *args, **kwargs)

        # The middleware's CSRF check would run before the view, ahead of the 401 above.
        return csrf_exempt(wrapper)

    return decorate


def is_api(request: HttpRequest) -> bool:
    """Under the API's prefix: /api/ in the standalone server, /chat/api/ where a host mounted
    parley.urls at chat/."""
    try:
        return request.path.startswith(reverse("parley:api-not-found"))
    except NoReverseMatch:  # a project that routes parley.urls under another namespace
        return request.path_info.startswith("/api/")


@csrf_exempt
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    # A wrong token is told so first, as everywhere in the API (docs/protocol.md §8).
    refusal = bearer_authenticate(request)
    if refusal is not None:
        return refusal
    return api_error(404, "not_found", "no such API endpoint (docs/protocol.md §8)")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """settings.CSRF_FAILURE_VIEW: JSON on the API, Django's page elsewhere."""
    if is_api(request):
        return api_error(403, "csrf_failed",
                         f"CSRF check failed ({reason}): send the csrftoken cookie's value as X-CSRFToken")
    return csrf.csrf_failure(request, reason=reason)


# handler400/403/404/500 (config/urls.py): the API answers its errors in JSON, whatever raised
# them (a body over DATA_UPLOAD_MAX_MEMORY_SIZE is a 400 from Django itself, for one).

def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return api_error(400, "bad_request", "the request could not be read")
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return api_error(403, "forbidden", "not allowed")
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return api_not_found(request)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api(request):
        return api_error(500, "internal_error", "an unexpected server error; nothing was changed "
                                                "unless the error says so")
    return defaults.server_error(request)


def _json_body(request: HttpRequest) -> dict[str, Any] | None:
    """The body as a JSON object, or None. Strings with U+0000 count as invalid: PostgreSQL
    cannot store or even compare them."""
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
        return None
    if not isinstance(body, dict) or any(isinstance(v, str) and "\x00" in v for v in body.values()):
        return None
    return body


def _rooms_page(request: HttpRequest) -> JsonResponse:
    """GET /api/rooms: a page of the rooms the user may see, by slug; `?after=<slug>` (a
    page's `next`) and `?limit=` (clamped to ROOMS_PAGE_MAX)."""
    page_max = int(parley_settings.ROOMS_PAGE_MAX)
    limit = _query_int(request, "limit", 1)
    if limit is False:
        return api_error(400, "bad_field", "limit must be an integer from 1 to 2^53", field="limit")
    after = request.GET.get("after") or None
    if after is not None and not SLUG_RE.match(after):
        return api_error(400, "bad_field", "after must be a room slug (a page's next)", field="after")
    size = min(limit or page_max, page_max)
    found = selectors.room_list_visible(user=request.user, after=after, limit=size + 1)
    visible = selectors.rooms_with_dm_members(rooms=found[:size])
    more = len(found) > size
    return JsonResponse({"rooms": [room_payload(r, v2=True) for r in visible],
                         "next": visible[-1].slug if more and visible else None})


@api("GET")
def me(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": user_payload(request.user)})


@api("GET", "POST")
def rooms(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return _rooms_page(request)
    # Charged first, refused requests too: that also bounds how fast one account can probe
    # which slugs are taken (private rooms' among them).
    wait = _room_creations.take(request.user.pk)
    if wait:
        metrics.refused("rooms_created")
        return rate_limited(wait, "too many rooms created; wait before creating another")
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    slug, title, private = body.get("slug"), body.get("title"), body.get("private", False)
    if not isinstance(slug, str) or not isinstance(title, str) or not isinstance(private, bool):
        return api_error(400, "bad_field", "need string 'slug' and 'title', boolean 'private'")
    slug = slug.strip().lower()
    try:
        room = services.room_create(slug=slug, title=title.strip(), owner=request.user,
                                    is_private=private)
    except services.RoomSlugTaken:
        # A room the caller may see is named; any other taken slug — a private room of others,
        # or a reserved one — gets one answer, so it does not tell which.
        if selectors.room_get_visible(user=request.user, slug=slug) is not None:
            return api_error(409, "room_exists", f"a room {slug!r} already exists")
        return api_error(409, "slug_unavailable", f"the slug {slug!r} is not available; choose another")
    except services.RoomsOwnedLimit:
        return api_error(403, "too_many_rooms_owned",
                         f"you own {parley_settings.MAX_ROOMS_OWNED_PER_USER:.0f} rooms, the most allowed")
    except ValidationError as exc:
        return api_error(400, "bad_field", "invalid room", fields=exc.message_dict)
    return JsonResponse({"room": room_payload(room, v2=True)}, status=201)


@api("GET", "POST")
def room_messages(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: a page of history, by the WebSocket `history` rules: the same range for `before` and
    `limit` (a limit above the page maximum is clamped), the same byte budget for the page.
    POST: post a message (room_message_post).

    Encoded with orjson, as WebSocket frames are (UTF-8, not \\u-escaped): what
    PARLEY_REPLY_MAX_BYTES measures is then exactly what the body holds.
    """
    if request.method == "POST":
        return room_message_post(request, slug)
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    before = _query_int(request, "before", 1)
    limit = _query_int(request, "limit", 1)
    if before is False or limit is False:
        return api_error(400, "bad_field", f"'before' and 'limit' must be integers from 1 to {protocol.MAX_SEQ}")
    page = selectors.message_page(room_id=room.pk, before=before, limit=protocol.page_limit(limit))
    messages, has_more = fit_page(*page, room_slug=room.slug, budget_bytes=parley_settings.REPLY_MAX_BYTES)
    mine = selectors.reactions_mine(user_id=request.user.pk, messages=messages)
    body = {"messages": [message_payload(m, room_slug=room.slug, reader_reactions=mine) for m in messages],
            "has_more": has_more}
    return HttpResponse(orjson.dumps(body), content_type="application/json")


def room_message_post(request: HttpRequest, slug: str) -> HttpResponse:
    """POST /api/rooms/<slug>/messages: a WebSocket `send` over HTTP (docs/protocol.md §8).

    The same validation, access rule and per-user message rate (one bucket for both paths), and
    the same idempotency: `client_id` in the body or the `Idempotency-Key` header; a replay
    answers 200 with the first message and `duplicate: true`, a new message 201.
    """
    wait = limits.USER_MESSAGE_BUCKETS.shared_take_blocking(request.user.pk)  # (a sync view: a worker thread)
    if wait:
        metrics.refused("messages")
        return rate_limited(wait, "too many messages; retry later with the same client_id")
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    client_id = body.get("client_id")
    header = request.headers.get("Idempotency-Key")
    if header is not None:
        if client_id is not None and client_id != header:
            return api_error(400, "bad_field", "'client_id' and Idempotency-Key differ; send one",
                             field="client_id")
        client_id = header
    try:
        message, duplicate = services.message_post(room=slug, text=body.get("text"), author=request.user,
                                                   client_id=client_id, reply_to=body.get("reply_to"),
                                                   attachments=body.get("attachments"), source="http")
    except services.RoomNotFound:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    except services.MessageRefused as exc:
        extra = {"field": exc.field} if exc.field else {}
        status = {"forbidden": 403, protocol.MESSAGE_NOT_FOUND: 404, protocol.MESSAGE_DELETED: 409,
                  protocol.ATTACHMENT_NOT_FOUND: 404, protocol.ROOM_ARCHIVED: 409}.get(exc.code, 400)
        return api_error(status, exc.code, exc.message, **extra)
    except DatabaseError:
        log.exception("could not store a message in room %s", slug)
        return api_error(503, protocol.COMMIT_FAILED, "the message was not stored; retry with the same client_id")
    body = {"message": message_payload(message, room_slug=slug), "duplicate": duplicate}
    return HttpResponse(orjson.dumps(body), content_type="application/json", status=200 if duplicate else 201)


def _query_int(request: HttpRequest, name: str, low: int) -> int | Literal[False] | None:
    """The query parameter as an integer from `low` to 2^53, None if absent or empty, False if
    it is anything else."""
    raw = request.GET.get(name)
    if not raw:
        return None
    # Digits only (int() would take " 7", "+7", "7_0"), and no more of them than 2^53 has: an
    # integer beyond 64 bits must not reach the database (SQLite raised OverflowError: a 500).
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 16):
        return False
    value = int(raw)
    return value if low <= value <= protocol.MAX_SEQ else False


def _token_payload(token: Any) -> dict[str, Any]:
    return {"id": token.pk, "name": token.name, "prefix": token.prefix,
            "created_at": timestamp(token.created_at),
            "last_used_at": timestamp(token.last_used_at) if token.last_used_at else None,
            "revoked": token.revoked_at is not None}


@api("GET", "POST")
def tokens(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return JsonResponse({"tokens": [_token_payload(t) for t in selectors.token_list(user=request.user)]})
    if getattr(request, "auth_token", None) is not None:
        return api_error(403, "session_required", "tokens are made from a signed-in browser session")
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 100:
        return api_error(400, "bad_field", "'name' must be a string of at most 100 characters")
    token, raw = services.token_create(user=request.user, name=name)
    return JsonResponse({"token": raw, "id": token.pk}, status=201)


@api("DELETE")
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
    if room.kind == room.Kind.DM:
        return api_error(409, "dm_fixed", "a direct conversation's members are fixed")
    if not room.is_private:
        return api_error(400, "room_public", "public rooms are open to every signed-in user")
    if not selectors.room_user_can_manage(room=room, user=request.user):
        return api_error(403, "forbidden", "only the room's owner or an admin manages members")
    return room


@api("GET", "POST")
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
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    name = body.get("username")
    user = selectors.user_get_by_username(username=name) if isinstance(name, str) and name else None
    if user is None:
        return api_error(404, "user_not_found", "no such user")
    membership = services.membership_add(room=room, user=user)
    return JsonResponse({"member": {**user_payload(user), "role": membership.role}}, status=201)


# --- Attention (docs/protocol.md §11) ---------------------------------------------------------

_NOTIFY_VALUES = ("", "all", "mentions", "nothing")


def _read_budget(request: HttpRequest) -> JsonResponse | None:
    """One token of the user's read-mark budget (the sockets' `read` and `rooms` share it)."""
    wait = limits.USER_READ_BUCKETS.shared_take_blocking(request.user.pk)
    if wait:
        metrics.refused("reads")
        return rate_limited(wait, "too many read marks and room lists; retry later")
    return None


@api("GET")
def room_states(request: HttpRequest) -> JsonResponse:
    """GET /api/rooms/state: the user's room list, as the socket's `rooms` frame has it."""
    if (refusal := _read_budget(request)) is not None:
        return refusal
    return JsonResponse({"rooms": [room_state_payload(*row) for row in selectors.room_state_list(user=request.user)]})


@api("PUT")
def room_read(request: HttpRequest, slug: str) -> JsonResponse:
    """PUT /api/rooms/<slug>/read {"seq"}: the socket's `read` over HTTP."""
    if (refusal := _read_budget(request)) is not None:
        return refusal
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    seq = body.get("seq")
    if seq is None:
        return api_error(400, "missing_field", "'seq' is required", field="seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= protocol.MAX_SEQ:
        return api_error(400, "bad_field", f"'seq' must be an integer from 0 to {protocol.MAX_SEQ}", field="seq")
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    row = services.room_state_mark_read(user=request.user, room=room, seq=seq)
    return JsonResponse({"state": room_state_payload(*row)})


@api("PATCH")
def room_state(request: HttpRequest, slug: str) -> JsonResponse:
    """PATCH /api/rooms/<slug>/state {"notify"?, "muted"?}: the user's settings of the room."""
    if (refusal := _read_budget(request)) is not None:
        return refusal
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    notify, muted = body.get("notify"), body.get("muted")
    if notify is not None and notify not in _NOTIFY_VALUES:
        return api_error(400, "bad_field", "'notify' must be \"all\", \"mentions\", \"nothing\" or \"\" "
                                           "(the default)", field="notify")
    if muted is not None and not isinstance(muted, bool):
        return api_error(400, "bad_field", "'muted' must be true or false", field="muted")
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    row = services.room_state_update(user=request.user, room=room, notify=notify, muted=muted)
    return JsonResponse({"state": room_state_payload(*row)})
