"""Rule regexes (Sigma ``|re``) with Python ``re`` semantics, run in linear time.

A Sigma regex means what Python's ``re.search`` says it means (the IR, docs/sigma.md):
unanchored search, case-sensitive unless ``i``, flags ``i``/``m``/``s``, Unicode
``\\d``/``\\s``/``\\w``, Python's ``$`` (also before a final newline), ``\\Z``, ``x{,5}``...
Python's engine backtracks, so one crafted value can take seconds or hours.  This module
runs the same regexes on RE2 (google-re2), whose time is linear in the text, and gives the
same answer as ``re.search(pattern, text, flags) is not None`` for every text.

How the answer stays Python's
-----------------------------
The pattern text is never handed to RE2 (the two dialects read ``$``, ``\\Z``, ``\\s``,
``(?i)``, ``x{,5}``, ``[[:alpha:]]`` differently).  It is parsed with Python's own parser
(``re._parser``), and the tree is rewritten:

* Every node that consumes one character (a literal, a class, ``.``, ``\\d``...) under the
  flags in force there is turned into an exact set of code points.  ASCII members are
  found by running Python's engine on each of the 128 ASCII characters.  The non-ASCII part
  is a union of *atoms*: explicit ranges, or a Unicode category (``\\d`` = decimal digit,
  ``\\s`` = whitespace, ``\\w`` = alphanumeric, tested with the same CPython predicates
  ``re`` uses; a test checks them against ``re`` on all 1,114,112 code points).  Under
  IGNORECASE an ASCII letter's non-ASCII partners are among U+0130, U+0131, U+017F and
  U+212A (the ``re`` documentation names exactly these four), and Python's engine decides
  which.  Anything less regular (a case-insensitive non-ASCII literal, a class mixing cased
  letters with ``\\w`` under IGNORECASE) is computed by running Python's engine over every
  non-ASCII code point once.
* RE2 then runs in Latin-1 mode over an alphabet of one byte per character: every ASCII
  character stands for itself, and every non-ASCII character is replaced by a byte that
  has the same membership in every set of this regex (an ASCII character with that
  membership when there is one, else a byte 0x80-0xFF).  Each set becomes a byte class.
  Python's answer depends on a character only through those memberships (and on whether
  it is a newline or, for ``\\b``, a word character, which the mapping keeps), so the
  answer is unchanged.  ASCII text needs no mapping at all; other text is mapped in one
  pass.  Lone surrogates are ordinary code points here.
* Structure maps one to one: sequences, alternatives, groups (non-capturing), greedy and
  lazy repeats (laziness does not change *whether* a match exists), ``\\A``, ``\\Z``
  (RE2 ``\\z``), ``^``/``$`` with ``m`` (both engines break lines at ``\\n`` only), ``\\b``
  and ``\\B``.  ``$`` without ``m`` matches at the end or before a final newline; at the end
  of the pattern that is the consuming ``\\n?\\z``.  The answer on the empty text is
  Python's, computed once (Python 3.11's ``\\B`` never matches an empty string).

What RE2 cannot run
-------------------
Backreferences, lookahead/lookbehind, conditionals, atomic groups and possessive repeats
need a backtracking engine; so does ``$`` (without ``m``) anywhere but at the end, and a
repeat count above RE2's limit of 1,000.  :func:`plan` says why; the rule loader rejects
such a rule unless the operator opts in, and then :class:`BudgetRegex` runs it under a hard
step budget (sensor.detect.backtrack).
"""
from __future__ import annotations

import bisect
import re
import re._constants as _K
import re._parser as _parser
import warnings
from dataclasses import dataclass
from functools import lru_cache

from . import charsets as _cs
from .backtrack import BudgetRegex
from .charsets import (_MAXCP, CharSet, RegexUnsupported, _ascii_mask, cat_bits, char_set,
                       py_flags)

ENGINE_RE2 = "re2"
ENGINE_BACKTRACK = BudgetRegex.engine
ENGINE_REFUSED = "refused"     # too costly to prepare for any engine

RE2_MAX_REPEAT = 1000


# ---------------------------------------------------------------------------------
# Translation.

_CHAR_OPS = frozenset({_K.LITERAL, _K.NOT_LITERAL, _K.IN, _K.ANY})
_BACKTRACK_OPS = {
    _K.GROUPREF: "a backreference",
    _K.GROUPREF_EXISTS: "a conditional group (?(n)...)",
    _K.ASSERT: "a lookahead/lookbehind",
    _K.ASSERT_NOT: "a negative lookahead/lookbehind",
    _K.ATOMIC_GROUP: "an atomic group (?>...)",
    _K.POSSESSIVE_REPEAT: "a possessive repeat (*+, ++, ?+, {m,n}+)",
}


