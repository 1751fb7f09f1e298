"""Billable counts: distinct billable users per partner x company x sku, counted by the database.

The rows that count are the rows breaking none of ``pipeline.validation.rules.RULES`` — the
same list the quarantine comes from — whose span overlaps the month (half-open). The month's
one pass (``pipeline.validation.month.validate_month``) already yields the counts and stages
them in the state database; ``store_billable_counts`` promotes them there (SQL only: the
month's counts are never loaded), and counts again from the database when they were not
staged by the same run (``billable_counts`` materialized apart from its validation); the
late-data sensor counts again with ``aggregate_billable_users``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.source.utilization import SourceQuery, month_parameters
from pipeline.store.months import (
    MonthComputation,
    MonthValidation,
    StoredCounts,
    load_billable_counts,
    promote_staged_counts,
    replace_billable_counts,
)
from pipeline.validation.rows import COUNT_TEXT_DTYPE, checked_counts
from pipeline.validation.rules import (
    billable_true,
    bind_known_skus,
    ident,
    overlap_sql,
    prepare_connection,
    valid_row_sql,
)

COUNT_COLUMNS = ["partner_id", "company_id", "company_name", "sku", "billable_users"]


def aggregation_sql(query: SourceQuery, dialect_name: str) -> str:
    """Billable users per group over the rows that break no rule (binds the month and skus)."""
    overlap = overlap_sql(dialect_name)
    key = lambda c: ident(c, dialect_name)  # noqa: E731
    return f"""
SELECT
    {key("partner_id")} AS partner_id,
    {key("company_id")} AS company_id,
    MAX(company_name) AS company_name,
    {key("sku")} AS sku,
    COUNT(DISTINCT CASE WHEN {billable_true(dialect_name)} AND {overlap} THEN {key("user_id")} END) AS billable_users,
    SUM(CASE WHEN {overlap} THEN 1 ELSE 0 END) AS rows_in_month,
    COUNT(*) AS accepted_rows
FROM (
{query.sql}
) AS utilization
WHERE {valid_row_sql(dialect_name)}
GROUP BY 1, 2, 4
"""


@dataclass(frozen=True)
class MonthAggregate:
    """Billable users per partner x company x sku, and how many rows the database accepted."""

    counts: pd.DataFrame  # partner_id, company_id, company_name, sku, billable_users
    accepted_rows: int


def new_count_columns() -> dict[str, list]:
    """Empty columns for ``counts_frame``, filled group by group."""
    return {column: [] for column in COUNT_COLUMNS}


def add_count(columns: dict[str, list], *values: object) -> None:
    """Append one group's values, in ``COUNT_COLUMNS`` order."""
    for column, value in zip(COUNT_COLUMNS, values, strict=True):
        columns[column].append(value)


def counts_frame(columns: dict[str, list]) -> pd.DataFrame:
    """The month's counts (``COUNT_COLUMNS`` as lists), sorted and checked (unique keys,
    non-negative ints). Built column-wise: no tuple or dict per group is kept."""
    frame = pd.DataFrame({column: columns[column] for column in COUNT_COLUMNS}, columns=COUNT_COLUMNS)
    frame = frame.astype({**{column: COUNT_TEXT_DTYPE for column in COUNT_COLUMNS[:-1]}, "billable_users": "int64"})
    frame = frame.sort_values(["partner_id", "company_id", "sku"]).reset_index(drop=True)
    return checked_counts(frame)


def aggregate_billable_users(
    conn: sa.Connection, query: SourceQuery, month: BillingMonth, known_skus: Sequence[str]
) -> MonthAggregate:
    """Let the database count the month's distinct billable users per group.

    Groups with valid rows but none overlapping the month are dropped; groups whose rows
    overlap the month but hold no billable user stay, with 0.
    """
    dialect = conn.dialect.name
    prepare_connection(conn)
    params = {**month_parameters(month, dialect), "known_skus": list(known_skus)}
    rows = conn.execute(bind_known_skus(aggregation_sql(query, dialect)), params).all()
    accepted = sum(int(r.accepted_rows) for r in rows)
    columns = new_count_columns()
    for r in rows:
        if r.rows_in_month:
            add_count(columns, r.partner_id, r.company_id, r.company_name, r.sku, int(r.billable_users))
    return MonthAggregate(counts=counts_frame(columns), accepted_rows=accepted)


