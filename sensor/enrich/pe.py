"""PE version information (OriginalFilename, CompanyName, ...) for process enrichment.

``read_version_info(path)`` / ``parse_version_info(data)`` return a dict with the keys
``OriginalFilename``, ``InternalName``, ``CompanyName``, ``ProductName``,
``FileDescription``, ``FileVersion``, ``ProductVersion`` (str or None) and
``file_version`` / ``product_version`` (VS_FIXEDFILEINFO as "a.b.c.d" or None), or
raise ``PeError`` (``.code`` stable, ``.reason`` readable).

The native reader (``sensor.enrich._pe``, cffi over native/pe_version.c) is used when it is
built; otherwise the pure-Python twin, which defines the behaviour.
``SENSOR_NO_EXTENSIONS=1`` forces the twin.  ``VersionInfoCache`` adds a bounded LRU
validated by the file's identity (one stat per lookup, or per batch of events) and a
never-raising ProcessEvent resolver.
"""
from __future__ import annotations

import itertools
import ntpath
import os
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from .._native import NO_EXTENSIONS
from . import _pe_py
from ._pe_py import RESULT_KEYS, STRING_KEYS, PeError, error_for

__all__ = [
    "PeError", "RESULT_KEYS", "STRING_KEYS", "EVENT_FIELDS", "IMPLEMENTATION", "READERS",
    "read_version_info", "parse_version_info", "VersionInfoCache", "default_cache",
]

# Sigma process_creation field -> version resource key (Sysmon's naming).
EVENT_FIELDS: dict[str, str] = {
    "OriginalFileName": "OriginalFilename",
    "Company": "CompanyName",
    "Product": "ProductName",
    "Description": "FileDescription",
    "FileVersion": "FileVersion",
}

def _sys_detail(err: int) -> str | None:
    """errno (POSIX) or GetLastError() (Windows) as text."""
    if not err:
        return None
    if sys.platform == "win32":
        return f"Windows error {err}"
    return os.strerror(err)


_RESERVED_DEVICES = frozenset(["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
                              + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)])


def windows_open_path(path: str, cwd: str = "C:\\", wow64: bool = False,
                      windir: str = "C:\\Windows") -> str:
    """The path as the Windows reader opens it (twin of ``win_open_path`` in pe_version.c).

    ``\\\\?\\`` and ``\\\\.\\`` paths are kept; ``\\??\\X`` becomes ``\\\\?\\X``; an NT
    device path ``\\Device\\...`` (a volume without a letter, a shadow copy) becomes
    ``\\\\?\\GLOBALROOT\\Device\\...``; anything else is made full (against ``cwd``) and
    prefixed ``\\\\?\\`` (``\\\\?\\UNC\\`` for UNC paths), so paths of 260 characters and more
    open without LongPathsEnabled.  A reserved device name (NUL, CON...) becomes
    ``\\\\.\\NAME`` (refused later: not a disk file).  In a WOW64 process (32-bit Python on
    64-bit Windows) ``<windir>\\System32\\`` becomes ``<windir>\\Sysnative\\``, so the native
    file is read instead of its SysWOW64 namesake."""
    low = path[:8].lower()
    if low.startswith(("\\\\?\\", "\\\\.\\")):
        return path
    if low.startswith("\\??\\"):
        return "\\\\?\\" + path[4:]
    if low.startswith("\\device\\"):
        return "\\\\?\\GLOBALROOT" + path
    full = ntpath.normpath(ntpath.join(cwd, path.replace("/", "\\")))
    head, tail = ntpath.split(full)
    stripped = tail.rstrip(". ")
    if stripped != tail and stripped:
        full = ntpath.join(head, stripped)
    if stripped.split(".", 1)[0].upper() in _RESERVED_DEVICES and stripped.upper() in _RESERVED_DEVICES:
        return "\\\\.\\" + stripped.upper()
    if full.startswith("\\\\"):
        out = "\\\\?\\UNC\\" + full[2:]
    else:
        out = "\\\\?\\" + full
    if wow64:
        sys32 = "\\\\?\\" + windir.rstrip("\\") + "\\System32\\"
        if out[:len(sys32)].lower() == sys32.lower():
            out = out[:len(sys32) - len("System32\\")] + "Sysnative\\" + out[len(sys32):]
    return out


