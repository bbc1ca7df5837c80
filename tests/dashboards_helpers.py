"""Helpers for dashboard tests (GMV, products, agent growth, user profiles, money flows).

- `login_as(app, f, role=...)` / `agent_client(app, f, agent)`: a test client logged in.
- `call_callback(client, slug, output, values)`: calls a Dash callback end to end, as the browser does, by POSTing
  to /dashboards/<slug>/_dash-update-component with the payload built from the app's own /_dash-dependencies.
  `values` maps "component-id.property" to the value the browser would send (missing ones are sent as None).
  Returns the Flask response; `outputs(response)` gives {"id.property": value}.
- `sales_row(...)`, `add_rollups(...)`: insert rollup_sales_daily rows directly (for pure query tests).
- `texts(component)`: every string inside a Dash component tree as serialized JSON (to look for labels/figures).
"""
from __future__ import annotations

import json
from datetime import date
from typing import Any

from app.analytics.models import PLATFORM_SCOPE, SalesDaily
from app.extensions import db


def login_as(app, f, role: str = "Manager", username: str | None = None):
    """A new user with `role`, and a client logged in as it: (client, user)."""
    user = f.user(username or f.unique(role.lower()), role=role)
    client = app.test_client()
    f.login(client, user.username)
    return client, user


def agent_client(app, f, agent):
    """A client logged in as the agent's user (factories.agent creates one)."""
    client = app.test_client()
    f.login(client, agent.user.username)
    return client


def _dependencies(client, slug: str) -> list[dict]:
    r = client.get(f"/dashboards/{slug}/_dash-dependencies")
    assert r.status_code == 200, (slug, r.status_code)
    return r.get_json()


def _split_outputs(output: str) -> list[dict]:
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    out = []
    for part in parts:
        component, prop = part.rsplit(".", 1)
        out.append({"id": component, "property": prop})
    return out


def find_callback(client, slug: str, output: str) -> dict:
    """The callback (from /_dash-dependencies) that has `output` ("id.property") among its outputs."""
    for dep in _dependencies(client, slug):
        if any(f"{o['id']}.{o['property']}" == output for o in _split_outputs(dep["output"])):
            return dep
    raise AssertionError(f"no callback of /dashboards/{slug}/ outputs {output}")


def call_callback(client, slug: str, output: str, values: dict[str, Any] | None = None,
                  changed: list[str] | None = None, headers: dict | None = None):
    """POST one callback as the Dash renderer does; `output` names any one of its outputs ("id.property")."""
    values = values or {}
    dep = find_callback(client, slug, output)

    def fill(items):
        return [{"id": i["id"], "property": i["property"], "value": values.get(f"{i['id']}.{i['property']}")}
                for i in items]

    inputs = fill(dep["inputs"])
    payload = {"output": dep["output"], "outputs": _split_outputs(dep["output"]), "inputs": inputs,
               "state": fill(dep.get("state", [])),
               "changedPropIds": changed if changed is not None else
               [f"{i['id']}.{i['property']}" for i in inputs[:1]]}
    if not dep["output"].startswith(".."):
        payload["outputs"] = payload["outputs"][0]
    return client.post(f"/dashboards/{slug}/_dash-update-component", json=payload, headers=headers or {})


def outputs(response) -> dict[str, Any]:
    """{"id.property": value} from a callback response (asserting it succeeded)."""
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True)[:500])
    body = response.get_json()
    return {f"{cid}.{prop}": value for cid, props in body["response"].items() for prop, value in props.items()}


def filters(start: date, end: date, category=None, tier=None, branch=None, granularity=None) -> dict[str, Any]:
    """The filter bar's values as call_callback expects them."""
    return {"f-range.start_date": start.isoformat(), "f-range.end_date": end.isoformat(),
            "f-category.value": category, "f-tier.value": tier, "f-branch.value": branch,
            "f-granularity.value": granularity}


def texts(component) -> str:
    """A Dash component tree (or what a callback returned) as JSON text, to search for labels and figures."""
    return json.dumps(component, ensure_ascii=False, default=str)


def kpi_values(children: list[dict]) -> dict[str, str]:
    """{card id: shown value} from a kpi_row's children as a callback returned them."""
    out = {}
    for card in children:
        props = card["props"]
        value = props["children"][1]["props"]["children"]
        out[props["id"]] = value
    return out


def sales_row(day: date, *, scope_id: int = PLATFORM_SCOPE, product_id: int = 1, category_id: int = 1,
              channel: str = "wallet", tier_id: int | None = 1, supplier_id: int = 1, orders: int = 1,
              quantity: int = 1, gmv: int = 10000, cost: int = 8000, fees: int = 0) -> SalesDaily:
    return SalesDaily(scope_id=scope_id, day=day, product_id=product_id, category_id=category_id, channel=channel,
                      tier_id=tier_id, supplier_id=supplier_id, orders=orders, quantity=quantity, gmv=gmv, cost=cost,
                      fees=fees, margin=gmv - cost)


def add_rollups(rows: list) -> None:
    """Insert rollup rows directly (pure query tests) and commit."""
    db.session.add_all(rows)
    db.session.commit()
