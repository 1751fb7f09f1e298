"""Staged counts: a validation pass stages its counts in the state DB chunk by chunk
(``StagedCountsWriter``, in the validation's transaction) and the same run's count step
promotes them (``promote_staged_counts``: INSERT ... SELECT, totals in SQL, fingerprint
streamed in code-point order) — on SQLite and PostgreSQL. And ``store_billable_counts``:
promotes what its run staged, counts afresh otherwise."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import date, datetime, timezone

import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline.billing import counts as billing_counts
from pipeline.store import months as store_months
from pipeline.billing.counts import COUNT_COLUMNS, PREVIEW_ROWS, counts_frame, store_billable_counts
from pipeline.billing.month import BillingMonth
from pipeline.store.months import (
    MonthValidation,
    StagedCountsWriter,
    bulk_insert,
    count_stored_counts,
    counts_fingerprint,
    load_billable_counts,
    load_month_computation,
    load_month_validation,
    promote_staged_counts,
    replace_billable_counts,
    save_month_validation,
    stored_counts_fingerprint,
)
from pipeline.store.schema import ensure_state_schema, month_validations, quarantined_rows, staged_billable_counts, utcnow
from pipeline.validation.month import validate_month
from tests.product_rows import NY, ProductRows, at, known_skus, reference_query

MARCH = date(2026, 3, 1)
APRIL = date(2026, 4, 1)

# ids Python sorts differently from a locale collation: case, accents, symbols, other scripts
TRICKY_IDS = ["b", "B", "a", "A", "é", "e", "E", "z", "Z", "ä", "日本", "😀", "a b", "a-b", "a_b",
              "a\u00a0b", "10", "9", "Ω", "ß", "ss", "ø", "o", "~", "İ", "i"]


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request, sqlite_url):
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    ensure_state_schema(engine)
    yield engine
    engine.dispose()


def frame(rows: list[tuple[str, str, str, str, int]]) -> pd.DataFrame:
    """Counts in ``COUNT_COLUMNS`` order: (partner, company, company name, sku, users)."""
    columns = {column: [row[i] for row in rows] for i, column in enumerate(COUNT_COLUMNS)}
    return counts_frame(columns)


def tricky_counts() -> pd.DataFrame:
    rows = []
    for i, partner in enumerate(TRICKY_IDS[:9]):
        for j, company in enumerate(TRICKY_IDS):
            for sku in ("SAT", "sat", "Phish"):
                rows.append((partner, company, f"Firma {company} ✓", sku, (i * 7 + j * 3) % 11))
    return frame(rows)


def validation_record(month: date, run_id: str, counts_staged: int | None, *, rows_in: int = 1000,
                      rows_quarantined: int = 4) -> MonthValidation:
    return MonthValidation(
        month=month, rows_in=rows_in, rows_valid=rows_in - rows_quarantined,
        rows_quarantined=rows_quarantined, reason_counts={"missing_user_id": rows_quarantined} if rows_quarantined else {},
        known_skus=["SAT"], query_sha256="q" * 64, run_id=run_id,
        validated_at=datetime.now(timezone.utc), counts_staged=counts_staged,
    )


def stage(state: sa.Engine, month: date, run_id: str, counts: pd.DataFrame, *, chunk: int = 50_000,
          rows_in: int = 1000, rows_quarantined: int = 4) -> int:
    """What validate_month does: stage the counts in chunks and save the validation (which
    records what the writer staged), in one transaction; returns the groups staged."""
    with state.begin() as conn:
        writer = StagedCountsWriter(conn, month, run_id)
        for start in range(0, len(counts), chunk):
            writer.write(counts.iloc[start:start + chunk])
        save_month_validation(
            conn, validation_record(month, run_id, None, rows_in=rows_in, rows_quarantined=rows_quarantined)
        )
    return writer.rows


def promote(state: sa.Engine, month: date, run_id: str):
    return promote_staged_counts(state, month, rows_in=1000, rows_quarantined=4, query_sha256="q" * 64, run_id=run_id)


def staged_rows(state: sa.Engine, month: date | None = None) -> list[tuple]:
    query = sa.select(staged_billable_counts.c.month, staged_billable_counts.c.run_id)
    if month is not None:
        query = query.where(staged_billable_counts.c.month == month)
    with state.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def record(computation) -> dict:
    """A computation's fields but its time (SQLite gives it back naive)."""
    return {k: v for k, v in computation.__dict__.items() if k != "computed_at"}


