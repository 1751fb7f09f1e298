"""Sensors: partner connect / disconnect, the product's sync requests, missed or late months,
and run failures. Thin: the decisions are in ``pipeline.automation``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import dagster as dg

from pipeline.automation.failures import MAX_ALERTS_PER_PARTNER, affected_partners, record_failure
from pipeline.automation.jobs import (
    TAG_PARTNER,
    TAG_TRIGGER,
    account_sync_job,
    gradient_load_job,
    load_run_config,
    monthly_billing_job,
    run_tags,
)
from pipeline.automation.triggers import (
    SYNC_ACCOUNTS,
    UPDATE_COUNTS,
    SyncRequestsCursor,
    connection_events,
    decide_months,
    load_sync_requests,
    plan_sync_requests,
    watched_months,
)
from pipeline.billing.month import BillingMonth, last_closed_month
from pipeline.gradient import ledger
from pipeline.gradient.load import PartnerTarget, raise_failure_alerts
from pipeline.gradient.partner_keys import PartnerKeyError
from pipeline.partitions import FIRST_BILLING_MONTH
from pipeline.resources import BillingRules, GradientResource, PartnerSources, ProductDatabase, StateDatabase
from pipeline.settings import load_settings
from pipeline.source.partners import CONNECTED, DISCONNECTED, load_connections
from pipeline.source.watermark import read_source_watermark, source_watermark_query, watermark_digest
from pipeline.store.months import (
    load_month_computations,
    load_month_validation,
    loaded_months,
)

# Requests read per tick: they are coalesced per partner and kind, so a tick holds only
# one group per partner and kind whatever arrives (a flood of presses is read in a few ticks).
MAX_REQUESTS_PER_TICK = 10_000
# The presses a run serves (ids first..last and how many), on the run.
TAG_SYNC_REQUESTS = "gbs/sync_requests"


def default_sensor_status() -> dg.DefaultSensorStatus:
    """Sensors run by default in a deployment; GBS_SENSORS_DEFAULT_STATUS=stopped turns that off."""
    stopped = load_settings().gbs_sensors_default_status == "stopped"
    return dg.DefaultSensorStatus.STOPPED if stopped else dg.DefaultSensorStatus.RUNNING


def _now() -> datetime:
    return datetime.now(UTC)


def _latest_closed(rules: BillingRules) -> BillingMonth:
    return last_closed_month(_now(), rules.timezone)


def _job_for(state_db: StateDatabase, month: BillingMonth, load_job: dg.UnresolvedAssetJobDefinition):
    """The load job when the month's counts exist, else the whole monthly job."""
    computed = {c.month for c in load_month_computations(state_db.engine(), [month.month])}
    return load_job if month.month in computed else monthly_billing_job


def _new_connection_events(context, product_db, state_db, partner_sources, kind: str):
    with product_db.connect() as conn:
        connections = load_connections(conn, partner_sources.connections_sql)
    states = ledger.all_partner_states(state_db.engine())
    return connection_events(connections, kind, context.cursor, states)


@dg.sensor(
    jobs=[gradient_load_job, monthly_billing_job],
    minimum_interval_seconds=30,
    default_status=default_sensor_status(),
    description="A partner pressed Connect: verify its key, set 'pending', sync its accounts and "
    "push the latest closed month right away.",
)
def partner_connected_sensor(
    context: dg.SensorEvaluationContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    partner_sources: PartnerSources,
    billing_rules: BillingRules,
) -> dg.SensorResult:
    events, cursor = _new_connection_events(context, product_db, state_db, partner_sources, CONNECTED)
    month = _latest_closed(billing_rules)
    job = _job_for(state_db, month, gradient_load_job)
    requests = [
        dg.RunRequest(
            run_key=event.run_key,
            job_name=job.name,
            partition_key=month.key,
            run_config=load_run_config(job.name, [event.partner_id]),
            tags=run_tags("connect", event.partner_id, f"{event.partner_id} connected at {event.at.isoformat()}"),
        )
        for event in events
    ]
    return dg.SensorResult(run_requests=requests, cursor=cursor)


