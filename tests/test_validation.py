"""Validation: each bad-row kind is quarantined with an actionable reason, never counted, and the
database-side rules (``valid_row_sql``) agree; the query-level contract; a vendor's own query.

Row-level tests run on SQLite and PostgreSQL (``product_engine``); non-timestamp text can only
be stored on SQLite (timestamptz refuses it), so those cases run there only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline.source import product_schema as ps
from pipeline import settings
from pipeline.billing.month import BillingMonth
from pipeline.validation.month import validate_month
from pipeline.resources import ProductDatabase, default_resources
from pipeline.store.months import load_quarantine
from pipeline.source.utilization import (
    CONTRACT_COLUMNS,
    load_known_skus,
    month_parameters,
    utilization_query,
)
from pipeline.billing.counts import aggregate_billable_users, valid_row_sql
from pipeline.validation.rows import REASONS, RULE_NAMES
from pipeline.source.contract import check_contract
from tests.product_rows import NY, ProductRows, as_dict, at, known_skus, reference_query, run_month

UTC = timezone.utc
MARCH = "2026-03-01"
GOOD = {("p1", "c1", "SAT"): 1}


@pytest.fixture
def rows(product_engine) -> ProductRows:
    """p1/c1, services SAT/PHISH/EMAIL, one good billable user u_ok active all of March."""
    rows = ProductRows(product_engine).basic()
    rows.users("u_ok", "u_bad")
    rows.enroll("u_ok", "c1", "SAT", at(2026, 1, 1), None)
    return rows


def sql_accepted_rows(engine: sa.Engine, month_key: str = MARCH) -> int:
    """How many of the month's rows ``valid_row_sql`` accepts, asked of the database directly."""
    query = reference_query(engine)
    month = BillingMonth.from_partition_key(month_key, NY)
    with engine.connect() as conn:
        aggregate = aggregate_billable_users(conn, query, month, known_skus(engine))
        params = month_parameters(month, engine.dialect.name)
        params["known_skus"] = known_skus(engine)
        direct = conn.execute(
            sa.text(
                f"SELECT COUNT(*) FROM ({query.sql}) AS u WHERE {valid_row_sql(engine.dialect.name)}"
            ).bindparams(sa.bindparam("known_skus", expanding=True)),
            params,
        ).scalar_one()
    assert direct == aggregate.accepted_rows
    return direct


@dataclass(frozen=True)
class BadRow:
    setup: Callable[[ProductRows], object]
    codes: tuple[str, ...]  # exactly the reason codes of the quarantined row, in rule order
    fragments: tuple[str, ...]  # what the reason text must say (the problem and the fix)
    sqlite_only: bool = False
    raw: dict = field(default_factory=dict)  # raw values the quarantine row keeps


ALWAYS = at(2026, 1, 1)


def _execute(rows: ProductRows, sql: str) -> None:
    """Write what the reference schema's typed inserts cannot (e.g. invalid UTF-8 on SQLite)."""
    with rows.engine.begin() as conn:
        conn.execute(sa.text(sql))

