"""Preview (dry run): ``gradient-billing-sync preview`` and the ``gradient_preview`` op job
check their arguments, count the month and say what a run would send — and send and write
nothing (no stored count, ledger entry, materialization). The following real push sends
exactly what the preview said. Real CLI, real instance, the emulator over HTTP.
"""

from __future__ import annotations

import re
from datetime import date

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gradient_emulator import API_PREFIX, EmulatorAdmin, EmulatorServer
from pipeline.automation.jobs import TAG_OUTCOME
from pipeline.cli.main import main
from pipeline.demo.run import register_demo_partners
from pipeline.gradient import ledger
from pipeline.gradient.known_accounts import known_accounts
from pipeline.gradient.partner_keys import generate_encryption_key
from pipeline.resources import engine_for
from pipeline.source import product_schema as ps
from pipeline.store.months import load_billable_counts, load_month_computation

pytestmark = pytest.mark.slow

VENDOR_KEY = "preview-vendor-key"
OCT, SEP = date(2026, 10, 1), date(2026, 9, 1)
PARTNERS = ("p-001", "p-002", "p-003")
SEND = re.compile(r"^  send (\S+) '.*' (\S+): (\d+) \(Gradient holds (.+), change ([+-]\d+)\)$")
CREATE = re.compile(r"^  create account (\S+) '(.*)'$")
RENAME = re.compile(r"^  rename account (\S+) '(.*)' -> '(.*)'$")


