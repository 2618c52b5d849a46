"""`python -m bench.search [--db sqlite|postgres] [--messages 1000000] [--rounds 100]`: search
latency on a large room log, beside a history page read in the same run.

In a scratch database (SQLite in a temporary directory; PostgreSQL: a database of its own at
BENCH_PG_URL, dropped at the end) it migrates to 0004_people, seeds `--messages` message entries
across 100 public rooms and 50 authors in bulk (PostgreSQL COPY, SQLite executemany in one
transaction), then applies 0005_search (timed: building the index over what is there), and
then, through Django's test client and the real view, alternates requests of each kind:
the baseline `GET /api/rooms/<slug>/messages?limit=20` (one room's history page, 20 messages:
the page size a search returns by default) and searches — a rare word (~100 matches), a common
word (~1 % of the messages), a phrase, a common word in one room, two words, filters alone.
Every kind runs once per round, in the same order, so a stall of the machine touches all of
them; latency is per request (wall, in the client), p50/p99 over `--rounds`, and each kind's
p50 and p99 as a ratio to the history page's in the same run.

`scripts/bench --only search` runs it on both databases (100,000 messages with --quick).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The index's migration and the one it depends on: seeding runs before it, so its build is timed.
SEARCH_MIGRATION, SEARCH_MIGRATION_BEFORE = "0005_search", "0004_people"
PG_BASE = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOMS, AUTHORS = 100, 50
RARE, COMMON, PHRASE = "zephyr", "orbit", ("blue", "harbor")
RARE_EVERY, COMMON_EVERY, PHRASE_EVERY = 10_000, 100, 1_000  # one message in …


def kinds() -> list[tuple[str, str, dict[str, str]]]:
    """(name, path, query) of each request kind; the first is the baseline."""
    return [
        ("history page (baseline)", "/api/rooms/r007/messages", {"limit": "20"}),
        ("search: rare word", "/api/search", {"q": RARE}),
        ("search: common word (1 %)", "/api/search", {"q": COMMON}),
        ("search: phrase", "/api/search", {"q": f'"{PHRASE[0]} {PHRASE[1]}"'}),
        ("search: common word in:#room", "/api/search", {"q": f"{COMMON} in:#r007"}),
        ("search: two words", "/api/search", {"q": f"{COMMON} {PHRASE[1]}"}),
        ("search: filters only", "/api/search", {"q": "from:@u007 in:#r007"}),
    ]


def _vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """3,000 made-up words (consonant-vowel syllables) with Zipf weights (cumulated): text the stemmers and
    the index treat as they would a language, with a few very frequent words and a long tail."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < 3000:
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 4))))
    ordered = sorted(words - {RARE, COMMON, *PHRASE})
    rng.shuffle(ordered)
    return ordered, list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(ordered))))


def texts(n: int, seed: int = 16) -> list[str]:
    rng = random.Random(seed)
    words, cumulative = _vocabulary(rng)  # cumulative: choices() would sum 3,000 weights per call
    out = []
    for _ in range(n):
        chosen = rng.choices(words, cum_weights=cumulative, k=rng.randint(5, 18))
        # Drawn, not by position: a message's room and author follow from its position.
        if rng.random() < 1 / RARE_EVERY:
            chosen.insert(rng.randrange(len(chosen)), RARE)
        if rng.random() < 1 / COMMON_EVERY:
            chosen.insert(rng.randrange(len(chosen)), COMMON)
        if rng.random() < 1 / PHRASE_EVERY:
            at = rng.randrange(len(chosen))
            chosen[at:at] = list(PHRASE)
        out.append(" ".join(chosen))
    return out


