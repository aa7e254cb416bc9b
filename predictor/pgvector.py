"""pgvector's SQL on the endpoint: its distance operators, functions and ``::vector`` casts.

A mirrored ``vector(n)`` column is a DuckDB ``FLOAT[n]`` array (bit-exact float4), so a query
written for pgvector runs unchanged: ``a <-> b`` (L2), ``a <=> b`` (cosine), ``a <#> b``
(negative inner product) and ``a <+> b`` (L1) become macros of schema ``_pgml_catalog`` over
DuckDB's vectorised list distances (``list_distance``, ``list_cosine_distance``,
``list_negative_inner_product``; L1 a list expression), as do ``l2_distance``,
``cosine_distance``, ``inner_product``, ``l1_distance``, ``vector_dims`` and ``vector_norm``.
Each argument is cast to ``FLOAT[]`` first, so a mirrored column, a ``'[1,2,3]'::vector``
literal and a bound parameter in pgvector's text form (a string) all fit, whatever their
dimension; vectors of different dimensions are an error in pgvector's words (22000).

Distances are float4 arithmetic answered as ``double precision``, as pgvector's are. A result
column of a fixed-size float array (a mirrored vector column, a ``::vector`` literal) is sent
as type ``vector`` and printed as pgvector prints it, ``[1,2,3]``
(:mod:`predictor.pg_types`, :mod:`predictor.column_text`).
"""

from __future__ import annotations

import re

import duckdb
from pglast import ast

from mirror.duckdb_sql import transaction
from mirror.errors import SidecarError

SCHEMA = "_pgml_catalog"
PREFIX = "pgvector_"

OPERATORS = {
    "<->": "l2_distance",
    "<=>": "cosine_distance",
    "<#>": "negative_inner_product",
    "<+>": "l1_distance",
}
"""pgvector's distance operators and the macro each becomes."""

FUNCTIONS = frozenset(
    {"l2_distance", "cosine_distance", "inner_product", "l1_distance", "vector_dims", "vector_norm"}
)
"""pgvector's functions a statement may call, unqualified."""

_DIMENSIONS = (
    "error('[pgml 22000] different vector dimensions ' || len(a::FLOAT[]) || ' and '"
    " || len(b::FLOAT[]))"
)
_MACROS = {
    "l2_distance": "list_distance(a::FLOAT[], b::FLOAT[])::DOUBLE",
    "cosine_distance": "list_cosine_distance(a::FLOAT[], b::FLOAT[])::DOUBLE",
    "negative_inner_product": "list_negative_inner_product(a::FLOAT[], b::FLOAT[])::DOUBLE",
    "inner_product": "list_inner_product(a::FLOAT[], b::FLOAT[])::DOUBLE",
    # no list function for L1: the absolute differences summed, checked first as the others are
    "l1_distance": (
        f"case when len(a::FLOAT[]) <> len(b::FLOAT[]) then {_DIMENSIONS}::DOUBLE"
        " else list_sum(list_transform(list_zip(a::FLOAT[], b::FLOAT[]),"
        " lambda p: abs(p[1] - p[2])))::DOUBLE end"
    ),
}
_ONE_ARGUMENT = {
    "vector_dims": "len(a::FLOAT[])::INTEGER",
    "vector_norm": "sqrt(list_inner_product(a::DOUBLE[], a::DOUBLE[]))",
}


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or refresh) the pgvector macros in schema ``_pgml_catalog``."""
    with transaction(con) as cursor:
        cursor.execute(f"create schema if not exists {SCHEMA}")
        # a NULL vector gives NULL (DuckDB's list distances refuse the NULL array's elements)
        for name, body in _MACROS.items():
            guarded = f"case when a is null or b is null then null else {body} end"
            cursor.execute(f"create or replace macro {SCHEMA}.{PREFIX}{name}(a, b) as {guarded}")
        for name, body in _ONE_ARGUMENT.items():
            guarded = f"case when a is null then null else {body} end"
            cursor.execute(f"create or replace macro {SCHEMA}.{PREFIX}{name}(a) as {guarded}")


def macro_call(name: str, args: tuple[ast.Node, ...]) -> ast.FuncCall:
    """The call of the macro for pgvector's ``name`` (a function, or an operator's)."""
    return ast.FuncCall(
        funcname=(ast.String(SCHEMA), ast.String(PREFIX + name)),
        args=args,
        funcformat=0,  # COERCE_EXPLICIT_CALL
    )


def operator_name(node: ast.A_Expr) -> str | None:
    """The macro a binary ``A_Expr`` with one of pgvector's operators becomes; None for others."""
    names = [n.sval for n in node.name or ()]
    if len(names) != 1 or node.lexpr is None or node.rexpr is None:
        return None
    return OPERATORS.get(names[0] or "")


