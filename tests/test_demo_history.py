"""`flask kameng demo --orders N`: a year of history whose money, stock, commissions and rollups hold together.

Given the demo data, when a history of N orders is generated, then: N orders spread over a year with the
seasonal shape asked for (a September phone-credit spike among 18-22-year-olds), agents grown into a tree with
one large branch, every delivered order with one sale journal posting exactly `sale_lines`, commissions as the
uplines' tiers pay them, withdrawals paid, rejected and pending review with the real flow's journals, card
secrets sold once each with stock left, cached balances equal to their postings (the ledger check) and no wallet
ever negative, and rollups equal to the orders they summarize and to a fresh rebuild.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from app import crypto
from app.agents.models import Agent
from app.analytics import history
from app.analytics import service as rollups
from app.analytics.models import MoneyDaily, ProfileDaily, SalesDaily
from app.catalog.models import CardSecret, Category, Product
from app.clock import to_local, utcnow
from app.demo import load_demo
from app.errors import KamengError
from app.extensions import db as _db
from app.ledger import service as ledger
from app.ledger.invariants import check_ledger
from app.ledger.models import Account, Journal, Posting
from app.money import apply_rate
from app.network import commissions
from app.network import withdrawals as withdrawal_service
from app.network.models import Commission, RealNameVerification, Withdrawal
from app.orders.models import Order
from app.orders.service import sale_lines
from app.payments.models import Payment, Refund

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
PG = pytest.mark.parametrize("app", ["postgresql"], indirect=True)
N = 2000
END = datetime(2026, 11, 20, 14, 0, 0)  # a fixed end: the same seed then gives the same history


@pytest.fixture(autouse=True)
def _no_fold_lag(app, monkeypatch):
    """The money-flow fold skips journals younger than its lag (30 s): the demo's own top-ups, just posted."""
    monkeypatch.setitem(app.config, "ROLLUP_MONEY_LAG_SECONDS", 0)


def _generate(n: int = N, seed: int = history.DEFAULT_SEED, end: datetime = END, **kw) -> history.HistoryReport:
    load_demo("demo-pass-1")
    return history.generate(n, seed=seed, end=end, check_references=True, **kw)


def _grouped(table: str) -> dict[tuple, tuple]:
    t = rollups.TABLES[table]
    _db.session.rollback()
    rows = _db.session.execute(text(
        f"SELECT {', '.join(t.key)}, {', '.join(f'sum({c})' for c in t.sums)} FROM {t.name}"
        f" GROUP BY {', '.join(t.key)}")).all()
    return {tuple(str(v) for v in row[:len(t.key)]): tuple(int(v) for v in row[len(t.key):])
            for row in rows if any(row[len(t.key):])}


