"""Helpers for the real-name and withdrawal tests: valid ID numbers and bank cards, simulators over real HTTP."""
from __future__ import annotations

import contextlib

from stdnum import luhn
from stdnum.cn import ric

from app.network import realname
from app.network.simulators import IdvSimulator, PayoutSimulator, serve

IDV_KEY = "idv-test-key-0123456789"
PAYOUT_KEY = "payout-test-key-0123456789"


def id_number(region: str = "110105", birth: str = "19900307", seq: str = "123") -> str:
    """A resident ID number with a correct check digit (seq's last digit odd = male)."""
    body = region + birth + seq
    return body + ric.calc_check_digit(body + "?")  # stdnum computes over all but the last character


def bank_card(last: str = "8", prefix: str = "62220212345678") -> str:
    """A Luhn-valid 16-digit card number ending in `last` (the check digit), varying the 15th digit."""
    for d in range(10):
        body = prefix + str(d)
        if luhn.calc_check_digit(body) == last:
            return body + last
    raise AssertionError("no card for that digit")


@contextlib.contextmanager
def simulator(sim):
    server, url = serve(sim)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def idv_provider(app, monkeypatch):
    sim = IdvSimulator(IDV_KEY)
    with simulator(sim) as url:
        monkeypatch.setitem(app.config, "IDV_PROVIDER_URL", url)
        monkeypatch.setitem(app.config, "IDV_PROVIDER_KEY", IDV_KEY)
        yield sim


@contextlib.contextmanager
def payout_bank(app, monkeypatch, slow_seconds: float = 3.0):
    sim = PayoutSimulator(PAYOUT_KEY, slow_seconds=slow_seconds)
    with simulator(sim) as url:
        monkeypatch.setitem(app.config, "PAYOUT_URL", url)
        monkeypatch.setitem(app.config, "PAYOUT_KEY", PAYOUT_KEY)
        yield sim


def verify(agent, card_last: str = "8", seq: str | None = None, name: str = "张三丰"):
    """Verify an agent's real name through the provider (which must be configured)."""
    seq = seq or f"{agent.id % 1000:03d}"
    return realname.submit(agent.id, name, id_number(seq=seq), bank_card(card_last), "13812345678")
