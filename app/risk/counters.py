"""Velocity counters over sliding windows: how many events (and how much money, and how many distinct others) one
identifier had in the last N seconds. PostgreSQL's risk_event is the record; with Redis the windows are read from
sorted sets kept beside it (one pipeline per decision), else computed from the table (the embedded default)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, text

from app.clock import utcnow
from app.extensions import db
from app.risk.models import RiskEvent

DIMENSIONS = ("ip", "device", "contact", "payment_account", "agent")
KEEP_SECONDS = 31 * 24 * 3600  # the longest window any feature reads


@dataclass(frozen=True)
class Query:
    """count / amount of `metric` events of one identifier (dimension, key) in the last `window` seconds, or the
    number of distinct `other` identifiers it shared them with."""
    metric: str
    dimension: str
    window: int
    kind: str = "count"  # count, amount, distinct
    other: str | None = None


def record(metric: str, keys: dict[str, str | None], amount: int = 0, at: datetime | None = None) -> None:
    """One event, in the caller's transaction (PostgreSQL) and in Redis (best effort: Redis is a cache here)."""
    at = at or utcnow()
    row = {d: keys.get(d) for d in DIMENSIONS}
    if not any(row.values()):
        return
    # Core on the session's connection, one statement built once: a plain INSERT needs none of the ORM's handling
    db.session.connection().execute(_INSERT_EVENT, {"metric": metric, "amount": int(amount or 0), "at": at, **row})
    _redis_record(metric, row, int(amount or 0), at)


_INSERT_EVENT = insert(RiskEvent.__table__)


def read(queries: dict[str, Query], keys: dict[str, str | None], now: datetime | None = None) -> dict[str, int]:
    """Every named query's value for these identifiers (0 where the identifier is unknown)."""
    now = now or utcnow()
    wanted = {name: q for name, q in queries.items() if keys.get(q.dimension)}
    values = dict.fromkeys(queries, 0)
    if not wanted:
        return values
    conn = _redis()
    if conn is not None:
        try:
            values.update(_redis_read(conn, wanted, keys, now))
            return values
        except Exception:  # Redis down: the record answers
            pass
    values.update(_pg_read_all(wanted, keys, now))
    return values


# --- PostgreSQL (the record) -------------------------------------------------------------------------------

def _pg_read_all(wanted: dict[str, Query], keys: dict, now: datetime) -> dict[str, int]:
    """Every query in one round trip: one aggregate row per (identifier, metric) over its longest window (one
    index range scan of ix_risk_event_<dimension>), each feature a FILTERed aggregate of it, the rows cross-joined.
    Issuing a statement per feature cost ~30 round trips per decision."""
    groups: dict[tuple[str, str], list[tuple[str, Query]]] = {}
    for name, q in sorted(wanted.items()):
        groups.setdefault((q.dimension, q.metric), []).append((name, q))
    shape = tuple((d, m, tuple(name for name, _ in items)) for (d, m), items in groups.items())
    sql = _PG_SQL.get(shape)
    if sql is None:
        sql = _PG_SQL[shape] = _pg_statement(groups)
    params: dict[str, object] = {}
    for g, ((dimension, metric), items) in enumerate(groups.items()):
        params[f"k{g}"], params[f"m{g}"] = keys[dimension], metric
        params[f"w{g}"] = now - timedelta(seconds=max(q.window for _, q in items))
        for name, q in items:
            params[f"s_{name}"] = now - timedelta(seconds=q.window)
    row = db.session.execute(text(sql), params).mappings().one()
    return {name: int(row[name] or 0) for name in wanted}


_PG_SQL: dict[tuple, str] = {}


def _pg_statement(groups: dict[tuple[str, str], list[tuple[str, Query]]]) -> str:
    parts = []
    for g, ((dimension, _), items) in enumerate(groups.items()):
        columns = []
        for name, q in items:
            since = f"FILTER (WHERE at > :s_{name})"
            if q.kind == "amount":
                columns.append(f"coalesce(sum(amount) {since}, 0) AS {name}")
            elif q.kind == "distinct":
                columns.append(f"count(DISTINCT {_column(q.other)}) {since} AS {name}")
            else:
                columns.append(f"count(*) {since} AS {name}")
        parts.append(f"(SELECT {', '.join(columns)} FROM risk_event WHERE {_column(dimension)} = :k{g}"
                     f" AND metric = :m{g} AND at > :w{g}) AS g{g}")
    return "SELECT * FROM " + " CROSS JOIN ".join(parts)