def as_dict(counts: pd.DataFrame) -> dict[tuple[str, str, str], tuple[str, int]]:
    return {(r.partner_id, r.company_id, r.sku): (r.company_name, int(r.billable_users))
            for r in counts.itertuples(index=False)}


def test_promotion_stores_the_staged_counts_with_the_totals_and_fingerprint_of_the_frame(state):
    counts = tricky_counts()
    assert stage(state, MARCH, "run-1", counts, chunk=100) == len(counts)
    assert len(staged_rows(state, MARCH)) == len(counts)

    stored = promote(state, MARCH, "run-1")

    assert stored is not None and stored.rows == len(counts) == count_stored_counts(state, MARCH)
    assert as_dict(load_billable_counts(state, MARCH)) == as_dict(counts)
    computation = stored.computation
    assert computation.counts_fingerprint == counts_fingerprint(counts)
    assert computation.partners == counts["partner_id"].nunique()
    assert computation.companies == len(counts[["partner_id", "company_id"]].drop_duplicates())
    assert computation.billable_users == counts["billable_users"].sum()
    assert (computation.rows_in, computation.rows_quarantined, computation.rows_counted) == (1000, 4, 996)
    assert computation.run_id == "run-1"
    assert record(load_month_computation(state, MARCH)) == record(computation)
    assert staged_rows(state) == []  # promoted: nothing left waiting

    # the same record as storing the frame itself writes (what the fresh count path does)
    fresh = replace_billable_counts(state, MARCH, counts, rows_in=1000, rows_quarantined=4,
                                    query_sha256="q" * 64, run_id="run-1")
    assert record(fresh) == record(computation)


def test_the_streamed_fingerprint_is_python_code_point_order(state):
    counts = tricky_counts()
    replace_billable_counts(state, MARCH, counts, rows_in=10, rows_quarantined=0, query_sha256="q", run_id="r")
    lines = sorted(
        (r.partner_id, r.company_id, r.sku, int(r.billable_users)) for r in counts.itertuples(index=False)
    )
    expected = hashlib.sha256(
        "".join(f"{p}\x1f{c}\x1f{s}\x1f{u}\n" for p, c, s, u in lines).encode()
    ).hexdigest()
    with state.connect() as conn:
        assert stored_counts_fingerprint(conn, MARCH) == expected == counts_fingerprint(counts)


@pytest.mark.parametrize("fetch_rows", [1, 7, 26, 10_000])
def test_the_totals_and_fingerprint_are_the_frames_whatever_the_batches(state, monkeypatch, fetch_rows):
    """The driver's cursor is read ``FINGERPRINT_FETCH_ROWS`` at a time: a partner or company
    running across a batch boundary is counted once (tricky ids: equal only as Python compares)."""
    monkeypatch.setattr(store_months, "FINGERPRINT_FETCH_ROWS", fetch_rows)
    counts = tricky_counts()
    stage(state, MARCH, "run-1", counts, chunk=13)

    stored = promote(state, MARCH, "run-1")

    computation = stored.computation
    assert stored.rows == len(counts)
    assert computation.partners == counts["partner_id"].nunique()
    assert computation.companies == len(counts[["partner_id", "company_id"]].drop_duplicates())
    assert computation.billable_users == counts["billable_users"].sum()
    assert computation.counts_fingerprint == counts_fingerprint(counts)
    with state.connect() as conn:
        assert stored_counts_fingerprint(conn, MARCH) == computation.counts_fingerprint