def _local_flags(flags: int, add: int, rem: int) -> int:
    return (flags | add) & ~rem


class _Walk:
    """Collect the char sets of a parsed regex and check RE2 can run its structure."""

    def __init__(self):
        self.sets: list[CharSet] = []
        self.index: dict[CharSet, int] = {}
        self.boundary = False        # uses \b or \B
        self.boundary_ascii = None   # the flags of \b agree: ASCII-only word class or not

    def set_id(self, cs: CharSet) -> int:
        i = self.index.get(cs)
        if i is None:
            i = self.index[cs] = len(self.sets)
            self.sets.append(cs)
        return i

    def walk(self, items, flags: int, tail: bool) -> list:
        """The sequence as a tree of ("set", id) / ("seq", ...) / ("alt", ...) / ("rep", ...)
        / ("at", kind); ``tail``: nothing at all follows this sequence in the pattern."""
        out = []
        n = len(items)
        for k, (op, av) in enumerate(items):
            last = tail and k == n - 1
            if op in _BACKTRACK_OPS:
                raise RegexUnsupported("uses " + _BACKTRACK_OPS[op])
            if op in _CHAR_OPS:
                out.append(("set", self.set_id(char_set((op, av), flags))))
            elif op is _K.SUBPATTERN:
                _group, add, rem, sub = av
                out.append(("seq", self.walk(list(sub), _local_flags(flags, add, rem), last)))
            elif op is _K.BRANCH:
                out.append(("alt", [self.walk(list(alt), flags, last) for alt in av[1]]))
            elif op in (_K.MAX_REPEAT, _K.MIN_REPEAT):
                lo, hi, sub = av
                if lo > RE2_MAX_REPEAT or (hi is not _K.MAXREPEAT and hi > RE2_MAX_REPEAT):
                    raise RegexUnsupported(f"a repeat count above {RE2_MAX_REPEAT} "
                                           f"({{{lo},{'' if hi is _K.MAXREPEAT else hi}}})")
                inner_tail = last and hi is not _K.MAXREPEAT and hi <= 1
                out.append(("rep", lo, None if hi is _K.MAXREPEAT else hi,
                            self.walk(list(sub), flags, inner_tail)))
            elif op is _K.AT:
                out.append(("at", self.anchor(av, flags, last)))
            else:
                raise RegexUnsupported(f"uses {op}, which is not supported")
        return out

    def anchor(self, code, flags: int, last: bool) -> str:
        multi = bool(flags & re.MULTILINE)
        if code is _K.AT_BEGINNING:
            return "(?m:^)" if multi else r"\A"
        if code is _K.AT_BEGINNING_STRING:
            return r"\A"
        if code is _K.AT_END_STRING:
            return r"\z"
        if code is _K.AT_END:
            if multi:
                return "(?m:$)"
            if not last:
                raise RegexUnsupported("uses $ (without the m flag) before the end of the pattern")
            return r"(?:\n?\z)"
        if code in (_K.AT_BOUNDARY, _K.AT_NON_BOUNDARY):
            asc = bool(flags & re.ASCII)
            if self.boundary and self.boundary_ascii != asc:
                raise RegexUnsupported(r"mixes ASCII and Unicode \b")
            self.boundary = True
            self.boundary_ascii = asc
            return r"\b" if code is _K.AT_BOUNDARY else r"\B"
        raise RegexUnsupported(f"uses the anchor {code}, which is not supported")


def _byte_class(members: list[int]) -> str:
    if not members:
        return r"[^\x00-\xff]"
    if len(members) == 256:
        return r"[\x00-\xff]"
    out = []
    i = 0
    while i < len(members):
        j = i
        while j + 1 < len(members) and members[j + 1] == members[j] + 1:
            j += 1
        out.append(rf"\x{members[i]:02x}" if i == j else rf"\x{members[i]:02x}-\x{members[j]:02x}")
        i = j + 1
    return "[" + "".join(out) + "]"


def _emit(tree: list, classes: list[str]) -> str:
    out = []
    for node in tree:
        kind = node[0]
        if kind == "set":
            out.append(classes[node[1]])
        elif kind == "seq":
            out.append("(?:" + _emit(node[1], classes) + ")")
        elif kind == "alt":
            out.append("(?:" + "|".join(_emit(a, classes) for a in node[1]) + ")")
        elif kind == "rep":
            lo, hi, sub = node[1], node[2], node[3]
            body = "(?:" + _emit(sub, classes) + ")"
            if hi is None:
                out.append(body + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}"))
            elif lo == hi:
                out.append(body + f"{{{lo}}}")
            elif (lo, hi) == (0, 1):
                out.append(body + "?")
            else:
                out.append(body + f"{{{lo},{hi}}}")
        else:
            out.append(node[1])
    return "".join(out)


