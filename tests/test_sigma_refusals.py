"""How a Sigma rule file is refused: the line that is wrong (docs/sigma.md, "Errors": every
rejection is ``file:line: reason``) for each way a file can be refused, and the bounds on a rule
file at their edge.

The lines here are counted by hand from the YAML text of each test, not taken from the loader.
"""
from __future__ import annotations

import os
import threading

import pytest

from sensor.detect.sigma import load_sigma_file, load_sigma_text

# The bounds as docs/sigma.md states them ("a file over 1 MiB", "more than 10,000 detection
# values"), written out: a test that read the module's constants would move with them.
MAX_RULE_FILE_BYTES = 1024 * 1024
MAX_RULE_VALUES = 10_000
MAX_CONDITION_CHARS = 65_536    # "more than 65,536 characters of conditions in one file"
MAX_CONDITION_DEPTH = 128       # "nested more than 128 levels deep as written"

HEAD = """\
title: Test Rule
id: 5f2c7d9a-0000-4000-8000-0000000000aa
logsource:
    category: process_creation
    product: windows
"""


def _rejected(text: str, path: str = "t.yml"):
    res = load_sigma_text(text, path)
    assert not res.rules, res.rules
    assert len(res.rejected) == 1, res.rejected
    return res.rejected[0]


# -- a regex that needs backtracking: the line of that regex, not of the rule's first |re ------

@pytest.mark.parametrize("value", [
    r"(a)\1x",                 # plain scalar: the pattern as written
    r"'(?=it''s)x'",           # single-quoted: a quote is doubled in the text
    r'"(\\w+)\\1"',            # double-quoted: a backslash is doubled in the text
])
def test_a_backtracking_regex_is_refused_at_its_own_line(value):
    text = HEAD + (
        "description: matches (a)\\1x and (?=it's)x and (\\w+)\\1 in prose\n"  # 6: not detection
        "detection:\n"                                                         # 7
        "    first:\n"                                                         # 8
        "        CommandLine|re: 'plain[0-9]+'\n"                              # 9
        "    second:\n"                                                        # 10
        f"        Image|re: {value}\n"                                          # 11
        "    condition: first and second\n")
    bad = _rejected(text)
    assert bad.line == 11, bad
    assert "backtracking" in bad.reason


def test_a_backtracking_regex_written_in_a_form_not_found_is_placed_at_the_first_re_line():
    # A block scalar folds the pattern, so its text is nowhere in the file as written: the
    # rejection still names a line inside the detection, the first |re key.
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image|endswith: x.exe\n"       # 8
        "        CommandLine|re: >-\n"          # 9
        "            (a)\n"                     # 10
        "            \\1\n"                     # 11
        "    condition: sel\n")
    bad = _rejected(text)
    assert bad.line == 9, bad


def test_a_backtracking_regex_in_a_one_line_rule_is_refused_at_line_1():
    # Hostile layout: the whole rule is one flow mapping whose first key is the pattern's own
    # text, so that text opens the file (offset 0), `detection` is quoted and a `#` stands
    # before the |re key. Line 1 holds everything, and the rejection must say so.
    text = ('{"#(a)\\\\1x": 1, "detection": {sel: {"CommandLine|re": "{\\"#(a)\\\\1x"}, '
            'condition: sel}, title: t, logsource: {category: process_creation, product: windows}}\n')
    bad = _rejected(text)
    assert "backreference" in bad.reason and bad.line == 1, bad


# -- YAML that does not parse: the line where the broken construct starts, both lines in the text

def test_a_yaml_error_names_where_the_construct_starts_and_where_parsing_stopped():
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image|endswith: '\\cmd.exe\n"  # 8: the quote is never closed
        "    condition: sel\n"                  # 9
        "level: low\n")                         # 10; the stream ends on line 11
    bad = _rejected(text)
    assert bad.line == 8
    assert "while scanning a quoted scalar (line 8)" in bad.reason
    assert "found unexpected end of stream (line 11)" in bad.reason


def test_a_yaml_error_without_a_context_names_the_problem_line():
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image: a\n"                    # 8
        "        CommandLine: a: b\n"           # 9: a second ': ' in a plain scalar
        "    condition: sel\n")
    bad = _rejected(text)
    assert bad.reason.startswith("YAML syntax error: mapping values are not allowed")
    assert bad.reason.endswith("(line 9)") and bad.reason.count("(line") == 1
    assert bad.line == 9, bad


def test_a_duplicate_key_is_refused_at_its_second_occurrence():
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        'Image': a\n"                  # 8
        "        Image: b\n"                    # 9: the same key again (quoted the first time)
        "    condition: sel\n")
    bad = _rejected(text)
    assert "Duplicate key 'Image'" in bad.reason
    assert bad.line == 9, bad


def test_a_blank_first_line_counts_in_the_line_of_a_duplicate_key_and_a_backtracking_regex():
    dup = "\n" + HEAD + (                       # 1: blank; HEAD 2-6
        "detection:\n"                          # 7
        "    sel:\n"                            # 8
        "        'Image': a\n"                  # 9
        "        Image: b\n"                    # 10: the same key again
        "    condition: sel\n")
    bad = _rejected(dup)
    assert "Duplicate key 'Image'" in bad.reason and bad.line == 10, bad
    slow = "\n" + HEAD + (
        "detection:\n"                          # 7
        "    sel:\n"                            # 8
        "        Image: a\n"                    # 9
        "        CommandLine|re: '(a)\\1x'\n"  # 10: a backreference
        "    condition: sel\n")
    bad = _rejected(slow)
    assert "backtracking" in bad.reason and bad.line == 10, bad


def test_a_duplicate_top_level_key_is_refused_at_its_second_occurrence():
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image: a\n"                    # 8
        "    condition: sel\n"                  # 9
        "title: Again\n")                       # 10
    bad = _rejected(text)
    assert "Duplicate key 'title'" in bad.reason
    assert bad.line == 10, bad


