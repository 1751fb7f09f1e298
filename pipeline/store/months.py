"""Month records in the state database: billable counts, quarantine, validations, loads.

SQLite file by default, PostgreSQL in production (``STATE_DB_URL``). Writes for a month are
delete-then-insert in one transaction, so re-running a month is idempotent.

The counts of a month's validation pass are staged (``StagedCountsWriter``, in the
validation's transaction, chunk by chunk, their fingerprint and totals summed up as they come
when they come in key order) and promoted into ``billable_counts`` by the same run's count
step (``promote_staged_counts``: INSERT ... SELECT; the fingerprint and totals the validation
recorded, or else one streamed read back in key order): a month's counts are never held in
memory whole.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from operator import itemgetter, lt

import pandas as pd
import sqlalchemy as sa

from pipeline.store.schema import (
    billable_counts,
    month_computations,
    month_loads,
    month_validations,
    quarantined_rows,
    staged_billable_counts,
    utcnow,
)


def _copy_text(value: object) -> str:
    if value is None:
        return "\\N"
    text = value.isoformat() if isinstance(value, (date, datetime)) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


BULK_CHUNK_ROWS = 50_000
Columns = Mapping[str, object]  # column name -> a sequence of values, or one value for every row
_SEQUENCES = (list, tuple, pd.Series, pd.Index)


def _column_values(columns: Columns, name: str, rows: int) -> Sequence[object]:
    values = columns.get(name)
    if isinstance(values, _SEQUENCES):
        if len(values) != rows:
            raise ValueError(f"column {name} has {len(values)} values, expected {rows}")
        return values
    return itertools.repeat(values, rows)  # type: ignore[return-value]


def _driver_rows(
    conn: sa.Connection, table: sa.Table, columns: Columns, rows: int
) -> tuple[str, Iterable[tuple]] | None:
    """The compiled INSERT and its rows, each value through its column type's bind processor,
    converted once per distinct value: SQLAlchemy's own executemany builds parameters row by
    row (cProfile: 80 % of storing 94 k counts in SQLite). None when the driver's paramstyle
    is not positional."""
    names = [c.name for c in table.columns]
    compiled = table.insert().compile(dialect=conn.dialect, column_keys=names)
    if not compiled.positional or compiled.positiontup is None:
        return None
    ordered = []
    for name in compiled.positiontup:
        values = _column_values(columns, name, rows)
        process = table.c[name].type._cached_bind_processor(conn.dialect)
        if process is not None:
            # a column holds few distinct values needing conversion (the month, the run's time)
            values = list(values)
            converted = {value: process(value) for value in set(values) if value is not None}
            values = [None if value is None else converted[value] for value in values]
        ordered.append(values)
    return compiled.string, zip(*ordered, strict=True)


_COPY_SPECIALS = ("\\", "\t", "\n", "\r")


def _copy_column(values: list[object]) -> list[str] | list[object]:
    """A chunk of a column as COPY text, checked column-wise at C speed: ints through ``str``;
    strings as they are unless one holds a character to escape; value by value otherwise
    (``None``, dates, mixed types)."""
    types = set(map(type, values))
    if types == {int}:
        return list(map(str, values))
    if types == {str}:
        joined = "".join(values)  # type: ignore[arg-type]
        if not any(special in joined for special in _COPY_SPECIALS):
            return values
    return [_copy_text(value) for value in values]


def _copy_rows(conn: sa.Connection, table: sa.Table, columns: Columns, rows: int) -> None:
    names = [c.name for c in table.columns]
    # a constant column is converted once, a sequence chunk by chunk
    sources: list[str | Iterator[object]] = [
        iter(_column_values(columns, name, rows))
        if isinstance(columns.get(name), _SEQUENCES)
        else _copy_text(columns.get(name))
        for name in names
    ]
    statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
    cursor = conn.connection.driver_connection.cursor()
    try:
        for start in range(0, rows, BULK_CHUNK_ROWS):
            size = min(BULK_CHUNK_ROWS, rows - start)
            texts = [
                itertools.repeat(source, size)
                if isinstance(source, str)
                else _copy_column(list(itertools.islice(source, size)))
                for source in sources
            ]
            buffer = io.StringIO("\n".join(map("\t".join, zip(*texts, strict=True))) + "\n")
            cursor.copy_expert(statement, buffer)
    finally:
        cursor.close()


def insert_columns(conn: sa.Connection, table: sa.Table, columns: Columns, rows: int) -> None:
    """Insert ``rows`` rows given column by column: COPY on PostgreSQL (psycopg2), in chunks;
    one driver ``executemany`` elsewhere. No per-row dict is ever built."""
    if not rows:
        return
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2":
        _copy_rows(conn, table, columns, rows)
        return
    prepared = _driver_rows(conn, table, columns, rows)
    if prepared is None:
        names = [c.name for c in table.columns]
        records = [
            dict(zip(names, line, strict=True))
            for line in zip(*(_column_values(columns, n, rows) for n in names), strict=True)
        ]
        conn.execute(table.insert(), records)
        return
    statement, lines = prepared
    cursor = conn.connection.driver_connection.cursor()
    try:
        for chunk in iter(lambda: list(itertools.islice(lines, BULK_CHUNK_ROWS)), []):
            cursor.executemany(statement, chunk)
    finally:
        cursor.close()


def bulk_insert(conn: sa.Connection, table: sa.Table, records: list[dict]) -> None:
    """Insert many rows given as dicts (missing keys are NULL); see ``insert_columns``."""
    names = [c.name for c in table.columns]
    insert_columns(conn, table, {n: [r.get(n) for r in records] for n in names}, len(records))


class QuarantineWriter:
    """Replaces a month's quarantine chunk by chunk inside one transaction (in bulk)."""

    def __init__(self, conn: sa.Connection, month: date, run_id: str) -> None:
        self.conn = conn
        self.month = month
        self.run_id = run_id
        self.written = 0
        conn.execute(sa.delete(quarantined_rows).where(quarantined_rows.c.month == month))

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        now = utcnow()
        records = [
            {
                **{k: (None if pd.isna(v) else v) for k, v in row.items()},
                "month": self.month,
                "run_id": self.run_id,
                "quarantined_at": now,
            }
            for row in frame.to_dict("records")
        ]
        bulk_insert(self.conn, quarantined_rows, records)
        self.written += len(records)


