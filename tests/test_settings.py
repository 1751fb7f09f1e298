"""Configuration: one settings object, validated up front, failures a retry cannot fix never
retried. Real CLI (click's runner), real Dagster runs on a real instance, a real emulator over
HTTP, real SQLite product and state databases."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from assets import gradient_load as gl
from assets import month_end as me
from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline import settings
from pipeline.cli.main import main
from pipeline.demo.data import DemoSpec, load_demo_data
from pipeline.resources import (
    BillingRules,
    DatabaseUnavailableError,
    GradientResource,
    PartnerSources,
    ProductDatabase,
    StateDatabase,
    default_resources,
    engine_for,
    is_retryable,
)
from pipeline.settings import ConfigurationError, load_settings
from pipeline.store.months import load_billable_counts
from tests.conftest import POSTGRES_ADMIN_URL, require_postgres

VENDOR_KEY = "vendor-key-7f3a9c"
DB_PASSWORD = "pw-5be1d0"
MONTH = "2026-10"
PARTITION = "2026-10-01"
ASSETS = [me.utilization_extract, me.validated_utilization, me.billable_counts,
          gl.gradient_services, gl.gradient_accounts, gl.gradient_unit_counts]


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(VENDOR_KEY) as server, EmulatorAdmin(server.base_url) as admin:
        yield server, admin


@pytest.fixture
def env(tmp_path, monkeypatch, emulator):
    """A good configuration pointing at this test's files and the emulator."""
    server, admin = emulator
    admin.clear_requests()
    fernet = Fernet.generate_key().decode()
    values = {
        "GBS_DATA_DIR": str(tmp_path / "var"),
        "PRODUCT_DB_URL": f"sqlite:///{tmp_path / 'product.db'}",
        "STATE_DB_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "GRADIENT_BASE_URL": server.base_url,
        "GRADIENT_VENDOR_API_KEY": VENDOR_KEY,
        "GRADIENT_KEY_ENCRYPTION_KEYS": fernet,
        "QUARANTINE_THRESHOLD": "0.5",
        "FIRST_BILLING_MONTH": "2024-01",
    }
    for name in settings.ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    engine_for.cache_clear()
    yield values
    engine_for.cache_clear()