def test_a_duplicate_key_inside_a_flow_mapping_is_refused_without_a_crash():
    # The loader reports this duplicate without a mark, and the key stands as a block key
    # only once (line 8): the second occurrence cannot be placed, and the file is still
    # refused with the key named, never an exception.
    text = HEAD + (
        "detection:\n"                                  # 6
        "    sel:\n"                                    # 7
        "        Image: a\n"                            # 8
        "    other: {Image: b, Image: c}\n"             # 9: the duplicate, flow style
        "    condition: sel or other\n")
    bad = _rejected(text)
    assert "Duplicate key 'Image'" in bad.reason, bad


def test_a_control_character_is_refused_as_yaml_without_a_crash():
    # YAML allows no C0 control characters but tab and line breaks; the loader's error for
    # one carries no mark
    text = HEAD + "detection:\n    sel:\n        Image: \"a\x07\"\n    condition: sel\n"
    bad = _rejected(text)
    assert bad.reason.startswith("YAML syntax error: unacceptable character #x0007"), bad


def test_a_rule_without_a_detection_is_refused_as_a_rule():
    # neither detection nor correlation nor filter: a rule that lacks its detection, not a
    # meta rule
    bad = _rejected(HEAD + "level: low\n")
    assert bad.reason == "SigmaDetectionError: Sigma rule must have a detection definitions", bad


def test_a_bad_document_never_stops_the_documents_after_it():
    text = (
        "- not a mapping\n"                                             # 1
        "---\n"
        + HEAD.replace("0000000000aa", "0000000000b1") +                # 3-7
        "detection:\n    sel:\n        Image|containz: a\n    condition: sel\n"   # 10: bad
        "---\n"
        "title: c\n"                                                    # 13: a correlation
        "correlation: {type: event_count, rules: [x], timespan: 1m, condition: {gte: 2}}\n"
        "---\n"
        + HEAD.replace("0000000000aa", "0000000000b3") +                # 16-20
        "detection:\n    kw:\n        '|fieldref': Image\n    condition: kw\n"  # 21: fails converting
        "---\n"
        + HEAD.replace("0000000000aa", "0000000000b2") +
        "detection:\n    sel:\n        Image: good.exe\n    condition: sel\n")
    res = load_sigma_text(text, "multi.yml")
    assert [r.id for r in res.rules] == ["5f2c7d9a-0000-4000-8000-0000000000b2"], res
    assert len(res.correlations) == 1
    assert [p.reason.split(":")[0] for p in res.rejected] == [
        "not a Sigma rule (the document is not a mapping)", "SigmaModifierError",
        "fieldref needs a field"], res.rejected
    assert [p.line for p in res.rejected[:2]] == [1, 10], res.rejected


def test_a_conversion_error_keeps_its_own_reason():
    text = HEAD + "detection:\n    sel:\n        Image: a\n    kw:\n        '|fieldref': Image\n    condition: sel and kw\n"
    bad = _rejected(text)
    assert bad.reason == "fieldref needs a field" and bad.line is not None, bad


@pytest.mark.parametrize("before,line", [(b"", 6), (b"\n", 7)])
def test_a_file_that_is_not_utf8_is_refused_at_the_line_of_the_bad_byte(tmp_path, before, line):
    f = tmp_path / "latin1.yml"
    f.write_bytes(before + HEAD.encode() + b"description: caf\xe9\n"        # 6 (+1)
                  b"detection:\n    sel:\n        Image: a\n    condition: sel\n")
    (bad,) = load_sigma_file(f).rejected
    assert bad.line == line and "not UTF-8" in bad.reason, bad


@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="needs Linux /proc")
def test_a_file_that_holds_more_than_its_size_says_is_still_bounded():
    # /proc files are regular files whose size reads 0: the bound holds on the bytes read,
    # not only on the size fstat gives (the same as a file that grows after the check)
    from sensor._files import read_regular as _read_bounded
    assert os.stat("/proc/self/status").st_size == 0
    assert _read_bounded("/proc/self/status", 10) is None
    assert len(_read_bounded("/proc/self/status", 1 << 20)) > 10


def test_an_error_that_quotes_a_field_points_at_that_fields_line():
    # pySigma quotes the bad value in its message; a message that names a field (here because
    # the value itself says so) is placed at that field's line, and loading never raises.
    text = HEAD + (
        "detection:\n"                                                  # 6
        "    sel:\n"                                                    # 7
        "        Image: a\n"                                            # 8
        "    other:\n"                                                  # 9
        "        SourceIp|cidr: \"field 'SourceIp' 10.0.0.0/33\"\n"     # 10
        "    condition: sel and other\n")
    bad = _rejected(text)
    assert "CIDR" in bad.reason and bad.line == 10, bad


# -- pySigma's errors carry no line: the loader places them ---------------------------------

TWO_RES = (
    "detection:\n"                                 # +1
    "    first:\n"                                 # +2
    "        CommandLine|re: 'fine[0-9]'\n"        # +3
    "    second:\n"                                # +4
    "        Image|re: '(unclosed'\n"              # +5: the invalid one
    "    condition: first and second\n")           # +6


@pytest.mark.parametrize("before,line", [
    (HEAD, 10),                      # the usual order
    ("\n" + HEAD, 11),               # a blank first line counts
    ("", 5),                         # detection first: the file starts with `detection:`
])
def test_an_invalid_regex_is_refused_at_its_own_line_not_the_first_re(before, line):
    text = before + TWO_RES + ("" if before else HEAD)
    bad = _rejected(text)
    assert "Regular expression '(unclosed' is invalid" in bad.reason
    assert bad.line == line, bad


