"""The spool's promises one by one (docs/delivery.md, "The spool", "Faults", "[spool]"), each
checked on a real SQLite file: defaults, bounds and their edges, checksums, the error classes,
dead letters, health events, observing calls and a clean close. Fast: the mutation run of
sensor/deliver/spool.py runs this file for every mutant."""
from __future__ import annotations

import collections.abc
import contextlib
import errno
import gc
import logging
import os
import re
import sqlite3
import stat
import threading
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import example, given, settings, strategies as st

from sensor.deliver import spool as spool_mod
from sensor.deliver.spool import (Spool, SpooledAlert, SpoolDamaged, SpoolError, SpoolFull,
                                  SpoolRowError, row_crc)

from .conftest import fill

MiB = 1024 * 1024


def alert(i: int, pad: int = 0) -> dict:
    # every alert of the same pad has the same size
    return {"id": f"a-{i:06d}", "rule": {"id": "r"}, "event": {"ProcessId": 1_000_000 + i, "pad": "x" * pad}}


def size_of(a: dict) -> int:
    return len(msgspec.json.encode(a))


class Clock:
    def __init__(self, t: float = 2_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path))


# -- defaults and settings (docs/delivery.md, "[spool]" and "The WAL") ------------------------

def _edit(path: Path, sql: str, *params) -> None:
    """Another program changes the spool file: one statement, committed."""
    con = raw(path)
    con.execute(sql, *params)
    con.commit()
    con.close()


def _pin_the_wal(path: Path) -> sqlite3.Connection:
    """A reader in an open read transaction on `path`: it pins the WAL (no checkpoint can
    reset it) until it rolls back; the caller closes it."""
    con = raw(path)
    con.execute("BEGIN")
    con.execute("SELECT COUNT(*) FROM alerts").fetchone()
    return con


@contextlib.contextmanager
def _full_with_the_wal_pinned(vol: Path):
    """A reader pins the WAL of vol/s.db and a file fills the volume; both go at the end."""
    pin = _pin_the_wal(vol / "s.db")
    filler = fill(vol)
    try:
        yield
    finally:
        pin.rollback()
        pin.close()
        filler.unlink()


