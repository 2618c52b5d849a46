"""GET /api/search (docs/protocol.md §13) on the database the run uses (SQLite, or PostgreSQL
with DATABASE_URL): matching, ranking, filters, snippets, pages, its limits, and above all
what it must never show — other people's private rooms and DMs, a room one was removed from,
deleted text, the old text of an edited message."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from parley import conversation, services
from parley.models import Membership, Message, Room
from tests.conftest import override_parley, user


def token(u: Any) -> str:
    return services.token_create(user=u, name="t")[1]


def search(raw: str, q: str | None, **params: Any) -> Any:
    query = {**({"q": q} if q is not None else {}), **params}
    return Client().get("/api/search", query, headers={"Authorization": f"Bearer {raw}"})


def hits(raw: str, q: str, **params: Any) -> list[str]:
    response = search(raw, q, **params)
    assert response.status_code == 200, response.content[:300]
    return [r["message"]["text"] for r in response.json()["results"]]


def post(room: Room, author: Any, text: str) -> Message:
    message, _ = services.message_post(room=room.slug, text=text, author=author, client_id=None, source="python")
    return message


def refused(response: Any, code: str, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()["error"]
    assert body["code"] == code, body
    return body


@pytest.mark.django_db
def test_words_phrases_and_stemming_match_and_the_result_is_a_page_message():
    ada, bob = user("ada"), user("bob")
    lobby = services.room_create(slug="lobby", title="Lobby")
    first = post(lobby, ada, "We deployed the new server today")
    post(lobby, bob, "lunch at noon?")
    post(lobby, bob, "the server room is cold")
    raw = token(bob)
    assert hits(raw, "deploy") == ["We deployed the new server today"]  # stemmed on both databases
    assert sorted(hits(raw, "server")) == ["We deployed the new server today", "the server room is cold"]
    assert hits(raw, "server deployed") == ["We deployed the new server today"]  # every word
    assert hits(raw, '"server room"') == ["the server room is cold"]  # a phrase, in order
    assert hits(raw, '"room server"') == []
    assert hits(raw, "nothinglikethis") == []
    body = search(raw, "deploy").json()
    assert body["next"] is None
    [result] = body["results"]
    assert result["room"] == "lobby"
    message = result["message"]
    assert message["seq"] == first.seq and message["id"] == first.pk and message["author"]["username"] == "ada"
    assert set(message) == {"room", "seq", "id", "client_id", "author", "text", "ts"}


@pytest.mark.django_db
def test_snippets_are_segments_with_the_hits_marked():
    ada = user("ada")
    lobby = services.room_create(slug="lobby", title="Lobby")
    post(lobby, ada, "We deployed the new server today")
    long_text = " ".join(["filler"] * 120 + ["the", "needle", "is", "here"] + ["padding"] * 120)
    post(lobby, ada, long_text)
    post(lobby, ada, "<b>bold</b> & PRLS markers stay text")
    raw = token(ada)
    [result] = search(raw, "deploy").json()["results"]
    segments = result["snippet"]
    assert all(set(s) == {"text", "hit"} for s in segments)
    assert [s["text"] for s in segments if s["hit"]] == ["deployed"]
    assert "".join(s["text"] for s in segments) == "We deployed the new server today"
    [result] = search(raw, "needle").json()["results"]
    segments = result["snippet"]
    joined = "".join(s["text"] for s in segments)
    assert [s["text"] for s in segments if s["hit"]] == ["needle"]
    assert joined.startswith("…") and joined.endswith("…") and len(joined) < 400
    [result] = search(raw, "bold").json()["results"]
    assert "".join(s["text"] for s in result["snippet"]) == "<b>bold</b> & PRLS markers stay text"
    assert [s["text"] for s in result["snippet"] if s["hit"]] == ["bold"]


@pytest.mark.django_db
def test_ranking_puts_the_denser_match_first_and_ties_newest_first():
    ada = user("ada")
    lobby = services.room_create(slug="lobby", title="Lobby")
    post(lobby, ada, "maybe we could deploy the thing at some point later this week if it is ready")
    post(lobby, ada, "deploy deploy deploy")
    older = post(lobby, ada, "kiwi")
    newer = post(lobby, ada, "kiwi")
    raw = token(ada)
    assert hits(raw, "deploy") == ["deploy deploy deploy",
                                   "maybe we could deploy the thing at some point later this week if it is ready"]
    assert [r["message"]["seq"] for r in search(raw, "kiwi").json()["results"]] == [newer.seq, older.seq]


@pytest.mark.django_db
def test_pages_follow_next_without_repeats_and_limit_is_clamped():
    ada = user("ada")
    lobby = services.room_create(slug="lobby", title="Lobby")
    for i in range(7):
        post(lobby, ada, "apple " * (1 + i % 3) + f"number {i}")
    raw = token(ada)
    everything = search(raw, "apple", limit=50).json()
    assert len(everything["results"]) == 7 and everything["next"] is None
    order = [r["message"]["id"] for r in everything["results"]]
    with override_parley(SEARCH_PAGE_MAX=3):
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 100, **({"before": cursor} if cursor else {})}
            body = search(raw, "apple", **params).json()
            assert len(body["results"]) <= 3  # 100 is clamped to SEARCH_PAGE_MAX
            seen += [r["message"]["id"] for r in body["results"]]
            pages += 1
            cursor = body["next"]
            if cursor is None:
                break
        assert seen == order and pages == 3
    with override_parley(SEARCH_PAGE_DEFAULT=2):
        assert len(search(raw, "apple").json()["results"]) == 2
    # Filters alone page newest first, by the same cursor.
    first = search(raw, "in:#lobby", limit=4).json()
    second = search(raw, "in:#lobby", limit=4, before=first["next"]).json()
    ids = [r["message"]["id"] for r in first["results"] + second["results"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 7 and second["next"] is None


@pytest.mark.django_db
def test_filters_room_author_and_dates():
    ada, bob = user("ada"), user("bob")
    lobby = services.room_create(slug="lobby", title="Lobby")
    dev = services.room_create(slug="dev", title="Dev")
    a1 = post(lobby, ada, "release notes from ada")
    b1 = post(dev, bob, "release checklist from bob")
    b2 = post(lobby, bob, "release party from bob")
    for message, day in ((a1, dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)), (b1, dt.datetime(2026, 11, 15, tzinfo=dt.UTC)),
                         (b2, dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.UTC))):
        Message.objects.filter(pk=message.pk).update(created_at=day)
    raw = token(ada)
    assert sorted(hits(raw, "release in:#lobby")) == ["release notes from ada", "release party from bob"]
    assert hits(raw, "release in:dev") == ["release checklist from bob"]
    assert sorted(hits(raw, "release in:#dev in:#lobby")) == sorted(hits(raw, "release"))  # any of them
    assert sorted(hits(raw, "release from:@bob")) == ["release checklist from bob", "release party from bob"]
    assert hits(raw, "release from:ada") == ["release notes from ada"]
    assert hits(raw, "release from:@nobody") == []  # no such user: nothing, and no error that says so
    assert hits(raw, "release in:#nowhere") == []
    # after: from that day's 00:00 UTC; before: until that day's 00:00 UTC (exclusive).
    assert sorted(hits(raw, "release after:2026-11-15")) == ["release checklist from bob", "release party from bob"]
    assert hits(raw, "release before:2026-11-15") == ["release notes from ada"]
    assert hits(raw, "release after:2026-11-15 before:2026-11-16") == ["release checklist from bob"]
    assert hits(raw, "release AFTER:2026-11-30 From:@bob IN:#LOBBY") == ["release party from bob"]
    # Filters alone list the messages they select, newest first, with a plain excerpt.
    body = search(raw, "from:@bob").json()
    assert [r["message"]["text"] for r in body["results"]] == ["release party from bob", "release checklist from bob"]
    assert body["results"][0]["snippet"] == [{"text": "release party from bob", "hit": False}]


@pytest.mark.django_db
def test_bad_queries_get_their_documented_errors():
    ada = user("ada")
    raw = token(ada)
    refused(search(raw, None), "missing_field")
    refused(search(raw, ""), "query_empty")
    refused(search(raw, '   "" +++ '), "query_empty")
    assert refused(search(raw, "x after:2026-13-01"), "bad_filter")["filter"] == "after"
    assert refused(search(raw, "x before:yesterday"), "bad_filter")["filter"] == "before"
    assert refused(search(raw, "after:2026-01-01 after:2026-02-01"), "bad_filter")["filter"] == "after"
    assert refused(search(raw, "x in:"), "bad_filter")["filter"] == "in"
    assert refused(search(raw, "x in:#no$such"), "bad_filter")["filter"] == "in"
    assert refused(search(raw, "x from:@"), "bad_filter")["filter"] == "from"
    refused(search(raw, "x\x00y"), "bad_field")
    refused(search(raw, "x", limit=0), "bad_field")
    refused(search(raw, "x", limit="ten"), "bad_field")
    refused(search(raw, "x", before="nonsense"), "bad_field")
    refused(search(raw, "x", before="nan_12"), "bad_field")
    assert Client().get("/api/search", {"q": "x"}).status_code == 401
    response = Client().post("/api/search", headers={"Authorization": f"Bearer {raw}"})
    refused(response, "method_not_allowed", 405)
    # Words are matched as words: FTS syntax and websearch operators are plain text.
    for q in ['NEAR(a b)', 'text:foo', 'a OR b', '-x', 'x*', "'quote", '"unclosed phrase']:
        assert search(raw, q).status_code == 200, q


@pytest.mark.django_db
def test_query_length_is_limited():
    raw = token(user("ada"))
    with override_parley(SEARCH_QUERY_MAX_CHARS=20):
        assert search(raw, "x" * 20).status_code == 200
        body = refused(search(raw, "x" * 21), "query_too_long")
        assert body["max_chars"] == 20


@pytest.mark.django_db
def test_searches_are_rate_limited_per_user():
    ada, bob = user("ada"), user("bob")
    a, b = token(ada), token(bob)
    with override_parley(SEARCHES_PER_MIN=1, SEARCH_BURST=2):
        assert search(a, "x").status_code == 200
        refused(search(a, ""), "query_empty")  # a refused search costs its token too
        response = search(a, "x")
        body = refused(response, "rate_limited", 429)
        assert 0 < body["retry_after_ms"] <= 60_000 and int(response["Retry-After"]) >= 1
        assert search(b, "x").status_code == 200  # another user's budget is their own


@pytest.mark.django_db
def test_private_rooms_dms_and_removed_members_stay_out_of_results():
    ada, bob, eve, admin = user("ada"), user("bob"), user("eve"), user("root", is_staff=True)
    lobby = services.room_create(slug="lobby", title="Lobby")
    secret = services.room_create(slug="secret", title="Secret", owner=ada, is_private=True)
    services.membership_add(room=secret, user=bob)
    dm = Room.objects.create(slug="dm-abc123", title="ada, bob", is_private=True, kind=Room.Kind.DM)
    Membership.objects.create(room=dm, user=ada)
    Membership.objects.create(room=dm, user=bob)
    post(lobby, ada, "banana in public")
    post(secret, ada, "banana in the secret room")
    post(dm, bob, "banana between ada and bob")
    e, b, r = token(eve), token(bob), token(admin)
    assert hits(e, "banana") == ["banana in public"]
    assert hits(e, "banana in:#secret") == [] and hits(e, "banana in:#dm-abc123") == []
    assert hits(e, "in:#secret") == [] and hits(e, "from:@ada") == ["banana in public"]
    assert sorted(hits(b, "banana")) == ["banana between ada and bob", "banana in public", "banana in the secret room"]
    services.membership_remove(room=secret, user=bob)
    assert sorted(hits(b, "banana")) == ["banana between ada and bob", "banana in public"]
    assert hits(b, "in:#secret") == []
    # Staff see what room_visible_q lets them see, as a join would: every room but the DMs they
    # are not in (docs/protocol.md §12).
    assert sorted(hits(r, "banana")) == ["banana in public", "banana in the secret room"]
    # A result names only rooms and messages the reader could open.
    for result in search(e, "banana").json()["results"]:
        assert result["room"] == "lobby"


@pytest.mark.django_db
def test_edits_reindex_and_deletes_unindex():
    ada = user("ada")
    lobby = services.room_create(slug="lobby", title="Lobby")
    edited = post(lobby, ada, "the password is hunter2")
    gone = post(lobby, ada, "confidential plans for tuesday")
    raw = token(ada)
    conversation.message_edit(room=lobby, actor=ada, seq=edited.seq, text="the password is redacted")
    assert hits(raw, "hunter2") == []  # the old text is in the edit's log entry, never in results
    [result] = search(raw, "redacted").json()["results"]
    assert result["message"]["seq"] == edited.seq and "edited_at" in result["message"]
    conversation.message_edit(room=lobby, actor=ada, seq=edited.seq, text="the password is rotated")
    assert hits(raw, "redacted") == [] and hits(raw, "rotated") == ["the password is rotated"]
    assert hits(raw, "confidential") == ["confidential plans for tuesday"]
    conversation.message_delete(room=lobby, actor=ada, seq=gone.seq)
    assert hits(raw, "confidential") == [] and hits(raw, "tuesday") == []
    conversation.message_delete(room=lobby, actor=ada, seq=edited.seq)
    assert hits(raw, "rotated") == [] and hits(raw, "password") == [] and hits(raw, "in:#lobby") == []
    # Reactions rewrite the row; the index keeps the text.
    kept = post(lobby, ada, "reaction target")
    conversation.reaction_set(room=lobby, actor=ada, seq=kept.seq, emoji="👍", add=True)
    [result] = search(raw, "target").json()["results"]
    assert result["message"]["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]
    # A room deleted takes its messages out of the index.
    lobby.delete()
    assert hits(raw, "target") == []


@pytest.mark.django_db
def test_the_index_holds_exactly_the_live_messages():
    """The database's own index, read directly: a message entry that is not deleted is in it
    with its current text, nothing else is (edit entries, reactions, tombstones)."""
    ada = user("ada")
    lobby = services.room_create(slug="lobby", title="Lobby")
    m = post(lobby, ada, "original words")
    conversation.message_edit(room=lobby, actor=ada, seq=m.seq, text="changed words")
    conversation.reaction_set(room=lobby, actor=ada, seq=m.seq, emoji="👍", add=True)
    d = post(lobby, ada, "doomed words")
    conversation.message_delete(room=lobby, actor=ada, seq=d.seq)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT id, search_vector::text FROM parley_message WHERE search_vector IS NOT NULL")
        else:
            cursor.execute("SELECT rowid, text FROM parley_message_fts WHERE parley_message_fts MATCH 'words'")
        rows = cursor.fetchall()
    assert [pk for pk, _ in rows] == [m.pk]
    assert "chang" in rows[0][1]


@pytest.mark.django_db
def test_a_search_that_runs_too_long_is_stopped_and_the_next_one_runs():
    """SEARCH_TIMEOUT_MS: a word in every one of 20,000 messages makes the database score all
    of them; with 1 ms allowed it is stopped (PostgreSQL cancels the statement, SQLite
    interrupts it), the answer says so, and the same connection serves the next search."""
    from django.utils import timezone

    ada = user("ada")
    room = services.room_create(slug="lobby", title="Lobby")
    now = timezone.now()
    Message.objects.bulk_create(
        [Message(room=room, seq=i, author=ada, text=f"everywhere word{i % 97} and more words {i}", created_at=now)
         for i in range(1, 20_001)], batch_size=2000)
    raw = token(ada)
    with override_parley(SEARCH_TIMEOUT_MS=1, SEARCHES_PER_MIN=1000, SEARCH_BURST=1000):
        body = refused(search(raw, "everywhere"), "search_timeout", 503)
        assert body["timeout_ms"] == 1 and "narrow it" in body["message"]
    with override_parley(SEARCHES_PER_MIN=1000, SEARCH_BURST=1000):
        assert len(hits(raw, "everywhere")) == 20
        assert hits(raw, "word5 and") != []


@pytest.mark.django_db
def test_the_time_limit_ends_with_its_block():
    """Inside a host's ATOMIC_REQUESTS transaction too: what runs after the search has no limit."""
    from django.db import transaction

    from parley.storage import db

    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) "
            "SELECT count(*) FROM n")
    with transaction.atomic(), connection.cursor() as cursor:
        with db().time_limit(1):
            pass
        if connection.vendor == "postgresql":
            cursor.execute("SELECT current_setting('statement_timeout')")
            assert cursor.fetchone()[0] == "0"
        cursor.execute(slow)
        assert cursor.fetchone()[0] == 300000
