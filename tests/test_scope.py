"""Row scope through every portal screen: an agent sees and acts on itself and its downline, never another branch
(lists, show, edit, actions, search dropdowns, URL filters, paging); staff roles see what their role allows; anonymous
users go to the login page.

Two branches: A (a1 → a2 → a3) and B (b1 → b2), each agent with a login and a delivered card order.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from app.agents.models import Agent, Tier
from app.catalog import cards
from app.catalog.models import CardSecret
from app.ledger.models import Account, Journal, Posting
from app.orders import service as orders
from app.orders.models import Order


@dataclass
class Member:
    agent: Agent
    order: Order
    secrets: list[str]

    @property
    def id(self) -> int:
        return self.agent.id

    @property
    def name(self) -> str:
        return self.agent.name


@pytest.fixture
def world(f, db):
    tier = f.tier(discount_bp=9000)
    product = f.product(face_price=10000, secrets=20)
    members = {}

    def make(key, parent=None):
        agent = f.agent(f"{key}_{f.unique('x')}", parent=members[parent].agent if parent else None, tier_obj=tier,
                        balance=100_000)
        order = orders.place_wallet_order(agent.id, product.id, 2)
        members[key] = Member(agent, order, cards.reveal(order.id))

    make("a1")
    make("a2", "a1")
    make("a3", "a2")
    make("b1")
    make("b2", "b1")
    members["product"] = product
    members["tier"] = tier
    return members


BRANCH_A = ("a1", "a2", "a3")
BRANCH_B = ("b1", "b2")
IN_SCOPE = {"a1": BRANCH_A, "a2": ("a2", "a3"), "a3": ("a3",), "b1": BRANCH_B, "b2": ("b2",)}
EVERYONE = BRANCH_A + BRANCH_B


def login(f, client, world, key):
    f.login(client, world[key].name)
    return world[key]


def row_pks(page: str, route: str) -> set[int]:
    return {int(pk) for pk in re.findall(rf'href="{re.escape(route)}/show/(\d+)"', page)}


def search_options(page: str) -> dict[str, set[str]]:
    """The <option> values of every relation select FAB renders in a list page's search form (they sit in a JSON
    object handed to AdminFilters)."""
    block = re.search(r"new AdminFilters\((.*?)\);", page, re.S)
    assert block, "no search form on the page"
    options = {}
    for line in block.group(1).splitlines():
        line = line.strip().rstrip(",")
        if not line.startswith("{"):
            continue
        for column, widget in json.loads(line).items():
            if isinstance(widget, str) and "<select" in widget:
                options[column] = {v for v in re.findall(r'<option[^>]*value="([^"]*)"', widget) if v != "__None"}
    return options


def active(db, member) -> bool:
    return db.session.scalar(select(Agent.active).where(Agent.id == member.id))


def name_of(db, member) -> str:
    return db.session.scalar(select(Agent.name).where(Agent.id == member.id))


# ---------------------------------------------------------------------------------------------------- my orders

@pytest.mark.parametrize("viewer", ["a1", "a2", "a3", "b1", "b2"])
def test_my_orders_list_shows_only_the_subtree(f, client, world, viewer):
    login(f, client, world, viewer)
    page = client.get("/portal/my-orders/list/").text
    expected = {world[k].order.id for k in IN_SCOPE[viewer]}
    assert row_pks(page, "/portal/my-orders") == expected
    for key in EVERYONE:
        assert (world[key].order.order_no in page) == (key in IN_SCOPE[viewer]), key
        for secret in world[key].secrets:
            assert secret not in page


def test_my_orders_show_is_404_outside_the_subtree(f, client, world):
    login(f, client, world, "a2")
    for key in EVERYONE:
        r = client.get(f"/portal/my-orders/show/{world[key].order.id}")
        if key in IN_SCOPE["a2"]:
            assert r.status_code == 200 and world[key].order.order_no in r.text
            assert not any(s in r.text for s in world[key].secrets)
        else:
            assert r.status_code == 404, key  # the upline a1 and the whole B branch


def test_order_page_secrets_only_for_the_owner(f, client, world):
    login(f, client, world, "a1")
    own = client.get(f"/portal/orders/{world['a1'].order.order_no}")
    assert own.status_code == 200
    assert own.text.count('class="card-secret"') == 2 and all(s in own.text for s in world["a1"].secrets)

    for key in ("a2", "a3"):  # downline: visible, without secrets
        r = client.get(f"/portal/orders/{world[key].order.order_no}")
        assert r.status_code == 200 and world[key].order.order_no in r.text
        assert 'class="card-secret"' not in r.text and not any(s in r.text for s in world[key].secrets)
        assert "卡密仅下单人可见" in r.text

    for key in BRANCH_B:
        r = client.get(f"/portal/orders/{world[key].order.order_no}")
        assert r.status_code == 404 and world[key].order.order_no not in r.text
    assert client.get("/portal/orders/NO-SUCH-ORDER").status_code == 404

    client.get("/logout/")
    login(f, client, world, "a3")  # the upline's order is as unknown as another branch's
    assert client.get(f"/portal/orders/{world['a1'].order.order_no}").status_code == 404
    assert client.get(f"/portal/orders/{world['a2'].order.order_no}").status_code == 404


def test_my_orders_url_filters_order_and_paging_cannot_widen_the_scope(f, client, world):
    login(f, client, world, "a2")
    inside = {world[k].order.id for k in IN_SCOPE["a2"]}
    queries = [f"_flt_0_agent={world['b1'].id}", f"_flt_1_agent={world['a2'].id}", f"_flt_0_agent={world['a1'].id}",
               "_flt_0_order_no=", "_flt_2_order_no=", "_flt_1_status=nothing",
               "_oc_MyOrderView=agent&_od_MyOrderView=asc",
               "_oc_MyOrderView=order_no&_od_MyOrderView=desc", "_flt_0_agent_id=1", "_flt_0_id=1"]
    for query in queries:
        r = client.get(f"/portal/my-orders/list/?{query}", follow_redirects=True)
        assert r.status_code in (200, 400), query
        assert row_pks(r.text, "/portal/my-orders") <= inside, query

    seen = set()
    for page in range(5):
        r = client.get(f"/portal/my-orders/list/?psize_MyOrderView=1&page_MyOrderView={page}")
        assert r.status_code == 200
        seen |= row_pks(r.text, "/portal/my-orders")
    assert seen == inside
    for query in ("page_MyOrderView=-1", "psize_MyOrderView=-1", "page_MyOrderView=x", "psize_MyOrderView=99999",
                  "_oc_MyOrderView=agent_id;drop&_od_MyOrderView=asc"):
        assert client.get(f"/portal/my-orders/list/?{query}").status_code == 400, query


def test_search_dropdowns_list_only_rows_in_scope(f, client, world, db):
    login(f, client, world, "a2")
    inside = {str(world[k].id) for k in IN_SCOPE["a2"]}
    assert search_options(client.get("/portal/my-orders/list/").text) == {"agent": inside}
    assert search_options(client.get("/portal/my-team/list/").text) == {"parent": inside}
    own_accounts = {str(i) for i in db.session.scalars(select(Account.id).where(Account.agent_id == world["a2"].id))}
    assert len(own_accounts) == 3
    assert search_options(client.get("/portal/my-statement/list/").text) == {"account": own_accounts}
    # the team edit form has no relation dropdown at all
    page = client.get(f"/portal/my-team/edit/{world['a3'].id}").text
    assert "<select" not in page and 'name="name"' in page


# ---------------------------------------------------------------------------------------------------- my team

@pytest.mark.parametrize("viewer", ["a1", "a2", "b1"])
def test_my_team_list_and_show(f, client, world, viewer):
    login(f, client, world, viewer)
    page = client.get("/portal/my-team/list/").text
    assert row_pks(page, "/portal/my-team") == {world[k].id for k in IN_SCOPE[viewer]}
    other = BRANCH_B if viewer.startswith("a") else BRANCH_A
    for key in other:
        assert world[key].name not in page
        assert client.get(f"/portal/my-team/show/{world[key].id}").status_code == 404
        assert client.get(f"/portal/my-team/edit/{world[key].id}").status_code == 404
    for key in IN_SCOPE[viewer]:
        r = client.get(f"/portal/my-team/show/{world[key].id}")
        assert r.status_code == 200 and world[key].name in r.text


def test_my_team_list_filters_cannot_widen_the_scope(f, client, world):
    login(f, client, world, "a2")
    inside = {world[k].id for k in IN_SCOPE["a2"]}
    for query in (f"_flt_0_parent={world['b1'].id}", f"_flt_1_parent={world['a2'].id}", "_flt_0_name=b",
                  "_flt_0_active=y", "_oc_MyDownlineView=name&_od_MyDownlineView=asc", "_flt_0_path=/"):
        r = client.get(f"/portal/my-team/list/?{query}", follow_redirects=True)
        assert r.status_code in (200, 400), query
        assert row_pks(r.text, "/portal/my-team") <= inside, query


def test_my_team_edit_cannot_touch_another_branch(f, client, world, db):
    login(f, client, world, "a1")
    for key in BRANCH_B:
        r = client.post(f"/portal/my-team/edit/{world[key].id}", data={"name": "hijacked", "phone": "1"})
        assert r.status_code == 404
    assert {name_of(db, world[k]) for k in BRANCH_B} == {world[k].name for k in BRANCH_B}

    # the upline cannot be edited from below either
    client.get("/logout/")
    login(f, client, world, "a2")
    assert client.post(f"/portal/my-team/edit/{world['a1'].id}", data={"name": "hijacked"}).status_code == 404
    assert name_of(db, world["a1"]) == world["a1"].name

    # inside the subtree only name and phone can change (not the tier, parent or active flag)
    other_tier = Tier(name="其他", rank=1, discount_bp=5000)
    db.session.add(other_tier)
    db.session.commit()
    r = client.post(f"/portal/my-team/edit/{world['a3'].id}",
                    data={"name": "三号", "phone": "13900000000", "tier": other_tier.id, "parent": world["b1"].id,
                          "active": "", "path": "/", "user": world["a1"].agent.user_id})
    assert r.status_code == 302
    db.session.expire_all()
    a3 = db.session.get(Agent, world["a3"].id)
    assert (a3.name, a3.phone) == ("三号", "13900000000")
    assert (a3.tier_id, a3.parent_id, a3.active) == (world["tier"].id, world["a2"].id, True)
    assert a3.path.startswith(db.session.get(Agent, world["a2"].id).path)


def test_my_team_has_no_add_or_delete(f, client, world, db):
    login(f, client, world, "a1")
    before = db.session.scalar(select(func.count()).select_from(Agent))
    assert client.get("/portal/my-team/add").status_code == 403
    assert client.post("/portal/my-team/add", data={"name": "x"}).status_code == 403
    for key in ("a2", "b1"):
        assert client.post(f"/portal/my-team/delete/{world[key].id}").status_code == 403
        assert client.get(f"/portal/my-team/delete/{world[key].id}").status_code == 403
    assert client.get("/portal/my-orders/add").status_code == 403
    assert client.post(f"/portal/my-orders/edit/{world['a1'].order.id}").status_code == 403
    assert client.post(f"/portal/my-orders/delete/{world['b1'].order.id}").status_code == 403
    assert client.get("/portal/my-statement/show/1").status_code == 403
    assert client.get("/portal/my-orders/download/x.txt").status_code in (403, 404)
    assert db.session.scalar(select(func.count()).select_from(Agent)) == before
    assert db.session.scalar(select(func.count()).select_from(Order)) == 5


def test_disable_action_outside_the_subtree_changes_nothing(f, client, world, db):
    login(f, client, world, "a2")
    # POSTed from the list with other branches' rows, the upline and yourself
    for rowid in (world["b1"].id, world["b2"].id, world["a1"].id, world["a2"].id):
        r = client.post("/portal/my-team/action_post", data={"action": "disable", "rowid": str(rowid)})
        assert r.status_code == 302
    r = client.post("/portal/my-team/action_post",
                    data={"action": "disable", "rowid": [str(world["b1"].id), str(world["a1"].id)]},
                    follow_redirects=True)
    assert "已停用 0 个下级代理" in r.text
    # the single-row action URL
    for key in ("b1", "a1", "a2"):
        assert client.post(f"/portal/my-team/action/disable/{world[key].id}").status_code == 302
        # GET would be a mutation without a CSRF token: refused outright
        assert client.get(f"/portal/my-team/action/disable/{world[key].id}").status_code == 302
    assert all(active(db, world[k]) for k in EVERYONE)

    # unknown rows and unknown actions are not found
    assert client.post("/portal/my-team/action_post", data={"action": "disable", "rowid": "999999"}).status_code \
        in (302, 404)
    assert client.post("/portal/my-team/action_post", data={"action": "disable", "rowid": "abc"}).status_code == 404
    assert client.post("/portal/my-team/action_post", data={"action": "delete", "rowid": "1"}).status_code == 404
    assert client.post(f"/portal/my-team/action/enable/{world['a3'].id}").status_code == 404
    assert all(active(db, world[k]) for k in EVERYONE)

    # the positive control: a real downline is disabled
    r = client.post("/portal/my-team/action_post",
                    data={"action": "disable", "rowid": [str(world["a3"].id), str(world["b2"].id)]},
                    follow_redirects=True)
    assert "已停用 1 个下级代理" in r.text
    assert not active(db, world["a3"])
    assert all(active(db, world[k]) for k in ("a1", "a2", "b1", "b2"))


def test_disable_action_on_a_single_row_inside_the_subtree(f, client, world, db):
    login(f, client, world, "a1")
    assert client.post(f"/portal/my-team/action/disable/{world['a2'].id}").status_code == 302
    assert not active(db, world["a2"]) and active(db, world["a1"]) and active(db, world["a3"])


# ---------------------------------------------------------------------------------------------------- statement

@pytest.mark.parametrize("viewer", ["a1", "a2", "b2"])
def test_my_statement_shows_only_own_postings(f, client, world, db, viewer):
    me = login(f, client, world, viewer)
    page = client.get("/portal/my-statement/list/?psize_MyStatementView=100").text
    own_accounts = set(db.session.scalars(select(Account.id).where(Account.agent_id == me.id)))
    own_postings = db.session.scalar(select(func.count()).where(Posting.account_id.in_(own_accounts)))
    assert own_postings == 2  # the funding and the purchase
    rows = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # not the search dropdown
    assert rows.count(f"agent:{me.id}:wallet") == own_postings
    for key in EVERYONE:
        if world[key].id != me.id:
            assert f"agent:{world[key].id}:" not in page, key
    # journals of the purchase: own order only
    assert world[viewer].order.order_no in page
    for key in EVERYONE:
        if key != viewer:
            assert world[key].order.order_no not in page
    for query in (f"_flt_0_account={own_accounts.pop()}", "_flt_0_account=1", "_flt_1_account=1"):
        r = client.get(f"/portal/my-statement/list/?{query}", follow_redirects=True)
        assert r.status_code in (200, 400)
        assert not any(f"agent:{world[k].id}:" in r.text for k in EVERYONE if world[k].id != me.id)
        assert "platform:" not in r.text


# ---------------------------------------------------------------------------------------------------- buy

def test_buy_page_and_purchase_use_only_the_logged_in_agent(f, client, world, db):
    login(f, client, world, "a2")
    page = client.get("/portal/buy")
    assert page.status_code == 200
    assert world["product"].name in page.text and "¥820.00" in page.text  # a2's own wallet: 1000 - 2 × 90
    before = {k: f.wallet(world[k].agent) for k in EVERYONE}
    r = client.post("/portal/buy", data={"product_id": world["product"].id, "quantity": "1",
                                         "agent_id": world["b1"].id, "agent": world["b1"].id})
    assert r.status_code == 302
    order = db.session.scalar(select(Order).order_by(Order.id.desc()))
    assert order.agent_id == world["a2"].id and order.amount == 9000  # the server's price, not an input
    after = {k: f.wallet(world[k].agent) for k in EVERYONE}
    assert after == {**before, "a2": before["a2"] - 9000}
    r = client.post("/portal/buy", data={"product_id": world["product"].id, "quantity": "1", "price": "1"})
    assert db.session.scalar(select(Order).order_by(Order.id.desc())).amount == 9000


# ---------------------------------------------------------------------------------------------------- admin views

ADMIN_PAGES = [
    "/orders/list/", "/orders/show/1", "/agents/list/", "/agents/show/1", "/agents/add", "/agents/edit/1",
    "/tiers/list/", "/tiers/add", "/tiers/edit/1", "/tiers/show/1", "/categories/list/", "/products/list/",
    "/products/add", "/tier-prices/list/", "/price-rules/list/", "/suppliers/list/", "/card-secrets/list/",
    "/card-secrets/show/1", "/card-import/", "/card-imports/list/", "/stock-alerts/list/",
    "/ledger/accounts/list/", "/ledger/journals/list/", "/ledger/postings/list/", "/wallet-adjust/form",
    "/users/list/", "/users/add", "/roles/list/", "/permissions/list/", "/viewmenus/list/", "/permissionviews/list/",
    "/userstatschartview/chart/", "/audit/list/", "/audit/show/1", "/resetpassword/form?pk=1",
]
ADMIN_POSTS = [
    ("/tiers/add", {"name": "x", "rank": "1", "discount_bp": "1", "settle_days": "1"}),
    ("/tiers/edit/1", {"name": "x"}),
    ("/agents/edit/1", {"name": "x"}),
    ("/agents/add", {"name": "x"}),
    ("/wallet-adjust/form", {"agent": "1", "amount": "1000", "reason": "x"}),
    ("/card-import/", {"product_id": "1", "text": "AAAA-BBBB", "confirm": "1"}),
    ("/users/add", {"username": "evil"}),
    ("/agents/delete/4", {}),
    ("/orders/delete/1", {}),
]


def test_agents_are_refused_every_admin_view(f, client, world, db):
    login(f, client, world, "a1")
    for url in ADMIN_PAGES:
        r = client.get(url)
        assert r.status_code == 403, (url, r.status_code)
    journals = db.session.scalar(select(func.count()).select_from(Journal))
    for url, data in ADMIN_POSTS:
        r = client.post(url, data=data)
        assert r.status_code == 403, (url, r.status_code)
    assert db.session.scalar(select(func.count()).select_from(Journal)) == journals
    assert db.session.scalar(select(func.count()).select_from(Agent)) == 5
    assert db.session.scalar(select(func.count()).select_from(Tier)) == 1
    assert f.wallet(world["a1"].agent) == 100_000 - 18_000
    # admin actions through FAB's action endpoints: there are none, and nothing answers 500
    assert client.post("/agents/action_post", data={"action": "disable", "rowid": "4"}).status_code == 404
    assert client.post("/orders/action/refund/1").status_code == 404
    # FAB's menu API needs its own permission
    assert client.get("/api/v1/menu/").status_code in (401, 403)


def test_agent_menu_shows_only_the_portal(f, client, world):
    login(f, client, world, "a1")
    page = client.get("/").text
    for link in ('href="/portal/buy"', 'href="/portal/my-orders/list/"', 'href="/portal/my-team/list/"',
                 'href="/portal/my-statement/list/"'):
        assert link in page
    for link in ("/orders/list/", "/agents/list/", "/tiers/list/", "/wallet-adjust/form", "/users/list/",
                 "/audit/list/", "/card-import/"):
        assert f'href="{link}"' not in page
    assert client.get("/users/userinfo/").status_code == 200
    assert client.get("/userinfoeditview/form").status_code == 200


def test_modelviews_have_no_json_api_endpoints(f, client, world):
    """FAB 5's ModelView registers no /api/... routes (the old RestCRUDView JSON endpoints are gone)."""
    login(f, client, world, "a1")
    for url in ("/portal/my-team/api", "/portal/my-team/api/read", f"/portal/my-team/api/get/{world['b1'].id}",
                "/portal/my-team/api/column/edit/parent", "/portal/my-orders/api/read", "/orders/api/read",
                "/api/v1/agent/", "/api/v1/order/"):
        assert client.get(url).status_code == 404, url
    from flask import current_app
    assert not [r.rule for r in current_app.url_map.iter_rules()
                if re.match(r"^/portal/my-[a-z-]+/api", r.rule) or re.match(r"^/(orders|agents|tiers)/api", r.rule)]