def _in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def _a_thread_inside(gate) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A thread enters the gate, sets `inside` and stays until `release` is set (the 30 s
    only guards a hang); returns the thread and the two events."""
    inside, release = threading.Event(), threading.Event()

    def stay():
        gate.enter()
        inside.set()
        release.wait(30)
        gate.leave()

    t, _ = _in_thread(stay)
    return t, inside, release


def test_the_gate_lets_threads_in_together_and_a_healer_in_alone():
    """The gate a heal uses (docs/delivery.md, "Faults": the healing thread waits, bounded, until
    the other threads are out of the file; threads that arrive meanwhile wait for it). First in
    this file: a gate that never opens hangs the spool's other tests, here only one thread
    (the guard timeouts only guard that hang)."""
    gate = spool_mod._Gate()
    # entering is reentrant per thread, and threads enter together
    t, out = _in_thread(lambda: (gate.enter(), gate.enter(), gate.depth(), gate.leave(),
                                 gate.depth(), gate.leave(), gate.depth()))
    t.join(30)
    assert out and out[0][2::2] == (2, 1, 0)
    t, inside, release = _a_thread_inside(gate)
    assert inside.wait(30)
    t2, out2 = _in_thread(lambda: (gate.enter(), gate.leave(), "in"))   # another user: not blocked
    t2.join(30)
    assert out2 == [(None, None, "in")]
    assert gate.alone(0.05) is False          # a thread is inside and does not leave in time
    t3, out3 = _in_thread(lambda: gate.alone(3600))
    release.set()                              # it leaves: the waiting healer goes in then
    t.join(30)
    t3.join(30)
    assert out3 == [True], "the healer was not woken when the thread left"
    assert gate.alone(0) is False              # another heal runs
    gate.done()                                # (that healer's thread has ended)
    assert gate.alone(30) is True              # nobody inside: this thread heals now
    t, out = _in_thread(lambda: gate.alone(0))
    t.join(30)
    assert out == [False]                      # another heal runs
    late, out4 = _in_thread(lambda: (gate.enter(), gate.leave(), "after"))
    late.join(0.2)
    assert not out4                            # a thread that arrives during the heal waits
    gate.done()
    late.join(30)
    assert out4 == [(None, None, "after")]
    # a healer that is inside the gate itself does not wait for itself, and may enter again
    t, out = _in_thread(lambda: (gate.enter(), gate.alone(0), gate.enter(), gate.depth(),
                                 gate.leave(), gate.done(), gate.leave(), gate.depth()))
    t.join(30)
    assert out and out[0][1] is True and out[0][3] == 2 and out[0][-1] == 0
    assert gate.alone(0) is True               # nobody inside now
    gate.done()


def test_defaults_are_the_documented_ones(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        assert sp.max_bytes == 256 * MiB            # max_mb = 256
        assert sp.max_age == 7 * 86400               # max_age_days = 7
        assert sp.dead_max_rows == 10_000            # dead_letter_max = 10,000
        assert sp.health_alerts is True              # drops enqueue a health alert by default
        db = sp._db
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 32
        assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == MiB
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert db.execute("PRAGMA secure_delete").fetchone()[0] == 2   # FAST
    assert spool_mod.TX_MAX_BYTES == 256 * 1024      # "transactions of at most 256 KiB"
    assert spool_mod.RESERVE_BYTES == 2 * MiB         # "<spool>.reserve, 2 MiB"
    assert spool_mod.RESERVE_FRACTION == 4            # "at most a quarter of a small volume"
    assert spool_mod.HELD_MAX_BYTES == 16 * MiB       # "wait in memory (16 MiB ...)"
    assert spool_mod.HEALTH_COALESCE == 60            # "drops within 60 s are merged"
    assert spool_mod.FULL_REMIND_INTERVAL == 300      # "a reminder every 5 minutes at most"
    assert spool_mod.FULL_RETRY_INTERVAL == 0.5       # held alerts: "tried again at most every 0.5 s"
    assert spool_mod.HEAL_RETRY_INTERVAL == 5         # "the heal is tried again every 5 s"
    assert spool_mod.HEAL_WAIT == 10                  # "that thread waits (at most 10 s)"
    assert spool_mod.HEAL_MAX_INTERVAL == 3600        # heals slow down "at most an hour"


@pytest.mark.parametrize("key", ["max_bytes", "max_age", "dead_max_rows"])
@pytest.mark.parametrize("value", [0, -1])
def test_bounds_must_be_positive(tmp_path, key, value):
    with pytest.raises(ValueError, match="must be positive"):
        Spool(tmp_path / "s.db", **{key: value})


def test_the_smallest_positive_bounds_are_accepted(tmp_path):
    with Spool(tmp_path / "s.db", max_bytes=1, max_age=0.5, dead_max_rows=1) as sp:
        assert (sp.max_bytes, sp.max_age, sp.dead_max_rows) == (1, 0.5, 1)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_the_spool_file_and_folder_are_private(tmp_path):
    path = tmp_path / "data" / "s.db"
    with Spool(path) as sp:
        sp.put(alert(1))
        for p in (path, Path(str(path) + "-wal")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_spool_that_cannot_create_its_folder_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="cannot create its folder") as err:
        Spool(blocker / "sub" / "s.db")
    # the system's words for it (a file is in the way), not Python's "[Errno N] ...: 'path'"
    words = {os.strerror(errno.EEXIST), os.strerror(errno.ENOTDIR)}
    prefix = f"spool {blocker / 'sub' / 's.db'}: cannot create its folder: "
    assert str(err.value).startswith(prefix) and str(err.value)[len(prefix):] in words


def test_a_negative_memory_cap_holds_nothing_and_says_0_mib(tmp_path, caplog):
    """``held_max_bytes`` below zero is taken as 0: alerts that cannot be written are not kept in
    memory, and the disk-full message says so."""
    with Spool(tmp_path / "s.db", held_max_bytes=-1) as sp:
        with caplog.at_level(logging.CRITICAL, logger="sensor.spool"):
            sp._enter_full("database or disk is full")     # what a write on a full disk does first
        assert "wait in memory (up to 0 MiB)" in caplog.text
        sp._hold([("x-1", 0.0, 2, b"{}", 0, "alert")])
        assert sp.fault_stats()["held"] == 0 and sp.fault_stats()["held_bytes"] == 0


def test_the_bounds_are_keyword_only(tmp_path):
    """``Spool(path, *, max_bytes=..., ...)``: a number passed by position is refused, never
    taken for a bound; the path may be named."""
    with pytest.raises(TypeError):
        Spool(tmp_path / "a.db", 1000)
    with Spool(path=tmp_path / "b.db", max_bytes=1000) as sp:
        assert sp.max_bytes == 1000


# -- checksums and damaged rows (docs: "Every row carries a CRC-32 of its id and body") --------

def test_row_checksum_is_crc32_of_id_nul_body():
    body = b'{"id":"x-1"}'
    assert row_crc("x-1", body) == zlib.crc32(b"x-1\0" + body)
    assert row_crc("x-1", body) != row_crc("x-2", body)


def test_a_stored_row_carries_its_checksum(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put(alert(3))
        (item,) = sp.fetch(1)
        assert item.crc == row_crc(item.alert_id, item.body)
        assert item.decode() == alert(3)


@pytest.mark.parametrize("row, why", [
    (SpooledAlert(1, "a", 0.0, 0, b'{"id":"a"}', crc=row_crc("a", b'{"id":"b"}')), "checksum mismatch"),
    (SpooledAlert(1, "a", 0.0, 0, b'{"id": "a"', crc=None), "not valid JSON"),
    (SpooledAlert(1, "a", 0.0, 0, b'["a"]', crc=None), "not a JSON object"),
    (SpooledAlert(1, "a", 0.0, 0, b'{"id": "b"}', crc=None), "id does not match"),
    (SpooledAlert(1, "a", 0.0, 0, b'{"x": 1}', crc=None), "id does not match"),
])
def test_a_damaged_row_is_refused_with_the_reason(row, why):
    with pytest.raises(SpoolRowError, match=why):
        row.decode()


def test_a_row_without_a_checksum_still_decodes():
    # spools made before rows had checksums
    assert SpooledAlert(1, "a", 0.0, 0, b'{"id":"a","n":1}', crc=None).decode() == {"id": "a", "n": 1}


def test_lone_surrogates_are_repaired_not_fatal(tmp_path):
    # Windows allows lone UTF-16 surrogates in command lines; JSON cannot carry them
    bad = {"id": "s-\ud800", "event": {"CommandLine": "a\udc00b", "args": ["x\ud83d", ("y",)],
                                       "k\udfff": 1, "pair": "\ud83d\ude00!"}, "n": 5}
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put(bad) is True
        (item,) = sp.fetch(1)
        got = item.decode()
    # each lone surrogate becomes one U+FFFD, as UTF-16 reads it (the outputs' rule, so the
    # SIEM sees the same text whichever path an alert took); a pair held as two halves is
    # joined; the rest is intact
    assert item.alert_id == "s-\ufffd" and got["id"] == item.alert_id
    assert got["event"] == {"CommandLine": "a\ufffdb", "args": ["x\ufffd", ["y"]], "k\ufffd": 1,
                            "pair": "\U0001f600!"}
    assert got["n"] == 5


def test_the_spool_and_the_outputs_repair_text_alike(tmp_path):
    # an alert that went through the spool and one sent straight by an output carry the same text
    from sensor.deliver.http import encode_json
    odd = ["\ud800", "a\udc00\ud800b", "\udfff\ud83d\ude00\ud83d", "x" * 5 + "\ud800" * 3, "plain"]
    for i, text in enumerate(odd):
        a = {"id": f"t-{i}", "event": {"CommandLine": text, text: [text]}}
        with Spool(tmp_path / f"s{i}.db") as sp:
            assert sp.put(a) is True
            (item,) = sp.fetch(1)
            assert item.decode() == msgspec.json.decode(encode_json(a)), text

class _TextRaises:
    def __str__(self):
        raise RuntimeError("no text")


class _ItemsRaise(collections.abc.Mapping):
    """A mapping that cannot be walked (its repr is what JSON's fallback writes)."""
    def __getitem__(self, key):
        raise KeyError(key)

    def __iter__(self):
        raise RuntimeError("no items")

    def __len__(self):
        return 1


def _nested(levels: int):
    top = inner = []
    for _ in range(levels):
        inner.append([])
        inner = inner[0]
    return top


def test_an_alert_json_cannot_hold_is_stored_repaired_and_its_batch_with_it(tmp_path, caplog):
    # docs/delivery.md: one alert's content never costs its batch (a value nested past the
    # encoder's limit raised RecursionError out of put_many: every alert of the batch was lost)
    deep = {"id": "deep", "event": {"CommandLine": "x", "args": _nested(5000)}, "n": 1}
    odd = {"id": "odd", "event": {"CommandLine": "y", "obj": _TextRaises()}}
    unreadable = {"id": "unreadable", "args": _nested(5000), "m": _ItemsRaise()}
    batch = [alert(0), deep, alert(1), odd, unreadable, alert(2)]
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put_many(batch) == 6
        got = {it.alert_id: it.decode() for it in sp.fetch(10)}
    assert [got[a["id"]] for a in (alert(0), alert(1), alert(2))] == [alert(0), alert(1), alert(2)]
    # the deep alert: everything down to the limit kept, the rest one note
    d = got["deep"]
    assert d["id"] == "deep" and d["n"] == 1 and d["event"]["CommandLine"] == "x"
    level, depth = d, 0
    while isinstance(level, (dict, list)):
        level = level["event"] if depth == 0 else level["args"] if depth == 1 else level[0]
        depth += 1
    # docs/delivery.md: "nesting past 64 levels replaced by a note"
    assert level == "(nested deeper than 64 levels: left out)" and depth == 64
    # a value whose text raises: the rest of the alert kept, the value a note
    assert got["odd"] == {"id": "odd", "event": {"CommandLine": "y", "obj": "(cannot be written: RuntimeError)"}}
    # one that cannot be walked at all: its id and the reason
    assert got["unreadable"]["id"] == "unreadable" and "could not read" in got["unreadable"]["error"]
    assert "alert deep: stored with what JSON cannot hold replaced (RecursionError)" in caplog.text


class _LongText:
    def __str__(self):
        return "".join(chr(ord("a") + i % 26) for i in range(5000))


def test_a_value_stored_as_its_text_is_cut_to_4096_characters(tmp_path):
    # _storable: a value of a type JSON has no place for, in an alert that must be repaired, is
    # stored as its text, at most 4,096 characters (its beginning)
    text = str(_LongText())
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put({"id": "long", "args": _nested(5000), "obj": _LongText()}) is True
        got = sp.fetch(1)[0].decode()
    assert got["obj"] == text[:4096]


class _OutOfMemory:
    """A value whose text cannot be made: the process is short of memory (``times`` times)."""
    def __init__(self, times: int = 1_000_000):
        self.times = times

    def __str__(self):
        if self.times > 0:
            self.times -= 1
            raise MemoryError
        return "fine"


@pytest.mark.parametrize("make", [
    # short of memory while the alert is repaired (its first encoding failed on the nesting)
    lambda: {"id": "oom", "args": _nested(5000), "obj": _OutOfMemory()},
    # short of memory at the first encoding only: a repair must not be tried in its place
    lambda: {"id": "oom", "obj": _OutOfMemory(times=1)},
], ids=["while-repairing", "at-first-encoding"])
def test_memory_error_while_encoding_is_not_the_alerts_fault(tmp_path, make):
    # docs/delivery.md: MemoryError is not the alert's fault: put_many raises it and stores
    # nothing of that call (never a repaired or id-only row in the alert's place)
    with Spool(tmp_path / "s.db") as sp:
        with pytest.raises(MemoryError):
            sp.put_many([alert(0), make(), alert(1)])
        assert sp.fetch(10) == []
        assert sp.stats()["written"] == 0
        assert sp.put_many([alert(0), alert(1)]) == 2   # and the spool goes on
        assert [it.alert_id for it in sp.fetch(10)] == [alert(0)["id"], alert(1)["id"]]


def test_a_lone_surrogate_is_repaired_without_a_warning(tmp_path, caplog):
    # a lone surrogate is the documented, ordinary repair: no log line per alert (a command line
    # chosen to hold one must not flood the log)
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put_many([{"id": f"s-{i}", "CommandLine": "a\ud800"} for i in range(20)]) == 20
    assert "JSON cannot hold" not in caplog.text


def test_values_json_has_no_type_for_are_stored_as_text(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put({"id": "p-1", "path": Path("/x/y")}) is True
        assert sp.fetch(1)[0].decode()["path"] == "/x/y"


# -- the error classes (docs: "Every spool call raises the spool's own ...") -------------------

def _err(code: int | None, text: str = "boom") -> sqlite3.Error:
    exc = sqlite3.OperationalError(text)
    if code is not None:
        exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize("code, kind", [
    (13, SpoolFull),            # SQLITE_FULL
    (13 | (1 << 8), SpoolFull),  # an extended FULL code: the primary code is the low byte
    (11, SpoolDamaged),         # SQLITE_CORRUPT
    (11 | (1 << 8), SpoolDamaged),
    (26, SpoolDamaged),         # SQLITE_NOTADB
    (522, SpoolDamaged),        # SQLITE_IOERR_SHORT_READ
    (10, SpoolError),           # SQLITE_IOERR
    (12, SpoolError), (14, SpoolError), (25, SpoolError), (27, SpoolError), (266, SpoolError),
    (5, SpoolError),            # SQLITE_BUSY
])
def test_sqlite_result_codes_map_to_the_spools_errors(code, kind):
    assert spool_mod._classify(_err(code)) is kind


@pytest.mark.parametrize("text, kind", [
    ("database or disk is full", SpoolFull),
    ("database disk image is malformed", SpoolDamaged),
    ("file is not a database", SpoolDamaged),
    ("Could not decode to UTF-8 column 'x'", SpoolDamaged),
    ("database is locked", SpoolError),
])
def test_errors_without_a_result_code_are_classified_by_their_text(text, kind):
    assert spool_mod._classify(_err(None, text)) is kind


def test_the_error_classes_are_spool_errors():
    assert issubclass(SpoolFull, SpoolError) and issubclass(SpoolDamaged, SpoolError)
    assert issubclass(SpoolRowError, ValueError)


def test_a_file_that_is_not_a_database_is_refused_as_damaged(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 300)
    with pytest.raises(SpoolDamaged, match="salvages it|recovers its rows"):
        Spool(path)        # not the owner: it never moves a file aside
    assert path.read_bytes().startswith(b"this is not")


def test_a_foreign_schema_is_treated_like_damage(tmp_path):
    path = tmp_path / "s.db"
    _edit(path, "CREATE VIEW alerts AS SELECT 1 AS id")
    with pytest.raises(SpoolDamaged):
        Spool(path)
    with Spool(path, owner=True) as sp:   # the owner moves it aside and starts afresh
        assert sp.salvage is not None and sp.salvage["recovered"] == 0
        assert sp.put(alert(1)) is True
    assert list(tmp_path.glob("s.db.damaged-*"))


def test_other_open_errors_are_not_taken_for_damage(tmp_path):
    # a folder where the database should be: an error, not a salvage
    path = tmp_path / "s.db"
    path.mkdir()
    with pytest.raises(SpoolError) as info:
        Spool(path, owner=True)
    assert not isinstance(info.value, SpoolDamaged)
    assert path.is_dir() and not list(tmp_path.glob("s.db.damaged-*"))


# -- chunking (docs: "new alerts are committed in transactions of at most 256 KiB") ------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=30), st.integers(1, 60))
@example([10, 10, 10], 20)
@example([30], 20)
@example([5, 30, 5], 20)
@example([20, 0, 0, 1], 20)
def test_byte_chunks_are_consecutive_bounded_and_greedy(sizes, limit):
    rows = [(f"id{i}", 0.0, s, b"", 0, "alert") for i, s in enumerate(sizes)]
    chunks = list(spool_mod._byte_chunks(rows, limit))
    assert [r for c in chunks for r in c] == rows                 # nothing lost, in order
    for k, c in enumerate(chunks):
        assert c, "no empty transaction"
        total = sum(r[2] for r in c)
        assert total <= limit or len(c) == 1                     # a lone big row still goes in
        if k + 1 < len(chunks):                                   # greedy: the next row did not fit
            assert total + chunks[k + 1][0][2] > limit


@given(st.integers(0, 1600), st.integers(1, 600))
@example(500, 500)
@example(1000, 500)
@example(499, 500)
@example(1, 1)
def test_chunks_cover_the_sequence_in_order(n, size):
    seq = list(range(n))
    chunks = list(spool_mod._chunks(seq, size))
    assert [x for c in chunks for x in c] == seq
    assert all(0 < len(c) <= size for c in chunks)
    assert all(len(c) == size for c in chunks[:-1])


def test_sql_chunks_default_to_500_parameters():
    assert [len(c) for c in spool_mod._chunks(list(range(1001)))] == [500, 500, 1]


def test_a_large_batch_is_committed_in_several_transactions(tmp_path):
    # 600 KiB of alerts: at least three transactions of at most 256 KiB; all rows arrive
    big = [alert(i, pad=20_000) for i in range(30)]
    with Spool(tmp_path / "s.db") as sp:
        commits = []
        sp._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        assert sp.put_many(big) == 30
        sp._db.set_trace_callback(None)
        assert len(commits) == 3
        assert sp.ids() == [a["id"] for a in big]
        assert sp.stats()["bytes"] == sum(size_of(a) for a in big)


# -- the caps and their edges (docs: "[spool]", "Cap") -----------------------------------------

def test_an_alert_exactly_max_age_old_is_kept_an_older_one_dropped(tmp_path):
    clock = Clock()
    with Spool(tmp_path / "s.db", max_age=100, clock=clock, health_alerts=False) as sp:
        sp.put(alert(1))
        clock.t += 1
        sp.put(alert(2))
        clock.t += 99            # alert 1 is 100 s old: not older than max_age
        assert sp.enforce() == 0
        assert sp.ids() == ["a-000001", "a-000002"]
        clock.t += 0.5           # now it is
        assert sp.enforce() == 1
        assert sp.ids() == ["a-000002"]
        st_ = sp.stats()
        assert st_["expired"] == 1 and st_["dropped"] == 1 and st_["depth"] == 1
        assert st_["bytes"] == size_of(alert(2))


def test_expiry_goes_by_time_even_after_a_clock_step(tmp_path):
    # the clock stepped back between two alerts: the later row is the older one by time
    clock = Clock()
    with Spool(tmp_path / "s.db", max_age=100, clock=clock, health_alerts=False) as sp:
        sp.put(alert(1))
        clock.t -= 1000
        sp.put(alert(2))
        clock.t += 1100
        sp.put(alert(3))
        clock.t += 50             # alert 1 is 150 s old, alert 2 1150 s, alert 3 50 s
        assert sp.enforce() == 2
        assert sp.ids() == ["a-000003"]


def test_expiry_says_so_in_a_health_alert_with_the_count(tmp_path):
    clock = Clock()
    seen = []
    with Spool(tmp_path / "s.db", max_age=10, clock=clock, on_health=seen.append) as sp:
        sp.put_many([alert(i) for i in range(3)])
        clock.t += 11
        assert sp.enforce() == 3
        (health,) = [it.decode() for it in sp.fetch(10)]
        assert health["type"] == "health"
        assert health["health"]["event"] == "spool_expired"
        assert health["health"]["dropped"] == 3 and health["health"]["max_age_s"] == 10
        assert "older than max_age" in health["health"]["message"]
        assert [e["event"] for e in seen] == ["spool_expired"]
        assert sp.stats()["bytes"] == len(sp.fetch(1)[0].body)


def test_exactly_max_bytes_is_not_over_the_cap(tmp_path):
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db", max_bytes=3 * one, health_alerts=False) as sp:
        sp.put_many([alert(i) for i in range(3)])
        assert sp.stats()["dropped"] == 0 and sp.depth() == 3
        sp.put(alert(3))
        assert sp.ids() == ["a-000001", "a-000002", "a-000003"]
        assert sp.stats()["dropped"] == 1


def test_one_byte_over_the_cap_drops_the_oldest(tmp_path):
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db", max_bytes=3 * one - 1, health_alerts=False) as sp:
        sp.put_many([alert(i) for i in range(3)])
        assert sp.ids() == ["a-000001", "a-000002"] and sp.stats()["dropped"] == 1


def test_the_overflow_drops_just_enough_of_the_oldest(tmp_path):
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db", max_bytes=10 * one, health_alerts=False) as sp:
        sp.put_many([alert(i) for i in range(10)])
        sp.put_many([alert(i) for i in range(10, 13)])
        assert sp.ids() == [f"a-{i:06d}" for i in range(3, 13)]
        st_ = sp.stats()
        assert st_["dropped"] == 3 and st_["bytes"] == 10 * one
        assert st_["dropped_disk_full"] == 0 and st_["expired"] == 0
        (event,) = sp.health_events()
        assert event["kind"] == "spool_overflow" and event["count"] == 3
        assert event["detail"]["max_bytes"] == 10 * one and event["detail"]["dropped"] == 3


def test_an_overflow_larger_than_one_select_batch_drops_them_all(tmp_path):
    # more than 512 victims (the batch the drop reads at a time)
    with Spool(tmp_path / "s.db", health_alerts=False) as sp:
        sp.put_many([alert(i) for i in range(1200)])
        one = size_of(alert(0))
        sp.max_bytes = 100 * one
        assert sp.enforce() == 1100
        assert sp.ids() == [f"a-{i:06d}" for i in range(1100, 1200)]
        st_ = sp.stats()
        assert st_["bytes"] == 100 * one and st_["dropped"] == 1100


def test_the_cap_never_drops_health_alerts(tmp_path):
    one = size_of(alert(0, pad=300))
    with Spool(tmp_path / "s.db", max_bytes=4 * one) as sp:
        for i in range(12):
            sp.put(alert(i, pad=300))
        kinds = dict(sp._db.execute("SELECT alert_uuid, kind FROM alerts").fetchall())
        health = [k for k, v in kinds.items() if v == "health"]
        assert len(health) == 1                   # one overflow health alert, never dropped
        assert sp.stats()["bytes"] <= sp.max_bytes


def test_rows_delivered_but_unconfirmed_make_room_first(tmp_path):
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db", max_bytes=6 * one, health_alerts=False) as sp:
        sp.put_many([alert(i) for i in range(5)])
        rows = {it.alert_id: it.rowid for it in sp.fetch(5)}
        sp.delivery_state = lambda: [rows["a-000003"]]     # delivered, not yet confirmed on disk
        sp.put(alert(5))                                    # under the cap: nothing is touched
        assert sp.depth() == 6 and rows["a-000003"] in [it.rowid for it in sp.fetch(6)]
        sp.put(alert(6))
        # the delivered one went (not a loss); no undelivered alert was dropped
        assert sp.ids() == ["a-000000", "a-000001", "a-000002", "a-000004", "a-000005", "a-000006"]
        st_ = sp.stats()
        assert st_["dropped"] == 0 and st_["bytes"] == 6 * one and st_["depth"] == 6
        assert sp._counter("rows") == 6


def test_a_broken_delivery_hook_does_not_fail_the_write(tmp_path, caplog):
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db", max_bytes=2 * one, health_alerts=False) as sp:
        sp.delivery_state = lambda: 1 / 0
        with caplog.at_level(logging.ERROR, logger="sensor.spool"):
            sp.put_many([alert(i) for i in range(3)])
        assert sp.ids() == ["a-000001", "a-000002"]
        assert "delivery state hook failed" in caplog.text


def test_drops_within_60_s_update_one_event_and_its_pending_health_alert(tmp_path, caplog):
    clock = Clock()
    one = size_of(alert(0, pad=400))
    seen = []
    with Spool(tmp_path / "s.db", max_bytes=3 * one, clock=clock, on_health=seen.append) as sp:
        with caplog.at_level(logging.WARNING, logger="sensor.spool"):
            for i in range(6):
                sp.put(alert(i, pad=400))
                clock.t += 10
        events = sp.health_events()
        assert len(events) == 1 and events[0]["kind"] == "spool_overflow"
        dropped = sp.stats()["dropped"]
        assert dropped >= 3 and events[0]["count"] == dropped
        assert events[0]["last"] > events[0]["first"]
        health = [it.decode() for it in sp.fetch(100) if it.alert_id.count("-") > 2]
        assert len(health) == 1
        h = health[0]["health"]
        assert h["dropped"] == dropped and h["dropped_total"] == dropped
        assert f"dropped the {dropped} oldest" in h["message"]
        # the row's size, bytes counter and checksum follow the rewritten body
        (item,) = [it for it in sp.fetch(100) if it.alert_id == health[0]["id"]]
        assert item.crc == row_crc(item.alert_id, item.body)
        total = sp._db.execute("SELECT SUM(size), SUM(length(body)) FROM alerts").fetchone()
        assert sp.stats()["bytes"] == total[0] == total[1]
        # one callback and one log line for the episode, not one per drop
        assert [e["event"] for e in seen] == ["spool_overflow"]
        assert caplog.text.count("dropped the") == 1
        clock.t += 61      # a new episode
        sp.put(alert(99, pad=400))
        assert len(sp.health_events()) == 2


def test_an_event_exactly_60_s_after_the_first_starts_a_new_one(tmp_path):
    clock = Clock()
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db", max_bytes=one, clock=clock, health_alerts=False) as sp:
        sp.put(alert(0))
        sp.put(alert(1))
        clock.t += 59.5
        sp.put(alert(2))
        assert len(sp.health_events()) == 1
        clock.t += 0.5     # 60 s after the first drop: "within 60 s" is over
        sp.put(alert(3))
        assert [e["count"] for e in sp.health_events()] == [1, 2]


def test_health_events_are_bounded(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(spool_mod, "HEALTH_MAX_ROWS", 5)
    with Spool(tmp_path / "s.db", clock=clock, health_alerts=False) as sp:
        for i in range(8):
            with sp._tx():
                sp._insert_event("spool_overflow", f"m{i}", {"n": i}, clock())
        events = sp.health_events(limit=100)
        assert [e["detail"]["n"] for e in events] == [7, 6, 5, 4, 3]
        assert len(sp.health_events(limit=2)) == 2


def test_the_health_table_keeps_a_thousand_events():
    assert spool_mod.HEALTH_MAX_ROWS == 1000


# -- reading, confirming, dead letters ----------------------------------------------------------

def test_fetch_passes_over_skipped_rows_and_still_fills_the_batch(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(10)])
        rows = [it.rowid for it in sp.fetch(10)]
        got = sp.fetch(3, skip=set(rows[:5]))
        assert [it.alert_id for it in got] == ["a-000005", "a-000006", "a-000007"]
        got = sp.fetch(3, skip={rows[1], rows[3]})
        assert [it.alert_id for it in got] == ["a-000000", "a-000002", "a-000004"]
        assert sp.fetch(5, skip=set(rows)) == []
        assert [it.alert_id for it in sp.fetch(100, after=rows[7])] == ["a-000008", "a-000009"]


def test_fetch_says_whether_rows_may_be_left(tmp_path):
    # `more`: rows may be left when the answer stopped at the limit or the byte budget, or passed
    # over rows in `skip` (settled or set aside: they may be due after the next send); nothing
    # when it holds every row there was
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(4)])
        rows = [it.rowid for it in sp.fetch(10)]
        for kw, n, left in [({}, 4, []), ({"limit": 4}, 4, [True]), ({"max_bytes": 2 * one}, 2, [True]),
                            ({"skip": {rows[1]}}, 3, [True]), ({"skip": {rows[3]}}, 3, [True]),
                            ({"skip": {rows[0], rows[2]}}, 2, [True])]:
            more: list = []
            args = {"limit": 10, **kw}
            assert len(sp.fetch(args.pop("limit"), more=more, **args)) == n, kw
            assert more == left, kw


def test_fetch_byte_budget_counts_every_body(tmp_path):
    one = size_of(alert(0, pad=100))
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i, pad=100) for i in range(6)])
        assert len(sp.fetch(10, max_bytes=3 * one)) == 3
        assert len(sp.fetch(10, max_bytes=3 * one - 1)) == 2
        assert len(sp.fetch(10, max_bytes=None)) == 6
        assert len(sp.fetch(4)) == 4


def test_fetch_excludes_several_ranges(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(10)])
        r = [it.rowid for it in sp.fetch(10)]
        got = sp.fetch(10, exclude=[(r[0], r[2]), (r[5], r[6])])
        assert [it.alert_id for it in got] == ["a-000003", "a-000004", "a-000007", "a-000008", "a-000009"]


