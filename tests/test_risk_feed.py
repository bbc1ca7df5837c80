"""共享名单 between two Kameng instances on two databases: instance A blocks a fraudster (phone, device, ID number),
exports its signed feed (CLI) or serves it over real HTTP to a partner key; instance B imports or pulls it, and a
checkout on B from that phone (in another spelling) is held for review after payment, its source named on B's review
page. The feed carries no personal value in any spelling; tampered, unknown-publisher, foreign-key, unknown-key-id
and expired feeds are refused with a message and a non-zero exit; export waits for a legal basis; an agent's API key
cannot pull the feed; every export is in the log; `?since=` carries removals."""
from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from app.audit.models import AuditEntry
from app.clock import utcnow
from app.extensions import db
from app.orders.models import Order
from app.risk.feed_models import RiskFeedEntry, RiskListShare
from app.risk.models import RiskDecision
from tests import payments_helpers as h
from tests.conftest import PG_URL, _clean, _migrate, _recreate_pg_database, make_app
from tests.openapi_helpers import api_client, new_key, served

PHONE = "139 1234 5678"
PHONE_FORMS = ("13912345678", "+8613912345678", "139 1234 5678", "8613912345678", "1234 5678", "12345678")
DEVICE = "fp-fraud-device-0001"
ID_NUMBER = "11010519491231002x"
ID_FORMS = ("11010519491231002X", "11010519491231002x", "110105194912")
REASON = f"stole cards, called from {PHONE}"  # free text naming the person: never exported either
CONSENT = "用户在注册时同意：为防范欺诈，本平台可与合作平台以不可逆哈希形式共享风险名单。"
B_URL = os.environ.get("KAMENG_TEST_DATABASE_URL_B", PG_URL + "b")


@pytest.fixture(scope="session")
def _app_b():
    _recreate_pg_database(B_URL)
    _migrate(B_URL)
    flask_app = make_app(B_URL)
    with flask_app.app_context():
        flask_app.appbuilder.sm.create_db()  # B's roles, for its staff screens
    return flask_app


@pytest.fixture
def app_b(app, _app_b):
    """Instance B on its own database, emptied for each test; its ledger is checked after the test too."""
    from app.ledger.invariants import check_ledger
    from app.ledger.service import ensure_platform_accounts

    with _app_b.app_context():
        _clean(db)
        ensure_platform_accounts()
        db.session.commit()
    yield _app_b
    with _app_b.app_context():
        problems = check_ledger()
        assert not problems, "instance B's ledger is broken:\n" + "\n".join(problems)


def _cli(flask_app, *args) -> tuple[int, str]:
    result = flask_app.test_cli_runner().invoke(args=["kameng", "risk", *args])
    return result.exit_code, result.output


def _ok(flask_app, *args) -> dict:
    code, out = _cli(flask_app, *args)
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def _publisher_a(app) -> dict:
    """A: identity, a sharing key, the legal basis, and a fraudster on the blacklist."""
    identity = _ok(app, "feed", "identity", "--publisher-id", "kameng-a")
    key = _ok(app, "feed", "key", "rotate", "--key-id", "shared-1")
    _ok(app, "feed", "legal-basis", "--basis", "consent", "--text", CONSENT)
    for kind, value in (("phone", PHONE), ("device", DEVICE), ("id_number", ID_NUMBER)):
        _ok(app, "list", "add", "--kind", kind, "--value", value, "--action", "block", "--reason", REASON)
    return {"public_key": identity["public_key"], "secret": key["secret"]}


def _subscriber_b(app_b, a: dict) -> None:
    """B: the shared key received from A, and A registered as a trusted publisher."""
    _ok(app_b, "feed", "key", "add", "--key-id", "shared-1", "--secret", a["secret"])
    _ok(app_b, "feed", "partner", "add", "--publisher-id", "kameng-a", "--name", "平台A",
        "--public-key", a["public_key"], "--key-ids", "shared-1")


def _assert_no_personal_value(raw: bytes) -> None:
    text = raw.decode("ascii")  # canonical JSON: ASCII only, so a Chinese or escaped value cannot hide either
    for planted in (*PHONE_FORMS, DEVICE, *ID_FORMS, "stole", "called from"):
        assert planted.lower() not in text.lower(), f"{planted!r} is in the feed"


