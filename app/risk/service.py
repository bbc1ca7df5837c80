"""Risk control (风控): the one decision function every entry point calls before it writes anything.

`evaluate(event)` checks, in order: the lists (黑名单 block / 观察名单 review), the hard limits (per order and per
business day: storefront buyers per contact, device and payment account; agents per tier), then the scored rules
(active ones decide, shadow ones are only logged). It returns `allow`, `review` or `block` with every hit, its
reason and the feature values it saw, and stores that decision append-only (its own transaction on PostgreSQL, so a
refused request still leaves its decision) with the rule versions and its latency, so `replay(decision_id)` gives
the same outcome and anyone can ask "why was this held?".

Limits are enforced under concurrency: the check adds the amount to each identifier's running total for the business
day (contact, device, payment account, agent; app.risk.usage) and reads it in one statement, whose row locks the
caller's transaction keeps until it commits the order, so 50 concurrent checkouts of one buyer never overshoot. An
order counts from checkout until it is closed, failed or refunded, on the business day (BUSINESS_TIMEZONE) it was
created (a paying account: the day it paid).
"""
from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app
from flask_babel import gettext
from sqlalchemy import insert, select, text

from app import cache
from app.chain import service as chain
from app.clock import to_local, utcnow
from app.errors import KamengError
from app.extensions import append_engine, db
from app.money import format_fen
from app.ops import metrics
from app.risk import counters, feed, usage
from app.risk.features import COUNTERS, EVENT_DEFAULTS, RULE_FEATURES
from app.risk.identity import digest, mask
from app.risk.models import RiskDecision, RiskListEntry, RiskRuleVersion
from app.risk.rules import fired_rules, rank, rules_outcome, strongest
from app.rows import run


class RiskBlocked(KamengError):
    code = "risk_blocked"
    status = 403


class RiskLimit(KamengError):
    code = "risk_limit"
    status = 403


@dataclass
class RiskInput:
    """What an entry point knows about the event. Identifiers in plaintext: only their hashes and masks are kept."""
    event: str
    amount: int = 0
    ip: str | None = None
    device: str | None = None
    contact: str | None = None
    phone: str | None = None
    id_number: str | None = None
    payment_account: str | None = None
    agent_id: int | None = None
    agent_login: str | None = None
    tier_id: int | None = None
    order_no: str | None = None
    values: dict = field(default_factory=dict)  # event features (features.EVENT_DEFAULTS)
    enforce_limits: bool = True
    # A payment: the money came in, so a block holds the order (it counts) rather than refusing it.
    counts_when_blocked: bool = False
    # keys_of's answer, computed once per event (a purchase asks for it three times); identifiers are set first
    keys: dict | None = field(default=None, init=False, repr=False, compare=False)


@dataclass
class Decision:
    outcome: str  # allow, review, block
    stage: str  # list, limit, rule, none
    score: int
    hits: list[dict]
    features: dict
    id: int | None = None
    limit: bool = False
    model: dict | None = None  # the live models' scores and top contributing features (None: none scored)

    @property
    def reasons(self) -> str:
        return "；".join(h["reason"] for h in self.hits if not h.get("shadow")) or ""

    def raise_if_blocked(self) -> None:
        if self.outcome != "block":
            return
        if self.limit:
            raise RiskLimit(gettext("超出限额：%(reasons)s", reasons=self.reasons))
        raise RiskBlocked(gettext("风控拦截：%(reasons)s", reasons=self.reasons))


def keys_of(event: RiskInput) -> dict[str, str | None]:
    """The event's identifiers as keyed hashes, per counter dimension."""
    if event.keys is None:
        event.keys = _keys_of(event)
    return event.keys


def _keys_of(event: RiskInput) -> dict[str, str | None]:
    contact = event.contact or event.phone
    return {
        "ip": digest("ip", event.ip) if _valid_ip(event.ip) else None,
        "device": digest("device", event.device) if event.device else None,
        "contact": digest("contact", contact) if contact else None,
        "payment_account": digest("payment_account", event.payment_account) if event.payment_account else None,
        "agent": digest("agent", str(event.agent_id)) if event.agent_id else None,
    }


