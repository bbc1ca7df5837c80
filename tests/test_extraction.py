"""Bulk extraction (批量提卡): a reseller buys 200 cards in one order and takes their secrets as a file (TXT, CSV,
XLSX) from the portal, for one order or a range of days, or from the Open API (TXT, CSV); downloads are scoped to
the agent's own orders, streamed, formula-safe, not cached, audited and counted; a 200-card order works end to end."""
from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, text

from app.audit.models import AuditEntry
from app.catalog import cards, extraction
from app.catalog.models import CardSecret, CardSecretUse, SecretDownload
from app.cells import safe_cell
from app.chain.models import ChainRecord
from app.clock import business_today, utcnow
from app.extensions import db
from app.ledger.invariants import check_ledger
from app.ledger.models import Journal
from app.orders import service as orders
from app.orders.models import Order
from app.payments import service as payments
from tests.openapi_helpers import assert_error, new_key, signed_call

NASTY = ["=HYPERLINK(\"http://x\")", "-1234567", "+ABCD-01", "@SUM(A1)"]


@pytest.fixture
def bulk(f):
    """An agent (with a login and an API key) and a card product of 230 secrets, four of them spreadsheet-hostile,
    sold up to 500 per order."""
    tier = f.tier(discount_bp=10000)
    agent = f.agent(balance=10_000_000, tier_obj=tier)
    product = f.product(face_price=100, cost=50, max_per_order=500)
    lines = NASTY + [f"BULK-{uuid.uuid4().hex[:8]}-{i:04d} {i:08d}" for i in range(226)]
    cards.run_import(cards.create_import(product.id, "\n".join(lines), None, "paste").id)
    key, secret = new_key(agent)
    return type("Bulk", (), {"agent": agent, "product": product, "lines": lines, "key": key, "secret": secret})


def portal_of(app, f, agent):
    return f.login(app.test_client(), agent.user.username)


def sold_secrets(order_id: int) -> list[str]:
    """The order's secrets in id order, straight from the database (not through the code under test)."""
    db.session.rollback()
    from app import crypto

    return [crypto.decrypt(t) for t in db.session.scalars(
        select(CardSecret.secret_enc).where(CardSecret.order_id == order_id).order_by(CardSecret.id))]


def downloads_of(order_id: int) -> int:
    db.session.rollback()
    return db.session.scalar(select(SecretDownload.downloads).where(SecretDownload.order_id == order_id)) or 0


def extract_audits() -> list[dict]:
    import json

    db.session.rollback()
    rows = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "card.extract").order_by(AuditEntry.id))
    return [{"target": e.target_id, "actor": e.actor_id, **json.loads(e.new_value)} for e in rows]


def csv_rows(body: bytes) -> list[list[str]]:
    assert body.startswith("\ufeff".encode())
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))


def xlsx_rows(body: bytes):
    from openpyxl import load_workbook

    return list(load_workbook(io.BytesIO(body)).worksheets[0].iter_rows())


def count_statements(call) -> int:
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        call()
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    return len(statements)


# --- a 200-card order, end to end ----------------------------------------------------------------------------

