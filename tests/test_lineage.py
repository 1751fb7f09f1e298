"""Lineage: every stored count traces back to the users and spans that made it."""

from __future__ import annotations

from datetime import date

from pipeline.gradient import ledger
from pipeline.billing.month import BillingMonth
from pipeline.gradient.ledger import DELIVERED, LedgerEntry
from pipeline.billing.lineage import explain
from tests.product_rows import ProductRows, at, reference_query, run_month

MARCH = "2026-03-01"


def test_explain_lists_exactly_the_users_behind_a_count(product_engine, state_engine):
    rows = ProductRows(product_engine).basic()
    rows.users("u1", "u2", "u3")
    rows.user("u-internal", billable=False)
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    rows.enroll("u1", "c1", "SAT", at(2026, 3, 5), at(2026, 3, 9))  # a second span of u1
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 31, 23, 30), None)  # last half hour of March
    rows.enroll("u3", "c1", "SAT", at(2026, 4, 1), None)  # April: not in March
    rows.enroll("u-internal", "c1", "SAT", at(2026, 1, 1), None)  # never billable
    counts, _ = run_month(product_engine, state_engine, MARCH)
    ledger.record(
        state_engine,
        [LedgerEntry("p1", date(2026, 3, 1), "c1", "SAT", "svc-1", 2, DELIVERED, 201, None, "run-1")],
    )
    month = BillingMonth(date(2026, 3, 1), "America/New_York")
    with product_engine.connect() as conn:
        found = explain(conn, state_engine, reference_query(product_engine), month, "p1", "c1", "SAT")

    assert found.stored == 2
    assert found.source_users == 2
    assert sorted(found.source_rows.user_id.unique()) == ["u1", "u2"]
    assert len(found.source_rows) == 3  # u1's two spans, u2's one
    assert [(e["outcome"], e["value"], e["http_status"]) for e in found.ledger] == [(DELIVERED, 2, 201)]
    text = "\n".join(found.lines())
    assert "stored billable users: 2" in text and "u2" in text and "u-internal" not in text


def test_explain_says_when_the_source_changed_since_counting(product_engine, state_engine):
    rows = ProductRows(product_engine).basic()
    rows.users("u1", "u2")
    rows.enroll("u1", "c1", "SAT", at(2026, 1, 1), None)
    run_month(product_engine, state_engine, MARCH)
    rows.enroll("u2", "c1", "SAT", at(2026, 3, 10), None)  # late data
    month = BillingMonth(date(2026, 3, 1), "America/New_York")
    with product_engine.connect() as conn:
        found = explain(conn, state_engine, reference_query(product_engine), month, "p1", "c1", "SAT")
    assert (found.stored, found.source_users) == (1, 2)
    assert any("source changed" in line for line in found.lines())
