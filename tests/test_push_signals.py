"""Push outcomes as Dagster signals: the WARN checks of gradient_unit_counts (superseded,
unmapped, failed), evaluated per month; a month materialized only when Gradient holds it;
typed, bounded per-partner tables and numeric metadata, the ``gbs/outcome`` and count run tags,
the gradient_ledger asset, the jobs' default tags and launchpad config, and the configurable
first partition. Real monthly_billing job, real instance, the Gradient emulator over HTTP.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

import dagster as dg
import pytest
from cryptography.fernet import Fernet
from dagster._core.definitions.metadata.metadata_value import IntMetadataValue, TableMetadataValue
from dagster._core.event_api import PartitionKeyFilter

from assets import gradient_load as gl
from assets import month_end as me
from assets import push_signals as ps
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline import partitions
from pipeline.automation.jobs import TAG_OUTCOME, TAG_TRIGGER, load_run_config, monthly_billing_job, run_tags
from pipeline.demo.data import DemoSpec, load_demo_data
from pipeline.demo.run import register_demo_partners
from pipeline.gradient import ledger
from pipeline.resources import (
    BillingRules,
    GradientResource,
    PartnerSources,
    ProductDatabase,
    StateDatabase,
    engine_for,
)
from pipeline.store.months import load_billable_counts

pytestmark = pytest.mark.slow

VENDOR_KEY = "vk-signals-5e1f"
OCT_KEY, SEP_KEY = "2026-10-01", "2026-09-01"
OCT, SEP = date(2026, 10, 1), date(2026, 9, 1)
SPEC = DemoSpec(
    partners=4,
    connected_partners=3,
    companies_per_partner=(3, 5),
    users_per_company=(2, 6),
    end_month=date(2026, 11, 1),
    history_months=4,
)
ASSETS = [
    me.utilization_extract, me.validated_utilization, me.billable_counts,
    gl.gradient_services, gl.gradient_accounts, gl.gradient_unit_counts,
]


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(VENDOR_KEY) as server:
        yield server


class Billing:
    """Demo product DB (p-003 half mapped in Gradient), state DB, emulator, one instance."""

    def __init__(self, tmp_path, emulator: EmulatorServer, admin: EmulatorAdmin):
        self.product_url = f"sqlite:///{tmp_path / 'product.db'}"
        self.state_url = f"sqlite:///{tmp_path / 'state.db'}"
        self.fernet_key = Fernet.generate_key().decode()
        load_demo_data(engine_for(self.product_url), SPEC, encryption_keys=self.fernet_key)
        register_demo_partners(admin, engine_for(self.product_url))
        self.emulator, self.admin = emulator, admin
        self.instance = dg.DagsterInstance.ephemeral()
        self.defs = dg.Definitions(assets=ASSETS, jobs=[monthly_billing_job], resources=self.resources())

    def resources(self) -> dict:
        return {
            "product_db": ProductDatabase(url=self.product_url),
            "state_db": StateDatabase(url=self.state_url),
            "billing_rules": BillingRules(quarantine_threshold=0.5),
            "partner_sources": PartnerSources(encryption_keys=self.fernet_key),
            "gradient": GradientResource(
                base_url=self.emulator.base_url, vendor_api_key=VENDOR_KEY,
                backoff_initial_seconds=0.01, backoff_max_seconds=0.05, max_requests_per_second=60,
            ),
        }

    @property
    def state(self):
        return StateDatabase(url=self.state_url).engine()

    def run(self, partition: str, run_config: dict | None = None, tags: dict | None = None):
        return self.defs.resolve_job_def("monthly_billing").execute_in_process(
            partition_key=partition, instance=self.instance, run_config=run_config, tags=tags,
            raise_on_error=False,
        )

    def tags(self, result) -> dict[str, str]:
        return self.instance.get_run_by_id(result.run_id).tags


@pytest.fixture
def billing(tmp_path, emulator):
    with EmulatorAdmin(emulator.base_url) as admin:
        admin.reset()
        yield Billing(tmp_path, emulator, admin)
        admin.reset()


def checks(result, asset: str = "gradient_unit_counts") -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.asset_key.path[-1] == asset
    }


def metadata(result, asset: str, event_type: str = "ASSET_MATERIALIZATION") -> dict:
    for event in result.all_events:
        if event.event_type_value == event_type:
            mat = event.event_specific_data.materialization if event_type == "ASSET_MATERIALIZATION" \
                else event.event_specific_data.asset_observation
            if mat.asset_key.path[-1] == asset:
                return dict(mat.metadata)
    raise AssertionError(f"{asset} has no {event_type} in run {result.run_id}")


def check_status(instance: dg.DagsterInstance, check: str, partition: str) -> str | None:
    """The status the instance holds for a check of gradient_unit_counts in one month."""
    key = dg.AssetCheckKey(dg.AssetKey("gradient_unit_counts"), check)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [key], partition_filter=PartitionKeyFilter(key=partition)
    ).get(key)
    return record.status.value if record else None


def held_months(instance: dg.DagsterInstance) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey("gradient_unit_counts")))


def rows(value: TableMetadataValue) -> list[dict]:
    return [dict(r.data) for r in value.records]


def test_a_superseded_month_fails_its_warn_check_and_says_how_to_force(billing):
    october = billing.run(OCT_KEY)
    assert october.success
    assert billing.tags(october)[TAG_OUTCOME] == "delivered_with_unmapped"  # p-003 is half mapped
    assert checks(october)[ps.SUPERSEDED_CHECK].passed

    september = billing.run(SEP_KEY)
    assert september.success  # superseded is not a failure: the step succeeds, the check warns
    assert billing.tags(september)[TAG_OUTCOME] == "superseded"
    check = checks(september)[ps.SUPERSEDED_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and not check.blocking
    for partner in ("p-001", "p-002", "p-003"):
        assert f"{partner}: Gradient holds 2026-10" in check.description
    assert "force_superseded: true" in check.description
    assert "gradient-billing-sync run --month 2026-09 --force-superseded" in check.description
    assert check.metadata["newer_month_held"].value == {p: "2026-10" for p in ("p-001", "p-002", "p-003")}

    # the month is not claimed: no materialization, an observation with the same metadata
    assert held_months(billing.instance) == {OCT_KEY}
    assert check.partition == SEP_KEY
    meta = metadata(september, "gradient_unit_counts", "ASSET_OBSERVATION")
    assert meta["claimed"].value is False and meta["outcome"].value == "superseded"
    table = meta["per_partner"]
    assert isinstance(table, TableMetadataValue)
    assert [c.name for c in table.schema.columns][:10] == gl.PARTNER_COLUMNS[:10]
    assert {c.name: c.type for c in table.schema.columns}["superseded"] == "int"
    shown = {r["partner"]: r for r in rows(table)}
    assert {p: r["status"] for p, r in shown.items()} == {p: "superseded" for p in ("p-001", "p-002", "p-003")}
    superseded = len(ledger.entries_for(billing.state, SEP))
    assert sum(r["superseded"] for r in shown.values()) == superseded
    for name in ("delivered", "unmapped", "failed", "superseded", "requests_sent", "retries"):
        assert isinstance(meta[name], IntMetadataValue), name
    assert meta["superseded"].value == superseded and meta["delivered"].value == 0
    assert meta["gradient"] == dg.MetadataValue.url(billing.emulator.base_url)


def test_unmapped_pairs_are_listed_by_partner_account_and_name(billing):
    october = billing.run(OCT_KEY)
    assert october.success
    unmapped = [e for e in ledger.entries_for(billing.state, OCT) if e["outcome"] == ledger.UNMAPPED]
    assert unmapped and {e["partner_id"] for e in unmapped} == {"p-003"}  # the half-mapped partner
    check = checks(october)[ps.UNMAPPED_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    names = {
        (r.partner_id, r.company_id): r.company_name for r in load_billable_counts(billing.state, OCT).itertuples()
    }
    assert f"{len(unmapped)} pair(s) of 2026-10 unmapped" in check.description
    for e in unmapped[: ps.DESCRIBED]:
        assert f"p-003 {e['account_id']} {names[('p-003', e['account_id'])]!r} {e['sku']}" in check.description
    assert check.metadata["pairs"].value == len(unmapped)
    listed = rows(check.metadata["listed"])
    assert {(r["partner"], r["account"], r["account_name"], r["sku"]) for r in listed} == {
        (e["partner_id"], e["account_id"], names[(e["partner_id"], e["account_id"])], e["sku"]) for e in unmapped
    }
    # unmapped is not a failure of the month, but not plain delivered either: the month is
    # materialized (Gradient holds it), flagged in its outcome, tags and table
    assert checks(october)[ps.FAILED_CHECK].passed
    tags = billing.tags(october)
    assert tags[TAG_OUTCOME] == "delivered_with_unmapped"
    # pairs Gradient acknowledged (a pair re-sent so Gradient rebuilds counts once)
    delivered = len({(e["partner_id"], e["account_id"], e["sku"])
                     for e in ledger.entries_for(billing.state, OCT) if e["outcome"] == ledger.DELIVERED})
    assert (tags["gbs/delivered"], tags["gbs/unmapped"]) == (str(delivered), str(len(unmapped)))
    assert "gbs/failed" not in tags
    assert held_months(billing.instance) == {OCT_KEY}
    meta = metadata(october, "gradient_unit_counts")
    assert meta["outcome"].value == "delivered_with_unmapped"
    shown = {r["partner"]: r for r in rows(meta["per_partner"])}
    assert shown["p-003"]["unmapped"] == len(unmapped) and shown["p-003"]["status"] == "delivered_with_unmapped"
    assert [r["partner"] for r in rows(meta["per_partner"])][0] == "p-003"  # what needs attention first


def test_failed_pairs_are_reported_even_though_the_step_fails(billing):
    billing.admin.revoke_partner("org-p-001")  # Gradient rejects p-001's key: its counts fail
    result = billing.run(OCT_KEY)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert {e.step_key for e in failures} == {"gradient_unit_counts"}
    failed = [e for e in ledger.entries_for(billing.state, OCT) if e["outcome"] == ledger.FAILED]
    assert failed and {e["partner_id"] for e in failed} == {"p-001"}

    check = checks(result)[ps.FAILED_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert f"{len(failed)} pair(s) of 2026-10 failed" in check.description and "p-001" in check.description
    assert check.metadata["pairs"].value == len(failed)
    # the record in the instance is what the UI shows for the check
    record = billing.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("gradient_unit_counts"), ps.FAILED_CHECK)]
    )[dg.AssetCheckKey(dg.AssetKey("gradient_unit_counts"), ps.FAILED_CHECK)]
    assert record.run_id == result.run_id and record.status.value == "FAILED"
    # p-002 and p-003 were delivered: the month is partial; the failure carries the table
    assert billing.tags(result)[TAG_OUTCOME] == "partial"
    step_failure_meta = failures[0].event_specific_data.user_failure_data.metadata
    shown = {r["partner"]: r for r in rows(step_failure_meta["per_partner"])}
    assert shown["p-001"]["status"] == "failed" and shown["p-001"]["error"]
    assert shown["p-002"]["status"] == "delivered"


def test_the_ledger_asset_shows_what_was_sent_what_gradient_answered_and_when(billing):
    before = datetime.now(timezone.utc)
    october = billing.run(OCT_KEY)
    assert october.success
    meta = metadata(october, "gradient_ledger")
    # the newest entry per pair (a pair is sent twice when the last call needed a rebuild)
    entries = list({(e["partner_id"], e["account_id"], e["sku"]): e for e in ledger.entries_for(billing.state, OCT)}.values())
    shown = rows(meta["entries"])
    assert len(shown) == meta["dagster/row_count"].value == len(entries)
    assert {(r["partner"], r["account"], r["sku"]): (r["value"], r["outcome"], r["http_status"]) for r in shown} == {
        (e["partner_id"], e["account_id"], e["sku"]): (e["value"], e["outcome"], e["http_status"]) for e in entries
    }
    assert {r["http_status"] for r in shown} == {201, 404}
    assert all(datetime.fromisoformat(r["recorded_at"]) >= before.replace(microsecond=0) for r in shown)
    totals = {r["outcome"]: (r["pairs"], r["units"]) for r in rows(meta["totals"])}
    for outcome, (pairs, units) in totals.items():
        own = [e for e in entries if e["outcome"] == outcome]
        assert (pairs, units) == (len(own), sum(e["value"] for e in own))
    per_partner = {r["partner"]: r for r in rows(meta["per_partner"])}
    for partner, row in per_partner.items():
        own = [e for e in entries if e["partner_id"] == partner]
        assert row["delivered"] == sum(1 for e in own if e["outcome"] == ledger.DELIVERED)
        assert row["units_delivered"] == sum(e["value"] for e in own if e["outcome"] == ledger.DELIVERED)
    assert next(iter(per_partner)) == "p-003"  # unmapped pairs first
    assert meta["delivered"].value == sum(1 for e in entries if e["outcome"] == ledger.DELIVERED)
    assert meta["last_recorded_at"].value >= before.timestamp() - 1

    # September is superseded: not claimed in gradient_unit_counts, yet the ledger of
    # September is written and shows it
    september = billing.run(SEP_KEY)
    assert september.success
    sep_meta = metadata(september, "gradient_ledger")
    assert {r["outcome"] for r in rows(sep_meta["entries"])} == {ledger.SUPERSEDED}
    assert {r["http_status"] for r in rows(sep_meta["entries"])} == {None}


def test_runs_from_the_ui_carry_gbs_tags_and_the_launchpad_is_prefilled(billing):
    job = billing.defs.resolve_job_def("monthly_billing")
    assert job.run_tags[TAG_TRIGGER] == "ui"
    prefilled = job.partitioned_config.get_run_config_for_partition_key(OCT_KEY)
    for op in ("gradient_accounts", "gradient_unit_counts"):
        assert prefilled["ops"][op]["config"] == {"partner_ids": [], "force_superseded": False}
    assert "gradient_services" not in prefilled["ops"]  # no preview flag: previews are their own job
    fields = gl.GradientLoadConfig.model_fields
    assert all(fields[name].description for name in ("partner_ids", "force_superseded"))

    manual = billing.run(OCT_KEY)
    assert billing.tags(manual)[TAG_TRIGGER] == "ui"
    scheduled = billing.run(OCT_KEY, tags=run_tags("schedule"))
    assert billing.tags(scheduled)[TAG_TRIGGER] == "schedule"


def test_a_materialization_launched_from_the_asset_graph_is_tagged_too(billing):
    result = dg.materialize(ASSETS, partition_key=OCT_KEY, resources=billing.resources(), instance=billing.instance)
    assert result.success
    tags = billing.tags(result)
    assert (tags[TAG_TRIGGER], tags["gbs/partner"], tags[TAG_OUTCOME]) == ("ui", "all", "delivered_with_unmapped")


def test_a_months_red_check_stays_red_whatever_runs_after_it(billing):
    """The issue's case: every_pair_mapped failed for one month, a backfill of other months
    turned it green. Now each result belongs to its month, and judges the month's ledger."""
    october = billing.run(OCT_KEY)
    assert october.success
    assert check_status(billing.instance, ps.UNMAPPED_CHECK, OCT_KEY) == "FAILED"

    september = billing.run(SEP_KEY)  # superseded, nothing unmapped in it
    assert september.success and checks(september)[ps.UNMAPPED_CHECK].passed
    assert check_status(billing.instance, ps.UNMAPPED_CHECK, SEP_KEY) == "SUCCEEDED"
    assert check_status(billing.instance, ps.SUPERSEDED_CHECK, SEP_KEY) == "FAILED"
    assert check_status(billing.instance, ps.UNMAPPED_CHECK, OCT_KEY) == "FAILED"  # still red
    assert check_status(billing.instance, ps.SUPERSEDED_CHECK, OCT_KEY) == "SUCCEEDED"

    # a push of p-001 alone in October sends nothing of p-003: October's red stays red, and
    # the run claims nothing (an observation, the month keeps its materialization)
    only_p001 = billing.run(OCT_KEY, run_config=load_run_config("monthly_billing", ["p-001"]))
    assert only_p001.success
    assert not checks(only_p001)[ps.UNMAPPED_CHECK].passed
    assert check_status(billing.instance, ps.UNMAPPED_CHECK, OCT_KEY) == "FAILED"
    assert metadata(only_p001, "gradient_unit_counts", "ASSET_OBSERVATION")["claimed"].value is False
    assert "gradient_unit_counts" not in {
        e.asset_key.path[-1] for e in only_p001.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    assert held_months(billing.instance) == {OCT_KEY}

    # p-003 maps everything in Gradient; a re-run of October delivers it: green for October only
    for entry in ledger.entries_for(billing.state, OCT):
        if entry["outcome"] == ledger.UNMAPPED:
            billing.admin.map_account("org-p-003", entry["account_id"])
    fixed = billing.run(OCT_KEY)
    assert fixed.success and billing.tags(fixed)[TAG_OUTCOME] == "delivered"
    assert check_status(billing.instance, ps.UNMAPPED_CHECK, OCT_KEY) == "SUCCEEDED"
    assert check_status(billing.instance, ps.SUPERSEDED_CHECK, SEP_KEY) == "FAILED"


def test_month_end_checks_are_per_month_too(billing):
    october = billing.run(OCT_KEY)
    assert october.success
    for asset, check in (("utilization_extract", "source_contract"),
                         ("validated_utilization", "quarantine_within_threshold"),
                         ("gradient_services", gl.DUPLICATE_SERVICES_CHECK)):
        key = dg.AssetCheckKey(dg.AssetKey(asset), check)
        record = billing.instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [key], partition_filter=PartitionKeyFilter(key=OCT_KEY)
        )[key]
        assert record.partition == OCT_KEY and record.status.value == "SUCCEEDED", (asset, check)


