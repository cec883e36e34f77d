"""The matcher: every IR op, case folding, missing/lazy/derived fields, both engines.

Each test runs on both engines ("reference" and "compiled"); with
SENSOR_NO_EXTENSIONS=1 (or without a build) only the reference runs.
"""
from __future__ import annotations

import threading

import pytest

from sensor.detect import matcher as matcher_mod
from sensor.events import ProcessEvent
from sensor.detect.ir import Predicate, Rule, glob_escape
from sensor.detect.seed import seed_rule

ENGINES = sorted(matcher_mod.ENGINES)


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


def make(engine, rules):
    return matcher_mod.create(rules, engine)


def rule(*preds, cond=None, rid="r"):
    """A rule over ``preds``; the condition defaults to AND of all of them."""
    if cond is None:
        cond = ("and",) + tuple(("pred", i) for i in range(len(preds))) if len(preds) > 1 else ("pred", 0)
    return Rule(id=rid, title=rid, predicates=tuple(preds), condition=cond)


def P(field, op, *values, cased=False, flags=""):
    return Predicate(field, op, tuple(values), cased, flags)


def hit(engine, pred_or_rule, event) -> bool:
    r = pred_or_rule if isinstance(pred_or_rule, Rule) else rule(pred_or_rule)
    return make(engine, [r]).match(ProcessEvent(event)) == [0]


# ---------------------------------------------------------------- API

def test_engine_names(engine):
    m = make(engine, [seed_rule()])
    assert m.engine == engine
    assert m.stats["engine"] == engine
    assert m.stats["rules"] == 1
    assert m.stats["predicates"] == len(seed_rule().predicates)


def test_building_leaves_no_reference_cycles(engine):
    # everything the build makes on the way (priors, witness lists, automata) is freed when
    # the build returns, not at some later full collection (it was ~20 MiB for SigmaHQ)
    import gc

    rules = [seed_rule()] + [
        Rule(id=str(i), title="t", predicates=(P("CommandLine", "re", f"a.*b{i}"), P(None, "contains", f"x{i}"),
                                               P("Image", "endswith", f"\\{i}.exe")),
             condition=("or", ("pred", 0), ("and", ("pred", 1), ("pred", 2))))
        for i in range(30)]
    gc.collect()
    gc.disable()
    try:
        m = make(engine, rules)
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert m.match(ProcessEvent(Image="c:\\3.exe", CommandLine="X3")) == [4]


def test_indices_ascending_and_match_rules(engine):
    rules = [rule(P("Image", "contains", "a"), rid=f"r{i}") for i in range(130)]
    rules[5] = rule(P("Image", "contains", "zzz"), rid="r5")
    m = make(engine, rules)
    out = m.match(ProcessEvent(Image="abc"))
    assert out == [i for i in range(130) if i != 5]
    assert [r.id for r in m.match_rules(ProcessEvent(Image="abc"))] == [f"r{i}" for i in out]
    assert m.rules == rules


def test_empty_rule_set(engine):
    assert make(engine, []).match(ProcessEvent(Image="x")) == []


def test_shared_predicates_counted_once(engine):
    p = P("Image", "endswith", "\\x.exe")
    m = make(engine, [rule(p, rid="a"), rule(p, P("User", "eq", "u"), rid="b")])
    assert m.stats["predicates"] == 2
    assert m.match(ProcessEvent(Image="C:\\x.exe", User="U")) == [0, 1]


def test_plain_dict_events(engine):
    m = make(engine, [rule(P("Image", "endswith", ".exe"))])
    assert m.match({"Image": "A.EXE"}) == [0]
    assert m.match({}) == []


# ---------------------------------------------------------------- string ops

@pytest.mark.parametrize("op,value,text,expected", [
    ("eq", "cmd.exe", "CMD.EXE", True),
    ("eq", "cmd.exe", "cmd.exe ", False),
    ("eq", "", "", True),
    ("eq", "", "x", False),
    ("contains", "\\temp\\", "C:\\Users\\X\\AppData\\Local\\TEMP\\a", True),
    ("contains", "zz", "z", False),
    ("contains", "", "anything", True),
    ("startswith", "c:\\windows", "C:\\Windows\\x", True),
    ("startswith", "c:\\windows\\x\\y", "C:\\Windows\\x", False),
    ("endswith", "\\mofcomp.exe", "C:\\Windows\\System32\\wbem\\MOFCOMP.EXE", True),
    ("endswith", "\\mofcomp.exe", "mofcomp.exe", False),
])
def test_literal_ops(engine, op, value, text, expected):
    assert hit(engine, P("CommandLine", op, value), {"CommandLine": text}) is expected


def test_values_are_an_or(engine):
    p = P("Image", "endswith", "\\a.exe", "\\b.exe", "\\c.exe")
    assert hit(engine, p, {"Image": "x\\B.exe"})
    assert not hit(engine, p, {"Image": "x\\d.exe"})