def _is_wow64() -> bool:
    """A 32-bit Python on 64-bit Windows."""
    return sys.platform == "win32" and sys.maxsize < 2**32 and bool(os.environ.get("PROCESSOR_ARCHITEW6432"))


def _twin_path(path: Any) -> Any:
    """The twin opens what the native reader opens: on Windows, ``windows_open_path``."""
    if sys.platform != "win32":
        return path
    p = _fspath(path)
    return windows_open_path(p, os.getcwd(), _is_wow64(), os.environ.get("SystemRoot", "C:\\Windows"))


_native: Any = None
if not NO_EXTENSIONS:
    try:
        from . import _pe as _native  # type: ignore[attr-defined, no-redef]
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

    def _native_read_identity(path: Any) -> tuple[dict | None, PeError | None, Any, Any]:
        """Parse ``path``; also the identity (a ``pev_ident``) of the file actually opened
        (None when it could not be opened) and the path as ``pev_same_ident`` takes it."""
        try:
            p = _encode(path)
        except PeError as exc:
            return None, exc, None, path
        r, blob, text = _buffers()
        status = _lib.pev_file_text(p, r, blob, text)
        ident = _ffi.new("pev_ident *", r.ident) if status != _pe_py.E_IO else None
        try:
            return _native_result(status, r, text), None, ident, p
        except PeError as exc:
            return None, exc, ident, p

    def native_read_version_info(path: str | os.PathLike) -> dict:
        """Version info of the PE file at ``path`` (native reader); raises PeError."""
        r, blob, text = _buffers()
        return _native_result(_lib.pev_file_text(_encode(path), r, blob, text), r, text)

    def native_parse_version_info(data: bytes | bytearray | memoryview) -> dict:
        """Version info of an in-memory PE image (native reader); raises PeError."""
        r, blob, text = _buffers()
        buf = _ffi.from_buffer(data)
        return _native_result(_lib.pev_buffer_text(buf, len(buf), r, blob, text), r, text)

    # The cache's validity check: 1 same identity, 0 changed, -errno.  One stat, in C.
    _native_same = _lib.pev_same_ident

READERS: dict[str, tuple[Callable[[Any], dict], Callable[[Any], dict]]] = {
    "python": (_pe_py.read_version_info, _pe_py.parse_version_info),
}
if _native is not None:
    READERS["native"] = (native_read_version_info, native_parse_version_info)

IMPLEMENTATION = "native" if _native is not None else "python"
read_version_info, parse_version_info = READERS[IMPLEMENTATION]


