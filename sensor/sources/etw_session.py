"""ETW session lifecycle, independent of Windows: start, forced flush, watchdog, lost events, stop.

The calls into ETW go through a *backend* (``sensor.sources.etw_windows.PywintraceBackend`` on
Windows, a fake in the tests), so everything here runs and is tested on Linux.  What it does,
per the reference (§2.3, §2.5, §4):

* a session name fixed per sensor instance (``instance_session_name``: the configured base name
  and a hash of the data folder); a stale session of that name (a crashed run of this instance)
  is stopped first, and two instances never stop each other's session;
* the provider is enabled, then a capture-state request asks for ProcessRundown events;
* a forced flush every ``flush_interval`` seconds, next to ETW's own FlushTimer (set to the same
  interval in milliseconds);
* a watchdog restarts the session when the consumer thread ended (its ProcessTrace status is
  kept) or the session was stopped from outside (the query fails), with exponential back-off;
  a consumer that ends soon after it started counts as a failed start, so one that fails at
  once is retried with back-off instead of on every check;
* lost events are the deltas of ``EventsLost`` and ``RealTimeBuffersLost`` from session queries,
  including the final counts returned by the stop call.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

KERNEL_PROCESS_GUID = "{22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716}"
WINEVENT_KEYWORD_PROCESS = 0x10
TRACE_LEVEL_INFORMATION = 4
EVENT_TRACE_FLAG_PROCESS = 0x1

DEFAULT_SESSION_NAME = "etw-sensor-kernel-process"
DEFAULT_LOGGER_NAME = "etw-sensor-process-logger"


def instance_session_name(base: str, data_dir: str) -> str:
    """``base`` plus a short hash of the data folder: one name per sensor instance.

    ETW session names are global.  With one fixed name, a second sensor (another data folder)
    would stop the first one's session as stale, and the two would stop each other's session at
    every watchdog pass.  The same instance always computes the same name, so the stale session
    of a crashed run of this instance is still found and stopped."""
    folder = os.path.normcase(os.path.abspath(data_dir)) if data_dir else ""
    digest = hashlib.sha256(folder.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{base}-{digest}"


class SessionError(RuntimeError):
    """An ETW control call failed (the message names the call and the Windows error)."""


class SessionExistsError(SessionError):
    """StartTrace said ERROR_ALREADY_EXISTS (183)."""


@dataclass
class SessionSpec:
    """One ETW session: provider session (Kernel-Process) or private system logger."""

    name: str = DEFAULT_SESSION_NAME
    kind: str = "provider"                     # "provider" | "system_logger"
    provider_guid: str | None = KERNEL_PROCESS_GUID
    level: int = TRACE_LEVEL_INFORMATION
    keywords: int = WINEVENT_KEYWORD_PROCESS   # never 0: 0 means *all* keywords (reference §1.1)
    enable_flags: int = 0                      # system logger: EVENT_TRACE_FLAG_PROCESS
    # Reference §4: 256 KB x 64-128 buffers with a 20 ms forced flush lost nothing in bursts of
    # 1,500-4,000 process starts; 32 KB x 2-24 lost 11-55 %.
    buffer_kb: int = 256
    min_buffers: int = 64
    max_buffers: int = 128
    flush_interval: float = 0.020
    capture_state: bool = True
    no_per_processor_buffering: bool = True    # events in timestamp order (start before stop)

    def validate(self) -> None:
        """Raise ValueError on settings ETW would reject or that defeat the design."""
        if self.kind not in ("provider", "system_logger"):
            raise ValueError(f"session kind must be provider or system_logger, not {self.kind!r}")
        if not self.name or len(self.name) > 1000:
            raise ValueError("session name must be 1..1000 characters")
        if self.kind == "provider" and not self.keywords:
            raise ValueError("keywords must not be 0 (0 enables every Kernel-Process event)")
        if not 0 <= self.keywords < 1 << 64:
            raise ValueError("keywords must fit in 64 bits")
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 0 <= self.level <= 255:
            raise ValueError(f"level must be an integer within 0..255 (a UCHAR), not {self.level!r}")
        if not 4 <= self.buffer_kb <= 16384:
            raise ValueError("buffer_kb must be within 4..16384 (EVENT_TRACE_PROPERTIES.BufferSize)")
        if self.min_buffers < 2 or self.max_buffers < self.min_buffers:
            raise ValueError("need 2 <= min_buffers <= max_buffers")
        if not 0.001 <= self.flush_interval <= 1.0:
            raise ValueError("flush_interval must be within 0.001..1.0 seconds")


def system_logger_spec(name: str = DEFAULT_LOGGER_NAME, **kw: Any) -> SessionSpec:
    """The private system-logger session: kernel Process events with command lines and user SIDs."""
    kw.setdefault("capture_state", False)     # it sends DCStart records for running processes itself
    return SessionSpec(name=name, kind="system_logger", provider_guid=None, keywords=0,
                       enable_flags=EVENT_TRACE_FLAG_PROCESS, **kw)


class Consumer(Protocol):
    """A running ProcessTrace consumer.

    Optional attributes read by the manager: ``status`` (ProcessTrace's return value once it
    returned), ``error`` (why it ended, as text), ``errors`` (``[n]``: records whose callback
    failed). A consumer with an ``on_exit`` attribute calls it (from its own thread) when
    ProcessTrace returns: the manager sets it, and the watchdog then acts at once instead of
    at its next pass."""

    @property
    def alive(self) -> bool: ...

    def close(self, timeout: float = 5.0) -> None: ...


class Backend(Protocol):
    """The ETW control calls a session needs (pywintrace on Windows, a fake in tests)."""

    def stop_session(self, spec: SessionSpec) -> dict | None: ...
    def start_session(self, spec: SessionSpec) -> None: ...
    def enable_provider(self, spec: SessionSpec) -> None: ...
    def capture_state(self, spec: SessionSpec) -> None: ...
    def open_consumer(self, spec: SessionSpec, sink: Callable[[tuple], None]) -> Consumer: ...
    def flush(self, spec: SessionSpec) -> None: ...
    def query(self, spec: SessionSpec) -> dict | None: ...


@dataclass
class LostCounters:
    """Running totals of ETW's loss counters across session restarts."""

    events_lost: int = 0
    realtime_buffers_lost: int = 0
    log_buffers_lost: int = 0
    last: dict = field(default_factory=dict)

    def account(self, props: dict | None) -> None:
        """Add the increase since the last query (a restarted session starts again at 0)."""
        if not props:
            return
        for key, attr in (("EventsLost", "events_lost"), ("RealTimeBuffersLost", "realtime_buffers_lost"),
                          ("LogBuffersLost", "log_buffers_lost")):
            now = int(props.get(key) or 0)
            before = self.last.get(key, 0)
            delta = now - before if now >= before else now
            if delta:
                setattr(self, attr, getattr(self, attr) + delta)
            self.last[key] = now

    def reset_session(self) -> None:
        """A new session: its counters start from zero."""
        self.last = {}


