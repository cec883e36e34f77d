"""Alerts: stable ids, the seed's select fields, the whole event, rule metadata."""
from __future__ import annotations

import json

from sensor.detect.alerts import SELECT_FIELDS, alert_id, build_alert
from sensor.events import ProcessEvent
from sensor.detect.seed import seed_rule


def event(**kw):
    base = dict(Image="C:\\Windows\\System32\\wbem\\mofcomp.exe", ParentImage="C:\\Windows\\cmd.exe",
                CommandLine="mofcomp x.mof", User="CORP\\bob", Computer="WS1", ProcessId=10,
                UtcTime="2026-01-01 00:00:00.000")
    base.update(kw)
    return ProcessEvent(base)


def test_stable_id():
    r = seed_rule()
    assert build_alert(r, event())["id"] == build_alert(r, event())["id"]
    assert build_alert(r, event())["id"] != build_alert(r, event(ProcessId=11))["id"]
    assert alert_id("a", event()) != alert_id("b", event())


def test_select_fields_and_event():
    a = build_alert(seed_rule(), event(Hashes="MD5=1"))
    assert all(k in a for k in SELECT_FIELDS)
    assert a["HOSTNAME"] == "WS1"
    assert a["FILE_NAME"] == "mofcomp.exe"
    assert a["PROCESSNAME"] == event()["Image"]
    assert a["USERNAME"] == "CORP\\bob"
    assert a["PARENTPROCESSNAME"] == "C:\\Windows\\cmd.exe"
    assert a["COMMANDLINE"] == "mofcomp x.mof"
    assert a["MESSAGE"].startswith("Process started: C:\\Windows\\System32\\wbem\\mofcomp.exe (pid 10)")
    assert a["event"]["Hashes"] == "MD5=1" and a["event"]["OriginalFileName"] is None
    assert a["rule"]["title"] == "Potential Suspicious Mofcomp Execution"
    assert a["rule"]["level"] == "critical" and a["rule"]["mitre"] == ["T1218"]
    assert a["rule"]["next_steps"] and a["rule"]["mitigations"]
    json.dumps(a)  # JSON-ready


def test_pending_fields_resolved_for_alert():
    ev = event()
    calls = []
    ev.set_pending("OriginalFileName", lambda e, f: calls.append(f) or "mofcomp.exe")
    a = build_alert(seed_rule(), ev)
    assert a["event"]["OriginalFileName"] == "mofcomp.exe" and calls == ["OriginalFileName"]
