"""Property test: the pipeline's counts equal a brute-force Python oracle of the billing rules.

Hypothesis generates small product databases (2 partners, 4 companies of which one has no
partner and one may be deleted, a handful of users with random billable flags including a
missing flag and a user absent from the users table, two sold SKUs and an unknown one) and
enrollments whose start/end are drawn around the month boundaries of the billing time zone:
exactly on a boundary, a millisecond / second / hour / day either side, random instants,
null ends (still active), null starts, reversed spans. The pipeline (reference query, pandera
validation, database count, reconciliation) must agree with ``tests.product_rows.oracle_counts``
(which uses ``BillingMonth.overlaps``) on the counts, the rows returned and the rows quarantined.

Instants are kept at millisecond resolution: below that SQLite's date functions round (a known
bug pinned in test_billing_rules.py).
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.billing.month import BillingMonth
from pipeline.store.schema import ensure_state_schema
from pipeline.store.months import load_billable_counts
from pipeline.source.utilization import SourceQuery
from tests.product_rows import (
    Company,
    Enrollment,
    ProductRows,
    as_dict,
    oracle_counts,
    reference_query,
    run_month,
)

UTC = timezone.utc
TIME_ZONES = ["America/New_York", "Europe/London", "Asia/Tokyo"]
# January (no DST change), March and November 2026 (DST changes in New York and London)
MONTHS = [date(2026, 1, 1), date(2026, 3, 1), date(2026, 11, 1)]
PARTNERS = {"p1", "p2"}
COMPANY_PARTNERS = {"c1": "p1", "c2": "p1", "c3": "p2", "c_orphan": None}
SOLD = {"SAT", "PHISH"}
USERS = ["u1", "u2", "u3", "u4", "u_noflag"]
OFFSETS = [
    timedelta(0),
    timedelta(milliseconds=1), -timedelta(milliseconds=1),
    timedelta(seconds=1), -timedelta(seconds=1),
    timedelta(hours=1), -timedelta(hours=1),
    timedelta(days=1), -timedelta(days=1),
    timedelta(days=12), -timedelta(days=12),
]


@st.composite
def scenarios(draw):
    tz = draw(st.sampled_from(TIME_ZONES))
    month = BillingMonth(draw(st.sampled_from(MONTHS)), tz)
    anchors = [month.previous().start, month.start, month.end, month.next().end]
    lo, hi = month.previous().start - timedelta(days=20), month.next().end + timedelta(days=20)
    seconds = int((hi - lo).total_seconds())

    near_boundary = st.builds(
        lambda a, o: (a + o).astimezone(UTC), st.sampled_from(anchors), st.sampled_from(OFFSETS)
    )
    anywhere = st.integers(0, seconds).map(lambda s: lo.astimezone(UTC) + timedelta(seconds=s))
    instant = st.one_of(near_boundary, near_boundary, anywhere)

    billable = {u: draw(st.sampled_from([True, True, True, False])) for u in ["u1", "u2", "u3", "u4"]}
    billable["u_noflag"] = None  # in the users table without a flag
    deleted_at = {c: None for c in COMPANY_PARTNERS}
    deleted_at["c2"] = draw(st.one_of(st.none(), instant))

    # mostly good values, sometimes a bad one
    user_ids = st.one_of(st.sampled_from(["u1", "u2", "u3", "u4"]), st.sampled_from(["u1", "u2"]),
                         st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["u_noflag", "u_ghost", None]))
    company_ids = st.one_of(st.sampled_from(["c1", "c1", "c2", "c3"]), st.sampled_from(["c1", "c2", "c3"]),
                            st.just("c1"), st.sampled_from(["c_orphan", "c_missing", None]))
    skus = st.one_of(st.sampled_from(["SAT", "SAT", "PHISH"]), st.just("SAT"),
                     st.sampled_from(["SAT", "PHISH"]), st.sampled_from(["OLD", None]))

    @st.composite
    def enrollment(draw_):
        start = draw_(st.one_of(*[instant] * 7, st.none()))
        end_kind = draw_(st.sampled_from(["none", "instant", "after", "after", "after"]))
        if end_kind == "none":
            end = None
        elif end_kind == "instant" or start is None:
            end = draw_(instant)
        else:
            end = start + draw_(st.sampled_from(OFFSETS[1::2] + [timedelta(days=40), timedelta(days=400)]))
        return Enrollment(draw_(user_ids), draw_(company_ids), draw_(skus), start, end)

    enrollments = draw(st.lists(enrollment(), min_size=1, max_size=14))
    return month, billable, deleted_at, enrollments


def write(rows: ProductRows, billable, deleted_at, enrollments) -> None:
    rows.reset()
    rows.services("SAT", "PHISH")
    for partner in sorted(PARTNERS):
        rows.partner(partner)
    for company, partner in COMPANY_PARTNERS.items():
        rows.company(company, partner, deleted_at=deleted_at[company])
    for user, flag in billable.items():
        rows.user(user, flag)
    rows.enroll_many((e.user_id, e.company_id, e.sku, e.start, e.end) for e in enrollments)


def unfiltered_query(engine: sa.Engine) -> SourceQuery:
    """The reference query without its month filter: a vendor query returning every
    enrollment, so the database-side overlap (``overlap_sql``) alone decides the month."""
    sql = reference_query(engine).sql
    head, where, _ = sql.rpartition("\nWHERE ")
    assert where, "the reference query has no WHERE to drop"
    return SourceQuery(sql=head, path="<unfiltered>", sha256=hashlib.sha256(head.encode()).hexdigest())


def check(product: sa.Engine, state: sa.Engine, rows: ProductRows, scenario, *, unfiltered: bool = False) -> None:
    month, billable, deleted_at, enrollments = scenario
    write(rows, billable, deleted_at, enrollments)
    expected = oracle_counts(
        month,
        enrollments,
        {c: Company(c, p, f"Company {c}", deleted_at[c]) for c, p in COMPANY_PARTNERS.items()},
        PARTNERS,
        billable,
        SOLD,
        query_filters_month=not unfiltered,
    )
    query = unfiltered_query(product) if unfiltered else None
    counts, validation = run_month(product, state, month.key, month.tz_name, query=query)
    assert as_dict(counts) == expected.counts
    assert validation.rows_in == expected.rows_in
    assert validation.rows_quarantined == expected.rows_quarantined
    assert as_dict(load_billable_counts(state, month.month)) == expected.counts


def _fast_sqlite(dbapi_conn, _record) -> None:
    dbapi_conn.execute("PRAGMA synchronous = OFF")
    dbapi_conn.execute("PRAGMA journal_mode = MEMORY")


@pytest.fixture(scope="module")
def sqlite_engines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oracle")
    product = sa.create_engine(f"sqlite:///{folder / 'product.db'}")
    state = sa.create_engine(f"sqlite:///{folder / 'state.db'}")
    for engine in (product, state):  # throwaway files: no fsync per example
        sa.event.listen(engine, "connect", _fast_sqlite)
    ensure_state_schema(state)
    yield product, state, ProductRows(product)
    product.dispose()
    state.dispose()


@settings(max_examples=70, deadline=None, derandomize=True, print_blob=True)
@given(scenario=scenarios())
def test_pipeline_matches_oracle_on_sqlite(sqlite_engines, scenario):
    product, state, rows = sqlite_engines
    check(product, state, rows, scenario)


@settings(max_examples=50, deadline=None, derandomize=True, print_blob=True)
@given(scenario=scenarios())
def test_database_overlap_matches_oracle_with_an_unfiltered_query_on_sqlite(sqlite_engines, scenario):
    product, state, rows = sqlite_engines
    check(product, state, rows, scenario, unfiltered=True)


# Fewer examples on the server databases (each example writes its rows over the network).
server_database_examples = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@server_database_examples
@given(scenario=scenarios())
def test_pipeline_matches_oracle_on_postgresql(postgres_url, state_engine, scenario):
    product = _server_engine(postgres_url)
    check(product, state_engine, ProductRows(product), scenario)


@server_database_examples
@given(scenario=scenarios())
def test_database_overlap_matches_oracle_with_an_unfiltered_query_on_postgresql(
    postgres_url, state_engine, scenario
):
    product = _server_engine(postgres_url)
    check(product, state_engine, ProductRows(product), scenario, unfiltered=True)


@server_database_examples
@given(scenario=scenarios())
def test_pipeline_matches_oracle_on_mariadb(mariadb_url, state_engine, scenario):
    product = _server_engine(mariadb_url)
    check(product, state_engine, ProductRows(product), scenario)


@server_database_examples
@given(scenario=scenarios())
def test_database_overlap_matches_oracle_with_an_unfiltered_query_on_mariadb(
    mariadb_url, state_engine, scenario
):
    product = _server_engine(mariadb_url)
    check(product, state_engine, ProductRows(product), scenario, unfiltered=True)


_server_engines: dict[str, sa.Engine] = {}


def _server_engine(url: str) -> sa.Engine:
    """One engine per test database (hypothesis calls the test body many times)."""
    if url not in _server_engines:
        for old in _server_engines.values():
            old.dispose()
        _server_engines.clear()
        _server_engines[url] = sa.create_engine(url)
    return _server_engines[url]


def test_oracle_agrees_with_hand_computed_cases():
    """The oracle itself, on cases computed by hand (so a wrong oracle cannot hide a bug)."""
    month = BillingMonth(date(2026, 3, 1), "America/New_York")
    start, end = month.start, month.end
    companies = {
        "c1": Company("c1", "p1", "One"),
        "c2": Company("c2", "p1", "Two", deleted_at=start + timedelta(days=3)),
        "c3": Company("c3", "p1", "Three", deleted_at=start),
    }
    users = {"u1": True, "u2": True, "x": False}
    enrollments = [
        Enrollment("u1", "c1", "SAT", start - timedelta(days=9), start),  # ends at start: out
        Enrollment("u1", "c1", "SAT", end, None),  # starts at end: out
        Enrollment("u2", "c1", "SAT", end - timedelta(seconds=1), None),  # in
        Enrollment("x", "c1", "PHISH", start, None),  # non-billable: group with 0
        Enrollment("u1", "c2", "SAT", start - timedelta(days=90), None),  # capped, still in
        Enrollment("u1", "c3", "SAT", start - timedelta(days=90), None),  # deleted at start: out
        Enrollment("u1", "c1", "OLD", start, None),  # unknown sku: quarantined
        Enrollment("u1", "c1", "SAT", start + timedelta(days=2), start + timedelta(days=1)),  # reversed
    ]
    result = oracle_counts(month, enrollments, companies, {"p1"}, users, {"SAT", "PHISH"})
    assert result.counts == {("p1", "c1", "SAT"): 1, ("p1", "c1", "PHISH"): 0, ("p1", "c2", "SAT"): 1}
    assert (result.rows_in, result.rows_quarantined) == (5, 2)
