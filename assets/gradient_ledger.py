"""The ledger in the UI: per month and partner, what was sent to Gradient, what it answered
and when — read from the state database, so nobody has to open it.

``gradient_ledger`` is the second asset of the push step (``assets.gradient_load``): every push
rewrites the month's ledger, superseded and failed ones too. Its metadata stays the same size
whatever the number of partners: totals, then the partners and entries that matter most
(failed, unmapped, superseded first); the full list is the state database's ``ledger_entries``
(``gradient-billing-sync explain`` traces one number).
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from assets.metadata_values import SHOWN_ROWS, most_important, table_value
from pipeline.gradient import ledger

#: Ledger entries shown in the asset's metadata, most important first.
SHOWN_ENTRIES = 50
DETAIL_CHARS = 200
OUTCOME_RANK = {ledger.FAILED: 0, ledger.UNMAPPED: 1, ledger.SUPERSEDED: 2, ledger.DELIVERED: 3}
FULL_LIST = (
    "every entry: the ledger_entries table of the state database (newest per partner, account and "
    "service); one number traced to its users and entries: gradient-billing-sync explain"
)


def partner_totals(frame: pd.DataFrame) -> pd.DataFrame:
    """Per partner: pairs per outcome and the units delivered, partners with failed, unmapped or
    superseded pairs first (most of them first)."""
    columns = ["partner", *ledger.OUTCOMES, "units_delivered"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    pairs = frame.pivot_table(index="partner", columns="outcome", values="account", aggfunc="size", fill_value=0)
    pairs = pairs.reindex(columns=list(ledger.OUTCOMES), fill_value=0).astype(int)
    units = frame[frame.outcome == ledger.DELIVERED].groupby("partner").value.sum()
    table = pairs.assign(units_delivered=units.reindex(pairs.index, fill_value=0).astype(int)).reset_index()
    return table.sort_values(
        [ledger.FAILED, ledger.UNMAPPED, ledger.SUPERSEDED, "partner"], ascending=[False, False, False, True]
    )[columns].reset_index(drop=True)


def ledger_result(asset_key: str, month_label: str, frame: pd.DataFrame) -> dg.MaterializeResult:
    """The month's ledger (``ledger.month_ledger``) as a bounded materialization: counts per
    outcome, the ``SHOWN_ROWS`` partners and ``SHOWN_ENTRIES`` entries that matter most."""
    by_outcome = frame.groupby("outcome").size().to_dict() if len(frame) else {}
    partners = partner_totals(frame)
    entries = most_important(frame, frame.outcome.map(lambda o: OUTCOME_RANK.get(o, 0)), SHOWN_ENTRIES)
    entries = entries.assign(
        recorded_at=[t.isoformat(timespec="seconds") for t in entries.recorded_at],
        http_status=[int(s) if pd.notna(s) else None for s in entries.http_status],
        detail=[str(d)[:DETAIL_CHARS] for d in entries.detail],
    )
    totals = (
        frame.groupby("outcome", as_index=False).agg(pairs=("account", "size"), units=("value", "sum"))
        if len(frame)
        else pd.DataFrame(columns=["outcome", "pairs", "units"])
    )
    metadata: dict[str, object] = {
        "month": month_label,
        "dagster/row_count": len(frame),
        "partners": dg.MetadataValue.int(int(frame.partner.nunique())),
        **{o: dg.MetadataValue.int(int(by_outcome.get(o, 0))) for o in ledger.OUTCOMES},
        "units_delivered": dg.MetadataValue.int(
            int(frame[frame.outcome == ledger.DELIVERED].value.sum()) if len(frame) else 0
        ),
        "totals": table_value(totals),
        "per_partner": table_value(partners, max_rows=SHOWN_ROWS),
        "partners_not_shown": max(0, len(partners) - SHOWN_ROWS),
        "entries": table_value(entries, max_rows=SHOWN_ENTRIES),
        "entries_not_shown": len(frame) - len(entries),
        "full_list": FULL_LIST,
    }
    if len(frame):
        metadata["last_recorded_at"] = dg.MetadataValue.timestamp(frame.recorded_at.max())
    return dg.MaterializeResult(asset_key=asset_key, metadata=metadata)