@pytest.mark.parametrize("pattern", ["Selector(", "x( not defined in detections"])
def test_an_invalid_regex_quoting_condition_words_is_placed_at_its_own_line(pattern):
    # pySigma quotes the rule's own text in its message: words the condition's errors use,
    # inside a pattern, must not send the error to the condition line
    text = HEAD + (
        "detection:\n"                              # 6
        "    sel:\n"                                # 7
        f"        Image|re: '{pattern}'\n"          # 8
        "    condition: sel\n")                     # 9
    bad = _rejected(text)
    assert "is invalid" in bad.reason and bad.line == 8, bad


def test_a_condition_naming_a_missing_detection_is_refused_at_the_condition_line():
    text = HEAD + (
        "detection:\n"                              # 6
        "    sel:\n"                                # 7
        "        Image: x\n"                        # 8
        "    condition: sel and Selector\n")        # 9
    bad = _rejected(text)
    assert bad.line == 9, bad


def test_an_invalid_regex_written_with_an_escape_is_placed_at_the_re_line():
    # '(it''s' is the pattern (it's: its text as written is not in the file
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image|re: '(it''s'\n"          # 8
        "    condition: sel\n"                  # 9
        "level: low\n")                         # 10
    bad = _rejected(text)
    assert "is invalid" in bad.reason and bad.line == 8, bad


def test_an_invalid_regex_in_a_rule_with_quoted_keys_is_placed_at_the_re_line():
    # `"detection":` (JSON-style keys): there is no `detection:` to search from. The file
    # ends in a comment whose last character is the pattern itself, and no newline.
    text = ("title: t\n"                                                   # 1
            "logsource: {category: process_creation, product: windows}\n"  # 2
            '"detection":\n'                                               # 3
            "    sel:\n"                                                   # 4
            "        Image|re: '('\n"                                      # 5
            "    condition: sel\n"                                         # 6
            "# (")                                                         # 7
    bad = _rejected(text)
    assert "Regular expression '(' is invalid" in bad.reason and bad.line == 5, bad


def test_an_invalid_regex_in_a_flow_style_detection_is_placed_at_its_line():
    # Hostile layout: the invalid pattern is the text the file starts with, its field name
    # holds a `#`, and the next line has another |re key. The pattern's value is on line 1.
    text = ('detection: {bad: {"a#(|re": "detection: {bad: {\\"a#("},\n'   # 1
            "  good: {b|re: x}, condition: bad and good}\n"                  # 2
            "title: t\n"
            "logsource: {category: process_creation, product: windows}\n")
    bad = _rejected(text)
    assert "is invalid" in bad.reason and bad.line == 1, bad


def test_a_regex_modifier_after_another_modifier_is_refused_at_its_line():
    # pySigma: "Regular expression modifier only applicable to unmodified values"
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image: a\n"                    # 8
        "    other:\n"                          # 9
        "        CommandLine|contains|re: x\n"  # 10
        "    condition: sel and other\n")
    bad = _rejected(text)
    assert "only applicable to unmodified values" in bad.reason and bad.line == 10, bad


@pytest.mark.parametrize("before,line", [(HEAD, 9), ("\n" + HEAD, 10)])
def test_a_condition_that_does_not_parse_is_refused_at_the_condition(before, line):
    text = before + (
        "detection:\n"                          # +1
        "    sel:\n"                            # +2
        "        Image: a\n"                    # +3
        "    condition: sel and (\n")           # +4
    bad = _rejected(text)
    assert bad.reason.startswith("SigmaConditionError") and bad.line == line, bad
    # pySigma's own text of this error ends "in <the file's absolute path>"; the rejection
    # (printed as file:line: reason) leaves that out
    assert "t.yml" not in bad.reason, bad


BODY = "detection:\n    sel:\n        Image: a\n    condition: sel\n"
ID = "id: 5f2c7d9a-0000-4000-8000-0000000000ab\n"


@pytest.mark.parametrize("text,why,line", [
    ("title: t\n" + ID + "logsource: {}\n" + BODY, "log source can't be empty", 3),
    ("title: t\n" + ID + "logsource: process_creation\n" + BODY, "must be a valid YAML map", 3),
    ("title: t\n" + ID + BODY, "must have a log source", 1),     # no key: the rule's first line
])
def test_a_bad_logsource_is_refused_at_the_logsource(text, why, line):
    bad = _rejected(text)
    assert why in bad.reason and bad.line == line, bad


def test_the_files_own_path_never_moves_the_line():
    # pySigma's message names the file; a folder called "log source" must not make a value
    # error look like a logsource error
    text = HEAD + (
        "detection:\n"                                                  # 6
        "    sel:\n"                                                    # 7
        "        Image: a\n"                                            # 8
        "    other:\n"                                                  # 9
        "        SourceIp|cidr: \"field 'SourceIp' 10.0.0.0/33\"\n"     # 10
        "    condition: sel and other\n")
    res = load_sigma_text(text, os.path.join("rules", "log source", "t.yml"))
    (bad,) = res.rejected
    assert "CIDR" in bad.reason and bad.line == 10, bad


# -- the bounds on a rule file, at their edge -------------------------------------------------

def _padded(size: int) -> str:
    """A valid rule of exactly ``size`` characters (ASCII), its last line `level: high`."""
    body = HEAD + "detection:\n    sel:\n        Image: a\n    condition: sel\n"
    tail = "level: high"
    pad = size - len(body) - len(tail)
    lines = []
    while pad > 0:
        n = min(pad, 1000)
        lines.append("#" * (n - 1) + "\n" if n > 1 else "\n")
        pad -= n
    return body + "".join(lines) + tail


def test_a_rule_file_of_exactly_the_size_bound_loads_in_full(tmp_path):
    text = _padded(MAX_RULE_FILE_BYTES)
    assert len(text) == MAX_RULE_FILE_BYTES
    (rule,) = load_sigma_text(text, "edge.yml").rules
    assert rule.level == "high"
    f = tmp_path / "edge.yml"
    f.write_text(text, encoding="ascii")
    assert f.stat().st_size == MAX_RULE_FILE_BYTES
    res = load_sigma_file(f)
    assert not res.rejected and res.rules[0].level == "high"     # read whole, not cut short


