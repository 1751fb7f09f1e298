"""What the CLI says about the months it runs: one honest report per month, as it finishes.

* A month's report shows numbers only from the run that just happened. After a failed run it
  says what failed and why (the step's own one-line cause, which names the fix); numbers
  stored by an earlier run are shown only with that run's id and date.
* The CLI and ``dagster dev`` share one Dagster instance: ``DAGSTER_HOME``'s when it is set,
  else the repository's (``var/dagster``, what ``dagster dev`` started in the repository root
  reads through ``dagster.yaml``), whatever ``GBS_DATA_DIR`` says. ``GBS_DATA_DIR`` only moves
  the local product / state databases and the statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import sqlalchemy as sa

from pipeline.settings import REPO_ROOT, load_settings

SHOWN_CAUSE_CHARS = 400


def instance_home() -> Path:
    """The Dagster instance directory the CLI runs on (see the module's rule)."""
    home = load_settings().dagster_home
    return Path(home) if home else REPO_ROOT / "var" / "dagster"


def where_runs_are() -> str:
    """How to see the CLI's runs in the UI, true for the instance in use."""
    home = load_settings().dagster_home
    if home:
        return f"`dagster dev` (or the webserver) with DAGSTER_HOME={home}"
    return f"`dagster dev` started in {REPO_ROOT} (instance {instance_home()})"


@dataclass(frozen=True)
class MonthRun:
    """One month's run as the CLI saw it; ``attempts``: the runs the daemon retried before it."""

    month: date
    run_id: str
    success: bool
    causes: list[str] = field(default_factory=list)
    trace: str = ""
    attempts: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.month.strftime("%Y-%m")


def month_run(month: date, result) -> MonthRun:
    """From an ``ExecuteInProcessResult``: each failed step's cause (first line) and, for
    ``--verbose``, the full error text."""
    failure = result.get_run_failure_event() if not result.success else None
    return _month_run(month, result.run_id, result.success, result.all_events, failure)


def month_run_on_instance(instance, month: date, run_id: str, attempts: Sequence[str] = ()) -> MonthRun:
    """The same, for a run the instance ran (read back from its event log)."""
    from dagster import DagsterEventType, DagsterRunStatus

    run = instance.get_run_by_id(run_id)
    success = run is not None and run.status == DagsterRunStatus.SUCCESS
    events = [e.dagster_event for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)]
    failures = [e.dagster_event for e in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)]
    found = _month_run(month, run_id, success, [e for e in events if e is not None], failures[-1] if failures else None)
    return MonthRun(found.month, run_id, success, found.causes, found.trace, tuple(attempts))


def _month_run(month: date, run_id: str, success: bool, events, run_failure) -> MonthRun:
    from pipeline.automation.alerts import first_paragraph

    causes, traces = [], []
    for event in events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        text = ""
        if data.user_failure_data is not None and data.user_failure_data.description:
            text = str(data.user_failure_data.description)
        elif data.error is not None:
            from pipeline.cli.errors import underlying_error_text

            text = underlying_error_text(data.error)  # the op's own error, not Dagster's wrapper
        causes.append(f"{event.step_key}: {first_paragraph(text, SHOWN_CAUSE_CHARS) or 'failed'}")
        if data.error is not None:
            traces.append(f"--- {event.step_key}\n{data.error.to_string()}")
        elif text:
            traces.append(f"--- {event.step_key}\n{text}")
    if not success and not causes:
        causes.append(run_failure.message if run_failure is not None and run_failure.message else "the run failed")
    return MonthRun(month, run_id, success, causes, "\n".join(traces))


def month_report(state: sa.Engine, run: MonthRun) -> str:
    """The lines for one finished month: this run's numbers, or what failed and why."""
    from pipeline.cli.summaries import load_summary, month_summary
    from pipeline.store.months import load_month_computation

    if run.success:
        from pipeline.billing.statements import StatementSettings
        from pipeline.settings import ConfigurationError

        report = month_summary(state, run.month, run.run_id)
        try:
            statements = StatementSettings.from_env().month_dir(run.month)
        except ConfigurationError:
            return report  # the statements step itself failed then, and says why
        if statements.is_dir():
            report += f"\n  partner statements: {statements}"
        return report + _attempts_line(run)
    lines = [f"{run.label}: FAILED (run {run.run_id})"]
    lines.extend(f"  cause: {cause}" for cause in run.causes)
    if run.attempts:
        lines.append(_attempts_line(run).strip("\n"))
    computation = load_month_computation(state, run.month)
    if computation is not None and computation.run_id == run.run_id:
        lines.append(
            f"  counted by this run: {computation.billable_users} billable users, "
            f"{computation.partners} partners, {computation.companies} companies"
        )
    elif computation is not None:
        lines.append(
            f"  not counted by this run; the stored counts are from run {computation.run_id} of "
            f"{computation.computed_at:%Y-%m-%d %H:%M} UTC ({computation.billable_users} billable users)"
        )
    sent = load_summary(state, run.month, run.run_id)
    if sent:
        lines.append("  sent by this run before it failed:")
        lines.extend(f"  {line}" for line in sent)
    lines.append(f"  its logs: {where_runs_are()}; --verbose prints the full error")
    return "\n".join(lines)


