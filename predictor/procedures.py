"""PostgresML's procedures on the endpoint: pgml.train, deploy, load_dataset, snapshot, version.

The sidecar's own ``pgml.schedule`` and ``pgml.retrain_on_drift`` are called the same way.
Arguments are bound by PostgresML's signatures, positionally or as ``name => value``; the
result has the columns PostgresML returns. ``SELECT pgml.train(...)`` gives one record column
named after the function, ``SELECT * FROM pgml.train(...)`` one column per field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from predictor.statements import Parameter, ProcedureCall, StatementError
from predictor.time_settings import TRAINING_TIME_LIMIT
from predictor.translation import version
from trainer import algorithms, export
from trainer.datasets import load_dataset
from trainer.snapshots import RelationColumns
from trainer.train import Trainer

TEXT, BOOL, INT8, FLOAT4, TEXT_ARRAY, RECORD = "text", "bool", "int8", "float4", "text[]", "record"

_SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "train": [
        ("project_name", ...),
        ("task", None),
        ("relation_name", None),
        ("y_column_name", None),
        ("algorithm", None),  # linear; kmeans for clustering, pca for decomposition
        ("hyperparams", "{}"),
        ("search", None),
        ("search_params", "{}"),
        ("search_args", "{}"),
        ("test_size", 0.25),
        ("test_sampling", "stratified"),
        ("runtime", None),
        ("automatic_deploy", True),
        ("materialize_snapshot", False),
        ("preprocess", "{}"),
    ],
    "deploy": [("project_name", ...), ("strategy", "best_score"), ("algorithm", None)],
    "deploy_model": [("model_id", ...)],
    "load_dataset": [("source", ...), ("subset", None), ("limit", None), ("kwargs", "{}")],
    "snapshot": [
        ("relation_name", ...),
        ("y_column_name", None),
        ("test_size", 0.25),
        ("test_sampling", "stratified"),
    ],
    "version": [],
    "dump_all": [("path", ...)],
    "load_all": [("path", ...)],
    "schedule": [("project_name", ...), ("cron", ...)],
    "retrain_on_drift": [("project_name", ...), ("enabled", True)],
}


_SIGNATURES["train_joint"] = _SIGNATURES["train"]
TRAINING = ("train", "train_joint")

COLUMNS: dict[str, list[tuple[str, str]]] = {
    "train": [("project", TEXT), ("task", TEXT), ("algorithm", TEXT), ("deployed", BOOL)],
    "train_joint": [("project", TEXT), ("task", TEXT), ("algorithm", TEXT), ("deployed", BOOL)],
    "deploy": [("project", TEXT), ("strategy", TEXT), ("algorithm", TEXT)],
    "load_dataset": [("table_name", TEXT), ("rows", INT8)],
    "snapshot": [("relation", TEXT), ("y_column_name", TEXT_ARRAY)],
    "version": [("version", TEXT)],
    "dump_all": [("table_name", TEXT), ("rows", INT8)],
    "load_all": [("table_name", TEXT), ("rows", INT8)],
    "schedule": [("project", TEXT), ("schedule", TEXT)],
    "retrain_on_drift": [("project", TEXT), ("retrain_on_drift", BOOL)],
}


def columns_of(procedure: ProcedureCall) -> list[tuple[str, str]]:
    """The columns ``procedure`` returns, known before it runs (for Describe)."""
    columns = COLUMNS[procedure.name]
    if procedure.expanded or len(columns) == 1:
        return columns
    return [(procedure.name, RECORD)]


@dataclass(frozen=True, slots=True)
class ProcedureResult:
    """Rows a procedure returns, with PostgreSQL column names and type names."""

    columns: list[tuple[str, str]]
    rows: list[tuple[Any, ...]]
    tag: str = "SELECT 1"
    notices: tuple[str, ...] = ()
    """What the user should know, sent as NOTICEs before the rows."""


def call(
    trainer: Trainer,
    procedure: ProcedureCall,
    params: Sequence[Any] = (),
    *,
    changing: Callable[[str, str], AbstractContextManager[None]] | None = None,
    time_limit: str | None = None,
    workspace_relation: Callable[[str], RelationColumns | None] | None = None,
) -> ProcedureResult:
    """Run ``procedure`` with its ``$n`` arguments taken from ``params``.

    ``changing(procedure, project)`` wraps the run: it refuses a caller who may not change the
    project (:meth:`predictor.access.EndpointAccess.changing`). ``time_limit`` is the session's
    ``pgml.training_time_limit`` ('10min'), for ``pgml.train``. ``workspace_relation``
    resolves a relation name in the caller's workspace first (None: not there; the mirror's)."""
    name = procedure.name
    args = [_param(a, params) for a in procedure.args]
    kwargs = {k: _param(v, params) for k, v in procedure.kwargs.items()}
    if name == "deploy" and (
        (len(args) == 1 and not kwargs and _is_model_id(args[0]))
        or (not args and list(kwargs) == ["model_id"])
    ):  # PostgresML's pgml.deploy(model_id bigint)
        name = "deploy_model"
    bound = _bind(name, args, kwargs)
    if name in TRAINING:  # the session's pgml.training_time_limit: '' or unset is the sidecar's
        bound["time_limit"] = TRAINING_TIME_LIMIT.parse(time_limit) if time_limit else None
    relation = bound.get("relation_name")
    if relation is not None and name in (*TRAINING, "snapshot") and workspace_relation is not None:
        bound["found"] = workspace_relation(str(relation))  # the caller's own, read as it may
    if relation is not None and procedure.check_relation is not None and not bound.get("found"):
        procedure.check_relation(str(relation))  # a table the caller may read, never internal
    run: Callable[[Trainer, dict[str, Any]], ProcedureResult] = _RUNNERS[name]
    guard = nullcontext() if changing is None else changing(name, _project_of(trainer, name, bound))
    with guard:
        result = run(trainer, bound)
    if procedure.expanded or len(result.columns) == 1:
        return result
    column = procedure.name
    return ProcedureResult(
        [(column, RECORD)], [(record_text(row),) for row in result.rows], result.tag
    )


def _project_of(trainer: Trainer, name: str, bound: dict[str, Any]) -> str:
    """The project a procedure changes ("" for none, or a model id that names none)."""
    if name != "deploy_model":
        return str(bound.get("project_name") or "")
    model = trainer.registry.model(int(bound["model_id"]))
    return "" if model is None else trainer.registry.project_by_id(model.project_id).name


def _param(value: Any, params: Sequence[Any]) -> Any:
    if isinstance(value, Parameter):
        if not 1 <= value.number <= len(params):
            raise StatementError(f"there is no parameter ${value.number}", sqlstate="42P02")
        return params[value.number - 1]
    return value


def _is_model_id(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())


def _bind(name: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    signature = _SIGNATURES[name]
    shown = "deploy" if name == "deploy_model" else name
    names = [n for n, _ in signature]
    if len(args) > len(signature):
        raise StatementError(
            f"pgml.{shown} takes at most {len(signature)} arguments: {', '.join(names)}",
            sqlstate="42883",
        )
    bound = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise StatementError(
                f"pgml.{shown} has no argument named {key!r}; its arguments are:"
                f" {', '.join(names)}",
                sqlstate="42883",
            )
        if key in bound:
            raise StatementError(f"argument {key!r} of pgml.{shown} is given twice")
        bound[key] = value
    for key, default in signature:
        if key not in bound:
            if default is ...:
                raise StatementError(f"pgml.{shown} needs the argument {key!r}", sqlstate="42883")
            bound[key] = default
    return bound


def _train(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    if a["runtime"] not in (None, *algorithms.RUNTIMES):
        raise StatementError(
            f"runtime {a['runtime']!r} does not exist; PostgresML's runtimes are python and"
            " rust (pgml-sidecar serves both with python)",
            sqlstate="22023",
        )
    result = trainer.train(
        a["project_name"],
        task=a["task"],
        relation=a["relation_name"],
        y=a["y_column_name"],
        algorithm=a["algorithm"],
        hyperparams=a["hyperparams"],
        search=a["search"],
        search_params=a["search_params"],
        search_args=a["search_args"],
        test_size=_number(a["test_size"], "test_size"),
        test_sampling=a["test_sampling"],
        preprocess=a["preprocess"],
        automatic_deploy=_boolean(a["automatic_deploy"], "automatic_deploy"),
        time_limit=a["time_limit"],
        found=a.get("found"),
    )
    notices = algorithms.runtime_notices(a["runtime"]) + list(result.notices)
    return ProcedureResult(
        COLUMNS["train"],
        [(result.project, result.task, result.algorithm, result.deployed)],
        notices=tuple(notices),
    )


def _deploy(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    result = trainer.deploy(a["project_name"], strategy=a["strategy"], algorithm=a["algorithm"])
    return _deployed(result.project, result.strategy, result.algorithm)


def _deploy_model(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    result = trainer.deploy(model_id=int(a["model_id"]))
    return _deployed(result.project, result.strategy, result.algorithm)


def _deployed(project: str, strategy: str, algorithm: str) -> ProcedureResult:
    return ProcedureResult(COLUMNS["deploy"], [(project, strategy, algorithm)])


def _load_dataset(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    if a["limit"] is not None:
        raise StatementError("load_dataset's limit is not supported; it loads every row")
    cursor = trainer.con.cursor()
    try:
        table, rows = load_dataset(cursor, str(a["source"]))
    finally:
        cursor.close()
    return ProcedureResult(COLUMNS["load_dataset"], [(table, rows)])


def _snapshot(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    snapshot = trainer.snapshot(
        a["relation_name"],
        a["y_column_name"],
        test_size=_number(a["test_size"], "test_size"),
        test_sampling=a["test_sampling"],
        found=a.get("found"),
    )
    return ProcedureResult(COLUMNS["snapshot"], [(snapshot.relation_name, snapshot.y_column_name)])


def _version(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    return ProcedureResult(COLUMNS["version"], [(version(),)])


def _dump_all(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    done = export.dump_all(trainer, str(a["path"] or ""))
    notice = f"exported the registry and {done.files} files to {done.directory}"
    return ProcedureResult(COLUMNS["dump_all"], done.report(), notices=(notice,))


def _load_all(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    done = export.load_all(trainer, str(a["path"] or ""))
    notice = f"loaded the registry and {done.files} files (SHA-256 checked) from {done.directory}"
    return ProcedureResult(COLUMNS["load_all"], done.report(), notices=(notice,))


def _schedule(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    cron = trainer.set_schedule(str(a["project_name"]), a["cron"])
    return ProcedureResult(COLUMNS["schedule"], [(a["project_name"], cron)])


def _retrain_on_drift(trainer: Trainer, a: dict[str, Any]) -> ProcedureResult:
    enabled = trainer.set_retrain_on_drift(
        str(a["project_name"]), _boolean(a["enabled"], "enabled")
    )
    return ProcedureResult(COLUMNS["retrain_on_drift"], [(a["project_name"], enabled)])


_RUNNERS: dict[str, Callable[[Trainer, dict[str, Any]], ProcedureResult]] = {
    "schedule": _schedule,
    "retrain_on_drift": _retrain_on_drift,
    "train": _train,
    "train_joint": _train,
    "deploy": _deploy,
    "deploy_model": _deploy_model,
    "load_dataset": _load_dataset,
    "snapshot": _snapshot,
    "version": _version,
    "dump_all": _dump_all,
    "load_all": _load_all,
}


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise StatementError(f"{name} must be a number, not {value!r}", sqlstate="22P02") from None


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("t", "true", "yes", "on", "1"):
        return True
    if text in ("f", "false", "no", "off", "0"):
        return False
    raise StatementError(f"{name} must be a boolean, not {value!r}", sqlstate="22P02")


def record_text(values: Sequence[Any]) -> str:
    """A row in PostgreSQL's record output format: ``(a,b,t)``."""
    parts = []
    for value in values:
        if value is None:
            parts.append("")
            continue
        if isinstance(value, bool):
            text = "t" if value else "f"
        elif isinstance(value, list | dict):
            text = json.dumps(value)
        else:
            text = str(value)
        if text == "" or any(c in text for c in ',()"\\ \t\n'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'
        parts.append(text)
    return "(" + ",".join(parts) + ")"
