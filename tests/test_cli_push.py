"""`gradient-billing-sync push`: a month's stored counts to Gradient, and `--resend` for what
Gradient lost unseen (real CLI, real SQLite databases, real emulator over HTTP)."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pytest

from gradient_emulator import EmulatorAdmin, EmulatorServer
from pipeline.demo.data import demo_partner_key
from pipeline.gradient import ledger
from pipeline.resources import engine_for
from tests.test_cli import VENDOR_KEY, env, invoke  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
OCT = date(2026, 10, 1)


def held(admin: EmulatorAdmin, organization_id: str) -> dict[tuple[str, str], int]:
    return {
        (c["account_id"], c["service_name"]): c["unit_count"]
        for c in admin.counts()
        if c["organization_id"] == organization_id
    }


def test_push_resend_sends_every_pair_again_and_marks_its_run(env, monkeypatch):
    spec = ["--partners", "2", "--companies", "2-3", "--users", "2-5", "--end-month", "2026-11",
            "--history-months", "3"]
    assert invoke("seed-demo", *spec).exit_code == 0
    with EmulatorServer(VENDOR_KEY) as server, EmulatorAdmin(server.base_url) as admin:
        for pid in ("p-001", "p-002"):
            admin.register_partner(demo_partner_key(pid), name=pid, organization_id=f"org-{pid}",
                                   auto_map_all=True)
        monkeypatch.setenv("GRADIENT_BASE_URL", server.base_url)
        first = invoke("run", "--month", "2026-10")
        assert first.exit_code == 0, first.output
        before = held(admin, "org-p-001")
        assert before

        # Gradient loses p-001's counts without any change the pipeline can see
        with server.state._lock:
            server.state._partners["org-p-001"].counts.clear()
        admin.clear_requests()
        plain = invoke("push", "--month", "2026-10", "--partner", "p-001")
        assert plain.exit_code == 0, plain.output
        assert not [r for r in admin.requests() if r["path"].endswith("/count")]

        resent = invoke("push", "--month", "2026-10", "--partner", "p-001", "--resend")
        assert resent.exit_code == 0, resent.output
        calls = [r for r in admin.requests() if r["path"].endswith("/count")]
        assert len(calls) == len(before) and {r["organization_id"] for r in calls} == {"org-p-001"}
        assert held(admin, "org-p-001") == before
        assert "Gradient p-001: delivered" in resent.output

    state = engine_for(env["STATE_DB_URL"])
    resent_runs = {e["run_id"] for e in ledger.entries_for(state, OCT, ["p-001"])} - {
        e["run_id"] for e in ledger.entries_for(state, OCT, ["p-002"])
    }
    with dg.DagsterInstance.get() as instance:
        tags = [instance.get_run_by_id(run_id).tags for run_id in resent_runs]
    assert tags and all(t.get("gbs/resend") == "true" and t.get("gbs/partner") == "p-001" for t in tags)
