"""Sigma matcher benchmark: compiled vs reference vs Python peers, same events, one run.

Rule sets: ``seed`` (the built-in rule; peers get its SigmaHQ twin
proc_creation_win_mofcomp_execution.yml), ``sigmahq`` (the 1,183 rules of
rules/windows/process_creation) and ``all`` (every applicable rule: those plus threat
hunting and emerging threats, 1,415).  Event sets: ``corpus`` (the bench corpus,
../shared/data/events) and the two halves of the held-out set (bench/heldout.py:
``look``, which may be inspected while working on the matcher, and ``measure``, which is
only timed).  Nothing in the matcher was tuned on the bench corpus.

The compiled engine runs every event of each set, ``--passes`` times (at least
``--min-seconds``): the best pass is reported with the spread (median and worst pass),
because the machine is shared; then the same events through ``match_batch`` in batches of
512, as the pipeline's worker hands them over (one call per batch).  The reference
engine and the peers (pySigma's SQLite backend runs in this venv; azuma and
sigma-rule-matcher in their own, made by bench/peers/setup.sh) run a stride sample
(``--sample``) of the bench corpus, and the compiled engine is timed on the same sample
for the ratios.

    .venv/bin/python bench/matcher.py                   # table and targets
    .venv/bin/python bench/matcher.py --json            # one JSON object per row
    .venv/bin/python bench/matcher.py --engines compiled --no-rss   # hot loop and sporadic

Sporadic (compiled engine): events one at a time, each after a sleep and a walk over unrelated
memory, so the matcher's tables are cache-cold, as on a server with a few starts per second.
The same run times a call that does nothing (``floor``: the Python call, the clock reads and
the cold interpreter path every call pays) the same way, and prints the matcher's time over it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "data" / "events" / "process_creation_corpus.jsonl.gz"
SIGMA = SHARED / "data" / "sigma-rules"
RULES = SIGMA / "rules" / "windows" / "process_creation"
ALL_RULES = [RULES, SIGMA / "rules-threat-hunting", SIGMA / "rules-emerging-threats"]
SEED_TWIN = "proc_creation_win_mofcomp_execution.yml"
PEERS = {"azuma": "azuma", "sigma-rule-matcher": "srm", "sqlite": "sqlite"}
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

# The targets (issue 13): ns/event ceilings, the ratio floor against pySigma SQLite, RSS.
TARGETS = {("sigmahq", "ns"): 3000, ("all", "ns"): 4000, ("seed", "ns"): 100}


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


def load_ruleset(name):
    if name == "seed":
        from sensor.detect.seed import seed_rule

        return [seed_rule()]
    import sensor

    rules, _report = sensor.load_rules([RULES] if name == "sigmahq" else ALL_RULES, builtin=False)
    return rules


def rule_files(name):
    if name == "seed":
        return [RULES / SEED_TWIN]
    dirs = [RULES] if name == "sigmahq" else ALL_RULES
    return sorted(p for d in dirs for p in d.rglob("*.yml"))


def time_engine(matcher, events, passes, min_seconds):
    """ns/event of each pass (at least ``passes`` passes and ``min_seconds``)."""
    match = matcher.match
    out = []
    t_end = time.perf_counter() + min_seconds
    while len(out) < passes or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for ev in events:
            match(ev)
        out.append((time.perf_counter() - t0) / len(events) * 1e9)
    return out


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


BATCH = 512   # the pipeline's batch size (sensor.daemon.pipeline)


def time_engine_batch(matcher, events, passes, min_seconds):
    """ns/event of each pass of ``match_batch`` over ``events`` in batches of BATCH, as the
    pipeline hands them over (None when the engine has no batch call)."""
    batch = getattr(matcher, "match_batch", None)
    if batch is None:
        return None
    chunks = [events[k:k + BATCH] for k in range(0, len(events), BATCH)]
    out = []
    t_end = time.perf_counter() + min_seconds
    while len(out) < passes or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for c in chunks:
            batch(c)
        out.append((time.perf_counter() - t0) / len(events) * 1e9)
    return out


class _Noop:
    """A matcher that does nothing: the floor of the sporadic measurement."""

    @staticmethod
    def match(event):
        return []


def rss_child(engine, ruleset):
    """RSS (MiB) the loaded rule set adds, measured in a fresh interpreter."""
    code = (
        "import json, sys; sys.path[:0] = [%r, %r]\n"
        "from matcher import rss_mb, load_ruleset\n"
        "import sensor, sensor.detect.loader, sensor.detect.seed, sensor.detect.matcher, re2\n"
        "a = rss_mb(); rules = load_ruleset(%r); b = rss_mb()\n"
        "m = sensor.create_matcher(rules, %r); c = rss_mb()\n"
        "print(json.dumps({'rules_ir_mb': b - a, 'matcher_mb': c - b}))\n"
    ) % (str(ROOT), str(ROOT / "bench"), ruleset, engine)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def peer_events(events):
    """Plain dicts of strings for the peers (missing values left out)."""
    return [{k: (v if isinstance(v, str) else str(v)) for k, v in ev.items() if v is not None}
            for ev in events]


def run_peer(peer, ruleset, files, events_file, min_seconds):
    py = ROOT / "bench" / f".venv-{PEERS[peer]}" / "bin" / "python"
    if not py.exists():
        if peer != "sqlite":
            return {"engine": peer, "ruleset": ruleset, "skipped": f"{py} missing: run bench/peers/setup.sh"}
        py = Path(sys.executable)      # the backend is a test dependency of this venv
    cmd = [str(py), str(ROOT / "bench" / "peers" / "run_peer.py"), peer, events_file,
           "--min-seconds", str(min_seconds)] + [str(p) for p in files]
    out = subprocess.run(cmd, capture_output=True, text=True)
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"engine": peer, "ruleset": ruleset, "skipped": (out.stderr or "no output")[-300:]}
    res["ruleset"] = ruleset
    res["engine"] = peer
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the Sigma matcher engines and Python peers.")
    ap.add_argument("--rulesets", default="seed,sigmahq,all")
    ap.add_argument("--engines", default="compiled,reference,sqlite,azuma,sigma-rule-matcher")
    ap.add_argument("--events", default="corpus,look,measure",
                    help="event sets for the compiled engine: corpus, look, measure")
    ap.add_argument("--sample", type=int, default=200,
                    help="corpus events (stride sample) for the reference engine and the peers")
    ap.add_argument("--passes", type=int, default=7, help="timed passes per measurement (at least)")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timing budget per measurement")
    ap.add_argument("--no-rss", action="store_true", help="skip the RSS measurement")
    ap.add_argument("--json", action="store_true", help="print one JSON object per row")
    ap.add_argument("--sporadic", type=int, default=200, metavar="N",
                    help="compiled engine: also time N corpus events one at a time, cache-cold (0: skip)")
    ap.add_argument("--gap", type=float, default=0.05, help="sporadic: seconds of sleep before each event")
    ap.add_argument("--thrash-mb", type=float, default=16.0,
                    help="sporadic: MiB of other memory walked before each event")
    args = ap.parse_args(argv)

    if not CORPUS.exists():
        print(f"events file {CORPUS} not found", file=sys.stderr)
        return 2
    import heldout
    import sensor
    from sensor.detect.matcher import ENGINES

    engines = [e for e in args.engines.split(",") if e]
    corpus = load_events(CORPUS)
    look, measure = heldout.halves(heldout.load())
    sets = {"corpus": corpus, "look": look, "measure": measure}
    sets = {k: v for k, v in sets.items() if k in args.events.split(",")}
    step = max(1, len(corpus) // max(1, args.sample))
    sample = corpus[::step][:args.sample]
    results = []
    floor = None
    with tempfile.TemporaryDirectory() as tmp:
        sample_file = os.path.join(tmp, "events.json")
        with open(sample_file, "w", encoding="utf-8") as fh:
            json.dump(peer_events(sample), fh)
        for ruleset in args.rulesets.split(","):
            rules = load_ruleset(ruleset)
            compiled_sample = None
            for engine in engines:
                if engine in ("compiled", "reference"):
                    if engine not in ENGINES:
                        results.append({"engine": engine, "ruleset": ruleset, "skipped": "not built"})
                        continue
                    m = sensor.create_matcher(rules, engine)
                    rss = None if args.no_rss else rss_child(engine, ruleset)
                    if engine == "compiled":
                        for name, evs in sets.items():
                            passes = time_engine(m, evs, args.passes, args.min_seconds)
                            row = {"engine": engine, "ruleset": ruleset, "events": name,
                                   "rules_loaded": len(rules), "n": len(evs),
                                   "ns_per_event": min(passes), "median": statistics.median(passes),
                                   "worst_pass": max(passes), "passes": len(passes)}
                            if rss:
                                row["rss_added_mb"] = rss["matcher_mb"]
                            bpasses = time_engine_batch(m, evs, args.passes, args.min_seconds)
                            if bpasses:
                                row.update(batch_ns_per_event=min(bpasses),
                                           batch_median=statistics.median(bpasses))
                            if name == "corpus" and args.sporadic > 0:
                                if floor is None:
                                    floor = time_sporadic(_Noop(), evs, args.gap, args.thrash_mb,
                                                          args.sporadic)[0]
                                med, mean, p90 = time_sporadic(m, evs, args.gap, args.thrash_mb,
                                                               args.sporadic)
                                row.update(sporadic_ns_median=med, sporadic_ns_mean=mean,
                                           sporadic_floor_ns_median=floor,
                                           sporadic_ns_p90=p90, sporadic_events=args.sporadic,
                                           sporadic_gap_s=args.gap, sporadic_thrash_mb=args.thrash_mb)
                            results.append(row)
                        compiled_sample = min(time_engine(m, sample, args.passes, args.min_seconds / 2))
                        results.append({"engine": engine, "ruleset": ruleset, "events": "sample",
                                        "rules_loaded": len(rules), "n": len(sample),
                                        "ns_per_event": compiled_sample})
                    else:
                        evs = corpus if ruleset == "seed" else sample
                        passes = time_engine(m, evs, 3, args.min_seconds)
                        results.append({"engine": engine, "ruleset": ruleset,
                                        "events": "corpus" if ruleset == "seed" else "sample",
                                        "rules_loaded": len(rules), "n": len(evs),
                                        "ns_per_event": min(passes),
                                        "rss_added_mb": rss["matcher_mb"] if rss else None})
                elif engine in PEERS:
                    res = run_peer(engine, ruleset, rule_files(ruleset), sample_file, args.min_seconds)
                    if "skipped" not in res:
                        res = {"engine": engine, "ruleset": ruleset, "events": "sample",
                               "rules_loaded": res.get("rules_loaded", res.get("loaded")),
                               "n": len(sample), "ns_per_event": res.get("ns_per_event"),
                               "rss_added_mb": res.get("rss_added_mb", res.get("rss_mb"))}
                    results.append(res)
                else:
                    print(f"unknown engine {engine!r}", file=sys.stderr)
                    return 2

    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    print_table(results)
    return 0


def print_table(results) -> None:
    comp = {(r["ruleset"], r["events"]): r for r in results
            if r.get("engine") == "compiled" and "ns_per_event" in r}
    print(f"{'engine':<19} {'ruleset':<8} {'events':<8} {'rules':>5} {'n':>5} {'ns/event':>10} "
          f"{'median':>9} {'worst':>9} {'x compiled':>10} {'RSS MiB':>8}")
    for r in results:
        if "skipped" in r:
            print(f"{r['engine']:<19} {r['ruleset']:<8} skipped: {r['skipped']}")
            continue
        ns = r["ns_per_event"]
        if ns is None:
            continue
        base = comp.get((r["ruleset"], r["events"]))
        ratio = f"{ns / base['ns_per_event']:10.1f}" if base and r.get("engine") != "compiled" else f"{'':>10}"
        med = f"{r['median']:9,.0f}" if "median" in r else f"{'':>9}"
        worst = f"{r['worst_pass']:9,.0f}" if "worst_pass" in r else f"{'':>9}"
        rss = r.get("rss_added_mb")
        print(f"{r['engine']:<19} {r['ruleset']:<8} {r['events']:<8} {r['rules_loaded'] or 0:>5} "
              f"{r['n']:>5} {ns:>10,.0f} {med} {worst} {ratio} "
              f"{'' if rss is None else f'{rss:8.1f}'}")
        if "batch_ns_per_event" in r:
            print(f"{'  batches of ' + str(BATCH):<19} {r['ruleset']:<8} {r['events']:<8} "
                  f"{r['rules_loaded'] or 0:>5} {r['n']:>5} {r['batch_ns_per_event']:>10,.0f} "
                  f"{r['batch_median']:9,.0f} {'':>9} {r['batch_ns_per_event'] / ns:10.2f}")
    print("ns/event: best pass; median and worst pass show the spread.  x compiled: the row's "
          "time over the compiled engine's on the same events (batch rows: match_batch over "
          f"batches of {BATCH} / match called per event, same run).")
    print("\ntargets:")
    for (ruleset, _), limit in TARGETS.items():
        for ev in ("corpus", "look", "measure"):
            r = comp.get((ruleset, ev))
            if r:
                ok = "met" if r["ns_per_event"] <= limit else \
                    f"NOT met: {r['ns_per_event'] / limit:.2f}x the target"
                print(f"  {ruleset:8} {ev:8} {r['ns_per_event']:9,.0f} ns/event (target <= {limit:,}): {ok}")
                if "batch_ns_per_event" in r:
                    b = r["batch_ns_per_event"]
                    ok = "met" if b <= limit else f"NOT met: {b / limit:.2f}x the target"
                    print(f"  {ruleset:8} {ev:8} {b:9,.0f} ns/event in batches of {BATCH} "
                          f"(target <= {limit:,}): {ok}")
    for r in results:
        if r.get("engine") == "sqlite" and r.get("ns_per_event"):
            base = comp.get((r["ruleset"], "sample"))
            if base:
                x = r["ns_per_event"] / base["ns_per_event"]
                print(f"  {r['ruleset']:8} pySigma SQLite / compiled on the same events: {x:,.0f}x "
                      f"(target >= 1,000x): {'met' if x >= 1000 else 'NOT met'}")
    for key, r in comp.items():
        if key[0] == "all" and r.get("rss_added_mb") is not None and key[1] == "corpus":
            print(f"  all      RSS added by the rule set's matcher: {r['rss_added_mb']:.1f} MiB "
                  f"(target <= 20): {'met' if r['rss_added_mb'] <= 20 else 'NOT met'}")
    for r in results:
        if "sporadic_ns_median" in r:
            print(f"sporadic {r['engine']} {r['ruleset']}: {r['sporadic_events']} events one at a time "
                  f"({r['sporadic_gap_s'] * 1000:.0f} ms apart, {r['sporadic_thrash_mb']:g} MiB walked "
                  f"before each): median {r['sporadic_ns_median'] / 1000:.2f} us, mean "
                  f"{r['sporadic_ns_mean'] / 1000:.2f} us, p90 {r['sporadic_ns_p90'] / 1000:.2f} us per "
                  f"event; hot loop {r['ns_per_event'] / 1000:.2f} us "
                  f"(x{r['sporadic_ns_median'] / r['ns_per_event']:.0f}); a call that does nothing, "
                  f"timed the same way: {r['sporadic_floor_ns_median'] / 1000:.2f} us, so the matcher "
                  f"adds {(r['sporadic_ns_median'] - r['sporadic_floor_ns_median']) / 1000:.2f} us")


if __name__ == "__main__":
    sys.exit(main())
