"""State-database migrations: the migrated schema is the models, on SQLite and PostgreSQL;
first use upgrades (empty, behind, pre-migrations databases); concurrent first use is safe;
``gradient-billing-sync db upgrade`` / ``db current``."""

from __future__ import annotations

import multiprocessing
from datetime import date, datetime, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from pipeline.cli import main
from pipeline.resources import StateDatabase
from pipeline.store import migrations
from pipeline.store.months import (
    counts_fingerprint,
    load_billable_counts,
    load_month_validation,
    promote_staged_counts,
)
from pipeline.store.schema import (
    billable_counts,
    ensure_state_schema,
    ledger_entries,
    metadata,
    staged_billable_counts,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, sqlite_url) -> str:
    return sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(state_url):
    engine = sa.create_engine(state_url)
    yield engine
    engine.dispose()


def schema_diff(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def revision_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]


def baseline_tables() -> list[sa.Table]:
    return [metadata.tables[name] for name in migrations.BASELINE_TABLES]


def test_migrated_schema_equals_models(engine):
    """Fails when schema.py changed without a revision (or a revision differs from it)."""
    migrations.upgrade_to_head(engine, metadata)
    assert schema_diff(engine) == []
    assert revision_rows(engine) == [migrations.head_revision()]


def test_revisions_form_one_line_starting_at_the_baseline():
    script = ScriptDirectory.from_config(migrations.alembic_config())
    revisions = list(script.walk_revisions())
    assert len(script.get_heads()) == 1
    assert revisions[-1].revision == migrations.BASELINE_REVISION
    assert [r.revision for r in reversed(revisions)] == [f"{n:04d}" for n in range(1, len(revisions) + 1)]


def test_first_use_of_an_empty_database_upgrades_it(state_url):
    engine = StateDatabase(url=state_url).engine()
    assert migrations.current_revision(engine) == migrations.head_revision()
    assert schema_diff(engine) == []


def test_a_database_behind_head_is_upgraded_on_first_use(engine):
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn, metadata), migrations.BASELINE_REVISION)
    _insert_counts(engine)

    ensure_state_schema(engine)

    assert revision_rows(engine) == [migrations.head_revision()]
    assert schema_diff(engine) == []
    assert _counted_users(engine) == 17


def test_a_pre_migrations_database_is_stamped_and_keeps_its_rows(engine):
    metadata.create_all(engine, tables=baseline_tables())  # what installs before Alembic did
    _insert_counts(engine)
    with engine.begin() as conn:
        conn.execute(ledger_entries.insert().values(
            partner_id="p1", month=date(2026, 9, 1), account_id="c1", sku="SAT", value=17,
            outcome="delivered", http_status=200, run_id="r0", recorded_at=datetime.now(timezone.utc),
        ))
    assert migrations.current_revision(engine) is None

    ensure_state_schema(engine)

    assert revision_rows(engine) == [migrations.head_revision()]
    assert schema_diff(engine) == []
    assert _counted_users(engine) == 17
    with engine.connect() as conn:
        assert conn.execute(sa.select(ledger_entries.c.value)).scalars().all() == [17]


def test_a_partial_pre_migrations_database_gets_the_missing_tables(engine):
    metadata.create_all(engine, tables=[metadata.tables["billable_counts"]])
    _insert_counts(engine)

    ensure_state_schema(engine)

    assert schema_diff(engine) == []
    assert _counted_users(engine) == 17


def test_a_foreign_table_of_a_baseline_name_is_refused_not_adopted(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE billable_counts (id INTEGER PRIMARY KEY)"))

    with pytest.raises(migrations.StateSchemaError, match="billable_counts.*company_id"):
        ensure_state_schema(engine)
    assert migrations.current_revision(engine) is None


def test_at_head_first_use_only_reads_the_revision(engine):
    ensure_state_schema(engine)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    ensure_state_schema(engine)

    assert statements, "the revision was not read"
    assert all(s.lstrip().upper().startswith(("SELECT", "PRAGMA")) for s in statements), statements


def _upgrade_in_process(url: str, barrier) -> None:
    engine = sa.create_engine(url)
    barrier.wait()
    ensure_state_schema(engine)
    engine.dispose()


def test_two_processes_upgrading_a_fresh_database_at_once_both_succeed(state_url, engine):
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(2)
    processes = [spawn.Process(target=_upgrade_in_process, args=(state_url, barrier)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]
    assert revision_rows(engine) == [migrations.head_revision()]
    assert schema_diff(engine) == []


def test_cli_db_upgrade_then_current(postgres_url, monkeypatch):
    # trust authentication ignores the password: it is here to be redacted
    url = make_url(postgres_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    monkeypatch.setenv("STATE_DB_URL", url)
    runner = CliRunner()
    head = migrations.head_revision()

    first = runner.invoke(main, ["db", "current"])
    upgraded = runner.invoke(main, ["db", "upgrade"])
    again = runner.invoke(main, ["db", "upgrade"])
    current = runner.invoke(main, ["db", "current"])

    for result in (first, upgraded, again, current):
        assert result.exit_code == 0, result.output
        assert "s3cret-pw" not in result.output
        assert "***" in result.output
    assert f"no revision; `gradient-billing-sync db upgrade` brings it to {head}" in first.output
    assert f"upgraded from no revision to {head} (head)" in upgraded.output
    assert f"already at revision {head} (head)" in again.output
    assert f": {head} (head)" in current.output
    engine = sa.create_engine(postgres_url)
    try:
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def _insert_validation_of_run_r0(conn: sa.Connection, month: date, **columns: object) -> None:
    """A validation record of run r0 (5 rows, all valid) as an older revision's schema holds it:
    only the given ``columns`` beyond the first release's."""
    names = ", ".join(["month", "rows_in", "rows_valid", "rows_quarantined", "reason_counts", "known_skus",
                       "query_sha256", "run_id", "validated_at", *columns])
    values = ", ".join([":month", "5", "5", "0", "'{}'", "'[]'", "'q'", "'r0'", ":at", *(f":{c}" for c in columns)])
    conn.execute(sa.text(f"INSERT INTO month_validations ({names}) VALUES ({values})"),
                 {"month": month, "at": datetime.now(timezone.utc), **columns})


def test_0004_keeps_the_validations_as_not_staged_and_adds_the_staging_table(engine):
    """A month validated before 0004 did not stage its counts: counts_staged is NULL, so its
    billable_counts counts afresh; the staging table starts empty."""
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn, metadata), "0003")
        _insert_validation_of_run_r0(conn, date(2026, 9, 1))

    ensure_state_schema(engine)

    assert schema_diff(engine) == []
    validation = load_month_validation(engine, date(2026, 9, 1))
    assert (validation.run_id, validation.rows_valid, validation.counts_staged) == ("r0", 5, None)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(staged_billable_counts)).scalar_one() == 0
    with engine.begin() as conn:  # and back: 0004 downgrades cleanly
        command.downgrade(migrations.alembic_config(conn, metadata), "0003")
    inspector = sa.inspect(engine)
    assert "staged_billable_counts" not in inspector.get_table_names()
    assert "counts_staged" not in {c["name"] for c in inspector.get_columns("month_validations")}


