"""Sigma YAML → IR: every modifier and condition form, event by event; load errors with file:line.

Each row is a small Sigma detection, an event and the verdict the Sigma specification
gives (sigma-rules-specification.md, sigma-appendix-modifiers.md); every row runs on each
available matcher engine.
"""
from __future__ import annotations

import base64
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from sensor.events import ProcessEvent
from sensor.detect.loader import load_rules
from sensor.detect.sigma import field_warnings, load_sigma_text

from .conftest import DATA

HEAD = """\
title: Test Rule
id: 5f2c7d9a-0000-4000-8000-000000000000
logsource:
    category: process_creation
    product: windows
"""


def rule_from(detection: str):
    """Compile a rule whose detection section is ``detection`` (YAML, unindented)."""
    text = HEAD + "detection:\n" + textwrap.indent(textwrap.dedent(detection), "    ")
    res = load_sigma_text(text, "test.yml")
    assert not res.rejected, res.rejected
    assert len(res.rules) == 1
    return res.rules[0]


def ev(**fields) -> ProcessEvent:
    return ProcessEvent(fields)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64offsets(text: str, enc: str = "utf-8") -> list[str]:
    """``text`` base64-encoded at each of the three byte offsets, inside other data."""
    out = []
    for pad in ("", "x", "xy"):
        out.append(b64((pad + text + " tail").encode(enc)))
    return out


