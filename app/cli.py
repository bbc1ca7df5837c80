"""`flask kameng ...`: one group per concern; commands translate arguments and call services."""
from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import click
from flask.cli import AppGroup

from app.cli_common import fail
from app.errors import KamengError
from app.risk.feed_cli import feed_cli
from app.risk.learning.cli import anomaly_cli, model_cli

kameng_cli = AppGroup("kameng", help="卡盟 Kameng commands.")  # i18n-keep: English text


@kameng_cli.command("ledger-check")
def ledger_check() -> None:
    """Verify every ledger invariant; exit 1 naming each one that broke."""
    from app.ledger.invariants import check_ledger

    problems = check_ledger()
    if problems:
        for line in problems:
            click.echo(f"FAIL {line}", err=True)
        sys.exit(1)
    click.echo("ledger ok: all invariants hold")


card_cli = AppGroup("card", help="Card secret (卡密) stock.")  # i18n-keep: English text
kameng_cli.add_command(card_cli)


@card_cli.command("import")
@click.option("--product", "product_id", required=True, type=int, help="Product id (a card product).")
@click.option("--dry-run", is_flag=True, help="Only print the report; import nothing.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def card_import(product_id: int, dry_run: bool, file: Path) -> None:
    """Import card secrets from FILE (TXT one per line, or CSV) and print the report."""
    from app.catalog import cards

    if not file.exists():
        fail(f"file not found: {file}")
    try:
        text = cards.decode_upload(file.read_bytes())
        if dry_run:
            report = cards.preview(product_id, text, file.name)
        else:
            batch = cards.create_import(product_id, text, file.name, "cli")
            report = cards.run_import(batch.id)
    except KamengError as exc:
        fail(exc.message)
    _print_report(report)


def _print_report(report: dict) -> None:
    click.echo(f"lines: {report['total_lines']}  added: {report['added']}  "
               f"duplicates: {report['duplicates']}  rejected: {report['rejected']}")
    for line, reason in report.get("duplicate_lines", [])[:50]:
        click.echo(f"  duplicate line {line}: {reason}")
    for line, reason in report.get("rejected_lines", [])[:50]:
        click.echo(f"  rejected line {line}: {reason}")


@kameng_cli.command("worker")
@click.option("--queues", default="high,default,low", show_default=True, help="Comma-separated queue names.")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option("--no-cron", is_flag=True, help="Do not run the periodic jobs in this worker.")
def worker(queues: str, burst: bool, no_cron: bool) -> None:
    """Run an RQ worker (with RQ's scheduler and the periodic jobs) inside the app."""
    from workers.queues import QUEUES
    from workers.runner import run_worker

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if unknown:
        fail(f"unknown queue(s): {', '.join(unknown)}; known: {', '.join(QUEUES)}")
    try:
        run_worker(names, burst=burst, with_cron=not no_cron)
    except RuntimeError as exc:
        fail(str(exc))


@kameng_cli.command("scan-low-stock")
def scan_low_stock() -> None:
    """Run the low-stock scan now and print what it raised."""
    from app.catalog import cards

    click.echo(json.dumps(cards.scan_low_stock(), ensure_ascii=False))


api_key_cli = AppGroup("api-key", help="Open API keys.")
kameng_cli.add_command(api_key_cli)


@api_key_cli.command("create")
@click.option("--agent", "username", required=True, help="The agent's login name.")
@click.option("--name", default="cli", help="A label for the key.")
@click.option("--allow-ip", default="", help="Comma-separated addresses or networks allowed to use the key.")
def api_key_create(username: str, name: str, allow_ip: str) -> None:
    """Create an API key; prints {"app_key": ..., "app_secret": ...} as one line of JSON (shown only once)."""
    from flask import current_app

    from app.openapi import service as openapi
    from app.scope import agent_of

    user = current_app.appbuilder.sm.find_user(username=username)
    agent = agent_of(user) if user else None
    if agent is None:
        fail(f"no agent with login {username!r}")
    try:
        key, secret = openapi.create_key(agent.id, name, allow_ip)
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps({"app_key": key.app_key, "app_secret": secret}))


@api_key_cli.command("revoke")
@click.argument("app_key")
def api_key_revoke(app_key: str) -> None:
    """Revoke an API key by its app key."""
    from sqlalchemy import select

    from app.extensions import db
    from app.openapi import service as openapi
    from app.openapi.models import ApiKey

    key_id = db.session.scalar(select(ApiKey.id).where(ApiKey.app_key == app_key))
    if key_id is None:
        fail(f"no API key {app_key!r}")
    openapi.revoke_key(key_id)
    click.echo(f"revoked {app_key}")


shop_cli = AppGroup("shop", help="Agent shops (分站).")  # i18n-keep: English text
kameng_cli.add_command(shop_cli)


@shop_cli.command("create")
@click.option("--agent", "username", required=True, help="The agent's login name.")
@click.option("--markup-bp", type=int, default=None, help="Shop-wide markup over the agent's own price, in basis "
              "points (default: the minimum allowed in 平台设置).")  # i18n-keep: English text
