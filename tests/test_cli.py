"""The command line, run as a user would (click's runner, real databases, real emulator)."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from pipeline.gradient import ledger
from pipeline.cli.main import main
from pipeline.demo.data import demo_partner_key
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.gradient.partner_keys import decrypt_partner_key, generate_encryption_key
from pipeline.resources import engine_for

VENDOR_KEY = "cli-vendor-key"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Everything the CLI reads, pointed at this test's own files."""
    key = generate_encryption_key()
    values = {
        "GBS_DATA_DIR": str(tmp_path / "var"),
        "PRODUCT_DB_URL": f"sqlite:///{tmp_path / 'product.db'}",
        "STATE_DB_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
        "GRADIENT_KEY_ENCRYPTION_KEYS": key,
        "QUARANTINE_THRESHOLD": "0.5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    # the CLI runs on DAGSTER_HOME's instance when set, else the repository's: keep tests' runs here
    home = tmp_path / "dagster-home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    engine_for.cache_clear()
    yield values
    engine_for.cache_clear()


def invoke(*args: str, input: str | None = None):
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result


def test_encrypt_partner_key_reads_stdin_and_never_echoes_the_key(env):
    result = invoke("encrypt-partner-key", input="partner-secret-123\n")
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert "partner-secret-123" not in result.output
    assert decrypt_partner_key(token, env["GRADIENT_KEY_ENCRYPTION_KEYS"], "p-x") == "partner-secret-123"


def test_encrypt_partner_key_explains_a_bad_encryption_key(env, monkeypatch):
    monkeypatch.setenv("GRADIENT_KEY_ENCRYPTION_KEYS", "not-a-fernet-key")
    result = invoke("encrypt-partner-key", "--partner-key", "k")
    assert result.exit_code != 0
    assert "GRADIENT_KEY_ENCRYPTION_KEYS" in result.output


def test_generate_encryption_key_prints_a_usable_key(env):
    key = invoke("generate-encryption-key").output.strip()
    from pipeline.gradient.partner_keys import encrypt_partner_key

    assert decrypt_partner_key(encrypt_partner_key("x", key), key, "p") == "x"


def test_seed_demo_takes_sizes_and_connects_partners(env):
    result = invoke("seed-demo", "--partners", "2", "--companies", "2-2", "--users", "3-3",
                    "--end-month", "2026-10", "--history-months", "2")
    assert result.exit_code == 0, result.output
    assert "2 partners" in result.output
    with engine_for(env["PRODUCT_DB_URL"]).connect() as conn:
        connected = conn.execute(sa.text("SELECT partner_id FROM gradient_connections")).scalars().all()
    assert sorted(connected) == ["p-001", "p-002"]


def test_run_rejects_a_malformed_month(env):
    result = CliRunner().invoke(main, ["run", "--month", "October"])
    assert result.exit_code != 0
    assert "YYYY-MM" in result.output


def test_backfill_runs_each_month_and_says_which_were_superseded(env, monkeypatch):
    spec_args = ["--partners", "2", "--companies", "2-3", "--users", "2-5",
                 "--end-month", "2026-11", "--history-months", "5"]
    assert invoke("seed-demo", *spec_args).exit_code == 0
    with EmulatorServer(VENDOR_KEY) as server, EmulatorAdmin(server.base_url) as admin:
        for pid in ("p-001", "p-002"):
            admin.register_partner(demo_partner_key(pid), name=pid, organization_id=f"org-{pid}",
                                   auto_map_all=True)
        monkeypatch.setenv("GRADIENT_BASE_URL", server.base_url)

        first = invoke("backfill", "--from", "2026-09", "--to", "2026-10")
        assert first.exit_code == 0, first.output
        assert "backfill 2026-09..2026-10: 2 months succeeded" in first.output
        assert "Gradient p-001: delivered" in first.output

        older = invoke("backfill", "--from", "2026-08", "--to", "2026-09")
        assert older.exit_code == 0, older.output
        assert "superseded" in older.output
        assert "delivered" not in older.output.split("2026-08:")[1]

        state = engine_for(env["STATE_DB_URL"])
        assert ledger.newest_delivered_month(state, "p-001") == date(2026, 10, 1)
        # Gradient still shows October: superseded months were recorded, not pushed
        october = {
            (e["account_id"], e["sku"]): e["value"]
            for e in ledger.entries_for(state, date(2026, 10, 1), ["p-001"])
            if e["outcome"] == "delivered"
        }
        shown = {(c["account_id"], c["service_name"]): c["unit_count"] for c in admin.counts()
                 if c["organization_id"] == "org-p-001"}
        assert sorted(shown.values()) == sorted(october.values())

        again = invoke("backfill", "--from", "2026-09", "--to", "2026-10")
        assert again.exit_code == 0
        # nothing new to send: a repeat has no double effect
        assert "Gradient p-001: delivered" not in again.output.split("2026-10:")[1]


def test_demo_runs_end_to_end_and_prints_per_partner_outcomes(env, monkeypatch):
    for name in ("PRODUCT_DB_URL", "STATE_DB_URL", "GRADIENT_KEY_ENCRYPTION_KEYS", "QUARANTINE_THRESHOLD"):
        monkeypatch.delenv(name)
    # the demo points GRADIENT_BASE_URL at its own emulator: have pytest restore it afterwards
    monkeypatch.setenv("GRADIENT_BASE_URL", "http://127.0.0.1:9")
    result = invoke("demo", "--months", "1")
    assert result.exit_code == 0, result.output
    assert "seeded demo data" in result.output
    assert "quarantine:" in result.output
    assert "Gradient p-001: delivered" in result.output
    assert "unmapped" in result.output  # the half-mapped partner
    assert "Gradient now shows org-p-001" in result.output
    assert "demo-partner-key" not in result.output


def test_backfill_on_a_webserver_that_is_not_there_says_so(env):
    """`backfill --webserver` goes through the Dagster GraphQL client: an unreachable webserver
    is a clear error naming the URL, and nothing runs here instead."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = invoke("backfill", "--from", "2026-09", "--to", "2026-10", "--webserver", url)
    assert result.exit_code != 0
    assert "the webserver refused the backfill" in result.output
    assert f"the Dagster webserver at {url}/graphql is unreachable" in result.output
    assert "months succeeded" not in result.output
