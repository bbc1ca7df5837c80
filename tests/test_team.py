"""The team tree (团队结构): my downline nested, and per branch (each direct child's subtree) the number of agents and
the GMV of delivered orders, this month and all time, from one grouped query; other branches stay invisible.

    R ── c1 ── c11 ── c111          X ── x1   (another branch: never visible from R)
     │     └── c12
     ├── c2 ── c21
     └── c3
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, update

from app.network import team
from app.orders import service as orders
from app.orders.models import Order

UNIT = 9000  # face 100.00 at a 90% tier discount


@pytest.fixture
def world(f, db):
    tier = f.tier(discount_bp=9000, rank=30)
    product = f.product(face_price=10000, secrets=30)
    a = {}

    def make(key, parent=None):
        a[key] = f.agent(f"{key}_{f.unique('t')}", parent=a[parent] if parent else None, tier_obj=tier,
                         balance=1_000_000)

    for key, parent in [("R", None), ("c1", "R"), ("c11", "c1"), ("c111", "c11"), ("c12", "c1"), ("c2", "R"),
                        ("c21", "c2"), ("c3", "R"), ("X", None), ("x1", "X")]:
        make(key, parent)

    def buy(key, quantity):
        order = orders.place_wallet_order(a[key].id, product.id, quantity)
        assert order.status == "delivered" and order.amount == UNIT * quantity
        return order

    buy("R", 1)  # the viewer's own order: in no branch
    buy("c1", 1)  # 9000 this month
    last_month = buy("c11", 2)  # 18000, delivered last month
    buy("c111", 1)  # 9000 this month
    buy("c21", 3)  # 27000 this month
    buy("x1", 4)  # another tree
    db.session.execute(update(Order).where(Order.id == last_month.id)
                       .values(delivered_at=team.month_start() - timedelta(days=1)))
    # an unpaid order counts for nothing
    db.session.add(Order(order_no=f.unique("P"), agent_id=a["c111"].id, product_id=product.id,
                         supplier_id=product.supplier_id, quantity=5, face_price=10000, unit_price=UNIT,
                         amount=5 * UNIT, cost_total=40000, status="pending_payment", channel="wallet"))
    db.session.commit()
    return a


def stats_by_name(branches, world) -> dict:
    names = {agent.id: key for key, agent in world.items()}
    return {names[b.agent_id]: (b.agents, b.gmv_month, b.gmv_total) for b in branches}


def test_branch_counts_and_gmv_match_hand_computed_values(app, db, world):
    assert stats_by_name(team.branch_stats(world["R"]), world) == {
        "c1": (4, 18000, 36000),  # c1, c11, c12, c111: 9000 + 9000 this month, + 18000 last month
        "c2": (2, 27000, 27000),
        "c3": (1, 0, 0),
    }
    assert stats_by_name(team.branch_stats(world["c1"]), world) == {"c11": (2, 9000, 27000), "c12": (1, 0, 0)}
    assert team.branch_stats(world["c111"]) == []
    assert stats_by_name(team.branch_stats(world["X"]), world) == {"x1": (1, 36000, 36000)}
    view = team.team_view(world["R"])
    assert (view["totals"].agents, view["totals"].gmv_month, view["totals"].gmv_total) == (7, 45000, 63000)


def test_branch_stats_is_one_query(app, db, world):
    viewer = world["R"]
    assert viewer.path  # loaded before counting
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        team.branch_stats(viewer)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(statements) == 1


def test_tree_nests_the_downline_only(app, db, world):
    root = team.tree(world["R"])

    def shape(node):
        return {node.id: {k: v for child in node.children for k, v in shape(child).items()}}

    w = {k: v.id for k, v in world.items()}
    assert shape(root) == {w["R"]: {w["c1"]: {w["c11"]: {w["c111"]: {}}, w["c12"]: {}},
                                    w["c2"]: {w["c21"]: {}}, w["c3"]: {}}}
    assert team.tree(world["c11"]).children[0].depth == 1


def test_team_page_shows_my_branches_and_hides_others(app, db, f, client, world):
    f.login(client, world["R"].name)
    page = client.get("/portal/team-tree/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for key in ("c1", "c11", "c111", "c12", "c2", "c21", "c3"):
        assert f'data-agent-id="{world[key].id}"' in html
    for key in ("X", "x1"):
        assert world[key].name not in html
    assert f'<tr data-branch-id="{world["c1"].id}">' in html and "¥360.00" in html and "¥180.00" in html
    assert 'id="team-total-agents">7<' in html

    # a lower agent sees only its own subtree: not its upline, not its siblings
    c1 = app.test_client()
    f.login(c1, world["c1"].name)
    html = c1.get("/portal/team-tree/").get_data(as_text=True)
    assert f'data-agent-id="{world["c111"].id}"' in html
    for key in ("R", "c2", "c21", "c3", "X", "x1"):
        assert f'data-agent-id="{world[key].id}"' not in html and world[key].name not in html
    assert 'id="team-total-agents">3<' in html


def test_team_page_needs_an_agent(app, f, client):
    staff = f.user(role="Manager")
    f.login(client, staff.username)
    assert client.get("/portal/team-tree/").status_code in (302, 403)
    anonymous = app.test_client()
    assert anonymous.get("/portal/team-tree/").status_code == 302
