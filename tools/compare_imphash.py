"""Compare IMPHASH from the native reader, its twin and pefile on many files.

    find / -xdev -type f \( -iname '*.exe' -o -iname '*.dll' -o -iname '*.sys' \) 2>/dev/null \
        | python tools/compare_imphash.py

Prints each disagreement and one summary line: distinct files, agreements with pefile, files
pefile cannot parse (where only native == twin is checked), files with imports, seconds per reader.
Exit 1 on any disagreement.
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pefile  # noqa: E402

from sensor.enrich import hashes  # noqa: E402


def main() -> int:
    seen: set[bytes] = set()
    agree = disagree = unparsed = with_imports = 0
    spent = {"native": 0.0, "twin": 0.0, "pefile": 0.0}
    for line in sys.stdin:
        path = line.rstrip("\n")
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        t = time.perf_counter()
        native = hashes.imphash(data, "native") if hashes._native is not None else None
        spent["native"] += time.perf_counter() - t
        t = time.perf_counter()
        twin = hashes.imphash(data, "python")
        spent["twin"] += time.perf_counter() - t
        t = time.perf_counter()
        try:
            pe = pefile.PE(data=data, fast_load=True)
            pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]])
            ref = pe.get_imphash() or hashes.NO_IMPORTS
        except pefile.PEFormatError:
            ref = None
        spent["pefile"] += time.perf_counter() - t
        with_imports += twin not in (None, hashes.NO_IMPORTS)
        same = native == twin or hashes._native is None
        if ref is None:
            unparsed += 1
        if same and ref in (None, twin):
            agree += ref is not None
        else:
            disagree += 1
            print(f"DISAGREE {path}: native {native} twin {twin} pefile {ref}")
    print(f"{len(seen)} distinct files: {agree} agree with pefile, {disagree} disagree, {unparsed} "
          f"pefile cannot parse, {with_imports} with imports; seconds: "
          + ", ".join(f"{k} {v:.3f}" for k, v in spent.items()))
    return 1 if disagree else 0


if __name__ == "__main__":
    raise SystemExit(main())
