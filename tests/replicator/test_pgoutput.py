"""The pgoutput decoder, fed hand-built protocol messages (no socket)."""

from __future__ import annotations

import struct

import pytest

from mirror.changes import Deletes, Inserts, SchemaChange, Truncate, Updates, in_order
from replicator import pgoutput as po


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def relation_message(
    oid: int, schema: str, name: str, columns: list[tuple[str, int, bool]], identity: str = "d"
) -> bytes:
    body = struct.pack(">I", oid) + cstr(schema) + cstr(name) + identity.encode()
    body += struct.pack(">H", len(columns))
    for column, type_oid, is_key in columns:
        body += bytes([1 if is_key else 0]) + cstr(column) + struct.pack(">Ii", type_oid, -1)
    return b"R" + body


def tuple_data(values: list[object]) -> bytes:
    out = struct.pack(">H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is Ellipsis:
            out += b"u"
        else:
            data = str(value).encode()
            out += b"t" + struct.pack(">I", len(data)) + data
    return out


def insert(oid: int, values: list) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + tuple_data(values)


def update(oid: int, values: list, old: list | None = None, marker: bytes = b"K") -> bytes:
    head = b"U" + struct.pack(">I", oid)
    if old is not None:
        head += marker + tuple_data(old)
    return head + b"N" + tuple_data(values)


def delete(oid: int, key: list, marker: bytes = b"K") -> bytes:
    return b"D" + struct.pack(">I", oid) + marker + tuple_data(key)


def streamed(message: bytes, xid: int) -> bytes:
    return message[:1] + struct.pack(">I", xid) + message[1:]


USERS = relation_message(16384, "public", "users", [("id", 23, True), ("name", 25, False)])


def test_relation_message_describes_columns_and_keys():
    (change,) = po.Decoder().decode([USERS])
    assert isinstance(change, SchemaChange)
    relation = change.relation
    assert relation.qualified_name == "public.users"
    assert [c.name for c in relation.columns] == ["id", "name"]
    assert [c.is_key for c in relation.columns] == [True, False]
    assert relation.columns[1].type_oid == 25


def test_consecutive_inserts_become_one_run_with_nulls():
    decoder = po.Decoder()
    changes = decoder.decode(
        [USERS, insert(16384, ["1", "ann"]), insert(16384, ["2", None]), insert(16384, ["3", ""])]
    )
    assert len(changes) == 2
    run = changes[1]
    assert isinstance(run, Inserts)
    assert run.rows.values.to_pydict() == {"id": ["1", "2", "3"], "name": ["ann", None, ""]}


def test_one_change_per_kind_and_seq_keeps_the_order():
    decoder = po.Decoder()
    changes = decoder.decode(
        [
            USERS,
            insert(16384, ["1", "a"]),
            update(16384, ["1", "b"]),
            update(16384, ["2", "c"], old=["1", None]),
            delete(16384, ["2", None]),
            insert(16384, ["3", "ü€"]),
        ]
    )
    kinds = [type(c).__name__ for c in changes]
    assert kinds == ["SchemaChange", "Inserts", "Updates", "Updates", "Deletes"]
    inserts, plain, keyed, deletes = changes[1:]
    assert isinstance(inserts, Inserts)
    assert inserts.rows.values.column("name").to_pylist() == ["a", "ü€"]
    assert inserts.seq is not None and inserts.seq.tolist() == [1, 5]
    assert isinstance(plain, Updates) and plain.old is None
    assert isinstance(keyed, Updates) and keyed.old is not None
    assert keyed.old.values.column("id").to_pylist() == ["1"]
    assert keyed.rows.values.column("id").to_pylist() == ["2"]
    assert isinstance(deletes, Deletes) and deletes.seq is not None
    assert deletes.seq.tolist() == [4]
    runs = in_order([c for c in changes if not isinstance(c, SchemaChange)])  # type: ignore[misc]
    assert [(type(r).__name__, r.seq.tolist()) for r in runs] == [  # type: ignore[union-attr]
        ("Inserts", [1]),
        ("Updates", [2]),
        ("Updates", [3]),
        ("Deletes", [4]),
        ("Inserts", [5]),
    ]
    assert runs[4].rows.values.column("name").to_pylist() == ["ü€"]  # type: ignore[union-attr]


def test_interleaved_small_transactions_make_one_change_per_table_and_kind():
    accounts = relation_message(16385, "public", "accounts", [("id", 23, True), ("n", 23, False)])
    decoder = po.Decoder()
    decoder.decode([USERS, accounts])
    messages = []
    for i in range(3000):
        messages += [update(16385, [str(i % 7), str(i)]), insert(16384, [str(i), "u"])]
    changes = decoder.decode(messages)
    updates, inserts = changes
    assert isinstance(updates, Updates) and isinstance(inserts, Inserts)
    assert updates.seq is not None and inserts.seq is not None
    assert updates.seq[:3].tolist() == [2, 4, 6]  # two relation messages came before
    assert inserts.seq[:3].tolist() == [3, 5, 7]
    assert inserts.rows.values.column("id").to_pylist() == [str(i) for i in range(3000)]
    assert decoder.decode([insert(16384, ["x", "y"])])[0].seq.tolist() == [6002]  # type: ignore[union-attr]


def test_unchanged_toast_is_marked_not_null():
    decoder = po.Decoder()
    (_, change) = decoder.decode([USERS, update(16384, ["1", ...])])
    assert isinstance(change, Updates)
    assert change.rows.values.column("name").to_pylist() == [None]
    assert change.rows.unchanged["name"].tolist() == [True]


def test_truncate_names_its_relations():
    decoder = po.Decoder()
    message = b"T" + struct.pack(">IBI", 1, 0, 16384)
    (_, change) = decoder.decode([USERS, message])
    assert isinstance(change, Truncate)
    assert [r.name for r in change.relations] == ["users"]


def test_streamed_messages_carry_a_transaction_id():
    decoder = po.Decoder()
    changes = decoder.decode(
        [streamed(USERS, 77), streamed(insert(16384, ["5", "x"]), 77)], streamed=True
    )
    assert isinstance(changes[1], Inserts)
    assert changes[1].rows.values.to_pydict() == {"id": ["5"], "name": ["x"]}
    assert po.streamed_xids([streamed(insert(16384, ["5", "x"]), 78)]) == [78]


def test_stream_control_messages_parse():
    start = po.parse_stream_start(b"S" + struct.pack(">IB", 9, 1))
    assert (start.xid, start.first_segment) == (9, True)
    commit = po.parse_stream_commit(b"c" + struct.pack(">IBQQq", 9, 0, 100, 120, 5))
    assert (commit.xid, commit.commit_lsn, commit.end_lsn) == (9, 100, 120)
    abort = po.parse_stream_abort(b"A" + struct.pack(">II", 9, 10))
    assert (abort.xid, abort.subxid) == (9, 10)
    plain = po.parse_commit(b"C" + struct.pack(">BQQq", 0, 200, 232, 7))
    assert (plain.commit_lsn, plain.end_lsn) == (200, 232)


def test_change_before_relation_is_an_error():
    with pytest.raises(po.DecodeError, match="before its Relation"):
        po.Decoder().decode([insert(99, ["1"])])


def test_corrupt_tuple_is_an_error():
    bad = b"I" + struct.pack(">I", 16384) + b"N" + struct.pack(">H", 2) + b"x" + b"zz"
    with pytest.raises(po.DecodeError):
        po.Decoder().decode([USERS, bad])


def test_many_rows_decode_like_one_at_a_time():
    rows = [[str(i), None if i % 5 == 0 else "v" * (i % 17)] for i in range(2000)]
    decoder = po.Decoder()
    (_, batch) = decoder.decode([USERS] + [insert(16384, r) for r in rows])
    assert batch.rows.values.to_pylist() == [{"id": r[0], "name": r[1]} for r in rows]  # type: ignore[union-attr]