def _stat_ident(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode, device): the twin of pev_ident."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _py_ident(path: Any) -> tuple[int, int, int, int, int]:
    try:
        return _stat_ident(os.stat(_twin_path(path)))
    except OSError as exc:
        raise PeError("io", f"cannot open or read the file: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path
        raise PeError("arg", "bad argument: NUL in path") from None


def _py_same(path: str, ident: tuple) -> int:
    """Twin of pev_same_ident: 1 same identity, 0 changed, -errno when it cannot stat."""
    try:
        return int(_stat_ident(os.stat(_twin_path(path))) == ident)
    except OSError as exc:
        return -(exc.errno or 5)


def _py_read_identity(path: Any) -> tuple[dict | None, PeError | None, Any, Any]:
    # The identity is taken before the read: a change in between makes the next lookup
    # see a different identity and read again, never the reverse.
    try:
        ident = _py_ident(path)
    except PeError as exc:
        return None, exc, None, path
    try:
        return _pe_py.read_version_info(_twin_path(path)), None, ident, path
    except PeError as exc:
        return None, exc, ident, path


_EPOCHS = itertools.count(1)  # batch numbers, unique across caches and threads


class VersionInfoCache:
    """Bounded LRU of version info, one entry per path; failures are cached too.

    An entry is answered only while the file still has the identity it had when it was
    parsed (``pev_ident``: size, mtime, ctime, inode, device on POSIX; size, last-write
    and creation times, file index, volume on Windows), checked with one stat per
    lookup.  Inside ``with cache.batch():`` a path checked (or parsed) during that batch
    is not checked again: every event of a batch reached the sensor before the batch
    began, so that check was made after each of those events arrived, which is all a
    check of its own could promise.

    ``hits``/``misses`` count lookups (``batch_hits`` the hits that needed no stat),
    ``failures`` the parses that raised PeError and ``resolver_errors`` unexpected errors
    swallowed by ``resolve_field``.
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
            self._same, self._read = _native_same, _native_read_identity
        else:
            self._same, self._read = _py_same, _py_read_identity
        # path -> [identity, info dict | (code, reason), batch number of the last check]
        self._data: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()
        self._tls = threading.local()
        self.hits = self.misses = self.failures = self.resolver_errors = self.batch_hits = 0

    def __len__(self) -> int:
        return len(self._data)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Lookups of this thread inside the block share one check per path.  Enter it
        only after every event the block serves has arrived (the pipeline enters it for
        each batch it takes from its queue)."""
        tls = self._tls
        outer = getattr(tls, "epoch", 0)
        tls.epoch = next(_EPOCHS)
        try:
            yield
        finally:
            tls.epoch = outer

    def get(self, path: str | os.PathLike) -> dict:
        """Version info of ``path`` (a fresh dict), cached; raises PeError (also cached).

        A cached answer is given only if the file still has the identity it had when it
        was parsed, so a replaced file is never answered from the cache.
        """
        if path.__class__ is not str:
            path = _fspath(path)
        epoch = getattr(self._tls, "epoch", 0)
        entry = self._data.get(path)  # [identity, answer, batch, path as the check takes it]
        if entry is not None:
            if epoch and entry[2] == epoch:
                with self._lock:
                    self.hits += 1
                    self.batch_hits += 1
                    self._touch(path, entry)
                return self._answer(entry[1])
            rc = self._same(entry[3], entry[0])
            if rc == 1:
                entry[2] = epoch
                with self._lock:
                    self.hits += 1
                    self._touch(path, entry)
                return self._answer(entry[1])
            if rc < 0:  # gone or unreadable: forget it and say why
                with self._lock:
                    self.misses += 1
                    self.failures += 1
                    if self._data.get(path) is entry:
                        del self._data[path]
                raise PeError("io", f"cannot open or read the file: {_sys_detail(-rc)}")
        return self._miss(path, epoch)

    def _touch(self, path: str, entry: list) -> None:
        if self._data.get(path) is entry:  # (the caller holds the lock)
            self._data.move_to_end(path)

    @staticmethod
    def _answer(value) -> dict:
        if value.__class__ is tuple:  # cached failure: (code, reason)
            raise PeError(*value)
        return value.copy()

    def _miss(self, path: str, epoch: int) -> dict:
        info, exc, ident, checked_path = self._read(path)
        data = self._data
        with self._lock:
            self.misses += 1
            if exc is not None:
                self.failures += 1
            # A file that could not be opened or read has no identity: not cached, and
            # whatever was cached for the path before is out of date.
            if ident is not None and (exc is None or exc.code != "io"):
                data[path] = [ident, (exc.code, exc.reason) if exc is not None else info, epoch,
                              checked_path]
                data.move_to_end(path)
                while len(data) > self.maxsize:
                    data.popitem(last=False)
            else:
                data.pop(path, None)
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
        return {"hits": self.hits, "batch_hits": self.batch_hits, "misses": self.misses,
                "failures": self.failures, "resolver_errors": self.resolver_errors,
                "size": len(self._data), "maxsize": self.maxsize}

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
