"""A minimal PE32+ image with a version resource, built from scratch (``etw-sensor selftest``).

Off Windows there is no system binary with a version resource to copy, so the self-test writes
one: headers, one ``.rsrc`` section holding RT_VERSION / 1 / 0x0409, a VS_VERSIONINFO with one
StringTable (040904B0) and a Translation.  No code: it is never run, only read.
"""
from __future__ import annotations

import struct

_ALIGN = 0x200
_RVA = 0x1000


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _node(key: str, value: bytes = b"", value_len: int = 0, text: bool = True,
          children: list[bytes] = ()) -> bytes:
    """One VS_VERSIONINFO node: wLength, wValueLength, wType, key, value, children (4-aligned)."""
    head = _pad4(struct.pack("<HHH", 0, value_len, 1 if text else 0) + key.encode("utf-16-le") + b"\0\0")
    body = head + (_pad4(value) if children else value)
    for c in children:
        body = _pad4(body) + c
    return struct.pack("<H", len(body)) + body[2:]


def version_blob(strings: dict[str, str], file_version=(1, 0, 0, 0), lang: int = 0x0409,
                 codepage: int = 0x04B0) -> bytes:
    """VS_VERSIONINFO with ``strings`` in one StringTable and a matching Translation."""
    ms = lambda v: (v[0] << 16) | v[1]   # noqa: E731
    ls = lambda v: (v[2] << 16) | v[3]   # noqa: E731
    fixed = struct.pack("<13I", 0xFEEF04BD, 0x00010000, ms(file_version), ls(file_version),
                        ms(file_version), ls(file_version), 0x3F, 0, 0x40004, 1, 0, 0, 0)
    table = [_node(k, v.encode("utf-16-le") + b"\0\0", len(v) + 1) for k, v in strings.items()]
    sfi = _node("StringFileInfo", children=[_node(f"{lang:04X}{codepage:04X}", children=table)])
    vfi = _node("VarFileInfo", children=[_node("Translation", struct.pack("<HH", lang, codepage), 4,
                                               text=False)])
    return _node("VS_VERSION_INFO", fixed, len(fixed), text=False, children=[sfi, vfi])


def _dir(entries: list[tuple[int, int]]) -> bytes:
    out = struct.pack("<IIHHHH", 0, 0, 0, 0, 0, len(entries))
    for ident, off in entries:
        out += struct.pack("<II", ident, off)
    return out


def pe_with_version(strings: dict[str, str], file_version=(1, 0, 0, 0)) -> bytes:
    """The bytes of a PE32+ file whose version resource holds ``strings``."""
    blob = version_blob(strings, file_version)
    # .rsrc: root (RT_VERSION=16) -> name (ID 1) -> language (0x409) -> data entry -> blob
    root, names, langs, entry, data = 0x00, 0x18, 0x30, 0x48, 0x58
    rsrc = (_dir([(16, 0x80000000 | names)]) + _dir([(1, 0x80000000 | langs)])
            + _dir([(0x0409, entry)]) + struct.pack("<IIII", _RVA + data, len(blob), 0, 0))
    assert len(rsrc) == data - root
    rsrc += blob
    raw = rsrc + b"\0" * (-len(rsrc) % _ALIGN)
    vsize = len(rsrc)
    size_of_image = _RVA + ((vsize + 0xFFF) & ~0xFFF)
    dos = b"MZ" + b"\0" * 58 + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x0022)
    opt = struct.pack("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", 0x20B, 14, 0, 0, len(raw), 0, 0, 0,
                      0x140000000, 0x1000, _ALIGN, 6, 0, 0, 0, 6, 0, 0, size_of_image, _ALIGN, 0, 3, 0x8160,
                      0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    dirs = [(0, 0)] * 16
    dirs[2] = (_RVA, vsize)
    opt += b"".join(struct.pack("<II", a, b) for a, b in dirs)
    section = struct.pack("<8sIIIIIIHHI", b".rsrc", vsize, _RVA, len(raw), _ALIGN, 0, 0, 0, 0, 0x40000040)
    headers = dos + b"PE\0\0" + coff + opt + section
    return headers + b"\0" * (_ALIGN - len(headers)) + raw
