"""The month-end benchmark: one billing month at a given scale, measured in one run.

``run_bench`` seeds the scale's demo data in the product database, then measures, for the
month 2026-10:

* the bare aggregate — the reference utilization query wrapped in ``COUNT(DISTINCT user_id)
  ... GROUP BY partner, company, sku``, run by the database (the baseline of every ratio), each
  measured run just before one of the pipeline's (``Bench.paired_runs``);
* naive pandas — ``read_sql`` of the month + ``groupby().nunique()``, in a child process;
* the pipeline as Dagster runs it — the month-end asset group of the ``monthly_billing`` job
  for the partition, real resources, in a child process (seconds, peak RSS, per-step times);
* the load — the ``gradient_load`` job against the Gradient emulator (20 ms latency, 100
  requests/s), again with the limit raised to 1000/s, and the unchanged re-run;
* growth — the product database grown to 2x and 4x (more partners), the pipeline run again.

Nothing is asserted: the figures are printed and written as JSON.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.load import gradient_units, register_partners, start_emulator, summarize
from bench.scales import MONTH, SCALES, Scale, slice_spec
from pipeline.source.watermark import read_source_watermark, source_watermark_query
from pipeline import settings
from pipeline.billing.month import BillingMonth, add_months
from pipeline.demo.data import connection_rows, load_demo_data
from pipeline.source import product_schema as ps
from pipeline.source.utilization import month_parameters, utilization_query
from pipeline.store.months import load_billable_counts

BENCH_POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
BENCH_DATABASE = "gbs_bench"
DEFAULT_RATE_LIMIT = 100
RAISED_RATE_LIMIT = 1000
INSTANCE_YAML = "telemetry:\n  enabled: false\n"
# Settings that would point the child runs at something other than the benchmark's data.
CLEARED_ENV = (
    "UTILIZATION_SQL", "SERVICES_SQL", "CONNECTIONS_SQL", "COMPANIES_SQL", "SYNC_REQUESTS_SQL",
    "BILLING_TIMEZONE", "QUARANTINE_THRESHOLD", "SOURCE_WATERMARK_SQL", "BILLING_SCHEDULE_TIMEZONE",
)
# The bench's partitions start at its demo history (a deployment must fix its first month).
FIRST_MONTH = "2026-01"
# Ticks of the late-months sensor timed at each growth multiple (the median is shown).
TICK_REPEATS = 3

Echo = Callable[[str], None]


def bench_database_url(admin_url: str | None = None) -> str:
    """The dedicated benchmark database on PostgreSQL (created when missing)."""
    admin_url = admin_url or os.environ.get("BENCH_POSTGRES_ADMIN_URL") or BENCH_POSTGRES_ADMIN_URL
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": BENCH_DATABASE}
        ).first()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
    admin.dispose()
    return make_url(admin_url).set(database=BENCH_DATABASE).render_as_string(hide_password=False)


def bare_aggregate_sql(query_sql: str) -> str:
    return (
        "SELECT partner_id, company_id, sku, COUNT(DISTINCT user_id) AS billable_users "
        f"FROM (\n{query_sql}\n) AS utilization WHERE billable = TRUE "
        "GROUP BY partner_id, company_id, sku"
    )


PIPELINE_REPEATS = 3


class BareAggregate:
    """The database alone counting the month, on one connection: ``warm_up`` runs it unmeasured
    (right after seeding, the first run reads from disk), ``measure`` runs it timed, and
    ``figures`` gives the median of the timed runs with the month's size."""

    def __init__(self, engine: sa.Engine, month: BillingMonth) -> None:
        query = utilization_query(None, engine.dialect.name)
        self.sql = sa.text(bare_aggregate_sql(query.sql))
        self.count_sql = sa.text(f"SELECT COUNT(*) FROM (\n{query.sql}\n) AS u")
        self.params = month_parameters(month, engine.dialect.name)
        self.conn = engine.connect()
        self.timings: list[float] = []
        self.rows: list = []

    def warm_up(self) -> None:
        self.conn.execute(self.sql, self.params).all()
        self.conn.rollback()  # no transaction left open while the pipeline runs

    def measure(self) -> None:
        started = time.perf_counter()
        self.rows = self.conn.execute(self.sql, self.params).all()
        self.timings.append(time.perf_counter() - started)
        self.conn.rollback()

    def figures(self) -> dict:
        month_rows = self.conn.execute(self.count_sql, self.params).scalar_one()
        return {
            "seconds": round(statistics.median(self.timings), 3),
            "seconds_all": [round(t, 3) for t in self.timings],
            "seconds_min": round(min(self.timings), 3),
            "seconds_max": round(max(self.timings), 3),
            "repeats": len(self.timings),
            "month_rows": int(month_rows),
            "groups": len(self.rows),
            "billable_users": int(sum(r[3] for r in self.rows)),
        }

    def close(self) -> None:
        self.conn.close()


