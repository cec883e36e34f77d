"""``rules doctor``: verdicts per source on hand-picked rules, the CLI, and the running sensor's count."""
from __future__ import annotations

import json

import pytest

from sensor.cli import main
from sensor.detect.doctor import DEGRADED, FIRES, NEVER, diagnose, doctor, profiles
from sensor.detect.sigma import load_sigma_text
from sensor.detect.spoofing import spoofing_rule


def rule(detection: str):
    text = ("title: t\nid: 0e3b1d8a-0000-4000-8000-000000000001\nlogsource:\n  category: process_creation\n"
            "  product: windows\ndetection:\n" + "".join("  " + ln + "\n" for ln in detection.splitlines()))
    res = load_sigma_text(text, "t.yml")
    assert not res.rejected, res.rejected
    return res.rules[0]


def verdicts(r):
    return {p.name: diagnose(r, p).verdict for p in profiles()}


def test_image_only_rule_fires_everywhere():
    assert set(verdicts(rule("s:\n  Image|endswith: '\\\\x.exe'\ncondition: s")).values()) == {FIRES}


def test_command_line_rule_per_source():
    v = verdicts(rule("s:\n  CommandLine|contains: ' -enc '\ncondition: s"))
    assert v == {"etw": NEVER, "etw+backfill": DEGRADED, "etw+system_logger": FIRES,
                 "etw+system_logger+backfill": FIRES, "sysmon": FIRES, "security_4688": FIRES}


def test_a_missing_field_under_or_or_not_does_not_kill_the_rule():
    r = rule("a:\n  Image|endswith: '\\\\x.exe'\nb:\n  Hashes|contains: 'IMPHASH=00'\ncondition: a or b")
    assert verdicts(r)["security_4688"] == FIRES
    r = rule("a:\n  Image|endswith: '\\\\x.exe'\nf:\n  ParentCommandLine|contains: 'y'\ncondition: a and not f")
    assert verdicts(r)["security_4688"] == FIRES       # the filter is false there: the rule can fire
    r = rule("a:\n  Image|endswith: '\\\\x.exe'\nb:\n  ParentUser|contains: 'AUTHORI'\ncondition: a and b")
    d = diagnose(r, next(p for p in profiles() if p.name == "etw+backfill"))
    assert d.verdict == NEVER and d.fields == ["ParentUser"]


def test_exists_false_on_a_missing_field_is_true():
    r = rule("s:\n  Image|endswith: '\\\\x.exe'\n  OriginalFileName: null\ncondition: s")
    assert verdicts(r)["security_4688"] == FIRES


def test_spoofing_rule_needs_the_creator():
    v = verdicts(spoofing_rule())
    assert v["sysmon"] == NEVER and v["security_4688"] == NEVER and v["etw"] == FIRES


def test_a_grandparent_rule_is_degraded_on_sysmon_and_never_on_4688():
    # recorded Sysmon starts get the grandparent from the parent's own start when it was read
    # before (sometimes); Security 4688 records carry pids only (never)
    r = rule("s:\n  Image|endswith: '\\\\whoami.exe'\n  GrandParentImage|endswith: '\\\\cmd.exe'\n"
             "condition: s")
    v = verdicts(r)
    assert v["sysmon"] == DEGRADED and v["security_4688"] == NEVER and v["etw"] == DEGRADED


def test_cli_table_and_json(tmp_path, capsys):
    (tmp_path / "a.yml").write_text(
        "title: needs parent user\nid: 0e3b1d8a-0000-4000-8000-000000000002\nlogsource:\n"
        "  category: process_creation\n  product: windows\ndetection:\n  s:\n    ParentUser|contains: 'x'\n"
        "  condition: s\n")
    assert main(["rules", "doctor", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "needs parent user" in out and "fields: ParentUser" in out
    assert "etw+backfill                 fires     1  degraded     1  never     1" in out
    assert main(["rules", "doctor", "--json", "--no-builtin-rules", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["sysmon"] == {FIRES: 1, DEGRADED: 0, NEVER: 0}
    assert doc["totals"]["etw"][NEVER] == 1
    assert doc["rules"][0]["verdicts"][0] == {"source": "etw", "verdict": NEVER, "fields": ["ParentUser"]}


def test_heartbeat_and_status_carry_the_never_fire_count():
    from sensor.daemon.health import RulesHealth, Status, heartbeat_line
    from sensor.daemon.pipeline import _never_fire

    class Etw:
        class config:
            system_logger = False
            backfill = True
    counts, profile = _never_fire([spoofing_rule()], Etw())
    assert profile == "etw+backfill" and counts["sysmon"] == 1 and counts["etw+backfill"] == 0
    s = Status()
    s.rules = RulesHealth(loaded=1, never_fire=counts, profile=profile)
    assert "never fire 0 on etw+backfill," in heartbeat_line(s)
    s.rules = RulesHealth(loaded=1, never_fire=counts)
    assert "never fire 0-1 by source," in heartbeat_line(s)


@pytest.mark.slow
def test_sigmahq_totals_match_the_readme():
    import os
    import re
    root = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sigma-rules")
    if not os.path.isdir(root):
        pytest.skip("the SigmaHQ rules are not in ../shared")
    from sensor.detect.loader import load_rules
    totals = doctor(load_rules([root], builtin=False).rules).totals()
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    for name, t in totals.items():
        m = re.search(r"^\| `" + re.escape(name) + r"` \| (\d+) \| (\d+) \| (\d+) \|$", readme, re.M)
        assert m, name
        assert tuple(int(x) for x in m.groups()) == (t[FIRES], t[DEGRADED], t[NEVER]), name
