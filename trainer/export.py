"""Export and import of the registry and its files: PostgresML's pgml.dump_all and load_all.

An export is a directory under the artifact home's ``exports/`` (never anywhere a client
names: a name with ``..``, an absolute path or a hidden part is refused). It holds one CSV file
per registry table, with a header, as PostgresML's ``pgml.dump_all`` writes them
(``projects.csv``, ``snapshots.csv``, ``models.csv``, ``deployments.csv``), and a copy of every
snapshot and model file under the path the registry names (``snapshots/...``,
``models/...``). Each file's SHA-256 is checked against the registry as it is copied out.

``load_all`` reads such a directory back into the registry in one transaction: every file's
SHA-256 must be the one its CSV row names (a changed file is refused, as the registry refuses
it when loading a model), no project may exist already, and nothing is registered or copied
when anything is wrong. Rows get new ids; references between them follow.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from mirror.errors import TrainingError
from mirror.registry import ModelRecord, Snapshot
from trainer.snapshots import file_sha256
from trainer.train import Trainer

TABLES = ("projects", "snapshots", "models", "deployments")
"""The registry tables an export holds, in the order they are loaded."""
EXPORTS = "exports"
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class Transfer:
    """What an export or an import did: where, and how many rows of each table and files."""

    directory: Path
    rows: dict[str, int]
    files: int

    def report(self) -> list[tuple[str, int]]:
        """One (what, how many) per table, then the files."""
        return [(f"pgml.{t}", self.rows.get(t, 0)) for t in TABLES] + [("files", self.files)]


def export_directory(home: Path, name: str) -> Path:
    """The directory an export called ``name`` lives in: under ``<home>/exports``, whatever
    the name (which may have several parts, ``2026/monday``)."""
    text = str(name or "").strip()
    parts = text.split("/")
    if any(p in (".", "..") or not _PART.fullmatch(p) for p in parts):
        raise _bad_name(text)  # also "", "/x", "a//b", "a\\b", "c:/x", ".hidden"
    return home / EXPORTS / Path(*parts)


def _bad_name(name: str) -> TrainingError:
    return TrainingError(
        f"export directory {name!r} is not a plain relative name: exports live under the"
        " sidecar's own directory (<mirror>.pgml/exports/); name one with letters, digits,"
        " '_', '-' and '.' (parts separated by '/'), without '..' or a leading '/'",
        sqlstate="42501",
    )


def dump_all(trainer: Trainer, name: str) -> Transfer:
    """Write the registry's tables as CSV and copy its snapshot and model files to the export
    directory ``name`` (which must not hold anything yet)."""
    target = export_directory(trainer.home, name)
    if target.exists() and any(target.iterdir()):
        raise TrainingError(
            f"export directory {name!r} already holds an export; name a new one",
            sqlstate="42P07",
        )
    tables = _tables(trainer)
    work = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        files = 0
        for table in ("snapshots", "models"):
            for row in tables[table]:
                files += _copy_checked(
                    trainer.home, work, str(row["path"]), str(row["sha256"]), table
                )
        for table, rows in tables.items():
            _write_csv(work / f"{table}.csv", rows, _columns(trainer, table))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.rmdir()  # empty, checked above
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Transfer(target, {t: len(r) for t, r in tables.items()}, files)


def _columns(trainer: Trainer, table: str) -> list[str]:
    cursor = trainer.con.cursor()
    try:
        cursor.execute(f"select * from pgml.{table} limit 0")
        return [d[0] for d in cursor.description or ()]
    finally:
        cursor.close()


def _tables(trainer: Trainer) -> dict[str, list[dict[str, Any]]]:
    """Every row of each exported table, read in one transaction (one consistent state)."""
    cursor = trainer.con.cursor()
    try:
        cursor.execute("begin")
        tables = {}
        for table in TABLES:
            cursor.execute(f"select * from pgml.{table} order by id")
            names = [d[0] for d in cursor.description or ()]
            tables[table] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        cursor.execute("commit")
        return tables
    finally:
        cursor.close()


def _copy_checked(home: Path, target: Path, path: str, sha256: str, table: str) -> int:
    """Copy ``home/path`` to ``target/path``, refusing a file whose SHA-256 is not ``sha256``."""
    source = _inside(home, path, table)
    copied = _inside(target, path, table)
    copied.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(source, copied)
    except FileNotFoundError:
        raise TrainingError(
            f"{table} file {path} is missing from {home}; the export stops", sqlstate="58P01"
        ) from None
    if file_sha256(copied) != sha256:
        raise TrainingError(
            f"{table} file {path} does not match the SHA-256 in the registry; it was changed"
            " or damaged after training: nothing was exported",
            sqlstate="XX001",
        )
    return 1


def _inside(base: Path, path: str, table: str) -> Path:
    """``base/path``, refused unless ``path`` is a plain relative path in ``snapshots/`` or
    ``models/`` (a CSV row names it: it may have been edited)."""
    parts = path.split("/")
    if (
        len(parts) < 2
        or parts[0] not in ("snapshots", "models")
        or any(p in (".", "..") or not _PART.fullmatch(p) for p in parts)
    ):
        raise TrainingError(
            f"{table} file {path!r} is not a file of the registry's snapshots/ or models/",
            sqlstate="42501",
        )
    return base / Path(*parts)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """PostgreSQL's CSV: a header, NULL as an empty unquoted field, JSON and arrays as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_value(row.get(c)) for c in columns])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, list):
        return "{" + ",".join(json.dumps(str(v), ensure_ascii=False) for v in value) + "}"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


# -- import ----------------------------------------------------------------------------------------


