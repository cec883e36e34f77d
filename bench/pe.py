"""PE version-info benchmark: microseconds per file to get OriginalFilename, side by side.

Readers, all measured in the same run over the same files (OS page cache warm):
- native cold:    sensor.enrich._pe parse of the file, no cache (open + a few reads + close);
- native cached, checked: VersionInfoCache hit, including the one stat() (in C) that proves
                  the file still has the identity it had when parsed;
- native cached, same batch: a hit inside ``cache.batch()`` for a path already checked in
                  that batch (the pipeline opens one per batch of events): no system call;
- I/O floor:      os.open + os.fstat + os.pread(4 KiB) + os.close alone, the system calls
                  any cold read of a file makes (how far "cold" could go on this machine);
- python twin:    the struct-based pure-Python reader;
- pefile:         pefile.PE(fast_load) + resource directory parse (the baseline, ratio 1.00);
- LIEF:           lief.PE.parse + resources_manager.version (when lief is installed).

Targets: native cold <= 20 us/file and >= 100x pefile; cached <= 1 us.

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
        cache = pe.VersionInfoCache(implementation="native")
        out["native cached, checked"] = lambda f: cache.get(f)["OriginalFilename"]
        batched = pe.VersionInfoCache(implementation="native")
        scope = batched.batch()
        scope.__enter__()  # one long batch: every hit after the first round needs no check
        # (the default argument keeps the open scope alive as long as the reader)
        out["native cached, same batch"] = lambda f, _s=scope: batched.get(f)["OriginalFilename"]

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


CORPUS = REPO.parent / "shared" / "data" / "events" / "process_creation_corpus.jsonl.gz"


def recorded_sequence(min_time: float) -> dict | None:
    """Cached lookups in the order a real host produced them: the image of each of the
    corpus's process starts, each distinct image a copy of a fixture, looked up through
    one cache the way the pipeline does (one ``batch()`` per batch of events).  Mean us
    per lookup once every image is cached, for several batch sizes."""
    if not CORPUS.is_file() or "native" not in pe.READERS:
        return None
    import gzip
    import shutil
    import tempfile
    images = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            d = rec.get("data", rec)
            img = d.get("Image") or d.get("NewProcessName")
            if img:
                images.append(img)
    fixtures = readable(default_sets()["fixtures (tests/data/pe)"])
    out = {"lookups": len(images), "distinct_images": len(set(images)),
           "us_per_lookup": {}, "checked_share": {}}
    with tempfile.TemporaryDirectory() as tmp:
        where: dict[str, str] = {}
        for i, img in enumerate(dict.fromkeys(images)):
            where[img] = os.path.join(tmp, f"{i}.exe")
            shutil.copy(fixtures[i % len(fixtures)], where[img])
        paths = [where[i] for i in images]
        for size in (1, 64, 512):
            cache = pe.VersionInfoCache(maxsize=4096, implementation="native")
            batches = [paths[k:k + size] for k in range(0, len(paths), size)]

            def one_pass():
                get = cache.get
                for b in batches:
                    with cache.batch():
                        for p in b:
                            get(p)
            one_pass()  # fill the cache
            best = float("inf")
            for _ in range(5):
                start, rounds = time.perf_counter(), 0
                while True:
                    one_pass()
                    rounds += 1
                    if time.perf_counter() - start >= min_time / 5:
                        break
                best = min(best, (time.perf_counter() - start) * 1e6 / (rounds * len(paths)))
            st = cache.stats()
            out["us_per_lookup"][size] = round(best, 3)
            out["checked_share"][size] = round(1 - st["batch_hits"] / st["hits"], 3)
    return out


def hash_rows(files: list[str], min_time: float) -> list[dict]:
    """Hashes per process start: cold (read + SHA256 + MD5 + IMPHASH, no cache), cached (a
    HashCache hit: one stat), and IMPHASH alone per reader, against pefile's get_imphash()."""
    from sensor.enrich import hashes
    datas = {f: Path(f).read_bytes() for f in files}
    rows = []

    def cold(f):
        with open(f, "rb") as fh:
            hashes.hashes_of(fh.read())
    cache = hashes.HashCache()
    cases = {"Hashes cold (SHA256,MD5,IMPHASH)": cold, "Hashes cached (one stat)": cache.lookup}
    for impl in (["native"] if hashes._native is not None else []) + ["python"]:
        cases[f"IMPHASH only, {impl}"] = lambda f, impl=impl: hashes.imphash(datas[f], impl)
    try:
        import pefile

        def with_pefile(f):
            p = pefile.PE(data=datas[f], fast_load=True)
            p.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]])
            p.get_imphash()
        cases["IMPHASH only, pefile"] = with_pefile
    except ImportError:
        pass
    for name, fn in cases.items():
        us, rounds = measure(fn, files, min_time)
        rows.append({"reader": name, "us_per_file": round(us, 3), "rounds": rounds})
    base = next((r["us_per_file"] for r in rows if r["reader"] == "IMPHASH only, pefile"), None)
    for r in rows:
        r["speedup_vs_pefile"] = round(base / r["us_per_file"], 1) if base else None
    return rows


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
    seq = None if args.files else recorded_sequence(args.min_time)
    hash_files = [f for rep in sets.values() for f in readable(rep)]
    hrows = hash_rows(hash_files, args.min_time) if hash_files else []
    if args.json:
        print(json.dumps({"meta": meta, "sets": report, "recorded_sequence": seq, "hashes": hrows}, indent=2))
        return 0
    print(f"Python {meta['python']}, {meta['machine']}; baseline: pefile (ratio = pefile time / time)")
    for rep in report:
        print(f"\n{rep['set']}: {rep['files']} files, {rep['bytes'] / 1024:.0f} KiB")
        print(f"{'reader':32} {'us/file':>10} {'x pefile':>10}")
        for r in rep["results"]:
            ratio = f"{r['speedup_vs_pefile']:.1f}" if r["speedup_vs_pefile"] else "-"
            print(f"{r['reader']:32} {r['us_per_file']:>10.2f} {ratio:>10}")
    if seq:
        print(f"\nnative cached, the corpus's image sequence ({seq['lookups']} process starts, "
              f"{seq['distinct_images']} distinct images), all cached:")
        print(f"{'events per batch':32} {'us/lookup':>10} {'checked':>10}")
        for size, us in seq["us_per_lookup"].items():
            print(f"{size:<32} {us:>10.2f} {seq['checked_share'][size]:>10.0%}")
    if hrows:
        print(f"\nHashes ({len(hash_files)} files; baseline: pefile get_imphash)")
        print(f"{'reader':32} {'us/file':>10} {'x pefile':>10}")
        for r in hrows:
            ratio = f"{r['speedup_vs_pefile']:.1f}" if r["speedup_vs_pefile"] else "-"
            print(f"{r['reader']:32} {r['us_per_file']:>10.2f} {ratio:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
