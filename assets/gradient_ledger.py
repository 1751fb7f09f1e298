"""The ledger in the UI: per month and partner, what was sent to Gradient, what it answered
and when — read from the state database, so nobody has to open it."""

import dagster as dg
import pandas as pd

from assets import specs
from assets.gradient_load import GROUP, gradient_unit_counts
from assets.month_end import billing_month
from assets.push_signals import table_value
from pipeline.gradient import ledger
from pipeline.partitions import monthly_partitions
from pipeline.resources import BillingRules, StateDatabase

SHOWN_ROWS = 500


@dg.asset(
    owners=specs.OWNERS,
    tags=specs.stage_tags("ledger"),
    code_version="1",
    metadata=specs.column_schema(specs.LEDGER_ENTRIES),
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"sql"},
    deps=[gradient_unit_counts],
)
def gradient_ledger(
    context: dg.AssetExecutionContext, state_db: StateDatabase, billing_rules: BillingRules
) -> dg.MaterializeResult:
    """The month's ledger as it stands after the push: per partner, account and service the
    newest entry — value, outcome (delivered, unmapped, failed, superseded), Gradient's HTTP
    status and the time — with totals per partner and outcome. Materialize it on its own to
    refresh it after a failed push."""
    month = billing_month(context, billing_rules)
    frame = ledger.month_ledger(state_db.engine(), month.month)
    totals = ledger.ledger_totals(frame)
    by_outcome = frame.groupby("outcome").size().to_dict() if len(frame) else {}
    shown = frame.head(SHOWN_ROWS).assign(
        recorded_at=[t.isoformat(timespec="seconds") for t in frame.recorded_at.head(SHOWN_ROWS)],
        http_status=[int(s) if pd.notna(s) else None for s in frame.http_status.head(SHOWN_ROWS)],
    )
    metadata: dict[str, object] = {
        "month": month.label,
        "dagster/row_count": len(frame),
        "partners": dg.MetadataValue.int(int(frame.partner.nunique())),
        **{o: dg.MetadataValue.int(int(by_outcome.get(o, 0))) for o in ledger.OUTCOMES},
        "units_delivered": dg.MetadataValue.int(
            int(frame[frame.outcome == ledger.DELIVERED].value.sum()) if len(frame) else 0
        ),
        "totals": table_value(totals),
        "entries": table_value(shown, max_rows=SHOWN_ROWS),
    }
    if len(frame):
        metadata["last_recorded_at"] = dg.MetadataValue.timestamp(frame.recorded_at.max())
    if len(frame) > SHOWN_ROWS:
        metadata["entries_not_shown"] = len(frame) - SHOWN_ROWS
    return dg.MaterializeResult(metadata=metadata)
