"""The Windows layer of the ETW source against the Windows ABI, on Linux.

``sensor.sources.etw_windows`` declares its structures with fixed-width ctypes types; here they
are compared with the offsets the mingw-w64 headers give (``tests/abi/win64_layout.h``, generated
by ``tests/abi/gen_layout.py`` and regenerated here when mingw is installed).  Then the real
backend (``Win32Backend``) and ``SessionManager`` / ``EtwSource`` run against a fake of the Win32
calls (``tests/abi/fake_win32.c``, built here with the host's C compiler), which reads and
writes every structure at the same generated offsets.
"""
from __future__ import annotations

import ctypes
import struct
import threading
import time

import psutil
import pytest

from sensor.sources import etw_windows as ew
from sensor.sources.etw import EtwConfig, EtwProcessor, EtwSource
from sensor.sources.etw_raw import SRC_KERNEL_PROCESS, SRC_LOST, SRC_SYSTEM_LOGGER
from sensor.sources.etw_session import (
    SessionError,
    SessionManager,
    SessionSpec,
    instance_session_name,
    system_logger_spec,
)

from . import fake_win32
from .fake_win32 import (
    EVENT_TRACE_GUID,
    KERNEL_PROCESS_GUID,
    LOST_EVENT_GUID,
    PROCESS_CLASS_GUID,
    Fake,
    layout,
)
from .test_etw_decode import KP_ROWS, MOF_ROWS, encode, sample_values

WIN64 = layout("win64_layout.h")
WIN32 = layout("win32_layout.h")
is64 = pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="the fake is built for 64-bit hosts")


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory):
    path = fake_win32.build(tmp_path_factory.mktemp("fake-win32"))
    if path is None:
        pytest.skip("no C compiler to build the fake Win32 library")
    return Fake(path)


