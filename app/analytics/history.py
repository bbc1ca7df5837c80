"""A year of realistic history for the dashboards and their benchmark (`flask kameng demo --orders N`).

What it writes, on top of the normal demo data (tiers, catalog, demo agents), for the last `days` days:
- agents joining through invite codes, growth accelerating: a few 总代 at the start (the demo's agent1 among them,
  given the largest branch), 区域代理 under 总代, 普通代理 under either, 会员 under any of them (as the demo puts
  member1 under a 普通代理), four levels deep; their ledger accounts; real-name records for most of them (fake but
  well-formed ID numbers, cards and phones, encrypted like app.network.realname stores them);
- storefront orders (sandbox / alipay / wechatpay, returning contacts) and agent wallet orders of the demo
  catalog's card and direct products, with a weekly cycle, evening peaks, Spring Festival, 618, National Day and
  Double 11 peaks, summer game top-ups and a September phone-credit spike among 18-22-year-old students;
- the money exactly as the live code books it: wallet top-ups (`pay:<channel>:<trade_no>`, Payment rows), channel
  payments into platform:buyer_funds, direct wallet orders held there first (`order:<no>:hold`), one sale journal
  per delivered order with `app.orders.service.sale_lines`' postings, commissions (rows + accrual journals, at
  the uplines' tier rates as app.network.commissions computes them) settled by a daily settlement run once due,
  refunds (sale reversal, commission reversal, channel refund, Refund row, voided secrets), failed direct
  top-ups refunded, closed unpaid storefront orders; card secrets sold to each card order (encrypted, unique
  hash) with stock left over; cached balances equal to the sum of their postings at the end;
- withdrawals (提现) of settled commissions by verified agents of tiers that may withdraw, with the journals
  app.network.withdrawals posts (freeze on request, paid or released on review): most paid a day or two later,
  a few rejected, the latest still pending review.

Everything is bulk-inserted: PostgreSQL COPY on the session's own connection (one transaction for the whole
history), executemany elsewhere, in chunks of `chunk` orders. Order status is written directly rather than
through `app.orders.service.transition`: these orders are history, already in their final state, and their
rollups are rebuilt in one pass afterwards (`app.analytics.service.rebuild`).

Running it again adds another, independent history (new agents, order numbers carrying the run number, new
settlement runs); nothing collides with what is there. The same seed on the same starting data gives the same
history (the secrets' ciphertexts aside, which are randomized by design).
"""
from __future__ import annotations

import bisect
import hashlib
import hmac
import math
import queue
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

from flask import current_app
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger, Integer

from app import crypto
from app.agents.models import Agent, Tier
from app.analytics.models import RollupState
from app.catalog import service as catalog
from app.catalog.models import CardImport, Category, Product, Supplier
from app.clock import business_tz, utcnow
from app.errors import KamengError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.models import Account, Journal
from app.money import apply_rate
from app.network.commissions import EXPENSE, max_levels
from app.network.models import RealNameVerification
from app.network.realname import IdFacts
from app.orders.service import sale_lines
from app.payments.service import BUYER_FUNDS
from app.suppliers.models import SupplierProduct

DEFAULT_SEED = 20261111
DIRECT_SUPPLIER = "星辰直充（演示上游）"  # the upstream the history's direct top-ups went through  # i18n-keep: data
DIRECT_SUPPLIER_FEE_BP = 150
QUERY_PASSWORD = "history-demo"  # storefront orders' order password (one hash shared by all of them)

# Spring Festival (春节) by year: the biggest game top-up peak of the year, right after New Year's Eve.
SPRING_FESTIVAL = {2024: date(2024, 2, 10), 2025: date(2025, 1, 29), 2026: date(2026, 2, 17),
                   2027: date(2027, 2, 6), 2028: date(2028, 1, 26), 2029: date(2029, 2, 13), 2030: date(2030, 2, 3)}
WEEKDAY = (0.92, 0.90, 0.93, 0.96, 1.06, 1.22, 1.16)  # Monday first: weekends buy more
HOURS = (3.0, 1.8, 1.0, 0.6, 0.4, 0.4, 0.7, 1.3, 2.0, 2.6, 3.0, 3.2, 3.8, 3.4, 3.0, 3.0, 3.2, 3.6, 4.2, 5.2,
         6.2, 6.6, 5.6, 4.2)  # China time: lunch bump, evening peak 19-23
# Resident ID region codes (one county each) with rough population weights, for real-name records.
REGIONS = (("440106", 126), ("370102", 101), ("410105", 99), ("320102", 85), ("510104", 84), ("130102", 74),
           ("430102", 66), ("330106", 65), ("340102", 61), ("420102", 58), ("450102", 50), ("530102", 47),
           ("360102", 45), ("210102", 42), ("350102", 41), ("610102", 40), ("520102", 39), ("140105", 35),
           ("500103", 32), ("230102", 31), ("650102", 26), ("620102", 25), ("310104", 25), ("150102", 24),
           ("220102", 24), ("110105", 22), ("120101", 14), ("460106", 10), ("640104", 7), ("630102", 6),
           ("540102", 4))
# i18n-keep: data
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
# i18n-keep: data
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍鹏辉建晨宇轩浩然子涵欣怡梓睿雨佳琪博文思源"
SHOP_WORDS = ("卡铺", "游戏充值", "数码", "小店", "话费", "点卡", "网络", "工作室", "商行", "优选")  # i18n-keep: data
# Buying agents by tier: (share of new agents, buying activity, top-up sizes in fen)
TIER_PLAN = {
    "总代": (0.0, 1.6, (500_000, 1_000_000, 2_000_000)),  # i18n-keep: data
    "区域代理": (0.08, 2.2, (200_000, 500_000, 1_000_000)),  # i18n-keep: data
    "普通代理": (0.40, 3.0, (100_000, 200_000, 500_000)),  # i18n-keep: data
    "会员": (0.52, 1.0, (10_000, 20_000, 50_000)),  # i18n-keep: data
}


# Withdrawals: an agent with settled commissions looks at its wallet every WITHDRAW_EVERY_DAYS days on average and
# asks for part of that money once it reaches its tier's minimum; review takes a day or two.
WITHDRAW_EVERY_DAYS = 30
WITHDRAW_REJECTED = 0.05  # share of reviewed requests turned down (the money goes back to the wallet)
REJECT_REASONS = ("银行卡信息与实名认证不一致，请核对后重新申请", "账户近期存在异常退款，暂缓提现",  # i18n-keep: data
                  "提现申请信息不完整，请重新提交")  # i18n-keep: data


def _parents_for(tier: str, rng: random.Random) -> tuple[str, ...]:
    """Which tiers recruit a new agent of `tier` (through their invite codes), most likely first."""
    if tier == "区域代理":  # i18n-keep: data
        return ("总代",)  # i18n-keep: data
    if tier == "普通代理":  # i18n-keep: data
        return ("区域代理", "总代") if rng.random() < 0.7 else ("总代",)  # i18n-keep: data
    u = rng.random()
    # i18n-keep: data
    return ("区域代理", "总代") if u < 0.45 else (("普通代理", "区域代理", "总代") if u < 0.85 else ("总代",))


# Copy columns of every table written, in insertion order (foreign keys point backwards in this list).
COLUMNS: dict[str, tuple[str, ...]] = {
    "agent": ("id", "name", "parent_id", "path", "depth", "tier_id", "active", "phone", "created_at", "phone_hash"),
    "ledger_account": ("id", "code", "kind", "agent_id", "cached", "balance", "created_at"),
    "real_name": ("agent_id", "name_enc", "id_number_enc", "bank_card_enc", "phone_enc", "id_number_hash",
                  "name_masked", "id_number_masked", "bank_card_masked", "phone_masked", "age_band", "gender",
                  "province", "birth_year", "status", "provider_ref", "verified_at", "created_at", "updated_at"),
    "invite_code": ("code", "agent_id", "tier_id", "max_uses", "uses", "active", "created_at"),
    "orders": ("id", "order_no", "agent_id", "product_id", "supplier_id", "tier_id", "quantity", "face_price",
               "unit_price", "amount", "discount", "cost_total", "service_fee", "upline_path", "status",
               "upstream_status", "channel", "account", "contact", "created_at", "paid_at", "delivered_at",
               "updated_at", "account_hash", "contact_hash"),
    "wallet_topup": ("id", "topup_no", "agent_id", "amount", "channel", "status", "created_at", "paid_at"),
    "ledger_journal": ("id", "idempotency_key", "kind", "content_hash", "memo", "order_id", "created_at"),
    "ledger_posting": ("journal_id", "account_id", "amount", "created_at"),
    "payment": ("channel", "trade_no", "order_id", "topup_id", "amount", "currency", "status", "created_at"),
    "order_checkout": ("order_id", "query_password_hash", "expires_at"),
    "refund": ("order_id", "amount", "destination", "reason", "status", "created_at"),
    "commission": ("order_id", "agent_id", "level", "rate_bp", "base_amount", "amount", "status", "settle_after",
                   "settlement_run_id", "created_at", "settled_at", "reversed_at"),
    "card_secret": ("product_id", "secret_enc", "secret_hash", "masked", "status", "order_id", "batch_id",
                    "created_at", "sold_at"),
    "recharge_attempt": ("order_id", "supplier_id", "seq", "upstream_code", "cost", "status", "upstream_trade_no",
                         "polls", "created_at", "updated_at", "finished_at"),
    "withdrawal": ("withdrawal_no", "agent_id", "amount", "fee", "net_amount", "bank_card_masked", "status",
                   "review_reason", "reviewed_by_id", "reviewed_at", "payout_ref", "created_at", "paid_at"),
}