BAD_ROWS: dict[str, BadRow] = {
    "user_id_null": BadRow(
        lambda r: r.enroll(None, "c1", "PHISH", ALWAYS, None),
        ("user_missing", "billable_invalid"),
        ("names no user", "fix the enrollment"),
        raw={"user_id": None, "sku": "PHISH"},
    ),
    "user_id_blank": BadRow(
        lambda r: r.enroll("   ", "c1", "PHISH", ALWAYS, None),
        ("user_missing", "billable_invalid"),
        ("names no user", "fix the enrollment"),
        raw={"user_id": "   "},
    ),
    "company_id_null": BadRow(
        lambda r: r.enroll("u_bad", None, "SAT", ALWAYS, None),
        ("partner_missing", "company_missing", "company_name_missing"),
        ("names no company", "fix the enrollment", "belongs to no partner"),
        raw={"company_id": None, "partner_id": None},
    ),
    "company_id_blank": BadRow(
        lambda r: r.enroll("u_bad", " ", "SAT", ALWAYS, None),
        ("partner_missing", "company_missing", "company_name_missing"),
        ("names no company", "fix the enrollment"),
    ),
    "sku_null": BadRow(
        lambda r: r.enroll("u_bad", "c1", None, ALWAYS, None),
        ("sku_missing",),
        ("names no service", "fix the enrollment"),
    ),
    "sku_blank": BadRow(
        lambda r: r.enroll("u_bad", "c1", "", ALWAYS, None),
        ("sku_missing",),
        ("names no service", "fix the enrollment"),
    ),
    "sku_unknown": BadRow(
        lambda r: r.enroll("u_bad", "c1", "LEGACY-ARCHIVE", ALWAYS, None),
        ("sku_unknown",),
        ("'LEGACY-ARCHIVE' is not a service the vendor sells", "add it to the services", "SERVICES_SQL"),
        raw={"sku": "LEGACY-ARCHIVE"},
    ),
    "span_reversed": BadRow(
        lambda r: r.enroll("u_bad", "c1", "SAT", at(2026, 3, 20), at(2026, 3, 10)),
        ("span_reversed",),
        ("the span ends (", ") before it starts (", "fix the enrollment's dates"),
    ),
    "company_without_partner": BadRow(
        lambda r: (r.company("c_orphan", None), r.enroll("u_bad", "c_orphan", "SAT", ALWAYS, None)),
        ("partner_missing",),
        ("company c_orphan belongs to no partner", "assign the company to a partner"),
        raw={"company_id": "c_orphan", "partner_id": None, "company_name": "Company c_orphan"},
    ),
    "company_of_unknown_partner": BadRow(
        lambda r: (r.company("c_dangling", "p_gone"), r.enroll("u_bad", "c_dangling", "SAT", ALWAYS, None)),
        ("partner_missing",),
        ("company c_dangling belongs to no partner", "assign the company to a partner"),
    ),
    "company_without_name": BadRow(
        lambda r: (r.company("c_noname", "p1", None), r.enroll("u_bad", "c_noname", "SAT", ALWAYS, None)),
        ("company_name_missing",),
        ("company c_noname has no name", "a Gradient account needs a name", "fix the company row"),
    ),
    "company_missing_from_companies": BadRow(
        lambda r: r.enroll("u_bad", "c_nowhere", "SAT", ALWAYS, None),
        ("partner_missing", "company_name_missing"),
        ("company c_nowhere", "is not in the companies table", "fix the company row"),
        raw={"company_id": "c_nowhere", "company_name": None},
    ),
    "user_missing_from_users": BadRow(
        lambda r: r.enroll("u_ghost", "c1", "SAT", ALWAYS, None),
        ("billable_invalid",),
        ("billable is '(empty)', not true/false", "the user u_ghost is missing from the users table"),
        raw={"user_id": "u_ghost", "billable": None},
    ),
    "user_without_billable_flag": BadRow(
        lambda r: (r.user("u_unflagged", None), r.enroll("u_unflagged", "c1", "SAT", ALWAYS, None)),
        ("billable_invalid",),
        ("not true/false", "u_unflagged", "has no billable flag"),
    ),
    "active_from_null": BadRow(
        lambda r: r.enroll("u_bad", "c1", "SAT", None, at(2026, 3, 20)),
        ("active_from_invalid",),
        ("active_from '(empty)' is not a timestamp", "store ISO-8601 with a time zone"),
    ),
    "active_from_not_a_date": BadRow(
        lambda r: r.enroll("u_bad", "c1", "SAT", "not-a-date", None),
        ("active_from_invalid",),
        ("active_from 'not-a-date' is not a timestamp", "store ISO-8601 with a time zone"),
        sqlite_only=True,
        raw={"active_from": "not-a-date"},
    ),
    "active_from_month_13": BadRow(
        lambda r: r.enroll("u_bad", "c1", "SAT", "2026-13-01 00:00:00", None),
        ("active_from_invalid",),
        ("'2026-13-01 00:00:00' is not a timestamp",),
        sqlite_only=True,
    ),
    "active_from_epoch_number": BadRow(
        # an integer in a TEXT-affinity column: SQLite keeps it as the text '1772341200'
        lambda r: r.enroll("u_bad", "c1", "SAT", 1772341200, None),
        ("active_from_invalid",),
        ("'1772341200' is not a timestamp",),
        sqlite_only=True,
    ),
    "active_to_not_a_date": BadRow(
        lambda r: r.enroll("u_bad", "c1", "SAT", ALWAYS, "yesterday"),
        ("active_to_invalid",),
        ("active_to 'yesterday' is not a timestamp", "or null while the user is still active"),
        sqlite_only=True,
        raw={"active_to": "yesterday"},
    ),
    "active_to_day_first": BadRow(
        lambda r: r.enroll("u_bad", "c1", "SAT", ALWAYS, "31/03/2026"),
        ("active_to_invalid",),
        ("'31/03/2026' is not a timestamp",),
        sqlite_only=True,
    ),
    "user_id_padded": BadRow(
        lambda r: (r.user(" u_ok"), r.enroll(" u_ok", "c1", "SAT", ALWAYS, None)),
        ("id_padded",),
        ("leading or trailing spaces", "user ' u_ok'", "trim it in the product"),
        raw={"user_id": " u_ok"},
    ),
    "company_name_with_a_tab": BadRow(
        lambda r: (r.company("c_tab", "p1", "Acme\tLtd"), r.enroll("u_bad", "c_tab", "SAT", ALWAYS, None)),
        ("control_characters",),
        ("holds control characters", "remove them in the product"),
        raw={"company_name": "Acme\tLtd"},
    ),
    "company_name_too_long": BadRow(
        lambda r: (r.company("c_long", "p1", "N" * 256), r.enroll("u_bad", "c_long", "SAT", ALWAYS, None)),
        ("value_too_long",),
        ("longer than 255 characters", "shorten it in the product"),
    ),
    "company_name_invalid_utf8": BadRow(
        lambda r: (
            r.company("c_bytes", "p1"),
            r.enroll("u_bad", "c_bytes", "SAT", ALWAYS, None),
            _execute(r, "UPDATE companies SET name = CAST(X'41636de5ff' AS TEXT) WHERE company_id = 'c_bytes'"),
        ),
        ("value_unreadable",),
        ("not valid UTF-8", "store ids and names as UTF-8 text"),
        sqlite_only=True,
        raw={"company_name": "Acm\\xe5\\xff"},
    ),
}


def test_every_reason_code_has_a_case_and_an_actionable_text():
    covered = {code for case in BAD_ROWS.values() for code in case.codes}
    assert covered == set(RULE_NAMES)
    for code, text in REASONS.items():
        problem, _, fix = text.partition(" — ")
        assert problem and fix, f"{code}: the reason must name the problem and, after ' — ', the fix"


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_is_quarantined_with_its_reason_and_not_counted(kind, rows, product_engine, state_engine):
    case = BAD_ROWS[kind]
    if case.sqlite_only and product_engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's timestamptz cannot hold non-timestamp values")
    case.setup(rows)
    counts, validation = run_month(product_engine, state_engine, MARCH)  # no ReconciliationError

    # not counted: only the good user's group, with the good user only
    assert as_dict(counts) == GOOD
    # quarantined, with its reason codes and counts
    assert (validation.rows_in, validation.rows_valid, validation.rows_quarantined) == (2, 1, 1)
    assert validation.reason_counts == {code: 1 for code in case.codes}
    quarantine = load_quarantine(state_engine, date(2026, 3, 1))
    assert len(quarantine) == 1
    row = quarantine.iloc[0].to_dict()
    assert row["reason_codes"] == ",".join(case.codes)
    for fragment in case.fragments:
        assert fragment in row["reasons"], (fragment, row["reasons"])
    assert row["reasons"].count(" — ") == len(case.codes)  # one problem — fix per code
    assert row["run_id"] == "test-run"
    assert row["row_number"] in (1, 2)
    for column, value in case.raw.items():
        assert row[column] == value, (column, row[column])
    # the SQL rule agrees: the database accepts exactly the good row
    assert sql_accepted_rows(product_engine) == 1


