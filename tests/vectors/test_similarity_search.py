"""pgvector's similarity search on the endpoint: the same queries, the same answers as the source.

One 20,000-row table of 384-dimension embeddings in a pgvector source, mirrored by a running
daemon, serves every test of the module; the source has no index, so its answers are exact.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from predictor.vector_index import IndexName
from sidecar.daemon import Daemon
from sidecar.local_postgres import LocalPostgres
from tests.fix_pg import database_name_for, fresh_database
from tests.replicator.mirror_check import current_lsn, slot_confirmed, wait_for
from tests.sidecar.online_daemon import running
from tests.vectors.corpus import (
    DIMS,
    DOCS,
    OPERATORS,
    ROWS,
    copy_docs,
    embeddings,
    source_top,
    vector_text,
)

QUERIES = 100
DISTANCES = {"<->": "l2_distance", "<=>": "cosine_distance", "<#>": "negative_inner_product"}
"""The operators an HNSW index serves (L1 always scans)."""


@dataclass
class Corpus:
    dsn: str
    daemon: Daemon
    queries: np.ndarray
    user: str
    rows: np.ndarray
    """The vectors of docs as loaded, ids 1 to ROWS."""

    def endpoint(self, user: str | None = None) -> psycopg.Connection:
        port = self.daemon.endpoint.port
        return psycopg.connect(
            f"host=127.0.0.1 port={port} user={user or self.user} dbname=pgml", autocommit=True
        )

    def caught_up(self) -> None:
        target = current_lsn(self.dsn)
        wait_for(lambda: slot_confirmed(self.dsn) >= target, timeout=60, what="the mirror")


@pytest.fixture(scope="module")
def corpus(
    pgvector_server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corpus]:
    rng = np.random.default_rng(384)
    vectors = embeddings(rng, ROWS + QUERIES)
    with fresh_database(pgvector_server, database_name_for("similarity_search")) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create extension vector")
            conn.execute(DOCS)
        copy_docs(dsn, range(1, ROWS + 1), vectors[:ROWS])
        mirror = tmp_path_factory.mktemp("similarity") / "mirror.duckdb"
        with running(dsn, mirror, ["public.docs"]) as daemon:
            user = str(conninfo_to_dict(dsn)["user"])
            found = Corpus(dsn, daemon, vectors[ROWS:], user, vectors[:ROWS])
            wait_for(lambda: _count(found) == ROWS, timeout=120, what="the copy of docs")
            yield found


def _count(corpus: Corpus) -> int:
    with corpus.endpoint() as conn:
        row = conn.execute("select count(*) from docs").fetchone()
    return int(row[0]) if row else 0


def endpoint_top(
    conn: psycopg.Connection, operator: str, query: np.ndarray, *, where: str = "", k: int = 10
) -> list[tuple[int, float]]:
    """The endpoint's answer to the query the source got (a text parameter, extended protocol)."""
    condition = f"where {where}" if where else ""
    rows = conn.execute(
        f"select id, embedding {operator} %s as distance from docs {condition}"
        f" order by embedding {operator} %s limit {k}",
        (vector_text(query), vector_text(query)),
    ).fetchall()
    return [(int(i), float(d)) for i, d in rows]


def built(corpus: Corpus, operator: str) -> None:
    """Ask for the index of ``operator`` and wait until it serves."""
    name = IndexName("public", "docs", "embedding", DISTANCES[operator])
    with corpus.endpoint() as conn:
        endpoint_top(conn, operator, corpus.queries[0])
    wait_for(lambda: name in corpus.daemon.vector_indexes.graphs, timeout=180, what="the index")


def recall(truth: list[list[int]], found: list[list[int]]) -> float:
    return float(
        np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found, strict=True)])
    )


