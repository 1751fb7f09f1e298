"""The Gradient side a partner's delivered state belongs to, unanswered count calls, and the
billing time zone of each month's counting and delivery.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 00:00:00.000000

``partner_sync_state.organization_id``, ``integration_id``, ``key_fingerprint``,
``gradient_status``: what ``GET /organization`` reported at the partner's last push and a
fingerprint of the key used (never the key). A push whose key or organization differs treats
the partner as newly connected. NULL: identified at the next push.

``unanswered_count_calls``: count calls sent whose answer is not recorded yet (the crash window).
``gradient_side_changes``: what a run found changed on Gradient's side, per partner.

``ledger_entries.billing_timezone``, ``month_computations.billing_timezone``: the zone the month
was counted in; a run of a delivered month under another zone refuses unless forced.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NEW_COLUMNS = (
    ('partner_sync_state', 'organization_id'),
    ('partner_sync_state', 'integration_id'),
    ('partner_sync_state', 'key_fingerprint'),
    ('partner_sync_state', 'gradient_status'),
    ('ledger_entries', 'billing_timezone'),
    ('month_computations', 'billing_timezone'),
)


def upgrade() -> None:
    """Upgrade schema."""
    inspector = sa.inspect(op.get_bind())
    # SQLite has no ADD COLUMN IF NOT EXISTS: look first, so a re-run stays harmless
    for table, column in NEW_COLUMNS:
        if column not in {c['name'] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column(column, sa.Text(), nullable=True))
    if not inspector.has_table('unanswered_count_calls'):
        op.create_table(
            'unanswered_count_calls',
            sa.Column('partner_id', sa.Text(), nullable=False),
            sa.Column('account_id', sa.Text(), nullable=False),
            sa.Column('sku', sa.Text(), nullable=False),
            sa.Column('month', sa.Date(), nullable=False),
            sa.Column('value', sa.Integer(), nullable=False),
            sa.Column('run_id', sa.Text(), nullable=False),
            sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint('partner_id', 'account_id', 'sku'),
        )
    if not inspector.has_table('gradient_side_changes'):
        op.create_table(
            'gradient_side_changes',
            sa.Column('run_id', sa.Text(), nullable=False),
            sa.Column('partner_id', sa.Text(), nullable=False),
            sa.Column('seq', sa.Integer(), nullable=False),
            sa.Column('change', sa.Text(), nullable=False),
            sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint('run_id', 'partner_id', 'seq'),
        )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('gradient_side_changes')
    op.drop_table('unanswered_count_calls')
    for table, column in reversed(NEW_COLUMNS):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column(column)
