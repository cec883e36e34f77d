"""CPU budget benchmark: does the sensor hold ``cpu_limit_percent`` under an overload?

The whole process is pinned to one core. First the sensor's cost per event is measured on the
workload (all SigmaHQ process_creation rules, the shared attack corpus as recorded, alerts
through the real SQLite spool and the forwarder to a local JSONL file): that gives the rate it
can match within the budget, ``R = budget / CPU seconds per event``. Then events are offered at
``--overload`` (10) times R by a paced source that, like the ETW callback, never waits (a full
queue drops and counts), for ``--seconds`` with the budget on, and the same load with no budget
as the baseline in the same run. The process's own CPU is sampled every second; the first
``--settle`` seconds (the governor's escalation) are reported apart from the steady state.
A third run holds the last step at its lowest rate (1 event in 1000 matched) without the
governor: what taking the events in costs (the source, the queue, the worker loop), the floor
no shedding can go below. The events lose their recorded PE fields (ETW does not carry them;
the sensor reads them from the image) and PE enrichment is on, with the recorded ``C:\\``
mapped to an empty folder (a read finds nothing), so the PE step is applicable (the replay has no back-fill, this build no hashes: those
steps are skipped, as on a sensor with nothing to shed there).

    python bench/budget.py                      # 10 % of one core, 10x overload, 30 s each
    python bench/budget.py --limit 20 --seconds 60 --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
DEFAULT_EVENTS = SHARED / "data/events/process_creation_corpus.jsonl.gz"
DEFAULT_RULES = SHARED / "data/sigma-rules/rules/windows/process_creation"


class PacedSource:
    """Offers events at ``rate`` per second; never blocks (a full queue drops, counted)."""

    name = "paced"
    blocking = False

    def __init__(self, events, rate: float, seconds: float):
        from sensor.events import ProcessEvent
        self._copy = ProcessEvent.copy_of
        self.events = events
        self.rate = rate
        self.seconds = seconds
        self.offered = 0
        self.dropped = 0
        self.finished = threading.Event()
        self._stop = threading.Event()

    def start(self, emit) -> None:
        threading.Thread(target=self._run, args=(emit,), name="paced", daemon=True).start()

    def _run(self, emit) -> None:
        t0 = time.monotonic()
        n = len(self.events)
        i = 0
        while not self._stop.is_set():
            elapsed = time.monotonic() - t0
            if elapsed >= self.seconds:
                break
            due = int(elapsed * self.rate)
            while i < due:
                if not emit(self._copy(self.events[i % n])):
                    self.dropped += 1
                i += 1
            self.offered = i
            time.sleep(0.005)
        self.finished.set()

    def stop(self) -> None:
        self._stop.set()
        self.finished.wait(10)

    def stats(self) -> dict:
        # (the queue counts its own refusals: reported here under another name, so the
        # pipeline's queue_dropped does not count them twice)
        return {"offered": self.offered, "refused_by_queue": self.dropped}


def enricher(tmp: str):
    """PE enrichment as a sensor with a path map has it (the recorded C:\\ images map to an
    empty folder here, so a read finds nothing): the budget's PE step has work to shed."""
    from sensor.enrich.enricher import Enricher
    from sensor.enrich.pe import VersionInfoCache
    root = os.path.join(tmp, "c-drive")
    os.makedirs(root, exist_ok=True)
    cache = VersionInfoCache(maxsize=4096)
    return Enricher(pe_lookup=cache.lookup, path_map={"C:\\": root + "/"},
                    pe_stats=cache.stats, pe_batch=cache.batch)


def pipeline(rules, source, tmp: str, tag: str, budget_limit: float, window: float):
    from sensor.daemon.pipeline import Pipeline
    from sensor.deliver.forwarder import DeliveryConfig, Forwarder
    from sensor.deliver.outputs import build_output
    from sensor.deliver.spool import Spool
    spool = Spool(os.path.join(tmp, f"spool-{tag}.sqlite"))
    fwd = Forwarder(spool, build_output({"format": "jsonl", "path": os.path.join(tmp, f"out-{tag}.jsonl")}),
                    DeliveryConfig(batch_size=500, linger=0.05))
    p = Pipeline(source=source, rules=rules, spool=spool, forwarder=fwd, heartbeat_interval=0,
                 batch_size=512, queue_size=16384, ledger=False, enricher=enricher(tmp))
    budget = None
    if budget_limit:
        from sensor.daemon.budget import Budget
        budget = Budget(budget_limit, window=window)
        budget.attach(p)
    return p, budget


