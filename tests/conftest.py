"""Shared fixtures: real SQLite files and real PostgreSQL and MariaDB databases.

PostgreSQL comes from ``TEST_POSTGRES_URL`` (default: trust auth on 127.0.0.1:5432). Each
test gets its own freshly created database. When PostgreSQL is unreachable, tests that need
it fail loudly under CI (``CI=true``) and are skipped with the reason elsewhere. MariaDB
(or MySQL) comes from ``TEST_MARIADB_URL`` (default: root without password on
127.0.0.1:3306, PyMySQL from the ``mysql`` extra), with the same rules.

The suite runs in parallel (``pytest -n 2``, pytest-xdist: one process per worker), so nothing
here is shared between tests: databases are created per test under unique names, ports are
free ones the OS hands out, Dagster instances live in each test's ``tmp_path``, and each worker
gets its own embedded data directory (below).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

# A deployment must fix its first billing month (settings refuse a PRODUCT_DB_URL without it);
# the tests' product databases are deployments of that kind, their data after 2024-01. Set
# before any pipeline module is imported, and inherited by the processes tests start.
os.environ.setdefault("FIRST_BILLING_MONTH", "2024-01")
@pytest.fixture(scope="session", autouse=True)
def own_data_dir(tmp_path_factory) -> Iterator[None]:
    """Each test process gets its own ``GBS_DATA_DIR`` unless the caller set one, so no two
    workers write the repository's ``var/`` (the generated partner-key encryption key, the
    default SQLite files). A test about the repository's defaults sets it empty itself."""
    if os.environ.get("GBS_DATA_DIR"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GBS_DATA_DIR", str(tmp_path_factory.mktemp("gbs-data")))
        yield


POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
_postgres_problem: str | None = None
_postgres_checked = False


def postgres_problem() -> str | None:
    """None when PostgreSQL is reachable, else why not."""
    global _postgres_checked, _postgres_problem
    if not _postgres_checked:
        _postgres_checked = True
        try:
            engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 5})
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            _postgres_problem = f"PostgreSQL at {make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)} unreachable: {type(exc).__name__}"
    return _postgres_problem


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{problem} — CI must have PostgreSQL (.ci/run starts it)", pytrace=False)
    pytest.skip(f"{problem}; start it to run the PostgreSQL tests")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    require_postgres()
    name = f"gbs_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from pipeline.resources import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


MARIADB_ADMIN_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
_mariadb_problem: str | None = None
_mariadb_checked = False


def mariadb_problem() -> str | None:
    """None when MariaDB/MySQL is reachable (driver installed), else why not."""
    global _mariadb_checked, _mariadb_problem
    if not _mariadb_checked:
        _mariadb_checked = True
        where = make_url(MARIADB_ADMIN_URL).render_as_string(hide_password=True)
        try:
            engine = sa.create_engine(MARIADB_ADMIN_URL, connect_args={"connect_timeout": 5})
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            engine.dispose()
        except ModuleNotFoundError as exc:
            _mariadb_problem = f"MariaDB driver missing ({exc.name}); install the mysql extra: pip install -e '.[dev,mysql]'"
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            _mariadb_problem = f"MariaDB at {where} unreachable: {type(exc).__name__}"
    return _mariadb_problem


def require_mariadb() -> None:
    problem = mariadb_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{problem} — CI must have MariaDB (.ci/run starts it)", pytrace=False)
    pytest.skip(f"{problem}; start it to run the MariaDB tests")


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh, empty MariaDB/MySQL database (utf8mb4) for one test; dropped afterwards."""
    require_mariadb()
    name = f"gbs_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    url = make_url(MARIADB_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from pipeline.resources import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / f'db-{uuid.uuid4().hex[:8]}.db'}"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def product_url(request, tmp_path) -> Iterator[str]:
    """A fresh product database, once on SQLite, once on PostgreSQL and once on MariaDB."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'product.db'}"
    elif request.param == "mariadb":
        yield request.getfixturevalue("mariadb_url")
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def product_engine(product_url) -> Iterator[sa.Engine]:
    engine = sa.create_engine(product_url)
    yield engine
    engine.dispose()


@pytest.fixture
def state_engine(sqlite_url) -> Iterator[sa.Engine]:
    from pipeline.store.schema import ensure_state_schema

    engine = sa.create_engine(sqlite_url)
    ensure_state_schema(engine)
    yield engine
    engine.dispose()
