"""Risk learning on the risk dashboard: the agents the anomaly job flagged, and the fraud model's versions with their
holdout figures beside the rules'. Plain reads of the job's and the trainer's tables."""
from __future__ import annotations

import json

from sqlalchemy import select

from app.agents.models import Agent
from app.extensions import db
from app.risk.models import RiskAgentAnomaly, RiskModel


def flagged_agents(limit: int = 200) -> list[dict]:
    """Flagged agents, most unusual first, with the figures that flagged them."""
    rows = db.session.execute(select(RiskAgentAnomaly, Agent.name).join(Agent, Agent.id == RiskAgentAnomaly.agent_id)
                              .where(RiskAgentAnomaly.flagged.is_(True))
                              .order_by(RiskAgentAnomaly.score.desc(), RiskAgentAnomaly.agent_id).limit(limit))
    out = []
    for row, name in rows:
        values = json.loads(row.features)
        out.append({"agent": name, "agent_id": row.agent_id, "score": round(row.score, 3),
                    "reasons": json.loads(row.reasons), "cluster": row.cluster or "",
                    "recruits": values.get("recruits", 0), "recruits_buying": values.get("recruits_buying", 0),
                    "device_sharers": values.get("device_sharers", 0), "ip_sharers": values.get("ip_sharers", 0),
                    "computed_at": row.computed_at})
    return out


def model_versions(limit: int = 20) -> list[dict]:
    """The newest model versions: status, the model's and the active rules' holdout figures."""
    out = []
    for row in db.session.scalars(select(RiskModel).order_by(RiskModel.version.desc()).limit(limit)):
        m, r = json.loads(row.metrics), json.loads(row.rules_metrics)
        out.append({"version": row.version, "status": row.status, "created_at": row.created_at,
                    "pr_auc": m.get("pr_auc"), "recall": m.get("recall_at_1pct"),
                    "rules_pr_auc": r.get("pr_auc"), "rules_recall": r.get("recall_at_1pct")})
    return out
