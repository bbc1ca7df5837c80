"""Bulk extraction (批量提卡): the card secrets of an agent's own delivered orders as one file, streamed.

A reseller that bought 200 cards needs them as a file for its own shop: one order's secrets, or every order of a range
of business days, as TXT (one secret per line, exactly as delivered), CSV (UTF-8 with BOM: order number, product,
secret, delivery time) or XLSX. CSV and XLSX cells go through app.cells (a secret starting with = + - @ is written
with a leading apostrophe, so no spreadsheet runs it as a formula); TXT is plain text, no spreadsheet reads it as one.

Each download, before its first byte:
- is scoped to the caller's own orders (an order of anyone else, a downline included, is "not found", exactly as a
  missing one: only the buyer ever sees secrets);
- marks the reusable secrets' uses it contains revealed (app.catalog.cards.record_reveal: a refund then keeps them);
- counts one more download on each order it contains (order_secret_download, shown on the portal's order page);
- writes an audit entry `card.extract` (who, how: portal or Open API and which key, format, orders, secrets);
and these are committed together. The rows are then read in batches (a server-side cursor on PostgreSQL) and written
out as they come; an XLSX is built on disk in constant memory first (a zip's directory is written last) and then
streamed from there.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import func, literal, select, union_all

from app import crypto
from app.audit import service as audit
from app.catalog import cards
from app.catalog.models import CardSecret, CardSecretUse, Product, SecretDownload
from app.cells import safe_row, write_xlsx_row
from app.clock import business_tz, to_local, utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.orders.models import Order
from app.rows import dialect_insert

XLSX_MIMETYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FORMATS = {"txt": "text/plain", "csv": "text/csv", "xlsx": XLSX_MIMETYPE}
API_FORMATS = ("txt", "csv")  # the Open API's: a reseller's program reads text
DELIVERED = ("delivered", "disputed")  # the statuses whose secrets the buyer sees (as the portal shows them)
MAX_RANGE_DAYS = 92
MAX_SECRETS = 100_000  # one file; a larger range is refused with a message to narrow it
BATCH = 1000
# the file's header row, in the language of the request that downloads it
COLUMNS = (lazy_gettext("订单号"), lazy_gettext("商品"), lazy_gettext("卡密"), lazy_gettext("到账时间"))
VIAS = ("portal", "openapi")
ORDER_NO_MAX = 32


class InvalidFormat(ValidationError):
    code = "invalid_format"


class OrderNotDelivered(Conflict):
    code = "order_not_delivered"


class NothingToExtract(ValidationError):
    code = "no_secrets"


@dataclass(frozen=True)
class Extraction:
    """A download ready to stream: recorded and committed already; `chunks` reads and writes the rows."""
    filename: str
    mimetype: str
    orders: int
    secrets: int
    chunks: Iterator[bytes]


def parse_format(value: object, allowed: tuple[str, ...] = tuple(FORMATS)) -> str:
    """txt, csv or xlsx (as `allowed` says), case-insensitive; anything else is an InvalidFormat naming them."""
    fmt = value.strip().lower() if isinstance(value, str) else None
    if fmt not in allowed:
        raise InvalidFormat(_("format 须为 %(formats)s 之一", formats=" / ".join(allowed)))
    return fmt


def parse_day(value: object, what: str) -> date:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(_("请填写%(what)s（YYYY-MM-DD）", what=what))
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(_("%(what)s须为 YYYY-MM-DD 格式的日期", what=what)) from None
    if not 2000 <= day.year <= 9998:
        raise ValidationError(_("%(what)s超出范围：%(day)s", what=what, day=day))
    return day


def parse_range(since: object, until: object) -> tuple[date, date]:
    """Two business days, both included, at most MAX_RANGE_DAYS apart."""
    first, last = parse_day(since, _("开始日期")), parse_day(until, _("结束日期"))
    if first > last:
        raise ValidationError(_("开始日期 %(first)s 晚于结束日期 %(last)s", first=first, last=last))
    if (last - first).days >= MAX_RANGE_DAYS:
        raise ValidationError(_("日期范围最多 %(days)s 天", days=MAX_RANGE_DAYS))
    return first, last


def _utc(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=business_tz()).astimezone(UTC).replace(tzinfo=None)


def own_order(agent_id: int, order_no: object) -> Order:
    """One of the agent's own orders; anything else (another agent's, a downline's, a malformed number) is NotFound,
    answered exactly as a missing order."""
    if not isinstance(order_no, str) or not order_no.isalnum() or not order_no.isascii() \
            or len(order_no) > ORDER_NO_MAX:
        raise NotFound(_("订单不存在"))
    order = db.session.scalar(select(Order).where(Order.order_no == order_no, Order.agent_id == agent_id))
    if order is None:
        raise NotFound(_("订单不存在"))
    return order


def extract_order(agent_id: int, order_no: object, fmt: str, via: str, api_key: str | None = None) -> Extraction:
    """One of the agent's own orders, delivered (or disputed): its secrets as a file. Recorded and committed."""
    order = own_order(agent_id, order_no)
    if order.status not in DELIVERED:
        raise OrderNotDelivered(_("订单 %(order_no)s 尚未到账，没有可提取的卡密", order_no=order.order_no))
    return _extract(agent_id, [Order.id == order.id], fmt, via, f"{order.order_no}.{fmt}", order.order_no,
                    {"api_key": api_key} if api_key else {})


