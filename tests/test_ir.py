"""The rule IR's own promises (sensor/detect/ir.py docstring): what a predicate accepts, what a
condition may be, the glob and regex semantics, and the rule's derived data.

Matching behaviour is asserted through both engines (``make_matcher``), so the compiled matcher
is held to the same reading of the IR as the reference one.
"""
from __future__ import annotations

import json

import pytest

from sensor.detect.ir import (Predicate, Rule, RuleError, check_condition, cond_preds, glob_escape,
                              glob_tokens, STAR, QMARK)
from sensor.events import ProcessEvent


def hit(make_matcher, pred: Predicate, **fields) -> bool:
    rule = Rule(id="r", title="r", predicates=(pred,), condition=("pred", 0))
    return bool(make_matcher([rule]).match(ProcessEvent(fields)))


# -- predicates: what is accepted, what is refused ---------------------------------------------

@pytest.mark.parametrize("args,message", [
    (("CommandLine", "like", ("x",)), "unknown predicate op 'like'"),
    (("CommandLine", "exists", ("yes",)), "exists takes exactly one boolean value"),
    (("CommandLine", "exists", (True, False)), "exists takes exactly one boolean value"),
    (("CommandLine", "exists", ()), "exists takes exactly one boolean value"),
    (("CommandLine", "re", ("(",)), "invalid regular expression '('"),
    (("CommandLine", "fieldref", ("Image",), False, "regex"), "unknown fieldref mode 'regex'"),
    (("CommandLine", "cidr", ("10.0.0.0/33",)), "invalid network '10.0.0.0/33'"),
    (("CommandLine", "gt", ("5",)), "gt needs numbers, got '5'"),
    (("CommandLine", "lte", (True,)), "lte needs numbers, got True"),
    (("CommandLine", "contains", (5,)), "contains needs strings, got 5"),
    (("CommandLine", "glob", (None,)), "glob needs strings, got None"),
])
def test_a_malformed_predicate_is_refused(args, message):
    with pytest.raises(RuleError) as exc:
        Predicate(*args)
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize("flags,bad", [("x", "x"), ("imx", "x"), ("zai", "az"), ("L", "L")])
def test_regex_flags_outside_ims_are_refused(flags, bad):
    with pytest.raises(RuleError, match=f"unknown regex flag\\(s\\) '{bad}'"):
        Predicate("CommandLine", "re", ("a",), flags=flags)


def test_a_well_formed_predicate_of_every_op_is_accepted():
    ok = [Predicate("Image", "exists", (True,)), Predicate("Image", "exists", (False,)),
          Predicate("Image", "null", ()), Predicate("Image", "re", ("a+",), flags="ims"),
          Predicate("Image", "fieldref", ("ParentImage",), flags="endswith"),
          Predicate("Image", "cidr", ("10.0.0.0/8", "::1/128")),
          Predicate("ProcessId", "lt", (5, 2.5)), Predicate("Image", "glob", ("a*",))]
    assert [p.op for p in ok] == ["exists", "exists", "null", "re", "fieldref", "cidr", "lt", "glob"]


def test_values_become_a_tuple_and_predicates_are_values():
    p = Predicate("Image", "eq", ["a", "b"])
    assert p.values == ("a", "b")
    assert p == Predicate("Image", "eq", ("a", "b"))
    assert hash(p) == hash(Predicate("Image", "eq", ("a", "b")))


@pytest.mark.parametrize("pred", [
    Predicate("Image", "eq", ("a", "B")), Predicate(None, "contains", ("x",), cased=True),
    Predicate("Image", "re", ("a.b",), flags="is"), Predicate("ProcessId", "gte", (3,)),
    Predicate("Image", "fieldref", ("ParentImage",), flags="contains"),
])
def test_predicate_json_round_trip(pred):
    assert Predicate.from_json(json.loads(json.dumps(pred.to_json()))) == pred


# -- regex flags: i, m, s mean what Python's re means -----------------------------------------

@pytest.mark.parametrize("pattern,flags,value,expected", [
    ("ABC", "", "xabcx", False), ("ABC", "i", "xabcx", True),
    ("^b", "", "a\nb", False), ("^b", "m", "a\nb", True),
    ("a$", "", "a\nb", False), ("a$", "m", "a\nb", True),
    ("a.b", "", "a\nb", False), ("a.b", "s", "a\nb", True),
    ("^A.B$", "ims", "x\na\nb", True),
])
def test_regex_flags(make_matcher, pattern, flags, value, expected):
    assert hit(make_matcher, Predicate("CommandLine", "re", (pattern,), flags=flags),
               CommandLine=value) is expected


