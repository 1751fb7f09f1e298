"""The month-end assets on Dagster's real in-process executor (``dagster.materialize``).

utilization_extract -> validated_utilization -> billable_counts, with the resources of
``pipeline.resources`` pointed at temporary SQLite files (and once at PostgreSQL for both the
product and the state database), the demo data of ``pipeline.demo.data`` as the source.
"""

from __future__ import annotations

import uuid
from datetime import date

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from assets.month_end import billable_counts, utilization_extract, validated_utilization
from pipeline.billing.month import BillingMonth
from pipeline.demo.data import (
    BAD_ROW_KINDS,
    GHOST_USER_ID,
    ORPHAN_COMPANY_ID,
    UNKNOWN_SKU,
    DemoSpec,
    load_demo_data,
)
from pipeline.resources import BillingRules, ProductDatabase, StateDatabase
from pipeline.store.schema import billable_counts as billable_counts_table, ensure_state_schema
from pipeline.store.months import (
    load_billable_counts,
    load_month_computation,
    load_month_computations,
    load_month_validation,
    load_quarantine,
)
from tests.conftest import POSTGRES_ADMIN_URL, require_postgres
from tests.product_rows import NY, as_dict, oracle_counts, read_reference_model, reference_query

MONTH_END_ASSETS = [utilization_extract, validated_utilization, billable_counts]
DEMO = DemoSpec(end_month=date(2026, 9, 1), history_months=4)  # June .. September 2026
MONTHS = ["2026-07-01", "2026-08-01", "2026-09-01"]
EXTRACT, VALIDATED, COUNTS = (dg.AssetKey(n) for n in ["utilization_extract", "validated_utilization", "billable_counts"])

# the demo's bad rows: which user each kind is planted on (None: the row without a user)
BAD_USERS = {
    "span_reversed": "u-bad-0001",
    "sku_unknown": "u-bad-0002",
    "partner_missing": "u-bad-0003",
    "user_missing": None,
    "billable_invalid": GHOST_USER_ID,
    "active_from_invalid": "u-bad-0004",
}


def resources(product_url: str, state_url: str, **rules) -> dict:
    utilization_sql = rules.pop("utilization_sql", None)
    return {
        "product_db": ProductDatabase(url=product_url, utilization_sql=utilization_sql),
        "state_db": StateDatabase(url=state_url),
        "billing_rules": BillingRules(timezone=NY, **rules),
    }


def materialize(month: str, res: dict, instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        MONTH_END_ASSETS, partition_key=month, resources=res, instance=instance, raise_on_error=False
    )


