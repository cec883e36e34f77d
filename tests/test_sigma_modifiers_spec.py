"""Every value modifier of the Sigma 2.1 specification against its own wording
(sigma-appendix-modifiers.md, 2.1.0), on each matcher engine.

Each row quotes the sentence it checks.
"""
from __future__ import annotations

import base64
import textwrap

import pytest

from sensor.detect.sigma import load_sigma_text
from sensor.events import ProcessEvent

HEAD = """\
title: t
id: 5f2c7d9a-0000-4000-8000-0000000000f1
logsource:
    category: process_creation
    product: windows
detection:
"""


PLACEHOLDERS = {"Admins": ("adm_*", "root")}


def compiled(detection: str):
    res = load_sigma_text(HEAD + textwrap.indent(textwrap.dedent(detection), "    "), "m.yml",
                          placeholders=PLACEHOLDERS)
    assert not res.rejected, res.rejected
    return res.rules


def b64(text: str, enc: str = "utf-8") -> str:
    return base64.b64encode(text.encode(enc)).decode()


SPEC = [
    # exists: "Defines that a certain field has to exist or must not exist in a log event by
    # providing a boolean value. Note that this check only verifies the presence of a field,
    # not its value, be it empty or null."
    ("exists", "s:\n  ParentImage|exists: true\ncondition: s", {"ParentImage": ""}, True),
    ("exists", "s:\n  ParentImage|exists: true\ncondition: s", {"ParentImage": "x"}, True),
    ("exists", "s:\n  ParentImage|exists: true\ncondition: s", {}, False),
    ("exists", "s:\n  ParentImage|exists: false\ncondition: s", {"ParentImage": ""}, False),
    ("exists", "s:\n  ParentImage|exists: false\ncondition: s", {}, True),
    # cased: "Values are applied case sensitively. Default Sigma behavior is case-insensitive
    # matching."
    ("cased", "s:\n  CommandLine|cased: 'Invoke-X'\ncondition: s", {"CommandLine": "Invoke-X"}, True),
    ("cased", "s:\n  CommandLine|cased: 'Invoke-X'\ncondition: s", {"CommandLine": "invoke-x"}, False),
    ("cased", "s:\n  CommandLine: 'Invoke-X'\ncondition: s", {"CommandLine": "invoke-x"}, True),
    # fieldref: "Modifies a plain string into a field reference. A field reference can be used
    # to compare fields of matched events directly at query/matching time. Can be conbine with
    # the `neq` modifier."
    ("fieldref", "s:\n  ParentUser|fieldref: User\ncondition: s",
     {"User": "CORP\\bob", "ParentUser": "corp\\BOB"}, True),
    ("fieldref", "s:\n  ParentUser|fieldref: User\ncondition: s",
     {"User": "CORP\\bob", "ParentUser": "CORP\\eve"}, False),
    ("fieldref|neq", "s:\n  ParentUser|fieldref|neq: User\ncondition: s",
     {"User": "CORP\\bob", "ParentUser": "CORP\\eve"}, True),
    ("fieldref|neq", "s:\n  ParentUser|fieldref|neq: User\ncondition: s",
     {"User": "CORP\\bob", "ParentUser": "corp\\bob"}, False),
    # neq: "The field is different from the specified values. It's can be used with string or
    # number."
    ("neq", "s:\n  User|neq: bob\ncondition: s", {"User": "eve"}, True),
    ("neq", "s:\n  User|neq: bob\ncondition: s", {"User": "BOB"}, False),
    ("neq", "s:\n  User|neq:\n    - bob\n    - eve\ncondition: s", {"User": "eve"}, False),
    ("neq", "s:\n  User|neq:\n    - bob\n    - eve\ncondition: s", {"User": "amy"}, True),
    ("neq", "s:\n  ProcessId|neq: 4\ncondition: s", {"ProcessId": 5}, True),
    ("neq", "s:\n  ProcessId|neq: 4\ncondition: s", {"ProcessId": 4}, False),
    # lt/lte/gt/gte: "Field is less than the value", "less or equal", "greater than",
    # "greater or equal"
    ("lt", "s:\n  ProcessId|lt: 100\ncondition: s", {"ProcessId": 99}, True),
    ("lt", "s:\n  ProcessId|lt: 100\ncondition: s", {"ProcessId": 100}, False),
    ("lte", "s:\n  ProcessId|lte: 100\ncondition: s", {"ProcessId": 100}, True),
    ("lte", "s:\n  ProcessId|lte: 100\ncondition: s", {"ProcessId": 101}, False),
    ("gt", "s:\n  ProcessId|gt: 100\ncondition: s", {"ProcessId": "101"}, True),
    ("gt", "s:\n  ProcessId|gt: 100\ncondition: s", {"ProcessId": 100}, False),
    ("gte", "s:\n  ProcessId|gte: 100\ncondition: s", {"ProcessId": 100}, True),
    ("gte", "s:\n  ProcessId|gte: 100\ncondition: s", {"ProcessId": "abc"}, False),
    # utf16le: "Transforms value to UTF16-LE encoding, e.g. `cmd` > `63 00 6d 00 64 00`"
    ("utf16le", "s:\n  CommandLine|utf16le|contains: cmd\ncondition: s",
     {"CommandLine": "x c\x00m\x00d\x00 y"}, True),
    ("utf16le", "s:\n  CommandLine|utf16le|contains: cmd\ncondition: s", {"CommandLine": "cmd"},
     False),
    # wide: "an alias for the `utf16le` modifier."
    ("wide", "s:\n  CommandLine|wide|contains: cmd\ncondition: s",
     {"CommandLine": "c\x00m\x00d\x00"}, True),
    # utf16be: "Transforms value to UTF16-BE encoding, e.g. `cmd` > `00 63 00 6d 00 64`"
    ("utf16be", "s:\n  CommandLine|utf16be|contains: cmd\ncondition: s",
     {"CommandLine": "\x00c\x00m\x00d"}, True),
    # utf16: "Prepends a byte order mark and encodes UTF16, e.g. `cmd` > `FF FE 63 00 6d 00 64 00`"
    ("utf16", "s:\n  CommandLine|utf16|base64: cmd\ncondition: s",
     {"CommandLine": base64.b64encode(b"\xff\xfec\x00m\x00d\x00").decode()}, True),
    # base64: "The value is encoded with Base64."
    ("base64", "s:\n  CommandLine|base64: 'http://'\ncondition: s", {"CommandLine": b64("http://")},
     True),
    ("base64", "s:\n  CommandLine|base64: 'http://'\ncondition: s", {"CommandLine": "http://"},
     False),
    ("wide|base64offset", "s:\n  CommandLine|wide|base64offset|contains: 'iex'\ncondition: s",
     {"CommandLine": "-enc " + b64("xiex (", "utf-16-le")}, True),
    # base64offset: "... the encoded values have a static part in the middle" (three offsets)
    *[("base64offset", "s:\n  CommandLine|base64offset|contains: 'http://'\ncondition: s",
       {"CommandLine": "-e " + b64(pad + "http://x")}, True) for pad in ("", "a", "ab")],
    # windash: "Creates all possible permutations of the `-`, `/`, `–` (en dash), `—` (em dash),
    # and `―` (horizontal bar) characters."
    *[("windash", "s:\n  CommandLine|windash|contains: ' -exec bypass'\ncondition: s",
       {"CommandLine": f"ps {d}exec bypass"}, True) for d in "-/\u2013\u2014\u2015"],
    ("windash", "s:\n  CommandLine|windash|contains: ' -exec bypass'\ncondition: s",
     {"CommandLine": "ps +exec bypass"}, False),
    # cidr: "The value is handled as an CIDR by backends. Supports both IPv4 and IPv6 notations."
    ("cidr", "s:\n  SourceIp|cidr: 192.168.0.0/16\ncondition: s", {"SourceIp": "192.168.7.9"}, True),
    ("cidr", "s:\n  SourceIp|cidr: 192.168.0.0/16\ncondition: s", {"SourceIp": "192.169.0.1"}, False),
    ("cidr", "s:\n  SourceIp|cidr: '2001:db8::/32'\ncondition: s", {"SourceIp": "2001:db8::1"}, True),
    ("cidr", "s:\n  SourceIp|cidr: '2001:db8::/32'\ncondition: s", {"SourceIp": "2001:db9::1"},
     False),
    # re: "Value is handled as a regular expression by backends. Regex is matched case-sensitive
    # by default."
    ("re", "s:\n  CommandLine|re: 'whoami\\s+/all'\ncondition: s", {"CommandLine": "whoami  /all"},
     True),
    ("re", "s:\n  CommandLine|re: 'whoami'\ncondition: s", {"CommandLine": "WHOAMI"}, False),
    # re|i: "Regex ignore case"
    ("re|i", "s:\n  CommandLine|re|i: 'whoami'\ncondition: s", {"CommandLine": "WHOAMI"}, True),
    # re|m: "^ /$ match the start/end of line"
    ("re|m", "s:\n  CommandLine|re|m: '^b$'\ncondition: s", {"CommandLine": "a\nb\nc"}, True),
    ("re", "s:\n  CommandLine|re: '^b$'\ncondition: s", {"CommandLine": "a\nb\nc"}, False),
    # re|s: "dot (.) matches all characters, including the newline character"
    ("re|s", "s:\n  CommandLine|re|s: 'a.b'\ncondition: s", {"CommandLine": "a\nb"}, True),
    ("re", "s:\n  CommandLine|re: 'a.b'\ncondition: s", {"CommandLine": "a\nb"}, False),
    # all: "lists of values are linked with *OR* ... This modifier changes this to *AND*."
    ("all", "s:\n  CommandLine|contains|all:\n    - ' -a'\n    - ' -b'\ncondition: s",
     {"CommandLine": "x -b -a"}, True),
    ("all", "s:\n  CommandLine|contains|all:\n    - ' -a'\n    - ' -b'\ncondition: s",
     {"CommandLine": "x -a"}, False),
    ("contains", "s:\n  CommandLine|contains:\n    - ' -a'\n    - ' -b'\ncondition: s",
     {"CommandLine": "x -a"}, True),
    # contains: "Puts `*` wildcards around the values, such that the value is matched anywhere"
    ("contains", "s:\n  CommandLine|contains: 'ab'\ncondition: s", {"CommandLine": "xaby"}, True),
    ("contains", "s:\n  CommandLine|contains: 'ab'\ncondition: s", {"CommandLine": "a b"}, False),
    # startswith: "The value is expected at the beginning of the field's content."
    ("startswith", "s:\n  CommandLine|startswith: 'ab'\ncondition: s", {"CommandLine": "abc"}, True),
    ("startswith", "s:\n  CommandLine|startswith: 'ab'\ncondition: s", {"CommandLine": "cab"},
     False),
    # endswith: "The value is expected at the end of the field's content"
    ("endswith", "s:\n  CommandLine|endswith: 'ab'\ncondition: s", {"CommandLine": "cab"}, True),
    ("endswith", "s:\n  CommandLine|endswith: 'ab'\ncondition: s", {"CommandLine": "abc"}, False),
    # minute, hour, day, week, month, year: "can only be applied to date values. it extracts a
    # numeric value from a date." (minute 0-59, hour 0-23, day 1-31, week, month 1-12, year);
    # 2024-03-05 is a Tuesday of week 10 (Monday-first weeks, strftime %W)
    *[(m, f"s:\n  UtcTime|{m}: {v}\ncondition: s", {"UtcTime": "2024-03-05 14:07:09.123"}, hit)
      for m, v, hit in (("minute", 7, True), ("minute", 8, False), ("hour", 14, True),
                        ("hour", 2, False), ("day", 5, True), ("day", 3, False),
                        ("week", 10, True), ("week", 9, False), ("month", 3, True),
                        ("month", 5, False), ("year", 2024, True), ("year", 2023, False))],
    ("hour|gte", "s:\n  UtcTime|hour|gte: 14\ncondition: s", {"UtcTime": "2024-03-05T14:00:00Z"},
     True),
    ("hour|lt", "s:\n  UtcTime|hour|lt: 14\ncondition: s", {"UtcTime": "2024-03-05 14:00:00"},
     False),
    ("month|neq", "s:\n  UtcTime|month|neq: 3\ncondition: s", {"UtcTime": "2024-04-01 00:00:00"},
     True),
    ("hour", "s:\n  UtcTime|hour: 14\ncondition: s", {"UtcTime": "yesterday at 14:00"}, False),
    ("day", "s:\n  UtcTime|day: 30\ncondition: s", {"UtcTime": "2023-02-30 00:00:00"}, False),
    # expand: "Modifier for expansion of placeholders in values." (values: tests/test_placeholders)
    ("expand", "s:\n  User|expand: '%Admins%'\ncondition: s", {"User": "adm_x"}, True),
    ("expand", "s:\n  User|expand: '%Admins%'\ncondition: s", {"User": "ROOT"}, True),
    ("expand", "s:\n  User|expand: '%Admins%'\ncondition: s", {"User": "bob"}, False),
]