@BOTH
def test_history_is_a_consistent_year(app):
    report = _generate()

    # Counts: exactly N orders, most delivered, a few refunded, failed upstream (refunded) and closed unpaid.
    orders = list(_db.session.scalars(select(Order)))
    assert report.orders == len(orders) == N
    statuses = Counter(o.status for o in orders)
    assert statuses["delivered"] > 0.9 * N
    assert 0 < statuses["refunded"] < 0.06 * N and 0 < statuses["closed"] < 0.05 * N
    assert any(o.upstream_status == "failed" and o.status == "refunded" for o in orders)
    # Personal data as the app writes it: contacts and top-up accounts encrypted, their blind indexes filled.
    assert all(o.contact_hash == crypto.pii_hash(o.contact) and o.account_hash == crypto.pii_hash(o.account)
               for o in orders)
    raw = _db.session.execute(text("SELECT contact, account FROM orders")).all()
    assert any(r.contact for r in raw) and any(r.account for r in raw)
    assert all(v is None or v.startswith("gAAAAA") for r in raw for v in r)
    assert sum(o.amount for o in orders if o.status == "delivered") == report.gmv
    channels = Counter(o.channel for o in orders)
    assert {"wallet", "alipay", "wechatpay", "sandbox"} <= set(channels)
    kinds = Counter(o.product.kind for o in orders)
    assert kinds["card"] > 0.3 * N and kinds["direct"] > 0.2 * N

    # Spread over the year ending at END, every China month present, more orders towards the end (growth).
    first, last = min(o.created_at for o in orders), max(o.created_at for o in orders)
    assert END - timedelta(days=366) <= first < END - timedelta(days=350) and END - timedelta(days=2) < last <= END
    months = Counter(to_local(o.created_at).strftime("%Y-%m") for o in orders)
    assert len(months) == 13 and min(months[m] for m in sorted(months)[1:-1]) > 0
    assert months["2026-10"] > 1.5 * months["2025-12"]
    assert months["2026-11"] / 20 > months["2026-10"] / 31  # Double 11 lifts November above October per day

    # Agents grew into a tree 4 levels deep; the demo's agent1 leads the largest branch.
    agents = list(_db.session.scalars(select(Agent)))
    assert report.agents == 20 and len(agents) == 24
    assert max(a.depth for a in agents) == 3
    branch = {a.name: sum(1 for b in agents if b.path.startswith(a.path)) for a in agents if a.depth == 0}
    assert branch["agent1"] == max(branch.values()) and branch["agent1"] >= 6
    assert all(a.path == (f"{a.parent.path}{a.id}/" if a.parent else f"/{a.id}/") for a in agents)
    records = list(_db.session.scalars(select(RealNameVerification)))
    assert len(records) >= 10 and all(r.status == "verified" for r in records)
    sample = records[0]
    assert sample.id_number_masked == crypto.mask(crypto.decrypt(sample.id_number_enc))
    assert sample.id_number_hash == crypto.keyed_hash("realname-id", crypto.decrypt(sample.id_number_enc))

    # The September phone-credit spike among 18-22-year-olds (students), in the orders themselves...
    phone = _db.session.scalar(select(Category.id).where(Category.name == "话费充值"))
    per_month = Counter()
    for o in orders:
        rn = o.agent_id and _db.session.scalar(select(RealNameVerification.birth_year)
                                               .where(RealNameVerification.agent_id == o.agent_id))
        local = to_local(o.created_at)
        if rn and 18 <= local.year - rn <= 22 and o.product.category_id == phone and o.status == "delivered":
            per_month[local.strftime("%Y-%m")] += 1
    others = [per_month[m] for m in months if m not in ("2026-09", "2025-11", "2026-11")]
    assert per_month["2026-09"] > 3 * max(1, sum(others) / len(others))
    # ... and in the user-profile rollup the dashboard reads (the 18-24 band buying 话费充值 by month).
    band = defaultdict(int)
    for day, gmv in _db.session.execute(select(ProfileDaily.day, ProfileDaily.gmv).where(
            ProfileDaily.scope_id == 0, ProfileDaily.dimension == "age_band", ProfileDaily.value == "18-24",
            ProfileDaily.category_id == phone)):
        band[day.strftime("%Y-%m")] += gmv
    rest = [band[m] for m in months if m not in ("2026-09", "2025-11", "2026-11")]
    assert band["2026-09"] > 3 * max(1, sum(rest) / len(rest))

    # The ledger: every invariant (cached balances = postings, no negative wallet, one sale per delivered order,
    # no secret in two orders ...), checked explicitly here as well as by the fixture.
    assert check_ledger() == []

    # Every delivered order: exactly one sale journal, posting what sale_lines makes (merged as post_journal does).
    codes = dict(_db.session.execute(select(Account.id, Account.code)).all())
    postings = defaultdict(list)
    for journal_id, account_id, amount in _db.session.execute(select(Posting.journal_id, Posting.account_id,
                                                                     Posting.amount)):
        postings[journal_id].append((codes[account_id], amount))
    sales = defaultdict(list)
    for j in _db.session.scalars(select(Journal).where(Journal.kind == "sale")):
        sales[j.order_id].append(j)
    for o in orders:
        if o.status != "delivered":
            continue
        assert len(sales[o.id]) == 1, o.order_no
        j = sales[o.id][0]
        funding = (ledger.agent_account_code(o.agent_id, "wallet") if o.channel == "wallet"
                   and o.product.kind == "card" else "platform:buyer_funds")
        expected = sorted((ln.account_code, ln.amount) for ln in ledger._merge(sale_lines(o, funding)))
        assert j.idempotency_key == f"order:{o.order_no}:sale" and sorted(postings[j.id]) == expected
        assert j.content_hash == ledger._content_hash("sale", ledger._merge(sale_lines(o, funding)))
        assert j.created_at == o.delivered_at
    # Refunded after delivery: the sale reversed; the money back where it came from, once.
    refunds = {r.order_id: r for r in _db.session.scalars(select(Refund))}
    for o in orders:
        if o.status == "refunded":
            assert refunds[o.id].amount == o.amount
            assert refunds[o.id].destination == ("wallet" if o.channel == "wallet" else o.channel)
    # Channel orders paid once, through a payment journal of their own.
    payments = {p.order_id: p for p in _db.session.scalars(select(Payment).where(Payment.order_id.is_not(None)))}
    keys = set(_db.session.scalars(select(Journal.idempotency_key).where(Journal.kind == "payment")))
    for o in orders:
        if o.channel != "wallet" and o.status != "closed":
            p = payments[o.id]
            assert p.amount == o.amount and f"pay:{o.channel}:{p.trade_no}" in keys
            assert p.status == ("paid" if o.status == "delivered" else "refunded")
        elif o.status == "closed":
            assert o.id not in payments and not sales[o.id]

    # Card orders: their own secrets (sold, or void once refunded), each decrypting to its hash; stock left.
    secrets_by_order = defaultdict(list)
    for s in _db.session.scalars(select(CardSecret).where(CardSecret.order_id.is_not(None))):
        secrets_by_order[s.order_id].append(s)
    for o in orders:
        if o.product.kind == "card" and o.status in ("delivered", "refunded"):
            got = secrets_by_order[o.id]
            assert len(got) == o.quantity
            assert {s.status for s in got} == ({"sold"} if o.status == "delivered" else {"void"})
    s = secrets_by_order[next(o.id for o in orders if o.product.kind == "card" and o.status == "delivered")][0]
    assert crypto.keyed_hash(s.product_id, crypto.decrypt(s.secret_enc)) == s.secret_hash
    left = dict(_db.session.execute(select(CardSecret.product_id, func.count()).where(
        CardSecret.status == "available").group_by(CardSecret.product_id)).all())
    card_products = list(_db.session.scalars(select(Product.id).where(Product.kind == "card")))
    assert all(left.get(pid, 0) >= 6 for pid in card_products)

    # Commissions: as the uplines' tiers pay them (app.network.commissions), pending ones = pending balances.
    rows = defaultdict(list)
    for c in _db.session.scalars(select(Commission)):
        rows[c.order_id].append(c)
    assert rows
    for o in orders:
        if o.agent_id is None or o.status not in ("delivered", "refunded") or o.upstream_status == "failed":
            assert not rows[o.id]
            continue
        plan = [(b.agent_id, b.level, apply_rate(o.amount, b.rate_bp))
                for b in commissions.beneficiaries(o.upline_path)]
        assert sorted((c.agent_id, c.level, c.amount) for c in rows[o.id]) == sorted(p for p in plan if p[2] > 0)
        assert {c.status for c in rows[o.id]} <= ({"reversed"} if o.status == "refunded" else {"pending", "settled"})
    pending = defaultdict(int)
    for cs in rows.values():
        for c in cs:
            if c.status == "pending":
                pending[c.agent_id] += c.amount
            if c.status == "settled":
                assert c.settlement_run_id is not None and c.settled_at >= c.settle_after
    for a in agents:
        assert ledger.agent_balances(a.id)["pending"] == pending[a.id]

    # Rollups: GMV per China day at the platform scope and in agent1's branch equal the orders they summarize ...
    def gmv_by_day(scope: int) -> dict:
        return {str(d): (int(n), int(g)) for d, n, g in _db.session.execute(
            select(SalesDaily.day, func.sum(SalesDaily.orders), func.sum(SalesDaily.gmv))
            .where(SalesDaily.scope_id == scope).group_by(SalesDaily.day)) if n or g}

    agent1 = next(a for a in agents if a.name == "agent1")
    for scope, members in ((0, orders), (agent1.id, [o for o in orders if (o.upline_path or "").startswith(
            agent1.path)])):
        expected = defaultdict(lambda: [0, 0])
        for o in members:
            if o.status == "delivered":
                day = str(to_local(o.delivered_at).date())
                expected[day][0] += 1
                expected[day][1] += o.amount
        assert gmv_by_day(scope) == {d: tuple(v) for d, v in expected.items()}
    money = dict(_db.session.execute(select(MoneyDaily.flow, func.sum(MoneyDaily.amount))
                                     .where(MoneyDaily.scope_id == 0).group_by(MoneyDaily.flow)).all())
    every = [c for cs in rows.values() for c in cs]
    assert money["commission_accrued"] == sum(c.amount for c in every)
    assert money["commission_settled"] == sum(c.amount for c in every if c.status == "settled")
    _assert_withdrawals(report, agents, postings, codes)

    # ... and to a fresh rebuild of the same days.
    before = {name: _grouped(name) for name in rollups.TABLES}
    rollups.rebuild(report.start, report.end)
    assert {name: _grouped(name) for name in rollups.TABLES} == before

    # A request the history left pending review goes on through the real flow: rejected, the money back.
    waiting = _db.session.scalar(select(Withdrawal).where(Withdrawal.status == "pending_review").limit(1))
    frozen = ledger.agent_balances(waiting.agent_id)["frozen"]
    withdrawal_service.reject(waiting.id, None, "测试驳回")
    assert ledger.agent_balances(waiting.agent_id)["frozen"] == frozen - waiting.amount
    assert check_ledger() == []


