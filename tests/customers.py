"""A realistic ``customers`` table to train churn models on, the same every time.

50,000 rows by default: an ``id`` primary key; ``name`` (37,500 distinct values: names repeat,
as they do) and ``email`` (unique), which say nothing about churn; ``age``, ``country``,
``plan``, ``monthly_spend`` (numeric), ``support_tickets``, ``logins_30d``, ``signup_date``,
``referred`` (NULL for a tenth of the rows) and the label ``churned``. Churn depends on the
plan, tickets, logins, spend, the customer's tenure on 2026-01-01 and the country, through a
logistic model with noise: a model can learn it (an F1 near 0.9), and always saying "no
churn" scores about 0.38.

:func:`create_customers` loads it into PostgreSQL with one COPY; :func:`customers_table`
gives the same rows as an Arrow table, for a mirror without a source.
"""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

ROWS = 50_000
DISTINCT_NAMES = 37_500
SEED = 14
TODAY = dt.date(2026, 1, 1)

CREATE = """
create table {table} (
    id bigint primary key,
    name text not null,
    email text not null unique,
    age integer not null,
    country text not null,
    plan text not null,
    monthly_spend numeric(10, 2) not null,
    support_tickets integer not null,
    logins_30d integer not null,
    signup_date date not null,
    referred boolean,
    churned boolean not null
)
"""
COLUMNS = (
    "id", "name", "email", "age", "country", "plan", "monthly_spend", "support_tickets",
    "logins_30d", "signup_date", "referred", "churned",
)  # fmt: skip

_FIRST = (
    "ada", "alan", "alice", "amir", "ana", "anna", "ben", "bruno", "carla", "carlos", "chen",
    "chloe", "clara", "daniel", "david", "diego", "elena", "emma", "eric", "eva", "fatima",
    "felix", "grace", "hana", "hugo", "ines", "ivan", "jack", "james", "jana", "jin", "john",
    "jonas", "julia", "kai", "karin", "kenji", "laura", "leo", "lena", "liam", "lina", "lucas",
    "luis", "maria", "marco", "mei", "mia", "nina", "noah", "olga", "omar", "oscar", "paul",
    "petra", "priya", "rafael", "rosa", "sara", "sofia", "tom", "vera", "yara", "yusuf", "zoe",
)  # fmt: skip
_LAST = (
    "abe", "adams", "alvarez", "bauer", "becker", "brown", "chen", "costa", "cruz", "davis",
    "diaz", "dubois", "evans", "fischer", "garcia", "gomez", "gupta", "hall", "hansen", "ito",
    "jensen", "jones", "kato", "khan", "kim", "klein", "kowalski", "lee", "lopez", "martin",
    "meyer", "miller", "moreau", "muller", "nakamura", "nguyen", "novak", "olsen", "park",
    "patel", "perez", "petrov", "reyes", "rossi", "sato", "schmidt", "silva", "singh", "smith",
    "suzuki", "taylor", "tanaka", "torres", "wagner", "walker", "wang", "weber", "wilson",
    "wong", "yamada", "young", "zhang",
)  # fmt: skip
_COUNTRIES = ("US", "DE", "FR", "GB", "ES", "IT", "NL", "BR", "IN", "JP", "CA", "MX")
_COUNTRY_SHARE = (0.30, 0.12, 0.10, 0.10, 0.06, 0.06, 0.04, 0.06, 0.06, 0.04, 0.04, 0.02)
_PLANS = ("free", "basic", "pro", "enterprise")
_PLAN_SHARE = (0.35, 0.30, 0.25, 0.10)