def test_empty_confirmations_are_no_ops(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put(alert(1))
        mark = sp.write_mark
        assert sp.ack([]) == 0
        sp.mark_failed([], "x")
        assert sp.dead_letter([]) == 0
        assert sp.requeue_dead([]) == 0
        assert sp.put_many([]) == 0
        assert sp.depth() == 1 and sp.write_mark == mark


def test_ack_of_rows_already_gone_counts_only_what_went(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(3)])
        rows = [it.rowid for it in sp.fetch(3)]
        assert sp.ack(rows[:2]) == 2
        assert sp.ack(rows) == 1
        assert sp.ack(rows) == 0
        assert sp.stats()["bytes"] == 0


def test_mark_failed_counts_attempts_and_keeps_the_error_short(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(2)])
        rows = [it.rowid for it in sp.fetch(2)]
        sp.mark_failed(rows[:1], "E" * 2000)
        sp.mark_failed(rows[:1], None)
        got = sp._db.execute("SELECT attempts, last_error FROM alerts ORDER BY id").fetchall()
        assert got == [(2, ""), (0, None)]
        sp.mark_failed(rows[1:], "E" * 2000)
        assert sp._db.execute("SELECT last_error FROM alerts WHERE id=?", (rows[1],)).fetchone()[0] == "E" * 500
        assert [it.attempts for it in sp.fetch(2)] == [2, 1]


def test_a_dead_letter_records_the_attempt_status_reason_and_keeps_the_row(tmp_path, caplog):
    clock = Clock()
    with Spool(tmp_path / "s.db", clock=clock) as sp:
        sp.put_many([alert(i) for i in range(3)])
        rows = [it.rowid for it in sp.fetch(3)]
        sp.mark_failed(rows[:1], "503")
        clock.t += 5
        with caplog.at_level(logging.ERROR, logger="sensor.spool"):
            assert sp.dead_letter([(rows[0], "R" * 3000, 400), (rows[0], "again", 400),
                                   (999_999, "no such row", None)]) == 1
        assert "a-000000 moved to dead-letter (HTTP 400)" in caplog.text
        (d,) = sp.dead_letters()
        assert d["id"] == "a-000000" and d["status"] == 400 and d["attempts"] == 2
        assert d["reason"] == "R" * 1000 and d["moved"] == clock.t and d["alert"] == alert(0)
        st_ = sp.stats()
        assert st_["dead_lettered"] == 1 and st_["depth"] == 2
        assert st_["bytes"] == size_of(alert(1)) + size_of(alert(2))
        # a requeued alert keeps its checksum and goes back to the queue
        assert sp.requeue_dead() == 1
        assert sp.dead_letters() == [] and sp.depth() == 3
        (item,) = [it for it in sp.fetch(3) if it.alert_id == "a-000000"]
        assert item.decode() == alert(0) and item.crc == row_crc("a-000000", item.body)
        assert sp.stats()["bytes"] == sum(size_of(alert(i)) for i in range(3))


def test_dead_letters_newest_first_limited_and_unreadable_bodies_shown_as_none(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(4)])
        sp.dead_letter([(it.rowid, "x", 400) for it in sp.fetch(4)])
        sp._db.execute("UPDATE dead_letter SET body=x'7b7b' WHERE alert_uuid='a-000003'")
        got = sp.dead_letters(limit=2)
        assert [d["id"] for d in got] == ["a-000003", "a-000002"]
        assert got[0]["alert"] is None and got[1]["alert"] == alert(2)


def test_requeue_of_an_alert_still_queued_is_not_a_duplicate_row(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(2)])
        (first, _) = sp.fetch(2)
        sp.dead_letter([(first.rowid, "x", 400)])
        sp.put(alert(0))      # the same alert id spooled again meanwhile
        assert sp.requeue_dead() == 0
        assert sorted(sp.ids()) == ["a-000000", "a-000001"] and sp.dead_letters() == []
        assert sp.stats()["bytes"] == size_of(alert(0)) + size_of(alert(1))


def test_requeue_applies_the_caps(tmp_path):
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db", max_bytes=2 * one, health_alerts=False) as sp:
        sp.put_many([alert(i) for i in range(2)])
        sp.dead_letter([(it.rowid, "x", 400) for it in sp.fetch(2)])
        sp.put_many([alert(i) for i in range(2, 4)])
        assert sp.requeue_dead() == 2
        assert sp.stats()["bytes"] <= 2 * one and sp.depth() == 2


def test_the_dead_letter_cap_drops_the_oldest_and_counts(tmp_path):
    with Spool(tmp_path / "s.db", dead_max_rows=3) as sp:
        sp.put_many([alert(i) for i in range(5)])
        items = sp.fetch(5)
        sp.dead_letter([(it.rowid, "x", 400) for it in items[:3]])
        assert sp.stats()["dead_dropped"] == 0 and sp.stats()["dead_letter_depth"] == 3
        sp.dead_letter([(it.rowid, "x", 400) for it in items[3:]])
        assert [d["id"] for d in sp.dead_letters()] == ["a-000004", "a-000003", "a-000002"]
        assert sp.stats()["dead_dropped"] == 2


# -- observing ---------------------------------------------------------------------------------

def test_observers_on_an_empty_and_a_filled_spool(tmp_path):
    clock = Clock()
    with Spool(tmp_path / "s.db", clock=clock) as sp:
        assert sp.oldest_created() is None and sp.depth() == 0 and sp.ids() == []
        quiet = {"disk_full": False, "disk_full_since": None, "disk_full_episodes": 0,
                 "disk_full_error": None, "held": 0, "held_bytes": 0, "storing": 0,
                 "held_dropped": 0, "reserve_bytes": 0, "salvaged_at_start": None,
                 "damaged": False, "wal_lost_at_start": False, "heals": 0, "last_heal": None}
        assert sp.fault_stats() == quiet       # a fresh spool: nothing held, nothing being stored
        fresh = sp.stats()
        assert fresh["dropped"] == fresh["dropped_disk_full"] == 0   # nor dropped
        assert sp.disk_full is False and sp.flush_held() == 0
        sp.put(alert(1))
        clock.t += 3
        sp.put(alert(2))
        assert sp.oldest_created() == 2_000_000.0
        assert sp.ids() == ["a-000001", "a-000002"] and sp.depth() == 2
        assert sp.fault_stats() == quiet
        st_ = sp.stats()
        for key in ("dropped", "expired", "dead_lettered", "dead_dropped", "written", "duplicates",
                    "dropped_disk_full", "salvaged", "damaged_rows"):
            assert key in st_, key
        assert "rows" not in st_ and st_["written"] == 2 and st_["max_age_s"] == sp.max_age
        assert st_["max_bytes"] == sp.max_bytes and st_["dead_letter_depth"] == 0


