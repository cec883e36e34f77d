"""PE version information (OriginalFilename, CompanyName, ...) for process enrichment.

``read_version_info(path)`` / ``parse_version_info(data)`` return a dict with the keys
``OriginalFilename``, ``InternalName``, ``CompanyName``, ``ProductName``,
``FileDescription``, ``FileVersion``, ``ProductVersion`` (str or None) and
``file_version`` / ``product_version`` (VS_FIXEDFILEINFO as "a.b.c.d" or None), or
raise ``PeError`` (``.code`` stable, ``.reason`` readable).

The native reader (``sensor._pe``, cffi over native/pe_version.c) is used when it is
built; otherwise the pure-Python twin, which defines the behaviour.
``SENSOR_NO_EXTENSIONS=1`` forces the twin.  ``VersionInfoCache`` adds a bounded LRU
(validated by change notifications, or by (size, mtime_ns)) and a never-raising
ProcessEvent resolver.
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
    size = mtime = 0
    try:
        size, mtime = _py_stat(path)
        return _pe_py.read_version_info(path), None, size, mtime
    except PeError as exc:
        return None, exc, size, mtime


class VersionInfoCache:
    """Bounded LRU of version info, one entry per path; failures are cached too.

    An entry is answered again only while the file is provably the one parsed:

    - *watched* entries (``watch=True`` and the OS can watch every folder on the path, see
      ``filewatch``): a hit costs no system call; a change notification for the file or
      any folder on its path drops the entry.  This also sees a replacement padded to the
      same size with its timestamps set back, which the stat check cannot.
    - other entries: each lookup stats the file and compares (size, mtime_ns).

    ``hits``/``misses`` count lookups (``watched_hits`` the hits without a stat),
    ``failures`` the parses that raised PeError, ``invalidations`` the entries dropped by
    change notifications and ``resolver_errors`` unexpected errors swallowed by
    ``resolve_field``.  ``close()`` stops the watcher.
    """

    def __init__(self, maxsize: int = 4096, implementation: str | None = None, *,
                 watch: bool = False, max_watched_dirs: int = 4096) -> None:
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
        # path -> (size, mtime_ns, info dict | (code, reason), watched)
        self._data: OrderedDict[str, tuple] = OrderedDict()
        self._by_dir: dict[str, set[str]] = {}   # folded parent folder -> cached paths
        self._reading: dict[str, list[list[bool]]] = {}  # path -> "changed meanwhile" flags
        self._lock = threading.Lock()
        self.hits = self.misses = self.failures = self.resolver_errors = 0
        self.watched_hits = self.invalidations = 0
        self._watcher = None
        self._want_watch = watch  # the watcher starts with the first miss
        self._max_watched_dirs = max_watched_dirs

    def _start_watcher(self):
        with self._lock:
            if self._want_watch and self._watcher is None:
                from .filewatch import make_watcher
                self._watcher = make_watcher(self._on_change, self._max_watched_dirs)
                self._want_watch = False  # one attempt: an OS without a watcher uses stat
            return self._watcher

    @property
    def watching(self) -> bool:
        """True when a change watcher runs (or will, with the first miss) for this cache."""
        if self._want_watch:
            self._start_watcher()
        return self._watcher is not None

    def __len__(self) -> int:
        return len(self._data)

    def get(self, path: str | os.PathLike, size: int | None = None,
            mtime_ns: int | None = None) -> dict:
        """Version info of ``path`` (a fresh dict), cached; raises PeError (also cached).

        Pass ``size`` and ``mtime_ns`` when the caller already knows them; otherwise a
        watched entry is answered as is and any other is checked with a stat, so a
        replaced file is never answered from the cache.
        """
        if path.__class__ is not str:
            path = _fspath(path)
        data = self._data
        if size is None or mtime_ns is None:
            with self._lock:
                entry = data.get(path)
                if entry is not None and entry[3]:
                    data.move_to_end(path)
                    self.hits += 1
                    self.watched_hits += 1
            if entry is not None and entry[3]:
                return self._answer(entry[2])
            size, mtime_ns = self._stat(path)
        with self._lock:
            entry = data.get(path)
            if entry is not None and entry[0] == size and entry[1] == mtime_ns:
                data.move_to_end(path)
                self.hits += 1
            else:
                entry = None
        if entry is not None:
            return self._answer(entry[2])
        return self._miss(path)

    @staticmethod
    def _answer(value) -> dict:
        if value.__class__ is tuple:  # cached failure: (code, reason)
            raise PeError(*value)
        return value.copy()

    def _miss(self, path: str) -> dict:
        # Watches go in before the read, so a change after it is always reported; a change
        # reported while reading (flag set by _on_change) keeps the answer out of the cache.
        watched = self._watch(path)
        flag = [False]
        with self._lock:
            self.misses += 1
            self._reading.setdefault(path, []).append(flag)
        try:
            info, exc, fsize, fmtime = self._read(path)
        finally:
            with self._lock:
                flags = self._reading[path]
                flags.remove(flag)
                if not flags:
                    del self._reading[path]
        with self._lock:
            if exc is not None:
                self.failures += 1
            # A file that cannot be opened has no identity: not cached.
            if (exc is None or exc.code != "io") and not flag[0]:
                self._store(path, (fsize, fmtime, (exc.code, exc.reason) if exc is not None
                                   else info, watched))
        if exc is not None:
            raise exc
        return info.copy()

    def _watch(self, path: str) -> bool:
        """Watch every folder on ``path``; True when all are watched and the file is its
        only name (a second hard link could change it unseen from this folder)."""
        watcher = self._watcher
        if watcher is None and self._want_watch:
            watcher = self._start_watcher()
        if watcher is None:
            return False
        from .filewatch import watch_chain
        chain = watch_chain(path)
        if chain is None or not all(watcher.add(d) for d in chain):
            return False
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return False
        return st.st_nlink == 1 and not os.path.islink(path)

    def _store(self, path: str, entry: tuple) -> None:
        data = self._data
        if path not in data:
            self._by_dir.setdefault(os.path.normcase(os.path.dirname(path)), set()).add(path)
        data[path] = entry
        data.move_to_end(path)
        while len(data) > self.maxsize:
            old, _ = data.popitem(last=False)
            self._unindex(old)

    def _unindex(self, path: str) -> None:
        d = os.path.normcase(os.path.dirname(path))
        paths = self._by_dir.get(d)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._by_dir[d]

    def _on_change(self, directory: str | None, name: str | None, is_dir: bool | None) -> None:
        """Watcher callback: drop what a change may have made stale (see filewatch)."""
        with self._lock:
            if directory is None:  # overflow: anything may have changed
                for flags in self._reading.values():
                    for f in flags:
                        f[0] = True
                self.invalidations += sum(1 for e in self._data.values() if e[3])
                for p in [p for p, e in self._data.items() if e[3]]:
                    del self._data[p]
                    self._unindex(p)
                return
            norm = os.path.normcase
            folder = norm(directory)
            # Windows may report the 8.3 short name of a file: any such name stands for
            # the whole folder.
            if name is not None and "~" in name and sys.platform == "win32":
                name = None
            target = folder if name is None else norm(os.path.join(folder, name))
            prefix = target.rstrip(os.sep) + os.sep
            doomed: list[str] = []
            if name is not None and not is_dir:  # the file itself
                for p in self._by_dir.get(folder, ()):
                    if norm(p) == target:
                        doomed.append(p)
            if name is None or is_dir is not False:  # a folder: everything below it
                for d, paths in self._by_dir.items():
                    if d == target or d.startswith(prefix):
                        doomed.extend(paths)
            for p, flags in self._reading.items():
                np = norm(p)
                if np == target or np.startswith(prefix):
                    for f in flags:
                        f[0] = True
            for p in set(doomed):
                if self._data.pop(p, None) is not None:
                    self.invalidations += 1
                self._unindex(p)

    def close(self) -> None:
        """Stop the change watcher; entries it vouched for are checked with stat from now."""
        with self._lock:
            w, self._watcher, self._want_watch = self._watcher, None, False
        if w is not None:
            w.close()
            with self._lock:
                for p, e in self._data.items():
                    if e[3]:
                        self._data[p] = e[:3] + (False,)

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
            self._by_dir.clear()

    def stats(self) -> dict[str, int]:
        """Counters and occupancy, for the status command and metrics."""
        w = self._watcher
        return {"hits": self.hits, "misses": self.misses, "failures": self.failures,
                "resolver_errors": self.resolver_errors, "size": len(self._data),
                "maxsize": self.maxsize, "watched_hits": self.watched_hits,
                "invalidations": self.invalidations,
                "watched_dirs": len(w) if w is not None else 0,
                "watch_failures": w.failures if w is not None else 0}

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