CASES = [
    # --- plain values, case, lists, maps
    ("s:\n  Image: 'C:\\Windows\\System32\\cmd.exe'\ncondition: s",
     ev(Image=r"c:\windows\system32\CMD.EXE"), True),
    ("s:\n  Image: 'cmd.exe'\ncondition: s", ev(Image=r"C:\x\cmd.exe"), False),
    ("s:\n  Image: ['a.exe', 'b.exe']\ncondition: s", ev(Image="B.exe"), True),
    ("s:\n  Image: a.exe\n  User: bob\ncondition: s", ev(Image="a.exe", User="alice"), False),
    ("s:\n  - Image: a.exe\n  - User: bob\ncondition: s", ev(Image="x", User="BOB"), True),
    ("s:\n  CommandLine: ''\ncondition: s", ev(CommandLine=""), True),
    ("s:\n  CommandLine: ''\ncondition: s", ev(), False),
    # --- contains / startswith / endswith / all / cased
    ("s:\n  CommandLine|contains: 'WHOAMI'\ncondition: s", ev(CommandLine="cmd /c whoami /all"), True),
    ("s:\n  CommandLine|startswith: 'cmd'\ncondition: s", ev(CommandLine="xcmd"), False),
    ("s:\n  Image|endswith: '\\cmd.exe'\ncondition: s", ev(Image=r"C:\W\CMD.exe"), True),
    ("s:\n  CommandLine|contains|all: [' -a', ' -b']\ncondition: s", ev(CommandLine="t -b -a"), True),
    ("s:\n  CommandLine|contains|all: [' -a', ' -b']\ncondition: s", ev(CommandLine="t -a"), False),
    ("s:\n  CommandLine|contains|cased: 'Invoke'\ncondition: s", ev(CommandLine="invoke-x"), False),
    ("s:\n  CommandLine|contains|cased: 'Invoke'\ncondition: s", ev(CommandLine="Invoke-x"), True),
    # --- wildcards and escapes (spec "Escaping")
    ("s:\n  Image: 'C:\\*\\cmd.exe'\ncondition: s", ev(Image=r"C:\Windows\System32\cmd.exe"), False),
    ("s:\n  Image: 'C:\\*\\cmd.exe'\ncondition: s", ev(Image=r"c:*\cmd.exe"), True),
    ("s:\n  Image: 'C:\\\\*\\cmd.exe'\ncondition: s", ev(Image=r"C:\Windows\System32\cmd.exe"), True),
    ("s:\n  Image: 'C:\\Windows\\*\\cmd.exe'\ncondition: s", ev(Image=r"C:\Windows\System32\cmd.exe"), False),
    ("s:\n  Image: 'c?d.exe'\ncondition: s", ev(Image="CMD.exe"), True),
    ("s:\n  Image: 'c?d.exe'\ncondition: s", ev(Image="cd.exe"), False),
    ("s:\n  CommandLine: 'a\\*b'\ncondition: s", ev(CommandLine="a*b"), True),     # \* literal
    ("s:\n  CommandLine: 'a\\*b'\ncondition: s", ev(CommandLine="axxb"), False),
    ("s:\n  CommandLine: 'a\\?b'\ncondition: s", ev(CommandLine="axb"), False),    # \? literal
    ("s:\n  CommandLine: 'C:\\\\*'\ncondition: s", ev(CommandLine=r"C:\Temp"), True),  # \\* = \ + *
    ("s:\n  CommandLine|contains: '\\\\\\*.dll'\ncondition: s", ev(CommandLine=r"del \*.dll"), True),
    ("s:\n  CommandLine|contains: '\\\\\\*.dll'\ncondition: s", ev(CommandLine=r"del \x.dll"), False),
    ("s:\n  CommandLine|contains: 'a*b'\ncondition: s", ev(CommandLine="xxAyyBzz"), True),
    # --- regular expressions: unanchored search, case-sensitive unless i; m; s
    ("s:\n  CommandLine|re: 'arp\\s+-a'\ncondition: s", ev(CommandLine='cmd /c "arp  -a"'), True),
    ("s:\n  CommandLine|re: 'arp\\s+-a'\ncondition: s", ev(CommandLine="ARP -a"), False),
    ("s:\n  CommandLine|re|i: 'arp\\s+-a'\ncondition: s", ev(CommandLine="ARP -a"), True),
    ("s:\n  CommandLine|re: '^b'\ncondition: s", ev(CommandLine="a\nb"), False),
    ("s:\n  CommandLine|re|m: '^b'\ncondition: s", ev(CommandLine="a\nb"), True),
    ("s:\n  CommandLine|re: 'a.b'\ncondition: s", ev(CommandLine="a\nb"), False),
    ("s:\n  CommandLine|re|s: 'a.b'\ncondition: s", ev(CommandLine="a\nb"), True),
    # --- windash
    ("s:\n  CommandLine|windash|contains: ' -enc '\ncondition: s", ev(CommandLine="ps /enc AAA"), True),
    ("s:\n  CommandLine|windash|contains: ' -enc '\ncondition: s", ev(CommandLine="ps \u2013enc AAA"), True),
    ("s:\n  CommandLine|windash|contains: ' -enc '\ncondition: s", ev(CommandLine="ps \u2014enc AAA"), True),
    ("s:\n  CommandLine|windash|contains: ' -enc '\ncondition: s", ev(CommandLine="ps \u2015enc x"), True),
    ("s:\n  CommandLine|windash|contains: ' -enc '\ncondition: s", ev(CommandLine="ps _enc x"), False),
    # --- base64 / base64offset / utf16
    ("s:\n  CommandLine|base64: 'http://'\ncondition: s", ev(CommandLine=b64(b"http://")), True),
    ("s:\n  CommandLine|base64|contains: 'http://'\ncondition: s",
     ev(CommandLine="-e " + b64(b"http://") + " x"), True),
    *[("s:\n  CommandLine|base64offset|contains: 'http://'\ncondition: s",
       ev(CommandLine="powershell -e " + v), True) for v in b64offsets("http://")],
    ("s:\n  CommandLine|base64offset|contains: 'http://'\ncondition: s",
     ev(CommandLine="powershell -e " + b64(b"https:/")), False),
    *[("s:\n  CommandLine|wide|base64offset|contains: 'ping'\ncondition: s",
       ev(CommandLine="-enc " + v), True) for v in b64offsets("ping", "utf-16-le")],
    *[("s:\n  CommandLine|utf16le|base64offset|contains: 'ping'\ncondition: s",
       ev(CommandLine="-enc " + v), True) for v in b64offsets("ping", "utf-16-le")],
    *[("s:\n  CommandLine|utf16be|base64offset|contains: 'ping'\ncondition: s",
       ev(CommandLine="-enc " + v), True) for v in b64offsets("ping", "utf-16-be")],
    ("s:\n  CommandLine|utf16|base64|contains: 'ab'\ncondition: s",
     ev(CommandLine=b64("\ufeffab".encode("utf-16-le"))), True),
    # --- cidr, exists, null, fieldref, numbers
    ("s:\n  DestinationIp|cidr: 10.0.0.0/8\ncondition: s", ev(DestinationIp="10.20.30.40"), True),
    ("s:\n  DestinationIp|cidr: 10.0.0.0/8\ncondition: s", ev(DestinationIp="11.0.0.1"), False),
    ("s:\n  DestinationIp|cidr: 'fe80::/10'\ncondition: s", ev(DestinationIp="fe80::1"), True),
    ("s:\n  DestinationIp|cidr: 10.0.0.0/8\ncondition: s", ev(DestinationIp="not an ip"), False),
    ("s:\n  ParentImage|exists: true\ncondition: s", ev(ParentImage="x"), True),
    ("s:\n  ParentImage|exists: true\ncondition: s", ev(), False),
    ("s:\n  ParentImage|exists: false\ncondition: s", ev(), True),
    ("s:\n  OriginalFileName: null\ncondition: s", ev(), True),
    ("s:\n  OriginalFileName: null\ncondition: s", ev(OriginalFileName=""), False),
    ("s:\n  ParentImage|fieldref: Image\ncondition: s", ev(Image=r"C:\a.exe", ParentImage=r"c:\A.EXE"), True),
    ("s:\n  ParentImage|fieldref: Image\ncondition: s", ev(Image=r"C:\a.exe", ParentImage=r"C:\b.exe"), False),
    ("s:\n  ParentImage|fieldref: Image\ncondition: s", ev(ParentImage=r"C:\b.exe"), False),
    # a selection's fields (an AND) inside an AND condition, lists (an OR) inside an OR: every
    # operand of the inner group still counts
    ("s1:\n  Image: a\n  User: u\ns2:\n  CommandLine: c\ncondition: s1 and s2",
     ev(Image="a", User="other", CommandLine="c"), False),
    ("s1:\n  Image: a\n  User: u\ns2:\n  CommandLine: c\ncondition: s1 and s2",
     ev(Image="a", User="u", CommandLine="c"), True),
    ("s1:\n  - Image: a\n  - User: u\ns2:\n  CommandLine: c\ncondition: s1 or s2",
     ev(Image="a"), True),
    ("s1:\n  - Image: a\n  - User: u\ns2:\n  CommandLine: c\ncondition: s2 or (s1 or s2)",
     ev(Image="a"), True),
    # a single-character wildcard before a trailing star: one character must be there
    ("s:\n  Image: '?abc*'\ncondition: s", ev(Image="xabcde"), True),
    ("s:\n  Image: '?abc*'\ncondition: s", ev(Image="abcde"), False),
    # fieldref with startswith / endswith / contains: the other field's value at that place only
    ("s:\n  CommandLine|fieldref|startswith: Image\ncondition: s",
     ev(Image=r"C:\a.exe", CommandLine=r"c:\A.exe /run"), True),
    ("s:\n  CommandLine|fieldref|startswith: Image\ncondition: s",
     ev(Image=r"C:\a.exe", CommandLine=r"run C:\a.exe"), False),
    ("s:\n  CommandLine|fieldref|endswith: Image\ncondition: s",
     ev(Image=r"C:\a.exe", CommandLine=r"run C:\A.EXE"), True),
    ("s:\n  CommandLine|fieldref|endswith: Image\ncondition: s",
     ev(Image=r"C:\a.exe", CommandLine=r"C:\a.exe /run"), False),
    ("s:\n  CommandLine|fieldref|contains: Image\ncondition: s",
     ev(Image=r"C:\a.exe", CommandLine=r"x C:\a.exe y"), True),
    ("s:\n  CommandLine|fieldref|contains: Image\ncondition: s",
     ev(Image=r"C:\a.exe", CommandLine=r"x C:\b.exe y"), False),
    ("s:\n  CommandLine|fieldref|startswith: Image\ncondition: s",
     ev(Image=r"C:\a.exe", CommandLine=r"C:\A.exe -x"), True),
    ("s:\n  CommandLine|fieldref|endswith: Image\ncondition: s",
     ev(Image="a.exe", CommandLine=r"run a.exe"), True),
    ("s:\n  CommandLine|fieldref|contains: Image\ncondition: s",
     ev(Image="a.exe", CommandLine=r"run a.exe now"), True),
    ("s:\n  ProcessId: 4\ncondition: s", ev(ProcessId=4), True),
    ("s:\n  ProcessId: 4\ncondition: s", ev(ProcessId=44), False),
    ("s:\n  ProcessId|lt: 100\ncondition: s", ev(ProcessId=99), True),
    ("s:\n  ProcessId|gte: 100\ncondition: s", ev(ProcessId="0x64"), True),
    ("s:\n  ProcessId|gt: 100\ncondition: s", ev(ProcessId="abc"), False),
    ("s:\n  ProcessId|neq: 4\ncondition: s", ev(ProcessId=5), True),
    ("s:\n  ProcessId|neq: 4\ncondition: s", ev(ProcessId=4), False),
    ("s:\n  Flag: true\ncondition: s", ev(Flag="True"), True),
    # --- keywords (field-less): substring over every value
    ("keywords:\n  - 'mimikatz'\ncondition: keywords", ev(CommandLine="x Mimikatz.exe y"), True),
    ("keywords:\n  - 'mimikatz'\ncondition: keywords", ev(Image="mimi.exe"), False),
    ("keywords:\n  - 'sekurlsa*logon'\ncondition: keywords", ev(User="a sekurlsa::logonpasswords"), True),
    # --- a predicate on a missing field is false; its negation true
    ("s:\n  Foo|contains: x\ncondition: s", ev(), False),
    ("s:\n  Foo|contains: x\ncondition: not s", ev(), True),
    ("s:\n  CommandLine|re: '.*'\ncondition: s", ev(), False),
    # --- conditions: 1 of / all of / them / not / and-or precedence / parentheses / lists
    ("sel_a:\n  Image: a\nsel_b:\n  User: b\ncondition: 1 of sel_*", ev(User="B"), True),
    ("sel_a:\n  Image: a\nsel_b:\n  User: b\ncondition: all of sel_*", ev(User="B"), False),
    ("sel_a:\n  Image: a\nsel_b:\n  User: b\ncondition: all of sel_*", ev(Image="a", User="b"), True),
    ("sel_a:\n  Image: a\nsel_b:\n  User: b\ncondition: 1 of them", ev(Image="A"), True),
    ("sel_a:\n  Image: a\nsel_b:\n  User: b\ncondition: all of them", ev(Image="A"), False),
    ("sel_a:\n  Image: a\nsel_b:\n  User: b\ncondition: any of them", ev(Image="A"), True),
    # or < and: a or (b and c)
    ("a:\n  Image: a\nb:\n  User: b\nc:\n  CommandLine: c\ncondition: a or b and c", ev(Image="a"), True),
    ("a:\n  Image: a\nb:\n  User: b\nc:\n  CommandLine: c\ncondition: (a or b) and c", ev(Image="a"), False),
    # not binds tighter than and
    ("a:\n  Image: a\nb:\n  User: b\ncondition: not a and b", ev(User="b"), True),
    ("a:\n  Image: a\nb:\n  User: b\ncondition: not (a and b)", ev(Image="a", User="b"), False),
    ("a:\n  Image: a\nb:\n  User: b\ncondition:\n  - a\n  - b", ev(User="b"), True),
    ("sel:\n  Image: a\n_hidden:\n  User: b\ncondition: 1 of them", ev(User="b"), False),
]


