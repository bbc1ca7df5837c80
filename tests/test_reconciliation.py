"""对账: statements (sandbox CSV, Alipay GBK trade bill, WeChat Pay trade bill) matched against our payments,
the three kinds of differences, refunds, the admin screens, the CLI, and the daily sandbox run."""
from __future__ import annotations

import io
import json
import secrets
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.clock import utcnow
from app.orders import service as orders
from app.payments import reconciliation
from app.payments import service as payments
from app.payments.channels.base import Notification
from app.payments.models import Payment, PaymentNotification, ReconciliationDifference, StatementImport
from tests import payments_helpers as h
from tests.test_topups import fresh_login


def _paid(f, channel: str, product, trade_no: str | None = None) -> tuple[str, str, int]:
    """A storefront order paid through `channel` by the notification path: (order_no, trade_no, amount)."""
    order = orders.place_guest_order(product.id, 1, "13800000000", channel)
    payments.db.session.commit()
    trade_no = trade_no or f"{channel[:2].upper()}{secrets.token_hex(8)}"
    outcome = payments.apply_payment(channel, Notification(order.order_no, trade_no, order.amount, "CNY", True))
    assert outcome == "accepted"
    return order.order_no, trade_no, order.amount


def _diffs(row: StatementImport) -> set[tuple]:
    from app.extensions import db

    return {(d.kind, d.trade_no, d.order_no, d.statement_amount, d.our_amount) for d in db.session.scalars(
        select(ReconciliationDifference).where(ReconciliationDifference.import_id == row.id))}


@pytest.fixture
def world(app, db, f):
    """Per channel: four paid orders (ok, differs, missing there, outside the period) and one refunded."""
    h.setup_all()
    product = f.product(face_price=5000, cost=4000, secrets=30)
    data = {}
    for channel in ("sandbox", "alipay", "wechatpay"):
        old = _paid(f, channel, product)
        db.session.execute(update(Payment).where(Payment.trade_no == old[1])
                           .values(created_at=utcnow() - timedelta(days=3)))
        db.session.commit()
        # created in this order, so the one missing there lies inside the period the statement spans
        ok, missing_there, differs, refunded = (_paid(f, channel, product) for _ in range(4))
        order_id = db.session.scalar(select(payments.Order.id).where(payments.Order.order_no == refunded[0]))
        h.channel_answers_refund(payments.refund_order(order_id, "客户申请退款", None))
        data[channel] = {"ok": ok, "differs": differs, "refunded": refunded, "missing_there": missing_there,
                         "old": old}
    return data


def _expected(w, ghost_trade, ghost_order):
    return {
        ("missing_here", ghost_trade, ghost_order, 1234, None),
        ("missing_there", w["missing_there"][1], w["missing_there"][0], None, 5000),
        ("amount_differs", w["differs"][1], w["differs"][0], 4900, 5000),
    }


def test_sandbox_csv_produces_each_kind_of_difference(app, db, world):
    w = world["sandbox"]
    csv = ("trade_no,order_no,amount,kind\n"
           f"{w['ok'][1]},{w['ok'][0]},5000,payment\n"
           f"{w['differs'][1]},{w['differs'][0]},4900,payment\n"
           f"{w['refunded'][1]},{w['refunded'][0]},5000,payment\n"
           f"{w['refunded'][1]},{w['refunded'][0]},5000,refund\n"
           "SBXGHOST001,26010100000000001,1234,payment\n")
    row = reconciliation.import_statement("sandbox", csv.encode(), filename="sandbox.csv")
    assert _diffs(row) == _expected(w, "SBXGHOST001", "26010100000000001")
    assert (row.lines, row.matched, row.differences, row.source) == (5, 3, 3, "upload")
    assert row.period_start is not None and row.period_end > row.period_start