def _attempts_line(run: MonthRun) -> str:
    if not run.attempts:
        return ""
    return f"\n  retried by dagster-daemon after run {', run '.join(run.attempts)} failed"


def one_line_error(exc: BaseException) -> str:
    """The cause of an unexpected error in one line. The project's own errors already name the
    fix; anything else is prefixed with its type."""
    from pipeline.settings import ConfigurationError

    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    own = isinstance(exc, ConfigurationError) or type(exc).__module__.startswith(("pipeline", "gradient_emulator"))
    return text if own and text else f"{type(exc).__name__}: {text or 'no message'}"


class progress:
    """rich's progress bar over ``items`` on a terminal, showing the step the current item is
    at; elsewhere (pipes, CI, tests) no bar and no escape codes, only the lines printed."""

    def __init__(self, items, label: str) -> None:
        from rich.console import Console

        self.items, self.label = list(items), label
        self.console = Console(highlight=False)
        self.live = self.console.is_terminal
        self._bar = None
        self._task = None

    def __enter__(self) -> progress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[step]}"),
                console=self.console,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=len(self.items), step="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __iter__(self):
        for item in self.items:
            self.step(getattr(item, "label", str(item)))
            yield item
            if self._bar is not None:
                self._bar.advance(self._task)

    def step(self, text: str) -> None:
        """What the current item is doing (shown next to the bar)."""
        if self._bar is not None:
            self._bar.update(self._task, step=text)

    def echo(self, text: str) -> None:
        """A line of the report, printed above the bar."""
        if self._bar is not None:
            self.console.print(text, markup=False, emoji=False, soft_wrap=True)
        else:
            import click

            click.echo(text)


DEMO = "demo"


def run_months(
    instance,
    months: Sequence,
    *,
    force_superseded: bool = False,
    trigger: str = "cli",
    verbose: bool = False,
    job_name: str = "monthly_billing",
    partner_ids: Sequence[str] = (),
    resend: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> list[tuple]:
    """Run the monthly job for each month in order on ``instance``; one failure stops
    none; each month's report is printed as soon as it finishes. With a daemon on the
    instance, each run is submitted to it (queue, limits, retries, failure sensors) and
    followed to its end, retries included: it runs with the code location's settings, the
    daemon's environment. Without one, and for the demo, it runs in this process."""
    from pipeline import settings
    from pipeline.automation.jobs import load_run_config, run_tags
    from pipeline.cli import instance as cli_instance
    from pipeline.resources import StateDatabase

    load_config = load_run_config(job_name, partner_ids, force_superseded, resend=resend)
    partner = partner_ids[0] if len(partner_ids) == 1 else None
    state = StateDatabase(url=settings.state_db_url()).engine()
    results = []
    # The demo's settings (its emulator, its databases) live in this process only: its runs
    # stay here whatever the instance has.
    through_instance = trigger != DEMO and cli_instance.daemon_backed(instance)
    if not through_instance and trigger != DEMO:
        note = cli_instance.in_process_note(instance)
        if note:
            click_echo_err(note)
    with progress(months, "months") as bar:
        if through_instance:
            runner = cli_instance.InstanceRuns(instance)
        else:
            runner = cli_instance.InProcessRuns(instance, verbose)
        with runner:
            for month in bar:
                tags = {**run_tags(trigger, partner, month_key=month.key), **(extra_tags or {})}
                outcome = runner.run(month, job_name, load_config, tags, bar.step)
                if through_instance:
                    ran = month_run_on_instance(instance, month.month, outcome[-1], outcome[:-1])
                else:
                    ran = month_run(month.month, outcome)
                bar.echo(month_report(state, ran))
                if verbose and ran.trace:
                    bar.echo(ran.trace)
                results.append((month, ran.success, ran.run_id))
    return results


def click_echo_err(text: str) -> None:
    import click

    click.echo(text, err=True)


def product_database():
    """The product database as the CLI reads it (resolved settings, outside Dagster)."""
    from pipeline import settings
    from pipeline.resources import ProductDatabase

    return ProductDatabase(
        url=settings.product_db_url(),
        utilization_sql=settings.utilization_sql_path(),
        services_sql=settings.load_settings().services_sql,
    )


def state_engine() -> sa.Engine:
    from pipeline import settings
    from pipeline.resources import StateDatabase

    return StateDatabase(url=settings.state_db_url()).engine()