def extract_range(agent_id: int, since: date, until: date, fmt: str, via: str) -> Extraction:
    """Every delivered (or disputed) order the agent itself placed on business days since..until (inclusive)."""
    if (until - since).days >= MAX_RANGE_DAYS or since > until:
        raise ValidationError(_("日期范围最多 %(days)s 天", days=MAX_RANGE_DAYS))
    where = [Order.agent_id == agent_id, Order.status.in_(DELIVERED), Order.created_at >= _utc(since),
             Order.created_at < _utc(until + timedelta(days=1))]
    return _extract(agent_id, where, fmt, via, f"card-secrets-{since:%Y%m%d}-{until:%Y%m%d}.{fmt}",
                    f"{since.isoformat()}..{until.isoformat()}", {"since": since.isoformat(),
                                                                  "until": until.isoformat()})


def _extract(agent_id: int, where: list, fmt: str, via: str, filename: str, target: str, details: dict) -> Extraction:
    if fmt not in FORMATS or via not in VIAS:
        raise ValueError(f"unknown format {fmt!r} or via {via!r}")
    order_ids = select(Order.id).where(*where)
    orders = db.session.scalar(select(func.count()).select_from(order_ids.subquery()))
    secrets = (db.session.scalar(select(func.count()).select_from(CardSecret).where(CardSecret.order_id.in_(order_ids)))
               + db.session.scalar(select(func.count()).select_from(CardSecretUse).where(
                   CardSecretUse.order_id.in_(order_ids), CardSecretUse.returned_at.is_(None))))
    if not secrets:
        raise NothingToExtract(_("所选订单没有可提取的卡密"))
    if secrets > MAX_SECRETS:
        raise ValidationError(_("卡密数量 %(count)s 超过单次提取上限 %(limit)s，请缩小日期范围",
                                count=secrets, limit=MAX_SECRETS))
    cards.record_reveal(lambda uses: uses.c.order_id.in_(order_ids))
    _count_download(order_ids)
    audit.record("card.extract", "order", target, None,
                 {"via": via, "format": fmt, "agent_id": agent_id, "orders": orders, "secrets": secrets, **details})
    db.session.commit()
    return Extraction(filename, FORMATS[fmt], orders, secrets, _WRITERS[fmt](_rows(where)))


def _count_download(order_ids) -> None:
    """One more download on each order, one statement (an upsert per order)."""
    now = utcnow()
    table = SecretDownload.__table__
    statement = dialect_insert(table).from_select(
        ["order_id", "downloads", "last_downloaded_at"],
        select(Order.id, literal(1), literal(now)).where(Order.id.in_(order_ids)))
    db.session.execute(statement.on_conflict_do_update(
        index_elements=[table.c.order_id],
        set_={"downloads": table.c.downloads + 1, "last_downloaded_at": statement.excluded.last_downloaded_at}))


