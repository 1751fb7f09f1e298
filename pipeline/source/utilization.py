"""The source contract: running the configured utilization query for a billing month.

The vendor's query (``UTILIZATION_SQL``) returns the contract columns for a month window
given as bind parameters ``:month_start`` / ``:month_end`` (never string-formatted). The
pipeline reads it two ways, both without holding the month's rows in memory:

* ``stream_utilization`` yields the rows in chunks for validation with pandera;
* ``aggregate_billable_users`` wraps the query and lets the database count distinct billable
  users per partner x company x sku, applying the same row-validity rules in SQL
  (``valid_row_sql``) and the month overlap. The two are reconciled row for row
  (``accepted_rows``) so a drift between the SQL rules and the pandera model cannot pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.settings import ConfigurationError, reference_sql

CONTRACT_COLUMNS: tuple[str, ...] = (
    "partner_id",
    "company_id",
    "company_name",
    "sku",
    "user_id",
    "active_from",
    "active_to",
    "billable",
)
ID_COLUMNS = ("partner_id", "company_id", "company_name", "sku", "user_id")
TIMESTAMP_COLUMNS = ("active_from", "active_to")
# Columns added to the stream on SQLite: each timestamp as SQLite reads it (epoch ms).
SQLITE_MS_PREFIX = "_sqlite_ms_"


@dataclass(frozen=True)
class SourceQuery:
    """A contract query read from a file: its text, where it came from and its fingerprint."""

    sql: str
    path: str
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> "SourceQuery":
        file = Path(path)
        try:
            raw = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the SQL file {str(file)!r} ({exc.strerror}); point the setting at a "
                "readable file or unset it to use the reference schema's query."
            ) from exc
        # Whole-line comments go: text() would read a ":name" in a comment as a parameter.
        lines = [line for line in raw.splitlines() if not line.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";").strip()
        if not sql:
            raise ConfigurationError(f"the SQL file {str(file)!r} is empty.")
        return cls(sql=sql, path=str(file), sha256=hashlib.sha256(sql.encode()).hexdigest())


def utilization_query(configured_path: str | None, dialect_name: str) -> SourceQuery:
    """The vendor's query when configured, else the reference schema's for the dialect."""
    return SourceQuery.load(configured_path or reference_sql(dialect_name, "utilization.sql"))


def month_parameters(month: BillingMonth, dialect_name: str) -> dict[str, object]:
    """Bind parameters for the month window: UTC instants (ISO-8601 text on SQLite)."""
    if dialect_name == "sqlite":
        return {
            "month_start": month.start_utc.isoformat(sep=" "),
            "month_end": month.end_utc.isoformat(sep=" "),
        }
    return {"month_start": month.start_utc, "month_end": month.end_utc}


def stream_utilization(
    conn: sa.Connection, query: SourceQuery, month: BillingMonth, chunk_rows: int = 50_000
) -> Iterator[pd.DataFrame]:
    """The month's contract rows in chunks of at most ``chunk_rows`` (server-side cursor)."""
    params = month_parameters(month, conn.dialect.name)
    sql = query.sql
    if conn.dialect.name == "sqlite":
        # SQLite has no timestamp type: let it say what each text timestamp means, so that
        # validation judges them exactly as the counting query will.
        sql = (
            f"SELECT utilization.*, {sqlite_epoch_ms('active_from')} AS {SQLITE_MS_PREFIX}active_from,"
            f" {sqlite_epoch_ms('active_to')} AS {SQLITE_MS_PREFIX}active_to"
            f" FROM (\n{query.sql}\n) AS utilization"
        )
    result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(
        sa.text(sql), params
    )
    columns = list(result.keys())
    emitted = False
    for rows in result.partitions(chunk_rows):
        emitted = True
        yield pd.DataFrame.from_records(rows, columns=columns, coerce_float=False)
    if not emitted:
        yield pd.DataFrame(columns=columns)


def sqlite_timestamp_ok(column: str) -> str:
    """Text that SQLite reads as a date-time and whose date part is a real calendar date
    (julianday('2026-02-30') silently rolls over to March; date(..., '+0 days') shows it)."""
    return (
        f"(typeof({column}) = 'text' AND julianday({column}) IS NOT NULL"
        f" AND date(substr({column}, 1, 10), '+0 days') = substr({column}, 1, 10))"
    )


def sqlite_epoch_ms(column: str) -> str:
    """The instant SQLite reads in a text timestamp, as epoch milliseconds (SQLite's own
    precision), or NULL when it is not a readable timestamp."""
    return (
        f"CASE WHEN {sqlite_timestamp_ok(column)} "
        f"THEN CAST(ROUND((julianday({column}) - 2440587.5) * 86400000.0) AS INTEGER) END"
    )


def load_known_skus(conn: sa.Connection, services_sql_path: str | None) -> list[str]:
    """The vendor's service SKUs from ``SERVICES_SQL`` (reference query by default)."""
    query = SourceQuery.load(services_sql_path or reference_sql(conn.dialect.name, "services.sql"))
    result = conn.execute(sa.text(query.sql))
    if "sku" not in result.keys():
        raise ConfigurationError(
            f"the services query {query.path!r} returns no 'sku' column; it must return "
            "sku, name, description, category, subcategory."
        )
    return sorted({str(row.sku) for row in result if row.sku is not None})