def calibrate(rules, events, tmp: str, n: int) -> dict:
    """CPU seconds per event with nothing shed (replay as fast as the pipeline takes it)."""
    from sensor.sources.replay import ReplaySource
    src = ReplaySource([])
    src._events = (events * (n // len(events) + 1))[:n]
    p, _ = pipeline(rules, src, tmp, "calibrate", 0, 1)
    c0, t0 = time.process_time(), time.monotonic()
    p.start()
    p.wait_source(3600)
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    final = p.stop(drain_timeout=120)
    return {"events": n, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "cpu_us_per_event": round(cpu / n * 1e6, 1), "alerts": final["alerts"]["total"]}


def run(rules, events, tmp: str, tag: str, rate: float, seconds: float, limit: float,
        window: float, settle: float, floor: bool = False) -> dict:
    src = PacedSource(events, rate, seconds)
    p, budget = pipeline(rules, src, tmp, tag, limit, window)
    if floor:
        # the last step held at its lowest rate (1 in 1000 matched), no governor: what taking
        # the events in costs (source, queue, worker loop, sampling) when nearly none is matched
        from sensor.daemon.budget import MIN_RATE, Budget
        budget = Budget(0.0)
        budget.attach(p)
        budget.sampling, budget.rate = True, MIN_RATE
    series: list[float] = []
    levels: list[int] = []
    stop = threading.Event()

    def sample():
        last_c, last_t = time.process_time(), time.monotonic()
        while not stop.wait(1.0):
            c, t = time.process_time(), time.monotonic()
            series.append(100.0 * (c - last_c) / (t - last_t))
            levels.append(budget.level if budget else 0)
            last_c, last_t = c, t

    p.start()
    if budget is not None:
        budget.start()
    mon = threading.Thread(target=sample, daemon=True)
    mon.start()
    src.finished.wait(seconds + 60)
    stop.set()
    mon.join()
    if budget is not None:
        budget.stop()
    st = p.health()
    p.stop(drain_timeout=60)
    steady = series[int(settle):] or series
    out = {"offered_per_s": round(rate), "seconds": seconds, "offered": src.offered,
           "cpu_percent_mean_all": round(statistics.fmean(series), 1) if series else 0.0,
           "cpu_percent_mean_steady": round(statistics.fmean(steady), 1),
           "cpu_percent_p90_steady": round(sorted(steady)[int(0.9 * (len(steady) - 1))], 1),
           "cpu_percent_max_steady": round(max(steady), 1),
           "cpu_percent_first_s": [round(x) for x in series[:int(settle)]],
           "events_in": st.events.in_, "queue_dropped": st.events.queue_dropped,
           "alerts": st.alerts.total}
    if budget is not None:
        out.update(limit=limit, window_s=window, levels_first_s=levels[:int(settle)],
                   shedding=st.budget.shedding, shed=st.budget.shed,
                   sampled_out=st.budget.sampled_out, final_sample_rate=st.budget.sample_rate,
                   matched=st.events.in_ - st.budget.sampled_out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", default=str(DEFAULT_EVENTS))
    ap.add_argument("--rules", default=str(DEFAULT_RULES))
    ap.add_argument("--limit", type=float, default=10.0, help="cpu_limit_percent (of one core)")
    ap.add_argument("--overload", type=float, default=10.0, help="offered rate / rate matchable in the budget")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--window", type=float, default=2.0, help="cpu_window_s")
    ap.add_argument("--settle", type=float, default=12.0, help="seconds reported apart (escalation)")
    ap.add_argument("--calibrate-events", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not Path(args.events).exists() or not Path(args.rules).exists():
        print(f"bench/budget.py: needs {args.events} and {args.rules} (the shared research data)",
              file=sys.stderr)
        return 2
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})            # one core for every thread of the sensor
    import sensor
    rules, report = sensor.load_rules([args.rules], builtin=True)
    from sensor.enrich.enricher import PE_FIELDS
    events = list(sensor.read_events([args.events]))
    for ev in events:            # as ETW gives them: the PE fields come from the image, read lazily
        for f in PE_FIELDS:
            dict.pop(ev, f, None)
    with tempfile.TemporaryDirectory() as tmp:
        cal = calibrate(rules, events, tmp, args.calibrate_events)
        matchable = args.limit / 100.0 / (cal["cpu_us_per_event"] / 1e6)
        rate = matchable * args.overload
        budgeted = run(rules, events, tmp, "budget", rate, args.seconds, args.limit, args.window, args.settle)
        baseline = run(rules, events, tmp, "nobudget", rate, args.seconds, 0, args.window, args.settle)
        # what taking the events in costs with (nearly) nothing matched: the floor under any
        # budget, since sampling happens after the queue
        intake = run(rules, events, tmp, "floor", rate, args.seconds, 0, args.window, args.settle,
                     floor=True)
    result = {"core": cpu, "rules": len(rules), "calibration": cal,
              "matchable_per_s_in_budget": round(matchable), "with_budget": budgeted,
              "baseline_no_budget": baseline, "floor_sampling_1_in_1000": intake,
              "steady_cpu_over_limit": round(budgeted["cpu_percent_mean_steady"] / args.limit, 2)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    b, n = budgeted, baseline
    print(f"one core (cpu {cpu}), {len(rules)} rules; calibration: {cal['cpu_us_per_event']} us CPU/event "
          f"-> {matchable:.0f} events/s fit in {args.limit:g} % of a core")
    print(f"offered {rate:.0f} events/s ({args.overload:g}x) for {args.seconds:g} s")
    print(f"  budget {args.limit:g} %: steady CPU mean {b['cpu_percent_mean_steady']} %, p90 "
          f"{b['cpu_percent_p90_steady']} %, max {b['cpu_percent_max_steady']} % "
          f"({result['steady_cpu_over_limit']}x the limit); first {args.settle:g} s: {b['cpu_percent_first_s']}")
    print(f"    shed levels first s: {b['levels_first_s']}; in force at the end: {', '.join(b['shedding']) or '-'}")
    print(f"    shed: {b['shed']}; matched {b['matched']} of {b['events_in']} taken in "
          f"(sample rate at the end {b['final_sample_rate']}); queue drops {b['queue_dropped']}; "
          f"alerts {b['alerts']}")
    print(f"  baseline, no budget: steady CPU mean {n['cpu_percent_mean_steady']} %, "
          f"matched {n['events_in']} of {n['offered']} offered, queue drops {n['queue_dropped']}, "
          f"alerts {n['alerts']}")
    print(f"  floor (1 in 1000 matched, no governor): steady CPU mean {intake['cpu_percent_mean_steady']} % "
          f"(taking {rate:.0f} events/s in costs this before any matching; shedding cannot go below it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
