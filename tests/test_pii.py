"""Personal data at rest (issue 14): contacts, top-up accounts and agents' phones are Fernet tokens in the database
with a blind index to find them by; a real pg_dump holds none of them (nor a card secret) in plaintext; support
finds an order by a phone in any spelling through the order list page; uplines see downline phones masked; one
masking function shows at most a quarter of a value; the migration encrypts rows written before it."""
from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import load_only

from app import crypto
from app.agents import service as agents
from app.agents.models import Agent
from app.audit.models import AuditEntry
from app.clock import utcnow
from app.crypto import mask, pii_hash
from app.orders.models import Order
from app.payments import disputes
from app.payments.models import CouponRedemption, Dispute
from tests import supplier_sim_helpers
from tests.conftest import PG_URL, _recreate_pg_database, make_app
from tests.recharge_helpers import order as order_of
from tests.recharge_helpers import place_api, world
from tests.supplier_sim_helpers import sim_supplier
from tests.test_coupons import PASSWORD, create_order, make_coupon, notify, setup_sandbox
from tests.test_scope import row_pks

supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture

BUYER_PHONE = "13912345678"  # a storefront buyer's contact
BUYER_PHONE_OTHER_SPELLING = "+86 139-1234-5678"
TOPUP_ACCOUNT = "13687654321"  # a direct top-up's target
AGENT_PHONE = "13722223333"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


# --- the one masking function ----------------------------------------------------------------------------------