def sorted_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """The counts in code-point key order, as the PostgreSQL and SQLite passes stage them."""
    return counts.sort_values(["partner_id", "company_id", "sku"]).reset_index(drop=True)


@pytest.mark.parametrize("chunk", [1, 13, 50_000])
def test_counts_staged_in_key_order_are_promoted_with_the_summary_their_validation_recorded(
    state, monkeypatch, chunk
):
    """Staged in code-point key order (partners and companies running across chunks), the
    counts' fingerprint and totals are summed up as they are written and recorded with the
    validation; the promotion takes them without reading the month back, and they are what
    reading it back gives."""
    counts = sorted_counts(tricky_counts())
    stage(state, MARCH, "run-1", counts, chunk=chunk)
    validation = load_month_validation(state, MARCH)
    assert validation.counts_fingerprint == counts_fingerprint(counts)
    assert validation.counts_partners == counts["partner_id"].nunique()
    assert validation.counts_companies == len(counts[["partner_id", "company_id"]].drop_duplicates())
    assert validation.counts_billable_users == counts["billable_users"].sum()

    def no_read_back(*args, **kwargs):
        raise AssertionError("read the month back though its validation recorded the summary")

    monkeypatch.setattr(store_months, "_stored_counts_summary", no_read_back)
    stored = promote(state, MARCH, "run-1")
    monkeypatch.undo()

    assert stored is not None and stored.rows == len(counts)
    assert as_dict(load_billable_counts(state, MARCH)) == as_dict(counts)
    with state.connect() as conn:
        assert stored_counts_fingerprint(conn, MARCH) == stored.computation.counts_fingerprint
    fresh = replace_billable_counts(state, MARCH, counts, rows_in=1000, rows_quarantined=4,
                                    query_sha256="q" * 64, run_id="run-1")
    assert record(fresh) == record(stored.computation)


@pytest.mark.parametrize("disorder", ["shuffled", "a chunk starting before the last one ended"])
def test_counts_staged_out_of_key_order_leave_the_summary_to_the_promotion(state, monkeypatch, disorder):
    """Counts not staged strictly in key order (a dialect whose pass promises no order) are
    not summed up: the validation records no summary and the promotion reads the month back."""
    counts = sorted_counts(tricky_counts())
    if disorder == "shuffled":
        chunks = [counts.sample(frac=1, random_state=3)]
    else:
        chunks = [counts.iloc[10:20], counts.iloc[:10]]
    with state.begin() as conn:
        writer = StagedCountsWriter(conn, MARCH, "run-1")
        for chunk in chunks:
            writer.write(chunk)
        assert writer.staged_summary() is None
        save_month_validation(conn, validation_record(MARCH, "run-1", None))
    validation = load_month_validation(state, MARCH)
    assert validation.counts_staged == writer.rows
    assert (validation.counts_fingerprint, validation.counts_partners, validation.counts_companies,
            validation.counts_billable_users) == (None, None, None, None)

    read_back = []
    summary = store_months._stored_counts_summary
    monkeypatch.setattr(store_months, "_stored_counts_summary", lambda *a: read_back.append(1) or summary(*a))
    stored = promote(state, MARCH, "run-1")

    assert read_back == [1]
    expected = load_billable_counts(state, MARCH)
    assert stored.computation.counts_fingerprint == counts_fingerprint(expected)
    assert stored.computation.partners == expected["partner_id"].nunique()
    assert stored.computation.billable_users == expected["billable_users"].sum()


