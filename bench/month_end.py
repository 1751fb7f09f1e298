"""Month-end benchmark: the pipeline's month against the database's own count.

    python -m bench.month_end --users 200000 [--postgres URL]

Seeds demo data of the given size, then measures in one run, for one month:
  * baseline: the database alone counting distinct billable users per partner x company x
    sku over the reference query (what the month costs at the database's own speed);
  * validate: streaming every row through the pandera model (quarantine included);
  * count: the pipeline's counting query (validity rules + window) in the database;
and prints seconds, rows/s, the ratio of the pipeline's month to the baseline, and the
peak memory of each step (tracemalloc). No thresholds: figures to compare, not a test.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from datetime import date
from pathlib import Path
import tempfile

import sqlalchemy as sa

from pipeline.billing.month import BillingMonth
from pipeline.demo.data import DemoSpec, load_demo_data
from pipeline.billing.counts import count_billable_users
from pipeline.validation.month import validate_month
from pipeline.store.schema import ensure_state_schema
from pipeline.source.utilization import load_known_skus, month_parameters, utilization_query


def measure(fn):
    """(result, seconds, peak MiB): timed plainly, then run again under tracemalloc for memory
    (tracemalloc slows allocation-heavy code several times over, so it cannot time)."""
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def baseline_sql(query_sql: str, dialect: str) -> str:
    billable = "billable = 1" if dialect == "sqlite" else "billable IS TRUE"
    return (
        f"SELECT partner_id, company_id, sku, COUNT(DISTINCT user_id) FROM ({query_sql}) AS u "
        f"WHERE {billable} GROUP BY partner_id, company_id, sku"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="about this many users in all")
    parser.add_argument("--postgres", default=None, help="product DB URL on PostgreSQL (else SQLite)")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gbs-bench-"))
    product_url = args.postgres or f"sqlite:///{workdir / 'product.db'}"
    product = sa.create_engine(product_url)
    state = sa.create_engine(f"sqlite:///{workdir / 'state.db'}")
    ensure_state_schema(state)
    partners = max(4, args.users // 20_000)
    spec = DemoSpec(
        partners=partners,
        companies_per_partner=(40, 60),
        users_per_company=(5, max(6, args.users // (partners * 25))),
        end_month=date(2026, 11, 1),
        history_months=6,
    )
    started = time.perf_counter()
    load_demo_data(product, spec)
    seed_s = time.perf_counter() - started
    month = BillingMonth(date(2026, 10, 1), "America/New_York")
    query = utilization_query(None, product.dialect.name)
    with product.connect() as conn:
        skus = load_known_skus(conn, None)
        params = month_parameters(month, product.dialect.name)
        rows, base_s, base_mb = measure(
            lambda: conn.execute(sa.text(baseline_sql(query.sql, product.dialect.name)), params).all()
        )
        outcome, val_s, val_mb = measure(
            lambda: validate_month(conn, state, query, month, skus, "bench", args.chunk_rows)
        )
        (_, computation), cnt_s, cnt_mb = measure(
            lambda: count_billable_users(conn, state, query, month, outcome.validation, "bench")
        )
    n = outcome.validation.rows_in
    pipeline_s = val_s + cnt_s
    print(f"product DB: {product.dialect.name}; seeded in {seed_s:.1f}s; month 2026-10: {n} rows, "
          f"{computation.billable_users} billable users, {len(rows)} groups")
    print(f"{'step':<22}{'seconds':>9}{'rows/s':>12}{'peak MiB':>10}")
    for name, seconds, mb in [
        ("baseline (DB count)", base_s, base_mb),
        ("validate (pandera)", val_s, val_mb),
        ("count (DB, rules)", cnt_s, cnt_mb),
        ("pipeline month", pipeline_s, max(val_mb, cnt_mb)),
    ]:
        print(f"{name:<22}{seconds:>9.2f}{n / seconds if seconds else 0:>12,.0f}{mb:>10.1f}")
    print(f"pipeline / baseline: {pipeline_s / base_s:.2f}x  (count alone {cnt_s / base_s:.2f}x)")


if __name__ == "__main__":
    main()
