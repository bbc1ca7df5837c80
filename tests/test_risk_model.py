"""The fraud model (app/risk/learning): training on the synthetic history is deterministic for a seed; a model that
does not beat the active rules is refused promotion (CLI: message, non-zero exit) and stays a shadow; one that beats
them is promoted; a shadow model's score is recorded and decides nothing; the active model's score reaches a rule as
`model_score`; its top contributing features are stored with the decision and shown in the review queue; labels come
from review decisions once per subject."""
from __future__ import annotations

import json
import random

from sqlalchemy import select

from app.clock import utcnow
from app.orders.models import Order
from app.risk import service
from app.risk.default_rules import install_defaults, version_of
from app.risk.learning import label_store, model, synthetic
from app.risk.models import RiskDecision, RiskLabel, RiskModel, RiskRule
from tests import payments_helpers as h
from tests.test_risk_core import _checkout
from tests.test_risk_screens import login


def _cli(app, *args):
    result = app.test_cli_runner().invoke(args=["kameng", "risk", "model", *args])
    return result.exit_code, result.output


def _history(n: int = 400, every: int = 10, fraud_values: dict | None = None, seed: int = 1) -> None:
    """`n` storefront checkouts through evaluate, every `every`-th a fraud with `fraud_values`, each labelled."""
    rng = random.Random(seed)
    for i in range(n):
        fraud = i % every == 0
        values = {"is_guest": True, "quantity": rng.choice((1, 1, 2, 3))}
        amount = rng.choice((1000, 3000, 5000, 10000))
        if fraud:
            values.update(fraud_values or {})
            amount = (fraud_values or {}).get("amount", amount)
        d = service.evaluate(service.RiskInput(event="checkout", amount=amount, values=values,
                                               enforce_limits=False))
        label_store.record(f"decision:{d.id}", int(fraud), "synthetic", utcnow(), d.id, None, utcnow())
    h.db.session.commit()


def _set_rule(name: str, status: str) -> None:
    """As the rule screen saves it: a new version, kept for replay."""
    rule = h.db.session.scalar(select(RiskRule).where(RiskRule.name == name))
    rule.status, rule.version = status, rule.version + 1
    h.db.session.add(version_of(rule))
    h.db.session.commit()


def _quantity_model(app) -> int:
    """A version trained where fraud is a quantity of 7, which no active rule looks at: it beats the rules."""
    install_defaults()
    _history(fraud_values={"quantity": 7})
    code, out = _cli(app, "train", "--seed", "3")
    assert code == 0, out
    assert "v1 beats the active rules" in out, out
    return 1


def test_training_on_the_synthetic_history_is_deterministic_for_a_seed(app):
    loaded = synthetic.load_history(events=500, seed=4, attack_min=12, with_lists=False)
    assert loaded["labels"] == loaded["decisions"] > 400
    assert {r.label for r in loaded["results"]} > {"legit", "card_testing"}
    code, out = _cli(app, "train", "--seed", "11")
    assert code == 0, out
    assert "PR-AUC" in out and "active rules" in out and "recall@1%" in out
    code, out2 = _cli(app, "train", "--seed", "11")
    assert code == 0, out2
    first, second = h.db.session.scalars(select(RiskModel).order_by(RiskModel.version)).all()
    assert (first.version, second.version) == (1, 2) and first.status == second.status == "shadow"
    assert first.booster == second.booster and first.digest == second.digest
    assert json.loads(first.metrics) == json.loads(second.metrics)
    assert json.loads(first.rules_metrics) == json.loads(second.rules_metrics)
    metrics = json.loads(first.metrics)
    assert 0 <= metrics["pr_auc"] <= 1 and 0 <= metrics["recall_at_1pct"] <= 1 and metrics["positives"] > 0
    assert out.splitlines()[1:3] == out2.splitlines()[1:3]  # the printed figures too
    code, listed = _cli(app, "list")
    assert code == 0 and [json.loads(line)["version"] for line in listed.splitlines()] == [2, 1]


def test_a_model_that_does_not_beat_the_rules_is_refused_and_stays_a_shadow(app):
    # an active rule that catches every fraud exactly: nothing can rank better than it
    h.db.session.add(RiskRule(name="t_exact_amount", events="*", expression="amount == 4999", action="block",
                              score=0, reason="exact", status="active", version=1))
    h.db.session.commit()
    _history(fraud_values={"amount": 4999})
    code, out = _cli(app, "train")
    assert code == 0 and "does not beat" in out, out
    code, out = _cli(app, "promote", "1")
    assert code != 0
    assert "未优于生效规则" in out and "1% 审核率的召回率" in out
    assert h.db.session.scalar(select(RiskModel.status).where(RiskModel.version == 1)) == "shadow"
    code, out = _cli(app, "promote", "9")
    assert code != 0 and "模型版本不存在：9" in out