@pytest.mark.parametrize("batches, in_order", [
    ([[("a", "c", "s", 1), ("b", "c", "s", 2)]], True),
    ([[("a", "c", "s", 1)], [("a", "c", "t", 2)]], True),
    ([[("a", "c", "s", 1), ("a", "c", "s", 2)]], False),  # a key twice
    ([[("a", "c", "s", 1)], [("a", "c", "s", 2)]], False),  # a key twice, across batches
    ([[("b", "c", "s", 1)], [("a", "c", "s", 2)]], False),  # a batch starting before the last
    ([[("B", "c", "s", 1), ("a", "c", "s", 2), ("é", "c", "s", 3)]], True),  # code points, not a locale
    ([[("a", "c", "s", 1), ("A", "c", "s", 2)]], False),
])
def test_the_key_ordered_summary_knows_when_its_rows_were_not_in_order(batches, in_order):
    summary = store_months.KeyOrderedSummary()
    for batch in batches:
        summary.add(batch)
    assert summary.in_order is in_order
    rows = [row for batch in batches for row in batch]
    assert summary.summary().rows == len(rows)
    assert summary.summary().billable_users == sum(row[3] for row in rows)


def test_a_validation_given_its_own_summary_keeps_it(state):
    """A validation that gives its fingerprint keeps it (the writer's is not put over it)."""
    counts = sorted_counts(tricky_counts())
    with state.begin() as conn:
        StagedCountsWriter(conn, MARCH, "run-1").write(counts)
        given = dataclasses.replace(
            validation_record(MARCH, "run-1", None),
            counts_fingerprint="f" * 64, counts_partners=1, counts_companies=2, counts_billable_users=3,
        )
        save_month_validation(conn, given)
    validation = load_month_validation(state, MARCH)
    assert (validation.counts_fingerprint, validation.counts_partners, validation.counts_companies,
            validation.counts_billable_users, validation.counts_staged) == ("f" * 64, 1, 2, 3, len(counts))


def test_a_month_with_no_counted_group_is_promoted_as_empty(state):
    replace_billable_counts(state, MARCH, tricky_counts(), rows_in=10, rows_quarantined=0,
                            query_sha256="q", run_id="old-run")
    assert stage(state, MARCH, "run-1", frame([]), rows_in=3, rows_quarantined=3) == 0
    assert load_month_validation(state, MARCH).counts_staged == 0

    stored = promote_staged_counts(state, MARCH, rows_in=3, rows_quarantined=3, query_sha256="q" * 64, run_id="run-1")

    assert stored is not None and stored.rows == 0
    assert load_billable_counts(state, MARCH).empty  # the old counts are replaced by none
    computation = stored.computation
    assert (computation.partners, computation.companies, computation.billable_users) == (0, 0, 0)
    assert computation.counts_fingerprint == counts_fingerprint(frame([])) == hashlib.sha256(b"").hexdigest()
    assert load_month_computation(state, MARCH).run_id == "run-1"


def test_counts_not_staged_by_the_validation_are_not_promoted(state):
    """counts_staged NULL: the validation's pass did not stage (an older writer) -> None, and
    the stored counts stay."""
    old = tricky_counts()
    replace_billable_counts(state, MARCH, old, rows_in=10, rows_quarantined=0, query_sha256="q", run_id="old-run")
    with state.begin() as conn:
        save_month_validation(conn, validation_record(MARCH, "run-1", None))

    assert promote(state, MARCH, "run-1") is None
    assert as_dict(load_billable_counts(state, MARCH)) == as_dict(old)
    assert load_month_computation(state, MARCH).run_id == "old-run"


def test_staged_rows_of_another_run_are_not_promoted(state):
    staged = frame([("p1", "c1", "One", "SAT", 3), ("p1", "c2", "Two", "SAT", 5)])
    stage(state, MARCH, "run-A", staged)

    assert promote(state, MARCH, "run-B") is None  # run B's count step: not its validation
    assert load_billable_counts(state, MARCH).empty
    assert load_month_computation(state, MARCH) is None
    assert staged_rows(state, MARCH) == [(MARCH, "run-A")] * 2  # still run A's to promote

    assert promote(state, MARCH, "run-A").rows == 2


