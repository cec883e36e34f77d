"""The durable alert spool: SQLite in WAL mode with ``synchronous=FULL``.

Every alert is committed here before any delivery attempt and deleted only when the receiver
confirmed it. FULL makes each commit survive power loss, not only a crash of the process ("a
transaction committed in WAL mode with NORMAL might roll back following a power loss"). Bodies are
JSON bytes (msgspec): no pickle, so a tampered spool file cannot run code in a SYSTEM service.
Each row carries a CRC-32 of its id and body, checked before the row is sent. ``sync="normal"``
(``[spool] sync``, not the default) trades the power-cut guarantee for fewer fsyncs: a crash or
kill of the process still loses nothing, a power cut may lose the commits since the last
checkpoint.

The spool is bounded by bytes and by age. When full it drops the *oldest* alerts (Fluent Bit's
policy: blocking would stall the ETW consumer and lose events anyway), counts them, records a health
event and enqueues a synthetic ``spool_overflow`` health alert so the SIEM learns about the loss.

Faults are states, not error storms (docs/delivery.md, "Faults"):

- **Disk full.** Every write path raises :class:`SpoolFull` (a :class:`SpoolError`), never a raw
  ``sqlite3`` error. A write that hits a full disk first frees the spool's reserve file and
  checkpoints, then (for new alerts) drops the oldest alerts to make room, then holds new alerts
  in a bounded memory queue that goes to disk when space returns. The state shows in ``stats()``
  and in the log (once when it begins, once when it ends), and as a ``spool_disk_full`` health
  alert.
- **Damage.** The owner (the running sensor) checks the file at start; one SQLite cannot read is
  moved aside (``<name>.damaged-<UTC time>``) and the rows still readable are recovered into a
  fresh spool (:mod:`sensor.deliver.salvage`), with a ``spool_salvaged`` health alert. Damage
  SQLite reports while the sensor runs is healed the same way at the spool's next use (at most
  every ``HEAL_RETRY_INTERVAL``): the thread that heals has the file alone (:class:`_Gate`), and
  new alerts that cannot be written meanwhile wait in memory like on a full disk.
- **A lost write-ahead log.** The WAL is checkpointed every ``WAL_AUTOCHECKPOINT`` pages, so a
  deleted ``-wal`` costs at most that much; the owner notices one missing after an unclean stop.

One ``Spool`` object is safe to share between threads (the pipeline writes while the forwarder
reads); several processes may open the same file (WAL + busy timeout), which is how
``etw-sensor spool`` looks into the spool of a running sensor. Only the owner (``owner=True``, the
process holding the instance lock) salvages, keeps the reserve and tracks clean shutdowns.
"""
from __future__ import annotations

import collections
import datetime as _dt
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, Sequence

import msgspec

from .. import __version__
from .._files import open_private, private_dir, touch_private
from .text import repair, repair_text

log = logging.getLogger("sensor.spool")

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 256 * MiB
DEFAULT_MAX_AGE = 7 * 86400.0
DEFAULT_DEAD_MAX_ROWS = 10_000
HEALTH_COALESCE = 60.0  # seconds: repeated drops within this window update one health event
HEALTH_MAX_ROWS = 1000

# The WAL is checkpointed into the database file once it holds this many pages (SQLite's default
# is 1000, 4 MiB). A lost -wal file loses what was committed since the last checkpoint, so a small
# WAL bounds that loss; bench/spool_wal.py measures the cost (docs/delivery.md, "The WAL").
WAL_AUTOCHECKPOINT = 32
SYNC_MODES = ("full", "normal")   # the spool's synchronous setting ([spool] sync)
TX_MAX_BYTES = 256 * 1024         # alert bytes per transaction: one large batch cannot swell the WAL
# Below every row id: the spool numbers its rows from 1, but a file another program wrote may
# hold ids of 0 or below (SQLite allows any 64-bit id), and such a row must be fetched and
# dropped like the others, not counted for ever (a drain that never ends).
BEFORE_EVERY_ROW = float("-inf")
JOURNAL_SIZE_LIMIT = MiB          # a WAL grown past this (a long reader pinned it) is cut back after a checkpoint
# Disk space set aside for the moment the disk is full: freeing it lets the checkpoint copy the WAL
# into the database file (which needs room for the pages the WAL added), after which SQLite reuses
# the WAL file and the pages of deleted rows for new ones.
RESERVE_BYTES = 2 * MiB
RESERVE_FRACTION = 4              # ... but at most 1/4 of the volume
HELD_MAX_BYTES = 16 * MiB         # new alerts kept in memory while nothing can be written
ACK_CHUNK = 64                    # rows per transaction when confirmations run short of space
FULL_RETRY_INTERVAL = 0.5         # seconds between write attempts while alerts wait in memory
FULL_REMIND_INTERVAL = 300.0      # seconds between log reminders while the disk stays full
HEAL_RETRY_INTERVAL = 5.0         # seconds between attempts to heal a spool damaged while running
HEAL_WAIT = 10.0                  # seconds a heal waits for the other threads to leave the file
HEAL_MAX_INTERVAL = 3600.0        # damage that keeps coming back (a failing disk): heals slow down

# SQLite result codes (primary codes are the low byte of the extended ones).
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26
_SQLITE_IOERR_SHORT_READ = 522

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
    body BLOB NOT NULL,
    crc INTEGER
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    alert_uuid TEXT NOT NULL,
    created REAL NOT NULL,
    moved REAL NOT NULL,
    attempts INTEGER NOT NULL,
    status INTEGER,
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    crc INTEGER
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

# The alerts table of a spool healed while running: ids never reused (see Spool.heal).
_ALERTS_AUTOINCREMENT = _SCHEMA.split(";")[0].replace(
    "CREATE TABLE IF NOT EXISTS alerts (\n    id INTEGER PRIMARY KEY,",
    "CREATE TABLE IF NOT EXISTS alerts (\n    id INTEGER PRIMARY KEY AUTOINCREMENT,")
assert "AUTOINCREMENT" in _ALERTS_AUTOINCREMENT

# Persisted counters; "rows" (alerts waiting) lets a salvage say how many rows it lost.
_COUNTERS = ("bytes", "rows", "dropped", "expired", "dead_lettered", "dead_dropped", "written",
             "duplicates", "dropped_disk_full", "salvaged", "damaged_rows")
_PUBLIC_COUNTERS = tuple(k for k in _COUNTERS if k not in ("bytes", "rows"))

_ENC = msgspec.json.Encoder(enc_hook=str)
_DEC = msgspec.json.Decoder()

_DROP_WHAT = {"spool_expired": "older than max_age", "spool_overflow": "over max_bytes",
              "spool_disk_full_dropped": "disk full"}


MAX_NESTING = 64     # levels of an alert kept as they are when it cannot be stored whole
_TOO_DEEP = f"(nested deeper than {MAX_NESTING} levels: left out)"


