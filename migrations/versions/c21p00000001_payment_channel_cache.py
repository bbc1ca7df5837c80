"""payment channels' settings served from each process's memory: the cache trigger on payment_channel (as migration
c15b00000001 does for the other cached tables), so a channel switched off or given new keys is seen by every process
at its next request

Revision ID: c21p00000001
Revises: c20u00000001
Create Date: 2026-12-24 00:00:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = 'c21p00000001'
down_revision = 'c20u00000001'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE CONSTRAINT TRIGGER kameng_cache_payment_channel AFTER INSERT OR UPDATE OR DELETE "
                   "ON payment_channel DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION kameng_cache_bump()")
        op.execute("CREATE TRIGGER kameng_cache_payment_channel_truncate AFTER TRUNCATE ON payment_channel "
                   "FOR EACH STATEMENT EXECUTE FUNCTION kameng_cache_bump()")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS kameng_cache_payment_channel ON payment_channel")
        op.execute("DROP TRIGGER IF EXISTS kameng_cache_payment_channel_truncate ON payment_channel")