def test_a_200_card_order_is_delivered_chained_and_downloaded_in_each_format(app, f, bulk):
    portal = portal_of(app, f, bulk.agent)

    # when the agent buys 200 cards in one portal order
    r = portal.post("/portal/buy", data={"product_id": bulk.product.id, "quantity": "200"})
    assert r.status_code == 302, r.get_data(as_text=True)
    order = db.session.scalar(select(Order).where(Order.agent_id == bulk.agent.id))
    order_no, order_id = order.order_no, order.id

    # then it is delivered with 200 distinct secrets, one sale journal and its chain record covering all 200
    assert (order.status, order.quantity, order.amount) == ("delivered", 200, 200 * 100)
    secrets = sold_secrets(order_id)
    assert len(secrets) == len(set(secrets)) == 200 and set(secrets) <= set(bulk.lines)
    assert db.session.scalar(select(func.count()).where(Journal.order_id == order_id, Journal.kind == "sale")) == 1
    assert db.session.scalar(select(func.count()).where(ChainRecord.kind == "delivery",
                                                        ChainRecord.source_key == order_no)) == 1
    verified = app.test_cli_runner().invoke(args=["kameng", "chain", "verify"])
    assert verified.exit_code == 0, verified.output

    # and the order page shows them a hundred at a time, in as many statements as a 2-card order's page
    page = portal.get(f"/portal/orders/{order_no}").get_data(as_text=True)
    assert page.count('class="card-secret"') == 100 and "第 1 / 2 页" in page and "已下载 0 次" in page
    second = portal.get(f"/portal/orders/{order_no}?page=2").get_data(as_text=True)
    shown = re.findall(r'<code class="card-secret">([^<]*)</code>', page + second)
    from markupsafe import escape

    assert shown == [str(escape(s)) for s in secrets]
    small = orders.place_wallet_order(bulk.agent.id, bulk.product.id, 2)
    small_no = small.order_no
    portal.get(f"/portal/orders/{small_no}")  # the session's first request after the test's own work reloads the user
    small_page = count_statements(lambda: portal.get(f"/portal/orders/{small_no}"))
    big_page = count_statements(lambda: portal.get(f"/portal/orders/{order_no}"))
    assert big_page == small_page, (big_page, small_page)

    # when it downloads the order as TXT, CSV and XLSX
    files = {}
    for fmt in ("txt", "csv", "xlsx"):
        r = portal.post(f"/portal/orders/{order_no}/secrets", data={"format": fmt})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.headers["Content-Disposition"] == f'attachment; filename="{order_no}.{fmt}"'
        assert r.headers["Cache-Control"] == "no-store" and r.is_streamed
        files[fmt] = r.get_data()

    # then TXT is the 200 secrets exactly, one per line
    assert files["txt"].decode().split("\r\n") == [*secrets, ""]
    # CSV: a header, then order number, product, secret (formula-safe), delivery time per secret
    rows = csv_rows(files["csv"])
    assert rows[0] == ["订单号", "商品", "卡密", "到账时间"] and len(rows) == 201
    assert [r[2] for r in rows[1:]] == [safe_cell(s) for s in secrets]
    assert {r[0] for r in rows[1:]} == {order_no} and {r[1] for r in rows[1:]} == {bulk.product.name}
    nasty = [r[2] for r in rows[1:] if r[2][1:] in NASTY]
    assert nasty and all(v.startswith("'") for v in nasty)
    # XLSX: the same, every cell a string cell, no formula anywhere
    sheet = xlsx_rows(files["xlsx"])
    assert [c.value for c in sheet[0]] == ["订单号", "商品", "卡密", "到账时间"] and len(sheet) == 201
    assert [row[2].value for row in sheet[1:]] == [safe_cell(s) for s in secrets]
    assert all(cell.data_type == "s" for row in sheet for cell in row)

    # and each download is audited and counted on the order (the page says so)
    assert [(a["via"], a["format"], a["target"], a["orders"], a["secrets"]) for a in extract_audits()] == [
        ("portal", fmt, order_no, 1, 200) for fmt in ("txt", "csv", "xlsx")]
    assert all(a["actor"] == bulk.agent.user_id for a in extract_audits())
    assert downloads_of(order_id) == 3
    assert "已下载 3 次" in portal.get(f"/portal/orders/{order_no}").get_data(as_text=True)
    db.session.rollback()
    assert check_ledger() == []


