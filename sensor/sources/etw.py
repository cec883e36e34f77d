"""The ETW process-start source, platform-neutral part.

``EtwProcessor`` turns raw records (decoded by ``etw_decode``) into ProcessEvents: NT device
paths become DOS paths, the process table supplies ParentImage / ParentCommandLine, psutil
back-fills what Kernel-Process lacks, and the optional system-logger session's Process records
(exact command line, user SID) are joined to Kernel-Process starts by pid and create time.  Each
event's ``origin`` says where every field came from.

``EtwSource`` is what the pipeline runs: ``start(emit)``, ``stop()``, ``stats()``, ``alive``.  The
ETW consumer threads only copy each record into a bounded queue (never blocking); one worker
thread decodes, enriches and calls ``emit``.  The Windows calls live in ``etw_windows``.

A raw record is the tuple ``(source, event_id, version, opcode, header_pid, header_tid,
timestamp, header_flags, payload)`` (``etw_raw``); ``timestamp`` is the EVENT_HEADER TimeStamp (a
FILETIME: ProcessTrace converts it to system time unless PROCESS_TRACE_MODE_RAW_TIMESTAMP is set).
"""
from __future__ import annotations

import functools
import logging

import platform
import queue
import select
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ..enrich.backfill import Backfiller
from ..enrich.devices import DeviceMapper
from ..enrich.process_table import ProcessTable, TICKS_PER_SECOND, unix_from_filetime
from ..events import (
    ORIGIN_ETW,
    ORIGIN_MISSING,
    ORIGIN_PROCESS_TABLE,
    ORIGIN_SYSTEM_LOGGER,
    CHAIN_SEPARATOR,
    ProcessEvent,
)
from . import etw_manifest as m
from .etw_decode import PayloadDecoder
from .etw_session import SessionManager, SessionSpec, SessionTicker, system_logger_spec
from .base import SourceUnavailable
from .etw_raw import (
    EVENT_HEADER_FLAG_32_BIT_HEADER,
    RT_LOST_BUFFER,
    RT_LOST_EVENT,
    RT_LOST_FILE,
    SRC_KERNEL_PROCESS,
    SRC_LOST,
    SRC_SYSTEM_LOGGER,
)
from .records import integrity_name

# Well-known account SIDs, so User is readable without a lookup (and on any OS).
WELL_KNOWN_SIDS = {
    "S-1-5-18": "NT AUTHORITY\\SYSTEM",
    "S-1-5-19": "NT AUTHORITY\\LOCAL SERVICE",
    "S-1-5-20": "NT AUTHORITY\\NETWORK SERVICE",
}

# Fields this source is responsible for; the ones it could not fill are marked "missing".
OWN_FIELDS = ("Image", "ProcessId", "ParentProcessId", "UtcTime", "CommandLine", "User",
              "CurrentDirectory", "IntegrityLevel", "ParentImage", "ParentCommandLine")
# Lineage fields: filled from the table when the ancestors are known (not marked "missing").
LINEAGE_FIELDS = ("GrandParentImage", "GrandParentCommandLine", "GrandParentProcessId",
                  "ParentChain", "CreatorProcessId", "CreatorImage")


