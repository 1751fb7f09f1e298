"""Unit tests of the pure parts of the Gradient load: the push plan, onboarding, the ledger on a
real SQLite state database, and partner-key encryption (``/work/shared/design.md``, "The
target: Gradient")."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from pipeline.gradient import ledger
from pipeline.gradient.client import Secret
from pipeline.gradient.load import (
    ACTIVE,
    ERROR,
    INACTIVE,
    PENDING,
    CountCall,
    PartnerTarget,
    needs_onboarding,
    plan_push,
)
from pipeline.gradient.ledger import (
    DELIVERED,
    FAILED,
    SUPERSEDED,
    UNMAPPED,
    Delivered,
    LedgerEntry,
    PartnerState,
)
from pipeline.gradient.partner_keys import (
    PartnerKeyError,
    decrypt_partner_key,
    encrypt_partner_key,
    generate_encryption_key,
    rotate,
)
from pipeline.source.partners import PartnerConnection

SEP = date(2026, 9, 1)
OCT = date(2026, 10, 1)
NOV = date(2026, 11, 1)
UTC = timezone.utc


def counts(*rows: tuple[str, str, int]) -> pd.DataFrame:
    """A partner's month as ``plan_push`` receives it: (company_id, sku, billable_users)."""
    return pd.DataFrame(rows, columns=["company_id", "sku", "billable_users"])


def calls(plan) -> list[tuple[str, str, int]]:
    return [(c.account_id, c.sku, c.value) for c in plan.to_send]


# =========================================================================== plan_push


class TestPlanPush:
    def test_first_push_sends_every_pair_in_order(self):
        plan = plan_push(OCT, counts(("c2", "SAT", 4), ("c1", "SAT", 3), ("c1", "EMAIL", 1)), {})
        assert calls(plan) == [("c1", "EMAIL", 1), ("c1", "SAT", 3), ("c2", "SAT", 4)]
        assert plan.already_delivered == 0
        assert all(isinstance(c, CountCall) for c in plan.to_send)

    def test_values_are_plain_ints_from_numpy(self):
        frame = counts(("c1", "SAT", 3)).astype({"billable_users": "int64"})
        (call,) = plan_push(OCT, frame, {}).to_send
        assert type(call.value) is int and call.value == 3

    def test_skips_pair_delivered_for_same_month_with_same_value(self):
        delivered = {("c1", "SAT"): Delivered(OCT, 3), ("c1", "EMAIL"): Delivered(OCT, 1)}
        plan = plan_push(OCT, counts(("c1", "SAT", 3), ("c1", "EMAIL", 1)), delivered)
        assert plan.to_send == []
        assert plan.already_delivered == 2

    def test_resends_when_value_changed(self):
        delivered = {("c1", "SAT"): Delivered(OCT, 3)}
        plan = plan_push(OCT, counts(("c1", "SAT", 5)), delivered)
        assert calls(plan) == [("c1", "SAT", 5)]
        assert plan.already_delivered == 0

    def test_resends_same_value_when_month_differs(self):
        # Gradient has no month: the same value delivered for September must be sent again
        # for October (so the ledger records October as delivered).
        delivered = {("c1", "SAT"): Delivered(SEP, 3)}
        assert calls(plan_push(OCT, counts(("c1", "SAT", 3)), delivered)) == [("c1", "SAT", 3)]

    def test_forced_older_month_resends_same_value(self):
        delivered = {("c1", "SAT"): Delivered(NOV, 3)}
        assert calls(plan_push(OCT, counts(("c1", "SAT", 3)), delivered)) == [("c1", "SAT", 3)]

    def test_pair_held_non_zero_and_missing_now_is_sent_as_zero(self):
        delivered = {("c1", "SAT"): Delivered(SEP, 3), ("c9", "EMAIL"): Delivered(SEP, 2)}
        plan = plan_push(OCT, counts(("c1", "SAT", 3)), delivered)
        assert sorted(calls(plan)) == [("c1", "SAT", 3), ("c9", "EMAIL", 0)]

    def test_zero_already_delivered_for_same_month_is_not_resent(self):
        delivered = {("c9", "EMAIL"): Delivered(OCT, 0)}
        assert plan_push(OCT, counts(), delivered).to_send == []

    def test_no_zero_for_pair_already_zero_from_an_earlier_month(self):
        delivered = {("c9", "EMAIL"): Delivered(SEP, 0)}
        plan = plan_push(OCT, counts(("c1", "SAT", 2)), delivered)
        assert calls(plan) == [("c1", "SAT", 2)]

    def test_zero_dropped_pair_delivered_for_this_month_is_skipped_on_rerun(self):
        # run 1 of October sent the zero; run 2 of October must not send it again
        delivered = {("c9", "EMAIL"): Delivered(OCT, 0), ("c1", "SAT"): Delivered(OCT, 2)}
        plan = plan_push(OCT, counts(("c1", "SAT", 2)), delivered)
        # nothing is sent; the held zero is not a wanted pair, so only c1/SAT counts as skipped
        assert plan.to_send == [] and plan.already_delivered == 1

    def test_empty_month_with_nothing_held_sends_nothing(self):
        plan = plan_push(OCT, counts(), {})
        assert plan.to_send == [] and plan.already_delivered == 0

    def test_empty_month_zeroes_everything_held(self):
        delivered = {("c1", "SAT"): Delivered(SEP, 1), ("c2", "SAT"): Delivered(SEP, 7)}
        assert calls(plan_push(OCT, counts(), delivered)) == [("c1", "SAT", 0), ("c2", "SAT", 0)]

    def test_previously_delivered_pairs_come_last(self):
        delivered = {
            ("a1", "SAT"): Delivered(SEP, 1),  # delivered before, value changes
            ("a3", "EMAIL"): Delivered(SEP, 5),  # delivered before, missing now -> 0
        }
        plan = plan_push(
            OCT,
            counts(("a1", "SAT", 2), ("a2", "SAT", 4), ("a4", "PHISH", 1), ("a0", "EMAIL", 3)),
            delivered,
        )
        assert calls(plan) == [
            ("a0", "EMAIL", 3),
            ("a2", "SAT", 4),
            ("a4", "PHISH", 1),
            ("a1", "SAT", 2),
            ("a3", "EMAIL", 0),
        ]

    def test_ids_are_compared_as_text(self):
        frame = pd.DataFrame({"company_id": [101], "sku": ["SAT"], "billable_users": [4]})
        delivered = {("101", "SAT"): Delivered(OCT, 4)}
        plan = plan_push(OCT, frame, delivered)
        assert plan.to_send == [] and plan.already_delivered == 1


