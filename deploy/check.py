"""`make deploy-check`: the multi-host layout on one machine, and a smoke test through nginx.

Starts deploy/stack.py's layout (nginx from Debian's package in front of two gunicorn processes on different ports,
two `flask kameng worker` processes, one PostgreSQL and one Redis of their own, the upstream supplier simulator,
all on 127.0.0.1, from one environment file), then through nginx:

 1. the production site file (deploy/nginx/kameng.conf, TLS included) passes `nginx -t` with a throwaway
    certificate in place of the placeholders;
 2. probes: /healthz and /readyz answer, /metrics is not served to the public;
 3. static files come from nginx (cacheable), the request id is nginx's and the app sees the real client address;
 4. login: an admin signs in (CSRF form) and stays signed in whichever web process answers;
 5. purchase: a reseller buys a card through the Open API (signed), and repeating it returns the same order;
 6. storefront payment: a buyer checks out (sandbox channel), the channel's notification is taken, the order
    lookup shows the card secret;
 7. top-up: a reseller buys a direct top-up (直充); the workers submit it to the supplier simulator and it ends
    delivered;
 8. body limits: an oversized API body is refused by nginx (413);
 9. both web processes served requests and count them across their workers (/metrics, multi-process);
10. the ledger is exact (`flask kameng ledger-check`).

Prints each step with its time; exits 1 at the first failure (the logs are kept and their folder printed).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from deploy.stack import DEMO_PASSWORD, SANDBOX_KEY, Stack, fab_static_root, nginx_binary  # noqa: E402


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def step(number: int, title: str):
    def run(func):
        started = time.monotonic()
        detail = func()
        print(f"  ok {number:>2}. {title} ({time.monotonic() - started:.2f} s){': ' + detail if detail else ''}",
              flush=True)
    return run


def check_production_site(stack: Stack) -> str:
    """deploy/nginx/kameng.conf as installed (snippets under /etc/nginx), with a self-signed certificate where the
    placeholders point, parsed by `nginx -t`."""
    work = Path(tempfile.mkdtemp(prefix="kameng-nginx-t-", dir=stack.root))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=kameng.example.com", "-keyout", str(work / "privkey.pem"), "-out",
                    str(work / "fullchain.pem")], check=True, capture_output=True)
    site = (ROOT / "deploy" / "nginx" / "kameng.conf").read_text()
    site = (site.replace("/etc/ssl/kameng/", f"{work}/")
            .replace("/etc/nginx/snippets/kameng-proxy.conf", str(ROOT / "deploy" / "nginx" / "kameng-proxy.conf"))
            .replace("/var/log/nginx/", f"{work}/")
            .replace("listen 80;", "listen 127.0.0.1:80;").replace("listen [::]:80;", "")
            .replace("listen 443 ssl http2;", "listen 127.0.0.1:443 ssl http2;")
            .replace("listen [::]:443 ssl http2;", ""))
    (work / "kameng.conf").write_text(site)
    (work / "nginx.conf").write_text(f"""pid {work}/nginx.pid;
