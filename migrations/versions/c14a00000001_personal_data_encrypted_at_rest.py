"""personal data encrypted at rest: orders' contact and top-up account, agents' phones and disputes' contact as
Fernet tokens with blind indexes; coupon redeemers by blind index; existing masks redone to the quarter rule

Revision ID: c14a00000001
Revises: c14d00000001
Create Date: 2026-12-04 23:10:00

The data steps run inside the Flask app (Flask-Migrate), with app.crypto and the app's CARD_SECRET_KEY: the
same key the app reads the columns with. Rows go in batches of BATCH by primary key; a value that already
decrypts is left alone, so an interrupted upgrade can simply be run again.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c14a00000001'
down_revision = "c14d00000001"
branch_labels = None
depends_on = None

BATCH = 1000
# (table, encrypted column, its blind index or None)
ENCRYPTED = (("orders", "contact", "contact_hash"), ("orders", "account", "account_hash"),
             ("agent", "phone", "phone_hash"), ("dispute", "contact", None))


def _batches(conn, sql: str, **params):
    """Rows of `sql` (which selects id first, filters `id > :after` and orders by id) BATCH at a time."""
    after = 0
    while True:
        rows = conn.execute(sa.text(sql + f" LIMIT {BATCH}"), {**params, "after": after}).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _decrypts(value: str) -> bool:
    from app import crypto

    try:
        crypto.decrypt(value)
        return True
    except ValueError:
        return False


def upgrade():
    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phone_hash', sa.String(length=64), nullable=True))
        batch_op.alter_column('phone', existing_type=sa.VARCHAR(length=32), type_=sa.Text(), existing_nullable=True)
        batch_op.create_index(batch_op.f('ix_agent_phone_hash'), ['phone_hash'], unique=False)

    with op.batch_alter_table('dispute', schema=None) as batch_op:
        batch_op.alter_column('contact', existing_type=sa.VARCHAR(length=128), type_=sa.Text(),
                              existing_nullable=True)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('contact_hash', sa.String(length=64), nullable=True))
        batch_op.alter_column('account', existing_type=sa.VARCHAR(length=128), type_=sa.Text(),
                              existing_nullable=True)
        batch_op.alter_column('contact', existing_type=sa.VARCHAR(length=128), type_=sa.Text(),
                              existing_nullable=True)
        batch_op.drop_index(batch_op.f('ix_orders_contact_delivered'))
        batch_op.create_index('ix_orders_account_hash', ['account_hash'], unique=False)
        batch_op.create_index('ix_orders_contact_hash_delivered', ['contact_hash', 'delivered_at'], unique=False)

    _encrypt_existing()
    _redeemers_by_blind_index()
    _mask_again()


def _encrypt_existing():
    from app import crypto

    conn = op.get_bind()
    for table, column, hash_column in ENCRYPTED:
        sets = f"{column} = :value" + (f", {hash_column} = :hash" if hash_column else "")
        update = sa.text(f"UPDATE {table} SET {sets} WHERE id = :id")
        for rows in _batches(conn, f"SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL AND id > :after"
                                   " ORDER BY id"):
            changes = []
            for row_id, value in rows:
                if _decrypts(value):
                    plain = crypto.decrypt(value)
                    if hash_column:  # encrypted already (a rerun): only make sure the index is there
                        changes.append({"id": row_id, "value": value, "hash": crypto.pii_hash(plain)})
                    continue
                changes.append({"id": row_id, "value": crypto.encrypt(value), "hash": crypto.pii_hash(value)})
            if changes:
                conn.execute(update, changes)


def _redeemers_by_blind_index():
    """A storefront buyer's coupon uses were counted by 'contact:<normalised contact>': now by its blind index."""
    from app import crypto

    conn = op.get_bind()
    update = sa.text("UPDATE coupon_redemption SET redeemer = :redeemer WHERE id = :id")
    for rows in _batches(conn, "SELECT id, redeemer FROM coupon_redemption WHERE redeemer LIKE 'contact:%'"
                               " AND id > :after ORDER BY id"):
        changes = []
        for row_id, redeemer in rows:
            contact = redeemer[len("contact:"):]
            if len(contact) == 64 and all(c in "0123456789abcdef" for c in contact):
                continue  # a blind index already
            changes.append({"id": row_id, "redeemer": f"contact:{crypto.pii_hash(contact) or ''}"})
        if changes:
            conn.execute(update, changes)