@pytest.mark.parametrize("modifier,detection,event,expected", SPEC,
                         ids=[f"{i:02d}-{m}" for i, (m, *_) in enumerate(SPEC)])
def test_modifier_as_the_specification_words_it(modifier, detection, event, expected,
                                               make_matcher):
    rules = compiled(detection)
    assert bool(make_matcher(rules).match(ProcessEvent(event))) is expected


def test_every_modifier_of_the_specification_has_a_row():
    spec_modifiers = {"contains", "startswith", "endswith", "exists", "cased", "neq", "lt", "lte",
                      "gt", "gte", "fieldref", "expand", "utf16le", "utf16be", "utf16", "wide",
                      "base64", "base64offset", "windash", "cidr", "re", "all",
                      "minute", "hour", "day", "week", "month", "year"}
    covered = {part for m, *_ in SPEC for part in m.split("|")}
    assert spec_modifiers <= covered, spec_modifiers - covered
    for m in spec_modifiers:     # and each has a row that matches and one that does not
        verdicts = {e for mod, _, _, e in SPEC if m in mod.split("|")}
        assert verdicts == {True, False} or m in ("wide", "utf16", "utf16be",
                                                  "base64offset", "all"), m


@pytest.mark.parametrize("detection,why", [
    # "Single item values are not allowed to have an `all` modifier"
    ("s:\n  CommandLine|contains|all: ' -a'\ncondition: s", "all modifier needs a list"),
    ("s:\n  CommandLine|contains|all:\n    - ' -a'\ncondition: s", "all modifier needs a list"),
    # a time part of no field (a keyword): there is no date to read
    ("s:\n  '|hour': 3\ncondition: s", "time-part modifiers need a field"),
])
def test_refused_with_the_reason_and_line(detection, why):
    res = load_sigma_text(HEAD + textwrap.indent(detection, "    "), "m.yml")
    assert not res.rules and why in res.rejected[0].reason
    assert res.rejected[0].line == 8