@pytest.fixture
def env(tmp_path, monkeypatch):
    values = {
        "GBS_DATA_DIR": str(tmp_path / "var"),
        "PRODUCT_DB_URL": f"sqlite:///{tmp_path / 'product.db'}",
        "STATE_DB_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
        "GRADIENT_KEY_ENCRYPTION_KEYS": generate_encryption_key(),
        "QUARANTINE_THRESHOLD": "0.5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster-home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    engine_for.cache_clear()
    yield values
    engine_for.cache_clear()


@pytest.fixture
def gradient(env, monkeypatch):
    """Demo data with three connected partners (p-003 half mapped) and the emulator."""
    seeded = invoke("seed-demo", "--partners", "3", "--companies", "3-4", "--users", "2-5",
                    "--end-month", "2026-11", "--history-months", "3")
    assert seeded.exit_code == 0, seeded.output
    with EmulatorServer(VENDOR_KEY) as server, EmulatorAdmin(server.base_url) as admin:
        assert register_demo_partners(admin, engine_for(env["PRODUCT_DB_URL"])) == list(PARTNERS)
        monkeypatch.setenv("GRADIENT_BASE_URL", server.base_url)
        yield admin


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def said(output: str) -> tuple[dict, dict, dict]:
    """What a preview printed: sends {(partner, account, sku): value}, creates and renames
    {(partner, account): name}."""
    sends, creates, renames = {}, {}, {}
    partner = None
    for line in output.splitlines():
        if re.match(r"^p-\d+: ", line):
            partner = line.split(":")[0]
        elif m := SEND.match(line):
            sends[(partner, m[1], m[2])] = int(m[3])
        elif m := CREATE.match(line):
            creates[(partner, m[1])] = m[2]
        elif m := RENAME.match(line):
            renames[(partner, m[1])] = m[3]
    return sends, creates, renames


def sent(admin: EmulatorAdmin, state: sa.Engine) -> tuple[dict, dict, dict]:
    """What Gradient received: count calls, created and renamed accounts, by partner."""
    sku_of = {sid: sku for sku, sid in ledger.service_ids(state).items()}
    counts, created, renamed = {}, {}, {}
    for r in admin.requests():
        partner = (r["organization_id"] or "").removeprefix("org-")
        if r["method"] == "POST" and r["path"].endswith("/count") and r["status"] != 429:
            service_id = r["path"].removeprefix(f"{API_PREFIX}/service/").removesuffix("/count")
            counts[(partner, r["body"]["accountId"], sku_of[service_id])] = r["body"]["unitCount"]
        elif r["method"] == "POST" and r["path"] == f"{API_PREFIX}/organization/accounts":
            created.update({(partner, a["id"]): a["name"] for a in r["body"]})
        elif r["method"] == "PATCH" and r["path"].startswith(f"{API_PREFIX}/organization/accounts/"):
            renamed[(partner, r["path"].rsplit("/", 1)[1])] = r["body"]["name"]
    return counts, created, renamed


def test_preview_sends_nothing_and_the_push_then_sends_exactly_what_it_said(env, gradient):
    admin = gradient
    state = engine_for(env["STATE_DB_URL"])
    admin.clear_requests()
    first = invoke("preview", "--month", "2026-10", "--max-counts", "1000")
    assert first.exit_code == 0, first.output
    assert admin.requests() == []  # nothing reached Gradient
    assert ledger.entries_for(state, OCT) == []  # and nothing was recorded as sent
    assert "preview of 2026-10 (nothing is sent to Gradient)" in first.output
    sends, creates, renames = said(first.output)
    assert {p for p, _, _ in sends} == set(PARTNERS)
    assert "Gradient holds nothing, change +" in first.output and renames == {}

    pushed = invoke("run", "--month", "2026-10")
    assert pushed.exit_code == 0, pushed.output
    counts, created, renamed = sent(admin, state)
    assert counts == sends
    assert created == creates and renamed == {}
    delivered_or_unmapped = {
        (e["partner_id"], e["account_id"], e["sku"]): e["value"] for e in ledger.entries_for(state, OCT)
    }
    assert delivered_or_unmapped == sends
    assert set(known_accounts(state, "p-001")) == {a for p, a in creates if p == "p-001"}

    # A company is renamed in the product: the next preview says so, and what is left to send
    # for October is only what Gradient answered 404 for (unmapped pairs are sent every run).
    product = engine_for(env["PRODUCT_DB_URL"])
    with product.begin() as conn:
        conn.execute(sa.update(ps.companies).where(ps.companies.c.company_id == "c-001-0001")
                     .values(name="Renamed Dental Group"))
    admin.clear_requests()
    second = invoke("preview", "--month", "2026-10", "--max-counts", "1000")
    assert second.exit_code == 0, second.output
    assert admin.requests() == []
    sends, creates, renames = said(second.output)
    assert renames == {("p-001", "c-001-0001"): "Renamed Dental Group"} and creates == {}
    unmapped = {k: v for k, v in delivered_or_unmapped.items()
                if k in {(e["partner_id"], e["account_id"], e["sku"]) for e in ledger.entries_for(state, OCT)
                         if e["outcome"] == ledger.UNMAPPED}}
    assert unmapped and sends == unmapped
    assert all("unmapped when last sent" in second.output.split(f"{p}:")[1] for p, _, _ in unmapped)
    assert "c-001-0001" not in {a for _, a, _ in sends}

    rerun = invoke("run", "--month", "2026-10")
    assert rerun.exit_code == 0, rerun.output
    counts, created, renamed = sent(admin, state)
    assert renamed == renames and created == {}
    # the pushes after an unmapped last call re-send one delivered value so Gradient rebuilds:
    # everything the preview listed was sent, with its value, and nothing else was changed
    assert {k: v for k, v in counts.items() if k in sends} == sends
    assert all(delivered_or_unmapped[k] == v for k, v in counts.items())


def test_preview_of_an_older_month_says_superseded_and_how_to_force(env, gradient):
    admin = gradient
    assert invoke("run", "--month", "2026-10").exit_code == 0
    admin.clear_requests()
    result = invoke("preview", "--month", "2026-09", "--partner", "p-002")
    assert result.exit_code == 0, result.output
    assert admin.requests() == []
    assert "p-002: superseded" in result.output and "p-001" not in result.output
    assert "superseded: Gradient holds 2026-10" in result.output
    assert "--force-superseded" in result.output

    forced = invoke("preview", "--month", "2026-09", "--partner", "p-002", "--force-superseded",
                    "--max-counts", "1000")
    assert forced.exit_code == 0
    sends, _, _ = said(forced.output)
    assert sends and all(p == "p-002" for p, _, _ in sends)
    assert admin.requests() == []

    unknown = invoke("preview", "--month", "2026-09", "--partner", "p-404")
    assert unknown.exit_code != 0 and "no connected partner 'p-404'" in unknown.output
    assert "Connected: p-001, p-002, p-003" in unknown.output


def test_preview_checks_its_arguments_first_and_writes_nothing(env, gradient):
    """The issue's case: a preview of an unknown partner ran the month-end assets (a successful
    monthly_billing run) before refusing, and explain then pointed at that run's counts."""
    state = engine_for(env["STATE_DB_URL"])
    assert invoke("run", "--month", "2026-10").exit_code == 0
    stored = load_month_computation(state, OCT)
    counts = load_billable_counts(state, OCT)
    entries = ledger.entries_for(state, OCT)
    with dg.DagsterInstance.get() as instance:
        runs_before = len(instance.get_runs())
    for args, error in (
        (("--month", "2026-10", "--partner", "p-999"), "no connected partner 'p-999'"),
        (("--month", "2099-01"), "2099-01 is not closed yet"),
        (("--month", "2001-01"), "2001-01 is before FIRST_BILLING_MONTH"),
    ):
        refused = invoke("preview", *args)
        assert refused.exit_code != 0 and error in refused.output, refused.output
    fine = invoke("preview", "--month", "2026-10", "--partner", "p-001")
    assert fine.exit_code == 0 and "p-001:" in fine.output
    # nothing a later explain or push reads has moved, and no Dagster run was made
    assert load_month_computation(state, OCT) == stored
    assert load_billable_counts(state, OCT).equals(counts)
    assert ledger.entries_for(state, OCT) == entries
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == runs_before


def test_the_preview_job_materializes_nothing_and_shows_the_plan(env, gradient):
    from pipeline.definitions import build_defs

    admin = gradient
    state = engine_for(env["STATE_DB_URL"])
    defs = build_defs()
    preview_job = defs.resolve_job_def("gradient_preview")
    with dg.DagsterInstance.get() as instance:
        admin.clear_requests()
        preview = preview_job.execute_in_process(partition_key="2026-10-01", instance=instance)
        assert preview.success
        assert admin.requests() == []
        assert ledger.entries_for(state, OCT) == [] and known_accounts(state, "p-001") == {}
        assert load_month_computation(state, OCT) is None and load_billable_counts(state, OCT).empty
        assert instance.get_run_by_id(preview.run_id).tags[TAG_OUTCOME] == "preview"
        assert not [e for e in preview.all_events if e.is_step_materialization or e.event_type_value in (
            "ASSET_OBSERVATION", "ASSET_CHECK_EVALUATION")]
        assert not instance.get_materialized_partitions(dg.AssetKey("gradient_unit_counts"))
        (output,) = [e for e in preview.all_events if e.event_type_value == "STEP_OUTPUT"]
        meta = output.step_output_data.metadata
        planned = {
            (r.data["partner"], r.data["account"], r.data["sku"]): r.data["value"]
            for r in meta["planned_counts"].records
        }
        assert meta["counts_to_send"].value == len(planned)

        # an unknown partner fails the run before anything is counted, with the fix
        unknown = preview_job.execute_in_process(
            partition_key="2026-10-01", instance=instance, raise_on_error=False,
            run_config={"ops": {"preview_month_push": {"config": {"partner_ids": ["p-999"]}}}},
        )
        assert not unknown.success
        (failure,) = [e for e in unknown.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "no connected partner 'p-999'" in failure.step_failure_data.user_failure_data.description

        real = defs.resolve_job_def("monthly_billing").execute_in_process(partition_key="2026-10-01", instance=instance)
        assert real.success
        counts, _, _ = sent(admin, state)
        assert counts == planned