def customer_columns(rows: int = ROWS, *, seed: int = SEED) -> dict[str, np.ndarray]:
    """The table's columns as numpy arrays (``referred`` as 1.0, 0.0 or NaN for NULL)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, rows + 1, dtype=np.int64)
    distinct = min(DISTINCT_NAMES * rows // ROWS, rows) or 1
    # First name, middle initial, last name: 65 x 26 x 62 = 104,780 names to pick from.
    picked = rng.permutation(len(_FIRST) * 26 * len(_LAST))[:distinct]
    first = np.array(_FIRST)[picked // (26 * len(_LAST))]
    initial = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))[picked // len(_LAST) % 26]
    last = np.array(_LAST)[picked % len(_LAST)]
    unique_names = np.char.add(np.char.add(np.char.capitalize(first), " "), initial)
    unique_names = np.char.add(np.char.add(unique_names, ". "), np.char.capitalize(last))
    which = np.concatenate([np.arange(distinct), rng.integers(0, distinct, rows - distinct)])
    which = which[rng.permutation(rows)]
    name = unique_names[which]
    email = np.char.add(np.char.add(np.char.add(first[which], "."), last[which]),
                        np.char.add(ids.astype(str), "@example.com"))  # fmt: skip

    age = rng.integers(18, 80, rows)
    country = rng.choice(len(_COUNTRIES), rows, p=_COUNTRY_SHARE)
    plan = rng.choice(len(_PLANS), rows, p=_PLAN_SHARE)
    spend = np.round(np.array([0, 19, 49, 199])[plan] + rng.gamma(2.0, 12.0, rows), 2)
    tickets = rng.poisson(1.5 + 1.5 * (plan == 0), rows)
    logins = rng.poisson(np.clip(4 + 0.25 * (age - 18) * (plan != 0) + 6 * (plan >= 2), 1, None))
    tenure = rng.integers(0, 365 * 10, rows)
    signup = np.datetime64(TODAY) - tenure.astype("timedelta64[D]")
    referred = np.where(rng.random(rows) < 0.1, np.nan, (rng.random(rows) < 0.3).astype(float))

    logit = (
        -0.7
        + np.array([1.6, 0.5, -0.4, -1.6])[plan]
        + 0.75 * (tickets - 2)
        - 0.22 * (logins - 8)
        - 0.012 * (spend - 60)
        + 1.5 * (tenure < 365)
        - 0.25 * np.minimum(tenure / 365, 6)
        + np.isin(country, (2, 7)) * 0.8
        - 0.6 * np.nan_to_num(referred)
    )
    churned = logit + rng.logistic(0.0, 0.6, rows) > 0
    return {
        "id": ids,
        "name": name,
        "email": email,
        "age": age,
        "country": np.array(_COUNTRIES)[country],
        "plan": np.array(_PLANS)[plan],
        "monthly_spend": spend,
        "support_tickets": tickets,
        "logins_30d": logins,
        "signup_date": signup,
        "referred": referred,
        "churned": churned,
    }


def customers_table(rows: int = ROWS, *, seed: int = SEED) -> pa.Table:
    """The rows as an Arrow table with the PostgreSQL table's types."""
    c = customer_columns(rows, seed=seed)
    referred = c["referred"]
    return pa.table(
        {
            "id": pa.array(c["id"], pa.int64()),
            "name": pa.array(c["name"].tolist(), pa.string()),
            "email": pa.array(c["email"].tolist(), pa.string()),
            "age": pa.array(c["age"], pa.int32()),
            "country": pa.array(c["country"].tolist(), pa.string()),
            "plan": pa.array(c["plan"].tolist(), pa.string()),
            "monthly_spend": pa.array(c["monthly_spend"], pa.float64()).cast(pa.decimal128(10, 2)),
            "support_tickets": pa.array(c["support_tickets"], pa.int32()),
            "logins_30d": pa.array(c["logins_30d"], pa.int32()),
            "signup_date": pa.array(c["signup_date"].astype("datetime64[D]"), pa.date32()),
            "referred": pa.array(referred == 1.0, pa.bool_(), mask=np.isnan(referred)),
            "churned": pa.array(c["churned"], pa.bool_()),
        }
    )


def create_customers(
    conn: psycopg.Connection, table: str = "customers", rows: int = ROWS, *, seed: int = SEED
) -> None:
    """Create ``table`` in the connection's database and fill it with one COPY."""
    c = customer_columns(rows, seed=seed)
    referred = np.where(np.isnan(c["referred"]), "\\N",
                        np.where(c["referred"] == 1.0, "t", "f"))  # fmt: skip
    fields = [
        c["id"].astype(str),
        c["name"],
        c["email"],
        c["age"].astype(str),
        c["country"],
        c["plan"],
        np.char.mod("%.2f", c["monthly_spend"]),
        c["support_tickets"].astype(str),
        c["logins_30d"].astype(str),
        c["signup_date"].astype("datetime64[D]").astype(str),
        referred,
        np.where(c["churned"], "t", "f"),
    ]
    text = io.StringIO()
    text.writelines(
        "\t".join(row) + "\n" for row in zip(*(f.tolist() for f in fields), strict=True)
    )
    ident = sql.Identifier(*table.split("."))
    with conn.transaction():
        conn.execute(sql.SQL(CREATE).format(table=ident))
        copy = sql.SQL("copy {} from stdin").format(ident)
        with conn.cursor().copy(copy) as out:
            out.write(text.getvalue())
