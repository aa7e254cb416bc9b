"""DuckDB's errors said in PostgreSQL's words, with PostgreSQL's SQLSTATEs.

A client of the endpoint speaks to PostgreSQL: ``relation "x" does not exist`` (42P01), not
``Table with name x does not exist! Did you mean "public.y"?``. :func:`pg_error` rewrites the
errors DuckDB raises most often into PostgreSQL's message and code; any other keeps its first
line. Either way what DuckDB says of its insides is removed: the catalog names of workspaces
and of the endpoint's catalog views, file paths, DuckDB's suggestions and its ``LINE 1:``
excerpts (they quote the translated SQL, not the client's).

>>> pg_error('Catalog Error: Table with name custmers does not exist!\\nDid you mean "x"?')
('relation "custmers" does not exist', '42P01', None)
>>> pg_error("Binder Error: No function matches the given name and argument types"
...          " 'lower(INTEGER_LITERAL)'. You might need to add explicit type casts.")[:2]
('function lower(integer) does not exist', '42883')
"""

from __future__ import annotations

import re

FUNCTION_HINT = (
    "No function matches the given name and argument types. You might need to add explicit"
    " type casts."
)
OPERATOR_HINT = (
    "No operator matches the given name and argument types. You might need to add explicit"
    " type casts."
)

_PREFIX = re.compile(r"^[A-Z][A-Za-z ]* Error: ")
_TYPES = {
    "INTEGER_LITERAL": "integer", "STRING_LITERAL": "unknown", "VARCHAR": "text",
    "INTEGER": "integer", "INT32": "integer", "BIGINT": "bigint", "INT64": "bigint",
    "SMALLINT": "smallint", "INT16": "smallint", "TINYINT": "smallint", "INT8": "smallint",
    "HUGEINT": "numeric", "INT128": "numeric", "DOUBLE": "double precision",
    "FLOAT": "real", "BOOLEAN": "boolean", "BOOL": "boolean", "DATE": "date",
    "TIMESTAMP": "timestamp without time zone", "TIMESTAMP WITH TIME ZONE":
    "timestamp with time zone", "INTERVAL": "interval", "BLOB": "bytea", "UUID": "uuid",
    "JSON": "json", "TIME": "time without time zone", "NULL": "unknown",
}  # fmt: skip
_OPERATOR = re.compile(r"^[^\w\s]+$")

_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"(?:Table|View) with name (.+?) does not exist!"),
     'relation "{0}" does not exist', "42P01"),
    (re.compile(r'Referenced column "(.+?)" not found in FROM clause!'),
     'column "{0}" does not exist', "42703"),
    (re.compile(r'Table "(.+?)" does not have a column named "(.+?)"'),
     "column {0}.{1} does not exist", "42703"),
    (re.compile(r'Referenced table "(.+?)" not found!'),
     'missing FROM-clause entry for table "{0}"', "42P01"),
    (re.compile(r'Ambiguous reference to column name "(.+?)"'),
     'column reference "{0}" is ambiguous', "42702"),
    (re.compile(r'column "(.+?)" must appear in the GROUP BY clause'),
     'column "{0}" must appear in the GROUP BY clause or be used in an aggregate function',
     "42803"),
    (re.compile(r"(?:Scalar|Aggregate|Table) Function with name (.+?) does not exist!"),
     "function {0} does not exist", "42883"),
    (re.compile(r"Could not convert string '(.*?)' to (\w+)"),
     'invalid input syntax for type {1}: "{0}"', "22P02"),
    (re.compile(r"Overflow in \w+ of (INT\d+|BIGINT|INTEGER|SMALLINT)"),
     "{0} out of range", "22003"),
    (re.compile(r"Division by zero"), "division by zero", "22012"),
]  # fmt: skip
_FUNCTION_TYPES = re.compile(
    r"(?:No function matches the given name and argument types|Could not choose a best candidate"
    r" function for the function call) [\"'](.+?)\((.*?)\)[\"']"
)


def pg_type(duckdb_type: str) -> str:
    """PostgreSQL's name for a DuckDB type (``INTEGER[]`` is ``integer[]``)."""
    base = duckdb_type.strip()
    suffix = ""
    while base.endswith("[]"):
        base, suffix = base[:-2], suffix + "[]"
    if base.startswith("DECIMAL"):
        return "numeric" + suffix
    return _TYPES.get(base.upper(), base.lower()) + suffix


def pg_error(text: str) -> tuple[str, str, str | None] | None:
    """PostgreSQL's message, SQLSTATE and hint for a DuckDB error message, or None when it is
    not one of those rewritten (its first line, scrubbed, is then the message)."""
    message = _PREFIX.sub("", text.strip())
    found = _FUNCTION_TYPES.search(message)
    if found is not None:
        name, types = found.group(1), _split_types(found.group(2))
        shown = [pg_type(t) for t in types]
        if _OPERATOR.match(name) and len(shown) in (1, 2):
            spelled = f"{shown[0]} {name} {shown[1]}" if len(shown) == 2 else f"{name} {shown[0]}"
            return f"operator does not exist: {spelled}", "42883", OPERATOR_HINT
        return f"function {name}({', '.join(shown)}) does not exist", "42883", FUNCTION_HINT
    for pattern, wording, sqlstate in _RULES:
        found = pattern.search(message)
        if found is not None:
            groups = [scrub(g) for g in found.groups()]
            if sqlstate in ("22P02", "22003"):
                groups = [pg_type(g) if g.isupper() else g for g in groups]
            return wording.format(*groups), sqlstate, None
    return None


def first_line(text: str) -> str:
    """A DuckDB message without its kind, its suggestions and its excerpt of the SQL, scrubbed."""
    message = _PREFIX.sub("", text.strip())
    return scrub(message.split("\n", 1)[0].strip())


_WORKSPACE = re.compile(r'"?pgml_workspace_[0-9a-f]+"?\.')
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.\-]+){2,}[/\\]?")
_THREE_PART = re.compile(r'\b("?[A-Za-z_][\w$]*"?)\.("?[A-Za-z_][\w$]*"?\."?[A-Za-z_][\w$]*"?)')


def scrub(text: str) -> str:
    """``text`` without DuckDB's catalog names (a workspace's, the mirror's, the endpoint's
    catalog views') and file paths."""
    text = _WORKSPACE.sub("", text)
    text = text.replace("_pgml_catalog.", "pg_catalog.").replace("_pgml_catalog", "pg_catalog")
    text = _THREE_PART.sub(r"\2", text)
    return _PATH.sub("<file>", text)


def _split_types(text: str) -> list[str]:
    """``INTEGER, DECIMAL(10,2), VARCHAR`` as its types (a comma inside parentheses stays)."""
    types, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            types.append(current.strip())
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    if current.strip():
        types.append(current.strip())
    return types
