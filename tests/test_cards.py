"""Card secret stock: parsing and the import report, encryption at rest, the CLI import, large imports as RQ jobs
through the admin page and a real worker, and the low-stock scan."""
from __future__ import annotations

import io
import json
from contextlib import contextmanager

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from sqlalchemy import func, select, text

from app import crypto
from app.catalog import cards
from app.catalog.errors import ImportRejected
from app.catalog.models import CardImport, CardSecret, StockAlert
from app.extensions import db
from app.ledger.invariants import check_ledger
from app.orders import service as orders
from tests.plan_helpers import plan_nodes, statements_sent

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
PG_ONLY = pytest.mark.parametrize("app", ["postgresql"], indirect=True)

LONG = "L" * 257
MAX = "M" * 256
TXT = "\n".join([
    "AAAA-0001",  # 1
    "",  # 2 blank: skipped, not counted
    "  BBBB-0002  ",  # 3 surrounding spaces trimmed
    "AAAA-0001",  # 4 duplicate of line 1
    "abc",  # 5 too short
    LONG,  # 6 too long
    "CCCC\x07DDDD",  # 7 control character
    "   ",  # 8 blank
    "DDDD",  # 9 exactly the minimum length
    MAX,  # 10 exactly the maximum length
    "EEEE\u200bFFFF",  # 11 an invisible format character
]) + "\n"


def _count(db, model) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model))


def _nothing_written(db) -> tuple[int, int]:
    return _count(db, CardImport), _count(db, CardSecret)


def _import(product_id: int, body: str, filename: str | None = None) -> dict:
    batch = cards.create_import(product_id, body, filename, "paste")
    return cards.run_import(batch.id)


# ---------------------------------------------------------------------------------------------------------------
# parsing and the report

def test_txt_lines_blank_lines_duplicates_and_rejections_with_line_numbers():
    parsed = cards.parse_lines(TXT, "cards.txt")
    assert parsed.secrets == [(1, "AAAA-0001"), (3, "BBBB-0002"), (9, "DDDD"), (10, MAX)]
    assert [n for n, _ in parsed.duplicates] == [4]
    assert "第 1 行" in parsed.duplicates[0][1]
    rejected = dict(parsed.rejected)
    assert sorted(rejected) == [5, 6, 7, 11]
    assert "太短" in rejected[5] and "太长" in rejected[6]
    assert "控制字符" in rejected[7] and "控制字符" in rejected[11]
    assert parsed.total_lines == 9  # non-blank lines only


def test_windows_line_endings_and_utf8_bom_are_handled():
    text_ = cards.decode_upload("\ufeffAAAA-0001\r\nBBBB-0002\r\n".encode())
    assert cards.parse_lines(text_).secrets == [(1, "AAAA-0001"), (2, "BBBB-0002")]


CSV = "卡号,密码\n1000200030004000,PASS1234\n1000200030004001, PASS5678 \n\n1000200030004000,PASS1234\n"


def test_csv_header_is_skipped_and_columns_are_joined_by_a_space():
    parsed = cards.parse_lines(CSV, "stock.CSV")
    assert parsed.secrets == [(2, "1000200030004000 PASS1234"), (3, "1000200030004001 PASS5678")]
    assert [n for n, _ in parsed.duplicates] == [5]
    assert parsed.total_lines == 3  # the header and the blank row are not lines
    # the same text as TXT is not split into columns
    assert (2, "1000200030004000,PASS1234") in cards.parse_lines(CSV, "stock.txt").secrets


def test_gbk_upload_is_decoded():
    raw = CSV.encode("gbk")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert cards.decode_upload(raw) == CSV


@pytest.mark.parametrize("raw, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "不是文本文件"),
    (b"\xff\xd8\xff\xe0JFIF", "无法识别文件编码"),
])
def test_binary_uploads_are_refused(raw, message):
    with pytest.raises(ImportRejected, match=message):
        cards.decode_upload(raw)


