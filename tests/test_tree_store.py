"""The process tree saved across restarts: a child started after a restart gets its grandparent.

The trace is raw Kernel-Process records replayed through the capture format's processor; the
"restart" is a second processor that restores what the first saved, then sees a fresh rundown.
"""
from __future__ import annotations

import json
import os
import stat
import threading

from sensor.daemon.tree_store import TreeStore
from sensor.enrich.process_table import ProcessTable
from sensor.sources import capture
from sensor.sources.base import ReadStats
from sensor.sources.etw import EtwConfig, EtwSource
from sensor.sources.etw_raw import SRC_KERNEL_PROCESS

from .test_capture import FT0, write_capture
from .test_lineage import CMD, EXPLORER, PS, rundown, start, stop

S = 10_000_000


def run(path, processor):
    stats = ReadStats()
    header, records = capture.read_records(str(path), stats)
    out = []
    for _, raw in records:
        out += processor.handle(raw)
    out += processor.drain()
    assert stats.errors == []
    return header, {ev["ProcessId"]: ev for ev in out}


def test_a_child_after_a_restart_gets_its_grandparent(tmp_path):
    before = write_capture(tmp_path / "before.jsonl", [
        start(1000, 4, 10, 1, EXPLORER, FT0 - 50 * S),
        start(2000, 1000, 20, 10, CMD, FT0 - 10 * S),
        stop(1000, 10, FT0 - 50 * S, FT0 - 5 * S),         # explorer exits before the restart
    ], system_logger=False)
    header = json.loads(before.read_text().splitlines()[0])
    first = capture.processor_for(header)
    run(before, first)
    store = TreeStore(str(tmp_path / "state" / "process_tree.json"))
    assert store.save(first.table.snapshot())
    if os.name == "posix":
        assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    # the restart: cmd is still running (the rundown says so), explorer is gone
    after = write_capture(tmp_path / "after.jsonl", [
        rundown(2000, 1000, 20, 10, CMD, FT0 - 10 * S),
        start(3000, 2000, 30, 20, PS, FT0),
    ], system_logger=False)
    second = capture.processor_for(header)
    assert second.table.restore(store.load()) == (2, 0)
    _, evs = run(after, second)
    ps = evs[3000]
    assert ps["ParentImage"] == "C:" + CMD and ps["GrandParentImage"] == "C:" + EXPLORER
    assert ps["ParentChain"] == "C:" + EXPLORER + " > C:" + CMD
    assert second.table.stats()["revived"] == 1            # cmd, confirmed by the rundown
    # without the saved tree the grandparent is unknown
    _, evs = run(after, capture.processor_for(header))
    assert evs[3000]["GrandParentImage"] is None


def test_restored_entries_not_confirmed_expire_like_exited_ones():
    clock = [0.0]
    t = ProcessTable(exit_ttl=300, clock=lambda: clock[0])
    t.restore([[1000, FT0, 10, 4, 1, "C:\\x.exe", None, None, False, None],
               [1100, FT0, 11, 4, 1, "C:\\y.exe", None, None, False, None]])
    t.add(1100, FT0, 11, 4, 1, "C:\\y.exe", source="etw")    # the rundown confirms y
    clock[0] = 301.0
    t.expire()
    assert t.get(1000, FT0, 10) is None and t.get(1100, FT0, 11).image == "C:\\y.exe"


def test_malformed_rows_and_files_are_counted_and_skipped(tmp_path):
    t = ProcessTable()
    good = [5, FT0, 1, 4, None, "C:\\a.exe", "a", None, True, FT0 + S]
    rows = [good, [1, 2], "x", [True] * 10, [6, FT0, 1, 4, None, "x" * 40000, None, None, False, None],
            [7, -1, 1, 4, None, None, None, None, False, None]]
    assert t.restore(rows) == (1, 5)
    p = tmp_path / "t.json"
    for text in ("{broken", json.dumps({"format": "other"}),
                 json.dumps({"format": "etw-sensor-process-tree", "version": 9, "entries": []}),
                 json.dumps({"format": "etw-sensor-process-tree", "version": 1, "entries": 5})):
        p.write_text(text)
        store = TreeStore(str(p))
        assert store.load() == [] and store.load_error.startswith(str(p))
    p.write_bytes(b" " * 200)
    assert TreeStore(str(p), max_bytes=100).load() == []
    assert TreeStore(str(tmp_path / "none.json")).load() == []


