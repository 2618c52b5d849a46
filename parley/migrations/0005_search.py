"""Full-text search over message entries (docs/protocol.md §13), one form per database.

Only a `message` entry that is not deleted is searchable: its current text. Edits rewrite the
row's text and the index follows; a delete erases the text and leaves the index.

- PostgreSQL: a stored generated tsvector column (`english`: stemming and stop words) and a GIN
  index on it. The column is computed by the database on every INSERT and UPDATE, whatever
  wrote the row (ingest's hand-written INSERTs, the ORM, an admin's SQL), so nothing can forget
  it; ranking reads it from the row instead of parsing the text again for every match.
- SQLite: an FTS5 table with external content (the text is not stored twice), tokenizer
  `porter unicode61 remove_diacritics 2`, kept in step by triggers on parley_message.

Neither is a model field: Django never reads or writes them (parley.storage's search SQL does).
"""

from django.db import migrations

PG_FORWARD = [
    """ALTER TABLE parley_message ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
         CASE WHEN kind = 'message' AND deleted_at IS NULL
              THEN to_tsvector('english'::regconfig, text) END) STORED""",
    "CREATE INDEX parley_message_search_idx ON parley_message USING GIN (search_vector)",
]
PG_BACKWARD = [
    "DROP INDEX IF EXISTS parley_message_search_idx",
    "ALTER TABLE parley_message DROP COLUMN IF EXISTS search_vector",
]

# What a row contributes to the index: its text while it is a live message, nothing otherwise.
_LIVE_NEW = "new.kind = 'message' AND new.deleted_at IS NULL"
_LIVE_OLD = "old.kind = 'message' AND old.deleted_at IS NULL"
SQLITE_FORWARD = [
    """CREATE VIRTUAL TABLE parley_message_fts USING fts5(
         text, content='parley_message', content_rowid='id',
         tokenize='porter unicode61 remove_diacritics 2')""",
    # An external-content table's 'delete' must be given exactly the values that were indexed:
    # the triggers only ever index and un-index a row's text while it is a live message.
    f"""CREATE TRIGGER parley_message_fts_insert AFTER INSERT ON parley_message
         WHEN {_LIVE_NEW} BEGIN
           INSERT INTO parley_message_fts (rowid, text) VALUES (new.id, new.text);
         END""",
    f"""CREATE TRIGGER parley_message_fts_delete AFTER DELETE ON parley_message
         WHEN {_LIVE_OLD} BEGIN
           INSERT INTO parley_message_fts (parley_message_fts, rowid, text) VALUES ('delete', old.id, old.text);
         END""",
    # Reactions rewrite the row too (its counts): only a change of what is indexed touches FTS.
    # One trigger, so that the old text is un-indexed before the new one is indexed (SQLite
    # gives no order between two triggers of one event).
    f"""CREATE TRIGGER parley_message_fts_update AFTER UPDATE OF text, kind, deleted_at ON parley_message
         BEGIN
           INSERT INTO parley_message_fts (parley_message_fts, rowid, text)
             SELECT 'delete', old.id, old.text WHERE {_LIVE_OLD};
           INSERT INTO parley_message_fts (rowid, text) SELECT new.id, new.text WHERE {_LIVE_NEW};
         END""",
    """INSERT INTO parley_message_fts (rowid, text)
         SELECT id, text FROM parley_message WHERE kind = 'message' AND deleted_at IS NULL""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS parley_message_fts_update",
    "DROP TRIGGER IF EXISTS parley_message_fts_delete",
    "DROP TRIGGER IF EXISTS parley_message_fts_insert",
    "DROP TABLE IF EXISTS parley_message_fts",
]


def _run(statements: dict[str, list[str]]):
    def run(apps, schema_editor):
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql)
    return run


class Migration(migrations.Migration):

    dependencies = [
        ("parley", "0004_people"),
    ]

    operations = [
        migrations.RunPython(
            _run({"postgresql": PG_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": PG_BACKWARD, "sqlite": SQLITE_BACKWARD}),
        ),
    ]
