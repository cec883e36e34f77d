"""The literal-index planner (sensor/detect/index.py), tested directly and fast.

Each test states a property its docstrings (or docs/matcher.md) promise: the priors are a
byte-level probability model counted over the rules' literals; the automata find exactly
the literals a text holds; an anchor plan anchors each literal at one of its own grams of
the documented size, the rarest one not yet shared by 8 literals; a regex prefilter and its
witness are necessary conditions of a match; a chain form and a glob program mean what
the pattern means. The oracles are plain Python (``in``, ``startswith``, ``re.search``,
``ir.glob_to_regex``), never the module's own output.
"""
from __future__ import annotations

import itertools
import re
from collections import Counter, deque

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sensor.detect import index as ix
from sensor.detect.ir import QMARK, STAR, Predicate, Rule, glob_to_regex, glob_tokens, regex_flags

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def P(field, op, *values, cased=False, flags=""):
    return Predicate(field, op, tuple(values), cased, flags)


def rule(*preds, cond=None):
    if cond is None:
        cond = ("and",) + tuple(("pred", i) for i in range(len(preds))) if len(preds) > 1 else ("pred", 0)
    return Rule(id="r", title="r", predicates=tuple(preds), condition=cond)


def contains(*values, field="CommandLine"):
    return rule(P(field, "contains", *values))


def excluded(*values, field="CommandLine"):
    """A rule whose only predicate is under ``not`` (a filter: benign activity)."""
    return rule(P(field, "contains", *values), cond=("not", ("pred", 0)))


def cond_p(pr: ix.Priors, h: bytes, c: int) -> float:
    """P(next byte c | h) read through the public seq_p: seq_p(h + c) / seq_p(h)."""
    return pr.seq_p(h + bytes([c])) / pr.seq_p(h)


# ---------------------------------------------------------------------------------
# enc, needs_python_fold, log2_ceil

def test_enc_is_utf8_and_lets_lone_surrogates_through():
    assert ix.enc("abc") == b"abc"
    assert ix.enc("é中") == "é中".encode("utf-8")
    assert ix.enc("\ud800") == b"\xed\xa0\x80"
    assert ix.enc("a\udfffb") == b"a\xed\xbf\xbfb"


def test_needs_python_fold_only_for_a_sigma():
    assert ix.needs_python_fold(["abc", "ΑΒΓ"]) is False   # Greek without sigma
    assert ix.needs_python_fold(["x", "ΟΔΥΣΣΕΥΣ"]) is True   # capital sigma folds to σ or ς
    assert ix.needs_python_fold(["σ"]) is True
    assert ix.needs_python_fold(["ς"]) is True
    assert ix.needs_python_fold([5, True, None]) is False     # not text: nothing to fold
    assert ix.needs_python_fold([]) is False


@pytest.mark.parametrize("x,want", [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1024, 10), (1025, 11)])
def test_log2_ceil(x, want):
    assert ix.log2_ceil(x) == want


# ---------------------------------------------------------------------------------
# Priors: a probability model

def test_no_counts_gives_the_uniform_distribution():
    pr = ix.Priors([])
    for c in (0, 0x41, 0x61, 0xFF):
        assert pr.seq_p(bytes([c])) == pytest.approx(1 / 256, rel=1e-12)
    # every order falls through to the uniform order 0 when no context was seen
    assert pr.seq_p(b"abcdef") == pytest.approx(256.0 ** -6, rel=1e-9)


literal = st.binary(min_size=1, max_size=7).map(lambda b: bytes(x % 6 + 0x61 for x in b))


@FAST
@given(lits=st.lists(st.tuples(literal, st.booleans()), max_size=8),
       h=st.binary(max_size=3).map(lambda b: bytes(x % 8 + 0x61 for x in b)))
@example(lits=[(b"abce", False), (b"abce", True)], h=b"abc")
@example(lits=[], h=b"")
@example(lits=[(b"a", True)], h=b"")
def test_next_byte_probabilities_sum_to_one_and_are_positive(lits, h):
    rules = [excluded(b.decode()) if neg else contains(b.decode()) for b, neg in lits]
    pr = ix.Priors(rules)
    ps = [cond_p(pr, h, c) for c in range(256)]
    assert min(ps) > 0
    assert sum(ps) == pytest.approx(1.0, rel=1e-9)


def witten_bell(texts, h: bytes, c: int) -> float:
    """P(c | h) of the module docstring's model, computed from its definition: counts of each
    byte after each context of 0..3 bytes over the weighted literals; order 0 is add-one over
    the 256 byte values; order k > 0 mixes its counts with order k - 1 by the number of
    distinct bytes seen after the context (Witten-Bell), and an unseen context is order k - 1."""
    if not h:
        counts = Counter()
        for t, w in texts:
            for x in t:
                counts[x] += w
        return (counts[c] + 1) / (sum(counts.values()) + 256)
    after = Counter()
    for t, w in texts:
        for i in range(len(h), len(t)):
            if t[i - len(h):i] == h:
                after[t[i]] += w
    lower = witten_bell(texts, h[1:], c)
    if not after:
        return lower
    kinds = len(after)
    return (after[c] + kinds * lower) / (sum(after.values()) + kinds)


def test_the_model_is_witten_bell_interpolated_down_to_single_bytes():
    pr = ix.Priors([contains("abce", "xbcd", "abcabd"), excluded("bcd")])
    texts = [(b"abce", 1), (b"xbcd", 1), (b"abcabd", 1), (b"bcd", 3)]
    for h in (b"", b"a", b"c", b"bc", b"abc", b"cab", b"zbc", b"qq"):
        for c in b"abcdexz":
            assert cond_p(pr, h, c) == pytest.approx(witten_bell(texts, h, c), rel=1e-9), (h, c)


