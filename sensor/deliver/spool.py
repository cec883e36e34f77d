"""The durable alert spool: SQLite in WAL mode with ``synchronous=FULL``.

Every alert is committed here before any delivery attempt and deleted only when the receiver
confirmed it (style-and-delivery.md B.2 "Spool"). FULL makes each commit survive power loss, not
only a crash of the process ("a transaction committed in WAL mode with NORMAL might roll back
following a power loss"). Bodies are JSON bytes (msgspec): no pickle, so a tampered spool file cannot
run code in a SYSTEM service.

The spool is bounded by bytes and by age. When full it drops the *oldest* alerts (Fluent Bit's
policy: blocking would stall the ETW consumer and lose events anyway), counts them, records a health
event and enqueues a synthetic ``spool_overflow`` health alert so the SIEM learns about the loss.

One ``Spool`` object is safe to share between threads (the pipeline writes while the forwarder
reads); several processes may open the same file (WAL + busy timeout), which is how a restarted
sensor picks up what a killed one left behind.
"""
from __future__ import annotations

import datetime as _dt
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import msgspec

from .. import __version__
from .._files import private_dir, touch_private

log = logging.getLogger("sensor.spool")

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 256 * MiB
DEFAULT_MAX_AGE = 7 * 86400.0
DEFAULT_DEAD_MAX_ROWS = 10_000
HEALTH_COALESCE = 60.0  # seconds: repeated overflows within this window update one health event
HEALTH_MAX_ROWS = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    alert_uuid TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    kind TEXT NOT NULL DEFAULT 'alert',
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    alert_uuid TEXT NOT NULL,
    created REAL NOT NULL,
    moved REAL NOT NULL,
    attempts INTEGER NOT NULL,
    status INTEGER,
    reason TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    count INTEGER NOT NULL,
    detail TEXT NOT NULL,
    alert_uuid TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COUNTERS = ("bytes", "dropped", "expired", "dead_lettered", "dead_dropped", "written", "duplicates")

_ENC = msgspec.json.Encoder(enc_hook=str)
_DEC = msgspec.json.Decoder()