def test_the_range_download_takes_only_my_delivered_orders_of_those_days(app, f, bulk):
    # given my orders on three days, a refunded one, a downline's and another agent's, all in the range
    downline = f.agent(parent=bulk.agent, balance=1_000_000, tier_obj=bulk.agent.tier)
    stranger = f.agent(balance=1_000_000, tier_obj=bulk.agent.tier)
    today = business_today()
    mine = {}
    for days_ago, qty in ((0, 3), (1, 2), (2, 4)):
        o = orders.place_wallet_order(bulk.agent.id, bulk.product.id, qty)
        mine[days_ago] = (o.id, o.order_no)
        db.session.execute(text("UPDATE orders SET created_at = :at WHERE id = :id"),
                           {"at": utcnow() - timedelta(days=days_ago), "id": o.id})
    refunded = orders.place_wallet_order(bulk.agent.id, bulk.product.id, 1).id
    payments.refund_order(refunded, "test", None)
    theirs = [orders.place_wallet_order(a.id, bulk.product.id, 1).id for a in (downline, stranger)]
    db.session.commit()
    portal = portal_of(app, f, bulk.agent)

    # when I download yesterday and today as TXT
    since, until = (today - timedelta(days=1)).isoformat(), today.isoformat()
    r = portal.post("/portal/extract", data={"since": since, "until": until, "format": "txt"})

    # then the file holds exactly my delivered orders of those two days, order by order
    assert r.status_code == 200, r.get_data(as_text=True)
    expected = sold_secrets(mine[1][0]) + sold_secrets(mine[0][0])
    assert r.get_data().decode().split("\r\n") == [*expected, ""]
    assert r.headers["Content-Disposition"] == \
        f'attachment; filename="card-secrets-{today - timedelta(days=1):%Y%m%d}-{today:%Y%m%d}.txt"'
    # and each of those orders counts one download; the others none
    assert [downloads_of(mine[d][0]) for d in (0, 1, 2)] == [1, 1, 0]
    assert [downloads_of(i) for i in (refunded, *theirs)] == [0, 0, 0]
    (entry,) = extract_audits()
    assert (entry["target"], entry["orders"], entry["secrets"], entry["since"], entry["until"]) == \
        (f"{since}..{until}", 2, 5, since, until)

    # and the form page is there, with a bad range, a range too long, or no secrets answered 400 with a message
    assert 'id="extract-form"' in portal.get("/portal/extract").get_data(as_text=True)
    for form, message in (({"since": until, "until": since}, "晚于"),
                          ({"since": (today - timedelta(days=200)).isoformat()}, "最多"),
                          ({"since": "2001-01-01", "until": "2001-01-02"}, "没有可提取的卡密"),
                          ({"format": "pdf"}, "format")):
        r = portal.post("/portal/extract", data={"since": since, "until": until, "format": "csv", **form})
        assert r.status_code == 400 and message in r.get_data(as_text=True), form
    assert len(extract_audits()) == 1


def test_downloads_are_only_of_my_own_delivered_orders(app, f, bulk):
    downline = f.agent(parent=bulk.agent, balance=1_000_000, tier_obj=bulk.agent.tier)
    stranger = f.agent(balance=1_000_000, tier_obj=bulk.agent.tier)
    down_no = orders.place_wallet_order(downline.id, bulk.product.id, 1).order_no
    strange_no = orders.place_wallet_order(stranger.id, bulk.product.id, 1).order_no
    refunded = orders.place_wallet_order(bulk.agent.id, bulk.product.id, 1)
    refunded_no = refunded.order_no
    payments.refund_order(refunded.id, "test", None)
    mine_no = orders.place_wallet_order(bulk.agent.id, bulk.product.id, 1).order_no
    portal = portal_of(app, f, bulk.agent)

    # a downline's order (whose page I may see, without secrets) and another agent's: 404, as a missing one
    for no in (down_no, strange_no, "000000000000000000", "../../etc"):
        assert portal.post(f"/portal/orders/{no}/secrets", data={"format": "txt"}).status_code == 404, no
    page = portal.get(f"/portal/orders/{down_no}").get_data(as_text=True)
    assert "卡密仅下单人可见" in page and 'id="secret-downloads"' not in page
    # my refunded order, and a format that does not exist: back to the order page with the reason
    r = portal.post(f"/portal/orders/{refunded_no}/secrets", data={"format": "txt"}, follow_redirects=True)
    assert "尚未到账" in r.get_data(as_text=True)
    r = portal.post(f"/portal/orders/{mine_no}/secrets", data={"format": "exe"}, follow_redirects=True)
    assert "format" in r.get_data(as_text=True)
    # nothing of it was counted or audited
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(SecretDownload)) == 0 and extract_audits() == []
    # staff and anonymous visitors have no download at all
    admin = f.login(app.test_client(), f.user(f.unique("admin"), role="Admin").username)
    assert admin.post(f"/portal/orders/{mine_no}/secrets", data={"format": "txt"}).status_code == 403
    anonymous = app.test_client().post(f"/portal/orders/{mine_no}/secrets", data={"format": "txt"})
    assert anonymous.status_code in (302, 401, 403) and b"BULK-" not in anonymous.get_data()


def test_a_download_without_the_forms_csrf_token_is_refused(app, f, bulk, monkeypatch):
    order_no = orders.place_wallet_order(bulk.agent.id, bulk.product.id, 2).order_no
    portal = portal_of(app, f, bulk.agent)
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    assert portal.post(f"/portal/orders/{order_no}/secrets", data={"format": "txt"}).status_code == 400
    assert portal.post("/portal/extract", data={"since": "2026-01-01", "until": "2026-01-02",
                                                "format": "txt"}).status_code == 400
    assert extract_audits() == []
    page = portal.get(f"/portal/orders/{order_no}").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = portal.post(f"/portal/orders/{order_no}/secrets", data={"format": "txt", "csrf_token": token})
    assert r.status_code == 200 and len(r.get_data().split(b"\r\n")) == 3