@pytest.fixture
def statements():
    """(database, statement) for every SQL statement any engine executes while the test runs."""
    seen: list[tuple[str, str]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((conn.engine.url.database or "", statement))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def seed(url: str, fernet: str, connected: int = 1) -> None:
    spec = DemoSpec(partners=1, connected_partners=connected, companies_per_partner=(2, 2),
                    users_per_company=(3, 3), end_month=date(2026, 10, 1), history_months=1,
                    include_bad_rows=False)
    load_demo_data(engine_for(url), spec, encryption_keys=fernet)


# ------------------------------------------------------------------ the bad configuration table
MISSING_FILE = "/nonexistent/gbs/query.sql"
# (variable, value, words the error must carry besides the name: what is wrong / an example)
# A fixed, valid Fernet key: test ids must not change between collections (pytest-xdist).
TEST_FERNET_KEY = "A" * 43 + "="

BAD_CONFIGURATION = [
    ("PRODUCT_DB_URL", "not a url", "SQLAlchemy database URL"),
    ("PRODUCT_DB_URL", f"nosuchdriver://reader:{DB_PASSWORD}@db/product", "postgresql+psycopg2://"),
    ("STATE_DB_URL", "db.internal:5432/billing_state", "SQLAlchemy database URL"),
    ("BILLING_TIMEZONE", "Mars/Olympus_Mons", "America/New_York"),
    ("QUARANTINE_THRESHOLD", "lots", "not a number"),
    ("QUARANTINE_THRESHOLD", "1.5", "between 0 and 1"),
    ("QUARANTINE_THRESHOLD", "-0.1", "between 0 and 1"),
    ("UTILIZATION_SQL", MISSING_FILE, "does not exist"),
    ("SERVICES_SQL", "/", "is a directory"),
    ("CONNECTIONS_SQL", MISSING_FILE, "does not exist"),
    ("COMPANIES_SQL", MISSING_FILE, "does not exist"),
    ("SYNC_REQUESTS_SQL", MISSING_FILE, "does not exist"),
    ("GBS_DATA_DIR", __file__, "is a file"),
    ("GRADIENT_BASE_URL", "not a url", "https://app.usegradient.com"),
    ("GRADIENT_BASE_URL", "ftp://gradient.example", "https://app.usegradient.com"),
    ("GRADIENT_BASE_URL", "http://", "https://app.usegradient.com"),
    ("GRADIENT_VENDOR_API_KEY", "   ", "blank"),
    ("GRADIENT_VENDOR_API_KEY", "vendor key\n", "line breaks"),
    ("GRADIENT_KEY_ENCRYPTION_KEYS", "not-a-fernet-key", "generate-encryption-key"),
    ("GRADIENT_KEY_ENCRYPTION_KEYS", f"{TEST_FERNET_KEY},zzz", "key #2"),
    ("GRADIENT_MAX_REQUESTS_PER_SECOND", "fast", "such as 100"),
    ("GRADIENT_MAX_REQUESTS_PER_SECOND", "0", "positive"),
    ("GRADIENT_MAX_REQUESTS_PER_SECOND", "-5", "positive"),
    ("GRADIENT_MAX_REQUESTS_PER_SECOND", "inf", "positive"),
    ("GRADIENT_FAILURE_ALERTS", "maybe", "true or false"),
    ("MONTH_WATCH_LOOKBACK_MONTHS", "three", "such as 3"),
    ("MONTH_WATCH_LOOKBACK_MONTHS", "0", "positive"),
    ("MONTH_WATCH_LOOKBACK_MONTHS", "1.5", "whole number"),
    ("MONTH_WATCH_INTERVAL_SECONDS", "hourly", "such as 3600"),
    ("MONTH_WATCH_INTERVAL_SECONDS", "0", "positive"),
    ("GBS_SENSORS_DEFAULT_STATUS", "paused", "stopped"),
    ("FIRST_BILLING_MONTH", "last year", "YYYY-MM"),
    ("BILLING_SCHEDULE_DAY", "31", "between 1 and 28"),
    ("BILLING_SCHEDULE_DAY", "first", "between 1 and 28"),
    ("BILLING_SCHEDULE_TIME", "8am", "HH:MM"),
    ("BILLING_SCHEDULE_TIME", "25:00", "HH:MM"),
    ("BILLING_SCHEDULE_TIMEZONE", "Mars/Olympus", "IANA time zone"),
    ("DAGSTER_HOME", "relative/home", "absolute"),
    ("DAGSTER_HOME", __file__, "not a directory"),
    ("STATEMENTS_SMTP_URL", "mail.example.com", "smtps://"),
    ("PARTNER_CONTACTS_SQL", MISSING_FILE, "does not exist"),
    ("ALERT_SMTP_URL", "http://mail.example.com", "smtps://"),
    ("ALERT_WEBHOOK_URL", "hooks.slack.com/services/T0/B0/X", "http(s) URL"),
]


def test_a_deployment_must_fix_its_first_billing_month(env, monkeypatch):
    monkeypatch.delenv("FIRST_BILLING_MONTH")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert list(raised.value.problems) == ["FIRST_BILLING_MONTH"]
    assert "FIRST_BILLING_MONTH is not set but PRODUCT_DB_URL is" in str(raised.value)
    assert "FIRST_BILLING_MONTH=2025-01" in str(raised.value)
    # the embedded demo (no PRODUCT_DB_URL) keeps its year-back default
    monkeypatch.delenv("PRODUCT_DB_URL")
    assert load_settings().first_billing_month is None
    # ... and so does the demo, which points PRODUCT_DB_URL at the embedded database itself
    monkeypatch.setenv("PRODUCT_DB_URL", f"sqlite:///{load_settings().data_dir / 'product.db'}")
    assert load_settings().first_billing_month is None


def test_the_schedule_clock_follows_the_billing_timezone_unless_given(env, monkeypatch):
    config = load_settings()
    assert (config.schedule_cron, config.schedule_timezone) == ("0 8 1 * *", "America/New_York")
    monkeypatch.setenv("BILLING_TIMEZONE", "Asia/Tokyo")
    monkeypatch.setenv("BILLING_SCHEDULE_DAY", "2")
    monkeypatch.setenv("BILLING_SCHEDULE_TIME", "6:30")
    config = load_settings()
    assert (config.schedule_cron, config.schedule_timezone) == ("30 6 2 * *", "Asia/Tokyo")
    # another zone is fine when its clock always comes after the month closed in the billing zone
    monkeypatch.setenv("BILLING_SCHEDULE_TIMEZONE", "America/New_York")
    monkeypatch.setenv("BILLING_SCHEDULE_DAY", "1")
    monkeypatch.setenv("BILLING_SCHEDULE_TIME", "08:00")
    assert load_settings().schedule_timezone == "America/New_York"
    # ... and refused when it can fire before: 00:30 New York is still the last day in Honolulu
    monkeypatch.setenv("BILLING_TIMEZONE", "Pacific/Honolulu")
    monkeypatch.setenv("BILLING_SCHEDULE_TIME", "00:30")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert list(raised.value.problems) == ["BILLING_SCHEDULE_TIMEZONE"]
    assert "would bill the wrong month" in str(raised.value)


@pytest.mark.parametrize(("name", "value", "words"), BAD_CONFIGURATION,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_CONFIGURATION])
def test_a_bad_variable_is_one_clear_error_before_any_work(env, emulator, statements, monkeypatch,
                                                           name, value, words):
    _, admin = emulator
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert list(raised.value.problems) == [name]
    message = str(raised.value)
    assert name in message and words in message
    if name in settings.SECRET_NAMES | settings.URL_NAMES and value.strip():
        assert value.strip() not in message
    assert DB_PASSWORD not in message

    # the code location's resources are not built...
    with pytest.raises(ConfigurationError, match=name):
        default_resources()
    # ...and the CLI stops at start: nothing read from any database, nothing sent to Gradient
    result = invoke("run", "--month", MONTH)
    assert result.exit_code != 0
    assert name in result.output and "1 setting is wrong" in result.output
    assert statements == []
    assert admin.requests() == []


