"""ETW session lifecycle and the ETW source against a fake backend (runs on Linux)."""
from __future__ import annotations

import ctypes
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.sources import etw_windows
from sensor.sources.etw_raw import SRC_KERNEL_PROCESS, SRC_LOST
from sensor.sources.etw import EtwConfig, EtwSource
from sensor.sources.base import SourceUnavailable
from sensor.sources.etw_session import (
    SessionError,
    SessionExistsError,
    SessionManager,
    SessionSpec,
    SessionTicker,
    system_logger_spec,
)

from .test_etw_decode import KP_ROWS, encode, sample_values


class FakeConsumer:
    def __init__(self, sink):
        self.sink = sink
        self._alive = True
        self.closed = 0
        self.on_exit = None          # set by the session manager, called when the consumer ends

    @property
    def alive(self):
        return self._alive

    def die(self):
        self._alive = False
        if self.on_exit is not None:
            self.on_exit()

    def close(self, timeout=5.0):
        self.closed += 1
        self._alive = False


class FakeBackend:
    """Mimics the session table of the ETW control calls (StartTrace/ControlTrace/EnableTraceEx2)."""

    def __init__(self):
        self.sessions: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.consumers: list[FakeConsumer] = []
        self.fail_start = 0
        self.exists_once = False
        self.flushes = 0
        self.lock = threading.Lock()

    def _new(self):
        return {"EventsLost": 0, "RealTimeBuffersLost": 0, "LogBuffersLost": 0}

    def stop_session(self, spec):
        self.calls.append(("stop", spec.name))
        return self.sessions.pop(spec.name, None)

    def start_session(self, spec):
        self.calls.append(("start", spec.name))
        if self.exists_once:
            self.exists_once = False
            raise SessionExistsError("183")
        if spec.name in self.sessions:
            raise SessionExistsError("183")
        if self.fail_start:
            self.fail_start -= 1
            raise SessionError("StartTrace failed: Windows error 1450")
        self.sessions[spec.name] = self._new()

    def enable_provider(self, spec):
        self.calls.append(("enable", spec.name))
        assert spec.keywords == 0x10 and spec.level == 4

    def capture_state(self, spec):
        self.calls.append(("rundown", spec.name))

    def open_consumer(self, spec, sink):
        self.calls.append(("consume", spec.name))
        c = FakeConsumer(sink)
        self.consumers.append(c)
        return c

    def flush(self, spec):
        with self.lock:
            self.flushes += 1
        if spec.name not in self.sessions:
            raise SessionError("not found")

    def query(self, spec):
        s = self.sessions.get(spec.name)
        return None if s is None else dict(s)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def manager(backend=None, **spec_kw):
    backend = backend or FakeBackend()
    clock = Clock()
    mgr = SessionManager(backend, SessionSpec(**spec_kw), lambda raw: None, clock=clock,
                         watchdog_interval=1.0, backoff_initial=0.5, backoff_max=4.0)
    return mgr, backend, clock


def test_start_stops_stale_session_then_enables_and_requests_rundown():
    mgr, be, _ = manager()
    be.sessions[mgr.spec.name] = {"EventsLost": 99}     # left over by a crashed run
    mgr.start()
    assert be.calls == [("stop", mgr.spec.name), ("start", mgr.spec.name), ("enable", mgr.spec.name),
                        ("rundown", mgr.spec.name), ("consume", mgr.spec.name)]
    assert mgr.stale_stopped == 1 and mgr.alive
    assert mgr.lost.events_lost == 0                    # the stale session's losses are not ours


def test_already_exists_after_stop_is_retried_once():
    mgr, be, _ = manager()
    be.exists_once = True
    mgr.start()
    assert [c for c, _ in be.calls].count("start") == 2 and mgr.alive


def test_first_start_failure_raises_and_leaves_nothing_running():
    mgr, be, _ = manager()
    be.fail_start = 1
    with pytest.raises(SessionError):
        mgr.start()
    assert not mgr.alive and mgr.spec.name not in be.sessions