def test_all_bad_kinds_at_once_across_chunks(product_engine, state_engine):
    """Every kind in one month, validated in chunks of 3 rows: counts, reasons, row numbers."""
    rows = ProductRows(product_engine).basic()
    rows.users("u_ok", "u_bad")
    rows.enroll("u_ok", "c1", "SAT", at(2026, 1, 1), None)
    cases = [
        c for c in BAD_ROWS.values() if not (c.sqlite_only and product_engine.dialect.name != "sqlite")
    ]
    for case in cases:
        case.setup(rows)
    rows.users("u_ok2")
    rows.enroll("u_ok2", "c1", "SAT", at(2026, 3, 31, 23), None)
    counts, validation = run_month(product_engine, state_engine, MARCH, chunk_rows=3)
    assert as_dict(counts) == {("p1", "c1", "SAT"): 2}
    assert validation.rows_in == len(cases) + 2
    assert validation.rows_quarantined == len(cases)
    expected: dict[str, int] = {}
    for case in cases:
        for code in case.codes:
            expected[code] = expected.get(code, 0) + 1
    assert validation.reason_counts == expected
    quarantine = load_quarantine(state_engine, date(2026, 3, 1))
    assert len(quarantine) == len(cases)
    assert quarantine["row_number"].is_unique
    assert set(quarantine["row_number"]) <= set(range(1, validation.rows_in + 1))
    assert sql_accepted_rows(product_engine) == 2


def test_bad_rows_outside_the_month_are_not_returned(rows, product_engine, state_engine):
    rows.enroll("u_bad", "c1", "LEGACY-ARCHIVE", at(2025, 1, 1), at(2025, 6, 1))
    rows.enroll(None, "c1", "SAT", at(2026, 5, 1), None)
    counts, validation = run_month(product_engine, state_engine, MARCH)
    assert as_dict(counts) == GOOD
    assert validation.rows_quarantined == 0 and validation.rows_in == 1


def test_valid_iso_text_variants_are_accepted_on_sqlite(product_engine, state_engine):
    """Vendor text timestamps in the common ISO-8601 spellings are read alike by pandas and SQL."""
    if product_engine.dialect.name != "sqlite":
        pytest.skip("text timestamps are a SQLite matter")
    rows = ProductRows(product_engine).basic()
    variants = [
        "2026-03-05T10:00:00Z",
        "2026-03-05 10:00:00-05:00",
        "2026-03-05 10:00:00.250+00:00",
        "2026-03-05",
        "2026-03-05 10:00",
        "2026-03-05T10:00:00+09:00",
    ]
    for i, text in enumerate(variants):
        rows.user(f"u{i}")
        rows.enroll(f"u{i}", "c1", "SAT", text, "2026-03-20T00:00:00Z")
    counts, validation = run_month(product_engine, state_engine, MARCH)
    assert validation.rows_quarantined == 0, load_quarantine(state_engine, date(2026, 3, 1)).reasons.tolist()
    assert as_dict(counts) == {("p1", "c1", "SAT"): len(variants)}


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (at(2026, 1, 1), "2026-02-30 00:00:00"),
        ("2026-02-29 10:00:00", None),
        (at(2026, 1, 1), "2026-04-31 12:00:00+00:00"),
    ],
    ids=["end_feb_30", "start_feb_29_2026", "end_apr_31"],
)
def test_impossible_calendar_date_is_quarantined_not_blocking(sqlite_url, state_engine, start, end):
    engine = sa.create_engine(sqlite_url)
    rows = ProductRows(engine).basic()
    rows.users("u_ok", "u_bad")
    rows.enroll("u_ok", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("u_bad", "c1", "SAT", start, end)
    counts, validation = run_month(engine, state_engine, MARCH)
    assert validation.rows_quarantined == 1
    assert as_dict(counts) == GOOD


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (at(2026, 1, 1), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),  # "open-ended" sentinel
        (at(2026, 1, 1), datetime(2300, 1, 1, tzinfo=UTC)),  # past pandas' 2262 limit
        (datetime(1, 1, 1, tzinfo=UTC), None),  # before pandas' 1677 limit
    ],
    ids=["end_9999", "end_2300", "start_0001"],
)
def test_out_of_pandas_range_dates_are_billed_not_blocking(rows, product_engine, state_engine, start, end):
    """Dates outside pandas' datetime64[ns] range are real timestamps: the span is billed, and
    pandera and the database agree on it (no ReconciliationError)."""
    rows.enroll("u_bad", "c1", "SAT", start, end)
    counts, validation = run_month(product_engine, state_engine, MARCH)
    assert validation.rows_quarantined == 0
    assert as_dict(counts) == {("p1", "c1", "SAT"): 2}


ODD_TEXT = [
    "2026-03-05 10:00:00+0500",  # offset without a colon
    "2026-03-05T10:00:00+05",  # offset hours only
    "2026-03-05 10",  # hour without minutes
    "2026-03-05 10:00:00z",  # lower-case z
    "2026-03-05T",  # dangling separator
    "2026-03-05 24:00:00",  # hour 24 (ISO end of day)
    "2026-03-05 10:00:00 UTC",
    "2026-03-05 10:00:00.",
    "now",
    "today",
    " 2026-03-05",
    "20260305",
    "",
]


@pytest.mark.parametrize("text", ODD_TEXT)
def test_odd_text_timestamps_are_judged_alike_by_pandera_and_sql(sqlite_url, state_engine, text):
    """Whatever a text timestamp looks like, pandera and valid_row_sql judge it alike: the month
    never fails with ReconciliationError; the row is either quarantined or read as a time."""
    engine = sa.create_engine(sqlite_url)
    rows = ProductRows(engine).basic()
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", text, None)
    rows.enroll("u2", "c1", "PHISH", at(2026, 1, 1), text)
    counts, validation = run_month(engine, state_engine, MARCH)  # must not raise
    assert validation.rows_valid + validation.rows_quarantined == validation.rows_in
    assert sql_accepted_rows(engine) == validation.rows_valid


# ------------------------------------------------------------------ the contract


def contract_frame(**overrides) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "partner_id": ["p1", "p1"],
            "company_id": ["c1", "c2"],
            "company_name": ["One", "Two"],
            "sku": ["SAT", "PHISH"],
            "user_id": ["u1", "u2"],
            "active_from": [pd.Timestamp("2026-03-01", tz="UTC"), pd.Timestamp("2026-03-02", tz="UTC")],
            "active_to": [None, pd.Timestamp("2026-03-09", tz="UTC")],
            "billable": [True, False],
        }
    )
    for column, values in overrides.items():
        frame[column] = values
    return frame


def violations(frame: pd.DataFrame) -> dict[str, str]:
    return {v.column: v.problem for v in check_contract(frame.columns, frame)}