error_log {work}/error.log;
events {{}}
http {{
    include /etc/nginx/mime.types;
    include {ROOT}/deploy/nginx/kameng-http.conf;
    include {work}/kameng.conf;
}}
""")
    done = subprocess.run([nginx_binary(), "-t", "-p", str(work), "-c", str(work / "nginx.conf"), "-e",
                           str(work / "error.log")], capture_output=True, text=True)
    expect(done.returncode == 0, f"nginx -t refused deploy/nginx/kameng.conf:\n{done.stderr}")
    return "syntax ok (TLS server with a throwaway certificate)"


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or \
        re.search(r'value="([^"]+)"[^>]*name="csrf_token"', html)
    expect(match is not None, "no CSRF token in the login form")
    return match.group(1)


def session_from(address: str) -> requests.Session:
    """A requests session whose connections leave from `address` (a client other than the proxy's own address)."""
    class FromAddress(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            kwargs["source_address"] = (address, 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.mount("http://", FromAddress())
    return session


def run_checks(stack: Stack) -> None:
    base = stack.base_url
    http = requests.Session()

    step(1, "production nginx site parses")(lambda: check_production_site(stack))

    def probes() -> str:
        r = http.get(base + "/healthz", timeout=10)
        expect(r.status_code == 200 and r.json() == {"status": "ok"}, f"/healthz: {r.status_code} {r.text[:200]}")
        r = http.get(base + "/readyz", timeout=10)
        expect(r.status_code == 200 and r.json()["status"] == "ready", f"/readyz: {r.status_code} {r.text[:200]}")
        r = http.get(base + "/metrics", headers={"Authorization": f"Bearer {stack.metrics_token}"}, timeout=10)
        expect(r.status_code == 404, f"/metrics through nginx: {r.status_code} (it is scraped on the web ports)")
        return json.dumps(http.get(base + "/readyz", timeout=10).json()["checks"])
    step(2, "probes through nginx; /metrics not public")(probes)

    def static_and_headers() -> str:
        r = http.get(base + "/static/kameng/confirm.js", timeout=10)
        expect(r.status_code == 200 and "data-confirm" in r.text, f"static file: {r.status_code}")
        expect("max-age=604800" in r.headers.get("Cache-Control", ""), f"static not cached: {dict(r.headers)}")
        expect("X-Request-ID" not in r.headers, "static files should not reach the app")
        fab = http.get(base + "/static/appbuilder/css/flags/flags16.css", timeout=10)
        expect(fab.status_code == 200, f"FAB's static files: {fab.status_code} (root {fab_static_root()})")
        r = http.get(base + "/healthz", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
        request_id = r.headers.get("X-Request-ID", "")
        expect(re.fullmatch(r"[0-9a-f]{32}", request_id) is not None, f"request id not nginx's: {request_id!r}")
        access = (stack.logs / "nginx-access.log").read_text()
        expect(request_id in access, "nginx's access log does not name the request id the app answered")
        return f"request id {request_id[:8]}… in nginx's access log and the answer"
    step(3, "static files from nginx; request ids")(static_and_headers)

    def login() -> str:
        page = http.get(base + "/login/", timeout=10)
        expect(page.status_code == 200, f"login page: {page.status_code}")
        r = http.post(base + "/login/", data={"username": "admin", "password": DEMO_PASSWORD,
                                             "csrf_token": csrf_token(page.text)}, allow_redirects=False, timeout=20)
        expect(r.status_code == 302 and "/login" not in r.headers.get("Location", ""),
               f"admin login: {r.status_code} {r.headers.get('Location')}")
        for _ in range(8):  # signed in on whichever web process answers (one SECRET_KEY, sessions in the cookie)
            r = http.get(base + "/orders/list/", timeout=20, allow_redirects=False)
            expect(r.status_code == 200, f"an admin screen after login: {r.status_code}")
        return "admin signed in; 8 admin pages in a row"
    step(4, "login (admin, CSRF form)")(login)

    # The reseller calls from 127.0.0.2 (another loopback address); nginx reaches the web processes from 127.0.0.1.
    # Its key accepts only 127.0.0.2: it works only if the app sees the client's address, not the proxy's.
    keys = json.loads(stack.flask("kameng", "api-key", "create", "--agent", "agent1", "--name", "deploy-check",
                                  "--allow-ip", "127.0.0.2").strip().splitlines()[-1])
    from app.openapi.client import OpenApiClient

    api = OpenApiClient(base, keys["app_key"], keys["app_secret"], timeout=30, session=session_from("127.0.0.2"))
    proxy_side = OpenApiClient(base, keys["app_key"], keys["app_secret"], timeout=30, session=requests.Session())
    products = api.products().json()["products"]
    card = next(p for p in products if p["kind"] == "card" and p["in_stock"])
    phone = next(p for p in products if p["kind"] == "direct" and "话费" in p["name"])

    def purchase() -> str:
        out_trade_no = uuid.uuid4().hex
        r = api.create_order(out_trade_no, card["id"])
        expect(r.status_code == 201, f"Open API purchase: {r.status_code} {r.text[:300]}")
        order = r.json()
        expect(order["status"] == "delivered" and len(order["card_secrets"]) == 1, f"not delivered: {order}")
        again = api.create_order(out_trade_no, card["id"])
        expect(again.status_code == 200 and again.json()["order_no"] == order["order_no"], "retry not idempotent")
        # A caller at 127.0.0.1 is refused even when it claims 127.0.0.2 in its own X-Forwarded-For (nginx
        # appends the address it saw; the app trusts one proxy), and the real 127.0.0.2 passes whatever it claims.
        refused = proxy_side.request("GET", "/open/v1/balance", headers={"X-Forwarded-For": "127.0.0.2"})
        expect(refused.status_code == 401, f"a forged X-Forwarded-For was believed: {refused.status_code}")
        claimed = api.request("GET", "/open/v1/balance", headers={"X-Forwarded-For": "198.51.100.7"})
        expect(claimed.status_code == 200, f"real client address not seen: {claimed.status_code} {claimed.text}")
        return (f"{card['name']} → {order['order_no']} delivered, the retry returned it; the app saw the client's "
                "address (127.0.0.2), not nginx's")
    step(5, "purchase through the Open API")(purchase)

    def storefront() -> str:
        from app.payments.channels import sandbox

        r = http.post(base + "/shop/api/orders", json={"product_id": card["id"], "quantity": 1,
                                                       "contact": "13900139000", "query_password": "deploy-check-1",
                                                       "channel": "sandbox"}, timeout=20)
        expect(r.status_code == 201, f"storefront checkout: {r.status_code} {r.text[:300]}")
        order_no, amount = r.json()["order_no"], r.json()["amount"]
        fields = {"order_no": order_no, "trade_no": "DC" + uuid.uuid4().hex[:20], "amount": str(amount),
                  "currency": "CNY", "status": "SUCCESS", "ts": str(int(time.time())), "nonce": uuid.uuid4().hex}
        fields["sign"] = sandbox.sign(SANDBOX_KEY, fields)
        r = http.post(base + "/pay/notify/sandbox", data=fields, timeout=20)
        expect(r.status_code == 200 and r.text == "success", f"notification: {r.status_code} {r.text[:200]}")
        r = http.post(base + "/shop/api/lookup", json={"order_no": order_no, "query_password": "deploy-check-1"},
                      timeout=20)
        expect(r.status_code == 200 and r.json()["status"] == "delivered" and r.json()["card_secrets"],
               f"lookup: {r.status_code} {r.text[:300]}")
        return f"{order_no} paid by notification, secret shown by lookup"
    step(6, "storefront checkout and payment")(storefront)

    def topup() -> str:
        r = api.create_order(uuid.uuid4().hex, phone["id"], account="13800138000")
        expect(r.status_code == 201 and r.json()["status"] in ("paid", "delivering", "delivered"),
               f"top-up order: {r.status_code} {r.text[:300]}")
        order_no = r.json()["order_no"]
        started = time.monotonic()
        status = r.json()["status"]
        while status != "delivered" and time.monotonic() - started < 60:
            time.sleep(0.3)
            status = api.order(order_no).json()["status"]
        expect(status == "delivered", f"top-up {order_no} still {status} after 60 s (see {stack.logs}/worker*.log)")
        return f"{phone['name']} {order_no} delivered by a worker in {time.monotonic() - started:.1f} s"
    step(7, "direct top-up through the workers and the supplier simulator")(topup)

    def body_limit() -> str:
        r = http.post(base + "/open/v1/orders", data=b"x" * (2 * 1024 * 1024),
                      headers={"Content-Type": "application/json"}, timeout=20)
        expect(r.status_code == 413, f"2 MB to the Open API: {r.status_code}")
        return "2 MB API body refused by nginx (413)"
    step(8, "body limits")(body_limit)

    def both_webs() -> str:
        counts = []
        for i in range(stack.webs):
            text = stack.metrics(i)
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("kameng_http_requests_total{"))
            expect(total > 0, f"web{i} counted no request")
            expect("kameng_up{service=\"database\"} 1.0" in text, f"web{i} does not see the database")
            counts.append(int(total))
        return "requests counted per web process (all its workers): " + ", ".join(map(str, counts))
    step(9, "both web processes served; metrics per process")(both_webs)

    def ledger() -> str:
        out = stack.flask("kameng", "ledger-check")
        expect("ledger ok" in out, out)
        return out.strip().splitlines()[-1]
    step(10, "ledger exact")(ledger)


def main() -> int:
    parser = argparse.ArgumentParser(description="The multi-host layout on one machine, smoke-tested through nginx.")
    parser.add_argument("--keep", action="store_true", help="keep the logs (and print their folder)")
    args = parser.parse_args()
    started = time.monotonic()
    print("deploy-check: starting the layout", flush=True)
    stack = Stack()
    try:
        stack.start()
    except Exception as exc:
        print(f"FAILED to start: {exc}\n  logs: {stack.logs}", file=sys.stderr)
        stack.destroy(keep_logs=True)
        return 1
    failed = None
    try:
        run_checks(stack)
    except (CheckFailed, requests.RequestException, StopIteration, KeyError) as exc:
        failed = exc
    finally:
        stack.destroy(keep_logs=bool(failed) or args.keep)
    if failed:
        print(f"FAILED: {failed}\n  logs: {stack.logs}", file=sys.stderr)
        return 1
    print(f"deploy-check passed in {time.monotonic() - started:.1f} s" + (f"; logs in {stack.logs}" if args.keep
                                                                            else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
