"""Replay as a live source: recorded events fed through the running pipeline.

Used by ``etw-sensor run`` on any OS (and by the demo and the pipeline bench).
Unlike ETW, a replay waits for room in the queue instead of dropping events,
unless ``block=False``.
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from typing import Callable, Sequence

from ..events import ProcessEvent
from . import MAX_LINE_BYTES, ReadStats, read_paths

log = logging.getLogger(__name__)


def _event_time(ev: ProcessEvent) -> float | None:
    t = ev.get("UtcTime")
    if not isinstance(t, str):
        return None
    try:
        # UtcTime is UTC: pace by it as such (a naive timestamp() would read local time)
        return _dt.datetime.strptime(t[:23], "%Y-%m-%d %H:%M:%S.%f").replace(
            tzinfo=_dt.timezone.utc).timestamp()
    except ValueError:
        return None


class ReplaySource:
    """Reads recordings on a thread and emits their events.

    ``speed``: None replays as fast as the pipeline takes events; a number paces
    the replay by the events' ``UtcTime`` (1.0 = real time, 10 = ten times faster).
    ``preload`` reads everything into memory first (benchmarks exclude parsing).
    """

    name = "replay"

    def __init__(self, paths: Sequence[str], speed: float | None = None, loop: int = 1,
                 block: bool = True, preload: bool = False, max_line_bytes: int = MAX_LINE_BYTES):
        self.paths = list(paths)
        self.max_line_bytes = max_line_bytes
        self.speed = speed
        self.loop = max(1, int(loop))
        self.blocking = block
        self.preload = preload
        self.read_stats = ReadStats()
        self.emitted = 0
        self.dropped = 0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events: list[ProcessEvent] | None = None
        if preload:
            self._events = list(read_paths(self.paths, self.read_stats, max_line_bytes))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, emit: Callable[[ProcessEvent], bool]) -> None:
        self._thread = threading.Thread(target=self._run, args=(emit,), name="replay", daemon=True)
        self._thread.start()

    def _iter(self):
        for _ in range(self.loop):
            if self._events is not None:
                # copies, so lazily filled fields of one pass do not leak into the next
                for ev in self._events:
                    yield ProcessEvent.copy_of(ev)
            else:
                yield from read_paths(self.paths, self.read_stats, self.max_line_bytes)

    def _run(self, emit: Callable[[ProcessEvent], bool]) -> None:
        try:
            first_event = first_wall = None
            for ev in self._iter():
                if self._stop.is_set():
                    break
                if self.speed:
                    t = _event_time(ev)
                    if t is not None:
                        if first_event is None:
                            first_event, first_wall = t, time.monotonic()
                        delay = (t - first_event) / self.speed - (time.monotonic() - first_wall)
                        if delay > 0 and self._stop.wait(min(delay, 60.0)):
                            break
                if emit(ev):
                    self.emitted += 1
                else:
                    self.dropped += 1
        except Exception as exc:  # a replay must never take the sensor down
            log.error("replay source failed: %s: %s", type(exc).__name__, exc)
        finally:
            for e in self.read_stats.errors:
                log.warning("replay input error: %s", e)
            more = self.read_stats.error_count - len(self.read_stats.errors)
            if more > 0:
                log.warning("replay: %d more input error(s) not listed", more)
            self.finished.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stats(self) -> dict:
        s = self.read_stats.as_dict()
        s.update(kind="replay", emitted=self.emitted, dropped=self.dropped,
                 finished=self.finished.is_set())
        return s