@dataclass
class Alphabet:
    """How a text's characters become RE2 bytes.  An ASCII character ``c`` becomes
    ``ascii_map[c]`` (itself when ``ascii_map`` is None: ASCII text is used as is); a
    non-ASCII code point ``cp`` becomes ``table[seg * 8 + (cat_bits(cp) & catmask)]`` where
    ``seg`` is ``bisect_right(bounds, cp)``."""

    bounds: tuple          # sorted code points where the explicit-range membership changes
    table: bytes           # (len(bounds) + 1) * 8 bytes
    catmask: int           # the category bits any set looks at
    ascii_map: bytes | None = None


_WORD_BYTES = [c for c in range(128) if chr(c).isalnum() or c == 0x5F]
_OTHER_BYTES = [c for c in range(256) if c not in _WORD_BYTES and c != 0x0A]


def _alphabet(walk: _Walk, identity: bool) -> tuple[Alphabet, list[list[int]]]:
    """The byte of every character, and each set's byte class.

    ``identity``: ASCII characters stand for themselves and a non-ASCII character takes the
    byte of an ASCII character with the same memberships, or a byte 0x80-0xFF.  Otherwise
    (needed when a ``\\b`` regex has a non-ASCII word class no ASCII character shares) every
    distinct membership gets its own byte, word classes a byte RE2 counts as a word
    character.  A newline is only ever itself (the anchors look at it)."""
    sets = list(walk.sets)
    if walk.boundary:   # \b looks at word-ness: keep it in the mapping like a set
        w = CharSet(_ascii_mask((_K.IN, [(_K.CATEGORY, _K.CATEGORY_WORD)]),
                                re.ASCII if walk.boundary_ascii else re.UNICODE),
                    False, frozenset() if walk.boundary_ascii else frozenset([("c", 4, True)]))
        sets.append(w)
    bset = set()
    catmask = 0
    for s in sets:
        for a in s.atoms:
            if a[0] == "r":
                for lo, hi in a[1]:
                    bset.add(lo)
                    bset.add(hi + 1)
            else:
                catmask |= a[1]
    bounds = tuple(sorted(b for b in bset if 128 < b < _MAXCP))
    starts = (128,) + bounds     # a representative code point per segment
    vec_byte: dict[tuple, int] = {}
    word_free = list(_WORD_BYTES)
    other_free = [c for c in _OTHER_BYTES if c >= 128] if identity else list(_OTHER_BYTES)

    def byte_for(vec: tuple) -> int:
        byte = vec_byte.get(vec)
        if byte is None:
            word = walk.boundary and vec[-1]
            if identity and word:
                raise RegexUnsupported("word class without an ASCII twin")
            pool = word_free if word else other_free
            if not pool:
                raise RegexUnsupported("needs more distinct character classes than a byte holds")
            byte = vec_byte[vec] = pool.pop(0)
        return byte

    ascii_map = bytearray(128)
    for c in range(128):
        vec = tuple(bool(s.ascii >> c & 1) for s in sets)
        if c == 0x0A:
            ascii_map[c] = 0x0A
        elif identity:
            ascii_map[c] = c
            vec_byte.setdefault(vec, c)
        else:
            ascii_map[c] = byte_for(vec)
    table = bytearray((len(bounds) + 1) * 8)
    combos = [b for b in range(8) if b & ~catmask == 0]
    for seg, cp in enumerate(starts):
        for bits in combos:
            byte = byte_for(tuple(s.has_nonascii(cp, bits) for s in sets))
            for extra in range(8):          # bits no set looks at map to the same byte
                if extra & catmask == bits:
                    table[seg * 8 + extra] = byte
    members = []
    for i in range(len(walk.sets)):
        m = {ascii_map[c] for c in range(128) if walk.sets[i].ascii >> c & 1}
        m.update(b for vec, b in vec_byte.items() if vec[i])
        members.append(sorted(m))
    return Alphabet(bounds, bytes(table), catmask, None if identity else bytes(ascii_map)), members


@dataclass
class Plan:
    """How a regex runs: on RE2 (``pattern`` in the byte alphabet) or, when ``reason`` is
    set, only on the budgeted backtracking engine."""

    source: str
    flags: str
    engine: str
    reason: str | None = None
    pattern: bytes = b""
    alphabet: Alphabet | None = None
    empty: bool = False


def _re2_options():
    import re2

    opts = re2._re2.RE2.Options()
    opts.encoding = re2._re2.RE2.Options.Encoding.LATIN1
    opts.case_sensitive = True
    opts.never_capture = True
    opts.log_errors = False
    return opts