# =========================================================================== needs_onboarding


def target(connected_at: datetime | None) -> PartnerTarget:
    connection = PartnerConnection(
        partner_id="p1",
        state="connected",
        connected_at=connected_at,
        disconnected_at=None,
        updated_at=connected_at,
        encrypted_api_key="gAAAA-not-used",
    )
    return PartnerTarget(connection, Secret("partner-key"))


def state(status: str, onboarded_at: datetime | None) -> PartnerState:
    return PartnerState("p1", status, None, onboarded_at, ledger.EPOCH)


T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


class TestNeedsOnboarding:
    def test_new_partner(self):
        assert needs_onboarding(target(T0), None) is True

    def test_last_seen_disconnected(self):
        assert needs_onboarding(target(T0), state(INACTIVE, T0)) is True

    @pytest.mark.parametrize("status", [ACTIVE, PENDING, ERROR])
    def test_already_onboarded_for_this_connection(self, status):
        assert needs_onboarding(target(T0), state(status, T0)) is False

    def test_reconnected_since_last_onboarding(self):
        assert needs_onboarding(target(T0 + timedelta(seconds=1)), state(ACTIVE, T0)) is True

    def test_older_connection_timestamp_does_not_reonboard(self):
        assert needs_onboarding(target(T0 - timedelta(days=1)), state(ACTIVE, T0)) is False

    def test_known_but_never_onboarded(self):
        # e.g. the key failed verification before: the state row exists without an onboarding
        assert needs_onboarding(target(T0), state(ERROR, None)) is True

    def test_no_connection_timestamp(self):
        assert needs_onboarding(target(None), state(ACTIVE, None)) is False


# =========================================================================== ledger


