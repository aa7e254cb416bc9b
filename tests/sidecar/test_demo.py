"""``pgml-sidecar demo``, the README's first command, runs the whole flow and cleans up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_trains_writes_back_and_cleans_up() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "demo", "--rows", "3000"],
        capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert out.count(": done, model") == 3, out
    assert "every customer has a score in pgml_scores.customer_churn (3000 rows)" in out
    assert "100 new customers inserted; all scored in the source" in out
    assert "leaderboard" in out and "random_forest" in out
    assert "psql -h 127.0.0.1 -p" in out
    workdir = out.split("starting a throwaway PostgreSQL in ", 1)[1].split()[0]
    assert not Path(workdir).exists()  # removed
