"""Salvage reads a damaged spool by the SQLite file format: its varints, record serial types and
records, the database header and the write-ahead log (salts, cumulative checksums, the last
commit), each checked against files SQLite itself wrote (docs/hostile-inputs.md, "The spool
file"; sensor/deliver/salvage.py says what is read and what is not).

The oracle is the file format (https://www.sqlite.org/fileformat2.html) and SQLite itself: a
spool-shaped database is written with Python's sqlite3, read back by SQLite and by salvage, and
the two must agree; then bytes at known offsets are damaged and salvage must read what the format
still says is there (SQLite agreeing where it can still open the file), count what it skips and
guess nothing.
"""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import struct

import pytest

from sensor.deliver import salvage
from sensor.deliver.spool import _SCHEMA

from .sqlite_format import enc_varint

M32 = 0xFFFFFFFF
ALERT_COLUMNS = 10   # the spool's alerts table: id (a rowid alias, stored as NULL) and 9 more


# -- the format, written from the spec (not from the reader under test) ------------------------

def wal_checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    """The WAL's cumulative checksum (fileformat2, "Checksum Algorithm")."""
    fmt = ">" if big else "<"
    for i in range(0, len(data), 8):
        x0, x1 = struct.unpack_from(fmt + "II", data, i)
        s0 = (s0 + x0 + s1) & M32
        s1 = (s1 + x1 + s0) & M32
    return s0, s1


def wal_frames(wal: bytes) -> list[tuple[int, int, int]]:
    """(offset, page number, commit size) of each frame of a WAL, as written."""
    psize = struct.unpack_from(">I", wal, 8)[0]
    out = []
    off = 32
    while off + 24 + psize <= len(wal):
        pgno, commit = struct.unpack_from(">II", wal, off)
        out.append((off, pgno, commit))
        off += 24 + psize
    return out


def rechecksum(wal: bytes, *, big: bool, psize: int | None = None) -> bytes:
    """The same WAL with its checksums in the other byte order (magic 0x377F0683 for big-endian
    words) and, when given, another page-size field: header and every frame checksummed again."""
    w = bytearray(wal)
    struct.pack_into(">I", w, 0, 0x377F0683 if big else 0x377F0682)
    old_psize = struct.unpack_from(">I", w, 8)[0]
    if psize is not None:
        struct.pack_into(">I", w, 8, psize)
    s0, s1 = wal_checksum(bytes(w[:24]), 0, 0, big)
    struct.pack_into(">II", w, 24, s0, s1)
    off = 32
    while off + 24 + old_psize <= len(w):
        s0, s1 = wal_checksum(bytes(w[off:off + 8]), s0, s1, big)
        s0, s1 = wal_checksum(bytes(w[off + 24:off + 24 + old_psize]), s0, s1, big)
        struct.pack_into(">II", w, off + 16, s0, s1)
        off += 24 + old_psize
    return bytes(w)


# -- spool-shaped files written by SQLite ------------------------------------------------------

def _alert(i: int) -> tuple:
    body = (b"%05d" % i) * (1000 if i % 7 == 0 else 30)   # every 7th spills onto overflow pages
    return (i, f"uuid-{i}", 1000.5 + i, i % 3, 0.0, None, "alert", len(body), body, i * 7919)


def _insert(db, ids) -> None:
    db.execute("BEGIN")
    db.executemany("INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)", [_alert(i) for i in ids])
    db.execute("COMMIT")


BATCH1, BATCH2, BATCH3 = range(1, 31), range(31, 41), range(41, 51)