def test_the_first_partition_is_configurable_and_defaults_to_a_year_back(monkeypatch):
    # the embedded demo's default: a deployment (PRODUCT_DB_URL set) must set it
    monkeypatch.delenv("FIRST_BILLING_MONTH", raising=False)
    monkeypatch.delenv("PRODUCT_DB_URL", raising=False)
    now = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
    assert partitions.first_billing_month(now) == date(2025, 11, 1)
    monkeypatch.setenv("FIRST_BILLING_MONTH", "2025-06")
    assert partitions.first_billing_month(now) == date(2025, 6, 1)
    monkeypatch.setenv("FIRST_BILLING_MONTH", "June 2025")
    with pytest.raises(ValueError, match="FIRST_BILLING_MONTH='June 2025' is not a month; use YYYY-MM"):
        partitions.first_billing_month(now)


def test_month_end_metadata_has_its_types_and_shares_read_as_percent(billing):
    from dagster._core.definitions.metadata.metadata_value import (
        FloatMetadataValue,
        PathMetadataValue,
        TextMetadataValue,
        TimestampMetadataValue,
    )

    october = billing.run(OCT_KEY)
    assert october.success
    extract = metadata(october, "utilization_extract")
    assert isinstance(extract["window_start"], TimestampMetadataValue)
    assert extract["window_start"].value == datetime(2026, 10, 1, 4, tzinfo=timezone.utc).timestamp()  # NY midnight
    assert isinstance(extract["query_file"], PathMetadataValue)
    validated = metadata(october, "validated_utilization")
    assert isinstance(validated["quarantined_percent"], FloatMetadataValue)
    share = validated["rows_quarantined"].value / validated["rows_in"].value
    assert validated["quarantined_percent"].value == round(100 * share, 2)
    assert isinstance(validated["quarantine_sample"], TableMetadataValue)
    check = checks(october, "validated_utilization")["quarantine_within_threshold"]
    assert check.metadata["threshold"] == TextMetadataValue("50.00%")  # the fixture's 0.5
    assert check.metadata["quarantined"] == TextMetadataValue(f"{share:.2%}")
    assert check.metadata["threshold_percent"].value == 50.0
    assert isinstance(metadata(october, "billable_counts")["counts_preview"], TableMetadataValue)