def _checkout_b(client_b, product, contact: str, device: str = "dev-of-b"):
    return client_b.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": contact,
                                                   "query_password": h.PASSWORD, "channel": "sandbox",
                                                   "device_id": device}, environ_base={"REMOTE_ADDR": "203.0.113.9"})


def _pay_and_state(client_b, order_no: str) -> str:
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    assert h.notify(client_b, "sandbox", order, "SBX-" + order_no).status_code == 200
    return h.order_state(order_no)


def test_feed_file_round_trip_between_two_instances_holds_the_fraudster_for_review(app, app_b, f, tmp_path):
    a = _publisher_a(app)
    path = tmp_path / "feed.json"
    exported = _ok(app, "feed", "export", str(path))
    assert exported["entries"] == 3 and exported["key_id"] == "shared-1"
    raw = path.read_bytes()
    _assert_no_personal_value(raw)
    feed = json.loads(raw)["feed"]
    assert feed["publisher"] == "kameng-a" and feed["legal_basis_version"] == 1
    assert {e["kind"] for e in feed["entries"]} == {"phone", "device", "id_number"}
    assert {(e["reason"], e["evidence"]) for e in feed["entries"]} == {("fraud_confirmed", "confirmed")}
    # the personal values sit encrypted in A's database, never in plaintext
    db.session.rollback()
    stored = " ".join(db.session.execute(text("SELECT value FROM risk_list_share")).scalars())
    assert "13912345678" not in stored and DEVICE not in stored
    # A's log: who exported what, how many, where to
    [log] = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "risk_feed.export"))
    assert json.loads(log.new_value)["entries"] == 3 and str(path) in json.loads(log.new_value)["destination"]

    with app_b.app_context():
        _subscriber_b(app_b, a)
        summary = _ok(app_b, "feed", "import", str(path))
        assert summary["publisher"] == "kameng-a" and summary["added"] == 3
        # imported entries are on the review list only: the same phone, spelt otherwise, is held, not refused
        h.setup_sandbox()
        product = f.product(secrets=2)
        client_b = app_b.test_client()
        r = _checkout_b(client_b, product, "+86 139-1234-5678")
        assert r.status_code == 201, r.get_json()
        number = r.get_json()["order_no"]
        assert _pay_and_state(client_b, number) == "reviewing"
        decision = db.session.scalar(select(RiskDecision).where(RiskDecision.order_no == number))
        assert decision.outcome == "review" and decision.stage == "list"
        [hit] = [hit for hit in json.loads(decision.hits) if hit.get("source")]
        assert hit["source"] == "kameng-a" and hit["action"] == "review"
        # the reviewer on B sees the source
        f.user("risk-admin-b", role="Admin")
        f.login(client_b, "risk-admin-b")
        page = client_b.get(f"/risk-review/{number}")
        assert page.status_code == 200 and "kameng-a" in page.get_data(as_text=True)
        # the device alone holds too; an unrelated buyer passes
        r = _checkout_b(client_b, product, "13800000001", device=DEVICE)
        assert _pay_and_state(client_b, r.get_json()["order_no"]) == "reviewing"
        r = _checkout_b(client_b, product, "13800000002", device="clean-device")
        assert _pay_and_state(client_b, r.get_json()["order_no"]) == "delivered"
        imported = db.session.scalars(select(RiskFeedEntry)).all()
        assert {e.partner.publisher_id for e in imported} == {"kameng-a"}


