"""cache triggers: payment channels' settings served from each process's memory (the trigger on payment_channel, as
migration c15b00000001 does for the other cached tables), and a purchase spending top-up money no longer empties
every process's cache (the agent trigger skips an update that lowers topup_unspent)

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

_BUMP = "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE CONSTRAINT TRIGGER kameng_cache_payment_channel AFTER INSERT OR UPDATE OR DELETE "
               f"ON payment_channel {_BUMP} EXECUTE FUNCTION kameng_cache_bump()")
    op.execute("CREATE TRIGGER kameng_cache_payment_channel_truncate AFTER TRUNCATE ON payment_channel "
               "FOR EACH STATEMENT EXECUTE FUNCTION kameng_cache_bump()")
    # A wallet purchase of an agent holding unspent top-up money lowers agent.topup_unspent (the only update that
    # lowers it, and it changes nothing else: app.orders.service.spend_topup). Cached agent facts may then hold
    # a higher figure than the row: the purchase's guarded UPDATE computes from the row, so the amount stays exact,
    # and withdrawals read the row. Every other change to an agent moves the version as before.
    op.execute("DROP TRIGGER kameng_cache_agent ON agent")
    op.execute(f"CREATE CONSTRAINT TRIGGER kameng_cache_agent AFTER INSERT OR DELETE ON agent {_BUMP} "
               "EXECUTE FUNCTION kameng_cache_bump()")
    op.execute(f"CREATE CONSTRAINT TRIGGER kameng_cache_agent_update AFTER UPDATE ON agent {_BUMP} "
               "WHEN (NEW.topup_unspent >= OLD.topup_unspent) EXECUTE FUNCTION kameng_cache_bump()")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS kameng_cache_payment_channel ON payment_channel")
    op.execute("DROP TRIGGER IF EXISTS kameng_cache_payment_channel_truncate ON payment_channel")
    op.execute("DROP TRIGGER IF EXISTS kameng_cache_agent_update ON agent")
    op.execute("DROP TRIGGER kameng_cache_agent ON agent")
    op.execute(f"CREATE CONSTRAINT TRIGGER kameng_cache_agent AFTER INSERT OR UPDATE OR DELETE ON agent {_BUMP} "
               "EXECUTE FUNCTION kameng_cache_bump()")
