"""Event sources.  Replay (EVTX, JSON lines) runs anywhere; ETW runs on Windows.

``read_paths`` reads files or folders of ``.evtx``, ``.jsonl``, ``.jsonl.gz``
(and ``.ndjson``, ``.json.gz``, ``.ndjson.gz`` as JSON lines) in a stable order;
a file named directly is read as JSON lines whatever its suffix.  A JSON-lines file whose
first line is a capture header (``capture.py``) is replayed as raw ETW records.
Sysmon starts read in one call get the lineage fields from the starts read before them
(``lineage.py``).  Only regular files are read: a FIFO, socket or device named directly is
reported and skipped (opening a FIFO with no writer waits forever; a device never ends).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable, Iterator

from ..events import ProcessEvent
from .base import InputError, ReadStats
from .capture import is_capture, read_capture
from .evtx import read_evtx
from .jsonl import MAX_LINE_BYTES, read_jsonl
from .lineage import ReplayLineage

SUFFIXES = (".evtx", ".jsonl", ".jsonl.gz", ".ndjson", ".json.gz", ".ndjson.gz")

__all__ = ["InputError", "MAX_LINE_BYTES", "ReadStats", "expand_paths", "read_file", "read_paths"]


def _readable(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def expand_paths(paths: Iterable[str | os.PathLike], stats: ReadStats) -> list[str]:
    """Files named directly, plus readable files found under named folders (sorted)."""
    out: list[str] = []
    for p in paths:
        p = str(p)
        if os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*") if f.is_file() and _readable(f.name))
            if not found:
                stats.error(p, None, "folder holds no .evtx/.jsonl/.jsonl.gz files")
            out.extend(found)
        elif os.path.exists(p):
            out.append(p)
        else:
            stats.error(p, None, "no such file or folder")
    return out


def read_file(path: str, stats: ReadStats, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[ProcessEvent]:
    """The process starts in one file, by its suffix (unknown suffixes read as JSON lines)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        stats.error(path, None, f"cannot open: {exc.strerror or exc}")
        return iter(())
    if stat.S_ISDIR(mode):
        stats.error(path, None, "cannot open: it is a folder")
        return iter(())
    if not stat.S_ISREG(mode):
        stats.error(path, None, "not a regular file (a FIFO, socket or device): skipped")
        return iter(())
    if path.lower().endswith(".evtx"):
        return read_evtx(path, stats)
    try:
        capture = is_capture(path)
    except Exception:  # a poison first line (nesting too deep to decode): read as JSON lines,
        capture = False  # which reports that line and goes on
    if capture:
        return read_capture(path, stats)
    return read_jsonl(path, stats, max_line_bytes)


def read_paths(paths: Iterable[str | os.PathLike], stats: ReadStats | None = None,
               max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[ProcessEvent]:
    """Every process start in ``paths`` (files or folders); problems go to ``stats``.

    The readers report a bad record and go on; should one fail anyway, the failure is reported
    against its file and the next file is read: one file never ends a replay. Sysmon starts get
    GrandParent* and ParentChain from the starts read before them, across files (``lineage.py``).
    """
    stats = stats if stats is not None else ReadStats()
    lineage = ReplayLineage()
    for path in expand_paths(paths, stats):
        try:
            for ev in read_file(path, stats, max_line_bytes):
                yield lineage.apply(ev)
        except Exception as exc:
            stats.error(path, None, f"reading stopped: {type(exc).__name__}: {str(exc)[:200]}")
