"""The HTTP API of rooms, members and direct conversations (docs/protocol.md §12): thin views
over parley.rooms (writes) and parley.selectors (reads)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from parley import limits, metrics, rooms, selectors, services
from parley.conf import parley_settings
from parley.http_auth import api_error
from parley.models import Membership, Room
from parley.payloads import room_payload, user_payload
from parley.views import _json_body, _managed_room, api, rate_limited

# People picker: at most this many users per answer, for a prefix of at most this many characters.
USER_SEARCH_MAX_RESULTS = 10
USER_SEARCH_MAX_CHARS = 150

_dm_creations = limits.BucketMap(limits.DMS_CREATED_PER_USER_PER_HOUR, per=3600.0)
_user_searches = limits.BucketMap(limits.USER_SEARCHES_PER_MIN, per=60.0)

_BAD_JSON = "the body must be a JSON object, without U+0000 in its strings"


def _refused(exc: rooms.RoomRefused) -> JsonResponse:
    return api_error(exc.status, exc.code, exc.message, **exc.extra)


def _room_answer(room: Room, status: int = 200) -> JsonResponse:
    selectors.rooms_with_dm_members(rooms=[room])
    return JsonResponse({"room": room_payload(room, v2=True)}, status=status)


@api("POST")
def dms(request: HttpRequest) -> JsonResponse:
    """POST /api/dms {"usernames": [...]}: the DM with these people, 201 new or 200 existing."""
    wait = _dm_creations.take(request.user.pk)  # every request counts, refused ones too
    if wait:
        metrics.refused("dms_created")
        return rate_limited(wait, "too many direct conversations opened; wait before opening another")
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", _BAD_JSON)
    try:
        room, created = rooms.dm_open(creator=request.user, usernames=body.get("usernames"))
    except rooms.RoomRefused as exc:
        return _refused(exc)
    return _room_answer(room, 201 if created else 200)


@api("GET")
def users(request: HttpRequest) -> JsonResponse:
    """GET /api/users?q=prefix: up to 10 active users whose username or name starts with it."""
    if parley_settings.USER_SEARCHES_PER_MIN == 0:
        return api_error(403, "user_search_disabled", "this server does not list its users")
    wait = _user_searches.take(request.user.pk)
    if wait:
        metrics.refused("user_searches")
        return rate_limited(wait, "too many user searches; wait a moment")
    q = request.GET.get("q", "").strip()
    if not q or len(q) > USER_SEARCH_MAX_CHARS or "\x00" in q:
        return api_error(400, "bad_field", f"'q' must be 1-{USER_SEARCH_MAX_CHARS} characters", field="q")
    found = selectors.users_search(prefix=q, limit=USER_SEARCH_MAX_RESULTS)
    return JsonResponse({"users": [user_payload(u) for u in found]})


@api("PATCH")
def room_detail(request: HttpRequest, slug: str) -> JsonResponse:
    """PATCH /api/rooms/<slug> {"title"?, "archived"?}: the owner or an admin renames, archives
    or unarchives a room."""
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    if room.kind == Room.Kind.DM:
        return api_error(409, "dm_fixed", "a direct conversation has no owner: its name and members are fixed")
    if not selectors.room_user_can_manage(room=room, user=request.user):
        return api_error(403, "forbidden", "only the room's owner or an admin changes a room")
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", _BAD_JSON)
    if body.get("title") is None and body.get("archived") is None:
        return api_error(400, "missing_field", "send 'title' and/or 'archived'", field="title")
    try:
        rooms.room_update(room=room, title=body.get("title"), archived=body.get("archived"))
    except rooms.RoomRefused as exc:
        return _refused(exc)
    return _room_answer(room)


@api("POST")
def room_leave(request: HttpRequest, slug: str) -> JsonResponse:
    """POST /api/rooms/<slug>/leave: out of a private room (not its owner), or a public room or
    DM out of your list."""
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    try:
        rooms.room_leave(room=room, user=request.user)
    except rooms.RoomRefused as exc:
        return _refused(exc)
    return JsonResponse({"left": room.slug})


@api("DELETE", "PATCH")
def room_member_detail(request: HttpRequest, slug: str, username: str) -> JsonResponse:
    """DELETE: remove a member (owner/admin); their open sockets leave the room at once.
    PATCH {"role"}: make them a member or moderator, or hand the room over ("owner")."""
    room = _managed_room(request, slug)
    if isinstance(room, JsonResponse):
        return room
    user = selectors.user_get_by_username(username=username)
    if request.method == "DELETE":
        if user is None or not services.membership_remove(room=room, user=user):
            return api_error(404, "member_not_found", "no such member (the owner cannot be removed)")
        return JsonResponse({"removed": user_payload(user)})
    if user is None:
        return api_error(404, "member_not_found", "no such member")
    body = _json_body(request)
    if body is None:
        return api_error(400, "bad_json", _BAD_JSON)
    role = body.get("role")
    if role is None:
        return api_error(400, "missing_field", "send 'role'", field="role")
    try:
        membership: Membership = rooms.membership_set_role(room=room, user=user, role=role, actor=request.user)
    except rooms.RoomRefused as exc:
        return _refused(exc)
    return JsonResponse({"member": {**user_payload(user), "role": membership.role}})
