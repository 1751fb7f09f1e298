"""Alerts a person receives: the code location's monthly job really run on a Dagster instance
against the Gradient emulator, then the alert sensors evaluated on those runs, delivering to a
real local SMTPS server (aiosmtpd, a certificate made here) and a real local HTTP webhook."""

from __future__ import annotations

import datetime as dt
import email
import ipaddress
import json
import socket
import ssl
import threading
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.automation import alerts
from pipeline.automation.jobs import load_run_config
from pipeline.demo.data import DemoSpec, load_demo_data
from pipeline.resources import StateDatabase, engine_for
from tests import hostile

pytestmark = pytest.mark.slow

VENDOR_KEY = "vk-alerts-0b7e21"
SMTP_PASSWORD = "alert-smtp-pass-93c1"
HOOK_TOKEN = "T000/B000/hook-secret-5d2e"
OCT_KEY, SEP_KEY = "2026-10-01", "2026-09-01"
SPEC = DemoSpec(partners=3, connected_partners=3, companies_per_partner=(4, 5), users_per_company=(2, 6),
                end_month=dt.date(2026, 11, 1), history_months=4)
ALERT_ENV = ("ALERT_SMTP_URL", "ALERT_EMAIL_TO", "ALERT_EMAIL_FROM", "ALERT_WEBHOOK_URL")


# =========================================================================== local servers


class Hook:
    """A Slack-style incoming webhook: records what it is sent."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's hook name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{HOOK_TOKEN}"

    def texts(self) -> list[str]:
        return [body["text"] for _, body in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Inbox:
    def __init__(self):
        self.messages: list = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        message = email.message_from_bytes(envelope.original_content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == SMTP_PASSWORD)


def self_signed_certificate(tmp_path):
    """A certificate for 127.0.0.1, and a CA file that trusts it (for SSL_CERT_FILE)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp-cert.pem", tmp_path / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


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


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def smtps(tmp_path, monkeypatch):
    """An SMTPS server on 127.0.0.1 that Dagster's sensor (default TLS verification) trusts."""
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port, ssl_context=context,
                            authenticator=inbox.authenticate, auth_require_tls=False)
    controller.start()
    yield inbox, port
    controller.stop()


# =========================================================================== the world


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(VENDOR_KEY) as server:
        yield server


