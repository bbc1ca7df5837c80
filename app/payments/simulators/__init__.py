"""Local simulators of the payment gateways (Alipay, WeChat Pay v3, UnionPay 全渠道, 易支付), each speaking its
gateway's real protocol over HTTP (signatures, notifications and their retries, queries, close, refunds, bills),
for the demo and the tests. Plain WSGI apps, thread-safe; `flask kameng channel-sim --channel C --port P` serves one.

Every simulator has the same control API (JSON, unsigned; for tests and demos only):

- `POST /_sim/merchant` registers the merchant (our side's public key or certificate and ids; the body is the
  channel's own, see its module) and `GET /_sim/keys` gives what the merchant must configure (the gateway's
  public key or certificates and ids). `merchant_settings(url)` in each module does both and returns the
  settings to save for the channel, with newly generated merchant keys.
- `POST /_sim/pay/<out_trade_no>` {"notify"?: "send"|"drop", "duplicates"?: int}: the buyer pays an order the
  simulator has seen (through the pay URL the buyer opened, or a server-side create/precreate call); the
  simulator sends the signed notification to the notify URL it was given (resent until answered as the
  protocol says, `duplicates` extra copies). 200 {"out_trade_no", "trade_no", "amount", "notify_status"}; 404
  for an order it never saw; 409 for one closed, expired or already paid.
- `GET /_sim/refunds`: a JSON list of the refunds it received, each {"out_trade_no", "out_refund_no",
  "amount" (fen), "status", "requests" (how many refund calls named it), "trade_no"}. A refund is paid out
  once per out_refund_no however often it is requested.
- `GET /_sim/orders`: a JSON list of the orders it saw, each {"out_trade_no", "trade_no", "amount", "state",
  "notify_url", "notifications_sent", "queries", "closes"}.
- `POST /_sim/behaviour` {"notify": "send"|"drop", "notify_duplicates": int, "refund": "success"|"processing"|
  "timeout"|"fail"|"abnormal", "refund_timeout_ms": int, "refund_processing_queries": int}: how it behaves from
  now on (omitted keys keep their value); answers the behaviour in force. "timeout" records and performs the
  refund but answers only after refund_timeout_ms (longer than the caller waits).
- `POST /_sim/bill/plant` {"out_trade_no", "amount"}: the bill shows that amount (fen) for that order; an order
  it never saw becomes an extra paid line. `POST /_sim/reset` forgets orders, refunds, plants and behaviour.
"""
from __future__ import annotations

SIMULATED_CHANNELS = ("alipay", "wechatpay", "unionpay", "epay")


def simulator_for(channel: str):
    """A new simulator (a WSGI app) for the channel."""
    if channel == "alipay":
        from app.payments.simulators.alipay import AlipaySimulator

        return AlipaySimulator()
    if channel == "wechatpay":
        from app.payments.simulators.wechatpay import WechatPaySimulator

        return WechatPaySimulator()
    if channel == "unionpay":
        from app.payments.simulators.unionpay import UnionPaySimulator

        return UnionPaySimulator()
    if channel == "epay":
        from app.payments.simulators.epay import EpaySimulator

        return EpaySimulator()
    raise ValueError(f"no simulator for channel {channel!r}")


def merchant_settings(channel: str, url: str) -> dict:
    """Generate merchant keys, register them with the simulator at `url`, and return the channel's settings."""
    if channel == "alipay":
        from app.payments.simulators import alipay as module
    elif channel == "wechatpay":
        from app.payments.simulators import wechatpay as module
    elif channel == "unionpay":
        from app.payments.simulators import unionpay as module
    elif channel == "epay":
        from app.payments.simulators import epay as module
    else:
        raise ValueError(f"no simulator for channel {channel!r}")
    return module.merchant_settings(url.rstrip("/"))
