"""PE version-info benchmark: microseconds per file to get OriginalFilename, side by side.

Readers, all measured in the same run over the same files (OS page cache warm):
- native cold:    sensor._pe parse of the file, no cache (open + a few reads + close);
- native cached, watched: VersionInfoCache hit vouched for by change notifications (the
                  sensor's default where the OS can watch the folders): no system call;
- native cached, stat: VersionInfoCache hit checked with a stat() of (size, mtime_ns);
- cached, known identity: VersionInfoCache hit when the caller already has (size, mtime_ns);
- I/O floor:      os.open + os.fstat + os.pread(4 KiB) + os.close alone, the system calls
                  any cold read of a file makes (how far "cold" could go on this machine);
- python twin:    the struct-based pure-Python reader;
- pefile:         pefile.PE(fast_load) + resource directory parse (the baseline, ratio 1.00);
- LIEF:           lief.PE.parse + resources_manager.version (when lief is installed).

Targets (issue 5): native cold <= 20 us/file and >= 100x pefile; cached <= 1 us.

    python bench/pe.py                 # fixtures in tests/data/pe (+ ../shared/data/pe when present)
    python bench/pe.py FILE...         # your own files
    python bench/pe.py --json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sensor.enrich import pe  # noqa: E402


def default_sets() -> dict[str, list[str]]:
    """Two sets: tiny synthetic fixtures (2-5 KiB) and real-size images when ../shared is present."""
    sets = {"fixtures (tests/data/pe)": sorted(str(p) for p in (REPO / "tests" / "data" / "pe").glob("*.exe"))}
    shared = REPO.parent / "shared" / "data" / "pe"
    if shared.is_dir():
        sets["images (../shared/data/pe)"] = sorted(str(p) for p in shared.rglob("*.exe"))
    return sets


def readable(files: list[str]) -> list[str]:
    """Keep the files that have version info (every reader is timed on success paths)."""
    out = []
    for f in files:
        try:
            if pe.READERS["python"][0](f)["OriginalFilename"]:
                out.append(f)
        except pe.PeError:
            pass
    return out


def measure(fn, files: list[str], min_time: float, repeat: int = 5) -> tuple[float, int]:
    """Microseconds per file: the best of ``repeat`` timings, each of whole rounds over the
    files lasting at least min_time / repeat (the minimum filters scheduler noise)."""
    for f in files:  # warm-up
        fn(f)
    best, total_rounds = float("inf"), 0
    for _ in range(repeat):
        rounds, start = 0, time.perf_counter()
        while True:
            for f in files:
                fn(f)
            rounds += 1
            elapsed = time.perf_counter() - start
            if rounds >= 3 and elapsed >= min_time / repeat:
                break
        best = min(best, elapsed * 1e6 / (rounds * len(files)))
        total_rounds += rounds
    return best, total_rounds


def readers() -> dict[str, object]:
    out: dict[str, object] = {}
    if "native" in pe.READERS:
        native = pe.READERS["native"][0]
        out["native cold"] = lambda f: native(f)["OriginalFilename"]
        watched = pe.VersionInfoCache(implementation="native", watch=True)
        if watched.watching:
            out["native cached, watched"] = lambda f: watched.get(f)["OriginalFilename"]
        cache = pe.VersionInfoCache(implementation="native")
        out["native cached, stat"] = lambda f: cache.get(f)["OriginalFilename"]
        ids = {}

        def known(f):
            size, mtime = ids.get(f) or ids.setdefault(f, (os.stat(f).st_size, os.stat(f).st_mtime_ns))
            return cache.get(f, size, mtime)["OriginalFilename"]
        out["native cached, known identity"] = known
    def io_floor(f):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fstat(fd)
            return os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
    out["I/O floor (no parsing)"] = io_floor
    twin = pe.READERS["python"][0]
    out["python twin"] = lambda f: twin(f)["OriginalFilename"]
    try:
        import pefile

        res = [pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]]

        def with_pefile(f):
            p = pefile.PE(f, fast_load=True)
            p.parse_data_directories(directories=res)
            for fi in (getattr(p, "FileInfo", None) or [[]])[0]:
                if fi.Key == b"StringFileInfo":
                    return fi.StringTable[0].entries.get(b"OriginalFilename")
            return None
        out["pefile"] = with_pefile
    except ImportError:
        pass
    try:
        import lief

        lief.logging.disable()

        def with_lief(f):
            versions = lief.PE.parse(f).resources_manager.version
            if not versions:
                return None
            for table in versions[0].string_file_info.children:
                for e in table.entries:
                    if e.key == "OriginalFilename":
                        return e.value
            return None
        out["LIEF"] = with_lief
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="PE files (default: the fixtures)")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per reader and file set (default 1.0)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    sets = {"files given": args.files} if args.files else default_sets()
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "implementation": pe.IMPLEMENTATION}
    report = []
    for label, files in sets.items():
        files = readable(files)
        if not files:
            continue
        rows = []
        for name, fn in readers().items():
            us, rounds = measure(fn, files, args.min_time)
            rows.append({"reader": name, "us_per_file": round(us, 3), "rounds": rounds})
        base = next((r["us_per_file"] for r in rows if r["reader"] == "pefile"), None)
        for r in rows:
            r["speedup_vs_pefile"] = round(base / r["us_per_file"], 1) if base else None
        report.append({"set": label, "files": len(files),
                       "bytes": sum(os.path.getsize(f) for f in files), "results": rows})
    if not report:
        print("no PE files with version info to measure", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"meta": meta, "sets": report}, indent=2))
        return 0
    print(f"Python {meta['python']}, {meta['machine']}; baseline: pefile (ratio = pefile time / time)")
    for rep in report:
        print(f"\n{rep['set']}: {rep['files']} files, {rep['bytes'] / 1024:.0f} KiB")
        print(f"{'reader':32} {'us/file':>10} {'x pefile':>10}")
        for r in rep["results"]:
            ratio = f"{r['speedup_vs_pefile']:.1f}" if r["speedup_vs_pefile"] else "-"
            print(f"{r['reader']:32} {r['us_per_file']:>10.2f} {ratio:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
