"""Loading a rule takes bounded work whatever the file says; backtracking regexes need an opt-in.

A rule whose regex needs backtracking (backreference, lookaround...) is rejected with its
file, line and reason unless the operator allows it for that rule; ``rules validate``
says which rules run on which regex engine.  Oversized rule files, packs and rules are
refused with an error naming the file, before the costly work.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from sensor.detect import ir
from sensor.detect.ir import Predicate, Rule, RuleError
from sensor.detect.loader import load_rules
from sensor.detect.pack import MAX_PACK_BYTES, encode_pack, write_pack
from sensor.detect.sigma import MAX_RULE_FILE_BYTES
from sensor.events import ProcessEvent
from sensor.detect import matcher as M

RULE_ID = "0a6b1c2d-0000-4000-8000-00000000000b"


def sigma(detection: str, rid: str = RULE_ID) -> str:
    return (f"title: Backtracking test\nid: {rid}\nlogsource:\n    category: process_creation\n"
            f"    product: windows\ndetection:\n" + textwrap.indent(textwrap.dedent(detection), "    "))


BACKREF = sigma("""\
selection:
    Image|endswith: '\\\\cmd.exe'
    CommandLine|re: '(\\w+) \\1'
condition: selection
""")


def test_backtracking_regex_is_rejected_with_file_line_and_reason(tmp_path):
    f = tmp_path / "backref.yml"
    f.write_text(BACKREF, encoding="utf-8")
    report = load_rules([f], builtin=False)
    assert report.rules == []
    (rej,) = report.rejected
    assert rej.path == str(f)
    assert rej.line == 9                          # the line holding the regex
    assert "backreference" in rej.reason and "--allow-backtracking " + RULE_ID in rej.reason


def test_opt_in_per_rule_runs_it_under_the_budget(tmp_path, engine):
    f = tmp_path / "backref.yml"
    f.write_text(BACKREF, encoding="utf-8")
    other = tmp_path / "other.yml"
    other.write_text(BACKREF.replace(RULE_ID, RULE_ID[:-1] + "c"), encoding="utf-8")
    report = load_rules([f, other], builtin=False, allow_backtracking=[RULE_ID])
    assert [r.id for r in report.rules] == [RULE_ID]          # only the named rule
    assert len(report.rejected) == 1
    m = M.create(report.rules, engine)
    assert m.match(ProcessEvent(Image="C:\\cmd.exe", CommandLine="echo echo x")) == [0]
    assert m.match(ProcessEvent(Image="C:\\cmd.exe", CommandLine="ab cd")) == []
    assert m.regex_engines()[0][0][1] == "backtrack"


def test_opt_in_does_not_let_a_regex_no_engine_may_prepare_through(tmp_path):
    # The backreference stops the RE2 plan before the nine case-insensitive non-ASCII
    # literals after it are looked at; the backtracking engine needs all nine, each a scan
    # of every code point, and more than 8 is refused for any engine: the allowed rule is
    # still rejected, with that reason, and the other rules load
    letters = "".join(chr(0x1E00 + 2 * i) for i in range(9))
    f = tmp_path / "costly.yml"
    f.write_text(sigma(f"""\
selection:
    CommandLine|re: '(?i)(\\w+) \\1{letters}'