def test_mask_shows_at_most_a_quarter_of_any_value():
    for n in range(0, 300):
        value = "".join(chr(ord("a") + i % 26) if i % 3 else str(i % 10) for i in range(n))
        masked = mask(value)
        shown = len(masked) - masked.count("*")
        assert shown <= n // 4, (n, masked)
        if n <= 3:
            assert masked == "*" * n
        else:
            assert masked != value and shown == min(n // 4, crypto.MASK_MAX_SHOWN)
            head = (shown + 1) // 2
            assert masked.startswith(value[:head]) and masked.endswith(value[n - shown // 2:])
        assert len(masked) <= crypto.MASK_MAX_SHOWN + crypto.MASK_MAX_STARS  # fits the 32/64-character columns
    assert mask("13800138000") == "1*********0"
    assert mask("张三丰") == "***" and mask("王小明同学") == "王****"
    assert mask(None) == ""


def test_every_masker_is_the_one_function():
    from app.network import realname
    from app.risk import identity

    assert identity.mask is crypto.mask
    assert not any(hasattr(realname, n) for n in ("mask_name", "mask_id", "mask_card", "mask_phone"))


def test_an_encrypted_column_refuses_plaintext_comparison(app, db):
    """Fernet tokens differ on every write: an equality filter would silently find nothing, so it raises."""
    with pytest.raises(TypeError, match="blind index"):
        select(Order).where(Order.contact == BUYER_PHONE)
    with pytest.raises(TypeError):
        select(Agent).where(Agent.phone.like("139%"))
    assert select(Order).where(Order.contact.is_(None)) is not None


# --- the world: every kind of personal value written through the real entry points ------------------------------

def _storefront_card_order(db, f, client, contact: str, coupon: str | None = None) -> tuple[Order, list[str]]:
    """A storefront card order paid through the sandbox and delivered; returns it and the product's secrets."""
    setup_sandbox()
    p = f.product(face_price=10000, cost=8000)
    secrets = f.stock(p, 2)
    body = create_order(client, p.id, coupon=coupon, contact=contact).get_json()
    assert notify(client, body["order_no"], body["amount"]).data == b"success"
    order = db.session.scalar(select(Order).where(Order.order_no == body["order_no"]))
    assert order.status == "delivered"
    return order, secrets


@pytest.fixture
def personal_world(app, db, f, client, supplier_sim):
    make_coupon(db, "PII5", value=500)
    card_order, secrets = _storefront_card_order(db, f, client, BUYER_PHONE, coupon="PII5")
    dispute = disputes.open_as_buyer(card_order.order_no, PASSWORD, "没收到卡密")
    db.session.commit()
    w = world(f)
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    direct_no = place_api(client, w, account=TOPUP_ACCOUNT)["order_no"]  # no Redis: recharged right away
    phoned = agents.create_agent(f.unique("有手机"), f.tier().id, w.buyer.id, phone=AGENT_PHONE)
    db.session.commit()
    return {"card_order": card_order, "secrets": secrets, "dispute": dispute, "direct_no": direct_no,
            "w": w, "phoned": phoned}


def _pg_dump() -> str:
    binary = "/usr/lib/postgresql/15/bin/pg_dump"
    binary = binary if os.path.exists(binary) else shutil.which("pg_dump")
    assert binary, "pg_dump not found"
    done = subprocess.run([binary, "--data-only", "--no-owner", PG_URL], capture_output=True, text=True, check=True,
                          timeout=120)
    return done.stdout


def test_a_database_dump_holds_no_personal_value_nor_card_secret(app, db, f, client, personal_world):
    pw = personal_world
    db.session.expire_all()
    # Python reads the plaintext ...
    card_order = db.session.get(Order, pw["card_order"].id)
    direct = order_of(pw["direct_no"])
    assert card_order.contact == BUYER_PHONE and direct.account == TOPUP_ACCOUNT and direct.status == "delivered"
    assert db.session.get(Agent, pw["phoned"].id).phone == AGENT_PHONE
    assert db.session.get(Dispute, pw["dispute"].id).contact == BUYER_PHONE
    # ... with the blind indexes kept in sync on every write (the phone spelled E.164 hashes alike)
    assert card_order.contact_hash == pii_hash(BUYER_PHONE_OTHER_SPELLING) == pii_hash("+8613912345678")
    assert direct.account_hash == pii_hash(TOPUP_ACCOUNT)
    assert db.session.get(Agent, pw["phoned"].id).phone_hash == pii_hash(AGENT_PHONE)
    redemption = db.session.scalar(select(CouponRedemption).where(CouponRedemption.order_id == card_order.id))
    assert redemption.redeemer == "contact:" + pii_hash(BUYER_PHONE)
    # An admin changes the agent's phone on the agent screen: the audit entry must not carry it either.
    admin = app.test_client()
    f.user("pii_admin", role="Admin")
    f.login(admin, "pii_admin")
    agent = db.session.get(Agent, pw["phoned"].id)
    r = admin.post(f"/agents/edit/{agent.id}", data={"name": agent.name, "tier": agent.tier_id,
                                                      "parent": agent.parent_id, "phone": "13755556666",
                                                      "active": "y"})
    assert r.status_code == 302
    db.session.expire_all()
    assert db.session.get(Agent, agent.id).phone == "13755556666"
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "agent.update"))
    assert entry is not None and "phone_hash" in entry.new_value

    dump = _pg_dump()
    assert "COPY public.orders" in dump and card_order.order_no in dump  # the dump is real and has the rows
    sold = [s for s in pw["secrets"] if s in {crypto.decrypt(t) for t in db.session.scalars(text(
        "SELECT secret_enc FROM card_secret WHERE order_id = :o"), {"o": card_order.id})}]
    assert sold, "the delivered order has a card secret"
    for plain in (BUYER_PHONE, "+8613912345678", TOPUP_ACCOUNT, "+8613687654321", AGENT_PHONE, "+8613722223333",
                  "13755556666", *pw["secrets"]):
        assert plain not in dump, f"{plain} is in the dump in plaintext"


# --- support finds an order by phone or account through the page -------------------------------------------------

def test_support_finds_an_order_by_phone_or_account_in_any_spelling(app, db, f, client, personal_world):
    pw = personal_world
    other, _ = _storefront_card_order(db, f, client, "13811112222")
    support = app.test_client()
    f.user("pii_support", role="Support")
    f.login(support, "pii_support")

    page = support.get("/orders/list/").get_data(as_text=True)
    assert "手机号 / 联系方式 / 充值账号" in page  # the search field on the order list

    found = support.get(f"/orders/list/?_flt_0_contact_hash={quote(BUYER_PHONE_OTHER_SPELLING)}")
    assert found.status_code == 200
    assert row_pks(found.get_data(as_text=True), "/orders") == {pw["card_order"].id}
    assert pw["card_order"].order_no in found.get_data(as_text=True)

    by_account = support.get(f"/orders/list/?_flt_0_contact_hash={quote('136 8765 4321')}").get_data(as_text=True)
    assert row_pks(by_account, "/orders") == {order_of(pw["direct_no"]).id}
    nothing = support.get(f"/orders/list/?_flt_0_contact_hash={quote('13000000000')}").get_data(as_text=True)
    assert row_pks(nothing, "/orders") == set()
    assert len(row_pks(support.get("/orders/list/").get_data(as_text=True), "/orders")) == 3  # unfiltered: all

    # Support acts on the whole value on the order page (calls the buyer back); the dispute record is masked.
    shown = support.get(f"/orders/show/{pw['card_order'].id}").get_data(as_text=True)
    assert BUYER_PHONE in shown
    # A manager reads the same page and acts on nothing: masked.
    manager = app.test_client()
    f.user("pii_manager", role="Manager")
    f.login(manager, "pii_manager")
    read_only = manager.get(f"/orders/show/{pw['card_order'].id}").get_data(as_text=True)
    assert pw["card_order"].order_no in read_only and BUYER_PHONE not in read_only and mask(BUYER_PHONE) in read_only
    direct_page = manager.get(f"/orders/show/{order_of(pw['direct_no']).id}").get_data(as_text=True)
    assert TOPUP_ACCOUNT not in direct_page and mask(TOPUP_ACCOUNT) in direct_page
    records = support.get("/dispute-records/list/").get_data(as_text=True)
    assert BUYER_PHONE not in records and mask(BUYER_PHONE) in records

    # Staff find an agent by phone the same way.
    f.user("pii_admin2", role="Admin")
    admin = app.test_client()
    f.login(admin, "pii_admin2")
    agents_page = admin.get(f"/agents/list/?_flt_0_phone_hash={quote('+86 137 2222 3333')}").get_data(as_text=True)
    assert row_pks(agents_page, "/agents") == {pw["phoned"].id}


# --- uplines see downline phones masked ------------------------------------------------------------------------

def test_an_upline_sees_its_downline_phone_masked_and_the_agent_its_own_whole(app, db, f):
    parent = f.agent(tier_obj=f.tier(may_recruit=True))
    child = f.agent(parent=parent)
    child.phone = AGENT_PHONE
    db.session.commit()
    child_login = child.user.username

    upline = app.test_client()
    f.login(upline, parent.name)
    shown = upline.get(f"/portal/my-team/show/{child.id}").get_data(as_text=True)
    assert AGENT_PHONE not in shown and mask(AGENT_PHONE) in shown
    assert AGENT_PHONE not in upline.get("/portal/my-team/list/").get_data(as_text=True)
    edit = upline.get(f"/portal/my-team/edit/{child.id}").get_data(as_text=True)
    assert AGENT_PHONE not in edit and mask(AGENT_PHONE) in edit
    # Saving the form as shown keeps the number; the upline may still set a new one.
    assert upline.post(f"/portal/my-team/edit/{child.id}",
                       data={"name": "改名", "phone": mask(AGENT_PHONE)}).status_code == 302
    db.session.expire_all()
    assert (db.session.get(Agent, child.id).name, db.session.get(Agent, child.id).phone) == ("改名", AGENT_PHONE)

    own = app.test_client()
    f.login(own, child_login)
    assert AGENT_PHONE in own.get(f"/portal/my-team/show/{child.id}").get_data(as_text=True)


def test_an_upline_sees_a_downline_top_up_account_masked(app, db, f, client, supplier_sim):
    w = world(f)
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    order_no = place_api(client, w, account=TOPUP_ACCOUNT)["order_no"]
    w.parent.user_id = f.user(f.unique("up")).id
    db.session.commit()
    upline, buyer = app.test_client(), app.test_client()
    f.login(upline, db.session.get(Agent, w.parent.id).user.username)
    f.login(buyer, w.buyer.name)
    seen_above = upline.get(f"/portal/orders/{order_no}").get_data(as_text=True)
    assert TOPUP_ACCOUNT not in seen_above and mask(TOPUP_ACCOUNT) in seen_above
    assert TOPUP_ACCOUNT in buyer.get(f"/portal/orders/{order_no}").get_data(as_text=True)
    # the hold journal's memo (not encrypted) names the account masked
    memo = db.session.scalar(text("SELECT memo FROM ledger_journal WHERE idempotency_key = :k"),
                             {"k": f"order:{order_no}:hold"})
    assert TOPUP_ACCOUNT not in memo and mask(TOPUP_ACCOUNT) in memo


# --- the migration encrypts what was there before ----------------------------------------------------------------

def _insert(conn, table: str, **values) -> None:
    cols = ", ".join(values)
    conn.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(':' + c for c in values)})"), values)


