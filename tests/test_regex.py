"""Rule regexes on RE2 give Python's ``re.search`` answers; the budgeted engine too.

The translation (sensor/detect/regex.py) is checked against Python's engine itself:
documented corner cases where the two dialects differ, the category predicates on every
code point, generated regexes and texts (non-ASCII digits and spaces, the four IGNORECASE
partners of ASCII letters, final sigma, lone surrogates, newlines), and every SigmaHQ
regex on generated texts made of its own literals.
"""
from __future__ import annotations

import re
import warnings
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.detect.backtrack import BudgetExceeded, BudgetRegex
from sensor.detect.regex import (ENGINE_BACKTRACK, ENGINE_RE2, LinearRegex, cat_bits,
                                 compile_regex, plan, py_flags)

from .conftest import SHARED, needs_shared


def python_says(pattern: str, flags: str, text: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return re.search(pattern, text, py_flags(flags)) is not None


# pattern, flags, texts: each a place where RE2's own reading of the pattern text differs
CORNERS = [
    (r"a$", "", ["a\n", "a", "a\n\n", "ba", "a\nb"]),
    (r"a$", "m", ["a\nb", "xa", "a\r\n"]),
    (r"^$", "m", ["a\n", "", "\n"]),
    (r"^b", "", ["ab", "a\nb", "b"]),
    (r"a\Z", "", ["a\n", "a"]),
    (r"\d", "", ["\u0663", "\uff11", "\u00b2", "x", "7"]),
    (r"\w", "", ["\u00e9", "\u00b2", "-", "_"]),
    (r"\W", "", ["\u00e9", "-"]),
    (r"\s", "", ["\x0b", "\x1c", "\x85", "\xa0", "\u3000", "\u200b", "\u2028"]),
    (r"\S", "", ["\xa0", "x"]),
    (r"\bx\b", "", ["\u00e9x\u00e9", "x", "axa", " x ", "\u0663x"]),
    (r"1\b", "", ["1\u0663", "1 ", "1"]),
    (r"\B", "", ["", "a", "ab", " "]),
    (r"\b", "", ["", "a", " "]),
    (r"s", "i", ["\u017f", "S"]),
    (r"k", "i", ["\u212a"]),
    (r"i", "i", ["\u0130", "\u0131", "I"]),
    (r"\u0130", "i", ["i", "\u0130", "I"]),
    (r"\u00df", "i", ["\u1e9e", "ss"]),
    (r"\u03c3", "i", ["\u03c2", "\u03a3"]),
    (r"\u00b5", "i", ["\u03bc"]),
    (r"[a-z]", "i", ["\u212a", "\u017f", "\u0130"]),
    (r"[^k]", "i", ["\u212a", "K", "a"]),
    (r"(?i:a)b", "", ["Ab", "AB"]),
    (r"(?i)abc", "", ["ABC"]),
    (r"ax{,5}b", "", ["axxb", "ax{,5}b"]),
    (r"[[:alpha:]]", "", ["a", ":]", "]"]),
    (r"[]a]", "", ["]"]),
    (r"a.c", "", ["a\ud800c", "a\nc", "a\rc"]),
    (r"a.c", "s", ["a\nc"]),
    (r"\x41\101\0", "", ["AA\x00"]),
    (r"(?x) a b # comment", "", ["ab"]),
    (r"(?a)\w", "", ["\u00e9", "a"]),
    (r"(?#c)a", "", ["a"]),
    (r"\N{LATIN SMALL LETTER A}", "", ["a"]),
    (r".{1000,}", "", ["a" * 999, "a" * 1000, "\u00e9" * 1000]),
    (r"[\w.-]+@", "i", ["\u00e9.x@", "\u017f@"]),
    (r"(?i)[\w-]+K", "", ["\u00e9-\u212a"]),
    (r"a\x00b", "", ["a\x00b"]),
    (r"[\ud800-\udfff]", "", ["\ud800", "a"]),
    (r"\s-c\s", "", ["\u2006-c\x1f"]),
    (r"(?i)echo.*clip", "", ["ECHocl\u0131P", "echo\nclip"]),
    (r"https?://(?:(?:25[0-5]|(?:2[0-4]|1\d|[1-9])?\d)(?:\.|\b)){4}", "",
     ["http://1.2.3.4", "http://1.2.3.\u0663", "http://255.255.255.255x", "https://9.9.9.9\u00e9"]),
]


@pytest.mark.parametrize("pattern,flags,texts", CORNERS)
def test_corner_cases_agree_with_python(pattern, flags, texts):
    p = plan(pattern, flags)
    assert p.engine == ENGINE_RE2, p.reason
    rx = compile_regex(pattern, flags)
    assert isinstance(rx, LinearRegex)
    for t in texts:
        assert rx.search(t) == python_says(pattern, flags, t), (pattern, flags, t)


@pytest.mark.parametrize("pattern,why", [
    (r"(a)\1", "backreference"),
    (r"a(?=b)", "lookahead"),
    (r"(?<=a)b", "lookahead/lookbehind"),
    (r"a(?!b)", "negative lookahead"),
    (r"(?>a+)b", "atomic group"),
    (r"a*+b", "possessive"),
    (r"(a)?(?(1)b|c)", "conditional"),
    (r"a{1001}", "above 1000"),
    (r"a$b", "before the end"),
])
def test_backtracking_features_are_named(pattern, why):
    p = plan(pattern, "")
    assert p.engine == ENGINE_BACKTRACK
    assert why in p.reason


def test_categories_match_python_on_every_code_point():
    # cat_bits (what the mapping uses) against re's own \d, \s, \w on all non-ASCII code points
    from sensor.detect.charsets import _nonascii_text

    text = _nonascii_text()
    for bit, cls in ((1, r"\d"), (2, r"\s"), (4, r"\w")):
        by_re = {128 + m.start() for m in re.finditer(cls, text)}
        by_bits = {128 + i for i, ch in enumerate(text) if cat_bits(128 + i) & bit}
        assert by_re == by_bits, cls


# ---------------------------------------------------------------------------------
# Generated regexes and texts.

CHARS = ["a", "A", "b", "k", "K", "s", "S", "i", "I", "0", "1", "9", "-", " ", "\n", ".",
         "\u00e9", "\u00c9", "\u017f", "\u212a", "\u0130", "\u0131", "\u0663", "\u3000",
         "\u03c3", "\u03c2", "\u00df", "\x85", "\xa0", "_"]
TEXT_CHARS = CHARS + ["\ud800", "\udfff", "\r", "\t", "\x00", "\U0001d7d8"]
CLASSES = [r"\d", r"\D", r"\s", r"\S", r"\w", r"\W", ".", "[a-c]", "[^a]", r"[\w-]",
           r"[^\s]", "[\u00c9-\u00cb]", "[0-9a-f]", r"[^\\]", "[Kk]", "[\u0130i]", r"[\d\s]"]
ANCHORS = ["^", r"\A", r"\b", r"\B", r"\Z"]


def _atom():
    lit = st.sampled_from(CHARS).map(re.escape)
    return st.one_of(lit, lit, st.sampled_from(CLASSES), st.sampled_from(ANCHORS))


def _regex(extended: bool):
    def extend(inner):
        rep = st.sampled_from(["*", "+", "?", "{0,3}", "{2}", "{1,}", "*?", "+?"])
        items = [
            st.lists(inner, min_size=1, max_size=4).map("".join),
            st.tuples(inner, inner).map(lambda t: f"(?:{t[0]}|{t[1]})"),
            st.tuples(inner, rep).map(lambda t: f"(?:{t[0]}){t[1]}"),
            inner.map(lambda x: f"({x})"),
            inner.map(lambda x: f"(?i:{x})"),
        ]
        if extended:
            items += [
                inner.map(lambda x: f"(?={x})"), inner.map(lambda x: f"(?!{x})"),
                inner.map(lambda x: f"(?>{x})"), inner.map(lambda x: f"(?:{x})*+"),
                st.just(r"(?<=a)"), st.just(r"(?<!\d)"), st.just(r"(a|b)\1"),
                st.just(r"(?i)(k)\1"), st.just(r"(a)?(?(1)b|c)"),
            ]
        return st.one_of(*items)
    body = st.recursive(_atom(), extend, max_leaves=8)
    tail = st.sampled_from(["", "", "$"])
    return st.tuples(body, tail).map("".join)


FLAGS = st.sampled_from(["", "i", "m", "s", "im", "is", "ims"])
TEXTS = st.lists(st.text(alphabet=st.sampled_from(TEXT_CHARS), max_size=12), min_size=1, max_size=6)


def _valid(pattern: str, flags: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(pattern, py_flags(flags))
        return True
    except re.error:
        return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_regex(False), FLAGS, TEXTS)
def test_generated_regexes_agree_with_python(pattern, flags, texts):
    if not _valid(pattern, flags):
        return
    p = plan(pattern, flags)
    if p.engine != ENGINE_RE2:   # only `$` before the end is not translated in this grammar
        assert "$" in p.reason, p.reason
        return
    rx = LinearRegex(p)
    for t in texts:
        assert rx.search(t) == python_says(pattern, flags, t), (pattern, flags, t)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_regex(True), FLAGS, TEXTS)