@pytest.mark.parametrize("detection,event,expected", CASES,
                         ids=[f"{i:02d}" for i in range(len(CASES))])
def test_semantics(detection, event, expected, make_matcher):
    rule = rule_from(detection)
    assert bool(make_matcher([rule]).match(event)) is expected


def test_lists_of_same_op_become_one_predicate():
    rule = rule_from("s:\n  Image|endswith: ['\\a.exe', '\\b.exe', '\\c.exe']\ncondition: s")
    assert len(rule.predicates) == 1
    p = rule.predicates[0]
    assert (p.field, p.op, p.values) == ("Image", "endswith", ("\\a.exe", "\\b.exe", "\\c.exe"))


def test_wildcard_forms_use_the_cheapest_op():
    ops = {d: rule_from(f"s:\n  Image: '{d}'\ncondition: s").predicates[0].op
           for d in ("abc", "*abc*", "abc*", "*abc", "a*c", "a?c", "*")}
    assert ops == {"abc": "eq", "*abc*": "contains", "abc*": "startswith", "*abc": "endswith",
                   "a*c": "glob", "a?c": "glob", "*": "glob"}


@pytest.mark.parametrize("kw", ["foo", "*foo", "foo*", "*foo*"])
def test_a_keyword_is_one_substring_search_whatever_stars_it_has_at_its_ends(kw):
    # docs/sigma.md: "a plain keyword is a substring search (*kw*)": stars at the ends add nothing
    rule = rule_from(f"k:\n  - '{kw}'\ncondition: k")
    assert [(p.field, p.op, p.values) for p in rule.predicates] == [(None, "contains", ("foo",))]


