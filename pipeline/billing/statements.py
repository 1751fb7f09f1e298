"""Partner statements: per partner and month, what each company used and what Gradient holds.

Two views of the month a partner's admin reads separately: billable users per company and
service (with last month and the change), and the units in Gradient — this month's unit count
of each line, what Gradient answered to it (delivered, unmapped, failed, superseded, or not
sent) and what Gradient holds now (value and month, from the ledger). Written per partner as a
CSV and a self-contained HTML page (jinja2 with autoescape), optionally e-mailed to the
partner's contacts. Every value from the product leaves through ``pipeline.outputs``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path

import jinja2
import pandas as pd
import sqlalchemy as sa

from pipeline import outputs, settings
from pipeline.billing.month import add_months
from pipeline.gradient import ledger
from pipeline.mail import DEFAULT_SENDER, SmtpTarget, build_message, parse_smtp_url, send
from pipeline.settings import ConfigurationError
from pipeline.source.partners import load_partner_names
from pipeline.source.utilization import SourceQuery
from pipeline.store.months import load_billable_counts, load_month_computation
from pipeline.store.schema import ledger_entries

NOT_SENT = "not sent"
# the statement's lines, one per (company, service)
LINE_COLUMNS = [
    "company_id",
    "company_name",
    "sku",
    "service",
    "billable_users",
    "previous_month_users",
    "change",
    "units",
    "gradient_outcome",
    "http_status",
    "recorded_at",
    "gradient_holds_units",
    "gradient_holds_month",
]
# the CSV: the lines with the partner and the month on each row
CSV_COLUMNS = ["partner_id", "partner_name", "month", *LINE_COLUMNS]
OUTCOME_TEXT = {
    ledger.DELIVERED: "Gradient acknowledged this month's value and holds it",
    ledger.UNMAPPED: "Gradient received the value but the account or service is not mapped to your PSA: "
    "map it in Gradient",
    ledger.FAILED: "Gradient did not take the value; the vendor sends it again on the next run",
    ledger.SUPERSEDED: 'not pushed: Gradient already holds a newer month (see "Gradient holds now")',
    ledger.DROPPED: "Gradient deleted the account this value was delivered to; the vendor creates the "
    "account again and re-sends the value on the next run",
    NOT_SENT: "not sent: no active Gradient connection, or the push stopped before this line (a re-run sends it)",
}
CONTACT_COLUMNS = ("partner_id", "email")
TITLE_CHARS = 200  # a partner or company name longer than this is shortened in titles and subjects


class MonthNotCountedError(LookupError):
    """The month's statements were asked for, but the month was never counted."""