def test_budgeted_engine_agrees_with_python(pattern, flags, texts):
    if not _valid(pattern, flags):
        return
    rx = BudgetRegex(pattern, flags, budget=10_000_000)
    for t in texts:
        assert rx.search(t) == python_says(pattern, flags, t), (pattern, flags, t)


def test_budget_is_a_hard_limit_and_deterministic():
    rx = BudgetRegex(r"(a+)+$", "", budget=50_000)
    text = "a" * 40 + "!"
    with pytest.raises(BudgetExceeded):
        rx.search(text)
    # the same search with enough budget on a short text finishes with Python's answer
    short = BudgetRegex(r"(a+)+$", "", budget=10_000_000)
    assert short.search("a" * 8 + "!") is False
    assert short.search("a" * 8) is True


def test_linear_time_on_the_inputs_that_freeze_python():
    # issue 13's inputs: each runs in one pass (the test only guards against a hang)
    for pattern, text in [
        (r"(?i)echo.*clip.*&&.*(?:Clipboard|i`?n`?v`?o`?k`?e`?)", "echo clip && " * 2600),
        (r"(a+)+$", "a" * 32768 + "!"),
        (r"\w+`(?:\w+|-|.)`[\w+|\s]", "a" * 32767),
    ]:
        assert plan(pattern, "").engine == ENGINE_RE2
        assert compile_regex(pattern, "").search(text) is False