def test_restart_after_consumer_death():
    mgr, be, clock = manager()
    mgr.start()
    first = be.consumers[0]
    clock.t += mgr.stable_after                          # it ran long enough: restart at once
    first.die()                                          # ProcessTrace returned
    assert not mgr.alive
    assert mgr.check() == "consumer_died"
    assert mgr.alive and len(be.consumers) == 2 and first.closed == 1
    assert mgr.restarts == 1 and mgr.restart_reasons["consumer_died"] == 1


def test_restart_after_external_stop_with_backoff():
    mgr, be, clock = manager()
    mgr.start()
    be.sessions.pop(mgr.spec.name)                       # logman stop etw-sensor-kernel-process
    be.fail_start = 2
    assert mgr.check() == "stopped_externally"
    assert not mgr.alive and mgr.start_failures == 1
    clock.t += 0.4
    mgr.tick()
    assert mgr.start_failures == 1                       # back-off 0.5 s not over yet
    clock.t += 0.2
    mgr.tick()
    assert mgr.start_failures == 2                       # retried, failed; back-off now 1 s
    clock.t += 0.9
    mgr.tick()
    assert not mgr.alive
    clock.t += 0.2
    mgr.tick()
    assert mgr.alive and mgr.restarts == 3 and mgr.stats()["start_failures"] == 2


def test_flush_timer_runs_every_interval():
    mgr, be, clock = manager(flush_interval=0.02)
    mgr.start()
    for _ in range(50):
        clock.t += 0.01
        mgr.tick()
    assert be.flushes == 25 and mgr.flushes == 25
    with pytest.raises(ValueError):
        SessionSpec(flush_interval=2.0).validate()
    with pytest.raises(ValueError):
        SessionSpec(keywords=0).validate()                # 0 = every keyword (reference §1.1)
    assert SessionSpec().flush_interval <= 0.020


def test_lost_event_accounting_across_restart_and_stop():
    mgr, be, clock = manager()
    mgr.start()
    s = be.sessions[mgr.spec.name]
    s["EventsLost"], s["RealTimeBuffersLost"] = 5, 1
    mgr.check()
    s["EventsLost"] = 12
    mgr.check()
    assert mgr.lost.events_lost == 12 and mgr.lost.realtime_buffers_lost == 1
    clock.t += mgr.stable_after
    be.consumers[-1].die()
    s["EventsLost"] = 14                                  # the final count comes with the stop call
    mgr.check()
    assert mgr.lost.events_lost == 14
    s2 = be.sessions[mgr.spec.name]
    assert s2 is not s and s2["EventsLost"] == 0          # a fresh session counts from 0
    s2["EventsLost"] = 3
    mgr.check()
    s2["EventsLost"] = 4
    mgr.stop()
    assert mgr.lost.events_lost == 18
    assert mgr.spec.name not in be.sessions and not mgr.alive


def test_system_logger_spec():
    spec = system_logger_spec()
    spec.validate()
    assert spec.kind == "system_logger" and spec.enable_flags == 0x1 and not spec.capture_state
    mgr, be, _ = manager()
    m2 = SessionManager(be, spec, lambda raw: None)
    m2.start()
    assert ("enable", spec.name) not in be.calls and ("consume", spec.name) in be.calls


def test_ticker_thread_flushes():
    be = FakeBackend()
    mgr = SessionManager(be, SessionSpec(flush_interval=0.005), lambda raw: None)
    mgr.start()
    ticker = SessionTicker([mgr])
    ticker.start()
    deadline = time.monotonic() + 60.0           # only guards a hang
    while be.flushes < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    ticker.stop()
    assert be.flushes >= 5 and not ticker.alive


# -- the record callback (ctypes path, fed with fake records) ------------------------------------

# EVENT_RECORD per the Windows SDK (evntcons.h / evntprov.h), with fixed-width types so that
# ctypes lays it out on Linux exactly as on 64-bit Windows: an independent check of the
# callback's hand-written offsets.
class GUID(ctypes.Structure):
    _fields_ = [("Data1", ctypes.c_uint32), ("Data2", ctypes.c_uint16), ("Data3", ctypes.c_uint16),
                ("Data4", ctypes.c_uint8 * 8)]


class EVENT_DESCRIPTOR(ctypes.Structure):
    _fields_ = [("Id", ctypes.c_uint16), ("Version", ctypes.c_uint8), ("Channel", ctypes.c_uint8),
                ("Level", ctypes.c_uint8), ("Opcode", ctypes.c_uint8), ("Task", ctypes.c_uint16),
                ("Keyword", ctypes.c_uint64)]


