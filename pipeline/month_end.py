"""Month-end domain logic: extract, validate and count one billing month.

Plain functions over SQLAlchemy connections; the Dagster assets in ``assets/`` are thin
wrappers around them. Nothing here holds a month's raw rows in memory: rows are streamed
in chunks for validation and the database does the counting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from pipeline.billing_month import BillingMonth
from pipeline.state_store import (
    MonthComputation,
    MonthValidation,
    QuarantineWriter,
    replace_billable_counts,
    save_month_validation,
    utcnow,
)
from pipeline.utilization import (
    SourceQuery,
    aggregate_billable_users,
    month_parameters,
    stream_utilization,
)
from pipeline.validation import ContractViolation, check_contract, validate_chunk

CONTRACT_SAMPLE_ROWS = 1_000
QUARANTINE_SAMPLE_ROWS = 20


class _ContractBroken(Exception):
    def __init__(self, violations: list[ContractViolation]) -> None:
        super().__init__("contract broken")
        self.violations = violations


class ReconciliationError(RuntimeError):
    """Validation and the database's count disagree on how many rows are billable input."""


@dataclass(frozen=True)
class MonthExtract:
    """What the source returned for a month, before row-level validation."""

    month: BillingMonth
    query: SourceQuery
    columns: list[str]
    rows: int
    contract_violations: list[ContractViolation]
    sample: pd.DataFrame

    @property
    def contract_holds(self) -> bool:
        return not self.contract_violations


def extract_month(conn: sa.Connection, query: SourceQuery, month: BillingMonth) -> MonthExtract:
    """Count the month's rows and check the query result's contract on a sample."""
    params = month_parameters(month, conn.dialect.name)
    wrapped = f"SELECT * FROM (\n{query.sql}\n) AS utilization"
    result = conn.execute(sa.text(f"{wrapped} LIMIT {CONTRACT_SAMPLE_ROWS}"), params)
    columns = list(result.keys())
    sample = pd.DataFrame.from_records(result.all(), columns=columns, coerce_float=False)
    rows = conn.execute(
        sa.text(f"SELECT COUNT(*) FROM (\n{query.sql}\n) AS utilization"), params
    ).scalar_one()
    return MonthExtract(
        month=month,
        query=query,
        columns=columns,
        rows=int(rows),
        contract_violations=check_contract(columns, sample, conn.dialect.name),
        sample=sample,
    )


@dataclass
class ValidationOutcome:
    validation: MonthValidation
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)
    contract_violations: list[ContractViolation] = field(default_factory=list)


def validate_month(
    product: sa.Connection,
    state: sa.Engine,
    query: SourceQuery,
    month: BillingMonth,
    known_skus: list[str],
    run_id: str,
    chunk_rows: int = 50_000,
) -> ValidationOutcome:
    """Stream the month through the pandera model; quarantine what fails, with reasons.

    The quarantine and the validation record are replaced in one state-DB transaction.
    """
    skus = frozenset(known_skus)
    rows = valid = 0
    reason_counts: dict[str, int] = {}
    samples: list[pd.DataFrame] = []
    sampled = 0
    try:
        with state.begin() as state_conn:
            writer = QuarantineWriter(state_conn, month.month, run_id)
            for chunk in stream_utilization(product, query, month, chunk_rows):
                violations = check_contract(chunk.columns, chunk, product.dialect.name)
                if violations:
                    raise _ContractBroken(violations)
                result = validate_chunk(chunk, skus, first_row_number=rows + 1)
                rows += result.rows
                valid += result.valid_rows
                for code, n in result.reason_counts.items():
                    reason_counts[code] = reason_counts.get(code, 0) + n
                writer.write(result.quarantined)
                if sampled < QUARANTINE_SAMPLE_ROWS and len(result.quarantined):
                    take = result.quarantined.head(QUARANTINE_SAMPLE_ROWS - sampled)
                    samples.append(take)
                    sampled += len(take)
            validation = MonthValidation(
                month=month.month,
                rows_in=rows,
                rows_valid=valid,
                rows_quarantined=rows - valid,
                reason_counts=dict(sorted(reason_counts.items())),
                known_skus=sorted(skus),
                query_sha256=query.sha256,
                run_id=run_id,
                validated_at=utcnow(),
            )
            save_month_validation(state_conn, validation)
    except _ContractBroken as broken:
        # Nothing of this attempt is kept: the transaction rolled back.
        return ValidationOutcome(
            validation=MonthValidation(
                month=month.month, rows_in=rows, rows_valid=valid, rows_quarantined=rows - valid,
                reason_counts={}, known_skus=sorted(skus), query_sha256=query.sha256,
                run_id=run_id, validated_at=utcnow(),
            ),
            contract_violations=broken.violations,
        )
    sample = pd.concat(samples, ignore_index=True) if samples else pd.DataFrame()
    return ValidationOutcome(validation=validation, sample=sample)


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
            "compare pipeline.utilization.valid_row_sql with pipeline.validation)."
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
