import pytest

from app.orders import service as orders


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_wallet_purchase_delivers_secrets(app, f, client):
    a = f.agent(balance=100_000, tier_obj=f.tier(discount_bp=9000))
    p = f.product(face_price=10000, cost=8000, secrets=3)
    order = orders.place_wallet_order(a.id, p.id, 2)
    assert order.status == "delivered" and order.amount == 18000
    assert f.wallet(a) == 82000
    f.login(client, a.name)
    r = client.get(f"/portal/orders/{order.order_no}")
    assert r.status_code == 200 and r.text.count('class="card-secret"') == 2
