"""Helpers shared by the payment tests: keys generated here, channel setup, signed notifications for the sandbox,
Alipay (RSA2) and WeChat Pay v3 (SHA256-RSA + AEAD_AES_256_GCM), and snapshots of what a refused notification
must leave unchanged."""
from __future__ import annotations

import base64
import functools
import json
import secrets
import time
import uuid
from datetime import timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from app.catalog.models import CardSecret
from app.clock import utcnow
from app.extensions import db
from app.ledger.models import Account, Journal, Posting
from app.orders import service as orders
from app.orders.models import Order
from app.payments import service as payments
from app.payments.channels import sandbox
from app.payments.models import OrderCheckout, Payment, PaymentNotification, Refund

SANDBOX_KEY = "sandbox-test-key-0123456789"
ALIPAY_APP_ID = "2021000000000001"
WECHAT_APPID = "wx0000000000000001"
WECHAT_MCHID = "1900000001"
WECHAT_SERIAL = "PLATFORMSERIAL0001"
MERCHANT_SERIAL = "MERCHANTSERIAL0001"
API_V3_KEY = "0123456789abcdef0123456789ABCDEF"  # 32 characters
PASSWORD = "order-pass-123"


def rsa_keypair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@functools.cache
def keys() -> dict[str, tuple[str, str]]:
    """RSA 2048 key pairs generated once per run: the merchant's, Alipay's, WeChat's platform key, a stranger's."""
    return {name: rsa_keypair() for name in ("merchant", "alipay", "wechat", "stranger")}


