"""Partner statements: the real month (Dagster materialize, the emulator over HTTP), then the CSV
and HTML files read back and compared with the ledger and with what Gradient shows; e-mail to a
real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import socket
from collections import defaultdict
from datetime import date, datetime, timezone
from email import policy

import dagster as dg
import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography.fernet import Fernet

from assets import gradient_load as gl
from assets import month_end as me
from assets.statements import partner_statements
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.billing import statements as st
from pipeline.demo.data import DemoSpec, load_demo_data
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

VENDOR_KEY = "vk-statements-51c9e0"
SMTP_PASSWORD = "smtp-secret-7f3a"
OCT, SEP = date(2026, 10, 1), date(2026, 9, 1)
SPEC = DemoSpec(partners=3, connected_partners=3, companies_per_partner=(4, 5), users_per_company=(2, 6),
                end_month=date(2026, 11, 1), history_months=4)
MONTH_ASSETS = [me.utilization_extract, me.validated_utilization, me.billable_counts,
                gl.gradient_services, gl.gradient_accounts, gl.gradient_unit_counts]


def register_partners(admin, product) -> None:
    """p-001 and p-002 map everything in Gradient; p-003 all but its first company (c-003-0001),
    so that company's lines come back unmapped."""
    from pipeline.demo.data import demo_partner_key
    from pipeline.source import product_schema as ps
    import sqlalchemy as sa

    with product.connect() as conn:
        companies = conn.execute(
            sa.select(ps.companies.c.company_id, ps.companies.c.name).where(ps.companies.c.partner_id == "p-003")
        ).all()
        services = conn.execute(sa.select(ps.services.c.name)).scalars().all()
    for pid in ("p-001", "p-002", "p-003"):
        admin.register_partner(demo_partner_key(pid), name=pid, organization_id=f"org-{pid}",
                               auto_map_all=pid != "p-003")
    admin.set_psa_companies("org-p-003", [name for cid, name in companies if cid != "c-003-0001" and name])
    admin.set_psa_products("org-p-003", list(services))


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(VENDOR_KEY) as server:
        yield server


@pytest.fixture
def world(tmp_path, emulator, monkeypatch):
    for name in ("STATEMENTS_SMTP_URL", "PARTNER_CONTACTS_SQL", "STATEMENTS_EMAIL_FROM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATEMENTS_DIR", str(tmp_path / "statements"))
    with EmulatorAdmin(emulator.base_url) as admin:
        admin.reset()
        yield World(tmp_path, emulator, admin)
        admin.reset()
    engine_for.cache_clear()


class World:
    def __init__(self, tmp_path, emulator, admin):
        self.tmp_path = tmp_path
        self.admin = admin
        self.fernet_key = Fernet.generate_key().decode()
        self.product_url = f"sqlite:///{tmp_path / 'product.db'}"
        self.state_url = f"sqlite:///{tmp_path / 'state.db'}"
        self.product = engine_for(self.product_url)
        load_demo_data(self.product, SPEC, encryption_keys=self.fernet_key)
        # p-003 has half its companies mapped: some of its lines come back unmapped
        register_partners(admin, self.product)
        self.gradient = GradientResource(base_url=emulator.base_url, vendor_api_key=VENDOR_KEY,
                                         backoff_initial_seconds=0.01, backoff_max_seconds=0.02,
                                         max_attempts=2)

    @property
    def state(self):
        return StateDatabase(url=self.state_url).engine()

    def resources(self):
        return {
            "product_db": ProductDatabase(url=self.product_url),
            "state_db": StateDatabase(url=self.state_url),
            "billing_rules": BillingRules(quarantine_threshold=0.5),
            "partner_sources": PartnerSources(encryption_keys=self.fernet_key),
            "gradient": self.gradient,
        }

    def run(self, month: date, assets=None):
        return dg.materialize(assets or [*MONTH_ASSETS, partner_statements], partition_key=month.isoformat(),
                              resources=self.resources(), raise_on_error=False)

    def csv(self, partner_id: str, month: date) -> pd.DataFrame:
        return pd.read_csv(self.tmp_path / "statements" / f"{month:%Y-%m}" / f"{partner_id}-{month:%Y-%m}.csv")

    def html(self, partner_id: str, month: date) -> str:
        return (self.tmp_path / "statements" / f"{month:%Y-%m}" / f"{partner_id}-{month:%Y-%m}.html").read_text()

    def emulator_units(self) -> dict[str, int]:
        units: dict[str, int] = defaultdict(int)
        for row in self.admin.counts():
            units[row["organization_id"].removeprefix("org-")] += int(row["unit_count"])
        return dict(units)