def materialized(result: dg.ExecuteInProcessResult) -> dict[dg.AssetKey, dict]:
    """Asset key -> metadata values of its materialization in this run."""
    return {
        event.asset_key: {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def expected_counts(product_url: str, month_key: str) -> dict:
    engine = sa.create_engine(product_url)
    try:
        enrollments, companies, partners, users, skus = read_reference_model(engine)
    finally:
        engine.dispose()
    month = BillingMonth.from_partition_key(month_key, NY)
    return oracle_counts(month, enrollments, companies, partners, users, skus)


@pytest.fixture(scope="module")
def demo_sqlite(tmp_path_factory):
    """One demo product DB (SQLite) for the module; it is only read."""
    path = tmp_path_factory.mktemp("demo") / "product.db"
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    summary = load_demo_data(engine, DEMO)
    engine.dispose()
    assert summary.bad_rows > 0
    return url


@pytest.fixture(scope="module")
def demo_run(demo_sqlite, tmp_path_factory):
    """The three demo months materialized once, in order, into one state DB and instance."""
    state_url = f"sqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}"
    res = resources(demo_sqlite, state_url)
    with dg.DagsterInstance.ephemeral() as instance:
        results = {month: materialize(month, res, instance) for month in MONTHS}
    return state_url, results


# ------------------------------------------------------------------ the demo, three months


def test_demo_data_materializes_three_months(demo_run):
    state_url, results = demo_run
    state = sa.create_engine(state_url)
    for month, result in results.items():
        assert result.success, (month, [e.step_failure_data.error.message for e in result.get_step_failure_events()])
        assert set(materialized(result)) == {EXTRACT, VALIDATED, COUNTS}
        evaluations = checks(result)
        assert evaluations["source_contract"].passed
        assert evaluations["quarantine_within_threshold"].passed
        assert not load_billable_counts(state, date.fromisoformat(month)).empty
    assert [c.month for c in load_month_computations(state)] == [date.fromisoformat(m) for m in MONTHS]


def test_demo_counts_match_the_oracle(demo_sqlite, demo_run):
    """The stored counts equal a brute-force reading of the rules over the demo's tables
    (deleted, renamed and empty companies, movers, duplicate spans, non-billable users)."""
    state_url, _ = demo_run
    state = sa.create_engine(state_url)
    for month in MONTHS:
        stored = load_billable_counts(state, date.fromisoformat(month))
        oracle = expected_counts(demo_sqlite, month)
        assert as_dict(stored) == oracle.counts, month
        validation = load_month_validation(state, date.fromisoformat(month))
        assert (validation.rows_in, validation.rows_quarantined) == (oracle.rows_in, oracle.rows_quarantined)


def test_each_demo_bad_row_is_quarantined_with_its_reason_and_not_counted(demo_run):
    state_url, _ = demo_run
    state = sa.create_engine(state_url)
    for month in MONTHS:
        quarantine = load_quarantine(state, date.fromisoformat(month))
        codes = {code for codes in quarantine.reason_codes for code in codes.split(",")}
        # exactly the documented kinds (user_missing rows also lack a billable flag)
        assert codes == set(BAD_ROW_KINDS), month
        for kind, user in BAD_USERS.items():
            rows = quarantine[quarantine.reason_codes.str.split(",").map(lambda c, k=kind: k in c)]
            assert len(rows) >= 1, (month, kind)
            if user is None:
                assert rows.user_id.isna().any(), (month, kind)
            else:
                assert user in set(rows.user_id), (month, kind)
            assert rows.reasons.str.contains(" — ").all()
        assert quarantine.run_id.nunique() == 1
        counts = load_billable_counts(state, date.fromisoformat(month))
        assert ORPHAN_COMPANY_ID not in set(counts.company_id)
        assert UNKNOWN_SKU not in set(counts.sku)
        # one reversed span per month is planted, and only the month's own one is returned
        assert (quarantine.reason_codes == "span_reversed").sum() == 1


def test_demo_metadata(demo_run):
    state_url, results = demo_run
    state = sa.create_engine(state_url)
    previous = None
    for month in MONTHS:
        meta = materialized(results[month])
        extract, validated, counts = meta[EXTRACT], meta[VALIDATED], meta[COUNTS]
        computation = load_month_computation(state, date.fromisoformat(month))
        validation = load_month_validation(state, date.fromisoformat(month))
        assert "rows" not in extract  # counted once, by the pass: validated_utilization's rows_in
        assert extract["month"] == month[:7]
        assert validated["rows_in"] == validation.rows_in > 0
        assert validated["rows_quarantined"] == validation.rows_quarantined == len(BAD_ROW_KINDS)
        assert validated["groups_staged"] == validation.counts_staged == counts["dagster/row_count"]
        assert counts["counted_from"].startswith("this run's validation pass")
        assert validated["quarantine_by_reason"] == validation.reason_counts
        assert counts["rows_in"] == computation.rows_in == validation.rows_in
        assert counts["rows_quarantined"] == computation.rows_quarantined
        assert counts["partners"] == computation.partners == DEMO.partners
        assert counts["companies"] == computation.companies > 0
        assert counts["billable_users"] == computation.billable_users > 0
        assert counts["dagster/row_count"] == len(load_billable_counts(state, date.fromisoformat(month)))
        if previous is None:
            assert "billable_users_change" not in counts  # no month before the first run
        else:
            assert counts["billable_users_previous_month"] == previous.billable_users
            assert counts["billable_users_change"] == computation.billable_users - previous.billable_users
            assert counts["billable_users_change_pct"] == pytest.approx(
                100 * (computation.billable_users - previous.billable_users) / previous.billable_users, abs=0.01
            )
        previous = computation


def test_rerunning_a_month_replaces_its_counts(demo_sqlite, tmp_path):
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    res = resources(demo_sqlite, state_url)
    month = date(2026, 8, 1)
    first = materialize("2026-08-01", res)
    state = sa.create_engine(state_url)
    counts_1 = load_billable_counts(state, month)
    quarantine_1 = load_quarantine(state, month)
    second = materialize("2026-08-01", res)
    assert first.success and second.success
    counts_2 = load_billable_counts(state, month)
    assert counts_2.equals(counts_1)
    with state.connect() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).select_from(billable_counts_table).where(billable_counts_table.c.month == month)
        ).scalar_one()
    assert stored == len(counts_1)
    quarantine_2 = load_quarantine(state, month)
    assert len(quarantine_2) == len(quarantine_1)
    assert set(quarantine_2.run_id) == {second.run_id}
    assert load_month_computation(state, month).run_id == second.run_id
    assert materialized(second)[COUNTS]["counts_fingerprint"] == materialized(first)[COUNTS]["counts_fingerprint"]


# ------------------------------------------------------------------ blocking checks


