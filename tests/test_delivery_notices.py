"""Delivery notices against a real SMTP server on 127.0.0.1 (aiosmtpd) and the Aliyun SMS simulator over HTTP.

The storefront buyer's optional e-mail carries the order, its card secrets and the lookup link; it leaves after the
payment delivers the order (never before, never for an order held by risk control or not delivered), from a job
with retries (an SMTP outage ends on support's failed list, where support resends it, audited). The SMS carries the
order number and the lookup link, never a secret. No secret reaches a log, the outbox or an error column. The
ledger check runs after every test (the `app` fixture)."""
from __future__ import annotations

import logging

import pytest
import requests
from sqlalchemy import select, text

from app.audit.models import AuditEntry
from app.extensions import db
from app.ledger.invariants import check_ledger
from app.notices import mailer
from app.notices import service as notices
from app.notices.models import DeliveryNotice
from app.notices.sms_simulator import AliyunSmsSimulator, sms_settings
from app.orders.models import Order
from app.outbox.models import OutboxMessage
from app.outbox.service import dispatch_due
from app.settings import service as platform
from app.settings.models import PlatformSetting
from tests import channel_sim_helpers as csh
from tests import mail_helpers as mh
from tests import payments_helpers as h

smtp = mh.smtp
live = csh.live
EMAIL = "Buyer.One@example.com"
PASSWORD = "order-pass-123"


@pytest.fixture
def shop(app, f):
    h.setup_sandbox()
    product = f.product(name="腾讯Q币 10元", face_price=1000, cost=900)
    secrets = f.stock(product, 2, prefix="QB10-MAIL-7K3M")
    return product, secrets


def checkout(client, product, email=EMAIL, contact="qq:10001", **extra):
    body = {"product_id": product.id, "quantity": 1, "contact": contact, "query_password": PASSWORD,
            "channel": "sandbox", **extra}
    if email is not None:
        body["email"] = email
    r = client.post("/shop/api/orders", json=body)
    assert r.status_code == 201, r.get_data(as_text=True)
    db.session.rollback()
    return db.session.scalar(select(Order).where(Order.order_no == r.get_json()["order_no"]))


def pay(client, order, trade=None):
    r = h.notify(client, "sandbox", order, trade or h.trade_no("SBX"))
    assert h.accepted("sandbox", r), r.get_data(as_text=True)
    return r


def notice_of(order, kind="email") -> DeliveryNotice:
    db.session.rollback()
    db.session.expire_all()
    return db.session.scalar(select(DeliveryNotice).where(DeliveryNotice.order_id == order.id,
                                                          DeliveryNotice.kind == kind))


def sold_secret(order) -> str:
    from app.catalog import cards

    db.session.rollback()
    [secret] = cards.reveal(order.id)
    return secret


def sweep() -> None:
    """The outbox sweeper's run (every OUTBOX_SWEEP_SECONDS with workers): due retries leave."""
    from workers import jobs

    jobs.sweep_outbox()
    db.session.rollback()


def assert_no_secret_outside_the_mail(secret: str, caplog) -> None:
    db.session.rollback()
    assert secret not in caplog.text
    for payload, error in db.session.execute(select(OutboxMessage.payload, OutboxMessage.last_error)):
        assert secret not in payload and secret not in (error or "")
    for (error,) in db.session.execute(select(DeliveryNotice.last_error)):
        assert secret not in (error or "")


# --- e-mail ------------------------------------------------------------------------------------------------------

def test_the_secret_is_emailed_after_payment_and_not_before(app, client, shop, smtp, caplog):
    caplog.set_level(logging.DEBUG)
    product, _ = shop
    # given a checkout with an e-mail address
    order = checkout(client, product)
    notice = notice_of(order)
    assert (notice.status, notice.recipient, notice.recipient_masked) == ("waiting", EMAIL, mask(EMAIL))
    # the address is encrypted at rest, found by its blind index
    raw = db.session.execute(text("SELECT recipient, recipient_hash FROM delivery_notice")).one()
    assert EMAIL not in raw[0] and EMAIL.lower() not in raw[0] and raw[1] == notices_hash(EMAIL)
    # then nothing has been sent before the payment
    assert smtp.messages == []
    assert db.session.scalar(select(OutboxMessage.id).where(OutboxMessage.topic == notices.TOPIC)) is None

    # when the payment notification delivers the order
    pay(client, order)
    [message] = smtp.wait(1)
    secret = sold_secret(order)
    # then one e-mail with the order, the secret and the lookup page (not the signed link) reached the server
    assert message["To"] == EMAIL and order.order_no in message["Subject"]
    assert message["From"] == "卡盟商城 <shop@kameng.example>" and message["Message-ID"].endswith("@kameng.example>")
    body = mh.text_of(message)
    assert secret in body and order.order_no in body and "¥10.00" in body and "腾讯Q币 10元 × 1" in body
    assert f"/shop/lookup?order_no={order.order_no}" in body and "/shop/order/" not in body
    assert secret in mh.html_of(message) and "<script" not in mh.html_of(message)
    notice = notice_of(order)
    assert (notice.status, notice.attempts, notice.last_error) == ("sent", 1, None) and notice.sent_at
    assert db.session.scalar(select(OutboxMessage.status).where(OutboxMessage.topic == notices.TOPIC)) == "done"
    # and a duplicate notification sends nothing more
    pay(client, order, trade=db.session.scalar(text("SELECT trade_no FROM payment")))
    assert len(smtp.messages) == 1
    assert_no_secret_outside_the_mail(secret, caplog)
    assert check_ledger() == []


