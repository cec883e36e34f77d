"""``etw-sensor selftest``: start a renamed mofcomp and check what the sensor made of it.

On Windows (elevated) it starts live ETW sessions, copies ``%SystemRoot%\\System32\\wbem\\
mofcomp.exe`` (a system binary with a version resource) to a temporary name, starts the copy
suspended with a marker command line (it never runs), and checks within a bounded time that the
start arrived with Image, CommandLine, ParentImage, User, IntegrityLevel and OriginalFileName
filled (and where each came from), that the built-in rule alerted on the renamed copy, the
start-to-event latency, ETW's loss counters and the forced-flush state.

Elsewhere the same checks run through a capture file: a real child process is started, the
Kernel-Process start record the consumer would have delivered for it is written to a capture
file (with a PE image whose version resource says mofcomp.exe, since there is no Windows binary
to copy), and the file is read through the same processor as ``scan``/``run --replay``, with the
live process table and back-fill.  Exit 0 when every check passed, 1 when one failed.
"""
from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

FIELDS = ("Image", "CommandLine", "ParentImage", "User", "IntegrityLevel", "OriginalFileName")
CREATE_SUSPENDED = 0x00000004
CREATE_NO_WINDOW = 0x08000000


@dataclass
class Check:
    """One line of the report: ``ok`` True (passed), False (failed) or None (not applicable)."""

    name: str
    ok: bool | None
    value: Any = None
    source: str | None = None
    detail: str = ""


def register(sub) -> None:
    p = sub.add_parser("selftest", help="start a renamed mofcomp and check the sensor saw it all",
                       description="Windows (elevated): live ETW sessions, a renamed copy of mofcomp.exe "
                                   "started suspended with a marker command line, and checks of every "
                                   "field, its origin, the built-in rule, latency, ETW losses and flushes. "
                                   "Elsewhere: the same checks through a capture file and a real child "
                                   "process. Exit 0 when all passed, 1 otherwise.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the start (default 30)")
    p.set_defaults(func=main)


# -- checks (pure: an event and the numbers around it) -------------------------------------------

def evaluate(ev: Any, marker: str, latency: float | None, matched: list[str], rule_id: str,
             stats: dict | None, live: bool, timeout: float) -> list[Check]:
    """The checks over the event the sensor produced (None when none arrived in time)."""
    checks = [Check("start arrived", ev is not None,
                    None if latency is None else f"{latency * 1000:.0f} ms after the start",
                    detail="" if ev is not None else f"no event for the child within {timeout:.0f} s")]
    origin = (getattr(ev, "origin", None) or {}) if ev is not None else {}
    for name in FIELDS:
        value = ev.get(name) if ev is not None else None
        ok = value not in (None, "")
        detail = ""
        if ok and name == "CommandLine" and marker not in value:
            ok, detail = False, "the marker is not in the command line"
        if ok and name == "OriginalFileName" and str(value).lower() != "mofcomp.exe":
            ok, detail = False, "expected mofcomp.exe from the version resource"
        checks.append(Check(name, ok, value, origin.get(name), detail))
    checks.append(Check("built-in rule alerted", rule_id in matched, ", ".join(matched) or None,
                        detail="" if rule_id in matched else "the renamed copy did not raise the built-in rule"))
    checks.append(Check("latency", latency is not None and latency <= timeout,
                        None if latency is None else round(latency * 1000, 1), detail="ms"))
    if live and stats is not None:
        lost = {k: stats.get(k, 0) for k in ("events_lost", "realtime_buffers_lost", "rt_lost_events",
                                             "callback_drops")}
        checks.append(Check("ETW loss counters", not any(lost.values()), lost))
        sessions = stats.get("sessions") or [{}]
        flushes = sum(s.get("flushes", 0) for s in sessions)
        errors = sum(s.get("flush_errors", 0) for s in sessions)
        checks.append(Check("forced flush", flushes > 0 and errors == 0,
                            {"flushes": flushes, "flush_errors": errors}))
    else:
        why = "not applicable: replayed from a capture file, no live session"
        checks.append(Check("ETW loss counters", None, detail=why))
        checks.append(Check("forced flush", None, detail=why))
    return checks


def verdict(checks: list[Check]) -> bool:
    """True when no check failed."""
    return all(c.ok is not False for c in checks)


# -- the run ---------------------------------------------------------------------------------------

def _rules():
    from .. import create_matcher, load_rules
    from ..detect.seed import SEED_RULE_ID
    rules, _ = load_rules(builtin=True)
    return create_matcher(rules), SEED_RULE_ID