def is_vector_type(type_name: ast.TypeName | None) -> bool:
    """Whether a cast is to pgvector's ``vector`` (not an array of vectors)."""
    if type_name is None or type_name.arrayBounds:
        return False
    return [n.sval for n in type_name.names or ()][-1:] == ["vector"]


_LITERAL = re.compile(r"\s*\[([^\[\]]*)\]\s*")


def cast(node: ast.TypeCast) -> ast.Node:
    """``x::vector(n)`` as a cast to DuckDB's ``FLOAT[n]``; ``::vector`` of a literal as one to
    ``FLOAT[its length]`` (so it prints as a vector), of anything else to ``FLOAT[]`` (a
    mirrored column stays what it is)."""
    type_name = node.typeName
    assert type_name is not None
    size: int | None = None
    modifiers = type_name.typmods or ()
    if modifiers:
        first = modifiers[0]
        value = getattr(getattr(first, "val", None), "ival", None)
        if not isinstance(value, int) or len(modifiers) != 1 or value < 1:
            raise SidecarError("invalid type modifier for type vector", sqlstate="22023")
        size = value
    arg = node.arg
    if size is None and isinstance(arg, ast.ColumnRef):
        return arg
    if size is None and isinstance(arg, ast.A_Const) and isinstance(arg.val, ast.String):
        found = _LITERAL.fullmatch(arg.val.sval or "")
        if found is not None and found.group(1).strip():
            size = found.group(1).count(",") + 1
    if size is None and isinstance(arg, ast.A_ArrayExpr):
        size = len(arg.elements or ()) or None
    bounds = (ast.Integer(size if size is not None else -1),)
    float_type = ast.TypeName(names=(ast.String("float"),), arrayBounds=bounds)
    return ast.TypeCast(arg=arg, typeName=float_type)


_DIFFERENT = re.compile(
    r"list_(?:distance|cosine_distance|cosine_similarity|negative_inner_product|inner_product"
    r"|dot_product|negative_dot_product): list dimensions must be equal, got left length"
    r" '(\d+)' and right length '(\d+)'"
)
_NOT_A_VECTOR = re.compile(
    r"Type VARCHAR with value '(.*)' can't be cast to the destination type FLOAT\[(\d*)\]"
)


def argument_error(message: str) -> SidecarError | None:
    """pgvector's error for a DuckDB ``message`` about vector arguments; None for others."""
    found = _DIFFERENT.search(message)
    if found is not None:
        left, right = found.groups()
        return SidecarError(f"different vector dimensions {left} and {right}", sqlstate="22000")
    found = _NOT_A_VECTOR.search(message)
    if found is not None:
        text, size = found.groups()
        literal = _LITERAL.fullmatch(text)
        if size and literal is not None:
            count = literal.group(1).count(",") + 1 if literal.group(1).strip() else 0
            return SidecarError(f"expected {size} dimensions, not {count}", sqlstate="22000")
        return SidecarError(f'invalid input syntax for type vector: "{text}"', sqlstate="22P02")
    return None
