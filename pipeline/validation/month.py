"""Validating and counting a month in one pass over the source, inside the product database.

The database flags every row with the rules it breaks (``pipeline.validation.rules``) and, in
the same scan, groups the rows: the rows breaking no rule into the month's counts per partner
x company x sku, the others into groups that come back — only they — to be quarantined with
their reasons. SQLite and MySQL/MariaDB: identical failing rows are one group, with how many.
PostgreSQL: per partner x company x sku x broken rules, with how many; the rules the keys alone
break are asked once per group, the rest once per row, so the pass runs in parallel workers
like a plain aggregate; the failing groups' rows are then fetched by their keys, in the same
snapshot, and must be exactly the rows the pass counted.

The groups come back in chunks of frames (PostgreSQL: ``COPY (pass) TO STDOUT``, parsed by
pandas' C reader chunk by chunk as the rows arrive — a ``COPY`` keeps the parallel plan that a
cursor loses; the others: a streamed cursor) and are tallied column-wise. Nothing here holds
the month's rows or its counts in memory, only one chunk: the counts are staged in the state
database chunk by chunk (``StagedCountsWriter``), and the staged counts, the quarantine and the
validation record are replaced in one state-DB transaction; ``billable_counts`` promotes them.
"""

from __future__ import annotations

import gc
import io
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from pipeline.billing.counts import COUNT_COLUMNS
from pipeline.billing.month import BillingMonth
from pipeline.settings import ConfigurationError
from pipeline.source.contract import ContractViolation, check_source_contract
from pipeline.source.utilization import CONTRACT_COLUMNS, ID_COLUMNS, SourceQuery, month_parameters
from pipeline.source.watermark import read_source_watermark, source_watermark_query
from pipeline.store.months import (
    MonthValidation,
    QuarantineWriter,
    StagedCountsWriter,
    save_month_validation,
    utcnow,
)
from pipeline.validation.rows import COUNT_TEXT_DTYPE, QUARANTINE_COLUMNS, checked_counts, checked_quarantine, describe
from pipeline.validation.rules import (
    MASK,
    MAX_SHOWN_CHARS,
    billable_true,
    bind_known_skus,
    codes_of,
    display,
    family,
    flagged_sql,
    ident,
    overlap_sql,
    prepare_connection,
    shown_longer,
    split_reason_mask_sql,
    text_of,
)

QUARANTINE_SAMPLE_ROWS = 20
# The sample goes into a Dagster event: each of its values at most this long (the stored row
# has the value as quarantined, itself cut past 255 characters with its length and hash).
QUARANTINE_SAMPLE_CHARS = 160
GROUP_KEYS = ("partner_id", "company_id", "sku")
# what the PostgreSQL pass returns per group (``_postgresql_month_pass_sql``)
PASS_COLUMNS = (*GROUP_KEYS, "reason_mask", "company_name", "billable_users", "rows_in_month", "row_count")
# Groups per frame read back from the COPY: what is held at once while tallying.
COPY_CHUNK_ROWS = 10_000
COLLECT_EVERY_CHUNKS = 4
# Failing groups' keys, per key, that narrow the fetch of their rows; past this many values of
# a key, that key is not used to narrow (the fetch then reads more of the month, still exactly).
NARROWING_KEY_VALUES = 1_000
# PostgreSQL's default JIT thresholds take the pass (a large estimated cost) for a query worth
# LLVM inlining and optimization: 2.3 s of compiling across the leader and its two workers for a
# 4.8 s pass at 1.6 M rows. Without them, compiled-but-unoptimized expressions still cost more
# CPU than the interpreter (10.96 s against 10.16 s, leader and workers, same run): JIT off.
POSTGRESQL_PASS_SETTINGS = {"jit": "off"}