condition: selection
"""), encoding="utf-8")
    g = tmp_path / "other.yml"
    g.write_text(BACKREF.replace(RULE_ID, RULE_ID[:-1] + "c"), encoding="utf-8")
    report = load_rules([f, g], builtin=False, allow_backtracking=[RULE_ID, RULE_ID[:-1] + "c"])
    assert [r.id for r in report.rules] == [RULE_ID[:-1] + "c"]
    (rej,) = report.rejected
    assert rej.path == str(f)
    assert "more than 8 case-insensitive non-ASCII character sets; refused" in rej.reason, rej.reason


def test_pack_rules_need_the_opt_in_too(tmp_path):
    f = tmp_path / "backref.yml"
    f.write_text(BACKREF, encoding="utf-8")
    rules = load_rules([f], builtin=False, allow_backtracking=[RULE_ID]).rules
    pack = tmp_path / "r.pack"
    write_pack(rules, pack)
    report = load_rules([pack], builtin=False)
    assert report.rules == [] and "backreference" in report.rejected[0].reason
    assert load_rules([pack], builtin=False, allow_backtracking=[RULE_ID]).rules[0].id == RULE_ID


def test_validate_reports_regex_engines(tmp_path):
    f = tmp_path / "backref.yml"
    f.write_text(BACKREF, encoding="utf-8")
    g = tmp_path / "linear.yml"
    g.write_text(sigma("""\
        selection:
            CommandLine|re: 'net\\s+view'
        condition: selection
        """, rid=RULE_ID[:-1] + "d"), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "sensor", "rules", "validate", str(tmp_path),
                          "--allow-backtracking", RULE_ID], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 rules with regular expressions: 1 on RE2 (linear time), 1 on the step-budgeted" in out.stdout
    assert f"backtrack {RULE_ID} {f}" in out.stdout
    out = subprocess.run([sys.executable, "-m", "sensor", "rules", "validate", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{f}:9: regular expression" in out.stdout


def test_oversized_rule_file_is_refused_unread(tmp_path):
    f = tmp_path / "huge.yml"
    values = "\n".join(f"            - 'v{i}'" for i in range(MAX_RULE_FILE_BYTES // 10))
    f.write_text(sigma(f"selection:\n    CommandLine|contains:\n{values}\ncondition: selection\n"),
                 encoding="utf-8")
    assert f.stat().st_size > MAX_RULE_FILE_BYTES
    report = load_rules([f], builtin=False)
    (rej,) = report.rejected
    assert rej.path == str(f) and "too large" in rej.reason


def test_rule_with_too_many_values_is_refused_naming_the_file(tmp_path):
    n = ir.MAX_VALUES_PER_RULE + 1
    f = tmp_path / "many.yml"
    values = "\n".join(f"        - 'v{i}'" for i in range(n))
    f.write_text(sigma(f"selection:\n    CommandLine|contains:\n{values}\ncondition: selection\n"),
                 encoding="utf-8")
    assert f.stat().st_size < MAX_RULE_FILE_BYTES
    report = load_rules([f], builtin=False)
    (rej,) = report.rejected
    assert rej.path == str(f) and "values" in rej.reason and f"{n - 1:,}" in rej.reason


def test_rule_size_bounds():
    many = tuple(Predicate("CommandLine", "contains", ("x",)) for _ in range(ir.MAX_PREDICATES_PER_RULE + 1))
    with pytest.raises(RuleError, match="predicates"):
        Rule(id="a", title="a", predicates=many, condition=("pred", 0))
    big = Predicate("CommandLine", "contains", ("x" * (ir.MAX_VALUE_CHARS_PER_RULE + 1),))
    with pytest.raises(RuleError, match="characters of values"):
        Rule(id="a", title="a", predicates=(big,), condition=("pred", 0))
    long_re = Predicate("CommandLine", "re", ("a" * (ir.MAX_REGEX_CHARS + 1),))
    with pytest.raises(RuleError, match="regular expression of"):
        Rule(id="a", title="a", predicates=(long_re,), condition=("pred", 0))
    deep: list = ["pred", 0]
    for _ in range(ir.MAX_CONDITION_DEPTH + 1):
        deep = ["not", deep]
    with pytest.raises(RuleError, match="nested"):
        Rule(id="a", title="a", predicates=(Predicate("Image", "eq", ("x",)),), condition=deep)


def test_oversized_pack_is_refused_unread(tmp_path):
    p = tmp_path / "huge.pack"
    data = encode_pack([])
    with open(p, "wb") as fh:
        fh.write(data)
        fh.seek(MAX_PACK_BYTES)
        fh.write(b"x")
    report = load_rules([p], builtin=False)
    (rej,) = report.rejected
    assert rej.path == str(p) and "larger than" in rej.reason


def test_pack_rule_with_a_deep_condition_is_refused(tmp_path):
    deep: list = ["pred", 0]
    for _ in range(500):
        deep = ["not", deep]
    rule = Rule(id="a", title="a", predicates=(Predicate("Image", "eq", ("x",)),), condition=("pred", 0))
    d = rule.to_json()
    d["condition"] = deep
    import hashlib
    body = json.dumps({"created": "", "generator": "", "sources": [], "rules": [d]}).encode()
    header = json.dumps({"pack": 1, "ir": 1, "length": len(body),
                         "sha256": hashlib.sha256(body).hexdigest()}).encode()
    p = tmp_path / "deep.pack"
    p.write_bytes(b"ETW-SENSOR-RULEPACK\n" + header + b"\n" + body)
    report = load_rules([p], builtin=False)
    (rej,) = report.rejected
    assert "nested more than" in rej.reason


def test_running_sensor_reports_undecided_rules_and_evaluates_the_rest(tmp_path, engine):
    # a backtracking regex that runs out of its step budget on one event: the rule does
    # not match it, the other rule still alerts, and the status names the rule and counts
    from sensor.daemon.pipeline import Pipeline
    from sensor.detect.seed import seed_rule
    from sensor.sources.replay import ReplaySource

    f = tmp_path / "backref.yml"
    f.write_text(BACKREF, encoding="utf-8")
    rules = load_rules([f], builtin=False, allow_backtracking=[RULE_ID]).rules + [seed_rule()]
    rec = tmp_path / "rec.jsonl"
    events = [{"Image": "C:\\Windows\\System32\\cmd.exe", "CommandLine": "a" * 5000 + "!"},
              {"Image": "C:\\Windows\\System32\\cmd.exe", "CommandLine": "echo echo x"},
              {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "CommandLine": "mofcomp a.mof",
               "ParentImage": "C:\\Windows\\System32\\cmd.exe"}]
    rec.write_text("".join(json.dumps(e) + "\n" for e in events))
    p = Pipeline(source=ReplaySource([str(rec)]), rules=rules, engine=engine, heartbeat_interval=0,
                 ledger=False)
    p.start()
    assert p.wait_source(30)
    status = p.stop(drain_timeout=30)
    assert status["events"]["in"] == 3 and status["events"]["errors"] == 0
    assert status["matcher"]["undecided"] == 1
    assert status["matcher"]["undecided_by_rule"] == {RULE_ID: 1}
    assert status["alerts"]["by_rule"] == {RULE_ID: 1, seed_rule().id: 1}
    assert any("undecided" in x for x in status["problems"])


CLIP = sigma("""\
selection:
    CommandLine|re: '(?i)echo.*clip.*&&.*(?:Clipboard|i`?n`?v`?o`?k`?e`?)'
