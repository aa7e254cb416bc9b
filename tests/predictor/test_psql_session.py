"""A PostgresML session typed into psql against the endpoint, checked by what psql prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import psql

SESSION = """
SELECT * FROM pgml.load_dataset('diabetes');
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target',
                         'linear');
SELECT pgml.train('Diabetes Progression', algorithm => 'ridge', hyperparams => '{"alpha": 1000}');
SELECT * FROM pgml.train(
    project_name => 'Diabetes Progression',
    algorithm => 'lasso',
    search => 'grid',
    search_params => '{"alpha": [0.01, 0.1, 1]}'::jsonb,
    search_args => '{"cv": 3}'
);
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'xgboost',
                         hyperparams => '{"n_estimators": 20}');
SELECT name, algorithm FROM pgml.deployed_models;
SELECT algorithm, (metrics->>'r2')::float > 0 FROM pgml.models ORDER BY id;
SELECT count(*) FROM pgml.trained_models WHERE deployed;
SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent');
SELECT * FROM pgml.deploy('Diabetes Progression', 'rollback');
SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score', 'ridge');
SELECT * FROM pgml.deploy(1);
SELECT target, round(pgml.predict('Diabetes Progression',
                                  ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6])::numeric, 3)
  FROM pgml.diabetes ORDER BY target LIMIT 3;
SELECT pgml.predict(1, ARRAY[0.038, 0.05, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019,
                             -0.017]) > 0;
SELECT * FROM pgml.load_dataset('iris');
SELECT * FROM pgml.train('Iris Flowers', 'classification', 'pgml.iris', 'target', 'linear',
                         test_sampling => 'random');
SELECT target, pgml.predict('Iris Flowers',
                            ARRAY[sepal_length, sepal_width, petal_length, petal_width])
  FROM pgml.iris WHERE target = 2 ORDER BY sepal_length DESC LIMIT 1;
SELECT array_length(pgml.predict_proba('Iris Flowers', ARRAY[5.1, 3.5, 1.4, 0.2]), 1);
SELECT pgml.version() LIKE 'pgml-sidecar%';
SELECT * FROM pgml.load_dataset('digits');
SELECT * FROM pgml.train('Handwritten Digits', 'classification', 'pgml.digits', 'target',
                         'hist_gradient_boosting', hyperparams => '{"max_iter": 30}');