@BOTH
def test_preview_reports_duplicates_against_stock_and_writes_nothing(app, db, f):
    p = f.product()
    _import(p.id, "AAAA-0001\nBBBB-0002\n")
    before = _nothing_written(db)
    report = cards.preview(p.id, "BBBB-0002\nCCCC-0003\nCCCC-0003\nxy\n")
    assert (report["total_lines"], report["added"], report["duplicates"], report["rejected"]) == (4, 1, 2, 1)
    assert report["duplicate_lines"] == [(1, "库存中已存在"), (3, "与第 2 行重复")]
    assert [n for n, _ in report["rejected_lines"]] == [4]
    assert report["sample"] == [{"line": 2, "masked": crypto.mask("CCCC-0003")}]
    assert _nothing_written(db) == before


@BOTH
def test_import_report_and_run_import_is_idempotent(app, db, f):
    p = f.product()
    batch = cards.create_import(p.id, TXT, "cards.txt", "paste")
    assert batch.status == "queued" and batch.total_lines == 9
    assert _count(db, CardSecret) == 0  # recorded, not yet imported

    report = cards.run_import(batch.id)
    assert (report["status"], report["total_lines"], report["added"], report["duplicates"], report["rejected"]) \
        == ("done", 9, 4, 1, 4)
    assert [n for n, _ in report["rejected_lines"]] == [5, 6, 7, 11]
    assert [n for n, _ in report["duplicate_lines"]] == [4]
    assert cards.available_counts([p.id]) == {p.id: 4}

    # when the same batch runs again (a job delivered twice), nothing is added and the report stands
    assert cards.run_import(batch.id) == report
    assert _count(db, CardSecret) == 4

    # and a second batch with the same lines adds nothing: all of them are duplicates now
    again = _import(p.id, TXT, "cards.txt")
    assert (again["added"], again["duplicates"], again["rejected"]) == (0, 5, 4)
    assert _count(db, CardSecret) == 4


@BOTH
def test_secrets_are_encrypted_at_rest_and_masked(app, db, f):
    p = f.product()
    plain = ["ABCD-1234-EFGH-5678", "SHORT123"]
    batch = cards.create_import(p.id, "\n".join(plain), None, "paste")
    staged = db.session.scalar(text("SELECT payload_enc FROM card_import WHERE id = :id"), {"id": batch.id})
    assert staged and not any(s in staged for s in plain)  # the batch's lines are encrypted too
    cards.run_import(batch.id)

    rows = db.session.execute(text("SELECT secret_enc, secret_hash, masked FROM card_secret ORDER BY id")).all()
    assert len(rows) == 2
    for secret, row in zip(plain, rows, strict=True):
        assert secret not in row.secret_enc and secret not in row.secret_hash
        assert crypto.decrypt(row.secret_enc) == secret
    # app.crypto.mask: a quarter of the characters at most (4 of 19, 2 of 8)
    assert rows[0].masked == "AB" + "*" * 15 + "78"
    assert rows[1].masked == "S******3"
    assert "1234-EFGH" not in rows[0].masked
    # once imported, the plain lines are not kept anywhere, and the report carries reasons, not secrets
    stored = db.session.execute(text("SELECT payload_enc, report FROM card_import WHERE id = :id"),
                                {"id": batch.id}).one()
    assert stored.payload_enc is None
    assert not any(s in (stored.report or "") for s in plain)


# ---------------------------------------------------------------------------------------------------------------
# flask kameng card import

def _cli_import(app, *args):
    return app.test_cli_runner().invoke(args=["kameng", "card", "import", *args])


@BOTH
def test_cli_import_prints_the_report(app, db, f, tmp_path):
    p = f.product()
    path = tmp_path / "cards.txt"
    path.write_text("AAAA-0001\nBBBB-0002\n\nCCCC-0003\nAAAA-0001\nxy\n", encoding="utf-8")

    result = _cli_import(app, "--product", str(p.id), str(path))
    assert result.exit_code == 0, result.output
    assert "lines: 5  added: 3  duplicates: 1  rejected: 1" in result.output
    assert "duplicate line 5" in result.output and "rejected line 6" in result.output
    assert cards.available_counts([p.id]) == {p.id: 3}

    # the same file again adds nothing
    result = _cli_import(app, "--product", str(p.id), str(path))
    assert result.exit_code == 0, result.output
    assert "added: 0  duplicates: 4  rejected: 1" in result.output
    assert _count(db, CardSecret) == 3