@dg.sensor(
    job_name="partner_disconnect",
    minimum_interval_seconds=30,
    default_status=default_sensor_status(),
    description="A partner pressed Disconnect: set 'inactive' while the key works, stop syncing "
    "it and forget its delivered state (Gradient drops its accounts).",
)
def partner_disconnected_sensor(
    context: dg.SensorEvaluationContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    partner_sources: PartnerSources,
) -> dg.SensorResult:
    events, cursor = _new_connection_events(context, product_db, state_db, partner_sources, DISCONNECTED)
    requests = [
        dg.RunRequest(
            run_key=event.run_key,
            run_config={"ops": {"disconnect_gradient_partner": {"config": {"partner_id": event.partner_id}}}},
            tags=run_tags("disconnect", event.partner_id, f"{event.partner_id} disconnected at {event.at.isoformat()}"),
        )
        for event in events
    ]
    return dg.SensorResult(run_requests=requests, cursor=cursor)


IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
NOT_STARTED = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED}


def _sync_runs_in_flight(instance: dg.DagsterInstance) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]]]:
    """Runs of the buttons' kinds not finished, per (partner, kind): those not started yet
    (id of one), and those started."""
    queued: dict[tuple[str, str], str] = {}
    running: set[tuple[str, str]] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS), limit=1000):
        kind = run.tags.get(TAG_TRIGGER)
        if kind not in (UPDATE_COUNTS, SYNC_ACCOUNTS):
            continue
        key = (run.tags.get(TAG_PARTNER, ""), kind)
        if run.status in NOT_STARTED:
            queued.setdefault(key, run.run_id)
        else:
            running.add(key)
    return queued, running


@dg.sensor(
    jobs=[gradient_load_job, account_sync_job, monthly_billing_job],
    minimum_interval_seconds=30,
    default_status=default_sensor_status(),
    description="The product's 'Update Counts' and 'Sync Company Accounts' buttons: re-push the "
    "partner's latest closed month / sync its accounts. Presses are coalesced: one run per "
    "partner and kind at a time, serving every press made before it starts.",
)
def sync_requests_sensor(
    context: dg.SensorEvaluationContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    partner_sources: PartnerSources,
    billing_rules: BillingRules,
) -> dg.SensorResult:
    cursor = SyncRequestsCursor.parse(context.cursor)
    with product_db.connect() as conn:
        new = load_sync_requests(conn, partner_sources.sync_requests_sql, cursor.after, MAX_REQUESTS_PER_TICK)
        connected = {c.partner_id for c in load_connections(conn, partner_sources.connections_sql) if c.is_connected}
    queued, running = _sync_runs_in_flight(context.instance)
    plan = plan_sync_requests(cursor, new, connected, queued, running)
    for message in plan.ignored:
        context.log.info(message)
    for group, run_id in plan.served_by_queued:
        context.log.info(f"{group.served} ({group.kind}, {group.partner_id}): served by queued run {run_id}")
    for group in plan.cursor.waiting:
        context.log.info(f"{group.served} ({group.kind}, {group.partner_id}): wait for the run in progress to finish")
    month = _latest_closed(billing_rules)
    requests = []
    for group in plan.to_run:
        load_job = gradient_load_job if group.kind == UPDATE_COUNTS else account_sync_job
        job = _job_for(state_db, month, load_job)
        requests.append(
            dg.RunRequest(
                run_key=group.run_key,
                job_name=job.name,
                partition_key=month.key,
                run_config=load_run_config(job.name, [group.partner_id]),
                tags={
                    **run_tags(group.kind, group.partner_id, f"{group.served}: {group.kind}"),
                    TAG_SYNC_REQUESTS: f"{group.first}..{group.last} ({group.count})",
                },
            )
        )
    return dg.SensorResult(run_requests=requests, cursor=plan.cursor.dumps())


