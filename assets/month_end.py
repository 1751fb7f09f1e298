"""Month-end assets: utilization_extract -> validated_utilization -> billable_counts.

Validation and counting are one pass of the product database: the pass stages its counts in
the state database (``staged_billable_counts``, in the validation's transaction), and
``billable_counts`` of the same run promotes them into ``billable_counts`` with SQL, so no
step holds a month's counts in memory. Run apart from its validation (another run, or
nothing staged), ``billable_counts`` counts again and reconciles with the validation.
"""

import dagster as dg
import sqlalchemy as sa

from assets import specs
from assets.metadata_values import table_value
from pipeline.billing.counts import PREVIEW_ROWS, ReconciliationError, store_billable_counts
from pipeline.billing.month import BillingMonth
from pipeline.gradient import ledger
from pipeline.partitions import monthly_partitions
from pipeline.resources import (
    NO_RUN_RETRY_TAGS,
    BillingRules,
    ProductDatabase,
    StateDatabase,
    require_gradient_ready,
    step_failure,
)
from pipeline.settings import redact_url
from pipeline.source.extract import extract_month
from pipeline.store.months import load_month_computation, load_month_validation, record_computation_timezone
from pipeline.validation.month import validate_month

GROUP = "month_end"
DB_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


def billing_month(context: dg.AssetExecutionContext, rules: BillingRules) -> BillingMonth:
    return BillingMonth.from_partition_key(context.partition_key, rules.timezone)


def no_retry(exc: Exception, context: dg.AssetExecutionContext | None = None) -> dg.Failure:
    """A failure that a retry cannot fix (configuration, contract, reconciliation); given the
    step's context, the run is not re-executed automatically either."""
    if context is not None:
        context.instance.add_run_tags(context.run_id, NO_RUN_RETRY_TAGS)
    return dg.Failure(description=str(exc), allow_retries=False)


ALLOW_TIMEZONE_CHANGE_TAG = "gbs/allow_timezone_change"


def guard_billing_timezone(
    context: dg.AssetExecutionContext, state: sa.Engine, month: BillingMonth, billing_timezone: str
) -> str | None:
    """Refuse to count or push a month delivered under another billing time zone unless the run
    is tagged ``gbs/allow_timezone_change=true``; a forced run logs what changed and returns it."""
    change = ledger.timezone_change(state, month.month, billing_timezone)
    if change is None:
        return None
    if context.run.tags.get(ALLOW_TIMEZONE_CHANGE_TAG) == "true":
        context.log.warning(f"time zone change forced by the run's {ALLOW_TIMEZONE_CHANGE_TAG} tag: {change}")
        return f"forced: counted in {billing_timezone}; {change.split(';')[0]}"
    raise no_retry(ValueError(change), context)


def check_gradient_settings(context: dg.AssetExecutionContext) -> None:
    """When this run goes on to push to Gradient, check its settings (encryption keys, vendor
    key, base URL) before any row is read, so a wrong one fails the run before the month is
    counted. Whether Gradient answers is checked where the push starts (gradient_services):
    an unreachable Gradient must not stop the month from being counted."""
    layer = context.job_def.asset_layer
    pushes = any(layer.asset_graph.get(key).group_name == "gradient_load" for key in layer.selected_asset_keys)
    resource_defs = context.job_def.resource_defs
    if not pushes or not {"gradient", "partner_sources"} <= resource_defs.keys():
        return
    with dg.build_resources({key: resource_defs[key] for key in ("gradient", "partner_sources")}) as built:
        require_gradient_ready(built.gradient, built.partner_sources, reach=False)


