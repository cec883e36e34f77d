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

import msgspec

from ..detect.alerts import AlertFactory
from .health import (AlertsHealth, BudgetHealth, CorrelationHealth, DeliveryHealth, EnrichHealth,
                     EtwHealth, EventsHealth, Heartbeat, Ledger, MatcherHealth, NoiseHealth,
                     PackHealth, PeCacheHealth, RulesHealth, RulesUpdateHealth, SensorInfo,
                     SpoolHealth, Status, heartbeat_line, problems, to_dict, transitions,
                     write_status)
from ..detect.matcher import create as create_matcher
from ..detect.noise import Exclusions, Throttle
from .queues import BoundedQueue
from ..detect.ir import Rule

log = logging.getLogger("sensor.pipeline")


class RuleSet:
    """A complete rule set as the worker runs it: the rules, their compiled matcher, the
    noise control that goes with them and the engine of their Sigma correlations (built for
    these rules: it indexes them). Built whole before a swap, never changed after."""

    __slots__ = ("rules", "matcher", "exclusions", "throttle", "generation", "info", "make_alert",
                 "correlator", "silent")

    def __init__(self, rules: list, matcher, exclusions=None, throttle=None, generation: int = 0,
                 info: dict | None = None, correlator=None):
        self.rules = rules
        self.correlator = correlator if correlator else None
        # the rules that only feed correlations (generate: false): no alert of their own
        self.silent = self.correlator.silent if self.correlator is not None else frozenset()
        self.matcher = matcher
        self.exclusions = exclusions
        self.throttle = throttle
        self.generation = generation
        self.info = dict(info or {})
        # its own alert builder: the builder caches each rule's metadata by the rule object's
        # id(), which a freed rule of an earlier set may pass on to a rule of this one
        self.make_alert = AlertFactory()


