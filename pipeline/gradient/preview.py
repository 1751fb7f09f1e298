"""Preview of a month's push: what a real run would send, computed from the state DB alone.

Nothing here calls Gradient. Per partner: the accounts the sync would create and rename
(against ``known_accounts``), the count calls ``plan_push`` would make and how each differs from
what Gradient holds per the ledger, the counts a superseded month would hold back, and the
pairs Gradient last answered as unmapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.counts import aggregate_billable_users
from pipeline.billing.month import BillingMonth
from pipeline.gradient import ledger
from pipeline.gradient.known_accounts import known_accounts
from pipeline.gradient.load import plan_push
from pipeline.source.partners import PartnerConnection, load_companies, load_connections
from pipeline.source.utilization import SourceQuery
from pipeline.store.schema import ledger_entries

CALL_COLUMNS = ["partner", "account", "account_name", "sku", "value", "gradient_holds", "held_month", "change"]


@dataclass(frozen=True)
class PlannedCall:
    """One count call a push would make (or hold back, when superseded)."""

    partner_id: str
    account_id: str
    account_name: str
    sku: str
    value: int
    held_value: int | None
    held_month: date | None

    @property
    def change(self) -> int:
        return self.value - (self.held_value or 0)


@dataclass
class PartnerPreview:
    partner_id: str
    accounts_to_create: list[tuple[str, str]] = field(default_factory=list)
    # (account id, name Gradient holds, new name)
    accounts_to_rename: list[tuple[str, str, str]] = field(default_factory=list)
    calls: list[PlannedCall] = field(default_factory=list)
    already_delivered: int = 0
    superseded_by: date | None = None
    superseded: list[PlannedCall] = field(default_factory=list)
    # (account id, account name, sku) Gradient last answered 404 for, among what would be sent
    unmapped: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.superseded_by is not None:
            return "superseded"
        return "would send" if self.calls else "nothing to send"


def last_unmapped_pairs(engine: sa.Engine, partner_id: str) -> set[tuple[str, str]]:
    """(account, sku) pairs whose newest answered entry (any month) was a 404."""
    answered = (
        sa.select(sa.func.max(ledger_entries.c.entry_id))
        .where(
            ledger_entries.c.partner_id == partner_id,
            ledger_entries.c.outcome.in_([ledger.DELIVERED, ledger.UNMAPPED]),
        )
        .group_by(ledger_entries.c.account_id, ledger_entries.c.sku)
    )
    query = sa.select(ledger_entries.c.account_id, ledger_entries.c.sku).where(
        ledger_entries.c.entry_id.in_(answered), ledger_entries.c.outcome == ledger.UNMAPPED
    )
    with engine.connect() as conn:
        return {(r.account_id, r.sku) for r in conn.execute(query)}


def preview_partner(
    engine: sa.Engine,
    partner_id: str,
    month: date,
    counts: pd.DataFrame,
    companies: Sequence[tuple[str, str]],
    service_ids: dict[str, str],
    *,
    force: bool = False,
) -> PartnerPreview:
    """One partner's preview; ``counts`` holds its (company_id, company_name, sku,
    billable_users), ``companies`` the (id, name) its account sync would send."""
    preview = PartnerPreview(partner_id)
    names = dict(companies)
    known = known_accounts(engine, partner_id)
    for account_id, name in sorted(names.items()):
        if account_id not in known:
            preview.accounts_to_create.append((account_id, name))
        elif known[account_id] != name:
            preview.accounts_to_rename.append((account_id, known[account_id], name))
    delivered = ledger.delivered_pairs(engine, partner_id)

    def call(account_id: str, sku: str, value: int) -> PlannedCall:
        held = delivered.get((account_id, sku))
        return PlannedCall(
            partner_id,
            account_id,
            names.get(account_id, known.get(account_id, "")),
            sku,
            value,
            held.value if held else None,
            held.month if held else None,
        )

    newest = ledger.newest_delivered_month(engine, partner_id)
    if newest is not None and month < newest and not force:
        preview.superseded_by = newest
        preview.superseded = [
            call(str(r.company_id), str(r.sku), int(r.billable_users)) for r in counts.itertuples(index=False)
        ]
        return preview
    plan = plan_push(month, counts, delivered, service_ids)
    preview.already_delivered = plan.already_delivered
    preview.calls = [call(c.account_id, c.sku, c.value) for c in plan.to_send]
    unmapped = last_unmapped_pairs(engine, partner_id)
    preview.unmapped = [
        (c.account_id, c.account_name, c.sku) for c in preview.calls if (c.account_id, c.sku) in unmapped
    ]
    return preview


def preview_month(
    engine: sa.Engine,
    month: date,
    counts: pd.DataFrame,
    companies: pd.DataFrame,
    partner_ids: Sequence[str],
    *,
    force: bool = False,
) -> list[PartnerPreview]:
    """The preview of every partner in ``partner_ids`` (the connected ones a run would load).

    ``counts``: the month's billable counts (partner_id, company_id, company_name, sku,
    billable_users); ``companies``: partner_id, company_id, company_name of the partners'
    companies (the month's billed companies are added, as the account sync does).
    """
    service_ids = ledger.service_ids(engine)
    billed = counts[["partner_id", "company_id", "company_name"]]
    accounts = pd.concat([companies[["partner_id", "company_id", "company_name"]], billed])
    accounts = accounts.drop_duplicates(["partner_id", "company_id"])
    out = []
    for partner_id in sorted(set(partner_ids)):
        own = accounts[accounts.partner_id == partner_id]
        out.append(
            preview_partner(
                engine,
                partner_id,
                month,
                counts[counts.partner_id == partner_id],
                [(str(r.company_id), str(r.company_name)) for r in own.itertuples(index=False)],
                service_ids,
                force=force,
            )
        )
    return out


def calls_frame(previews: Sequence[PartnerPreview]) -> pd.DataFrame:
    """Every count call the previews would make, with what Gradient holds and the change."""
    rows = [
        {
            "partner": c.partner_id,
            "account": c.account_id,
            "account_name": c.account_name,
            "sku": c.sku,
            "value": c.value,
            "gradient_holds": c.held_value,
            "held_month": f"{c.held_month:%Y-%m}" if c.held_month else "",
            "change": c.change,
        }
        for p in previews
        for c in p.calls
    ]
    return pd.DataFrame(rows, columns=CALL_COLUMNS)


def summary_frame(previews: Sequence[PartnerPreview]) -> pd.DataFrame:
    """One row per partner: what a real run would do."""
    return pd.DataFrame(
        [
            {
                "partner": p.partner_id,
                "outcome": p.outcome,
                "accounts_to_create": len(p.accounts_to_create),
                "accounts_to_rename": len(p.accounts_to_rename),
                "counts_to_send": len(p.calls),
                "units_to_send": sum(c.value for c in p.calls),
                "already_delivered": p.already_delivered,
                "superseded": len(p.superseded),
                "superseded_by": f"{p.superseded_by:%Y-%m}" if p.superseded_by else "",
                "last_unmapped": len(p.unmapped),
            }
            for p in previews
        ],
        columns=[
            "partner",
            "outcome",
            "accounts_to_create",
            "accounts_to_rename",
            "counts_to_send",
            "units_to_send",
            "already_delivered",
            "superseded",
            "superseded_by",
            "last_unmapped",
        ],
    )


def render(previews: Sequence[PartnerPreview], month: date, max_calls: int = 50) -> list[str]:
    """Lines for a person: per partner, accounts, calls with their change, superseded, unmapped."""
    lines = [f"preview of {month:%Y-%m} (nothing is sent to Gradient)"]
    if not previews:
        lines.append("  no connected partner to load")
    for p in previews:
        lines.append(
            f"{p.partner_id}: {p.outcome}; {len(p.calls)} counts to send, {p.already_delivered} already "
            f"delivered, {len(p.accounts_to_create)} accounts to create, {len(p.accounts_to_rename)} to rename"
        )
        for account_id, name in p.accounts_to_create:
            lines.append(f"  create account {account_id} {name!r}")
        for account_id, old, new in p.accounts_to_rename:
            lines.append(f"  rename account {account_id} {old!r} -> {new!r}")
        if p.superseded_by is not None:
            lines.append(
                f"  superseded: Gradient holds {p.superseded_by:%Y-%m}; {len(p.superseded)} counts would be "
                f"recorded, not sent (force with `gradient-billing-sync run --month {month:%Y-%m} --force-superseded`)"
            )
        for c in p.calls[:max_calls]:
            held = "nothing" if c.held_value is None else f"{c.held_value} ({c.held_month:%Y-%m})"
            lines.append(
                f"  send {c.account_id} {c.account_name!r} {c.sku}: {c.value} (Gradient holds {held}, "
                f"change {c.change:+d})"
            )
        if len(p.calls) > max_calls:
            lines.append(f"  ... {len(p.calls) - max_calls} more counts")
        for account_id, name, sku in p.unmapped:
            lines.append(f"  unmapped when last sent: {account_id} {name!r} {sku}")
    return lines


class PreviewRequestError(ValueError):
    """A preview asked for something that cannot be previewed (unknown or disconnected partner,
    a month outside the billing range); nothing was computed."""


def preview_targets(
    connections: Sequence[PartnerConnection],
    partner_ids: Sequence[str],
    month: BillingMonth,
    first_month: date,
    now: datetime,
) -> list[str]:
    """The partners a preview of ``month`` covers (``partner_ids``, else every connected
    partner), after checking the request: the month is a closed billing month not before
    ``first_month``, and each partner asked for exists and is connected."""
    if month.month < first_month:
        raise PreviewRequestError(
            f"{month.label} is before the first billing month {first_month:%Y-%m} (FIRST_BILLING_MONTH); "
            f"preview a month from {first_month:%Y-%m} on."
        )
    if month.end > now:
        raise PreviewRequestError(
            f"{month.label} has not closed yet (it ends {month.end:%Y-%m-%d %H:%M %Z}); preview a closed month."
        )
    connected = sorted(c.partner_id for c in connections if c.is_connected)
    known = {c.partner_id: c for c in connections}
    problems = []
    for partner_id in dict.fromkeys(partner_ids):
        if partner_id not in known:
            problems.append(f"no connected partner {partner_id[:80]!r} (the product has no Gradient connection for it)")
        elif not known[partner_id].is_connected:
            problems.append(
                f"no connected partner {partner_id[:80]!r} (its Gradient connection is {known[partner_id].state})"
            )
    if problems:
        shown = ", ".join(connected[:20]) + (f" and {len(connected) - 20} more" if len(connected) > 20 else "")
        raise PreviewRequestError("; ".join(problems) + f". Connected: {shown or 'none'}.")
    return list(dict.fromkeys(partner_ids)) or connected


@dataclass(frozen=True)
class MonthPreview:
    month: BillingMonth
    partners: list[PartnerPreview]
    groups_counted: int


def preview_request(
    product: sa.Connection,
    state: sa.Engine,
    query: SourceQuery,
    month: BillingMonth,
    known_skus: Sequence[str],
    partner_ids: Sequence[str],
    *,
    first_month: date,
    now: datetime,
    connections_sql: str | None = None,
    companies_sql: str | None = None,
    force: bool = False,
) -> MonthPreview:
    """A whole preview, writing nothing anywhere: the request is checked first
    (``preview_targets``: raises ``PreviewRequestError`` before any row is counted), then the
    product database counts the month's billable users (the rows breaking no validation rule,
    as a run counts them) and the plan is read against the ledger. The month's stored counts,
    the ledger, the quarantine and the known accounts are left as they were."""
    targets = preview_targets(load_connections(product, connections_sql), partner_ids, month, first_month, now)
    counts = aggregate_billable_users(product, query, month, known_skus).counts
    companies = load_companies(product, companies_sql)
    return MonthPreview(month, preview_month(state, month.month, counts, companies, targets, force=force), len(counts))
