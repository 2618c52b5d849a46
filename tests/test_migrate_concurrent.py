"""Several processes starting at once on a brand-new PostgreSQL database: every `manage.py migrate`
exits 0 and the schema is complete (parley/management/commands/migrate.py holds an advisory lock).

Without the lock one of two concurrent migrates failed with `UniqueViolation …
pg_type_typname_nsp_index`. Each test creates its own database on the test run's PostgreSQL server
and drops it afterwards; on SQLite the tests are skipped (there SQLite's write lock serializes).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from parley.management.commands.migrate import MIGRATE_LOCK_KEY
from tests.support.server import PYTHON, REPO, ServerProcess

pytestmark = pytest.mark.slow


def server_url() -> str:
    """The PostgreSQL server the test run uses (its DATABASE_URL), or skip."""
    import os

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        pytest.skip("concurrent migrate needs PostgreSQL: runs in scripts/test's PostgreSQL + Redis pass")
    return url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True)


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """DATABASE_URL of a database created for this test (and dropped after it)."""
    url = server_url()
    name = f"parley_migrate_{uuid.uuid4().hex[:12]}"
    with connect(url) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        with connect(url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(database_url: str, tmp: Any, *args: str) -> subprocess.Popen[str]:
    env = ServerProcess(database_url=database_url, data_dir=tmp).env()
    return subprocess.Popen([PYTHON, "manage.py", "migrate", "--noinput", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shipped_migrations(database_url: str, tmp: Any) -> str:
    """`showmigrations --plan`: every migration, [X] when applied."""
    env = ServerProcess(database_url=database_url, data_dir=tmp).env()
    out = subprocess.run([PYTHON, "manage.py", "showmigrations", "--plan"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_three_concurrent_migrates_on_a_fresh_database_all_succeed(fresh_database: str, tmp_path: Any) -> None:
    runs = [migrate(fresh_database, tmp_path / str(i)) for i in range(3)]
    results = [(run.wait(180), *run.communicate()) for run in runs]
    for rc, out, err in results:
        assert rc == 0, f"a concurrent migrate failed:\n{out}\n{err}"
    plan = shipped_migrations(fresh_database, tmp_path / "plan")
    assert "[X]" in plan and "[ ]" not in plan, plan
    # Exactly one of them applied the migrations; the others waited and found nothing to do.
    applied = [out for _rc, out, _err in results if "Applying parley." in out]
    assert len(applied) == 1, [out[-300:] for _rc, out, _err in results]
    with connect(fresh_database) as db:
        count = db.execute("SELECT count(*) FROM django_migrations").fetchone()
        assert count is not None and count[0] == plan.count("[X]")
        db.execute("SELECT id, slug, last_seq FROM parley_room LIMIT 0")
        db.execute("SELECT id, room_id, seq, client_id FROM parley_message LIMIT 0")


def test_a_migrate_waits_for_the_one_holding_the_lock(fresh_database: str, tmp_path: Any) -> None:
    with connect(fresh_database) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK_KEY])
        run = migrate(fresh_database, tmp_path / "waiting")
        with connect(fresh_database) as probe:
            deadline = time.monotonic() + 60
            # The migrate's connection waits on the advisory lock (pg_locks: granted = false) …
            while not probe.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()[0]:  # type: ignore[index]
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "migrate never waited on the lock"
                time.sleep(0.1)
            # … having created nothing yet.
            assert probe.execute("SELECT to_regclass('django_migrations')").fetchone() == (None,)
        holder.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_KEY])
    rc = run.wait(180)
    out, err = run.communicate()
    assert rc == 0, out + err
    assert "another migrate is running on this database; waiting for it" in err
    assert "[ ]" not in shipped_migrations(fresh_database, tmp_path / "plan")
