"""parley.payloads: the wire shapes of users, rooms, messages and timestamps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from parley.payloads import timestamp


def test_timestamp_is_utc_iso8601_with_milliseconds_truncated():
    assert timestamp(datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
    assert timestamp(datetime(2026, 12, 31, 23, 59, 59, 999, tzinfo=UTC)) == "2026-12-31T23:59:59.000Z"
    rng = random.Random(7)
    for _ in range(1000):
        value = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**15))
        expected = value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert timestamp(value) == expected


def test_message_payload_bytes_is_the_encoded_size_exactly():
    """parley.payloads.message_payload_bytes, which bounds every joined/history reply and HTTP
    page, must be what orjson writes — JSON escapes included (U+0001 is six bytes)."""
    import orjson
    from django.contrib.auth.models import User

    from parley.models import Message
    from parley.payloads import fit_page, message_payload, message_payload_bytes, messages_bytes

    rng = random.Random(3)
    alphabet = ["a", "é", "😀", "\x01", "\x1f", '"', "\\", "\n", "\t", "\u2028", "\x7f", " "]
    messages = []
    for i in range(300):
        author = User(pk=rng.choice([1, 7, 12345, 10**12]), username=rng.choice(["ada", "b" * 150, "ünï"]))
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 4001)))
        client_id = rng.choice([None, "c", "c-" + "\x01" * 62, "é" * 64])
        message = Message(pk=rng.randrange(1, 10**15), seq=rng.randrange(1, 2**53), author=author,
                          text=text, client_id=client_id,
                          created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i))
        slug = rng.choice(["lobby", "a", "x" * 50])
        assert message_payload_bytes(message, room_slug=slug) == len(orjson.dumps(message_payload(message, room_slug=slug)))
        messages.append(message)
    for n in (0, 1, 2, 50):
        payloads = [message_payload(m, room_slug="lobby") for m in messages[:n]]
        assert messages_bytes(messages[:n], room_slug="lobby") == len(orjson.dumps(payloads))
    # fit_page keeps the newest that fit, exactly up to the budget
    page = messages[:40]
    for budget in (10, 5000, 50_000, 200_000, 10**9):
        kept, more = fit_page(page, False, room_slug="lobby", budget_bytes=budget)
        assert kept == page[len(page) - len(kept):] and len(kept) >= 1
        assert more == (len(kept) < len(page))
        if len(kept) > 1:
            assert messages_bytes(kept, room_slug="lobby") <= budget
        if len(kept) < len(page):
            assert messages_bytes(page[len(page) - len(kept) - 1:], room_slug="lobby") > budget