def test_check_contract_valid_frames_have_no_violations():
    assert violations(contract_frame()) == {}
    # SQLite's shape: ISO text timestamps and 1/0 booleans
    sqlite_like = contract_frame(
        active_from=["2026-03-01 05:00:00+00:00", "2026-03-02 05:00:00+00:00"],
        active_to=[None, "2026-03-09 05:00:00+00:00"],
        billable=[1, 0],
    )
    assert violations(sqlite_like) == {}
    # aware datetime objects as the PostgreSQL driver returns them
    pg_like = contract_frame(
        active_from=pd.Series([datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)], dtype=object)
    )
    assert violations(pg_like) == {}
    # missing values alone are the rows' business, not the contract's
    assert violations(contract_frame(user_id=[None, "u2"], billable=[None, True])) == {}
    # an empty result with every column is fine
    assert check_contract(CONTRACT_COLUMNS, pd.DataFrame(columns=list(CONTRACT_COLUMNS))) == []


@pytest.mark.parametrize("missing", ["billable", "active_to", "company_name", "partner_id"])
def test_check_contract_missing_column(missing):
    frame = contract_frame().drop(columns=[missing])
    found = violations(frame)
    assert list(found) == [missing]
    assert "missing from the query result" in found[missing] and "UTILIZATION_SQL" in found[missing]
    # also when the result is empty
    assert [v.column for v in check_contract(frame.columns, frame.iloc[:0])] == [missing]


@pytest.mark.parametrize("column", ["partner_id", "company_id", "user_id"])
def test_check_contract_integer_ids(column):
    found = violations(contract_frame(**{column: [101, 102]}))
    assert list(found) == [column]
    assert "integer" in found[column] and "cast it to text" in found[column]


def test_check_contract_text_booleans():
    found = violations(contract_frame(billable=["true", "false"]))
    assert list(found) == ["billable"]
    assert "not boolean" in found["billable"] and "true/false" in found["billable"]
    assert list(violations(contract_frame(billable=[0, 2]))) == ["billable"]  # not a 0/1 flag


@pytest.mark.parametrize(
    "values", [[1772341200, 1772427600], [1772341200.5, 1772427600.0]], ids=["epoch_int", "epoch_float"]
)
def test_check_contract_numeric_timestamps(values):
    found = violations(contract_frame(active_from=values, active_to=values))
    assert set(found) == {"active_from", "active_to"}
    assert "not a timestamp" in found["active_from"]


def test_a_query_with_integer_ids_breaks_the_contract_in_validate_month(tmp_path, state_engine):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ints.db'}")
    rows = ProductRows(engine).basic()
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    path = tmp_path / "int_ids.sql"
    path.write_text(
        reference_query(engine).sql.replace("e.user_id AS user_id", "e.enrollment_id AS user_id"),
        encoding="utf-8",
    )
    query = utilization_query(str(path), "sqlite")
    month = BillingMonth.from_partition_key(MARCH, NY)
    with engine.connect() as conn:
        outcome = validate_month(conn, state_engine, query, month, known_skus(engine), "r1")
    assert [v.column for v in outcome.contract_violations] == ["user_id"]
    assert load_quarantine(state_engine, date(2026, 3, 1)).empty


# ------------------------------------------------------------------ a vendor's own query


VENDOR_SQL = {
    "sqlite": """
-- Vendor query over the seats table; binds :month_start and :month_end (this comment is dropped)
SELECT
    msp AS partner_id,
    tenant AS company_id,
    tenant_label AS company_name,
    product_code AS sku,
    login AS user_id,
    seat_from AS active_from,
    seat_until AS active_to,
    is_paid AS billable
FROM seats
WHERE julianday(seat_from) IS NULL OR (
    julianday(seat_from) < julianday(:month_end)
    AND (seat_until IS NULL OR julianday(seat_until) > julianday(:month_start))
);
""",
    "postgresql": """
-- Vendor query over the seats table; binds :month_start and :month_end (this comment is dropped)
SELECT
    msp AS partner_id,
    tenant AS company_id,
    tenant_label AS company_name,
    product_code AS sku,
    login AS user_id,
    seat_from AS active_from,
    seat_until AS active_to,
    is_paid AS billable
FROM seats
WHERE seat_from < :month_end
  AND (seat_until IS NULL OR seat_until > :month_start);
""",
}

VENDOR_SERVICES_SQL = """
SELECT code AS sku, title AS name, '' AS description, 'security' AS category, code AS subcategory
FROM catalog
"""