class Bench:
    """One benchmark run: its work directory, databases, environment and child processes."""

    def __init__(self, scale: Scale, product_url: str, workdir: Path, echo: Echo) -> None:
        from cryptography.fernet import Fernet

        self.scale = scale
        self.product_url = product_url
        self.workdir = workdir
        self.echo = echo
        self.month = BillingMonth(MONTH, settings.DEFAULT_BILLING_TIMEZONE)
        self.encryption_key = Fernet.generate_key().decode()
        self.product = sa.create_engine(product_url)
        (workdir / "dagster").mkdir(parents=True, exist_ok=True)
        (workdir / "dagster" / "dagster.yaml").write_text(INSTANCE_YAML)

    def state_url(self, name: str) -> str:
        return f"sqlite:///{self.workdir / name}"

    def child_env(self, state_db: str, gradient_url: str = "", rate_limit: int = DEFAULT_RATE_LIMIT) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        env.update(
            PRODUCT_DB_URL=self.product_url,
            FIRST_BILLING_MONTH=FIRST_MONTH,
            STATE_DB_URL=state_db,
            DAGSTER_HOME=str(self.workdir / "dagster"),
            GBS_DATA_DIR=str(self.workdir),
            GRADIENT_BASE_URL=gradient_url or settings.DEFAULT_GRADIENT_BASE_URL,
            GRADIENT_VENDOR_API_KEY=settings.DEMO_VENDOR_API_KEY,
            GRADIENT_KEY_ENCRYPTION_KEYS=self.encryption_key,
            GRADIENT_MAX_REQUESTS_PER_SECOND=str(rate_limit),
            PYTHONPATH=os.pathsep.join([str(settings.REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        )
        return env

    def child(self, module: str, args: list[str], env: dict[str, str], out_name: str) -> dict:
        """Run ``python -m module`` and read the JSON it wrote; wall seconds include start-up."""
        out = self.workdir / out_name
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", module, *args, "--out", str(out)],
            env=env, cwd=settings.REPO_ROOT, capture_output=True, text=True,
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(out.read_text())
        result["process_seconds"] = round(wall, 3)
        return result

    def late_months_tick(self) -> dict:
        """What the missed/late months sensor's tick asks of the product database: the source
        watermark of each watched month (the measured month and the ones before it, as many as
        the default lookback), timed ``TICK_REPEATS`` times after one unmeasured tick."""
        query = source_watermark_query(self.product.dialect.name)
        months = [BillingMonth(add_months(MONTH, -back), self.month.tz_name)
                  for back in range(settings.DEFAULT_MONTH_WATCH_LOOKBACK_MONTHS)]
        timings = []
        with self.product.connect() as conn:
            for repeat in range(TICK_REPEATS + 1):
                started = time.perf_counter()
                for month in months:
                    read_source_watermark(conn, query, month)
                conn.rollback()
                if repeat:
                    timings.append(time.perf_counter() - started)
        return {"seconds": round(statistics.median(timings), 3), "seconds_all": [round(t, 3) for t in timings],
                "months": len(months)}

    def dagster_run(self, job: str, group: str, env: dict[str, str], out_name: str) -> dict:
        return self.child(
            "bench.dagster_run",
            ["--job", job, "--group", group, "--partition", self.month.key],
            env, out_name,
        )

    def paired_runs(self, name: str, repeats: int = PIPELINE_REPEATS) -> tuple[dict, dict]:
        """The bare aggregate and the month-end assets, measured in pairs: after one unmeasured
        bare run, ``repeats`` times a timed bare run and right after it a month-end run — so a
        slower or faster spell of a shared machine weighs on both sides of the ratio alike.
        Returns (``BareAggregate.figures``, ``month_end_runs``)."""
        bare = BareAggregate(self.product, self.month)
        try:
            bare.warm_up()
            pipeline = self.month_end_runs(name, repeats, before_each=bare.measure)
            return bare.figures(), pipeline
        finally:
            bare.close()

    def month_end_runs(self, name: str, repeats: int = PIPELINE_REPEATS,
                       before_each: Callable[[], None] | None = None) -> dict:
        """The month-end assets run ``repeats`` times, each with a fresh state DB (``before_each``
        called before each run): the run of median seconds (its steps and state DB), with every
        run's seconds and the peak RSS of all of them."""
        runs = []
        for i in range(repeats):
            state_db = self.state_url(f"{name}.db" if i == 0 else f"{name}-{i + 1}.db")
            if before_each is not None:
                before_each()
            run = self.dagster_run("monthly_billing", "month_end", self.child_env(state_db), f"{name}-{i + 1}.json")
            runs.append({**run, "state_db": state_db})
        ordered = sorted(runs, key=lambda r: r["seconds"])
        median = dict(ordered[len(ordered) // 2])
        median["seconds_all"] = [r["seconds"] for r in runs]
        median["success"] = all(r["success"] for r in runs)
        median["rss_mb"] = {**median["rss_mb"], "peak": max(r["rss_mb"]["peak"] for r in runs)}
        return median

    def seed(self, index: int, reset: bool) -> dict:
        started = time.perf_counter()
        summary = load_demo_data(self.product, slice_spec(self.scale, index), reset=reset)
        self.analyze()
        return {**summary.__dict__, "seconds": round(time.perf_counter() - started, 1)}

    def analyze(self) -> None:
        """Planner statistics for the freshly loaded tables, as a live database has them
        (autovacuum may be off, and a bulk load leaves none): without them PostgreSQL joins
        users by 1.6 M index lookups, for the bare aggregate and the pipeline alike."""
        statement = {"sqlite": "ANALYZE", "postgresql": "ANALYZE"}.get(self.product.dialect.name)
        tables = [ps.partners, ps.companies, ps.users, ps.service_enrollments]
        with self.product.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if statement:
                conn.exec_driver_sql(statement)
            else:
                conn.exec_driver_sql("ANALYZE TABLE " + ", ".join(t.name for t in tables))

    def connect_partners(self, state_db: str) -> list[str]:
        """Connect partners (in id order) until their counts make the scale's count calls."""
        state = sa.create_engine(state_db)
        counts = load_billable_counts(state, self.month.month)
        state.dispose()
        per_partner = counts.groupby("partner_id").size().sort_index()
        chosen, calls = [], 0
        for partner_id, pairs in per_partner.items():
            if self.scale.load_calls is not None and calls >= self.scale.load_calls:
                break
            chosen.append(str(partner_id))
            calls += int(pairs)
        with self.product.begin() as conn:
            conn.execute(ps.gradient_connections.delete())
            conn.execute(
                ps.gradient_connections.insert(),
                connection_rows(chosen, self.encryption_key, self.month.start_utc, self.product.dialect.name),
            )
        return chosen

    def load(self, state_db: str, partners: list[str], rate_limit: int, rerun: bool) -> dict:
        """The gradient_load job against a fresh emulator; optionally run again unchanged.

        The emulator shares this process, and its request log grows by every request: Python's
        full cyclic collections over it stalled the emulator for up to 272 ms at 50,000 calls,
        and the requests queued behind a stall reach its rate limiter at once and are answered
        429 (bench/load_probe.py times both). The collector is paused while the load runs, so
        the figures measure the pipeline, not the instrument's own pauses."""
        server, admin = start_emulator(settings.DEMO_VENDOR_API_KEY, rate_limit)
        gc.collect()
        gc.disable()
        try:
            register_partners(admin, partners)
            env = self.child_env(state_db, server.base_url, rate_limit)
            run = self.dagster_run("gradient_load", "gradient_load", env, f"load-{rate_limit}.json")
            figures = summarize(admin.requests(), rate_limit).as_dict()
            held, units = gradient_units(admin)
            result = {"run": run, "sent": figures, "gradient_counts": held, "gradient_units": units}
            if rerun:
                admin.clear_requests()
                again = self.dagster_run("gradient_load", "gradient_load", env, f"load-{rate_limit}-rerun.json")
                result["rerun"] = {"run": again, "sent": summarize(admin.requests(), rate_limit).as_dict()}
            return result
        finally:
            gc.enable()
            admin.close()
            server.stop()


def run_bench(
    scale_name: str,
    product_url: str | None = None,
    workdir: Path | None = None,
    json_path: Path | None = None,
    echo: Echo = print,
    load_calls: int | None = None,
) -> dict:
    """Seed, measure, print the table and write the JSON; returns the results.
    ``load_calls`` overrides how many count calls the load aims for. A run in the default work
    directory (the CLI's) also records its tables in bench/results/<scale>.md, to be committed;
    a caller with its own ``workdir`` (the tests) records nothing there."""
    record_results = workdir is None
    scale = SCALES[scale_name]
    if load_calls is not None:
        scale = dataclasses.replace(scale, load_calls=load_calls)
    workdir = workdir or settings.data_dir() / "bench" / scale_name
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    product_url = product_url or bench_database_url()
    bench = Bench(scale, product_url, workdir, echo)
    results: dict = {
        "scale": scale_name,
        "month": bench.month.label,
        "product_db": settings.redact_url(product_url),
        "dialect": bench.product.dialect.name,
        "workdir": str(workdir),
    }
    echo(f"bench {scale_name}: seeding {settings.redact_url(product_url)} ...")
    results["seed"] = bench.seed(0, reset=True)
    echo(f"  seeded in {results['seed']['seconds']} s: {results['seed']['enrollments']:,} enrollments")

    results["bare_aggregate"], results["pipeline"] = bench.paired_runs("state")
    state_db = results["pipeline"]["state_db"]
    echo(f"  bare aggregate: {results['bare_aggregate']['seconds']} s, "
         f"{results['bare_aggregate']['month_rows']:,} rows in the month")
    echo(f"  pipeline (Dagster): {results['pipeline']['seconds']} s, success={results['pipeline']['success']}")

    results["naive_pandas"] = bench.child(
        "bench.naive_pandas", ["--url", product_url, "--month", bench.month.label],
        bench.child_env(bench.state_url("unused.db")), "naive.json",
    )
    echo(f"  naive pandas: {results['naive_pandas']['seconds']} s")

    if results["pipeline"]["success"]:
        shutil.copy(state_db[len("sqlite:///"):], workdir / "state-before-load.db")
        partners = bench.connect_partners(state_db)
        results["load"] = bench.load(state_db, partners, DEFAULT_RATE_LIMIT, rerun=True)
        results["load"]["partners"] = len(partners)
        echo(f"  load: {results['load']['sent']['count_calls']:,} count calls")
        results["load_raised"] = bench.load(
            bench.state_url("state-before-load.db"), partners, RAISED_RATE_LIMIT, rerun=False
        )
        echo(f"  load, limit raised: {results['load_raised']['sent']['count_rate_per_second']} count calls/s")

    results["growth"] = growth(bench, results)
    results["ratios"] = ratios(results)
    if json_path is None:
        json_path = workdir / f"bench-{scale_name}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    results["json_path"] = str(json_path)
    from bench.report import table

    echo(table(results))
    echo(f"JSON: {json_path}")
    if record_results:
        echo(f"results: {write_results(results)}")
    bench.product.dispose()
    return results


def growth(bench: Bench, results: dict) -> list[dict]:
    """The pipeline at 1x (the run above), then with the product database grown to each multiple."""
    pipeline = results["pipeline"]
    rows = [{
        "multiple": 1,
        "month_rows": results["bare_aggregate"]["month_rows"],
        "bare_aggregate_seconds": results["bare_aggregate"]["seconds"],
        "seconds": pipeline["seconds"],
        "rss_mb": pipeline["rss_mb"]["peak"],
        "success": pipeline["success"],
        "state_db": pipeline["state_db"],
        "seconds_all": pipeline["seconds_all"],
        "bare_aggregate_seconds_all": results["bare_aggregate"]["seconds_all"],
        "late_months_tick": bench.late_months_tick(),
    }]
    slices = 1
    for multiple in bench.scale.growth:
        if multiple == 1:
            continue
        while slices < multiple:
            bench.seed(slices, reset=False)
            slices += 1
        base, run = bench.paired_runs(f"state-{multiple}x")
        rows.append({
            "multiple": multiple,
            "month_rows": base["month_rows"],
            "bare_aggregate_seconds": base["seconds"],
            "seconds": run["seconds"],
            "rss_mb": run["rss_mb"]["peak"],
            "success": run["success"],
            "state_db": run["state_db"],
            "steps": run["steps"],
            "seconds_all": run["seconds_all"],
            "bare_aggregate_seconds_all": base["seconds_all"],
            "late_months_tick": bench.late_months_tick(),
        })
        bench.echo(f"  growth {multiple}x: {base['month_rows']:,} rows, {run['seconds']} s, "
                   f"late-months sensor tick {rows[-1]['late_months_tick']['seconds']} s")
    return rows


def ratios(results: dict) -> dict:
    base = results["bare_aggregate"]["seconds"] or float("nan")
    found = {"naive_pandas": round(results["naive_pandas"]["seconds"] / base, 2)}
    found["pipeline"] = round(results["pipeline"]["seconds"] / base, 2)
    found["pipeline_process"] = round(results["pipeline"]["process_seconds"] / base, 2)
    return found


def write_results(results: dict) -> Path:
    """bench/results/<scale>.md: the run's tables with when, on which commit and which machine."""
    import platform
    from datetime import UTC, datetime

    from bench.report import results_markdown

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    machine = f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    path = here / "results" / f"{results['scale']}.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(results_markdown(results, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), commit, machine))
    return path
