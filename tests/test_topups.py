"""Wallet top-ups (充值): portal page, sandbox cashier, notifications crediting the wallet exactly once."""
from __future__ import annotations

import secrets
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.ledger.models import Journal
from app.payments import service as payments
from app.payments import topups
from app.payments.channels import sandbox
from app.payments.models import Payment, PaymentNotification, WalletTopUp

KEY = "sandbox-test-key-123"


@pytest.fixture
def channel(app):
    payments.save_channel("sandbox", True, {"key": KEY})


def _notify(client, number: str, amount: int, trade_no: str | None = None, key: str = KEY, status="SUCCESS"):
    fields = {"order_no": number, "trade_no": trade_no or "SBX" + secrets.token_hex(8), "amount": str(amount),
              "currency": "CNY", "status": status, "ts": str(int(time.time())), "nonce": secrets.token_hex(8)}
    fields["sign"] = sandbox.sign(key, fields)
    return client.post("/pay/notify/sandbox", data=fields), fields["trade_no"]


def fresh_login(f, client, username):
    """The test's app context is shared by every request, so g still holds the previous client's user
    (FAB's login would just redirect): forget it before another client logs in."""
    forget_user()
    return f.login(client, username)


def forget_user():
    from flask import g

    g.pop("_login_user", None)
    g.pop("user", None)


def _start(client, f, amount="100", agent=None):
    agent = agent or f.agent()
    fresh_login(f, client, agent.name)
    r = client.post("/portal/topup", data={"amount": amount, "channel": "sandbox"})
    return agent, r


def _outcomes(db, number):
    return [n.outcome for n in db.session.scalars(select(PaymentNotification).where(
        PaymentNotification.order_no == number).order_by(PaymentNotification.id))]


def test_agent_tops_up_through_the_sandbox_cashier(app, db, f, client, channel):
    agent, r = _start(client, f, "123.45")
    assert r.status_code == 302
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.agent_id == agent.id))
    assert (topup.amount, topup.channel, topup.status) == (12345, "sandbox", "pending_payment")
    assert topup.topup_no.startswith("T") and len(topup.topup_no) == 19 and topup.topup_no[1:].isdigit()
    assert r.headers["Location"].endswith(f"/pay/sandbox/cashier/topup/{topup.topup_no}")

    page = client.get(f"/pay/sandbox/cashier/topup/{topup.topup_no}")
    assert page.status_code == 200 and "¥123.45" in page.text and "确认支付" in page.text
    r = client.post(f"/pay/sandbox/cashier/topup/{topup.topup_no}", data={"result": "pay"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/portal/topup")

    db.session.expire_all()
    assert f.wallet(agent) == 12345
    payment = db.session.scalar(select(Payment).where(Payment.topup_id == topup.id))
    assert (payment.channel, payment.amount, payment.status, payment.order_id) == ("sandbox", 12345, "paid", None)
    journal = db.session.scalar(select(Journal).where(Journal.idempotency_key == f"pay:sandbox:{payment.trade_no}"))
    lines = sorted((p.account.code, p.amount) for p in journal.postings)
    assert lines == sorted([("platform:clearing:sandbox", -12345), (f"agent:{agent.id}:wallet", 12345)])
    assert db.session.get(WalletTopUp, topup.id).status == "paid"

    listing = client.get("/portal/topup")
    assert listing.status_code == 200
    assert topup.topup_no in listing.text and "已到账" in listing.text and "¥123.45" in listing.text


def test_a_failed_cashier_payment_credits_nothing(app, db, f, client, channel):
    agent, _ = _start(client, f, "10")
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.agent_id == agent.id))
    client.post(f"/pay/sandbox/cashier/topup/{topup.topup_no}", data={"result": "fail"})
    db.session.expire_all()
    assert f.wallet(agent) == 0 and db.session.get(WalletTopUp, topup.id).status == "pending_payment"
    assert _outcomes(db, topup.topup_no) == ["not_paid"]


@pytest.mark.parametrize("amount", ["0.99", "50000.01", "abc", "", "-5", "1.234", "1e3"])
def test_out_of_range_or_malformed_amounts_are_refused_and_write_nothing(app, db, f, client, channel, amount):
    agent, r = _start(client, f, amount)
    assert r.status_code == 302 and r.headers["Location"].endswith("/portal/topup")
    assert db.session.scalar(select(func.count()).select_from(WalletTopUp)) == 0


@pytest.mark.parametrize("amount,fen", [("1", 100), ("50000", 5_000_000), ("¥12.5", 1250), ("8元", 800)])
def test_amount_parsing_bounds(app, amount, fen):
    assert topups.parse_amount(amount) == fen


def test_disabled_or_unknown_channel_is_refused(app, db, f, client):
    payments.save_channel("sandbox", False, {"key": KEY})
    agent, r = _start(client, f, "10")
    assert db.session.scalar(select(func.count()).select_from(WalletTopUp)) == 0
    client.post("/portal/topup", data={"amount": "10", "channel": "wallet"})
    assert db.session.scalar(select(func.count()).select_from(WalletTopUp)) == 0


