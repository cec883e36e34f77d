"""Read the rows of a damaged spool file straight from its pages, without SQLite.

When SQLite refuses a spool ("database disk image is malformed", "file is not a database"), the
alerts in it are usually still on disk: damage hits a few pages, and a truncated file keeps every
page before the cut. This module reads the file by the documented SQLite file format (the
database header, table b-tree leaf pages, overflow chains, record encoding, and the write-ahead
log's frames) and yields every row of the spool's tables that it can still decode, whatever
happened to the header, the schema page or the interior pages of the b-trees, with one limit:
a header that still reads as one is trusted for the count of reserved bytes at the end of each
page (byte 20; the spool has none), so damage to that byte alone makes the cells that end in
those bytes count as bad cells (lost, and counted as such) where SQLite would still read them.

How it stays honest:

- Only committed state is read. Pages come from the main file, overlaid by the frames of the
  ``-wal`` file up to its last valid commit (salts and cumulative checksums checked), newest
  frame of a page winning; frames after the last commit are ignored.
- Only live rows are read: a leaf page's cells are taken through its cell-pointer array, never
  from free space; the spool runs with ``secure_delete=FAST``, so a deleted row's bytes in a leaf
  page are zeroed. Pages freed by a b-tree rebalance still hold stale copies of rows that live
  (or were deleted) elsewhere, so when the tables' b-trees can be walked from the schema on
  page 1 without meeting a damaged page, and (when the header leads to the freelist) every
  table leaf page in the file is reached by a tree or named by the freelist, exactly the leaves
  the walk reaches are read. Otherwise every
  leaf page is read except those the freelist names (when the header that leads to it is
  readable); then a stale copy of a row confirmed long ago can come back, and the caller keeps
  one row per alert id (at-least-once: a duplicate, never a loss).
- Rows are recognised by their shape (column count and types), since the schema page may be
  the damaged one; a row that does not decode is skipped and counted, never guessed at.

Work is bounded: each page is read once for the scan, an overflow chain stops at a page seen
before in that chain, past the end of the file, or beyond ``MAX_PAYLOAD``; a chain that names
page 0 or page 1 (the schema's root, never an overflow page) makes its row a bad cell, and the
freelist is followed no further than the count the header gives it.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

MAGIC = b"SQLite format 3\x00"
WAL_MAGIC = (0x377F0682, 0x377F0683)
MAX_PAYLOAD = 64 * 1024 * 1024   # a spool row is an alert: far below this
DEFAULT_PAGE = 4096

_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from


@dataclass
class ScanReport:
    """What the scan saw (filled while the rows are read)."""

    page_size: int = 0
    pages: int = 0                 # pages examined
    leaf_pages: int = 0            # table leaf pages found
    free_pages: int = 0            # pages skipped because the freelist names them
    walked: bool = False           # the tables' b-trees were walked whole: only their leaves read
    wal_frames: int = 0            # committed WAL frames applied
    bad_cells: int = 0             # cells on leaf pages that did not decode
    header_ok: bool = False
    notes: list[str] = field(default_factory=list)


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A SQLite varint at ``pos``: (value, next position). Raises IndexError past the end."""
    v = 0
    for i in range(8):
        b = buf[pos + i]
        v = (v << 7) | (b & 0x7F)
        if b < 0x80:
            return v, pos + i + 1
    return (v << 8) | buf[pos + 8], pos + 9


def _serial(t: int, buf: bytes, pos: int) -> tuple[object, int]:
    """One record value of serial type ``t`` at ``pos``."""
    if t == 0:
        return None, pos
    if 1 <= t <= 6:
        n = (1, 2, 3, 4, 6, 8)[t - 1]
        if pos + n > len(buf):
            raise IndexError("value past the payload")
        return int.from_bytes(buf[pos:pos + n], "big", signed=True), pos + n
    if t == 7:
        if pos + 8 > len(buf):
            raise IndexError("value past the payload")
        return struct.unpack_from(">d", buf, pos)[0], pos + 8
    if t in (8, 9):
        return t - 8, pos
    if t >= 12:
        n = (t - 12) // 2 if t % 2 == 0 else (t - 13) // 2
        if pos + n > len(buf):
            raise IndexError("value past the payload")
        raw = bytes(buf[pos:pos + n])
        if t % 2:
            return raw.decode("utf-8"), pos + n  # UnicodeDecodeError: a damaged text
        return raw, pos + n
    raise ValueError(f"reserved serial type {t}")