def test_a_new_validation_replaces_the_months_staged_rows_and_leaves_other_months(state):
    stage(state, MARCH, "run-A", frame([("p1", "c1", "One", "SAT", 3), ("p1", "c2", "Two", "SAT", 5)]))
    stage(state, APRIL, "run-X", frame([("p9", "c9", "Nine", "SAT", 9)]))
    stage(state, MARCH, "run-B", frame([("p2", "c1", "One", "SAT", 1)]))

    assert sorted(staged_rows(state)) == [(MARCH, "run-B"), (APRIL, "run-X")]
    assert promote(state, MARCH, "run-A") is None  # its validation was replaced
    assert as_dict(load_billable_counts(state, MARCH)) == {}
    assert promote(state, MARCH, "run-B").rows == 1
    assert as_dict(load_billable_counts(state, MARCH)) == {("p2", "c1", "SAT"): ("One", 1)}
    assert staged_rows(state) == [(APRIL, "run-X")]


def test_staging_rolls_back_with_its_validation(state):
    stage(state, MARCH, "run-A", frame([("p1", "c1", "One", "SAT", 3)]))
    with pytest.raises(RuntimeError, match="validation failed"):
        with state.begin() as conn:
            writer = StagedCountsWriter(conn, MARCH, "run-B")
            writer.write(frame([("p2", "c2", "Two", "SAT", 2)]))
            raise RuntimeError("validation failed midway")

    assert staged_rows(state, MARCH) == [(MARCH, "run-A")]
    assert load_month_validation(state, MARCH).run_id == "run-A"
    assert promote(state, MARCH, "run-A").rows == 1


def test_promoting_twice_is_refused_and_keeps_the_counts(state):
    stage(state, MARCH, "run-1", frame([("p1", "c1", "One", "SAT", 3)]))
    first = promote(state, MARCH, "run-1")
    assert first is not None

    assert promote(state, MARCH, "run-1") is None  # already promoted (staged rows gone)
    assert as_dict(load_billable_counts(state, MARCH)) == {("p1", "c1", "SAT"): ("One", 3)}
    assert record(load_month_computation(state, MARCH)) == record(first.computation)


def test_the_validation_records_what_its_transaction_staged(state):
    with state.begin() as conn:  # given: kept as given
        StagedCountsWriter(conn, MARCH, "run-1").write(frame([("p1", "c1", "One", "SAT", 3)]))
        save_month_validation(conn, validation_record(MARCH, "run-1", 7))
    assert load_month_validation(state, MARCH).counts_staged == 7

    with state.begin() as conn:  # another run's writer is not this validation's
        StagedCountsWriter(conn, MARCH, "run-1")
        save_month_validation(conn, validation_record(MARCH, "run-2", None))
    assert load_month_validation(state, MARCH).counts_staged is None

    with state.begin() as conn:  # another month's writer neither
        StagedCountsWriter(conn, APRIL, "run-3")
        save_month_validation(conn, validation_record(MARCH, "run-3", None))
    assert load_month_validation(state, MARCH).counts_staged is None

    with state.begin() as conn:  # staged in an earlier transaction: not this one's
        StagedCountsWriter(conn, MARCH, "run-4").write(frame([("p1", "c1", "One", "SAT", 3)]))
    with state.begin() as conn:
        save_month_validation(conn, validation_record(MARCH, "run-4", None))
    assert load_month_validation(state, MARCH).counts_staged is None
    assert promote(state, MARCH, "run-4") is None


def test_the_writer_counts_its_rows_and_skips_empty_chunks(state):
    counts = tricky_counts()
    with state.begin() as conn:
        writer = StagedCountsWriter(conn, MARCH, "run-1")
        writer.write(frame([]))
        writer.write(counts.iloc[:10])
        writer.write(counts.iloc[10:])
        assert writer.rows == len(counts)
    with state.connect() as conn:
        users = conn.execute(
            sa.select(sa.func.sum(staged_billable_counts.c.billable_users))
        ).scalar_one()
    assert users == counts["billable_users"].sum()


