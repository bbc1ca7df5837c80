"""cache_version: the number every change to a cached table moves (deferred triggers, PostgreSQL), so each
process's in-memory catalogue, tier, price, agent, API key and risk list facts are dropped the moment they change

Revision ID: c15b00000001
Revises: c15a00000001
Create Date: 2026-12-05 21:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c15b00000001'
down_revision = "c15a00000001"
branch_labels = None
depends_on = None

# table -> the columns whose change matters ("" = any). Columns written by hot or periodic work that no cached fact
# reads are left out (FAB's login counters, suppliers' reported balances, keys' last use), so that work does not
# empty every process's cache.
CACHED_TABLES = {
    "product": "",
    "supplier": "service_fee_bp, active, name",
    "category": "",
    "tier": "",
    "tier_price": "",
    "price_rule": "",
    "agent": "",
    "ab_user": "username, active",
    "api_key": "agent_id, app_key, secret_enc, ip_allowlist, active",
    "risk_list_entry": "",
    "risk_rule": "",
    "ledger_account": "code, cached",  # which id a code names (balances move on every order: left out)
}

# An upsert, so a wiped cache_version (tests clean tables) comes back at the next change; the sequence belongs to no
# column, so nothing resets it and a number is never reused. The triggers are deferred constraint triggers: the bump
# runs at commit, once per transaction (the transaction-local setting), so the version row is locked only for the
# moment of a commit and never while the transaction still waits for other locks (no deadlock through it, no
# serialising of writers). TRUNCATE (statement-level only) bumps at once.
BUMP = """
CREATE OR REPLACE FUNCTION kameng_cache_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('kameng.cache_bumped', true) IS DISTINCT FROM 'on' THEN
        PERFORM set_config('kameng.cache_bumped', 'on', true);
        INSERT INTO cache_version (id, version) VALUES (1, nextval('cache_version_seq'))
        ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version;
    END IF;
    RETURN NULL;
END $$
"""


def upgrade():
    op.create_table('cache_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    if op.get_bind().dialect.name != "postgresql":
        return  # nothing is cached elsewhere (app/cache.py)
    op.execute("CREATE SEQUENCE cache_version_seq")
    op.execute("INSERT INTO cache_version (id, version) VALUES (1, nextval('cache_version_seq'))")
    op.execute(BUMP)
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
        op.execute("DROP FUNCTION IF EXISTS kameng_cache_bump()")
        op.execute("DROP SEQUENCE IF EXISTS cache_version_seq")
    op.drop_table('cache_version')