def _storable(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that JSON can hold: text repaired (lone surrogates), nesting past
    MAX_NESTING levels replaced by a note, a value of any other type as its text (at most
    4,096 characters)."""
    if isinstance(value, str):
        return repair_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= MAX_NESTING:
        return _TOO_DEEP
    if isinstance(value, Mapping):
        return {repair_text(str(k)): _storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v, depth + 1) for v in value]
    try:
        return repair_text(str(value))[:4096]
    except MemoryError:
        raise
    except Exception as exc:    # a value whose own text raises
        return f"(cannot be written: {type(exc).__name__})"


def _encode(alert: Mapping[str, Any]) -> bytes:
    """JSON bytes of one alert. What JSON cannot hold is stored repaired (:func:`_storable`),
    never fatal to the batch: a lone surrogate silently (docs/delivery.md), a value nested
    past the encoder's limit or one whose text raises with a warning; an alert that cannot
    even be read that way keeps its id and the reason."""
    try:
        return _ENC.encode(alert)
    except MemoryError:
        raise
    except Exception as exc:      # the alert's content: UnicodeEncodeError, RecursionError, ...
        first = exc
    name = repair_text(str(alert.get("id")))
    try:
        body = _ENC.encode(_storable(alert))
    except MemoryError:
        raise
    except Exception as exc:
        log.warning("alert %s: stored as its id alone: its content cannot be read (%s)",
                    name, type(exc).__name__)
        return _ENC.encode({"id": name, "error": f"the sensor could not read this alert: "
                                                 f"{type(exc).__name__}"})
    if not isinstance(first, UnicodeEncodeError):
        log.warning("alert %s: stored with what JSON cannot hold replaced (%s)", name,
                    type(first).__name__)
    return body


def row_crc(alert_id: str, body: bytes) -> int:
    """The checksum a row carries: CRC-32 of its id, a NUL and its body.

    It catches damage (a flipped bit, a torn page), not tampering: whoever can write the
    spool file can write a matching checksum too.
    """
    return zlib.crc32(body, zlib.crc32(alert_id.encode("utf-8", "replace") + b"\0"))


class SpoolError(RuntimeError):
    """The spool cannot be opened, read or written; the message says which file and why."""


class SpoolFull(SpoolError):
    """The disk holding the spool is full (SQLITE_FULL): a state, reported in ``stats()``."""


class SpoolDamaged(SpoolError):
    """SQLite cannot read the spool file (corrupt, truncated, not a database)."""


class SpoolRowError(ValueError):
    """One spooled row is damaged (checksum, JSON or id mismatch); ``reason`` says how."""


def _classify(exc: sqlite3.Error) -> type[SpoolError]:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        text = str(exc).lower()
        if "disk is full" in text:
            return SpoolFull
        if "malformed" in text or "not a database" in text or "could not decode" in text:
            return SpoolDamaged
        return SpoolError
    if code & 0xFF == _SQLITE_FULL:
        return SpoolFull
    if code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or code == _SQLITE_IOERR_SHORT_READ:
        return SpoolDamaged
    return SpoolError


@dataclass(frozen=True)
class SpooledAlert:
    """One alert row as read back for delivery."""

    rowid: int
    alert_id: str
    created: float
    attempts: int
    body: bytes
    crc: int | None = None

    def decode(self) -> dict:
        """The alert dict; raises SpoolRowError on a damaged row (checksum, JSON, id)."""
        if self.crc is not None and row_crc(self.alert_id, self.body) != self.crc:
            raise SpoolRowError("checksum mismatch: the row was damaged on disk")
        try:
            value = _DEC.decode(self.body)
        except msgspec.DecodeError as exc:
            raise SpoolRowError(f"the body is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise SpoolRowError("the body is not a JSON object")
        if str(value.get("id")) != self.alert_id:
            raise SpoolRowError("the body's id does not match the row's")
        return value


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _chunks(seq: Sequence, n: int = 500) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _byte_chunks(rows: list, limit: int) -> Iterator[list]:
    """Consecutive runs of rows whose bodies hold at most ``limit`` bytes (at least one row)."""
    start = size = 0
    for i, r in enumerate(rows):
        if i > start and size + r[2] > limit:
            yield rows[start:i]
            start, size = i, 0
        size += r[2]
    if start < len(rows):
        yield rows[start:]


# A row ready to insert: (alert_uuid, created, size, body, crc, kind)
_Row = tuple


class _Gate:
    """Threads use the spool's file together; a heal (a damaged file moved aside while the sensor
    runs) has it alone. Entering is reentrant per thread. The healer waits, bounded, for the
    threads inside to leave (their connections are idle then, so closing them is safe and, on
    Windows, the file can be renamed); threads that arrive meanwhile wait for the heal to end."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0                  # threads inside (each counted once)
        self._healer: int | None = None   # the thread healing, if any
        self._local = threading.local()

    def depth(self) -> int:
        return getattr(self._local, "depth", 0)

    def enter(self) -> None:
        depth = self.depth()
        if depth == 0:
            me = threading.get_ident()
            with self._cond:
                while self._healer is not None and self._healer != me:
                    self._cond.wait()
                self._inside += 1
        self._local.depth = depth + 1

    def leave(self) -> None:
        depth = self._local.depth - 1
        self._local.depth = depth
        if depth == 0:
            with self._cond:
                self._inside -= 1
                if self._healer is not None:   # only a healer waits for threads to leave
                    self._cond.notify_all()

    def alone(self, timeout: float) -> bool:
        """Become the healer: True once no other thread is inside. False when another heal runs
        or the others did not leave within ``timeout`` (the caller tries again later)."""
        me = threading.get_ident()
        mine = 1 if self.depth() else 0
        with self._cond:
            if self._healer is not None:
                return False
            self._healer = me
            if self._cond.wait_for(lambda: self._inside <= mine, timeout):
                return True
            self._healer = None
            self._cond.notify_all()
            return False

    def done(self) -> None:
        with self._cond:
            self._healer = None
            self._cond.notify_all()