def test_anonymous_users_are_sent_to_login(client, world):
    urls = ["/portal/buy", "/portal/my-orders/list/", f"/portal/my-orders/show/{world['a1'].order.id}",
            f"/portal/orders/{world['a1'].order.order_no}", "/portal/my-team/list/",
            f"/portal/my-team/show/{world['a1'].id}", f"/portal/my-team/edit/{world['a1'].id}",
            "/portal/my-statement/list/", "/orders/list/", "/agents/list/", "/tiers/list/", "/wallet-adjust/form",
            "/card-import/", "/card-secrets/list/", "/audit/list/", "/users/list/"]
    for url in urls:
        r = client.get(url)
        assert r.status_code == 302 and "/login/" in r.headers["Location"], (url, r.status_code)
    r = client.post("/portal/buy", data={"product_id": world["product"].id, "quantity": "1"})
    assert r.status_code == 302 and "/login/" in r.headers["Location"]
    r = client.post("/portal/my-team/action_post", data={"action": "disable", "rowid": str(world["a2"].id)})
    assert r.status_code == 302
    r = client.post(f"/portal/my-team/edit/{world['a2'].id}", data={"name": "anon"})
    assert r.status_code == 302 and "/login/" in r.headers["Location"]
    from app.extensions import db
    assert db.session.scalar(select(Agent.active).where(Agent.id == world["a2"].id)) is True
    assert db.session.scalar(select(Agent.name).where(Agent.id == world["a2"].id)) == world["a2"].name
    assert db.session.scalar(select(func.count()).select_from(Order)) == 5