@dataclass(frozen=True)
class StatementSettings:
    """Where statements go and whether they are e-mailed (off unless both are set)."""

    directory: Path | None
    smtp: SmtpTarget | None
    contacts_sql: str | None
    sender: str
    partners_sql: str | None = None

    @classmethod
    def from_env(cls) -> StatementSettings:
        config = settings.load_settings()
        smtp_url = config.statements_smtp_url
        return cls(
            directory=config.statements_dir,
            smtp=parse_smtp_url(smtp_url.get_secret_value(), "STATEMENTS_SMTP_URL") if smtp_url else None,
            contacts_sql=config.partner_contacts_sql,
            sender=config.statements_email_from or DEFAULT_SENDER,
            partners_sql=config.partners_sql,
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
    rows: pd.DataFrame  # LINE_COLUMNS
    newer_month_in_gradient: date | None
    partner_name: str | None = None

    @property
    def label(self) -> str:
        return self.month.strftime("%Y-%m")

    @property
    def title(self) -> str:
        """The partner's name, else its id (what titles, subjects and metadata show)."""
        return self.partner_name or self.partner_id

    @property
    def file_stem(self) -> str:
        return f"{outputs.statement_file_stem(self.partner_id)}-{self.label}"

    def totals(self) -> dict[str, int]:
        """Billable users, and this month's units and lines per Gradient outcome (``not_sent``
        included: the units a push would have sent)."""
        rows = self.rows
        out = {"billable_users": int(rows["billable_users"].sum()) if len(rows) else 0}
        for outcome in (*ledger.OUTCOMES, ledger.DROPPED, NOT_SENT):
            chosen = rows[rows["gradient_outcome"] == outcome]
            key = outcome.replace(" ", "_")
            out[f"{key}_units"] = int(chosen["units"].sum()) if len(chosen) else 0
            out[f"{key}_pairs"] = len(chosen)
        return out


def require_counted(state: sa.Engine, month: date) -> None:
    """Refuse a month that was never counted: it has no statement, only a wrong "0"."""
    if load_month_computation(state, month) is None:
        label = month.strftime("%Y-%m")
        raise MonthNotCountedError(
            f"{label} has never been counted: no billable counts are stored for it, so there is no "
            f"statement to make. Count it first — `gradient-billing-sync run --month {label}` (counts and "
            f"pushes to Gradient), `gradient-billing-sync preview --month {label}` (counts only), or "
            f"materialize billable_counts for {label} in the Dagster UI — then make its statements."
        )


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


def partner_names(conn: sa.Connection, sql_path: str | None) -> tuple[dict[str, str], str | None]:
    """partner_id -> name for the titles, and a warning when names are unavailable. With
    PARTNERS_SQL unset, a product schema without the reference ``partners`` table gives
    statements titled by id (and the warning); a configured PARTNERS_SQL that fails is an error."""
    try:
        return load_partner_names(conn, sql_path), None
    except sa.exc.SQLAlchemyError as exc:
        if sql_path is not None:
            raise ConfigurationError(
                f"PARTNERS_SQL ({sql_path}) failed: {outputs.one_line(exc, 300)}; fix the query "
                "(it must return partner_id, partner_name) or unset PARTNERS_SQL."
            ) from None
        conn.rollback()
        return {}, (
            "partner names unavailable (the reference partners query failed: "
            f"{outputs.one_line(type(exc).__name__)}); statements are titled with partner ids. "
            "Set PARTNERS_SQL to a query returning partner_id, partner_name."
        )


def month_lines(state: sa.Engine, month: date) -> pd.DataFrame:
    """Every partner's lines of the month: ``partner_id`` + LINE_COLUMNS (without what
    Gradient holds, which is per partner)."""
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
    frame = frame[
        frame["billable_users"].notna()
        | frame["gradient_outcome"].notna()
        | (frame["previous_month_users"].fillna(0) > 0)
    ].copy()
    frame["billable_users"] = frame["billable_users"].fillna(0).astype(int)
    if load_month_computation(state, add_months(month, -1)) is not None:
        # last month was counted: a pair it did not have had 0 users then
        frame["previous_month_users"] = frame["previous_month_users"].fillna(0)
    # else last month was never counted: no previous value and no change to show
    frame["previous_month_users"] = frame["previous_month_users"].astype("Int64")
    frame["change"] = frame["billable_users"].astype("Int64") - frame["previous_month_users"]
    # this month's unit count of the line: what the ledger recorded for it, else what a push sends
    frame["units"] = frame["sent_value"].fillna(frame["billable_users"]).astype(int)
    frame["gradient_outcome"] = frame["gradient_outcome"].fillna(NOT_SENT)
    frame["http_status"] = frame["http_status"].astype("Int64")
    frame["company_name"] = frame["company_name"].fillna(frame["company_id"])
    skus = service_names(state)
    frame["service"] = frame["sku"].map(lambda s: skus.get(s, s))
    return frame


def iter_partner_statements(state: sa.Engine, month: date, names: dict[str, str] | None = None) -> Iterator[Statement]:
    """One statement per partner with counts or ledger entries in the month or the one before,
    made one at a time (the caller writes each before the next is built)."""
    require_counted(state, month)
    names = names or {}
    frame = month_lines(state, month)
    for partner_id, rows in frame.groupby("partner_id", sort=True):
        partner_id = str(partner_id)
        holds = ledger.delivered_pairs(state, partner_id)
        held = [holds.get((c, s)) for c, s in zip(rows["company_id"], rows["sku"], strict=True)]
        rows = rows.assign(
            gradient_holds_units=pd.array([h.value if h else None for h in held], dtype="Int64"),
            gradient_holds_month=[h.month.strftime("%Y-%m") if h else None for h in held],
        )
        rows = rows.sort_values(["company_name", "company_id", "sku"])[LINE_COLUMNS].reset_index(drop=True)
        newest = max((h.month for h in holds.values()), default=None)
        yield Statement(
            partner_id=partner_id,
            month=month,
            rows=rows,
            newer_month_in_gradient=newest if newest is not None and newest > month else None,
            partner_name=names.get(partner_id),
        )


def partner_statements(state: sa.Engine, month: date, names: dict[str, str] | None = None) -> list[Statement]:
    """All partners' statements of the month (tests and small callers; the asset iterates)."""
    return list(iter_partner_statements(state, month, names))


def write_csv(statement: Statement, directory: Path) -> Path:
    """The statement as CSV: one row per line with partner and month, every text cell
    neutralised against spreadsheet formulas."""
    directory.mkdir(parents=True, exist_ok=True)
    path = outputs.contained_path(directory, f"{statement.file_stem}.csv")
    fixed = {"partner_id": statement.partner_id, "partner_name": statement.title, "month": statement.label}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for line in statement.rows.to_dict("records"):
            line["recorded_at"] = _timestamp_text(line["recorded_at"])
            row = {**fixed, **line}
            writer.writerow([outputs.text(outputs.csv_cell(row[c])) for c in CSV_COLUMNS])
    return path


def write_html(statement: Statement, directory: Path, generated_at: datetime | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = outputs.contained_path(directory, f"{statement.file_stem}.html")
    path.write_text(render_html(statement, generated_at or datetime.now(UTC)), encoding="utf-8")
    return path


def _timestamp_text(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _signed(value: object) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"+{int(value)}" if int(value) > 0 else str(int(value))


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.billing", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(statement: Statement, generated_at: datetime) -> str:
    """A page that needs nothing else (inline style); every value is escaped by the template."""
    lines = []
    for row in statement.rows.itertuples(index=False):
        holds = (
            "" if pd.isna(row.gradient_holds_units) else f"{row.gradient_holds_units} (for {row.gradient_holds_month})"
        )
        lines.append(
            {
                "company_id": row.company_id,
                "company_name": outputs.text(row.company_name),
                "service": outputs.text(row.service),
                "billable_users": row.billable_users,
                "previous_month_users": outputs.text(row.previous_month_users),
                "change": _signed(row.change),
                "units": row.units,
                "outcome": row.gradient_outcome,
                "outcome_class": str(row.gradient_outcome).replace(" ", "-"),
                "gradient_holds": holds,
                "recorded_at": _timestamp_text(row.recorded_at),
            }
        )
    newer = statement.newer_month_in_gradient
    return (
        _templates()
        .get_template("statement.html.j2")
        .render(
            month=statement.label,
            title=outputs.shorten(statement.title, TITLE_CHARS),
            partner_id=statement.partner_id,
            generated_at=f"{generated_at.astimezone(UTC):%Y-%m-%d %H:%M}",
            newer_month=newer.strftime("%Y-%m") if newer else None,
            totals=statement.totals(),
            lines=lines,
            outcome_text=OUTCOME_TEXT,
        )
    )


MARKDOWN_PARTNERS = 50  # partners listed in the asset's metadata table; the rest are counted


def preview_markdown(summaries: Sequence[tuple[str, str, dict[str, int]]]) -> str:
    """(partner id, title, totals) as a markdown table for the asset's metadata: the first
    MARKDOWN_PARTNERS partners, every value escaped."""
    lines = [
        "| partner | name | billable users | delivered | unmapped | failed | superseded | not sent |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for partner_id, title, t in summaries[:MARKDOWN_PARTNERS]:
        lines.append(
            f"| {outputs.markdown_cell(partner_id, 60)} | {outputs.markdown_cell(title, 60)} "
            f"| {t['billable_users']} | {t['delivered_units']} | {t['unmapped_units']} "
            f"| {t['failed_units']} | {t['superseded_units']} | {t['not_sent_units']} |"
        )
    if len(summaries) > MARKDOWN_PARTNERS:
        lines.append(f"\n… and {len(summaries) - MARKDOWN_PARTNERS} more partners (see the files).")
    return "\n".join(lines)


def problems_markdown(problems: dict[str, str]) -> str:
    lines = ["| partner | problem |", "| --- | --- |"]
    lines.extend(
        f"| {outputs.markdown_cell(pid, 60)} | {outputs.markdown_cell(problem, 300)} |"
        for pid, problem in list(problems.items())[:MARKDOWN_PARTNERS]
    )
    if len(problems) > MARKDOWN_PARTNERS:
        lines.append(f"\n… and {len(problems) - MARKDOWN_PARTNERS} more (see the run's log).")
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


def split_recipients(addresses: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The addresses mail can go to, and the refused ones with the reason."""
    valid: list[str] = []
    refused: dict[str, str] = {}
    for address in addresses:
        problem = outputs.address_problem(address)
        if problem:
            refused[address] = problem
        else:
            valid.append(address.strip())
    return valid, refused


def email_statement(
    target: SmtpTarget, sender: str, recipients: Sequence[str], statement: Statement, files: Iterable[Path]
) -> None:
    totals = statement.totals()
    title = outputs.one_line(statement.title, TITLE_CHARS)
    body = (
        f"The usage statement of {title} for {statement.label} is attached (CSV and HTML).\n\n"
        f"Billable users: {totals['billable_users']}\n"
        f"Units delivered to Gradient: {totals['delivered_units']}\n"
    )
    if totals["not_sent_units"] or totals["failed_units"]:
        body += f"Units not (yet) in Gradient: {totals['not_sent_units'] + totals['failed_units']}\n"
    if statement.newer_month_in_gradient is not None:
        body += (
            f"\nThis month was not pushed to Gradient: Gradient already holds "
            f"{statement.newer_month_in_gradient:%Y-%m}.\n"
        )
    subject = outputs.one_line(f"Usage statement {statement.label} — {title}", 150)
    send(target, build_message(sender, recipients, subject, body, list(files)))