def month_pass_sql(query: SourceQuery, dialect: str) -> str:
    """One scan: per group of rows breaking no rule, its billable users; per group of rows
    breaking a rule, their values as text (never decoded by the driver) and how many."""
    if family(dialect) == "postgresql":
        return _postgresql_month_pass_sql(query)
    good, bad = f"{MASK} = 0", f"{MASK} <> 0"
    keys = [f"CASE WHEN {good} THEN {ident(c, dialect)} END AS {c}" for c in GROUP_KEYS]
    shown = [f"CASE WHEN {bad} THEN {display(c, dialect)} END AS shown_{c}" for c in CONTRACT_COLUMNS]
    overlap = overlap_sql(dialect)
    grouped = len(keys) + 1 + len(shown)
    # SQLite: its GROUP BY sorts by these keys already, in the BINARY collation (code-point
    # order), so asking for that order costs no sort and the staging can sum the counts up
    order = "ORDER BY 1, 2, 3" if dialect == "sqlite" else ""
    return f"""
SELECT
    {", ".join(keys)},
    {MASK},
    {", ".join(shown)},
    MAX(CASE WHEN {good} THEN company_name END) AS company_name,
    COUNT(DISTINCT CASE WHEN {good} AND {billable_true(dialect)} AND {overlap}
        THEN {ident("user_id", dialect)} END) AS billable_users,
    SUM(CASE WHEN {good} AND {overlap} THEN 1 ELSE 0 END) AS rows_in_month,
    COUNT(*) AS row_count
FROM (
{flagged_sql(query.sql, dialect)}
) AS flagged
GROUP BY {", ".join(str(i) for i in range(1, grouped + 1))}
{order}
"""


def _postgresql_month_pass_sql(query: SourceQuery) -> str:
    """PostgreSQL: the rules the group keys alone break are asked once per group, the others
    once per row, as a group key (``split_reason_mask_sql``), so the planner computes the row
    part once below the sort and the whole pass runs in parallel workers like a plain
    aggregate (a per-row ``CASE`` on the mask would repeat the rules in every key; an
    ``OFFSET 0`` fence keeps them single but sorts in the leader alone). The keys are grouped
    in the "C" collation: the same groups (equality is byte equality either way), compared as
    bytes with abbreviated keys rather than by ``strcoll``, and come back in that order (the
    aggregate's own: no sort is added), so the staged counts' fingerprint and totals are
    summed up as they arrive (``StagedCountsWriter``). The groups breaking a rule come back as
    counts only; ``_postgresql_quarantined_rows_sql`` fetches their rows."""
    dialect = "postgresql"
    key_mask, row_mask = split_reason_mask_sql(dialect, GROUP_KEYS)
    keys = ", ".join(f'{c} COLLATE "C" AS {c}' for c in GROUP_KEYS)
    # a key longer than a rule allows (only in a group breaking one) comes back cut, as its
    # rows are fetched (``display``): a huge id never reaches Python whole
    shown_keys = ", ".join(f"{display(c, dialect)} AS {c}" for c in GROUP_KEYS)
    return f"""
SELECT
    {shown_keys},
    row_mask | {key_mask} AS {MASK},
    {display("company_name", dialect)} AS company_name,
    CASE WHEN in_month THEN billable_users ELSE 0 END AS billable_users,
    CASE WHEN in_month THEN row_count ELSE 0 END AS rows_in_month,
    row_count
FROM (
SELECT
    {keys},
    row_mask,
    in_month,
    MAX(company_name COLLATE "C") AS company_name,
    COUNT(DISTINCT user_id) FILTER (WHERE {billable_true(dialect)}) AS billable_users,
    COUNT(*) AS row_count
FROM (
SELECT utilization.*, {overlap_sql(dialect)} AS in_month, {row_mask} AS row_mask
FROM (
{query.sql}
) AS utilization
) AS placed
GROUP BY 1, 2, 3, row_mask, in_month
) AS grouped
ORDER BY {", ".join(f"grouped.{c}" for c in GROUP_KEYS)}
"""