@pytest.fixture
def world(tmp_path, emulator, monkeypatch):
    for name in ALERT_ENV + ("CONNECTIONS_SQL", "COMPANIES_SQL", "UTILIZATION_SQL", "SERVICES_SQL",
                             "GRADIENT_FAILURE_ALERTS", "BILLING_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    fernet_key = Fernet.generate_key().decode()
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
        monkeypatch.setenv(name, value)
    engine_for.cache_clear()
    load_demo_data(engine_for(env["PRODUCT_DB_URL"]), SPEC, encryption_keys=fernet_key)
    with EmulatorAdmin(emulator.base_url) as admin, dg.instance_for_test() as instance:
        admin.reset()
        # p-003 has only half its companies mapped in Gradient: its lines partly come back unmapped
        register_partners(admin, engine_for(env["PRODUCT_DB_URL"]))
        yield World(instance, admin, env)
        admin.reset()
    engine_for.cache_clear()


class World:
    def __init__(self, instance, admin, env):
        self.instance = instance
        self.admin = admin
        self.env = env

    def defs(self):
        from pipeline.definitions import build_defs

        return build_defs()

    def run(self, partition: str, partner_ids: list[str] | None = None) -> dg.ExecuteInProcessResult:
        job = self.defs().resolve_job_def("monthly_billing")
        config = load_run_config(job.name, partner_ids or []) if partner_ids else None
        return job.execute_in_process(partition_key=partition, instance=self.instance, raise_on_error=False,
                                      run_config=config)

    def sensor(self, name: str) -> dg.SensorDefinition:
        return self.defs().resolve_sensor_def(name)

    def evaluate(self, name: str, result: dg.ExecuteInProcessResult) -> None:
        run = self.instance.get_run_by_id(result.run_id)
        event = result.get_run_success_event() if result.success else result.get_run_failure_event()
        context = dg.build_run_status_sensor_context(
            sensor_name=name,
            dagster_instance=self.instance,
            dagster_run=run,
            dagster_event=event,
            resources={"state_db": StateDatabase(url=self.env["STATE_DB_URL"])},
        )
        self.sensor(name)(context.for_run_failure() if not result.success else context)


def secrets(world: World) -> list[str]:
    return [SMTP_PASSWORD, HOOK_TOKEN, VENDOR_KEY, world.env["GRADIENT_KEY_ENCRYPTION_KEYS"]]


# =========================================================================== tests


def test_no_alert_sensor_unless_configured(world):
    names = {s.name for s in world.defs().get_repository_def().sensor_defs}
    assert not names & {"failure_email_alert_sensor", "failure_webhook_alert_sensor", "month_outcome_alert_sensor"}
    assert alerts.alert_sensors() == []


def test_a_plain_smtp_url_is_refused_for_alerts(monkeypatch):
    monkeypatch.setenv("ALERT_SMTP_URL", f"smtp://bot:{SMTP_PASSWORD}@127.0.0.1:25")
    monkeypatch.setenv("ALERT_EMAIL_TO", "ops@vendor.example")
    with pytest.raises(alerts.ConfigurationError) as refused:
        alerts.AlertSettings.from_env()
    assert "TLS" in str(refused.value) and SMTP_PASSWORD not in str(refused.value)
    monkeypatch.setenv("ALERT_SMTP_URL", "smtps://127.0.0.1:465")
    with pytest.raises(alerts.ConfigurationError) as refused:
        alerts.AlertSettings.from_env()
    assert "user and a password" in str(refused.value)


def test_a_failed_run_reaches_a_person_by_email_and_webhook(world, smtps, hook, monkeypatch):
    inbox, port = smtps
    monkeypatch.setenv("ALERT_SMTP_URL", f"smtps://alert-bot@vendor.example:{SMTP_PASSWORD}@127.0.0.1:{port}")
    monkeypatch.setenv("ALERT_EMAIL_TO", "ops@vendor.example, billing@vendor.example")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", hook.url)
    names = {s.name for s in world.defs().get_repository_def().sensor_defs}
    assert {"failure_email_alert_sensor", "failure_webhook_alert_sensor", "month_outcome_alert_sensor"} <= names

    world.admin.revoke_partner("org-p-002")  # p-002's key is refused: the push step fails
    result = world.run(OCT_KEY)
    assert not result.success

    world.evaluate("failure_email_alert_sensor", result)
    assert inbox.logins == [("alert-bot@vendor.example", SMTP_PASSWORD)]
    ((recipients, message),) = inbox.messages
    assert recipients == ["ops@vendor.example", "billing@vendor.example"]
    assert message["Subject"] == "gradient-billing-sync: monthly_billing failed"
    body = message.get_body().get_content()
    assert result.run_id in body and "2026-10 FAILED" in body and "p-002" in body

    world.evaluate("failure_webhook_alert_sensor", result)
    ((path, payload),) = hook.posts
    assert path == f"/services/{HOOK_TOKEN}" and set(payload) == {"text"}
    text = payload["text"]
    assert "monthly_billing 2026-10 FAILED" in text and result.run_id in text
    assert "gradient_unit_counts" in text and "p-002" in text
    sent = body + text + " ".join(str(e.message) for e in result.all_events)
    for secret in secrets(world):
        assert secret not in sent


def test_partial_and_superseded_months_warn_and_delivered_months_do_not(world, smtps, hook, monkeypatch):
    inbox, port = smtps
    monkeypatch.setenv("ALERT_SMTP_URL", f"smtps://alert-bot:{SMTP_PASSWORD}@127.0.0.1:{port}")
    monkeypatch.setenv("ALERT_EMAIL_TO", "ops@vendor.example")
    monkeypatch.setenv("ALERT_EMAIL_FROM", "billing-alerts@vendor.example")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", hook.url)

    # October for p-001 only (unmapped lines of p-003 are not involved): delivered, no warning
    october = world.run(OCT_KEY, partner_ids=["p-001"])
    assert october.success
    world.evaluate("month_outcome_alert_sensor", october)
    assert hook.posts == [] and inbox.messages == []

    # September: p-001 already holds October (superseded), the others get September: partial
    september = world.run(SEP_KEY)
    assert september.success
    world.evaluate("month_outcome_alert_sensor", september)
    (partial,) = hook.texts()
    assert "monthly_billing 2026-09 ended PARTIAL" in partial and september.run_id in partial
    assert "p-001: superseded" in partial and "p-002" not in partial
    assert "run --month 2026-09 --force-superseded" in partial
    ((recipients, mail),) = inbox.messages
    assert recipients == ["ops@vendor.example"]
    assert mail["From"] == "billing-alerts@vendor.example"
    assert mail["Subject"] == "gradient-billing-sync: 2026-09 ended partial"
    assert "p-001: superseded" in mail.get_content()

    # August: every partner holds a newer month: superseded
    august = world.run("2026-08-01")
    assert august.success
    world.evaluate("month_outcome_alert_sensor", august)
    superseded = hook.texts()[-1]
    assert "2026-08 ended SUPERSEDED" in superseded
    for partner_id in ("p-001", "p-002", "p-003"):
        assert f"{partner_id}: superseded" in superseded
    assert len(inbox.messages) == 2

    # October for everyone: the others move on to it, p-001 has it already; p-003's unmapped
    # lines make the month delivered_with_unmapped, not plain delivered: it warns, naming them
    again = world.run(OCT_KEY)
    assert again.success
    world.evaluate("month_outcome_alert_sensor", again)
    assert len(hook.posts) == 3 and len(inbox.messages) == 3
    unmapped = hook.texts()[-1]
    assert "2026-10 ended DELIVERED_WITH_UNMAPPED" in unmapped and "p-003: " in unmapped
    assert "p-001" not in unmapped and "not billed" in unmapped
    for text in hook.texts() + [m.get_content() for _, m in inbox.messages]:
        for secret in secrets(world):
            assert secret not in text


def test_outcome_is_derived_from_the_ledger_when_the_run_has_no_tag():
    assert alerts.derive_outcome({}) is None
    assert alerts.derive_outcome({"p-1": {"delivered": 4}, "p-2": {"delivered": 1, "unmapped": 2}}) == "delivered_with_unmapped"
    assert alerts.derive_outcome({"p-1": {"delivered": 4}}) == "delivered"
    assert alerts.derive_outcome({"p-1": {"superseded": 4}, "p-2": {"superseded": 1}}) == "superseded"
    assert alerts.derive_outcome({"p-1": {"delivered": 4}, "p-2": {"superseded": 1}}) == "partial"
    assert alerts.derive_outcome({"p-1": {"delivered": 4, "failed": 1}}) == "partial"
    assert alerts.derive_outcome({"p-1": {"failed": 1}}) == "failed"


# =========================================================================== hostile product data


def test_webhook_and_email_warnings_carry_no_slack_control_sequence_from_the_data(world, smtps, hook, monkeypatch):
    """Partners whose ids are Slack control sequences (and CRLF, RTL, 10 KB) end a real month
    superseded: the month-outcome sensor's webhook text shows them as inert text, one line each."""
    from pipeline.gradient import ledger

    inbox, port = smtps
    monkeypatch.setenv("ALERT_SMTP_URL", f"smtps://alert-bot:{SMTP_PASSWORD}@127.0.0.1:{port}")
    monkeypatch.setenv("ALERT_EMAIL_TO", "ops@vendor.example")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", hook.url)
    assert world.run(OCT_KEY, partner_ids=["p-001"]).success
    september = world.run(SEP_KEY)
    assert september.success
    state = StateDatabase(url=world.env["STATE_DB_URL"]).engine()
    hostile_ids = [*hostile.SLACK, hostile.CRLF, hostile.LONG, *hostile.RTL_EMOJI]
    ledger.record(state, [
        ledger.LedgerEntry(partner_id=pid, month=dt.date(2026, 9, 1), account_id=f"acct-{i}", sku="SAT",
                           service_id=None, value=1, outcome=ledger.SUPERSEDED, http_status=None, detail=None,
                           run_id=september.run_id)
        for i, pid in enumerate(hostile_ids)
    ])
    world.evaluate("month_outcome_alert_sensor", september)
    ((_, payload),) = hook.posts
    text = payload["text"]
    assert "2026-09 ended PARTIAL" in text and "&lt;!channel&gt;: superseded 1" in text
    assert "&lt;https://evil.example/pay|Click&gt;" in text and "&lt;@U123&gt; &amp; &lt;#C1|general&gt;" in text
    assert "<" not in text and ">" not in text
    assert "\r" not in text and "\n" not in text and "\u202e" not in text
    assert len(text) < 4000  # the 10 KB id is shortened
    ((_, mail),) = inbox.messages
    body = mail.get_content()
    assert "Bcc:" not in str(mail).split("\n\n", 1)[0]  # the CRLF id forged no header
    assert "<!channel>: superseded 1" in body  # plain text e-mail: shown as it is, harmless there


def test_a_failure_webhook_escapes_what_it_posts(hook):
    alerts.post_webhook(hook.url, "run failed for <!channel> at <https://evil.example/pay|Click> & co")
    ((_, payload),) = hook.posts
    assert payload == {"text": "run failed for &lt;!channel&gt; at &lt;https://evil.example/pay|Click&gt; &amp; co"}


def test_no_gradient_alert_on_an_account_id_that_gradient_refuses(world):
    """A failed account with a 159-character id (refused by the id limits when the counts were
    pushed) gets no Gradient alert either; the partner's valid accounts do, and the skip is logged."""
    import asyncio

    from pipeline.automation.failures import AffectedPartner
    from pipeline.demo.data import demo_partner_key
    from pipeline.gradient.client import Secret
    from pipeline.gradient.load import PartnerTarget, raise_failure_alerts
    from pipeline.resources import GradientResource
    from pipeline.source.partners import PartnerConnection

    too_long = "c" * 159
    affected = [AffectedPartner("p-001", "2026-10", [too_long, "c-001-0001", "..", "c-001-0002"])]
    target = PartnerTarget(PartnerConnection("p-001", "connected", None, None, None), Secret(demo_partner_key("p-001")))
    logged: list[str] = []
    gradient = GradientResource(base_url=world.env["GRADIENT_BASE_URL"], vendor_api_key=VENDOR_KEY)

    async def raise_them() -> int:
        async with gradient.client() as client:
            return await raise_failure_alerts(client, {"p-001": target}, affected, "run-0123456789", 5, log=logged.append)

    assert asyncio.run(raise_them()) == 2
    alerted = sorted(a["accountId"] for a in world.admin.state()["partners"]["org-p-001"]["alerts"])
    assert alerted == ["c-001-0001", "c-001-0002"]
    assert [line for line in logged if "159 characters" in line and "no alert" in line]
    assert [line for line in logged if "dot segment" in line]
    assert all(len(line) < 400 for line in logged)  # the id is shortened in the log
