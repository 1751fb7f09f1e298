"""``gradient-billing-sync check-config``: every setting with the value in effect and where it
comes from, then the checks a run makes before any work (the same ones), whether the
databases answer and whether every connected partner's stored key decrypts; exit status 1
when any fails."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from pipeline.cli.tables import cell, echo_table

if TYPE_CHECKING:
    from pipeline.resources import PreflightCheck

# The reference queries a *_SQL variable falls back to when unset.
REFERENCE_QUERIES = {
    "UTILIZATION_SQL": "utilization.sql",
    "SERVICES_SQL": "services.sql",
    "CONNECTIONS_SQL": "connections.sql",
    "COMPANIES_SQL": "companies.sql",
    "SYNC_REQUESTS_SQL": "sync_requests.sql",
}


@click.command("check-config")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for Gradient to answer.")
def check_config(timeout: float) -> None:
    """Print every setting with the value in effect (source: environment or default; secrets
    only as set/unset), then check them: each variable parses, the encryption keys and the
    vendor key are usable, the databases and Gradient answer, and every connected partner's
    stored key decrypts. Exit status 1 when anything is wrong."""
    from pipeline import settings
    from pipeline.resources import PartnerSources, default_resources, gradient_preflight

    try:
        config = settings.load_settings()
    except settings.ConfigurationError as exc:
        _print_raw_settings(exc.problems)
        click.echo(f"\n{exc}")
        sys.exit(1)
    echo_table(("variable", "source", "value in effect"), effective_settings(config))
    resources = default_resources(config, env_vars=False)
    # the keys a run decrypts with (outside Dagster default_resources leaves them to the local key)
    keys = PartnerSources(encryption_keys=config.encryption_keys)
    product = database_check("PRODUCT_DB_URL", "product database", config.product_db, timeout, must_exist=True)
    checks = [
        product,
        database_check("STATE_DB_URL", "state database", config.state_db, timeout, must_exist=False),
        *[_plain_words(c) for c in gradient_preflight(resources["gradient"], keys, timeout)],
    ]
    if product.ok:
        checks.append(partner_keys_check(config, config.encryption_keys))
    rows = [("ok", "every variable parses")]
    for check in checks:
        if check.ok:
            rows.append(("ok", check.what + (f": {check.detail}" if check.detail else "")))
        else:
            rows.append(("FAILED", check.what))
            rows.extend(("", line) for line in check.detail.splitlines())
    click.echo("\nchecks:")
    echo_table(("", "check"), rows, header=False, indent=2, min_widths={0: 6})
    sys.exit(0 if all(check.ok for check in checks) else 1)


def effective_settings(config) -> list[tuple[str, str, str]]:
    """(variable, environment | default, the value in effect): a default is shown as what it
    resolves to (the partition range's first month, the instance directory, the reference
    query file...), not as "(not set)"."""
    from pipeline import settings

    return [
        (name, source, _in_effect(name, shown, config) if source == "default" else shown)
        for name, source, shown in settings.describe(config)
    ]


def _in_effect(name: str, shown: str, config) -> str:
    from sqlalchemy.engine import make_url

    from pipeline import settings

    if name == "FIRST_BILLING_MONTH":
        from pipeline.partitions import monthly_partitions

        return f"{monthly_partitions.start:%Y-%m} (12 months before this month)"
    if name == "DAGSTER_HOME":
        from pipeline.cli.runs import instance_home

        return f"{instance_home()} (the repository's instance, the one `dagster dev` here uses)"
    if name == "STATEMENTS_DIR":
        return str(config.data_dir / "statements")
    if name in REFERENCE_QUERIES:
        dialect = make_url(config.product_db).get_backend_name()
        return f"{settings.reference_sql(dialect, REFERENCE_QUERIES[name])} (reference schema)"
    if name == "GRADIENT_KEY_ENCRYPTION_KEYS":
        return f"unset: the key generated into {config.data_dir / 'partner-key-encryption.key'}"
    if name == "GRADIENT_VENDOR_API_KEY":
        return "unset: the local emulator's demo key"
    if name == "PARTNER_CONTACTS_SQL" or name == "STATEMENTS_SMTP_URL":
        return "unset: statements are written, not e-mailed"
    if name.startswith("ALERT_") and shown in ("(not set)", "unset"):
        return "unset: this alert channel is off"
    return "unset" if shown == "(not set)" else shown


def _plain_words(check: PreflightCheck) -> PreflightCheck:
    """Gradient's root answering e.g. HTTP 404 means it is up: say so in those words."""
    import dataclasses

    if check.setting == "GRADIENT_BASE_URL" and check.ok and check.detail.startswith("HTTP "):
        return dataclasses.replace(
            check,
            detail=(
                f"it is up (its base URL answered {check.detail}: any answer means reachable; "
                "the API's own paths and each partner's token are used by a run)"
            ),
        )
    return check


