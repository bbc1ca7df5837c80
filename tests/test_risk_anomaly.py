"""Anomalies in the agent tree (app/risk/learning/anomaly.py) through the job: a planted recruiter whose downline
never buys and a planted cluster of agents on one device are flagged; an ordinary recruiter whose downline buys and
agents on their own devices are not; the dashboard's query lists them."""
from __future__ import annotations

import json

from sqlalchemy import select

from app.risk import service
from app.risk.models import RiskAgentAnomaly
from tests import payments_helpers as h


def _seen_on(agent, device: str, ip: str) -> None:
    """The agent logs in / registers from a device and an IP (what the entry points record)."""
    service.record("registration", service.RiskInput(event="registration", ip=ip, device=device,
                                                     agent_id=agent.id))


def test_the_job_flags_a_recruiter_whose_downline_never_buys_and_a_device_cluster(app, f):
    from app.clock import utcnow
    from workers import jobs

    product = f.product(face_price=1000, cost=800)
    tier = f.tier()
    farmer = f.agent("farmer", tier_obj=tier)
    empties = [f.agent(f"empty{i}", parent=farmer, tier_obj=tier) for i in range(4)]
    honest = f.agent("honest", tier_obj=tier)
    buyers = [f.agent(f"buyer{i}", parent=honest, tier_obj=tier) for i in range(4)]
    ring = [f.agent(f"ring{i}", tier_obj=tier) for i in range(3)]
    loners = [f.agent(f"loner{i}", tier_obj=tier) for i in range(3)]
    from app.orders.models import Order

    # orders held in review: they count as spend, and move no money (the ledger stays as it is)
    for i, b in enumerate(buyers):
        h.db.session.add(Order(order_no=f"AN{i:08d}", agent_id=b.id, tier_id=b.tier_id, product_id=product.id,
                               supplier_id=product.supplier_id, quantity=1, face_price=1000, unit_price=1000,
                               amount=1000, cost_total=800, service_fee=0, status="reviewing", channel="wallet",
                               created_at=utcnow(), updated_at=utcnow()))
    for i, a in enumerate(ring):
        _seen_on(a, "shared-phone-01", f"198.51.100.{10 + i}")
    for i, a in enumerate(loners):
        _seen_on(a, f"own-device-{i}", f"203.0.113.{20 + i}")
    h.db.session.commit()

    counts = jobs.score_agent_anomalies()
    assert counts["agents"] == 2 + len(empties) + len(buyers) + len(ring) + len(loners)
    rows = {r.agent_id: r for r in h.db.session.scalars(select(RiskAgentAnomaly))}
    assert json.loads(rows[farmer.id].reasons) == ["downline_never_buys"] and rows[farmer.id].flagged
    assert not rows[honest.id].flagged
    assert {json.loads(rows[a.id].features)["device_sharers"] for a in ring} == {2}
    for a in ring:
        assert "linked_cluster" in json.loads(rows[a.id].reasons) and rows[a.id].cluster == f"group-{ring[0].id}"
    for a in loners + buyers + empties:
        assert not rows[a.id].flagged, a.name
    assert counts["downline_never_buys"] == 1 and counts["linked_cluster"] == 3
    # run again: the results are replaced, not added to
    jobs.score_agent_anomalies()
    assert len(h.db.session.scalars(select(RiskAgentAnomaly)).all()) == counts["agents"]
    from dashboards.queries.risk_learning import flagged_agents

    listed = flagged_agents()
    assert {r["agent"] for r in listed} == {"farmer", *(a.name for a in ring)}
    from dashboards import risk as risk_dashboard

    anomalies, models = risk_dashboard.render_learning()
    assert [r["reasons"] for r in anomalies if r["agent"] == "farmer"] == ["下级从不采购"] and models == []
