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
    assert t.flush() == [{"rule": "r", "suppressed": 2, "windows": 1, "window_s": 60.0}]
    assert t.allow("r", e)                                # new window
    assert t.flush() == []


def test_throttle_off():
    t = Throttle(0)
    e = ev(Image="a")
    assert all(t.allow("r", e) for _ in range(5))


def test_exclusion_without_rules_applies_to_every_rule():
    # `rules` empty means every rule (an exclusion without rules is a process exclusion).
    assert Exclusion(fields={"image": "*"}).applies_to(RULE_A)
    assert Exclusion(rules=["rule-*"], fields={"image": "*"}).applies_to(RULE_A)
    assert not Exclusion(rules=["other"], fields={"image": "*"}).applies_to(RULE_A)


def test_compiled_exclusion_is_named_after_its_entry():
    # The IR rule an exclusion compiles to carries the exclusion's name; an unnamed one is
    # still named, after its position.
    assert Exclusion(name="sccm", fields={"image": "*"}).to_rule(0).title == "sccm"
    title = Exclusion(fields={"image": "*"}).to_rule(3).title
    assert title and "3" in title


def _throttled(t, rule, e, times):
    return [t.allow(rule, e) for _ in range(times)]


def test_throttle_window_edges():
    # A repeat counts as the same alert within `window` seconds of the first one; at exactly
    # `window` seconds the window has closed: flush reports it and the alert is raised again.
    now = [1000.0]
    t = Throttle(60, clock=lambda: now[0])
    e = ev(Image="C:\\x.exe", CommandLine="x", User="u", Computer="h")
    assert _throttled(t, "r", e, 3) == [True, False, False]
    now[0] = 1059.5
    assert t.flush() == []                                # window still open: nothing closed
    assert not t.allow("r", e)                            # and a repeat still suppressed
    now[0] = 1060.0
    assert t.flush() == [{"rule": "r", "suppressed": 3, "windows": 1, "window_s": 60.0}]
    assert t.allow("r", e)


def test_throttle_window_below_one_second():
    # Any window above 0 throttles (the config allows fractions of a second).
    now = [5.0]
    t = Throttle(0.5, clock=lambda: now[0])
    e = ev(Image="a")
    assert _throttled(t, "r", e, 2) == [True, False]
    now[0] = 5.5
    assert t.allow("r", e)


def test_closed_window_reported_once_when_the_alert_returns():
    # A window closes when the same alert comes back after it, even before a flush: its
    # suppressions are reported once, under the rule, and a window without repeats reports nothing.
    now = [0.0]
    t = Throttle(10, clock=lambda: now[0])
    e, quiet = ev(Image="a", CommandLine="1"), ev(Image="b", CommandLine="2")
    assert _throttled(t, "rule-x", e, 3) == [True, False, False]
    assert t.allow("rule-y", quiet)
    now[0] = 20.0
    assert t.allow("rule-x", e) and t.allow("rule-y", quiet)
    assert t.flush() == [{"rule": "rule-x", "suppressed": 2, "windows": 1, "window_s": 10.0}]
    now[0] = 40.0
    assert t.flush() == []


def test_throttle_forgets_the_oldest_keys_beyond_max_keys():
    # Memory is bounded: beyond max_keys open windows the oldest is forgotten, so its next
    # repeat raises an alert again (never a lost alert); the others stay throttled.
    now = [0.0]
    t = Throttle(60, clock=lambda: now[0], max_keys=2)
    a, b, c = ev(Image="a"), ev(Image="b"), ev(Image="c")
    assert t.allow("r", a) and t.allow("r", b) and t.allow("r", c)
    assert not t.allow("r", c)
    assert not t.allow("r", b)
    assert t.allow("r", a)


def test_a_window_closed_early_or_by_close_reports_its_count():
    # README: the log reports each closed window's count. A window forgotten at the key bound is
    # closed early, and close() (a reload that turns the throttle off) closes every open window:
    # their counts are reported like those of windows that expired; a window with no repeat
    # reports nothing
    now = [0.0]
    t = Throttle(60, clock=lambda: now[0], max_keys=2)
    a, b, c = ev(Image="a"), ev(Image="b"), ev(Image="c")
    assert _throttled(t, "ra", a, 3) == [True, False, False]
    assert _throttled(t, "rb", b, 2) == [True, False]
    assert t.allow("rc", c)                               # a's window is forgotten here
    assert t.flush() == [{"rule": "ra", "suppressed": 2, "windows": 1, "window_s": 60.0}]
    assert not t.allow("rc", c)
    now[0] = 1.0                                          # nothing expired yet
    assert t.close() == [{"rule": "rb", "suppressed": 1, "windows": 1, "window_s": 60.0},
                         {"rule": "rc", "suppressed": 1, "windows": 1, "window_s": 60.0}]
    assert t.close() == [] and t.flush() == []
    assert t.allow("rb", b)                               # closed: the next one opens a window
    assert t.suppressed == {"ra": 2, "rb": 1, "rc": 1}


def test_the_reports_hold_one_entry_per_rule_however_many_windows_close():
    # What waits for the next heartbeat is one count per rule (repeats and windows), not one
    # entry per window: 1,000 windows closed early at the key bound leave one entry
    now = [0.0]
    t = Throttle(60, clock=lambda: now[0], max_keys=2)
    for i in range(1000):
        e = ev(Image=str(i))
        assert _throttled(t, "r", e, 3) == [True, False, False]
    assert len(t.reports) == 1
    assert t.flush() == [{"rule": "r", "suppressed": 2 * 998, "windows": 998, "window_s": 60.0}]
    assert t.close() == [{"rule": "r", "suppressed": 4, "windows": 2, "window_s": 60.0}]


def test_throttle_default_bound_is_100000_keys():
    # README: the throttle remembers at most 100,000 open windows; then the oldest is forgotten.
    t = Throttle(60, clock=lambda: 0.0)
    for i in range(100_001):
        assert t.allow("r", {"Image": str(i)})
    assert not t.allow("r", {"Image": "1"})              # the second oldest is still known
    assert t.allow("r", {"Image": "0"})                  # the oldest was forgotten


def test_widened_window_applies_to_open_windows():
    # A live reload can widen the window of a running throttle; an alert first seen 75 s ago is
    # then still inside a 120 s window, whatever the table did in between.
    now = [0.0]
    t = Throttle(60, clock=lambda: now[0], max_keys=2)
    a, b = ev(Image="a"), ev(Image="b")
    assert _throttled(t, "r", a, 2) == [True, False]
    now[0] = 70.0
    assert t.allow("r", b)
    t.window = 120.0
    now[0] = 75.0
    assert not t.allow("r", a)
    now[0] = 120.0
    assert t.flush() == [{"rule": "r", "suppressed": 2, "windows": 1, "window_s": 120.0}]
