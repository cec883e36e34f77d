"""The process tree saved across restarts: one private JSON file, bounded, replaced atomically.

The ETW source saves its process table on stop and every ``save_tree_interval_s`` and restores it
at start, before the rundown and the psutil seed (``ProcessTable.restore``): a child started after
a restart still gets its grandparent and its parent's command line.  Layout::

    {"format": "etw-sensor-process-tree", "version": 1, "saved": <unix seconds>,
     "entries": [[pid, create_time, seq, ppid, parent_seq, image, command_line, user,
                  exited, exit_time], ...]}

The file is written 0600 (``sensor._files``), at most ``max_bytes`` (the oldest entries are left
out to fit); a file that is larger, unreadable, not this format or another version is ignored
with a warning and the sensor starts with the rundown alone.  Malformed entries are counted and
skipped by ``ProcessTable.restore``.  Loading and saving never raise.
"""
from __future__ import annotations

import logging
import os
import time

import msgspec

from .._files import open_private, read_regular

FORMAT = "etw-sensor-process-tree"
VERSION = 1
MAX_BYTES = 64 << 20

log = logging.getLogger("sensor.etw")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class TreeStore:
    """Load and save the process tree at ``path``."""

    def __init__(self, path: str, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.saves = 0
        self.save_errors = 0
        self.left_out = 0
        self.load_error: str | None = None

    def load(self) -> list:
        """The saved rows, or [] (missing, too large, malformed: the reason in ``load_error``)."""
        try:
            data = read_regular(self.path, self.max_bytes)    # a FIFO is refused, not waited on
        except FileNotFoundError:
            return []
        except OSError as exc:
            return self._refuse(f"cannot read: {exc.strerror or exc}")
        if data is None:
            return self._refuse(f"larger than {self.max_bytes} bytes")
        try:
            doc = _decode(data)
        except msgspec.DecodeError as exc:
            return self._refuse(f"not valid JSON: {exc}")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return self._refuse("not a saved process tree")
        if doc.get("version") != VERSION:
            return self._refuse(f"version {doc.get('version')!r} is not supported (this sensor reads {VERSION})")
        rows = doc.get("entries")
        if not isinstance(rows, list):
            return self._refuse("entries must be a list")
        return rows

    def _refuse(self, why: str) -> list:
        self.load_error = f"{self.path}: {why}"
        log.warning("saved process tree ignored: %s; starting from the rundown alone", self.load_error)
        return []

    def save(self, rows: list) -> bool:
        """Write ``rows`` (oldest first) atomically; True when written."""
        try:
            data = self._encode(rows)
            tmp = self.path + ".tmp"
            with open_private(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self.saves += 1
            return True
        except Exception as exc:  # noqa: BLE001 - a failed save costs lineage after a restart only
            self.save_errors += 1
            log.warning("process tree not saved to %s: %s", self.path, exc)
            return False

    def _encode(self, rows: list) -> bytes:
        data = _encode({"format": FORMAT, "version": VERSION, "saved": time.time(), "entries": rows})
        while len(data) > self.max_bytes and rows:
            # keep the newest entries: leave out a share proportional to the excess
            drop = max(1, len(rows) * (len(data) - self.max_bytes) // len(data) + 1)
            self.left_out += min(drop, len(rows))
            rows = rows[drop:]
            data = _encode({"format": FORMAT, "version": VERSION, "saved": time.time(), "entries": rows})
        return data

    def stats(self) -> dict:
        return {"saves": self.saves, "save_errors": self.save_errors, "left_out": self.left_out,
                "load_error": self.load_error}
