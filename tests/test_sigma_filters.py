"""Sigma filters (meta-filters, sigma-filters-specification.md 2.1.0): a filter's condition is
ANDed to the rules it names, before any correlation counts their matches; and the sensor's
``[[exclusions]]`` expressed as filters give the same alerts."""
from __future__ import annotations

import json
import textwrap

import pytest

from sensor.detect.loader import load_rules
from sensor.detect.matcher import create
from sensor.events import ProcessEvent

RAR = "6f3e2987-db24-4c78-a860-b4f4095a7095"
JUMP = "df0841c0-9846-4e9f-ad8a-7df91571771b"
OTHER = "00000000-0000-4000-8000-0000000000ff"


def rule(ident, image, name=None, logsource="category: process_creation\n    product: windows"):
    return (f"title: rule {image}\nid: {ident}\n" + (f"name: {name}\n" if name else "") +
            f"logsource:\n    {logsource}\ndetection:\n    selection:\n"
            f"        Image|endswith: '\\{image}'\n    condition: selection\n")


SPEC_FILTER = """\
title: Filter Administrator account
description: The valid administrator account start with adm_
logsource:
    category: process_creation
    product: windows
filter:
    rules:
        - 6f3e2987-db24-4c78-a860-b4f4095a7095 # Data Compressed - rar.exe
        - df0841c0-9846-4e9f-ad8a-7df91571771b # Login on jump host
    selection:
        User|startswith: 'adm_'
    condition: selection
"""


def load(tmp_path, *docs, **kw):
    p = tmp_path / "r.yml"
    p.write_text("\n---\n".join(textwrap.dedent(d) for d in docs))
    return load_rules([p], builtin=False, **kw)


def hits(report, events) -> list[tuple[str, int]]:
    m = create(report.rules, "reference")
    return [(report.rules[i].id, n) for n, e in enumerate(events) for i in m.match(ProcessEvent(e))]


def test_the_specifications_example_as_pysigma_applies_it(tmp_path):
    # The filter's condition is ANDed to each named rule as written: with `condition:
    # selection` the two rules keep only adm_ users (pySigma's reading; docs/sigma.md).
    rep = load(tmp_path, rule(RAR, "rar.exe"), rule(JUMP, "mstsc.exe"), rule(OTHER, "rar.exe"),
               SPEC_FILTER)
    assert not rep.rejected and len(rep.filters) == 1
    events = [{"Image": "C:\\rar.exe", "User": "adm_bob"}, {"Image": "C:\\rar.exe", "User": "bob"},
              {"Image": "C:\\mstsc.exe", "User": "ADM_eve"}, {"Image": "C:\\mstsc.exe"}]
    assert sorted(hits(rep, events)) == sorted([(RAR, 0), (OTHER, 0), (OTHER, 1), (JUMP, 2)])
    applied = {r.id: r.meta.get("filters") for r in rep.rules}
    assert applied[OTHER] is None and applied[RAR][0]["title"] == "Filter Administrator account"


@pytest.mark.parametrize("targets", ["any", "[]", "ANY"])
def test_any_and_empty_rules_mean_every_rule_of_the_logsource(tmp_path, targets):
    rep = load(tmp_path, rule(RAR, "rar.exe"), rule(JUMP, "mstsc.exe"), f"""\
        title: not svc
        logsource:
            category: process_creation
        filter:
            rules: {targets}
            svc:
                User: svc
            condition: not svc
        """)
    events = [{"Image": "C:\\rar.exe", "User": "svc"}, {"Image": "C:\\mstsc.exe", "User": "bob"}]
    assert hits(rep, events) == [(JUMP, 1)]


def test_logsource_decides_where_a_filter_applies(tmp_path):
    # pySigma: every attribute the filter sets must equal the rule's
    rep = load(tmp_path, rule(RAR, "rar.exe"), rule(JUMP, "mstsc.exe", logsource="category: "
                                                    "process_creation"), """\
        title: windows only
        logsource:
            product: windows
        filter:
            rules: any
            svc:
                User: svc
            condition: not svc
        """)
    events = [{"Image": "C:\\rar.exe", "User": "svc"}, {"Image": "C:\\mstsc.exe", "User": "svc"}]
    assert hits(rep, events) == [(JUMP, 1)]
    rep = load(tmp_path, rule(RAR, "rar.exe"), """\
        title: sysmon only
        logsource:
            product: windows
            service: sysmon
        filter:
            rules: any
            svc:
                User: svc
            condition: not svc
        """)
    assert not rep.filters and "covers no process_creation" in rep.not_applicable[0].reason