class EVENT_HEADER(ctypes.Structure):
    _fields_ = [("Size", ctypes.c_uint16), ("HeaderType", ctypes.c_uint16), ("Flags", ctypes.c_uint16),
                ("EventProperty", ctypes.c_uint16), ("ThreadId", ctypes.c_uint32),
                ("ProcessId", ctypes.c_uint32), ("TimeStamp", ctypes.c_int64), ("ProviderId", GUID),
                ("EventDescriptor", EVENT_DESCRIPTOR), ("KernelTime", ctypes.c_uint32),
                ("UserTime", ctypes.c_uint32), ("ActivityId", GUID)]


class EVENT_RECORD(ctypes.Structure):
    _fields_ = [("EventHeader", EVENT_HEADER), ("ProcessorNumber", ctypes.c_uint8),
                ("Alignment", ctypes.c_uint8), ("LoggerId", ctypes.c_uint16),
                ("ExtendedDataCount", ctypes.c_uint16), ("UserDataLength", ctypes.c_uint16),
                ("ExtendedData", ctypes.c_void_p), ("UserData", ctypes.c_void_p),
                ("UserContext", ctypes.c_void_p)]


def fake_record(data1, eid, version, payload, opcode=0):
    buf = ctypes.create_string_buffer(payload, len(payload))
    rec = EVENT_RECORD()
    h = rec.EventHeader
    h.Flags, h.ProcessId, h.TimeStamp, h.ThreadId = 0x40, 4, 133_000_000_000_000_000, 77
    h.ProviderId.Data1, h.ProviderId.Data2 = data1, 0xFFFF
    d = h.EventDescriptor
    d.Id, d.Version, d.Opcode, d.Level, d.Channel, d.Task, d.Keyword = eid, version, opcode, 4, 16, 1, 0x10
    h.KernelTime = h.UserTime = 0xFFFFFFFF
    rec.ExtendedDataCount = 3
    rec.UserDataLength = len(payload)
    rec.UserData = ctypes.addressof(buf)
    return rec, buf


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="64-bit layout")
def test_record_header_layout_matches_sdk_structure():
    assert ctypes.sizeof(EVENT_HEADER) == 80 and ctypes.sizeof(EVENT_RECORD) == 112
    assert etw_windows.RECORD_HEADER.size == EVENT_RECORD.UserData.offset + 8
    assert EVENT_RECORD.UserDataLength.offset == 86


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="64-bit layout")
def test_record_callback_copies_payload_and_filters():
    got, errors = [], [0]
    cb = etw_windows.make_record_callback(SRC_KERNEL_PROCESS, got.append, errors)
    r1, keep1 = fake_record(etw_windows.KERNEL_PROCESS_DATA1, 1, 3, b"abc\0def", opcode=1)
    cb(ctypes.addressof(r1))
    keep1[0:3] = b"XXX"                                   # ETW reuses its buffer after the call
    r2, _k2 = fake_record(etw_windows.KERNEL_PROCESS_DATA1, 5, 0, b"x")   # not a process event id
    cb(ctypes.addressof(r2))
    r3, _k3 = fake_record(etw_windows.LOST_EVENT_DATA1, 0, 2, b"", opcode=32)
    cb(ctypes.addressof(r3))
    r4, _k4 = fake_record(0x68FDD900, 0, 2, b"hdr")       # the session's EventTrace header
    cb(ctypes.addressof(r4))
    def broken_sink(raw):
        raise RuntimeError("queue gone")
    etw_windows.make_record_callback(SRC_KERNEL_PROCESS, broken_sink, errors)(ctypes.addressof(r1))
    assert got[0] == (SRC_KERNEL_PROCESS, 1, 3, 1, 4, 77, 133_000_000_000_000_000, 0x40, b"abc\0def")
    assert got[1] == (SRC_LOST, 0, 2, 32, 4, 77, 133_000_000_000_000_000, 0x40, b"")
    assert len(got) == 2 and errors[0] == 1
    sl = []
    cb2 = etw_windows.make_record_callback(1, sl.append, errors)
    r5, _k5 = fake_record(etw_windows.PROCESS_CLASS_DATA1, 0, 4, b"p", opcode=1)
    cb2(ctypes.addressof(r5))
    cb2(ctypes.addressof(r1))                             # a Kernel-Process record on the logger session
    assert sl == [(1, 0, 4, 1, 4, 77, 133_000_000_000_000_000, 0x40, b"p")]


