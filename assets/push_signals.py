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

from assets.metadata_values import SHOWN_ROWS, most_important, status_rank, table_value
from assets.specs import monthly_check
from pipeline.automation.jobs import ALL_PARTNERS, MANUAL, TAG_PARTNER, TAG_TRIGGER, outcome_tags
from pipeline.gradient import ledger
from pipeline.gradient.known_accounts import AccountChanges

ASSET = "gradient_unit_counts"
SUPERSEDED_CHECK = "month_not_superseded"
UNMAPPED_CHECK = "every_pair_mapped"
FAILED_CHECK = "no_failed_pairs"
LISTED = 50
# pairs named in a check's description (the check's "listed" table holds LISTED)
DESCRIBED = 10
DETAIL_CHARS = 200
BACKFILL_TAG = "dagster/backfill"

PUSH_CHECK_SPECS = [
    monthly_check(
        SUPERSEDED_CHECK,
        ASSET,
        "Fails (WARN) when a partner already holds a newer month in Gradient, so this "
        "month was recorded and not pushed; says which month and how to force it.",
    ),
    monthly_check(
        UNMAPPED_CHECK,
        ASSET,
        "Fails (WARN) when Gradient answered 404 for (account, service) pairs the "
        "partner has not mapped; lists them by partner, account id and name.",
    ),
    monthly_check(
        FAILED_CHECK,
        ASSET,
        "Fails (WARN) when counts could not be delivered (errors, refused keys, "
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
    listed = pairs[["partner", "account", "sku", "value", "http_status", "detail"]].copy()
    listed.insert(
        2, "account_name", [names.get((p, a), "")[:120] for p, a in zip(listed.partner, listed.account, strict=True)]
    )
    return listed.reset_index(drop=True)


def _some(items: list[str], total: int) -> str:
    return "; ".join(items) + (f"; and {total - len(items)} more" if total > len(items) else "")


def month_check_results(
    month: date,
    standing: pd.DataFrame,
    names: Mapping[tuple[str, str], str],
    newest_months: Mapping[str, date | None],
) -> list[dg.AssetCheckResult]:
    """The three WARN checks of a month, judged on where the month stands in the ledger
    (``standing``: ``ledger.month_ledger``, the newest entry per pair whatever run wrote it), not
    on one run: a partner-scoped re-run or another month cannot turn a month's red green. Each
    lists at most ``LISTED`` pairs and partners; ``names``: (partner, account) -> account name;
    ``newest_months``: the month Gradient holds for (at least the listed) superseded partners."""
    label = f"{month:%Y-%m}"
    superseded_pairs = standing[standing.outcome == ledger.SUPERSEDED]
    superseded = sorted(set(superseded_pairs.partner))
    listed = superseded[:LISTED]
    superseded_lines = [
        f"{p}: Gradient holds {newest_months[p]:%Y-%m}" if newest_months.get(p) else f"{p}: a newer month"
        for p in listed
    ]
    results = [
        dg.AssetCheckResult(
            check_name=SUPERSEDED_CHECK,
            asset_key=ASSET,
            passed=not superseded,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"{label} was recorded, not pushed, for {len(superseded)} partner(s) — "
                + _some(superseded_lines, len(superseded))
                + ". Gradient keeps only the latest value. To push this month anyway (rolls the "
                f"partners back): run config force_superseded: true, or `gradient-billing-sync run "
                f"--month {label} --force-superseded`."
                if superseded
                else f"{label} is not older than what any partner holds in Gradient"
            ),
            metadata={
                "partners_superseded": len(superseded),
                "counts_superseded": len(superseded_pairs),
                "newer_month_held": dg.MetadataValue.json(
                    {p: f"{newest_months[p]:%Y-%m}" for p in listed if newest_months.get(p)}
                ),
            },
        )
    ]
    for check, outcome, what in (
        (
            UNMAPPED_CHECK,
            ledger.UNMAPPED,
            "unmapped (Gradient answered 404: the partner has not mapped "
            "the account or service in Gradient; sent again every run)",
        ),
        (FAILED_CHECK, ledger.FAILED, "failed (not delivered; re-run the month to send them again)"),
    ):
        hit = standing[standing.outcome == outcome]
        shown = _pair_list(hit.head(LISTED), names)
        shown["detail"] = [d[:DETAIL_CHARS] for d in shown.detail]
        lines = [
            f"{r.partner} {r.account} {r.account_name[:80]!r} {r.sku}"
            + (f" ({r.detail})" if outcome == ledger.FAILED and r.detail else "")
            for r in shown.head(DESCRIBED).itertuples(index=False)
        ]
        by_partner = (
            hit.groupby("partner").size().sort_values(ascending=False, kind="stable")
            if len(hit)
            else pd.Series(dtype=int)
        )
        results.append(
            dg.AssetCheckResult(
                check_name=check,
                asset_key=ASSET,
                passed=hit.empty,
                severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"{len(hit)} pair(s) of {label} {what}: "
                    + _some([f"{p} {n}" for p, n in by_partner.head(LISTED).items()], len(by_partner))
                    + f". First {len(lines)}: "
                    + "; ".join(lines)
                    if len(hit)
                    else f"no pair of {label} {outcome}"
                ),
                metadata={
                    "pairs": len(hit),
                    "partners": len(by_partner),
                    "listed": table_value(shown, max_rows=LISTED),
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
    """Numeric metadata Dagster charts per partition, the outcome, and the per-partner table
    bounded to the ``SHOWN_ROWS`` partners that matter most (failed, partial, unmapped,
    superseded first) with the number of partners per status; every partner is in the ledger."""
    shown = most_important(partners, status_rank(partners.status))
    shown["error"] = [str(e)[:DETAIL_CHARS] for e in shown.error]
    by_status = partners.status.value_counts().to_dict() if len(partners) else {}
    return {
        "month": month_label,
        "outcome": outcome,
        "partners": dg.MetadataValue.int(len(partners)),
        **{name: dg.MetadataValue.int(int(totals.get(name, 0))) for name in ledger.OUTCOMES},
        "skipped": dg.MetadataValue.int(int(partners.skipped.sum()) if len(partners) else 0),
        "requests_sent": dg.MetadataValue.int(int(stats.get("requests_sent", 0))),
        "retries": dg.MetadataValue.int(int(stats.get("retries", 0))),
        "partners_by_status": dg.MetadataValue.json({str(k): int(v) for k, v in sorted(by_status.items())}),
        "per_partner": table_value(shown, max_rows=SHOWN_ROWS, descriptions=PARTNER_DESCRIPTIONS),
        "partners_not_shown": dg.MetadataValue.int(len(partners) - len(shown)),
    }


PARTNER_DESCRIPTIONS = {
    "delivered": "counts Gradient acknowledged (201)",
    "unmapped": "counts Gradient answered 404 for (not mapped by the partner)",
    "failed": "counts not delivered; a re-run sends them",
    "superseded": "counts recorded, not pushed: the partner holds a newer month",
    "skipped": "counts already delivered with the same value",
    "status": "delivered | delivered_with_unmapped | partial | superseded | failed",
}


def tag_outcome(context: dg.AssetExecutionContext, outcome: str, totals: Mapping[str, int] | None = None) -> None:
    """The month's outcome as run tags, so the runs list says at a glance what each run did:
    ``gbs/outcome`` and, per ledger outcome, how many counts this run recorded
    (``gbs/delivered=123``, ``gbs/unmapped=14``; zeros other than delivered left out).

    Runs that did not come through a job with its default tags (an asset backfill or a
    materialization launched from the asset graph) also get ``gbs/trigger`` (``backfill`` or
    ``manual``) and ``gbs/partner``."""
    tags = outcome_tags(outcome, totals or {})
    if TAG_TRIGGER not in context.run.tags:
        tags[TAG_TRIGGER] = "backfill" if BACKFILL_TAG in context.run.tags else MANUAL
    if TAG_PARTNER not in context.run.tags:
        tags[TAG_PARTNER] = ALL_PARTNERS
    context.instance.add_run_tags(context.run_id, tags)


def claims_month(outcome: str, partner_scoped: bool) -> bool:
    """Whether a push that ended with ``outcome`` (failures never get here: the step fails)
    materializes the month of ``gradient_unit_counts``: only when Gradient holds its counts —
    delivered, delivered with unmapped pairs (flagged), or delivered to some partners while the
    others hold a newer month (partial). A wholly superseded month, and a run of chosen
    partners, are recorded as an observation instead: they claim nothing."""
    return not partner_scoped and outcome != ledger.SUPERSEDED


def names_of(counts: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(partner, account) -> account name, from the month's counts."""
    return {
        (str(r.partner_id), str(r.company_id)): str(r.company_name)
        for r in counts[["partner_id", "company_id", "company_name"]].drop_duplicates().itertuples(index=False)
    }
