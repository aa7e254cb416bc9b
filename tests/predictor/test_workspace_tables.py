"""Workspace tables as PostgreSQL makes them: serial and identity columns, foreign keys,
RETURNING and ALTER TABLE, through real clients against a real endpoint; and the attacks on
each (a mirrored table altered or referenced, another user's sequence, RETURNING what the
role may not read)."""

from __future__ import annotations

import subprocess
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


ALTER = """
CREATE TABLE pgml."jdxcosta/diamonds" AS
SELECT i AS "Unnamed: 0", i * 0.5 AS carat, 'Ideal' AS cut FROM generate_series(1, 3) AS i;
ALTER TABLE pgml."jdxcosta/diamonds" DROP COLUMN "Unnamed: 0";
SELECT * FROM pgml."jdxcosta/diamonds" ORDER BY carat LIMIT 1;
ALTER TABLE pgml."jdxcosta/diamonds" ADD COLUMN price int DEFAULT 7, ADD COLUMN id serial;
SELECT carat, cut, price, id FROM pgml."jdxcosta/diamonds" ORDER BY id;
ALTER TABLE pgml."jdxcosta/diamonds" RENAME COLUMN cut TO quality;
ALTER TABLE pgml."jdxcosta/diamonds" ALTER COLUMN price TYPE bigint;
ALTER TABLE pgml."jdxcosta/diamonds" ALTER COLUMN price SET DEFAULT 9;
INSERT INTO pgml."jdxcosta/diamonds" (carat, quality) VALUES (9, 'Good') RETURNING price, id;
ALTER TABLE pgml."jdxcosta/diamonds" ALTER COLUMN price DROP DEFAULT;
ALTER TABLE pgml."jdxcosta/diamonds" ALTER COLUMN quality SET NOT NULL;
INSERT INTO pgml."jdxcosta/diamonds" (carat, quality) VALUES (10, 'Fair') RETURNING price;
ALTER TABLE pgml."jdxcosta/diamonds" RENAME TO diamonds;
SELECT quality, price, id FROM pgml.diamonds ORDER BY id DESC LIMIT 1;
ALTER TABLE IF EXISTS pgml.nothing ADD COLUMN x int;
ALTER TABLE pgml.diamonds DROP COLUMN id;
SELECT count(*) FROM pgml.diamonds;
"""


def test_alter_table_in_the_workspace(pg_bin: Path, served: SqlEndpoint) -> None:
    lines = psql(pg_bin, served, ALTER, user="alice").stdout.splitlines()
    assert lines == [
        "SELECT 3", "ALTER TABLE", "0.5|Ideal", "ALTER TABLE",
        "0.5|Ideal|7|1", "1.0|Ideal|7|2", "1.5|Ideal|7|3",
        "ALTER TABLE", "ALTER TABLE", "ALTER TABLE", "9|4", "INSERT 0 1",
        "ALTER TABLE", "ALTER TABLE", "", "INSERT 0 1", "ALTER TABLE", "Fair||5",
        "ALTER TABLE", "ALTER TABLE", "5",
    ]  # fmt: skip
    assert _error(served, "INSERT INTO pgml.diamonds (carat) VALUES (1)").sqlstate == "23502"