def test_vendor_query_file_over_another_schema_works(product_engine, state_engine, tmp_path, monkeypatch):
    dialect = product_engine.dialect.name
    meta = sa.MetaData()
    seats = sa.Table(
        "seats", meta,
        sa.Column("seat_id", sa.Integer, primary_key=True),
        sa.Column("msp", sa.Text), sa.Column("tenant", sa.Text), sa.Column("tenant_label", sa.Text),
        sa.Column("product_code", sa.Text), sa.Column("login", sa.Text),
        sa.Column("seat_from", ps.Timestamp), sa.Column("seat_until", ps.Timestamp),
        sa.Column("is_paid", sa.Boolean),
    )
    code = sa.Text().with_variant(sa.String(64), "mysql", "mariadb")  # MySQL keys need a length
    catalog = sa.Table("catalog", meta, sa.Column("code", code, primary_key=True), sa.Column("title", sa.Text))
    meta.create_all(product_engine)
    ts = lambda v: ps.to_db_timestamp(v, dialect)  # noqa: E731

    def seat(msp, tenant, product, login, start, end=None, paid=True):
        return {"msp": msp, "tenant": tenant, "tenant_label": f"Tenant {tenant}", "product_code": product,
                "login": login, "seat_from": ts(start), "seat_until": ts(end), "is_paid": paid}

    with product_engine.begin() as conn:
        conn.execute(catalog.insert(), [{"code": "MAIL", "title": "Mail"}, {"code": "EDR", "title": "EDR"}])
        conn.execute(seats.insert(), [
            seat("m1", "t1", "MAIL", "alice", at(2026, 1, 1)),
            seat("m1", "t1", "MAIL", "alice", at(2026, 3, 3), at(2026, 3, 9)),  # overlapping: once
            seat("m1", "t1", "MAIL", "bob", at(2026, 3, 31, 23, 30), None),
            seat("m1", "t1", "EDR", "bob", at(2026, 2, 1), at(2026, 3, 1)),  # ends at month start
            seat("m1", "t2", "EDR", "carol", at(2026, 3, 1), at(2026, 4, 1)),
            seat("m1", "t2", "EDR", "svc-account", at(2026, 3, 1), None, paid=False),
            seat("m2", "t3", "FAX", "dave", at(2026, 1, 1)),  # unknown product -> quarantined
            seat("m2", "t3", "MAIL", "erin", at(2026, 3, 20), at(2026, 3, 10)),  # reversed
        ])
    utilization_path = tmp_path / "vendor_utilization.sql"
    # the PostgreSQL text is plain SQL MySQL/MariaDB run as it is (DATETIME in UTC)
    utilization_path.write_text(VENDOR_SQL.get(dialect, VENDOR_SQL["postgresql"]), encoding="utf-8")
    services_path = tmp_path / "vendor_services.sql"
    services_path.write_text(VENDOR_SERVICES_SQL, encoding="utf-8")
    monkeypatch.setenv("UTILIZATION_SQL", str(utilization_path))
    monkeypatch.setenv("SERVICES_SQL", str(services_path))

    # the setting reaches the code location's resource
    product_db = default_resources()["product_db"]
    assert product_db.utilization_sql == str(utilization_path)
    assert product_db.services_sql == str(services_path)

    query = utilization_query(settings.utilization_sql_path(), dialect)
    assert query.path == str(utilization_path)
    assert ":month_start" in query.sql and "comment is dropped" not in query.sql
    assert ProductDatabase(url="sqlite://", utilization_sql=str(utilization_path)).utilization_query() == query
    with product_engine.connect() as conn:
        skus = load_known_skus(conn, str(services_path))
    assert skus == ["EDR", "MAIL"]

    counts, validation = run_month(product_engine, state_engine, MARCH, query=query, skus=skus)
    assert as_dict(counts) == {
        ("m1", "t1", "MAIL"): 2,
        ("m1", "t2", "EDR"): 1,
    }
    assert counts.loc[counts.company_id == "t2", "company_name"].tolist() == ["Tenant t2"]
    assert validation.rows_in == 7  # the EDR seat ending at the month start is not returned
    assert validation.reason_counts == {"sku_unknown": 1, "span_reversed": 1}
    quarantine = load_quarantine(state_engine, date(2026, 3, 1))
    assert sorted(quarantine.user_id) == ["dave", "erin"]
    assert "'FAX' is not a service the vendor sells" in quarantine.set_index("user_id").reasons["dave"]


def test_postgresql_month_pass_computes_the_rules_once_in_parallel_workers(postgres_url):
    """The month pass on PostgreSQL is planned like a plain aggregate: parallel workers below a
    Gather Merge, the row part of the rules' mask computed once per row as a group key (no
    ``OFFSET 0`` fence, which keeps the whole sort in the leader; no per-key ``CASE`` repeating
    the rules), the part the group keys alone break once per group above the aggregate, the
    keys sorted in the "C" collation, and no column the aggregate does not need carried
    through the sort."""
    from pipeline.validation.month import GROUP_KEYS, month_pass_sql
    from pipeline.validation.rules import bind_known_skus, split_reason_mask_sql

    engine = sa.create_engine(postgres_url)
    rows = ProductRows(engine).basic()
    rows.users("u_ok")
    rows.enroll("u_ok", "c1", "SAT", at(2026, 1, 1), None)
    query = reference_query(engine)
    month = BillingMonth.from_partition_key(MARCH, NY)
    sql = month_pass_sql(query, "postgresql")
    assert "OFFSET 0" not in sql
    params = {**month_parameters(month, "postgresql"), "known_skus": known_skus(engine)}
    with engine.connect() as conn:
        for setting in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
            conn.exec_driver_sql(f"SET {setting} = 0")
        plan = "\n".join(
            r[0] for r in conn.execute(bind_known_skus("EXPLAIN (VERBOSE) " + sql), params)
        )
    engine.dispose()
    assert "Gather Merge" in plan and "Workers Planned" in plan, plan

    def live_bits(mask_sql: str) -> list[int]:
        # the planner folds the rules that cannot break on PostgreSQL, "(1 = 0)", away
        cases = re.findall(r"CASE WHEN (.*?) THEN (\d+) ELSE 0 END", mask_sql)
        return sorted(int(bit) for condition, bit in cases if condition != "(1 = 0)")

    def bits(line: str) -> list[int]:
        return sorted(int(v) for v in re.findall(r"THEN (\d+) ELSE 0 END", line))

    key_mask, row_mask = split_reason_mask_sql("postgresql", GROUP_KEYS)
    lines = plan.splitlines()
    top = next(line for line in lines if line.strip().startswith("Output:"))
    sort = next(i for i, line in enumerate(lines) if line.strip().startswith("->  Sort"))
    sort_key = next(line for line in lines[sort + 1:] if line.strip().startswith("Sort Key:"))
    projected = next(line for line in lines[sort + 1:] if line.strip().startswith("Output:"))
    assert bits(projected) == live_bits(row_mask), projected
    assert bits(top) == live_bits(key_mask), top
    assert sort_key.count('COLLATE "C"') >= len(GROUP_KEYS), sort_key
    # the sort carries the keys, the mask, the in-month flag and what the aggregates read
    carried = projected.split("Output:", 1)[1].rsplit("))))),", 1)[-1]
    assert "started_at" not in carried and "ended_at" not in carried and "deleted_at" not in carried, carried


def _pg_month_with_rows(postgres_url: str, users: int) -> tuple[sa.Engine, ProductRows]:
    engine = sa.create_engine(postgres_url)
    rows = ProductRows(engine).basic()
    names = [f"u{i:03d}" for i in range(users)]
    rows.users(*names)
    for name in names:
        rows.enroll(name, "c1", "SAT", at(2026, 1, 1), None)
    return engine, rows


