"""Pure-Python twin of native/pe_version.c: the same VERSIONINFO walk, step by step.

It defines the behaviour of the native reader (docs/pe.md is the written form):
every check happens in the same order with the same outcome, so both return the
same dict or raise ``PeError`` with the same code.  Layouts: PE/COFF resource
directory and VS_VERSIONINFO (reference notes §3).
"""
from __future__ import annotations

import os
import stat
import struct
from codecs import utf_16_le_decode
from typing import BinaryIO

BLOB_MAX = 65536
MAX_DIR_ENTRIES = 4096
MAX_NODES = 8192
MAX_TABLES = 64
MAX_TRANSLATIONS = 32

# Stable error codes (index = native status) and their messages.
ERRORS: tuple[tuple[str, str], ...] = (
    ("ok", "ok"),
    ("io", "cannot open or read the file"),
    ("not_mz", "not an executable (no MZ signature)"),
    ("truncated", "truncated file: a header or table runs past the end"),
    ("not_pe", "not a PE image (no PE signature)"),
    ("bad_optional", "unknown optional header magic (neither PE32 nor PE32+)"),
    ("no_resources", "no resource directory"),
    ("rva", "an RVA is not backed by section data in the file"),
    ("resdir", "malformed resource directory"),
    ("no_version", "no version resource (RT_VERSION, ID 1)"),
    ("past_eof", "the version resource runs past the end of the file"),
    ("bad_version", "malformed version resource"),
    ("arg", "bad argument"),
    ("not_regular", "not a regular file (a folder, device or pipe)"),
)
(OK, E_IO, E_NOT_MZ, E_TRUNCATED, E_NOT_PE, E_BAD_OPTIONAL, E_NO_RESOURCES, E_RVA, E_RESDIR,
 E_NO_VERSION, E_PAST_EOF, E_BAD_VERSION, E_ARG, E_NOT_REGULAR) = range(len(ERRORS))

# Version strings in result order (resource key names).
STRING_KEYS: tuple[str, ...] = (
    "OriginalFilename", "InternalName", "CompanyName", "ProductName",
    "FileDescription", "FileVersion", "ProductVersion",
)
RESULT_KEYS: tuple[str, ...] = STRING_KEYS + ("file_version", "product_version")
_FOLDED_KEYS = tuple(k.lower() for k in STRING_KEYS)
_FALLBACK_TABLES = (0x040904B0, 0x040904E4, 0x04090000)

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_sec = struct.Struct("<4I").unpack_from
_dirhdr = struct.Struct("<12xHH").unpack_from
_entry = struct.Struct("<II").unpack_from
_node = struct.Struct("<HHH").unpack_from


class PeError(Exception):
    """A file whose version information cannot be read; ``code`` is stable, ``reason`` readable."""

    def __init__(self, code: str, reason: str | None = None) -> None:
        self.code = code
        self.reason = reason or dict(ERRORS).get(code, code)
        super().__init__(self.reason)


def error_for(status: int, detail: str | None = None) -> PeError:
    """The PeError for a native status code."""
    code, reason = ERRORS[status] if 0 <= status < len(ERRORS) else ("unknown", "unknown error")
    return PeError(code, f"{reason}: {detail}" if detail else reason)


