"""How a Sigma rule file is refused: the line that is wrong (docs/sigma.md, "Errors": every
rejection is ``file:line: reason``) for each way a file can be refused, and the bounds on a rule
file at their edge.

The lines here are counted by hand from the YAML text of each test, not taken from the loader.
"""
from __future__ import annotations

import pytest

from sensor.detect.sigma import MAX_RULE_FILE_BYTES, load_sigma_file, load_sigma_text

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


def test_a_file_that_is_not_utf8_is_refused_at_the_line_of_the_bad_byte(tmp_path):
    f = tmp_path / "latin1.yml"
    f.write_bytes(HEAD.encode() + b"description: caf\xe9\n"        # 6
                  b"detection:\n    sel:\n        Image: a\n    condition: sel\n")
    (bad,) = load_sigma_file(f).rejected
    assert bad.line == 6 and "not UTF-8" in bad.reason, bad


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
