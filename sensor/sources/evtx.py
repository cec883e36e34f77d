"""EVTX replay through the Rust-backed ``evtx`` package.

Sysmon Event ID 1 is read as is; Security 4688 is mapped to the taxonomy; other
event ids are skipped and counted.  A corrupt record is reported with its number
and reading goes on; a file that is not a whole number of chunks is reported as
truncated (the records it still holds are read).  A record whose header is damaged hides the
rest of its chunk from the parser (records are found by walking their sizes): at the end the
records read are compared with the numbers the chunk headers list, and the difference is
reported, so a file is never taken as read whole when it was not.
"""
from __future__ import annotations

import os
import struct
from typing import Iterator

import msgspec

from ..events import ProcessEvent
from .base import ReadStats
from .records import event_from_record

_decode = msgspec.json.Decoder().decode
_HEADER = 4096
_CHUNK = 65536
MAX_BAD_IN_A_ROW = 100_000  # the parser skips a corrupt record; this many in a row means it is stuck


def records_listed(path: str) -> int | None:
    """How many records the file's chunk headers say it holds (chunks with a damaged header are
    left out); None when the file cannot be read.  One 24-byte read per 64 KiB chunk."""
    total = 0
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            for off in range(_HEADER, size, _CHUNK):
                fh.seek(off)
                head = fh.read(24)
                if len(head) < 24 or head[:8] != b"ElfChnk\x00":
                    continue
                first, last = struct.unpack_from("<QQ", head, 8)
                if first <= last <= first + _CHUNK:      # a chunk holds far fewer records than that
                    total += last - first + 1
    except OSError:
        return None
    return total


def _record_id(rec: object, n: int) -> object:
    return rec.get("event_record_id", n) if isinstance(rec, dict) else n


def _system(event: dict) -> dict:
    return event.get("System") or {}


def _attr(node, *path):
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def record_to_event(rec: dict, stats: ReadStats | None = None) -> ProcessEvent | None:
    """The ProcessEvent for one decoded EVTX JSON record, or None when skipped."""
    event = rec.get("Event") or {}
    system = _system(event)
    eid = system.get("EventID")
    if isinstance(eid, dict):
        eid = eid.get("#text")
    provider = _attr(system, "Provider", "#attributes", "Name")
    channel = system.get("Channel")
    data = event.get("EventData")
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "#attributes"}
    ev = event_from_record(channel, provider, eid, data, system.get("Computer"),
                           _attr(system, "TimeCreated", "#attributes", "SystemTime"))
    if ev is None and stats is not None:
        stats.skipped += 1
        stats.skipped_by_id[str(eid)] += 1
    return ev


def read_evtx(path: str, stats: ReadStats) -> Iterator[ProcessEvent]:
    """Yield the process starts in an .evtx file; problems go to ``stats``."""
    import evtx  # the Rust parser; imported here so JSONL-only use does not need it

    try:
        size = os.path.getsize(path)
        parser = evtx.PyEvtxParser(path)
    except (OSError, RuntimeError, ValueError) as exc:
        stats.error(path, None, f"not a readable EVTX file: {exc}")
        return
    stats.files += 1
    if size < _HEADER or (size - _HEADER) % _CHUNK:
        stats.error(path, None, f"truncated EVTX file ({size} bytes is not a header plus whole "
                                f"64 KiB chunks); reading the records it holds")
    it = parser.records_json()
    n = last_good = 0
    stuck = False
    while True:
        try:
            rec = next(it)
        except StopIteration:
            break
        except (RuntimeError, OSError, ValueError) as exc:
            n += 1
            stats.records += 1
            stats.error(path, f"record {n}", f"corrupt record: {exc}")
            if n - last_good > MAX_BAD_IN_A_ROW:  # the parser is not moving on: stop this file
                stats.error(path, f"record {n}", f"{MAX_BAD_IN_A_ROW} unreadable records in a row: "
                                                 f"the rest of the file is skipped", whole_file=True)
                stuck = True
                break
            continue
        last_good = n + 1
        n += 1
        stats.records += 1
        try:
            obj = _decode(rec["data"])
            if not isinstance(obj, dict):
                raise TypeError("the record is not a JSON object")
            ev = record_to_event(obj, stats)
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            stats.error(path, f"record {_record_id(rec, n)}", f"undecodable record: {exc}")
            continue
        except Exception as exc:  # RecursionError, MemoryError, anything: this record only
            stats.error(path, f"record {_record_id(rec, n)}",
                        f"cannot decode: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if ev is not None:
            stats.events += 1
            stats.position = (path, "record", rec.get("event_record_id", n))
            yield ev
    if not stuck:
        listed = records_listed(path)
        if listed is not None and listed > n:
            stats.error(path, None, f"{listed - n} of the {listed} records its chunk headers list "
                                    f"could not be read (a damaged record hides the rest of its "
                                    f"chunk)")