# -- glob: whole value, * any run (newlines too), ? exactly one, \ escapes * ? \ ---------------

@pytest.mark.parametrize("pattern,value,expected", [
    ("a*b", "a\n\nb", True),           # * crosses newlines
    ("a?b", "a\nb", True),             # ? is any one character, a newline too
    ("a?b", "ab", False), ("a?b", "axxb", False),
    ("a\\*b", "a*b", True), ("a\\*b", "axb", False),
    ("a\\?b", "a?b", True), ("a\\?b", "axb", False),
    ("a\\\\b", "a\\b", True), ("a\\\\b", "a\\\\b", False),   # \\ is one backslash
    ("c:\\windows\\x*", "C:\\Windows\\x.exe", True),        # other backslashes are literal
    ("a\\", "a\\", True),                                    # a trailing backslash is literal
    ("a**b", "ab", True), ("a**b", "a-b", True),
    ("abc", "xabc", False), ("abc", "abcx", False),          # whole value, not a search
])
def test_glob_semantics(make_matcher, pattern, value, expected):
    assert hit(make_matcher, Predicate("CommandLine", "glob", (pattern,)), CommandLine=value) is expected


def test_glob_tokens_resolve_escapes_and_fold_stars():
    assert glob_tokens("a**b?\\*\\\\c\\d") == ["a", STAR, "b", QMARK, "*\\c\\d"]
    assert glob_tokens("*") == [STAR]
    assert glob_tokens("") == []


@pytest.mark.parametrize("text", ["", "a*b", "?", "\\", "x\\*y", "\\\\", "**", "a\\b"])
def test_glob_escape_gives_the_literal_back(text):
    assert glob_tokens(glob_escape(text)) == ([text] if text else [])


# -- conditions ----------------------------------------------------------------------------

def test_check_condition_turns_json_lists_into_tuples():
    cond = json.loads(json.dumps(("and", ("pred", 0), ("not", ("or", ("pred", 1), ("const", False))))))
    assert check_condition(cond, 2) == ("and", ("pred", 0), ("not", ("or", ("pred", 1), ("const", False))))


@pytest.mark.parametrize("cond,message", [
    ((), "malformed condition node"),
    ("pred", "malformed condition node"),
    (("pred", 2), "condition refers to a missing predicate"),
    (("pred", -1), "condition refers to a missing predicate"),
    (("pred", "0"), "condition refers to a missing predicate"),
    (("pred", 0, 1), "condition refers to a missing predicate"),
    (("const", 1), "malformed constant"),
    (("const", True, False), "malformed constant"),
    (("not",), "'not' takes one operand"),
    (("not", ("pred", 0), ("pred", 1)), "'not' takes one operand"),
    (("and",), "'and' needs operands"),
    (("or",), "'or' needs operands"),
    (("xor", ("pred", 0)), "unknown condition node 'xor'"),
    (("and", ("pred", 0), ("pred", 5)), "condition refers to a missing predicate"),
])
def test_malformed_conditions_are_refused(cond, message):
    with pytest.raises(RuleError, match=message.replace("(", "\\(")):
        check_condition(cond, 2)


def test_the_last_predicate_index_is_valid():
    assert check_condition(("pred", 1), 2) == ("pred", 1)
    assert check_condition(("or", ("pred", 0)), 2) == ("or", ("pred", 0))


def test_cond_preds_lists_every_referenced_predicate():
    cond = ("or", ("and", ("pred", 0), ("not", ("pred", 2))), ("const", True), ("pred", 1))
    assert sorted(cond_preds(cond)) == [0, 1, 2]
    assert list(cond_preds(("const", False))) == []


# -- rules ---------------------------------------------------------------------------------

def test_rule_refuses_an_unknown_select_field():
    with pytest.raises(RuleError, match="unknown select field\\(s\\): NOPE, ALSO"):
        Rule(id="r", title="t", predicates=(), condition=("const", True), select=("HOSTNAME", "NOPE", "ALSO"))
    assert Rule(id="r", title="t", predicates=(), condition=("const", True),
                select=["HOSTNAME"]).select == ("HOSTNAME",)


def test_rule_fields_include_fieldref_targets_and_keyword_searches():
    r = Rule(id="r", title="t", condition=("and", ("pred", 0), ("pred", 1)), predicates=(
        Predicate("Image", "fieldref", ("ParentImage", "OriginalFileName")),
        Predicate(None, "contains", ("x",))))
    assert r.fields == frozenset({"Image", "ParentImage", "OriginalFileName", None})