def test_tampered_unknown_foreign_expired_and_unknown_key_feeds_are_refused(app, app_b, tmp_path):
    from app.risk import feed

    a = _publisher_a(app)
    good = tmp_path / "good.json"
    _ok(app, "feed", "export", str(good))
    raw = good.read_bytes()
    with app_b.app_context():
        _subscriber_b(app_b, a)
        # one byte changed inside the first entry's hash
        at = raw.index(b'"value":"') + len(b'"value":"') + 5
        tampered = tmp_path / "tampered.json"
        tampered.write_bytes(raw[:at] + (b"0" if raw[at:at + 1] != b"0" else b"1") + raw[at + 1:])
        code, out = _cli(app_b, "feed", "import", str(tampered))
        assert code != 0 and "签名无效" in out
        # one byte changed anywhere structural: not a feed at all
        broken = tmp_path / "broken.json"
        broken.write_bytes(raw[:1] + b"[" + raw[2:])
        code, out = _cli(app_b, "feed", "import", str(broken))
        assert code != 0 and "不是有效的共享名单文件" in out
        code, out = _cli(app_b, "feed", "import", str(tmp_path / "missing.json"))
        assert code != 0 and "file not found" in out
        assert db.session.scalars(select(RiskFeedEntry)).all() == []

    # A under another publisher id: unknown to B
    _ok(app, "feed", "identity", "--publisher-id", "kameng-z", "--replace")
    stranger = tmp_path / "stranger.json"
    _ok(app, "feed", "export", str(stranger))
    # A again as kameng-a but with a new key pair: not the key B registered
    _ok(app, "feed", "identity", "--publisher-id", "kameng-a", "--replace")
    forged = tmp_path / "forged.json"
    _ok(app, "feed", "export", str(forged))
    # a key B does not hold
    _ok(app, "feed", "key", "rotate", "--key-id", "shared-2")
    foreign_key = tmp_path / "foreign-key.json"
    _ok(app, "feed", "export", str(foreign_key))
    with app_b.app_context():
        code, out = _cli(app_b, "feed", "import", str(stranger))
        assert code != 0 and "未知或已停用的发布方" in out
        code, out = _cli(app_b, "feed", "import", str(forged))
        assert code != 0 and "公钥与登记的不同" in out
    # B learns A's new public key; the feed under shared-2 is then refused for its key id
    a_key = feed.publisher().public_key
    with app_b.app_context():
        from app.risk.feed_models import RiskFeedPartner

        db.session.execute(RiskFeedPartner.__table__.update().values(public_key=a_key))
        db.session.commit()
        code, out = _cli(app_b, "feed", "import", str(foreign_key))
        assert code != 0 and "未知的共享密钥编号" in out
    # an old feed (generated 8 days ago), signed properly: expired
    document, _ = feed.build(now=utcnow() - timedelta(days=8))
    old = tmp_path / "old.json"
    old.write_bytes(document)
    with app_b.app_context():
        code, out = _cli(app_b, "feed", "import", str(old))
        assert code != 0 and "已过期" in out
        assert db.session.scalars(select(RiskFeedEntry)).all() == []


def test_export_waits_for_a_legal_basis_an_identity_and_a_key(app, tmp_path):
    path = tmp_path / "feed.json"
    code, out = _cli(app, "feed", "export", str(path))
    assert code != 0 and "法律依据" in out and not path.exists()
    code, out = _cli(app, "feed", "legal-basis", "--basis", "consent", "--text", "short")
    assert code != 0 and "10-20000" in out
    _ok(app, "feed", "legal-basis", "--basis", "consent", "--text", CONSENT)
    code, out = _cli(app, "feed", "export", str(path))
    assert code != 0 and "发布方身份" in out
    _ok(app, "feed", "identity", "--publisher-id", "kameng-a")
    code, out = _cli(app, "feed", "identity", "--publisher-id", "kameng-a")
    assert code != 0 and "更换须确认" in out
    code, out = _cli(app, "feed", "export", str(path))
    assert code != 0 and "共享密钥" in out
    code, out = _cli(app, "feed", "key", "add", "--key-id", "bad id!", "--secret", "00" * 32)
    assert code != 0 and "密钥编号" in out
    code, out = _cli(app, "feed", "key", "add", "--key-id", "k1", "--secret", "not-hex")
    assert code != 0 and "十六进制" in out
    code, out = _cli(app, "feed", "partner", "add", "--publisher-id", "p", "--public-key", "AAAA", "--key-ids", "k1")
    assert code != 0 and "32 字节" in out
    _ok(app, "feed", "key", "add", "--key-id", "k1", "--secret", "ab" * 32)
    assert _ok(app, "feed", "export", str(path))["entries"] == 0
    # the legal basis is versioned
    assert _ok(app, "feed", "legal-basis", "--basis", "contract", "--text", CONSENT + " v2")["version"] == 2


