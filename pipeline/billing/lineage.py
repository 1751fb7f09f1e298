"""Lineage: from a number Gradient received back to the source rows that made it.

For one (partner, company, sku, month) this reruns the month's contract query with the
same rules (``pipeline.validation.rules``), window and billable filter the count used, and lists the users and
spans behind the number, next to what was stored and what the ledger says was sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.gradient import ledger
from pipeline.source.utilization import SourceQuery, month_parameters
from pipeline.store.months import (
    load_billable_counts,
    load_month_computation,
    load_month_validation,
)
from pipeline.validation.rules import (
    billable_true,
    bind_known_skus,
    display,
    ident,
    overlap_sql,
    prepare_connection,
    text_of,
    valid_row_sql,
)


def source_rows_behind(
    conn: sa.Connection,
    query: SourceQuery,
    month: BillingMonth,
    known_skus: list[str],
    partner_id: str,
    company_id: str,
    sku: str,
) -> pd.DataFrame:
    """The contract rows of the pair that break no rule, are billable and overlap the month
    (user, span as text: a span may end in a year no driver reads)."""
    dialect = conn.dialect.name
    prepare_connection(conn)
    key = lambda c: ident(c, dialect)  # noqa: E731
    sql = f"""
SELECT user_id, {display("active_from", dialect)} AS active_from, {display("active_to", dialect)} AS active_to
FROM (
{query.sql}
) AS utilization
WHERE {valid_row_sql(dialect)}
  AND {billable_true(dialect)}
  AND {overlap_sql(dialect)}
  AND {key("partner_id")} = :lineage_partner AND {key("company_id")} = :lineage_company
  AND {key("sku")} = :lineage_sku
ORDER BY 1, 2
"""
    params = {
        **month_parameters(month, dialect),
        "known_skus": list(known_skus),
        "lineage_partner": partner_id,
        "lineage_company": company_id,
        "lineage_sku": sku,
    }
    rows = conn.execute(bind_known_skus(sql), params).all()
    return pd.DataFrame.from_records(
        [(r.user_id, text_of(r.active_from), text_of(r.active_to)) for r in rows],
        columns=["user_id", "active_from", "active_to"],
    )


@dataclass(frozen=True)
class Explanation:
    month: BillingMonth
    partner_id: str
    company_id: str
    sku: str
    stored: int | None
    counted_by_run: str | None
    query_sha256: str | None
    source_rows: pd.DataFrame
    ledger: list[dict]

    @property
    def source_users(self) -> int:
        return int(self.source_rows["user_id"].nunique()) if len(self.source_rows) else 0

    def lines(self) -> list[str]:
        head = f"{self.month.label} {self.partner_id} / {self.company_id} / {self.sku}"
        out = [
            head,
            f"  stored billable users: {self.stored if self.stored is not None else 'none'}"
            + (f" (run {self.counted_by_run}, query {self.query_sha256[:12]})" if self.counted_by_run else ""),
            f"  source now: {self.source_users} distinct billable users in {len(self.source_rows)} spans",
        ]
        if self.stored is not None and self.stored != self.source_users:
            out.append("  the source changed since the month was counted: re-run the month")
        for row in self.source_rows.itertuples(index=False):
            out.append(f"    {row.user_id}  [{row.active_from}, {row.active_to or 'open'})")
        out.append(f"  ledger ({len(self.ledger)} entries):")
        for e in self.ledger:
            status = f" HTTP {e['http_status']}" if e["http_status"] else ""
            out.append(
                f"    {e['recorded_at']:%Y-%m-%d %H:%M:%S} {e['outcome']:<10} value {e['value']}"
                f"{status} service {e['service_id'] or '-'} run {e['run_id']}"
            )
        return out


def explain(
    product: sa.Connection,
    state: sa.Engine,
    query: SourceQuery,
    month: BillingMonth,
    partner_id: str,
    company_id: str,
    sku: str,
) -> Explanation:
    validation = load_month_validation(state, month.month)
    computation = load_month_computation(state, month.month)
    if validation is None:
        raise LookupError(f"{month.label} has not been validated yet; run the month first.")
    counts = load_billable_counts(state, month.month)
    match = counts[(counts.partner_id == partner_id) & (counts.company_id == company_id) & (counts.sku == sku)]
    entries = [
        e
        for e in ledger.entries_for(state, month.month, [partner_id])
        if e["account_id"] == company_id and e["sku"] == sku
    ]
    return Explanation(
        month=month,
        partner_id=partner_id,
        company_id=company_id,
        sku=sku,
        stored=int(match.billable_users.iloc[0]) if len(match) else None,
        counted_by_run=computation.run_id if computation else None,
        query_sha256=computation.query_sha256 if computation else None,
        source_rows=source_rows_behind(product, query, month, validation.known_skus, partner_id, company_id, sku),
        ledger=entries,
    )
