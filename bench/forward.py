"""Alert forwarding benchmark: spool -> forwarder -> local HTTPS receiver (real TLS, real sockets).

Measures, per configuration:
- drain: alerts/s the forwarder delivers from a filled spool (its capacity, disk writes excluded);
- throughput: alerts/s from the first enqueue (spool commit, synchronous=FULL) to the last 2xx;
- latency: p50/p99 from enqueue to the 2xx that confirmed the alert, with alerts enqueued at a
  steady rate (default 100/s).

Configurations: batched (batch_size 500) vs one alert per request, gzip on vs off. The baseline
(ratio 1.00) is one-per-request without gzip, measured in the same run. The receiver runs in a
separate process so it does not share the GIL with the forwarder.

Targets (issue 7): >= 5,000 alerts/s batched; p99 <= 1 s at 100 alerts/s.

    python bench/forward.py            # full run
    python bench/forward.py --quick    # smaller counts
    python bench/forward.py --json     # machine-readable
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sensor.deliver.forwarder import DeliveryConfig, Forwarder  # noqa: E402
from sensor.deliver.outputs import build_output  # noqa: E402
from sensor.deliver.spool import Spool  # noqa: E402
from sensor.testing.receiver import sample_alert  # noqa: E402


def start_receiver() -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "sensor.testing.receiver", "--json"], cwd=REPO,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, info


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q / 100 * (len(values) - 1)))))
    return values[k]


def run_case(info: dict, fmt: str, batch_size: int, gzip: bool, alerts: list[dict], rate: float | None,
             linger: float, workdir: Path, chunk: int = 1, prefill: bool = False,
             concurrency: int = 2) -> dict:
    """Deliver ``alerts`` (at ``rate``/s one per commit, or as fast as possible ``chunk`` per commit).

    ``prefill``: spool everything first, then time the forwarder alone (its delivery capacity).
    """
    db = workdir / f"spool-{fmt}-{batch_size}-{int(gzip)}-{rate}.db"
    sp = Spool(db)
    out = build_output({"format": fmt, "url": info["url"], "ca_file": info["ca_file"], "gzip": gzip})
    enq: dict[str, float] = {}
    lat: list[float] = []
    done = threading.Event()
    n = len(alerts)
    lock = threading.Lock()

    def delivered(ids):
        t = time.perf_counter()
        with lock:
            lat.extend(t - enq[i] for i in ids if i in enq)
            if len(lat) >= n:
                done.set()

    if prefill:
        for k in range(0, n, 100):
            sp.put_many(alerts[k:k + 100])
    fwd = Forwarder(sp, out, DeliveryConfig(batch_size=batch_size, linger=linger if batch_size > 1 else 0.0,
                                            backoff_base=0.05, backoff_cap=0.5, concurrency=concurrency),
                    on_delivered=delivered)
    t0 = time.perf_counter()
    if prefill:
        for a in alerts:
            enq[a["id"]] = t0
    fwd.start()
    if prefill:
        pass
    elif rate:
        for k, a in enumerate(alerts):
            pause = t0 + k / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            enq[a["id"]] = time.perf_counter()
            sp.put(a)
    else:
        for k in range(0, n, chunk):
            part = alerts[k:k + chunk]
            t = time.perf_counter()
            for a in part:
                enq[a["id"]] = t
            sp.put_many(part)
    t_enq = max(time.perf_counter() - t0, 1e-9)
    ok = done.wait(600)
    t_all = time.perf_counter() - t0
    stats = fwd.stats()
    fwd.stop()
    out.close()
    sp.close()
    return {
        "format": fmt, "batch_size": batch_size, "gzip": gzip, "rate": rate, "alerts": n,
        "alerts_per_commit": 100 if prefill else 1 if rate else chunk, "concurrency": concurrency,
        "complete": ok and len(lat) == n, "seconds": round(t_all, 3),
        "alerts_per_s": round(n / t_all, 1), "enqueue_per_s": None if prefill else round(n / t_enq, 1),
        "p50_ms": round(percentile(lat, 50) * 1000, 1), "p99_ms": round(percentile(lat, 99) * 1000, 1),
        "requests": stats["requests"], "failed_attempts": stats["failed_attempts"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", default="ecs", help="ecs, splunk_hec, elasticsearch, webhook")
    ap.add_argument("--alerts", type=int, default=20000, help="alerts for the batched throughput runs")
    ap.add_argument("--single-alerts", type=int, default=2000, help="alerts for one-per-request runs")
    ap.add_argument("--rate", type=float, default=100.0, help="alerts/s for the latency runs")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of the latency runs")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--linger", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight (DeliveryConfig.concurrency)")
    ap.add_argument("--enqueue-chunk", type=int, default=100,
                    help="alerts per spool commit in the throughput runs (a burst from one ETW buffer); "
                         "the latency runs always commit one alert at a time")
    ap.add_argument("--quick", action="store_true", help="5,000 / 500 alerts, 3 s latency runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.alerts, args.single_alerts, args.duration = 5000, 500, 3.0

    pool = [sample_alert(i) for i in range(max(args.alerts, args.single_alerts, int(args.rate * args.duration)))]
    size = statistics.mean(len(json.dumps(a)) for a in pool[:100])
    proc, info = start_receiver()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
            work = Path(tmp)
            n_lat = int(args.rate * args.duration)
            for batch_size, n in ((1, args.single_alerts), (args.batch_size, args.alerts)):
                for gz in (False, True):
                    c = args.concurrency
                    rows.append({"mode": "drain", **run_case(info, args.format, batch_size, gz, pool[:n],
                                                             None, args.linger, work, prefill=True, concurrency=c)})
                    rows.append({"mode": "throughput", **run_case(info, args.format, batch_size, gz, pool[:n],
                                                                  None, args.linger, work, args.enqueue_chunk,
                                                                  concurrency=c)})
                    rows.append({"mode": f"latency@{args.rate:g}/s", **run_case(
                        info, args.format, batch_size, gz, pool[:n_lat], args.rate, args.linger, work,
                        concurrency=c)})
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    for mode in ("drain", "throughput"):
        base = next(r["alerts_per_s"] for r in rows if r["mode"] == mode and r["batch_size"] == 1 and not r["gzip"])
        for r in rows:
            if r["mode"] == mode:
                r["ratio_vs_baseline"] = round(r["alerts_per_s"] / base, 2)
    # The raw cost of one durable commit per alert on this disk, for reference.
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        sp = Spool(Path(tmp) / "put.db")
        k = min(1000, len(pool))
        t = time.perf_counter()
        for a in pool[:k]:
            sp.put(a)
        put_rate = k / (time.perf_counter() - t)
        sp.close()
    meta = {"format": args.format, "mean_alert_json_bytes": round(size), "linger_s": args.linger,
            "concurrency": args.concurrency, "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "enqueue_chunk": args.enqueue_chunk,
            "spool_single_put_per_s": round(put_rate, 1),
            "spool": "SQLite WAL synchronous=FULL"}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))
        return 0
    print(f"format={meta['format']}  alert ~{meta['mean_alert_json_bytes']} B JSON  linger={args.linger}s  "
          f"concurrency={args.concurrency}  cpus={os.cpu_count()}  spool: {meta['spool']}")
    print(f"throughput runs commit {args.enqueue_chunk} alerts per spool transaction; latency runs commit each "
          f"alert alone; one durable put alone: {put_rate:,.0f}/s on this disk")
    print("baseline = one alert per request, no gzip (throughput ratio 1.00)\n")
    hdr = f"{'mode':<16}{'batch':>6}{'gzip':>6}{'alerts':>8}{'alerts/s':>11}{'ratio':>7}{'enq/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'reqs':>7}{'ok':>4}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        enq = "-" if r["enqueue_per_s"] is None else f"{r['enqueue_per_s']:,.0f}"
        p50 = "-" if r["mode"] == "drain" else f"{r['p50_ms']:.1f}"
        p99 = "-" if r["mode"] == "drain" else f"{r['p99_ms']:.1f}"
        print(f"{r['mode']:<16}{r['batch_size']:>6}{'on' if r['gzip'] else 'off':>6}{r['alerts']:>8}"
              f"{r['alerts_per_s']:>11,.0f}{r.get('ratio_vs_baseline', ''):>7}{enq:>9}"
              f"{p50:>9}{p99:>9}{r['requests']:>7}{'y' if r['complete'] else 'N':>4}")
    tp = max(r["alerts_per_s"] for r in rows if r["mode"] in ("drain", "throughput") and r["batch_size"] > 1)
    tp_e2e = max(r["alerts_per_s"] for r in rows if r["mode"] == "throughput" and r["batch_size"] > 1)
    p99 = max(r["p99_ms"] for r in rows if r["mode"].startswith("latency") and r["batch_size"] > 1)
    print("\ndrain = spool filled first, forwarder timed alone; throughput = enqueue and delivery together "
          "(bounded by the disk's fsync rate when the spool commits are slow)")
    print(f"targets: batched >= 5,000 alerts/s -> forwarder {tp:,.0f}, end to end {tp_e2e:,.0f} "
          f"({'met' if tp >= 5000 else 'NOT met'}); "
          f"p99 <= 1000 ms at {args.rate:g}/s batched -> {p99:.0f} ms ({'met' if p99 <= 1000 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
