"""Synced accounts: what Gradient holds per the pipeline's last account sync of each partner.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 20:00:00.000000

``synced_accounts``: per partner and account, the name last synced, the run that created it
and the run that last renamed it; a preview diffs the partner's companies against it without
calling Gradient.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('synced_accounts',
    sa.Column('partner_id', sa.Text(), nullable=False),
    sa.Column('account_id', sa.Text(), nullable=False),
    sa.Column('account_name', sa.Text(), nullable=False),
    sa.Column('created_run_id', sa.Text(), nullable=False),
    sa.Column('renamed_run_id', sa.Text(), nullable=True),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('synced_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('partner_id', 'account_id'),
    if_not_exists=True,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('synced_accounts')