def test_a_lone_star_keyword_matches_any_event_with_a_value(make_matcher):
    rule = rule_from("k:\n  - '*'\ncondition: k")
    m = make_matcher([rule])
    assert m.match(ev(Image="x")) == [0] and m.match(ev()) == []


def test_text_parts_side_by_side_are_one_text():
    # A SigmaString may hold its text in several pieces (pySigma merges them today; a value
    # built from parts need not be): the pieces are one value.
    from sigma.types import SigmaString, SpecialChars

    from sensor.detect.sigma import _string_leaf

    for pieces, op, value in ((["C:\\", "x", "\\y"], "eq", "C:\\x\\y"),
                              (["a", "b", SpecialChars.WILDCARD_MULTI], "startswith", "ab"),
                              ([SpecialChars.WILDCARD_MULTI, "a", "b", "c"], "endswith", "abc")):
        s = SigmaString("placeholder")
        s.s = tuple(pieces)
        leaf = _string_leaf("Image", s, False)
        assert (leaf.op, leaf.values) == (op, (value,)), pieces


@pytest.mark.parametrize("op", ["and", "or"])
def test_a_long_parenthesised_chain_of_one_operator_is_one_flat_group(op, make_matcher):
    # `s and (t and (s and ...))` 100 levels deep means one AND of all its operands: it loads
    # (the IR's nesting bound is 64 levels) and decides like the flat form
    n = 100
    cond = "".join(f"{'s' if i % 2 else 't'} {op} (" for i in range(n)) + "s" + ")" * n
    rule = rule_from(f"s:\n  Image: a\nt:\n  User: u\ncondition: {cond}")
    assert rule.condition[0] == op and all(c[0] == "pred" for c in rule.condition[1:])
    m = make_matcher([rule])
    assert m.match(ev(Image="a", User="u")) == [0]
    assert m.match(ev(Image="a", User="x")) == ([] if op == "and" else [0])


