"""Partner statements: per partner and month, what each company used and what Gradient took.

One row per (company, service): billable users this month, last month and the change, then the
value the ledger says was sent for the month and what Gradient answered (delivered, unmapped,
failed, superseded, or not sent). Written as a CSV and a self-contained HTML page the partner
checks its invoice against; optionally e-mailed to the partner's contacts.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from pipeline import settings
from pipeline.billing.month import add_months
from pipeline.gradient import ledger
from pipeline.mail import DEFAULT_SENDER, SmtpTarget, build_message, parse_smtp_url, send
from pipeline.settings import ConfigurationError
from pipeline.source.utilization import SourceQuery
from pipeline.store.months import load_billable_counts, load_month_computation
from pipeline.store.schema import ledger_entries

NOT_SENT = "not sent"
COLUMNS = [
    "company_id", "company_name", "sku", "service", "billable_users", "previous_month_users",
    "change", "sent_value", "gradient_outcome", "http_status", "recorded_at",
]
OUTCOME_TEXT = {
    ledger.DELIVERED: "delivered: Gradient holds this value",
    ledger.UNMAPPED: "unmapped: map this account and service in Gradient",
    ledger.FAILED: "failed: will be sent again on the next run",
    ledger.SUPERSEDED: "superseded: Gradient already holds a newer month",
    NOT_SENT: "not sent: no active Gradient connection, or the push stopped before this line (a re-run sends it)",
}
CONTACT_COLUMNS = ("partner_id", "email")


@dataclass(frozen=True)
class StatementSettings:
    """Where statements go and whether they are e-mailed (off unless both are set)."""

    directory: Path | None
    smtp: SmtpTarget | None
    contacts_sql: str | None
    sender: str

    @classmethod
    def from_env(cls) -> StatementSettings:
        config = settings.load_settings()
        smtp_url = config.statements_smtp_url
        return cls(
            directory=config.statements_dir,
            smtp=parse_smtp_url(smtp_url.get_secret_value(), "STATEMENTS_SMTP_URL") if smtp_url else None,
            contacts_sql=config.partner_contacts_sql,
            sender=config.statements_email_from or DEFAULT_SENDER,
        )

    def month_dir(self, month: date) -> Path:
        """``STATEMENTS_DIR/<YYYY-MM>``, or ``<data dir>/statements/<YYYY-MM>`` by default."""
        base = self.directory or settings.data_dir() / "statements"
        return base / month.strftime("%Y-%m")

    @property
    def emails(self) -> bool:
        return self.smtp is not None and self.contacts_sql is not None


@dataclass(frozen=True)
class Statement:
    partner_id: str
    month: date
    rows: pd.DataFrame
    newer_month_in_gradient: date | None

    @property
    def label(self) -> str:
        return self.month.strftime("%Y-%m")

    def totals(self) -> dict[str, int]:
        """Billable users, and the units the ledger recorded per outcome."""
        rows = self.rows
        out = {"billable_users": int(rows["billable_users"].sum()) if len(rows) else 0}
        for outcome in (*ledger.OUTCOMES, NOT_SENT):
            chosen = rows[rows["gradient_outcome"] == outcome]
            out[f"{outcome.replace(' ', '_')}_units"] = int(chosen["sent_value"].fillna(0).sum())
            out[f"{outcome.replace(' ', '_')}_pairs"] = len(chosen)
        return out


def latest_entries(state: sa.Engine, month: date) -> pd.DataFrame:
    """The newest ledger entry of every (partner, account, sku) for the month."""
    newest = (
        sa.select(sa.func.max(ledger_entries.c.entry_id))
        .where(ledger_entries.c.month == month)
        .group_by(ledger_entries.c.partner_id, ledger_entries.c.account_id, ledger_entries.c.sku)
    )
    query = sa.select(
        ledger_entries.c.partner_id,
        ledger_entries.c.account_id.label("company_id"),
        ledger_entries.c.sku,
        ledger_entries.c.value.label("sent_value"),
        ledger_entries.c.outcome.label("gradient_outcome"),
        ledger_entries.c.http_status,
        ledger_entries.c.recorded_at,
    ).where(ledger_entries.c.entry_id.in_(newest))
    with state.connect() as conn:
        rows = conn.execute(query).all()
    return pd.DataFrame.from_records(
        rows,
        columns=["partner_id", "company_id", "sku", "sent_value", "gradient_outcome", "http_status", "recorded_at"],
    )


def service_names(state: sa.Engine) -> dict[str, str]:
    from pipeline.store.schema import gradient_services

    with state.connect() as conn:
        return {r.sku: r.name for r in conn.execute(sa.select(gradient_services.c.sku, gradient_services.c.name))}


def partner_statements(state: sa.Engine, month: date) -> list[Statement]:
    """One statement per partner with counts or ledger entries in the month or the one before."""
    keys = ["partner_id", "company_id", "sku"]
    current = load_billable_counts(state, month)
    previous = load_billable_counts(state, add_months(month, -1))
    sent = latest_entries(state, month)
    names = pd.concat([current, previous])[["partner_id", "company_id", "company_name"]]
    names = names.drop_duplicates(["partner_id", "company_id"])
    frame = (
        current[keys + ["billable_users"]]
        .merge(
            previous[keys + ["billable_users"]].rename(columns={"billable_users": "previous_month_users"}),
            on=keys,
            how="outer",
        )
        .merge(sent, on=keys, how="outer")
        .merge(names, on=["partner_id", "company_id"], how="left")
    )
    for column in ("billable_users", "previous_month_users", "sent_value", "http_status"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    # A pair only in last month is part of this one only if it was billed (sent as 0) or
    # is still billable; a pair nobody used either month is not a line.
    frame = frame[frame["billable_users"].notna() | frame["gradient_outcome"].notna()
                  | (frame["previous_month_users"].fillna(0) > 0)]
    frame["billable_users"] = frame["billable_users"].fillna(0).astype(int)
    if load_month_computation(state, add_months(month, -1)) is not None:
        # last month was counted: a pair it did not have had 0 users then
        frame["previous_month_users"] = frame["previous_month_users"].fillna(0)
    # else last month was never counted: no previous value and no change to show
    frame["previous_month_users"] = frame["previous_month_users"].astype("Int64")
    frame["change"] = frame["billable_users"].astype("Int64") - frame["previous_month_users"]
    frame["gradient_outcome"] = frame["gradient_outcome"].fillna(NOT_SENT)
    frame["sent_value"] = frame["sent_value"].astype("Int64")
    frame["http_status"] = frame["http_status"].astype("Int64")
    frame["company_name"] = frame["company_name"].fillna(frame["company_id"])
    skus = service_names(state)
    frame["service"] = frame["sku"].map(lambda s: skus.get(s, s))
    statements = []
    for partner_id, rows in frame.groupby("partner_id", sort=True):
        rows = rows.sort_values(["company_name", "company_id", "sku"])[COLUMNS].reset_index(drop=True)
        newest = ledger.newest_delivered_month(state, str(partner_id))
        statements.append(
            Statement(
                partner_id=str(partner_id),
                month=month,
                rows=rows,
                newer_month_in_gradient=newest if newest is not None and newest > month else None,
            )
        )
    return statements


def write_csv(statement: Statement, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{statement.partner_id}-{statement.label}.csv"
    out = statement.rows.copy()
    out["recorded_at"] = out["recorded_at"].map(_timestamp_text)
    out.to_csv(path, index=False)
    return path


def write_html(statement: Statement, directory: Path, generated_at: datetime | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{statement.partner_id}-{statement.label}.html"
    path.write_text(render_html(statement, generated_at or datetime.now(UTC)), encoding="utf-8")
    return path


def _timestamp_text(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _cell(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return html.escape(str(value))


def _signed(value: object) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"+{int(value)}" if int(value) > 0 else str(int(value))


STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin-top: .5em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tfoot td { font-weight: bold; }
.note { background: #fff6d6; border: 1px solid #e6c200; padding: .6em 1em; }
.delivered { color: #176b2c; } .unmapped, .superseded { color: #8a5a00; } .failed { color: #b00020; }
"""