def test_the_preview_reads_only_its_rows(state):
    counts = tricky_counts()
    replace_billable_counts(state, MARCH, counts, rows_in=10, rows_quarantined=0, query_sha256="q", run_id="r")
    preview = load_billable_counts(state, MARCH, limit=PREVIEW_ROWS)
    assert len(preview) == PREVIEW_ROWS
    assert list(preview.columns) == COUNT_COLUMNS
    assert count_stored_counts(state, MARCH) == len(counts)


@pytest.mark.parametrize("chunk_rows", [2, 50_000])
def test_bulk_rows_round_trip_whatever_they_hold(state, monkeypatch, chunk_rows):
    """COPY (PostgreSQL) and executemany (SQLite) store what they are given: text needing an
    escape (tab, newline, CR, backslash, "\\N"), empty text apart from NULL, non-ASCII, ints
    as text, a column of one value for every row; in chunks or not."""
    monkeypatch.setattr(store_months, "BULK_CHUNK_ROWS", chunk_rows)
    texts = ["plain", "tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "", None, "日本 ✓", "😀"]
    records = [
        {"month": MARCH, "row_number": i + 1, "partner_id": text, "company_id": "c1",
         "company_name": None if i % 3 else f"Firma {i}", "sku": "SAT", "user_id": str(i),
         "active_from": "2026-03-01", "active_to": None, "billable": "1", "reason_codes": "missing_user_id",
         "reasons": f"reason {text}", "run_id": "run-1", "quarantined_at": datetime(2026, 3, 2, tzinfo=timezone.utc)}
        for i, text in enumerate(texts)
    ]
    clean = [dict(r, row_number=100 + r["row_number"], partner_id=f"p{r['row_number']}", reasons="ok")
             for r in records]  # a chunk whose text columns need no escape
    with state.begin() as conn:
        bulk_insert(conn, quarantined_rows, records + clean)
        store_months.insert_columns(conn, quarantined_rows, {
            "month": MARCH, "row_number": [201, 202, 203], "partner_id": ["x", "y\tz", "w"],
            "company_id": pd.Series(["c1", "c2", "c3"]), "company_name": None, "sku": "SAT",
            "user_id": [7, 8, 9], "active_from": None, "active_to": None, "billable": ["1", 0, None],
            "reason_codes": "r", "reasons": "why", "run_id": "run-1", "quarantined_at": utcnow(),
        }, 3)
    with state.connect() as conn:
        stored = conn.execute(
            sa.select(quarantined_rows.c.row_number, quarantined_rows.c.partner_id, quarantined_rows.c.company_id,
                      quarantined_rows.c.company_name, quarantined_rows.c.user_id, quarantined_rows.c.active_to,
                      quarantined_rows.c.billable, quarantined_rows.c.reasons)
            .order_by(quarantined_rows.c.row_number)
        ).all()
    expected = [(r["row_number"], r["partner_id"], r["company_id"], r["company_name"], r["user_id"],
                 r["active_to"], r["billable"], r["reasons"]) for r in records + clean]
    expected += [(201, "x", "c1", None, "7", None, "1", "why"), (202, "y\tz", "c2", None, "8", None, "0", "why"),
                 (203, "w", "c3", None, "9", None, None, "why")]
    assert [tuple(row) for row in stored] == expected


# ------------------------------------------------------------ store_billable_counts


@pytest.fixture
def product(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'product.db'}")
    rows = ProductRows(engine).services().partner("p1").company("c1", "p1", name="Acme")
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 2, 1))
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 2), at(2026, 3, 20))
    rows.enroll("u1", "c1", "PHISH", at(2026, 3, 5))
    yield engine
    engine.dispose()


def _validate(product: sa.Engine, state: sa.Engine, run_id: str) -> MonthValidation:
    month = BillingMonth.from_partition_key("2026-03-01", NY)
    with product.connect() as conn:
        outcome = validate_month(conn, state, reference_query(product), month, known_skus(product), run_id)
    return outcome.validation