def _month_of(partner_count: int) -> tuple[dict, list, dict]:
    """The push metadata, check results and ledger metadata of a month with ``partner_count``
    partners of 10 pairs each (every 7th partner failed, every 5th unmapped, every 3rd
    superseded), with long hostile names and errors, as the push step builds them."""
    import pandas as pd

    partners = [f"p-{i:05d}" for i in range(partner_count)]
    status = {p: ("failed" if i % 7 == 0 else "delivered_with_unmapped" if i % 5 == 0
                  else "superseded" if i % 3 == 0 else "delivered") for i, p in enumerate(partners)}
    outcome_of = {"failed": ledger.FAILED, "delivered_with_unmapped": ledger.UNMAPPED,
                  "superseded": ledger.SUPERSEDED, "delivered": ledger.DELIVERED}
    standing = pd.DataFrame(
        [
            {"partner": p, "account": f"c-{p}-{j}", "sku": "SAT", "value": j + 1,
             "outcome": outcome_of[status[p]] if j < 3 else ledger.DELIVERED,
             "http_status": 201, "detail": "=cmd|' /C calc'!A0 " * 40 if status[p] == "failed" else "",
             "recorded_at": datetime(2026, 11, 2, tzinfo=timezone.utc), "run_id": "r" * 36}
            for p in partners for j in range(10)
        ]
    )
    table = pd.DataFrame(
        [
            {"partner": p, "delivered": 7, "unmapped": 3 * (status[p] == "delivered_with_unmapped"),
             "failed": 3 * (status[p] == "failed"), "superseded": 3 * (status[p] == "superseded"), "skipped": 0,
             "accounts_created": 10, "accounts_renamed": 0, "status": status[p],
             "error": "<!channel> " * 50 if status[p] == "failed" else "", "outcome": "delivered 7"}
            for p in partners
        ],
        columns=gl.PARTNER_COLUMNS,
    )
    totals = {o: int((standing.outcome == o).sum()) for o in ledger.OUTCOMES}
    push = ps.push_metadata("2026-10", table, totals, {"requests_sent": 1, "retries": 0}, "partial")
    names = {(r.partner, r.account): "N" * 10_000 for r in standing.itertuples()}
    checks_ = ps.month_check_results(OCT, standing, names, {p: OCT for p in partners[:ps.LISTED]})
    ledger_meta = gl.gradient_ledger.ledger_result("gradient_ledger", "2026-10", standing).metadata
    return push, checks_, ledger_meta