@pytest.fixture
def fake(fake_lib):
    fake_lib.reset()
    yield fake_lib
    fake_lib.reset()


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def wait_for(cond, timeout=10.0):
    """Wait for ``cond()`` (the timeout only guards a hang)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


# -- the declarations against the headers ------------------------------------------------------

def test_layout_tables_are_what_the_headers_give():
    from .abi import gen_layout
    fresh = gen_layout.generate()
    if not fresh:
        pytest.skip("mingw-w64 is not installed: the committed tables cannot be regenerated here")
    for name, text in fresh.items():
        assert (fake_win32.ABI / name).read_text() == text, f"{name} is stale: run tests/abi/gen_layout.py"


STRUCTS = {name: getattr(ew, name) for name in (
    "GUID", "WNODE_HEADER", "EVENT_TRACE_PROPERTIES", "TRACE_LOGFILE_HEADER", "EVENT_TRACE",
    "EVENT_TRACE_LOGFILEW", "EVENT_DESCRIPTOR", "EVENT_HEADER", "ETW_BUFFER_CONTEXT", "EVENT_RECORD",
    "UNICODE_STRING")}


@is64
def test_ctypes_declarations_match_the_headers():
    checked = 0
    for key, value in WIN64.items():
        struct_name, _, member = key.partition("__")
        cls = STRUCTS.get(struct_name)
        if cls is None:
            continue
        if member == "size":
            assert ctypes.sizeof(cls) == value, key
        else:
            assert getattr(cls, member).offset == value, key
        checked += 1
    assert checked >= 80
    for const in ("EVENT_TRACE_CONTROL_QUERY", "EVENT_TRACE_CONTROL_STOP", "EVENT_TRACE_CONTROL_FLUSH",
                  "EVENT_CONTROL_CODE_ENABLE_PROVIDER", "EVENT_CONTROL_CODE_CAPTURE_STATE",
                  "EVENT_TRACE_REAL_TIME_MODE", "EVENT_TRACE_SYSTEM_LOGGER_MODE",
                  "EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING", "WNODE_FLAG_TRACED_GUID",
                  "PROCESS_TRACE_MODE_REAL_TIME", "PROCESS_TRACE_MODE_EVENT_RECORD", "ERROR_SUCCESS",
                  "ERROR_ACCESS_DENIED", "ERROR_INVALID_PARAMETER", "ERROR_ALREADY_EXISTS",
                  "ERROR_WMI_INSTANCE_NOT_FOUND", "ERROR_CANCELLED", "PROCESS_QUERY_LIMITED_INFORMATION",
                  "TOKEN_QUERY", "STATUS_INFO_LENGTH_MISMATCH", "STATUS_BUFFER_TOO_SMALL",
                  "STATUS_BUFFER_OVERFLOW"):
        assert getattr(ew, const) == WIN64[const], const
    assert ew.TOKEN_INTEGRITY_LEVEL == WIN64["TokenIntegrityLevel"]
    assert WIN64["TOKEN_MANDATORY_LABEL__Label"] == 0       # the label's Sid pointer comes first


def _offsets(table):
    return {"EVENT_RECORD.EventHeader": table["EVENT_RECORD__EventHeader"],
            "EVENT_RECORD.UserDataLength": table["EVENT_RECORD__UserDataLength"],
            "EVENT_RECORD.UserData": table["EVENT_RECORD__UserData"],
            **{f"EVENT_HEADER.{n}": table[f"EVENT_HEADER__{n}"]
               for n in ("Flags", "ThreadId", "ProcessId", "TimeStamp", "ProviderId", "EventDescriptor")},
            **{f"EVENT_DESCRIPTOR.{n}": table[f"EVENT_DESCRIPTOR__{n}"] for n in ("Id", "Version", "Opcode")}}


@pytest.mark.parametrize("table", [WIN64, WIN32], ids=["x64", "x86"])
def test_record_header_unpack_for_both_pointer_sizes(table):
    """The callback's one-unpack format, computed from offsets, reads a record laid out by the
    headers' offsets (written here field by field)."""
    psize = table["POINTER__size"]
    fmt = ew.record_header_format(_offsets(table), psize)
    rec = bytearray(table["EVENT_RECORD__size"])
    h = table["EVENT_RECORD__EventHeader"]
    d = h + table["EVENT_HEADER__EventDescriptor"]
    struct.pack_into("<H", rec, h + table["EVENT_HEADER__Flags"], 0x0240)
    struct.pack_into("<I", rec, h + table["EVENT_HEADER__ThreadId"], 0x1234)
    struct.pack_into("<I", rec, h + table["EVENT_HEADER__ProcessId"], 0x5678)
    struct.pack_into("<q", rec, h + table["EVENT_HEADER__TimeStamp"], 133_444_555_666_777_888)
    struct.pack_into("<I", rec, h + table["EVENT_HEADER__ProviderId"] + table["GUID__Data1"], 0x22FB2CD6)
    struct.pack_into("<H", rec, d + table["EVENT_DESCRIPTOR__Id"], 15)
    struct.pack_into("<B", rec, d + table["EVENT_DESCRIPTOR__Version"], 3)
    struct.pack_into("<B", rec, d + table["EVENT_DESCRIPTOR__Opcode"], 9)
    struct.pack_into("<H", rec, table["EVENT_RECORD__UserDataLength"], 321)
    rec[table["EVENT_RECORD__UserData"]:table["EVENT_RECORD__UserData"] + psize] = \
        (0x0BADF00D).to_bytes(psize, "little")
    assert fmt.unpack(bytes(rec[:fmt.size])) == (0x0240, 0x1234, 0x5678, 133_444_555_666_777_888, 0x22FB2CD6,
                                                 15, 3, 9, 321, 0x0BADF00D)


# -- sessions through the fake ------------------------------------------------------------------

def kp_payload(version=3, **over):
    _, fields = KP_ROWS[(1, version)]
    vals = sample_values(fields, 0)
    vals.update(over)
    return encode(fields, vals)


def sl_payload(version=4, **over):
    _, fields = MOF_ROWS[(1, version)]
    vals = sample_values(fields, 0, mof=True)
    vals.update(over)
    return encode(fields, vals, mof=True)


