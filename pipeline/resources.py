"""Dagster resources: the product database (read only), the state database, the billing rules,
partner sources and keys, and the Gradient client.

Configured from the one settings object (``pipeline.settings.load_settings``). In the code
location, URLs, keys and the Gradient base URL set in the environment are passed as ``EnvVar``,
so Dagster shows the variable's name and never a password or key; built for use outside
Dagster (the CLI), the resources get the resolved values.

Also here: which failures a retry can fix (``step_failure``) and the Gradient checks made
before any row is read (``gradient_preflight``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import make_url

from pipeline import settings
from pipeline.gradient.client import DEFAULT_BASE_URL, GradientClient, Secret
from pipeline.gradient.partner_keys import decrypt_partner_key
from pipeline.settings import ConfigurationError, Settings
from pipeline.source.partners import PartnerConnection
from pipeline.source.utilization import SourceQuery, load_known_skus, utilization_query
from pipeline.store.schema import ensure_state_schema


class DatabaseUnavailableError(RuntimeError):
    """A database could not be reached; the message names which one and what to check."""


class GradientUnreachableError(RuntimeError):
    """Gradient did not answer at GRADIENT_BASE_URL; a later run may succeed."""


def resolved(value: str) -> str:
    """A setting's value: an ``EnvVar`` left unresolved (a resource built outside Dagster)
    is read from the environment, so SQLAlchemy never sees a variable's name as a URL."""
    return (value.get_value() or "") if isinstance(value, dg.EnvVar) else value


