"""Risk control (风控) on a synthetic day: recall per attack, the legitimate traffic held, and decision latency.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_risk REDIS_URL=redis://127.0.0.1:6379/3 \
        .venv/bin/python bench/risk.py --events 20000

It DROPS and recreates the bench database (its name must contain "bench"), migrates it, empties the Redis database
of REDIS_URL (when set), then builds its data: card products, three tiers with their risk limits, 300 agents of
mixed ages, a few list entries, the default rules (app.risk.default_rules.install_defaults) plus generated extra
rules to reach 50 active ones. It replays a seeded synthetic business day (yesterday, in BUSINESS_TIMEZONE):

- legitimate traffic: storefront buyers with their own phones, devices and IPs (a share behind carrier NAT IPs,
  households sharing a device, buyers on two devices, payment retries, first-order coupons, the odd past refund),
  agents buying through the portal and the Open API, wallet top-ups, withdrawals of earnings, registrations;
- injected attacks: card testing (one device, many payment accounts), account farms (many registrations from one
  IP / device), velocity bursts, structuring just under the per-order limit, refund abuse, coupon abuse, and
  top-up then withdraw.

Every event goes through app.risk.service.evaluate directly (not through HTTP), with `now` at the event's time,
and what happened is recorded as the entry points do (the order row with its buyer / device keys, then
counters.record of `order`, `coupon_order`, `payment`, `refund`, `dispute`, `registration`, `topup`,
`withdrawal` at that time: risk.record() itself always stamps the wall clock). Orders are written as rows only
(status pending_payment / paid / reviewing / refunded, no card secrets or journals: the limits need only what is
counted). A storefront order is one event: its checkout decision, and, when it is paid, the payment decision on
the paying account (anything but allow holds it, as app/payments/service.py does). Recall per attack = share of
its events reviewed or blocked. Latency is evaluate's own time, every call (checkouts and payments).

`--profile FILE` runs the day under cProfile and prints the top functions by cumulative time.
The last line is the headline.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # appended: bench/dashboards.py must not shadow the app's
    sys.path.append(str(Path(__file__).resolve().parent))
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/kameng_bench_risk")
from common import database_url, make_app, migrate, percentile, recreate_database  # noqa: E402

from app.risk.learning.synthetic import (  # noqa: E402,F401  (the generator lives in the app; re-exported)
    ATTACKS,
    EXTRA_RULES,
    Day,
    Ev,
    Gen,
    Outcome,
    Past,
    build_data,
    figures,
    generate,
    run,
)


def report(stats: dict, latencies: list[float], redis_on: bool, active_rules: int, calls: int) -> str:
    lines = [f"risk bench: {sum(s['events'] for s in stats.values())} events, {calls} evaluate calls, "
             f"{active_rules} active rules, counters from {'Redis' if redis_on else 'PostgreSQL'}",
             f"{'attack':<16}{'events':>8}{'review':>8}{'block':>8}{'recall':>9}"]
    for name in ATTACKS:
        s = stats.get(name, {"events": 0, "review": 0, "block": 0, "flagged": 0.0})
        lines.append(f"{name:<16}{s['events']:>8}{s['review']:>8}{s['block']:>8}{s['flagged'] * 100:>8.1f}%")
    legit = stats.get("legit", {"events": 0, "review": 0, "block": 0})
    n = legit["events"] or 1
    lines.append(f"legitimate: {legit['events']} events, reviewed {legit['review']} ({legit['review'] / n:.2%}), "
                 f"blocked {legit['block']} ({legit['block'] / n:.2%})")
    if legit.get("why"):
        lines.append("legitimate held by: " + ", ".join(f"{k} {v}" for k, v in legit["why"].most_common(8)))
    lat = sorted(latencies)
    p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
    lines.append(f"evaluate latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1] * 1000:.2f} ms (n={len(lat)})")
    min_recall = min(stats.get(a, {"flagged": 0.0})["flagged"] for a in ATTACKS)
    ok = (min_recall >= 0.95 and legit["review"] / n <= 0.01 and legit["block"] / n <= 0.002 and p99 <= 10)
    lines.append(f"headline: risk recall min {min_recall:.1%}, legitimate reviewed {legit['review'] / n:.2%} "
                 f"blocked {legit['block'] / n:.2%}, evaluate p99 {p99:.2f} ms "
                 f"({'Redis' if redis_on else 'PostgreSQL'}, {active_rules} rules) {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def train_model(args, rules: int) -> dict:
    """The day before: its own agents, through the rules, every decision labelled with the generator's truth; a
    model trained on it (shadow: scored on the measured day, deciding nothing)."""
    from app.clock import business_day_start, utcnow
    from app.extensions import db
    from app.risk.learning import model, synthetic

    before = generate(args.events, args.seed + 1000)
    data = build_data(before, rules, prefix="benchtrain", with_lists=False)
    out = run(before, data, business_day_start(utcnow()) - timedelta(days=2), order_prefix="RT")
    synthetic.label(out["results"])
    db.session.commit()
    t0 = time.perf_counter()
    row = model.train(seed=args.seed)
    return {"version": row.version, "metrics": json.loads(row.metrics), "rules": json.loads(row.rules_metrics),
            "seconds": time.perf_counter() - t0}


def model_report(trained: dict, results: list, score_latencies: list[float]) -> str:
    """The model beside the rules on the measured day: an event is flagged by the model when a decision of it scored
    at or above the training holdout's 1%-review-rate threshold (rules decide what a score means: this is what a
    `model_score >= threshold -> review` rule would add)."""
    from sqlalchemy import select

    from app.extensions import db
    from app.risk.models import RiskDecision

    threshold = trained["metrics"]["threshold_1pct"]
    ids = [d for r in results for d, _ in r.decisions if d is not None]
    scores: dict[int, float] = {}
    for start in range(0, len(ids), 2000):
        for decision_id, raw in db.session.execute(select(RiskDecision.id, RiskDecision.model)
                                                   .where(RiskDecision.id.in_(ids[start:start + 2000]))):
            shadow = (json.loads(raw) or {}).get("shadow") if raw else None
            if shadow:
                scores[decision_id] = shadow[0]["score"]
    m, r = trained["metrics"], trained["rules"]
    lines = [f"model v{trained['version']} trained in {trained['seconds']:.1f} s on the day before "
             f"({m['train_n']} decisions, {m['train_positives']} fraud); holdout {m['n']} ({m['positives']} fraud):",
             f"  holdout         {'PR-AUC':>8}{'recall@1%':>11}",
             f"  model           {m['pr_auc']:>8.3f}{m['recall_at_1pct']:>10.1%}",
             f"  active rules    {r['pr_auc']:>8.3f}{r['recall_at_1pct']:>10.1%}   "
             f"(rules flag {r['flagged_share']:.1%}, recall there {r['recall_flagged']:.1%}; "
             f"model at that share {m['recall_at_rules_share']:.1%})",
             f"measured day, model threshold {threshold:.4f} (1% review rate on the holdout):",
             f"{'attack':<16}{'rules':>9}{'model':>9}{'either':>9}"]
    by: dict[str, list] = defaultdict(list)
    for res in results:
        model_flag = any(scores.get(d, 0.0) >= threshold for d, _ in res.decisions)
        by[res.label].append((res.outcome != "allow", model_flag))
    for name in (*ATTACKS, "legit"):
        rows = by.get(name) or [(False, False)]
        n = len(rows)
        rules_share = sum(a for a, _ in rows) / n
        model_share = sum(b for _, b in rows) / n
        either = sum(a or b for a, b in rows) / n
        lines.append(f"{name:<16}{rules_share:>8.1%}{model_share:>9.1%}{either:>9.1%}"
                     + ("   (legitimate: share held)" if name == "legit" else ""))
    legit = by.get("legit") or [(False, False)]
    lines.append(f"model reviews {sum(b for _, b in legit) / len(legit):.2%} of legitimate events, blocks none "
                 "(rules decide what a score means)")
    lat = sorted(score_latencies) or [0.0]
    lines.append(f"model scoring latency (score + contributions, shadow): p50 {percentile(lat, 50) * 1000:.3f} ms, "
                 f"p99 {percentile(lat, 99) * 1000:.3f} ms (n={len(lat)})")
    return "\n".join(lines)


def score_latencies(results: list) -> list[float]:
    """model.score() timed on every measured decision's stored features (the request path's extra work)."""
    from sqlalchemy import select

    from app.extensions import db
    from app.risk.learning import model
    from app.risk.models import RiskDecision

    ids = [d for r in results for d, _ in r.decisions if d is not None]
    out = []
    for start in range(0, len(ids), 2000):
        rows = db.session.execute(select(RiskDecision.features).where(RiskDecision.id.in_(ids[start:start + 2000])))
        for (features,) in rows:
            values = json.loads(features)
            t0 = time.perf_counter()
            model.score(values)
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rules", type=int, default=50, help="active rules (defaults plus generated extras)")
    parser.add_argument("--profile", metavar="FILE", help="run under cProfile, dump to FILE, print the top")
    parser.add_argument("--no-model", action="store_true", help="rules only (no model trained on the day before)")
    args = parser.parse_args()

    url = database_url()
    recreate_database(url)
    migrate(url)
    redis_url = os.environ.get("REDIS_URL") or None
    app = make_app(url, REDIS_URL=redis_url)
    if redis_url:
        from redis import Redis

        Redis.from_url(redis_url).flushdb()  # the bench's own Redis database: windows start empty
    day = generate(args.events, args.seed)
    with app.app_context():
        app.appbuilder.sm.create_db()
        data = build_data(day, args.rules)
        trained = None if args.no_model else train_model(args, args.rules)
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            out = profiler.runcall(run, day, data)
            profiler.dump_stats(args.profile)
            pstats.Stats(args.profile).sort_stats("cumulative").print_stats(35)
        else:
            out = run(day, data)
        lines = report(figures(out["results"]), out["latencies"], bool(redis_url), data["active_rules"],
                       len(out["latencies"]))
        if trained is not None:
            head, last = lines.rsplit("\n", 1)
            lines = "\n".join((head, model_report(trained, out["results"], score_latencies(out["results"])), last))
    print(lines)


if __name__ == "__main__":
    main()