@functools.lru_cache(maxsize=4096)   # an ancestor's create time recurs in every child's ProcessTree
def utc_time(ft: int | None) -> str | None:
    """A FILETIME as Sysmon's UtcTime (``2024-01-02 03:04:05.678``), None when out of range."""
    if not ft:
        return None
    try:
        dt = datetime.fromtimestamp(unix_from_filetime(ft), timezone.utc)
    except (OverflowError, ValueError, OSError):
        return None
    # strftime's %Y pads to four digits only from year 1000 on; a FILETIME starts in 1601
    return "%04d-%02d-%02d %02d:%02d:%02d.%03d" % (dt.year, dt.month, dt.day, dt.hour, dt.minute,
                                                  dt.second, dt.microsecond // 1000)


class SidResolver:
    """SID -> account name without waiting: LookupAccountSid can block on a domain controller.

    ``name(sid)`` answers from the cache at once.  A SID not yet resolved is handed (once) to a
    resolver thread and answered as None meanwhile, so the event carries the SID; the events
    after the lookup get the name.  The cache holds ``max_entries`` SIDs (cleared when full),
    the queue ``max_pending`` SIDs (more are dropped and counted, and asked again later)."""

    def __init__(self, resolve: Callable[[str], str | None], max_entries: int = 4096,
                 max_pending: int = 1024, threaded: bool = True) -> None:
        self._resolve = resolve
        self.max_entries = max_entries
        self._cache: dict[str, str | None] = {}
        self._queued: set[str] = set()
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._threaded = threaded
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False             # stop(): the thread ends after its current lookup
        self.c: Counter = Counter()

    def name(self, sid: str) -> str | None:
        """The account name when known, else None (the lookup runs elsewhere)."""
        try:
            return self._cache[sid]
        except KeyError:
            pass
        if not self._threaded:
            self._store(sid, self._lookup(sid))
            return self._cache.get(sid)
        with self._lock:
            if sid in self._queued:
                self.c["pending_hits"] += 1
                return None
            try:
                self._q.put_nowait(sid)
            except queue.Full:
                self.c["queue_full"] += 1
                return None
            self._queued.add(sid)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="etw-sid-resolver", daemon=True)
                self._thread.start()
        self.c["queued"] += 1
        return None

    def _lookup(self, sid: str) -> str | None:
        try:
            return self._resolve(sid)
        except Exception:  # noqa: BLE001 - an unresolvable SID stays a SID
            self.c["errors"] += 1
            return None

    def _store(self, sid: str, name: str | None) -> None:
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[sid] = name
        self.c["resolved"] += 1

    def _run(self) -> None:
        while True:
            sid = self._q.get()
            if sid is None or self._stopping:
                return
            name = self._lookup(sid)
            with self._lock:
                self._store(sid, name)
                self._queued.discard(sid)

    def stop(self) -> None:
        """End the resolver thread (pending lookups are dropped). The flag, then the marker: a
        full queue has no room for the marker, and then the thread sees the flag at its next
        item (there is one: the queue is full)."""
        t = self._thread
        if t is not None:
            self._stopping = True
            try:
                self._q.put_nowait(None)
            except queue.Full:
                pass
            t.join(1.0)
            self._thread = None

    def stats(self) -> dict:
        """Counters as plain data."""
        out = dict(self.c)
        out["cached"] = len(self._cache)
        out["pending"] = len(self._queued)
        return out


