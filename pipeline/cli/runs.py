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
    """One month's run as the CLI saw it."""

    month: date
    run_id: str
    success: bool
    causes: list[str] = field(default_factory=list)
    trace: str = ""

    @property
    def label(self) -> str:
        return self.month.strftime("%Y-%m")


def month_run(month: date, result) -> MonthRun:
    """From an ``ExecuteInProcessResult``: each failed step's cause (first line) and, for
    ``--verbose``, the full error text."""
    from pipeline.automation.alerts import first_paragraph

    causes, traces = [], []
    for event in result.all_events:
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
    if not result.success and not causes:
        event = result.get_run_failure_event()
        causes.append(event.message if event is not None and event.message else "the run failed")
    return MonthRun(month, result.run_id, result.success, causes, "\n".join(traces))


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
        return report
    lines = [f"{run.label}: FAILED (run {run.run_id})"]
    lines.extend(f"  cause: {cause}" for cause in run.causes)
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


def one_line_error(exc: BaseException) -> str:
    """The cause of an unexpected error in one line. The project's own errors already name the
    fix; anything else is prefixed with its type."""
    from pipeline.settings import ConfigurationError

    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    own = isinstance(exc, ConfigurationError) or type(exc).__module__.startswith(("pipeline", "gradient_emulator"))
    return text if own and text else f"{type(exc).__name__}: {text or 'no message'}"


class _Lines:
    """Not a terminal: items as they are, lines printed as they come."""

    def __init__(self, items) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)

    @staticmethod
    def watch(instance, run_id: str):
        import contextlib

        return contextlib.nullcontext()

    @staticmethod
    def echo(text: str) -> None:
        import click

        click.echo(text)


class _Bar:
    """A terminal: click's progress bar; a line printed clears the bar first (it redraws).
    While a month runs, the bar shows the step it is at (read from the run's event log)."""

    POLL_SECONDS = 0.5

    def __init__(self, bar) -> None:
        self.bar = bar
        self.step = ""

    def __iter__(self):
        for item in self.bar:
            self.step = ""
            yield item

    def describe(self, item) -> str | None:
        if item is None:
            return None
        label = getattr(item, "label", str(item))
        return f"{label} {self.step}".strip()

    def watch(self, instance, run_id: str):
        """Follow the run's STEP_START events in a thread until the block ends."""
        import contextlib
        import threading

        from dagster import DagsterEventType

        stop = threading.Event()

        def follow() -> None:
            while not stop.wait(self.POLL_SECONDS):
                try:
                    started = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
                except Exception:
                    continue
                if started and started[-1].step_key != self.step:
                    self.step = started[-1].step_key or ""
                    self.bar.render_progress()

        @contextlib.contextmanager
        def following():
            thread = threading.Thread(target=follow, daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()

        return following()

    @staticmethod
    def echo(text: str) -> None:
        import click

        click.echo("\r\033[K" + text)


class progress:
    """A progress bar over ``items`` on a TTY; plain lines elsewhere (pipes, CI, tests)."""

    def __init__(self, items, label: str) -> None:
        self.items, self.label = list(items), label
        self._bar = None

    def __enter__(self):
        import sys

        import click

        if sys.stdout.isatty():
            shown: list[_Bar] = []
            self._bar = click.progressbar(
                self.items, label=self.label, show_pos=True,
                item_show_func=lambda item: shown[0].describe(item) if shown else None,
            )
            shown.append(_Bar(self._bar.__enter__()))
            return shown[0]
        return _Lines(self.items)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


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