# ---------------------------------------------------------------------------------------------------- staff

def staff(f, client, role):
    user = f.user(f.unique(role.lower()), role=role)
    f.login(client, user.username)
    return user


def test_support_finds_orders_and_agents_but_sees_secrets_masked(f, client, world, db):
    staff(f, client, "Support")
    page = client.get("/orders/list/?psize_OrderView=100").text
    assert all(world[k].order.order_no in page for k in EVERYONE)
    assert client.get("/agents/list/").status_code == 200
    shown = client.get(f"/orders/show/{world['a1'].order.id}")
    assert shown.status_code == 200 and world["a1"].order.order_no in shown.text
    secrets_page = client.get("/card-secrets/list/?psize_CardSecretView=100").text
    sold = [s for k in EVERYONE for s in world[k].secrets]
    for page in (shown.text, secrets_page, client.get(f"/agents/show/{world['a1'].id}").text):
        assert not any(s in page for s in sold)
    from app.crypto import mask
    assert mask(world["a1"].secrets[0]) in secrets_page
    secret_id = db.session.scalar(select(func.min(CardSecret.id)))
    assert client.get(f"/card-secrets/show/{secret_id}").status_code == 200
    # the owner's page is for agents only
    assert client.get(f"/portal/orders/{world['a1'].order.order_no}").status_code == 403
    for url in ("/wallet-adjust/form", f"/tiers/edit/{world['tier'].id}", "/tiers/list/", "/card-import/",
                "/ledger/journals/list/", "/audit/list/", "/users/list/", f"/agents/edit/{world['a1'].id}",
                "/agents/add", "/portal/my-team/list/"):
        assert client.get(url).status_code == 403, url
    r = client.post("/wallet-adjust/form", data={"agent": world["a1"].id, "amount": "1000", "reason": "x"})
    assert r.status_code == 403 and f.wallet(world["a1"].agent) == 82_000
    r = client.post(f"/agents/edit/{world['a1'].id}", data={"name": "x", "tier": world["tier"].id})
    assert r.status_code == 403 and name_of(db, world["a1"]) == world["a1"].name


