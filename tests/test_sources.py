"""Replay sources: JSON lines (flat and Windows-record shapes, gzip) and EVTX."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from sensor.sources import ReadStats, read_paths
from sensor.sources.records import integrity_name, sysmon_time

from .conftest import SHARED, needs_shared


def write_lines(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_flat_jsonl_keeps_unknown_keys(tmp_path):
    p = write_lines(tmp_path / "a.jsonl", [
        json.dumps({"Image": "C:\\x.exe", "ProcessId": "42", "Hashes": "MD5=00"}),
    ])
    stats = ReadStats()
    [ev] = list(read_paths([p], stats))
    assert ev["Image"] == "C:\\x.exe"
    assert ev["ProcessId"] == 42                  # pid-like fields become numbers
    assert ev["Hashes"] == "MD5=00"               # unknown keys kept
    assert ev["CommandLine"] is None              # missing = None
    assert stats.events == 1 and not stats.errors


def test_windows_record_shapes(tmp_path):
    sysmon = {"channel": "Microsoft-Windows-Sysmon/Operational", "eid": 1, "computer": "H1",
              "ts": "2020-01-02T03:04:05.678901Z",
              "data": {"Image": "C:\\a.exe", "ProcessId": "7", "UtcTime": "2020-01-02 03:04:05.678"}}
    sec = {"channel": "Security", "eid": 4688, "computer": "H2", "ts": "2021-05-06T07:08:09.1Z",
           "data": {"NewProcessName": "C:\\b.exe", "ParentProcessName": "C:\\p.exe",
                    "CommandLine": "b -x", "SubjectUserName": "bob", "SubjectDomainName": "CORP",
                    "MandatoryLabel": "S-1-16-12288", "NewProcessId": "0x1a", "ProcessId": "0x10"}}
    other = {"channel": "Security", "eid": 4624, "data": {}}
    p = write_lines(tmp_path / "r.jsonl", [json.dumps(x) for x in (sysmon, sec, other)])
    stats = ReadStats()
    a, b = list(read_paths([p], stats))
    assert a["Computer"] == "H1" and a["ProcessId"] == 7
    assert b["Image"] == "C:\\b.exe" and b["ParentImage"] == "C:\\p.exe"
    assert b["User"] == "CORP\\bob" and b["IntegrityLevel"] == "High"
    assert b["ProcessId"] == 26 and b["ParentProcessId"] == 16
    assert b["UtcTime"] == "2021-05-06 07:08:09.100" and b["Computer"] == "H2"
    assert b["NewProcessName"] == "C:\\b.exe"     # the original fields stay too
    assert stats.skipped == 1 and stats.skipped_by_id == {"4624": 1}


def test_gzip_jsonl(tmp_path):
    p = tmp_path / "a.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(json.dumps({"Image": "x"}) + "\n" + json.dumps({"Image": "y"}) + "\n")
    assert [e["Image"] for e in read_paths([p])] == ["x", "y"]


def test_bad_lines_reported_and_skipped(tmp_path):
    p = write_lines(tmp_path / "bad.jsonl", [
        json.dumps({"Image": "ok1"}), "{not json", "[1, 2]", '"text"', json.dumps({"Image": "ok2"}),
    ])
    stats = ReadStats()
    assert [e["Image"] for e in read_paths([p], stats)] == ["ok1", "ok2"]
    msgs = [str(e) for e in stats.errors]
    assert len(msgs) == 3
    assert msgs[0].startswith(f"{p}:line 2: not valid JSON")
    assert msgs[1] == f"{p}:line 3: JSON value is a list, not an object"
    assert msgs[2] == f"{p}:line 4: JSON value is a str, not an object"


def test_corrupt_gzip_reported(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    good = gzip.compress(("\n".join(json.dumps({"Image": str(i)}) for i in range(2000)) + "\n").encode())
    p.write_bytes(good[: len(good) // 2])
    stats = ReadStats()
    events = list(read_paths([p], stats))
    assert 0 < len(events) < 2000
    assert len(stats.errors) == 1 and "read failed" in stats.errors[0].message


def test_unreadable_file(tmp_path):
    # A folder named like a data file cannot be opened as one (works as root too).
    p = tmp_path / "u.jsonl"
    p.mkdir()
    from sensor.sources import read_file
    stats = ReadStats()
    assert list(read_file(str(p), stats)) == []
    assert str(stats.errors[0]).startswith(f"{p}: cannot open")


def test_unreadable_paths(tmp_path):
    d = tmp_path / "dir-as-file.jsonl"
    d.mkdir()
    (d / "x.jsonl").write_text("{}\n")
    stats = ReadStats()
    events = list(read_paths([tmp_path / "missing.jsonl", d], stats))
    assert len(events) == 1
    assert [str(e) for e in stats.errors] == [f"{tmp_path / 'missing.jsonl'}: no such file or folder"]


def test_evtx_not_an_evtx(tmp_path):
    p = tmp_path / "x.evtx"
    p.write_bytes(b"MZ" + b"\0" * 100)
    stats = ReadStats()
    assert list(read_paths([p], stats)) == []
    assert "not a readable EVTX file" in str(stats.errors[0])


EVTX_4688 = Path(__file__).parent / "data" / "evtx" / "clear_eventlog_4688.evtx"   # 28 records, one chunk


def _record_offsets(data: bytes) -> list[int]:
    """Where each record of the first chunk starts (walking the record sizes, as a reader does)."""
    out, at = [], 4096 + 512
    while data[at:at + 4] == b"\x2a\x2a\x00\x00":
        out.append(at)
        at += int.from_bytes(data[at + 4:at + 8], "little")
    return out


def _damaged(tmp_path, where: str) -> Path:
    data = bytearray(EVTX_4688.read_bytes())
    rec = _record_offsets(bytes(data))[4]                    # the fifth record
    if where == "body":
        data[rec + 32:rec + 64] = b"\xff" * 32               # its BinXML, header intact
    else:
        data[rec:rec + 4] = b"XXXX"                          # its header's magic
    p = tmp_path / f"{where}.evtx"
    p.write_bytes(bytes(data))
    return p


def test_the_bundled_evtx_reads_whole():
    assert len(_record_offsets(EVTX_4688.read_bytes())) == 28
    stats = ReadStats()
    assert len(list(read_paths([EVTX_4688], stats))) == 28 and stats.records == 28 and not stats.errors


def test_a_corrupt_record_inside_a_valid_evtx_is_reported_and_the_rest_is_read(tmp_path):
    stats = ReadStats()
    events = list(read_paths([_damaged(tmp_path, "body")], stats))
    assert len(events) == 27 and stats.records == 28
    assert [(e.where, e.message.split(":")[0]) for e in stats.errors] == [("record 5", "corrupt record")]
    good = [e["RecordId"] if "RecordId" in e else None for e in read_paths([EVTX_4688], ReadStats())]
    got = [e["RecordId"] if "RecordId" in e else None for e in events]
    assert got == good[:4] + good[5:]                        # the records after it, all of them


def test_a_damaged_record_header_reports_the_records_it_hides(tmp_path):
    # The parser finds records by walking their sizes: a damaged header ends its chunk for it.
    # The records the chunk header lists and nobody read are reported, never silently lost.
    stats = ReadStats()
    events = list(read_paths([_damaged(tmp_path, "header")], stats))
    assert len(events) == 4
    msgs = [(e.where, e.message) for e in stats.errors]
    assert msgs[0][0] == "record 5" and msgs[0][1].startswith("corrupt record")
    assert msgs[1] == (None, "23 of the 28 records its chunk headers list could not be read "
                             "(a damaged record hides the rest of its chunk)")


class _StuckParser:
    """Fault injection for the EVTX parser (a third-party library): after ``good`` real
    records it fails ``bad`` times in a row (None: for ever, a parser that never moves on),
    then goes on with the real records."""

    def __init__(self, real_cls, bad, good=3):
        self.real_cls, self.bad, self.good = real_cls, bad, good

    def __call__(self, path):
        self.real = self.real_cls(path).records_json()
        self.given = self.failed = 0
        return self

    def records_json(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self.given < self.good:
            self.given += 1
            return next(self.real)
        if self.bad is None or self.failed < self.bad:
            self.failed += 1
            raise RuntimeError(f"damaged record {self.failed}")
        return next(self.real)


@pytest.mark.parametrize("bad,stopped", [(100_000, False), (100_001, True), (None, True)])
def test_a_parser_stuck_on_unreadable_records_ends_the_file_after_100000_in_a_row(monkeypatch, bad, stopped):
    # docs/hostile-inputs.md: 100,000 unreadable records in a row mean the parser is not moving
    # on; the file is given up with an error saying so (the next file is read); up to that many
    # are each counted and skipped, and the records after them still read. The error that gives
    # the file up is listed even though the record errors before it filled their allowance.
    evtx = pytest.importorskip("evtx")
    monkeypatch.setattr(evtx, "PyEvtxParser", _StuckParser(evtx.PyEvtxParser, bad))
    stats = ReadStats()
    events = list(read_paths([EVTX_4688], stats))
    if stopped:
        assert len(events) == 3 and stats.records == 3 + 100_001
        assert str(stats.errors[-1]) == (f"{EVTX_4688}:record {3 + 100_001}: 100000 unreadable records "
                                         f"in a row: the rest of the file is skipped")
    else:
        assert len(events) == 28 and stats.records == 28 + 100_000
        assert stats.error_count == 100_000
        assert all("corrupt record: damaged record" in str(e) for e in stats.errors)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX (Windows has named pipes, not FIFO files)")
@pytest.mark.parametrize("name", ["x.evtx", "x.jsonl", "x.jsonl.gz"])
def test_a_fifo_named_as_an_input_is_skipped_not_waited_on(tmp_path, name):
    # opening a FIFO with no writer waits forever: it is reported and the next file is read
    fifo = tmp_path / name
    os.mkfifo(fifo)
    stats = ReadStats()
    events = list(read_paths([fifo, EVTX_4688], stats))
    assert len(events) == 28
    assert [str(e) for e in stats.errors] == [f"{fifo}: not a regular file (a FIFO, socket or device): skipped"]


def test_helpers():
    assert integrity_name("S-1-16-16384") == "System"
    assert integrity_name("S-1-16-99") == "S-1-16-99"
    assert sysmon_time("2020-07-09T19:07:25.659137Z") == "2020-07-09 19:07:25.659"
    assert sysmon_time("2020-07-09T19:07:25Z") == "2020-07-09 19:07:25.000"
    assert sysmon_time(None) is None


def _json_twin_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    dec, i, out = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.extend(obj if isinstance(obj, list) else [obj])


@needs_shared
def test_every_shared_evtx_parses():
    files = sorted((SHARED / "data").rglob("*.evtx"))
    assert len(files) >= 80
    for f in files:
        stats = ReadStats()
        list(read_paths([f], stats))
        assert stats.errors == [], f
        assert stats.records > 0, f


@needs_shared
def test_regression_evtx_counts_match_json_twins():
    from sensor.sources.evtx import record_to_event
    sets = sorted((SHARED / "data/sigma-regression").rglob("info.yml"))
    assert len(sets) == 80
    for info in sets:
        for evtx_file in info.parent.glob("*.evtx"):
            twin = evtx_file.with_suffix(".json")
            records = _json_twin_records(twin)
            stats = ReadStats()
            events = list(read_paths([evtx_file], stats))
            assert stats.records == len(records), evtx_file
            twin_events = [e for e in (record_to_event(r) for r in records) if e is not None]
            assert len(events) == len(twin_events), evtx_file
            for a, b in zip(events, twin_events):
                # The twins were rendered by another evtx release that trims trailing
                # whitespace in values; the EVTX itself keeps it.
                assert a["Image"] == b["Image"]
                assert (a["CommandLine"] or "").rstrip() == (b["CommandLine"] or "").rstrip()


@needs_shared
def test_security_4688_evtx_mapping():
    stats = ReadStats()
    events = list(read_paths([SHARED / "data/evtx/security-4688"], stats))
    assert stats.files == 3 and not stats.errors and events
    for ev in events:
        assert ev["Image"] == ev["NewProcessName"]
        assert isinstance(ev["ProcessId"], int)
    assert any(ev["User"] for ev in events)
