"""The compiled matcher gives exactly the reference matcher's answers.

Hypothesis generates hostile events (non-ASCII, empty, missing, 32K values, glob and
regex metacharacters, fragments of the rules' own literals) and compares both
engines on the seed rule and on every applicable SigmaHQ rule (1,415); the shared
corpus and the SigmaHQ regression events are compared rule by rule.  The compiled
engine's one-pass fold and its linear glob walk are compared with ``str.lower()`` and
the reference's regex form on generated texts and patterns.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sensor.detect import matcher as M
from sensor.events import ProcessEvent
from sensor.detect.seed import seed_rule

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SIGMA = SHARED / "data" / "sigma-rules"
# every applicable SigmaHQ rule: windows/process_creation, threat hunting, emerging threats
RULE_DIRS = [SIGMA / "rules" / "windows" / "process_creation", SIGMA / "rules-threat-hunting",
             SIGMA / "rules-emerging-threats"]
CORPUS = SHARED / "data" / "events" / "process_creation_corpus.jsonl.gz"
REGRESSION = SHARED / "data" / "sigma-regression"

pytestmark = pytest.mark.skipif("compiled" not in M.ENGINES, reason="compiled matcher not built")
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared (research data) is not present")

FIELDS = ["Image", "OriginalFileName", "CommandLine", "ParentImage", "ParentCommandLine", "User",
          "IntegrityLevel", "CurrentDirectory", "Description", "Product", "Company", "Hashes"]


@lru_cache(maxsize=None)
def sigmahq_rules():
    from sensor.detect.loader import load_rules

    return list(load_rules(RULE_DIRS, builtin=False).rules)


@lru_cache(maxsize=None)
def sigmahq():
    rules = sigmahq_rules()
    return rules, M.create(rules, "reference"), M.create(rules, "compiled")


@lru_cache(maxsize=None)
def seed_pair():
    rules = [seed_rule()]
    return rules, M.create(rules, "reference"), M.create(rules, "compiled")


@lru_cache(maxsize=None)
def fragments():
    """Literal pieces of the rules, so that generated events actually hit them."""
    out = set()
    # (the rules only: this runs while the file is collected, also when the compiled matcher
    # is missing and every test here skips)
    rules = [seed_rule()] + (sigmahq_rules() if SHARED.exists() else [])
    for r in rules:
        for p in r.predicates:
            for v in p.values:
                if isinstance(v, str) and len(v) < 60:
                    out.add(v)
    return sorted(out)


ALPHABET = st.sampled_from(list("aAbBcCiIsSkK \\/.:-*?[](){}+^$|`'\"%\n\t0123456789") +
                           ["İ", "ı", "ſ", "K", "Σ", "ς", "é", "É", "ß", "中", "—", "–", "―", "\ud800", "\x00"])


def text():
    piece = st.one_of(st.text(ALPHABET, max_size=12), st.sampled_from(fragments()),
                      st.sampled_from(fragments()).map(str.upper))
    return st.lists(piece, max_size=6).map("".join)


def value():
    return st.one_of(st.none(), text(), st.just(""), st.integers(-5, 70000), st.booleans(),
                     text().map(lambda s: (s or "x") * (32768 // max(1, len(s or "x")))))


@st.composite
def events(draw):
    ev = ProcessEvent()
    for f in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS))):
        ev[f] = draw(value())
    if draw(st.booleans()):
        ev["Extra"] = draw(text())
    return ev


def same(ref, comp, event):
    a = ref.match(ProcessEvent(event))
    b = comp.match(ProcessEvent(event))
    assert a == b, f"reference {a} != compiled {b} for {dict(event)!r}"


@given(events())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_seed_rule_parity(event):
    _, ref, comp = seed_pair()
    same(ref, comp, event)


@needs_shared
@given(events())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sigmahq_parity_random_events(event):
    _, ref, comp = sigmahq()
    same(ref, comp, event)


@needs_shared
@given(events(), st.sampled_from(["OriginalFileName", "Description", "CommandLine", "Image"]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sigmahq_parity_with_pending_fields(event, lazy):
    """A field left pending resolves to the same answer it would have had stored."""
    rules, ref, comp = sigmahq()
    stored = ProcessEvent(event)
    expected = ref.match(stored)
    pending = ProcessEvent(event)
    held = pending.get(lazy)
    pending[lazy] = None
    pending.set_pending(lazy, lambda e, n: held)
    got = comp.match(pending)
    keyword = {i for i, r in enumerate(rules) if any(p.field is None for p in r.predicates)}
    # keyword searches read stored values only, so they may not see a pending value
    assert [i for i in got if i not in keyword] == [i for i in expected if i not in keyword]


def _corpus(step):
    from sensor.sources import read_paths

    return list(read_paths([CORPUS]))[::step]


def _compare_rule_by_rule(events):
    rules, ref, comp = sigmahq()
    per_rule = {}
    for i, ev in enumerate(events):
        a, b = ref.match(ev), comp.match(ev)
        for r in set(a) ^ set(b):
            per_rule.setdefault(rules[r].source, []).append(i)
    assert per_rule == {}


@needs_shared
def test_corpus_parity_sample():
    _compare_rule_by_rule(_corpus(step=15))


@needs_shared
@pytest.mark.slow
def test_corpus_parity_full():
    _compare_rule_by_rule(_corpus(step=1))


@needs_shared
def test_regression_events_parity():
    from sensor.sources import read_paths

    events = list(read_paths([REGRESSION]))
    assert events, "the regression sets hold process starts"
    _compare_rule_by_rule(events)


# ---------------------------------------------------------------- fold and glob

def test_fold_is_str_lower_on_every_code_point():
    # per character, the one-pass fold is str.lower(); capital sigma (context-dependent in
    # str.lower) always folds to U+03C3, which is why sigma predicates use str.lower()
    from sensor.detect._matcher import fold_utf8

    for start in range(0, 0x110000, 0x8000):
        chunk = "".join(chr(c) for c in range(start, min(start + 0x8000, 0x110000)) if c != 0x3A3)
        assert fold_utf8(chunk) == chunk.lower().encode("utf-8", "surrogatepass"), hex(start)
    assert fold_utf8("\u03a3") == "\u03c3".encode()


def test_fold_is_str_lower_when_characters_share_a_cache_slot():
    # the fold caches lower-case mappings by code point modulo 1024: characters 1024 apart
    # (upper and lower case, Latin-1 and wider strings, astral) alternate in one slot
    from sensor.detect._matcher import fold_utf8

    for base in (0x100, 0x41, 0xC0, 0x400, 0x10400, 0x1E900):
        group = [chr(c) for c in range(base, base + 8 * 1024, 1024) if c != 0x3A3]
        for t in ("".join(group) * 3, "".join(reversed(group)) * 3, "A".join(group)):
            assert fold_utf8(t) == t.lower().encode("utf-8", "surrogatepass"), [hex(ord(c)) for c in t]


def test_fold_is_str_lower_when_sequence_lengths_alternate():
    # the fold writes 2-4 byte sequences without branching on the length (four bytes,
    # then advances by the length) and skips the case lookup in blocks without case:
    # every ordered pair and triple of characters of different UTF-8 lengths, blocks with
    # and without case, and the block edges, in strings of each width
    from itertools import product

    from sensor.detect._matcher import fold_utf8

    reps = ["a", "Z", "\x80", "\xc9", "\xff", "\u0130", "\u017f", "\u07ff", "\u0800", "\u212a",
            "\u4e2d", "\ud800", "\uffff", "\U00010000", "\U00010400", "\U0001f600", "\U0010ffff"]
    for k in (1, 2, 3):
        for combo in product(reps, repeat=k):
            t = "".join(combo)
            assert fold_utf8(t) == t.lower().encode("utf-8", "surrogatepass"), [hex(ord(c)) for c in t]
            t = "x" + t * 3 + "\U0001f600"       # the same within a 4-byte-wide string
            assert fold_utf8(t) == t.lower().encode("utf-8", "surrogatepass"), [hex(ord(c)) for c in t]
    # each block edge of 128 code points, on both sides
    edges = "".join(chr(c) for b in range(128, 0x110000, 128) for c in (b - 1, b) if c != 0x3A3)
    assert fold_utf8(edges) == edges.lower().encode("utf-8", "surrogatepass")


@given(text())
@settings(max_examples=300, deadline=None)
def test_fold_matches_str_lower(t):
    from sensor.detect._matcher import fold_utf8

    t = t.replace("\u03a3", "x")
    assert fold_utf8(t) == t.lower().encode("utf-8", "surrogatepass")


GLOB_ALPHABET = st.sampled_from(list("ab*?\\ .:") + ["İ", "ı", "K", "é", "É", "中", "\U0001f600",
                                                      "\ud800", "ß", "Σ", "ς"])


@given(st.lists(st.tuples(st.text(GLOB_ALPHABET, max_size=10), st.booleans()), min_size=1, max_size=3),
       st.lists(st.text(GLOB_ALPHABET, max_size=24), min_size=1, max_size=5))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_glob_parity(patterns, texts):
    from sensor.detect.ir import Predicate, Rule

    preds = tuple(Predicate("CommandLine", "glob", (p,), cased) for p, cased in patterns)
    rules = [Rule(id=f"g{i}", title="g", predicates=(pr,), condition=("pred", 0))
             for i, pr in enumerate(preds)]
    ref, comp = M.create(rules, "reference"), M.create(rules, "compiled")
    for t in texts + ["".join(t for t, _ in patterns).replace("*", "x").replace("?", "y")]:
        same(ref, comp, {"CommandLine": t})


# ---------------------------------------------------------------- events the matcher was not tuned on

def _bench_module(name):
    import importlib
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


@needs_shared
def test_heldout_events_parity():
    # both halves of the held-out set (4688 recordings, regression data, generated long
    # command lines): every 3rd event, rule by rule
    heldout = _bench_module("heldout")
    look, measure = heldout.halves(heldout.load())
    _compare_rule_by_rule((look + measure)[::3])


@needs_shared
def test_adversarial_events_parity():
    # the adversarial bench's events (own literals repeated to 32,767 characters, near
    # misses, every field at maximum length, non-ASCII) for every 200th rule, and the
    # whole-set events
    adv = _bench_module("adversarial")
    rules = sigmahq()[0]
    events = [ProcessEvent(ev) for _, ev in adv.global_events(rules)]
    for r in rules[::200]:
        events += [ProcessEvent(ev) for _, ev in adv.rule_events(r)]
    _compare_rule_by_rule(events)


# ---------------------------------------------------------------- the anchor filter

# Enough distinct literals that CommandLine's literal unit is an anchor filter (gram
# buckets, Bloom filters, overflow entries), whatever the drawn literals add.
_FILLER = tuple(f"{a}{b}-{i:04d}" for i, (a, b) in enumerate(
    (a, b) for a in ("\\win", "user", ".exe", "-enc", "ab", "x") for b in ("dows", "s\\", "", "q")))
_FILLER = _FILLER + tuple(f"k{i:05d}\\z" for i in range(1500))

LIT_ALPHABET = st.sampled_from(list("abcAB\\.- z09") + ["é", "İ", "中", "\U0001F600", "\ud800"])


def anchor_filter_engines(lits):
    """The reference and the compiled matcher over one `contains` rule per literal, with enough
    filler literals that CommandLine goes through the compiled anchor filter."""
    from sensor.detect.ir import Predicate, Rule

    rules = [Rule(id="filler", title="f", predicates=(Predicate("CommandLine", "contains", _FILLER, False, ""),),
                  condition=("pred", 0))]
    rules += [Rule(id=f"l{i}", title="l", predicates=(Predicate("CommandLine", "contains", (lit,), False, ""),),
                   condition=("pred", 0)) for i, lit in enumerate(lits)]
    ref, comp = M.create(rules, "reference"), M.create(rules, "compiled")
    assert {u["field"]: u["mode"] for u in comp.stats["units"]}["CommandLine"] == "anchor filter"
    return ref, comp


def _lit():
    short = st.text(LIT_ALPHABET, min_size=1, max_size=12)
    # longer than 65,535 bytes: lengths and anchor offsets past 16 bits
    long = st.tuples(short, st.integers(65536, 70000)).map(lambda t: (t[0] * (t[1] // len(t[0]) + 1))[:t[1]])
    return st.one_of(short, short, short, long)


@st.composite
def _anchor_case(draw):
    lits = draw(st.lists(_lit(), min_size=1, max_size=8))
    pieces = lits + [lit[: len(lit) // 2] for lit in lits] + [lit[1:] for lit in lits] + list(_FILLER[:40])
    piece = st.one_of(st.sampled_from(pieces), st.sampled_from(pieces).map(str.upper),
                      st.text(LIT_ALPHABET, max_size=6))
    texts = draw(st.lists(st.lists(piece, max_size=5).map("".join), min_size=1, max_size=4))
    values = texts + [st_ for st_ in (draw(st.sampled_from([7, True, 65536, None])),)]
    return lits, values


@given(_anchor_case())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_anchor_filter_parity(case):
    # literals of every length (1 byte to > 64 KiB), non-ASCII, texts made of their pieces,
    # values that are not strings: the compiled anchor filter finds exactly what str does
    lits, values = case
    ref, comp = anchor_filter_engines(lits)
    for v in values:
        same(ref, comp, {"CommandLine": v})


def test_anchor_filter_passes_over_non_ascii_runs():
    # when no 2/4/8-byte anchor starts with a byte >= 0x80, the scan passes over positions
    # holding one (runs of them a word at a time): literals right before, after and between
    # non-ASCII runs of every length up to 20 characters are found exactly as str finds
    # them; a unit with a non-ASCII anchor scans every position
    from sensor.detect.ir import Predicate, Rule

    def rules_for(lits):
        rules = [Rule(id="filler", title="f", predicates=(Predicate("CommandLine", "contains", _FILLER, False, ""),),
                      condition=("pred", 0))]
        return rules + [Rule(id=f"l{i}", title="l",
                             predicates=(Predicate("CommandLine", "contains", (lit,), False, ""),),
                             condition=("pred", 0)) for i, lit in enumerate(lits)]

    ascii_lits = ["grunt", "-enc", "ab", "x.exe", "\\temp\\", "k00042\\z", "zz", "q", "winlogon.exe -x"]
    for lits, flag in ((ascii_lits, True), (ascii_lits + ["\u4e2d\u6587x", "\U0001F600"], False)):
        ref, comp = M.create(rules_for(lits), "reference"), M.create(rules_for(lits), "compiled")
        unit = {u["field"]: u for u in comp.stats["units"]}["CommandLine"]
        assert unit["mode"] == "anchor filter" and unit["ascii_anchors"] is flag
        for run in ("\u00e9", "\u4e2d", "\U0001F600", "\u0130", "\u212a"):
            for n in range(21):
                r = run * n
                for lit in lits:
                    for v in (r + lit + r, lit + r + lit, r + lit, lit + r, r + lit.upper() + r,
                              r + lit[:-1] + r + lit[-1:], lit[:2] + r + lit[2:]):
                        same(ref, comp, {"CommandLine": v})


def test_anchor_filter_with_only_long_anchors_and_many_one_byte_literals():
    # a unit whose anchors are all 8-grams (the 4-gram filter then only gates the 8-gram
    # probe: no 4-gram buckets) and that holds 8+ one-byte literals (found by one pass
    # noting the bytes present): texts holding each literal, its first 4 or 7 bytes only,
    # a changed last byte, and each single character present or absent
    from sensor.detect.ir import Predicate, Rule

    long_lits = [f"k{i:05d}\\zz" for i in range(1500)] + ["grunthttp", "invoke-mimikatz", "\\appdata\\"]
    singles = ["&", "|", "^", "`", "%", ";", "+", "$", "é"]
    lits = long_lits + singles
    rules = [Rule(id=f"l{i}", title="l", predicates=(Predicate("CommandLine", "contains", (lit,), False, ""),),
                  condition=("pred", 0)) for i, lit in enumerate(lits)]
    ref, comp = M.create(rules, "reference"), M.create(rules, "compiled")
    assert {u["field"]: u["mode"] for u in comp.stats["units"]}["CommandLine"] == "anchor filter"
    texts = ["", "plain text with none of them", "x" * 300]
    for lit in long_lits[:40] + long_lits[-3:]:
        texts += [lit, "a " + lit + " b", lit.upper(), lit[:4], "q" + lit[:7] + "q", lit[:-1] + "#",
                  lit[:4] + " " + lit[4:], (lit[:6] + " ") * 5 + lit]
    for c in singles:
        texts += [c, "abc" + c, c + "abc" + "z" * 40, ("y" * 37 + c) * 3, "\u00e9\u4e2d" + c]
    texts.append(" ".join(long_lits[:50]) + "".join(singles))
    for t in texts:
        same(ref, comp, {"CommandLine": t})


def test_anchor_filter_finds_literals_at_every_offset_across_its_blocks():
    # the scan tests 64 positions at a time (8 bytes of text from each), then the last
    # 7 positions one by one: needles of 2 to 9 bytes (some of them their whole anchor, so
    # found without reading their bytes) at every offset around the block edges and at
    # the very end, with a non-ASCII character right before them, and near misses
    lits = ["q~", "q~z", "vb.9", "vb.9w", "grunthtt", "grunthttp", "k00042\\z"]
    ref, comp = anchor_filter_engines(lits)
    for lit in lits:
        for k in list(range(0, 20)) + list(range(50, 80)) + list(range(118, 140)):
            for pad in ("-", "\u00e9"):
                for tail in ("", "x", "xxxxxx", "x" * 7, "x" * 70):
                    same(ref, comp, {"CommandLine": "a" * k + pad + lit + tail})
                    same(ref, comp, {"CommandLine": "a" * k + pad + lit[:-1] + "#" + tail})
                    same(ref, comp, {"CommandLine": "a" * k + pad + "#" + lit[1:] + tail})


def test_regexes_sharing_an_alphabet_map_a_text_once_with_the_same_answers():
    # regexes with equal alphabets reuse one mapping of a field's text per event (up to
    # 1 MiB per event, then each maps its own); the answers stay re.search's, for ASCII
    # and non-ASCII texts, for regexes whose alphabets differ, and past the 1 MiB budget
    from sensor.detect.ir import Predicate, Rule

    pats = [("a.c", ""), ("x.z", ""), ("é+\\d", ""), ("\\d+é", ""), ("[a-zé]+\\s\\S", ""), ("ÉCOLE", "i"),
            ("^\\w+$", ""), ("中.文", ""), ("\\bk\\b", "i"), ("\\s{3}", "")]
    rules = [Rule(id=f"r{i}", title="r", predicates=(Predicate(f, "re", (p,), False, fl),), condition=("pred", 0))
             for i, (p, fl) in enumerate(pats) for f in ("CommandLine", "ParentCommandLine")]
    ref, comp = M.create(rules, "reference"), M.create(rules, "compiled")
    texts = ["abc xyz", "aéc x\u212az 1é", "école 12é", "\u00c9COLE k", "中x文 \U0001F600", "\u0130 a\nc   x",
             "\u212a", "ab\u00e9c" * 5]
    for t in texts:
        for other in ("", t[::-1], "abc"):
            same(ref, comp, {"CommandLine": t, "ParentCommandLine": other})
    big = "a\u00e9c" + "\u4e2d" * 300_000 + " x z 7é"     # mappings past 1 MiB
    same(ref, comp, {"CommandLine": big, "ParentCommandLine": big[::-1]})


# ---------------------------------------------------------------- batches
@needs_shared
@given(st.lists(events(), max_size=12))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sigmahq_batch_parity(evs):
    # one compiled call for the whole batch == the reference's match on each event in turn
    _, ref, comp = sigmahq()
    assert comp.match_batch([ProcessEvent(e) for e in evs]) == \
        M.batch_of(ref.match, [ProcessEvent(e) for e in evs])


@needs_shared
def test_heldout_batch_parity():
    # the held-out events as the pipeline hands them over (batches of 512), every 2nd event
    heldout = _bench_module("heldout")
    look, measure = heldout.halves(heldout.load())
    evs = (look + measure)[::2]
    _, ref, comp = sigmahq()
    got = []
    for k in range(0, len(evs), 512):
        got += comp.match_batch(evs[k:k + 512])
    assert got == M.batch_of(ref.match, evs)


def test_three_byte_needles_behind_their_gate_are_found_exactly():
    # A 2-gram position whose bucket holds only 3-byte needles is looked up only when the
    # trigram filter may hold one of them there, with the needle starting at the position or
    # one byte before (its anchor offset): every 3-byte needle at the start, the middle and
    # the end of a text, each of its 2-grams before or after a wrong byte, and 2-byte needles
    # sharing a 2-gram with 3-byte ones, are found exactly as the reference finds them
    import random

    rng = random.Random(7)
    alphabet = "ab-e /x\\qz0"
    three = sorted({"".join(rng.choice(alphabet) for _ in range(3)) for _ in range(60)})
    two = ["-e", "ab", "/x"]
    ref, comp = anchor_filter_engines(three + two)
    assert {u["field"]: u.get("three_byte_gate") for u in comp.stats["units"]}["CommandLine"]
    texts = []
    for lit in three:
        texts += [lit, lit + "k" * 9, "k" * 9 + lit, "kk" + lit + "kk", lit[:2] + "K", "K" + lit[1:],
                  lit[:2], lit[1:], "k" * 9 + lit[:2], lit[1:] + "k" * 9, lit.upper()]
    texts += ["-e", "x-e", "-ex", "ab" * 20, "k" * 9 + "/x"]
    for t in texts:
        same(ref, comp, {"CommandLine": t})


KW_ALPHABET = st.sampled_from(list("abAB\\.- 09") + ["é", "İ", "K", "中", "\U0001F600"])


@st.composite
def _keyword_case(draw):
    # keyword literals (several, so that some units are short and some long), and events
    # whose values are around their lengths: one byte short, exact, case changed, numbers,
    # booleans, fields the rules read and fields they do not
    lits = draw(st.lists(st.text(KW_ALPHABET, min_size=1, max_size=9), min_size=1, max_size=4))
    cut = [lit[:-1] for lit in lits] + [lit[1:] for lit in lits]
    piece = st.one_of(st.sampled_from(lits), st.sampled_from(lits).map(str.upper),
                      st.sampled_from(cut), st.text(KW_ALPHABET, max_size=4))
    val = st.one_of(st.lists(piece, max_size=3).map("".join), st.integers(-10, 10 ** 6),
                    st.booleans(), st.none())
    evs = draw(st.lists(st.dictionaries(st.sampled_from(["CommandLine", "Image", "User", "Other",
                                                         "Z"]), val, max_size=5),
                        min_size=1, max_size=4))
    return lits, evs


@given(_keyword_case())
@example((["ab", "\u00e9\\x"], [{"Image": "AB"}, {"Other": "a"}, {"CommandLine": "xAb"},
                                  {"User": 7, "Z": "\u00c9\\X"}, {"CommandLine": "\u00e9\\"}]))
@example((["0"], [{"Other": "0"}, {"Other": 0}, {"Other": True}, {"Other": ""}]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_keyword_search_parity(case):
    # a keyword search reads every stored value: the compiled engine skips an ASCII value
    # shorter than the shortest keyword and walks other ASCII values as stored (its classes
    # fold capitals); the answers are the reference's. A second rule reads CommandLine, so a
    # value there is also folded in that field's slot.
    from sensor.detect.ir import Predicate, Rule

    lits, evs = case
    rules = [Rule(id="kw", title="k", predicates=(Predicate(None, "contains", tuple(lits), False, ""),),
                  condition=("pred", 0)),
             Rule(id="cl", title="c", predicates=(Predicate("CommandLine", "contains", ("é",), False, ""),),
                  condition=("pred", 0))]
    ref, comp = M.create(rules, "reference"), M.create(rules, "compiled")
    for ev in evs:
        a, b = ref.match(ProcessEvent(ev)), comp.match(ProcessEvent(ev))
        assert a == b, f"reference {a} != compiled {b} for {ev!r} with keywords {lits!r}"


def test_keyword_searches_see_what_the_rules_before_them_resolved():
    # While a field is pending, the values a keyword search sees depend on what the rules
    # evaluated before it resolved (the reference evaluates rules in order, and a resolved
    # value is stored): the compiled engine scans keywords at evaluation then, not at
    # selection, and gives the reference's answers, for a keyword alone, OR-ed and AND-ed
    # with a field literal, before and after the rule that resolves the field
    from sensor.detect.ir import Predicate, Rule

    def r(rid, *preds, cond=("pred", 0)):
        return Rule(id=rid, title=rid, predicates=tuple(preds), condition=cond)

    hashes = r("h", Predicate("Hashes", "contains", ("md5=",), False, ""))
    kw = Predicate(None, "contains", ("md5=abc",), False, "")
    img = Predicate("Image", "endswith", ("\\x.exe",), False, "")
    shapes = [r("kw", kw), r("or", kw, img, cond=("or", ("pred", 0), ("pred", 1))),
              r("and", kw, img, cond=("and", ("pred", 0), ("pred", 1)))]
    for order in ([hashes] + shapes, shapes + [hashes]):
        ref, comp = M.create(order, "reference"), M.create(order, "compiled")
        for image in ("C:\\x.exe", "C:\\y.exe"):
            for stored in (None, "MD5=ABC"):
                evs = []
                for _ in range(2):
                    ev = ProcessEvent(Image=image)
                    if stored:
                        ev["Other"] = stored
                    ev.set_pending("Hashes", lambda e, n: "MD5=ABC,SHA256=00")
                    evs.append(ev)
                a, b = ref.match(evs[0]), comp.match(evs[1])
                assert a == b, (image, stored, [x.id for x in order], a, b)


def test_keyword_searches_through_an_anchor_filter_unit():
    # Thousands of keywords make the keyword unit an anchor filter (folded text, no raw ASCII
    # walk): ASCII values shorter than every keyword, values of fields the rules read and of
    # others, capitals, non-ASCII values, numbers: the reference's answers
    from sensor.detect.ir import Predicate, Rule

    many = tuple(f"q{i:05d}\\w" for i in range(2500)) + ("-e ", "ab", "zz\u00e9", "0x1f")
    rules = [Rule(id="kw", title="k", predicates=(Predicate(None, "contains", many, False, ""),),
                  condition=("pred", 0)),
             Rule(id="cl", title="c", predicates=(Predicate("CommandLine", "contains", ("zz",), False, ""),),
                  condition=("pred", 0))]
    ref, comp = M.create(rules, "reference"), M.create(rules, "compiled")
    assert {u["field"]: u["mode"] for u in comp.stats["units"]}[None] == "anchor filter"
    values = ["a", "AB", "xAb", "q00042\\w", "Q02499\\W!", "q0004\\w", "x-e y", "-E", "ZZ\u00c9",
              "\u0130q00007\\w", "0X1F", "k" * 40 + "ab", 31, True, None, ""]
    for v in values:
        for field in ("CommandLine", "Other"):
            ev = {field: v, "Image": "C:\\a.exe"}
            a, b = ref.match(ProcessEvent(ev)), comp.match(ProcessEvent(ev))
            assert a == b, (ev, a, b)


def test_fold_of_ascii_blocks_is_str_lower_at_every_offset():
    # ASCII goes through the fold eight characters at a time: each byte that borders the
    # capital letters (and the ASCII edge) at every offset of a block, in runs that end
    # inside, at and after a block, in strings of each width, and cut by a non-ASCII
    # character at every position
    from sensor.detect._matcher import fold_utf8

    edges = ["@", "A", "M", "Z", "[", "`", "a", "z", "{", "\x00", "\x7f"]
    for lead in ("", "\xe9", "\u4e2d", "\U0001f600"):
        for n in range(0, 26):
            for pos in range(n):
                for e in edges:
                    t = lead + "".join(e if k == pos else "Q" for k in range(n))
                    assert fold_utf8(t) == t.lower().encode("utf-8", "surrogatepass"), repr(t)
            for cut in ("\x80", "\u0130", "\u212a", "\U0001f600"):
                for pos in range(n + 1):
                    t = lead + "AbZ@[" * 5
                    t = t[:len(lead) + pos] + cut + t[len(lead) + pos:len(lead) + n]
                    assert fold_utf8(t) == t.lower().encode("utf-8", "surrogatepass"), repr(t)
    every = "".join(chr(c) for c in range(128)) * 3
    for lead in ("", "\xe9", "\u4e2d", "\U0001f600"):
        for k in range(9):
            t = lead + every[k:]
            assert fold_utf8(t) == t.lower().encode("utf-8", "surrogatepass")


def test_an_ascii_field_is_lowered_whatever_the_offset_of_its_capitals():
    # an ASCII field is tested for capitals eight bytes at a time before it is lowered:
    # one capital pair at every offset of strings of every length around the word size,
    # and the edges of the capital range, must all be found case-insensitively
    from sensor.detect.ir import Predicate, Rule

    # (globs: they read the folded text itself, where a literal scan's classes fold
    # ASCII capitals on their own)
    rules = [Rule(id="zq", title="zq", predicates=(Predicate("CommandLine", "glob", ("*zq*",), False),),
                  condition=("pred", 0)),
             Rule(id="az", title="az", predicates=(Predicate("CommandLine", "glob", ("*@a[z`*",), False),),
                  condition=("pred", 0))]
    comp, ref = M.create(rules, "compiled"), M.create(rules, "reference")
    for n in range(2, 26):
        for pos in range(n - 1):
            for pair in ("ZQ", "Zq", "zQ", "zq"):
                t = "x" * pos + pair + "y" * (n - pos - 2)
                ev = {"CommandLine": t}
                assert comp.match(ev) == ref.match(ev) == [0], t
        for pos in range(n + 1):
            t = ("b" * n)[:pos] + "@A[Z`" + ("b" * n)[pos:]
            ev = {"CommandLine": t}
            assert comp.match(ev) == ref.match(ev) == [1], t
            ev = {"CommandLine": t.lower()}
            assert comp.match(ev) == ref.match(ev) == [1], t
