"""One budget of wrong passwords per order number, shared by every address and entry point: the lookup API and
page, and buyer disputes (API and form). Wrong passwords answer exactly as an unknown order (404) until the budget
is spent; then the number answers 429 (right password or not, known order or not) until the oldest try ages out."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.payments.models import LookupAttempt
from tests import payments_helpers as h

LIMIT = 4


@pytest.fixture
def budget(app, monkeypatch):
    monkeypatch.setitem(app.config, "SHOP_LOOKUP_ORDER_FAILURES", LIMIT)
    monkeypatch.setitem(app.config, "SHOP_LOOKUP_ORDER_WINDOW_SECONDS", 3600)


def _delivered(client, f, trade: str):
    h.setup_sandbox()
    order = h.guest_order(f.product(secrets=1), "sandbox")
    assert h.accepted("sandbox", h.notify(client, "sandbox", order, trade))
    return order


def _api_lookup(client, order_no, password, addr):
    return client.post("/shop/api/lookup", json={"order_no": order_no, "query_password": password},
                       environ_base={"REMOTE_ADDR": addr})


def _wrong_tries(client, order_no: str) -> list[int]:
    """One wrong password through each entry point, each from another address."""
    return [
        _api_lookup(client, order_no, "wrong-pass-1", "198.51.100.1").status_code,
        client.post("/shop/lookup", data={"order_no": order_no, "query_password": "wrong-pass-2"},
                    environ_base={"REMOTE_ADDR": "198.51.100.2"}).status_code,
        client.post("/shop/api/disputes", json={"order_no": order_no, "query_password": "wrong-pass-3",
                                                "reason": "没收到"},
                    environ_base={"REMOTE_ADDR": "198.51.100.3"}).status_code,
        client.post("/shop/dispute", data={"order_no": order_no, "query_password": "wrong-pass-4", "reason": "x"},
                    environ_base={"REMOTE_ADDR": "198.51.100.4"}).status_code,
    ]


def test_wrong_passwords_from_any_address_and_entry_point_share_one_budget(app, db, f, client, budget):
    order = _delivered(client, f, "SBX-BUDGET-1")
    other = _delivered(client, f, "SBX-BUDGET-2")
    # Right passwords of another order, in between, neither spend nor add to this order's budget.
    for _ in range(3):
        assert _api_lookup(client, other.order_no, h.PASSWORD, "203.0.113.9").status_code == 200
    assert _wrong_tries(client, order.order_no) == [404] * LIMIT  # exactly as an unknown order
    assert _api_lookup(client, other.order_no, h.PASSWORD, "203.0.113.9").status_code == 200

    # Spent: even the right password, from a fresh address, is refused, with when to come back.
    r = _api_lookup(client, order.order_no, h.PASSWORD, "192.0.2.77")
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "lookup_limited"
    assert "分钟" in r.get_json()["error"]["message"] and "card_secrets" not in r.get_data(as_text=True)
    page = client.post("/shop/lookup", data={"order_no": order.order_no, "query_password": h.PASSWORD})
    assert page.status_code == 429 and "密码错误次数过多" in page.get_data(as_text=True)
    dispute = client.post("/shop/api/disputes", json={"order_no": order.order_no, "query_password": h.PASSWORD,
                                                      "reason": "没收到"})
    assert dispute.status_code == 429
    form = client.post("/shop/dispute", data={"order_no": order.order_no, "query_password": h.PASSWORD,
                                              "reason": "没收到"})
    assert form.status_code == 429 and "密码错误次数过多" in form.get_data(as_text=True)
    db.session.expire_all()
    assert order.status == "delivered"  # no dispute was opened

    # The other order's budget is its own.
    assert _api_lookup(client, other.order_no, h.PASSWORD, "192.0.2.77").status_code == 200

    # Once the oldest try is older than the window, the number answers again (and the purge job forgets it).
    db.session.execute(update(LookupAttempt).where(LookupAttempt.order_no == order.order_no)
                       .values(created_at=LookupAttempt.created_at - timedelta(hours=2)))
    db.session.commit()
    assert _api_lookup(client, order.order_no, h.PASSWORD, "192.0.2.77").status_code == 200
    from workers import jobs

    assert jobs.purge_lookup_attempts() == LIMIT
    assert db.session.scalar(select(func.count()).select_from(LookupAttempt)) == 0


def test_an_unknown_order_number_is_limited_the_same_way(app, db, f, client, budget):
    """The budget counts numbers as typed: a 429 tells nothing about whether the order exists."""
    assert _wrong_tries(client, "202612049999999999") == [404] * LIMIT
    r = _api_lookup(client, "202612049999999999", "whatever-pass", "192.0.2.1")
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "lookup_limited"


def test_right_passwords_do_not_spend_the_budget(app, db, f, client, budget):
    order = _delivered(client, f, "SBX-BUDGET-3")
    for _ in range(LIMIT + 2):
        r = _api_lookup(client, order.order_no, h.PASSWORD, "203.0.113.5")
        assert r.status_code == 200 and r.get_json()["card_secrets"]
    assert db.session.scalar(select(func.count()).select_from(LookupAttempt)) == 0


def test_parallel_guesses_cannot_slip_past_the_budget(app, db, f, client, budget):
    """Twelve wrong guesses at once, each in its own thread and connection (PostgreSQL): the order number's lock
    lets exactly LIMIT of them be judged and recorded, the rest answer 429, and so does the right password then."""
    import threading

    order = _delivered(client, f, "SBX-BUDGET-4")
    order_no = order.order_no
    answers: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def guess(n: int) -> None:
        own = app.test_client()
        start.wait()
        code = _api_lookup(own, order_no, f"wrong-pass-{n}", f"198.51.100.{n + 10}").status_code
        with lock:
            answers.append(code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [404] * LIMIT + [429] * (12 - LIMIT)
    assert db.session.scalar(select(func.count()).select_from(LookupAttempt)
                             .where(LookupAttempt.order_no == order_no)) == LIMIT
    assert _api_lookup(client, order_no, h.PASSWORD, "203.0.113.9").status_code == 429


def test_a_spent_budget_answers_before_any_password_is_checked(app, db, f, client, budget, monkeypatch):
    """Once spent, the number answers 429 without hashing the typed password (an older order's scrypt hash would
    otherwise cost tens of ms of CPU per try, outside the budget)."""
    from app import crypto

    order = _delivered(client, f, "SBX-BUDGET-5")
    assert _wrong_tries(client, order.order_no) == [404] * LIMIT
    checked = []
    real_check = crypto.check_order_password
    monkeypatch.setattr(crypto, "check_order_password", lambda *a: checked.append(1) or real_check(*a))
    r = _api_lookup(client, order.order_no, h.PASSWORD, "192.0.2.80")
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "lookup_limited"
    assert checked == []
