"""Alipay (支付宝) page pay: RSA2 request signing and asynchronous notification verification.

Alipay's rules: the string to sign is every non-empty parameter except `sign` (and, for notifications, also
`sign_type`), sorted by name, joined as k=v with &; the signature is base64 SHA256withRSA. The notification is
answered with the plain body `success`.
"""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from urllib.parse import urlencode

from app.money import format_fen, parse_yuan
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

DEFAULT_GATEWAY = "https://openapi.alipay.com/gateway.do"
PAID_STATES = {"TRADE_SUCCESS", "TRADE_FINISHED"}


def content_to_sign(params: dict, exclude: tuple[str, ...] = ("sign",)) -> str:
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in exclude and params[k] not in (None, ""))


class AlipayChannel:
    code = "alipay"

    def __init__(self, app_id: str, private_key: str, alipay_public_key: str, gateway: str = DEFAULT_GATEWAY):
        self.app_id = app_id or ""
        self.private_key = private_key or ""
        self.alipay_public_key = alipay_public_key or ""
        self.gateway = gateway or DEFAULT_GATEWAY

    def _configured(self) -> bool:
        return bool(self.app_id and self.private_key and self.alipay_public_key)

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        if not self._configured():
            raise ChannelError("alipay channel is not configured")
        params = {
            "app_id": self.app_id, "method": "alipay.trade.page.pay", "format": "JSON", "charset": "utf-8",
            "sign_type": "RSA2", "timestamp": datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "version": "1.0",
            "notify_url": request.notify_url, "return_url": request.return_url,
            "biz_content": json.dumps({"out_trade_no": request.order_no, "product_code": "FAST_INSTANT_TRADE_PAY",
                                       "total_amount": format_fen(request.amount, symbol=False).replace(",", ""),
                                       "subject": request.subject[:256]}, ensure_ascii=False, separators=(",", ":")),
        }
        params["sign"] = rsa.sign(self.private_key, content_to_sign(params))
        return PaymentStart(pay_url=f"{self.gateway}?{urlencode(params)}")

    def verify_notification(self, headers, form: dict, body: bytes) -> Notification:
        if not self._configured():
            raise BadNotification("channel has no key: every notification is refused")
        signature = form.get("sign")
        if not signature or form.get("sign_type", "RSA2") != "RSA2":
            raise BadNotification("missing sign or unsupported sign_type")
        if not rsa.verify(self.alipay_public_key, content_to_sign(form, ("sign", "sign_type")), signature):
            raise BadNotification("bad signature")
        if form.get("app_id") != self.app_id:
            raise BadNotification("notification for another app_id")
        for name in ("out_trade_no", "trade_no", "total_amount", "trade_status"):
            if not form.get(name):
                raise BadNotification(f"missing {name}")
        try:
            amount = parse_yuan(form["total_amount"])
        except ValueError:
            raise BadNotification("total_amount is not an amount") from None
        return Notification(order_no=form["out_trade_no"], trade_no=form["trade_no"], amount=amount,
                            currency=form.get("trans_currency") or "CNY",  # cross-border: the priced currency
                            succeeded=form["trade_status"] in PAID_STATES, raw=dict(form))

    def success_answer(self) -> NotificationAnswer:
        return NotificationAnswer("success")

    def failure_answer(self, message: str) -> NotificationAnswer:
        return NotificationAnswer("failure", status=400)

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """Alipay's trade bill (业务明细, GBK CSV): lines starting with '#' are notes; columns include
        支付宝交易号, 商户订单号, 业务类型, 订单金额（元）."""
        text = _decode(content)
        rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].lstrip().startswith("#")]
        if not rows:
            return []
        header = [h.strip() for h in rows[0]]
        try:
            i_trade, i_order = header.index("支付宝交易号"), header.index("商户订单号")
            i_amount = header.index("订单金额（元）")
        except ValueError:
            raise ChannelError("not an Alipay trade bill: missing 支付宝交易号/商户订单号/订单金额（元）") from None
        i_kind = header.index("业务类型") if "业务类型" in header else None
        lines = []
        for row in rows[1:]:
            cells = [c.strip().lstrip("\t") for c in row]
            if len(cells) <= max(i_trade, i_order, i_amount) or not cells[i_trade]:
                continue
            kind = "refund" if i_kind is not None and "退款" in cells[i_kind] else "payment"
            lines.append(StatementLine(cells[i_trade], cells[i_order], abs(parse_yuan(cells[i_amount])), kind))
        return lines


def _decode(content: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return content.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ChannelError("statement is neither UTF-8 nor GBK")