@BOTH
def test_cli_imports_a_gbk_csv_file(app, db, f, tmp_path):
    p = f.product()
    path = tmp_path / "库存.csv"
    path.write_bytes(CSV.encode("gbk"))
    result = _cli_import(app, "--product", str(p.id), str(path))
    assert result.exit_code == 0, result.output
    assert "lines: 3  added: 2  duplicates: 1  rejected: 0" in result.output
    revealed = {crypto.decrypt(s) for s in db.session.scalars(select(CardSecret.secret_enc))}
    assert revealed == {"1000200030004000 PASS1234", "1000200030004001 PASS5678"}


@BOTH
def test_cli_dry_run_writes_nothing(app, db, f, tmp_path):
    p = f.product()
    path = tmp_path / "cards.txt"
    path.write_text("AAAA-0001\nBBBB-0002\n", encoding="utf-8")
    result = _cli_import(app, "--dry-run", "--product", str(p.id), str(path))
    assert result.exit_code == 0, result.output
    assert "lines: 2  added: 2" in result.output
    assert _nothing_written(db) == (0, 0)


def _case_missing(tmp_path, f):
    return ["--product", str(f.product().id), str(tmp_path / "nope.txt")], "file not found"


def _case_unknown_product(tmp_path, f):
    path = tmp_path / "cards.txt"
    path.write_text("AAAA-0001\n")
    return ["--product", "999999", str(path)], "商品不存在：999999"


def _case_not_a_card_product(tmp_path, f):
    path = tmp_path / "cards.txt"
    path.write_text("AAAA-0001\n")
    return ["--product", str(f.product(kind="direct").id), str(path)], "不是卡密类商品"


def _case_empty(tmp_path, f):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    return ["--product", str(f.product().id), str(path)], "没有可导入的卡密"


def _case_only_blank_lines(tmp_path, f):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\r\n")
    return ["--product", str(f.product().id), str(path)], "没有可导入的卡密"


def _case_binary(tmp_path, f):
    path = tmp_path / "logo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return ["--product", str(f.product().id), str(path)], "不是文本文件"


def _case_undecodable(tmp_path, f):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0JFIF\xff\xdb")
    return ["--product", str(f.product().id), str(path)], "无法识别文件编码"


def _case_directory(tmp_path, f):
    return ["--product", str(f.product().id), str(tmp_path)], "is a directory"


CLI_ERRORS = [_case_missing, _case_unknown_product, _case_not_a_card_product, _case_empty, _case_only_blank_lines,
              _case_binary, _case_undecodable, _case_directory]


@BOTH
@pytest.mark.parametrize("case", CLI_ERRORS, ids=[c.__name__[6:] for c in CLI_ERRORS])
def test_cli_import_errors_clearly(app, db, f, tmp_path, case):
    args, message = case(tmp_path, f)
    result = _cli_import(app, *args)
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # an exit, not a crash
    assert "Error" in result.output and message in result.output, result.output
    assert "Traceback" not in result.output
    assert _nothing_written(db) == (0, 0)


# ---------------------------------------------------------------------------------------------------------------
# large imports as jobs: the admin page enqueues, a real RQ worker imports

@contextmanager
def configured(app, **settings):
    saved = {key: app.config.get(key) for key in settings}
    app.config.update(settings)
    try:
        yield
    finally:
        app.config.update(saved)


def _admin(client, f):
    admin = f.user(role="Admin")
    return f.login(client, admin.username)