def _postgresql_quarantined_rows_sql(query: SourceQuery, narrowed: Collection[str], cut: Collection[str] = ()) -> str:
    """PostgreSQL: the rows breaking a rule, each with its mask and its values as text, in a
    stable order. ``narrowed``: the group keys restricted to ``:bad_<key>`` (the keys of the
    groups the pass found breaking a rule; ``''`` stands for NULL too, as ``COPY`` CSV read
    back), so the database can skip the rest before the rules run. ``cut``: the narrowed keys
    some of whose failing values came back cut (``display``): those are asked for by length."""
    shown = ", ".join(f"{display(c, 'postgresql')} AS {c}" for c in CONTRACT_COLUMNS)
    where = [f"{MASK} <> 0"]
    for key in narrowed:
        either = [f"{key} IN :bad_{key}", f"({key} IS NULL AND '' IN :bad_{key})"]
        if key in cut:
            either.append(shown_longer(key, "postgresql"))
        where.append(f"({' OR '.join(either)})")
    order = ", ".join(f'{c} COLLATE "C"' if c in ID_COLUMNS else c for c in CONTRACT_COLUMNS)
    return f"""
SELECT {shown}, {MASK}
FROM (
{flagged_sql(query.sql, "postgresql")}
) AS flagged
WHERE {" AND ".join(where)}
ORDER BY {order}
"""


@dataclass
class ValidationOutcome:
    validation: MonthValidation
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)
    contract_violations: list[ContractViolation] = field(default_factory=list)


@dataclass
class _Tally:
    rows: int = 0
    valid: int = 0
    quarantined: int = 0
    reason_counts: dict[str, int] = field(default_factory=dict)
    sample: list[dict] = field(default_factory=list)
    # PostgreSQL: rows per failing (partner, company, sku, mask) group, their rows fetched after
    failing_groups: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    recorded: int = 0


def _quarantined_values(group: tuple) -> list[dict[str, str | None]]:
    """The contract values, as text, of each row of a group that breaks a rule (SQLite and
    MySQL/MariaDB: identical rows are one group)."""
    raw = {c: text_of(getattr(group, f"shown_{c}")) for c in CONTRACT_COLUMNS}
    return [raw] * int(group.row_count)


def _quarantine_records(group: tuple, first_row_number: int) -> list[dict]:
    codes = codes_of(int(getattr(group, MASK)))
    records = []
    for i, raw in enumerate(_quarantined_values(group)):
        reasons = describe(codes, raw)
        records.append({"row_number": first_row_number + i, **raw, "reason_codes": ",".join(codes), "reasons": reasons})
    return records


def _sample_row(record: dict) -> dict:
    """A quarantined row for the sample shown in Dagster: long texts cut, saying by how much."""
    limit = QUARANTINE_SAMPLE_CHARS
    return {
        k: f"{v[:limit]}…(+{len(v) - limit} chars, whole in the quarantine table)"
        if isinstance(v, str) and len(v) > limit
        else v
        for k, v in record.items()
    }


