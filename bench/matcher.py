"""Sigma matcher benchmark: compiled vs reference vs Python peers, same events, one run.

Rule sets: ``seed`` (the built-in rule; peers get its SigmaHQ twin
proc_creation_win_mofcomp_execution.yml) and ``sigmahq`` (every Windows
process_creation rule that loads).  Events: the shared corpus, normalized once.
The compiled engine runs every event; the reference engine and the peers (each in
its own venv made by bench/peers/setup.sh, run in a subprocess) run a stride
sample (``--sample``) because they are 100-10,000x slower.

    .venv/bin/python bench/matcher.py            # table
    .venv/bin/python bench/matcher.py --json     # one JSON object per (engine, ruleset)
    .venv/bin/python bench/matcher.py --engines compiled --no-rss   # hot loop and sporadic

Sporadic (compiled engine): events one at a time, each after a sleep and a walk over unrelated
memory, so the matcher's tables are cache-cold, as on a server with a few starts per second.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "data" / "events" / "process_creation_corpus.jsonl.gz"
RULES = SHARED / "data" / "sigma-rules" / "rules" / "windows" / "process_creation"
SEED_TWIN = "proc_creation_win_mofcomp_execution.yml"
PEERS = {"azuma": "azuma", "sigma-rule-matcher": "srm", "sqlite": "sqlite"}
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def load_events(path):
    import sensor

    return list(sensor.read_events([path]))


def load_ruleset(name, rules_dir):
    if name == "seed":
        from sensor.detect.seed import seed_rule

        return [seed_rule()]
    import sensor

    rules, _report = sensor.load_rules([rules_dir], builtin=False)
    return rules


def time_engine(matcher, events, min_seconds):
    """Best pass over ``events`` (ns/event); at least 3 passes, at least ``min_seconds``."""
    match = matcher.match
    best = None
    passes = 0
    t_end = time.perf_counter() + min_seconds
    while passes < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for ev in events:
            match(ev)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        passes += 1
    return best / len(events) * 1e9


def time_sporadic(matcher, events, gap, thrash_mb, n):
    """Per-event ns of events that arrive one at a time after other work: before each match the
    thread sleeps ``gap`` seconds and then walks ``thrash_mb`` MiB of unrelated memory (what the
    rest of a server does between two process starts), so the matcher's tables are cache-cold.
    Returns (median, mean, p90) over ``n`` events."""
    match = matcher.match
    other = bytearray(int(thrash_mb * 2**20))
    view = memoryview(other)
    clock = time.perf_counter_ns
    out = []
    for i in range(n):
        ev = events[(i * 7919) % len(events)]
        if gap:
            time.sleep(gap)
        if thrash_mb:
            view[::64] = bytes(len(view[::64]))       # touch every cache line once
        t0 = clock()
        match(ev)
        out.append(clock() - t0)
    out.sort()
    return out[len(out) // 2], sum(out) / len(out), out[int(len(out) * 0.9)]


def rss_child(engine, ruleset, rules_dir):
    """RSS (MiB) the loaded rule set adds, measured in a fresh interpreter."""
    code = (
        "import json, sys; sys.path[:0] = [%r, %r]\n"
        "from matcher import rss_mb, load_ruleset\n"
        "import sensor, sensor.detect.loader, sensor.detect.seed, sensor.detect.matcher\n"
        "a = rss_mb(); rules = load_ruleset(%r, %r); b = rss_mb()\n"
        "m = sensor.create_matcher(rules, %r); c = rss_mb()\n"
        "print(json.dumps({'rules_ir_mb': b - a, 'matcher_mb': c - b}))\n"
    ) % (str(ROOT), str(ROOT / "bench"), ruleset, str(rules_dir), engine)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def peer_events(events):
    """Plain dicts of strings for the peers (missing values left out)."""
    out = []
    for ev in events:
        out.append({k: (v if isinstance(v, str) else str(v)) for k, v in ev.items() if v is not None})
    return out


def run_peer(peer, ruleset, rule_files, events_file, n_events, min_seconds):
    py = ROOT / "bench" / f".venv-{PEERS[peer]}" / "bin" / "python"
    if not py.exists():
        return {"engine": peer, "ruleset": ruleset, "skipped": f"{py} missing: run bench/peers/setup.sh"}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(str(p) for p in rule_files))
        listfile = fh.name
    try:
        cmd = [str(py), str(ROOT / "bench" / "peers" / "run_peer.py"), peer, events_file,
               "--min-seconds", str(min_seconds)] + [str(p) for p in rule_files]
        out = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(listfile)
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"engine": peer, "ruleset": ruleset, "skipped": (out.stderr or "no output")[-300:]}
    res["ruleset"] = ruleset
    res["engine"] = peer
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the Sigma matcher engines and Python peers.")
    ap.add_argument("--events", default=str(CORPUS), help="events file (default: the shared corpus)")
    ap.add_argument("--rules", default=str(RULES), help="folder of Sigma rules for the sigmahq set")
    ap.add_argument("--rulesets", default="seed,sigmahq")
    ap.add_argument("--engines", default="compiled,reference,azuma,sigma-rule-matcher,sqlite")
    ap.add_argument("--sample", type=int, default=200,
                    help="events (stride sample) for the reference on sigmahq and for peers")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timing budget per measurement")
    ap.add_argument("--no-rss", action="store_true", help="skip the RSS measurement")
    ap.add_argument("--json", action="store_true", help="print one JSON object per (engine, ruleset)")
    ap.add_argument("--sporadic", type=int, default=200, metavar="N",
                    help="compiled engine: also time N events one at a time, cache-cold (0: skip)")
    ap.add_argument("--gap", type=float, default=0.05, help="sporadic: seconds of sleep before each event")
    ap.add_argument("--thrash-mb", type=float, default=16.0,
                    help="sporadic: MiB of other memory walked before each event")
    args = ap.parse_args(argv)

    if not Path(args.events).exists():
        print(f"events file {args.events} not found", file=sys.stderr)
        return 2
    import sensor
    from sensor.detect.matcher import ENGINES

    engines = [e for e in args.engines.split(",") if e]
    events = load_events(args.events)
    step = max(1, len(events) // max(1, args.sample))
    sample = events[::step][:args.sample]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sample_file = os.path.join(tmp, "events.json")
        with open(sample_file, "w", encoding="utf-8") as fh:
            json.dump(peer_events(sample), fh)
        for ruleset in args.rulesets.split(","):
            rules = load_ruleset(ruleset, args.rules)
            if ruleset == "seed":
                rule_files = [Path(args.rules) / SEED_TWIN]
            else:
                rule_files = sorted(Path(args.rules).rglob("*.yml"))
            for engine in engines:
                if engine in ("compiled", "reference"):
                    if engine not in ENGINES:
                        results.append({"engine": engine, "ruleset": ruleset, "skipped": "not built"})
                        continue
                    m = sensor.create_matcher(rules, engine)
                    evs = events if (engine == "compiled" or ruleset == "seed") else sample
                    res = {"engine": engine, "ruleset": ruleset, "rules_loaded": len(rules),
                           "events": len(evs), "ns_per_event": time_engine(m, evs, args.min_seconds)}
                    if not args.no_rss:
                        rss = rss_child(engine, ruleset, args.rules)
                        if rss:
                            res["rss_added_mb"] = rss["matcher_mb"]
                            res["rss_rules_ir_mb"] = rss["rules_ir_mb"]
                    if engine == "compiled" and args.sporadic > 0:
                        med, mean, p90 = time_sporadic(m, events, args.gap, args.thrash_mb, args.sporadic)
                        res.update(sporadic_ns_median=med, sporadic_ns_mean=mean, sporadic_ns_p90=p90,
                                   sporadic_events=args.sporadic)
                    if engine == "compiled" and ruleset != "seed":
                        # the same engine on the sample, so peers compare on equal events
                        res["ns_per_event_sample"] = time_engine(m, sample, args.min_seconds / 2)
                    results.append(res)
                elif engine in PEERS:
                    results.append(run_peer(engine, ruleset, rule_files, sample_file, len(sample),
                                            args.min_seconds))
                else:
                    print(f"unknown engine {engine!r}", file=sys.stderr)
                    return 2

    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    base = {r["ruleset"]: r for r in results if r["engine"] == "compiled" and "ns_per_event" in r}
    print(f"{'engine':<20} {'ruleset':<8} {'rules':>6} {'events':>6} {'ns/event':>12} "
          f"{'events/s':>11} {'x compiled':>10} {'RSS MiB':>8}")
    for r in results:
        if "skipped" in r:
            print(f"{r['engine']:<20} {r['ruleset']:<8} skipped: {r['skipped']}")
            continue
        ns = r["ns_per_event"]
        b = base.get(r["ruleset"])
        ref_ns = None
        if b is not None:
            ref_ns = b["ns_per_event"] if r["events"] == b["events"] else b.get("ns_per_event_sample", b["ns_per_event"])
        ratio = f"{ns / ref_ns:10.1f}" if ref_ns else f"{'-':>10}"
        rss = r.get("rss_added_mb")
        print(f"{r['engine']:<20} {r['ruleset']:<8} {r['rules_loaded']:>6} {r['events']:>6} {ns:>12,.0f} "
              f"{1e9 / ns:>11,.0f} {ratio} {'' if rss is None else f'{rss:8.1f}'}")
    print("x compiled: time relative to the compiled engine on the same events "
          "(sample rows use the compiled engine's time on the sample).")
    for r in results:
        if "sporadic_ns_median" in r:
            print(f"sporadic {r['engine']} {r['ruleset']}: {r['sporadic_events']} events one at a time "
                  f"({args.gap * 1000:.0f} ms apart, {args.thrash_mb:g} MiB walked before each): median "
                  f"{r['sporadic_ns_median'] / 1000:.2f} us, mean {r['sporadic_ns_mean'] / 1000:.2f} us, "
                  f"p90 {r['sporadic_ns_p90'] / 1000:.2f} us per event; hot loop "
                  f"{r['ns_per_event'] / 1000:.2f} us (x{r['sporadic_ns_median'] / r['ns_per_event']:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