def test_manager_reads_tiers_but_cannot_edit_them(f, client, world, db):
    staff(f, client, "Manager")
    tier = world["tier"]
    assert client.get("/tiers/list/").status_code == 200
    assert client.get(f"/tiers/show/{tier.id}").status_code == 200
    for url in (f"/tiers/edit/{tier.id}", "/tiers/add", f"/tiers/delete/{tier.id}", "/wallet-adjust/form",
                "/card-import/", f"/products/edit/{world['product'].id}", "/users/list/"):
        assert client.get(url).status_code == 403, url
    r = client.post(f"/tiers/edit/{tier.id}", data={"name": tier.name, "discount_bp": "10", "rank": "1",
                                                    "settle_days": "1"})
    assert r.status_code == 403
    db.session.expire_all()
    assert db.session.get(Tier, tier.id).discount_bp == 9000
    for url in ("/orders/list/", "/agents/list/", "/ledger/journals/list/", "/audit/list/", "/card-secrets/list/"):
        assert client.get(url).status_code == 200, url
    assert client.get(f"/portal/orders/{world['a1'].order.order_no}").status_code == 403


def test_admin_sees_secrets_masked_too(f, client, world):
    staff(f, client, "Admin")
    sold = [s for k in EVERYONE for s in world[k].secrets]
    for url in (f"/orders/show/{world['a1'].order.id}", "/card-secrets/list/?psize_CardSecretView=100",
                "/orders/list/", "/card-imports/list/", "/card-imports/show/1"):
        r = client.get(url)
        assert r.status_code == 200, url
        assert not any(s in r.text for s in sold), url
    assert client.get(f"/portal/orders/{world['a1'].order.order_no}").status_code == 403


