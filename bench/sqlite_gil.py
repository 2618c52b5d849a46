"""`python -m bench.sqlite_gil`: what a busy event loop costs a database thread's SQLite reads.

Python's sqlite3 releases the GIL around every sqlite3_step (one per row), so a thread reading
rows beside a thread that keeps the GIL busy waits to get it back after every row. This reads
400 rows of a 5,000-row table by an indexed IN, as plain rows and as one json_group_array row
(what parley.storage.rows does on SQLite), with a second thread idle and then spinning in Python, at
the default switch interval and a shorter one. docs/benchmarks.md quotes its output.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import threading
import time


def main() -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="parley-sqlite-gil-"), "t.db")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, a TEXT, b TEXT, c INTEGER)")
    db.executemany("INSERT INTO t (k, a, b, c) VALUES (?, ?, ?, ?)",
                   [(f"k{i:06d}", "x" * 20, "2026-11-25 10:00:00.123456", i) for i in range(5000)])
    db.commit()
    keys = [f"k{i:06d}" for i in range(0, 5000, 12)][:400]
    marks = ", ".join("?" * len(keys))
    plain = f"SELECT id, k, a, b, c FROM t WHERE k IN ({marks})"
    as_json = f"SELECT json_group_array(json_array(id, k, a, b, c)) FROM t WHERE k IN ({marks})"

    def read(sql: str, decode: bool, n: int = 20) -> float:
        conn = sqlite3.connect(path, check_same_thread=False)
        t0 = time.perf_counter()
        for _ in range(n):
            rows = conn.execute(sql, keys).fetchall()
            if decode:
                rows = json.loads(rows[0][0])
            assert len(rows) == len(keys)
        return (time.perf_counter() - t0) / n * 1000

    def in_thread(sql: str, decode: bool) -> float:
        out: list[float] = []
        reader = threading.Thread(target=lambda: out.append(read(sql, decode)))
        reader.start()
        reader.join()
        return out[0]

    print(f"sqlite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}; ms per read of {len(keys)} rows")
    for interval in (0.005, 0.0002):
        sys.setswitchinterval(interval)
        for busy in (False, True):
            stop = threading.Event()

            def spin(stop: threading.Event = stop) -> None:  # an event loop that always has work
                while not stop.is_set():
                    pass

            spinner = threading.Thread(target=spin)
            if busy:
                spinner.start()
            try:
                rows_ms, json_ms = in_thread(plain, False), in_thread(as_json, True)
            finally:
                stop.set()
                if busy:
                    spinner.join()
            print(f"switch interval {interval * 1000:g} ms, other thread {'spinning' if busy else 'idle':8s}: "
                  f"rows {rows_ms:7.1f}   one JSON row {json_ms:6.1f}")


if __name__ == "__main__":
    main()
