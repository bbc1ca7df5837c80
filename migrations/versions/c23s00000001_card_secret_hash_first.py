"""card secrets: the unique constraint on (product_id, secret_hash) is on (secret_hash, product_id), so that the
(product_id, status, id) index is the only one that reads a product's secrets in order: with the product first, a
claim of free secrets on a table without statistics was planned as a scan of that constraint's index over all the
product's secrets and a sort (5 ms for one pick of 4,966 rows in the bench database)

Revision ID: c23s00000001
Revises: c22o00000001
Create Date: 2026-12-26 00:00:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = 'c23s00000001'
down_revision = 'c22o00000001'
branch_labels = None
depends_on = None

NAME = "uq_card_secret_product_hash"


def _rebuild(columns: tuple[str, str]) -> None:
    """The constraint replaced under its own name. On PostgreSQL its new index is built CONCURRENTLY beside the old
    one (imports and sales go on meanwhile; uniqueness is enforced throughout), then the constraint is swapped onto
    it in one short transaction. SQLite rebuilds the table (batch mode)."""
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table("card_secret", recreate="always") as batch:
            batch.drop_constraint(NAME, type_="unique")
            batch.create_unique_constraint(NAME, list(columns))
        return
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}_new")  # left by an interrupted earlier run
        op.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {NAME}_new ON card_secret ({', '.join(columns)})")
    op.execute(f"ALTER TABLE card_secret DROP CONSTRAINT {NAME}, "
               f"ADD CONSTRAINT {NAME} UNIQUE USING INDEX {NAME}_new")


def upgrade():
    _rebuild(("secret_hash", "product_id"))


def downgrade():
    _rebuild(("product_id", "secret_hash"))
