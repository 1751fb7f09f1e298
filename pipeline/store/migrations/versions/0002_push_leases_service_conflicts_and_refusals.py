"""Push leases, duplicate-service conflicts and refused Gradient items.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 19:45:00.000000

``push_leases``: one push per partner (and one service sync) at a time on databases without
advisory locks. ``gradient_service_conflicts``: service names Gradient holds under two ids,
never pushed to. ``gradient_refusals``: companies refused on the way to Gradient (bad id or
name), per run and partner.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('push_leases',
    sa.Column('lock_name', sa.Text(), nullable=False),
    sa.Column('holder', sa.Text(), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('lock_name'),
    if_not_exists=True,
    )
    op.create_table('gradient_service_conflicts',
    sa.Column('sku', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('service_ids', sa.Text(), nullable=False),
    sa.Column('detected_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sku'),
    if_not_exists=True,
    )
    op.create_table('gradient_refusals',
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('partner_id', sa.Text(), nullable=False),
    sa.Column('item', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('run_id', 'partner_id', 'item'),
    if_not_exists=True,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('gradient_refusals')
    op.drop_table('gradient_service_conflicts')
    op.drop_table('push_leases')
