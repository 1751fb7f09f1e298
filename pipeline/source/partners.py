"""Partners as the product sees them: Gradient connections and their companies.

Read through configurable queries (``CONNECTIONS_SQL``, ``COMPANIES_SQL``) so a vendor with
another schema points them at its own tables; the reference schema's queries are defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from pipeline.settings import ConfigurationError, reference_sql
from pipeline.source.utilization import SourceQuery

CONNECTION_COLUMNS = ("partner_id", "encrypted_api_key", "state", "connected_at", "disconnected_at", "updated_at")
COMPANY_COLUMNS = ("partner_id", "company_id", "company_name")
CONNECTED = "connected"
DISCONNECTED = "disconnected"


def as_utc(value: object) -> datetime | None:
    """A timestamp from either dialect (aware datetime or ISO text) as an aware UTC datetime."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = pd.Timestamp(str(value))
    parsed = parsed.tz_localize("UTC") if parsed.tzinfo is None else parsed.tz_convert("UTC")
    return parsed.to_pydatetime()


@dataclass(frozen=True)
class PartnerConnection:
    partner_id: str
    state: str
    connected_at: datetime | None
    disconnected_at: datetime | None
    updated_at: datetime | None
    encrypted_api_key: str | None = field(default=None, repr=False)

    @property
    def is_connected(self) -> bool:
        return self.state == CONNECTED


def _run_contract_query(conn: sa.Connection, query: SourceQuery, columns: tuple[str, ...], setting: str, params=None):
    result = conn.execute(sa.text(query.sql), params or {})
    missing = [c for c in columns if c not in result.keys()]
    if missing:
        raise ConfigurationError(
            f"the query {query.path!r} ({setting}) does not return {', '.join(missing)}; "
            f"it must return {', '.join(columns)}."
        )
    return result


def load_connections(conn: sa.Connection, sql_path: str | None = None) -> list[PartnerConnection]:
    query = SourceQuery.load(sql_path or reference_sql(conn.dialect.name, "connections.sql"))
    result = _run_contract_query(conn, query, CONNECTION_COLUMNS, "CONNECTIONS_SQL")
    connections = []
    for row in result.mappings():
        state = str(row["state"] or "").strip().lower()
        if state not in (CONNECTED, DISCONNECTED):
            raise ConfigurationError(
                f"partner {row['partner_id']}'s connection state is {row['state']!r}; "
                "CONNECTIONS_SQL must return 'connected' or 'disconnected'."
            )
        connections.append(
            PartnerConnection(
                partner_id=str(row["partner_id"]),
                state=state,
                connected_at=as_utc(row["connected_at"]),
                disconnected_at=as_utc(row["disconnected_at"]),
                updated_at=as_utc(row["updated_at"]),
                encrypted_api_key=row["encrypted_api_key"],
            )
        )
    return connections


def load_companies(conn: sa.Connection, sql_path: str | None = None) -> pd.DataFrame:
    """Every company that should be a Gradient account: partner_id, company_id, company_name.

    Values are text; a NULL stays ``None`` (never the text "None") so that the Gradient side
    refuses that company with a reason naming COMPANIES_SQL instead of creating an account
    called "None".
    """
    query = SourceQuery.load(sql_path or reference_sql(conn.dialect.name, "companies.sql"))
    result = _run_contract_query(conn, query, COMPANY_COLUMNS, "COMPANIES_SQL")
    frame = pd.DataFrame.from_records(result.all(), columns=list(result.keys()))[list(COMPANY_COLUMNS)]
    return frame.astype(object).apply(lambda column: column.map(_text_or_none))


def _text_or_none(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value)


@dataclass(frozen=True)
class ServiceDefinition:
    sku: str
    name: str
    description: str
    category: str
    subcategory: str


def load_services(conn: sa.Connection, sql_path: str | None = None) -> list[ServiceDefinition]:
    query = SourceQuery.load(sql_path or reference_sql(conn.dialect.name, "services.sql"))
    result = _run_contract_query(conn, query, ("sku", "name", "description", "category", "subcategory"), "SERVICES_SQL")
    return [
        ServiceDefinition(
            sku=str(r["sku"]),
            name=str(r["name"]),
            description=str(r["description"] or ""),
            category=str(r["category"]),
            subcategory=str(r["subcategory"]),
        )
        for r in result.mappings()
    ]


PARTNER_NAME_COLUMNS = ("partner_id", "partner_name")


def load_partner_names(conn: sa.Connection, sql_path: str | None = None) -> dict[str, str]:
    """partner_id -> display name, from PARTNERS_SQL (reference: the ``partners`` table).
    Partners without a non-blank name are left out: their statements are titled with the id."""
    query = SourceQuery.load(sql_path or reference_sql(conn.dialect.name, "partners.sql"))
    result = _run_contract_query(conn, query, PARTNER_NAME_COLUMNS, "PARTNERS_SQL")
    names = {}
    for row in result.mappings():
        name = _text_or_none(row["partner_name"])
        if row["partner_id"] is not None and name and name.strip():
            names[str(row["partner_id"])] = name
    return names