# i18n-keep: English text naming the screen
@click.option("--name", default=None, help="The shop's name (default: the agent's name + 的小店).")
def shop_create(username: str, markup_bp: int | None, name: str | None) -> None:
    """Open an agent's shop; prints {"code": ..., "url": ...} as one line of JSON."""
    from flask import current_app

    from app.agentshops import service as shops
    from app.scope import agent_of

    user = current_app.appbuilder.sm.find_user(username=username)
    agent = agent_of(user) if user else None
    if agent is None:
        fail(f"no agent with login {username!r}")
    try:
        # i18n-keep: a stored name
        shop = shops.open_shop(agent.id, name if name is not None else f"{agent.name}的小店", markup_bp)
    except KamengError as exc:
        fail(exc.message)
    base = (current_app.config.get("PUBLIC_BASE_URL") or "http://127.0.0.1:5000").rstrip("/")
    click.echo(json.dumps({"code": shop.code, "url": f"{base}{shop.path()}"}, ensure_ascii=False))


@kameng_cli.command("outbox-sweep")
def outbox_sweep() -> None:
    """Dispatch due outbox messages now (callback retries, anything Redis missed)."""
    from app.outbox import service as outbox

    click.echo(f"dispatched {outbox.sweep()} message(s)")


@kameng_cli.command("recharge-poll")
def recharge_poll() -> None:
    """Ask suppliers about direct top-ups whose next poll is due (what the recharge-poll job does; without Redis
    the polls run here, so a cron entry can stand in for the worker's scheduler)."""
    from app.outbox.service import dispatch_due
    from workers.jobs import poll_recharges

    report = poll_recharges()
    dispatch_due()  # a failover a poll wrote to the outbox leaves now
    click.echo(json.dumps(report))


@kameng_cli.command("delivery-sla")
def delivery_sla() -> None:
    """Enforce the delivery promise now (the delivery-sla job): direct top-ups past DELIVERY_SLA_MINUTES are withdrawn
    from their supplier and failed over or refunded; prints how many ended how."""
    from app.outbox.service import dispatch_due
    from workers.jobs import enforce_delivery_sla

    report = enforce_delivery_sla()
    dispatch_due()  # refunds through a channel and callbacks the SLA wrote to the outbox leave now
    click.echo(json.dumps(report))


@kameng_cli.command("reconcile")
@click.option("--channel", required=True, type=click.Choice(["sandbox", "alipay", "wechatpay", "unionpay", "epay"]))
@click.option("--day", default=None, help="The statement's day (YYYY-MM-DD, China time); default: from the payments "
                                          "(with FILE) or yesterday (without).")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def reconcile(channel: str, day: str | None, file: Path | None) -> None:
    """Match a channel's statement against our payments and print the differences as JSON. With FILE, import
    that statement; without, download the day's bill from the channel (the sandbox: its notification log)."""
    from app.payments import reconciliation

    if file is None:
        try:
            parsed = reconciliation.parse_day(day)
            report = (reconciliation.run_sandbox_daily(parsed) if channel == "sandbox"
                      else reconciliation.run_channel_daily(channel, parsed))
        except KamengError as exc:
            fail(exc.message)
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    try:
        content = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    try:
        row = reconciliation.import_statement(channel, content, filename=file.name,
                                              day=reconciliation.parse_day(day))
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps(reconciliation.summary(row), ensure_ascii=False))


@kameng_cli.command("refund")
@click.argument("order_no")
@click.option("--reason", required=True, help="Why (kept with the refund and the audit log).")
def refund(order_no: str, reason: str) -> None:
    """Refund an order in full, as the order refund screen (订单 → 退款) does: the sale is reversed and the money
    goes back to the wallet, or through the channel it was paid with (asked now; the refund's status is printed)."""
    from sqlalchemy import select

    from app.extensions import db
    from app.orders.models import Order
    from app.payments import service as payments
    from app.payments.models import Refund

    order_id = db.session.scalar(select(Order.id).where(Order.order_no == order_no.strip()[:40]))
    if order_id is None:
        fail(f"no order {order_no!r}")
    try:
        row = payments.refund_order(order_id, reason, actor_id=None)
    except KamengError as exc:
        fail(exc.message)
    refund_id = row.id
    from app.outbox.service import dispatch_due

    dispatch_due()  # ask the channel now (or hand it to the workers)
    db.session.rollback()
    row = db.session.get(Refund, refund_id)
    click.echo(json.dumps({"order_no": order_no, "refund_id": row.id, "amount": row.amount,
                           "destination": row.destination, "status": row.status,
                           "out_refund_no": row.out_refund_no}, ensure_ascii=False))


@kameng_cli.command("channel-sim")
@click.option("--channel", required=True, type=click.Choice(["alipay", "wechatpay", "unionpay", "epay"]))
@click.option("--port", required=True, type=int)
def channel_sim(channel: str, port: int) -> None:
    """Run a payment gateway simulator on 127.0.0.1 (app/payments/simulators: its protocol and control API)."""
    from app.payments.simulators import simulator_for

    if current_env() != "development":
        fail("the channel simulators run only with KAMENG_ENV=development")
    _run_simulator(simulator_for(channel), port)


def current_env() -> str:
    from flask import current_app

    return current_app.config.get("KAMENG_ENV") or ""


