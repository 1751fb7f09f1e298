"""MySQL/MariaDB as a product database: the reference schema, demo seeding and the reference
utilization query, on a real MariaDB (127.0.0.1:3306), checked against the source contract."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from cryptography.fernet import Fernet
import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.demo.data import DemoSpec, load_demo_data
from pipeline.settings import PACKAGE_SQL_DIR, reference_sql
from pipeline.source import product_schema as ps
from pipeline.source.contract import check_contract
from pipeline.source.extract import extract_month
from pipeline.source.utilization import CONTRACT_COLUMNS, month_parameters, utilization_query

pytestmark = pytest.mark.mariadb

UTC = timezone.utc
MONTH = BillingMonth(date(2026, 10, 1), "America/New_York")


@pytest.fixture
def mariadb_engine(mariadb_url):
    engine = sa.create_engine(mariadb_url)
    yield engine
    engine.dispose()


def test_reference_sql_maps_mysql_and_mariadb_to_their_folder():
    for dialect in ("mysql", "mariadb"):
        assert reference_sql(dialect, "utilization.sql") == PACKAGE_SQL_DIR / "mysql" / "utilization.sql"
        assert reference_sql(dialect, "services.sql") == PACKAGE_SQL_DIR / "common" / "services.sql"
    assert reference_sql("postgresql", "utilization.sql").parent.name == "postgresql"
    assert reference_sql("sqlite", "utilization.sql").parent.name == "sqlite"


def test_reference_schema_types_on_mariadb(mariadb_engine):
    ps.create_product_schema(mariadb_engine)
    inspector = sa.inspect(mariadb_engine)
    assert set(inspector.get_table_names()) >= {t.name for t in ps.metadata.sorted_tables}
    with mariadb_engine.connect() as conn:
        columns = {
            (row.TABLE_NAME, row.COLUMN_NAME): row.COLUMN_TYPE.lower()
            for row in conn.execute(
                sa.text(
                    "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE()"
                )
            )
        }
        collations = dict(
            conn.execute(
                sa.text(
                    "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE()"
                )
            ).all()
        )
    for table, column in ps.TIMESTAMP_COLUMNS:
        assert columns[(table, column)] == "datetime(6)", (table, column)
    assert columns[("users", "is_billable")] == "tinyint(1)"
    assert columns[("service_enrollments", "user_id")].startswith("varchar")
    assert all(collations[t.name] == "utf8mb4_bin" for t in ps.metadata.sorted_tables)


def test_timestamps_are_stored_as_utc_datetime(mariadb_engine):
    ps.create_product_schema(mariadb_engine)
    new_york = datetime(2026, 10, 31, 22, 30, 15, 250_000, tzinfo=ZoneInfo("America/New_York"))
    with mariadb_engine.begin() as conn:
        conn.execute(
            ps.partners.insert(),
            {"partner_id": "p-1", "name": "P", "created_at": ps.to_db_timestamp(new_york, "mysql")},
        )
        stored = conn.execute(sa.text("SELECT created_at FROM partners")).scalar_one()
    assert stored == datetime(2026, 11, 1, 2, 30, 15, 250_000)  # the same instant, UTC wall time


def test_ids_compare_case_sensitively(mariadb_engine):
    ps.create_product_schema(mariadb_engine)
    with mariadb_engine.begin() as conn:
        conn.execute(ps.users.insert(), [
            {"user_id": "u-A", "email": None, "is_billable": True},
            {"user_id": "u-a", "email": None, "is_billable": True},
        ])
        distinct = conn.execute(sa.text("SELECT COUNT(DISTINCT user_id) FROM users")).scalar_one()
    assert distinct == 2


def _expected_rows(conn: sa.Connection, month: BillingMonth) -> list[tuple]:
    """The reference query's rows, read independently: every table fetched and joined in Python."""
    def utc(value):
        return None if value is None else value.replace(tzinfo=UTC)

    companies = {r.company_id: r for r in conn.execute(sa.select(ps.companies))}
    partners = {r.partner_id for r in conn.execute(sa.select(ps.partners.c.partner_id))}
    billable = dict(conn.execute(sa.select(ps.users.c.user_id, ps.users.c.is_billable)).all())
    start, end = month.start_utc, month.end_utc
    rows = []
    for e in conn.execute(sa.select(ps.service_enrollments)):
        company = companies.get(e.company_id)
        deleted = utc(company.deleted_at) if company is not None else None
        started, ended = utc(e.started_at), utc(e.ended_at)
        if started is not None and started >= end:
            continue
        if ended is not None and ended <= start:
            continue
        if deleted is not None and deleted <= start:
            continue
        active_to = deleted if deleted is not None and (ended is None or deleted < ended) else ended
        partner = company.partner_id if company is not None and company.partner_id in partners else None
        rows.append((
            partner, e.company_id, company.name if company is not None else None, e.sku, e.user_id,
            started, active_to, None if e.user_id not in billable else billable[e.user_id],
        ))
    return rows


