"""Schemathesis against the served OpenAPI document, over real HTTP, with every generated request signed.

For each operation, positive and negative data: no 5xx, status codes / content types / bodies as the spec says,
and no request moves money except the purchases it made: the wallets' total falls by exactly the amounts of the
orders created during the run (and the ledger check of the `app` fixture passes afterwards).
"""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import func, select

from app.extensions import db
from app.openapi.signing import signed_headers
from app.orders.models import Order
from tests.openapi_helpers import new_key, served, wallet_total

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 40
POST_EXAMPLES = 100


class SignedAuth(requests.auth.AuthBase):
    """Signs the request exactly as it goes out: method, path without query, raw body bytes."""

    def __init__(self, app_key: str, secret: str):
        self.app_key, self.secret = app_key, secret

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        path = urlsplit(r.path_url).path
        r.headers.update(signed_headers(self.app_key, self.secret, r.method, path, body))
        return r


@pytest.fixture
def shop(f):
    """Product 1: a card with plenty of secrets; 2: a direct top-up; 3: a card with no stock. Ids are small on
    purpose: generated integers hit them often, so positive runs really buy."""
    tier = f.tier(discount_bp=9000)
    agent = f.agent(balance=100_000_000, tier_obj=tier)
    card = f.product(face_price=1_000, cost=800, secrets=600, max_per_order=5)
    direct = f.product(kind="direct", face_price=3_000, cost=2_900)
    empty = f.product(face_price=500, cost=400)
    assert (card.id, direct.id, empty.id) == (1, 2, 3)
    key, secret = new_key(agent)
    return {"agent": agent, "card": card, "key": key, "secret": secret, "app_key": key.app_key}


def test_api_conforms_to_its_openapi_document(app, f, shop):
    before = wallet_total()
    created: dict[str, int] = {}  # order_no -> amount, from 201 answers
    statuses: dict[str, set[int]] = {}
    auth = SignedAuth(shop["app_key"], shop["secret"])

    with served(app) as base:
        # A purchase made up front, so the GET operations have a real order to find.
        seed = requests.post(base + "/open/v1/orders", auth=auth, timeout=30,
                             json={"out_trade_no": "seed-1", "product_id": 1, "quantity": 2})
        assert seed.status_code == 201, seed.text
        created[seed.json()["order_no"]] = seed.json()["amount"]
        seed_no = seed.json()["order_no"]

        schema = schemathesis.openapi.from_url(base + "/open/v1/openapi.json")
        session = requests.Session()
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} == {
            "GET /open/v1/products", "GET /open/v1/balance", "POST /open/v1/orders", "GET /open/v1/orders",
            "GET /open/v1/orders/{order_no}", "GET /open/v1/orders/{order_no}/secrets",
            "GET /open/v1/risk/feed"}  # an agent's key: 403 forbidden_scope (tests/test_risk_feed.py pulls it)

        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                examples = _examples(operation, seed_no) if mode is GenerationMode.POSITIVE else []
                _run(operation, mode, examples, base, session, auth, created, statuses)

    # Every answer was one the spec names, and the interesting ones all happened.
    seen = statuses["POST /open/v1/orders"]
    assert {201, 200, 400, 409}.issubset(seen), seen
    assert 200 in statuses["GET /open/v1/orders/{order_no}"] and 404 in statuses["GET /open/v1/orders/{order_no}"]
    assert {200, 400, 404}.issubset(statuses["GET /open/v1/orders/{order_no}/secrets"])

    db.session.rollback()
    orders = db.session.execute(select(Order.order_no, Order.amount)).all()
    assert {o.order_no: o.amount for o in orders} == created  # no order the run did not see created
    assert db.session.scalar(select(func.coalesce(func.sum(Order.amount), 0))) == sum(created.values())
    assert wallet_total() == before - sum(created.values())
    assert len(created) > 1


def _examples(operation, seed_no: str) -> list:
    """Explicit cases run before the generated ones: a purchase, its replay, a conflicting reuse, lookups."""
    label = operation.label
    if label == "POST /open/v1/orders":
        buy = {"out_trade_no": "example-1", "product_id": 1, "quantity": 1}
        return [operation.Case(body=buy, media_type="application/json"),
                operation.Case(body=buy, media_type="application/json"),
                operation.Case(body={**buy, "quantity": 2}, media_type="application/json"),
                operation.Case(body={**buy, "out_trade_no": "example-2", "product_id": 2, "account": "138"},
                               media_type="application/json"),
                operation.Case(body={**buy, "out_trade_no": "example-3", "product_id": 3},
                               media_type="application/json")]
    if label == "GET /open/v1/orders/{order_no}":
        return [operation.Case(path_parameters={"order_no": seed_no}),
                operation.Case(path_parameters={"order_no": "000000000000000000"})]
    if label == "GET /open/v1/orders/{order_no}/secrets":
        return [operation.Case(path_parameters={"order_no": seed_no}),
                operation.Case(path_parameters={"order_no": seed_no}, query={"format": "csv"}),
                operation.Case(path_parameters={"order_no": seed_no}, query={"format": "xlsx"}),
                operation.Case(path_parameters={"order_no": "000000000000000000"}, query={"format": "txt"})]
    if label == "GET /open/v1/orders":
        return [operation.Case(query={"out_trade_no": "seed-1"}), operation.Case(query={"out_trade_no": "none"})]
    return []


def _run(operation, mode, examples, base, session, auth, created, statuses) -> None:
    seen = statuses.setdefault(operation.label, set())

    def check(case):
        response = case.call_and_validate(base_url=base, session=session, auth=auth, checks=CHECKS, timeout=30)
        seen.add(response.status_code)
        if response.status_code == 201:
            data = response.json()
            assert data["order_no"] not in created
            created[data["order_no"]] = data["amount"]

    test = given(case=operation.as_strategy(generation_mode=mode))(check)
    for case in reversed(examples):
        test = example(case=case)(test)
    limit = POST_EXAMPLES if operation.method.upper() == "POST" else MAX_EXAMPLES
    test = settings(max_examples=limit, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))(test)
    test()