def test_4688_field_names_in_a_rule_read_the_taxonomy_field(make_matcher):
    rule = rule_from("s:\n  NewProcessName|endswith: '\\cmd.exe'\ncondition: s")
    assert rule.predicates[0].field == "Image"
    assert make_matcher([rule]).match(ev(Image=r"C:\Windows\System32\cmd.exe")) == [0]


def test_metadata_is_carried():
    res = load_sigma_text((DATA / "sigma" / "rules" / "mofcomp.yml").read_text(), "mofcomp.yml")
    (rule,) = res.rules
    assert rule.id == "1dd05363-104e-4b4a-b963-196a534b03a1"
    assert rule.level == "high"
    assert rule.tags == ("attack.stealth", "attack.t1218")
    assert rule.mitre_techniques == ["T1218"]
    assert rule.meta["status"] == "test" and rule.meta["modified"] == "2023-04-11"
    assert rule.origin == "sigma" and rule.source == "mofcomp.yml"


@pytest.mark.parametrize("event,expected", [
    (ev(Image=r"C:\Windows\System32\wbem\mofcomp.exe", ParentImage=r"C:\Windows\System32\cmd.exe",
        CommandLine="mofcomp x.mof"), True),
    # PR #6204's real event: temp path in the command line, no filter applies
    (ev(Image=r"C:\Windows\System32\wbem\mofcomp.exe", OriginalFileName="mofcomp.exe",
        CommandLine=r'"mofcomp.exe" "C:\Windows\TEMP\tmpEE20.tmp"'), True),
    # filter_optional_null_parent: C:\Windows\TEMP\...mof
    (ev(Image=r"C:\Windows\System32\wbem\mofcomp.exe", ParentImage=r"C:\Windows\System32\cmd.exe",
        CommandLine=r"mofcomp C:\Windows\Temp\x.mof"), False),
    # filter value keeps its trailing backslash: TEMP2 is not filtered
    (ev(Image=r"C:\Windows\System32\wbem\mofcomp.exe", ParentImage=r"C:\Windows\System32\cmd.exe",
        CommandLine=r"mofcomp C:\Windows\TEMP2\x.mof"), True),
    (ev(OriginalFileName="MOFCOMP.EXE", ParentImage=r"C:\x\powershell.exe"), True),
    (ev(Image=r"C:\Windows\System32\wbem\mofcomp.exe"), False),
])
def test_sigmahq_mofcomp_rule(event, expected, make_matcher):
    res = load_sigma_text((DATA / "sigma" / "rules" / "mofcomp.yml").read_text(), "mofcomp.yml")
    assert bool(make_matcher(res.rules).match(event)) is expected


