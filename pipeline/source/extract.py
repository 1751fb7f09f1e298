"""Extracting a month: the contract query's columns checked against the contract (and its row count)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.source.contract import ContractViolation, check_source_contract
from pipeline.source.utilization import SourceQuery, month_parameters


@dataclass(frozen=True)
class MonthExtract:
    """What the source returned for a month, before row-level validation."""

    month: BillingMonth
    query: SourceQuery
    columns: list[str]
    rows: int | None  # None when not counted (the month pass counts them: rows_in)
    contract_violations: list[ContractViolation]
    sample: pd.DataFrame

    @property
    def contract_holds(self) -> bool:
        return not self.contract_violations


def extract_month(
    conn: sa.Connection, query: SourceQuery, month: BillingMonth, *, count_rows: bool = True
) -> MonthExtract:
    """Check the query result's contract (column kinds) and, with ``count_rows``, count the
    month's rows (one more scan of the source: the month-end assets leave it to the pass)."""
    params = month_parameters(month, conn.dialect.name)
    columns, sample, violations = check_source_contract(conn, query, month)
    rows = None
    if count_rows:
        rows = int(conn.execute(sa.text(f"SELECT COUNT(*) FROM (\n{query.sql}\n) AS utilization"), params).scalar_one())
    return MonthExtract(
        month=month,
        query=query,
        columns=columns,
        rows=rows,
        contract_violations=violations,
        sample=sample,
    )