class Pipeline:
    """Wires a source, the rules, enrichment, noise control, the spool and a forwarder."""

    def __init__(self, *, source, rules: Sequence[Rule], spool=None, forwarder=None,
                 enricher: Callable | None = None, exclusions: Exclusions | None = None,
                 throttle: Throttle | None = None, engine: str | None = None,
                 queue_size: int = 65536, batch_size: int = 512,
                 heartbeat_interval: float = 60.0, status_file: str | None = None,
                 alert_hook: Callable[[dict], None] | None = None, info: dict | None = None,
                 rule_problems: Sequence[str] = (), rules_on_error: str = "fail",
                 ledger: bool = True, rule_packs: Sequence[dict] = (), correlator=None,
                 correlation_state: str | None = None, checkpoint_s: float = 0.0,
                 idle_flush_s: float = 5.0, commit_delay: float = 0.0):
        self.source = source
        self.engine = engine
        self.spool = spool
        self.forwarder = forwarder
        self.enricher = enricher
        # The rules, their matcher and the noise control they run with: one RuleSet, replaced
        # whole by a reload (swap_rules) and taken by the worker between batches.
        self._active = RuleSet(list(rules), create_matcher(list(rules), engine),
                               exclusions if exclusions else None, throttle, generation=0,
                               info={"trigger": "start", "problems": list(rule_problems),
                                     "packs": [dict(p) for p in rule_packs]},
                               correlator=correlator)
        self._next: RuleSet | None = None
        self._swapped = threading.Condition()
        self._worker_done = False           # the matcher thread ended (set under _swapped)
        self.swap_log: list[tuple[int, int]] = []   # (generation, events before it took over)
        self.reload_stats: dict[str, Any] = {"reloads": 0, "failures": 0, "last_error": None,
                                             "last_at": None, "last_trigger": None,
                                             "restart_needed": []}
        self.budget = None                  # a Budget (sensor/daemon/budget.py) when configured
        self.extra_status: Callable[[Status], None] | None = None
        self.queue = BoundedQueue(queue_size)
        self.batch_size = batch_size
        # Alerts wait up to ``commit_delay`` seconds for the alerts of later batches, so one
        # spool transaction (one fsync) carries all of them (docs/delivery.md, the loss window).
        self.commit_delay = max(0.0, float(commit_delay))
        self._held: list[dict] = []          # matched alerts not yet committed (worker only)
        self._held_since = 0.0               # monotonic time the oldest of them was matched
        # A source that runs the batches itself (``accepts_batches``: the ETW source decodes,
        # enriches and matches on its one worker thread, no hand-off per event) calls
        # ``run_batch``, unless correlations need the matcher thread; the lock keeps a rule-set
        # swap between two batches.
        self._inline = False
        self._inline_accepted = 0
        self._batch_lock = threading.Lock()
        self.alert_hook = alert_hook
        self.info = dict(info or {})
        self._titles = {r.id: r.title for r in self._active.rules}   # of every set that ran
        self.status_file = status_file
        self.rules_on_error = rules_on_error
        self._never: tuple[int, dict[str, int], str | None] = (-1, {}, None)
        # Sigma correlations (sensor.detect.correlate): fed after matching, alerts spooled; the
        # engine belongs to the active rule set (a reload hands its windows over, _handover)
        if self.correlator is not None:
            self._titles.update((n.corr.id, n.corr.title) for n in self.correlator.nodes)
        self.windows_discarded = 0          # dropped by reloads to a set without correlations
        # what the exclusions and throttles a reload replaced had suppressed (the status counts
        # since the start, across reloads)
        self._excluded_events_before = 0
        self._excluded_alerts_before: Counter = Counter()
        self._throttled_before: Counter = Counter()
        self._reload_note: dict | None = None
        self.correlation_state = correlation_state
        self.checkpoint_s = checkpoint_s
        self.idle_flush_s = idle_flush_s
        self._last_input = time.monotonic()
        self._last_checkpoint = time.monotonic()
        self.state_errors = 0
        # The completeness ledger: health documents and health alerts through the spool.
        self.ledger = Ledger(spool, {"host": str(self.info.get("host") or ""),
                                     **({"config": self.info["config"]} if self.info.get("config") else {})}) \
            if spool is not None and ledger else None
        if self.ledger is not None:
            self.info["boot_id"] = self.ledger.boot_id
        self.heartbeat = Heartbeat(self.beat, heartbeat_interval) \
            if heartbeat_interval and heartbeat_interval > 0 else None
        self._beat_lock = threading.Lock()
        self._ledger_closed = False          # the stop's health document was spooled
        self._prev: Status | None = None
        self._state = "running"
        # counters (written by the worker thread only)
        self.events_in = 0
        self.events_excluded = 0
        self.enrich_errors = 0
        self.event_errors = 0
        self.match_ns = 0
        self.work_ns = 0
        self.alerts_by_rule: Counter = Counter()
        self.spool_errors = 0
        self._spool_error: str | None = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._started_at = 0.0
        self._last = (0.0, 0)  # (time, events) of the previous status, for the rate
        self.final: Status | None = None

    # -- the active rule set ----------------------------------------------------------------
    @property
    def rules(self) -> list:
        return self._active.rules

    @property
    def matcher(self):
        return self._active.matcher

    @property
    def exclusions(self):
        return self._active.exclusions

    @property
    def throttle(self):
        return self._active.throttle

    @property
    def correlator(self):
        return self._active.correlator

    @property
    def silent(self) -> frozenset:
        return self._active.silent

    @property
    def rule_problems(self) -> list:
        return self._active.info.get("problems") or []

    @property
    def generation(self) -> int:
        return self._active.generation

    def swap_rules(self, new: "RuleSet", wait: float | None = 5.0) -> bool:
        """Hand a complete, compiled rule set to the worker; it takes it over between two
        batches (no event is matched by a mix of two sets). Waits up to ``wait`` seconds for
        the worker to take it; True when it did."""
        if self._inline:
            with self._batch_lock:         # between two batches of the source's thread
                with self._swapped:
                    self._next = new
                self._take_next()
            return self._active is new
        with self._swapped:
            self._next = new
            self.queue.wake()              # the worker blocks on the queue: let it take the set
            if wait is None or self._worker is None or not self._worker.is_alive():
                if self._worker is None or not self._worker.is_alive():
                    self._take_next()
                return self._active is new
            # (or the worker ended: a stop came first, nobody takes the set any more)
            self._swapped.wait_for(lambda: self._active is new or self._next is not new
                                   or self._worker_done, wait)
            return self._active is new

    def _take_next(self) -> None:
        """(worker, between batches) Make the rule set handed over by swap_rules the active one."""
        nxt = self._next
        if nxt is None:
            return
        self._handover(self._active, nxt)
        with self._swapped:
            if self._next is nxt:
                self._next = None
            self._active = nxt
            for r in nxt.rules:
                self._titles.setdefault(r.id, r.title)
            if nxt.correlator is not None:
                for n in nxt.correlator.nodes:
                    self._titles.setdefault(n.corr.id, n.corr.title)
            self.swap_log.append((nxt.generation, self.events_in))
            if len(self.swap_log) > 1000:
                del self.swap_log[:-1000]
            self._swapped.notify_all()
        log.info("rules: set %d active from event %d on: %d rule(s)", nxt.generation,
                 self.events_in, len(nxt.rules))

    def _never_fire_now(self) -> tuple[dict[str, int], str | None]:
        """Never-fire counts of the running rule set (computed once per generation)."""
        rs = self._active
        if self._never[0] != rs.generation:
            counts, profile = _never_fire(rs.rules, self.source)
            self._never = (rs.generation, counts, profile)
        return self._never[1], self._never[2]

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker, the forwarder, the heartbeat and then the source."""
        self._started_at = time.time()
        self._last = (time.monotonic(), 0)
        if self.correlator is not None and self.correlation_state:
            note = self.correlator.load_state(self.correlation_state)
            log.info("correlation state: %s", note)
        # The source runs the batches on its own thread when it can; correlations (their idle
        # evaluation and checkpoints) stay with the matcher thread.
        self._inline = bool(getattr(self.source, "accepts_batches", False)) and self.correlator is None
        if not self._inline:
            self._worker = threading.Thread(target=self._work, name="matcher", daemon=True)
            self._worker.start()
        if self.forwarder is not None:
            self.forwarder.start()
        emit = self.queue.put_wait if getattr(self.source, "blocking", False) else self.queue.put
        if self._inline:
            self.source.start(emit, batches=self)
        else:
            self.source.start(emit)
        log.info("sensor started: %d rule(s), matcher %s, source %s%s", len(self.rules),
                 getattr(self.matcher, "engine", "?"), getattr(self.source, "name", "?"),
                 f", boot {self.ledger.boot_id}" if self.ledger else "")
        never, profile = self._never_fire_now()
        if profile:
            log.info("rules that can never fire on this source (%s): %d (etw-sensor rules doctor)",
                     profile, never.get(profile, 0))
        elif never:
            log.info("rules that can never fire, by source: %s (etw-sensor rules doctor)",
                     ", ".join(f"{k} {v}" for k, v in never.items()))
        self.beat("start")   # the first health document, and the rules-rejected alert
        if self.heartbeat is not None:
            self.heartbeat.start()

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
        """Stop the source, drain the queue, spool the last health document, give delivery
        the rest of the drain budget; write the final status and return it."""
        deadline = time.monotonic() + drain_timeout
        try:
            if self._inline:
                # the source's worker runs the batches: it finishes what is queued before it ends
                self.source.stop(timeout=max(1.0, drain_timeout))
            else:
                self.source.stop()
        except Exception:
            log.exception("source stop failed")
        if self._inline:
            self._commit_held(deadline)    # the alerts still waiting for their transaction
        while self._pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self.queue.close()   # the worker blocks on the queue without a timeout: wake it
        if self._worker is not None:
            self._worker.join(timeout=max(1.0, deadline - time.monotonic()))
        if self.correlator is not None:
            if self._worker is None or not self._worker.is_alive():
                self._correlation_flush(save=True)   # before the last health document counts them
            else:
                log.warning("the matcher thread did not stop in time: correlation windows "
                            "were not evaluated to the end nor saved")
        if self._inline or self._worker is None or not self._worker.is_alive():
            self._commit_held(deadline)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self._started_at:
            self._state = "stopped"
            self.beat("stop")    # the ledger's last entry for this boot
        if self.forwarder is not None:
            # Give delivery the rest of the drain budget; what is left stays in the spool
            # and goes out after the next start.
            wait = getattr(self.forwarder, "wait_drained", None)
            if wait is not None:
                wait(max(0.0, deadline - time.monotonic()))
            self.forwarder.stop()
        final = self.health()
        if self.ledger is not None:
            final.ledger.seq = self.ledger.seq
        if self.status_file:
            try:
                write_status(self.status_file, final)   # last word: what was delivered in the end
            except OSError as exc:
                log.warning("cannot write status file %s: %s", self.status_file, exc)
        self.final = final
        return to_dict(final)

    # -- the worker ------------------------------------------------------------------------
    def _pending(self) -> bool:
        """Events accepted but not yet fully processed, or alerts not yet committed."""
        return self.queue.accepted + self._inline_accepted > self.events_in or bool(self._held)

    def _work(self) -> None:
        q = self.queue
        while True:
            if self._next is not None:
                self._take_next()
            # Blocks until events arrive, swap_rules() hands over a rule set (wake), stop()
            # closes the queue or held alerts are due for their commit: an idle sensor never
            # wakes here. Held correlation events are evaluated after idle_flush_s without
            # input: only then, or for the commit, does the worker wait with a timeout.
            corr = self.correlator
            timeout = None
            if corr is not None and corr.pending():
                timeout = max(0.0, self._last_input + self.idle_flush_s - time.monotonic())
            due = self.commit_due()
            if due is not None:
                wait = max(0.0, due - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            batch = q.get_batch(self.batch_size, timeout)
            if self._next is not None:
                self._take_next()     # between batches: this one is matched by one set only
            if batch:
                try:
                    self._process(batch)
                except Exception:  # never let one bad event stop the sensor
                    log.exception("worker failed on a batch of %d event(s)", len(batch))
                    self.events_in += len(batch)
            if self._held and (self._stop.is_set() or time.monotonic() >= self._held_since + self.commit_delay):
                self.commit()
            if not batch:
                if self._stop.is_set() and not len(q):
                    self.commit()
                    with self._swapped:        # a swap_rules() waiting for this worker gives up
                        self._worker_done = True
                        self._swapped.notify_all()
                    return
                if self.correlator is not None:
                    self._correlation_idle()

    # -- batches run by the source's own thread ---------------------------------------------
    def run_batch(self, batch: list) -> None:
        """(the source's worker thread) Enrich, match and alert ``batch`` now, in order."""
        with self._batch_lock:
            self._inline_accepted += len(batch)
            if self._next is not None:
                self._take_next()
            try:
                self._process(batch)
            except Exception:  # never let one bad event stop the sensor
                log.exception("worker failed on a batch of %d event(s)", len(batch))
                self.events_in += len(batch)
            if self._held and time.monotonic() >= self._held_since + self.commit_delay:
                self.commit()

    def commit_due(self) -> float | None:
        """When the alerts waiting for their transaction must be committed (monotonic), or None."""
        return self._held_since + self.commit_delay if self._held else None

    def commit_if_due(self) -> None:
        """(the source's worker thread) Commit the waiting alerts once their delay is over."""
        if self._held and time.monotonic() >= self._held_since + self.commit_delay:
            with self._batch_lock:
                self.commit()

    def _commit_held(self, deadline: float) -> None:
        """(stop) Commit the waiting alerts, unless a batch still runs past the drain deadline."""
        if self._batch_lock.acquire(timeout=max(0.1, deadline - time.monotonic())):
            try:
                self.commit()
            finally:
                self._batch_lock.release()

    def commit(self) -> None:
        """Commit every waiting alert in one spool transaction (worker, or after it stopped)."""
        held = self._held
        if held:
            try:
                self._deliver(held)
            finally:
                self._held = []            # after the commit: a drain waits for it

    def _process(self, batch: list) -> None:
        t0 = time.perf_counter_ns()
        rs = self._active                  # one complete rule set for the whole batch
        n_in = len(batch)
        budget = self.budget
        if budget is not None and budget.sampling:
            batch = budget.sample(batch)   # the last resort of the CPU budget (counted)
        match = rs.matcher.match
        rules = rs.rules
        enrich = self.enricher
        excl = rs.exclusions
        throttle = rs.throttle
        alerts: list[dict] = []
        mns = 0
        clock = time.perf_counter_ns
        # Every event of the batch is already here: lookups that check a file (the PE
        # cache) check it once for the whole batch.
        scope = getattr(enrich, "batch", None)
        with scope() if scope is not None else contextlib.nullcontext():
            for ev in batch:
                try:
                    mns += self._one(ev, match, rules, enrich, excl, throttle, alerts, clock, rs.make_alert)
                except Exception:  # one bad event must not cost the others their alerts
                    self.event_errors += 1
                    log.exception("event skipped: processing failed")
        if alerts:
            # held before the events count as done, so a drain (``_pending``) always sees one of them
            if not self._held:
                self._held_since = time.monotonic()
            self._held.extend(alerts)
            if not self.commit_delay or len(self._held) >= self.batch_size:
                self.commit()
        self.events_in += n_in
        self.match_ns += mns
        if self.correlator is not None:
            self._last_input = time.monotonic()
            if self.checkpoint_s and self._last_input - self._last_checkpoint >= self.checkpoint_s:
                self._correlation_save()
        self.work_ns += time.perf_counter_ns() - t0

    def _one(self, ev, match, rules, enrich, excl, throttle, alerts: list, clock, make_alert) -> int:
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
        active = self._active             # the batch's set (swapped only between batches)
        corr = active.correlator
        if not matched and corr is None:
            return mns                    # most events: nothing more to do for them
        fed = [] if corr is not None else None
        chosen = []
        for i in matched:
            rule = rules[i]
            if hits and excl.drops_alert(hits, rule):
                continue
            if fed is not None:
                fed.append(i)
                if i in active.silent:   # a correlation's building block (generate: false)
                    continue
            if throttle is not None and not throttle.allow(rule.id, ev):
                continue
            chosen.append(rule)
        if chosen:
            budget = self.budget
            if budget is not None:
                if budget.skip_pe:
                    budget.drop_pe_reads(ev)    # CPU budget: no PE read that no match needed
                if budget.skip_hashes:
                    budget.drop_hashes(ev)      # nor a hash
            # the alerts of one event share its fields, select values and identity key:
            # built once for all of them
            many = getattr(make_alert, "many", None)
            built = many(chosen, ev) if many is not None else [make_alert(rule, ev) for rule in chosen]
            info = self.info
            by_rule = self.alerts_by_rule
            for rule, alert in zip(chosen, built):
                if info:
                    alert["sensor"].update(info)
                alerts.append(alert)
                by_rule[rule.id] += 1
        if corr is not None:
            self._take_correlated(corr.feed(ev, fed), alerts)
        return mns

    # -- correlations ----------------------------------------------------------------------
    def _take_correlated(self, found: list[dict], alerts: list) -> None:
        for a in found:
            if self.info:
                a["sensor"].update(self.info)
            alerts.append(a)
            self.alerts_by_rule[a["rule"]["id"]] += 1

    def _correlation_idle(self) -> None:
        """No event for ``idle_flush_s``: evaluate what the reorder buffer still holds."""
        corr = self.correlator
        if corr.pending() and time.monotonic() - self._last_input >= self.idle_flush_s:
            self._correlation_flush(save=False)
            self._last_input = time.monotonic()   # at most one idle evaluation per period

    def _handover(self, old: RuleSet, new: RuleSet) -> None:
        """(worker, between batches) A reload replaces the correlation engine with the rule
        set: the old engine evaluates what it holds (its alerts are spooled), then the new one
        takes over the windows of the correlations whose definition did not change; the
        windows of those that changed or went away are dropped, counted and logged."""
        self._retire_noise(old, new)
        oc, nc = old.correlator, new.correlator
        if oc is None or oc is nc:
            return
        alerts: list[dict] = []
        try:
            self._take_correlated(oc.flush(), alerts)
        except Exception:
            log.exception("correlation flush at the rule swap failed")
        if alerts:
            self._deliver(alerts)
        if nc is not None:
            note = nc.take_over(oc)
        else:
            lost = sum(n.total for n in oc.nodes)
            self.windows_discarded += lost
            note = {"restored": False, "at": "reload", "discarded": [n.corr.id for n in oc.nodes],
                    "entries_discarded": lost,
                    "reason": "a reload dropped the windows of correlations that went away"}
        self._reload_note = note
        if note.get("discarded"):
            log.warning("correlation windows dropped at the rule swap (%d entr(y/ies)): %s "
                        "changed or went away", note.get("entries_discarded", 0),
                        ", ".join(note["discarded"][:20]))
        if nc is not None:
            log.info("correlation windows carried over at the rule swap: %d correlation(s)",
                     note.get("correlations", 0))

    def _retire_noise(self, old: RuleSet, new: RuleSet) -> None:
        """(worker, at a swap) Keep what the exclusions and the throttle a reload replaces have
        suppressed, and close the windows of a throttle the reload turns off (each window's
        count is logged when it closes, as the heartbeat logs expired ones)."""
        ex = old.exclusions
        if ex is not None and ex is not new.exclusions:
            self._excluded_events_before += ex.suppressed_events
            self._excluded_alerts_before.update(dict(ex.suppressed_alerts))
        th = old.throttle
        if th is not None and th is not new.throttle:
            self._throttled_before.update(dict(th.suppressed))
            _log_throttled(th.close())

    def _correlation_flush(self, save: bool) -> None:
        alerts: list[dict] = []
        try:
            self._take_correlated(self.correlator.flush(), alerts)
        except Exception:
            log.exception("correlation flush failed")
        if alerts:
            self._deliver(alerts)
        if save:
            self._correlation_save()

    def _correlation_save(self) -> None:
        self._last_checkpoint = time.monotonic()
        if not self.correlation_state:
            return
        try:
            self.correlator.save_state(self.correlation_state)
        except Exception:
            self.state_errors += 1
            log.exception("cannot save the correlation state to %s", self.correlation_state)

    def _deliver(self, alerts: list[dict]) -> None:
        if self.spool is not None:
            try:
                self.spool.put_many(alerts)  # a full disk is the spool's state, not an error here
                self._spool_error = None
            except Exception as exc:
                # The spool is the durability guarantee: failing to write it is loud (and a
                # health alert at the next heartbeat); the message names the file and the cause.
                self.spool_errors += len(alerts)
                self._spool_error = str(exc)[:300]
                log.error("SPOOL WRITE FAILED: %d alert(s) not persisted: %s", len(alerts), exc)
        if self.alert_hook is not None:
            for a in alerts:
                try:
                    self.alert_hook(a)
                except Exception:
                    log.exception("alert hook failed")

    # -- health ----------------------------------------------------------------------------
    def health(self, advance: bool = False) -> Status:
        """The typed status of everything (README, "Health"): what every report renders.

        ``events.per_s`` is the rate since the last heartbeat; ``advance`` (a heartbeat) starts
        the next period.
        """
        now = time.monotonic()
        t_prev, n_prev = self._last
        n = self.events_in
        rate = (n - n_prev) / (now - t_prev) if now > t_prev else 0.0
        if advance:
            self._last = (now, n)
        src = _safe(getattr(self.source, "stats", None))
        qs = self.queue.stats()
        if self._inline:
            # the source's worker runs the batches: its record queue is the one that waits
            qs = {"dropped": qs["dropped"], "depth": _int(src.get("queued")),
                  "capacity": _int(src.get("queue_capacity")) or qs["capacity"],
                  "high_water": _int(src.get("queue_high_water"))}
        st = Status()
        st.sensor = SensorInfo(pid=os.getpid(), host=str(self.info.get("host") or ""),
                               config=str(self.info.get("config") or ""),
                               boot_id=self.ledger.boot_id if self.ledger else "",
                               started_at=self._started_at,
                               uptime_s=round(time.time() - self._started_at, 1) if self._started_at else 0.0,
                               heartbeat_s=self.heartbeat.interval if self.heartbeat else 0.0,
                               state=self._state)
        st.events = EventsHealth(
            in_=n, per_s=round(rate, 1), excluded=self.events_excluded,
            # the queue counts what it refused; the ETW callback's own hand-off queue
            # counts what never reached it
            queue_dropped=qs["dropped"] + _int(src.get("callback_drops")),
            queue_depth=qs["depth"], queue_capacity=qs["capacity"], queue_high_water=qs["high_water"],
            enrich_errors=self.enrich_errors, errors=self.event_errors,
            input_errors=_int(src.get("errors")) + _int(src.get("decode_errors")))
        st.source = src
        st.etw = _etw_health(src)
        pe = _safe(getattr(self.enricher, "stats", None))
        st.enrich = _backfill_health(src, pe)
        if pe:
            st.pe_cache = _convert(pe, PeCacheHealth)
        rs = self._active                  # matcher and rules of one set (a swap may follow)
        undecided = _safe_call(lambda: dict(getattr(rs.matcher, "undecided", None) or {})) or {}
        st.matcher = MatcherHealth(engine=getattr(rs.matcher, "engine", "?"), rules=len(rs.rules),
                                   us_per_event=round(self.match_ns / n / 1000, 3) if n else 0.0,
                                   pipeline_us_per_event=round(self.work_ns / n / 1000, 3) if n else 0.0,
                                   undecided=sum(undecided.values()),
                                   undecided_by_rule={rs.rules[i].id: k for i, k in undecided.items()})
        rl = self.reload_stats
        never, profile = self._never_fire_now()
        st.rules = RulesHealth(loaded=len(rs.rules), rejected=len(self.rule_problems),
                               on_error=self.rules_on_error, problems=list(self.rule_problems),
                               generation=rs.generation, trigger=str(rs.info.get("trigger") or ""),
                               loaded_at=float(rs.info.get("loaded_at") or self._started_at or 0.0),
                               key_ids=sorted({p["key_id"] for p in rs.info.get("packs") or ()
                                               if p.get("key_id")}),
                               packs=[_convert(p, PackHealth) for p in rs.info.get("packs") or ()],
                               reloads=rl["reloads"], reload_failures=rl["failures"],
                               last_reload_error=rl["last_error"], last_reload_at=rl["last_at"],
                               restart_needed=list(rl["restart_needed"]),
                               update=_convert(dict(rl.get("update") or {}), RulesUpdateHealth),
                               never_fire=dict(never), profile=profile or "")
        if self.budget is not None:
            st.budget = _convert(self.budget.stats(), BudgetHealth)
        by_rule = dict(self.alerts_by_rule.most_common())
        st.alerts = AlertsHealth(total=sum(by_rule.values()), by_rule=by_rule,
                                 titles={rid: self._titles.get(rid, "") for rid in by_rule})
        noise = NoiseHealth()
        excluded = Counter(self._excluded_alerts_before)
        noise.excluded_events = self._excluded_events_before
        if self.exclusions is not None:
            noise.excluded_events += self.exclusions.suppressed_events
            excluded.update(dict(self.exclusions.suppressed_alerts))
        throttled = Counter(self._throttled_before)
        if self.throttle is not None:
            throttled.update(dict(self.throttle.suppressed))
            _log_throttled(self.throttle.flush())
        noise.excluded_alerts = dict(excluded)
        noise.throttled = dict(throttled)
        st.noise = noise
        if self.correlator is not None:
            cs = _safe(self.correlator.stats)
            cs["state_save_failures"] = self.state_errors
            cs["windows_discarded"] = cs.get("windows_discarded", 0) + self.windows_discarded
            st.correlation = _convert(cs, CorrelationHealth)
        elif self.windows_discarded:
            st.correlation = CorrelationHealth(windows_discarded=self.windows_discarded,
                                               state_save_failures=self.state_errors,
                                               state=dict(self._reload_note or {}))
        if self.spool is not None:
            raw = _safe(getattr(self.spool, "stats", None))
            sp = _convert(raw, SpoolHealth)
            sp.enabled = True
            oldest = _safe_call(getattr(self.spool, "oldest_created", None))
            sp.oldest_age_s = round(max(0.0, time.time() - oldest), 1) if oldest else None
            sp.write_failures = self.spool_errors
            sp.state = "damaged" if sp.damaged else "disk_full" if sp.disk_full else "ok"
            sp.error = self._spool_error or raw.get("error") or raw.get("disk_full_error")
            st.spool = sp
        if self.forwarder is not None:
            st.delivery = _convert(_safe(getattr(self.forwarder, "stats", None)), DeliveryHealth)
            st.delivery.enabled = True
        if self.ledger is not None:
            st.ledger = self.ledger.stats()
        if self.extra_status is not None:
            self.extra_status(st)
        st.problems = problems(st)
        st.written_at = time.time()
        return st

    def status(self) -> dict:
        """:meth:`health` as plain data (what ``status.json`` holds)."""
        return to_dict(self.health())

    def beat(self, reason: str = "heartbeat") -> Status:
        """One heartbeat: the status file, the log line, a health document and health alerts.
        After the stop's own (the ledger's last entry for this boot), a late caller (a reload
        abandoned by the stop) gets the status without spooling or writing anything."""
        with self._beat_lock:
            if self._ledger_closed:
                return self.health()
            st = self.health(advance=True)
            if self.ledger is not None:
                st.ledger.seq = self.ledger.next_seq()
            if self.status_file:
                try:
                    write_status(self.status_file, st)
                except OSError as exc:
                    log.warning("cannot write status file %s: %s", self.status_file, exc)
            log.info("%s", heartbeat_line(st))
            if self.ledger is not None:
                self.ledger.record(st, reason)
                for kind, message, details, key in transitions(self._prev, st):
                    self.ledger.alert(kind, message, details, key)
            self._prev = st
            if reason == "stop":
                self._ledger_closed = True
            return st


def _log_throttled(reports: list[dict]) -> None:
    for r in reports:
        log.info("throttle: suppressed %d repeat(s) of rule %s in %d window(s) of %.0f s",
                 r["suppressed"], r["rule"], r["windows"], r["window_s"])


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _convert(d: dict, cls):
    """A health struct from a component's stats dict (unknown keys ignored; bad values: defaults)."""
    try:
        return msgspec.convert(d, cls, strict=False)
    except (msgspec.ValidationError, TypeError):
        out = cls()
        for k, v in d.items():
            if k in cls.__struct_fields__:
                try:
                    setattr(out, k, msgspec.convert(v, type(getattr(out, k)), strict=False))
                except (msgspec.ValidationError, TypeError):
                    pass
        return out


def _etw_health(src: dict) -> EtwHealth:
    """ETW loss as the heartbeat reports it: provider-side, delivery-side and in-band."""
    e = EtwHealth(events_lost=_int(src.get("events_lost")),
                  realtime_buffers_lost=_int(src.get("realtime_buffers_lost")),
                  rt_lost_events=_int(src.get("rt_lost_events")),
                  restarts=_int(src.get("restarts")), alive=src.get("alive") if "sessions" in src else None)
    e.lost = e.events_lost + e.realtime_buffers_lost + e.rt_lost_events
    return e


def _backfill_health(src: dict, pe: dict) -> EnrichHealth:
    """Back-fill misses (the process was gone, its pid reused, or access denied) from the ETW
    source, and the PE errors of the enrichment cache."""
    bf = (src.get("processor") or {}).get("backfill") or {}
    denied = bf.get("miss_access_denied") or {}
    gone = _int(bf.get("miss_gone"))
    missed = gone + _int(bf.get("miss_pid_reused")) + \
        sum(_int(v) for v in (denied.values() if isinstance(denied, dict) else [denied]))
    return EnrichHealth(backfill_attempts=_int(bf.get("attempts")), backfill_missed=missed,
                        backfill_missed_gone=gone,
                        pe_errors=_int(pe.get("failures")) + _int(pe.get("resolver_errors")))


def _safe(fn) -> dict:
    if fn is None:
        return {}
    try:
        return dict(fn())
    except Exception:
        log.exception("stats collection failed")
        return {}


def _safe_call(fn):
    if fn is None:
        return None
    try:
        return fn()
    except Exception:
        log.exception("stats collection failed")
        return None


def _never_fire(rules: Sequence[Rule], source) -> tuple[dict[str, int], str | None]:
    """Never-fire counts per source profile, and the running source's profile."""
    from ..detect.doctor import NEVER, doctor, profile_for_source
    try:
        totals = doctor(rules).totals()
        return {k: v[NEVER] for k, v in totals.items()}, profile_for_source(source)
    except Exception:  # noqa: BLE001 - a diagnosis must never stop the sensor
        log.exception("rules doctor failed")
        return {}, None