def test_several_filters_nest_and_them_means_the_filters_own_selections(tmp_path):
    rep = load(tmp_path, rule(RAR, "rar.exe", name="rar"), """\
        title: f1
        logsource: {category: process_creation}
        filter:
            rules: rar
            a:
                User: svc
            b:
                User: backup
            condition: not 1 of them
        """, """\
        title: f2
        logsource: {category: process_creation}
        filter:
            rules: [rar]
            c:
                CommandLine|contains: '-q'
            condition: not c
        """)
    events = [{"Image": "C:\\rar.exe", "User": u, "CommandLine": c}
              for u, c in (("svc", "a"), ("backup", "a"), ("bob", "-q"), ("bob", "x"))]
    assert hits(rep, events) == [(RAR, 3)]
    assert [f["title"] for f in rep.rules[0].meta["filters"]] == ["f1", "f2"]


def test_unknown_targets_warn_and_change_nothing(tmp_path):
    rep = load(tmp_path, rule(RAR, "rar.exe"), """\
        title: f
        logsource: {category: process_creation}
        filter:
            rules: [no_such_rule]
            a:
                User: svc
            condition: not a
        """)
    assert hits(rep, [{"Image": "C:\\rar.exe", "User": "svc"}]) == [(RAR, 0)]
    assert any("'no_such_rule' names no loaded rule" in w.reason for w in rep.warnings)


@pytest.mark.parametrize("doc,why", [
    ("title: f\nfilter:\n    rules: any\n    a: {User: x}\n    condition: not a\n", "logsource"),
    ("title: f\nlogsource: {category: process_creation}\nfilter:\n    a: {User: x}\n"
     "    condition: not a\n", "needs rules"),
    ("title: f\nlogsource: {category: process_creation}\nfilter:\n    rules: any\n"
     "    a: {User: x}\n    condition: [not a]\n", "condition: must be a string"),
    ("title: f\nlogsource: {category: process_creation}\nfilter:\n    rules: any\n"
     "    a: {User|containz: x}\n    condition: not a\n", "Unknown modifier"),
])
def test_bad_filters_are_rejected_with_file_line(tmp_path, doc, why):
    p = tmp_path / "f.yml"
    p.write_text(rule(RAR, "rar.exe") + "---\n" + doc)
    rep = load_rules([p], builtin=False)
    assert not rep.filters and why in rep.rejected[0].reason, rep.rejected
    assert rep.rejected[0].line is not None and rep.rejected[0].line > 10


def test_filters_apply_before_correlations_count(tmp_path):
    from sensor.detect.correlate import CorrelationEngine
    rep = load(tmp_path, rule(RAR, "rar.exe", name="rar"), """\
        title: burst
        correlation: {type: event_count, rules: [rar], group-by: [Computer], timespan: 1m,
                      condition: {gte: 2}}
        """, """\
        title: not svc
        logsource: {category: process_creation}
        filter:
            rules: any
            svc: {User: svc}
            condition: not svc
        """)
    m = create(rep.rules, "reference")
    eng = CorrelationEngine(rep.rules, rep.correlations)
    out = []
    for i, user in enumerate(["svc", "svc", "bob", "svc", "eve"]):
        e = ProcessEvent(Image="C:\\rar.exe", Computer="h", User=user,
                         UtcTime=f"2025-01-01 12:00:0{i}.000")
        out += eng.feed(e, m.match(e))
    out += eng.flush()
    assert [a["correlation"]["value"] for a in out] == [2]


def test_rules_list_verbose_shows_filters_and_correlations(tmp_path, capsys):
    from sensor.cli import main
    p = tmp_path / "r.yml"
    p.write_text(rule(RAR, "rar.exe", name="rar") + "---\n" + SPEC_FILTER + "---\n" + textwrap.dedent("""\
        title: burst
        correlation: {type: event_count, rules: [rar], timespan: 1m, condition: {gte: 2}}
        """))
    assert main(["rules", "list", "--rules", str(p), "-v", "--no-builtin-rules"]) == 0
    out = capsys.readouterr().out
    assert "filter: Filter Administrator account" in out and "and (selection)" in out
    assert "[event_count] burst" in out and "rules: rar -> " + RAR in out
    assert "alerts: none of its own" in out
    assert "filters:" in out and "adds 'and (selection)' to " + RAR in out


