"""Differential check: the streaming correlation engine against pySigma's SQLite backend.

pysigma-backend-sqlite (a test dependency) compiles a Sigma correlation into one SQL query
that evaluates every window over the whole event table at once.  The same YAML goes through
our loader and matcher into ``sensor.detect.correlate``; the events go into an SQLite table
for the backend's query.  For every correlation that makes alerts, both must give the same
alerts: group, window end, metric, evidence events and number of child alerts.

Event streams are generated with time gaps on both sides of every window (0, one tick, the
timespan less a tick, exactly the timespan, a tick more, twice it); explicit cases pin the
boundaries.  Times are multiples of 125 ms, exact in the backend's floating-point seconds.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sensor.detect.correlate import CorrelationEngine, event_id, parse_time_ms
from sensor.detect.loader import LoadReport, resolve_meta
from sensor.detect.matcher import create
from sensor.detect.sigma import _register_aliases, load_sigma_text
from sensor.events import ProcessEvent

pytest.importorskip("sigma.backends.sqlite", reason="pysigma-backend-sqlite (test dependency) "
                                                    "is not installed")

NAMES = "abc"
UIDS = {n: f"00000000-0000-4000-8000-{i:012d}" for i, n in enumerate(NAMES)}
T0 = 1_735_732_800_000          # 2025-01-01T12:00:00Z in ms
TOP = "10000000-0000-4000-8000-000000000001"
INNER = "10000000-0000-4000-8000-000000000002"
MID = "10000000-0000-4000-8000-000000000003"
OPS = ["gt", "gte", "lt", "lte", "eq", "neq"]


def base_rules(names=NAMES) -> str:
    return "\n---\n".join(
        f"title: rule {n}\nid: {UIDS[n]}\nname: {n}\nlogsource:\n    category: process_creation\n"
        f"    product: windows\ndetection:\n    selection:\n        Image|endswith: '\\{n}.exe'\n"
        f"    condition: selection\n" for n in names)


def corr(title, cid, ctype, refs, group_by, span, cond, name=None, extra="") -> str:
    out = [f"title: {title}", f"id: {cid}"] + ([f"name: {name}"] if name else [])
    out += ["correlation:", f"    type: {ctype}", "    rules:"] + [f"        - {r}" for r in refs]
    if group_by:
        out += ["    group-by:"] + [f"        - {g}" for g in group_by]
    out.append(f"    timespan: {span}")
    if cond:
        out += ["    condition:"] + [f"        {k}: {v}" for k, v in cond.items()]
    return "\n".join(out) + "\n" + extra


def utc(ms: int) -> str:
    t = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + "%03d" % (t.microsecond // 1000)


def events_of(spec) -> list[tuple[int, ProcessEvent]]:
    out = []
    for i, (off, img, comp, user, size) in enumerate(spec):
        ev = ProcessEvent({"Image": f"C:\\x\\{img}.exe", "UtcTime": utc(T0 + off),
                           "RecordId": str(i + 1)})
        for k, v in (("Computer", comp), ("User", user), ("Size", size)):
            if v is not None:
                ev[k] = v
        out.append((T0 + off, ev))
    return out


def ours(yaml_text: str, events, order=None, lateness=0, engine="reference"):
    res = load_sigma_text(yaml_text, "case.yml")
    assert not res.rejected, res.rejected
    report = LoadReport(rules=res.rules, correlations=res.correlations, filters=res.filters)
    resolve_meta(report)
    assert not report.rejected, report.rejected
    matcher = create(report.rules, engine)
    eng = CorrelationEngine(report.rules, report.correlations, lateness_ms=lateness,
                            max_evidence=10**6)
    alerts = []
    for i in (order if order is not None else range(len(events))):
        alerts += eng.feed(events[i][1], matcher.match(events[i][1]))
    alerts += eng.flush()
    rows = {event_id(ev): i + 1 for i, (_, ev) in enumerate(events)}
    out = []
    for a in alerts:
        c = a["correlation"]
        out.append((a["rule"]["id"], tuple(sorted((k, str(v)) for k, v in c["group"].items())),
                    parse_time_ms(c["window"]["end"]) - T0, float(c["value"]),
                    tuple(sorted(rows[e] for e in c["event_ids"])), len(c["alert_ids"])))
    return sorted(out), eng


def theirs(yaml_text: str, events):
    from sigma.backends.sqlite import sqliteBackend
    from sigma.collection import SigmaCollection
    from sigma.correlations import SigmaCorrelationRule

    _register_aliases()
    coll = SigmaCollection.from_yaml(yaml_text)
    backend = sqliteBackend(timestamp_field="ts_ms", timestamp_format="unix_ms")
    db = sqlite3.connect(":memory:")
    db.create_function("regexp", 2, lambda p, v: v is not None and re.search(p, str(v)) is not None)
    db.execute("CREATE TABLE logs (ts_ms INTEGER, Image TEXT COLLATE NOCASE, Computer TEXT "
               "COLLATE NOCASE, User TEXT COLLATE NOCASE, Size, RecordId TEXT)")
    db.executemany("INSERT INTO logs (rowid, ts_ms, Image, Computer, User, Size, RecordId) "
                   "VALUES (?,?,?,?,?,?,?)",
                   [(i + 1, ts, ev.get("Image"), ev.get("Computer"), ev.get("User"),
                     ev.get("Size"), ev.get("RecordId")) for i, (ts, ev) in enumerate(events)])
    queries = [q for q in backend.convert(coll) if q.lstrip().upper().startswith("WITH")]
    tops = [r for r in coll.rules if isinstance(r, SigmaCorrelationRule) and r._output]
    assert len(queries) == len(tops)
    out = []
    for rule, q in zip(tops, queries):
        cur = db.execute(q)
        cols = [d[0] for d in cur.description]
        for row in cur.fetchall():
            d = dict(zip(cols, row))
            out.append((str(rule.id),
                        tuple(sorted((k, str(v)) for k, v in json.loads(d["group_keys"]).items())),
                        round(d["window_end"] * 1000) - T0, float(d["metric_value"]),
                        tuple(sorted(int(e.split(":")[1]) for e in json.loads(d["event_ids"]))),
                        len(json.loads(d["child_alert_ids"]))))
    return sorted(out)


def agree(case) -> list:
    yaml_text, spec = case
    events = events_of(spec)
    expected = theirs(yaml_text, events)
    got, _ = ours(yaml_text, events)
    assert got == expected, f"\n{yaml_text}\n{spec}\nours:   {got}\nsqlite: {expected}"
    return got


# ---------------------------------------------------------------------------------
# Generated cases.

@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["event_count", "value_count", "temporal", "temporal_ordered",
                                 "value_sum", "value_avg", "value_percentile", "value_median",
                                 "chain", "chain3", "alias"]))
    span_s = draw(st.sampled_from([1, 2, 5, 60]))
    span = f"{span_s}s" if span_s < 60 else "1m"
    gb = draw(st.sampled_from([[], ["Computer"], ["Computer", "User"]]))

    def refs(lo, hi):
        k = draw(st.integers(lo, hi))
        return draw(st.permutations(list(NAMES)))[:k]

    docs = [base_rules()]
    if kind == "event_count":
        docs.append(corr("c", TOP, kind, refs(1, 2), gb, span,
                         {draw(st.sampled_from(OPS)): draw(st.integers(0, 4))}))
    elif kind == "value_count":
        docs.append(corr("c", TOP, kind, refs(1, 2), [g for g in gb if g != "User"], span,
                         {"field": "User", draw(st.sampled_from(OPS)): draw(st.integers(0, 3))}))
    elif kind in ("temporal", "temporal_ordered"):
        cond = draw(st.sampled_from([None, "gte", "gt", "any"]))
        if cond == "gte":
            cond = {"gte": draw(st.integers(1, 3))}
        elif cond == "gt":
            cond = {"gt": draw(st.integers(0, 2))}
        elif cond == "any":
            cond = {draw(st.sampled_from(OPS)): draw(st.integers(0, 3))}
        docs.append(corr("c", TOP, kind, refs(2, 3), gb, span, cond))
    elif kind.startswith("value_"):
        cond = {"field": "Size",
                draw(st.sampled_from(OPS)): draw(st.sampled_from([0, 5, 7, 10, 15, 30]))}
        if kind == "value_percentile":
            cond["percentile"] = draw(st.sampled_from([0, 1, 25, 50, 90, 100]))
        docs.append(corr("c", TOP, kind, refs(1, 2), gb, span, cond))
    elif kind == "chain":
        docs.append(corr("inner", INNER, "event_count", ["a"], gb, span,
                         {"gte": draw(st.integers(1, 3))}, name="inner"))
        outer = draw(st.sampled_from(["event_count", "value_count", "temporal",
                                      "temporal_ordered"]))
        gb2 = draw(st.sampled_from([gb, [], ["Computer"], ["User"]]))
        span2 = draw(st.sampled_from(["2s", "5s", "1m"]))
        if outer == "event_count":
            docs.append(corr("outer", TOP, outer, ["inner"] + (["b"] if draw(st.booleans()) else []),
                             gb2, span2, {"gte": draw(st.integers(1, 3))}))
        elif outer == "value_count":
            docs.append(corr("outer", TOP, outer, ["inner", "b"], [g for g in gb2 if g != "User"],
                             span2, {"field": "User", "gte": draw(st.integers(1, 2))}))
        else:
            docs.append(corr("outer", TOP, outer, draw(st.permutations(["inner", "b"])), gb2,
                             span2, None))
    elif kind == "chain3":  # three levels: event_count -> temporal(_ordered) -> count
        docs.append(corr("inner", INNER, "event_count", ["a"], gb, span,
                         {"gte": draw(st.integers(1, 2))}, name="inner"))
        docs.append(corr("mid", MID, draw(st.sampled_from(["temporal", "temporal_ordered"])),
                         ["inner", "b"], draw(st.sampled_from([[], ["Computer"], ["User"]])),
                         draw(st.sampled_from(["2s", "5s"])), None, name="mid"))
        top = draw(st.sampled_from(["event_count", "value_count"]))
        docs.append(corr("top", TOP, top, ["mid", "c"], draw(st.sampled_from([[], ["Computer"]])),
                         "1m", {"gte": 2} if top == "event_count" else {"field": "User", "gte": 2}))
    else:  # aliases: one group across two fields of two rules
        t = draw(st.sampled_from(["temporal", "event_count", "temporal_ordered"]))
        docs.append(corr("c", TOP, t, ["a", "b"], ["host"], span,
                         {"gte": 2} if t == "event_count" else None,
                         extra="    aliases:\n        host:\n            a: Computer\n"
                               "            b: User\n"))
    span_ms = span_s * 1000
    gaps = st.sampled_from([0, 125, 250, 1000, span_ms - 125, span_ms, span_ms + 125, 2 * span_ms])
    spec, t = [], 0
    for _ in range(draw(st.integers(0, 16))):
        t += draw(gaps)
        spec.append((t, draw(st.sampled_from(["a", "a", "b", "c", "z"])),
                     draw(st.sampled_from(["h1", "H1", "h2", None, "alice"])),
                     draw(st.sampled_from(["alice", "Alice", "bob", None, "h1"])),
                     draw(st.sampled_from([None, 0, 5, 10, "7", " 3 ", "junk", "1e1", 100, -2]))))
    return "\n---\n".join(docs), spec


EC = base_rules("a") + "\n---\n" + corr("c", TOP, "event_count", ["a"], ["Computer"], "1m",
                                        {"gte": 2})
TO = base_rules("ab") + "\n---\n" + corr("c", TOP, "temporal_ordered", ["a", "b"], ["Computer"],
                                         "5m", None)


@given(cases())
@example(case=(EC, [(0, "a", "h1", "u", 1), (60_000, "a", "h1", "u", 1)]))        # exactly span
@example(case=(EC, [(0, "a", "h1", "u", 1), (60_125, "a", "h1", "u", 1)]))        # one tick over
@example(case=(EC, [(0, "a", "h1", "u", 1), (59_875, "a", "h1", "u", 1)]))        # one tick under
@example(case=(TO, [(0, "a", "h1", "u", 1), (0, "b", "h1", "u", 1)]))             # tie: not ordered
@example(case=(TO, [(0, "b", "h1", "u", 1), (10_000, "a", "h1", "u", 1),
                    (20_000, "b", "h1", "u", 1)]))                                 # b, a, b
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engine_agrees_with_the_sqlite_backend(case):
    agree(case)


# ---------------------------------------------------------------------------------
# Explicit cases: each names the behaviour it pins (and what the backend does with it).

def ev(t, img, comp="h1", user="u", size=1):
    return (t, img, comp, user, size)


def c1(ctype, refs, cond=None, gb=("Computer",), span="1m", extra=""):
    names = sorted({r for r in refs if r in NAMES})
    return base_rules("".join(names)) + "\n---\n" + corr("probe", TOP, ctype, list(refs),
                                                         list(gb), span, cond, extra=extra)


# a rule that matches every event rule "a" matches (one event, two referenced rules)
OVERLAP = ("title: rule x\nid: 00000000-0000-4000-8000-000000000099\nname: x\nlogsource:\n"
           "    category: process_creation\n    product: windows\ndetection:\n    selection:\n"
           "        Image|endswith: 'a.exe'\n    condition: selection\n")


def c2(ctype, cond):
    """A correlation over rule "a" and rule "x", which matches the same events."""
    return (base_rules("a") + "\n---\n" + OVERLAP + "\n---\n"
            + corr("probe", TOP, ctype, ["a", "x"], ["Computer"], "1m", cond))


CHAIN = base_rules("ab") + "\n---\n" + corr("inner", INNER, "event_count", ["a"], ["Computer"],
                                            "1m", {"gte": 2}, name="inner") + "\n---\n"
EXPLICIT = {
    "sliding_across_a_minute_boundary": (c1("event_count", "a", {"gte": 2}),
                                         [ev(50_000, "a"), ev(70_000, "a")], 1),
    "window_includes_both_ends": (c1("event_count", "a", {"gte": 2}),
                                  [ev(0, "a"), ev(60_000, "a")], 1),
    "one_tick_beyond_the_window": (c1("event_count", "a", {"gte": 2}),
                                   [ev(0, "a"), ev(60_125, "a")], 0),
    "one_alert_per_qualifying_event": (c1("event_count", "a", {"gte": 2}),
                                       [ev(i * 5000, "a") for i in range(5)], 4),
    "same_time_is_one_anchor": (c1("event_count", "a", {"gte": 2}),
                                [ev(0, "a"), ev(0, "a"), ev(0, "a")], 1),
    "group_values_fold_case": (c1("event_count", "a", {"gte": 2}),
                               [ev(0, "a", "HOST1"), ev(5000, "a", "host1")], 1),
    "missing_group_field_is_not_counted": (c1("event_count", "a", {"gte": 2}),
                                           [ev(0, "a", None), ev(5000, "a", None)], 0),
    "no_group_by_is_one_group": (c1("event_count", "a", {"gte": 2}, gb=()),
                                 [ev(0, "a", "h1"), ev(5000, "a", "h2")], 1),
    "lt_only_at_event_times": (c1("event_count", "a", {"lt": 3}),
                               [ev(0, "a"), ev(5000, "a"), ev(10_000, "a")], 2),
    "neq": (c1("event_count", "a", {"neq": 2}), [ev(0, "a"), ev(5000, "a"), ev(10_000, "a")], 2),
    "value_count_folds_case": (c1("value_count", "a", {"field": "User", "gte": 2}),
                               [ev(0, "a", user="Alice"), ev(5000, "a", user="alice")], 0),
    "value_count_skips_missing": (c1("value_count", "a", {"field": "User", "gte": 2}),
                                  [ev(0, "a", user="Alice"), ev(5000, "a", user=None)], 0),
    "value_count_lt_across_rules": (c1("value_count", "ab", {"field": "User", "lt": 2}),
                                    [ev(0, "a", user="Alice"), ev(5000, "b", user="Alice"),
                                     ev(10_000, "a", user="Bob")], 2),
    "temporal_any_order": (c1("temporal", "abc", span="5m"),
                           [ev(0, "c"), ev(100_000, "a"), ev(200_000, "b")], 1),
    "temporal_too_far_apart": (c1("temporal", "abc", span="5m"),
                               [ev(0, "a"), ev(100_000, "c"), ev(400_000, "b")], 0),
    "temporal_other_group": (c1("temporal", "abc", span="5m"),
                             [ev(0, "a"), ev(10_000, "b"), ev(20_000, "c", "h2")], 0),
    "temporal_two_of_three": (c1("temporal", "abc", {"gte": 2}, span="5m"),
                              [ev(0, "a"), ev(10_000, "c")], 1),
    "ordered": (c1("temporal_ordered", "ab", span="5m"), [ev(0, "a"), ev(10_000, "b")], 1),
    "ordered_wrong_order": (c1("temporal_ordered", "ab", span="5m"),
                            [ev(0, "b"), ev(10_000, "a")], 0),
    "ordered_repeats_alert_per_anchor": (c1("temporal_ordered", "ab", span="5m"),
                                         [ev(0, "a"), ev(10_000, "b"), ev(20_000, "a"),
                                          ev(30_000, "b")], 3),
    "ordered_two_of_three_any_pair_in_order": (c1("temporal_ordered", "abc", {"gte": 2},
                                                  span="5m"),
                                               [ev(0, "c"), ev(10_000, "a"), ev(20_000, "b")], 1),
    "ordered_eq_with_a_rule_absent_in_order": (c1("temporal_ordered", "abc", {"eq": 2}, span="5m"),
                                               [ev(0, "a"), ev(10_000, "b")], 1),
    "ordered_eq_with_a_rule_absent_out_of_order": (c1("temporal_ordered", "abc", {"eq": 2},
                                                      span="5m"),
                                                   [ev(0, "b"), ev(10_000, "a")], 0),
    "ordered_lt_counts_the_rules_seen_in_order": (c1("temporal_ordered", "abc", {"lt": 3},
                                                     span="5m"),
                                                  [ev(0, "a"), ev(10_000, "c")], 2),
    "one_event_of_two_rules_is_one_event": (c2("event_count", {"gte": 2}),
                                            [ev(0, "a"), ev(1000, "a")], 1),
    "one_event_of_two_rules_is_one_value": (c2("value_sum", {"field": "Size", "gte": 1}),
                                            [ev(0, "a", size=5), ev(1000, "a", size=7)], 2),
    "one_event_of_two_rules_leaves_the_window_once": (
        c2("value_sum", {"field": "Size", "gte": 1}),
        [ev(0, "a", size=5), ev(30_000, "a", size=7), ev(61_000, "a", size=11)], 3),
    "one_event_of_two_rules_is_one_number": (c2("value_median", {"field": "Size", "gte": 1}),
                                             [ev(0, "a", size=5), ev(1000, "a", size=7),
                                              ev(2000, "a", size=100)], 3),
    "ordered_two_of_three_a_later_pair_in_order": (c1("temporal_ordered", "abc", {"gte": 2},
                                                      span="5m"),
                                                   [ev(0, "b"), ev(10_000, "a"), ev(20_000, "c")], 1),
    "ordered_gte_0_shows_every_event": (c1("temporal_ordered", "abc", {"gte": 0}, span="5m"),
                                        [ev(0, "a"), ev(10_000, "a"), ev(20_000, "b")], 3),
    "ordered_gte_below_0_shows_every_event": (c1("temporal_ordered", "abc", {"gte": -1},
                                                 span="5m"),
                                              [ev(0, "a"), ev(10_000, "a"), ev(20_000, "b")], 3),
    # 39 a that leave the window together (the kept list of a's times is trimmed meanwhile),
    # one a that stays, then b: the a that stays comes before b
    "ordered_after_many_times_left_the_window": (
        c1("temporal_ordered", "ab", span="1m"),
        [ev(i * 125, "a") for i in range(39)] + [ev(50_000, "a"), ev(64_875, "b")], 1),
    "sum_numbers_and_numeric_text_skip_junk": (
        c1("value_sum", "a", {"field": "Size", "gt": 100}),
        [ev(0, "a", size=60), ev(10_000, "a", size="50"), ev(20_000, "a", size="junk"),
         ev(100_000, "a", size=60)], 2),
    "avg_ignores_missing": (c1("value_avg", "a", {"field": "Size", "gte": 50}),
                            [ev(0, "a", size=100), ev(10_000, "a", size=0),
                             ev(20_000, "a", size=None)], 3),
    "percentile_interpolates": (c1("value_percentile", "a",
                                   {"field": "Size", "percentile": 90, "gte": 50}),
                                [ev(i * 1000, "a", size=v)
                                 for i, v in enumerate([10, 20, 30, 40, 100])], 1),
    "median": (c1("value_median", "a", {"field": "Size", "gte": 25}),
               [ev(i * 1000, "a", size=v) for i, v in enumerate([10, 20, 30, 40])], 1),
    "chain_child_at_window_end": (CHAIN + corr("outer", TOP, "temporal_ordered", ["inner", "b"],
                                               ["Computer"], "5m", None),
                                  [ev(0, "a"), ev(30_000, "a"), ev(100_000, "b")], 1),
    "chain_child_and_b_at_one_time_is_one_alert": (
        CHAIN.replace("gte: 2", "gte: 1") + corr("outer", TOP, "event_count", ["inner", "b"],
                                                 ["Computer"], "5m", {"gte": 1}),
        [ev(0, "b"), ev(0, "a")], 1),
    "chain_b_before_child_completes": (CHAIN + corr("outer", TOP, "temporal_ordered",
                                                    ["inner", "b"], ["Computer"], "5m", None),
                                       [ev(0, "a"), ev(10_000, "b"), ev(30_000, "a")], 0),
    "chain_counts_child_alerts": (CHAIN + corr("outer", TOP, "event_count", ["inner"],
                                               ["Computer"], "5m", {"gte": 2}),
                                  [ev(0, "a"), ev(5000, "a"), ev(10_000, "a")], 1),
    "chain_sums_child_metrics": (CHAIN.replace("gte: 2", "gte: 1") + corr(
        "outer", TOP, "value_sum", ["inner"], ["Computer"], "5m",
        {"field": "sigma_metric", "gte": 3}),
        [ev(0, "a"), ev(1000, "a"), ev(2000, "a"), ev(3000, "a", "h2")], 2),
    "aliases_join_two_fields": (c1("temporal", "ab", gb=("host",),
                                   extra="    aliases:\n        host:\n            a: Computer\n"
                                         "            b: User\n"),
                                [ev(0, "a", "h1", "x"), ev(10_000, "b", "zz", "H1")], 1),
}


@pytest.mark.parametrize("name", sorted(EXPLICIT))
def test_explicit_case(name):
    yaml_text, spec, alerts = EXPLICIT[name]
    got = agree((yaml_text, spec))
    assert len(got) == alerts


@pytest.mark.parametrize("engine", ["reference", "compiled"])
def test_both_matchers_feed_the_same_alerts(engine):
    from sensor.detect import matcher as M
    if engine not in M.ENGINES:
        pytest.skip("compiled matcher not built")
    yaml_text, spec, _ = EXPLICIT["ordered_repeats_alert_per_anchor"]
    events = events_of(spec)
    assert ours(yaml_text, events, engine=engine)[0] == theirs(yaml_text, events)


@given(cases(), st.sampled_from([125, 1000, 5000]), st.randoms(use_true_random=False))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_out_of_order_within_the_lateness_bound_changes_nothing(case, lateness, rnd):
    yaml_text, spec = case
    events = events_of(spec)
    order = sorted(range(len(events)), key=lambda i: (events[i][0] + rnd.randint(0, lateness),
                                                      rnd.random()))
    in_order, _ = ours(yaml_text, events)
    shuffled, eng = ours(yaml_text, events, order=order, lateness=lateness)
    assert eng.late == 0
    assert shuffled == in_order
