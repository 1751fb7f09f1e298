"""``gradient-billing-sync preview``: what a run of a month would send, sending nothing."""

from __future__ import annotations

import sys
from datetime import UTC

import click


@click.command("preview")
@click.option("--month", required=True, help="Billing month to preview (YYYY-MM).")
@click.option(
    "--partner",
    "partner_ids",
    multiple=True,
    help="Preview only this partner (repeatable); default every connected partner.",
)
@click.option(
    "--force-superseded", is_flag=True, help="Preview a forced push of a month older than the newest delivered one."
)
@click.option("--max-counts", default=50, show_default=True, help="Count calls listed per partner.")
def preview(month, partner_ids, force_superseded, max_counts) -> None:
    """Check the partners and the month, count the month in the product database and show per
    partner the accounts a run would create and rename, the counts it would send and how each
    differs from what Gradient holds per the ledger, what is superseded and what was unmapped.
    Sends nothing to Gradient and writes nothing: no stored count, ledger entry or Dagster run."""
    from datetime import datetime

    from pipeline.cli.common import partition_month
    from pipeline.gradient.preview import PreviewRequestError, preview_request, render
    from pipeline.partitions import first_billing_month
    from pipeline.resources import default_resources

    month = partition_month(month)  # checked against the partitions before anything is read
    resources = default_resources(env_vars=False)
    product, sources, state = resources["product_db"], resources["partner_sources"], resources["state_db"]
    try:
        with product.connect() as conn:
            result = preview_request(
                conn,
                state.engine(),
                product.utilization_query(),
                month,
                product.known_skus(conn),
                list(partner_ids),
                first_month=first_billing_month(),
                now=datetime.now(UTC),
                connections_sql=sources.connections_sql,
                companies_sql=sources.companies_sql,
                force=force_superseded,
            )
    except PreviewRequestError as exc:
        raise click.ClickException(f"nothing previewed: {exc}") from None
    click.echo("\n".join(render(result.partners, month.month, max_counts)))
    sys.exit(0)