# ---------------------------------------------------------------------------------
# [[exclusions]] and filters side by side (docs/sigma.md, "Filters and exclusions").

EVENTS = [
    {"Image": "C:\\rar.exe", "CommandLine": "rar a x.rar", "User": "bob"},
    {"Image": "C:\\rar.exe", "CommandLine": "rar a ZTITatoo.mof", "User": "bob"},
    {"Image": "C:\\mstsc.exe", "CommandLine": "mstsc ZTITatoo.mof", "User": "bob"},
    {"Image": "C:\\mstsc.exe", "ParentImage": "C:\\Windows\\CCM\\CcmExec.exe", "User": "x"},
    {"Image": "C:\\rar.exe", "ParentImage": "c:\\windows\\ccm\\ccmexec.exe"},
]


def _pipeline_alerts(tmp_path, rules, exclusions=None) -> list[tuple[str, str]]:
    from sensor.daemon.pipeline import Pipeline
    from sensor.detect.noise import Exclusions
    from sensor.sources.replay import ReplaySource

    rec = tmp_path / "e.jsonl"
    rec.write_text("".join(json.dumps(dict(e, ProcessId=i)) + "\n" for i, e in enumerate(EVENTS)))
    got: list = []
    excl = Exclusions(exclusions, lambda rs: create(rs, "reference")) if exclusions else None
    p = Pipeline(source=ReplaySource([str(rec)]), rules=rules, exclusions=excl,
                 engine="reference", heartbeat_interval=0, alert_hook=got.append)
    p.start()
    assert p.wait_source(60)
    p.stop(drain_timeout=5)
    return sorted((a["rule"]["id"], a["event"]["ProcessId"]) for a in got)


def test_exclusions_and_the_same_filters_give_the_same_alerts(tmp_path):
    from sensor.detect.noise import Exclusion

    rules_only = load(tmp_path, rule(RAR, "rar.exe"), rule(JUMP, "mstsc.exe")).rules
    excluded = _pipeline_alerts(tmp_path, rules_only, [
        Exclusion(name="software deployment",
                  fields={"parent_image": "C:\\Windows\\CCM\\CcmExec.exe"}),
        Exclusion(name="MDT tattoo", rules=[RAR], fields={"command_line|contains": "ZTITatoo.mof"}),
    ])
    filtered_rules = load(tmp_path, rule(RAR, "rar.exe"), rule(JUMP, "mstsc.exe"), """\
        title: software deployment
        logsource: {category: process_creation}
        filter:
            rules: any
            selection:
                ParentImage: 'C:\\Windows\\CCM\\CcmExec.exe'
            condition: not selection
        """, f"""\
        title: MDT tattoo
        logsource: {{category: process_creation}}
        filter:
            rules: [{RAR}]
            selection:
                CommandLine|contains: ZTITatoo.mof
            condition: not selection
        """).rules
    filtered = _pipeline_alerts(tmp_path, filtered_rules)
    assert excluded == filtered == [(RAR, 0), (JUMP, 2)]


@pytest.mark.skipif("compiled" not in __import__("sensor.detect.matcher", fromlist=["x"]).ENGINES,
                    reason="compiled matcher not built")