def test_cased(engine):
    p = P("CommandLine", "contains", "WebClient", cased=True)
    assert hit(engine, p, {"CommandLine": "new-object Net.WebClient"})
    assert not hit(engine, p, {"CommandLine": "new-object net.webclient"})
    assert hit(engine, P("CommandLine", "eq", "É", cased=True), {"CommandLine": "É"})
    assert not hit(engine, P("CommandLine", "eq", "É", cased=True), {"CommandLine": "é"})


@pytest.mark.parametrize("value,text,expected", [
    ("é", "CAFÉ", True),                 # non-ASCII folding
    ("straße", "STRASSE", False),        # lower() does not expand ß
    ("i̇stanbul", "İSTANBUL", True),      # İ.lower() is two code points
    ("σ", "ΑΣ", False),                  # final sigma: "ΑΣ".lower() == "ας"
    ("ας", "ΑΣ", True),
    ("中文", "x中文y", True),
    ("—enc", "powershell —ENC abc", True),   # windash variants are non-ASCII
])
def test_unicode_folding_as_str_lower(engine, value, text, expected):
    assert hit(engine, P("CommandLine", "contains", value), {"CommandLine": text}) is expected


def test_lone_surrogates(engine):
    assert hit(engine, P("CommandLine", "contains", "\ud800x"), {"CommandLine": "a\ud800X"})
    assert not hit(engine, P("CommandLine", "contains", "\ud801"), {"CommandLine": "a\ud800X"})


def test_non_string_values(engine):
    assert hit(engine, P("ProcessId", "eq", "4"), {"ProcessId": 4})
    assert hit(engine, P("Flag", "eq", "true"), {"Flag": True})
    assert hit(engine, P("Flag", "eq", "false"), {"Flag": False})
    assert hit(engine, P("Ratio", "startswith", "1.5"), {"Ratio": 1.5})
    assert hit(engine, P("Items", "contains", "['a'"), {"Items": ["a", "b"]})


# ---------------------------------------------------------------- glob

@pytest.mark.parametrize("pattern,text,expected", [
    ("*\\rundll32.exe*,#*", "C:\\Windows\\RUNDLL32.EXE x.dll,#1", True),
    ("*\\rundll32.exe*,#*", "C:\\Windows\\rundll32.exe x.dll,1", False),
    ("a?c", "abc", True),
    ("a?c", "aéc", True),                 # ? is one code point, not one byte
    ("a?c", "a中c", True),
    ("a?c", "ac", False),
    ("a??", "aé", False),
    ("a\\*c", "a*c", True),                # escaped star is literal
    ("a\\*c", "abc", False),
    ("a\\?c", "abc", False),
    ("a\\\\c", "a\\c", True),
    ("*", "", True),
    ("**x**", "yxy", True),
    ("*a*a*a*a*b", "a" * 40, False),       # back-tracking stays correct
])
def test_glob(engine, pattern, text, expected):
    assert hit(engine, P("CommandLine", "glob", pattern), {"CommandLine": text}) is expected


def test_glob_escape_round_trip(engine):
    lit = "*weird?\\name*"
    assert hit(engine, P("CommandLine", "glob", "*" + glob_escape(lit) + "*"), {"CommandLine": "x" + lit.upper() + "y"})


# ---------------------------------------------------------------- regex

@pytest.mark.parametrize("pattern,flags,text,expected", [
    ("arp\\s+-a", "", 'cmd.exe /c "arp -a"', True),
    ("^arp", "", 'cmd /c arp', False),              # re.search, anchors honoured
    ("ARP", "", "arp", False),                      # re runs on the unfolded value
    ("ARP", "i", "arp", True),
    ("(?i)sys", "", "ſys", True),                   # re folds s with U+017F
    ("(?i)ping", "", "PıNG", True),                 # ... and i with U+0131
    ("\\+.*\\+.*\\+", "", "a+b+c+", True),          # literal chains
    ("\\+.*\\+.*\\+", "", "a+b\n+c+", False),        # . does not cross a newline
    ("\\+.*\\+.*\\+", "s", "a+b\n+c+", True),
    ("\\+.*\\+.*\\+", "", "a+b\n+c++", True),
    ("`.*`", "", "x`", False),
    ("a.*b", "m", "xx\nab", True),
    ("(?:x|y)z{2}", "", "yzz", True),
    ("\\w+`(?:\\w+|-|.)`[\\w+|\\s]", "", "abc`d`e", True),
    ("\\w+`(?:\\w+|-|.)`[\\w+|\\s]", "", "abc`d e", False),
    # a part that may occur zero times is not needed for a match (the compiled matcher's
    # prefilter must not demand it, docs/matcher.md "Prefilter")
    ("ab(cd)?ef", "", "xx abef yy", True),
    ("ab(cd)?ef", "", "xx abcd yy", False),
    ("foo(?:bar)*baz", "", "foobaz", True),
    ("foo(?:bar)*?baz", "", "foobaz", True),
    ("a(?:bc){0,3}d", "", "ad", True),
    ("evil(\\.exe)?$", "", "run evil", True),
    ("x(?:yz|)w", "", "xw", True),
])
def test_regex(engine, pattern, flags, text, expected):
    assert hit(engine, P("CommandLine", "re", pattern, flags=flags), {"CommandLine": text}) is expected