class _CopiedGroups:
    """The file psycopg2's ``copy_expert`` writes the pass into. PostgreSQL sends ``COPY TO``
    one row per message (protocol: CopyData, "always one per row") and psycopg2 writes each as
    it arrives, so every ``chunk_rows`` rows are parsed by pandas' C reader and consumed here,
    in the caller's thread, while the database still aggregates the rest. (Spooling the whole
    ``COPY`` first left the tally for after the query; reading it through a pipe on another
    thread made the two threads contend for the GIL row by row.)

    An error while consuming stops the consuming, not the ``COPY``: the rest is read and
    dropped so the connection stays usable, and the error is raised after (``raise_error``)."""

    def __init__(self, consume: Callable[[pd.DataFrame], None], chunk_rows: int) -> None:
        self.consume = consume
        self.chunk_rows = chunk_rows
        self.rows: list[bytes] = []
        self.error: BaseException | None = None

    def write(self, row: bytes) -> None:
        if self.error is not None:
            return
        self.rows.append(row)
        if len(self.rows) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows or self.error is not None:
            return
        data, self.rows = b"".join(self.rows), []
        try:
            self.consume(
                pd.read_csv(
                    io.BytesIO(data),
                    header=None,
                    names=list(PASS_COLUMNS),
                    dtype=_COPY_DTYPES,
                    keep_default_na=False,
                    na_filter=False,
                    encoding="utf-8",
                )
            )
        except BaseException as error:
            self.error = error

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _postgresql_copy(
    product: sa.Connection,
    statement: sa.TextClause,
    params: dict,
    chunk_rows: int,
    consume: Callable[[pd.DataFrame], None],
) -> bool:
    """The pass through ``COPY (…) TO STDOUT``, consumed as it comes (``_CopiedGroups``);
    False (nothing run) unless the driver is psycopg2. A ``COPY`` keeps the parallel plan that a
    cursor loses. It takes no bind parameters: the statement is compiled for psycopg2 and its
    values rendered as literals by the driver's own quoting (``mogrify``)."""
    if product.dialect.driver != "psycopg2":
        return False
    raw = product.connection.driver_connection
    compiled = statement.bindparams(**params).compile(
        dialect=product.dialect, compile_kwargs={"render_postcompile": True}
    )
    groups = _CopiedGroups(consume, min(chunk_rows, COPY_CHUNK_ROWS))
    with raw.cursor() as cursor:
        query = cursor.mogrify(str(compiled), compiled.params)
        cursor.copy_expert(b"COPY (" + query + b") TO STDOUT WITH (FORMAT csv)", groups)
    groups.flush()
    groups.raise_error()
    return True


_COPY_DTYPES = {
    **{c: str for c in (*GROUP_KEYS, "company_name")},
    **{c: "int64" for c in (MASK, "billable_users", "rows_in_month", "row_count")},
}


def _run_pass(
    product: sa.Connection,
    statement: sa.TextClause,
    params: dict,
    chunk_rows: int,
    consume: Callable[[pd.DataFrame], None],
) -> None:
    """Run the pass, handing its groups to ``consume`` ``chunk_rows`` at a time, as frames."""
    if family(product.dialect.name) == "postgresql":
        for name, value in POSTGRESQL_PASS_SETTINGS.items():
            product.exec_driver_sql(f"SET LOCAL {name} = {value}")
        if _postgresql_copy(product, statement, params, chunk_rows, consume):
            return
        # another driver: fetched whole (a cursor, DECLARE CURSOR, never runs in parallel)
        result = product.execute(statement, params)
    else:
        result = product.execution_options(yield_per=chunk_rows).execute(statement, params)
    columns = list(result.keys())
    for rows in result.partitions(chunk_rows):
        consume(pd.DataFrame.from_records(rows, columns=columns))


def _tally_chunk(tally: _Tally, groups: pd.DataFrame, staged: StagedCountsWriter) -> list[dict]:
    """Count a chunk of groups column-wise, stage its counts; return its quarantined rows
    (PostgreSQL: none, the failing groups are noted in ``tally.failing_groups`` and their rows
    fetched after the pass)."""
    masks = groups[MASK].astype("int64")
    rows = groups["row_count"].astype("int64")
    good = (masks == 0).to_numpy()
    tally.rows += int(rows.sum())
    tally.valid += int(rows[good].sum())
    counted = groups.loc[good & (groups["rows_in_month"].astype("int64") > 0).to_numpy(), list(COUNT_COLUMNS)]
    if len(counted):
        counted = counted.astype({**{c: COUNT_TEXT_DTYPE for c in COUNT_COLUMNS[:-1]}, "billable_users": "int64"})
        staged.write(checked_counts(counted.reset_index(drop=True)))
    quarantined: list[dict] = []
    if good.all():
        return quarantined
    rows_apart = "shown_partner_id" not in groups.columns
    for group in groups.loc[~good].itertuples(index=False):
        n = int(group.row_count)
        mask = int(getattr(group, MASK))
        for code in codes_of(mask):
            tally.reason_counts[code] = tally.reason_counts.get(code, 0) + n
        if rows_apart:
            key = (*(_key_text(getattr(group, k)) for k in GROUP_KEYS), mask)
            tally.failing_groups[key] = tally.failing_groups.get(key, 0) + n
        else:
            quarantined.extend(_quarantine_records(group, tally.quarantined + 1))
        tally.quarantined += n
    return quarantined


