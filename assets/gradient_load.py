"""Load assets: gradient_services -> gradient_accounts -> gradient_unit_counts.

Downstream of billable_counts (so behind its blocking checks). Thin: the rules live in
``pipeline.gradient.load``; these wrappers resolve partners and keys, run the async work,
and report per partner.
"""

import asyncio
from collections.abc import Iterator, Sequence

import dagster as dg
import pandas as pd
from pydantic import Field

from assets import gradient_ledger, push_signals, specs
from assets.metadata_values import most_important, table_value
from assets.month_end import billable_counts, billing_month, guard_billing_timezone
from pipeline.gradient import ledger
from pipeline.gradient.errors import GradientError
from pipeline.gradient.known_accounts import account_changes_of, record_synced_accounts
from pipeline.gradient.load import (
    PartnerLoad,
    PartnerTarget,
    push_partner_month,
    split_companies,
    sync_partner_accounts,
    sync_vendor_services,
)
from pipeline.gradient.locks import DEFAULT_WAIT_SECONDS, LockTimeout
from pipeline.gradient.partner_keys import PartnerKeyError
from pipeline.partitions import monthly_partitions
from pipeline.resources import (
    BillingRules,
    GradientResource,
    PartnerSources,
    ProductDatabase,
    StateDatabase,
    require_gradient_ready,
    step_failure,
)
from pipeline.source.partners import load_companies, load_connections, load_services
from pipeline.store.months import load_billable_counts, record_month_load

GROUP = "gradient_load"
# One pool for everything that talks to Gradient: deployments limit it (deploy/dagster.yaml)
# so concurrent runs cannot together exceed Gradient's vendor-wide rate limit.
GRADIENT_POOL = "gradient_api"


class GradientLoadConfig(dg.Config):
    """Which partners a run loads, and whether an older month may overwrite a newer one."""

    partner_ids: list[str] = Field(
        default=[],
        description='Partner ids to load (e.g. ["p-001"]); empty = every connected partner. '
        "Only a run of every partner marks the month loaded (materializes gradient_unit_counts); "
        "a run of chosen partners is recorded as an observation.",
    )
    force_superseded: bool = Field(
        default=False,
        description="Push the month even when a partner already holds a newer month in Gradient "
        "(Gradient keeps only the latest value: this rolls the partner back).",
    )
    resend: bool = Field(
        default=False,
        description="Send every pair again whatever the ledger says was delivered: for when "
        "Gradient lost counts in a way the pipeline cannot see (it cannot read counts back). "
        "The run is tagged gbs/resend=true.",
    )
    # how long a partner's push waits for another run's push of the same partner, then stops
    lock_wait_seconds: float = DEFAULT_WAIT_SECONDS


def resolve_targets(
    context: dg.AssetExecutionContext,
    product_db: ProductDatabase,
    partner_sources: PartnerSources,
    partner_ids: Sequence[str],
) -> tuple[list[PartnerTarget], list[PartnerLoad]]:
    """Connected partners (optionally a chosen few) with their keys decrypted.

    A partner whose key cannot be decrypted is reported as failed; the others go on.
    """
    try:
        with product_db.connect() as conn:
            connections = load_connections(conn, partner_sources.connections_sql)
    except Exception as exc:
        raise step_failure(exc, context) from exc
    wanted = set(partner_ids)
    known = {c.partner_id for c in connections}
    for missing in sorted(wanted - known):
        context.log.warning(f"partner {missing} has no Gradient connection in the product; skipped")
    targets: list[PartnerTarget] = []
    failures: list[PartnerLoad] = []
    for connection in connections:
        if not connection.is_connected or (wanted and connection.partner_id not in wanted):
            continue
        try:
            targets.append(PartnerTarget(connection, partner_sources.decrypt(connection)))
        except PartnerKeyError as exc:
            context.log.error(str(exc))
            failures.append(PartnerLoad(connection.partner_id, error=str(exc)))
    return targets, failures