def test_too_little_history_is_a_message_not_a_traceback(app):
    code, out = _cli(app, "train")
    assert code == 2 and "标注数据不足" in out


def test_shadow_scores_are_recorded_and_decide_nothing(app):
    _quantity_model(app)
    _set_rule("model_score_high", "active")  # a rule over model_score is on, but the model is only a shadow
    d = service.evaluate(service.RiskInput(event="checkout", amount=7000, values={"is_guest": True, "quantity": 7},
                                           enforce_limits=False))
    assert d.outcome == "allow" and d.features["model_score"] == model.MISSING_SCORE
    row = h.db.session.get(RiskDecision, d.id)
    stored = json.loads(row.model)
    assert stored["active"] is None
    [shadow] = stored["shadow"]
    assert shadow["version"] == 1 and shadow["score"] > 0.9
    assert shadow["top"][0]["feature"] == "quantity" and shadow["top"][0]["contribution"] > 0
    assert service.replay(d.id) == "allow"


def test_the_active_model_score_reaches_a_rule_and_its_reasons_show_in_the_review_queue(app, f, client):
    _quantity_model(app)
    code, out = _cli(app, "promote", "1")
    assert code == 0, out
    assert json.loads(out)["status"] == "active"
    _set_rule("model_score_high", "active")
    # a plain decision: the score is low, the rule over it evaluates and does not fire
    calm = service.evaluate(service.RiskInput(event="checkout", amount=1000, values={"is_guest": True, "quantity": 1},
                                              enforce_limits=False))
    assert calm.outcome == "allow" and 0 <= calm.features["model_score"] < 0.5
    # through the storefront: seven cards at once scores high, the rule holds it for review
    h.setup_sandbox()
    product = f.product(face_price=1000, cost=800, secrets=10)
    r = _checkout(client, product, quantity=7, device="dev-model")
    assert r.status_code == 201, r.get_json()
    number = r.get_json()["order_no"]
    order = h.db.session.scalar(select(Order).where(Order.order_no == number))
    decision = h.db.session.get(RiskDecision, order.risk_decision_id)
    features = json.loads(decision.features)
    assert decision.outcome == "review" and features["model_score"] > 0.9
    assert [hit["name"] for hit in json.loads(decision.hits)] == ["model_score_high"]
    assert json.loads(decision.model)["active"]["top"][0]["feature"] == "quantity"
    assert service.replay(decision.id) == "review"
    h.notify(client, "sandbox", order, "SBX-" + number)
    assert h.order_state(number) == "reviewing"
    support, _ = login(app, f, "Support")
    page = support.get("/risk-review/").get_data(as_text=True)
    assert number in page and "model-reason" in page and "v1" in page
    assert 'class="model-feature">quantity<' in page
    detail = support.get(f"/risk-review/{number}").get_data(as_text=True)
    assert 'class="model-feature">quantity<' in detail
    # the reviewer's decision becomes a label, once per order whatever happens again
    assert support.post(f"/risk-review/{number}/approve").status_code == 302
    [label] = h.db.session.scalars(select(RiskLabel).where(RiskLabel.subject == f"order:{number}"))
    assert (label.label, label.source, label.decision_id) == (0, "review_approve", decision.id)
    label_store.label_order(order, label_store.LEGIT, "review_approve")
    label_store.label_order(order, label_store.FRAUD, "refund_fraud")  # fraud found later replaces it
    label_store.label_order(order, label_store.LEGIT, "review_approve")  # and is not undone
    h.db.session.commit()
    [label] = h.db.session.scalars(select(RiskLabel).where(RiskLabel.subject == f"order:{number}"))
    assert (label.label, label.source) == (1, "refund_fraud")


def test_model_train_works_on_a_fresh_demo(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["kameng", "demo", "--password", "demo-pass-1", "--sandbox-key", "sandbox-key-1",
                                 "--risk-events", "500"])
    assert result.exit_code == 0, result.output
    assert "Risk history: " in result.output and "labelled decisions" in result.output
    code, out = _cli(app, "train")
    assert code == 0, out
    assert out.startswith("model v1 (shadow, seed 7)")
    again = runner.invoke(args=["kameng", "demo", "--password", "demo-pass-1", "--risk-events", "500"])
    assert again.exit_code == 0 and "Risk history: already loaded" in again.output
