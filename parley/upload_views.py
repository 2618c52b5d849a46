"""The uploads API (docs/protocol.md §14): `POST /api/rooms/<slug>/uploads` stores a file,
`GET /api/rooms/<slug>/uploads/<id>` serves it to whoever may see the room.

Serving user files from the app's own origin is the risk: an HTML or SVG file opened there
would run its script as the site. So every download is `X-Content-Type-Options: nosniff`,
under `Content-Security-Policy: sandbox; default-src 'none'` (no script, an opaque origin,
nothing loaded), and `Content-Disposition: attachment` — a download, never a page — except
the raster images Pillow decoded at upload (parley.uploads.sniff), which are shown inline.
Text of any kind (HTML, SVG) is sniffed as, and served as, text/plain.
"""

from __future__ import annotations

import logging

from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.utils.http import content_disposition_header

from parley import limits, metrics, selectors, uploads
from parley.conf import parley_settings
from parley.http_auth import api_error
from parley.uploads import INLINE_IMAGE_FORMATS, UploadRefused
from parley.views import api, rate_limited

log = logging.getLogger(__name__)

# What a multipart body adds around its one file (boundaries, part headers, a CSRF field):
# a request announcing more than UPLOAD_MAX_BYTES plus this cannot hold an acceptable file.
MULTIPART_OVERHEAD_BYTES = 16 * 1024
DOWNLOAD_CSP = "sandbox; default-src 'none'"
_INLINE_TYPES = frozenset(INLINE_IMAGE_FORMATS.values())


def upload_too_large() -> JsonResponse:
    return api_error(413, uploads.FILE_TOO_LARGE,
                     f"a file may have at most {parley_settings.UPLOAD_MAX_BYTES:,.0f} bytes")


class _SizeCap(FileUploadHandler):
    """First of the request's upload handlers: stops reading the body as soon as the file passes
    UPLOAD_MAX_BYTES (a body whose Content-Length lied, or a chunked one), before the rest is
    stored by the handlers after it."""

    def __init__(self, request: HttpRequest) -> None:
        super().__init__(request)
        self.seen = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.seen += len(raw_data)
        if self.seen > parley_settings.UPLOAD_MAX_BYTES:
            self.request.parley_upload_too_large = True
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def _before_body(request: HttpRequest, slug: str) -> HttpResponse | None:
    """Before the body is read (parley.views.api): the upload rate (refused requests count),
    the announced size, the room; then the size cap for the parse."""
    wait = limits.USER_UPLOAD_BUCKETS.take(request.user.pk)
    if wait:
        metrics.refused("uploads")
        return rate_limited(wait, "too many uploads; wait before uploading again")
    try:
        announced = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        announced = 0
    if announced > parley_settings.UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD_BYTES:
        return upload_too_large()
    if selectors.room_get_visible(user=request.user, slug=slug) is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    request.upload_handlers.insert(0, _SizeCap(request))
    return None


@api("POST", before_body=_before_body)
def room_uploads(request: HttpRequest, slug: str) -> HttpResponse:
    """Store the multipart field `file`, unattached, for the caller: 201 {"upload": {...}}."""
    room = selectors.room_get_visible(user=request.user, slug=slug)
    if room is None:
        return api_error(404, "room_not_found", f"no room {slug!r} that you may see")
    files = request.FILES.getlist("file")
    if getattr(request, "parley_upload_too_large", False):
        return upload_too_large()
    if len(files) != 1:
        code, what = ("missing_field", "send one file") if not files else ("bad_field", "send one file, not several")
        return api_error(400, code, f"{what}: a multipart/form-data field named 'file'", field="file")
    try:
        upload = uploads.upload_create(room=room, uploader=request.user, file=files[0])
    except UploadRefused as refused:
        return api_error(refused.status, refused.code, refused.message)
    return JsonResponse({"upload": uploads.upload_payload(upload, room_slug=room.slug)}, status=201)


@api("GET")
def room_upload(request: HttpRequest, slug: str, upload_id: int) -> HttpResponse:
    """The file, to anyone who may see the room now (404 otherwise, as for the room itself)."""
    upload = uploads.upload_get_visible(user=request.user, slug=slug, upload_id=upload_id)
    if upload is None:
        return api_error(404, "upload_not_found", "no such file in a room you may see")
    etag = f'"parley-upload-{upload.pk}"'  # a stored file never changes: its id names its bytes
    if request.headers.get("If-None-Match") == etag:
        response: HttpResponse = HttpResponse(status=304)
    else:
        inline = upload.content_type in _INLINE_TYPES and upload.width is not None
        content_type = "text/plain; charset=utf-8" if upload.content_type == "text/plain" else upload.content_type
        try:
            handle = uploads.storage().open(upload.file, "rb")
        except FileNotFoundError:
            # Its row is here but its bytes are not (removed from the storage by hand, or a
            # restore without the media): the same answer as a deleted message's file.
            log.warning("upload %s: %r is missing from the storage", upload.pk, upload.file)
            return api_error(404, "upload_not_found", "this file is no longer stored")
        response = FileResponse(handle, content_type=content_type)
        response["Content-Length"] = str(upload.size)
        response["Content-Disposition"] = content_disposition_header(not inline, upload.name)
    _download_headers(response, etag)
    return response


def _download_headers(response: HttpResponse, etag: str) -> None:
    response["ETag"] = etag
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = DOWNLOAD_CSP
    # Private: a shared cache must not hand one user's file to another. Revalidated each time,
    # so a user who lost the room stops getting it (304 only after the access check above).
    response["Cache-Control"] = "private, no-cache"
    response["Cross-Origin-Resource-Policy"] = "same-origin"
