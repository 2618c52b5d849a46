"""parley.realtime.ordering: every message once, in seq order, whatever order the broadcasts arrive in."""

from parley.realtime.ordering import Subscription


def collect():
    sent: list[str] = []
    return sent, lambda frame, size: sent.append(frame)


def test_in_order_delivery_and_duplicates_dropped():
    sent, put = collect()
    sub = Subscription(room_id=1, slug="r")
    assert not sub.start(0, put)
    for seq in (1, 2, 2, 1, 3):
        assert not sub.offer(seq, f"m{seq}", None, put)
    assert sent == ["m1", "m2", "m3"] and sub.high_seq == 3


def test_out_of_order_is_held_until_the_gap_closes():
    sent, put = collect()
    sub = Subscription(room_id=1, slug="r")
    sub.start(0, put)
    assert sub.offer(3, "m3", None, put)  # gap at 1..2: caller should schedule a fill
    assert sub.offer(2, "m2", None, put)
    assert sent == [] and sub.first_pending() == 2
    assert not sub.offer(1, "m1", None, put)
    assert sent == ["m1", "m2", "m3"] and not sub.pending


def test_events_before_the_snapshot_wait_and_overlap_is_dropped():
    sent, put = collect()
    sub = Subscription(room_id=1, slug="r")
    # Subscribed, history not sent yet: live events only queue (not a gap to fill yet).
    assert not sub.offer(5, "m5", None, put)
    assert not sub.offer(6, "m6", None, put)
    assert sent == []
    # The snapshot covered up to 5: 5 is a duplicate, 6 goes out right after the reply.
    assert not sub.start(5, put)
    assert sent == ["m6"] and sub.high_seq == 6 and not sub.pending


def test_snapshot_behind_live_leaves_a_gap_to_fill():
    sent, put = collect()
    sub = Subscription(room_id=1, slug="r")
    sub.offer(9, "m9", None, put)
    assert sub.start(7, put)  # 8 is missing: fill from the database
    assert sent == [] and sub.first_pending() == 9