def warm_up() -> str:
    """What a web worker's first decision would otherwise load while a buyer waits (gunicorn's post_worker_init,
    deploy/gunicorn.conf.py): the rule engine's parser tables (about 0.35 s here), the live rules compiled, the
    live models' boosters (LightGBM and NumPy, about 1.3 s). Reads the database; the caller is in an app context."""
    from app.risk.learning.model import load_live_boosters
    from app.risk.rules import compile_live_rules

    try:
        rules = compile_live_rules()
        models = load_live_boosters()
    finally:
        db.session.remove()
    return f"{rules} rules, {models} models"


def evaluate(event: RiskInput, now: datetime | None = None) -> Decision:
    """Decide on an event; the decision is stored. Raises nothing for a block: the caller calls raise_if_blocked()
    (after any clean-up) so the JSON APIs answer 403 risk_blocked / risk_limit and pages show a form error."""
    started = time.perf_counter()
    now = now or utcnow()
    keys = keys_of(event)
    hits = _list_hits(event)
    outcome, stage, limit_hit = strongest(hits), "list" if hits else "none", False
    features = dict(RULE_FEATURES)
    features.update({k: v for k, v in event.values.items() if k in EVENT_DEFAULTS})
    features.update(event=event.event, amount=int(event.amount or 0), hour_local=to_local(now).hour)
    reserved: list[tuple[str, str]] = []
    if event.enforce_limits and event.amount:
        # Reserved even behind a list block: a payment keeps what it evaluated (the order is held and counts).
        limit_hits, reserved = _limit_hits(event, keys, features, now)
        if limit_hits and outcome != "block":
            hits += limit_hits
            outcome, stage, limit_hit = "block", "limit", True
    versions: dict[str, int] = {}
    score = 0
    model = None
    if outcome != "block":
        features.update(counters.read(COUNTERS, keys, now))
        model = _model_scores(features)
        if model is not None and model["active"] is not None:
            features["model_score"] = model["active"]["score"]
        rule_hits, score, versions = fired_rules(event.event, features)
        hits += rule_hits
        ruled = rules_outcome(rule_hits, score)
        if rank(ruled) > rank(outcome):
            outcome, stage = ruled, "rule"
    decision = Decision(outcome, stage, score, hits, features, limit=limit_hit, model=model)
    if outcome == "block" and reserved and not event.counts_when_blocked:
        if db.session.get_bind().dialect.name != "postgresql":  # SQLite commits the session with the decision
            usage.unreserve(reserved, now, event.amount)
    decision.id = _store(event, decision, versions, int((time.perf_counter() - started) * 1e6))
    metrics.count_risk_decision(event.event, outcome)
    return decision


def record(metric: str, event: RiskInput, amount: int | None = None) -> None:
    """Count what happened (an order placed, a registration, a refund ...) for the velocity features."""
    counters.record(metric, keys_of(event), event.amount if amount is None else amount)


def _model_scores(features: dict) -> dict | None:
    """The live fraud models' scores (the active one becomes `model_score`; shadow ones are only recorded)."""
    from app.risk.learning import model

    return model.score(features)


# --- lists -------------------------------------------------------------------------------------------------

def _valid_ip(ip: str | None) -> bool:
    try:
        ipaddress.ip_address(ip or "")
        return True
    except ValueError:
        return False


def _list_hits(event: RiskInput) -> list[dict]:
    wanted = []
    if _valid_ip(event.ip):
        wanted.append(("ip", digest("ip", event.ip)))
    if event.device:
        wanted.append(("device", digest("device", event.device)))
    for kind, value in (("contact", event.contact), ("phone", event.phone or event.contact),
                        ("id_number", event.id_number), ("payment_account", event.payment_account),
                        ("agent", event.agent_login)):
        if value:
            wanted.append((kind, digest(kind, value)))
    lists = _active_lists()
    now = utcnow()
    found = [entry for _, value_hash in wanted for entry in lists.by_hash.get(value_hash, ())]
    if _valid_ip(event.ip) and lists.networks:
        address = ipaddress.ip_address(event.ip)
        found += [entry for network, entry in lists.networks
                  if address.version == network.version and address in network]
    seen, hits = set(), []
    for entry in found:
        if entry.id in seen or (entry.expires_at is not None and entry.expires_at <= now):
            continue
        seen.add(entry.id)
        fallback = f"{'黑名单' if entry.action == 'block' else '观察名单'} {entry.kind}"  # i18n-keep: stored in hits
        hits.append({"kind": "list", "name": f"{entry.kind}:{entry.masked}", "list_id": entry.id,
                     "action": entry.action, "reason": entry.reason or fallback})
    return hits + feed.hits_for(event, now)  # partners' shared entries: review only, with their source


