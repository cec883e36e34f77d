"""``etw-sensor selftest`` off Windows: the same checks through a capture file and a real child."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sensor.commands import selftest
from sensor.events import ProcessEvent


def test_selftest_passes_end_to_end_through_a_capture():
    p = subprocess.run([sys.executable, "-m", "sensor", "selftest", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["verdict"] == "pass" and report["mode"] == "capture"
    checks = {c["name"]: c for c in report["checks"]}
    for name, source in (("Image", "etw"), ("CommandLine", "backfill"), ("ParentImage", "process_table"),
                         ("User", "backfill"), ("IntegrityLevel", "etw"), ("OriginalFileName", "pe")):
        assert checks[name]["ok"] is True and checks[name]["source"] == source, checks[name]
    assert checks["OriginalFileName"]["value"] == "mofcomp.exe"
    assert checks["Image"]["value"].endswith(".exe") and "selftest-" in checks["Image"]["value"]
    assert "etw-sensor-selftest-" in checks["CommandLine"]["value"]
    assert checks["built-in rule alerted"]["ok"] is True
    assert checks["ETW loss counters"]["ok"] is None and checks["forced flush"]["ok"] is None


def test_table_output_and_exit_code(capsys):
    import argparse
    assert selftest.main(argparse.Namespace(json=False, timeout=60.0)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["check", "result", "value", "source"]
    assert "verdict: PASS (capture" in out


def _event(**fields):
    ev = ProcessEvent(fields)
    ev.origin = {k: "etw" for k in fields}
    return ev


@pytest.mark.parametrize("drop,failed", [
    ("OriginalFileName", {"OriginalFileName"}),
    ("User", {"User"}),
    ("CommandLine", {"CommandLine"}),
])
def test_checks_fail_when_a_field_is_missing(drop, failed):
    fields = {"Image": "C:\\t\\x.exe", "CommandLine": "x MARK", "ParentImage": "C:\\p.exe", "User": "u",
              "IntegrityLevel": "High", "OriginalFileName": "mofcomp.exe"}
    fields.pop(drop)
    checks = selftest.evaluate(_event(**fields), "MARK", 0.1, ["r1"], "r1", None, False, 30.0)
    assert {c.name for c in checks if c.ok is False} == failed and not selftest.verdict(checks)


def test_checks_fail_on_no_event_wrong_name_no_alert_and_losses():
    checks = selftest.evaluate(None, "MARK", None, [], "r1", None, False, 30.0)
    assert not selftest.verdict(checks) and checks[0].detail.startswith("no event")
    ev = _event(Image="C:\\x.exe", CommandLine="no marker", ParentImage="p", User="u", IntegrityLevel="Low",
                OriginalFileName="notepad.exe")
    stats = {"events_lost": 3, "realtime_buffers_lost": 0, "rt_lost_events": 0, "callback_drops": 0,
             "sessions": [{"flushes": 0, "flush_errors": 2}]}
    bad = {c.name for c in selftest.evaluate(ev, "MARK", 0.2, [], "r1", stats, True, 30.0) if c.ok is False}
    assert bad == {"CommandLine", "OriginalFileName", "built-in rule alerted", "ETW loss counters", "forced flush"}
