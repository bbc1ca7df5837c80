"""payments: refunds through the channels (state machine), channel orders, payment alerts; coupon uses per device

Revision ID: b5c1a2d3e4f6
Revises: 98555ccbbd2d
Create Date: 2026-12-04 20:40:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'b5c1a2d3e4f6'
down_revision = '98555ccbbd2d'
branch_labels = None
depends_on = None

# The first migration created refund.order_id UNIQUE without a name (PostgreSQL: refund_order_id_key).
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade():
    op.create_table('channel_order',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('out_trade_no', sa.String(length=40), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=True),
    sa.Column('topup_id', sa.Integer(), nullable=True),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('pay_url', sa.Text(), nullable=False),
    sa.Column('code_url', sa.String(length=255), nullable=True),
    sa.Column('form', sa.Text(), nullable=True),
    sa.Column('meta', sa.Text(), nullable=True),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('queries', sa.Integer(), nullable=False),
    sa.Column('last_queried_at', sa.DateTime(), nullable=True),
    sa.Column('closed_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.ForeignKeyConstraint(['topup_id'], ['wallet_topup.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('channel', 'out_trade_no', name='uq_channel_order_channel_no')
    )
    with op.batch_alter_table('channel_order', schema=None) as batch_op:
        batch_op.create_index('ix_channel_order_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_channel_order_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_channel_order_topup_id'), ['topup_id'], unique=False)

    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_constraint('refund_order_id_key', 'refund', type_='unique')
    with op.batch_alter_table('refund', schema=None, naming_convention=NAMING) as batch_op:
        if bind.dialect.name != "postgresql":
            batch_op.drop_constraint('uq_refund_order_id', type_='unique')
        batch_op.alter_column('order_id', existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column('payment_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('out_refund_no', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('channel_refund_no', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('meta', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('finished_at', sa.DateTime(), nullable=True))
        batch_op.create_foreign_key('fk_refund_payment_id', 'payment', ['payment_id'], ['id'])
        batch_op.create_unique_constraint('uq_refund_payment_id', ['payment_id'])
        batch_op.create_unique_constraint('uq_refund_out_refund_no', ['out_refund_no'])
        batch_op.create_index(batch_op.f('ix_refund_order_id'), ['order_id'], unique=False)
        batch_op.create_index('ix_refund_status_due', ['status', 'next_attempt_at'], unique=False)

    op.create_table('payment_alert',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=True),
    sa.Column('refund_id', sa.Integer(), nullable=True),
    sa.Column('order_no', sa.String(length=40), nullable=True),
    sa.Column('message', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('resolved_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['refund_id'], ['refund.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('payment_alert', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_alert_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_payment_alert_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_payment_alert_refund_id'), ['refund_id'], unique=False)


    # UnionPay's clearing account, beside the other channels' in a database that has them.
    op.execute("INSERT INTO ledger_account (code, kind, cached, balance, created_at) "
               "SELECT 'platform:clearing:unionpay', 'clearing', false, 0, CURRENT_TIMESTAMP "
               "WHERE EXISTS (SELECT 1 FROM ledger_account WHERE code = 'platform:clearing:alipay') "
               "AND NOT EXISTS (SELECT 1 FROM ledger_account WHERE code = 'platform:clearing:unionpay')")

    with op.batch_alter_table('coupon_redemption', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device', sa.String(length=128), nullable=True))
        batch_op.create_index('ix_coupon_redemption_coupon_device', ['coupon_id', 'device'], unique=False)


def downgrade():
    with op.batch_alter_table('coupon_redemption', schema=None) as batch_op:
        batch_op.drop_index('ix_coupon_redemption_coupon_device')
        batch_op.drop_column('device')
    with op.batch_alter_table('payment_alert', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_alert_refund_id'))
        batch_op.drop_index(batch_op.f('ix_payment_alert_kind'))
        batch_op.drop_index(batch_op.f('ix_payment_alert_created_at'))
    op.drop_table('payment_alert')
    with op.batch_alter_table('refund', schema=None) as batch_op:
        batch_op.drop_index('ix_refund_status_due')
        batch_op.drop_index(batch_op.f('ix_refund_order_id'))
        batch_op.drop_constraint('uq_refund_out_refund_no', type_='unique')
        batch_op.drop_constraint('uq_refund_payment_id', type_='unique')
        batch_op.drop_constraint('fk_refund_payment_id', type_='foreignkey')
        for column in ('finished_at', 'updated_at', 'meta', 'last_error', 'next_attempt_at', 'attempts',
                       'channel_refund_no', 'out_refund_no', 'payment_id'):
            batch_op.drop_column(column)
        batch_op.alter_column('order_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_unique_constraint('uq_refund_order_id', ['order_id'])
    with op.batch_alter_table('channel_order', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_channel_order_topup_id'))
        batch_op.drop_index(batch_op.f('ix_channel_order_order_id'))
        batch_op.drop_index('ix_channel_order_status_created')
    op.drop_table('channel_order')