def test_the_file_is_bounded_keeping_the_newest(tmp_path):
    t = ProcessTable()
    for pid in range(1, 2001):
        t.add(pid, FT0 + pid, ppid=pid - 1, image="C:\\" + "p" * 200 + ".exe", command_line="c" * 300)
    store = TreeStore(str(tmp_path / "t.json"), max_bytes=200_000)
    assert store.save(t.snapshot())
    assert os.path.getsize(store.path) <= 200_000 and store.left_out > 0
    rows = store.load()
    assert rows[-1][0] == 2000 and len(rows) == 2000 - store.left_out


def test_the_etw_source_restores_at_start_and_saves_on_stop(tmp_path):
    from .test_etw_session import FakeBackend
    store = TreeStore(str(tmp_path / "process_tree.json"))
    store.save([[1000, FT0 - 50 * S, 10, 4, 1, "C:" + EXPLORER, "explorer.exe", None, True, FT0 - 5 * S],
                [2000, FT0 - 10 * S, 20, 1000, 10, "C:" + CMD, "cmd.exe /k", None, False, None]])
    cfg = EtwConfig(seed_from_psutil=False, backfill=False, watchdog_interval=0.05)
    be = FakeBackend()
    src = EtwSource(cfg, backend=be, helpers={"device_loader": lambda: {"\\Device\\HarddiskVolume3": "C:"}},
                    tree_store=store)
    got, done = [], threading.Event()

    def emit(ev):
        got.append(ev)
        done.set()
        return True
    src.start(emit)
    try:
        assert src.tree_restored == 2
        sink = be.consumers[0].sink
        sink(rundown(2000, 1000, 20, 10, CMD, FT0 - 10 * S))
        sink(start(3000, 2000, 30, 20, PS, FT0))
        assert done.wait(10.0)
    finally:
        src.stop()
    ev = got[0]
    assert ev["GrandParentImage"] == "C:" + EXPLORER and ev["ParentCommandLine"] == "cmd.exe /k"
    saved = {row[0] for row in store.load()}
    assert {1000, 2000, 3000} <= saved and store.saves == 2


def test_a_saved_tree_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    # the file is the sensor's own (a private folder), but a start must never hang on it
    if not hasattr(os, "mkfifo"):
        import pytest
        pytest.skip("needs mkfifo (POSIX)")
    fifo = tmp_path / "tree.json"
    os.mkfifo(fifo)
    store = TreeStore(str(fifo))
    got: list = []
    t = threading.Thread(target=lambda: got.append(store.load()), daemon=True)
    t.start()
    t.join(60)              # guards a hang only
    try:
        assert not t.is_alive(), "TreeStore.load waited on a FIFO"
    finally:
        if t.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(60)
    assert got == [[]] and store.load_error and "not a regular file" in store.load_error


def _row(**changes):
    # [pid, create_time, seq, ppid, parent_seq, image, command_line, user, exited, exit_time]
    names = ("pid", "ct", "seq", "ppid", "pseq", "image", "cmd", "user", "exited", "exit_time")
    row = dict(zip(names, (500, FT0, 9, 4, 1, "C:\\a.exe", "a /x", "NT AUTHORITY\\SYSTEM", True,
                           FT0 + S)))
    row.update(changes)
    return [row[n] for n in names]