def _alipay_bill(w) -> bytes:
    header = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,"
              "订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,"
              "券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注")

    def line(trade, order, kind, amount):
        return (f"{trade}\t,{order}\t,{kind},点卡,2026-01-01 10:00:00,2026-01-01 10:00:05,,,,,buyer@example.com,"
                f"{amount},{amount},0.00,0.00,0.00,0.00,0.00,,0.00,0.00,,0.00,0.00,")
    text = "\n".join([
        "#支付宝业务明细查询",
        "#账号：[20880000000000000156]",
        "#起始日期：[2026年01月01日 00:00:00]   终止日期：[2026年01月02日 00:00:00]",
        "#-----------------------------------------业务明细列表----------------------------------------",
        header,
        line(w["ok"][1], w["ok"][0], "交易", "50.00"),
        line(w["differs"][1], w["differs"][0], "交易", "49.00"),
        line(w["refunded"][1], w["refunded"][0], "交易", "50.00"),
        line(w["refunded"][1], w["refunded"][0], "退款", "-50.00"),
        line("2026010122001400000000000099", "26010100000000002", "交易", "12.34"),
        "#-----------------------------------------业务明细列表结束------------------------------------",
        "#交易合计：4笔，商家实收共211.34元，商家优惠共0.00元",
        "#退款合计：1笔，商家实收退款共-50.00元，商家优惠退款共0.00元",
        "#导出时间：[2026年01月02日 09:00:00]",
    ]) + "\n"
    return text.encode("gbk")


def test_alipay_gbk_trade_bill_produces_each_kind_of_difference(app, db, world):
    w = world["alipay"]
    content = _alipay_bill(w)
    with pytest.raises(UnicodeDecodeError):
        content.decode("utf-8")  # really GBK
    row = reconciliation.import_statement("alipay", content, filename="20880000000000000156_20260101_业务明细.csv")
    assert _diffs(row) == _expected(w, "2026010122001400000000000099", "26010100000000002")
    assert (row.lines, row.matched, row.differences) == (5, 3, 3)


def _wechat_bill(w) -> bytes:
    header = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
              "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
              "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注")

    def line(trade, order, state, amount, refund="0.00"):
        cells = ["2026-01-01 10:00:00", "wx8888888888888888", "1900000109", "0", "", trade, order,
                 "oUpF8uMuAJO_M2pxb1Q", "NATIVE", state, "CMB_DEBIT", "CNY", amount, "0.00",
                 "0" if state != "REFUND" else "50000000001",
                 "0" if state != "REFUND" else f"R{order}", refund, "0.00", "", "", "点卡", "", "0.30000", "0.60%",
                 amount, refund, ""]
        return ",".join("`" + c for c in cells)
    text = "\n".join([
        header,
        line(w["ok"][1], w["ok"][0], "SUCCESS", "50.00"),
        line(w["differs"][1], w["differs"][0], "SUCCESS", "49.00"),
        line(w["refunded"][1], w["refunded"][0], "SUCCESS", "50.00"),
        line(w["refunded"][1], w["refunded"][0], "REFUND", "50.00", "50.00"),
        line("4200002026010100000000000099", "26010100000000003", "SUCCESS", "12.34"),
        "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额",
        "`5,`211.34,`50.00,`0.00,`1.27000,`211.34,`50.00",
    ]) + "\n"
    return ("\ufeff" + text).encode("utf-8")


def test_wechat_trade_bill_produces_each_kind_of_difference(app, db, world):
    w = world["wechatpay"]
    row = reconciliation.import_statement("wechatpay", _wechat_bill(w), filename="wechat-20260101.csv")
    assert _diffs(row) == _expected(w, "4200002026010100000000000099", "26010100000000003")
    assert (row.lines, row.matched, row.differences) == (5, 3, 3)


