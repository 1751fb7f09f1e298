"""Configuration: one typed settings object read from the environment, validated in one place.

``load_settings()`` reads every variable the pipeline uses into ``Settings`` (pydantic-settings)
and raises one ``ConfigurationError`` naming every bad variable, what is wrong with it and an
example of a right value. The code location's resources and the CLI both start with it, so a
bad value stops them before any work. The helper functions below are thin reads of it.

Every setting has a default that needs no service: local SQLite files under ``var/`` in the
repository (or ``GBS_DATA_DIR``), so a fresh clone runs end to end as it is.
"""

from __future__ import annotations

import functools
import math
import os
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BILLING_TIMEZONE = "America/New_York"
DEFAULT_QUARANTINE_THRESHOLD = 0.01
DEFAULT_MAX_REQUESTS_PER_SECOND = 100.0
DEFAULT_MONTH_WATCH_LOOKBACK_MONTHS = 3
DEFAULT_MONTH_WATCH_INTERVAL_SECONDS = 3600
DEFAULT_BILLING_SCHEDULE_DAY = 1
DEFAULT_BILLING_SCHEDULE_TIME = "08:00"
# The schedule's day is at most the 28th: every month has one.
MAX_BILLING_SCHEDULE_DAY = 28
PACKAGE_SQL_DIR = Path(__file__).resolve().parent / "source" / "sql"


# The embedded default talks to the local Gradient emulator (`gradient-billing-sync emulator`);
# production sets GRADIENT_BASE_URL=https://app.usegradient.com and the real vendor key.
DEFAULT_GRADIENT_BASE_URL = "http://127.0.0.1:8765"
DEMO_VENDOR_API_KEY = "demo-vendor-key"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix.

    ``problems`` maps each bad variable to its message when the error comes from
    ``load_settings()``.
    """

    def __init__(self, message: str, problems: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems = dict(problems or {})


def _setting(default: Any, description: str, example: str, **kwargs: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"example": example}, **kwargs)


def _sql_file(name: str, value: Any) -> str | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise ValueError(
            f"{name}={str(value)!r} {problem}; give the path of a readable SQL file such as "
            f"/etc/gradient-billing-sync/{name.removesuffix('_SQL').lower()}.sql, or unset it "
            "to use the reference schema's query."
        )
    return str(path)


# The drivers the project installs, for URLs that name only the database: SQLAlchemy 2.1 would
# otherwise pick psycopg 3 for postgresql:// and mysqlclient for mysql://, neither installed.
INSTALLED_DRIVERS = {"postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


def with_installed_driver(url: str) -> str:
    """``url`` with the project's installed driver when it names only the database."""
    try:
        parsed = make_url(url)
    except Exception:
        return url
    driver = INSTALLED_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False) if driver else url


def _database_url(name: str, value: Any) -> str | None:
    if value is None:
        return None
    example = "postgresql+psycopg2://billing:PASSWORD@db.internal:5432/billing or sqlite:////var/lib/gbs/state.db"
    value = with_installed_driver(str(value))
    try:
        make_url(str(value)).get_dialect()
    except Exception:
        # the value may hold a password: never echo it
        raise ValueError(
            f"{name} is not a SQLAlchemy database URL (it does not parse or names an unknown "
            f"database driver); give one such as {example}."
        ) from None
    return str(value)


def _positive_number(name: str, value: Any, example: str, unit: str, integer: bool = False) -> Any:
    """``value`` as a positive (whole) number, or a ValueError naming ``name`` with an example."""
    kind = "whole number" if integer else "number"
    try:
        number = int(str(value).strip()) if integer else float(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a {kind}; give {unit} such as {example}.") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}={value!r} must be a positive {kind}; give {unit} such as {example}.")
    return number