class Spool:
    """A bounded, durable FIFO of alerts keyed by their stable id."""

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age: float = DEFAULT_MAX_AGE, dead_max_rows: int = DEFAULT_DEAD_MAX_ROWS,
                 health_alerts: bool = True, clock: Callable[[], float] = time.time,
                 on_health: Callable[[dict], None] | None = None, owner: bool = False,
                 reserve_bytes: int = RESERVE_BYTES, held_max_bytes: int = HELD_MAX_BYTES,
                 sync: str = "full") -> None:
        if max_bytes <= 0 or max_age <= 0 or dead_max_rows <= 0:
            raise ValueError("max_bytes, max_age and dead_max_rows must be positive")
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        # "full" (the default): every commit of new alerts is fsynced and survives a power cut.
        # "normal": commits are fsynced only at checkpoints; a crash or kill of the process still
        # loses nothing, a power cut or OS crash the commits since the last checkpoint
        # (docs/delivery.md, "The loss window").
        self.sync = sync
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.max_age = float(max_age)
        self.dead_max_rows = int(dead_max_rows)
        self.health_alerts = health_alerts
        self.clock = clock
        self.on_health = on_health
        self.owner = owner
        self.reserve_path = Path(str(self.path) + ".reserve")
        self.reserve_target = max(0, int(reserve_bytes))
        self.held_max_bytes = max(0, int(held_max_bytes))
        # One SQLite connection per thread: WAL lets the forwarder read while the pipeline commits,
        # and sqlite3 releases the GIL while it waits on the disk. SQLite serialises the writers.
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards _conns and the write mark
        self._new_data = threading.Condition(self._lock)
        self._seq = 0  # bumped on every in-process write, for wait_for_data()
        # Rows and body bytes committed by this process (new alerts), for wait_for_volume(): a
        # forwarder that lingers learns that a full batch is waiting without reading the file.
        self._put_rows = 0
        self._put_bytes = 0
        self._volume_goal: tuple[int, int] | None = None   # (rows, bytes) a lingering forwarder waits for
        self._volume = threading.Condition(self._lock)
        self._closed = False
        # Disk-full state (memory only: it exists because the disk cannot take it).
        self._put_lock = threading.RLock()  # one writer of new alerts at a time (held queue order)
        self._state_lock = threading.Lock()  # the disk-full state is entered from any thread
        self._begin_pending: dict | None = None  # the begin event, written once a write succeeds
        self._next_try = 0.0
        self._held: collections.deque[_Row] = collections.deque()
        self._held_bytes = 0
        # Rows put_many is committing right now: in no queue and not yet in the file, so
        # "everything is delivered" must not be said while this is not 0.
        self._storing = 0
        self._full_since: float | None = None
        self._full_episodes = 0
        self._full_dropped = 0            # this episode: oldest alerts deleted to make room
        self._full_held_dropped = 0       # this episode: held alerts dropped (memory cap)
        self._unsaved_dropped = 0         # drops not yet added to the persisted counters
        self._full_reminded = 0.0
        self._last_full_error = ""
        self.reserve_bytes = 0
        # Set by the forwarder: () -> rows delivered but not yet confirmed on disk; dropping to make
        # room takes those first (they are no loss).
        self.delivery_state: Callable[[], Collection[int]] | None = None
        self.salvage: dict | None = None  # what the start-up salvage did, if it ran
        self.damage_marker = Path(str(self.path) + ".damaged")
        self.damaged_since: float | None = None  # damage found while running (owner)
        self.heals = 0                    # damaged files moved aside and recovered while running
        self.last_heal: dict | None = None  # what the last of them did (the salvage's report)
        self._gate = _Gate()
        self._next_heal = 0.0             # monotonic time of the next heal attempt
        self._heal_times: list[float] = []  # monotonic times of the heals in the last hour
        self._max_fetched = 0             # highest row id fetch() handed out (row ids in flight)
        self._unsaved_dropped_full = 0    # the part of _unsaved_dropped a full disk caused
        self._damage_held_dropped = 0     # held alerts dropped (memory cap) since the damage began
        self._opening = True
        self.wal_lost: dict | None = None  # set when a lost -wal was noticed at start
        try:
            # Private: the spool holds command lines. SQLite gives -wal and -shm the mode of the
            # database file, so creating that file 0600 first makes all three private.
            private_dir(self.path.parent)
            if not self.path.exists():
                touch_private(self.path)
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: cannot create its folder: {exc.strerror or exc}") from None
        wal_existed = os.path.exists(str(self.path) + "-wal")
        try:
            self._open(wal_existed)
            if owner and self.damage_marker.exists():
                try:
                    why = self.damage_marker.read_text(encoding="utf-8", errors="replace").strip()
                except OSError:
                    why = ""
                raise SpoolDamaged(f"spool {self.path}: damage found while the sensor last ran ({why})")
        except SpoolError as exc:
            if not isinstance(exc, SpoolDamaged) and not _foreign_schema(exc):
                self._close_connections()
                raise
            if not owner:
                self._close_connections()
                raise SpoolDamaged(f"{exc} (the sensor moves a damaged spool aside and recovers its "
                                   f"rows at its next start)") from None
            self.salvage = self._salvage(str(exc))
            try:
                self.damage_marker.unlink()
            except OSError:
                pass
        self._opening = False
        if owner:
            self._ensure_reserve()

    # -- opening, checking, salvaging ---------------------------------------------------------

    def _open(self, wal_existed: bool) -> None:
        with self._guard("open"):
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool {self.path}: cannot enable WAL (journal_mode={mode})")
            try:
                with self._tx():
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            self._db.execute(stmt)
                    for table in ("alerts", "dead_letter"):  # spools made before rows had checksums
                        cols = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                        if "crc" not in cols:
                            self._db.execute(f"ALTER TABLE {table} ADD COLUMN crc INTEGER")
                    for key in _COUNTERS:
                        self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, 0)", (key,))
                    # Re-derive the totals once per open: cheap, and heals any drift.
                    n, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM alerts").fetchone()
                    self._db.execute("UPDATE meta SET value=? WHERE key='bytes'", (total,))
                    self._db.execute("UPDATE meta SET value=? WHERE key='rows'", (n,))
            except sqlite3.Error as exc:
                if _classify(exc) is not SpoolFull or not self._has_schema():
                    raise
                # A full disk at start is a state like any other: run on what is there.
                self._enter_full(f"at start: {exc}")
            if self.owner:
                bad = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if bad != "ok":
                    raise SpoolDamaged(f"spool {self.path}: damaged ({bad})")
                self._check_clean_shutdown(wal_existed)

    def _has_schema(self) -> bool:
        try:
            return self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='meta'").fetchone()[0] == 1
        except sqlite3.Error:
            return False

    def _check_clean_shutdown(self, wal_existed: bool) -> None:
        """Notice a -wal that vanished after an unclean stop; mark this run as not yet clean."""
        row = self._db.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()
        if row is not None and row[0] == 0 and not wal_existed:
            at_risk = WAL_AUTOCHECKPOINT * self._page_size()
            self.wal_lost = {"at_risk_bytes": at_risk}
            message = (f"alert spool: the previous run stopped without closing {self.path.name} and its "
                       f"write-ahead log ({self.path.name}-wal) is missing: alerts committed after the "
                       f"last checkpoint (at most about {at_risk // 1024} KiB) are lost")
            log.error("%s", message)
            self._record_event("spool_wal_missing", message, dict(self.wal_lost))
        try:
            with self._tx():
                self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', 0)")
            # The marker (and everything before it) goes into the database file now, so a lost WAL
            # is noticed at the next start.
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            if _classify(exc) is not SpoolFull:
                raise
            self._enter_full(f"at start: {exc}")

    def _page_size(self) -> int:
        try:
            with self._in_file():
                return int(self._db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error:
            return 4096

    def _salvage(self, reason: str, id_floor: int | None = None) -> dict:
        """Move the damaged file aside, open a fresh spool and copy every readable row into it;
        returns what it did (moved_to, reason, recovered, lost, ...).

        ``id_floor`` (a heal while running): the fresh spool's alert ids start above it and never
        come back below it (AUTOINCREMENT), so an id fetched before the heal matches no row.
        """
        self._close_connections()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        k = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{k}")
            k += 1
        moved: list[tuple[str, str]] = []
        try:
            for suffix in ("", "-wal", "-shm"):
                if not suffix or os.path.exists(str(self.path) + suffix):
                    os.replace(str(self.path) + suffix, str(aside) + suffix)
                    moved.append((str(self.path) + suffix, str(aside) + suffix))
        except OSError as exc:
            # (on Windows another process holding the -wal open): the file and its log stay
            # together, in place, so the next attempt moves all of them
            for src, dst in reversed(moved):
                try:
                    os.replace(dst, src)
                except OSError as back:
                    log.critical("alert spool %s: cannot move %s back: %s", self.path, dst,
                                 back.strerror or back)
            raise SpoolError(f"spool {self.path} is damaged ({reason}) and cannot be moved aside: "
                             f"{exc.strerror or exc}") from None
        log.error("alert spool %s is damaged (%s): moved aside to %s; recovering its rows",
                  self.path, reason, aside.name)
        try:
            return self._recover_into_fresh(aside, reason, id_floor)
        except SpoolError:
            # The fresh spool could not be built or filled (a full disk, say). Nothing but copies of
            # the damaged file's rows went into it, so the damaged file goes back in its place: the
            # next attempt salvages it again (instead of salvaging the empty file that took its
            # place while its rows stayed in the copy set aside).
            self._close_connections()
            try:
                for suffix in ("-wal", "-shm", ""):
                    if os.path.exists(str(self.path) + suffix):
                        os.remove(str(self.path) + suffix)
                os.replace(aside, self.path)
                for suffix in ("-wal", "-shm"):
                    if os.path.exists(str(aside) + suffix):
                        os.replace(str(aside) + suffix, str(self.path) + suffix)
            except OSError as exc:
                log.critical("alert spool %s: cannot put the damaged file back from %s: %s; its rows "
                             "are there", self.path, aside.name, exc.strerror or exc)
            raise

    def _recover_into_fresh(self, aside: Path, reason: str, id_floor: int | None) -> dict:
        """Create the fresh spool at ``self.path`` and copy every readable row of ``aside`` into
        it; returns what it did."""
        from .salvage import ScanReport, scan

        try:
            touch_private(self.path)  # the fresh spool is private like the first one
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: cannot create a fresh spool: {exc.strerror or exc}") from None
        if id_floor is not None:
            with self._guard("salvage"), self._tx():
                self._db.execute(_ALERTS_AUTOINCREMENT)
                self._db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('alerts', ?)", (id_floor,))
        self._open(wal_existed=True)
        report = ScanReport()
        alerts = dead = damaged = 0
        seen_ids: set[str] = set()  # stale copies of a row (header gone): one row per alert id
        claimed: int | None = None
        counters: dict[str, int] = {}
        now = self.clock()
        batch_a: list = []
        batch_d: list = []

        def flush() -> None:
            with self._guard("salvage"), self._tx():
                for r in batch_a:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO alerts(alert_uuid, created, attempts, kind, size, body, crc) "
                        "VALUES (?,?,?,?,?,?,?)", r)
                    if cur.rowcount == 1:
                        self._bump("bytes", r[4])
                        self._bump("rows", 1)
                self._insert_dead(batch_d, now)
            batch_a.clear()
            batch_d.clear()

        wal = str(aside) + "-wal"
        try:
            for _rowid, v in scan(str(aside), wal if os.path.exists(wal) else None, report,
                                  tables=("alerts", "dead_letter", "meta")):
                row = _alert_values(v)
                if row is not None:
                    uid, created, attempts, kind, body, crc = row
                    if uid in seen_ids:
                        continue
                    seen_ids.add(uid)
                    if crc is not None and row_crc(uid, body) != crc:
                        damaged += 1
                        batch_d.append((uid, created, attempts, None,
                                        "damaged in a spool that was salvaged: checksum mismatch", body, crc))
                    else:
                        alerts += 1
                        batch_a.append((uid, created, attempts, kind, len(body), body,
                                        crc if crc is not None else row_crc(uid, body)))
                else:
                    d = _dead_values(v)
                    if d is not None:
                        dead += 1
                        batch_d.append(d)
                    elif len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
                        counters[v[0]] = v[1]
                if len(batch_a) + len(batch_d) >= 500:
                    flush()
            flush()
        except SpoolError:
            raise
        except Exception as exc:  # the reader met something it cannot read: keep what it has
            log.error("reading the damaged spool %s stopped: %s: %s", aside, type(exc).__name__, exc)
            flush()
        claimed = counters.get("rows")
        lost = None if claimed is None else max(0, claimed - alerts - damaged)
        with self._guard("salvage"), self._tx():
            for key, value in counters.items():  # keep the history the old file counted
                if key in _PUBLIC_COUNTERS:
                    self._db.execute("UPDATE meta SET value=value+? WHERE key=?", (value, key))
            self._bump("salvaged", alerts)
            self._bump("damaged_rows", damaged)
        done = {"moved_to": str(aside), "reason": reason, "recovered": alerts,
                "recovered_dead_letters": dead, "damaged": damaged, "lost": lost,
                "pages": report.pages, "bad_cells": report.bad_cells,
                "header_ok": report.header_ok, "walked": report.walked}
        lost_text = "an unknown number of alerts may be lost (the row count was unreadable)" \
            if lost is None else f"{lost} lost"
        message = (f"alert spool was damaged ({reason}) and moved aside to {aside.name}: recovered "
                   f"{alerts} alert(s) and {dead} dead letter(s); {damaged} failed their checksum "
                   f"(moved to dead letters); {lost_text}")
        log.error("%s", message)
        self._record_event("spool_salvaged", message, dict(done))
        return done

    # -- connections and transactions ---------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise SpoolError(f"spool {self.path} is closed")
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            # The file is input like any other: text that is not UTF-8 (damage) reads with U+FFFD
            # (the row's checksum then fails) instead of failing every read of the table.
            conn.text_factory = _text
            try:
                conn.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
                conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
                # Zero a deleted row's bytes in the pages a delete writes anyway (no extra I/O), so a
                # salvage never brings back alerts that were confirmed long ago.
                conn.execute("PRAGMA secure_delete=FAST")
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn every sqlite3/OS error into the spool's own (SpoolFull, SpoolDamaged, SpoolError).

        Every use of the file passes here: a spool damaged while running is healed first (when
        due), and a heal in progress is waited for.
        """
        if self.damaged_since is not None and self._gate.depth() == 0:
            self.heal_if_due()
        self._gate.enter()
        try:
            yield
        except SpoolError:
            raise
        except sqlite3.Error as exc:
            kind = _classify(exc)
            if kind is SpoolDamaged:
                self._mark_damaged(str(exc))
            raise kind(f"spool {self.path}: {what} failed: {exc}") from exc
        except UnicodeEncodeError as exc:  # a value of this call SQLite cannot store: not damage
            raise SpoolError(f"spool {self.path}: {what} failed: text that cannot be stored "
                             f"({exc.reason})") from exc
        except UnicodeError as exc:  # SQLite handed back text that is not UTF-8: a damaged file
            self._mark_damaged(str(exc))
            raise SpoolDamaged(f"spool {self.path}: {what} failed: damaged text ({exc.reason})") from exc
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: {what} failed: {exc.strerror or exc}") from exc
        finally:
            self._gate.leave()

    @contextmanager
    def _in_file(self) -> Iterator[None]:
        """Inside the gate without _guard's error mapping (the small reads on the disk-full path
        that run outside a transaction): a heal must not find them holding, or opening, a
        connection to the file it moves aside."""
        self._gate.enter()
        try:
            yield
        finally:
            self._gate.leave()

    def heal_if_due(self) -> bool:
        """Heal a spool damaged while running, at most every HEAL_RETRY_INTERVAL; True if healed."""
        now = time.monotonic()
        if (not self.owner or self._closed or self._opening or self.damaged_since is None
                or now < self._next_heal):
            return False
        self._next_heal = now + HEAL_RETRY_INTERVAL
        return self.heal()

    def heal(self) -> bool:
        """(Owner) Move a file found damaged while running aside and recover its rows into a fresh
        spool, as a start does, without stopping the sensor. True when it was done; False when
        it could not be done now (another thread did not leave the file in time, the file could
        not be moved aside): the spool stays damaged, and the next use tries again.

        Row ids handed out before the heal refer to nothing afterwards (the fresh spool numbers
        its rows above every id ever fetched): a delivery in flight cannot confirm a different
        alert, and the recovered copy of an alert in flight is sent again (at-least-once).
        """
        if not self.owner or self._closed or self.damaged_since is None:
            return False
        if self._full_since is not None:
            # The fresh spool has to grow, which the full state forbids (its page limit): leave
            # that state first when space is back (if it is not, the heal fails and is retried).
            self._maybe_leave_full()
        if not self._gate.alone(HEAL_WAIT):
            log.warning("alert spool %s: the damaged file is still in use; trying again in %.0f s",
                        self.path, HEAL_RETRY_INTERVAL)
            return False
        try:
            if self.damaged_since is None:   # healed by the thread we waited for
                return True
            why = ""
            try:
                why = self.damage_marker.read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                pass
            self._opening = True
            try:
                done = self._salvage(f"damage found while running ({why or 'SQLite reported it'})",
                                     id_floor=self._max_fetched)
            except SpoolError as exc:
                log.error("alert spool %s: cannot heal the damaged file now: %s; trying again in %.0f s",
                          self.path, exc, HEAL_RETRY_INTERVAL)
                self._close_connections()   # the next use opens whatever file is there now
                return False
            finally:
                self._opening = False
            self.last_heal = done
            try:
                self.damage_marker.unlink()
            except OSError:
                pass
            self.damaged_since = None
            self.heals += 1
            if self._damage_held_dropped:
                log.error("alert spool %s: %d alert(s) waiting in memory for the heal were dropped over "
                          "the memory cap", self.path, self._damage_held_dropped)
                done["held_dropped"] = self._damage_held_dropped
                self._damage_held_dropped = 0
            # Each heal leaves a copy of the file aside. Damage that comes back at once (a failing
            # disk) must not fill the volume with copies: the next heal waits twice as long per
            # heal in the last hour (new alerts wait in memory meanwhile, bounded).
            now = time.monotonic()
            self._heal_times = [t for t in self._heal_times if now - t < 3600.0] + [now]
            self._next_heal = now + min(HEAL_MAX_INTERVAL,
                                        HEAL_RETRY_INTERVAL * 2 ** (len(self._heal_times) - 1)) \
                if len(self._heal_times) > 1 else 0.0
            self._ensure_reserve()
        finally:
            self._gate.done()
        self._notify()
        return True

    def _mark_damaged(self, why: str) -> None:
        """(Owner, while running) Remember damage SQLite found, so the next use heals the file
        (:meth:`heal`) or, if the process ends first, the next start salvages it even when its
        quick check passes (an index that no longer matches its table, say)."""
        if not self.owner or self._opening or self.damaged_since is not None:
            return
        self.damaged_since = self.clock()
        try:
            with open_private(self.damage_marker, "w", encoding="utf-8", make_parents=False) as fh:
                fh.write(why[:500] + "\n")
        except OSError:
            pass
        log.critical("ALERT SPOOL DAMAGED (%s): %s; the sensor moves the file aside and recovers its "
                     "rows now (new alerts wait in memory meanwhile)", self.path, why)
        self._callback({"event": "spool_damaged", "message": f"alert spool damaged while running: {why}",
                        "path": str(self.path)})

    def _notify(self, rows: int = 0, nbytes: int = 0) -> None:
        with self._new_data:
            self._seq += 1
            self._put_rows += rows
            self._put_bytes += nbytes
            self._new_data.notify_all()
            goal = self._volume_goal
            # A lingering forwarder is woken only when its batch is full (or by wake()): the
            # commits in between cost it no wake-up.
            if goal is not None and (self._put_rows >= goal[0] or self._put_bytes >= goal[1]):
                self._volume.notify_all()

    def _tx(self, durable: bool = True) -> "_Tx":
        return _Tx(self, durable)

    def _counter(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else 0

    def _bump(self, key: str, n: int) -> None:
        if n:
            self._db.execute("UPDATE meta SET value=value+? WHERE key=?", (n, key))

    def _close_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    # -- writing ------------------------------------------------------------------------------

    def put(self, alert: Mapping[str, Any]) -> bool:
        """Commit one alert durably; False if an alert with this id is already spooled."""
        return self.put_many([alert]) == 1

    def put_many(self, alerts: Iterable[Mapping[str, Any]], kind: str = "alert") -> int:
        """Commit alerts in one transaction; returns how many were new.

        ``kind`` "health" marks rows the size cap never drops (health alerts). On a full disk the
        alerts are not refused: room is made (reserve, checkpoint, the oldest alerts dropped) or,
        when nothing can be written, they wait in memory (bounded, oldest dropped first) and are
        committed when space returns; they count as new. On a file found damaged (owner) the
        spool heals at once (:meth:`heal`) or, when that cannot be done yet, holds the alerts in
        memory the same way. Raises SpoolError for any other failure.
        """
        now = self.clock()
        rows: list[_Row] = []
        for alert in alerts:
            alert_id = alert.get("id")
            if not alert_id:
                # Every alert from build_alert() has an id; one without still must not be lost.
                alert = dict(alert)
                alert_id = alert["id"] = str(uuid.uuid4())
            alert_id = repair(str(alert_id))
            body = _encode(alert)
            rows.append((alert_id, now, len(body), body, row_crc(alert_id, body), kind))
        if not rows and not self._held:
            return 0
        with self._put_lock:
            had_held = bool(self._held)
            if (had_held and (self._full_since is not None or self.damaged_since is not None)
                    and now < self._next_try):
                self._hold(rows)  # the last attempt failed a moment ago: do not hammer the disk
                return len(rows)
            earlier = list(self._held)
            batch = earlier + rows
            self._storing = len(batch)   # before the held queue empties: never both zero
            try:
                self._held.clear()
                self._held_bytes = 0
                try:
                    added, left = self._store(batch, now)
                except SpoolDamaged:
                    if not self.owner or self._closed:
                        raise
                    # Heal now and write into the fresh spool; when that cannot be done yet, the
                    # alerts wait in memory like on a full disk (rows a chunk already committed
                    # come back once: the id makes the second write a no-op).
                    if self.heal_if_due():
                        added, left = self._store(batch, now)
                    else:
                        added, left = 0, batch
                if left:
                    self._hold(left)
                    self._next_try = now + FULL_RETRY_INTERVAL
                elif self._begin_pending is not None:
                    self._write_begin_event()
            except BaseException:
                # The alerts held from earlier calls are nobody else's to count: they wait again
                # (a row a committed chunk already wrote is ignored as a duplicate next time).
                # This call's own rows are the caller's, who is told by the error.
                for r in reversed(earlier):
                    self._held.appendleft(r)
                    self._held_bytes += r[2]
                raise
            finally:
                self._storing = 0
        self._notify(len(batch), sum(r[2] for r in batch))
        return len(rows) if had_held or left else added

    def _store(self, batch: list[_Row], now: float) -> tuple[int, list[_Row]]:
        """Commit ``batch`` in transactions of at most TX_MAX_BYTES. Returns (rows that were new,
        rows that could not be written)."""
        if self._full_since is not None:
            self._maybe_leave_full()
        if self._full_since is not None:
            return self._store_when_full(batch, now)
        added = done = 0
        for chunk in _byte_chunks(batch, TX_MAX_BYTES):
            try:
                added += self._write_rows(chunk, now)
            except SpoolFull as exc:
                self._enter_full(str(exc))
                self._make_room()
                n, left = self._store_when_full(batch[done:], now)
                return added + n, left
            done += len(chunk)
        return added, []

    def _write_rows(self, rows: Sequence[_Row], now: float, room: int = 0) -> int:
        """Insert ``rows`` in one transaction; returns how many were new. With ``room`` (disk
        full), first drop the oldest alerts holding that many bytes in the same transaction, so
        the new rows take the pages the old ones leave and the file does not grow."""
        made = 0
        with self._guard("write"), self._tx():
            db = self._db
            if room:
                made = self._drop_oldest(room, "spool_disk_full_dropped", now, {"path": str(self.path)})
            added = added_bytes = 0
            for r in rows:
                cur = db.execute("INSERT OR IGNORE INTO alerts(alert_uuid, created, size, body, crc, kind) "
                                 "VALUES (?,?,?,?,?,?)", r)
                if cur.rowcount == 1:
                    added += 1
                    added_bytes += r[2]
            self._bump("bytes", added_bytes)
            self._bump("rows", added)
            self._bump("written", added)
            self._bump("duplicates", len(rows) - added)
            unsaved, unsaved_full = self._unsaved_dropped, self._unsaved_dropped_full
            if unsaved:
                self._bump("dropped", unsaved)
                self._bump("dropped_disk_full", unsaved_full)
            self._enforce(now)
        self._unsaved_dropped -= unsaved
        self._unsaved_dropped_full -= unsaved_full
        self._full_dropped += made
        return added

    def _store_when_full(self, rows: list[_Row], now: float) -> tuple[int, list[_Row]]:
        """The disk is full: never grow the file. Rows go into the free pages the spool file
        already has, as many per transaction as they hold; when there are too few, the oldest
        alerts are dropped in the same transaction (drop-oldest), so the new rows take their pages.
        Returns (rows that were new, rows that could not be written)."""
        self._checkpoint()
        page = self._page_size()
        added = i = 0
        while i < len(rows):
            free = self._free_pages_bytes()
            j, size = i, 0
            while j < len(rows) and size + rows[j][2] + 2 * page <= free and size <= TX_MAX_BYTES:
                size += rows[j][2] + page  # a row costs its bytes plus about a page of b-tree
                j += 1
            group = rows[i:j] if j > i else rows[i:i + 1]
            room = 0 if j > i else group[0][2] + 4 * page
            for attempt in range(3):
                try:
                    added += self._write_rows(group, now, room=room)
                    break
                except SpoolFull as exc:
                    self._last_full_error = str(exc)
                    self._checkpoint()
                    if not self._has_alerts():
                        return added, rows[i:]
                    room = 4 * (room or sum(r[2] for r in group) + 4 * page)
            else:
                return added, rows[i:]
            i += len(group)
        return added, []

    def _page_limit(self) -> int:
        """While the disk is full a transaction may use only the pages the database file already
        has on disk (or its current size, if larger): a checkpoint never needs to grow the file."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        try:
            on_disk = self.path.stat().st_size // self._page_size()
        except OSError:
            on_disk = 0
        return max(pages, on_disk)

    def _has_alerts(self) -> bool:
        try:
            with self._in_file():
                return self._db.execute("SELECT 1 FROM alerts WHERE kind='alert' LIMIT 1").fetchone() is not None
        except sqlite3.Error:
            return False

    def _hold(self, rows: list[_Row]) -> None:
        """Keep new alerts in memory while the disk is full or the file damaged; drop the oldest
        held over the cap."""
        for r in rows:
            self._held.append(r)
            self._held_bytes += r[2]
        while self._held and self._held_bytes > self.held_max_bytes:
            old = self._held.popleft()
            self._held_bytes -= old[2]
            self._unsaved_dropped += 1
            if self._full_since is not None:
                self._full_held_dropped += 1
                self._unsaved_dropped_full += 1
            else:
                self._damage_held_dropped += 1

    def flush_held(self) -> int:
        """Try to commit alerts held in memory (called by the forwarder while the disk is full)."""
        if not self._held and self._full_since is None:
            return 0
        n = len(self._held)
        try:
            self.put_many([])
        except SpoolError as exc:
            log.debug("held alerts not yet written: %s", exc)
            return 0
        return n - len(self._held)

    def enforce(self) -> int:
        """Apply the age and size caps now; returns how many alerts were dropped."""
        with self._guard("enforce"), self._tx():
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
                self._bump("rows", -n)
                self._bump("expired", n)
                self._bump("dropped", n)
                dropped += n
                self._health("spool_expired", n, {"max_age_s": self.max_age}, now)
        # Until the cap holds: the health alert a drop adds takes room too, and counting the next
        # drops in it makes its text longer (9 dropped becomes 10). Each pass drops at least one
        # alert or ends the loop, so it ends.
        while True:
            total = self._counter("bytes")
            if total <= self.max_bytes:
                break
            n = self._drop_oldest(total - self.max_bytes, "spool_overflow", now, {"max_bytes": self.max_bytes})
            if not n:
                break
            dropped += n
        return dropped

    def _drop_oldest(self, excess: int, kind: str, now: float, detail: dict) -> int:
        """Free at least ``excess`` bytes (inside the caller's transaction): first the rows the
        forwarder delivered but could not yet confirm (gone already, not a loss), then the oldest
        alerts, counted under ``kind``. Returns how many alerts were dropped. An alert in flight
        is dropped like any other when it is among the oldest (oldest first is the promise); if
        its request succeeds it is then counted as both dropped and delivered."""
        settled = self._settled()
        freed = 0
        if settled:
            for chunk in _chunks(list(settled)):
                marks = ",".join("?" * len(chunk))
                n, size = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM alerts "
                                           f"WHERE id IN ({marks})", chunk).fetchone()
                self._db.execute(f"DELETE FROM alerts WHERE id IN ({marks})", chunk)
                self._bump("bytes", -size)
                self._bump("rows", -n)
                freed += size
        victims: list[int] = []
        cut: float = BEFORE_EVERY_ROW
        while freed < excess:
            # Health rows are tiny, one per HEALTH_COALESCE at most, and say what was lost: keep them.
            batch = self._db.execute("SELECT id, size FROM alerts WHERE id > ? AND kind='alert' "
                                     "ORDER BY id LIMIT 512", (cut,)).fetchall()
            if not batch:
                break
            for rowid, size in batch:
                freed += size
                victims.append(rowid)
                cut = rowid
                if freed >= excess:
                    break
        if not victims:
            return 0
        size = 0
        for chunk in _chunks(victims):
            marks = ",".join("?" * len(chunk))
            size += self._db.execute(f"SELECT COALESCE(SUM(size), 0) FROM alerts WHERE id IN ({marks})",
                                     chunk).fetchone()[0]
            self._db.execute(f"DELETE FROM alerts WHERE id IN ({marks})", chunk)
        n = len(victims)
        self._bump("bytes", -size)
        self._bump("rows", -n)
        self._bump("dropped", n)
        if kind == "spool_disk_full_dropped":
            self._bump("dropped_disk_full", n)
        self._health(kind, n, detail, now)
        return n

    def _settled(self) -> Collection[int]:
        """Rows the forwarder delivered but could not yet confirm (its hook)."""
        fn = self.delivery_state
        if fn is None:
            return ()
        try:
            return fn()
        except Exception:  # the spool must not fail a write over a broken hook
            log.exception("delivery state hook failed")
            return ()

    def _health(self, kind: str, n: int, detail: dict, now: float) -> None:
        """Record (or coalesce into) a drop health event, and enqueue a health alert for a new one."""
        what = _DROP_WHAT.get(kind, kind)
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
                    self._db.execute("UPDATE alerts SET body=?, size=?, crc=? WHERE id=?",
                                     (body, len(body), row_crc(row[3], body), old[0]))
                    self._bump("bytes", len(body) - old[1])
            return
        info = dict(detail, dropped=n, dropped_total=self._counter("dropped"))
        message = f"alert spool {what}: dropped the {n} oldest undelivered alert(s)"
        self._after_commit(lambda: log.warning("%s (%d dropped in total)", message, info["dropped_total"]))
        self._insert_event(kind, message, info, now, n)

    def _insert_event(self, kind: str, message: str, info: dict, now: float, count: int = 1,
                      callback: bool = True) -> None:
        """A health row, a health alert for the SIEM, and the callback (inside a transaction)."""
        event = {"event": kind, "message": message, **info}
        health_id = None
        if self.health_alerts:
            health_id = str(uuid.uuid4())
            health_alert = {"id": health_id, "type": "health", "timestamp": _iso(now),
                            "health": event, "sensor": {"version": __version__}}
            body = _ENC.encode(health_alert)
            self._db.execute("INSERT INTO alerts(alert_uuid, created, kind, size, body, crc) "
                             "VALUES (?,?,'health',?,?,?)", (health_id, now, len(body), body, row_crc(health_id, body)))
            self._bump("bytes", len(body))
            self._bump("rows", 1)
        self._db.execute("INSERT INTO health(kind, first_ts, last_ts, count, detail, alert_uuid) "
                         "VALUES (?,?,?,?,?,?)", (kind, now, now, count, _ENC.encode(info).decode(), health_id))
        self._db.execute("DELETE FROM health WHERE id <= (SELECT MAX(id) FROM health) - ?", (HEALTH_MAX_ROWS,))
        if callback:
            self._after_commit(lambda: self._callback(event))

    def _record_event(self, kind: str, message: str, info: dict, callback: bool = True) -> None:
        """A health event in its own transaction; on failure the callback and the log still tell."""
        try:
            with self._guard("health event"), self._tx():
                self._insert_event(kind, message, info, self.clock(), callback=callback)
            self._notify()
        except SpoolError as exc:
            log.error("cannot record the health event %s in the spool: %s", kind, exc)
            if callback:
                self._callback({"event": kind, "message": message, **info})

    def _after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current transaction commits (logs and callbacks must not announce
        what a failed commit rolled back)."""
        deferred = getattr(self._local, "deferred", None)
        if deferred is None:
            fn()
        else:
            deferred.append(fn)

    def _callback(self, event: dict) -> None:
        if self.on_health is not None:
            try:
                self.on_health(event)
            except Exception:  # a broken callback must not fail the write
                log.exception("health callback failed")

    # -- the disk-full state ------------------------------------------------------------------

    def _enter_full(self, error: str) -> None:
        with self._state_lock:
            self._last_full_error = error
            if self._full_since is not None:
                return
            now = self.clock()
            self._full_since = now
            self._full_reminded = now
            self._full_episodes += 1
            self._full_dropped = self._full_held_dropped = 0
        message = (f"ALERT SPOOL DISK FULL ({self.path.parent}): delivering what is spooled; new alerts "
                   f"replace the oldest undelivered ones, or wait in memory (up to "
                   f"{self.held_max_bytes // MiB} MiB) until space returns")
        log.critical("%s", message)
        event = {"state": "begin", "since": _iso(now), "path": str(self.path)}
        self._begin_pending = {"message": message, **event}
        self._callback({"event": "spool_disk_full", "message": message, **event})

    def _write_begin_event(self) -> None:
        """The health alert for the start of a disk-full episode, once any write succeeds."""
        pending, self._begin_pending = self._begin_pending, None
        if pending is not None:
            message = pending.pop("message")
            self._record_event("spool_disk_full", message, pending, callback=False)

    def _maybe_leave_full(self) -> None:
        """Leave the full state once space is really back (one statvfs; the reserve is written
        again first when this process owns the spool)."""
        if self._full_since is None:
            return
        now = self.clock()
        if not self._space_is_back():
            if now - self._full_reminded >= FULL_REMIND_INTERVAL:
                self._full_reminded = now
                log.critical("alert spool disk still full since %s: %d oldest alert(s) dropped, %d held",
                             _iso(self._full_since), self._full_dropped, len(self._held))
            return
        with self._state_lock:
            since, self._full_since = self._full_since, None
        if since is None:
            return
        if self._begin_pending is not None:
            self._write_begin_event()
        info = {"state": "end", "since": _iso(since), "seconds": round(now - since, 1),
                "dropped_oldest": self._full_dropped, "dropped_held": self._full_held_dropped,
                "path": str(self.path)}
        message = (f"alert spool disk space is back after {now - since:.0f} s: {self._full_dropped} oldest "
                   f"alert(s) were dropped to make room, {self._full_held_dropped} new alert(s) were "
                   f"dropped from memory")
        log.warning("%s", message)
        self._record_event("spool_disk_full", message, info)

    def maintain(self) -> None:
        """Periodic upkeep (the forwarder calls it): heal a damaged file, commit held alerts,
        leave the full state."""
        if self.damaged_since is not None:
            self.heal_if_due()
        if self._held or self._full_since is not None:
            with self._put_lock:
                if self._held and self.clock() >= self._next_try:
                    self.flush_held()
                else:
                    self._maybe_leave_full()

    def _make_room(self) -> bool:
        """Free the reserve and checkpoint the WAL; True if that may have helped."""
        released = self._release_reserve()
        return self._checkpoint() or released

    def _checkpoint(self) -> bool:
        try:
            with self._in_file():
                    busy, log_frames, done = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return not busy and done == log_frames
        except sqlite3.Error:
            return False

    def _space_is_back(self) -> bool:
        """The full state ends when the reserve is back in place (the owner), or when the volume
        has room again (others): the spool may then grow its file again."""
        if self.owner and self.reserve_target:
            return self._ensure_reserve()
        usage = self._disk_usage()
        return usage is not None and usage.free >= min(MiB, usage.total // 8)

    def _free_pages_bytes(self) -> int:
        """Bytes of free pages inside the spool file: room for new rows without growing it."""
        try:
            with self._in_file():
                n = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        except sqlite3.Error:
            return 0
        return n * self._page_size()

    def _disk_usage(self) -> Any:
        try:
            return shutil.disk_usage(self.path.parent)
        except OSError:
            return None

    def _ensure_reserve(self) -> bool:
        """(Owner) Set aside RESERVE_BYTES (at most 1/RESERVE_FRACTION of the volume) when there is
        room; True when the reserve is in place."""
        if not self.owner or not self.reserve_target:
            return False
        try:
            usage = shutil.disk_usage(self.path.parent)
            want = min(self.reserve_target, usage.total // RESERVE_FRACTION)
            have = self.reserve_path.stat().st_size if self.reserve_path.exists() else 0
            if have >= want:
                self.reserve_bytes = have
                return True
            if usage.free < 2 * (want - have):
                return False
            with open_private(self.reserve_path, "ab", make_parents=False) as fh:
                chunk = b"\0" * 65536
                left = want - have
                while left > 0:
                    left -= fh.write(chunk[:min(left, len(chunk))])
                fh.flush()
                os.fsync(fh.fileno())
            self.reserve_bytes = want
            return True
        except OSError as exc:
            log.debug("cannot set aside the spool reserve: %s", exc)
            try:  # a half-written reserve is still a reserve: keep what is there
                self.reserve_bytes = self.reserve_path.stat().st_size
            except OSError:
                self.reserve_bytes = 0
            return False

    def _release_reserve(self) -> bool:
        if not self.reserve_path.exists():
            return False
        try:
            size = self.reserve_path.stat().st_size
            self.reserve_path.unlink()
        except OSError:
            return False
        self.reserve_bytes = 0
        log.warning("alert spool: disk full, released the %d KiB reserve", size // 1024)
        return size > 0

    # -- reading and confirming ----------------------------------------------------------------

    def fetch(self, limit: int, max_bytes: int | None = None, after: float = BEFORE_EVERY_ROW,
              exclude: Sequence[tuple[int, int]] = (), skip: Collection[int] = (),
              more: list | None = None) -> list[SpooledAlert]:
        """The oldest ``limit`` alerts (at most ``max_bytes`` of bodies, at least one).

        ``exclude`` lists (first, last) row-id ranges already in flight; ``skip`` row ids that
        are settled but not yet confirmed on disk (their acknowledgement waits for space).
        ``more`` (a list): True is appended when rows may be left: the answer stopped at
        ``limit`` or ``max_bytes``, or passed over rows in ``skip`` (which may be due after the
        next send); nothing when it holds every row there was.
        """
        where = "".join(" AND id NOT BETWEEN ? AND ?" for _ in exclude)
        ranges: list = []
        for lo, hi in exclude:
            ranges += [lo, hi]
        top = [0]   # the highest row id this call handed out
        with self._guard("read"):
            try:
                return self._fetch(limit, max_bytes, after, where, ranges, skip, more, top)
            finally:
                # Inside the gate (a heal reads it alone) and under the lock: two fetches at once
                # must not leave it below an id either of them handed out.
                with self._lock:
                    if top[0] > self._max_fetched:
                        self._max_fetched = top[0]

    def _fetch(self, limit: int, max_bytes: int | None, after: int, where: str, ranges: list,
               skip: Collection[int], more: list | None, top: list[int]) -> list[SpooledAlert]:
        out: list[SpooledAlert] = []
        size = 0
        while True:
            rows = self._db.execute(
                f"SELECT id, alert_uuid, created, attempts, body, crc FROM alerts WHERE id > ?{where} "
                f"ORDER BY id LIMIT ?", (after, *ranges, limit)).fetchall()
            for r in rows:
                after = top[0] = r[0]
                if r[0] in skip:
                    if more is not None and not more:
                        more.append(True)
                    continue
                item = _spooled(r)
                size += len(item.body)
                if out and max_bytes is not None and size > max_bytes:
                    if more is not None:
                        more.append(True)
                    return out
                out.append(item)
                if len(out) >= limit:
                    if more is not None:
                        more.append(True)
                    return out
            if len(rows) < limit or not skip:
                return out

    def ack(self, rowids: Sequence[int]) -> int:
        """Delete confirmed alerts; returns how many rows went.

        Raises SpoolFull when the disk cannot take even a small confirmation; ``exc.remaining``
        then lists the row ids still to delete (the ones before it were deleted).
        """
        if not rowids:
            return 0
        rowids = list(rowids)
        try:
            return self._ack(rowids)
        except SpoolFull as exc:
            self._enter_full(str(exc))
            self._make_room()
        gone = 0
        for i, chunk in enumerate(_chunks(rowids, ACK_CHUNK)):
            try:
                gone += self._ack(list(chunk))
            except SpoolFull as exc:
                err = SpoolFull(str(exc))
                err.remaining = rowids[i * ACK_CHUNK:]  # type: ignore[attr-defined]
                err.done = gone  # type: ignore[attr-defined]
                raise err from None
        return gone

    def _ack(self, rowids: list[int]) -> int:
        gone = 0
        # A delete lost to a power cut only means the alert is sent again (at-least-once, the id is the
        # idempotency key), so confirmations skip the fsync; the next FULL commit makes them durable too.
        with self._guard("ack"), self._tx(durable=False):
            for chunk in _chunks(rowids):
                marks = ",".join("?" * len(chunk))
                if _RETURNING:
                    # one statement deletes and reports the sizes
                    sizes = self._db.execute(
                        f"DELETE FROM alerts WHERE id IN ({marks}) RETURNING COALESCE(size, 0)", chunk).fetchall()
                    n, size = len(sizes), sum(r[0] for r in sizes)
                else:
                    n, size = self._db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM alerts WHERE id IN ({marks})", chunk).fetchone()
                    self._db.execute(f"DELETE FROM alerts WHERE id IN ({marks})", chunk)
                self._bump("bytes", -size)
                self._bump("rows", -n)
                gone += n
        return gone

    def mark_failed(self, rowids: Sequence[int], error: str | None) -> None:
        """Count a failed attempt on these rows (kept for status and the dead-letter record)."""
        if not rowids:
            return
        error = repair((error or "")[:500])   # the receiver's text: lone surrogates repaired
        with self._guard("mark failed"), self._tx(durable=False):
            for chunk in _chunks(list(rowids)):
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"UPDATE alerts SET attempts=attempts+1, last_error=? WHERE id IN ({marks})",
                                 [error, *chunk])

    def dead_letter(self, items: Sequence[tuple[int, str, int | None]]) -> int:
        """Move (rowid, reason, http status) rows to the dead_letter table."""
        if not items:
            return 0
        try:
            return self._dead_letter(items)
        except SpoolFull as exc:
            self._enter_full(str(exc))
            if not self._make_room():
                raise
        return self._dead_letter(items)

    def _dead_letter(self, items: Sequence[tuple[int, str, int | None]]) -> int:
        moved = 0
        now = self.clock()
        logged = []
        with self._guard("dead letter"), self._tx():
            for rowid, reason, status in items:
                reason = repair(reason[:1000])   # the receiver's text: lone surrogates repaired
                row = self._db.execute("SELECT COALESCE(size, 0), alert_uuid FROM alerts WHERE id=?",
                                       (rowid,)).fetchone()
                if row is None:
                    continue
                # (COALESCE: a damaged row must still move, whatever its columns now hold)
                self._db.execute(
                    "INSERT INTO dead_letter(alert_uuid, created, moved, attempts, status, reason, body, crc) "
                    "SELECT COALESCE(alert_uuid, ''), COALESCE(created, 0), ?, COALESCE(attempts, 0) + 1, ?, ?, "
                    "COALESCE(body, x''), crc FROM alerts WHERE id=?",
                    (now, status, reason, rowid))
                self._db.execute("DELETE FROM alerts WHERE id=?", (rowid,))
                self._bump("bytes", -row[0])
                self._bump("rows", -1)
                moved += 1
                logged.append((status, row[1], reason))
            self._bump("dead_lettered", moved)
            self._trim_dead()
        for status, uid, reason in logged:
            log.error("alert %s moved to dead-letter (HTTP %s): %s", uid, status, reason)
        return moved

    def _insert_dead(self, rows: Sequence[tuple], now: float) -> None:
        """(uuid, created, attempts, status, reason, body, crc) rows into dead_letter (in a tx)."""
        for uid, created, attempts, status, reason, body, crc in rows:
            self._db.execute(
                "INSERT INTO dead_letter(alert_uuid, created, moved, attempts, status, reason, body, crc) "
                "VALUES (?,?,?,?,?,?,?,?)", (uid, created, now, attempts, status, reason[:1000], body, crc))
        self._trim_dead()

    def _trim_dead(self) -> None:
        n = self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        if n > self.dead_max_rows:
            self._db.execute("DELETE FROM dead_letter WHERE id IN (SELECT id FROM dead_letter ORDER BY id LIMIT ?)",
                             (n - self.dead_max_rows,))
            self._bump("dead_dropped", n - self.dead_max_rows)

    def dead_letters(self, limit: int = 100) -> list[dict]:
        """The newest dead-lettered alerts: id, reason, status, attempts, moved, alert."""
        with self._guard("read"):
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
        with self._guard("requeue"), self._tx():
            where, args = "", []
            if alert_ids is not None:
                if not alert_ids:
                    return 0
                # ids as stored (an id from a command line may hold lone surrogates: repaired
                # like the stored ones, never taken for damage)
                where, args = (f"WHERE alert_uuid IN ({','.join('?' * len(alert_ids))})",
                               [repair(str(i)) for i in alert_ids])
            rows = self._db.execute(f"SELECT id, alert_uuid, body, crc FROM dead_letter {where} ORDER BY id",
                                    args).fetchall()
            n = 0
            for rowid, uid, body, crc in rows:
                cur = self._db.execute("INSERT OR IGNORE INTO alerts(alert_uuid, created, size, body, crc) "
                                       "VALUES (?,?,?,?,?)", (uid, now, len(body), body, crc))
                if cur.rowcount == 1:
                    self._bump("bytes", len(body))
                    self._bump("rows", 1)
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
        """Wake threads blocked in wait_for_data() or wait_for_volume() (used on shutdown)."""
        with self._new_data:
            self._volume.notify_all()
        self._notify()

    @property
    def put_volume(self) -> tuple[int, int]:
        """(rows, body bytes) this process has committed so far (a running count)."""
        return self._put_rows, self._put_bytes

    def wait_for_volume(self, since: tuple[int, int], rows: int, nbytes: int, timeout: float,
                        done: Callable[[], bool] = lambda: False) -> bool:
        """Block until this process committed at least ``rows`` rows or ``nbytes`` body bytes
        after ``since`` (a :attr:`put_volume`), ``done()`` is true (checked when wake() is
        called), or ``timeout`` seconds passed. True when the volume was reached. The commits
        before that wake no one."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._volume:
            goal = (since[0] + max(1, rows), since[1] + max(1, nbytes))
            try:
                while True:
                    if self._put_rows >= goal[0] or self._put_bytes >= goal[1]:
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0 or done():
                        return False
                    self._volume_goal = goal
                    self._volume.wait(left)
            finally:
                self._volume_goal = None

    @property
    def write_mark(self) -> int:
        return self._seq

    @property
    def disk_full(self) -> bool:
        return self._full_since is not None

    def depth(self) -> int:
        """How many alerts wait for delivery (on disk)."""
        with self._guard("read"):
            return self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]

    def oldest_created(self) -> float | None:
        """Spool time of the oldest waiting alert."""
        with self._guard("read"):
            row = self._db.execute("SELECT created FROM alerts ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    def ids(self) -> list[str]:
        """Ids of the waiting alerts, oldest first."""
        with self._guard("read"):
            return [r[0] for r in self._db.execute("SELECT alert_uuid FROM alerts ORDER BY id")]

    def fault_stats(self) -> dict:
        """The fault state, from memory only (never touches the disk): plain flags and counters."""
        return {"disk_full": self._full_since is not None,
                "disk_full_since": _iso(self._full_since) if self._full_since is not None else None,
                "disk_full_episodes": self._full_episodes,
                "disk_full_error": self._last_full_error if self._full_since is not None else None,
                "held": len(self._held), "held_bytes": self._held_bytes, "storing": self._storing,
                "held_dropped": self._full_held_dropped + self._damage_held_dropped,
                "heals": self.heals,
                "last_heal": dict(self.last_heal) if self.last_heal else None,
                "reserve_bytes": self.reserve_bytes,
                "salvaged_at_start": dict(self.salvage) if self.salvage else None,
                "damaged": self.damaged_since is not None,
                "wal_lost_at_start": bool(self.wal_lost)}

    def stats(self) -> dict:
        """Counters for health reporting (persisted across restarts) and the fault state.

        Never raises: when the file cannot be read, the fault state is returned with ``error``.
        """
        try:
            with self._guard("read"):   # first: a heal this use makes happens before the state is read
                counters = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
                depth = self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
                dead = self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        except SpoolError as exc:
            out = self.fault_stats()
            out.update(error=str(exc), max_bytes=self.max_bytes, max_age_s=self.max_age)
            return out
        out = self.fault_stats()
        out.update({"depth": depth, "bytes": counters.get("bytes", 0), "max_bytes": self.max_bytes,
                    "max_age_s": self.max_age, "dead_letter_depth": dead,
                    **{k: counters.get(k, 0) for k in _PUBLIC_COUNTERS}})
        out["dropped"] += self._unsaved_dropped
        out["dropped_disk_full"] += self._unsaved_dropped_full
        return out

    def health_events(self, limit: int = 50) -> list[dict]:
        """The newest health events: kind, first/last time, count, detail."""
        with self._guard("read"):
            rows = self._db.execute("SELECT kind, first_ts, last_ts, count, detail FROM health "
                                    "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{"kind": k, "first": f, "last": l, "count": c, "detail": _DEC.decode(d)}
                for k, f, l, c, d in rows]

    def close(self) -> None:
        """Commit held alerts if possible, mark a clean stop (owner), checkpoint and close."""
        if self._closed:
            return
        if self._held:
            if self.damaged_since is not None:
                self.heal()        # last chance for the alerts waiting on a heal: not when due, now
            # the last chance for held alerts too: a write now, not when the next retry is due
            # (a stop within FULL_RETRY_INTERVAL of a refused write lost them with space back)
            self._next_try = 0.0
            self.flush_held()
            if self._held:
                log.error("alert spool: %d alert(s) held in memory (a full disk or a damaged spool) are "
                          "lost at shutdown", len(self._held))
        if self.owner:
            try:
                with self._guard("close"), self._tx():
                    self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', 1)")
            except SpoolError as exc:
                log.warning("cannot mark the spool closed cleanly: %s", exc)
        with self._lock:
            conns, self._conns = self._conns, []
            self._closed = True
        for i, conn in enumerate(conns):
            try:
                if i == len(conns) - 1:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _spooled(r: tuple) -> SpooledAlert:
    """A fetched row as a SpooledAlert, whatever the (possibly damaged) file holds in its columns:
    a value of the wrong type becomes one that fails the row's checks, never an exception."""
    rowid, uid, created, attempts, body, crc = r
    if not isinstance(body, bytes):
        body = str(body).encode("utf-8", "replace")
    return SpooledAlert(rowid, uid if isinstance(uid, str) else str(uid),
                        float(created) if isinstance(created, (int, float)) else 0.0,
                        attempts if isinstance(attempts, int) else 0, body,
                        crc if isinstance(crc, int) else -1 if crc is not None else None)


def _foreign_schema(exc: SpoolError) -> bool:
    """An error opening a file whose tables are not the spool's (a view named alerts, a column
    missing, a value of the wrong type): treated like damage, since the spool is input too."""
    cause = exc.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    return isinstance(cause, sqlite3.Error) and (code is None or code & 0xFF in (1, 19, 20))


def _alert_values(v: list) -> tuple | None:
    """(uuid, created, attempts, kind, body, crc) when ``v`` has the shape of an alerts row."""
    if len(v) not in (9, 10) or v[0] is not None:
        return None
    uid, created, attempts, _next, last_error, kind, size, body = v[1:9]
    crc = v[9] if len(v) == 10 else None
    if not (isinstance(uid, str) and isinstance(created, (int, float)) and isinstance(attempts, int)
            and isinstance(kind, str) and isinstance(size, int) and isinstance(body, bytes)
            and (last_error is None or isinstance(last_error, str)) and (crc is None or isinstance(crc, int))):
        return None
    return uid, float(created), attempts, kind, body, crc


def _dead_values(v: list) -> tuple | None:
    """(uuid, created, attempts, status, reason, body, crc) for a dead_letter-shaped row."""
    if len(v) not in (8, 9) or v[0] is not None:
        return None
    uid, created, _moved, attempts, status, reason, body = v[1:8]
    crc = v[8] if len(v) == 9 else None
    if not (isinstance(uid, str) and isinstance(created, (int, float)) and isinstance(attempts, int)
            and (status is None or isinstance(status, int)) and isinstance(reason, str)
            and isinstance(body, bytes) and (crc is None or isinstance(crc, int))):
        return None
    return uid, float(created), attempts, status, reason, body, crc


# DELETE ... RETURNING: SQLite 3.35 and later (the Python 3.11 builds for Windows bundle 3.39+).
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error) on this thread's connection; nests.

    A failed COMMIT (a full disk) may leave SQLite inside the transaction or may have rolled it
    back already: either way the connection leaves here outside any transaction, with
    ``synchronous`` back at FULL. (A spool opened with ``sync="normal"`` is NORMAL throughout:
    nothing to switch.)
    """

    def __init__(self, spool: Spool, durable: bool = True) -> None:
        self.spool = spool
        self.durable = durable or spool.sync != "full"
        self.outer = False
        self.limit = 0

    def __enter__(self) -> None:
        db = self.spool._db
        if not db.in_transaction:
            self.outer = True
            if not self.durable:  # per-connection setting; only between transactions
                db.execute("PRAGMA synchronous=NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                self.limit = self.spool._page_limit() if self.spool._full_since is not None else 0
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self._restore(db)
                raise
            self.spool._local.deferred = []

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if not self.outer:
            return
        db = self.spool._db
        local = self.spool._local
        deferred, local.deferred = getattr(local, "deferred", None) or [], None
        committed = False
        try:
            if exc_type is None:
                if self.limit and db.execute("PRAGMA page_count").fetchone()[0] > self.limit:
                    # While the disk is full, committed pages past the end of the database file
                    # would sit in the WAL with no room to checkpoint them into: the WAL could
                    # never start over, and then not even a confirmation could be written.
                    raise SpoolFull(f"spool {self.spool.path}: the transaction needs more pages than "
                                    f"the spool file has (disk full)")
                db.execute("COMMIT")
                committed = True
        finally:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._restore(db)
        if committed:
            for fn in deferred:
                fn()

    def _restore(self, db: sqlite3.Connection) -> None:
        if not self.durable:
            try:
                db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error:
                pass