class Waker:
    """``threading.Event``'s ``set`` / ``is_set`` / ``clear`` / ``wait`` on a connected socket pair.

    The ETW consumer wakes the worker from inside a record callback, holding the GIL. With an
    Event the woken worker runs at once (the scheduler favours a thread that slept) and then
    blocks again on the GIL until the callback returns: two wake-ups of the worker and a
    preempted consumer per start. Here ``set`` wakes the worker with a one-byte ``send``, which
    runs with the GIL released, and the worker waits in ``select`` (GIL released too): the
    woken worker takes the GIL without waiting for it. ``socket.socketpair`` is a Unix socket
    pair on POSIX and a loopback TCP pair on Windows (where ``select`` takes sockets only).

    At most one byte is pending: ``set`` sends only when the flag was clear, ``clear`` drops the
    flag and reads what is pending. The flag is set before the byte is sent and the worker clears
    it before it takes the queued records, so a record queued before ``set`` is never missed (at
    worst one spurious wake-up, which finds the queue empty).
    """

    __slots__ = ("_r", "_w", "_flag", "_event", "fallback")

    def __init__(self) -> None:
        self._r: socket.socket | None = None
        self._w: socket.socket | None = None
        self._flag = False
        self._event: threading.Event | None = None   # where no socket pair can be made
        self.fallback: str | None = None             # why (the error), for the source's stats

    def open(self) -> None:
        """Make the socket pair (before the worker starts; ``set`` before it only sets the flag).
        Where the system refuses one, a ``threading.Event`` does the job (one wake-up more)."""
        if self._r is not None or self._event is not None:
            return
        try:
            r, w = socket.socketpair()
        except OSError as exc:
            self.fallback = f"socket pair refused ({exc}); the worker is woken through an Event"
            logging.getLogger("sensor.etw").warning("ETW worker wake-up: %s", self.fallback)
            self._event = threading.Event()
            if self._flag:
                self._event.set()
            return
        r.setblocking(False)
        w.setblocking(False)
        self._r, self._w = r, w
        if self._flag:
            w.send(b"\0")

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            if self._event is not None:
                self._event.set()
                return
            w = self._w
            if w is not None:
                try:
                    w.send(b"\0")
                except OSError:    # closed, or (never with one pending byte) full: the flag stands
                    pass

    def clear(self) -> None:
        self._flag = False
        if self._event is not None:
            self._event.clear()
            return
        r = self._r
        if r is not None:
            try:
                r.recv(64)
            except OSError:        # nothing pending (or closed)
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``set`` or ``timeout`` seconds; True when set."""
        if self._flag:
            return True
        if self._event is not None:
            self._event.wait(timeout)
            return self._flag
        try:
            select.select((self._r,), (), (), timeout)
        except (OSError, ValueError, TypeError):   # not open or closed: no spinning
            time.sleep(0.1 if timeout is None else min(timeout, 0.1))
        return self._flag

    def close(self) -> None:
        """Close the socket pair (the flag keeps working; ``open`` makes a new pair)."""
        r, w = self._r, self._w
        self._r = self._w = None
        for sock in (r, w):
            if sock is not None:
                sock.close()


class _Held:
    __slots__ = ("deadline", "event", "entry", "create_time", "ppid")

    def __init__(self, deadline, event, entry, create_time, ppid):
        self.deadline = deadline
        self.event = event
        self.entry = entry
        self.create_time = create_time
        self.ppid = ppid


class EtwProcessor:
    """Raw ETW records in, enriched ProcessEvents out (single-threaded; never raises)."""

    def __init__(self, table: ProcessTable | None = None, backfiller: Backfiller | None = None,
                 device_mapper: Callable[[str | None], str | None] | None = None,
                 sid_resolver: Callable[[str], str | None] | None = None,
                 computer: str | None = None, join_wait: float = 0.0, join_window: float = 2.0,
                 sl_keep: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table if table is not None else ProcessTable()
        self.backfiller = backfiller
        self.map_path = device_mapper if device_mapper is not None else DeviceMapper()
        self.sids = SidResolver(sid_resolver) if sid_resolver is not None else None
        self.computer = computer
        self.join_wait = join_wait
        self.join_window = int(join_window * TICKS_PER_SECOND)
        self.sl_keep = sl_keep
        self._clock = clock
        self.decoder = PayloadDecoder()
        self._held: dict[int, _Held] = {}                 # pid -> start waiting for its SL record
        self._sl_pending: dict[int, tuple[float, int, dict]] = {}   # pid -> (expiry, ts, fields)
        self.c: Counter = Counter(dict.fromkeys(
            ("records", "events", "starts", "stops", "rundowns", "rt_lost_events", "rt_lost_buffers",
             "rt_lost_files", "internal_errors"), 0))

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, raw: tuple) -> list[ProcessEvent]:
        """Process one raw record; the events now ready to emit."""
        self.c["records"] += 1
        try:
            src, event_id, version, opcode, hpid, _htid, ts, hflags, payload = raw
            if src == SRC_KERNEL_PROCESS:
                if event_id == m.PROCESS_STOP:
                    # Only the table needs a stop: its identity and exit time, no field dict.
                    ids = self.decoder.process_stop(version, payload)
                    if ids is not None:
                        self.c["stops"] += 1
                        self.table.exited(*ids)
                    return []
                fields = self.decoder.kernel_process(event_id, version, payload)
                if fields is None:
                    return []
                return self.on_kernel_process(event_id, fields, hpid)
            if src == SRC_SYSTEM_LOGGER:
                psize = 4 if hflags & EVENT_HEADER_FLAG_32_BIT_HEADER else 8
                fields = self.decoder.system_process(opcode, version, payload, psize)
                if fields is None:
                    return []
                return self.on_system_logger(opcode, fields, ts)
            if src == SRC_LOST:
                key = {RT_LOST_EVENT: "rt_lost_events", RT_LOST_BUFFER: "rt_lost_buffers",
                       RT_LOST_FILE: "rt_lost_files"}.get(opcode, "rt_lost_other")
                self.c[key] += 1
                return []
            self.c["unknown_records"] += 1
            return []
        except Exception:  # noqa: BLE001 - one bad record must not stop the source
            self.c["internal_errors"] += 1
            return []

    def on_kernel_process(self, event_id: int, fields: dict,
                          header_pid: int | None = None) -> list[ProcessEvent]:
        """A decoded Kernel-Process record; ``header_pid`` is its EVENT_HEADER ProcessId."""
        if event_id == m.PROCESS_START:
            self.c["starts"] += 1
            return self.on_start(fields, header_pid)
        if event_id == m.PROCESS_STOP:
            self.c["stops"] += 1
            self.table.exited(fields["ProcessID"], fields.get("CreateTime"),
                              fields.get("ProcessSequenceNumber"), fields.get("ExitTime"))
            return []
        if event_id == m.PROCESS_RUNDOWN:
            self.c["rundowns"] += 1
            self.table.add(fields["ProcessID"], fields.get("CreateTime") or None,
                           fields.get("ProcessSequenceNumber"), fields.get("ParentProcessID"),
                           fields.get("ParentProcessSequenceNumber"),
                           self._map(fields.get("ImageName")), source="etw")
            return []
        self.c["other_events"] += 1
        return []

    def _map(self, path: str | None) -> str | None:
        try:
            return self.map_path(path)
        except Exception:  # noqa: BLE001
            self.c["path_map_errors"] += 1
            return path

    # -- starts ------------------------------------------------------------------------------

    def on_start(self, f: dict, header_pid: int | None = None) -> list[ProcessEvent]:
        """A ProcessStart: build, enrich and (unless waiting for its system-logger record) emit it.

        ``header_pid`` is the ETW header's ProcessId: Kernel-Process logs a start in the context of
        the process that called CreateProcess, so it is the real creator even when the declared
        parent (``ParentProcessID``) was set with PROC_THREAD_ATTRIBUTE_PARENT_PROCESS.
        """
        get = f.get
        pid = f["ProcessID"]
        ct = get("CreateTime") or None
        seq = get("ProcessSequenceNumber")
        ppid = get("ParentProcessID")
        pseq = get("ParentProcessSequenceNumber")
        image = self._map(get("ImageName"))
        utc = utc_time(ct)
        ev = ProcessEvent()
        # (one dict each, filled at once: this runs cache-cold for every start on a quiet host)
        ev.origin = origin = {
            "Image": ORIGIN_MISSING if image is None else ORIGIN_ETW,
            "ProcessId": ORIGIN_MISSING if pid is None else ORIGIN_ETW,
            "ParentProcessId": ORIGIN_MISSING if ppid is None else ORIGIN_ETW,
            "UtcTime": ORIGIN_MISSING if utc is None else ORIGIN_ETW}
        ev["Image"] = image
        ev["ProcessId"] = pid
        ev["ParentProcessId"] = ppid
        ev["UtcTime"] = utc
        if self.computer:
            ev["Computer"] = self.computer
        label = get("MandatoryLabel")
        if label:
            ev["IntegrityLevel"] = integrity_name(label)
            origin["IntegrityLevel"] = ORIGIN_ETW
        table = self.table
        parent = table.parent_of(ppid, ct, pseq)
        if parent is not None:
            if parent.image:
                ev["ParentImage"] = parent.image
                origin["ParentImage"] = ORIGIN_PROCESS_TABLE
            if parent.command_line:
                ev["ParentCommandLine"] = parent.command_line
                origin["ParentCommandLine"] = ORIGIN_PROCESS_TABLE
        if header_pid is not None:
            ev["CreatorProcessId"] = header_pid
            origin["CreatorProcessId"] = ORIGIN_ETW
            if header_pid == ppid and parent is not None:
                creator = parent
            else:
                creator = table.alive_at(header_pid, ct)
            if creator is not None and creator.image:
                ev["CreatorImage"] = creator.image
                origin["CreatorImage"] = ORIGIN_PROCESS_TABLE
        entry = self.table.add(pid, ct, seq, ppid, pseq, image, source="etw")
        if parent is not None:
            self._lineage(ev, origin, entry)
        joined = self._take_sl(pid, ppid, ct)
        if joined is not None:
            self._apply_sl(ev, origin, joined)
        if self.backfiller is not None:
            self.backfiller.fill(ev, pid, ct, origin)
        self._remember(entry, ev)
        if joined is None and self.join_wait > 0:
            old = self._held.pop(pid, None)
            out = [self._finish(old.event, "join_timeouts")] if old is not None else []
            self._held[pid] = _Held(self._clock() + self.join_wait, ev, entry, ct, ppid)
            return out
        return [self._finish(ev)]

    def _lineage(self, ev: ProcessEvent, origin: dict, entry) -> None:
        """GrandParent* fields, ParentChain and ProcessTree from the table's ancestors of ``entry``."""
        chain = self.table.ancestors(entry)
        if len(chain) >= 2:
            gp = chain[1]
            ev["GrandParentProcessId"] = gp.pid
            origin["GrandParentProcessId"] = ORIGIN_PROCESS_TABLE
            if gp.image:
                ev["GrandParentImage"] = gp.image
                origin["GrandParentImage"] = ORIGIN_PROCESS_TABLE
            if gp.command_line:
                ev["GrandParentCommandLine"] = gp.command_line
                origin["GrandParentCommandLine"] = ORIGIN_PROCESS_TABLE
        chain.reverse()                      # the oldest ancestor first
        ev["ParentChain"] = CHAIN_SEPARATOR.join(a.image or "?" for a in chain)
        origin["ParentChain"] = ORIGIN_PROCESS_TABLE
        ev["ProcessTree"] = [{"ProcessId": a.pid, "Image": a.image, "UtcTime": utc_time(a.create_time)}
                             for a in chain]

    @staticmethod
    def _remember(entry, ev: ProcessEvent) -> None:
        # Children look these up after this process is gone.
        if ev.get("CommandLine"):
            entry.command_line = ev["CommandLine"]
        if ev.get("User"):
            entry.user = ev["User"]

    def _finish(self, ev: ProcessEvent, counter: str = "") -> ProcessEvent:
        if counter:
            self.c[counter] += 1
        origin = ev.origin
        get = ev.get
        for k in OWN_FIELDS:
            if get(k) is None:
                origin[k] = ORIGIN_MISSING
            elif k not in origin:
                origin[k] = ORIGIN_ETW
        self.c["events"] += 1
        return ev

    # -- system logger -----------------------------------------------------------------------

    def on_system_logger(self, opcode: int, f: dict, ts: int) -> list[ProcessEvent]:
        """A decoded kernel-logger Process record (command line and user SID)."""
        pid = f.get("ProcessId")
        if opcode == m.SL_START:
            self.c["sl_starts"] += 1
            held = self._held.get(pid)
            if held is not None and self._matches(held.ppid, held.create_time, f, ts):
                del self._held[pid]
                self._apply_sl(held.event, held.event.origin, f)
                self._remember(held.entry, held.event)
                self.c["sl_joined"] += 1
                return [self._finish(held.event)]
            entry = self.table.get(pid)
            if entry is not None and entry.source == "etw" and self._matches(entry.ppid, entry.create_time, f, ts):
                # Its start was already emitted: keep the exact values for its children.
                self._update_entry(entry, f)
                self.c["sl_late"] += 1
                return []
            now = self._clock()
            self._sl_pending[pid] = (now + self.sl_keep, ts, f)
            self._expire_sl(now)
            return []
        if opcode == m.SL_DC_START:
            self.c["sl_rundowns"] += 1
            entry = self.table.get(pid)
            if entry is None:
                entry = self.table.add(pid, None, None, f.get("ParentId"), None,
                                       f.get("ImageFileName") or None, source="system_logger")
            self._update_entry(entry, f)
            return []
        self.c["sl_other"] += 1
        return []

    def _update_entry(self, entry, f: dict) -> None:
        cmd = f.get("CommandLine")
        if cmd:
            entry.command_line = cmd
        user = self._user(f.get("UserSID"))
        if user:
            entry.user = user

    def _matches(self, ppid, create_time, f: dict, ts: int) -> bool:
        if ppid is not None and f.get("ParentId") is not None and ppid != f.get("ParentId"):
            return False
        if create_time and ts:
            return abs(ts - create_time) <= self.join_window
        return True

    def _take_sl(self, pid: int, ppid, create_time) -> dict | None:
        hit = self._sl_pending.get(pid)
        if hit is None:
            return None
        _, ts, f = hit
        if not self._matches(ppid, create_time, f, ts):
            return None
        del self._sl_pending[pid]
        self.c["sl_joined"] += 1
        return f

    def _apply_sl(self, ev: ProcessEvent, origin: dict, f: dict) -> None:
        cmd = f.get("CommandLine")
        if cmd:
            if ev.get("CommandLine") is not None and ev["CommandLine"] != cmd:
                self.c["sl_replaced_backfill"] += 1
            ev["CommandLine"] = cmd
            origin["CommandLine"] = ORIGIN_SYSTEM_LOGGER
        user = self._user(f.get("UserSID"))
        if user:
            ev["User"] = user
            origin["User"] = ORIGIN_SYSTEM_LOGGER

    def _user(self, sid: str | None) -> str | None:
        if not sid:
            return None
        name = WELL_KNOWN_SIDS.get(sid)
        if name:
            return name
        if self.sids is not None:
            name = self.sids.name(sid)
        return name or sid

    def _expire_sl(self, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        pending = self._sl_pending
        while pending:
            pid, (expiry, _, _) = next(iter(pending.items()))
            if expiry > now:
                break
            del pending[pid]
            self.c["sl_unmatched"] += 1

    # -- time-outs ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the oldest held start must be emitted (monotonic seconds), or None."""
        for h in self._held.values():
            return h.deadline
        return None

    def due(self, now: float | None = None) -> list[ProcessEvent]:
        """Held starts whose wait for a system-logger record ended (emitted as they are)."""
        now = self._clock() if now is None else now
        out = []
        held = self._held
        while held:
            pid, h = next(iter(held.items()))
            if h.deadline > now:
                break
            del held[pid]
            out.append(self._finish(h.event, "join_timeouts"))
        if self._sl_pending:
            self._expire_sl()
        return out

    def drain(self) -> list[ProcessEvent]:
        """Every held start (at stop)."""
        out = [self._finish(h.event, "join_timeouts") for h in self._held.values()]
        self._held.clear()
        return out

    def stats(self) -> dict:
        """Counters as plain data."""
        out = dict(self.c)
        out.update(self.decoder.stats())
        out["held"] = len(self._held)
        out["sl_pending"] = len(self._sl_pending)
        out["table"] = self.table.stats()
        if self.backfiller is not None:
            out["backfill"] = self.backfiller.stats()
        if hasattr(self.map_path, "stats"):
            out["devices"] = self.map_path.stats()
        if self.sids is not None:
            out["sids"] = self.sids.stats()
        return out


# -- the source -------------------------------------------------------------------------------

@dataclass
class EtwConfig:
    """Settings of the ETW source (defaults per the reference, §4)."""

    session: SessionSpec = field(default_factory=SessionSpec)
    system_logger: bool = False
    logger: SessionSpec = field(default_factory=system_logger_spec)
    queue_size: int = 65536          # raw records waiting for the worker
    join_wait: float = 0.05          # how long a start waits for its system-logger record
    table_max: int = 65536
    exit_ttl: float = 300.0
    seed_from_psutil: bool = True
    backfill: bool = True
    watchdog_interval: float = 10.0
    computer: str | None = None
    tree_save_interval: float = 300.0  # seconds between saves of the process table (with a store)


class EtwSource:
    """Process starts from ETW for the pipeline: ``start(emit)``, ``stop()``, ``stats()``, ``alive``."""

    name = "etw"
    # The pipeline may hand this source its batch runner (``start(emit, batches=...)``): the
    # worker then enriches and matches the events of the records it took on its own thread,
    # with no second queue and no second thread per event.
    accepts_batches = True
    batch_records = 512              # raw records taken from the queue for one batch at most
    wake_records = 256               # records queued without a wake-up at most

    def __init__(self, config: EtwConfig | None = None, backend: Any = None,
                 processor: EtwProcessor | None = None, helpers: dict | None = None,
                 psutil_module: Any = None,
                 platform: Callable[[], tuple[Any, dict]] | None = None,
                 tap: Callable[[tuple], None] | None = None,
                 tree_store: Any = None) -> None:
        self.config = config or EtwConfig()
        # Saves the process table on stop and every ``tree_save_interval`` and gives it back at
        # start (``load() -> rows``, ``save(rows)``; the daemon's TreeStore); None: not saved.
        self.tree_store = tree_store
        self.tree_restored = 0
        self.tree_malformed = 0
        # Sees every raw record on the worker thread before it is processed (``capture``).
        self._tap = tap
        self.tap_errors = 0
        self.config.session.validate()
        self._backend = backend
        self._helpers = helpers
        # Where the Windows parts come from when not given: the daemon passes
        # ``etw_windows.platform_parts`` on Windows; this module never imports it.
        self._platform = platform
        self._psutil = psutil_module
        self.processor = processor
        # The records waiting for the worker. The consumer callbacks append and wake the worker
        # only for a record that may become an event (a Kernel-Process start), an in-band loss
        # record, or a queue that holds ``wake_records``: a stop, a rundown or a system-logger
        # record waits for the next wake-up (the worker then takes every record, in order), so a
        # quiet host costs one wake-up per start, not one per record.
        self._dq: deque = deque()
        self._wake = Waker()                   # its sockets: opened by start(), closed by stop()
        self._handed = [0]                  # records the sinks queued (read by the session ticker)
        self._drops = [0, 0]              # per session: records dropped because the queue was full
        self.managers: list[SessionManager] = []
        self._ticker: SessionTicker | None = None
        self._worker: threading.Thread | None = None
        self._emit: Callable[[ProcessEvent], bool] | None = None
        self._batches: Any = None
        self.queue_high_water = 0           # most records waiting at once (measured by the worker)
        self._stopping = threading.Event()
        self.emitted = 0
        self.queue_drops = 0
        self.emit_errors = 0
        self.seeded = 0
        self.seed_error: str | None = None
        self.logger_error: str | None = None
        self.last_record = 0.0

    # -- wiring ------------------------------------------------------------------------------

    def _windows_parts(self) -> tuple[Any, dict]:
        backend, helpers = self._backend, self._helpers
        if backend is None or helpers is None:
            if self._platform is None:
                raise SourceUnavailable("the ETW source needs Windows (use replay on other systems)")
            p_backend, p_helpers = self._platform()
            backend = backend if backend is not None else p_backend
            helpers = helpers if helpers is not None else p_helpers
        return backend, helpers

    def _build_processor(self, helpers: dict) -> EtwProcessor:
        cfg = self.config
        table = ProcessTable(max_entries=cfg.table_max, exit_ttl=cfg.exit_ttl)
        backfiller = None
        if cfg.backfill:
            backfiller = Backfiller(psutil_module=self._psutil,
                                    cmdline_reader=helpers.get("cmdline_reader"),
                                    integrity_reader=helpers.get("integrity_reader"))
        mapper = DeviceMapper(helpers.get("device_loader"),
                              system_root=helpers.get("system_root") or "C:\\Windows")
        return EtwProcessor(table, backfiller, mapper, helpers.get("sid_resolver"),
                            cfg.computer or platform.node() or None,
                            join_wait=cfg.join_wait if cfg.system_logger else 0.0)

    def _make_sink(self, slot: int) -> Callable[[tuple], None]:
        # Runs on the ETW consumer thread for every record: no blocking, no allocation beyond
        # the record tuple the backend built.
        dq = self._dq
        append = dq.append
        wake = self._wake
        is_set = wake.is_set
        cap = self.config.queue_size
        defer = max(1, min(self.wake_records, cap))
        drops = self._drops
        # Counted for the session ticker, which force-flushes only while records arrive.
        # (Two consumer threads may race on the count: it only has to change, not be exact.)
        handed = self._handed
        kp, lost, start = SRC_KERNEL_PROCESS, SRC_LOST, m.PROCESS_START

        def sink(raw: tuple) -> None:
            n = len(dq)
            if n >= cap:
                drops[slot] += 1
                return
            append(raw)
            handed[0] += 1
            if not is_set() and ((raw[1] == start and raw[0] == kp) or raw[0] == lost or n + 1 >= defer):
                wake.set()
        return sink

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, emit: Callable[[ProcessEvent], bool], batches: Any = None) -> None:
        """Open the session(s) and start delivering events to ``emit`` (False = dropped downstream).

        With ``batches`` (the pipeline: ``run_batch(events)``, ``commit_due()``,
        ``commit_if_due()``) the worker hands it the events of every record waiting in the queue
        as one batch, on its own thread, instead of calling ``emit`` per event. The consumer
        callbacks still only queue records: a slow matcher fills the record queue (its drops
        are counted as ``callback_drops``), it never blocks ETW."""
        if self._worker is not None:
            raise RuntimeError("source already started")
        backend, helpers = self._windows_parts()
        if self.processor is None:
            self.processor = self._build_processor(helpers)
        self._emit = emit
        self._batches = batches
        self._stopping.clear()
        self._wake.open()                      # (a record fed before the start wakes the worker)
        if self.tree_store is not None:
            # Before the seed and the rundown, which confirm the entries still running.
            try:
                self.tree_restored, self.tree_malformed = self.processor.table.restore(self.tree_store.load())
            except Exception as exc:  # noqa: BLE001 - lineage only; the source still starts
                logging.getLogger("sensor.etw").warning("process tree not restored: %s", exc)
        if self.config.seed_from_psutil:
            try:
                self.seeded = self.processor.table.seed_from_psutil(self._psutil)
            except Exception as exc:  # noqa: BLE001 - a partial table only costs parent links
                self.seed_error = str(exc)
        self._worker = threading.Thread(target=self._work, name="etw-worker", daemon=True)
        self._worker.start()
        specs = [self.config.session] + ([self.config.logger] if self.config.system_logger else [])
        self.managers = []
        try:
            for slot, spec in enumerate(specs):
                mgr = SessionManager(backend, spec, self._make_sink(slot),
                                     watchdog_interval=self.config.watchdog_interval)
                if slot == 0:
                    mgr.start()
                else:
                    # The system logger only sharpens command lines; without it the
                    # sensor still runs on Kernel-Process plus back-fill.
                    try:
                        mgr.start()
                    except Exception as exc:  # noqa: BLE001
                        self.logger_error = f"system-logger session not started: {exc}"
                        logging.getLogger("sensor.etw").warning(self.logger_error)
                        self.processor.join_wait = 0.0
                        continue
                self.managers.append(mgr)
        except BaseException:
            self.stop()
            raise
        handed = self._handed
        self._ticker = SessionTicker(self.managers, arrivals=lambda: handed[0])
        self._ticker.start()

    def feed(self, raw: tuple) -> None:
        """Hand one raw record to the worker and wake it (replay, tests)."""
        self._dq.append(raw)
        self._wake.set()

    def _save_tree(self) -> None:
        if self.tree_store is None or self.processor is None:
            return
        try:
            self.tree_store.save(self.processor.table.snapshot())
        except Exception as exc:  # noqa: BLE001 - the store logs its own failures
            logging.getLogger("sensor.etw").warning("process tree not saved: %s", exc)

    def _work(self) -> None:
        proc = self.processor
        handle = proc.handle
        dq = self._dq
        popleft = dq.popleft
        wake = self._wake
        interval = self.config.tree_save_interval
        next_save = time.monotonic() + interval
        batches = self._batches
        limit = max(1, self.batch_records)
        stop = False
        while not stop:
            if self.tree_store is not None and time.monotonic() >= next_save:
                self._save_tree()              # on this thread: the table is never shared
                next_save = time.monotonic() + interval
            deadline = proc.next_deadline()
            if batches is not None:
                due = batches.commit_due()     # alerts waiting for their transaction
                if due is not None and (deadline is None or due < deadline):
                    deadline = due
            # Nothing held: block until a start (or the stop marker) is queued.
            wake.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            wake.clear()                       # before taking: a record queued after it wakes again
            if len(dq) > self.queue_high_water:
                self.queue_high_water = len(dq)
            out: list[ProcessEvent] = []
            deliver = self._deliver if batches is None else out.append
            n = 0
            taken = len(dq)
            if taken:
                self.last_record = time.monotonic()   # once per wake-up, not per record
            tap = self._tap
            # (inline, no call per record: at a few starts per second every record runs cold)
            for _ in range(taken):             # every record queued when woken, in order
                raw = popleft()
                if raw is _STOP:
                    stop = True
                    break
                if tap is not None:
                    self._tapped(raw)
                evs = handle(raw)
                if evs:
                    if batches is None:
                        for ev in evs:
                            deliver(ev)
                    else:
                        out += evs
                n += 1
                if batches is not None and n >= limit:
                    if out:
                        self._run(out)         # a long backlog: batches of ``limit`` records
                    out = []
                    deliver = out.append
                    n = 0
            if deadline is not None:
                for ev in proc.due():
                    deliver(ev)
            if batches is not None:
                if out:
                    self._run(out)
                batches.commit_if_due()
        rest = proc.drain()
        if batches is None:
            for ev in rest:
                self._deliver(ev)
        elif rest:
            self._run(rest)
        self._save_tree()

    def _tapped(self, raw: tuple) -> None:
        try:
            self._tap(raw)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - counted; the record is still processed
            self.tap_errors += 1

    def _run(self, events: list[ProcessEvent]) -> None:
        try:
            self._batches.run_batch(events)
        except Exception:  # noqa: BLE001 - a failing consumer must not kill the source
            self.emit_errors += len(events)
            return
        self.emitted += len(events)

    def _deliver(self, ev: ProcessEvent) -> None:
        try:
            ok = self._emit(ev)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a failing consumer must not kill the source
            self.emit_errors += 1
            return
        if ok is False:
            self.queue_drops += 1
        else:
            self.emitted += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sessions first (no new records), then let the worker finish what is queued."""
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        for mgr in self.managers:
            mgr.stop()
        if self._worker is not None:
            self._dq.append(_STOP)
            self._wake.set()
            self._worker.join(timeout)
            if not self._worker.is_alive():
                self._wake.close()             # a worker stuck past the timeout keeps its sockets
            self._worker = None
        if self.processor is not None and self.processor.sids is not None:
            self.processor.sids.stop()

    @property
    def alive(self) -> bool:
        """True while the worker runs and every session is up (a watchdog restarts them)."""
        w, t = self._worker, self._ticker
        return bool(w is not None and w.is_alive() and t is not None and t.alive and self.managers
                    and all(mgr.alive for mgr in self.managers))

    def stats(self) -> dict:
        """Everything a status page or a watchdog needs, as plain data."""
        proc = self.processor.stats() if self.processor is not None else {}
        sessions = [mgr.stats() for mgr in self.managers]
        return {
            "alive": self.alive,
            "records_in": proc.get("records", 0),
            "events": proc.get("events", 0),
            "emitted": self.emitted,
            "queue_drops": self.queue_drops,
            "emit_errors": self.emit_errors,
            "callback_drops": sum(self._drops),
            "queued": len(self._dq),
            "queue_capacity": self.config.queue_size,
            "queue_high_water": self.queue_high_water,
            "decode_errors": proc.get("decode_errors", 0),
            "events_lost": sum(s["events_lost"] for s in sessions),
            "realtime_buffers_lost": sum(s["realtime_buffers_lost"] for s in sessions),
            "rt_lost_events": proc.get("rt_lost_events", 0) + proc.get("rt_lost_buffers", 0)
                              + proc.get("rt_lost_files", 0),
            "restarts": sum(s["restarts"] for s in sessions),
            "start_failures": sum(s["start_failures"] for s in sessions),
            "callback_errors": sum(s["callback_errors"] for s in sessions),
            "tap_errors": self.tap_errors,
            "wake_fallback": self._wake.fallback,
            "seeded": self.seeded,
            "seed_error": self.seed_error,
            "tree_restored": self.tree_restored,
            "tree_malformed": self.tree_malformed,
            **({"tree_store": self.tree_store.stats()} if hasattr(self.tree_store, "stats") else {}),
            "logger_error": self.logger_error,
            "seconds_since_record": (time.monotonic() - self.last_record) if self.last_record else None,
            "sessions": sessions,
            "processor": proc,
        }


_STOP = object()
