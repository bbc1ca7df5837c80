"""Risk control's scored rules (风控规则): compiled, matched against an event's features, and their outcome. Below
the decision (app.risk.service) and the fraud model's evaluation (app.risk.learning.model), which both run them."""
from __future__ import annotations

from flask import current_app
from sqlalchemy import select

from app import cache
from app.extensions import db
from app.risk.features import RULE_FEATURES
from app.risk.models import RiskRule

_COMPILED: dict[str, object] = {}  # expression text -> compiled rule (ids restart; texts say what they do)


def compile_rule(expression: str):
    """A rule-engine Rule over the features; raises rule_engine.EngineError (show `.message`) when it is wrong."""
    import rule_engine

    types = {}
    for name, default in RULE_FEATURES.items():
        if isinstance(default, bool):
            types[name] = rule_engine.DataType.BOOLEAN
        elif isinstance(default, str):
            types[name] = rule_engine.DataType.STRING
        else:
            types[name] = rule_engine.DataType.FLOAT
    context = rule_engine.Context(type_resolver=rule_engine.type_resolver_from_dict(types))
    return rule_engine.Rule(expression, context=context)


def _compiled(expression: str):
    if expression not in _COMPILED:
        if len(_COMPILED) > 5000:  # edited rules leave old texts behind: start over rather than grow
            _COMPILED.clear()
        _COMPILED[expression] = compile_rule(expression)
    return _COMPILED[expression]


def _live_rules() -> tuple[tuple, ...]:
    """(id, version, name, events, expression, action, score, reason, status) of active and shadow rules (cached
    until a rule changes)."""
    return cache.fetch("risk_rules", None, lambda: tuple(tuple(r) for r in db.session.execute(
        select(RiskRule.id, RiskRule.version, RiskRule.name, RiskRule.events, RiskRule.expression,
               RiskRule.action, RiskRule.score, RiskRule.reason, RiskRule.status)
        .where(RiskRule.status.in_(("active", "shadow"))).order_by(RiskRule.id))))


def compile_live_rules() -> int:
    """Compile the active and shadow rules now (a fresh worker, before its first decision); returns how many."""
    import rule_engine

    count = 0
    for rule in _live_rules():
        try:
            _compiled(rule[4])
            count += 1
        except rule_engine.EngineError:
            pass  # fired_rules passes it over too
    return count


def _applies(events: str, event: str) -> bool:
    return events.strip() in ("", "*") or event in {e.strip() for e in events.split(",")}


def fired_rules(event: str, features: dict, rules: list[tuple] | None = None) -> tuple[list[dict], int, dict]:
    import rule_engine

    hits, score, versions = [], 0, {}
    for rule_id, version, name, events, expression, action, points, reason, status in (rules or _live_rules()):
        if not _applies(events, event):
            continue
        versions[str(rule_id)] = version
        try:
            fired = _compiled(expression).matches(features)
        except rule_engine.EngineError:
            continue  # a rule that cannot run on these values does not fire
        if not fired:
            continue
        shadow = status == "shadow"
        hits.append({"kind": "rule", "name": name, "rule_id": rule_id, "version": version, "action": action,
                     "score": points, "reason": reason, "shadow": shadow})
        if not shadow and action == "score":
            score += points
    return hits, score, versions


def rules_outcome(hits: list[dict], score: int) -> str:
    cfg = current_app.config
    live = [h for h in hits if not h.get("shadow")]
    outcome = "allow"
    for h in live:
        if h["action"] in ("review", "block") and rank(h["action"]) > rank(outcome):
            outcome = h["action"]
    if score >= int(cfg["RISK_BLOCK_SCORE"]):
        outcome = "block"
    elif score >= int(cfg["RISK_REVIEW_SCORE"]) and outcome == "allow":
        outcome = "review"
    return outcome


def rank(outcome: str) -> int:
    return {"allow": 0, "review": 1, "block": 2}[outcome]


def strongest(hits: list[dict]) -> str:
    outcome = "allow"
    for h in hits:
        if rank(h["action"]) > rank(outcome):
            outcome = h["action"]
    return outcome
