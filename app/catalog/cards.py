"""Card stock (卡密): parse and import batches, allocate secrets to orders, reveal to owners, low-stock scan."""
from __future__ import annotations

import csv
import functools
import io
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from flask_babel import gettext as _
from sqlalchemy import Integer, and_, bindparam, case, event, func, insert, literal, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.util import identity_key

from app import crypto, states
from app.catalog.errors import ImportRejected, OutOfStock, ProductUnavailable
from app.catalog.facts import product_facts
from app.catalog.models import (
    CARD_SECRET_STATES,
    IMPORT_STATES,
    CardImport,
    CardSecret,
    CardSecretUse,
    Product,
    StockAlert,
)
from app.clock import utcnow
from app.extensions import db
from app.rows import run

MAX_SECRET_LEN = 256
MIN_SECRET_LEN = 4
MAX_IMPORT_BYTES = 20 * 1024 * 1024
CHUNK = 1000
# A CSV's first row is a header only when every cell is a column name (a secret like "SPIN-001" is not).
_HEADER_WORDS = {"卡号", "密码", "卡密", "账号", "序号",  # i18n-keep: header words read from operators' files
                 "card", "card_no", "cardno", "card no", "card number",
                 "secret", "password", "pwd", "pin", "no", "number"}


@dataclass
class ParsedLines:
    secrets: list[tuple[int, str]] = field(default_factory=list)  # (line number, secret)
    duplicates: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    total_lines: int = 0


