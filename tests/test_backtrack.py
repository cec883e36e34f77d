"""The budgeted backtracking engine (sensor/detect/backtrack.py) answers as Python's ``re``.

``BudgetRegex.search(text)`` promises ``re.search(source, text, flags) is not None`` for the
constructs it accepts, or BudgetExceeded once the step budget is used up.  Every case here is a
short regex on a short text, far inside the default budget of 200,000 steps, so the answer must
be Python's: each case is compared with ``re`` itself, never with a stored result.  The cases are
the places where a slip in the engine shows: flags inside and outside groups, anchors with and
without ``m``, ``\\b`` under ASCII, backreferences (case, length, position, the end of the text),
conditionals, look-behind, lazy repeats, and repeats nested in repeats whose bodies can match
nothing (sre stops such a repeat after an empty iteration).
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sensor.detect.backtrack import DEFAULT_BUDGET, BudgetExceeded, BudgetRegex
from sensor.detect.charsets import MAX_SCANS_PER_REGEX, RegexUnsupported

from .test_regex import _valid, python_says   # what re answers, and whether re takes the pattern


CASES = [
    # \b and \B: letters and digits of any script are word characters; no boundary and no
    # non-boundary in the empty text
    (r"\b", "", ["\u00e9", "-", ""]),
    (r"x\b", "", ["x\u00e9", "x-"]),
    (r"\B", "", ["", "a", "ab", "-"]),
    # \b under (?a): only ASCII letters, digits and "_" are word characters
    (r"(?a)\b", "", ["-", "_", "\u00e9", "a-", " _"]),
    (r"(?a)x\b", "", ["x-", "x_", "x\u00e9", "x"]),
    # a flag given for the whole regex holds inside a group too
    (r"(a)", "i", ["A"]),
    (r"(?i)x(a|b)", "", ["XB"]),
    (r"(a)", "s", ["A"]),
    # a backreference ignores case only under IGNORECASE, one character at a time (U+0130
    # lower-cases to "i" there, not to two characters)
    (r"(a)\1", "", ["aA", "aa"]),
    (r"(a)\1", "i", ["aA", "Aa"]),
    (r"(i)\1", "i", ["i\u0130", "I\u0130"]),
    (r"(\u0130)\1", "i", ["\u0130i", "\u0130\u0130"]),
    (r"(ab)\1", "i", ["aba", "abAB", "ab"]),
    (r"x(ab)\1", "i", ["xabAB", "xabAx"]),
    (r"(abc)\1", "i", ["abcABC", "abcABc", "abcAB"]),
    # the length and place of a backreference's text
    (r"x(a)\1", "", ["xaa", "xa"]),
    (r"x(ab)\1", "", ["xabab", "xaba"]),
    (r"^()\1", "", ["", "a"]),
    (r"^(a?)\1b", "", ["b", "aab"]),
    # ^ and $ see line ends only under m; $ also matches before a final newline
    (r"a$", "", ["a\nb", "a\n", "a", "a\n\n"]),
    (r"a$", "m", ["a\nb", "ab"]),
    (r"^b", "", ["a\nb"]),
    (r"^b", "m", ["a\nb"]),
    # \A and \Z: the start and the end of the text, with or without m
    (r"\Aa", "", ["ba", "a"]),
    (r"\Aa", "m", ["b\na", "a"]),
    (r"a\Z", "", ["a\n", "a"]),
    (r"a\Z", "m", ["a\n", "a"]),
    # bounded and unbounded repeats
    (r"^a{2}$", "", ["aaa", "aa", "a"]),
    (r"^(?:ab){1,2}$", "", ["ababab", "abab", "ab", ""]),
    (r"^a*$", "", ["aa", ""]),
    (r"^a*?$", "", ["aa"]),
    # an atomic group keeps its first way of matching: greedy takes all it can, lazy the least
    (r"(?>a+)a", "", ["aa", "aaa"]),
    (r"(?>a+?)a", "", ["aa"]),
    (r"(?>a*?)b", "", ["aab"]),
    (r"a*+a", "", ["aa"]),
    # groups set inside a look-around or an atomic group keep their text after it
    (r"(?=(a))\1", "", ["a", "b"]),
    (r"(?>(a))\1", "", ["aa", "a"]),
    (r"(?<=(a))\1", "", ["aa", "ab"]),
    (r"(?!(a))\1", "", ["ab"]),
    # a group undone by backtracking no longer holds its text, and the others keep theirs
    (r"(a)(?:(b)x|b)\1", "", ["aba", "abx"]),
    (r"(?:(a)x|a)(?(1)y|z)", "", ["az", "ay", "axy"]),
    (r"(?:(a)(b)x|ab)\2", "", ["abb", "abx"]),
    # a conditional takes its "yes" branch once the group has matched
    (r"(a)?(?(1)b|c)", "", ["ab", "c", "ac"]),
    (r"x(a)?(?(1)b|c)", "", ["xab", "xc", "xb"]),
    (r"()(?(1)a|b)", "", ["a", "b"]),
    (r"(a)?(?(1)b)c", "", ["c", "abc", "ac"]),
    # look-behind looks at the characters before the position
    (r"(?<=a)b", "", ["ab", "bb", "b"]),
    (r"(?<=ab)c", "", ["abc", "bc"]),
    (r"(?<!a)b", "", ["ab", "cb"]),
    # lazy repeats
    (r"a*?b", "", ["aab", "b", "aa"]),
    (r"a{2,}?b", "", ["aab", "ab", "aaab"]),
    (r"(?:ab)+?c", "", ["ababc", "abc", "c"]),
    (r"(?:^)*?a", "", ["-", "a", "ba"]),
    (r"(?:^)*?a", "im", ["-", "\na"]),
    # repeats in repeats whose bodies can match nothing
    (r"(?:b+|)*", "", ["", "b"]),
    (r"(?:b+|)*c", "", ["c", "bbc", "x"]),
    (r"(?:(?:a*)*)*a", "", ["a", ""]),
    (r"((a*)*)*a", "", ["a", "b"]),
]


@pytest.mark.parametrize("pattern,flags,texts", CASES)
def test_answers_as_python_does(pattern, flags, texts):
    rx = BudgetRegex(pattern, flags)
    assert rx.budget == DEFAULT_BUDGET
    for text in texts:
        assert rx.search(text) == python_says(pattern, flags, text), (pattern, flags, text)


@pytest.mark.parametrize("pattern,text", [
    (r"^(?:(?(1)a|)()){1,}$", "a"),
    (r"^(?:(?(1)a|)()){1,}?$", "a"),
    (r"^(?:(?(1)a|)()){1,}b", "ab"),
    (r"^(?:(?(1)a|)()){2,}$", "a"),
    (r"^(?:(?(1)a|)()){1,3}$", "a"),
    (r"^(?:(?(1)a|)()){2,}?$", "aa"),
])
def test_a_repeat_goes_on_after_an_empty_required_iteration(pattern, text):
    # the first iteration must run and matches nothing (group 1 is not set yet); Python then
    # tries one more iteration, where group 1 is set and the conditional takes "a"
    assert python_says(pattern, "", text) is True
    assert BudgetRegex(pattern).search(text) is True


@pytest.mark.parametrize("pattern,text", [
    (r"^(?:(?(1)a|)())*$", "a"),
    (r"^(?:(?(1)a|)()){0,}$", "a"),
    (r"^(?:(?(1)a|)())*?$", "a"),
    (r"^(?:(?(1)a|)()){0,5}$", "a"),
])
def test_an_empty_optional_iteration_is_a_repeat_s_last(pattern, text):
    # with no minimum the first iteration is already optional: it matches nothing, so sre tries
    # no other and the tail fails at the start; Python says no, and so must the engine
    assert python_says(pattern, "", text) is False
    assert BudgetRegex(pattern).search(text) is False


def test_the_default_budget_is_the_documented_200000_steps():
    assert DEFAULT_BUDGET == 200_000
    assert BudgetRegex("a").budget == 200_000
    assert BudgetRegex("a", budget=7).budget == 7


def test_a_budget_of_n_steps_allows_exactly_n_instructions():
    # the program of a one-character regex is two instructions: test the character, match.
    # On "a" the search runs both; on "ba" the first start position fails after one and the
    # second runs both: three steps, counted across the start positions
    assert BudgetRegex("a", budget=2).search("a") is True
    with pytest.raises(BudgetExceeded):
        BudgetRegex("a", budget=1).search("a")
    assert BudgetRegex("a", budget=3).search("ba") is True
    with pytest.raises(BudgetExceeded):
        BudgetRegex("a", budget=2).search("ba")
    # the empty regex is the match instruction alone
    assert BudgetRegex("", budget=1).search("") is True
    with pytest.raises(BudgetExceeded):
        BudgetRegex("", budget=0).search("")


def test_a_required_iteration_counts_every_instruction_of_its_loop():
    # "a{2}" compiles to: reset the loop, then per iteration test the count, start the
    # iteration, test the character, count it and jump back; then the count test leaves the
    # loop and the match instruction ends. On "aa" that is 1 + 2 * 5 + 1 + 1 = 13 steps: a
    # required iteration runs its start instruction too (it only records nothing), so 13 is
    # the least budget that finds the match
    assert BudgetRegex("a{2}", budget=13).search("aa") is True
    with pytest.raises(BudgetExceeded):
        BudgetRegex("a{2}", budget=12).search("aa")
    # two characters per iteration: two steps more
    assert BudgetRegex("(?:ab){2}", budget=15).search("abab") is True
    with pytest.raises(BudgetExceeded):
        BudgetRegex("(?:ab){2}", budget=14).search("abab")

def test_each_regex_may_need_up_to_the_bound_of_character_set_scans():
    # a case-insensitive non-ASCII literal needs a scan of the code points; a regex may need
    # MAX_SCANS_PER_REGEX of them (each regex on its own: the count starts again), one more is
    # refused with the reason
    at_bound = "(?i)" + "".join(chr(0xE0 + i) for i in range(MAX_SCANS_PER_REGEX))
    for _ in range(2):
        rx = BudgetRegex(at_bound)
        text = at_bound[4:].upper()
        assert rx.search(text) is True and python_says(at_bound, "", text)
    over = "(?i)" + "".join(chr(0xE0 + i) for i in range(MAX_SCANS_PER_REGEX + 1))
    with pytest.raises(RegexUnsupported) as err:
        BudgetRegex(over)
    assert err.value.refused and f"more than {MAX_SCANS_PER_REGEX}" in err.value.reason


# ---------------------------------------------------------------------------------
# Generated regexes of the accepted constructs, nested, on texts made of their letters.

_LEAVES = ["a", "b", "A", "", ".", "[ab]", r"\b", r"\B", "$", "^", r"\w", "-", "_", "\u0130"]
_REPS = ["*", "+", "?", "*?", "+?", "??", "{1,2}", "{0,2}?", "{2}", "*+", "++", "{1,}", "{2,}?"]


def _regex():
    def extend(inner):
        return st.one_of(
            st.lists(inner, min_size=2, max_size=3).map("".join),
            st.tuples(inner, inner).map(lambda t: f"(?:{t[0]}|{t[1]})"),
            st.tuples(inner, st.sampled_from(_REPS)).map(lambda t: f"(?:{t[0]}){t[1]}"),
            st.tuples(inner, st.sampled_from(_REPS)).map(lambda t: f"({t[0]}){t[1]}"),
            inner.map(lambda x: f"({x})"),
            st.tuples(st.sampled_from(["(?=%s)", "(?!%s)", "(?>%s)", "(?i:%s)", "(?-i:%s)"]),
                      inner).map(lambda t: t[0] % t[1]),
            st.sampled_from([r"\1", r"\2", "(?(1)a|b)", "(?(1)b)", "(?(2)a|)", "()",
                             "(?<=a)", "(?<!b)", "(?<=ab)", "(?<!a.)"]),
        )
    return st.recursive(st.sampled_from(_LEAVES), extend, max_leaves=6)


_FLAGS = st.sampled_from(["", "i", "m", "s", "im"])
_TEXTS = st.lists(st.text(alphabet=st.sampled_from("abAB_-\n\u0130i"), max_size=6),
                  min_size=1, max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_regex(), _FLAGS, _TEXTS)
@example(r"(?:b+|)*", "", [""])
@example(r"(?:(?:a*)*)*a", "", ["a"])
@example(r"^(?:(?(1)a|)()){1,}$", "", ["a", ""])
def test_generated_nested_regexes_answer_as_python_does(pattern, flags, texts):
    if not _valid(pattern, flags):
        return
    rx = BudgetRegex(pattern, flags)
    for text in texts:
        assert rx.search(text) == python_says(pattern, flags, text), (pattern, flags, text)