@dg.sensor(
    job=monthly_billing_job,
    minimum_interval_seconds=load_settings().month_watch_interval_seconds,
    default_status=default_sensor_status(),
    description="Missed or late months: a closed month with no successful load, or whose source "
    "watermark (SOURCE_WATERMARK_SQL) changed since it was counted, is requested again "
    "(bounded lookback). The tick reads the watermark only; the run does the counting.",
)
def missed_or_late_months_sensor(
    context: dg.SensorEvaluationContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    billing_rules: BillingRules,
) -> dg.SensorResult:
    lookback = load_settings().month_watch_lookback_months
    first = datetime.fromisoformat(FIRST_BILLING_MONTH).date()
    now = _now()
    months = watched_months(now, billing_rules.timezone, lookback, first)
    if not months:
        return dg.SensorResult(run_requests=[])
    state = state_db.engine()
    loaded = {month.key for month in months if month.month in loaded_months(state)}
    in_progress = {
        run.tags.get("dagster/partition")
        for run in context.instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS), limit=200)
    }
    recorded, recorded_runs, current = {}, {}, {}
    validations = {m.month: load_month_validation(state, m.month) for m in months if m.key in loaded}
    watched = {m: v for m, v in validations.items() if v is not None and v.source_watermark is not None}
    if watched:
        with product_db.connect() as conn:
            query = source_watermark_query(conn.dialect.name)
            if query is None:
                context.log.info("no SOURCE_WATERMARK_SQL for the vendor's UTILIZATION_SQL: late data is not watched")
            else:
                for month in months:
                    validation = watched.get(month.month)
                    if validation is None:
                        continue
                    recorded[month.month] = watermark_digest(validation.source_watermark)
                    recorded_runs[month.month] = validation.run_id
                    current[month.month] = watermark_digest(read_source_watermark(conn, query, month))
    decisions = decide_months(months, loaded, in_progress, recorded, current, now.date(), recorded_runs)
    requests = [
        dg.RunRequest(
            run_key=d.run_key,
            partition_key=d.month.key,
            tags=run_tags(d.reason.split(":")[0], reason=d.reason),
        )
        for d in decisions
    ]
    for d in decisions:
        context.log.info(d.reason)
    return dg.SensorResult(run_requests=requests)


@dg.run_failure_sensor(
    default_status=default_sensor_status(),
    description="Records every failed run for the operator; with GRADIENT_FAILURE_ALERTS=true also "
    "raises a Gradient alert on the affected partners' failed accounts.",
)
def billing_failure_sensor(
    context: dg.RunFailureSensorContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    partner_sources: PartnerSources,
    gradient: GradientResource,
) -> None:
    run = context.dagster_run
    state = state_db.engine()
    affected = affected_partners(state, run.run_id)
    tagged = run.tags.get(TAG_PARTNER)
    partner_ids = [p.partner_id for p in affected] or ([tagged] if tagged and tagged != "all" else [])
    message = _failure_message(context)
    raised = 0
    if load_settings().gradient_failure_alerts and affected:
        raised = _raise_alerts(context, product_db, partner_sources, gradient, affected, run.run_id)
    record_failure(state, run.run_id, run.job_name, run.tags.get("dagster/partition"), partner_ids, message, raised)
    context.log.info(
        f"recorded failure of run {run.run_id} ({run.job_name}); partners affected: "
        f"{', '.join(partner_ids) or 'none'}; alerts raised: {raised}"
    )


def _failure_message(context: dg.RunFailureSensorContext) -> str:
    """Why the run failed: each failed step's own description, else Dagster's summary."""
    reasons = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        text = (error.message if error else None) or event.message or ""
        reasons.append(f"{event.step_key}: {text.strip()}")
    return "; ".join(reasons) or context.failure_event.message or "run failed"


def _raise_alerts(context, product_db, partner_sources, gradient, affected, run_id) -> int:
    with product_db.connect() as conn:
        connections = {c.partner_id: c for c in load_connections(conn, partner_sources.connections_sql)}
    targets = {}
    for partner in affected:
        connection = connections.get(partner.partner_id)
        if connection is None or not connection.is_connected:
            continue
        try:
            targets[partner.partner_id] = PartnerTarget(connection, partner_sources.decrypt(connection))
        except PartnerKeyError as exc:
            context.log.warning(str(exc))

    async def run() -> int:
        async with gradient.client() as client:
            return await raise_failure_alerts(
                client, targets, affected, run_id, MAX_ALERTS_PER_PARTNER, log=context.log.warning
            )

    return asyncio.run(run())
