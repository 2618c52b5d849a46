"""`python -m bench.sqlite_batch`: what one ingest batch costs on SQLite, idle and beside a
busy event loop.

The measurement behind parley.storage.sqlite's batch write (docs/benchmarks.md, "Issue 13: ORM
vs hand-written SQL"): in a scratch SQLite database (the settings' WAL, IMMEDIATE transactions)
with a message history, it stores batches of 1, 12 and 50 sends through the real
services.message_create_batch and prints, per batch, the wall time and this process's CPU
time; then the same beside a thread that keeps the GIL busy, as a loaded event loop does
(sqlite3 hands the GIL back on every step, so every row a statement returns waits for it).

    python -m bench.sqlite_batch [--history 20000] [--batches 300]

It runs against whatever tree it is started in: copy it into a worktree for a "before" column.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USERS, ROOMS = 200, 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--history", type=int, default=20_000, help="messages stored before timing")
    ap.add_argument("--batches", type=int, default=300, help="batches timed per size")
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="parley-sqlite-batch-")
    try:
        _run(data, args)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return 0


def _run(data: str, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.pop("DATABASE_URL", None)
    os.environ["PARLEY_DATA_DIR"] = data
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django
    django.setup()
    from django.core.management import call_command

    from parley import services

    call_command("migrate", verbosity=0)
    users = [services.user_create(username=f"u{i}") for i in range(USERS)]
    rooms = [services.room_create(slug=f"r{i}", title="R") for i in range(ROOMS)]
    sent = 0
    run = time.time_ns()

    def batch(n: int) -> None:
        nonlocal sent
        items = []
        for _ in range(n):
            sent += 1
            user = users[sent % USERS]  # rooms of 10 users, as the ingest scenario's senders
            items.append((user, rooms[(sent % USERS) // 10].pk, f"T{time.time_ns()} hello", f"b{run}-{sent}"))
        services.message_create_batch(items=items)

    while sent < args.history:
        batch(200)
    print(f"SQLite, {sent:,} messages stored, {USERS} users, {ROOMS} rooms; per batch:")
    spinning = threading.Event()
    for label in ("idle", "beside a thread that keeps the GIL busy"):
        print(f"  {label}:")
        spinner = None
        if spinning.is_set() is False and label != "idle":
            spinning.set()
            spinner = threading.Thread(target=_spin, args=(spinning,), daemon=True)
            spinner.start()
        try:
            for n in (1, 12, 50):
                for _ in range(20):
                    batch(n)
                wall, cpu = time.perf_counter(), time.thread_time()
                for _ in range(args.batches):
                    batch(n)
                per = 1e3 / args.batches
                print(f"    batch of {n:>2}: {(time.perf_counter() - wall) * per:6.2f} ms wall, "
                      f"{(time.thread_time() - cpu) * per:5.2f} ms CPU of the writing thread")
        finally:
            if spinner is not None:
                spinning.clear()
                spinner.join()


def _spin(running: threading.Event) -> None:
    n = 0
    while running.is_set():
        n += 1


if __name__ == "__main__":
    raise SystemExit(main())