def test_load_win32_off_windows_is_a_clear_error():
    with pytest.raises(SourceUnavailable):
        etw_windows.load_win32()
    with pytest.raises(SourceUnavailable):
        EtwSource(EtwConfig(seed_from_psutil=False)).start(lambda ev: True)


# -- the source, end to end with the fake backend -------------------------------------------------

def kp_payload(version, **over):
    _, fields = KP_ROWS[(1, version)]
    vals = sample_values(fields, 0)
    vals.update(over)
    return encode(fields, vals)


def test_source_end_to_end_with_fake_backend():
    be = FakeBackend()
    cfg = EtwConfig(seed_from_psutil=False, backfill=False, watchdog_interval=0.05,
                    session=SessionSpec(flush_interval=0.005))
    helpers = {"device_loader": lambda: {"\\Device\\HarddiskVolume3": "C:"}}
    src = EtwSource(cfg, backend=be, helpers=helpers)
    got, answers = [], iter([True, False, True, True])
    done = threading.Event()

    def emit(ev):
        got.append(ev)
        if len(got) == 3:
            done.set()
        return next(answers)

    src.start(emit)
    assert src.alive
    sink = be.consumers[0].sink
    sink((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, _rundown_payload()))   # the parent, from rundown
    sink((SRC_KERNEL_PROCESS, 1, 3, 1, 4, 8, 0, 0, kp_payload(3, ProcessID=200, ParentProcessID=100,
                                                          ProcessSequenceNumber=6000, ParentProcessSequenceNumber=5000)))
    sink((SRC_KERNEL_PROCESS, 1, 4, 1, 4, 8, 0, 0, kp_payload(4)[:30]))   # malformed
    sink((SRC_LOST, 0, 2, 32, 4, 8, 0, 0, b""))
    sink((SRC_KERNEL_PROCESS, 1, 5, 1, 4, 8, 0, 0, kp_payload(5, ProcessID=201, ParentProcessID=200,
                                                          ParentProcessSequenceNumber=6000)))
    sink((SRC_KERNEL_PROCESS, 1, 2, 1, 4, 8, 0, 0, kp_payload(2, ProcessID=202, ParentProcessID=9999)))
    assert done.wait(60.0)                                # 60 s only guards a hang
    be.sessions[cfg.session.name]["EventsLost"] = 7
    deadline = time.monotonic() + 60.0                    # the watchdog's next query reads it
    while src.stats()["events_lost"] != 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    src.stop()
    st = src.stats()
    ev = got[0]
    assert ev["Image"] == "C:\\Windows\\System32\\wbem\\mofcomp.exe"
    assert ev["ParentImage"] == "C:\\Windows\\explorer.exe" and ev["ProcessId"] == 200
    assert ev["IntegrityLevel"] == "High"
    assert ev.origin["Image"] == "etw" and ev.origin["ParentImage"] == "process_table"
    assert ev.origin["CommandLine"] == "missing"
    assert got[1]["ParentImage"] == "C:\\Windows\\System32\\wbem\\mofcomp.exe"   # from the first start
    assert got[2]["ParentImage"] is None and got[2].origin["ParentImage"] == "missing"
    assert st["records_in"] == 6 and st["events"] == 3 and st["emitted"] == 2 and st["queue_drops"] == 1
    assert st["decode_errors"] == 1 and st["rt_lost_events"] == 1 and st["events_lost"] == 7
    assert st["sessions"][0]["flushes"] > 0
    assert not src.alive and be.sessions == {}


def _rundown_payload():
    _, fields = KP_ROWS[(15, 1)]
    vals = sample_values(fields, 0)
    vals.update(ProcessID=100, ParentProcessID=4, CreateTime=132_000_000_000_000_000, ProcessSequenceNumber=5000,
                ImageName="\\Device\\HarddiskVolume3\\Windows\\explorer.exe")
    return encode(fields, vals)


