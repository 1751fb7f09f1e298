"""A push of the Gradient load as a real process, for the reliability tests.

``python tests/push_harness.py <job.json>`` runs what the three load assets run, without Dagster:
the service sync (services lock), each partner's account sync and count push (partner lock),
against the real emulator over HTTP and a real state DB. It prints one JSON line per partner
(``{"partner", "summary", "waited", "outcomes", "skipped", "error", "refused"}``) and a final
``{"stats": ...}`` line. With ``go_file`` set it waits for that file to exist before pushing, so
two processes start together.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SKUS = {
    "SAT": ("Security Awareness Training", "security", "privacy and security awareness training"),
    "PHISH": ("Phishing Simulation", "security", "phishing simulation"),
}


def partner_key(partner_id: str) -> str:
    return f"pk-{hashlib.sha256(partner_id.encode()).hexdigest()[:20]}"


def org(partner_id: str) -> str:
    return f"org-{partner_id}"


def month_counts(partner_ids: list[str], month: date, companies: int) -> pd.DataFrame:
    """Deterministic counts per (partner, company, sku), different every month."""
    rows = []
    for pid in partner_ids:
        for c in range(companies):
            for sku in SKUS:
                digest = hashlib.sha256(f"{pid}|{c}|{sku}|{month}".encode()).digest()
                rows.append(
                    {
                        "partner_id": pid,
                        "company_id": f"c-{c:04d}",
                        "company_name": f"Company {pid} {c}",
                        "sku": sku,
                        "billable_users": digest[0] % 97 + 1,
                    }
                )
    return pd.DataFrame(rows)


@dataclass
class Job:
    state_url: str
    base_url: str
    vendor_key: str
    partners: list[str]
    month: str
    companies: int = 5
    run_id: str = "run"
    go_file: str | None = None
    lock_wait_seconds: float = 300.0
    max_requests_per_second: float = 100.0
    max_concurrency: int = 16
    timeout_seconds: float = 5.0
    max_attempts: int = 6
    backoff_initial_seconds: float = 0.05
    backoff_max_seconds: float = 0.5
    skip_services: bool = False
    extra: dict = field(default_factory=dict)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self)))
        return path


def worker_command(job_path: Path) -> list[str]:
    return [sys.executable, str(ROOT / "tests" / "push_harness.py"), str(job_path)]


async def run_job(job: Job) -> list[dict]:
    from pipeline.gradient.client import GradientClient, Secret
    from pipeline.gradient import ledger
    from pipeline.gradient.load import (
        PartnerTarget,
        push_partner_month,
        sync_partner_accounts,
        sync_vendor_services,
    )
    from pipeline.resources import StateDatabase
    from pipeline.source.partners import PartnerConnection, ServiceDefinition

    state = StateDatabase(url=job.state_url).engine()
    month = date.fromisoformat(job.month)
    counts = month_counts(job.partners, month, job.companies)
    services = [ServiceDefinition(sku, n, n, c, s) for sku, (n, c, s) in SKUS.items()]
    connected = datetime(2026, 1, 1, tzinfo=timezone.utc)
    targets = [
        PartnerTarget(PartnerConnection(pid, "connected", connected, None, connected), Secret(partner_key(pid)))
        for pid in job.partners
    ]
    if job.go_file:
        while not os.path.exists(job.go_file):
            time.sleep(0.01)
    client = GradientClient(
        job.base_url,
        job.vendor_key,
        max_requests_per_second=job.max_requests_per_second,
        timeout_seconds=job.timeout_seconds,
        max_attempts=job.max_attempts,
        backoff_initial_seconds=job.backoff_initial_seconds,
        backoff_max_seconds=job.backoff_max_seconds,
        max_concurrency=job.max_concurrency,
    )
    async with client:
        if not job.skip_services:
            await sync_vendor_services(
                client, targets, services, state, job.run_id, lock_wait_seconds=job.lock_wait_seconds
            )
        service_ids = ledger.service_ids(state)
        conflicts = ledger.service_conflicts(state)

        async def one(target: PartnerTarget):
            mine = counts[counts.partner_id == target.partner_id]
            companies = list(dict.fromkeys(zip(mine.company_id, mine.company_name)))
            accounts = await sync_partner_accounts(
                client, target, companies, state, job.run_id, lock_wait_seconds=job.lock_wait_seconds
            )
            pushed = await push_partner_month(
                client, target, month, mine, service_ids, state, job.run_id,
                accounts_error=accounts.error, service_conflicts=conflicts,
                lock_wait_seconds=job.lock_wait_seconds,
            )
            pushed.waited_seconds += accounts.waited_seconds
            return pushed

        reports = await asyncio.gather(*(one(t) for t in targets))
        stats = client.stats
    out = [
        {
            "partner": r.partner_id,
            "summary": r.summary,
            "waited": r.waited_seconds,
            "outcomes": r.outcomes,
            "skipped": r.skipped,
            "error": r.error,
            "refused": r.refused,
        }
        for r in reports
    ]
    return out + [{"stats": stats}]


def main(job_path: str) -> int:
    job = Job(**json.loads(Path(job_path).read_text()))
    lines = asyncio.run(run_job(job))
    for line in lines:
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1]))
