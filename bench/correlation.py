"""Correlation engine benchmark: 100 Sigma correlation rules over a generated stream.

The stream: ``--events`` process starts (default 1,000,000), one every 0-20 ms of event time,
on ``--hosts`` computers (default 10,000: the group keys), 40 users, 20 images; 20 base
rules (one per image) and 100 correlations over them, grouped by Computer, of every type
(event_count, value_count, temporal, temporal_ordered, value_sum, value_avg,
value_percentile, value_median).  Nothing here comes from the shared corpus.

Measured in one run, on the same events:

* baseline: generate the event and match it (the compiled matcher when built);
* correlated: the same, and feed the correlation engine (alerts built, not written);
* both in CPU seconds of this process (and wall seconds), so other load on the machine
  counts less; with the collector thresholds scan and run set (``tune_gc``);
* the SQLite backend (pySigma's, when installed) on a slice (``--sqlite``, default 20,000
  events): its time against the engine's on the same slice, and whether the alert counts agree.

    .venv/bin/python bench/correlation.py                # the full run (about 6 CPU minutes)
    .venv/bin/python bench/correlation.py --events 100000 --json
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES = [f"tool{i:02d}" for i in range(20)]
TYPES = ["event_count", "value_count", "temporal", "temporal_ordered", "value_sum", "value_avg",
         "value_percentile", "value_median"]
T0 = 1_735_732_800_000


def rss_mib() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def ruleset_yaml(n_corr: int, seed: int = 7) -> str:
    rnd = random.Random(seed)
    docs = []
    for i, img in enumerate(IMAGES):
        docs.append(f"title: {img}\nid: 00000000-0000-4000-8000-{i:012d}\nname: {img}\n"
                    "logsource:\n    category: process_creation\n    product: windows\n"
                    f"detection:\n    selection:\n        Image|endswith: '\\{img}.exe'\n"
                    "    condition: selection\n")
    for i in range(n_corr):
        kind = TYPES[i % len(TYPES)]
        k = 3 if kind.startswith("temporal") else rnd.choice([1, 2])
        refs = rnd.sample(IMAGES, k)
        span = rnd.choice(["1m", "5m", "15m"])
        # thresholds that fire now and then (about 1 % of events), as detections do
        cond = {"event_count": "{gte: 8}", "value_count": "{field: User, gte: 4}",
                "temporal": "", "temporal_ordered": "",
                "value_sum": "{field: Size, gt: 5000}", "value_avg": "{field: Size, gt: 995}",
                "value_percentile": "{field: Size, percentile: 90, gte: 998}",
                "value_median": "{field: Size, lt: 2}"}[kind]
        docs.append(f"title: correlation {i} {kind}\nid: 10000000-0000-4000-8000-{i:012d}\n"
                    f"correlation:\n    type: {kind}\n    rules: [{', '.join(refs)}]\n"
                    f"    group-by: [Computer]\n    timespan: {span}\n"
                    + (f"    condition: {cond}\n" if cond else ""))
    return "\n---\n".join(docs)


def events(n: int, hosts: int, seed: int = 11):
    """Generated process starts, as the sensor's events (a fresh object each)."""
    from sensor.events import ProcessEvent

    rnd = random.Random(seed)
    t = T0
    base = dt.datetime(1970, 1, 1)
    for i in range(n):
        t += rnd.randint(0, 20)
        when = base + dt.timedelta(milliseconds=t)
        yield ProcessEvent({
            "Image": f"C:\\Tools\\{rnd.choice(IMAGES)}.exe",
            "Computer": f"host{rnd.randrange(hosts)}",
            "User": f"user{rnd.randrange(40)}",
            "Size": rnd.randrange(1000),
            "ProcessId": i,
            "UtcTime": when.strftime("%Y-%m-%d %H:%M:%S.") + "%03d" % (when.microsecond // 1000),
        })


def load(n_corr: int):
    import tempfile

    from sensor.detect.loader import load_rules
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "bench.yml"
        p.write_text(ruleset_yaml(n_corr))
        report = load_rules([p], builtin=False)
    assert not report.rejected, report.rejected[:3]
    return report


def run(n, hosts, report, engine_name, correlate: bool, max_state: int):
    from sensor.detect.correlate import CorrelationEngine
    from sensor.detect.matcher import create

    matcher = create(report.rules, engine_name)
    corr = CorrelationEngine(report.rules, report.correlations, lateness_ms=0,
                             max_state=max_state) if correlate else None
    gc.collect()
    rss0 = rss_mib()
    alerts = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    match = matcher.match
    peak = rss0
    for i, ev in enumerate(events(n, hosts)):
        m = match(ev)
        if corr is not None:
            alerts += len(corr.feed(ev, m))
        if not i % 20_000:          # the peak, sampled (the state grows, then evicts)
            peak = max(peak, rss_mib())
    if corr is not None:
        alerts += len(corr.flush())
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    out = {"events": n, "seconds": round(secs, 2), "events_per_s": round(n / secs),
           "cpu_seconds": round(cpu, 2), "events_per_cpu_s": round(n / cpu),
           "rss_mib_added": round(rss_mib() - rss0, 1),
           "rss_mib_peak_added": round(max(peak, rss_mib()) - rss0, 1),
           "rss_mib_peak": round(max(peak, rss_mib()), 1), "matcher": matcher.engine}
    if corr is not None:
        st = corr.stats()
        out.update(alerts=alerts, entries=st["entries"], evicted=st["evicted"],
                   updates=st["window_updates"],
                   groups=sum(v["groups"] for v in st["by_correlation"].values()))
    return out


def sqlite_slice(n, hosts, report, n_corr):
    """The backend's SQL for the first ``n_corr`` correlations over ``n`` events, against the
    engine on the same correlations and events."""
    import re
    import sqlite3

    try:
        from sigma.backends.sqlite import sqliteBackend
        from sigma.collection import SigmaCollection
    except ImportError:
        return {"skipped": "pysigma-backend-sqlite is not installed"}
    from sensor.detect.correlate import CorrelationEngine
    from sensor.detect.matcher import create
    from sensor.detect.sigma import _register_aliases

    _register_aliases()
    text = ruleset_yaml(n_corr)
    evs = list(events(n, hosts))
    db = sqlite3.connect(":memory:")
    db.create_function("regexp", 2, lambda p, v: v is not None and re.search(p, str(v)) is not None)
    db.execute("CREATE TABLE logs (ts_ms INTEGER, Image TEXT COLLATE NOCASE, Computer TEXT "
               "COLLATE NOCASE, User TEXT COLLATE NOCASE, Size)")
    from sensor.detect.correlate import parse_time_ms
    db.executemany("INSERT INTO logs VALUES (?,?,?,?,?)",
                   [(parse_time_ms(e["UtcTime"]), e["Image"], e["Computer"], e["User"], e["Size"])
                    for e in evs])
    backend = sqliteBackend(timestamp_field="ts_ms", timestamp_format="unix_ms")
    t0 = time.perf_counter()
    queries = [q for q in backend.convert(SigmaCollection.from_yaml(text))
               if q.lstrip().upper().startswith("WITH")]
    sql_alerts = sum(len(db.execute(q).fetchall()) for q in queries)
    sql_secs = time.perf_counter() - t0
    import tempfile

    from sensor.detect.loader import load_rules
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "slice.yml"
        p.write_text(text)
        rep = load_rules([p], builtin=False)
    matcher = create(rep.rules)
    t0 = time.perf_counter()
    corr = CorrelationEngine(rep.rules, rep.correlations)
    ours = 0
    for e in evs:
        ours += len(corr.feed(e, matcher.match(e)))
    ours += len(corr.flush())
    our_secs = time.perf_counter() - t0
    return {"events": n, "correlations": n_corr, "sqlite_seconds": round(sql_secs, 2),
            "engine_seconds": round(our_secs, 2),
            "engine_vs_sqlite": round(sql_secs / our_secs, 2) if our_secs else None,
            "sqlite_alerts": sql_alerts, "engine_alerts": ours, "agree": sql_alerts == ours}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--correlations", type=int, default=100)
    ap.add_argument("--max-state", type=int, default=None,
                    help="entries per correlation (default: the sensor's, 20000)")
    ap.add_argument("--engine", default=None, help="matcher engine (default: the best built)")
    ap.add_argument("--sqlite", type=int, default=20_000, metavar="N",
                    help="events in the SQLite backend slice (0: skip)")
    ap.add_argument("--sqlite-correlations", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    report = load(a.correlations)
    from sensor.detect.correlate import DEFAULT_MAX_STATE, tune_gc
    if a.max_state is None:
        a.max_state = DEFAULT_MAX_STATE
    tune_gc()        # what scan and run do when correlations are loaded
    base = run(a.events, a.hosts, report, a.engine, False, a.max_state)
    corr = run(a.events, a.hosts, report, a.engine, True, a.max_state)
    result = {"baseline": base, "correlated": corr,
              "throughput_ratio": round(corr["events_per_cpu_s"] / base["events_per_cpu_s"], 3),
              "correlation_cpu_us_per_event": round((corr["cpu_seconds"] - base["cpu_seconds"])
                                                    / a.events * 1e6, 2),
              "correlations": len(report.correlations), "hosts": a.hosts}
    if a.sqlite:
        result["sqlite_slice"] = sqlite_slice(a.sqlite, a.hosts, report, a.sqlite_correlations)
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"{a.events:,} events, {a.hosts:,} hosts (group keys), {len(report.correlations)} "
          f"correlations over {len(report.rules)} rules; matcher {base['matcher']}")
    print(f"  baseline (generate + match): {base['events_per_cpu_s']:>9,} events per CPU second "
          f"({base['cpu_seconds']} s CPU, {base['seconds']} s wall, +{base['rss_mib_added']} MiB RSS, "
          f"peak +{base['rss_mib_peak_added']} MiB)")
    print(f"  with correlations:           {corr['events_per_cpu_s']:>9,} events per CPU second "
          f"({corr['cpu_seconds']} s CPU, {corr['seconds']} s wall, +{corr['rss_mib_added']} MiB RSS, "
          f"peak +{corr['rss_mib_peak_added']} MiB, process peak {corr['rss_mib_peak']} MiB)")
    print(f"  events per wall second: baseline {base['events_per_s']:,}, with correlations "
          f"{corr['events_per_s']:,} (load average {os.getloadavg()[0]:.1f} at the end)")
    per_update = (corr["cpu_seconds"] - base["cpu_seconds"]) / max(1, corr["updates"]) * 1e6
    print(f"  ratio {result['throughput_ratio']}, correlation cost "
          f"{result['correlation_cpu_us_per_event']} us CPU/event = {corr['updates'] / a.events:.1f} "
          f"window updates per event x {per_update:.1f} us; {corr['alerts']:,} alerts, "
          f"{corr['entries']:,} entries in {corr['groups']:,} groups at the end, "
          f"{corr['evicted']:,} evicted (max_state {a.max_state:,} per correlation)")
    s = result.get("sqlite_slice")
    if s and "skipped" not in s:
        print(f"  SQLite backend, {s['events']:,} events x {s['correlations']} correlations: "
              f"{s['sqlite_seconds']} s; engine {s['engine_seconds']} s "
              f"(engine {s['engine_vs_sqlite']}x faster); alerts {s['sqlite_alerts']} vs "
              f"{s['engine_alerts']} ({'agree' if s['agree'] else 'DIFFER'})")
    elif s:
        print(f"  SQLite backend: {s['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
