"""abuse limits: real-name attempts (per agent / per ID number per day, lockout) and order-number lookup attempts

No existing rows to migrate: both tables start empty (earlier submissions and lookups were not counted).

Revision ID: c14d00000001
Revises: c14b00000001
Create Date: 2026-12-04 23:12:45.878812

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c14d00000001'
down_revision = "c14b00000001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('lookup_attempt',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_no', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('lookup_attempt', schema=None) as batch_op:
        batch_op.create_index('ix_lookup_attempt_order_no_created_at', ['order_no', 'created_at'], unique=False)

    op.create_table('real_name_attempt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.Column('id_number_hash', sa.String(length=64), nullable=False),
    sa.Column('business_day', sa.Date(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agent.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('real_name_attempt', schema=None) as batch_op:
        batch_op.create_index('ix_real_name_attempt_agent_day', ['agent_id', 'business_day'], unique=False)
        batch_op.create_index('ix_real_name_attempt_id_day', ['id_number_hash', 'business_day'], unique=False)



def downgrade():
    with op.batch_alter_table('real_name_attempt', schema=None) as batch_op:
        batch_op.drop_index('ix_real_name_attempt_id_day')
        batch_op.drop_index('ix_real_name_attempt_agent_day')

    op.drop_table('real_name_attempt')
    with op.batch_alter_table('lookup_attempt', schema=None) as batch_op:
        batch_op.drop_index('ix_lookup_attempt_order_no_created_at')

    op.drop_table('lookup_attempt')