SELECT avg((pgml.predict('Handwritten Digits', image) = target)::int) > 0.9 FROM pgml.digits;
SELECT * FROM pgml.snapshot('pgml.digits', 'target');
SELECT relation_name, y_column_name FROM pgml.overview ORDER BY name;
"""


def test_postgresml_session(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    lines = psql(pg_bin, endpoint, SESSION).stdout.splitlines()
    expected = [
        "pgml.diabetes|442",
        "Diabetes Progression|regression|linear|t",
        '("Diabetes Progression",regression,ridge,f)',
        "Diabetes Progression|regression|lasso|",  # deployed or not: checked below
        "Diabetes Progression|regression|xgboost|",
    ]
    assert lines[0] == expected[0]
    assert lines[1] == expected[1]
    assert lines[2] == expected[2]
    assert lines[3].startswith(expected[3]) and lines[3][-1] in "tf"
    assert lines[4].startswith(expected[4])
    deployed = lines[5].split("|")
    assert deployed[0] == "Diabetes Progression"
    assert lines[6:10] == ["linear|t", "ridge|t", "lasso|t", "xgboost|t"]
    assert lines[10] == "1"
    assert lines[11] == "Diabetes Progression|most_recent|xgboost"
    assert lines[12].startswith("Diabetes Progression|rollback|")
    assert lines[13] == "Diabetes Progression|best_score|ridge"
    assert lines[14] == "Diabetes Progression|specific|linear"
    predictions = [line.split("|") for line in lines[15:18]]
    assert [p[0] for p in predictions] == ["25", "31", "37"]
    assert all(50 < float(p[1]) < 200 for p in predictions)
    assert lines[18] == "t"
    assert lines[19] == "pgml.iris|150"
    assert lines[20] == "Iris Flowers|classification|linear|t"
    assert lines[21] == "2|2"
    assert lines[22] == "3"
    assert lines[23] == "t"
    assert lines[24:27] == ["pgml.digits|1797", "Handwritten Digits|classification|"
                            "hist_gradient_boosting|t", "t"]  # fmt: skip
    assert lines[27] == "pgml.digits|{target}"
    assert lines[28:31] == ["pgml.diabetes|{target}", "pgml.digits|{target}", "pgml.iris|{target}"]


@pytest.mark.parametrize(
    ("statement", "sqlstate_message"),
    [
        ("INSERT INTO pgml.iris VALUES (1, 2, 3, 4, 0)", "pgml.iris belongs to the sidecar's"),
        ("DELETE FROM pgml.iris", "pgml.iris belongs to the sidecar's registry"),
        ("DROP TABLE pgml.iris", "pgml.iris belongs to the sidecar's registry"),
        ("ALTER TABLE pgml.iris ADD COLUMN x int", "pgml.iris belongs to the sidecar's"),
        (
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "CREATE FUNCTION is not allowed",
        ),
        ("CREATE TABLE pgml.iris (a int)", 'relation "pgml.iris" already exists'),
        ("COPY pgml.iris FROM '/tmp/x.csv'", "COPY is not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "permission denied for function read_csv"),
        ("SELECT count(*) FROM glob('/*')", "permission denied for function glob"),
        ("SELECT * INTO copy_of_iris FROM pgml.iris", "SELECT INTO is not allowed"),
        ("SELECT * FROM pgml.train('x', 'regression', 'pgml.nope', 'y')", "does not exist"),
        ("SELECT pgml.predict('nobody', ARRAY[1, 2])", "project 'nobody' does not exist"),
        ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH is not allowed"),
        ("INSTALL httpfs", "INSTALL is not allowed"),
        ("LOAD 'httpfs'", "LOAD is not allowed"),
        ("PRAGMA database_list", "PRAGMA is not allowed"),
        ("EXPORT DATABASE '/tmp/everything'", "EXPORT is not allowed"),
        ("SELEC 1", "syntax error"),
    ],
)
def test_refused_statements(
    pg_bin: Path, endpoint: SqlEndpoint, statement: str, sqlstate_message: str
) -> None:
    done = psql(pg_bin, endpoint, "SELECT * FROM pgml.load_dataset('iris');\n" + statement + ";\n",
                check=False)  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert "ERROR:" in done.stderr and sqlstate_message in done.stderr, done.stderr
    after = psql(pg_bin, endpoint, "SELECT count(*) FROM pgml.iris;")
    assert after.stdout.strip() == "150"


ANALYTICS = """
SELECT * FROM pgml.load_dataset('diabetes');
SELECT * FROM pgml.train('Diabetes', 'regression', 'pgml.diabetes', 'target', 'linear');
SELECT * FROM pgml.train('Diabetes', algorithm => 'ridge');
SELECT * FROM pgml.train('Diabetes', algorithm => 'ridge', hyperparams => '{"alpha": 10}');
SELECT m.algorithm, p.name, date_trunc('day', m.created_at) = date_trunc('day', now()),
       count(*), avg((m.metrics->>'r2')::float8) BETWEEN -1 AND 1,
       avg((m.metrics->>'fit_time')::float8) > 0,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY (m.metrics->>'inference_time')::float8)
  FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id
 GROUP BY 1, 2, 3 ORDER BY 1;
"""


def test_the_registry_answers_analytics_per_algorithm_and_day(
    pg_bin: Path, endpoint: SqlEndpoint
) -> None:
    """Key metric, training time and inference time (the median one-row prediction, stored
    with each model) per algorithm, project and day, from the registry's tables."""
    lines = psql(pg_bin, endpoint, ANALYTICS).stdout.splitlines()[-2:]
    rows = [line.split("|") for line in lines]
    assert [r[:6] for r in rows] == [
        ["linear", "Diabetes", "t", "1", "t", "t"],
        ["ridge", "Diabetes", "t", "2", "t", "t"],
    ]
    assert all(0 < float(r[6]) < 1 for r in rows)