def _clean(value: Any) -> Any:
    """Replace what JSON cannot carry (lone UTF-16 surrogates, which Windows allows in
    command lines) with U+FFFD, recursively."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace") \
            if any("\ud800" <= c <= "\udfff" for c in value) else value
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _encode(alert: Mapping[str, Any]) -> bytes:
    """JSON bytes of one alert; a value JSON cannot hold is repaired, never fatal."""
    try:
        return _ENC.encode(alert)
    except (msgspec.EncodeError, UnicodeEncodeError, TypeError, OverflowError):
        return _ENC.encode(_clean(alert))


class SpoolError(RuntimeError):
    """The spool file cannot be opened or written: fail loudly (never keep running silently)."""


@dataclass(frozen=True)
class SpooledAlert:
    """One alert row as read back for delivery."""

    rowid: int
    alert_id: str
    created: float
    attempts: int
    body: bytes

    def decode(self) -> dict:
        """The alert dict (raises msgspec.DecodeError on a corrupt body)."""
        value = _DEC.decode(self.body)
        if not isinstance(value, dict):
            raise msgspec.DecodeError("spooled body is not a JSON object")
        return value


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _chunks(seq: Sequence, n: int = 500) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class Spool:
    """A bounded, durable FIFO of alerts keyed by their stable id."""

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age: float = DEFAULT_MAX_AGE, dead_max_rows: int = DEFAULT_DEAD_MAX_ROWS,
                 health_alerts: bool = True, clock: Callable[[], float] = time.time,
                 on_health: Callable[[dict], None] | None = None) -> None:
        if max_bytes <= 0 or max_age <= 0 or dead_max_rows <= 0:
            raise ValueError("max_bytes, max_age and dead_max_rows must be positive")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.max_age = float(max_age)
        self.dead_max_rows = int(dead_max_rows)
        self.health_alerts = health_alerts
        self.clock = clock
        self.on_health = on_health
        # One SQLite connection per thread: WAL lets the forwarder read while the pipeline commits,
        # and sqlite3 releases the GIL while it waits on the disk. SQLite serialises the writers.
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards _conns and the write mark
        self._new_data = threading.Condition(self._lock)
        self._seq = 0  # bumped on every in-process write, for wait_for_data()
        self._closed = False
        try:
            # Private: the spool holds command lines. SQLite gives -wal and -shm the mode of the
            # database file, so creating that file 0600 first makes all three private.
            private_dir(self.path.parent)
            if not self.path.exists():
                touch_private(self.path)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool {self.path}: cannot enable WAL (journal_mode={mode})")
            with self._tx():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                for key in _COUNTERS:
                    self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, 0)", (key,))
                # Re-derive the byte total once per open: cheap, and heals any drift.
                total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM alerts").fetchone()[0]
                self._db.execute("UPDATE meta SET value=? WHERE key='bytes'", (total,))
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc

    # -- connections and transactions ---------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise SpoolError(f"spool {self.path} is closed")
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _notify(self) -> None:
        with self._new_data:
            self._seq += 1
            self._new_data.notify_all()

    def _tx(self, durable: bool = True) -> "_Tx":
        return _Tx(self, durable)

    def _counter(self, key: str) -> int:
        return self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]

    def _bump(self, key: str, n: int) -> None:
        if n:
            self._db.execute("UPDATE meta SET value=value+? WHERE key=?", (n, key))

    # -- writing ------------------------------------------------------------------------------

    def put(self, alert: Mapping[str, Any]) -> bool:
        """Commit one alert durably; False if an alert with this id is already spooled."""
        return self.put_many([alert]) == 1

    def put_many(self, alerts: Iterable[Mapping[str, Any]], kind: str = "alert") -> int:
        """Commit alerts in one transaction; returns how many were new.

        ``kind`` "health" marks rows the size cap never drops (health alerts)."""
        now = self.clock()
        rows = []
        for alert in alerts:
            alert_id = alert.get("id")
            if not alert_id:
                # Every alert from build_alert() has an id; one without still must not be lost.
                alert = dict(alert)
                alert_id = alert["id"] = str(uuid.uuid4())
            body = _encode(alert)
            rows.append((str(alert_id), now, kind, len(body), body))
        if not rows:
            return 0
        try:
            with self._tx():
                db = self._db
                added = added_bytes = 0
                for row in rows:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO alerts(alert_uuid, created, kind, size, body) VALUES (?,?,?,?,?)", row)
                    if cur.rowcount == 1:
                        added += 1
                        added_bytes += row[3]
                self._bump("bytes", added_bytes)
                self._bump("written", added)
                self._bump("duplicates", len(rows) - added)
                self._enforce(now)
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: write failed: {exc}") from exc
        self._notify()
        return added

    def enforce(self) -> int:
        """Apply the age and size caps now; returns how many alerts were dropped."""
        with self._tx():
            return self._enforce(self.clock())

    def _enforce(self, now: float) -> int:
        """Drop expired, then oldest-over-cap rows (inside the caller's transaction)."""
        dropped = 0
        oldest = self._db.execute("SELECT created FROM alerts ORDER BY id LIMIT 1").fetchone()
        cutoff = now - self.max_age
        # The oldest row by insertion order is the cheap test; the delete then goes by time, so rows
        # spooled across a clock step are caught too.
        if oldest is not None and oldest[0] < cutoff:
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM alerts WHERE created < ?", (cutoff,)).fetchone()
            if n:
                self._db.execute("DELETE FROM alerts WHERE created < ?", (cutoff,))
                self._bump("bytes", -size)
                self._bump("expired", n)
                self._bump("dropped", n)
                dropped += n
                self._health("spool_expired", n, {"max_age_s": self.max_age}, now)
        for _ in range(2):  # a second pass makes room for the health alert the first one added
            total = self._counter("bytes")
            if total <= self.max_bytes:
                break
            excess = total - self.max_bytes
            freed = n = 0
            cut = None
            while freed < excess:
                # Health rows are tiny, one per HEALTH_COALESCE at most, and say what was lost: keep them.
                batch = self._db.execute("SELECT id, size FROM alerts WHERE id > ? AND kind='alert' "
                                         "ORDER BY id LIMIT 512", (cut or 0,)).fetchall()
                if not batch:
                    break
                for rowid, size in batch:
                    freed += size
                    n += 1
                    cut = rowid
                    if freed >= excess:
                        break
            if cut is None:
                break
            self._db.execute("DELETE FROM alerts WHERE id <= ? AND kind='alert'", (cut,))
            self._bump("bytes", -freed)
            self._bump("dropped", n)
            dropped += n
            self._health("spool_overflow", n, {"max_bytes": self.max_bytes}, now)
        return dropped

    def _health(self, kind: str, n: int, detail: dict, now: float) -> None:
        """Record (or coalesce into) a health event, and enqueue a health alert for a new one."""
        what = "older than max_age" if kind == "spool_expired" else "over max_bytes"
        row = self._db.execute("SELECT id, first_ts, count, alert_uuid FROM health WHERE kind=? "
                               "ORDER BY id DESC LIMIT 1", (kind,)).fetchone()
        if row is not None and now - row[1] < HEALTH_COALESCE:
            # Same episode: count into the open event, and into its health alert if not yet delivered.
            self._db.execute("UPDATE health SET last_ts=?, count=count+? WHERE id=?", (now, n, row[0]))
            if row[3]:
                old = self._db.execute("SELECT id, size, body FROM alerts WHERE alert_uuid=?", (row[3],)).fetchone()
                if old is not None:
                    health_alert = _DEC.decode(old[2])
                    health_alert["health"].update(
                        dropped=row[2] + n, dropped_total=self._counter("dropped"),
                        message=f"alert spool {what}: dropped the {row[2] + n} oldest undelivered alert(s)")
                    body = _ENC.encode(health_alert)
                    self._db.execute("UPDATE alerts SET body=?, size=? WHERE id=?", (body, len(body), old[0]))
                    self._bump("bytes", len(body) - old[1])
            return
        info = dict(detail, dropped=n, dropped_total=self._counter("dropped"))
        message = f"alert spool {what}: dropped the {n} oldest undelivered alert(s)"
        log.warning("%s (%d dropped in total)", message, info["dropped_total"])
        event = {"event": kind, "message": message, **info}
        health_id = None
        if self.health_alerts:
            health_id = str(uuid.uuid4())
            health_alert = {"id": health_id, "type": "health", "timestamp": _iso(now),
                            "health": event, "sensor": {"version": __version__}}
            body = _ENC.encode(health_alert)
            self._db.execute("INSERT INTO alerts(alert_uuid, created, kind, size, body) VALUES (?,?,'health',?,?)",
                             (health_id, now, len(body), body))
            self._bump("bytes", len(body))
        self._db.execute("INSERT INTO health(kind, first_ts, last_ts, count, detail, alert_uuid) "
                         "VALUES (?,?,?,?,?,?)", (kind, now, now, n, _ENC.encode(info).decode(), health_id))
        self._db.execute("DELETE FROM health WHERE id <= (SELECT MAX(id) FROM health) - ?", (HEALTH_MAX_ROWS,))
        if self.on_health is not None:
            try:
                self.on_health(event)
            except Exception:  # a broken callback must not fail the write
                log.exception("health callback failed")

    # -- reading and confirming ----------------------------------------------------------------

    def fetch(self, limit: int, max_bytes: int | None = None, after: int = 0,
              exclude: Sequence[tuple[int, int]] = ()) -> list[SpooledAlert]:
        """The oldest ``limit`` alerts (at most ``max_bytes`` of bodies, at least one).

        ``exclude`` lists (first, last) row-id ranges already in flight.
        """
        where = "".join(" AND id NOT BETWEEN ? AND ?" for _ in exclude)
        args: list = [after]
        for lo, hi in exclude:
            args += [lo, hi]
        rows = self._db.execute(
            f"SELECT id, alert_uuid, created, attempts, body FROM alerts WHERE id > ?{where} ORDER BY id LIMIT ?",
            (*args, limit)).fetchall()
        out: list[SpooledAlert] = []
        size = 0
        for r in rows:
            size += len(r[4])
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append(SpooledAlert(r[0], r[1], r[2], r[3], bytes(r[4])))
        return out

    def ack(self, rowids: Sequence[int]) -> int:
        """Delete confirmed alerts; returns how many rows went."""
        if not rowids:
            return 0
        gone = 0
        # A delete lost to a power cut only means the alert is sent again (at-least-once, the id is the
        # idempotency key), so confirmations skip the fsync; the next FULL commit makes them durable too.
        with self._tx(durable=False):
            for chunk in _chunks(list(rowids)):
                marks = ",".join("?" * len(chunk))
                n, size = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM alerts WHERE id IN ({marks})", chunk).fetchone()
                self._db.execute(f"DELETE FROM alerts WHERE id IN ({marks})", chunk)
                self._bump("bytes", -size)
                gone += n
        return gone

    def mark_failed(self, rowids: Sequence[int], error: str | None) -> None:
        """Count a failed attempt on these rows (kept for status and the dead-letter record)."""
        if not rowids:
            return
        with self._tx(durable=False):
            for chunk in _chunks(list(rowids)):
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"UPDATE alerts SET attempts=attempts+1, last_error=? WHERE id IN ({marks})",
                                 [(error or "")[:500], *chunk])

    def dead_letter(self, items: Sequence[tuple[int, str, int | None]]) -> int:
        """Move (rowid, reason, http status) rows to the dead_letter table."""
        if not items:
            return 0
        moved = 0
        now = self.clock()
        with self._tx():
            for rowid, reason, status in items:
                row = self._db.execute("SELECT size FROM alerts WHERE id=?", (rowid,)).fetchone()
                if row is None:
                    continue
                self._db.execute(
                    "INSERT INTO dead_letter(alert_uuid, created, moved, attempts, status, reason, body) "
                    "SELECT alert_uuid, created, ?, attempts + 1, ?, ?, body FROM alerts WHERE id=?",
                    (now, status, reason[:1000], rowid))
                self._db.execute("DELETE FROM alerts WHERE id=?", (rowid,))
                self._bump("bytes", -row[0])
                moved += 1
                log.error("alert moved to dead-letter (HTTP %s): %s", status, reason)
            self._bump("dead_lettered", moved)
            n = self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
            if n > self.dead_max_rows:
                self._db.execute("DELETE FROM dead_letter WHERE id IN (SELECT id FROM dead_letter ORDER BY id LIMIT ?)",
                                 (n - self.dead_max_rows,))
                self._bump("dead_dropped", n - self.dead_max_rows)
        return moved

    def dead_letters(self, limit: int = 100) -> list[dict]:
        """The newest dead-lettered alerts: id, reason, status, attempts, moved, alert."""
        rows = self._db.execute("SELECT alert_uuid, reason, status, attempts, moved, body FROM dead_letter "
                                "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for uid, reason, status, attempts, moved, body in rows:
            try:
                alert = _DEC.decode(body)
            except msgspec.DecodeError:
                alert = None
            out.append({"id": uid, "reason": reason, "status": status, "attempts": attempts,
                        "moved": moved, "alert": alert})
        return out

    def requeue_dead(self, alert_ids: Sequence[str] | None = None) -> int:
        """Move dead-lettered alerts (all, or these ids) back to the delivery queue."""
        now = self.clock()
        with self._tx():
            where, args = "", []
            if alert_ids is not None:
                if not alert_ids:
                    return 0
                where, args = f"WHERE alert_uuid IN ({','.join('?' * len(alert_ids))})", list(alert_ids)
            rows = self._db.execute(f"SELECT id, alert_uuid, body FROM dead_letter {where} ORDER BY id", args).fetchall()
            n = 0
            for rowid, uid, body in rows:
                cur = self._db.execute("INSERT OR IGNORE INTO alerts(alert_uuid, created, size, body) VALUES (?,?,?,?)",
                                       (uid, now, len(body), body))
                if cur.rowcount == 1:
                    self._bump("bytes", len(body))
                    n += 1
                self._db.execute("DELETE FROM dead_letter WHERE id=?", (rowid,))
            self._enforce(now)
        self._notify()
        return n

    # -- observing ----------------------------------------------------------------------------

    def wait_for_data(self, seen: int, timeout: float) -> int:
        """Block until an in-process write happened after ``seen`` (or timeout); returns the new mark."""
        with self._new_data:
            if self._seq == seen:
                self._new_data.wait(timeout)
            return self._seq

    def wake(self) -> None:
        """Wake threads blocked in wait_for_data() (used on shutdown)."""
        self._notify()

    @property
    def write_mark(self) -> int:
        return self._seq

    def depth(self) -> int:
        """How many alerts wait for delivery."""
        return self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]

    def oldest_created(self) -> float | None:
        """Spool time of the oldest waiting alert."""
        row = self._db.execute("SELECT created FROM alerts ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    def ids(self) -> list[str]:
        """Ids of the waiting alerts, oldest first."""
        return [r[0] for r in self._db.execute("SELECT alert_uuid FROM alerts ORDER BY id")]

    def stats(self) -> dict:
        """Counters for health reporting (persisted across restarts)."""
        counters = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        depth = self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        dead = self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        return {"depth": depth, "bytes": counters.get("bytes", 0), "max_bytes": self.max_bytes,
                "max_age_s": self.max_age, "dead_letter_depth": dead,
                **{k: counters.get(k, 0) for k in _COUNTERS if k != "bytes"}}

    def health_events(self, limit: int = 50) -> list[dict]:
        """The newest health events: kind, first/last time, count, detail."""
        rows = self._db.execute("SELECT kind, first_ts, last_ts, count, detail FROM health "
                                "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{"kind": k, "first": f, "last": l, "count": c, "detail": _DEC.decode(d)}
                for k, f, l, c, d in rows]

    def close(self) -> None:
        """Checkpoint and close the database."""
        with self._lock:
            conns, self._conns = self._conns, []
            self._closed = True
        for i, conn in enumerate(conns):
            try:
                if i == len(conns) - 1:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error) on this thread's connection; nests."""

    def __init__(self, spool: Spool, durable: bool = True) -> None:
        self.spool = spool
        self.durable = durable
        self.outer = False

    def __enter__(self) -> None:
        db = self.spool._db
        if not db.in_transaction:
            self.outer = True
            if not self.durable:  # per-connection setting; only between transactions
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if not self.outer:
            return
        db = self.spool._db
        try:
            db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            if not self.durable:
                db.execute("PRAGMA synchronous=FULL")