class _Fail(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Source:
    """Random access to a bytes buffer or an open file; callers check bounds first."""

    __slots__ = ("data", "fh", "size")

    def __init__(self, data: bytes | None, fh: BinaryIO | None, size: int) -> None:
        self.data, self.fh, self.size = data, fh, size

    def read(self, off: int, n: int) -> bytes:
        if self.data is not None:
            return self.data[off:off + n]
        fh = self.fh
        fh.seek(off)
        out = fh.read(n)
        if len(out) != n:  # the file shrank under us
            raise _Fail(E_IO)
        return out


def _fold(u: int) -> int:
    return u + 32 if 0x41 <= u <= 0x5A else u


def _align4(v: int) -> int:
    return (v + 3) & ~3


class _Node:
    __slots__ = ("end", "key", "keylen", "val", "vbytes", "kids")


_STOP, _BAD = -1, -2


def _node_at(b: bytes, pos: int, limit: int):
    """A version-tree node at ``pos`` bounded by ``limit``; _STOP or _BAD as in the C code."""
    if pos + 6 > limit:
        return _STOP
    wlen, vlen, wtype = _node(b, pos)
    if wlen < 6:
        return _STOP
    nd = _Node()
    nd.end = min(pos + wlen, limit)
    nd.key = k = pos + 6
    while True:
        if k + 2 > nd.end:
            return _BAD
        if b[k] == 0 and b[k + 1] == 0:
            break
        k += 2
    nd.keylen = (k - nd.key) // 2
    nd.val = _align4(k + 2)
    nd.vbytes = 2 * vlen if wtype else vlen
    nd.kids = _align4(nd.val + nd.vbytes)
    return nd


def _key_folded(b: bytes, nd: _Node) -> str:
    """The key with ASCII letters folded; non-ASCII units kept (compared exactly)."""
    units = struct.unpack_from(f"<{nd.keylen}H", b, nd.key)
    return "".join(chr(_fold(u)) for u in units)


def _key_hex(b: bytes, nd: _Node) -> int | None:
    if nd.keylen != 8:
        return None
    v = 0
    for u in struct.unpack_from("<8H", b, nd.key):
        if 0x30 <= u <= 0x39:
            d = u - 0x30
        elif 0x61 <= u <= 0x66:
            d = u - 0x61 + 10
        elif 0x41 <= u <= 0x46:
            d = u - 0x41 + 10
        else:
            return None
        v = (v << 4) | d
    return v


class _Walk:
    """Child iteration with the global node cap shared by every level."""

    __slots__ = ("b", "nodes")

    def __init__(self, b: bytes) -> None:
        self.b, self.nodes = b, 0

    def children(self, parent: _Node):
        b = self.b
        pos = parent.kids
        while pos < parent.end and self.nodes < MAX_NODES:
            self.nodes += 1
            nd = _node_at(b, pos, parent.end)
            if nd is _STOP:
                return
            yield nd
            pos += _align4(_u16(b, pos)[0])


def _parse_blob(b: bytes, root: _Node) -> dict:
    out: dict = dict.fromkeys(RESULT_KEYS)
    if root.vbytes >= 52 and root.val + 52 <= root.end and _u32(b, root.val)[0] == 0xFEEF04BD:
        fms, fls, pms, pls = struct.unpack_from("<4I", b, root.val + 8)
        out["file_version"] = f"{fms >> 16}.{fms & 0xFFFF}.{fls >> 16}.{fls & 0xFFFF}"
        out["product_version"] = f"{pms >> 16}.{pms & 0xFFFF}.{pls >> 16}.{pls & 0xFFFF}"

    walk = _Walk(b)
    sfi = vfi = None
    for ch in walk.children(root):
        if ch is _BAD:
            continue
        key = _key_folded(b, ch)
        if sfi is None and key == "stringfileinfo":
            sfi = ch
        elif vfi is None and key == "varfileinfo":
            vfi = ch
        if sfi is not None and vfi is not None:
            break

    trans: list[int] = []
    if vfi is not None:
        for ch in walk.children(vfi):
            if ch is not _BAD and _key_folded(b, ch) == "translation":
                avail = ch.end - ch.val if ch.val <= ch.end else 0
                n = min(min(ch.vbytes, avail) // 4, MAX_TRANSLATIONS)
                for i in range(n):
                    d = _u32(b, ch.val + 4 * i)[0]  # LOWORD lang, HIWORD codepage
                    trans.append(((d & 0xFFFF) << 16) | (d >> 16))
                break

    if sfi is None:
        return out
    tables: list[tuple[_Node, int | None]] = []
    for ch in walk.children(sfi):
        if ch is _BAD:
            continue
        tables.append((ch, _key_hex(b, ch)))
        if len(tables) == MAX_TABLES:
            break

    chosen = None
    for want in trans + list(_FALLBACK_TABLES):
        chosen = next((t for t, tid in tables if tid == want), None)
        if chosen is not None:
            break
    if chosen is None:
        chosen = next((t for t, tid in tables if tid is not None and tid >> 16 == 0), None)
    if chosen is None and tables:
        chosen = tables[0][0]
    if chosen is None:
        return out

    seen: set[int] = set()
    for ch in walk.children(chosen):
        if ch is _BAD:
            continue
        try:
            f = _FOLDED_KEYS.index(_key_folded(b, ch))
        except ValueError:
            continue
        if f in seen:
            continue
        seen.add(f)
        # NUL-terminated UTF-16 bounded by the node end; wValueLength is only a hint.
        u = ch.val
        while u + 2 <= ch.end and (b[u] or b[u + 1]):
            u += 2
        raw = b[ch.val:u] if u > ch.val else b""
        while raw.endswith(b" \x00"):
            raw = raw[:-2]
        if len(raw) >= 8 and raw[:-6].endswith(b".\x00") and _is_mui(raw[-6:]):
            raw = raw[:-8]
        if raw:
            out[STRING_KEYS[f]] = utf_16_le_decode(raw, "replace", True)[0]
    return out


def _is_mui(tail: bytes) -> bool:
    return tuple(_fold(u) for u in struct.unpack("<3H", tail)) == (0x6D, 0x75, 0x69)


def _parse(src: _Source) -> dict:
    size = src.size
    if size < 2:
        raise _Fail(E_NOT_MZ)
    h = src.read(0, 2 if size < 64 else 64)
    if h[:2] != b"MZ":
        raise _Fail(E_NOT_MZ)
    if size < 64:
        raise _Fail(E_TRUNCATED)
    lfanew = _u32(h, 0x3C)[0]
    if lfanew + 4 > size:
        raise _Fail(E_TRUNCATED)
    if src.read(lfanew, 4) != b"PE\0\0":
        raise _Fail(E_NOT_PE)
    if lfanew + 24 > size:
        raise _Fail(E_TRUNCATED)
    coff = src.read(lfanew + 4, 20)
    nsec = _u16(coff, 2)[0]
    optsz = _u16(coff, 16)[0]
    opt = lfanew + 24
    if opt + 2 > size:
        raise _Fail(E_TRUNCATED)
    magic = _u16(src.read(opt, 2), 0)[0]
    if magic == 0x10B:
        nrva_off, dd_off = 92, 96
    elif magic == 0x20B:
        nrva_off, dd_off = 108, 112
    else:
        raise _Fail(E_BAD_OPTIONAL)
    if optsz < dd_off + 24:
        raise _Fail(E_NO_RESOURCES)
    if opt + dd_off + 24 > size:
        raise _Fail(E_TRUNCATED)
    nrva = _u32(src.read(opt + nrva_off, 4), 0)[0]
    res_rva, res_size = struct.unpack("<II", src.read(opt + dd_off + 16, 8))
    if nrva < 3 or res_rva == 0 or res_size == 0:
        raise _Fail(E_NO_RESOURCES)
    sec = opt + optsz
    if sec + 40 * nsec > size:
        raise _Fail(E_TRUNCATED)

    def map_rva(rva: int) -> tuple[int, int, int]:
        for i in range(nsec):
            vs, va, rs, ptr = _sec(src.read(sec + 40 * i + 8, 16), 0)
            span = vs if vs else rs
            if va <= rva < va + span:
                delta = rva - va
                return ptr + delta, delta, rs
        raise _Fail(E_RVA)

    off, delta, raw = map_rva(res_rva)
    if delta + 16 > raw:
        raise _Fail(E_RVA)
    rbase = off
    rlim = min(off - delta + raw, size)

    def dir_check(rel: int, need: int) -> None:
        a = rbase + rel
        if a + need > rlim:
            raise _Fail(E_TRUNCATED if a + need > size else E_RESDIR)

    def dir_open(rel: int) -> int:
        dir_check(rel, 16)
        named, ids = _dirhdr(src.read(rbase + rel, 16), 0)
        n = named + ids
        if n > MAX_DIR_ENTRIES:
            raise _Fail(E_RESDIR)
        dir_check(rel + 16, 8 * n)
        return n

    def entries(rel: int, n: int):
        for i in range(n):
            yield _entry(src.read(rbase + rel + 16 + 8 * i, 8), 0)

    def find_subdir(rel: int, want: int) -> int:
        n = dir_open(rel)
        for name, otd in entries(rel, n):
            if name & 0x80000000:
                continue
            if name == want:
                if not otd & 0x80000000:
                    raise _Fail(E_RESDIR)
                return otd & 0x7FFFFFFF
        raise _Fail(E_NO_VERSION)

    d1 = find_subdir(0, 16)  # RT_VERSION
    d2 = find_subdir(d1, 1)  # VS_VERSION_INFO
    n = dir_open(d2)
    first = neutral = en_us = None
    for name, otd in entries(d2, n):
        if name & 0x80000000 or otd & 0x80000000:
            continue
        if first is None:
            first = otd
        if name == 0 and neutral is None:
            neutral = otd
        elif name == 0x409 and en_us is None:
            en_us = otd
    data_rel = next((x for x in (neutral, en_us, first) if x is not None), None)
    if data_rel is None:
        raise _Fail(E_NO_VERSION)

    dir_check(data_rel, 16)
    drva, dsize = struct.unpack("<II", src.read(rbase + data_rel, 8))
    eoff, edelta, eraw = map_rva(drva)
    if eoff + dsize > size:
        raise _Fail(E_PAST_EOF)
    if edelta + dsize > eraw:
        raise _Fail(E_RVA)
    if dsize < 6:
        raise _Fail(E_BAD_VERSION)
    blob = src.read(eoff, min(dsize, BLOB_MAX))
    wlen = _u16(blob, 0)[0]
    if wlen < 6 or wlen > dsize:
        raise _Fail(E_BAD_VERSION)
    root = _node_at(blob, 0, wlen)
    if not isinstance(root, _Node) or _key_folded(blob, root) != "vs_version_info":
        raise _Fail(E_BAD_VERSION)
    return _parse_blob(blob, root)


def parse_version_info(data: bytes | bytearray | memoryview) -> dict:
    """Version info of an in-memory PE image; raises PeError."""
    data = bytes(data)
    try:
        return _parse(_Source(data, None, len(data)))
    except _Fail as f:
        raise error_for(f.status) from None


# Like the native reader: a FIFO without a writer must not block the open.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)


def open_regular(path: str | os.PathLike) -> tuple[BinaryIO, int]:
    """(file, size) of ``path`` opened for reading, when it is a regular file; raises _Fail
    (E_NOT_REGULAR) for a folder, FIFO, socket or device, OSError when it cannot be opened."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Fail(E_NOT_REGULAR)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=0), st.st_size


def read_version_info(path: str | os.PathLike) -> dict:
    """Version info of the PE file at ``path``, reading only the ranges needed; raises PeError."""
    try:
        fh, size = open_regular(path)
        with fh:
            return _parse(_Source(None, fh, size))
    except _Fail as f:
        raise error_for(f.status) from None
    except OSError as exc:
        raise PeError("io", f"cannot open or read the file: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path
        raise PeError("arg", "bad argument: NUL in path") from None