def manager(fake, spec=None, clock=None, sink=None, **kw):
    return SessionManager(ew.Win32Backend(fake.api), spec or SessionSpec(name="t-kp"),
                          sink or (lambda raw: None), clock=clock or Clock(), watchdog_interval=1.0,
                          backoff_initial=0.5, backoff_max=8.0, **kw)


def calls(fake, prefix):
    return [line for line in fake.log() if line.startswith(prefix)]


@is64
def test_session_start_sets_the_documented_properties(fake):
    mgr = manager(fake)
    mgr.start()
    try:
        start = calls(fake, "StartTraceW")[0]
        assert "name=t-kp BufferSize=256 MinimumBuffers=64 MaximumBuffers=128" in start
        mode = int(start.split("LogFileMode=")[1].split()[0], 16)
        assert mode == (ew.EVENT_TRACE_REAL_TIME_MODE | ew.EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING
                        | ew.EVENT_TRACE_USE_MS_FLUSH_TIMER)
        assert "FlushTimer=20 " in start                  # milliseconds, with the flag above
        assert "ClientContext=1 WnodeFlags=0x20000" in start
        enable = calls(fake, "EnableTraceEx2")
        assert "provider=22FB2CD6 code=1 level=4 any=0x10 all=0x0 timeout=10000 params=null" in enable[0]
        assert "code=2" in enable[1]
        assert fake.session("t-kp", "rundowns") == 1 and fake.session("t-kp", "rundowns_lost") == 0
        assert calls(fake, "OpenTraceW")[0] == "OpenTraceW name=t-kp ProcessTraceMode=0x10000100 callback=set"
        assert wait_for(lambda: calls(fake, "ProcessTrace handle="))
        assert mgr.alive
    finally:
        mgr.stop()
    assert fake.session("t-kp", "BufferSize") == -1           # gone
    assert not mgr.alive and any(line.startswith("CloseTrace") for line in fake.log())


@is64
def test_capture_state_waits_for_the_enable(fake):
    """EnableTraceEx2 with Timeout 0 returns before the enable is applied: the capture-state
    request after it would reach the provider first and the rundown would be lost."""
    mgr = manager(fake)
    mgr.start()
    try:
        assert fake.session("t-kp", "rundowns") == 1 and fake.session("t-kp", "rundowns_lost") == 0
    finally:
        mgr.stop()


@is64
def test_system_logger_session_properties(fake):
    mgr = manager(fake, system_logger_spec(name="t-sl"))
    mgr.start()
    try:
        start = calls(fake, "StartTraceW")[0]
        mode = int(start.split("LogFileMode=")[1].split()[0], 16)
        assert mode & ew.EVENT_TRACE_SYSTEM_LOGGER_MODE and "EnableFlags=0x1 " in start
        assert not calls(fake, "EnableTraceEx2")
    finally:
        mgr.stop()


@is64
def test_stale_session_is_stopped_and_its_losses_are_not_ours(fake):
    fake.add_session("t-kp")                   # left by a crashed run of this instance
    mgr = manager(fake)
    mgr.start()
    try:
        assert mgr.stale_stopped == 1 and mgr.alive and mgr.lost.events_lost == 0
        assert calls(fake, "ControlTraceW")[0] == "ControlTraceW handle=0 name=t-kp code=1"
    finally:
        mgr.stop()


@is64
def test_flush_and_query_get_fresh_properties_across_restarts(fake):
    """ControlTrace writes the session's handle, GUID and counters back into its block; the
    documentation asks for a zeroed block.  A reused block fails from the second flush on."""
    clock = Clock()
    mgr = manager(fake, clock=clock)
    mgr.start()
    try:
        for _ in range(5):
            clock.t += 0.02
            mgr.tick()
        fake.set_session("t-kp", "EventsLost", 7)
        clock.t += 1.0
        assert mgr.check() is None and mgr.lost.events_lost == 7
        # stopped from outside (logman stop): the watchdog restarts it, then flushes go on
        ew.Win32Backend(fake.api).stop_session(mgr.spec)
        assert wait_for(lambda: not mgr.consumer.alive)
        clock.t += 20.0
        assert mgr.check() == "consumer_died" and mgr.alive
        for _ in range(5):
            clock.t += 0.02
            mgr.tick()
        assert mgr.flush_errors == 0 and mgr.flushes == 10 and mgr.query_errors == 0
        assert fake.session("t-kp", "flushes") == 5           # the new session's own
    finally:
        mgr.stop()


