"""workbench and delivery promise: delivery-time rollup (rollup_delivery_daily), bulk compensation batches and
their orders, compensation coupons bound to a buyer (coupon.owner), platform notices (announcement)

After upgrading, rebuild the rollups once (`flask kameng rollups rebuild --from ... --to ...`) so the delivery-time
histogram covers the orders paid before it.

Revision ID: c18b00000001
Revises: c17b00000001
Create Date: 2026-12-20 00:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c18b00000001'
down_revision = 'c17b00000001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('announcement',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=100), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('audience', sa.String(length=8), nullable=False),
    sa.Column('pinned', sa.Boolean(), nullable=False),
    sa.Column('starts_at', sa.DateTime(), nullable=False),
    sa.Column('ends_at', sa.DateTime(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('announcement', schema=None) as batch_op:
        batch_op.create_index('ix_announcement_active_starts', ['active', 'starts_at'], unique=False)

    op.create_table('rollup_delivery_daily',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('supplier_id', sa.Integer(), nullable=False),
    sa.Column('bucket', sa.SmallInteger(), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.Column('total_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollup_delivery_daily', schema=None) as batch_op:
        batch_op.create_index('ix_rollup_delivery_day', ['day'], unique=False)

    op.create_table('compensation_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=255), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('valid_days', sa.Integer(), nullable=False),
    sa.Column('criteria', sa.Text(), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.Column('buyers', sa.Integer(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['ab_user.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('compensation_order',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('coupon_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['compensation_batch.id'], ),
    sa.ForeignKeyConstraint(['coupon_id'], ['coupon.id'], ),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_id')
    )
    with op.batch_alter_table('compensation_order', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_compensation_order_batch_id'), ['batch_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_compensation_order_coupon_id'), ['coupon_id'], unique=False)

    with op.batch_alter_table('coupon', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=160), nullable=True))
        batch_op.create_index(batch_op.f('ix_coupon_owner'), ['owner'], unique=False)



def downgrade():
    with op.batch_alter_table('coupon', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_coupon_owner'))
        batch_op.drop_column('owner')

    with op.batch_alter_table('compensation_order', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_compensation_order_coupon_id'))
        batch_op.drop_index(batch_op.f('ix_compensation_order_batch_id'))

    op.drop_table('compensation_order')
    op.drop_table('compensation_batch')
    with op.batch_alter_table('rollup_delivery_daily', schema=None) as batch_op:
        batch_op.drop_index('ix_rollup_delivery_day')

    op.drop_table('rollup_delivery_daily')
    with op.batch_alter_table('announcement', schema=None) as batch_op:
        batch_op.drop_index('ix_announcement_active_starts')

    op.drop_table('announcement')