def download_counts(order_ids: list[int]) -> dict[int, int]:
    """How often each order's secrets were downloaded (absent: never)."""
    if not order_ids:
        return {}
    return dict(db.session.execute(select(SecretDownload.order_id, SecretDownload.downloads)
                                   .where(SecretDownload.order_id.in_(order_ids))).all())


def _rows(where: list) -> Iterator[tuple[str, str, str, str]]:
    """(order number, product, secret, delivery time in the business zone), oldest order first, then by secret:
    normal secrets by their order, reusable ones by their uses not given back."""
    normal = (select(Order.created_at, Order.id.label("oid"), Order.order_no, Product.name, Order.delivered_at,
                     CardSecret.id.label("sid"), CardSecret.secret_enc)
              .join(CardSecret, CardSecret.order_id == Order.id).join(Product, Product.id == Order.product_id)
              .where(*where))
    reused = (select(Order.created_at, Order.id.label("oid"), Order.order_no, Product.name, Order.delivered_at,
                     CardSecret.id.label("sid"), CardSecret.secret_enc)
              .join(CardSecretUse, CardSecretUse.order_id == Order.id)
              .join(CardSecret, CardSecret.id == CardSecretUse.secret_id).join(Product, Product.id == Order.product_id)
              .where(*where, CardSecretUse.returned_at.is_(None)))
    both = union_all(normal, reused).subquery()
    query = select(both).order_by(both.c.created_at, both.c.oid, both.c.sid).execution_options(yield_per=BATCH)
    for row in db.session.execute(query):
        delivered = to_local(row.delivered_at)
        yield (row.order_no, row.name, crypto.decrypt(row.secret_enc),
               delivered.strftime("%Y-%m-%d %H:%M:%S") if delivered else "")


def _txt(rows: Iterator[tuple]) -> Iterator[bytes]:
    """One secret per line (CRLF), exactly as delivered: what a shop's own import reads."""
    lines: list[str] = []
    for row in rows:
        lines.append(row[2])
        if len(lines) >= BATCH:
            yield ("\r\n".join(lines) + "\r\n").encode()
            lines = []
    if lines:
        yield ("\r\n".join(lines) + "\r\n").encode()


def _csv(rows: Iterator[tuple]) -> Iterator[bytes]:
    """UTF-8 with BOM (Excel reads the Chinese header), CRLF, every cell formula-safe (app.cells.safe_row)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write("\ufeff")
    writer.writerow(safe_row([str(c) for c in COLUMNS]))
    for n, row in enumerate(rows, start=1):
        writer.writerow(safe_row(row))
        if n % BATCH == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _xlsx(rows: Iterator[tuple]) -> Iterator[bytes]:
    """Built with XlsxWriter in constant_memory mode in a temporary folder (removed at the end, also when the client
    goes away), string cells only (app.cells.write_xlsx_row), then sent in 64 KiB pieces."""
    import xlsxwriter

    folder = tempfile.mkdtemp(prefix="kameng-extract-")
    try:
        path = os.path.join(folder, "secrets.xlsx")
        book = xlsxwriter.Workbook(path, {"constant_memory": True, "tmpdir": folder, "strings_to_formulas": False,
                                          "strings_to_numbers": False, "strings_to_urls": False})
        sheet = book.add_worksheet(str(lazy_gettext("卡密")))
        write_xlsx_row(sheet, 0, [str(c) for c in COLUMNS], book.add_format({"bold": True}))
        for n, row in enumerate(rows, start=1):
            write_xlsx_row(sheet, n, row)
        book.close()
        with open(path, "rb") as built:
            while piece := built.read(64 * 1024):
                yield piece
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_WRITERS = {"txt": _txt, "csv": _csv, "xlsx": _xlsx}
