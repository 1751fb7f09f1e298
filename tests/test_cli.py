"""The command line, run as a user would (click's runner, real databases, real emulator)."""

from __future__ import annotations

import subprocess
import sys
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
    # as on a fresh machine: nothing says which month is first (the demo needs no setting)
    monkeypatch.delenv("FIRST_BILLING_MONTH", raising=False)
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


# --------------------------------------------------------------------------- fast answers
@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"]])
def test_help_and_version_load_neither_dagster_nor_the_pipeline(args):
    """`--help` and `--version` answer without importing Dagster, pandas, SQLAlchemy or the
    settings (what made `--version` take seconds): checked in a fresh interpreter."""
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "try:\n"
        f"    main({args!r}, prog_name='gradient-billing-sync')\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'pandas', 'sqlalchemy', 'pydantic_settings'})\n"
        "print('HEAVY', heavy, 'SETTINGS', 'pipeline.settings' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gradient-billing-sync" in done.stdout
    assert "HEAVY [] SETTINGS False" in done.stdout, done.stdout


# --------------------------------------------------------------------------- months checked up front
def _label(month: date) -> str:
    return month.strftime("%Y-%m")


def test_months_outside_the_partitions_are_refused_up_front_with_the_reason(env, tmp_path):
    """Every command that takes a month says why a month cannot be run, before anything runs
    or is sent: no state database, no Dagster run, no DagsterUnknownPartitionError."""
    from pipeline.billing.month import add_months
    from pipeline.partitions import monthly_partitions

    keys = monthly_partitions.get_partition_keys()
    first, newest = date.fromisoformat(keys[0]), date.fromisoformat(keys[-1])
    still_open, too_early = add_months(newest, 1), add_months(first, -1)
    not_closed = f"{_label(still_open)} is not closed yet; the newest closed month is {_label(newest)}"
    before = f"{_label(too_early)} is before FIRST_BILLING_MONTH {_label(first)}"
    cases = [
        (["run", "--month", _label(newest), "--month", _label(still_open)], not_closed),
        (["backfill", "--from", _label(newest), "--to", _label(still_open)], not_closed),
        (["backfill", "--from", _label(too_early), "--to", _label(first), "--webserver", "http://127.0.0.1:9"], before),
        (["statement", "--month", _label(too_early)], before),
        (["preview", "--month", _label(still_open)], not_closed),
        (["explain", "--month", _label(too_early), "--partner", "p", "--company", "c", "--sku", "s"], before),
        (["check-source", "--month", _label(still_open)], not_closed),
    ]
    for args, reason in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert reason in result.output and "Nothing was run" in result.output, (args, result.output)
        assert "DagsterUnknownPartitionError" not in result.output and "Traceback" not in result.output
    assert "set FIRST_BILLING_MONTH=" in CliRunner().invoke(main, cases[3][0]).output
    # nothing ran: no state database, no run in the instance, the month before it not pushed
    assert not (tmp_path / "state.db").exists()
    assert list((tmp_path / "dagster-home").iterdir()) == []


# --------------------------------------------------------------------------- partner keys, rotate
HOSTILE_PARTNER = "o'hara\r\n<!channel>=cmd"


def _check_line(output: str, what: str) -> str:
    (line,) = [line for line in output.splitlines() if what in line and line.startswith("  ")]
    return line.strip()


