"""PostgresML algorithm names mapped to scikit-learn-API estimators, by task.

The ``online_*`` algorithms (``trainer.online_algorithms``) are River models behind the same
API (``trainer.online``); that module is imported only when an online estimator is made, and
River only when an online model is built or its hyperparameters are checked.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mirror.errors import TrainingError
from trainer import online_algorithms

TASKS: tuple[str, ...] = ("regression", "classification", "clustering", "decomposition")


@dataclass(frozen=True)
class _Estimator:
    """Where an estimator class lives and how the sidecar configures it."""

    path: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    native_names: frozenset[str] = frozenset()
    # Other names users may give a parameter the sidecar sets by default: given any of them,
    # the sidecar leaves that parameter to the estimator.
    aliases: Mapping[str, frozenset[str]] = field(default_factory=dict)
    takes_thread_count: bool = True


# XGBoost's own booster parameter names (https://xgboost.readthedocs.io/en/stable/parameter.html)
# that users copy from native code; the scikit-learn wrapper passes them through to the booster.
_XGBOOST_NATIVE_NAMES = frozenset(
    {
        "alpha",
        "base_score",
        "booster",
        "colsample_bylevel",
        "colsample_bynode",
        "colsample_bytree",
        "device",
        "disable_default_eval_metric",
        "eta",
        "eval_metric",
        "feature_selector",
        "gamma",
        "grow_policy",
        "huber_slope",
        "interaction_constraints",
        "lambda",
        "max_bin",
        "max_cached_hist_node",
        "max_delta_step",
        "max_depth",
        "max_leaves",
        "min_child_weight",
        "min_split_loss",
        "monotone_constraints",
        "multi_strategy",
        "normalize_type",
        "nthread",
        "num_class",
        "num_parallel_tree",
        "objective",
        "one_drop",
        "process_type",
        "quantile_alpha",
        "rate_drop",
        "refresh_leaf",
        "sample_type",
        "sampling_method",
        "scale_pos_weight",
        "seed",
        "seed_per_iteration",
        "skip_drop",
        "subsample",
        "top_k",
        "tree_method",
        "tweedie_variance_power",
        "updater",
        "validate_parameters",
        "verbosity",
    }
)

# LightGBM's documented parameters and aliases (https://lightgbm.readthedocs.io/en/stable/
# Parameters.html) most often passed to it; the full list comes from LightGBM itself when it
# can report it (see _lightgbm_native_names).
_LIGHTGBM_COMMON_NAMES = frozenset(
    {
        "bagging_fraction",
        "bagging_freq",
        "bagging_seed",
        "boosting",
        "cat_l2",
        "cat_smooth",
        "early_stopping_round",
        "extra_trees",
        "feature_fraction",
        "feature_fraction_bynode",
        "lambda_l1",
        "lambda_l2",
        "learning_rate",
        "max_bin",
        "max_depth",
        "metric",
        "min_data_in_leaf",
        "min_gain_to_split",
        "min_sum_hessian_in_leaf",
        "num_iterations",
        "num_leaves",
        "num_threads",
        "objective",
        "seed",
        "verbose",
        "verbosity",
    }
)


def _xgboost(path: str) -> _Estimator:
    return _Estimator(
        path,
        native_names=_XGBOOST_NATIVE_NAMES,
        aliases={"n_jobs": frozenset({"nthread"}), "random_state": frozenset({"seed"})},
    )


def _lightgbm(path: str) -> _Estimator:
    # LightGBM logs warnings to stdout unless told otherwise.
    return _Estimator(
        path,
        defaults={"verbose": -1},
        native_names=_LIGHTGBM_COMMON_NAMES,
        aliases={
            "n_jobs": frozenset({"num_threads", "num_thread", "nthread", "nthreads"}),
            "random_state": frozenset({"seed", "random_seed"}),
            "verbose": frozenset({"verbosity"}),
        },
    )


def _catboost(path: str) -> _Estimator:
    # CatBoost prints every iteration and writes a catboost_info directory into the working
    # directory unless told otherwise; it names its thread count and seed its own way.
    return _Estimator(
        path,
        defaults={"verbose": False, "allow_writing_files": False, "thread_count": 1},
        aliases={
            "random_state": frozenset({"random_seed"}),
            "verbose": frozenset({"logging_level", "silent", "verbose_eval"}),
        },
    )


# scikit-learn 1.8 deprecated PassiveAggressiveClassifier/Regressor (removed in 1.10). Its
# deprecation note gives the replacement: SGD with penalty=None, learning_rate="pa1" (PA-I) or
# "pa2" (PA-II) and eta0 in the role of C. _passive_aggressive() also accepts the old C and
# squared-loss (PA-II) spellings.
_PASSIVE_AGGRESSIVE_DEFAULTS = {"penalty": None, "learning_rate": "pa1", "eta0": 1.0}

_ALGORITHMS: dict[str, dict[str, _Estimator]] = {
    "linear": {
        "regression": _Estimator("sklearn.linear_model.LinearRegression"),
        # LogisticRegression's n_jobs has had no effect since scikit-learn 1.8 and warns if set.
        "classification": _Estimator(
            "sklearn.linear_model.LogisticRegression", takes_thread_count=False
        ),
    },
    "ridge": {
        "regression": _Estimator("sklearn.linear_model.Ridge"),
        "classification": _Estimator("sklearn.linear_model.RidgeClassifier"),
    },
    "lasso": {"regression": _Estimator("sklearn.linear_model.Lasso")},
    "elastic_net": {"regression": _Estimator("sklearn.linear_model.ElasticNet")},
    "least_angle": {"regression": _Estimator("sklearn.linear_model.Lars")},
    "lasso_least_angle": {"regression": _Estimator("sklearn.linear_model.LassoLars")},
    "orthogonal_matching_pursuit": {
        "regression": _Estimator("sklearn.linear_model.OrthogonalMatchingPursuit")
    },
    "bayesian_ridge": {"regression": _Estimator("sklearn.linear_model.BayesianRidge")},
    "automatic_relevance_determination": {
        "regression": _Estimator("sklearn.linear_model.ARDRegression")
    },
    "stochastic_gradient_descent": {
        "regression": _Estimator("sklearn.linear_model.SGDRegressor"),
        "classification": _Estimator("sklearn.linear_model.SGDClassifier"),
    },
    "perceptron": {"classification": _Estimator("sklearn.linear_model.Perceptron")},
    "passive_aggressive": {
        "regression": _Estimator(
            "sklearn.linear_model.SGDRegressor",
            defaults={"loss": "epsilon_insensitive", **_PASSIVE_AGGRESSIVE_DEFAULTS},
            native_names=frozenset({"C"}),
            aliases={"eta0": frozenset({"C"})},
        ),
        "classification": _Estimator(
            "sklearn.linear_model.SGDClassifier",
            defaults={"loss": "hinge", **_PASSIVE_AGGRESSIVE_DEFAULTS},
            native_names=frozenset({"C"}),
            aliases={"eta0": frozenset({"C"})},
        ),
    },
    "ransac": {"regression": _Estimator("sklearn.linear_model.RANSACRegressor")},
    "theil_sen": {"regression": _Estimator("sklearn.linear_model.TheilSenRegressor")},
    "huber": {"regression": _Estimator("sklearn.linear_model.HuberRegressor")},
    "quantile": {"regression": _Estimator("sklearn.linear_model.QuantileRegressor")},
    "svm": {
        "regression": _Estimator("sklearn.svm.SVR"),
        "classification": _Estimator("sklearn.svm.SVC"),
    },
    "nu_svm": {
        "regression": _Estimator("sklearn.svm.NuSVR"),
        "classification": _Estimator("sklearn.svm.NuSVC"),
    },
    "linear_svm": {
        "regression": _Estimator("sklearn.svm.LinearSVR"),
        "classification": _Estimator("sklearn.svm.LinearSVC"),
    },
    "ada_boost": {
        "regression": _Estimator("sklearn.ensemble.AdaBoostRegressor"),
        "classification": _Estimator("sklearn.ensemble.AdaBoostClassifier"),
    },
    "bagging": {
        "regression": _Estimator("sklearn.ensemble.BaggingRegressor"),
        "classification": _Estimator("sklearn.ensemble.BaggingClassifier"),
    },
    "extra_trees": {
        "regression": _Estimator("sklearn.ensemble.ExtraTreesRegressor"),
        "classification": _Estimator("sklearn.ensemble.ExtraTreesClassifier"),
    },
    "gradient_boosting_trees": {
        "regression": _Estimator("sklearn.ensemble.GradientBoostingRegressor"),
        "classification": _Estimator("sklearn.ensemble.GradientBoostingClassifier"),
    },
    "random_forest": {
        "regression": _Estimator("sklearn.ensemble.RandomForestRegressor"),
        "classification": _Estimator("sklearn.ensemble.RandomForestClassifier"),
    },
    "hist_gradient_boosting": {
        "regression": _Estimator("sklearn.ensemble.HistGradientBoostingRegressor"),
        "classification": _Estimator("sklearn.ensemble.HistGradientBoostingClassifier"),
    },
    "kernel_ridge": {"regression": _Estimator("sklearn.kernel_ridge.KernelRidge")},
    "gaussian_process": {
        "regression": _Estimator("sklearn.gaussian_process.GaussianProcessRegressor"),
        "classification": _Estimator("sklearn.gaussian_process.GaussianProcessClassifier"),
    },
    "xgboost": {
        "regression": _xgboost("xgboost.XGBRegressor"),
        "classification": _xgboost("xgboost.XGBClassifier"),
    },
    "xgboost_random_forest": {
        "regression": _xgboost("xgboost.XGBRFRegressor"),
        "classification": _xgboost("xgboost.XGBRFClassifier"),
    },
    "lightgbm": {
        "regression": _lightgbm("lightgbm.LGBMRegressor"),
        "classification": _lightgbm("lightgbm.LGBMClassifier"),
    },
    "catboost": {
        "regression": _catboost("catboost.CatBoostRegressor"),
        "classification": _catboost("trainer.catboost_models.CatBoostClassifier"),
    },
    "knn": {
        "regression": _Estimator("sklearn.neighbors.KNeighborsRegressor"),
        "classification": _Estimator("sklearn.neighbors.KNeighborsClassifier"),
    },
    "kmeans": {"clustering": _Estimator("sklearn.cluster.KMeans")},
    "mini_batch_kmeans": {"clustering": _Estimator("sklearn.cluster.MiniBatchKMeans")},
    "birch": {"clustering": _Estimator("sklearn.cluster.Birch")},
    "affinity_propagation": {"clustering": _Estimator("sklearn.cluster.AffinityPropagation")},
    "mean_shift": {"clustering": _Estimator("sklearn.cluster.MeanShift")},
    # These cluster the rows they are fitted on and cannot assign new rows (TRANSDUCTIVE).
    "dbscan": {"clustering": _Estimator("sklearn.cluster.DBSCAN")},
    "optics": {"clustering": _Estimator("sklearn.cluster.OPTICS")},
    "spectral": {"clustering": _Estimator("sklearn.cluster.SpectralClustering")},
    "spectral_bi": {"clustering": _Estimator("sklearn.cluster.SpectralBiclustering")},
    "spectral_co": {"clustering": _Estimator("sklearn.cluster.SpectralCoclustering")},
    # Clusters the features, not the rows: it reduces each row to one value per cluster.
    "feature_agglomeration": {"clustering": _Estimator("sklearn.cluster.FeatureAgglomeration")},
    "pca": {"decomposition": _Estimator("sklearn.decomposition.PCA")},
}

# Names PostgresML accepts for an algorithm besides its own: its docs spelled this one wrong.
_ALIASES = {"orthoganl_matching_pursuit": "orthogonal_matching_pursuit"}

DEFAULTS = {
    "regression": "linear",
    "classification": "linear",
    "clustering": "kmeans",
    "decomposition": "pca",
}
"""The algorithm a training uses when none is named, as PostgresML chooses it."""

TRANSDUCTIVE = frozenset({"dbscan", "optics", "spectral", "spectral_bi", "spectral_co"})
"""Clustering algorithms that label the rows they are fitted on and cannot label new ones
(scikit-learn's estimators have no ``predict``): they are scored on their training rows, and
asked for a prediction they say so, as PostgresML cannot predict with them either."""


RUNTIMES = ("python", "rust")
"""PostgresML's runtimes: the sidecar serves both with Python's libraries."""


def runtime_notices(runtime: str | None) -> list[str]:
    """What a training asked to run on ``runtime`` should tell the user."""
    if runtime != "rust":
        return []
    return [
        "runtime rust: pgml-sidecar trains and predicts with Python's libraries (scikit-learn,"
        " XGBoost, LightGBM, CatBoost, River), the fastest it has for each algorithm: XGBoost"
        " and LightGBM run the same C++ libraries as PostgresML's rust runtime, and its linfa"
        " algorithms (linear, svm, ...) are served by their scikit-learn equivalents"
    ]


def default_algorithm(task: str) -> str:
    """The algorithm PostgresML trains for ``task`` when none is named."""
    _check_task(task)
    return DEFAULTS[task]


def can_predict(algorithm: str) -> bool:
    """Whether a model of ``algorithm`` can predict rows it was not fitted on."""
    return _ALIASES.get(algorithm, algorithm) not in TRANSDUCTIVE | {"feature_agglomeration"}


# Algorithms that learn by gradient steps, penalties, distances or kernels: on features of very
# different sizes they converge slowly, penalise unevenly or let the largest feature decide, and
# yet standardising is not always better (a penalty sized for the raw features, an intercept
# the model lacks): for these the trainer tries both and keeps the better on the training rows
# (trainer.scale_choice). Trees and boosting need no scaling; PCA's explained variance is that
# of the columns as they are.
_SCALED = frozenset(
    {
        "linear",
        "ridge",
        "lasso",
        "elastic_net",
        "least_angle",
        "lasso_least_angle",
        "orthogonal_matching_pursuit",
        "bayesian_ridge",
        "automatic_relevance_determination",
        "stochastic_gradient_descent",
        "perceptron",
        "passive_aggressive",
        "ransac",
        "theil_sen",
        "huber",
        "quantile",
        "svm",
        "nu_svm",
        "linear_svm",
        "kernel_ridge",
        "gaussian_process",
        "knn",
        "kmeans",
        "mini_batch_kmeans",
        "birch",
        "affinity_propagation",
        "mean_shift",
        "dbscan",
        "optics",
        "spectral",
        "feature_agglomeration",
    }
)


def algorithm_names(task: str | None = None) -> list[str]:
    """Every algorithm name (sorted), or those that support ``task``."""
    online = online_algorithms.ONLINE
    if task is None:
        return sorted([*_ALGORITHMS, *online])
    _check_task(task)
    tables: list[Mapping[str, Collection[str]]] = [_ALGORITHMS, online]
    return sorted(name for table in tables for name, tasks in table.items() if task in tasks)


def supports(algorithm: str, task: str) -> bool:
    """Whether ``algorithm`` (or an alias of it) can be trained for ``task``."""
    return task in (_tasks(_ALIASES.get(algorithm, algorithm)) or ())


def scale_choices(algorithm: str, task: str) -> tuple[str, ...]:
    """The scalings worth trying for ``algorithm`` when preprocess does not say, the preferred
    first: "standard" and "preserve" for the algorithms sensitive to scale, "preserve" for the
    others. For online algorithms "standard" is River's StandardScaler in front of the model:
    the linear ones always have it; for the others, features as they come are preferred, and
    the scaler may still gain (the regression trees fit linear models in their leaves, naive
    Bayes' Gaussians collapse on a feature constant within a class, and a tree's split points
    are drawn from running ranges the scaler reshapes): progressive validation decides, at the
    cost of learning the first rows twice.

    kNN prefers "standard_all": standardised features, one-hot ones too. Its distance weighs
    each feature by its spread, and standardising means every feature counts alike; a 0/1
    dummy left as it is has a spread of at most 0.5 (sqrt(p(1 - p)) for a category in p of
    the rows), so a text column counts for at most a quarter of a number in squared distance,
    and a rare category next to nothing, though a customer's country may be what makes two
    rows alike. (Penalised linear models keep dummies at 0 or 1: there the penalty is what a
    rare category's coefficient must overcome, and standardised it would escape it.) Dummies
    at 0 or 1 and features as they are remain candidates, chosen when they validate better
    by more than the margin."""
    name = _ALIASES.get(algorithm, algorithm)
    if name in ("online_linear", "online_logistic"):
        return ("standard",)
    if is_online(name):
        return ("preserve", "standard")
    if name == "knn":
        return ("standard_all", "standard", "preserve")
    return ("standard", "preserve") if name in _SCALED and task != "decomposition" else (
        "preserve",
    )  # fmt: skip


def scale_validation(algorithm: str) -> tuple[int, int]:
    """How a batch algorithm's scalings are cross-validated: (folds, repeats).

    Three folds, once, for most: each fold model is fitted on two thirds of the training rows
    and the cost multiplies the training's. kNN gets ten folds, twice over with other folds:
    its fit only stores the rows, so folds cost little, and its score depends on how densely
    the rows it holds cover the space. A fold model holding two thirds of them finds its
    neighbours farther away than the final model will, which understates the scaling that
    keeps the close, informative neighbours (a chick's own earlier weighings, a pixel's own
    ink); nine tenths is nearly the final model, and the second round of folds halves the
    noise of a few hundred held-out rows."""
    return (10, 2) if _ALIASES.get(algorithm, algorithm) == "knn" else (3, 1)


def is_online(algorithm: str) -> bool:
    """Whether ``algorithm`` is an online (River) algorithm, learning from each new row."""
    return algorithm in online_algorithms.ONLINE


def hyperparameter_names(algorithm: str, task: str) -> list[str]:
    """The hyperparameters the estimator accepts (sorted)."""
    return sorted(_valid(algorithm, task))


def make_estimator(
    algorithm: str, task: str, hyperparams: Mapping[str, Any] | None = None, *, seed: int = 0
) -> Any:
    """A fresh, unfitted scikit-learn-API estimator for ``algorithm`` on ``task``."""
    if is_online(algorithm):
        _check_names(algorithm, task, _valid(algorithm, task), dict(hyperparams or {}))
        return _online().RiverEstimator(algorithm, task, hyperparams, seed=seed)
    spec = _estimator(algorithm, task)
    given = dict(hyperparams or {})
    _check_names(algorithm, task, _valid_names(spec), given)
    defaults = dict(spec.defaults)
    accepted = _default_names(spec.path)
    if spec.takes_thread_count and "n_jobs" in accepted:
        defaults["n_jobs"] = 1
    if "random_state" in accepted:
        defaults["random_state"] = seed
    params = {
        name: value
        for name, value in defaults.items()
        if not ({name} | spec.aliases.get(name, frozenset())) & given.keys()
    }
    params.update(given)
    if _ALIASES.get(algorithm, algorithm) == "passive_aggressive":
        params = _passive_aggressive(params, given)
    return _estimator_class(spec.path)(**params)


def joint_estimator(estimator: Any, algorithm: str) -> Any:
    """``estimator`` made to predict several labels at once, as PostgresML's train_joint does:
    the algorithms that fit several outputs natively (linear models, trees, forests, knn,
    xgboost, ...) as they are, the others as one copy per label (scikit-learn's
    MultiOutputRegressor)."""
    if is_online(algorithm):
        raise TrainingError(
            f"{algorithm} learns one label; a joint model (several labels) needs a batch algorithm",
            sqlstate="0A000",
        )
    if _multi_output(estimator):
        return estimator
    from sklearn.multioutput import MultiOutputRegressor

    return MultiOutputRegressor(estimator)


def is_wrapped(estimator: Any) -> bool:
    """Whether ``estimator`` is one copy of an algorithm per label (:func:`joint_estimator`)."""
    from sklearn.multioutput import MultiOutputRegressor

    return isinstance(estimator, MultiOutputRegressor)


def _multi_output(estimator: Any) -> bool:
    """Whether scikit-learn's tags say ``estimator`` fits several outputs at once."""
    from sklearn.utils import get_tags

    try:
        return bool(get_tags(estimator).target_tags.multi_output)
    except (AttributeError, TypeError, ValueError):
        return False


def check_search_params(algorithm: str, task: str, search_params: Mapping[str, Any]) -> None:
    """Raise TrainingError unless each key is a hyperparameter and each value a non-empty list."""
    valid = _valid(algorithm, task)
    if not isinstance(search_params, Mapping):
        raise TrainingError(
            'search_params must be a JSON object of hyperparameter lists, e.g. {"alpha": [0.1, 1]}',
            sqlstate="22023",
        )
    _check_names(algorithm, task, valid, search_params)
    for name, values in search_params.items():
        if not isinstance(values, list) or not values:
            raise TrainingError(
                f'search_params "{name}" must be a non-empty list of values to try, '
                f'e.g. {{"{name}": [...]}}; got {values!r}',
                sqlstate="22023",
            )


def _online() -> ModuleType:
    from trainer import online

    return online


def _tasks(name: str) -> Collection[str] | None:
    """The tasks algorithm ``name`` (not an alias) supports, or None for an unknown name."""
    online: Mapping[str, Collection[str]] = online_algorithms.ONLINE
    return _ALGORITHMS.get(name) or online.get(name)


def _valid(algorithm: str, task: str) -> frozenset[str]:
    """The hyperparameter names ``algorithm`` accepts for ``task``; TrainingError if none."""
    if is_online(algorithm):
        _check_algorithm(algorithm, task)
        return frozenset(online_algorithms.hyperparameter_names(algorithm, task))
    return _valid_names(_estimator(algorithm, task))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise TrainingError(
            f'unknown task "{task}": choose one of {", ".join(TASKS)}', sqlstate="22023"
        )


def _estimator(algorithm: str, task: str) -> _Estimator:
    """Look ``algorithm`` up for ``task``, or raise a TrainingError that lists the choices."""
    return _ALGORITHMS[_check_algorithm(algorithm, task)][task]


def _check_algorithm(algorithm: str, task: str) -> str:
    """``algorithm``'s own name if it supports ``task``, else a TrainingError with the choices."""
    _check_task(task)
    name = _ALIASES.get(algorithm, algorithm)
    tasks = _tasks(name)
    if tasks is None:
        raise TrainingError(
            f'unknown algorithm "{algorithm}" for {task}: choose one of '
            f"{', '.join(algorithm_names(task))}",
            sqlstate="22023",
        )
    if task not in tasks:
        raise TrainingError(
            f'algorithm "{algorithm}" does not support {task}; it supports '
            f"{' and '.join(t for t in TASKS if t in tasks)}. Algorithms for {task}: "
            f"{', '.join(algorithm_names(task))}",
            sqlstate="22023",
        )
    return name


def _check_names(
    algorithm: str, task: str, valid: Collection[str], given: Mapping[str, Any]
) -> None:
    unknown = [name for name in given if name not in valid]
    if not unknown:
        return
    name = str(unknown[0])
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise TrainingError(
        f'{algorithm} ({task}) has no hyperparameter "{name}"{hint}; valid hyperparameters: '
        f"{', '.join(sorted(valid))}",
        sqlstate="22023",
    )


def _valid_names(spec: _Estimator) -> frozenset[str]:
    names = _default_names(spec.path) | spec.native_names | spec.defaults.keys()
    if spec.path.startswith("lightgbm."):
        names |= _lightgbm_native_names()
    return frozenset(names)


@functools.cache
def _estimator_class(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@functools.cache
def _default_names(path: str) -> frozenset[str]:
    """The constructor parameters of the estimator class, as get_params() reports them (for
    CatBoost, whose get_params reports only the parameters given: its constructor's)."""
    cls = _estimator_class(path)
    if "catboost" in path:
        return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}
    return frozenset(cls().get_params(deep=False))


@functools.cache
def _lightgbm_native_names() -> frozenset[str]:
    """Every parameter name and alias LightGBM itself accepts."""
    try:
        from lightgbm.basic import _ConfigAliases

        aliases = _ConfigAliases._get_all_param_aliases()
    except (ImportError, AttributeError):  # a LightGBM without the (private) alias table
        return _LIGHTGBM_COMMON_NAMES
    return frozenset(name for names in aliases.values() for name in names) | frozenset(aliases)


def _passive_aggressive(params: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Translate the old PassiveAggressive* hyperparameters to their SGD equivalents."""
    params = dict(params)
    if "C" in params:
        params["eta0"] = params.pop("C")
    squared = {"squared_hinge": "hinge", "squared_epsilon_insensitive": "epsilon_insensitive"}
    if params.get("loss") in squared:
        params["loss"] = squared[params["loss"]]
        if "learning_rate" not in given:
            params["learning_rate"] = "pa2"
    return params