@dataclass(frozen=True)
class _ListEntry:
    id: int
    kind: str
    masked: str
    action: str
    reason: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class _Lists:
    """The entries not removed, by value hash, and the CIDR ones as networks (expiry is checked at each use)."""
    by_hash: dict
    networks: tuple


def _active_lists() -> _Lists:
    return cache.fetch("risk_lists", None, _load_lists)


def _load_lists() -> _Lists:
    by_hash: dict[str, tuple[_ListEntry, ...]] = {}
    networks = []
    rows = db.session.execute(select(RiskListEntry.id, RiskListEntry.kind, RiskListEntry.masked,
                                     RiskListEntry.action, RiskListEntry.reason, RiskListEntry.expires_at,
                                     RiskListEntry.value_hash, RiskListEntry.value)
                              .where(RiskListEntry.removed_at.is_(None)).order_by(RiskListEntry.id))
    for row in rows:
        entry = _ListEntry(*row[:6])
        if row.kind == "cidr":
            try:
                networks.append((ipaddress.ip_network(row.value, strict=False), entry))
            except ValueError:
                continue  # the list form refuses these; a row written otherwise matches nothing
        elif row.value_hash:
            by_hash[row.value_hash] = by_hash.get(row.value_hash, ()) + (entry,)
    return _Lists(by_hash, tuple(networks))


# --- limits ------------------------------------------------------------------------------------------------

def limits_for(event: RiskInput) -> tuple[int, int]:
    """(per order, per business day) in fen: the agent's tier's, else the storefront defaults."""
    cfg = current_app.config
    per_order, per_day = int(cfg["RISK_ORDER_LIMIT_FEN"]), int(cfg["RISK_DAILY_LIMIT_FEN"])
    if event.tier_id:
        from app.agents.service import tier_facts

        tier = tier_facts(event.tier_id)
        if tier is not None:
            per_order = tier.risk_order_limit or per_order
            per_day = tier.risk_daily_limit or per_day
    return per_order, per_day


def _limit_hits(event: RiskInput, keys: dict, features: dict, now: datetime) -> tuple[list[dict], list]:
    """The per-order and per-day limits; the amount is reserved against each identifier's day (rolled back with
    the caller's transaction when it writes nothing). Returns the hits and the identifiers reserved."""
    per_order, per_day = limits_for(event)
    features.update(order_limit=per_order, daily_limit=per_day)
    hits = []
    if event.amount > per_order:
        hits.append({"kind": "limit", "name": "order_limit", "action": "block",
                     "reason": f"单笔金额超过限额 {format_fen(per_order, symbol=False)} 元"})  # i18n-keep: stored
    dimensions = ("agent",) if event.agent_id else ("contact", "device", "payment_account")
    # One order everywhere (sorted): two checkouts sharing identifiers lock their rows alike, never a deadlock.
    identifiers = [(d, keys[d]) for d in sorted(dimensions) if keys.get(d)]
    counted = usage.reserve(identifiers, now, event.amount)
    used = 0
    for dimension, _ in identifiers:
        spent = counted[dimension]
        used = max(used, spent)
        if spent + event.amount > per_day:
            # i18n-keep: the reason is stored in the decision's hits
            reason = f"今日累计金额将超过限额 {format_fen(per_day, symbol=False)} 元 ({dimension})"
            hits.append({"kind": "limit", "name": f"daily_limit:{dimension}", "action": "block", "reason": reason})
    features["daily_used"] = used
    return hits, identifiers


# --- the record --------------------------------------------------------------------------------------------

