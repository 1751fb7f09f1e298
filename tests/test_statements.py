"""Partner statements: the real month (Dagster materialize, the emulator over HTTP), then the CSV
and HTML files read back and compared with the ledger and with what Gradient shows; e-mail to a
real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import csv
import email
import re
import socket
from collections import defaultdict
from datetime import date, datetime, timezone
from email import policy
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography.fernet import Fernet

from assets import gradient_load as gl
from assets import month_end as me
from assets.statements import partner_statements
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline import outputs
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
from tests import hostile
from tests.product_rows import ProductRows, at

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
    yield from make_world(tmp_path, emulator, monkeypatch)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_world(request, tmp_path, emulator, monkeypatch):
    """The world with product and state database on SQLite, then on PostgreSQL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    yield from make_world(tmp_path, emulator, monkeypatch, url)


def make_world(tmp_path, emulator, monkeypatch, url=None):
    for name in ("STATEMENTS_SMTP_URL", "PARTNER_CONTACTS_SQL", "STATEMENTS_EMAIL_FROM", "PARTNERS_SQL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATEMENTS_DIR", str(tmp_path / "statements"))
    with EmulatorAdmin(emulator.base_url) as admin:
        admin.reset()
        yield World(tmp_path, emulator, admin, url)
        admin.reset()
    engine_for.cache_clear()


class World:
    def __init__(self, tmp_path, emulator, admin, url=None):
        self.tmp_path = tmp_path
        self.admin = admin
        self.fernet_key = Fernet.generate_key().decode()
        # one PostgreSQL database holds both: the product's and the state's tables share no name
        self.product_url = url or f"sqlite:///{tmp_path / 'product.db'}"
        self.state_url = url or f"sqlite:///{tmp_path / 'state.db'}"
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
        delivered = frame[frame.gradient_outcome == "delivered"]["units"].sum()
        assert delivered == units[(partner_id, "delivered")] == shown[partner_id]
        # a delivered line is what Gradient holds now, for this month
        held = frame[frame.gradient_outcome == "delivered"]
        assert (held["gradient_holds_units"] == held["units"]).all()
        assert set(held["gradient_holds_month"]) == {"2026-10"}
        unmapped = frame[frame.gradient_outcome == "unmapped"]["units"].sum()
        assert unmapped == units.get((partner_id, "unmapped"), 0)
        # every line of a connected partner was sent: nothing is reported as not sent
        assert set(frame.gradient_outcome) <= {"delivered", "unmapped"}
        assert {"company_name", "service", "previous_month_users", "change"} <= set(frame.columns)
        # the CSV says whose and which month on every row, the partner by its name
        assert set(frame["partner_id"]) == {partner_id} and set(frame["month"]) == {"2026-10"}
        assert frame["partner_name"].str.len().gt(0).all() and (frame["partner_name"] != partner_id).all()
    assert (world.csv("p-003", OCT).gradient_outcome == "unmapped").any()
    # September was never counted: no previous value, no change (not "+N against nothing")
    assert world.csv("p-001", OCT)[["previous_month_users", "change"]].isna().all().all()
    metadata = statement_metadata(result)
    assert isinstance(metadata["directory"], dg.PathMetadataValue)
    assert metadata["directory"].path.endswith("2026-10")
    assert metadata["partners"].value == 3 and metadata["partners_with_problems"].value == 0
    assert "| p\\-001 |" in metadata["preview"].md_str
    assert metadata["emailed"].value == 0
    page = world.html("p-001", OCT)
    assert "<!DOCTYPE html>" in page and "<link" not in page and "<script" not in page
    name = world.csv("p-001", OCT)["partner_name"].iloc[0]
    assert f"<title>Usage statement 2026-10 — {name}</title>" in page
    # users and units are two tables, the totals have a not-sent column
    assert "<h2>Billable users in 2026-10</h2>" in page and "<h2>Units in Gradient</h2>" in page
    assert "<th>Units not sent</th>" in page