@kameng_cli.command("demo")
@click.option("--password", default=None, help="Password for every demo login (default: random, printed).")
@click.option("--sandbox-key", default=None, help="Key of the sandbox payment channel (default: random, printed).")
@click.option("--orders", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also generate a year of history with this many orders (agents, payments, commissions, "
                   "rollups). Running it again adds another history.")
@click.option("--history-once", is_flag=True,
              help="Generate the --orders history only when this database has none yet (make run).")
@click.option("--no-fold-wait", is_flag=True,
              help="Leave the newest journals' money flows to the periodic fold instead of waiting ~30 s for its "
                   "safety lag (the server started next folds them).")
@click.option("--seed", default=None, type=int, help="Random seed of the history (default: fixed).")
@click.option("--supplier-url", default=None, help="Connect the demo's direct products to this upstream simulator "
                                                   "(flask kameng supplier-sim).")
@click.option("--supplier-key", default=None, help="The simulator's signing key.")
@click.option("--channel-sim", "channel_sims", multiple=True, metavar="CHANNEL=URL",
              help="Configure and enable a payment channel against its simulator (flask kameng channel-sim) with "
                   "newly generated keys, e.g. alipay=http://127.0.0.1:8711. Repeatable.")
@click.option("--risk-events", default=0, show_default=True, type=click.IntRange(min=0),
              help="A labelled synthetic risk day of about this many events (what `flask kameng risk model train` "
                   "learns from); make demo and make run ask for 1500. Loaded once per database.")
def demo(password: str | None, sandbox_key: str | None, orders: int, history_once: bool, no_fold_wait: bool,
         seed: int | None, supplier_url: str | None, supplier_key: str | None, channel_sims: tuple[str, ...],
         risk_events: int) -> None:
    """Load demo users, agents, tiers, categories, products and card secrets; print the logins."""
    from app.demo import connect_demo_supplier, load_demo
    from app.payments import service as payments
    from app.payments.simulators import SIMULATED_CHANNELS

    if current_env() != "development":
        fail("the demo data (known logins, the sandbox, test keys) loads only with KAMENG_ENV=development")
    if bool(supplier_url) != bool(supplier_key):
        fail("--supplier-url and --supplier-key go together")
    sims = {}
    for item in channel_sims:
        channel, _, url = item.partition("=")
        if channel not in SIMULATED_CHANNELS or not url.startswith(("http://", "https://")):
            fail(f"--channel-sim wants CHANNEL=URL with CHANNEL one of {', '.join(SIMULATED_CHANNELS)}: {item!r}")
        sims[channel] = url
    try:
        logins = load_demo(password)
        key = sandbox_key or secrets.token_hex(16)
        if len(key) < 8:
            fail("--sandbox-key must be at least 8 characters")
        payments.save_channel("sandbox", True, {"key": key})
        from app.risk.default_rules import install_defaults

        install_defaults()
        if risk_events:
            _demo_risk_history(risk_events)
        if supplier_url:
            supplier = connect_demo_supplier(supplier_url, supplier_key)
            click.echo(f"Direct top-ups (直充) go to {supplier.name} at {supplier.endpoint}")  # i18n-keep: English text
        for channel, url in sims.items():
            _connect_channel_sim(channel, url)
    except KamengError as exc:
        fail(exc.message)
    click.echo(f"Sandbox payment channel enabled; key: {key}")
    click.echo("Demo data loaded. Logins:")
    for username, pwd, role in logins:
        click.echo(f"  {username:<10} {pwd:<20} {role}")
    from app.demo import demo_shops

    shops = demo_shops()
    if shops:
        # i18n-keep: English text naming the screen
        click.echo("Agent shops (分站): " + ", ".join(f"{login} {path}" for login, path in shops))
    if orders and history_once and _has_history():
        click.echo("Demo history: already loaded (--history-once), not generated again")
    elif orders:
        _demo_history(orders, seed, wait_for_fold=not no_fold_wait)


def _demo_risk_history(events: int) -> None:
    """The synthetic risk history (app/risk/learning/synthetic.py), labelled, once per database."""
    from sqlalchemy import select

    from app.extensions import db
    from app.risk.learning import synthetic
    from app.risk.models import RiskLabel

    if db.session.scalar(select(RiskLabel.id).where(RiskLabel.source == "synthetic").limit(1)) is not None:
        click.echo("Risk history: already loaded")
        return
    loaded = synthetic.load_history(events=events)
    click.echo(f"Risk history: {loaded['events']} synthetic events, {loaded['labels']} labelled decisions "
               "(train a model: flask kameng risk model train)")


def _connect_channel_sim(channel: str, url: str) -> None:
    from app import outbound
    from app.payments import service as payments
    from app.payments.simulators import merchant_settings

    try:
        settings = merchant_settings(channel, url)
    except (*outbound.FAILURES, ValueError, KeyError) as exc:
        fail(f"cannot reach the {channel} simulator at {url}: {exc}")
    payments.save_channel(channel, True, settings)
    click.echo(f"Payment channel {channel} enabled against its simulator at {url}")


def _has_history() -> bool:
    from sqlalchemy import select

    from app.catalog.models import CardImport
    from app.extensions import db

    return db.session.scalar(select(CardImport.id).where(CardImport.source == "history").limit(1)) is not None


def _history_step(message: str) -> None:
    if not message.startswith("orders:"):  # those move the bar
        click.echo(f"\n  … {message}")


def _demo_history(orders: int, seed: int | None, wait_for_fold: bool = True) -> None:
    from app.analytics import history
    from app.money import format_fen

    click.echo(f"Generating a year of demo history: {orders:,} orders (agents, payments, commissions, rollups)")
    with click.progressbar(length=orders, label="  orders", show_pos=True, width=30) as bar:
        def advance(done: int, _total: int) -> None:
            bar.update(done - bar.pos)

        try:
            report = history.generate(orders, seed=history.DEFAULT_SEED if seed is None else seed,
                                      chunk=max(1000, orders // 20), advance=advance, progress=_history_step,
                                      wait_for_fold=wait_for_fold)
        except KamengError as exc:
            fail(exc.message)
    click.echo(f"History #{report.run} (seed {report.seed}), {report.start} .. {report.end}:")
    click.echo(f"  agents +{report.agents}, orders {report.orders:,} "
               f"({', '.join(f'{k} {v:,}' for k, v in sorted(report.statuses.items()))}), GMV {format_fen(report.gmv)}")
    click.echo(f"  journals {report.journals:,}, postings {report.postings:,}, card secrets {report.card_secrets:,}, "
               f"commissions {report.commissions:,}, wallet top-ups {report.topups:,}")
    click.echo(f"  storefront orders' order password: {history.QUERY_PASSWORD}")
    for phase, seconds in report.timings.items():
        cpu = f"  (this process's CPU {report.cpu[phase]:.2f} s)" if phase in report.cpu else ""
        click.echo(f"  {phase:<38} {seconds:>8.2f} s{cpu}")
    # The history was bulk-inserted around the live code: its deliveries, money audit entries and risk decisions
    # join the tamper-evident chain now (sealed by the next chain-seal run).
    from app.chain import service as chain
    from app.extensions import db

    chained = chain.backfill()
    db.session.commit()
    click.echo(f"  {chained:,} record(s) appended to the tamper-evident chain")


@kameng_cli.command("settle")
@click.option("--batch-size", default=5000, show_default=True, type=int, help="Commissions per transaction.")
def settle_commissions(batch_size: int) -> None:
    """Settle due commissions now (pending → wallet) and print the run's report."""
    from app.network import settlement

    run = settlement.settle(trigger="cli", batch_size=batch_size)
    for key, value in settlement.report(run).items():
        click.echo(f"{key}: {value}")


@kameng_cli.command("team-bonus")
@click.option("--month", default=None, help="Business month YYYY-MM (default: last month).")
def team_bonus(month: str | None) -> None:
    """Award the team bonus (团队业绩奖) of a month for every active rule; running it again awards nothing more."""
    from app.network import team_bonus as service

    try:
        report = service.run(month)
    except KamengError as exc:
        fail(exc.message)
    for key, value in report.items():
        click.echo(f"{key}: {value}")


def _run_simulator(sim, port: int) -> None:
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", port, sim, threaded=True)


@kameng_cli.command("idv-sim")
@click.option("--port", default=8701, show_default=True, type=int)
@click.option("--key", default=None, help="Signing key (default: IDV_PROVIDER_KEY).")
def idv_sim(port: int, key: str | None) -> None:
    """Run the three-element identity provider simulator on 127.0.0.1 (a card ending in 0 does not match)."""
    from flask import current_app

    from app.network.simulators import IdvSimulator

    key = key or current_app.config.get("IDV_PROVIDER_KEY")
    if not key:
        fail("a signing key is required: --key or IDV_PROVIDER_KEY")
    _run_simulator(IdvSimulator(key), port)


@kameng_cli.command("payout-sim")
@click.option("--port", default=8702, show_default=True, type=int)
@click.option("--key", default=None, help="Signing key (default: PAYOUT_KEY).")
@click.option("--slow-seconds", default=3.0, show_default=True, type=float, help="Delay for cards ending in 7.")
def payout_sim(port: int, key: str | None, slow_seconds: float) -> None:
    """Run the bank payout simulator on 127.0.0.1 (card ending 4 fails, ending 7 answers slowly)."""
    from flask import current_app

    from app.network.simulators import PayoutSimulator

    key = key or current_app.config.get("PAYOUT_KEY")
    if not key:
        fail("a signing key is required: --key or PAYOUT_KEY")
    _run_simulator(PayoutSimulator(key, slow_seconds), port)


@kameng_cli.command("sms-sim")
@click.option("--port", default=8715, show_default=True, type=int)
def sms_sim(port: int) -> None:
    """Run the Aliyun SMS (Dysmsapi SendSms) simulator on 127.0.0.1 (protocol: app/notices/sms_simulator.py)."""
    from app.notices.sms_simulator import AliyunSmsSimulator

    if current_env() != "development":
        fail("the SMS simulator runs only with KAMENG_ENV=development")
    _run_simulator(AliyunSmsSimulator(), port)


@kameng_cli.command("notice-resend")
@click.argument("order_no")
@click.option("--kind", default="email", show_default=True, type=click.Choice(["email", "sms"]))
def notice_resend(order_no: str, kind: str) -> None:
    """Send an order's delivery e-mail (or SMS) again, as support's resend on 发货通知 does (audited)."""
    from sqlalchemy import select

    from app.extensions import db
    from app.notices import service as notices
    from app.notices.models import DeliveryNotice
    from app.orders.models import Order
    from app.outbox.service import dispatch_due

    notice_id = db.session.scalar(select(DeliveryNotice.id).join(Order, Order.id == DeliveryNotice.order_id)
                                  .where(Order.order_no == order_no.strip()[:40], DeliveryNotice.kind == kind))
    if notice_id is None:
        fail(f"order {order_no!r} has no {kind} notice")
    try:
        notices.resend(notice_id, actor_id=None)
    except KamengError as exc:
        fail(exc.message)
    dispatch_due()  # send now (or hand it to the workers)
    db.session.rollback()
    row = db.session.get(DeliveryNotice, notice_id)
    click.echo(json.dumps({"order_no": order_no, "kind": kind, "to": row.recipient_masked, "status": row.status,
                           "last_error": row.last_error}, ensure_ascii=False))


@kameng_cli.command("supplier-sim")
@click.option("--port", default=8703, show_default=True, type=int)
@click.option("--key", required=True, help="Signing secret (the Supplier's secret).")
@click.option("--app-key", default="kameng-demo", show_default=True, help="Our account there (the Supplier's app key).")
@click.option("--latency-ms", default=0, show_default=True, type=int, help="Delay before every API answer.")
@click.option("--balance", default=100_000_000, show_default=True, type=int, help="Our prepaid balance there, fen.")
def supplier_sim(port: int, key: str, app_key: str, latency_ms: int, balance: int) -> None:
    """Run the upstream recharge supplier simulator on 127.0.0.1 (protocol: app/suppliers/simulator.py)."""
    from app.suppliers.simulator import SupplierSimulator

    _run_simulator(SupplierSimulator(key, app_key=app_key, latency_ms=latency_ms, balance=balance), port)


@kameng_cli.command("supplier-sync")
@click.option("--supplier", "supplier_ids", type=int, multiple=True, help="Only this supplier id (repeatable).")
def supplier_sync(supplier_ids: tuple[int, ...]) -> None:
    """Pull balances, stock and prices from connected suppliers and print the report (exit 1 if any failed)."""
    from app.suppliers import sync

    report = sync.sync_all(supplier_ids or None)
    for line in sync.report_lines(report):
        click.echo(line)
    if report["failed"]:
        sys.exit(1)


rollups_cli = AppGroup("rollups", help="Analytics rollups (数据看板 daily tables).")  # i18n-keep: English text
kameng_cli.add_command(rollups_cli)


@rollups_cli.command("rebuild")
@click.option("--from", "start", required=True, help="First China day, YYYY-MM-DD.")
@click.option("--to", "end", required=True, help="Last China day (inclusive), YYYY-MM-DD.")
def rollups_rebuild(start: str, end: str) -> None:
    """Delete and recompute every rollup of a day range from orders, real-name records and journals."""
    from app.analytics import service as rollups

    try:
        report = rollups.rebuild(rollups.parse_day(start, "--from"), rollups.parse_day(end, "--to"))
    except KamengError as exc:
        fail(exc.message)
    for key, value in report.items():
        click.echo(f"{key}: {value}")


@rollups_cli.command("compact")
@click.option("--table", type=click.Choice(["sales", "profile", "agent", "money", "active", "retention"]),
              default=None, help="Only this table (default: all).")
@click.option("--all", "full", is_flag=True, help="Every key, not only those touched since the last run.")
def rollups_compact(table: str | None, full: bool) -> None:
    """Merge delta rows of the same key into one row; prints rows removed per table."""
    from app.analytics import service as rollups

    for name, removed in rollups.compact(table, full=full).items():
        click.echo(f"{name}: {removed} rows removed")


@rollups_cli.command("fold-orders")
def rollups_fold_orders() -> None:
    """Fold pending deliveries and refunds into the order rollups; prints how many rows."""
    from app.analytics import service as rollups

    click.echo(f"pending rows folded: {rollups.fold_orders_all()}")


@rollups_cli.command("fold-money")
def rollups_fold_money() -> None:
    """Fold ledger journals above the watermark into the money-flow rollup; prints how many."""
    from app.analytics import service as rollups

    click.echo(f"journals folded: {rollups.fold_money_all()}")


@kameng_cli.command("withdrawal-retry")
@click.argument("withdrawal_no")
def withdrawal_retry(withdrawal_no: str) -> None:
    """Queue the payout of an approved or paying (result unknown) withdrawal again."""
    from sqlalchemy import select

    from app.extensions import db
    from app.network import withdrawals
    from app.network.models import Withdrawal

    wid = db.session.scalar(select(Withdrawal.id).where(Withdrawal.withdrawal_no == withdrawal_no))
    if wid is None:
        fail(f"no withdrawal {withdrawal_no!r}")
    try:
        w = withdrawals.retry(wid, None)
    except KamengError as exc:
        fail(exc.message)
    click.echo(f"{w.withdrawal_no}: {w.status}")


# i18n-keep: English text naming the screen
risk_cli = AppGroup("risk", help="Risk control (风控): lists, review holds, rules, the risk log.")
kameng_cli.add_command(risk_cli)
risk_list_cli = AppGroup("list", help="黑名单 / 观察名单.")  # i18n-keep: English text
risk_cli.add_command(risk_list_cli)
risk_review_cli = AppGroup("review", help="风控审核: held orders.")  # i18n-keep: English text
risk_cli.add_command(risk_review_cli)
risk_rules_cli = AppGroup("rules", help="风控规则.")  # i18n-keep: English text
risk_cli.add_command(risk_rules_cli)
risk_cli.add_command(model_cli)  # the learning half's own commands
risk_cli.add_command(anomaly_cli)
risk_cli.add_command(feed_cli)  # the shared feed's own commands


@risk_list_cli.command("add")
@click.option("--kind", required=True, help="ip, cidr, device, contact, phone, id_number, payment_account or agent.")
@click.option("--value", required=True)
@click.option("--action", required=True, type=click.Choice(["block", "review"]))
@click.option("--reason", default=None)
@click.option("--days", default=None, type=int, help="Expires after this many days (default: never).")
def risk_list_add(kind: str, value: str, action: str, reason: str | None, days: int | None) -> None:
    """Add a list entry; prints it as JSON (a personal value only masked)."""
    from app.risk import lists

    try:
        entry = lists.add(kind, value, action, reason=reason, days=days)
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps(lists.as_json(entry), ensure_ascii=False))


@risk_list_cli.command("remove")
@click.argument("entry_id", type=int)
def risk_list_remove(entry_id: int) -> None:
    """Remove a list entry (kept, marked removed, audited)."""
    from app.risk import lists

    try:
        entry = lists.remove(entry_id)
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps(lists.as_json(entry), ensure_ascii=False))