def notices_hash(value: str) -> str:
    from app.crypto import pii_hash

    return pii_hash(value)


def mask(value: str) -> str:
    from app.crypto import mask as mask_

    return mask_(value)


def test_without_an_email_nothing_is_sent(app, client, shop, smtp):
    product, _ = shop
    order = checkout(client, product, email=None)
    pay(client, order)
    assert h.order_state(order.order_no) == "delivered"
    assert notice_of(order) is None and smtp.messages == []


@pytest.mark.parametrize("bad", ["not-an-address", "a@b", "x@example.com\r\nBcc: evil@example.com",
                                 "Name <x@example.com>", "x@exa mple.com", 42, ["x@example.com"], "a" * 250 + "@x.cn"])
def test_a_bad_email_is_refused_and_writes_nothing(app, client, shop, bad):
    product, _ = shop
    before = h.count(Order)
    r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": "qq:1",
                                              "query_password": PASSWORD, "channel": "sandbox", "email": bad})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_email"
    assert h.count(Order) == before and h.count(DeliveryNotice) == 0


def test_the_storefront_page_takes_the_email(app, client, shop, smtp):
    product, _ = shop
    page = client.get(f"/shop/buy/{product.id}").get_data(as_text=True)
    assert 'name="email"' in page and 'type="email"' in page
    r = client.post(f"/shop/buy/{product.id}", data={"quantity": "1", "contact": "qq:777", "email": EMAIL,
                                                     "query_password": PASSWORD, "channel": "sandbox"})
    assert r.status_code == 302
    order = db.session.scalar(select(Order).order_by(Order.id.desc()).limit(1))
    assert notice_of(order).recipient == EMAIL
    bad = client.post(f"/shop/buy/{product.id}", data={"quantity": "1", "contact": "qq:777", "email": "nope",
                                                       "query_password": PASSWORD, "channel": "sandbox"})
    assert bad.status_code == 400 and "邮箱地址格式不正确" in bad.get_data(as_text=True)


def test_an_order_held_for_review_is_emailed_only_once_approved(app, client, shop, smtp):
    from app.risk import lists, reviews

    product, _ = shop
    lists.add("contact", "qq:held", "review", reason="观察")
    held = checkout(client, product, contact="qq:held")
    pay(client, held)
    assert h.order_state(held.order_no) == "reviewing"
    assert smtp.messages == [] and notice_of(held).status == "waiting"
    # approved: delivered by the normal path, and only then e-mailed
    reviews.approve(held.order_no, actor_id=None)
    dispatch_due()
    [message] = smtp.wait(1)
    assert sold_secret(held) in mh.text_of(message)
    # a rejected hold is refunded and never e-mailed
    rejected = checkout(client, product, contact="qq:held", email="other@example.com")
    pay(client, rejected)
    reviews.reject(rejected.order_no, "可疑", actor_id=None)
    dispatch_due()
    assert h.order_state(rejected.order_no) == "refunded"
    assert notice_of(rejected).status == "waiting" and len(smtp.messages) == 1


def test_an_order_that_finds_no_stock_is_refunded_and_not_emailed(app, client, f, smtp):
    h.setup_sandbox()
    product = f.product(face_price=1000, cost=900)  # no stock: the payment is refunded
    order = checkout(client, product)
    pay(client, order)
    assert h.order_state(order.order_no) == "refunded"
    assert notice_of(order).status == "waiting" and smtp.messages == []