PARTNER_COLUMNS = [
    "partner",
    "delivered",
    "unmapped",
    "failed",
    "superseded",
    "skipped",
    "accounts_created",
    "accounts_renamed",
    "status",
    "error",
    "outcome",
]


def partner_table(reports: Sequence[PartnerLoad]) -> pd.DataFrame:
    rows = [
        {
            "partner": r.partner_id,
            "delivered": r.outcomes.get(ledger.DELIVERED, 0),
            "unmapped": r.outcomes.get(ledger.UNMAPPED, 0),
            "failed": r.outcomes.get(ledger.FAILED, 0),
            "superseded": r.outcomes.get(ledger.SUPERSEDED, 0),
            "skipped": r.skipped,
            "accounts_created": r.accounts_created,
            "accounts_renamed": r.accounts_renamed,
            "status": r.status or "",
            "error": r.error or "",
            "outcome": r.summary,
        }
        for r in sorted(reports, key=lambda r: r.partner_id)
    ]
    return pd.DataFrame(rows, columns=PARTNER_COLUMNS)


DUPLICATE_SERVICES_CHECK = "one_service_per_name"


@dg.asset(
    owners=specs.OWNERS,
    tags=specs.stage_tags("load"),
    code_version="1",
    metadata=specs.column_schema(specs.GRADIENT_SERVICES),
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"gradient"},
    pool=GRADIENT_POOL,
    deps=[billable_counts],
    check_specs=[
        specs.monthly_check(
            DUPLICATE_SERVICES_CHECK,
            "gradient_services",
            "Gradient holds each service name under one id (two ids = units billed twice).",
        )
    ],
)
def gradient_services(
    context: dg.AssetExecutionContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    partner_sources: PartnerSources,
    gradient: GradientResource,
) -> dg.MaterializeResult:
    """The vendor's services (SERVICES_SQL) exist in Gradient: missing ones are created by name,
    idempotently and under the vendor-wide services lock; their Gradient ids are kept in the
    state DB for the count calls. A name Gradient holds under two ids fails the check and its
    counts are not pushed."""
    targets, _ = resolve_targets(context, product_db, partner_sources, [])
    with product_db.connect() as conn:
        services = load_services(conn, product_db.services_sql)
    if not targets:
        context.log.info("no connected partner: nothing to sync services with")
        return dg.MaterializeResult(
            metadata={"services": len(services), "synced": 0},
            check_results=[dg.AssetCheckResult(check_name=DUPLICATE_SERVICES_CHECK, passed=True)],
        )
    try:
        # the start of the push: keys, vendor key, base URL, and that Gradient answers
        require_gradient_ready(gradient, partner_sources)
    except Exception as exc:
        raise step_failure(exc, context) from exc

    async def run():
        async with gradient.client() as client:
            return await sync_vendor_services(client, targets, services, state_db.engine(), context.run_id)

    try:
        synced = asyncio.run(run())
    except (GradientError, LockTimeout) as exc:
        raise dg.Failure(description=f"services sync failed: {exc}") from None
    for name, ids in synced.duplicates.items():
        context.log.error(
            f"Gradient has {len(ids)} services named {name!r} (ids {', '.join(ids)}): counts for it "
            "are not pushed until the extra ones are deleted in Gradient"
        )
    for sku, reason in synced.refused.items():
        context.log.error(f"service {sku} not synced: {reason}")
    return dg.MaterializeResult(
        metadata={
            "services": len(services),
            "synced": len(synced.ids),
            "created": synced.created,
            "service_ids": dg.MetadataValue.json({sku: sid for sku, (sid, _) in synced.ids.items()}),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=DUPLICATE_SERVICES_CHECK,
                passed=not synced.duplicates,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"duplicates": dg.MetadataValue.json(synced.duplicates)},
                description=(
                    "; ".join(f"{n!r}: ids {', '.join(i)}" for n, i in synced.duplicates.items())
                    or "every service name maps to one id"
                ),
            )
        ],
    )


