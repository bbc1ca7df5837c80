"""Real-name verification: local checks, the three-element provider over real HTTP, storage, and the screens."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

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
    _refused("id_checksum", bad_checksum, ("校验位", "checksum"))
    # 30 February, with a correct check digit: the date itself is refused
    _refused("id_birth_date", id_number(birth="19900230"), ("出生日期", "19900230", "birth date"))
    _refused("id_region", id_number(region="990101"), ("地区码", "990101", "region"))
    _refused("id_format", "12345", ("18",))
    future = id_number(birth="20990101")
    _refused("id_birth_date", future, ("出生日期", "birth date"))


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
    with pytest.raises(ValidationError, match="Luhn"):
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
        assert "出生日期" in exc.value.message and "Luhn" in exc.value.message and "手机号" in exc.value.message
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
