"""The spool's WAL checkpoint policy: what a lost ``-wal`` costs, and what small WALs cost in speed.

For each ``wal_autocheckpoint`` setting (pages; SQLite's default 1000 is the baseline):

- ``commit/s``: alerts committed one per transaction (``synchronous=FULL``, as the pipeline does
  for a batch with one alert), and ``batch10/s`` ten per transaction; the ratio is against the
  baseline measured in the same run;
- ``lost``: a writer process commits alerts one by one and prints each id after its commit; it
  is SIGKILLed at a random point, its ``-wal`` and ``-shm`` files are deleted, and the alerts that
  were committed but are gone are counted (mean and max over the runs).

    python bench/spool_wal.py            # full run
    python bench/spool_wal.py --quick    # fewer alerts and kills
    python bench/spool_wal.py --json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sensor.deliver.spool as spool_mod  # noqa: E402
from sensor.testing.receiver import sample_alert  # noqa: E402

SETTINGS = (1000, 256, 128, 64, 32)

_WRITER = r"""
import sys
import sensor.deliver.spool as m
m.WAL_AUTOCHECKPOINT = int(sys.argv[2])
from sensor.testing.receiver import sample_alert
sp = m.Spool(sys.argv[1])
i = 0
while True:
    a = sample_alert(i)
    sp.put(a)
    print(a["id"], flush=True)
    i += 1
"""


def throughput(pages: int, n: int, per_tx: int, workdir: Path) -> float:
    spool_mod.WAL_AUTOCHECKPOINT = pages
    alerts = [sample_alert(i) for i in range(n)]
    path = workdir / f"tp-{pages}-{per_tx}.sqlite"
    sp = spool_mod.Spool(path)
    t0 = time.perf_counter()
    for i in range(0, n, per_tx):
        sp.put_many(alerts[i:i + per_tx])
    dt = time.perf_counter() - t0
    sp.close()
    return n / dt


def lost_after_kill(pages: int, kill_after: int, workdir: Path) -> int:
    path = workdir / f"kill-{pages}-{kill_after}.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(pages)], stdout=subprocess.PIPE,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    committed = []
    while len(committed) < kill_after:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("writer died")
        committed.append(line.decode().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    committed += [ln.decode().strip() for ln in proc.stdout.read().splitlines() if ln.strip()]
    proc.stdout.close()
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(str(path) + suffix)
        except FileNotFoundError:
            pass
    sp = spool_mod.Spool(path)
    stored = set(sp.ids())
    sp.close()
    return sum(1 for c in committed if c not in stored)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n = 300 if args.quick else 1500
    kills = 3 if args.quick else 8
    rnd = random.Random(args.seed)
    points = [rnd.randint(200, 1500) for _ in range(kills)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="spool-wal-") as tmp:
        work = Path(tmp)
        for pages in SETTINGS:
            one = throughput(pages, n, 1, work)
            ten = throughput(pages, n * 2, 10, work)
            lost = [lost_after_kill(pages, k, work) for k in points]
            rows.append({"wal_autocheckpoint": pages, "commit_per_s": one, "batch10_per_s": ten,
                         "lost_mean": statistics.mean(lost), "lost_max": max(lost), "kills": len(lost)})
    base = rows[0]
    for r in rows:
        r["commit_ratio"] = r["commit_per_s"] / base["commit_per_s"]
        r["batch10_ratio"] = r["batch10_per_s"] / base["batch10_per_s"]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"alert body ~{len(json.dumps(sample_alert(0)))} bytes; kills after {points} alerts")
    print(f"{'pages':>6} {'commit/s':>9} {'ratio':>6} {'batch10/s':>10} {'ratio':>6} {'lost mean':>10} {'lost max':>9}")
    for r in rows:
        print(f"{r['wal_autocheckpoint']:>6} {r['commit_per_s']:>9.0f} {r['commit_ratio']:>6.2f} "
              f"{r['batch10_per_s']:>10.0f} {r['batch10_ratio']:>6.2f} {r['lost_mean']:>10.1f} {r['lost_max']:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
