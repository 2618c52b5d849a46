"""Uploads (docs/protocol.md §14): files posted to a room, then attached to a message.

An upload is stored at once (`upload_create`) and belongs to its uploader, unattached, until a
message of theirs in the same room names it in `attachments` (`uploads_claim`, in the
message's own transaction); one nobody claims expires (`uploads_expired_delete`). What a file
is comes from its bytes (`sniff`), never from the client's Content-Type or file name, and only
the raster images Pillow decodes are shown inline (parley.upload_views sets the headers).
Files go through Django's storage API, to the STORAGES alias PARLEY UPLOADS_STORAGE names.
"""

from __future__ import annotations

import secrets
import unicodedata
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any

from django.core.files.storage import Storage, storages
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from parley.conf import parley_settings
from parley.models import Attachment, Room
from parley.payloads import attachment_payload
from parley.selectors import room_visible_q

# Error codes of the upload endpoint and of `attachments` (docs/protocol.md §14).
FILE_TOO_LARGE = "file_too_large"
UNSUPPORTED_FILE_TYPE = "unsupported_file_type"
IMAGE_TOO_LARGE = "image_too_large"
ATTACHMENT_NOT_FOUND = "attachment_not_found"
TOO_MANY_ATTACHMENTS = "too_many_attachments"

# The types shown inline (after Pillow decoded the file): Pillow's format name → content type.
INLINE_IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
MAX_NAME_CHARS = 200  # of the uploader's file name as kept (the column holds 255)
SNIFF_BYTES = 8192  # read to tell text from binary
EXPIRE_BATCH = 100  # unattached uploads deleted per lazy sweep (each upload request runs one)
OCTET_STREAM = "application/octet-stream"


class UploadRefused(ValueError):
    """An upload that is not stored: `code` is the API's error code, `status` its HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def storage() -> Storage:
    return storages[parley_settings.UPLOADS_STORAGE]


# --- what a file is ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sniffed:
    content_type: str
    width: int | None = None
    height: int | None = None


_MAGIC: list[tuple[bytes, str]] = [
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),  # an empty archive
    (b"\x1f\x8b", "application/gzip"),
]
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def sniff(f: IO[bytes]) -> Sniffed:
    """The file's type from its bytes. A raster image (PNG, JPEG, GIF, WebP) is decoded by Pillow
    — after its width x height x frames was checked against UPLOAD_MAX_IMAGE_PIXELS, so a
    decompression bomb is refused (UploadRefused image_too_large) before it is decoded — and is
    then that image type with its size; one Pillow cannot decode is octet-stream. UTF-8 text
    without control characters (HTML and SVG among it: they are never served as such) is
    text/plain; anything else is octet-stream."""
    f.seek(0)
    head = f.read(SNIFF_BYTES)
    f.seek(0)
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return _image(f)
    for magic, content_type in _MAGIC:
        if head.startswith(magic):
            return Sniffed(content_type)
    return Sniffed("text/plain" if _is_text(head) else OCTET_STREAM)


def _is_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The sample may end inside a character: only an error in its last 3 bytes is that.
        if exc.start < len(head) - 3:
            return False
        text = head[:exc.start].decode("utf-8")
    return not any(unicodedata.category(c) == "Cc" and c not in "\t\n\r\f" for c in text)


def _image(f: IO[bytes]) -> Sniffed:
    from PIL import Image, UnidentifiedImageError

    limit = parley_settings.UPLOAD_MAX_IMAGE_PIXELS
    too_large = UploadRefused(IMAGE_TOO_LARGE, f"the image has more than {limit:,.0f} pixels", 413)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns (then raises) far above our limit: both are refusals.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as image:
                fmt, (width, height) = image.format, image.size
                if fmt not in INLINE_IMAGE_FORMATS:
                    return Sniffed(OCTET_STREAM)
                frames = getattr(image, "n_frames", 1)
                if width * height * frames > limit:
                    raise too_large
                image.load()  # decode the pixels (the first frame): a file that only looks like one fails
            f.seek(0)
            with Image.open(f) as image:
                image.verify()  # the checksums and structure Pillow can check without decoding
    except UploadRefused:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise too_large from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return Sniffed(OCTET_STREAM)
    finally:
        f.seek(0)
    return Sniffed(INLINE_IMAGE_FORMATS[fmt], width, height)


def safe_name(raw: str | None) -> str:
    """The uploader's file name as kept and shown: its last path component, without control
    characters (NUL included) or surrounding dots and spaces, at most MAX_NAME_CHARS (the
    extension kept); "file" if nothing is left. Never used as a storage path."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip(" .")
    if len(name) > MAX_NAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:MAX_NAME_CHARS - len(ext) - 1] + "." + ext) if dot and len(ext) <= 16 else name[:MAX_NAME_CHARS]
    return name or "file"


# --- services ---------------------------------------------------------------------------------