def test_writes_wake_a_waiting_reader_and_wake_does_too(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        mark = sp.write_mark
        got = []
        t = threading.Thread(target=lambda: got.append(sp.wait_for_data(mark, 60.0)))
        t.start()
        sp.put(alert(1))
        t.join(60)
        assert got and got[0] > mark
        mark = sp.write_mark
        assert sp.wait_for_data(mark - 1, 60.0) == mark     # already past: no wait
        t = threading.Thread(target=lambda: got.append(sp.wait_for_data(mark, 60.0)))
        t.start()
        sp.wake()
        t.join(60)
        assert not t.is_alive() and got[-1] == mark + 1


def test_a_duplicate_still_wakes_the_forwarder_but_counts_as_not_new(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put_many([alert(1), alert(2)]) == 2
        assert sp.put_many([alert(2), alert(3)]) == 1
        st_ = sp.stats()
        assert st_["written"] == 3 and st_["duplicates"] == 1
        assert st_["bytes"] == sum(size_of(alert(i)) for i in (1, 2, 3))


def test_stats_never_raise_on_an_unreadable_file(tmp_path):
    path = tmp_path / "s.db"
    sp = Spool(path)
    sp.put(alert(1))
    sp._db.execute("DROP TABLE meta")
    out = sp.stats()
    assert "error" in out and out["max_bytes"] == sp.max_bytes and out["max_age_s"] == sp.max_age
    assert out["disk_full"] is False
    sp.close()


# -- opening, closing, the clean-stop marker (docs: "-wal/-shm deleted after a SIGKILL") -------

def test_close_is_idempotent_and_a_closed_spool_refuses_work(tmp_path):
    sp = Spool(tmp_path / "s.db")
    sp.put(alert(1))
    sp.close()
    sp.close()
    with pytest.raises(SpoolError, match="closed"):
        sp.put(alert(2))


def test_close_checkpoints_the_wal_into_the_file(tmp_path):
    path = tmp_path / "s.db"
    sp = Spool(path)
    sp.put_many([alert(i) for i in range(5)])
    other = []
    t = threading.Thread(target=lambda: other.append(sp.depth()))   # a second connection
    t.start()
    t.join(60)
    sp.close()
    # every commit is in the main file now: without the -wal the rows are still there
    wal = Path(str(path) + "-wal")
    if wal.exists():
        wal.unlink()
    assert raw(path).execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 5


def test_the_counters_are_rederived_at_open(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path) as sp:
        sp.put_many([alert(i) for i in range(4)])
    _edit(path, "UPDATE meta SET value=12345 WHERE key IN ('bytes', 'rows')")
    with Spool(path) as sp:
        assert sp.stats()["bytes"] == sum(size_of(alert(i)) for i in range(4))
        assert sp._counter("rows") == 4


def test_an_old_spool_without_checksums_gets_the_column(tmp_path):
    path = tmp_path / "s.db"
    con = raw(path)
    con.executescript(spool_mod._SCHEMA.replace(",\n    crc INTEGER\n", "\n"))
    con.execute("INSERT INTO alerts(alert_uuid, created, size, body) VALUES ('o-1', 1.0, 11, ?)",
                (b'{"id":"o-1"}',))
    con.commit()
    con.close()
    with Spool(path) as sp:
        for table in ("alerts", "dead_letter"):
            cols = {r[1] for r in sp._db.execute(f"PRAGMA table_info({table})")}
            assert "crc" in cols
        (item,) = sp.fetch(1)
        assert item.crc is None and item.decode() == {"id": "o-1"}


def test_a_clean_stop_is_not_taken_for_a_lost_wal(tmp_path, caplog):
    path = tmp_path / "s.db"
    with Spool(path, owner=True) as sp:
        sp.put(alert(1))
    assert raw(path).execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()[0] == 1
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        with Spool(path, owner=True) as sp:
            assert sp.wal_lost is None and sp.health_events() == []
            # while running, the marker says "not closed cleanly", already in the main file
            assert raw(path).execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()[0] == 0
    assert "write-ahead log" not in caplog.text


def test_a_lost_wal_after_an_unclean_stop_is_reported_with_the_bound(tmp_path, caplog):
    path = tmp_path / "s.db"
    sp = Spool(path, owner=True)
    sp.put(alert(1))
    sp._close_connections()      # an unclean stop: the marker stays at 0
    wal = Path(str(path) + "-wal")
    if wal.exists():
        wal.unlink()
    seen = []
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        with Spool(path, owner=True, on_health=seen.append) as sp2:
            page = sp2._db.execute("PRAGMA page_size").fetchone()[0]
            assert sp2.wal_lost == {"at_risk_bytes": 32 * page}
            assert sp2.fault_stats()["wal_lost_at_start"] is True
            (event,) = sp2.health_events()
            assert event["kind"] == "spool_wal_missing" and event["count"] == 1
            assert [e["event"] for e in seen] == ["spool_wal_missing"]
            health = [it.decode() for it in sp2.fetch(10) if it.alert_id != "a-000001"]
            assert health[0]["health"]["event"] == "spool_wal_missing"
    assert f"at most about {32 * page // 1024} KiB" in caplog.text


def test_a_reader_that_is_not_the_owner_never_marks_or_salvages(tmp_path):
    path = tmp_path / "s.db"
    sp = Spool(path, owner=True, reserve_bytes=0)
    sp.put(alert(1))
    sp._close_connections()
    Path(str(path) + "-wal").unlink(missing_ok=True)
    with Spool(path) as reader:      # `etw-sensor spool` looking in
        assert reader.wal_lost is None and reader.health_events() == []
        assert reader.reserve_bytes == 0
    assert not Path(str(path) + ".reserve").exists()


def test_the_owner_sets_the_reserve_aside(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=100_000) as sp:
        reserve = Path(str(path) + ".reserve")
        assert reserve.stat().st_size == 100_000 and sp.reserve_bytes == 100_000
        assert sp.fault_stats()["reserve_bytes"] == 100_000
    with Spool(path, owner=True, reserve_bytes=0) as sp:   # no reserve wanted: none written
        assert sp.reserve_bytes == 0


def test_a_partial_reserve_is_topped_up_to_the_target(tmp_path):
    path = tmp_path / "s.db"
    Path(str(path) + ".reserve").write_bytes(b"\0" * 1000)   # half written before a crash
    with Spool(path, owner=True, reserve_bytes=100_000) as sp:
        assert Path(str(path) + ".reserve").stat().st_size == 100_000 == sp.reserve_bytes


# -- counters, callbacks, markers, salvage bounds ------------------------------------------------

def test_the_row_counter_follows_every_change(tmp_path):
    # "rows" is what a salvage counts its losses against (docs: "L lost")
    one = size_of(alert(0))
    with Spool(tmp_path / "s.db", max_bytes=5 * one, health_alerts=False) as sp:
        def rows() -> int:
            return sp._counter("rows")
        sp.put_many([alert(i) for i in range(8)])          # three dropped by the cap
        assert rows() == sp.depth() == 5
        items = sp.fetch(5)
        sp.dead_letter([(items[0].rowid, "x", 400), (items[1].rowid, "x", 400)])
        assert rows() == sp.depth() == 3
        assert sp.requeue_dead() == 2
        assert rows() == sp.depth() == 5
        sp.ack([it.rowid for it in sp.fetch(2)])
        assert rows() == sp.depth() == 3


def test_a_broken_health_callback_does_not_fail_the_write(tmp_path, caplog):
    one = size_of(alert(0))

    def broken(event):
        raise RuntimeError("callback bug")

    with Spool(tmp_path / "s.db", max_bytes=2 * one, health_alerts=False, on_health=broken) as sp:
        with caplog.at_level(logging.ERROR, logger="sensor.spool"):
            assert sp.put_many([alert(i) for i in range(3)]) == 3
        assert sp.ids() == ["a-000001", "a-000002"]
        assert "health callback failed" in caplog.text


def test_the_damage_marker_is_bounded(tmp_path):
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=0) as sp:
        sp._opening = False
        sp._mark_damaged("E" * 5000)
        text = Path(str(tmp_path / "s.db") + ".damaged").read_text()
        assert text == "E" * 500 + "\n"
        assert sp.fault_stats()["damaged"] is True


def test_a_salvage_bounds_the_reasons_a_hostile_file_holds(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put_many([alert(i) for i in range(2)])
        sp.dead_letter([(sp.fetch(1)[0].rowid, "x", 400)])
        sp._db.execute("UPDATE dead_letter SET reason=?", ("R" * 5000,))
    con = raw(path)                 # rows the old file's counter never saw: it claims fewer
    for i in (5, 6, 7):
        body = msgspec.json.encode(alert(i))
        con.execute("INSERT INTO alerts(alert_uuid, created, size, body, crc, kind) VALUES (?,?,?,?,?,?)",
                    (alert(i)["id"], 1.0, len(body), body, row_crc(alert(i)["id"], body), "alert"))
    con.commit()
    con.close()
    # the marker a running sensor leaves when SQLite reported damage: the next start salvages
    Path(str(path) + ".damaged").write_text("simulated\n")
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        assert sp.salvage is not None and sp.salvage["recovered"] == 4
        assert sp.salvage["recovered_dead_letters"] == 1 and sp.salvage["lost"] == 0   # never negative
        (d,) = sp.dead_letters()
        assert d["id"] == "a-000000" and d["reason"] == "R" * 1000 and d["alert"] == alert(0)
        assert [i for i in sp.ids() if i.startswith("a-")] == ["a-000001", "a-000005", "a-000006", "a-000007"]
        st_ = sp.stats()
        assert st_["salvaged"] == 4 and st_["dead_lettered"] == 1   # the old file's history kept
        assert st_["bytes"] == sp._db.execute("SELECT SUM(size) FROM alerts").fetchone()[0]
        assert sp._counter("rows") == sp.depth() == 5              # the alerts and the health alert
        (event,) = [e for e in sp.health_events() if e["kind"] == "spool_salvaged"]
        assert event["count"] == 1
    assert not Path(str(path) + ".damaged").exists()


def test_a_foreign_meta_table_is_treated_like_damage(tmp_path):
    # a value of the wrong type for the table (SQLITE_MISMATCH) at open
    path = tmp_path / "s.db"
    _edit(path, "CREATE TABLE meta (key INTEGER PRIMARY KEY, value INTEGER NOT NULL)")
    with pytest.raises(SpoolDamaged):
        Spool(path)
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        assert sp.salvage is not None and sp.put(alert(1)) is True


# -- a full disk (docs/delivery.md, "Faults") ---------------------------------------------------




def test_the_reserve_is_a_quarter_of_a_small_volume(volume):
    vol = volume("4m")
    with Spool(vol / "s.db", owner=True) as sp:
        total = os.statvfs(vol).f_blocks * os.statvfs(vol).f_frsize
        assert total // 4 < 2 * MiB
        assert sp.reserve_bytes == total // 4 and type(sp.reserve_bytes) is int
        assert (vol / "s.db.reserve").stat().st_size == total // 4


def test_a_full_disk_is_one_episode_with_one_reminder_per_5_minutes_and_an_end(volume, caplog):
    vol = volume("2m")
    clock = Clock()
    events = []
    sp = Spool(vol / "s.db", owner=True, clock=clock, on_health=events.append)
    reserve = sp.reserve_bytes
    assert reserve > 0
    sp.put_many([alert(i, pad=3000) for i in range(20)])
    fillers = [fill(vol)]
    with caplog.at_level(logging.INFO, logger="sensor.spool"):
        n = 20
        while not sp.disk_full:
            sp.put_many([alert(n + k, pad=3000) for k in range(10)])   # never raises
            n += 10
            assert n < 2000, "the disk never filled"
        fillers.append(fill(vol))          # the released reserve goes to the other file too
        assert f"released the {reserve // 1024} KiB reserve" in caplog.text
        for k in range(3):
            sp.put_many([alert(n + k, pad=3000)])
        fault = sp.fault_stats()
        assert fault["disk_full"] and fault["disk_full_episodes"] == 1
        assert fault["disk_full_since"] is not None and fault["disk_full_error"]
        assert caplog.text.count("ALERT SPOOL DISK FULL") == 1
        clock.t += 299
        sp.maintain()
        assert "still full" not in caplog.text
        clock.t += 1                       # 5 minutes: one reminder
        sp.maintain()
        assert caplog.text.count("still full") == 1
        sp.maintain()
        assert caplog.text.count("still full") == 1
        for f in fillers:
            f.unlink()
        clock.t += 10.25
        sp.maintain()
        sp.maintain()
        assert not sp.disk_full and sp.fault_stats()["disk_full_episodes"] == 1
        assert sp.reserve_bytes == reserve          # set aside again
    st_ = sp.stats()
    assert "disk space is back after 310 s" in caplog.text
    ends = [e for e in events if e["event"] == "spool_disk_full" and e.get("state") == "end"]
    assert len(ends) == 1 and ends[0]["seconds"] == 310.2
    health = [it.decode()["health"] for it in sp.fetch(10_000) if not it.alert_id.startswith("a-")]
    assert [h["state"] for h in health if h["event"] == "spool_disk_full"] == ["begin", "end"]
    assert ends[0]["dropped_oldest"] + ends[0]["dropped_held"] == st_["dropped_disk_full"] > 0
    assert ends[0]["dropped_oldest"] >= 0 and ends[0]["dropped_held"] >= 0
    # every alert is accounted for: in the spool, dropped, or still held
    kept = [i for i in sp.ids() if i.startswith("a-")]
    assert len(kept) + st_["dropped_disk_full"] + st_["held"] == n + 3
    sp.close()


def test_a_reader_that_is_not_the_owner_leaves_the_full_state_when_space_returns(volume):
    vol = volume("2m")
    clock = Clock()
    sp = Spool(vol / "s.db", clock=clock)      # not the owner: no reserve
    sp.put_many([alert(i) for i in range(5)])
    pin = _pin_the_wal(vol / "s.db")
    filler = fill(vol)
    sp.put_many([alert(100 + i, pad=4000) for i in range(50)])  # held in memory, not raised
    held = sp.fault_stats()["held"]
    assert sp.disk_full and held > 0
    # a retry that fails for another reason writes nothing and says so
    real = sp._write_rows

    def broken(rows, now, room=0):
        raise SpoolError(f"spool {sp.path}: write failed: simulated I/O error")

    sp._write_rows = broken
    clock.t += 1
    held_bytes = sp.fault_stats()["held_bytes"]
    assert sp.flush_held() == 0 and sp.fault_stats()["held"] == held
    assert sp.fault_stats()["held_bytes"] == held_bytes
    sp._write_rows = real
    sp.put(alert(200, pad=4000))            # still full: held too, and the next try is in 0.5 s
    held = sp.fault_stats()["held"]
    pin.rollback()
    pin.close()
    filler.unlink()
    sp.maintain()          # too soon after the last attempt to write: only the state ends
    assert not sp.disk_full and sp.fault_stats()["held"] == held
    clock.t += 1
    sp.maintain()          # the held alerts go in now
    assert sp.fault_stats()["held"] == 0
    assert {f"a-{100 + i:06d}" for i in range(50)} | {"a-000200"} <= set(sp.ids())
    sp.close()


# -- text SQLite cannot store is not damage -----------------------------------------------------
# A lone UTF-16 surrogate cannot be stored as SQLite text. One in a receiver's error text (the
# reason of a dead letter, the error of a failed attempt) or in an id given to `spool requeue`
# (a POSIX command line with bytes that are not UTF-8) once made the spool report itself damaged:
# the owner wrote its damage marker and the next start moved a healthy spool aside.

def test_a_reason_with_a_lone_surrogate_is_repaired_not_taken_for_damage(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put_many([alert(i) for i in range(2)])
        rows = [it.rowid for it in sp.fetch(2)]
        sp.mark_failed(rows, "HTTP 400: bad \udcff byte")
        assert sp.dead_letter([(rows[0], "mapping error near \ud800", 400)]) == 1
        (d,) = sp.dead_letters()
        assert d["reason"] == "mapping error near \ufffd" and d["alert"] == alert(0)
        last = sp._db.execute("SELECT last_error FROM alerts").fetchone()[0]
        assert last == "HTTP 400: bad \ufffd byte"
        assert sp.requeue_dead(["a-000000\udcff"]) == 0          # no such id: nothing, no error
        assert sp.requeue_dead(["a-000000"]) == 1
        assert sp.fault_stats()["damaged"] is False
    assert not Path(str(path) + ".damaged").exists()
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        assert sp.salvage is None and sorted(sp.ids()) == ["a-000000", "a-000001"]


def test_text_that_cannot_be_stored_is_an_error_of_the_call_not_damage(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        with pytest.raises(SpoolError) as info:
            with sp._guard("write"):
                sp._db.execute("SELECT ?", ("x\ud800",))
        assert not isinstance(info.value, SpoolDamaged) and "cannot be stored" in str(info.value)
        assert sp.fault_stats()["damaged"] is False
    assert not Path(str(path) + ".damaged").exists()


def _refused_after_one_try(sp, item) -> None:
    """A dead letter the full disk refuses raises SpoolFull after one attempt, not a loop of them."""
    tries: list = []
    real = sp._dead_letter

    def counted(items):
        tries.append(1)
        return real(items)

    sp._dead_letter = counted
    with pytest.raises(SpoolFull):
        sp.dead_letter([(item.rowid, "rejected", 400)])
    assert len(tries) == 1


def _lose_the_wal_of_a_64k_page_spool(path) -> None:
    """A spool file with 64 KiB pages, one alert committed to its WAL, and that WAL lost."""
    con = raw(path)
    con.execute("PRAGMA page_size=65536")
    con.execute("CREATE TABLE x (a)")
    con.commit()
    con.close()
    sp = Spool(path, owner=True, reserve_bytes=0)
    sp.put(alert(1))
    sp._close_connections()
    Path(str(path) + "-wal").unlink(missing_ok=True)


def test_a_lost_wal_is_reported_in_the_files_own_page_size(tmp_path, caplog):
    path = tmp_path / "s.db"
    _lose_the_wal_of_a_64k_page_spool(path)
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        with Spool(path, owner=True, reserve_bytes=0) as sp2:
            assert sp2.wal_lost == {"at_risk_bytes": 32 * 65536}
    assert "at most about 2048 KiB" in caplog.text


def test_salvages_in_one_second_keep_every_file_numbered_in_turn(tmp_path):
    # docs/delivery.md, "Faults": the file moved aside is named <spool>.damaged-<UTC time>, with
    # -1, -2, ... appended when that name is taken
    clock = Clock()
    path = tmp_path / "s.db"
    for n in range(3):
        with Spool(path, owner=True, reserve_bytes=0, clock=clock) as sp:
            sp.put(alert(n))
        Path(str(path) + ".damaged").write_text("simulated\n")
        with Spool(path, owner=True, reserve_bytes=0, clock=clock) as sp:
            assert sp.salvage is not None
    stamp = "19700124T033320Z"
    assert sorted(p.name for p in tmp_path.glob("s.db.damaged-*")) == [
        f"s.db.damaged-{stamp}", f"s.db.damaged-{stamp}-1", f"s.db.damaged-{stamp}-2"]


def test_a_marker_that_cannot_be_written_still_says_so(tmp_path, caplog):
    path = tmp_path / "s.db"
    seen = []
    with Spool(path, owner=True, reserve_bytes=0, on_health=seen.append) as sp:
        Path(str(path) + ".damaged").mkdir()          # the marker's name is taken by a folder
        with caplog.at_level(logging.CRITICAL, logger="sensor.spool"):
            sp._mark_damaged("index does not match its table")
        assert sp.fault_stats()["damaged"] is True
        assert "ALERT SPOOL DAMAGED" in caplog.text
        assert [e["event"] for e in seen] == ["spool_damaged"]


def test_a_health_event_that_cannot_be_written_still_reaches_the_callback(tmp_path, caplog):
    seen = []
    with Spool(tmp_path / "s.db", on_health=seen.append) as sp:
        sp._db.execute("DROP TABLE health")
        with caplog.at_level(logging.ERROR, logger="sensor.spool"):
            sp._record_event("spool_salvaged", "m1", {"n": 1})
            sp._record_event("spool_disk_full", "m2", {"n": 2}, callback=False)
        assert [(e["event"], e["message"], e["n"]) for e in seen] == [("spool_salvaged", "m1", 1)]
        assert caplog.text.count("cannot record the health event") == 2
        assert sp.depth() == 0      # the health alert of the failed transaction is not there


def test_confirmations_and_failure_counts_skip_the_fsync_alert_writes_do_not(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sql: list[str] = []
        sp._db.set_trace_callback(sql.append)
        sp.put(alert(1))
        assert "PRAGMA synchronous=NORMAL" not in sql and "COMMIT" in sql
        rows = [it.rowid for it in sp.fetch(1)]
        for call in (lambda: sp.mark_failed(rows, "x"), lambda: sp.ack(rows)):
            sql.clear()
            call()
            assert sql[0] == "PRAGMA synchronous=NORMAL" and sql[-1] == "PRAGMA synchronous=FULL"
        sp._db.set_trace_callback(None)


def _150_alerts_with_acks_refused(sp: Spool, refused: tuple[int, ...]) -> tuple[list, list]:
    """Spool 150 alerts and fetch them; the disk refuses the confirmation transactions whose
    numbers (from 1) are in `refused`. Returns the row ids and the size of every transaction."""
    sp.put_many([alert(i) for i in range(150)])
    rows = [it.rowid for it in sp.fetch(150)]
    real, calls = sp._ack, []

    def refusing(chunk):
        calls.append(len(chunk))
        if len(calls) in refused:
            raise SpoolFull(f"spool {sp.path}: ack failed: database or disk is full")
        return real(chunk)

    sp._ack = refusing
    return rows, calls


def test_a_confirmation_refused_once_is_written_in_small_transactions(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        rows, calls = _150_alerts_with_acks_refused(sp, refused=(1,))
        assert sp.ack(rows) == 150
        assert calls == [150, 64, 64, 22] and sp.depth() == 0
        assert sp.disk_full            # the refusal began the disk-full state


# -- what a salvage takes for an alert or a dead letter (a damaged file is hostile input) --------

_GOOD_ALERT = [None, "u-1", 1.5, 2, 0.0, None, "alert", 10, b'{"id":"u-1"}', 123]
_GOOD_DEAD = [None, "u-1", 1.5, 9.0, 2, 400, "bad", b'{"id":"u-1"}', 123]


def test_salvage_takes_rows_of_the_alert_shape_only():
    ok = spool_mod._alert_values
    assert ok(_GOOD_ALERT) == ("u-1", 1.5, 2, "alert", b'{"id":"u-1"}', 123)
    assert ok(_GOOD_ALERT[:9]) == ("u-1", 1.5, 2, "alert", b'{"id":"u-1"}', None)   # no crc column
    assert ok([None, "u-1", 1, 0, 0, "503", "alert", 1, b"{}", None])[1] == 1.0      # int time, error text
    for i, bad in [(0, 5), (1, 7), (2, "x"), (3, 1.5), (5, 3), (6, 1), (7, "10"), (8, "{}"), (9, "123")]:
        v = list(_GOOD_ALERT)
        v[i] = bad
        assert ok(v) is None, (i, bad)
    assert ok(_GOOD_ALERT[:8]) is None and ok(_GOOD_ALERT + [1]) is None


def test_salvage_takes_rows_of_the_dead_letter_shape_only():
    ok = spool_mod._dead_values
    assert ok(_GOOD_DEAD) == ("u-1", 1.5, 2, 400, "bad", b'{"id":"u-1"}', 123)
    assert ok(_GOOD_DEAD[:8]) == ("u-1", 1.5, 2, 400, "bad", b'{"id":"u-1"}', None)
    assert ok([None, "u-1", 1, 9.0, 2, None, "r", b"{}", None])[3] is None
    for i, bad in [(0, 5), (1, 7), (2, "x"), (4, 1.5), (5, "400"), (6, 3), (7, "{}"), (8, "123")]:
        v = list(_GOOD_DEAD)
        v[i] = bad
        assert ok(v) is None, (i, bad)
    assert ok(_GOOD_DEAD[:7]) is None and ok(_GOOD_DEAD + [1]) is None


def test_a_row_with_columns_of_the_wrong_type_fails_its_checks():
    item = spool_mod._spooled((1, 42, "x", None, "text body", "not a crc"))
    assert (item.alert_id, item.created, item.attempts, item.body) == ("42", 0.0, 0, b"text body")
    assert item.crc == -1                      # never a CRC-32: the row fails its check
    with pytest.raises(SpoolRowError, match="checksum"):
        item.decode()
    assert spool_mod._spooled((1, "a", 2.5, 3, b"{}", None)).crc is None


def _unmovable_damaged_spool(tmp_path: Path) -> tuple[Path, Clock, sqlite3.Connection]:
    """A spool marked damaged whose -wal cannot be moved aside; the caller closes the reader."""
    clock = Clock()
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0, clock=clock) as sp:
        sp.put(alert(1))
    other = raw(path)                       # another reader keeps the -wal in place
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("SELECT COUNT(*) FROM alerts").fetchone()
    Path(str(path) + ".damaged").write_text("simulated\n")
    blocker = tmp_path / "s.db.damaged-19700124T033320Z-wal"
    blocker.mkdir()
    (blocker / "x").write_text("taken")     # the -wal's new name is a folder that is not empty
    return path, clock, other


def test_a_damaged_spool_that_cannot_be_moved_aside_is_an_error_that_says_so(tmp_path):
    path, clock, other = _unmovable_damaged_spool(tmp_path)
    try:
        assert Path(str(path) + "-wal").exists()
        with pytest.raises(SpoolError, match="cannot be moved aside"):
            Spool(path, owner=True, reserve_bytes=0, clock=clock)
    finally:
        other.close()


def test_a_dead_letter_refused_once_is_written_after_making_room(tmp_path):
    with Spool(tmp_path / "s.db") as sp:        # not the owner: no reserve, only the checkpoint
        sp.put_many([alert(i) for i in range(2)])
        rows = [it.rowid for it in sp.fetch(2)]
        real, calls = sp._dead_letter, []

        def refusing(items):
            calls.append(list(items))
            if len(calls) == 1:
                raise SpoolFull(f"spool {sp.path}: dead letter failed: database or disk is full")
            return real(items)

        sp._dead_letter = refusing
        assert sp.dead_letter([(rows[0], "bad", 400)]) == 1
        assert len(calls) == 2 and [d["id"] for d in sp.dead_letters()] == ["a-000000"]


def test_a_reserve_that_cannot_be_written_is_no_reserve_not_an_error(tmp_path):
    path = tmp_path / "s.db"
    os.symlink(tmp_path / "missing" / "reserve", str(path) + ".reserve")   # dangling
    with Spool(path, owner=True, reserve_bytes=100_000) as sp:
        assert sp.reserve_bytes == 0 and sp.put(alert(1)) is True


def test_a_full_spool_whose_folder_was_renamed_stays_full_without_an_error(volume):
    vol = volume("2m")
    sub = vol / "data"
    clock = Clock()
    sp = Spool(sub / "s.db", clock=clock)      # not the owner: it asks the volume for space
    sp.put_many([alert(i) for i in range(5)])
    pin = _pin_the_wal(sub / "s.db")
    filler = fill(vol)
    sp.put_many([alert(100 + i, pad=4000) for i in range(50)])
    assert sp.disk_full
    os.rename(sub, vol / "data-moved")          # the folder is gone from its path
    try:
        filler.unlink()
        clock.t += 60
        sp.maintain()                            # cannot ask the volume: still full, no error
        assert sp.disk_full
    finally:
        os.rename(vol / "data-moved", sub)
        pin.rollback()
        pin.close()
    sp.maintain()
    assert not sp.disk_full
    sp.close()



def _open_connections(path: Path) -> int:
    """Open SQLite connections of this process to ``path`` (other tests' are not counted)."""
    n = 0
    for o in gc.get_objects():
        if isinstance(o, sqlite3.Connection):
            try:
                files = [r[2] for r in o.execute("PRAGMA database_list").fetchall()]
            except sqlite3.Error:                 # closed, or another thread's own
                continue
            n += str(path) in files
    return n


def test_a_connection_that_meets_a_damaged_file_is_closed_at_once(tmp_path):
    # a thread's first use opens its own connection; when the file is damaged that open fails,
    # and the connection is closed then, not when the error is dropped: the caller holds the
    # error while the spool heals (forwarder), and on Windows an open handle keeps the file from
    # being moved aside
    path = tmp_path / "s.db"
    sp = Spool(path)
    try:
        sp.put(alert(1))
        sp._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(path, "r+b") as fh:
            fh.write(os.urandom(100))           # the header is gone: "file is not a database"
        before = _open_connections(path)

        def first_use():
            try:
                sp.depth()
            except SpoolError as exc:
                return exc, _open_connections(path)  # while the error is held
            return None, None

        t, out = _in_thread(first_use)
        t.join(60)
        assert out, "the read in the other thread did not end"
        exc, during = out[0]
        assert isinstance(exc, SpoolDamaged) and during == before
    finally:
        sp.close()


def test_put_volume_counts_what_was_committed_and_nothing_else(tmp_path):
    # put_volume: (rows, body bytes) this process committed, a running count; wake() and the
    # other writes (a requeue, a health event) commit no new alert and leave it as it was
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put_volume == (0, 0)
        sp.put_many([alert(1), alert(2)])
        vol = sp.put_volume
        assert vol == (2, size_of(alert(1)) + size_of(alert(2)))
        sp.wake()
        (item,) = sp.fetch(1)
        sp.dead_letter([(item.rowid, "bad", 400)])
        sp.requeue_dead()
        assert sp.put_volume == vol



def test_alerts_dropped_over_the_memory_cap_on_a_full_disk_are_counted_once(volume):
    # nothing can be written (a full disk, and a reader pins the WAL): new alerts wait in memory
    # up to held_max_bytes, the oldest held are dropped beyond it, and each drop counts once in
    # dropped_disk_full: every alert is accounted for (in the spool, dropped, or still held)
    vol = volume("2m")
    clock = Clock()
    one = size_of(alert(0, pad=4000))
    sp = Spool(vol / "s.db", clock=clock, held_max_bytes=2 * one)   # not the owner: no reserve
    try:
        sp.put_many([alert(i, pad=4000) for i in range(5)])
        reader = _pin_the_wal(vol / "s.db")
        filler = fill(vol)
        sp.put_many([alert(i, pad=4000) for i in range(5, 55)])
        fault = sp.fault_stats()
        assert fault["held"] == 2 and fault["held_dropped"] > 0
        reader.rollback()
        reader.close()
        filler.unlink()
        clock.t += 3600                                            # past any retry delay
        assert sp.flush_held() == 2
        st_ = sp.stats()
        kept = [i for i in sp.ids() if i.startswith("a-")]
        assert st_["held"] == 0 and st_["dropped_disk_full"] > 0
        assert len(kept) + st_["dropped_disk_full"] == 55
    finally:
        sp.close()


def test_wait_for_volume_with_no_time_left_returns_at_once(tmp_path):
    # a timeout that is over does not wait on the condition, nor ask done() (asked when wake()
    # is called, while there is time left)
    asked: list = []

    def done() -> bool:
        asked.append(1)
        return False

    with Spool(tmp_path / "s.db") as sp:
        since = sp.put_volume
        assert sp.wait_for_volume(since, 1, 10**9, 0.0, done=done) is False
        assert sp.wait_for_volume(since, 1, 10**9, -5.0, done=done) is False
        assert asked == []
        sp.put(alert(1))
        assert sp.wait_for_volume(since, 1, 10**9, 0.0, done=done) is True


# -- survivors of the full mutation run, each from the promise it breaks -------------------------

class FrozenMonotonic:
    """The spool module's ``time`` with ``monotonic()`` under the test's control (the heal timer
    and wait_for_volume's deadline read it); everything else is the real module."""

    def __init__(self, t: float) -> None:
        self.t = t

    def monotonic(self) -> float:
        return self.t

    def __getattr__(self, name: str):
        import time as real
        return getattr(real, name)


def test_a_salvage_gives_rows_of_an_old_spool_their_checksum(tmp_path):
    # "Every row carries a CRC-32 of its id and body": a row written before checksums (crc NULL)
    # and recovered by a salvage comes back with its checksum, so later damage to it is caught
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put_many([alert(i) for i in range(3)])
    _edit(path, "UPDATE alerts SET crc=NULL WHERE alert_uuid='a-000001'")
    Path(str(path) + ".damaged").write_text("simulated\n")
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        assert sp.salvage is not None and sp.salvage["recovered"] == 3
        rows = dict(sp._db.execute("SELECT alert_uuid, crc FROM alerts WHERE alert_uuid LIKE 'a-%'"))
        body = msgspec.json.encode(alert(1))
        assert rows["a-000001"] == row_crc("a-000001", body)
        assert all(rows[f"a-{i:06d}"] == row_crc(f"a-{i:06d}", msgspec.json.encode(alert(i)))
                   for i in range(3))


def _heal_at(sp: Spool, clock: FrozenMonotonic, t: float) -> bool:
    clock.t = t
    healed = sp.heal_if_due()
    if healed:
        sp._mark_damaged("damaged again")     # what SQLite would report next (a failing disk)
    return healed


@contextlib.contextmanager
def _damaged_owner_spool(tmp_path: Path, monkeypatch, t: float):
    """The owner's spool, open (no longer opening), holding alert 1 and marked damaged, on a
    monotonic clock frozen at `t`; yields the spool and the clock."""
    clock = FrozenMonotonic(t)
    monkeypatch.setattr(spool_mod, "time", clock)
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=0) as sp:
        sp.put(alert(1))
        sp._opening = False
        sp._mark_damaged("simulated")
        yield sp, clock


def test_a_heal_is_due_exactly_when_its_wait_is_over(tmp_path, monkeypatch):
    # docs/delivery.md, "Faults": the second heal within the hour waits 10 s (5 s doubled per
    # heal in the last hour); at 10 s it is due, not a moment later
    with _damaged_owner_spool(tmp_path, monkeypatch, 50_000.0) as (sp, clock):
        assert _heal_at(sp, clock, 50_000.0)          # the first heal: at once
        assert _heal_at(sp, clock, 50_001.0)          # the second: the first costs nothing
        assert sp._next_heal == 50_011.0
        assert not _heal_at(sp, clock, 50_010.5)
        assert _heal_at(sp, clock, 50_011.0)
        assert sp.heals == 3 and alert(1)["id"] in sp.ids()


def test_heals_slow_down_by_the_heals_of_the_last_hour_only(tmp_path, monkeypatch):
    # a heal an hour old no longer counts: after it, the next heal is due at once again; one
    # less than an hour old still doubles the wait (whatever the monotonic clock reads)
    clock = FrozenMonotonic(1_000_000.0)
    monkeypatch.setattr(spool_mod, "time", clock)
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=0) as sp:
        sp._opening = False
        sp._mark_damaged("simulated")
        t0 = 1_000_000.0
        assert _heal_at(sp, clock, t0)
        assert _heal_at(sp, clock, t0 + 3599.0)       # the first is 3,599 s old: it counts
        assert sp._next_heal == t0 + 3599.0 + 10.0
        assert _heal_at(sp, clock, t0 + 3599.0 + 3600.0)   # the last is an hour old: it does not
        assert sp._next_heal <= clock.t                  # the next is due at once
        assert _heal_at(sp, clock, t0 + 3599.0 + 3600.0)
        assert sp.heals == 4


@contextlib.contextmanager
def _a_volume_waiter(sp: Spool, since, nrows: int, nbytes: int, timeout: float):
    """A thread calls sp.wait_for_volume(since, nrows, nbytes, timeout); this yields once it
    waits (or returned), with the thread, the list its answer goes to and an event set if it
    was seen waiting; at the end it is told to stop, woken and joined."""
    got: list[bool] = []
    stop = threading.Event()
    t = threading.Thread(target=lambda: got.append(
        sp.wait_for_volume(since, nrows, nbytes, timeout, done=stop.is_set)), daemon=True)
    t.start()
    waiting = threading.Event()
    try:
        while t.is_alive() and not waiting.wait(0.01):
            with sp._volume:
                if sp._volume._waiters:
                    waiting.set()
        yield t, got, waiting
    finally:
        stop.set()
        sp.wake()
        t.join(60)


def test_a_waiter_wakes_for_the_commit_that_reaches_its_byte_goal_exactly(tmp_path):
    # wait_for_volume: "at least nbytes body bytes": a commit that brings exactly that many wakes
    # the waiter (the guard only bounds a hang)
    with Spool(tmp_path / "s.db") as sp:
        sp.put(alert(1))
        one = sp.put_volume[1]                  # every alert of the same pad has the same size
        with _a_volume_waiter(sp, sp.put_volume, 1000, one, 3600.0) as (t, got, _):
            sp.put(alert(2))
            t.join(60)
            assert got == [True]


def test_an_expired_alert_leaves_the_row_count(tmp_path):
    # "rows" is what a salvage counts its losses against (docs: "L lost"): the age cap too
    clock = Clock()
    with Spool(tmp_path / "s.db", max_age=100.0, health_alerts=False, clock=clock) as sp:
        sp.put_many([alert(i) for i in range(3)])
        clock.t += 101.0
        sp.put(alert(10))
        assert sp.stats()["expired"] == 3
        assert sp._counter("rows") == sp.depth() == 1


def test_a_health_callback_sees_its_event_committed(tmp_path):
    # the callback (and the log) announce a drop only once it is committed: another connection
    # (another process, a SIEM reading the spool) already finds the event when the callback runs
    path = tmp_path / "s.db"
    one = size_of(alert(0))
    seen: list[int] = []

    def on_health(event):
        con = raw(path)
        try:
            seen.append(con.execute("SELECT COUNT(*) FROM health WHERE kind=?", (event["event"],)).fetchone()[0])
        finally:
            con.close()

    with Spool(path, max_bytes=2 * one, health_alerts=False, on_health=on_health) as sp:
        sp.put_many([alert(i) for i in range(3)])
    assert seen == [1]


def test_wait_for_volume_with_exactly_no_time_left_does_not_ask_done(tmp_path, monkeypatch):
    # a deadline reached exactly is over: no wait, and done() (asked when wake() is called while
    # there is time left) is not asked
    clock = FrozenMonotonic(7_000.0)
    monkeypatch.setattr(spool_mod, "time", clock)
    asked: list = []

    def done() -> bool:
        asked.append(1)
        return True

    with Spool(tmp_path / "s.db") as sp:
        assert sp.wait_for_volume(sp.put_volume, 1, 10**9, 0.0, done=done) is False
        assert asked == []


def test_close_checkpoints_even_while_another_process_has_the_file_open(tmp_path):
    # docs: the WAL is checkpointed into the file; SQLite checkpoints by itself only when the
    # last connection closes, so a clean stop while `etw-sensor spool` looks in must do it
    path = tmp_path / "s.db"
    sp = Spool(path)
    sp.put_many([alert(i) for i in range(5)])
    other = raw(path)
    assert other.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 5
    sp.close()
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())          # the main file alone, without its -wal
    try:
        assert raw(copy).execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 5
    finally:
        other.close()


@pytest.mark.parametrize("how", ["put_when_the_retry_is_due", "maintain_when_the_retry_is_due",
                                 "put_after_the_state_ended"])
def test_alerts_held_on_a_full_disk_go_in_once_space_is_back_and_the_episode_says_begin_then_end(volume, how):
    # docs/delivery.md, "Faults": when nothing can be written, new alerts wait in memory "and are
    # written when space returns"; the next try is FULL_RETRY_INTERVAL (0.5 s) after a failed one
    # (due at exactly 0.5 s), and once the state has ended a new alert needs no retry delay. The
    # SIEM gets the episode's health alerts in order: `begin`, then `end`.
    vol = volume("2m")
    clock = Clock()
    events: list[dict] = []
    sp = Spool(vol / "s.db", clock=clock, on_health=events.append)   # not the owner: no reserve
    try:
        sp.put_many([alert(i) for i in range(5)])
        pin = _pin_the_wal(vol / "s.db")
        filler = fill(vol)
        sp.put_many([alert(100 + i, pad=4000) for i in range(50)])  # nothing fits: held
        assert sp.disk_full and sp.fault_stats()["held"] > 0
        pin.rollback()
        pin.close()
        filler.unlink()
        if how == "put_when_the_retry_is_due":
            clock.t += spool_mod.FULL_RETRY_INTERVAL
            sp.put(alert(300))
        elif how == "maintain_when_the_retry_is_due":
            clock.t += spool_mod.FULL_RETRY_INTERVAL
            sp.maintain()
        else:
            sp.maintain()              # too soon to retry the write: only the state ends
            assert not sp.disk_full and sp.fault_stats()["held"] > 0
            sp.put(alert(300))         # space is back: no reason to wait
        assert not sp.disk_full and sp.fault_stats()["held"] == 0
        assert {f"a-{100 + i:06d}" for i in range(50)} <= set(sp.ids())
        health = [it.decode()["health"] for it in sp.fetch(10_000) if not it.alert_id.startswith("a-")]
        assert [h["state"] for h in health if h["event"] == "spool_disk_full"] == ["begin", "end"]
        # ... and on_health hears each once
        assert [e["state"] for e in events if e["event"] == "spool_disk_full"] == ["begin", "end"]
    finally:
        sp.close()




class FakeDisk:
    """The spool module's ``shutil`` with ``disk_usage()`` answering the test's figures."""

    def __init__(self, total: int, free: int) -> None:
        self.total, self.free = total, free

    def disk_usage(self, path):
        import shutil
        return shutil._ntuple_diskusage(self.total, self.total - self.free, self.free)

    def __getattr__(self, name: str):
        import shutil
        return getattr(shutil, name)


@pytest.mark.parametrize("free, kept", [(2 * 100_000 - 1, False), (2 * 100_000, True)])
def test_the_reserve_is_set_aside_only_with_twice_its_size_free(tmp_path, monkeypatch, free, kept):
    # docs/delivery.md, "Faults": the reserve is set aside when the volume has twice the bytes
    # it still lacks free, so the reserve itself never fills the disk
    monkeypatch.setattr(spool_mod, "shutil", FakeDisk(100 * MiB, free))
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=100_000) as sp:
        reserve = Path(str(tmp_path / "s.db") + ".reserve")
        assert sp.reserve_bytes == (100_000 if kept else 0)
        assert (reserve.exists() and reserve.stat().st_size) == (100_000 if kept else False)


def test_a_complete_reserve_is_not_written_again(tmp_path, monkeypatch):
    # a reserve already at its size is left as it is: no open, no write, no fsync at each start
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=100_000):
        pass
    opened: list = []
    real = spool_mod.open_private

    def spy(p, *a, **kw):
        opened.append(Path(p).name)
        return real(p, *a, **kw)

    monkeypatch.setattr(spool_mod, "open_private", spy)
    with Spool(path, owner=True, reserve_bytes=100_000) as sp:
        assert sp.reserve_bytes == 100_000
    assert "s.db.reserve" not in opened


