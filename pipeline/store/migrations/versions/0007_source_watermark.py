"""The source watermark recorded with a month's validation.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 00:00:00.000000

``month_validations.source_watermark``: the month's source watermark (``SOURCE_WATERMARK_SQL``)
read in the validation's snapshot, which the missed/late months sensor compares with the
current one instead of aggregating the month in its tick. NULL (months validated before, or no
watermark query): late data of that month is detected after its next run.

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    present = {c['name'] for c in sa.inspect(op.get_bind()).get_columns('month_validations')}
    if 'source_watermark' not in present:
        op.add_column('month_validations', sa.Column('source_watermark', sa.Text(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('month_validations') as batch_op:
        batch_op.drop_column('source_watermark')
