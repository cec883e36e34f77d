"""Health: a heartbeat to the log and to a status file, read back by ``etw-sensor status``."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from typing import Callable

log = logging.getLogger("sensor.health")


def write_status(path: str, status: dict) -> None:
    """Write the status file atomically (a reader never sees half a file)."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(status, fh, indent=1, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_status(path: str) -> dict:
    """The last status the running sensor wrote."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def heartbeat_line(s: dict) -> str:
    """One log line with the numbers an operator looks at first."""
    ev, m, sp, dl = s.get("events", {}), s.get("matcher", {}), s.get("spool", {}), s.get("delivery", {})
    pe = s.get("pe_cache", {})
    return (f"heartbeat: {ev.get('in', 0)} events ({ev.get('per_s', 0):.1f}/s), "
            f"etw lost {s.get('etw', {}).get('lost', 0)}, queue drops {ev.get('queue_dropped', 0)}, "
            f"backfill misses {s.get('enrich', {}).get('backfill_missed', 0)}, "
            f"pe hit rate {pe.get('hit_rate', 0):.0%}, matcher {m.get('us_per_event', 0):.2f} us/event, "
            f"alerts {s.get('alerts', {}).get('total', 0)}, spool depth {sp.get('depth', 0)}, "
            f"delivery failures {dl.get('failed', 0)}")


class Heartbeat:
    """Calls ``collect()`` every ``interval`` seconds; logs and writes the status file."""

    def __init__(self, collect: Callable[[], dict], interval: float, status_file: str | None):
        self.collect = collect
        self.interval = interval
        self.status_file = status_file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def beat(self) -> dict:
        status = self.collect()
        status["written_at"] = time.time()
        if self.status_file:
            try:
                write_status(self.status_file, status)
            except OSError as exc:
                log.warning("cannot write status file %s: %s", self.status_file, exc)
        log.info(heartbeat_line(status))
        self.beats += 1
        return status

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