@risk_review_cli.command("approve")
@click.argument("order_no")
def risk_review_approve(order_no: str) -> None:
    """Approve a held order: it is delivered by the normal path."""
    from app.risk import reviews

    try:
        order = reviews.approve(order_no, None)
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps({"order_no": order.order_no, "status": order.status}, ensure_ascii=False))


@risk_review_cli.command("reject")
@click.argument("order_no")
@click.option("--reason", required=True)
def risk_review_reject(order_no: str, reason: str) -> None:
    """Reject a held order: refunded to where it was paid from, with the reason."""
    from app.risk import reviews

    try:
        order = reviews.reject(order_no, reason, None)
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps({"order_no": order.order_no, "status": order.status}, ensure_ascii=False))


@risk_rules_cli.command("install-defaults")
@click.option("--status", default="active", type=click.Choice(["draft", "shadow", "active"]))
def risk_rules_install(status: str) -> None:
    """Add the default rule set (app/risk/default_rules.py) where a rule of that name is missing."""
    from app.risk.default_rules import install_defaults

    click.echo(f"{install_defaults(status)} rule(s) added")


@risk_cli.command("replay")
@click.argument("decision_id", type=int)
def risk_replay(decision_id: int) -> None:
    """Replay a stored decision from its features and rule versions; prints both outcomes (exit 1 if they differ)."""
    from app.extensions import db
    from app.risk.models import RiskDecision
    from app.risk.service import replay

    row = db.session.get(RiskDecision, decision_id)
    if row is None:
        fail(f"no decision {decision_id}")
    again = replay(decision_id)
    click.echo(json.dumps({"decision_id": decision_id, "stored": row.outcome, "replayed": again,
                           "hits": json.loads(row.hits)}, ensure_ascii=False))
    if again != row.outcome:
        sys.exit(1)


