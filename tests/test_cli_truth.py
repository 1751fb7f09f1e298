"""The CLI tells the truth: what failed and why in one line, never an earlier run's numbers as
this run's, a report per month as it finishes, status, check-source, explain's unknown names,
--force-superseded, --version, help on every option, one Dagster instance with `dagster dev`.

Real databases, the real Gradient emulator over HTTP, click's runner (and a subprocess where
output must arrive while the command still runs).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.cli import runs
from pipeline.cli.main import main
from pipeline.demo.data import demo_partner_key
from pipeline.gradient import ledger
from pipeline.gradient.partner_keys import generate_encryption_key
from pipeline.resources import engine_for
from pipeline.source import product_schema as ps
from pipeline.store.months import load_billable_counts

pytestmark = pytest.mark.slow

VENDOR_KEY = "cli-truth-vendor-key-4e1d"
REPO_ROOT = Path(__file__).resolve().parents[1]
OCT, SEP = date(2026, 10, 1), date(2026, 9, 1)
UNREACHABLE = "http://127.0.0.1:9"
SEED = ["seed-demo", "--partners", "3", "--companies", "4-5", "--users", "2-5",
        "--end-month", "2026-11", "--history-months", "4"]


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(VENDOR_KEY) as server:
        yield server


@pytest.fixture
def env(tmp_path, monkeypatch, emulator):
    """Everything the CLI reads, pointed at this test's files; DAGSTER_HOME is the test's own."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    values = {
        "GBS_DATA_DIR": str(tmp_path / "var"),
        "PRODUCT_DB_URL": f"sqlite:///{tmp_path / 'product.db'}",
        "STATE_DB_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
        "GRADIENT_KEY_ENCRYPTION_KEYS": generate_encryption_key(),
        "GRADIENT_BASE_URL": emulator.base_url,
        "QUARANTINE_THRESHOLD": "0.5",
        "DAGSTER_HOME": str(home),
        "STATEMENTS_DIR": str(tmp_path / "statements"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("UTILIZATION_SQL", "SERVICES_SQL", "CONNECTIONS_SQL", "COMPANIES_SQL", "BILLING_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    engine_for.cache_clear()
    yield values
    engine_for.cache_clear()


@pytest.fixture
def admin(emulator):
    with EmulatorAdmin(emulator.base_url) as client:
        client.reset()
        yield client
        client.reset()


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def seeded(env, admin) -> None:
    """Demo data; p-001 and p-002 map everything in Gradient, p-003 all but c-003-0001."""
    assert invoke(*SEED).exit_code == 0
    with engine_for(env["PRODUCT_DB_URL"]).connect() as conn:
        names = conn.execute(
            sa.select(ps.companies.c.company_id, ps.companies.c.name).where(ps.companies.c.partner_id == "p-003")
        ).all()
        services = conn.execute(sa.select(ps.services.c.name)).scalars().all()
    for pid in ("p-001", "p-002", "p-003"):
        admin.register_partner(demo_partner_key(pid), name=pid, organization_id=f"org-{pid}",
                               auto_map_all=pid != "p-003")
    admin.set_psa_companies("org-p-003", [n for cid, n in names if cid != "c-003-0001" and n])
    admin.set_psa_products("org-p-003", list(services))


def run_id_of(output: str, label: str) -> str:
    match = re.search(rf"{label}: FAILED \(run ([0-9a-f-]{{36}})\)", output)
    assert match, output
    return match.group(1)


def section(output: str, label: str) -> str:
    """The lines of one month's report."""
    start = output.index(f"{label}:")
    rest = output[start:].splitlines()
    lines = [rest[0]] + [line for line in _indented(rest[1:])]
    return "\n".join(lines)


def _indented(lines):
    for line in lines:
        if not line.startswith("  "):
            return
        yield line


# =========================================================================== no run needed


def test_version_comes_from_the_package_metadata():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"gradient-billing-sync, version {importlib.metadata.version('gradient-billing-sync')}"


def test_every_option_of_every_command_has_help():
    missing = []

    def walk(command: click.Command, path: str) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[0]}")
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(main, "gradient-billing-sync")
    assert missing == []


def test_the_cli_and_dagster_dev_share_one_instance_whatever_gbs_data_dir_says(tmp_path, monkeypatch):
    monkeypatch.setenv("GBS_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    # the repository's dagster.yaml keeps runs in var/dagster under the repository root
    assert "base_dir: var/dagster" in (REPO_ROOT / "dagster.yaml").read_text()
    assert runs.instance_home() == REPO_ROOT / "var" / "dagster"
    assert str(REPO_ROOT) in runs.where_runs_are() and "elsewhere" not in runs.where_runs_are()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert runs.instance_home() == tmp_path / "home"
    assert f"DAGSTER_HOME={tmp_path / 'home'}" in runs.where_runs_are()


def test_check_source_shows_the_quarantine_and_writes_nothing(env, tmp_path, monkeypatch):
    assert invoke(*SEED).exit_code == 0
    result = invoke("check-source", "--month", "2026-10")
    assert result.exit_code == 0, result.output
    for name in ("services", "connections", "companies"):
        assert re.search(rf"{name}\s+ok: \d+ rows", result.output), result.output
    assert re.search(r"utilization\s+ok: \d+ rows, \d+ valid, \d+ would be quarantined", result.output)
    assert "span_reversed: 1" in result.output  # one of the demo's documented bad rows
    assert "the span ends" in result.output
    assert not (tmp_path / "state.db").exists()

    broken = tmp_path / "utilization.sql"
    broken.write_text("SELECT partner_id, company_id FROM companies WHERE :month_start IS NOT NULL "
                      "AND :month_end IS NOT NULL\n")
    monkeypatch.setenv("UTILIZATION_SQL", str(broken))
    result = invoke("check-source", "--month", "2026-10")
    assert result.exit_code != 0
    assert "BROKEN" in result.output and "contract" in result.output
    assert not (tmp_path / "state.db").exists()


# =========================================================================== runs


def test_a_failed_run_reports_its_cause_in_one_line_and_never_earlier_numbers_as_its_own(env, admin, tmp_path, monkeypatch):
    seeded(env, admin)
    first = invoke("run", "--month", "2026-10")
    assert first.exit_code == 0, first.output
    assert "Gradient p-001: delivered" in first.output
    assert f"partner statements: {Path(env['STATEMENTS_DIR']) / '2026-10'}" in first.output

    monkeypatch.setenv("GRADIENT_BASE_URL", UNREACHABLE)
    failed = invoke("run", "--month", "2026-10")
    assert failed.exit_code == 1
    report = section(failed.output, "2026-10")
    assert f"GRADIENT_BASE_URL='{UNREACHABLE}' is unreachable" in report or (
        f"Gradient is unreachable at {UNREACHABLE}" in report and "GRADIENT_BASE_URL" in report
    ), report
    assert "delivered" not in report  # the first run's deliveries are not this run's
    assert "Traceback" not in failed.output and "Stack Trace" not in failed.output
    assert len(failed.output.strip().splitlines()) <= 6, failed.output
    assert f"DAGSTER_HOME={env['DAGSTER_HOME']}" in report

    verbose = invoke("--verbose", "run", "--month", "2026-10")
    assert verbose.exit_code == 1
    assert "Stack Trace" in verbose.output or "Traceback" in verbose.output

    # the push failed, so the run skipped the statements: the statement command still makes them
    month_dir = Path(env["STATEMENTS_DIR"]) / "2026-10"
    assert month_dir.is_dir()  # the first, successful run made them
    shutil.rmtree(month_dir)
    made = invoke("statement", "--month", "2026-10")
    assert made.exit_code == 0, made.output
    assert sorted(p.name for p in month_dir.iterdir()) == sorted(
        f"{pid}-2026-10.{ext}" for pid in ("p-001", "p-002", "p-003") for ext in ("csv", "html")
    )
    assert str(month_dir / "p-001-2026-10.html") in made.output

    # the month cannot even be read: the stored counts are shown as the earlier run's, by id and date
    monkeypatch.setenv("GRADIENT_BASE_URL", env["GRADIENT_BASE_URL"])
    broken = tmp_path / "broken.sql"
    broken.write_text("SELECT * FROM no_such_table WHERE :month_start IS NOT NULL AND :month_end IS NOT NULL\n")
    monkeypatch.setenv("UTILIZATION_SQL", str(broken))
    unreadable = invoke("run", "--month", "2026-10")
    assert unreadable.exit_code == 1
    report = section(unreadable.output, "2026-10")
    counted_by = load_counted_by(env)
    assert f"not counted by this run; the stored counts are from run {counted_by}" in report, report
    assert run_id_of(unreadable.output, "2026-10") != counted_by
    assert "no_such_table" in report


def load_counted_by(env) -> str:
    from pipeline.store.months import load_month_computation

    return load_month_computation(engine_for(env["STATE_DB_URL"]), OCT).run_id


def test_force_superseded_status_and_explain(env, admin):
    seeded(env, admin)
    assert invoke("run", "--month", "2026-10").exit_code == 0
    older = invoke("run", "--month", "2026-09")
    assert older.exit_code == 0
    assert "superseded" in section(older.output, "2026-09")
    assert "delivered" not in section(older.output, "2026-09")

    forced = invoke("run", "--month", "2026-09", "--force-superseded")
    assert forced.exit_code == 0, forced.output
    assert "Gradient p-001: delivered" in section(forced.output, "2026-09")
    state = engine_for(env["STATE_DB_URL"])
    september = load_billable_counts(state, SEP)
    shown = {(c["organization_id"], c["account_id"]): 0 for c in admin.counts()}
    for c in admin.counts():
        shown[(c["organization_id"], c["account_id"])] += int(c["unit_count"])
    p1 = september[september.partner_id == "p-001"]
    assert sum(v for (o, _), v in shown.items() if o == "org-p-001") == int(p1.billable_users.sum())

    status = invoke("status")
    assert status.exit_code == 0, status.output
    rows = {line.split()[0]: line for line in status.output.splitlines()[1:] if line.strip()}
    assert set(rows) == {"p-001", "p-002", "p-003"}
    assert "connected" in rows["p-001"] and "2026-10" in rows["p-002"]
    unmapped = {e["account_id"] for e in ledger.entries_for(state, OCT, ["p-003"]) if e["outcome"] == "unmapped"}
    assert unmapped == {"c-003-0001"}
    detail = invoke("status", "--partner", "p-003")
    assert detail.exit_code == 0
    assert re.search(r"p-003\s+connected\s+\S+\s+2026-\d\d\s+1\s", detail.output), detail.output
    assert re.search(r"^\s+c-003-0001\s", detail.output, re.M), detail.output  # the unmapped table
    assert invoke("status", "--partner", "p-404").exit_code != 0

    pair = september.iloc[0]
    known = invoke("explain", "--month", "2026-09", "--partner", pair.partner_id, "--company", pair.company_id,
                   "--sku", pair.sku)
    assert known.exit_code == 0, known.output
    assert f"stored billable users: {int(pair.billable_users)}" in known.output
    for args, expected in (
        (("--partner", "p-999", "--company", pair.company_id, "--sku", pair.sku), "unknown partner 'p-999'"),
        (("--partner", pair.partner_id, "--company", "c-nope", "--sku", pair.sku), "unknown company 'c-nope'"),
        (("--partner", pair.partner_id, "--company", pair.company_id, "--sku", "NOPE"), "unknown service 'NOPE'"),
    ):
        result = invoke("explain", "--month", "2026-09", *args)
        assert result.exit_code != 0
        assert expected in result.output
        assert "stored billable users" not in result.output


def test_each_month_is_reported_as_it_finishes_and_its_run_is_in_the_instance(env, admin):
    seeded(env, admin)
    command = [sys.executable, "-c", "from pipeline.cli import main; main()", "backfill", "--from", "2026-09",
               "--to", "2026-10"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    arrivals = {}
    lines = []
    for line in process.stdout:
        lines.append(line)
        for label in ("2026-09", "2026-10"):
            if line.startswith(f"{label}:") and label not in arrivals:
                arrivals[label] = datetime.now(timezone.utc)
    assert process.wait() == 0, "".join(lines)
    assert "\r" not in "".join(lines)  # no progress bar when stdout is not a terminal
    assert "\x1b" not in "".join(lines)  # and no escape codes

    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.instance.ref import InstanceRef

    with DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"])) as instance:
        finished = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
        by_month = {r.tags.get("dagster/partition"): r for r in finished}
        assert set(by_month) >= {"2026-09-01", "2026-10-01"}
        october = instance.get_run_record_by_id(by_month["2026-10-01"].run_id)
    # no daemon on this instance: run here, tagged as a backfill of its month
    for key in ("2026-09-01", "2026-10-01"):
        tags = by_month[key].tags
        assert (tags["gbs/trigger"], tags["gbs/month"], tags["gbs/partner"]) == ("backfill", key[:7], "all")
    # September's report was on stdout before October's run had even finished
    assert arrivals["2026-09"].timestamp() < october.end_time


def test_an_unreachable_database_is_one_line_naming_the_setting(env, monkeypatch):
    monkeypatch.setenv("PRODUCT_DB_URL", "postgresql+psycopg2://billing:pw-9f2c@127.0.0.1:1/product")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "unreachable" in line and "PRODUCT_DB_URL" in line and "--verbose" in line
    assert "pw-9f2c" not in result.output
    verbose = CliRunner().invoke(main, ["--verbose", "status"])
    assert verbose.exit_code == 1 and verbose.exception is not None  # the trace is not swallowed


def test_seeding_reports_its_progress_company_by_company(sqlite_url):
    """Long seeds show a progress bar on a terminal: the generator reports each company."""
    import sqlalchemy as sa

    from pipeline.demo.data import DemoSpec, load_demo_data

    seen: list[tuple[int, int]] = []
    summary = load_demo_data(sa.create_engine(sqlite_url), DemoSpec(partners=3), progress=lambda d, t: seen.append((d, t)))
    assert seen, "no progress was reported"
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))
    totals = {t for _, t in seen}
    assert len(totals) == 1 and 0 < totals.pop() <= summary.companies
    assert seen[-1][0] == seen[-1][1], "the progress must reach its total"
