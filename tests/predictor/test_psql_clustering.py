"""PostgresML's clustering and decomposition scripts' calls, typed into psql against the
endpoint: default algorithms, pgml.decompose, the algorithms that cannot predict, runtime rust."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import psql

SESSION = """
SELECT * FROM pgml.load_dataset('iris');
SELECT * FROM pgml.train('Iris Clusters', 'cluster', 'pgml.iris',
                         hyperparams => '{"n_clusters": 3}');
SELECT count(DISTINCT pgml.predict('Iris Clusters',
                                   ARRAY[sepal_length, sepal_width, petal_length, petal_width,
                                         target]))
  FROM pgml.iris;
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'birch', hyperparams => '{"n_clusters": 3}',
                         runtime => 'rust');
SELECT * FROM pgml.train('Iris Reduction', 'decomposition', 'pgml.iris',
                         hyperparams => '{"n_components": 2}');
SELECT pgml.decompose('Iris Reduction', ARRAY[5.1, 3.5, 1.4, 0.2, 0]);
SELECT array_length(pgml.decompose('Iris Reduction',
                                   ARRAY[sepal_length, sepal_width, petal_length, petal_width,
                                         target]), 1), count(*)
  FROM pgml.iris GROUP BY 1;
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'dbscan', automatic_deploy => false);
"""


def test_clustering_and_decomposition_scripts(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    done = psql(pg_bin, endpoint, SESSION)
    lines = done.stdout.splitlines()
    assert lines[0] == "pgml.iris|150"
    assert lines[1] == "Iris Clusters|clustering|kmeans|t"
    assert lines[2] == "3"
    assert lines[3].startswith("Iris Clusters|clustering|birch|")
    assert "NOTICE:  runtime rust: pgml-sidecar trains and predicts with Python" in done.stderr
    assert lines[4] == "Iris Reduction|decomposition|pca|t"
    components = [float(v) for v in lines[5].strip("{}").split(",")]
    from sklearn.datasets import load_iris
    from sklearn.decomposition import PCA

    assert len(components) == 2 and all(np.isfinite(components))
    assert lines[6] == "2|150"
    assert lines[7] == "Iris Clusters|clustering|dbscan|f"
    iris = load_iris()
    x = np.column_stack([iris.data, iris.target])
    train = PCA(2).fit(x)  # the model's rows are three quarters of these: close, not equal
    by_hand = train.transform([[5.1, 3.5, 1.4, 0.2, 0]])[0]
    assert np.allclose(np.abs(components), np.abs(by_hand), rtol=0.1)
    refused = psql(pg_bin, endpoint, "SELECT pgml.predict(id, ARRAY[5.1, 3.5, 1.4, 0.2, 0])"
                   " FROM pgml.models WHERE algorithm = 'dbscan';", check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "dbscan cannot predict: it labels only the rows it was trained on" in refused.stderr
    wrong = psql(pg_bin, endpoint, "SELECT pgml.decompose('Iris Clusters', ARRAY[1, 2, 3, 4, 0]);",
                 check=False)  # fmt: skip
    assert "pgml.decompose needs a decomposition model (pca), not clustering" in wrong.stderr
    runtime = psql(pg_bin, endpoint, "SELECT * FROM pgml.train('Iris Clusters', runtime => 'go');",
                   check=False)  # fmt: skip
    assert "runtime 'go' does not exist" in runtime.stderr
