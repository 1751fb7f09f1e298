"""The benchmark command at scale ``small``, as a smoke test: it runs end to end on PostgreSQL and
the counts the pipeline produced (1x and grown 4x) and delivered to the emulator are exact
against an independent count done here in plain Python. No timing is asserted."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.run import run_bench
from bench.scales import MONTH, SCALES
from pipeline.billing.month import BillingMonth
from pipeline.source import product_schema as ps
from pipeline.store.months import load_billable_counts

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def independent_counts(engine: sa.Engine, month: BillingMonth) -> dict[tuple[str, str, str], int]:
    """Distinct billable users per (partner, company, sku) for the month, from the product tables:
    rows with a missing id, an unknown sku, a company without a partner or name, a user without a
    billable flag, no start or a span ending before it starts are not counted; a deleted company
    ends its users' spans at its deletion; spans are half-open."""
    with engine.connect() as conn:
        companies = {r.company_id: r for r in conn.execute(sa.select(ps.companies))}
        partners = set(conn.execute(sa.select(ps.partners.c.partner_id)).scalars())
        skus = set(conn.execute(sa.select(ps.services.c.sku)).scalars())
        billable = dict(conn.execute(sa.select(ps.users.c.user_id, ps.users.c.is_billable)).all())
        enrollments = conn.execute(sa.select(ps.service_enrollments)).all()
    start, end = month.start_utc, month.end_utc
    groups: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for e in enrollments:
        company = companies.get(e.company_id)
        if company is None or company.partner_id not in partners or not company.name:
            continue
        if e.user_id is None or e.sku not in skus or billable.get(e.user_id) is None:
            continue
        if e.started_at is None:
            continue
        ends = [t for t in (e.ended_at, company.deleted_at) if t is not None]
        active_to = min(ends) if ends else None
        if active_to is not None and active_to < e.started_at:
            continue
        overlaps = e.started_at < end and (active_to is None or active_to > start)
        if overlaps and billable[e.user_id]:
            groups[(company.partner_id, e.company_id, e.sku)].add(e.user_id)
    return {key: len(users) for key, users in groups.items()}


def stored_counts(state_url: str) -> dict[tuple[str, str, str], int]:
    """The pipeline's non-zero counts for the month (a group of only non-billable users is 0)."""
    engine = sa.create_engine(state_url)
    frame = load_billable_counts(engine, MONTH)
    engine.dispose()
    return {
        (r.partner_id, r.company_id, r.sku): int(r.billable_users)
        for r in frame.itertuples()
        if r.billable_users
    }


def test_small_bench_runs_and_its_counts_are_exact(postgres_url, tmp_path):
    printed: list[str] = []
    json_path = tmp_path / "bench-small.json"
    results = run_bench("small", postgres_url, workdir=tmp_path / "work", json_path=json_path, echo=printed.append)

    assert results["pipeline"]["success"], results["pipeline"]["metadata"]
    assert [g["multiple"] for g in results["growth"]] == [1, 2, 4]
    assert all(g["success"] for g in results["growth"])
    # the late-months sensor's tick is timed at each multiple (its watermark reads of 3 months)
    assert all(g["late_months_tick"]["months"] == 3 and g["late_months_tick"]["seconds"] >= 0
               for g in results["growth"])

    product = sa.create_engine(postgres_url)
    month = BillingMonth(MONTH, "America/New_York")
    everything = independent_counts(product, month)  # the database as grown to 4x
    product.dispose()
    base_partners = {f"p-{i + 1:03d}" for i in range(SCALES["small"].partners)}
    base = {k: v for k, v in everything.items() if k[0] in base_partners}
    assert len(base) > 100 and len(everything) > 3 * len(base)

    assert stored_counts(results["pipeline"]["state_db"]) == base
    assert stored_counts(results["growth"][-1]["state_db"]) == everything
    assert results["bare_aggregate"]["groups"] >= len(base)

    # what Gradient (the emulator) holds after the load: every connected partner's counts
    load = results["load"]
    connected = load["partners"]
    assert connected == SCALES["small"].partners  # small connects every partner
    assert load["run"]["success"] and results["load_raised"]["run"]["success"]
    assert load["gradient_units"] == sum(base.values())
    assert results["load_raised"]["gradient_units"] == sum(base.values())
    assert load["sent"]["count_calls"] >= len(base)
    assert load["rerun"]["sent"]["count_calls"] == 0

    written = json.loads(json_path.read_text())
    assert written["scale"] == "small" and written["pipeline"]["steps"]
    text = "\n".join(printed)
    for label in ("bare aggregate", "naive pandas", "pipeline: month-end run", "limit raised",
                  "unchanged re-run", "growth", "late-months sensor tick"):
        assert label in text


def test_a_child_measures_its_own_peak_memory_not_its_parents():
    """``ru_maxrss`` of a freshly spawned child already holds its parent's memory (Linux keeps
    it across exec): the benchmark reads the child's own peak (VmHWM) instead."""
    import subprocess
    import sys

    from bench.memory import STATUS

    if not STATUS.exists():
        pytest.skip("VmHWM is a Linux /proc figure")
    ballast = bytearray(400 * 2**20)  # the parent at 400+ MB when it spawns the child
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    child = subprocess.run(
        [sys.executable, "-c", "import resource; from bench.memory import own_peak_rss_mb; "
         "print(own_peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )
    del ballast
    own, maxrss = map(float, child.stdout.split())
    assert own < 100 < 400 < maxrss, (own, maxrss)