def test_postgresql_pass_streams_in_chunks_and_counts_like_the_fetch(postgres_url, tmp_path, monkeypatch):
    """On PostgreSQL the groups stream from ``COPY`` in frames of ``COPY_CHUNK_ROWS``; with one
    group per frame the month is tallied exactly as one frame would (counts, quarantine)."""
    import pipeline.validation.month as month_pass

    engine, rows = _pg_month_with_rows(postgres_url, 3)
    rows.enroll("u000", "c1", "PHISH", at(2026, 1, 1), None)
    rows.enroll("u001", "c1", "FAX", at(2026, 1, 1), None)  # quarantined: unknown sku
    state = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    whole, whole_validation = run_month(engine, state, MARCH)
    monkeypatch.setattr(month_pass, "COPY_CHUNK_ROWS", 1)
    streamed, streamed_validation = run_month(engine, state, MARCH, run_id="chunked")
    assert as_dict(streamed) == as_dict(whole) == {("p1", "c1", "SAT"): 3, ("p1", "c1", "PHISH"): 1}
    assert streamed_validation.rows_in == whole_validation.rows_in == 5
    assert streamed_validation.reason_counts == whole_validation.reason_counts == {"sku_unknown": 1}
    engine.dispose()
    state.dispose()


def test_postgresql_pass_failing_in_the_database_raises_its_error_and_stores_nothing(
    postgres_url, tmp_path, monkeypatch
):
    """An error inside the streamed ``COPY`` is the error raised (not a parse error of what
    came before it); the month's validation, quarantine and staged counts stay as they were,
    and the product database stays usable."""
    import gc

    import psycopg2

    import pipeline.validation.month as month_pass
    from pipeline.store.months import load_month_validation

    engine, _ = _pg_month_with_rows(postgres_url, 5)
    state = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    run_month(engine, state, MARCH)
    before = load_month_validation(state, date(2026, 3, 1))
    real_sql = month_pass.month_pass_sql

    def failing_on_the_last_group(query, dialect):
        return real_sql(query, dialect).replace(
            "COUNT(*) AS row_count", "COUNT(*) / (CASE WHEN MAX(user_id) = 'u004' THEN 0 ELSE 1 END) AS row_count", 1
        )

    monkeypatch.setattr(month_pass, "month_pass_sql", failing_on_the_last_group)
    with pytest.raises(psycopg2.errors.DivisionByZero):
        run_month(engine, state, MARCH, run_id="failed-run")
    assert load_month_validation(state, date(2026, 3, 1)) == before
    assert gc.get_freeze_count() == 0  # the collector is unfrozen on failure too
    monkeypatch.setattr(month_pass, "month_pass_sql", real_sql)
    counts, validation = run_month(engine, state, MARCH, run_id="after")
    assert validation.rows_in == 5 and as_dict(counts) == {("p1", "c1", "SAT"): 5}
    engine.dispose()
    state.dispose()


def test_postgresql_pass_failing_while_storing_stores_nothing(postgres_url, tmp_path, monkeypatch):
    """When storing a chunk of counts fails midway, that error is raised, nothing of the
    month is replaced, and the next run reads normally."""
    import pipeline.validation.month as month_pass
    from pipeline.store.months import StagedCountsWriter, load_month_validation

    engine, rows = _pg_month_with_rows(postgres_url, 40)
    for i in range(40):
        rows.enroll(f"u{i:03d}", "c1", f"SKU{i}", at(2026, 1, 1), None)  # 40 quarantined groups
    state = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    run_month(engine, state, MARCH)
    before = load_month_validation(state, date(2026, 3, 1))
    monkeypatch.setattr(month_pass, "COPY_CHUNK_ROWS", 1)

    class Broken(StagedCountsWriter):
        def write(self, counts):
            raise RuntimeError("state database went away")

    monkeypatch.setattr(month_pass, "StagedCountsWriter", Broken)
    with pytest.raises(RuntimeError, match="state database went away"):
        run_month(engine, state, MARCH, run_id="failed-run")
    assert load_month_validation(state, date(2026, 3, 1)) == before
    monkeypatch.setattr(month_pass, "StagedCountsWriter", StagedCountsWriter)
    _, validation = run_month(engine, state, MARCH, run_id="after")
    assert validation.rows_in == 80 and validation.rows_quarantined == 40
    engine.dispose()
    state.dispose()


def test_postgresql_month_without_rows_validates_empty(postgres_url, tmp_path):
    engine = sa.create_engine(postgres_url)
    ProductRows(engine).basic()
    state = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    counts, validation = run_month(engine, state, MARCH)
    assert validation.rows_in == 0 and counts.empty
    engine.dispose()
    state.dispose()


def test_the_pass_collects_its_cycles_every_few_chunks_and_leaves_the_collector_as_found(
    sqlite_url, tmp_path, monkeypatch
):
    """pandas and pandera leave reference cycles per chunk that only a full collection frees;
    the pass collects them every ``COLLECT_EVERY_CHUNKS`` chunks with the older objects frozen,
    and unfreezes them after, even when the pass fails. A collector someone else froze or
    disabled is left alone."""
    import gc

    import pipeline.validation.month as month_pass

    engine = sa.create_engine(sqlite_url)
    rows = ProductRows(engine).basic()
    names = [f"u{i}" for i in range(9)]
    rows.users(*names)
    for i, name in enumerate(names):
        rows.enroll(name, "c1", ("SAT", "PHISH", "EMAIL")[i % 3], at(2026, 1, 1), None)
        rows.partner(f"p{i + 2}").company(f"c{i + 2}", f"p{i + 2}")
        rows.enroll(name, f"c{i + 2}", "SAT", at(2026, 1, 1), None)
    state = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    collections: list[int] = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(gc.get_freeze_count()) or real_collect(*a))
    _, validation = run_month(engine, state, MARCH, chunk_rows=1)
    assert validation.rows_in == 18
    assert len(collections) == 12 // month_pass.COLLECT_EVERY_CHUNKS  # 12 groups, one per chunk
    assert all(frozen > 0 for frozen in collections) and gc.get_freeze_count() == 0

    collections.clear()
    gc.freeze()
    try:
        run_month(engine, state, MARCH, chunk_rows=1, run_id="frozen-by-someone-else")
        assert collections == [] and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    engine.dispose()
    state.dispose()


SPLIT_CASES = [
    # partner, company, name, sku, user, active_from, active_to, billable
    ("p1", "c1", "Acme", "SAT", "u1", "2026-01-01", None, True),
    (None, "c1", "Acme", "SAT", "u1", "2026-01-01", None, True),
    (" p1", "c 1", " ", "FAX", "u1 ", "2026-01-01", "2025-01-01", None),
    ("p1", "c\x01", "Ac\x7fme", "", "", None, None, True),
    ("p" * 300, "c1", "n" * 300, " SAT", "u\x02", "2026-01-01", None, False),
    ("", "   ", None, None, None, "2026-02-01", "2026-01-01", True),
    ("p1", "c1", "Acme\t", "SAT", "u" * 256, "2026-01-01", None, True),
]