def _assert_withdrawals(report: history.HistoryReport, agents: list[Agent], postings: dict, codes: dict) -> None:
    """Withdrawals: verified agents of tiers that may withdraw, the fee rule of app.network.withdrawals, the
    journals it posts (freeze, then paid or release), wallets never negative, and the money flows they make."""
    rows = list(_db.session.scalars(select(Withdrawal).order_by(Withdrawal.created_at)))
    by_status = Counter(w.status for w in rows)
    assert set(by_status) == {"paid", "rejected", "pending_review"} and report.withdrawals == dict(by_status)
    assert by_status["paid"] > by_status["rejected"] + by_status["pending_review"]
    verified = {r.agent_id: r for r in _db.session.scalars(select(RealNameVerification))}
    journals = {j.idempotency_key: j for j in _db.session.scalars(select(Journal).where(
        Journal.kind.in_(("withdrawal_freeze", "withdrawal_paid", "withdrawal_release"))))}
    agent_by_id = {a.id: a for a in agents}
    expected_keys = set()

    def posted(key: str, kind: str, lines: list[tuple[str, int]], at: datetime | None) -> None:
        j = journals[key]
        assert j.kind == kind and sorted(postings[j.id]) == sorted(lines) and sum(a for _c, a in lines) == 0
        assert j.content_hash == ledger._content_hash(kind, [ledger.Line(c, a) for c, a in lines])
        assert at is None or j.created_at == at
        expected_keys.add(key)

    frozen = defaultdict(int)
    for w in rows:
        agent = agent_by_id[w.agent_id]
        rec = verified[w.agent_id]
        assert agent.tier.may_withdraw and rec.status == "verified" and rec.verified_at <= w.created_at
        assert w.bank_card_masked == rec.bank_card_masked
        assert w.amount >= agent.tier.min_withdrawal
        assert w.fee == apply_rate(w.amount, agent.tier.withdrawal_fee_bp) and w.net_amount == w.amount - w.fee > 0
        assert w.withdrawal_no.startswith("W") and len(w.withdrawal_no) == 19
        wallet, fz = (ledger.agent_account_code(w.agent_id, k) for k in ("wallet", "frozen"))
        posted(f"withdrawal:{w.withdrawal_no}:freeze", "withdrawal_freeze", [(wallet, -w.amount), (fz, w.amount)],
               w.created_at)
        if w.status == "paid":
            assert w.created_at + timedelta(hours=12) < w.paid_at < w.created_at + timedelta(days=2)
            assert w.reviewed_at <= w.paid_at and w.payout_ref == w.withdrawal_no
            posted(f"withdrawal:{w.withdrawal_no}:paid", "withdrawal_paid",
                   [(fz, -w.amount), ("platform:payouts", w.net_amount), ("platform:fees", w.fee)], w.paid_at)
        elif w.status == "rejected":
            assert w.review_reason and w.reviewed_at > w.created_at and w.paid_at is None
            posted(f"withdrawal:{w.withdrawal_no}:release", "withdrawal_release",
                   [(fz, -w.amount), (wallet, w.amount)], w.reviewed_at)
        else:
            assert w.reviewed_at is None and w.paid_at is None and w.created_at > END - timedelta(days=2)
            frozen[w.agent_id] += w.amount
    assert set(journals) == expected_keys
    for a in agents:
        assert ledger.agent_balances(a.id)["frozen"] == frozen[a.id]

    # No wallet (nor frozen account) below zero at any moment of the history: postings in time order.
    running = defaultdict(int)
    for code, amount, _at, _id in _db.session.execute(
            select(Account.code, Posting.amount, Journal.created_at, Journal.id)
            .join(Posting, Posting.account_id == Account.id).join(Journal, Journal.id == Posting.journal_id)
            .where(Account.kind.in_(("wallet", "frozen"))).order_by(Journal.created_at, Journal.id)):
        running[code] += amount
        assert running[code] >= 0, (code, _at)

    # The money flows, computed here from the rows: requested = every request's amount (the frozen credit), paid =
    # the net sent to the bank, fee = the platform's fee of the paid ones; at the platform and in agent1's branch.
    agent1 = next(a for a in agents if a.name == "agent1")
    for scope, members in ((0, rows), (agent1.id, [w for w in rows
                                                   if agent_by_id[w.agent_id].path.startswith(agent1.path)])):
        money = dict(_db.session.execute(select(MoneyDaily.flow, func.sum(MoneyDaily.amount)).where(
            MoneyDaily.scope_id == scope, MoneyDaily.flow.like("withdrawal_%")).group_by(MoneyDaily.flow)).all())
        paid = [w for w in members if w.status == "paid"]
        assert {k: int(v) for k, v in money.items() if v} == {
            k: v for k, v in (("withdrawal_requested", sum(w.amount for w in members)),
                              ("withdrawal_paid", sum(w.net_amount for w in paid)),
                              ("withdrawal_fee", sum(w.fee for w in paid))) if v}
    assert int(_db.session.scalar(select(func.sum(MoneyDaily.amount)).where(
        MoneyDaily.scope_id == 0, MoneyDaily.flow == "withdrawal_paid"))) > 0