def test_quarantine_above_threshold_blocks_billable_counts(demo_sqlite, tmp_path):
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    result = materialize("2026-08-01", resources(demo_sqlite, state_url, quarantine_threshold=0.001))
    assert not result.success
    evaluation = checks(result)["quarantine_within_threshold"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.asset_key == VALIDATED
    assert "above the 0.10% threshold" in evaluation.description
    assert "fix the rows listed in quarantined_rows and re-run" in evaluation.description
    assert checks(result)["source_contract"].passed
    assert COUNTS not in materialized(result)
    assert set(materialized(result)) == {EXTRACT, VALIDATED}
    assert result.get_failed_step_keys() == {"validated_utilization"}
    assert not result.is_node_success("billable_counts")
    state = sa.create_engine(state_url)
    month = date(2026, 8, 1)
    assert load_billable_counts(state, month).empty
    assert load_month_computation(state, month) is None
    # the quarantine is kept for whoever fixes the rows
    assert len(load_quarantine(state, month)) == len(BAD_ROW_KINDS)


def test_query_missing_a_column_is_blocked_by_source_contract(demo_sqlite, tmp_path):
    engine = sa.create_engine(demo_sqlite)
    reference = reference_query(engine)
    dropped = tmp_path / "no_billable.sql"
    dropped.write_text(
        "-- the vendor forgot billable\n"
        "SELECT partner_id, company_id, company_name, sku, user_id, active_from, active_to\n"
        f"FROM (\n{reference.sql}\n) AS reference\n",
        encoding="utf-8",
    )
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    result = materialize("2026-08-01", resources(demo_sqlite, state_url, utilization_sql=str(dropped)))
    assert not result.success
    evaluation = checks(result)["source_contract"]
    assert not evaluation.passed
    assert evaluation.asset_key == EXTRACT
    assert "billable: missing from the query result" in evaluation.description
    assert "quarantine_within_threshold" not in checks(result)
    meta = materialized(result)
    assert set(meta) == {EXTRACT}
    assert meta[EXTRACT]["query_file"] == str(dropped)
    assert "billable" not in meta[EXTRACT]["columns"]
    assert result.get_failed_step_keys() == {"utilization_extract"}
    state = sa.create_engine(state_url)
    ensure_state_schema(state)  # nothing downstream ran, so nothing created it
    assert load_month_validation(state, date(2026, 8, 1)) is None
    assert load_billable_counts(state, date(2026, 8, 1)).empty


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture
def second_postgres_url():
    """Another fresh PostgreSQL database (the state DB next to postgres_url's product DB)."""
    require_postgres()
    name = f"gbs_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        from pipeline.resources import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_demo_on_postgresql_product_and_state(postgres_url, second_postgres_url):
    engine = sa.create_engine(postgres_url)
    load_demo_data(engine, DemoSpec(end_month=date(2026, 9, 1), history_months=3, partners=3))
    engine.dispose()
    res = resources(postgres_url, second_postgres_url)
    with dg.DagsterInstance.ephemeral() as instance:
        results = [materialize(m, res, instance) for m in ["2026-08-01", "2026-09-01", "2026-09-01"]]
    assert all(r.success for r in results)
    state = sa.create_engine(second_postgres_url)
    try:
        assert state.dialect.name == "postgresql"
        for month in ["2026-08-01", "2026-09-01"]:
            stored = load_billable_counts(state, date.fromisoformat(month))
            assert as_dict(stored) == expected_counts(postgres_url, month).counts
            quarantine = load_quarantine(state, date.fromisoformat(month))
            codes = {c for codes in quarantine.reason_codes for c in codes.split(",")}
            # timestamptz cannot hold a non-timestamp: that demo kind is SQLite only
            assert codes == set(BAD_ROW_KINDS) - {"active_from_invalid"}
        meta = materialized(results[1])[COUNTS]
        assert meta["billable_users_change"] == (
            meta["billable_users"] - load_month_computation(state, date(2026, 8, 1)).billable_users
        )
        assert materialized(results[2])[COUNTS]["counts_fingerprint"] == meta["counts_fingerprint"]
        assert "postgresql" in materialized(results[0])[EXTRACT]["product_db"]
    finally:
        state.dispose()


# ------------------------------------------------------------------ the code location


def test_definitions_asset_graph():
    from pipeline.definitions import defs
    from pipeline.partitions import monthly_partitions

    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert {EXTRACT, VALIDATED, COUNTS} <= keys
    extract, validated, counts = graph.get(EXTRACT), graph.get(VALIDATED), graph.get(COUNTS)
    # besides each other, only the product database's tables the queries read (assets/source_tables.py)
    tables = lambda node: {k for k in node.parent_keys if k.path[0] == "product_database"}  # noqa: E731
    assert extract.parent_keys - tables(extract) == set() and tables(extract)
    assert validated.parent_keys - tables(validated) == {EXTRACT}
    assert counts.parent_keys == {VALIDATED}
    assert VALIDATED in extract.child_keys and COUNTS in validated.child_keys
    for node in (extract, validated, counts):
        assert node.group_name == "month_end"
        assert node.description and len(node.description) > 40
        assert node.partitions_def == monthly_partitions
    assert extract.check_keys == {dg.AssetCheckKey(EXTRACT, "source_contract")}
    assert validated.check_keys == {dg.AssetCheckKey(VALIDATED, "quarantine_within_threshold")}
    for check_key in extract.check_keys | validated.check_keys:
        spec = graph.get_check_spec(check_key)
        assert spec.blocking
        assert spec.description
    job = defs.resolve_job_def("monthly_billing")
    assert {EXTRACT, VALIDATED, COUNTS} <= set(job.asset_layer.selected_asset_keys)
    assert defs.resolve_job_def("monthly_billing").partitions_def == monthly_partitions