def test_a_rule_file_one_byte_over_the_bound_is_refused(tmp_path):
    text = _padded(MAX_RULE_FILE_BYTES + 1)
    (bad,) = load_sigma_text(text, "over.yml").rejected
    assert "too large" in bad.reason
    f = tmp_path / "over.yml"
    f.write_text(text, encoding="ascii")
    (bad,) = load_sigma_file(f).rejected
    assert "too large" in bad.reason


def _values(n: int) -> str:
    """A rule whose detection holds exactly ``n`` scalar values: n - 1 list items and the
    condition string (every scalar under ``detection`` counts, as docs/sigma.md says)."""
    items = "".join(f"            - v{i}\n" for i in range(n - 1))
    return HEAD + "detection:\n    sel:\n        Image|contains:\n" + items + "    condition: sel\n"


def test_a_rule_of_exactly_the_value_bound_loads():
    (rule,) = load_sigma_text(_values(MAX_RULE_VALUES), "edge.yml").rules
    assert rule.id == "5f2c7d9a-0000-4000-8000-0000000000aa"


def _expanding(modifiers: str, values: list[str]) -> str:
    items = "".join(f"            - '{v}'\n" for v in values)
    return HEAD + f"detection:\n    sel:\n        CommandLine|{modifiers}:\n" + items + "    condition: sel\n"


# pySigma makes 5 values of each dash |windash expands (at most 3 per value) and 3 of each
# |base64offset value; the bound counts what pySigma would make, before it makes it (9,000
# values with three dashes each were 1,125,000 values, 100 s and 780 MB, before the refusal).
# The condition's text is one of the values counted, as for the plain bound above.
@pytest.mark.parametrize("modifiers,values", [
    ("windash|contains", [f" -a{i} /b -c" for i in range(79)]),     # 79 x 125 + the condition
    ("windash|contains", [f" -a{i} x-y" for i in range(1999)]),     # 1,999 x 5 + 1
    ("base64offset|contains", [f"v{i}" for i in range(3333)]),      # 9,999 + 1: the bound
])
def test_values_that_expand_to_the_bound_load(modifiers, values):
    (rule,) = load_sigma_text(_expanding(modifiers, values), "edge.yml").rules
    assert sum(len(p.values) for p in rule.predicates) <= MAX_RULE_VALUES


@pytest.mark.parametrize("modifiers,values", [
    ("windash|contains", [f" -a{i} /b -c" for i in range(80)]),     # 10,000 + 1
    ("windash|contains", [f" -a{i} /b -c" for i in range(9000)]),   # 1,125,000 + 1
    ("windash|contains", [f" -a{i} x-y" for i in range(2000)]),     # 10,000 + 1 ("x-y": no)
    ("base64offset|contains", [f"v{i}" for i in range(3334)]),      # 10,002 + 1
])
def test_values_that_expand_past_the_bound_are_refused_before_they_expand(modifiers, values):
    bad = _rejected(_expanding(modifiers, values))
    assert "too many detection values" in bad.reason and bad.line == 6, bad


def test_a_rule_one_value_over_the_bound_is_refused_at_its_detection():
    bad = _rejected(_values(MAX_RULE_VALUES + 1))
    assert "too many detection values" in bad.reason and bad.line == 6, bad


@pytest.mark.parametrize("key", [
    "CommandLine|contains",     # dashes without |windash: each value is one value
    "windash|contains",         # a field named like a modifier: the modifiers follow its name
    "base64offset|contains",
])
def test_only_the_modifiers_after_the_field_name_multiply_the_count(key):
    # 80 values with three dashes each: 81 values as written, 10,001 if each were expanded
    values = "".join(f"            - ' -a{i} /b -c'\n" for i in range(80))
    text = HEAD + f"detection:\n    sel:\n        {key}:\n" + values + "    condition: sel\n"
    (rule,) = load_sigma_text(text, "dashes.yml").rules
    assert len(rule.predicates[0].values) == 80


# A value with more dashes than |windash expands (three) is pySigma's own refusal: it makes no
# values of it, so the value counts as written, once, not as 5 ** 4 variants.
@pytest.mark.parametrize("count", [17, 5000])
def test_a_value_with_more_dashes_than_windash_expands_is_pysigmas_refusal(count):
    bad = _rejected(_expanding("windash|contains", [f" -a{i} /b -c -d" for i in range(count)]))
    assert bad.reason.startswith("SigmaModifiedError: windash modifier expands at most three "
                                 "dash occurrences in one value"), bad
    assert 6 <= bad.line <= 9 + count, bad      # within the detection


def test_values_with_more_dashes_than_windash_expands_still_count_toward_the_bound():
    values = [f" -a{i} /b -c -d" for i in range(MAX_RULE_VALUES)]      # + the condition
    bad = _rejected(_expanding("windash|contains", values))
    assert "too many detection values" in bad.reason and bad.line == 6, bad


def _conditioned(cond: str) -> str:
    return HEAD + "detection:\n    sel:\n        Image: a.exe\n    condition: " + cond + "\n"   # line 9


def _ors(chars: int) -> str:
    """A condition of exactly ``chars`` characters: ``sel or sel or ... sel`` padded with spaces."""
    n = (chars - 3) // 7 + 1
    cond = " or ".join(["sel"] * n)
    return cond[:-3] + " " * (chars - len(cond)) + "sel" if len(cond) < chars else cond