def _mask_again():
    """Masks written before the one masking function showed up to 8 of 11 characters: redo them (app.crypto.mask)
    from the decrypted value where it is kept, else from the old mask itself (its ends are the value's ends, so
    masking it again shows at most a quarter of the value). A direct top-up's hold journal named the account in
    its memo: masked too. Old audit entries of an agent's phone keep it masked."""
    import json

    from app import crypto

    conn = op.get_bind()
    update = sa.text("UPDATE card_secret SET masked = :masked WHERE id = :id")
    for rows in _batches(conn, "SELECT id, secret_enc FROM card_secret WHERE id > :after ORDER BY id"):
        conn.execute(update, [{"id": i, "masked": crypto.mask(crypto.decrypt(enc))[:64]} for i, enc in rows])

    fields = ("name", "id_number", "bank_card", "phone")
    update = sa.text("UPDATE real_name SET " + ", ".join(f"{f}_masked = :{f}" for f in fields) + " WHERE id = :id")
    for rows in _batches(conn, "SELECT id, " + ", ".join(f"{f}_enc" for f in fields)
                               + " FROM real_name WHERE id > :after ORDER BY id"):
        conn.execute(update, [{"id": row[0], **{f: crypto.mask(crypto.decrypt(v))[:32] for f, v in
                                                  zip(fields, row[1:])}} for row in rows])

    update = sa.text("UPDATE withdrawal SET bank_card_masked = :masked WHERE id = :id")
    for rows in _batches(conn, "SELECT id, bank_card_masked FROM withdrawal WHERE id > :after ORDER BY id"):
        conn.execute(update, [{"id": i, "masked": crypto.mask(m)[:32]} for i, m in rows])

    update = sa.text("UPDATE ledger_journal SET memo = :memo WHERE id = :id")
    for rows in _batches(conn, "SELECT id, memo FROM ledger_journal WHERE kind = 'hold' AND memo LIKE '% 直充 %'"
                               " AND id > :after ORDER BY id"):
        changes = []
        for row_id, memo in rows:
            head, account = memo.rsplit(" 直充 ", 1)
            if "*" not in account:
                changes.append({"id": row_id, "memo": f"{head} 直充 {crypto.mask(account)}"})
        if changes:
            conn.execute(update, changes)

    update = sa.text("UPDATE audit_entry SET old_value = :old, new_value = :new WHERE id = :id")
    for rows in _batches(conn, "SELECT id, old_value, new_value FROM audit_entry WHERE target_type = 'agent'"
                               " AND (old_value LIKE '%\"phone\"%' OR new_value LIKE '%\"phone\"%')"
                               " AND id > :after ORDER BY id"):
        changes = []
        for row_id, *values in rows:
            masked = []
            for value in values:
                data = json.loads(value) if value else None
                if isinstance(data, dict) and data.get("phone") and "*" not in str(data["phone"]):
                    data["phone"] = crypto.mask(data["phone"])
                    value = json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)
                masked.append(value)
            changes.append({"id": row_id, "old": masked[0], "new": masked[1]})
        conn.execute(update, changes)


def downgrade():
    from app import crypto

    conn = op.get_bind()
    # Coupon uses by a storefront buyer back to 'contact:<normalised contact>', from the order's contact.
    update = sa.text("UPDATE coupon_redemption SET redeemer = :redeemer WHERE id = :id")
    for rows in _batches(conn, "SELECT r.id, o.contact FROM coupon_redemption r JOIN orders o ON o.id = r.order_id"
                               " WHERE r.redeemer LIKE 'contact:%' AND r.id > :after ORDER BY r.id"):
        conn.execute(update, [{"id": i, "redeemer": "contact:" + crypto.normalize_contact(
            crypto.decrypt(c) if c else "")} for i, c in rows])
    for table, column, _hash in ENCRYPTED:
        update = sa.text(f"UPDATE {table} SET {column} = :value WHERE id = :id")
        for rows in _batches(conn, f"SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL AND id > :after"
                                   " ORDER BY id"):
            conn.execute(update, [{"id": i, "value": crypto.decrypt(v) if _decrypts(v) else v} for i, v in rows])

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_contact_hash_delivered')
        batch_op.drop_index('ix_orders_account_hash')
        batch_op.alter_column('contact', existing_type=sa.Text(), type_=sa.VARCHAR(length=128),
                              existing_nullable=True)
        batch_op.alter_column('account', existing_type=sa.Text(), type_=sa.VARCHAR(length=128),
                              existing_nullable=True)
        batch_op.create_index(batch_op.f('ix_orders_contact_delivered'), ['contact', 'delivered_at'], unique=False)
        batch_op.drop_column('contact_hash')
        batch_op.drop_column('account_hash')

    with op.batch_alter_table('dispute', schema=None) as batch_op:
        batch_op.alter_column('contact', existing_type=sa.Text(), type_=sa.VARCHAR(length=128),
                              existing_nullable=True)

    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_phone_hash'))
        batch_op.alter_column('phone', existing_type=sa.Text(), type_=sa.VARCHAR(length=32), existing_nullable=True)
        batch_op.drop_column('phone_hash')