@pytest.mark.parametrize("total, free, back", [(100 * MiB, MiB, True), (100 * MiB, MiB - 1, False),
                                               (4 * MiB, 4 * MiB // 8, True),
                                               (4 * MiB, 4 * MiB // 8 - 1, False)])
def test_a_spool_without_a_reserve_leaves_the_full_state_at_1_mib_free(tmp_path, monkeypatch, total, free, back):
    # docs/delivery.md, "Faults": a process that does not own the spool (no reserve) takes the
    # disk for full until the volume has 1 MiB free again (an eighth of a volume under 8 MiB)
    clock = Clock()
    with Spool(tmp_path / "s.db", clock=clock) as sp:
        sp._enter_full("simulated")
        monkeypatch.setattr(spool_mod, "shutil", FakeDisk(total, free))
        sp.maintain()
        assert sp.disk_full is not back


def _spool_with_free_pages(vol: Path, written: int, confirmed: int) -> Spool:
    """A spool that does not own its file (no reserve) on `vol`, with `written` alerts of one
    size, the first `confirmed` of them confirmed and checkpointed into free pages."""
    sp = Spool(vol / "s.db")
    try:
        sp.put_many([alert(i, pad=3000) for i in range(written)])
        sp.ack([it.rowid for it in sp.fetch(confirmed)])
        sp._checkpoint()
    except BaseException:
        sp.close()
        raise
    return sp


def _twenty_new_alerts_on_a_full_disk(sp: Spool) -> dict:
    """Write 20 new alerts of the same size in the disk-full state; the spool's stats after."""
    sp._enter_full("simulated: the disk refused a write")
    sp.put_many([alert(1000 + i, pad=3000) for i in range(20)])
    return sp.stats()


def test_on_a_full_disk_new_alerts_take_the_free_pages_before_any_alert_is_dropped(volume):
    # docs/delivery.md, "Faults": on a full disk "new alerts go into the free pages it already
    # has, and when those run short the oldest undelivered alerts are dropped": confirmed rows
    # left free pages for far more than the new alerts, so none is dropped and none waits
    vol = volume("2m")
    sp = _spool_with_free_pages(vol, written=120, confirmed=100)
    try:
        assert sp._free_pages_bytes() > 60 * size_of(alert(0, pad=3000))
        filler = fill(vol)
        try:
            st_ = _twenty_new_alerts_on_a_full_disk(sp)
            assert st_["disk_full"] and st_["dropped_disk_full"] == 0 and st_["held"] == 0
            assert {f"a-{1000 + i:06d}" for i in range(20)} <= set(sp.ids())
            assert len([i for i in sp.ids() if i.startswith("a-")]) == 40
        finally:
            filler.unlink()
    finally:
        sp.close()


def test_on_a_full_disk_new_alerts_fill_the_free_pages_then_replace_the_oldest_one_for_one(volume):
    # docs/delivery.md, "Faults": new alerts go into the free pages first; "when those run short
    # the oldest undelivered alerts are dropped in the same transaction": for alerts of one size,
    # making room for a new alert takes no more than one old one, so fewer alerts are dropped
    # than written, and every alert is accounted for
    vol = volume("2m")
    sp = _spool_with_free_pages(vol, written=60, confirmed=12)
    try:
        assert 0 < sp._free_pages_bytes() < 20 * size_of(alert(0, pad=3000))   # too few for 20
        filler = fill(vol)
        try:
            st_ = _twenty_new_alerts_on_a_full_disk(sp)
            kept = [i for i in sp.ids() if i.startswith("a-")]
            assert st_["disk_full"] and st_["held"] == 0
            assert {f"a-{1000 + i:06d}" for i in range(20)} <= set(kept)
            assert 0 < st_["dropped_disk_full"] < 20
            assert len(kept) + st_["dropped_disk_full"] == 48 + 20
        finally:
            filler.unlink()
    finally:
        sp.close()


def test_the_full_state_ends_as_soon_as_the_reserve_is_in_place(tmp_path):
    # docs/delivery.md, "Faults": the owner's disk-full state "ends once the reserve can be set
    # aside again": at the first upkeep that finds it in place, or that writes it
    clock = Clock()
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=100_000, clock=clock) as sp:
        sp._enter_full("simulated: the disk refused a write")     # the reserve still in place
        sp.maintain()
        assert not sp.disk_full
        sp._enter_full("simulated: the disk refused a write")
        Path(str(path) + ".reserve").unlink()                       # released; room for it now
        sp.maintain()
        assert not sp.disk_full and sp.reserve_bytes == 100_000
        assert Path(str(path) + ".reserve").stat().st_size == 100_000


@pytest.mark.parametrize("waited", [0.0, spool_mod.FULL_RETRY_INTERVAL], ids=["at-once", "after-the-retry-interval"])
def test_a_stop_writes_the_alerts_held_on_a_full_disk_once_space_is_back(volume, caplog, waited):
    # docs/delivery.md: held alerts "are written when space returns", and a stop commits what it
    # holds: the next start finds every one of them, and the log does not call them lost; also
    # a stop right after the refused write, before its retry would be due (they were lost)
    vol = volume("2m")
    clock = Clock()
    sp = Spool(vol / "s.db", clock=clock)                 # not the owner: no reserve
    try:
        sp.put_many([alert(i) for i in range(5)])
        pin = _pin_the_wal(vol / "s.db")
        filler = fill(vol)
        sp.put_many([alert(100 + i, pad=4000) for i in range(50)])  # nothing fits: held
        assert sp.fault_stats()["held"] == 50
        pin.rollback()
        pin.close()
        filler.unlink()
        clock.t += waited
    finally:
        with caplog.at_level(logging.ERROR, logger="sensor.spool"):
            sp.close()
    assert "lost at shutdown" not in caplog.text
    with Spool(vol / "s.db") as sp:
        assert {f"a-{100 + i:06d}" for i in range(50)} <= set(sp.ids())


def test_a_row_read_back_is_a_value_that_cannot_be_changed(tmp_path):
    # SpooledAlert: the row as read back; its body is checked against the checksum read with it,
    # so neither can be swapped afterwards, and equal rows are one value (a set or dict key)
    import dataclasses
    with Spool(tmp_path / "s.db") as sp:
        sp.put(alert(1))
        (item,) = sp.fetch(1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            item.body = b'{"id":"a-000001"}'
        (again,) = sp.fetch(1)
        assert {item, again} == {item} and {item: 1}[again] == 1


@contextlib.contextmanager
def _one_fetched_alert_on_a_full_disk(volume, make_reserve):
    """A spool that does not own its file, on a 2 MiB volume, with 5 alerts, the first fetched;
    `make_reserve` puts something at the reserve's path, then the volume is filled with the
    WAL pinned. Yields the spool and the fetched alert."""
    vol = volume("2m")
    sp = Spool(vol / "s.db")
    try:
        sp.put_many([alert(i) for i in range(5)])
        (item,) = sp.fetch(1)
        make_reserve(Path(str(vol / "s.db") + ".reserve"))
        with _full_with_the_wal_pinned(vol):
            yield sp, item
    finally:
        sp.close()


def test_a_dead_letter_the_full_disk_refuses_is_not_tried_again_when_nothing_was_freed(volume):
    # docs/delivery.md, "Failure handling": the full disk is not asked twice in a row; an empty
    # reserve file frees nothing, and a checkpoint a reader blocks frees nothing either
    with _one_fetched_alert_on_a_full_disk(volume, lambda p: p.write_bytes(b"")) as (sp, item):  # a reserve of 0 bytes
        _refused_after_one_try(sp, item)


def test_on_a_full_disk_new_alerts_replace_the_oldest_rather_than_wait_in_memory(volume):
    # docs/delivery.md, "Faults": new alerts wait in memory only "when nothing at all can be
    # written"; while the spool holds alerts it can drop, they replace the oldest, even when the
    # first estimate of the room they need falls short (here: many small old alerts, large new
    # ones). Every alert is accounted for: in the spool or counted as dropped.
    vol = volume("2m")
    heard: list[dict] = []
    sp = Spool(vol / "s.db", on_health=heard.append)   # not the owner: no reserve
    try:
        sp.put_many([alert(i) for i in range(400)])
        sp._checkpoint()
        filler = fill(vol)
        try:
            sp._enter_full("simulated: the disk refused a write")
            sp.put_many([alert(10_000 + i, pad=20_000) for i in range(10)])
            st_ = sp.stats()
            kept = [i for i in sp.ids() if i.startswith("a-")]
            assert st_["disk_full"] and st_["held"] == 0
            assert alert(10_009)["id"] in kept                 # the newest is never the one dropped
            assert len(kept) + st_["dropped_disk_full"] == 400 + 10
            # the writes whose commit the disk refused were rolled back, drops included: on_health
            # hears of the drops that were committed only (one event, counted in the spool)
            drops = [e for e in heard if e["event"] == "spool_disk_full_dropped"]
            (event,) = [e for e in sp.health_events() if e["kind"] == "spool_disk_full_dropped"]
            assert len(drops) == 1 and drops[0]["dropped"] <= event["count"] == st_["dropped_disk_full"]
        finally:
            filler.unlink()
    finally:
        sp.close()


def test_a_salvage_says_the_loss_is_unknown_when_the_row_count_is_not_a_number(tmp_path, caplog):
    # docs/delivery.md, "Faults": L is "counted against the row count the damaged file kept, or
    # said to be unknown when that count is unreadable" (a hostile or damaged meta row)
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put_many([alert(i) for i in range(3)])
    _edit(path, "UPDATE meta SET value='many' WHERE key='rows'")
    with open(path, "r+b") as fh:          # a header SQLite cannot read: the start salvages
        fh.write(b"\xa5" * 100)
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        with Spool(path, owner=True, reserve_bytes=0) as sp:
            assert sp.salvage is not None and sp.salvage["recovered"] == 3
            assert sp.salvage["lost"] is None
    assert "an unknown number of alerts may be lost" in caplog.text


def test_a_put_right_after_a_failed_attempt_leaves_the_full_disk_alone(volume):
    # a full disk is not hammered: within FULL_RETRY_INTERVAL of a write the disk refused, new
    # alerts join the ones waiting in memory without a write attempt
    vol = volume("2m")
    clock = Clock()
    sp = Spool(vol / "s.db", clock=clock)                  # not the owner: no reserve
    try:
        sp.put_many([alert(i) for i in range(5)])
        with _full_with_the_wal_pinned(vol):
            sp.put_many([alert(100 + i, pad=4000) for i in range(50)])
            assert sp.disk_full and sp.fault_stats()["held"] == 50
            tries: list = []
            real = sp._store
            sp._store = lambda batch, now: (tries.append(1), real(batch, now))[1]
            clock.t += spool_mod.FULL_RETRY_INTERVAL / 2
            assert sp.put(alert(200)) is True                      # counted as new, held
            assert tries == [] and sp.fault_stats()["held"] == 51
    finally:
        sp.close()


def test_heal_does_nothing_on_a_healthy_or_a_closed_spool(tmp_path, caplog):
    # heal(): "True when it was done"; a spool with no damage has nothing to heal, and a closed
    # spool refuses work: damage reported after the stop stays for the next start to salvage,
    # untouched (no move aside and back, nothing logged)
    path = tmp_path / "s.db"
    sp = Spool(path, owner=True, reserve_bytes=0)
    sp.put(alert(1))
    assert sp.heal() is False and sp.heals == 0
    sp.close()
    sp._mark_damaged("simulated")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sensor.spool"):
        assert sp.heal() is False and sp.heals == 0
    assert caplog.records == []
    assert list(tmp_path.glob("s.db.damaged-*")) == [] and Path(str(path) + ".damaged").exists()


def test_a_reader_that_is_not_the_owner_is_told_of_damage_not_left_holding(tmp_path):
    # only the owner heals; `etw-sensor spool` writing into a damaged file gets SpoolDamaged
    # ("the call that met it raises SpoolDamaged") and keeps nothing in memory
    with Spool(tmp_path / "s.db") as sp:
        def damaged(batch, now):
            raise SpoolDamaged(f"spool {sp.path}: write failed: database disk image is malformed")

        sp._store = damaged
        with pytest.raises(SpoolDamaged):
            sp.put(alert(1))
        assert sp.fault_stats()["held"] == 0


def test_a_spool_that_cannot_be_moved_aside_says_why_in_words(tmp_path):
    # the error names the OS's reason ("Is a directory"), not Python's repr of it
    path, clock, other = _unmovable_damaged_spool(tmp_path)
    try:
        with pytest.raises(SpoolError) as err:
            Spool(path, owner=True, reserve_bytes=0, clock=clock)
    finally:
        other.close()
    text = str(err.value)
    assert "cannot be moved aside: " in text and "[Errno" not in text
    assert text.endswith((os.strerror(errno.EISDIR), os.strerror(errno.ENOTEMPTY)))


def test_a_salvage_recovers_the_rows_only_the_write_ahead_log_holds(tmp_path):
    # docs/delivery.md, "The WAL": a commit lives only in the -wal until a checkpoint copies it;
    # a salvage moves the -wal aside with the file and recovers those rows too (here a reader of
    # another process keeps the last commits from being checkpointed)
    path = tmp_path / "s.db"
    sp = Spool(path, owner=True, reserve_bytes=0)
    sp.put_many([alert(i) for i in range(3)])
    reader = raw(path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM alerts").fetchone()   # its snapshot: before the next
    sp.put_many([alert(i) for i in range(3, 6)])
    sp._close_connections()                                     # a stop without the clean mark
    try:
        Path(str(path) + ".damaged").write_text("simulated\n")
        with Spool(path, owner=True, reserve_bytes=0) as sp2:
            assert sp2.salvage is not None and sp2.salvage["recovered"] == 6
            assert [i for i in sp2.ids() if i.startswith("a-")] == [alert(i)["id"] for i in range(6)]
    finally:
        reader.rollback()
        reader.close()


def test_a_heal_names_the_damage_sqlite_reported(tmp_path, caplog):
    # docs/delivery.md, "Faults": the heal's report gives the reason the damage marker holds;
    # the heal's own work on the fresh spool does not start a second heal (which could only
    # find the file taken and say "still in use")
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=0) as sp:
        sp.put(alert(1))
        sp._opening = False
        sp._mark_damaged("index sqlite_autoindex_alerts_1 does not match its table")
        with caplog.at_level(logging.WARNING, logger="sensor.spool"):
            assert sp.heal() is True
        reason = sp.last_heal["reason"]
        assert "while running" in reason and "does not match its table" in reason
        assert "still in use" not in caplog.text and sp.heals == 1


def _damaged_spool_that_cannot_be_made_fresh(tmp_path: Path, monkeypatch) -> tuple[Path, object]:
    """A spool marked damaged where creating the fresh file is refused (EACCES, "access
    refused"); returns its path and the real touch_private, to put back."""
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put(alert(1))
    Path(str(path) + ".damaged").write_text("simulated\n")
    real_touch = spool_mod.touch_private

    def refuse(p, *a, **kw):
        if Path(p) == path:
            raise PermissionError(errno.EACCES, "access refused")
        return real_touch(p, *a, **kw)

    monkeypatch.setattr(spool_mod, "touch_private", refuse)
    return path, real_touch


def test_a_salvage_that_cannot_create_the_fresh_spool_says_why_in_words(tmp_path, monkeypatch):
    # the error names the OS's reason, not Python's repr of it ("[Errno 13] ...")
    path, real_touch = _damaged_spool_that_cannot_be_made_fresh(tmp_path, monkeypatch)
    with pytest.raises(SpoolError) as err:
        Spool(path, owner=True, reserve_bytes=0)
    assert str(err.value).endswith("cannot create a fresh spool: access refused")
    monkeypatch.setattr(spool_mod, "touch_private", real_touch)
    with Spool(path, owner=True, reserve_bytes=0) as sp:      # the damaged file was put back
        assert sp.salvage is not None and alert(1)["id"] in sp.ids()


def test_a_rolled_back_transaction_announces_nothing(tmp_path):
    # "logs and callbacks must not announce what a failed commit rolled back"
    heard: list = []
    with Spool(tmp_path / "s.db", on_health=heard.append) as sp:
        with pytest.raises(RuntimeError):
            with sp._guard("test"), sp._tx():
                sp._insert_event("spool_overflow", "dropped 1", {"dropped": 1}, 1.0)
                raise RuntimeError("the transaction fails before its commit")
        assert heard == [] and sp.health_events() == []


def test_a_nested_transaction_is_part_of_the_outer_one(tmp_path):
    # _Tx nests: an inner block commits nothing by itself, so the outer one's rollback undoes it
    with Spool(tmp_path / "s.db") as sp:
        with pytest.raises(RuntimeError):
            with sp._guard("test"), sp._tx():
                with sp._tx():
                    sp._bump("written", 5)
                raise RuntimeError("the outer transaction fails")
        assert sp.stats()["written"] == 0
        assert sp.put(alert(1)) and sp.stats()["written"] == 1


def test_a_transaction_that_fails_to_start_leaves_the_connection_usable(tmp_path):
    # the connection leaves a failed BEGIN outside any transaction: the next write works
    with Spool(tmp_path / "s.db") as sp:
        sp.put(alert(0))
        sp._enter_full("simulated")          # a transaction then reads the page limit
        real = sp._page_limit

        def broken():
            raise sqlite3.OperationalError("disk I/O error")

        sp._page_limit = broken
        with pytest.raises(SpoolError):
            sp.enforce()
        sp._page_limit = real
        assert not sp._db.in_transaction
        sp._full_since = None                # the state ended
        assert sp.put(alert(1)) is True and alert(1)["id"] in sp.ids()


def _refusing_replace(monkeypatch, refuse):
    """os.replace that raises EACCES ("access refused") for the (src, dst) pairs refuse() picks."""
    real = os.replace

    def replace(src, dst, *a, **kw):
        if refuse(str(src), str(dst)):
            raise PermissionError(errno.EACCES, "access refused")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)


def test_a_file_that_cannot_be_moved_back_is_named_with_the_reason_in_words(tmp_path, monkeypatch, caplog):
    # the damaged file went aside, its -wal could not follow, and moving the file back failed
    # too: the CRITICAL line names the file and the OS's reason in words
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put(alert(1))
    reader = raw(path)                      # keeps a -wal next to the file
    reader.execute("SELECT COUNT(*) FROM alerts").fetchone()
    Path(str(path) + ".damaged").write_text("simulated\n")
    _refusing_replace(monkeypatch, lambda src, dst: src.endswith("-wal") or dst == str(path))
    try:
        with caplog.at_level(logging.CRITICAL, logger="sensor.spool"):
            with pytest.raises(SpoolError):
                Spool(path, owner=True, reserve_bytes=0)
    finally:
        reader.close()
    (line,) = [r.getMessage() for r in caplog.records if "back" in r.getMessage()]
    assert line.endswith(": access refused") and "[Errno" not in line


def test_a_damaged_file_that_cannot_be_put_back_is_named_with_the_reason_in_words(tmp_path, monkeypatch, caplog):
    # the fresh spool could not be made, and the damaged file could not go back in its place:
    # the CRITICAL line says where its rows are and why, in words
    path, _ = _damaged_spool_that_cannot_be_made_fresh(tmp_path, monkeypatch)
    _refusing_replace(monkeypatch, lambda src, dst: ".damaged-" in src and dst == str(path))
    with caplog.at_level(logging.CRITICAL, logger="sensor.spool"):
        with pytest.raises(SpoolError):
            Spool(path, owner=True, reserve_bytes=0)
    (line,) = [r.getMessage() for r in caplog.records if "cannot put the damaged file back" in r.getMessage()]
    assert line.endswith(": access refused; its rows are there") and "[Errno" not in line


def test_a_dead_letter_of_a_row_already_gone_still_moves_the_rest(tmp_path):
    # dead_letter(): rows gone meanwhile (confirmed, dropped) are passed over, the others move
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(3)])
        items = sp.fetch(3)
        sp.ack([items[0].rowid])
        assert sp.dead_letter([(it.rowid, "rejected", 400) for it in items]) == 2
        assert sp.depth() == 0 and {d["id"] for d in sp.dead_letters()} == {"a-000001", "a-000002"}


def test_a_full_spool_whose_file_was_renamed_still_confirms(tmp_path):
    # the page limit of the disk-full state reads the file's size; a file that is no longer at
    # its path (renamed by someone) counts as no pages on disk, not as an error: a confirmation,
    # which never grows the file, still goes through
    path = tmp_path / "s.db"
    with Spool(path) as sp:
        sp.put_many([alert(i) for i in range(3)])
        items = sp.fetch(3)
        sp._enter_full("simulated")
        moved = tmp_path / "moved.db"
        os.rename(path, moved)
        try:
            assert sp.ack([items[0].rowid]) == 1
        finally:
            os.rename(moved, path)


def test_a_salvage_whose_copy_fails_part_way_loses_no_row(tmp_path, monkeypatch):
    # docs/delivery.md, "Faults": a salvage that fails after moving the file aside (the fresh
    # spool cannot be filled: a full disk) puts the damaged file back, so the next attempt
    # recovers its rows; it never ends as a salvage of the rows read so far
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put_many([alert(i) for i in range(600)])      # more than one copy transaction
    Path(str(path) + ".damaged").write_text("simulated\n")
    real = Spool._insert_dead
    failed: list = []

    def insert_dead(self, rows, now):
        if self._opening and not failed:
            failed.append(1)
            raise SpoolFull(f"spool {self.path}: salvage failed: database or disk is full")
        return real(self, rows, now)

    monkeypatch.setattr(Spool, "_insert_dead", insert_dead)
    with pytest.raises(SpoolError):
        Spool(path, owner=True, reserve_bytes=0)
    assert failed == [1] and not list(tmp_path.glob("s.db.damaged-*"))
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        assert sp.salvage is not None and sp.salvage["lost"] == 0
        assert {alert(i)["id"] for i in range(600)} <= set(sp.ids())


def test_a_confirmation_the_disk_refuses_in_small_transactions_says_what_is_left(tmp_path):
    # ack(): "Raises SpoolFull when the disk cannot take even a small confirmation;
    # exc.remaining then lists the row ids still to delete (the ones before it were deleted)"
    with Spool(tmp_path / "s.db") as sp:
        rows, calls = _150_alerts_with_acks_refused(sp, refused=(1, 3))   # the whole batch, then the second small one
        with pytest.raises(SpoolFull) as err:
            sp.ack(rows)
        assert err.value.remaining == rows[64:] and err.value.done == 64
        assert sp.depth() == 150 - 64


def test_a_reserve_that_cannot_be_released_is_no_error_of_the_call(volume):
    # "Every spool call raises the spool's own SpoolFull": a reserve path that cannot be
    # deleted (here a folder took its name) frees nothing, and the caller still gets SpoolFull
    with _one_fetched_alert_on_a_full_disk(volume, Path.mkdir) as (sp, item):
        with pytest.raises(SpoolFull):
            sp.dead_letter([(item.rowid, "rejected", 400)])


def test_a_salvage_whose_reader_fails_keeps_what_it_read(tmp_path, monkeypatch, caplog):
    # the reader of a damaged file meets something it cannot read (any exception): the rows read
    # so far are recovered and the start goes on, with the reason in the log
    from sensor.deliver import salvage
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put_many([alert(i) for i in range(5)])
    Path(str(path) + ".damaged").write_text("simulated\n")
    real = salvage.scan

    def failing(*a, **kw):
        for n, row in enumerate(real(*a, **kw)):
            if n == 3:
                raise ValueError("a cell the reader cannot parse")
            yield row

    monkeypatch.setattr(salvage, "scan", failing)
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        with Spool(path, owner=True, reserve_bytes=0) as sp:
            assert sp.salvage is not None and 0 < sp.salvage["recovered"] <= 3
    assert "stopped: ValueError: a cell the reader cannot parse" in caplog.text


def test_a_thread_already_in_the_file_is_not_alone_while_another_is_in(tmp_path):
    # the gate: a healer that is itself inside the file still waits for every other thread
    gate = spool_mod._Gate()
    t, inside, release = _a_thread_inside(gate)
    try:
        assert inside.wait(30)
        gate.enter()
        assert gate.alone(0.05) is False
        gate.leave()
    finally:
        release.set()
        t.join(30)


@pytest.mark.parametrize("reserve", [0, -5])
def test_an_owner_without_a_reserve_leaves_the_full_state_only_at_1_mib_free(tmp_path, monkeypatch, reserve):
    # reserve_bytes 0 (or less: none) means no reserve: the full state then ends as for a
    # process that does not own the spool, when the volume has 1 MiB free again
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=reserve) as sp:
        assert sp.reserve_target == 0
        sp._enter_full("simulated")
        monkeypatch.setattr(spool_mod, "shutil", FakeDisk(100 * MiB, MiB - 1))
        sp.maintain()
        assert sp.disk_full
        monkeypatch.setattr(spool_mod, "shutil", FakeDisk(100 * MiB, MiB))
        sp.maintain()
        assert not sp.disk_full


