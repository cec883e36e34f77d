"""Noise control: exclusions (per process and per rule) and the throttle window."""
from __future__ import annotations

import pytest

from sensor.events import ProcessEvent
from sensor.detect.noise import Exclusion, Exclusions, Throttle
from sensor.detect.ir import Predicate, Rule

RULE_A = Rule(id="rule-a", title="Rule A", predicates=(Predicate("Image", "endswith", ("\\x.exe",)),),
              condition=("pred", 0))


def ev(**kw):
    return ProcessEvent(kw)


def test_process_exclusion_drops_event(make_matcher):
    # Sigma escaping: a backslash before * escapes it, so "folder\\*" needs the backslash doubled.
    ex = Exclusions([Exclusion(name="sccm", fields={"parent_image": r"C:\Windows\CCM\\*"})], make_matcher)
    hits = ex.matching(ev(Image="C:\\x.exe", ParentImage="c:\\windows\\ccm\\ccmexec.exe"))
    assert ex.drops_event(hits) and ex.suppressed_events == 1
    assert ex.matching(ev(Image="C:\\x.exe", ParentImage="C:\\Windows\\explorer.exe")) == []


def test_rule_exclusion_only_for_named_rules(make_matcher):
    ex = Exclusions([Exclusion(rules=["Rule A"], fields={"command_line|contains": ["ZTITatoo.mof"]})],
                    make_matcher)
    other = Rule(id="rule-b", title="B", predicates=RULE_A.predicates, condition=RULE_A.condition)
    hits = ex.matching(ev(CommandLine="cscript ztitatoo.MOF"))
    assert hits and not ex.drops_event(hits)
    assert ex.drops_alert(hits, RULE_A)
    assert not ex.drops_alert(hits, other)
    assert dict(ex.suppressed_alerts) == {"rule-a": 1}


def test_all_keys_must_hold_and_lists_are_any(make_matcher):
    ex = Exclusions([Exclusion(fields={"image": ["*\\a.exe", "*\\b.exe"], "user": "CORP\\svc_*"})],
                    make_matcher)
    assert ex.matching(ev(Image="C:\\B.EXE", User="corp\\svc_backup"))
    assert not ex.matching(ev(Image="C:\\B.EXE", User="corp\\alice"))
    assert not ex.matching(ev(Image="C:\\c.exe", User="corp\\svc_backup"))


def test_backslash_star_is_a_literal_star(make_matcher):
    ex = Exclusions([Exclusion(fields={"image": r"C:\Tools\*"})], make_matcher)
    assert ex.matching(ev(Image="C:\\Tools*"))
    assert not ex.matching(ev(Image="C:\\Tools\\x.exe"))


def test_glob_escapes(make_matcher):
    ex = Exclusions([Exclusion(fields={"command_line": "run \\*now\\?"})], make_matcher)
    assert ex.matching(ev(CommandLine="RUN *NOW?"))
    assert not ex.matching(ev(CommandLine="run xnowy"))


@pytest.mark.parametrize("fields,msg", [
    ({"imag": "x"}, "unknown exclusion key"),
    ({"image|fuzzy": "x"}, "unknown modifier"),
    ({}, "at least one field pattern"),
    ({"image": []}, "needs one or more strings"),
])
def test_bad_exclusions(make_matcher, fields, msg):
    with pytest.raises(ValueError, match=msg):
        Exclusions([Exclusion(fields=fields)], make_matcher)


def test_throttle_window_and_report():
    now = [1000.0]
    t = Throttle(60, clock=lambda: now[0])
    e = ev(Image="C:\\x.exe", CommandLine="x", User="u", Computer="h")
    assert t.allow("r", e)
    assert not t.allow("r", e) and not t.allow("r", e)
    assert t.allow("other-rule", e)                       # other rule: own key
    assert t.allow("r", ev(Image="C:\\x.exe", CommandLine="y", User="u", Computer="h"))
    assert t.suppressed == {"r": 2}
    now[0] += 61
    assert t.flush() == [{"rule": "r", "suppressed": 2, "window_s": 60.0}]
    assert t.allow("r", e)                                # new window
    assert t.flush() == []


def test_throttle_off():
    t = Throttle(0)
    e = ev(Image="a")
    assert all(t.allow("r", e) for _ in range(5))
