"""bench/search.py's seeded texts hold its planted words at the rates its figures assume."""

from bench.search import COMMON, COMMON_EVERY, PHRASE, RARE, RARE_EVERY, texts


def test_planted_words_come_at_their_rates_and_the_texts_are_reproducible():
    sample = texts(50_000)
    assert sample == texts(50_000)
    words = [t.split() for t in sample]
    common = sum(COMMON in w for w in words)
    rare = sum(RARE in w for w in words)
    phrase = sum(" ".join(PHRASE) in t for t in sample)
    assert 0.7 < common / (50_000 / COMMON_EVERY) < 1.3
    assert 1 <= rare <= 4 * 50_000 / RARE_EVERY
    assert 25 <= phrase <= 80
    assert all(5 <= len(w) <= 18 + 3 for w in words)
