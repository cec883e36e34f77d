"""PE version information (OriginalFilename, CompanyName, ...) for process enrichment.

``read_version_info(path)`` / ``parse_version_info(data)`` return a dict with the keys
``OriginalFilename``, ``InternalName``, ``CompanyName``, ``ProductName``,
``FileDescription``, ``FileVersion``, ``ProductVersion`` (str or None) and
``file_version`` / ``product_version`` (VS_FIXEDFILEINFO as "a.b.c.d" or None), or
raise ``PeError`` (``.code`` stable, ``.reason`` readable).

The native reader (``sensor._pe``, cffi over native/pe_version.c) is used when it is
built; otherwise the pure-Python twin, which defines the behaviour.
``SENSOR_NO_EXTENSIONS=1`` forces the twin.  ``VersionInfoCache`` adds a bounded LRU
keyed by (path, size, mtime_ns) and a never-raising ProcessEvent resolver.
"""
from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping

from . import _pe_py
from ._pe_py import RESULT_KEYS, STRING_KEYS, PeError, error_for

__all__ = [
    "PeError", "RESULT_KEYS", "STRING_KEYS", "EVENT_FIELDS", "IMPLEMENTATION", "READERS",
    "read_version_info", "parse_version_info", "VersionInfoCache", "default_cache",
]

NO_EXTENSIONS = bool(os.environ.get("SENSOR_NO_EXTENSIONS"))

# Sigma process_creation field -> version resource key (Sysmon's naming).
EVENT_FIELDS: dict[str, str] = {
    "OriginalFileName": "OriginalFilename",
    "Company": "CompanyName",
    "Product": "ProductName",
    "Description": "FileDescription",
    "FileVersion": "FileVersion",
}

_native: Any = None
if not NO_EXTENSIONS:
    try:
        from .. import _pe as _native  # type: ignore[attr-defined, no-redef]
    except ImportError:  # not built: the twin is used
        _native = None


def _fspath(path: Any) -> str:
    p = os.fspath(path)
    return os.fsdecode(p) if isinstance(p, bytes) else p


if _native is not None:
    _ffi, _lib = _native.ffi, _native.lib
    _tls = threading.local()

    def _buffers():
        """Per-thread result struct, 64 KiB blob buffer and UTF-8 text buffer (cffi releases
        the GIL during calls, so threads must not share them)."""
        try:
            return _tls.bufs
        except AttributeError:
            _tls.bufs = (_ffi.new("pev_result *"), _ffi.new("uint8_t[]", _pe_py.BLOB_MAX),
                         _ffi.new("uint8_t[]", _lib.PEV_TEXT_MAX))
            return _tls.bufs

    def _sys_detail(err: int) -> str | None:
        if not err:
            return None
        if sys.platform == "win32":
            return f"Windows error {err}"
        return os.strerror(err)

    _buffer = _ffi.buffer

    def _native_result(status: int, r, text) -> dict:
        # The C side wrote the nine values as UTF-8, NUL-separated, an absent one empty:
        # one decode and one split instead of nine conversions here.  The literal keys are
        # RESULT_KEYS in order (tests/test_pe.py checks it).
        if status:
            raise error_for(status, _sys_detail(r.sys_error) if status == _pe_py.E_IO else None)
        v0, v1, v2, v3, v4, v5, v6, v7, v8 = _buffer(text, r.text_len)[:].decode().split("\0")
        return {"OriginalFilename": v0 or None, "InternalName": v1 or None,
                "CompanyName": v2 or None, "ProductName": v3 or None,
                "FileDescription": v4 or None, "FileVersion": v5 or None,
                "ProductVersion": v6 or None, "file_version": v7 or None,
                "product_version": v8 or None}

    _FSENC, _FSERR = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()

    def _encode(path: Any) -> bytes:
        p = path.encode(_FSENC, _FSERR) if path.__class__ is str else os.fsencode(path)
        if b"\0" in p:
            raise PeError("arg", "bad argument: NUL in path")
        return p

    def _native_read_identity(path: Any) -> tuple[dict | None, PeError | None, int, int]:
        """Parse ``path``; also the (size, mtime_ns) of the file actually opened."""
        r, blob, text = _buffers()
        status = _lib.pev_file_text(_encode(path), r, blob, text)
        try:
            return _native_result(status, r, text), None, r.file_size, r.mtime_ns
        except PeError as exc:
            return None, exc, r.file_size, r.mtime_ns

    def native_read_version_info(path: str | os.PathLike) -> dict:
        """Version info of the PE file at ``path`` (native reader); raises PeError."""
        r, blob, text = _buffers()
        return _native_result(_lib.pev_file_text(_encode(path), r, blob, text), r, text)

    def native_parse_version_info(data: bytes | bytearray | memoryview) -> dict:
        """Version info of an in-memory PE image (native reader); raises PeError."""
        r, blob, text = _buffers()
        buf = _ffi.from_buffer(data)
        return _native_result(_lib.pev_buffer_text(buf, len(buf), r, blob, text), r, text)

    def _native_stat(path: Any) -> tuple[int, int]:
        try:
            size, mtime = _tls.size, _tls.mtime
        except AttributeError:
            size = _tls.size = _ffi.new("uint64_t *")
            mtime = _tls.mtime = _ffi.new("int64_t *")
        err = _lib.pev_stat(_encode(path), size, mtime)
        if err:
            raise PeError("io", f"cannot open or read the file: {_sys_detail(err)}")
        return size[0], mtime[0]

