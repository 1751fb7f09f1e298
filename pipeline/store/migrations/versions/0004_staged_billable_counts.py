"""Staged billable counts: a validation pass's counts wait in the state DB, not in memory.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 02:00:00.000000

``staged_billable_counts``: the counts of a month's validation pass, written chunk by chunk in
the validation's transaction and promoted into ``billable_counts`` by the same run's
``billable_counts`` step. ``month_validations.counts_staged``: how many groups that pass
staged (NULL when it staged none, i.e. the counts must be counted afresh), so a month with no
counted group is told apart from a month whose counts were not staged.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('staged_billable_counts',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('partner_id', sa.Text(), nullable=False),
    sa.Column('company_id', sa.Text(), nullable=False),
    sa.Column('sku', sa.Text(), nullable=False),
    sa.Column('company_name', sa.Text(), nullable=False),
    sa.Column('billable_users', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('staged_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('month', 'partner_id', 'company_id', 'sku'),
    if_not_exists=True,
    )
    # SQLite has no ADD COLUMN IF NOT EXISTS: look first, so a re-run stays harmless
    columns = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('month_validations')}
    if 'counts_staged' not in columns:
        op.add_column('month_validations', sa.Column('counts_staged', sa.Integer(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('month_validations') as batch_op:
        batch_op.drop_column('counts_staged')
    op.drop_table('staged_billable_counts')