@pytest.mark.parametrize("pattern,flags,text,expected", [
    ("a$", "", "xa\n", True),                      # Python's $: also before a final newline
    ("a\\Z", "", "xa\n", False),
    ("\\d{2}", "", "\u0663\u0664", True),          # Unicode digits, as re
    ("\\s-c\\s", "", "\u2006-c\x1f", True),         # Unicode whitespace, as re
    ("\\bx\\b", "", "\u00e9x", False),              # Unicode word boundary, as re
    ("(?i)k", "", "\u212a", True),                  # Kelvin sign folds to k
    ("a.c", "", "a\ud800c", True),                   # a lone surrogate is one character
    ("(?i)echo.*clip.*&&.*(?:Clipboard|i`?n`?v`?o`?k`?e`?)", "", "echo clip && " * 3000, False),
    ("(a+)+$", "", "a" * 32768 + "!", False),         # no backtracking: one linear pass
])
def test_regex_semantics_on_re2(engine, pattern, flags, text, expected):
    assert hit(engine, P("CommandLine", "re", pattern, flags=flags), {"CommandLine": text}) is expected


def test_budgeted_regex_three_valued(engine):
    # a backreference runs on the budgeted engine; with a tiny budget it runs out
    slow = P("CommandLine", "re", "(a|aa)+\\1b")
    true_ = P("Image", "endswith", "x.exe")
    false_ = P("Image", "endswith", "y.exe")
    rules = [
        rule(slow, rid="alone"),
        rule(slow, false_, rid="and-false"),                       # false AND ? = false
        rule(slow, true_, cond=("or", ("pred", 0), ("pred", 1)), rid="or-true"),  # ? OR true
        rule(slow, true_, rid="and-true"),                         # ? AND true = ?
        rule(slow, cond=("not", ("pred", 0)), rid="not"),          # NOT ? = ?
        rule(true_, rid="other"),
    ]
    m = matcher_mod.create(rules, engine, regex_budget=200)
    ev = ProcessEvent({"Image": "c:\\x.exe", "CommandLine": "a" * 60})
    assert m.match(ev) == [2, 5]
    assert m.undecided == {0: 1, 3: 1, 4: 1}
    assert m.stats["undecided_events"] == 3
    # with the default budget the same rules decide (and agree with re)
    m = matcher_mod.create(rules, engine)
    assert m.match(ProcessEvent({"Image": "c:\\x.exe", "CommandLine": "ab"})) == [2, 4, 5]
    assert m.match(ProcessEvent({"Image": "c:\\x.exe", "CommandLine": "aab"})) == [0, 2, 3, 5]
    assert m.undecided == {}


@pytest.mark.skipif(len(ENGINES) < 2, reason="the compiled matcher is not built (make build)")
def test_the_reference_matcher_reports_no_figure_the_compiled_one_lacks():
    # the reference twin defines the behaviour: every figure it reports, the compiled matcher
    # reports too, with the same value on the same work (a figure only one engine keeps is one
    # a reader of `status` would see come and go with the build)
    slow = P("CommandLine", "re", "(a|aa)+\\1b")
    rules = [rule(slow, rid="alone"), rule(P("Image", "endswith", "x.exe"), rid="other")]
    events = [ProcessEvent({"Image": "c:\\x.exe", "CommandLine": "a" * 60}),
              ProcessEvent({"Image": "c:\\y.exe", "CommandLine": "ab"})]
    stats = {}
    for name in ENGINES:
        m = matcher_mod.create(rules, name, regex_budget=200)
        for ev in events:
            m.match(ev)
        stats[name] = m.stats
    ref = stats.pop("reference")
    (compiled,) = stats.values()
    assert set(ref) <= set(compiled), set(ref) - set(compiled)
    assert {k: compiled[k] for k in ref if k != "engine"} == {k: v for k, v in ref.items() if k != "engine"}


def test_regex_engines_reported(engine):
    rules = [rule(P("CommandLine", "re", "net\\s+view"), rid="a"),
             rule(P("CommandLine", "re", "(a)\\1"), rid="b"),
             rule(P("Image", "endswith", "x"), rid="c")]
    got = make(engine, rules).regex_engines()
    assert got[0] == [("net\\s+view", "re2", None)]
    assert got[1][0][1] == "backtrack" and "backreference" in got[1][0][2]
    assert 2 not in got


