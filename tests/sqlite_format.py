"""The SQLite file format's encodings, written from its documentation, for tests that build
or damage database files by hand."""
from __future__ import annotations


def enc_varint(v: int) -> bytes:
    """A SQLite varint: 7 bits a byte, high bit set on all but the last, big-endian; the ninth
    byte (when 8 are not enough for 64 bits) holds 8 bits."""
    v &= (1 << 64) - 1
    if v >> 56:
        out = [v & 0xFF]
        v >>= 8
        for _ in range(8):
            out.append(0x80 | (v & 0x7F))
            v >>= 7
        return bytes(reversed(out))
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    return bytes(reversed(out))