def test_source_watchdog_restarts_dead_consumer():
    be = FakeBackend()
    cfg = EtwConfig(seed_from_psutil=False, backfill=False, watchdog_interval=0.02,
                    session=SessionSpec(flush_interval=0.005))
    src = EtwSource(cfg, backend=be, helpers={})
    src.start(lambda ev: True)
    be.consumers[0].die()
    assert not src.alive
    deadline = time.monotonic() + 60.0           # only guards a hang
    while not src.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    st = src.stats()
    # it died at once: a failed start, retried after the back-off
    assert src.alive and st["restarts"] >= 1 and st["start_failures"] == 1
    assert "consumer ended" in st["sessions"][0]["last_error"]
    src.stop()


def test_sink_drops_when_queue_full_without_blocking():
    src = EtwSource(EtwConfig(queue_size=2, seed_from_psutil=False), backend=FakeBackend(), helpers={})
    sink = src._make_sink(0)
    for i in range(5):
        sink((SRC_LOST, 0, 0, 32, 0, 8, 0, 0, b""))
    assert src.stats()["callback_drops"] == 3 and src.stats()["queued"] == 2


def test_parent_with_another_sequence_number_is_not_the_parent():
    from sensor.sources.etw import EtwProcessor
    proc = EtwProcessor(device_mapper=lambda p: p)
    proc.handle((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, _rundown_payload()))          # pid 100, seq 5000
    [ev] = proc.handle((SRC_KERNEL_PROCESS, 1, 3, 1, 4, 8, 0, 0,
                        kp_payload(3, ProcessID=300, ParentProcessID=100, ParentProcessSequenceNumber=5001)))
    assert ev["ParentImage"] is None and proc.table.reuse_rejected == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 7]), st.sampled_from([1, 2, 15, 3, 99]),
                          st.integers(0, 6), st.sampled_from([1, 2, 3, 32, 33, 39]),
                          st.integers(0, 0x40), st.binary(max_size=120)), max_size=20))
def test_processor_never_raises_on_garbage(records):
    from sensor.sources.etw import EtwProcessor
    proc = EtwProcessor(device_mapper=lambda p: p, join_wait=0.01)
    for src, eid, ver, op, flags, payload in records:
        proc.handle((src, eid, ver, op, 4, 8, 133_000_000_000_000_000, flags, payload))
    proc.due(now=1e9)
    proc.drain()
    st_ = proc.stats()
    assert st_.get("records", 0) == len(records) and st_.get("internal_errors", 0) == 0


def test_system_logger_failure_is_not_fatal():
    """Without the optional system logger the source still runs on Kernel-Process."""

    class NoSystemLogger(FakeBackend):
        def start_session(self, spec):
            if spec.kind == "system_logger":
                raise OSError("access denied (no system logger slot)")
            return super().start_session(spec)

    be = NoSystemLogger()
    cfg = EtwConfig(seed_from_psutil=False, backfill=False, system_logger=True,
                    session=SessionSpec(flush_interval=0.005))
    src = EtwSource(cfg, backend=be, helpers={})
    src.start(lambda ev: True)
    try:
        assert src.alive and len(src.managers) == 1
        st = src.stats()
        assert "system-logger session not started" in st["logger_error"]
        assert src.processor.join_wait == 0.0       # starts are not held for a join
    finally:
        src.stop()


def test_waker_flag_and_sockets():
    """The worker's waker: a set before the sockets exist still wakes the first wait, a set
    while nobody waits is seen by the next wait, a clear drops the pending byte (the next wait
    blocks until its timeout), and after close set/clear never raise and wait never spins."""
    import time
    from sensor.sources.etw import Waker
    w = Waker()
    w.set()
    assert w.is_set()
    w.open()
    try:
        assert w.wait(5.0) is True
        w.clear()
        assert not w.is_set()
        assert w.wait(0.05) is False
        # nothing pending after the clear: a byte left in the pair would make every later
        # wait return at once (a worker spinning), whatever the flag says
        import select
        assert select.select((w._r,), (), (), 0)[0] == []
        done = []

        def waiter():
            done.append(w.wait(30.0))
        import threading
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.05)
        w.set()
        t.join(30.0)
        assert done == [True]
        w.clear()
        w.set()
        w.set()                                       # one byte pending at most
        w.clear()
        assert w.wait(0.01) is False
    finally:
        w.close()
    w.set()
    w.clear()
    # closed: answers after a pause, no spin (the pause is recorded, not timed)
    import types
    import sensor.sources.etw as etw_mod
    pauses = []
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.sleep = pauses.append
    real_time = etw_mod.time
    etw_mod.time = clock
    try:
        assert w.wait(None) is False
        assert w.wait(0.02) is False
    finally:
        etw_mod.time = real_time
    assert len(pauses) == 2 and pauses[0] > 0 and 0 < pauses[1] <= 0.02    # never past the timeout


