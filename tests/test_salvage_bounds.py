"""The salvage reader's payload cap (docs/hostile-inputs.md, "The spool file").

Salvage reads a damaged spool page by page; a cell's payload size is a varint the damage may
have changed, and every byte of an overflow chain is read into memory, so a payload above
``MAX_PAYLOAD`` is refused before its chain is followed. The cap is 64 MiB (a spool row is one
alert, far below it); a row exactly at the cap is read, one byte over is counted as a bad cell,
and the other rows of the file are still read.
"""
from __future__ import annotations

import sqlite3

import pytest

from sensor.deliver import salvage

BIG = 10_000   # bytes of the large row's blob: its payload spills onto overflow pages


def _spool_like(path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE alerts(id INTEGER PRIMARY KEY, body BLOB)")
    db.execute("INSERT INTO alerts VALUES (1, ?)", (b"a" * 20,))
    db.execute("INSERT INTO alerts VALUES (2, ?)", (b"b" * BIG,))
    db.execute("INSERT INTO alerts VALUES (3, ?)", (b"c" * 20,))
    db.commit()
    db.close()


def _payload_size() -> int:
    # The large row's record: a header (its own size, NULL for the rowid alias, the blob's
    # serial type 2n+12 as a varint) and the blob.
    serial = 2 * BIG + 12
    header = 1 + 1 + (1 if serial < 0x80 else 2 if serial < 0x4000 else 3)
    return header + BIG


def _scan(path):
    report = salvage.ScanReport()
    rows = {rowid: values for rowid, values in salvage.scan(str(path), report=report)
            if len(values) == 2}
    return rows, report


def test_the_cap_is_the_documented_64_mib():
    assert salvage.MAX_PAYLOAD == 64 * 1024 * 1024


def test_a_payload_at_the_cap_is_read_and_one_byte_over_is_counted_and_skipped(tmp_path, monkeypatch):
    path = tmp_path / "spool.db"
    _spool_like(path)
    size = _payload_size()

    monkeypatch.setattr(salvage, "MAX_PAYLOAD", size)
    rows, report = _scan(path)
    assert rows[2] == [None, b"b" * BIG]          # exactly at the cap: read whole
    assert report.bad_cells == 0

    monkeypatch.setattr(salvage, "MAX_PAYLOAD", size - 1)
    rows, report = _scan(path)
    assert 2 not in rows                          # one byte over: refused, counted
    assert report.bad_cells == 1
    assert rows[1] == [None, b"a" * 20] and rows[3] == [None, b"c" * 20]   # the rest still read


@pytest.mark.parametrize("claimed", [64 * 1024 * 1024 + 1, (1 << 56) - 1])
def test_a_damaged_size_far_over_the_cap_is_a_bad_cell_and_the_other_rows_survive(tmp_path, claimed):
    # Damage rewrites a small row's payload size varint to a huge value: the reader must not
    # trust it (no chain of that length, no allocation for it): the row is a bad cell, the others
    # are read.
    path = tmp_path / "spool.db"
    _spool_like(path)
    raw = bytearray(path.read_bytes())
    page_size = int.from_bytes(raw[16:18], "big")
    needle = b"a" * 20
    at = raw.index(needle)
    page = at // page_size
    base = page * page_size
    # The cell of row 1: [payload size varint][rowid varint = 1][record]. Its record header is
    # 3 bytes (size, NULL, blob serial type 52), so the cell starts 5 bytes before the blob.
    cell = at - 5
    assert raw[cell] == 23 and raw[cell + 1] == 1, "unexpected cell layout"
    enc = []
    v = claimed
    enc.append(v & 0x7F)
    v >>= 7
    while v:
        enc.append(0x80 | (v & 0x7F))
        v >>= 7
    enc.reverse()
    # Make room: the cell's varint grows, so rewrite the cell at the page's free space end,
    # pointing the page's cell-pointer entry at the new place.
    new_cell = bytes(enc) + b"\x01" + bytes(raw[cell + 2:cell + 2 + 3 + 20])
    ncells = int.from_bytes(raw[base + 3:base + 5], "big")
    ptrs = [int.from_bytes(raw[base + 8 + 2 * i:base + 10 + 2 * i], "big") for i in range(ncells)]
    i = ptrs.index(cell - base)
    content_start = int.from_bytes(raw[base + 5:base + 7], "big")
    dest = content_start - len(new_cell)
    assert dest > base + 8 + 2 * ncells - base
    raw[base + dest:base + dest + len(new_cell)] = new_cell
    raw[base + 8 + 2 * i:base + 10 + 2 * i] = dest.to_bytes(2, "big")
    raw[base + 5:base + 7] = dest.to_bytes(2, "big")
    path.write_bytes(bytes(raw))

    rows, report = _scan(path)
    assert 1 not in rows and report.bad_cells == 1
    assert rows[2] == [None, b"b" * BIG] and rows[3] == [None, b"c" * 20]
