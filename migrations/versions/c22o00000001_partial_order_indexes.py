"""orders: the indexes on identifiers only some orders carry (contact, top-up account, buyer, device and payment
account keys, shop) hold only the orders that have them: a wallet order maintains 7 indexes instead of 13 on its
insert and its move to delivered

Revision ID: c22o00000001
Revises: c21p00000001
Create Date: 2026-12-25 00:00:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = 'c22o00000001'
down_revision = 'c21p00000001'
branch_labels = None
depends_on = None

INDEXES = {
    "ix_orders_contact_hash_delivered": ("contact_hash", "delivered_at"),
    "ix_orders_account_hash": ("account_hash",),
    "ix_orders_buyer_key_created": ("buyer_key", "created_at"),
    "ix_orders_device_key_created": ("device_key", "created_at"),
    "ix_orders_payment_account_key_created": ("payment_account_key", "created_at"),
    "ix_orders_shop_created": ("shop_id", "created_at"),
}


def _rebuild(partial: bool) -> None:
    """Each index replaced under its own name. On PostgreSQL the new one is built CONCURRENTLY beside the old one
    (orders keep being written meanwhile; a lookup always has an index), then the old one is dropped and the new
    one renamed."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name, columns in INDEXES.items():
        where = f" WHERE {columns[0]} IS NOT NULL" if partial else ""
        if not postgresql:
            op.execute(f"DROP INDEX {name}")
            op.execute(f"CREATE INDEX {name} ON orders ({', '.join(columns)}){where}")
            continue
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}_new")  # left by an interrupted earlier run
            op.execute(f"CREATE INDEX CONCURRENTLY {name}_new ON orders ({', '.join(columns)}){where}")
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # gone if an earlier run stopped here
            op.execute(f"ALTER INDEX {name}_new RENAME TO {name}")


def upgrade():
    _rebuild(partial=True)


def downgrade():
    _rebuild(partial=False)