def test_smtp_outage_retries_then_lands_on_the_failed_list_where_support_resends(app, client, shop, smtp, f,
                                                                                caplog):
    caplog.set_level(logging.DEBUG)
    product, _ = shop
    app.config["NOTICE_RETRY_SECONDS"] = "0,0"  # three attempts in all, at once (production: minutes to hours)
    smtp.stop()
    order = checkout(client, product)
    # the first attempt runs right after the payment's commit and finds the server down
    pay(client, order)
    assert h.order_state(order.order_no) == "delivered"  # the order itself is not held back by the mail
    notice = notice_of(order)
    assert (notice.status, notice.attempts) == ("queued", 1) and "发信服务器不可用" in notice.last_error
    # the sweeper retries twice, then the notice is given up
    sweep()
    assert (notice_of(order).status, notice_of(order).attempts) == ("queued", 2)
    sweep()
    notice = notice_of(order)
    assert (notice.status, notice.attempts) == ("failed", 3) and notice.next_attempt_at is None
    assert db.session.scalar(select(OutboxMessage.status).where(OutboxMessage.topic == notices.TOPIC)) == "failed"
    sweep()
    assert notice_of(order).attempts == 3  # nothing more is tried on its own

    # support sees it on the failed list (the address masked), finds it by the whole address, and resends
    support = app.test_client()
    f.login(support, f.user(f.unique("support"), role="Support").username)
    page = support.get(notices_failed_list()).get_data(as_text=True)
    assert order.order_no in page and mask(EMAIL) in page and EMAIL not in page
    found = support.get(f"/delivery-notices/list/?_flt_0_recipient_hash={EMAIL.upper()}").get_data(as_text=True)
    assert order.order_no in found
    manager = app.test_client()
    f.login(manager, f.user(f.unique("manager"), role="Manager").username)
    assert order.order_no in manager.get(notices_failed_list()).get_data(as_text=True)
    manager.post("/delivery-notices/action_post", data={"action": "resend", "rowid": str(notice.id)})
    assert notice_of(order).status == "failed" and smtp.messages == []  # Manager reads, never resends

    smtp.start()
    r = support.post("/delivery-notices/action_post", data={"action": "resend", "rowid": str(notice.id)})
    assert r.status_code == 302
    [message] = smtp.wait(1)
    secret = sold_secret(order)
    assert secret in mh.text_of(message)
    notice = notice_of(order)
    assert (notice.status, notice.attempts, notice.resends) == ("sent", 1, 1)
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "notice.resend"))
    assert entry is not None and entry.actor_id is not None
    assert EMAIL not in (entry.new_value or "") + (entry.old_value or "")
    assert_no_secret_outside_the_mail(secret, caplog)


def notices_failed_list() -> str:
    from app.notices.views import FAILED_LIST

    return FAILED_LIST


def test_a_permanent_refusal_fails_at_once_and_a_refunded_order_is_never_resent(app, client, shop, smtp):
    product, _ = shop
    order = checkout(client, product, email="nobody@refused.example")
    pay(client, order)
    notice = notice_of(order)
    assert (notice.status, notice.attempts) == ("failed", 1)
    assert notice.last_error.startswith("收件人被拒绝") and "550" in notice.last_error
    assert "nobody@refused.example" not in notice.last_error  # the address is masked in the error too
    # refunded since: its secrets are void, a resend is refused
    from app.payments import service as payments

    payments.refund_order(order.id, "买家申请退款", actor_id=None)
    dispatch_due()
    with pytest.raises(Exception, match="不能重发"):
        notices.resend(notice.id, actor_id=None)
    assert smtp.messages == []


def test_a_queued_email_for_an_order_refunded_meanwhile_is_not_sent(app, client, shop, smtp):
    product, _ = shop
    app.config["NOTICE_RETRY_SECONDS"] = "0"
    smtp.stop()
    order = checkout(client, product)
    pay(client, order)
    assert notice_of(order).status == "queued"
    from app.payments import service as payments

    payments.refund_order(order.id, "买家申请退款", actor_id=None)
    dispatch_due()
    smtp.start()
    sweep()
    notice = notice_of(order)
    assert notice.status == "failed" and "已退款" in notice.last_error and smtp.messages == []