@functools.cache
def engine_for(url: str) -> sa.Engine:
    """One pooled engine per URL per process (a URL naming only the database gets the installed driver)."""
    url = settings.with_installed_driver(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(url, connect_args={"timeout": 60})
    return sa.create_engine(url, pool_pre_ping=True)


def connect_or_explain(engine: sa.Engine, what: str, setting: str) -> sa.Connection:
    try:
        return engine.connect()
    except sa.exc.OperationalError as exc:
        first_line = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise DatabaseUnavailableError(
            f"the {what} at {settings.redact_url(str(engine.url))} is unreachable ({first_line}). "
            f"Check {setting} and that the database is up; re-running the month completes it."
        ) from None


class ProductDatabase(dg.ConfigurableResource):
    """The vendor's product database, read through the configured contract queries."""

    url: str = Field(description="SQLAlchemy URL (PRODUCT_DB_URL); read only.", repr=False)
    utilization_sql: str | None = Field(default=None, description="UTILIZATION_SQL; None = the reference query.")
    services_sql: str | None = Field(default=None, description="SERVICES_SQL; None = the reference query.")
    chunk_rows: int = Field(default=50_000, description="Rows per validation chunk.")

    def engine(self) -> sa.Engine:
        return engine_for(resolved(self.url))

    def connect(self) -> sa.Connection:
        return connect_or_explain(self.engine(), "product database", "PRODUCT_DB_URL")

    def utilization_query(self) -> SourceQuery:
        return utilization_query(self.utilization_sql, self.engine().dialect.name)

    def known_skus(self, conn: sa.Connection) -> list[str]:
        return load_known_skus(conn, self.services_sql)


_ensured: set[str] = set()


class StateDatabase(dg.ConfigurableResource):
    """The pipeline's own database: counts, quarantine, ledger."""

    url: str = Field(description="SQLAlchemy URL (STATE_DB_URL).", repr=False)

    def engine(self) -> sa.Engine:
        url = resolved(self.url)
        engine = engine_for(url)
        if url not in _ensured:
            try:
                ensure_state_schema(engine)
            except sa.exc.OperationalError as exc:
                first_line = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                raise DatabaseUnavailableError(
                    f"the state database at {settings.redact_url(url)} is unreachable "
                    f"({first_line}). Check STATE_DB_URL and that the database is up."
                ) from None
            _ensured.add(url)
        return engine


class PartnerSources(dg.ConfigurableResource):
    """Where the product keeps partner connections and companies, and how keys are decrypted."""

    connections_sql: str | None = Field(default=None, description="CONNECTIONS_SQL; None = the reference query.")
    companies_sql: str | None = Field(default=None, description="COMPANIES_SQL; None = the reference query.")
    sync_requests_sql: str | None = Field(default=None, description="SYNC_REQUESTS_SQL; None = the reference query.")
    # EnvVar("GRADIENT_KEY_ENCRYPTION_KEYS") in deployments; None = the embedded default's
    # local key file, read when needed so its value never appears in Dagster's config.
    encryption_keys: str | None = Field(
        default=None, description="GRADIENT_KEY_ENCRYPTION_KEYS; None = the generated local key.", repr=False
    )

    def key_material(self) -> str:
        return resolved(self.encryption_keys or "") or settings.local_encryption_key()

    def decrypt(self, connection: PartnerConnection) -> Secret:
        return Secret(decrypt_partner_key(connection.encrypted_api_key, self.key_material(), connection.partner_id))


class GradientResource(dg.ConfigurableResource):
    """Gradient connection settings; ``client()`` gives one client for the run.

    Deployments pass ``vendor_api_key=dg.EnvVar("GRADIENT_VENDOR_API_KEY")`` so Dagster only
    ever shows the variable's name, never the key.
    """

    base_url: str = Field(default=DEFAULT_BASE_URL, description="Gradient API base URL (GRADIENT_BASE_URL).")
    vendor_api_key: str = Field(
        description="The vendor's Gradient API key; pass dg.EnvVar('GRADIENT_VENDOR_API_KEY').",
        repr=False,
    )
    max_requests_per_second: float = Field(
        default=100.0,
        description="Requests per second for the whole vendor (GRADIENT_MAX_REQUESTS_PER_SECOND; Gradient: 100).",
    )
    timeout_seconds: float = Field(default=30.0, description="Per-request timeout.")
    max_attempts: int = Field(
        default=6, description="Attempts per call, first included, on 429 / 5xx / network errors."
    )
    max_concurrency: int = Field(default=32, description="Requests in flight at most.")
    backoff_initial_seconds: float = Field(
        default=0.5, description="Backoff window of the first retry (full jitter, doubling)."
    )
    backoff_max_seconds: float = Field(default=30.0, description="Cap of the backoff window.")

    def client(self, transport: httpx.AsyncBaseTransport | None = None) -> GradientClient:
        """A new client; use as ``async with resource.client() as client``, once per run."""
        return GradientClient(
            base_url=resolved(self.base_url),
            vendor_api_key=resolved(self.vendor_api_key),
            max_requests_per_second=self.max_requests_per_second,
            timeout_seconds=self.timeout_seconds,
            max_attempts=self.max_attempts,
            backoff_initial_seconds=self.backoff_initial_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
            max_concurrency=self.max_concurrency,
            transport=transport,
        )


class BillingRules(dg.ConfigurableResource):
    """The billing time zone and how much quarantine a month may carry and still go on."""

    timezone: str = Field(default=settings.DEFAULT_BILLING_TIMEZONE, description="BILLING_TIMEZONE (IANA).")
    quarantine_threshold: float = Field(
        default=settings.DEFAULT_QUARANTINE_THRESHOLD, description="QUARANTINE_THRESHOLD (share, 0.01 = 1 %)."
    )


def default_resources(config: Settings | None = None, *, env_vars: bool = True) -> dict[str, dg.ConfigurableResource]:
    """The resources of the code location, configured from the settings object.

    ``env_vars=True`` (the code location): a URL, key or base URL set in the environment is
    passed as ``dg.EnvVar``, so the UI shows where it comes from and never its value.
    ``env_vars=False`` (the CLI, outside Dagster): the resolved values. Raises one
    ``ConfigurationError`` listing every bad variable before any resource is built.
    """
    config = config or settings.load_settings()

    def source(name: str, value: str) -> str:
        return dg.EnvVar(name) if env_vars and settings.is_set(name) else value

    return {
        "gradient": GradientResource(
            base_url=source("GRADIENT_BASE_URL", config.gradient_base_url),
            vendor_api_key=source("GRADIENT_VENDOR_API_KEY", config.vendor_api_key),
            max_requests_per_second=config.gradient_max_requests_per_second,
        ),
        "partner_sources": PartnerSources(
            connections_sql=config.connections_sql,
            companies_sql=config.companies_sql,
            sync_requests_sql=config.sync_requests_sql,
            # unset: None, so the generated local key is read when needed and never shown;
            # outside Dagster (env_vars=False) the configured keys themselves
            encryption_keys=source(
                "GRADIENT_KEY_ENCRYPTION_KEYS",
                config.gradient_key_encryption_keys.get_secret_value()
                if config.gradient_key_encryption_keys is not None
                else None,
            ),
        ),
        "product_db": ProductDatabase(
            url=source("PRODUCT_DB_URL", config.product_db),
            utilization_sql=config.utilization_sql,
            services_sql=config.services_sql,
        ),
        "state_db": StateDatabase(url=source("STATE_DB_URL", config.state_db)),
        "billing_rules": BillingRules(
            timezone=config.billing_timezone,
            quarantine_threshold=config.quarantine_threshold,
        ),
    }


# ---------------------------------------------------------------------- failures a retry cannot fix
# SQLite reports mistakes in the query itself as OperationalError; these mean the SQL is wrong.
_SQL_MISTAKES = (
    "syntax error",
    "no such table",
    "no such column",
    "no such function",
    "unknown column",
    "doesn't exist",
    "does not exist",
)


def is_retryable(exc: BaseException) -> bool:
    """Whether a retry may succeed: only a database that could not be reached, or a
    connection lost mid-query. Configuration, SQL syntax and programming errors, a missing SQL
    file and anything unexpected would fail the same way again."""
    if isinstance(exc, (DatabaseUnavailableError, GradientUnreachableError)):
        return True
    if isinstance(exc, sa.exc.OperationalError):
        message = str(exc.orig or exc).lower()
        return not any(mistake in message for mistake in _SQL_MISTAKES)
    return isinstance(exc, (sa.exc.DisconnectionError, sa.exc.InterfaceError)) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    )


