"""The ledger follows Gradient, not itself.

Each test delivers October through the real load assets to the real emulator, then changes
Gradient (or the pipeline's own state) behind the pipeline's back the way the attack run did,
and checks that one re-run leaves Gradient holding exactly the stored counts and that the run
says what it found.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from assets import gradient_load as gl
from pipeline.gradient import ledger
from pipeline.gradient.identity import GradientSide, key_fingerprint, void_reason
from pipeline.gradient.ledger import Delivered
from pipeline.gradient.load import plan_push
from pipeline.gradient.partner_keys import encrypt_partner_key
from pipeline.resources import BillingRules
from pipeline.source import product_schema as ps
from pipeline.store.months import load_month_computation
from tests.test_gradient_load_e2e import (  # noqa: F401 - fixtures
    ASSETS,
    CONNECTED,
    NY,
    OCT,
    OCT_KEY,
    World,
    admin,
    emulator,
    failure_text,
    materialization_metadata,
    org,
    statuses_set,
    world,
)

# --------------------------------------------------------------------------- plain functions


def _counts(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["company_id", "sku", "billable_users"])


def test_plan_never_skips_an_unanswered_pair_and_zeroes_it_when_it_has_no_users():
    delivered = {("c1", "SAT"): Delivered(OCT, 5), ("c2", "SAT"): Delivered(OCT, 7)}
    unanswered = {("c2", "SAT"): 7, ("c3", "SAT"): 4}
    plan = plan_push(OCT, _counts([("c1", "SAT", 5), ("c2", "SAT", 7)]), delivered, unanswered=unanswered)
    sent = {(c.account_id, c.sku): c.value for c in plan.to_send}
    # c1 is delivered with the same value: skipped; c2's answer was never recorded: sent again;
    # c3 was sent, its answer lost, and it has no users now: sent as 0
    assert sent == {("c2", "SAT"): 7, ("c3", "SAT"): 0}
    assert plan.already_delivered == 1


def test_resend_plan_sends_every_pair_and_still_zeroes_held_ones():
    delivered = {("c1", "SAT"): Delivered(OCT, 5), ("c9", "SAT"): Delivered(OCT, 2)}
    plan = plan_push(OCT, _counts([("c1", "SAT", 5)]), delivered, resend=True)
    assert {(c.account_id, c.sku): c.value for c in plan.to_send} == {("c1", "SAT"): 5, ("c9", "SAT"): 0}
    assert plan.already_delivered == 0


class _Recorded:
    def __init__(self, organization_id=None, integration_id=None, key_fingerprint=None):
        self.organization_id = organization_id
        self.integration_id = integration_id
        self.key_fingerprint = key_fingerprint


def test_void_reason_tells_another_org_integration_or_status_from_a_regenerated_key():
    old, new = key_fingerprint("pk-old"), key_fingerprint("pk-new")
    assert old != new and len(old) == 16 and "pk-old" not in old
    recorded = _Recorded("org-a", "int-a", old)
    assert void_reason(recorded, GradientSide("org-a", "int-a", "active", new)) is None  # regenerated key
    assert "another Gradient organization" in void_reason(recorded, GradientSide("org-b", "int-b", "active", new))
    assert "another integration" in void_reason(recorded, GradientSide("org-a", "int-b", "active", old))
    assert "'inactive'" in void_reason(recorded, GradientSide("org-a", "int-a", "inactive", old))
    # identities not recorded yet (before 0006): the same key is trusted, a new key is not
    assert void_reason(_Recorded(key_fingerprint=old), GradientSide(None, None, "active", old)) is None
    assert "key changed" in void_reason(_Recorded(key_fingerprint=old), GradientSide(None, None, "active", new))
    assert void_reason(_Recorded(), GradientSide("org-a", "int-a", "pending", new)) is None


def test_only_an_answer_forgets_an_unanswered_call(tmp_path):
    from pipeline.gradient.ledger import LedgerEntry
    from pipeline.resources import StateDatabase

    state = StateDatabase(url=f"sqlite:///{tmp_path / 'state.db'}").engine()
    ledger.record_unanswered(state, "p-1", OCT, [("c1", "SAT", 5), ("c2", "SAT", 7), ("c3", "SAT", 9)], "crashed")

    def entry(account: str, outcome: str, status: int | None, detail: str = "") -> LedgerEntry:
        return LedgerEntry("p-1", OCT, account, "SAT", "svc", 0, outcome, status, detail, "rerun")

    ledger.record(state, [
        entry("c1", ledger.DELIVERED, 201),  # Gradient holds the new value
        entry("c2", ledger.FAILED, 503),  # sent, effect unknown: still possibly held
        entry("c3", ledger.FAILED, None, "not sent: Gradient rejected the partner's key (401)"),
    ])
    assert ledger.unanswered_pairs(state, "p-1") == {("c2", "SAT"): 7, ("c3", "SAT"): 9}


# --------------------------------------------------------------------------- through the assets


def counts_of(world: World, organization_id: str) -> dict[tuple[str, str], int]:
    sku_of = world.sku_of()
    return {
        (row["account_id"], sku_of[row["service_id"]]): row["unit_count"]
        for row in world.admin.counts()
        if row["organization_id"] == organization_id
    }


def stored_counts(world: World, partner_id: str) -> dict[tuple[str, str], int]:
    return {(c, s): v for (p, c, s), v in world.billable(OCT).items() if p == partner_id}


def deliver_october(world: World) -> dict[tuple[str, str], int]:
    world.register()
    first = world.run()
    assert first.success, failure_text(first)
    held = counts_of(world, org("p-001"))
    assert held == stored_counts(world, "p-001") and held
    world.admin.clear_requests()
    return held


def test_key_of_another_organization_sends_everything_to_the_new_one(world):
    deliver_october(world)
    # the partner pastes a key of another Gradient organization: key and updated_at change,
    # connected_at does not
    other_key = "pk-another-organization-7c1e"
    world.admin.register_partner(other_key, name="Partner p-001 (second org)", organization_id="org-p-001-b",
                                 auto_map_all=True)
    now = ps.to_db_timestamp(datetime.now(timezone.utc), world.product.dialect.name)
    with world.product.begin() as conn:
        conn.execute(
            sa.update(ps.gradient_connections)
            .where(ps.gradient_connections.c.partner_id == "p-001")
            .values(encrypted_api_key=encrypt_partner_key(other_key, world.fernet_key), updated_at=now)
        )

    rerun = world.run()
    assert rerun.success, failure_text(rerun)
    assert counts_of(world, "org-p-001-b") == stored_counts(world, "p-001")
    assert statuses_set(world.requests(), "org-p-001-b") == ["pending", "active"]
    assert world.admin.state()["partners"]["org-p-001-b"]["status"] == "active"
    changes = materialization_metadata(rerun, "gradient_accounts")["gradient_changes"]
    assert "another Gradient organization" in changes["p-001"][0]
    assert "Gradient changed: the partner's key now belongs to another Gradient organization" in str(
        materialization_metadata(rerun, "gradient_unit_counts")["per_partner"]
    )
    state = ledger.partner_state(world.state, "p-001")
    assert state.organization_id == "org-p-001-b" and state.key_fingerprint == key_fingerprint(other_key)
    assert other_key not in str(state)
    # the others were not touched, and a further re-run sends nothing
    assert {r["organization_id"] for r in world.count_calls()} == {"org-p-001-b"}
    world.admin.clear_requests()
    again = world.run()
    assert again.success and world.count_calls() == []


def test_account_deleted_in_gradient_is_created_again_and_its_counts_resent(world):
    held = deliver_october(world)
    gone = sorted({account for account, _ in held})[0]
    world.admin.delete_account(org("p-001"), gone)

    rerun = world.run()
    assert rerun.success, failure_text(rerun)
    assert counts_of(world, org("p-001")) == held
    calls = world.count_calls()
    assert {r["organization_id"] for r in calls} == {org("p-001")}
    assert len(calls) == len([pair for pair in held if pair[0] == gone])
    outcomes = [e["outcome"] for e in world.entries(OCT, rerun.run_id) if e["account_id"] == gone]
    assert outcomes.count(ledger.DROPPED) == outcomes.count(ledger.DELIVERED) > 0
    assert "missing in Gradient" in materialization_metadata(rerun, "gradient_accounts")["gradient_changes"]["p-001"][0]


def test_integration_set_inactive_in_gradient_is_onboarded_again_and_active_after_the_push(world):
    held = deliver_october(world)
    world.admin.set_integration_status(org("p-001"), "inactive")  # Gradient drops accounts and counts
    assert counts_of(world, org("p-001")) == {}

    rerun = world.run()
    assert rerun.success, failure_text(rerun)
    assert counts_of(world, org("p-001")) == held
    assert statuses_set(world.requests(), org("p-001")) == ["pending", "active"]
    assert world.admin.state()["partners"][org("p-001")]["status"] == "active"
    assert "'inactive'" in materialization_metadata(rerun, "gradient_accounts")["gradient_changes"]["p-001"][0]


def test_lost_acknowledgements_are_resent_and_zeroed_when_the_company_lost_its_users(world, monkeypatch):
    world.register()
    first = world.run("2026-09-01")  # September delivered: October is a fresh month to push
    assert first.success, failure_text(first)

    def state_db_read_only(self, batch):
        raise OSError("attempt to write a readonly database")

    # October's push reaches Gradient but none of p-001's answers reach the ledger
    monkeypatch.setattr("pipeline.gradient.load._PartnerPush._record", state_db_read_only)
    lost = world.run()
    assert not lost.success
    monkeypatch.undo()
    unanswered = ledger.unanswered_pairs(world.state, "p-001")
    assert unanswered and all(value for value in unanswered.values() if value)
    # then two of p-001's companies lose every user before the re-run
    companies = sorted({c for c, _ in unanswered})[:2]
    with world.product.begin() as conn:
        conn.execute(sa.delete(ps.service_enrollments).where(ps.service_enrollments.c.company_id.in_(companies)))

    rerun = world.run()
    assert rerun.success, failure_text(rerun)
    expected = stored_counts(world, "p-001")
    held = counts_of(world, org("p-001"))
    for company in companies:
        assert all(v == 0 for (c, _), v in held.items() if c == company), company
        assert not any(c == company for c, _ in expected)
    assert {k: v for k, v in held.items() if v} == {k: v for k, v in expected.items() if v}
    assert ledger.unanswered_pairs(world.state, "p-001") == {}


def test_billing_timezone_change_of_a_delivered_month_refuses_unless_forced(world):
    deliver_october(world)
    before = world.billable(OCT)
    resources = world.resources()
    resources["billing_rules"] = BillingRules(quarantine_threshold=0.5, timezone="Asia/Tokyo")

    refused = dg.materialize(ASSETS, partition_key=OCT_KEY, resources=resources, raise_on_error=False)
    assert not refused.success
    text = failure_text(refused)
    assert "America/New_York" in text and "Asia/Tokyo" in text and "--allow-timezone-change" in text
    assert world.count_calls() == [] and world.billable(OCT) == before

    forced = dg.materialize(
        ASSETS, partition_key=OCT_KEY, resources=resources, raise_on_error=False,
        tags={"gbs/allow_timezone_change": "true"},
    )
    assert forced.success, failure_text(forced)
    assert "forced" in materialization_metadata(forced, "validated_utilization")["timezone_change"]
    assert load_month_computation(world.state, OCT).billing_timezone == "Asia/Tokyo"
    assert ledger.month_timezone(world.state, OCT) == "Asia/Tokyo"
    # the month now belongs to Tokyo: an unforced run goes through, one in New York refuses
    again = dg.materialize(ASSETS, partition_key=OCT_KEY, resources=resources, raise_on_error=False)
    assert again.success, failure_text(again)
    back = dg.materialize(ASSETS, partition_key=OCT_KEY, resources=world.resources(), raise_on_error=False)
    assert not back.success and "counted in BILLING_TIMEZONE Asia/Tokyo" in failure_text(back)
    nonzero = {k: v for k, v in counts_of(world, org("p-001")).items() if v}
    assert nonzero == {k: v for k, v in stored_counts(world, "p-001").items() if v}


def test_resend_sends_every_pair_whatever_the_ledger_says(world):
    held = deliver_october(world)
    # Gradient lost p-001's counts in a way the pipeline cannot see (no account, org or status change)
    partner = world.emulator.state._partners[org("p-001")]
    with world.emulator.state._lock:
        partner.counts.clear()
    unseen = world.run()
    assert unseen.success and world.count_calls() == []  # the ledger cannot know

    resent = world.run(resend=True, partner_ids=["p-001"])
    assert resent.success, failure_text(resent)
    assert counts_of(world, org("p-001")) == held
    assert len(world.count_calls()) == len(held)
    # a push of chosen partners claims no month: its metadata is on an observation
    (observed,) = [
        e.asset_observation_data.asset_observation
        for e in resent.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
        and e.asset_observation_data.asset_observation.asset_key.path[-1] == "gradient_unit_counts"
    ]
    assert observed.metadata["resend"].value is True


@pytest.mark.parametrize("kind", ["maintenance_page", "empty_answer"])
def test_a_2xx_that_is_not_gradients_answer_is_failed_and_a_healthy_rerun_delivers(world, kind):
    world.register()
    world.gradient_kwargs = {"max_attempts": 2}
    world.admin.answer_count_calls(kind)
    faulty = world.run()
    assert not faulty.success
    entries = world.entries(OCT, faulty.run_id)
    assert entries and not [e for e in entries if e["outcome"] == ledger.DELIVERED]
    assert {e["outcome"] for e in entries} == {ledger.FAILED}
    assert "was not its documented JSON" in entries[0]["detail"] and len(entries[0]["detail"]) < 1000
    assert world.admin.counts() == []  # Gradient stored nothing

    world.admin.clear_faults()
    healthy = world.run()
    assert healthy.success, failure_text(healthy)
    for pid in CONNECTED:
        assert {k: v for k, v in counts_of(world, org(pid)).items()} == {
            k: v for k, v in stored_counts(world, pid).items() if (pid, k[0]) in world.mapped_accounts()
        }


def test_trickling_answers_fail_within_the_deadline_and_the_rerun_resends_them(world):
    world.register()
    world.gradient_kwargs = {"timeout_seconds": 1.0, "max_attempts": 1}
    world.admin.answer_count_calls("trickle", trickle_interval_seconds=3)
    slow = world.run()
    assert not slow.success
    details = {e["detail"] for e in world.entries(OCT, slow.run_id) if e["outcome"] == ledger.FAILED}
    assert any("did not arrive whole within 1 s" in (d or "") for d in details), details
    # Gradient took the values, the answers never came whole: each is kept as possibly held
    assert ledger.unanswered_pairs(world.state, "p-001")

    world.admin.clear_faults()
    world.gradient_kwargs = {}
    rerun = world.run()
    assert rerun.success, failure_text(rerun)
    assert counts_of(world, org("p-001")) == stored_counts(world, "p-001")
    assert ledger.unanswered_pairs(world.state, "p-001") == {}


@pytest.mark.parametrize("partner_id", CONNECTED[:1])
def test_load_config_exposes_resend(partner_id):
    assert "resend" in gl.GradientLoadConfig.model_fields
    assert gl.GradientLoadConfig(partner_ids=[partner_id], resend=True).resend
