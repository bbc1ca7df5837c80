"""Admin screens through the FAB test client: bad input answers with a form error or a flash message (never a 500,
never a half-written row), and the happy paths store fen and basis points, write audit entries and move money
only through journals."""
from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.agents.models import Agent, Tier
from app.audit.models import AuditEntry
from app.catalog.models import CardImport, CardSecret, Category, PriceRule, Product, Supplier, TierPrice
from app.clock import utcnow
from app.ledger.models import Account, Journal

_ALERT = re.compile(r'<div class="alert alert-danger[^"]*"[^>]*>(.*?)</div>', re.S)


def alerts(page: str) -> str:
    """The text of every error shown on a page: field errors and danger flashes."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", m)) for m in _ALERT.findall(page))


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def audit_entries(db, action: str) -> list[AuditEntry]:
    return db.session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)).all()


@pytest.fixture
def admin(f, client):
    user = f.user(f.unique("admin"), role="Admin")
    f.login(client, user.username)
    return user


def post(client, url: str, data: dict, **kw):
    """POST and follow a redirect back; the answer must be a page, never a server error."""
    r = client.post(url, data=data, follow_redirects=True, **kw)
    assert r.status_code == 200, (url, r.status_code)
    return r


def refused(client, url: str, data: dict, expected: str, **kw) -> str:
    r = post(client, url, data, **kw)
    shown = alerts(r.text)
    assert expected in shown, f"expected {expected!r} among the errors, got {shown!r}"
    return shown


# ---------------------------------------------------------------------------------------------------- tiers

def tier_form(**overrides) -> dict:
    data = {"name": "金牌代理", "rank": "50", "discount_bp": "95", "may_recruit": "y", "may_withdraw": "y",
            "min_withdrawal": "100", "withdrawal_fee_bp": "1.5", "direct_commission_bp": "5",
            "indirect_commission_bp": "2", "daily_limit": "12.50", "settle_days": "7"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize("field, value, expected", [
    ("discount_bp", "abc", "百分比格式不正确"),
    ("discount_bp", "0", "必须在 0.01％ 到 200.00％ 之间"),
    ("discount_bp", "250", "必须在 0.01％ 到 200.00％ 之间"),
    ("discount_bp", "-5", "百分比格式不正确"),
    ("direct_commission_bp", "60", "必须在 0.00％ 到 50.00％ 之间"),
    ("withdrawal_fee_bp", "95.555", "百分比格式不正确"),
    ("daily_limit", "-1", "金额不能小于"),
    ("daily_limit", "\u22121", "金额格式不正确"),  # a typographic minus sign
    ("daily_limit", "abc", "金额格式不正确"),
    ("daily_limit", "12%", "金额格式不正确"),  # a '%' echoed in a field error once broke FAB's gettext: a 500
    ("discount_bp", "9%5", "百分比格式不正确"),
    ("min_withdrawal", "1.234", "金额格式不正确"),
    ("settle_days", "500", "0"),
    ("settle_days", "-1", "0"),
    ("settle_days", "abc", ""),
    ("rank", "99999999999", ""),
    ("name", "", ""),
])
def test_tier_form_refuses_bad_input(admin, client, db, field, value, expected):
    refused(client, "/tiers/add", tier_form(**{field: value}), expected)
    assert count(db, Tier) == 0
    assert audit_entries(db, "tier.create") == []


def test_tier_form_missing_money_fields_is_refused(admin, client, db):
    data = tier_form(discount_bp=None, min_withdrawal=None, daily_limit=None)
    shown = refused(client, "/tiers/add", data, "请填写")
    assert "拿货折扣" in shown
    assert count(db, Tier) == 0


def test_tier_duplicate_name_is_a_form_error(admin, client, db, f):
    f.tier(name="金牌代理")
    post(client, "/tiers/add", tier_form())
    assert count(db, Tier) == 1
    # the session is still usable: the next request answers normally
    assert client.get("/tiers/list/").status_code == 200


def test_tier_edit_with_bad_input_changes_nothing(admin, client, db, f):
    t = f.tier(name="银牌", discount_bp=9700, settle_days=7)
    refused(client, f"/tiers/edit/{t.id}", tier_form(name="银牌", settle_days="500", discount_bp="80"), "0")
    refused(client, f"/tiers/edit/{t.id}", tier_form(name="银牌", discount_bp="abc"), "百分比格式不正确")
    assert client.get(f"/tiers/show/{t.id}").status_code == 200
    db.session.expire_all()
    row = db.session.execute(select(Tier.discount_bp, Tier.settle_days).where(Tier.id == t.id)).one()
    assert tuple(row) == (9700, 7)
    assert audit_entries(db, "tier.update") == []


def test_tier_created_in_yuan_and_percent_is_stored_in_fen_and_basis_points(admin, client, db):
    r = post(client, "/tiers/add", tier_form())
    assert alerts(r.text) == ""
    t = db.session.scalar(select(Tier).where(Tier.name == "金牌代理"))
    assert (t.discount_bp, t.withdrawal_fee_bp, t.direct_commission_bp, t.indirect_commission_bp) == \
        (9500, 150, 500, 200)
    assert (t.min_withdrawal, t.daily_limit, t.settle_days, t.rank) == (10000, 1250, 7, 50)
    assert t.may_recruit is True and t.may_withdraw is True
    [created] = audit_entries(db, "tier.create")
    assert created.actor_id == admin.id and json.loads(created.new_value)["discount_bp"] == 9500

    # the edit form shows the stored values back in yuan and percent
    page = client.get(f"/tiers/edit/{t.id}").text
    assert 'value="95.00"' in page and 'value="12.50"' in page and 'value="100.00"' in page

    # unchecking a checkbox is allowed (a boolean column is not "required")
    post(client, f"/tiers/edit/{t.id}", tier_form(discount_bp="90", daily_limit="0", may_recruit=None))
    db.session.expire_all()
    t = db.session.get(Tier, t.id)
    assert (t.discount_bp, t.daily_limit, t.may_recruit) == (9000, 0, False)
    [updated] = audit_entries(db, "tier.update")
    old, new = json.loads(updated.old_value), json.loads(updated.new_value)
    assert old == {"discount_bp": 9500, "daily_limit": 1250, "may_recruit": True}
    assert new == {"discount_bp": 9000, "daily_limit": 0, "may_recruit": False}
    assert updated.actor_id == admin.id and updated.target_id == str(t.id)
    # the audit screen lists it
    assert "tier.update" in client.get("/audit/list/").text


# ---------------------------------------------------------------------------------------------------- products

def product_form(cat, sup, **overrides) -> dict:
    data = {"name": "腾讯Q币 10元", "category": str(cat.id), "supplier": str(sup.id), "kind": "card",
            "face_price": "10", "cost": "8.50", "max_per_order": "10", "low_stock_threshold": "5", "active": "y",
            "description": ""}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def catalog_refs(f):
    from app.catalog import service as catalog

    category = f.category("游戏点卡")
    supplier = catalog.platform_supplier()
    from app.extensions import db
    db.session.commit()
    return category, supplier


@pytest.mark.parametrize("overrides, expected", [
    ({"face_price": "abc"}, "金额格式不正确"),
    ({"face_price": "-5"}, "金额不能小于"),
    ({"face_price": "0"}, "金额不能小于"),
    ({"face_price": None}, ""),
    ({"cost": None}, ""),
    ({"cost": "-1"}, "金额不能小于"),
    ({"max_per_order": "0"}, ""),
    ({"max_per_order": "5000"}, ""),
    ({"max_per_order": "abc"}, ""),
    ({"low_stock_threshold": "-3"}, ""),
    ({"kind": "bogus"}, ""),
    ({"category": "999999"}, ""),
    ({"category": "abc"}, ""),
    ({"supplier": ""}, ""),
])
def test_product_form_refuses_bad_input(admin, client, db, catalog_refs, overrides, expected):
    refused(client, "/products/add", product_form(*catalog_refs, **overrides), expected)
    assert count(db, Product) == 0
    assert audit_entries(db, "product.create") == []


def test_product_create_and_edit_are_audited(admin, client, db, catalog_refs):
    post(client, "/products/add", product_form(*catalog_refs, face_price="12.50", cost="0"))
    p = db.session.scalar(select(Product))
    assert (p.face_price, p.cost, p.max_per_order, p.active) == (1250, 0, 10, True)
    assert len(audit_entries(db, "product.create")) == 1

    other = Category(name="话费充值")
    db.session.add(other)
    db.session.commit()
    post(client, f"/products/edit/{p.id}", product_form(other, catalog_refs[1], face_price="11", cost="0",
                                                         active=None))
    db.session.expire_all()
    p = db.session.get(Product, p.id)
    assert (p.face_price, p.active, p.category_id) == (1100, False, other.id)
    [updated] = audit_entries(db, "product.update")
    old, new = json.loads(updated.old_value), json.loads(updated.new_value)
    assert old == {"face_price": 1250, "active": True, "category_id": catalog_refs[0].id}
    assert new == {"face_price": 1100, "active": False, "category_id": other.id}

    # a bad edit is refused and leaves the product as it was
    refused(client, f"/products/edit/{p.id}", product_form(other, catalog_refs[1], face_price="abc"),
            "金额格式不正确")
    refused(client, f"/products/edit/{p.id}", product_form(other, catalog_refs[1], max_per_order="0"), "")
    db.session.expire_all()
    assert db.session.execute(select(Product.face_price, Product.max_per_order)).one() == (1100, 10)
    assert len(audit_entries(db, "product.update")) == 1


# ---------------------------------------------------------------------------------------------------- prices

def test_tier_price_rules(admin, client, db, f):
    t = f.tier(name="铜牌")
    p = f.product(face_price=10000)
    refused(client, "/tier-prices/add", {"product": p.id, "tier": t.id, "price": "0"}, "金额不能小于")
    refused(client, "/tier-prices/add", {"product": p.id, "tier": t.id, "price": "abc"}, "金额格式不正确")
    refused(client, "/tier-prices/add", {"product": p.id, "tier": t.id}, "")
    assert count(db, TierPrice) == 0

    post(client, "/tier-prices/add", {"product": p.id, "tier": t.id, "price": "95.50"})
    tp = db.session.scalar(select(TierPrice))
    assert tp.price == 9550
    [created] = audit_entries(db, "tier_price.create")
    assert json.loads(created.new_value) == {"product_id": p.id, "tier_id": t.id, "price": 9550}

    refused(client, "/tier-prices/add", {"product": p.id, "tier": t.id, "price": "90"}, "该商品已有这个等级的价格")
    assert count(db, TierPrice) == 1
    assert client.get("/tier-prices/list/").status_code == 200

    post(client, f"/tier-prices/edit/{tp.id}", {"product": p.id, "tier": t.id, "price": "90"})
    db.session.expire_all()
    assert db.session.get(TierPrice, tp.id).price == 9000
    [updated] = audit_entries(db, "tier_price.update")
    assert json.loads(updated.old_value) == {"price": 9550} and json.loads(updated.new_value) == {"price": 9000}

    # moving a price onto a (product, tier) pair that already has one is refused too
    t2 = f.tier(name="银牌2")
    post(client, "/tier-prices/add", {"product": p.id, "tier": t2.id, "price": "80"})
    tp2 = db.session.scalar(select(TierPrice).where(TierPrice.tier_id == t2.id))
    refused(client, f"/tier-prices/edit/{tp2.id}", {"product": p.id, "tier": t.id, "price": "80"},
            "该商品已有这个等级的价格")
    db.session.expire_all()
    assert db.session.get(TierPrice, tp2.id).tier_id == t2.id


def _dt(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def test_price_rule_rules(admin, client, db, f):
    p = f.product()
    start = utcnow().replace(microsecond=0)
    base = {"name": "国庆特惠", "product": p.id, "rate_bp": "90", "starts_at": _dt(start),
            "ends_at": _dt(start + timedelta(days=7)), "active": "y"}
    refused(client, "/price-rules/add", {**base, "ends_at": _dt(start - timedelta(days=1))}, "结束时间必须晚于开始时间")
    refused(client, "/price-rules/add", {**base, "ends_at": _dt(start)}, "结束时间必须晚于开始时间")
    refused(client, "/price-rules/add", {**base, "rate_bp": "0"}, "必须在 0.01％ 到 100.00％ 之间")
    refused(client, "/price-rules/add", {**base, "rate_bp": "150"}, "必须在 0.01％ 到 100.00％ 之间")
    refused(client, "/price-rules/add", {**base, "starts_at": "yesterday"}, "")
    assert count(db, PriceRule) == 0

    post(client, "/price-rules/add", base)
    rule = db.session.scalar(select(PriceRule))
    assert rule.rate_bp == 9000 and rule.tier_id is None
    assert len(audit_entries(db, "price_rule.create")) == 1
    post(client, f"/price-rules/edit/{rule.id}", {**base, "rate_bp": "85"})
    db.session.expire_all()
    assert db.session.get(PriceRule, rule.id).rate_bp == 8500
    [updated] = audit_entries(db, "price_rule.update")
    assert json.loads(updated.old_value) == {"rate_bp": 9000} and json.loads(updated.new_value) == {"rate_bp": 8500}


def test_supplier_form(admin, client, db):
    before = count(db, Supplier)
    refused(client, "/suppliers/add", {"name": "上游A", "service_fee_bp": "abc", "active": "y"}, "百分比格式不正确")
    refused(client, "/suppliers/add", {"name": "上游A", "service_fee_bp": "101", "active": "y"}, "必须在")
    assert count(db, Supplier) == before
    post(client, "/suppliers/add", {"name": "上游A", "service_fee_bp": "2.5", "active": "y", "contact": "qq"})
    s = db.session.scalar(select(Supplier).where(Supplier.name == "上游A"))
    assert s.service_fee_bp == 250
    assert db.session.scalar(select(Account.id).where(Account.code == f"supplier:{s.id}:payable"))
    assert len(audit_entries(db, "supplier.create")) == 1


def test_category_form(admin, client, db):
    post(client, "/categories/add", {"name": "影音会员", "sort_order": "3", "active": "y"})
    c = db.session.scalar(select(Category).where(Category.name == "影音会员"))
    post(client, f"/categories/edit/{c.id}", {"name": "影音会员", "sort_order": "4"})
    db.session.expire_all()
    c = db.session.get(Category, c.id)
    assert (c.sort_order, c.active) == (4, False)
    refused(client, f"/categories/edit/{c.id}", {"name": "影音会员", "sort_order": "abc"}, "")
    refused(client, "/categories/add", {"name": "影音会员", "sort_order": "1"}, "")
    assert count(db, Category) == 1


# ---------------------------------------------------------------------------------------------------- agents

def test_agent_add_requires_a_tier(admin, client, db, f):
    u = f.user(f.unique("newagent"))
    refused(client, "/agents/add", {"name": "新代理", "user": u.id, "active": "y"}, "")
    refused(client, "/agents/add", {"name": "新代理", "user": u.id, "tier": "999999", "active": "y"}, "")
    refused(client, "/agents/add", {"name": "", "tier": f.tier().id, "active": "y"}, "")
    assert count(db, Agent) == 0
    assert count(db, Account) == count(db, Account)  # nothing to compare yet; the session still answers
    assert db.session.scalar(select(func.count()).where(Account.agent_id.is_not(None))) == 0


def test_agent_created_through_the_form_gets_path_and_accounts(admin, client, db, f):
    t = f.tier(name="一级")
    parent = f.agent("上级甲", tier_obj=t)
    u = f.user(f.unique("newagent"))
    post(client, "/agents/add", {"name": "新代理", "user": u.id, "tier": t.id, "parent": parent.id,
                                 "phone": "13800000000", "active": "y"})
    a = db.session.scalar(select(Agent).where(Agent.name == "新代理"))
    assert a is not None and a.user_id == u.id and a.parent_id == parent.id
    assert a.path == f"{parent.path}{a.id}/" and a.depth == 1
    codes = set(db.session.scalars(select(Account.code).where(Account.agent_id == a.id)))
    assert codes == {f"agent:{a.id}:wallet", f"agent:{a.id}:pending", f"agent:{a.id}:frozen"}
    assert [e.target_id for e in audit_entries(db, "agent.create")] == [str(a.id)]

    # a login that already belongs to an agent cannot be bound twice
    post(client, "/agents/add", {"name": "重复账号", "user": u.id, "tier": t.id, "active": "y"})
    assert db.session.scalar(select(func.count()).where(Agent.user_id == u.id)) == 1
    assert db.session.scalar(select(Agent.id).where(Agent.name == "重复账号")) is None
    assert client.get("/agents/list/").status_code == 200


def _agent_form(a: Agent, **overrides) -> dict:
    data = {"name": a.name, "tier": a.tier_id, "parent": a.parent_id or "", "phone": a.phone or "", "active": "y"}
    if a.user_id:
        data["user"] = a.user_id
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _paths(db, *agents) -> list[tuple[str, int]]:
    db.session.expire_all()
    return [tuple(db.session.execute(select(Agent.path, Agent.depth).where(Agent.id == a.id)).one()) for a in agents]


def test_agent_cannot_move_under_its_own_downline(admin, client, db, f):
    t = f.tier()
    a1 = f.agent("甲1", tier_obj=t)
    a2 = f.agent("甲2", parent=a1, tier_obj=t)
    a3 = f.agent("甲3", parent=a2, tier_obj=t)
    before = _paths(db, a1, a2, a3)
    refused(client, f"/agents/edit/{a1.id}", _agent_form(a1, parent=a3.id, name="改名"), "不能把代理移到自己的下级之下")
    refused(client, f"/agents/edit/{a1.id}", _agent_form(a1, parent=a1.id), "不能把代理移到自己的下级之下")
    refused(client, f"/agents/edit/{a2.id}", _agent_form(a2, parent=a3.id), "不能把代理移到自己的下级之下")
    assert _paths(db, a1, a2, a3) == before
    assert db.session.scalar(select(Agent.name).where(Agent.id == a1.id)) == "甲1"
    assert db.session.scalar(select(Agent.parent_id).where(Agent.id == a1.id)) is None
    assert audit_entries(db, "agent.move") == []


def test_moving_an_agent_rewrites_its_subtree(admin, client, db, f):
    t = f.tier()
    a1 = f.agent("甲1", tier_obj=t)
    a2 = f.agent("甲2", parent=a1, tier_obj=t)
    a3 = f.agent("甲3", parent=a2, tier_obj=t)
    b1 = f.agent("乙1", tier_obj=t)
    post(client, f"/agents/edit/{a2.id}", _agent_form(a2, parent=b1.id))
    assert _paths(db, a1, a2, a3, b1) == [(f"/{a1.id}/", 0), (f"/{b1.id}/{a2.id}/", 1),
                                          (f"/{b1.id}/{a2.id}/{a3.id}/", 2), (f"/{b1.id}/", 0)]
    assert db.session.get(Agent, a2.id).parent_id == b1.id
    [move] = audit_entries(db, "agent.move")
    assert json.loads(move.old_value) == {"path": f"/{a1.id}/{a2.id}/"}
    assert json.loads(move.new_value) == {"path": f"/{b1.id}/{a2.id}/"}

    # and back to the top level
    post(client, f"/agents/edit/{a2.id}", _agent_form(db.session.get(Agent, a2.id), parent=""))
    assert _paths(db, a2, a3) == [(f"/{a2.id}/", 0), (f"/{a2.id}/{a3.id}/", 1)]


def test_agent_tier_change_and_disable_are_audited(admin, client, db, f):
    t1, t2 = f.tier(name="T1"), f.tier(name="T2")
    a = f.agent("丙", tier_obj=t1)
    post(client, f"/agents/edit/{a.id}", _agent_form(a, tier=t2.id, active=None))
    db.session.expire_all()
    a = db.session.get(Agent, a.id)
    assert (a.tier_id, a.active) == (t2.id, False)
    [entry] = audit_entries(db, "agent.update")
    assert json.loads(entry.old_value) == {"tier_id": t1.id, "active": True}
    assert json.loads(entry.new_value) == {"tier_id": t2.id, "active": False}


# ---------------------------------------------------------------------------------------------------- wallet adjust

def _journals(db) -> int:
    return count(db, Journal)


@pytest.mark.parametrize("data, expected", [
    ({"amount": "0", "reason": "补偿"}, "调整金额不能为 0"),
    ({"amount": "0.00", "reason": "补偿"}, "调整金额不能为 0"),
    ({"amount": "abc", "reason": "补偿"}, "金额格式不正确"),
    ({"amount": "", "reason": "补偿"}, ""),
    ({"amount": "10"}, ""),
    ({"amount": "10", "reason": "   "}, ""),
    ({"amount": "10", "reason": "x" * 300}, ""),
    ({"amount": "-500", "reason": "扣回"}, "余额不足"),
])
def test_wallet_adjust_refuses_bad_input(admin, client, db, f, data, expected):
    a = f.agent(balance=10000)
    journals = _journals(db)
    refused(client, "/wallet-adjust/form", {"agent": a.id, **data}, expected)
    assert _journals(db) == journals
    assert f.wallet(a) == 10000
    assert audit_entries(db, "wallet.adjust") == []


def test_wallet_adjust_refuses_an_unknown_agent(admin, client, db, f):
    journals = _journals(db)
    refused(client, "/wallet-adjust/form", {"agent": "999999", "amount": "10", "reason": "x"}, "")
    refused(client, "/wallet-adjust/form", {"amount": "10", "reason": "x"}, "")
    assert _journals(db) == journals


def test_wallet_adjust_posts_a_journal_and_an_audit_entry(admin, client, db, f):
    a = f.agent(balance=10000)
    page = client.get(f"/wallet-adjust/form?agent_id={a.id}").text
    assert f'<option selected value="{a.id}"' in page or f'value="{a.id}" selected' in page
    journals = _journals(db)
    r = post(client, "/wallet-adjust/form", {"agent": a.id, "amount": "12.50", "reason": "活动返现"})
    assert "当前余额 ¥112.50" in r.text
    assert f.wallet(a) == 11250 and _journals(db) == journals + 1
    [entry] = audit_entries(db, "wallet.adjust")
    assert entry.actor_id == admin.id and entry.reason == "活动返现"
    assert json.loads(entry.old_value) == {"wallet": 10000}
    new = json.loads(entry.new_value)
    assert new["wallet"] == 11250 and new["amount"] == 1250
    journal = db.session.get(Journal, new["journal_id"])
    assert journal.kind == "adjustment" and journal.actor_id == admin.id
    assert sorted(p.amount for p in journal.postings) == [-1250, 1250]

    post(client, "/wallet-adjust/form", {"agent": a.id, "amount": "-112.50", "reason": "清零"})
    assert f.wallet(a) == 0


# ---------------------------------------------------------------------------------------------------- card import

def test_card_import_refuses_bad_input(admin, client, db, f):
    card = f.product(kind="card")
    direct = f.product(kind="direct")
    refused(client, "/card-import/", {"text": "AAAA-1111\nBBBB-2222", "confirm": "0"}, "请选择商品")
    refused(client, "/card-import/", {"product_id": "abc", "text": "AAAA-1111", "confirm": "1"}, "请选择商品")
    refused(client, "/card-import/", {"product_id": "\u00b2", "text": "AAAA-1111", "confirm": "1"}, "请选择商品")
    assert client.get("/card-import/?product_id=\u00b2").status_code == 200
    refused(client, "/card-import/", {"product_id": "99999999999999999999", "text": "AAAA-1111", "confirm": "1"},
            "")
    refused(client, "/card-import/", {"product_id": "999999", "text": "AAAA-1111", "confirm": "1"}, "商品不存在")
    refused(client, "/card-import/", {"product_id": direct.id, "text": "AAAA-1111", "confirm": "1"}, "不是卡密类商品")
    for confirm in ("0", "1"):
        refused(client, "/card-import/", {"product_id": card.id, "text": "", "confirm": confirm}, "没有可导入的卡密")
        refused(client, "/card-import/", {"product_id": card.id, "text": "  \n \n", "confirm": confirm},
                "没有可导入的卡密")
    import io
    for confirm in ("0", "1"):
        refused(client, "/card-import/", {"product_id": str(card.id), "confirm": confirm,
                                          "file": (io.BytesIO(b"\x00\x01\x02PNG\x00"), "cards.txt")},
                "不是文本文件", content_type="multipart/form-data")
        refused(client, "/card-import/", {"product_id": str(card.id), "confirm": confirm,
                                          "file": (io.BytesIO(b"\xff\xfe\xfa\xfb" * 3), "cards.txt")},
                "", content_type="multipart/form-data")
    assert count(db, CardImport) == 0 and count(db, CardSecret) == 0


def test_card_import_preview_writes_nothing_then_confirm_imports(admin, client, db, f):
    card = f.product(kind="card")
    f.stock(card, 1, prefix="OLD")  # OLD-000000 is already in stock
    before_imports = count(db, CardImport)
    text = "NEW-AAAA-0001\nNEW-AAAA-0002\nNEW-AAAA-0001\nOLD-000000\nab\n"
    r = post(client, "/card-import/", {"product_id": card.id, "text": text, "confirm": "0"})
    assert re.search(r'id="preview-added">2<', r.text)
    assert re.search(r'id="preview-duplicates">2<', r.text)
    assert re.search(r'id="preview-rejected">1<', r.text)
    assert "NEW-AAAA-0001" not in r.text.replace(text, "")  # only masked samples outside the textarea
    assert count(db, CardImport) == before_imports and count(db, CardSecret) == 1

    r = client.post("/card-import/", data={"product_id": card.id, "text": text, "confirm": "1"})
    assert r.status_code == 302
    batch = db.session.scalar(select(CardImport).order_by(CardImport.id.desc()))
    assert r.headers["Location"].endswith(f"/card-imports/show/{batch.id}")
    page = client.get(r.headers["Location"]).text
    assert "导入完成：新增 2，重复 2，拒绝 1" in page
    assert "第 3 行" in page and "第 5 行" in page
    assert (batch.added, batch.duplicates, batch.rejected) == (2, 2, 1)
    assert count(db, CardSecret) == 3
    assert "NEW-AAAA-0001" not in page

    # a TXT upload works the same way
    import io
    r = client.post("/card-import/", data={"product_id": str(card.id), "confirm": "1",
                                           "file": (io.BytesIO("NEW-BBBB-0001\r\n".encode("gb18030")), "c.txt")},
                    content_type="multipart/form-data")
    assert r.status_code == 302 and count(db, CardSecret) == 4


# ---------------------------------------------------------------------------------------------------- language

def test_default_language_is_chinese_and_english_is_selectable(admin, client, f):
    f.tier(name="金牌")
    page = client.get("/tiers/list/").text
    assert "代理等级" in page and "注销" in page
    r = client.get("/lang/en")
    assert r.status_code == 302
    page = client.get("/tiers/list/")
    assert page.status_code == 200
    assert "Logout" in page.text and "注销" not in page.text and "金牌" in page.text
    assert client.get("/lang/zh").status_code == 302
    assert "注销" in client.get("/tiers/list/").text


def test_unknown_language_is_harmless(admin, client):
    r = client.get("/lang/xx")
    assert r.status_code in (302, 404)
    assert client.get("/tiers/list/").status_code == 200


# ---------------------------------------------------------------------------------------------------- robustness

def test_admin_screens_render(admin, client, f):
    a = f.agent(balance=50000)
    p = f.product(secrets=2)
    from app.orders import service as orders
    order = orders.place_wallet_order(a.id, p.id, 1)
    for url in ["/orders/list/", f"/orders/show/{order.id}", "/agents/list/", f"/agents/show/{a.id}",
                f"/agents/edit/{a.id}", "/agents/add", "/tiers/list/", "/tiers/add", "/products/list/",
                "/products/add", f"/products/edit/{p.id}", "/tier-prices/list/", "/tier-prices/add",
                "/price-rules/list/", "/price-rules/add", "/suppliers/list/", "/suppliers/add", "/categories/list/",
                "/card-secrets/list/", "/card-import/", "/card-imports/list/", "/stock-alerts/list/",
                "/ledger/accounts/list/", "/ledger/journals/list/", "/ledger/postings/list/", "/audit/list/",
                "/wallet-adjust/form", "/users/list/", "/"]:
        r = client.get(url)
        assert r.status_code == 200, url


@pytest.mark.parametrize("url", [
    "/tiers/show/abc", "/tiers/edit/99999999999999999999", "/tiers/show/-1", "/products/edit/1.5",
    "/tiers/delete/99999999999999999999", "/users/edit/99999999999999999999", "/tiers/download/x.txt",
    "/agents/show/99999999999999999999", "/orders/show/abc", "/audit/show/%00",
])
def test_bad_primary_keys_are_not_found(admin, client, url):
    for method in ("get", "post") if "/edit/" in url or "/delete/" in url else ("get",):
        r = getattr(client, method)(url)
        assert r.status_code == 404, (method, url, r.status_code)


@pytest.mark.parametrize("query", [
    "page_TierView=-1", "page_TierView=abc", "psize_TierView=-5", "psize_TierView=0", "psize_TierView=abc",
    "psize_TierView=100000000", "_oc_TierView=nonexistent&_od_TierView=asc", "_oc_TierView=name&_od_TierView=x",
    "_flt_0_name=abc", "_flt_9_nonexistent=1",
])
def test_list_arguments_never_break_a_list(admin, client, f, query):
    f.tier(name="金牌")
    r = client.get(f"/tiers/list/?{query}", follow_redirects=True)
    assert r.status_code in (200, 400), (query, r.status_code)


@pytest.mark.parametrize("url, data", [
    ("/tiers/action/nope/1", {}),
    ("/tiers/action_post", {"action": "nope", "rowid": "1"}),
    ("/orders/action_post", {"action": "nope", "rowid": "abc"}),
    ("/users/action/nope/1", {}),
])
def test_unknown_actions_are_not_found(admin, client, url, data):
    r = client.post(url, data=data)
    assert r.status_code == 404, (url, r.status_code)


# ---------------------------------------------------------------------------------------------------- delete

def test_deleting_a_row_still_in_use_is_refused(admin, client, db, f):
    used = f.tier(name="在用等级")
    f.agent(tier_obj=used)
    unused = f.tier(name="空等级")
    refused(client, f"/tiers/delete/{used.id}", {}, "仍有其他记录引用它，不能删除")
    assert db.session.scalar(select(Tier.id).where(Tier.id == used.id)) == used.id
    assert audit_entries(db, "tier.delete") == []
    assert client.get("/tiers/list/").status_code == 200

    r = post(client, f"/tiers/delete/{unused.id}", {})
    assert alerts(r.text) == ""
    assert db.session.scalar(select(Tier.id).where(Tier.id == unused.id)) is None
    [entry] = audit_entries(db, "tier.delete")
    assert entry.target_id == str(unused.id) and json.loads(entry.old_value)["name"] == "空等级"

    p = f.product(secrets=1)
    refused(client, f"/products/delete/{p.id}", {}, "仍有其他记录引用它，不能删除")
    assert db.session.get(Product, p.id) is not None


def test_agents_are_switched_off_never_deleted(admin, client, db, f):
    a = f.agent()
    assert client.post(f"/agents/delete/{a.id}").status_code == 403
    assert db.session.get(Agent, a.id) is not None
    # a GET that would mutate is refused even where delete is allowed
    t = f.tier()
    client.get(f"/tiers/delete/{t.id}")
    assert db.session.scalar(select(Tier.id).where(Tier.id == t.id)) == t.id


def test_admin_action_on_a_missing_row_is_harmless(admin, client, db, f):
    from app.openapi import service as openapi
    from app.openapi.models import ApiKey

    key, _ = openapi.create_key(f.agent().id, "k")
    r = client.post("/api-keys/action_post", data={"action": "revoke", "rowid": ["999999", str(key.id)]})
    assert r.status_code == 302
    assert db.session.scalar(select(ApiKey.active).where(ApiKey.id == key.id)) is False
    assert client.post("/api-keys/action/revoke/999999").status_code == 302
