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

from .sqlite_format import enc_varint

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


def _blob_for(payload: int) -> int:
    """The blob length whose record in ``blobs`` (NULL id, one blob) is ``payload`` bytes."""
    for n in range(payload, 0, -1):
        if 2 + len(enc_varint(2 * n + 12)) + n == payload:
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


# ---------------------------------------------------------------------------------------------
# The walk of the tables' b-trees from the schema


def _tree(tmp_path, n: int = 400, start: int = 1, reserved: int = 0):
    """A spool of 512-byte pages whose alerts b-tree has interior pages."""
    path = tmp_path / "spool.db"
    db = _open(path, 512, reserved)
    _fill(db, n, start=start)
    db.close()
    return path


def _root(path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    finally:
        db.close()


def _interior(raw: bytes, page: int, page_size: int = 512) -> tuple[int, list[int]]:
    """(offset of page ``page``, its cell pointers) of an interior table page."""
    off = (page - 1) * page_size
    assert raw[off] == 0x05
    n = struct.unpack_from(">H", raw, off + 3)[0]
    return off, list(struct.unpack_from(f">{n}H", raw, off + 12))


def test_the_walk_reads_only_the_leaves_of_the_tables_asked_for(tmp_path):
    path = _tree(tmp_path)
    assert _root(path, "alerts") not in _leaves(path)           # the tree has interior pages
    got, report = _scan(path, TABLES)
    assert report.walked and got == _rows(path, TABLES)         # no health row, no schema row
    assert report.pages == report.leaf_pages == len(_leaves(path, TABLES))


def test_a_trigger_named_like_a_table_does_not_hide_the_table(tmp_path):
    # SQLite keeps triggers in a namespace of their own: a trigger may bear a table's name. Its
    # schema row (root page 0) names no b-tree; only the schema's table rows do.
    path = _tree(tmp_path, 40)
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER meta AFTER INSERT ON health BEGIN SELECT 1; END")
    db.execute("CREATE INDEX alerts_kind ON alerts(kind)")
    db.commit()
    db.close()
    got, report = _scan(path, TABLES)
    assert report.walked and got == _rows(path, TABLES)


def test_the_walk_finds_a_table_by_its_name_column(tmp_path):
    # The schema row of a table holds its name twice: name, and tbl_name, a copy (the file
    # format). With the copy damaged SQLite refuses the file ("malformed database schema"), but
    # the table's name and root page are intact: the walk still reads exactly its leaves.
    path = _tree(tmp_path, 40)
    want = _rows(path, TABLES)
    raw = bytearray(path.read_bytes())
    at = _schema_record(path, raw) + 7
    assert raw[at:at + 17] == b"tablealertsalerts"
    raw[at + 11:at + 17] = b"zzzzzz"
    path.write_bytes(bytes(raw))
    with pytest.raises(sqlite3.DatabaseError):
        _rows(path, TABLES)
    got, report = _scan(path, TABLES)
    assert report.walked and got == want


def _cell_offsets(raw: bytes, page: int, page_size: int) -> list[int]:
    """File offsets of the cells of table leaf page ``page``, through its cell-pointer array."""
    off = (page - 1) * page_size
    base = off + (100 if page == 1 else 0)
    assert raw[base] == 0x0D
    n = struct.unpack_from(">H", raw, base + 3)[0]
    return [off + p for p in struct.unpack_from(f">{n}H", raw, base + 8)]


def _schema_record(path, raw: bytes) -> int:
    """Offset of the record header of the alerts table's schema row (its live cell, not a stale
    copy in a page's free space)."""
    page_size = struct.unpack_from(">H", raw, 16)[0]
    body = None
    for page in _leaves(path, ("sqlite_schema",)):
        for cell in _cell_offsets(raw, page, page_size):
            at = raw.find(b"tablealertsalerts", cell, cell + 40)
            if at > 0:
                body = at
    assert body is not None
    hsize = 7          # its size, the type and two names (1 byte each), the root page, the SQL (2)
    assert raw[body - hsize] == hsize
    return body - hsize


@pytest.mark.parametrize("damage", ["header size", "value past the payload", "not UTF-8"])
def test_a_schema_row_that_does_not_decode_stops_the_walk_not_the_scan(tmp_path, damage):
    # The walk needs the whole schema: a schema row that does not decode means every leaf page is
    # read instead (counted as a bad cell itself), with every row of the tables.
    path = _tree(tmp_path, 40)
    want = _rows(path, TABLES)
    raw = bytearray(path.read_bytes())
    rec = _schema_record(path, raw)
    if damage == "header size":
        raw[rec] = 0                                  # a record header is at least its own size
    elif damage == "value past the payload":
        assert raw[rec + 5] < 0x8F
        raw[rec + 5] = 0x8F                          # the SQL's text: longer than the payload
    else:
        raw[rec + 7 + 5] = 0xFF                      # the table's name: not UTF-8
    path.write_bytes(bytes(raw))

    got, report = _scan(path, TABLES)
    assert not report.walked and report.bad_cells == 1
    assert not (want - got)


def _walk_given_up(tmp_path, damage) -> salvage.ScanReport:
    """Damage the alerts tree's root (``damage(raw, off, ptrs, root)``: the file's bytes, the
    root's offset, its cell pointers and page number), then scan: the walk must be given up and
    every row still read (from all leaf pages)."""
    path = _tree(tmp_path)
    want = _rows(path, TABLES)
    raw = bytearray(path.read_bytes())
    root = _root(path, "alerts")
    off, ptrs = _interior(raw, root)
    damage(raw, off, ptrs, root)
    path.write_bytes(bytes(raw))
    got, report = _scan(path, TABLES)
    assert not report.walked
    assert not (want - got)
    return report


def test_an_interior_page_naming_page_0_stops_the_walk_not_the_scan(tmp_path):
    # Page numbers start at 1: a child pointer of 0 is damage. Every row is still read, from all
    # leaf pages.
    _walk_given_up(tmp_path, lambda raw, off, ptrs, root:
                   struct.pack_into(">I", raw, off + ptrs[0], 0))


def test_an_interior_page_that_lost_cells_does_not_hide_their_leaves(tmp_path):
    # The root's cell count damaged to fewer cells still walks as a tree (the right child and
    # what the cells left name), but the leaves of the lost cells are in the file, reached by no
    # tree and not on the freelist: every leaf page is read, and none of their rows is lost
    def damage(raw, off, ptrs, root):
        assert ptrs
        struct.pack_into(">H", raw, off + 3, 0)

    report = _walk_given_up(tmp_path, damage)
    assert any("no b-tree reaches" in n for n in report.notes)


def test_a_healthy_tree_with_free_pages_and_other_tables_is_still_walked(tmp_path):
    # Leaves of tables not asked for (health, blobs) and pages on the freelist are accounted
    # for: no stray leaf, the walk stands
    path = _tree(tmp_path)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO blobs(body) VALUES (zeroblob(3000))")
    db.execute("DELETE FROM alerts WHERE id > 200")
    db.commit()
    db.close()
    assert _pragma(path, "freelist_count") > 0
    got, report = _scan(path, TABLES)
    assert report.walked and got == _rows(path, TABLES)
    assert not report.notes


def test_a_stray_leaf_is_found_on_any_page_page_1_and_the_last_included(tmp_path):
    # _Pages.stray_leaf decides whether the walk is the whole table: every table leaf page in
    # the file that no tree reaches counts, page 1 (whose page header follows the 100-byte file
    # header) and the last page included; an interior page does not
    small = tmp_path / "small.db"                                 # the schema fits page 1
    db = _open(small, 4096)
    _fill(db, 5)
    db.close()
    path = _tree(tmp_path)
    # (the small file's last page is the root of the table created last: a leaf)
    for file, pick in ((small, lambda every, count: [1, count]),
                       (path, lambda every, count: [sorted(every)[len(every) // 2]])):
        pages = salvage._Pages(str(file), None, salvage.ScanReport())
        try:
            assert pages.btree_leaves(TABLES) is not None
            everything = set(pages.tree_leaves)
            assert pages.stray_leaf(set()) is None
            for n in pick(everything, pages.count):
                assert n in everything                            # a leaf of a tree
                pages.tree_leaves = everything - {n}
                assert pages.stray_leaf(set()) == n
                assert pages.stray_leaf({n}) is None              # the freelist names it
        finally:
            pages.close()
    pages = salvage._Pages(str(path), None, salvage.ScanReport())
    try:
        assert pages.btree_leaves(TABLES) is not None
        root = _root(path, "alerts")
        assert root not in pages.tree_leaves and pages.stray_leaf(set()) is None   # interior
    finally:
        pages.close()


@pytest.mark.parametrize("ncells", [251, 300, 499, 0xFFFF])
def test_an_interior_cell_count_past_the_page_stops_the_walk_not_the_scan(tmp_path, ncells):
    # 512-byte pages: a pointer array of more than (512 - 12) / 2 = 250 cells does not fit the
    # page. The count damaged past that (the rest of the page zeroed, so every pointer the array
    # would hold reads as a small number) is refused before any pointer is read past the page:
    # the walk is given up, every leaf page is read, no row is lost and nothing raises
    def damage(raw, off, ptrs, root):
        raw[off + 12:off + 512] = bytes(500)
        struct.pack_into(">H", raw, off + 3, ncells)

    _walk_given_up(tmp_path, damage)


def test_an_interior_page_naming_itself_is_not_a_tree(tmp_path):
    # A child pointer damaged to name the page it is on: a cycle, not a tree (and no endless
    # walk): every leaf page is read and no row is lost
    _walk_given_up(tmp_path, lambda raw, off, ptrs, root:
                   struct.pack_into(">I", raw, off + ptrs[0], root))


def test_an_interior_page_naming_one_child_twice_is_not_a_tree(tmp_path):
    # A cell of the root naming the root's right child: the tree is damaged, and the subtree the
    # cell named must not be lost: every leaf page is read.
    def damage(raw, off, ptrs, root):
        right = struct.unpack_from(">I", raw, off + 8)[0]
        struct.pack_into(">I", raw, off + ptrs[0], right)

    _walk_given_up(tmp_path, damage)


@pytest.mark.parametrize("where", ["the last 3 bytes", "past the page"])
def test_an_interior_cell_pointer_with_no_room_for_its_child_stops_the_walk(tmp_path, where):
    # A child page number is 4 bytes: a cell pointer leaving fewer before the end of the page is
    # damage. Every row is still read, from all leaf pages.
    _walk_given_up(tmp_path, lambda raw, off, ptrs, root: struct.pack_into(
        ">H", raw, off + 12, 512 - 3 if where == "the last 3 bytes" else 600))


def _interior_cells(raw: bytes, off: int, ptrs: list[int]) -> list[bytes]:
    """The cells of an interior table page: a 4-byte child page number and the key's varint."""
    cells = []
    for p in ptrs:
        end = off + p + 4
        while raw[end] & 0x80 and end < off + p + 12:
            end += 1
        cells.append(bytes(raw[off + p:end + 1]))
    return cells


def _relaid(tmp_path, place, reserved: int = 0) -> tuple[bool, bool]:
    """The alerts tree's root with its cells laid out again by ``place(raw, off, cells,
    usable)``, which writes the cells and returns their new pointers; (walked, no row lost)."""
    path = _tree(tmp_path, reserved=reserved)
    want = _rows(path, TABLES)
    raw = bytearray(path.read_bytes())
    # the interior table page with the most cells (the root may have one)
    page = max((n for n in range(1, len(raw) // 512) if raw[(n - 1) * 512] == 0x05),
               key=lambda n: raw[(n - 1) * 512 + 3] << 8 | raw[(n - 1) * 512 + 4])
    off, ptrs = _interior(raw, page)
    cells = _interior_cells(raw, off, ptrs)
    assert len(cells) >= 2
    raw[off + 12 + 2 * len(cells):off + 512] = bytes(512 - 12 - 2 * len(cells))
    new = place(raw, off, cells, 512 - reserved)
    struct.pack_into(f">{len(new)}H", raw, off + 12, *new)
    path.write_bytes(bytes(raw))
    got, report = _scan(path, TABLES)
    return report.walked, not (want - got)


def _packed(raw, off, cells, start: int) -> list[int]:
    """The cells written one after the other from ``start``; their pointers."""
    new = []
    for cell in cells:
        raw[off + start:off + start + len(cell)] = cell
        new.append(start)
        start += len(cell)
    return new


@pytest.mark.parametrize("reserved", [0, 12])
def test_interior_cells_right_after_the_pointer_array_are_walked(tmp_path, reserved):
    # A full page's cell content area starts right after the pointer array: the walk follows
    # cells there (SQLite reads such a page the same)
    walked, whole = _relaid(tmp_path, lambda raw, off, cells, usable:
                            _packed(raw, off, cells, 12 + 2 * len(cells)), reserved)
    assert walked and whole


@pytest.mark.parametrize("reserved", [0, 12])
def test_an_interior_cell_of_five_bytes_at_the_end_of_the_usable_area_is_walked(tmp_path,
                                                                               reserved):
    # The smallest cell, a child page number and a one-byte key, ending where the reserved
    # bytes begin: the walk follows it
    def place(raw, off, cells, usable):
        new = _packed(raw, off, cells[:-1], 12 + 2 * len(cells))
        raw[off + usable - 5:off + usable] = cells[-1][:4] + b"\x01"
        return new + [usable - 5]

    walked, whole = _relaid(tmp_path, place, reserved)
    assert walked and whole


@pytest.mark.parametrize("reserved", [0, 12])
def test_an_interior_cell_with_no_room_for_its_key_stops_the_walk(tmp_path, reserved):
    # Four bytes before the end of the usable area hold a child page number but no key: damage.
    # The walk is given up and every row is still read, from all leaf pages.
    def place(raw, off, cells, usable):
        new = _packed(raw, off, cells[:-1], 12 + 2 * len(cells))
        raw[off + usable - 4:off + usable] = cells[-1][:4]
        return new + [usable - 4]

    walked, whole = _relaid(tmp_path, place, reserved)
    assert not walked and whole


def test_an_interior_cell_pointer_into_the_pointer_array_stops_the_walk(tmp_path):
    # The first cell's pointer damaged to the last byte of the pointer array, where the bytes
    # read as that cell's own child page number (the last pointer's low byte is 0, the next
    # three are the child's): a pointer into the header or the array is damage, never a cell.
    # The walk is given up and every row is still read, from all leaf pages.
    def place(raw, off, cells, usable):
        end = 12 + 2 * len(cells)
        child = struct.unpack(">I", cells[0][:4])[0]
        assert child < 1 << 24
        raw[off + end:off + end + 3] = child.to_bytes(3, "big")
        raw[off + 256:off + 256 + len(cells[-1])] = cells[-1]
        new, at = [], end + 3                 # the others around it
        for cell in cells[1:-1]:
            if at < 256 + len(cells[-1]) and at + len(cell) > 256:
                at = 256 + len(cells[-1])
            raw[off + at:off + at + len(cell)] = cell
            new.append(at)
            at += len(cell)
        assert at <= usable
        return [end - 1] + new + [256]

    walked, whole = _relaid(tmp_path, place)
    assert not walked and whole


@pytest.mark.parametrize("extra", [1, 300, 0xFFFF])
def test_an_interior_page_whose_cell_count_overruns_the_page_stops_the_walk(tmp_path, extra):
    # The cell pointers of an interior page follow its 12-byte header; a count whose pointers
    # would run past the page is damage. Every row is still read, from all leaf pages.
    _walk_given_up(tmp_path, lambda raw, off, ptrs, root: struct.pack_into(
        ">H", raw, off + 3, min((512 - 12) // 2 + extra, 0xFFFF)))


# ---------------------------------------------------------------------------------------------
# Cells of a leaf page: taken through the cell-pointer array, never guessed


def _blobs(tmp_path, reserved: int = 0, sizes=(20, 21, 22, 23, 24)):
    """A spool-shaped file whose blobs table is one leaf page of len(sizes) rows, rowids 1...;
    returns (path, page, usable)."""
    path = tmp_path / "spool.db"
    db = _open(path, 512, reserved)
    _fill(db, 3)
    db.execute("BEGIN")
    for i, n in enumerate(sizes, 1):
        db.execute("INSERT INTO blobs VALUES (?, ?)", (i, bytes([i]) * n))
    db.execute("COMMIT")
    db.close()
    page = _root(path, "blobs")
    assert page in _leaves(path, ("blobs",))
    return path, page, 512 - reserved


def _ptrs(raw, page) -> tuple[int, list[int]]:
    off = (page - 1) * 512
    n = struct.unpack_from(">H", raw, off + 3)[0]
    return off, list(struct.unpack_from(f">{n}H", raw, off + 8))


def _cell(rowid: int, blob: bytes) -> bytes:
    """A table leaf cell of ``blobs`` (a record of NULL and one blob), by the file format."""
    serial = enc_varint(2 * len(blob) + 12)
    record = enc_varint(2 + len(serial)) + b"\x00" + serial + blob
    return enc_varint(len(record)) + enc_varint(rowid) + record


def test_a_cell_right_after_the_pointer_array_is_read(tmp_path):
    # A full page's cell content area starts right after the cell-pointer array: a cell there is
    # a cell (SQLite reads the page the same).
    path, page, _ = _blobs(tmp_path)
    raw = bytearray(path.read_bytes())
    off, ptrs = _ptrs(raw, page)
    end = 8 + 2 * len(ptrs)
    cell = _cell(1, b"\x01" * 20)
    assert raw[off + ptrs[0]:off + ptrs[0] + len(cell)] == cell
    raw[off + end:off + end + len(cell)] = cell
    struct.pack_into(">H", raw, off + 8, end)
    want = _rows(path)
    path.write_bytes(bytes(raw))
    assert _rows(path) == want

    got, report = _scan(path)
    assert got == want and report.bad_cells == 0


def _pointer_counted_not_read(path, raw: bytearray, rowid: int) -> None:
    """Write ``raw`` (one cell pointer of a leaf aimed at bytes that look like row ``rowid``)
    over ``path`` and scan: that row is not read, its cell is counted, and the pointer's own
    row is the only one lost."""
    want = _rows(path)
    path.write_bytes(bytes(raw))
    got, report = _scan(path)
    assert not any(r == rowid for r, _ in got)
    assert report.bad_cells == 1 and len(want - got) == 1 and not (got - want)


def test_bytes_inside_the_pointer_array_are_never_read_as_a_cell(tmp_path):
    # The last cell pointer damaged to point one byte before the array's end, where the bytes
    # happen to form a cell (row 99): a pointer into the header or the array is damage, so that
    # row is not guessed at, and the cell is counted.
    path, page, _ = _blobs(tmp_path)
    raw = bytearray(path.read_bytes())
    off, ptrs = _ptrs(raw, page)
    at = 8 + 2 * len(ptrs) - 1                       # the pointer's own low byte
    cell = _cell(99, b"\x63" * (at - 3))             # its payload size is that byte
    assert cell[0] == at and len(cell) < min(ptrs) - at
    struct.pack_into(">H", raw, off + 8 + 2 * (len(ptrs) - 1), at)
    raw[off + at + 1:off + at + len(cell)] = cell[1:]
    _pointer_counted_not_read(path, raw, 99)


def test_a_pointer_into_the_reserved_bytes_is_never_read_as_a_cell(tmp_path):
    # The reserved bytes at a page's end are not part of its b-tree: a cell pointer to them is
    # damage even when they hold what looks like a cell.
    path, page, usable = _blobs(tmp_path, reserved=32)
    raw = bytearray(path.read_bytes())
    off, ptrs = _ptrs(raw, page)
    cell = _cell(98, b"\x62" * 20)
    raw[off + usable:off + usable + len(cell)] = cell
    struct.pack_into(">H", raw, off + 8, usable)
    _pointer_counted_not_read(path, raw, 98)


def test_a_payload_running_into_the_reserved_bytes_is_not_read(tmp_path):
    # The cell at the end of the content area, its payload size (and blob length) damaged to run
    # 5 bytes into the reserved bytes: counted, not read with those bytes.
    path, page, usable = _blobs(tmp_path, reserved=32)
    raw = bytearray(path.read_bytes())
    off, ptrs = _ptrs(raw, page)
    cells = {p: raw[off + p] + 2 for p in ptrs}      # cell length: payload size, rowid, payload
    [last] = [p for p, n in cells.items() if p + n == usable]
    size, rowid, hsize, null, serial = raw[off + last:off + last + 5]
    assert hsize == 3 and null == 0 and serial < 0x80 - 10
    raw[off + last] = size + 5
    raw[off + last + 4] = serial + 10
    raw[off + usable:off + usable + 5] = b"\xee" * 5
    want = _rows(path)
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert report.bad_cells == 1 and not (got - want)
    assert [r for r, _ in want - got] == [rowid]


def test_a_cell_cut_off_by_the_page_end_is_counted(tmp_path):
    # A cell pointer damaged to the page's last byte, which starts a varint that would run past
    # the page: that cell is counted and the page's other cells are read.
    path, page, usable = _blobs(tmp_path)
    raw = bytearray(path.read_bytes())
    off, ptrs = _ptrs(raw, page)
    last = max(ptrs)
    i = ptrs.index(last)
    struct.pack_into(">H", raw, off + 8 + 2 * i, usable - 1)
    raw[off + usable - 1] = 0xFF
    want = _rows(path)
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert report.bad_cells == 1 and len(want - got) == 1 and not (got - want)


@pytest.mark.parametrize("reserved", [0, 5])
def test_a_leaf_cell_count_is_bounded_by_the_page(tmp_path, reserved):
    # The cell pointers of a leaf page follow its 8-byte header. A count damaged to the most
    # pointers the usable bytes can hold: each entry points into the header or the array itself,
    # so each is a cell that did not decode, counted. One more, and the array does not fit: the
    # page has no readable cells.
    path, page, usable = _blobs(tmp_path, reserved)
    fit = (usable - 8) // 2
    raw = bytearray(path.read_bytes())
    off = (page - 1) * 512
    for count, bad in ((fit, fit), (fit + 1, 0)):
        struct.pack_into(">H", raw, off + 3, count)
        path.write_bytes(bytes(raw))
        got, report = _scan(path)
        assert report.bad_cells == bad
        assert not any(len(v) == 2 and isinstance(v[1], bytes) and v[0] is None for _, v in got)


def test_an_overflow_chain_that_loops_is_a_bad_cell(tmp_path):
    # The second overflow page of a row names the first as its next: the chain is damaged, the
    # row is counted and not read with repeated bytes, and the other rows are read.
    path = tmp_path / "spool.db"
    db = _open(path, 512)
    _fill(db, 3)
    db.execute("INSERT INTO blobs VALUES (1, ?)", (bytes(range(256)) * 6,))
    db.execute("INSERT INTO blobs VALUES (2, x'0102')")
    db.close()
    want = _rows(path)
    db = sqlite3.connect(path)
    overflow = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name='blobs' AND pagetype='overflow' "
                                          "ORDER BY pageno")]
    db.close()
    assert len(overflow) >= 3
    raw = bytearray(path.read_bytes())
    chain = []
    # the chain, by the overflow pages' own next numbers, from the one no other names
    named = {struct.unpack_from(">I", raw, (p - 1) * 512)[0] for p in overflow}
    [head] = [p for p in overflow if p not in named]
    while head:
        chain.append(head)
        head = struct.unpack_from(">I", raw, (head - 1) * 512)[0]
    struct.pack_into(">I", raw, (chain[1] - 1) * 512, chain[0])
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert report.bad_cells == 1
    assert [r for r, v in want - got] == [1] and not (got - want)


def test_a_row_that_does_not_decode_is_counted_and_the_rest_of_its_page_read(tmp_path):
    # Two rows of one leaf page damaged in their record headers (a header size of 0; a blob
    # longer than the payload): both counted, every other row read, before and after them.
    path, page, _ = _blobs(tmp_path)
    raw = bytearray(path.read_bytes())
    off, ptrs = _ptrs(raw, page)
    rowid_of = {p: raw[off + p + 1] for p in ptrs}
    raw[off + ptrs[1] + 2] = 0                       # record header size
    raw[off + ptrs[2] + 4] += 2                      # blob serial type: one byte longer
    want = _rows(path)
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert report.bad_cells == 2
    assert sorted(r for r, _ in want - got) == sorted([rowid_of[ptrs[1]], rowid_of[ptrs[2]]])
    assert not (got - want)


# ---------------------------------------------------------------------------------------------
# The scan over a main file cut short, under its write-ahead log


def test_committed_wal_pages_past_a_cut_in_the_main_file_are_read(tmp_path):
    # The main file keeps only its first 2 pages; the WAL's last commit says how long the
    # database is and holds every page written since the checkpoint: the rows on those pages
    # are read, past the pages that are missing from both.
    live = tmp_path / "live.db"
    db = _open(live, 512, wal=True)
    _fill(db, 100)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("BEGIN")
    for i in range(1001, 1101):
        _alert(db, i, bytes([i % 251]) * 60)
    db.execute("COMMIT")
    later = {(r[0], (None,) + tuple(r[2:])) for r in db.execute("SELECT rowid, * FROM alerts WHERE id > 1000")}
    copy = tmp_path / "copy.db"
    shutil.copyfile(live, copy)
    shutil.copyfile(str(live) + "-wal", str(copy) + "-wal")
    db.close()
    with open(copy, "r+b") as fh:
        fh.truncate(2 * 512)

    got, report = _scan(copy, wal=str(copy) + "-wal")
    assert report.wal_frames > 0
    assert later <= set(got)


def test_a_freelist_chain_leading_past_its_count_into_a_row_lists_no_page(tmp_path):
    # The last trunk page's next-trunk number damaged to name the first overflow page of a live
    # row, whose bytes (an alert body is whatever the event held) read like a trunk page listing
    # two live leaves of the alerts table. The header's freelist count is reached before that
    # page: nothing it lists is skipped.
    path = _freed(tmp_path)
    victims = sorted(_leaves(path, ("alerts",)))[:2]
    # A payload of 1,000 bytes keeps 39 on its leaf page (512-byte pages: the format's minimum
    # local size): its first overflow page holds payload bytes 39 on, blob bytes 35 on.
    blob = bytearray(996)
    blob[35:47] = struct.pack(">III", len(victims), *victims)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO blobs VALUES (1, ?)", (bytes(blob),))
    db.commit()
    db.close()
    overflow = sorted(p for (p,) in sqlite3.connect(path).execute(
        "SELECT pageno FROM dbstat WHERE name='blobs' AND pagetype='overflow'"))
    raw = bytearray(path.read_bytes())
    [first] = [p for p in overflow if raw[(p - 1) * 512 + 4:(p - 1) * 512 + 16] == blob[35:47]]
    trunks = _trunks(raw, 512)
    last, _, leaves = trunks[-1]
    _set_trunk(raw, 512, last, first, leaves)
    want = _rows(path)
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert got == want
    assert report.free_pages == _pragma(path, "freelist_count")


def _spilling_row(db, path, body: bytes):
    """Rows 1 (``body``, which spills to overflow pages) and 2 (two bytes) into ``blobs``, then
    the rows SQLite reads, the file's bytes, the blobs leaf's offset and row 1's cell offset."""
    db.execute("INSERT INTO blobs VALUES (1, ?)", (body,))
    db.execute("INSERT INTO blobs VALUES (2, x'0102')")
    db.close()
    want = _rows(path)
    raw = bytearray(path.read_bytes())
    off, ptrs = _ptrs(raw, _root(path, "blobs"))
    [cell] = [p for p in ptrs if raw[off + p] & 0x80]     # its payload size needs 2 bytes
    return want, raw, off, cell


def test_an_overflow_chain_naming_page_1_is_a_bad_cell(tmp_path):
    # Page 1 is always the schema's root page, never an overflow page: a row whose overflow
    # pointer is damaged to 1 is counted, not read with page 1's bytes as its body.
    path = tmp_path / "spool.db"
    db = _open(path, 512)
    _fill(db, 3)
    want, raw, off, big = _spilling_row(db, path, b"\x07" * 600)
    size, pos = salvage.varint(raw, off + big)
    _, pos = salvage.varint(raw, pos)
    usable = 512
    max_local, min_local = _local_bounds(usable)
    k = min_local + (size - min_local) % (usable - 4)
    local = k if k <= max_local else min_local     # the file format's local part of the payload
    assert struct.unpack_from(">I", raw, pos + local)[0] > 1
    struct.pack_into(">I", raw, pos + local, 1)
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert report.bad_cells == 1
    assert [r for r, _ in want - got] == [1] and not (got - want)


def test_an_overflow_page_may_be_page_2(tmp_path):
    # Any page but the first can hold overflow: page 2, freed by a dropped table, is reused for
    # a large row's chain, which is read whole.
    path = tmp_path / "spool.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size=512")
    db.execute("CREATE TABLE gone (x)")
    db.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB)")
    db.execute("DROP TABLE gone")
    db.execute("INSERT INTO blobs VALUES (1, ?)", (bytes(range(200)) * 6,))
    db.close()
    assert 2 in {p for (p,) in sqlite3.connect(path).execute(
        "SELECT pageno FROM dbstat WHERE name='blobs' AND pagetype='overflow'")}
    got, report = _scan(path)
    assert got == _rows(path) and report.bad_cells == 0


def test_an_overflow_pointer_in_the_reserved_bytes_is_not_followed(tmp_path):
    # A spilling cell ends with the number of its first overflow page, inside the usable bytes.
    # The cell at the end of the content area, its payload size (and blob length) damaged one
    # byte longer: its local part grows by a byte (the format's split keeps the overflow part a
    # whole number of overflow pages) and the page number would lie one byte into the reserved
    # bytes, where it is written: counted, not followed.
    path = tmp_path / "spool.db"
    db = _open(path, 512, reserved=32)
    _fill(db, 3)
    usable = 480
    max_local, min_local = _local_bounds(usable)
    size = 600
    local = min_local + (size - min_local) % (usable - 4)
    assert local <= max_local and local + 1 <= max_local
    blob = _blob_for(size)
    want, raw, off, cell = _spilling_row(db, path, b"\x05" * blob)
    assert cell + 2 + 1 + local + 4 == usable          # size (2 bytes), rowid, local, pointer
    first = struct.unpack_from(">I", raw, off + usable - 4)[0]
    raw[off + cell + 1] += 1                            # payload size + 1
    assert raw[off + cell + 3:off + cell + 5] == b"\x04\x00"
    raw[off + cell + 6] += 2                            # the blob's serial type: one byte longer
    struct.pack_into(">I", raw, off + usable - 3, first)
    path.write_bytes(bytes(raw))

    got, report = _scan(path)
    assert report.bad_cells == 1
    assert [r for r, _ in want - got] == [1] and not (got - want)