def test_a_wrong_encryption_key_is_named_per_partner_and_rotate_moves_the_keys_to_the_newest(env, monkeypatch, tmp_path):
    import os
    import sqlite3

    from pipeline.gradient.partner_keys import encrypt_partner_key
    from pipeline.source import product_schema as ps

    old = env["GRADIENT_KEY_ENCRYPTION_KEYS"]
    seeded = invoke("seed-demo", "--partners", "2", "--companies", "1-1", "--users", "1-2",
                    "--end-month", "2026-10", "--history-months", "1")
    assert seeded.exit_code == 0, seeded.output
    product = engine_for(env["PRODUCT_DB_URL"])
    with product.begin() as conn:  # a hostile partner id, connected with a key under the old key too
        conn.execute(sa.insert(ps.partners).values(partner_id=HOSTILE_PARTNER, name="Hostile",
                                                      created_at=sa.func.current_timestamp()))
        conn.execute(sa.insert(ps.gradient_connections).values(
            partner_id=HOSTILE_PARTNER, encrypted_api_key=encrypt_partner_key("hostile-secret-key", old),
            state="connected", updated_at=sa.func.current_timestamp()))
    monkeypatch.setenv("GRADIENT_BASE_URL", "http://127.0.0.1:9")
    new = generate_encryption_key()
    outputs = []

    def cli(*args):
        result = CliRunner().invoke(main, list(args))
        outputs.append(result.output)
        return result

    # the old key was replaced instead of kept after the new one: every partner is named
    monkeypatch.setenv("GRADIENT_KEY_ENCRYPTION_KEYS", new)
    checked = cli("check-config", "--timeout", "1")
    assert checked.exit_code == 1
    assert "FAILED  connected partners' stored API keys decrypt" in checked.output
    assert r"3 partners (o'hara\r\n<!channel>=cmd, p-001, p-002): no key in GRADIENT_KEY_ENCRYPTION_KEYS decrypts" in checked.output
    assert "add the key it had before after the new one" in checked.output
    assert "until `rotate` has run" not in checked.output
    status = cli("status")
    assert status.exit_code == 0, status.output
    for pid in ("p-001", "p-002"):
        (row,) = [line for line in status.output.splitlines() if line.startswith(pid)]
        assert "stored API key cannot be decrypted" in row and "check-config" in row
    refused = cli("rotate", "--out", str(tmp_path / "refused.sql"))
    assert refused.exit_code == 1 and "cannot be re-encrypted" in refused.output

    # the old key back after the new one: every key opens, rotate writes the re-encrypted keys
    monkeypatch.setenv("GRADIENT_KEY_ENCRYPTION_KEYS", f"{new},{old}")
    line = _check_line(cli("check-config", "--timeout", "1").output, "stored API keys decrypt")
    assert line.startswith("ok") and "3 of 3; 3 only with an older key" in line and "rotate" in line
    out = tmp_path / "rotate.sql"
    rotated = cli("rotate", "--out", str(out))
    assert rotated.exit_code == 0, rotated.output
    assert "wrote 3 re-encrypted partner keys" in rotated.output
    assert os.stat(out).st_mode & 0o777 == 0o600
    again = cli("rotate", "--out", str(out))
    assert again.exit_code != 0 and "never overwrites" in again.output
    with sqlite3.connect(env["PRODUCT_DB_URL"].removeprefix("sqlite:///")) as db:
        with open(out, encoding="utf-8", newline="") as sql:  # byte for byte: ids may hold CR LF
            db.executescript(sql.read())  # what the vendor applies to the product database

    # applied: the newest key alone opens every stored key, and the partners' keys are intact
    monkeypatch.setenv("GRADIENT_KEY_ENCRYPTION_KEYS", new)
    line = _check_line(cli("check-config", "--timeout", "1").output, "stored API keys decrypt")
    assert line == "ok      connected partners' stored API keys decrypt: 3 of 3"
    with product.connect() as conn:
        stored = dict(conn.execute(sa.select(ps.gradient_connections.c.partner_id,
                                             ps.gradient_connections.c.encrypted_api_key)).all())
    assert decrypt_partner_key(stored["p-001"], new, "p-001") == demo_partner_key("p-001")
    assert decrypt_partner_key(stored[HOSTILE_PARTNER], new, "x") == "hostile-secret-key"
    assert "every stored partner key opens with the newest key already" in cli(
        "rotate", "--out", str(tmp_path / "again.sql")).output
    everything = "\n".join(outputs)
    for secret in (old, new, demo_partner_key("p-001"), "hostile-secret-key"):
        assert secret not in everything


