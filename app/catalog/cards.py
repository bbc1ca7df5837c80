"""Card stock (卡密): parse and import batches, allocate secrets to orders, reveal to owners, low-stock scan."""
from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from app import crypto
from app.catalog.errors import ImportRejected, OutOfStock, ProductUnavailable
from app.catalog.models import CardImport, CardSecret, Product, StockAlert
from app.clock import utcnow
from app.extensions import db

MAX_SECRET_LEN = 256
MIN_SECRET_LEN = 4
MAX_IMPORT_BYTES = 20 * 1024 * 1024
CHUNK = 1000
# A CSV's first row is a header only when every cell is a column name (a secret like "SPIN-001" is not).
_HEADER_WORDS = {"卡号", "密码", "卡密", "账号", "序号", "card", "card_no", "cardno", "card no", "card number",
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
        raise ImportRejected(f"文件过大，最大 {MAX_IMPORT_BYTES // 1024 // 1024} MB (file too large)")
    if b"\x00" in raw:
        raise ImportRejected("不是文本文件 (not a text file)")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ImportRejected("无法识别文件编码，请使用 UTF-8 或 GBK (unknown encoding)")


def _check_secret(secret: str) -> str | None:
    if len(secret) < MIN_SECRET_LEN:
        return f"太短，至少 {MIN_SECRET_LEN} 个字符 (too short)"
    if len(secret) > MAX_SECRET_LEN:
        return f"太长，最多 {MAX_SECRET_LEN} 个字符 (too long)"
    if any(unicodedata.category(ch).startswith("C") for ch in secret):
        return "包含控制字符 (contains control characters)"
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
            parsed.duplicates.append((lineno, f"与第 {seen[secret]} 行重复 (duplicate of line {seen[secret]})"))
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
        raise ProductUnavailable(f"商品不存在 (unknown product {product_id})")
    if product.kind != "card":
        raise ImportRejected(f"商品「{product.name}」不是卡密类商品 (not a card product)")
    return product


def preview(product_id: int, text: str, filename: str | None = None, sample: int = 10) -> dict:
    """What an import would do, without writing anything."""
    product = _card_product(product_id)
    parsed = parse_lines(text, filename)
    hashes = {secret: crypto.keyed_hash(product.id, secret) for _, secret in parsed.secrets}
    in_stock = _existing_hashes(product.id, list(hashes.values()))
    new = [(n, s) for n, s in parsed.secrets if hashes[s] not in in_stock]
    duplicates = parsed.duplicates + [(n, "库存中已存在 (already in stock)") for n, s in parsed.secrets
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
        raise ImportRejected("没有可导入的卡密 (no lines to import)")
    batch = CardImport(product_id=product_id, source=source, filename=filename, status="queued",
                       total_lines=parsed.total_lines, created_by_id=user_id, payload_enc=crypto.encrypt(text))
    db.session.add(batch)
    db.session.commit()
    return batch


def run_import(import_id: int, progress: Callable[[int, int], None] | None = None) -> dict:
    """Insert the batch's new secrets in chunks, record the report. Idempotent: a finished batch is left alone."""
    batch = db.session.get(CardImport, import_id)
    if batch is None:
        raise ImportRejected(f"导入批次不存在 (unknown import {import_id})")
    if batch.status == "done":
        return report_of(batch)
    batch.status = "running"
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
        batch.status = "done"
        batch.payload_enc = None  # the plain lines are no longer needed anywhere
        batch.finished_at = utcnow()
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        batch = db.session.get(CardImport, import_id)
        batch.status = "failed"
        batch.error = str(exc)[:255]
        db.session.commit()
        raise
    return report_of(batch)


def _insert_secrets(batch: CardImport, parsed: ParsedLines, progress) -> None:
    dialect = db.engine.dialect.name
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(parsed.secrets), CHUNK):
        chunk = parsed.secrets[start:start + CHUNK]
        now = utcnow()
        rows = [{"product_id": batch.product_id, "secret_enc": crypto.encrypt(secret),
                 "secret_hash": crypto.keyed_hash(batch.product_id, secret), "masked": crypto.mask(secret),
                 "status": "available", "batch_id": batch.id, "created_at": now} for _, secret in chunk]
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
    Raises OutOfStock (the caller rolls back) when there are not enough.
    """
    now = utcnow()
    pick = (select(CardSecret.id).where(CardSecret.product_id == product_id, CardSecret.status == "available")
            .order_by(CardSecret.id).limit(quantity))
    if db.engine.dialect.name == "postgresql":
        db.session.flush()  # the order row and anything pending first, as the ORM's autoflush would
        # One round trip, all or nothing: the CTE locks up to `quantity` free secrets (skipping rows other buyers
        # hold); the UPDATE sells them only if it got them all, else changes nothing and returns no row.
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        table = CardSecret.__table__
        sold = db.session.connection().execute(
            update(table).where(table.c.id.in_(select(picked.c.id)),
                                select(func.count()).select_from(picked).scalar_subquery() == quantity)
            .values(status="sold", order_id=order_id, sold_at=now).returning(table.c.id, table.c.secret_hash)).all()
        if len(sold) < quantity:
            raise OutOfStock("库存不足 (out of stock)")
        ids = sorted(secret_id for secret_id, _ in sold)
        # The delivery's chain record hashes these (app.chain.append_delivery): kept for it, saving a re-read.
        db.session.info.setdefault("allocated_hashes", {})[order_id] = [h for _, h in sorted(sold)]
        for secret_id in ids:  # a CardSecret object already loaded in this session rereads its new state
            loaded = db.session.identity_map.get(identity_key(CardSecret, secret_id))
            if loaded is not None:
                db.session.expire(loaded, ["status", "order_id", "sold_at"])
        return ids
    ids = list(db.session.scalars(pick))
    if len(ids) < quantity:
        raise OutOfStock("库存不足 (out of stock)")
    result = db.session.execute(update(CardSecret).where(CardSecret.id.in_(ids), CardSecret.status == "available")
                                .values(status="sold", order_id=order_id, sold_at=now))
    if result.rowcount != quantity:
        raise OutOfStock("库存不足 (out of stock)")
    return ids


def void_order_secrets(order_id: int) -> int:
    """A refunded order's secrets were shown to the buyer: keep them with the order, never sell them again."""
    result = db.session.execute(update(CardSecret).where(CardSecret.order_id == order_id, CardSecret.status == "sold")
                                .values(status="void"))
    return result.rowcount or 0


def reveal(order_id: int) -> list[str]:
    """The plain secrets of an order. Callers must have checked that the viewer owns the order."""
    tokens = db.session.scalars(select(CardSecret.secret_enc).where(CardSecret.order_id == order_id)
                                .order_by(CardSecret.id))
    return [crypto.decrypt(t) for t in tokens]


def available_counts(product_ids: list[int] | None = None) -> dict[int, int]:
    query = (select(CardSecret.product_id, func.count()).where(CardSecret.status == "available")
             .group_by(CardSecret.product_id))
    if product_ids is not None:
        query = query.where(CardSecret.product_id.in_(product_ids))
    return {pid: n for pid, n in db.session.execute(query).all()}


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


# What allocate() kept for the delivery's chain record lives only as long as its transaction.
event.listen(Session, "after_commit", _forget_allocated)
event.listen(Session, "after_soft_rollback", _forget_allocated)
