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

MAX_LINE_BYTES = 1024 * 1024   # longer lines are skipped and reported (``[source.replay] max_line_bytes``)
_SKIP_CHUNK = 1024 * 1024       # bytes read at a time while skipping the rest of a long line
# A process start's fields are flat (a value may be a list or an object of a level or two). A
# record nested deeper is refused at the source: the JSON decoder takes up to about 990 levels,
# and an alert carrying such a value could not be encoded again on a deeper stack (an output's
# encoder raised RecursionError on every attempt, so the batch holding it never left the spool).
MAX_NESTING = 32


def _open(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def nested_deeper_than(obj: object, limit: int) -> bool:
    """True when ``obj`` holds lists or objects more than ``limit`` levels deep (``obj`` itself
    is level 1). Level by level, without recursion: any depth and width is checked."""
    level, depth = [obj], 1
    while level:
        if depth > limit:
            return True
        level = [item for value in level for item in (value.values() if type(value) is dict else value)
                 if type(item) is dict or type(item) is list]
        depth += 1
    return False


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


def bounded_lines(fh: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line, 0) for each line of ``fh``; (line number, None, length) for a line
    longer than ``max_bytes``, whose bytes are skipped in chunks: memory stays bounded on a
    file without newlines."""
    lineno = 0
    while True:
        line = fh.readline(max_bytes + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            skipped = len(line)
            while True:
                rest = fh.readline(_SKIP_CHUNK)
                skipped += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield lineno, None, skipped
            continue
        yield lineno, line, 0


def read_jsonl(path: str, stats: ReadStats, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[ProcessEvent]:
    """Yield the process starts in a .jsonl or .jsonl.gz file; problems go to ``stats``.

    A line longer than ``max_line_bytes`` is skipped and reported; any failure to decode one
    line (malformed JSON, nesting too deep for the decoder, anything) is reported with the file
    and line number, and reading goes on with the next line.
    """
    try:
        fh = _open(path)
    except OSError as exc:
        stats.error(path, None, f"cannot open: {exc.strerror or exc}")
        return
    stats.files += 1
    lineno = 0
    with fh:
        try:
            for lineno, line, too_long in bounded_lines(fh, max_line_bytes):
                if line is None:
                    stats.records += 1
                    stats.error(path, f"line {lineno}", f"line too long ({too_long} bytes, the limit is "
                                                        f"{max_line_bytes}): skipped")
                    continue
                if not line.strip():
                    continue
                stats.records += 1
                try:
                    obj = _decode(line)
                    if not isinstance(obj, dict):
                        stats.error(path, f"line {lineno}",
                                    f"JSON value is a {type(obj).__name__}, not an object")
                        continue
                    # A line with fewer brackets than the bound cannot nest past it: the walk
                    # runs only on the rare line that could (it costs about what decoding does).
                    if (line.count(b"{") + line.count(b"[") > MAX_NESTING
                            and nested_deeper_than(obj, MAX_NESTING)):
                        stats.error(path, f"line {lineno}", f"nested deeper than {MAX_NESTING} levels: "
                                                            f"not a process start")
                        continue
                    ev = event_from_json(obj, stats)
                except msgspec.DecodeError as exc:
                    stats.error(path, f"line {lineno}", f"not valid JSON ({exc})")
                    continue
                except Exception as exc:  # RecursionError, MemoryError, anything: this line only
                    stats.error(path, f"line {lineno}", f"cannot decode: {type(exc).__name__}: "
                                                        f"{str(exc)[:200]}")
                    continue
                if ev is not None:
                    stats.events += 1
                    stats.position = (path, "line", lineno)
                    yield ev
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile, io.UnsupportedOperation) as exc:
            stats.error(path, f"line {lineno + 1}", f"read failed: {exc}", whole_file=True)