@PG_ONLY
def test_large_web_import_runs_as_a_job_in_a_real_worker(app, db, f, client, redis_url):
    p = f.product()
    _admin(client, f)
    lines = [f"BIG-{i:06d}-SECRET" for i in range(2100)]  # three chunks of at most 1000
    body = "\n".join(lines + lines[:5] + ["x", "y", "z"])
    with configured(app, REDIS_URL=redis_url, CARD_IMPORT_JOB_THRESHOLD=50):
        # when an admin confirms an import above the threshold
        r = client.post("/card-import/", data={"product_id": str(p.id), "text": body, "confirm": "1"})
        assert r.status_code == 302, r.text[:500]

        # then a batch is queued as job card-import-<id> on the low queue, and nothing is imported yet
        batch = db.session.scalar(select(CardImport).order_by(CardImport.id.desc()))
        assert r.headers["Location"].endswith(f"/card-imports/show/{batch.id}")
        assert (batch.status, batch.total_lines, batch.job_id) == ("queued", 2108, f"card-import-{batch.id}")
        redis = Redis.from_url(redis_url)
        assert Queue("low", connection=redis).get_job_ids() == [batch.job_id]
        assert Job.fetch(batch.job_id, connection=redis).func_name == "workers.jobs.import_cards"
        assert _count(db, CardSecret) == 0

        # when a worker drains the low queue
        result = app.test_cli_runner().invoke(args=["kameng", "worker", "--burst", "--queues", "low"])
        assert result.exit_code == 0, result.output

    # then the batch is done with its report and full progress, and the job recorded its progress
    db.session.expire_all()
    batch = db.session.get(CardImport, batch.id)
    assert (batch.status, batch.added, batch.duplicates, batch.rejected) == ("done", 2100, 5, 3), batch.error
    assert (batch.processed, batch.total_lines) == (2108, 2108)
    assert batch.progress_display() == "2108/2108 (100%)"
    assert cards.available_counts([p.id]) == {p.id: 2100}
    job = Job.fetch(batch.job_id, connection=redis)
    assert job.get_status() == "finished"
    assert job.get_meta()["progress"] == {"done": 2108, "total": 2108}
    assert job.return_value()["added"] == 2100
    assert Queue("low", connection=redis).get_job_ids() == []
    page = client.get(f"/card-imports/show/{batch.id}")
    assert page.status_code == 200 and "2108/2108" in page.text


@PG_ONLY
def test_web_import_at_or_below_the_threshold_runs_at_once(app, db, f, client, redis_url):
    p = f.product()
    _admin(client, f)
    with configured(app, REDIS_URL=redis_url, CARD_IMPORT_JOB_THRESHOLD=50):
        body = "\n".join(f"SMALL-{i:04d}" for i in range(50))
        r = client.post("/card-import/", data={"product_id": str(p.id), "text": body, "confirm": "1"})
        assert r.status_code == 302
    batch = db.session.scalar(select(CardImport).order_by(CardImport.id.desc()))
    assert (batch.status, batch.added, batch.job_id) == ("done", 50, None)
    assert Queue("low", connection=Redis.from_url(redis_url)).get_job_ids() == []


@BOTH
def test_large_web_import_without_redis_runs_inline(app, db, f, client):
    p = f.product()
    _admin(client, f)
    with configured(app, REDIS_URL=None, CARD_IMPORT_JOB_THRESHOLD=50):
        body = "\n".join(f"INLINE-{i:04d}" for i in range(120))
        r = client.post("/card-import/", data={"product_id": str(p.id), "text": body, "confirm": "1"})
        assert r.status_code == 302
    batch = db.session.scalar(select(CardImport).order_by(CardImport.id.desc()))
    assert (batch.status, batch.added, batch.processed) == ("done", 120, 120)


@BOTH
def test_web_upload_of_a_gbk_csv_previews_then_imports(app, db, f, client):
    p = f.product()
    _admin(client, f)
    r = client.post("/card-import/", data={"product_id": str(p.id), "confirm": "0",
                                           "file": (io.BytesIO(CSV.encode("gbk")), "库存.csv")},
                    content_type="multipart/form-data")
    assert r.status_code == 200
    assert _nothing_written(db) == (0, 0)  # a preview writes nothing
    r = client.post("/card-import/", data={"product_id": str(p.id), "confirm": "1",
                                           "file": (io.BytesIO(CSV.encode("gbk")), "库存.csv")},
                    content_type="multipart/form-data")
    assert r.status_code == 302
    batch = db.session.scalar(select(CardImport))
    assert (batch.source, batch.filename, batch.status, batch.added, batch.duplicates) == \
        ("file", "库存.csv", "done", 2, 1)