def _wal_spool(folder, page_size: int = 4096) -> tuple[bytes, bytes]:
    """(main file, -wal) of a spool in WAL mode: the first batch of alerts checkpointed into the
    main file, then two more transactions in the WAL only."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spool.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size={page_size}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(_SCHEMA)
    _insert(db, BATCH1)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    _insert(db, BATCH2)
    _insert(db, BATCH3)
    main, wal = path.read_bytes(), (folder / "spool.sqlite-wal").read_bytes()
    db.close()
    return main, wal


def _expected(ids) -> dict[int, list]:
    return {i: [None, *_alert(i)[1:]] for i in ids}


class _Files:
    """Writes a main file (and a -wal) to a fresh folder each time, for SQLite and for salvage."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.n = 0

    def put(self, main: bytes, wal: bytes | None = None) -> tuple[str, str | None]:
        self.n += 1
        d = self.tmp / f"f{self.n}"
        d.mkdir()
        (d / "spool.sqlite").write_bytes(main)
        if wal is not None:
            (d / "spool.sqlite-wal").write_bytes(wal)
        return str(d / "spool.sqlite"), (str(d / "spool.sqlite-wal") if wal is not None else None)

    def sqlite(self, main: bytes, wal: bytes | None = None) -> tuple[dict[int, list], int, int]:
        """What SQLite reads: the alerts by rowid, the page count, the table leaf pages."""
        path, _ = self.put(main, wal)
        db = sqlite3.connect(path)
        try:
            rows = {r[0]: [None, *r[1:]] for r in db.execute("SELECT * FROM alerts")}
            count = db.execute("PRAGMA page_count").fetchone()[0]
            leaves = db.execute(
                "SELECT count(*) FROM dbstat WHERE pagetype = 'leaf' AND (name IN "
                "(SELECT name FROM sqlite_master WHERE type = 'table') OR name IN ('sqlite_master', 'sqlite_schema'))"
            ).fetchone()[0]
        finally:
            db.close()
        return rows, count, leaves

    def salvage(self, main: bytes, wal: bytes | None = None, **kw):
        path, walpath = self.put(main, wal)
        return _scan(path, walpath, **kw)


def _scan(path, wal=None, **kw):
    report = salvage.ScanReport()
    rows = {rowid: v for rowid, v in salvage.scan(path, wal, report, **kw) if len(v) == ALERT_COLUMNS}
    return rows, report


# -- varints, serial types, records ------------------------------------------------------------