def test_refund_differences_and_an_explicit_day(app, db, world):
    w = world["sandbox"]
    today = reconciliation.china_today()
    # The refund is missing from the statement, a refund we never made is in it, and a refund amount differs.
    csv = ("trade_no,order_no,amount,kind\n"
           f"{w['ok'][1]},{w['ok'][0]},5000,payment\n"
           f"{w['differs'][1]},{w['differs'][0]},5000,payment\n"
           f"{w['refunded'][1]},{w['refunded'][0]},5000,payment\n"
           f"{w['missing_there'][1]},{w['missing_there'][0]},5000,payment\n"
           f"{w['ok'][1]},{w['ok'][0]},5000,refund\n")
    row = reconciliation.import_statement("sandbox", csv.encode(), day=today)
    assert _diffs(row) == {("refund_missing_here", w["ok"][1], w["ok"][0], 5000, None),
                           ("refund_missing_there", w["refunded"][1], w["refunded"][0], None, 5000)}
    assert row.period_start == reconciliation.day_bounds(today)[0]
    # A day three days ago holds only the old payment: everything else is missing there... from that day's view.
    old_day = (utcnow() - timedelta(days=3) + reconciliation.CHANNEL_UTC_OFFSET).date()
    row = reconciliation.import_statement("sandbox", f"trade_no,order_no,amount\n{w['old'][1]},{w['old'][0]},5000\n"
                                          .encode(), day=old_day)
    assert _diffs(row) == set() and (row.lines, row.matched) == (1, 1)


@pytest.mark.parametrize("channel,content", [
    ("sandbox", b"what,is,this\n1,2,3\n"),
    ("sandbox", b"trade_no,order_no,amount\nX,Y,12.5\n"),
    ("alipay", "#只有注释\n".encode("gbk")),
    ("alipay", b"a,b,c\n1,2,3\n"),
    ("wechatpay", b"a,b\n"),
    ("sandbox", b""),
])
def test_malformed_statements_are_refused_and_write_nothing(app, db, channel, content):
    from app.errors import KamengError

    try:
        row = reconciliation.import_statement(channel, content)
    except KamengError:
        row = None
    if row is not None:  # an Alipay file of notes only is an empty statement: imported, zero lines
        assert row.lines == 0 and row.differences == 0
    else:
        assert db.session.scalar(select(func.count()).select_from(StatementImport)) == 0


def test_admin_uploads_a_statement_and_reads_the_differences(app, db, f, client, world):
    w = world["alipay"]
    admin = f.user(role="Admin")
    fresh_login(f, client, admin.username)
    r = client.post("/reconciliation/upload", data={
        "channel": "alipay", "day": "",
        "statement": (io.BytesIO(_alipay_bill(w)), "20880000000000000156_20260101_业务明细.csv")},
        content_type="multipart/form-data")
    assert r.status_code == 302, r.text[:500]
    row = db.session.scalar(select(StatementImport))
    assert r.headers["Location"].endswith(f"/reconciliation/{row.id}")
    assert row.imported_by_id == admin.id and row.differences == 3
    page = client.get(f"/reconciliation/{row.id}").text
    for kind in ("missing_here", "missing_there", "amount_differs"):
        assert f'data-kind="{kind}"' in page
    assert w["missing_there"][1] in page and "¥49.00" in page and "金额不一致" in page
    listing = client.get("/reconciliation/").text
    assert f'data-import-id="{row.id}"' in listing and "支付宝" in listing

    bad = client.post("/reconciliation/upload", data={"channel": "wechatpay", "statement": (io.BytesIO(b"x,y\n"),
                                                                                          "x.csv")},
                      content_type="multipart/form-data")
    assert bad.status_code == 302 and db.session.scalar(select(func.count()).select_from(StatementImport)) == 1

    agent = f.agent()
    other = fresh_login(f, app.test_client(), agent.name)
    assert other.get("/reconciliation/").status_code in (302, 403)
    assert other.get(f"/reconciliation/{row.id}").status_code in (302, 403)


