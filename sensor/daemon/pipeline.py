"""The live pipeline: source → enrich → match → alert → spool → deliver.

Threads are joined by bounded queues.  The source side never blocks the ETW
callback: a full queue drops the event and counts it.  One worker thread
enriches and matches events in batches and writes every alert to the spool
before the forwarder thread tries to deliver it.  ``stop()`` drains the queue
and gives the forwarder a bounded time to empty the spool.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from typing import Any, Callable, Sequence

from .. import __version__
from ..detect.alerts import AlertFactory
from .health import Heartbeat
from ..detect.matcher import create as create_matcher
from ..detect.noise import Exclusions, Throttle
from .queues import BoundedQueue
from ..detect.ir import Rule

log = logging.getLogger("sensor.pipeline")


class Pipeline:
    """Wires a source, the rules, enrichment, noise control, the spool and a forwarder."""

    def __init__(self, *, source, rules: Sequence[Rule], spool=None, forwarder=None,
                 enricher: Callable | None = None, exclusions: Exclusions | None = None,
                 throttle: Throttle | None = None, engine: str | None = None,
                 queue_size: int = 65536, batch_size: int = 512,
                 heartbeat_interval: float = 30.0, status_file: str | None = None,
                 alert_hook: Callable[[dict], None] | None = None, info: dict | None = None):
        self.source = source
        self.rules = list(rules)
        self.matcher = create_matcher(self.rules, engine)
        self.spool = spool
        self.forwarder = forwarder
        self.enricher = enricher
        self.exclusions = exclusions if exclusions else None
        self.throttle = throttle
        self.queue = BoundedQueue(queue_size)
        self.batch_size = batch_size
        self.alert_hook = alert_hook
        self.info = dict(info or {})
        self.make_alert = AlertFactory()
        self.heartbeat = Heartbeat(self.status, heartbeat_interval, status_file) \
            if heartbeat_interval and heartbeat_interval > 0 else None
        # counters (written by the worker thread only)
        self.events_in = 0
        self.events_excluded = 0
        self.enrich_errors = 0
        self.event_errors = 0
        self.match_ns = 0
        self.work_ns = 0
        self.alerts_by_rule: Counter = Counter()
        self.spool_errors = 0
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._started_at = 0.0
        self._last = (0.0, 0)  # (time, events) of the previous status, for the rate

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker, the forwarder, the heartbeat and then the source."""
        self._started_at = time.time()
        self._last = (time.monotonic(), 0)
        self._worker = threading.Thread(target=self._work, name="matcher", daemon=True)
        self._worker.start()
        if self.forwarder is not None:
            self.forwarder.start()
        if self.heartbeat is not None:
            self.heartbeat.start()
        emit = self.queue.put_wait if getattr(self.source, "blocking", False) else self.queue.put
        self.source.start(emit)
        log.info("sensor started: %d rule(s), matcher %s, source %s", len(self.rules),
                 getattr(self.matcher, "engine", "?"), getattr(self.source, "name", "?"))

    def wait_source(self, timeout: float | None = None) -> bool:
        """For finite sources (replay): wait until everything was read and matched."""
        finished = getattr(self.source, "finished", None)
        if finished is None:
            return False
        if not finished.wait(timeout):
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self, drain_timeout: float = 30.0) -> dict:
        """Stop the source, drain the queue, flush the spool; return the final status."""
        try:
            self.source.stop()
        except Exception:
            log.exception("source stop failed")
        deadline = time.monotonic() + drain_timeout
        while self._pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=max(1.0, deadline - time.monotonic()))
        if self.forwarder is not None:
            # Give delivery the rest of the drain budget; what is left stays in the spool
            # and goes out after the next start.
            wait = getattr(self.forwarder, "wait_drained", None)
            if wait is not None:
                wait(max(0.0, deadline - time.monotonic()))
            self.forwarder.stop()
        status = self.status()
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat.beat()  # last word in the status file
        return status

    # -- the worker ------------------------------------------------------------------------
    def _pending(self) -> bool:
        """Events accepted by the queue but not yet fully processed."""
        return self.queue.accepted > self.events_in

    def _work(self) -> None:
        q = self.queue
        while True:
            batch = q.get_batch(self.batch_size, 0.1)
            if not batch:
                if self._stop.is_set():
                    return
                continue
            try:
                self._process(batch)
            except Exception:  # never let one bad event stop the sensor
                log.exception("worker failed on a batch of %d event(s)", len(batch))
                self.events_in += len(batch)

    def _process(self, batch: list) -> None:
        t0 = time.perf_counter_ns()
        match = self.matcher.match
        rules = self.rules
        enrich = self.enricher
        excl = self.exclusions
        throttle = self.throttle
        alerts: list[dict] = []
        mns = 0
        clock = time.perf_counter_ns
        # Every event of the batch is already here: lookups that check a file (the PE
        # cache) check it once for the whole batch.
        scope = getattr(enrich, "batch", None)
        with scope() if scope is not None else contextlib.nullcontext():
            for ev in batch:
                try:
                    mns += self._one(ev, match, rules, enrich, excl, throttle, alerts, clock)
                except Exception:  # one bad event must not cost the others their alerts
                    self.event_errors += 1
                    log.exception("event skipped: processing failed")
        self.events_in += len(batch)
        self.match_ns += mns
        if alerts:
            self._deliver(alerts)
        self.work_ns += time.perf_counter_ns() - t0

    def _one(self, ev, match, rules, enrich, excl, throttle, alerts: list, clock) -> int:
        """Enrich, match and alert one event; returns the ns spent in the matcher."""
        if enrich is not None:
            try:
                enrich(ev)
            except Exception:
                self.enrich_errors += 1
                log.exception("enrichment failed")
        hits = None
        if excl is not None:
            hits = excl.matching(ev)
            if hits and excl.drops_event(hits):
                self.events_excluded += 1
                return 0
        m0 = clock()
        matched = match(ev)
        mns = clock() - m0
        for i in matched:
            rule = rules[i]
            if hits and excl.drops_alert(hits, rule):
                continue
            if throttle is not None and not throttle.allow(rule.id, ev):
                continue
            alert = self.make_alert(rule, ev)
            if self.info:
                alert["sensor"].update(self.info)
            alerts.append(alert)
            self.alerts_by_rule[rule.id] += 1
        return mns

    def _deliver(self, alerts: list[dict]) -> None:
        if self.spool is not None:
            try:
                self.spool.put_many(alerts)
            except Exception:
                # The spool is the durability guarantee: failing to write it is loud.
                self.spool_errors += len(alerts)
                log.exception("SPOOL WRITE FAILED: %d alert(s) not persisted", len(alerts))
        if self.alert_hook is not None:
            for a in alerts:
                try:
                    self.alert_hook(a)
                except Exception:
                    log.exception("alert hook failed")

    # -- health ----------------------------------------------------------------------------
    def status(self) -> dict:
        """Everything the heartbeat reports (see README, "Health")."""
        now = time.monotonic()
        t_prev, n_prev = self._last
        n = self.events_in
        rate = (n - n_prev) / (now - t_prev) if now > t_prev else 0.0
        self._last = (now, n)
        src = _safe(getattr(self.source, "stats", None))
        qs = self.queue.stats()
        status: dict[str, Any] = {
            "sensor": {"version": __version__, "pid": os.getpid(), "started_at": self._started_at,
                       "uptime_s": round(time.time() - self._started_at, 1), **self.info},
            "events": {"in": n, "per_s": round(rate, 1), "excluded": self.events_excluded,
                       # the queue counts what it refused; the ETW callback's own
                       # hand-off queue counts what never reached it
                       "queue_dropped": qs["dropped"] + int(src.get("callback_drops", 0) or 0),
                       "queue_depth": qs["depth"], "queue_capacity": qs["capacity"],
                       "queue_high_water": qs["high_water"], "enrich_errors": self.enrich_errors,
                       "errors": self.event_errors},
            "source": src,
            "etw": _etw_health(src),
            "enrich": _backfill_health(src),
            "matcher": {"engine": getattr(self.matcher, "engine", "?"), "rules": len(self.rules),
                        "us_per_event": round(self.match_ns / n / 1000, 3) if n else 0.0,
                        "pipeline_us_per_event": round(self.work_ns / n / 1000, 3) if n else 0.0},
            "alerts": {"total": sum(self.alerts_by_rule.values()),
                       "by_rule": dict(self.alerts_by_rule.most_common()),
                       "spool_write_failures": self.spool_errors},
            "noise": {},
        }
        pe = _safe(getattr(self.enricher, "stats", None))
        if pe:
            status["pe_cache"] = pe
        if self.exclusions is not None:
            status["noise"]["excluded_events"] = self.exclusions.suppressed_events
            status["noise"]["excluded_alerts"] = dict(self.exclusions.suppressed_alerts)
        if self.throttle is not None:
            status["noise"]["throttled"] = dict(self.throttle.suppressed)
            reports = self.throttle.flush()
            for r in reports:
                log.info("throttle: suppressed %d repeat(s) of rule %s within %.0f s",
                         r["suppressed"], r["rule"], r["window_s"])
        if self.spool is not None:
            status["spool"] = _safe(getattr(self.spool, "stats", None))
        if self.forwarder is not None:
            status["delivery"] = _safe(getattr(self.forwarder, "stats", None))
        return status


def _etw_health(src: dict) -> dict:
    """ETW loss as the heartbeat reports it: provider-side, delivery-side and in-band."""
    out = {k: int(src.get(k, 0) or 0) for k in ("events_lost", "realtime_buffers_lost", "rt_lost_events")}
    out["lost"] = sum(out.values())
    out["restarts"] = int(src.get("restarts", 0) or 0)
    out["alive"] = src.get("alive")
    return out


def _backfill_health(src: dict) -> dict:
    """Back-fill misses (the process was gone, or access was denied) from the ETW source."""
    bf = (src.get("processor") or {}).get("backfill") or {}
    denied = bf.get("miss_access_denied") or {}
    missed = int(bf.get("miss_gone", 0) or 0) + int(bf.get("miss_pid_reused", 0) or 0) + \
        sum(int(v) for v in (denied.values() if isinstance(denied, dict) else [denied]))
    return {"backfill_attempts": int(bf.get("attempts", 0) or 0), "backfill_missed": missed,
            "backfill_missed_gone": int(bf.get("miss_gone", 0) or 0)}


def _safe(fn) -> dict:
    if fn is None:
        return {}
    try:
        return dict(fn())
    except Exception:
        log.exception("stats collection failed")
        return {}
