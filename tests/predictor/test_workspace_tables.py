"""Workspace tables as PostgreSQL makes them: serial and identity columns, foreign keys,
RETURNING and ALTER TABLE, through real clients against a real endpoint; and the attacks on
each (a mirrored table altered or referenced, another user's sequence, RETURNING what the
role may not read)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import connect, psql
from tests.predictor.test_workspace import served

__all__ = ["served"]


def _rows(endpoint: SqlEndpoint, sql: str, *, user: str = "alice") -> list[tuple]:
    with connect(endpoint, user=user) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _error(endpoint: SqlEndpoint, sql: str, *, user: str = "alice") -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught, connect(endpoint, user=user) as conn:
        conn.execute(sql)
    return caught.value


SERIAL = """
CREATE TABLE documents (
    id BIGSERIAL PRIMARY KEY,
    document TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE TABLE tags (id serial, n smallserial, tag text);
CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY, note text);
CREATE TABLE kept (id bigint DEFAULT nextval('documents_id_seq'::regclass), x text);
INSERT INTO documents (document) VALUES ('one'), ('two') RETURNING id;
INSERT INTO documents (document) VALUES ('three') RETURNING id, document;
INSERT INTO tags (tag) VALUES ('a'), ('b');
INSERT INTO notes (note) VALUES ('x');
INSERT INTO kept (x) VALUES ('k');
SELECT id, n, tag FROM tags ORDER BY id;
SELECT id, note FROM notes;
SELECT id, x FROM kept;
INSERT INTO kept VALUES (nextval('tags_id_seq'), currval('public.tags_id_seq')::text);
SELECT id, x FROM kept WHERE x <> 'k';
UPDATE documents SET document = 'uno' WHERE id = 1 RETURNING id, document;
DELETE FROM documents WHERE id = 2 RETURNING *;
"""


def test_serial_identity_and_returning(pg_bin: Path, served: SqlEndpoint) -> None:
    lines = psql(pg_bin, served, SERIAL, user="alice").stdout.splitlines()
    assert lines[:4] == ["CREATE TABLE"] * 4
    assert lines[4:8] == ["1", "2", "INSERT 0 2", "3|three"]
    assert lines[8:12] == ["INSERT 0 1", "INSERT 0 2", "INSERT 0 1", "INSERT 0 1"]
    assert lines[12:16] == ["1|1|a", "2|2|b", "1|x", "4|k"]
    assert lines[16:20] == ["INSERT 0 1", "3|3", "1|uno", "UPDATE 1"]
    assert lines[20].startswith("2|two|") and lines[21:] == ["DELETE 1"]


def test_drop_table_drops_its_sequences(served: SqlEndpoint) -> None:
    _rows(served, "CREATE TABLE t (id serial PRIMARY KEY, x text)")
    _rows(served, "INSERT INTO t (x) VALUES ('a'), ('b')")
    _rows(served, "DROP TABLE t")
    _rows(served, "CREATE TABLE other (id bigint)")
    error = _error(served, "INSERT INTO other VALUES (nextval('t_id_seq'))")
    assert error.sqlstate == "42P01" and 'relation "t_id_seq" does not exist' in str(error)
    _rows(served, "CREATE TABLE t (id serial PRIMARY KEY, x text)")
    assert _rows(served, "INSERT INTO t (x) VALUES ('c') RETURNING id") == [(1,)]


def test_sequences_are_each_users_own(served: SqlEndpoint) -> None:
    _rows(served, "CREATE TABLE t (id serial, x text)", user="alice")
    _rows(served, "CREATE TABLE mine (id bigint)", user="bob")
    for sql in (
        "INSERT INTO mine VALUES (nextval('t_id_seq'))",
        "INSERT INTO mine VALUES (nextval('public.t_id_seq'::regclass))",
        "INSERT INTO mine VALUES (nextval('pgml_workspace_0.public.t_id_seq'))",
    ):
        assert _error(served, sql, user="bob").sqlstate == "42P01", sql
    for sql in (
        "INSERT INTO mine VALUES (setval('t_id_seq', 5))",
        "INSERT INTO mine SELECT nextval(x) FROM (VALUES ('t_id_seq')) v(x)",
    ):
        assert _error(served, sql, user="bob").sqlstate == "0A000", sql
    assert _error(served, "SELECT nextval('t_id_seq')", user="alice").sqlstate == "42501"
    assert _rows(served, "INSERT INTO t (x) VALUES ('a') RETURNING id", user="alice") == [(1,)]


def test_returning_through_the_extended_protocol(served: SqlEndpoint) -> None:
    _rows(served, "CREATE TABLE t (id bigserial PRIMARY KEY, x text)")
    with connect(served, user="alice") as conn:
        cursor = conn.execute("INSERT INTO t (x) VALUES (%s), (%s) RETURNING id, x", ["a", "b"])
        assert cursor.fetchall() == [(1, "a"), (2, "b")]
        assert cursor.rowcount == 2


FOREIGN_KEYS = """
CREATE TABLE documents (id BIGSERIAL PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE splitters (id BIGSERIAL PRIMARY KEY, splitter VARCHAR NOT NULL);
CREATE TABLE document_chunks (
    id BIGSERIAL PRIMARY KEY,
    document_id BIGINT NOT NULL REFERENCES documents (id),
    splitter_id BIGINT NOT NULL REFERENCES splitters (id),
    chunk TEXT
);
INSERT INTO documents (document) VALUES ('d') RETURNING id;
INSERT INTO splitters (splitter) VALUES ('s');
INSERT INTO document_chunks (document_id, splitter_id, chunk) VALUES (1, 1, 'c');
"""


def test_foreign_keys_between_workspace_tables(pg_bin: Path, served: SqlEndpoint) -> None:
    lines = psql(pg_bin, served, FOREIGN_KEYS, user="alice").stdout.splitlines()
    assert lines == ["CREATE TABLE"] * 3 + ["1"] + ["INSERT 0 1"] * 3
    error = _error(served, "INSERT INTO document_chunks (document_id, splitter_id) VALUES (9, 1)")
    assert error.sqlstate == "23503"
    error = _error(served, "DELETE FROM documents")
    assert error.sqlstate == "23503"
    error = _error(served, "DROP TABLE documents")
    assert error.sqlstate == "2BP01" and "document_chunks" in str(error)
    error = _error(served, "DROP TABLE documents CASCADE")
    assert error.sqlstate == "0A000" and "drop public.document_chunks first" in str(error)
    _rows(served, "DROP TABLE documents, document_chunks CASCADE")
    _rows(served, "DROP TABLE IF EXISTS splitters CASCADE")
    for table in ("documents", "splitters", "document_chunks"):
        assert _error(served, f"SELECT * FROM {table}").sqlstate == "42P01"


@pytest.mark.parametrize(
    ("sql", "sqlstate", "words"),
    [
        ("CREATE TABLE c (id int REFERENCES public.customers (id))", "0A000",
         "cannot reference public.customers: it is served from the mirror"),
        ("CREATE TABLE c (id int REFERENCES customers)", "0A000", "served from the mirror"),
        ("CREATE TABLE c (id int REFERENCES nowhere (id))", "42P01",
         'relation "nowhere" does not exist'),
        ("CREATE TABLE c (id int REFERENCES other.mirror.t (id))", "42501", "permission denied"),
        ("CREATE TABLE c (id int REFERENCES p (id) ON DELETE CASCADE)", "0A000",
         "ON DELETE CASCADE is not supported"),
        ("CREATE TABLE c (id int REFERENCES p (id) ON UPDATE SET NULL)", "0A000",
         "ON UPDATE SET NULL is not supported"),
        ("CREATE TABLE c (id int, FOREIGN KEY (id) REFERENCES v (id))", "42809",
         'referenced relation "public.v" is not a table'),
    ],
)  # fmt: skip
def test_foreign_keys_refused(served: SqlEndpoint, sql: str, sqlstate: str, words: str) -> None:
    _rows(served, "CREATE TABLE p (id int PRIMARY KEY); CREATE VIEW v AS SELECT 1 AS id")
    error = _error(served, sql)
    assert error.sqlstate == sqlstate and words in str(error), str(error)