def test_a_range_past_the_file_limit_is_refused(app, f, bulk, monkeypatch):
    monkeypatch.setattr(extraction, "MAX_SECRETS", 5)
    orders.place_wallet_order(bulk.agent.id, bulk.product.id, 6)
    today = business_today().isoformat()
    r = portal_of(app, f, bulk.agent).post("/portal/extract", data={"since": today, "until": today, "format": "txt"})
    assert r.status_code == 400 and "超过单次提取上限 5" in r.get_data(as_text=True)
    assert extract_audits() == []


# --- the Open API ----------------------------------------------------------------------------------------------

def test_open_api_downloads_an_orders_secrets_as_txt_or_csv(app, client, f, bulk):
    # given a 200-card order placed through the Open API (the answer carries the secrets)
    created = signed_call(client, bulk.key, bulk.secret, "POST", "/open/v1/orders",
                          {"out_trade_no": "BULK-200", "product_id": bulk.product.id, "quantity": 200})
    assert created.status_code == 201, created.get_data(as_text=True)
    order_no = created.get_json()["order_no"]
    assert len(created.get_json()["card_secrets"]) == 200
    order_id = db.session.scalar(select(Order.id).where(Order.order_no == order_no))
    secrets = sold_secrets(order_id)
    path = f"/open/v1/orders/{order_no}/secrets"

    # when it takes them as TXT (the default) and CSV
    txt = signed_call(client, bulk.key, bulk.secret, "GET", path)
    txt_body = txt.get_data()  # read before the next request (the test client streams the body lazily)
    as_csv = signed_call(client, bulk.key, bulk.secret, "GET", path, query="format=csv")
    csv_body = as_csv.get_data()

    # then the files, not cached, each audited with the key and counted
    assert txt.status_code == 200 and txt.mimetype == "text/plain"
    assert txt_body.decode().split("\r\n") == [*secrets, ""]
    assert as_csv.status_code == 200 and as_csv.mimetype == "text/csv"
    assert [r[2] for r in csv_rows(csv_body)[1:]] == [safe_cell(s) for s in secrets]
    for r in (txt, as_csv):
        assert r.headers["Cache-Control"] == "no-store" and "attachment" in r.headers["Content-Disposition"]
    assert [(a["via"], a["format"], a["api_key"], a["secrets"]) for a in extract_audits()] == [
        ("openapi", "txt", bulk.key.app_key, 200), ("openapi", "csv", bulk.key.app_key, 200)]
    assert downloads_of(order_id) == 2

    # and XLSX (or anything else) is 400 in the API's error format; another agent's order is 404 as a missing one
    for query in ("format=xlsx", "format=", "format=txt%00"):
        assert_error(signed_call(client, bulk.key, bulk.secret, "GET", path, query=query), 400, "invalid_format")
    stranger = f.agent(balance=1_000_000, tier_obj=bulk.agent.tier)
    other_key, other_secret = new_key(stranger)
    theirs = signed_call(client, other_key, other_secret, "GET", path)
    missing = signed_call(client, other_key, other_secret, "GET", "/open/v1/orders/000000000000000000/secrets")
    assert_error(theirs, 404, "not_found")
    assert theirs.get_json() == missing.get_json()
    # an unsigned request is 401; a refunded order has nothing to extract (409)
    assert_error(client.get(path), 401)
    payments.refund_order(order_id, "test", None)
    assert_error(signed_call(client, bulk.key, bulk.secret, "GET", path), 409, "order_not_delivered")
    assert downloads_of(order_id) == 2 and len(extract_audits()) == 2


