"""Invite codes: registering through /r/<code> binds the new agent under the inviter at the code's tier (one
transaction); the tier rank rule; non-recruiting tiers get no code; dead codes bind nothing; max_uses holds under a
thread race; posters are PNGs carrying segno's QR matrix of the link; another agent's code or poster is a 404."""
from __future__ import annotations

import io
import threading
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import func, select, update

from app.agents.models import Agent
from app.clock import utcnow
from app.errors import Forbidden, ValidationError
from app.network import invites, poster
from app.network.models import InviteCode
from tests.conftest import make_app

NEW_PASSWORD = "s3cret-pass-9"


@pytest.fixture
def net(f, db):
    top = f.tier(rank=30, may_recruit=True)
    mid = f.tier(rank=20, may_recruit=True)
    low = f.tier(rank=10, may_recruit=False)
    root = f.agent(f.unique("root"), tier_obj=top)
    inviter = f.agent(f.unique("inv"), parent=root, tier_obj=top)
    other = f.agent(f.unique("other"), tier_obj=top)
    member = f.agent(f.unique("mem"), parent=inviter, tier_obj=low)
    return {"top": top, "mid": mid, "low": low, "root": root, "inviter": inviter, "other": other, "member": member}


def form(username: str, **kw) -> dict:
    data = {"username": username, "password": NEW_PASSWORD, "password2": NEW_PASSWORD, "display_name": "新代理小王",
            "phone": "13800138000"}
    data.update(kw)
    return data


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_register_through_code_binds_under_inviter_at_code_tier(app, db, f, client, net):
    inviter = net["inviter"]
    code = invites.create_code(inviter.id, net["mid"].id, max_uses=5).code
    assert invites.CODE_PATTERN.match(code) and len(code) == invites.CODE_LENGTH
    assert not set(code) & set("01OIL")
    # the public page names the inviter and the tier
    page = client.get(f"/r/{code}")
    assert page.status_code == 200
    assert inviter.name in page.get_data(as_text=True) and net["mid"].name in page.get_data(as_text=True)

    r = client.post(f"/r/{code}", data=form("new_wang"))
    assert r.status_code == 201, r.get_data(as_text=True)
    agent = db.session.scalar(select(Agent).where(Agent.name == "新代理小王"))
    assert agent.parent_id == inviter.id and agent.tier_id == net["mid"].id
    assert agent.path == f"{inviter.path}{agent.id}/" and agent.path.startswith(net["root"].path)
    assert agent.depth == inviter.depth + 1 and agent.phone == "+8613800138000"
    assert [role.name for role in agent.user.roles] == ["Agent"] and agent.user.username == "new_wang"
    assert db.session.scalar(select(InviteCode.uses).where(InviteCode.code == code)) == 1
    # the new agent can log in and sees the portal; its upline sees it in the team
    f.login(app.test_client(), "new_wang", NEW_PASSWORD)
    assert invites.status_of(invites.own_code(inviter, code)) == "有效"


def test_code_tier_must_rank_below_the_inviter(app, db, f, client, net):
    inviter = net["inviter"]
    assert [t.id for t in invites.assignable_tiers(inviter)] == [net["mid"].id, net["low"].id]
    for tier in (net["top"], f.tier(rank=99)):
        with pytest.raises(Forbidden):
            invites.create_code(inviter.id, tier.id)
    # through the portal too: refused, nothing created
    f.login(client, inviter.name)
    r = client.post("/portal/invites/create", data={"tier_id": str(net["top"].id)})
    assert r.status_code == 302 and count(db, InviteCode) == 0
    r = client.post("/portal/invites/create", data={"tier_id": str(net["low"].id), "max_uses": "2",
                                                    "expires_days": "7"})
    assert r.status_code == 302
    created = db.session.scalar(select(InviteCode))
    assert created.agent_id == inviter.id and created.tier_id == net["low"].id and created.max_uses == 2
    assert timedelta(days=6) < created.expires_at - utcnow() <= timedelta(days=7)
    # a mid-tier agent cannot hand out its own tier either
    mid_agent = f.agent(parent=inviter, tier_obj=net["mid"])
    with pytest.raises(Forbidden):
        invites.create_code(mid_agent.id, net["mid"].id)
    with pytest.raises(ValidationError):
        invites.create_code(inviter.id, net["low"].id, max_uses="0")