# ---------------------------------------------------------------- other ops

def test_exists_and_null(engine):
    assert hit(engine, P("User", "exists", True), {"User": ""})
    assert not hit(engine, P("User", "exists", True), {})
    assert hit(engine, P("User", "exists", False), {})
    assert hit(engine, P("User", "null"), {"User": None})
    assert not hit(engine, P("User", "null"), {"User": "x"})


def test_missing_field_makes_string_ops_false(engine):
    for op in ("eq", "contains", "startswith", "endswith", "glob", "re"):
        assert not hit(engine, P("Nope", op, "x"), {"Image": "x"})
    negated = rule(P("Nope", "contains", "x"), cond=("not", ("pred", 0)))
    assert hit(engine, negated, {})


def test_fieldref(engine):
    assert hit(engine, P("Image", "fieldref", "ParentImage"), {"Image": "C:\\A.exe", "ParentImage": "c:\\a.exe"})
    assert not hit(engine, P("Image", "fieldref", "ParentImage"), {"Image": "C:\\A.exe"})
    assert hit(engine, P("CommandLine", "fieldref", "Image", flags="contains"),
               {"CommandLine": "run c:\\a.exe now", "Image": "C:\\A.EXE"})


def test_cidr_and_numeric(engine):
    assert hit(engine, P("DestinationIp", "cidr", "10.0.0.0/8"), {"DestinationIp": "10.1.2.3"})
    assert not hit(engine, P("DestinationIp", "cidr", "10.0.0.0/8"), {"DestinationIp": "11.1.2.3"})
    assert not hit(engine, P("DestinationIp", "cidr", "10.0.0.0/8"), {"DestinationIp": "nope"})
    assert hit(engine, P("ProcessId", "gt", 4), {"ProcessId": 5})
    assert hit(engine, P("ProcessId", "lte", 4), {"ProcessId": "0x4"})
    assert not hit(engine, P("ProcessId", "lt", 4), {"ProcessId": "abc"})


def test_keyword_search_reads_stored_values(engine):
    kw = P(None, "contains", "mimikatz")
    assert hit(engine, kw, {"CommandLine": "run MIMIKATZ.exe"})
    assert hit(engine, kw, {"Other": "x mimikatz"})
    assert not hit(engine, kw, {"CommandLine": "benign"})
    assert not hit(engine, P(None, "exists", True), {"CommandLine": "x"})


@pytest.mark.parametrize("needles", [("\\perfc.dat",), ("\\perfc.dat", "mimikatz", "ПРИВЕТ")])
def test_keyword_search_finds_literals_after_long_runs(engine, needles):
    # the literal units skip, in the automaton's root state, every byte that cannot start
    # a literal (one memchr when a single byte can): a literal at the very start, after
    # 32,000 other bytes, at the very end, split across values, or in a non-ASCII value
    # folded in the field's own slot is found exactly as by the reference
    m = make(engine, [rule(P(None, "contains", *needles)),
                      rule(P("CommandLine", "contains", "zz\u00e9"), rid="cl")])
    pad = "a" * 32000
    lit = needles[0]
    cases = [
        ({"CommandLine": lit + pad}, [0]),
        ({"CommandLine": pad + lit}, [0]),
        ({"CommandLine": pad + lit.upper() + pad}, [0]),
        ({"CommandLine": pad + lit[:-1]}, []),
        ({"CommandLine": pad + lit[:4], "Image": lit[4:] + pad}, []),
        ({"CommandLine": "\u00c9" * 100 + pad + lit.upper() + "ZZ\u00c9"}, [0, 1]),
        ({"CommandLine": (lit[:-1] + " ") * 3000}, []),
        ({"CommandLine": "\\" * 16000 + lit}, [0]),
        ({"Image": "x", "Other": pad + lit}, [0]),
    ]
    if len(needles) > 1:
        cases.append(({"User": "\u00e9" * 50 + needles[2].lower()}, [0]))
    for event, want in cases:
        assert m.match(ProcessEvent(event)) == want, event


def test_condition_tree(engine):
    r = rule(P("Image", "endswith", "\\a.exe"), P("CommandLine", "contains", "x"), P("User", "eq", "svc"),
             cond=("or", ("and", ("pred", 0), ("not", ("pred", 1))), ("pred", 2), ("const", False)))
    assert hit(engine, r, {"Image": "c:\\a.exe", "CommandLine": "y"})
    assert not hit(engine, r, {"Image": "c:\\a.exe", "CommandLine": "x"})
    assert hit(engine, r, {"User": "SVC"})
    assert hit(engine, rule(P("Image", "eq", "x"), cond=("const", True)), {})
    assert not hit(engine, rule(P("Image", "eq", "x"), cond=("and", ("const", False), ("pred", 0))), {"Image": "x"})


