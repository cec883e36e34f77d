"""Capture files: the raw ETW records a consumer saw, written on Windows, replayed anywhere.

The format (docs/etw.md, "Capture files") is JSON lines, gzip-compressed when the name ends in
``.gz``.  The first line is the header::

    {"format": "etw-sensor-capture", "version": 1, "computer": "HOST",
     "devices": {"\\\\Device\\\\HarddiskVolume3": "C:"}, "system_root": "C:\\\\Windows",
     "system_logger": true}

then one object per raw record (``etw_raw``)::

    {"source": "kernel-process" | "system-logger" | "lost", "event_id": 1, "version": 3,
     "opcode": 1, "header_pid": 4, "header_tid": 8, "timestamp": 133..., "flags": 576,
     "payload": "<base64 of UserData>"}

Readers ignore keys they do not know, so later writers can add some and version-1 readers still
read their files; a new ``version`` means a change they cannot read.  ``read_capture`` sends the
records through the same ``EtwProcessor`` as live capture (decoder, device mapper from the
header, process table, system-logger join), with the record timestamps as its clock, so a trace
taken on Windows gives the same events here.  A malformed line is counted with its file and line
and skipped; it never stops the read.
"""
from __future__ import annotations

import base64
import binascii
import gzip
import io
import os
import zlib
from typing import IO, Any, Iterator

import msgspec

from ..enrich.devices import DeviceMapper
from ..enrich.process_table import TICKS_PER_SECOND, ProcessTable
from ..events import ProcessEvent
from .base import ReadStats
from .etw_raw import RAW_FIELDS, SOURCE_NAMES, SOURCES_BY_NAME, SRC_KERNEL_PROCESS, SRC_LOST

FORMAT = "etw-sensor-capture"
VERSION = 1
HEADER_MAX = 1 << 20              # bytes of the first line looked at
LINE_MAX = 1 << 20                # a record line longer than this is malformed (payloads <= 64 KiB)

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

# (name, lowest, highest) of the integer fields of a record.
_INT_FIELDS = (("event_id", 0, 0xFFFF), ("version", 0, 0xFF), ("opcode", 0, 0xFF),
               ("header_pid", 0, 0xFFFFFFFF), ("header_tid", 0, 0xFFFFFFFF),
               ("timestamp", 0, (1 << 63) - 1), ("flags", 0, 0xFFFF))


class CaptureError(ValueError):
    """A malformed header or record (the message says what is wrong)."""


def _open_read(path: str) -> IO[bytes]:
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def is_capture(path: str) -> bool:
    """True when the file's first line is a capture header (any version); never raises."""
    try:
        with _open_read(path) as fh:
            first = fh.readline(HEADER_MAX)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
        return False
    if b'"format"' not in first:
        return False
    try:
        obj = _decode(first)
    except msgspec.DecodeError:
        return False
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def make_header(computer: str | None, devices: dict[str, str], **extra: Any) -> dict:
    """The header object of a version-1 capture."""
    return {"format": FORMAT, "version": VERSION, "computer": computer, "devices": dict(devices), **extra}