def _subject(event: RiskInput) -> dict:
    """Masked identifiers, and for IPs and devices a short keyed hash too (two addresses can share a mask)."""
    out = {}
    for name in ("ip", "device", "contact", "phone", "id_number", "payment_account", "agent_login"):
        value = getattr(event, name)
        if value:
            out[name] = mask(str(value))
    keys = keys_of(event)
    for name in ("ip", "device"):
        if keys.get(name):
            out[f"{name}_key"] = keys[name][:16]
    if event.agent_id:
        out["agent_id"] = event.agent_id
    return out


def _store(event: RiskInput, decision: Decision, versions: dict, latency_us: int) -> int:
    row = {"event": event.event, "outcome": decision.outcome, "stage": decision.stage, "score": decision.score,
           "hits": json.dumps(decision.hits, ensure_ascii=False), "features": json.dumps(decision.features),
           "subject": json.dumps(_subject(event), ensure_ascii=False), "rule_versions": json.dumps(versions),
           "order_no": event.order_no, "agent_id": event.agent_id, "amount": event.amount or None,
           "latency_us": latency_us, "created_at": utcnow(),
           "model": json.dumps(decision.model, ensure_ascii=False) if decision.model else None}
    if db.session.get_bind().dialect.name == "postgresql":
        # Append-only and independent of the caller's fate: one autocommitted statement on the append-only
        # pool inserts the decision and its chain record together (hash-chained with it, never without): one
        # round trip.
        with append_engine().connect() as conn:
            return run(_STORE_WITH_CHAIN, {
                **row, "chain_kind": chain.RISK_DECISION, "chain_digest": chain.content_digest(chain.risk_content(row)),
                "chain_at": utcnow()}, conn).scalar_one()
    # SQLite (one writer): in the caller's session; a block is committed now (the caller writes nothing and
    # rolls back), so the refused request still leaves its decision.
    decision_id = db.session.execute(insert(RiskDecision).values(**row).returning(RiskDecision.id)).scalar()
    chain.append_risk_decision(decision_id, row)
    if decision.outcome == "block":
        db.session.commit()
    return decision_id


_DECISION_COLUMNS = ("event", "outcome", "stage", "score", "hits", "features", "subject", "rule_versions", "order_no",
                     "agent_id", "amount", "latency_us", "created_at", "model")
_STORE_WITH_CHAIN = text(
    "WITH d AS (INSERT INTO risk_decision (" + ", ".join(_DECISION_COLUMNS) + ") VALUES ("
    + ", ".join(f":{c}" for c in _DECISION_COLUMNS) + ") RETURNING id), "
    "c AS (INSERT INTO chain_record (kind, source_key, content_digest, created_at) "
    "SELECT :chain_kind, CAST(d.id AS text), :chain_digest, :chain_at FROM d) "
    "SELECT id FROM d")


def attach_order(decision_id: int | None, order_no: str) -> None:
    """Name the order a checkout's decision was about, once the order exists (the only update a decision gets)."""
    if decision_id is None:
        return
    from sqlalchemy import update

    db.session.execute(update(RiskDecision).where(RiskDecision.id == decision_id, RiskDecision.order_no.is_(None))
                       .values(order_no=order_no))


def replay(decision_id: int) -> str:
    """The outcome a stored decision gets again from its stored features, list and limit hits and the rule
    versions it ran (so it explains itself even after rules changed)."""
    row = db.session.get(RiskDecision, decision_id)
    hits = json.loads(row.hits)
    kept = [h for h in hits if h["kind"] in ("list", "limit")]
    outcome = strongest(kept)
    if outcome == "block":
        return outcome
    rules = []
    for rule_id, version in json.loads(row.rule_versions).items():
        v = db.session.scalar(select(RiskRuleVersion).where(RiskRuleVersion.rule_id == int(rule_id),
                                                            RiskRuleVersion.version == version))
        if v is not None:
            rules.append((v.rule_id, v.version, v.name, v.events, v.expression, v.action, v.score, v.reason,
                          v.status))
    rule_hits, score, _ = fired_rules(row.event, json.loads(row.features), rules)
    ruled = rules_outcome(rule_hits, score)
    return ruled if rank(ruled) > rank(outcome) else outcome