def decode_record(payload: bytes) -> list:
    """The values of one record (raises on anything malformed)."""
    hsize, pos = varint(payload, 0)
    if hsize < 1 or hsize > len(payload):
        raise ValueError("bad record header size")
    types = []
    while pos < hsize:
        t, pos = varint(payload, pos)
        types.append(t)
    if pos != hsize:
        raise ValueError("record header overruns")
    out = []
    body = hsize
    for t in types:
        v, body = _serial(t, payload, body)
        out.append(v)
    if body != len(payload):
        raise ValueError("record length does not match its header")
    return out


class _Pages:
    """Page images of the committed database: the main file overlaid by the WAL."""

    def __init__(self, path: str, wal: str | None, report: ScanReport) -> None:
        self.report = report
        self.fh: BinaryIO = open(path, "rb")
        self.size = os.fstat(self.fh.fileno()).st_size
        self.wal_fh: BinaryIO | None = None
        self.overlay: dict[int, int] = {}  # page number -> offset of its page image in the WAL
        self.tree_leaves: set[int] = set()   # every table's leaf pages (set by btree_leaves)
        head = self.fh.read(100)
        page_size = 0
        if len(head) >= 100 and head[:16] == MAGIC:
            raw = _u16(head, 16)[0]
            page_size = 65536 if raw == 1 else raw
            if page_size < 512 or page_size & (page_size - 1):
                page_size = 0
            self.reserved = head[20]
            report.header_ok = page_size > 0
        else:
            self.reserved = 0
            report.notes.append("database header unreadable")
        wal_page_size, self.db_pages = self._read_wal(wal, page_size)
        self.page_size = page_size or wal_page_size or DEFAULT_PAGE
        if not page_size:
            self.reserved = 0
        if wal_page_size and wal_page_size != self.page_size:
            report.notes.append("WAL page size differs from the database's: WAL ignored")
            self.overlay.clear()
            self.db_pages = 0
            report.wal_frames = 0      # none of its frames is applied
        self.usable = self.page_size - self.reserved
        file_pages = self.size // self.page_size
        self.count = max(file_pages, self.db_pages, max(self.overlay, default=0))
        if self.db_pages:  # the last commit says how long the database is
            self.count = self.db_pages
        report.page_size = self.page_size

    def _read_wal(self, wal: str | None, page_size: int) -> tuple[int, int]:
        if not wal or not os.path.exists(wal):
            return 0, 0
        try:
            fh = open(wal, "rb")
        except OSError as exc:
            self.report.notes.append(f"WAL unreadable: {exc.strerror or exc}")
            return 0, 0
        head = fh.read(32)
        if len(head) < 32 or _u32(head, 0)[0] not in WAL_MAGIC:
            fh.close()
            return 0, 0
        big = _u32(head, 0)[0] & 1
        psize = _u32(head, 8)[0]
        if psize < 512 or psize > 65536 or psize & (psize - 1):
            fh.close()
            return 0, 0
        salt = head[16:24]
        fmt = ">" if big else "<"
        s0, s1 = _checksum(head[:24], 0, 0, fmt)
        if (s0, s1) != struct.unpack_from(">II", head, 24):
            fh.close()
            self.report.notes.append("WAL header checksum mismatch: WAL ignored")
            return psize, 0
        pending: dict[int, int] = {}
        committed: dict[int, int] = {}
        db_pages = 0
        off = 32
        while True:
            fh.seek(off)
            fhdr = fh.read(24)
            if len(fhdr) < 24:
                break
            page = fh.read(psize)
            if len(page) < psize or fhdr[8:16] != salt:
                break
            s0, s1 = _checksum(fhdr[:8], s0, s1, fmt)
            s0, s1 = _checksum(page, s0, s1, fmt)
            if (s0, s1) != struct.unpack_from(">II", fhdr, 16):
                break
            pgno, commit = struct.unpack_from(">II", fhdr, 0)
            pending[pgno] = off + 24
            if commit:
                committed.update(pending)
                self.report.wal_frames += len(pending)
                pending.clear()
                db_pages = commit
            off += 24 + psize
        self.overlay = committed
        self.wal_fh = fh
        return psize, db_pages

    def page(self, n: int) -> bytes | None:
        """Page ``n`` (1-based), or None when it is not in the file."""
        if n < 1 or n > self.count:
            return None
        off = self.overlay.get(n)
        if off is not None and self.wal_fh is not None:
            self.wal_fh.seek(off)
            data = self.wal_fh.read(self.page_size)
        else:
            self.fh.seek((n - 1) * self.page_size)
            data = self.fh.read(self.page_size)
        return data if len(data) == self.page_size else None

    def freelist(self) -> set[int]:
        """The pages on the freelist, as the (newest) header says; empty when it cannot be read."""
        first = self.page(1)
        if not self.report.header_ok or first is None:
            return set()
        trunk, total = _u32(first, 32)[0], _u32(first, 36)[0]
        free: set[int] = set()
        seen: set[int] = set()
        cap = (self.usable - 8) // 4
        # The header's count bounds the chain: a damaged next-trunk number can lead to a live
        # page, which must not be taken for a trunk (its rows would be skipped); nor is a page
        # whose leaf count does not fit a trunk page.
        while trunk and trunk not in seen and len(free) < total:
            seen.add(trunk)
            data = self.page(trunk)
            if data is None:
                break
            nxt, n = _u32(data, 0)[0], _u32(data, 4)[0]
            if n > cap:
                break
            free.add(trunk)
            free.update(_u32(data, 8 + 4 * i)[0] for i in range(n))
            trunk = nxt
        return free

    def btree_leaves(self, tables: tuple[str, ...]) -> set[int] | None:
        """The leaf pages of these tables, found by walking their b-trees from the schema on page
        1; None when the schema or any page of the walk cannot be read."""
        roots = []
        schema = self._walk(1)
        if schema is None:
            return None
        found: dict[str, int] = {}
        for leaf in sorted(schema):
            data = self.page(leaf)
            for cell in _cells(self, leaf, data) if data is not None else ():
                if cell is None:
                    return None
                try:
                    v = decode_record(cell[1])
                except (ValueError, IndexError, UnicodeDecodeError, struct.error):
                    return None
                if len(v) == 5 and v[0] == "table" and isinstance(v[3], int):
                    found[v[1]] = v[3]
        for name in tables:
            if name not in found:
                return None
            roots.append(found[name])
        leaves: set[int] = set()
        for root in roots:
            got = self._walk(root)
            if got is None:
                return None
            leaves |= got
        # every table's leaves, to tell a leaf page no tree reaches (a damaged interior page
        # that lost cells still walks) from the leaves of the other tables
        self.tree_leaves = set(schema) | leaves
        for name, root in found.items():
            if name not in tables:
                got = self._walk(root)
                if got is None:
                    return None
                self.tree_leaves |= got
        return leaves

    def stray_leaf(self, free: set[int]) -> int | None:
        """A table leaf page that neither a b-tree of the schema (after btree_leaves) nor the
        freelist accounts for: a tree lost it, so the walk is not the whole table."""
        for n in range(1, self.count + 1):
            if n in self.tree_leaves or n in free:
                continue
            data = self.page(n)
            if data is not None and data[100 if n == 1 else 0] == 0x0D:
                return n
        return None

    def _walk(self, root: int) -> set[int] | None:
        """Leaf pages under ``root`` (a table b-tree); None on any page that is not what the
        tree says it is."""
        leaves: set[int] = set()
        seen: set[int] = set()
        todo = [root]
        while todo:
            n = todo.pop()
            if n in seen or len(seen) > self.count:
                return None
            seen.add(n)
            data = self.page(n)
            if data is None:
                return None
            base = 100 if n == 1 else 0
            kind = data[base]
            if kind == 0x0D:
                leaves.add(n)
                continue
            if kind != 0x05:
                return None
            ncells = _u16(data, base + 3)[0]
            first = base + 12 + 2 * ncells      # cells lie after the 12-byte header's pointers
            todo.append(_u32(data, base + 8)[0])
            for i in range(ncells):
                ptr = _u16(data, base + 12 + 2 * i)[0]
                # a cell is a 4-byte child page number and a key of at least one byte; a count
                # whose pointers overrun the page fails here on the first pointer, before any
                # pointer past the page is read
                if not first <= ptr <= self.usable - 5:
                    return None
                todo.append(_u32(data, ptr)[0])
        return leaves

    def close(self) -> None:
        self.fh.close()
        if self.wal_fh is not None:
            self.wal_fh.close()