def test_downloading_a_reusable_orders_secrets_counts_as_revealing_them(app, f):
    agent = f.agent(balance=100_000)
    p = f.product(face_price=100, cost=0, max_uses=4, max_per_order=10)
    f.stock(p, 3)
    kept = orders.place_wallet_order(agent.id, p.id, 3)
    given_back = orders.place_wallet_order(agent.id, p.id, 3)
    kept_no, kept_id, back_id = kept.order_no, kept.id, given_back.id
    r = portal_of(app, f, agent).post(f"/portal/orders/{kept_no}/secrets", data={"format": "csv"})
    assert r.status_code == 200 and len(csv_rows(r.get_data())) == 4
    db.session.rollback()
    uses = db.session.scalars(select(CardSecretUse).where(CardSecretUse.order_id == kept_id)).all()
    assert len(uses) == 3 and all(u.revealed_at for u in uses)
    payments.refund_order(kept_id, "downloaded", None)
    payments.refund_order(back_id, "never looked", None)
    db.session.rollback()
    # the downloaded order's three uses stay counted; the other's three came back
    assert list(db.session.scalars(select(CardSecret.uses).where(CardSecret.product_id == p.id))) == [1, 1, 1]
    assert check_ledger() == []


# --- the demo ------------------------------------------------------------------------------------------------

def test_the_demo_sells_up_to_500_cards_per_order_and_a_200_card_order_goes_through(app, f):
    from app.catalog.models import Product

    result = app.test_cli_runner().invoke(args=["kameng", "demo", "--password", "demo-pass-1"])
    assert result.exit_code == 0, result.output
    products = db.session.scalars(select(Product).where(Product.kind == "card")).all()
    assert products and all(p.max_per_order == 500 for p in products)
    assert any(p.reusable and p.max_uses for p in products)
    iqiyi = next(p for p in products if p.name == "爱奇艺黄金会员月卡")
    portal = f.login(app.test_client(), "agent1", "demo-pass-1")

    # agent1 buys 200: a new account's big order is held by the demo's risk rules, then approved by staff
    r = portal.post("/portal/buy", data={"product_id": iqiyi.id, "quantity": "200"}, follow_redirects=True)
    assert r.status_code == 200
    order = db.session.scalar(select(Order).where(Order.product_id == iqiyi.id))
    assert order.status == "reviewing" and order.quantity == 200
    approved = app.test_cli_runner().invoke(args=["kameng", "risk", "review", "approve", order.order_no])
    assert approved.exit_code == 0, approved.output
    db.session.rollback()
    order = db.session.get(Order, order.id)
    assert order.status == "delivered" and len(sold_secrets(order.id)) == 200
    r = portal.post(f"/portal/orders/{order.order_no}/secrets", data={"format": "xlsx"})
    assert r.status_code == 200 and len(xlsx_rows(r.get_data())) == 201
    # and the reusable demo product sells one secret to several orders
    reusable = next(p for p in products if p.reusable)
    for _ in range(2):
        assert portal.post("/portal/buy", data={"product_id": reusable.id, "quantity": "1"}).status_code == 302
    db.session.rollback()
    assert db.session.scalar(select(func.max(CardSecret.uses)).where(CardSecret.product_id == reusable.id)) == 2
    assert check_ledger() == []


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_extraction_service_on_both_databases(app, f):
    agent = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=100, cost=0, max_per_order=50)
    reusable = f.product(face_price=100, cost=0, max_uses=3)
    f.stock(p, 5)
    f.stock(reusable, 2)
    normal = orders.place_wallet_order(agent.id, p.id, 3)
    shared = orders.place_wallet_order(agent.id, reusable.id, 2)
    normal_no, normal_id, shared_id = normal.order_no, normal.id, shared.id
    expected = sold_secrets(normal_id)
    for fmt in ("txt", "txt", "csv"):
        result = extraction.extract_order(agent.id, normal_no, fmt, via="portal")
        body = b"".join(result.chunks)
        assert (result.orders, result.secrets) == (1, 3)
    assert body.decode("utf-8-sig").splitlines()[1:] == [f"{normal_no},{normal.product.name},{s},"
                                                         f"{to_text(normal.delivered_at)}" for s in expected]
    assert downloads_of(normal_id) == 3
    today = business_today()
    result = extraction.extract_range(agent.id, today, today, "txt", via="portal")
    assert (result.orders, result.secrets) == (2, 5)
    assert len(b"".join(result.chunks).split(b"\r\n")) == 6
    assert (downloads_of(normal_id), downloads_of(shared_id)) == (4, 1)
    db.session.rollback()
    assert all(u.revealed_at for u in db.session.scalars(select(CardSecretUse)))
    assert check_ledger() == []


def to_text(at) -> str:
    from app.clock import to_local

    return to_local(at).strftime("%Y-%m-%d %H:%M:%S")
