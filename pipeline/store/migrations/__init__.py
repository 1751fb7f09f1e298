"""Schema versions of the state database, with Alembic.

The models are ``pipeline.store.schema`` (one ``MetaData``); each change to them ships as a
revision in ``versions/``, and every install upgrades itself on first use
(``ensure_state_schema``) or with ``gradient-billing-sync db upgrade``. Alembic is configured
here in code (no alembic.ini), with ``script_location`` the folder of this package, so it
works from an installed wheel as well as from a checkout.

Adding a revision, after changing ``pipeline/store/schema.py``::

    gradient-billing-sync db revision -m "add partner push leases"

autogenerates ``versions/NNNN_<slug>.py`` by comparing the models with a scratch SQLite
database upgraded to the current head. Read it before committing (autogenerate cannot see
renames; it drops and adds instead), keep it portable between SQLite and PostgreSQL
(``batch_alter_table`` is already rendered for ALTERs), then run ``tests/test_migrations.py``:
it fails while the migrated schema and the models differ, on SQLite and on PostgreSQL.

First use, and concurrency:
- an empty database, or one behind head, is upgraded to head;
- a database made before migrations existed (the baseline tables present, no
  ``alembic_version``) is checked to have the baseline's columns, stamped at the baseline
  revision ``0001`` (which creates only what is missing), then upgraded;
- concurrent first uses are serialized: a transaction-scoped advisory lock on PostgreSQL, a
  file lock next to the database file on SQLite; the second process finds the work done;
- at head it costs one query (the current revision) per call; ``StateDatabase`` calls it
  once per URL per process.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock, Timeout

MIGRATIONS_DIR = Path(__file__).resolve().parent
BASELINE_REVISION = "0001"
# The tables installs made with metadata.create_all before migrations existed (frozen: this
# is history, not the current models).
BASELINE_TABLES: dict[str, frozenset[str]] = {
    "account_sync_failures": frozenset({"error", "partner_id", "recorded_at", "run_id"}),
    "billable_counts": frozenset(
        {"billable_users", "company_id", "company_name", "computed_at", "month", "partner_id", "run_id", "sku"}
    ),
    "gradient_services": frozenset({"name", "service_id", "sku", "synced_at"}),
    "ledger_entries": frozenset(
        {
            "account_id",
            "detail",
            "entry_id",
            "http_status",
            "month",
            "outcome",
            "partner_id",
            "recorded_at",
            "run_id",
            "service_id",
            "sku",
            "value",
        }
    ),
    "month_computations": frozenset(
        {
            "billable_users",
            "companies",
            "computed_at",
            "counts_fingerprint",
            "month",
            "partners",
            "query_sha256",
            "rows_counted",
            "rows_in",
            "rows_quarantined",
            "run_id",
        }
    ),
    "month_loads": frozenset({"loaded_at", "month", "partners", "run_id"}),
    "month_validations": frozenset(
        {
            "known_skus",
            "month",
            "query_sha256",
            "reason_counts",
            "rows_in",
            "rows_quarantined",
            "rows_valid",
            "run_id",
            "validated_at",
        }
    ),
    "partner_sync_state": frozenset(
        {"delivered_since", "last_error", "onboarded_connection_at", "partner_id", "run_id", "status", "updated_at"}
    ),
    "quarantined_rows": frozenset(
        {
            "active_from",
            "active_to",
            "billable",
            "company_id",
            "company_name",
            "month",
            "partner_id",
            "quarantined_at",
            "reason_codes",
            "reasons",
            "row_number",
            "run_id",
            "sku",
            "user_id",
        }
    ),
    "run_failures": frozenset(
        {"alerts_raised", "job_name", "message", "partition_key", "partners", "recorded_at", "run_id"}
    ),
}
# pg_advisory_xact_lock key of schema upgrades ("gbs-schema" as a number); per database.
ADVISORY_LOCK_KEY = 0x6762732D736368
LOCK_TIMEOUT_SECONDS = 600


class StateSchemaError(RuntimeError):
    """The state database cannot be brought to the models' schema; the message says why."""


def alembic_config(connection: sa.Connection | None = None, metadata: sa.MetaData | None = None) -> Config:
    """Alembic's configuration in code; migrating needs the connection and the models."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    if metadata is not None:
        config.attributes["target_metadata"] = metadata
    return config


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StateSchemaError(f"no migration revisions found in {MIGRATIONS_DIR / 'versions'}")
    return head


def is_known_revision(revision: str) -> bool:
    """Whether this release has the revision (a newer release's database has one it lacks)."""
    return any(r.revision == revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at; None for an empty or pre-migrations database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_to_head(engine: sa.Engine, metadata: sa.MetaData) -> str:
    """Bring the state database to the newest revision (see the module docstring); returns it.

    ``metadata`` is the models (``pipeline.store.schema.metadata``), for the environment.
    """
    head = head_revision()
    if current_revision(engine) == head:
        return head
    with _file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'"))
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        _upgrade(conn, metadata)
    return head


def _upgrade(conn: sa.Connection, metadata: sa.MetaData) -> None:
    config = alembic_config(conn, metadata)
    current = MigrationContext.configure(conn).get_current_revision()
    if current is None:
        present = _present_baseline_tables(conn)
        if present == set(BASELINE_TABLES):
            command.stamp(config, BASELINE_REVISION)
    elif not is_known_revision(current):
        raise StateSchemaError(
            f"the state database is at revision {current}, which this release does not have "
            f"(its newest is {head_revision()}): a newer gradient-billing-sync migrated it. "
            "Run that release, or restore the database from before the upgrade."
        )
    command.upgrade(config, "head")


def _present_baseline_tables(conn: sa.Connection) -> set[str]:
    """The baseline tables a pre-migrations database has, after checking their columns."""
    inspector = sa.inspect(conn)
    present = set(BASELINE_TABLES) & set(inspector.get_table_names())
    for table in sorted(present):
        columns = {column["name"] for column in inspector.get_columns(table)}
        missing = BASELINE_TABLES[table] - columns
        if missing:
            raise StateSchemaError(
                f"the state database has a table {table!r} without the columns "
                f"{', '.join(sorted(missing))}: it is not this pipeline's state database, or it "
                "was changed by hand. Point STATE_DB_URL at this pipeline's database or an empty one."
            )
    return present


@contextmanager
def _file_lock(engine: sa.Engine) -> Iterator[None]:
    """A lock file next to a SQLite database file; nothing for other databases."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    lock = FileLock(f"{Path(database).resolve()}.migrate.lock")
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
    except Timeout:
        raise StateSchemaError(
            f"waited {LOCK_TIMEOUT_SECONDS} s for another process upgrading the state database "
            f"(lock {lock.lock_file}); try again when it has finished"
        ) from None
    try:
        yield
    finally:
        lock.release()


def new_revision(message: str, metadata: sa.MetaData) -> Path:
    """Autogenerate the next revision from the models' difference to head; returns its file."""
    head = head_revision()
    with tempfile.TemporaryDirectory() as scratch:
        engine = sa.create_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        try:
            upgrade_to_head(engine, metadata)
            with engine.begin() as conn:
                script = command.revision(
                    alembic_config(conn, metadata),
                    message=message,
                    autogenerate=True,
                    rev_id=f"{int(head) + 1:04d}",
                )
        finally:
            engine.dispose()
    head_revision.cache_clear()
    if script is None or isinstance(script, list):
        raise StateSchemaError("alembic did not write exactly one revision")
    return Path(script.path)