FINGERPRINT_KEYS = ("partner_id", "company_id", "sku")
FINGERPRINT_FETCH_ROWS = 10_000


def _fingerprint_lines(rows: Iterable[tuple]) -> str:
    """The fingerprint's text of (partner, company, sku, users) rows, one line each."""
    return "".join([f"{p}\x1f{c}\x1f{s}\x1f{u}\n" for p, c, s, u in rows])


def counts_fingerprint(counts: pd.DataFrame) -> str:
    """Order-independent fingerprint of a month's counts (partner, company, sku, users): the
    lines in key order (Python's, i.e. code-point order), hashed. ``stored_counts_fingerprint``
    computes the same from the state database without loading the month."""
    ordered = counts.sort_values(list(FINGERPRINT_KEYS))
    digest = hashlib.sha256()
    lines = zip(ordered["partner_id"], ordered["company_id"], ordered["sku"], ordered["billable_users"], strict=True)
    for batch in iter(lambda: list(itertools.islice(lines, FINGERPRINT_FETCH_ROWS)), []):
        digest.update(_fingerprint_lines(batch).encode())
    return digest.hexdigest()


def _code_point_order(column: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """``column`` ordered by code point, as Python (pandas) sorts text: SQLite's default
    BINARY collation compares UTF-8 bytes, which is code-point order; PostgreSQL's database
    collation may be a locale's, so "C" (bytes, code-point order in UTF-8) is asked for."""
    if dialect == "postgresql":
        return column.collate("C")
    if dialect in ("mysql", "mariadb"):
        return column.collate("utf8mb4_bin")
    return column


def _rows_in_key_order(conn: sa.Connection, month: date) -> Iterator[list[tuple]]:
    """The month's stored (partner, company, sku, users) in code-point key order,
    ``FINGERPRINT_FETCH_ROWS`` at a time, as the driver's plain tuples through its own cursor
    (a server-side one on psycopg2): through SQLAlchemy's ``Row`` objects, hashing 94 k counts
    took 0.26 s on SQLite, 0.08 s so. The month, the only parameter, is bound as a literal."""
    table = billable_counts
    dialect = conn.dialect
    query = (
        sa.select(table.c.partner_id, table.c.company_id, table.c.sku, table.c.billable_users)
        .where(table.c.month == month)
        .order_by(*(_code_point_order(table.c[key], dialect.name) for key in FINGERPRINT_KEYS))
    )
    statement = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    driver = conn.connection.driver_connection
    if dialect.name == "postgresql" and dialect.driver == "psycopg2":
        cursor = driver.cursor(name="counts_in_key_order")
    else:
        cursor = driver.cursor()
    try:
        cursor.execute(statement)
        while rows := cursor.fetchmany(FINGERPRINT_FETCH_ROWS):
            yield rows
    finally:
        cursor.close()


@dataclass(frozen=True)
class CountsSummary:
    rows: int
    partners: int
    companies: int
    billable_users: int
    fingerprint: str


class KeyOrderedSummary:
    """Fingerprint and totals of (partner, company, sku, users) rows fed batch by batch in
    code-point key order. In that order a partner's (company's) rows are contiguous: its id
    (pair of ids) counted once per batch, and once only when it runs on from the batch before.
    Ids are told apart as Python compares them, as ``replace_billable_counts`` counts them.
    ``in_order``: every row came strictly after the one before (by Python's comparison, i.e.
    code point), so the totals and the fingerprint are the counts'."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.rows = self.partners = self.companies = self.billable_users = 0
        self.last_key: tuple | None = None
        self.in_order = True

    def add(self, batch: Sequence[tuple]) -> None:
        if not batch:
            return
        keys = [row[:3] for row in batch]
        if self.in_order and (
            (self.last_key is not None and not self.last_key < keys[0])
            or not all(map(lt, keys, itertools.islice(keys, 1, None)))
        ):
            self.in_order = False
        self.digest.update(_fingerprint_lines(batch).encode())
        self.rows += len(batch)
        self.billable_users += sum(map(itemgetter(3), batch))
        last = self.last_key
        self.partners += len(set(map(itemgetter(0), batch))) - (last is not None and batch[0][0] == last[0])
        self.companies += len(set(map(itemgetter(0, 1), batch))) - (last is not None and batch[0][:2] == last[:2])
        self.last_key = keys[-1]

    def summary(self) -> CountsSummary:
        return CountsSummary(self.rows, self.partners, self.companies, self.billable_users, self.digest.hexdigest())


def _stored_counts_summary(conn: sa.Connection, month: date) -> CountsSummary:
    """Fingerprint and totals of a month's stored counts in one pass streamed in key order."""
    summary = KeyOrderedSummary()
    for batch in _rows_in_key_order(conn, month):
        summary.add(batch)
    return summary.summary()


def stored_counts_fingerprint(conn: sa.Connection, month: date) -> str:
    """``counts_fingerprint`` of a month's stored ``billable_counts``, streamed: rows read in
    code-point key order ``FINGERPRINT_FETCH_ROWS`` at a time and hashed as they come."""
    return _stored_counts_summary(conn, month).fingerprint


@dataclass(frozen=True)
class MonthComputation:
    month: date
    rows_in: int
    rows_quarantined: int
    rows_counted: int
    partners: int
    companies: int
    billable_users: int
    counts_fingerprint: str
    query_sha256: str
    run_id: str
    computed_at: datetime
    # the billing time zone the month was counted in (None: counted before it was recorded)
    billing_timezone: str | None = None


def replace_billable_counts(
    engine: sa.Engine,
    month: date,
    counts: pd.DataFrame,
    *,
    rows_in: int,
    rows_quarantined: int,
    query_sha256: str,
    run_id: str,
) -> MonthComputation:
    """Store a month's counts (delete-then-insert) and its computation record, atomically;
    counts a validation pass staged for the month are superseded and deleted (the run that
    staged them counts afresh, ``promote_staged_counts`` finding them gone)."""
    now = utcnow()
    columns: dict[str, object] = {
        "month": month,
        "partner_id": counts["partner_id"].tolist(),
        "company_id": counts["company_id"].tolist(),
        "sku": counts["sku"].tolist(),
        "company_name": counts["company_name"].tolist(),
        "billable_users": [int(v) for v in counts["billable_users"]],
        "run_id": run_id,
        "computed_at": now,
    }
    computation = MonthComputation(
        month=month,
        rows_in=rows_in,
        rows_quarantined=rows_quarantined,
        rows_counted=rows_in - rows_quarantined,
        partners=int(counts["partner_id"].nunique()) if len(counts) else 0,
        companies=int(counts[["partner_id", "company_id"]].drop_duplicates().shape[0]) if len(counts) else 0,
        billable_users=int(counts["billable_users"].sum()) if len(counts) else 0,
        counts_fingerprint=counts_fingerprint(counts),
        query_sha256=query_sha256,
        run_id=run_id,
        computed_at=now,
    )
    with engine.begin() as conn:
        conn.execute(sa.delete(billable_counts).where(billable_counts.c.month == month))
        insert_columns(conn, billable_counts, columns, len(counts))
        conn.execute(sa.delete(month_computations).where(month_computations.c.month == month))
        conn.execute(month_computations.insert(), [computation.__dict__])
        conn.execute(sa.delete(staged_billable_counts).where(staged_billable_counts.c.month == month))
    return computation


# connection -> month -> the writer staging that month's counts in the connection's transaction
_STAGING: weakref.WeakKeyDictionary[sa.Connection, dict[date, StagedCountsWriter]] = weakref.WeakKeyDictionary()


class StagedCountsWriter:
    """Stages a month's counts, chunk by chunk, in the caller's transaction: the month's staged
    rows (any run's) are deleted first, so counts, quarantine and validation are replaced
    together. ``rows``: the groups staged so far. ``save_month_validation`` on the same
    connection records them as the validation's ``counts_staged`` (unless it is given), so that
    ``promote_staged_counts`` knows the pass staged its counts — 0 groups included; and, when
    the chunks came in code-point key order (the PostgreSQL and SQLite passes return them so),
    their fingerprint and totals, summed up here as they are written, so that the promotion
    does not read the month back to compute them."""

    def __init__(self, conn: sa.Connection, month: date, run_id: str) -> None:
        self.conn = conn
        self.month = month
        self.run_id = run_id
        self.rows = 0
        self.staged_at = utcnow()
        self.summary = KeyOrderedSummary()
        conn.execute(sa.delete(staged_billable_counts).where(staged_billable_counts.c.month == month))
        _STAGING.setdefault(conn, {})[month] = self

    def write(self, counts: pd.DataFrame) -> None:
        """Append a chunk of counts (``pipeline.billing.counts.COUNT_COLUMNS``, checked)."""
        if counts.empty:
            return
        partners, companies, skus = (counts[c].tolist() for c in ("partner_id", "company_id", "sku"))
        users = [int(v) for v in counts["billable_users"]]
        columns: dict[str, object] = {
            "month": self.month,
            "partner_id": partners,
            "company_id": companies,
            "sku": skus,
            "company_name": counts["company_name"].tolist(),
            "billable_users": users,
            "run_id": self.run_id,
            "staged_at": self.staged_at,
        }
        insert_columns(self.conn, staged_billable_counts, columns, len(counts))
        self.rows += len(counts)
        self.summary.add(list(zip(partners, companies, skus, users, strict=True)))

    def staged_summary(self) -> CountsSummary | None:
        """The fingerprint and totals of what was staged; None unless it came in key order."""
        return self.summary.summary() if self.summary.in_order else None


@dataclass(frozen=True)
class StoredCounts:
    """A month's counts as stored: its computation record and how many groups (rows of
    ``billable_counts``) were stored."""

    computation: MonthComputation
    rows: int


def staged_count_rows(conn: sa.Connection, month: date, run_id: str) -> int:
    staged = staged_billable_counts
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(staged).where(staged.c.month == month, staged.c.run_id == run_id)
        ).scalar_one()
    )


