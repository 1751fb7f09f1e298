"""The CLI's ``explain`` in the UI: an op job whose run shows where one number came from.

Launched from the launchpad with a month and a partner, and either

- a company and a service: the number Gradient received for that (partner, company, service),
  what was stored, every ledger entry of the pair and the source rows that made the count
  (``pipeline.billing.lineage.explain``, as the CLI does), or
- nothing more: one page of the partner's ledger for the month (newest entry per account and
  service, ``page`` / ``page_size``), with every entry of the month written to a CSV file.

It changes nothing: it reads the state and product databases and writes only the CSV file.
Values in the run's metadata are shown as tables (plain text) or escaped markdown, so hostile
ids cannot inject links or markup into the UI.
"""

import csv
import re
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.metadata_values import table_value
from pipeline import settings
from pipeline.billing.lineage import Explanation, explain
from pipeline.billing.month import BillingMonth
from pipeline.gradient import ledger
from pipeline.resources import BillingRules, ProductDatabase, StateDatabase, step_failure

SHOWN_ROWS = 500
MAX_PAGE_SIZE = 500
MAX_SHOWN_CHARS = 200
MAX_CELL_CHARS = 500
ENTRY_COLUMNS = [
    "entry_id",
    "recorded_at",
    "partner_id",
    "account_id",
    "sku",
    "service_id",
    "value",
    "outcome",
    "http_status",
    "detail",
    "run_id",
]


class ExplainCountConfig(dg.Config):
    month: str = Field(description="Billing month, YYYY-MM.")
    partner: str = Field(description="The partner id (MSP).")
    company: str | None = Field(
        default=None, description="The company id (Gradient account id); with service, trace one number."
    )
    service: str | None = Field(default=None, description="The vendor service SKU; with company, trace one number.")
    page: int = Field(default=1, description="Without company and service: the page of the partner's ledger to show.")
    page_size: int = Field(default=200, description=f"Ledger pairs a page shows (at most {MAX_PAGE_SIZE}).")


def markdown_text(value: object) -> str:
    """A value safe inside markdown: one line, bounded, markup characters escaped."""
    text = " ".join(str(value).split())
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS] + "…"
    return re.sub(r"([\\`*_{}\[\]()<>#+\-.!|~=&:@])", r"\\\1", text) or "(empty)"


def csv_safe(value: object) -> object:
    """A CSV cell a spreadsheet will not run as a formula (a leading =, +, -, @, tab or CR quoted)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def parse_month(value: str, timezone: str) -> BillingMonth:
    """The billing month of ``YYYY-MM`` (or its partition key ``YYYY-MM-01``)."""
    match = re.fullmatch(r"(\d{4})-(\d{2})(?:-01)?", value.strip())
    if match and 1 <= int(match[2]) <= 12:
        return BillingMonth(date(int(match[1]), int(match[2]), 1), timezone)
    raise dg.Failure(f"month {value!r} is not a month; give YYYY-MM, e.g. 2026-11.", allow_retries=False)


def bounded(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame for a metadata table: missing values as None, text cut to a bounded length."""

    def cell(value: object) -> object:
        if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
            return value[:MAX_CELL_CHARS] + "…"
        return value

    frame = frame.astype(object).where(frame.notna(), None)
    return frame.apply(lambda column: column.map(cell)) if len(frame) else frame