def test_a_byte_seen_more_often_is_more_likely_at_every_order():
    # order 0: 'e' seen three times, 'd' once, 'z' never
    pr = ix.Priors([contains("e", "e", "d"), contains("e")])
    assert pr.seq_p(b"e") > pr.seq_p(b"d") > pr.seq_p(b"z")
    # order 3: after "abc" only 'e' was seen, after "xbc" only 'd'; the shorter contexts
    # ("bc", "c") saw both once, so only the 3-byte context can tell them apart
    pr = ix.Priors([contains("abce", "xbcd")])
    assert cond_p(pr, b"abc", ord("e")) > cond_p(pr, b"abc", ord("d"))
    assert cond_p(pr, b"xbc", ord("d")) > cond_p(pr, b"xbc", ord("e"))
    # the same at orders 1 and 2, through whole-literal probabilities
    pr = ix.Priors([contains("ae", "xd")])
    assert pr.seq_p(b"ae") > pr.seq_p(b"ad") and pr.seq_p(b"xd") > pr.seq_p(b"xe")
    pr = ix.Priors([contains("abe", "xbd")])
    assert pr.seq_p(b"abe") > pr.seq_p(b"abd") and pr.seq_p(b"xbd") > pr.seq_p(b"xbe")
    pr = ix.Priors([contains("abce", "xbcd")])
    assert pr.seq_p(b"abce") > pr.seq_p(b"abcd") and pr.seq_p(b"xbcd") > pr.seq_p(b"xbce")
    # the model reads at most 3 bytes of context: a 4th one changes nothing, even one the
    # rules' literals hold before those 3 bytes
    assert cond_p(pr, b"qabc", ord("e")) == pytest.approx(cond_p(pr, b"abc", ord("e")), rel=1e-12)
    pr = ix.Priors([contains("qabce", "xabcd")])
    for h in (b"qabc", b"xabc"):
        for c in b"de":
            assert cond_p(pr, h, c) == pytest.approx(cond_p(pr, b"abc", c), rel=1e-12)


def test_a_literal_of_recurring_grams_is_more_common_than_one_of_grams_seen_once():
    rules = [contains(f"c:\\windows\\system32\\{name}.exe") for name in ("cmd", "net", "sc", "wmic")]
    rules.append(contains("grunthttp"))
    pr = ix.Priors(rules)
    assert pr.seq_p(b"system32") > pr.seq_p(b"grunthtt")
    assert pr.lit_p("CommandLine", b"\\system32\\", "any") > pr.lit_p("CommandLine", b"grunthttp", "any")


@pytest.mark.parametrize("positives,relation", [(2, ">"), (3, "=="), (4, "<")])
def test_a_literal_under_not_counts_three_times(positives, relation):
    # 'q' once under not against 'z' counted 2, 3 or 4 times: equal exactly at 3
    pr = ix.Priors([excluded("q"), contains(*["z"] * positives)])
    q, z = pr.seq_p(b"q"), pr.seq_p(b"z")
    assert {">": q > z, "==": q == pytest.approx(z, rel=1e-12), "<": q < z}[relation]


def test_not_is_counted_through_and_or_and_cancels_when_doubled():
    base = [contains("zzz")]       # 'z' three times: the weight a negated 'q' gets
    nested = rule(P("Image", "contains", "x"), P("Image", "endswith", "q"), P("Image", "contains", "w"),
                  cond=("and", ("pred", 0), ("not", ("or", ("pred", 1), ("and", ("pred", 2),)))))
    pr = ix.Priors(base + [nested])
    assert pr.seq_p(b"q") == pytest.approx(pr.seq_p(b"z"), rel=1e-12)
    assert pr.seq_p(b"w") == pytest.approx(pr.seq_p(b"z"), rel=1e-12)
    assert pr.seq_p(b"x") < pr.seq_p(b"z")                    # not negated: weight 1
    twice = rule(P("Image", "contains", "q"), cond=("not", ("not", ("pred", 0))))
    pr = ix.Priors([contains("q"), twice, contains("zz")])
    assert pr.seq_p(b"q") == pytest.approx(pr.seq_p(b"z"), rel=1e-12)


def test_only_literal_text_is_counted_folded():
    ignored = [rule(P("CommandLine", "re", "zzzz")), rule(P("Pid", "lt", 5)),
               rule(P("Image", "exists", True))]
    pr = ix.Priors(ignored)
    assert pr.seq_p(b"z") == pytest.approx(1 / 256, rel=1e-12)
    pr = ix.Priors([contains("QQQ")])
    assert pr.seq_p(b"q") > 1 / 256 > pr.seq_p(b"Q")
    # a value that is not text does not keep the predicate's other values from counting
    pr = ix.Priors([rule(P("SourceIp", "cidr", 167772160, "10.10.10.10/32"))])   # 167772160: 10.0.0.0
    assert pr.seq_p(b".") > 1 / 256


def test_rarity_rank_lists_every_byte_rarest_first():
    pr = ix.Priors([contains("eeee", "ta", "t")])
    rr = pr.rarity_rank()
    assert sorted(rr) == list(range(256))
    assert rr[-1] == ord("e") and rr[-2] == ord("t") and rr[-3] == ord("a")
    assert ix.Priors([]).rarity_rank()[-1] == 0     # no counts: ties by byte value


def test_rare_offset_is_the_offset_of_the_rarest_byte():
    rank_of = list(range(256))                 # here: the smaller the byte, the rarer
    assert ix.rare_offset(b"zyxbzy", rank_of) == 3
    assert ix.rare_offset(b"a", rank_of) == 0
    rank_of[ord("z")] = 0
    rank_of[0] = 5
    assert ix.rare_offset(b"\x00\x00z", rank_of) == 2
    # the rarest byte twice: its first offset
    rank_of = list(range(256))
    assert ix.rare_offset(b"zbcbb", rank_of) == 1
    assert ix.rare_offset(b"aa", rank_of) == 0
    assert ix.rare_offset(b"", rank_of) == 0          # no byte: offset 0


def test_lit_p_scales_by_the_positions_a_literal_can_start_at():
    # the module docstring: anywhere, 200 positions in a command line, 150 in Hashes, 50 in
    # any other field, 2,000 for a keyword search (field None: every value of the event); a
    # whole value one; a prefix or suffix three times a whole value
    pr = ix.Priors([contains("powershell -enc")])
    b = b"-enc "
    sp = pr.seq_p(b)
    for field in ("CommandLine", "Image", "Hashes"):
        assert pr.lit_p(field, b, "eq") == pytest.approx(sp, rel=1e-12)   # one position
        assert pr.lit_p(field, b, "start") == pytest.approx(3 * sp, rel=1e-12)
        assert pr.lit_p(field, b, "end") == pytest.approx(3 * sp, rel=1e-12)
    for field, positions in (("CommandLine", 200), ("ParentCommandLine", 200), ("Hashes", 150),
                             ("Image", 50), ("ParentImage", 50), ("TargetFilename", 50), ("Other", 50), (None, 2000)):
        assert pr.lit_p(field, b, "any") == pytest.approx(positions * sp, rel=1e-12), field


