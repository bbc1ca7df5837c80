"""The fraud model (风控模型): LightGBM over the very features the rules read, trained on labelled decisions, versioned,
and promoted only when it beats the active rules on the same holdout.

Training (`train`, the weekly job and `flask kameng risk model train`): the labelled decisions whose features were
computed (a decision refused by a list or a limit before the counters were read teaches nothing) in time order; the
earlier 75% train, the later 25% are the holdout (a time split: the model is judged on what came after what it
learnt from). Figures on the holdout: PR-AUC (average precision) and recall at a 1% review rate (the share of the
frauds among the 1% highest-scored decisions; ties split evenly), for the model and for the ACTIVE RULES re-run on
the same stored features (their score: block > review > allow, then points). A new version starts in shadow.

"Beats the rules" (promotion): recall at the 1% review rate strictly higher AND PR-AUC not lower than the active
rules' on the version's holdout, with the rules as they are active at the moment of promotion (re-checked then).

Scoring (`score`, from app.risk.service.evaluate): the active model's probability becomes the feature
`model_score` (0..1), so rules decide what a score means; with no active model it is MISSING_SCORE (0.0: "no
evidence", a rule like `model_score > 0.9` then never fires and every rule still evaluates). Shadow models are
scored and recorded beside it and decide nothing. Each score keeps its top contributing features (LightGBM's
pred_contrib). Boosters are parsed once per process per version (by digest); which versions are live is a fact of
app/cache.py (risk_model carries the cache trigger), so a promotion reaches every process at its next unit of work.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime

from flask_babel import gettext as _
from sqlalchemy import func, select

from app import cache, states
from app.audit import service as audit
from app.clock import utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.risk.features import RULE_FEATURES
from app.risk.learning import label_store
from app.risk.models import EVENTS, MODEL_STATES, RiskDecision, RiskLabel, RiskModel, RiskRule
from app.risk.rules import fired_rules, rules_outcome, strongest

MISSING_SCORE = 0.0
REVIEW_RATE = 0.01
HOLDOUT_SHARE = 0.25
MIN_EXAMPLES = 50
ROUNDS = 120
TOP_REASONS = 3
MODEL_FEATURES: tuple[str, ...] = tuple(n for n in RULE_FEATURES if n not in ("event", "model_score")) + ("event_code",)
EVENT_CODES = {name: i for i, name in enumerate(EVENTS)}


def params_for(seed: int) -> dict:
    """One thread and LightGBM's deterministic mode: the same labelled history and seed give the same booster."""
    return {"objective": "binary", "learning_rate": 0.08, "num_leaves": 15, "min_data_in_leaf": 10,
            "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
            "max_bin": 63, "num_threads": 1, "deterministic": True, "force_row_wise": True, "seed": seed,
            "verbosity": -1}


class ModelNotBetter(Conflict):
    code = "model_not_better"


def vector(features: dict, names: tuple[str, ...] = MODEL_FEATURES) -> list[float]:
    """A decision's features as the model's row (booleans 0/1, the event as its code, anything missing its
    default)."""
    row = []
    for name in names:
        if name == "event_code":
            row.append(float(EVENT_CODES.get(features.get("event") or "", len(EVENT_CODES))))
            continue
        value = features.get(name, RULE_FEATURES.get(name, 0))
        try:
            row.append(float(value))
        except (TypeError, ValueError):
            row.append(0.0)
    return row


# --- scoring (the request path) ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Live:
    id: int
    version: int
    status: str
    digest: str
    features: tuple[str, ...]


_BOOSTERS: dict[str, object] = {}  # booster digest -> lightgbm.Booster (parsed once per process)
_BOOSTERS_LOCK = threading.Lock()


def _live_models() -> tuple[_Live, ...]:
    return cache.fetch("risk_models", None, lambda: tuple(
        _Live(row.id, row.version, row.status, row.digest, tuple(json.loads(row.features)))
        for row in db.session.execute(select(RiskModel.id, RiskModel.version, RiskModel.status, RiskModel.digest,
                                             RiskModel.features)
                                      .where(RiskModel.status.in_(("active", "shadow"))).order_by(RiskModel.version))))


