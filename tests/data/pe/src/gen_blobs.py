"""Write raw VS_VERSIONINFO blobs that an .rc VERSIONINFO block cannot express.

Each blob gets an .rc file (``1 16 "name.bin"``: ID 1 of type 16 = RT_VERSION) that
build.sh compiles with windres and links like the other fixtures.  Layout per the
VS_VERSIONINFO / StringFileInfo / String / VarFileInfo documentation: WORD wLength,
WORD wValueLength, WORD wType, NUL-terminated UTF-16 key, pad to 4, value, pad to 4,
children each 4-aligned.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def node(key, value: bytes = b"", wtype: int = 0, children=(), vlen=None, wlen=None,
         raw_key: bytes | None = None) -> bytes:
    """One node; ``vlen``/``wlen`` override the computed wValueLength/wLength."""
    k = raw_key if raw_key is not None else key.encode("utf-16-le") + b"\0\0"
    body = pad4(b"\0" * 6 + k) + value
    for ch in children:
        body = pad4(body) + ch
    if vlen is None:
        vlen = len(value) // 2 if wtype else len(value)
    if wlen is None:
        wlen = len(body)
    return struct.pack("<HHH", wlen & 0xFFFF, vlen & 0xFFFF, wtype) + body[6:]


def text(s: str) -> bytes:
    return s.encode("utf-16-le") + b"\0\0"


def string(key: str, value: str, **kw) -> bytes:
    return node(key, text(value), 1, **kw)


def fixed(fv=(1, 0, 0, 0), pv=(1, 0, 0, 0), sig=0xFEEF04BD) -> bytes:
    ms = lambda v: (v[0] << 16) | v[1]  # noqa: E731
    ls = lambda v: (v[2] << 16) | v[3]  # noqa: E731
    return struct.pack("<13I", sig, 0x10000, ms(fv), ls(fv), ms(pv), ls(pv), 0x3F, 0, 0x40004, 1, 0, 0, 0)


def translation(*pairs) -> bytes:
    return node("VarFileInfo", children=[node("Translation", b"".join(
        struct.pack("<HH", lang, cp) for lang, cp in pairs))])


def root(children, value=None, key="VS_VERSION_INFO", wlen=None) -> bytes:
    return node(key, fixed() if value is None else value, 0, children, wlen=wlen)


def sfi(*tables) -> bytes:
    return node("StringFileInfo", children=tables)


def table(key, *strings) -> bytes:
    return node(key, children=strings)


BLOBS: dict[str, tuple[str, bytes]] = {}

BLOBS["value_bytes"] = ("String wValueLength in bytes instead of characters", root([
    sfi(table("040904B0",
              string("OriginalFilename", "bytes.exe", vlen=len(text("bytes.exe"))),
              string("CompanyName", "Byte Counters", vlen=len(text("Byte Counters"))),
              string("FileVersion", "9.9"))),
    translation((0x409, 1200)),
]))

BLOBS["no_fixed"] = ("no VS_FIXEDFILEINFO (root wValueLength 0)", root([
    sfi(table("040904B0", string("OriginalFilename", "nofixed.exe"))),
], value=b""))

BLOBS["bad_fixed_sig"] = ("VS_FIXEDFILEINFO with a wrong signature", root([
    sfi(table("040904B0", string("OriginalFilename", "badsig.exe"))),
], value=fixed(sig=0x12345678)))

BLOBS["zero_wlength"] = ("a String with wLength 0 ends its sibling list", root([
    sfi(table("040904B0",
              string("OriginalFilename", "before.exe"),
              b"\0" * 8,
              string("CompanyName", "after zero"))),
]))

BLOBS["quirks"] = ("embedded NUL, huge wValueLength, unterminated key, binary wType", root([
    sfi(table("040904B0",
              string("OriginalFilename", "abc.exe\0junk"),
              string("CompanyName", "Huge Hint Corp", vlen=0xFFFF),
              node("x", raw_key="FileDescription".encode("utf-16-le"), wtype=1),
              string("ProductName", "after-bad-key"),
              node("InternalName", text("binary-typed"), 0),
              string("FileVersion", "v1.mUi"),
              string("ProductVersion", "   "))),
    translation((0x409, 1200)),
]))

# The last String claims 100 bytes more than its table holds: bounded by the table end.
_last = string("OriginalFilename", "clamped.exe")
_last = struct.pack("<H", len(_last) + 100) + _last[2:]
BLOBS["child_overflow"] = ("a String whose wLength runs past its parent", root([
    sfi(table("040904B0", string("CompanyName", "Overflow Co"), _last)),
]))

BLOBS["bad_root_key"] = ("root key is not VS_VERSION_INFO", root([
    sfi(table("040904B0", string("OriginalFilename", "never.exe"))),
], key="VS_VERSION_INFX"))

_ok = root([sfi(table("040904B0", string("OriginalFilename", "short.exe")))])
BLOBS["root_too_long"] = ("root wLength larger than the resource", struct.pack("<H", len(_ok) + 64) + _ok[2:])

BLOBS["nonhex_tables"] = ("StringTable keys that are not 8 hex digits", root([
    sfi(table("en-US-12", string("OriginalFilename", "first.exe")),
        table("0411XXXX", string("OriginalFilename", "second.exe"))),
    translation((0x409, 1200)),
]))

# 40 Translation pairs; only the 35th names a table, past the 32-pair cap.
_pairs = [(0x400 + i, 1200) for i in range(34)] + [(0x411, 1200)] + [(0x500 + i, 1200) for i in range(5)]
BLOBS["translation_cap"] = ("40 Translation pairs, the match beyond the cap of 32", root([
    sfi(table("040704B0", string("OriginalFilename", "de.exe")),
        table("041104B0", string("OriginalFilename", "ja.exe"))),
    translation(*_pairs),
]))

BLOBS["root_key_case"] = ("every structural key in another case", root([
    node("stringfileinfo", children=[table("040904b0", string("originalfilename", "lower.exe"))]),
    node("VARFILEINFO", children=[node("translation", struct.pack("<HH", 0x409, 1200))]),
], key="vs_version_info"))

BLOBS["varfileinfo_first"] = ("VarFileInfo before StringFileInfo; two StringFileInfo blocks", root([
    translation((0x40C, 1200)),
    sfi(table("040904B0", string("OriginalFilename", "en.exe")),
        table("040C04B0", string("OriginalFilename", "fr.exe"))),
    sfi(table("040C04B0", string("OriginalFilename", "ignored.exe"))),
]))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (what, blob) in BLOBS.items():
        (out / f"{name}.bin").write_bytes(blob)
        (out / f"{name}.rc").write_text(
            f"// {what}\nLANGUAGE 0x09, 0x01\n1 16 \"{name}.bin\"\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "blobs")
