"""daily limits as running totals: risk_day_usage (per identifier and business day, locked by the limit check) and
risk_day_release (append-only: what orders that stopped counting gave back); backfilled from the last days' orders

Revision ID: c20u00000001
Revises: c19m00000001
Create Date: 2026-12-23 00:00:00

"""
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = 'c20u00000001'
down_revision = 'c19m00000001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('risk_day_usage',
    sa.Column('dimension', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('dimension', 'key', 'day')
    )
    op.create_table('risk_day_release',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('dimension', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_id', 'dimension', name='uq_risk_day_release_order_dimension')
    )
    with op.batch_alter_table('risk_day_release', schema=None) as batch_op:
        batch_op.create_index('ix_risk_day_release_key', ['dimension', 'key', 'day'], unique=False)
    _backfill()


def _backfill():
    """The days a limit can still read, from the orders that count (what the sums over orders used to give). The
    orders are read by this revision's column names, not through the model, which later revisions may change."""
    from app.clock import business_day_start, utcnow
    from app.risk.usage import KEEP_DAYS, UNCOUNTED_STATUSES, totals_from_rows

    conn = op.get_bind()
    since = business_day_start(utcnow()) - timedelta(days=KEEP_DAYS)
    rows = conn.execute(sa.text(
        "SELECT agent_id, buyer_key, device_key, payment_account_key, created_at, paid_at, amount FROM orders "
        "WHERE created_at >= :since AND amount > 0 AND status NOT IN :uncounted")
        .bindparams(sa.bindparam("uncounted", expanding=True))
        .columns(created_at=sa.DateTime, paid_at=sa.DateTime),  # typed: SQLite hands back text otherwise
        {"since": since - timedelta(days=1), "uncounted": list(UNCOUNTED_STATUSES)})
    totals = totals_from_rows(rows, since)
    if totals:
        conn.execute(sa.text("INSERT INTO risk_day_usage (dimension, key, day, amount) VALUES (:d, :k, :day, :a)"),
                     [{"d": d, "k": k, "day": day, "a": a} for (d, k, day), a in totals.items()])


def downgrade():
    with op.batch_alter_table('risk_day_release', schema=None) as batch_op:
        batch_op.drop_index('ix_risk_day_release_key')
    op.drop_table('risk_day_release')
    op.drop_table('risk_day_usage')