def test_lit_p_is_a_probability():
    pr = ix.Priors([contains("e" * 40)])
    assert pr.lit_p("CommandLine", b"", "any") == 1.0
    assert pr.lit_p("CommandLine", b"e", "any") == 1.0          # 200 * P(e) capped
    assert pr.lit_p("Company", b"e", "any") == 1.0
    for kind in ("any", "start", "end", "eq"):
        assert 0 < pr.lit_p("Image", b"\x01\x02", kind) < 1


def test_a_vocabulary_field_holds_no_rare_value_and_a_filtered_one_is_common():
    pr = ix.Priors([excluded("Microsoft Corporation", field="Company"),
                    contains("Evil Corp", field="Company"),
                    excluded("Microsoft Corporation", field="Image")])
    rare = b"zqxjv corp"
    assert pr.lit_p("Image", rare, "eq") < 1e-6
    for f in ("Company", "Product", "Description", "FileVersion", "IntegrityLevel", "User",
              "ParentUser", "LogonId", "TerminalSessionId", "Provider_Name"):
        assert f in ix.VOCAB_FIELDS
        assert pr.lit_p(f, rare, "eq") == 0.02             # far from rare: 0.02 at least
    assert pr.lit_p("Company", b"microsoft corporation", "eq") == 0.5   # a filter names it: 0.5
    assert pr.lit_p("Company", b"evil corp", "eq") < 0.5    # named, but not by a filter
    assert pr.lit_p("Image", b"microsoft corporation", "eq") < 0.5   # not a vocabulary field


def test_a_product_below_1e_15_is_not_multiplied_further():
    # no counts: every byte 1/256; 256**-6 is above 1e-15, 256**-7 below it, so the bytes
    # after the 7th are not multiplied in
    pr = ix.Priors([])
    assert pr.seq_p(b"abcdef") == 256.0 ** -6
    assert pr.seq_p(b"abcdefg") == 256.0 ** -7
    assert pr.seq_p(b"abcdefgh") == 256.0 ** -7
    assert pr.seq_p(b"abcdefg" + b"x" * 20) == 256.0 ** -7


def test_a_product_of_exactly_1e_15_goes_on():
    # One-byte literals only, so every byte's probability is order 0: (count + 1) / (65,280
    # counted bytes + 256).  With counts + 1 = 3, 191, 467, 571, 1,867, 2,713 and 6,709 for
    # "abcdefg" the product is 3*191*...*6709 / 65536**7, which rounds (once, at the last
    # byte: the partial products are exact) to exactly 1e-15: not below it, so the next byte
    # is multiplied in.
    rules, total = [], 0
    for ch, n in zip("abcdefg", (3, 191, 467, 571, 1867, 2713, 6709)):
        rules.append(contains(*[ch] * (n - 1)))
        total += n - 1
    rules.append(contains("z" * (65280 - total)))    # the rest of the counts ("z": not in the text)
    pr = ix.Priors(rules)
    assert pr.seq_p(b"abcdef") > 1e-15
    assert pr.seq_p(b"abcdefg") == 1e-15
    assert pr.seq_p(b"abcdefgh") == 1e-15 / 65536   # 'h' never counted: 1 / 65536


