"""The state database's tables: one ``MetaData`` for everything the pipeline stores.

SQLite file by default, PostgreSQL in production (``STATE_DB_URL``). Billable counts (and
the counts a validation pass staged for them), quarantine and month records (``pipeline.store.months``), the Gradient ledger and partner
sync state (``pipeline.gradient.ledger``), run failures (``pipeline.automation.failures``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from pipeline.store.migrations import upgrade_to_head

metadata = sa.MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC)


billable_counts = sa.Table(
    "billable_counts",
    metadata,
    sa.Column("month", sa.Date, primary_key=True),
    sa.Column("partner_id", sa.Text, primary_key=True),
    sa.Column("company_id", sa.Text, primary_key=True),
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("company_name", sa.Text, nullable=False),
    sa.Column("billable_users", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
)


# The counts a month's validation pass produced, staged chunk by chunk in the validation's own
# transaction (``pipeline.store.months.StagedCountsWriter``) until ``billable_counts`` of the
# same run promotes them into ``billable_counts`` (``promote_staged_counts``): the counts never
# wait in memory. At most one month's pass per month: a new validation replaces them.
staged_billable_counts = sa.Table(
    "staged_billable_counts",
    metadata,
    sa.Column("month", sa.Date, primary_key=True),
    sa.Column("partner_id", sa.Text, primary_key=True),
    sa.Column("company_id", sa.Text, primary_key=True),
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("company_name", sa.Text, nullable=False),
    sa.Column("billable_users", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("staged_at", sa.DateTime(timezone=True), nullable=False),
)


quarantined_rows = sa.Table(
    "quarantined_rows",
    metadata,
    sa.Column("month", sa.Date, primary_key=True),
    sa.Column("row_number", sa.Integer, primary_key=True),
    sa.Column("partner_id", sa.Text),
    sa.Column("company_id", sa.Text),
    sa.Column("company_name", sa.Text),
    sa.Column("sku", sa.Text),
    sa.Column("user_id", sa.Text),
    sa.Column("active_from", sa.Text),
    sa.Column("active_to", sa.Text),
    sa.Column("billable", sa.Text),
    sa.Column("reason_codes", sa.Text, nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
)


month_computations = sa.Table(
    "month_computations",
    metadata,
    sa.Column("month", sa.Date, primary_key=True),
    sa.Column("rows_in", sa.Integer, nullable=False),
    sa.Column("rows_quarantined", sa.Integer, nullable=False),
    sa.Column("rows_counted", sa.Integer, nullable=False),
    sa.Column("partners", sa.Integer, nullable=False),
    sa.Column("companies", sa.Integer, nullable=False),
    sa.Column("billable_users", sa.Integer, nullable=False),
    # sha256 over the month's counts: what late-data detection compares against the source
    sa.Column("counts_fingerprint", sa.Text, nullable=False),
    sa.Column("query_sha256", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    # the billing time zone the month was counted in (NULL: counted before 0006)
    sa.Column("billing_timezone", sa.Text, nullable=True),
)


month_validations = sa.Table(
    "month_validations",
    metadata,
    sa.Column("month", sa.Date, primary_key=True),
    sa.Column("rows_in", sa.Integer, nullable=False),
    sa.Column("rows_valid", sa.Integer, nullable=False),
    sa.Column("rows_quarantined", sa.Integer, nullable=False),
    sa.Column("reason_counts", sa.Text, nullable=False),  # JSON {reason_code: rows}
    sa.Column("known_skus", sa.Text, nullable=False),  # JSON list the rows were checked against
    sa.Column("query_sha256", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("validated_at", sa.DateTime(timezone=True), nullable=False),
    # count groups this validation's pass staged in staged_billable_counts (0 is a month with
    # no counted group); NULL: its counts were not staged, billable_counts counts afresh
    sa.Column("counts_staged", sa.Integer, nullable=True),
    # the staged counts' fingerprint and totals, summed up as they were staged in key order;
    # NULL: the promotion computes them from the counts it stored
    sa.Column("counts_fingerprint", sa.Text, nullable=True),
    sa.Column("counts_partners", sa.Integer, nullable=True),
    sa.Column("counts_companies", sa.Integer, nullable=True),
    sa.Column("counts_billable_users", sa.Integer, nullable=True),
    # the month's source watermark read in the validation's snapshot (``pipeline.source.watermark``)
    sa.Column("source_watermark", sa.Text, nullable=True),
)


month_loads = sa.Table(
    "month_loads",
    metadata,
    sa.Column("month", sa.Date, primary_key=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("partners", sa.Integer, nullable=False),
    sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
)


ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("partner_id", sa.Text, nullable=False),
    sa.Column("month", sa.Date, nullable=False),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("service_id", sa.Text, nullable=True),
    sa.Column("value", sa.Integer, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    # the billing time zone the month was counted in when this value was sent (NULL: before 0006)
    sa.Column("billing_timezone", sa.Text, nullable=True),
    sa.Index("ix_ledger_partner_pair", "partner_id", "account_id", "sku", "outcome"),
    sa.Index("ix_ledger_month", "month", "partner_id"),
)


partner_sync_state = sa.Table(
    "partner_sync_state",
    metadata,
    sa.Column("partner_id", sa.Text, primary_key=True),
    # what the pipeline last set or saw: pending | active | error | inactive
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    # the product's connected_at this partner was last onboarded for (detects reconnection)
    sa.Column("onboarded_connection_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("delivered_since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # The Gradient side the delivered state belongs to, as GET /organization last reported it,
    # and a fingerprint of the partner key it was delivered with (never the key). NULL: not
    # seen yet (a partner last pushed before 0006 is identified at its next push).
    sa.Column("organization_id", sa.Text, nullable=True),
    sa.Column("integration_id", sa.Text, nullable=True),
    sa.Column("key_fingerprint", sa.Text, nullable=True),
    # the integration status Gradient last reported (``status`` is what the pipeline set)
    sa.Column("gradient_status", sa.Text, nullable=True),
)


# What a run found changed on Gradient's side for a partner (another organization, an
# integration not active, accounts deleted) and so sent again: shown with the run's outcome.
gradient_side_changes = sa.Table(
    "gradient_side_changes",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("partner_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("change", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


# Count calls sent whose answer is not recorded yet: written before each batch goes out and
# removed with the answers' ledger entries. What is left after a crash (or a lost answer) is
# a value Gradient may hold: the next push treats it as held (a pair with no users now is
# zeroed) and sends it again.
unanswered_count_calls = sa.Table(
    "unanswered_count_calls",
    metadata,
    sa.Column("partner_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("month", sa.Date, nullable=False),
    sa.Column("value", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
)


gradient_services = sa.Table(
    "gradient_services",
    metadata,
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("service_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
)


account_sync_failures = sa.Table(
    "account_sync_failures",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("partner_id", sa.Text, primary_key=True),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


run_failures = sa.Table(
    "run_failures",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("job_name", sa.Text, nullable=False),
    sa.Column("partition_key", sa.Text, nullable=True),
    sa.Column("partners", sa.Text, nullable=False),  # comma-separated partner ids affected
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("alerts_raised", sa.Integer, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


# One holder per lock name ("partner:<id>", "services") on databases without advisory locks
# (pipeline.gradient.locks); a lease whose holder died is taken over once it expires.
push_leases = sa.Table(
    "push_leases",
    metadata,
    sa.Column("lock_name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)


# Service names Gradient holds under more than one id: never pushed to until resolved.
gradient_service_conflicts = sa.Table(
    "gradient_service_conflicts",
    metadata,
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("service_ids", sa.Text, nullable=False),  # comma-separated Gradient ids
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
)


# Companies/accounts refused on the way to Gradient (bad id or name), per run and partner.
gradient_refusals = sa.Table(
    "gradient_refusals",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("partner_id", sa.Text, primary_key=True),
    sa.Column("item", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


# The accounts Gradient holds per the pipeline's last successful account sync of each partner
# (what a preview diffs against without calling Gradient).
synced_accounts = sa.Table(
    "synced_accounts",
    metadata,
    sa.Column("partner_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("account_name", sa.Text, nullable=False),
    sa.Column("created_run_id", sa.Text, nullable=False),
    sa.Column("renamed_run_id", sa.Text, nullable=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
)


def ensure_state_schema(engine: sa.Engine) -> None:
    """Upgrade the state database to the newest migration (``pipeline.store.migrations``):
    an empty one is created, a pre-migrations one adopted; cheap when already current."""
    upgrade_to_head(engine, metadata)