# ------------------------------------------------------------------ errors and reports

def _by_file(items):
    return {r.path.rsplit("/", 1)[-1]: r for r in items}


def test_errors_give_file_line_and_reason_and_the_rest_loads():
    report = load_rules([DATA / "sigma" / "errors"], builtin=False)
    assert [r.id for r in report.rules] == ["0b3c8a52-6f0e-4a8e-9a51-3d2b5a7a0001"]
    rej = _by_file(report.rejected)
    assert set(rej) == {"yaml_syntax.yml", "unknown_modifier.yml", "missing_selection.yml",
                        "invalid_regex.yml", "undefined_identifier.yml"}
    assert rej["yaml_syntax.yml"].line == 8 and "YAML syntax error" in rej["yaml_syntax.yml"].reason
    assert rej["unknown_modifier.yml"].line == 9
    assert "containz" in rej["unknown_modifier.yml"].reason
    assert rej["missing_selection.yml"].line == 12
    assert "filter_optional_*" in rej["missing_selection.yml"].reason
    assert rej["undefined_identifier.yml"].line == 9
    assert "'filter' not defined" in rej["undefined_identifier.yml"].reason
    assert rej["invalid_regex.yml"].line == 10
    assert "(unbalanced" in rej["invalid_regex.yml"].reason
    for r in report.rejected:
        assert str(r).startswith(f"{r.path}:{r.line}: ")


def test_not_applicable_and_field_warnings_are_reported():
    report = load_rules([DATA / "sigma" / "rules"], builtin=False)
    assert not report.rejected
    assert [x.path.rsplit("/", 1)[-1] for x in report.not_applicable] == ["linux_rule.yml"]
    assert "product: linux" in report.not_applicable[0].reason
    hashes = [w for w in report.warnings if w.path.endswith("hashes.yml")]
    assert len(hashes) == 1 and "Hashes" in hashes[0].reason and "Security 4688" in hashes[0].reason
    assert {r.id for r in report.rules} == {"1dd05363-104e-4b4a-b963-196a534b03a1",
                                            "0b3c8a52-6f0e-4a8e-9a51-3d2b5a7a0011"}


def test_field_nobody_provides_is_called_out():
    rule = rule_from("s:\n  GreatGrandParentImage|endswith: '\\x.exe'\ncondition: s")
    assert any("no event source provides" in w for w in field_warnings(rule))