def check_header(obj: Any) -> dict:
    """The header, checked; raises CaptureError."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CaptureError(f"not an {FORMAT} header")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CaptureError("header: version must be an integer")
    if version != VERSION:
        raise CaptureError(f"capture version {version} is not supported (this reader reads version {VERSION})")
    devices = obj.get("devices", {})
    if not isinstance(devices, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in devices.items()):
        raise CaptureError("header: devices must map device names to drive letters (strings)")
    computer = obj.get("computer")
    if computer is not None and not isinstance(computer, str):
        raise CaptureError("header: computer must be a string")
    root = obj.get("system_root", "C:\\Windows")
    if not isinstance(root, str):
        raise CaptureError("header: system_root must be a string")
    return obj


def encode_record(raw: tuple) -> dict:
    """The capture object of one raw record."""
    src, event_id, version, opcode, pid, tid, ts, flags, payload = raw
    return {"source": SOURCE_NAMES[src], "event_id": event_id, "version": version, "opcode": opcode,
            "header_pid": pid, "header_tid": tid, "timestamp": ts, "flags": flags,
            "payload": base64.b64encode(payload).decode("ascii")}


def decode_record(obj: Any) -> tuple:
    """The raw record of one capture object; raises CaptureError naming the bad field."""
    if not isinstance(obj, dict):
        raise CaptureError(f"a record must be a JSON object, not {type(obj).__name__}")
    name = obj.get("source")
    src = SOURCES_BY_NAME.get(name) if isinstance(name, str) else None
    if src is None:
        raise CaptureError(f"source must be one of {', '.join(SOURCES_BY_NAME)}, not {obj.get('source')!r}")
    values = []
    for name, lo, hi in _INT_FIELDS:
        v = obj.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise CaptureError(f"{name} must be an integer within {lo}..{hi}, not {v!r}")
        values.append(v)
    text = obj.get("payload")
    if not isinstance(text, str):
        raise CaptureError("payload must be a base64 string")
    try:
        payload = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CaptureError(f"payload is not base64 ({exc})") from None
    if len(payload) > 0xFFFF:
        raise CaptureError(f"payload is {len(payload)} bytes (UserDataLength holds at most 65535)")
    event_id, version, opcode, pid, tid, ts, flags = values
    return (src, event_id, version, opcode, pid, tid, ts, flags, payload)


class CaptureWriter:
    """Writes a capture file (private: owner read/write only); ``write(raw)`` per record."""

    def __init__(self, path: str, computer: str | None, devices: dict[str, str], **extra: Any) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
        raw: IO[bytes] = os.fdopen(fd, "wb")
        self._fh: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="wb") if path.lower().endswith(".gz") else raw
        self._raw = raw
        self.records = 0
        self._fh.write(_encode(make_header(computer, devices, **extra)) + b"\n")

    def write(self, raw: tuple) -> None:
        """Append one raw record."""
        self._fh.write(_encode(encode_record(raw)) + b"\n")
        self.records += 1

    def close(self) -> None:
        """Finish the file (the gzip trailer, then the file)."""
        try:
            self._fh.close()
        finally:
            if self._raw is not self._fh:
                self._raw.close()

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_records(path: str, stats: ReadStats) -> tuple[dict | None, Iterator[tuple[int, tuple]]]:
    """The header and an iterator of ``(line number, raw record)``; problems go to ``stats``."""
    try:
        fh = _open_read(path)
    except OSError as exc:
        stats.error(path, None, f"cannot open: {exc.strerror or exc}")
        return None, iter(())
    try:
        first = fh.readline(HEADER_MAX)
        header = check_header(_decode(first))
    except (msgspec.DecodeError, CaptureError) as exc:
        fh.close()
        stats.error(path, "line 1", f"capture header: {exc}", whole_file=True)
        return None, iter(())
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        fh.close()
        stats.error(path, "line 1", f"read failed: {exc}", whole_file=True)
        return None, iter(())
    stats.files += 1

    def records() -> Iterator[tuple[int, tuple]]:
        lineno = 1
        with fh:
            try:
                while True:
                    line = fh.readline(LINE_MAX + 1)
                    if not line:
                        return
                    lineno += 1
                    if len(line) > LINE_MAX:
                        stats.records += 1
                        stats.error(path, f"line {lineno}", f"record longer than {LINE_MAX} bytes")
                        while line and not line.endswith(b"\n"):     # skip the rest of it
                            line = fh.readline(LINE_MAX + 1)
                        continue
                    if not line.strip():
                        continue
                    stats.records += 1
                    try:
                        raw = decode_record(_decode(line))
                    except msgspec.DecodeError as exc:
                        stats.error(path, f"line {lineno}", f"not valid JSON ({exc})")
                        continue
                    except CaptureError as exc:
                        stats.error(path, f"line {lineno}", str(exc))
                        continue
                    yield lineno, raw
            except (OSError, EOFError, zlib.error, gzip.BadGzipFile, io.UnsupportedOperation) as exc:
                stats.error(path, f"line {lineno + 1}", f"read failed: {exc}", whole_file=True)
    return header, records()


class _TraceClock:
    """The processor's clock during a replay: the timestamp of the record being handled, so the
    system-logger join waits trace time, not wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def processor_for(header: dict, backfiller: Any = None, sid_resolver: Any = None,
                  clock: Any = None) -> Any:
    """The ``EtwProcessor`` a capture is replayed through (as the live source builds it)."""
    from .etw import EtwProcessor
    mapper = DeviceMapper(devices=header.get("devices") or {},
                          system_root=header.get("system_root") or "C:\\Windows")
    join_wait = 0.05 if header.get("system_logger") else 0.0
    return EtwProcessor(ProcessTable(), backfiller, mapper, sid_resolver, header.get("computer"),
                        join_wait=join_wait, clock=clock or _TraceClock())


def read_capture(path: str, stats: ReadStats, backfiller: Any = None) -> Iterator[ProcessEvent]:
    """The process starts in a capture file, through the live source's processor.

    No back-fill by default: the processes of a recorded trace are not on this machine."""
    header, records = read_records(path, stats)
    if header is None:
        return
    clock = _TraceClock()
    proc = processor_for(header, backfiller, clock=clock)
    dec = proc.decoder
    for lineno, raw in records:
        if raw[6]:
            clock.now = raw[6] / TICKS_PER_SECOND
        errors = dec.errors
        out = proc.handle(raw)
        if dec.errors != errors:
            stats.error(path, f"line {lineno}", f"payload does not match its layout: {dec.last_error}")
        elif raw[0] == SRC_LOST or (raw[0] == SRC_KERNEL_PROCESS and raw[1] != 1):
            stats.skipped += 1
            stats.skipped_by_id[f"etw {SOURCE_NAMES[raw[0]]} {raw[1]}"] += 1
        out += proc.due()
        for ev in out:
            stats.events += 1
            yield ev
    for ev in proc.drain():
        stats.events += 1
        yield ev


__all__ = ["FORMAT", "VERSION", "CaptureError", "CaptureWriter", "RAW_FIELDS", "check_header",
           "decode_record", "encode_record", "is_capture", "make_header", "processor_for",
           "read_capture", "read_records"]