def _setup(db: str, data_dir: str, pg_url: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["PARLEY_DATA_DIR"] = data_dir
    os.environ.pop("REDIS_URL", None)
    if pg_url:
        os.environ["DATABASE_URL"] = pg_url.replace("postgresql://", "postgres://", 1)
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["PARLEY_SEARCHES_PER_MIN"] = "1000000"
    os.environ["PARLEY_SEARCH_BURST"] = "1000000"
    os.environ["PARLEY_HISTORY_BYTES_PER_SEC"] = "1000000000"
    os.environ["PARLEY_HISTORY_BURST_BYTES"] = "1000000000"
    import django
    django.setup()


def _seed(n: int) -> dict[str, float]:
    from django.db import connection, transaction

    from parley.models import Room
    from parley.services import user_create

    authors = [user_create(username=f"u{i:03d}", password=None) for i in range(AUTHORS)]
    rooms = Room.objects.bulk_create([Room(slug=f"r{i:03d}", title=f"Room {i}") for i in range(ROOMS)])
    t0 = time.perf_counter()
    body = texts(n)
    t_text = time.perf_counter() - t0
    start = dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
    step = dt.timedelta(days=365) / max(n, 1)
    seqs = [0] * ROOMS
    rows = []
    for i, text in enumerate(body):
        r = i % ROOMS
        seqs[r] += 1
        author = authors[(i // ROOMS + r) % AUTHORS]  # every author in every room
        rows.append((rooms[r].pk, seqs[r], "message", author.pk, text, start + step * i, False))
    columns = "room_id, seq, kind, author_id, text, created_at, mention_room"
    t0 = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY parley_message ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(f"INSERT INTO parley_message ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                               [(*row[:5], row[5].isoformat(sep=" "), row[6]) for row in rows])
        for room, last in zip(rooms, seqs, strict=True):
            Room.objects.filter(pk=room.pk).update(last_seq=last)
    return {"texts_secs": round(t_text, 1), "insert_secs": round(time.perf_counter() - t0, 1)}


def measure(db: str, n: int, rounds: int) -> dict[str, Any]:
    """The whole scenario in this process (Django set up for `db` already)."""
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from bench.stats import percentile
    from parley import services

    call_command("migrate", verbosity=0)
    # Back to the migration before the index's (and what follows it), seed, then time the index.
    call_command("migrate", "parley", SEARCH_MIGRATION_BEFORE, verbosity=0)
    seeded = _seed(n)
    t0 = time.perf_counter()
    call_command("migrate", "parley", SEARCH_MIGRATION, verbosity=0)
    index_secs = time.perf_counter() - t0
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE parley_message" if connection.vendor == "postgresql" else "ANALYZE")
    reader = services.user_create(username="reader", password=None)
    token = services.token_create(user=reader, name="bench")[1]
    client = Client(headers={"Authorization": f"Bearer {token}"}, SERVER_NAME="localhost")
    plan = kinds()
    times: dict[str, list[float]] = {name: [] for name, _, _ in plan}
    counts: dict[str, int] = {}
    for rnd in range(rounds + 3):  # 3 rounds of warm-up, not counted
        for name, path, query in plan:
            t = time.perf_counter()
            response = client.get(path, query)
            elapsed = time.perf_counter() - t
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.status_code} {response.content[:200]!r}")
            if rnd >= 3:
                times[name].append(elapsed * 1000)
            if rnd == 0:
                body = response.json()
                counts[name] = len(body.get("results", body.get("messages", [])))
    base = plan[0][0]
    rows = []
    for name, _, _ in plan:
        ordered = sorted(times[name])
        rows.append({"kind": name, "results": counts[name], "p50_ms": round(percentile(ordered, 50), 2),
                     "p99_ms": round(percentile(ordered, 99), 2)})
    b50, b99 = rows[0]["p50_ms"], rows[0]["p99_ms"]
    for row in rows:
        row["p50_ratio"] = round(row["p50_ms"] / b50, 2) if b50 else None
        row["p99_ratio"] = round(row["p99_ms"] / b99, 2) if b99 else None
    return {"target": db, "messages": n, "rounds": rounds, "baseline": base, "index_build_secs": round(index_secs, 1),
            **seeded, "rows": rows}


def scenario(db: str, quick: bool, workdir: Path) -> dict[str, Any]:
    """Run `python -m bench.search` for one database in a subprocess (Django is set up once
    per process, for one database) and return its result."""
    out = workdir / f"search-{db}.json"
    n = "100000" if quick else "1000000"
    rounds = "30" if quick else "100"
    subprocess.run([sys.executable, "-m", "bench.search", "--db", db, "--messages", n, "--rounds", rounds,
                    "--json", str(out)], cwd=ROOT, check=True, timeout=3600)
    return json.loads(out.read_text())


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        lines.append(f"\n{res['target']}: {res['messages']:,} messages in {ROOMS} rooms; index built in "
                     f"{res['index_build_secs']} s after seeding ({res['insert_secs']} s); {res['rounds']} rounds\n")
        lines.append("| request | results | p50 ms | p99 ms | p50 / baseline | p99 / baseline |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for row in res["rows"]:
            lines.append(f"| {row['kind']} | {row['results']} | {row['p50_ms']} | {row['p99_ms']} | "
                         f"{row['p50_ratio']} | {row['p99_ratio']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-search-bench-") as data_dir:
        if args.db == "sqlite":
            _setup("sqlite", data_dir, None)
            result = measure("sqlite", args.messages, args.rounds)
        else:
            import psycopg

            name = f"search_bench_{os.getpid()}"
            with psycopg.connect(PG_BASE, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            try:
                _setup("postgres", data_dir, PG_BASE.rsplit("/", 1)[0] + "/" + name)
                result = measure("postgres", args.messages, args.rounds)
            finally:
                from django.db import connections
                connections.close_all()
                with psycopg.connect(PG_BASE, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    print(table([result]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