@is64
def test_consumer_that_fails_at_once_is_retried_with_backoff(fake):
    """ProcessTrace returning an error at once: the watchdog must not rebuild the session at
    every check; the failures and ProcessTrace's status are recorded."""
    fake.set(process_trace_status=ew.ERROR_CANCELLED)
    clock = Clock()
    mgr = manager(fake, clock=clock)
    mgr.start()
    try:
        for _ in range(100):                               # 10 s of ticks
            c = mgr.consumer
            if c is not None:
                assert wait_for(lambda: not c.alive)
            clock.t += 0.1
            mgr.tick()
        opens = len(calls(fake, "OpenTraceW"))
        st = mgr.stats()
        assert opens <= 5, opens                           # 0, 1.5, 3.5, 6.5 s (back-off 0.5, 1, 2, 4)
        assert st["start_failures"] >= 3 and st["restarts"] >= 3
        assert "1223" in st["last_error"]
        assert st["consumer_exits"] == {"1223": opens - 1 if mgr.consumer else opens}
    finally:
        mgr.stop()


@is64
@pytest.mark.parametrize("invalid_32", [0, 1], ids=["all-ones", "32-bit"])
def test_opentrace_failure_with_either_invalid_handle(fake, invalid_32):
    fake.set(open_fail=ew.ERROR_ACCESS_DENIED, open_invalid_32=invalid_32)
    mgr = manager(fake)
    with pytest.raises(SessionError, match=r"OpenTrace\('t-kp'\) failed: Windows error 5 \(fake message 5\)"):
        mgr.start()
    assert not mgr.alive and fake.session("t-kp", "BufferSize") == -1   # nothing left running


@is64
def test_start_failure_names_the_error(fake):
    fake.set(start_fail_status=5, start_fail_count=1)
    with pytest.raises(SessionError, match="Windows error 5 .*run elevated"):
        manager(fake).start()


def test_level_must_be_a_uchar():
    with pytest.raises(ValueError, match="level"):
        SessionSpec(level=256).validate()
    with pytest.raises(ValueError, match="level"):
        SessionSpec(level=-1).validate()
    with pytest.raises(ValueError, match="keywords"):
        SessionSpec(keywords=1 << 64).validate()
    SessionSpec(level=255).validate()


@is64
def test_level_reaches_enable_as_a_byte(fake):
    mgr = manager(fake, SessionSpec(name="t-kp", level=255))
    mgr.start()
    try:
        assert "level=255 " in calls(fake, "EnableTraceEx2")[0]
    finally:
        mgr.stop()


@is64
def test_two_instances_keep_their_own_sessions(fake, tmp_path):
    a = instance_session_name("etw-sensor", str(tmp_path / "a"))
    b = instance_session_name("etw-sensor", str(tmp_path / "b"))
    assert a != b and a == instance_session_name("etw-sensor", str(tmp_path / "a" / ".." / "a"))
    clock = Clock()
    ma, mb = manager(fake, SessionSpec(name=a), clock), manager(fake, SessionSpec(name=b), clock)
    ma.start()
    mb.start()
    try:
        for _ in range(5):
            clock.t += 1.0
            assert ma.check() is None and mb.check() is None
        assert ma.stale_stopped == mb.stale_stopped == 0 and ma.restarts == mb.restarts == 0
    finally:
        ma.stop()
        mb.stop()


# -- records through the callback ---------------------------------------------------------------