def test_filtered_rules_match_the_same_on_both_engines(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    rep = load(tmp_path, rule(RAR, "rar.exe", name="rar"), rule(JUMP, "mstsc.exe"), SPEC_FILTER,
               """\
        title: f2
        logsource: {category: process_creation}
        filter:
            rules: any
            a: {CommandLine|contains|all: ['-q', '-x']}
            b: {ParentImage|endswith: '\\\\ccmexec.exe'}
            condition: not 1 of them
        """)
    ref, comp = create(rep.rules, "reference"), create(rep.rules, "compiled")
    text = st.text(st.sampled_from(list("adm_ -qx\\rarmstsc.exeCcMExEC")), max_size=24)
    fields = st.fixed_dictionaries({}, optional={
        "Image": st.sampled_from(["C:\\rar.exe", "C:\\mstsc.exe", "C:\\x.exe"]),
        "User": text, "CommandLine": text, "ParentImage": text})

    @given(fields)
    @settings(max_examples=200, deadline=None)
    def same(ev):
        assert ref.match(ProcessEvent(ev)) == comp.match(ProcessEvent(ev))
    same()


def test_a_filter_document_is_bounded_like_a_rule():
    from sensor.detect.sigma import MAX_RULE_VALUES, load_sigma_text
    # an alias bomb: a few lines of YAML that expand to a million values
    text = ("title: bomb\nlogsource: {category: process_creation, product: windows}\nfilter:\n"
            "    rules: any\n    a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            "    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
            "    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            "    selection: {User: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]}\n"
            "    condition: not selection\n")
    res = load_sigma_text(text, "bomb.yml")
    assert not res.filters
    assert res.rejected and f"more than {MAX_RULE_VALUES:,}" in res.rejected[0].reason


BACKREF_FILTER = """\
title: Filter repeated words
id: 7a1b2c3d-0000-4000-8000-0000000000f7
logsource:
    category: process_creation
    product: windows
filter:
    rules: [6f3e2987-db24-4c78-a860-b4f4095a7095]
    selection:
        CommandLine|re: '(\\w+) \\1'
    condition: not selection
"""


def test_a_filter_regex_that_needs_backtracking_takes_the_filters_own_opt_in(tmp_path):
    # a filter's selections run inside the rule it names: the regex engine policy holds for
    # them as for the rule's own (refused unless the filter's id is allowed)
    fid = "7a1b2c3d-0000-4000-8000-0000000000f7"
    rep = load(tmp_path, rule(RAR, "rar.exe"), BACKREF_FILTER)
    assert not rep.filters and [r.id for r in rep.rules] == [RAR]
    assert len(rep.rejected) == 1
    why = rep.rejected[0]
    assert why.path.endswith("r.yml") and why.line is not None
    assert "backreference" in why.reason and f"[filter {fid}: Filter repeated words]" in why.reason
    assert "filters" not in rep.rules[0].meta
    # the rule's opt-in does not cover the filter; the filter's does
    assert load(tmp_path, rule(RAR, "rar.exe"), BACKREF_FILTER, allow_backtracking=[RAR]).rejected
    ok = load(tmp_path, rule(RAR, "rar.exe"), BACKREF_FILTER, allow_backtracking=[fid])
    assert not ok.rejected and len(ok.filters) == 1
    events = [{"Image": "C:\\rar.exe", "CommandLine": "a b"},
              {"Image": "C:\\rar.exe", "CommandLine": "go go"}]
    assert hits(ok, events) == [(RAR, 0)]


def big_filter(tag: str, chars: int) -> str:
    """A filter whose values hold ``chars`` characters in all (100 values)."""
    vals = "".join(f"        - '{tag}{i:03d}{'x' * (chars // 100 - 4)}'\n" for i in range(100))
    return (f"title: Filter {tag}\nlogsource: {{category: process_creation, product: windows}}\n"
            f"filter:\n    rules: [{RAR}]\n    sel:\n        CommandLine|contains:\n" + vals +
            "    condition: not sel\n")


def test_a_filter_is_bounded_like_a_rule(tmp_path):
    from sensor.detect.ir import MAX_VALUE_CHARS_PER_RULE
    rep = load(tmp_path, rule(RAR, "rar.exe"), big_filter("a", MAX_VALUE_CHARS_PER_RULE + 1000))
    assert not rep.filters and [r.id for r in rep.rules] == [RAR]
    assert "filters" not in rep.rules[0].meta
    assert any("characters of values" in r.reason and r.path.endswith("r.yml")
               for r in rep.rejected), rep.rejected


