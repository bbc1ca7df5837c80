"""The robot receiver (app/alerts/simulator.py) served on 127.0.0.1, and channels pointing at it.

    from tests import alert_helpers as ah

    robots = ah.robots                 # fixture: a running RobotSimulator with its control API
    ch = ah.robot_channel(robots, "dingtalk")          # a registered robot and a channel for it
    ah.evaluate()                      # the periodic job once, and its messages sent (no Redis: inline)
"""
from __future__ import annotations

import pytest
import requests

from app.alerts import service as alerts
from app.extensions import db
from app.network.simulators import serve
from app.outbox.service import dispatch_due


class RobotsHandle:
    def __init__(self, url: str, sim):
        self.url, self.sim = url, sim

    def _call(self, method: str, path: str, payload: dict | None = None):
        response = requests.request(method, self.url + path, json=payload, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def register(self, kind: str, signed: bool = True) -> dict:
        return self._call("POST", "/_sim/robots", {"kind": kind, "signed": signed})

    def messages(self, kind: str | None = None) -> list[dict]:
        return self._call("GET", "/_sim/messages" + (f"?kind={kind}" if kind else ""))

    def requests(self) -> list[dict]:
        return self._call("GET", "/_sim/requests")

    def behave(self, **kw) -> dict:
        return self._call("POST", "/_sim/behaviour", kw)


@pytest.fixture
def robots():
    from app.alerts.simulator import RobotSimulator

    sim = RobotSimulator()
    server, url = serve(sim)
    sim.base_url = url
    try:
        yield RobotsHandle(url, sim)
    finally:
        server.shutdown()


def robot_channel(robots: RobotsHandle, kind: str, signed: bool = True, secret: str | None = None,
                  name: str | None = None, min_severity: str = "info"):
    """A robot registered at the receiver and a channel for it (secret: a wrong one, to see the refusal)."""
    robot = robots.register(kind, signed)
    channel = alerts.create_channel(name or f"{kind}-{robot['token'][:6]}", kind, webhook=robot["webhook"],
                                    secret=secret if secret is not None else robot["secret"],
                                    min_severity=min_severity)
    return channel, robot


def evaluate(**kw) -> dict:
    report = alerts.evaluate(**kw)
    dispatch_due()
    db.session.rollback()
    db.session.expire_all()
    return report


def sweep() -> None:
    from workers import jobs

    jobs.sweep_outbox()
    db.session.rollback()
    db.session.expire_all()
