"""The explain_count job: one number Gradient received traced to its ledger entries and source
rows in a run's metadata, and a partner's month ledger paged with every entry in a CSV file."""

from __future__ import annotations

import csv
import datetime as dt

import dagster as dg
import pandas as pd
import pytest
from cryptography.fernet import Fernet

from assets.explain_count import bounded, csv_safe, markdown_text
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.demo.data import DemoSpec, load_demo_data
from pipeline.demo.run import register_demo_partners
from pipeline.gradient import ledger
from pipeline.resources import engine_for

pytestmark = pytest.mark.slow

VENDOR_KEY = "vk-explain-6c1d02"
OCT_KEY, OCT = "2026-10-01", dt.date(2026, 10, 1)
SPEC = DemoSpec(partners=3, connected_partners=3, companies_per_partner=(3, 4), users_per_company=(2, 5),
                end_month=dt.date(2026, 11, 1), history_months=3)
SETTINGS = ("UTILIZATION_SQL", "SERVICES_SQL", "CONNECTIONS_SQL", "COMPANIES_SQL", "BILLING_TIMEZONE",
            "ALERT_SMTP_URL", "ALERT_WEBHOOK_URL", "GRADIENT_FAILURE_ALERTS")


@pytest.fixture(scope="module")
def delivered_month(tmp_path_factory):
    """The demo data with October 2026 counted and pushed to the emulator."""
    tmp_path = tmp_path_factory.mktemp("explain")
    patch = pytest.MonkeyPatch()
    for name in SETTINGS:
        patch.delenv(name, raising=False)
    fernet_key = Fernet.generate_key().decode()
    with EmulatorServer(VENDOR_KEY) as emulator:
        env = {
            "PRODUCT_DB_URL": f"sqlite:///{tmp_path / 'product.db'}",
            "STATE_DB_URL": f"sqlite:///{tmp_path / 'state.db'}",
            "GRADIENT_BASE_URL": emulator.base_url,
            "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
            "GRADIENT_KEY_ENCRYPTION_KEYS": fernet_key,
            "GBS_DATA_DIR": str(tmp_path / "data"),
            "QUARANTINE_THRESHOLD": "0.5",
        }
        for name, value in env.items():
            patch.setenv(name, value)
        engine_for.cache_clear()
        load_demo_data(engine_for(env["PRODUCT_DB_URL"]), SPEC, encryption_keys=fernet_key)
        from pipeline.definitions import build_defs

        with EmulatorAdmin(emulator.base_url) as admin, dg.instance_for_test() as instance:
            admin.reset()
            register_demo_partners(admin, engine_for(env["PRODUCT_DB_URL"]))
            defs = build_defs()
            pushed = defs.resolve_job_def("monthly_billing").execute_in_process(
                partition_key=OCT_KEY, instance=instance
            )
            assert pushed.success
            yield defs, instance, engine_for(env["STATE_DB_URL"]), tmp_path
            admin.reset()
    engine_for.cache_clear()
    patch.undo()


def explain(defs, instance, **config) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("explain_count").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {"explain_gradient_count": {"config": config}}},
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [output] = [e for e in result.all_events if e.is_successful_output]
    return output.step_output_data.metadata


def table_rows(value) -> list[dict]:
    return [dict(record.data) for record in value.records]


