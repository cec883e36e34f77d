"""Whole-pipeline benchmark: replay → enrich → match → alert → spool → deliver (HTTPS).

Events come from the shared corpus (or any recording), read and normalised once
before timing (EVTX/JSON parsing excluded); the replay loops over them.  Alerts go
through the real SQLite spool and the forwarder to the local HTTPS receiver,
which runs in a separate process so it does not share the sensor's core.

Measured per engine (compiled, and the pure-Python reference as the baseline in
the same run): events/s, CPU µs/event (process user+system time), matcher
µs/event, alerts, peak RSS.

    python bench/pipeline.py                      # all shared SigmaHQ rules
    python bench/pipeline.py --events 200000 --json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
DEFAULT_EVENTS = SHARED / "data/events/process_creation_corpus.jsonl.gz"
DEFAULT_RULES = SHARED / "data/sigma-rules/rules/windows/process_creation"


def _rss_now_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_receiver(tmp: str):
    """The local HTTPS receiver in its own process; returns (process, url, ca_file)."""
    proc = subprocess.Popen([sys.executable, "-m", "sensor.testing.receiver", "--dir", tmp, "--json"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    try:
        info = json.loads(line)
    except ValueError:
        proc.kill()
        raise RuntimeError(f"receiver did not start: {line!r}") from None
    info["ca"] = info["ca_file"]
    return proc, info["url"], info.get("ca")


def run_one(engine: str, rules, events, n_events: int, url: str, ca: str, tmp: str,
            workload: str, queue_size: int) -> dict:
    from sensor.deliver.forwarder import DeliveryConfig, Forwarder
    from sensor.enrich.enricher import Enricher
    from sensor.deliver.outputs import build_output
    from sensor.daemon.pipeline import Pipeline
    from sensor.sources.replay import ReplaySource
    from sensor.deliver.spool import Spool

    try:
        from sensor.enrich.pe import VersionInfoCache
        cache = VersionInfoCache(maxsize=4096)
        enricher = Enricher(pe_lookup=cache.lookup, pe_stats=cache.stats)
    except ImportError:
        enricher = Enricher()
    src = ReplaySource([])
    spool = Spool(os.path.join(tmp, f"spool-{engine}-{workload}.sqlite"))
    output = build_output({"format": "ecs", "url": url + "/ingest", "ca_file": ca})
    fwd = Forwarder(spool, output, DeliveryConfig(batch_size=500, linger=0.05))
    p = Pipeline(source=src, rules=rules, spool=spool, forwarder=fwd, enricher=enricher,
                 engine=engine, heartbeat_interval=0, batch_size=512, queue_size=queue_size,
                 ledger=False)   # "delivered" counts alerts only (no start/stop health documents)
    gc.collect()
    rss_ready = _rss_now_mb()   # the sensor with every rule loaded, before the test events
    events = events()          # read and normalised now: parsing is not timed
    src.loop = max(1, -(-n_events // len(events)))
    src._events = events
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    p.start()
    p.wait_source()
    t_match = time.perf_counter() - t0
    fwd.wait_drained(120)
    t_all = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    status = p.stop(drain_timeout=5)
    spool.close()
    n = status["events"]["in"]
    return {
        "engine": engine, "workload": workload, "rules": len(rules), "events": n,
        "events_per_s": round(n / t_match), "cpu_us_per_event": round(cpu / n * 1e6, 2),
        "matcher_us_per_event": status["matcher"]["us_per_event"],
        "pipeline_us_per_event": status["matcher"]["pipeline_us_per_event"],
        "alerts": status["alerts"]["total"], "delivered": status["delivery"]["sent"],
        "seconds_to_deliver_all": round(t_all, 2),
        "rss_ready_mb": round(rss_ready, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def one_run(args) -> int:
    """One (engine, workload) in this fresh process, so its peak RSS is its own."""
    from sensor.detect.matcher import create
    from sensor.detect.loader import load_rules
    from sensor.sources import read_paths

    rules = load_rules([args.pack] if args.pack else [], builtin=True).rules

    def events():
        evs = list(read_paths([args.events_file]))
        if args.workload == "quiet":
            m = create(rules)
            evs = [e for e in evs if not m.match(e)]
        return evs

    n = args.events if args.engine == "compiled" else args.baseline_events
    r = run_one(args.engine, rules, events, n, args.url, args.ca, args.tmp, args.workload,
                args.queue_size)
    print(json.dumps(r))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-file", default=str(DEFAULT_EVENTS))
    ap.add_argument("--rules", default=str(DEFAULT_RULES), help="Sigma folder/pack ('' = built-in rule only)")
    ap.add_argument("--events", type=int, default=100_000, help="events through the compiled pipeline")
    ap.add_argument("--baseline-events", type=int, default=2_000, help="events for the reference baseline")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--queue-size", type=int, default=4096,
                    help="pipeline queue (the burst buffer; each waiting event holds ~2.5 KB)")
    ap.add_argument("--one", nargs=2, metavar=("ENGINE", "WORKLOAD"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--ca", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--pack", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        args.engine, args.workload = args.one
        return one_run(args)
    if not Path(args.events_file).exists():
        print(f"events file {args.events_file} not found (the shared corpus lives in ../shared)",
              file=sys.stderr)
        return 2
    from sensor.detect.matcher import ENGINES
    from sensor.detect.loader import load_rules

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        # As deployed: the rules come from a compiled pack, so pySigma is never imported here.
        rule_paths = []
        if args.rules:
            pack = os.path.join(tmp, "rules.pack")
            subprocess.run([sys.executable, "-m", "sensor", "rules", "compile", args.rules,
                            "-o", pack], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            rule_paths = [pack]
        n_rules = 1 + (len(load_rules(rule_paths, builtin=False).rules) if rule_paths else 0)
        proc, url, ca = start_receiver(tmp)
        try:
            # Each run in a fresh process: its peak RSS is its own. Two workloads: the corpus as
            # recorded (attack datasets: about a third of its events raise an alert) and its
            # "quiet" part, the events no rule matches, which is what a host mostly sees.
            for workload in ("corpus", "quiet"):
                for engine in ("compiled", "reference"):
                    if engine not in ENGINES:
                        continue
                    cmd = [sys.executable, __file__, "--one", engine, workload, "--url", url,
                           "--ca", ca, "--tmp", tmp, "--pack", rule_paths[0] if rule_paths else "",
                           "--events-file", args.events_file, "--events", str(args.events),
                           "--baseline-events", str(args.baseline_events),
                           "--queue-size", str(args.queue_size)]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            proc.terminate()
            proc.wait(10)
    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    print(f"pipeline: {n_rules} rules (from a pack), events from {args.events_file} (read once, "
          f"looped), queue {args.queue_size}; each run in its own process; receiver in another")
    cols = ("workload", "engine", "events", "events_per_s", "cpu_us_per_event", "matcher_us_per_event",
            "pipeline_us_per_event", "alerts", "delivered", "seconds_to_deliver_all", "rss_ready_mb",
            "peak_rss_mb")
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    for wl in ("corpus", "quiet"):
        pair = {r["engine"]: r for r in results if r["workload"] == wl}
        if len(pair) == 2:
            c, ref = pair["compiled"], pair["reference"]
            print(f"{wl}: compiled vs reference: {c['events_per_s'] / ref['events_per_s']:.1f}x "
                  f"events/s, {ref['cpu_us_per_event'] / c['cpu_us_per_event']:.1f}x less CPU per event")
    print("rss_ready: the sensor with rules, matcher, spool, forwarder built (before the test "
          "events are loaded); peak: the run's high-water mark, preloaded test events included")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