# ---------------------------------------------------------------- derived and lazy fields

def test_derived_file_name(engine):
    assert hit(engine, P("@FileName", "eq", "mofcomp.exe"), {"Image": "C:\\Windows\\MofComp.exe"})
    assert not hit(engine, P("@FileName", "eq", "mofcomp.exe"), {})


def _lazy_event(calls, **fields):
    ev = ProcessEvent(fields)

    def resolve(event, name):
        calls.append(name)
        return "MofComp.exe"

    ev.set_pending("OriginalFileName", resolve)
    return ev


def test_pending_field_resolved_when_needed(engine):
    calls = []
    r = rule(P("OriginalFileName", "eq", "mofcomp.exe"))
    ev = _lazy_event(calls, Image="C:\\x\\renamed.exe")
    assert make(engine, [r]).match(ev) == [0]
    assert calls == ["OriginalFileName"]
    assert ev["OriginalFileName"] == "MofComp.exe"


def test_pending_field_not_requested_when_a_cheap_predicate_decides(engine):
    # written with the expensive predicate first; it must not be needed
    r = rule(P("OriginalFileName", "eq", "mofcomp.exe"), P("Image", "endswith", "\\mofcomp.exe"))
    calls = []
    m = make(engine, [r, seed_rule()])
    ev = _lazy_event(calls, Image="C:\\Windows\\notepad.exe", CommandLine="notepad")
    assert m.match(ev) == []
    if engine == "compiled":
        assert calls == []           # cheap predicates first, index skips the rest
    # the seed rule reads OriginalFileName only when its other half holds
    calls.clear()
    ev = _lazy_event(calls, Image="C:\\x\\renamed.exe", ParentImage="C:\\Windows\\cmd.exe",
                     CommandLine="x C:\\Users\\Public\\a.mof")
    assert m.match(ev) == [1]
    assert calls == ["OriginalFileName"]


def test_pending_field_keeps_index_exact(engine):
    # the primary witness of this rule is on OriginalFileName; with it pending the
    # fallback witness (CommandLine) must still let the rule through
    r = rule(P("OriginalFileName", "eq", "evil.exe"), P("CommandLine", "contains", "-steal"))
    calls = []
    ev = ProcessEvent(Image="C:\\a.exe", CommandLine="a.exe -STEAL")
    ev.set_pending("OriginalFileName", lambda e, n: calls.append(n) or "Evil.exe")
    assert make(engine, [r]).match(ev) == [0]
    assert calls == ["OriginalFileName"]


def test_resolver_errors_propagate(engine):
    ev = ProcessEvent(Image="x")

    def boom(event, name):
        raise OSError("pe read failed")

    ev.set_pending("OriginalFileName", boom)
    m = make(engine, [rule(P("OriginalFileName", "eq", "x"))])
    with pytest.raises(OSError):
        m.match(ev)
    assert m.match(ProcessEvent(OriginalFileName="X")) == [0]   # still usable


def test_reentrant_match_from_a_resolver(engine):
    m = make(engine, [rule(P("OriginalFileName", "eq", "a.exe")), rule(P("Image", "eq", "b"))])
    inner = []

    def resolve(event, name):
        inner.append(m.match(ProcessEvent(Image="B")))
        return "A.EXE"

    ev = ProcessEvent(Image="zzz")
    ev.set_pending("OriginalFileName", resolve)
    assert m.match(ev) == [0]
    assert inner == [[1]]


def test_threads_share_one_matcher(engine):
    m = make(engine, [seed_rule(), rule(P("Image", "endswith", "\\b.exe"))])
    ev_hit = ProcessEvent(Image="C:\\b.exe")
    errors = []

    def work():
        try:
            for _ in range(300):
                assert m.match(ev_hit) == [1]
        except AssertionError as exc:   # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------- the seed rule

MOF_PARENT = "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"


@pytest.mark.parametrize("event,expected", [
    ({"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": MOF_PARENT,
      "CommandLine": "mofcomp.exe x.mof"}, True),
    ({"Image": "C:\\tools\\m.exe", "OriginalFileName": "mofcomp.exe",
      "CommandLine": "m.exe C:\\Users\\Public\\evil.mof"}, True),
    ({"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\explorer.exe",
      "CommandLine": "mofcomp.exe x.mof"}, False),
    # the filter: WmiPrvSE parent, C:\Windows\TEMP, a .mof at the end
    ({"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe",
      "ParentImage": "C:\\Windows\\System32\\wbem\\WmiPrvSE.exe",
      "CommandLine": "mofcomp.exe C:\\Windows\\TEMP\\x.mof"}, False),
    ({"Image": "C:\\Windows\\notepad.exe", "ParentImage": MOF_PARENT}, False),
])
def test_seed_rule(engine, event, expected):
    assert hit(engine, seed_rule(), event) is expected