def test_a_required_vendor_key_that_is_missing_is_named(env, monkeypatch):
    monkeypatch.delenv("GRADIENT_VENDOR_API_KEY")
    monkeypatch.setenv("GRADIENT_BASE_URL", "https://app.usegradient.com")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert list(raised.value.problems) == ["GRADIENT_VENDOR_API_KEY"]
    assert "is not set" in str(raised.value)


def test_every_bad_variable_is_listed_in_one_error(env, monkeypatch):
    for name, value in [("GRADIENT_MAX_REQUESTS_PER_SECOND", "fast"), ("BILLING_TIMEZONE", "Nowhere"),
                        ("STATE_DB_URL", "garbage")]:
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert set(raised.value.problems) == {"GRADIENT_MAX_REQUESTS_PER_SECOND", "BILLING_TIMEZONE", "STATE_DB_URL"}
    assert str(raised.value).startswith("3 settings are wrong")


def test_unset_and_empty_variables_take_their_defaults(env, monkeypatch):
    for name in settings.ENV_NAMES:
        monkeypatch.setenv(name, "")
    config = load_settings()
    assert config.billing_timezone == settings.DEFAULT_BILLING_TIMEZONE
    assert config.gradient_base_url == settings.DEFAULT_GRADIENT_BASE_URL
    assert config.vendor_api_key == settings.DEMO_VENDOR_API_KEY
    assert config.gradient_max_requests_per_second == 100
    assert config.state_db == f"sqlite:///{settings.REPO_ROOT / 'var' / 'state.db'}"
    assert settings.is_set("STATE_DB_URL") is False


def test_the_code_location_shows_where_values_come_from_never_a_secret(env):
    resources = default_resources()
    for resource, field in [("product_db", "url"), ("state_db", "url"), ("gradient", "base_url"),
                            ("gradient", "vendor_api_key"), ("partner_sources", "encryption_keys")]:
        value = getattr(resources[resource], field)
        assert isinstance(value, dg.EnvVar), (resource, field)
    outside = default_resources(env_vars=False)
    assert outside["product_db"].url == env["PRODUCT_DB_URL"]
    assert outside["gradient"].base_url == env["GRADIENT_BASE_URL"]


