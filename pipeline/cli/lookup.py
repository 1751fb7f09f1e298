"""Is a partner / company / service the operator names one the pipeline knows?

``explain`` asks before tracing, so a typo is an error (exit 1) naming what is known, not an
empty trace that reads like "this company had no users".
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from pipeline.gradient import ledger
from pipeline.source.partners import load_companies
from pipeline.store.months import load_billable_counts

SHOWN = 10


def _some(values: set[str]) -> str:
    ordered = sorted(values)
    more = f" and {len(ordered) - SHOWN} more" if len(ordered) > SHOWN else ""
    return (", ".join(ordered[:SHOWN]) + more) or "none"


def unknown_pair(
    product: sa.Connection,
    state: sa.Engine,
    companies_sql: str | None,
    month: date,
    known_skus: list[str],
    partner_id: str,
    company_id: str,
    sku: str,
) -> str | None:
    """Why (partner, company, sku) names nothing the product or the month knows, else None."""
    label = month.strftime("%Y-%m")
    companies = load_companies(product, companies_sql)
    counts = load_billable_counts(state, month)
    entries = ledger.entries_for(state, month)
    partners = set(companies.partner_id) | set(counts.partner_id) | {e["partner_id"] for e in entries}
    if partner_id not in partners:
        return (
            f"unknown partner {partner_id!r}: no company of it in the product (COMPANIES_SQL) and no count "
            f"or ledger entry in {label}. Known partners: {_some(partners)}."
        )
    theirs = (
        set(companies[companies.partner_id == partner_id].company_id)
        | set(counts[counts.partner_id == partner_id].company_id)
        | {e["account_id"] for e in entries if e["partner_id"] == partner_id}
    )
    if company_id not in theirs:
        return (
            f"unknown company {company_id!r} for partner {partner_id}: not among its companies in the "
            f"product nor in {label}'s counts or ledger. Its companies: {_some(theirs)}."
        )
    skus = set(known_skus) | set(counts.sku) | {e["sku"] for e in entries}
    if sku not in skus:
        return f"unknown service {sku!r}: not a SKU of SERVICES_SQL nor in {label}'s counts. Known: {_some(skus)}."
    return None
