"""A bounded table of processes keyed by (pid, create time or sequence number).

It answers "who is the parent of this new process" with the parent's image and command line,
even after the parent exited (entries stay ``exit_ttl`` seconds after their stop), and refuses a
candidate whose lifetime cannot contain the child's start: a parent that started after the child,
or exited before it, is a recycled PID (reference §6, "Guard against PID reuse").

Times are FILETIMEs (100 ns ticks since 1601-01-01 UTC), the unit of Kernel-Process CreateTime.
"""
from __future__ import annotations

import subprocess
import sys
import time
from collections import deque
from typing import Any, Callable, Iterator

from ..events import MAX_CHAIN

FILETIME_UNIX_EPOCH = 116_444_736_000_000_000
TICKS_PER_SECOND = 10_000_000

# psutil's create_time is exact on Windows (GetProcessTimes, the same clock as ETW); on Linux it
# is boot time (1 s resolution) plus clock ticks, so compare loosely there.
DEFAULT_TOLERANCE = 0.01 if sys.platform == "win32" else 1.5
MAX_GENERATIONS = 4   # per pid: enough for reuse while an old entry waits for expiry


MAX_TEXT = 32768      # characters of a saved image, command line or user


def _check_row(row: Any) -> tuple | None:
    """A saved row as typed values, or None when it is not the documented shape."""
    if not isinstance(row, list) or len(row) != 10:
        return None
    pid, ct, seq, ppid, pseq, image, cmd, user, exited, exit_time = row

    def num(v: Any, optional: bool = True) -> bool:
        if v is None:
            return optional
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64

    def text(v: Any) -> bool:
        return v is None or (isinstance(v, str) and len(v) <= MAX_TEXT)
    if not (num(pid, False) and num(ct) and num(seq) and num(ppid) and num(pseq) and num(exit_time)
            and text(image) and text(cmd) and text(user) and isinstance(exited, bool)):
        return None
    return pid, ct, seq, ppid, pseq, image, cmd, user, exited, exit_time


def filetime_from_unix(seconds: float) -> int:
    """Unix seconds -> FILETIME ticks."""
    return int(round(seconds * TICKS_PER_SECOND)) + FILETIME_UNIX_EPOCH


def unix_from_filetime(ft: int) -> float:
    """FILETIME ticks -> Unix seconds."""
    return (ft - FILETIME_UNIX_EPOCH) / TICKS_PER_SECOND


def join_cmdline(args: list[str]) -> str:
    """psutil's argument list as one command line (Windows quoting rules on Windows)."""
    if sys.platform == "win32":
        return subprocess.list2cmdline(args)
    return " ".join(args)


class ProcessInfo:
    """One process generation: what its children need to know about it."""

    __slots__ = ("pid", "create_time", "seq", "ppid", "parent_seq", "image", "command_line",
                 "user", "exit_time", "exited", "source", "_key", "_removed")

    def __init__(self, pid: int, create_time: int | None = None, seq: int | None = None,
                 ppid: int | None = None, parent_seq: int | None = None, image: str | None = None,
                 command_line: str | None = None, user: str | None = None, source: str = "etw") -> None:
        self.pid = pid
        self.create_time = create_time
        self.seq = seq
        self.ppid = ppid
        self.parent_seq = parent_seq
        self.image = image
        self.command_line = command_line
        self.user = user
        self.exit_time: int | None = None
        self.exited = False
        self.source = source
        self._key = 0
        self._removed = False

    def __repr__(self) -> str:
        return (f"ProcessInfo(pid={self.pid}, create_time={self.create_time}, seq={self.seq}, "
                f"image={self.image!r}, exited={self.exited})")


