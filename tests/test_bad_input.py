"""Bad-input corpus: hostile and odd source rows through the real month-end assets.

Each case adds its rows to a base month (partner p1 / company c1 / SAT with users g1, g2;
partner p2 / company c2 / PHISH with g3) and the three month-end assets are materialized
with Dagster on the real database (SQLite, PostgreSQL, MariaDB). Every case ends one way:

* ``quarantined`` — the rows are kept aside with these reason codes, and not counted;
* ``counted`` — an odd but legitimate value (a dot id, RTL or emoji text, a far date) is
  billed like any other;
* ``contract`` — the query itself is wrong: the month is blocked with an error naming the fix;
* ``refused`` — the database will not store the value (typed engines), nothing to judge;
* ``blocked`` — a month where every row is bad stops at the quarantine threshold.

Whatever the case, the stored counts equal the base counts plus what the case says is
billable (an expectation written by hand, independent of the pipeline), so nothing wrong is
counted and other partners are never affected. Run with ``-s`` to see the case -> outcome table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import dagster as dg
import pytest
import sqlalchemy as sa

from assets.month_end import billable_counts, utilization_extract, validated_utilization
from pipeline.resources import BillingRules, ProductDatabase, StateDatabase
from pipeline.store.months import (
    load_billable_counts,
    load_month_computation,
    load_month_validation,
    load_quarantine,
)
from pipeline.store.schema import ensure_state_schema, staged_billable_counts
from tests.product_rows import NY, ProductRows, as_dict, at

MARCH = "2026-03-01"
ALWAYS = at(2026, 1, 1)
C1_SAT = ("p1", "c1", "SAT")
BASE = {C1_SAT: 2, ("p2", "c2", "PHISH"): 1}
UTC = timezone.utc


def _sql(rows: ProductRows, text: str, **params) -> None:
    with rows.engine.begin() as conn:
        conn.execute(sa.text(text), params)


def _new_user(rows: ProductRows, user_id: str = "ux", **enroll) -> None:
    rows.user(user_id)
    rows.enroll(user_id, enroll.get("company", "c1"), "SAT", enroll.get("start", ALWAYS), enroll.get("end"))


@dataclass(frozen=True)
class Case:
    """What to add, and per dialect (``*`` = any) what must come of it."""

    setup: Callable[[ProductRows], object]
    outcome: dict[str, str]  # dialect -> quarantined | counted | contract | refused | blocked
    codes: tuple[str, ...] = ()  # quarantined rows' reason_codes, sorted
    counted: dict[tuple[str, str, str], int] = field(default_factory=dict)  # billable beyond BASE
    query: Callable[[str, str], str] | None = None  # rewrites the reference query (dialect, sql)
    fix: str = ""  # what the contract error must say
    only_bad: bool = False  # no base rows: the month holds only this case's rows

    def expected(self, dialect: str) -> str:
        return self.outcome.get(dialect, self.outcome.get("*", "n/a"))


Q, C, R = "quarantined", "counted", "refused"
SQLITE_ONLY_TEXT = {"sqlite": Q, "*": R}


def _blob_user(rows: ProductRows) -> None:
    _sql(rows, "INSERT INTO service_enrollments (enrollment_id, user_id, company_id, sku, started_at) "
               "VALUES (900, X'75ff00', 'c1', 'SAT', '2026-01-01 05:00:00+00:00')")


def _bad_utf8_name(rows: ProductRows) -> None:
    rows.company("cbin", "p1")
    rows.enroll("g1", "cbin", "SAT", ALWAYS, None)
    _sql(rows, "UPDATE companies SET name = CAST(X'41636de5ff' AS TEXT) WHERE company_id = 'cbin'")


def _bad_utf8_user(rows: ProductRows) -> None:
    _sql(rows, "INSERT INTO users (user_id, is_billable) VALUES (CAST(X'7566ff' AS TEXT), 1)")
    _sql(rows, "INSERT INTO service_enrollments (enrollment_id, user_id, company_id, sku, started_at) "
               "VALUES (901, CAST(X'7566ff' AS TEXT), 'c1', 'SAT', '2026-01-01 05:00:00+00:00')")


def _raw_span(start: str | None, end: str | None) -> Callable[[ProductRows], None]:
    """An enrollment of a new billable user with timestamps written as the database reads text."""
    def setup(rows: ProductRows) -> None:
        rows.user("ux")
        _sql(rows, "INSERT INTO service_enrollments (enrollment_id, user_id, company_id, sku, started_at, ended_at) "
                   "VALUES (902, 'ux', 'c1', 'SAT', :start, :end)", start=start, end=end)
    return setup


def _integer_ids(dialect: str, sql: str) -> str:
    return sql.replace("e.user_id AS user_id", "e.enrollment_id AS user_id")


def _no_billable(dialect: str, sql: str) -> str:
    return sql.replace(",\n    u.is_billable AS billable", "")


def _unwindowed(dialect: str, sql: str) -> str:
    """A vendor query that returns every enrollment and leaves the window to the pipeline."""
    return sql[: sql.rindex("WHERE")]


def _text_timestamps(dialect: str, sql: str) -> str:
    kind = "CHAR" if dialect == "mysql" else "TEXT"
    return sql.replace("e.started_at AS active_from", f"CAST(e.started_at AS {kind}) AS active_from")


CASES: dict[str, Case] = {
    # ---- each contract column null / blank
    "partner_null": Case(lambda r: (r.company("cx", None), r.enroll("g1", "cx", "SAT", ALWAYS)),
                         {"*": Q}, ("partner_missing",)),
    "partner_blank": Case(lambda r: (r.partner(" "), r.company("cx", " "), r.enroll("g1", "cx", "SAT", ALWAYS)),
                          {"*": Q}, ("partner_missing",)),
    "company_null": Case(lambda r: r.enroll("g1", None, "SAT", ALWAYS), {"*": Q},
                         ("partner_missing,company_missing,company_name_missing",)),
    "company_blank": Case(lambda r: r.enroll("g1", "", "SAT", ALWAYS), {"*": Q},
                          ("partner_missing,company_missing,company_name_missing",)),
    "company_name_null": Case(lambda r: (r.company("cx", "p1", None), r.enroll("g1", "cx", "SAT", ALWAYS)),
                              {"*": Q}, ("company_name_missing",)),
    "company_name_blank": Case(lambda r: (r.company("cx", "p1", "   "), r.enroll("g1", "cx", "SAT", ALWAYS)),
                               {"*": Q}, ("company_name_missing",)),
    "sku_null": Case(lambda r: r.enroll("g1", "c1", None, ALWAYS), {"*": Q}, ("sku_missing",)),
    "sku_blank": Case(lambda r: r.enroll("g1", "c1", " ", ALWAYS), {"*": Q}, ("sku_missing",)),
    "sku_lookalike_case": Case(lambda r: r.enroll("g1", "c1", "sat", ALWAYS), {"*": Q}, ("sku_unknown",)),
    "user_null": Case(lambda r: r.enroll(None, "c1", "SAT", ALWAYS), {"*": Q}, ("user_missing,billable_invalid",)),
    "user_blank": Case(lambda r: r.enroll("  ", "c1", "SAT", ALWAYS), {"*": Q}, ("user_missing,billable_invalid",)),
    "billable_null": Case(lambda r: (r.user("ux", None), r.enroll("ux", "c1", "SAT", ALWAYS)),
                          {"*": Q}, ("billable_invalid",)),
    "active_from_null": Case(lambda r: (r.user("ux"), r.enroll("ux", "c1", "SAT", None, at(2026, 3, 9))),
                             {"*": Q}, ("active_from_invalid",)),
    # ---- wrong types: per value (SQLite types values) or the whole column (the contract)
    "billable_text": Case(lambda r: (_sql(r, "INSERT INTO users (user_id, is_billable) VALUES ('ux', 'maybe')"),
                                     r.enroll("ux", "c1", "SAT", ALWAYS)),
                          {"sqlite": Q, "*": R}, ("billable_invalid",)),
    "active_from_text": Case(_raw_span("next tuesday", None), SQLITE_ONLY_TEXT, ("active_from_invalid",)),
    "active_to_impossible_date": Case(_raw_span("2026-01-01 05:00:00", "2026-02-30 00:00:00"),
                                      SQLITE_ONLY_TEXT, ("active_to_invalid",)),
    "user_id_blob": Case(_blob_user, {"sqlite": Q}, ("billable_invalid,control_characters,value_unreadable",)),
    "contract_integer_ids": Case(lambda r: None, {"*": "contract"}, query=_integer_ids,
                                 fix="cast it to text in UTILIZATION_SQL"),
    "contract_missing_column": Case(lambda r: None, {"*": "contract"}, query=_no_billable,
                                    fix="missing from the query result — UTILIZATION_SQL must return it"),
    "contract_text_timestamps": Case(lambda r: None, {"postgresql": "contract", "mysql": "contract"},
                                     query=_text_timestamps, fix="not a timestamp"),
    # ---- odd ids and text: legitimate, billed (ids are encoded as path segments at Gradient)
    "company_id_dot": Case(lambda r: (r.company(".", "p1"), r.enroll("g1", ".", "SAT", ALWAYS)),
                           {"*": C}, counted={("p1", ".", "SAT"): 1}),
    "company_id_dotdot": Case(lambda r: (r.company("..", "p1"), r.enroll("g1", "..", "SAT", ALWAYS)),
                              {"*": C}, counted={("p1", "..", "SAT"): 1}),
    "user_id_slash": Case(lambda r: _new_user(r, "a/b"), {"*": C}, counted={C1_SAT: 1}),
    "company_name_rtl": Case(lambda r: (r.company("crtl", "p1", "شركة النور"), r.enroll("g1", "crtl", "SAT", ALWAYS)),
                             {"*": C}, counted={("p1", "crtl", "SAT"): 1}),
    "user_id_emoji": Case(lambda r: _new_user(r, "👩‍💻"), {"*": C}, counted={C1_SAT: 1}),
    "company_name_emoji": Case(lambda r: (r.company("cemo", "p1", "Café 🚀"), r.enroll("g1", "cemo", "SAT", ALWAYS)),
                               {"*": C}, counted={("p1", "cemo", "SAT"): 1}),
    "user_id_case_variant": Case(lambda r: _new_user(r, "G1"), {"*": C}, counted={C1_SAT: 1}),
    # ---- look-alikes, control characters, size
    "user_id_leading_space": Case(lambda r: _new_user(r, " g1"), {"*": Q}, ("id_padded",)),
    "user_id_trailing_space": Case(lambda r: _new_user(r, "g1 "), {"mysql": R, "*": Q}, ("id_padded",)),
    "user_id_tab": Case(lambda r: _new_user(r, "g\t5"), {"*": Q}, ("control_characters",)),
    "company_name_nul": Case(lambda r: (r.company("cnul", "p1", "Acme\x00Ltd"), r.enroll("g1", "cnul", "SAT", ALWAYS)),
                             {"postgresql": R, "*": Q}, ("control_characters",)),
    "company_name_1mb": Case(lambda r: (r.company("cbig", "p1", "N" * 1_000_000), r.enroll("g1", "cbig", "SAT", ALWAYS)),
                             {"mysql": R, "*": Q}, ("value_too_long",)),
    # 255 characters of two bytes each (510 bytes) is within the limit; 256 is not
    "company_name_255_two_byte_chars": Case(lambda r: (r.company("c255", "p1", "é" * 255), r.enroll("g1", "c255", "SAT", ALWAYS)),
                                            {"*": C}, counted={("p1", "c255", "SAT"): 1}),
    "company_name_256_two_byte_chars": Case(lambda r: (r.company("c256", "p1", "é" * 256), r.enroll("g1", "c256", "SAT", ALWAYS)),
                                            {"*": Q}, ("value_too_long",)),
    "company_name_invalid_utf8": Case(_bad_utf8_name, {"sqlite": Q}, ("value_unreadable",)),
    "user_id_invalid_utf8": Case(_bad_utf8_user, {"sqlite": Q}, ("value_unreadable",)),
    # ---- duplicates
    "duplicate_rows": Case(lambda r: (r.enroll("g1", "c1", "SAT", ALWAYS), r.enroll("g1", "c1", "SAT", ALWAYS)),
                           {"*": C}),
    "duplicate_bad_rows": Case(lambda r: (r.enroll(None, "c1", "SAT", ALWAYS), r.enroll(None, "c1", "SAT", ALWAYS)),
                               {"*": Q}, ("user_missing,billable_invalid", "user_missing,billable_invalid")),
    # ---- far, BC and infinite dates: the database compares real dates
    "end_9999": Case(lambda r: _new_user(r, end=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
                     {"*": C}, counted={C1_SAT: 1}),
    "span_2300_to_2270": Case(lambda r: _new_user(r, start=datetime(2300, 1, 1, tzinfo=UTC),
                                                  end=datetime(2270, 1, 1, tzinfo=UTC)),
                              {"*": Q}, ("span_reversed",), query=_unwindowed),
    "start_4713_bc": Case(_raw_span("4713-12-01 00:00:00+00:00 BC", None),
                          {"postgresql": C, "sqlite": Q, "mysql": R}, ("active_from_invalid",),
                          counted={C1_SAT: 1}),
    "start_44_bc_iso": Case(_raw_span("-0044-03-15 00:00:00", None), {"sqlite": C}, counted={C1_SAT: 1}),
    "end_year_10000": Case(_raw_span("2026-01-01 00:00:00+00:00", "10000-01-01 00:00:00+00:00"),
                           {"postgresql": C, "sqlite": Q, "*": R}, ("active_to_invalid",), counted={C1_SAT: 1}),
    "end_infinity": Case(_raw_span("2026-01-01 00:00:00+00:00", "infinity"),
                         {"postgresql": C, "sqlite": Q, "*": R}, ("active_to_invalid",), counted={C1_SAT: 1}),
    "start_minus_infinity": Case(_raw_span("-infinity", None),
                                 {"postgresql": C, "sqlite": Q, "*": R}, ("active_from_invalid",),
                                 counted={C1_SAT: 1}),
    # ---- a month of nothing but bad rows
    "all_rows_bad": Case(lambda r: (r.enroll(None, "c1", "SAT", ALWAYS), r.enroll("g1", "c1", "NOPE", ALWAYS)),
                         {"*": "blocked"}, ("sku_unknown", "user_missing,billable_invalid"), only_bad=True),
}


def _base(rows: ProductRows) -> None:
    rows.services().partner("p1").company("c1", "p1").partner("p2").company("c2", "p2")
    rows.users("g1", "g2", "g3")
    rows.enroll("g1", "c1", "SAT", ALWAYS)
    rows.enroll("g2", "c1", "SAT", at(2026, 3, 31, 23))
    rows.enroll("g3", "c2", "PHISH", at(2026, 2, 1), at(2026, 3, 2))
    rows.enroll("g3", "c1", "SAT", at(2026, 5, 1))  # another month: never in March


def _materialize(product_url: str, state_url: str, query_path: str | None, threshold: float):
    resources = {
        "product_db": ProductDatabase(url=product_url, utilization_sql=query_path),
        "state_db": StateDatabase(url=state_url),
        "billing_rules": BillingRules(timezone=NY, quarantine_threshold=threshold),
    }
    return dg.materialize(
        [utilization_extract, validated_utilization, billable_counts],
        partition_key=MARCH, resources=resources, raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return " ".join(
        str(e.step_failure_data.error.message if e.step_failure_data.error else e.step_failure_data.user_failure_data)
        for e in result.get_step_failure_events()
    )


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, product_url, product_engine, tmp_path):
    case = CASES[name]
    dialect = "mysql" if product_engine.dialect.name in ("mysql", "mariadb") else product_engine.dialect.name
    expected = case.expected(dialect)
    if expected == "n/a":
        pytest.skip(f"{name} cannot be written on {dialect}")
    rows = ProductRows(product_engine)
    if case.only_bad:
        rows.services().partner("p1").company("c1", "p1").users("g1")
    else:
        _base(rows)
    refused = None
    try:
        case.setup(rows)
    except sa.exc.DBAPIError as exc:
        refused = type(exc.orig).__name__
    except ValueError as exc:  # psycopg2 refuses NUL in text before sending it
        refused = type(exc).__name__
    assert (refused is not None) == (expected == R), f"{name} on {dialect}: setup refused={refused}"

    query_path = None
    if case.query:
        from pipeline.source.utilization import utilization_query

        reference = utilization_query(None, product_engine.dialect.name).sql
        path = tmp_path / "utilization.sql"
        path.write_text(case.query(dialect, reference), encoding="utf-8")
        query_path = str(path)
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    result = _materialize(product_url, state_url, query_path, threshold=0.01 if case.only_bad else 1.0)
    state = sa.create_engine(state_url)
    ensure_state_schema(state)  # a month stopped at its contract wrote nothing
    month = date(2026, 3, 1)
    quarantine = load_quarantine(state, month)
    counts = as_dict(load_billable_counts(state, month))

    if expected == "contract":
        assert not result.success
        evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["source_contract"]
        assert not evaluation.passed and case.fix in evaluation.description, evaluation.description
        assert counts == {} and quarantine.empty
        shown = f"contract: {evaluation.description}"
    elif expected == "blocked":
        assert not result.success
        evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["quarantine_within_threshold"]
        assert not evaluation.passed and "fix the rows listed in quarantined_rows" in evaluation.description
        assert counts == {}
        assert tuple(sorted(quarantine.reason_codes)) == case.codes
        shown = f"blocked: {evaluation.description}"
    else:
        assert result.success, _failure(result)
        want = dict(BASE)
        if expected == C:
            for key, n in case.counted.items():
                want[key] = want.get(key, 0) + n
        assert counts == want  # nothing wrong counted, other partners untouched
        assert counts[("p2", "c2", "PHISH")] == 1
        if expected == Q:
            assert tuple(sorted(quarantine.reason_codes)) == case.codes
            assert quarantine.row_number.is_unique
            assert quarantine.reasons.str.contains(" — ").all()
            shown = f"quarantined: {'; '.join(sorted(set(quarantine.reason_codes)))}"
        else:
            assert quarantine.empty, quarantine.reason_codes.tolist()
            shown = "refused by the database on write" if refused else "counted"
    print(f"\nBAD-INPUT | {name} | {dialect} | {shown}")


def test_quarantine_and_counts_round_trip_through_a_postgresql_state_db(sqlite_url, postgres_url, tmp_path):
    """The state DB is written in bulk (COPY on PostgreSQL): odd text survives it exactly."""
    rows = ProductRows(sa.create_engine(sqlite_url))
    _base(rows)
    rows.company("c\\d", "p1", "Back\\slash \\N «quoted»")
    rows.enroll("g1", "c\\d", "SAT", ALWAYS)
    _new_user(rows, "a\tb")  # control character: quarantined with its values as they were
    rows.company("cnul", "p1", "Acme\x00Ltd")
    rows.enroll("g1", "cnul", "SAT", ALWAYS)
    result = _materialize(sqlite_url, postgres_url, None, threshold=1.0)
    assert result.success, _failure(result)
    state = sa.create_engine(postgres_url)
    month = date(2026, 3, 1)
    stored = load_billable_counts(state, month)
    assert as_dict(stored) == {**BASE, ("p1", "c\\d", "SAT"): 1}
    assert stored.set_index("company_id").company_name["c\\d"] == "Back\\slash \\N «quoted»"
    quarantine = load_quarantine(state, month).set_index("user_id")
    assert quarantine.reason_codes.to_dict() == {"a\tb": "control_characters", "g1": "control_characters"}
    assert quarantine.company_name["g1"] == "Acme\\x00Ltd"  # NUL shown escaped
    state.dispose()


def _staged_runs(state: sa.Engine) -> list[str]:
    """The run of every count group waiting in staged_billable_counts."""
    with state.connect() as conn:
        return conn.execute(sa.select(staged_billable_counts.c.run_id)).scalars().all()


def test_billable_counts_takes_its_runs_pass_and_recounts_apart_from_it(product_url, product_engine, tmp_path):
    """In one run billable_counts promotes the counts validation's pass staged in the state DB;
    materialized in another run it counts again with the same rules (here after late data: it
    refuses)."""
    rows = ProductRows(product_engine)
    _base(rows)
    rows.enroll(None, "c1", "SAT", ALWAYS)  # quarantined
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    resources = {
        "product_db": ProductDatabase(url=product_url),
        "state_db": StateDatabase(url=state_url),
        "billing_rules": BillingRules(timezone=NY, quarantine_threshold=1.0),
    }
    month = date(2026, 3, 1)
    both = _materialize(product_url, state_url, None, threshold=1.0)
    assert both.success
    state = sa.create_engine(state_url)
    assert _staged_runs(state) == []  # staged and promoted in the same run
    assert as_dict(load_billable_counts(state, month)) == BASE
    assert load_month_computation(state, month).run_id == both.run_id

    validated = dg.materialize([validated_utilization], partition_key=MARCH, resources=resources,
                               selection=[validated_utilization])
    assert validated.success
    validation = load_month_validation(state, month)
    assert validation.run_id == validated.run_id
    # the pass's counts wait in the state DB for billable_counts of its run
    assert validation.counts_staged == len(BASE)
    assert _staged_runs(state) == [validated.run_id] * len(BASE)

    alone = dg.materialize([billable_counts], partition_key=MARCH, resources=resources)
    assert alone.success  # another run: counted again, same result
    (event,) = alone.get_asset_materialization_events()
    assert event.materialization.metadata["counted_from"].value.startswith("a fresh count")
    assert as_dict(load_billable_counts(state, month)) == BASE
    assert load_month_computation(state, month).run_id == alone.run_id
    assert _staged_runs(state) == []  # superseded by the counts stored

    _new_user(rows, "late")  # the source changes after validation
    late = dg.materialize([billable_counts], partition_key=MARCH, resources=resources, raise_on_error=False)
    assert not late.success and "the source changed after validation" in _failure(late)
    assert as_dict(load_billable_counts(state, month)) == BASE
    assert load_month_computation(state, month).run_id == alone.run_id
    state.dispose()
