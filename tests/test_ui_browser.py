"""The Dagster UI as an operator sees it, in a real browser: November pushed (p-003 half mapped
in Gradient: delivered with unmapped pairs), then a backfill of two superseded months (September,
October), then a preview of an unknown partner; ``dagster-webserver`` serves that instance and
headless Chromium (Debian's /usr/bin/chromium driven by Playwright) opens the asset graph, the
Partitions tab, November's materialization, the checks and the ledger. November's
``every_pair_mapped`` is still failing for November, the superseded months are not materialized
like November, and the preview left no materialization. Screenshots: ``var/test-artifacts/ui/``.

Chromium comes from the system (``apt-get install chromium``; ``.ci/run`` installs it when
missing); Playwright's own browser download is never used. Under ``CI=true`` a browser that
cannot run fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from dagster._core.instance.ref import InstanceRef

from dagster._core.event_api import PartitionKeyFilter

from assets import gradient_load as gl
from assets import load_preview
from assets import month_end as me
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.automation.jobs import TAG_OUTCOME, monthly_billing_job, run_tags
from pipeline.billing import statements
from tests import hostile
from pipeline.demo.data import DemoSpec, load_demo_data
from pipeline.demo.run import register_demo_partners
from pipeline.source import product_schema as ps
from pipeline.resources import BillingRules, GradientResource, PartnerSources, ProductDatabase, StateDatabase, engine_for

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "ui"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VENDOR_KEY = "vk-ui-browser"
WEBSERVER_TIMEOUT = 240
UI_TIMEOUT_MS = 60_000
SPEC = DemoSpec(
    partners=3, connected_partners=3, companies_per_partner=(2, 3), users_per_company=(2, 4),
    end_month=date(2026, 11, 1), history_months=3,
)


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason} — CI must run the browser test (.ci/run installs chromium)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


UNIT_COUNTS = dg.AssetKey("gradient_unit_counts")
NOV = "2026-11-01"


def check_status(instance: dg.DagsterInstance, name: str, partition: str) -> str | None:
    key = dg.AssetCheckKey(UNIT_COUNTS, name)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [key], partition_filter=PartitionKeyFilter(key=partition)
    ).get(key)
    return record.status.value if record else None


@pytest.fixture
def superseded_instance(tmp_path, monkeypatch):
    """November delivered (with p-003's unmapped pairs), a backfill of September and October
    (superseded), a preview of an unknown partner, on a Dagster instance in ``tmp_path``;
    yields (DAGSTER_HOME, the environment the webserver needs)."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    fernet_key = Fernet.generate_key().decode()
    env = {
        "DAGSTER_HOME": str(home),
        "GBS_DATA_DIR": str(tmp_path / "var"),
        "PRODUCT_DB_URL": f"sqlite:///{tmp_path / 'product.db'}",
        "STATE_DB_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
        "GRADIENT_KEY_ENCRYPTION_KEYS": fernet_key,
        "QUARANTINE_THRESHOLD": "0.5",
        "FIRST_BILLING_MONTH": "2026-01",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    load_demo_data(engine_for(env["PRODUCT_DB_URL"]), SPEC, encryption_keys=fernet_key)
    with EmulatorServer(VENDOR_KEY) as server, EmulatorAdmin(server.base_url) as admin:
        register_demo_partners(admin, engine_for(env["PRODUCT_DB_URL"]))
        # p-003 maps every company but not one service: those pairs come back unmapped
        with engine_for(env["PRODUCT_DB_URL"]).connect() as conn:
            names = conn.execute(sa.select(ps.companies.c.name).where(ps.companies.c.partner_id == "p-003")).scalars()
            admin.set_psa_companies("org-p-003", [n for n in names if n])
            services = conn.execute(sa.select(ps.services.c.name).order_by(ps.services.c.sku)).scalars().all()
        admin.set_psa_products("org-p-003", services[1:])
        env["GRADIENT_BASE_URL"] = server.base_url
        defs = dg.Definitions(
            assets=[me.utilization_extract, me.validated_utilization, me.billable_counts,
                    gl.gradient_services, gl.gradient_accounts, gl.gradient_unit_counts],
            jobs=[monthly_billing_job, load_preview.gradient_preview],
            resources={
                "product_db": ProductDatabase(url=env["PRODUCT_DB_URL"]),
                "state_db": StateDatabase(url=env["STATE_DB_URL"]),
                "billing_rules": BillingRules(quarantine_threshold=0.5),
                "partner_sources": PartnerSources(encryption_keys=fernet_key),
                "gradient": GradientResource(base_url=server.base_url, vendor_api_key=VENDOR_KEY),
            },
        )
        job = defs.resolve_job_def("monthly_billing")
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            for month, outcome, trigger in ((NOV, "delivered_with_unmapped", "demo"),
                                            ("2026-09-01", "superseded", "backfill"),
                                            ("2026-10-01", "superseded", "backfill")):
                result = job.execute_in_process(partition_key=month, instance=instance, raise_on_error=False,
                                                tags=run_tags(trigger))
                assert result.success
                assert instance.get_run_by_id(result.run_id).tags[TAG_OUTCOME] == outcome
            materialized = instance.get_materialized_partitions(UNIT_COUNTS)
            preview = defs.resolve_job_def("gradient_preview").execute_in_process(
                partition_key=NOV, instance=instance, raise_on_error=False,
                run_config={"ops": {"preview_month_push": {"config": {"partner_ids": ["p-999"]}}}},
            )
            assert not preview.success  # refused before anything was counted
            assert not [e for e in preview.all_events if e.is_step_materialization]
            # the truth per month, as the instance holds it
            assert instance.get_materialized_partitions(UNIT_COUNTS) == materialized == {NOV}
            assert check_status(instance, "every_pair_mapped", NOV) == "FAILED"
            for month in ("2026-09-01", "2026-10-01"):
                assert check_status(instance, "month_not_superseded", month) == "FAILED"
                assert check_status(instance, "every_pair_mapped", month) == "SUCCEEDED"
        # September's statements, as partner_statements writes them, for the browser to open
        with engine_for(env["PRODUCT_DB_URL"]).connect() as conn:
            names, _ = statements.partner_names(conn, None)
        made = list(statements.iter_partner_statements(engine_for(env["STATE_DB_URL"]), date(2026, 9, 1), names))
        for statement in made:
            statements.write_html(statement, tmp_path / "statements" / "2026-09")
        # ... and one whose partner and companies carry the hostile corpus (ids and names as a
        # vendor's customers can type them)
        rows = made[0].rows.copy()
        rows["company_id"] = [hostile.STORABLE_IDS[i % len(hostile.STORABLE_IDS)] for i in range(len(rows))]
        rows["company_name"] = [(*hostile.HTML, *hostile.SLACK, *hostile.RTL_EMOJI)[i % 11] for i in range(len(rows))]
        statements.write_html(
            dataclasses.replace(made[0], partner_id="../x", partner_name=hostile.HTML[0], rows=rows),
            tmp_path / "statements" / "hostile",
        )
        yield home, env


@pytest.fixture
def webserver(superseded_instance):
    home, env = superseded_instance
    port = free_port()
    log = open(home / "webserver.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1", "-p", str(port),
         "-m", "pipeline.definitions"],
        cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WEBSERVER_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"dagster-webserver exited: {(home / 'webserver.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer /server_info in {WEBSERVER_TIMEOUT} s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def chromium() -> str:
    """Chromium and Playwright are there (checked before the slow setup)."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    return CHROMIUM


@pytest.fixture
def browser(chromium, webserver):
    """Launched after the runs: Playwright's sync API keeps an event loop on this thread."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        try:
            instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001 - any launch failure means "cannot run"
            unavailable(f"Chromium at {chromium} cannot start: {str(exc).splitlines()[0]}")
        try:
            yield instance
        finally:
            instance.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def see(page, text: str, name: str, exact: bool = True) -> None:
    """Wait for ``text`` to be visible; on timeout keep a screenshot of what was shown."""
    try:
        page.get_by_text(text, exact=exact).first.wait_for()
    except Exception:
        shot(page, f"failed-{name}")
        raise


def test_the_ui_tells_delivered_superseded_and_preview_apart(chromium, webserver, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.set_default_timeout(UI_TIMEOUT_MS)

    # the asset graph around the push: the month-end and load assets, the ledger downstream
    page.goto(f"{webserver}/assets/gradient_unit_counts?view=lineage")
    welcome = page.get_by_role("button", name="Skip")
    try:
        welcome.wait_for(timeout=15_000)  # Dagster's first-visit newsletter dialog
        welcome.click()
    except Exception:  # noqa: BLE001 - not shown: nothing to dismiss
        pass
    for asset in ("gradient_accounts", "gradient_ledger"):
        see(page, asset, "asset-graph")
    shot(page, "1-asset-graph")

    # lineage from the vendor's tables: the reference schema's tables upstream of the extract
    page.goto(f"{webserver}/assets/utilization_extract?view=lineage")
    for table in ("product_database", "companies", "partners", "users"):  # long names are cut
        see(page, table, "source-lineage")
    shot(page, "1b-source-tables")

    # the Partitions tab: November materialized, the superseded months not
    page.goto(f"{webserver}/assets/gradient_unit_counts?view=partitions")
    see(page, "2026-11", "partitions", exact=False)
    shot(page, "2-partitions")

    # November's materialization: delivered with unmapped pairs, p-003 first in the table
    page.goto(f"{webserver}/assets/gradient_unit_counts?view=events&partition={NOV}")
    see(page, "per_partner", "materialization")
    for text in ("delivered_with_unmapped", "p-003", "partners_by_status"):
        see(page, text, "materialization", exact=False)
    assert page.get_by_role("table").count() >= 1
    shot(page, "3-november-materialization")

    # the checks: every_pair_mapped of November still fails after the backfill of older months
    page.goto(f"{webserver}/assets/gradient_unit_counts?view=checks")
    see(page, "every_pair_mapped", "checks")
    page.get_by_text("every_pair_mapped", exact=True).first.click()
    see(page, "unmapped", "check", exact=False)
    listed = page.inner_text("body").split("Checks (3)")[1]
    # the list sums the months up: November failing keeps the check red, though the latest
    # evaluation (a superseded month's) passed
    assert "every_pair_mapped\nFailed" in listed and "month_not_superseded\nFailed" in listed
    shot(page, "4-checks")
    page.get_by_text("Partitions", exact=True).last.click()
    see(page, "2026-11", "check-partitions", exact=False)
    shot(page, "4b-check-partitions")

    # the ledger of September: what was recorded for each pair, and the totals per outcome
    page.goto(f"{webserver}/assets/gradient_ledger?view=events&partition=2026-09-01")
    for text in ("entries", "totals", "http_status", "recorded_at"):
        see(page, text, "ledger")
    assert "superseded" in page.inner_text("body")
    shot(page, "5-ledger")

    # the runs list: each run says what it did
    page.goto(f"{webserver}/runs")
    see(page, "gbs/outcome", "runs", exact=False)
    shot(page, "6-runs")

    # what a partner reads for a superseded month: its name, a banner saying nothing was
    # pushed, users apart from units, and what Gradient holds instead of a "sent" value
    superseded = sorted((tmp_path / "statements" / "2026-09").glob("*.html"))
    assert superseded
    page.goto(superseded[0].as_uri())
    for text in ("Usage statement 2026-09", "Billable users in 2026-09", "Units in Gradient",
                 "Gradient holds now", "This month was not pushed to Gradient"):
        see(page, text, "statement", exact=False)
    body = page.inner_text("body")
    assert "(for 2026-11)" in body and "Sent to Gradient" not in body
    shot(page, "7-superseded-statement")

    # a statement of the hostile corpus: every value shown as text, nothing runs or links
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    (hostile_page,) = (tmp_path / "statements" / "hostile").glob("*.html")
    assert hostile_page.parent == tmp_path / "statements" / "hostile"  # "../x" stayed inside
    page.goto(hostile_page.as_uri())
    see(page, hostile.HTML[0], "hostile-statement", exact=False)
    body = page.inner_text("body")
    for text in (hostile.HTML[1], hostile.STORABLE_IDS[0], hostile.STORABLE_IDS[1]):
        assert text in body, text
    assert dialogs == [] and page.locator("img").count() == 0 and page.locator("script").count() == 0
    shot(page, "8-hostile-statement")
