"""`manage.py migrate`, one at a time per database: Django's migrate inside a PostgreSQL advisory
lock.

Several processes starting together on a fresh PostgreSQL (every unit of deploy/parley@.service
runs migrate before it serves) each try to create the same tables, and all but one fail, e.g.
with `UniqueViolation … pg_type_typname_nsp_index`. Under the lock the first one migrates and the
others wait, then find nothing left to do. The lock is PostgreSQL's session-level advisory lock on
the database being migrated (advisory locks are per database), so it is held exactly as long as
this command's connection, and a killed migrate releases it. Other databases (SQLite) are migrated
as Django does: SQLite's own write lock already serializes them.

It replaces Django's command for every project with Parley installed (an app's command of the same
name wins over Django's own); everything else is Django's migrate.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import connections

# The advisory lock's key: any 64-bit number, the same in every process and every Parley version
# (the ASCII of "parleymg"; pg_locks shows it as classid 1885434476, objid 1702456679).
MIGRATE_LOCK_KEY = 0x7061726C65796D67  # "parleymg"


class Command(DjangoMigrateCommand):
    help = DjangoMigrateCommand.help + " On PostgreSQL, one migrate at a time (an advisory lock)."

    def handle(self, *args: Any, **options: Any) -> Any:
        connection = connections[options["database"]]
        if connection.vendor != "postgresql":
            return super().handle(*args, **options)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK_KEY])
            if not cursor.fetchone()[0]:
                self.stderr.write("migrate: another migrate is running on this database; waiting for it")
                cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK_KEY])
        try:
            return super().handle(*args, **options)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_KEY])
