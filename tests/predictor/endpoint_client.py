"""Clients of the SQL endpoint in tests: psql scripts and psycopg connections."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from predictor.server import SqlEndpoint


def dsn(endpoint: SqlEndpoint, **options: str) -> str:
    parts = {"host": "127.0.0.1", "port": str(endpoint.port), "user": "pgml", "dbname": "pgml"}
    parts |= options
    return " ".join(f"{k}={v}" for k, v in parts.items())


def connect(endpoint: SqlEndpoint, **options: str) -> psycopg.Connection:
    return psycopg.connect(dsn(endpoint, **options), autocommit=True)


def psql(
    pg_bin: Path, endpoint: SqlEndpoint, script: str, *, check: bool = True, user: str = "pgml"
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with psql (unaligned, tuples only, ``|`` between fields, stop on error)."""
    done = subprocess.run(
        [str(pg_bin / "psql"), "-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1",
         "-h", "127.0.0.1", "-p", str(endpoint.port), "-U", user, "-d", "pgml"],
        input=script, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"psql failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    return done
