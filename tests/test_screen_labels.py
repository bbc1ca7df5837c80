"""What the screenshots showed: list screens must name related rows, never print a Python object's default repr."""
from __future__ import annotations

import re

import pytest

from tests.dashboards_helpers import login_as

OBJECT_REPR = re.compile(r"&lt;[\w.]+ object at 0x[0-9a-f]+&gt;|<[\w.]+ object at 0x[0-9a-f]+>")


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_card_stock_list_names_the_import_batch(app, db, f):
    product = f.product(name="网易一卡通 50元")
    f.stock(product, 2, prefix="NE50-TEST")
    client, _admin = login_as(app, f, role="Admin")

    page = client.get("/card-secrets/list/").get_data(as_text=True)

    assert "网易一卡通 50元" in page
    assert not OBJECT_REPR.search(page), OBJECT_REPR.search(page).group(0)
    from sqlalchemy import select

    from app.catalog.models import CardImport

    batch = db.session.scalar(select(CardImport).where(CardImport.product_id == product.id))
    assert f"#{batch.id} paste (" in page  # the batch column: id, source (no file name), day


# ------------------------------------------------------------------------------------ words, not raw values
# FAB prints a cell's Python value as it is: True/False, None and stored codes (available, withdrawal_freeze,
# wallet). Operators read 是/否, '-' and the glossary's words instead.
RAW_CELLS = {"True", "False", "None"}
CELL = re.compile(r"<td>(.*?)</td>", re.S)


def cells(client, url: str) -> set[str]:
    r = client.get(url)
    assert r.status_code == 200, (url, r.status_code)
    return {c.strip() for c in CELL.findall(r.get_data(as_text=True))}


def assert_words(found: set[str], words: set[str], codes: set[str] = frozenset()) -> None:
    assert words <= found, sorted(words - found)
    raw = (RAW_CELLS | codes) & found
    assert not raw, sorted(raw)


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_catalog_agents_and_stock_lists_show_words(app, db, f):
    # given a product in stock, an agent without a parent, a switched-off agent and the platform's own supplier
    product = f.product(name="腾讯Q币 10元", secrets=2)
    f.agent(name="顶级代理")
    off = f.agent(name="停用代理")
    off.active = False
    db.session.commit()
    client, _admin = login_as(app, f, role="Admin")

    # then booleans read 是/否, empty values '-', codes their label
    assert_words(cells(client, "/products/list/"), {"是"})
    assert_words(cells(client, "/agents/list/"), {"是", "否", "-"})
    assert_words(cells(client, "/suppliers/list/"), {"是", "-", "无（平台自有库存）"})
    assert_words(cells(client, "/card-secrets/list/"), {"可售", "-"}, {"available", "sold"})
    assert_words(cells(client, "/card-imports/list/"), {"已完成", "粘贴"}, {"done", "paste"})
    assert_words(cells(client, "/categories/list/"), {"是"})
    assert_words(cells(client, "/tiers/list/"), {"是"})
    assert product.active

    # and in English after the language switch
    assert client.get("/lang/en").status_code == 302
    assert_words(cells(client, "/agents/list/"), {"Yes", "No", "-"}, {"是", "否"})
    assert_words(cells(client, "/card-secrets/list/"), {"Available"}, {"available", "可售"})


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_order_ledger_and_withdrawal_lists_show_words(app, db, f, monkeypatch):
    from app.network import withdrawals
    from app.orders import service as orders
    from tests.network_helpers import idv_provider, verify

    # given a delivered wallet order and a withdrawal waiting for review
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    product = f.product(name="网易一卡通 30元", secrets=1)
    buyer = f.agent(tier_obj=f.tier(min_withdrawal=10000), balance=100000)
    order = orders.place_wallet_order(buyer.id, product.id, 1)
    with idv_provider(app, monkeypatch):
        verify(buyer)
    withdrawals.request_withdrawal(buyer.id, 20000)
    client, _admin = login_as(app, f, role="Admin")

    assert order.status == "delivered"
    assert_words(cells(client, "/orders/list/"), {"钱包余额", "已到账", "-"}, {"wallet", "delivered"})
    assert_words(cells(client, "/ledger/journals/list/"), {"销售", "提现冻结", "余额调整", "-"},
                 {"hold", "sale", "withdrawal_freeze", "adjustment"})
    assert_words(cells(client, "/ledger/accounts/list/"), {"余额", "冻结", "平台收入", "是", "否"},
                 {"wallet", "frozen", "revenue"})
    assert_words(cells(client, "/withdrawal-records/list/"), {"待审核", "-"}, {"pending_review"})
    assert_words(cells(client, "/realname-records/list/"), {"已认证", "男"}, {"verified", "M"})

    # the order's status and channel in English after the language switch
    assert client.get("/lang/en").status_code == 302
    assert_words(cells(client, "/orders/list/"), {"Delivered"}, {"已到账", "delivered"})
