"""Real-name verification: local checks, the three-element provider over real HTTP, storage, and the screens."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select, text, update

from app.crypto import decrypt
from app.errors import Conflict, ValidationError
from app.network import realname
from app.network.models import RealNameVerification
from app.network.simulators import IdvSimulator
from tests.network_helpers import bank_card, id_number, idv_provider, simulator, verify


def _refused(code: str, raw: str, words: tuple[str, ...]):
    with pytest.raises(ValidationError) as exc:
        realname.check_id_number(raw)
    assert exc.value.code == code
    for word in words:
        assert word in exc.value.message


def test_id_number_refusals_name_the_reason(app):
    good = id_number()
    bad_checksum = good[:17] + ("0" if good[17] != "0" else "1")
    _refused("id_checksum", bad_checksum, ("校验位",))
    # 30 February, with a correct check digit: the date itself is refused
    _refused("id_birth_date", id_number(birth="19900230"), ("出生日期", "19900230"))
    _refused("id_region", id_number(region="990101"), ("地区码", "990101"))
    _refused("id_format", "12345", ("18",))
    future = id_number(birth="20990101")
    _refused("id_birth_date", future, ("出生日期",))


def test_valid_id_derives_facts(app):
    number, facts = realname.check_id_number(id_number(region="440305", birth="19900307", seq="123"))
    assert facts.gender == "M" and facts.province == "广东省" and facts.birth_year == 1990
    from datetime import date
    assert facts.age_band(date(2026, 11, 25)) == "35-44"
    assert facts.age_band(date(2005, 1, 1)) == "<18"
    _, female = realname.check_id_number(id_number(seq="122"))
    assert female.gender == "F"
    assert realname.check_id_number(number.lower())[0] == number


def test_bank_card_and_phone(app):
    assert realname.check_bank_card(" ".join(bank_card("8")[i:i + 4] for i in range(0, 16, 4))) == bank_card("8")
    with pytest.raises(ValidationError, match="银行卡号校验失败"):
        realname.check_bank_card(bank_card("8")[:-1] + "9")
    with pytest.raises(ValidationError, match="12-19"):
        realname.check_bank_card("4242424")
    assert realname.check_phone("+86 138 1234 5678") == "13812345678"
    for bad in ("12345678901", "010-12345678", "hello", ""):
        with pytest.raises(ValidationError, match="手机号"):
            realname.check_phone(bad)


def test_verified_through_provider_encrypted_and_masked(app, f, monkeypatch, db):
    a = f.agent()
    with idv_provider(app, monkeypatch) as sim:
        rec = verify(a, card_last="8", seq="123")
    assert sim.calls == 1
    assert rec.status == "verified" and rec.provider_ref and rec.verified_at
    assert (rec.gender, rec.province, rec.birth_year, rec.age_band) == ("M", "北京市", 1990, "35-44")
    number = id_number(seq="123")
    row = db.session.execute(text("SELECT * FROM real_name WHERE agent_id = :a"), {"a": a.id}).mappings().one()
    raw = " ".join(str(v) for v in row.values())
    for plain in (number, bank_card("8"), "13812345678", "张三丰"):
        assert plain not in raw
    assert decrypt(row["id_number_enc"]) == number and decrypt(row["bank_card_enc"]) == bank_card("8")
    # app.crypto.mask: at most a quarter of the characters, three or fewer all stars
    assert row["id_number_masked"] == number[:2] + "*" * 14 + number[-2:]
    assert row["phone_masked"] == "1*********8" and row["name_masked"] == "***"
    assert realname.is_verified(a.id)


def test_provider_mismatch_fails_and_local_refusal_writes_nothing(app, f, monkeypatch, db):
    a = f.agent()
    with idv_provider(app, monkeypatch) as sim:
        with pytest.raises(ValidationError) as exc:
            realname.submit(a.id, "李四", id_number(birth="19900230"), bank_card("8")[:-1] + "9", "123")
        message = exc.value.message
        assert "出生日期" in message and "银行卡号校验失败" in message and "手机号" in message
        assert sim.calls == 0
        assert db.session.scalar(select(func.count()).select_from(RealNameVerification)) == 0
        rec = verify(a, card_last="0")  # the provider's rule: a card ending in 0 does not match
    assert rec.status == "failed" and "不匹配" in rec.failure_reason
    assert not realname.is_verified(a.id)


def test_bad_signature_is_refused_by_the_provider(app, f, monkeypatch):
    a = f.agent()
    with simulator(IdvSimulator("another-key")) as url:
        monkeypatch.setitem(app.config, "IDV_PROVIDER_URL", url)
        monkeypatch.setitem(app.config, "IDV_PROVIDER_KEY", "wrong-key")
        with pytest.raises(realname.ProviderUnavailable):
            verify(a)
    assert realname.record_of(a.id) is None


def test_same_id_refused_for_a_second_agent(app, f, monkeypatch):
    a, b = f.agent(), f.agent()
    with idv_provider(app, monkeypatch):
        verify(a, seq="777")
        with pytest.raises(Conflict) as exc:
            verify(b, seq="777")
        assert exc.value.code == "id_taken"
        with pytest.raises(Conflict):
            verify(a, seq="778")  # already verified
    assert realname.record_of(b.id) is None


def test_purchase_above_setting_needs_real_name(app, f, monkeypatch):
    from app.orders import service as orders

    tier = f.tier(discount_bp=10000)
    a = f.agent(tier_obj=tier, balance=100000)
    small, big = f.product(face_price=1000, cost=800, secrets=3), f.product(face_price=50000, cost=40000, secrets=3)
    monkeypatch.setitem(app.config, "REALNAME_REQUIRED_ABOVE", 10000)
    orders.place_wallet_order(a.id, small.id, 1)
    with pytest.raises(realname.RealNameRequired):
        orders.place_wallet_order(a.id, big.id, 1)
    assert f.wallet(a) == 99000
    with idv_provider(app, monkeypatch):
        verify(a)
    orders.place_wallet_order(a.id, big.id, 1)
    assert f.wallet(a) == 49000


def test_portal_page_and_admin_list_show_masked_only(app, f, monkeypatch, client):
    a = f.agent()
    f.login(client, a.name)
    assert client.get("/portal/realname/").status_code == 200
    number = id_number(seq="135")
    with idv_provider(app, monkeypatch):
        wrong = number[:17] + ("1" if number[17] != "1" else "2")
        bad = client.post("/portal/realname/", data={"name": "王小明", "id_number": wrong,
                                                     "bank_card": bank_card("8"), "phone": "13912345678"})
        assert bad.status_code == 400 and "校验位" in bad.get_data(as_text=True)
        r = client.post("/portal/realname/", data={"name": "王小明", "id_number": number,
                                                   "bank_card": bank_card("8"), "phone": "13912345678"})
        assert r.status_code == 302
    page = client.get("/portal/realname/").get_data(as_text=True)
    assert "已认证" in page and number not in page and bank_card("8") not in page and "13912345678" not in page
    assert number[:2] + "*" * 14 + number[-2:] in page
    admin = app.test_client()
    f.user("adm_" + a.name, role="Admin")
    f.login(admin, "adm_" + a.name)
    listing = admin.get("/realname-records/list/").get_data(as_text=True)
    assert "1*********8" in listing and number not in listing and "王小明" not in listing


def test_the_published_example_id_number_is_accepted_and_its_checksum_enforced(app):
    """GB 11643's example 11010519491231002X: a real check digit, computed independently of our helpers."""
    from app.network.realname import check_id_number

    number, facts = check_id_number("11010519491231002x")
    assert number == "11010519491231002X"
    assert facts.gender == "F" and facts.birth_year == 1949
    with pytest.raises(ValidationError) as refused:
        check_id_number("110105194912310021")
    assert refused.value.code == "id_checksum"