def load_live_boosters() -> int:
    """Load the live models' boosters now (a fresh worker, before its first decision); returns how many."""
    for live in _live_models():
        _booster(live)
    return len(_live_models())


def _booster(live: _Live):
    booster = _BOOSTERS.get(live.digest)
    if booster is None:
        import lightgbm

        text = db.session.scalar(select(RiskModel.booster).where(RiskModel.id == live.id))
        booster = lightgbm.Booster(model_str=text)
        with _BOOSTERS_LOCK:
            if len(_BOOSTERS) > 16:  # retired versions leave theirs behind: start over rather than grow
                _BOOSTERS.clear()
            _BOOSTERS[live.digest] = booster
    return booster


def _scored(live: _Live, features: dict) -> dict:
    import numpy as np

    row = np.asarray([vector(features, live.features)], dtype=np.float64)
    contributions = _booster(live).predict(row, num_threads=1, pred_contrib=True)[0]
    raw = float(contributions.sum())  # the last one is the bias: the sum is the raw (log-odds) score
    probability = 1.0 / (1.0 + math.exp(-raw))
    pushes = sorted(((float(c), name) for name, c in zip(live.features, contributions[:-1], strict=True) if c > 0),
                    reverse=True)[:TOP_REASONS]
    top = [{"feature": name, "value": features.get(name, features.get("event") if name == "event_code" else None),
            "contribution": round(c, 4)} for c, name in pushes]
    return {"version": live.version, "score": round(probability, 6), "top": top}


def score(features: dict) -> dict | None:
    """The live models' scores of one decision's features: {"active": {...} | None, "shadow": [...]}, or None when
    no model is live."""
    lives = _live_models()
    if not lives:
        return None
    out: dict = {"active": None, "shadow": []}
    for live in lives:
        scored = _scored(live, features)
        if live.status == "active":
            out["active"] = scored
        else:
            out["shadow"].append(scored)
    return out


# --- training ----------------------------------------------------------------------------------------------

@dataclass
class Example:
    decision_id: int
    decided_at: datetime
    event: str
    features: dict
    hits: list
    label: int


def examples(ids: list[int] | None = None) -> list[Example]:
    """Labelled decisions with computed features, oldest first (or those of `ids`)."""
    query = (select(RiskLabel.label, RiskDecision.id, RiskDecision.created_at, RiskDecision.event,
                    RiskDecision.features, RiskDecision.hits, RiskDecision.stage, RiskDecision.outcome)
             .join(RiskDecision, RiskDecision.id == RiskLabel.decision_id)
             .order_by(RiskDecision.created_at, RiskDecision.id))
    if ids is not None:
        query = query.where(RiskDecision.id.in_(ids))
    out = []
    for label, decision_id, created_at, event, features, hits, stage, outcome in db.session.execute(query):
        if outcome == "block" and stage in ("list", "limit"):
            continue  # refused before the counters were read: its features say nothing
        out.append(Example(decision_id, created_at, event, json.loads(features), json.loads(hits), int(label)))
    return out


def _active_rules() -> list[tuple]:
    return [tuple(r) for r in db.session.execute(
        select(RiskRule.id, RiskRule.version, RiskRule.name, RiskRule.events, RiskRule.expression, RiskRule.action,
               RiskRule.score, RiskRule.reason, RiskRule.status)
        .where(RiskRule.status == "active").order_by(RiskRule.id))]


def rules_scores(items: list[Example]) -> list[float]:
    """What the active rules make of each stored decision now: block 2, review 1, allow 0, plus points / 1000."""
    rules = _active_rules()
    rank = {"allow": 0, "review": 1, "block": 2}
    out = []
    for ex in items:
        kept = [h for h in ex.hits if h.get("kind") in ("list", "limit")]
        outcome = strongest(kept)
        points = 0
        if rules:
            hits, points, _versions = fired_rules(ex.event, {**RULE_FEATURES, **ex.features}, rules)
            ruled = rules_outcome(hits, points)
            outcome = ruled if rank[ruled] > rank[outcome] else outcome
        out.append(rank[outcome] + max(0, min(points, 999)) / 1000)
    return out