class Settings(BaseSettings):
    """Every environment variable the pipeline reads, typed, with its default and example."""

    model_config = SettingsConfigDict(case_sensitive=False, env_ignore_empty=True, extra="ignore", frozen=True)

    gbs_data_dir: Path | None = _setting(
        None,
        "Where the embedded defaults live: the SQLite product and state databases, statements "
        "and the generated partner-key encryption key (not the Dagster instance: see DAGSTER_HOME).",
        "/var/lib/gradient-billing-sync",
    )
    product_db_url: str | None = _setting(
        None,
        "SQLAlchemy URL of the vendor's product database (read only).",
        "postgresql+psycopg2://billing_reader:PASSWORD@product-db:5432/product",
        repr=False,
    )
    state_db_url: str | None = _setting(
        None,
        "SQLAlchemy URL of the pipeline's own database: counts, quarantine, ledger.",
        "postgresql+psycopg2://billing:PASSWORD@db:5432/billing_state",
        repr=False,
    )
    billing_timezone: str = _setting(
        DEFAULT_BILLING_TIMEZONE, "IANA time zone the billing months are cut in.", "Europe/London"
    )
    quarantine_threshold: float = _setting(
        DEFAULT_QUARANTINE_THRESHOLD,
        "Share of a month's rows that may be quarantined before the month is blocked (0.01 = 1 %).",
        "0.02",
    )
    utilization_sql: str | None = _setting(
        None,
        "SQL file returning the source contract for :month_start / :month_end.",
        "/etc/gradient-billing-sync/utilization.sql",
    )
    services_sql: str | None = _setting(
        None,
        "SQL file returning the vendor's services (sku, name, description, category, subcategory).",
        "/etc/gradient-billing-sync/services.sql",
    )
    connections_sql: str | None = _setting(
        None, "SQL file returning partners' Gradient connections.", "/etc/gradient-billing-sync/connections.sql"
    )
    companies_sql: str | None = _setting(
        None,
        "SQL file returning every company that should be a Gradient account.",
        "/etc/gradient-billing-sync/companies.sql",
    )
    partners_sql: str | None = _setting(
        None,
        "SQL file returning partner_id, partner_name: the names that title partner statements.",
        "/etc/gradient-billing-sync/partners.sql",
    )
    sync_requests_sql: str | None = _setting(
        None,
        "SQL file returning 'Update Counts' / 'Sync Company Accounts' requests after :after_id.",
        "/etc/gradient-billing-sync/sync_requests.sql",
    )
    source_watermark_sql: str | None = _setting(
        None,
        "SQL file returning one row that changes when a month's source data changes, for "
        ":month_start / :month_end (cheap: counts and newest timestamps over indexed columns). "
        "Recorded when the month is counted and compared by the late-months sensor, which never "
        "aggregates a month. Unset: the reference schema's, or none (no late-data detection) "
        "when UTILIZATION_SQL is the vendor's own.",
        "/etc/gradient-billing-sync/watermark.sql",
    )
    gradient_base_url: str = _setting(
        DEFAULT_GRADIENT_BASE_URL,
        "Gradient's API; the default is the local emulator.",
        "https://app.usegradient.com",
    )
    gradient_vendor_api_key: SecretStr | None = _setting(
        None,
        "The vendor's Gradient API key (secret). Unset, only the local emulator's demo key is used.",
        "the key from Gradient's vendor settings",
        validate_default=True,
    )
    gradient_key_encryption_keys: SecretStr | None = _setting(
        None,
        "Fernet keys encrypting partner keys at rest, comma-separated: the first encrypts, all "
        "decrypt (rotation). Unset, a key generated into the data dir is used.",
        "the output of `gradient-billing-sync generate-encryption-key`",
    )
    gradient_max_requests_per_second: float = _setting(
        DEFAULT_MAX_REQUESTS_PER_SECOND,
        "Requests per second the client sends to Gradient for the whole vendor (Gradient's limit: 100).",
        "100",
    )
    gradient_failure_alerts: bool = _setting(
        False, "true raises a Gradient alert on the accounts of a partner whose counts failed.", "true"
    )
    month_watch_lookback_months: int = _setting(
        DEFAULT_MONTH_WATCH_LOOKBACK_MONTHS, "Closed months the missed/late months sensor watches.", "3"
    )
    month_watch_interval_seconds: int = _setting(
        DEFAULT_MONTH_WATCH_INTERVAL_SECONDS, "Seconds between two ticks of the missed/late months sensor.", "3600"
    )
    gbs_sensors_default_status: Literal["running", "stopped"] = _setting(
        "running", "Whether the sensors start switched on in a new deployment.", "stopped"
    )
    first_billing_month: str | None = _setting(
        None,
        "The first month partition (YYYY-MM); months before it cannot be run or backfilled. "
        "Required when PRODUCT_DB_URL is set (a deployment), so the partition set never slides; "
        "only the embedded demo (PRODUCT_DB_URL unset) defaults to 12 months before the current month.",
        "2025-01",
    )
    billing_schedule_day: int = _setting(
        DEFAULT_BILLING_SCHEDULE_DAY,
        "Day of the month (1-28) on which the monthly schedule bills the month that just closed.",
        "1",
    )
    billing_schedule_time: str = _setting(
        DEFAULT_BILLING_SCHEDULE_TIME,
        "Time of day (HH:MM, 24 h) of the monthly schedule, in BILLING_SCHEDULE_TIMEZONE.",
        "08:00",
    )
    billing_schedule_timezone: str | None = _setting(
        None,
        "IANA time zone of the schedule's clock. Unset: BILLING_TIMEZONE (so by default the 1st, "
        "08:00 America/New_York). Another zone is accepted only when the schedule's time always "
        "falls after the billing month has closed in BILLING_TIMEZONE.",
        "America/New_York",
    )
    dagster_home: str | None = _setting(
        None,
        "Dagster's own instance directory (absolute); when set, the CLI runs on that instance "
        "instead of the repository's embedded one (var/dagster).",
        "/opt/dagster/home",
    )

    statements_dir: Path | None = _setting(
        None,
        "Where partner statements are written (one folder per month). Unset: <data dir>/statements.",
        "/var/lib/gradient-billing-sync/statements",
    )
    statements_smtp_url: SecretStr | None = _setting(
        None,
        "SMTP server that e-mails partner statements (secret: may hold a password); off when unset.",
        "smtps://billing:PASSWORD@smtp.example.com:465",
    )
    partner_contacts_sql: str | None = _setting(
        None,
        "SQL file returning partner_id, email: who receives each partner's statement; off when unset.",
        "/etc/gradient-billing-sync/partner_contacts.sql",
    )
    statements_email_from: str | None = _setting(None, "Sender address of statement e-mails.", "billing@vendor.example")
    alert_smtp_url: SecretStr | None = _setting(
        None,
        "SMTP server (TLS, with login) for run-failure and partial-month e-mails; off when unset.",
        "smtps://alerts:PASSWORD@smtp.example.com:465",
    )
    alert_email_to: str | None = _setting(
        None, "Comma-separated addresses that receive the alert e-mails.", "data-oncall@vendor.example"
    )
    alert_email_from: str | None = _setting(
        None, "Sender address of alert e-mails (default: the SMTP user).", "alerts@vendor.example"
    )
    alert_webhook_url: SecretStr | None = _setting(
        None,
        'Slack-compatible webhook (JSON {"text": ...}) for the same alerts (secret: holds a token); off when unset.',
        "https://hooks.slack.com/services/T000/B000/XXXX",
    )

    @field_validator("gbs_data_dir", mode="before")
    @classmethod
    def _check_data_dir(cls, value: Any) -> Any:
        if value is not None and Path(str(value)).expanduser().is_file():
            raise ValueError(
                f"GBS_DATA_DIR={str(value)!r} is a file; give a directory such as /var/lib/gradient-billing-sync."
            )
        return None if value is None else Path(str(value)).expanduser()

    @field_validator("product_db_url", "state_db_url", mode="before")
    @classmethod
    def _check_database_url(cls, value: Any, info: ValidationInfo) -> Any:
        return _database_url(str(info.field_name).upper(), value)

    @field_validator("billing_timezone", mode="before")
    @classmethod
    def _check_timezone(cls, value: Any) -> Any:
        return validate_timezone(str(value))

    @field_validator("quarantine_threshold", mode="before")
    @classmethod
    def _check_quarantine_threshold(cls, value: Any) -> Any:
        try:
            share = float(str(value).strip())
        except ValueError:
            raise ValueError(
                f"QUARANTINE_THRESHOLD={value!r} is not a number; give a share such as 0.01 for 1 %."
            ) from None
        if not 0 <= share <= 1:
            raise ValueError(
                f"QUARANTINE_THRESHOLD={value!r} must be a share between 0 and 1; give one such as 0.01 for 1 %."
            )
        return share

    @field_validator(
        "utilization_sql",
        "services_sql",
        "connections_sql",
        "companies_sql",
        "partners_sql",
        "sync_requests_sql",
        "source_watermark_sql",
        mode="before",
    )
    @classmethod
    def _check_sql_file(cls, value: Any, info: ValidationInfo) -> Any:
        return _sql_file(str(info.field_name).upper(), value)

    @field_validator("gradient_base_url", mode="before")
    @classmethod
    def _check_base_url(cls, value: Any) -> Any:
        return validate_base_url(str(value))

    @field_validator("gradient_vendor_api_key", mode="before")
    @classmethod
    def _check_vendor_key(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            base = info.data.get("gradient_base_url")
            if base is not None and not is_loopback_url(base):
                raise ValueError(
                    f"GRADIENT_VENDOR_API_KEY is not set but GRADIENT_BASE_URL points at {base}; "
                    "set it to the vendor's key from Gradient's vendor settings (only the local "
                    "emulator accepts the demo key)."
                )
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        problem = vendor_key_problem(raw)
        if problem:
            raise ValueError(problem)
        return SecretStr(raw)

    @field_validator("gradient_key_encryption_keys", mode="before")
    @classmethod
    def _check_encryption_keys(cls, value: Any) -> Any:
        if value is None:
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        problem = encryption_keys_problem(raw)
        if problem:
            raise ValueError(problem)
        return SecretStr(raw)

    @field_validator("gradient_max_requests_per_second", mode="before")
    @classmethod
    def _check_rate(cls, value: Any) -> Any:
        return _positive_number("GRADIENT_MAX_REQUESTS_PER_SECOND", value, "100", "requests per second")

    @field_validator("gradient_failure_alerts", mode="before")
    @classmethod
    def _check_alerts(cls, value: Any) -> Any:
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"GRADIENT_FAILURE_ALERTS={value!r} is not a yes/no value; give true or false.")

    @field_validator("month_watch_lookback_months", mode="before")
    @classmethod
    def _check_lookback(cls, value: Any) -> Any:
        return _positive_number("MONTH_WATCH_LOOKBACK_MONTHS", value, "3", "a number of closed months", True)

    @field_validator("month_watch_interval_seconds", mode="before")
    @classmethod
    def _check_interval(cls, value: Any) -> Any:
        return _positive_number("MONTH_WATCH_INTERVAL_SECONDS", value, "3600", "seconds between ticks", True)

    @field_validator("gbs_sensors_default_status", mode="before")
    @classmethod
    def _check_sensor_status(cls, value: Any) -> Any:
        text = str(value).strip().lower()
        if text not in {"running", "stopped"}:
            raise ValueError(
                f"GBS_SENSORS_DEFAULT_STATUS={value!r} is neither running nor stopped; give stopped or running."
            )
        return text

    @field_validator("first_billing_month", mode="before")
    @classmethod
    def _check_first_month(cls, value: Any) -> Any:
        if value is None:
            return None
        text = str(value).strip()
        try:
            date.fromisoformat(f"{text[:7]}-01")
        except ValueError:
            raise ValueError(f"FIRST_BILLING_MONTH={value!r} is not a month; use YYYY-MM, e.g. 2025-01.") from None
        return text

    @field_validator("billing_schedule_day", mode="before")
    @classmethod
    def _check_schedule_day(cls, value: Any) -> Any:
        text = str(value).strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_BILLING_SCHEDULE_DAY:
            raise ValueError(
                f"BILLING_SCHEDULE_DAY={value!r} is not a day between 1 and {MAX_BILLING_SCHEDULE_DAY} "
                "(every month has it); give one such as 1."
            )
        return int(text)

    @field_validator("billing_schedule_time", mode="before")
    @classmethod
    def _check_schedule_time(cls, value: Any) -> Any:
        text = str(value).strip()
        try:
            parsed = datetime.strptime(text, "%H:%M").time()
        except ValueError:
            raise ValueError(
                f"BILLING_SCHEDULE_TIME={value!r} is not a time of day; use HH:MM (24 h), e.g. 08:00."
            ) from None
        return parsed.strftime("%H:%M")

    @field_validator("billing_schedule_timezone", mode="before")
    @classmethod
    def _check_schedule_timezone(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            ZoneInfo(str(value))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"BILLING_SCHEDULE_TIMEZONE={value!r} is not an IANA time zone; use a name such as "
                "'America/New_York', or unset it to use BILLING_TIMEZONE."
            ) from None
        return str(value)

    @model_validator(mode="after")
    def _check_schedule_and_first_month(self) -> Settings:
        problem = schedule_problem(
            self.schedule_timezone, self.billing_schedule_day, self.schedule_time, self.billing_timezone
        )
        if problem:
            raise ValueError(problem)
        # The embedded default's own product database (the demo points PRODUCT_DB_URL at it) is
        # no deployment: it keeps the year-back default.
        embedded = f"sqlite:///{self.data_dir / 'product.db'}"
        if self.product_db_url not in (None, embedded) and self.first_billing_month is None:
            raise ValueError(
                "FIRST_BILLING_MONTH is not set but PRODUCT_DB_URL is (a deployment): set it to the "
                "first month to bill, e.g. FIRST_BILLING_MONTH=2025-01, so the month partitions "
                "start there and never slide (only the embedded demo defaults to a year back)."
            )
        return self

    @field_validator("statements_smtp_url", "alert_smtp_url", mode="before")
    @classmethod
    def _check_smtp_url(cls, value: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name).upper()
        if value is None:
            return None
        parts = urlsplit(str(value))
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(
                f"{name} must look like smtps://user:PASSWORD@host:465 or "
                "smtp://user:PASSWORD@host:587?starttls=true (the value is not shown: it may hold a password)."
            )
        return value

    @field_validator("alert_webhook_url", mode="before")
    @classmethod
    def _check_webhook_url(cls, value: Any) -> Any:
        if value is None:
            return None
        parts = urlsplit(str(value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "ALERT_WEBHOOK_URL must be an http(s) URL such as https://hooks.slack.com/services/... "
                "(the value is not shown: it holds a token)."
            )
        return value

    @field_validator("partner_contacts_sql", mode="before")
    @classmethod
    def _check_contacts_sql(cls, value: Any) -> Any:
        return _sql_file("PARTNER_CONTACTS_SQL", value)

    @field_validator("dagster_home", mode="before")
    @classmethod
    def _check_dagster_home(cls, value: Any) -> Any:
        if value is None:
            return None
        path = Path(str(value))
        if not path.is_absolute() or path.is_file():
            raise ValueError(
                f"DAGSTER_HOME={str(value)!r} is not a directory given by its absolute path; give "
                "one such as /opt/dagster/home, or unset it for the embedded instance."
            )
        return str(path)

    # ------------------------------------------------------------------ derived values
    @property
    def data_dir(self) -> Path:
        return self.gbs_data_dir or REPO_ROOT / "var"

    @property
    def product_db(self) -> str:
        return self.product_db_url or f"sqlite:///{self.data_dir / 'product.db'}"

    @property
    def state_db(self) -> str:
        return self.state_db_url or f"sqlite:///{self.data_dir / 'state.db'}"

    @property
    def schedule_timezone(self) -> str:
        """The schedule's zone: BILLING_SCHEDULE_TIMEZONE, else BILLING_TIMEZONE."""
        return self.billing_schedule_timezone or self.billing_timezone

    @property
    def schedule_time(self) -> time:
        return datetime.strptime(self.billing_schedule_time, "%H:%M").time()

    @property
    def schedule_cron(self) -> str:
        """The schedule as cron, in ``schedule_timezone``."""
        at = self.schedule_time
        return f"{at.minute} {at.hour} {self.billing_schedule_day} * *"

    @property
    def vendor_api_key(self) -> str:
        """The configured vendor key, or the demo key the local emulator accepts."""
        key = self.gradient_vendor_api_key
        return key.get_secret_value() if key is not None else DEMO_VENDOR_API_KEY

    @property
    def encryption_keys(self) -> str:
        """GRADIENT_KEY_ENCRYPTION_KEYS, or the embedded default's generated local key."""
        keys = self.gradient_key_encryption_keys
        return keys.get_secret_value() if keys is not None else local_encryption_key(self.data_dir)


ENV_NAMES: tuple[str, ...] = tuple(name.upper() for name in Settings.model_fields)
SECRET_NAMES = frozenset(
    {
        "GRADIENT_VENDOR_API_KEY",
        "GRADIENT_KEY_ENCRYPTION_KEYS",
        "STATEMENTS_SMTP_URL",
        "ALERT_SMTP_URL",
        "ALERT_WEBHOOK_URL",
    }
)
URL_NAMES = frozenset({"PRODUCT_DB_URL", "STATE_DB_URL"})


def load_settings() -> Settings:
    """The settings from the current environment; one ``ConfigurationError`` lists every bad one."""
    return _load(tuple(os.environ.get(name) for name in ENV_NAMES))


@functools.lru_cache(maxsize=16)
def _load(_environment: tuple[str | None, ...]) -> Settings:
    """Cached per set of values, so a changed environment is read again (errors never cached)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise configuration_error(exc) from None


def configuration_error(exc: ValidationError) -> ConfigurationError:
    """One error listing every bad variable with its own message (validators name the variable)."""
    problems: dict[str, str] = {}
    for error in exc.errors(include_input=False, include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if error["loc"]:
            name = str(error["loc"][0]).upper()
        else:  # a check across settings: its message starts with the variable to change
            first = str(cause or "").split("=")[0].split(" ")[0]
            name = first if first in ENV_NAMES else "configuration"
        problems[name] = str(cause) if cause is not None else f"{name}: {error['msg']}"
    count = len(problems)
    header = f"{count} setting{'s are' if count > 1 else ' is'} wrong; fix and start again:"
    return ConfigurationError("\n".join([header, *(f"- {p}" for p in problems.values())]), problems)


def is_set(name: str) -> bool:
    """Whether the environment gives this variable a (non-empty) value."""
    return bool(os.environ.get(name))


def describe(config: Settings) -> list[tuple[str, str, str]]:
    """(variable, source, value shown) for every setting; secrets only as set/unset and
    database passwords hidden."""
    rows = []
    for field_name in Settings.model_fields:
        name = field_name.upper()
        value = getattr(config, field_name)
        if name in SECRET_NAMES:
            shown = "set" if value is not None else "unset"
        elif name == "PRODUCT_DB_URL":
            shown = redact_url(config.product_db)
        elif name == "STATE_DB_URL":
            shown = redact_url(config.state_db)
        elif name == "GBS_DATA_DIR":
            shown = str(config.data_dir)
        elif value is None:
            shown = "(not set)"
        else:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
        rows.append((name, "environment" if is_set(name) else "default", shown))
    return rows


# ---------------------------------------------------------------------- checks shared by validators
def validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"BILLING_TIMEZONE={name!r} is not an IANA time zone; use a name such as "
            "'America/New_York' or 'Europe/London'."
        ) from exc
    return name


def validate_base_url(value: str) -> str:
    """GRADIENT_BASE_URL as given, when it is an http(s) URL with a host."""
    problem = f"GRADIENT_BASE_URL={value!r} is not an http(s) URL; give one such as https://app.usegradient.com."
    try:
        url = httpx.URL(value.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ConfigurationError(problem) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(problem)
    return value.strip().rstrip("/")


def schedule_problem(schedule_zone: str, day: int, at: time, billing_zone: str) -> str | None:
    """Why a schedule clock (day and time in ``schedule_zone``) can fire before the month it
    bills has closed in ``billing_zone``, or None. In the billing zone itself it never can;
    in another, the fire time is checked against each month's close over a 28-year cycle
    of days of the week and daylight saving rules (every month of 2024-2051)."""
    if schedule_zone == billing_zone:
        return None
    try:
        fire_zone, close_zone = ZoneInfo(schedule_zone), ZoneInfo(billing_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return None  # the zone's own validator names it
    for year in range(2024, 2052):
        for month in range(1, 13):
            closed = datetime(year, month, 1, tzinfo=close_zone)
            fires = datetime(year, month, day, at.hour, at.minute, tzinfo=fire_zone)
            if fires < closed + timedelta(minutes=1):
                return (
                    f"BILLING_SCHEDULE_TIMEZONE={schedule_zone!r} with BILLING_SCHEDULE_DAY={day} and "
                    f"BILLING_SCHEDULE_TIME={at.strftime('%H:%M')} fires at {fires.isoformat()}, before "
                    f"{year}-{month:02d} has begun in BILLING_TIMEZONE={billing_zone!r}, so it would bill the "
                    "wrong month; unset BILLING_SCHEDULE_TIMEZONE (the schedule then follows "
                    "BILLING_TIMEZONE) or pick a later day or time."
                )
    return None


def is_loopback_url(value: str) -> bool:
    host = httpx.URL(value).host
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def vendor_key_problem(key: str) -> str | None:
    """Why a vendor API key cannot be right, or None; never repeats the key."""
    if not key.strip():
        return "GRADIENT_VENDOR_API_KEY is blank; set it to the vendor's key from Gradient's vendor settings."
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        return (
            "GRADIENT_VENDOR_API_KEY contains spaces, line breaks or control characters; paste "
            "the key from Gradient's vendor settings exactly, e.g. without a trailing newline."
        )
    return None


def encryption_keys_problem(keys: str) -> str | None:
    """Why a GRADIENT_KEY_ENCRYPTION_KEYS value does not parse, or None; never repeats a key."""
    from pipeline.gradient.partner_keys import PartnerKeyError, keyring

    try:
        keyring(keys)
    except PartnerKeyError as exc:
        return f"{exc} Give comma-separated keys made by `gradient-billing-sync generate-encryption-key`."
    return None


# ---------------------------------------------------------------------- helpers other modules call
def data_dir() -> Path:
    return load_settings().data_dir


def default_product_db_url() -> str:
    return f"sqlite:///{data_dir() / 'product.db'}"


def default_state_db_url() -> str:
    return f"sqlite:///{data_dir() / 'state.db'}"


def product_db_url() -> str:
    return load_settings().product_db


def state_db_url() -> str:
    return load_settings().state_db


def billing_timezone() -> str:
    return load_settings().billing_timezone


def quarantine_threshold() -> float:
    return load_settings().quarantine_threshold


def utilization_sql_path() -> str | None:
    """The vendor's own query file, or None for the reference schema's query."""
    return load_settings().utilization_sql


def encryption_keys() -> str:
    """The partner-key encryption keys: GRADIENT_KEY_ENCRYPTION_KEYS or the local default."""
    return load_settings().encryption_keys


def local_encryption_key(directory: Path | None = None) -> str:
    """The embedded default's Fernet key: generated once into the data dir (mode 600).

    Only for the no-services default; deployments set GRADIENT_KEY_ENCRYPTION_KEYS.
    """
    from cryptography.fernet import Fernet

    path = (directory or data_dir()) / "partner-key-encryption.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(Fernet.generate_key().decode())
    return path.read_text().strip()


def redact_url(url: str) -> str:
    """A database URL safe for logs and metadata (password hidden)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def reference_sql(dialect: str, name: str) -> Path:
    """Path of a reference-schema query for a SQLAlchemy dialect name (dialect-specific
    file when there is one, else the common one)."""
    if dialect.startswith("postgres"):
        folder = "postgresql"
    elif dialect in ("mysql", "mariadb"):
        folder = "mysql"
    else:
        folder = "sqlite"
    specific = PACKAGE_SQL_DIR / folder / name
    return specific if specific.exists() else PACKAGE_SQL_DIR / "common" / name