# --- abuse limits: per agent per day, per ID number per day, lockout after failures -----------------------------

def _submit(client, seq: str, card_last: str = "0"):
    """Through the portal form; a card ending in 0 is a mismatch at the simulated provider."""
    return client.post("/portal/realname/", data={"name": "王小明", "id_number": id_number(seq=seq),
                                                  "bank_card": bank_card(card_last), "phone": "13912345678"})


def _audits(db, action: str) -> list:
    from app.audit.models import AuditEntry

    return db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)).all()


def test_daily_submissions_per_agent_are_limited_before_the_provider_is_asked(app, f, monkeypatch, client, db):
    from app.clock import to_local
    from app.network.models import RealNameAttempt
    from app.network.realname import _next_business_day_start

    monkeypatch.setitem(app.config, "REALNAME_DAILY_ATTEMPTS", 3)
    a = f.agent()
    f.login(client, a.name)
    with idv_provider(app, monkeypatch) as sim:
        for seq in ("301", "303", "305"):
            assert _submit(client, seq).status_code == 302
        refused = _submit(client, "307", card_last="8")  # even a matching triple: the provider is not asked
        assert sim.calls == 3
        text_ = refused.get_data(as_text=True)
        assert refused.status_code == 429 and "已达上限" in text_
        assert to_local(_next_business_day_start()).strftime("%Y-%m-%d %H:%M") in text_  # when to come back
        [entry] = _audits(db, "realname.refused")
        assert entry.target_id == str(a.id) and "realname_daily_limit" in entry.new_value
        assert db.session.scalar(select(func.count()).select_from(RealNameAttempt)
                                 .where(RealNameAttempt.agent_id == a.id)) == 3
        # The next business day the agent may try again.
        db.session.execute(update(RealNameAttempt).values(business_day=RealNameAttempt.business_day - 1))
        db.session.commit()
        assert _submit(client, "307", card_last="8").status_code == 302
        assert sim.calls == 4
    assert realname.is_verified(a.id)