# ---------------------------------------------------------------- compiled only

def test_candidates_cover_every_match():
    if "compiled" not in matcher_mod.ENGINES:
        pytest.skip("compiled matcher not built")
    rules = [seed_rule(), rule(P("CommandLine", "re", "\\+.*\\+")),
             rule(P("Image", "eq", "x"), cond=("not", ("pred", 0)))]
    m = make("compiled", rules)
    for ev in ({"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": MOF_PARENT},
               {"CommandLine": "a+b+c"}, {"Image": "x"}, {}):
        assert set(m.match(ProcessEvent(ev))) <= set(m.candidates(ProcessEvent(ev)))
    # a benign event is not a candidate of the seed rule
    assert 0 not in m.candidates(ProcessEvent(Image="C:\\Windows\\notepad.exe"))


def test_a_keyword_search_is_a_witness_of_its_rule():
    # A rule of `1 of selection_*` with a keyword selection (NotPetya's shape) used to be a
    # candidate for every event, since a keyword had no witness. Its literals are found in any
    # stored value during selection now: the rule is evaluated only when one of them, or a
    # witness of its other selections, occurs.
    if "compiled" not in matcher_mod.ENGINES:
        pytest.skip("compiled matcher not built")
    r = rule(P("CommandLine", "contains", "deletejournal /d c:"), P(None, "contains", "\\perfc.dat"),
             cond=("or", ("pred", 0), ("pred", 1)))
    m = make("compiled", [r, rule(P("Image", "contains", "zz\u00e9"), rid="other")])
    assert (None, "anywhere", b"\\perfc.dat") in [w[:3] for w in m.witness(0)]
    benign = {"Image": "C:\\Windows\\notepad.exe", "CommandLine": "notepad a.txt", "User": "x\u00e9"}
    assert 0 not in m.candidates(ProcessEvent(benign))
    for extra, want in (({"Other": "C:\\PERFC.DAT"}, [0]),                         # any value, folded
                        ({"User": "\u00c9\\Perfc.dat"}, [0]),                      # a non-ASCII value
                        ({"CommandLine": "fsutil usn DeleteJournal /D C:"}, [0]),    # the other branch
                        ({"Other": "\\perfc.da"}, []), ({"Other": 7}, [])):
        ev = ProcessEvent({**benign, **extra})
        assert (0 in m.candidates(ev)) is bool(want), extra
        assert m.match(ev) == want == make("reference", [r]).match(ev), extra


def test_the_probe_tables_are_prefetched_once_per_clock_tick():
    # After the matcher has been idle, the anchor filters' probe tables are asked for ahead of
    # the scan (a cache hint): at most once per tick of a coarse clock (1-16 ms), so calls
    # back to back pay a clock read, not the prefetch; never for a rule set without an anchor
    # filter (the seed rule); once per match_batch call at most.
    import time

    if "compiled" not in matcher_mod.ENGINES:
        pytest.skip("compiled matcher not built")
    seed = make("compiled", [seed_rule()])
    assert seed.stats["prefetch_bytes"] == 0
    for _ in range(3):
        time.sleep(0.03)
        seed.match(ProcessEvent(Image="x"))
    assert seed.stats["prefetches"] == 0
    lits = tuple(f"k{i:05d}\\z" for i in range(3000))            # CommandLine: an anchor filter
    m = make("compiled", [rule(P("CommandLine", "contains", *lits))])
    assert {u["field"]: u["mode"] for u in m.stats["units"]}["CommandLine"] == "anchor filter"
    assert m.stats["prefetch_bytes"] > 0 and m.stats["prefetches"] == 0
    ev = ProcessEvent(CommandLine="run k00042\\z now")
    assert m.match(ev) == [0] and m.stats["prefetches"] == 1
    t0 = time.monotonic()
    for _ in range(2000):
        assert m.match(ev) == [0]
    elapsed_ms = (time.monotonic() - t0) * 1000
    assert m.stats["prefetches"] <= 1 + elapsed_ms + 1             # a tick is 1 ms at least
    for _ in range(3):
        before = m.stats["prefetches"]
        time.sleep(0.05)                                            # longer than any tick
        assert m.match_batch([ev] * 50) == [(0,)] * 50
        assert m.stats["prefetches"] == before + 1