def _column(dimension: str) -> str:
    if dimension not in DIMENSIONS:  # names come from features.py, never from a request; still, only columns
        raise ValueError(f"unknown dimension {dimension!r}")
    return dimension


# --- Redis (the fast path) ---------------------------------------------------------------------------------

def _redis():
    from app.queueing import redis_connection

    return redis_connection()


def _zkey(metric: str, dimension: str, key: str, suffix: str = "") -> str:
    return f"kameng:risk:{metric}:{dimension}:{key}{suffix}"


def _redis_record(metric: str, row: dict, amount: int, at: datetime) -> None:
    conn = _redis()
    if conn is None:
        return
    ts = at.timestamp()
    member = f"{uuid.uuid4().hex}:{amount}"
    try:
        pipe = conn.pipeline(transaction=False)
        for dim, key in row.items():
            if not key:
                continue
            events = _zkey(metric, dim, key)
            pipe.zadd(events, {member: ts})
            pipe.zremrangebyscore(events, "-inf", ts - KEEP_SECONDS)
            pipe.expire(events, KEEP_SECONDS)
            if amount:  # the amount windows read these buckets, not every event (see _redis_amount)
                buckets = _zkey(metric, dim, key, ":amount")
                bucket = int(ts // AMOUNT_BUCKET_SECONDS)
                pipe.hincrby(buckets, str(bucket), amount)
                pipe.hdel(buckets, str(bucket - AMOUNT_BUCKETS_KEPT))  # the one that just aged out, if any
                pipe.expire(buckets, AMOUNT_WINDOW_MAX)
            for other_dim, other in row.items():
                if other and other_dim != dim:
                    others = _zkey(metric, dim, key, f":{other_dim}")
                    pipe.zadd(others, {other: ts})  # the latest time this pair was seen
                    pipe.expire(others, KEEP_SECONDS)
        pipe.execute()
    except Exception:  # the record is in PostgreSQL; a Redis outage only costs speed
        pass


# Amounts over a window are summed from per-bucket totals (a hash per identifier) for the buckets wholly inside the
# window, plus the events of the one bucket the window starts in: exact, and the work is bounded by the number of
# buckets and one bucket's events, not by every event of the window (a reseller's day of orders would otherwise be
# read back on each of its purchases).
AMOUNT_BUCKET_SECONDS = 300
AMOUNT_WINDOW_MAX = 24 * 3600  # the longest amount window (features.py)
AMOUNT_BUCKETS_KEPT = AMOUNT_WINDOW_MAX // AMOUNT_BUCKET_SECONDS + 2


def _redis_read(conn, wanted: dict[str, Query], keys: dict, now: datetime) -> dict[str, int]:
    ts = now.timestamp()
    pipe = conn.pipeline(transaction=False)
    order = []
    for name, q in wanted.items():
        since = f"({ts - q.window}"
        if q.kind == "distinct":
            pipe.zcount(_zkey(q.metric, q.dimension, keys[q.dimension], f":{q.other}"), since, "+inf")
        elif q.kind == "amount":
            if q.window > AMOUNT_WINDOW_MAX:
                raise ValueError(f"amount windows are at most {AMOUNT_WINDOW_MAX} s: {name}")
            first_whole = int((ts - q.window) // AMOUNT_BUCKET_SECONDS) + 1
            edge_end = first_whole * AMOUNT_BUCKET_SECONDS
            pipe.zrangebyscore(_zkey(q.metric, q.dimension, keys[q.dimension]), since, f"({edge_end}")
            pipe.hgetall(_zkey(q.metric, q.dimension, keys[q.dimension], ":amount"))
            order.append((name, q, first_whole))
            continue
        else:
            pipe.zcount(_zkey(q.metric, q.dimension, keys[q.dimension]), since, "+inf")
        order.append((name, q, None))
    answers = iter(pipe.execute())
    out = {}
    for name, q, first_whole in order:
        if q.kind == "amount":
            edge, buckets = next(answers), next(answers)
            out[name] = (sum(int(m.rsplit(b":", 1)[1]) for m in edge)
                         + sum(int(total) for bucket, total in buckets.items() if int(bucket) >= first_whole))
        else:
            out[name] = int(next(answers))
    return out