def _key_text(value: object) -> str:
    """A group key as ``COPY`` CSV reads back (NULL and '' alike)."""
    return "" if value is None else str(value)


class ValidationDriftError(RuntimeError):
    """The rows fetched for the failing groups are not the rows the pass counted."""


def _postgresql_quarantined_chunks(
    product: sa.Connection, query: SourceQuery, params: dict, tally: _Tally, chunk_rows: int
) -> Iterator[list[dict]]:
    """The failing groups' rows as quarantine records, ``chunk_rows`` at a time, numbered in
    the fetch's order; checked, at the end, to be exactly the rows the pass counted per
    failing group (the two statements read one snapshot, see ``_pass_connection``)."""
    narrowed, cut, bind = [], [], dict(params)
    for i, key in enumerate(GROUP_KEYS):
        every = {group[i] for group in tally.failing_groups}
        # a value longer than MAX_SHOWN_CHARS came back cut: it is not the column's value
        values = sorted(v for v in every if len(v) <= MAX_SHOWN_CHARS)
        if len(values) <= NARROWING_KEY_VALUES:
            narrowed.append(key)
            # an empty list would be typed as integers by SQLAlchemy: '' matches what NULL does
            bind[f"bad_{key}"] = values or [""]
            if len(values) < len(every):
                cut.append(key)
    statement = (
        sa.text(_postgresql_quarantined_rows_sql(query, narrowed, cut))
        .bindparams(
            sa.bindparam("known_skus", expanding=True),
            *(sa.bindparam(f"bad_{key}", expanding=True) for key in narrowed),
        )
        .execution_options(yield_per=chunk_rows)
    )
    fetched: dict[tuple[str, str, str, int], int] = {}
    result = product.execute(statement, bind)
    try:
        for rows in result.partitions(chunk_rows):
            records = []
            for row in rows:
                raw = {c: text_of(row[i]) for i, c in enumerate(CONTRACT_COLUMNS)}
                mask = int(row[-1])
                key = (*(_key_text(raw[k]) for k in GROUP_KEYS), mask)
                fetched[key] = fetched.get(key, 0) + 1
                codes = codes_of(mask)
                tally.recorded += 1
                records.append(
                    {
                        "row_number": tally.recorded,
                        **raw,
                        "reason_codes": ",".join(codes),
                        "reasons": describe(codes, raw),
                    }
                )
            yield records
    finally:
        result.close()
    if fetched != tally.failing_groups:
        raise ValidationDriftError(
            f"the month pass counted {tally.quarantined} rows breaking a rule in {len(tally.failing_groups)} groups, "
            f"but fetching them found {sum(fetched.values())} rows in {len(fetched)} groups (both read one "
            "snapshot, so the rules were asked differently); nothing was stored. Re-run the month; if it "
            "happens again, report it with the month and UTILIZATION_SQL."
        )


@contextmanager
def _pass_connection(product: sa.Connection) -> Iterator[sa.Connection]:
    """PostgreSQL: a connection of the same engine in a read-only REPEATABLE READ transaction,
    so the pass and the fetch of its failing rows read one snapshot. Others: ``product``."""
    if family(product.dialect.name) != "postgresql":
        yield product
        return
    with product.engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


@contextmanager
def _chunk_garbage_collected(every: int = COLLECT_EVERY_CHUNKS) -> Iterator[Callable[[], None]]:
    """A callback to call after each chunk: every ``every`` chunks it collects the reference
    cycles pandas and pandera leave behind (they survive to the oldest generation, which a
    process holding Dagster's and pandas' objects collects rarely: +1.5 MB per chunk, the
    peak growing with the month). The objects alive before the pass are frozen meanwhile, so
    a collection traverses only what the pass made (~9 ms, not ~100 ms)."""
    if gc.get_freeze_count() or not gc.isenabled():  # someone else manages the collector
        yield lambda: None
        return
    gc.freeze()
    chunks = 0

    def after_chunk() -> None:
        nonlocal chunks
        chunks += 1
        if chunks % every == 0:
            gc.collect()

    try:
        yield after_chunk
    finally:
        gc.unfreeze()