# ---------------------------------------------------------------------------------
# Every SigmaHQ regex.

@lru_cache(maxsize=None)
def sigmahq_regexes():
    from sensor.detect.loader import load_rules

    base = SHARED / "data" / "sigma-rules"
    rules = load_rules([base / "rules" / "windows" / "process_creation",
                        base / "rules-threat-hunting", base / "rules-emerging-threats"],
                       builtin=False).rules
    out = set()
    for r in rules:
        for p in r.predicates:
            if p.op == "re":
                out.update((v, p.flags) for v in p.values)
    return sorted(out)


def _literal_pieces(pattern: str) -> list[str]:
    return [x for x in re.split(r"[\\\[\]\(\)\{\}\?\*\+\|\.\^\$]", pattern) if x]


@needs_shared
def test_every_sigmahq_regex_runs_on_re2():
    rx = sigmahq_regexes()
    assert len(rx) >= 60
    assert [(p, f, plan(p, f).reason) for p, f in rx if plan(p, f).engine != ENGINE_RE2] == []


@needs_shared
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_sigmahq_regexes_agree_with_python(data):
    pattern, flags = data.draw(st.sampled_from(sigmahq_regexes()))
    pieces = _literal_pieces(pattern) + TEXT_CHARS + ["\\", '"', "'", "&&", "{0}", "+", "`"]
    text = "".join(data.draw(st.lists(st.sampled_from(pieces), max_size=30)))
    assert compile_regex(pattern, flags).search(text) == python_says(pattern, flags, text)