READERS: dict[str, tuple[Callable[[Any], dict], Callable[[Any], dict]]] = {
    "python": (_pe_py.read_version_info, _pe_py.parse_version_info),
}
if _native is not None:
    READERS["native"] = (native_read_version_info, native_parse_version_info)

IMPLEMENTATION = "native" if _native is not None else "python"
read_version_info, parse_version_info = READERS[IMPLEMENTATION]


def _py_stat(path: Any) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PeError("io", f"cannot open or read the file: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path
        raise PeError("arg", "bad argument: NUL in path") from None
    return st.st_size, st.st_mtime_ns


def _py_read_identity(path: Any) -> tuple[dict | None, PeError | None, int, int]:
    try:
        size, mtime = _py_stat(path)
        return _pe_py.read_version_info(path), None, size, mtime
    except PeError as exc:
        return None, exc, 0, 0


class VersionInfoCache:
    """Bounded LRU of version info keyed by (path, size, mtime_ns); failures are cached too.

    ``hits``/``misses`` count lookups, ``failures`` the parses that raised PeError and
    ``resolver_errors`` unexpected errors swallowed by ``resolve_field``.
    """

    def __init__(self, maxsize: int = 4096, implementation: str | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        impl = implementation or IMPLEMENTATION
        if impl not in READERS:
            raise ValueError(f"PE reader {impl!r} is not available (have: {', '.join(READERS)})")
        self.maxsize = maxsize
        self.implementation = impl
        if impl == "native":
            self._stat, self._read = _native_stat, _native_read_identity
        else:
            self._stat, self._read = _py_stat, _py_read_identity
        self._data: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.failures = self.resolver_errors = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, path: str | os.PathLike, size: int | None = None,
            mtime_ns: int | None = None) -> dict:
        """Version info of ``path`` (a fresh dict), cached; raises PeError (also cached).

        Pass ``size`` and ``mtime_ns`` when the caller already knows them; otherwise the
        file is stat'ed so a replaced file is never answered from the cache.
        """
        if path.__class__ is not str:
            path = _fspath(path)
        if size is None or mtime_ns is None:
            size, mtime_ns = self._stat(path)
        key = (path, size, mtime_ns)
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                self._data.move_to_end(key)
                self.hits += 1
        if entry is not None:
            if entry.__class__ is tuple:  # cached failure: (code, reason)
                raise PeError(*entry)
            return entry.copy()
        info, exc, fsize, fmtime = self._read(path)
        data = self._data
        with self._lock:
            self.misses += 1
            if exc is not None:
                self.failures += 1
            # Key by what the parse actually saw; a file replaced in between gets its own key.
            if exc is None or exc.code != "io":
                skey = (path, fsize, fmtime) if fsize or fmtime else key
                data[skey] = (exc.code, exc.reason) if exc is not None else info
                data.move_to_end(skey)
                while len(data) > self.maxsize:
                    data.popitem(last=False)
        if exc is not None:
            raise exc
        return info.copy()

    def lookup(self, path: str | os.PathLike) -> dict | None:
        """Like ``get`` but None instead of PeError."""
        try:
            return self.get(path)
        except PeError:
            return None

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._data.clear()

    def stats(self) -> dict[str, int]:
        """Counters and occupancy, for the status command and metrics."""
        return {"hits": self.hits, "misses": self.misses, "failures": self.failures,
                "resolver_errors": self.resolver_errors, "size": len(self._data),
                "maxsize": self.maxsize}

    def resolve_field(self, event: Mapping[str, Any], name: str) -> str | None:
        """ProcessEvent pending resolver for OriginalFileName, Company, Product, Description,
        FileVersion; never raises (errors are counted and give None)."""
        try:
            key = EVENT_FIELDS.get(name)
            image = event.get("Image")
            if key is None or not image:
                return None
            info = self.lookup(image)
            if info is None:
                return None
            self._fill_siblings(event, name, info)
            origin = getattr(event, "origin", None)
            if info.get(key) is not None and origin is not None:
                origin[name] = "pe"
            return info.get(key)
        except Exception:  # the sensor must not die on one odd file or event
            self.resolver_errors += 1
            return None

    def _fill_siblings(self, event: Any, name: str, info: dict) -> None:
        """One parse answers every PE field: settle the other still-pending ones now."""
        pending = getattr(event, "pending", None)
        if not pending:
            return
        origin = getattr(event, "origin", None)
        for field, key in EVENT_FIELDS.items():
            if field != name and pending.get(field) == self.resolve_field:
                del pending[field]
                value = info.get(key)
                event[field] = value
                if value is not None and origin is not None:
                    origin[field] = "pe"

    def attach(self, event: Any, fields: tuple[str, ...] = tuple(EVENT_FIELDS)) -> None:
        """Make the PE fields of ``event`` that have no value pending on this cache."""
        for field in fields:
            if event.get(field) is None:
                event.set_pending(field, self.resolve_field)


_default: VersionInfoCache | None = None
_default_lock = threading.Lock()


def default_cache() -> VersionInfoCache:
    """The process-wide cache used by the sensor."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = VersionInfoCache()
    return _default