# ---------------------------------------------------------------------------------------------------------------
# low stock

def _alerts(db, product_id: int) -> list[StockAlert]:
    db.session.expire_all()
    return db.session.scalars(select(StockAlert).where(StockAlert.product_id == product_id)
                              .order_by(StockAlert.id)).all()


@BOTH
def test_low_stock_scan_raises_once_follows_stock_and_resolves_after_restock(app, db, f):
    # given a product under its threshold (3 < 5) and one at it
    low = f.product(secrets=3, low_stock_threshold=5)
    fine = f.product(secrets=5, low_stock_threshold=5)
    never = f.product(low_stock_threshold=0)
    off = f.product(low_stock_threshold=5)
    off.active = False
    direct = f.product(kind="direct", low_stock_threshold=5)
    db.session.commit()

    # when the scan runs, an alert is raised for the low one only
    cards.scan_low_stock()
    [alert] = _alerts(db, low.id)
    assert (alert.available, alert.threshold, alert.resolved_at) == (3, 5, None)
    for other in (fine, never, off, direct):
        assert _alerts(db, other.id) == []

    # running again does not duplicate it, and it follows the stock as it sells
    cards.scan_low_stock()
    buyer = f.agent(balance=100_000, with_user=False)
    orders.place_wallet_order(buyer.id, low.id, 1)
    cards.scan_low_stock()
    [alert] = _alerts(db, low.id)
    assert alert.available == 2 and alert.resolved_at is None

    # after a restock it is resolved, and stays single
    f.stock(low, 3)
    cards.scan_low_stock()
    [alert] = _alerts(db, low.id)
    assert alert.resolved_at is not None
    cards.scan_low_stock()
    assert len(_alerts(db, low.id)) == 1

    # selling under the threshold again raises a new one
    orders.place_wallet_order(buyer.id, low.id, 2)
    cards.scan_low_stock()
    alerts = _alerts(db, low.id)
    assert len(alerts) == 2 and alerts[0].resolved_at is not None and alerts[1].resolved_at is None
    assert alerts[1].available == 3


