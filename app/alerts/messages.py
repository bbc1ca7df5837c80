"""An alert's words: composed from its facts in a channel's language (zh_CN first, English), for the robots, the
e-mail and the alert log. Only facts go in (app/alerts/rules.py says which): no secret, no personal data."""
from __future__ import annotations

import json

from flask import current_app
from flask_babel import force_locale, gettext

from app.alerts.robots import Message
from app.clock import to_local, utcnow
from app.money import format_fen


def _channel_name(code: str) -> str:
    from app.views_common import CHANNEL_TEXT

    return str(CHANNEL_TEXT.get(code, code))


def headline(rule: str, facts: dict) -> str:
    """One line saying what is wrong, in the current locale."""
    f = facts
    if rule == "low_stock":
        return gettext("补货提醒：%(product)s 库存 %(available)s（阈值 %(threshold)s）", product=f.get("product"),
                       available=f.get("available"), threshold=f.get("threshold"))
    if rule == "supplier_balance":
        return gettext("供应商余额不足：%(supplier)s 余额 %(balance)s（阈值 %(threshold)s）",
                       supplier=f.get("supplier"), balance=_fen(f.get("balance")), threshold=_fen(f.get("threshold")))
    if rule == "topup_unknown":
        return gettext("直充结果未知：%(supplier)s 有 %(count)s 笔超过 %(minutes)s 分钟未确认",
                       supplier=f.get("supplier"), count=f.get("count"), minutes=f.get("minutes"))
    if rule == "topup_late":
        return gettext("直充处理超时：%(supplier)s 有 %(count)s 笔超过 %(minutes)s 分钟仍在处理",
                       supplier=f.get("supplier"), count=f.get("count"), minutes=f.get("minutes"))
    if rule == "delivery_sla":
        return gettext("发货超时：%(count)s 笔订单付款后超过 %(minutes)s 分钟未发货", count=f.get("count"),
                       minutes=f.get("minutes"))
    if rule == "payment_mismatch":
        return gettext("支付金额不符：%(channel)s 近 %(window)s 分钟 %(count)s 笔",
                       channel=_channel_name(f.get("channel", "")), window=f.get("window"), count=f.get("count"))
    if rule == "reconciliation":
        return gettext("对账差异：%(channel)s %(day)s 有 %(count)s 条差异",
                       channel=_channel_name(f.get("channel", "")), day=f.get("day") or "-", count=f.get("count"))
    if rule == "refund_failed":
        texts = {"failed": gettext("退款失败"), "abnormal": gettext("退款异常（买家账户无法入账）"),
                 "manual": gettext("退款需人工处理"), "stuck": gettext("退款渠道无应答")}
        return gettext("%(state)s：订单 %(order_no)s（%(channel)s，%(amount)s）",
                       state=texts.get(f.get("state"), f.get("state")), order_no=f.get("order_no"),
                       channel=_channel_name(f.get("channel", "")), amount=_fen(f.get("amount")))
    if rule == "job_failed":
        return gettext("任务失败：%(function)s（队列 %(queue)s）%(count)s 个", function=f.get("function"),
                       queue=f.get("queue"), count=f.get("count"))
    if rule == "risk_spike":
        return gettext("风控拦截激增：近 %(window)s 分钟拦截 %(blocks)s 次、转人工审核 %(reviews)s 次",
                       window=f.get("window"), blocks=f.get("blocks"), reviews=f.get("reviews"))
    if rule == "test":
        return gettext("测试消息：告警渠道「%(channel)s」可以收到告警", channel=f.get("channel"))
    return rule


def rule_name(rule: str) -> str:
    names = {"low_stock": gettext("库存不足"), "supplier_balance": gettext("供应商余额不足"),
             "topup_unknown": gettext("直充结果未知"), "topup_late": gettext("直充处理超时"),
             "delivery_sla": gettext("发货超时"), "payment_mismatch": gettext("支付金额不符"),
             "reconciliation": gettext("对账差异"), "refund_failed": gettext("退款失败"),
             "job_failed": gettext("任务失败"), "risk_spike": gettext("风控拦截激增"), "test": gettext("测试消息")}
    return names.get(rule, rule)


def severity_name(severity: str) -> str:
    return {"info": gettext("提示"), "warning": gettext("警告"), "critical": gettext("严重")}.get(severity, severity)


def compose(alert, event: str, locale: str) -> Message:
    """The message for an alert (event "raised") or its recovery ("resolved") in locale (zh or en)."""
    facts = json.loads(alert.facts or "{}")
    with force_locale("en" if locale == "en" else "zh"):
        what = headline(alert.rule, facts)
        if alert.rule == "test":
            title = gettext("【测试】%(what)s", what=what)
        elif event == "resolved":
            title = gettext("【恢复】%(what)s", what=what)
        else:
            title = gettext("【告警】%(severity)s · %(what)s", severity=severity_name(alert.severity), what=what)
        lines = [gettext("类型：%(rule)s", rule=rule_name(alert.rule)),
                 gettext("首次发现：%(at)s", at=_time(alert.opened_at))]
        if event == "resolved" and alert.resolved_at:
            minutes = max(0, int((alert.resolved_at - alert.opened_at).total_seconds() // 60))
            lines.append(gettext("恢复时间：%(at)s（持续 %(n)s 分钟）", at=_time(alert.resolved_at), n=minutes))
        items = facts.get("orders") or facts.get("jobs")
        if items and event == "raised":
            listed = ", ".join(map(str, items)) + ("…" if (facts.get("count") or 0) > len(items) else "")
            lines.append(gettext("订单：%(items)s", items=listed) if facts.get("orders")
                         else gettext("任务：%(items)s", items=listed))
        if alert.rule == "refund_failed" and event == "raised":
            lines.append(gettext("退款单号：%(no)s", no=facts.get("refund_no")))
        lines.append(gettext("告警编号：#%(id)s", id=alert.id))
    return Message(title=title, lines=lines, link=link(alert))


def summary(rule: str, facts: dict) -> str:
    """The zh_CN one-line text the log keeps."""
    with force_locale("zh"):
        return headline(rule, facts)[:255]


def link(alert) -> str | None:
    """The alert's page on the staff site, when PUBLIC_BASE_URL says where that is."""
    base = (current_app.config.get("PUBLIC_BASE_URL") or "").rstrip("/")
    return f"{base}/alerts/show/{alert.id}" if base and alert.id else None


def _fen(value) -> str:
    return format_fen(value) if isinstance(value, int) else "-"


def _time(at) -> str:
    return (to_local(at or utcnow())).strftime("%Y-%m-%d %H:%M:%S")
