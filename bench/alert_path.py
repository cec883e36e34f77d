"""Per-alert CPU of the alert path after the matcher, in process: the spool commit, the alert log
line and the forwarder's step (fetch, checksum and JSON, ECS, the jsonl write and fsync, the
acknowledgement), for commits of K alerts, one commit at a time with a pause before each (the
code runs cold, as it does on a quiet server where a commit comes every second or so).

The alerts are the ones the sensor builds for the alerting process starts of bench/live_cost.py
(every SigmaHQ process_creation rule from a pack). CPU is thread CPU time (``time.thread_time``)
of the calling thread, median over the rounds. The baseline is measured in the same run:
``SENSOR_TREE=<other checkout>`` runs that tree's code in a second process, alternating with
this one, round by round, so both see the same load; the ratio is this tree / the other.

    python -m sensor rules compile <sigma>/rules/windows/process_creation -o sigma.pack --allow-rejected
    python bench/alert_path.py --rules sigma.pack                       # this tree alone
    SENSOR_TREE=/path/to/main python bench/alert_path.py --rules sigma.pack   # against main
    python bench/alert_path.py --rules sigma.pack --sync normal         # [spool] sync = "normal"

What it does not measure: building the alerts (``--sections`` of bench/live_cost.py does), the
thread hand-offs and wake-ups of the running sensor, and the HTTP outputs.
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
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_alerts(rules: str, n_starts: int = 200) -> list[dict]:
    from live_cost import ALERTING, Records, fill
    from sensor.detect.alerts import AlertFactory
    from sensor.detect.loader import load_rules
    from sensor.detect.matcher import create
    from sensor.enrich.enricher import Enricher
    from sensor.sources.base import ReadStats
    from sensor.sources.capture import read_capture
    report = load_rules([rules], builtin=True)
    matcher = create(report.rules)
    rec = Records()
    t = time.time()
    factory = AlertFactory()
    out: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "alerting.capture")
        with open(path, "wb") as fh:
            fh.write(rec.header() + rec.rundown(t))
            for i in range(n_starts):
                lines, _ = rec.start(*fill(ALERTING[i % len(ALERTING)], i), t, i)
                fh.write(lines)
        enrich = Enricher()
        for ev in read_capture(path, ReadStats()):
            enrich(ev)
            hit = [report.rules[i] for i in matcher.match(ev)]
            for a in factory.many(hit, ev) if hit else ():
                a["sensor"].update({"host": "BENCH-HOST", "config": "/etc/etw-sensor/sensor.toml"})
                out.append(a)
    return out


def child(alerts_file: str, ks: list[int], rounds: int, pause: float, sync: str) -> None:
    """One tree's measurement: prints JSON {K: {part: median us per commit}} per round block."""
    import logging
    import msgspec
    from sensor.daemon import assemble
    from sensor.deliver.forwarder import DeliveryConfig, Forwarder
    from sensor.deliver.jsonl import JsonlOutput
    from sensor.deliver.spool import Spool
    alerts = msgspec.json.decode(Path(alerts_file).read_bytes())
    clock = time.thread_time_ns
    work = tempfile.mkdtemp(prefix="alert-path-")
    log = logging.getLogger("sensor.alerts")
    log.addHandler(logging.FileHandler(os.path.join(work, "sensor.log")))
    log.propagate = False
    kw = {"sync": sync} if sync != "full" else {}
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        spool = Spool(os.path.join(work, f"spool-{k}.sqlite"), owner=True, **kw)
        fwd = Forwarder(spool, JsonlOutput(os.path.join(work, f"alerts-{k}.jsonl")), DeliveryConfig(linger=0.0))
        parts: dict[str, list[int]] = {"spool commit": [], "log line": [], "forwarder step": []}
        for r in range(rounds):
            group = []
            for j in range(k):
                a = dict(alerts[(r * k + j) % len(alerts)])
                a["id"] = str(uuid.uuid4())
                group.append(a)
            time.sleep(pause)
            t0 = clock()
            spool.put_many(group)
            t1 = clock()
            for a in group:
                assemble._log_alert(a)
            t2 = clock()
            fwd.step()
            t3 = clock()
            parts["spool commit"].append(t1 - t0)
            parts["log line"].append(t2 - t1)
            parts["forwarder step"].append(t3 - t2)
        if spool.depth():
            raise SystemExit(f"K={k}: {spool.depth()} alert(s) not delivered")
        spool.close()
        out[k] = {p: statistics.median(v[3:]) / 1e3 for p, v in parts.items()}
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", required=True, help="a rule pack (or Sigma folder)")
    ap.add_argument("--k", default="1,4,18", help="alerts per commit, comma-separated")
    ap.add_argument("--rounds", type=int, default=60, help="commits per K and block")
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks per tree")
    ap.add_argument("--pause", type=float, default=0.02, help="seconds before each commit (cold code)")
    ap.add_argument("--sync", choices=["full", "normal"], default="full")
    ap.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    ks = [int(x) for x in args.k.split(",")]
    if args.child:
        child(args.child[0], ks, args.rounds, args.pause, args.sync)
        return 0
    import msgspec
    with tempfile.TemporaryDirectory() as tmp:
        alerts = build_alerts(args.rules)
        path = os.path.join(tmp, "alerts.json")
        Path(path).write_bytes(msgspec.json.encode(alerts))
        print(f"{len(alerts)} alerts from {len(set(a['event']['ProcessId'] for a in alerts))} starts", file=sys.stderr)
        trees = {"this": str(HERE.parent)}
        if os.environ.get("SENSOR_TREE"):
            trees["baseline"] = os.path.abspath(os.environ["SENSOR_TREE"])
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.blocks):
            for name, tree in trees.items():
                sync = args.sync if name == "this" else "full"
                argv = [sys.executable, str(HERE / "alert_path.py"), "--rules", args.rules, "--k", args.k,
                        "--rounds", str(args.rounds), "--pause", str(args.pause), "--sync", sync, "--child", path]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, str(HERE)])}
                r = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"{name} ({tree}) failed: {r.stderr[-1500:]}")
                results[name].append(json.loads(r.stdout))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"per-alert CPU of the alert path (thread CPU, median of {args.rounds} commits x {args.blocks} blocks, "
          f"{args.pause * 1000:.0f} ms pause before each commit); load average {load[0]:.1f}; sync {args.sync}")
    print(f"{'K':>3} {'tree':<9} {'spool commit':>13} {'log line':>9} {'forwarder':>10} {'us/alert':>9} {'ratio':>6}")
    for k in ks:
        totals = {}
        for name in trees:
            blocks = [b[str(k)] for b in results[name]]
            part = {p: statistics.median(b[p] for b in blocks) / k for p in blocks[0]}
            totals[name] = sum(part.values())
            ratio = f"{totals['this'] / totals[name]:6.2f}" if name == "baseline" else ""
            print(f"{k:>3} {name:<9} {part['spool commit']:>13.0f} {part['log line']:>9.0f} "
                  f"{part['forwarder step']:>10.0f} {totals[name]:>9.0f} {ratio}")
    if "baseline" in trees:
        print("ratio: this tree's us/alert / the baseline's (SENSOR_TREE), same run, alternating blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
