"""WeChat Pay API v3, native pay: signed requests, notifications verified (SHA256-RSA over timestamp, nonce and
body, the platform key chosen by Wechatpay-Serial) and decrypted (AEAD_AES_256_GCM with the APIv3 key)."""
from __future__ import annotations

import base64
import csv
import io
import json
import secrets
import time

import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.money import parse_yuan
from app.payments.channels import rsa
from app.payments.channels.base import (
    BadNotification,
    ChannelError,
    Notification,
    NotificationAnswer,
    PaymentRequest,
    PaymentStart,
    StatementLine,
)

DEFAULT_API = "https://api.mch.weixin.qq.com"
NATIVE_PATH = "/v3/pay/transactions/native"
MAX_AGE_SECONDS = 300


def decrypt_resource(api_v3_key: str, resource: dict) -> dict:
    try:
        ciphertext = base64.b64decode(resource["ciphertext"])
        associated = (resource.get("associated_data") or "").encode()
        plain = AESGCM(api_v3_key.encode()).decrypt(resource["nonce"].encode(), ciphertext, associated)
        tx = json.loads(plain)
    except (InvalidTag, KeyError, ValueError, TypeError, AttributeError):
        raise BadNotification("resource does not decrypt with the APIv3 key") from None
    if not isinstance(tx, dict):
        raise BadNotification("resource is not a transaction object")
    return tx


def authorization(mchid: str, serial_no: str, private_key_pem: str, method: str, path: str, body: str) -> str:
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    signature = rsa.sign(private_key_pem, f"{method}\n{path}\n{timestamp}\n{nonce}\n{body}\n")
    return (f'WECHATPAY2-SHA256-RSA2048 mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{timestamp}",serial_no="{serial_no}"')


class WechatPayChannel:
    code = "wechatpay"

    def __init__(self, appid: str, mchid: str, serial_no: str, private_key: str, api_v3_key: str,
                 platform_keys: dict[str, str], api_base: str = DEFAULT_API):
        self.appid, self.mchid, self.serial_no = appid or "", mchid or "", serial_no or ""
        self.private_key, self.api_v3_key = private_key or "", api_v3_key or ""
        self.platform_keys = platform_keys or {}  # serial -> PEM public key
        self.api_base = (api_base or DEFAULT_API).rstrip("/")

    def _configured(self) -> bool:
        return bool(self.mchid and self.api_v3_key and len(self.api_v3_key) == 32 and self.platform_keys)

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        if not (self._configured() and self.private_key and self.appid and self.serial_no):
            raise ChannelError("wechatpay channel is not configured")
        body = json.dumps({"appid": self.appid, "mchid": self.mchid, "description": request.subject[:127],
                           "out_trade_no": request.order_no, "notify_url": request.notify_url,
                           "amount": {"total": request.amount, "currency": "CNY"}},
                          ensure_ascii=False, separators=(",", ":"))
        headers = {"Authorization": authorization(self.mchid, self.serial_no, self.private_key, "POST", NATIVE_PATH,
                                                  body),
                   "Content-Type": "application/json", "Accept": "application/json"}
        try:
            response = requests.post(self.api_base + NATIVE_PATH, data=body.encode(), headers=headers, timeout=10)
        except requests.RequestException as exc:
            raise ChannelError(f"wechatpay unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ChannelError(f"wechatpay refused the payment: HTTP {response.status_code}")
        if not self._response_signed(response):
            raise ChannelError("wechatpay answer is not signed by a known platform key")
        code_url = response.json().get("code_url")
        if not code_url:
            raise ChannelError("wechatpay answer has no code_url")
        return PaymentStart(pay_url=f"/pay/wechatpay/qr/{request.order_no}", code_url=code_url)

    def _response_signed(self, response) -> bool:
        h = response.headers
        key = self.platform_keys.get(h.get("Wechatpay-Serial", ""))
        message = f"{h.get('Wechatpay-Timestamp', '')}\n{h.get('Wechatpay-Nonce', '')}\n{response.text}\n"
        return bool(key) and rsa.verify(key, message, h.get("Wechatpay-Signature", ""))

    def verify_notification(self, headers, form: dict, body: bytes) -> Notification:
        if not self._configured():
            raise BadNotification("channel has no key: every notification is refused")
        serial = headers.get("Wechatpay-Serial", "")
        timestamp = headers.get("Wechatpay-Timestamp", "")
        nonce = headers.get("Wechatpay-Nonce", "")
        signature = headers.get("Wechatpay-Signature", "")
        key = self.platform_keys.get(serial)
        if key is None:
            raise BadNotification("unknown Wechatpay-Serial")
        if not timestamp.isdecimal() or abs(time.time() - int(timestamp)) > MAX_AGE_SECONDS:
            raise BadNotification("Wechatpay-Timestamp outside the allowed window")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadNotification("body is not UTF-8") from None
        if not rsa.verify(key, f"{timestamp}\n{nonce}\n{text}\n", signature):
            raise BadNotification("bad signature")
        try:
            envelope = json.loads(text)
            resource = envelope["resource"]
        except (ValueError, KeyError, TypeError):
            raise BadNotification("malformed notification") from None
        if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise BadNotification("unsupported resource algorithm")
        tx = decrypt_resource(self.api_v3_key, resource)
        if tx.get("mchid") != self.mchid or (self.appid and tx.get("appid") != self.appid):
            raise BadNotification("notification for another merchant")
        amount = tx.get("amount") or {}
        if not isinstance(amount, dict) or not isinstance(amount.get("total"), int) \
                or isinstance(amount.get("total"), bool) or not tx.get("out_trade_no") \
                or not tx.get("transaction_id"):
            raise BadNotification("transaction lacks out_trade_no, transaction_id or amount.total")
        return Notification(order_no=tx["out_trade_no"], trade_no=tx["transaction_id"], amount=amount["total"],
                            currency=amount.get("currency", "CNY"), succeeded=tx.get("trade_state") == "SUCCESS",
                            raw={"event_type": envelope.get("event_type"), "transaction": tx})

    def success_answer(self) -> NotificationAnswer:
        return NotificationAnswer(json.dumps({"code": "SUCCESS", "message": "成功"}), 200, "application/json")

    def failure_answer(self, message: str) -> NotificationAnswer:
        return NotificationAnswer(json.dumps({"code": "FAIL", "message": message[:100]}, ensure_ascii=False), 400,
                                  "application/json")

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """WeChat Pay's trade bill: CSV whose cells start with '`'; columns 微信订单号, 商户订单号, 交易状态,
        应结订单金额 (yuan) and 退款金额; summary lines after a blank header-like line are skipped."""
        text = content.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip() for h in rows[0]]
        try:
            i_trade, i_order, i_state = header.index("微信订单号"), header.index("商户订单号"), header.index("交易状态")
            i_amount = header.index("应结订单金额")
        except ValueError:
            raise ChannelError("not a WeChat Pay trade bill: missing 微信订单号/商户订单号/交易状态/应结订单金额") \
                from None
        i_refund = header.index("退款金额") if "退款金额" in header else None
        lines = []
        for row in rows[1:]:
            cells = [c.strip().lstrip("`") for c in row]
            if len(cells) <= max(i_trade, i_order, i_amount, i_state) or not cells[i_trade]:
                break  # the summary block (总交易单数, ...) follows the detail lines
            if cells[i_state] == "REFUND" and i_refund is not None:
                lines.append(StatementLine(cells[i_trade], cells[i_order], parse_yuan(cells[i_refund]), "refund"))
            else:
                lines.append(StatementLine(cells[i_trade], cells[i_order], parse_yuan(cells[i_amount]), "payment"))
        return lines