@lru_cache(maxsize=1024)
def plan(source: str, flags: str = "") -> Plan:
    """Decide how the regex runs (raises ``re.error`` when Python cannot parse it)."""
    pf = py_flags(flags)
    with warnings.catch_warnings():      # Python's own FutureWarnings (nested sets...)
        warnings.simplefilter("ignore")
        parsed = _parser.parse(source, pf)
        empty = re.search(source, "", pf) is not None
    gflags = parsed.state.flags
    if gflags & re.LOCALE:
        return Plan(source, flags, ENGINE_BACKTRACK, "uses the LOCALE flag", empty=empty)
    walk = _Walk()
    _cs.scan_count[0] = 0
    try:
        tree = walk.walk(list(parsed), gflags, True)
        try:
            alpha, members = _alphabet(walk, True)
        except RegexUnsupported:
            alpha, members = _alphabet(walk, False)
    except RegexUnsupported as exc:
        return Plan(source, flags, ENGINE_REFUSED if exc.refused else ENGINE_BACKTRACK,
                    exc.reason, empty=empty)
    pattern = _emit(tree, [_byte_class(m) for m in members]).encode("latin-1")
    from re2 import _re2
    rx = _re2.RE2(pattern, _re2_options())
    if not rx.ok():
        return Plan(source, flags, ENGINE_BACKTRACK,
                    f"RE2 cannot run the translation: {rx.error()}", empty=empty)
    return Plan(source, flags, ENGINE_RE2, None, pattern, alpha, empty)


def to_alphabet(alpha: Alphabet, text: str) -> bytes:
    """``text`` in the regex's byte alphabet (one byte per code point)."""
    amap = alpha.ascii_map
    if text.isascii():
        b = text.encode("ascii")
        return b if amap is None else b.translate(amap + bytes(128))
    out = bytearray(len(text))
    bounds, table, catmask = alpha.bounds, alpha.table, alpha.catmask
    memo: dict[int, int] = {}
    for i, ch in enumerate(text):
        cp = ord(ch)
        if cp < 128:
            out[i] = cp if amap is None else amap[cp]
            continue
        b = memo.get(cp)
        if b is None:
            b = memo[cp] = table[bisect.bisect_right(bounds, cp) * 8 + (cat_bits(cp) & catmask)]
        out[i] = b
    return bytes(out)


class LinearRegex:
    """A regex on RE2: ``search(text)`` is ``re.search(source, text, flags) is not None``."""

    engine = ENGINE_RE2
    __slots__ = ("source", "flags", "plan", "rx", "match", "anchor", "empty", "alphabet")

    def __init__(self, p: Plan):
        from re2 import _re2

        self.source = p.source
        self.flags = p.flags
        self.plan = p
        self.rx = _re2.RE2(p.pattern, _re2_options())
        self.match = self.rx.Match
        self.anchor = _re2.RE2.Anchor.UNANCHORED
        self.empty = p.empty
        self.alphabet = p.alphabet

    def search(self, text: str) -> bool:
        if not text:
            return self.empty
        b = to_alphabet(self.alphabet, text)
        return self.match(self.anchor, b, 0, len(b))[0][0] >= 0

    def __repr__(self) -> str:
        return f"LinearRegex({self.source!r}, {self.flags!r})"


def backtracking_problem(rule, allow_backtracking=()) -> tuple[str, str] | None:
    """(pattern, reason) for the first regex of ``rule`` that only a backtracking engine can
    run, unless the operator allowed backtracking for this rule (by id); else None."""
    for p in rule.predicates:
        if p.op != "re":
            continue
        for v in p.values:
            pl = plan(v, p.flags)
            if pl.engine == ENGINE_REFUSED:
                return v, f"regular expression {v!r}: {pl.reason}; refused"
            if pl.engine != ENGINE_RE2 and rule.id in allow_backtracking:
                try:
                    compile_regex(v, p.flags)
                except RegexUnsupported as exc:
                    return v, f"regular expression {v!r}: {exc.reason}; refused"
            elif pl.engine != ENGINE_RE2:
                return v, (f"regular expression {v!r}: {pl.reason}; this needs a backtracking "
                           "engine (exponential time on crafted input): rewrite it, or allow "
                           f"it for this rule only with --allow-backtracking {rule.id} "
                           "(rules.allow_backtracking in the config), where it runs under a "
                           "step budget")
    return None


def compile_regex(source: str, flags: str = "", budget: int | None = None):
    """The runnable regex: :class:`LinearRegex` when RE2 can run it, else the budgeted
    backtracking engine (see sensor.detect.backtrack)."""
    p = plan(source, flags)
    if p.engine == ENGINE_RE2:
        return LinearRegex(p)
    if p.engine == ENGINE_REFUSED:
        raise RegexUnsupported(p.reason, refused=True)
    return BudgetRegex(source, flags, budget, reason=p.reason)