@dataclass
class HistoryReport:
    run: int
    seed: int
    start: date
    end: date
    agents: int = 0
    orders: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    gmv: int = 0  # fen: paid amounts of the orders delivered
    journals: int = 0
    postings: int = 0
    card_secrets: int = 0
    commissions: int = 0
    topups: int = 0
    withdrawals: dict[str, int] = field(default_factory=dict)  # status -> count
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    cpu: dict[str, float] = field(default_factory=dict)  # phase -> CPU seconds of this process


# Personal data columns (app.crypto.EncryptedText) of the tables written: add() appends their blind indexes (the
# rows' last columns, in this order) and the PostgreSQL COPY encrypts them (executemany through the Table does).
ENCRYPTED: dict[str, tuple[str, ...]] = {"agent": ("phone",), "orders": ("account", "contact")}


class _Bulk:
    """Buffered bulk writer: COPY on PostgreSQL (inside the session's transaction), executemany elsewhere."""

    def __init__(self, check_references: bool = False) -> None:
        self.conn = db.session.connection()
        self.pg = self.conn.dialect.name == "postgresql"
        self.references_checked = True
        if self.pg and not check_references and self.conn.execute(text(
                "SELECT current_setting('is_superuser')")).scalar() == "on":
            # Foreign keys are checked by per-row triggers, which cost more than the COPY itself. Every row here
            # refers to rows this same transaction wrote or read, so, as pg_restore --disable-triggers does, they
            # are skipped for this transaction only (SET LOCAL; needs a superuser, else they stay on). Unique and
            # check constraints still apply; the tests run the same generator with the triggers on.
            self.conn.execute(text("SET LOCAL session_replication_role = replica"))
            self.references_checked = False
            from app import cache

            cache.changed_without_triggers()  # the cache's triggers are skipped too
        self.rows: dict[str, list[tuple]] = {name: [] for name in COLUMNS}
        self._pii = {t: [COLUMNS[t].index(c) for c in cols] for t, cols in ENCRYPTED.items()}
        self._hashes: dict[str, str | None] = {}  # a contact recurs: hash it once
        self._encrypt = crypto.encrypter()  # usable from the writer thread, which has no app context
        self.counts: dict[str, int] = defaultdict(int)
        self._next_id: dict[str, int] = {}
        self._pools: dict[str, list[int]] = defaultdict(list)  # reserved ids, next one last
        self._blocks: dict[str, int] = {}  # how many ids to reserve at a time per table
        # PostgreSQL: a writer thread COPYs one chunk while the next is generated (the server works on its own
        # core meanwhile). One lock serializes every use of the connection; the queue holds one chunk at most.
        self._lock = threading.Lock()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.waited = 0.0  # seconds the generating thread spent waiting for the writer

    def block(self, table: str, size: int) -> None:
        self._blocks[table] = max(1, size)

    def ids(self, table: str, n: int) -> list[int]:
        """Reserve n primary keys: from the table's sequence on PostgreSQL (safe next to live writers)."""
        if n <= 0:
            return []
        pool = self._pools[table]
        if len(pool) < n:
            more = max(n - len(pool), self._blocks.get(table, 0))
            if self.pg:
                with self._lock:
                    reserved = self.conn.execute(text(
                        "SELECT array_agg(nextval(pg_get_serial_sequence(:t, 'id'))) FROM generate_series(1, :n)"),
                        {"t": table, "n": more}).scalar()
            else:
                if table not in self._next_id:
                    self._next_id[table] = (self.conn.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {table}"))
                                            .scalar() + 1)
                first = self._next_id[table]
                self._next_id[table] = first + more
                reserved = range(first, first + more)
            pool[:0] = sorted(reserved, reverse=True)
        taken = pool[-n:][::-1]
        del pool[-n:]
        return taken

    def add(self, table: str, row: tuple) -> None:
        positions = self._pii.get(table)
        if positions:
            row = row + tuple(self._hash(row[i]) for i in positions)
        self.rows[table].append(row)

    def _hash(self, value: str | None) -> str | None:
        if value is None:
            return None
        if value not in self._hashes:
            if len(self._hashes) > 100_000:
                self._hashes.clear()
            self._hashes[value] = crypto.pii_hash(value)
        return self._hashes[value]

    def flush(self, background: bool = False) -> None:
        """Write what is buffered; `background` (PostgreSQL): hand it to the writer thread and return."""
        self._raise()
        rows, self.rows = self.rows, {name: [] for name in COLUMNS}
        if not (background and self.pg):
            self.drain()
            self._write(rows)
            return
        if self._thread is None:
            self._queue = queue.Queue(maxsize=1)
            self._thread = threading.Thread(target=self._writer, name="history-copy", daemon=True)
            self._thread.start()
        waiting = time.perf_counter()
        self._queue.put(rows)  # blocks while the writer is still on the chunk before last
        self.waited += time.perf_counter() - waiting

    def drain(self) -> None:
        """Wait until the writer thread has written everything handed to it."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _writer(self) -> None:
        while True:
            rows = self._queue.get()
            if rows is None:
                return
            if self._error is None:
                try:
                    self._write(rows)
                except BaseException as exc:  # handed to the generating thread at its next flush
                    self._error = exc

    def _write(self, rows: dict[str, list[tuple]]) -> None:
        with self._lock:
            for table, table_rows in rows.items():
                if not table_rows:
                    continue
                cols = COLUMNS[table]
                if self.pg:
                    positions = self._pii.get(table, ())
                    raw = self.conn.connection.driver_connection
                    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                        for row in table_rows:
                            if positions:
                                row = list(row)
                                for i in positions:
                                    if row[i] is not None:
                                        row[i] = self._encrypt(row[i])
                            copy.write_row(row)
                else:
                    self.conn.execute(db.metadata.tables[table].insert(),
                                      [dict(zip(cols, r, strict=True)) for r in table_rows])
                self.counts[table] += len(table_rows)


@dataclass
class _HAgent:
    id: int
    tier: str
    tier_id: int
    path: str
    created: datetime  # UTC
    weight: float  # buying activity
    churn_day: int  # day index after which it stops buying (a large number: never)
    student: bool = False
    wallet: int = 0  # account ids
    pending: int = 0
    frozen: int = 0
    verified_at: datetime | None = None  # real name verified (UTC): a withdrawal needs it
    card: str = ""  # the verified bank card, masked as the withdrawal row keeps it
    spendable: int = 0  # simulated wallet money available (top-ups less purchases), fen
    topup_sizes: tuple[int, ...] = ()


@dataclass
class _HProduct:
    id: int
    name: str
    kind: str
    group: str  # game, phone, video, other
    face: int
    cost: int
    supplier_id: int
    fee_bp: int
    prices: dict  # tier_id (None: public) -> unit price
    upstream_code: str = ""
    batch_ids: dict = field(default_factory=dict)  # month index -> card import id
    sold: int = 0
    sold_last7: int = 0


def _group(category_name: str) -> str:
    if "话费" in category_name or "流量" in category_name:  # i18n-keep: data
        return "phone"
    if "游戏" in category_name:  # i18n-keep: data
        return "game"
    if "视频" in category_name or "会员" in category_name:  # i18n-keep: data
        return "video"
    return "other"


class HistoryBuilder:
    def __init__(self, orders: int, seed: int = DEFAULT_SEED, days: int = 365, chunk: int = 50_000,
                 end: datetime | None = None, progress: Callable[[str], None] | None = None,
                 check_references: bool = False, advance: Callable[[int, int], None] | None = None) -> None:
        if orders < 1:
            raise KamengError("--orders must be at least 1")
        if days < 7:
            raise KamengError("history needs at least 7 days")
        self.n_orders = orders
        self.check_references = check_references
        self.seed = seed
        self.days = days
        self.chunk = max(1000, chunk)
        # Ends a little in the past: the money-flow fold leaves the last ROLLUP_MONEY_LAG_SECONDS alone.
        lag = int(current_app.config.get("ROLLUP_MONEY_LAG_SECONDS", 30)) + 30
        self.end = (end or utcnow() - timedelta(seconds=lag)).replace(microsecond=0)
        self.progress = progress or (lambda _msg: None)
        self.advance = advance or (lambda _done, _total: None)  # orders written so far, of the total
        self.rng = random.Random(seed)
        self.tz = business_tz()
        self.end_local = self._local(self.end)
        self.start_day = self.end_local.date() - timedelta(days=days - 1)
        self.levels = max_levels()
        self.content_hashes: dict = {}
        self.deltas: dict[int, int] = defaultdict(int)  # cached account id -> balance change
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._cpu_mark = time.process_time()
        self.status_counts: dict[str, int] = defaultdict(int)
        self.withdrawal_counts: dict[str, int] = defaultdict(int)
        self.gmv = 0
        self._index: dict[int, int] = {}  # agent id -> position in self.agents while the tree is built
        self._topup_journals: list[tuple] = []
        self._day_texts: dict[date, str] = {}
        self._sale_templates: dict[tuple, list[tuple[str, int]]] = {}

    # ------------------------------------------------------------------------------------------------ time
    def _local(self, utc: datetime) -> datetime:
        return utc.replace(tzinfo=UTC).astimezone(self.tz).replace(tzinfo=None)

    def _utc(self, local: datetime) -> datetime:
        return local.replace(tzinfo=self.tz).astimezone(UTC).replace(tzinfo=None)

    def _phase(self, name: str, started: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0) + time.perf_counter() - started, 2)
        cpu = time.process_time()  # this process's CPU (both threads): what the machine's load does not inflate
        self.cpu[name] = round(self.cpu.get(name, 0) + cpu - self._cpu_mark, 2)
        self._cpu_mark = cpu

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> HistoryReport:
        t0 = time.perf_counter()
        self.bulk = _Bulk(self.check_references)
        # The keys crypto.encrypt / crypto.keyed_hash use, looked up once rather than per secret.
        material = current_app.config["CARD_SECRET_KEY"]
        self._fernet, self._hash_key = crypto._fernet(material), crypto._hash_key(material)
        self._load_reference()
        self.run_no = self._run_number()
        self._phase("reference data", t0)

        t = time.perf_counter()
        self._make_agents()
        self.bulk.flush()
        self._phase("agents", t)
        self.progress(f"agents: {len(self.new_agents)} new, {len(self.agents)} buying")

        t = time.perf_counter()
        self._make_orders()
        self._phase("orders: generate (COPY alongside)", t)
        self.timings["orders: of which waiting for COPY"] = round(self.bulk.waited, 2)
        t = time.perf_counter()
        self.bulk.drain()
        self._phase("orders: last COPY", t)

        t = time.perf_counter()
        self._finish()
        self._phase("settlement, stock and balances", t)

        t = time.perf_counter()
        db.session.commit()
        self._phase("commit", t)
        c = self.bulk.counts
        return HistoryReport(
            run=self.run_no, seed=self.seed, start=self.start_day, end=self.end_local.date(),
            agents=len(self.new_agents), orders=c["orders"], statuses=dict(self.status_counts), gmv=self.gmv,
            journals=c["ledger_journal"], postings=c["ledger_posting"], card_secrets=c["card_secret"],
            commissions=c["commission"], topups=c["wallet_topup"], withdrawals=dict(self.withdrawal_counts),
            timings=dict(self.timings), cpu=dict(self.cpu))

    # ------------------------------------------------------------------------------------------------ setup
    def _load_reference(self) -> None:
        ledger.ensure_platform_accounts()
        self.tiers = {t.name: t for t in db.session.scalars(select(Tier))}
        missing = [name for name in TIER_PLAN if name not in self.tiers]
        if missing:
            raise KamengError(f"demo tiers missing ({', '.join(missing)}): load the demo data first")
        self.tier_by_id = {t.id: t for t in self.tiers.values()}
        products = list(db.session.scalars(select(Product).where(  # reusable cards (循环卡密) are not in the history
            Product.active.is_(True), Product.kind.in_(("card", "direct")), Product.reusable.is_(False))
            .order_by(Product.id)))
        if not any(p.kind == "card" for p in products):
            raise KamengError("no card product in the catalog: load the demo data first")
        categories = {c.id: c.name for c in db.session.scalars(select(Category))}
        self.direct_supplier = self._direct_supplier()
        self.products: list[_HProduct] = []
        for p in products:
            supplier = self.direct_supplier if p.kind == "direct" else p.supplier
            prices = {None: catalog.price_for(None, p)}
            prices.update({t.id: catalog.price_for(t, p) for t in self.tiers.values()})
            hp = _HProduct(id=p.id, name=p.name, kind=p.kind, group=_group(categories.get(p.category_id, "")),
                           face=p.face_price, cost=p.cost, supplier_id=supplier.id,
                           fee_bp=supplier.service_fee_bp, prices=prices, upstream_code=f"XC-{p.id:04d}")
            self.products.append(hp)
            if p.kind == "direct":
                self._ensure_mapping(p, hp.upstream_code)
        db.session.flush()
        self.accounts = dict(db.session.execute(select(Account.code, Account.id).where(
            Account.agent_id.is_(None))).all())
        self.p_fees, self.p_revenue = self.accounts["platform:fees"], self.accounts["platform:revenue"]
        self.p_buyer_funds, self.p_expense = self.accounts[BUYER_FUNDS], self.accounts[EXPENSE]
        for hp in self.products:
            code = ledger.supplier_account_code(hp.supplier_id)
            if code not in self.accounts:
                raise KamengError(f"supplier account {code} is missing")
        from app.crypto import hash_order_password
        self.query_hash = hash_order_password(QUERY_PASSWORD)

    def _direct_supplier(self) -> Supplier:
        """The upstream the history's direct top-ups went through: a supplier row with a service fee and no
        connection (no protocol), so live orders never go to it."""
        supplier = db.session.scalar(select(Supplier).where(Supplier.name == DIRECT_SUPPLIER))
        if supplier is None:
            supplier = catalog.create_supplier(DIRECT_SUPPLIER, DIRECT_SUPPLIER_FEE_BP)
            supplier.contact = "history"
        return supplier

    def _ensure_mapping(self, product: Product, code: str) -> None:
        exists = db.session.scalar(select(SupplierProduct.id).where(
            SupplierProduct.supplier_id == self.direct_supplier.id, SupplierProduct.product_id == product.id))
        if exists is None:
            db.session.add(SupplierProduct(supplier_id=self.direct_supplier.id, product_id=product.id,
                                           upstream_code=code, cost=product.cost, priority=100, active=True))

    def _run_number(self) -> int:
        """1 for the first history in this database, 2 for the next...: order numbers carry it."""
        names = db.session.scalars(select(CardImport.filename).where(CardImport.source == "history"))
        runs = [int(n.split("-")[1]) for n in names if n and n.count("-") >= 2 and n.split("-")[1].isdigit()]
        run = max(runs, default=0) + 1
        if run > 99:
            raise KamengError("at most 99 histories per database")
        return run

    # ------------------------------------------------------------------------------------------------ agents
    def _make_agents(self) -> None:
        rng, bulk = self.rng, self.bulk
        start_utc = self._utc(datetime.combine(self.start_day, datetime.min.time()))
        n_new = max(20, min(self.n_orders // 200, 20_000))
        n_top = max(2, round(n_new * 0.006))
        # Existing agents (the demo's) buy and recruit too, from the first day; agent1 leads the largest branch.
        existing = list(db.session.execute(select(Agent.id, Agent.tier_id, Agent.path, Agent.name, Agent.phone)
                                           .where(Agent.active.is_(True)).order_by(Agent.id)).all())
        acc_rows = db.session.execute(select(Account.agent_id, Account.kind, Account.id).where(
            Account.agent_id.in_([a.id for a in existing]), Account.kind.in_(("wallet", "pending", "frozen")))).all()
        acc = {(r.agent_id, r.kind): r.id for r in acc_rows}
        records = {r.agent_id: r for r in db.session.execute(select(
            RealNameVerification.agent_id, RealNameVerification.status, RealNameVerification.verified_at,
            RealNameVerification.bank_card_masked).where(
            RealNameVerification.agent_id.in_([a.id for a in existing])))}
        # The agents there before the history (the demo's) have been around for its whole year: those of tiers
        # that may withdraw verified their real name at its start, unless they have a record already. Their own
        # random stream, so the orders drawn next are the same as without them.
        founders = random.Random(f"{self.seed}-founders")
        self.agents: list[_HAgent] = []
        urns: dict[str, list[int]] = defaultdict(list)  # tier -> agent indexes, repeated by recruiting pull
        for row in existing:
            tier = self.tier_by_id[row.tier_id]
            if tier.name not in TIER_PLAN or (row.id, "wallet") not in acc:
                continue
            a = self._agent_obj(row.id, tier.name, row.path, start_utc)
            a.wallet, a.pending = acc[(row.id, "wallet")], acc[(row.id, "pending")]
            a.frozen = acc.get((row.id, "frozen"), 0)
            rec = records.get(row.id)
            if rec is not None and rec.status == "verified":
                a.verified_at, a.card = rec.verified_at or start_utc, rec.bank_card_masked
            elif rec is None and tier.may_withdraw:
                self._real_name(a, row.phone or f"1{founders.choice('3578')}{founders.randrange(10 ** 9):09d}",
                                start_utc, rng=founders, founder=True)
            self.agents.append(a)
            pull = 40 if row.name == "agent1" else 6
            urns[tier.name].extend([len(self.agents) - 1] * pull)

        # Join times: the founding 总代 in the first month, everyone else accelerating towards today.
        span = (self.end - start_utc).total_seconds()
        growth = 2.2
        times = [start_utc + timedelta(seconds=rng.uniform(0, 30 * 86400)) for _ in range(n_top)]
        tiers = ["总代"] * n_top  # i18n-keep: data
        shares = [(name, plan[0]) for name, plan in TIER_PLAN.items() if plan[0] > 0]
        for _ in range(n_new - n_top):
            u = rng.random()
            offset = math.log(1 + u * (math.exp(growth) - 1)) / growth * span
            times.append(start_utc + timedelta(seconds=max(offset, 3 * 86400 * rng.random())))
            tiers.append(rng.choices([s[0] for s in shares], weights=[s[1] for s in shares])[0])
        order = sorted(range(n_new), key=lambda i: times[i])
        ids = bulk.ids("agent", n_new)
        acc_ids = bulk.ids("ledger_account", 3 * n_new)
        self.new_agents: list[_HAgent] = []
        recruits: dict[int, int] = defaultdict(int)  # recruiter agent id -> agents joined by its code
        for k, i in enumerate(order):
            tier, joined = tiers[i], times[i]
            parent = None
            if tier != "总代":  # i18n-keep: data
                for parent_tier in _parents_for(tier, rng):
                    pool = urns.get(parent_tier)
                    if pool:
                        parent = self.agents[rng.choice(pool)]
                        break
                if parent is None:  # nobody to recruit it yet: a 总代 did (one always exists after the start)
                    pool = urns.get("总代") or [0]  # i18n-keep: data
                    parent = self.agents[rng.choice(pool)]
            agent_id = ids[k]
            path = f"{parent.path if parent else '/'}{agent_id}/"
            a = self._agent_obj(agent_id, tier, path, joined)
            a.wallet, a.pending, a.frozen = acc_ids[3 * k:3 * k + 3]
            self.agents.append(a)
            self.new_agents.append(a)
            index = len(self.agents) - 1
            if tier != "会员":  # recruiting pull: some agents recruit far more than others; i18n-keep: data
                urns[tier].extend([index] * (1 + int(rng.paretovariate(1.6))))
            if parent is not None:
                urns[parent.tier].extend([self._index[parent.id]] * 2)  # who recruits, recruits more
                recruits[parent.id] += 1
            name = rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(SHOP_WORDS)
            phone = f"1{rng.choice('3578')}{rng.randrange(10 ** 9):09d}"
            bulk.add("agent", (agent_id, name, parent.id if parent else None, path, path.count("/") - 2,
                               a.tier_id, True, phone, joined))
            for acc_id, kind in ((a.wallet, "wallet"), (a.pending, "pending"), (a.frozen, "frozen")):
                bulk.add("ledger_account", (acc_id, ledger.agent_account_code(agent_id, kind), kind, agent_id,
                                            True, 0, joined))
            self._real_name(a, phone, joined)
        for recruiter_id, uses in recruits.items():
            recruiter = self.agents[self._index[recruiter_id]]
            below = min((t for t in self.tiers.values() if t.rank < self.tier_by_id[recruiter.tier_id].rank),
                        key=lambda t: -t.rank, default=None)
            if below is not None:
                code = f"H{self.run_no:02d}{recruiter_id:08d}"[:16]
                bulk.add("invite_code", (code, recruiter_id, below.id, None, uses, True, recruiter.created))
        # Buyers in join order, with cumulative activity weights for fast weighted picks per day.
        self.agents.sort(key=lambda a: a.created)
        self.join_times = [a.created for a in self.agents]
        self.cum_weights = list(_accumulate(a.weight for a in self.agents))
        self.agents_by_id = {a.id: a for a in self.agents}
        self.students = [a for a in self.agents if a.student]
        self.student_times = [a.created for a in self.students]
        self.student_cum = list(_accumulate(a.weight for a in self.students))

    def _agent_obj(self, agent_id: int, tier: str, path: str, joined: datetime) -> _HAgent:
        rng = self.rng
        activity = TIER_PLAN[tier][1] * rng.lognormvariate(0, 0.8)
        day = (self._local(joined).date() - self.start_day).days
        # About a third stop buying within a few months (what cohort retention shows); the rest stay.
        churn = day + int(rng.expovariate(1 / 60)) + 7 if rng.random() < 0.35 else 10 ** 6
        a = _HAgent(id=agent_id, tier=tier, tier_id=self.tiers[tier].id, path=path, created=joined,
                    weight=activity, churn_day=churn, topup_sizes=TIER_PLAN[tier][2])
        self._index[agent_id] = len(self.agents)
        return a

    def _real_name(self, a: _HAgent, phone: str, joined: datetime, rng: random.Random | None = None,
                   founder: bool = False) -> None:
        """Most agents verify their real name soon after joining (all who withdraw must); students are the
        18-22-year-old 会员 and 普通代理. `founder`: an agent there before the history (the demo's), verified
        at its start, never a student (its buying is already drawn), 25 or older."""
        rng = rng or self.rng
        # i18n-keep: data
        share = 1.0 if founder else {"总代": 1.0, "区域代理": 1.0, "普通代理": 0.8, "会员": 0.6}[a.tier]
        if rng.random() >= share:
            return
        verified = joined + timedelta(hours=rng.uniform(0.2, 72))
        if verified > self.end:
            return
        today = self._local(verified).date()
        student_share = 0.0 if founder else {"会员": 0.38, "普通代理": 0.12}.get(a.tier, 0.0)  # i18n-keep: data
        if rng.random() < student_share:
            age = rng.randint(18, 21)  # still 18-22 when next September comes
            a.student = True
            a.weight *= 0.7
        else:
            age = int(min(62, max(25 if founder else 23, rng.gauss(31, 7))))
        birth = today - timedelta(days=int(age * 365.25) + rng.randrange(1, 360))
        region = rng.choices([r[0] for r in REGIONS], weights=[r[1] for r in REGIONS])[0]
        male = rng.random() < 0.62
        seq = rng.randrange(500) * 2 + (1 if male else 0)  # odd: male, even: female (GB 11643)
        body = f"{region}{birth:%Y%m%d}{seq:03d}"
        number = body + _ric_check_digit(body)
        facts = IdFacts(birth_date=birth, gender="M" if int(number[16]) % 2 else "F", province=_province(region))
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
        card_body = "622202" + f"{rng.randrange(10 ** 12):012d}"
        card = card_body + _luhn_digit(card_body)
        self.bulk.add("real_name", (
            a.id, crypto.encrypt(name), crypto.encrypt(number), crypto.encrypt(card), crypto.encrypt(phone),
            crypto.keyed_hash("realname-id", number), crypto.mask(name), crypto.mask(number), crypto.mask(card),
            crypto.mask(phone), facts.age_band(today), facts.gender, facts.province[:16], facts.birth_year,
            "verified", f"HIST-{a.id}", verified, verified, verified))
        a.verified_at, a.card = verified, crypto.mask(card)

    # ------------------------------------------------------------------------------------------------ orders
    def _day_weights(self) -> list[float]:
        weights = []
        for d in range(self.days):
            day = self.start_day + timedelta(days=d)
            w = math.exp(math.log(3.5) * d / self.days) * WEEKDAY[day.weekday()]
            sf = SPRING_FESTIVAL.get(day.year)
            if sf is not None:
                x = (day - sf).days
                w *= 1 + 1.3 * math.exp(-(((x - 2) / 5.0) ** 2))  # New Year's money: top-ups peak after the Eve
            if day.month == 11 and day.day <= 11:
                w *= 3.4 if day.day == 11 else (1.9 if day.day == 10 else 1.25)  # Double 11
            elif day.month == 11 and day.day == 12:
                w *= 1.4
            if day.month == 6 and 16 <= day.day <= 18:
                w *= 1.5  # 618
            if day.month == 10 and day.day <= 7:
                w *= 1.25  # National Day holiday
            if (day.month == 7 and day.day >= 5) or day.month == 8:
                w *= 1.15  # summer holiday
            if day.month == 9 and day.day <= 20:
                w *= 1.1  # back to school
            if d == self.days - 1:  # today: only the hours gone by
                hour = self.end_local.hour + self.end_local.minute / 60
                w *= sum(HOURS[h] * min(1.0, max(0.0, hour - h)) for h in range(24)) / sum(HOURS)
            weights.append(w)
        return weights

    def _product_weights(self, day: date, student_september: bool) -> list[float]:
        summer = (day.month == 7 and day.day >= 5) or day.month == 8
        sf = SPRING_FESTIVAL.get(day.year)
        festival = sf is not None and -7 <= (day - sf).days <= 12
        double11 = day.month == 11 and day.day <= 12
        out = []
        for p in self.products:
            w = {"game": 0.2, "phone": 0.24, "video": 0.18}.get(p.group, 0.1)
            if p.kind == "card" and p.group == "game":
                w *= 1.3
            if p.group == "game" and summer:
                w *= 2.0
            if p.group == "game" and festival:
                w *= 1.6
            if p.group == "video" and (double11 or festival):
                w *= 2.2 if double11 else 1.4
            if p.group == "phone" and student_september:
                w *= 9.0
            out.append(w)
        return out

    def _make_orders(self) -> None:
        bulk = self.bulk
        # Keys reserved up front in large blocks, so generating never waits for the writer thread's COPY.
        total = self.n_orders
        bulk.block("orders", total)
        bulk.block("ledger_journal", int(total * 2.7) + 10_000)
        bulk.block("wallet_topup", total // 6 + 1000)
        weights = self._day_weights()
        counts = _apportion(self.n_orders, weights)
        guests_expected = int(self.n_orders * 0.36)
        self.contact_pool = max(50, guests_expected // 3)
        self.settle_cutoffs, self.run_ids = self._settlement_runs()
        self.run_totals: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.run_counts: dict[int, int] = defaultdict(int)
        self._card_batches()
        self.order_seq = 0
        self.topup_seq = 0
        self.last7_start = self._utc(datetime.combine(self.end_local.date() - timedelta(days=7),
                                                      datetime.min.time()))
        pending: list[tuple] = []  # (UTC time, buyer or None, product index, month index)
        generated = 0
        started = time.perf_counter()
        for d, n in enumerate(counts):
            day = self.start_day + timedelta(days=d)
            pending.extend(self._day_orders(d, day, n))
            if len(pending) >= self.chunk or d == self.days - 1:
                pending.sort(key=lambda o: o[0])
                self._write_orders(pending)
                generated += len(pending)
                pending = []
                bulk.flush(background=True)
                rate = generated / max(time.perf_counter() - started, 1e-6)
                self.progress(f"orders: {generated}/{self.n_orders} ({rate:,.0f}/s) through {day}")
                self.advance(generated, self.n_orders)

    def _day_orders(self, d: int, day: date, n: int) -> list[tuple]:
        rng = self.rng
        if n <= 0:
            return []
        day_start = self._utc(datetime.combine(day, datetime.min.time()))
        k = bisect.bisect_left(self.join_times, day_start)  # agents who joined before today buy today
        s = bisect.bisect_left(self.student_times, day_start)
        hours = list(HOURS)
        if d == self.days - 1:
            hours = [w if h <= self.end_local.hour else 0.0 for h, w in enumerate(HOURS)]
        if day.weekday() >= 5:
            hours = [w * (1.25 if 9 <= h <= 17 else 1.0) for h, w in enumerate(hours)]
        cum_hours = list(_accumulate(hours))
        september = day.month == 9 and day.day <= 25
        student_share = (0.16 * (1.0 if day.day <= 12 else 0.5)) if september and s else 0.0
        normal_w = list(_accumulate(self._product_weights(day, False)))
        student_w = list(_accumulate(self._product_weights(day, True)))
        out = []
        limit = self.end
        month = (day.year - self.start_day.year) * 12 + day.month  # the card import batch of the month
        for _ in range(n):
            h = bisect.bisect_right(cum_hours, rng.random() * cum_hours[-1])
            at = day_start + timedelta(seconds=min(h, 23) * 3600 + rng.randrange(3600))  # UTC
            if at >= limit:
                at = limit - timedelta(seconds=rng.randrange(1, 3600))
            buyer = None
            weights = normal_w
            if k and rng.random() < 0.64:
                if student_share and rng.random() < student_share:
                    buyer = self.students[bisect.bisect_right(self.student_cum, rng.random() * self.student_cum[s - 1],
                                                              0, s - 1)]
                    weights = student_w
                else:
                    for _try in range(8):  # churned agents no longer buy: draw again
                        buyer = self.agents[bisect.bisect_right(self.cum_weights,
                                                                rng.random() * self.cum_weights[k - 1], 0, k - 1)]
                        if buyer.churn_day >= d:
                            break
                    if buyer.student and september:
                        weights = student_w
            p = bisect.bisect_right(weights, rng.random() * weights[-1])
            out.append((at, buyer, min(p, len(self.products) - 1), month))
        return out

    def _order_no(self, created: datetime, prefix: str = "") -> str:
        """yymmdd + '9' + run + 9 scrambled digits: unique per run, neither sequential nor like a live number
        (live ones are yymmdd + 12 random digits, so a clash is as unlikely as between two live orders)."""
        self.order_seq += 1
        scrambled = (self.order_seq * 387_420_489 + 12_345) % 1_000_000_000
        return f"{prefix}{self._day_text(created)[2:]}9{self.run_no:02d}{scrambled:09d}"

    def _day_text(self, at: datetime) -> str:
        day = at.date()
        found = self._day_texts.get(day)
        if found is None:
            found = self._day_texts[day] = day.strftime("%Y%m%d")
        return found

    def _encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def _keyed_hash(self, *parts: object) -> str:
        message = "\x1f".join(str(p) for p in parts).encode()
        return hmac.new(self._hash_key, message, hashlib.sha256).hexdigest()

    def _write_orders(self, batch: list[tuple]) -> None:
        rng, bulk = self.rng, self.bulk
        order_ids = bulk.ids("orders", len(batch))
        journals: list[tuple] = []  # (key, kind, lines [(account id, amount)], memo, order id, at)
        end = self.end
        for (created, buyer, p_index, month), order_id in zip(batch, order_ids, strict=True):
            product = self.products[p_index]
            if buyer is None:
                qty = 1 if rng.random() < 0.9 else 2
                tier_id = None
            else:
                qty = 1 if buyer.tier == "会员" else min(10, 1 + int(rng.expovariate(0.9)))  # i18n-keep: data
                tier_id = buyer.tier_id
            unit = product.prices[tier_id]
            amount = unit * qty
            cost_total = product.cost * qty
            fee = apply_rate(cost_total, product.fee_bp)
            order_no = self._order_no(created)
            direct = product.kind == "direct"
            if buyer is not None:
                channel = "wallet"
            else:
                u = rng.random()
                channel = "alipay" if u < 0.45 else ("wechatpay" if u < 0.95 else "sandbox")
            contact = account = None
            if buyer is None:
                idx = int(self.contact_pool * rng.random() ** 2.2)
                contact = (f"1{'3578'[idx % 4]}{(idx * 7_654_321 + 13) % 10 ** 9:09d}" if idx % 5
                           else f"QQ{(idx * 48_271 + 10_000) % 10 ** 10:010d}")
            if direct:
                account = (f"1{'3578'[rng.randrange(4)]}{rng.randrange(10 ** 9):09d}" if product.group == "phone"
                           else f"{rng.randrange(10 ** 8, 10 ** 10)}")
            paid = created + timedelta(seconds=rng.randint(8, 240)) if buyer is None else created
            delivered = paid + timedelta(seconds=rng.randint(3, 150)) if direct else paid
            order = SimpleNamespace(amount=amount, supplier_id=product.supplier_id, cost_total=cost_total,
                                    service_fee=fee)
            u = rng.random()
            if buyer is None and u < 0.065:
                status = "closed"
            elif direct and u > 0.975:
                status = "failed"  # the upstream failed: refunded in the same transaction as the failure
            elif not direct and u > 0.992 and delivered + timedelta(hours=13) < end:
                status = "refunded"
            else:
                status = "delivered"
            if delivered > end and status != "closed":
                delivered = paid = end - timedelta(seconds=1)
            upstream = None
            funding = BUYER_FUNDS if (buyer is None or direct) else None
            wallet_code = buyer.wallet if buyer else None

            if status == "closed":
                bulk.add("order_checkout", (order_id, self.query_hash, created + timedelta(minutes=15)))
                bulk.add("orders", (order_id, order_no, None, product.id, product.supplier_id, None, qty,
                                    product.face, unit, amount, 0, cost_total, fee, None, "closed", None, channel,
                                    account, contact, created, None, None, created + timedelta(minutes=15)))
                self.status_counts["closed"] += 1
                continue

            # Paying: a wallet (topped up first when short) or a channel payment into buyer funds.
            if buyer is not None:
                self._ensure_funds(buyer, amount, created)
                buyer.spendable -= amount
                if direct:
                    journals.append((f"order:{order_no}:hold", "hold", [(wallet_code, -amount),
                                                                        (self.p_buyer_funds, amount)],
                                     f"{order_no} 直充冻结", order_id, paid))  # i18n-keep: data
            else:
                trade_no = self._trade_no(channel, paid)
                bulk.add("payment", (channel, trade_no, order_id, None, amount, "CNY",
                                     "refunded" if status == "failed" or status == "refunded" else "paid", paid))
                bulk.add("order_checkout", (order_id, self.query_hash, created + timedelta(minutes=15)))
                clearing = self.accounts[f"platform:clearing:{channel}"]
                journals.append((f"pay:{channel}:{trade_no}", "payment", [(clearing, -amount),
                                                                          (self.p_buyer_funds, amount)],
                                 f"{order_no} 收款", order_id, paid))  # i18n-keep: data

            if status == "failed":
                upstream = "failed"
                back = wallet_code if buyer is not None else clearing
                key = f"order:{order_no}:refund" if buyer is not None else f"refund:{channel}:{trade_no}"
                journals.append((key, "refund", [(self.p_buyer_funds, -amount), (back, amount)],
                                 "直充失败，自动退款 (upstream failed)", order_id, delivered))  # i18n-keep: data
                bulk.add("refund", (order_id, amount, "wallet" if buyer is not None else channel,
                                    "直充失败，自动退款 (upstream failed)", "succeeded", delivered))  # i18n-keep: data
                bulk.add("recharge_attempt", (order_id, product.supplier_id, 1, product.upstream_code, cost_total,
                                              "failed", f"XC{order_id:012d}", 0, paid, delivered, delivered))
                bulk.add("orders", (order_id, order_no, buyer.id if buyer else None, product.id,
                                    product.supplier_id, tier_id, qty, product.face, unit, amount, 0, cost_total,
                                    fee, buyer.path if buyer else None, "refunded", upstream, channel, account,
                                    contact, created, paid, None, delivered))
                self.status_counts["failed (refunded)"] += 1
                continue

            # Delivered: the sale, the commissions, the secrets or the upstream's success.
            lines = self._sale(order, funding is None, buyer)
            journals.append((f"order:{order_no}:sale", "sale", lines, f"{product.name} × {qty}", order_id,
                             delivered))
            self.gmv += amount
            if direct:
                upstream = "success"
                bulk.add("recharge_attempt", (order_id, product.supplier_id, 1, product.upstream_code, cost_total,
                                              "success", f"XC{order_id:012d}", 0, paid, delivered, delivered))
            refund_at = delivered + timedelta(hours=rng.uniform(1, 12)) if status == "refunded" else None
            plan = self._commissions(buyer, amount) if buyer is not None else []
            if plan:
                self._accrue(plan, order_id, order_no, amount, delivered, refund_at, journals)
            if product.kind == "card":
                self._sell_secrets(product, order_id, order_no, qty, delivered, refund_at is not None, month)
                if delivered >= self.last7_start:
                    product.sold_last7 += qty
            if refund_at is not None:
                self.gmv -= amount
                reverse = [(acc, -amt) for acc, amt in lines]
                # i18n-keep: data
                journals.append((f"order:{order_no}:sale-reversal", "sale_reversal", reverse, f"退款 {order_no}",
                                 order_id, refund_at))
                if buyer is None:
                    journals.append((f"refund:{channel}:{trade_no}", "refund",
                                     # i18n-keep: data
                                     [(self.p_buyer_funds, -amount), (clearing, amount)], "买家申请退款",
                                     order_id, refund_at))
                # i18n-keep: data
                bulk.add("refund", (order_id, amount, "wallet" if buyer is not None else channel, "买家申请退款",
                                    "succeeded", refund_at))
            bulk.add("orders", (order_id, order_no, buyer.id if buyer else None, product.id, product.supplier_id,
                                tier_id, qty, product.face, unit, amount, 0, cost_total, fee,
                                buyer.path if buyer else None, "refunded" if refund_at else "delivered", upstream,
                                channel, account, contact, created, paid, delivered, refund_at or delivered))
            self.status_counts["refunded" if refund_at else "delivered"] += 1
        self._write_journals(journals)

    def _sale(self, order, from_wallet: bool, buyer: _HAgent | None) -> list[tuple[int, int]]:
        """The sale journal's postings as (account id, amount): app.orders.service.sale_lines, merged as
        ledger.post_journal merges them (zero amounts dropped). Computed once per distinct sale, with the funding
        account (the buyer's wallet, or buyer funds) filled in per order."""
        key = (order.amount, order.supplier_id, order.cost_total, order.service_fee, from_wallet)
        template = self._sale_templates.get(key)
        if template is None:
            funding = "agent:0:wallet" if from_wallet else BUYER_FUNDS
            template = [(None if ln.account_code == funding else self.accounts[ln.account_code], ln.amount)
                        for ln in ledger._merge(sale_lines(order, funding))]
            self._sale_templates[key] = template
        fund_id = buyer.wallet if from_wallet else self.p_buyer_funds
        return [(fund_id if acc is None else acc, amount) for acc, amount in template]

    def _trade_no(self, channel: str, at: datetime) -> str:
        self.topup_seq += 1
        scrambled = (self.topup_seq * 48_828_125 + 7) % 10 ** 12
        head = {"alipay": "2088", "wechatpay": "4200", "sandbox": "SBX"}[channel]
        return f"{head}{self._day_text(at)}H{self.run_no:02d}{scrambled:012d}"

    def _ensure_funds(self, buyer: _HAgent, amount: int, at: datetime) -> None:
        """Top the wallet up (a paid channel top-up, minutes before the purchase) when it cannot pay."""
        if buyer.spendable >= amount:
            return
        rng = self.rng
        need = amount - buyer.spendable
        size = max(rng.choice(buyer.topup_sizes), -(-need // 10_000) * 10_000)
        size = min(size, 5_000_000) if need <= 5_000_000 else need
        paid = max(at - timedelta(minutes=rng.uniform(1, 40)), buyer.created + timedelta(seconds=1))
        paid = min(paid, at)
        u = rng.random()
        channel = "alipay" if u < 0.5 else ("wechatpay" if u < 0.95 else "sandbox")
        topup_id = self.bulk.ids("wallet_topup", 1)[0]
        topup_no = self._order_no(paid, prefix="T")
        trade_no = self._trade_no(channel, paid)
        self.bulk.add("wallet_topup", (topup_id, topup_no, buyer.id, size, channel, "paid",
                                       paid - timedelta(seconds=rng.randint(10, 90)), paid))
        self.bulk.add("payment", (channel, trade_no, None, topup_id, size, "CNY", "paid", paid))
        self._topup_journals.append((f"pay:{channel}:{trade_no}", "topup",
                                     [(self.accounts[f"platform:clearing:{channel}"], -size), (buyer.wallet, size)],
                                     f"{topup_no} 钱包充值", None, paid))  # i18n-keep: data
        buyer.spendable += size

    def _commissions(self, buyer: _HAgent, amount: int) -> list[tuple[int, _HAgent, int]]:
        """(level, beneficiary, rate) as app.network.commissions.beneficiaries decides: uplines nearest first,
        direct rate at level 1, indirect above, no compression past a zero rate."""
        ids = [int(x) for x in buyer.path.strip("/").split("/") if x][:-1][::-1][:self.levels]
        plan = []
        for level, agent_id in enumerate(ids, start=1):
            upline = self.agents_by_id.get(agent_id)
            if upline is None:
                continue
            tier = self.tier_by_id[upline.tier_id]
            rate = tier.direct_commission_bp if level == 1 else tier.indirect_commission_bp
            if rate > 0 and apply_rate(amount, rate) > 0:
                plan.append((level, upline, rate))
        return plan

    def _accrue(self, plan, order_id: int, order_no: str, amount: int, delivered: datetime,
                refund_at: datetime | None, journals: list) -> None:
        total = 0
        lines = []
        reverse = []
        for level, upline, rate in plan:
            amt = apply_rate(amount, rate)
            total += amt
            lines.append((upline.pending, amt))
            settle_after = delivered + timedelta(days=self.tier_by_id[upline.tier_id].settle_days)
            run_id = settled_at = None
            status = "pending"
            if refund_at is not None:
                status = "reversed"
                reverse.append((upline.pending, -amt))
            else:
                r = bisect.bisect_left(self.settle_cutoffs, settle_after)
                if r < len(self.settle_cutoffs):
                    status, run_id = "settled", self.run_ids[r]
                    settled_at = self.settle_cutoffs[r] + timedelta(seconds=30)
                    self.run_totals[r][upline.id] += amt
                    self.run_counts[r] += 1
            self.bulk.add("commission", (order_id, upline.id, level, rate, amount, amt, status, settle_after,
                                         run_id, delivered, settled_at, refund_at))
        journals.append((f"commission:{order_no}:accrue", "commission_accrual", [(self.p_expense, -total)] + lines,
                         f"佣金 {order_no}", order_id, delivered))  # i18n-keep: data
        if reverse:
            # i18n-keep: data
            journals.append((f"commission:{order_no}:reverse", "commission_reversal",
                             [(self.p_expense, total)] + reverse, f"佣金冲回 {order_no}", order_id, refund_at))

    def _sell_secrets(self, product: _HProduct, order_id: int, order_no: str, qty: int, sold_at: datetime,
                      voided: bool, month: int) -> None:
        """The order's secrets: derived from its number (so unique), stored as an import would store them."""
        batch_id = product.batch_ids[month]
        for k in range(qty):
            secret = f"H{order_no}{k:02d} {(int(order_no[-8:]) * 7 + k * 131 + product.id) % 10 ** 8:08d}"
            self.bulk.add("card_secret", (product.id, self._encrypt(secret), self._keyed_hash(product.id, secret),
                                          crypto.mask(secret), "void" if voided else "sold", order_id, batch_id,
                                          self._batch_created[batch_id], sold_at))
        product.sold += qty

    def _card_batches(self) -> None:
        """One stock import per card product and month (the secrets the month's orders took)."""
        self._batch_created: dict[int, datetime] = {}
        self._batch_rows: list[tuple] = []
        first = self.start_day.year * 12 + self.start_day.month
        last = self.end_local.year * 12 + self.end_local.month
        cards = [p for p in self.products if p.kind == "card"]
        ids = self.bulk.ids("card_import", len(cards) * (last - first + 1))
        it = iter(ids)
        for p in cards:
            for m in range(first, last + 1):
                year, month0 = divmod(m - 1, 12)
                month_start = max(self.start_day, date(year, month0 + 1, 1))
                created = self._utc(datetime.combine(month_start, datetime.min.time())) - timedelta(hours=2)
                batch_id = next(it)
                p.batch_ids[(year - self.start_day.year) * 12 + month0 + 1] = batch_id
                self._batch_created[batch_id] = created
                self._batch_rows.append((batch_id, p.id, f"history-{self.run_no}-{year}-{month0 + 1:02d}.txt",
                                         created))
        # The batch rows go in before any secret refers to them; their counts are filled in at the end.
        self._insert_rows(CardImport.__table__, [
            {"id": b, "product_id": pid, "source": "history", "filename": name, "status": "done", "total_lines": 0,
             "processed": 0, "added": 0, "duplicates": 0, "rejected": 0, "report": "{}", "created_at": at,
             "finished_at": at + timedelta(minutes=3)} for b, pid, name, at in self._batch_rows])

    def _settlement_runs(self) -> tuple[list[datetime], list[int]]:
        """The daily settlement job at 03:00 China time: cutoffs ascending, run ids reserved."""
        cutoffs = []
        for d in range(1, self.days):
            at = self._utc(datetime.combine(self.start_day + timedelta(days=d), datetime.min.time())
                           + timedelta(hours=3))
            if at < self.end:
                cutoffs.append(at)
        ids = self.bulk.ids("settlement_run", len(cutoffs))
        from app.network.models import SettlementRun
        self._insert_rows(SettlementRun.__table__, [
            {"id": i, "trigger": "scheduled", "cutoff": c, "settled_count": 0, "settled_amount": 0,
             "recovered_amount": 0, "status": "done", "started_at": c, "finished_at": c + timedelta(minutes=1)}
            for i, c in zip(ids, cutoffs, strict=True)])
        return cutoffs, ids

    def _insert_rows(self, table, rows: list[dict]) -> None:
        if rows:
            self.bulk.conn.execute(table.insert(), rows)

    def _write_journals(self, journals: list[tuple]) -> None:
        """Top-ups first (they precede the purchases they fund), then the orders' journals, with their postings;
        cached balances (wallets, pending) change by the same amounts."""
        journals = self._topup_journals + journals
        self._topup_journals = []
        ids = self.bulk.ids("ledger_journal", len(journals))
        cached = self.cached_ids
        for (key, kind, lines, memo, order_id, at), journal_id in zip(journals, ids, strict=True):
            self.bulk.add("ledger_journal", (journal_id, key, kind, self._hash(kind, lines), memo, order_id, at))
            for acc_id, amount in lines:
                self.bulk.add("ledger_posting", (journal_id, acc_id, amount, at))
                if acc_id in cached:
                    self.deltas[acc_id] += amount

    def _hash(self, kind: str, lines: list[tuple[int, int]]) -> str:
        """ledger.post_journal's content hash (kind and sorted (code, amount)), memoized: most lines repeat."""
        key = (kind, tuple(lines))
        found = self.content_hashes.get(key)
        if found is None:
            codes = self.codes
            found = ledger._content_hash(kind, [ledger.Line(codes[acc], amt) for acc, amt in lines])
            if len(self.content_hashes) < 500_000:
                self.content_hashes[key] = found
        return found

    @property
    def codes(self) -> dict[int, str]:
        if not hasattr(self, "_codes"):
            self._codes = {v: k for k, v in self.accounts.items()}
            for a in self.agents:
                self._codes[a.wallet] = ledger.agent_account_code(a.id, "wallet")
                self._codes[a.pending] = ledger.agent_account_code(a.id, "pending")
                if a.frozen:
                    self._codes[a.frozen] = ledger.agent_account_code(a.id, "frozen")
        return self._codes

    @property
    def cached_ids(self) -> set[int]:
        if not hasattr(self, "_cached"):
            self._cached = ({a.wallet for a in self.agents} | {a.pending for a in self.agents}
                            | {a.frozen for a in self.agents if a.frozen})
        return self._cached

    # ------------------------------------------------------------------------------------------------ withdrawals
    def _withdrawals(self) -> list[tuple]:
        """Withdrawal rows and their journals, as app.network.withdrawals books them: `withdrawal:<no>:freeze`
        (wallet -> frozen) on request, then `:paid` (frozen -> platform:payouts + platform:fees) or `:release`
        (frozen -> wallet) when reviewed; still pending review when the history ends first.

        Only settled commissions are withdrawn, never the top-ups the purchases are funded by: the purchase
        simulation keeps that money non-negative on its own, and this keeps the commission money non-negative at
        every instant (a request takes at most what was settled before it, less what was requested before and
        not given back), so no wallet goes negative at any point. Returns the journals (time order per agent)."""
        # A random stream of their own: the stock drawn after them stays what it was without them.
        rng = self.wrng = random.Random(f"{self.seed}-{self.run_no}-withdrawals")
        bulk, end = self.bulk, self.end
        # agent id -> (times of its settlements, running total settled into its wallet), both ascending
        credits: dict[int, tuple[list[datetime], list[int]]] = defaultdict(lambda: ([], []))
        for r in sorted(self.run_totals):
            at = self.settle_cutoffs[r] + timedelta(seconds=30)  # the settlement journal's time
            for agent_id, amount in self.run_totals[r].items():
                times, totals = credits[agent_id]
                times.append(at)
                totals.append((totals[-1] if totals else 0) + amount)
        daily_limit = int(current_app.config.get("WITHDRAWAL_DAILY_LIMIT") or 0)
        reviewer = self._reviewer()
        requests: list[list] = []  # [agent, no, created, amount, fee, status, decided, reviewed]
        ready: list[tuple[_HAgent, datetime, list]] = []  # who could still ask near the end (for pending review)

        def available(agent_id: int, mine: list, at: datetime) -> int:
            """Commission money in the wallet at `at`: settled so far, less requests not given back by then."""
            times, totals = credits[agent_id]
            i = bisect.bisect_right(times, at)
            back = sum(q[3] for q in mine if q[5] == "rejected" and q[6] <= at)
            return (totals[i - 1] if i else 0) - sum(q[3] for q in mine) + back

        def room(mine: list, at: datetime) -> int:
            """What the daily limit still allows on `at`'s business day."""
            if not daily_limit:
                return 1 << 62
            day = self._local(at).date()
            return daily_limit - sum(q[3] for q in mine if self._local(q[2]).date() == day)

        for agent_id in sorted(credits):
            a = self.agents_by_id[agent_id]
            tier = self.tier_by_id[a.tier_id]
            if not tier.may_withdraw or a.verified_at is None or not a.frozen:
                continue
            mine: list[list] = []
            at = max(credits[agent_id][0][0], a.verified_at)
            while True:
                at += timedelta(seconds=int(rng.expovariate(1 / WITHDRAW_EVERY_DAYS) * 86400))
                if not 9 <= self._local(at).hour <= 22:  # asked in waking hours
                    at += timedelta(seconds=int(rng.uniform(10, 13) * 3600))
                if at >= end:
                    break
                amount = self._withdrawal_amount(min(available(agent_id, mine, at), room(mine, at)), tier)
                if amount:
                    mine.append(self._withdrawal(a, tier, at, amount))
            requests += mine
            last = mine[-1][2] if mine else a.verified_at
            ready.append((a, last, mine))

        # A history of any size shows every state on the review screens: the latest request still waiting, and
        # one turned down. Both only leave a wallet richer than the simulation above assumed, or equal.
        if requests and not any(q[5] == "pending_review" for q in requests):
            for a, last, mine in sorted(ready, key=lambda x: x[1], reverse=True):
                at = max(last + timedelta(minutes=5), end - timedelta(seconds=rng.randint(3600, 6 * 3600)))
                tier = self.tier_by_id[a.tier_id]
                amount = self._withdrawal_amount(min(available(a.id, mine, at), room(mine, at)), tier)
                if amount and at < end:
                    q = self._withdrawal(a, tier, at, amount)
                    q[5], q[6], q[7] = "pending_review", None, None
                    requests.append(q)
                    break
        paid = [q for q in requests if q[5] == "paid"]
        if len(paid) >= 3 and not any(q[5] == "rejected" for q in requests):
            q = rng.choice(paid)
            q[5], q[7] = "rejected", q[6]

        journals = []
        fees, payouts = self.p_fees, self.accounts["platform:payouts"]
        for a, no, created, amount, fee, status, decided, reviewed in sorted(requests, key=lambda q: q[2]):
            journals.append((f"withdrawal:{no}:freeze", "withdrawal_freeze", [(a.wallet, -amount), (a.frozen, amount)],
                             f"提现申请 {no}", None, created))  # i18n-keep: data
            reason = paid_at = payout_ref = None
            if status == "paid":
                lines = [(a.frozen, -amount), (payouts, amount - fee), (fees, fee)]
                journals.append((f"withdrawal:{no}:paid", "withdrawal_paid", [ln for ln in lines if ln[1]],
                                 f"提现打款 {no}", None, decided))  # i18n-keep: data
                paid_at, payout_ref = decided, no
            elif status == "rejected":
                # i18n-keep: data
                journals.append((f"withdrawal:{no}:release", "withdrawal_release",
                                 [(a.frozen, -amount), (a.wallet, amount)], f"提现驳回 {no}", None, decided))
                reason = REJECT_REASONS[int(no[-4:]) % len(REJECT_REASONS)]
            bulk.add("withdrawal", (no, a.id, amount, fee, amount - fee, a.card, status, reason,
                                    reviewer if reviewed else None, reviewed, payout_ref, created, paid_at))
            self.withdrawal_counts[status] += 1
        return journals

    def _withdrawal_amount(self, available: int, tier: Tier) -> int:
        """What an agent asks for out of `available` fen: most or all of it, in round yuan (round hundreds when
        there is that much), or 0 when that is under the tier's minimum or leaves nothing after the fee."""
        minimum = max(tier.min_withdrawal, 1)
        amount = int(available * self.wrng.uniform(0.5, 1.0))
        amount -= amount % (10_000 if amount >= 100_000 else 100)
        if amount < minimum:
            amount = available - available % 100  # all of it, when a part would be too little
        if amount < minimum or amount <= 0 or amount - apply_rate(amount, tier.withdrawal_fee_bp) <= 0:
            return 0
        return amount

    def _withdrawal(self, a: _HAgent, tier: Tier, at: datetime, amount: int) -> list:
        """One request at `at`: reviewed a day or two later (after `end`: still pending review), then paid (the
        payout job runs right after approval) or, now and then, rejected."""
        rng = self.wrng
        decided = at + timedelta(seconds=int(rng.uniform(18, 44) * 3600))
        status = "pending_review" if decided >= self.end else (
            "rejected" if rng.random() < WITHDRAW_REJECTED else "paid")
        reviewed = None
        if status == "paid":
            reviewed = decided - timedelta(seconds=rng.randint(60, 1800))
        elif status == "rejected":
            reviewed = decided
        else:
            decided = None
        fee = apply_rate(amount, tier.withdrawal_fee_bp)
        return [a, self._order_no(at, prefix="W"), at, amount, fee, status, decided, reviewed]

    def _reviewer(self) -> int | None:
        """The staff user the reviews are booked to: the first admin, if there is one."""
        return db.session.connection().execute(text(
            "SELECT u.id FROM ab_user u JOIN ab_user_role ur ON ur.user_id = u.id"
            " JOIN ab_role r ON r.id = ur.role_id WHERE r.name = 'Admin' ORDER BY u.id LIMIT 1")).scalar()

    # ------------------------------------------------------------------------------------------------ finish
    def _finish(self) -> None:
        bulk = self.bulk
        # Settlement: one journal per daily run, pending -> wallet per agent, as app.network.settlement posts it.
        journals = []
        from app.network.models import SettlementRun
        run_updates = []
        for r, per_agent in sorted(self.run_totals.items()):
            run_id, cutoff = self.run_ids[r], self.settle_cutoffs[r]
            lines = []
            for agent_id in sorted(per_agent):
                a = self.agents_by_id[agent_id]
                lines += [(a.pending, -per_agent[agent_id]), (a.wallet, per_agent[agent_id])]
            # i18n-keep: data
            journals.append((f"settlement:{run_id}:1", "settlement", lines, f"佣金结算 #{run_id} 批次 1", None,
                             cutoff + timedelta(seconds=30)))
            run_updates.append({"rid": run_id, "n": self.run_counts[r], "amt": sum(per_agent.values())})
        journals += self._withdrawals()
        self._write_journals(journals)
        if run_updates:
            table = SettlementRun.__table__
            bulk.conn.execute(table.update().where(table.c.id == bindparam("rid")).values(
                settled_count=bindparam("n"), settled_amount=bindparam("amt")), run_updates)

        # Stock left: weeks of it for the first card product, a few days for the next, one under its
        # low-stock threshold (a restock alert to show).
        cards = [p for p in self.products if p.kind == "card"]
        now = self.end
        for i, p in enumerate(cards):
            daily = max(p.sold_last7 / 7, 1)
            left = int(daily * (30 if i % 3 == 0 else 4)) if i % 3 != 1 else 6
            left = max(0, min(left, 50_000))
            batch_id = p.batch_ids[max(p.batch_ids)]
            for k in range(left):
                secret = f"H{self.run_no:02d}S{p.id:04d}{k:06d} {self.rng.randrange(10 ** 8):08d}"
                bulk.add("card_secret", (p.id, self._encrypt(secret), self._keyed_hash(p.id, secret),
                                         crypto.mask(secret), "available", None, batch_id, now, None))
        bulk.flush()
        # Import batches: what each month's import added.
        if self._batch_rows:
            added = dict(bulk.conn.execute(text(
                "SELECT batch_id, COUNT(*) FROM card_secret WHERE batch_id IN :ids GROUP BY batch_id")
                .bindparams(bindparam("ids", expanding=True)), {"ids": [b[0] for b in self._batch_rows]}).all())
            table = CardImport.__table__
            bulk.conn.execute(table.update().where(table.c.id == bindparam("bid")).values(
                total_lines=bindparam("n"), processed=bindparam("n"), added=bindparam("n")),
                [{"bid": b[0], "n": added.get(b[0], 0)} for b in self._batch_rows])
        # Cached balances move by exactly their postings.
        changes = [(acc, delta) for acc, delta in self.deltas.items() if delta]
        if changes:
            if bulk.pg:
                bulk.conn.execute(text(
                    "UPDATE ledger_account a SET balance = a.balance + d.delta "
                    "FROM unnest(:ids, :deltas) AS d(id, delta) WHERE a.id = d.id").bindparams(
                    bindparam("ids", type_=ARRAY(Integer)), bindparam("deltas", type_=ARRAY(BigInteger))),
                    {"ids": [c[0] for c in changes], "deltas": [c[1] for c in changes]})
            else:
                table = Account.__table__
                bulk.conn.execute(table.update().where(table.c.id == bindparam("aid")).values(
                    balance=table.c.balance + bindparam("delta")), [{"aid": a, "delta": v} for a, v in changes])
        if bulk.pg:
            for table in ("agent", "ledger_account", "orders", "ledger_journal", "ledger_posting", "commission",
                          "card_secret", "payment", "real_name", "wallet_topup", "withdrawal"):
                bulk.conn.execute(text(f"ANALYZE {table}"))


def _accumulate(values) -> list[float]:
    total = 0.0
    out = []
    for v in values:
        total += v
        out.append(total)
    return out


def _apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` over the weights, largest remainders first: the counts add up exactly."""
    s = sum(weights)
    raw = [total * w / s for w in weights]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[:total - sum(counts)]:
        counts[i] += 1
    return counts


def _ric_check_digit(body17: str) -> str:
    """GB 11643 check character of a resident ID number's first 17 digits."""
    total = sum(int(c) * (2 ** (17 - i) % 11) for i, c in enumerate(body17))
    return "10X98765432"[total % 11]


def _luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


_PROVINCES: dict[str, str] = {}


def _province(region: str) -> str:
    """The province name the real-name check derives from a region code (stdnum's table)."""
    if region not in _PROVINCES:
        from stdnum import numdb
        info = {k: v for _part, props in numdb.get("cn/loc").info(region) for k, v in props.items()}
        _PROVINCES[region] = info.get("province", "")
    return _PROVINCES[region]


def generate(orders: int, seed: int = DEFAULT_SEED, days: int = 365, chunk: int = 50_000,
             end: datetime | None = None, progress: Callable[[str], None] | None = None,
             rollups: bool = True, check_references: bool = False,
             advance: Callable[[int, int], None] | None = None, wait_for_fold: bool = True) -> HistoryReport:
    """Write a history of `orders` orders over the last `days` days (see the module docstring), commit it, then
    rebuild the rollups over its days and fold its money flows. Returns counts, GMV and per-phase timings.

    `check_references`: keep PostgreSQL's foreign-key triggers on during the load (slower; the tests do).
    `advance(done, total)`: called as orders are written (a progress bar). `wait_for_fold=False`: journals younger
    than the money-flow fold's lag are left to the periodic `rollup-money` job instead of being waited for.
    """
    started = time.perf_counter()
    builder = HistoryBuilder(orders, seed=seed, days=days, chunk=chunk, end=end, progress=progress,
                             check_references=check_references, advance=advance)
    try:
        report = builder.run()
    except Exception:
        db.session.rollback()
        raise
    if rollups:
        _rollups(report, progress or (lambda _m: None), wait_for_fold)
    report.timings["total"] = round(time.perf_counter() - started, 2)
    return report


def _rollups(report: HistoryReport, progress: Callable[[str], None], wait_for_fold: bool = True) -> None:
    """Rollups of the history's days, rebuilt from the source tables, then its journals folded into the money
    flows (the rebuild covers journals up to the fold's watermark, the fold the rest: nothing counted twice)."""
    from app.analytics import service as analytics

    t = time.perf_counter()
    analytics.rebuild(report.start, report.end)
    report.timings["rollups: rebuild"] = round(time.perf_counter() - t, 2)
    progress(f"rollups rebuilt for {report.start} .. {report.end}")
    t = time.perf_counter()
    waited = False
    while True:
        if analytics.fold_money(500_000):
            continue
        mark = db.session.scalar(select(RollupState.value).where(RollupState.name == analytics.MONEY_WATERMARK))
        newest = db.session.scalar(select(func.max(Journal.id)))
        db.session.rollback()
        if waited or not wait_for_fold or newest is None or newest <= (mark or 0):
            break
        # Journals younger than the fold's safety lag (the demo's own top-ups, just posted) hold it back: wait
        # the lag out once rather than fold around it.
        lag = int(current_app.config.get("ROLLUP_MONEY_LAG_SECONDS", 30))
        progress(f"waiting {lag + 1} s for the money-flow fold's lag")
        time.sleep(lag + 1)
        waited = True
    report.timings["rollups: money flows fold"] = round(time.perf_counter() - t, 2)
