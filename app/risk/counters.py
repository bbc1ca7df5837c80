"""Velocity counters over sliding windows: how many events (and how much money, and how many distinct others) one
identifier had in the last N seconds. PostgreSQL's risk_event is the record; with Redis the windows are read from
sorted sets kept beside it (one script call per decision), else computed from the table (the embedded default)."""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, text

from app.clock import utcnow
from app.extensions import db
from app.risk.models import RiskEvent
from app.rows import run

log = logging.getLogger(__name__)
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
    run(_INSERT_EVENT, {"metric": metric, "amount": int(amount or 0), "at": at, **row})
    _redis_record(metric, row, int(amount or 0), at)


_INSERT_EVENT = insert(RiskEvent.__table__).values(
    {name: bindparam(name, type_=RiskEvent.__table__.c[name].type) for name in ("metric", "amount", "at", *DIMENSIONS)}
).inline()  # no RETURNING of the new id: nobody reads it


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


_warned_at = [0.0]


def _warn_unrecorded(exc: Exception) -> None:
    """Reads trust Redis while it answers: an event it failed to take is said in the log (once a minute)."""
    now = time.monotonic()
    if now - _warned_at[0] >= 60:
        _warned_at[0] = now
        log.warning("risk counters: an event was not recorded in Redis (%s: %s); its windows read low until "
                    "Redis holds it", type(exc).__name__, exc)


def _zkey(metric: str, dimension: str, key: str, suffix: str = "") -> str:
    return f"kameng:risk:{metric}:{dimension}:{key}{suffix}"


def _redis_record(metric: str, row: dict, amount: int, at: datetime) -> None:
    conn = _redis()
    if conn is None:
        return
    ts = at.timestamp()
    bucket = int(ts // AMOUNT_BUCKET_SECONDS)
    keys: list[str] = []
    args: list[object] = [repr(ts), f"{uuid.uuid4().hex}:{amount}", repr(ts - KEEP_SECONDS), KEEP_SECONDS, amount,
                          bucket, bucket - AMOUNT_BUCKETS_KEPT, AMOUNT_WINDOW_MAX]
    for dim, key in row.items():
        if not key:
            continue
        keys.append(_zkey(metric, dim, key))
        if amount:  # the amount windows read these buckets, not every event (see _redis_read)
            keys.append(_zkey(metric, dim, key, ":amount"))
        others = [(other_dim, other) for other_dim, other in row.items() if other and other_dim != dim]
        args.append(len(others))
        for other_dim, other in others:
            keys.append(_zkey(metric, dim, key, f":{other_dim}"))
            args.append(other)
    try:
        _script("record", conn)(keys, args, client=conn)
    except Exception as exc:  # noqa: BLE001 - the record is in PostgreSQL; a Redis outage only costs speed
        _warn_unrecorded(exc)


# Amounts over a window are summed from per-bucket totals (a hash per identifier) for the buckets wholly inside the
# window, plus the events of the one bucket the window starts in: exact, and the work is bounded by the number of
# buckets and one bucket's events, not by every event of the window (a reseller's day of orders would otherwise be
# read back on each of its purchases).
AMOUNT_BUCKET_SECONDS = 300
AMOUNT_WINDOW_MAX = 24 * 3600  # the longest amount window (features.py)
AMOUNT_BUCKETS_KEPT = AMOUNT_WINDOW_MAX // AMOUNT_BUCKET_SECONDS + 2


def _redis_read(conn, wanted: dict[str, Query], keys: dict, now: datetime) -> dict[str, int]:
    ts = now.timestamp()
    zkeys: list[str] = []
    args: list[object] = []
    for name, q in wanted.items():
        since = f"({ts - q.window!r}"
        if q.kind == "amount":
            if q.window > AMOUNT_WINDOW_MAX:
                raise ValueError(f"amount windows are at most {AMOUNT_WINDOW_MAX} s: {name}")
            first_whole = int((ts - q.window) // AMOUNT_BUCKET_SECONDS) + 1
            zkeys += [_zkey(q.metric, q.dimension, keys[q.dimension]),
                      _zkey(q.metric, q.dimension, keys[q.dimension], ":amount")]
            args += ["amount", since, f"({first_whole * AMOUNT_BUCKET_SECONDS}", first_whole]
        else:
            suffix = f":{q.other}" if q.kind == "distinct" else ""
            zkeys.append(_zkey(q.metric, q.dimension, keys[q.dimension], suffix))
            args += ["count", since]
    return dict(zip(wanted, (int(v) for v in _script("read", conn)(zkeys, args, client=conn)), strict=True))


# One script call per decision and per recorded event (each was a pipeline of up to ~20 commands: their packing and
# parsing in Python cost more than the work in Redis). KEYS name every key a script touches.
_LUA = {
    # KEYS per identifier: its events, its amount buckets (when the amount is not 0), its pair with each other
    # identifier. ARGV: ts, member, cutoff, keep seconds, amount, bucket, the bucket that just aged out, buckets'
    # ttl, then per identifier the number of others followed by their values.
    "record": """
local ts, member, cutoff, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local amount, bucket, aged, buckets_ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local k, a = 1, 9
while a <= #ARGV do
  local others = tonumber(ARGV[a]); a = a + 1
  redis.call('ZADD', KEYS[k], ts, member)
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', cutoff)
  redis.call('EXPIRE', KEYS[k], keep)
  k = k + 1
  if amount ~= '0' then
    redis.call('HINCRBY', KEYS[k], bucket, amount)
    redis.call('HDEL', KEYS[k], aged)
    redis.call('EXPIRE', KEYS[k], buckets_ttl)
    k = k + 1
  end
  for _ = 1, others do
    local seen = redis.call('ZSCORE', KEYS[k], ARGV[a])  -- keep the latest time this pair was seen
    if not seen or tonumber(seen) < tonumber(ts) then redis.call('ZADD', KEYS[k], ts, ARGV[a]) end
    redis.call('EXPIRE', KEYS[k], keep)
    k = k + 1; a = a + 1
  end
end
return k - 1
""",
    # Per query, ARGV: 'count' and its window's start (KEYS: the sorted set), or 'amount', the start, the end of
    # the bucket it starts in and the first whole bucket (KEYS: the events, the buckets). Answers one integer each.
    "read": """
local out, k, a = {}, 1, 1
while a <= #ARGV do
  if ARGV[a] == 'count' then
    out[#out + 1] = redis.call('ZCOUNT', KEYS[k], ARGV[a + 1], '+inf')
    k = k + 1; a = a + 2
  else
    local total, first_whole = 0, tonumber(ARGV[a + 3])
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[k], ARGV[a + 1], ARGV[a + 2])) do
      total = total + tonumber(string.match(m, ':(%-?%d+)$'))
    end
    local buckets = redis.call('HGETALL', KEYS[k + 1])
    for i = 1, #buckets, 2 do
      if tonumber(buckets[i]) >= first_whole then total = total + tonumber(buckets[i + 1]) end
    end
    out[#out + 1] = total
    k = k + 2; a = a + 4
  end
end
return out
""",
}
_SCRIPTS: dict = {}


def _script(name: str, conn):
    """The named script as redis-py's Script: EVALSHA, loaded again by itself into a Redis that lost it (a restart).
    Called with each caller's connection; the one it was made with only encodes its text."""
    if name not in _SCRIPTS:
        _SCRIPTS[name] = conn.register_script(_LUA[name])
    return _SCRIPTS[name]