def test_a_delivered_number_is_traced_to_its_ledger_entry_and_source_rows(delivered_month):
    defs, instance, state, _ = delivered_month
    entries = ledger.entries_for(state, OCT)
    delivered = [e for e in entries if e["outcome"] == ledger.DELIVERED and e["value"] > 1]
    assert delivered, "the demo month delivered nothing above 1 user"
    entry = delivered[0]

    result = explain(defs, instance, month="2026-10", partner=entry["partner_id"],
                     company=entry["account_id"], service=entry["sku"])
    assert result.success
    metadata = output_metadata(result)
    assert metadata["gradient_received"].value == entry["value"]
    assert metadata["stored_billable_users"].value == entry["value"]
    assert metadata["source_billable_users"].value == entry["value"]
    ledger_rows = table_rows(metadata["ledger_entries"])
    assert entry["entry_id"] in [r["entry_id"] for r in ledger_rows]
    assert {(r["outcome"], r["value"]) for r in ledger_rows if r["entry_id"] == entry["entry_id"]} == {
        (ledger.DELIVERED, entry["value"])
    }
    source = table_rows(metadata["source_rows"])
    assert len({r["user_id"] for r in source}) == entry["value"]
    assert metadata["source_spans"].value == len(source)
    summary = metadata["explained"].value
    assert f"Gradient received: **{entry['value']}**" in summary
    assert markdown_text(entry["account_id"]) in summary


def test_a_partners_month_ledger_is_paged_with_every_entry_in_a_csv(delivered_month):
    defs, instance, state, tmp_path = delivered_month
    partner = ledger.entries_for(state, OCT)[0]["partner_id"]
    entries = ledger.entries_for(state, OCT, [partner])
    pairs = ledger.month_ledger(state, OCT, [partner])
    assert len(pairs) > 2

    second = explain(defs, instance, month="2026-10", partner=partner, page=2, page_size=2)
    assert second.success
    metadata = output_metadata(second)
    assert (metadata["pairs"].value, metadata["entries"].value, metadata["page"].value) == (
        len(pairs), len(entries), 2
    )
    assert metadata["pages"].value == -(-len(pairs) // 2)
    shown = table_rows(metadata["ledger_page"])
    assert [(r["account"], r["sku"]) for r in shown] == list(
        pairs[["account", "sku"]].iloc[2:4].itertuples(index=False, name=None)
    )
    path = metadata["all_entries_csv"].path
    assert path.startswith(str(tmp_path / "data"))
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["entry_id"]) for r in rows] == [e["entry_id"] for e in entries]

    past = explain(defs, instance, month="2026-10", partner=partner, page=999, page_size=2)
    assert not past.success
    assert "past the last page" in past.failure_data_for_node("explain_gradient_count").error.message


@pytest.mark.parametrize(
    "config, problem",
    [
        ({"month": "2026-13", "partner": "p-001"}, "is not a month; give YYYY-MM"),
        ({"month": "last month", "partner": "p-001"}, "is not a month; give YYYY-MM"),
        ({"month": "2026-10", "partner": "p-001", "company": "c-001-0001"}, "give both company and service"),
        ({"month": "2026-10", "partner": "../p-404"}, "no ledger entry of partner '../p-404'"),
        ({"month": "2026-10", "partner": "p-001", "company": "=cmd", "service": "SAT"}, "nothing in 2026-10"),
    ],
)
def test_wrong_arguments_fail_naming_the_problem(delivered_month, config, problem):
    defs, instance, _, _ = delivered_month
    result = explain(defs, instance, **config)
    assert not result.success
    assert problem in str(result.failure_data_for_node("explain_gradient_count").error.message)


def test_hostile_values_are_escaped_in_markdown_and_csv():
    hostile = "[x](http://evil)<!channel>\r\n=cmd|`rm`*_" + "a" * 10_000
    shown = markdown_text(hostile)
    assert "\n" not in shown and "\r" not in shown and len(shown) < 500
    assert "[x](" not in shown and "<!channel>" not in shown and "\\[x\\]\\(http" in shown
    assert csv_safe("=cmd") == "'=cmd" and csv_safe("@SUM(A1)") == "'@SUM(A1)" and csv_safe("p-001") == "p-001"
    assert csv_safe(5) == 5
    cells = bounded(pd.DataFrame({"user_id": ["u" * 10_000, None], "n": [1, 2]}))
    assert len(cells.user_id[0]) <= 501 and cells.user_id[1] is None and list(cells.n) == [1, 2]
