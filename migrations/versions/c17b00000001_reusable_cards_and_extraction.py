"""reusable cards (循环卡密: product.reusable / max_uses, card_secret.max_uses / uses, card_secret_use) and bulk
extraction's per-order download counter (order_secret_download)

Revision ID: c17b00000001
Revises: c18a00000001
Create Date: 2026-12-06 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c17b00000001'
down_revision = 'c18a00000001'
branch_labels = None
depends_on = None

PRODUCT_REUSE = ("(reusable AND kind = 'card' AND max_uses >= 1 AND max_uses <= 100000) "
                 "OR (NOT reusable AND max_uses IS NULL)")
SECRET_USES = ("(max_uses IS NULL AND uses = 0) OR (max_uses >= 1 AND uses >= 0 AND uses <= max_uses "
               "AND order_id IS NULL AND (status = 'void' OR (status = 'available' AND uses < max_uses) "
               "OR (status = 'sold' AND uses = max_uses)))")


def upgrade():
    with op.batch_alter_table('product', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reusable', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('max_uses', sa.Integer(), nullable=True))
        batch_op.create_check_constraint('ck_product_reuse', PRODUCT_REUSE)

    with op.batch_alter_table('card_secret', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_uses', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('uses', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_check_constraint('ck_card_secret_uses', SECRET_USES)

    op.create_table('card_secret_use',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('secret_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('sold_at', sa.DateTime(), nullable=False),
    sa.Column('revealed_at', sa.DateTime(), nullable=True),
    sa.Column('returned_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint('returned_at IS NULL OR revealed_at IS NULL', name='ck_card_secret_use_return'),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.ForeignKeyConstraint(['secret_id'], ['card_secret.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('secret_id', 'order_id', name='uq_card_secret_use_secret_order')
    )
    with op.batch_alter_table('card_secret_use', schema=None) as batch_op:
        batch_op.create_index('ix_card_secret_use_order', ['order_id'], unique=False)

    op.create_table('order_secret_download',
    sa.Column('order_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('downloads', sa.Integer(), nullable=False),
    sa.Column('last_downloaded_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('order_id')
    )


def downgrade():
    op.drop_table('order_secret_download')
    with op.batch_alter_table('card_secret_use', schema=None) as batch_op:
        batch_op.drop_index('ix_card_secret_use_order')
    op.drop_table('card_secret_use')

    with op.batch_alter_table('card_secret', schema=None) as batch_op:
        batch_op.drop_constraint('ck_card_secret_uses', type_='check')
        batch_op.drop_column('uses')
        batch_op.drop_column('max_uses')

    with op.batch_alter_table('product', schema=None) as batch_op:
        batch_op.drop_constraint('ck_product_reuse', type_='check')
        batch_op.drop_column('max_uses')
        batch_op.drop_column('reusable')