def entry(
    account: str,
    sku: str,
    value: int,
    outcome: str = DELIVERED,
    month: date = OCT,
    partner: str = "p1",
    run_id: str = "run-1",
) -> LedgerEntry:
    return LedgerEntry(
        partner_id=partner,
        month=month,
        account_id=account,
        sku=sku,
        service_id=f"svc-{sku}",
        value=value,
        outcome=outcome,
        http_status={DELIVERED: 201, UNMAPPED: 404, FAILED: 503, SUPERSEDED: None}[outcome],
        detail=None,
        run_id=run_id,
    )


class TestLedger:
    def test_record_writes_every_column(self, state_engine):
        assert ledger.record(state_engine, [entry("c1", "SAT", 3)]) == 1
        assert ledger.record(state_engine, []) == 0
        (row,) = ledger.entries_for(state_engine, OCT)
        assert {k: row[k] for k in ("partner_id", "month", "account_id", "sku", "service_id",
                                    "value", "outcome", "http_status", "run_id")} == {
            "partner_id": "p1", "month": OCT, "account_id": "c1", "sku": "SAT",
            "service_id": "svc-SAT", "value": 3, "outcome": DELIVERED, "http_status": 201,
            "run_id": "run-1",
        }
        assert row["recorded_at"] is not None

    def test_delivered_pairs_latest_delivered_wins(self, state_engine):
        ledger.record(state_engine, [entry("c1", "SAT", 3, month=SEP), entry("c1", "EMAIL", 1, month=SEP)])
        ledger.record(state_engine, [entry("c1", "SAT", 5, month=OCT)])
        # not delivered: must not replace what Gradient holds
        ledger.record(
            state_engine,
            [
                entry("c1", "SAT", 9, UNMAPPED, month=NOV),
                entry("c1", "SAT", 8, FAILED, month=NOV),
                entry("c1", "EMAIL", 7, SUPERSEDED, month=NOV),
            ],
        )
        # another partner's deliveries are not this partner's
        ledger.record(state_engine, [entry("c1", "SAT", 42, partner="p2")])
        assert ledger.delivered_pairs(state_engine, "p1") == {
            ("c1", "SAT"): Delivered(OCT, 5),
            ("c1", "EMAIL"): Delivered(SEP, 1),
        }
        assert ledger.delivered_pairs(state_engine, "p2") == {("c1", "SAT"): Delivered(OCT, 42)}
        assert ledger.delivered_pairs(state_engine, "nobody") == {}

    def test_latest_wins_is_by_insertion_not_by_month(self, state_engine):
        # a forced older month after a newer one: Gradient now holds the older value
        ledger.record(state_engine, [entry("c1", "SAT", 5, month=OCT)])
        ledger.record(state_engine, [entry("c1", "SAT", 2, month=SEP)])
        assert ledger.delivered_pairs(state_engine, "p1") == {("c1", "SAT"): Delivered(SEP, 2)}

    def test_delivered_pairs_month_is_a_date(self, state_engine):
        ledger.record(state_engine, [entry("c1", "SAT", 5)])
        held = ledger.delivered_pairs(state_engine, "p1")[("c1", "SAT")]
        assert type(held.month) is date

    def test_newest_delivered_month(self, state_engine):
        assert ledger.newest_delivered_month(state_engine, "p1") is None
        ledger.record(state_engine, [entry("c1", "SAT", 3, month=SEP)])
        ledger.record(state_engine, [entry("c1", "SAT", 5, month=OCT)])
        # later months that were not delivered do not count
        ledger.record(
            state_engine,
            [entry("c1", "SAT", 5, UNMAPPED, month=NOV), entry("c1", "SAT", 5, SUPERSEDED, month=date(2026, 12, 1))],
        )
        ledger.record(state_engine, [entry("c1", "SAT", 5, month=date(2027, 1, 1), partner="p2")])
        newest = ledger.newest_delivered_month(state_engine, "p1")
        assert newest == OCT and type(newest) is date
        # a forced older push does not move the newest month back
        ledger.record(state_engine, [entry("c1", "SAT", 3, month=SEP)])
        assert ledger.newest_delivered_month(state_engine, "p1") == OCT

    def test_set_partner_status_inserts_then_updates(self, state_engine):
        assert ledger.partner_state(state_engine, "p1") is None
        ledger.set_partner_status(state_engine, "p1", PENDING, run_id="r1", onboarded_connection_at=T0)
        first = ledger.partner_state(state_engine, "p1")
        assert first.status == PENDING
        assert first.onboarded_connection_at == T0
        assert first.delivered_since == ledger.EPOCH
        ledger.set_partner_status(state_engine, "p1", ERROR, run_id="r2", last_error="401 boom")
        second = ledger.partner_state(state_engine, "p1")
        assert (second.status, second.last_error) == (ERROR, "401 boom")
        # kept when not given
        assert second.onboarded_connection_at == T0
        assert second.delivered_since == ledger.EPOCH
        ledger.set_partner_status(state_engine, "p1", ACTIVE, run_id="r3")
        assert ledger.partner_state(state_engine, "p1").last_error is None
        assert set(ledger.all_partner_states(state_engine)) == {"p1"}

    def test_reset_delivered_forgets_earlier_deliveries(self, state_engine):
        ledger.set_partner_status(state_engine, "p1", ACTIVE, run_id="r1")
        ledger.record(state_engine, [entry("c1", "SAT", 3, month=OCT), entry("c2", "SAT", 4, month=OCT)])
        ledger.record(state_engine, [entry("c1", "SAT", 3, month=OCT, partner="p2")])
        assert len(ledger.delivered_pairs(state_engine, "p1")) == 2

        ledger.set_partner_status(state_engine, "p1", PENDING, run_id="r2", reset_delivered=True)
        assert ledger.delivered_pairs(state_engine, "p1") == {}
        assert ledger.newest_delivered_month(state_engine, "p1") is None
        # only p1 forgot
        assert ledger.delivered_pairs(state_engine, "p2") == {("c1", "SAT"): Delivered(OCT, 3)}
        # the history itself is kept (append-only)
        assert len(ledger.entries_for(state_engine, OCT, ["p1"])) == 2

        ledger.record(state_engine, [entry("c1", "SAT", 6, month=SEP)])
        assert ledger.delivered_pairs(state_engine, "p1") == {("c1", "SAT"): Delivered(SEP, 6)}
        assert ledger.newest_delivered_month(state_engine, "p1") == SEP

    def test_reset_on_a_new_partner_forgets_older_rows(self, state_engine):
        ledger.record(state_engine, [entry("c1", "SAT", 3)])
        ledger.set_partner_status(state_engine, "p1", PENDING, run_id="r", reset_delivered=True)
        assert ledger.delivered_pairs(state_engine, "p1") == {}
        assert ledger.partner_state(state_engine, "p1").delivered_since > ledger.EPOCH

    def test_status_change_without_reset_keeps_deliveries(self, state_engine):
        ledger.set_partner_status(state_engine, "p1", PENDING, run_id="r1")
        ledger.record(state_engine, [entry("c1", "SAT", 3)])
        ledger.set_partner_status(state_engine, "p1", ACTIVE, run_id="r2")
        ledger.set_partner_status(state_engine, "p1", ERROR, run_id="r3", last_error="x")
        assert ledger.delivered_pairs(state_engine, "p1") == {("c1", "SAT"): Delivered(OCT, 3)}

    def test_month_outcomes(self, state_engine):
        ledger.record(
            state_engine,
            [
                entry("c1", "SAT", 3, run_id="r1"),
                entry("c2", "SAT", 1, UNMAPPED, run_id="r1"),
                entry("c3", "SAT", 1, UNMAPPED, run_id="r1"),
                entry("c1", "SAT", 1, FAILED, partner="p2", run_id="r1"),
                entry("c1", "SAT", 1, SUPERSEDED, month=SEP, run_id="r1"),
            ],
        )
        ledger.record(state_engine, [entry("c2", "SAT", 1, run_id="r2")])
        assert ledger.month_outcomes(state_engine, OCT) == {
            "p1": {DELIVERED: 2, UNMAPPED: 2},
            "p2": {FAILED: 1},
        }
        assert ledger.month_outcomes(state_engine, OCT, run_id="r2") == {"p1": {DELIVERED: 1}}
        assert ledger.month_outcomes(state_engine, SEP) == {"p1": {SUPERSEDED: 1}}
        assert ledger.month_outcomes(state_engine, NOV) == {}

    def test_service_ids_roundtrip(self, state_engine):
        ledger.save_service_ids(state_engine, {"SAT": ("id-1", "Sat"), "EMAIL": ("id-2", "Email")})
        ledger.save_service_ids(state_engine, {"SAT": ("id-3", "Sat")})
        assert ledger.service_ids(state_engine) == {"SAT": "id-3", "EMAIL": "id-2"}

    def test_ledger_tables_exist_after_ensure(self, state_engine):
        names = set(sa.inspect(state_engine).get_table_names())
        assert {"ledger_entries", "partner_sync_state", "gradient_services"} <= names


