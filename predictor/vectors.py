"""PostgresML's vector functions as DuckDB macros: element-wise arithmetic, norms, distances.

``pgml.add``, ``subtract``, ``multiply``, ``divide`` (a vector with a vector or a scalar),
``norm_l0/l1/l2/max``, ``normalize_l1/l2/max``, ``distance_l1/l2``, ``dot_product``,
``cosine_similarity`` and the element-wise aggregates ``pgml.sum``, ``min``, ``max``,
``max_abs``, ``min_abs`` take ``real[]`` or ``float8[]`` and answer in the same type, as
PostgresML's do. Each is a typed DuckDB macro (one overload per element type) over list
functions, so DuckDB computes it a vector of rows at a time; the statement translator sends
``pgml.<name>`` to ``_pgml_catalog.pgml_<name>``.

As PostgresML's functions are ``strict``, a NULL argument gives NULL; the aggregates skip NULL
rows and give NULL for none. Arrays holding a NULL, and two vectors (or two rows of an
aggregate) of different lengths, are errors, with pgvector's messages and SQLSTATEs (PostgresML
itself would truncate to the shorter vector or fail without a message). Sums are accumulated in
double precision and rounded to the argument's type once.

DuckDB picks a typed macro's overload before it binds an aggregate in its arguments, so each
one-row ``pgml_<name>`` is untyped: it binds its arguments once as a lambda's parameters (whose
types are known by then) and calls the typed overloads, ``pgml_<name>_typed``, with them. So
``pgml.divide(pgml.sum(v), count(v))`` answers ``real[]`` for ``real[]`` rows, as in PostgreSQL.
"""

from __future__ import annotations

import re

import duckdb

from mirror.duckdb_sql import transaction
from mirror.errors import SidecarError

SCHEMA = "_pgml_catalog"
PREFIX = "pgml_"

ELEMENT_TYPES = ("FLOAT", "DOUBLE")
"""DuckDB's ``real`` and ``float8``; other numeric arrays are cast to the first that fits."""

_NULLS = "error('[pgml 22004] array must not contain nulls')"


def _dimensions(left: str, right: str) -> str:
    return f"error('[pgml 22000] different vector dimensions ' || {left} || ' and ' || {right})"


def _bound(body: str, *, vectors: tuple[str, ...], scalars: tuple[str, ...] = ()) -> str:
    """``body`` (over ``{a}``, ``{b}``, ``{s}``) with PostgresML's strictness and pgvector's
    checks around it, each argument evaluated once.

    A macro's parameters are replaced by the argument expressions wherever they appear, and
    DuckDB evaluates an expression captured in a lambda again for every element: so the
    arguments are bound once as the parameter ``q`` of an outer lambda, and inner lambdas see
    only their own parameters."""
    names = vectors + scalars
    if len(names) == 1:
        bound, refs = f"[{names[0]}]", {names[0]: "q"}
    else:
        bound = f"list_zip({', '.join(f'[{n}]' for n in names)})"
        refs = {n: f"q[{i}]" for i, n in enumerate(names, 1)}
    nulls = " or ".join(f"{refs[n]} is null" for n in names)
    holes = " or ".join(f"list_count({refs[v]}) < len({refs[v]})" for v in vectors)
    arms = [f"when {nulls} then null", f"when {holes} then {_NULLS}"]
    if len(vectors) == 2:
        left, right = (f"len({refs[v]})" for v in vectors)
        arms.append(f"when {left} <> {right} then {_dimensions(left, right)}")
    checked = f"case {' '.join(arms)} else {body.format(**refs)} end"
    return f"list_transform({bound}, lambda q: {checked})[1]"


def _pairs(a: str, b: str, body: str, t: str) -> str:
    """``body`` (over ``{x}`` and ``{y}``) for each pair of elements of ``a`` and ``b``, as
    ``t``."""
    pair = body.format(x="p[1]", y="p[2]")
    return f"list_transform(list_zip({a}, {b}), lambda p: ({pair})::{t})"


def _broadcast(a: str, scalar: str) -> str:
    """``scalar`` repeated as many times as ``a`` has elements."""
    return f"list_resize([{scalar}], len({a}), {scalar})"


def _total(a: str, body: str) -> str:
    """The sum of ``body`` (over ``x``) for each element of ``a``, in double precision."""
    return f"coalesce(list_sum(list_transform({a}, lambda x: {body})), 0)"


def _pair_total(a: str, b: str, body: str) -> str:
    pair = body.format(x="p[1]::double", y="p[2]::double")
    return f"coalesce(list_sum(list_transform(list_zip({a}, {b}), lambda p: {pair})), 0)"


_NORMS = {
    "l0": lambda a: f"len(list_filter({a}, lambda x: x <> 0))",
    "l1": lambda a: _total(a, "abs(x::double)"),
    "l2": lambda a: f"sqrt({_total(a, 'x::double * x::double')})",
    "max": lambda a: f"coalesce(list_max(list_transform({a}, lambda x: abs(x::double))), 0)",
}

_OPERATORS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}


