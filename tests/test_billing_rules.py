"""The billing rules of design.md, with hand-computed expectations, on SQLite and PostgreSQL.

Every test uses ``product_engine`` (parametrized over both dialects) and runs the real
reference query, pandera validation and the database-side count (``tests.product_rows``).

Month windows used below (America/New_York unless told):
* 2026-02: [02-01 05:00Z, 03-01 05:00Z)      EST all month
* 2026-03: [03-01 05:00Z, 04-01 04:00Z)      DST starts 03-08 02:00 local
* 2026-10: [10-01 04:00Z, 11-01 04:00Z)
* 2026-11: [11-01 04:00Z, 12-01 05:00Z)      DST ends 11-01 02:00 local
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from pipeline.source import product_schema as ps
from pipeline.billing.month import BillingMonth
from pipeline.billing.counts import ReconciliationError
from pipeline.store.schema import billable_counts
from pipeline.store.months import (
    load_billable_counts,
    load_month_computation,
    load_month_validation,
    load_quarantine,
)
from pipeline.source.utilization import SourceQuery, utilization_query
from tests.product_rows import (
    NY,
    ProductRows,
    as_dict,
    at,
    count,
    run_month,
    validate,
)

UTC = timezone.utc
SAT = ("p1", "c1", "SAT")


@pytest.fixture
def rows(product_engine) -> ProductRows:
    return ProductRows(product_engine).basic()


def counts_for(product_engine, state_engine, month_key: str, tz: str = NY) -> dict:
    counts, validation = run_month(product_engine, state_engine, month_key, tz)
    assert validation.rows_quarantined == 0, validation.reason_counts
    return as_dict(counts)


# ------------------------------------------------------------------ the month window


def test_billing_month_windows_in_new_york_are_dst_aware():
    """The window itself: local midnight on the 1st, whatever the UTC offset that day."""
    march = BillingMonth(date(2026, 3, 1), NY)
    assert march.start_utc == datetime(2026, 3, 1, 5, tzinfo=UTC)
    assert march.end_utc == datetime(2026, 4, 1, 4, tzinfo=UTC)  # EDT by then
    assert march.end_utc - march.start_utc == timedelta(days=31, hours=-1)
    november = BillingMonth(date(2026, 11, 1), NY)
    assert november.start_utc == datetime(2026, 11, 1, 4, tzinfo=UTC)  # still EDT at midnight
    assert november.end_utc == datetime(2026, 12, 1, 5, tzinfo=UTC)
    assert november.end_utc - november.start_utc == timedelta(days=30, hours=1)
    assert BillingMonth(date(2026, 3, 1), "Asia/Tokyo").start_utc == datetime(2026, 2, 28, 15, tzinfo=UTC)
    assert BillingMonth(date(2026, 7, 1), "Europe/London").start_utc == datetime(2026, 6, 30, 23, tzinfo=UTC)


def test_span_ending_2330_local_on_last_day_counts_in_that_month_only(rows, product_engine, state_engine):
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 2, 10), at(2026, 2, 28, 23, 30))  # 03-01 04:30Z
    assert counts_for(product_engine, state_engine, "2026-02-01") == {SAT: 1}
    # 04:30Z on March 1st is still February in New York: nothing in March
    assert counts_for(product_engine, state_engine, "2026-03-01") == {}


def test_span_starting_at_local_midnight_on_the_1st_counts_in_the_next_month_only(
    rows, product_engine, state_engine
):
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 3, 1), at(2026, 3, 15))  # 03-01 05:00Z
    assert counts_for(product_engine, state_engine, "2026-02-01") == {}
    assert counts_for(product_engine, state_engine, "2026-03-01") == {SAT: 1}


def test_span_ending_exactly_at_month_start_does_not_count_half_open(rows, product_engine, state_engine):
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 2, 3), at(2026, 3, 1))  # ends at March's start
    rows.enroll("u2", "c1", "SAT", at(2026, 2, 3), at(2026, 3, 1, 0, 0, 1))  # one second later
    assert counts_for(product_engine, state_engine, "2026-02-01") == {SAT: 2}
    assert counts_for(product_engine, state_engine, "2026-03-01") == {SAT: 1}


def test_span_starting_exactly_at_month_start_counts(rows, product_engine, state_engine):
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 3, 1), None)
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 1), at(2026, 3, 1, 0, 0, 1))  # one second long
    assert counts_for(product_engine, state_engine, "2026-03-01") == {SAT: 2}
    assert counts_for(product_engine, state_engine, "2026-02-01") == {}


def test_span_ending_exactly_at_month_end_counts_in_the_month(rows, product_engine, state_engine):
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 3, 31, 23, 59, 59), at(2026, 4, 1))
    assert counts_for(product_engine, state_engine, "2026-03-01") == {SAT: 1}
    assert counts_for(product_engine, state_engine, "2026-04-01") == {}


def test_march_dst_boundary_uses_edt_for_the_month_end(rows, product_engine, state_engine):
    """April 1st 00:00 EDT = 04:00Z. A fixed -05:00 offset would put 04:00-05:00Z in March."""
    rows.users("u_end", "u_april", "u_march")
    rows.enroll("u_end", "c1", "SAT", at(2026, 3, 20), datetime(2026, 4, 1, 4, 0, tzinfo=UTC))
    rows.enroll("u_april", "c1", "PHISH", datetime(2026, 4, 1, 4, 0, tzinfo=UTC), None)
    rows.enroll("u_april", "c1", "EMAIL", datetime(2026, 4, 1, 4, 30, tzinfo=UTC), None)
    rows.enroll("u_march", "c1", "EMAIL", datetime(2026, 4, 1, 3, 59, 59, tzinfo=UTC), at(2026, 4, 2))
    march = counts_for(product_engine, state_engine, "2026-03-01")
    assert march == {SAT: 1, ("p1", "c1", "EMAIL"): 1}
    april = counts_for(product_engine, state_engine, "2026-04-01")
    assert april == {("p1", "c1", "PHISH"): 1, ("p1", "c1", "EMAIL"): 2}


def test_march_dst_start_boundary_is_est(rows, product_engine, state_engine):
    """March 1st 00:00 EST = 05:00Z: a span ending 04:30Z is February only."""
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 2, 1), datetime(2026, 3, 1, 4, 30, tzinfo=UTC))
    rows.enroll("u2", "c1", "SAT", at(2026, 2, 1), datetime(2026, 3, 1, 5, 30, tzinfo=UTC))
    assert counts_for(product_engine, state_engine, "2026-03-01") == {SAT: 1}
    assert counts_for(product_engine, state_engine, "2026-02-01") == {SAT: 2}


def test_november_dst_boundaries(rows, product_engine, state_engine):
    """November 1st 00:00 is EDT (04:00Z); December 1st 00:00 is EST (05:00Z)."""
    rows.users("u_oct", "u_nov_start", "u_nov_end", "u_dec")
    # ends 03:30Z Nov 1 = 23:30 EDT Oct 31: October only
    rows.enroll("u_oct", "c1", "SAT", at(2026, 10, 5), datetime(2026, 11, 1, 3, 30, tzinfo=UTC))
    # starts 04:00Z Nov 1 = 00:00 EDT: November
    rows.enroll("u_nov_start", "c1", "SAT", datetime(2026, 11, 1, 4, 0, tzinfo=UTC), at(2026, 11, 2))
    # starts 04:30Z Dec 1 = 23:30 EST Nov 30: November (and December)
    rows.enroll("u_nov_end", "c1", "SAT", datetime(2026, 12, 1, 4, 30, tzinfo=UTC), at(2026, 12, 3))
    # starts 05:00Z Dec 1 = 00:00 EST: December only
    rows.enroll("u_dec", "c1", "SAT", datetime(2026, 12, 1, 5, 0, tzinfo=UTC), None)
    assert counts_for(product_engine, state_engine, "2026-10-01") == {SAT: 1}
    assert counts_for(product_engine, state_engine, "2026-11-01") == {SAT: 2}
    assert counts_for(product_engine, state_engine, "2026-12-01") == {SAT: 2}


@pytest.mark.parametrize(
    ("tz", "feb", "mar"),
    [
        # span [02-28 16:00Z, 02-28 20:00Z) is 01:00-05:00 March 1st in Tokyo
        ("Asia/Tokyo", {}, {SAT: 1}),
        # ... 16:00-20:00 February 28th in London
        ("Europe/London", {SAT: 1}, {}),
        ("America/New_York", {SAT: 1}, {}),
    ],
)
def test_billing_time_zone_moves_the_boundary(rows, product_engine, state_engine, tz, feb, mar):
    rows.users("u1")
    rows.enroll(
        "u1", "c1", "SAT", datetime(2026, 2, 28, 16, tzinfo=UTC), datetime(2026, 2, 28, 20, tzinfo=UTC)
    )
    assert counts_for(product_engine, state_engine, "2026-02-01", tz) == feb
    assert counts_for(product_engine, state_engine, "2026-03-01", tz) == mar


def test_london_summer_time_boundary(rows, product_engine, state_engine):
    """July in London starts 06-30 23:00Z (BST): a span starting 23:30Z June 30th is July."""
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", datetime(2026, 6, 30, 23, 30, tzinfo=UTC), None)
    rows.enroll("u2", "c1", "SAT", at(2026, 6, 1, tz="Europe/London"), datetime(2026, 6, 30, 23, tzinfo=UTC))
    assert counts_for(product_engine, state_engine, "2026-06-01", "Europe/London") == {SAT: 1}  # u2
    assert counts_for(product_engine, state_engine, "2026-07-01", "Europe/London") == {SAT: 1}  # u1
    # in New York both are June
    assert counts_for(product_engine, state_engine, "2026-07-01") == {SAT: 1}  # u1, still active
    assert counts_for(product_engine, state_engine, "2026-06-01") == {SAT: 2}


# ------------------------------------------------------------------ counting users


def test_overlapping_spans_of_one_user_count_once(rows, product_engine, state_engine):
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("u1", "c1", "SAT", at(2026, 3, 5), at(2026, 3, 20))  # duplicate inside the first
    rows.enroll("u1", "c1", "SAT", at(2026, 3, 10), at(2026, 4, 20))
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 2), at(2026, 3, 4))  # two disjoint spans
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 20), at(2026, 3, 22))
    assert counts_for(product_engine, state_engine, "2026-03-01") == {SAT: 2}


def test_a_user_with_two_skus_counts_once_per_sku(rows, product_engine, state_engine):
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("u1", "c1", "PHISH", at(2026, 3, 15), None)
    rows.enroll("u2", "c1", "PHISH", at(2026, 3, 15), None)
    assert counts_for(product_engine, state_engine, "2026-03-01") == {SAT: 1, ("p1", "c1", "PHISH"): 2}


def test_a_user_who_moved_companies_mid_month_counts_in_each(rows, product_engine, state_engine):
    rows.partner("p2").company("c2", "p1").company("c3", "p2")
    rows.users("u1")
    moved = at(2026, 3, 14, 9, 30)
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), moved)
    rows.enroll("u1", "c2", "SAT", moved, at(2026, 3, 20))
    rows.enroll("u1", "c3", "SAT", at(2026, 3, 20), None)  # and then to another partner
    assert counts_for(product_engine, state_engine, "2026-03-01") == {
        SAT: 1, ("p1", "c2", "SAT"): 1, ("p2", "c3", "SAT"): 1,
    }
    # in April only the last company
    assert counts_for(product_engine, state_engine, "2026-04-01") == {("p2", "c3", "SAT"): 1}
    # in February only the first
    assert counts_for(product_engine, state_engine, "2026-02-01") == {SAT: 1}


def test_non_billable_users_are_not_counted_but_their_group_is_there_with_zero(
    rows, product_engine, state_engine
):
    rows.company("c2", "p1")
    rows.users("u1", "u2")
    rows.users("internal", "tester", billable=False)
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("internal", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("tester", "c2", "SAT", at(2026, 1, 1), None)  # c2 has only a non-billable user
    rows.enroll("tester", "c2", "PHISH", at(2026, 3, 3), at(2026, 3, 4))
    counts, validation = run_month(product_engine, state_engine, "2026-03-01")
    assert validation.rows_quarantined == 0
    assert as_dict(counts) == {SAT: 1, ("p1", "c2", "SAT"): 0, ("p1", "c2", "PHISH"): 0}
    assert counts.loc[counts.company_id == "c2", "company_name"].tolist() == ["Company c2"] * 2


def test_a_company_with_zero_users_has_no_count_rows(rows, product_engine, state_engine):
    rows.company("c_empty", "p1").partner("p_empty").company("c_empty2", "p_empty")
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    # c_empty's only enrollment is long over
    rows.enroll("u1", "c_empty", "SAT", at(2025, 1, 1), at(2025, 2, 1))
    counts, _ = run_month(product_engine, state_engine, "2026-03-01")
    assert as_dict(counts) == {SAT: 1}
    assert set(counts.company_id) == {"c1"}


def test_a_month_with_no_data_gives_empty_counts_and_no_error(product_engine, state_engine):
    ProductRows(product_engine).services()  # schema and services, no enrollments at all
    counts, validation = run_month(product_engine, state_engine, "2026-03-01")
    assert counts.empty
    assert list(counts.columns) == ["partner_id", "company_id", "company_name", "sku", "billable_users"]
    assert (validation.rows_in, validation.rows_valid, validation.rows_quarantined) == (0, 0, 0)
    assert load_billable_counts(state_engine, date(2026, 3, 1)).empty
    computation = load_month_computation(state_engine, date(2026, 3, 1))
    assert computation is not None
    assert (computation.rows_in, computation.partners, computation.billable_users) == (0, 0, 0)


def test_data_only_in_other_months_gives_empty_counts(rows, product_engine, state_engine):
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 5, 1), None)
    rows.enroll("u1", "c1", "PHISH", at(2025, 5, 1), at(2026, 1, 1))
    counts, validation = run_month(product_engine, state_engine, "2026-03-01")
    assert counts.empty and validation.rows_in == 0


def test_a_still_active_span_counts_in_every_later_month(rows, product_engine, state_engine):
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 31, 23, 59), None)
    assert counts_for(product_engine, state_engine, "2025-12-01") == {}
    for key in ["2026-01-01", "2026-02-01", "2026-06-01", "2027-01-01", "2030-12-01"]:
        assert counts_for(product_engine, state_engine, key) == {SAT: 1}, key


def test_a_deleted_company_caps_its_users_spans_at_deletion(rows, product_engine, state_engine):
    deleted = at(2026, 3, 12, 15)
    rows.company("c_del", "p1", "Deleted Co", deleted_at=deleted)
    rows.users("u1", "u2", "u3")
    rows.enroll("u1", "c_del", "SAT", at(2025, 6, 1), None)  # still active -> ends at deletion
    rows.enroll("u2", "c_del", "SAT", at(2025, 6, 1), at(2026, 9, 1))  # ends after deletion
    rows.enroll("u3", "c_del", "PHISH", at(2026, 3, 2), at(2026, 3, 5))  # ended before deletion
    expected = {("p1", "c_del", "SAT"): 2, ("p1", "c_del", "PHISH"): 1}
    assert counts_for(product_engine, state_engine, "2026-03-01") == expected
    assert counts_for(product_engine, state_engine, "2026-02-01") == {("p1", "c_del", "SAT"): 2}
    assert counts_for(product_engine, state_engine, "2026-04-01") == {}
    assert counts_for(product_engine, state_engine, "2026-07-01") == {}


def test_a_company_deleted_exactly_at_month_start_is_not_in_the_month(rows, product_engine, state_engine):
    rows.company("c_del", "p1", deleted_at=at(2026, 3, 1))
    rows.users("u1")
    rows.enroll("u1", "c_del", "SAT", at(2025, 6, 1), None)
    assert counts_for(product_engine, state_engine, "2026-03-01") == {}
    assert counts_for(product_engine, state_engine, "2026-02-01") == {("p1", "c_del", "SAT"): 1}


def test_company_name_comes_from_the_companies_table(rows, product_engine, state_engine):
    rows.partner("p2").company("c9", "p2", "Acme Dental (renamed)")
    rows.users("u1")
    rows.enroll("u1", "c9", "EMAIL", at(2026, 1, 1), None)
    counts, _ = run_month(product_engine, state_engine, "2026-03-01")
    assert counts.to_dict("records") == [
        {"partner_id": "p2", "company_id": "c9", "company_name": "Acme Dental (renamed)",
         "sku": "EMAIL", "billable_users": 1}
    ]


def test_zero_length_span_is_not_billable(rows, product_engine, state_engine):
    """``[t, t)`` is empty under the half-open rule: it overlaps no month, wherever ``t`` is.
    It is not malformed either (it does not end before it starts): not quarantined."""
    t = at(2026, 3, 10, 12)
    march = BillingMonth(date(2026, 3, 1), NY)
    assert not march.overlaps(t, t)
    assert not march.overlaps(march.start, march.start)
    rows.users("u1", "u2", "u3")
    rows.enroll("u1", "c1", "SAT", t, t)
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 1), at(2026, 3, 1))  # empty, at the month start
    rows.enroll("u3", "c1", "PHISH", t, t + timedelta(seconds=1))  # one second: counts
    counts, validation = run_month(product_engine, state_engine, "2026-03-01")
    assert validation.rows_quarantined == 0
    assert as_dict(counts) == {("p1", "c1", "PHISH"): 1}  # no SAT group: nothing of it overlaps


def test_sqlite_compares_text_timestamps_at_millisecond_precision(rows, product_engine, state_engine):
    """SQLite's date functions read text timestamps to the millisecond (documented in the
    README): a span ending 400 us after the month start ends at the month start there and does
    not overlap the month; PostgreSQL keeps microseconds and counts it. Either way validation
    and the count agree (no ReconciliationError)."""
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 2, 10), at(2026, 3, 1, 0, 0, 0, 400))
    counts, validation = run_month(product_engine, state_engine, "2026-03-01")
    assert validation.rows_quarantined == 0
    if product_engine.dialect.name == "sqlite":
        assert as_dict(counts) == {}
    else:
        assert as_dict(counts) == {SAT: 1}


def test_sub_millisecond_reversed_span_never_blocks_the_month_nor_bills(rows, product_engine, state_engine):
    """A span reversed by less than a millisecond: SQLite compares text timestamps at
    millisecond precision, PostgreSQL at microseconds. Either way pandera and the database must
    judge it alike (no ReconciliationError) and it is never billed."""
    rows.users("u1")
    start = at(2026, 3, 10, 12, 0, 0, 400)  # SQLite reads both as 12:00:00.000
    rows.enroll("u1", "c1", "SAT", start, start - timedelta(microseconds=300))
    counts, validation = run_month(product_engine, state_engine, "2026-03-01")
    assert validation.rows_in == 1
    if product_engine.dialect.name == "postgresql":
        assert validation.reason_counts == {"span_reversed": 1}
    assert as_dict(counts).get(SAT, 0) == 0


# ------------------------------------------------------------------ reconciliation
# Within its validation's run, billable_counts promotes the counts that pass staged; a later run
# counts afresh, and that count must agree with the validation it reads.
LATER_RUN = "a-later-run"


def test_reconciliation_error_when_source_changes_between_validation_and_count(
    rows, product_engine, state_engine
):
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    validation = validate(product_engine, state_engine, "2026-03-01")
    assert validation.rows_valid == 1
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 10), None)  # lands after validation
    with pytest.raises(ReconciliationError, match=r"validation accepted 1 rows but the database counted from 2"):
        count(product_engine, state_engine, "2026-03-01", validation, run_id=LATER_RUN)
    # nothing stored for the month
    assert load_billable_counts(state_engine, date(2026, 3, 1)).empty
    assert load_month_computation(state_engine, date(2026, 3, 1)) is None
    # a re-run from validation completes it
    counts, validation = run_month(product_engine, state_engine, "2026-03-01")
    assert as_dict(counts) == {SAT: 2}


def test_reconciliation_error_when_a_row_is_removed_after_validation(rows, product_engine, state_engine):
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    gone = rows.enroll("u2", "c1", "SAT", at(2026, 1, 1), None)
    validation = validate(product_engine, state_engine, "2026-03-01")
    with product_engine.begin() as conn:
        conn.execute(ps.service_enrollments.delete().where(ps.service_enrollments.c.enrollment_id == gone))
    with pytest.raises(ReconciliationError):
        count(product_engine, state_engine, "2026-03-01", validation, run_id=LATER_RUN)


def test_reconciliation_error_when_the_query_changed_since_validation(rows, product_engine, state_engine, tmp_path):
    rows.users("u1")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    validation = validate(product_engine, state_engine, "2026-03-01")
    reference = utilization_query(None, product_engine.dialect.name)
    other = tmp_path / "other.sql"
    other.write_text(reference.sql + "\n-- a comment does not change it\n", encoding="utf-8")
    assert SourceQuery.load(other).sha256 == reference.sha256
    other.write_text(reference.sql.replace("SELECT", "SELECT DISTINCT", 1), encoding="utf-8")
    with pytest.raises(ReconciliationError, match="validated with another UTILIZATION_SQL"):
        count(product_engine, state_engine, "2026-03-01", validation, query=SourceQuery.load(other), run_id=LATER_RUN)


# ------------------------------------------------------------------ idempotency


def _stored_rows(state_engine, month: date) -> int:
    with state_engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(billable_counts).where(billable_counts.c.month == month)
        ).scalar_one()


def test_running_the_same_month_twice_stores_identical_counts(rows, product_engine, state_engine):
    rows.partner("p2").company("c2", "p2")
    rows.users("u1", "u2", "u3")
    rows.users("x1", billable=False)
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 5), at(2026, 3, 6))
    rows.enroll("u3", "c2", "PHISH", at(2026, 2, 1), None)
    rows.enroll("x1", "c2", "EMAIL", at(2026, 2, 1), None)
    rows.enroll(None, "c1", "SAT", at(2026, 2, 1), None)  # quarantined
    march = date(2026, 3, 1)
    run_month(product_engine, state_engine, "2026-03-01", run_id="run-1")
    first = load_billable_counts(state_engine, march)
    first_computation = load_month_computation(state_engine, march)
    run_month(product_engine, state_engine, "2026-02-01", run_id="run-feb")  # another month between
    run_month(product_engine, state_engine, "2026-03-01", run_id="run-2")
    second = load_billable_counts(state_engine, march)
    second_computation = load_month_computation(state_engine, march)
    assert as_dict(first) == {SAT: 2, ("p2", "c2", "PHISH"): 1, ("p2", "c2", "EMAIL"): 0}
    assert second.equals(first)
    assert _stored_rows(state_engine, march) == len(first) == 3
    assert second_computation.counts_fingerprint == first_computation.counts_fingerprint
    assert second_computation.run_id == "run-2"
    validation = load_month_validation(state_engine, march)
    assert (validation.rows_in, validation.rows_quarantined, validation.run_id) == (5, 1, "run-2")
    assert len(load_quarantine(state_engine, march)) == 1
    # and February kept its own counts
    assert as_dict(load_billable_counts(state_engine, date(2026, 2, 1))) == {
        ("p1", "c1", "SAT"): 1, ("p2", "c2", "PHISH"): 1, ("p2", "c2", "EMAIL"): 0,
    }


def test_a_rerun_after_the_source_changed_replaces_counts(rows, product_engine, state_engine):
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("u2", "c1", "PHISH", at(2026, 1, 1), None)
    run_month(product_engine, state_engine, "2026-03-01")
    with product_engine.begin() as conn:
        conn.execute(ps.service_enrollments.delete().where(ps.service_enrollments.c.user_id == "u2"))
    run_month(product_engine, state_engine, "2026-03-01")
    assert as_dict(load_billable_counts(state_engine, date(2026, 3, 1))) == {SAT: 1}