class _Default:
    """``validate_month``'s watermark query when none is given: the configured one."""


DEFAULT = _Default()


def _source_watermark(conn: sa.Connection, query: SourceQuery | None, month: BillingMonth) -> str | None:
    if query is None:
        return None
    try:
        return read_source_watermark(conn, query, month)
    except sa.exc.DBAPIError as exc:
        raise ConfigurationError(
            f"the source watermark query {query.path} failed on the product database "
            f"({type(exc.orig).__name__}: {str(exc.orig).strip()[:300]}); fix SOURCE_WATERMARK_SQL "
            "(one row for :month_start / :month_end) or point it at the reference schema's."
        ) from None


def validate_month(
    product: sa.Connection,
    state: sa.Engine,
    query: SourceQuery,
    month: BillingMonth,
    known_skus: list[str],
    run_id: str,
    chunk_rows: int = 50_000,
    watermark_query: SourceQuery | None | _Default = DEFAULT,
) -> ValidationOutcome:
    """Check the contract, then flag, quarantine and count the month in one database pass.

    The groups come back in chunks of ``chunk_rows``; the quarantined rows are written in bulk
    and the counts staged for ``billable_counts`` (``pipeline.billing.counts``) to promote.
    """
    dialect = product.dialect.name
    skus = sorted(set(known_skus))
    if isinstance(watermark_query, _Default):
        watermark_query = source_watermark_query(dialect)

    watermark: str | None = None

    def record(tally: _Tally) -> MonthValidation:
        return MonthValidation(
            month=month.month,
            rows_in=tally.rows,
            rows_valid=tally.valid,
            rows_quarantined=tally.rows - tally.valid,
            reason_counts=dict(sorted(tally.reason_counts.items())),
            known_skus=skus,
            query_sha256=query.sha256,
            run_id=run_id,
            validated_at=utcnow(),
            source_watermark=watermark,
        )

    _, _, violations = check_source_contract(product, query, month)
    if violations:
        return ValidationOutcome(validation=record(_Tally()), contract_violations=violations)
    prepare_connection(product)
    params = {**month_parameters(month, dialect), "known_skus": skus}
    tally = _Tally()

    def quarantine(records: list[dict]) -> None:
        if records:
            writer.write(checked_quarantine(pd.DataFrame.from_records(records, columns=QUARANTINE_COLUMNS)))
            tally.sample.extend(map(_sample_row, records[: QUARANTINE_SAMPLE_ROWS - len(tally.sample)]))

    with state.begin() as state_conn, _pass_connection(product) as pass_conn:
        writer = QuarantineWriter(state_conn, month.month, run_id)
        staged = StagedCountsWriter(state_conn, month.month, run_id)
        # first: on PostgreSQL it opens the snapshot the pass reads; elsewhere a change during
        # the pass makes the recorded watermark older than the rows, so the month is asked again
        watermark = _source_watermark(pass_conn, watermark_query, month)
        statement = bind_known_skus(month_pass_sql(query, dialect))
        with _chunk_garbage_collected() as after_chunk:

            def consume(groups: pd.DataFrame) -> None:
                quarantine(_tally_chunk(tally, groups, staged))
                after_chunk()

            _run_pass(pass_conn, statement, params, chunk_rows, consume)
            if tally.failing_groups:
                for records in _postgresql_quarantined_chunks(pass_conn, query, params, tally, chunk_rows):
                    quarantine(records)
                    after_chunk()
        # the staged groups, and their fingerprint and totals, are the staging writer's
        validation = save_month_validation(state_conn, record(tally))
    sample = pd.DataFrame.from_records(tally.sample, columns=QUARANTINE_COLUMNS) if tally.sample else pd.DataFrame()
    return ValidationOutcome(validation=validation, sample=sample)
