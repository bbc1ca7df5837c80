"""`make screenshots`: full-page PNGs of the admin screens, the agent portal and every dashboard, on demo data.

    .venv/bin/python tools/screenshots.py [--orders 20000] [--out docs/screenshots] [--only dash-gmv,...]

It starts the upstream supplier simulator on a free port (`flask kameng supplier-sim`, as `make run` does, so the
demo's direct products (直充) are in stock; stopped at the end, also on failure), migrates a fresh SQLite database
in a temporary directory (`flask db upgrade`, as `make migrate` does), loads the demo with a modest history
(`flask kameng demo --orders N --supplier-url ... --supplier-key ...`), serves the app on a free port (werkzeug, in
a thread of this process, jobs inline) and, in Debian's Chromium through Playwright, logs in as admin, manager and
agent1 (the 总代 with the largest branch) and writes one PNG per page (viewport 1366 wide, zh-CN). Dashboards
are shown on their FAB page (navigation + the embedded Dash app); the shot waits until Dash has no callback in
flight and every graph has drawn its traces. It fails (exit 1) when a page answers an error, a dashboard shows a
callback error, or a graph stays empty.
"""
from __future__ import annotations

import argparse
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


@dataclass(frozen=True)
class Shot:
    name: str  # docs/screenshots/<name>.png
    user: str
    path: str
    title: str  # for the README
    dashboard: bool = False
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


def serve(url: str, supplier_url: str):
    """The app on a free port, served from a thread; returns (base_url, stop). The demo's direct products point at
    this run's simulator (a reused database still names the port of the run that built it)."""
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
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="screenshots-server", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(10)
        server.server_close()

    return f"http://127.0.0.1:{server.server_port}", stop


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


def shoot(page, base: str, shot: Shot, out: Path) -> list[str]:
    """Open the page, wait for it (and its dashboard) to render, write the PNG; return problems found."""
    problems = []
    response = page.goto(base + shot.path, wait_until="networkidle")
    if response is None or response.status >= 400:
        return [f"{shot.path} answered {response.status if response else 'nothing'}"]
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
            base, stop = serve(url, supplier_url)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                try:
                    for user in dict.fromkeys(s.user for s in shots):
                        context = browser.new_context(locale="zh-CN", viewport=VIEWPORT, device_scale_factor=1)
                        context.set_default_timeout(TIMEOUT_MS)
                        page = log_in(context, base, user)
                        for shot in (s for s in shots if s.user == user):
                            t = time.perf_counter()
                            found = shoot(page, base, shot, out)
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
