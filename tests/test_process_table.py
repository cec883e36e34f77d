"""Process table, psutil back-fill, system-logger join; and a live stand-in with real child processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from sensor.enrich.backfill import Backfiller
from sensor.enrich.process_table import join_cmdline
from sensor.enrich.process_table import ProcessTable, filetime_from_unix, unix_from_filetime
from sensor.sources.etw import EtwProcessor, utc_time

S = 10_000_000            # FILETIME ticks per second
T0 = 133_500_000_000_000_000


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_filetime_round_trip_and_utc_time():
    assert unix_from_filetime(filetime_from_unix(1_700_000_000.25)) == pytest.approx(1_700_000_000.25)
    assert utc_time(filetime_from_unix(0)) == "1970-01-01 00:00:00.000"
    assert utc_time(2**64 - 1) is None and utc_time(0) is None


def test_identity_by_sequence_number_and_create_time():
    t = ProcessTable(create_tolerance=0.01)
    a = t.add(10, T0, seq=77, image="C:\\a.exe")
    assert t.get(10, seq=77) is a and t.get(10, seq=78) is None
    assert t.get(10, T0 + 50_000) is a                    # within 5 ms
    assert t.get(10, T0 + S) is None
    # The same generation seen again (rundown after a psutil seed) merges instead of duplicating.
    b = t.add(10, T0 + 10, seq=None, command_line="a.exe /x", source="psutil")
    assert b is a and a.command_line == "a.exe /x" and len(t) == 1


def test_parent_even_after_exit_then_expiry():
    clock = Clock()
    t = ProcessTable(exit_ttl=60, clock=clock)
    t.add(100, T0, image="C:\\Windows\\System32\\cmd.exe", command_line="cmd /c x")
    assert t.exited(100, T0, exit_time=T0 + 5 * S)
    p = t.parent_of(100, T0 + 2 * S)                      # child started before the parent exited
    assert p is not None and p.command_line == "cmd /c x"
    clock.t = 59
    t.expire()
    assert t.parent_of(100, T0 + 2 * S) is not None
    clock.t = 61
    t.expire()
    assert t.parent_of(100, T0 + 2 * S) is None and len(t) == 0 and t.expired == 1


def test_pid_reuse_guard():
    t = ProcessTable(create_tolerance=0.01)
    t.add(200, T0 + 10 * S, image="C:\\new.exe")           # pid 200 recycled after the child started
    assert t.parent_of(200, T0) is None
    assert t.reuse_rejected == 1
    t2 = ProcessTable(create_tolerance=0.01)
    t2.add(300, T0, image="C:\\old.exe")
    t2.exited(300, T0, exit_time=T0 + S)
    assert t2.parent_of(300, T0 + 5 * S) is None           # the old 300 was gone before the child
    # Two generations of one pid: the child gets the one alive at its start.
    t2.add(300, T0 + 3 * S, image="C:\\new.exe")
    assert t2.parent_of(300, T0 + 5 * S).image == "C:\\new.exe"
    assert t2.parent_of(300, T0 + S // 2).image == "C:\\old.exe"


def test_new_generation_marks_old_one_exited():
    t = ProcessTable(create_tolerance=0.01)
    old = t.add(5, T0, image="a")
    t.add(5, T0 + 100 * S, image="b")
    assert old.exited and t.get(5).image == "b"


def test_bounded_evicts_exited_first():
    clock = Clock()
    t = ProcessTable(max_entries=3, clock=clock)
    t.add(1, T0)
    t.add(2, T0)
    t.add(3, T0)
    t.exited(2, T0)
    t.add(4, T0)
    assert len(t) == 3 and t.get(2, T0) is None and t.get(1, T0) is not None
    t.add(5, T0)                                          # nothing exited: the oldest goes
    assert len(t) == 3 and t.get(1, T0) is None and t.evicted == 2


class FakeProc:
    def __init__(self, ps, pid):
        self.ps, self.pid = ps, pid
        spec = ps.procs.get(pid)
        if spec is None:
            raise psutil.NoSuchProcess(pid)
        self.spec = spec

    def oneshot(self):
        import contextlib
        return contextlib.nullcontext()

    def _get(self, name):
        v = self.spec[name]
        if isinstance(v, Exception):
            raise v
        return v

    def create_time(self):
        return self._get("create_time")

    def cmdline(self):
        return self._get("cmdline")

    def username(self):
        return self._get("username")

    def cwd(self):
        return self._get("cwd")


class FakePsutil:
    NoSuchProcess = psutil.NoSuchProcess
    AccessDenied = psutil.AccessDenied

    def __init__(self, procs):
        self.procs = procs

    def Process(self, pid):
        return FakeProc(self, pid)

    def process_iter(self, attrs):
        from types import SimpleNamespace
        for pid, spec in self.procs.items():
            yield SimpleNamespace(info={"pid": pid, "ppid": spec.get("ppid"), "create_time": spec["create_time"],
                                        "exe": spec.get("exe"), "name": None, "cmdline": spec.get("cmdline"),
                                        "username": spec.get("username")})


def test_backfill_counts_each_kind_of_miss():
    now = 1_700_000_000.0
    ps = FakePsutil({
        1: {"create_time": now, "cmdline": ["a", "b c"], "username": "u", "cwd": "/x"},
        2: {"create_time": now, "cmdline": psutil.AccessDenied(2), "username": "u", "cwd": "/x"},
        3: {"create_time": now + 60, "cmdline": ["new"], "username": "u", "cwd": "/"},
        4: {"create_time": now, "cmdline": psutil.ZombieProcess(4), "username": "u", "cwd": "/"},
    })
    bf = Backfiller(psutil_module=ps, create_tolerance=0.5)
    assert bf.fields == ("CommandLine", "User", "CurrentDirectory")   # no token reader given
    ct = filetime_from_unix(now)
    ev, origin = {"CommandLine": None, "User": None, "CurrentDirectory": None}, {}
    assert bf.fill(ev, 1, ct, origin) == 3
    assert ev["CommandLine"] == join_cmdline(["a", "b c"]) and origin["User"] == "backfill"
    ev2, o2 = {"CommandLine": None, "User": None, "CurrentDirectory": None}, {}
    bf.fill(ev2, 2, ct, o2)
    assert ev2["CommandLine"] is None and o2["CommandLine"] == "missing" and ev2["User"] == "u"
    ev3, o3 = {"CommandLine": None, "User": None, "CurrentDirectory": None}, {}
    assert bf.fill(ev3, 3, ct, o3) == 0 and o3["CommandLine"] == "missing"   # pid reused
    bf.fill({"CommandLine": None, "User": None, "CurrentDirectory": None}, 4, ct, {})
    bf.fill({"CommandLine": None, "User": None, "CurrentDirectory": None}, 99, ct, {})   # gone
    s = bf.stats()
    assert s["miss_gone"] == 2 and s["miss_pid_reused"] == 1
    assert s["miss_access_denied"] == {"CommandLine": 1} and s["hits"]["CommandLine"] == 1
    assert s["complete"] == 1 and s["attempts"] == 5


def test_seed_from_fake_psutil():
    ps = FakePsutil({7: {"create_time": 1_700_000_000.0, "ppid": 1, "exe": "/bin/x", "cmdline": ["x", "-y"],
                         "username": "root"}})
    t = ProcessTable()
    assert t.seed_from_psutil(ps) == 1
    e = t.get(7)
    assert e.image == "/bin/x" and e.command_line == join_cmdline(["x", "-y"]) and e.source == "psutil"


# -- system-logger join -----------------------------------------------------------------------

def start_fields(pid, ppid, ct, image="\\Device\\HarddiskVolume3\\Windows\\System32\\wbem\\mofcomp.exe"):
    return {"ProcessID": pid, "CreateTime": ct, "ParentProcessID": ppid, "SessionID": 1, "ImageName": image}


def sl_fields(pid, ppid, cmd, sid="S-1-5-18"):
    return {"UniqueProcessKey": 1, "ProcessId": pid, "ParentId": ppid, "SessionId": 1, "ExitStatus": 259,
            "DirectoryTableBase": 0, "Flags": 0, "UserSID": sid, "ImageFileName": "mofcomp.exe",
            "CommandLine": cmd, "PackageFullName": "", "ApplicationId": ""}


def processor(**kw):
    clock = Clock()
    mapper = {"\\Device\\HarddiskVolume3": "C:"}
    from sensor.enrich.devices import DeviceMapper
    p = EtwProcessor(device_mapper=DeviceMapper(devices=mapper), clock=clock, **kw)
    return p, clock


def test_system_logger_record_first_then_start():
    p, _ = processor(join_wait=0.05)
    assert p.on_system_logger(1, sl_fields(40, 4, "mofcomp.exe C:\\Users\\Public\\x.mof"), T0 + 1000) == []
    [ev] = p.on_start(start_fields(40, 4, T0))
    assert ev["CommandLine"] == "mofcomp.exe C:\\Users\\Public\\x.mof"
    assert ev["User"] == "NT AUTHORITY\\SYSTEM"
    assert ev.origin["CommandLine"] == "system_logger" and ev.origin["User"] == "system_logger"
    assert ev["Image"] == "C:\\Windows\\System32\\wbem\\mofcomp.exe"
    assert p.stats()["sl_joined"] == 1


def test_start_waits_for_its_system_logger_record():
    p, clock = processor(join_wait=0.05, sid_resolver=lambda sid: "CORP\\alice")
    assert p.on_start(start_fields(41, 4, T0)) == []       # held
    assert p.next_deadline() == pytest.approx(0.05)
    [ev] = p.on_system_logger(1, sl_fields(41, 4, "cmd /c whoami", "S-1-5-21-1-2-3-1001"), T0 + 20_000)
    # the account lookup runs on the resolver thread: this event carries the SID, later ones the name
    assert ev["CommandLine"] == "cmd /c whoami" and ev["User"] == "S-1-5-21-1-2-3-1001"
    deadline = time.monotonic() + 10
    while p.sids.stats().get("resolved") != 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert p._user("S-1-5-21-1-2-3-1001") == "CORP\\alice"
    # A start whose record never comes is emitted when its wait ends, marked missing.
    assert p.on_start(start_fields(42, 4, T0)) == []
    clock.t = 0.01
    assert p.due() == []
    clock.t = 0.06
    [late] = p.due()
    assert late["ProcessId"] == 42 and late.origin["CommandLine"] == "missing"
    # Its record arriving afterwards still reaches the table, for its children.
    p.on_system_logger(1, sl_fields(42, 4, "late.exe /q"), T0 + 10)
    assert p.table.get(42).command_line == "late.exe /q" and p.stats()["sl_late"] == 1
    assert p.on_start(start_fields(43, 42, T0 + S)) == []   # held for its own record
    clock.t = 1.0
    [child] = p.due()
    assert child["ParentCommandLine"] == "late.exe /q"


def test_system_logger_record_of_another_parent_is_not_joined():
    p, clock = processor(join_wait=0.05)
    p.on_system_logger(1, sl_fields(50, 999, "other"), T0)
    assert p.on_start(start_fields(50, 4, T0)) == []
    clock.t = 1.0
    [ev] = p.due()
    assert ev["CommandLine"] is None
    clock.t = 10.0
    p.on_system_logger(1, sl_fields(51, 4, "x"), T0)        # triggers expiry of the unmatched one
    assert p.stats()["sl_unmatched"] == 1


def test_system_logger_rundown_gives_parent_command_lines():
    p, _ = processor()
    p.on_kernel_process(15, start_fields(60, 4, T0, "\\Device\\HarddiskVolume3\\Windows\\explorer.exe"))
    p.on_system_logger(3, sl_fields(60, 4, "C:\\Windows\\Explorer.EXE"), T0 + 99 * S)
    [ev] = p.on_start(start_fields(61, 60, T0 + 100 * S))
    assert ev["ParentImage"] == "C:\\Windows\\explorer.exe"
    assert ev["ParentCommandLine"] == "C:\\Windows\\Explorer.EXE"
    assert ev.origin["ParentCommandLine"] == "process_table"


# -- live stand-in: real child processes on this OS ----------------------------------------------

def _ft(pid):
    return filetime_from_unix(psutil.Process(pid).create_time())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX stand-in (uses sleep/true)")
def test_live_children_through_table_and_backfill(tmp_path):
    table = ProcessTable()
    seeded = table.seed_from_psutil()
    assert seeded > 0 and table.get(os.getpid()) is not None
    bf = Backfiller()
    proc = EtwProcessor(table, bf, device_mapper=lambda p: p)
    me = psutil.Process()

    # A long-lived parent: waits for a line, starts a long-lived child, prints its pid, exits.
    script = ("import subprocess, sys; sys.stdin.readline(); "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', 'child-marker']); "
              "print(c.pid, flush=True)")
    parent = subprocess.Popen([sys.executable, "-c", script, "parent-marker"], cwd=tmp_path,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child_pid = None
    try:
        parent_ct = _ft(parent.pid)
        [pev] = proc.on_start(start_fields(parent.pid, os.getpid(), parent_ct, sys.executable))
        assert pev["CommandLine"] == join_cmdline([sys.executable, "-c", script, "parent-marker"])
        assert pev.origin["CommandLine"] == "backfill"
        assert pev["CurrentDirectory"] == str(tmp_path)
        assert pev["User"] == me.username()
        assert pev["ParentImage"] == me.exe() and pev["ParentCommandLine"] == join_cmdline(me.cmdline())
        assert pev.origin["ParentImage"] == "process_table"

        parent.stdin.write("go\n")
        parent.stdin.flush()
        child_pid = int(parent.stdout.readline())
        child_ct = _ft(child_pid)
        parent.wait(10)
        proc.on_kernel_process(2, {"ProcessID": parent.pid, "CreateTime": parent_ct,
                                   "ExitTime": filetime_from_unix(time.time())})
        assert table.get(parent.pid, parent_ct).exited

        # The child's start is handled after its parent is gone: the table still knows the parent.
        [cev] = proc.on_start(start_fields(child_pid, parent.pid, child_ct, sys.executable))
        assert cev["CommandLine"] == join_cmdline([sys.executable, "-c", "import time; time.sleep(30)",
                                                   "child-marker"])
        assert cev["ParentImage"] == sys.executable
        assert "parent-marker" in cev["ParentCommandLine"]
        assert cev.origin["ParentCommandLine"] == "process_table"
    finally:
        if child_pid:
            try:
                psutil.Process(child_pid).kill()
            except psutil.NoSuchProcess:
                pass
        if parent.poll() is None:
            parent.kill()
        parent.wait(10)
        parent.stdin.close()
        parent.stdout.close()

    # Short-lived and still running when its start is handled: captured.
    # (it ends when the test kills it: a fixed lifetime could end first on a loaded machine)
    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "short-marker"])
    try:
        [qev] = proc.on_start(start_fields(quick.pid, os.getpid(), _ft(quick.pid), sys.executable))
        assert qev["CommandLine"].endswith("short-marker") and qev.origin["CommandLine"] == "backfill"
    finally:
        quick.kill()
        quick.wait(60)

    # Short-lived and gone (reaped) before its start is handled: a counted miss, field missing.
    gone_before = bf.gone
    t_spawn = time.time()
    done = subprocess.Popen(["true"])
    done.wait(10)
    [gev] = proc.on_start(start_fields(done.pid, os.getpid(), filetime_from_unix(t_spawn), "/bin/true"))
    assert gev["CommandLine"] is None and gev.origin["CommandLine"] == "missing"
    assert gev["ParentImage"] == me.exe()                 # the parent link does not need the child
    assert bf.gone == gone_before + 1

    # Exited but not reaped (a zombie): also a counted miss, never an exception.
    z = subprocess.Popen([sys.executable, "-c", "pass"])
    zct = _ft(z.pid)
    deadline = time.monotonic() + 10
    while psutil.Process(z.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        [zev] = proc.on_start(start_fields(z.pid, os.getpid(), zct, sys.executable))
        assert zev.origin["CurrentDirectory"] == "missing"
        assert bf.gone == gone_before + 2
    finally:
        z.wait(10)



def test_parent_created_within_the_tolerance_after_the_child_is_still_its_parent():
    # psutil and ETW clocks differ by up to the tolerance: a parent whose recorded start is a
    # little *after* the child's is the same process, not a recycled pid
    t = ProcessTable(create_tolerance=0.01)
    tol = t.tolerance
    t.add(400, T0 + tol // 2, image="C:\\jitter.exe")
    assert t.parent_of(400, T0).image == "C:\\jitter.exe"
    t.add(401, T0 + tol, image="C:\\edge.exe")             # exactly at the tolerance: same process
    assert t.parent_of(401, T0).image == "C:\\edge.exe"
    t.add(402, T0 + tol + 1, image="C:\\late.exe")         # one tick beyond: a recycled pid
    assert t.parent_of(402, T0) is None
    # the exit side: gone up to the tolerance before the child started still counts as alive
    t.add(403, T0 - 10 * S, image="C:\\short.exe")
    t.exited(403, T0 - 10 * S, exit_time=T0 - tol)
    assert t.parent_of(403, T0).image == "C:\\short.exe"
    t.add(404, T0 - 10 * S, image="C:\\gone.exe")
    t.exited(404, T0 - 10 * S, exit_time=T0 - tol - 1)
    assert t.parent_of(404, T0) is None


def test_newest_generation_wins_when_the_old_stop_event_was_lost():
    # pid 300 ran, its stop event was lost (no exit time), the pid was reused: a child started
    # after the reuse belongs to the new generation, never to the old one
    t = ProcessTable(create_tolerance=0.01)
    t.add(300, T0, image="C:\\old.exe")
    t.add(300, T0 + 3 * S, image="C:\\new.exe")            # marks the old one exited, time unknown
    assert t.parent_of(300, T0 + 5 * S).image == "C:\\new.exe"
    assert t.parent_of(300, T0 + S).image == "C:\\old.exe"   # a child from before the reuse


def test_table_size_must_be_positive():
    with pytest.raises(ValueError, match="max_entries must be >= 1"):
        ProcessTable(max_entries=0)
    t = ProcessTable(max_entries=1)
    t.add(1, T0)
    t.add(2, T0)
    assert [e.pid for e in t] == [2] and t.evicted == 1


def test_merging_fills_gaps_and_never_erases_and_etw_image_wins():
    t = ProcessTable(create_tolerance=0.01)
    seed = t.add(20, T0, image="cmd.exe", command_line="cmd /c a", user="bob", source="psutil")
    # the same generation from ETW: its full image path wins; the rest only fills what is missing
    e = t.add(20, T0, seq=9, ppid=4, parent_seq=3, image="C:\\Windows\\System32\\cmd.exe",
              command_line="other", user="eve")
    assert e is seed and t.merged == 1 and t.added == 1
    assert (e.seq, e.ppid, e.parent_seq) == (9, 4, 3)
    assert (e.image, e.command_line, e.user) == ("C:\\Windows\\System32\\cmd.exe", "cmd /c a", "bob")
    # a later seed never replaces an image, and empty values never erase
    t.add(20, T0, seq=9, image="cmd.exe", command_line="", user=None, source="psutil")
    assert (e.image, e.command_line, e.user) == ("C:\\Windows\\System32\\cmd.exe", "cmd /c a", "bob")
    # a generation first seen without a create time gets it from a later sighting
    late = t.add(21, None, seq=5)
    t.add(21, T0 + 7, seq=5, ppid=8)
    assert (late.create_time, late.ppid) == (T0 + 7, 8)
    # a seed that had no image takes the first one offered
    t.add(22, T0, image=None, source="psutil")
    assert t.add(22, T0, image="x.exe", source="psutil").image == "x.exe"


def test_at_most_four_generations_per_pid():
    t = ProcessTable(create_tolerance=0.01)
    for i in range(6):
        t.add(7, T0 + i * 100 * S, image=f"gen{i}")
    assert sorted(e.image for e in t if e.pid == 7) == ["gen2", "gen3", "gen4", "gen5"]
    assert len(t) == 4
    assert [e.exited for e in t] == [True, True, True, False]


def test_exited_reports_whether_it_knew_the_process():
    t = ProcessTable(create_tolerance=0.01)
    assert t.exited(1, T0) is False                        # never seen
    t.add(1, T0)
    assert t.exited(1, T0, exit_time=T0 + S) is True
    assert t.exited(1, T0) is False                        # already stopped
    assert t.get(1, T0).exit_time == T0 + S


def test_identity_unknown_on_one_side_means_the_live_generation():
    t = ProcessTable(create_tolerance=0.01)
    old = t.add(9, T0, image="old")
    new = t.add(9, T0 + 100 * S, image="new")
    assert t.get(9) is new and t.get(9, seq=4) is new       # no create time, no seq recorded
    assert t.get(9, T0) is old
    t.exited(9, T0 + 100 * S)
    assert t.get(9) is None                                # no live generation left


def test_exited_entries_expire_at_their_time_and_not_before():
    clock = Clock()
    t = ProcessTable(exit_ttl=10, clock=clock)
    t.add(1, T0)
    t.add(2, T0)
    clock.t = 5
    t.exited(1, T0)
    clock.t = 14.9
    assert t.expire() == 0 and len(t) == 2
    assert t.expire(now=15.0) == 1 and t.get(1, T0) is None and t.get(2, T0) is not None
    assert t.expired == 1


def test_parent_lookup_counts_hits_misses_and_reuse():
    t = ProcessTable(create_tolerance=0.01)
    t.add(50, T0, seq=11, image="a")
    assert t.parent_of(None, T0) is None
    assert t.parent_of(51, T0) is None
    assert t.parent_of(50, T0 + S, parent_seq=11).image == "a"
    assert t.parent_of(50, T0 + S, parent_seq=12) is None   # another generation's number
    assert t.parent_of(50, None).image == "a"                # no start time: nothing to check
    assert t.stats() == {"entries": 1, "added": 1, "merged": 0, "evicted": 0, "expired": 0,
                         "parent_hits": 2, "parent_misses": 3, "reuse_rejected": 1, "restored": 0, "revived": 0}


def test_a_sequence_number_picks_its_generation_among_several():
    t = ProcessTable(create_tolerance=0.01)
    t.add(60, T0, seq=1, image="first")
    t.add(60, T0 + S, seq=2, image="second")
    assert t.parent_of(60, T0 + 2 * S, parent_seq=1).image == "first"
    assert t.parent_of(60, T0 + 2 * S, parent_seq=2).image == "second"


def test_eviction_skips_exited_entries_already_gone():
    clock = Clock()
    t = ProcessTable(max_entries=2, exit_ttl=1, clock=clock)
    t.add(1, T0)
    t.exited(1, T0)
    clock.t = 2
    t.expire()                              # 1 is gone; its exit record is used up
    t.add(2, T0)
    t.add(3, T0)
    t.exited(3, T0)
    t.add(4, T0)                            # full: the exited 3 goes, not the live 2
    assert sorted(e.pid for e in t) == [2, 4]


def test_join_cmdline_quotes_on_windows_only():
    args = ["C:\\Program Files\\x.exe", "a b"]
    expected = '"C:\\Program Files\\x.exe" "a b"' if sys.platform == "win32" else "C:\\Program Files\\x.exe a b"
    assert join_cmdline(args) == expected


def test_filetime_epoch():
    assert filetime_from_unix(0) == 116_444_736_000_000_000
    assert filetime_from_unix(1.5) == 116_444_736_000_000_000 + 15_000_000
    assert unix_from_filetime(116_444_736_000_000_000 + 5) == 5e-7


def test_a_later_sighting_fills_a_missing_user_and_command_line():
    t = ProcessTable(create_tolerance=0.01)
    e = t.add(23, T0, image="a.exe")
    t.add(23, T0, user="CORP\\alice", command_line="a.exe /q", source="psutil")
    assert (e.user, e.command_line) == ("CORP\\alice", "a.exe /q")


def test_the_same_generation_up_to_the_tolerance_and_not_beyond():
    t = ProcessTable(create_tolerance=0.01)
    a = t.add(10, T0)
    assert t.get(10, T0 + t.tolerance) is a and t.get(10, T0 - t.tolerance) is a
    assert t.get(10, T0 + t.tolerance + 1) is None


@pytest.mark.skipif(sys.platform == "win32", reason="the loose default is for psutil's clock off Windows")
def test_default_tolerance_absorbs_psutil_one_second_start_times():
    # Off Windows psutil's create_time is boot time (1 s resolution) plus clock ticks: the same
    # process seen by psutil and by the event stream may differ by up to a second.
    t = ProcessTable()
    a = t.add(10, T0)
    assert t.get(10, T0 + S) is a and t.get(10, T0 - S) is a
    assert t.get(10, T0 + 2 * S) is None


def test_seed_takes_start_time_parent_name_and_user_from_psutil():
    from types import SimpleNamespace

    class Ps:
        def process_iter(self, attrs):
            yield SimpleNamespace(info={"pid": 8, "ppid": 1, "create_time": 1_700_000_000.5, "exe": None,
                                        "name": "x.exe", "cmdline": [], "username": "CORP\\bob"})
            yield SimpleNamespace(info={"pid": 9, "ppid": None, "create_time": None, "exe": "",
                                        "name": "", "cmdline": None, "username": ""})

    t = ProcessTable()
    assert t.seed_from_psutil(Ps()) == 2
    e = t.get(8)
    assert e.create_time == filetime_from_unix(1_700_000_000.5) and e.ppid == 1
    assert (e.image, e.command_line, e.user) == ("x.exe", None, "CORP\\bob")   # name when no exe
    z = t.get(9)
    assert (z.create_time, z.image, z.command_line, z.user) == (None, None, None, None)


def test_expiry_counts_only_entries_still_in_the_table():
    clock = Clock()
    t = ProcessTable(exit_ttl=10, clock=clock, create_tolerance=0.01)
    for i in range(5):                     # the fifth generation pushes the first out
        t.add(7, T0 + i * 100 * S, image=f"gen{i}")
    assert len(t) == 4
    clock.t = 11
    assert t.expire() == 3 and t.expired == 3 and len(t) == 1


def test_an_older_generation_without_a_sequence_number_may_still_be_the_parent():
    # a psutil seed has no sequence number: when the newer generation's number is not the one the
    # child names, the seed is still a candidate
    t = ProcessTable(create_tolerance=0.01)
    t.add(70, T0, image="seeded.exe", source="psutil")
    t.add(70, T0 + 10 * S, seq=5, image="newer.exe")
    assert t.parent_of(70, T0 + S, parent_seq=3).image == "seeded.exe"


def test_gone_before_the_child_counts_as_a_rejected_reuse():
    t = ProcessTable(create_tolerance=0.01)
    t.add(300, T0, image="C:\\old.exe")
    t.exited(300, T0, exit_time=T0 + S)
    assert t.parent_of(300, T0 + 5 * S) is None
    assert t.reuse_rejected == 1 and t.parent_misses == 1


def test_a_generation_replaced_by_a_newer_one_is_not_the_parent_of_a_later_child():
    # pid 300's stop event was lost; the pid was reused (a new generation at T0+3s) and that one
    # exited at T0+4s. A child started at T0+5s cannot be the old generation's: it was gone before
    # the reuse. The parent is unknown, never the old process.
    t = ProcessTable(create_tolerance=0.01)
    t.add(300, T0, image="C:\\old.exe")
    t.add(300, T0 + 3 * S, image="C:\\new.exe")
    t.exited(300, T0 + 3 * S, exit_time=T0 + 4 * S)
    assert t.parent_of(300, T0 + 5 * S) is None
    assert t.parent_of(300, T0 + S).image == "C:\\old.exe"


def test_default_bound_is_65536_entries():
    # docs/etw.md: "The table is bounded to 65,536 entries by default"
    t = ProcessTable()
    for pid in range(65_536):
        t.add(pid, T0)
    assert len(t) == 65_536 and t.evicted == 0
    t.add(70_000, T0)
    assert len(t) == 65_536 and t.evicted == 1 and t.get(0, T0) is None


def test_default_exit_ttl_is_five_minutes():
    # docs/etw.md: "Entries stay for 5 minutes after the process stops"
    clock = Clock()
    t = ProcessTable(clock=clock)
    t.add(1, T0)
    t.exited(1, T0)
    clock.t = 299.9
    assert t.expire() == 0
    clock.t = 300.0
    assert t.expire() == 1


def test_each_exited_entry_expires_on_its_own_time():
    clock = Clock()
    t = ProcessTable(exit_ttl=10, clock=clock)
    t.add(1, T0)
    t.add(2, T0)
    t.exited(1, T0)                         # due at 10
    clock.t = 5
    t.exited(2, T0)                         # due at 15
    assert t.expire(now=12) == 1 and t.get(1, T0) is None and t.get(2, T0) is not None
    assert t.expire(now=15) == 1 and len(t) == 0


def test_a_generation_gone_before_the_child_rules_out_every_older_one():
    # the old generation's stop came without a time; the pid was reused, and that generation also
    # exited before the child started. Generations of one pid follow each other: everything older
    # was gone even earlier, so the parent is unknown, never the old process.
    t = ProcessTable(create_tolerance=0.01)
    t.add(310, T0, image="C:\\old.exe")
    t.exited(310, T0)                                      # no exit time recorded
    t.add(310, T0 + 3 * S, image="C:\\new.exe")
    t.exited(310, T0 + 3 * S, exit_time=T0 + 4 * S)
    assert t.parent_of(310, T0 + 5 * S) is None
    assert t.parent_of(310, T0 + 3 * S + S // 2).image == "C:\\new.exe"
