"""Back-fill what a Kernel-Process start lacks (command line, user, directory, integrity) via psutil.

Kernel-Process carries no command line or user (reference §1.3).  Reading them from the live
process races its exit (a ``cmd /c echo`` lives 10-30 ms), so this runs as soon as the start
arrives, and every miss is counted by cause: the process was gone, access was denied, or the pid
already belonged to another process (its create time differs from the event's).
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, Callable

from ..events import ORIGIN_BACKFILL, ORIGIN_MISSING
from .process_table import DEFAULT_TOLERANCE, TICKS_PER_SECOND, filetime_from_unix, join_cmdline

BACKFILL_FIELDS = ("CommandLine", "User", "CurrentDirectory", "IntegrityLevel")


class Backfiller:
    """Fill missing fields of an event from the live process, counting hits and misses."""

    def __init__(self, fields: tuple[str, ...] | None = None, psutil_module: Any = None,
                 cmdline_reader: Callable[[int], str | None] | None = None,
                 integrity_reader: Callable[[int], str | None] | None = None,
                 create_tolerance: float = DEFAULT_TOLERANCE, empty_retries: int = 3,
                 retry_delay: float = 0.002) -> None:
        if psutil_module is None:
            import psutil as psutil_module
        self._ps = psutil_module
        self._cmdline_reader = cmdline_reader
        self._integrity_reader = integrity_reader
        if fields is None:
            # IntegrityLevel needs the token; only when a reader for it was given.
            fields = tuple(f for f in BACKFILL_FIELDS if f != "IntegrityLevel" or integrity_reader)
        self.fields = tuple(fields)
        self.tolerance = int(create_tolerance * TICKS_PER_SECOND)
        self.empty_retries = empty_retries
        self.retry_delay = retry_delay
        self.empty_retried = 0
        self.attempts = 0
        self.hits: Counter = Counter()
        self.denied: Counter = Counter()
        self.gone = 0
        self.reused = 0
        self.errors = 0
        self.complete = 0

    def fill(self, event: Any, pid: int | None, create_time: int | None = None,
             origin: dict | None = None) -> int:
        """Set the missing back-fill fields of ``event`` from process ``pid``; the number filled."""
        if origin is None:
            origin = event.origin if getattr(event, "origin", None) is not None else {}
        want = [f for f in self.fields if event.get(f) is None]
        if not want or pid is None:
            return 0
        self.attempts += 1
        ps = self._ps
        filled = 0
        try:
            proc = ps.Process(pid)
            with proc.oneshot():
                if create_time is not None:
                    ct = filetime_from_unix(proc.create_time())
                    if abs(ct - create_time) > self.tolerance:
                        self.reused += 1
                        _mark_missing(want, origin)
                        return 0
                for name in want:
                    try:
                        value = self._read(proc, name, pid)
                    except ps.AccessDenied:
                        self.denied[name] += 1
                        origin[name] = ORIGIN_MISSING
                        continue
                    if value is None or value == "":
                        origin[name] = ORIGIN_MISSING
                        continue
                    event[name] = value
                    origin[name] = ORIGIN_BACKFILL
                    self.hits[name] += 1
                    filled += 1
        except ps.NoSuchProcess:        # includes ZombieProcess: it exited before we looked
            self.gone += 1
            _mark_missing([f for f in want if event.get(f) is None], origin)
            return filled
        except Exception:  # noqa: BLE001 - a back-fill must never stop the event path
            self.errors += 1
            _mark_missing([f for f in want if event.get(f) is None], origin)
            return filled
        if filled == len(want):
            self.complete += 1
        return filled

    def _read(self, proc: Any, name: str, pid: int) -> Any:
        if name == "CommandLine":
            value = self._read_cmdline(proc, pid)
            # A process caught in the middle of exec has no arguments yet (on Linux the
            # close-on-exec pipe that wakes the parent closes before the new image's argument
            # area is set up): look again a few times, briefly.
            tries = self.empty_retries
            while not value and tries > 0:
                tries -= 1
                self.empty_retried += 1
                time.sleep(self.retry_delay)
                value = self._read_cmdline(proc, pid)
            return value
        if name == "User":
            return proc.username()
        if name == "CurrentDirectory":
            cwd = proc.cwd()
            # Sysmon writes CurrentDirectory with a trailing backslash on Windows.
            if cwd and sys.platform == "win32" and not cwd.endswith("\\"):
                cwd += "\\"
            return cwd
        if name == "IntegrityLevel":
            return self._integrity_reader(pid) if self._integrity_reader else None
        raise KeyError(name)

    def _read_cmdline(self, proc: Any, pid: int) -> str | None:
        if self._cmdline_reader is not None:
            return self._cmdline_reader(pid)
        args = proc.cmdline()
        return join_cmdline(args) if args else None

    def stats(self) -> dict:
        """Counters as plain data."""
        return {"attempts": self.attempts, "empty_retried": self.empty_retried, "complete": self.complete, "hits": dict(self.hits),
                "miss_gone": self.gone, "miss_pid_reused": self.reused,
                "miss_access_denied": dict(self.denied), "errors": self.errors}


def _mark_missing(names, origin: dict) -> None:
    for n in names:
        origin[n] = ORIGIN_MISSING
