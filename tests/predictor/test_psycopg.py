"""psycopg against the endpoint: the extended protocol, prepared statements, server-side cursors."""

from __future__ import annotations

import threading

import psycopg
import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from tests.predictor.endpoint_client import connect
from trainer.train import Trainer


def test_prepared_predictions_and_parameters(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as conn:
        conn.execute("select * from pgml.load_dataset('iris')")
        row = conn.execute(
            "select * from pgml.train(%s, %s, %s, %s, %s)",
            ("Iris", "classification", "pgml.iris", "target", "random_forest"),
        ).fetchone()
        assert row == ("Iris", "classification", "random_forest", True)
        features = [5.1, 3.5, 1.4, 0.2]
        for _ in range(5):  # psycopg prepares the statement after a few executions
            cur = conn.execute("select pgml.predict(%s, %s)", ("Iris", features), prepare=True)
            assert cur.fetchone() == (0.0,)
        probabilities = conn.execute(
            "select pgml.predict_proba(%s, %s)", ("Iris", features)
        ).fetchone()
        assert probabilities is not None and len(probabilities[0]) == 3
        assert abs(sum(probabilities[0]) - 1) < 1e-9
        rows = conn.execute(
            "select sepal_length, target from pgml.iris where target = %s and sepal_length > %s"
            " order by sepal_length",
            (1, 6.85),
        ).fetchall()
        assert rows == [(6.9, 1), (7.0, 1)]
        described = conn.execute("select name, task from pgml.projects").description
        assert described is not None and [d.name for d in described] == ["name", "task"]


def test_server_side_cursor_in_a_transaction(endpoint: SqlEndpoint) -> None:
    with psycopg.connect(
        f"host=127.0.0.1 port={endpoint.port} user=pgml dbname=pgml"
    ) as conn:  # not autocommit: psycopg wraps everything in BEGIN ... COMMIT
        conn.execute("select * from pgml.load_dataset('digits')")
        with conn.cursor(name="images") as cur:
            cur.itersize = 100
            cur.execute("select target, image from pgml.digits order by target")
            seen = [row for row in cur]
        assert len(seen) == 1797
        assert len(seen[0][1]) == 64 and seen[0][0] == 0
        conn.commit()
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from pgml.nope")
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)


def test_failed_transaction_and_savepoints(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as conn:
        conn.execute("begin")
        conn.execute("savepoint a")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("selec 1")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.execute("rollback to savepoint a")
        assert conn.execute("select 2").fetchone() == (2,)
        conn.execute("commit")
        assert conn.execute("show server_version").fetchone() == ("16.0",)
        conn.execute("set application_name = 'tests'")
        assert conn.execute("show application_name").fetchone() == ("tests",)


def test_one_client_error_does_not_touch_another(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as first, connect(endpoint) as second:
        first.execute("select * from pgml.load_dataset('wine')")
        with pytest.raises(psycopg.Error):
            first.execute("select * from pgml.no_such_table")
        assert second.execute("select count(*) from pgml.wine").fetchone() == (178,)
        first.close()
        assert second.execute("select count(*) from pgml.wine").fetchone() == (178,)


def test_many_clients_at_once(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as conn:
        conn.execute("select * from pgml.load_dataset('diabetes')")
        conn.execute("select * from pgml.train('d', 'regression', 'pgml.diabetes', 'target')")
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with connect(endpoint) as conn:
                for _ in range(20):
                    value = conn.execute(
                        "select pgml.predict('d', ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5,"
                        " s6]) from pgml.diabetes limit 1"
                    ).fetchone()
                    assert value is not None and value[0] > 0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


def test_cancel_a_running_query(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select count(*) from range(10000000000) a")
        timer.join()
        assert conn.execute("select 1").fetchone() == (1,)


def test_stop_ends_connected_clients(mirror: Mirror, trainer: Trainer) -> None:
    served = SqlEndpoint(EndpointSettings(port=0), mirror.con, trainer)
    served.start()
    conn = connect(served)
    assert conn.execute("select 1").fetchone() == (1,)
    served.stop()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 2")
    conn.close()


def test_commit_with_a_cursor_still_open_closes_it(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as conn:
        conn.execute("begin")
        conn.execute("declare c1 cursor for select * from range(100000) t(i)")
        assert conn.execute("fetch 3 from c1").fetchall() == [(0,), (1,), (2,)]
        conn.execute("commit")
        with pytest.raises(psycopg.errors.InvalidCursorName):
            conn.execute("fetch 1 from c1")
        assert conn.execute("select 1").fetchone() == (1,)