def test_provider_outages_do_not_spend_the_daily_limit(app, f, monkeypatch, client):
    monkeypatch.setitem(app.config, "REALNAME_DAILY_ATTEMPTS", 1)
    a = f.agent()
    f.login(client, a.name)
    monkeypatch.setitem(app.config, "IDV_PROVIDER_URL", "http://127.0.0.1:9/")  # nothing listens there
    monkeypatch.setitem(app.config, "IDV_PROVIDER_KEY", "k")
    monkeypatch.setitem(app.config, "IDV_PROVIDER_TIMEOUT", 2)
    for _ in range(2):
        r = _submit(client, "311", card_last="8")
        assert r.status_code == 400 and "不可用" in r.get_data(as_text=True)
    with idv_provider(app, monkeypatch):
        assert _submit(client, "311", card_last="8").status_code == 302
    assert realname.is_verified(a.id)


def test_one_id_number_is_limited_per_day_across_agents(app, f, monkeypatch, db):
    monkeypatch.setitem(app.config, "REALNAME_ID_ATTEMPTS", 3)
    with idv_provider(app, monkeypatch) as sim:
        for _ in range(3):
            c = app.test_client()
            f.login(c, f.agent().name)
            assert _submit(c, "521").status_code == 302
        c = app.test_client()
        last = f.agent()
        f.login(c, last.name)
        r = _submit(c, "521", card_last="8")
        assert r.status_code == 429 and "该身份证号今日提交次数已达上限" in r.get_data(as_text=True)
        assert sim.calls == 3
        assert _submit(c, "523", card_last="8").status_code == 302  # another ID number is its own business
    assert realname.is_verified(last.id)
    [entry] = _audits(db, "realname.refused")
    assert "realname_id_limit" in entry.new_value


def test_repeated_failures_lock_the_agent_out(app, f, monkeypatch, client, db):
    from datetime import timedelta

    from app.network.models import RealNameAttempt

    monkeypatch.setitem(app.config, "REALNAME_DAILY_ATTEMPTS", 100)
    monkeypatch.setitem(app.config, "REALNAME_LOCKOUT_FAILURES", 5)
    monkeypatch.setitem(app.config, "REALNAME_LOCKOUT_HOURS", 24)
    a = f.agent()
    f.login(client, a.name)
    with idv_provider(app, monkeypatch) as sim:
        for seq in ("401", "403", "405", "407", "409"):
            assert _submit(client, seq).status_code == 302
        assert len(_audits(db, "realname.locked")) == 1
        r = _submit(client, "411", card_last="8")
        assert r.status_code == 429 and "失败次数过多" in r.get_data(as_text=True)
        assert sim.calls == 5
        assert "realname_locked" in _audits(db, "realname.refused")[0].new_value
        # 24 hours later the lock is over.
        db.session.execute(update(RealNameAttempt).values(created_at=RealNameAttempt.created_at - timedelta(hours=25)))
        db.session.commit()
        assert _submit(client, "411", card_last="8").status_code == 302
        assert sim.calls == 6
    assert realname.is_verified(a.id)


def test_asking_whether_an_id_is_taken_spends_the_budget_and_is_audited(app, f, monkeypatch, client, db):
    """"This ID is verified for another account" is an answer too: it is counted like a provider call, so a
    stolen ID list cannot be checked against the platform for free."""
    from app.network.models import RealNameAttempt

    monkeypatch.setitem(app.config, "REALNAME_DAILY_ATTEMPTS", 3)
    monkeypatch.setitem(app.config, "REALNAME_ID_ATTEMPTS", 10)
    owner, prober = f.agent(), f.agent()
    with idv_provider(app, monkeypatch) as sim:
        verify(owner, seq="611")
        f.login(client, prober.name)
        answers = [_submit(client, "611", card_last="8") for _ in range(5)]
        assert [r.status_code for r in answers[:3]] == [400, 400, 400]  # the form's error
        assert "已被其他账号实名认证" in answers[0].get_data(as_text=True)
        assert [r.status_code for r in answers[3:]] == [429, 429]  # the budget is spent: no more answers
        assert sim.calls == 1  # only the owner's verification reached the provider
    outcomes = db.session.scalars(select(RealNameAttempt.outcome).where(RealNameAttempt.agent_id == prober.id)).all()
    assert outcomes == ["taken"] * 3
    assert len(_audits(db, "realname.id_taken")) == 3