def _entries_frame(entries: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([{c: e.get(c) for c in ENTRY_COLUMNS} for e in entries], columns=ENTRY_COLUMNS)
    frame["recorded_at"] = [str(t) for t in frame.recorded_at]
    frame["http_status"] = [int(s) if pd.notna(s) else None for s in frame.http_status]
    return bounded(frame)


def received(explanation: Explanation) -> int | None:
    """The value Gradient last acknowledged for the pair (its newest delivered ledger entry)."""
    delivered = [e for e in explanation.ledger if e["outcome"] == ledger.DELIVERED]
    return int(delivered[-1]["value"]) if delivered else None


def trace_metadata(explanation: Explanation) -> dict[str, object]:
    """The run's metadata for one traced number."""
    number = received(explanation)
    rows = explanation.source_rows
    lines = [
        f"**{markdown_text(explanation.month.label)}** · partner {markdown_text(explanation.partner_id)} · "
        f"company {markdown_text(explanation.company_id)} · service {markdown_text(explanation.sku)}",
        "",
        f"- Gradient received: **{number if number is not None else 'nothing delivered'}**",
        f"- stored billable users: **{explanation.stored if explanation.stored is not None else 'none'}**"
        + (f" (counted by run {markdown_text(explanation.counted_by_run)})" if explanation.counted_by_run else ""),
        f"- the source now: **{explanation.source_users}** distinct billable users in {len(rows)} spans",
        f"- ledger entries of the pair: {len(explanation.ledger)}",
    ]
    if explanation.stored is not None and explanation.stored != explanation.source_users:
        lines.append("- the source changed since the month was counted: re-run the month")
    if number is not None and explanation.stored is not None and number != explanation.stored:
        lines.append("- Gradient holds another value than the stored count: push the month again")
    metadata: dict[str, object] = {
        "explained": dg.MetadataValue.md("\n".join(lines)),
        "gradient_received": dg.MetadataValue.int(number) if number is not None else dg.MetadataValue.null(),
        "stored_billable_users": (
            dg.MetadataValue.int(explanation.stored) if explanation.stored is not None else dg.MetadataValue.null()
        ),
        "source_billable_users": dg.MetadataValue.int(explanation.source_users),
        "ledger_entries": table_value(_entries_frame(explanation.ledger), max_rows=SHOWN_ROWS),
        "source_rows": table_value(bounded(rows), max_rows=SHOWN_ROWS),
        "source_spans": dg.MetadataValue.int(len(rows)),
    }
    if explanation.counted_by_run:
        metadata["counted_by_run"] = dg.MetadataValue.dagster_run(explanation.counted_by_run)
    if explanation.query_sha256:
        metadata["query_sha256"] = explanation.query_sha256
    if len(rows) > SHOWN_ROWS:
        metadata["source_rows_not_shown"] = len(rows) - SHOWN_ROWS
    if len(explanation.ledger) > SHOWN_ROWS:
        metadata["ledger_entries_not_shown"] = len(explanation.ledger) - SHOWN_ROWS
    return metadata


def write_entries_csv(entries: list[dict], path: Path) -> Path:
    """Every ledger entry, one row each, cells safe to open in a spreadsheet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ENTRY_COLUMNS)
        for entry in entries:
            writer.writerow([csv_safe(entry.get(c)) for c in ENTRY_COLUMNS])
    return path


def ledger_page_metadata(
    state, month: BillingMonth, partner_id: str, page: int, page_size: int, export: Path
) -> dict[str, object]:
    """One page of the partner's month ledger (newest entry per pair) and the path of the CSV
    holding every entry of the month."""
    if page_size < 1 or page_size > MAX_PAGE_SIZE or page < 1:
        raise dg.Failure(
            f"page {page} / page_size {page_size}: give a page from 1 and a page_size from 1 to {MAX_PAGE_SIZE}.",
            allow_retries=False,
        )
    entries = ledger.entries_for(state, month.month, [partner_id])
    if not entries:
        raise dg.Failure(
            f"no ledger entry of partner {partner_id!r} in {month.label}: the month was not pushed for it, or the "
            "id is wrong (the gradient_ledger asset of the month lists its partners).",
            allow_retries=False,
        )
    newest = ledger.month_ledger(state, month.month, [partner_id])
    pages = max(1, -(-len(newest) // page_size))
    if page > pages:
        raise dg.Failure(f"page {page} is past the last page ({pages}) of {len(newest)} pairs.", allow_retries=False)
    shown = newest.iloc[(page - 1) * page_size : page * page_size]
    shown = shown.assign(
        recorded_at=[t.isoformat(timespec="seconds") for t in shown.recorded_at],
        http_status=[int(s) if pd.notna(s) else None for s in shown.http_status],
    )
    path = write_entries_csv(entries, export)
    return {
        "month": month.label,
        "pairs": dg.MetadataValue.int(len(newest)),
        "entries": dg.MetadataValue.int(len(entries)),
        "page": dg.MetadataValue.int(page),
        "pages": dg.MetadataValue.int(pages),
        "totals": table_value(ledger.ledger_totals(newest)),
        "ledger_page": table_value(bounded(shown), max_rows=page_size),
        "all_entries_csv": dg.MetadataValue.path(str(path)),
    }


@dg.op(tags={"kind": "sql"})
def explain_gradient_count(
    context: dg.OpExecutionContext,
    config: ExplainCountConfig,
    product_db: ProductDatabase,
    state_db: StateDatabase,
    billing_rules: BillingRules,
) -> dg.Output[str]:
    """Trace one number Gradient received (month, partner, company, service) to its ledger
    entries and source rows; or, with month and partner only, page the partner's ledger."""
    month = parse_month(config.month, billing_rules.timezone)
    if (config.company is None) != (config.service is None):
        raise dg.Failure(
            "give both company and service to trace one number, or neither to browse the partner's ledger.",
            allow_retries=False,
        )
    state = state_db.engine()
    if config.company is None:
        export = settings.data_dir() / "ledger-exports" / f"{month.label}-{context.run_id}.csv"
        metadata = ledger_page_metadata(state, month, config.partner, config.page, config.page_size, export)
        return dg.Output("ledger page", metadata=metadata)  # type: ignore[arg-type]
    try:
        with product_db.connect() as conn:
            explanation = explain(
                conn, state, product_db.utilization_query(), month, config.partner, config.company, config.service or ""
            )
    except LookupError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    except Exception as exc:
        raise step_failure(exc) from exc
    if explanation.stored is None and not explanation.ledger and explanation.source_rows.empty:
        raise dg.Failure(
            f"nothing in {month.label} for partner {config.partner!r}, company {config.company!r}, service "
            f"{config.service!r}: no stored count, ledger entry or source row. Check the ids: run this job "
            "with the month and partner only to list the partner's accounts and services.",
            allow_retries=False,
        )
    for line in explanation.lines()[:3]:
        context.log.info(line)
    return dg.Output("traced", metadata=trace_metadata(explanation))  # type: ignore[arg-type]


@dg.job(
    description="Explain one count Gradient received (config: month, partner, company, service) or "
    "page a partner's month ledger (month, partner, page): changes nothing.",
)
def explain_count():
    explain_gradient_count()
