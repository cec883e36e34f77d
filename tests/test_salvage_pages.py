"""Salvage over whole files: leaf pages through their cell-pointer arrays, overflow chains, the
freelist, the walk of the tables' b-trees from the schema page and the scan that yields rows,
each checked against what SQLite itself reads from the same file before and after damage
(docs/hostile-inputs.md, "The spool file")."""
from __future__ import annotations

import shutil
import sqlite3
import struct
import threading
from collections import Counter

import pytest

from sensor.deliver import salvage
from sensor.deliver.spool import _SCHEMA

TABLES = ("alerts", "dead_letter", "meta")
ALIASED = ("alerts", "dead_letter", "health", "blobs")   # INTEGER PRIMARY KEY: NULL in the record


# ---------------------------------------------------------------------------------------------
# Files written by SQLite


def _blank(path, page_size: int, reserved: int) -> None:
    """An empty database of one page with ``reserved`` bytes at the end of every page, written
    by the file format (SQLite keeps the reserve of the file it opens)."""
    h = bytearray(page_size)
    h[0:16] = b"SQLite format 3\x00"
    struct.pack_into(">H", h, 16, page_size if page_size < 65536 else 1)
    h[18] = h[19] = 1
    h[20] = reserved
    h[21], h[22], h[23] = 64, 32, 32
    struct.pack_into(">I", h, 24, 1)    # change counter
    struct.pack_into(">I", h, 28, 1)    # pages
    struct.pack_into(">I", h, 44, 4)    # schema format
    struct.pack_into(">I", h, 56, 1)    # UTF-8
    struct.pack_into(">I", h, 92, 1)    # version-valid-for
    struct.pack_into(">I", h, 96, 3040001)
    h[100] = 0x0D
    struct.pack_into(">H", h, 105, page_size - reserved)
    path.write_bytes(bytes(h))


def _open(path, page_size: int = 1024, reserved: int = 0, secure_delete: str = "OFF",
          wal: bool = False) -> sqlite3.Connection:
    """A spool-shaped database (the spool's own schema, plus a table of bare blobs)."""
    if reserved:
        _blank(path, page_size, reserved)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size={page_size}")
    db.execute(f"PRAGMA secure_delete={secure_delete}")
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(_SCHEMA)
    db.execute("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, body BLOB)")
    return db


def _alert(db, rowid: int, body: bytes) -> None:
    db.execute("INSERT INTO alerts(id, alert_uuid, created, attempts, size, body, crc) "
               "VALUES (?,?,?,?,?,?,?)", (rowid, f"uuid-{rowid}", rowid + 0.25, 2, len(body), body,
                                           rowid & 0xFFFF))


def _fill(db, n: int, body_size: int = 60, start: int = 1) -> None:
    db.execute("BEGIN")
    for i in range(start, start + n):
        _alert(db, i, bytes([i % 251]) * body_size)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('rows', ?)", (n,))
    db.execute("INSERT INTO health(kind, first_ts, last_ts, count, detail) VALUES "
               "('k', 1.5, 2.5, 3, 'health rows are not among the tables asked for')")
    db.execute("INSERT INTO dead_letter(id, alert_uuid, created, moved, attempts, status, reason, body, crc) "
               "VALUES (7, 'd-7', 1.5, 2.5, 3, 400, 'rejected', x'00ff', 9)")
    db.execute("COMMIT")