def test_partner_pulls_over_http_with_a_partner_key_and_since_carries_removals(app, app_b, f):
    a = _publisher_a(app)
    with app_b.app_context():
        b_identity = _ok(app_b, "feed", "identity", "--publisher-id", "kameng-b")
        _subscriber_b(app_b, a)
    # A registers B as a partner and gives it a feed key
    _ok(app, "feed", "partner", "add", "--publisher-id", "kameng-b", "--public-key", b_identity["public_key"],
        "--key-ids", "shared-1")
    partner_key = _ok(app, "feed", "partner", "key", "kameng-b")
    assert partner_key["scope"] == "risk_feed"
    agent_key, agent_secret = new_key(f.agent(balance=0))
    phone_entry = db.session.scalar(select(RiskListShare.entry_id).order_by(RiskListShare.entry_id))
    db.session.rollback()
    with served(app) as base_url:
        # an ordinary agent key: 403 with a JSON error; a partner key cannot call the agent endpoints either
        r = api_client(base_url, agent_key, agent_secret).request("GET", "/open/v1/risk/feed")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_scope"
        partner = api_client(base_url, type("K", (), {"app_key": partner_key["app_key"]}), partner_key["secret"])
        r = partner.balance()
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_scope"
        r = partner.request("GET", "/open/v1/risk/feed", params={"since": "yesterday"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = partner.request("GET", "/open/v1/risk/feed")
        assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
        _assert_no_personal_value(r.content)
        with app_b.app_context():
            summary = _ok(app_b, "feed", "pull", base_url, "--app-key", partner_key["app_key"],
                          "--secret", partner_key["secret"])
            assert summary["added"] == 3
            generated = summary["generated_at"]
        # A removes the phone; an incremental pull carries the removal only
        _ok(app, "list", "remove", str(phone_entry))
        with app_b.app_context():
            summary = _ok(app_b, "feed", "pull", base_url, "--app-key", partner_key["app_key"],
                          "--secret", partner_key["secret"], "--since", generated)
            assert summary["entries"] == 1 and summary["removed"] == 1
            live = db.session.scalars(select(RiskFeedEntry.kind).where(RiskFeedEntry.removed_at.is_(None))).all()
            assert sorted(live) == ["device", "id_number"]
            # the phone no longer holds a checkout on B
            h.setup_sandbox()
            product = f.product(secrets=1)
            client_b = app_b.test_client()
            r = _checkout_b(client_b, product, PHONE)
            assert _pay_and_state(client_b, r.get_json()["order_no"]) == "delivered"
    db.session.rollback()
    pulls = [json.loads(e.new_value) for e in db.session.scalars(
        select(AuditEntry).where(AuditEntry.action == "risk_feed.export").order_by(AuditEntry.id))]
    assert [p["entries"] for p in pulls] == [3, 3, 1]  # the direct pull, B's pull, the incremental pull
    assert all(p["destination"] == f"partner:kameng-b key {partner_key['app_key']}" for p in pulls)


def test_feed_screens_record_the_legal_basis_and_show_the_log(app, f, client, tmp_path):
    f.user("feed-admin", role="Admin")
    f.login(client, "feed-admin")
    page = client.get("/risk-feed/")
    assert page.status_code == 200 and "尚未登记共享的法律依据" in page.get_data(as_text=True)
    r = client.post("/risk-feed/export")
    assert r.status_code == 409 and "尚未登记共享的法律依据，不能导出" in r.get_data(as_text=True)
    r = client.post("/risk-feed/legal-basis", data={"basis": "consent", "text": CONSENT})
    assert r.status_code == 302
    assert client.post("/risk-feed/identity", data={"publisher_id": "kameng-a"}).status_code == 302
    r = client.post("/risk-feed/keys/rotate")
    assert r.status_code == 200 and "new-key-secret" in r.get_data(as_text=True)
    assert client.post("/risk-feed/legal-basis", data={"basis": "nope", "text": CONSENT}).status_code == 400
    r = client.post("/risk-feed/export")
    assert r.status_code == 200 and json.loads(r.data)["feed"]["publisher"] == "kameng-a"
    text = client.get("/risk-feed/").get_data(as_text=True)
    assert CONSENT in text and "feed-admin" in text and "kameng-a" in text
    # the service's refusal reads in the staff member's language
    assert client.get("/lang/en").status_code == 302
    r = client.post("/risk-feed/import", data={"file": (tmp_path.joinpath("x").open("wb+"), "x.json")},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and "The file is empty" in r.get_data(as_text=True)
    assert client.get("/risk-feed-entries/list/").status_code == 200