def promote_staged_counts(
    engine: sa.Engine,
    month: date,
    *,
    rows_in: int,
    rows_quarantined: int,
    query_sha256: str,
    run_id: str,
) -> StoredCounts | None:
    """Replace the month's ``billable_counts`` with the counts run ``run_id``'s validation pass
    staged, in one transaction: INSERT ... SELECT, the fingerprint and the totals (groups,
    partners, companies, billable users) as the validation recorded them from the staging, or
    else in one pass streamed back in key order, the computation record written, the month's
    staged rows deleted.

    None (and nothing changed) unless the month's validation record is ``run_id``'s and says
    its pass staged exactly the groups found staged for ``run_id`` (``counts_staged``; 0 is a
    month with no counted group): a month validated by another run, or not staged, or already
    promoted, is for the caller to count afresh.
    """
    staged, counts = staged_billable_counts, billable_counts
    with engine.begin() as conn:
        v = month_validations.c
        validation = conn.execute(
            sa.select(
                v.run_id,
                v.counts_staged,
                v.counts_fingerprint,
                v.counts_partners,
                v.counts_companies,
                v.counts_billable_users,
            ).where(v.month == month)
        ).first()
        if validation is None or validation.run_id != run_id or validation.counts_staged is None:
            return None
        if staged_count_rows(conn, month, run_id) != validation.counts_staged:
            return None
        now = utcnow()
        conn.execute(sa.delete(counts).where(counts.c.month == month))
        names = ["month", "partner_id", "company_id", "sku", "company_name", "billable_users", "run_id"]
        conn.execute(
            counts.insert().from_select(
                [*names, "computed_at"],
                sa.select(*(staged.c[n] for n in names), sa.literal(now, counts.c.computed_at.type)).where(
                    staged.c.month == month, staged.c.run_id == run_id
                ),
            )
        )
        if validation.counts_fingerprint is None:
            summary = _stored_counts_summary(conn, month)
        else:
            summary = CountsSummary(
                validation.counts_staged,
                validation.counts_partners,
                validation.counts_companies,
                validation.counts_billable_users,
                validation.counts_fingerprint,
            )
        computation = MonthComputation(
            month=month,
            rows_in=rows_in,
            rows_quarantined=rows_quarantined,
            rows_counted=rows_in - rows_quarantined,
            partners=summary.partners,
            companies=summary.companies,
            billable_users=summary.billable_users,
            counts_fingerprint=summary.fingerprint,
            query_sha256=query_sha256,
            run_id=run_id,
            computed_at=now,
        )
        conn.execute(sa.delete(month_computations).where(month_computations.c.month == month))
        conn.execute(month_computations.insert(), [computation.__dict__])
        conn.execute(sa.delete(staged).where(staged.c.month == month))
    return StoredCounts(computation=computation, rows=summary.rows)


