"""Anomalies in the agent tree (代理异常): an unsupervised score per agent, computed in batch by a job (never on the
request path: IsolationForest costs milliseconds per call whatever the rows).

Per agent, over the last WINDOW_DAYS: direct recruits, how many of them bought anything, what they spent, what the
agent itself spent, its refunds and disputes, how many other agents share a device or an IP with it. IsolationForest
(scikit-learn, seeded) scores how unusual that mix is. Flags, each with its reason code:
- `downline_never_buys`: at least MIN_RECRUITS recruits and not one order from any of them (a recruiter of empty
  accounts: paid-per-head schemes, account farms);
- `linked_cluster`: in a group of at least MIN_CLUSTER agents linked by a shared device, or by an IP that few agents
  share (an address shared by more than MAX_IP_SHARERS is a carrier's NAT and links nobody);
- `outlier`: among the CONTAMINATION most unusual agents by the forest (only with MIN_AGENTS or more agents).
The latest result per agent is kept in risk_agent_anomaly and shown on the risk dashboard.
"""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from app.agents.models import Agent
from app.clock import utcnow
from app.extensions import db
from app.risk.identity import digest
from app.risk.models import RiskAgentAnomaly, RiskEvent

WINDOW_DAYS = 90
MIN_RECRUITS = 3
MIN_CLUSTER = 3
MAX_IP_SHARERS = 10
MIN_AGENTS = 20
CONTAMINATION = 0.02
SEED = 7
SPENDING = ("paid", "delivering", "delivered", "reviewing", "disputed", "refunded")
FEATURES = ("recruits", "recruits_buying", "downline_spend", "own_spend", "own_orders", "refunds", "disputes",
            "device_sharers", "ip_sharers")
REASON_CODES = ("downline_never_buys", "linked_cluster", "outlier")


def _components(links: dict[int, set[int]]) -> dict[int, int]:
    """agent -> the smallest agent id of its connected group (union-find over the links)."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for members in links.values():
        members = sorted(members)
        for other in members[1:]:
            ra, rb = find(members[0]), find(other)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {a: find(a) for a in parent}


def agent_features(now: datetime | None = None) -> tuple[dict[int, dict], dict[int, int]]:
    """Per agent its feature values, and agent -> linked group (min agent id) for the agents that share a device or
    a scarcely shared IP."""
    from app.orders.models import Order

    now = now or utcnow()
    since = now - timedelta(days=WINDOW_DAYS)
    agents = db.session.execute(select(Agent.id, Agent.parent_id).where(Agent.active.is_(True))).all()
    out = {a: dict.fromkeys(FEATURES, 0) for a, _ in agents}
    parent_of = {a: p for a, p in agents}
    for _, p in agents:
        if p in out:
            out[p]["recruits"] += 1
    spend = db.session.execute(select(Order.agent_id, func.count(), func.coalesce(func.sum(Order.amount), 0))
                               .where(Order.agent_id.is_not(None), Order.created_at >= since,
                                      Order.status.in_(SPENDING)).group_by(Order.agent_id)).all()
    for agent_id, orders, amount in spend:
        if agent_id not in out:
            continue
        out[agent_id]["own_orders"] = int(orders)
        out[agent_id]["own_spend"] = int(amount)
        parent = parent_of.get(agent_id)
        if parent in out and orders:
            out[parent]["recruits_buying"] += 1
            out[parent]["downline_spend"] += int(amount)
    # the velocity record keys agents, devices and IPs by keyed hash: map the agents' hashes back
    by_key = {digest("agent", str(a)): a for a in out}
    devices: dict[str, set[int]] = defaultdict(set)
    ips: dict[str, set[int]] = defaultdict(set)
    rows = db.session.execute(select(RiskEvent.agent, RiskEvent.metric, RiskEvent.device, RiskEvent.ip)
                              .where(RiskEvent.agent.is_not(None), RiskEvent.at >= since))
    for agent_key, metric, device, ip in rows:
        agent_id = by_key.get(agent_key)
        if agent_id is None:
            continue
        if metric == "refund":
            out[agent_id]["refunds"] += 1
        elif metric == "dispute":
            out[agent_id]["disputes"] += 1
        if device:
            devices[device].add(agent_id)
        if ip:
            ips[ip].add(agent_id)
    links: dict[str, set[int]] = {}
    for key, members in devices.items():
        if len(members) > 1:
            links[f"d:{key}"] = members
            for a in members:
                out[a]["device_sharers"] = max(out[a]["device_sharers"], len(members) - 1)
    for key, members in ips.items():
        if 1 < len(members) <= MAX_IP_SHARERS:
            links[f"i:{key}"] = members
            for a in members:
                out[a]["ip_sharers"] = max(out[a]["ip_sharers"], len(members) - 1)
    return out, _components(links)


def run(now: datetime | None = None) -> dict[str, int]:
    """Score every active agent and replace the stored results. Commits. Returns counts per reason."""
    import numpy as np
    from sklearn.ensemble import IsolationForest

    now = now or utcnow()
    values, groups = agent_features(now)
    ids = sorted(values)
    scores = dict.fromkeys(ids, 0.0)
    outliers: set[int] = set()
    if ids:
        x = np.log1p(np.asarray([[values[a][f] for f in FEATURES] for a in ids], dtype=np.float64))
        forest = IsolationForest(n_estimators=100, contamination=CONTAMINATION, random_state=SEED, n_jobs=1).fit(x)
        raw = -forest.score_samples(x)  # one batched call: higher is more unusual
        scores = {a: round(float(s), 4) for a, s in zip(ids, raw, strict=True)}
        if len(ids) >= MIN_AGENTS:
            outliers = {a for a, p in zip(ids, forest.predict(x), strict=True) if p == -1}
    sizes: dict[int, int] = defaultdict(int)
    for root in groups.values():
        sizes[root] += 1
    counts = dict.fromkeys(REASON_CODES, 0)
    db.session.execute(delete(RiskAgentAnomaly))
    for a in ids:
        reasons = []
        v = values[a]
        if v["recruits"] >= MIN_RECRUITS and v["recruits_buying"] == 0:
            reasons.append("downline_never_buys")
        root = groups.get(a)
        cluster = None
        if root is not None and sizes[root] >= MIN_CLUSTER:
            reasons.append("linked_cluster")
            cluster = f"group-{root}"
        if a in outliers:
            reasons.append("outlier")
        for reason in reasons:
            counts[reason] += 1
        db.session.add(RiskAgentAnomaly(agent_id=a, score=scores[a], flagged=bool(reasons),
                                        reasons=json.dumps(reasons), cluster=cluster, features=json.dumps(v),
                                        computed_at=now))
    db.session.commit()
    counts["agents"] = len(ids)
    return counts


def flagged(limit: int = 200) -> list[RiskAgentAnomaly]:
    """Flagged agents, most unusual first (the review list and the dashboard)."""
    return list(db.session.scalars(select(RiskAgentAnomaly).where(RiskAgentAnomaly.flagged.is_(True))
                                   .order_by(RiskAgentAnomaly.score.desc(), RiskAgentAnomaly.agent_id).limit(limit)))