@dg.asset(
    owners=specs.OWNERS,
    tags=specs.stage_tags("extract"),
    code_version="1",
    metadata=specs.column_schema(specs.UTILIZATION_CONTRACT),
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"sql"},
    retry_policy=DB_RETRY,
    check_specs=[
        specs.monthly_check(
            "source_contract",
            "utilization_extract",
            "The utilization query returns every contract column with the right "
            "kind of values. A broken contract always blocks the month.",
            blocking=True,
        )
    ],
)
def utilization_extract(
    context: dg.AssetExecutionContext, product_db: ProductDatabase, billing_rules: BillingRules
) -> dg.MaterializeResult:
    """The month's utilization as the product database returns it through UTILIZATION_SQL
    (bind parameters for the month window), checked against the source contract. Its rows
    are counted by validated_utilization's pass (``rows_in``), not by a scan of their own."""
    month = billing_month(context, billing_rules)
    try:
        check_gradient_settings(context)
        query = product_db.utilization_query()
        with product_db.connect() as conn:
            extract = extract_month(conn, query, month, count_rows=False)
    except Exception as exc:
        raise step_failure(exc, context) from exc
    violations = [str(v) for v in extract.contract_violations]
    if violations:
        context.log.error(f"{month.label}: the utilization query breaks the contract: " + "; ".join(violations))
    return dg.MaterializeResult(
        metadata={
            "month": month.label,
            "window_start": dg.MetadataValue.timestamp(month.start),
            "window_end": dg.MetadataValue.timestamp(month.end),
            "columns": ", ".join(extract.columns),
            "query_file": dg.MetadataValue.path(extract.query.path),
            "query_sha256": extract.query.sha256,
            "product_db": redact_url(str(product_db.engine().url)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="source_contract",
                passed=not violations,
                severity=dg.AssetCheckSeverity.ERROR,
                description="; ".join(violations) or "every contract column is present and typed",
                metadata={"violations": len(violations), "rows_sampled": len(extract.sample)},
            )
        ],
    )


@dg.asset(
    owners=specs.OWNERS,
    tags=specs.stage_tags("validate"),
    code_version="1",
    metadata=specs.column_schema(specs.VALIDATED_UTILIZATION),
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"sql", "pandera"},
    deps=[utilization_extract],
    retry_policy=DB_RETRY,
    check_specs=[
        specs.monthly_check(
            "quarantine_within_threshold",
            "validated_utilization",
            "Rows failing validation are quarantined and not counted; above the "
            "threshold share of the month's rows (QUARANTINE_THRESHOLD, default 1 %) the month "
            "is blocked.",
            blocking=True,
        )
    ],
)
def validated_utilization(
    context: dg.AssetExecutionContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    billing_rules: BillingRules,
) -> dg.MaterializeResult:
    """Every row of the month checked against the billing-row rules by the product database,
    in the same pass that counts it; failing rows go to the quarantine table with their
    reasons (checked with pandera), the counts wait staged in the state database for
    billable_counts."""
    month = billing_month(context, billing_rules)
    timezone_change = guard_billing_timezone(context, state_db.engine(), month, billing_rules.timezone)
    try:
        query = product_db.utilization_query()
        with product_db.connect() as conn:
            outcome = validate_month(
                conn,
                state_db.engine(),
                query,
                month,
                product_db.known_skus(conn),
                context.run_id,
                product_db.chunk_rows,
            )
    except Exception as exc:
        raise step_failure(exc, context) from exc
    if outcome.contract_violations:
        raise no_retry(
            ValueError(
                f"{month.label}: the utilization query breaks the contract: "
                + "; ".join(str(v) for v in outcome.contract_violations)
            ),
            context,
        )
    validation = outcome.validation
    share = validation.quarantined_share
    threshold = billing_rules.quarantine_threshold
    within = share <= threshold
    if validation.rows_quarantined:
        log = context.log.info if within else context.log.error
        log(
            f"{month.label}: {validation.rows_quarantined} of {validation.rows_in} rows quarantined "
            f"({share:.2%}, threshold {threshold:.2%}): "
            + ", ".join(f"{k}={v}" for k, v in validation.reason_counts.items())
        )
    sample_columns = [
        "row_number",
        "reasons",
        "partner_id",
        "company_id",
        "sku",
        "user_id",
        "active_from",
        "active_to",
        "billable",
    ]
    sample = outcome.sample[sample_columns] if len(outcome.sample) else outcome.sample
    return dg.MaterializeResult(
        metadata={
            "month": month.label,
            "rows_in": validation.rows_in,
            "rows_valid": validation.rows_valid,
            "rows_quarantined": validation.rows_quarantined,
            "quarantined_percent": dg.MetadataValue.float(round(100 * share, 2)),
            "quarantine_by_reason": dg.MetadataValue.json(validation.reason_counts),
            "quarantine_sample": table_value(sample.astype(object).where(sample.notna(), "").astype(str), max_rows=20),
            "known_skus": ", ".join(validation.known_skus),
            "billing_timezone": billing_rules.timezone,
            **({"timezone_change": timezone_change} if timezone_change else {}),
            "groups_staged": validation.counts_staged or 0,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="quarantine_within_threshold",
                passed=within,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(
                    f"{validation.rows_quarantined} of {validation.rows_in} rows quarantined "
                    f"({share:.2%}); the month is {'within' if within else 'above'} the "
                    f"{threshold:.2%} threshold"
                    + ("" if within else " — fix the rows listed in quarantined_rows and re-run")
                ),
                metadata={
                    "rows_quarantined": validation.rows_quarantined,
                    "quarantined": dg.MetadataValue.text(f"{share:.2%}"),
                    "threshold": dg.MetadataValue.text(f"{threshold:.2%}"),
                    "quarantined_percent": dg.MetadataValue.float(round(100 * share, 2)),
                    "threshold_percent": dg.MetadataValue.float(round(100 * threshold, 2)),
                },
            )
        ],
    )