class SessionManager:
    """Start, flush, watch and stop one ETW session through a backend."""

    def __init__(self, backend: Backend, spec: SessionSpec, sink: Callable[[tuple], None],
                 clock: Callable[[], float] = time.monotonic, watchdog_interval: float = 1.0,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 stable_after: float | None = None) -> None:
        spec.validate()
        self.backend = backend
        self.spec = spec
        self.sink = sink
        self._clock = clock
        self.watchdog_interval = watchdog_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # A consumer that ends sooner than this after its start is a failed start.
        self.stable_after = stable_after if stable_after is not None else max(10.0, 5 * watchdog_interval)
        self.consumer: Consumer | None = None
        self._opened_at = 0.0
        self.callback_errors_closed = 0          # callback errors of consumers already closed
        self.consumer_exits: Counter = Counter()  # ProcessTrace return values
        self.running = False            # the session is up and consumed
        self.wanted = False             # start() was called and stop() was not
        self.lost = LostCounters()
        self.stale_stopped = 0
        self.starts = 0
        self.restarts = 0
        self.restart_reasons: Counter = Counter()
        self.start_failures = 0
        self.flushes = 0
        self.flush_errors = 0
        self.query_errors = 0
        self.last_error: str | None = None
        self._next_flush = 0.0
        self._next_check = 0.0
        self._next_retry = 0.0
        self._backoff = backoff_initial
        self._lock = threading.RLock()
        # Called (from the consumer's thread) when a consumer that can tell ended: the ticker
        # sets it to wake itself for a watchdog pass.
        self.on_consumer_exit: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the session; raises SessionError when the first attempt fails (e.g. not admin)."""
        with self._lock:
            self.wanted = True
            self._open()
            now = self._clock()
            self._next_flush = now + self.spec.flush_interval
            self._next_check = now + self.watchdog_interval

    def _open(self) -> None:
        spec, be = self.spec, self.backend
        # A session of our fixed name is a leftover of a crashed run (sessions outlive their
        # process, reference §2.3): stop it, keeping its final loss counts out of ours.
        if be.stop_session(spec) is not None:
            self.stale_stopped += 1
        try:
            be.start_session(spec)
        except SessionExistsError:
            # Rare: ERROR_ALREADY_EXISTS right after a stop (krabsetw#226); stop again, once.
            be.stop_session(spec)
            self.stale_stopped += 1
            be.start_session(spec)
        self.lost.reset_session()
        try:
            if spec.kind == "provider":
                be.enable_provider(spec)
                if spec.capture_state:
                    be.capture_state(spec)
            self.consumer = be.open_consumer(spec, self.sink)
        except BaseException:
            self._stop_quietly()
            raise
        self.running = True
        self.starts += 1
        self._opened_at = self._clock()
        consumer = self.consumer
        if hasattr(consumer, "on_exit"):
            consumer.on_exit = self._consumer_exited
            if not consumer.alive:          # it ended before it could be told whom to call
                self._consumer_exited()

    def _consumer_exited(self) -> None:
        cb = self.on_consumer_exit
        if cb is not None:
            try:
                cb()
            except Exception:  # noqa: BLE001 - never into the consumer's thread
                pass

    def _stop_quietly(self) -> dict | None:
        final = None
        try:
            final = self.backend.stop_session(self.spec)
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"stop: {exc}"
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception as exc:  # noqa: BLE001
                self.last_error = f"close consumer: {exc}"
            errors = getattr(self.consumer, "errors", None)
            if errors:
                self.callback_errors_closed += errors[0]
            self.consumer = None
        self.running = False
        return final

    def stop(self) -> None:
        """Stop the session and its consumer; the final loss counts are accounted."""
        with self._lock:
            self.wanted = False
            if self.running or self.consumer is not None:
                final = self._stop_quietly()
                self.lost.account(final)

    # -- periodic work -----------------------------------------------------------------------

    def tick(self, now: float | None = None, flush: bool = True) -> None:
        """Flush when due (and ``flush``), run the watchdog when due, retry a failed restart
        when due."""
        with self._lock:
            if not self.wanted:
                return
            now = self._clock() if now is None else now
            if not self.running:
                if now >= self._next_retry:
                    self._restart("retry", now)
                return
            if flush and now >= self._next_flush:
                self._next_flush = now + self.spec.flush_interval
                try:
                    self.backend.flush(self.spec)
                    self.flushes += 1
                except Exception as exc:  # noqa: BLE001 - the watchdog decides what a failure means
                    self.flush_errors += 1
                    self.last_error = f"flush: {exc}"
            if now >= self._next_check:
                self._next_check = now + self.watchdog_interval
                self.check(now)

    def due_now(self) -> None:
        """Make the next watchdog pass due at once (its consumer ended)."""
        with self._lock:
            if self.running:
                self._next_check = min(self._next_check, self._clock())

    def next_due(self) -> float | None:
        """When the next watchdog pass or restart retry is due (this manager's clock), None
        when stopped. Forced flushes are not counted: the ticker decides when they are needed."""
        with self._lock:
            if not self.wanted:
                return None
            return self._next_check if self.running else self._next_retry

    def check(self, now: float | None = None) -> str | None:
        """One watchdog pass; the restart reason, or None when the session is healthy."""
        with self._lock:
            if not self.wanted:
                return None
            now = self._clock() if now is None else now
            reason = None
            if self.consumer is None or not self.consumer.alive:
                reason = "consumer_died"
                if self._consumer_failed(now):
                    return reason
            else:
                try:
                    props = self.backend.query(self.spec)
                except Exception as exc:  # noqa: BLE001
                    self.query_errors += 1
                    self.last_error = f"query: {exc}"
                    props = {}
                if props is None:
                    reason = "stopped_externally"
                else:
                    self.lost.account(props)
                    if now - self._opened_at >= self.stable_after:
                        self._backoff = self.backoff_initial
            if reason:
                self._restart(reason, now)
            return reason

    def _consumer_failed(self, now: float) -> bool:
        """Record why the consumer ended; True when it ended so soon after its start that it
        counts as a failed start (the session is stopped and retried after the back-off)."""
        c = self.consumer
        status = getattr(c, "status", None)
        self.consumer_exits[str(status)] += 1
        why = getattr(c, "error", None) or (f"ProcessTrace returned {status}" if status is not None
                                            else "the consumer thread ended")
        self.last_error = f"consumer ended: {why}"
        if now - self._opened_at >= self.stable_after:
            self._backoff = self.backoff_initial      # it ran long enough: restart at once
            return False
        self.restarts += 1
        self.restart_reasons["consumer_died"] += 1
        self.start_failures += 1
        self.lost.account(self._stop_quietly())
        self.last_error = f"consumer ended {now - self._opened_at:.1f} s after its start: {why}"
        self._schedule_retry(now)
        return True

    def _schedule_retry(self, now: float) -> None:
        self.running = False
        self._next_retry = now + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)

    def _restart(self, reason: str, now: float) -> None:
        self.restarts += 1
        self.restart_reasons[reason] += 1
        if self.running or self.consumer is not None:
            self.lost.account(self._stop_quietly())
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - retried with back-off
            self.start_failures += 1
            self.last_error = f"restart ({reason}): {exc}"
            self._schedule_retry(now)
            return
        self._next_flush = now + self.spec.flush_interval
        self._next_check = now + self.watchdog_interval

    @property
    def alive(self) -> bool:
        """True while the session runs and its consumer thread is alive."""
        c = self.consumer
        return bool(self.running and c is not None and c.alive)

    def stats(self) -> dict:
        """Counters as plain data."""
        return {"name": self.spec.name, "kind": self.spec.kind, "alive": self.alive,
                "starts": self.starts, "restarts": self.restarts,
                "restart_reasons": dict(self.restart_reasons), "start_failures": self.start_failures,
                "stale_sessions_stopped": self.stale_stopped, "flushes": self.flushes,
                "flush_errors": self.flush_errors, "query_errors": self.query_errors,
                "events_lost": self.lost.events_lost,
                "realtime_buffers_lost": self.lost.realtime_buffers_lost,
                "log_buffers_lost": self.lost.log_buffers_lost, "last_error": self.last_error,
                "callback_errors": self.callback_errors, "consumer_exits": dict(self.consumer_exits)}

    @property
    def callback_errors(self) -> int:
        """Records whose callback failed, over every consumer this manager opened."""
        errors = getattr(self.consumer, "errors", None) if self.consumer is not None else None
        return self.callback_errors_closed + (errors[0] if errors else 0)


class SessionTicker:
    """The thread behind the forced flushes, the watchdog and the restart retries.

    With ``arrivals`` (a count of the records the consumer callbacks handed over) it
    force-flushes only while records are arriving: it notices them at its next wake-up (the
    watchdog pass), then flushes every ``interval`` while more keep coming and once more after
    the last (the burst's tail), and goes back to waking for the watchdog alone. The latency of
    the first records of a burst is bounded by ETW's own millisecond flush timer
    (``EVENT_TRACE_USE_MS_FLUSH_TIMER``, set to the same interval), so at rest this thread wakes
    once per watchdog interval and never per record. Without ``arrivals`` it flushes every
    ``interval`` (a session whose records it cannot see)."""

    def __init__(self, managers: list[SessionManager], interval: float | None = None,
                 arrivals: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.managers = managers
        # the sessions' own flush interval (a longer one lets ETW hand records over in fewer,
        # larger bursts: fewer wake-ups); 20 ms without a session
        self.interval = interval if interval is not None else min(
            [m.spec.flush_interval for m in managers] or [0.02])
        self.arrivals = arrivals
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()      # set by stop() and by a consumer that ended
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.wakeups = 0
        for m in managers:
            m.on_consumer_exit = self.wake

    def wake(self) -> None:
        """Run a watchdog pass now (a consumer ended), whatever the interval."""
        self._wake.set()

    def _wait(self, timeout: float | None) -> bool:
        """Sleep up to ``timeout`` (None: until woken); True when stopped."""
        if self._wake.wait(timeout):
            self._wake.clear()
            if not self._stop.is_set():
                for m in self.managers:       # a consumer ended: its manager's pass is due now
                    m.due_now()
        return self._stop.is_set()

    def start(self) -> None:
        """Start the ticking thread (at once into a watchdog pass when a consumer already ended
        before it could tell the ticker)."""
        self._stop.clear()
        self._wake.clear()
        if any(m.wanted and not m.alive for m in self.managers):
            self._wake.set()
        self._thread = threading.Thread(target=self._run, name="etw-session-ticker", daemon=True)
        self._thread.start()

    def idle_timeout(self, now: float) -> float | None:
        """Seconds until a manager needs a watchdog pass or a retry (None: none will)."""
        due = [d for d in (m.next_due() for m in self.managers) if d is not None]
        return max(0.0, min(due) - now) if due else None

    def _tick(self, flush: bool) -> None:
        for m in self.managers:
            try:
                m.tick(flush=flush)
            except Exception:  # noqa: BLE001 - the ticker must outlive one bad tick
                self.errors += 1

    def _run(self) -> None:
        arrivals = self.arrivals
        if arrivals is None:
            while not self._wait(self.interval):
                self.wakeups += 1
                self._tick(True)
            return
        seen = arrivals()
        busy = False
        while not self._wait(self.interval if busy else self.idle_timeout(self._clock())):
            self.wakeups += 1
            n = arrivals()
            was_busy, busy, seen = busy, n != seen, n
            self._tick(busy or was_busy)     # the last flush of a burst takes its tail

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        """True while the ticking thread runs."""
        return self._thread is not None and self._thread.is_alive()
