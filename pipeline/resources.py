"""Dagster resources: the product database (read only), the state database, the billing rules,
partner sources and keys, and the Gradient client.

URLs come from ``PRODUCT_DB_URL`` / ``STATE_DB_URL`` as ``EnvVar`` when set, so Dagster shows
the variable's name and never a password; otherwise from the local SQLite defaults.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import dagster as dg
import httpx
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import make_url

from pipeline import settings
from pipeline.gradient.client import DEFAULT_BASE_URL, GradientClient, Secret
from pipeline.gradient.partner_keys import decrypt_partner_key
from pipeline.source.partners import PartnerConnection
from pipeline.store.schema import ensure_state_schema
from pipeline.source.utilization import SourceQuery, load_known_skus, utilization_query


class DatabaseUnavailableError(RuntimeError):
    """A database could not be reached; the message names which one and what to check."""


@functools.lru_cache(maxsize=None)
def engine_for(url: str) -> sa.Engine:
    """One pooled engine per URL per process."""
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

    url: str
    utilization_sql: str | None = None
    services_sql: str | None = None
    chunk_rows: int = 50_000

    def engine(self) -> sa.Engine:
        return engine_for(self.url)

    def connect(self) -> sa.Connection:
        return connect_or_explain(self.engine(), "product database", "PRODUCT_DB_URL")

    def utilization_query(self) -> SourceQuery:
        return utilization_query(self.utilization_sql, self.engine().dialect.name)

    def known_skus(self, conn: sa.Connection) -> list[str]:
        return load_known_skus(conn, self.services_sql)


_ensured: set[str] = set()


class StateDatabase(dg.ConfigurableResource):
    """The pipeline's own database: counts, quarantine, ledger."""

    url: str

    def engine(self) -> sa.Engine:
        engine = engine_for(self.url)
        if self.url not in _ensured:
            try:
                ensure_state_schema(engine)
            except sa.exc.OperationalError as exc:
                first_line = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                raise DatabaseUnavailableError(
                    f"the state database at {settings.redact_url(self.url)} is unreachable "
                    f"({first_line}). Check STATE_DB_URL and that the database is up."
                ) from None
            _ensured.add(self.url)
        return engine


class PartnerSources(dg.ConfigurableResource):
    """Where the product keeps partner connections and companies, and how keys are decrypted."""

    connections_sql: str | None = None
    companies_sql: str | None = None
    sync_requests_sql: str | None = None
    # EnvVar("GRADIENT_KEY_ENCRYPTION_KEYS") in deployments; None = the embedded default's
    # local key file, read when needed so its value never appears in Dagster's config.
    encryption_keys: str | None = None

    def key_material(self) -> str:
        return self.encryption_keys or settings.local_encryption_key()

    def decrypt(self, connection: PartnerConnection) -> Secret:
        return Secret(
            decrypt_partner_key(connection.encrypted_api_key, self.key_material(), connection.partner_id)
        )


class GradientResource(dg.ConfigurableResource):
    """Gradient connection settings; ``client()`` gives one client for the run.

    Deployments pass ``vendor_api_key=dg.EnvVar("GRADIENT_VENDOR_API_KEY")`` so Dagster only
    ever shows the variable's name, never the key.
    """

    base_url: str = Field(
        default=DEFAULT_BASE_URL, description="Gradient API base URL (the emulator's in tests)."
    )
    vendor_api_key: str = Field(
        description="The vendor's Gradient API key; pass dg.EnvVar('GRADIENT_VENDOR_API_KEY').",
        repr=False,
    )
    max_requests_per_second: float = Field(
        default=100.0, description="Requests per second for the whole vendor (Gradient: 100)."
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
            base_url=self.base_url,
            vendor_api_key=self.vendor_api_key,
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

    timezone: str = settings.DEFAULT_BILLING_TIMEZONE
    quarantine_threshold: float = settings.DEFAULT_QUARANTINE_THRESHOLD


def _env_or(name: str, default: str | None) -> str | dg.EnvVar | None:
    return dg.EnvVar(name) if os.environ.get(name) else default


def default_resources() -> dict[str, object]:
    """The resources of the code location, configured from the environment."""
    return {
        "gradient": GradientResource(
            base_url=os.environ.get("GRADIENT_BASE_URL") or settings.DEFAULT_GRADIENT_BASE_URL,
            vendor_api_key=_env_or("GRADIENT_VENDOR_API_KEY", settings.DEMO_VENDOR_API_KEY),
            max_requests_per_second=float(os.environ.get("GRADIENT_MAX_REQUESTS_PER_SECOND") or 100),
        ),
        "partner_sources": PartnerSources(
            connections_sql=os.environ.get("CONNECTIONS_SQL") or None,
            companies_sql=os.environ.get("COMPANIES_SQL") or None,
            sync_requests_sql=os.environ.get("SYNC_REQUESTS_SQL") or None,
            encryption_keys=_env_or("GRADIENT_KEY_ENCRYPTION_KEYS", None),
        ),
        "product_db": ProductDatabase(
            url=_env_or("PRODUCT_DB_URL", settings.default_product_db_url()),
            utilization_sql=settings.utilization_sql_path(),
            services_sql=os.environ.get("SERVICES_SQL") or None,
        ),
        "state_db": StateDatabase(url=_env_or("STATE_DB_URL", settings.default_state_db_url())),
        "billing_rules": BillingRules(
            timezone=settings.billing_timezone(),
            quarantine_threshold=settings.quarantine_threshold(),
        ),
    }