def test_a_filter_that_would_push_its_rule_past_the_bounds_is_refused_for_that_rule(tmp_path):
    # each filter is within the bounds, but together with the rule they are not: the second
    # filter is refused for that rule (named), the rule runs with the first one only
    from sensor.detect.ir import MAX_VALUE_CHARS_PER_RULE
    half = MAX_VALUE_CHARS_PER_RULE // 2 + 1000
    rep = load(tmp_path, rule(RAR, "rar.exe"), big_filter("a", half), big_filter("b", half))
    assert len(rep.filters) == 2 and [r.id for r in rep.rules] == [RAR]
    assert [f["title"] for f in rep.rules[0].meta["filters"]] == ["Filter a"]
    assert len(rep.rejected) == 1
    assert f"filter not applied to rule {RAR}" in rep.rejected[0].reason
    assert "characters of values" in rep.rejected[0].reason
    events = [{"Image": "C:\\rar.exe", "CommandLine": "a001" + "x" * 100},
              {"Image": "C:\\rar.exe", "CommandLine": "b001" + "x" * 100}]
    ev = [dict(e, CommandLine=e["CommandLine"][:4] + "x" * (half // 100 - 4)) for e in events]
    assert hits(rep, ev) == [(RAR, 1)]


LS = "logsource: {category: process_creation}\n"


@pytest.mark.parametrize("doc,why,line", [
    # the rule takes lines 1-9, the separator 10; the filter starts on line 11
    ("title: '  '\n" + LS + "filter:\n    rules: any\n    a: {User: x}\n    condition: not a\n",
     "a filter needs a title (specification: title is mandatory)", 11),
    (LS + "filter:\n    rules: any\n    a: {User: x}\n    condition: not a\n",
     "a filter needs a title (specification: title is mandatory)", 11),
    ("title: f\nlogsource: {}\nfilter:\n    rules: any\n    a: {User: x}\n    condition: not a\n",
     "a filter needs a logsource (specification: logsource is mandatory)", 12),
    ("title: f\nlogsource: windows\nfilter:\n    rules: any\n    a: {User: x}\n"
     "    condition: not a\n",
     "a filter needs a logsource (specification: logsource is mandatory)", 12),
    ("title: f\n" + LS + "filter:\n    a: {User: x}\n    condition: not a\n",
     "filter: needs rules (rule ids or names, or 'any')", 13),
    ("title: f\n" + LS + "filter:\n    rules:\n        - {id: x}\n    a: {User: x}\n"
     "    condition: not a\n", "filter rules: must be a string or a list of strings", 14),
    ("title: f\n" + LS + "filter:\n    rules: any\n    a:\n        User|all: x\n"
     "    condition: not a\n",
     "the all modifier needs a list of values (specification: \"Single item values are not "
     "allowed to have an all modifier\")", 16),
    ("title: f\n" + LS + "filter:\n    rules: any\n    a:\n        User|containz: x\n"
     "    condition: not a\n", "SigmaModifierError: Unknown modifier 'containz'", 16),
])
def test_a_bad_filter_is_refused_with_its_reason_at_its_line(tmp_path, doc, why, line):
    p = tmp_path / "f.yml"
    p.write_text(rule(RAR, "rar.exe") + "---\n" + doc)
    rep = load_rules([p], builtin=False)
    assert not rep.filters and len(rep.rules) == 1
    (bad,) = rep.rejected
    assert (bad.line, bad.reason) == (line, why), bad


def test_a_filters_description_is_kept_and_none_is_empty(tmp_path):
    rep = load(tmp_path, rule(RAR, "rar.exe"), SPEC_FILTER,
               "title: bare\n" + LS + "filter:\n    rules: any\n    a: {User: x}\n"
               "    condition: not a\n")
    assert not rep.rejected, rep.rejected
    assert [(f.title, f.description) for f in rep.filters] == [
        ("Filter Administrator account", "The valid administrator account start with adm_"),
        ("bare", "")]


def _filters_of(report) -> dict[str, list[str]]:
    return {r.id: [f["title"] for f in r.meta.get("filters", ())] for r in report.rules}


def test_a_filter_applies_to_each_rule_it_names_wherever_it_stands(tmp_path):
    rep = load(tmp_path, rule(OTHER, "x.exe"), rule(RAR, "rar.exe", name="rar"),
               rule(JUMP, "mstsc.exe"), f"""\
        title: f
        logsource: {{category: process_creation}}
        filter:
            rules: [rar]
            svc:
                User: svc
            condition: not svc
        """)
    assert _filters_of(rep) == {OTHER: [], RAR: ["f"], JUMP: []}
    assert not [w for w in rep.warnings if "filter" in w.reason], rep.warnings


def test_a_filter_skips_the_rules_its_logsource_does_not_cover_and_applies_to_the_rest(tmp_path):
    # the first rule sets no product, so a windows filter does not cover it: the filter goes
    # on to the next rules; with `any` that is no warning (the filter applies somewhere)
    cat_only = "category: process_creation"
    flt = """\
        title: f
        logsource: {category: process_creation, product: windows}
        filter:
            rules: RULES
            svc:
                User: svc
            condition: not svc
        """
    rep = load(tmp_path, rule(OTHER, "x.exe", logsource=cat_only), rule(RAR, "rar.exe"),
               rule(JUMP, "mstsc.exe"), flt.replace("RULES", "any"))
    assert _filters_of(rep) == {OTHER: [], RAR: ["f"], JUMP: ["f"]}
    assert not [w for w in rep.warnings if "filter" in w.reason], rep.warnings
    # named, the rule it cannot apply to is a warning, and so is applying to none at all
    rep = load(tmp_path, rule(OTHER, "x.exe", logsource=cat_only), rule(RAR, "rar.exe"),
               flt.replace("RULES", f"[{OTHER}]"))
    assert _filters_of(rep) == {OTHER: [], RAR: []}
    reasons = sorted(w.reason.split(" [")[0] for w in rep.warnings if "filter" in w.reason)
    assert len(reasons) == 2, reasons
    assert reasons[0] == "filter applies to no loaded rule"
    assert reasons[1].startswith(f"filter does not apply to rule {OTHER}: its logsource ")
    # named, one it covers and one it does not: the one warning, no "applies to none"
    rep = load(tmp_path, rule(OTHER, "x.exe", logsource=cat_only), rule(RAR, "rar.exe"),
               flt.replace("RULES", f"[{OTHER}, {RAR}]"))
    assert _filters_of(rep) == {OTHER: [], RAR: ["f"]}
    reasons = [w.reason for w in rep.warnings if "filter" in w.reason]
    assert len(reasons) == 1 and reasons[0].startswith(f"filter does not apply to rule {OTHER}")


def big_rule(ident: str, image: str, chars: int) -> str:
    vals = "".join(f"        - 'r{i:03d}{'x' * (chars // 100 - 4)}'\n" for i in range(100))
    return (f"title: big {image}\nid: {ident}\nlogsource: {{category: process_creation, "
            f"product: windows}}\ndetection:\n    selection:\n        Image|endswith: '\\{image}'\n"
            f"    long:\n        CommandLine|contains:\n{vals}    condition: selection and not long\n")


def test_a_filter_refused_for_one_rule_still_applies_to_the_next(tmp_path):
    from sensor.detect.ir import MAX_VALUE_CHARS_PER_RULE
    half = MAX_VALUE_CHARS_PER_RULE // 2 + 1000
    rep = load(tmp_path, big_rule(OTHER, "x.exe", half), rule(RAR, "rar.exe"),
               big_filter("a", half).replace(f"[{RAR}]", "any"))
    assert _filters_of(rep) == {OTHER: [], RAR: ["Filter a"]}
    assert len(rep.rejected) == 1 and f"filter not applied to rule {OTHER}" in rep.rejected[0].reason
    assert not [w for w in rep.warnings if "applies to no loaded rule" in w.reason]


@pytest.mark.parametrize("cond, kept", [
    ("not (svc and quiet)", [1, 2, 3]),
    ("not (svc or quiet)", [3]),
    ("not svc or not quiet", [1, 2, 3]),
    ("(not svc and not quiet) or (svc and not quiet)", [1, 3]),
    ("not (svc and (quiet or loud))", [2, 3]),
])
def test_a_filters_and_or_conditions_test_the_filters_own_selections(tmp_path, cond, kept):
    # the filter's condition is ANDed to the rule's as written, over the filter's selections
    # (not over the rule's, which come first in the combined rule)
    rep = load(tmp_path, rule(RAR, "rar.exe"), f"""\
        title: f
        logsource: {{category: process_creation}}
        filter:
            rules: any
            svc:
                User: svc
            quiet:
                CommandLine|contains: '-q'
            loud:
                CommandLine|contains: '-v'
            condition: {cond}
        """)
    events = [{"Image": "C:\\rar.exe", "User": u, "CommandLine": c}
              for u, c in (("svc", "a -q"), ("svc", "a -v"), ("bob", "a -q"), ("bob", "a"))]
    assert hits(rep, events) == [(RAR, i) for i in kept]