def test_a_superseded_month_still_gets_its_statement(any_world):
    world = any_world
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
        assert frame["units"].sum() == ledger_units(world.state, SEP)[(partner_id, "superseded")]
        # each line shows what Gradient holds instead: October's delivered value
        october = world.csv(partner_id, OCT).set_index(["company_id", "sku"])
        for row in frame.itertuples(index=False):
            key = (row.company_id, row.sku)
            if key in october.index and october.loc[key, "gradient_outcome"] == "delivered":
                assert (row.gradient_holds_units, row.gradient_holds_month) == (october.loc[key, "units"], "2026-10")
        page = world.html(partner_id, SEP)
        assert "was not pushed to Gradient" in page and "2026-10" in page
        assert "Sent to Gradient" not in page and "(for 2026-10)" in page
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
    assert frame["units"].sum() == ledger_units(world.state, OCT)[("p-001", "failed")]
    assert frame["gradient_holds_units"].isna().all()  # Gradient holds nothing of it
    assert world.emulator_units().get("p-001", 0) == 0


def test_html_escapes_a_hostile_company_name(tmp_path):
    hostile = '<script>alert("x")</script> & "Sons" <img src=x onerror=alert(1)>'
    rows = pd.DataFrame([{
        "company_id": "c-<1>", "company_name": hostile, "sku": "SAT", "service": "Training <b>",
        "billable_users": 3, "previous_month_users": pd.NA, "change": 3, "units": 3,
        "gradient_outcome": "delivered", "http_status": 201, "recorded_at": datetime(2026, 11, 1, tzinfo=timezone.utc),
        "gradient_holds_units": 3, "gradient_holds_month": "2026-10",
    }], columns=st.LINE_COLUMNS)
    statement = st.Statement("p-<x>", OCT, rows, None, partner_name="<b>Evil</b> MSP")
    page = st.write_html(statement, tmp_path).read_text()
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;Sons&#34;" in page
    assert "c-&lt;1&gt;" in page and "p-&lt;x&gt;" in page and "&lt;b&gt;Evil&lt;/b&gt; MSP" in page


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
    assert "2026-10" in message["Subject"] and world.csv("p-001", OCT)["partner_name"].iloc[0] in message["Subject"]
    attachments = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    assert set(attachments) == {"p-001-2026-10.csv", "p-001-2026-10.html"}
    assert attachments["p-001-2026-10.csv"] == (world.tmp_path / "statements/2026-10/p-001-2026-10.csv").read_bytes().decode()
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
    assert delivered["units"].sum() == world.emulator_units()["p-001"]
    assert (world.tmp_path / "statements" / "2026-10" / "p-002-2026-10.html").exists()


# =========================================================================== hostile product data


def hostile_product(url: str) -> dict[str, tuple[str, int]]:
    """One partner per storable hostile id (named with a hostile name: 10 KB, CRLF, Slack, RTL),
    each with one company whose id and name are hostile too, and 1-3 billable users on SAT in
    October; no partner is connected. Returns partner id -> (name, billable users)."""
    rows = ProductRows(sa.create_engine(url)).services("SAT")
    expected = {}
    for i, partner_id in enumerate(hostile.STORABLE_IDS):
        name = hostile.NAMES[(i * 7) % len(hostile.NAMES)]
        if i == 0:
            name = hostile.LONG  # "../x": a 10 KB name
        elif i == 1:
            name = hostile.CRLF
        rows.partner(partner_id, name)
        company_id = f"{hostile.STORABLE_IDS[-1 - i]}{i}"
        rows.company(company_id, partner_id, hostile.STORABLE_IDS[(i + 5) % len(hostile.STORABLE_IDS)])
        users = [f"u{i}-{n}" for n in range(1 + i % 3)]
        rows.users(*users)
        for user in users:
            rows.enroll(user, company_id, "SAT", at(2026, 9, 20))
        expected[partner_id] = (name, len(users))
    return expected


def add_contacts(url: str, addresses: dict[str, str]) -> None:
    """A contacts table in the product database (the reference schema has none)."""
    metadata = sa.MetaData()
    table = sa.Table("partner_contacts", metadata, sa.Column("partner_id", sa.Text), sa.Column("email", sa.Text))
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"partner_id": p, "email": e} for p, e in addresses.items()])
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def hostile_world(request, tmp_path, monkeypatch):
    """Product and state database on one backend, with the hostile partners in October."""
    for name in ("STATEMENTS_SMTP_URL", "PARTNER_CONTACTS_SQL", "STATEMENTS_EMAIL_FROM", "PARTNERS_SQL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATEMENTS_DIR", str(tmp_path / "out" / "statements"))
    if request.param == "sqlite":
        product_url, state_url = f"sqlite:///{tmp_path / 'product.db'}", f"sqlite:///{tmp_path / 'state.db'}"
    else:
        product_url = state_url = request.getfixturevalue("postgres_url")  # no table names in common
    expected = hostile_product(product_url)
    resources = {
        "product_db": ProductDatabase(url=product_url),
        "state_db": StateDatabase(url=state_url),
        "billing_rules": BillingRules(quarantine_threshold=0.5),
    }
    yield product_url, resources, expected, tmp_path / "out"
    engine_for.cache_clear()


