"""What the sidecar runs, as PostgresML's environment functions tell it.

``pgml.python_version()`` is the sidecar's ``sys.version``; ``pgml.python_package_version(name)``
the version of a package installed beside it; ``pgml.validate_python_dependencies()`` is true
once the packages PostgresML checks for (numpy, scikit-learn, xgboost, lightgbm) import, and an
error naming the first that does not; ``pgml.validate_shared_library()`` says that nothing is
loaded into PostgreSQL: the sidecar serves the models from its own process.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

import duckdb
import pyarrow as pa
from duckdb import func

from mirror.errors import SidecarError

NAMES = (
    "python_version",
    "python_package_version",
    "validate_python_dependencies",
    "validate_shared_library",
)
CONSTANT_NAMES = ("python_version", "validate_python_dependencies", "validate_shared_library")
"""The functions without arguments, answered when the statement is translated."""

DEPENDENCIES = {"numpy": "numpy", "sklearn": "scikit-learn", "xgboost": "xgboost",
                "lightgbm": "lightgbm"}  # fmt: skip
"""The modules PostgresML's ``validate_python_dependencies`` imports, with their packages."""


def python_version() -> str:
    return sys.version


def validate_python_dependencies() -> bool:
    """True if every module PostgresML needs imports here; else the error naming one."""
    for module, package in DEPENDENCIES.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SidecarError(
                f"the {package} package is missing from pgml-sidecar's Python: {exc}",
                sqlstate="58P01",
            ) from None
    return True


def validate_shared_library() -> str:
    return (
        "pgml-sidecar loads no shared library into PostgreSQL: models are trained and served by"
        f" the sidecar's own process (Python {sys.version.split()[0]}, scikit-learn"
        f" {package_version('scikit-learn')}, xgboost {package_version('xgboost')}, lightgbm"
        f" {package_version('lightgbm')})"
    )


def package_version(name: str) -> str:
    """The version of the distribution ``name``, or of the module of that name if it is one of
    :data:`DEPENDENCIES` or already imported (xgboost comes as the distribution xgboost-cpu);
    no other module is imported at a client's word."""
    try:
        return version(name)
    except PackageNotFoundError:
        pass
    if name in DEPENDENCIES or name in sys.modules:
        with contextlib.suppress(ImportError):
            found = getattr(importlib.import_module(name), "__version__", None)
            if isinstance(found, str):
                return found
    raise SidecarError(f'package "{name}" is not installed beside pgml-sidecar', sqlstate="42704")


def constant(name: str) -> str | bool:
    """The answer of the function ``pgml.<name>()`` of :data:`CONSTANT_NAMES`."""
    if name == "validate_python_dependencies":
        return validate_python_dependencies()
    if name == "validate_shared_library":
        return validate_shared_library()
    assert name == "python_version"
    return python_version()


def _package_versions(names: pa.Array) -> pa.Array:
    try:
        return pa.array([None if n is None else package_version(n) for n in names.to_pylist()])
    except SidecarError as exc:
        raise ValueError(f"[pgml {exc.sqlstate}] {exc}") from None


def register(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``pgml_python_package_version`` on the mirror's connection."""
    text = duckdb.sqltypes.VARCHAR
    with contextlib.suppress(duckdb.InvalidInputException):
        con.remove_function("pgml_python_package_version")
    con.create_function(
        "pgml_python_package_version", _package_versions, [text], text, type=func.ARROW,
        null_handling=func.SPECIAL,
    )  # fmt: skip