def test_validate_lists_the_unsupported_constructs_by_name(tmp_path, capsys):
    from sensor.cli import main
    (tmp_path / "t.yml").write_text(HEAD + "    s:\n        CommandLine|all: x\n    condition: s\n")
    (tmp_path / "c.yml").write_text("title: c\ncorrelation:\n    type: temporal\n    rules: [a, b]\n"
                                    "    timespan: 1m\n    condition: a and not b\n")
    assert main(["rules", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "unsupported constructs" in out
    assert "time modifiers" not in out             # evaluated (tests above)
    assert "1 x string conditions of temporal correlations (Sigma 2.2 draft)" in out
    assert "0 x rule collections" in out


# ---------------------------------------------------------------------------------
# The time modifiers against pySigma's SQLite backend, which evaluates them with SQLite's
# strftime(): the same dates, every part and comparison, both matchers.

def _dates():
    import datetime
    import random
    rnd = random.Random(2108)
    out = []
    for year in range(2019, 2028):           # year ends: weeks 0, 52 and 53 (%W)
        for day in range(-8, 9):
            d = datetime.date(year, 1, 1) + datetime.timedelta(days=day)
            t = (rnd.randrange(24), rnd.randrange(60), rnd.randrange(60), rnd.randrange(1000))
            out.append(f"{d} {t[0]:02d}:{t[1]:02d}:{t[2]:02d}.{t[3]:03d}")   # Sysmon's UtcTime
    for _ in range(60):
        d = datetime.date(2020, 1, 1) + datetime.timedelta(days=rnd.randrange(3000))
        h, m, s = rnd.randrange(24), rnd.randrange(60), rnd.randrange(60)
        out += [f"{d}T{h:02d}:{m:02d}:{s:02d}Z", f"{d} {h:02d}:{m:02d}", str(d)]
    # not dates: the same for both. (SQLite also reads a bare time "14:07" as 2000-01-01, moves
    # 2023-02-30 to March 2 and converts "+02:00" to UTC; the sensor reads none of these as a
    # date: docs/sigma.md, "Decisions")
    return out + ["", "yesterday", "2024-03-05x"]


TIME_THRESHOLDS = {"minute": (0, 7, 59), "hour": (0, 13, 23), "day": (1, 15, 31),
                   "week": (0, 1, 10, 52, 53), "month": (1, 6, 12), "year": (2019, 2024, 2027)}


def test_time_modifiers_agree_with_the_sqlite_backend():
    import sqlite3

    pytest.importorskip("sigma.backends.sqlite", reason="pysigma-backend-sqlite (test dependency)")
    from sigma.backends.sqlite import sqliteBackend
    from sigma.collection import SigmaCollection

    from sensor.detect import matcher as M

    dates = _dates()
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE logs (id INTEGER, UtcTime TEXT)")
    db.executemany("INSERT INTO logs VALUES (?, ?)", enumerate(dates))
    db.execute("INSERT INTO logs VALUES (?, NULL)", (len(dates),))     # no UtcTime at all
    events = [ProcessEvent({"UtcTime": d}) for d in dates] + [ProcessEvent({})]
    backend = sqliteBackend()
    checked = 0
    for part, values in TIME_THRESHOLDS.items():
        for op in ("", "|lt", "|lte", "|gt", "|gte", "|neq"):
            for v in values:
                det = f"s:\n  UtcTime|{part}{op}: {v}\ncondition: s"
                text = HEAD + textwrap.indent(det, "    ")
                (sql,) = backend.convert(SigmaCollection.from_yaml(text))
                want = {i for (i,) in db.execute(sql.replace("SELECT *", "SELECT id", 1))}
                rules = compiled(det)
                for engine in M.ENGINES:
                    m = M.create(rules, engine)
                    got = {i for i, e in enumerate(events) if m.match(e)}
                    assert got == want, (part, op, v, engine, sorted(got ^ want)[:5])
                checked += 1
    assert checked == 6 * sum(len(v) for v in TIME_THRESHOLDS.values())


def test_time_modifiers_compiled_and_reference_agree_on_any_value():
    # the compiled matcher hands timepart predicates to the reference's test (a rare operator):
    # the two agree on any value, in and/or/not with predicates the compiled matcher owns
    from hypothesis import given, settings, strategies as st

    from sensor.detect import matcher as M

    if "compiled" not in M.ENGINES:
        pytest.skip("the compiled matcher is not built (make build)")
    rules = []
    for part, values in TIME_THRESHOLDS.items():
        for op in ("", "|lt", "|gte", "|neq"):
            det = (f"t:\n  UtcTime|{part}{op}: {values[1]}\nc:\n  CommandLine|contains: evil\n"
                   f"condition: (t and c) or (not t and not c)")
            rules += compiled(det)
    ref, comp = M.create(rules, "reference"), M.create(rules, "compiled")
    digits = st.text("0123456789", min_size=1, max_size=4)
    date = st.builds(lambda y, mo, d, h, mi, sep, tail: f"{y}-{mo}-{d}{sep}{h}:{mi}{tail}",
                     digits, digits, digits, digits, digits, st.sampled_from([" ", "T", "", "x"]),
                     st.sampled_from(["", ":00", ":00.123", "Z", "+02:00", ":0"]))
    value = st.one_of(date, st.text(max_size=30), st.integers(-10, 3000), st.none())

    @given(value, st.one_of(st.none(), st.sampled_from(["evil", "EVIL x", "good"])))
    @settings(max_examples=400, deadline=None)
    def same(when, cmd):
        ev = {k: v for k, v in (("UtcTime", when), ("CommandLine", cmd)) if v is not None}
        assert ref.match(ProcessEvent(ev)) == comp.match(ProcessEvent(ev)), ev
    same()