def materialize(resources, month: date, assets, instance=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, partition_key=month.isoformat(), resources=resources, raise_on_error=False,
                          instance=instance)


def read_statement(directory, partner_id: str, month: date) -> tuple[list[dict], str]:
    stem = f"{outputs.statement_file_stem(partner_id)}-{month:%Y-%m}"
    with (directory / f"{stem}.csv").open(newline="", encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    return lines, (directory / f"{stem}.html").read_text(encoding="utf-8")


COUNT_ASSETS = [me.utilization_extract, me.validated_utilization, me.billable_counts]


def test_hostile_ids_and_names_get_safe_statements_every_partner_its_own(hostile_world, smtp_server, monkeypatch):
    product_url, resources, expected, out = hostile_world
    inbox, port = smtp_server
    # every partner has a contact; "/abs" has a header-injection address and "a/b" a smuggled second one
    addresses = {pid: f"billing{i}@partner.example" for i, pid in enumerate(expected)}
    addresses["/abs"], addresses["a/b"] = hostile.BAD_ADDRESSES
    add_contacts(product_url, addresses)
    contacts = out.parent / "contacts.sql"
    contacts.write_text("SELECT partner_id, email FROM partner_contacts\n")
    monkeypatch.setenv("PARTNER_CONTACTS_SQL", str(contacts))
    monkeypatch.setenv("STATEMENTS_SMTP_URL", f"smtp://billing-bot:{SMTP_PASSWORD}@127.0.0.1:{port}")

    assert materialize(resources, OCT, COUNT_ASSETS).success
    result = materialize(resources, OCT, [partner_statements])
    # the two refused addresses fail the step, at the end: every other partner got its statement
    assert [e.step_key for e in result.get_step_failure_events()] == ["partner_statements"]
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "'/abs'" in failure.description and "'a/b'" in failure.description
    assert "e-mail address refused" in failure.description and "PARTNER_CONTACTS_SQL" in failure.description
    assert "\n" not in failure.description.split(": ", 1)[1]
    assert failure.metadata["partners_with_problems"].value == 2
    assert failure.metadata["emailed"].value == len(expected) - 2
    assert result.asset_materializations_for_node("partner_statements") == []
    for key in ("preview", "problems"):  # Dagster markdown: no markup from the data, every row intact
        markdown = failure.metadata[key].md_str
        assert "<" not in markdown
        for row in (r for r in markdown.splitlines() if r.startswith("|")):
            assert re.sub(r"\\[|]", "", row).count("|") in (3, 9), row

    directory = out / "statements" / "2026-10"
    # every file in its month's folder (none beside or above it, none at /abs), one per partner and kind
    written = sorted(p for p in out.parent.rglob("*") if p.is_file() and p.suffix in (".csv", ".html"))
    assert written == sorted(directory / f"{outputs.statement_file_stem(pid)}-2026-10.{ext}"
                             for pid in expected for ext in ("csv", "html"))
    assert not list(Path("/").glob("abs*2026-10*"))

    for partner_id, (name, users) in expected.items():
        lines, page = read_statement(directory, partner_id, OCT)
        (line,) = lines
        # the raw values come back from the CSV, neutralised where a spreadsheet would run them
        for column, raw in (("partner_id", partner_id), ("partner_name", name)):
            assert line[column] == (f"'{raw}" if raw.startswith(outputs.FORMULA_PREFIXES) else raw)
        for cell in line.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (partner_id, cell)
        assert line["month"] == "2026-10" and line["billable_users"] == str(users)
        # not connected: nothing sent, and the totals say how much was not
        assert (line["gradient_outcome"], line["units"], line["gradient_holds_units"]) == ("not sent", str(users), "")
        totals = re.search(r"<tbody><tr>(.*?)</tr></tbody>", page, re.S).group(1)
        assert re.findall(r'<td class="n">(\d+)</td>', totals) == [str(users), "0", "0", "0", "0", str(users)]
        # the HTML carries no markup from the data, and is titled with the (shortened) name
        for raw in ("<script", "<img", "<!channel>", "<https://evil", "<@U123>"):
            assert raw not in page
        title = re.search(r"<title>(.*?)</title>", page, re.S).group(1)
        assert title.startswith("Usage statement 2026-10 — ") and len(title) < 1500

    # e-mail: each good address got one message with its own partner's files; no Bcc, no smuggled recipient
    recipients = sorted(r for m in inbox.messages for r in m["X-Envelope-To"].split(","))
    assert recipients == sorted(a for pid, a in addresses.items() if pid not in ("/abs", "a/b"))
    for message in inbox.messages:
        assert "Bcc" not in message and "\n" not in message["Subject"]
        names = {part.get_filename() for part in message.iter_attachments()}
        assert len(names) == 2 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    assert not any("attacker" in m["X-Envelope-To"] for m in inbox.messages)


def test_a_month_never_counted_is_a_clear_error_and_no_materialization(hostile_world):
    _, resources, _, out = hostile_world
    with dg.instance_for_test() as instance:
        result = materialize(resources, date(2026, 3, 1), [partner_statements], instance)
        assert not result.success
        (failure,) = result.get_step_failure_events()
        description = failure.step_failure_data.user_failure_data.description
        assert "2026-03 has never been counted" in description
        assert "gradient-billing-sync run --month 2026-03" in description
        assert "preview --month 2026-03" in description
        assert result.asset_materializations_for_node("partner_statements") == []
        assert instance.get_latest_materialization_event(dg.AssetKey("partner_statements")) is None
    assert not (out / "statements").exists()

    # once counted, the month's statements are made
    assert materialize(resources, date(2026, 3, 1), COUNT_ASSETS).success
    counted = materialize(resources, date(2026, 3, 1), [partner_statements])
    assert counted.success
    (materialization,) = counted.asset_materializations_for_node("partner_statements")
    assert materialization.metadata["partners"].value == 0  # nobody had users in March: no statement


def test_a_statement_that_cannot_be_written_stops_no_other_partner(hostile_world):
    """One partner's file cannot be written (a folder stands where it goes): the others are
    written, then the step fails naming that partner, and the month is not materialized."""
    _, resources, expected, out = hostile_world
    assert materialize(resources, OCT, COUNT_ASSETS).success
    directory = out / "statements" / "2026-10"
    blocked = "=cmd"
    (directory / f"{outputs.statement_file_stem(blocked)}-2026-10.csv").mkdir(parents=True)
    result = materialize(resources, OCT, [partner_statements])
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data.user_failure_data
    assert "1 partner(s) not: '=cmd': statement not written" in data.description
    assert data.metadata["partners"].value == len(expected) and data.metadata["partners_with_problems"].value == 1
    for partner_id in expected:
        if partner_id != blocked:
            lines, _ = read_statement(directory, partner_id, OCT)
            assert lines[0]["month"] == "2026-10"
    assert result.asset_materializations_for_node("partner_statements") == []


def test_csv_neutralises_text_cells_and_keeps_numbers_numbers(tmp_path):
    rows = pd.DataFrame([{
        "company_id": "-5", "company_name": '=HYPERLINK("http://x","y")', "sku": "SAT", "service": "@svc",
        "billable_users": 1, "previous_month_users": 4, "change": -3, "units": 1, "gradient_outcome": "not sent",
        "http_status": pd.NA, "recorded_at": None, "gradient_holds_units": pd.NA, "gradient_holds_month": None,
    }], columns=st.LINE_COLUMNS).astype({"previous_month_users": "Int64", "change": "Int64"})
    path = st.write_csv(st.Statement("-1+1", OCT, rows, None, partner_name="+Evil"), tmp_path)
    (line,) = csv.DictReader(path.open(newline=""))
    assert (line["partner_id"], line["partner_name"], line["company_id"], line["service"]) == ("'-1+1", "'+Evil", "'-5", "'@svc")
    assert line["company_name"] == '\'=HYPERLINK("http://x","y")'
    assert (line["change"], line["previous_month_users"], line["units"]) == ("-3", "4", "1")
    assert path.parent == tmp_path and path.name.endswith("-2026-10.csv") and not path.name.startswith("-")