def test_a_saved_row_is_refused_when_any_one_field_is_not_its_documented_type():
    # Each row below is the good row with one field wrong; every one is counted and skipped.
    bad = [
        _row(pid=None),                                   # the pid is the one number never optional
        _row(pid=True), _row(pid=-1), _row(pid=1 << 64), _row(pid="500"),
        _row(ct=-1), _row(ct=1 << 64), _row(ct=1.5),
        _row(seq=-1), _row(seq="9"),
        _row(ppid=-4), _row(ppid=False),
        _row(pseq=-1), _row(pseq=[1]),
        _row(exit_time=-1), _row(exit_time=1 << 64),
        _row(image=5), _row(image="x" * 32769),
        _row(cmd=b"a /x"), _row(cmd="c" * 32769),
        _row(user=7), _row(user="u" * 32769),
        _row(exited=1), _row(exited=None), _row(exited="yes"),
        _row()[:9], _row() + [None], tuple(_row()), {"pid": 500},
    ]
    t = ProcessTable()
    assert t.restore(bad) == (0, len(bad))
    assert len(t) == 0 and t.restored == 0


def test_a_saved_row_at_the_edges_of_its_types_is_restored():
    rows = [
        _row(pid=0, ct=0, seq=0, ppid=0, pseq=0, exit_time=0),              # the idle process
        _row(pid=(1 << 64) - 1, ct=(1 << 64) - 1, seq=(1 << 64) - 1, exit_time=(1 << 64) - 1),
        _row(pid=501, ct=None, seq=None, ppid=None, pseq=None, image=None, cmd=None, user=None,
             exited=False, exit_time=None),
        _row(pid=502, image="i" * 32768, cmd="c" * 32768, user="u" * 32768),
    ]
    t = ProcessTable()
    assert t.restore(rows) == (4, 0)
    assert t.stats()["restored"] == 4 and len(t) == 4
    assert t.get(502, FT0, 9).command_line == "c" * 32768


def test_rows_after_a_malformed_or_an_already_known_one_are_still_restored():
    t = ProcessTable()
    a, b = _row(pid=600), _row(pid=601)
    assert t.restore(["bad", a, a, [1, 2], b]) == (2, 2)     # the second copy of a: known, skipped
    assert t.get(601, FT0, 9) is not None and t.stats()["restored"] == 2


def test_a_saved_process_that_had_exited_is_no_parent_of_a_later_child():
    t = ProcessTable()
    t.restore([_row(pid=700, exited=True, exit_time=FT0 + S),
               _row(pid=701, exited=False, exit_time=None)])
    assert t.parent_of(700, FT0 + 10 * S) is None            # gone before the child started
    assert t.parent_of(701, FT0 + 10 * S).pid == 701         # running at the save: still a parent
    # An event naming the exited generation again does not bring it back to life.
    t.add(700, FT0, 9, 4, 1, "C:\\a.exe", source="etw")
    assert t.stats()["revived"] == 0 and t.parent_of(700, FT0 + 10 * S) is None


def test_a_saved_generation_is_not_merged_with_a_running_one_of_another_sequence_number():
    # Same pid and (nearly) the same start time, but another sequence number: another process.
    t = ProcessTable()
    t.restore([_row(pid=800, seq=9, cmd="old /x", exited=False, exit_time=None)])
    new = t.add(800, FT0 + 1000, 10, 4, 1, "C:\\b.exe", "new /y", source="etw")
    assert new.seq == 10 and new.command_line == "new /y" and new.image == "C:\\b.exe"
    assert t.get(800, seq=10) is new and t.get(800, seq=9).command_line == "old /x"
    assert t.stats()["revived"] == 0


def test_only_restored_entries_are_revived_a_replaced_generation_stays_exited():
    # Sequence 5 of pid 900 is replaced by sequence 6 (its stop event lost): it has exited. A late
    # record of sequence 5 merges into it but does not make two live generations of one pid.
    t = ProcessTable()
    t.add(900, FT0, 5, 4, 1, "C:\\a.exe", source="etw")
    t.add(900, None, 6, 4, 1, "C:\\b.exe", source="etw")
    old = t.add(900, FT0, 5, 4, 1, "C:\\a.exe", source="etw")
    assert old.seq == 5 and old.exited and t.stats()["revived"] == 0
    assert t.get(900).seq == 6                                 # the live generation
