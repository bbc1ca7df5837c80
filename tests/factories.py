"""Test data with sensible defaults, built through the same services the product uses."""
from __future__ import annotations

import itertools
import uuid

from flask import current_app

from app.agents import service as agents
from app.agents.models import Agent, Tier
from app.catalog import cards
from app.catalog import service as catalog
from app.catalog.models import Category, Product
from app.extensions import db
from app.ledger import service as ledger

PASSWORD = "test-pass-123"
_seq = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_seq)}_{uuid.uuid4().hex[:6]}"


def tier(name: str | None = None, discount_bp: int = 9500, daily_limit: int = 0, rank: int = 10, **kw) -> Tier:
    t = Tier(name=name or unique("tier"), rank=rank, discount_bp=discount_bp, daily_limit=daily_limit,
             may_recruit=kw.pop("may_recruit", True), may_withdraw=kw.pop("may_withdraw", True),
             min_withdrawal=kw.pop("min_withdrawal", 10000), withdrawal_fee_bp=kw.pop("withdrawal_fee_bp", 0),
             direct_commission_bp=kw.pop("direct_commission_bp", 0),
             indirect_commission_bp=kw.pop("indirect_commission_bp", 0), settle_days=kw.pop("settle_days", 7))
    db.session.add(t)
    db.session.commit()
    return t


def user(username: str | None = None, role: str = "Agent", password: str = PASSWORD):
    sm = current_app.appbuilder.sm
    username = username or unique("user")
    u = sm.add_user(username, username, "test", f"{username}@test.local", sm.find_role(role), password)
    assert u, f"could not create user {username}"
    return u


def agent(name: str | None = None, parent: Agent | None = None, tier_obj: Tier | None = None, balance: int = 0,
          with_user: bool = True) -> Agent:
    name = name or unique("agent")
    tier_obj = tier_obj or tier()
    u = user(name) if with_user else None
    a = agents.create_agent(name, tier_obj.id, parent.id if parent else None, user_id=u.id if u else None)
    db.session.commit()
    if balance:
        fund(a, balance)
    return a


def fund(a: Agent, amount: int) -> None:
    ledger.post_journal(f"test:fund:{a.id}:{uuid.uuid4().hex}", "adjustment", [
        ledger.Line(ledger.agent_account_code(a.id, "wallet"), amount),
        ledger.Line("platform:adjustments", -amount)])
    db.session.commit()


def category(name: str | None = None) -> Category:
    c = Category(name=name or unique("cat"))
    db.session.add(c)
    db.session.commit()
    return c


def product(name: str | None = None, kind: str = "card", face_price: int = 10000, cost: int = 8000,
            secrets: int = 0, supplier_fee_bp: int = 0, max_per_order: int = 10, **kw) -> Product:
    supplier = catalog.create_supplier(unique("sup"), supplier_fee_bp) if supplier_fee_bp else \
        catalog.platform_supplier()
    max_uses = kw.pop("max_uses", None)  # a reusable card product (循环卡密) when given
    p = Product(name=name or unique("prod"), category_id=category().id, supplier_id=supplier.id, kind=kind,
                face_price=face_price, cost=cost, max_per_order=max_per_order,
                low_stock_threshold=kw.pop("low_stock_threshold", 5), reusable=max_uses is not None,
                max_uses=max_uses)
    db.session.add(p)
    db.session.commit()
    if secrets:
        stock(p, secrets)
    return p


def stock(p: Product, count: int, prefix: str | None = None) -> list[str]:
    prefix = prefix or f"P{p.id}-{uuid.uuid4().hex[:6]}"
    lines = [f"{prefix}-{i:06d}" for i in range(count)]
    batch = cards.create_import(p.id, "\n".join(lines), None, "paste")
    cards.run_import(batch.id)
    return lines


def login(client, username: str, password: str = PASSWORD):
    r = client.post("/login/", data={"username": username, "password": password})
    assert r.status_code == 302, f"login failed for {username}: {r.status_code}"
    return client


def wallet(a: Agent) -> int:
    return ledger.agent_balances(a.id)["wallet"]
