"""Fault soak: many partners, thousands of count calls, Gradient misbehaving on purpose.

Seeded faults on every vendor-API call: 5 % 5xx, 429 bursts (the client asks for more than the
emulator's vendor-wide limit), timeouts longer than the client's timeout, dropped connections
and answers lost after the call was handled. After at most one re-run, every value in the
emulator equals the stored count, the ledger equals the emulator, and nothing is recorded as
delivered that the emulator lacks.

Default size: 20 partners, 3,000 count calls. ``GBS_SOAK_FULL=1``: 300 partners, 50,400 calls
(about ten minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from datetime import date

import pytest

from gradient_emulator import EmulatorAdmin, EmulatorServer
from gradient_emulator.state import EmulatorState
from pipeline.gradient import ledger
from pipeline.resources import StateDatabase
from tests.push_harness import Job, month_counts, org, partner_key, worker_command

FULL = os.environ.get("GBS_SOAK_FULL") == "1"
PARTNERS, COMPANIES = (300, 84) if FULL else (20, 75)
VENDOR_KEY = "vk-soak-41aa07"
OCT = date(2026, 10, 1)
FAULTS = {
    "seed": 20261001,
    "error_rate": 0.05,
    "error_status": 503,
    "timeout_rate": 0.003,
    "timeout_seconds": 4.0,  # past the client's 2 s timeout
    "drop_rate": 0.005,
    "lost_response_rate": 0.005,
    "rate_limit_per_second": 90,  # the client asks for 120/s: 429s whenever it keeps up
    # and a burst of 429s on the first count calls, whatever the machine's speed
    "fail_next": [{"path_prefix": "/service/", "method": "POST", "status": 429}] * 60,
}

pytestmark = [pytest.mark.slow] + ([pytest.mark.timeout(3600)] if FULL else [])


def run_worker(tmp_path, name: str, job: Job) -> dict:
    path = job.write(tmp_path / f"{name}.json")
    done = subprocess.run(worker_command(path), capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {
        "partners": {line["partner"]: line for line in lines if "partner" in line},
        "stats": next(line["stats"] for line in lines if "stats" in line),
    }


def test_fault_soak_is_exact_after_at_most_one_rerun(tmp_path, sqlite_url) -> None:
    partners = [f"s-{n:04d}" for n in range(PARTNERS)]
    state = EmulatorState(max_logged_requests=1_000_000)
    with EmulatorServer(VENDOR_KEY, state=state, rate_limit_per_second=1000) as server, EmulatorAdmin(
        server.base_url, timeout=120
    ) as admin:
        for pid in partners:
            admin.register_partner(partner_key(pid), name=pid, organization_id=org(pid), auto_map_all=True)
        admin.set_faults(FAULTS)
        job = Job(
            state_url=sqlite_url, base_url=server.base_url, vendor_key=VENDOR_KEY, partners=partners,
            month=OCT.isoformat(), companies=COMPANIES, run_id="soak-1", max_requests_per_second=120,
            max_concurrency=32, timeout_seconds=2.0, max_attempts=6, backoff_initial_seconds=0.1,
            backoff_max_seconds=2.0,
        )
        runs = [run_worker(tmp_path, "soak-1", job)]
        if any(p["error"] or p["outcomes"].get("failed") for p in runs[0]["partners"].values()):
            job.run_id = "soak-2"
            runs.append(run_worker(tmp_path, "soak-2", job))
        log = admin.requests()
        admin.clear_faults()
        engine = StateDatabase(url=sqlite_url).engine()
        sku_of = {sid: sku for sku, sid in ledger.service_ids(engine).items()}
        held = {
            (r["organization_id"].removeprefix("org-"), r["account_id"], sku_of[r["service_id"]]): r["unit_count"]
            for r in admin.counts()
        }

    frame = month_counts(partners, OCT, COMPANIES)
    stored = {(r.partner_id, r.company_id, r.sku): r.billable_users for r in frame.itertuples(index=False)}
    delivered: dict[tuple[str, str, str], int] = {}
    for e in ledger.entries_for(engine, OCT):
        if e["outcome"] == "delivered":
            delivered[(e["partner_id"], e["account_id"], e["sku"])] = e["value"]
    count_calls = [r for r in log if r["path"].endswith("/count")]
    faults = Counter(r["fault"] for r in log if r["fault"])
    mismatched = {k for k in stored if held.get(k) != stored[k]}
    ledger_vs_gradient = {k for k in delivered if held.get(k) != delivered[k]}
    print(
        f"\nsoak: {PARTNERS} partners, {len(stored)} pairs, {len(count_calls)} count calls "
        f"({len(log)} requests), faults {dict(faults)}, "
        f"retries {[r['stats']['retries'] for r in runs]}, re-runs {len(runs) - 1}, "
        f"discrepancies gradient≠stored {len(mismatched)}, ledger≠gradient {len(ledger_vs_gradient)}"
    )
    assert len(count_calls) >= (50_000 if FULL else 3_000)
    assert faults["error"] and faults["rate_limited"] and faults["timeout"] and faults["drop"]
    assert not mismatched
    assert delivered == held == stored
    assert not ledger_vs_gradient
    assert all(not p["error"] and not p["outcomes"].get("failed") for p in runs[-1]["partners"].values())
