"""Billable counts: the database counts distinct billable users per partner x company x sku.

The configured utilization query is wrapped and the database applies the row-validity rules
(``valid_row_sql``, the SQL form of ``pipeline.validation.rows``) and the half-open month
overlap. The number of rows the database accepted is reconciled with validation's, so a drift
between the two rule sets, or a source that changed mid-run, blocks the month.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.source.utilization import ID_COLUMNS, SourceQuery, month_parameters, sqlite_timestamp_ok
from pipeline.store.months import MonthComputation, MonthValidation, replace_billable_counts


def _text_present(column: str) -> str:
    return f"({column} IS NOT NULL AND TRIM({column}) <> '')"


def _ts(column: str, dialect_name: str) -> str:
    return f"julianday({column})" if dialect_name == "sqlite" else column


def valid_row_sql(dialect_name: str) -> str:
    """The row-validity rules of ``pipeline.validation.rows`` expressed in SQL (``:known_skus``)."""
    parts = [_text_present(c) for c in ID_COLUMNS]
    parts.append("sku IN :known_skus")
    if dialect_name == "sqlite":
        parts.append("billable IN (0, 1)")
        parts.append(sqlite_timestamp_ok("active_from"))
        parts.append(f"(active_to IS NULL OR {sqlite_timestamp_ok('active_to')})")
    else:
        parts.append("billable IS NOT NULL")
        parts.append("active_from IS NOT NULL")
    parts.append(
        f"(active_to IS NULL OR {_ts('active_to', dialect_name)} >= {_ts('active_from', dialect_name)})"
    )
    return "\n      AND ".join(parts)


def overlap_sql(dialect_name: str) -> str:
    """Half-open overlap of ``[active_from, active_to)`` with ``[:month_start, :month_end)``;
    an empty span (``active_to = active_from``) overlaps nothing."""
    ts = lambda c: _ts(c, dialect_name)  # noqa: E731
    return (
        f"({ts('active_from')} < {ts(':month_end')}"
        f" AND (active_to IS NULL OR ({ts('active_to')} > {ts(':month_start')}"
        f" AND {ts('active_to')} > {ts('active_from')})))"
    )


def aggregation_sql(query: SourceQuery, dialect_name: str) -> str:
    billable = "billable = 1" if dialect_name == "sqlite" else "billable IS TRUE"
    overlap = overlap_sql(dialect_name)
    return f"""
SELECT
    partner_id,
    company_id,
    MAX(company_name) AS company_name,
    sku,
    COUNT(DISTINCT CASE WHEN {billable} AND {overlap} THEN user_id END) AS billable_users,
    SUM(CASE WHEN {overlap} THEN 1 ELSE 0 END) AS rows_in_month,
    COUNT(*) AS accepted_rows
FROM (
{query.sql}
) AS utilization
WHERE {valid_row_sql(dialect_name)}
GROUP BY partner_id, company_id, sku
"""


@dataclass(frozen=True)
class MonthAggregate:
    """Billable users per partner x company x sku, and how many rows the database accepted."""

    counts: pd.DataFrame  # partner_id, company_id, company_name, sku, billable_users
    accepted_rows: int


def aggregate_billable_users(
    conn: sa.Connection, query: SourceQuery, month: BillingMonth, known_skus: Sequence[str]
) -> MonthAggregate:
    """Let the database count the month's distinct billable users per group.

    Groups with valid rows but none overlapping the month are dropped; groups whose rows
    overlap the month but hold no billable user stay, with 0.
    """
    dialect = conn.dialect.name
    params = month_parameters(month, dialect)
    params["known_skus"] = list(known_skus)
    clause = sa.text(aggregation_sql(query, dialect)).bindparams(
        sa.bindparam("known_skus", expanding=True)
    )
    rows = conn.execute(clause, params).all()
    frame = pd.DataFrame.from_records(
        rows,
        columns=[
            "partner_id", "company_id", "company_name", "sku",
            "billable_users", "rows_in_month", "accepted_rows",
        ],
    )
    accepted = int(frame["accepted_rows"].sum()) if len(frame) else 0
    frame = frame[frame["rows_in_month"] > 0]
    counts = (
        frame[["partner_id", "company_id", "company_name", "sku", "billable_users"]]
        .astype({"billable_users": "int64"})
        .sort_values(["partner_id", "company_id", "sku"])
        .reset_index(drop=True)
    )
    return MonthAggregate(counts=counts, accepted_rows=accepted)



class ReconciliationError(RuntimeError):
    """Validation and the database's count disagree on how many rows are billable input."""


def count_billable_users(
    product: sa.Connection,
    state: sa.Engine,
    query: SourceQuery,
    month: BillingMonth,
    validation: MonthValidation,
    run_id: str,
) -> tuple[pd.DataFrame, MonthComputation]:
    """Let the database count the month, reconcile with validation, store the counts.

    Raises ``ReconciliationError`` (and stores nothing) when the database accepted a
    different number of rows than pandera did: the source changed since validation, or
    the SQL rules drifted from the model. Either way the counts cannot be trusted.
    """
    if validation.query_sha256 != query.sha256:
        raise ReconciliationError(
            f"{month.label} was validated with another UTILIZATION_SQL "
            f"({validation.query_sha256[:12]}) than it is counted with ({query.sha256[:12]}); "
            "re-run the month from utilization_extract."
        )
    aggregate = aggregate_billable_users(product, query, month, validation.known_skus)
    if aggregate.accepted_rows != validation.rows_valid:
        raise ReconciliationError(
            f"{month.label}: validation accepted {validation.rows_valid} rows but the database "
            f"counted from {aggregate.accepted_rows}. The source changed after validation (re-run "
            "the month) or the SQL validity rules drifted from the pandera model (a bug: "
            "compare pipeline.billing.counts.valid_row_sql with pipeline.validation.rows)."
        )
    computation = replace_billable_counts(
        state,
        month.month,
        aggregate.counts,
        rows_in=validation.rows_in,
        rows_quarantined=validation.rows_quarantined,
        query_sha256=query.sha256,
        run_id=run_id,
    )
    return aggregate.counts, computation