def test_heals_slow_down_to_an_hour_at_most(tmp_path, monkeypatch):
    # damage that keeps coming back: the wait doubles per heal in the last hour, up to an hour
    clock = FrozenMonotonic(2_000_000.0)
    monkeypatch.setattr(spool_mod, "time", clock)
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=0) as sp:
        sp._opening = False
        for _ in range(12):                   # 5 s * 2**11 is far past an hour
            sp._mark_damaged("damaged again")
            assert sp.heal()
        assert sp._next_heal - clock.t == 3600.0


def test_a_heal_that_finds_the_spool_healed_by_the_thread_it_waited_for_says_done(tmp_path):
    # docs/delivery.md, "Faults": threads that arrive during a heal wait for it; one that asked
    # for a heal itself finds it done (True), without a second salvage
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=0) as sp:
        sp.put(alert(1))
        sp._opening = False
        sp._mark_damaged("simulated")
        real_alone = sp._gate.alone
        other: list = []
        started: list = []

        def alone_after_another_heal(timeout):
            if not started:          # another thread heals first, while this one waits its turn
                started.append(1)
                t = threading.Thread(target=lambda: other.append(sp.heal()), daemon=True)
                t.start()
                t.join(60)
            return real_alone(timeout)

        sp._gate.alone = alone_after_another_heal
        assert sp.heal() is True
        assert other == [True] and sp.heals == 1
        assert len(list(tmp_path.glob("s.db.damaged-*"))) == 1


