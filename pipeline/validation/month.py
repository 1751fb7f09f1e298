"""Validating and counting a month in one pass over the source, inside the product database.

The database flags every row with the rules it breaks (``pipeline.validation.rules``) and, in
the same scan, groups the rows: the rows breaking no rule into the month's counts per partner
x company x sku, the others into groups that come back — only they — to be quarantined with
their reasons (PostgreSQL: per partner x company x sku x broken rules, the rows as text
arrays, so the pass runs in parallel workers; SQLite and MySQL/MariaDB: identical rows with
how many). Nothing here holds a month's rows in memory, only one entry per counted group;
the quarantine and the validation record are replaced in one state-DB transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.counts import MonthAggregate, add_count, counts_frame, new_count_columns
from pipeline.billing.month import BillingMonth
from pipeline.source.contract import ContractViolation, check_source_contract
from pipeline.source.utilization import CONTRACT_COLUMNS, SourceQuery, month_parameters
from pipeline.store.months import MonthValidation, QuarantineWriter, save_month_validation, utcnow
from pipeline.validation.rows import QUARANTINE_COLUMNS, checked_quarantine, describe
from pipeline.validation.rules import (
    MASK,
    billable_true,
    bind_known_skus,
    codes_of,
    display,
    family,
    flagged_sql,
    ident,
    overlap_sql,
    prepare_connection,
    text_of,
)

QUARANTINE_SAMPLE_ROWS = 20
GROUP_KEYS = ("partner_id", "company_id", "sku")


def month_pass_sql(query: SourceQuery, dialect: str) -> str:
    """One scan: per group of rows breaking no rule, its billable users; per group of rows
    breaking a rule, their values as text (never decoded by the driver) and how many."""
    if family(dialect) == "postgresql":
        return _postgresql_month_pass_sql(query)
    good, bad = f"{MASK} = 0", f"{MASK} <> 0"
    keys = [f"CASE WHEN {good} THEN {ident(c, dialect)} END AS {c}" for c in GROUP_KEYS]
    shown = [f"CASE WHEN {bad} THEN {display(c, dialect)} END AS shown_{c}" for c in CONTRACT_COLUMNS]
    overlap = overlap_sql(dialect)
    grouped = len(keys) + 1 + len(shown)
    return f"""
SELECT
    {', '.join(keys)},
    {MASK},
    {', '.join(shown)},
    MAX(CASE WHEN {good} THEN company_name END) AS company_name,
    COUNT(DISTINCT CASE WHEN {good} AND {billable_true(dialect)} AND {overlap}
        THEN {ident('user_id', dialect)} END) AS billable_users,
    SUM(CASE WHEN {good} AND {overlap} THEN 1 ELSE 0 END) AS rows_in_month,
    COUNT(*) AS row_count
FROM (
{flagged_sql(query.sql, dialect)}
) AS flagged
GROUP BY {', '.join(str(i) for i in range(1, grouped + 1))}
"""


def _postgresql_month_pass_sql(query: SourceQuery) -> str:
    """PostgreSQL: the groups are partner x company x sku x ``reason_mask``, and the mask is
    referenced only as a group key, so the planner computes it once per row below the sort and
    the whole pass runs in parallel workers like a plain aggregate (a per-row ``CASE`` on the
    mask would repeat the rules in every key; an ``OFFSET 0`` fence keeps them single but
    sorts in the leader alone). A group breaking rules brings its rows back as text arrays."""
    dialect = "postgresql"
    overlap = overlap_sql(dialect)
    shown = ", ".join(display(c, dialect) for c in CONTRACT_COLUMNS)
    return f"""
SELECT
    {', '.join(GROUP_KEYS)},
    {MASK},
    MAX(company_name) AS company_name,
    COUNT(DISTINCT CASE WHEN {billable_true(dialect)} AND {overlap} THEN user_id END) AS billable_users,
    SUM(CASE WHEN {overlap} THEN 1 ELSE 0 END) AS rows_in_month,
    COUNT(*) AS row_count,
    array_agg(ARRAY[{shown}]) FILTER (WHERE {MASK} <> 0) AS quarantined_rows