def _key(row: tuple) -> tuple:
    return tuple("" if v is None else str(v) for v in row)


def test_demo_seeding_and_reference_query_on_mariadb(mariadb_engine):
    spec = DemoSpec(end_month=date(2026, 11, 1), history_months=3, partners=3, batch_size=500)
    summary = load_demo_data(mariadb_engine, spec, encryption_keys=Fernet.generate_key().decode())
    with mariadb_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ps.service_enrollments)).scalar_one() == summary.enrollments
        assert conn.execute(sa.select(sa.func.count()).select_from(ps.companies)).scalar_one() == summary.companies
        assert conn.execute(sa.select(sa.func.count()).select_from(ps.gradient_connections)).scalar_one() == 3

        query = utilization_query(None, conn.dialect.name)
        assert query.path.endswith("mysql/utilization.sql")
        result = conn.execute(sa.text(query.sql), month_parameters(MONTH, conn.dialect.name))
        assert list(result.keys()) == list(CONTRACT_COLUMNS)
        rows = result.all()
        expected = _expected_rows(conn, MONTH)
        extract = extract_month(conn, query, MONTH)

    got = [
        (*r[:5], None if r.active_from is None else r.active_from.replace(tzinfo=UTC),
         None if r.active_to is None else r.active_to.replace(tzinfo=UTC), r.billable)
        for r in rows
    ]
    assert len(got) > 500
    assert sorted(got, key=_key) == sorted(expected, key=_key)
    # contract types: DATETIME (naive, UTC) timestamps and TINYINT(1) booleans as 0/1
    assert {type(r.active_from) for r in rows if r.active_from is not None} == {datetime}
    assert all(r.active_from.tzinfo is None for r in rows if r.active_from is not None)
    assert {r.billable for r in rows} <= {0, 1, None}
    assert {0, 1} <= {r.billable for r in rows}
    # the demo's bad rows come back too, for validation to quarantine
    assert any(r.partner_id is None for r in rows) and any(r.user_id is None for r in rows)
    assert any(r.billable is None for r in rows)
    assert any(r.active_to is not None and r.active_to < r.active_from for r in rows)
    assert extract.rows == len(rows)
    assert extract.contract_holds, extract.contract_violations
    assert check_contract(list(CONTRACT_COLUMNS), extract.sample, "mysql") == []


def test_month_window_is_half_open_in_utc(mariadb_engine):
    ps.create_product_schema(mariadb_engine)
    at = lambda v: ps.to_db_timestamp(v, "mysql")  # noqa: E731
    start, end = MONTH.start_utc, MONTH.end_utc
    with mariadb_engine.begin() as conn:
        conn.execute(ps.partners.insert(), {"partner_id": "p-1", "name": "P", "created_at": at(start)})
        conn.execute(ps.companies.insert(), {
            "company_id": "c-1", "partner_id": "p-1", "name": "C", "created_at": at(start),
            "updated_at": at(start),
        })
        conn.execute(ps.users.insert(), {"user_id": "u-1", "email": None, "is_billable": True})
        spans = {
            1: (start - timedelta(days=3), start),  # ends exactly at the month's start: out
            2: (start - timedelta(days=3), start + timedelta(microseconds=1)),  # in
            3: (end - timedelta(microseconds=1), None),  # starts in the last microsecond: in
            4: (end, None),  # starts exactly at the month's end: out
        }
        conn.execute(ps.service_enrollments.insert(), [
            {"enrollment_id": i, "user_id": "u-1", "company_id": "c-1", "sku": "SAT",
             "started_at": at(a), "ended_at": at(b), "updated_at": at(start)}
            for i, (a, b) in spans.items()
        ])
        query = utilization_query(None, conn.dialect.name)
        rows = conn.execute(sa.text(query.sql), month_parameters(MONTH, conn.dialect.name)).all()
    assert sorted(r.active_from.replace(tzinfo=UTC) for r in rows) == [spans[2][0], spans[3][0]]