def test_mitre_techniques_from_tags():
    r = Rule(id="r", title="t", predicates=(), condition=("const", True), tags=(
        "attack.t1218.011", "ATTACK.T1059", "attack.execution", "attack.t", "attack.tx1", "cve.2021"))
    assert r.mitre_techniques == ["T1218.011", "T1059"]


def test_rule_json_round_trip():
    r = Rule(id="r1", title="T", predicates=(Predicate("Image", "endswith", ("\\x.exe",)),
                                             Predicate("CommandLine", "re", ("a", ), flags="i")),
             condition=("or", ("pred", 0), ("not", ("pred", 1))), level="high", description="d",
             tags=("attack.t1059",), author="a", references=("ref",), falsepositives=("fp",),
             source="f.yml:3", origin="sigma", meta={"k": "v"}, select=("HOSTNAME",))
    back = Rule.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r


def test_rule_from_json_defaults():
    r = Rule.from_json({"id": "x", "title": "t", "predicates": [], "condition": ["const", True]})
    assert (r.level, r.origin, r.meta, r.tags, r.select) == ("medium", "pack", {}, (), ())


# -- errors carry their location -----------------------------------------------------------

def test_rule_error_location():
    assert str(RuleError("bad")) == "bad"
    assert str(RuleError("bad", "rules/x.yml")) == "rules/x.yml: bad"
    assert str(RuleError("bad", "rules/x.yml", 7)) == "rules/x.yml:7: bad"
    assert RuleError("bad", "rules/x.yml", 7).location == "rules/x.yml:7"
    assert RuleError("bad", line=7).location == ""


def test_a_network_with_host_bits_set_is_accepted_as_its_network(make_matcher):
    # Sigma's cidr values are written as addresses with a prefix ("10.1.2.3/8"); the IR reads
    # them as the network they lie in, never refuses them.
    p = Predicate("DestinationIp", "cidr", ("10.1.2.3/8", "fe80::1/64"))
    assert hit(make_matcher, p, DestinationIp="10.200.0.1")
    assert hit(make_matcher, p, DestinationIp="fe80::abcd")
    assert not hit(make_matcher, p, DestinationIp="11.0.0.1")


def test_glob_to_regex_folds_unless_cased():
    # "folded unless cased": the pattern is lower-cased, for a value the caller lower-cased too
    from sensor.detect.ir import glob_to_regex
    assert glob_to_regex("C:/Temp/*.EXE").fullmatch("c:/temp/x.exe")
    assert glob_to_regex("C:/Temp/*.EXE", cased=True).fullmatch("c:/temp/x.exe") is None
    assert glob_to_regex("C:/Temp/*.EXE", cased=True).fullmatch("C:/Temp/x.EXE")


# -- the twin's glob: the same answers as the plain translation, in linear time ----------------

def _backtracking_glob(pattern: str) -> "re.Pattern":
    """The plain translation (``*`` -> ``.*``): the oracle for answers, cubic on some texts."""
    import re

    from sensor.detect.ir import QMARK, STAR, glob_tokens
    return re.compile("".join(".*" if t is STAR else "." if t is QMARK else re.escape(t.lower())
                              for t in glob_tokens(pattern)), re.DOTALL)


from hypothesis import example, given, settings, strategies as st  # noqa: E402


@settings(max_examples=3000)
@given(st.text("ab*?\\\n", max_size=8), st.text("ab\n*?\\", max_size=12))
@example("*a*b*", "ba")
@example("a*a", "a")
@example("*ab*ab*", "abab")
@example("**", "")
@example("*?*", "")
@example("\\**", "*x")
def test_glob_matches_exactly_as_the_plain_translation(pattern, text):
    from sensor.detect.ir import glob_to_regex
    assert (glob_to_regex(pattern).fullmatch(text) is None) == \
        (_backtracking_glob(pattern).fullmatch(text) is None)