@pytest.mark.parametrize(
    ("sql", "sqlstate", "words"),
    [
        ("ALTER TABLE public.customers ADD COLUMN x int", "42501", "read-only here"),
        ("ALTER TABLE customers DROP COLUMN age", "42501", "read-only here"),
        ("ALTER TABLE public.customers RENAME TO c2", "42501", "read-only here"),
        ("ALTER TABLE customers RENAME COLUMN age TO a", "42501", "read-only here"),
        ("ALTER TABLE pgml.models ADD COLUMN x int", "42501", "the sidecar's registry"),
        ("ALTER TABLE mirror.public.customers ADD COLUMN x int", "42501",
         "name relations as schema.name"),
        ("ALTER TABLE _pgml_sidecar.views ADD COLUMN x int", "42501",
         "permission denied for schema"),
        ("ALTER TABLE IF EXISTS public.customers ADD COLUMN x int", "42501", "read-only here"),
        ("ALTER TABLE t ADD COLUMN x int REFERENCES customers (id)", "0A000",
         "NOT NULL, DEFAULT and CHECK"),
        ("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)", "0A000", "ALTER TABLE in the workspace"),
        ("ALTER TABLE t ALTER COLUMN a SET DEFAULT getenv('HOME')", "42501", "getenv"),
        ("ALTER TABLE t ALTER COLUMN a TYPE text USING (SELECT max(age)::text FROM customers)",
         "", ""),
        ("ALTER TABLE t RENAME TO customers", "42P07", "already exists"),
        ("ALTER TABLE v ADD COLUMN x int", "55000", 'cannot alter view "public.v"'),
        ("ALTER TABLE nowhere ADD COLUMN x int", "42P01", 'relation "nowhere" does not exist'),
    ],
)  # fmt: skip
def test_alter_table_refused(served: SqlEndpoint, sql: str, sqlstate: str, words: str) -> None:
    _rows(served, "CREATE TABLE t (a text); CREATE VIEW v AS SELECT 1 AS id")
    if not sqlstate:  # a subquery in USING: DuckDB refuses it; nothing changes either way
        with pytest.raises(psycopg.Error):
            _rows(served, sql)
        return
    error = _error(served, sql)
    assert error.sqlstate == sqlstate and words in str(error), str(error)
    assert _rows(served, "SELECT count(*) FROM public.customers") == [(100,)]


def test_a_search_path_reaches_no_mirrored_table(served: SqlEndpoint) -> None:
    with connect(served, user="alice") as conn:
        for path in ("public", "pgml, public", "main", "mirror"):
            try:
                conn.execute(f"SET search_path = {path}")
            except psycopg.Error:
                continue  # refused: nothing to try under it
            for sql in (
                "ALTER TABLE customers ADD COLUMN x int",
                "ALTER TABLE customers RENAME TO c",
                "ALTER TABLE models ADD COLUMN x int",
            ):
                with pytest.raises(psycopg.Error) as caught:
                    conn.execute(sql)
                assert caught.value.sqlstate in ("42501", "42P01"), (path, sql)
    assert _rows(served, "SELECT count(*) FROM public.customers") == [(100,)]
    assert [c for c, in _rows(served, "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'customers' ORDER BY 1")] == ["age", "id"]  # fmt: skip


def _psql_c(pg_bin: Path, endpoint: SqlEndpoint, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pg_bin / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(endpoint.port),
         "-U", "alice", "-d", "pgml", "-c", command],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_several_statements_in_one_string_are_one_transaction(
    pg_bin: Path, served: SqlEndpoint
) -> None:
    done = _psql_c(pg_bin, served, "CREATE TABLE a (x int); INSERT INTO a VALUES (1), (2);"
                   " SELECT count(*) FROM a")  # fmt: skip
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "2", done.stderr
    failed = _psql_c(pg_bin, served, "CREATE TABLE b (x int); INSERT INTO a VALUES (3);"
                     " SELECT * FROM nowhere")  # fmt: skip
    assert failed.returncode == 1 and "does not exist" in failed.stderr
    assert _error(served, "SELECT * FROM b").sqlstate == "42P01"  # all undone
    assert _rows(served, "SELECT count(*) FROM a") == [(2,)]
    refused = _psql_c(pg_bin, served, "INSERT INTO a VALUES (4); INSERT INTO public.customers"
                      " VALUES (1000, 1)")  # fmt: skip
    assert refused.returncode == 1 and "read-only" in refused.stderr
    assert _rows(served, "SELECT count(*) FROM a") == [(2,)]
    with connect(served, user="alice") as conn:  # the session goes on, outside a transaction
        with pytest.raises(psycopg.Error):
            conn.execute("INSERT INTO a VALUES (5); SELECT * FROM nowhere")
        assert conn.execute("SELECT count(*) FROM a").fetchall() == [(2,)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # a string that ends its own transaction runs as it says
    done = _psql_c(pg_bin, served, "BEGIN; INSERT INTO a VALUES (6); COMMIT; SELECT count(*)"
                   " FROM a")  # fmt: skip
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "3", done.stderr
