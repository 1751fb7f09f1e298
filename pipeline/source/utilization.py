"""The source contract: running the configured utilization query for a billing month.

The vendor's query (``UTILIZATION_SQL``) returns the contract columns for a month window
given as bind parameters ``:month_start`` / ``:month_end`` (never string-formatted). The
pipeline never pulls the month's rows into Python: it wraps the query and lets the database
apply the billing-row rules (``pipeline.validation.rules``), quarantine and count in one pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class SourceQuery:
    """A contract query read from a file: its text, where it came from and its fingerprint."""

    sql: str
    path: str
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> SourceQuery:
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
    """Bind parameters for the month window: UTC instants (ISO-8601 text on SQLite, naive
    UTC for MySQL/MariaDB DATETIME columns, aware elsewhere)."""
    if dialect_name == "sqlite":
        return {
            "month_start": month.start_utc.isoformat(sep=" "),
            "month_end": month.end_utc.isoformat(sep=" "),
        }
    if dialect_name in ("mysql", "mariadb"):
        return {
            "month_start": month.start_utc.replace(tzinfo=None),
            "month_end": month.end_utc.replace(tzinfo=None),
        }
    return {"month_start": month.start_utc, "month_end": month.end_utc}


def sqlite_timestamp_ok(column: str) -> str:
    """Text that SQLite reads as a date-time and whose date part is a real calendar date
    (julianday('2026-02-30') silently rolls over to March; date(..., '+0 days') shows it)."""
    return (
        f"(typeof({column}) = 'text' AND julianday({column}) IS NOT NULL"
        f" AND date(substr({column}, 1, 10), '+0 days') = substr({column}, 1, 10))"
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
