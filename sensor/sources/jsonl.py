"""JSON-lines replay: one JSON object per line, plain or gzip-compressed.

Two record shapes are read:

* a flat object whose keys are Sigma field names (``Image``, ``CommandLine``...);
  unknown keys are kept;
* a Windows event record ``{..., "channel", "eid", "computer", "ts", "data": {...}}``
  (Sysmon EID 1 or Security 4688; other event ids are skipped and counted).
"""
from __future__ import annotations

import gzip
import io
import zlib
from typing import IO, Iterator

import msgspec

from ..events import ProcessEvent
from .base import ReadStats
from .records import event_from_record, numeric_pids

_decode = msgspec.json.Decoder().decode


def _open(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def event_from_json(obj: dict, stats: ReadStats | None = None) -> ProcessEvent | None:
    """A ProcessEvent from one decoded JSON object (either shape), or None if skipped."""
    if "data" in obj and "eid" in obj and isinstance(obj.get("data"), dict):
        ev = event_from_record(obj.get("channel"), obj.get("provider"), obj.get("eid"),
                               obj["data"], obj.get("computer"), obj.get("ts"))
        if ev is None and stats is not None:
            stats.skipped += 1
            stats.skipped_by_id[str(obj.get("eid"))] += 1
        return ev
    return numeric_pids(ProcessEvent(obj))


def read_jsonl(path: str, stats: ReadStats) -> Iterator[ProcessEvent]:
    """Yield the process starts in a .jsonl or .jsonl.gz file; problems go to ``stats``."""
    try:
        fh = _open(path)
    except OSError as exc:
        stats.error(path, None, f"cannot open: {exc.strerror or exc}")
        return
    stats.files += 1
    lineno = 0
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                stats.records += 1
                try:
                    obj = _decode(line)
                except msgspec.DecodeError as exc:
                    stats.error(path, f"line {lineno}", f"not valid JSON ({exc})")
                    continue
                if not isinstance(obj, dict):
                    stats.error(path, f"line {lineno}",
                                f"JSON value is a {type(obj).__name__}, not an object")
                    continue
                ev = event_from_json(obj, stats)
                if ev is not None:
                    stats.events += 1
                    stats.position = (path, "line", lineno)
                    yield ev
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile, io.UnsupportedOperation) as exc:
            stats.error(path, f"line {lineno + 1}", f"read failed: {exc}")