def recall_at_rate(scores: list[float], labels: list[int], rate: float = REVIEW_RATE) -> float:
    """Share of the positives among the top `rate` of the scores; a tie group straddling the cut counts pro rata
    (what a random order among equals would give on average), so coarse rule scores are not flattered."""
    positives = sum(labels)
    if not positives or not scores:
        return 0.0
    budget = rate * len(scores)
    groups: dict[float, list[int]] = {}
    for s, y in zip(scores, labels, strict=True):
        groups.setdefault(s, []).append(y)
    taken, caught = 0.0, 0.0
    for s in sorted(groups, reverse=True):
        members = groups[s]
        room = budget - taken
        if room <= 0:
            break
        share = min(1.0, room / len(members))
        caught += share * sum(members)
        taken += share * len(members)
    return caught / positives


def figures(scores: list[float], labels: list[int]) -> dict:
    from sklearn.metrics import average_precision_score

    positives = int(sum(labels))
    pr_auc = float(average_precision_score(labels, scores)) if 0 < positives < len(labels) else 0.0
    return {"pr_auc": round(pr_auc, 4), "recall_at_1pct": round(recall_at_rate(scores, labels), 4),
            "n": len(labels), "positives": positives}


def _rules_figures(items: list[Example], labels: list[int]) -> dict:
    scores = rules_scores(items)
    out = figures(scores, labels)
    flagged = [s >= 1 for s in scores]
    positives = sum(labels) or 1
    out["flagged_share"] = round(sum(flagged) / (len(flagged) or 1), 4)
    out["recall_flagged"] = round(sum(1 for f, y in zip(flagged, labels, strict=True) if f and y) / positives, 4)
    return out


def beats(model: dict, rules: dict) -> bool:
    """Higher recall at the 1% review rate, and PR-AUC not lower."""
    return model["recall_at_1pct"] > rules["recall_at_1pct"] and model["pr_auc"] >= rules["pr_auc"]


def train(seed: int = 7, rounds: int = ROUNDS, collect: bool = True) -> RiskModel:
    """Train a new version on the labelled history (shadow); its figures and the active rules' on its holdout are
    stored with it. Commits."""
    import lightgbm
    import numpy as np

    if collect:
        label_store.collect()
        db.session.flush()
    items = examples()
    cut = int(len(items) * (1 - HOLDOUT_SHARE))
    learn, hold = items[:cut], items[cut:]
    y_learn, y_hold = [e.label for e in learn], [e.label for e in hold]
    if len(items) < MIN_EXAMPLES or len(set(y_learn)) < 2 or sum(y_hold) == 0:
        raise ValidationError(_("标注数据不足，无法训练：%(decisions)s 个决策，其中欺诈 %(fraud)s 个；需要至少 "
                                "%(need)s 个，且前段既有欺诈也有正常、后段有欺诈", decisions=len(items),
                                fraud=sum(e.label for e in items), need=MIN_EXAMPLES))
    params = params_for(seed)
    x_learn = np.asarray([vector(e.features) for e in learn], dtype=np.float64)
    data = lightgbm.Dataset(x_learn, np.asarray(y_learn), feature_name=list(MODEL_FEATURES),
                            categorical_feature=["event_code"], params={"max_bin": params["max_bin"], "verbosity": -1})
    booster = lightgbm.train(params, data, num_boost_round=rounds)
    text = booster.model_to_string()
    x_hold = np.asarray([vector(e.features) for e in hold], dtype=np.float64)
    model_scores = [float(s) for s in booster.predict(x_hold, num_threads=1)]
    rules = _rules_figures(hold, y_hold)
    metrics = figures(model_scores, y_hold)
    # the model's recall at the rules' own operating point (the share they send to review or block)
    metrics["recall_at_rules_share"] = round(recall_at_rate(model_scores, y_hold, rules["flagged_share"]), 4)
    # the score at the 1% review rate on the holdout: where a `model_score >= x -> review` rule would sit
    ranked = sorted(model_scores, reverse=True)
    metrics["threshold_1pct"] = round(ranked[max(0, math.ceil(REVIEW_RATE * len(ranked)) - 1)], 6)
    metrics.update(train_n=len(learn), train_positives=sum(y_learn), holdout_from=hold[0].decided_at.isoformat(),
                   holdout_to=hold[-1].decided_at.isoformat(), rounds=rounds)
    version = (db.session.scalar(select(func.max(RiskModel.version))) or 0) + 1
    row = RiskModel(version=version, status="shadow", seed=seed, features=json.dumps(list(MODEL_FEATURES)),
                    metrics=json.dumps(metrics), rules_metrics=json.dumps(rules),
                    holdout=json.dumps([[e.decision_id, e.label] for e in hold]),
                    params=json.dumps({**params, "rounds": rounds}), booster=text,
                    digest=hashlib.sha256(text.encode()).hexdigest(), created_at=utcnow())
    db.session.add(row)
    db.session.flush()
    audit.record("risk.model.train", "risk_model", version, None,
                 {"version": version, "seed": seed, "metrics": metrics, "rules": rules})
    db.session.commit()
    return row


