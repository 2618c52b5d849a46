"""GET /api/search (docs/protocol.md §13): a thin view over parley.search."""

from __future__ import annotations

import orjson
from django.http import HttpRequest, HttpResponse

from parley import limits, metrics, search
from parley.http_auth import api_error
from parley.views import _query_int, api, rate_limited


@api("GET")
def search_messages(request: HttpRequest) -> HttpResponse:
    """`?q=` (words, "phrases", in:#room, from:@user, after:/before:YYYY-MM-DD), `limit`
    (clamped to SEARCH_PAGE_MAX), `before` (an earlier page's `next`)."""
    # Charged first, refused and malformed searches too: each one may cost the database a scan.
    wait = limits.USER_SEARCH_BUCKETS.shared_take_blocking(request.user.pk)
    if wait:
        metrics.refused("searches")
        return rate_limited(wait, "too many searches; retry later")
    limit = _query_int(request, "limit", 1)
    if limit is False:
        return api_error(400, "bad_field", "limit must be an integer from 1 to 2^53", field="limit")
    try:
        query = search.search_parse(request.GET.get("q"))
        page = search.message_search(user=request.user, query=query, limit=search.search_page_limit(limit),
                                     before=search.cursor_decode(request.GET.get("before")))
    except search.SearchRefused as exc:
        return api_error(exc.status, exc.code, exc.message, **exc.extra)
    return HttpResponse(orjson.dumps({"results": page.results, "next": page.next}), content_type="application/json")
