"""The load assets in preview mode (run config ``preview: true``): nothing is sent to Gradient
and nothing is written to the ledger; each asset reports what a real run would do.

Thin: the plan is ``pipeline.gradient.preview`` over the state database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from assets.push_signals import FAILED_CHECK, SUPERSEDED_CHECK, UNMAPPED_CHECK, table_value
from pipeline.gradient import ledger
from pipeline.gradient.preview import PartnerPreview, calls_frame, preview_month, summary_frame
from pipeline.source.partners import ServiceDefinition

NOTE = "preview: nothing was sent to Gradient and nothing was recorded"


def preview_services(state: sa.Engine, services: Sequence[ServiceDefinition], check_name: str) -> dg.MaterializeResult:
    """The services as last synced; those never synced would be looked up and created."""
    known = ledger.service_ids(state)
    conflicts = ledger.service_conflicts(state)
    unsynced = sorted(s.sku for s in services if s.sku not in known)
    return dg.MaterializeResult(
        metadata={
            "preview": True,
            "note": NOTE,
            "services": len(services),
            "synced_before": len(known),
            "not_yet_synced": dg.MetadataValue.json(unsynced),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=check_name,
                passed=not conflicts,
                severity=dg.AssetCheckSeverity.WARN,
                description="preview, as of the last services sync: "
                + ("; ".join(conflicts.values()) or "every service name maps to one id"),
            )
        ],
    )


def account_plan(previews: Sequence[PartnerPreview]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"partner": p.partner_id, "account": a, "action": "create", "name_in_gradient": "", "name": n}
            for p in previews
            for a, n in p.accounts_to_create
        ]
        + [
            {"partner": p.partner_id, "account": a, "action": "rename", "name_in_gradient": old, "name": new}
            for p in previews
            for a, old, new in p.accounts_to_rename
        ],
        columns=["partner", "account", "action", "name_in_gradient", "name"],
    )


def preview_accounts(
    state: sa.Engine, month: date, counts: pd.DataFrame, companies: pd.DataFrame, partner_ids: Sequence[str]
) -> dg.MaterializeResult:
    previews = preview_month(state, month, counts, companies, partner_ids)
    plan = account_plan(previews)
    return dg.MaterializeResult(
        metadata={
            "preview": True,
            "note": NOTE,
            "partners": len(previews),
            "accounts_to_create": int((plan.action == "create").sum()),
            "accounts_to_rename": int((plan.action == "rename").sum()),
            "account_plan": table_value(plan, max_rows=200),
        }
    )


def preview_unit_counts(
    state: sa.Engine,
    month: date,
    counts: pd.DataFrame,
    companies: pd.DataFrame,
    partner_ids: Sequence[str],
    force: bool,
) -> dg.MaterializeResult:
    """The counts a real run would send, per partner, with the checks judged on the plan."""
    previews = preview_month(state, month, counts, companies, partner_ids, force=force)
    summary = summary_frame(previews)
    calls = calls_frame(previews)
    superseded = [p for p in previews if p.superseded_by is not None]
    unmapped = [(p.partner_id, *u) for p in previews for u in p.unmapped]
    label = f"{month:%Y-%m}"
    return dg.MaterializeResult(
        metadata={
            "preview": True,
            "note": NOTE,
            "month": label,
            "outcome": "preview",
            "counts_to_send": dg.MetadataValue.int(len(calls)),
            "units_to_send": dg.MetadataValue.int(int(calls.value.sum()) if len(calls) else 0),
            "superseded": dg.MetadataValue.int(sum(len(p.superseded) for p in superseded)),
            "per_partner": table_value(summary),
            "planned_counts": table_value(calls, max_rows=500),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=SUPERSEDED_CHECK,
                passed=not superseded,
                severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"preview: {label} would be recorded, not pushed, for "
                    + "; ".join(f"{p.partner_id} (Gradient holds {p.superseded_by:%Y-%m})" for p in superseded)
                    + f". Force: run config force_superseded: true, or `gradient-billing-sync run --month {label} --force-superseded`."
                    if superseded
                    else f"preview: {label} is not older than what any partner holds"
                ),
            ),
            dg.AssetCheckResult(
                check_name=UNMAPPED_CHECK,
                passed=not unmapped,
                severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"preview: {len(unmapped)} pair(s) to send were unmapped when last sent: "
                    + "; ".join(f"{p} {a} {n!r} {s}" for p, a, n, s in unmapped[:50])
                    if unmapped
                    else "preview: no pair to send was unmapped when last sent"
                ),
                metadata={"pairs": len(unmapped)},
            ),
            dg.AssetCheckResult(
                check_name=FAILED_CHECK,
                passed=True,
                severity=dg.AssetCheckSeverity.WARN,
                description="preview: nothing was sent, so nothing failed",
            ),
        ],
    )
