"""The ``train`` and ``deploy`` commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mirror.errors import ConfigError
from mirror.store import Mirror

if TYPE_CHECKING:
    from trainer.train import Trainer

log = logging.getLogger("pgml_sidecar")

_MIRROR_HELP = "path of the DuckDB mirror file (env PGML_SIDECAR_MIRROR)"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    _train_parser(commands)
    _deploy_parser(commands)


def _train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a model on a mirrored table, as pgml.train does",
        description=(
            "Snapshot a relation of the mirror to Parquet, fit the algorithm in a worker process,"
            " score it on the held-out rows and register it in the mirror's pgml schema. The"
            " first model of a project is deployed; a later one is deployed when its key metric"
            " (r2 for regression, f1 for classification) beats the deployed model's. Retraining"
            " a project without --relation reuses its last snapshot and split."
        ),
    )
    p.add_argument("project", help="project name")
    p.add_argument("--mirror", default=os.environ.get("PGML_SIDECAR_MIRROR"), help=_MIRROR_HELP)
    p.add_argument(
        "--task", choices=("regression", "classification", "clustering", "decomposition")
    )
    p.add_argument("--relation", help="table to train on, as schema.table")
    p.add_argument("--y", help="label column (not needed for clustering and decomposition)")
    p.add_argument("--algorithm", help="PostgresML algorithm name (default linear)")
    p.add_argument("--hyperparams", help='JSON object passed to the estimator, e.g. {"alpha": 1}')
    p.add_argument("--search", choices=("grid", "random"), help="hyperparameter search")
    p.add_argument("--search-params", help='JSON: lists of values, e.g. {"alpha": [0.1, 1]}')
    p.add_argument("--search-args", help='JSON for the search, e.g. {"cv": 3, "n_iter": 4}')
    p.add_argument("--test-size", type=float, help="held-out fraction (default 0.25)")
    p.add_argument(
        "--test-sampling",
        choices=("random", "last", "stratified"),
        help="how held-out rows are picked (default stratified: random for non-classification)",
    )
    p.add_argument(
        "--preprocess",
        help='per-column JSON, e.g. {"city": {"encode": "target"}, "age": {"impute": "median"}}',
    )
    p.add_argument("--seed", type=int, help="seed of the split and the estimator (default 0)")
    p.add_argument(
        "--no-deploy", action="store_true", help="register the model without deploying it"
    )
    p.set_defaults(run=_train)


def _deploy_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "deploy",
        help="choose which model of a project serves predictions",
        description=(
            "Deploy a model of PROJECT chosen by --strategy (optionally among one algorithm's"
            " models), or the model --model-id. rollback returns to the model deployed before"
            " the current one; repeating it walks further back."
        ),
    )
    p.add_argument("project", nargs="?", help="project name")
    p.add_argument("--mirror", default=os.environ.get("PGML_SIDECAR_MIRROR"), help=_MIRROR_HELP)
    p.add_argument(
        "--strategy",
        choices=("most_recent", "best_score", "best_fit", "rollback"),
        default="best_score",
        help="default %(default)s",
    )
    p.add_argument("--algorithm", help="consider only models of this algorithm")
    p.add_argument("--model-id", type=int, help="deploy this model")
    p.set_defaults(run=_deploy)


@contextmanager
def _trainer(args: argparse.Namespace) -> Iterator[Trainer]:
    from trainer.train import Trainer, artifact_home

    if not args.mirror:
        raise ConfigError("no mirror file: pass --mirror PATH or set PGML_SIDECAR_MIRROR")
    if not Path(args.mirror).is_file():  # never a new, empty mirror for a mistyped path
        raise ConfigError(
            f"mirror {args.mirror} does not exist; pass the --mirror file that replicate or run"
            " writes"
        )
    mirror = Mirror(args.mirror)
    trainer = Trainer(mirror.con, artifact_home(mirror.path))
    try:
        yield trainer
    finally:
        trainer.close()
        mirror.close()


def _train(args: argparse.Namespace) -> int:
    with _trainer(args) as trainer:
        log.info("training %s", args.project)
        result = trainer.train(
            args.project,
            task=args.task,
            relation=args.relation,
            y=args.y,
            algorithm=args.algorithm,
            hyperparams=args.hyperparams,
            search=args.search,
            search_params=args.search_params,
            search_args=args.search_args,
            test_size=args.test_size,
            test_sampling=args.test_sampling,
            preprocess=args.preprocess,
            automatic_deploy=not args.no_deploy,
            seed=args.seed,
        )
    print(
        f"project {result.project}: {result.task} model {result.model_id} ({result.algorithm})"
        f" {'deployed' if result.deployed else 'trained, not deployed'}"
    )
    print("metrics: " + json.dumps({k: round(v, 6) for k, v in result.metrics.items()}))
    return 0


def _deploy(args: argparse.Namespace) -> int:
    if args.project is None and args.model_id is None:
        raise ConfigError("name a PROJECT or pass --model-id")
    with _trainer(args) as trainer:
        result = trainer.deploy(
            args.project,
            strategy=args.strategy,
            algorithm=args.algorithm,
            model_id=args.model_id,
        )
    state = "deployed" if result.changed else "was already deployed"
    print(
        f"project {result.project}: model {result.model_id} ({result.algorithm}) {state}"
        f" by strategy {result.strategy}"
    )
    return 0