@pytest.mark.parametrize("cond", [
    "(" * MAX_CONDITION_DEPTH + "sel" + ")" * MAX_CONDITION_DEPTH,
    # a chain of one operator is one group in the IR, however deep it is written
    "".join("sel and (" for _ in range(MAX_CONDITION_DEPTH)) + "sel" + ")" * MAX_CONDITION_DEPTH,
    "(sel and not (not sel)) or " * 30 + "sel",      # shallow, however long
    # a closed group and a not that has its operand are no level any more
    "(sel) or " * 200 + "sel",
    "not sel or " * 200 + "sel",
    "not (sel) or " * 200 + "sel",
])
def test_a_condition_nested_up_to_the_bound_loads(cond):
    (rule,) = load_sigma_text(_conditioned(cond), "deep.yml").rules
    assert rule.id == "5f2c7d9a-0000-4000-8000-0000000000aa"


@pytest.mark.parametrize("cond", [
    "(" * (MAX_CONDITION_DEPTH + 1) + "sel" + ")" * (MAX_CONDITION_DEPTH + 1),
    "not " * (MAX_CONDITION_DEPTH + 1) + "sel",
    "sel and " + "not (" * 64 + "not sel" + ")" * 64,
    "".join("sel and (" for _ in range(200)) + "sel" + ")" * 200,   # before: RecursionError
    "not " * 3000 + "sel",                                            # before: RecursionError
    # what comes before a group neither lowers nor raises its depth
    "(sel) or " + "(" * (MAX_CONDITION_DEPTH + 1) + "sel" + ")" * (MAX_CONDITION_DEPTH + 1),
    "not sel and " + "(" * (MAX_CONDITION_DEPTH + 1) + "sel" + ")" * (MAX_CONDITION_DEPTH + 1),
    "not (sel) and " + "(" * (MAX_CONDITION_DEPTH + 1) + "sel" + ")" * (MAX_CONDITION_DEPTH + 1),
    # a stray closing parenthesis closes no level
    "sel) or " + "(" * (MAX_CONDITION_DEPTH + 1) + "sel" + ")" * (MAX_CONDITION_DEPTH + 1),
])
def test_a_condition_nested_deeper_than_the_bound_is_refused_at_its_line(cond):
    bad = _rejected(_conditioned(cond))
    assert bad.reason == ("condition nested more than 128 levels deep as written (parentheses "
                          "and not): simplify it") and bad.line == 9, bad


@pytest.mark.parametrize("cond", ["sel)", "sel" + ")" * (MAX_CONDITION_DEPTH + 1)])
def test_stray_closing_parentheses_are_a_condition_error_not_a_nesting(cond):
    bad = _rejected(_conditioned(cond))
    assert bad.reason.startswith("SigmaConditionError: ") and bad.line == 9, bad


def test_a_deep_condition_after_a_document_that_is_not_a_mapping_still_refuses_the_file():
    text = (
        "just a scalar\n"                       # 1: a document that is no rule
        "---\n"                                 # 2
        + _conditioned("(" * (MAX_CONDITION_DEPTH + 1) + "sel"
                       + ")" * (MAX_CONDITION_DEPTH + 1)))    # 3-11: the condition at 11
    bad = _rejected(text)
    assert bad.reason.startswith("condition nested more than 128 levels deep") and bad.line == 11, bad


@pytest.mark.parametrize("make,line,reason", [
    (lambda: _conditioned("(" * (MAX_CONDITION_DEPTH + 1) + "sel" + ")" * (MAX_CONDITION_DEPTH + 1)),
     10, "condition nested more than 128 levels deep"),
    (lambda: _values(MAX_RULE_VALUES + 1), 7, "too many detection values"),
])
def test_a_file_refused_whole_that_starts_with_a_blank_line_is_refused_at_the_right_line(
        make, line, reason):
    bad = _rejected("\n" + make())       # the file's line 1 is empty
    assert bad.reason.startswith(reason) and bad.line == line, bad


def test_a_condition_within_the_written_bound_still_meets_the_ir_bound():
    # 100 nots are within what the parser is given, and deeper than the IR takes
    bad = _rejected(_conditioned("not " * 100 + "sel"))
    assert bad.reason == "condition is nested more than 64 levels deep" and bad.line, bad


def test_conditions_of_exactly_the_length_bound_load_and_one_more_character_is_refused():
    cond = _ors(MAX_CONDITION_CHARS)
    assert len(cond) == MAX_CONDITION_CHARS
    (rule,) = load_sigma_text(_conditioned(cond), "long.yml").rules
    assert rule.id == "5f2c7d9a-0000-4000-8000-0000000000aa"
    bad = _rejected(_conditioned(_ors(MAX_CONDITION_CHARS + 1)))
    assert bad.reason == ("conditions too long (more than 65,536 characters in one file): "
                          "split the rule") and bad.line == 9, bad


def test_the_condition_length_bound_counts_every_document_of_a_file():
    # two documents of 40,000 characters each: each alone is fine, the file is not
    doc = _conditioned(_ors(40_000))
    bad = _rejected(doc + "---\n" + doc.replace("0000000000aa", "0000000000ab"))
    assert "conditions too long" in bad.reason, bad


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo (POSIX)")
def test_a_rule_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    # No writer ever opens the FIFO, so a blocking open would wait for good: the load runs in a
    # thread, and the join timeout only guards that hang.
    fifo = tmp_path / "rule.yml"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.append(load_sigma_file(fifo)), daemon=True)
    t.start()
    t.join(60)
    try:
        assert not t.is_alive(), "load_sigma_file waited on a FIFO"
    finally:
        if t.is_alive():      # let the stuck open() return, so the thread ends
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(60)
    (bad,) = got[0].rejected
    assert bad.reason == "cannot read: not a regular file" and not got[0].rules, bad


# -- the specification's checks pySigma leaves out --------------------------------------------

def test_a_time_part_modifier_on_a_keyword_is_refused_at_its_line():
    # A time part (minute ... year) is a part of a field's date: a keyword has no field.
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image: a.exe\n"                # 8
        "    kw:\n"                             # 9
        "        '|hour': 3\n"                  # 10: a keyword (no field name) with |hour
        "    condition: sel and kw\n")
    bad = _rejected(text)
    assert bad.reason == "time-part modifiers need a field (|hour on a keyword)", bad
    assert bad.line == 10, bad