def test_0005_leaves_the_summary_of_earlier_validations_to_the_promotion(engine):
    """A month staged before 0005 has no recorded fingerprint or totals: its promotion reads
    the staged counts back to compute them, as before; 0005 downgrades cleanly."""
    month = date(2026, 9, 1)
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn, metadata), "0004")
        _insert_validation_of_run_r0(conn, month, counts_staged=2)
        for company, users in (("c2", 4), ("c1", 3)):
            conn.execute(sa.text(
                "INSERT INTO staged_billable_counts (month, partner_id, company_id, sku, company_name, "
                "billable_users, run_id, staged_at) VALUES (:month, 'p1', :company, 'SAT', 'Acme', :users, 'r0', :at)"
            ), {"month": month, "company": company, "users": users, "at": datetime.now(timezone.utc)})

    ensure_state_schema(engine)

    assert schema_diff(engine) == []
    validation = load_month_validation(engine, month)
    assert validation.counts_staged == 2 and validation.counts_fingerprint is None
    stored = promote_staged_counts(engine, month, rows_in=5, rows_quarantined=0, query_sha256="q", run_id="r0")
    assert stored is not None and stored.rows == 2
    assert (stored.computation.partners, stored.computation.companies, stored.computation.billable_users) == (1, 2, 7)
    assert stored.computation.counts_fingerprint == counts_fingerprint(load_billable_counts(engine, month))
    with engine.begin() as conn:
        command.downgrade(migrations.alembic_config(conn, metadata), "0004")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("month_validations")}
    assert "counts_staged" in columns and not columns & {
        "counts_fingerprint", "counts_partners", "counts_companies", "counts_billable_users"}


def _insert_counts(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(billable_counts.insert().values(
            month=date(2026, 9, 1), partner_id="p1", company_id="c1", sku="SAT", company_name="Acme",
            billable_users=17, run_id="r0", computed_at=datetime.now(timezone.utc),
        ))


def _counted_users(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(billable_counts.c.billable_users)).scalar_one()


def test_db_revision_autogenerates_the_next_revision_from_the_models(tmp_path, monkeypatch):
    """The documented way to add a revision: the written file migrates to the changed models."""
    import shutil

    folder = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrations, "MIGRATIONS_DIR", folder)
    migrations.head_revision.cache_clear()
    changed = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    sa.Table("partner_notes", changed, sa.Column("partner_id", sa.Text, primary_key=True),
             sa.Column("note", sa.Text, nullable=False))
    before = migrations.head_revision()
    try:
        path = migrations.new_revision("add partner notes", changed)
        after = migrations.head_revision()
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
        migrations.upgrade_to_head(engine, changed)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), changed) == []
        engine.dispose()
    finally:
        migrations.head_revision.cache_clear()
    assert path.parent == folder / "versions"
    assert path.name == f"{int(before) + 1:04d}_add_partner_notes.py"
    assert after == f"{int(before) + 1:04d}"
    assert "partner_notes" in path.read_text()


def test_a_database_from_a_newer_release_is_refused_with_the_reason(engine, monkeypatch):
    migrations.upgrade_to_head(engine, metadata)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))

    with pytest.raises(migrations.StateSchemaError, match="revision 9999, which this release does not have"):
        ensure_state_schema(engine)

    monkeypatch.setenv("STATE_DB_URL", engine.url.render_as_string(hide_password=False))
    current = CliRunner().invoke(main, ["db", "current"])
    assert current.exit_code == 0, current.output
    assert f"9999 (newer than this release, whose newest is {migrations.head_revision()})" in current.output
    upgrade = CliRunner().invoke(main, ["db", "upgrade"])
    assert upgrade.exit_code == 1
    assert "revision 9999, which this release does not have" in upgrade.output


def test_cli_db_upgrade_names_an_unreachable_database_without_its_password(postgres_url, monkeypatch):
    url = make_url(postgres_url).set(database="gbs_no_such_database", password="s3cret-pw")
    monkeypatch.setenv("STATE_DB_URL", url.render_as_string(hide_password=False))

    result = CliRunner().invoke(main, ["db", "upgrade"])

    assert result.exit_code == 1
    assert "the state database at " in result.output and "is unreachable" in result.output
    assert "gbs_no_such_database" in result.output and "STATE_DB_URL" in result.output
    assert "s3cret-pw" not in result.output
