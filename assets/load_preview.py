"""The preview of a month's push as its own op job, ``gradient_preview``: what a run of the
month would send, per partner, with nothing sent to Gradient and nothing written anywhere.

Why an op job and not the load assets with a ``preview`` flag: a run of the assets
materializes them, so a preview claimed the month (green in the Partitions tab) and its
counts became the stored ones a later ``explain`` and push read. An op job has no asset to
claim: the run is partitioned by month (it shows in the runs list with the month), its plan is
the op's output metadata in the run's page, and no asset, check, stored count or ledger entry
changes. Thin: the request check and the plan are ``pipeline.gradient.preview``.
"""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from assets.metadata_values import SHOWN_ROWS, most_important, table_value
from pipeline.automation.jobs import run_tags
from pipeline.billing.month import BillingMonth
from pipeline.gradient.preview import PreviewRequestError, calls_frame, preview_request, summary_frame
from pipeline.partitions import first_billing_month, monthly_partitions
from pipeline.resources import BillingRules, PartnerSources, ProductDatabase, StateDatabase, step_failure

NOTE = "preview: nothing was sent to Gradient and nothing was recorded"
PLANNED_ROWS = 100
SUMMARY_RANK = {"superseded": 0, "would send": 1, "nothing to send": 2}


class GradientPreviewConfig(dg.Config):
    """Which partners the preview covers, and whether it previews a forced push."""

    partner_ids: list[str] = Field(
        default=[], description='Partner ids to preview (e.g. ["p-001"]); empty = every connected partner.'
    )
    force_superseded: bool = Field(
        default=False, description="Preview a forced push of a month older than the newest delivered one."
    )


@dg.op(
    description="What a run of the month would send to Gradient, per partner; sends and writes nothing.",
    tags={"kind": "gradient"},
)
def preview_month_push(
    context: dg.OpExecutionContext,
    config: GradientPreviewConfig,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    partner_sources: PartnerSources,
    billing_rules: BillingRules,
) -> dg.Output[None]:
    month = BillingMonth.from_partition_key(context.partition_key, billing_rules.timezone)
    try:
        query = product_db.utilization_query()
        with product_db.connect() as conn:
            preview = preview_request(
                conn,
                state_db.engine(),
                query,
                month,
                product_db.known_skus(conn),
                config.partner_ids,
                first_month=first_billing_month(),
                now=datetime.now(UTC),
                connections_sql=partner_sources.connections_sql,
                companies_sql=partner_sources.companies_sql,
                force=config.force_superseded,
            )
    except PreviewRequestError as exc:
        raise dg.Failure(description=f"nothing previewed: {exc}", allow_retries=False) from None
    except Exception as exc:
        raise step_failure(exc, context) from exc
    summary = summary_frame(preview.partners)
    calls = calls_frame(preview.partners)
    shown = most_important(summary, summary.outcome.map(lambda o: SUMMARY_RANK.get(o, 0)))
    context.instance.add_run_tags(context.run_id, {"gbs/outcome": "preview"})
    return dg.Output(
        None,
        metadata={
            "note": NOTE,
            "month": month.label,
            "partners": len(preview.partners),
            "counts_to_send": dg.MetadataValue.int(len(calls)),
            "units_to_send": dg.MetadataValue.int(int(calls.value.sum()) if len(calls) else 0),
            "superseded_partners": dg.MetadataValue.int(sum(1 for p in preview.partners if p.superseded_by)),
            "last_unmapped": dg.MetadataValue.int(sum(len(p.unmapped) for p in preview.partners)),
            "accounts_to_create": dg.MetadataValue.int(sum(len(p.accounts_to_create) for p in preview.partners)),
            "accounts_to_rename": dg.MetadataValue.int(sum(len(p.accounts_to_rename) for p in preview.partners)),
            "per_partner": table_value(shown, max_rows=SHOWN_ROWS),
            "partners_not_shown": len(summary) - len(shown),
            "planned_counts": table_value(calls, max_rows=PLANNED_ROWS),
            "planned_counts_not_shown": max(0, len(calls) - PLANNED_ROWS),
        },
    )


@dg.job(
    name="gradient_preview",
    partitions_def=monthly_partitions,
    tags=run_tags("preview"),
    description="Preview a month's push: what a run would send per partner (accounts to create "
    "and rename, counts and their change against what Gradient holds per the ledger, superseded "
    "and unmapped pairs). Checks the partners and the month first; sends nothing, writes no "
    "count, ledger entry or materialization.",
)
def gradient_preview() -> None:
    preview_month_push()
