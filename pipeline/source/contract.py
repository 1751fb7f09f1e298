"""The contract of the utilization query's result as a whole.

Every contract column is there and no column comes back as the wrong kind of value (integer
ids, text booleans, numeric timestamps). A broken contract always blocks the month.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from pipeline.source.utilization import CONTRACT_COLUMNS, ID_COLUMNS, TIMESTAMP_COLUMNS


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
                ContractViolation(
                    column, f"comes back as {kind}, not text — cast it to text in UTILIZATION_SQL"
                )
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
            ContractViolation(
                "billable", f"comes back as {kind}, not boolean — return true/false (1/0 on SQLite)"
            )
        )
    return violations