def _event_bytes(push: dict, checks_: list, ledger_meta: dict) -> dict[str, int]:
    """Serialized size of each event the push step writes to the event log."""
    from dagster._serdes import serialize_value

    sizes = {
        "gradient_unit_counts": len(serialize_value(dg.AssetMaterialization("gradient_unit_counts", metadata=push))),
        "gradient_ledger": len(serialize_value(dg.AssetMaterialization("gradient_ledger", metadata=ledger_meta))),
    }
    for result in checks_:
        evaluation = dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("gradient_unit_counts"), check_name=result.check_name, passed=result.passed,
            metadata=result.metadata, description=result.description, severity=result.severity,
        )
        sizes[result.check_name] = len(serialize_value(evaluation))
    return sizes


def test_no_event_of_a_month_grows_with_its_partners():
    """Issue 21: per-partner tables are the rows that matter most plus totals; 2,000 partners'
    worth of report rows makes events no bigger than 200 partners' (measured serialized)."""
    small = _event_bytes(*_month_of(200))
    large = _event_bytes(*_month_of(2000))
    print({name: (small[name], large[name]) for name in large})
    for name, size in large.items():
        assert size <= 48_000, (name, size)
        assert size <= small[name] * 1.25 + 1000, (name, small[name], size)
    push, checks_, ledger_meta = _month_of(2000)
    shown = rows(push["per_partner"])
    assert len(shown) == 50 and push["partners_not_shown"].value == 1950
    assert {r["status"] for r in shown} == {"failed"}  # failures first
    assert push["partners_by_status"].value["failed"] == len([i for i in range(2000) if i % 7 == 0])
    assert rows(ledger_meta["entries"])[0]["outcome"] == ledger.FAILED
    assert ledger_meta["entries_not_shown"] == 20_000 - gl.gradient_ledger.SHOWN_ENTRIES
    assert ledger_meta["dagster/row_count"] == 20_000