# ------------------------------------------------------------------ explain with URLs in the environment
def test_explain_works_when_the_database_urls_come_from_the_environment(env):
    """Issue: `explain` crashed with "Could not parse SQLAlchemy URL" whenever PRODUCT_DB_URL
    or STATE_DB_URL was set (an unresolved EnvVar reached SQLAlchemy)."""
    seed(env["PRODUCT_DB_URL"], env["GRADIENT_KEY_ENCRYPTION_KEYS"])
    resources = default_resources()
    result = dg.materialize([me.utilization_extract, me.validated_utilization, me.billable_counts],
                            partition_key=PARTITION, resources=resources)
    assert result.success
    row = load_billable_counts(engine_for(env["STATE_DB_URL"]), date(2026, 10, 1)).iloc[0]

    out = invoke("explain", "--month", MONTH, "--partner", row.partner_id,
                 "--company", row.company_id, "--sku", row.sku)
    assert out.exit_code == 0, out.output
    assert row.company_id in out.output and row.sku in out.output


# ------------------------------------------------------------------ check-config
def test_check_config_prints_every_setting_with_its_source_and_no_secret(env, emulator, monkeypatch):
    _, admin = emulator
    seed(env["PRODUCT_DB_URL"], env["GRADIENT_KEY_ENCRYPTION_KEYS"])
    require_postgres()
    state = make_url(POSTGRES_ADMIN_URL).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    monkeypatch.setenv("STATE_DB_URL", state)
    result = invoke("check-config")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in result.output.splitlines()
             if line and line.split()[0] in settings.ENV_NAMES}
    assert set(lines) == set(settings.ENV_NAMES)
    assert lines["GRADIENT_VENDOR_API_KEY"] == ["environment", "set"]
    assert lines["GRADIENT_KEY_ENCRYPTION_KEYS"] == ["environment", "set"]
    assert lines["BILLING_TIMEZONE"] == ["default", "America/New_York"]
    assert lines["STATE_DB_URL"] == ["environment", make_url(state).render_as_string(hide_password=True)]
    assert "ok      product database at sqlite:///" in result.output
    assert f"ok      state database at {make_url(state).render_as_string(hide_password=True)}" in result.output
    assert "ok      Gradient answers at" in result.output
    for secret in (VENDOR_KEY, env["GRADIENT_KEY_ENCRYPTION_KEYS"], DB_PASSWORD):
        assert secret not in result.output
    assert admin.requests() == []  # the reachability check sends nothing to the vendor API


def test_check_config_fails_on_an_unreachable_gradient_and_a_missing_product_database(env, monkeypatch):
    monkeypatch.setenv("GRADIENT_BASE_URL", "http://127.0.0.1:9")
    result = invoke("check-config", "--timeout", "2")
    assert result.exit_code == 1
    assert "GRADIENT_BASE_URL='http://127.0.0.1:9' is unreachable" in result.output
    assert "PRODUCT_DB_URL names a SQLite file that does not exist" in result.output
    assert not (Path(env["PRODUCT_DB_URL"].removeprefix("sqlite:///"))).exists()  # looked for, not created


def test_check_config_names_a_bad_variable_without_showing_secrets(env, monkeypatch):
    monkeypatch.setenv("GRADIENT_KEY_ENCRYPTION_KEYS", "garbage-key-value")
    result = invoke("check-config")
    assert result.exit_code == 1
    assert "GRADIENT_KEY_ENCRYPTION_KEYS" in result.output and "WRONG" in result.output
    assert "garbage-key-value" not in result.output and VENDOR_KEY not in result.output