class ProcessTable:
    """Process generations by pid; bounded; exited entries expire after ``exit_ttl`` seconds."""

    def __init__(self, max_entries: int = 65536, exit_ttl: float = 300.0,
                 create_tolerance: float = DEFAULT_TOLERANCE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.exit_ttl = exit_ttl
        self.tolerance = int(create_tolerance * TICKS_PER_SECOND)
        self._clock = clock
        self._by_pid: dict[int, list[ProcessInfo]] = {}
        self._order: dict[int, ProcessInfo] = {}        # insertion order, for eviction
        self._exits: deque[tuple[float, ProcessInfo]] = deque()
        self._next_key = 1
        self.added = 0
        self.merged = 0
        self.evicted = 0
        self.expired = 0
        self.parent_hits = 0
        self.parent_misses = 0
        self.reuse_rejected = 0
        self.revived = 0
        self.restored = 0

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[ProcessInfo]:
        return iter(list(self._order.values()))

    # -- identity ----------------------------------------------------------------------------

    def _same(self, e: ProcessInfo, create_time: int | None, seq: int | None) -> bool:
        if seq is not None and e.seq is not None:
            return e.seq == seq
        if create_time is not None and e.create_time is not None:
            return abs(e.create_time - create_time) <= self.tolerance
        return not e.exited   # identity unknown on one side: the live generation

    def get(self, pid: int, create_time: int | None = None, seq: int | None = None) -> ProcessInfo | None:
        """The entry for this process generation, or None."""
        gens = self._by_pid.get(pid)
        if not gens:
            return None
        for e in reversed(gens):
            if self._same(e, create_time, seq):
                return e
        return None

    # -- updates -----------------------------------------------------------------------------

    def add(self, pid: int, create_time: int | None = None, seq: int | None = None,
            ppid: int | None = None, parent_seq: int | None = None, image: str | None = None,
            command_line: str | None = None, user: str | None = None, source: str = "etw") -> ProcessInfo:
        """Record a process (a start, a rundown or a seed); merges into the same generation."""
        self.expire()
        # A restored entry is exited until confirmed; ``get`` matches an exited generation by
        # sequence number or create time, which is what a rundown or seed brings.
        e = self.get(pid, create_time, seq)
        if e is not None:
            self.merged += 1
            if e.source == "saved" and source != "saved":
                # A process restored from the saved tree that a rundown or seed shows running.
                e.source = source
                if e.exited and e.exit_time is None:
                    e.exited = False
                    self.revived += 1
            if e.create_time is None:
                e.create_time = create_time
            if e.seq is None:
                e.seq = seq
            if e.ppid is None:
                e.ppid = ppid
            if e.parent_seq is None:
                e.parent_seq = parent_seq
            # ETW's full image path wins over a seed's; values never get erased.
            if image and (e.image is None or source == "etw"):
                e.image = image
            if command_line and e.command_line is None:
                e.command_line = command_line
            if user and e.user is None:
                e.user = user
            return e
        e = ProcessInfo(pid, create_time, seq, ppid, parent_seq, image, command_line, user, source)
        gens = self._by_pid.get(pid)
        if gens is None:
            gens = self._by_pid[pid] = []
        else:
            # A new generation for this pid: the previous live one must have exited, at the
            # latest when this one started (its stop event was lost).
            for old in gens:
                if not old.exited:
                    self._mark_exited(old, create_time)
            while len(gens) >= MAX_GENERATIONS:
                self._remove(gens[0])
        gens.append(e)
        e._key = self._next_key
        self._next_key += 1
        self._order[e._key] = e
        self.added += 1
        while len(self._order) > self.max_entries:
            self._evict_one()
        return e

    def exited(self, pid: int, create_time: int | None = None, seq: int | None = None,
               exit_time: int | None = None) -> bool:
        """Mark a process stopped (it stays for ``exit_ttl``); False when it was not in the table."""
        e = self.get(pid, create_time, seq)
        if e is None or e.exited:
            return False
        self._mark_exited(e, exit_time)
        self.expire()
        return True

    def _mark_exited(self, e: ProcessInfo, exit_time: int | None) -> None:
        e.exited = True
        e.exit_time = exit_time
        self._exits.append((self._clock() + self.exit_ttl, e))

    def _remove(self, e: ProcessInfo) -> None:
        if e._removed:
            return
        e._removed = True
        self._order.pop(e._key, None)
        gens = self._by_pid.get(e.pid)
        if gens is not None:
            try:
                gens.remove(e)
            except ValueError:
                pass
            if not gens:
                del self._by_pid[e.pid]

    def _evict_one(self) -> None:
        # Oldest exited entry first; only then the oldest entry overall.
        while self._exits:
            _, e = self._exits.popleft()
            if not e._removed:
                self._remove(e)
                self.evicted += 1
                return
        oldest = next(iter(self._order.values()))
        self._remove(oldest)
        self.evicted += 1

    def expire(self, now: float | None = None) -> int:
        """Drop exited entries whose time is up; the number dropped."""
        now = self._clock() if now is None else now
        n = 0
        exits = self._exits
        while exits and exits[0][0] <= now:
            _, e = exits.popleft()
            if not e._removed and e.exited:     # (a revived entry stays)
                self._remove(e)
                n += 1
        self.expired += n
        return n

    # -- parent lookup -----------------------------------------------------------------------

    def parent_of(self, ppid: int | None, child_create_time: int | None = None,
                  parent_seq: int | None = None) -> ProcessInfo | None:
        """The parent generation of a child started at ``child_create_time``; None if unknown or reused."""
        found, rejected = self._find(ppid, child_create_time, parent_seq)
        if found is not None:
            self.parent_hits += 1
            return found
        if rejected:
            self.reuse_rejected += 1
        self.parent_misses += 1
        return None

    def alive_at(self, pid: int | None, when: int | None) -> ProcessInfo | None:
        """The generation of ``pid`` whose lifetime can contain ``when`` (no counters touched)."""
        return self._find(pid, when, None)[0]

    def ancestors(self, entry: ProcessInfo, max_depth: int = MAX_CHAIN) -> list[ProcessInfo]:
        """The parent, grandparent, ... of ``entry`` (nearest first), at most ``max_depth`` of them.

        Each step applies the same lifetime test as ``parent_of`` against the *child's* start (an
        ancestor that exited before its child started is a recycled pid and ends the chain), a
        process seen twice ends it too (a pid loop), so the walk is bounded for any table.
        """
        out: list[ProcessInfo] = []
        seen = {id(entry)}
        child = entry
        while len(out) < max_depth:
            parent, _ = self._find(child.ppid, child.create_time, child.parent_seq)
            if parent is None or id(parent) in seen:
                break
            seen.add(id(parent))
            out.append(parent)
            child = parent
        return out

    def _find(self, ppid: int | None, child_create_time: int | None,
              parent_seq: int | None) -> tuple[ProcessInfo | None, bool]:
        if ppid is None:
            return None, False
        gens = self._by_pid.get(ppid)
        if not gens:
            return None, False
        if parent_seq:
            for e in reversed(gens):
                if e.seq == parent_seq:
                    return e, False
        rejected = False
        tol = self.tolerance
        for e in reversed(gens):
            if parent_seq and e.seq is not None:
                rejected = True          # a different generation (its sequence number differs)
                continue
            if child_create_time is not None:
                if e.create_time is not None and e.create_time > child_create_time + tol:
                    rejected = True      # started after the child: the pid was recycled
                    continue
                if e.exit_time is not None and e.exit_time < child_create_time - tol:
                    rejected = True      # gone before the child started, and every older
                    break                # generation of this pid was gone even earlier
            return e, False
        return None, rejected

    # -- saving across restarts ----------------------------------------------------------------

    def snapshot(self) -> list[list]:
        """Every entry as ``[pid, create_time, seq, ppid, parent_seq, image, command_line, user,
        exited, exit_time]``, oldest first (what ``restore`` takes)."""
        return [[e.pid, e.create_time, e.seq, e.ppid, e.parent_seq, e.image, e.command_line, e.user,
                 e.exited, e.exit_time] for e in self._order.values()]

    def restore(self, rows: list) -> tuple[int, int]:
        """Add saved entries (``snapshot`` rows) as exited generations that expire like any
        exited entry unless a rundown or seed shows them running; (restored, malformed).

        Run it before the rundown and the psutil seed. A row that is not exactly the documented
        shape, or whose strings exceed ``MAX_TEXT``, is counted and skipped.
        """
        ok = bad = 0
        for row in rows:
            fields = _check_row(row)
            if fields is None:
                bad += 1
                continue
            pid, ct, seq, ppid, pseq, image, cmd, user, exited, exit_time = fields
            if self.get(pid, ct, seq) is not None:
                continue
            e = self.add(pid, ct, seq, ppid, pseq, image, cmd, user, source="saved")
            if not e.exited:
                self._mark_exited(e, exit_time if exited else None)
            ok += 1
        self.restored += ok
        return ok, bad

    # -- seeding -----------------------------------------------------------------------------

    def seed_from_psutil(self, psutil_module: Any = None, join: Callable[[list], str] | None = None) -> int:
        """Add every running process psutil can see (image, command line, user); the number added."""
        if psutil_module is None:
            import psutil as psutil_module
        if join is None:
            join = join_cmdline
        n = 0
        attrs = ["pid", "ppid", "create_time", "exe", "name", "cmdline", "username"]
        for proc in psutil_module.process_iter(attrs):
            info = proc.info
            ct = info.get("create_time")
            args = info.get("cmdline")
            self.add(info["pid"], filetime_from_unix(ct) if ct else None, None, info.get("ppid"),
                     None, info.get("exe") or info.get("name") or None,
                     join(args) if args else None, info.get("username") or None, source="psutil")
            n += 1
        return n

    def stats(self) -> dict:
        """Counters as plain data."""
        return {"entries": len(self._order), "added": self.added, "merged": self.merged,
                "evicted": self.evicted, "expired": self.expired, "parent_hits": self.parent_hits,
                "parent_misses": self.parent_misses, "reuse_rejected": self.reuse_rejected,
                "restored": self.restored, "revived": self.revived}