@pytest.mark.parametrize("dialect_url", ["sqlite_url", "postgres_url"])
def test_the_mask_split_into_group_keys_and_row_parts_ors_back_to_the_whole_mask(dialect_url, request):
    """``split_reason_mask_sql``: what the group keys alone break (asked once per group) OR
    what the other columns break (once per row) is, for every kind of bad value, exactly the
    row's ``reason_mask_sql`` — the month pass on PostgreSQL relies on it."""
    from pipeline.validation.month import GROUP_KEYS
    from pipeline.validation.rules import bind_known_skus, prepare_connection, reason_mask_sql, split_reason_mask_sql

    engine = sa.create_engine(request.getfixturevalue(dialect_url))
    dialect = engine.dialect.name
    key_mask, row_mask = split_reason_mask_sql(dialect, GROUP_KEYS)
    if dialect == "postgresql":
        typed = ["CAST(:{0}_{1} AS TEXT)"] * 5 + ["CAST(:{0}_{1} AS timestamptz)"] * 2 + ["CAST(:{0}_{1} AS boolean)"]
    else:
        typed = ["CAST(:{0}_{1} AS TEXT)"] * 7 + [":{0}_{1}"]
    selects, params = [], {"known_skus": ["SAT", "PHISH"]}
    for i, case in enumerate(SPLIT_CASES):
        values = []
        for j, (column, value) in enumerate(zip(CONTRACT_COLUMNS, case)):
            values.append(typed[j].format(column, i) + f" AS {column}")
            params[f"{column}_{i}"] = (int(value) if dialect == "sqlite" and isinstance(value, bool) else value)
        selects.append(f"SELECT {i} AS case_no, " + ", ".join(values))
    sql = (
        f"SELECT case_no, {reason_mask_sql(dialect)} AS whole, {key_mask} AS on_keys, {row_mask} AS on_rows "
        f"FROM ({' UNION ALL '.join(selects)}) AS utilization ORDER BY case_no"
    )
    with engine.connect() as conn:
        prepare_connection(conn)
        found = conn.execute(bind_known_skus(sql), params).all()
    engine.dispose()
    assert len(found) == len(SPLIT_CASES)
    assert found[0].whole == 0
    assert all(row.whole != 0 for row in found[1:])
    for row in found:
        assert row.on_keys | row.on_rows == row.whole, (SPLIT_CASES[row.case_no], row)
    assert any(row.on_keys and row.on_rows for row in found)