def partner_keys_check(config, key_material: str) -> PreflightCheck:
    """Whether every connected partner's stored key decrypts with GRADIENT_KEY_ENCRYPTION_KEYS:
    the partners whose key does not, by id (never a key); those opened only by an older key
    are named for ``rotate``."""
    import sqlalchemy as sa

    from pipeline.gradient.partner_keys import PartnerKeyError, key_diagnosis
    from pipeline.resources import PreflightCheck
    from pipeline.settings import ConfigurationError
    from pipeline.source.partners import load_connections

    what = "connected partners' stored API keys decrypt"
    engine = sa.create_engine(config.product_db)
    try:
        with engine.connect() as conn:
            connections = load_connections(conn, config.connections_sql)
    except (ConfigurationError, sa.exc.DBAPIError) as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return PreflightCheck(
            "CONNECTIONS_SQL",
            what,
            False,
            f"the connections query failed ({first[0] if first else type(exc).__name__}); "
            "`gradient-billing-sync check-source` shows why",
        )
    finally:
        engine.dispose()
    connected = [(c.partner_id, c.encrypted_api_key) for c in connections if c.is_connected]
    try:
        keys = key_diagnosis(connected, key_material)
    except PartnerKeyError:
        return PreflightCheck(
            "GRADIENT_KEY_ENCRYPTION_KEYS",
            what,
            False,
            "not checked: GRADIENT_KEY_ENCRYPTION_KEYS does not parse (see above)",
        )
    failed = [k for k in keys if k.opened_by is None]
    if failed:
        problems: dict[str, list[str]] = {}  # problem -> partners, so the fix is said once
        for k in failed:
            problems.setdefault(k.problem, []).append(cell(k.partner_id))  # ids are product data
        return PreflightCheck(
            "GRADIENT_KEY_ENCRYPTION_KEYS",
            what,
            False,
            "\n".join(
                f"{len(ids)} partner{'s' if len(ids) > 1 else ''} ({', '.join(ids)}): {problem}"
                for problem, ids in problems.items()
            ),
        )
    older = [k for k in keys if not k.under_newest]
    detail = f"{len(keys)} of {len(keys)}" if keys else "no partner is connected yet"
    if older:
        detail += (
            f"; {len(older)} only with an older key ({', '.join(cell(k.partner_id) for k in older[:10])}"
            f"{', ...' if len(older) > 10 else ''}): `gradient-billing-sync rotate` re-encrypts them "
            "under the newest, then the old key can be removed"
        )
    return PreflightCheck("GRADIENT_KEY_ENCRYPTION_KEYS", what, True, detail)


def database_check(setting: str, what: str, url: str, timeout: float, must_exist: bool) -> PreflightCheck:
    """Whether a database answers ``SELECT 1``; a SQLite file is only looked for, never created."""
    from pathlib import Path

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from pipeline import settings
    from pipeline.resources import PreflightCheck

    shown = settings.redact_url(url)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        exists = bool(parsed.database) and Path(parsed.database).is_file()
        if exists or not must_exist:
            return PreflightCheck(setting, f"{what} at {shown}", True, "" if exists else "created on first use")
        return PreflightCheck(
            setting,
            f"{what} at {shown}",
            False,
            f"{setting} names a SQLite file that does not exist; run "
            "`gradient-billing-sync seed-demo` or point it at the product database.",
        )
    connect_args = {"connect_timeout": max(1, int(timeout))} if backend in ("postgresql", "mysql", "mariadb") else {}
    engine = sa.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        return PreflightCheck(
            setting,
            f"{what} at {shown}",
            False,
            f"{setting}: the {what} does not answer ({type(cause).__name__}: "
            f"{lines[0] if lines else 'no message'}); check the URL and that it is up.",
        )
    finally:
        engine.dispose()
    return PreflightCheck(setting, f"{what} at {shown}", True)


def _print_raw_settings(problems: dict[str, str]) -> None:
    """The variables as the environment gives them, when they do not parse: sources only for
    secrets and URLs (which may hold a password), which ones are wrong."""
    from pipeline import settings

    echo_table(
        ("variable", "source", "verdict"),
        [
            (name, "environment" if settings.is_set(name) else "default", "WRONG" if name in problems else "ok")
            for name in settings.ENV_NAMES
        ],
    )
