"""shared risk feed (共享名单): sharing keys, publisher identity, partners, legal basis, what local list entries are
shared as, imported entries; partner API keys (api_key.scope, api_key.partner_id, agent_id nullable); the cache
triggers of the tables evaluate() reads through app.cache

Revision ID: c19f00000001
Revises: c18b00000001
Create Date: 2026-12-22 00:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c19f00000001'
down_revision = 'c18b00000001'
branch_labels = None
depends_on = None

# Tables evaluate() reads through app.cache (risk_feed): a change moves cache_version (function of c15b00000001).
CACHED_TABLES = {"risk_sharing_key": "", "risk_feed_entry": "", "risk_feed_partner": "active, publisher_id"}


def upgrade():
    op.create_table('risk_sharing_key',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('secret_hint', sa.String(length=8), nullable=False),
    sa.Column('current', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('retired_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['ab_user.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_id')
    )
    op.create_table('risk_feed_publisher',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('publisher_id', sa.String(length=64), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('private_key', sa.Text(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['ab_user.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('publisher_id')
    )
    op.create_table('risk_feed_partner',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('publisher_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('key_ids', sa.String(length=255), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('last_feed_at', sa.DateTime(), nullable=True),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['ab_user.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('publisher_id')
    )
    op.create_table('risk_legal_basis',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('basis', sa.String(length=32), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['ab_user.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version')
    )
    op.create_table('risk_list_share',
    sa.Column('entry_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('changed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['entry_id'], ['risk_list_entry.id'], ),
    sa.PrimaryKeyConstraint('entry_id')
    )
    with op.batch_alter_table('risk_list_share', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_risk_list_share_changed_at'), ['changed_at'], unique=False)
    op.create_table('risk_feed_entry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('partner_id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('value_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('evidence', sa.String(length=16), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('removed_at', sa.DateTime(), nullable=True),
    sa.Column('feed_at', sa.DateTime(), nullable=False),
    sa.Column('imported_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['partner_id'], ['risk_feed_partner.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('partner_id', 'key_id', 'kind', 'value_hash', name='uq_risk_feed_entry')
    )
    with op.batch_alter_table('risk_feed_entry', schema=None) as batch_op:
        batch_op.create_index('ix_risk_feed_entry_hash', ['value_hash'], unique=False)

    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=16), server_default='agent', nullable=False))
        batch_op.add_column(sa.Column('partner_id', sa.Integer(), nullable=True))
        batch_op.alter_column('agent_id', existing_type=sa.Integer(), nullable=True)
        batch_op.create_foreign_key('fk_api_key_partner_id_risk_feed_partner', 'risk_feed_partner',
                                    ['partner_id'], ['id'])
        batch_op.create_check_constraint('ck_api_key_owner',
                                         "(scope = 'agent' AND agent_id IS NOT NULL) OR "
                                         "(scope = 'risk_feed' AND partner_id IS NOT NULL)")

    if op.get_bind().dialect.name != "postgresql":
        return  # nothing is cached elsewhere (app/cache.py)
    for table, columns in CACHED_TABLES.items():
        update = f"UPDATE OF {columns}" if columns else "UPDATE"
        op.execute(f"CREATE CONSTRAINT TRIGGER kameng_cache_{table} AFTER INSERT OR {update} OR DELETE ON {table} "
                   "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION kameng_cache_bump()")
        op.execute(f"CREATE TRIGGER kameng_cache_{table}_truncate AFTER TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION kameng_cache_bump()")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for table in CACHED_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS kameng_cache_{table} ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS kameng_cache_{table}_truncate ON {table}")
    op.execute("DELETE FROM api_key WHERE scope <> 'agent'")
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_constraint('ck_api_key_owner', type_='check')
        batch_op.drop_constraint('fk_api_key_partner_id_risk_feed_partner', type_='foreignkey')
        batch_op.alter_column('agent_id', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column('partner_id')
        batch_op.drop_column('scope')
    with op.batch_alter_table('risk_feed_entry', schema=None) as batch_op:
        batch_op.drop_index('ix_risk_feed_entry_hash')
    op.drop_table('risk_feed_entry')
    with op.batch_alter_table('risk_list_share', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_risk_list_share_changed_at'))
    op.drop_table('risk_list_share')
    op.drop_table('risk_legal_basis')
    op.drop_table('risk_feed_partner')
    op.drop_table('risk_feed_publisher')
    op.drop_table('risk_sharing_key')