def test_waker_falls_back_to_an_event_where_no_socket_pair_can_be_made(monkeypatch):
    """A host that refuses the socket pair (on Windows it is a loopback TCP connection) still
    gets a working source: the worker is woken through a threading.Event, and stats say why."""
    import socket
    from sensor.sources.etw import Waker
    from .test_health import VOL, start

    def refuse(*a, **kw):
        raise OSError(10013, "access denied (test)")
    monkeypatch.setattr(socket, "socketpair", refuse)
    w = Waker()
    w.set()
    w.open()
    assert w.wait(5.0) is True and "access denied (test)" in w.fallback
    w.clear()
    assert w.wait(0.01) is False
    w.close()
    src = EtwSource(EtwConfig(seed_from_psutil=False, backfill=False), backend=FakeBackend(), helpers={})
    got = []
    src.start(lambda ev: got.append(ev) or True)
    try:
        src.feed(start(5200, VOL + "\\Windows\\notepad.exe"))
        end = time.monotonic() + 60
        while not got and time.monotonic() < end:
            time.sleep(0.01)
        assert len(got) == 1 and got[0]["ProcessId"] == 5200
        assert "access denied (test)" in src.stats()["wake_fallback"]
    finally:
        src.stop()


class _Batches:
    """The pipeline's side of ``start(emit, batches=...)``: records each batch it is handed."""

    def __init__(self):
        self.events: list = []
        self.done = threading.Event()
        self.want = 0

    def run_batch(self, events):
        self.events.extend(events)
        if len(self.events) >= self.want:
            self.done.set()

    def commit_due(self):
        return None

    def commit_if_due(self):
        pass


@pytest.mark.parametrize("mode", ["emit", "batches"])
def test_the_capture_tap_sees_every_record_in_order_and_a_failing_tap_loses_no_event(mode):
    # ``capture`` taps the worker: it must see each raw record once, in arrival order (also the
    # records that make no event), and a tap that raises is counted while the record still
    # becomes its event.
    from .test_health import VOL, start
    seen: list = []

    def tap(raw):
        seen.append(raw)
        if raw[1] == 1 and len(seen) == 2:
            raise OSError("capture disk full (test)")

    src = EtwSource(EtwConfig(seed_from_psutil=False, backfill=False), backend=FakeBackend(),
                    helpers={}, tap=tap)
    got: list = []
    batches = _Batches() if mode == "batches" else None
    emitted = threading.Event()

    def emit(ev):
        got.append(ev)
        if len(got) == 2:
            emitted.set()
        return True

    records = [(SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, _rundown_payload()),
               start(5300, VOL + "\\Windows\\notepad.exe"),
               (SRC_LOST, 0, 2, 32, 4, 8, 0, 0, b""),
               start(5304, VOL + "\\Windows\\write.exe")]
    if batches is not None:
        batches.want = 2
    src.start(emit, batches=batches)
    try:
        assert src.stats()["seconds_since_record"] is None          # nothing taken yet
        for raw in records:
            src.feed(raw)
        assert (batches.done if batches is not None else emitted).wait(60.0)   # guards a hang
        events = batches.events if batches is not None else got
        assert [ev["ProcessId"] for ev in events] == [5300, 5304]
        assert seen == records
        st = src.stats()
        assert st["tap_errors"] == 1 and st["emitted"] == 2 and st["records_in"] == 4
        assert st["seconds_since_record"] is not None
    finally:
        src.stop()