def upload_create(*, room: Room, uploader: Any, file: Any) -> Attachment:
    """Store an uploaded file (a Django UploadedFile) for `uploader` in `room`, unattached.
    The caller has checked that the uploader may see the room. Raises UploadRefused: over
    UPLOAD_MAX_BYTES, a type not in UPLOAD_CONTENT_TYPES (as sniffed), an image over
    UPLOAD_MAX_IMAGE_PIXELS. Sweeps a few expired unattached uploads first (lazy cleanup)."""
    uploads_expired_delete(limit=EXPIRE_BATCH)
    max_bytes = parley_settings.UPLOAD_MAX_BYTES
    if file.size > max_bytes:
        raise UploadRefused(FILE_TOO_LARGE, f"the file is {file.size:,} bytes; the limit is {max_bytes:,.0f}", 413)
    sniffed = sniff(file)
    if sniffed.content_type not in parley_settings.UPLOAD_CONTENT_TYPES:
        raise UploadRefused(UNSUPPORTED_FILE_TYPE, f"files of type {sniffed.content_type} are not accepted here", 415)
    # A random name: nothing of the uploader's name reaches a path, and names never collide.
    stored = storage().save(f"parley/{room.pk}/{secrets.token_hex(16)}", file)
    try:
        return Attachment.objects.create(room=room, uploader=uploader, file=stored, name=safe_name(file.name),
                                         size=file.size, content_type=sniffed.content_type,
                                         width=sniffed.width, height=sniffed.height)
    except BaseException:
        storage().delete(stored)
        raise


def uploads_expired_delete(*, limit: int | None = None) -> int:
    """Delete the unattached uploads older than UPLOAD_UNATTACHED_TTL_SECS (their files on
    commit, parley.receivers); how many. `limit`: at most that many, oldest first."""
    cutoff = timezone.now() - timedelta(seconds=parley_settings.UPLOAD_UNATTACHED_TTL_SECS)
    expired = Attachment.objects.filter(message__isnull=True, created_at__lt=cutoff).order_by("created_at")
    ids = list(expired.values_list("pk", flat=True)[:limit] if limit else expired.values_list("pk", flat=True))
    if not ids:
        return 0
    with transaction.atomic():
        # message IS NULL again: one claimed meanwhile stays.
        deleted, _ = Attachment.objects.filter(pk__in=ids, message__isnull=True).delete()
    return deleted


def attachment_record(upload: Attachment) -> dict[str, Any]:
    """What Message.attachments keeps of one file (the wire's object but its url)."""
    record: dict[str, Any] = {"id": upload.pk, "name": upload.name, "size": upload.size,
                              "content_type": upload.content_type}
    if upload.width is not None:
        record["width"], record["height"] = upload.width, upload.height
    return record


Refusal = tuple[str, str]  # (error code, message): parley.services makes it a MessageRefused


def uploads_claim(*, wanted: list[tuple[Any, int, tuple[int, ...]]]) -> list[list[dict[str, Any]] | Refusal | None]:
    """For each (author, room id, upload ids) of messages about to be stored: the attachment
    records in the order asked, a refusal (`attachment_not_found`: an id that is not the
    author's own unattached, unexpired upload in that room, or asked twice; `too_many_attachments`),
    or None for no ids. Must run in the messages' transaction: the rows are locked until it
    commits, so two messages cannot take one upload (`uploads_attach` then links them)."""
    all_ids = {i for _, _, ids in wanted for i in ids}
    if not all_ids:
        return [None] * len(wanted)
    cutoff = timezone.now() - timedelta(seconds=parley_settings.UPLOAD_UNATTACHED_TTL_SECS)
    rows = {a.pk: a for a in Attachment.objects.select_for_update().filter(
        pk__in=all_ids, message__isnull=True, created_at__gte=cutoff)}
    taken: set[int] = set()
    results: list[list[dict[str, Any]] | Refusal | None] = []
    for author, room_id, ids in wanted:
        if not ids:
            results.append(None)
            continue
        if len(ids) > parley_settings.MAX_ATTACHMENTS_PER_MESSAGE:
            results.append(too_many_attachments())
            continue
        found = [rows.get(i) for i in ids]
        if any(a is None or a.uploader_id != author.pk or a.room_id != room_id or a.pk in taken for a in found) \
                or len(set(ids)) != len(ids):
            results.append((ATTACHMENT_NOT_FOUND, "an attachment is not an unattached upload of yours in this room"))
            continue
        taken.update(ids)
        results.append([attachment_record(a) for a in found if a is not None])
    return results


def uploads_attach(*, links: list[tuple[int, list[dict[str, Any]]]]) -> None:
    """Link stored messages (by id) to the uploads their records name (uploads_claim's)."""
    for message_id, records in links:
        Attachment.objects.filter(pk__in=[r["id"] for r in records]).update(message_id=message_id)


def too_many_attachments() -> Refusal:
    return TOO_MANY_ATTACHMENTS, f"a message carries at most {parley_settings.MAX_ATTACHMENTS_PER_MESSAGE:.0f} attachments"


def message_files_delete(*, message: Any) -> None:
    """A message was deleted: its uploads go (rows now, files on commit)."""
    Attachment.objects.filter(message=message).delete()


# --- selectors --------------------------------------------------------------------------------


def upload_get_visible(*, user: Any, slug: str, upload_id: int) -> Attachment | None:
    """The upload if `user` may fetch it: its room is one the user may see now (the room's own
    rule, so a removed member gets None), and it is attached to a message that is not deleted,
    or it is the user's own unattached upload."""
    rooms = Room.objects.filter(room_visible_q(user=user), slug=slug)
    return (Attachment.objects.filter(pk=upload_id, room__in=rooms)
            .filter(Q(message__isnull=False, message__deleted_at__isnull=True)
                    | Q(message__isnull=True, uploader_id=user.pk))
            .first())


def upload_payload(upload: Attachment, *, room_slug: str) -> dict[str, Any]:
    """The wire's attachment object (docs/protocol.md §14), as a message carries it."""
    return attachment_payload(attachment_record(upload), room_slug=room_slug)