@is64
def test_records_are_delivered_through_the_callback(fake):
    got = []
    done = threading.Event()
    spec = SessionSpec(name="t-kp")
    mgr = manager(fake, spec, sink=got.append)
    mgr.start()
    try:
        fake.push("t-kp", EVENT_TRACE_GUID, 0, 2, 0, b"header")                   # the session header
        payload = kp_payload(3, ProcessID=200, ParentProcessID=100, ImageName="\\Device\\X\\a.exe")
        fake.push("t-kp", KERNEL_PROCESS_GUID, 1, 3, 1, payload, pid=100, tid=101, ts=133_1, flags=0x240)
        fake.push("t-kp", KERNEL_PROCESS_GUID, 5, 0, 0, b"thread")                 # not a process event
        fake.push("t-kp", LOST_EVENT_GUID, 0, 2, 32, b"", pid=0, tid=0)
        assert fake.wait_drained()
        done.set()
    finally:
        mgr.stop()
    assert got == [(SRC_KERNEL_PROCESS, 1, 3, 1, 100, 101, 133_1, 0x240, payload),
                   (SRC_LOST, 0, 2, 32, 0, 0, 133_000_000_000_000_000, 0x40, b"")]
    assert mgr.stats()["callback_errors"] == 0


@is64
def test_callback_errors_are_counted_in_stats(fake):
    def sink(raw):
        raise RuntimeError("queue gone")
    mgr = manager(fake, sink=sink)
    mgr.start()
    try:
        fake.push("t-kp", KERNEL_PROCESS_GUID, 1, 3, 1, kp_payload(3))
        fake.push("t-kp", KERNEL_PROCESS_GUID, 1, 3, 1, kp_payload(3))
        assert fake.wait_drained()
        assert mgr.stats()["callback_errors"] == 2
    finally:
        mgr.stop()
    assert mgr.stats()["callback_errors"] == 2                 # kept after the consumer closed


@is64
def test_source_end_to_end_on_the_fake(fake):
    """EtwSource over the real backend and the fake: Kernel-Process start, system-logger record
    (joined), lost-event record; helpers read the fake's devices, processes and accounts."""
    fake.add_device("C", "\\Device\\HarddiskVolume3")
    fake.add_process(300, '"C:\\Temp\\x.exe" /q ünï', rid=0x3000)
    fake.add_account("S-1-5-21-1-2-3-1001", "CORP", "alice")
    backend, helpers = ew.platform_parts(fake.api)
    cfg = EtwConfig(seed_from_psutil=False, system_logger=True, join_wait=5.0,
                    session=SessionSpec(name="t-kp"), logger=system_logger_spec(name="t-sl"))
    src = EtwSource(cfg, backend=backend, helpers=helpers, psutil_module=_NoPsutil())
    got = []
    src.start(lambda ev: got.append(ev) or True)
    try:
        img = "\\Device\\HarddiskVolume3\\Temp\\x.exe"
        fake.push("t-kp", KERNEL_PROCESS_GUID, 1, 3, 1,
                  kp_payload(3, ProcessID=300, ParentProcessID=4, ImageName=img,
                             CreateTime=133_000_000_000_000_000, MandatoryLabel=(16, [0x3000])))
        fake.push("t-sl", PROCESS_CLASS_GUID, 1, 4, 1,
                  sl_payload(4, ProcessId=300, ParentId=4, CommandLine='"C:\\Temp\\x.exe" /q exact',
                             UserSID=(5, [21, 1, 2, 3, 1001])), ts=133_000_000_000_000_000)
        fake.push("t-kp", LOST_EVENT_GUID, 0, 2, 32, b"")
        assert fake.wait_drained() and wait_for(lambda: len(got) == 1)
        # the SID is resolved on the resolver thread; a later start of the same user gets the name
        assert wait_for(lambda: src.processor.sids.stats().get("resolved", 0) == 1)
    finally:
        src.stop()
    ev = got[0]
    assert ev["Image"] == "C:\\Temp\\x.exe" and ev.origin["Image"] == "etw"
    assert ev["CommandLine"] == '"C:\\Temp\\x.exe" /q exact' and ev.origin["CommandLine"] == "system_logger"
    assert ev["IntegrityLevel"] == "High"
    assert ev["User"] in ("S-1-5-21-1-2-3-1001", "CORP\\alice")
    st = src.stats()
    assert st["rt_lost_events"] == 1 and st["callback_errors"] == 0 and st["decode_errors"] == 0
    assert fake.knob("open_handles").value == 0