def _enrich_and_match(ev: Any, path_map: dict | None) -> list[str]:
    from ..enrich.enricher import Enricher
    from ..enrich.pe import VersionInfoCache
    cache = VersionInfoCache(maxsize=16)
    Enricher(pe_lookup=cache.lookup, path_map=path_map or None)(ev)
    matcher, _ = _rules()
    ids = [matcher.rules[i].id for i in matcher.match(ev)]
    if getattr(ev, "pending", None):
        ev.resolve_all()
    return ids


def _encode_start_v3(pid: int, ppid: int, create_time: int, image: str, label_rid: int) -> bytes:
    """A Kernel-Process ProcessStart v3 payload, field by field from the manifest's list."""
    from ..sources import etw_manifest as m
    values = {"ProcessID": pid, "ProcessSequenceNumber": 0, "CreateTime": create_time,
              "ParentProcessID": ppid, "ParentProcessSequenceNumber": 0, "SessionID": 1, "Flags": 0,
              "ProcessTokenElevationType": 1, "ProcessTokenIsElevated": 0, "ImageName": image,
              "ImageChecksum": 0, "TimeDateStamp": 0, "PackageFullName": "", "PackageRelativeAppId": ""}
    out = bytearray()
    for name, typ in m.kernel_process_schema(1, 3).fields:
        if typ == m.U32:
            out += struct.pack("<I", values[name])
        elif typ in (m.U64, m.FILETIME):
            out += struct.pack("<Q", values[name])
        elif typ == m.SID:                                   # MandatoryLabel: S-1-16-<rid>
            out += bytes([1, 1, 0, 0, 0, 0, 0, 16]) + struct.pack("<I", label_rid)
        elif typ == m.UTF16Z:
            out += values[name].encode("utf-16-le") + b"\0\0"
        else:  # pragma: no cover - v3 has no other types
            raise AssertionError(typ)
    return bytes(out)