def test_cli_reconcile(app, db, world, tmp_path):
    w = world["wechatpay"]
    path = tmp_path / "bill.csv"
    path.write_bytes(_wechat_bill(w))
    result = app.test_cli_runner().invoke(args=["kameng", "reconcile", "--channel", "wechatpay", str(path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["by_kind"] == {"missing_here": 1, "missing_there": 1, "amount_differs": 1}
    assert (out["lines"], out["matched"]) == (5, 3)
    bad = app.test_cli_runner().invoke(args=["kameng", "reconcile", "--channel", "alipay", str(path)])
    assert bad.exit_code != 0


def _yesterday_window():
    day = reconciliation.china_today() - timedelta(days=1)
    start, _ = reconciliation.day_bounds(day)
    return day, start + timedelta(hours=12)


def test_daily_sandbox_run_through_the_worker(app, db, f, client, redis_url):
    """The sandbox's statement is its log of verified notifications: a notification that left no payment is
    missing here, a payment without a notification is missing there; a rerun replaces the day's result."""
    from app.payments.models import WalletTopUp
    from tests.test_topups import KEY, _notify
    from workers import jobs
    from workers.queues import enqueue
    from workers.schedule import PERIODIC, build_cron

    payments.save_channel("sandbox", True, {"key": KEY})
    product = f.product(face_price=5000, cost=4000, secrets=10)
    day, noon = _yesterday_window()
    numbers = []
    for _ in range(3):
        order, pay_url = payments.checkout(product.id, 1, "13800000000", "secret-pass", "sandbox", "http://x")
        numbers.append(order.order_no)
    ok, _ = _notify(client, numbers[0], 5000)
    ok2, trade_differs = _notify(client, numbers[1], 5000)
    bad, trade_mismatch = _notify(client, numbers[2], 4000)  # the channel says it took ¥40; we recorded nothing
    assert (ok.text, ok2.text, bad.status_code) == ("success", "success", 400)
    # A payment recorded without any notification (as if written by hand), and a tampered amount.
    agent = f.agent()
    topup = WalletTopUp(topup_no="T990101000000000001", agent_id=agent.id, amount=700, channel="sandbox",
                        status="paid")
    db.session.add(topup)
    db.session.flush()
    db.session.add(Payment(channel="sandbox", trade_no="SBXNONOTE", topup_id=topup.id, amount=700, status="paid"))
    db.session.execute(update(Payment).where(Payment.trade_no == trade_differs).values(amount=5100))
    db.session.execute(update(Payment).values(created_at=noon))
    db.session.execute(update(PaymentNotification).values(created_at=noon))
    db.session.commit()

    assert {p.name: p.cron for p in PERIODIC}["channel-reconcile"] == "30 2 * * *"
    from tests.test_cards import configured
    from workers.queues import redis_connection

    with configured(app, REDIS_URL=redis_url):
        cron = build_cron(app, redis_connection())
        assert "channel-reconcile" in {job.name for job in cron.get_jobs()}
        enqueue(jobs.reconcile_sandbox_daily, job_id="sandbox-reconcile-test", queue="low")
        assert app.test_cli_runner().invoke(args=["kameng", "worker", "--burst", "--queues", "low"]).exit_code == 0
        db.session.expire_all()
        [row] = db.session.scalars(select(StatementImport))
        assert (row.source, row.channel, row.period_start) == ("scheduled", "sandbox",
                                                               reconciliation.day_bounds(day)[0])
        expected = {("missing_here", trade_mismatch, numbers[2], 4000, None),
                    ("missing_there", "SBXNONOTE", "T990101000000000001", None, 700),
                    ("amount_differs", trade_differs, numbers[1], 5000, 5100)}
        assert _diffs(row) == expected and (row.lines, row.matched) == (3, 1)

        enqueue(jobs.reconcile_sandbox_daily, job_id="sandbox-reconcile-again", queue="low")
        assert app.test_cli_runner().invoke(args=["kameng", "worker", "--burst", "--queues", "low"]).exit_code == 0
        db.session.expire_all()
        assert db.session.scalar(select(func.count()).select_from(StatementImport)) == 1
        assert _diffs(row) == expected
