"""The payout adapter: a bank transfer (代付) to the agent's card over signed HTTP.

The bank side is idempotent on our request number (the withdrawal number): sending the same transfer again
returns the first result, so a retry after a timeout asks rather than pays again. `query` asks for a transfer's
status without sending it (the withdrawal poll): success, failed, not_found (the bank never received that request
number), or unknown (processing, no answer).
"""
from __future__ import annotations

from dataclasses import dataclass

import requests
from flask import current_app
from flask_babel import gettext as _

from app import outbound
from app.network.realname import signed_post


@dataclass(frozen=True)
class PayoutResult:
    status: str  # success, failed, unknown (timeout or no answer: NOT a failure); query also not_found
    ref: str | None = None
    reason: str | None = None


def transfer(out_no: str, amount: int, card: str, name: str) -> PayoutResult:
    url, key = current_app.config.get("PAYOUT_URL"), current_app.config.get("PAYOUT_KEY")
    if not url or not key:
        return PayoutResult("unknown", reason="打款通道未配置 (PAYOUT_URL / PAYOUT_KEY not set)")  # i18n-keep: data
    try:
        resp = signed_post(url.rstrip("/") + "/v1/transfers", key,
                           {"out_no": out_no, "amount": amount, "card": card, "name": name},
                           current_app.config.get("PAYOUT_TIMEOUT", 10))
    except (requests.Timeout, outbound.DeadlineExceeded):
        # i18n-keep: data
        return PayoutResult("unknown", reason="打款请求超时，结果未知 (payout timed out; result unknown)")
    except outbound.FAILURES as exc:
        return PayoutResult("unknown", reason=f"打款通道连接失败 (payout unreachable: "  # i18n-keep: data
                                                 f"{outbound.short_reason(exc)[:120]})")
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code != 200 or not isinstance(data, dict) or data.get("status") not in ("success", "failed"):
        # i18n-keep: data
        return PayoutResult("unknown", reason=f"打款通道应答异常 (payout answered HTTP {resp.status_code})")
    return PayoutResult(data["status"], ref=str(data.get("ref") or "")[:64] or None,
                        reason=(data.get("reason") or None) and str(data["reason"])[:200])


def query(out_no: str) -> PayoutResult:
    """The status of a transfer we sent (signed POST /v1/transfers/query {"out_no"}); never sends money."""
    url, key = current_app.config.get("PAYOUT_URL"), current_app.config.get("PAYOUT_KEY")
    if not url or not key:
        return PayoutResult("unknown", reason="打款通道未配置 (PAYOUT_URL / PAYOUT_KEY not set)")  # i18n-keep: data
    try:
        resp = signed_post(url.rstrip("/") + "/v1/transfers/query", key, {"out_no": out_no},
                           current_app.config.get("PAYOUT_TIMEOUT", 10))
        data = resp.json()
    except outbound.FAILURES as exc:
        # i18n-keep: data
        return PayoutResult("unknown", reason=f"打款查询失败 (payout query failed: {outbound.short_reason(exc)[:120]})")
    except ValueError:
        data = None
    if resp.status_code != 200 or not isinstance(data, dict):
        # i18n-keep: data
        return PayoutResult("unknown", reason=f"打款查询应答异常 (payout query answered HTTP {resp.status_code})")
    if data.get("status") == "not_found":
        return PayoutResult("not_found", reason=_("银行未收到该笔打款"))
    if data.get("status") not in ("success", "failed"):
        # i18n-keep: data
        return PayoutResult("unknown", reason=f"打款结果未知：{str(data.get('status'))[:32]} (payout result unknown)")
    return PayoutResult(data["status"], ref=str(data.get("ref") or "")[:64] or None,
                        reason=(data.get("reason") or None) and str(data["reason"])[:200])