# Run tag turning off the instance's automatic re-execution (run_retries) of one run.
NO_RUN_RETRY_TAGS = {"dagster/retry_on_asset_or_op_failure": "false"}


def step_failure(exc: Exception, context: dg.OpExecutionContext | None = None) -> dg.Failure:
    """The Dagster failure for an error of a step: retried (by the step's retry policy) only
    when a retry may succeed; otherwise it fails at once with the error's message and, given
    the step's context, turns off the automatic re-execution of its run, which would fail the
    same way."""
    retryable = is_retryable(exc)
    if context is not None and not retryable:
        context.instance.add_run_tags(context.run_id, NO_RUN_RETRY_TAGS)
    if isinstance(exc, sa.exc.StatementError):
        cause = exc.orig or exc
        lines = str(cause).strip().splitlines()
        description = f"{type(cause).__name__}: {lines[0] if lines else 'no message'}"
        if not retryable:
            description += " (the query is wrong: fix the SQL file or the setting that names it; a retry cannot help)"
    else:
        description = str(exc) or type(exc).__name__
    return dg.Failure(description=description, allow_retries=retryable)


# ---------------------------------------------------------------------- Gradient preflight
@dataclass(frozen=True)
class PreflightCheck:
    """One check made before any work: what was checked, whether it passed, and why not."""

    setting: str
    what: str
    ok: bool
    detail: str = ""
    transient: bool = False  # may pass later by itself (Gradient not answering)


def gradient_preflight(
    gradient: GradientResource,
    partner_sources: PartnerSources,
    timeout_seconds: float = 10.0,
    reach: bool = True,
) -> list[PreflightCheck]:
    """Check the Gradient side without a partner key: the encryption keys parse, the vendor
    key is usable, the base URL parses and (``reach``) Gradient answers an HTTP request at it."""
    checks = []
    keys_problem = settings.encryption_keys_problem(partner_sources.key_material())
    checks.append(
        PreflightCheck(
            "GRADIENT_KEY_ENCRYPTION_KEYS",
            "partner-key encryption keys parse",
            keys_problem is None,
            keys_problem or "",
        )
    )
    key_problem = settings.vendor_key_problem(resolved(gradient.vendor_api_key))
    checks.append(
        PreflightCheck("GRADIENT_VENDOR_API_KEY", "vendor API key is usable", key_problem is None, key_problem or "")
    )
    base_url = resolved(gradient.base_url)
    try:
        base_url = settings.validate_base_url(base_url)
    except ConfigurationError as exc:
        checks.append(PreflightCheck("GRADIENT_BASE_URL", "Gradient base URL parses", False, str(exc)))
        return checks
    checks.append(PreflightCheck("GRADIENT_BASE_URL", "Gradient base URL parses", True))
    if not reach:
        return checks
    try:
        response = httpx.get(base_url, timeout=timeout_seconds, follow_redirects=False)
    except httpx.HTTPError as exc:
        checks.append(
            PreflightCheck(
                "GRADIENT_BASE_URL",
                f"Gradient answers at {base_url}",
                False,
                f"GRADIENT_BASE_URL={base_url!r} is unreachable ({type(exc).__name__}); check the URL, "
                "the network and that Gradient (or the emulator) is up, then run again.",
                transient=True,
            )
        )
    else:
        checks.append(
            PreflightCheck("GRADIENT_BASE_URL", f"Gradient answers at {base_url}", True, f"HTTP {response.status_code}")
        )
    return checks


def require_gradient_ready(gradient: GradientResource, partner_sources: PartnerSources, reach: bool = True) -> None:
    """Raise one ``ConfigurationError`` naming every failed Gradient preflight check, or
    ``GradientUnreachableError`` when Gradient not answering is the only problem."""
    failed = [c for c in gradient_preflight(gradient, partner_sources, reach=reach) if not c.ok]
    if failed and all(c.transient for c in failed):
        raise GradientUnreachableError("\n".join(c.detail for c in failed))
    if failed:
        raise ConfigurationError(
            "Gradient is not ready; nothing was sent:\n" + "\n".join(f"- {c.detail}" for c in failed),
            {c.setting: c.detail for c in failed},
        )
