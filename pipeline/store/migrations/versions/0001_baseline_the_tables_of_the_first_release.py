"""Baseline: the tables of the first release, as ``metadata.create_all`` made them.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 19:33:18.347528

Every table and index is created only if missing: a database from before migrations is
stamped here when it has all of them, and a partial one gets the rest.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('account_sync_failures',
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('partner_id', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('run_id', 'partner_id'),
    if_not_exists=True,
    )
    op.create_table('billable_counts',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('partner_id', sa.Text(), nullable=False),
    sa.Column('company_id', sa.Text(), nullable=False),
    sa.Column('sku', sa.Text(), nullable=False),
    sa.Column('company_name', sa.Text(), nullable=False),
    sa.Column('billable_users', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('month', 'partner_id', 'company_id', 'sku'),
    if_not_exists=True,
    )
    op.create_table('gradient_services',
    sa.Column('sku', sa.Text(), nullable=False),
    sa.Column('service_id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('synced_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sku'),
    if_not_exists=True,
    )
    op.create_table('ledger_entries',
    sa.Column('entry_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('partner_id', sa.Text(), nullable=False),
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('account_id', sa.Text(), nullable=False),
    sa.Column('sku', sa.Text(), nullable=False),
    sa.Column('service_id', sa.Text(), nullable=True),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('entry_id'),
    if_not_exists=True,
    )
    op.create_index('ix_ledger_month', 'ledger_entries', ['month', 'partner_id'], unique=False, if_not_exists=True)
    op.create_index(
        'ix_ledger_partner_pair', 'ledger_entries', ['partner_id', 'account_id', 'sku', 'outcome'],
        unique=False, if_not_exists=True,
    )
    op.create_table('month_computations',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('rows_in', sa.Integer(), nullable=False),
    sa.Column('rows_quarantined', sa.Integer(), nullable=False),
    sa.Column('rows_counted', sa.Integer(), nullable=False),
    sa.Column('partners', sa.Integer(), nullable=False),
    sa.Column('companies', sa.Integer(), nullable=False),
    sa.Column('billable_users', sa.Integer(), nullable=False),
    sa.Column('counts_fingerprint', sa.Text(), nullable=False),
    sa.Column('query_sha256', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('month'),
    if_not_exists=True,
    )
    op.create_table('month_loads',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('partners', sa.Integer(), nullable=False),
    sa.Column('loaded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('month'),
    if_not_exists=True,
    )
    op.create_table('month_validations',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('rows_in', sa.Integer(), nullable=False),
    sa.Column('rows_valid', sa.Integer(), nullable=False),
    sa.Column('rows_quarantined', sa.Integer(), nullable=False),
    sa.Column('reason_counts', sa.Text(), nullable=False),
    sa.Column('known_skus', sa.Text(), nullable=False),
    sa.Column('query_sha256', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('validated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('month'),
    if_not_exists=True,
    )
    op.create_table('partner_sync_state',
    sa.Column('partner_id', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('onboarded_connection_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('partner_id'),
    if_not_exists=True,
    )
    op.create_table('quarantined_rows',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('row_number', sa.Integer(), nullable=False),
    sa.Column('partner_id', sa.Text(), nullable=True),
    sa.Column('company_id', sa.Text(), nullable=True),
    sa.Column('company_name', sa.Text(), nullable=True),
    sa.Column('sku', sa.Text(), nullable=True),
    sa.Column('user_id', sa.Text(), nullable=True),
    sa.Column('active_from', sa.Text(), nullable=True),
    sa.Column('active_to', sa.Text(), nullable=True),
    sa.Column('billable', sa.Text(), nullable=True),
    sa.Column('reason_codes', sa.Text(), nullable=False),
    sa.Column('reasons', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('quarantined_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('month', 'row_number'),
    if_not_exists=True,
    )
    op.create_table('run_failures',
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('job_name', sa.Text(), nullable=False),
    sa.Column('partition_key', sa.Text(), nullable=True),
    sa.Column('partners', sa.Text(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('alerts_raised', sa.Integer(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('run_id'),
    if_not_exists=True,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('run_failures')
    op.drop_table('quarantined_rows')
    op.drop_table('partner_sync_state')
    op.drop_table('month_validations')
    op.drop_table('month_loads')
    op.drop_table('month_computations')
    op.drop_index('ix_ledger_partner_pair', table_name='ledger_entries')
    op.drop_index('ix_ledger_month', table_name='ledger_entries')
    op.drop_table('ledger_entries')
    op.drop_table('gradient_services')
    op.drop_table('billable_counts')
    op.drop_table('account_sync_failures')