@PG
def test_same_seed_same_history_and_a_second_run_adds_another(app):
    from tests.conftest import _clean

    first = _generate(300, seed=7, rollups=False)

    def fingerprint() -> list[tuple]:
        _db.session.rollback()
        return list(_db.session.execute(select(
            Order.order_no, Order.agent_id, Order.product_id, Order.quantity, Order.amount, Order.status,
            Order.channel, Order.created_at, Order.delivered_at).order_by(Order.order_no)).all())

    before = fingerprint()
    _db.session.rollback()  # let go of the orders table: TRUNCATE waits for every reader
    _clean(_db)
    ledger.ensure_platform_accounts()
    _db.session.commit()
    again = _generate(300, seed=7, rollups=False)
    assert fingerprint() == before and again.gmv == first.gmv and again.run == first.run == 1

    # A second history on top: new agents and order numbers (run 2), nothing collides, the ledger still holds.
    second = _generate(300, seed=7, rollups=False)
    assert second.run == 2 and _db.session.scalar(select(func.count()).select_from(Order)) == 600
    assert _db.session.scalar(select(func.count()).select_from(Agent)) == 4 + 2 * second.agents
    assert check_ledger() == []


@BOTH
def test_cli_demo_with_orders(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["kameng", "demo", "--password", "demo-pass-1", "--sandbox-key", "sandbox-key-1",
                                 "--orders", "400", "--seed", "11"])
    assert result.exit_code == 0, result.output
    assert "History #1 (seed 11)" in result.output and "orders 400" in result.output
    assert _db.session.scalar(select(func.count()).select_from(Order)) == 400
    assert _db.session.scalar(select(func.count()).select_from(SalesDaily)) > 0
    check = runner.invoke(args=["kameng", "ledger-check"])
    assert check.exit_code == 0 and "ledger ok" in check.output

    bad = runner.invoke(args=["kameng", "demo", "--password", "demo-pass-1", "--orders", "-5"])
    assert bad.exit_code == 2 and "-5" in bad.output


@BOTH
def test_make_runs_history_is_loaded_once(app):
    """`make run` asks for the history on every start: the first generates it, the next ones leave it."""
    runner = app.test_cli_runner()
    args = ["kameng", "demo", "--password", "demo-pass-1", "--sandbox-key", "sandbox-key-1", "--orders", "300",
            "--seed", "5", "--history-once", "--no-fold-wait"]
    first = runner.invoke(args=args)
    assert first.exit_code == 0, first.output
    assert "History #1 (seed 5)" in first.output and "for the money-flow fold" not in first.output
    again = runner.invoke(args=args)
    assert again.exit_code == 0, again.output
    assert "already loaded" in again.output and "History #" not in again.output
    assert _db.session.scalar(select(func.count()).select_from(Order)) == 300
    assert runner.invoke(args=["kameng", "ledger-check"]).exit_code == 0


@PG
def test_history_needs_the_demo_catalog(app):
    with pytest.raises(KamengError, match="demo"):
        history.generate(100, end=utcnow())
    with pytest.raises(KamengError):
        history.generate(0)