def rsa_sign(private_pem: str, message: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return base64.b64encode(key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


# --- channels ----------------------------------------------------------------------------------------------

def setup_sandbox(key: str = SANDBOX_KEY, enabled: bool = True) -> None:
    payments.save_channel("sandbox", enabled, {"key": key})


def setup_alipay(**override) -> None:
    settings = {"app_id": ALIPAY_APP_ID, "private_key": keys()["merchant"][0],
                "alipay_public_key": keys()["alipay"][1], "gateway": "https://openapi.alipay.test/gateway.do"}
    settings.update(override)
    payments.save_channel("alipay", True, settings)


def setup_wechat(api_base: str = "http://127.0.0.1:9", **override) -> None:
    settings = {"appid": WECHAT_APPID, "mchid": WECHAT_MCHID, "serial_no": MERCHANT_SERIAL,
                "private_key": keys()["merchant"][0], "api_v3_key": API_V3_KEY,
                "platform_keys": {WECHAT_SERIAL: keys()["wechat"][1]}, "api_base": api_base}
    settings.update(override)
    payments.save_channel("wechatpay", True, settings)


def setup_all() -> None:
    setup_sandbox()
    setup_alipay()
    setup_wechat()


def guest_order(product, channel: str, quantity: int = 1, password: str = PASSWORD, contact: str = "13800000000",
                expires_in: timedelta = timedelta(minutes=15)) -> Order:
    """An unpaid storefront order (as checkout makes it, without starting the payment at the channel)."""
    order = orders.place_guest_order(product.id, quantity, contact, channel)
    db.session.add(OrderCheckout(order_id=order.id, query_password_hash=generate_password_hash(password),
                                 expires_at=utcnow() + expires_in))
    db.session.commit()
    return order


def channel_answers_refund(refund) -> str:
    """The channel pays a requested refund back: the sandbox when its job runs (dispatched as after a request);
    a gateway not reachable from these tests gives its success answer through the refund state machine's booking
    (app.payments.refunds.book), the same call a query or notification makes. Returns the refund's status."""
    from app.outbox.service import dispatch_due
    from app.payments import refunds
    from app.payments.channels.base import RefundResult

    dispatch_due()
    db.session.rollback()
    row = db.session.get(Refund, refund.id)
    if row.status in ("requested", "processing"):
        return refunds.book(row.id, RefundResult("succeeded", channel_refund_no="REF" + row.out_refund_no))
    return row.status


def trade_no(prefix: str = "T") -> str:
    return prefix + uuid.uuid4().hex[:24]


# --- notifications -----------------------------------------------------------------------------------------

def sandbox_form(order_no: str, trade: str, amount: int, *, key: str = SANDBOX_KEY, status: str = "SUCCESS",
                 currency: str = "CNY", ts: int | None = None, nonce: str | None = None) -> dict:
    fields = {"order_no": order_no, "trade_no": trade, "amount": str(amount), "currency": currency,
              "status": status, "ts": str(int(time.time()) if ts is None else ts),
              "nonce": nonce or secrets.token_hex(8)}
    fields["sign"] = sandbox.sign(key, fields)
    return fields


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def alipay_params(order_no: str, trade: str, amount: int, **override) -> dict:
    """An Alipay notification's fields before signing (total_amount in yuan)."""
    params = {"notify_time": "2024-05-01 12:00:00", "notify_type": "trade_status_sync",
              "notify_id": uuid.uuid4().hex, "charset": "utf-8", "version": "1.0", "sign_type": "RSA2",
              "app_id": ALIPAY_APP_ID, "trade_no": trade, "out_trade_no": order_no,
              "total_amount": yuan(amount), "receipt_amount": yuan(amount),
              "trade_status": "TRADE_SUCCESS", "buyer_id": "2088000000000001", "seller_id": "2088000000000002",
              "subject": "测试商品"}
    params.update(override)
    return {k: v for k, v in params.items() if v is not None}


def alipay_sign(params: dict, private_pem: str | None = None) -> dict:
    """Alipay's notification signature: every non-empty field but sign and sign_type, sorted, k=v joined by &."""
    content = "&".join(f"{k}={params[k]}" for k in sorted(params)
                       if k not in ("sign", "sign_type") and params[k] not in (None, ""))
    return {**params, "sign": rsa_sign(private_pem or keys()["alipay"][0], content)}


def alipay_form(order_no: str, trade: str, amount: int, **override) -> dict:
    return alipay_sign(alipay_params(order_no, trade, amount, **override))


def wechat_transaction(order_no: str, trade: str, fen: int, **override) -> dict:
    amount = fen
    tx = {"mchid": WECHAT_MCHID, "appid": WECHAT_APPID, "out_trade_no": order_no, "transaction_id": trade,
          "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
          "bank_type": "OTHERS", "success_time": "2024-05-01T12:00:00+08:00", "payer": {"openid": "o-test"},
          "amount": {"total": amount, "payer_total": amount, "currency": "CNY", "payer_currency": "CNY"}}
    tx.update(override)
    return tx


def wechat_encrypt(plain: bytes, key: str = API_V3_KEY, associated: str = "transaction") -> dict:
    nonce = secrets.token_hex(6)  # 12 characters, as WeChat sends
    ciphertext = AESGCM(key.encode()).encrypt(nonce.encode(), plain, associated.encode())
    return {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": associated, "nonce": nonce}


def wechat_body(tx, *, resource: dict | None = None) -> bytes:
    plain = tx if isinstance(tx, bytes) else json.dumps(tx, ensure_ascii=False).encode()
    envelope = {"id": str(uuid.uuid4()), "create_time": "2024-05-01T12:00:01+08:00",
                "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
                "resource": resource if resource is not None else wechat_encrypt(plain)}
    return json.dumps(envelope, ensure_ascii=False).encode()


def wechat_headers(body: bytes, *, private_pem: str | None = None, serial: str = WECHAT_SERIAL,
                   ts: int | None = None, nonce: str | None = None) -> dict:
    ts_s = str(int(time.time()) if ts is None else ts)
    nonce = nonce or secrets.token_hex(16)
    signature = rsa_sign(private_pem or keys()["wechat"][0], f"{ts_s}\n{nonce}\n{body.decode()}\n")
    return {"Wechatpay-Timestamp": ts_s, "Wechatpay-Nonce": nonce, "Wechatpay-Signature": signature,
            "Wechatpay-Serial": serial, "Content-Type": "application/json"}


def wechat_notification(order_no: str, trade: str, fen: int, **override) -> tuple[bytes, dict]:
    body = wechat_body(wechat_transaction(order_no, trade, fen, **override))
    return body, wechat_headers(body)


def notify(client, channel: str, order: Order, trade: str, amount: int | None = None, **override):
    """Send a correctly signed, successful notification for `order` through the test client."""
    amount = order.amount if amount is None else amount
    if channel == "sandbox":
        return client.post("/pay/notify/sandbox", data=sandbox_form(order.order_no, trade, amount, **override))
    if channel == "alipay":
        return client.post("/pay/notify/alipay", data=alipay_form(order.order_no, trade, amount, **override))
    body, headers = wechat_notification(order.order_no, trade, amount, **override)
    return client.post("/pay/notify/wechatpay", data=body, headers=headers)


def accepted(channel: str, response) -> bool:
    if channel == "wechatpay":
        return response.status_code == 200 and response.get_json() == {"code": "SUCCESS", "message": "成功"}
    return response.status_code == 200 and response.get_data(as_text=True) == "success"


# --- state snapshots ---------------------------------------------------------------------------------------

def snapshot() -> dict:
    """Everything a refused notification must leave as it was (the notification log aside)."""
    db.session.rollback()
    return {
        "payments": db.session.execute(select(Payment.channel, Payment.trade_no, Payment.order_id, Payment.status)
                                       .order_by(Payment.id)).all(),
        "journals": db.session.execute(select(Journal.idempotency_key).order_by(Journal.id)).all(),
        "postings": db.session.scalar(select(func.count()).select_from(Posting)),
        "orders": db.session.execute(select(Order.order_no, Order.status, Order.paid_at).order_by(Order.id)).all(),
        "secrets": db.session.execute(select(CardSecret.id, CardSecret.status, CardSecret.order_id)
                                      .order_by(CardSecret.id)).all(),
        "refunds": db.session.scalar(select(func.count()).select_from(Refund)),
    }


def balances() -> dict[str, int]:
    """Every account's balance as the sum of its postings."""
    db.session.rollback()
    rows = db.session.execute(select(Account.code, func.coalesce(func.sum(Posting.amount), 0))
                              .outerjoin(Posting, Posting.account_id == Account.id).group_by(Account.code)).all()
    return {code: int(total) for code, total in rows}


def order_state(order_no: str) -> str:
    db.session.rollback()
    return db.session.scalar(select(Order.status).where(Order.order_no == order_no))


def notifications(order_no: str | None = None) -> list[tuple[str, str | None]]:
    db.session.rollback()
    query = select(PaymentNotification.outcome, PaymentNotification.trade_no).order_by(PaymentNotification.id)
    if order_no is not None:
        query = query.where(PaymentNotification.order_no == order_no)
    return [tuple(r) for r in db.session.execute(query).all()]


def count(model, *where) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def sale_journals(order: Order) -> int:
    return count(Journal, Journal.order_id == order.id, Journal.kind == "sale")


def secrets_of(order: Order) -> list[tuple[int, str]]:
    db.session.rollback()
    return [tuple(r) for r in db.session.execute(select(CardSecret.id, CardSecret.status)
                                                 .where(CardSecret.order_id == order.id)
                                                 .order_by(CardSecret.id)).all()]
