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

from assets import specs
from assets.month_end import billable_counts, billing_month, guard_billing_timezone
from assets import push_signals
from assets.load_preview import preview_accounts, preview_services, preview_unit_counts
from assets.push_signals import table_value
from pipeline.gradient import ledger
from pipeline.gradient.known_accounts import account_changes_of, record_synced_accounts
from pipeline.gradient.errors import GradientError
from pipeline.resources import GradientResource
from pipeline.gradient.load import (
    PartnerLoad,
    PartnerTarget,
    push_partner_month,
    split_companies,
    sync_partner_accounts,
    sync_vendor_services,
)
from pipeline.gradient.locks import DEFAULT_WAIT_SECONDS, LockTimeout
from pipeline.partitions import monthly_partitions
from pipeline.gradient.partner_keys import PartnerKeyError
from pipeline.source.partners import load_companies, load_connections, load_services
from pipeline.resources import (
    BillingRules,
    PartnerSources,
    ProductDatabase,
    StateDatabase,
    require_gradient_ready,
    step_failure,
)
from pipeline.store.months import load_billable_counts, record_month_load

GROUP = "gradient_load"
# One pool for everything that talks to Gradient: deployments limit it (deploy/dagster.yaml)
# so concurrent runs cannot together exceed Gradient's vendor-wide rate limit.
GRADIENT_POOL = "gradient_api"


class GradientPreviewConfig(dg.Config):
    """Whether the run only previews the load (nothing is sent to Gradient)."""

    preview: bool = Field(
        default=False,
        description="Preview only: compute what would be sent (accounts to create and rename, "
        "counts and how they differ from what Gradient holds per the ledger, superseded and "
        "unmapped pairs) and show it as metadata; nothing is sent to Gradient, nothing is "
        "recorded in the ledger.",
    )


class GradientLoadConfig(GradientPreviewConfig):
    """Which partners a run loads, and whether an older month may overwrite a newer one."""

    partner_ids: list[str] = Field(
        default=[],
        description="Partner ids to load (e.g. [\"p-001\"]); empty = every connected partner. "
        "Only a run of every partner marks the month loaded.",
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
    "partner", "delivered", "unmapped", "failed", "superseded", "skipped",
    "accounts_created", "accounts_renamed", "status", "error", "outcome",
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
        dg.AssetCheckSpec(
            DUPLICATE_SERVICES_CHECK,
            asset="gradient_services",
            description="Gradient holds each service name under one id (two ids = units billed twice).",
        )
    ],
)
def gradient_services(
    context: dg.AssetExecutionContext,
    config: GradientPreviewConfig,
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
    if config.preview:
        return preview_services(state_db.engine(), services, DUPLICATE_SERVICES_CHECK)
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
    if config.preview:
        return preview_accounts(state, month.month, counts, companies, [t.partner_id for t in targets])

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
            "per_partner": table_value(table),
        }
    )


@dg.asset(
    owners=specs.OWNERS,
    tags=specs.stage_tags("load"),
    code_version="1",
    metadata=specs.column_schema(specs.LEDGER_ENTRIES),
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"gradient"},
    pool=GRADIENT_POOL,
    deps=[billable_counts, gradient_accounts, gradient_services],
    check_specs=push_signals.PUSH_CHECK_SPECS,
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
    superseded / unmapped / failed checks (WARN) are reported either way, and the run is
    tagged ``gbs/outcome`` with the month's outcome."""
    month = billing_month(context, billing_rules)
    state = state_db.engine()
    targets, failures = resolve_targets(context, product_db, partner_sources, config.partner_ids)
    counts = load_billable_counts(state, month.month)
    if config.preview:
        with product_db.connect() as conn:
            companies = load_companies(conn, partner_sources.companies_sql)
        push_signals.tag_outcome(context, "preview")
        yield preview_unit_counts(
            state, month.month, counts, companies, [t.partner_id for t in targets], config.force_superseded
        )
        return
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
        partner_table(reports), {r.partner_id: r.outcomes for r in reports}, pairs,
        account_changes_of(state, context.run_id),
    )
    outcome = ledger.month_outcome(partners.status)
    push_signals.tag_outcome(context, outcome)
    metadata = push_signals.push_metadata(month.label, partners, totals, stats, outcome)
    metadata["gradient"] = dg.MetadataValue.url(gradient.base_url)
    metadata["billing_timezone"] = billing_rules.timezone
    if timezone_change:
        metadata["timezone_change"] = timezone_change
    if config.resend:
        metadata["resend"] = True
    checks = push_signals.push_check_results(
        month.month,
        partners,
        pairs,
        push_signals.names_of(counts),
        {p: ledger.newest_delivered_month(state, p) for p in partners.partner[partners.status == ledger.SUPERSEDED]},
    )
    failed = [r for r in reports if r.failed or r.refused]
    if failed:
        # the checks are reported before the step fails, so the UI shows them for this run
        yield from checks
        raise dg.Failure(
            description=(
                f"{month.label}: {len(failed)} partner(s) not fully delivered: "
                + "; ".join(f"{r.partner_id}: {r.error or _failure_text(r)}" for r in failed)
                + ". Everything else was attempted and recorded; re-run the month to finish."
            ),
            metadata=metadata,
            allow_retries=False,
        )
    if not config.partner_ids:
        # Only a run for every connected partner makes the month loaded (a partner-filtered
        # run must not hide a month the others never received).
        record_month_load(state, month.month, context.run_id, len(reports))
    yield dg.MaterializeResult(metadata=metadata, check_results=checks)


def _failure_text(report: PartnerLoad) -> str:
    refused = "; ".join(f"company {c} refused: {reason}" for c, reason in sorted(report.refused.items())[:5])
    failed = report.outcomes.get(ledger.FAILED, 0)
    return ", ".join(p for p in (f"{failed} failed" if failed else "", refused) if p)
