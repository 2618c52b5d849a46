"""Search over the messages a user may see (docs/protocol.md §13).

`search_parse` turns the `q` of GET /api/search into a SearchQuery (words, quoted phrases,
filters) or raises SearchRefused with the documented error code; `message_search` runs it.
The database does the matching, ranking and highlighting (PostgreSQL full text, SQLite FTS5:
migration 0005_search, the storage modules' `search_*`); this module decides *what* may be
searched: only `message` entries that are not deleted, only in rooms room_visible_q lets the
user see, so a search can never reach further than a join could.

Highlights come back from the database with marker strings chosen for the request that occur in
none of the texts searched (`_markers`), and leave here as segments `{"text", "hit"}`: no HTML
is ever built, and no text can forge a highlight.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model

from parley.conf import parley_settings
from parley.models import SLUG_RE, Message, Room
from parley.selectors import reactions_mine, room_visible_q, with_quotes
from parley.storage import db
from parley.storage.errors import StatementTimedOut

# Error codes of GET /api/search (docs/protocol.md §13), all HTTP 400.
QUERY_TOO_LONG = "query_too_long"
QUERY_EMPTY = "query_empty"
BAD_FILTER = "bad_filter"

FILTERS = ("in", "from", "after", "before")
_FILTER_RE = re.compile(r"^(in|from|after|before):(.*)\Z", re.IGNORECASE | re.DOTALL)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
_WORD_CHAR = re.compile(r"\w")  # a term with none (punctuation alone) matches nothing anywhere
# A snippet is an excerpt: at most this many characters of text, hits included.
SNIPPET_MAX_CHARS = 300
# Words the databases put around a hit, at most (ts_headline MaxWords, snippet()'s tokens).
SNIPPET_WORDS = 24
ELLIPSIS = "…"


class SearchRefused(Exception):
    """A query that cannot be run: `code` is the API's error code, `extra` the body's other fields."""

    def __init__(self, code: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.extra = code, message, status, extra


@dataclass(frozen=True)
class SearchQuery:
    words: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()
    rooms: tuple[str, ...] = ()  # slugs of in:#room (any of them)
    authors: tuple[str, ...] = ()  # usernames of from:@user (any of them)
    after: dt.datetime | None = None  # posted at or after (UTC midnight of the day named)
    before: dt.datetime | None = None  # posted before (UTC midnight of the day named)

    @property
    def terms(self) -> tuple[str, ...]:
        """Every word and phrase, each matched as a whole (a word is a phrase of one)."""
        return self.words + self.phrases

    def websearch(self) -> str:
        """The terms as PostgreSQL's websearch_to_tsquery reads them: each in double quotes, so
        that no word is an operator (`or`, `-x`) and every term must match."""
        return " ".join(f'"{t}"' for t in self.terms)

    def fts5(self) -> str:
        """The terms as an FTS5 MATCH expression: each an FTS5 string (its `"` doubled), so that
        nothing in a word is FTS5 syntax (`NEAR`, `col:`, `*`), all of them required."""
        return " ".join('"' + t.replace('"', '""') + '"' for t in self.terms)


@dataclass
class SearchPage:
    results: list[dict[str, Any]] = field(default_factory=list)
    next: str | None = None


def search_parse(q: Any) -> SearchQuery:
    """`q` as a SearchQuery, or SearchRefused: `missing_field` (no q), `bad_field` (not text,
    or U+0000), `query_too_long`, `bad_filter` (with `filter`: its name), `query_empty`."""
    if q is None:
        raise SearchRefused("missing_field", "give the search as ?q=", field="q")
    if not isinstance(q, str) or "\x00" in q:
        raise SearchRefused("bad_field", "q must be text without U+0000", field="q")
    longest = int(parley_settings.SEARCH_QUERY_MAX_CHARS)
    if len(q) > longest:
        raise SearchRefused(QUERY_TOO_LONG, f"the search is {len(q):,} characters; the limit is {longest:,}",
                            max_chars=longest)
    words: list[str] = []
    phrases: list[str] = []
    rooms: list[str] = []
    authors: list[str] = []
    dates: dict[str, dt.datetime] = {}
    for token, quoted in _tokens(q):
        if quoted:
            phrase = " ".join(token.split())
            if _WORD_CHAR.search(phrase):
                phrases.append(phrase)
            continue
        found = _FILTER_RE.match(token)
        if found is None:
            if _WORD_CHAR.search(token):
                words.append(token)
            continue
        name, value = found.group(1).lower(), found.group(2)
        if name == "in":
            slug = value.removeprefix("#").lower()
            if not SLUG_RE.match(slug):
                raise SearchRefused(BAD_FILTER, "in: takes a room, as in:#lobby", filter="in")
            rooms.append(slug)
        elif name == "from":
            username = value.removeprefix("@")
            if not username:
                raise SearchRefused(BAD_FILTER, "from: takes a user, as from:@ada", filter="from")
            authors.append(username)
        else:
            if name in dates:
                raise SearchRefused(BAD_FILTER, f"{name}: may be given once", filter=name)
            dates[name] = _day(name, value)
    if not (words or phrases or rooms or authors or dates):
        raise SearchRefused(QUERY_EMPTY, "nothing to search for: give words, a \"phrase\" or a filter")
    return SearchQuery(words=tuple(words), phrases=tuple(phrases), rooms=tuple(dict.fromkeys(rooms)),
                       authors=tuple(dict.fromkeys(authors)), after=dates.get("after"), before=dates.get("before"))


def _tokens(q: str) -> list[tuple[str, bool]]:
    """(token, quoted) in order: "…" is one quoted token (an unclosed quote runs to the end),
    anything else splits on whitespace."""
    out: list[tuple[str, bool]] = []
    for i, part in enumerate(q.split('"')):
        if i % 2:
            out.append((part, True))
        else:
            out.extend((word, False) for word in part.split())
    return out


def _day(name: str, value: str) -> dt.datetime:
    if _DATE_RE.match(value):
        try:
            return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), tzinfo=dt.UTC)
        except ValueError:
            pass
    raise SearchRefused(BAD_FILTER, f"{name}: takes a date, as {name}:2026-12-01", filter=name)


def search_page_limit(limit: int | None) -> int:
    """The page's size: SEARCH_PAGE_DEFAULT, and never more than SEARCH_PAGE_MAX (clamped, as
    history pages are)."""
    page_max = max(1, int(parley_settings.SEARCH_PAGE_MAX))
    return max(1, min(int(parley_settings.SEARCH_PAGE_DEFAULT) if limit is None else limit, page_max))


# --- cursors --------------------------------------------------------------------------------
# A page ends at (score, id); the next starts below it in the order score DESC, id DESC. The
# score is the database's own float: given back unchanged, it compares equal to itself.
_CURSOR_RE = re.compile(r"^(-?[0-9][0-9.eE+-]{0,30})_([0-9]{1,19})\Z")


def cursor_encode(score: float, message_id: int) -> str:
    return f"{score!r}_{message_id}"


def cursor_decode(raw: str | None) -> tuple[float, int] | None:
    if raw is None or raw == "":
        return None
    found = _CURSOR_RE.match(raw)
    if found is not None:
        try:
            score = float(found.group(1))
        except ValueError:
            score = math.nan
        if math.isfinite(score) and int(found.group(2)) < 2**63:
            return score, int(found.group(2))
    raise SearchRefused("bad_field", "before must be the `next` of an earlier page", field="before")


# --- the search -----------------------------------------------------------------------------


def message_search(*, user: Any, query: SearchQuery, limit: int, before: tuple[float, int] | None) -> SearchPage:
    """The page of `query`'s results the user may see: ranked best first (filters alone:
    newest first), each with its room's slug, the message as pages show it and its snippet.
    Its statements run for at most SEARCH_TIMEOUT_MS (else SearchRefused search_timeout, 503)."""
    timeout_ms = int(parley_settings.SEARCH_TIMEOUT_MS)
    try:
        with db().time_limit(timeout_ms):
            return _message_search(user=user, query=query, limit=limit, before=before)
    except StatementTimedOut:
        raise SearchRefused("search_timeout", f"the search took longer than {timeout_ms} ms: narrow it "
                            "(more words, in:#room, from:@user, a date) or try again later",
                            status=503, timeout_ms=timeout_ms) from None


def _message_search(*, user: Any, query: SearchQuery, limit: int, before: tuple[float, int] | None) -> SearchPage:
    rooms = Room.objects.filter(room_visible_q(user=user)).order_by()  # a subquery: no ORDER BY
    if query.rooms:
        rooms = rooms.filter(slug__in=query.rooms)
    User = get_user_model()
    authors = (User._default_manager.filter(**{f"{User.USERNAME_FIELD}__in": query.authors}).order_by().values("pk")
               if query.authors else None)
    found = db().search_matches(query=query, rooms=rooms.values("id"), authors=authors,
                                limit=limit + 1, before=before)
    hits, more = found[:limit], len(found) > limit
    by_id = {m.pk: m for m in Message.objects.filter(pk__in=[pk for pk, _ in hits]).select_related("author", "room")}
    # A message deleted or moved out of sight between the two reads is left out.
    messages = [by_id[pk] for pk, _ in hits if pk in by_id and by_id[pk].deleted_at is None]
    with_quotes(messages)
    snippets = _snippets(query, messages)
    mine = reactions_mine(user_id=user.pk, messages=messages)
    from parley.payloads import message_payload  # (payloads imports selectors, as this module does)

    page = SearchPage(results=[{
        "room": m.room.slug,
        "message": message_payload(m, room_slug=m.room.slug, reader_reactions=mine),
        "snippet": snippets[m.pk],
    } for m in messages])
    if more and hits:
        page.next = cursor_encode(hits[-1][1], hits[-1][0])
    return page


@dataclass(frozen=True)
class Markers:
    start: str
    stop: str
    gap: str


def _markers(texts: list[str]) -> Markers:
    """Highlight markers that occur in none of `texts`: letters and digits only (nothing
    ts_headline's option syntax or snippet() treats specially), random per request."""
    while True:
        token = secrets.token_hex(6)
        markers = Markers(f"PRLS{token}", f"PRLE{token}", f"PRLD{token}")
        if not any(token in t for t in texts):
            return markers


def _snippets(query: SearchQuery, messages: list[Message]) -> dict[int, list[dict[str, Any]]]:
    if not messages:
        return {}
    if not query.terms:
        return {m.pk: _excerpt(m.text) for m in messages}
    markers = _markers([m.text for m in messages])
    marked = db().search_snippets(query=query, ids=[m.pk for m in messages], markers=markers, words=SNIPPET_WORDS,
                                  whole_chars=SNIPPET_MAX_CHARS)
    return {m.pk: snippet_segments(marked.get(m.pk) or "", m.text, markers) for m in messages}


def _excerpt(text: str) -> list[dict[str, Any]]:
    if len(text) <= SNIPPET_MAX_CHARS:
        return [{"text": text, "hit": False}]
    return [{"text": text[:SNIPPET_MAX_CHARS].rstrip() + ELLIPSIS, "hit": False}]


def snippet_segments(marked: str, text: str, markers: Markers) -> list[dict[str, Any]]:
    """The database's marked excerpt of `text` as segments: hits between start and stop, an
    ellipsis where fragments were cut (the gap marker, and either end of the excerpt that is
    not an end of the text), adjacent segments of one kind merged, at most SNIPPET_MAX_CHARS."""
    if not marked.replace(markers.start, "").replace(markers.stop, "").strip():
        return _excerpt(text)
    segments: list[dict[str, Any]] = []
    plain = marked.replace(markers.start, "").replace(markers.stop, "")
    fragments = [f.strip() for f in plain.split(markers.gap)]
    if fragments[0] and not text.lstrip().startswith(fragments[0]):
        segments.append({"text": ELLIPSIS, "hit": False})
    hit = False
    for piece in re.split(f"({re.escape(markers.start)}|{re.escape(markers.stop)}|{re.escape(markers.gap)})", marked):
        if piece == markers.start:
            hit = True
        elif piece == markers.stop:
            hit = False
        elif piece == markers.gap:
            segments.append({"text": f" {ELLIPSIS} ", "hit": False})
        elif piece:
            segments.append({"text": piece, "hit": hit})
    if fragments[-1] and not text.rstrip().endswith(fragments[-1]):
        segments.append({"text": ELLIPSIS, "hit": False})
    return _bounded(_merged(segments))


def _merged(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in segments:
        if out and out[-1]["hit"] == s["hit"]:
            out[-1] = {"text": out[-1]["text"] + s["text"], "hit": s["hit"]}
        else:
            out.append(s)
    if out and not out[0]["hit"]:
        out[0] = {"text": out[0]["text"].lstrip(), "hit": False}
    if out and not out[-1]["hit"]:
        out[-1] = {"text": out[-1]["text"].rstrip(), "hit": False}
    return [s for s in out if s["text"]]


def _bounded(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    left = SNIPPET_MAX_CHARS
    out = []
    for s in segments:
        if left <= 0:
            out.append({"text": ELLIPSIS, "hit": False})
            break
        piece = s["text"][:left]
        out.append({"text": piece, "hit": s["hit"]})
        left -= len(piece)
    return _merged(out)