def _checksum(data: bytes, s0: int, s1: int, fmt: str) -> tuple[int, int]:
    """The WAL's cumulative checksum over ``data`` (a multiple of 8 bytes)."""
    words = struct.unpack(f"{fmt}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _cells(pages: _Pages, n: int, data: bytes) -> Iterator[tuple[int, bytes] | None]:
    """(rowid, payload) of each cell of table leaf page ``n``; None for a cell that is damaged."""
    base = 100 if n == 1 else 0
    usable = pages.usable
    ncells = _u16(data, base + 3)[0]
    if base + 8 + 2 * ncells > usable:
        return
    max_local = usable - 35
    min_local = (usable - 12) * 32 // 255 - 23
    for i in range(ncells):
        ptr = _u16(data, base + 8 + 2 * i)[0]
        try:
            if ptr < base + 8 + 2 * ncells or ptr >= usable:
                raise ValueError("cell pointer out of the page")
            size, pos = varint(data, ptr)
            rowid, pos = varint(data, pos)
            if rowid >= 1 << 63:
                rowid -= 1 << 64
            if size > MAX_PAYLOAD:
                raise ValueError("payload too large")
            if size <= max_local:
                if pos + size > usable:
                    raise ValueError("payload past the page")
                yield rowid, data[pos:pos + size]
                continue
            k = min_local + (size - min_local) % (usable - 4)
            local = k if k <= max_local else min_local
            if pos + local + 4 > usable:
                raise ValueError("payload past the page")
            parts = [data[pos:pos + local]]
            got = local
            nxt = _u32(data, pos + local)[0]
            seen = set()
            while got < size:
                if nxt in seen or nxt < 2:   # page 1 is the schema's root, never overflow
                    raise ValueError("broken overflow chain")
                seen.add(nxt)
                ov = pages.page(nxt)
                if ov is None:
                    raise ValueError("overflow page missing")
                take = min(size - got, usable - 4)
                parts.append(ov[4:4 + take])
                got += take
                nxt = _u32(ov, 0)[0]
            yield rowid, b"".join(parts)
        except (ValueError, IndexError, struct.error):
            yield None


def scan(path: str, wal: str | None = None, report: ScanReport | None = None,
         tables: tuple[str, ...] = ()) -> Iterator[tuple[int, list]]:
    """(rowid, values) of every row on the table leaf pages of the database at ``path``.

    ``wal`` is its write-ahead log (``path + "-wal"`` when it exists), ``report`` collects what
    the scan saw. With ``tables``, only the leaves of those tables are read when their b-trees
    can be walked whole; else (and without ``tables``) every leaf page not on the freelist.
    Rows of every table read come out; the caller tells them apart by shape.
    """
    report = report if report is not None else ScanReport()
    pages = _Pages(path, wal, report)
    try:
        live = pages.btree_leaves(tables) if tables else None
        if live is not None and report.header_ok:   # (no freelist to tell freed pages by)
            stray = pages.stray_leaf(pages.freelist())
            if stray is not None:
                report.notes.append(f"page {stray} is a table leaf no b-tree reaches: "
                                    "every leaf page read")
                live = None
        report.walked = live is not None
        free = pages.freelist() if live is None else set()
        for n in range(1, pages.count + 1):
            if n in free or (live is not None and n not in live):
                report.free_pages += n in free
                continue
            data = pages.page(n)
            report.pages += 1
            if data is None:
                continue
            base = 100 if n == 1 else 0
            if data[base] != 0x0D:
                continue
            report.leaf_pages += 1
            for cell in _cells(pages, n, data):
                if cell is None:
                    report.bad_cells += 1
                    continue
                rowid, payload = cell
                try:
                    values = decode_record(payload)
                except (ValueError, IndexError, UnicodeDecodeError, struct.error):
                    report.bad_cells += 1
                    continue
                yield rowid, values
    finally:
        pages.close()