def _rows(path, tables=None) -> Counter:
    """What SQLite reads: (rowid, values as stored in the record) of every row of ``tables``
    (every table and the schema when None)."""
    db = sqlite3.connect(path)
    try:
        names = tables or [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out: Counter = Counter()
        for name in names:
            for r in db.execute(f"SELECT rowid, * FROM {name}"):
                values = (None,) + tuple(r[2:]) if name in ALIASED else tuple(r[1:])
                out[(r[0], values)] += 1
        if tables is None:
            for r in db.execute("SELECT rowid, type, name, tbl_name, rootpage, sql FROM sqlite_master"):
                out[(r[0], tuple(r[1:]))] += 1
        return out
    finally:
        db.close()


def _leaves(path, tables=None) -> set[int]:
    """The table leaf pages SQLite knows (dbstat), of ``tables`` or of every table and the schema."""
    db = sqlite3.connect(path)
    try:
        got = set()
        for name, pageno, kind in db.execute("SELECT name, pageno, pagetype FROM dbstat"):
            if kind == "leaf" and (tables is None or name in tables) and not name.startswith("sqlite_autoindex"):
                got.add(pageno)
        return got
    finally:
        db.close()


def _scan(path, tables=(), wal=None):
    report = salvage.ScanReport()
    got = Counter((rowid, tuple(values))
                  for rowid, values in salvage.scan(str(path), wal, report, tables=tables))
    return got, report


def _pragma(path, name: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        db.close()


def _ok(path) -> bool:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def _varint(v: int) -> bytes:
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    return bytes(reversed(out))


def _blob_for(payload: int) -> int:
    """The blob length whose record in ``blobs`` (NULL id, one blob) is ``payload`` bytes."""
    for n in range(payload, 0, -1):
        if 2 + len(_varint(2 * n + 12)) + n == payload:
            return n
    raise AssertionError(payload)


# ---------------------------------------------------------------------------------------------
# A clean file: every row SQLite reads, nothing else


def _local_bounds(usable: int) -> tuple[int, int]:
    # The file format's spill bounds of a table leaf cell.
    return usable - 35, (usable - 12) * 32 // 255 - 23


@pytest.mark.parametrize("page_size,reserved", [(512, 0), (1024, 0), (2048, 0), (512, 5)])
def test_a_clean_file_reads_exactly_the_rows_sqlite_reads(tmp_path, page_size, reserved):
    # Payload sizes at each bound of the format's local/overflow split (all on the page, the
    # largest kept whole, one byte more; the spill remainder at max_local and one over) and
    # chains of several overflow pages, with rowids at the ends of the 64-bit range.
    path = tmp_path / "spool.db"
    db = _open(path, page_size, reserved)
    _fill(db, 30)
    usable = page_size - reserved
    max_local, min_local = _local_bounds(usable)
    sizes = [max_local - 1, max_local, max_local + 1, min_local + 1,
             max_local + (usable - 4), max_local + (usable - 4) + 1,
             min_local + 2 * (usable - 4), min_local + 2 * (usable - 4) + 1, 5 * usable + 7]
    rowids = [-(1 << 63), -1, 0, 1 << 62, (1 << 63) - 1, 1 << 31, 17, 18, 19]
    db.execute("BEGIN")
    for rowid, size in zip(rowids, sizes):
        n = _blob_for(size)
        db.execute("INSERT INTO blobs VALUES (?, ?)", (rowid, bytes((rowid + j) % 256 for j in range(n))))
    db.execute("COMMIT")
    db.close()
    assert _ok(path)

    got, report = _scan(path)
    assert got == _rows(path)
    assert report.bad_cells == 0 and report.free_pages == 0 and not report.walked
    assert report.pages == _pragma(path, "page_count")
    assert report.leaf_pages == len(_leaves(path))

    want = _rows(path, TABLES + ("blobs",))
    got, report = _scan(path, TABLES + ("blobs",))
    assert report.walked and got == want
    assert report.pages == report.leaf_pages == len(_leaves(path, TABLES + ("blobs",)))


def test_the_schema_on_page_1_is_read_through_its_header_at_byte_100(tmp_path):
    # A small file keeps the schema on page 1, whose b-tree header follows the 100-byte file
    # header: its rows (type, name, table, root page, SQL) come out like any other.
    path = tmp_path / "small.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('rows', 3)")
    db.commit()
    db.close()
    got, report = _scan(path)
    assert got == _rows(path)
    assert 1 in _leaves(path) and report.leaf_pages == len(_leaves(path)) == 2


# ---------------------------------------------------------------------------------------------
# The freelist: pages it names hold stale copies of deleted rows and are not read


def _freed(tmp_path, page_size: int = 512, reserved: int = 0, keep: int = 100, n: int = 800):
    """A file whose freelist has two trunk pages or more, its freed leaves still holding the
    deleted rows (secure_delete off: the worst case for stale copies)."""
    path = tmp_path / "spool.db"
    db = _open(path, page_size, reserved)
    _fill(db, n)
    db.execute("DELETE FROM alerts WHERE id > ?", (keep,))
    db.close()
    return path


def _trunks(raw: bytes, page_size: int) -> list[tuple[int, int, list[int]]]:
    """(page, next trunk, leaf pages) of each freelist trunk page, by the file format."""
    out = []
    trunk = struct.unpack_from(">I", raw, 32)[0]
    while trunk:
        off = (trunk - 1) * page_size
        nxt, n = struct.unpack_from(">II", raw, off)
        out.append((trunk, nxt, list(struct.unpack_from(f">{n}I", raw, off + 8))))
        trunk = nxt
    return out


def _set_trunk(raw: bytearray, page_size: int, page: int, nxt: int, leaves: list[int], n=None) -> None:
    off = (page - 1) * page_size
    struct.pack_into(">II", raw, off, nxt, len(leaves) if n is None else n)
    struct.pack_into(f">{len(leaves)}I", raw, off + 8, *leaves)


def test_pages_on_the_freelist_are_skipped_and_counted(tmp_path):
    path = _freed(tmp_path)
    trunks = _trunks(path.read_bytes(), 512)
    assert len(trunks) >= 2, "the freelist should span two trunk pages"
    got, report = _scan(path)
    assert got == _rows(path)                       # no stale copy of a deleted row
    assert report.free_pages == _pragma(path, "freelist_count")
    assert report.pages + report.free_pages == _pragma(path, "page_count")


@pytest.mark.parametrize("reserved", [0, 5])
def test_a_trunk_page_filled_to_the_formats_limit_is_read_whole(tmp_path, reserved):
    # SQLite fills a trunk page with at most usable/4 - 8 leaf numbers, but the format lets it
    # hold (usable - 8) / 4 and a reader must take them all: move leaves from the second trunk
    # into the first until it is full to that limit.
    usable = 512 - reserved
    path = _freed(tmp_path, reserved=reserved)
    raw = bytearray(path.read_bytes())
    (t1, n1, l1), (t2, n2, l2), *_ = _trunks(raw, 512)
    room = (usable - 8) // 4 - len(l1)
    assert 0 < room <= len(l2)
    _set_trunk(raw, 512, t1, n1, l1 + l2[len(l2) - room:])
    _set_trunk(raw, 512, t2, n2, l2[:len(l2) - room])
    path.write_bytes(bytes(raw))
    assert _ok(path)                                # SQLite reads the file as sound

    got, report = _scan(path)
    assert got == _rows(path)
    assert report.free_pages == _pragma(path, "freelist_count")


@pytest.mark.parametrize("reserved", [0, 5])
def test_a_trunk_page_claiming_more_leaves_than_it_can_hold_is_not_trusted(tmp_path, reserved):
    # The count of the first trunk says one leaf more than (usable - 8) / 4: the page is not a
    # trunk page as the format defines it, so none of the pages it lists is skipped; their stale
    # rows come back (a duplicate at worst, which the caller drops by alert id), and every row
    # SQLite reads is read.
    usable = 512 - reserved
    cap = (usable - 8) // 4
    path = _freed(tmp_path, reserved=reserved)
    raw = bytearray(path.read_bytes())
    (t1, n1, l1), (t2, n2, l2), *_ = _trunks(raw, 512)
    fits = (512 - 8) // 4 - len(l1)                 # leaf numbers the page's bytes can take
    moved = min(cap + 1, (512 - 8) // 4) - len(l1)
    assert 0 < moved <= fits and moved <= len(l2)
    _set_trunk(raw, 512, t1, n1, l1 + l2[len(l2) - moved:], n=cap + 1)
    _set_trunk(raw, 512, t2, n2, l2[:len(l2) - moved])
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    want = _rows(path)
    assert not (want - got)                         # nothing SQLite reads is lost
    assert got - want                               # the pages that trunk lists were read
    assert report.free_pages < _pragma(path, "freelist_count")


def test_a_freelist_chain_that_loops_ends(tmp_path):
    # The last trunk page's next-trunk number damaged to name the first: each trunk is followed
    # once, the scan ends and reads what SQLite reads.
    path = _freed(tmp_path)
    raw = bytearray(path.read_bytes())
    trunks = _trunks(raw, 512)
    last, _, leaves = trunks[-1]
    _set_trunk(raw, 512, last, trunks[0][0], leaves)
    path.write_bytes(bytes(raw))

    out = {}
    worker = threading.Thread(target=lambda: out.update(r=_scan(path)), daemon=True)
    worker.start()
    worker.join(timeout=120)                        # guards against a hang only
    assert not worker.is_alive(), "the freelist walk did not end"
    got, report = out["r"]
    assert got == _rows(path)
    assert report.free_pages == _pragma(path, "freelist_count")


def test_a_freelist_chain_running_past_the_headers_count_loses_no_live_page(tmp_path):
    # The last trunk page's next-trunk number damaged to name a live leaf of the alerts table:
    # the header's freelist count is reached before it, so that leaf is not taken for a trunk
    # page, and its rows are read.
    path = _freed(tmp_path)
    raw = bytearray(path.read_bytes())
    trunks = _trunks(raw, 512)
    live = sorted(_leaves(path, ("alerts",)))[len(_leaves(path, ("alerts",))) // 2]
    last, _, leaves = trunks[-1]
    _set_trunk(raw, 512, last, live, leaves)
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert got == _rows(path)
    assert report.free_pages == _pragma(path, "freelist_count")


def test_a_live_leaf_named_as_the_next_trunk_is_not_taken_for_one(tmp_path):
    # The first trunk page's next-trunk number damaged to name a live leaf of the alerts table:
    # read as a trunk page, the leaf's header gives a leaf count no trunk page can hold, so it
    # is no trunk page: its rows are read, and the freelist ends there (the later trunks' pages
    # are read too, their stale rows a duplicate at worst).
    path = _freed(tmp_path)
    raw = bytearray(path.read_bytes())
    (t1, _, l1), *_ = _trunks(raw, 512)
    live = sorted(_leaves(path, ("alerts",)))[len(_leaves(path, ("alerts",))) // 2]
    assert struct.unpack_from(">I", raw, (live - 1) * 512 + 4)[0] > (512 - 8) // 4
    _set_trunk(raw, 512, t1, live, l1)
    want = _rows(path)
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert not (want - got)
    assert report.free_pages == 1 + len(l1)


def test_the_freelist_of_an_unreadable_header_is_not_used(tmp_path):
    # A damaged file header (here its magic string) may hold any freelist numbers: none are
    # trusted, every leaf page is read, so the deleted rows' stale copies come back beside
    # every row SQLite read before the damage.
    path = tmp_path / "spool.db"
    db = _open(path, 4096)
    _fill(db, 300, body_size=200)
    db.execute("DELETE FROM alerts WHERE id > 100")
    db.close()
    want = _rows(path)
    assert _pragma(path, "freelist_count") > 0
    raw = bytearray(path.read_bytes())
    raw[0:6] = b"XQLite"
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert not report.header_ok and report.free_pages == 0
    assert not (want - got) and got - want