@dg.asset(
    owners=specs.OWNERS,
    tags=specs.stage_tags("load"),
    code_version="1",
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"gradient"},
    pool=GRADIENT_POOL,
    deps=[billable_counts, gradient_services],
)
def gradient_accounts(
    context: dg.AssetExecutionContext,
    config: GradientLoadConfig,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    partner_sources: PartnerSources,
    billing_rules: BillingRules,
    gradient: GradientResource,
) -> dg.MaterializeResult:
    """Each connected partner's Gradient accounts match its companies: verified key and
    'pending' status on (re)connection, missing accounts bulk-created, renamed ones renamed.
    A partner that fails is reported; the others go on."""
    month = billing_month(context, billing_rules)
    state = state_db.engine()
    targets, failures = resolve_targets(context, product_db, partner_sources, config.partner_ids)
    with product_db.connect() as conn:
        companies = load_companies(conn, partner_sources.companies_sql)
    counts = load_billable_counts(state, month.month)
    billed = counts[["partner_id", "company_id", "company_name"]].drop_duplicates(["partner_id", "company_id"])
    accounts = pd.concat([companies, billed]).drop_duplicates(["partner_id", "company_id"])

    async def run() -> list[PartnerLoad]:
        async with gradient.client() as client:
            return await asyncio.gather(
                *(
                    sync_partner_accounts(
                        client,
                        target,
                        [
                            (r.company_id, r.company_name)
                            for r in accounts[accounts.partner_id == target.partner_id].itertuples()
                        ],
                        state,
                        context.run_id,
                        log=context.log.info,
                        lock_wait_seconds=config.lock_wait_seconds,
                    )
                    for target in targets
                )
            )

    reports = failures + asyncio.run(run())
    for report in reports:
        if report.error:
            ledger.record_account_sync_failure(state, context.run_id, report.partner_id, report.error)
        for company, reason in report.refused.items():
            context.log.error(f"{report.partner_id}: company {company[:80]!r} refused: {reason}")
        ledger.record_refusals(state, context.run_id, report.partner_id, report.refused)
        ledger.record_gradient_changes(state, context.run_id, report.partner_id, report.gradient_changes)
        for change in report.gradient_changes:
            context.log.warning(f"{report.partner_id}: Gradient changed: {change}")
        if not report.error:
            own = accounts[accounts.partner_id == report.partner_id]
            valid, _ = split_companies([(r.company_id, r.company_name) for r in own.itertuples()])
            record_synced_accounts(state, report.partner_id, valid, context.run_id)
    table = partner_table(reports)[["partner", "accounts_created", "accounts_renamed", "status", "error"]]
    # the partners that matter most: failed, then those whose accounts changed
    rank = (table.error == "").astype(int) * 2 + ((table.accounts_created + table.accounts_renamed) == 0).astype(int)
    shown = most_important(table, rank)
    return dg.MaterializeResult(
        metadata={
            "partners": len(reports),
            "partners_failed": sum(1 for r in reports if r.error),
            "accounts_created": sum(r.accounts_created for r in reports),
            "accounts_renamed": sum(r.accounts_renamed for r in reports),
            "partners_with_gradient_changes": sum(1 for r in reports if r.gradient_changes),
            # bounded: the first partners' changes; every one is in the log and the state DB
            "gradient_changes": dg.MetadataValue.json(
                dict(list({r.partner_id: r.gradient_changes for r in reports if r.gradient_changes}.items())[:50])
            ),
            "per_partner": table_value(shown),
            "partners_not_shown": len(table) - len(shown),
        }
    )


LEDGER_ASSET = "gradient_ledger"
FAILURES_LISTED = 20


