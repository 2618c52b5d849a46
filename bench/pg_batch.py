"""`python -m bench.pg_batch`: what one ingest batch costs on PostgreSQL, on both sides.

The measurement behind services.message_create_batch's PostgreSQL path (docs/benchmarks.md):
in a scratch database with a message history, it stores batches of 1, 12 and 50 sends through
the real function and prints, per batch, the wall time, the CPU time of this Python process and
the CPU time of its PostgreSQL backend (from /proc, so it needs the server on this machine).
Then it times batches of 12 beside a thread that keeps the GIL busy. Then it times the idempotency lookup alone in the form it had until 2026-12-01 (room by room,
`room = ? AND author IN (…) AND client_id IN (…)`) and in today's (a join with the keys), with
EXPLAIN ANALYZE, before and after an ANALYZE of the table.

    python -m bench.pg_batch [--history 80000] [--batches 300]

Needs PostgreSQL at BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres); the
scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_BASE = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
USERS, ROOMS = 200, 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--history", type=int, default=80_000, help="messages stored before timing")
    ap.add_argument("--batches", type=int, default=300, help="batches timed per size")
    args = ap.parse_args()
    name = f"parley_pgbatch_{os.getpid()}"
    with psycopg.connect(PG_BASE, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        _run(PG_BASE.rsplit("/", 1)[0] + "/" + name, args)
    finally:
        from django.db import connections
        connections.close_all()
        with psycopg.connect(PG_BASE, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    return 0


def _run(url: str, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = url.replace("postgresql://", "postgres://", 1)
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from parley import services

    call_command("migrate", verbosity=0)
    users = [services.user_create(username=f"u{i}") for i in range(USERS)]
    rooms = [services.room_create(slug=f"r{i}", title="R") for i in range(ROOMS)]
    _fill_history(connection, args.history, users, rooms)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    print(f"PostgreSQL {connection.pg_version // 10000}, {args.history:,} messages stored, "
          f"{USERS} users, {ROOMS} rooms; per batch:")
    run = time.time_ns()
    sent = 0

    def batch(n: int) -> None:
        nonlocal sent
        items = []
        for _ in range(n):
            sent += 1
            user = users[sent % USERS]  # rooms of 10 users, as the ingest scenario's senders
            items.append((user, rooms[(sent % USERS) // 10].pk, f"T{time.time_ns()} hello", f"b{run}-{sent}"))
        services.message_create_batch(items=items)

    for n in (1, 12, 50):
        for _ in range(20):
            batch(n)  # past psycopg's prepare threshold
        wall, cpu, pg = time.perf_counter(), time.process_time(), _cpu_secs(backend)
        for _ in range(args.batches):
            batch(n)
        per = 1e3 / args.batches
        print(f"  batch of {n:>2}: {(time.perf_counter() - wall) * per:6.2f} ms wall, "
              f"{(time.process_time() - cpu) * per:5.2f} ms Python CPU, "
              f"{(_cpu_secs(backend) - pg) * per:5.2f} ms PostgreSQL backend CPU")
    print("beside a thread that keeps the GIL busy (as a loaded event loop does), per batch of 12:")
    spinning = threading.Event()
    spinner = threading.Thread(target=_spin, args=(spinning,), daemon=True)
    spinning.set()
    spinner.start()
    try:
        for _ in range(20):
            batch(12)
        wall = time.perf_counter()
        for _ in range(args.batches):
            batch(12)
        print(f"  {'reads one after another':34}: {(time.perf_counter() - wall) * 1e3 / args.batches:6.2f} ms wall")
    finally:
        spinning.clear()
        spinner.join()
    keys = [(rooms[(i % USERS) // 10].pk, users[i % USERS].pk, f"b{run}-{i}") for i in range(sent - 49, sent + 1)]
    for label in ("as the table grew (no ANALYZE)", "after ANALYZE"):
        print(f"idempotency lookup of 50 keys, {label}:")
        for form, (sql, params) in (("room by room (until 2026-12-01)", _room_by_room(keys)),
                                    ("join with the keys (now)", _joined(keys))):
            print(f"  {form:34}: {_explain(connection, sql, params)}")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE parley_message")


def _fill_history(connection: Any, count: int, users: list[Any], rooms: list[Any]) -> None:
    """`count` messages, 10 users a room as in the ingest scenario, numbered per room."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO parley_message (room_id, seq, author_id, text, client_id, created_at) "
            "SELECT r.id, (g / %s) * 10 + g %% 10 + 1, u.id, 'history ' || g, 'h' || g, now() "
            "FROM generate_series(0, %s - 1) AS g "
            "JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS i FROM auth_user) AS u ON u.i = g %% %s "
            "JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS i FROM parley_room) AS r ON r.i = (g %% %s) / 10",
            [len(users), count, len(users), len(users)])
        cursor.execute("UPDATE parley_room SET last_seq = (SELECT coalesce(max(seq), 0) FROM parley_message "
                       "WHERE room_id = parley_room.id)")


def _room_by_room(keys: list[tuple[int, int, str]]) -> tuple[str, list[Any]]:
    by_room: dict[int, tuple[list[int], list[str]]] = {}
    for room_id, author_id, client_id in keys:
        authors, client_ids = by_room.setdefault(room_id, ([], []))
        authors.append(author_id)
        client_ids.append(client_id)
    clauses, params = [], []
    for room_id, (authors, client_ids) in by_room.items():
        clauses.append(f"(room_id = %s AND author_id IN ({', '.join(['%s'] * len(authors))}) "
                       f"AND client_id IN ({', '.join(['%s'] * len(client_ids))}))")
        params += [room_id, *authors, *client_ids]
    return f"SELECT id, room_id, author_id, client_id FROM parley_message WHERE {' OR '.join(clauses)}", params


def _joined(keys: list[tuple[int, int, str]]) -> tuple[str, list[Any]]:
    from parley.storage import postgres
    return postgres._client_id_sql().sql, [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]


def _explain(connection: Any, sql: str, params: list[Any]) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT TEXT) " + sql, params)
        plan = [row[0] for row in cursor.fetchall()]
    execution = next(line for line in plan if line.startswith("Execution Time"))
    removed = sum(int(m.group(1)) for line in plan if (m := re.search(r"Rows Removed by Filter: (\d+)", line)))
    scans = sorted({m.group(1) for line in plan
                    if (m := re.search(r"((?:Bitmap )?(?:Heap|Index Only|Index|Seq|Function|Values) Scan)", line))})
    return f"{execution.split(': ')[1]:>10}, rows read and dropped {removed:>6,}, {', '.join(scans)}"


def _spin(running: threading.Event) -> None:
    n = 0
    while running.is_set():
        n += 1


def _cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    raise SystemExit(main())
