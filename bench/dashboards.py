"""Dashboard latency over HTTP on a year of history: first load and filter changes, manager and a big-branch agent.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_h .venv/bin/python bench/dashboards.py \
        --orders 1000000 [--repeat 20]

Data: if the database already holds at least N orders of demo history (`flask kameng demo --orders N`, any run),
it is reused as it is and the output says so (pass the demo's `--password`); an empty or missing database is
(re)created — its name must contain "bench" — migrated with Alembic and loaded with `flask kameng demo --orders N`.
A database with fewer orders is only rebuilt with `--rebuild` (it may be somebody's).

Then the real app runs under gunicorn (4 sync workers on 127.0.0.1, like bench/orders.py) and two users log in
through the login form: `manager` (the platform scope) and the agent with the largest downline among agents with
a login (`agent1` in the demo). For every dashboard and user it plays what the browser plays, built from the
app's own /_dash-layout and /_dash-dependencies as Dash's renderer does:
- load: every callback the page fires on load (prevent_initial_call off, inputs in the layout), each wave of
  independent callbacks in parallel as the browser sends them, and the callbacks they trigger after (the preset
  radio sets the date range, which feeds the data callback): the time until the last answer;
- category (or tier, where the dashboard has no category filter): the first category (tier) picked;
- year: the 近一年 preset clicked (the date range callback, then the data callback over 365 days).
Each POST /dashboards/<slug>/_dash-update-component carries the session cookie and the X-CSRFToken header from
Dash's `_csrf_token` cookie; any answer but 200 fails the run. Each (dashboard, user, action) runs --repeat times
after a warm-up round; it prints p50 and p95 in ms, and LAST the largest p95 of all (target: < 300 ms).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, database_url, percentile, recreate_database, sqlalchemy_url  # noqa: E402
from orders import _csrf_from, _merge_cookies, _request, bench_server  # noqa: E402

PASSWORD = "bench-pass-123"
DASHBOARDS = ("gmv", "products", "agents", "profiles", "money")  # dashboards.DASHBOARDS' slugs
TARGET_MS = 300.0


# ---------------------------------------------------------------------------------------------------------------
# Data: reuse or build the history


def database_state(url: str) -> dict:
    """Orders, history runs and the logins we need, read with plain SQL (nothing written)."""
    import psycopg

    state = {"exists": True, "orders": 0, "histories": 0, "users": set()}
    try:
        conn = psycopg.connect(url, connect_timeout=60)
    except psycopg.OperationalError as exc:
        if "does not exist" in str(exc):
            return {"exists": False, "orders": 0, "histories": 0, "users": set()}
        raise
    with conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        if not {"orders", "card_import", "ab_user"} <= tables:
            return state
        state["orders"] = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        # app.analytics.history names its stock imports "history-<run>-..."
        state["histories"] = conn.execute(
            "SELECT count(DISTINCT split_part(filename, '-', 2)) FROM card_import WHERE source = 'history'"
        ).fetchone()[0]
        state["users"] = {r[0] for r in conn.execute("SELECT username FROM ab_user")}
    return state


def build_history(url: str, orders: int, password: str) -> None:
    """Fresh database, Alembic, then the demo with N orders of history, through the CLI users run (in child
    processes: this file's name would shadow the `dashboards` package in this one)."""
    recreate_database(url)
    env = {**os.environ, "DATABASE_URL": url, "FLASK_APP": "run"}
    env.pop("REDIS_URL", None)  # history is written in bulk; nothing to queue
    flask = str(Path(sys.executable).parent / "flask")
    t = time.perf_counter()
    for cmd, extra in (([flask, "db", "upgrade"], {"FAB_CREATE_DB": "False", "FAB_UPDATE_PERMS": "False"}),
                       ([flask, "kameng", "demo", "--password", password, "--sandbox-key", "bench-sandbox-key",
                         "--orders", str(orders)], {})):
        proc = subprocess.run(cmd, cwd=ROOT, env={**env, **extra}, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"{' '.join(cmd[1:3])} failed")
    for line in proc.stdout.splitlines():
        if line.startswith(("History", "  agents", "  total", "  orders:", "  rollups")):
            print("  " + line.strip(), flush=True)
    print(f"  demo history built in {time.perf_counter() - t:.0f} s", flush=True)


def big_branch_agent(url: str) -> tuple[str, int, int, int]:
    """(username, agent id, downline size, largest downline of any agent): the agent with a login whose branch
    (itself + downline, by agent.path) is the largest."""
    from sqlalchemy import create_engine, text

    engine = create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        paths = conn.execute(text("SELECT id, path FROM agent")).all()
        logins = dict(conn.execute(text(
            "SELECT a.id, u.username FROM agent a JOIN ab_user u ON u.id = a.user_id WHERE a.active")).all())
    engine.dispose()
    size: dict[int, int] = {}
    for _id, path in paths:
        for part in path.strip("/").split("/"):
            if part:
                size[int(part)] = size.get(int(part), 0) + 1
    if not logins:
        raise SystemExit("no agent with a login in the database")
    best = max(logins, key=lambda aid: (size.get(aid, 0), -aid))
    return logins[best], best, size.get(best, 0), max(size.values())


# ---------------------------------------------------------------------------------------------------------------
# HTTP: a logged-in user and Dash's renderer, played from the app's own layout and dependencies


class Session:
    def __init__(self, port: int, username: str, password: str):
        self.port = port
        self.username = username
        self.jar: dict[str, str] = {}
        status, _, sc, page = _request(port, "GET", "/login/")
        _merge_cookies(self.jar, sc)
        token = _csrf_from(page.decode())
        status, location, sc, _ = _request(port, "POST", "/login/", urlencode(
            {"username": username, "password": password, "csrf_token": token}), self.cookie())
        _merge_cookies(self.jar, sc)
        if status != 302 or "/login" in location:
            raise SystemExit(f"login failed for {username}: {status} {location} (wrong --password?)")

    def cookie(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.jar.items())

    def get(self, path: str, allow: tuple[int, ...] = ()) -> bytes | int:
        status, location, sc, body = _request(self.port, "GET", path, cookie=self.cookie())
        _merge_cookies(self.jar, sc)
        if status in allow:
            return status
        if status != 200:
            raise SystemExit(f"{self.username}: GET {path} answered {status} {location}")
        return body

    def post_json(self, path: str, payload: dict) -> dict:
        import http.client

        body = json.dumps(payload)
        headers = {"Content-Type": "application/json", "Cookie": self.cookie(),
                   "X-CSRFToken": self.jar.get("_csrf_token", ""), "User-Agent": "kameng-bench/1"}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status == 204:  # PreventUpdate: nothing changed
            return {}
        if resp.status != 200:
            raise SystemExit(f"{self.username}: POST {path} {payload.get('output')} answered {resp.status}: "
                             f"{data[:300]!r}")
        return json.loads(data)["response"]


def _walk(node, props: dict) -> None:
    """Collect {component id: {prop: value}} from a Dash layout (JSON) tree."""
    if isinstance(node, list):
        for child in node:
            _walk(child, props)
        return
    if not isinstance(node, dict) or "props" not in node:
        return
    p = node["props"]
    if isinstance(p.get("id"), str):
        props[p["id"]] = {k: v for k, v in p.items() if k != "children"}
    for value in p.values():
        if isinstance(value, (dict, list)):
            _walk(value, props)


def _outputs(spec: str) -> list[tuple[str, str]]:
    parts = spec[2:-2].split("...") if spec.startswith("..") else [spec]
    return [tuple(part.rsplit(".", 1)) for part in parts]  # type: ignore[misc]


@dataclass
class Callback:
    output: str
    outputs: list[tuple[str, str]]
    inputs: list[tuple[str, str]]
    state: list[tuple[str, str]]
    prevent_initial_call: bool


@dataclass
class Renderer:
    """What Dash's renderer does with one page: the props it holds and the callbacks it fires."""
    session: Session
    slug: str
    callbacks: list[Callback]
    props: dict = field(default_factory=dict)
    requests: int = 0

    @classmethod
    def open(cls, session: Session, slug: str) -> Renderer | None:
        """None when the user may not see this dashboard (403: e.g. agents have no products dashboard)."""
        if session.get(f"/dashboards/{slug}/", allow=(403,)) == 403:  # the page sets Dash's _csrf_token cookie
            return None
        layout = json.loads(session.get(f"/dashboards/{slug}/_dash-layout"))
        deps = json.loads(session.get(f"/dashboards/{slug}/_dash-dependencies"))
        callbacks = [Callback(d["output"], _outputs(d["output"]),
                              [(i["id"], i["property"]) for i in d["inputs"]],
                              [(s["id"], s["property"]) for s in d.get("state", [])],
                              bool(d.get("prevent_initial_call"))) for d in deps if not d.get("clientside_function")]
        props: dict = {}
        _walk(layout, props)
        return cls(session, slug, callbacks, props)

    def _payload(self, cb: Callback, changed: list[str]) -> dict:
        def item(cid, prop):
            entry = {"id": cid, "property": prop}
            if prop in self.props.get(cid, {}):
                entry["value"] = self.props[cid][prop]
            return entry

        outs = [{"id": cid, "property": prop} for cid, prop in cb.outputs]
        return {"output": cb.output, "outputs": outs if cb.output.startswith("..") else outs[0],
                "inputs": [item(*i) for i in cb.inputs], "state": [item(*s) for s in cb.state],
                "changedPropIds": changed}

    def _fire(self, wave: list[tuple[Callback, list[str]]]) -> set[str]:
        """POST a wave of callbacks in parallel (as the browser does); apply their outputs; return what changed."""
        results: list[dict | BaseException] = [{}] * len(wave)

        def one(k: int, cb: Callback, changed: list[str]) -> None:
            try:
                results[k] = self.session.post_json(f"/dashboards/{self.slug}/_dash-update-component",
                                                    self._payload(cb, changed))
            except BaseException as exc:  # re-raised in the caller's thread
                results[k] = exc

        threads = [threading.Thread(target=one, args=(k, cb, ch)) for k, (cb, ch) in enumerate(wave)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.requests += len(wave)
        changed: set[str] = set()
        for res in results:
            if isinstance(res, BaseException):
                raise res
            for cid, values in res.items():
                for prop, value in values.items():
                    self.props.setdefault(cid, {})[prop] = value
                    changed.add(f"{cid}.{prop}")
        return changed

    def run(self, initial: bool, changed: set[str] | None = None) -> None:
        """Fire callbacks until the page settles: on load every eligible callback, else those whose inputs
        changed; a callback waits while another pending one outputs one of its inputs."""
        def wants(cb: Callback, props_changed: set[str]) -> bool:
            return any(f"{i}.{p}" in props_changed for i, p in cb.inputs)

        if initial:
            pending = {id(cb): (cb, []) for cb in self.callbacks if not cb.prevent_initial_call
                       and all(i in self.props for i, _p in cb.inputs)}
        else:
            pending = {id(cb): (cb, sorted(f"{i}.{p}" for i, p in cb.inputs if f"{i}.{p}" in changed))
                       for cb in self.callbacks if wants(cb, changed or set())}
        for _round in range(20):
            if not pending:
                return
            outs = {f"{i}.{p}" for cb, _ch in pending.values() for i, p in cb.outputs}
            ready = [(cb, ch) for cb, ch in pending.values() if not wants(cb, outs - {f"{i}.{p}" for i, p in
                                                                                        cb.outputs})]
            if not ready:
                raise SystemExit(f"{self.slug}: callback cycle among {[cb.output for cb, _ in pending.values()]}")
            for cb, _ch in ready:
                del pending[id(cb)]
            new = self._fire(ready)
            for cb in self.callbacks:
                if wants(cb, new):
                    prev = pending.get(id(cb), (cb, []))[1]
                    pending[id(cb)] = (cb, sorted(set(prev) | {f"{i}.{p}" for i, p in cb.inputs
                                                               if f"{i}.{p}" in new}))
        raise SystemExit(f"{self.slug}: callbacks did not settle")

    def snapshot(self) -> dict:
        return copy.deepcopy(self.props)


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Measure:
    slug: str
    role: str
    action: str
    samples: list[float] = field(default_factory=list)  # ms
    requests: int = 0

    def p(self, q: float) -> float:
        return percentile(sorted(self.samples), q)

    def line(self) -> str:
        flag = "" if self.p(95) < TARGET_MS else "   OVER TARGET"
        return (f"{self.slug:<9} {self.role:<8} {self.action:<9} p50 {self.p(50):7.1f} ms   p95 {self.p(95):7.1f} ms"
                f"   (n={len(self.samples)}, {self.requests} callback POSTs each){flag}")


def actions_for(base: dict) -> list[tuple[str, dict]]:
    """(action, {component id: {prop: new value}}) for the filter changes this dashboard offers."""
    out = []
    if "f-category" in base:
        options = base["f-category"].get("options") or []
        if options:
            out.append(("category", {"f-category": {"value": options[0]["value"]}}))
    elif "f-tier" in base:
        options = base["f-tier"].get("options") or []
        if options:
            out.append(("tier", {"f-tier": {"value": options[0]["value"]}}))
    if "f-preset" in base:
        out.append(("year", {"f-preset": {"value": "year"}}))
    return out


def bench_dashboard(session: Session, role: str, slug: str, repeat: int, warmup: int) -> list[Measure]:
    renderer = Renderer.open(session, slug)
    if renderer is None:
        print(f"{slug:<9} {role:<8} (no permission: 403, as designed)", flush=True)
        return []
    layout_props = renderer.snapshot()
    renderer.run(initial=True)  # warm-up load; also gives the options the filter changes pick from
    loaded = renderer.snapshot()
    load = Measure(slug, role, "load")
    changes = [(Measure(slug, role, name), change) for name, change in actions_for(loaded)]
    for k in range(warmup + repeat):
        renderer.props = copy.deepcopy(layout_props)
        renderer.requests = 0
        t = time.perf_counter()
        renderer.run(initial=True)
        if k >= warmup:
            load.samples.append((time.perf_counter() - t) * 1000)
            load.requests = renderer.requests
        for measure, change in changes:
            renderer.props = copy.deepcopy(loaded)
            renderer.requests = 0
            changed = set()
            for cid, values in change.items():
                for prop, value in values.items():
                    renderer.props.setdefault(cid, {})[prop] = value
                    changed.add(f"{cid}.{prop}")
            t = time.perf_counter()
            renderer.run(initial=False, changed=changed)
            if k >= warmup:
                measure.samples.append((time.perf_counter() - t) * 1000)
                measure.requests = renderer.requests
    return [load, *(m for m, _c in changes)]


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, required=True, help="orders of demo history (e.g. 1000000)")
    parser.add_argument("--repeat", type=int, default=20, help="measured runs per (dashboard, user, action)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured runs first (default 2)")
    parser.add_argument("--password", default=PASSWORD, help="the demo logins' password (when reusing a database)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild a database holding fewer than N orders")
    parser.add_argument("--dashboards", default=",".join(DASHBOARDS), help="comma-separated slugs (default all)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    args = parser.parse_args(argv)
    slugs = [s.strip() for s in args.dashboards.split(",") if s.strip()]
    if not set(slugs) <= set(DASHBOARDS) or args.repeat < 1 or args.orders < 1:
        parser.error("bad --dashboards, --repeat or --orders")

    url = database_url()
    where = url.rsplit("@", 1)[-1]
    state = database_state(url)
    if state["orders"] >= args.orders and state["histories"]:
        print(f"bench database: {where} reused: it already holds {state['orders']:,} orders "
              f"({state['histories']} demo history run(s)); nothing written", flush=True)
    elif state["orders"] and not args.rebuild:
        raise SystemExit(f"{where} holds {state['orders']:,} orders, fewer than --orders {args.orders:,} (or no "
                         "demo history): pass --rebuild to drop and rebuild it, or use another DATABASE_URL")
    else:
        print(f"bench database: {where} (recreated; flask kameng demo --orders {args.orders:,})", flush=True)
        build_history(url, args.orders, args.password)
    agent_name, agent_id, branch, largest = big_branch_agent(url)
    print(f"agent: {agent_name} (id {agent_id}), branch of {branch:,} agents (largest branch in the database: "
          f"{largest:,})", flush=True)

    # The demo (or its first run) created every permission: workers skip FAB's sync, start faster, write nothing.
    os.environ["FAB_UPDATE_PERMS"] = "False"
    server = bench_server(args.workers, Path("/tmp/kameng-bench-dashboards-gunicorn.log"))
    results: list[Measure] = []
    try:
        server.wait_ready(timeout=300)  # a loaded 2-core machine imports the app slowly
        users = [("manager", Session(server.port, "manager", args.password)),
                 ("agent", Session(server.port, agent_name, args.password))]
        print(f"gunicorn: {args.workers} sync workers on 127.0.0.1:{server.port}; repeat {args.repeat} "
              f"after {args.warmup} warm-up; load average {_load()} on {os.cpu_count()} CPUs", flush=True)
        for slug in slugs:
            for role, session in users:
                for m in bench_dashboard(session, role, slug, args.repeat, args.warmup):
                    results.append(m)
                    print(m.line(), flush=True)
    finally:
        server.stop()
    print(f"load average at the end: {_load()} (other processes on this machine slow every figure)")
    worst = max(results, key=lambda m: m.p(95))
    over = [m for m in results if m.p(95) >= TARGET_MS]
    print(f"{len(results)} measurements, {len(over)} at or over {TARGET_MS:.0f} ms p95")
    print(f"largest p95: {worst.p(95):.1f} ms ({worst.slug} {worst.role} {worst.action})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