def _plaintext_rows(conn, now) -> None:
    """Rows as the schema before c14a00000001 held them: personal values in plaintext, old-style masks."""
    _insert(conn, "tier", id=1, name="T", rank=1, discount_bp=9500, may_recruit=False, may_withdraw=False,
            min_withdrawal=0, withdrawal_fee_bp=0, direct_commission_bp=0, indirect_commission_bp=0, daily_limit=0,
            settle_days=0)
    _insert(conn, "agent", id=1, name="老代理", path="/1/", depth=0, tier_id=1, active=True, created_at=now,
            phone="+8613722223333", risk_hold=False, topup_unspent=0)
    _insert(conn, "category", id=1, name="C", sort_order=0, active=True)
    _insert(conn, "supplier", id=1, name="S", is_platform_own=True, service_fee_bp=0, active=True, priority=100,
            timeout_seconds=10, low_balance_threshold=0)
    _insert(conn, "product", id=1, name="P", category_id=1, supplier_id=1, kind="card", face_price=100, cost=80,
            max_per_order=5, low_stock_threshold=0, active=True, created_at=now)
    for i, (contact, account) in enumerate((("139 1234 5678", None), (None, "13687654321"),
                                            ("qq12345", None)), start=1):
        _insert(conn, "orders", id=i, order_no=f"OLD{i}", product_id=1, supplier_id=1, quantity=1, face_price=100,
                unit_price=100, amount=100, discount=0, cost_total=80, service_fee=0, status="delivered",
                channel="sandbox", risk_hold=False, created_at=now, updated_at=now, contact=contact,
                account=account, agent_id=1 if account else None)
    _insert(conn, "coupon", id=1, code="OLD", name="old", kind="fixed", value=10, min_spend=0, starts_at=now,
            ends_at=now + timedelta(days=1), per_user_limit=1, used_count=1, active=True, created_at=now)
    _insert(conn, "coupon_redemption", id=1, coupon_id=1, order_id=1, redeemer="contact:+8613912345678",
            discount=10, created_at=now)
    _insert(conn, "dispute", id=1, order_id=1, contact="139 1234 5678", reason="r", status="open", opened_at=now)
    _insert(conn, "card_secret", id=1, product_id=1, secret_enc=crypto.encrypt("ABCD-1234-EFGH-5678"),
            secret_hash="h", masked="ABCD***********5678", status="sold", order_id=1, created_at=now)
    _insert(conn, "ledger_journal", id=1, idempotency_key="order:OLD2:hold", kind="hold", content_hash="x",
            memo="P × 1 直充 13687654321", order_id=2, created_at=now)
    _insert(conn, "audit_entry", id=1, created_at=now, action="agent.update", target_type="agent", target_id="1",
            old_value='{"phone": "+8613722223333"}', new_value='{"phone": null}')


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_the_migration_encrypts_existing_plaintext_rows(kind, tmp_path):
    from flask_migrate import downgrade, upgrade

    from app.extensions import db

    base, name = PG_URL.rsplit("/", 1)
    url = f"{base}/{name}_pii_mig" if kind == "postgresql" else f"sqlite:///{tmp_path / 'pii.db'}"
    if kind == "postgresql":
        _recreate_pg_database(url)
    app = make_app(url, FAB_CREATE_DB=False, FAB_UPDATE_PERMS=False)
    try:
        with app.app_context():
            upgrade(directory=str(MIGRATIONS), revision="f3bd53037f90")
            now = utcnow().replace(microsecond=0)
            with db.engine.begin() as conn:
                _plaintext_rows(conn, now)
            upgrade(directory=str(MIGRATIONS), revision="c14a00000001")
            db.session.remove()

            raw = {r.id: r for r in db.session.execute(text("SELECT id, contact, account, contact_hash, account_hash"
                                                            " FROM orders ORDER BY id"))}
            for row in raw.values():
                for value in (row.contact, row.account):
                    assert value is None or value.startswith("gAAAAA")  # Fernet tokens only
            # read through the app: plaintext back, blind indexes filled (any spelling finds the row)
            # only the columns that exist at this revision (later migrations add others to the model)
            orders = {o.id: o for o in db.session.scalars(select(Order).options(load_only(
                Order.id, Order.contact, Order.account, Order.contact_hash, Order.account_hash)))}
            assert orders[1].contact == "139 1234 5678" and orders[1].contact_hash == pii_hash("+8613912345678")
            assert orders[2].account == "13687654321" and orders[2].account_hash == pii_hash("136 8765 4321")
            assert orders[3].contact_hash == pii_hash("QQ12345") and orders[2].contact_hash is None
            agent = db.session.get(Agent, 1)
            assert agent.phone == "+8613722223333" and agent.phone_hash == pii_hash("13722223333")
            assert db.session.get(Dispute, 1).contact == "139 1234 5678"
            assert db.session.scalar(text("SELECT redeemer FROM coupon_redemption")) == \
                "contact:" + pii_hash("13912345678")
            assert db.session.scalar(text("SELECT masked FROM card_secret")) == mask("ABCD-1234-EFGH-5678")
            memo = db.session.scalar(text("SELECT memo FROM ledger_journal"))
            assert memo == "P × 1 直充 " + mask("13687654321")
            audit_old = db.session.scalar(text("SELECT old_value FROM audit_entry"))
            assert "13722223333" not in audit_old and mask("+8613722223333") in audit_old
            dumpish = " ".join(str(v) for r in db.session.execute(text("SELECT * FROM orders")) for v in r)
            assert "13912345678" not in dumpish.replace(" ", "") and "13687654321" not in dumpish
            db.session.remove()

            # Run again from the middle (an interrupted upgrade): nothing is encrypted twice.
            downgrade(directory=str(MIGRATIONS), revision="f3bd53037f90")
            assert db.session.scalar(text("SELECT contact FROM orders WHERE id = 1")) == "139 1234 5678"
            assert db.session.scalar(text("SELECT redeemer FROM coupon_redemption")) == "contact:+8613912345678"
            db.session.remove()
            upgrade(directory=str(MIGRATIONS))
            assert db.session.get(Order, 1).contact == "139 1234 5678"
            db.session.remove()
            db.engine.dispose()
    finally:
        if kind == "postgresql":
            with psycopg.connect(base + "/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}_pii_mig" WITH (FORCE)')
