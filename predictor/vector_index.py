"""HNSW indexes of mirrored vector columns: derived copies that follow the mirror's commits.

Which columns: every mirrored ``vector(n)`` column (a DuckDB ``FLOAT[n]``) of a table keyed by
one integer column, one graph per distance a query orders by (``<->`` L2, ``<=>`` cosine,
``<#>`` inner product; usearch has no L1 graph, so ``<+>`` always scans), each built from the
mirror the first time a query asks for it and kept from then on. Until it is built (seconds for
tens of thousands of rows), and for every other column, queries scan exactly.

Each graph is a usearch index (HNSW, connectivity 16, expansion 64 on add and search, as
pgvector's defaults), keyed by the row's key. It lives in ``<mirror>.pgml/vector_indexes/``,
one file per graph holding the graph and the mirror position it has applied, written whole to
a new file then renamed (never half written). After each mirror commit the keys it touched are
looked up in the mirror as committed: rows with a vector are added (or replaced), the others
removed. The keys of indexed tables are logged with each batch (:mod:`mirror.change_log`), so
after a restart or a kill -9 a graph loaded from its file replays the commits after its
position and equals the table again; a missing or unreadable file is built again from the
mirror. A truncate or a copy of the table builds the graph again. All of this runs in a thread
of its own, off the replication path.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from usearch.index import Index

from mirror.change_log import Touched, rows_for_keys, touched_keys
from mirror.changes import Lsn
from mirror.duckdb_sql import META, quote
from mirror.store import Mirror
from mirror.tables import MirroredTable

log = logging.getLogger("pgml_sidecar")

METRICS = {"l2_distance": "l2sq", "cosine_distance": "cos", "negative_inner_product": "ip"}
"""The usearch metric of each distance an index can answer (the pgvector macro's name)."""
CONSUMER = "vector indexes"
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 64
SAVE_SECONDS = 5.0
"""A graph that changed is written to its file at most this often (and when stopping)."""
_MAGIC = b"pgmlvix1"
_INTEGER_KEYS = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                           "UINTEGER"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class IndexName:
    """One graph: a vector column of a mirrored table, for one distance."""

    schema: str
    table: str
    column: str
    distance: str

    @property
    def file_name(self) -> str:
        parts = (self.schema, self.table, self.column, self.distance)
        return ".".join(p.encode().hex() for p in parts) + ".usearch"


@dataclass(frozen=True, slots=True)
class Indexable:
    """A vector column an index may be built for: its dimension and the table's key column."""

    dims: int
    key: str


@dataclass(eq=False)
class Graph:
    """A usearch index of one column for one distance, and the mirror position it holds."""

    name: IndexName
    indexable: Indexable
    index: Index
    lsn: Lsn
    lock: threading.Lock = field(default_factory=threading.Lock)
    dirty: bool = False


def indexable(table: MirroredTable, column: str) -> Indexable | None:
    """What an index of ``table.column`` needs, or None when it cannot have one (no declared
    dimension, no single integer key)."""
    keys = table.keys
    if len(keys) != 1 or keys[0].sql.upper() not in _INTEGER_KEYS or not table.has_primary_key:
        return None
    for c in table.columns:
        if c.name == column and c.sql.upper().startswith("FLOAT[") and c.sql[6:-1].isdigit():
            return Indexable(int(c.sql[6:-1]), keys[0].name)
    return None


class VectorIndexes:
    """The HNSW indexes of a mirror, kept equal to its tables as batches commit."""

    def __init__(self, mirror: Mirror, home: Path, *, save_seconds: float = SAVE_SECONDS) -> None:
        self.mirror = mirror
        self.directory = home / "vector_indexes"
        self.save_seconds = save_seconds
        self.graphs: dict[IndexName, Graph] = {}
        self.watched: set[tuple[str, str]] = set()
        """The tables indexed: the mirror reports their changed keys (and logs them)."""
        self.changes: queue.Queue[tuple[Lsn, dict[tuple[str, str], Touched]]] = queue.Queue()
        self._wanted: set[IndexName] = set()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.searches = 0
        """Searches answered from a graph (for metrics and tests)."""
        self.applied = threading.Condition()
        """Notified after each commit is applied and each graph built (tests wait on it)."""

    # -- for queries ---------------------------------------------------------------------------

    def search(
        self, name: IndexName, vector: np.ndarray, count: int
    ) -> tuple[str, np.ndarray] | None:
        """The key column and the keys of (about) the ``count`` nearest rows to ``vector``,
        nearest first; None when there is no graph yet (one is asked for) or none can be."""
        graph = self.graphs.get(name)
        if graph is None:
            self.want(name)
            return None
        if vector.shape != (graph.indexable.dims,):
            return None
        with graph.lock:
            if len(graph.index) == 0:
                return graph.indexable.key, np.zeros(0, dtype=np.int64)
            found = graph.index.search(vector, count)
            self.searches += 1
        return graph.indexable.key, np.asarray(found.keys, dtype=np.uint64).view(np.int64)

    def want(self, name: IndexName) -> None:
        """Ask for a graph to be built (by the index thread), if its column can have one."""
        if name.distance not in METRICS or name in self.graphs:
            return
        table = self.mirror.tables.get((name.schema, name.table))
        if table is None or indexable(table, name.column) is None:
            return
        with self._lock:
            if name not in self._wanted:
                self._wanted.add(name)
                self._wake.set()

    # -- following the mirror ------------------------------------------------------------------

    def prepare(self) -> None:
        """Load the graphs from their files and replay what they have not applied (before the
        replicator starts); a graph whose file is unreadable is built again."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.usearch")):
            try:
                graph = self._load(path)
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("vector index %s unreadable (%s): building it again", path.name, exc)
                name = _name_of(path)
                path.unlink(missing_ok=True)
                if name is not None:
                    self._wanted.add(name)
                continue
            if graph is None:
                path.unlink(missing_ok=True)
                continue
            self._follow(graph.name)
            self._replay(graph)
            self.graphs[graph.name] = graph
            self._save(graph)

    def on_commit(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        """Hand a commit's touched keys over (called on the replicator's thread)."""
        mine = {t: keys for t, keys in touched.items() if t in self.watched}
        if mine:
            self.changes.put((lsn, mine))
            self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Apply commits, build the graphs asked for, save what changed, until ``stop``."""
        last_save = time.monotonic()
        try:
            while not stop.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                self._apply_queued()
                with self._lock:
                    wanted, self._wanted = self._wanted, set()
                for name in sorted(wanted, key=str):
                    try:
                        self._build(name)
                    except Exception:
                        self.want(name)  # again, once this part restarts
                        raise
                if time.monotonic() - last_save >= self.save_seconds:
                    self.save_all()
                    last_save = time.monotonic()
        finally:
            self.save_all()

    def save_all(self) -> None:
        """Write every graph that changed to its file, then let the change log go."""
        for graph in list(self.graphs.values()):
            if graph.dirty:
                self._save(graph)

    def _follow(self, name: IndexName) -> None:
        """Watch and log ``name``'s table from now on."""
        table = (name.schema, name.table)
        self.watched.add(table)
        self.mirror.consume_changes(CONSUMER, *table)

    def _apply_queued(self) -> None:
        while True:
            try:
                lsn, touched = self.changes.get_nowait()
            except queue.Empty:
                return
            for (schema, table), keys in touched.items():
                for graph in [g for g in self.graphs.values()
                              if (g.name.schema, g.name.table) == (schema, table)]:  # fmt: skip
                    if lsn <= graph.lsn:
                        continue  # in the graph already (built from a later snapshot)
                    if keys.everything:
                        self._build(graph.name)
                    else:
                        self._apply(graph, lsn, touched_keys(keys))
            with self.applied:
                self.applied.notify_all()

    def _apply(self, graph: Graph, lsn: Lsn, keys: pa.Table) -> None:
        """Make the rows of ``keys`` in the graph what they are in the mirror now."""
        name, key = graph.name, graph.indexable.key
        if key not in keys.column_names:
            self._build(name)
            return
        rows = rows_for_keys(
            self.mirror.con, name.schema, name.table, keys.select([key]), [key, name.column],
            where=f"r.{quote(name.column)} is not null",
        )  # fmt: skip
        touched = np.unique(np.array([int(k) for k in keys.column(key).to_pylist() if k],
                                     dtype=np.int64))  # fmt: skip
        present, vectors = _keys_and_vectors(rows, key, name.column, graph.indexable.dims)
        with graph.lock:
            gone = [k for k in touched.view(np.uint64).tolist() if k in graph.index]
            if gone:
                graph.index.remove(gone)
            if len(present):
                graph.index.add(present.view(np.uint64), vectors, threads=1)
            graph.lsn = max(graph.lsn, lsn)
            graph.dirty = True

    def _replay(self, graph: Graph) -> None:
        name = graph.name
        for lsn, keys in self.mirror.logged_changes(name.schema, name.table, graph.lsn):
            self._apply(graph, lsn, keys)

    def _build(self, name: IndexName) -> None:
        """Build ``name``'s graph from the mirror as committed (its table watched first, so no
        commit after the snapshot goes unseen)."""
        table = self.mirror.tables.get((name.schema, name.table))
        found = indexable(table, name.column) if table is not None else None
        if found is None:
            self._drop(name)
            return
        self._follow(name)
        started = time.monotonic()
        cursor = self.mirror.con.cursor()
        try:
            cursor.execute("begin")
            (row,) = cursor.execute(f"select max(lsn) from {META}.positions").fetchall()
            lsn = int(row[0]) if row[0] is not None else 0
            rows = cursor.sql(
                f"select {quote(found.key)}, {quote(name.column)}"
                f" from {quote(name.schema)}.{quote(name.table)}"
                f" where {quote(name.column)} is not null"
            ).to_arrow_table()
            cursor.execute("commit")
        finally:
            cursor.close()
        keys, vectors = _keys_and_vectors(rows, found.key, name.column, found.dims)
        index = _new_index(found.dims, METRICS[name.distance])
        if len(keys):
            index.add(keys.view(np.uint64), vectors, threads=0)
        graph = Graph(name, found, index, lsn, dirty=True)
        self.graphs[name] = graph
        self._save(graph)
        seconds = time.monotonic() - started
        log.info("vector index of %s.%s.%s (%s) built: %d rows in %.1f s", name.schema,
                 name.table, name.column, name.distance, len(keys), seconds)  # fmt: skip
        with self.applied:
            self.applied.notify_all()

    def _drop(self, name: IndexName) -> None:
        self.graphs.pop(name, None)
        (self.directory / name.file_name).unlink(missing_ok=True)

    # -- files ---------------------------------------------------------------------------------

    def _save(self, graph: Graph) -> None:
        """Write the graph and its position to a new file, then put it in place."""
        with graph.lock:
            data = graph.index.save()
            lsn, graph.dirty = graph.lsn, False
        assert data is not None
        name = graph.name
        header = json.dumps({
            "schema": name.schema, "table": name.table, "column": name.column,
            "distance": name.distance, "dims": graph.indexable.dims,
            "key": graph.indexable.key, "lsn": lsn,
        }).encode()  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name.file_name
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as out:
            out.write(_MAGIC + struct.pack("<I", len(header)) + header)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        self._release(name.schema, name.table)

    def _release(self, schema: str, table: str) -> None:
        """Let the change log forget what every graph of ``schema.table`` has saved."""
        graphs = [
            g for g in self.graphs.values() if (g.name.schema, g.name.table) == (schema, table)
        ]
        if graphs and not any(g.dirty for g in graphs):
            self.mirror.forget_changes(schema, table, min(g.lsn for g in graphs), consumer=CONSUMER)

    def _load(self, path: Path) -> Graph | None:
        """The graph in ``path``; None when its column can no longer have it."""
        data = path.read_bytes()
        if data[:8] != _MAGIC:
            raise ValueError("not a vector index file")
        (size,) = struct.unpack("<I", data[8:12])
        header = json.loads(data[12 : 12 + size])
        name = IndexName(header["schema"], header["table"], header["column"], header["distance"])
        table = self.mirror.tables.get((name.schema, name.table))
        found = indexable(table, name.column) if table is not None else None
        if found != Indexable(header["dims"], header["key"]):
            return None
        index = _new_index(found.dims, METRICS[name.distance])
        index.load(bytearray(data[12 + size :]))
        return Graph(name, found, index, int(header["lsn"]))


def _new_index(dims: int, metric: str) -> Index:
    return Index(
        ndim=dims, metric=metric, dtype="f32", connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH,
    )  # fmt: skip


def _keys_and_vectors(
    rows: pa.Table, key: str, column: str, dims: int
) -> tuple[np.ndarray, np.ndarray]:
    """The keys (int64) and vectors (float32 rows) of ``rows``."""
    keys = rows.column(key).to_numpy().astype(np.int64)
    values = rows.column(column).combine_chunks()
    if len(values) == 0:
        return keys, np.zeros((0, dims), dtype=np.float32)
    flat = values.values.slice(values.offset * dims, len(values) * dims)
    vectors = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dims)
    return keys, vectors


def _name_of(path: Path) -> IndexName | None:
    try:
        parts = [bytes.fromhex(p).decode() for p in path.name.removesuffix(".usearch").split(".")]
    except ValueError:
        return None
    return IndexName(*parts) if len(parts) == 4 else None


def names_for(tables: Iterable[MirroredTable]) -> list[tuple[str, str, str]]:
    """The vector columns of ``tables`` that can have an index."""
    return [
        (t.schema, t.name, c.name)
        for t in tables
        for c in t.columns
        if indexable(t, c.name) is not None
    ]