condition: selection
""", rid="0a6b1c2d-0000-4000-8000-00000000000d")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sensor_keeps_beating_and_stops_while_matching_hostile_command_lines(tmp_path):
    # SigmaHQ's "Use Clip" regex took minutes on such command lines under a backtracking
    # engine, holding the GIL: no heartbeat, SIGTERM ignored.  Now the heartbeat advances
    # while they are matched, and SIGTERM stops the sensor.  (The timeouts only guard a hang.)
    import os
    import signal
    import time

    (tmp_path / "clip.yml").write_text(CLIP, encoding="utf-8")
    rec = tmp_path / "clip.jsonl"
    line = json.dumps({"Image": "C:\\Windows\\System32\\cmd.exe",
                       "CommandLine": ("echo clip && " * 2600)[:32767]})
    rec.write_text((line + "\n") * 50)
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(f'[sensor]\ndata_dir = "{tmp_path / "state"}"\nheartbeat_s = 0.2\n'
                   f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\nloop = 100000\n'
                   f'[rules]\npaths = ["{tmp_path / "clip.yml"}"]\nbuiltin = false\n'
                   f'[output]\nformat = "jsonl"\npath = "{tmp_path / "alerts.jsonl"}"\n')
    os.chmod(cfg, 0o600)
    proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-c", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    status_file = tmp_path / "state" / "status.json"

    def status():
        try:
            return json.loads(status_file.read_text())
        except (OSError, ValueError):
            return None

    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 3:
            st = status()
            if st and st["events"]["in"] > 0 and st["written_at"] not in {s["written_at"] for s in seen}:
                seen.append(st)
            time.sleep(0.05)
        assert len(seen) >= 3, "the heartbeat stopped while hostile command lines were matched"
        assert seen[-1]["events"]["in"] > seen[0]["events"]["in"]      # still matching
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 1), err
    assert "signal 15: stopping" in err
    assert status()["sensor"]["state"] == "stopped"


def test_hot_reload_keeps_the_per_rule_opt_in_from_the_config(tmp_path):
    """The opt-in travels with the configuration through the reload path: a reload of an
    unchanged config keeps the backtracking rule, a config without the opt-in refuses it
    (on_error = "fail") and the running set stays."""
    from sensor.daemon.config import load as load_config
    from sensor.daemon.pipeline import Pipeline
    from sensor.daemon.reload import Reloader, load_configured
    rule = tmp_path / "backref.yml"
    rule.write_text(BACKREF, encoding="utf-8")
    conf = tmp_path / "sensor.toml"

    def write(allowed):
        conf.write_text(f'[sensor]\ndata_dir = "{tmp_path / "data"}"\n'
                        f'[rules]\npaths = ["{rule}"]\nbuiltin = false\nwatch_s = 0\n'
                        f'allow_backtracking = {json.dumps(allowed)}\n', encoding="utf-8")

    write([RULE_ID])
    cfg = load_config(str(conf))
    loaded = load_configured(cfg)
    assert [r.id for r in loaded.rules] == [RULE_ID] and not loaded.errors
    pipe = Pipeline(source=None, rules=loaded.rules, heartbeat_interval=0)
    reloader = Reloader(pipe, cfg)
    res = reloader.reload("signal")
    assert res.ok, res.errors
    assert [r.id for r in pipe.rules] == [RULE_ID] and pipe.generation == 1
    assert pipe.matcher.regex_engines()[0][0][1] == "backtrack"

    write([])
    res = reloader.reload("signal")
    assert not res.ok and any("backreference" in e for e in res.errors), res.errors
    assert [r.id for r in pipe.rules] == [RULE_ID] and pipe.generation == 1


def test_doctor_takes_the_opt_in_like_the_sensor(tmp_path):
    f = tmp_path / "backref.yml"
    f.write_text(BACKREF, encoding="utf-8")
    cmd = [sys.executable, "-m", "sensor", "rules", "doctor", "--no-builtin-rules", "--json", str(f)]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "backreference" in refused.stderr
    ok = subprocess.run(cmd + ["--allow-backtracking", RULE_ID], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rejected"] == []