def test_no_extensions_selects_the_twins():
    # one switch (sensor/_native.py) for every native part, read in a fresh interpreter
    import json
    import os
    import subprocess
    import sys

    code = ("import json, sensor\n"
            "from sensor.detect import matcher\n"
            "from sensor.enrich import pe\n"
            "m = sensor.create_matcher([])\n"
            "try:\n"
            "    matcher.create([], 'compiled'); compiled = True\n"
            "except ValueError:\n"
            "    compiled = False\n"
            "print(json.dumps([sorted(matcher.ENGINES), m.engine, compiled, sorted(pe.READERS)]))\n")
    env = dict(os.environ, SENSOR_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert json.loads(out) == [["reference"], "reference", False, ["python"]]


# -- the ops the IR defines, boundary by boundary (sensor/detect/ir.py) -----------------------

@pytest.mark.parametrize("mode,value,other,expected", [
    ("", "C:\\A.exe", "c:\\a.EXE", True), ("eq", "abc", "ab", False),
    ("contains", "xaby", "AB", True), ("contains", "ab", "abc", False),
    ("startswith", "abcdef", "ABC", True), ("startswith", "xabc", "abc", False),
    ("endswith", "defabc", "ABC", True), ("endswith", "abcdef", "abc", False),
])
def test_fieldref_modes(engine, mode, value, other, expected):
    ev = {"CommandLine": value, "Image": other}
    assert hit(engine, P("CommandLine", "fieldref", "Image", flags=mode), ev) is expected


def test_fieldref_any_of_several_fields_and_skips_missing_ones(engine):
    p = P("CommandLine", "fieldref", "User", "Image", flags="contains")
    assert hit(engine, p, {"CommandLine": "run x.exe", "Image": "X.EXE"})          # User missing
    assert not hit(engine, p, {"CommandLine": "run x.exe", "Image": "y.exe", "User": "bob"})
    assert hit(engine, p, {"CommandLine": "bob runs", "Image": "y.exe", "User": "BOB"})
    assert not hit(engine, P("CommandLine", "fieldref", "Image", cased=True), {"CommandLine": "a", "Image": "A"})


@pytest.mark.parametrize("op,bound,value,expected", [
    ("lt", 4, 3, True), ("lt", 4, 4, False), ("lte", 4, 4, True), ("lte", 4, 5, False),
    ("gt", 4, 5, True), ("gt", 4, 4, False), ("gte", 4, 4, True), ("gte", 4, 3, False),
    ("gt", 4, "5", True), ("gt", 4, " 5 ", True), ("lt", 1, "0.5", True), ("gte", 16, "0x10", True),
    ("gt", 0, "abc", False), ("gt", 0, True, False), ("lt", 10, "", False),
])
def test_numeric_ops_at_their_bounds(engine, op, bound, value, expected):
    assert hit(engine, P("ProcessId", op, bound), {"ProcessId": value}) is expected


def test_numeric_any_of_several_bounds(engine):
    assert hit(engine, P("ProcessId", "gt", 100, 4), {"ProcessId": 5})
    assert not hit(engine, P("ProcessId", "gt", 100, 40), {"ProcessId": 5})


@pytest.mark.parametrize("value,expected", [
    ("10.1.2.3", True), (" 10.1.2.3 ", True), ("11.0.0.1", False), ("::1", True), ("::2", False),
    ("::ffff:10.1.2.3", False),   # an IPv6 address is never inside an IPv4 network
    ("not an ip", False),
])
def test_cidr(engine, value, expected):
    assert hit(engine, P("DestinationIp", "cidr", "10.0.0.0/8", "::1/128"), {"DestinationIp": value}) is expected


@pytest.mark.parametrize("value,text", [(7, "7"), (True, "true"), (False, "false"), ("Ab", "ab")])
def test_values_are_compared_as_their_text(engine, value, text):
    assert hit(engine, P("CommandLine", "eq", text), {"CommandLine": value})
    assert not hit(engine, P("CommandLine", "eq", text + "x"), {"CommandLine": value})


@pytest.mark.parametrize("op,values", [
    ("eq", ("",)), ("contains", ("",)), ("startswith", ("",)), ("endswith", ("",)), ("glob", ("*",)),
    ("re", (".*",)), ("fieldref", ("Image",)), ("cidr", ("0.0.0.0/0",)), ("lt", (10 ** 9,)),
])
def test_a_missing_field_fails_every_op_but_exists_and_null(engine, op, values):
    ev = {"Image": "x"}
    assert not hit(engine, P("CommandLine", op, *values), ev)
    assert hit(engine, P("CommandLine", "null"), ev)
    assert hit(engine, P("CommandLine", "exists", False), ev)
    assert not hit(engine, P("CommandLine", "exists", True), ev)
    assert hit(engine, P("Image", "exists", True), ev)
    assert not hit(engine, P("Image", "null"), ev)


def test_keyword_search_never_holds_for_exists_or_null_and_skips_missing_values(engine):
    assert not hit(engine, P(None, "exists", True), {"Image": "x"})
    assert not hit(engine, P(None, "null"), {"Image": "x"})
    assert not hit(engine, P(None, "contains", "x"), {"Image": None, "CommandLine": "y"})
    assert hit(engine, P(None, "contains", "X"), {"Image": None, "CommandLine": "yx"})


def test_a_predicate_shared_by_rules_gives_each_rule_its_answer(engine):
    shared = P("Image", "endswith", "\\x.exe")
    rules = [rule(shared, rid="a"), rule(P("User", "eq", "bob"), shared, rid="b"),
             rule(P("User", "eq", "eve"), rid="c")]
    m = make(engine, rules)
    assert m.match(ProcessEvent({"Image": "C:\\x.exe", "User": "bob"})) == [0, 1]
    assert m.match(ProcessEvent({"Image": "C:\\x.exe", "User": "eve"})) == [0, 2]
    assert [r.id for r in m.match_rules(ProcessEvent({"Image": "C:\\y.exe", "User": "eve"}))] == ["c"]


def test_a_contains_literal_longer_than_64_kib_is_found(engine):
    # the anchor filter once packed a literal's length and anchor offset into 16 bits
    # each: a literal of 65,538 bytes was never found
    needle = "b" + "a" * 65535 + "zq"
    r = rule(P("CommandLine", "contains", needle))
    assert hit(engine, r, {"CommandLine": "x" + needle.upper() + "y"})
    assert hit(engine, r, {"CommandLine": needle})
    assert not hit(engine, r, {"CommandLine": needle[:-1]})
    assert not hit(engine, r, {"CommandLine": needle[:30000] + "c" + needle[30001:]})


# ---------------------------------------------------------------- batches
def test_batch_answers_every_event_in_order(engine):
    m = make(engine, [seed_rule(), rule(P("Image", "endswith", "\\b.exe")), rule(P("CommandLine", "contains", "-x"))])
    events = [ProcessEvent(Image="C:\\b.exe", CommandLine="b -X"), {"Image": "C:\\a.exe"},
              ProcessEvent(Image="C:\\Windows\\System32\\mofcomp.exe", CommandLine="mofcomp a.mof"),
              ProcessEvent(), {"CommandLine": "-x"}, ProcessEvent(Image="C:\\b.exe")]
    want = [tuple(m.match(e)) for e in events]
    assert [w for w in want if w] and () in want          # hits and misses both present
    assert matcher_mod.match_batch(m, events) == want
    assert matcher_mod.match_batch(m, tuple(events)) == want
    assert matcher_mod.match_batch(m, iter(events)) == want
    assert matcher_mod.match_batch(m, events[::-1]) == want[::-1]
    assert matcher_mod.match_batch(m, []) == []


def test_batch_goes_on_after_an_event_fails(engine):
    m = make(engine, [rule(P("OriginalFileName", "eq", "x")), rule(P("Image", "eq", "y"))])

    def boom(event, name):
        raise OSError("pe read failed")

    bad = ProcessEvent(Image="Y")
    bad.set_pending("OriginalFileName", boom)
    got = matcher_mod.match_batch(m, [ProcessEvent(OriginalFileName="X"), bad, 7, ProcessEvent(Image="y")])
    assert got[0] == (0,)
    assert isinstance(got[1], OSError) and str(got[1]) == "pe read failed"
    assert isinstance(got[2], AttributeError)          # not a mapping: that event's error only
    assert got[3] == (1,)
    assert m.match(ProcessEvent(Image="y", OriginalFileName="x")) == [0, 1]   # still usable


def test_batch_lets_an_interrupt_through(engine):
    m = make(engine, [rule(P("OriginalFileName", "eq", "x"))])

    def stop(event, name):
        raise KeyboardInterrupt

    ev = ProcessEvent(Image="a")
    ev.set_pending("OriginalFileName", stop)
    with pytest.raises(KeyboardInterrupt):
        matcher_mod.match_batch(m, [ProcessEvent(OriginalFileName="x"), ev])
    assert matcher_mod.match_batch(m, [ProcessEvent(OriginalFileName="X")]) == [(0,)]


def test_batch_reentered_from_a_resolver(engine):
    m = make(engine, [rule(P("OriginalFileName", "eq", "a.exe")), rule(P("Image", "eq", "b"))])
    inner = []

    def resolve(event, name):
        inner.append(matcher_mod.match_batch(m, [ProcessEvent(Image="B"), ProcessEvent(Image="c")]))
        return "A.EXE"

    ev = ProcessEvent(Image="b")
    ev.set_pending("OriginalFileName", resolve)
    assert matcher_mod.match_batch(m, [ev, ProcessEvent(Image="B")]) == [(0, 1), (1,)]
    assert inner == [[(1,), ()]]


def test_compiled_engine_evaluates_a_batch_in_one_call():
    if "compiled" not in matcher_mod.ENGINES:
        pytest.skip("compiled matcher not built")
    m = make("compiled", [seed_rule()])
    assert callable(getattr(m, "match_batch", None))
    assert not hasattr(make("reference", [seed_rule()]), "match_batch")   # the reference is defined by batch_of
    with pytest.raises(TypeError):
        m.match_batch(5)                                  # not iterable
