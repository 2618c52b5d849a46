"""The people API (docs/protocol.md §15): your profile, others' profiles by id, avatars."""

from __future__ import annotations

import re

from django.http import HttpRequest, HttpResponse, JsonResponse

from parley import limits, metrics, profiles
from parley.conf import parley_settings
from parley.http_auth import api_error
from parley.views import _json_body, api, rate_limited

_IDS_RE = re.compile(r"^[0-9]{1,16}(,[0-9]{1,16})*\Z")


def _refused(exc: profiles.ProfileRefused) -> JsonResponse:
    extra = {"field": exc.field} if exc.field else {}
    return api_error(exc.status, exc.code, exc.message, **extra)


def _charge(request: HttpRequest) -> JsonResponse | None:
    """Every change is charged before its body is read, refused ones included."""
    wait = limits.PROFILE_UPDATE_BUCKETS.take(request.user.pk)
    if wait:
        metrics.refused("profile_updates")
        return rate_limited(wait, "too many profile changes; wait before the next")
    return None


@api("GET", "PATCH")
def profile(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return JsonResponse({"profile": profiles.profile_get(user=request.user)})
    refusal = _charge(request)
    if refusal is not None:
        return refusal
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", "the body must be a JSON object, without U+0000 in its strings")
    if "display_name" not in body:
        return api_error(400, "missing_field", "send display_name (\"\" to clear it)", field="display_name")
    try:
        return JsonResponse({"profile": profiles.profile_update(user=request.user,
                                                                display_name=body["display_name"])})
    except profiles.ProfileRefused as exc:
        return _refused(exc)


@api("PUT", "DELETE")
def profile_avatar(request: HttpRequest) -> JsonResponse:
    refusal = _charge(request)
    if refusal is not None:
        return refusal
    if request.method == "DELETE":
        return JsonResponse({"profile": profiles.profile_avatar_clear(user=request.user)})
    limit = int(parley_settings.AVATAR_MAX_BYTES)
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:  # refused before the body is read
        return api_error(413, "avatar_too_large", f"an avatar image has at most {limit} bytes")
    try:
        return JsonResponse({"profile": profiles.profile_avatar_set(user=request.user, data=request.body)})
    except profiles.ProfileRefused as exc:
        return _refused(exc)


@api("GET")
def profile_list(request: HttpRequest) -> JsonResponse:
    raw = request.GET.get("ids", "")
    if not _IDS_RE.match(raw):
        return api_error(400, "bad_field", "ids: user ids separated by commas, e.g. ?ids=3,7", field="ids")
    ids = sorted({int(part) for part in raw.split(",")})
    most = int(parley_settings.MAX_PROFILE_IDS)
    if len(ids) > most:
        return api_error(400, "too_many_ids", f"at most {most} ids per request", field="ids")
    return JsonResponse({"profiles": profiles.profiles_get(user_ids=ids)})


@api("GET")
def avatar(request: HttpRequest, user_id: int) -> HttpResponse:
    png = profiles.avatar_read(user_id=user_id)
    if png is None:
        return api_error(404, "not_found", "this user has no avatar")
    response = HttpResponse(png, content_type="image/png")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = 'inline; filename="avatar.png"'
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    # The URL carries the avatar's version (?v=): a new avatar is a new URL, so this one can be
    # cached for good; private, because only signed-in users may fetch it.
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response
