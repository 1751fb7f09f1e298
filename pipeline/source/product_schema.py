"""The reference product schema: what the demo, the tests and the default queries use.

Timestamps are ``timestamptz`` on PostgreSQL, ``DATETIME(6)`` holding UTC on MySQL/MariaDB
(which has no zone-aware type), and ISO-8601 text on SQLite (SQLite has no timestamp type;
text keeps a malformed value visible so validation can quarantine it). On MySQL/MariaDB ids
are ``VARCHAR`` (it cannot index or key ``TEXT``) and every table is ``utf8mb4`` with a binary
collation, so ids compare exactly as on the other databases (case-sensitive).
A vendor with another schema keeps its own tables and points the ``*_SQL`` files at them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

MYSQL_DIALECTS = ("mysql", "mariadb")
Timestamp = (
    sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite").with_variant(mysql.DATETIME(fsp=6), *MYSQL_DIALECTS)
)
# Ids and short codes: TEXT elsewhere; MySQL needs a length to key, index or default them.
Id = sa.Text().with_variant(sa.String(191), *MYSQL_DIALECTS)
Code = sa.Text().with_variant(sa.String(64), *MYSQL_DIALECTS)
Description = sa.Text().with_variant(sa.String(1000), *MYSQL_DIALECTS)
MYSQL_TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

partners = sa.Table(
    "partners",
    metadata,
    sa.Column("partner_id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

companies = sa.Table(
    "companies",
    metadata,
    sa.Column("company_id", Id, primary_key=True),
    # Deliberately not a foreign key: products in the wild hold orphaned companies, and the
    # pipeline must catch them ("company without partner") rather than the DDL hide them.
    sa.Column("partner_id", Id, nullable=True, index=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("status", Code, nullable=False, server_default="active"),
    sa.Column("deleted_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

services = sa.Table(
    "services",
    metadata,
    sa.Column("sku", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", Description, nullable=False, server_default=""),
    sa.Column("gradient_category", sa.Text, nullable=False),
    sa.Column("gradient_subcategory", sa.Text, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", Id, primary_key=True),
    sa.Column("email", sa.Text, nullable=True),
    sa.Column("is_billable", sa.Boolean, nullable=True),
    **MYSQL_TABLE_OPTIONS,
)

service_enrollments = sa.Table(
    "service_enrollments",
    metadata,
    sa.Column("enrollment_id", sa.Integer, primary_key=True),
    sa.Column("user_id", Id, nullable=True, index=True),
    sa.Column("company_id", Id, nullable=True, index=True),
    sa.Column("sku", Id, nullable=True),
    sa.Column("started_at", Timestamp, nullable=True, index=True),
    sa.Column("ended_at", Timestamp, nullable=True, index=True),
    sa.Column("updated_at", Timestamp, nullable=True),
    **MYSQL_TABLE_OPTIONS,
)

gradient_connections = sa.Table(
    "gradient_connections",
    metadata,
    sa.Column("partner_id", Id, primary_key=True),
    # Fernet token (see pipeline.gradient.partner_keys); never the plain key.
    sa.Column("encrypted_api_key", sa.Text, nullable=True),
    sa.Column("state", Code, nullable=False),  # connected | disconnected
    sa.Column("connected_at", Timestamp, nullable=True),
    sa.Column("disconnected_at", Timestamp, nullable=True),
    sa.Column("updated_at", Timestamp, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

gradient_sync_requests = sa.Table(
    "gradient_sync_requests",
    metadata,
    sa.Column("request_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("partner_id", Id, nullable=False, index=True),
    sa.Column("kind", Code, nullable=False),  # update_counts | sync_accounts
    sa.Column("requested_at", Timestamp, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

TIMESTAMP_COLUMNS = {
    (table.name, column.name)
    for table in metadata.sorted_tables
    for column in table.columns
    if column.type is Timestamp
}


def create_product_schema(engine: sa.Engine, *, drop_first: bool = False) -> None:
    if drop_first:
        metadata.drop_all(engine)
    metadata.create_all(engine)


def to_db_timestamp(value: datetime | str | None, dialect_name: str) -> datetime | str | None:
    """A value for a timestamp column: aware datetime on PostgreSQL, naive UTC datetime on
    MySQL/MariaDB (DATETIME holds UTC), ISO-8601 UTC text on SQLite."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("product timestamps must be timezone-aware")
    if dialect_name == "sqlite":
        return value.astimezone(UTC).isoformat(sep=" ")
    if dialect_name in MYSQL_DIALECTS:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value
