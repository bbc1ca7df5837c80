"""The risk bench's generator (bench/risk.py) at a small N through evaluate, on the PostgreSQL counters and on the
Redis ones: every attack is caught (reviewed or blocked) at the bench's target rate, legitimate traffic is left
alone, both counter paths decide the same, and every evaluate call left its decision. Behaviour, not speed."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.risk.models import RiskDecision, RiskRule
from tests import payments_helpers as h
from tests.test_risk_limits import _bench


def _run(app, redis_url: str | None):
    bench = _bench()
    before = app.config.get("REDIS_URL")
    app.config["REDIS_URL"] = redis_url
    try:
        day = bench.generate(1500, seed=5)
        data = bench.build_data(day, 50)
        out = bench.run(day, data)
    finally:
        app.config["REDIS_URL"] = before
    return bench, day, data, out


@pytest.mark.parametrize("counters", ["postgresql", "redis"])
def test_the_bench_day_meets_its_targets(app, request, counters):
    redis_url = request.getfixturevalue("redis_url") if counters == "redis" else None
    bench, day, data, out = _run(app, redis_url)
    assert data["active_rules"] == 50
    h.db.session.rollback()
    assert h.db.session.scalar(select(func.count()).select_from(RiskRule).where(RiskRule.status == "active")) == 50
    stats = bench.figures(out["results"])
    assert set(stats) == {"legit", *bench.ATTACKS}
    for attack in bench.ATTACKS:
        assert stats[attack]["events"] >= 60, (attack, stats[attack])
        assert stats[attack]["flagged"] >= 0.95, (attack, stats[attack])
    legit = stats["legit"]
    assert legit["events"] >= 1000
    assert legit["review"] <= legit["events"] * 0.01, legit
    assert legit["block"] <= legit["events"] * 0.002, legit
    # the card testers are blocked (not only reviewed) once three payment accounts came from their device
    assert stats["card_testing"]["block"] > stats["card_testing"]["events"] / 2
    # every evaluate call is on the record
    assert h.db.session.scalar(select(func.count()).select_from(RiskDecision)) == len(out["latencies"])
    outcomes = [r.outcome for r in out["results"]]
    request.config.cache_outcomes = getattr(request.config, "cache_outcomes", {})
    request.config.cache_outcomes[counters] = outcomes
    if len(request.config.cache_outcomes) == 2:  # both paths ran in this session: the same decisions
        assert request.config.cache_outcomes["postgresql"] == request.config.cache_outcomes["redis"]