def run_capture_selftest(timeout: float = 30.0) -> dict:
    """The checks through a capture file and a real child process (any OS)."""
    import psutil

    from ..enrich.backfill import Backfiller
    from ..enrich.process_table import filetime_from_unix
    from ..sources.base import ReadStats
    from ..sources.capture import CaptureWriter, processor_for, read_records
    from ..sources.etw_raw import SRC_KERNEL_PROCESS
    from ..testing.pe_image import pe_with_version

    token = secrets.token_hex(4)
    marker = f"etw-sensor-selftest-{token}"
    tmp = tempfile.mkdtemp(prefix="etw-sensor-selftest-")
    child = None
    try:
        # The image as Windows would show it, and where it really is here (the PE path map).
        win_dir = "C:\\Users\\selftest\\AppData\\Local\\Temp\\" + os.path.basename(tmp)
        exe = f"selftest-{token}.exe"
        with open(os.path.join(tmp, exe), "wb") as fh:
            fh.write(pe_with_version({"CompanyName": "etw-sensor self-test", "FileDescription": "self-test image",
                                      "InternalName": "mofcomp", "OriginalFilename": "mofcomp.exe",
                                      "ProductName": "etw-sensor"}, (10, 0, 0, 1)))
        t0 = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                                  f"{win_dir}\\{marker}.mof", "-selftest"], stdin=subprocess.PIPE)
        ct = filetime_from_unix(psutil.Process(child.pid).create_time())
        label = 0x3000 if hasattr(os, "geteuid") and os.geteuid() == 0 else 0x2000
        cap = os.path.join(tmp, "selftest.capture.jsonl")
        devices = {"\\Device\\HarddiskVolume3": "C:"}
        with CaptureWriter(cap, socket.gethostname(), devices) as w:
            image = "\\Device\\HarddiskVolume3" + win_dir[2:] + "\\" + exe
            w.write((SRC_KERNEL_PROCESS, 1, 3, 1, os.getpid(), 0, ct, 0x0240,
                     _encode_start_v3(child.pid, os.getpid(), ct, image, label)))
        stats = ReadStats()
        header, records = read_records(cap, stats)
        proc = processor_for(header or {}, Backfiller())
        proc.table.seed_from_psutil()                        # as the live source does at start
        ev = None
        for _, raw in records:
            for out in proc.handle(raw) + proc.due():
                if out.get("ProcessId") == child.pid:
                    ev = out
        for out in proc.drain():
            if out.get("ProcessId") == child.pid and ev is None:
                ev = out
        latency = time.monotonic() - t0 if ev is not None else None
        matched = _enrich_and_match(ev, {win_dir: tmp}) if ev is not None else []
        _, rule_id = _rules()
        checks = evaluate(ev, marker, latency, matched, rule_id, None, False, timeout)
        if stats.errors:
            checks.append(Check("capture file", False, len(stats.errors), detail=str(stats.errors[0])))
        return {"mode": "capture", "platform": sys.platform, "verdict": "pass" if verdict(checks) else "fail",
                "source": "a capture file written from a real child process; IntegrityLevel comes from the "
                          "record this test wrote (no integrity levels here)",
                "checks": [asdict(c) for c in checks]}
    finally:
        if child is not None:
            try:
                child.stdin.close()                          # type: ignore[union-attr]
                child.wait(10)
            except Exception:  # noqa: BLE001
                child.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def run_live_selftest(timeout: float = 30.0, platform: Callable[[], tuple[Any, dict]] | None = None) -> dict:
    """The checks on live ETW (Windows, elevated)."""
    from ..sources.etw import EtwConfig, EtwSource
    from ..sources.etw_session import SessionSpec, instance_session_name, system_logger_spec
    from ..sources import etw_windows as ew

    elevated = ew.is_elevated()
    pre = [Check("elevated", bool(elevated), elevated,
                 detail="" if elevated else "ETW sessions need an elevated prompt (administrators)")]
    if not elevated:
        return {"mode": "live", "platform": sys.platform, "verdict": "fail", "checks": [asdict(c) for c in pre]}
    token = secrets.token_hex(4)
    marker = f"etw-sensor-selftest-{token}"
    tmp = tempfile.mkdtemp(prefix="etw-sensor-selftest-")
    name = instance_session_name("etw-sensor-selftest", tmp)
    cfg = EtwConfig(session=SessionSpec(name=name), logger=system_logger_spec(name=name + "-syslogger"),
                    system_logger=True)
    events: queue.Queue = queue.Queue()
    src = EtwSource(cfg, platform=platform or ew.platform_parts)
    child = None
    try:
        src.start(lambda ev: events.put(ev) or True)
        exe = os.path.join(tmp, f"selftest-{token}.exe")
        shutil.copyfile(os.path.join(os.environ.get("SystemRoot", "C:\\Windows"), "System32", "wbem",
                                     "mofcomp.exe"), exe)
        t0 = time.monotonic()
        child = subprocess.Popen([exe, os.path.join(tmp, marker + ".mof"), "-selftest"],
                                 creationflags=CREATE_SUSPENDED | CREATE_NO_WINDOW)
        ev, latency = None, None
        deadline = t0 + timeout
        while ev is None and time.monotonic() < deadline:
            try:
                got = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if got.get("ProcessId") == child.pid:
                ev, latency = got, time.monotonic() - t0
        matched = _enrich_and_match(ev, None) if ev is not None else []
        _, rule_id = _rules()
        checks = pre + evaluate(ev, marker, latency, matched, rule_id, src.stats(), True, timeout)
        return {"mode": "live", "platform": sys.platform, "session": name,
                "verdict": "pass" if verdict(checks) else "fail", "checks": [asdict(c) for c in checks]}
    finally:
        if child is not None:
            child.kill()
            child.wait(10)
        src.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def render(report: dict) -> str:
    """The report as a table and a verdict line."""
    rows = [("check", "result", "value", "source")]
    for c in report["checks"]:
        result = {True: "ok", False: "FAIL", None: "n/a"}[c["ok"]]
        value = c["value"]
        text = json.dumps(value) if isinstance(value, (dict, list)) else ("" if value is None else str(value))
        if c["detail"] and c["ok"] is not True:
            text = (text + "  " if text else "") + f"({c['detail']})"
        rows.append((c["name"], result, text if len(text) <= 90 else text[:87] + "...", c["source"] or ""))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{width[0]}}  {b:<{width[1]}}  {v:<{width[2]}}  {s}".rstrip() for a, b, v, s in rows]
    failed = sum(1 for c in report["checks"] if c["ok"] is False)
    na = sum(1 for c in report["checks"] if c["ok"] is None)
    lines.append(f"verdict: {report['verdict'].upper()} ({report['mode']}, {len(report['checks'])} checks, "
                 f"{failed} failed, {na} not applicable)")
    if report.get("source"):
        lines.append(f"source: {report['source']}")
    return "\n".join(lines)


def main(args) -> int:
    try:
        if sys.platform == "win32":
            report = run_live_selftest(args.timeout)
        else:
            report = run_capture_selftest(args.timeout)
    except Exception as exc:  # noqa: BLE001 - the report says what failed; no traceback
        report = {"mode": "live" if sys.platform == "win32" else "capture", "platform": sys.platform,
                  "verdict": "fail", "checks": [asdict(Check("self-test ran", False, detail=str(exc)))]}
    print(json.dumps(report, indent=1, default=str) if args.json else render(report))
    return 0 if report["verdict"] == "pass" else 1