# --------------------------------------------------------------------------- check-config, causes
def test_check_config_shows_the_value_in_effect_and_where_it_comes_from(env, monkeypatch, tmp_path):
    from pipeline.cli.runs import instance_home
    from pipeline.partitions import monthly_partitions
    from pipeline.settings import reference_sql

    # the embedded default (no PRODUCT_DB_URL): the first month defaults to 12 months back
    for name in ("FIRST_BILLING_MONTH", "STATEMENTS_DIR", "DAGSTER_HOME", "UTILIZATION_SQL", "CONNECTIONS_SQL",
                 "PRODUCT_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    home = instance_home()
    with EmulatorServer(VENDOR_KEY) as server:
        monkeypatch.setenv("GRADIENT_BASE_URL", server.base_url)
        result = invoke("check-config", "--timeout", "5")
        monkeypatch.setenv("PRODUCT_DB_URL", env["PRODUCT_DB_URL"])
        deployment = invoke("check-config", "--timeout", "5")

    def rows_of(output: str) -> dict[str, list[str]]:
        return {line.split()[0]: line.split(None, 2)[1:] for line in output.splitlines()
                if line and not line.startswith(" ") and line.split()[0].isupper()}

    rows = rows_of(result.output)
    # (the partition set is fixed when the code is imported: this process imported it under the
    # tests' FIRST_BILLING_MONTH)
    assert rows["FIRST_BILLING_MONTH"] == ["default", f"{monthly_partitions.start:%Y-%m} (12 months before this month)"]
    # a deployment (its own product database) must fix its first month
    assert rows_of(deployment.output)["FIRST_BILLING_MONTH"][1].startswith("WRONG")
    assert "FIRST_BILLING_MONTH" in deployment.output and deployment.exit_code != 0
    assert rows["DAGSTER_HOME"][0] == "default" and rows["DAGSTER_HOME"][1].startswith(str(home))
    assert rows["STATEMENTS_DIR"] == ["default", str(tmp_path / "var" / "statements")]
    assert rows["UTILIZATION_SQL"] == ["default", f"{reference_sql('sqlite', 'utilization.sql')} (reference schema)"]
    assert rows["CONNECTIONS_SQL"] == ["default", f"{reference_sql('sqlite', 'connections.sql')} (reference schema)"]
    assert rows["QUARANTINE_THRESHOLD"] == ["environment", "0.5"]
    assert "(not set)" not in result.output
    line = _check_line(result.output, "Gradient answers at")
    assert line.startswith("ok") and "it is up (its base URL answered HTTP" in line
    assert "\x1b[" not in result.output  # not a terminal: no colour codes


def test_an_unexpected_error_is_shown_as_itself_and_verbose_gives_its_trace(env, monkeypatch, tmp_path):
    """A statement that cannot be written (STATEMENTS_DIR is a file): the cause line is the
    OSError, not Dagster's "Error occurred while executing op"; --verbose adds the trace."""
    assert invoke("seed-demo", "--partners", "2", "--companies", "1-2", "--users", "1-3",
                  "--end-month", "2026-10", "--history-months", "1").exit_code == 0
    # count the month (a preview stores nothing): the push fails, Gradient is not there
    monkeypatch.setenv("GRADIENT_BASE_URL", "http://127.0.0.1:9")
    CliRunner().invoke(main, ["run", "--month", "2026-10"])
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the statements directory should be\n")
    monkeypatch.setenv("STATEMENTS_DIR", str(blocker))
    failed = CliRunner().invoke(main, ["statement", "--month", "2026-10"])
    assert failed.exit_code == 1
    (cause,) = [line for line in failed.output.splitlines() if "cause:" in line]
    assert "Not a directory" in cause or "File exists" in cause, failed.output
    assert "Error occurred while executing op" not in failed.output
    assert "Traceback" not in failed.output and "Stack Trace" not in failed.output
    verbose = CliRunner().invoke(main, ["--verbose", "statement", "--month", "2026-10"])
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.output or "Stack Trace" in verbose.output


def test_verbose_gives_the_trace_behind_a_deliberate_message_too(env, monkeypatch):
    """A command's own one-line message (here: a setting that does not parse) stays one line;
    --verbose adds the trace of the error behind it, and never a secret."""
    monkeypatch.setenv("GRADIENT_KEY_ENCRYPTION_KEYS", "not-a-fernet-key-3f9a")
    plain = CliRunner().invoke(main, ["encrypt-partner-key", "--partner-key", "k"])
    assert plain.exit_code == 1 and "GRADIENT_KEY_ENCRYPTION_KEYS" in plain.output
    assert "Traceback" not in plain.output
    verbose = CliRunner().invoke(main, ["--verbose", "encrypt-partner-key", "--partner-key", "k"])
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.output and "ConfigurationError" in verbose.output
    assert "not-a-fernet-key-3f9a" not in verbose.output


def _apply_script(url: str, script: str) -> None:
    """Run a SQL file as a DBA would, statements and all, on its own database."""
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.executescript(script)
        return
    connect_args = {}
    if url.startswith("mysql"):
        from pymysql.constants import CLIENT

        connect_args = {"client_flag": CLIENT.MULTI_STATEMENTS}
    engine = sa.create_engine(url, connect_args=connect_args)
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(script)
            while url.startswith("mysql") and cursor.nextset():
                pass
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


def test_rotate_writes_updates_each_product_database_applies_with_hostile_ids(env, monkeypatch, tmp_path, product_url):
    """The SQL rotate writes is the product dialect's own (quotes, backslashes, CR LF in an id
    quoted by SQLAlchemy), on SQLite, PostgreSQL and MariaDB."""
    from pipeline.gradient.partner_keys import encrypt_partner_key
    from pipeline.source import product_schema as ps

    monkeypatch.setenv("PRODUCT_DB_URL", product_url)
    engine_for.cache_clear()
    old, new = env["GRADIENT_KEY_ENCRYPTION_KEYS"], generate_encryption_key()
    hostile = "x'; DROP TABLE partners; --\\\r\n<!channel>"
    product = sa.create_engine(product_url)
    try:
        ps.metadata.create_all(product)
        with product.begin() as conn:
            for pid in (hostile, "p-1"):
                conn.execute(sa.insert(ps.partners).values(partner_id=pid, name=pid, created_at=sa.func.now()))
                conn.execute(sa.insert(ps.gradient_connections).values(
                    partner_id=pid, encrypted_api_key=encrypt_partner_key(f"key-of-{pid}", old),
                    state="connected", updated_at=sa.func.now()))
        monkeypatch.setenv("GRADIENT_KEY_ENCRYPTION_KEYS", f"{new},{old}")
        out = tmp_path / "rotate.sql"
        result = invoke("rotate", "--out", str(out))
        assert result.exit_code == 0, result.output
        with open(out, encoding="utf-8", newline="") as sql:
            _apply_script(product_url, sql.read())
        with product.connect() as conn:
            stored = dict(conn.execute(sa.select(ps.gradient_connections.c.partner_id,
                                                 ps.gradient_connections.c.encrypted_api_key)).all())
            assert conn.execute(sa.select(sa.func.count()).select_from(ps.partners)).scalar() == 2
    finally:
        product.dispose()
    assert set(stored) == {hostile, "p-1"}
    for pid, token in stored.items():
        assert decrypt_partner_key(token, new, pid) == f"key-of-{pid}"  # the newest key alone opens it