VARINTS = [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, (1 << 49) - 1, 1 << 49,
           (1 << 56) - 1, 1 << 56, (1 << 56) + 0xFF, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


@pytest.mark.parametrize("value", VARINTS)
def test_a_varint_is_read_whole_at_any_position_and_past_the_end_raises(value):
    enc = enc_varint(value)
    assert len(enc) == (9 if value >> 56 else max(1, (value.bit_length() + 6) // 7))
    buf = b"\xff\x81\x00" + enc + b"\xff\xff"        # junk before and after it
    assert salvage.varint(buf, 3) == (value, 3 + len(enc))
    assert salvage.varint(memoryview(buf), 3) == (value, 3 + len(enc))
    with pytest.raises(IndexError):                  # cut anywhere inside: past the end
        salvage.varint(b"\x00" + enc[:-1], 1)


def test_rows_with_rowids_and_values_of_every_serial_type_read_as_sqlite_stored_them(tmp_path):
    """One value a row, so each is the last of its record, keyed by rowids of every varint width:
    integers at the edges of each size (1, 2, 3, 4, 6 and 8 bytes), the constants 0 and 1, reals,
    text and blobs empty and not, NULL."""
    values = [None, 0, 1, -1, 2, 127, 128, -128, -129, 32767, 32768, -32768, -32769,
              (1 << 23) - 1, 1 << 23, -(1 << 23), -(1 << 23) - 1, (1 << 31) - 1, 1 << 31,
              -(1 << 31), -(1 << 31) - 1, (1 << 47) - 1, 1 << 47, -(1 << 47), -(1 << 47) - 1,
              (1 << 63) - 1, -(1 << 63), 0.5, -1.25, 1e300, -5e-324, "", "a", "é€😀" * 30,
              b"", b"\x00", b"\xff" * 200]
    rowids = [-(1 << 63), -1, 0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, (1 << 56) - 1, 1 << 56, (1 << 63) - 1]
    path = tmp_path / "types.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    want = {}
    for k, v in enumerate(values):
        rowid = rowids[k] if k < len(rowids) else 1000 + k
        db.execute("INSERT INTO t VALUES (?, ?)", (rowid, v))
        want[rowid] = v
    db.commit()
    got = {rowid: v for rowid, v in db.execute("SELECT id, v FROM t")}
    db.close()
    assert got == want                                   # what SQLite stored

    report = salvage.ScanReport()
    rows = {rowid: v for rowid, v in salvage.scan(str(path), report=report) if len(v) == 2}
    assert rows == {rowid: [None, v] for rowid, v in want.items()}
    assert all(type(rows[r][1]) is type(v) for r, v in want.items())   # 1 stays int, 0.5 float
    assert report.bad_cells == 0


def _record(types: list[int], body: bytes) -> bytes:
    header = b"".join(enc_varint(t) for t in types)
    return enc_varint(len(header) + 1) + header + body


def test_records_by_the_format_and_malformed_ones_refused():
    # a record without columns is its header size alone; NULLs and the constants have no body
    assert salvage.decode_record(b"\x01") == []
    assert salvage.decode_record(_record([0, 8, 9, 12, 13], b"")) == [None, 0, 1, b"", ""]
    assert salvage.decode_record(_record([1, 2, 3, 4, 5, 6], bytes(range(1, 25)))) == [
        0x01, 0x0203, 0x040506, 0x0708090A, 0x0B0C0D0E0F10, 0x1112131415161718]
    assert salvage.decode_record(_record([7, 15, 14], struct.pack(">d", 2.5) + b"xy")) == [2.5, "x", b"y"]
    malformed = [
        b"\x00",                                 # header size 0: not even its own size
        b"\x05\x00",                             # header longer than the record
        _record([10], b""), _record([11], b""),  # reserved serial types (10 and 11)
        _record([10, 1], b""), _record([11, 1], b""),   # ... even with a value after them
        _record([1], b""),                       # a value past the end of the record
        _record([7], b"\x00" * 7),
        _record([23], b"abcd"),                  # a text of 5 bytes with 4 there
        _record([1], b"\x01\x02"),               # a byte left over after the values
        _record([15], b"\xff"),                  # text that is not UTF-8
    ]
    for payload in malformed:
        with pytest.raises((ValueError, IndexError, UnicodeDecodeError, struct.error)):
            salvage.decode_record(payload)
    for t in (10, 11):                           # reserved: no value, of any length, is read
        with pytest.raises(ValueError):
            salvage._serial(t, b"\x00" * 16, 4)


@pytest.mark.parametrize("t, room", [(1, 0), (4, 3), (6, 7), (7, 0), (7, 7), (14, 0), (21, 3)])
def test_a_value_past_the_end_of_its_record_is_refused_not_guessed(t, room):
    # Read alone, a value whose bytes are not all there is refused: never zero-filled, never cut.
    with pytest.raises((IndexError, struct.error)):
        salvage._serial(t, b"\x01" * (5 + room), 5)


# -- the database header ------------------------------------------------------------------------

@pytest.mark.parametrize("page_size", [512, 1024, 4096, 65536])
def test_every_page_size_is_read_from_the_header_and_the_counts_match_sqlite(tmp_path, page_size):
    main, wal = _wal_spool(tmp_path / "w", page_size)
    files = _Files(tmp_path)
    # the main file alone, as a checkpointed spool with no -wal is read
    want, count, leaves = files.sqlite(main)
    assert want == _expected(BATCH1)
    rows, report = files.salvage(main)
    assert rows == want
    assert report.header_ok and report.page_size == page_size and report.notes == []
    assert report.pages == count and report.leaf_pages == leaves
    assert report.free_pages == 0 and report.wal_frames == 0 and report.bad_cells == 0
    # with its WAL: every committed transaction is read, and the committed length counted
    want, count, leaves = files.sqlite(main, wal)
    assert want == _expected([*BATCH1, *BATCH2, *BATCH3])
    rows, report = files.salvage(main, wal)
    assert rows == want
    assert report.header_ok and report.page_size == page_size and report.notes == []
    assert report.pages == count and report.leaf_pages == leaves
    assert report.wal_frames == len(wal_frames(wal))     # all committed


@pytest.mark.parametrize("damage", ["magic", 0, 256, 1000, 4097, 0xFFFF])
def test_a_header_that_is_not_sqlites_is_not_trusted_and_the_rows_are_still_read(tmp_path, damage):
    """The magic string gone, or a page size no database can have (a power of two from 512 to
    65536; 1 means 65536): the header says nothing (header_ok False, none of its fields used, not
    even the reserved bytes beside a bad page size), and the pages are read at the default 4 KiB."""
    main, _ = _wal_spool(tmp_path / "w")
    raw = bytearray(main)
    if damage == "magic":
        raw[:16] = bytes(16)
    else:
        raw[16:18] = damage.to_bytes(2, "big")
        raw[20] = 200                        # and the reserved-bytes field with it
    rows, report = _Files(tmp_path).salvage(bytes(raw))
    assert rows == _expected(BATCH1)
    assert not report.header_ok and report.page_size == salvage.DEFAULT_PAGE == 4096
    assert report.pages == len(main) // 4096 and report.bad_cells == 0
    if damage == "magic":
        assert any("header" in n for n in report.notes)


@pytest.mark.parametrize("size", [0, 16, 99, 100])
def test_a_file_cut_inside_its_first_page_gives_nothing_and_says_so(tmp_path, size):
    main, _ = _wal_spool(tmp_path / "w")
    rows, report = _Files(tmp_path).salvage(main[:size])
    assert rows == {}
    assert report.pages == 0 and report.leaf_pages == 0 and report.bad_cells == 0
    # the header is 100 bytes: a file shorter than that has none
    assert report.header_ok is (size >= 100)
    assert any("header" in n for n in report.notes) is (size < 100)


def test_reserved_bytes_at_the_end_of_each_page_are_not_read_as_rows(tmp_path):
    """The header's byte 20 reserves bytes at the end of every page (for an extension's use);
    cells and overflow pages use only the rest, so whatever the reserved bytes hold, the rows
    read are SQLite's."""
    path = tmp_path / "reserved.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size=1024")
    db.execute("VACUUM")                      # an empty database: page 1 with the header alone
    db.close()
    raw = bytearray(path.read_bytes())
    raw[20] = 32                              # 32 reserved bytes a page: 992 usable
    raw[100 + 5:100 + 7] = (1024 - 32).to_bytes(2, "big")   # page 1's (empty) content starts there
    path.write_bytes(bytes(raw))
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)
    db.executemany("INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)", [_alert(i) for i in range(1, 41)])
    db.commit()
    db.close()
    raw = bytearray(path.read_bytes())
    assert raw[20] == 32                      # SQLite kept the reservation
    for n in range(len(raw) // 1024):
        raw[n * 1024 + 992:(n + 1) * 1024] = b"\xa5" * 32
    files = _Files(tmp_path)
    want, count, leaves = files.sqlite(bytes(raw))
    assert want == _expected(range(1, 41))    # SQLite ignores the reserved bytes
    rows, report = files.salvage(bytes(raw))
    assert rows == want and report.bad_cells == 0
    assert report.header_ok and report.page_size == 1024
    assert report.pages == count and report.leaf_pages == leaves


def test_a_report_is_empty_until_something_is_read(tmp_path):
    report = salvage.ScanReport()
    assert (report.page_size, report.pages, report.leaf_pages, report.free_pages, report.walked,
            report.wal_frames, report.bad_cells, report.header_ok, report.notes) == (
        0, 0, 0, 0, False, 0, 0, False, [])
    # a file that cannot be opened: the error is the caller's, and the report claims nothing
    with pytest.raises(FileNotFoundError):
        list(salvage.scan(str(tmp_path / "missing.sqlite"), report=report, tables=("alerts",)))
    assert report == salvage.ScanReport()


def test_pages_on_the_freelist_are_counted_and_their_rows_not_read(tmp_path):
    path = tmp_path / "freed.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size=1024")
    db.executescript(_SCHEMA)
    db.executemany("INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)", [_alert(i) for i in range(1, 61)])
    db.commit()
    db.execute("DELETE FROM alerts WHERE id BETWEEN 10 AND 45")
    db.commit()
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    count = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    assert free > 0
    rows, report = _scan(str(path))
    assert rows == _expected([*range(1, 10), *range(46, 61)])
    assert report.free_pages == free and report.pages == count - free


# -- the write-ahead log ------------------------------------------------------------------------

@pytest.mark.parametrize("big", [False, True])
def test_a_wal_in_either_byte_order_is_read_as_sqlite_reads_it(tmp_path, big):
    """The magic's low bit says the byte order of the checksum words (0x377F0682 little-endian,
    0x377F0683 big-endian); SQLite reads either, and so does salvage."""
    main, wal = _wal_spool(tmp_path / "w")
    wal = rechecksum(wal, big=big)
    files = _Files(tmp_path)
    want, count, _ = files.sqlite(main, wal)
    assert want == _expected([*BATCH1, *BATCH2, *BATCH3])
    rows, report = files.salvage(main, wal)
    assert rows == want and report.notes == []
    assert report.wal_frames == len(wal_frames(wal)) and report.pages == count


def _txns(wal: bytes) -> list[list[tuple[int, int, int]]]:
    """The WAL's frames grouped by transaction (each ends with its commit frame)."""
    out, cur = [], []
    for f in wal_frames(wal):
        cur.append(f)
        if f[2]:
            out.append(cur)
            cur = []
    return out


def _flip(b: bytes, at: int) -> bytes:
    w = bytearray(b)
    w[at] ^= 0x5A
    return bytes(w)


@pytest.mark.parametrize("damage", ["frame checksum", "frame salt", "cut in a page",
                                    "cut in a frame header", "first commit", "header checksum"])
def test_wal_frames_are_read_up_to_the_last_valid_commit(tmp_path, damage):
    """Frames count while their salts match the header's and the cumulative checksum holds; a
    transaction counts when its commit frame does. The first bad frame ends the log: what follows
    is not read, as SQLite does."""
    main, wal = _wal_spool(tmp_path / "w")
    t2, t3 = _txns(wal)                       # BATCH2, BATCH3 (BATCH1 is in the main file)
    psize = 4096
    if damage == "frame checksum":            # a byte of the last transaction's first page
        wal, want = _flip(wal, t3[0][0] + 24 + 100), [*BATCH1, *BATCH2]
    elif damage == "frame salt":              # a salt of that frame (not in any checksum)
        wal, want = _flip(wal, t3[0][0] + 12), [*BATCH1, *BATCH2]
    elif damage == "cut in a page":           # cut inside the last frame's page
        wal, want = wal[:t3[-1][0] + 24 + 1001], [*BATCH1, *BATCH2]
    elif damage == "cut in a frame header":
        wal, want = wal[:t3[-1][0] + 23], [*BATCH1, *BATCH2]
    elif damage == "first commit":            # the first transaction's commit frame: nothing committed
        wal, want = _flip(wal, t2[-1][0] + 24 + psize - 1), list(BATCH1)
    else:
        wal, want = _flip(wal, 24), list(BATCH1)
    files = _Files(tmp_path)
    got, count, _ = files.sqlite(main, wal)
    assert got == _expected(want)             # SQLite reads the same
    rows, report = files.salvage(main, wal)
    assert rows == got and report.pages == count and report.bad_cells == 0
    committed = {"first commit": 0, "header checksum": 0}.get(damage, len(t2))
    assert report.wal_frames == committed
    if damage == "header checksum":
        assert any("WAL" in n and "checksum" in n for n in report.notes)


@pytest.mark.parametrize("cut", [0, 3, 20, 31, "not a WAL"])
def test_a_wal_cut_inside_its_header_or_not_a_wal_leaves_the_main_file(tmp_path, cut):
    main, wal = _wal_spool(tmp_path / "w")
    wal = b"\x00" * len(wal) if cut == "not a WAL" else wal[:cut]
    files = _Files(tmp_path)
    got, count, _ = files.sqlite(main, wal)
    assert got == _expected(BATCH1)
    rows, report = files.salvage(main, wal)
    assert rows == got and report.pages == count and report.wal_frames == 0
    assert report.page_size == 4096 and not any("page size" in n for n in report.notes)


@pytest.mark.parametrize("psize", [256, 1000, 65535, 131072])
@pytest.mark.parametrize("header", ["intact", "damaged"])
def test_a_wal_whose_page_size_no_database_can_have_is_not_used(tmp_path, psize, header):
    """A WAL header checksummed right but giving a page size outside 512..65536 or not a power of
    two: SQLite ignores the log, and so does salvage, which takes no page size from it either
    (with the database header damaged, pages are read at the default 4 KiB)."""
    main, wal = _wal_spool(tmp_path / "w")
    wal = rechecksum(wal, big=False, psize=psize)
    files = _Files(tmp_path)
    got, count, _ = files.sqlite(main, wal)
    assert got == _expected(BATCH1)
    if header == "damaged":
        main = bytes(16) + main[16:]
    rows, report = files.salvage(main, wal)
    assert rows == got and report.pages == count and report.wal_frames == 0
    assert report.page_size == 4096


def test_a_wal_of_another_page_size_is_ignored_and_the_report_says_so(tmp_path):
    main, _ = _wal_spool(tmp_path / "w")
    _, other = _wal_spool(tmp_path / "other", page_size=1024)
    rows, report = _Files(tmp_path).salvage(main, other)
    assert rows == _expected(BATCH1)
    assert report.page_size == 4096 and report.wal_frames == 0 and report.pages == len(main) // 4096
    assert any("WAL" in n and "page size" in n for n in report.notes)


def test_a_wal_that_cannot_be_opened_leaves_the_main_file_and_says_why(tmp_path):
    main, _ = _wal_spool(tmp_path / "w")
    path, _ = _Files(tmp_path).put(main)
    os.mkdir(path + "-wal")                   # something in the WAL's place that open() refuses
    rows, report = _scan(path, path + "-wal")
    assert rows == _expected(BATCH1)
    assert report.page_size == 4096 and report.pages == len(main) // 4096
    # one note, with the system's reason for it (not Python's "[Errno N] ...: 'path'")
    assert report.notes == [f"WAL unreadable: {os.strerror(errno.EISDIR)}"]


def test_a_page_past_the_committed_length_is_not_read_though_the_file_still_holds_it(tmp_path):
    """The last commit frame gives the database's length: a VACUUM committed to the WAL shrinks it
    while the main file keeps its old pages until a checkpoint."""
    folder = tmp_path / "w"
    folder.mkdir()
    path = folder / "spool.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(_SCHEMA)
    _insert(db, range(1, 201))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    db.execute("DELETE FROM alerts WHERE id > 10")
    db.execute("VACUUM")
    count = db.execute("PRAGMA page_count").fetchone()[0]
    shutil.copy(path, tmp_path / "s.sqlite")
    shutil.copy(str(path) + "-wal", tmp_path / "s.sqlite-wal")
    db.close()
    file_pages = (tmp_path / "s.sqlite").stat().st_size // 4096
    assert count < file_pages
    rows, report = _scan(str(tmp_path / "s.sqlite"), str(tmp_path / "s.sqlite-wal"))
    assert rows == _expected(range(1, 11)) and report.pages == count
    pages = salvage._Pages(str(tmp_path / "s.sqlite"), str(tmp_path / "s.sqlite-wal"), salvage.ScanReport())
    try:
        assert pages.count == count
        assert pages.page(1) is not None and pages.page(count) is not None
        assert pages.page(count + 1) is None and pages.page(file_pages) is None   # past the commit
        assert pages.page(0) is None and pages.page(-1) is None                    # pages are 1-based
    finally:
        pages.close()