# ------------------------------------------------------------------ runs fail once, before any row
def run_resources(env, **overrides) -> dict:
    base = {
        "product_db": ProductDatabase(url=env["PRODUCT_DB_URL"]),
        "state_db": StateDatabase(url=env["STATE_DB_URL"]),
        "billing_rules": BillingRules(quarantine_threshold=0.5),
        "partner_sources": PartnerSources(encryption_keys=env["GRADIENT_KEY_ENCRYPTION_KEYS"]),
        "gradient": GradientResource(base_url=env["GRADIENT_BASE_URL"], vendor_api_key=VENDOR_KEY),
    }
    return {**base, **overrides}


def retrying_instance():
    """A test instance that re-executes failed runs automatically, as deployments do."""
    return dg.instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2}})


def will_retry(instance: dg.DagsterInstance, run_id: str) -> str | None:
    return instance.get_run_by_id(run_id).tags.get("dagster/will_retry")


def attempts(instance: dg.DagsterInstance, run_id: str, step: str) -> tuple[int, int]:
    """(step starts, retries) of one step in a run, from the instance's event log."""
    events = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(run_id).records
              if r.event_log_entry.dagster_event and r.event_log_entry.dagster_event.step_key == step]
    kinds = [e.event_type_value for e in events]
    return kinds.count("STEP_START"), kinds.count("STEP_UP_FOR_RETRY")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (lambda env: {"partner_sources": PartnerSources(encryption_keys="not-a-fernet-key")},
         "GRADIENT_KEY_ENCRYPTION_KEYS"),
        (lambda env: {"gradient": GradientResource(base_url=env["GRADIENT_BASE_URL"], vendor_api_key=" ")},
         "GRADIENT_VENDOR_API_KEY"),
        (lambda env: {"gradient": GradientResource(base_url="gradient.example", vendor_api_key=VENDOR_KEY)},
         "GRADIENT_BASE_URL"),
    ],
    ids=["encryption-keys", "vendor-key", "base-url"],
)
def test_a_wrong_gradient_setting_fails_the_run_once_before_any_row_is_read(
    env, emulator, statements, override, named
):
    _, admin = emulator
    seed(env["PRODUCT_DB_URL"], env["GRADIENT_KEY_ENCRYPTION_KEYS"])
    statements.clear()
    with retrying_instance() as instance:
        result = dg.materialize(ASSETS, partition_key=PARTITION, instance=instance,
                                resources=run_resources(env, **override(env)), raise_on_error=False)
        assert not result.success
        assert attempts(instance, result.run_id, "utilization_extract") == (1, 0)
        assert will_retry(instance, result.run_id) == "false"  # nor is the run re-executed
    failure = result.failure_data_for_node("utilization_extract").error.message
    assert named in failure
    assert [s for db, s in statements if db.endswith("product.db")] == []
    assert admin.requests() == []


def test_a_sql_syntax_error_fails_the_step_once(env, tmp_path, statements):
    seed(env["PRODUCT_DB_URL"], env["GRADIENT_KEY_ENCRYPTION_KEYS"])
    broken = tmp_path / "utilization.sql"
    broken.write_text("SELEC partner_id FROM service_enrollments WHERE :month_start < :month_end")
    resources = run_resources(env, product_db=ProductDatabase(url=env["PRODUCT_DB_URL"], utilization_sql=str(broken)))
    with retrying_instance() as instance:
        result = dg.materialize(ASSETS[:3], partition_key=PARTITION, instance=instance,
                                resources=resources, raise_on_error=False)
        assert not result.success
        assert attempts(instance, result.run_id, "utilization_extract") == (1, 0)
        assert will_retry(instance, result.run_id) == "false"
    failure = result.failure_data_for_node("utilization_extract").error.message
    assert "syntax error" in failure and "a retry cannot help" in failure
    assert len([s for _, s in statements if "SELEC partner_id" in s]) == 1


def test_a_missing_sql_file_fails_the_step_once(env):
    resources = run_resources(env, product_db=ProductDatabase(url=env["PRODUCT_DB_URL"], utilization_sql=MISSING_FILE))
    with dg.instance_for_test() as instance:
        result = dg.materialize(ASSETS[:3], partition_key=PARTITION, instance=instance,
                                resources=resources, raise_on_error=False)
        assert attempts(instance, result.run_id, "utilization_extract") == (1, 0)
    assert MISSING_FILE in result.failure_data_for_node("utilization_extract").error.message