@BOTH
def test_scan_low_stock_command(app, db, f):
    low = f.product(secrets=1, low_stock_threshold=5)
    result = app.test_cli_runner().invoke(args=["kameng", "scan-low-stock"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"raised": 1, "resolved": 0, "open": 1}
    assert len(_alerts(db, low.id)) == 1


@PG_ONLY
def test_scheduled_low_stock_scan_runs_through_the_worker(app, db, f, redis_url):
    from workers import jobs
    from workers.queues import enqueue, redis_connection
    from workers.schedule import build_cron

    low = f.product(secrets=2, low_stock_threshold=5)
    worker_args = ["kameng", "worker", "--burst", "--queues", "low"]
    with configured(app, REDIS_URL=redis_url):
        # the worker's schedule enqueues the scan (interval jobs are due at once), a worker runs it
        cron = build_cron(app, redis_connection())
        enqueued = [c.name for c in cron.enqueue_jobs()]
        assert "low-stock-scan" in enqueued
        assert app.test_cli_runner().invoke(args=worker_args).exit_code == 0
        [alert] = _alerts(db, low.id)
        assert alert.resolved_at is None and alert.available == 2

        # a second run (at-least-once delivery, or the next tick) does not duplicate it
        enqueue(jobs.scan_low_stock, job_id="low-stock-scan-again", queue="low")
        assert app.test_cli_runner().invoke(args=worker_args).exit_code == 0
        assert len(_alerts(db, low.id)) == 1

        # after a restock the next scheduled run resolves it
        f.stock(low, 10)
        enqueue(jobs.scan_low_stock, job_id="low-stock-scan-restocked", queue="low")
        assert app.test_cli_runner().invoke(args=worker_args).exit_code == 0
        [alert] = _alerts(db, low.id)
        assert alert.resolved_at is not None
        failed = Queue("low", connection=Redis.from_url(redis_url)).failed_job_registry.get_job_ids()
        assert not [j for j in failed if "scan" in j], failed


def test_tab_separated_txt_line_keeps_card_number_and_password(app):
    parsed = cards.parse_lines("CARD-0001\tPW-9999\nCARD-0002 PW-8888\n", "cards.txt")
    assert [s for _, s in parsed.secrets] == ["CARD-0001 PW-9999", "CARD-0002 PW-8888"]
    assert parsed.rejected == []


def test_csv_first_row_is_a_header_only_when_every_cell_is_a_column_name(app):
    data_first = cards.parse_lines("SPIN-0001,CARD-PW-1\nSPIN-0002,CARD-PW-2\n", "cards.csv")
    assert [s for _, s in data_first.secrets] == ["SPIN-0001 CARD-PW-1", "SPIN-0002 CARD-PW-2"]
    with_header = cards.parse_lines("卡号,密码\nSPIN-0001,CARD-PW-1\n", "cards.csv")
    assert [s for _, s in with_header.secrets] == ["SPIN-0001 CARD-PW-1"]


def _bulk_stock(product_id: int, count: int, unavailable: int) -> None:
    """`count` secrets of one product in one statement (the import path would take minutes at this size), the first
    `unavailable` of them voided."""
    db.session.execute(text(
        "INSERT INTO card_secret (product_id, secret_enc, secret_hash, masked, status, created_at, uses) "
        "SELECT :p, :enc, md5(:p || '-' || n), '****', CASE WHEN n <= :gone THEN 'void' ELSE 'available' END, "
        "now(), 0 FROM generate_series(1, :count) AS n"),
        {"p": product_id, "enc": crypto.encrypt(f"BULK-{product_id}"), "gone": unavailable, "count": count})
    db.session.commit()


@PG_ONLY
@pytest.mark.parametrize("statistics", ["analyzed", "none"])
def test_a_purchase_reads_only_its_products_free_secrets_whatever_the_statistics_say(app, db, f, statistics):
    # given two products whose stock is mostly available, the second's secrets all after the first's, and either
    # fresh statistics (on which the planner would rather walk the primary key in id order than the product's
    # index) or none, as before autovacuum's first pass (on which it would rather read a unique index led by the
    # product and sort)
    first, second = f.product(), f.product()
    _bulk_stock(first.id, 4000, unavailable=400)
    _bulk_stock(second.id, 4000, unavailable=400)
    if statistics == "analyzed":
        db.session.execute(text("ANALYZE card_secret"))
    else:
        db.session.execute(text("DELETE FROM pg_statistic WHERE starelid = 'card_secret'::regclass"))
        db.session.execute(text("UPDATE pg_class SET reltuples = -1, relpages = 0 "
                                "WHERE oid = 'card_secret'::regclass"))
    db.session.commit()
    buyer = f.agent(balance=1_000_000, with_user=False)
    lowest_free = db.session.scalar(select(func.min(CardSecret.id)).where(
        CardSecret.product_id == second.id, CardSecret.status == "available"))

    # when an order of the second product takes two secrets (the claim's statement captured as it is sent)
    with statements_sent("SKIP LOCKED") as sent:
        order = orders.place_wallet_order(buyer.id, second.id, 2)

    # then it got the product's two lowest free secrets
    taken = db.session.scalars(select(CardSecret.id).where(CardSecret.order_id == order.id).order_by(CardSecret.id))
    assert list(taken) == [lowest_free, lowest_free + 1]
    # and the claim, run again as sent, reads them through the (product_id, status, id) index and no other row
    [(statement, parameters)] = sent
    scans = [node for node in plan_nodes(statement, parameters)
             if node.get("Relation Name") == "card_secret" and node["Node Type"].endswith("Scan")]
    assert scans and all(node.get("Index Name") in ("ix_card_secret_product_status", "card_secret_pkey")
                         for node in scans), scans
    pick = [node for node in scans if node["Index Name"] == "ix_card_secret_product_status"]
    assert pick and all(node.get("Rows Removed by Filter", 0) == 0 for node in scans)
    # the primary key only fetches the picked rows by id; it is never walked for them
    assert all(node["Actual Rows"] * node["Actual Loops"] <= 2 for node in scans if node["Index Name"] ==
               "card_secret_pkey")
    assert check_ledger() == []