def _store(product: sa.Engine, state: sa.Engine, validation: MonthValidation, run_id: str):
    month = BillingMonth.from_partition_key("2026-03-01", NY)
    with product.connect() as conn:
        return store_billable_counts(conn, state, reference_query(product), month, validation, run_id)


EXPECTED = {("p1", "c1", "PHISH"): ("Acme", 1), ("p1", "c1", "SAT"): ("Acme", 2)}


def test_store_counts_afresh_when_nothing_was_staged(product, state):
    _validate(product, state, "run-1")
    with state.begin() as conn:  # a validation that did not stage its counts
        conn.execute(sa.update(month_validations).values(counts_staged=None))
    validation = load_month_validation(state, MARCH)

    counted = _store(product, state, validation, "run-1")

    assert not counted.staged
    assert counted.rows == 2 and as_dict(counted.preview) == EXPECTED
    assert as_dict(load_billable_counts(state, MARCH)) == EXPECTED


def test_store_promotes_what_its_run_staged_without_counting(product, state, monkeypatch):
    _validate(product, state, "run-1")
    validation = load_month_validation(state, MARCH)
    if validation.counts_staged is None:  # a validate_month that does not stage: stage as it would
        with state.begin() as conn:
            writer = StagedCountsWriter(conn, MARCH, "run-1")
            writer.write(frame([("p1", "c1", "Acme", "SAT", 2), ("p1", "c1", "Acme", "PHISH", 1)]))
            conn.execute(sa.update(month_validations).values(counts_staged=writer.rows))
        validation = load_month_validation(state, MARCH)

    def no_count(*args, **kwargs):
        raise AssertionError("counted again though its validation staged the counts")

    monkeypatch.setattr(billing_counts, "aggregate_billable_users", no_count)
    counted = _store(product, state, validation, "run-1")

    assert counted.staged and counted.rows == 2
    assert as_dict(counted.preview) == EXPECTED
    assert as_dict(load_billable_counts(state, MARCH)) == EXPECTED
    assert staged_rows(state) == []


def test_store_counts_afresh_in_another_run_than_its_validation(product, state, monkeypatch):
    _validate(product, state, "run-1")
    with state.begin() as conn:
        writer = StagedCountsWriter(conn, MARCH, "run-1")
        writer.write(frame([("p1", "c1", "Acme", "SAT", 99)]))  # not what the source says
        conn.execute(sa.update(month_validations).values(counts_staged=writer.rows))
    validation = load_month_validation(state, MARCH)

    counted = _store(product, state, validation, "run-2")

    assert not counted.staged
    assert as_dict(load_billable_counts(state, MARCH)) == EXPECTED
    assert load_month_computation(state, MARCH).run_id == "run-2"


def test_the_fingerprint_ignores_a_locale_collation_of_the_state_database(postgres_url):
    """Production PostgreSQL may sort text by a locale (en_US: case and accents folded): the
    fingerprint still reads the counts in code-point order, as pandas sorts them."""
    engine = sa.create_engine(postgres_url)
    try:
        ensure_state_schema(engine)
        with engine.begin() as conn:
            for column in ("partner_id", "company_id", "sku"):
                conn.execute(sa.text(
                    f'ALTER TABLE billable_counts ALTER COLUMN {column} TYPE text COLLATE "en-x-icu"'
                ))
        counts = tricky_counts()
        stage(engine, MARCH, "run-1", counts, chunk=50)
        with engine.connect() as conn:
            locale_order = conn.execute(sa.text(
                "SELECT partner_id FROM staged_billable_counts ORDER BY partner_id COLLATE \"en-x-icu\""
            )).scalars().all()
        assert locale_order != sorted(locale_order)  # the locale's order is not Python's

        stored = promote(engine, MARCH, "run-1")

        assert stored.computation.counts_fingerprint == counts_fingerprint(counts)
    finally:
        engine.dispose()