# -- survivors of the full mutation run, second pass ---------------------------------------------

def test_wait_for_volume_counts_bytes_from_the_bytes_of_since(tmp_path):
    # "at least nbytes body bytes after since": since is (rows, bytes); the byte goal starts at
    # its byte count, not its row count (nothing committed after since: no goal is reached)
    with Spool(tmp_path / "s.db") as sp:
        sp.put(alert(1, pad=200))
        since = sp.put_volume
        assert since[1] > since[0] + 50
        assert sp.wait_for_volume(since, 1000, 50, 0.0) is False
        sp.put(alert(2))
        assert sp.wait_for_volume(since, 1000, 50, 0.0) is True


def test_a_waiter_with_under_a_second_left_still_waits_for_the_commit(tmp_path, monkeypatch):
    # "block until ... or timeout seconds passed": 0.5 s left is time left (the clock is held
    # still, so the deadline never passes; the guards only bound a hang)
    clock = FrozenMonotonic(9_000.0)
    monkeypatch.setattr(spool_mod, "time", clock)
    with Spool(tmp_path / "s.db") as sp:
        with _a_volume_waiter(sp, sp.put_volume, 1, 10**9, 0.5) as (t, got, waiting):
            assert waiting.is_set(), "the waiter returned without waiting"
            sp.put(alert(1))
            t.join(60)
            assert got == [True]


def test_a_released_reserve_of_any_size_is_room_freed_and_says_its_size(tmp_path, caplog):
    # docs/delivery.md, "Faults": on a full disk the owner deletes its reserve file; the log says
    # how many KiB that freed, and the fault state's reserve_bytes is 0 from then on. Even a
    # reserve of 1 byte is room freed (True: worth trying the write again).
    path = tmp_path / "s.db"
    reserve = Path(str(path) + ".reserve")
    with Spool(path, owner=True, reserve_bytes=1) as sp:
        assert reserve.stat().st_size == 1 == sp.reserve_bytes
        assert sp._release_reserve() is True
        assert not reserve.exists() and sp.fault_stats()["reserve_bytes"] == 0
    size = 100 * 1024 + 1022                  # 100 KiB and a bit: 100, in whole KiB
    with Spool(path, owner=True, reserve_bytes=size) as sp, \
            caplog.at_level(logging.WARNING, logger="sensor.spool"):
        assert reserve.stat().st_size == size
        assert sp._release_reserve() is True
        assert "released the 100 KiB reserve" in caplog.text
        assert sp.fault_stats()["reserve_bytes"] == 0


def test_a_foreign_constraint_on_the_spools_tables_is_treated_like_damage(tmp_path):
    # the spool is input too: a file with a trigger of its own that refuses the spool's writes at
    # open (SQLITE_CONSTRAINT) is not the spool's; treated like damage, as a foreign schema is
    path = tmp_path / "s.db"
    Spool(path).close()
    _edit(path, "CREATE TRIGGER no_meta BEFORE UPDATE ON meta BEGIN SELECT RAISE(ABORT, 'no'); END")
    with pytest.raises(SpoolDamaged):
        Spool(path)
    with Spool(path, owner=True, reserve_bytes=0) as sp:   # the owner moves it aside, afresh
        assert sp.salvage is not None and sp.put(alert(1)) is True
    assert list(tmp_path.glob("s.db.damaged-*"))


def _full_without_room(sp: Spool, monkeypatch) -> None:
    """The full state as a write on a full disk leaves it, on a volume that stays full (statvfs
    says 0 bytes free): the spool file may not grow, so new rows have only its free pages."""
    monkeypatch.setattr(spool_mod, "shutil", FakeDisk(100 * MiB, 0))
    sp._enter_full("simulated: the disk refused a write")


def test_a_commit_short_of_a_waiters_goal_wakes_no_one(tmp_path):
    # wait_for_volume: "the commits before that wake no one": a commit that reaches neither the
    # row goal nor the byte goal does not notify the waiter (the guards only bound a hang)
    with Spool(tmp_path / "s.db") as sp:
        with _a_volume_waiter(sp, sp.put_volume, 5, 10**9, 3600.0) as (t, got, waiting):
            notified: list = []
            real = sp._volume.notify_all
            sp._volume.notify_all = lambda: (notified.append(1), real())[1]
            assert waiting.is_set()
            sp.put(alert(1, pad=100))           # 1 row of 5, and far more bytes than 5
            assert notified == []
            sp.put_many([alert(i) for i in range(2, 6)])   # the fifth row: the goal
            t.join(60)
            assert notified == [1] and got == [True]


def test_the_first_heal_of_the_hour_costs_nothing_whatever_the_clock_reads(tmp_path, monkeypatch):
    # docs/delivery.md, "Faults": a heal waits twice as long per heal in the last hour, so after
    # the first one the next is due at once; the monotonic clock's zero is undefined (the time
    # since boot on Windows and Linux), so a reading of half a second is a reading like any other
    with _damaged_owner_spool(tmp_path, monkeypatch, 0.5) as (sp, clock):
        assert _heal_at(sp, clock, 0.5)
        assert _heal_at(sp, clock, 0.5)          # due at once: the first heal costs nothing
        assert sp.heals == 2 and alert(1)["id"] in sp.ids()


def test_the_cap_holds_with_the_health_alert_its_first_drop_adds(tmp_path):
    # docs/delivery.md, "Cap": past max_bytes the oldest alerts are dropped; the health alert
    # that says so is spooled too and counts in the bytes, so the cap makes room for it as well
    one = size_of(alert(0, pad=400))
    with Spool(tmp_path / "s.db", max_bytes=8 * one) as sp:
        for i in range(9):
            sp.put(alert(i, pad=400))
        st_ = sp.stats()
        assert st_["dropped"] > 0 and any(h["kind"] == "spool_overflow" for h in sp.health_events())
        assert st_["bytes"] <= sp.max_bytes