def test_a_memoised_probability_is_not_computed_again():
    # the memo is what keeps the anchor plans' ~10^5 questions cheap: while it holds fewer
    # than CACHE entries, a probability asked for again is answered without the model
    pr = ix.Priors([contains("abc", "bcd")])
    fresh = ix.Priors([contains("abc", "bcd")])
    grams = [bytes([0x61 + i % 5, 0x61 + i // 5 % 5, 0x61 + i // 25]) for i in range(40)]
    model_calls, seq_calls = [0], [0]
    inner_p, inner_seq = pr._p, pr.seq_p

    def counted_p(h, c):
        model_calls[0] += 1
        return inner_p(h, c)

    def counted_seq(b):
        seq_calls[0] += 1
        return inner_seq(b)

    pr._p, pr.seq_p = counted_p, counted_seq
    for g in grams:
        assert pr.lit_p("CommandLine", g, "any") == fresh.lit_p("CommandLine", g, "any")
    assert model_calls[0] > 0 and seq_calls[0] == len(grams)
    model_calls[0] = seq_calls[0] = 0
    for g in grams:
        assert pr.lit_p("CommandLine", g, "any") == fresh.lit_p("CommandLine", g, "any")
    assert seq_calls[0] == 0                         # lit_p's own memo
    for g in grams:
        assert pr.seq_p(g) == fresh.seq_p(g)
    assert model_calls[0] == 0                       # seq_p's memo


def test_memoised_probabilities_never_change_and_stay_bounded():
    pr = ix.Priors([contains("abc", "bcd")])
    fresh = ix.Priors([contains("abc", "bcd")])
    pr.CACHE = 8
    grams = [bytes([0x61 + i % 5, 0x61 + i // 5 % 5, 0x61 + i // 25]) for i in range(40)]
    for _ in range(2):
        for g in grams:
            assert pr.seq_p(g) == fresh.seq_p(g)
            assert pr.lit_p("CommandLine", g, "any") == fresh.lit_p("CommandLine", g, "any")
            assert len(pr._seq) <= 8 and len(pr._lit) <= 8


# ---------------------------------------------------------------------------------
# Automata (build_automaton) run by a plain Python walker

def scan_ac(auto, text: bytes) -> set[int]:
    """Needle indices the mode-0 automaton reports over ``text``."""
    n, ncls, cls, trans, out_off, out_ids, groups, _seqlen = auto
    s, found = 0, set()
    for b in text:
        s = trans[s * ncls + cls[b]]
        for g in out_ids[out_off[s]:out_off[s + 1]]:
            found.update(groups[g])
    return found


def walk_trie(auto, text: bytes) -> set[int]:
    """Needle indices a mode-1/2 trie reports walking ``text`` from its first byte."""
    n, ncls, cls, trans, out_off, out_ids, groups, _seqlen = auto
    s, found = 1, set()
    for b in text:
        s = trans[s * ncls + cls[b]]
        if s == 0:
            break
        for g in out_ids[out_off[s]:out_off[s + 1]]:
            found.update(groups[g])
    return found


def bfs_depths(auto, root: int) -> list[int]:
    n, ncls, _cls, trans, *_ = auto
    depth = [-1] * n
    depth[root] = 0
    q = deque([root])
    while q:
        s = q.popleft()
        for c in range(1, ncls):
            t = trans[s * ncls + c]
            if depth[t] < 0:
                depth[t] = depth[s] + 1
                q.append(t)
    return depth


needle = st.lists(st.sampled_from([0x61, 0x62, 0x63, 0xC3, 0xA9, 0xA8]), min_size=1, max_size=5).map(bytes)
folded_text = st.lists(st.sampled_from([0x61, 0x62, 0x63, 0xC3, 0xA9, 0xA8, 0x20]), max_size=24).map(bytes)


@FAST
@given(needles=st.lists(needle, min_size=1, max_size=8, unique=True), text=folded_text)
@example(needles=[b"aba", b"bab"], text=b"ababab")                 # overlapping
@example(needles=[b"abc", b"b", b"bc"], text=b"xabc")              # one inside another
@example(needles=[b"cab", b"ab"], text=b"zzcab")                   # at the very end
@example(needles=[b"\xc3\xa9", b"\xc3\xa8"], text=b"a\xc3\xa8")    # non-ASCII, exact classes
@example(needles=[b"aab"], text=b"aaab")                           # a failure back to depth 2
@example(needles=[b"\xc3\xa9"], text=b"ab")                          # no non-ASCII byte in the text
@example(needles=[b"\xc3"], text=b"\xa9")                            # a non-ASCII byte no needle holds
def test_an_exact_aho_corasick_unit_finds_exactly_the_literals_present(needles, text):
    auto = ix.build_automaton(needles, 0, True)
    assert scan_ac(auto, text) == {i for i, nd in enumerate(needles) if nd in text}
    # ASCII capitals share their lower-case letter's class: the unfolded text walks the same
    assert scan_ac(auto, text.upper()) == scan_ac(auto, text)
    # an inexact unit (the needles' non-ASCII bytes in one class) only adds hits: exactly the
    # needles present once those bytes are read as one and the same byte
    loose = ix.build_automaton(needles, 0, False)
    wide_text = one_wide(text, needles)
    assert scan_ac(loose, text) == {i for i, nd in enumerate(needles) if one_wide(nd, needles) in wide_text}
    assert scan_ac(loose, text) >= scan_ac(auto, text)


def one_wide(b: bytes, needles) -> str:
    """``b`` as an inexact unit over ``needles`` reads it: the needles' non-ASCII bytes are one
    and the same symbol (``"\0"``), every other byte is itself."""
    wide = {x for nd in needles for x in nd if x >= 0x80}
    return "".join("\0" if x in wide else chr(x + 1) for x in b)


def test_automaton_tables_are_dense_and_numbered_breadth_first():
    needles = [b"abc", b"b\xc3\xa9", b"ca", b"\xe4\xb8\xad", b"\xc2\x80\x7f"]
    for mode, root in ((0, 0), (1, 1)):
        for exact in (True, False):
            auto = ix.build_automaton(needles, mode, exact)
            n, ncls, cls, trans, out_off, out_ids, groups, seqlen = auto
            assert len(cls) == 256                                # a class for each byte value
            assert sorted(set(cls)) == list(range(ncls))        # every class is used, 0 = no needle byte
            assert all(cls[b] == 0 for b in range(256) if b not in b"abc\xc3\xa9\xe4\xb8\xad\xc2\x80\x7f"
                       and b not in b"ABC")
            assert all(cls[b] != 0 for b in b"abc\xc3\xa9\xe4\xb8\xad\xc2\x80\x7f")   # 0: no needle byte
            assert len(trans) == n * ncls and len(out_off) == n + 1
            # out_off: each state's outputs are out_ids[out_off[s]:out_off[s + 1]]
            assert out_off[0] == 0 and out_off[-1] == len(out_ids)
            assert all(a <= b for a, b in zip(out_off, out_off[1:]))
            depth = bfs_depths(auto, root)
            live = [d for d in depth[root:] if d >= 0]
            assert live == sorted(live)                           # shallow states first
            assert sorted(i for g in groups for i in g) == list(range(len(needles)))
            assert [seqlen[g] for g in range(len(groups))] == [len(needles[grp[0]]) for grp in groups]
    # exact: every non-ASCII byte its own class; inexact: one class for all of them
    exact = ix.build_automaton(needles, 0, True)[2]
    loose = ix.build_automaton(needles, 0, False)[2]
    assert len({exact[b] for b in b"\xc3\xa9\xe4\xb8\xad\xc2\x80"}) == 7
    assert len({loose[b] for b in b"\xc3\xa9\xe4\xb8\xad\xc2\x80"}) == 1
    assert loose[0x7F] not in (0, loose[0x80])          # 0x7f is ASCII: a class of its own


def test_needles_with_one_class_sequence_share_an_output():
    auto = ix.build_automaton([b"ab", b"AB", b"aB", b"b"], 0, True)
    groups = auto[6]
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [3]]
    assert scan_ac(auto, b"xab") == {0, 1, 2, 3}
    loose = ix.build_automaton([b"\xc3\xa9", b"\xc3\xa8"], 0, False)
    assert sorted(map(sorted, loose[6])) == [[0, 1]]


def test_case_sensitive_units_keep_capitals_apart():
    auto = ix.build_automaton([b"ab", b"CD"], 0, True, fold_ascii=False)
    assert scan_ac(auto, b"AB cd") == set()
    assert scan_ac(auto, b"ab CD") == {0, 1}
    folded = ix.build_automaton([b"ab", b"yz", b"`", b"{"], 0, True, fold_ascii=True)
    assert scan_ac(folded, b"AB YZ") == {0, 1}          # a..z: the whole alphabet
    assert scan_ac(folded, b"@[") == set()              # the bytes beside it are not letters


@FAST
@given(needles=st.lists(needle, min_size=1, max_size=8, unique=True), text=folded_text)
@example(needles=[b"a", b"ab", b"abc"], text=b"abc")
@example(needles=[b"abc"], text=b"ab")
@example(needles=[b"b"], text=b"ab")
def test_a_trie_finds_exactly_the_prefixes_or_suffixes(needles, text):
    pre = ix.build_automaton(needles, 1, True)
    assert walk_trie(pre, text) == {i for i, nd in enumerate(needles) if text.startswith(nd)}
    # mode 2: the suffix trie, built over reversed needles and walked from the last byte
    suf = ix.build_automaton([nd[::-1] for nd in needles], 2, True)
    assert walk_trie(suf, text[::-1]) == {i for i, nd in enumerate(needles) if text.endswith(nd)}
    # a witness trie (inexact) may only add hits: those of the needles' non-ASCII bytes read as one
    loose = walk_trie(ix.build_automaton(needles, 1, False), text)
    wide_text = one_wide(text, needles)
    assert loose == {i for i, nd in enumerate(needles) if wide_text.startswith(one_wide(nd, needles))}
    assert loose >= walk_trie(pre, text)


# ---------------------------------------------------------------------------------
# Anchor plans

def anchor_size(n: int) -> int:
    """docs/matcher.md: 8+ bytes an 8-gram; 4-7 a 4-gram; 2-3 the bigram; 1 byte itself."""
    return 8 if n >= 8 else 4 if n >= 4 else 2 if n >= 2 else 1


def anchor_scan(needles, plan, text: bytes) -> set[int]:
    """A plain anchor filter over the plan: every position whose gram is a needle's anchor
    gram is verified against the whole needle around it."""
    found = set()
    for i, (nd, (k, size)) in enumerate(zip(needles, plan)):
        gram = nd[k:k + size]
        for pos in range(len(text) - size + 1):
            if text[pos:pos + size] == gram and pos - k >= 0 and text[pos - k:pos - k + len(nd)] == nd:
                found.add(i)
    return found


def check_plan(needles, plan, pr):
    cap = ix.ANCHOR_SHARE_CAP
    assert cap == 8                         # docs/matcher.md: at most 8 needles share an anchor
    assert len(plan) == len(needles)
    load = Counter()
    for nd, (k, size) in zip(needles, plan):
        assert size == anchor_size(len(nd))
        assert 0 <= k and k + size <= len(nd)
        if size > 1:
            load[nd[k:k + size]] += 1
    for nd, (k, size) in zip(needles, plan):
        if size == 1:
            continue
        grams = [nd[j:j + size] for j in range(len(nd) - size + 1)]
        # more than 8 share this anchor only when every gram of the needle was full
        if load[nd[k:k + size]] > cap:
            assert all(load[g] >= cap for g in grams)
        # a rarer gram (by the priors; ties: the first) was passed over only when full
        mine = (pr.seq_p(nd[k:k + size]), k)
        for j, g in enumerate(grams):
            if (pr.seq_p(g), j) < mine:
                assert load[g] >= cap, (nd, k, j)


alpha_needle = st.lists(st.sampled_from(b"ab\xc3"), min_size=1, max_size=12).map(bytes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(needles=st.lists(alpha_needle, min_size=1, max_size=30, unique=True),
       prior_lits=st.lists(st.text("ab", min_size=1, max_size=9), max_size=4),
       text=st.lists(st.sampled_from(b"ab\xc3 "), max_size=40).map(bytes))
@example(needles=[b"a"], prior_lits=[], text=b"xa")                       # 1 byte: itself
@example(needles=[b"abb"], prior_lits=[], text=b"abb")                    # shorter than a 4-gram
@example(needles=[b"ab", b"abab", b"abababab"], prior_lits=["ab"],       # exactly one gram long
         text=b"xabababab")
@example(needles=[b"babba"], prior_lits=["bb"], text=b"aaababba")          # at the very end
@example(needles=[b"a" * 9 + bytes([x]) for x in b"ab\xc3"] + [b"a" * 8, b"ba" * 5], prior_lits=[],
         text=b"a" * 12)
def test_an_anchor_plan_is_exact_after_verification(needles, prior_lits, text):
    pr = ix.Priors([contains(*prior_lits)] if prior_lits else [])
    plan = ix.anchor_plan(needles, pr)
    check_plan(needles, plan, pr)
    assert anchor_scan(needles, plan, text) == {i for i, nd in enumerate(needles) if nd in text}


def test_the_rarest_gram_is_the_anchor():
    pr = ix.Priors([contains("system32", "\\system32\\", "32.exe")])
    nd = b"\\system32\\grunt.exe"
    (k, size), = ix.anchor_plan([nd], pr)
    assert size == 8
    scores = [(pr.seq_p(nd[j:j + 8]), j) for j in range(len(nd) - 7)]
    assert (pr.seq_p(nd[k:k + 8]), k) == min(scores)
    assert b"grunt" in nd[k:k + 8] or b"unt." in nd[k:k + 8]    # not inside "system32"
    # equal grams under no counts: the first position
    assert ix.anchor_plan([b"abcdefghij"], ix.Priors([])) == [(0, 8)]


def test_at_most_eight_needles_share_an_anchor_while_they_have_another():
    # 20 needles whose first 4-gram is common to all and is the rarest; each has a gram of its own
    pr = ix.Priors([contains(*[f"{c}{c}" for c in "klmnopqrstuvwxyzABCD"])])
    needles = [b"abcd" + bytes([c, c]) for c in b"klmnopqrstuvwxyzabcd"]
    needles[-4:] = [b"abcd" + bytes([c]) * 2 for c in b"EFGH"]
    plan = ix.anchor_plan(needles, pr)
    check_plan(needles, plan, pr)
    assert sum(1 for nd, (k, s) in zip(needles, plan) if nd[k:k + s] == b"abcd") == 8


def test_when_every_gram_is_full_the_least_loaded_one_is_taken():
    # 18 copies of a 9-byte needle: two 8-grams, equal under no counts. The first eight take
    # the first gram, the next eight the second; then both are full: the least loaded (a tie,
    # so the first position), then the second, now the less loaded one.
    needles = [b"abcdefghi"] * 18
    plan = ix.anchor_plan(needles, ix.Priors([]))
    assert plan == [(0, 8)] * 8 + [(1, 8)] * 8 + [(0, 8), (1, 8)]
    # the same with 4-grams: a 6-byte needle has three of them
    plan = ix.anchor_plan([b"abcdef"] * 26, ix.Priors([]))
    assert plan == [(0, 4)] * 8 + [(1, 4)] * 8 + [(2, 4)] * 8 + [(0, 4), (1, 4)]


def test_shorter_needles_choose_first():
    # a needle with fewer grams has less choice, so shorter needles choose first: with 8 needles
    # "ab" and a 3-byte one listed before them, "ab" is full by the time the 3-byte needle
    # chooses, so it takes its second bigram although "ab" is the rarer one
    needles = [b"abb"] + [b"ab"] * 8
    plan = ix.anchor_plan(needles, ix.Priors([contains("bb")]))
    assert plan[1:] == [(0, 2)] * 8
    assert plan[0] == (1, 2)


# ---------------------------------------------------------------------------------
# Regex prefilters and witnesses

def holds(f, folded: bytes, raw: bytes) -> bool:
    """Evaluate a prefilter condition as its comment in index.py defines it."""
    k = f[0]
    if k == "any":
        return True
    if k == "lit":
        return f[1] in folded
    if k == "and":
        return all(holds(g, folded, raw) for g in f[1])
    if k == "or":
        return any(holds(g, folded, raw) for g in f[1])
    if k == "run":
        table, n = f[1], f[2]
        run = 0
        for b in raw:
            run = run + 1 if table[b] else 0
            if run >= n:
                return True
        return False
    raise AssertionError(f"unknown prefilter node {f!r}")


ATOMS = ["a", "b", "c", "i", "s", "k", "x", "I", "S", "K", ".", "[ab]", "[a-d]", "[a-e]", "[^a]",
         r"\d", r"\w", r"\s", "[is]", "(?:ab)", "é", "[éè]", r"\.", "ſ", "ı"]


@st.composite
def regexes(draw, depth=0):
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 9 if depth < 2 else 6))
        if kind <= 4:
            atom = draw(st.sampled_from(ATOMS))
        elif kind <= 6:
            atom = draw(st.sampled_from(ATOMS)) + draw(st.sampled_from(
                ["*", "+", "?", "{2}", "{0,2}", "{1,3}", "{8,}", "{9}", "*?", "{3,}"]))
        elif kind <= 8:
            alts = draw(st.lists(regexes(depth + 1), min_size=1, max_size=3))
            atom = "(" + "|".join(alts) + ")" + draw(st.sampled_from(["", "", "?", "+", "{2}"]))
        else:
            atom = draw(st.sampled_from(["^", "$", r"\b", "(?=a)"]))
        parts.append(atom)
    return "".join(parts)


def regex_text():
    piece = st.one_of(st.text(st.sampled_from(list("abcdeiskxISKK .\n0123456789éèſıİ")), max_size=10),
                      st.sampled_from(["ab", "abab", "ccc", "1234567890", "is", "IS", "ſ", "ı",
                                       "aaaaaaaaa", "xk", "٣٣٣٣٣٣٣٣٣"]))
    return st.lists(piece, max_size=5).map("".join)


def literal_cost(b: bytes) -> float:
    return 1.0 / (1 + len(b))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=regexes(), letters=st.sampled_from(["", "i", "s", "is", "m"]), text=regex_text())
@example(pattern="ice", letters="i", text="ıce")                  # re folds ı with i: no "i" literal
@example(pattern="ss", letters="i", text="ſs")
@example(pattern="(i)", letters="i", text="ı")                   # a group keeps the flags
@example(pattern="ca+d", letters="", text="caad")                 # a repeat ends an exact run
@example(pattern="c(ab){1,2}d", letters="", text="cababd")
@example(pattern="a[bc]", letters="", text="xac")
@example(pattern=r"x\d{8,}", letters="", text="x٣٣٣٣٣٣٣٣٣")      # a run of non-ASCII digits
@example(pattern="[ab][ab][ab][ab][ab]c", letters="", text="babab c ababac")
@example(pattern="(abc|ab.d)e", letters="", text="abxde")
@example(pattern="z([ab][ab][ab][ab][cd])", letters="", text="zababc")   # 32 strings: cut
def test_a_regex_prefilter_holds_on_every_match(pattern, letters, text):
    flags = regex_flags(letters)
    m = re.search(pattern, text, flags)
    lo, cond = ix.regex_prefilter(pattern, flags)
    if m is None:
        return
    folded, raw = ix.enc(text.lower()), ix.enc(text)
    assert m.end() - m.start() >= lo
    assert holds(cond, folded, raw), (pattern, cond)
    w = ix.prefilter_witness(cond, literal_cost)
    if w is not None:
        assert any(b in folded for b in w[1])
        assert set(w[1]) <= set(ix.prefilter_literals(cond))


@pytest.mark.parametrize("pattern,flags,want", [
    ("abc", 0, (3, ("lit", b"abc"))),
    ("ABC", re.I, (3, ("lit", b"abc"))),
    ("(a|b)c", 0, (2, ("or", [("lit", b"ac"), ("lit", b"bc")]))),
    ("[a-d]x", 0, (2, ("or", [("lit", b"ax"), ("lit", b"bx"), ("lit", b"cx"), ("lit", b"dx")]))),
    ("[a-e]x", 0, (2, ("lit", b"x"))),                # a class of more than 4: not alternatives
    ("ab.*cd", 0, (4, ("and", [("lit", b"ab"), ("lit", b"cd")]))),
    ("x(?:yz)?w", 0, (2, ("and", [("lit", b"x"), ("lit", b"w")]))),
    ("(ab){2}c", 0, (5, ("and", [("lit", b"ab"), ("lit", b"c")]))),
    ("kit", re.I, (3, ("lit", b"t"))),               # under i, "i" splits the literal
    ("abisxy", 0, (6, ("lit", b"abisxy"))),
    ("(?i)abisxy", 0, (6, ("and", [("lit", b"ab"), ("lit", b"xy")]))),   # the inline flag counts
    ("(?i)k", 0, (1, ("any",))),                     # K (Kelvin) folds to k: not certain
    ("(?i)(?:is)x", 0, (3, ("lit", b"x"))),          # a group inherits the flags
    ("(?i)ab(?-i:is)", 0, (4, ("lit", b"abis"))),    # and a group can drop one
    ("a|", 0, (0, ("any",))),
    ("(foo|ba.r)", 0, (3, ("or", [("lit", b"foo"), ("and", [("lit", b"ba"), ("lit", b"r")])]))),
    ("a(?=b)c", 0, (2, ("and", [("lit", b"a"), ("lit", b"c")]))),   # lookaround: nothing known
    ("(ab|c*)de", 0, (2, ("lit", b"de"))),            # an alternative with nothing known
    ("([ab]c|d.e)", 0, (2, ("or", [("lit", b"ac"), ("lit", b"bc"),   # or inside or: one or
                                   ("and", [("lit", b"d"), ("lit", b"e")])]))),
    ("xa{1}b", 0, (3, ("lit", b"xab"))),             # a repeat of exactly once stays exact
    ("x(ab){1}c", 0, (4, ("lit", b"xabc"))),
    ("(", 0, (0, ("any",))),                         # not a regex: nothing known
    ("(ab|cd)e", 0, (3, ("or", [("lit", b"abe"), ("lit", b"cde")]))),   # exact alternatives
    ("a\x7f[\x7f]b", 0, (4, ("lit", b"a\x7f\x7fb"))),   # 0x7f is ASCII
    ("z([ab][ab][ab][ab][cd])", 0, (6, ("and", [     # 16 strings, then 32: cut after 16
        ("or", [("lit", bytes(x)) for x in sorted(itertools.product(b"ab", repeat=4))]),
        ("or", [("lit", b"c"), ("lit", b"d")]), ("lit", b"z")]))),
    (r"ab[^\W\w]cd", re.A, (5, ("and", [("lit", b"ab"), ("lit", b"cd")]))),   # a class of nothing
])
def test_prefilter_forms(pattern, flags, want):
    assert ix.regex_prefilter(pattern, flags) == want


def test_a_regex_prefilter_does_not_depend_on_the_regexes_planned_before_it():
    # docs/matcher.md: each regex may need its own bounded number of character-set scans; a
    # prefilter is a function of its regex, so planning another regex (here one that uses up
    # the scans) first must not cost the next one its literals
    from sensor.detect.charsets import MAX_SCANS_PER_REGEX
    from sensor.detect.regex import plan
    rx = "(?i)" + "".join(chr(0xE0 + i) for i in range(5)) + "abcd"
    fresh = ix.regex_prefilter(rx, 0)
    assert fresh[1] != ("any",) and b"abcd" in ix.prefilter_literals(fresh[1])
    plan("(?i)" + "".join(chr(0x100 + 2 * i) for i in range(MAX_SCANS_PER_REGEX)))
    assert ix.regex_prefilter(rx, 0) == fresh
    plan(rx)
    assert ix.regex_prefilter(rx, 0) == fresh


def test_negated_characters_cost_no_character_set_scan():
    # docs/matcher.md: a regex may need only a bounded number of character-set scans (8);
    # a negated character is never an exact set, so it needs none, and nine of them
    # (non-ASCII, under i) leave the literal after them in the prefilter
    from sensor.detect.charsets import MAX_SCANS_PER_REGEX
    rx = "(?i)" + "".join(f"[^{chr(0xE0 + i)}]" for i in range(MAX_SCANS_PER_REGEX + 1)) + "abcd"
    lo, cond = ix.regex_prefilter(rx, 0)
    assert lo == MAX_SCANS_PER_REGEX + 5 and b"abcd" in ix.prefilter_literals(cond)


def test_a_regex_past_the_scan_bound_gets_a_prefilter_without_an_error():
    # charsets: a regex may need at most 8 character-set scans (one per non-ASCII character
    # under i), and one that needs more is refused: its prefilter is "nothing known", with
    # no error; one that needs exactly 8 keeps its literals
    from sensor.detect.charsets import MAX_SCANS_PER_REGEX
    assert MAX_SCANS_PER_REGEX == 8
    chars = "".join(chr(0xE0 + i) for i in range(8))
    lo, cond = ix.regex_prefilter("(?i)" + chars + "abcd", 0)
    assert lo == 12 and b"abcd" in ix.prefilter_literals(cond)
    chars += "\u00e8"
    lo, cond = ix.regex_prefilter("(?i)" + chars + "abcd", 0)
    assert (lo, cond) == (13, ("any",))


def test_exact_sets_multiply_up_to_sixteen_strings():
    lo, cond = ix.regex_prefilter("[ab][ab][ab][ab]", 0)      # 16 strings: still exact
    assert lo == 4 and cond[0] == "or" and len(cond[1]) == 16
    lo, cond = ix.regex_prefilter("[ab][ab][ab][ab][ab]", 0)  # 32: cut
    assert cond[0] == "and"
    assert all(len(x) <= 16 for x in ix.prefilter_literals(cond))
    lo, cond = ix.regex_prefilter("(a|b|c|d)(e|f|g|h)", 0)     # 16 from alternations
    assert cond[0] == "or" and len(cond[1]) == 16
    alts = "|".join(c * 2 for c in "abcdefghjklmnopqr")
    sixteen = alts[:-3]
    lo, cond = ix.regex_prefilter(f"({sixteen})x", 0)       # 16 alternatives: still exact
    assert cond == ("or", [("lit", c.encode() * 2 + b"x") for c in "abcdefghjklmnopq"])
    lo, cond = ix.regex_prefilter(f"({alts})x", 0)          # 17 alternatives: not exact
    assert cond == ("and", [("or", [("lit", c.encode() * 2) for c in "abcdefghjklmnopqr"]), ("lit", b"x")])


def test_a_long_repeat_of_a_class_becomes_a_run():
    lo, cond = ix.regex_prefilter(r"\d{8}", 0)
    assert lo == 8
    assert cond[0] == "run" and cond[2] == 8
    table = cond[1]
    assert [c for c in range(128) if table[c]] == list(range(0x30, 0x3A))
    assert all(table[c] for c in range(128, 256))          # \d holds non-ASCII digits
    assert ix.regex_prefilter("[a-z]{7}", 0) == (7, ("any",))   # shorter than 8: no run
    lo, cond = ix.regex_prefilter("[a-z]{9}", re.ASCII)
    assert cond[0] == "run" and not any(cond[1][128:])      # ASCII only: no byte 0x80+
    assert ix.regex_prefilter("(ab){9}", 0)[1] == ("lit", b"ab")   # not one character: no run
    # a table has one entry per byte value, 1 for a member and 0 for the others
    for rx, flags in ((r"\d{8}", 0), ("[a-z]{9}", re.ASCII), ("[^a]{8}", 0), ("[\x00-\x7f]{8}", re.ASCII)):
        table = ix.regex_prefilter(rx, flags)[1][1]
        assert len(table) == 256 and set(table) <= {0, 1}, rx
    table = ix.regex_prefilter("[^a]{8}", 0)[1][1]
    assert [c for c in range(256) if not table[c]] == [ord("a")]
    table = ix.regex_prefilter("[\x00-\x7f]{8}", re.ASCII)[1][1]
    assert list(table) == [1] * 128 + [0] * 128


def test_prefilter_witness_picks_the_cheapest_operand_of_and_the_union_of_or():
    cost = {b"a": 3.0, b"b": 1.0, b"c": 2.0}.get
    lit = lambda b: ("lit", b)     # noqa: E731
    assert ix.prefilter_witness(lit(b"a"), cost) == (3.0, [b"a"])
    assert ix.prefilter_witness(("and", [lit(b"a"), lit(b"b"), lit(b"c")]), cost) == (1.0, [b"b"])
    assert ix.prefilter_witness(("or", [lit(b"a"), lit(b"b")]), cost) == (4.0, [b"a", b"b"])
    both = ("and", [("or", [lit(b"b"), lit(b"c")]), lit(b"a")])    # 3.0 against 3.0: the first
    assert ix.prefilter_witness(both, cost) == (3.0, [b"b", b"c"])
    # nothing known: no witness, so the rule is always evaluated
    assert ix.prefilter_witness(("any",), cost) is None
    assert ix.prefilter_witness(("or", [lit(b"a"), ("any",)]), cost) is None
    assert ix.prefilter_witness(("run", bytes(256), 8), cost) is None
    assert ix.prefilter_witness(("and", [("run", bytes(256), 8), lit(b"c")]), cost) == (2.0, [b"c"])
    assert ix.prefilter_literals(("and", [("run", bytes(256), 8), ("or", [lit(b"a"), lit(b"b")]),
                                          lit(b"c")])) == [b"a", b"b", b"c"]
    assert ix.prefilter_literals(("any",)) == []


# ---------------------------------------------------------------------------------
# Chain forms

def chain_search(lits, dotall: bool, text: bytes) -> bool:
    """The literals in order, without overlap, within one line unless dotall."""
    for part in ([text] if dotall else text.split(b"\n")):
        pos = 0
        for lit in lits:
            at = part.find(lit, pos)
            if at < 0:
                break
            pos = at + len(lit)
        else:
            return True
    return False


@FAST
@given(lits=st.lists(st.text("ab1-", min_size=1, max_size=3), min_size=1, max_size=3),
       letters=st.sampled_from(["", "s", "i", "m"]),
       text=st.text(st.sampled_from(list("ab1-AB\n")), max_size=20))
@example(lits=["ab", "ab"], letters="", text="ab")
@example(lits=["ab", "b"], letters="", text="ab\nb")
@example(lits=["ab", "b"], letters="s", text="ab\nb")
def test_a_chain_form_answers_like_the_regex(lits, letters, text):
    pattern = ".*".join(re.escape(x) for x in lits)
    flags = regex_flags(letters)
    cf = ix.chain_form(pattern, flags)
    if letters == "i" and any(c.isalpha() for x in lits for c in x):
        assert cf is None                               # letters have case under i
        return
    assert cf is not None
    got, dotall = cf
    assert got == [x.encode() for x in lits] and dotall == (letters == "s")
    assert chain_search(got, dotall, text.encode()) == bool(re.search(pattern, text, flags))


@pytest.mark.parametrize("pattern,flags,want", [
    ("abc", 0, ([b"abc"], False)),
    ("a.*b.*c", re.S, ([b"a", b"b", b"c"], True)),
    (".*ab.*", 0, ([b"ab"], False)),
    ("(?s)ab.*cd", 0, ([b"ab", b"cd"], True)),
    ("12.*34", re.I, ([b"12", b"34"], False)),       # no case: still a chain under i
    ("ab.*?cd", 0, ([b"ab", b"cd"], False)),
    ("a.+b", 0, None), ("a.{0,5}b", 0, None), ("a[bc]", 0, None), ("ab|cd", 0, None),
    ("aé", 0, None), ("a\x80b", 0, None), ("\x7fb", 0, ([b"\x7fb"], False)),   # ASCII: below 128
    ("ab", re.I, None), ("a\\.*b", 0, None), (".*", 0, None), ("", 0, None),
    ("(", 0, None),
])
def test_chain_forms(pattern, flags, want):
    assert ix.chain_form(pattern, flags) == want


# ---------------------------------------------------------------------------------
# Glob programs

def run_glob(prog: list[int], text: str) -> bool:
    """The program read back as the layout says, matched against the whole text (``?``: any
    one code point; a star between segments and, when flagged, at either end)."""
    nseg, lead, trail = prog[0], prog[1], prog[2]
    items: list = ["*"] if lead else []
    i = 3
    for j in range(nseg):
        n = prog[i]
        if j:
            items.append("*")
        items.extend(prog[i + 1:i + 1 + n])
        i += 1 + n
    assert i == len(prog)
    if trail and nseg:
        items.append("*")
    cps = [ord(c) for c in text]
    memo: dict = {}

    def match(a: int, b: int) -> bool:
        if (a, b) not in memo:
            if a == len(items):
                ok = b == len(cps)
            elif items[a] == "*":
                ok = match(a + 1, b) or (b < len(cps) and match(a, b + 1))
            else:
                ok = b < len(cps) and items[a] in (0xFFFFFFFF, cps[b]) and match(a + 1, b + 1)
            memo[a, b] = ok
        return memo[a, b]

    return match(0, 0)


glob_pattern = st.text(st.sampled_from(list("ab*?é\\")), max_size=8)


@settings(max_examples=200, deadline=None)
@given(pattern=glob_pattern, text=st.text(st.sampled_from(list("abé?*\\")), max_size=8))
@example(pattern="", text="")
@example(pattern="", text="a")
@example(pattern="*", text="")
@example(pattern="a*", text="ba")
@example(pattern="*a", text="ab")
@example(pattern="a?b", text="aéb")
@example(pattern="a\\*b", text="a*b")
def test_a_glob_program_means_the_glob(pattern, text):
    tokens = [t if t is STAR or t is QMARK else t.lower() for t in glob_tokens(pattern)]
    prog = ix.glob_program(tokens, STAR, QMARK)
    assert run_glob(prog, text) == bool(glob_to_regex(pattern).fullmatch(text))


def test_glob_program_layout():
    assert ix.glob_program([], STAR, QMARK) == [0, 0, 0]
    assert ix.glob_program([STAR], STAR, QMARK) == [0, 1, 1]
    assert ix.glob_program(["ab", STAR, "c"], STAR, QMARK) == [2, 0, 0, 2, 97, 98, 1, 99]
    assert ix.glob_program([STAR, "a", QMARK, "é", STAR], STAR, QMARK) == [1, 1, 1, 3, 97, 0xFFFFFFFF, 0xE9]
    assert ix.glob_program([QMARK], STAR, QMARK) == [1, 0, 0, 1, 0xFFFFFFFF]
