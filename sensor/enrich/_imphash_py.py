"""Pure-Python twin of native/pe_imphash.c: the IMPHASH text of an in-memory PE image.

It defines the behaviour of the native reader (docs/pe.md, "IMPHASH", is the written form):
every step and check happens in the same order with the same outcome, so both return the same
text or the same status.  The text is what pefile's ``get_imphash()`` hashes for well-formed
images; ``imphash_text`` returns ``(status, text, dlls, symbols)``.
"""
from __future__ import annotations

import struct

from ._imphash_ordinals import ORDINALS

MAX_SECTIONS = 96
MAX_DLLS = 4096
MAX_SYMBOLS = 16384
MAX_NAME = 512
TEXT_MAX = 1 << 20                 # bytes of text the sensor accepts (the native caller's cap)

OK, NONE, E_TOO_LARGE, E_ARG = range(4)
STATUS_NAMES = ("ok", "none", "too_large", "arg")

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_sec = struct.Struct("<4I").unpack_from

_FUNC_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._?@$()<>")
_DLL_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                       b"!#$%&'()-@^_`{}~+,.;=[]:\\/")
_EXTS = (b"dll", b"ocx", b"sys")
_ORD = {dll.encode(): {k: v.lower().encode() for k, v in names.items()} for dll, names in ORDINALS.items()}


class _TooLarge(Exception):
    pass


class _Img:
    __slots__ = ("d", "n", "secs")

    def __init__(self, d: bytes, sec: int, nsec: int) -> None:
        self.d, self.n = d, len(d)
        self.secs = [_sec(d, sec + 40 * i + 8) for i in range(nsec)]

    def map(self, rva: int, n: int) -> tuple[int, int] | None:
        """(file offset, bytes to the end of the section's data) of ``n`` bytes at ``rva``."""
        for vs, va, rs, ptr in self.secs:
            span = vs if vs else rs
            if va <= rva < va + span:
                delta = rva - va
                if delta + n > rs or ptr + delta + n > self.n:
                    return None
                return ptr + delta, min(ptr + rs, self.n) - (ptr + delta)
        return None

    def name(self, rva: int) -> bytes | None:
        """NUL-terminated within MAX_NAME bytes inside the section's raw data, else None."""
        m = self.map(rva, 1)
        if m is None:
            return None
        off, avail = m
        end = self.d.find(b"\0", off, off + min(avail, MAX_NAME))
        return None if end < 0 else self.d[off:end]


def _text(d: bytes) -> tuple[int, list[bytes], int]:
    n = len(d)
    if n < 64 or d[:2] != b"MZ":
        return NONE, [], 0
    lfanew = _u32(d, 0x3C)[0]
    if lfanew + 24 > n or d[lfanew:lfanew + 4] != b"PE\0\0":
        return NONE, [], 0
    nsec = _u16(d, lfanew + 6)[0]
    optsz = _u16(d, lfanew + 20)[0]
    opt = lfanew + 24
    if opt + 2 > n:
        return NONE, [], 0
    magic = _u16(d, opt)[0]
    if magic == 0x10B:
        nrva_off, dd_off, tsz, mask, flag = 92, 96, 4, 0x7FFFFFFF, 0x80000000
    elif magic == 0x20B:
        nrva_off, dd_off, tsz, mask, flag = 108, 112, 8, (1 << 63) - 1, 1 << 63
    else:
        return NONE, [], 0
    if optsz < dd_off + 16 or opt + dd_off + 16 > n:
        return NONE, [], 0
    if _u32(d, opt + nrva_off)[0] < 2:
        return NONE, [], 0
    pos = _u32(d, opt + dd_off + 8)[0]          # DataDirectory[1]: IMPORT
    if pos == 0:
        return NONE, [], 0
    if nsec > MAX_SECTIONS:
        raise _TooLarge
    sec = opt + optsz
    if sec + 40 * nsec > n:
        return NONE, [], 0
    im = _Img(d, sec, nsec)
    thunk = _u32 if tsz == 4 else _u64
    out: list[bytes] = []
    dlls = examined = thunks = 0
    while True:
        m = im.map(pos, 20)
        if m is None:
            break
        off = m[0]
        desc = d[off:off + 20]
        if desc == bytes(20):
            break                                   # the all-zero descriptor ends the table
        examined += 1
        if examined > MAX_DLLS:
            raise _TooLarge
        pos += 20
        oft, _, _, name_rva, ft = struct.unpack("<5I", desc)
        dll = im.name(name_rva)
        if dll == b"":
            continue                                # an empty name drops the descriptor
        if dll is None or not _DLL_CHARS.issuperset(dll):
            dll = b"*invalid*"
        low = dll.lower()
        stem = low
        dot = low.rfind(b".")
        if dot >= 0 and low[dot + 1:] in _EXTS:
            stem = low[:dot]
        names = _ORD.get(low)
        table = ft
        if oft:
            t0 = im.map(oft, tsz)
            if t0 is not None and thunk(d, t0[0])[0] != 0:
                table = oft
        k = 0
        any_ = False
        while table:
            tm = im.map(table + k * tsz, tsz)
            k += 1
            if tm is None:
                break
            v = thunk(d, tm[0])[0]
            if v == 0:
                break
            thunks += 1
            if thunks > MAX_SYMBOLS:
                raise _TooLarge
            if v & flag:
                ordinal = v & 0xFFFF
                if ordinal == 0:
                    continue                        # an ordinal 0 is no import
                func = (names or {}).get(ordinal) or b"ord%d" % ordinal
            else:
                hint = v & mask
                if hint > 0xFFFFFFFF - 2:
                    continue
                fn = im.name(hint + 2)
                if not fn or not _FUNC_CHARS.issuperset(fn):
                    continue                        # not a function name: skipped
                func = fn.lower()
            out.append(stem + b"." + func)
            any_ = True
        if any_:
            dlls += 1
    if not out:
        return NONE, [], 0
    return OK, out, dlls


def imphash_text(data: bytes | bytearray | memoryview, cap: int = TEXT_MAX) -> tuple[int, str, int, int]:
    """``(status, text, dlls, symbols)`` for an in-memory image; text is "" unless OK."""
    d = bytes(data)
    try:
        status, parts, dlls = _text(d)
    except _TooLarge:
        return E_TOO_LARGE, "", 0, 0
    if status != OK:
        return status, "", 0, 0
    text = b",".join(parts)
    if len(text) > cap:
        return E_TOO_LARGE, "", 0, 0
    return OK, text.decode("ascii"), dlls, len(parts)