def test_two_time_part_modifiers_on_a_keyword_name_the_first_at_its_line():
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        UtcTime|minute: 5\n"           # 8: |minute on a field is fine
        "    kw:\n"                             # 9
        "        '|hour|minute': 3\n"           # 10: the keyword
        "    condition: sel and kw\n")
    bad = _rejected(text)
    assert bad.reason == "time-part modifiers need a field (|hour on a keyword)", bad
    assert bad.line == 10, bad


def test_a_time_part_modifier_on_a_field_loads():
    text = HEAD + "detection:\n    sel:\n        UtcTime|hour: 3\n    condition: sel\n"
    res = load_sigma_text(text, "t.yml")
    assert not res.rejected and len(res.rules) == 1, res.rejected


# -- each problem at its own line: control characters, later documents, flow documents ---------

RULE = HEAD + "detection:\n    sel:\n        Image: a.exe\n    condition: sel\n"   # 9 lines


@pytest.mark.parametrize("comment", ["", "é ü ß", "日本語"])
def test_a_control_character_is_refused_at_its_own_line(comment):
    # The YAML reader reports a byte offset, not a line; text before it that is not ASCII
    # (more bytes than characters) must not move the line.
    text = "# " + comment + "\n" + HEAD + (  # 1, then the head at 2-6
        "detection:\n"                          # 7
        "    sel:\n"                            # 8
        "        Image: \"a\x07\"\n"            # 9: the control character
        "    condition: sel\n")
    bad = _rejected(text)
    assert bad.line == 9, bad
    assert bad.reason == ("YAML syntax error: unacceptable character #x0007: "
                          "control characters are not allowed"), bad


def test_a_control_character_after_a_blank_first_line_is_refused_at_its_own_line():
    text = "\n" + HEAD + (                      # 1: empty, then the head at 2-6
        "detection:\n"                          # 7
        "    sel:\n"                            # 8
        "        Image: \"a\x07\"\n"            # 9: the control character
        "    condition: sel\n")
    bad = _rejected(text)
    assert bad.line == 9 and "unacceptable character #x0007" in bad.reason, bad


_NOT_ASCII_ABOVE = "\n" + "# 日本語 é ü ß\n" * 3 + "title: \"a\x07\"\n"   # the character on line 5


def _pure_reader_error(text):
    import yaml
    with pytest.raises(yaml.reader.ReaderError) as err:
        yaml.load(text, Loader=yaml.SafeLoader)     # PyYAML's reader in Python
    return err.value


def test_the_line_of_a_character_error_from_the_python_yaml_reader_counts_characters():
    # That reader gives a character offset where libyaml gives a byte offset (sigma._reader_line)
    from sensor.detect.sigma import _reader_line
    import yaml

    exc = _pure_reader_error(_NOT_ASCII_ABOVE)
    assert _reader_line(_NOT_ASCII_ABOVE, exc, yaml.SafeLoader) == 5


def test_the_line_of_a_character_error_without_libyaml(monkeypatch):
    # PyYAML built without libyaml has no yaml.cyaml: the reader is the Python one
    import sys

    import yaml
    from sensor.detect.sigma import _reader_line

    exc = _pure_reader_error(_NOT_ASCII_ABOVE)
    monkeypatch.setitem(sys.modules, "yaml.cyaml", None)     # its import fails
    assert _reader_line(_NOT_ASCII_ABOVE, exc, yaml.SafeLoader) == 5


def test_the_checks_before_conversion_place_a_problem_in_a_whole_files_text():
    # prepare_rule takes the text the rule was read from, a file's or one document's
    import yaml
    from sigma.rule import SigmaRule

    from sensor.detect.ir import RuleError
    from sensor.detect.sigma import prepare_rule

    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        UtcTime|hour|minute: 3\n"      # 8: two parts
        "    condition: sel\n")
    srule = SigmaRule.from_dict(yaml.safe_load(text))
    with pytest.raises(RuleError) as err:
        prepare_rule(srule, None, text)
    assert err.value.line == 8, err.value
    assert err.value.message.startswith("two time-part modifiers on one value (|hour|minute)")


def test_a_rule_without_a_detection_is_refused_at_its_documents_first_line():
    text = (
        "# a comment\n"                         # 1
        "\n"                                    # 2
        + HEAD +                                # 3-7: the document starts at its title
        "level: low\n")
    bad = _rejected(text)
    assert bad.line == 3, bad
    assert bad.reason == "SigmaDetectionError: Sigma rule must have a detection definitions"


def test_each_problem_of_a_later_document_is_placed_in_that_document():
    text = (
        RULE.replace("Image: a.exe", "Image|re: 'x+'")      # 1-9: fine; |re at 8, condition 9
        + "---\n"                                           # 10
        + "- not a mapping\n"                               # 11
        + "---\n"                                           # 12
        + HEAD.replace("0000000000aa", "0000000000c2")      # 13-17: no detection
        + "level: low\n"                                    # 18
        + "---\n"                                           # 19
        + HEAD.replace("0000000000aa", "0000000000c3")      # 20-24
        + "detection:\n    kw:\n        '|fieldref': Image\n    condition: kw\n"  # 25: conversion
        + "---\n"                                           # 29
        + HEAD.replace("0000000000aa", "0000000000c4")      # 30-34
        + "detection:\n    sel:\n        Image|re: '(x'\n    condition: sel\n"    # 37: invalid re
        + "---\n"                                           # 39
        + HEAD.replace("0000000000aa", "0000000000c5")      # 40-44
        + "detection:\n    sel:\n        Image: a\n    condition: sel and nope\n"  # 48
        + "---\n"                                           # 49
        + HEAD.replace("0000000000aa", "0000000000c6").replace("process_creation", "file_event")
        # 50-54: the logsource at 52
        + "detection:\n    sel:\n        Image: a\n    condition: sel\n")
    res = load_sigma_text(text, "multi.yml")
    assert [r.id for r in res.rules] == ["5f2c7d9a-0000-4000-8000-0000000000aa"], res
    got = [(p.line, p.reason.split(":")[0]) for p in res.rejected]
    assert got == [(11, "not a Sigma rule (the document is not a mapping)"),
                   (13, "SigmaDetectionError"),
                   (25, "fieldref needs a field"),
                   (37, "SigmaRegularExpressionError"),
                   (48, "SigmaConditionError")], got
    assert [p.line for p in res.not_applicable] == [52], res.not_applicable


