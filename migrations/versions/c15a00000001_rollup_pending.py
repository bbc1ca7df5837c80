"""analytics rollups off the purchase transaction: rollup_pending (one row per delivery / refund, folded by a job)

Revision ID: c15a00000001
Revises: c14c00000001
Create Date: 2026-12-05 00:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c15a00000001'
down_revision = "c14c00000001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('rollup_pending',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('sign', sa.SmallInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollup_pending', schema=None) as batch_op:
        batch_op.create_index('ix_rollup_pending_order', ['order_id'], unique=False)


def downgrade():
    with op.batch_alter_table('rollup_pending', schema=None) as batch_op:
        batch_op.drop_index('ix_rollup_pending_order')
    op.drop_table('rollup_pending')