def test_an_unexpected_error_is_retried_and_never_stores_the_secret(app, client, shop, smtp, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    product, _ = shop
    app.config["NOTICE_RETRY_SECONDS"] = "0"
    order = checkout(client, product)

    def broken(order_, recipient, secrets, locale, url, sender=None):
        raise RuntimeError(f"template broke on {secrets[0]} for {recipient}")

    monkeypatch.setattr(mailer, "compose", broken)
    pay(client, order)
    notice, secret = notice_of(order), sold_secret(order)
    assert notice.status == "queued" and notice.last_error.startswith("RuntimeError")
    assert secret not in notice.last_error and EMAIL not in notice.last_error and mask(secret) in notice.last_error
    monkeypatch.undo()
    sweep()
    assert notice_of(order).status == "sent" and secret in mh.text_of(smtp.wait(1)[0])
    assert_no_secret_outside_the_mail(secret, caplog)


def test_english_storefront_gets_an_english_email(app, client, shop, smtp):
    import flask_babel

    product, _ = shop
    flask_babel.refresh()
    assert client.get("/lang/en").status_code == 302
    flask_babel.refresh()
    order = checkout(client, product)
    assert notice_of(order).locale == "en"
    flask_babel.refresh()
    pay(client, order)
    [message] = smtp.wait(1)
    assert message["Subject"] == f"[卡盟 Kameng] Order {order.order_no} delivered"
    body = mh.text_of(message)
    assert "Card secrets" in body and sold_secret(order) in body and "订单号" not in body


def test_the_job_runs_on_rq_with_a_deterministic_id(app, client, shop, smtp, redis_url):
    from redis import Redis
    from rq import Queue

    from workers.runner import run_worker

    product, _ = shop
    order = checkout(client, product)
    app.config["REDIS_URL"] = redis_url
    try:
        pay(client, order)
        notice = notice_of(order)
        queue = Queue("high", connection=Redis.from_url(redis_url))
        assert f"notice-{notice.id}-0" in queue.get_job_ids()
        assert smtp.messages == []  # queued, not sent by the web request
        run_worker(["high"], burst=True, with_cron=False)
    finally:
        app.config["REDIS_URL"] = None
    [message] = smtp.wait(1)
    assert sold_secret(order) in mh.text_of(message) and notice_of(order).status == "sent"
    # the job again (RQ delivers at least once) sends nothing more
    assert notices.send(notice.id).status == "skipped"
    assert len(smtp.messages) == 1


def test_smtp_settings_from_platform_settings_with_the_password_encrypted(app, client, shop, f):
    product, _ = shop
    server = mh.SmtpServer(user="mailer", password="s3cret-Pa55")
    server.start()
    saved = {k: app.config.get(k) for k in ("SMTP_HOST", "SMTP_PORT", "SMTP_TLS", "SMTP_FROM")}
    app.config.update({"SMTP_HOST": "192.0.2.1", "SMTP_PORT": 25, "SMTP_TLS": "starttls", "SMTP_FROM": None,
                       "SMTP_TIMEOUT": 5})  # the environment's values: overridden below
    try:
        admin = app.test_client()
        f.login(admin, f.user(f.unique("admin"), role="Admin").username)
        form = admin.get("/platform-settings/form").get_data(as_text=True)
        assert 'name="smtp_host"' in form and 'value="192.0.2.1"' in form
        r = admin.post("/platform-settings/form", data={
            "realname_required_above": "0", "smtp_host": "127.0.0.1", "smtp_port": str(server.port),
            "smtp_tls": "none", "smtp_user": "mailer", "smtp_password": "s3cret-Pa55",
            "smtp_from": "Kameng <noreply@kameng.example>"})
        assert r.status_code in (200, 302)
        db.session.rollback()
        stored = db.session.get(PlatformSetting, "smtp_password").value
        assert "s3cret-Pa55" not in stored and platform.get("smtp_password") == "s3cret-Pa55"
        audits = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "setting.update")).all()
        assert {a.target_id for a in audits} >= {"smtp_host", "smtp_port", "smtp_password", "smtp_from"}
        assert all("s3cret-Pa55" not in (a.old_value or "") + (a.new_value or "") for a in audits)
        # a blank password keeps the stored one; a bad sender is refused
        admin.post("/platform-settings/form", data={"realname_required_above": "0", "smtp_password": ""})
        assert platform.get("smtp_password") == "s3cret-Pa55"
        bad = admin.post("/platform-settings/form", data={"realname_required_above": "0",
                                                          "smtp_from": "a@b.com\r\nBcc: x@y.com"})
        assert bad.status_code in (200, 302) and platform.get("smtp_from") == "Kameng <noreply@kameng.example>"

        order = checkout(client, product)
        pay(client, order)
        [message] = server.wait(1)
        assert message["From"] == "Kameng <noreply@kameng.example>"
        assert server.envelopes[0][2] is True  # logged in with the stored password
    finally:
        server.stop()
        app.config.update(saved)


