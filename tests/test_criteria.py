"""The seed page's criteria language: parsing, precedence, lists, select, errors."""
from __future__ import annotations

import pytest

from sensor.events import ProcessEvent
from sensor.detect.criteria import parse_criteria
from sensor.detect.ir import Rule, RuleError


def rule_of(text: str) -> Rule:
    c = parse_criteria(text)
    return Rule(id="t", title="t", predicates=c.predicates, condition=c.condition)


def matches(make_matcher, text, **fields) -> bool:
    return bool(make_matcher([rule_of(text)]).match(ProcessEvent(fields)))


def test_seed_shape():
    c = parse_criteria('A1: actionname = "Process started" AND PROCESSNAME endswith "\\x.exe" '
                       'select A1.HOSTNAME,A1.FILE_NAME')
    assert c.label == "A1"
    assert c.select == ("HOSTNAME", "FILE_NAME")
    assert c.condition == ("and", ("const", True), ("pred", 0))
    assert c.predicates[0].field == "Image" and c.predicates[0].values == ("\\x.exe",)


def test_comma_list_is_any(make_matcher):
    t = 'PARENTPROCESSNAME endswith "\\a.exe,\\b.exe"'
    assert matches(make_matcher, t, ParentImage="C:\\B.EXE")
    assert not matches(make_matcher, t, ParentImage="C:\\c.exe")


def test_negated_list_is_none_of(make_matcher):
    t = 'COMMANDLINE notcontains "x,y"'
    assert matches(make_matcher, t, CommandLine="abc")
    assert not matches(make_matcher, t, CommandLine="aYb")
    assert matches(make_matcher, t)  # missing: the negation holds


def test_and_binds_tighter_than_or(make_matcher):
    t = 'COMMANDLINE = "a" OR COMMANDLINE = "b" AND PROCESSNAME = "x"'
    assert matches(make_matcher, t, CommandLine="a")            # a OR (b AND x)
    assert not matches(make_matcher, t, CommandLine="b", Image="y")
    assert matches(make_matcher, t, CommandLine="b", Image="X")


def test_not_and_parentheses(make_matcher):
    t = 'NOT (COMMANDLINE contains "a" OR COMMANDLINE contains "b")'
    assert matches(make_matcher, t, CommandLine="zzz")
    assert not matches(make_matcher, t, CommandLine="zbz")


@pytest.mark.parametrize("op,value,field_value,expected", [
    ("=", "abc", "ABC", True), ("!=", "abc", "ABC", False), ("!=", "abc", None, True),
    ("startswith", "ab", "Abc", True), ("notstartswith", "ab", "Abc", False),
    ("endswith", "bc", "aBC", True), ("notendswith", "bc", None, True),
    ("contains", "b", None, False), ("notcontains", "b", "abc", False),
])
def test_operators(make_matcher, op, value, field_value, expected):
    assert matches(make_matcher, f'COMMANDLINE {op} "{value}"', CommandLine=field_value) is expected


def test_derived_fields(make_matcher):
    assert matches(make_matcher, 'FILE_NAME = "mofcomp.exe"', Image="C:\\W\\MofComp.exe")
    assert not matches(make_matcher, 'FILE_NAME = "mofcomp.exe"')
    assert matches(make_matcher, 'MESSAGE contains "process started: c:\\w\\x.exe"', Image="C:\\W\\x.exe")


@pytest.mark.parametrize("text,message", [
    ('PROCESSNAME endswith', "expected a quoted value"),
    ('PROCESSNAME like "x"', "expected an operator"),
    ('FOO = "x"', "unknown field 'FOO'"),
    ('(PROCESSNAME = "x"', "expected ')'"),
    ('PROCESSNAME = "x" select A.NOPE', "unknown field 'NOPE' in select"),
    ('actionname = "Process stopped"', "never occurs"),
    ('PROCESSNAME = "x" junk', "unexpected 'junk'"),
    ('PROCESSNAME = "x" AND', "expected a field name"),
])
def test_errors_name_the_column(text, message):
    with pytest.raises(RuleError, match="criteria column \\d+: .*" + message.replace("(", "\\(").replace(")", "\\)")):
        parse_criteria(text)


def test_not_binds_one_factor_not_the_whole_term(make_matcher):
    # grammar: factor := "NOT" factor, so NOT a AND b is (NOT a) AND b, never NOT (a AND b)
    t = 'NOT PROCESSNAME = "x.exe" AND COMMANDLINE contains "evil"'
    assert not matches(make_matcher, t, Image="y.exe", CommandLine="benign")  # (T) and F
    assert matches(make_matcher, t, Image="y.exe", CommandLine="so evil")      # (T) and T
    assert not matches(make_matcher, t, Image="x.exe", CommandLine="benign")  # (F) and F
    c = parse_criteria(t)
    assert c.condition == ("and", ("not", ("pred", 0)), ("pred", 1))


@pytest.mark.parametrize("value,expected", [
    ("b", True),          # a part of the value but not all of it: not equal
    ("abc", False), ("ABC", False), ("abcd", True), ("", True),
])
def test_not_equal_is_whole_value_inequality(make_matcher, value, expected):
    assert matches(make_matcher, f'COMMANDLINE != "{value}"', CommandLine="abc") is expected


# An error says what it found where it expected something else, and at which (1-based) column, so
# that the rule's author can find it without reading the parser.
@pytest.mark.parametrize("text,column,found", [
    ('PROCESSNAME = x', 15, "expected a quoted value, found 'x'"),
    ('PROCESSNAME = "x" AND', 22, "expected a field name, found 'end of text'"),
    ('PROCESSNAME like "x"', 13, "expected an operator after 'PROCESSNAME', found 'like'"),
    ('PROCESSNAME', 12, "expected an operator after 'PROCESSNAME', found 'end of text'"),
    ('PROCESSNAME = "x" junk', 19, "unexpected 'junk'"),
])
def test_errors_say_what_was_found_and_where(text, column, found):
    with pytest.raises(RuleError) as exc:
        parse_criteria(text)
    assert str(exc.value) == f"criteria column {column}: {found}"