def recheck(row: RiskModel) -> dict:
    """The active rules' figures now, on the version's holdout with the labels it was judged on."""
    pairs = json.loads(row.holdout)
    labels = dict((int(d), int(y)) for d, y in pairs)
    items = {e.decision_id: e for e in examples(list(labels))}
    hold = [items[d] for d, _label in pairs if d in items]
    for e in hold:
        e.label = labels[e.decision_id]
    return _rules_figures(hold, [e.label for e in hold])


def promote(version: int, actor_id: int | None = None) -> RiskModel:
    """Make a version the active model, if it beats the active rules on its holdout (re-checked now); the one
    active before is retired. Refused (ModelNotBetter, it stays as it is) otherwise. Commits."""
    try:
        row = db.session.scalar(select(RiskModel).where(RiskModel.version == version).with_for_update())
        if row is None:
            raise NotFound(_("模型版本不存在：%(version)s", version=version))
        if row.status == "active":
            raise Conflict(_("模型 v%(version)s 已是生效版本", version=version))
        model, rules = json.loads(row.metrics), recheck(row)
        if not beats(model, rules):
            raise ModelNotBetter(_(
                "模型 v%(version)s 未优于生效规则，保持影子状态：留出集上 1%% 审核率的召回率 %(recall)s（规则 "
                "%(rules_recall)s），PR-AUC %(pr_auc)s（规则 %(rules_pr_auc)s）；晋升须召回率更高且 PR-AUC 不更低",
                version=version, recall=format(model["recall_at_1pct"], ".4f"),
                rules_recall=format(rules["recall_at_1pct"], ".4f"), pr_auc=format(model["pr_auc"], ".4f"),
                rules_pr_auc=format(rules["pr_auc"], ".4f")))
        now = utcnow()
        states.move_all(MODEL_STATES, "active", "retired", retired_at=now)
        old = row.status
        states.move(MODEL_STATES, row.id, old, "active", promoted_at=now, promoted_by_id=actor_id,
                    rules_metrics=json.dumps(rules))
        audit.record("risk.model.promote", "risk_model", version, {"status": old},
                     {"status": "active", "model": model, "rules": rules}, actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return row


def versions() -> list[RiskModel]:
    return list(db.session.scalars(select(RiskModel).order_by(RiskModel.version.desc())))


def summary(row: RiskModel) -> dict:
    """A version as the CLI prints it (no booster)."""
    return {"version": row.version, "status": row.status, "seed": row.seed,
            "created_at": row.created_at.isoformat(timespec="seconds"), "metrics": json.loads(row.metrics),
            "rules_metrics": json.loads(row.rules_metrics), "features": len(json.loads(row.features))}