def l1_top(corpus: Corpus, query: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
    """The exact L1 answer, for a pgvector older than 0.7 (without ``<+>``)."""
    distances = np.abs(corpus.rows.astype(np.float64) - query.astype(np.float64)).sum(axis=1)
    nearest = np.argsort(distances, kind="stable")[:k]
    return [(int(i) + 1, float(distances[i])) for i in nearest]


@pytest.mark.parametrize("operator", OPERATORS)
def test_the_exact_scan_gives_pgvectors_answer(
    corpus: Corpus, operator: str, pgvector_version: tuple[int, ...]
) -> None:
    queries = corpus.queries if operator != "<+>" else corpus.queries[:20]  # L1 scans slowly
    with psycopg.connect(corpus.dsn) as source, corpus.endpoint() as conn:
        conn.execute("set pgml.exact_search = on")
        assert conn.execute("show pgml.exact_search").fetchone() == ("on",)
        searched = corpus.daemon.vector_indexes.searches
        for query in queries:
            if operator == "<+>" and pgvector_version < (0, 7):
                want = l1_top(corpus, query)
            else:
                want = source_top(source, operator, query)
            got = endpoint_top(conn, operator, query)
            assert [i for i, _ in got] == [i for i, _ in want]
            np.testing.assert_allclose(
                [d for _, d in got], [d for _, d in want], rtol=2e-6, atol=1e-4
            )
        assert corpus.daemon.vector_indexes.searches == searched  # no index was asked


@pytest.mark.parametrize("operator", list(DISTANCES))
def test_the_index_finds_pgvectors_neighbours(corpus: Corpus, operator: str) -> None:
    built(corpus, operator)
    truth, found = [], []
    with psycopg.connect(corpus.dsn) as source, corpus.endpoint() as conn:
        searched = corpus.daemon.vector_indexes.searches
        for query in corpus.queries:
            want = source_top(source, operator, query)
            got = endpoint_top(conn, operator, query)
            truth.append([i for i, _ in want])
            found.append([i for i, _ in got])
            exact = dict(want)
            for i, d in got:  # re-ranked exactly: a neighbour found has pgvector's distance
                if i in exact:
                    assert d == pytest.approx(exact[i], rel=2e-6, abs=1e-4)
        assert corpus.daemon.vector_indexes.searches >= searched + QUERIES
    assert recall(truth, found) >= 0.98


def test_a_where_filter_applies_to_the_neighbours(corpus: Corpus) -> None:
    built(corpus, "<=>")
    with psycopg.connect(corpus.dsn) as source, corpus.endpoint() as conn:
        truth, found = [], []
        for query in corpus.queries[:30]:
            for where in ("category = 3", "id < 300", "body like 'document 1%%'"):
                want = source_top(source, "<=>", query, where=where)
                got = endpoint_top(conn, "<=>", query, where=where)
                truth.append([i for i, _ in want])
                found.append([i for i, _ in got])
                assert all(i % 20 == 3 for i, _ in got) or where != "category = 3"
                assert all(i < 300 for i, _ in got) or where != "id < 300"
        assert recall(truth, found) >= 0.98


LOADED = 10.0
"""Seconds a change may take to be searchable while the machine is busy (the bound is the
benchmark's, measured at rest)."""


def test_changes_in_the_source_change_the_answers_at_once(corpus: Corpus) -> None:
    """Within a second on a machine at rest (bench/vectors.py measures commit-to-searchable:
    0.4 s); the test allows LOADED seconds, the suite running beside other work, and prints
    what it measured."""
    built(corpus, "<->")
    query = corpus.queries[-1]
    near = (query + np.float32(1e-3)).astype(np.float32)
    with psycopg.connect(corpus.dsn, autocommit=True) as source, corpus.endpoint() as conn:

        def top() -> list[int]:
            return [i for i, _ in endpoint_top(conn, "<->", query, k=3)]

        before = top()
        source.execute("update docs set embedding = %s where id = 77", (vector_text(near),))
        committed = time.monotonic()
        wait_for(lambda: top()[0] == 77, timeout=LOADED, what="the updated row first")
        updated = time.monotonic() - committed

        source.execute(
            "insert into docs values (%s, %s, 'new', 1, 0)", (ROWS + 1, vector_text(query))
        )
        wait_for(lambda: top()[:2] == [ROWS + 1, 77], timeout=LOADED, what="the new row first")

        source.execute("delete from docs where id in (77, %s)", (ROWS + 1,))
        wait_for(lambda: top() == before, timeout=LOADED, what="the rows gone")
        source.execute("update docs set embedding = null where id = %s", (before[0],))
        wait_for(lambda: before[0] not in top(), timeout=LOADED, what="a NULL vector gone")
    print(f"\nan update was searchable {updated * 1000:.0f} ms after its commit")


def test_a_role_without_select_gets_no_neighbours(
    corpus: Corpus, pgvector_server: LocalPostgres
) -> None:
    built(corpus, "<=>")
    role = f"vector_reader_{secrets.token_hex(3)}"
    with psycopg.connect(corpus.dsn, autocommit=True) as source:
        source.execute(f"create role {role} login")
    try:
        with corpus.endpoint(role) as conn:
            for exact in ("off", "on"):
                conn.execute(f"set pgml.exact_search = {exact}")
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="docs"):
                    endpoint_top(conn, "<=>", corpus.queries[0])
    finally:
        with psycopg.connect(corpus.dsn, autocommit=True) as source:
            source.execute(f"drop owned by {role}")
        with psycopg.connect(pgvector_server.dsn(), autocommit=True) as server:
            server.execute(f"drop role {role}")


def test_vectors_print_as_pgvector_prints_them(corpus: Corpus) -> None:
    with psycopg.connect(corpus.dsn) as source, corpus.endpoint() as conn:
        sql = (
            "select embedding, '[1,2.5,-3e-7]'::vector, vector_dims(embedding),"
            " vector_norm(embedding), inner_product(embedding, embedding) from docs where id = 5"
        )
        want = source.execute(sql).fetchone()
        got = conn.execute(sql).fetchone()
        assert want is not None and got is not None
        assert got[:3] == want[:3]
        assert got[3:] == pytest.approx(want[3:], rel=1e-6)
        description = conn.execute(sql).description or []
        assert description[0].type_code != 25  # sent as a vector
        with pytest.raises(
            psycopg.errors.DataException, match=f"different vector dimensions {DIMS} and 3"
        ):
            conn.execute("select embedding <-> '[1,2,3]' from docs limit 1")
