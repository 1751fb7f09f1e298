"""The product database's tables in the code location's asset graph, parsed from the configured queries."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from assets.source_tables import GROUP, tables_upstream
from tests.test_lineage_sql import VENDOR_QUERY

SQL_SETTINGS = ("UTILIZATION_SQL", "SERVICES_SQL", "CONNECTIONS_SQL", "COMPANIES_SQL", "SYNC_REQUESTS_SQL",
                "PRODUCT_DB_URL", "STATE_DB_URL")


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for name in SQL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GBS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def build():
    from pipeline.definitions import build_defs

    return build_defs()


def column_deps(defs: dg.Definitions, asset: str) -> dict[str, set[tuple[str, str]]]:
    lineage = defs.resolve_asset_graph().get(dg.AssetKey(asset)).metadata["dagster/column_lineage"]
    return {
        column: {(dep.asset_key.to_user_string(), dep.column_name) for dep in deps}
        for column, deps in lineage.deps_by_column.items()
    }


def test_the_reference_schemas_tables_are_upstream_of_the_extract_with_column_lineage(clean_env):
    defs = build()
    graph = defs.resolve_asset_graph()
    assert tables_upstream(defs, "utilization_extract") == ["companies", "partners", "service_enrollments", "users"]
    assert tables_upstream(defs, "gradient_accounts") == ["companies", "gradient_connections", "partners"]
    assert tables_upstream(defs, "gradient_unit_counts") == ["companies", "gradient_connections", "partners"]
    assert tables_upstream(defs, "gradient_services") == ["gradient_connections", "services"]
    table = graph.get(dg.AssetKey(["product_database", "service_enrollments"]))
    assert (table.group_name, table.kinds, table.is_materializable) == (GROUP, {"sqlite"}, False)
    assert table.metadata["dagster/table_name"] == "service_enrollments"

    extract = column_deps(defs, "utilization_extract")
    assert extract["billable"] == {("product_database/users", "is_billable")}
    assert extract["active_to"] == {("product_database/companies", "deleted_at"),
                                    ("product_database/service_enrollments", "ended_at")}
    assert set(extract) == {"partner_id", "company_id", "company_name", "sku", "user_id",
                            "active_from", "active_to", "billable"}
    counts = column_deps(defs, "billable_counts")
    assert set(counts) == {"partner_id", "company_id", "sku", "billable_users"}
    assert counts["sku"] == {("validated_utilization", "sku"), ("product_database/service_enrollments", "sku")}
    assert ("validated_utilization", "user_id") in counts["billable_users"]
    assert ("product_database/users", "is_billable") in counts["billable_users"]
    # the jobs still run only the pipeline's own assets
    monthly = defs.resolve_job_def("monthly_billing").asset_layer.selected_asset_keys
    assert not any(k.path[0] == "product_database" for k in monthly)


def test_a_vendors_own_query_draws_the_vendors_tables(clean_env, monkeypatch):
    query = clean_env / "utilization.sql"
    query.write_text("-- the vendor's own schema\n" + VENDOR_QUERY)
    monkeypatch.setenv("UTILIZATION_SQL", str(query))
    monkeypatch.setenv("PRODUCT_DB_URL", "postgresql+psycopg2://reader@127.0.0.1:5432/product")
    defs = build()
    assert tables_upstream(defs, "utilization_extract") == [
        "Resellers", "billing.seat_assignments", "contracts", "crm.organisations", "staff",
    ]
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["product_database", "billing", "seat_assignments"])).kinds == {"postgres"}
    assert column_deps(defs, "utilization_extract")["user_id"] == {
        ("product_database/billing/seat_assignments", "seat_holder")
    }
    # the reference companies query still draws its tables for the load assets
    assert tables_upstream(defs, "gradient_accounts") == ["companies", "gradient_connections", "partners"]


def test_an_unreadable_query_draws_no_tables_and_the_code_location_still_loads(clean_env, monkeypatch, caplog):
    query = clean_env / "utilization.sql"
    query.write_text("SELECT partner_id, FROM WHERE ((")
    monkeypatch.setenv("UTILIZATION_SQL", str(query))
    with caplog.at_level(logging.WARNING, logger="assets.source_tables"):
        defs = build()
    assert tables_upstream(defs, "utilization_extract") == []
    extract = defs.resolve_asset_graph().get(dg.AssetKey("utilization_extract")).metadata
    assert "dagster/column_lineage" not in extract
    assert extract["source_tables_not_drawn"].startswith("UTILIZATION_SQL: the sqlite SQL parser cannot read")
    assert tables_upstream(defs, "gradient_unit_counts") == ["companies", "gradient_connections", "partners"]
    assert defs.resolve_job_def("monthly_billing") is not None
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert "UTILIZATION_SQL" in warning and str(query) in warning and "utilization_extract" in warning
