"""The reference product schema: what the demo, the tests and the default queries use.

Timestamps are ``timestamptz`` on PostgreSQL and ISO-8601 text on SQLite (SQLite has no
timestamp type; text keeps a malformed value visible so validation can quarantine it).
A vendor with another schema keeps its own tables and points the ``*_SQL`` files at them.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

metadata = sa.MetaData()

Timestamp = sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite")

partners = sa.Table(
    "partners",
    metadata,
    sa.Column("partner_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
)

companies = sa.Table(
    "companies",
    metadata,
    sa.Column("company_id", sa.Text, primary_key=True),
    # Deliberately not a foreign key: products in the wild hold orphaned companies, and the
    # pipeline must catch them ("company without partner") rather than the DDL hide them.
    sa.Column("partner_id", sa.Text, nullable=True, index=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("status", sa.Text, nullable=False, server_default="active"),
    sa.Column("deleted_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

services = sa.Table(
    "services",
    metadata,
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("gradient_category", sa.Text, nullable=False),
    sa.Column("gradient_subcategory", sa.Text, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("email", sa.Text, nullable=True),
    sa.Column("is_billable", sa.Boolean, nullable=True),
)

service_enrollments = sa.Table(
    "service_enrollments",
    metadata,
    sa.Column("enrollment_id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=True, index=True),
    sa.Column("company_id", sa.Text, nullable=True, index=True),
    sa.Column("sku", sa.Text, nullable=True),
    sa.Column("started_at", Timestamp, nullable=True, index=True),
    sa.Column("ended_at", Timestamp, nullable=True, index=True),
    sa.Column("updated_at", Timestamp, nullable=True),
)

gradient_connections = sa.Table(
    "gradient_connections",
    metadata,
    sa.Column("partner_id", sa.Text, primary_key=True),
    # Fernet token (see pipeline.gradient.partner_keys); never the plain key.
    sa.Column("encrypted_api_key", sa.Text, nullable=True),
    sa.Column("state", sa.Text, nullable=False),  # connected | disconnected
    sa.Column("connected_at", Timestamp, nullable=True),
    sa.Column("disconnected_at", Timestamp, nullable=True),
    sa.Column("updated_at", Timestamp, nullable=False),
)

gradient_sync_requests = sa.Table(
    "gradient_sync_requests",
    metadata,
    sa.Column("request_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("partner_id", sa.Text, nullable=False, index=True),
    sa.Column("kind", sa.Text, nullable=False),  # update_counts | sync_accounts
    sa.Column("requested_at", Timestamp, nullable=False),
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
    """A value for a timestamp column: aware datetime on PostgreSQL, ISO-8601 UTC text on SQLite."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("product timestamps must be timezone-aware")
    if dialect_name == "sqlite":
        return value.astimezone(timezone.utc).isoformat(sep=" ")
    return value
