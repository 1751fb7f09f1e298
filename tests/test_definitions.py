"""The code location loads the way Dagster's own tooling loads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_dagster_definitions_validate_passes(tmp_path):
    """`dagster definitions validate` (what `dagster dev` and the daemon do on load)."""
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "GBS_DATA_DIR": str(tmp_path)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Validation successful for code location gradient_billing_sync" in output


def test_dg_check_defs_passes(tmp_path):
    """`dg check defs` (dagster-dg-cli, what `dg dev` loads): pyproject.toml's [tool.dg] project."""
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "dg"), "check", "defs", "--verbose"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": str(bin_dir),
            "HOME": str(tmp_path),
            "GBS_DATA_DIR": str(tmp_path),
            "DAGSTER_HOME": str(tmp_path),
            "VIRTUAL_ENV": str(bin_dir.parent),
        },
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All definitions loaded successfully" in output, output


def test_every_job_sensor_and_schedule_is_in_the_code_location():
    from pipeline.definitions import defs

    repo = defs.get_repository_def()
    assert {j.name for j in repo.get_all_jobs()} >= {
        "monthly_billing", "gradient_load", "account_sync", "partner_disconnect", "statements", "explain_count",
    }
    assert {s.name for s in repo.sensor_defs} == {
        "partner_connected_sensor", "partner_disconnected_sensor", "sync_requests_sensor",
        "missed_or_late_months_sensor", "billing_failure_sensor", "statements_after_failed_push_sensor",
    }
    assert [s.name for s in repo.schedule_defs] == ["monthly_billing_schedule"]
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.materializable_asset_keys}
    assert keys == {
        "utilization_extract", "validated_utilization", "billable_counts",
        "gradient_services", "gradient_accounts", "gradient_unit_counts", "gradient_ledger",
        "partner_statements",
    }
    # the reference schema's tables, drawn from the queries (assets/source_tables.py), never materialized
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} - keys == {
        f"product_database/{table}"
        for table in ("companies", "gradient_connections", "partners", "service_enrollments", "services", "users")
    }
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"{key.to_user_string()} has no description"