def _month_with_failing_groups(postgres_url: str) -> ProductRows:
    """Good rows around failing ones: an orphan company (NULL partner), a quoted company id,
    an unknown sku, a padded partner id, a reversed span; two groups break the same rule."""
    engine = sa.create_engine(postgres_url)
    rows = ProductRows(engine).basic()
    rows.partner(" p2").company("c'2", " p2").company("c3", "p1").company("orphan", "no-such-partner")
    rows.users(*(f"u{i}" for i in range(8)))
    for i in range(8):
        rows.enroll(f"u{i}", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("u0", "orphan", "SAT", at(2026, 1, 1), None)
    rows.enroll("u1", "c'2", "SAT", at(2026, 1, 1), None)
    rows.enroll("u2", "c'2", "SAT", at(2026, 1, 1), None)
    rows.enroll("u3", "c3", "FAX", at(2026, 1, 1), None)
    rows.enroll("u4", "c3", "SAT", at(2026, 3, 20), at(2026, 3, 10))
    rows.enroll("u5", "c1", "PHISH", at(2026, 3, 20), at(2026, 3, 10))
    return rows


def test_postgresql_failing_rows_are_fetched_by_their_keys_exactly_and_in_a_stable_order(
    postgres_url, tmp_path, monkeypatch
):
    """On PostgreSQL the pass returns failing groups as counts; their rows are fetched after,
    narrowed by the failing groups' keys (NULL keys, quotes and padding included) and in a
    stable order. Unnarrowed (past ``NARROWING_KEY_VALUES``) the quarantine is the same."""
    import pipeline.validation.month as month_pass

    rows = _month_with_failing_groups(postgres_url)
    state = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    counts, validation = run_month(rows.engine, state, MARCH)
    narrowed = load_quarantine(state, date(2026, 3, 1))
    assert as_dict(counts) == {("p1", "c1", "SAT"): 8}
    assert validation.rows_quarantined == 6 == len(narrowed)
    assert validation.reason_counts == {
        "id_padded": 2, "partner_missing": 1, "sku_unknown": 1, "span_reversed": 2,
    }
    assert narrowed.row_number.tolist() == [1, 2, 3, 4, 5, 6]
    by_user = narrowed.set_index("user_id")
    assert by_user.loc["u0", "partner_id"] is None and by_user.loc["u0", "reason_codes"] == "partner_missing"
    assert by_user.loc["u1", "partner_id"] == " p2" and by_user.loc["u1", "company_id"] == "c'2"
    assert by_user.loc["u4", "reason_codes"] == "span_reversed"

    monkeypatch.setattr(month_pass, "NARROWING_KEY_VALUES", 0)
    _, again = run_month(rows.engine, state, MARCH, run_id="unnarrowed")
    unnarrowed = load_quarantine(state, date(2026, 3, 1))
    assert again.reason_counts == validation.reason_counts
    columns = [c for c in narrowed.columns if c not in ("run_id", "quarantined_at")]
    pd.testing.assert_frame_equal(unnarrowed[columns], narrowed[columns])
    rows.engine.dispose()
    state.dispose()


def test_postgresql_fetched_rows_disagreeing_with_the_pass_raise_and_store_nothing(postgres_url, tmp_path, monkeypatch):
    """The failing rows fetched must be, per group and rule, the rows the pass counted (one
    snapshot makes them so); if they are not, the month is not stored from a half-truth."""
    import pipeline.validation.month as month_pass
    from pipeline.store.months import load_month_validation

    rows = _month_with_failing_groups(postgres_url)
    state = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    run_month(rows.engine, state, MARCH)
    before = load_month_validation(state, date(2026, 3, 1))
    real_sql = month_pass._postgresql_quarantined_rows_sql
    monkeypatch.setattr(
        month_pass, "_postgresql_quarantined_rows_sql",
        lambda query, narrowed, cut=(): real_sql(query, narrowed, cut).replace("WHERE reason_mask", "WHERE user_id <> 'u4' AND reason_mask"),
    )
    with pytest.raises(month_pass.ValidationDriftError, match="counted 6 rows breaking a rule in 5 groups.*found 5 rows"):
        run_month(rows.engine, state, MARCH, run_id="drifted")
    assert load_month_validation(state, date(2026, 3, 1)) == before
    rows.engine.dispose()
    state.dispose()


def test_the_pass_sums_up_the_counts_it_stages_in_key_order(product_engine, state_engine, monkeypatch):
    """The PostgreSQL and SQLite passes return the counts in code-point key order, so the staging
    sums up their fingerprint and totals as they are written, across chunks (ids that a locale
    or a case-folding collation orders otherwise); the validation records them and the
    promotion stores exactly what reading the counts back gives. MariaDB's pass returns its
    groups in no promised order: recorded only if they came in order, read back otherwise."""
    import pipeline.validation.month as month_pass
    from pipeline.store.months import counts_fingerprint, load_month_computation, stored_counts_fingerprint

    monkeypatch.setattr(month_pass, "COPY_CHUNK_ROWS", 2)
    rows = ProductRows(product_engine).services()
    ids = ["b", "B", "é", "e", "日本", "😀", "a b", "Z"]
    for i, partner in enumerate(ids[:4]):
        rows.partner(partner)
        for company in ids[4:]:
            rows.company(f"{company}-{partner}", partner, name=f"Firma {company}")
            rows.users(f"u{i}-{company}")
            rows.enroll(f"u{i}-{company}", f"{company}-{partner}", "SAT", at(2026, 1, 1), None)
            rows.enroll(f"u{i}-{company}", f"{company}-{partner}", "PHISH", at(2026, 3, 3), None)
    counts, validation = run_month(product_engine, state_engine, MARCH, chunk_rows=3)

    assert len(counts) == 32 and validation.counts_staged == 32
    if product_engine.dialect.name != "mariadb":
        assert validation.counts_fingerprint is not None
    if validation.counts_fingerprint is not None:
        assert validation.counts_fingerprint == counts_fingerprint(counts)
        assert (validation.counts_partners, validation.counts_companies, validation.counts_billable_users) == (4, 16, 32)
    computation = load_month_computation(state_engine, date(2026, 3, 1))
    with state_engine.connect() as conn:
        assert computation.counts_fingerprint == stored_counts_fingerprint(conn, date(2026, 3, 1)) == counts_fingerprint(counts)
    assert (computation.partners, computation.companies, computation.billable_users) == (4, 16, 32)


def test_huge_quarantined_values_are_stored_cut_with_their_length_and_hash(product_engine, state_engine):
    """20,000-character ids and names are quarantined (value_too_long) and stored as their first
    255 characters and a note of their length and SHA-256, cut by the database; two long values
    sharing those characters stay two rows, told apart by their hash."""
    import hashlib

    from pipeline.validation.rules import MAX_SHOWN_CHARS, shown_value

    rows = ProductRows(product_engine).basic()
    rows.users("u_ok")
    rows.enroll("u_ok", "c1", "SAT", at(2026, 1, 1), None)
    mysql = product_engine.dialect.name in ("mysql", "mariadb")
    # the reference schema keeps ids in VARCHAR(191) on MySQL/MariaDB: only the name is long there
    long_ids = ["c1-long", "c2-long"] if mysql else ["C" * 19_999 + "1", "C" * 19_999 + "2"]
    long_name = "Ä" * 20_000  # 2 bytes a character: the cut counts characters
    for company_id in long_ids:
        rows.company(company_id, "p1", long_name)
        user = f"u_{long_ids.index(company_id) + 1}"
        rows.users(user)
        rows.enroll(user, company_id, "SAT", ALWAYS, None)
    counts, validation = run_month(product_engine, state_engine, MARCH, chunk_rows=2)
    assert as_dict(counts) == GOOD
    assert validation.reason_counts == {"value_too_long": 2}
    quarantine = load_quarantine(state_engine, date(2026, 3, 1)).sort_values("user_id")
    assert quarantine["user_id"].tolist() == ["u_1", "u_2"]
    for company_id, stored, name in zip(long_ids, quarantine["company_id"], quarantine["company_name"]):
        digest = hashlib.sha256(company_id.encode()).hexdigest()[:16]
        assert stored == (company_id if mysql else "C" * MAX_SHOWN_CHARS + f"…(20000 chars, sha256 {digest})")
        assert stored == shown_value(company_id).decode()
        name_digest = hashlib.sha256(long_name.encode()).hexdigest()[:16]
        assert name == "Ä" * MAX_SHOWN_CHARS + f"…(20000 chars, sha256 {name_digest})"
    assert all(len(reasons) < 2_000 for reasons in quarantine["reasons"])
    # a value the rules accept is kept whole
    assert shown_value("c" * MAX_SHOWN_CHARS) == b"c" * MAX_SHOWN_CHARS


def test_the_quarantine_sample_shown_in_dagster_is_bounded(sqlite_url, state_engine):
    from pipeline.validation.month import QUARANTINE_SAMPLE_CHARS, QUARANTINE_SAMPLE_ROWS

    engine = sa.create_engine(sqlite_url)
    rows = ProductRows(engine).basic()
    for i in range(QUARANTINE_SAMPLE_ROWS + 5):
        company = f"c-{i:03d}-" + "x" * 20_000
        rows.company(company, "p1", "N" * 20_000)
        rows.users(f"u{i}")
        rows.enroll(f"u{i}", company, "SAT", ALWAYS, None)
    query = reference_query(engine)
    month = BillingMonth.from_partition_key(MARCH, NY)
    with engine.connect() as conn:
        outcome = validate_month(conn, state_engine, query, month, known_skus(engine), "sample-run")
    assert outcome.validation.rows_quarantined == QUARANTINE_SAMPLE_ROWS + 5
    assert len(outcome.sample) == QUARANTINE_SAMPLE_ROWS
    longest = max(len(str(v)) for v in outcome.sample.to_numpy().ravel())
    assert QUARANTINE_SAMPLE_CHARS < longest < QUARANTINE_SAMPLE_CHARS + 60
    assert outcome.sample["company_id"].str.contains("whole in the quarantine table").all()
    engine.dispose()
