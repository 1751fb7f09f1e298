"""Plain-text summaries for the CLI: what a month computed, per partner."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from pipeline.store.months import (
    load_billable_counts,
    load_month_computation,
    load_month_validation,
)


def month_summary(state: sa.Engine, month: date, run_id: str | None = None) -> str:
    """A few lines on one month: rows, quarantine by reason, billable users per partner."""
    label = month.strftime("%Y-%m")
    computation = load_month_computation(state, month)
    validation = load_month_validation(state, month)
    if computation is None:
        if validation is not None:
            return (
                f"{label}: NOT COUNTED — {validation.rows_quarantined} of {validation.rows_in} rows "
                f"quarantined ({validation.quarantined_share:.2%}); see quarantined_rows"
            )
        return f"{label}: not computed"
    lines = [
        f"{label}: {computation.billable_users} billable users, {computation.partners} partners, "
        f"{computation.companies} companies; {computation.rows_in} rows in, "
        f"{computation.rows_quarantined} quarantined"
    ]
    if validation is not None and validation.reason_counts:
        reasons = ", ".join(f"{code} {n}" for code, n in validation.reason_counts.items())
        lines.append(f"  quarantine: {reasons}")
    counts = load_billable_counts(state, month)
    if len(counts):
        per_partner = (
            counts.groupby("partner_id")
            .agg(companies=("company_id", "nunique"), billable_users=("billable_users", "sum"))
            .reset_index()
        )
        for row in per_partner.itertuples(index=False):
            lines.append(f"  {row.partner_id}: {int(row.billable_users)} billable users in {row.companies} companies")
    lines.extend(load_summary(state, month, run_id))
    return "\n".join(lines)


def load_summary(state: sa.Engine, month: date, run_id: str | None = None) -> list[str]:
    """Per partner: what the ledger recorded for the month in Gradient (in one run, if given)."""
    from pipeline.gradient.ledger import OUTCOMES, month_outcomes

    lines = []
    for partner_id, outcomes in sorted(month_outcomes(state, month, run_id).items()):
        parts = ", ".join(f"{o} {outcomes[o]}" for o in OUTCOMES if outcomes.get(o))
        lines.append(f"  Gradient {partner_id}: {parts}")
    return lines
