"""tamper-evident records: the hash chain (chain_record) and its daily heads (chain_head)

Only the tables. The rows from before the chain (delivered orders, money-moving audit entries, risk decisions) are
appended by the first seal (app.chain.service.seal -> backfill): their content needs the application (keyed hashes
with CARD_SECRET_KEY, contacts read through the ORM), which a migration should not depend on.

Revision ID: c14c00000001
Revises: c14a00000001
Create Date: 2026-12-04 23:10:25.890952

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c14c00000001'
down_revision = "c14a00000001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('chain_head',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('records', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('day')
    )
    op.create_table('chain_record',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('source_key', sa.String(length=64), nullable=False),
    sa.Column('content_digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=True),
    sa.Column('hash', sa.String(length=64), nullable=True),
    sa.Column('sealed_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("kind IN ('delivery', 'audit', 'risk_decision')", name='ck_chain_record_kind'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'source_key', name='uq_chain_record_source')
    )
    with op.batch_alter_table('chain_record', schema=None) as batch_op:
        batch_op.create_index('ix_chain_record_unsealed', ['id'], unique=False, postgresql_where=sa.text('seq IS NULL'),
                              sqlite_where=sa.text('seq IS NULL'))
        # Unique once sealed, and indexed only from then: the delivering insert touches no index for them.
        batch_op.create_index('uq_chain_record_seq', ['seq'], unique=True, postgresql_where=sa.text('seq IS NOT NULL'),
                              sqlite_where=sa.text('seq IS NOT NULL'))
        batch_op.create_index('uq_chain_record_hash', ['hash'], unique=True,
                              postgresql_where=sa.text('seq IS NOT NULL'), sqlite_where=sa.text('seq IS NOT NULL'))


def downgrade():
    with op.batch_alter_table('chain_record', schema=None) as batch_op:
        batch_op.drop_index('uq_chain_record_hash', postgresql_where=sa.text('seq IS NOT NULL'),
                            sqlite_where=sa.text('seq IS NOT NULL'))
        batch_op.drop_index('uq_chain_record_seq', postgresql_where=sa.text('seq IS NOT NULL'),
                            sqlite_where=sa.text('seq IS NOT NULL'))
        batch_op.drop_index('ix_chain_record_unsealed', postgresql_where=sa.text('seq IS NULL'),
                            sqlite_where=sa.text('seq IS NULL'))

    op.drop_table('chain_record')
    op.drop_table('chain_head')