def test_duplicate_notification_answers_success_and_changes_nothing(app, db, f, client, channel):
    agent, _ = _start(client, f, "50")
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.agent_id == agent.id))
    r1, trade_no = _notify(client, topup.topup_no, 5000)
    r2, _ = _notify(client, topup.topup_no, 5000, trade_no=trade_no)
    assert (r1.status_code, r1.text, r2.status_code, r2.text) == (200, "success", 200, "success")
    db.session.expire_all()
    assert f.wallet(agent) == 5000
    assert db.session.scalar(select(func.count()).select_from(Payment)) == 1
    assert _outcomes(db, topup.topup_no) == ["accepted", "duplicate"]


def test_amount_mismatch_is_recorded_and_not_credited(app, db, f, client, channel):
    agent, _ = _start(client, f, "50")
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.agent_id == agent.id))
    r, _ = _notify(client, topup.topup_no, 4999)
    assert r.status_code == 400
    db.session.expire_all()
    assert f.wallet(agent) == 0 and db.session.get(WalletTopUp, topup.id).status == "pending_payment"
    assert db.session.scalar(select(func.count()).select_from(Payment)) == 0
    [note] = db.session.scalars(select(PaymentNotification).where(PaymentNotification.order_no == topup.topup_no))
    assert note.outcome == "amount_mismatch" and note.amount == 4999


def test_forged_and_unknown_notifications_are_refused(app, db, f, client, channel):
    agent, _ = _start(client, f, "50")
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.agent_id == agent.id))
    r, _ = _notify(client, topup.topup_no, 5000, key="wrong-key-wrong-key")
    assert r.status_code == 400
    r, _ = _notify(client, "T991231000000000000", 5000)
    assert r.status_code == 400
    db.session.expire_all()
    assert f.wallet(agent) == 0
    assert _outcomes(db, topup.topup_no) == ["rejected"]
    assert _outcomes(db, "T991231000000000000") == ["unknown_order"]


def test_a_second_payment_for_a_paid_topup_is_refunded_not_credited(app, db, f, client, channel):
    agent, _ = _start(client, f, "20")
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.agent_id == agent.id))
    _notify(client, topup.topup_no, 2000)
    r, trade2 = _notify(client, topup.topup_no, 2000)
    assert r.text == "success"
    db.session.expire_all()
    assert f.wallet(agent) == 2000
    second = db.session.scalar(select(Payment).where(Payment.trade_no == trade2))
    assert second.status == "refunded" and second.topup_id == topup.id
    assert _outcomes(db, topup.topup_no) == ["accepted", "double_paid_refunded"]
    assert db.session.scalar(select(Journal).where(Journal.idempotency_key == f"refund:sandbox:{trade2}"))


def test_unpaid_topups_close_and_a_late_payment_is_still_credited(app, db, f, client, channel):
    from workers import jobs

    agent, _ = _start(client, f, "30")
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.agent_id == agent.id))
    fresh_agent, _ = _start(app.test_client(), f, "40")
    db.session.execute(update(WalletTopUp).where(WalletTopUp.id == topup.id)
                       .values(created_at=WalletTopUp.created_at - timedelta(hours=1)))
    db.session.commit()
    assert jobs.expire_unpaid_topups() == 1
    assert jobs.expire_unpaid_topups() == 0
    db.session.expire_all()
    assert db.session.get(WalletTopUp, topup.id).status == "closed"
    statuses = dict(db.session.execute(select(WalletTopUp.agent_id, WalletTopUp.status)).all())
    assert statuses[fresh_agent.id] == "pending_payment"
    fresh_login(f, client, agent.name)
    assert "已关闭" in client.get("/portal/topup").text

    r, _ = _notify(client, topup.topup_no, 3000)
    assert r.text == "success"
    db.session.expire_all()
    assert f.wallet(agent) == 3000 and db.session.get(WalletTopUp, topup.id).status == "paid"


def test_portal_lists_only_my_topups_and_other_roles_cannot_use_the_page(app, db, f, client, channel):
    other, _ = _start(app.test_client(), f, "77")
    mine, _ = _start(client, f, "66")
    page = client.get("/portal/topup").text
    forget_user()
    assert app.test_client().get("/portal/topup").status_code in (302, 401, 403)  # anonymous
    other_no = db.session.scalar(select(WalletTopUp.topup_no).where(WalletTopUp.agent_id == other.id))
    my_no = db.session.scalar(select(WalletTopUp.topup_no).where(WalletTopUp.agent_id == mine.id))
    assert my_no in page and other_no not in page
    admin = f.user(role="Support")
    staff = fresh_login(f, app.test_client(), admin.username)
    assert staff.get("/portal/topup").status_code in (302, 403)


def test_topup_numbers_never_collide_with_order_numbers(app):
    from app.orders.service import new_order_no

    numbers = {topups.new_topup_no() for _ in range(2000)}
    assert len(numbers) == 2000 and all(n.startswith("T") for n in numbers)
    assert new_order_no().isdigit()


def test_concurrent_duplicate_notifications_credit_once(app, db, f, client, channel):
    agent, _ = _start(client, f, "88")
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.agent_id == agent.id))
    trade_no = "SBX" + secrets.token_hex(8)
    answers = []

    def send():
        with app.app_context():
            r, _ = _notify(app.test_client(), topup.topup_no, 8800, trade_no=trade_no)
            answers.append(r.text)
            from app.extensions import db as _db
            _db.session.remove()

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == ["success"] * 6
    db.session.expire_all()
    assert f.wallet(agent) == 8800
    assert sorted(_outcomes(db, topup.topup_no)) == ["accepted"] + ["duplicate"] * 5