class ReconciliationError(RuntimeError):
    """The month changed between its validation and its count."""


PREVIEW_ROWS = 20


@dataclass(frozen=True)
class CountedMonth:
    """What storing a month's counts leaves for its run to show: the computation record, how
    many groups were stored, the first ``PREVIEW_ROWS`` of them (read back, key order), and
    whether they were the validation pass's staged counts or counted afresh."""

    computation: MonthComputation
    rows: int
    preview: pd.DataFrame
    staged: bool


def _check_query(query: SourceQuery, month: BillingMonth, validation: MonthValidation) -> None:
    if validation.query_sha256 != query.sha256:
        raise ReconciliationError(
            f"{month.label} was validated with another UTILIZATION_SQL "
            f"({validation.query_sha256[:12]}) than it is counted with ({query.sha256[:12]}); "
            "re-run the month from utilization_extract."
        )


def _store_counted(
    state: sa.Engine,
    month: BillingMonth,
    validation: MonthValidation,
    query: SourceQuery,
    aggregate: MonthAggregate,
    run_id: str,
) -> MonthComputation:
    if aggregate.accepted_rows != validation.rows_valid:
        raise ReconciliationError(
            f"{month.label}: validation accepted {validation.rows_valid} rows but the database "
            f"counted from {aggregate.accepted_rows}: the source changed after validation; "
            "re-run the month from validated_utilization."
        )
    return replace_billable_counts(
        state,
        month.month,
        aggregate.counts,
        rows_in=validation.rows_in,
        rows_quarantined=validation.rows_quarantined,
        query_sha256=query.sha256,
        run_id=run_id,
    )


def _store(
    product: sa.Connection,
    state: sa.Engine,
    query: SourceQuery,
    month: BillingMonth,
    validation: MonthValidation,
    run_id: str,
) -> tuple[StoredCounts, MonthAggregate | None]:
    """The staged counts promoted (no aggregate), or a fresh count stored (its aggregate)."""
    _check_query(query, month, validation)
    if validation.run_id == run_id:
        promoted = promote_staged_counts(
            state,
            month.month,
            rows_in=validation.rows_in,
            rows_quarantined=validation.rows_quarantined,
            query_sha256=query.sha256,
            run_id=run_id,
        )
        if promoted is not None:
            return promoted, None
    aggregate = aggregate_billable_users(product, query, month, validation.known_skus)
    computation = _store_counted(state, month, validation, query, aggregate, run_id)
    return StoredCounts(computation=computation, rows=len(aggregate.counts)), aggregate


def store_billable_counts(
    product: sa.Connection,
    state: sa.Engine,
    query: SourceQuery,
    month: BillingMonth,
    validation: MonthValidation,
    run_id: str,
) -> CountedMonth:
    """Store the month's counts: the ones validation's pass staged when that validation is
    this run's (``promote_staged_counts``: in the state database, never loaded here), else a
    fresh count from the database, which must accept as many rows as validation did.

    Raises ``ReconciliationError`` (and stores nothing) when the query changed since the
    validation, or the fresh count accepted a different number of rows: the source changed
    after validation, so the quarantine no longer describes what would be counted.
    """
    stored, aggregate = _store(product, state, query, month, validation, run_id)
    staged = aggregate is None
    del aggregate  # a fresh count is stored; the month's frame is not kept
    return CountedMonth(
        computation=stored.computation,
        rows=stored.rows,
        preview=load_billable_counts(state, month.month, limit=PREVIEW_ROWS).astype({"billable_users": "int64"}),
        staged=staged,
    )