def decode_upload(raw: bytes) -> str:
    """Operators' files come as UTF-8 (with or without BOM) or GBK/GB18030."""
    if len(raw) > MAX_IMPORT_BYTES:
        raise ImportRejected(_("文件过大，最大 %(mb)s MB", mb=MAX_IMPORT_BYTES // 1024 // 1024))
    if b"\x00" in raw:
        raise ImportRejected(_("不是文本文件"))
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ImportRejected(_("无法识别文件编码，请使用 UTF-8 或 GBK"))


def _check_secret(secret: str) -> str | None:
    if len(secret) < MIN_SECRET_LEN:
        return _("太短，至少 %(count)s 个字符", count=MIN_SECRET_LEN)
    if len(secret) > MAX_SECRET_LEN:
        return _("太长，最多 %(count)s 个字符", count=MAX_SECRET_LEN)
    if any(unicodedata.category(ch).startswith("C") for ch in secret):
        return _("包含控制字符")
    return None


def _rows(text: str, is_csv: bool) -> list[tuple[int, str]]:
    if not is_csv:
        # Exports often separate card number and password with a tab: keep both, with a space.
        return [(n, line.replace("\t", " ").strip()) for n, line in enumerate(text.splitlines(), start=1)]
    rows = []
    for n, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        values = [c.strip() for c in cells if c.strip()]
        if n == 1 and values and all(v.lower() in _HEADER_WORDS for v in values):
            continue  # a header row
        rows.append((n, " ".join(values)))  # card number and password kept together
    return rows


def parse_lines(text: str, filename: str | None = None) -> ParsedLines:
    """One secret per line (TXT), or per row (CSV: card number, password). Blank lines are skipped."""
    is_csv = bool(filename) and filename.lower().endswith(".csv")
    parsed = ParsedLines()
    seen: dict[str, int] = {}
    for lineno, secret in _rows(text, is_csv):
        if not secret:
            continue
        parsed.total_lines += 1
        problem = _check_secret(secret)
        if problem:
            parsed.rejected.append((lineno, problem))
        elif secret in seen:
            parsed.duplicates.append((lineno, _("与第 %(line)s 行重复", line=seen[secret])))
        else:
            seen[secret] = lineno
            parsed.secrets.append((lineno, secret))
    return parsed


def _existing_hashes(product_id: int, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(hashes), CHUNK):
        chunk = hashes[start:start + CHUNK]
        found.update(db.session.scalars(select(CardSecret.secret_hash).where(
            CardSecret.product_id == product_id, CardSecret.secret_hash.in_(chunk))))
    return found


def _card_product(product_id: int) -> Product:
    product = db.session.get(Product, product_id)
    if product is None:
        raise ProductUnavailable(_("商品不存在：%(id)s", id=product_id))
    if product.kind != "card":
        raise ImportRejected(_("商品「%(name)s」不是卡密类商品", name=product.name))
    return product


def preview(product_id: int, text: str, filename: str | None = None, sample: int = 10) -> dict:
    """What an import would do, without writing anything."""
    product = _card_product(product_id)
    parsed = parse_lines(text, filename)
    hashes = {secret: crypto.keyed_hash(product.id, secret) for _, secret in parsed.secrets}
    in_stock = _existing_hashes(product.id, list(hashes.values()))
    new = [(n, s) for n, s in parsed.secrets if hashes[s] not in in_stock]
    duplicates = parsed.duplicates + [(n, _("库存中已存在")) for n, s in parsed.secrets
                                      if hashes[s] in in_stock]
    return {
        "product": product.name,
        "total_lines": parsed.total_lines,
        "added": len(new),
        "duplicates": len(duplicates),
        "rejected": len(parsed.rejected),
        "sample": [{"line": n, "masked": crypto.mask(s)} for n, s in new[:sample]],
        "duplicate_lines": sorted(duplicates)[:200],
        "rejected_lines": parsed.rejected[:200],
    }


def create_import(product_id: int, text: str, filename: str | None, source: str,
                  user_id: int | None = None) -> CardImport:
    """Record a batch (its lines encrypted) and commit; run_import does the work, inline or as a job."""
    _card_product(product_id)
    parsed = parse_lines(text, filename)
    if parsed.total_lines == 0:
        raise ImportRejected(_("没有可导入的卡密"))
    batch = CardImport(product_id=product_id, source=source, filename=filename, status="queued",
                       total_lines=parsed.total_lines, created_by_id=user_id, payload_enc=crypto.encrypt(text))
    db.session.add(batch)
    db.session.commit()
    return batch


def run_import(import_id: int, progress: Callable[[int, int], None] | None = None) -> dict:
    """Insert the batch's new secrets in chunks, record the report. Idempotent: a finished batch is left alone."""
    batch = db.session.get(CardImport, import_id)
    if batch is None:
        raise ImportRejected(_("导入批次不存在：%(id)s", id=import_id))
    if batch.status == "done":
        return report_of(batch)
    if batch.status != "running":  # running: a run cut off, carried on here
        move_import(batch, "running")
    db.session.commit()
    try:
        text = crypto.decrypt(batch.payload_enc)
        parsed = parse_lines(text, batch.filename)
        _insert_secrets(batch, parsed, progress)
        added = db.session.scalar(select(func.count()).where(CardSecret.batch_id == batch.id))
        stock_dupes = len(parsed.secrets) - added
        batch.added = added
        batch.duplicates = len(parsed.duplicates) + stock_dupes
        batch.rejected = len(parsed.rejected)
        batch.processed = parsed.total_lines
        batch.report = json.dumps({"duplicate_lines": parsed.duplicates[:500],
                                   "stock_duplicates": stock_dupes,
                                   "rejected_lines": parsed.rejected[:500]}, ensure_ascii=False)
        # the plain lines are no longer needed anywhere
        move_import(batch, "done", payload_enc=None, finished_at=utcnow())
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        batch = db.session.get(CardImport, import_id)
        if batch.status == "running":  # (another run that finished it meanwhile keeps its result)
            move_import(batch, "failed", error=str(exc)[:255])
            db.session.commit()
        raise
    return report_of(batch)


def move_import(batch: CardImport, new: str, **values: object) -> None:
    """The one place an import batch's status changes (IMPORT_STATES), guarded on the status the caller holds.
    Does not commit."""
    states.move(IMPORT_STATES, batch.id, batch.status, new, **values)


def _insert_secrets(batch: CardImport, parsed: ParsedLines, progress) -> None:
    dialect = db.engine.dialect.name
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # A reusable product's secrets each carry its limit (NULL: sold once).
    max_uses = db.session.scalar(select(Product.max_uses).where(Product.id == batch.product_id,
                                                                Product.reusable.is_(True)))
    for start in range(0, len(parsed.secrets), CHUNK):
        chunk = parsed.secrets[start:start + CHUNK]
        now = utcnow()
        rows = [{"product_id": batch.product_id, "secret_enc": crypto.encrypt(secret),
                 "secret_hash": crypto.keyed_hash(batch.product_id, secret), "masked": crypto.mask(secret),
                 "status": "available", "batch_id": batch.id, "created_at": now, "max_uses": max_uses, "uses": 0}
                for _, secret in chunk]
        # A concurrent import of the same secret loses quietly; the final count tells what was added.
        db.session.execute(insert_fn(CardSecret).on_conflict_do_nothing(
            index_elements=["product_id", "secret_hash"]), rows)
        finished = start + len(chunk) >= len(parsed.secrets)
        batch.processed = (parsed.total_lines if finished
                           else (start + len(chunk)) * parsed.total_lines // len(parsed.secrets))
        db.session.commit()
        if progress:
            progress(batch.processed, parsed.total_lines)


def report_of(batch: CardImport) -> dict:
    details = json.loads(batch.report) if batch.report else {}
    return {"import_id": batch.id, "status": batch.status, "total_lines": batch.total_lines,
            "added": batch.added, "duplicates": batch.duplicates, "rejected": batch.rejected,
            "duplicate_lines": details.get("duplicate_lines", []),
            "rejected_lines": details.get("rejected_lines", [])}


def allocate(order_id: int, product_id: int, quantity: int) -> list[int]:
    """Mark `quantity` available secrets sold to the order, inside the caller's transaction.

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so concurrent buyers never wait on each other's rows.
    Elsewhere: a guarded UPDATE ... WHERE status='available' with a row-count check.
    All or nothing: raises OutOfStock having written nothing when there are not enough (a paid order's delivery
    refunds it in the same transaction).
    A reusable product (循环卡密) takes its own branch, _allocate_uses; this one is unchanged for every other.
    """
    if _reusable_product(product_id):
        return _allocate_uses(order_id, product_id, quantity)
    now = utcnow()
    if db.engine.dialect.name == "postgresql":
        db.session.flush()  # the order row and anything pending first, as the ORM's autoflush would
        # One round trip, all or nothing: the CTE locks up to `quantity` free secrets (skipping rows other buyers
        # hold); the UPDATE sells them only if it got them all, else changes nothing and returns no row.
        sold = states.move_all(CARD_SECRET_STATES, "available", "sold", *_skip_locked_pick(), shape="allocate",
                               params={"pick_product": product_id, "pick_quantity": quantity},
                               returning=("id", "secret_hash", "secret_enc"), order_id=order_id, sold_at=now)
        if len(sold) < quantity:
            raise OutOfStock(_("库存不足"))
        sold.sort()
        ids = [row.id for row in sold]
        # The delivery's chain record hashes these (app.chain.append_delivery) and the answer to the buyer shows
        # them (reveal): kept for this transaction, saving two re-reads.
        db.session.info.setdefault("allocated_hashes", {})[order_id] = [row.secret_hash for row in sold]
        db.session.info.setdefault("allocated_secrets", {})[order_id] = [row.secret_enc for row in sold]
        return ids
    pick = select(CardSecret.id).where(_free_secrets(CardSecret.__table__, product_id)).order_by(
        *_free_secrets_order(CardSecret.__table__)).limit(quantity)
    ids = list(db.session.scalars(pick))
    if len(ids) < quantity:
        raise OutOfStock(_("库存不足"))
    with db.session.begin_nested():  # a guarded UPDATE that sold only some of them is undone with the raise
        if states.move_all(CARD_SECRET_STATES, "available", "sold", CardSecret.id.in_(ids), order_id=order_id,
                           sold_at=now) != quantity:
            raise OutOfStock(_("库存不足"))
    return ids


@functools.cache
def _skip_locked_pick() -> tuple:
    """allocate's claim on PostgreSQL, built once: the ids of up to :pick_quantity free secrets of :pick_product,
    locked skipping rows other buyers hold, and the condition that all of them were had."""
    table = CardSecret.__table__
    picked = (select(table.c.id).where(_free_secrets(table, bindparam("pick_product", type_=Integer)))
              .order_by(*_free_secrets_order(table)).limit(bindparam("pick_quantity", type_=Integer))
              .with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED"))
    return (table.c.id.in_(select(picked.c.id)),
            select(func.count()).select_from(picked).scalar_subquery() == bindparam("pick_quantity", type_=Integer))


def _free_secrets(table, product_id):
    """A product's available secrets, written so that only the (product_id, status, id) index can hand them out
    lowest id first (with _free_secrets_order). As `product_id = :p AND status = 'available' ORDER BY id`, the
    planner takes both columns for constants, and once the table's statistics say most secrets are available it
    may walk the primary key in id order instead, reading every other product's secrets and every sold one below
    the first free one (seen here: 15,428 rows read by one pick, 2.5 ms, and more with every secret imported).
    As row comparisons the bounds are that index's range: exactly product_id = :p, status = 'available', id > 0;
    and since no other index of the table starts with product_id (the unique one is (secret_hash, product_id)),
    every other plan has to read and sort all the product's rows, whether the table has statistics or not."""
    return and_(tuple_(table.c.product_id, table.c.status, table.c.id) > tuple_(product_id, "available", 0),
                tuple_(table.c.product_id, table.c.status) <= tuple_(product_id, "available"))


def _free_secrets_order(table) -> tuple:
    return table.c.product_id, table.c.status, table.c.id


def _reusable_product(product_id: int) -> bool:
    facts = product_facts(product_id)  # the purchase path has it cached already: no statement
    return facts is not None and facts.reusable


def _allocate_uses(order_id: int, product_id: int, quantity: int) -> list[int]:
    """A reusable product: `quantity` distinct secrets with uses left, each one use more, and a use row per secret.

    Many buyers want the same few rows, so SKIP LOCKED would answer out of stock while a row is merely busy: here
    the pick waits for a row's lock (FOR UPDATE), and PostgreSQL re-checks a row it waited for against the WHERE
    (one used up meanwhile is passed over for the next). The UPDATE is a guarded counter, `uses < max_uses`
    re-checked in its own WHERE, and the table's CHECK (uses <= max_uses) backs it; rows are locked in id order,
    so two buyers of several secrets never deadlock. Distinct ids: one order never gets a secret twice (and the
    use table's unique (secret, order) says so too). All or nothing: fewer than `quantity` raises OutOfStock.
    Lowest ids first: a secret (a shared account) is used up before the next one is handed out; so an order of n
    cards needs n secrets with uses left, and the last uses of a lone secret go to single-card orders.
    """
    now = utcnow()
    table, uses = CardSecret.__table__, CardSecretUse.__table__
    pick = (select(table.c.id).where(_free_secrets(table, product_id), table.c.uses < table.c.max_uses)
            .order_by(*_free_secrets_order(table)).limit(quantity))
    bump = {"uses": table.c.uses + 1, "sold_at": now,
            "status": case((table.c.uses + 1 >= table.c.max_uses, "sold"), else_="available")}
    if db.engine.dialect.name == "postgresql":
        db.session.flush()
        # One round trip: lock the rows (waiting), count them up if all `quantity` were had, record the uses.
        picked = pick.with_for_update().cte("picked").prefix_with("MATERIALIZED")
        sold = (update(table).where(table.c.id.in_(select(picked.c.id)), table.c.uses < table.c.max_uses,
                                    select(func.count()).select_from(picked).scalar_subquery() == quantity)
                .values(**bump).returning(table.c.id, table.c.secret_hash).cte("sold"))
        used = insert(uses).from_select(["secret_id", "order_id", "sold_at"],
                                        select(sold.c.id, literal(order_id), literal(now))).cte("used")
        rows = db.session.connection().execute(
            select(sold.c.id, sold.c.secret_hash).add_cte(used).order_by(sold.c.id)).all()
    else:  # SQLite: one writer at a time; the guarded UPDATE's row count is the check
        ids = list(db.session.scalars(pick))
        if len(ids) < quantity:
            raise OutOfStock(_("库存不足"))
        with db.session.begin_nested():  # a guarded UPDATE that counted only some of them is undone with the raise
            result = db.session.execute(update(table).where(table.c.id.in_(ids), table.c.uses < table.c.max_uses)
                                        .values(**bump))
            if result.rowcount != quantity:
                raise OutOfStock(_("库存不足"))
            db.session.execute(insert(uses), [{"secret_id": i, "order_id": order_id, "sold_at": now} for i in ids])
            rows = db.session.execute(select(table.c.id, table.c.secret_hash).where(table.c.id.in_(ids))
                                      .order_by(table.c.id)).all()
    if len(rows) < quantity:
        raise OutOfStock(_("库存不足"))
    db.session.info.setdefault("allocated_hashes", {})[order_id] = [h for _, h in rows]
    ids = [secret_id for secret_id, _ in rows]
    for secret_id in ids:  # a CardSecret object already loaded in this session rereads its new counter
        loaded = db.session.identity_map.get(identity_key(CardSecret, secret_id))
        if loaded is not None:
            db.session.expire(loaded, ["status", "uses", "sold_at"])
    return ids


def _order_is_reusable(order_id: int) -> bool:
    """Whether an order's product is reusable. The callers have the order loaded (the identity map answers) and
    the product's facts are cached: no statement."""
    from app.orders.models import Order

    order = db.session.get(Order, order_id)
    return order is not None and _reusable_product(order.product_id)


def void_order_secrets(order_id: int) -> int:
    """A refunded order's secrets, in the caller's transaction. Normal secrets were shown to the buyer: kept with
    the order, never sold again (void). A reusable secret's use goes back to the secret (one more sale possible)
    only when the buyer was never shown it; a revealed use stays counted. Returns the secrets voided or given back.
    """
    changed = states.move_all(CARD_SECRET_STATES, "sold", "void", CardSecret.order_id == order_id) or 0
    if _order_is_reusable(order_id):
        changed += _give_back_unrevealed_uses(order_id)
    return changed


def _in_id_order(table, *where):
    """`table.id IN (those rows, locked in id order)`: every statement that updates several use rows or secrets
    locks them in ascending id order, as the allocation does, so two of them never wait on each other in a circle
    (a refund, a reveal, a download and a purchase touching the same rows). SQLite has no row locks: a subquery."""
    inner = table.alias()
    return table.c.id.in_(select(inner.c.id).where(*(w(inner) for w in where)).order_by(inner.c.id)
                          .with_for_update())


def _give_back_unrevealed_uses(order_id: int) -> int:
    """Mark the order's never-revealed uses returned, then count each secret down. The first UPDATE takes the use
    rows' locks: a reveal running at the same moment either marked a use first (then it is not given back) or
    waits and finds it returned (then it does not show it), never both."""
    now = utcnow()
    uses = CardSecretUse.__table__
    returned = [row.secret_id for row in db.session.connection().execute(
        update(uses).where(_in_id_order(uses, lambda u: u.c.order_id == order_id, lambda u: u.c.revealed_at.is_(None),
                                        lambda u: u.c.returned_at.is_(None)))
        .values(returned_at=now).returning(uses.c.secret_id))]
    if not returned:
        return 0
    table = CardSecret.__table__
    db.session.connection().execute(
        update(table).where(_in_id_order(table, lambda t: t.c.id.in_(returned)), table.c.uses > 0)
        .values(uses=table.c.uses - 1, status=case((table.c.status == "void", "void"), else_="available")))
    for secret_id in returned:
        loaded = db.session.identity_map.get(identity_key(CardSecret, secret_id))
        if loaded is not None:
            db.session.expire(loaded, ["status", "uses"])
    return len(returned)


def reveal(order_id: int, offset: int = 0, limit: int | None = None) -> list[str]:
    """The plain secrets of an order (in id order; `offset`/`limit` for one page). Callers must have checked that
    the viewer owns the order.

    A reusable product's uses are marked revealed first, in the caller's transaction, which the caller commits
    before showing them (a refund gives back only uses never revealed): every way a buyer sees secrets (storefront
    lookup, Open API, portal, e-mail, downloads) comes through here. Normal secrets are voided on refund whatever
    was shown, so their reveal writes nothing.
    """
    if _order_is_reusable(order_id):
        return _reveal_uses(order_id, offset, limit)
    allocated = db.session.info.get("allocated_secrets", {}).get(order_id)  # sold in this very transaction
    if allocated is not None and not offset and limit is None:
        return [crypto.decrypt(t) for t in allocated]
    if not offset and limit is None:  # every lookup of a delivered order: a built statement (app.rows.run)
        return [crypto.decrypt(row.secret_enc) for row in run(_SECRETS_OF_ORDER, {"order_id": order_id})]
    query = (select(CardSecret.secret_enc).where(CardSecret.order_id == order_id).order_by(CardSecret.id)
             .offset(offset).limit(limit))
    return [crypto.decrypt(t) for t in db.session.scalars(query)]


_SECRETS_OF_ORDER = (select(CardSecret.__table__.c.secret_enc)
                     .where(CardSecret.__table__.c.order_id == bindparam("order_id", type_=Integer))
                     .order_by(CardSecret.__table__.c.id))


def _reveal_uses(order_id: int, offset: int, limit: int | None) -> list[str]:
    paged = bool(offset) or limit is not None

    def shown(column_of):
        use = aliased(CardSecretUse)  # its own FROM: never correlated to the UPDATE below
        query = (select(column_of(use)).select_from(use).join(CardSecret, CardSecret.id == use.secret_id)
                 .where(use.order_id == order_id, use.returned_at.is_(None)).order_by(CardSecret.id))
        return query.offset(offset).limit(limit) if paged else query

    # Marked before read: a use a concurrent refund gave back is neither marked nor shown (see above). Only the
    # page shown is marked.
    record_reveal((lambda u: u.c.id.in_(shown(lambda use: use.id).scalar_subquery())) if paged
                  else (lambda u: u.c.order_id == order_id))
    return [crypto.decrypt(t) for t in db.session.scalars(shown(lambda use: CardSecret.secret_enc))]


def record_reveal(where) -> int:
    """Mark the reusable uses matching `where(use_table)` (a condition on a card_secret_use table) revealed now,
    once, in the caller's transaction, rows locked in id order; given-back uses never are. Returns how many were
    newly marked."""
    uses = CardSecretUse.__table__
    result = db.session.connection().execute(
        update(uses).where(_in_id_order(uses, where, lambda u: u.c.revealed_at.is_(None),
                                        lambda u: u.c.returned_at.is_(None)))
        .values(revealed_at=utcnow()))
    return result.rowcount or 0


def available_counts(product_ids: list[int] | None = None) -> dict[int, int]:
    """Units each card product can still sell: its available secrets, a reusable secret counting its uses left."""
    left = case((CardSecret.max_uses.is_(None), 1), else_=CardSecret.max_uses - CardSecret.uses)
    query = (select(CardSecret.product_id, func.sum(left)).where(CardSecret.status == "available")
             .group_by(CardSecret.product_id))
    if product_ids is not None:
        query = query.where(CardSecret.product_id.in_(product_ids))
    return {pid: int(n) for pid, n in db.session.execute(query).all()}


def scan_low_stock() -> dict:
    """Raise an alert for each active card product under its threshold; resolve alerts once restocked."""
    products = db.session.scalars(select(Product).where(Product.kind == "card", Product.active.is_(True))).all()
    counts = available_counts([p.id for p in products])
    open_alerts = {a.product_id: a for a in db.session.scalars(select(StockAlert)
                                                               .where(StockAlert.resolved_at.is_(None)))}
    raised = resolved = 0
    for product in products:
        available = counts.get(product.id, 0)
        alert = open_alerts.get(product.id)
        if available < product.low_stock_threshold and alert is None:
            db.session.add(StockAlert(product_id=product.id, available=available,
                                      threshold=product.low_stock_threshold))
            raised += 1
        elif alert is not None and available >= product.low_stock_threshold:
            alert.resolved_at = utcnow()
            resolved += 1
        elif alert is not None:
            alert.available = available
    db.session.commit()
    return {"raised": raised, "resolved": resolved, "open": len(open_alerts) + raised - resolved}


def _forget_allocated(session, *_args) -> None:
    session.info.pop("allocated_hashes", None)
    session.info.pop("allocated_secrets", None)


# What allocate() kept for the delivery's chain record and the buyer's answer lives only as long as its
# transaction.
event.listen(Session, "after_commit", _forget_allocated)
event.listen(Session, "after_soft_rollback", _forget_allocated)