def load_all(trainer: Trainer, name: str) -> Transfer:
    """Register the projects, snapshots, models and deployments of the export ``name``, with
    their files checked and copied into the artifact home."""
    source = export_directory(trainer.home, name)
    if not (source / "projects.csv").is_file():
        raise TrainingError(
            f"export directory {name!r} holds no export (no projects.csv)", sqlstate="58P01"
        )
    tables = {t: _read_csv(source / f"{t}.csv") for t in TABLES}
    registry = trainer.registry
    existing = [str(p["name"]) for p in tables["projects"] if registry.project(str(p["name"]))]
    if existing:
        raise TrainingError(
            "projects " + ", ".join(repr(p) for p in existing) + " exist already; load an export"
            " into a sidecar without them (nothing was loaded)",
            sqlstate="42710",
        )
    for table in ("snapshots", "models"):
        for row in tables[table]:
            _check_file(source, row, table)
    with _copies(trainer.home) as copy:
        paths = {
            (t, str(row["id"])): copy(source, str(row["path"]), t)
            for t in ("snapshots", "models")
            for row in tables[t]
        }
        with registry.transaction():
            _register(trainer, tables, paths)
    trainer.generation += 1
    files = len(paths)
    return Transfer(source, {t: len(r) for t, r in tables.items()}, files)


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise TrainingError(f"the export has no {path.name}", sqlstate="58P01") from None


def _check_file(source: Path, row: Mapping[str, str], table: str) -> None:
    path = _inside(source, row["path"], table)
    if not path.is_file():
        raise TrainingError(
            f"{table} file {row['path']} is missing from the export (nothing was loaded)",
            sqlstate="58P01",
        )
    if file_sha256(path) != row["sha256"]:
        raise TrainingError(
            f"{table} file {row['path']} of the export does not match the SHA-256 its row of"
            f" {table}.csv names; it was changed or damaged: nothing was loaded",
            sqlstate="XX001",
        )


@contextmanager
def _copies(home: Path) -> Iterator[Any]:
    """A function copying an export's file into the artifact home under a fresh name (its
    registry path back); every copy is deleted again if the block fails."""
    made: list[Path] = []

    def copy(source: Path, path: str, table: str) -> str:
        folder = path.split("/")[0]
        suffix = ".parquet" if folder == "snapshots" else ".pickle"
        relative = f"{folder}/{uuid.uuid4().hex}{suffix}"
        (home / folder).mkdir(parents=True, exist_ok=True)
        made.append(home / relative)
        shutil.copyfile(_inside(source, path, table), home / relative)
        return relative

    try:
        yield copy
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        raise


def _register(
    trainer: Trainer,
    tables: Mapping[str, list[dict[str, str]]],
    paths: Mapping[tuple[str, str], str],
) -> None:
    registry = trainer.registry
    projects = {p["id"]: registry.add_project(p["name"], p["task"]).id for p in tables["projects"]}
    snapshots = {}
    for row in tables["snapshots"]:
        added = registry.add_snapshot(
            Snapshot(
                id=0,
                relation_name=row["relation_name"],
                y_column_name=_text_array(row["y_column_name"]),
                test_size=float(row["test_size"]),
                test_sampling=row["test_sampling"],
                seed=int(row["seed"]),
                num_rows=int(row["num_rows"]),
                columns=_json(row["columns"], []),
                source_position=_json(row["source_position"], {}),
                path=paths["snapshots", row["id"]],
                sha256=row["sha256"],
            )
        )
        snapshots[row["id"]] = added.id
    models = {}
    for row in tables["models"]:
        added_model = registry.add_model(
            ModelRecord(
                id=0,
                project_id=_reference(projects, row["project_id"], "project"),
                snapshot_id=_reference(snapshots, row["snapshot_id"], "snapshot"),
                algorithm=row["algorithm"],
                hyperparams=_json(row["hyperparams"], {}),
                metrics=_json(row["metrics"], {}),
                num_features=int(row["num_features"] or 0),
                path=paths["models", row["id"]],
                sha256=row["sha256"],
                search=row["search"] or None,
                search_params=_json(row["search_params"], {}),
                search_args=_json(row["search_args"], {}),
                search_results=_json(row["search_results"], []),
                preprocess=_json(row["preprocess"], {}),
                notes=_json(row["notes"], {}),
                status=row.get("status") or "successful",
            )
        )
        models[row["id"]] = added_model.id
    for row in sorted(tables["deployments"], key=lambda r: int(r["id"])):
        registry.add_deployment(
            _reference(projects, row["project_id"], "project"),
            _reference(models, row["model_id"], "model"),
            row["strategy"],
        )


def _reference(ids: Mapping[str, int], old: str, what: str) -> int:
    found = ids.get(old)
    if found is None:
        raise TrainingError(
            f"the export names {what} {old}, which it does not hold (nothing was loaded)",
            sqlstate="23503",
        )
    return found


def _json(text: str | None, empty: Any) -> Any:
    if not text:
        return empty
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise TrainingError(f"the export holds malformed JSON: {text[:80]!r}") from None


def _text_array(text: str | None) -> list[str]:
    """PostgreSQL's text form of a text[] as this module writes it: ``{"a","b"}``."""
    inner = (text or "").strip().removeprefix("{").removesuffix("}")
    if not inner:
        return []
    return [str(json.loads(part)) if part.startswith('"') else part for part in _split(inner)]


def _split(inner: str) -> list[str]:
    parts, current, quoted, escaped = [], "", False, False
    for char in inner:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            current, escaped = current + char, True
        elif char == '"':
            current, quoted = current + char, not quoted
        elif char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts
