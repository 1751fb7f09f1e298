"""The ``gradient-billing-sync`` command line.

Only click is imported here at module level, and every command module under ``pipeline.cli``
keeps its heavy imports (Dagster, the pipeline, SQLAlchemy, pandas) inside the command body:
``--help`` and ``--version`` then answer without loading any of them (tests/test_cli.py checks
it). A new command is a plain ``@main.command(...)`` whose body imports what it needs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from pipeline.cli.common import billing_months as _months
from pipeline.cli.common import cli_dagster_instance as _instance
from pipeline.cli.common import month_range as _month_range
from pipeline.cli.common import parse_month as _parse_month
from pipeline.cli.common import partition_month as _partition_month

if TYPE_CHECKING:
    from pipeline.billing.month import BillingMonth

QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# Commands that must work whatever the configuration: they report it or help to fix it.
CONFIGURATION_FREE_COMMANDS = frozenset({"check-config", "generate-encryption-key"})


class _ConfiguredGroup(click.Group):
    """Notes whether the command's own --help was asked for: help needs no configuration."""

    def invoke(self, ctx: click.Context) -> object:
        ctx.meta["gbs.help_only"] = "--help" in ctx.args
        return super().invoke(ctx)


class _TruthfulGroup(_ConfiguredGroup):
    """An unexpected error is one line with its cause (the messages name the fix); --verbose
    shows the trace."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as exc:
            if ctx.meta.get("gbs.verbose"):
                from pipeline.cli.errors import echo_trace

                echo_trace(exc.__cause__ or exc.__context__)  # what a deliberate message replaced
            raise
        except (click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:
            if ctx.meta.get("gbs.verbose"):
                raise
            from pipeline.cli.errors import underlying_error
            from pipeline.cli.runs import one_line_error

            raise click.ClickException(one_line_error(underlying_error(exc)) + " (--verbose for the trace)") from None


@click.group(cls=_TruthfulGroup)
@click.version_option(
    package_name="gradient-billing-sync", prog_name="gradient-billing-sync", help="Show the installed version and exit."
)
@click.option("--verbose", is_flag=True, help="On failure, print the full error trace and Dagster's log.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Monthly MSP billing: product utilization -> billable users -> Gradient MSP."""
    ctx.meta["gbs.verbose"] = verbose
    if not verbose:
        import warnings

        # Dagster's notes on its own beta/preview APIs are for developers, not for the operator
        warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")
    if ctx.invoked_subcommand in CONFIGURATION_FREE_COMMANDS or ctx.meta.get("gbs.help_only"):
        return
    from pipeline import settings

    try:
        settings.load_settings()
    except settings.ConfigurationError as exc:
        raise click.ClickException(f"{exc}\n(`gradient-billing-sync check-config` shows every setting)") from None


@main.command("seed-demo")
@click.option("--seed", default=7, show_default=True, help="Random seed: same seed, same rows.")
@click.option("--partners", default=4, show_default=True, help="Number of partners (MSPs).")
@click.option("--companies", "companies", default="6-12", show_default=True, help="Companies per partner, MIN-MAX.")
@click.option("--users", "users", default="5-40", show_default=True, help="Users per company, MIN-MAX.")
@click.option("--end-month", default=None, help="Newest month with data (YYYY-MM); default this month.")
@click.option("--history-months", default=6, show_default=True, help="Months of history up to --end-month.")
@click.option("--no-bad-rows", is_flag=True, help="Leave out the documented bad rows.")
def seed_demo(seed, partners, companies, users, end_month, history_months, no_bad_rows) -> None:
    """(Re)create the reference schema in PRODUCT_DB_URL and fill it with demo data; the first
    three partners are connected to Gradient with their demo keys."""
    from pipeline import settings

    summary = _seed(seed, partners, companies, users, end_month, history_months, not no_bad_rows)
    click.echo(
        f"demo data in {settings.redact_url(settings.product_db_url())}: {summary.partners} partners, "
        f"{summary.companies} companies, {summary.users} users, {summary.enrollments} enrollments "
        f"({summary.bad_rows} bad rows for validation to catch)"
    )


def _range(value: str) -> tuple[int, int]:
    low, _, high = value.partition("-")
    return int(low), int(high or low)


def _seed(seed, partners, companies, users, end_month, history_months, bad_rows):
    from datetime import date

    from pipeline.demo.data import DemoSpec
    from pipeline.demo.run import seed as seed_demo_data

    spec = DemoSpec(
        seed=seed,
        partners=partners,
        companies_per_partner=_range(companies),
        users_per_company=_range(users),
        end_month=_parse_month(end_month) if end_month else date.today().replace(day=1),
        history_months=history_months,
        include_bad_rows=bad_rows,
    )
    if not sys.stdout.isatty():
        return seed_demo_data(spec)
    with click.progressbar(length=1, label="seeding companies", show_pos=True) as bar:

        def advance(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        return seed_demo_data(spec, progress=advance)


def _materialize(
    months: list[BillingMonth],
    force_superseded: bool = False,
    trigger: str = "cli",
    *,
    job_name: str = "monthly_billing",
    partner_ids: tuple[str, ...] = (),
    resend: bool = False,
    allow_timezone_change: bool = False,
) -> list[tuple[BillingMonth, bool, str]]:
    """Run the monthly job (or ``job_name``) for each month in order on the instance (through
    its daemon when it has one: pipeline.cli.runs.run_months); one failure stops none. Each
    month's report is printed as soon as that month finishes."""
    from pipeline.cli.runs import run_months

    verbose = bool(click.get_current_context(silent=True) and click.get_current_context().meta.get("gbs.verbose"))
    tags = {}
    if resend:
        tags["gbs/resend"] = "true"
    if allow_timezone_change:
        tags["gbs/allow_timezone_change"] = "true"
    with _instance() as instance:
        return run_months(
            instance,
            months,
            force_superseded=force_superseded,
            trigger=trigger,
            verbose=verbose,
            job_name=job_name,
            partner_ids=partner_ids,
            resend=resend,
            extra_tags=tags,
        )


ALLOW_TIMEZONE_CHANGE = click.option(
    "--allow-timezone-change",
    is_flag=True,
    help="Count and push a month that was delivered under another BILLING_TIMEZONE (users move "
    "between months: check the previous and next month's bills too).",
)


@main.command("run")
@click.option("--month", "months", multiple=True, help="Month to run (YYYY-MM); repeatable.")
@click.option("--last-closed", type=int, default=None, help="Run the N newest closed months.")
@click.option(
    "--force-superseded",
    is_flag=True,
    help="Push a month even when a newer one was already delivered (rolls Gradient back to it).",
)
@ALLOW_TIMEZONE_CHANGE
def run(months, last_closed, force_superseded, allow_timezone_change) -> None:
    """Materialize billing months on the configured instance; a report per month as it finishes."""
    results = _materialize(_months(months, last_closed), force_superseded, allow_timezone_change=allow_timezone_change)
    sys.exit(0 if all(ok for _, ok, _ in results) else 1)


@main.command("push")
@click.option("--month", "months", multiple=True, required=True, help="Month to push (YYYY-MM); repeatable.")
@click.option(
    "--partner", "partner_ids", multiple=True, help="Only this partner (repeatable); default every connected one."
)
@click.option(
    "--resend",
    is_flag=True,
    help="Send every pair again whatever the ledger says was delivered (for counts Gradient "
    "lost in a way the pipeline cannot see).",
)
@click.option(
    "--force-superseded",
    is_flag=True,
    help="Push a month even when a newer one was already delivered (rolls Gradient back to it).",
)
@ALLOW_TIMEZONE_CHANGE
def push(months, partner_ids, resend, force_superseded, allow_timezone_change) -> None:
    """Push a month's stored counts to Gradient (services, accounts, counts) without counting
    it again. Without --resend only what the ledger does not hold as delivered is sent."""
    results = _materialize(
        _months(months, None),
        force_superseded,
        trigger="cli",
        job_name="gradient_load",
        partner_ids=tuple(partner_ids),
        resend=resend,
        allow_timezone_change=allow_timezone_change,
    )
    sys.exit(0 if all(ok for _, ok, _ in results) else 1)


@main.command("backfill")
@click.option("--from", "first", required=True, help="First month (YYYY-MM).")
@click.option("--to", "last", required=True, help="Last month (YYYY-MM), inclusive.")
@click.option(
    "--force-superseded", is_flag=True, help="Push months older than the newest delivered one (rolls partners back)."
)
@click.option(
    "--webserver",
    default=None,
    metavar="URL",
    help="Launch a Dagster asset backfill on this webserver (its daemon runs it) instead of running the months here.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="With --webserver: wait for it.")
@ALLOW_TIMEZONE_CHANGE
def backfill(first, last, force_superseded, webserver, wait, allow_timezone_change) -> None:
    """Run a range of months in order, on the configured instance, and say per month what
    happened: counted, delivered, superseded (older than what Gradient holds) or failed.
    Safe to repeat: the ledger sends only what is not already delivered."""
    months = _month_range(first, last)  # every month checked before any runs or is sent
    if webserver:
        _launch_backfill(webserver, months, force_superseded, wait)
        return
    results = _materialize(months, force_superseded, trigger="backfill", allow_timezone_change=allow_timezone_change)
    failed = [m.label for m, ok, _ in results if not ok]
    click.echo(
        f"backfill {first}..{last}: {len(results) - len(failed)} months succeeded"
        + (f", failed: {', '.join(failed)}" if failed else "")
    )
    sys.exit(1 if failed else 0)


def _launch_backfill(url: str, months: list[BillingMonth], force: bool, wait: bool) -> None:
    from pipeline.automation import dagster_api
    from pipeline.automation.jobs import load_run_config, monthly_billing_job, run_tags

    try:
        client = dagster_api.connect(url)
        backfill_id = dagster_api.launch_asset_backfill(
            client,
            [m.key for m in months],
            job_name=monthly_billing_job.name,
            tags=run_tags("backfill"),
            run_config=load_run_config(monthly_billing_job.name, [], force),
            title=f"billing {months[0].label}..{months[-1].label}",
        )
    except dagster_api.DagsterGraphQLError as exc:
        raise click.ClickException(f"the webserver refused the backfill: {exc}") from None
    click.echo(f"launched backfill {backfill_id} of {len(months)} months on {url}")
    if not wait:
        return
    status = dagster_api.wait_for_backfill(client, backfill_id, stall_timeout=6 * 3600, timeout=6 * 3600)
    for key, run_status in sorted(status["partitions"].items()):
        click.echo(f"  {key[:7]}: {run_status or 'not run'}")
    click.echo(f"backfill {backfill_id}: {status['status']}")
    if status["status"] == "COMPLETED_FAILED" and dagster_api.backfill_succeeded(status):
        click.echo(
            "  every month's run succeeded; Dagster reports the backfill failed because superseded "
            "months are recorded, not materialized in gradient_unit_counts (see each run's gbs/outcome)"
        )
    if not dagster_api.backfill_succeeded(status):
        sys.exit(1)


@main.command("explain")
@click.option("--month", required=True, help="Billing month (YYYY-MM).")
@click.option("--partner", "partner_id", required=True, help="The partner id (MSP).")
@click.option("--company", "company_id", required=True, help="The company id (Gradient account id).")
@click.option("--sku", required=True, help="The vendor service SKU.")
def explain(month, partner_id, company_id, sku) -> None:
    """Trace one number Gradient received back to the users and spans that made it, with
    what was stored and every ledger entry of the push."""
    billing_month = _partition_month(month)  # checked before anything is read

    from pipeline.billing.lineage import explain as trace
    from pipeline.resources import default_resources

    resources = default_resources(env_vars=False)  # outside Dagster: resolved values, never EnvVar
    product, state = resources["product_db"], resources["state_db"]
    with product.connect() as conn:
        try:
            explanation = trace(
                conn, state.engine(), product.utilization_query(), billing_month, partner_id, company_id, sku
            )
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
        from pipeline.cli.lookup import unknown_pair

        problem = unknown_pair(
            conn,
            state.engine(),
            resources["partner_sources"].companies_sql,
            billing_month.month,
            product.known_skus(conn),
            partner_id,
            company_id,
            sku,
        )
    if problem:
        raise click.ClickException(problem)
    click.echo("\n".join(explanation.lines()))


@main.command("demo")
@click.option("--months", "count", default=3, show_default=True, help="Closed months to run.")
def demo(count) -> None:
    """Fresh demo data and a local Gradient emulator; run the newest closed months end to end."""
    from pipeline.demo.run import run_demo

    def run_months(n: int) -> bool:
        results = _materialize(_months((), n), trigger="demo")
        return all(ok for _, ok, _ in results)

    sys.exit(0 if run_demo(count, click.echo, run_months) else 1)


@main.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, help="Port to listen on (GRADIENT_BASE_URL's).")
@click.option("--rate-limit", default=100, show_default=True, help="Requests per second before 429.")
@click.option("--demo-partners", is_flag=True, help="Register the demo data's connected partners.")
def emulator(host, port, rate_limit, demo_partners) -> None:
    """Serve the Gradient emulator (vendor key: GRADIENT_VENDOR_API_KEY or the demo key)."""
    from pipeline.demo.run import serve_emulator

    serve_emulator(host, port, rate_limit, demo_partners, click.echo)


@main.command("generate-encryption-key")
def generate_encryption_key() -> None:
    """Print a new Fernet key for GRADIENT_KEY_ENCRYPTION_KEYS (to rotate: put it first, keep
    the old key after it, then `rotate`)."""
    from pipeline.gradient.partner_keys import generate_encryption_key as make

    click.echo(make())


@main.command("encrypt-partner-key")
@click.option(
    "--partner-key",
    prompt="Partner's Gradient API key",
    hide_input=True,
    help="The key the partner pasted; prompted (hidden) when not given. Reads stdin when piped.",
)
def encrypt_partner_key(partner_key) -> None:
    """Encrypt a partner's Gradient key for the product to store in gradient_connections."""
    from pipeline import settings
    from pipeline.gradient.partner_keys import PartnerKeyError
    from pipeline.gradient.partner_keys import encrypt_partner_key as encrypt

    keys = settings.encryption_keys()
    try:
        click.echo(encrypt(partner_key, keys))
    except PartnerKeyError as exc:
        raise click.ClickException(str(exc)) from None


from pipeline.cli.db import db  # noqa: E402 - subcommand modules attach to the group above

main.add_command(db)
from pipeline.cli.preview import preview  # noqa: E402

main.add_command(preview)
from pipeline.cli.check_config import check_config  # noqa: E402

main.add_command(check_config)
from pipeline.cli.bench import bench  # noqa: E402

main.add_command(bench)
from pipeline.cli.status import status  # noqa: E402

main.add_command(status)
from pipeline.cli.check_source import check_source  # noqa: E402

main.add_command(check_source)
from pipeline.cli.statement import statement  # noqa: E402

main.add_command(statement)
from pipeline.cli.rotate import rotate  # noqa: E402

main.add_command(rotate)


if __name__ == "__main__":
    main()