def test_field_warnings_name_exactly_the_sources_that_lack_the_field():
    # docs/sigma.md "Field mapping": one warning per field, naming the sources that lack it
    rule = rule_from("""\
        s:
          OriginalFileName: 'x.exe'
          Hashes|contains: 'MD5='
          Provider_Name: 'p'
          Image|endswith: '\\x.exe'
          GrandParentImage|endswith: '\\y.exe'
        k:
          - 'keyword'
        condition: s or k
        """)
    assert field_warnings(rule) == [
        "reads GrandParentImage, which Sysmon EID 1 and Security 4688 never provide",
        "reads Hashes, which Security 4688 and ETW never provide",
        "reads OriginalFileName, which Security 4688 never provides",
        "reads Provider_Name, which no event source provides (predicates on it are always false)",
    ]


def test_rule_without_id_title_or_level_gets_the_documented_defaults():
    text = ("logsource:\n    category: process_creation\n"
            "detection:\n    s:\n        Image: a\n    condition: s\n")
    (untitled,) = load_sigma_text("title: ''\n" + text, "rules/no_id.yml").rules
    assert untitled.title == "no_id"           # an alert always has a title: the file's name
    (rule,) = load_sigma_text("title: T\n" + text, "rules/no_id.yml").rules
    assert rule.id == "sigma-no_id" and rule.title == "T" and rule.level == "medium"
    assert rule.meta["file"] == "no_id.yml" and "status" not in rule.meta
    assert rule.meta["logsource"] == {"category": "process_creation"}
    assert rule.description == "" and rule.author == "" and rule.tags == ()


def test_rule_metadata_fields_are_carried_as_written():
    text = HEAD.replace("title: Test Rule\n", "title: Test Rule\nname: the_rule\n") + (
        "status: experimental\ndate: 2024-01-02\nmodified: 2024-03-04\n"
        "description: '  spaced  '\nauthor: Someone\nreferences: [https://example.org/a]\n"
        "falsepositives: [Admins]\nlevel: critical\ntags: [attack.execution]\n"
        "detection:\n    s:\n        Image: a\n    condition: s\n")
    (rule,) = load_sigma_text(text, "x/meta.yml").rules
    assert rule.level == "critical" and rule.description == "spaced" and rule.author == "Someone"
    assert rule.references == ("https://example.org/a",) and rule.falsepositives == ("Admins",)
    assert rule.meta == {"format": "sigma", "status": "experimental", "date": "2024-01-02",
                         "modified": "2024-03-04",
                         "logsource": {"category": "process_creation", "product": "windows"},
                         "file": "meta.yml", "name": "the_rule"}


def test_builtin_rule_is_prepended_and_missing_paths_rejected(tmp_path):
    report = load_rules([tmp_path / "nope.yml"])
    assert report.rules[0].origin == "builtin"
    assert report.rejected and report.rejected[0].reason == "no such file or folder"


def test_unsupported_constructs_are_rejected_with_a_reason():
    for det, why in (("s:\n  Image|expand: '%x%'\ncondition: s", "placeholder"),
                     ("s:\n  Image|all: 'x'\ncondition: s", "all modifier")):
        res = load_sigma_text(HEAD + "detection:\n" + textwrap.indent(det, "    "), "u.yml")
        assert not res.rules and why in res.rejected[0].reason
        assert res.rejected[0].line is not None


def test_collections_and_non_utf8_are_rejected(tmp_path):
    coll = tmp_path / "c.yml"
    coll.write_text("action: global\ntitle: x\n---\nlogsource: {category: process_creation}\n")
    bad = tmp_path / "b.yml"
    bad.write_bytes(b"title: \xff\xfe\n")
    report = load_rules([tmp_path], builtin=False)
    reasons = {r.path.rsplit("/", 1)[-1]: r.reason for r in report.rejected}
    assert "collections" in reasons["c.yml"] and "UTF-8" in reasons["b.yml"]


def test_cli_validate_exit_codes(capsys):
    from sensor.cli import main
    assert main(["rules", "validate", str(DATA / "sigma" / "rules")]) == 0
    out = capsys.readouterr().out
    assert "2 loaded, 0 rejected, 1 not applicable" in out and "load time:" in out
    assert main(["rules", "validate", str(DATA / "sigma" / "errors")]) == 1
    out = capsys.readouterr().out
    assert "unknown_modifier.yml:9:" in out and "memory:" in out


