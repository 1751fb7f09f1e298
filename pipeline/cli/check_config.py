"""``gradient-billing-sync check-config``: every setting with its source, then the checks a run
makes before any work (the same ones) and whether the databases answer, exit status 1 when any
fails."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pipeline import settings
from pipeline.resources import PreflightCheck


@click.command("check-config")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for Gradient to answer.")
def check_config(timeout: float) -> None:
    """Print every setting (source: environment or default; secrets only as set/unset), then
    check them: each variable parses, the encryption keys and the vendor key are usable, and
    Gradient answers at GRADIENT_BASE_URL. Exit status 1 when anything is wrong."""
    from pipeline.resources import default_resources, gradient_preflight

    try:
        config = settings.load_settings()
    except settings.ConfigurationError as exc:
        _print_raw_settings(exc.problems)
        click.echo(f"\n{exc}")
        sys.exit(1)
    width = max(len(name) for name in settings.ENV_NAMES)
    for name, source, shown in settings.describe(config):
        click.echo(f"{name:<{width}}  {source:<11}  {shown}")
    click.echo("\nchecks:")
    click.echo("  ok      every variable parses")
    resources = default_resources(config, env_vars=False)
    checks = [
        database_check("PRODUCT_DB_URL", "product database", config.product_db, timeout, must_exist=True),
        database_check("STATE_DB_URL", "state database", config.state_db, timeout, must_exist=False),
        *gradient_preflight(resources["gradient"], resources["partner_sources"], timeout),
    ]
    for check in checks:
        click.echo(f"  {'ok' if check.ok else 'FAILED':<6}  {check.what}"
                   + (f": {check.detail}" if check.detail and check.ok else ""))
        if not check.ok:
            click.echo(f"          {check.detail}")
    sys.exit(0 if all(check.ok for check in checks) else 1)


def database_check(setting: str, what: str, url: str, timeout: float, must_exist: bool) -> PreflightCheck:
    """Whether a database answers ``SELECT 1``; a SQLite file is only looked for, never created."""
    shown = settings.redact_url(url)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        exists = bool(parsed.database) and Path(parsed.database).is_file()
        if exists or not must_exist:
            return PreflightCheck(setting, f"{what} at {shown}", True,
                                  "" if exists else "created on first use")
        return PreflightCheck(setting, f"{what} at {shown}", False,
                              f"{setting} names a SQLite file that does not exist; run "
                              "`gradient-billing-sync seed-demo` or point it at the product database.")
    connect_args = {"connect_timeout": max(1, int(timeout))} if backend in ("postgresql", "mysql", "mariadb") else {}
    engine = sa.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        return PreflightCheck(setting, f"{what} at {shown}", False,
                              f"{setting}: the {what} does not answer ({type(cause).__name__}: "
                              f"{lines[0] if lines else 'no message'}); check the URL and that it is up.")
    finally:
        engine.dispose()
    return PreflightCheck(setting, f"{what} at {shown}", True)


def _print_raw_settings(problems: dict[str, str]) -> None:
    """The variables as the environment gives them, when they do not parse: sources only for
    secrets and URLs (which may hold a password), which ones are wrong."""
    width = max(len(name) for name in settings.ENV_NAMES)
    for name in settings.ENV_NAMES:
        source = "environment" if settings.is_set(name) else "default"
        verdict = "WRONG" if name in problems else "ok"
        click.echo(f"{name:<{width}}  {source:<11}  {verdict}")
