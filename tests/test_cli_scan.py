"""``etw-sensor scan``: alerts on stdout or a file, summary on stderr, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

from sensor.cli import main

MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe",
       "CommandLine": "mofcomp a.mof", "Computer": "WS1"}
BENIGN = {"Image": "C:\\Windows\\notepad.exe", "ParentImage": "C:\\Windows\\explorer.exe"}


def test_scan_writes_alerts(tmp_path, capsysbinary):
    src = tmp_path / "ev.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in (MOF, BENIGN, MOF)) + "\n")
    assert main(["scan", str(src)]) == 0
    out, err = capsysbinary.readouterr()
    alerts = [json.loads(line) for line in out.splitlines()]
    assert len(alerts) == 2 and alerts[0]["id"] == alerts[1]["id"]  # same rule + same event
    assert alerts[0]["rule"]["title"] == "Potential Suspicious Mofcomp Execution"
    assert b"3 process start(s)" in err and b"2 alert(s)" in err


def test_scan_output_file_and_errors(tmp_path, capsys):
    src = tmp_path / "ev.jsonl"
    src.write_text(json.dumps(MOF) + "\nnot json\n")
    out = tmp_path / "alerts.jsonl"
    assert main(["scan", str(src), "--output", str(out)]) == 1   # input error -> non-zero
    assert len(out.read_text().splitlines()) == 1                  # the good line still scanned
    err = capsys.readouterr().err
    assert f"{src}:line 2: not valid JSON" in err


def test_no_rules_is_usage_error(tmp_path, capsys):
    src = tmp_path / "ev.jsonl"
    src.write_text(json.dumps(MOF) + "\n")
    assert main(["scan", str(src), "--no-builtin-rules"]) == 2


def test_engines_agree(tmp_path, capsysbinary):
    from sensor.detect.matcher import ENGINES
    src = tmp_path / "ev.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in (MOF, BENIGN)) + "\n")
    outs = []
    for engine in sorted(ENGINES):
        assert main(["scan", str(src), "--engine", engine, "-q"]) == 0
        outs.append([json.loads(x)["id"] for x in capsysbinary.readouterr().out.splitlines()])
    assert all(o == outs[0] for o in outs) and len(outs[0]) == 1


def test_usage_errors():
    r = subprocess.run([sys.executable, "-m", "sensor", "scan"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([sys.executable, "-m", "sensor"], capture_output=True, text=True)
    assert r.returncode == 2


def test_rules_list_verbose_shows_the_seed_metadata(capsys):
    assert main(["rules", "list", "-v"]) == 0
    out = capsys.readouterr().out
    assert "Potential Suspicious Mofcomp Execution" in out
    assert "MITRE ATT&CK: Defense Evasion: System Binary Proxy Execution (T1218)" in out
    assert "next step: Identification: Review the command-line arguments" in out
    assert "mitigation: M1042" in out and "security standard: DE.CM-03" in out


def test_duplicate_rule_ids_are_reported(tmp_path, capsys):
    """Two rules with one id would share alert ids (the spool keeps one): say so, exit 1."""
    from pathlib import Path
    rule = (Path(__file__).parent / "data" / "sigma" / "rules" / "mofcomp.yml").read_text()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yml").write_text(rule)
    (rules / "b.yml").write_text(rule)
    src = tmp_path / "ev.jsonl"
    src.write_text(json.dumps(BENIGN) + "\n")
    assert main(["scan", str(src), "--rules", str(rules)]) == 1
    assert "rule warning:" in capsys.readouterr().err


def test_scan_alerts_say_which_file_and_line(tmp_path, capsysbinary):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(BENIGN) + "\n\n" + json.dumps(MOF) + "\n")       # a blank line 2
    b.write_text("not json\n" + json.dumps(MOF) + "\n")
    assert main(["scan", str(a), str(b), "-q"]) == 1
    alerts = [json.loads(x) for x in capsysbinary.readouterr().out.splitlines()]
    assert [x["input"] for x in alerts] == [{"file": str(a), "line": 3}, {"file": str(b), "line": 2}]


def test_scan_alerts_from_evtx_carry_the_record_id(tmp_path, capsysbinary):
    import pytest

    from .conftest import SHARED
    evtx = SHARED / "data" / "evtx" / "security-4688" / "rdp_hijack_4688.evtx"
    if not evtx.exists():
        pytest.skip("../shared (the research data beside the project) is not present")
    rule = tmp_path / "any.yml"
    rule.write_text("title: Any process\nid: 0b3c8a52-6f0e-4a8e-9a51-3d2b5a7a9999\nstatus: test\n"
                    "logsource:\n  category: process_creation\n  product: windows\n"
                    "detection:\n  sel:\n    Image|contains: '\\'\n  condition: sel\nlevel: low\n")
    assert main(["scan", str(evtx), "--rules", str(rule), "--no-builtin-rules", "-q"]) == 0
    alerts = [json.loads(x) for x in capsysbinary.readouterr().out.splitlines()]
    assert alerts and all(x["input"]["file"] == str(evtx) for x in alerts)
    records = [x["input"]["record"] for x in alerts]
    assert all(isinstance(r, int) and r > 0 for r in records) and len(set(records)) == len(records)