def test_a_glob_with_many_stars_on_a_32767_character_value_ends():
    # `*a*b*c*` against `abdabd...` as a backtracking regex: 0.46 s at 2,000 characters, about
    # half an hour at 32,767 (cubic). Run in a child so a hang is killed; the timeout only
    # guards that hang.
    import subprocess
    import sys
    code = ("from sensor.detect.ir import glob_to_regex\n"
            "t = ('abd' * 11000)[:32767]\n"
            "assert glob_to_regex('*a*b*c*').fullmatch(t) is None\n"
            "assert glob_to_regex('*a*b*a').fullmatch(t) is not None  # t ends in 'a'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- the bounds on one rule: exactly at each bound loads, one more is refused ---------------------

def _rule(preds, cond=("pred", 0)):
    return Rule(id="r", title="r", predicates=tuple(preds), condition=cond)


def test_a_rule_of_exactly_the_predicate_bound_loads_and_one_more_is_refused():
    from sensor.detect import ir
    p = Predicate("CommandLine", "contains", ("x",))
    assert len(_rule([p] * ir.MAX_PREDICATES_PER_RULE).predicates) == ir.MAX_PREDICATES_PER_RULE
    with pytest.raises(RuleError) as err:
        _rule([p] * (ir.MAX_PREDICATES_PER_RULE + 1))
    assert str(err.value) == (f"rule has {ir.MAX_PREDICATES_PER_RULE + 1:,} predicates; at most "
                              f"{ir.MAX_PREDICATES_PER_RULE:,} are accepted")


def test_the_value_bound_counts_the_values_of_every_predicate():
    from sensor.detect import ir
    half = ir.MAX_VALUES_PER_RULE // 2
    a = Predicate("CommandLine", "contains", tuple(f"a{i}" for i in range(half)))
    b = Predicate("Image", "endswith", tuple(f"b{i}" for i in range(ir.MAX_VALUES_PER_RULE - half)))
    _rule([a, b], ("or", ("pred", 0), ("pred", 1)))          # exactly the bound: loads
    c = Predicate("Image", "endswith", tuple(f"b{i}" for i in range(ir.MAX_VALUES_PER_RULE - half + 1)))
    with pytest.raises(RuleError) as err:
        _rule([a, c], ("or", ("pred", 0), ("pred", 1)))
    assert f"rule has {ir.MAX_VALUES_PER_RULE + 1:,} values" in str(err.value)
    assert f"at most {ir.MAX_VALUES_PER_RULE:,} are accepted" in str(err.value)


def test_the_value_text_bound_counts_the_characters_of_every_predicate():
    from sensor.detect import ir
    n = ir.MAX_VALUE_CHARS_PER_RULE
    a = Predicate("CommandLine", "contains", ("x" * (n // 2 - 1), "y"))
    b = Predicate("Image", "eq", ("z" * (n - n // 2),))
    _rule([a, b], ("and", ("pred", 0), ("pred", 1)))         # exactly the bound: loads
    b2 = Predicate("Image", "eq", ("z" * (n - n // 2 + 1),))
    with pytest.raises(RuleError) as err:
        _rule([a, b2], ("and", ("pred", 0), ("pred", 1)))
    assert f"rule has {n + 1:,} characters of values; at most {n:,} are accepted" in str(err.value)
    # numbers are no text: they never count
    nums = Predicate("ProcessId", "gt", tuple(range(100)))
    _rule([a, b, nums], ("and", ("pred", 0), ("pred", 1), ("pred", 2)))


def test_the_regex_length_bound_is_per_regex_and_only_for_regexes():
    from sensor.detect import ir
    n = ir.MAX_REGEX_CHARS
    _rule([Predicate("CommandLine", "re", ("a" * n,))])
    _rule([Predicate("CommandLine", "contains", ("a" * (n + 1),))])     # a literal may be longer
    with pytest.raises(RuleError) as err:
        _rule([Predicate("CommandLine", "re", ("b", "a" * (n + 1)))])
    assert str(err.value) == (f"regular expression of {n + 1:,} characters; at most {n:,} "
                              "are accepted")


def test_a_condition_nested_exactly_to_the_depth_bound_loads_and_one_level_more_is_refused():
    from sensor.detect import ir
    cond: object = ("pred", 0)
    for _ in range(ir.MAX_CONDITION_DEPTH):
        cond = ("not", cond)
    p = Predicate("Image", "eq", ("x",))
    assert _rule([p], cond).condition == cond
    with pytest.raises(RuleError) as err:
        _rule([p], ("not", cond))
    assert str(err.value) == f"condition is nested more than {ir.MAX_CONDITION_DEPTH} levels deep"
    # and/or nest the same way
    cond = ("pred", 0)
    for _ in range(ir.MAX_CONDITION_DEPTH):
        cond = ("and", cond, ("pred", 0))
    _rule([p], cond)
    with pytest.raises(RuleError, match="nested more than"):
        _rule([p], ("or", ("pred", 0), cond))


def test_a_condition_of_exactly_the_node_bound_loads_and_one_node_more_is_refused():
    from sensor.detect import ir
    n = ir.MAX_CONDITION_NODES
    p = Predicate("Image", "eq", ("x",))
    flat = ("or",) + (("pred", 0),) * (n - 1)                 # n nodes: the "or" and n - 1 leaves
    assert len(_rule([p], flat).condition) == n
    with pytest.raises(RuleError) as err:
        _rule([p], flat + (("pred", 0),))
    assert str(err.value) == f"condition has more than {n:,} nodes"
    # nodes are counted over the whole tree, not per branch
    half = ("or",) + (("pred", 0),) * (n // 2)
    with pytest.raises(RuleError, match="nodes"):
        _rule([p], ("and", half, half))


# -- time parts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", ["hour:gt", "minute:eq", "day:lt", "week:lte", "month:gte",
                                   "year:eq"])
def test_a_time_part_test_names_a_part_and_a_comparison(flags):
    assert Predicate("UtcTime", "timepart", (3,), flags=flags).flags == flags


@pytest.mark.parametrize("flags,values,message", [
    ("hour", (3,), "unknown time part test 'hour'"),
    ("hours:eq", (3,), "unknown time part test 'hours:eq'"),
    ("hour:ne", (3,), "unknown time part test 'hour:ne'"),
    (":eq", (3,), "unknown time part test ':eq'"),
    ("hour:eq", ("3",), "time parts are integers, got '3'"),
    ("hour:eq", (True,), "time parts are integers, got True"),
    ("hour:eq", (3, 2.0), "time parts are integers, got 2.0"),
])
def test_a_malformed_time_part_test_is_refused(flags, values, message):
    with pytest.raises(RuleError) as err:
        Predicate("UtcTime", "timepart", values, flags=flags)
    assert str(err.value) == message


def test_time_part_reads_each_part_of_a_sysmon_time():
    import datetime
    from sensor.detect.ir import time_part
    text = "2024-03-05 14:07:09.123"
    got = {p: time_part(text, p) for p in ("minute", "hour", "day", "week", "month", "year")}
    want_week = int(datetime.date(2024, 3, 5).strftime("%W"))
    assert got == {"minute": 7, "hour": 14, "day": 5, "week": want_week, "month": 3, "year": 2024}
    assert time_part("2024-03-05T14:07Z", "minute") == 7          # T, no seconds, Z
    assert time_part("2024-03-05", "hour") == 0                   # a date alone: midnight


@pytest.mark.parametrize("text,part,want", [
    ("2024-03-05 23:59:59", "hour", 23),
    ("2024-03-05 23:59:59", "minute", 59),
    ("2024-03-05 24:00:00", "hour", None),
    ("2024-03-05 12:60:00", "minute", None),
    ("2024-03-05 12:00:60", "hour", None),       # no leap second: not a time
    ("2023-02-29 12:00:00", "day", None),        # no such date
    ("2024-02-29 12:00:00", "day", 29),
    ("2024-13-01", "month", None),
    ("yesterday", "day", None),
])
def test_time_part_refuses_what_is_not_a_date_or_time(text, part, want):
    from sensor.detect.ir import time_part
    assert time_part(text, part) == want


@pytest.mark.parametrize("day", range(-8, 9))
def test_time_part_week_is_strftime_w_around_new_year(day):
    import datetime
    from sensor.detect.ir import time_part
    for year in (2018, 2023, 2024):          # 1 January on a Monday, a Sunday, a Monday (leap)
        d = datetime.date(year, 1, 1) + datetime.timedelta(days=day)
        assert time_part(f"{d} 10:00:00", "week") == int(d.strftime("%W")), d


def test_the_bounds_on_one_rule_are_the_ones_docs_matcher_md_promises():
    import re as _re
    from pathlib import Path
    from sensor.detect import ir
    text = " ".join((Path(__file__).parents[1] / "docs" / "matcher.md").read_text(encoding="utf-8").split())
    promise = _re.search(r"a rule at most (.*?) \(`sensor/detect/ir\.py`\)", text).group(1)
    assert ir.MAX_VALUE_CHARS_PER_RULE % 1024 == 0
    assert promise == (f"{ir.MAX_VALUES_PER_RULE:,} values, {ir.MAX_VALUE_CHARS_PER_RULE // 1024} KiB of "
                       f"value text, {ir.MAX_PREDICATES_PER_RULE:,} predicates, a "
                       f"{ir.MAX_REGEX_CHARS:,}-character regex, a condition of depth "
                       f"{ir.MAX_CONDITION_DEPTH} and {ir.MAX_CONDITION_NODES:,} nodes")