def ledger_units(state, month: date) -> dict[tuple[str, str], int]:
    """(partner, outcome) -> units, from the newest entry of each pair for the month."""
    newest: dict[tuple[str, str, str], dict] = {}
    for entry in ledger.entries_for(state, month):
        newest[(entry["partner_id"], entry["account_id"], entry["sku"])] = entry
    units: dict[tuple[str, str], int] = defaultdict(int)
    for (partner_id, _, _), entry in newest.items():
        units[(partner_id, entry["outcome"])] += entry["value"]
    return dict(units)


def statement_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (materialization,) = [
        m for m in result.asset_materializations_for_node("partner_statements")
    ]
    return materialization.metadata


def test_statement_totals_equal_the_ledger_and_what_gradient_shows(world):
    result = world.run(OCT)
    assert result.success
    counts = load_billable_counts(world.state, OCT)
    units = ledger_units(world.state, OCT)
    shown = world.emulator_units()
    for partner_id in ("p-001", "p-002", "p-003"):
        frame = world.csv(partner_id, OCT)
        mine = counts[counts.partner_id == partner_id]
        assert frame["billable_users"].sum() == mine["billable_users"].sum()
        delivered = frame[frame.gradient_outcome == "delivered"]["sent_value"].sum()
        assert delivered == units[(partner_id, "delivered")] == shown[partner_id]
        unmapped = frame[frame.gradient_outcome == "unmapped"]["sent_value"].sum()
        assert unmapped == units.get((partner_id, "unmapped"), 0)
        # every line of a connected partner was sent: nothing is reported as not sent
        assert set(frame.gradient_outcome) <= {"delivered", "unmapped"}
        assert {"company_name", "service", "previous_month_users", "change"} <= set(frame.columns)
    assert (world.csv("p-003", OCT).gradient_outcome == "unmapped").any()
    # September was never counted: no previous value, no change (not "+N against nothing")
    assert world.csv("p-001", OCT)[["previous_month_users", "change"]].isna().all().all()
    metadata = statement_metadata(result)
    assert isinstance(metadata["p-001_html"], dg.PathMetadataValue)
    assert metadata["p-001_html"].path.endswith("p-001-2026-10.html")
    assert "| p-001 |" in metadata["preview"].md_str
    assert metadata["emailed"].value == 0
    page = world.html("p-001", OCT)
    assert "<!DOCTYPE html>" in page and "<link" not in page and "<script" not in page


def test_a_superseded_month_still_gets_its_statement(world):
    assert world.run(OCT).success
    shown_before = world.admin.counts()
    result = world.run(SEP)
    assert result.success
    assert world.admin.counts() == shown_before  # nothing was pushed for September
    counts = load_billable_counts(world.state, SEP)
    for partner_id in ("p-001", "p-002"):
        frame = world.csv(partner_id, SEP)
        assert set(frame.gradient_outcome) == {"superseded"}
        assert frame["billable_users"].sum() == counts[counts.partner_id == partner_id]["billable_users"].sum()
        assert frame["sent_value"].sum() == ledger_units(world.state, SEP)[(partner_id, "superseded")]
        assert "was not pushed to Gradient" in world.html(partner_id, SEP)
        assert "2026-10" in world.html(partner_id, SEP)
    assert "p-001" in statement_metadata(result)["superseded_partners"].text

    # with September counted, October's statement shows the change against it
    assert world.run(OCT, [partner_statements]).success
    before = {(r.company_id, r.sku): int(r.billable_users)
              for r in counts[counts.partner_id == "p-001"].itertuples(index=False)}
    october = world.csv("p-001", OCT)
    for row in october.itertuples(index=False):
        previous = before.get((row.company_id, row.sku), 0)
        assert (row.previous_month_users, row.change) == (previous, row.billable_users - previous)


def test_statement_is_made_for_a_month_whose_push_failed(world):
    """Gradient fails every count call: the run fails and skips the statement; materializing
    the statement alone then shows the failed lines."""
    world.admin.set_faults(error_rate=1.0, paths=["/service/"])
    result = world.run(OCT)
    world.admin.clear_faults()
    assert not result.success
    assert not (world.tmp_path / "statements" / "2026-10").exists()
    alone = world.run(OCT, [partner_statements])
    assert alone.success
    frame = world.csv("p-001", OCT)
    assert set(frame.gradient_outcome) == {"failed"}
    assert frame["sent_value"].sum() == ledger_units(world.state, OCT)[("p-001", "failed")]
    assert world.emulator_units().get("p-001", 0) == 0


def test_html_escapes_a_hostile_company_name(tmp_path):
    hostile = '<script>alert("x")</script> & "Sons" <img src=x onerror=alert(1)>'
    rows = pd.DataFrame([{
        "company_id": "c-<1>", "company_name": hostile, "sku": "SAT", "service": "Training <b>",
        "billable_users": 3, "previous_month_users": pd.NA, "change": 3, "sent_value": 3,
        "gradient_outcome": "delivered", "http_status": 201, "recorded_at": datetime(2026, 11, 1, tzinfo=timezone.utc),
    }], columns=st.COLUMNS)
    statement = st.Statement("p-<x>", OCT, rows, None)
    page = st.write_html(statement, tmp_path).read_text()
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;Sons&quot;" in page
    assert "c-&lt;1&gt;" in page and "p-&lt;x&gt;" in page