# =========================================================================== partner keys


class TestPartnerKeys:
    def test_roundtrip(self):
        key = generate_encryption_key()
        token = encrypt_partner_key("  the-partner-key  ", key)
        assert "the-partner-key" not in token
        assert decrypt_partner_key(token, key, "p1") == "the-partner-key"

    def test_rotation_new_first_old_kept(self):
        old, new = generate_encryption_key(), generate_encryption_key()
        under_old = encrypt_partner_key("pk-123", old)
        # new key first, old kept: still decrypts
        assert decrypt_partner_key(under_old, f"{new},{old}", "p1") == "pk-123"
        assert decrypt_partner_key(under_old, f" {new} , {old} ", "p1") == "pk-123"
        rotated = rotate(under_old, f"{new},{old}")
        assert rotated != under_old
        # re-encrypted under the new key alone
        assert decrypt_partner_key(rotated, new, "p1") == "pk-123"
        assert Fernet(new.encode()).decrypt(rotated.encode()) == b"pk-123"
        with pytest.raises(PartnerKeyError):
            decrypt_partner_key(rotated, old, "p1")

    def test_new_values_are_encrypted_under_the_first_key(self):
        old, new = generate_encryption_key(), generate_encryption_key()
        token = encrypt_partner_key("pk-1", f"{new},{old}")
        assert decrypt_partner_key(token, new, "p1") == "pk-1"

    def test_decrypt_failure_names_the_setting_and_holds_no_key_material(self):
        used, other = generate_encryption_key(), generate_encryption_key()
        token = encrypt_partner_key("pk-very-secret", used)
        with pytest.raises(PartnerKeyError) as info:
            decrypt_partner_key(token, other, "p-042")
        message = str(info.value)
        assert "GRADIENT_KEY_ENCRYPTION_KEYS" in message
        assert "p-042" in message
        for secret in (used, other, token, "pk-very-secret"):
            assert secret not in message
        # nor a recognisable piece of any key
        for secret in (used, other):
            assert secret[:12] not in message
        assert info.value.__cause__ is None and info.value.__suppress_context__

    def test_rotate_failure_names_the_setting(self):
        token = encrypt_partner_key("pk", generate_encryption_key())
        other = generate_encryption_key()
        with pytest.raises(PartnerKeyError) as info:
            rotate(token, other)
        assert "GRADIENT_KEY_ENCRYPTION_KEYS" in str(info.value)
        assert other not in str(info.value) and token not in str(info.value)

    def test_corrupt_value(self):
        key = generate_encryption_key()
        with pytest.raises(PartnerKeyError, match="GRADIENT_KEY_ENCRYPTION_KEYS"):
            decrypt_partner_key("not-a-fernet-token", key, "p1")

    def test_missing_stored_key(self):
        with pytest.raises(PartnerKeyError, match="no stored API key"):
            decrypt_partner_key("", generate_encryption_key(), "p1")

    @pytest.mark.parametrize("keys", ["", " , "])
    def test_empty_keyring(self, keys):
        with pytest.raises(PartnerKeyError, match="GRADIENT_KEY_ENCRYPTION_KEYS is empty"):
            encrypt_partner_key("pk", keys)

    def test_malformed_key_is_named_by_position_not_value(self):
        good = generate_encryption_key()
        with pytest.raises(PartnerKeyError) as info:
            decrypt_partner_key("x", f"{good},not-a-key-abc", "p1")
        assert "key #2" in str(info.value)
        assert "not-a-key-abc" not in str(info.value) and good not in str(info.value)

    def test_empty_partner_key_is_refused(self):
        with pytest.raises(PartnerKeyError):
            encrypt_partner_key("   ", generate_encryption_key())