def test_a_document_written_on_its_marker_line_is_placed_at_that_line():
    text = (
        RULE                                                                     # 1-9
        + "--- {title: c, correlation: {type: event_count, rules: [x], timespan: 1m, "
          "condition: {gte: 2}}}\n"                                              # 10
        + "--- {title: d, correlation: {type: nope, rules: [x], timespan: 1m, "
          "condition: {gte: 2}}}\n"                                              # 11
        + "--- {title: t, logsource: {category: process_creation}}\n"            # 12: no detection
        + "--- [a, list]\n"                                                      # 13
        + "--- {title: t, logsource: {category: process_creation}, "
          "detection: {sel: {Image|containz: a}, condition: sel}}\n")            # 14
    res = load_sigma_text(text, "flow.yml")
    assert [c.line for c in res.correlations] == [10], res.correlations
    got = [(p.line, p.reason.split(":")[0]) for p in res.rejected]
    assert got == [(11, "correlation type 'nope' is not one of event_count, value_count, "
                        "temporal, temporal_ordered, value_sum, value_avg, value_percentile, "
                        "value_median"),
                   (12, "SigmaDetectionError"),
                   (13, "not a Sigma rule (the document is not a mapping)"),
                   (14, "SigmaModifierError")], got


def test_two_time_part_modifiers_on_one_field_are_refused_at_their_line():
    # pySigma applies both and keeps only the last part (|hour|minute: 3 reads minute 3, the
    # hour silently lost): a value is one part of the date, so a chain is refused.
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        UtcTime|minute: 5\n"           # 8: one part: fine
        "    other:\n"                          # 9
        "        UtcTime|hour|minute: 3\n"      # 10: two parts
        "    condition: sel and other\n")
    bad = _rejected(text)
    assert bad.line == 10, bad
    assert bad.reason == ("two time-part modifiers on one value (|hour|minute): a value is "
                          "compared with one part of the date; write one item per part"), bad


def test_a_duplicate_key_in_a_later_document_is_placed_at_its_second_occurrence_there():
    # The key also appears once in the first document: its second occurrence in the file is
    # not the duplicate.
    text = (
        RULE                                    # 1-9: Image at 8
        + "---\n"                               # 10
        + HEAD.replace("0000000000aa", "0000000000d2")   # 11-15
        + "detection:\n"                        # 16
        "    sel:\n"                            # 17
        "        Image: a\n"                    # 18
        "        Image: b\n"                    # 19: the duplicate
        "    condition: sel\n")
    bad = _rejected(text)
    assert "Duplicate key 'Image'" in bad.reason and bad.line == 19, bad


def test_two_time_part_modifiers_in_a_flow_mapping_are_refused_at_their_line():
    text = HEAD + (
        "detection:\n"                                      # 6
        "    sel: {Image: a.exe}\n"                         # 7
        "    other: {UtcTime|day|month: 3}\n"               # 8
        "    condition: sel and other\n")
    bad = _rejected(text)
    assert bad.line == 8 and bad.reason.startswith(
        "two time-part modifiers on one value (|day|month)"), bad


def test_a_condition_list_is_bounded_past_an_item_that_is_not_a_string():
    # The bound applies to every condition of the list before pySigma's parser sees any:
    # an item that is not text (1) does not end the count for the items after it.
    deep = "(" * (MAX_CONDITION_DEPTH + 1) + "sel" + ")" * (MAX_CONDITION_DEPTH + 1)
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image: a\n"                    # 8
        "    condition:\n"                      # 9
        "        - 1\n"                         # 10
        f"        - '{deep}'\n")                # 11
    bad = _rejected(text)
    assert bad.reason.startswith("condition nested more than 128 levels deep"), bad
    assert bad.line == 9, bad


def test_a_document_opened_on_its_marker_line_is_placed_at_that_line():
    # `--- {` with the mapping going on below: the document's content starts on the marker
    # line (10), so a problem without a line of its own (no detection) is placed there.
    text = (RULE                                                        # 1-9
            + "--- {\n"                                                 # 10
            + "  title: t, logsource: {category: process_creation}}\n")  # 11
    (bad,) = load_sigma_text(text, "t.yml").rejected
    assert bad.line == 10, bad
    assert bad.reason == "SigmaDetectionError: Sigma rule must have a detection definitions"


@pytest.mark.parametrize("doc,line", [
    ("---\nlevel: low\naction: global\ntitle: x\n", 12),    # the action key, not the start (11)
    ("--- {level: low, action: global}\n", 10),             # no line of its own: the start
])
def test_a_rule_collection_is_refused_at_its_action(doc, line):
    res = load_sigma_text(RULE + doc, "t.yml")      # the rule of lines 1-9 comes first
    assert not res.rules
    (bad,) = res.rejected
    assert bad.line == line and bad.reason.startswith("Sigma rule collections"), bad