def _scalar_macros(t: str) -> dict[str, list[tuple[str, str]]]:
    """Overloads (parameters, body) per function name, for element type ``t``."""
    vector = f"{t}[]"
    macros: dict[str, list[tuple[str, str]]] = {}
    for name, op in _OPERATORS.items():
        with_scalar = _pairs("{a}", _broadcast("{a}", f"{{s}}::{t}"), f"{{x}} {op} {{y}}", t)
        with_vector = _pairs("{a}", "{b}", f"{{x}} {op} {{y}}", t)
        macros[name] = [
            (f"a {vector}, s {t}", _bound(with_scalar, vectors=("a",), scalars=("s",))),
            (f"a {vector}, b {vector}", _bound(with_vector, vectors=("a", "b"))),
        ]
    for norm, of in _NORMS.items():
        size = f"({of('{a}')})::{t}"
        macros[f"norm_{norm}"] = [(f"a {vector}", _bound(size, vectors=("a",)))]
        if norm != "l0":
            scaled = _pairs("{a}", _broadcast("{a}", size), "{x} / {y}", t)
            macros[f"normalize_{norm}"] = [(f"a {vector}", _bound(scaled, vectors=("a",)))]
    dot = _pair_total("{a}", "{b}", "{x} * {y}")
    lengths = (
        f"(sqrt({_pair_total('{a}', '{a}', '{x} * {y}')})"
        f" * sqrt({_pair_total('{b}', '{b}', '{x} * {y}')}))"
    )
    for name, expression in (
        ("distance_l1", _pair_total("{a}", "{b}", "abs({x} - {y})")),
        ("distance_l2", f"sqrt({_pair_total('{a}', '{b}', '({x} - {y}) * ({x} - {y})')})"),
        ("dot_product", dot),
        ("cosine_similarity", f"{dot} / {lengths}"),
    ):
        body = f"({expression})::{t}"
        macros[name] = [(f"a {vector}, b {vector}", _bound(body, vectors=("a", "b")))]
    return macros


_AGGREGATES = {
    "sum": "list_sum(list_transform(q, lambda r: r[i]::double))",
    "min": "list_min(list_transform(q, lambda r: r[i]))",
    "max": "list_max(list_transform(q, lambda r: r[i]))",
    "max_abs": "list_max(list_transform(q, lambda r: abs(r[i])))",
    "min_abs": "list_min(list_transform(q, lambda r: abs(r[i])))",
}


def _aggregate_macro(element: str, t: str) -> str:
    """An element-wise aggregate over the rows' arrays ``v``: one list ``q`` of every row's
    array, then, for each position ``i``, ``element`` over that position of every row."""
    lengths = "list_transform(q, lambda r: len(r))"
    low, high = f"list_min({lengths})", f"list_max({lengths})"
    checked = (
        f"case when q is null or {high} is null then null"
        f" when {low} <> {high} then {_dimensions(low, high)}"
        f" when list_sum(list_transform(q, lambda r: len(r) - list_count(r))) > 0 then {_NULLS}"
        f" else list_transform(range(1, {high} + 1), lambda i: ({element})::{t}) end"
    )
    return f"list_transform([list(v)], lambda q: {checked})[1]"


def _definitions() -> dict[str, list[tuple[str, str]]]:
    macros: dict[str, list[tuple[str, str]]] = {}
    for t in ELEMENT_TYPES:
        for name, overloads in _scalar_macros(t).items():
            macros.setdefault(name, []).extend(overloads)
        for name, element in _AGGREGATES.items():
            macros.setdefault(name, []).append((f"v {t}[]", _aggregate_macro(element, t)))
    return macros


SCALAR_FUNCTIONS = frozenset(_scalar_macros("FLOAT"))
"""``pgml.*`` vector functions of one row."""
AGGREGATES = frozenset(_AGGREGATES)
"""``pgml.*`` element-wise aggregates."""
FUNCTIONS = SCALAR_FUNCTIONS | AGGREGATES


TYPED = "_typed"
"""The suffix of the typed overloads' macro, which ``pgml_<name>`` calls."""


def _dispatch(name: str, arity: int) -> str:
    """``pgml_<name>``'s body for ``arity`` arguments: each argument bound as a lambda's
    parameter, whose type DuckDB knows when it picks the typed overload (an aggregate in an
    argument included)."""
    typed = f"{SCHEMA}.{PREFIX}{name}{TYPED}"
    if arity == 1:
        return f"list_transform([a], lambda q: {typed}(q))[1]"
    return f"list_transform(list_zip([a], [b]), lambda q: {typed}(q[1], q[2]))[1]"


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or refresh) the vector macros in schema ``_pgml_catalog``."""
    with transaction(con) as cursor:
        cursor.execute(f"create schema if not exists {SCHEMA}")
        for name, overloads in _definitions().items():
            bodies = ", ".join(f"({parameters}) as {body}" for parameters, body in overloads)
            if name in AGGREGATES:  # its argument is a row's value, of a known type
                cursor.execute(f"create or replace macro {SCHEMA}.{PREFIX}{name}{bodies}")
                continue
            cursor.execute(f"create or replace macro {SCHEMA}.{PREFIX}{name}{TYPED}{bodies}")
            arities = sorted({parameters.count(",") + 1 for parameters, _ in overloads})
            untyped = ", ".join(
                f"({'a' if n == 1 else 'a, b'}) as {_dispatch(name, n)}" for n in arities
            )
            cursor.execute(f"create or replace macro {SCHEMA}.{PREFIX}{name}{untyped}")


def duckdb_name(name: str) -> tuple[str, str]:
    """The schema and name of the macro for ``pgml.<name>``."""
    return SCHEMA, PREFIX + name


_NO_OVERLOAD = re.compile(
    r"Macro pgml_(\w+?)(?:_typed)?\(\) (?:does not support the supplied arguments|has multiple"
    r" overloads)"
)


def argument_error(message: str) -> SidecarError | None:
    """The error for a vector function called with arguments of other types (DuckDB's
    ``message`` says no overload of the macro fits), as PostgreSQL words it; None otherwise."""
    found = _NO_OVERLOAD.search(message)
    if found is None or found.group(1) not in FUNCTIONS:
        return None
    name = found.group(1)
    return SidecarError(
        f"function pgml.{name} does not exist for these argument types: it takes real[] or"
        " double precision[] arrays (with a number or an array of the same type for"
        " add, subtract, multiply and divide)",
        sqlstate="42883",
    )
