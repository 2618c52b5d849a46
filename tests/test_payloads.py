"""chat.payloads: the wire shapes of users, rooms, messages and timestamps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from chat.payloads import timestamp


def test_timestamp_is_utc_iso8601_with_milliseconds_truncated():
    assert timestamp(datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
    assert timestamp(datetime(2026, 12, 31, 23, 59, 59, 999, tzinfo=UTC)) == "2026-12-31T23:59:59.000Z"
    rng = random.Random(7)
    for _ in range(1000):
        value = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**15))
        expected = value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert timestamp(value) == expected
