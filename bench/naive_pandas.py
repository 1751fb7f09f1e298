"""Child process of the benchmark: the naive script the pipeline must beat.

    python -m bench.naive_pandas --url URL --month 2026-10 --out naive.json

``read_sql`` of the month's rows through the reference utilization query, then
``groupby(partner, company, sku).user_id.nunique()`` of the billable ones; no validation.
Writes seconds, rows, groups and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from bench.memory import own_peak_rss_mb
from pipeline.billing.month import BillingMonth
from pipeline.settings import DEFAULT_BILLING_TIMEZONE
from pipeline.source.utilization import month_parameters, utilization_query


def naive_counts(url: str, month: BillingMonth) -> dict:
    engine = sa.create_engine(url)
    query = utilization_query(None, engine.dialect.name)
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = pd.read_sql(sa.text(query.sql), conn, params=month_parameters(month, engine.dialect.name))
    billable = rows[rows["billable"] == True]  # noqa: E712 - 1/0 on SQLite and MySQL
    counts = billable.groupby(["partner_id", "company_id", "sku"])["user_id"].nunique()
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "seconds": round(seconds, 3),
        "rows": len(rows),
        "groups": int(len(counts)),
        "billable_users": int(counts.sum()),
        "rss_mb": own_peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="read_sql + groupby().nunique() of one month.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--month", required=True, help="YYYY-MM")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    month = BillingMonth(date.fromisoformat(args.month + "-01"), DEFAULT_BILLING_TIMEZONE)
    Path(args.out).write_text(json.dumps(naive_counts(args.url, month)))


if __name__ == "__main__":
    main()
