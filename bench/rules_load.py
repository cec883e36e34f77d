"""Rule loading: Sigma YAML (through pySigma) vs a compiled rule pack, time and memory.

Each mode runs in its own fresh interpreter so that imports and memory are its own.
Baseline = loading the YAML; the ratio says how many times faster the pack loads.

    python bench/rules_load.py [--rules ../shared/data/sigma-rules] [--repeat 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RULES = ROOT.parent / "shared" / "data" / "sigma-rules"

CHILD = r"""
import json, sys, time
import psutil
proc = psutil.Process()
rss0 = proc.memory_info().rss
t0 = time.perf_counter()
from sensor.detect.loader import load_rules
report = load_rules([sys.argv[1]], builtin=False)
t1 = time.perf_counter()
rss1 = proc.memory_info().rss
print(json.dumps({"seconds": t1 - t0, "rules": len(report.rules),
                  "rejected": len(report.rejected), "rss_mib": rss1 / 2**20,
                  "rss_delta_mib": (rss1 - rss0) / 2**20,
                  "pysigma_imported": "sigma" in sys.modules}))
"""


def run(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default=str(DEFAULT_RULES), help="Sigma rules folder")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    if not Path(args.rules).exists():
        print(f"error: {args.rules} not found", file=sys.stderr)
        return 2
    from sensor.detect.loader import compile_paths

    with tempfile.TemporaryDirectory() as tmp:
        pack = os.path.join(tmp, "rules.pack")
        _, size = compile_paths([args.rules], pack)
        results = {}
        for mode, path in (("yaml", args.rules), ("pack", pack)):
            runs = [run(path) for _ in range(args.repeat)]
            results[mode] = {
                "seconds_median": statistics.median(r["seconds"] for r in runs),
                "seconds_min": min(r["seconds"] for r in runs),
                "seconds_max": max(r["seconds"] for r in runs),
                "rules": runs[0]["rules"], "rejected": runs[0]["rejected"],
                "rss_mib": statistics.median(r["rss_mib"] for r in runs),
                "rss_delta_mib": statistics.median(r["rss_delta_mib"] for r in runs),
                "pysigma_imported": runs[0]["pysigma_imported"],
            }
        results["pack"]["bytes"] = size
    base = results["yaml"]["seconds_median"]
    for r in results.values():
        r["speedup_vs_yaml"] = base / r["seconds_median"] if r["seconds_median"] else None
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'mode':6} {'rules':>6} {'load s (min-max)':>22} {'x faster':>9} "
          f"{'RSS MiB':>8} {'+MiB':>6} pySigma")
    for mode, r in results.items():
        print(f"{mode:6} {r['rules']:6d} {r['seconds_median']:8.3f} "
              f"({r['seconds_min']:.3f}-{r['seconds_max']:.3f}) {r['speedup_vs_yaml']:9.1f} "
              f"{r['rss_mib']:8.1f} {r['rss_delta_mib']:6.1f} "
              f"{'yes' if r['pysigma_imported'] else 'no'}")
    print(f"pack size: {results['pack']['bytes']} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