def render_html(statement: Statement, generated_at: datetime) -> str:
    """A page that needs nothing else: inline style, every value from the data escaped."""
    totals = statement.totals()
    partner = html.escape(statement.partner_id)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Usage statement {partner} {statement.label}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Usage statement — partner {partner}, {statement.label}</h1>",
        f"<p>Billable users per company and service for {statement.label}, the change against the "
        "month before, and what Gradient acknowledged for each line. Generated "
        f"{generated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    if statement.newer_month_in_gradient is not None:
        parts.append(
            '<p class="note">This month was computed after a newer month '
            f"({statement.newer_month_in_gradient:%Y-%m}) had been delivered, so it was not pushed to "
            "Gradient (Gradient keeps only the latest value). These are the month's numbers for your "
            "records and invoice.</p>"
        )
    parts.append(
        "<table><thead><tr><th>Total billable users</th><th>Delivered units</th><th>Unmapped units</th>"
        "<th>Failed units</th><th>Superseded units</th></tr></thead><tbody><tr>"
        f'<td class="n">{totals["billable_users"]}</td><td class="n">{totals["delivered_units"]}</td>'
        f'<td class="n">{totals["unmapped_units"]}</td><td class="n">{totals["failed_units"]}</td>'
        f'<td class="n">{totals["superseded_units"]}</td></tr></tbody></table>'
    )
    for (company_id, company_name), rows in statement.rows.groupby(["company_id", "company_name"], sort=False):
        parts.append(f"<h2>{_cell(company_name)} <small>({_cell(company_id)})</small></h2>")
        parts.append(
            "<table><thead><tr><th>Service</th><th>Billable users</th><th>Previous month</th>"
            "<th>Change</th><th>Sent to Gradient</th><th>Gradient</th><th>When</th></tr></thead><tbody>"
        )
        for row in rows.itertuples(index=False):
            outcome = str(row.gradient_outcome)
            parts.append(
                f"<tr><td>{_cell(row.service)}</td><td class=\"n\">{row.billable_users}</td>"
                f"<td class=\"n\">{_cell(row.previous_month_users)}</td>"
                f"<td class=\"n\">{_signed(row.change)}</td><td class=\"n\">{_cell(row.sent_value)}</td>"
                f"<td class=\"{html.escape(outcome.replace(' ', '-'))}\">{html.escape(outcome)}</td>"
                f"<td>{html.escape(_timestamp_text(row.recorded_at))}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts.append("<h2>What the Gradient column means</h2><ul>")
    parts.extend(f"<li>{html.escape(text)}</li>" for text in OUTCOME_TEXT.values())
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def preview_markdown(statements: Sequence[Statement]) -> str:
    """One line per partner: totals, for the asset's metadata."""
    lines = [
        "| partner | billable users | delivered | unmapped | failed | superseded | not sent |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in statements:
        t = s.totals()
        lines.append(
            f"| {s.partner_id} | {t['billable_users']} | {t['delivered_units']} | {t['unmapped_units']} "
            f"| {t['failed_units']} | {t['superseded_units']} | {t['not_sent_units']} |"
        )
    return "\n".join(lines)


def load_contacts(conn: sa.Connection, sql_path: str) -> dict[str, list[str]]:
    """partner_id -> e-mail addresses, from the PARTNER_CONTACTS_SQL query."""
    query = SourceQuery.load(sql_path)
    result = conn.execute(sa.text(query.sql))
    missing = [c for c in CONTACT_COLUMNS if c not in result.keys()]
    if missing:
        raise ConfigurationError(
            f"the query {query.path!r} (PARTNER_CONTACTS_SQL) does not return {', '.join(missing)}; "
            "it must return partner_id, email."
        )
    contacts: dict[str, list[str]] = {}
    for row in result.mappings():
        email = str(row["email"] or "").strip()
        if email:
            contacts.setdefault(str(row["partner_id"]), []).append(email)
    return contacts


def email_statement(
    target: SmtpTarget, sender: str, recipients: Sequence[str], statement: Statement, files: Iterable[Path]
) -> None:
    totals = statement.totals()
    body = (
        f"Your usage statement for {statement.label} is attached (CSV and HTML).\n\n"
        f"Billable users: {totals['billable_users']}\n"
        f"Delivered to Gradient: {totals['delivered_units']} units\n"
    )
    if statement.newer_month_in_gradient is not None:
        body += (
            f"\nThis month was not pushed to Gradient: Gradient already holds "
            f"{statement.newer_month_in_gradient:%Y-%m}.\n"
        )
    send(target, build_message(sender, recipients, f"Usage statement {statement.label}", body, list(files)))