def count_stored_counts(engine: sa.Engine, month: date) -> int:
    """How many groups (rows of ``billable_counts``) the month has stored."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(billable_counts).where(billable_counts.c.month == month)
            ).scalar_one()
        )


def load_billable_counts(engine: sa.Engine, month: date, limit: int | None = None) -> pd.DataFrame:
    """The month's stored counts in key order; the first ``limit`` only when given (a
    preview: a month's counts are otherwise read whole)."""
    query = (
        sa.select(
            billable_counts.c.partner_id,
            billable_counts.c.company_id,
            billable_counts.c.company_name,
            billable_counts.c.sku,
            billable_counts.c.billable_users,
        )
        .where(billable_counts.c.month == month)
        .order_by(billable_counts.c.partner_id, billable_counts.c.company_id, billable_counts.c.sku)
    )
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return pd.DataFrame.from_records(
        rows, columns=["partner_id", "company_id", "company_name", "sku", "billable_users"]
    )


def load_month_computation(engine: sa.Engine, month: date) -> MonthComputation | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(month_computations).where(month_computations.c.month == month)).mappings().first()
    return MonthComputation(**row) if row else None


def load_month_computations(engine: sa.Engine, months: Iterable[date] | None = None) -> list[MonthComputation]:
    query = sa.select(month_computations).order_by(month_computations.c.month)
    if months is not None:
        query = query.where(month_computations.c.month.in_(list(months)))
    with engine.connect() as conn:
        return [MonthComputation(**row) for row in conn.execute(query).mappings()]


