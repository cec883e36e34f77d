"""Per-event enrichment in the pipeline: host name, lazy PE version fields and lazy Hashes.

``Hashes`` (``hash_lookup``, a ``sensor.enrich.hashes.HashCache``) is registered as pending
only when the sensor was built with it, which it is only when a loaded rule reads ``Hashes`` or
the configuration asks for it in alerts.

The PE version resource (``OriginalFileName``, ``Company``, ``Product``,
``Description``, ``FileVersion``) is read only when a rule asks for one of those
fields: they are registered as *pending* on the event, and the first request
reads the image once (through the cache) and fills all of them.
"""
from __future__ import annotations

import contextlib
import ntpath
import os
import sys
from typing import Any, Callable, ContextManager, Mapping

from ..events import ORIGIN_PE, ProcessEvent

# event field -> PE version-resource string name
PE_FIELDS = {
    "OriginalFileName": "OriginalFilename",
    "Company": "CompanyName",
    "Product": "ProductName",
    "Description": "FileDescription",
    "FileVersion": "FileVersion",
}


def map_path(image: str, path_map: Mapping[str, str]) -> str | None:
    """Where a Windows image path lives on this machine, through ``path_map`` (longest prefix).

    The answer is the real path (symbolic links resolved) and lies inside the target folder;
    a recorded path that leaves it (``..`` segments, a link pointing out) is refused: None.
    """
    low = image.lower()
    best = None
    for prefix, target in path_map.items():
        if low.startswith(prefix.lower()) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, target)
    if best is None:
        return None
    rest = image[len(best[0]):].replace("\\", "/").lstrip("/")
    try:
        root = os.path.realpath(best[1])
        real = os.path.realpath(os.path.join(root, rest)) if rest else root
        if os.path.commonpath([root, real]) != root:
            return None
    except (ValueError, OSError):  # a NUL in the path, another drive, a link loop
        return None
    return real


class Enricher:
    """Fills host name and registers lazy PE fields on each event.

    ``pe_lookup(path)`` returns a mapping of version strings (keys as in the
    resource: ``OriginalFilename``, ...) or None; it must not raise.
    ``path_map`` (replay) translates Windows image paths to local files; without
    it the image path is used as is (live on Windows).
    """

    def __init__(self, pe_lookup: Callable[[str], Mapping[str, Any] | None] | None = None,
                 path_map: Mapping[str, str] | None = None, hostname: str | None = None,
                 pe_stats: Callable[[], dict] | None = None,
                 pe_batch: Callable[[], ContextManager] | None = None,
                 hash_lookup: Callable[[str], str | None] | None = None,
                 hash_stats: Callable[[], dict] | None = None):
        self.pe_lookup = pe_lookup
        self.hash_lookup = hash_lookup
        self._hash_stats = hash_stats
        self._pe_batch = pe_batch
        self.path_map = dict(path_map or {})
        self.hostname = hostname
        self._pe_stats = pe_stats
        self.pe_reads = 0
        self.pe_found = 0

    def __call__(self, event: ProcessEvent) -> None:
        if self.hostname and event.get("Computer") is None:
            event["Computer"] = self.hostname
        image = event.get("Image")
        if (self.pe_lookup is None and self.hash_lookup is None) or not image or not isinstance(image, str):
            return
        if not self.path_map and not _LOCAL_WINDOWS_PATHS and _is_windows_path(image):
            # Replay off Windows without a path map: a recorded C:\... image cannot be
            # on this machine, so reading it would only fail (and cost a stat per event).
            return
        if not isinstance(event, ProcessEvent):
            return
        if self.hash_lookup is not None and event.get("Hashes") is None:
            event.set_pending("Hashes", self._resolve_hashes)
        if self.pe_lookup is None:
            return
        missing = [f for f in PE_FIELDS if event.get(f) is None]
        if not missing or not isinstance(event, ProcessEvent):
            return
        for f in missing:
            event.set_pending(f, self._resolve)

    def _resolve_hashes(self, event: ProcessEvent, field: str) -> Any:
        """Hash the image (through the cache); None when it cannot be read or is too large."""
        image = event.get("Image")
        path = map_path(image, self.path_map) if self.path_map else image
        if not path or self.hash_lookup is None:
            return None
        try:
            value = self.hash_lookup(path)
        except Exception:  # noqa: BLE001 - an unreadable image must never break matching
            value = None
        if value is not None and event.origin is not None:
            event.origin["Hashes"] = ORIGIN_PE
        return value

    def _resolve(self, event: ProcessEvent, field: str) -> Any:
        """Read the image's version resource once and fill every missing PE field."""
        image = event.get("Image")
        path = map_path(image, self.path_map) if self.path_map else image
        info = None
        if path:
            self.pe_reads += 1
            try:
                info = self.pe_lookup(path)
            except Exception:  # a malformed image must never break matching
                info = None
        if info:
            self.pe_found += 1
        pending = event.pending or {}
        for f, key in PE_FIELDS.items():
            if f not in pending and f != field:
                continue  # the source already had this field
            pending.pop(f, None)
            value = info.get(key) if info else None
            if f != field:
                dict.__setitem__(event, f, value)
            if value is not None and event.origin is not None:
                event.origin[f] = ORIGIN_PE
        return info.get(PE_FIELDS[field]) if info else None

    def batch(self) -> ContextManager:
        """A scope for one batch of events that have all arrived: the PE lookup checks
        each file once in it (``VersionInfoCache.batch``)."""
        return self._pe_batch() if self._pe_batch is not None else contextlib.nullcontext()

    def stats(self) -> dict:
        out = {"reads": self.pe_reads, "found": self.pe_found}
        if self._pe_stats is not None:
            out.update(self._pe_stats())
        if self._hash_stats is not None:
            out.update(self._hash_stats())
        hits, misses = out.get("hits"), out.get("misses")
        if isinstance(hits, int) and isinstance(misses, int):
            out["hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
        return out


_LOCAL_WINDOWS_PATHS = sys.platform == "win32"


def _is_windows_path(path: str) -> bool:
    """``C:\\...``, ``\\\\server\\...`` or ``\\Device\\...``: a path only Windows can open."""
    return (len(path) > 2 and path[1] == ":") or path.startswith("\\")


def image_name(path: str | None) -> str | None:
    return ntpath.basename(path) if path else None
