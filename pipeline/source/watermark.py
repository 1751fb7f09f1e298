"""The source watermark: a cheap signal that a billing month's source data changed.

``SOURCE_WATERMARK_SQL`` (default: the reference schema's ``watermark.sql``) returns one row
for a month window (``:month_start``, ``:month_end``); the text of its values is the month's
watermark. It is recorded with the month's validation, read in the same snapshot as the
month's rows, and the missed/late months sensor compares it with the current one: the
sensor never aggregates a month, the run it asks for does the counting.

A vendor's own UTILIZATION_SQL reads another schema than the reference one: without its own
SOURCE_WATERMARK_SQL there is no watermark and late source data is not detected (missed
months still are).
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime

import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.settings import load_settings, reference_sql
from pipeline.source.utilization import SourceQuery, month_parameters


def source_watermark_query(dialect_name: str) -> SourceQuery | None:
    """SOURCE_WATERMARK_SQL, else the reference one unless UTILIZATION_SQL is the vendor's own."""
    settings = load_settings()
    if settings.source_watermark_sql:
        return SourceQuery.load(settings.source_watermark_sql)
    if settings.utilization_sql:
        return None
    return SourceQuery.load(reference_sql(dialect_name, "watermark.sql"))


def _text(value: object) -> object:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def read_source_watermark(conn: sa.Connection, query: SourceQuery, month: BillingMonth) -> str:
    """The month's watermark: its query's one row as JSON text (column -> value)."""
    row = conn.execute(sa.text(query.sql), month_parameters(month, conn.dialect.name)).mappings().first()
    values = {} if row is None else {str(k): _text(v) for k, v in row.items()}
    return json.dumps(values, sort_keys=True, default=str)


def watermark_digest(watermark: str) -> str:
    return hashlib.sha256(watermark.encode()).hexdigest()
