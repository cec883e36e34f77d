"""Capture files: written from raw records, replayed through the live source's processor.

The payloads are built by the encoder of tests/test_etw_decode.py, from the manifest and MOF field
lists (tests/data/etw/*.tsv), never from the decoders' offsets.  Every field of the resulting
events is checked.
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import stat
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor import read_events
from sensor.sources import capture, read_paths
from sensor.sources.base import ReadStats
from sensor.sources.etw_raw import SRC_KERNEL_PROCESS, SRC_LOST, SRC_SYSTEM_LOGGER

from .test_etw_decode import KP_ROWS, MOF_ROWS, encode, sample_values

FT0 = 133_500_000_000_000_000          # 2024-01-17 21:20:00 UTC
DEVICES = {"\\Device\\HarddiskVolume3": "C:", "\\Device\\HarddiskVolume7": "D:"}
USER_SID = (5, [21, 1004336348, 1177238915, 682003330, 1001])


def kp(event_id, version, **over):
    _, fields = KP_ROWS[(event_id, version)]
    vals = sample_values(fields, event_id * 10 + version)
    vals.update(over)
    return encode(fields, vals)


def sl(opcode, version, **over):
    _, fields = MOF_ROWS[(opcode, version)]
    vals = sample_values(fields, opcode, mof=True)
    vals.update(over)
    return encode(fields, vals, mof=True)


def rec(src, event_id, version, opcode, payload, pid=4, tid=8, ts=FT0, flags=0x240):
    return (src, event_id, version, opcode, pid, tid, ts, flags, payload)


def trace():
    """A small trace: explorer from rundown, a cmd child, a renamed mofcomp under it (with its
    system-logger record), a process stop, a lost-event record."""
    return [
        rec(SRC_KERNEL_PROCESS, 15, 1, 0, kp(15, 1, ProcessID=1000, ParentProcessID=900, CreateTime=FT0 - 10**9,
                                             ProcessSequenceNumber=50,
                                             ImageName="\\Device\\HarddiskVolume3\\Windows\\explorer.exe")),
        rec(SRC_KERNEL_PROCESS, 1, 5, 1, kp(1, 5, ProcessID=2000, ParentProcessID=1000, CreateTime=FT0,
                                            ProcessSequenceNumber=60, ParentProcessSequenceNumber=50,
                                            MandatoryLabel=(16, [0x2000]),
                                            ImageName="\\Device\\HarddiskVolume3\\Windows\\System32\\cmd.exe"),
            pid=1000, tid=1001, ts=FT0),
        rec(SRC_SYSTEM_LOGGER, 1, 4, 1, sl(1, 4, ProcessId=3000, ParentId=2000, UserSID=USER_SID,
                                           CommandLine='x.exe "C:\\Users\\bob\\AppData\\Local\\Temp\\a.mof"'),
            ts=FT0 + 20_000),
        rec(SRC_KERNEL_PROCESS, 1, 4, 1, kp(1, 4, ProcessID=3000, ParentProcessID=2000, CreateTime=FT0 + 10_000,
                                            ProcessSequenceNumber=61, ParentProcessSequenceNumber=60,
                                            MandatoryLabel=(16, [0x3000]),
                                            ImageName="\\Device\\HarddiskVolume7\\tmp\\x.exe"),
            pid=2000, tid=2001, ts=FT0 + 10_000),
        rec(SRC_KERNEL_PROCESS, 2, 2, 2, kp(2, 2, ProcessID=3000, ProcessSequenceNumber=61), ts=FT0 + 50_000),
        rec(SRC_LOST, 0, 2, 32, b"", pid=0, tid=0, ts=FT0 + 60_000),
    ]


def write_capture(path, records, **header):
    header.setdefault("system_logger", True)
    with capture.CaptureWriter(str(path), "HOST1", DEVICES, **header) as w:
        for r in records:
            w.write(r)
    return path


def filled(ev):
    return {k: v for k, v in ev.items() if v is not None}


def check_trace_events(events):
    assert len(events) == 2
    # (cmd waits for a system-logger record that never comes, x's is already there: x is first)
    cmd, x = sorted(events, key=lambda ev: ev["ProcessId"])
    assert filled(cmd) == {
        "Image": "C:\\Windows\\System32\\cmd.exe", "ProcessId": 2000, "ParentProcessId": 1000,
        "UtcTime": "2024-01-17 21:20:00.000", "Computer": "HOST1", "IntegrityLevel": "Medium",
        "ParentImage": "C:\\Windows\\explorer.exe",
        # lineage: the header pid (1000) is the creator; explorer is the whole known chain
        "CreatorProcessId": 1000, "CreatorImage": "C:\\Windows\\explorer.exe",
        "ParentChain": "C:\\Windows\\explorer.exe",
        "ProcessTree": [{"ProcessId": 1000, "Image": "C:\\Windows\\explorer.exe",
                         "UtcTime": "2024-01-17 21:18:20.000"}]}
    assert cmd.origin == {"Image": "etw", "ProcessId": "etw", "ParentProcessId": "etw", "UtcTime": "etw",
                          "IntegrityLevel": "etw", "ParentImage": "process_table", "CommandLine": "missing",
                          "User": "missing", "CurrentDirectory": "missing", "ParentCommandLine": "missing",
                          "CreatorProcessId": "etw", "CreatorImage": "process_table",
                          "ParentChain": "process_table"}
    assert filled(x) == {
        "Image": "D:\\tmp\\x.exe", "ProcessId": 3000, "ParentProcessId": 2000,
        "UtcTime": "2024-01-17 21:20:00.001", "Computer": "HOST1", "IntegrityLevel": "High",
        "ParentImage": "C:\\Windows\\System32\\cmd.exe",
        "CommandLine": 'x.exe "C:\\Users\\bob\\AppData\\Local\\Temp\\a.mof"',
        "User": "S-1-5-21-1004336348-1177238915-682003330-1001",
        "GrandParentImage": "C:\\Windows\\explorer.exe", "GrandParentProcessId": 1000,
        "CreatorProcessId": 2000, "CreatorImage": "C:\\Windows\\System32\\cmd.exe",
        "ParentChain": "C:\\Windows\\explorer.exe > C:\\Windows\\System32\\cmd.exe",
        "ProcessTree": [{"ProcessId": 1000, "Image": "C:\\Windows\\explorer.exe",
                         "UtcTime": "2024-01-17 21:18:20.000"},
                        {"ProcessId": 2000, "Image": "C:\\Windows\\System32\\cmd.exe",
                         "UtcTime": "2024-01-17 21:20:00.000"}]}
    assert x.origin["CommandLine"] == "system_logger" and x.origin["User"] == "system_logger"


@pytest.mark.parametrize("name", ["t.capture.jsonl", "t.capture.jsonl.gz"])
def test_capture_replays_to_the_same_events(tmp_path, name):
    path = write_capture(tmp_path / name, trace())
    if name.endswith(".gz"):
        assert gzip.open(path).readline().startswith(b'{"format":"etw-sensor-capture","version":1')
    stats = ReadStats()
    events = list(read_paths([str(path)], stats))
    check_trace_events(events)
    assert stats.errors == [] and stats.records == 6 and stats.events == 2 and stats.files == 1
    assert stats.skipped == 3                          # the rundown, the stop, the lost-event record
    if os.name == "posix":
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_header_and_records_are_the_documented_json(tmp_path):
    path = write_capture(tmp_path / "t.jsonl", trace()[:2])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0] == {"format": "etw-sensor-capture", "version": 1, "computer": "HOST1", "devices": DEVICES,
                        "system_logger": True}
    r = lines[2]
    assert set(r) == {"source", "event_id", "version", "opcode", "header_pid", "header_tid", "timestamp",
                      "flags", "payload"}
    assert (r["source"], r["event_id"], r["version"], r["opcode"], r["header_pid"], r["header_tid"],
            r["timestamp"], r["flags"]) == ("kernel-process", 1, 5, 1, 1000, 1001, FT0, 0x240)
    assert base64.b64decode(r["payload"]) == trace()[1][8]


def test_unknown_keys_are_ignored(tmp_path):
    path = tmp_path / "t.jsonl"
    write_capture(path, trace())
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        obj = json.loads(line)
        obj["added_by_a_later_writer"] = {"x": i}
        out.append(json.dumps(obj))
    path.write_text("\n".join(out) + "\n")
    stats = ReadStats()
    check_trace_events(list(read_paths([str(path)], stats)))
    assert stats.errors == []


def test_a_newer_version_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"format": "etw-sensor-capture", "version": 2, "devices": {}}) + "\n"
                    + json.dumps(capture.encode_record(trace()[1])) + "\n")
    stats = ReadStats()
    assert list(read_paths([str(path)], stats)) == []
    assert [str(e) for e in stats.errors] == [
        f"{path}:line 1: capture header: capture version 2 is not supported (this reader reads version 1)"]


def test_malformed_records_are_counted_with_file_and_line_and_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    write_capture(path, trace())
    lines = path.read_text().splitlines()
    good = json.loads(lines[2])
    bad = [
        "{not json",
        json.dumps([1, 2]),
        json.dumps(dict(good, source="kernel")),
        json.dumps(dict(good, event_id=70000)),
        json.dumps(dict(good, header_tid=-1)),
        json.dumps(dict(good, flags=True)),
        json.dumps(dict(good, payload="***")),
        json.dumps(dict(good, payload=base64.b64encode(bytes(70000)).decode())),
        json.dumps(dict(good, payload=base64.b64encode(trace()[1][8][:30]).decode())),   # truncated
        "",
    ]
    path.write_text("\n".join(lines[:2] + bad + lines[2:]) + "\n")
    stats = ReadStats()
    events = list(read_paths([str(path)], stats))
    check_trace_events(events)                       # everything after the bad lines still arrives
    where = [e.where for e in stats.errors]
    assert where == [f"line {n}" for n in range(3, 12)]
    msgs = [e.message for e in stats.errors]
    assert msgs[0].startswith("not valid JSON") and "JSON object" in msgs[1]
    assert "source must be one of" in msgs[2] and "event_id must be an integer within 0..65535" in msgs[3]
    assert "header_tid" in msgs[4] and "flags" in msgs[5] and "base64" in msgs[6]
    assert "UserDataLength" in msgs[7] and "does not match its layout" in msgs[8]


@pytest.mark.parametrize("gz", [False, True])
def test_a_record_line_over_the_line_bound_is_one_error_and_the_next_record_reads(tmp_path, gz):
    # LINE_MAX (1 MiB) is far above any record (a payload is at most 64 KiB): a longer line is
    # counted at its line number, skipped in pieces (never read whole) and the reading goes on.
    path = tmp_path / ("t.jsonl.gz" if gz else "t.jsonl")
    plain = tmp_path / "plain.jsonl"
    write_capture(plain, trace())
    lines = plain.read_bytes().splitlines(keepends=True)
    at_bound = b" " * (capture.LINE_MAX - 1) + b"\n"             # exactly LINE_MAX: a blank line
    over = b'{"pad": "' + b"x" * (3 * capture.LINE_MAX) + b'"}\n'   # three times over
    data = b"".join(lines[:2] + [at_bound, over] + lines[2:])
    path.write_bytes(gzip.compress(data) if gz else data)
    stats = ReadStats()
    events = list(read_paths([str(path)], stats))
    check_trace_events(events)
    assert [(e.where, e.message) for e in stats.errors] == \
        [("line 4", f"record longer than {capture.LINE_MAX} bytes")]


def test_a_header_line_over_its_bound_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"format": "etw-sensor-capture", "pad": "' + b"x" * (2 * capture.HEADER_MAX) + b'"}\n')
    stats = ReadStats()
    assert list(read_paths([str(path)], stats)) == []
    # the sniffer looks at HEADER_MAX bytes, finds no capture header there and hands the file
    # to the JSON-lines reader, whose own line bound refuses the line
    assert [(e.where, e.message) for e in stats.errors] == \
        [("line 1", f"line too long ({path.stat().st_size} bytes, the limit is {1 << 20}): skipped")]


def test_broken_header_and_truncated_gzip(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "etw-sensor-capture", "version": 1, "devices": []}\n')
    stats = ReadStats()
    assert list(read_paths([str(bad)], stats)) == []
    assert "devices must map" in stats.errors[0].message
    gz = write_capture(tmp_path / "t.jsonl.gz", trace() * 50)
    data = gz.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    stats = ReadStats()
    events = list(read_paths([str(cut)], stats))
    assert events and stats.errors and "read failed" in stats.errors[-1].message


def test_scan_alerts_on_a_capture(tmp_path, capsys):
    """The built-in rule over a replayed capture: a renamed mofcomp (by its image name here)
    started from cmd with a temp-folder .mof."""
    records = trace()
    records[3] = rec(SRC_KERNEL_PROCESS, 1, 4, 1,
                     kp(1, 4, ProcessID=3000, ParentProcessID=2000, CreateTime=FT0 + 10_000,
                        ProcessSequenceNumber=61, ParentProcessSequenceNumber=60, MandatoryLabel=(16, [0x3000]),
                        ImageName="\\Device\\HarddiskVolume3\\Windows\\System32\\wbem\\mofcomp.exe"),
                     pid=2000, ts=FT0 + 10_000)
    path = write_capture(tmp_path / "t.capture.jsonl.gz", records)
    from sensor.cli import main
    out = tmp_path / "alerts.jsonl"
    assert main(["scan", str(path), "-o", str(out)]) == 0
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(alerts) == 1 and "Mofcomp" in alerts[0]["rule"]["title"]
    assert alerts[0]["PARENTPROCESSNAME"] == "C:\\Windows\\System32\\cmd.exe"
    assert "2 process start(s)" in capsys.readouterr().err


def test_read_events_api_reads_captures(tmp_path):
    path = write_capture(tmp_path / "t.jsonl", trace())
    check_trace_events(list(read_events([str(path)])))


raw_records = st.tuples(st.sampled_from([SRC_KERNEL_PROCESS, SRC_SYSTEM_LOGGER, SRC_LOST]),
                        st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 255),
                        st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**63 - 1),
                        st.integers(0, 0xFFFF), st.binary(max_size=300))


@settings(max_examples=200, deadline=None)
@given(raw_records)
def test_record_encoding_round_trips(raw):
    assert capture.decode_record(json.loads(json.dumps(capture.encode_record(raw)))) == raw


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c, max_size=3),
                           max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["source", "event_id", "version", "opcode", "header_pid", "header_tid",
                                        "timestamp", "flags", "payload", "x"]), json_values))
def test_decode_record_only_raises_capture_error(obj):
    try:
        capture.decode_record(obj)
    except capture.CaptureError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(raw_records, max_size=8))
def test_replay_of_random_records_never_stops(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("cap") / "r.jsonl"
    write_capture(path, records)
    stats = ReadStats()
    list(read_paths([str(path)], stats))
    assert stats.records == len(records)


# -- a capture from the fake Win32 ABI round-trips ----------------------------------------------

@pytest.mark.skipif(sys.maxsize < 2**32, reason="the fake is built for 64-bit hosts")
def test_capture_of_a_live_run_on_the_fake_abi_round_trips(tmp_path, fake):
    from sensor.commands.capture import run_capture
    from sensor.sources import etw_windows as ew
    from sensor.sources.etw import EtwConfig
    from sensor.sources.etw_session import SessionSpec, system_logger_spec

    from .fake_win32 import KERNEL_PROCESS_GUID, LOST_EVENT_GUID, PROCESS_CLASS_GUID
    fake.add_device("C", "\\Device\\HarddiskVolume3")
    fake.add_device("D", "\\Device\\HarddiskVolume7")
    records = trace()
    guid = {SRC_KERNEL_PROCESS: KERNEL_PROCESS_GUID, SRC_SYSTEM_LOGGER: PROCESS_CLASS_GUID,
            SRC_LOST: LOST_EVENT_GUID}
    live = []
    cfg = EtwConfig(backfill=False, session=SessionSpec(name="cap-kp"), logger=system_logger_spec(name="cap-sl"),
                    join_wait=5.0, computer="HOST1")
    out = tmp_path / "live.capture.jsonl.gz"
    stop = threading.Event()
    result = {}

    def run():
        result.update(run_capture(str(out), records=len(records), stop=stop, config=cfg,
                                  platform=lambda: ew.platform_parts(fake.etw), on_event=live.append))

    t = threading.Thread(target=run)
    t.start()
    from .test_etw_abi import wait_for
    assert wait_for(lambda: fake.session("cap-kp", "BufferSize") > 0 and fake.session("cap-sl", "BufferSize") > 0)
    for src, eid, ver, op, pid, tid, ts, flags, payload in records:
        # the lost-event record comes in band on the Kernel-Process session
        session = "cap-sl" if src == SRC_SYSTEM_LOGGER else "cap-kp"
        fake.push(session, guid[src], eid, ver, op, payload, pid=pid, tid=tid, ts=ts, flags=flags)
        assert fake.wait_drained()
    t.join(30)
    assert not t.is_alive() and result["records"] == len(records)
    replayed = list(read_paths([str(out)]))
    key = lambda ev: ev["ProcessId"]   # noqa: E731
    assert [filled(e) for e in sorted(replayed, key=key)] == [filled(e) for e in sorted(live, key=key)]
    check_trace_events(sorted(replayed, key=key))


@pytest.fixture
def fake():
    import importlib.metadata

    from . import fake_win32
    try:
        importlib.metadata.version("pywintrace")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pywintrace 0.2.0 is not installed (pip install -e '.[test]')")
    shared = fake_win32.shared_fake()
    if shared is None:
        pytest.skip("no C compiler to build the fake Win32 library")
    if shared.etw is None:
        pytest.fail(f"the sensor refuses the pywintrace binding: {shared.refused}")
    shared.reset()
    yield shared
    shared.reset()


def test_capture_command_off_windows_is_a_clear_refusal(tmp_path, capsys):
    if sys.platform == "win32":
        pytest.skip("on Windows the command captures")
    from sensor.cli import main
    assert main(["capture", "-o", str(tmp_path / "x.capture.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "capture needs Windows" in err and "Traceback" not in err
    assert not (tmp_path / "x.capture.jsonl").exists()


def test_run_replay_source_reads_a_capture(tmp_path):
    from sensor.sources.replay import ReplaySource
    path = write_capture(tmp_path / "t.capture.jsonl.gz", trace())
    src = ReplaySource([str(path)])
    got = []
    src.start(lambda ev: got.append(ev) or True)
    assert src.finished.wait(30)
    src.stop()
    check_trace_events(got)
    assert src.stats()["errors"] == 0 and src.stats()["events"] == 2