def test_two_time_part_modifiers_are_placed_at_their_item_not_at_an_earlier_single_one():
    # An earlier item with one of the two parts alone (line 8) is not the item refused.
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        UtcTime|hour: 5\n"             # 8: one part: fine
        "    # was UtcTime|hour|minute: 3\n"    # 9: a comment is not an item
        "    other:\n"                          # 10
        "        UtcTime|hour|minute: 3\n"      # 11: two parts
        "    condition: sel and other\n")
    bad = _rejected(text)
    assert bad.line == 11, bad
    assert bad.reason.startswith("two time-part modifiers on one value (|hour|minute)"), bad


@pytest.mark.parametrize("earlier", [
    "    sel: {UtcTime|hour: 5, Image|minute: 6}\n",       # two items, one part each
    "    sel:\n        CommandLine|contains: 'x|hour|minute'\n",   # the chain in a value
])
def test_two_time_part_modifiers_are_placed_at_the_key_that_chains_them(earlier):
    text = HEAD + "detection:\n" + earlier + (     # detection at 6, the earlier item(s) after
        "    other:\n"
        "        UtcTime|hour|minute: 3\n"         # the refused item
        "    condition: sel and other\n")
    bad = _rejected(text)
    assert bad.line == text.split("\n").index("        UtcTime|hour|minute: 3") + 1, bad
    assert bad.reason.startswith("two time-part modifiers on one value (|hour|minute)"), bad


@pytest.mark.parametrize("bad,what", [
    # a date YAML reads, not a real day
    ("date: 2024-02-30", "cannot read '2024-02-30' as a timestamp (day is out of range for month)"),
    ("modified: 2025-01-01 25:00:00", "cannot read '2025-01-01 25:00:00' as a timestamp"),
    ("level: !!int high", "cannot read 'high' as a int"),     # explicit tags YAML cannot apply
    ("level: !!int ''", "cannot read '' as a int"),
    ("status: !!bool maybe", "cannot read 'maybe' as a bool (line 6)"),
    ("author: !!timestamp someone", "cannot read 'someone' as a timestamp (line 6)"),
    ("references: !!float [1]", "expected a scalar node, but found sequence"),  # YAML's own
    ("tags: !!set [a]", "expected a mapping, found a sequence"),
    # the value is quoted when it has at most 60 characters (the docstring's bound)
    ("author: !!float " + "x" * 60, f"cannot read '{'x' * 60}' as a float"),
    ("author: !!float " + "x" * 61, "cannot read this float (line 6)"),
    ("author: !!float " + "x" * 100_000, "cannot read this float (line 6)"),
])
def test_a_value_yaml_cannot_read_is_refused_at_its_line(bad, what):
    text = HEAD + bad + "\n" + RULE[len(HEAD):]           # the bad value on line 6
    res = load_sigma_text(text, "t.yml")
    assert not res.rules
    (problem,) = res.rejected
    assert problem.line == 6 and problem.reason.startswith("YAML syntax error: "), problem
    assert what is None or what in problem.reason, problem
    assert len(problem.reason) < 300, problem     # bounded, whatever the value


@pytest.mark.parametrize("key", ["[a, b]", "{a: 1}"])
def test_a_list_or_mapping_as_a_key_is_refused_at_its_line(key):
    text = HEAD + (
        "detection:\n"                          # 6
        "    sel:\n"                            # 7
        "        Image: a.exe\n"                # 8
        f"        {key}: 1\n"                   # 9: the key
        "    condition: sel\n")
    (problem,) = load_sigma_text(text, "t.yml").rejected
    assert problem.line == 9, problem
    assert problem.reason.startswith("YAML syntax error: found unhashable key"), problem


# -- a rule attribute of the wrong kind: refused at its own key, not at detection: --------------

@pytest.mark.parametrize("attribute,value,words", [
    ("name", "[x]", "name must be a string"),
    ("title", "[a, b]", "title must be a string"),
    ("author", "{a: b}", "author must be a string"),
    ("level", "[high]", "level must be a string"),
    ("tags", "attack.t1047", "tags fields must be a list"),
    ("description", "[d]", "description must be a string"),
    ("id", "5", "identifier must be an UUID"),
    ("id", "[5f2c7d9a-0000-4000-8000-0000000000aa]", "identifier must be an UUID"),
    ("id", "not-a-uuid", "identifier must be an UUID"),          # text, yet no UUID: pySigma's words
])
def test_a_rule_attribute_of_the_wrong_kind_is_refused_at_its_key(attribute, value, words):
    # README: a malformed rule names its file and line; the line is the attribute's (an id that
    # is a number raised AttributeError inside pySigma, the others were placed at detection:)
    lines = [line for line in HEAD.splitlines() if not line.startswith(f"{attribute}:")]
    lines.insert(1, f"{attribute}: {value}")             # line 2, before logsource:
    text = "\n".join(lines) + "\ndetection:\n    sel:\n        Image|endswith: '\\x.exe'\n    condition: sel\n"
    p = _rejected(text)
    assert p.line == 2 and words in p.reason, (p.line, p.reason)


def test_a_rule_refused_for_its_id_leaves_the_next_document_of_its_file_to_load():
    text = HEAD.replace("id: 5f2c7d9a-0000-4000-8000-0000000000aa", "id: 7") + \
        "detection:\n    sel:\n        Image|endswith: '\\x.exe'\n    condition: sel\n---\n" + \
        HEAD + "detection:\n    sel:\n        Image|endswith: '\\y.exe'\n    condition: sel\n"
    res = load_sigma_text(text, "t.yml")
    assert [p.line for p in res.rejected] == [2] and len(res.rules) == 1


def test_a_bad_log_source_in_an_indented_document_is_refused_at_its_line():
    # YAML lets a whole document sit indented; the log source's error is still placed at its key
    text = "".join("  " + line + "\n" for line in (
        "title: Test Rule", "logsource: [a]", "detection:", "    sel:",
        "        Image|endswith: 'x.exe'", "    condition: sel"))
    p = _rejected(text)
    assert p.line == 2 and "logsource" in p.reason, (p.line, p.reason)
