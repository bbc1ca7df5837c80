"""平台设置: an admin sets the real-name threshold in a form (audited); purchases above it need a real name."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from app.audit.models import AuditEntry
from app.network.realname import RealNameRequired
from app.orders import service as orders


def test_admin_sets_the_real_name_threshold_and_purchases_obey_it(app, f, client, db):
    buyer = f.agent(balance=100_000, tier_obj=f.tier(discount_bp=10000))
    product = f.product(face_price=10000, cost=8000, secrets=3)
    orders.place_wallet_order(buyer.id, product.id, 1)  # no threshold configured: allowed

    admin = f.user(role="Admin")
    f.login(client, admin.username)
    assert "平台设置" in client.get("/platform-settings/form").text
    r = client.post("/platform-settings/form", data={"realname_required_above": "abc"})
    assert r.status_code == 200 and "金额格式不正确" in r.text  # a form error, nothing saved
    r = client.post("/platform-settings/form", data={"realname_required_above": "50.00"})
    assert r.status_code in (200, 302)
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "setting.update"))
    assert entry.actor_id == admin.id and "5000" in entry.new_value

    with pytest.raises(RealNameRequired):
        orders.place_wallet_order(buyer.id, product.id, 1)  # ¥100 > ¥50, no real name
    assert f.wallet(buyer) == 90_000  # the refused order charged nothing

    client.post("/platform-settings/form", data={"realname_required_above": "0"})
    orders.place_wallet_order(buyer.id, product.id, 1)
    assert f.wallet(buyer) == 80_000


def test_only_admins_reach_platform_settings(app, f, client):
    agent = f.agent()
    f.login(client, agent.name)
    assert client.get("/platform-settings/form").status_code in (302, 403)
    support = f.user(role="Support")
    client.get("/logout/")
    f.login(client, support.username)
    assert client.get("/platform-settings/form").status_code in (302, 403)