def test_starttls_is_required_unless_turned_off(app, smtp):
    settings = mailer.SmtpSettings(host="127.0.0.1", port=smtp.port, user="u", password="p",
                                   sender="shop@kameng.example", tls="starttls", timeout=5)
    message = mailer.EmailMessage()
    message["To"] = "x@example.com"
    message.set_content("x")
    with pytest.raises(notices.DeliveryError, match="STARTTLS"):
        mailer.send(message, settings)
    assert smtp.messages == []


# --- SMS ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def sms(app, live):
    from app.network.simulators import serve

    simulator = AliyunSmsSimulator()
    server, url = serve(simulator)
    for key, value in sms_settings(url, live).items():
        platform.set_value(key, value, actor_id=None)
    try:
        yield simulator, url
    finally:
        server.shutdown()


def test_sms_carries_the_order_number_and_lookup_link_never_the_secret(app, live, shop, smtp, sms):
    simulator, url = sms
    product, _ = shop
    answer = requests.post(f"{live}/shop/api/orders", json={
        "product_id": product.id, "quantity": 1, "contact": "138 0013 8000", "query_password": PASSWORD,
        "channel": "sandbox", "email": EMAIL}, timeout=15)
    assert answer.status_code == 201
    order = db.session.scalar(select(Order).where(Order.order_no == answer.json()["order_no"]))
    assert notice_of(order, "sms").recipient == "13800138000" and simulator.messages == []
    r = requests.post(f"{live}/pay/notify/sandbox", data=h.sandbox_form(order.order_no, h.trade_no(), order.amount),
                      timeout=15)
    assert r.text == "success"
    [sent] = requests.get(f"{url}/_sim/messages", timeout=5).json()
    secret = sold_secret(order)
    assert sent["phone"] == "13800138000" and sent["params"] == {"order_no": order.order_no}
    assert f"{live}/shop/lookup?order_no={order.order_no}" in sent["content"] and secret not in sent["content"]
    assert notice_of(order, "sms").status == "sent"
    assert secret in mh.text_of(smtp.wait(1)[0])  # the e-mail still carries it


def test_an_unknown_or_illegal_number_is_final_and_a_system_error_retried(app, live, shop, sms):
    simulator, url = sms
    product, _ = shop
    app.config["NOTICE_RETRY_SECONDS"] = "0"
    requests.post(f"{url}/_sim/behaviour", json={"fail": "isp.SYSTEM_ERROR", "fail_times": 1}, timeout=5)
    answer = requests.post(f"{live}/shop/api/orders", json={
        "product_id": product.id, "quantity": 1, "contact": "+86 139 0013 9000", "query_password": PASSWORD,
        "channel": "sandbox"}, timeout=15).json()
    order = db.session.scalar(select(Order).where(Order.order_no == answer["order_no"]))
    requests.post(f"{live}/pay/notify/sandbox", data=h.sandbox_form(order.order_no, h.trade_no(), order.amount),
                  timeout=15)
    notice = notice_of(order, "sms")
    assert (notice.status, notice.attempts) == ("queued", 1) and "isp.SYSTEM_ERROR" in notice.last_error
    sweep()
    assert notice_of(order, "sms").status == "sent"
    assert len(requests.get(f"{url}/_sim/messages", timeout=5).json()) == 1
    # a refusal no retry can fix (a signature the provider does not accept) fails at once
    platform.set_value("sms_access_key_secret", "not-the-secret", actor_id=None)
    other = requests.post(f"{live}/shop/api/orders", json={
        "product_id": product.id, "quantity": 1, "contact": "13700137000", "query_password": PASSWORD,
        "channel": "sandbox"}, timeout=15).json()
    order2 = db.session.scalar(select(Order).where(Order.order_no == other["order_no"]))
    requests.post(f"{live}/pay/notify/sandbox", data=h.sandbox_form(order2.order_no, h.trade_no(), order2.amount),
                  timeout=15)
    notice = notice_of(order2, "sms")
    assert (notice.status, notice.attempts) == ("failed", 1) and "SignatureDoesNotMatch" in notice.last_error
    assert check_ledger() == []


def test_no_sms_for_a_contact_that_is_not_a_mobile_or_when_sms_is_off(app, client, shop):
    product, _ = shop
    platform.set_value("sms_enabled", True, actor_id=None)  # on, but not configured: nothing to send with
    order = checkout(client, product, email=None, contact="13800138000")
    assert notice_of(order, "sms") is None
    assert notices.mobile_number("qq:13800138000") is None and notices.mobile_number("010 6552 9988") is None
    assert notices.mobile_number("+86 138-0013-8000") == "13800138000"