class Inbox:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        message = email.message_from_bytes(envelope.original_content, policy=policy.default)
        message["X-Envelope-To"] = ",".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == SMTP_PASSWORD)


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate,
                            auth_require_tls=False)
    controller.start()
    yield inbox, port
    controller.stop()


def test_statements_are_emailed_with_attachments_when_configured(world, smtp_server, monkeypatch):
    inbox, port = smtp_server
    assert world.run(OCT).success
    assert inbox.messages == []  # e-mail is off by default

    contacts = world.tmp_path / "contacts.sql"
    contacts.write_text(
        "-- partner billing contacts\n"
        "SELECT partner_id, 'billing@' || partner_id || '.example' AS email FROM partners\n"
        "WHERE partner_id IN ('p-001', 'p-002')\n"
    )
    monkeypatch.setenv("PARTNER_CONTACTS_SQL", str(contacts))
    monkeypatch.setenv("STATEMENTS_SMTP_URL", f"smtp://billing-bot:{SMTP_PASSWORD}@127.0.0.1:{port}")
    monkeypatch.setenv("STATEMENTS_EMAIL_FROM", "billing@vendor.example")
    result = world.run(OCT, [partner_statements])
    assert result.success
    assert inbox.logins == [("billing-bot", SMTP_PASSWORD)] * 2  # one session per partner
    by_recipient = {m["X-Envelope-To"]: m for m in inbox.messages}
    assert sorted(by_recipient) == ["billing@p-001.example", "billing@p-002.example"]
    message = by_recipient["billing@p-001.example"]
    assert message["From"] == "billing@vendor.example"
    assert "2026-10" in message["Subject"]
    attachments = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    assert set(attachments) == {"p-001-2026-10.csv", "p-001-2026-10.html"}
    assert attachments["p-001-2026-10.csv"] == (world.tmp_path / "statements/2026-10/p-001-2026-10.csv").read_text()
    assert "Usage statement" in attachments["p-001-2026-10.html"]
    metadata = statement_metadata(result)
    assert metadata["emailed"].value == 2
    logged = " ".join(str(e.message) for e in result.all_events) + str(metadata)
    assert SMTP_PASSWORD not in logged


def test_nothing_is_sent_without_a_contacts_query(world, smtp_server, monkeypatch):
    inbox, port = smtp_server
    monkeypatch.setenv("STATEMENTS_SMTP_URL", f"smtp://127.0.0.1:{port}")
    assert world.run(OCT).success
    assert inbox.messages == []


def test_a_failed_push_asks_for_a_statements_run_of_its_month(world, emulator, tmp_path, monkeypatch):
    """The code location's own job on a Dagster instance: p-002's key is refused, the push step
    fails and the run skips the statements; the failure sensor asks for the statements job."""
    from pipeline.automation.statements import statements_after_failed_push_sensor
    from pipeline.definitions import build_defs

    for name, value in {
        "PRODUCT_DB_URL": world.product_url, "STATE_DB_URL": world.state_url,
        "GRADIENT_BASE_URL": emulator.base_url, "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
        "GRADIENT_KEY_ENCRYPTION_KEYS": world.fernet_key, "QUARANTINE_THRESHOLD": "0.5",
        "GBS_DATA_DIR": str(tmp_path / "var"),
    }.items():
        monkeypatch.setenv(name, value)
    defs = build_defs()
    world.admin.revoke_partner("org-p-002")
    with dg.instance_for_test() as instance:
        failed = defs.resolve_job_def("monthly_billing").execute_in_process(
            partition_key=OCT.isoformat(), instance=instance, raise_on_error=False
        )
        assert not failed.success
        assert "gradient_unit_counts" in {e.step_key for e in failed.get_step_failure_events()}
        assert not (tmp_path / "statements" / "2026-10").exists()

        context = dg.build_run_status_sensor_context(
            sensor_name=statements_after_failed_push_sensor.name,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(failed.run_id),
            dagster_event=failed.get_run_failure_event(),
        ).for_run_failure()
        request = statements_after_failed_push_sensor(context)
        assert isinstance(request, dg.RunRequest)
        assert request.partition_key == OCT.isoformat() and failed.run_id in request.run_key
        made = defs.resolve_job_def(statements_after_failed_push_sensor.job_name).execute_in_process(
            partition_key=request.partition_key, instance=instance, tags=request.tags
        )
        assert made.success
    delivered = world.csv("p-001", OCT)
    assert set(delivered.gradient_outcome) == {"delivered"}
    assert delivered["sent_value"].sum() == world.emulator_units()["p-001"]
    assert (world.tmp_path / "statements" / "2026-10" / "p-002-2026-10.html").exists()