def test_tier_rank_is_rechecked_when_the_code_is_used(app, db, f, client, net):
    code = invites.create_code(net["inviter"].id, net["mid"].id).code
    net["inviter"].tier_id = net["mid"].id  # the inviter was demoted to the code's tier
    db.session.commit()
    assert client.post(f"/r/{code}", data=form("late_user")).status_code == 404
    assert app.appbuilder.sm.find_user(username="late_user") is None


def test_non_recruiting_tier_gets_no_code(app, db, f, client, net):
    member = net["member"]
    assert invites.recruit_refusal(member)
    with pytest.raises(Forbidden):
        invites.create_code(member.id, net["low"].id)
    f.login(client, member.name)
    page = client.get("/portal/invites/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="recruit-refusal"' in html and "不能发展下级代理" in html and 'id="invite-form"' not in html
    client.post("/portal/invites/create", data={"tier_id": str(net["low"].id)})
    assert count(db, InviteCode) == 0


@pytest.mark.parametrize("kind", ["forged", "unknown", "expired", "used_up", "deactivated"])
def test_dead_codes_bind_nothing(app, db, f, client, net, kind):
    code = invites.create_code(net["inviter"].id, net["mid"].id, max_uses=1).code
    if kind == "forged":
        code = "<script>x"
    elif kind == "unknown":
        code = invites.new_code()
    elif kind == "expired":
        db.session.execute(update(InviteCode).values(expires_at=utcnow() - timedelta(minutes=1)))
    elif kind == "used_up":
        db.session.execute(update(InviteCode).values(uses=1))
    elif kind == "deactivated":
        invites.deactivate(net["inviter"], code)
    db.session.commit()
    agents_before, users_before = count(db, Agent), len(app.appbuilder.sm.get_all_users())
    assert client.get(f"/r/{code}").status_code == 404
    r = client.post(f"/r/{code}", data=form(f"dead_{kind}"))
    assert r.status_code == 404 and 'id="invite-invalid"' in r.get_data(as_text=True)
    assert count(db, Agent) == agents_before and len(app.appbuilder.sm.get_all_users()) == users_before
    assert app.appbuilder.sm.find_user(username=f"dead_{kind}") is None


@pytest.mark.parametrize("changes, message", [
    ({"password2": "something-else"}, "不一致"),
    ({"password": "short1", "password2": "short1"}, "至少 8 位"),
    ({"username": "a b"}, "用户名"),
    ({"phone": "12345"}, "手机号"),
    ({"display_name": "  "}, "名称"),
])
def test_bad_registration_input_creates_nothing(app, db, f, client, net, changes, message):
    code = invites.create_code(net["inviter"].id, net["mid"].id).code
    agents_before = count(db, Agent)
    r = client.post(f"/r/{code}", data={**form("bad_input"), **changes})
    assert r.status_code == 400 and message in r.get_data(as_text=True)
    assert count(db, Agent) == agents_before
    assert db.session.scalar(select(InviteCode.uses)) == 0


def test_usernames_are_unique(app, db, f, client, net):
    code = invites.create_code(net["inviter"].id, net["mid"].id).code
    r = client.post(f"/r/{code}", data=form(net["other"].name.upper()))  # case-insensitive clash
    assert r.status_code == 400 and "用户名已被使用" in r.get_data(as_text=True)
    assert db.session.scalar(select(InviteCode.uses)) == 0


def test_max_uses_holds_under_a_thread_race(app, db, f, net):
    code = invites.create_code(net["inviter"].id, net["mid"].id, max_uses=3).code
    agents_before = count(db, Agent)
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results: list[str] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        with app.app_context():
            barrier.wait()
            try:
                invites.register(code, f"race_{i}", NEW_PASSWORD, NEW_PASSWORD, f"race {i}", "13800138000")
                outcome = "ok"
            except invites.InvalidInvite:
                outcome = "refused"
            finally:
                db.session.remove()
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    db.session.expire_all()
    assert sorted(results) == ["ok"] * 3 + ["refused"] * 5
    assert db.session.scalar(select(InviteCode.uses)) == 3
    assert count(db, Agent) == agents_before + 3
    assert len([u for u in app.appbuilder.sm.get_all_users() if u.username.startswith("race_")]) == 3


def test_agents_deactivate_only_their_own_codes(app, db, f, client, net):
    code = invites.create_code(net["inviter"].id, net["mid"].id).code
    # another branch, and the inviter's own upline, get a 404 and change nothing
    for intruder in (net["other"], net["root"]):
        c = f.login(app.test_client(), intruder.name)
        assert c.post(f"/portal/invites/{code}/deactivate").status_code == 404
        assert c.get(f"/portal/invites/{code}/poster.png").status_code == 404
        assert code not in c.get("/portal/invites/").get_data(as_text=True)
    assert db.session.scalar(select(InviteCode.active)) is True
    f.login(client, net["inviter"].name)
    assert client.post(f"/portal/invites/{invites.new_code()}/deactivate").status_code == 404
    page = client.get("/portal/invites/").get_data(as_text=True)
    assert code in page and f"http://localhost/r/{code}" in page
    assert client.post(f"/portal/invites/{code}/deactivate").status_code == 302
    db.session.expire_all()
    assert db.session.scalar(select(InviteCode.active)) is False


def test_poster_is_a_png_with_the_qr_of_the_link(app, db, f, client, net):
    code = invites.create_code(net["inviter"].id, net["mid"].id).code
    f.login(client, net["inviter"].name)
    r = client.get(f"/portal/invites/{code}/poster.png")
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert r.data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(r.data)).convert("L")
    assert image.size == (poster.WIDTH, poster.HEIGHT) == (750, 1200)
    link = f"http://localhost/r/{code}"
    place = poster.qr_placement(link)
    matrix = poster.qr_matrix(link)
    assert len(matrix) == place.size >= 21 and place.scale >= 4
    for r_, row in enumerate(matrix):
        for c_, dark in enumerate(row):
            x = place.left + c_ * place.scale + place.scale // 2
            y = place.top + r_ * place.scale + place.scale // 2
            assert (image.getpixel((x, y)) < 64) == dark, (r_, c_)
    # the quiet zone is white all round
    for k in range(place.size):
        assert image.getpixel((place.left - place.scale // 2, place.top + k * place.scale)) > 200
    # the Chinese text region is drawn (not empty): the call to action row has dark-red pixels
    rgb = Image.open(io.BytesIO(r.data)).convert("RGB")
    assert any(rgb.getpixel((x, 345))[0] > 150 and rgb.getpixel((x, 345))[1] < 120 for x in range(100, 650))


def test_poster_fails_loudly_without_the_cjk_font(app, net):
    app.config["INVITE_POSTER_FONT"] = "/nonexistent/NotoSansCJK-Regular.ttc"
    try:
        with pytest.raises(poster.PosterFontMissing, match="fonts-noto-cjk"):
            poster.render_poster("卡盟 Kameng", "张三", "http://localhost/r/ABCDEFGH", "ABCDEFGH")
    finally:
        app.config.pop("INVITE_POSTER_FONT")
    assert poster.load_font(20).getname()[0] == "Noto Sans CJK SC"


def test_registration_posts_are_rate_limited_per_address(pg_url, app, db, f, net):
    code = invites.create_code(net["inviter"].id, net["mid"].id).code
    limited = make_app(pg_url, RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://",
                       INVITE_REGISTER_RATE_LIMIT="3 per minute")
    client = limited.test_client()
    bad = form("rl_user", password2="mismatch-123")
    statuses = [client.post(f"/r/{code}", data=bad, environ_base={"REMOTE_ADDR": "10.2.2.2"}).status_code
                for _ in range(4)]
    assert statuses == [400, 400, 400, 429]
    assert client.get(f"/r/{code}", environ_base={"REMOTE_ADDR": "10.2.2.2"}).status_code == 200
    assert client.post(f"/r/{code}", data=bad, environ_base={"REMOTE_ADDR": "10.2.2.3"}).status_code == 400


def test_registration_form_needs_its_csrf_token(pg_url, app, db, f, net):
    code = invites.create_code(net["inviter"].id, net["mid"].id).code
    guarded = make_app(pg_url, WTF_CSRF_ENABLED=True)
    client = guarded.test_client()
    assert client.post(f"/r/{code}", data=form("csrf_less")).status_code == 400
    assert guarded.appbuilder.sm.find_user(username="csrf_less") is None
    assert db.session.scalar(select(InviteCode.uses)) == 0
    page = client.get(f"/r/{code}").get_data(as_text=True)
    assert 'name="csrf_token"' in page
