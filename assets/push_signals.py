"""What a push did, as Dagster shows it: the checks of ``gradient_unit_counts`` (superseded,
unmapped, failed — WARN, non-blocking), typed table metadata, and the month's outcome tag.

Thin: the outcomes come from the ledger (``pipeline.gradient.ledger``); this module only turns
them into check results and metadata values.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import dagster as dg
import pandas as pd

from assets.metadata_values import table_value
from pipeline.automation.jobs import ALL_PARTNERS, MANUAL, TAG_OUTCOME, TAG_PARTNER, TAG_TRIGGER
from pipeline.gradient import ledger
from pipeline.gradient.known_accounts import AccountChanges

ASSET = "gradient_unit_counts"
SUPERSEDED_CHECK = "month_not_superseded"
UNMAPPED_CHECK = "every_pair_mapped"
FAILED_CHECK = "no_failed_pairs"
LISTED = 50
BACKFILL_TAG = "dagster/backfill"

PUSH_CHECK_SPECS = [
    dg.AssetCheckSpec(
        SUPERSEDED_CHECK,
        asset=ASSET,
        blocking=False,
        description="Fails (WARN) when a partner already holds a newer month in Gradient, so this "
        "month was recorded and not pushed; says which month and how to force it.",
    ),
    dg.AssetCheckSpec(
        UNMAPPED_CHECK,
        asset=ASSET,
        blocking=False,
        description="Fails (WARN) when Gradient answered 404 for (account, service) pairs the "
        "partner has not mapped; lists them by partner, account id and name.",
    ),
    dg.AssetCheckSpec(
        FAILED_CHECK,
        asset=ASSET,
        blocking=False,
        description="Fails (WARN) when counts could not be delivered (errors, refused keys, "
        "unsynced accounts); lists them with Gradient's answer. A re-run sends them again.",
    ),
]


def fill_partner_table(
    frame: pd.DataFrame,
    outcomes: Mapping[str, Mapping[str, int]],
    pairs: pd.DataFrame,
    changes: Mapping[str, AccountChanges],
) -> pd.DataFrame:
    """The per-partner frame with status, error and account changes filled from the run's
    outcomes per partner and its ledger entries (``pairs``)."""
    out = frame.copy()
    failed = pairs[pairs.outcome == ledger.FAILED]
    statuses, errors = [], []
    for row in out.itertuples(index=False):
        error = row.error or None
        statuses.append(ledger.partner_status(dict(outcomes.get(row.partner, {})), error))
        own = failed[failed.partner == row.partner]
        if error is None and len(own):
            error = f"{len(own)} failed: {own.detail.iloc[0]}"
        errors.append(error or "")
    out["status"] = statuses
    out["error"] = errors
    out["accounts_created"] = [changes.get(p, AccountChanges(0, 0)).created for p in out.partner]
    out["accounts_renamed"] = [changes.get(p, AccountChanges(0, 0)).renamed for p in out.partner]
    return out


def _pair_list(pairs: pd.DataFrame, names: Mapping[tuple[str, str], str]) -> pd.DataFrame:
    listed = pairs.copy()
    listed.insert(2, "account_name", [names.get((p, a), "") for p, a in zip(listed.partner, listed.account, strict=True)])
    return listed.reset_index(drop=True)


def push_check_results(
    month: date,
    partners: pd.DataFrame,
    pairs: pd.DataFrame,
    names: Mapping[tuple[str, str], str],
    newest_months: Mapping[str, date | None],
) -> list[dg.AssetCheckResult]:
    """The three WARN checks of one push, from the run's ledger entries (``pairs``) and the
    per-partner frame; ``names``: (partner, account) -> account name."""
    label = f"{month:%Y-%m}"
    superseded = partners[partners.status == ledger.SUPERSEDED]
    superseded_lines = [
        f"{p}: Gradient holds {newest_months[p]:%Y-%m}" if newest_months.get(p) else f"{p}: a newer month"
        for p in superseded.partner
    ]
    results = [
        dg.AssetCheckResult(
            check_name=SUPERSEDED_CHECK,
            asset_key=ASSET,
            passed=superseded.empty,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"{label} was recorded, not pushed, for {len(superseded)} partner(s) — "
                + "; ".join(superseded_lines)
                + ". Gradient keeps only the latest value. To push this month anyway (rolls the "
                f"partners back): run config force_superseded: true, or `gradient-billing-sync run "
                f"--month {label} --force-superseded`."
                if not superseded.empty
                else f"{label} is not older than what any partner holds in Gradient"
            ),
            metadata={
                "partners_superseded": len(superseded),
                "counts_superseded": int(superseded.superseded.sum()),
                "newer_month_held": dg.MetadataValue.json(
                    {p: f"{newest_months[p]:%Y-%m}" for p in superseded.partner if newest_months.get(p)}
                ),
            },
        )
    ]
    for check, outcome, what in (
        (UNMAPPED_CHECK, ledger.UNMAPPED, "unmapped (Gradient answered 404: the partner has not mapped "
                                          "the account or service in Gradient; sent again every run)"),
        (FAILED_CHECK, ledger.FAILED, "failed (not delivered; re-run the month to send them again)"),
    ):
        hit = _pair_list(pairs[pairs.outcome == outcome], names)
        lines = [
            f"{r.partner} {r.account} {r.account_name!r} {r.sku}"
            + (f" ({r.detail})" if outcome == ledger.FAILED and r.detail else "")
            for r in hit.head(LISTED).itertuples(index=False)
        ]
        by_partner = hit.groupby("partner").size().to_dict() if len(hit) else {}
        results.append(
            dg.AssetCheckResult(
                check_name=check,
                asset_key=ASSET,
                passed=hit.empty,
                severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"{len(hit)} pair(s) {what}: "
                    + "; ".join(f"{p} {n}" for p, n in sorted(by_partner.items()))
                    + (f". First {min(LISTED, len(hit))}: " if len(hit) else "")
                    + "; ".join(lines)
                    if len(hit)
                    else f"no pair of {label} {outcome} in this run"
                ),
                metadata={
                    "pairs": len(hit),
                    "partners": len(by_partner),
                    "listed": table_value(
                        hit[["partner", "account", "account_name", "sku", "value", "http_status", "detail"]],
                        max_rows=LISTED,
                    ),
                },
            )
        )
    return results


def push_metadata(
    month_label: str,
    partners: pd.DataFrame,
    totals: Mapping[str, int],
    stats: Mapping[str, int],
    outcome: str,
) -> dict[str, object]:
    """Numeric metadata Dagster charts per partition, the outcome and the per-partner table."""
    return {
        "month": month_label,
        "outcome": outcome,
        "partners": dg.MetadataValue.int(len(partners)),
        **{name: dg.MetadataValue.int(int(totals.get(name, 0))) for name in ledger.OUTCOMES},
        "skipped": dg.MetadataValue.int(int(partners.skipped.sum()) if len(partners) else 0),
        "requests_sent": dg.MetadataValue.int(int(stats.get("requests_sent", 0))),
        "retries": dg.MetadataValue.int(int(stats.get("retries", 0))),
        "per_partner": table_value(partners, descriptions=PARTNER_DESCRIPTIONS),
    }


PARTNER_DESCRIPTIONS = {
    "delivered": "counts Gradient acknowledged (201)",
    "unmapped": "counts Gradient answered 404 for (not mapped by the partner)",
    "failed": "counts not delivered; a re-run sends them",
    "superseded": "counts recorded, not pushed: the partner holds a newer month",
    "skipped": "counts already delivered with the same value",
    "status": "delivered | partial | superseded | failed",
}


def tag_outcome(context: dg.AssetExecutionContext, outcome: str) -> None:
    """The month's outcome as a run tag (``gbs/outcome``), so runs can be filtered by it.

    Runs that did not come through a job with its default tags (an asset backfill or a
    materialization launched from the asset graph) also get ``gbs/trigger`` (``backfill`` or
    ``manual``) and ``gbs/partner``."""
    tags = {TAG_OUTCOME: outcome}
    if TAG_TRIGGER not in context.run.tags:
        tags[TAG_TRIGGER] = "backfill" if BACKFILL_TAG in context.run.tags else MANUAL
    if TAG_PARTNER not in context.run.tags:
        tags[TAG_PARTNER] = ALL_PARTNERS
    context.instance.add_run_tags(context.run_id, tags)


def names_of(counts: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(partner, account) -> account name, from the month's counts."""
    return {
        (str(r.partner_id), str(r.company_id)): str(r.company_name)
        for r in counts[["partner_id", "company_id", "company_name"]].drop_duplicates().itertuples(index=False)
    }
