"""``gradient-billing-sync db``: the state database's schema version (Alembic migrations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import sqlalchemy as sa


@click.group("db")
def db() -> None:
    """The state database (STATE_DB_URL): schema version and upgrades."""


@contextmanager
def _state_engine() -> Iterator[tuple[sa.Engine, str]]:
    """The state database's engine and its URL with the password hidden."""
    import sqlalchemy as sa

    from pipeline import settings
    from pipeline.store import migrations

    url = settings.state_db_url()
    shown = settings.redact_url(url)
    engine = sa.create_engine(url)
    try:
        yield engine, shown
    except sa.exc.OperationalError as exc:
        first_line = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise click.ClickException(
            f"the state database at {shown} is unreachable ({first_line}). "
            "Check STATE_DB_URL and that the database is up."
        ) from None
    except migrations.StateSchemaError as exc:
        raise click.ClickException(f"{shown}: {exc}") from None
    finally:
        engine.dispose()


@db.command("upgrade")
def upgrade() -> None:
    """Upgrade the state database to the newest revision (creates an empty one; adopts a
    database made before migrations). Safe to run while other processes start."""
    from pipeline.store import migrations
    from pipeline.store.schema import metadata

    with _state_engine() as (engine, shown):
        before = migrations.current_revision(engine)
        head = migrations.upgrade_to_head(engine, metadata)
    if before == head:
        click.echo(f"{shown}: already at revision {head} (head)")
    else:
        click.echo(f"{shown}: upgraded from {before or 'no revision'} to {head} (head)")


@db.command("current")
def current() -> None:
    """Show the state database's revision and whether it is the newest."""
    from pipeline.store import migrations

    with _state_engine() as (engine, shown):
        revision = migrations.current_revision(engine)
    head = migrations.head_revision()
    if revision == head:
        state = "head"
    elif revision is None:
        state = f"no revision; `gradient-billing-sync db upgrade` brings it to {head}"
    elif not migrations.is_known_revision(revision):
        state = f"newer than this release, whose newest is {head}"
    else:
        state = f"behind head {head}; `gradient-billing-sync db upgrade` brings it there"
    click.echo(f"{shown}: {revision or '-'} ({state})")


@db.command("revision")
@click.option("-m", "--message", required=True, help="What the revision changes, e.g. 'add push leases'.")
def revision(message: str) -> None:
    """(Developers) Autogenerate the next revision from pipeline/store/schema.py's difference
    to the current head, into pipeline/store/migrations/versions/. Review it before committing."""
    from pipeline.store import migrations
    from pipeline.store.schema import metadata

    path = migrations.new_revision(message, metadata)
    click.echo(f"wrote {path}")