def load_quarantine(engine: sa.Engine, month: date, limit: int | None = None) -> pd.DataFrame:
    query = sa.select(quarantined_rows).where(quarantined_rows.c.month == month).order_by(quarantined_rows.c.row_number)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return pd.DataFrame.from_records([dict(r) for r in rows], columns=[c.name for c in quarantined_rows.columns])


@dataclass(frozen=True)
class MonthValidation:
    month: date
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    reason_counts: dict[str, int]
    known_skus: list[str]
    query_sha256: str
    run_id: str
    validated_at: datetime
    # groups this validation's pass staged (``StagedCountsWriter.rows``); None: not staged
    counts_staged: int | None = None
    # the staged counts' fingerprint and totals, when the pass staged them in key order
    # (``StagedCountsWriter.staged_summary``); None: the promotion reads them back
    counts_fingerprint: str | None = None
    counts_partners: int | None = None
    counts_companies: int | None = None
    counts_billable_users: int | None = None
    # the month's source watermark read with its rows (``pipeline.source.watermark``); None: none
    source_watermark: str | None = None

    @property
    def quarantined_share(self) -> float:
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0


def save_month_validation(conn: sa.Connection, validation: MonthValidation) -> MonthValidation:
    """Replace the month's validation record; returns it as stored. ``counts_staged`` unset:
    the groups a ``StagedCountsWriter`` of the same run staged for the month on this connection
    (None when none did); with them, that writer's fingerprint and totals when it has them
    (``staged_summary``) and the validation gives none."""
    fields = dict(validation.__dict__)
    writer = _STAGING.get(conn, {}).get(validation.month)
    if writer is not None and writer.run_id == validation.run_id:
        if validation.counts_staged is None:
            fields["counts_staged"] = writer.rows
        summary = writer.staged_summary()
        if summary is not None and fields["counts_staged"] == writer.rows and validation.counts_fingerprint is None:
            fields.update(
                counts_fingerprint=summary.fingerprint,
                counts_partners=summary.partners,
                counts_companies=summary.companies,
                counts_billable_users=summary.billable_users,
            )
    record = {
        **fields,
        "reason_counts": json.dumps(validation.reason_counts, sort_keys=True),
        "known_skus": json.dumps(validation.known_skus),
    }
    conn.execute(sa.delete(month_validations).where(month_validations.c.month == validation.month))
    conn.execute(month_validations.insert(), [record])
    return MonthValidation(**fields)


def load_month_validation(engine: sa.Engine, month: date) -> MonthValidation | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(month_validations).where(month_validations.c.month == month)).mappings().first()
    if row is None:
        return None
    record = dict(row)
    record["reason_counts"] = json.loads(record["reason_counts"])
    record["known_skus"] = json.loads(record["known_skus"])
    return MonthValidation(**record)


def record_month_load(engine: sa.Engine, month: date, run_id: str, partners: int) -> None:
    """A month went to Gradient for every connected partner without a failure."""
    with engine.begin() as conn:
        conn.execute(sa.delete(month_loads).where(month_loads.c.month == month))
        conn.execute(
            month_loads.insert(),
            [{"month": month, "run_id": run_id, "partners": partners, "loaded_at": utcnow()}],
        )


def loaded_months(engine: sa.Engine) -> set[date]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(month_loads.c.month)).scalars())


def record_computation_timezone(engine: sa.Engine, month: date, billing_timezone: str) -> None:
    """The billing time zone the month's stored counts were made in."""
    with engine.begin() as conn:
        conn.execute(
            month_computations.update()
            .where(month_computations.c.month == month)
            .values(billing_timezone=billing_timezone)
        )
