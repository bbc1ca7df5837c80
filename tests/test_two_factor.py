"""Staff two-factor sign-in (两步验证) through FAB's pages: enrolment with a QR code and recovery codes, the second
sign-in step (wrong, replayed and recovery codes), the mandatory setting's guard, an admin's reset, the audit trail,
and agents who still sign in with a password only.

The TOTP clock is app.twofactor.service.totp_time, moved by the `clock` fixture one 30-second step at a time, so
"a newer code" never depends on the test waiting."""
from __future__ import annotations

import html
import re

import flask_babel
import pyotp
import pytest
from sqlalchemy import select

from app.audit.models import AuditEntry
from app.risk.models import RiskEvent
from app.twofactor import service
from app.twofactor.models import StaffRecoveryCode, StaffTwoFactor

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
START = 1_900_000_020.0  # a fixed instant at the start of a 30-second step


class Clock:
    def __init__(self) -> None:
        self.now = START

    def step(self, n: int = 1) -> None:
        self.now += 30 * n


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(service, "totp_time", lambda: c.now)
    return c


def code(secret: str, clock: Clock, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock.now + 30 * offset_steps)


def audit(db, action: str) -> list[AuditEntry]:
    db.session.expire_all()
    return db.session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)).all()


def text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def password_step(client, username: str, password: str | None = None, next_url: str | None = None):
    from tests.factories import PASSWORD

    url = "/login/" + (f"?next={next_url}" if next_url else "")
    return client.post(url, data={"username": username, "password": password or PASSWORD})


def enrol(client, clock: Clock) -> tuple[str, list[str]]:
    """Open the enrolment page, read the secret from it, confirm with the current code: (secret, recovery codes)."""
    page = client.get("/two-factor/")
    assert page.status_code == 200
    assert "<svg" in page.text and "otpauth" not in page.text  # the QR code, not the URI as text
    secret = re.search(r'data-secret="([A-Z2-7]+)"', page.text).group(1)
    r = client.post("/two-factor/activate", data={"code": code(secret, clock)})
    assert r.status_code == 200, text(r.text)
    codes = re.findall(r'<li class="recovery-code">([a-z0-9-]+)</li>', r.text)
    assert len(codes) == 10 and len(set(codes)) == 10
    return secret, codes


@pytest.fixture
def manager(app, f, clock):
    """A Manager signed in and enrolled, then signed out: (user, client, secret, recovery codes)."""
    user = f.user(f.unique("mgr"), role="Manager")
    client = app.test_client()
    f.login(client, user.username)  # no two-factor yet: the password is enough
    secret, codes = enrol(client, clock)
    client.get("/logout/")
    return user, client, secret, codes


def signed_in(client) -> bool:
    """A Manager's page answers 200 only when signed in (otherwise FAB redirects to the login page)."""
    return client.get("/orders/list/").status_code == 200


