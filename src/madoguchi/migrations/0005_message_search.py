"""Message search index (queries.search): substring search that does not read every message.

- PostgreSQL: GIN trigram indexes (pg_trgm) on ``madoguchi_message.text`` (and on contact names
  and handles, for the contact half of search); ``ILIKE '%...%'`` uses
  it directly, so it stays consistent with no trigger. pg_trgm is a trusted extension: the
  database owner may create it without superuser rights. Built CONCURRENTLY (no write lock on a
  large existing table), hence a non-atomic migration.
- SQLite: an FTS5 external-content table with the ``trigram`` tokenizer (substrings of 3 or more
  characters in any script, Japanese included; case-insensitive), kept in step with the message
  table by triggers on insert, delete and update of ``text``.

Caution for later migrations on SQLite: an operation that makes Django rebuild
``madoguchi_message`` (most AlterField/RemoveField, AddField with a default) drops these triggers
with the old table. Such a migration must run ``SQLITE_INSTALL`` again (it is idempotent and
rebuilds the index); tests/test_search.py fails if the triggers are gone.
"""

from __future__ import annotations

from django.db import migrations, transaction

SQLITE_INSTALL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS madoguchi_message_fts USING fts5("
    "text, content='madoguchi_message', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS madoguchi_message_fts_insert AFTER INSERT ON madoguchi_message "
    "BEGIN INSERT INTO madoguchi_message_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS madoguchi_message_fts_delete AFTER DELETE ON madoguchi_message "
    "BEGIN INSERT INTO madoguchi_message_fts(madoguchi_message_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS madoguchi_message_fts_update AFTER UPDATE OF text "
    "ON madoguchi_message BEGIN "
    "INSERT INTO madoguchi_message_fts(madoguchi_message_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); "
    "INSERT INTO madoguchi_message_fts(rowid, text) VALUES (new.id, new.text); END",
    # Index what is already there (and repair an index whose triggers had been dropped).
    "INSERT INTO madoguchi_message_fts(madoguchi_message_fts) VALUES ('rebuild')",
]
SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS madoguchi_message_fts_insert",
    "DROP TRIGGER IF EXISTS madoguchi_message_fts_delete",
    "DROP TRIGGER IF EXISTS madoguchi_message_fts_update",
    "DROP TABLE IF EXISTS madoguchi_message_fts",
]
POSTGRES_INSTALL = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS msg_text_trgm ON madoguchi_message "
    "USING gin (text gin_trgm_ops)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS contact_name_trgm ON madoguchi_contact "
    "USING gin (name gin_trgm_ops)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS identity_handle_trgm ON madoguchi_contactidentity "
    "USING gin (handle gin_trgm_ops)",
]
POSTGRES_REMOVE = [
    "DROP INDEX CONCURRENTLY IF EXISTS msg_text_trgm",
    "DROP INDEX CONCURRENTLY IF EXISTS contact_name_trgm",
    "DROP INDEX CONCURRENTLY IF EXISTS identity_handle_trgm",
]


def run(statements: dict[str, list[str]]):
    def apply(apps, schema_editor) -> None:
        vendor = schema_editor.connection.vendor
        if vendor == "sqlite":
            # The migration is not atomic (for PostgreSQL's CONCURRENTLY): make SQLite's one.
            with transaction.atomic(using=schema_editor.connection.alias):
                with schema_editor.connection.cursor() as cursor:
                    for sql in statements[vendor]:
                        cursor.execute(sql)
        elif vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                for sql in statements[vendor]:
                    cursor.execute(sql)

    return apply


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("madoguchi", "0004_inbox_indexes"),
    ]

    operations = [
        migrations.RunPython(
            run({"sqlite": SQLITE_INSTALL, "postgresql": POSTGRES_INSTALL}),
            run({"sqlite": SQLITE_REMOVE, "postgresql": POSTGRES_REMOVE}),
        ),
    ]