class _NoPsutil:
    """psutil for the back-fill, with every pid gone (the fake's processes serve the command line)."""

    NoSuchProcess = psutil.NoSuchProcess
    AccessDenied = psutil.AccessDenied
    ZombieProcess = psutil.ZombieProcess

    def Process(self, pid):
        raise psutil.NoSuchProcess(pid)

    def process_iter(self, *a, **k):
        return iter(())


# -- the enrichment helpers ---------------------------------------------------------------------

@is64
def test_helpers_read_through_the_abi(fake):
    fake.add_device("C", "\\Device\\HarddiskVolume3")
    fake.add_device("D", "\\Device\\HarddiskVolume12")
    fake.add_device("S", "\\??\\C:\\subst")
    long_cmd = '"C:\\Program Files\\x.exe" ' + "ärger-" * 600
    fake.add_process(10, long_cmd, rid=0x2000)
    fake.add_process(11, "x", denied=True)
    fake.add_account("S-1-5-21-9-8-7-500", "CORP", "admin")
    api = fake.api
    assert ew.dos_device_map(api) == {"\\Device\\HarddiskVolume3": "C:", "\\Device\\HarddiskVolume12": "D:"}
    assert ew.read_command_line(api, 10) == long_cmd
    assert ew.read_integrity_level(api, 10) == "Medium"
    with pytest.raises(psutil.AccessDenied):
        ew.read_command_line(api, 11)
    with pytest.raises(psutil.NoSuchProcess):
        ew.read_integrity_level(api, 12)
    assert ew.lookup_account(api, "S-1-5-21-9-8-7-500") == "CORP\\admin"
    assert ew.lookup_account(api, "S-1-5-21-9-8-7-501") is None
    assert ew.lookup_account(api, "not a sid") is None
    assert fake.knob("open_handles").value == 0                # every handle closed


def test_sid_lookup_never_blocks_the_worker():
    """LookupAccountSid can wait on a domain controller: the worker must not wait with it."""
    release = threading.Event()
    asked = []

    def slow(sid):
        asked.append(sid)
        release.wait(30)
        return "CORP\\bob"

    proc = EtwProcessor(device_mapper=lambda p: p, sid_resolver=slow)
    _, fields = MOF_ROWS[(1, 4)]
    vals = sample_values(fields, 0, mof=True)

    def sl_record(pid):
        v = dict(vals, ProcessId=pid, ParentId=4, UserSID=(5, [21, 7, 7, 7, 1001]))
        return (SRC_SYSTEM_LOGGER, 1, 4, 3, 4, 8, 0, 0, encode(fields, v, mof=True))   # DCStart

    t = threading.Thread(target=lambda: [proc.handle(sl_record(p)) for p in (50, 51, 52)])
    t.start()
    t.join(10)
    assert not t.is_alive(), "the worker waited for the account lookup"
    assert proc.table.get(50).user == "S-1-5-21-7-7-7-1001"      # the SID until resolved
    release.set()
    assert wait_for(lambda: proc.sids.stats().get("resolved") == 1)
    proc.handle(sl_record(53))
    assert proc.table.get(53).user == "CORP\\bob" and asked == ["S-1-5-21-7-7-7-1001"]
    proc.sids.stop()


def test_sid_resolver_is_bounded():
    from sensor.sources.etw import SidResolver
    gate = threading.Event()
    r = SidResolver(lambda sid: gate.wait(30) and "x", max_entries=4, max_pending=2)
    for i in range(10):
        assert r.name(f"S-1-5-21-{i}") is None
    st = r.stats()
    assert st["queue_full"] >= 7 and st["pending"] <= 3
    gate.set()
    r.stop()