def test_enrol_then_sign_in_needs_the_second_step(app, f, db, clock):
    user = f.user(f.unique("mgr"), role="Manager")
    client = app.test_client()
    f.login(client, user.username)
    page = client.get("/two-factor/")
    secret = re.search(r'data-secret="([A-Z2-7]+)"', page.text).group(1)
    assert " ".join(secret[i:i + 4] for i in range(0, len(secret), 4)) in page.text  # shown for typing in

    # the secret is stored encrypted, never as it is
    row = db.session.get(StaffTwoFactor, user.id)
    assert row.secret_enc and secret not in row.secret_enc and not row.enabled
    assert client.get("/two-factor/").text.count(secret) >= 1  # a reload keeps the same pending secret
    assert re.search(r'data-secret="([A-Z2-7]+)"', client.get("/two-factor/").text).group(1) == secret

    r = client.post("/two-factor/activate", data={"code": "123456" if code(secret, clock) != "123456" else "654321"})
    assert r.status_code == 400 and "验证码不正确" in text(r.text)
    assert not service.is_enabled(user.id)

    r = client.post("/two-factor/activate", data={"code": " ".join(code(secret, clock)[i:i + 3] for i in (0, 3))})
    assert r.status_code == 200 and "两步验证已启用" in text(r.text)  # spaces inside the code are fine
    codes = re.findall(r'<li class="recovery-code">([a-z0-9-]+)</li>', r.text)
    assert len(codes) == 10
    stored = db.session.scalars(select(StaffRecoveryCode.code_hash).where(StaffRecoveryCode.user_id == user.id)).all()
    assert len(stored) == 10 and not any(c.replace("-", "") in h for c in codes for h in stored)
    assert 'class="recovery-code"' not in client.get("/two-factor/").text  # shown once only
    [entry] = audit(db, "two_factor.enable")
    assert entry.actor_id == user.id and entry.target_id == str(user.id)

    client.get("/logout/")
    assert not signed_in(client)
    r = password_step(client, user.username, next_url="/orders/list/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/login/two-factor")
    assert not signed_in(client)  # the right password alone does not sign in
    page = client.get("/login/two-factor")
    assert page.status_code == 200 and "验证码或恢复码" in text(page.text)
    assert "no-store" in page.headers["Cache-Control"]

    # the code that activated it is spent; a wrong one is refused; both are audited as failures
    r = client.post("/login/two-factor", data={"code": code(secret, clock)})
    assert r.status_code == 400 and "还可尝试 4 次" in text(r.text)
    r = client.post("/login/two-factor", data={"code": "000000" if code(secret, clock, 1) != "000000" else "111111"})
    assert r.status_code == 400 and "还可尝试 3 次" in text(r.text)
    assert not signed_in(client)
    failed = audit(db, "two_factor.failed")
    assert [e.target_id for e in failed] == [str(user.id)] * 2 and '"attempt": 2' in failed[1].new_value
    # risk control counts them as failed logins (its password-guessing rule); a blank answer is not counted
    assert client.post("/login/two-factor", data={"code": "  "}).status_code == 400
    assert len(db.session.scalars(select(RiskEvent).where(RiskEvent.metric == "login_failed")).all()) == 2
    assert len(audit(db, "two_factor.failed")) == 2

    clock.step()
    r = client.post("/login/two-factor", data={"code": code(secret, clock)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/orders/list/")
    assert signed_in(client)
    assert client.get("/login/two-factor").status_code == 302  # nothing pending any more
    assert 'data-enabled="1"' in client.get("/two-factor/").text


@BOTH
def test_a_code_used_once_is_refused_in_a_new_sign_in(manager, clock, db):
    user, client, secret, _ = manager
    clock.step()
    used = code(secret, clock)
    password_step(client, user.username)
    assert client.post("/login/two-factor", data={"code": used}).status_code == 302
    assert signed_in(client)
    client.get("/logout/")

    password_step(client, user.username)  # same 30 seconds, same code: a replay
    r = client.post("/login/two-factor", data={"code": used})
    assert r.status_code == 400 and "验证码不正确或已使用" in text(r.text)
    assert not signed_in(client)
    r = client.post("/login/two-factor", data={"code": code(secret, clock, -1)})  # older still: refused too
    assert r.status_code == 400
    r = client.post("/login/two-factor", data={"code": code(secret, clock, 1)})  # the next step's code: accepted
    assert r.status_code == 302 and signed_in(client)


@BOTH
def test_a_recovery_code_works_once(manager, clock, db):
    user, client, _, codes = manager
    password_step(client, user.username)
    r = client.post("/login/two-factor", data={"code": codes[3].upper()}, follow_redirects=True)
    assert r.status_code == 200 and "还剩 9 个" in text(r.text)
    assert signed_in(client)
    [entry] = audit(db, "two_factor.recovery_used")
    assert entry.actor_id == user.id and '"recovery_codes_left": 9' in entry.new_value
    client.get("/logout/")

    password_step(client, user.username)
    r = client.post("/login/two-factor", data={"code": codes[3]})
    assert r.status_code == 400 and not signed_in(client)
    r = client.post("/login/two-factor", data={"code": codes[4].replace("-", " ")})
    assert r.status_code == 302 and signed_in(client)
    assert service.recovery_codes_left(user.id) == 8


def test_five_wrong_codes_end_the_attempt_and_lock_the_second_step(manager, clock, db):
    user, client, secret, _ = manager
    password_step(client, user.username)
    for attempt in range(1, 5):
        assert client.post("/login/two-factor", data={"code": "zzzzz-zzzzz"}).status_code == 400, attempt
    r = client.post("/login/two-factor", data={"code": "zzzzz-zzzzz"})
    assert r.status_code == 302 and "/login/" in r.headers["Location"]  # back to the password step
    assert client.get("/login/two-factor").status_code == 302
    failed = audit(db, "two_factor.failed")
    assert len(failed) == 5 and '"locked": true' in failed[-1].new_value

    # the right password and a right code do not get in while the second step is locked
    r = password_step(client, user.username)
    assert r.status_code == 302 and r.headers["Location"].startswith("/login/")
    assert "验证码错误次数过多" in text(client.get("/login/").text)  # the fifth code's message, still shown
    assert not signed_in(client)

    row = db.session.get(StaffTwoFactor, user.id)
    row.locked_until = None  # the lock has run out
    db.session.commit()
    clock.step()
    assert password_step(client, user.username).headers["Location"].endswith("/login/two-factor")
    assert client.post("/login/two-factor", data={"code": code(secret, clock)}).status_code == 302
    assert signed_in(client)


def test_a_replayed_session_cannot_reset_the_failure_count(manager, clock, db):
    """The challenge lives on the user's row: an old session cookie carries a challenge a newer sign-in replaced."""
    user, client, secret, _ = manager
    password_step(client, user.username)
    stale = client.get_cookie("session").value
    client.post("/login/two-factor", data={"code": "zzzzz-zzzzz"})
    password_step(client, user.username)  # a new challenge
    client.set_cookie("session", stale)
    r = client.post("/login/two-factor", data={"code": code(secret, clock, 1)})
    assert r.status_code == 302 and "/login/" in r.headers["Location"] and not signed_in(client)


def test_regenerate_recovery_codes_and_disable_need_a_current_code(manager, clock, db):
    user, client, secret, old_codes = manager
    clock.step()
    password_step(client, user.username)
    client.post("/login/two-factor", data={"code": code(secret, clock)})
    assert signed_in(client)

    r = client.post("/two-factor/recovery-codes", data={"code": code(secret, clock)})  # spent at sign-in
    assert r.status_code == 400
    clock.step()
    r = client.post("/two-factor/recovery-codes", data={"code": code(secret, clock)})
    new_codes = re.findall(r'<li class="recovery-code">([a-z0-9-]+)</li>', r.text)
    assert r.status_code == 200 and len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    assert len(audit(db, "two_factor.recovery_regenerate")) == 1

    r = client.post("/two-factor/disable", data={"code": new_codes[0]})  # a recovery code cannot turn it off
    assert r.status_code == 400 and service.is_enabled(user.id)
    clock.step()
    r = client.post("/two-factor/disable", data={"code": code(secret, clock)})
    assert r.status_code == 302 and not service.is_enabled(user.id)
    assert db.session.get(StaffTwoFactor, user.id).secret_enc is None
    assert service.recovery_codes_left(user.id) == 0
    [entry] = audit(db, "two_factor.disable")
    assert entry.actor_id == user.id

    client.get("/logout/")
    assert password_step(client, user.username).status_code == 302 and signed_in(client)  # a password again


def test_mandatory_setting_sends_staff_to_enrolment_and_blocks_the_rest(app, f, db, clock):
    admin = f.user(f.unique("admin"), role="Admin")
    admin_client = app.test_client()
    f.login(admin_client, admin.username)
    page = admin_client.get("/platform-settings/form").text
    assert "员工必须使用两步验证" in page
    r = admin_client.post("/platform-settings/form", data={"realname_required_above": "0", "staff_2fa_required": "y"})
    assert r.status_code in (200, 302)
    [entry] = [e for e in audit(db, "setting.update") if e.target_id == "staff_2fa_required"]
    assert entry.actor_id == admin.id and "true" in entry.new_value and "false" in entry.old_value
    # the admin is staff too: from now on only enrolment, until enrolled
    r = admin_client.get("/tiers/list/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/two-factor/")

    support = f.user(f.unique("support"), role="Support")
    client = app.test_client()
    f.login(client, support.username)
    for url in ("/orders/list/", "/", "/agents/list/", "/audit/list/"):
        r = client.get(url)
        assert r.status_code == 302 and r.headers["Location"].endswith("/two-factor/"), url
    assert client.post("/order-refund/NOSUCHORDER", data={"reason": "x"}).status_code == 302
    page = client.get("/two-factor/")
    assert page.status_code == 200 and "平台要求员工使用两步验证" in text(page.text)
    secret, _ = enrol(client, clock)
    assert client.get("/orders/list/").status_code == 200  # enrolled: everything its role allows

    client.get("/logout/")  # and from now on it signs in with both steps
    assert password_step(client, support.username).headers["Location"].endswith("/login/two-factor")
    clock.step()
    assert client.post("/login/two-factor", data={"code": code(secret, clock)}).status_code == 302
    assert client.get("/orders/list/").status_code == 200

    # agents are not staff: the setting does not touch them
    agent = f.agent()
    agent_client = app.test_client()
    r = password_step(agent_client, agent.user.username)
    assert r.status_code == 302 and "two-factor" not in r.headers["Location"]
    assert agent_client.get("/portal/buy").status_code == 200


def test_admin_resets_a_lost_device(manager, app, f, db, clock):
    user, client, secret, _ = manager
    row_id = str(user.id)

    other = f.user(f.unique("mgr"), role="Manager")  # managers read the list but cannot reset
    other_client = app.test_client()
    f.login(other_client, other.username)
    assert other_client.get("/two-factor-admin/list/").status_code == 200
    other_client.post("/two-factor-admin/action_post", data={"action": "reset_two_factor", "rowid": row_id})
    assert service.is_enabled(user.id) and not audit(db, "two_factor.reset")

    admin = f.user(f.unique("admin"), role="Admin")
    admin_client = app.test_client()
    f.login(admin_client, admin.username)
    listing = admin_client.get("/two-factor-admin/list/")
    assert listing.status_code == 200 and user.username in listing.text
    r = admin_client.post("/two-factor-admin/action_post", data={"action": "reset_two_factor", "rowid": row_id},
                          follow_redirects=True)
    assert r.status_code == 200 and "已重置 1 个用户的两步验证" in text(r.text)
    assert not service.is_enabled(user.id) and service.recovery_codes_left(user.id) == 0
    [entry] = audit(db, "two_factor.reset")
    assert entry.actor_id == admin.id and entry.target_id == row_id and '"enabled": true' in entry.old_value

    # a second reset of the same row says so instead of failing
    r = admin_client.post("/two-factor-admin/action_post", data={"action": "reset_two_factor", "rowid": row_id},
                          follow_redirects=True)
    assert r.status_code == 200 and "未启用两步验证" in text(r.text)

    # the user signs in with the password and enrols again with a new secret
    r = password_step(client, user.username)
    assert r.status_code == 302 and "two-factor" not in r.headers["Location"] and signed_in(client)
    clock.step()
    new_secret, _ = enrol(client, clock)
    assert new_secret != secret


def test_an_agent_signs_in_with_a_password_only(app, f, client):
    agent = f.agent()
    r = password_step(client, agent.user.username)
    assert r.status_code == 302 and "two-factor" not in r.headers["Location"]
    assert client.get("/portal/buy").status_code == 200
    assert client.get("/two-factor/").status_code in (302, 403)  # no enrolment screen for agents
    assert client.get("/two-factor-admin/list/").status_code in (302, 403)


def test_a_wrong_password_never_reaches_the_second_step(manager, clock):
    user, client, _, _ = manager
    flask_babel.refresh()
    client.get("/lang/en")
    flask_babel.refresh()
    password_step(client, user.username)
    page = client.get("/login/two-factor").text
    assert "Code or recovery code" in page and "验证码或恢复码" not in page
    client.get("/logout/")
    r = password_step(client, user.username, password="wrong-password")
    assert r.status_code == 302 and "two-factor" not in r.headers["Location"]
    assert client.get("/login/two-factor").status_code == 302
    assert client.post("/login/two-factor", data={"code": "123456"}).status_code == 302


def test_the_cli_resets_a_locked_out_admin(app, f, db, clock):
    admin = f.user(f.unique("admin"), role="Admin")
    client = app.test_client()
    f.login(client, admin.username)
    enrol(client, clock)
    runner = app.test_cli_runner()

    result = runner.invoke(args=["kameng", "two-factor", "reset", "nobody", "--reason", "lost phone"])
    assert result.exit_code == 2 and "no user" in result.output
    result = runner.invoke(args=["kameng", "two-factor", "reset", admin.username, "--reason", "ticket 42: lost phone"])
    assert result.exit_code == 0, result.output
    assert not service.is_enabled(admin.id)
    [entry] = audit(db, "two_factor.reset")
    assert entry.actor_id is None and entry.reason == "ticket 42: lost phone"
    result = runner.invoke(args=["kameng", "two-factor", "reset", admin.username, "--reason", "again"])
    assert result.exit_code == 2 and "未启用两步验证" in result.output


# --- hardening: the wrong-code count across challenges, FAB's REST login, sessions after security changes -------

def flashes(client) -> list[str]:
    """The messages waiting in the session (taken, so the next call sees only new ones)."""
    with client.session_transaction() as s:
        return [message for _, message in s.pop("_flashes", [])]


def wrong_codes(client, n: int) -> None:
    for _ in range(n):
        client.post("/login/two-factor", data={"code": "zzzzz-zzzzz"})


def test_typing_the_password_again_does_not_reset_the_wrong_code_count(manager, clock, db):
    user, client, secret, _ = manager
    password_step(client, user.username)
    wrong_codes(client, 4)
    assert password_step(client, user.username).headers["Location"].endswith("/login/two-factor")  # a new challenge
    r = client.post("/login/two-factor", data={"code": "zzzzz-zzzzz"})  # the fifth since the last success
    assert r.status_code == 302 and "/login/" in r.headers["Location"]
    failed = audit(db, "two_factor.failed")
    assert len(failed) == 5 and '"locked": true' in failed[-1].new_value
    assert '"lock_minutes": 15' in failed[-1].new_value
    db.session.expire_all()
    row = db.session.get(StaffTwoFactor, user.id)
    assert row.locked_until is not None and row.challenge_id is None
    flashes(client)

    # while locked, the right password is answered exactly as a wrong one (nothing confirms the password)
    wrong = password_step(client, user.username, password="wrong-password")
    wrong_flashes = flashes(client)
    locked = password_step(client, user.username)
    assert (locked.status_code, locked.headers["Location"]) == (wrong.status_code, wrong.headers["Location"])
    assert flashes(client) == wrong_flashes and wrong_flashes
    assert client.get("/login/two-factor").status_code == 302 and not signed_in(client)
    [entry] = audit(db, "two_factor.locked_login")
    assert entry.target_id == str(user.id)

    # the lock runs out; the count goes on, and the next five wrong codes lock for longer
    row = db.session.get(StaffTwoFactor, user.id)
    row.locked_until = None
    db.session.commit()
    for _ in range(2):  # the password again between attempts still resets nothing
        password_step(client, user.username)
        wrong_codes(client, 2)
    password_step(client, user.username)
    wrong_codes(client, 1)
    failed = audit(db, "two_factor.failed")
    assert len(failed) == 10 and '"lock_minutes": 30' in failed[-1].new_value
    assert service.lock_minutes(15) == 60 and service.lock_minutes(10_000) == service.MAX_LOCK_MINUTES

    # only a successful second step clears the count
    row = db.session.get(StaffTwoFactor, user.id)
    row.locked_until = None
    db.session.commit()
    clock.step()
    password_step(client, user.username)
    assert client.post("/login/two-factor", data={"code": code(secret, clock)}).status_code == 302
    assert signed_in(client)
    db.session.expire_all()
    assert db.session.get(StaffTwoFactor, user.id).challenge_failures == 0


@pytest.mark.parametrize("path", ["/api/v1/security/login", "/api/v1/security/refresh"])
def test_fab_rest_login_hands_out_no_token(app, f, path):
    """FAB's REST login would hand out JWTs for a password alone (no second step, no login rate limit)."""
    from tests.factories import PASSWORD

    staff = f.user(f.unique("mgr"), role="Manager")
    agent = f.agent()
    client = app.test_client()
    for username in (staff.username, agent.user.username):
        r = client.post(path, json={"username": username, "password": PASSWORD, "provider": "db", "refresh": True})
        assert 400 <= r.status_code < 500, (username, r.status_code)
        assert r.is_json and "access_token" not in r.text and "refresh_token" not in r.text
    r = client.post(path, headers={"Authorization": "Bearer not-a-token"})
    assert 400 <= r.status_code < 500 and "access_token" not in r.text


def two_sessions(app, f, username: str):
    first, second = app.test_client(), app.test_client()
    f.login(first, username)
    f.login(second, username)
    assert signed_in(first) and signed_in(second)
    return first, second


def test_turning_two_factor_on_or_off_signs_out_the_other_sessions(app, f, clock):
    user = f.user(f.unique("mgr"), role="Manager")
    first, second = two_sessions(app, f, user.username)
    secret, _ = enrol(first, clock)
    assert signed_in(first)  # the session that made the change goes on
    r = second.get("/orders/list/")
    assert r.status_code == 302 and "/login/" in r.headers["Location"]
    assert not signed_in(second)

    # sign the second in again (both steps), then turn it off from the first: the second is out again
    clock.step()
    password_step(second, user.username)
    assert second.post("/login/two-factor", data={"code": code(secret, clock)}).status_code == 302
    assert signed_in(second)
    clock.step()
    assert first.post("/two-factor/disable", data={"code": code(secret, clock)}).status_code == 302
    assert signed_in(first) and not signed_in(second)


def test_a_json_request_of_a_stale_session_gets_401(app, f, clock):
    user = f.user(f.unique("mgr"), role="Manager")
    first, second = two_sessions(app, f, user.username)
    enrol(first, clock)
    r = second.get("/orders/list/", headers={"Accept": "application/json"})
    assert r.status_code == 401 and r.is_json


def test_a_password_change_signs_out_the_other_sessions(app, f):
    user = f.user(f.unique("mgr"), role="Manager")
    first, second = two_sessions(app, f, user.username)
    r = first.post("/resetmypassword/form", data={"password": "N3w-pass-word!", "conf_password": "N3w-pass-word!"})
    assert r.status_code == 302
    assert signed_in(first) and not signed_in(second)
    f.login(second, user.username, password="N3w-pass-word!")
    assert signed_in(second)

    # an admin's reset on FAB's user screen signs out every session of that user, not the admin's
    admin = f.user(f.unique("admin"), role="Admin")
    admin_client = app.test_client()
    f.login(admin_client, admin.username)
    r = admin_client.post(f"/resetpassword/form?pk={user.id}",
                          data={"password": "An0ther-pass!", "conf_password": "An0ther-pass!"})
    assert r.status_code == 302
    assert not signed_in(first) and not signed_in(second)
    assert admin_client.get("/users/list/").status_code == 200


def test_an_admin_two_factor_reset_signs_out_the_users_sessions(manager, app, f, clock):
    user, client, secret, _ = manager
    clock.step()
    password_step(client, user.username)
    assert client.post("/login/two-factor", data={"code": code(secret, clock)}).status_code == 302
    assert signed_in(client)
    admin = f.user(f.unique("admin"), role="Admin")
    admin_client = app.test_client()
    f.login(admin_client, admin.username)
    admin_client.post("/two-factor-admin/action_post", data={"action": "reset_two_factor", "rowid": str(user.id)})
    assert not service.is_enabled(user.id)
    assert not signed_in(client) and admin_client.get("/two-factor-admin/list/").status_code == 200


def test_a_session_without_a_fingerprint_is_signed_out_once(app, f):
    from app.twofactor.sessions import SESSION_KEY

    user = f.user(f.unique("mgr"), role="Manager")
    client = app.test_client()
    f.login(client, user.username)
    with client.session_transaction() as s:
        assert s.get(SESSION_KEY)
        del s[SESSION_KEY]  # as made before fingerprints existed
    assert not signed_in(client)
    f.login(client, user.username)
    assert signed_in(client)