def test_an_unreachable_gradient_still_lets_the_month_be_counted(env, statements):
    """Reachability is checked where the push starts: the month is counted and stored, the
    push fails naming GRADIENT_BASE_URL, and a later run may still succeed."""
    seed(env["PRODUCT_DB_URL"], env["GRADIENT_KEY_ENCRYPTION_KEYS"])
    resources = run_resources(env, gradient=GradientResource(base_url="http://127.0.0.1:9", vendor_api_key=VENDOR_KEY))
    with retrying_instance() as instance:
        result = dg.materialize(ASSETS, partition_key=PARTITION, instance=instance,
                                resources=resources, raise_on_error=False)
        assert attempts(instance, result.run_id, "gradient_services") == (1, 0)
        # Gradient may answer later: the instance's run re-execution stays on
        assert will_retry(instance, result.run_id) == "true"
    assert "GRADIENT_BASE_URL='http://127.0.0.1:9' is unreachable" in (
        result.failure_data_for_node("gradient_services").error.message
    )
    assert len(load_billable_counts(engine_for(env["STATE_DB_URL"]), date(2026, 10, 1)))


# ------------------------------------------------------------------ which errors are retried
def test_only_connection_level_errors_are_retryable(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        with pytest.raises(sa.exc.OperationalError) as syntax:
            conn.execute(sa.text("SELEC 1"))
        with pytest.raises(sa.exc.OperationalError) as no_table:
            conn.execute(sa.text("SELECT * FROM missing_table"))
    locked = sa.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    with pytest.raises(sa.exc.ArgumentError) as bad_url:
        sa.create_engine("PRODUCT_DB_URL")

    assert is_retryable(DatabaseUnavailableError("the product database at x is unreachable"))
    assert is_retryable(locked)
    assert not is_retryable(syntax.value)
    assert not is_retryable(no_table.value)
    assert not is_retryable(bad_url.value)
    assert not is_retryable(ConfigurationError("UTILIZATION_SQL='x' does not exist"))
    assert not is_retryable(sa.exc.ProgrammingError("SELEC 1", {}, Exception("syntax error at or near")))
    assert not is_retryable(ValueError("year 10000 is out of range"))


def test_the_code_location_refuses_to_load_with_a_bad_variable(tmp_path):
    """What `dagster dev` and the daemon see: the load fails with the one error naming it."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "dagster"), "definitions", "validate", "-w", str(settings.REPO_ROOT / "workspace.yaml")],
        cwd=settings.REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path), "GBS_DATA_DIR": str(tmp_path),
             "GRADIENT_MAX_REQUESTS_PER_SECOND": "fast", "GRADIENT_VENDOR_API_KEY": VENDOR_KEY},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "GRADIENT_MAX_REQUESTS_PER_SECOND='fast' is not a number; give requests per second such as 100" in output
    assert VENDOR_KEY not in output


def test_a_month_that_cannot_be_counted_is_not_re_executed(env):
    """Counting a month that was never validated fails for certain: no step retry, no run retry."""
    with retrying_instance() as instance:
        result = dg.materialize([me.billable_counts], partition_key=PARTITION, instance=instance,
                                resources=run_resources(env), raise_on_error=False)
        assert attempts(instance, result.run_id, "billable_counts") == (1, 0)
        assert will_retry(instance, result.run_id) == "false"
    assert "has not been validated" in result.failure_data_for_node("billable_counts").error.message


def test_a_url_naming_only_the_database_gets_the_installed_driver(postgres_url, monkeypatch):
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3 and mysql:// as mysqlclient, neither of
    which the project installs: such URLs must still work, with the drivers it does install."""
    from pipeline.resources import StateDatabase

    bare = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    monkeypatch.setenv("STATE_DB_URL", bare)
    config = settings.load_settings()
    assert config.state_db.startswith("postgresql+psycopg2://")
    engine = StateDatabase(url=bare).engine()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    assert settings.with_installed_driver("mysql://root@127.0.0.1:3306/test").startswith("mysql+pymysql://")
    assert settings.with_installed_driver("sqlite:///var/state.db") == "sqlite:///var/state.db"