@risk_cli.command("export")
@click.option("--format", "fmt", required=True, type=click.Choice(["csv", "xlsx"]), help="csv or xlsx.")
@click.option("--since", default=None, metavar="DAY", help="First business day (YYYY-MM-DD), inclusive.")
@click.option("--until", default=None, metavar="DAY", help="Last business day (YYYY-MM-DD), inclusive.")
@click.option("--output", default=None, type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of stdout.")
def risk_export(fmt: str, since: str | None, until: str | None, output: str | None) -> None:
    """The risk log for auditors: every decision (time, event, outcome, rules and reasons, masked subject values,
    order number, latency), streamed to stdout (or --output); masked values only, formula-safe cells."""
    from app.risk import export

    try:
        data = export.rows(export.parse_day(since, "--since"), export.parse_day(until, "--until"))
    except KamengError as exc:
        fail(exc.message)
    if fmt == "csv":
        if output:
            with open(output, "w", encoding="utf-8", newline="") as out:
                n = export.write_csv(out, data)
        else:
            n = export.write_csv(sys.stdout, data)
            sys.stdout.flush()
    else:
        if not output and sys.stdout.isatty():
            fail("XLSX is binary: redirect stdout to a file or pass --output FILE")
        if output:
            with open(output, "wb") as out:
                n = export.write_xlsx(out, data)
        else:
            n = export.write_xlsx(sys.stdout.buffer, data)
            sys.stdout.buffer.flush()
    click.echo(f"{n} decision(s) exported", err=True)


risk_agent_cli = AppGroup("agent", help="Agents held at registration (many from one IP or device).")
risk_cli.add_command(risk_agent_cli)


def _held_agent_id(login: str) -> int:
    from flask import current_app

    from app.scope import agent_of

    user = current_app.appbuilder.sm.find_user(username=login)
    agent = agent_of(user) if user else None
    if agent is None:
        fail(f"no agent with login {login!r}")
    return agent.id


@risk_agent_cli.command("list")
def risk_agent_list() -> None:
    """Agents held at registration, oldest first, one JSON line each."""
    from app.risk import agents

    for agent in agents.held():
        click.echo(json.dumps({"agent_id": agent.id, "name": agent.name, "created_at": agent.created_at.isoformat()},
                              ensure_ascii=False))


@risk_agent_cli.command("approve")
@click.argument("login")
def risk_agent_approve(login: str) -> None:
    """Release an agent held at registration: it may buy and withdraw."""
    from app.risk import agents

    try:
        agent = agents.approve(_held_agent_id(login), None)
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps({"agent_id": agent.id, "risk_hold": agent.risk_hold, "active": agent.active}))


