"""What the contract queries read, found by parsing them: tables and column lineage."""

from __future__ import annotations

import pytest

from pipeline.settings import reference_sql
from pipeline.source.lineage_sql import UnreadableSQL, column_lineage, sqlglot_dialect, tables_read
from pipeline.source.utilization import SourceQuery

DIALECTS = ["postgresql", "mysql", "mariadb", "sqlite"]
REFERENCE_UTILIZATION_SOURCES = {
    "partner_id": [("partners", "partner_id")],
    "company_id": [("service_enrollments", "company_id")],
    "company_name": [("companies", "name")],
    "sku": [("service_enrollments", "sku")],
    "user_id": [("service_enrollments", "user_id")],
    "active_from": [("service_enrollments", "started_at")],
    "active_to": [("companies", "deleted_at"), ("service_enrollments", "ended_at")],
    "billable": [("users", "is_billable")],
}


def reference(dialect: str, name: str) -> str:
    return SourceQuery.load(reference_sql(dialect, name)).sql


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_reference_utilization_query_reads_four_tables_with_its_column_lineage(dialect):
    sql, read = reference(dialect, "utilization.sql"), sqlglot_dialect(dialect)
    assert tables_read(sql, read) == ["companies", "partners", "service_enrollments", "users"]
    assert column_lineage(sql, read) == REFERENCE_UTILIZATION_SOURCES


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_reference_companies_connections_and_services_queries(dialect):
    read = sqlglot_dialect(dialect)
    assert tables_read(reference(dialect, "companies.sql"), read) == ["companies", "partners"]
    assert column_lineage(reference(dialect, "companies.sql"), read) == {
        "partner_id": [("companies", "partner_id")],
        "company_id": [("companies", "company_id")],
        "company_name": [("companies", "name")],
    }
    assert tables_read(reference(dialect, "connections.sql"), read) == ["gradient_connections"]
    assert column_lineage(reference(dialect, "connections.sql"), read)["encrypted_api_key"] == [
        ("gradient_connections", "encrypted_api_key")
    ]
    services = column_lineage(reference(dialect, "services.sql"), read)
    assert services["category"] == [("services", "gradient_category")]
    assert tables_read(reference(dialect, "services.sql"), read) == ["services"]


VENDOR_QUERY = """
WITH active AS (
    SELECT a.org_ref, a.seat_holder, a.product_code, a.valid_from, a.valid_until
    FROM billing.seat_assignments a
    WHERE a.valid_from < :month_end AND (a.valid_until IS NULL OR a.valid_until > :month_start)
), orgs AS (
    SELECT o.id, o.reseller_id, o.display_name FROM crm.organisations o
)
SELECT r.code AS partner_id,
       orgs.id AS company_id,
       orgs.display_name AS company_name,
       active.product_code AS sku,
       active.seat_holder AS user_id,
       active.valid_from AS active_from,
       active.valid_until AS active_to,
       (SELECT NOT s.internal FROM staff s WHERE s.id = active.seat_holder) AS billable
FROM active
JOIN orgs ON orgs.id = active.org_ref
JOIN "Resellers" AS r ON r.id = orgs.reseller_id
WHERE EXISTS (SELECT 1 FROM contracts k WHERE k.org_id = orgs.id)
"""


def test_a_vendor_query_with_ctes_joins_subqueries_and_aliases():
    """The vendor's own tables (schema-qualified, quoted), through CTEs, a scalar subquery and
    an EXISTS; the CTE names ``active`` and ``orgs`` are not tables."""
    assert tables_read(VENDOR_QUERY, "postgres") == [
        "Resellers", "billing.seat_assignments", "contracts", "crm.organisations", "staff",
    ]
    assert column_lineage(VENDOR_QUERY, "postgres") == {
        "partner_id": [("Resellers", "code")],
        "company_id": [("crm.organisations", "id")],
        "company_name": [("crm.organisations", "display_name")],
        "sku": [("billing.seat_assignments", "product_code")],
        "user_id": [("billing.seat_assignments", "seat_holder")],
        "active_from": [("billing.seat_assignments", "valid_from")],
        "active_to": [("billing.seat_assignments", "valid_until")],
        "billable": [("staff", "internal")],
    }


def test_columns_the_parser_cannot_place_without_the_schema_have_no_sources():
    assert column_lineage("SELECT a FROM t1 JOIN t2 ON t1.id = t2.id", "postgres") == {"a": []}
    assert column_lineage("SELECT * FROM t", "postgres") == {}
    assert tables_read("SELECT * FROM t", "postgres") == ["t"]


@pytest.mark.parametrize(
    "sql, problem",
    [
        ("SELEC partner_id FROM", "cannot read the query"),
        ("", "not one SELECT statement"),
        ("SELECT 1; SELECT 2", "not one SELECT statement"),
        ("DELETE FROM companies", "not one SELECT statement (found: DELETE)"),
    ],
)
def test_unreadable_sql_says_so(sql, problem):
    with pytest.raises(UnreadableSQL, match=problem.replace("(", r"\(").replace(")", r"\)")):
        tables_read(sql, "postgres")


def test_sqlalchemy_dialect_names_map_to_the_parsers():
    assert [sqlglot_dialect(d) for d in ("postgresql", "postgresql+psycopg2", "mysql", "mariadb", "sqlite")] == [
        "postgres", "postgres", "mysql", "mysql", "sqlite",
    ]
