"""``etw-sensor peinfo``: print the version resource of PE files as JSON lines (like sigcheck)."""
from __future__ import annotations

import json
import os
import sys
from typing import IO, Iterator

# Extensions looked at when a PATH is a folder.
PE_EXTENSIONS = frozenset({".exe", ".dll", ".sys", ".ocx", ".cpl", ".scr", ".drv", ".efi", ".mui"})


def register(sub) -> None:
    p = sub.add_parser(
        "peinfo", help="print PE version info (OriginalFilename, ...) as JSON lines",
        description="Read the VERSIONINFO resource of each PE file statically (any OS) and print "
                    "one JSON object per file: path, OriginalFilename, InternalName, CompanyName, "
                    "ProductName, FileDescription, FileVersion, ProductVersion, file_version, "
                    "product_version; or path and error. Exit code 1 when any file failed or a "
                    "folder held no PE file.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="PE file, or folder (its " + ", ".join(sorted(PE_EXTENSIONS)) + " files)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--implementation", choices=("native", "python"), default=None,
                   help="reader to use (default: native when built)")
    p.set_defaults(func=run)


def _expand(paths: list[str], recursive: bool) -> Iterator[tuple[str, bool]]:
    """(path, True) for each file to read; (folder, False) for a folder that holds none."""
    for path in paths:
        if not os.path.isdir(path):
            yield path, True
            continue
        found = False
        for top, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if os.path.splitext(name)[1].lower() in PE_EXTENSIONS:
                    found = True
                    yield os.path.join(top, name), True
            if not recursive:
                break
        if not found:
            yield path, False


def run(args, out: IO[str] | None = None) -> int:
    from ..enrich.pe import READERS, IMPLEMENTATION, PeError

    out = out or sys.stdout
    impl = args.implementation or IMPLEMENTATION
    if impl not in READERS:
        print(f"etw-sensor: PE reader {impl!r} is not built (have: {', '.join(READERS)})",
              file=sys.stderr)
        return 2
    read = READERS[impl][0]
    failed = 0
    for path, is_file in _expand(args.paths, args.recursive):
        if not is_file:
            failed += 1
            print(f"etw-sensor: {path}: folder holds no PE files ({', '.join(sorted(PE_EXTENSIONS))})"
                  + ("" if args.recursive else "; -r descends into sub-folders"), file=sys.stderr)
            continue
        try:
            record = {"path": path, **read(path)}
        except PeError as exc:
            failed += 1
            record = {"path": path, "error": exc.reason, "code": exc.code}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 1 if failed else 0
