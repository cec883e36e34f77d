"""The sensor's CPU and memory budget (``[sensor] cpu_limit_percent``, ``memory_limit_mb``).

CPU: a thread samples the process's own CPU time (all its threads) every ``window / 5`` and
computes its use over the last ``window`` seconds, in percent of one core. Over the limit, it
sheds optional work one step at a time, in this order, waiting a window between steps so each
has time to show its effect, and gives the steps back in reverse order once the use stays under
70 % of the limit for a window:

1. ``backfill``: back-fill (psutil reads of a live process) only the fields a loaded rule
   tests; the others stay missing in the alert;
2. ``pe_reads``: read no PE version resource that no rule's match needed (an alert then
   carries only the PE fields its match read; the others have origin ``shed``);
3. ``hashes``: compute no image ``Hashes`` that no rule's match needed (an alert then carries
   ``Hashes`` only when its match read them; otherwise the field has origin ``shed``);
4. ``events``: match only a sample of the process starts, the sample rate steered each tick
   so the CPU use meets the limit. The very last resort: the other events are never
   evaluated.

A step with nothing to shed on this sensor (no back-fill on a replay, PE reads off, no
``Hashes`` computed) is skipped. Every shed item is counted per step (``budget.shed`` in the status) and each
step that sheds raises a health alert (``sensor-health-budget-shed-<step>``). Nothing here
ever blocks or slows the ETW callback: shedding only removes work.

Memory: :func:`memory_caps` sizes the event queue, the PE cache and the process table from
``memory_limit_mb`` at start (never above what the config asks), and the thread reports the
resident size; over the limit, a health alert (``sensor-health-memory-over-budget``). What the
queue holds depends on the source: under the ETW source it is the record queue between the
consumer callback and the worker (raw records, the payload bytes still undecoded: about 0.6 KB
each), under the others the pipeline's queue of decoded events (about 2.6 KB each).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("sensor.budget")

STEPS = ("backfill", "pe_reads", "hashes", "events")
RELAX = 0.7                 # give a step back below this share of the limit
MIN_RATE = 0.001            # sampling never goes below 1 event in 1000
ORIGIN_SHED = "shed"

# Memory: what the sensor needs before its tables (interpreter, libraries, a full rule set
# compiled: README "Performance": ~49 MB), and what one entry of each table costs.
BASE_MB = 56.0
ENTRY_BYTES = {"queue_size": 2600, "pe_cache_size": 1200, "process_table_size": 700}
# One queued raw ETW record (the ETW source's queue): the record tuple, its payload bytes and
# integers, and the deque slot. Measured on process starts of a server (a system-logger Start
# with its command line, a Kernel-Process start and stop): 465 to 810 bytes, 544 on average.
# A record whose command line is 32,767 characters holds 64 KiB: a queue full of them is
# larger than this budget says (the count bounds it, not the bytes).
RECORD_BYTES = 600
SHARE = {"queue_size": 0.45, "pe_cache_size": 0.2, "process_table_size": 0.35}
FLOOR = {"queue_size": 1024, "pe_cache_size": 256, "process_table_size": 4096}


def queue_entry_bytes(source_kind: str, correlations: bool = False) -> int:
    """What one slot of ``sensor.queue_size`` holds when full. The ETW source queues raw records
    and its worker runs the batches itself (the pipeline's event queue stays empty), except
    with Sigma correlations, whose matcher thread has the event queue too: both can fill."""
    if source_kind != "etw":
        return ENTRY_BYTES["queue_size"]
    return RECORD_BYTES + (ENTRY_BYTES["queue_size"] if correlations else 0)


def memory_caps(limit_mb: float, asked: dict[str, int], queue_bytes: int | None = None) -> dict[str, int]:
    """The table sizes ``limit_mb`` allows: each table's share of what is left above
    :data:`BASE_MB`, never more than ``asked`` (the config) and never below a floor.
    ``queue_bytes``: one queue slot (:func:`queue_entry_bytes`; decoded events by default)."""
    if not limit_mb:
        return dict(asked)
    spare = max(0.0, limit_mb - BASE_MB) * 1024 * 1024
    entry = dict(ENTRY_BYTES, queue_size=queue_bytes) if queue_bytes else ENTRY_BYTES
    out = {}
    for key, want in asked.items():
        fit = int(spare * SHARE[key] / entry[key])
        out[key] = max(min(want, FLOOR[key]), min(want, fit))
    return out


def apply_memory_caps(cfg, correlations: bool = False) -> dict[str, int]:
    """Lower the config's table sizes to what ``[sensor] memory_limit_mb`` allows (in place).
    ``correlations``: Sigma correlations are loaded (see :func:`queue_entry_bytes`)."""
    asked = {"queue_size": cfg.sensor.queue_size, "pe_cache_size": cfg.enrich.pe.cache_size,
             "process_table_size": cfg.source.etw.process_table_size}
    if not cfg.sensor.memory_limit_mb:
        return {}
    caps = memory_caps(cfg.sensor.memory_limit_mb, asked,
                       queue_entry_bytes(cfg.source.kind, correlations))
    cfg.sensor.queue_size = caps["queue_size"]
    cfg.enrich.pe.cache_size = caps["pe_cache_size"]
    cfg.source.etw.process_table_size = caps["process_table_size"]
    for k, v in caps.items():
        if v < asked[k]:
            log.info("memory budget %g MB: %s %d (config: %d)", cfg.sensor.memory_limit_mb, k, v, asked[k])
    return caps


def _rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / (1024 * 1024)
    except Exception:  # noqa: BLE001 - psutil missing or denied: not measured
        return 0.0


class Budget:
    """The governor: measures, decides the shed level, and sheds through the parts it knows."""

    def __init__(self, cpu_limit_percent: float = 0.0, *, window: float = 5.0,
                 memory_limit_mb: float = 0.0, caps: dict | None = None,
                 cpu_clock: Callable[[], float] = time.process_time,
                 wall_clock: Callable[[], float] = time.monotonic,
                 rss_mb: Callable[[], float] = _rss_mb):
        self.limit = float(cpu_limit_percent)
        self.window = float(window)
        self.memory_limit_mb = float(memory_limit_mb)
        self.caps = dict(caps or {})
        self.cpu_clock = cpu_clock
        self.wall_clock = wall_clock
        self.rss = rss_mb
        self.level = 0                        # steps in force: STEPS[:level] (skipping n/a ones)
        self.rate = 1.0
        self.cpu_percent = 0.0
        self.rss_mb = 0.0
        self.over_windows = 0
        self.shed: collections.Counter = collections.Counter()
        self.sampled_out = 0
        self._acc = 0.0
        self._samples: collections.deque = collections.deque()
        self._changed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # what can be shed on this sensor (attach() fills these)
        self.pipeline = None
        self._backfiller = None
        self._backfill_all: tuple = ()
        self._backfill_attempts = 0
        self.sampling = False
        self.skip_pe = False
        self.skip_hashes = False

    # -- wiring --------------------------------------------------------------------------------
    def attach(self, pipeline) -> None:
        self.pipeline = pipeline
        pipeline.budget = self
        proc = getattr(getattr(pipeline, "source", None), "processor", None)
        bf = getattr(proc, "backfiller", None)
        if bf is not None and getattr(bf, "fields", None):
            self._backfiller = bf
            self._backfill_all = tuple(bf.fields)

    def applicable(self, step: str) -> bool:
        if step == "backfill":
            return self._backfiller is not None and bool(self._unneeded_backfill())
        if step == "pe_reads":
            return getattr(getattr(self.pipeline, "enricher", None), "pe_lookup", None) is not None
        if step == "hashes":
            return getattr(getattr(self.pipeline, "enricher", None), "hash_lookup", None) is not None
        return True

    def _needed_fields(self) -> set:
        out: set = set()
        if self.pipeline is not None:
            for r in self.pipeline.rules:
                try:
                    out |= {f for f in r.fields if f}
                except Exception:  # noqa: BLE001
                    return set(self._backfill_all)
        return out

    def _unneeded_backfill(self) -> tuple:
        need = self._needed_fields()
        return tuple(f for f in self._backfill_all if f not in need)

    def set_limit(self, cpu_limit_percent: float, window: float | None = None) -> None:
        """A reload changed the limit: applies from the next tick."""
        with self._lock:
            self.limit = float(cpu_limit_percent)
            if window:
                self.window = float(window)
            if not self.limit:
                self._set_level(0)

    # -- the steps -------------------------------------------------------------------------------
    def steps_in_force(self) -> list[str]:
        return [s for s in STEPS[:self.level] if self.applicable(s)]

    def _set_level(self, level: int) -> None:
        level = max(0, min(len(STEPS), level))
        # skip the steps with nothing to shed here
        while 0 < level < len(STEPS) and not self.applicable(STEPS[level - 1]):
            level += 1 if level > self.level else -1
        if level == self.level:
            return
        self.level = level
        self._changed_at = self.wall_clock()
        force = set(STEPS[:level])
        if self._backfiller is not None:
            keep = self._backfill_all if "backfill" not in force else \
                tuple(f for f in self._backfill_all if f in self._needed_fields())
            self._backfiller.fields = keep
            self._backfill_attempts = getattr(self._backfiller, "attempts", 0)
        self.skip_pe = "pe_reads" in force
        self.skip_hashes = "hashes" in force
        if "events" in force and not self.sampling:
            self.rate = 1.0
        self.sampling = "events" in force
        log.warning("CPU budget %g %%: using %.1f %%, shed level %d (%s)", self.limit, self.cpu_percent,
                    level, ", ".join(self.steps_in_force()) or "nothing shed")

    def sample(self, batch: list) -> list:
        """(worker) The events of ``batch`` to match at the current rate; the rest are counted."""
        rate = self.rate
        if rate >= 1.0:
            return batch
        keep = []
        acc = self._acc
        for ev in batch:
            acc += rate
            if acc >= 1.0:
                acc -= 1.0
                keep.append(ev)
        self._acc = acc
        n = len(batch) - len(keep)
        self.sampled_out += n
        self.shed["events"] += n
        return keep

    def drop_hashes(self, event) -> None:
        """(worker, before an alert is built) Cancel the ``Hashes`` no match needed."""
        pending = getattr(event, "pending", None)
        if not pending or "Hashes" not in pending:
            return
        del pending["Hashes"]
        origin = getattr(event, "origin", None)
        if origin is not None:
            origin["Hashes"] = ORIGIN_SHED
        self.shed["hashes"] += 1

    def drop_pe_reads(self, event) -> None:
        """(worker, before an alert is built) Cancel the PE read no match needed."""
        pending = getattr(event, "pending", None)
        if not pending:
            return
        from ..enrich.enricher import PE_FIELDS
        dropped = [f for f in PE_FIELDS if f in pending]
        if not dropped:
            return
        for f in dropped:
            del pending[f]
        origin = getattr(event, "origin", None)
        if origin is not None:
            for f in dropped:
                origin[f] = ORIGIN_SHED
        self.shed["pe_reads"] += 1

    # -- the governor ------------------------------------------------------------------------------
    def start(self) -> None:
        self._samples.append((self.wall_clock(), self.cpu_clock()))
        self._thread = threading.Thread(target=self._run, name="budget", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(max(0.05, self.window / 5)):
            try:
                self.tick()
            except Exception:  # noqa: BLE001
                log.exception("budget tick failed")

    def tick(self) -> None:
        """Measure the CPU use over the window and move the shed level."""
        now, cpu = self.wall_clock(), self.cpu_clock()
        with self._lock:
            self._samples.append((now, cpu))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
                self._samples.popleft()
            t0, c0 = self._samples[0]
            if now - t0 > 0:
                self.cpu_percent = round(100.0 * (cpu - c0) / (now - t0), 2)
            if self.memory_limit_mb:
                self.rss_mb = round(self.rss(), 1)
            if self._backfiller is not None and "backfill" in self.steps_in_force():
                attempts = getattr(self._backfiller, "attempts", 0)
                removed = len(self._backfill_all) - len(self._backfiller.fields)
                self.shed["backfill"] += max(0, attempts - self._backfill_attempts) * removed
                self._backfill_attempts = attempts
            if not self.limit:
                return
            over = self.cpu_percent > self.limit
            if over:
                self.over_windows += 1
            settled = now - self._changed_at >= self.window
            if self.sampling:
                # steer the rate: proportional to the room left, within 0.5x..1.5x per tick
                use = max(self.cpu_percent, 0.01)
                factor = min(1.5, max(0.5, self.limit / use))
                self.rate = min(1.0, max(MIN_RATE, self.rate * factor))
                if not over and self.rate >= 1.0 and self.cpu_percent < self.limit * RELAX and settled:
                    self._set_level(self.level - 1)
                return
            if over and settled:
                self._set_level(self.level + 1)
            elif self.level and self.cpu_percent < self.limit * RELAX and settled:
                self._set_level(self.level - 1)

    def stats(self) -> dict[str, Any]:
        return {"cpu_limit_percent": self.limit, "cpu_percent": self.cpu_percent,
                "window_s": self.window, "level": self.level, "shedding": self.steps_in_force(),
                "over_budget_ticks": self.over_windows, "shed": dict(self.shed),
                "sampled_out": self.sampled_out, "sample_rate": round(self.rate, 4),
                "memory_limit_mb": self.memory_limit_mb, "rss_mb": self.rss_mb,
                "caps": dict(self.caps)}