@dg.asset(
    owners=specs.OWNERS,
    tags=specs.stage_tags("count"),
    code_version="1",
    metadata=specs.column_schema(specs.BILLABLE_COUNTS),
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"sql"},
    deps=[validated_utilization],
    retry_policy=DB_RETRY,
)
def billable_counts(
    context: dg.AssetExecutionContext,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    billing_rules: BillingRules,
) -> dg.MaterializeResult:
    """Distinct billable users per partner x company x service for the month, counted by the
    product database in validation's pass and promoted from where that pass staged them in
    the state database (delete-then-insert per month); counted again when validated in
    another run."""
    month = billing_month(context, billing_rules)
    state = state_db.engine()
    validation = load_month_validation(state, month.month)
    if validation is None:
        raise no_retry(
            ValueError(f"{month.label} has not been validated; materialize validated_utilization first."),
            context,
        )
    previous = load_month_computation(state, month.previous().month)
    try:
        query = product_db.utilization_query()
        with product_db.connect() as conn:
            counted = store_billable_counts(conn, state, query, month, validation, context.run_id)
    except ReconciliationError as exc:
        raise no_retry(exc, context) from None
    except Exception as exc:
        raise step_failure(exc, context) from exc
    computation = counted.computation
    record_computation_timezone(state, month.month, billing_rules.timezone)
    metadata: dict[str, object] = {
        "month": month.label,
        "billing_timezone": billing_rules.timezone,
        "rows_in": computation.rows_in,
        "rows_quarantined": computation.rows_quarantined,
        "rows_counted": computation.rows_counted,
        "partners": computation.partners,
        "companies": computation.companies,
        "billable_users": computation.billable_users,
        "dagster/row_count": counted.rows,
        "counts_fingerprint": computation.counts_fingerprint,
        "counted_from": (
            "this run's validation pass (staged counts promoted)"
            if counted.staged
            else "a fresh count (the month was validated in another run), reconciled with its validation"
        ),
        "counts_preview": table_value(counted.preview, max_rows=PREVIEW_ROWS),
    }
    if previous is not None:
        delta = computation.billable_users - previous.billable_users
        metadata["billable_users_previous_month"] = previous.billable_users
        metadata["billable_users_change"] = delta
        if previous.billable_users:
            metadata["billable_users_change_pct"] = dg.MetadataValue.float(
                round(100 * delta / previous.billable_users, 2)
            )
    if computation.rows_in == 0:
        context.log.warning(f"{month.label}: the source returned no utilization at all for the month.")
    context.log.info(
        f"{month.label}: {computation.billable_users} billable users across "
        f"{computation.partners} partners and {computation.companies} companies"
    )
    return dg.MaterializeResult(metadata=metadata)
