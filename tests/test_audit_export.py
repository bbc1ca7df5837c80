"""Audit log export (审计日志导出): a CSV of a range of business days from the audit screen (Admin, Manager, Finance)
and from `flask kameng audit export`; streamed, every cell formula-safe, the export itself audited."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import pytest
from sqlalchemy import select

from app.audit import service as audit
from app.audit.models import AuditEntry

# Business days are China time (UTC+8): 2026-03-10 starts at 2026-03-09 16:00 UTC.
DAY, NEXT = "2026-03-10", "2026-03-11"


@pytest.fixture
def entries(db, f):
    """Four entries around the range 03-10 .. 03-11 (China time); the inner two carry formula-looking values."""
    mallory = f.user("=mallory" + f.unique(""), role="Admin")
    rows = {
        "before": (datetime(2026, 3, 9, 15, 59, 59), "price.update", "+86", "old"),  # 03-09 23:59:59 China time
        "first": (datetime(2026, 3, 9, 16, 0, 0), "tier.update", "=HYPERLINK(\"http://evil\",\"x\")", "-2+3"),
        "last": (datetime(2026, 3, 11, 15, 59, 59), "wallet.adjust", "@SUM(A1)", "调账"),  # 03-11 23:59:59
        "after": (datetime(2026, 3, 11, 16, 0, 0), "risk.list.add", "7", "later"),  # 03-12 00:00 China time
    }
    made = {}
    for key, (at, action, target, reason) in rows.items():
        entry = audit.record(action, "thing", target, {"v": 1}, {"v": "=2"}, reason=reason, actor_id=mallory.id)
        entry.created_at = at
        made[key] = entry
    db.session.commit()
    return {key: e.id for key, e in made.items()}, mallory


def parse(text: str) -> list[list[str]]:
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


def staff(app, f, role: str):
    user = f.user(f.unique(role.lower()), role=role)
    return f.login(app.test_client(), user.username), user


def test_finance_downloads_a_range_from_the_audit_screen(app, db, f, entries):
    ids, mallory = entries
    client, finance = staff(app, f, "Finance")
    page = client.get("/audit/list/")
    assert page.status_code == 200 and 'id="audit-export"' in page.text and 'name="since"' in page.text
    r = client.get(f"/audit/export/?since={DAY}&until={NEXT}")
    assert r.status_code == 200 and r.is_streamed
    assert r.mimetype == "text/csv" and r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Disposition"] == 'attachment; filename="audit-log-20260310-20260311.csv"'
    header, *body = parse(r.get_data(as_text=True))
    assert header[:3] == ["编号", "时间（业务时区）", "操作人"]
    assert [int(row[0]) for row in body] == [ids["first"], ids["last"]]  # both ends inclusive, China days
    first, last = body
    assert first[1] == "2026-03-10T00:00:00+08:00" and last[1] == "2026-03-11T23:59:59+08:00"
    # formula-looking cells are text: the actor's name, the target, the reason
    assert first[2] == "'" + mallory.username and first[3] == str(mallory.id)
    assert first[6] == "'=HYPERLINK(\"http://evil\",\"x\")" and first[9] == "'-2+3"
    assert last[6] == "'@SUM(A1)" and last[9] == "调账"
    assert json.loads(first[8]) == {"v": "=2"}  # JSON starts with { and stays as it is
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in body for cell in row)
    # the download is in the audit log: who, which range, from where
    db.session.rollback()
    done = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "audit.export"))
    assert done.actor_id == finance.id
    assert json.loads(done.new_value) == {"since": DAY, "until": NEXT, "via": "page"}


def test_who_may_download(app, f, entries):
    for role in ("Admin", "Manager"):
        client, _ = staff(app, f, role)
        assert client.get(f"/audit/export/?since={DAY}&until={DAY}").status_code == 200, role
        assert 'id="audit-export"' in client.get("/audit/list/").text
    for role in ("Support",):
        client, _ = staff(app, f, role)
        assert client.get(f"/audit/export/?since={DAY}&until={DAY}").status_code == 403
    agent = f.agent()
    client = f.login(app.test_client(), agent.user.username)
    assert client.get(f"/audit/export/?since={DAY}&until={DAY}").status_code == 403
    r = app.test_client().get(f"/audit/export/?since={DAY}&until={DAY}")
    assert r.status_code == 302 and "/login/" in r.headers["Location"]


@pytest.mark.parametrize("query", ["", f"?since={DAY}", f"?since={NEXT}&until={DAY}",
                                   "?since=2026-13-01&until=2026-13-02", f"?since=abc&until={DAY}",
                                   "?since=2001-01-01&until=2026-01-01", "?since=0001-01-01&until=0001-01-02",
                                   "?since=9999-12-31&until=9999-12-31"])
def test_a_bad_range_is_refused_with_a_message(app, db, f, entries, query):
    client, _ = staff(app, f, "Finance")
    r = client.get(f"/audit/export/{query}")
    assert r.status_code == 400 and r.mimetype == "text/html"
    assert "日期" in r.text
    db.session.rollback()
    assert db.session.scalar(select(AuditEntry).where(AuditEntry.action == "audit.export")) is None


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_cli_writes_the_range_to_stdout_and_to_a_file(app, db, entries, tmp_path):
    ids, mallory = entries
    runner = app.test_cli_runner()
    result = runner.invoke(args=["kameng", "audit", "export", "--since", DAY, "--until", NEXT])
    assert result.exit_code == 0, result.output
    header, *body = parse(result.stdout)
    assert [int(row[0]) for row in body] == [ids["first"], ids["last"]]
    assert body[0][6] == "'=HYPERLINK(\"http://evil\",\"x\")" and body[0][2] == "'" + mallory.username
    out = tmp_path / "audit.csv"
    result = runner.invoke(args=["kameng", "audit", "export", "--since", "2026-03-09", "--until", DAY,
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    _header, *body = parse(out.read_text(encoding="utf-8"))
    assert [int(row[0]) for row in body] == [ids["before"], ids["first"]]
    db.session.rollback()
    done = list(db.session.scalars(select(AuditEntry).where(AuditEntry.action == "audit.export")
                                   .order_by(AuditEntry.id)))
    assert [json.loads(e.new_value)["via"] for e in done] == ["cli", "cli"] and done[0].actor_id is None


def test_cli_refuses_a_bad_range(app, db, entries):
    runner = app.test_cli_runner()
    for args in (["--since", NEXT, "--until", DAY], ["--since", "yesterday", "--until", DAY], ["--since", DAY]):
        result = runner.invoke(args=["kameng", "audit", "export", *args])
        assert result.exit_code == 2 and result.stdout == "", (args, result.output)
    assert "晚于" in runner.invoke(args=["kameng", "audit", "export", "--since", NEXT, "--until", DAY]).output
    db.session.rollback()
    assert db.session.scalar(select(AuditEntry).where(AuditEntry.action == "audit.export")) is None


def test_a_large_export_streams_in_pieces(app, db, f):
    """Thousands of rows come out in several chunks, all of them, in order."""
    from app.audit import export

    for i in range(1200):
        audit.record("price.update", "product", i, None, None, reason=f"r{i}").created_at = datetime(2026, 3, 10, 1)
    db.session.commit()
    since, until = export.parse_range(DAY, DAY)
    chunks = list(export.csv_chunks(export.rows(since, until), rows_per_chunk=500))
    assert len(chunks) == 3
    _header, *body = parse("".join(chunks))
    assert [row[6] for row in body] == [str(i) for i in range(1200)]
