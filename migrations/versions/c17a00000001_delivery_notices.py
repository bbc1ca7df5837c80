"""delivery notices: the buyer's optional e-mail (card secrets) and SMS (order number and lookup link) per order;
易支付's clearing account

Revision ID: c17a00000001
Revises: c15b00000001
Create Date: 2026-12-12 00:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c17a00000001'
down_revision = "c15b00000001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('delivery_notice',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('recipient', sa.Text(), nullable=False),
    sa.Column('recipient_hash', sa.String(length=64), nullable=False),
    sa.Column('recipient_masked', sa.String(length=64), nullable=False),
    sa.Column('locale', sa.String(length=8), nullable=False),
    sa.Column('link_base', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('resends', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(length=255), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('claimed_at', sa.DateTime(), nullable=True),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_id', 'kind', name='uq_delivery_notice_order_kind')
    )
    with op.batch_alter_table('delivery_notice', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_notice_recipient_hash', ['recipient_hash'], unique=False)
        batch_op.create_index('ix_delivery_notice_status_next', ['status', 'next_attempt_at'], unique=False)

    # 易支付's clearing account, beside the other channels' in a database that has them.
    op.execute("INSERT INTO ledger_account (code, kind, cached, balance, created_at) "
               "SELECT 'platform:clearing:epay', 'clearing', false, 0, CURRENT_TIMESTAMP "
               "WHERE EXISTS (SELECT 1 FROM ledger_account WHERE code = 'platform:clearing:alipay') "
               "AND NOT EXISTS (SELECT 1 FROM ledger_account WHERE code = 'platform:clearing:epay')")


def downgrade():
    op.execute("DELETE FROM ledger_account WHERE code = 'platform:clearing:epay' AND NOT EXISTS "
               "(SELECT 1 FROM ledger_posting p WHERE p.account_id = ledger_account.id)")
    with op.batch_alter_table('delivery_notice', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_notice_status_next')
        batch_op.drop_index('ix_delivery_notice_recipient_hash')
    op.drop_table('delivery_notice')
