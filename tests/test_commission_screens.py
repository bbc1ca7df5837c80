"""Commission screens: the agent's own commissions (scoped to itself, totals per status), the staff settlement runs
with the audited 立即结算 button (Admin only), every commission (staff), and the tier screens' compliance banner."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from app.audit.models import AuditEntry
from app.extensions import db
from app.money import format_fen
from app.network.models import Commission, SettlementRun
from app.orders import service as orders
from tests.test_scope import row_pks, search_options

BANNER = 'id="commission-compliance-warning"'


def _commission(order_id: int, agent_id: int) -> Commission:
    db.session.expire_all()
    return db.session.scalar(select(Commission).where(Commission.order_id == order_id,
                                                      Commission.agent_id == agent_id))


@pytest.fixture
def world(f):
    """root → a → buyer_a (root earns indirect, a direct on buyer_a's order); b → buyer_b (b earns direct)."""
    paying = f.tier(direct_commission_bp=500, indirect_commission_bp=300, settle_days=0)
    plain = f.tier(direct_commission_bp=0, indirect_commission_bp=0)
    root = f.agent(tier_obj=paying)
    a = f.agent(parent=root, tier_obj=paying)
    buyer_a = f.agent(parent=a, tier_obj=plain, with_user=False, balance=100_000)
    b = f.agent(tier_obj=paying)
    buyer_b = f.agent(parent=b, tier_obj=plain, with_user=False, balance=100_000)
    p = f.product(secrets=4)
    order_a = orders.place_wallet_order(buyer_a.id, p.id, 1)
    order_b = orders.place_wallet_order(buyer_b.id, p.id, 1)
    return {"root": root, "a": a, "b": b, "order_a": order_a, "order_b": order_b, "paying": paying,
            "mine": _commission(order_a.id, a.id), "roots": _commission(order_a.id, root.id),
            "bs": _commission(order_b.id, b.id)}


def _login(app, f, username):
    return f.login(app.test_client(), username)


def test_agent_sees_only_its_own_commissions(app, f, world):
    client = _login(app, f, world["a"].user.username)
    page = client.get("/portal/my-commissions/list/").text
    assert row_pks(page, "/portal/my-commissions") == {world["mine"].id}
    assert world["order_a"].order_no in page and world["order_b"].order_no not in page
    assert "待结算" in page and "5.00%" in page
    # totals per status at the top: the agent's own pending commission only
    totals = page[page.index('id="commission-totals"'):page.index('id="commission-totals"') + 1500]
    assert format_fen(world["mine"].amount) in totals and "已结算" in totals and "已冲回" in totals
    # the search dropdown lists only orders the agent earned on
    assert search_options(page) == {"order": {str(world["order_a"].id)}}
    # show: own row yes; the upline's row on the same order and another agent's row are not found
    assert client.get(f"/portal/my-commissions/show/{world['mine'].id}").status_code == 200
    assert client.get(f"/portal/my-commissions/show/{world['roots'].id}").status_code == 404
    assert client.get(f"/portal/my-commissions/show/{world['bs'].id}").status_code == 404
    # URL filters cannot widen the scope
    page = client.get(f"/portal/my-commissions/list/?_flt_0_agent={world['b'].id}").text
    assert world["bs"].id not in row_pks(page, "/portal/my-commissions")
    # the upline sees its own (indirect) commission on the same order, not a's
    root = _login(app, f, world["root"].user.username)
    page = root.get("/portal/my-commissions/list/").text
    assert row_pks(page, "/portal/my-commissions") == {world["roots"].id}


def test_agent_cannot_reach_staff_commission_screens(app, f, world):
    client = _login(app, f, world["a"].user.username)
    for url in ("/settlement-runs/list/", "/commissions/list/", f"/commissions/show/{world['mine'].id}"):
        assert client.get(url).status_code in (302, 403), url
    assert client.post("/settlement/settle").status_code == 403
    assert db.session.scalar(select(SettlementRun.id)) is None
    # anonymous visitors go to the login page
    assert app.test_client().post("/settlement/settle").status_code == 302


def test_admin_settles_now_with_an_audit_entry_and_sees_the_run(app, f, world):
    admin = f.user(f.unique("admin"), role="Admin")
    client = _login(app, f, admin.username)
    page = client.get("/settlement-runs/list/").text
    assert 'id="settle-now"' in page
    r = client.post("/settlement/settle")
    assert r.status_code == 302
    run = db.session.scalar(select(SettlementRun).order_by(SettlementRun.id.desc()))
    assert r.headers["Location"].endswith(f"/settlement-runs/show/{run.id}")
    due = [world["mine"], world["roots"], world["bs"]]
    assert (run.trigger, run.actor_id, run.status, run.settled_count) == ("manual", admin.id, "done", 3)
    assert run.settled_amount == sum(c.amount for c in due)
    assert {_commission(c.order_id, c.agent_id).status for c in due} == {"settled"}
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "settlement.run"))
    assert entry.actor_id == admin.id and entry.target_id == str(run.id)
    shown = client.get(r.headers["Location"]).text
    assert "结算完成" in shown and format_fen(run.settled_amount) in shown
    assert str(run.id) in client.get("/settlement-runs/list/").text
    # every commission, to staff
    page = client.get("/commissions/list/").text
    assert row_pks(page, "/commissions") == {c.id for c in due} and "已结算" in page


def test_manager_reads_runs_and_commissions_but_cannot_settle(app, f, world):
    from app.network import settlement

    settlement.settle(trigger="cli")
    manager = f.user(f.unique("mgr"), role="Manager")
    client = _login(app, f, manager.username)
    page = client.get("/settlement-runs/list/").text
    assert "命令行" in page and 'id="settle-now"' not in page
    run_id = db.session.scalar(select(SettlementRun.id))
    assert client.get(f"/settlement-runs/show/{run_id}").status_code == 200
    assert client.get("/commissions/list/").status_code == 200
    assert client.post("/settlement/settle").status_code == 403
    assert db.session.scalar(select(SettlementRun.id).where(SettlementRun.trigger == "manual")) is None


def test_compliance_banner_on_the_tier_screens(app, f):
    admin = f.user(f.unique("admin"), role="Admin")
    client = _login(app, f, admin.username)
    tier = f.tier(direct_commission_bp=500, indirect_commission_bp=200)

    def banner() -> list[bool]:
        return [BANNER in client.get(url).text for url in ("/tiers/list/", f"/tiers/edit/{tier.id}")]

    assert banner() == [False, False]
    # indirect above direct
    tier.indirect_commission_bp = 600
    db.session.commit()
    assert banner() == [True, True]
    page = client.get("/tiers/list/").text
    assert "间接佣金（6.00%）高于直接佣金（5.00%）" in page and "入门费" in page and "拉人头" in page
    # direct + indirect above COMMISSION_WARN_TOTAL_BP (20%)
    tier.direct_commission_bp, tier.indirect_commission_bp = 1800, 500
    db.session.commit()
    assert banner() == [True, True]
    assert "合计 23.00%，超过 20.00%" in client.get("/tiers/list/").text
    tier.direct_commission_bp, tier.indirect_commission_bp = 500, 200
    db.session.commit()
    assert banner() == [False, False]
    # more than two levels
    app.config["COMMISSION_MAX_LEVELS"] = 3
    try:
        assert banner() == [True, True]
        assert "佣金层级设为 3 级" in client.get("/tiers/list/").text
    finally:
        app.config["COMMISSION_MAX_LEVELS"] = 2
    assert banner() == [False, False]