# ---------------------------------------------------------------------------------------------------- open API screens

@pytest.fixture
def api_world(world, db):
    """An API key and a callback attempt for every agent."""
    from app.openapi import service as openapi
    from app.openapi.models import CallbackAttempt
    from app.outbox.models import OutboxMessage

    for key in EVERYONE:
        member = world[key]
        api_key, _secret = openapi.create_key(member.id, f"key-{key}")
        member.api_key = api_key
        message = OutboxMessage(topic="order_callback", key=f"test:{key}", payload="{}", status="done")
        db.session.add(message)
        db.session.flush()
        attempt = CallbackAttempt(order_id=member.order.id, agent_id=member.id, outbox_id=message.id, attempt=1,
                                  url=f"https://cb.example.com/{key}-hook", order_status="delivered",
                                  http_status=200, succeeded=True)
        db.session.add(attempt)
        db.session.flush()
        member.callback = attempt
    db.session.commit()
    return world


def test_api_keys_page_shows_and_revokes_only_own_keys(f, client, api_world, db):
    from app.openapi.models import ApiKey

    world = api_world
    login(f, client, world, "a1")
    page = client.get("/portal/api-keys/").text
    assert world["a1"].api_key.app_key in page and world["a1"].order.order_no in page  # its callback attempt
    for key in EVERYONE[1:]:  # not even the downline's keys or callbacks: they are personal
        assert world[key].api_key.app_key not in page and world[key].order.order_no not in page
    for key in ("a2", "b1"):
        r = client.post(f"/portal/api-keys/revoke/{world[key].api_key.id}", follow_redirects=True)
        assert r.status_code == 200 and "密钥不存在" in r.text
    assert client.post("/portal/api-keys/revoke/99999999999").status_code == 404
    assert all(db.session.scalar(select(ApiKey.active).where(ApiKey.id == world[k].api_key.id)) for k in EVERYONE)
    r = client.post(f"/portal/api-keys/revoke/{world['a1'].api_key.id}")
    assert r.status_code == 302
    assert db.session.scalar(select(ApiKey.active).where(ApiKey.id == world["a1"].api_key.id)) is False


def test_my_callbacks_show_only_own_attempts(f, client, api_world):
    world = api_world
    login(f, client, world, "a1")
    page = client.get("/portal/my-callbacks/list/").text
    assert row_pks(page, "/portal/my-callbacks") == {world["a1"].callback.id}
    for key in EVERYONE[1:]:
        assert client.get(f"/portal/my-callbacks/show/{world[key].callback.id}").status_code == 404
        assert world[key].order.order_no not in page
    r = client.get(f"/portal/my-callbacks/show/{world['a1'].callback.id}")
    assert r.status_code == 200 and "a1-hook" in r.text
    for url in ("/api-keys/list/", f"/api-keys/show/{world['b1'].api_key.id}", "/callback-attempts/list/"):
        assert client.get(url).status_code == 403, url
    assert client.post("/api-keys/action_post", data={"action": "revoke", "rowid": str(world["b1"].api_key.id)}
                       ).status_code == 302  # FAB: no permission, flash and redirect
    from app.extensions import db
    from app.openapi.models import ApiKey
    assert db.session.scalar(select(ApiKey.active).where(ApiKey.id == world["b1"].api_key.id)) is True
