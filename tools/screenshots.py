"""`make screenshots`: full-page PNGs of the admin screens, the agent portal and every dashboard, on demo data.

    .venv/bin/python tools/screenshots.py [--orders 20000] [--out docs/screenshots] [--only dash-gmv,...]

It starts the upstream supplier simulator on a free port (`flask kameng supplier-sim`, as `make run` does, so the
demo's direct products (直充) are in stock; stopped at the end, also on failure), migrates a fresh SQLite database
in a temporary directory (`flask db upgrade`, as `make migrate` does), loads the demo with a modest history
(`flask kameng demo --orders N --supplier-url ... --supplier-key ...`), serves the app on a free port (werkzeug, in
a thread of this process, jobs inline) and, in Debian's Chromium through Playwright, logs in as admin, manager and
agent1 (the 总代 with the largest branch) and writes one PNG per page (viewport 1366 wide, zh-CN); the demo's
three agent shops (one per theme) are shown to an anonymous buyer on a phone-sized viewport (390 × 844), and a
product poster and a price list are saved as the portal serves them. Dashboards
are shown on their FAB page (navigation + the embedded Dash app); the shot waits until Dash has no callback in
flight and every graph has drawn its traces. It fails (exit 1) when a page answers an error, a dashboard shows a
callback error, or a graph stays empty.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a development tool: it starts the app on the built-in development keys, which only development accepts
os.environ.setdefault("KAMENG_ENV", "development")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PASSWORD = "kameng123"
VIEWPORT = {"width": 1366, "height": 800}
TIMEOUT_MS = 60_000
SIM_KEY = "kameng-screenshots-simulator-key"


PHONE = {"width": 390, "height": 844}


@dataclass(frozen=True)
class Shot:
    name: str  # docs/screenshots/<name>.png
    user: str | None  # None: an anonymous visitor
    path: str  # "{shop:LOGIN}" stands for that agent's shop (/s/<code>/)
    title: str  # for the README
    dashboard: bool = False
    viewport: dict | None = None  # default VIEWPORT
    download: bool = False  # save the PNG the path answers (a poster) instead of a screenshot
    fill: tuple = ()  # (selector, value or a function giving it) typed into the page, then `submit` is clicked
    submit: str | None = None


def _china_now():
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    return datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai")).replace(second=0, microsecond=0, tzinfo=None)


def _one_day():
    from datetime import timedelta

    return timedelta(days=1)


SHOTS = [
    Shot("workbench-admin", "admin", "/", "工作台 (admin)"),
    Shot("workbench-support", "support", "/", "工作台 (support)"),
    # a storefront buyer of the demo history (its most frequent phone numbers), searched in another spelling
    Shot("support-search", "support", "/support-search/", "客服查单 (support)", fill=(("#q", "150 0765 4334"),),
         submit="#support-search-form [type=submit]"),
    # an incident window of the history: since yesterday's start (China time) until now
    Shot("support-compensation", "support", "/compensation/", "批量补偿 (support)",
         fill=(("#start", lambda: _china_now().replace(hour=0, minute=0) - _one_day()), ("#end", _china_now)),
         submit="#preview-button"),
    Shot("admin-orders", "admin", "/orders/list/", "订单 (admin)"),
    Shot("admin-products", "admin", "/products/list/", "商品 (admin)"),
    Shot("admin-suppliers", "admin", "/suppliers/list/", "供应商 (admin)"),
    Shot("admin-supplier-mappings", "admin", "/supplier-products/list/", "货源映射 (admin)"),
    Shot("admin-card-stock", "admin", "/card-secrets/list/", "卡密库存 (admin)"),
    Shot("admin-jobs", "admin", "/jobs/", "任务队列 (admin)"),
    Shot("admin-ledger", "admin", "/ledger/journals/list/", "财务账本: 凭证 (admin)"),
    Shot("admin-withdrawals-review", "admin", "/withdrawal-review/", "提现审核 (admin)"),
    Shot("alert_log", "admin", "/alerts/list/", "告警记录 (admin)"),
    Shot("portal-home", "agent1", "/", "代理中心首页 (agent1)"),
    Shot("portal-buy", "agent1", "/portal/buy", "进货 (agent1)"),
    Shot("portal-my-orders", "agent1", "/portal/my-orders/list/", "我的订单 (agent1)"),
    Shot("portal-team", "agent1", "/portal/my-team/list/", "我的团队 (agent1)"),
    Shot("dash-gmv", "manager", "/analytics/gmv/", "GMV 概览 (manager)", dashboard=True),
    Shot("dash-products", "manager", "/analytics/products/", "商品与库存 (manager)", dashboard=True),
    Shot("dash-agents", "manager", "/analytics/agents/", "代理增长 (manager)", dashboard=True),
    Shot("dash-profiles", "manager", "/analytics/profiles/", "用户画像 (manager)", dashboard=True),
    Shot("dash-money", "manager", "/analytics/money/", "资金流向 (manager)", dashboard=True),
    Shot("dash-gmv-agent", "agent1", "/analytics/gmv/", "GMV 概览 (agent1, own branch)", dashboard=True),
    Shot("portal-shop", "agent1", "/portal/shop/", "我的分站 (agent1)"),
    Shot("portal-shop-materials", "agent1", "/portal/shop/materials", "推广素材 (agent1)"),
    Shot("shop-poster", "agent1", "/portal/shop/poster/1.png", "商品海报 (agent1's shop)", download=True),
    Shot("shop-pricelist", "agent1", "/portal/shop/pricelist.png", "价格表 1080×1920 (agent1's shop)", download=True),
    Shot("shop-game", None, "{shop:agent1}", "分站 · 游戏 (phone)", viewport=PHONE),
    Shot("shop-campus", None, "{shop:agent2}", "分站 · 校园 (phone)", viewport=PHONE),
    Shot("shop-general", None, "{shop:agent3}", "分站 · 综合 (phone)", viewport=PHONE),
    Shot("shop-buy", None, "{shop:agent1}buy/1", "分站下单 (phone)", viewport=PHONE),
]

# True once Dash has nothing in flight and every graph with data has drawn its traces (plotly's .trace groups).
DASH_READY_JS = """() => {
  if (!document.querySelector('.kd-page')) return false;
  if (document.querySelector('[data-dash-is-loading="true"]')) return false;
  const graphs = Array.from(document.querySelectorAll('.kd-graph .js-plotly-plot'));
  if (!graphs.length) return false;
  return graphs.every(g => g._fullLayout && g.data && g.data.length > 0
                      && g.querySelector('.main-svg'));
}"""


def run(cmd: list[str], env: dict, what: str) -> None:
    t = time.perf_counter()
    print(f"{what} …", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{what} failed ({proc.returncode})")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    for line in lines[-6:]:
        print(f"  {line}")
    print(f"  ({time.perf_counter() - t:.1f} s)", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_supplier_sim(workdir: Path) -> tuple[str, subprocess.Popen]:
    """`flask kameng supplier-sim` on a free port, as `make run` starts it; returns (url, process) once it listens."""
    port = free_port()
    env = dict(os.environ, FLASK_APP="run", DATABASE_URL=f"sqlite:///{workdir / 'simulator.db'}")
    env.pop("REDIS_URL", None)
    with open(workdir / "supplier-sim.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([str(Path(sys.executable).parent / "flask"), "kameng", "supplier-sim", "--port",
                                 str(port), "--key", SIM_KEY, "--latency-ms", "300"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                log_text = (workdir / "supplier-sim.log").read_text()[-2000:]
                raise SystemExit(f"the supplier simulator did not start:\n{log_text}") from None
            time.sleep(0.2)
    print(f"supplier simulator on 127.0.0.1:{port} (pid {proc.pid})", flush=True)
    return f"http://127.0.0.1:{port}", proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_database(workdir: Path, orders: int, supplier_url: str) -> str:
    url = f"sqlite:///{workdir / 'screenshots.db'}"
    env = dict(os.environ, DATABASE_URL=url, FLASK_APP="run", OUTBOUND_ALLOW_PRIVATE="true")  # sims on 127.0.0.1
    env.pop("REDIS_URL", None)  # jobs inline, as `make run`
    flask = str(Path(sys.executable).parent / "flask")
    run([flask, "db", "upgrade"], dict(env, FAB_CREATE_DB="False", FAB_UPDATE_PERMS="False"), "migrate")
    run([flask, "kameng", "demo", "--password", PASSWORD, "--sandbox-key", "screenshots-sandbox",
         "--supplier-url", supplier_url, "--supplier-key", SIM_KEY, "--orders", str(orders)], env,
        f"demo with {orders:,} orders of history")
    return url


def serve(url: str, supplier_url: str, with_alerts: bool = False):
    """The app on a free port, served from a thread; returns (base_url, stop, {agent login: its shop's path}). The
    demo's direct products point at this run's simulator (a reused database still names the port of the run that
    built it)."""
    os.environ["DATABASE_URL"] = url  # config reads it at import
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("OUTBOUND_ALLOW_PRIVATE", "true")  # the supplier simulator listens on 127.0.0.1
    sys.path.insert(0, str(ROOT))
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per asset

    from app import create_app

    app = create_app({"AUTH_RATE_LIMIT": "1000 per minute"})
    with app.app_context():
        from app.demo import connect_demo_supplier
        from app.suppliers import sync

        connect_demo_supplier(supplier_url, SIM_KEY)
        # One stock and balance sync, as the scheduler of `make run` does soon after start: the supplier screens
        # and the products dashboard show the upstream's balance, stock and sync time instead of blanks.
        report = sync.sync_all()
        if report["failed"]:
            raise SystemExit(f"supplier sync failed: {sync.report_lines(report)}")
        from app.demo import demo_shops

        shop_paths = dict(demo_shops())
        if with_alerts:
            alert_episodes()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="screenshots-server", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(10)
        server.server_close()

    return f"http://127.0.0.1:{server.server_port}", stop, shop_paths


def alert_episodes() -> None:
    """What the alert log shows: a DingTalk and a Feishu group robot (the robot receiver, app/alerts/simulator.py,
    in a thread of this process, verifying signatures) told by the alerts-evaluate job of the demo's conditions,
    plus two episodes an operator could cause: a card product's restock threshold raised above its stock (an open
    alert), and the supplier's low-balance threshold raised above its balance and lowered again (an alert and its
    recovery)."""
    from sqlalchemy import select

    from app.alerts import service as alerts
    from app.alerts.simulator import RobotSimulator
    from app.catalog import cards
    from app.catalog.models import Product, Supplier
    from app.extensions import db
    from app.network.simulators import serve as serve_sim
    from app.outbox.service import dispatch_due
    from app.suppliers import sync

    sim = RobotSimulator()
    _server, sim_url = serve_sim(sim)
    sim.base_url = sim_url
    for name, kind in (("运营值班群（钉钉）", "dingtalk"), ("技术值班群（飞书）", "feishu")):
        robot = sim.register(kind, signed=True)
        alerts.create_channel(name, kind, webhook=robot["webhook"], secret=robot["secret"], min_severity="info")
    alerts.evaluate()
    dispatch_due()
    product = db.session.scalars(select(Product).where(Product.kind == "card").order_by(Product.id)).first()
    product.low_stock_threshold = cards.available_counts([product.id]).get(product.id, 0) + 20
    supplier = db.session.scalars(select(Supplier).where(Supplier.protocol.is_not(None))).first()
    threshold = supplier.low_balance_threshold
    supplier.low_balance_threshold = (supplier.balance or 0) + 100_000
    db.session.commit()
    cards.scan_low_stock()
    sync.sync_all()
    alerts.evaluate()
    dispatch_due()
    supplier = db.session.get(Supplier, supplier.id)
    supplier.low_balance_threshold = threshold
    db.session.commit()
    sync.sync_all()
    alerts.evaluate()
    dispatch_due()
    print(f"alerts: {len(sim.messages)} robot messages accepted, {len(sim.requests)} requests", flush=True)


def log_in(context, base: str, username: str):
    page = context.new_page()
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("form[name=login] [type=submit]")
    if "/login" in page.url:
        raise SystemExit(f"login failed for {username}: {page.inner_text('body')[:300]}")
    return page


def resolve(path: str, shop_paths: dict[str, str]) -> str:
    for login, shop_path in shop_paths.items():
        path = path.replace("{shop:" + login + "}", shop_path)
    return path


def shoot(page, base: str, shot: Shot, out: Path, shop_paths: dict[str, str]) -> list[str]:
    """Open the page, wait for it (and its dashboard) to render, write the PNG; return problems found."""
    problems = []
    path = resolve(shot.path, shop_paths)
    if "{shop:" in path:
        return [f"{shot.name}: the demo has no shop for {shot.path}"]
    if shot.download:
        answer = page.request.get(base + path)
        if answer.status >= 400 or answer.headers.get("content-type") != "image/png":
            return [f"{path} answered {answer.status} {answer.headers.get('content-type')}"]
        (out / f"{shot.name}.png").write_bytes(answer.body())
        return []
    response = page.goto(base + path, wait_until="networkidle")
    if response is None or response.status >= 400:
        return [f"{path} answered {response.status if response else 'nothing'}"]
    if shot.dashboard:
        frame = page.frame_locator("#dashboard-frame")
        frame.locator(".kd-page").wait_for()
        dash = next(f for f in page.frames if "/dashboards/" in f.url)
        try:
            dash.wait_for_function(DASH_READY_JS, timeout=TIMEOUT_MS, polling=250)
        except Exception:  # noqa: BLE001 (reported below with what the page shows)
            problems.append(f"{shot.path}: graphs did not render within {TIMEOUT_MS // 1000} s")
        errors = dash.evaluate("() => Array.from(document.querySelectorAll('.dash-fe-error__title, "
                               ".dash-callback-error')).map(e => e.textContent)")
        if errors:
            problems.append(f"{shot.path}: Dash errors {errors}")
        page.wait_for_timeout(800)  # plotly's transitions and the iframe's resize to its content
    else:
        for selector, value in shot.fill:
            value = value() if callable(value) else value
            page.fill(selector, value.strftime("%Y-%m-%dT%H:%M") if hasattr(value, "strftime") else value)
        if shot.submit:
            with page.expect_navigation():
                page.click(shot.submit)
        page.wait_for_timeout(300)
    page.screenshot(path=str(out / f"{shot.name}.png"), full_page=True)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20000, help="orders of demo history (default 20000)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="output folder")
    parser.add_argument("--only", default="", help="comma-separated shot names (default: all)")
    parser.add_argument("--database", help="reuse this already built demo database (a sqlite:/// URL)")
    args = parser.parse_args(argv)
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    shots = [s for s in SHOTS if not wanted or s.name in wanted]
    if wanted - {s.name for s in SHOTS}:
        parser.error(f"unknown shots: {sorted(wanted - {s.name for s in SHOTS})}")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: run `make browser`")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="kameng-screens-") as tmp:
        supplier_url, simulator = start_supplier_sim(Path(tmp))
        stop = None
        problems: list[str] = []
        try:
            url = args.database or build_database(Path(tmp), args.orders, supplier_url)
            base, stop, shop_paths = serve(url, supplier_url, with_alerts=any(s.name == "alert_log" for s in shots))
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                try:
                    for user, viewport in dict.fromkeys((s.user, json.dumps(s.viewport)) for s in shots):
                        context = browser.new_context(locale="zh-CN", viewport=json.loads(viewport) or VIEWPORT,
                                                      device_scale_factor=1)
                        context.set_default_timeout(TIMEOUT_MS)
                        page = log_in(context, base, user) if user else context.new_page()
                        for shot in (s for s in shots if (s.user, json.dumps(s.viewport)) == (user, viewport)):
                            t = time.perf_counter()
                            found = shoot(page, base, shot, out, shop_paths)
                            problems += found
                            print(f"{shot.name + '.png':<32} {time.perf_counter() - t:5.1f} s"
                                  f"{'  PROBLEM: ' + '; '.join(found) if found else ''}", flush=True)
                        context.close()
                finally:
                    browser.close()
        finally:
            if stop is not None:
                stop()
            stop_process(simulator)
    if problems:
        print("\n".join(["problems:", *problems]), file=sys.stderr)
        return 1
    print(f"{len(shots)} screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