def test_cli_list(capsys):
    from sensor.cli import main
    assert main(["rules", "list", "--rules", str(DATA / "sigma" / "rules" / "mofcomp.yml")]) == 0
    out = capsys.readouterr().out
    assert "1dd05363-104e-4b4a-b963-196a534b03a1" in out and "seed-" in out
    assert main(["rules", "list", "--no-builtin-rules",
                 "--rules", str(DATA / "sigma" / "rules" / "mofcomp.yml")]) == 0
    assert "seed-" not in capsys.readouterr().out


# ------------------------------------------------------------------ property: wildcards/escapes


@settings(max_examples=400, deadline=None)
@given(raw=st.text(alphabet="aB\\*?.x", max_size=8), text=st.text(alphabet="abAB\\*?.xX", max_size=10))
def test_string_values_agree_with_pysigma_regex(raw, text):
    """Any Sigma string (wildcards, escapes) matches exactly what pySigma's to_regex() says."""
    import re

    from sigma.types import SigmaString

    from sensor.detect._matcher_py import Matcher
    from sensor.detect.ir import Rule
    from sensor.detect.sigma import _number, _simplify, _value_node

    preds: list = []
    cond = _number(_simplify(_value_node("F", SigmaString(raw))), preds, {})
    rule = Rule("p", "p", tuple(preds), cond)
    ours = bool(Matcher([rule]).match(ProcessEvent(F=text)))
    oracle = re.fullmatch(SigmaString(raw).to_regex().regexp.original, text,
                          re.IGNORECASE | re.DOTALL) is not None
    assert ours == oracle


@pytest.mark.parametrize("first,second", [("contains|cased", "contains"), ("contains", "contains|cased")])
def test_or_merging_keeps_cased_and_uncased_apart(first, second, make_matcher):
    # Sigma: values are case-insensitive unless |cased; OR-ing a cased selection with an
    # uncased one must keep each value's own case rule (spec, "cased" modifier).
    if first.endswith("cased"):
        det = f"a:\n  CommandLine|{first}: 'Foo'\nb:\n  CommandLine|{second}: 'bar'\ncondition: a or b"
    else:
        det = f"a:\n  CommandLine|{first}: 'bar'\nb:\n  CommandLine|{second}: 'Foo'\ncondition: a or b"
    m = make_matcher([rule_from(det)])
    assert m.match(ev(CommandLine="x Foo y")) == [0]
    assert m.match(ev(CommandLine="x BAR y")) == [0]     # uncased: any case
    assert m.match(ev(CommandLine="x foo y")) == []      # cased: exact case only
    assert m.match(ev(CommandLine="x FOO y")) == []


def test_glob_star_and_qmark_cross_newlines(make_matcher):
    # Sigma's * is "any number of characters" and ? "one character": a newline is a character
    m = make_matcher([rule_from("s:\n  CommandLine: 'a*b?c'\ncondition: s")])
    assert m.match(ev(CommandLine="a\nx\nb\nc")) == [0]
    assert m.match(ev(CommandLine="A\n\nB\rC")) == [0]
    assert m.match(ev(CommandLine="a\nb\nx")) == []


@pytest.mark.parametrize("pattern,text,expected", [
    ("foo(bar)?baz", "foobaz", True), ("foo(bar)?baz", "foobarbaz", True),
    ("foo(bar)*baz", "foobaz", True), ("a(?:xyz){0,2}b", "ab", True),
    ("(?:evil|good)tool", "goodtool", True), ("(?:evil|good)tool", "tool", False),
    ("x(abc|)y", "xy", True), ("p(qr)?s(tu)?v", "psv", True), ("p(qr)?s(tu)?v", "pqrstv", False),
    ("a[0-9]?zz", "azz", True), ("k(?:lmn)??o", "ko", True),
])
def test_regex_optional_parts_are_not_required(pattern, text, expected, make_matcher):
    # an optional part of a regex may be absent: the compiled engine's literal index must not
    # require it (the reference engine is plain re.search)
    m = make_matcher([rule_from(f"s:\n  CommandLine|re: '{pattern}'\ncondition: s")])
    assert bool(m.match(ev(CommandLine=f"pre {text} post"))) is expected
