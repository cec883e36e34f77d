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


def run_one(engine: str, rules, events, n_events: int, url: str, ca: str, tmp: str) -> dict:
    from sensor.delivery import DeliveryConfig, Forwarder
    from sensor.enrich.enricher import Enricher
    from sensor.outputs import build_output
    from sensor.pipeline import Pipeline
    from sensor.sources.replay import ReplaySource
    from sensor.spool import Spool

    try:
        from sensor.enrich.pe import VersionInfoCache
        cache = VersionInfoCache(maxsize=4096)
        enricher = Enricher(pe_lookup=cache.lookup, pe_stats=cache.stats)
    except ImportError:
        enricher = Enricher()
    loops = max(1, -(-n_events // len(events)))
    src = ReplaySource([], loop=loops)
    src._events = events  # already read and normalised: parsing is not timed
    spool = Spool(os.path.join(tmp, f"spool-{engine}.sqlite"))
    output = build_output({"format": "ecs", "url": url + "/ingest", "ca_file": ca})
    fwd = Forwarder(spool, output, DeliveryConfig(batch_size=500, linger=0.05))
    p = Pipeline(source=src, rules=rules, spool=spool, forwarder=fwd, enricher=enricher,
                 engine=engine, heartbeat_interval=0, batch_size=512)
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
        "engine": engine, "rules": len(rules), "events": n,
        "events_per_s": round(n / t_match), "cpu_us_per_event": round(cpu / n * 1e6, 2),
        "matcher_us_per_event": status["matcher"]["us_per_event"],
        "pipeline_us_per_event": status["matcher"]["pipeline_us_per_event"],
        "alerts": status["alerts"]["total"], "delivered": status["delivery"]["sent"],
        "seconds_to_deliver_all": round(t_all, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-file", default=str(DEFAULT_EVENTS))
    ap.add_argument("--rules", default=str(DEFAULT_RULES), help="Sigma folder/pack ('' = built-in rule only)")
    ap.add_argument("--events", type=int, default=100_000, help="events through the compiled pipeline")
    ap.add_argument("--baseline-events", type=int, default=6_626, help="events for the reference baseline")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.events_file).exists():
        print(f"events file {args.events_file} not found (the shared corpus lives in ../shared)",
              file=sys.stderr)
        return 2
    from sensor.matcher import ENGINES
    from sensor.rules.loader import load_rules
    from sensor.sources import read_paths

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        # As deployed: the rules come from a compiled pack, so pySigma is never imported here.
        rule_paths = []
        if args.rules:
            pack = os.path.join(tmp, "rules.pack")
            subprocess.run([sys.executable, "-m", "sensor", "rules", "compile", args.rules,
                            "-o", pack], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            rule_paths = [pack]
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rules = load_rules(rule_paths, builtin=True).rules
        events = list(read_paths([args.events_file]))
        proc, url, ca = start_receiver(tmp)
        try:
            # The compiled engine first: peak RSS is a high-water mark, so the reference
            # run (more Python objects) cannot inflate the compiled run's figure.
            for engine, n in (("compiled", args.events), ("reference", args.baseline_events)):
                if engine not in ENGINES:
                    continue
                results.append(run_one(engine, rules, events, n, url, ca, tmp))
        finally:
            proc.terminate()
            proc.wait(10)
    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    print(f"pipeline: {len(rules)} rules (from a pack), {len(events)} distinct events (looped), "
          f"RSS before loading {rss0:.1f} MB; receiver in a separate process")
    cols = ("engine", "events", "events_per_s", "cpu_us_per_event", "matcher_us_per_event",
            "pipeline_us_per_event", "alerts", "delivered", "seconds_to_deliver_all", "peak_rss_mb")
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    if len(results) == 2:
        c, ref = results
        print(f"compiled vs reference: {c['events_per_s'] / ref['events_per_s']:.1f}x events/s, "
              f"{ref['cpu_us_per_event'] / c['cpu_us_per_event']:.1f}x less CPU per event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
