"""The contract of the utilization query's result as a whole.

Every contract column is there and no column comes back as the wrong kind of value (integer
ids, text booleans, numeric timestamps). A broken contract always blocks the month.

The kinds are read without asking the driver to decode any value (a year-10000 timestamp or
invalid UTF-8 would fail the read, not the row): typed engines (PostgreSQL, MySQL/MariaDB)
declare each column's type in the result; SQLite, which types each value, is asked
``typeof()`` of a sample of rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.source.utilization import (
    CONTRACT_COLUMNS,
    ID_COLUMNS,
    TIMESTAMP_COLUMNS,
    SourceQuery,
    month_parameters,
)

CONTRACT_SAMPLE_ROWS = 1_000


@dataclass(frozen=True)
class ContractViolation:
    column: str
    problem: str

    def __str__(self) -> str:
        return f"{self.column}: {self.problem}"


_TEXT_OK = {"string", "empty", "mixed", "unicode"}


_TS_OK = {"datetime", "datetime64", "string", "empty", "mixed", "date", "unicode"}


_BOOL_OK = {"boolean", "empty", "mixed", "integer", "mixed-integer-float", "floating"}


def check_contract(
    columns: Iterable[str], sample: pd.DataFrame, dialect_name: str = "sqlite"
) -> list[ContractViolation]:
    """What makes the query result unusable as a whole; empty when the contract holds.

    On SQLite timestamps are text (SQLite has no timestamp type); elsewhere they must be real
    timestamps, since the database compares them when it counts.
    """
    present = set(columns)
    violations = [
        ContractViolation(c, "missing from the query result — UTILIZATION_SQL must return it")
        for c in CONTRACT_COLUMNS
        if c not in present
    ]
    if violations or sample.empty:
        return violations
    for column in ID_COLUMNS:
        kind = pd.api.types.infer_dtype(sample[column], skipna=True)
        if kind not in _TEXT_OK:
            violations.append(
                ContractViolation(column, f"comes back as {kind}, not text — cast it to text in UTILIZATION_SQL")
            )
    timestamp_kinds = _TS_OK if dialect_name == "sqlite" else {"datetime", "datetime64", "empty", "date"}
    for column in TIMESTAMP_COLUMNS:
        kind = pd.api.types.infer_dtype(sample[column], skipna=True)
        if kind not in timestamp_kinds:
            violations.append(
                ContractViolation(
                    column,
                    f"comes back as {kind}, not a timestamp — return timestamp with time zone "
                    "(ISO-8601 text on SQLite)",
                )
            )
    kind = pd.api.types.infer_dtype(sample["billable"], skipna=True)
    values = set(sample["billable"].dropna().unique().tolist())
    if kind not in _BOOL_OK or (kind in {"integer", "floating"} and not values <= {0, 1}):
        violations.append(
            ContractViolation("billable", f"comes back as {kind}, not boolean — return true/false (1/0 on SQLite)")
        )
    return violations


# One value standing for each kind of column a driver declares (PostgreSQL OIDs, MySQL field types).
_TEXT, _TIMESTAMP, _DATE, _BOOLEAN, _INTEGER, _FLOAT = (
    "text",
    pd.Timestamp("2026-01-01", tz="UTC"),
    date(2026, 1, 1),
    True,
    1,
    1.5,
)
_POSTGRESQL_TYPES = {
    25: _TEXT,
    1043: _TEXT,
    1042: _TEXT,
    19: _TEXT,
    1184: _TIMESTAMP,
    1114: _TIMESTAMP,
    1082: _DATE,
    16: _BOOLEAN,
    20: _INTEGER,
    21: _INTEGER,
    23: _INTEGER,
    700: _FLOAT,
    701: _FLOAT,
    1700: _FLOAT,
}
_MYSQL_TYPES = {
    15: _TEXT,
    253: _TEXT,
    254: _TEXT,
    249: _TEXT,
    250: _TEXT,
    251: _TEXT,
    252: _TEXT,
    12: _TIMESTAMP,
    7: _TIMESTAMP,
    10: _DATE,
    16: _BOOLEAN,
    1: _INTEGER,
    2: _INTEGER,
    3: _INTEGER,
    8: _INTEGER,
    9: _INTEGER,
    4: _FLOAT,
    5: _FLOAT,
    0: _FLOAT,
    246: _FLOAT,
}
_SQLITE_TYPES = {"text": _TEXT, "integer": _INTEGER, "real": _FLOAT, "blob": b"", "null": None}


def contract_sample(conn: sa.Connection, query: SourceQuery, month: BillingMonth) -> tuple[list[str], pd.DataFrame]:
    """The result's columns and a frame showing each column's kind (what ``check_contract``
    reads), built without decoding any row's values."""
    params = month_parameters(month, conn.dialect.name)
    wrapped = f"SELECT * FROM (\n{query.sql}\n) AS utilization"
    result = conn.execute(sa.text(f"{wrapped} LIMIT 0"), params)
    columns = list(result.keys())
    description = result.context.cursor.description or ()
    result.close()
    present = [c for c in CONTRACT_COLUMNS if c in columns]
    if conn.dialect.name != "sqlite":
        types = _POSTGRESQL_TYPES if conn.dialect.name.startswith("postgres") else _MYSQL_TYPES
        kinds = {d[0]: types.get(d[1], b"") for d in description}  # unknown: not text
        return columns, pd.DataFrame([{c: kinds[c] for c in present}], columns=present)
    if not present:
        return columns, pd.DataFrame()
    selected = ", ".join(f"typeof({c}) AS {c}" for c in present)
    value = ", CASE WHEN typeof(billable) IN ('integer', 'real') THEN billable END AS billable_value"
    value = value if "billable" in present else ""
    rows = (
        conn.execute(
            sa.text(f"SELECT {selected}{value} FROM (\n{query.sql}\n) AS utilization LIMIT {CONTRACT_SAMPLE_ROWS}"),
            params,
        )
        .mappings()
        .all()
    )
    records = []
    for row in rows:
        record = {c: _SQLITE_TYPES.get(row[c]) for c in present}
        if "billable" in present and row["billable_value"] is not None:
            record["billable"] = row["billable_value"]
        records.append(record)
    sample = pd.DataFrame.from_records(records, columns=present, coerce_float=False)
    # SQLite types each value: a column whose sampled values include the contract's kind keeps
    # the contract, and its stray values are their rows' business (quarantined with a reason).
    for column in present:
        fits = sample[column].map(lambda v, c=column: _sqlite_fits(c, v))
        if fits.any():
            sample[column] = sample[column].where(fits | sample[column].isna(), None)
    return columns, sample


def _sqlite_fits(column: str, value: object) -> bool:
    if column == "billable":
        return isinstance(value, int) and value in (0, 1)
    return isinstance(value, str)


def check_source_contract(
    conn: sa.Connection, query: SourceQuery, month: BillingMonth
) -> tuple[list[str], pd.DataFrame, list[ContractViolation]]:
    """Columns, kind sample and contract violations of the month's utilization query."""
    columns, sample = contract_sample(conn, query, month)
    violations = check_contract(columns, sample, conn.dialect.name)
    if conn.dialect.name.startswith("postgres") and "billable" in sample and not violations:
        if not all(isinstance(v, bool) for v in sample["billable"]):
            violations.append(ContractViolation("billable", "comes back as a number, not boolean — return true/false"))
    return columns, sample, violations