def test_a_cap_only_health_alerts_exceed_drops_nothing_and_says_0(tmp_path):
    # enforce() "returns how many alerts were dropped"; health alerts are kept (they say what was
    # lost), so a spool over its cap with nothing but health alerts left drops none: 0
    with Spool(tmp_path / "s.db", max_bytes=size_of(alert(0))) as sp:
        sp.put_many([alert(1), alert(2)])            # one dropped, and its health alert is kept
        assert sp.stats()["dropped"] >= 1
        assert [i for i in sp.ids() if i.startswith("a-")] == []
        assert sp.stats()["bytes"] > sp.max_bytes  # the health alert alone is over this cap
        dropped = sp.stats()["dropped"]
        assert sp.enforce() == 0
        assert sp.stats()["dropped"] == dropped


def test_alerts_dropped_from_memory_on_a_full_disk_count_once_each(tmp_path, monkeypatch):
    # docs/delivery.md, "Faults": when nothing at all can be written, new alerts wait in memory
    # (oldest dropped beyond its cap) and are written when space returns; each one dropped counts
    # once: in dropped, in dropped_disk_full and in the end event's dropped_held
    clock = Clock()
    one = size_of(alert(0, pad=4000))
    events: list = []
    with Spool(tmp_path / "s.db", clock=clock, held_max_bytes=2 * one, health_alerts=False,
               on_health=events.append) as sp:
        _full_without_room(sp, monkeypatch)          # an empty spool: no free page, nothing to drop
        sp.put_many([alert(i, pad=4000) for i in range(5)])
        assert sp.fault_stats()["held"] == 2
        monkeypatch.setattr(spool_mod, "shutil", FakeDisk(100 * MiB, 50 * MiB))   # space is back
        clock.t += 3600
        sp.maintain()
        st_ = sp.stats()
        assert not st_["disk_full"] and st_["held"] == 0
        assert sorted(i for i in sp.ids() if i.startswith("a-")) == [f"a-{i:06d}" for i in (3, 4)]
        assert st_["dropped"] == 3 and st_["dropped_disk_full"] == 3
        (end,) = [e for e in events if e["event"] == "spool_disk_full" and e.get("state") == "end"]
        assert end["dropped_held"] == 3


@pytest.mark.parametrize("rowid", [0, -7, -(1 << 63)])
def test_a_row_numbered_0_or_below_by_another_program_is_fetched_and_dropped(tmp_path, rowid):
    # the spool file is input too: SQLite allows any 64-bit row id, and a row the spool did not
    # number (0 or below) is still an alert in it: fetched, acknowledged and dropped by the cap
    # like the others, so the depth reaches 0 and a drain ends
    path = tmp_path / "s.db"
    with Spool(path) as sp:
        sp.put_many([alert(1), alert(2)])
    _edit(path, "UPDATE alerts SET id = ? WHERE id = (SELECT MIN(id) FROM alerts WHERE kind = 'alert')",
          (rowid,))
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        assert sp.depth() == 2
        items = sp.fetch(10)
        assert [i.rowid for i in items][0] == rowid and len(items) == 2
        sp.ack([i.rowid for i in items])
        assert sp.depth() == 0
    with Spool(path) as sp:
        sp.put_many([alert(3), alert(4)])
    _edit(path, "UPDATE alerts SET id = ? WHERE id = (SELECT MIN(id) FROM alerts WHERE kind = 'alert')",
          (rowid,))
    with Spool(path, max_bytes=1) as sp:      # over its cap: the oldest go first, that row too
        sp.enforce()
        assert rowid not in {i.rowid for i in sp.fetch(10)}


# -- a full disk: how new alerts are fitted into the spool file's free pages -------------------
# (docs/delivery.md, "How new alerts are fitted into a full disk"). The free space and the disk's
# answers are the test's: the file's free pages are a fixed figure, and each transaction the
# spool writes is recorded (its alert ids and the bytes of old alerts it drops first) and
# accepted or refused as the test says.

@contextlib.contextmanager
def _full_with_scripted_writes(tmp_path: Path, monkeypatch, free: int, refused: int = 0):
    """A spool that does not own its file, holding 3 old alerts, in the disk-full state (the
    volume stays full); its file has `free` bytes of free pages, and the disk refuses the first
    `refused` transactions. Yields the spool and the list of (ids, room) transactions tried."""
    monkeypatch.setattr(spool_mod, "shutil", FakeDisk(100 * MiB, 0))
    with Spool(tmp_path / "s.db", clock=Clock()) as sp:
        sp.put_many([alert(i) for i in range(3)])
        sp._enter_full("simulated: the disk refused a write")
        tried: list = []

        def write(rows, now, room=0):
            tried.append(([r[0] for r in rows], room))
            if len(tried) <= refused:
                raise SpoolFull(f"spool {sp.path}: write failed: database or disk is full")
            return len(rows)

        monkeypatch.setattr(sp, "_free_pages_bytes", lambda: free)
        monkeypatch.setattr(sp, "_write_rows", write)
        yield sp, tried


NEW = [alert(100 + i) for i in range(4)]
NEW_IDS = [a["id"] for a in NEW]


@pytest.mark.parametrize("spare", [0, -1], ids=["exactly-room-for-two", "a-byte-short-of-two"])
def test_on_a_full_disk_a_transaction_takes_the_new_alerts_its_free_pages_hold(tmp_path, monkeypatch, spare):
    # a row counts as its bytes plus a page; rows join one transaction while they leave two pages
    # of the free space spare: k rows of s bytes need k*s + (k+1) pages. The free space is read
    # again before each transaction; rows that fit need no room made (no alert dropped).
    page = 4096
    s = size_of(NEW[0])
    with _full_with_scripted_writes(tmp_path, monkeypatch, free=2 * s + 3 * page + spare) as (sp, tried):
        assert sp._page_size() == page
        assert sp.put_many(NEW) == 4
        if spare == 0:
            assert tried == [(NEW_IDS[:2], 0), (NEW_IDS[2:], 0)]
        else:
            assert tried == [([i], 0) for i in NEW_IDS]
        assert sp.fault_stats()["held"] == 0


@pytest.mark.parametrize("spare", [0, -1], ids=["exactly-room-for-one", "a-byte-short-of-one"])
def test_on_a_full_disk_an_alert_with_no_room_goes_alone_and_makes_room_for_itself(tmp_path, monkeypatch, spare):
    # one row needs its bytes plus two pages; with less free, each new alert is written alone,
    # in a transaction that first drops the oldest alerts holding its bytes plus four pages
    page = 4096
    s = size_of(NEW[0])
    with _full_with_scripted_writes(tmp_path, monkeypatch, free=s + 2 * page + spare) as (sp, tried):
        assert sp.put_many(NEW) == 4
        room = 0 if spare == 0 else s + 4 * page
        assert tried == [([i], room) for i in NEW_IDS]


def test_on_a_full_disk_a_refused_transaction_is_tried_again_making_four_times_the_room(tmp_path, monkeypatch):
    # the estimate fell short (the disk refused the commit): the same rows are tried again,
    # dropping four times their bytes plus four pages of the oldest alerts, then four times
    # that; the third attempt goes through and the next transaction starts from no room again
    page = 4096
    s = size_of(NEW[0])
    with _full_with_scripted_writes(tmp_path, monkeypatch, free=2 * s + 3 * page, refused=2) as (sp, tried):
        assert sp.put_many(NEW) == 4
        first = 4 * (2 * s + 4 * page)
        assert tried == [(NEW_IDS[:2], 0), (NEW_IDS[:2], first), (NEW_IDS[:2], 4 * first),
                         (NEW_IDS[2:], 0)]
        assert sp.fault_stats()["held"] == 0


def test_on_a_full_disk_an_alert_refused_with_room_made_is_tried_with_four_times_that_room(tmp_path, monkeypatch):
    page = 4096
    s = size_of(NEW[0])
    with _full_with_scripted_writes(tmp_path, monkeypatch, free=0, refused=1) as (sp, tried):
        assert sp.put_many(NEW[:1]) == 1
        assert tried == [(NEW_IDS[:1], s + 4 * page), (NEW_IDS[:1], 4 * (s + 4 * page))]


def test_on_a_full_disk_three_refusals_in_a_row_leave_the_rest_waiting_in_memory(tmp_path, monkeypatch):
    # three attempts at most: then the rows not yet written wait in memory (counted as new),
    # to be written when space returns
    page = 4096
    s = size_of(NEW[0])
    with _full_with_scripted_writes(tmp_path, monkeypatch, free=2 * s + 3 * page, refused=3) as (sp, tried):
        assert sp.put_many(NEW) == 4
        assert [ids for ids, _ in tried] == [NEW_IDS[:2]] * 3
        assert sp.fault_stats()["held"] == 4


def test_the_listings_show_the_newest_100_dead_letters_and_50_health_events_by_default(tmp_path):
    # docs/delivery.md, "The spool": Spool.dead_letters() lists the newest 100 dead letters and
    # Spool.health_events() the newest 50 health events unless asked for another number
    clock = Clock()
    with Spool(tmp_path / "s.db", clock=clock, health_alerts=False) as sp:
        sp.put_many([alert(i) for i in range(101)])
        sp.dead_letter([(it.rowid, "rejected", 400) for it in sp.fetch(101)])
        assert [d["id"] for d in sp.dead_letters()] == [alert(i)["id"] for i in range(100, 0, -1)]
        for i in range(51):
            with sp._tx():
                sp._insert_event("spool_overflow", f"m{i}", {"n": i}, clock())
        assert [e["detail"]["n"] for e in sp.health_events()] == list(range(50, 0, -1))


def test_a_volume_goal_of_nothing_still_waits_for_a_commit(tmp_path):
    # wait_for_volume(): a goal of 0 rows or 0 bytes counts as one (the wait is for a commit,
    # never reached before anything was committed after `since`)
    with Spool(tmp_path / "s.db") as sp:
        since = sp.put_volume
        assert sp.wait_for_volume(since, 0, 10**9, 0.0) is False
        assert sp.wait_for_volume(since, 10**9, 0, 0.0) is False
        sp.put(alert(1))
        assert sp.wait_for_volume(since, 0, 10**9, 0.0) is True
        assert sp.wait_for_volume(since, 10**9, 0, 0.0) is True


def test_a_heal_numbers_the_fresh_rows_from_just_above_the_highest_id_handed_out(tmp_path):
    # docs/delivery.md, "Faults": the fresh spool numbers its rows from just above the highest
    # row id fetch() handed out before the heal, and from 1, like any new spool, when none was
    # (a fetch that found nothing hands out nothing)
    with Spool(tmp_path / "s.db", owner=True, reserve_bytes=0, health_alerts=False) as sp:
        assert sp.fetch(10) == []
        sp.put_many([alert(i) for i in range(3)])
        sp._mark_damaged("simulated")
        assert sp.heal() is True
        assert [(it.rowid, it.alert_id) for it in sp.fetch(2)] == [(1, "a-000000"), (2, "a-000001")]
        sp._mark_damaged("simulated")
        assert sp.heal() is True
        assert [(it.rowid, it.alert_id) for it in sp.fetch(10)] == [
            (3, "a-000000"), (4, "a-000001"), (5, "a-000002")]


class _PageSizeUnreadable(sqlite3.Connection):
    """A connection on which PRAGMA page_size fails (an I/O error), everything else as usual."""

    def execute(self, sql, *args):
        if sql.strip().lower() == "pragma page_size":
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


def test_a_page_size_that_cannot_be_read_is_taken_as_sqlites_default_4096(tmp_path, monkeypatch):
    # docs/delivery.md, "Faults": the bound of a lost WAL is 32 pages of the file's page size,
    # of 4,096 bytes (SQLite's default) when that size cannot be read
    path = tmp_path / "s.db"
    _lose_the_wal_of_a_64k_page_spool(path)
    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: real(*a, factory=_PageSizeUnreadable, **kw))
    with Spool(path, owner=True, reserve_bytes=0) as sp2:
        assert sp2.wal_lost == {"at_risk_bytes": 32 * 4096}
        assert sp2._page_size() == 4096


def test_a_failed_salvage_puts_back_the_damaged_file_alone_without_the_fresh_spools_log(tmp_path, monkeypatch):
    # docs/delivery.md, "Faults": a salvage that fails after moving the file aside puts the
    # damaged file back; the fresh spool's -wal and -shm go with the fresh spool, even when another
    # process (etw-sensor spool, looking in) kept them: a -wal left next to the damaged file would
    # be read as that file's own log by the next attempt
    path = tmp_path / "s.db"
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        sp.put_many([alert(i) for i in range(3)])
    Path(str(path) + ".damaged").write_text("simulated\n")
    real = Spool._insert_dead
    looking: list = []

    def insert_dead(self, rows, now):
        if self._opening and not looking:
            reader = raw(path)                        # another process reads the fresh spool
            reader.execute("SELECT COUNT(*) FROM alerts").fetchone()
            looking.append(reader)
            raise SpoolFull(f"spool {self.path}: salvage failed: database or disk is full")
        return real(self, rows, now)

    monkeypatch.setattr(Spool, "_insert_dead", insert_dead)
    try:
        with pytest.raises(SpoolError):
            Spool(path, owner=True, reserve_bytes=0)
        assert len(looking) == 1 and not list(tmp_path.glob("s.db.damaged-*"))
        assert not os.path.exists(str(path) + "-wal") and not os.path.exists(str(path) + "-shm")
    finally:
        for reader in looking:
            reader.close()
    with Spool(path, owner=True, reserve_bytes=0) as sp:
        assert sp.salvage is not None and sp.salvage["lost"] == 0
        assert {alert(i)["id"] for i in range(3)} <= set(sp.ids())


def test_a_dead_letter_is_not_tried_again_when_a_reader_keeps_the_checkpoint_from_the_end(volume):
    # docs/delivery.md, "Failure handling": the full disk is not asked twice in a row. A
    # checkpoint that a reader stops short of the end of the WAL (the reader began before the
    # last commits) frees nothing: the WAL cannot start over while that reader is in it
    vol = volume("2m")
    sp = Spool(vol / "s.db")                                 # not the owner: no reserve
    try:
        sp.put_many([alert(i) for i in range(5)])
        (item,) = sp.fetch(1)
        sp._checkpoint()
        pin = _pin_the_wal(vol / "s.db")
        sp.put_many([alert(100 + i, pad=3000) for i in range(5)])   # after the reader's snapshot
        filler = fill(vol)
        try:
            _refused_after_one_try(sp, item)
        finally:
            pin.rollback()
            pin.close()
            filler.unlink()
    finally:
        sp.close()


def test_damage_found_after_the_spools_folder_was_moved_makes_no_folder_for_its_marker(tmp_path, caplog):
    # docs/delivery.md, "Faults": the owner writes the <spool>.damaged marker next to the spool
    # file; when that folder is gone (moved away by someone), no folder is made at its old path
    # (a new spool there would be salvaged for damage it never had); the log and the callback
    # still say so
    folder = tmp_path / "data"
    seen: list = []
    with Spool(folder / "s.db", owner=True, reserve_bytes=0, on_health=seen.append) as sp:
        folder.rename(tmp_path / "moved")
        try:
            with caplog.at_level(logging.CRITICAL, logger="sensor.spool"):
                sp._mark_damaged("index does not match its table")
            assert not folder.exists()
            assert sp.fault_stats()["damaged"] is True and "ALERT SPOOL DAMAGED" in caplog.text
            assert [e["event"] for e in seen] == ["spool_damaged"]
        finally:
            (tmp_path / "moved").rename(folder)


def test_the_cap_holds_when_the_health_alert_grows_as_it_counts_more_drops(tmp_path):
    # docs/delivery.md, "Cap": past max_bytes the oldest alerts are dropped. Making room for the
    # health alert drops more, and counting those in the same health alert makes its text longer
    # (9 dropped becomes 10): the cap makes room for that too, as long as alerts are left to drop.
    # 15 alerts written at once under every cap above 6 alerts' bytes up to 7 (9 dropped first).
    one = size_of(alert(0))
    over = []
    for cap in range(6 * one + 1, 7 * one + 1):
        path = tmp_path / f"s{cap}.db"
        with Spool(path, max_bytes=cap, clock=Clock(), sync="normal") as sp:
            sp.put_many([alert(i) for i in range(15)])
            st_ = sp.stats()
            if st_["bytes"] > cap and any(i.startswith("a-") for i in sp.ids()):
                over.append((cap, st_["bytes"]))
    assert over == []