@risk_agent_cli.command("reject")
@click.argument("login")
@click.option("--reason", required=True)
def risk_agent_reject(login: str, reason: str) -> None:
    """Refuse an agent held at registration: it is disabled."""
    from app.risk import agents

    try:
        agent = agents.reject(_held_agent_id(login), reason, None)
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps({"agent_id": agent.id, "risk_hold": agent.risk_hold, "active": agent.active}))


audit_cli = AppGroup("audit", help="The audit log (审计日志).")  # i18n-keep: English text
kameng_cli.add_command(audit_cli)


@audit_cli.command("export")
@click.option("--since", required=True, metavar="DAY", help="First business day (YYYY-MM-DD), inclusive.")
@click.option("--until", required=True, metavar="DAY", help="Last business day (YYYY-MM-DD), inclusive.")
@click.option("--out", "output", default=None, type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of stdout.")
def audit_export(since: str, until: str, output: str | None) -> None:
    """The audit log of a range of business days as CSV for compliance, streamed to stdout (or --out); every cell
    formula-safe. The export itself is recorded in the audit log."""
    from app.audit import export

    try:
        first, last = export.parse_range(since, until, "--since", "--until")
    except KamengError as exc:
        fail(exc.message)
    export.record_export(first, last, "cli")
    chunks = export.csv_chunks(export.rows(first, last))
    if output:
        with open(output, "w", encoding="utf-8", newline="") as out:
            out.writelines(chunks)
    else:
        for chunk in chunks:
            sys.stdout.write(chunk)
        sys.stdout.flush()


two_factor_cli = AppGroup("two-factor", help="Staff two-factor sign-in (两步验证).")  # i18n-keep: English text
kameng_cli.add_command(two_factor_cli)


@two_factor_cli.command("reset")
@click.argument("login")
@click.option("--reason", required=True, help="Why (audited), e.g. the ticket of the lost phone.")
def two_factor_reset(login: str, reason: str) -> None:
    """Turn off a user's two-factor sign-in (a lost phone, the only admin locked out); audited with no actor."""
    from flask import current_app

    from app.twofactor import service as two_factor

    user = current_app.appbuilder.sm.find_user(username=login)
    if user is None:
        fail(f"no user with login {login!r}")
    try:
        two_factor.reset(user.id, actor_id=None, reason=reason[:255])
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps({"user": login, "two_factor": "off"}))


