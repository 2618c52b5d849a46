"""How people appear: display names and avatars (docs/protocol.md §15).

Services (writes) and selectors (reads) of parley.models.Profile. The wire's `user` object stays
`{"id", "username"}` everywhere (every message carries one, and the fan-out encodes it once per
message): clients look names and avatars up by id (`GET /api/profiles?ids=`) and cache them.

An avatar is never served as uploaded: it is decoded by Pillow (PNG, JPEG, GIF or WebP only, its
pixel count checked from the header before anything is decoded), cropped to a square, resized
and re-encoded as a PNG. What is stored and served is that PNG, so an upload that is really HTML,
SVG or a polyglot never reaches another user's browser.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.urls import reverse

from parley.conf import parley_settings
from parley.models import Profile

# Avatars are shown at 20-40 CSS px; 128 px keeps them sharp on 3x screens and small (~10-30 KB).
AVATAR_SIZE_PX = 128
AVATAR_FORMATS = frozenset({"PNG", "JPEG", "GIF", "WEBP"})


class ProfileRefused(Exception):
    """A profile change that breaks a rule: `status` and `code` are the HTTP answer's."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def avatar_storage() -> Storage:
    return storages[parley_settings.AVATAR_STORAGE]


# --- selectors -------------------------------------------------------------------------------


def display_name_of(user: Any, profile: Profile | None) -> str:
    """The name to show: the profile's display name, else the user's full name (if the user
    model has one), else the username."""
    if profile is not None and profile.display_name:
        return profile.display_name
    full_name = getattr(user, "get_full_name", None)
    name = full_name().strip() if callable(full_name) else ""
    return name or user.get_username()


def avatar_url(profile: Profile | None) -> str | None:
    if profile is None or not profile.avatar:
        return None
    path = reverse("parley:api-profile-avatar", args=[profile.user_id])
    return f"{path}?v={profile.avatar_version}"


def profile_payload(user: Any, profile: Profile | None) -> dict[str, Any]:
    return {
        "id": user.pk,
        "username": user.get_username(),
        "name": display_name_of(user, profile),
        "display_name": profile.display_name if profile is not None else "",
        "avatar": avatar_url(profile),
    }


def profiles_get(*, user_ids: list[int]) -> list[dict[str, Any]]:
    """The profiles of these users (active ones; unknown ids are left out), in id order."""
    users = get_user_model().objects.filter(pk__in=user_ids, is_active=True).order_by("pk")
    by_user = {p.user_id: p for p in Profile.objects.filter(user_id__in=user_ids)}
    return [profile_payload(user, by_user.get(user.pk)) for user in users]


def profile_get(*, user: Any) -> dict[str, Any]:
    return profile_payload(user, Profile.objects.filter(user=user).first())


def avatar_read(*, user_id: int) -> bytes | None:
    """The stored PNG of a user's avatar, or None (no avatar, or an inactive user)."""
    profile = Profile.objects.filter(user_id=user_id, user__is_active=True).first()
    if profile is None or not profile.avatar:
        return None
    try:
        with avatar_storage().open(profile.avatar, "rb") as f:
            return bytes(f.read())
    except FileNotFoundError:
        return None


# --- services --------------------------------------------------------------------------------


def profile_update(*, user: Any, display_name: Any) -> dict[str, Any]:
    """Set the display name ("" clears it: the full name or username shows again)."""
    if not isinstance(display_name, str) or "\x00" in display_name:
        raise ProfileRefused(400, "bad_field", "display_name must be a string", field="display_name")
    name = " ".join(display_name.split())  # no newlines or runs of spaces in a name
    limit = int(parley_settings.DISPLAY_NAME_MAX_CHARS)
    if len(name) > limit:
        raise ProfileRefused(400, "display_name_too_long", f"a display name has at most {limit} characters",
                             field="display_name")
    profile, _ = Profile.objects.get_or_create(user=user)
    profile.display_name = name
    profile.save(update_fields=["display_name", "updated_at"])
    return profile_payload(user, profile)


def profile_avatar_set(*, user: Any, data: bytes) -> dict[str, Any]:
    """Store a new avatar from an uploaded image (see the module docstring for what is kept)."""
    png = avatar_png(data)
    with transaction.atomic():
        profile, _ = Profile.objects.select_for_update().get_or_create(user=user)
        old = profile.avatar
        profile.avatar_version += 1
        name = f"parley/avatars/{user.pk}-{profile.avatar_version}.png"
        profile.avatar = avatar_storage().save(name, ContentFile(png))
        profile.save(update_fields=["avatar", "avatar_version", "updated_at"])
    if old:
        _delete_quietly(old)
    return profile_payload(user, profile)


def profile_avatar_clear(*, user: Any) -> dict[str, Any]:
    """Back to generated initials."""
    profile = Profile.objects.filter(user=user).first()
    if profile is not None and profile.avatar:
        old = profile.avatar
        profile.avatar = ""
        profile.avatar_version += 1
        profile.save(update_fields=["avatar", "avatar_version", "updated_at"])
        _delete_quietly(old)
    return profile_payload(user, profile)


def _delete_quietly(name: str) -> None:
    try:
        avatar_storage().delete(name)
    except OSError:
        pass  # an orphaned file costs disk, not correctness: nothing points at it any more


def avatar_png(data: bytes) -> bytes:
    """Decode, check, square-crop, resize and re-encode an uploaded image as PNG."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = int(parley_settings.AVATAR_MAX_BYTES)
    if len(data) > limit:
        raise ProfileRefused(413, "avatar_too_large", f"an avatar image has at most {limit} bytes")
    with warnings.catch_warnings():
        # Pillow warns (and past twice its own limit raises) on huge images; ours is lower and
        # checked below from the header, before any pixel is decoded.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data))
            if opened.format not in AVATAR_FORMATS:
                raise ProfileRefused(400, "bad_image", "an avatar is a PNG, JPEG, GIF or WebP image")
            width, height = opened.size
            if width * height > parley_settings.AVATAR_MAX_PIXELS:
                raise ProfileRefused(413, "avatar_too_large",
                                     f"an avatar image has at most {int(parley_settings.AVATAR_MAX_PIXELS)} pixels")
            opened.seek(0)  # an animated GIF or WebP: its first frame
            # A phone photo's orientation, then decoded for real (a corrupt body fails here).
            image = ImageOps.exif_transpose(opened).convert("RGBA")
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
                OSError, ValueError, SyntaxError) as exc:
            # SyntaxError: what some of Pillow's decoders raise for a corrupt file.
            raise ProfileRefused(400, "bad_image", "the file is not an image Parley can read") from exc
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    square = square.resize((AVATAR_SIZE_PX, AVATAR_SIZE_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    square.save(out, format="PNG", optimize=True)
    return out.getvalue()