FROM (
{flagged_sql(query.sql, dialect)}
) AS flagged
GROUP BY {', '.join(GROUP_KEYS)}, {MASK}
"""


@dataclass
class ValidationOutcome:
    validation: MonthValidation
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)
    contract_violations: list[ContractViolation] = field(default_factory=list)
    aggregate: MonthAggregate | None = None


@dataclass
class _Tally:
    rows: int = 0
    valid: int = 0
    reason_counts: dict[str, int] = field(default_factory=dict)
    counts: dict[str, list] = field(default_factory=new_count_columns)
    sample: list[dict] = field(default_factory=list)


def _quarantined_values(group: sa.Row) -> list[dict[str, str | None]]:
    """The contract values, as text, of each row of a group that breaks a rule."""
    rows = getattr(group, "quarantined_rows", None)
    if rows is not None:
        return [dict(zip(CONTRACT_COLUMNS, map(text_of, row))) for row in rows]
    raw = {c: text_of(getattr(group, f"shown_{c}")) for c in CONTRACT_COLUMNS}
    return [raw] * int(group.row_count)


def _quarantine_records(group: sa.Row, first_row_number: int) -> list[dict]:
    codes = codes_of(int(getattr(group, MASK)))
    records = []
    for i, raw in enumerate(_quarantined_values(group)):
        reasons = describe(codes, raw)
        records.append(
            {"row_number": first_row_number + i, **raw, "reason_codes": ",".join(codes), "reasons": reasons}
        )
    return records


def validate_month(
    product: sa.Connection,
    state: sa.Engine,
    query: SourceQuery,
    month: BillingMonth,
    known_skus: list[str],
    run_id: str,
    chunk_rows: int = 50_000,
) -> ValidationOutcome:
    """Check the contract, then flag, quarantine and count the month in one database pass.

    The quarantined rows come back in chunks of ``chunk_rows`` groups and are written in bulk;
    the counts are returned (``aggregate``) for ``count_billable_users`` to store.
    """
    dialect = product.dialect.name
    skus = sorted(set(known_skus))

    def record(tally: _Tally) -> MonthValidation:
        return MonthValidation(
            month=month.month, rows_in=tally.rows, rows_valid=tally.valid,
            rows_quarantined=tally.rows - tally.valid,
            reason_counts=dict(sorted(tally.reason_counts.items())), known_skus=skus,
            query_sha256=query.sha256, run_id=run_id, validated_at=utcnow(),
        )

    _, _, violations = check_source_contract(product, query, month)
    if violations:
        return ValidationOutcome(validation=record(_Tally()), contract_violations=violations)
    prepare_connection(product)
    params = {**month_parameters(month, dialect), "known_skus": skus}
    tally = _Tally()
    with state.begin() as state_conn:
        writer = QuarantineWriter(state_conn, month.month, run_id)
        # PostgreSQL never runs a cursor's query (DECLARE CURSOR, i.e. stream_results) with
        # parallel workers, so there the groups (about one per 17 rows) are fetched whole.
        streamed = {"yield_per": chunk_rows} if family(dialect) != "postgresql" else {}
        result = product.execution_options(**streamed).execute(
            bind_known_skus(month_pass_sql(query, dialect)), params
        )
        for groups in result.partitions(chunk_rows):
            quarantined: list[dict] = []
            for group in groups:
                n = int(group.row_count)
                tally.rows += n
                if not getattr(group, MASK):
                    tally.valid += n
                    if group.rows_in_month:
                        add_count(tally.counts, group.partner_id, group.company_id, group.company_name,
                                  group.sku, int(group.billable_users))
                    continue
                for code in codes_of(int(getattr(group, MASK))):
                    tally.reason_counts[code] = tally.reason_counts.get(code, 0) + n
                quarantined.extend(_quarantine_records(group, tally.rows - tally.valid - n + 1))
            if quarantined:
                frame = checked_quarantine(pd.DataFrame.from_records(quarantined, columns=QUARANTINE_COLUMNS))
                writer.write(frame)
                tally.sample.extend(quarantined[: QUARANTINE_SAMPLE_ROWS - len(tally.sample)])
        validation = record(tally)
        save_month_validation(state_conn, validation)
    aggregate = MonthAggregate(counts=counts_frame(tally.counts), accepted_rows=tally.valid)
    sample = pd.DataFrame.from_records(tally.sample, columns=QUARANTINE_COLUMNS) if tally.sample else pd.DataFrame()
    return ValidationOutcome(validation=validation, sample=sample, aggregate=aggregate)
