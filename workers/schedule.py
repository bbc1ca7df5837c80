"""Periodic jobs, declared in one list with stable names; the worker's cron thread enqueues them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

from workers import jobs


@dataclass(frozen=True)
class Periodic:
    name: str
    func: Callable
    queue: str
    interval_setting: str | None = None
    cron: str | None = None  # a cron expression instead of an interval (daily jobs)


PERIODIC = [
    Periodic("low-stock-scan", jobs.scan_low_stock, "low", "LOW_STOCK_SCAN_SECONDS"),
    Periodic("import-resume", jobs.resume_imports, "low", cron="*/5 * * * *"),
    Periodic("outbox-sweep", jobs.sweep_outbox, "high", "OUTBOX_SWEEP_SECONDS"),
    Periodic("nonce-purge", jobs.purge_nonces, "low", "NONCE_PURGE_SECONDS"),
    Periodic("lookup-attempt-purge", jobs.purge_lookup_attempts, "low", cron="7 * * * *"),
    Periodic("risk-day-usage-purge", jobs.purge_risk_day_usage, "low", cron="17 3 * * *"),
    Periodic("order-expiry", jobs.expire_unpaid_orders, "default", "ORDER_EXPIRY_SCAN_SECONDS"),
    Periodic("topup-expiry", jobs.expire_unpaid_topups, "default", "ORDER_EXPIRY_SCAN_SECONDS"),
    Periodic("risk-review-expiry", jobs.expire_review_holds, "default", cron="*/5 * * * *"),
    # Daily: yesterday (China time) is complete whenever it runs; re-running a day replaces its result.
    # Channels publish the day's bill in the morning (China time); 02:30 UTC is 10:30 there.
    Periodic("channel-reconcile", jobs.reconcile_channels_daily, "low", cron="30 2 * * *"),
    Periodic("refund-poll", jobs.poll_refunds, "high", "REFUND_POLL_SECONDS"),
    Periodic("payment-query", jobs.query_open_payments, "high", "PAYMENT_QUERY_SECONDS"),
    Periodic("commission-settlement", jobs.settle_commissions, "low", cron="0 2 * * *"),
    # Monthly, on the 1st (the cron runs in the worker's clock; 03:10 UTC is 11:10 in China, the month is closed).
    Periodic("team-bonus", jobs.award_team_bonus, "low", cron="10 3 1 * *"),
    Periodic("withdrawal-poll", jobs.poll_paying_withdrawals, "default", "WITHDRAWAL_POLL_SECONDS"),
    Periodic("rollup-orders", jobs.fold_order_rollups, "low", "ROLLUP_ORDERS_SECONDS"),
    Periodic("rollup-money", jobs.fold_money_flows, "low", "ROLLUP_MONEY_SECONDS"),
    Periodic("rollup-compact", jobs.compact_rollups, "low", "ROLLUP_COMPACT_SECONDS"),
    Periodic("supplier-sync", jobs.sync_suppliers, "low", "SUPPLIER_SYNC_SECONDS"),
    Periodic("recharge-poll", jobs.poll_recharges, "high", "RECHARGE_POLL_SECONDS"),
    Periodic("delivery-sla", jobs.enforce_delivery_sla, "high", "DELIVERY_SLA_SCAN_SECONDS"),
    Periodic("chain-seal", jobs.seal_chain, "default", "CHAIN_SEAL_SECONDS"),
    Periodic("alerts-evaluate", jobs.evaluate_alerts, "default", "ALERT_EVALUATE_SECONDS"),
    # Risk learning: a new fraud model version weekly (Monday 03:20 UTC, a shadow until promoted); agent anomaly
    # scores daily (03:40 UTC), both on the low queue, off the request path.
    Periodic("risk-model-train", jobs.train_risk_model, "low", cron="20 3 * * 1"),
    Periodic("risk-agent-anomalies", jobs.score_agent_anomalies, "low", cron="40 3 * * *"),
]


def build_cron(app: Flask, connection):
    """An RQ CronScheduler holding every periodic job at its configured interval."""
    from rq.cron import CronScheduler

    cron = CronScheduler(connection=connection, name=f"kameng-cron-{id(app)}")
    for item in PERIODIC:
        if item.cron:
            cron.register(item.func, item.queue, cron=item.cron, name=item.name)
        else:
            cron.register(item.func, item.queue, interval=int(app.config[item.interval_setting]), name=item.name)
    return cron
