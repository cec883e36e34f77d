"""File hashes of a process image, as Sysmon writes them: ``SHA256=...,MD5=...,IMPHASH=...``.

``imphash_text(data)`` is the IMPHASH input of an in-memory PE image: the native reader
(native/pe_imphash.c, in the same cffi module as the version reader) when it is built, else the
pure-Python twin (``_imphash_py``), which defines the behaviour; docs/pe.md ("IMPHASH").
``HashCache`` reads a file once per identity (size, mtime, ctime, inode, device: the same
identity the PE version-info cache checks), bounded in file size, and never raises: an image it
cannot read or that is larger than the bound gets no ``Hashes`` (counted).

The hex digits are upper case, the algorithms in the configured order; an image without imports
gets Sysmon's ``IMPHASH=00000000000000000000000000000000``.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import Any

from .._native import NO_EXTENSIONS
from . import _imphash_py

ALGORITHMS = ("SHA1", "MD5", "SHA256", "IMPHASH")
DEFAULT_ALGORITHMS = ("SHA256", "MD5", "IMPHASH")
DEFAULT_MAX_SIZE = 64 << 20        # bytes: a larger image gets no Hashes
NO_IMPORTS = "0" * 32
TEXT_MAX = _imphash_py.TEXT_MAX

_native: Any = None
if not NO_EXTENSIONS:
    try:
        from . import _pe as _native  # type: ignore[attr-defined, no-redef]
        if not hasattr(_native.lib, "pih_imphash_text"):
            _native = None
    except ImportError:
        _native = None

IMPLEMENTATION = "native" if _native is not None else "python"


_tls = threading.local()


def _native_text(data: bytes | bytearray | memoryview) -> tuple[int, str, int, int]:
    ffi, lib = _native.ffi, _native.lib
    try:
        r, out = _tls.bufs
    except AttributeError:
        # per thread: cffi releases the GIL during the call, so threads must not share them
        r, out = _tls.bufs = (ffi.new("pih_result *"), ffi.new("char[]", TEXT_MAX))
    buf = ffi.from_buffer(data)
    status = lib.pih_imphash_text(buf, len(data), out, TEXT_MAX, r)
    if status != _imphash_py.OK:
        return status, "", 0, 0
    return status, ffi.buffer(out, r.out_len)[:].decode("ascii"), r.dlls, r.symbols


def imphash_text(data: bytes | bytearray | memoryview, implementation: str | None = None
                 ) -> tuple[int, str, int, int]:
    """``(status, text, dlls, symbols)``: status 0 ok, 1 no imports / not PE, 2 too large."""
    impl = implementation or IMPLEMENTATION
    if impl == "native":
        if _native is None:
            raise ValueError("the native IMPHASH reader is not built")
        return _native_text(data)
    return _imphash_py.imphash_text(data)


def imphash(data: bytes | bytearray | memoryview, implementation: str | None = None) -> str | None:
    """The IMPHASH (lower-case hex MD5), all zeros without imports, None when over the bounds."""
    status, text, _, _ = imphash_text(data, implementation)
    if status == _imphash_py.OK:
        return hashlib.md5(text.encode("ascii"), usedforsecurity=False).hexdigest()
    if status == _imphash_py.NONE:
        return NO_IMPORTS
    return None


def check_algorithms(names) -> tuple[str, ...]:
    """Upper-cased, known, without repeats; ValueError naming an unknown one."""
    out: list[str] = []
    for n in names:
        u = str(n).upper()
        if u not in ALGORITHMS:
            raise ValueError(f"unknown hash algorithm {n!r} (known: {', '.join(ALGORITHMS)})")
        if u not in out:
            out.append(u)
    if not out:
        raise ValueError("no hash algorithm given")
    return tuple(out)


def hashes_of(data: bytes, algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS) -> str | None:
    """The Sysmon-style ``Hashes`` value of a file's bytes."""
    parts = []
    for name in algorithms:
        if name == "IMPHASH":
            value = imphash(data)
            if value is None:
                return None
        else:
            value = hashlib.new(name.lower(), data, usedforsecurity=False).hexdigest()
        parts.append(f"{name}={value.upper()}")
    return ",".join(parts)


def _ident(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class HashCache:
    """``Hashes`` by path, valid while the file keeps its identity; bounded LRU; never raises."""

    def __init__(self, algorithms=DEFAULT_ALGORITHMS, max_size: int = DEFAULT_MAX_SIZE,
                 maxsize: int = 4096) -> None:
        self.algorithms = check_algorithms(algorithms)
        self.max_size = max_size
        self.maxsize = maxsize
        self._data: OrderedDict[str, tuple[tuple, str | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.too_large = self.errors = 0

    def lookup(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            self.errors += 1
            return None
        ident = _ident(st)
        with self._lock:
            entry = self._data.get(path)
            if entry is not None and entry[0] == ident:
                self._data.move_to_end(path)
                self.hits += 1
                return entry[1]
        self.misses += 1
        if st.st_size > self.max_size:
            self.too_large += 1
            value = None
        else:
            try:
                with open(path, "rb") as fh:
                    data = fh.read(self.max_size + 1)
            except (OSError, ValueError):
                self.errors += 1
                return None
            if len(data) > self.max_size:
                self.too_large += 1
                value = None
            else:
                value = hashes_of(data, self.algorithms)
                if value is None:
                    self.too_large += 1
        with self._lock:
            self._data[path] = (ident, value)      # the identity taken before the read
            self._data.move_to_end(path)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def stats(self) -> dict[str, int]:
        return {"hash_hits": self.hits, "hash_misses": self.misses, "hash_too_large": self.too_large,
                "hash_errors": self.errors, "hash_entries": len(self._data)}