@dg.multi_asset(
    name="gradient_unit_counts",
    specs=[
        dg.AssetSpec(
            push_signals.ASSET,
            description="The month's billable counts as Gradient holds them. A month is "
            "materialized only when Gradient holds its counts: delivered (tag/metadata outcome "
            "delivered), delivered with unmapped pairs (outcome delivered_with_unmapped, "
            "every_pair_mapped failing for the month), or delivered to some partners while the "
            "others hold a newer month (partial). A wholly superseded month and a push of chosen "
            "partners are recorded as an observation of the month, not a materialization.",
            owners=specs.OWNERS,
            tags=specs.stage_tags("load"),
            code_version="2",
            metadata=specs.column_schema(specs.LEDGER_ENTRIES),
            partitions_def=monthly_partitions,
            group_name=GROUP,
            kinds={"gradient"},
            deps=[billable_counts, gradient_accounts, gradient_services],
            skippable=True,
        ),
        dg.AssetSpec(
            LEDGER_ASSET,
            description="The month's ledger as it stands after the push: per partner, account and "
            "service the newest entry — value, outcome (delivered, unmapped, failed, superseded), "
            "Gradient's HTTP status and the time. Shows totals and the entries that matter most "
            "(failed, unmapped, superseded first); every entry is in the state database's "
            "ledger_entries. Written by every push, superseded and failed ones too; materialize "
            "it alone to refresh it.",
            owners=specs.OWNERS,
            tags=specs.stage_tags("ledger"),
            code_version="2",
            metadata=specs.column_schema(specs.LEDGER_ENTRIES),
            partitions_def=monthly_partitions,
            group_name=GROUP,
            kinds={"sql"},
            deps=[push_signals.ASSET],
        ),
    ],
    check_specs=push_signals.PUSH_CHECK_SPECS,
    can_subset=True,
    pool=GRADIENT_POOL,
)
def gradient_unit_counts(
    context: dg.AssetExecutionContext,
    config: GradientLoadConfig,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    partner_sources: PartnerSources,
    billing_rules: BillingRules,
    gradient: GradientResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The month's billable counts pushed to Gradient per connected partner, recorded in the
    ledger: delivered, unmapped (404), failed, or superseded by a newer delivered month.
    Fails after attempting everything when anything failed, so a re-run finishes the job; the
    superseded / unmapped / failed checks (WARN, per month, judged on the month's ledger) are
    reported either way, and the run is tagged ``gbs/outcome`` with the month's outcome and
    ``gbs/<outcome>`` with its counts. The month's ledger (``gradient_ledger``) is written by
    every push."""
    month = billing_month(context, billing_rules)
    state = state_db.engine()
    selected = {key.to_user_string() for key in context.selected_asset_keys}
    if push_signals.ASSET not in selected:
        # gradient_ledger alone: refresh the month's ledger view, push nothing
        yield gradient_ledger.ledger_result(LEDGER_ASSET, month.label, ledger.month_ledger(state, month.month))
        return
    targets, failures = resolve_targets(context, product_db, partner_sources, config.partner_ids)
    counts = load_billable_counts(state, month.month)
    timezone_change = guard_billing_timezone(context, state, month, billing_rules.timezone)
    if config.resend:
        context.instance.add_run_tags(context.run_id, {"gbs/resend": "true"})
        context.log.warning(f"{month.label}: resend: every pair is sent again whatever the ledger says")
    service_ids = ledger.service_ids(state)
    accounts_failed = ledger.account_sync_failures_of(state, context.run_id)
    service_conflicts = ledger.service_conflicts(state)

    async def run() -> tuple[list[PartnerLoad], dict]:
        async with gradient.client() as client:
            reports = await asyncio.gather(
                *(
                    push_partner_month(
                        client,
                        target,
                        month.month,
                        counts[counts.partner_id == target.partner_id],
                        service_ids,
                        state,
                        context.run_id,
                        force=config.force_superseded,
                        accounts_error=accounts_failed.get(target.partner_id),
                        service_conflicts=service_conflicts,
                        lock_wait_seconds=config.lock_wait_seconds,
                        log=context.log.info,
                        resend=config.resend,
                        billing_timezone=billing_rules.timezone,
                    )
                    for target in targets
                )
            )
            return list(reports), client.stats

    pushed, stats = asyncio.run(run())
    reports = failures + pushed
    for partner_id, refused in ledger.refusals_of(state, context.run_id).items():
        for report in reports:
            if report.partner_id == partner_id:
                report.refused = {**refused, **report.refused}
    for partner_id, changes in ledger.gradient_changes_of(state, context.run_id).items():
        for report in reports:
            if report.partner_id == partner_id:
                report.gradient_changes = changes + report.gradient_changes
    totals = {o: sum(r.outcomes.get(o, 0) for r in reports) for o in ledger.OUTCOMES}
    pairs = ledger.run_pairs(state, month.month, context.run_id)
    partners = push_signals.fill_partner_table(
        partner_table(reports),
        {r.partner_id: r.outcomes for r in reports},
        pairs,
        account_changes_of(state, context.run_id),
    )
    outcome = ledger.month_outcome(partners.status)
    push_signals.tag_outcome(context, outcome, totals)
    metadata = push_signals.push_metadata(month.label, partners, totals, stats, outcome)
    metadata["gradient"] = dg.MetadataValue.url(gradient.base_url)
    metadata["billing_timezone"] = billing_rules.timezone
    if timezone_change:
        metadata["timezone_change"] = timezone_change
    if config.resend:
        metadata["resend"] = True
    standing = ledger.month_ledger(state, month.month)
    superseded = sorted(set(standing.partner[standing.outcome == ledger.SUPERSEDED]))[: push_signals.LISTED]
    checks = push_signals.month_check_results(
        month.month,
        standing,
        push_signals.names_of(counts),
        {p: ledger.newest_delivered_month(state, p) for p in superseded},
    )
    ledger_view = gradient_ledger.ledger_result(LEDGER_ASSET, month.label, standing)
    failed = [r for r in reports if r.failed or r.refused]
    if failed:
        # the checks and the ledger are reported before the step fails, so the UI shows them
        yield from checks
        if LEDGER_ASSET in selected:
            yield ledger_view
        raise dg.Failure(
            description=(
                f"{month.label}: {len(failed)} partner(s) not fully delivered: "
                + "; ".join(f"{r.partner_id}: {r.error or _failure_text(r)}" for r in failed[:FAILURES_LISTED])
                + (
                    f"; and {len(failed) - FAILURES_LISTED} more (see no_failed_pairs)"
                    if len(failed) > FAILURES_LISTED
                    else ""
                )
                + ". Everything else was attempted and recorded; re-run the month to finish."
            ),
            metadata=metadata,
            allow_retries=False,
        )
    partner_scoped = bool(config.partner_ids)
    if not partner_scoped:
        # Only a run for every connected partner makes the month loaded (a partner-filtered
        # run must not hide a month the others never received).
        record_month_load(state, month.month, context.run_id, len(reports))
    if push_signals.claims_month(outcome, partner_scoped):
        yield dg.MaterializeResult(asset_key=push_signals.ASSET, metadata=metadata, check_results=checks)
    else:
        why = "a push of chosen partners" if partner_scoped else "superseded: every partner holds a newer month"
        context.log.info(f"{month.label}: {why}; recorded as an observation, the month is not materialized")
        context.log_event(
            dg.AssetObservation(
                asset_key=push_signals.ASSET,
                partition=context.partition_key,
                description=f"{month.label} {outcome}: {why}; not claimed as held by Gradient",
                metadata={
                    **metadata,  # type: ignore[dict-item]
                    "claimed": False,
                    "scope": ", ".join(config.partner_ids[:20]) or "all partners",
                },
            )
        )
        yield from checks
    if LEDGER_ASSET in selected:
        yield ledger_view


def _failure_text(report: PartnerLoad) -> str:
    refused = "; ".join(f"company {c} refused: {reason}" for c, reason in sorted(report.refused.items())[:5])
    failed = report.outcomes.get(ledger.FAILED, 0)
    return ", ".join(p for p in (f"{failed} failed" if failed else "", refused) if p)
