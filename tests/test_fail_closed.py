"""Configuration fails closed: only KAMENG_ENV=development runs on the built-in development keys; every other
environment (or none) also needs an https PUBLIC_BASE_URL and gets secure, SameSite cookies and HSTS."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app import create_app
from config import _DEV_CARD_SECRET_KEY, _DEV_SECRET_KEY, ConfigError
from tests.conftest import ROOT

REAL = {"SECRET_KEY": "s" * 40, "CARD_SECRET_KEY": "c" * 40}
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")


def _start(tmp_path, **config):
    base = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'k.db'}", "FAB_UPDATE_PERMS": False,
            "RATELIMIT_ENABLED": False, "AUTH_RATE_LIMITED": False}
    base.update(config)
    return create_app(base)


def _entry_point(env: dict, *args: str) -> subprocess.CompletedProcess:
    """The real entry point (`flask --app run ...`, which gunicorn's `run:app` shares) in a clean environment."""
    clean = {k: v for k, v in os.environ.items()
             if k not in {"KAMENG_ENV", "SECRET_KEY", "CARD_SECRET_KEY", "PUBLIC_BASE_URL", "DATABASE_URL"}}
    clean.update(env)
    return subprocess.run([FLASK, "--app", "run", *args], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("env", [None, "", "production", "staging", "test", "Development"])
def test_anything_but_development_refuses_the_development_keys(tmp_path, env):
    with pytest.raises(ConfigError) as refused:
        _start(tmp_path, KAMENG_ENV=env, SECRET_KEY=None, CARD_SECRET_KEY=None)
    message = str(refused.value)
    assert "SECRET_KEY" in message and "CARD_SECRET_KEY" in message and "KAMENG_ENV=development" in message
    with pytest.raises(ConfigError, match="SECRET_KEY.*CARD_SECRET_KEY"):  # the published keys spelled out
        _start(tmp_path, KAMENG_ENV=env, SECRET_KEY=_DEV_SECRET_KEY, CARD_SECRET_KEY=_DEV_CARD_SECRET_KEY)


def test_one_missing_key_is_named_alone(tmp_path):
    with pytest.raises(ConfigError) as refused:
        _start(tmp_path, KAMENG_ENV="staging", SECRET_KEY="s" * 40, CARD_SECRET_KEY="short")
    message = str(refused.value)
    assert "CARD_SECRET_KEY (" in message and "SECRET_KEY (" not in message.replace("CARD_SECRET_KEY (", "")


def test_staging_is_held_to_production_rules_and_has_no_sandbox(tmp_path):
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        _start(tmp_path, KAMENG_ENV="staging", **REAL)
    app = _start(tmp_path, KAMENG_ENV="staging", PUBLIC_BASE_URL="https://staging.example.com", **REAL)
    assert app.config["SECRET_KEY"] == REAL["SECRET_KEY"] and app.config["SESSION_COOKIE_SECURE"] is True
    assert "Strict-Transport-Security" in app.test_client().get("/shop/", base_url="https://x").headers
    from app.payments.gateways import sandbox_allowed
    with app.app_context():
        assert sandbox_allowed() is False


@pytest.mark.parametrize("env", ["production", "prod", None])
@pytest.mark.parametrize("base_url", [None, "", "http://shop.example.com", "https://"])
def test_production_needs_an_https_public_base_url(tmp_path, env, base_url):
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        _start(tmp_path, KAMENG_ENV=env, PUBLIC_BASE_URL=base_url, **REAL)


def test_production_cookies_are_secure_and_samesite_and_hsts_is_sent(tmp_path):
    app = _start(tmp_path, KAMENG_ENV="production", PUBLIC_BASE_URL="https://shop.example.com", **REAL)
    assert app.config["SESSION_COOKIE_SECURE"] is True and app.config["REMEMBER_COOKIE_SECURE"] is True
    response = app.test_client().get("/login/", base_url="https://shop.example.com")
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    cookie = next(v for v in response.headers.getlist("Set-Cookie") if v.startswith("session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_development_runs_on_the_development_keys_without_hsts(tmp_path):
    app = _start(tmp_path, KAMENG_ENV="development", SECRET_KEY=None, CARD_SECRET_KEY=None)
    assert app.config["SECRET_KEY"] == _DEV_SECRET_KEY and app.config["CARD_SECRET_KEY"] == _DEV_CARD_SECRET_KEY
    response = app.test_client().get("/login/")
    assert "Strict-Transport-Security" not in response.headers
    cookie = next(v for v in response.headers.getlist("Set-Cookie") if v.startswith("session="))
    assert "Secure" not in cookie and "SameSite=Lax" in cookie


def test_the_entry_point_without_kameng_env_says_what_is_missing_and_exits(tmp_path):
    done = _entry_point({"DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}"}, "kameng", "ledger-check")
    assert done.returncode != 0
    assert "refuses to start" in done.stderr and "SECRET_KEY" in done.stderr and "CARD_SECRET_KEY" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_data_and_simulators_are_refused_outside_development(tmp_path):
    env = {"KAMENG_ENV": "staging", "DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}", "FAB_UPDATE_PERMS": "False",
           "PUBLIC_BASE_URL": "https://staging.example.com", **REAL}
    demo = _entry_point(env, "kameng", "demo", "--password", "x" * 12)
    assert demo.returncode != 0 and "KAMENG_ENV=development" in demo.stdout + demo.stderr
    sim = _entry_point(env, "kameng", "channel-sim", "--channel", "alipay", "--port", "1")
    assert sim.returncode != 0 and "KAMENG_ENV=development" in sim.stdout + sim.stderr