chain_cli = AppGroup("chain", help="Tamper-evident records: the hash chain of deliveries, money audit entries and "
                                   "risk decisions.")
kameng_cli.add_command(chain_cli)


@chain_cli.command("verify")
@click.option("--expect-head", "expected", multiple=True, metavar="DAY=HASH",
              help="A day's head hash as /trust/ published it, kept outside this database; repeatable. A chain "
                   "rewritten after an edit no longer has it.")
def chain_verify(expected: tuple[str, ...]) -> None:
    """Seal, then recheck every record against the current rows; exit 1 naming the first altered or missing one."""
    from app.chain import service as chain

    published = {}
    for item in expected:
        day, _, value = item.partition("=")
        try:
            published[chain.parse_day(day)] = chain.clean_hash(value)
        except KamengError as exc:
            fail(f"--expect-head wants DAY=HASH: {exc.message}")
    report = chain.verify(published)
    if not report.ok:
        first = report.problems[0]
        click.echo(f"FAIL first problem: {first.message}", err=True)
        for problem in report.problems[1:]:
            click.echo(f"FAIL {problem.message}", err=True)
        click.echo(f"chain broken: {len(report.problems)} problem(s) in {report.checked} record(s) checked", err=True)
        sys.exit(1)
    click.echo(f"chain ok: {report.checked} record(s) checked; head seq {report.head_seq} hash {report.head_hash}"
               + (f"; {report.unsealed} committed since, not yet sealed" if report.unsealed else ""))


@chain_cli.command("head")
@click.option("--day", default=None, metavar="DAY", help="Business day (YYYY-MM-DD); default today (so far).")
def chain_head(day: str | None) -> None:
    """Print the chain's head at the end of DAY (the hash /trust/ publishes) as JSON."""
    from app.chain import service as chain

    try:
        when = chain.parse_day(day)
        chain.seal()
    except KamengError as exc:
        fail(exc.message)
    head = chain.head_at(when)
    if head is None:
        fail(f"no record was sealed on or before {when or 'today'}", code=1)
    click.echo(json.dumps(head))


# --- alerts (app/alerts) -----------------------------------------------------------------------------------------

