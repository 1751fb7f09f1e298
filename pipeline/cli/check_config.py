"""``gradient-billing-sync check-config``: every setting with its source, then the checks a run
makes before any work (the same ones), exit status 1 when any fails."""

from __future__ import annotations

import sys

import click

from pipeline import settings


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
    checks = gradient_preflight(resources["gradient"], resources["partner_sources"], timeout)
    for check in checks:
        click.echo(f"  {'ok' if check.ok else 'FAILED':<6}  {check.what}"
                   + (f": {check.detail}" if check.detail and check.ok else ""))
        if not check.ok:
            click.echo(f"          {check.detail}")
    sys.exit(0 if all(check.ok for check in checks) else 1)


def _print_raw_settings(problems: dict[str, str]) -> None:
    """The variables as the environment gives them, when they do not parse: sources only for
    secrets and URLs (which may hold a password), which ones are wrong."""
    width = max(len(name) for name in settings.ENV_NAMES)
    for name in settings.ENV_NAMES:
        source = "environment" if settings.is_set(name) else "default"
        verdict = "WRONG" if name in problems else "ok"
        click.echo(f"{name:<{width}}  {source:<11}  {verdict}")
