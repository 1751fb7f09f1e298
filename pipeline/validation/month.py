"""Validating a whole month: the rows streamed in chunks through the pandera model.

Nothing here holds a month's raw rows in memory. The quarantine and the validation record are
replaced in one state-DB transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.source.utilization import SourceQuery, stream_utilization
from pipeline.store.months import MonthValidation, QuarantineWriter, save_month_validation, utcnow
from pipeline.source.contract import ContractViolation, check_contract
from pipeline.validation.rows import validate_chunk

QUARANTINE_SAMPLE_ROWS = 20


class _ContractBroken(Exception):
    def __init__(self, violations: list[ContractViolation]) -> None:
        super().__init__("contract broken")
        self.violations = violations


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