@kameng_cli.command("robot-sim")
@click.option("--port", default=8716, show_default=True, type=int)
def robot_sim(port: int) -> None:
    """Run the DingTalk / WeCom / Feishu group robot receiver on 127.0.0.1 (protocol: app/alerts/simulator.py)."""
    from app.alerts.simulator import RobotSimulator

    if current_env() != "development":
        fail("the robot simulator runs only with KAMENG_ENV=development")
    sim = RobotSimulator()
    sim.base_url = f"http://127.0.0.1:{port}"
    _run_simulator(sim, port)


# i18n-keep: English text naming the screen
alerts_cli = AppGroup("alerts", help="Alerts (告警): evaluate the rules, channels, test messages.")
kameng_cli.add_command(alerts_cli)


@alerts_cli.command("evaluate")
@click.option("--rule", "rules", multiple=True, help="Only this rule kind (repeatable).")
def alerts_evaluate(rules: tuple[str, ...]) -> None:
    """Evaluate the alert rules now (the alerts-evaluate job) and print what opened and resolved."""
    from app.alerts import service as alerts
    from app.alerts.rules import RULES
    from app.outbox.service import dispatch_due

    unknown = [r for r in rules if r not in RULES]
    if unknown:
        fail(f"unknown rule {', '.join(unknown)}; rules: {', '.join(RULES)}")
    report = alerts.evaluate(kinds=list(rules) or None)
    dispatch_due()  # the messages leave now (queued on RQ, or sent here without Redis)
    click.echo(json.dumps(report, ensure_ascii=False))
    if any("error" in entry for entry in report.values()):
        sys.exit(1)


@alerts_cli.command("channel-add")
@click.option("--name", required=True)
@click.option("--kind", required=True, type=click.Choice(["dingtalk", "wecom", "feishu", "email"]))
@click.option("--webhook", default=None, help="The robot's webhook address (robots).")
@click.option("--secret", default=None, help="DingTalk 加签 / Feishu 签名校验 secret.")  # i18n-keep: English text
@click.option("--recipients", default=None, help="Comma-separated addresses (email).")
@click.option("--min-severity", default="warning", show_default=True,
              type=click.Choice(["info", "warning", "critical"]))
def alerts_channel_add(name: str, kind: str, webhook: str | None, secret: str | None, recipients: str | None,
                       min_severity: str) -> None:
    """Add an alert channel (as 系统 → 告警渠道 does); prints its id and masked address."""
    from app.alerts import service as alerts

    try:
        channel = alerts.create_channel(name, kind, webhook=webhook, secret=secret, recipients=recipients,
                                        min_severity=min_severity)
    except KamengError as exc:
        fail(exc.message)
    click.echo(json.dumps({"id": channel.id, "name": channel.name, "kind": channel.kind,
                           "webhook": channel.webhook_masked, "recipients": channel.recipients_masked},
                          ensure_ascii=False))


@alerts_cli.command("test")
@click.argument("channel_id", type=int)
def alerts_test(channel_id: int) -> None:
    """Send a test message to a channel (as 告警渠道's 发送测试消息 does) and print where it stands."""
    from app.alerts import service as alerts
    from app.extensions import db
    from app.outbox.service import dispatch_due

    try:
        alert = alerts.send_test(channel_id, actor_id=None)
    except KamengError as exc:
        fail(exc.message)
    dispatch_due()
    db.session.expire_all()
    for delivery in alert.deliveries:
        click.echo(f"#{delivery.id} {delivery.status} attempts={delivery.attempts} {delivery.last_error or ''}")
        if delivery.status == "failed":
            sys.exit(1)


@alerts_cli.command("demo-channels")
@click.option("--robot-sim", "url", required=True, help="The robot receiver (flask kameng robot-sim), e.g. "
                                                       "http://127.0.0.1:8716")
def alerts_demo_channels(url: str) -> None:
    """Development only: register a DingTalk and a Feishu robot (both signed) at the robot receiver and point the
    demo's alert channels at them (idempotent: a receiver restarted forgets its robots, so they are registered again
    and the channels updated)."""
    from sqlalchemy import select

    from app import outbound
    from app.alerts import service as alerts
    from app.alerts.models import AlertChannel
    from app.extensions import db

    if current_env() != "development":
        fail("the demo's alert channels are set up only with KAMENG_ENV=development")
    for name, kind in (("演示钉钉群", "dingtalk"), ("演示飞书群", "feishu")):  # i18n-keep: demo data
        try:
            robot = outbound.post(url.rstrip("/") + "/_sim/robots", json={"kind": kind, "signed": True},
                                  timeout=5).json()
        except (*outbound.FAILURES, ValueError) as exc:
            fail(f"the robot receiver at {url} did not answer: {outbound.short_reason(exc)}")
        channel = db.session.scalar(select(AlertChannel).where(AlertChannel.name == name))
        try:
            if channel is None:
                channel = alerts.create_channel(name, kind, webhook=robot["webhook"], secret=robot["secret"],
                                                min_severity="info")
            else:
                alerts.apply_channel(channel, webhook=robot["webhook"], secret=robot["secret"])
                db.session.commit()
        except KamengError as exc:
            fail(exc.message)
        click.echo(f"alert channel {channel.name}: {channel.webhook_masked}")
