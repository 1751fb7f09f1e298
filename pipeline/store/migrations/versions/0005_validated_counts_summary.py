"""The staged counts' fingerprint and totals, recorded with the validation that staged them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 00:00:00.000000

``month_validations.counts_fingerprint``, ``counts_partners``, ``counts_companies``,
``counts_billable_users``: summed up by the validation pass as it staged its counts in key
order, so that the promotion need not read the month back to compute them. NULL (every month
validated before, and a pass whose counts did not come in key order): the promotion computes
them from the counts it stored, as before.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = (
    ('counts_fingerprint', sa.Text()),
    ('counts_partners', sa.Integer()),
    ('counts_companies', sa.Integer()),
    ('counts_billable_users', sa.Integer()),
)


def upgrade() -> None:
    """Upgrade schema."""
    # SQLite has no ADD COLUMN IF NOT EXISTS: look first, so a re-run stays harmless
    present = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('month_validations')}
    for name, type_ in COLUMNS:
        if name not in present:
            op.add_column('month_validations', sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('month_validations') as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
