"""How the compiled matcher's literal index is planned (pure Python; native/_matcher.pyx
turns the plan into C arrays).  Nothing here decides an answer: every table is exact or
an over-approximation, and the priors only steer which literals are looked for first.

* **Literal units.**  Every literal a predicate tests anywhere in a field (``contains``
  values, glob tokens, the literals a regex match must contain) goes into one *unit* per
  field (one more for case-sensitive predicates, one for keyword searches).  One pass of
  the unit's automaton over the field finds every literal present, so a ``contains``
  predicate with 145 values costs 145 bit tests, not 145 searches, whatever the text.
  Small units are exact Aho-Corasick DFAs; large ones anchor filters (each literal
  anchored at one of its 2-, 4- or 8-grams, the text's grams tested against bitmaps,
  hits verified).
* **Witnesses.**  For each rule, a set of literals one of which must be present for the
  rule to hold (AND: the cheapest operand's; OR: the union); only rules whose witness was
  found are evaluated.
* **Priors** (:class:`Priors`) rank literals by how likely they are to occur in ordinary
  events.  They come from the rule set being loaded, never from recorded events: a
  byte-level language model (order 3, Witten-Bell) counted over all the rules' literals,
  those under ``not`` weighted three times (filters describe benign activity, e.g.
  ``Microsoft Corporation``, ``C:\\Program Files\\``), so a literal built from grams the
  rules use again and again (``\\windows\\system32\\``, ``.exe``) counts as common and
  one built from grams seen once as rare; and the field's kind (``Company``,
  ``IntegrityLevel``, ``User``... take values from a small vocabulary, so no value there
  is rare: its probability is 0.02 at least, and 0.5 at least for one a filter names
  there).  The matcher does not re-rank from the events it sees: the ranking is fixed
  when the rules are loaded.
  A literal's probability in a field is the model's probability of its bytes at one
  position (:meth:`Priors.seq_p`: the product of the byte probabilities, no longer
  multiplied once it falls below 1e-15, since a literal that rare is rare enough for any
  ranking: the product so far is the answer) times the positions it can sit at.  An
  "anywhere" literal can start at the typical number of positions of its field: 200 in
  ``CommandLine`` and ``ParentCommandLine``, 150 in ``Hashes``, 50 in any other field,
  2,000 for a keyword search (any value of the event; its literals are witnesses too).  A
  whole value (``eq``) sits at one position; so does a prefix or a suffix, but the rest
  of the value is free, so it counts three times as likely as the same bytes as a whole
  value.
"""
from __future__ import annotations

import math
import re
import re._constants as _C
import re._parser as _sre_parse
from array import array
from collections import deque

from . import charsets as _charsets

SIGMA_FOLD = frozenset("\u03c3\u03c2")   # the only characters whose fold depends on context

# Fields whose values come from a small vocabulary: a literal equal to (or inside) one
# of their values is common whatever it says (Sysmon EID 1 field semantics).
VOCAB_FIELDS = frozenset({"Company", "Product", "Description", "FileVersion", "IntegrityLevel",
                          "User", "ParentUser", "LogonId", "TerminalSessionId", "Provider_Name"})
# Typical number of positions a literal can start at in a field (command lines are
# long, paths shorter): a rule-independent assumption, used for "anywhere" literals.
# A keyword search (field None) reads every value of the event: the sum over a process
# start's fields, about 30 of them (two command lines, Hashes, the rest at 50), ~2,000.
TYPICAL_POSITIONS = {"CommandLine": 200.0, "ParentCommandLine": 200.0, "Hashes": 150.0,
                     None: 2000.0}
DEFAULT_POSITIONS = 50.0


def enc(s: str) -> bytes:
    """UTF-8 bytes of a str; lone surrogates pass through (still a prefix-free code)."""
    return s.encode("utf-8", "surrogatepass")


def needs_python_fold(values) -> bool:
    """True when a folded value holds sigma: its fold depends on the neighbouring characters
    (Python's final-sigma rule), which the matcher's one-pass fold does not reproduce."""
    return any(isinstance(v, str) and not SIGMA_FOLD.isdisjoint(v.lower()) for v in values)


# ---------------------------------------------------------------------------------
# Priors.

class Priors:
    """Literal rarity estimates drawn from the rule set itself (see the module docstring).

    A byte-level language model of order 3 (Witten-Bell interpolation down to single
    bytes) is counted over every literal of the rules, those under ``not`` (filters:
    benign activity) weighted three times.  A literal whose 4-grams recur across the rules
    (``\\windows\\system32\\``, ``\\appdata\\local\\``, ``.exe``) gets a high
    probability; one made of grams that occur once (``grunthttp``) a low one."""

    ORDER = 3
    CACHE = 4096      # memoised probabilities kept at most (a cache: values never change)

    def __init__(self, rules):
        texts: list[tuple[bytes, int]] = []
        vocab_neg: set[bytes] = set()
        for rule in rules:
            negated = set(_negated_preds(rule.condition))
            for i, p in enumerate(rule.predicates):
                for v in p.values:
                    if not isinstance(v, str) or p.op == "re":
                        continue
                    b = enc(v.lower())
                    texts.append((b, 3 if i in negated else 1))
                    if i in negated and p.field in VOCAB_FIELDS:
                        vocab_neg.add(b)
        # counts[k][context] = {next byte: count}, context = the k bytes before
        counts: list[dict[bytes, dict[int, int]]] = [{} for _ in range(self.ORDER + 1)]
        for b, w in texts:
            for i, c in enumerate(b):
                for k in range(self.ORDER + 1):
                    if i < k:
                        break
                    d = counts[k].setdefault(b[i - k:i], {})
                    d[c] = d.get(c, 0) + w
        self._counts = counts
        self._tot = [{h: (sum(d.values()), len(d)) for h, d in ck.items()} for ck in counts]
        uni = counts[0].get(b"", {})
        self.rank = sorted(range(256), key=lambda c: (-uni.get(c, 0), c))   # most frequent first
        self._vocab_neg = vocab_neg
        self._seq: dict[bytes, float] = {}
        self._lit: dict[tuple, float] = {}

    def rarity_rank(self) -> bytes:
        """The 256 byte values, rarest first (the memchr anchor of a needle)."""
        return bytes(reversed(self.rank))

    def _p(self, h: bytes, c: int) -> float:
        """P(next byte c | the bytes h before it), Witten-Bell interpolated."""
        k = len(h)
        if k == 0:
            tot, kinds = self._tot[0].get(b"", (0, 0))
            return (self._counts[0].get(b"", {}).get(c, 0) + 1.0) / (tot + 256.0)
        lower = self._p(h[1:], c)
        got = self._tot[k].get(h)
        if got is None:
            return lower
        tot, kinds = got
        return (self._counts[k][h].get(c, 0) + kinds * lower) / (tot + kinds)

    def seq_p(self, b: bytes) -> float:
        """Probability of the bytes ``b`` at one position of rule-like text.  Once the product
        of the byte probabilities is below 1e-15 the bytes after it are not multiplied in:
        the product up to that byte is returned (a product of exactly 1e-15 goes on)."""
        got = self._seq.get(b)
        if got is None:
            p = 1.0
            for i, c in enumerate(b):
                p *= self._p(b[max(0, i - self.ORDER):i], c)
                if p < 1e-15:
                    break
            if len(self._seq) >= self.CACHE:
                self._seq.clear()       # bounded: the anchor plans ask for ~10^5 grams
            got = self._seq[b] = p
        return got

    def lit_p(self, field: str | None, b: bytes, kind: str) -> float:
        """Estimated probability that an ordinary event's ``field`` holds ``b`` (``kind``:
        ``any`` anywhere, ``start``, ``end``, ``eq``)."""
        key = (field, b, kind)
        got = self._lit.get(key)
        if got is not None:
            return got
        if not b:
            p = 1.0
        else:
            if kind == "any":
                p = TYPICAL_POSITIONS.get(field, DEFAULT_POSITIONS) * self.seq_p(b)
            else:
                p = (3.0 if kind != "eq" else 1.0) * self.seq_p(b)
            if field in VOCAB_FIELDS:
                # a small vocabulary: a value the rules filter out is common; any value is
                # far from rare
                p = max(p, 0.5 if b in self._vocab_neg else 0.02)
            p = min(p, 1.0)
        if len(self._lit) >= self.CACHE:
            self._lit.clear()
        self._lit[key] = p
        return p


def _negated_preds(cond, neg: bool = False):
    kind = cond[0]
    if kind == "pred":
        if neg:
            yield cond[1]
    elif kind in ("and", "or"):
        for c in cond[1:]:
            yield from _negated_preds(c, neg)
    elif kind == "not":
        yield from _negated_preds(cond[1], not neg)


def rare_offset(b: bytes, rank_of: list[int]) -> int:
    """Offset of the rarest byte of ``b`` (``rank_of[c]``: 0 = rarest), its first one when
    that byte occurs more than once; 0 for an empty ``b``."""
    best, br = 0, 1 << 30
    for i, c in enumerate(b):
        if rank_of[c] < br:
            best, br = i, rank_of[c]
    return best


# ---------------------------------------------------------------------------------
# Automata.

def build_automaton(needles: list[bytes], mode: int, exact: bool, fold_ascii: bool = True):
    """A dense automaton over ``needles``: Aho-Corasick (mode 0, root 0) or a plain trie
    walked from one end of the value (modes 1, 2; root 1, dead state 0).

    Each byte of the needles gets a class; ASCII capitals share the class of their
    lower-case letter (unless ``fold_ascii`` is false: case-sensitive literals), so
    ASCII text is walked without folding.  ``exact``: every
    distinct byte keeps its own class, so outputs are exact occurrences (a folded text
    holds no ASCII capitals).  Otherwise all the needles' non-ASCII bytes share one class,
    which only adds spurious hits (fine for a witness trie).  Needles with the same class
    sequence share one output id; ``groups[id]`` lists their indices.
    """
    used = sorted({b for nd in needles for b in nd})
    cls = [0] * 256
    ncls = 1
    wide = 0
    for b in used:
        if b < 0x80 or exact:
            cls[b] = ncls
            if fold_ascii and 0x61 <= b <= 0x7A:
                cls[b - 0x20] = ncls
            ncls += 1
        else:
            if not wide:
                wide = ncls
                ncls += 1
            cls[b] = wide
    keys: dict[bytes, int] = {}
    groups: list[list[int]] = []
    for nid, nd in enumerate(needles):
        k = bytes([cls[b] for b in nd])
        g = keys.get(k)
        if g is None:
            g = keys[k] = len(groups)
            groups.append([])
        groups[g].append(nid)
    root = 0 if mode == 0 else 1
    goto: list[dict] = [{} for _ in range(root + 1)]
    outs: list[list] = [[] for _ in range(root + 1)]
    for gid, seq in enumerate(keys):
        s = root
        for c in seq:
            t = goto[s].get(c)
            if t is None:
                t = len(goto)
                goto.append({})
                outs.append([])
                goto[s][c] = t
            s = t
        outs[s].append(gid)
    n = len(goto)
    # Breadth-first state numbers: the shallow states, where a scan spends most of its
    # steps, share a few cache lines of the table.
    order = list(range(root + 1))
    queue = deque([root])
    while queue:
        x = queue.popleft()
        for c in sorted(goto[x]):
            t = goto[x][c]
            order.append(t)
            queue.append(t)
    new = [0] * n
    for i, x in enumerate(order):
        new[x] = i
    goto = [{c: new[t] for c, t in goto[x].items()} for x in order]
    outs = [outs[x] for x in order]
    trans = array("I", [0]) * (n * ncls)   # uint32: no Python int object per entry
    if mode == 0:
        fail = [0] * n
        order_s = []
        queue = deque(goto[0].values())
        while queue:
            s = queue.popleft()
            order_s.append(s)
            for c, t in goto[s].items():
                f = fail[s]
                while f and c not in goto[f]:
                    f = fail[f]
                g = goto[f].get(c, 0) if s else 0
                fail[t] = g if g != t else 0
                queue.append(t)
        for c, t in goto[0].items():
            trans[c] = t
        for s in order_s:
            f = fail[s]
            outs[s] = outs[s] + outs[f]
            base = s * ncls
            trans[base:base + ncls] = trans[f * ncls:f * ncls + ncls]
            for c, t in goto[s].items():
                trans[base + c] = t
    else:
        for s in range(n):
            base = s * ncls
            for c, t in goto[s].items():
                trans[base + c] = t
    out_off = [0]
    out_ids: list[int] = []
    for s in range(n):
        out_ids.extend(outs[s])
        out_off.append(len(out_ids))
    seqlen = [len(k) for k in keys]
    return n, ncls, cls, trans, out_off, out_ids, groups, seqlen


ANCHOR_SHARE_CAP = 8     # needles per exact anchor, at most (bounds the work per position)


def anchor_plan(needles: list[bytes], priors: Priors):
    """Anchors for an anchor filter: per needle ``(anchor offset k, anchor length)``.

    A needle of 8+ bytes is anchored at one of its 8-grams, a needle of 4-7 bytes at a
    4-gram, 2-3 bytes at a 2-gram, 1 byte at itself: long anchors are rarely present in
    ordinary text, so few positions need a check.  Among its grams a needle takes the
    rarest (by the priors) that at most ANCHOR_SHARE_CAP - 1 other needles already use, so
    the work per text position stays small even on text made of the needles themselves."""
    load: dict[bytes, int] = {}
    plan: list[tuple[int, int]] = [(0, 0)] * len(needles)
    seq_p = priors.seq_p
    for i in sorted(range(len(needles)), key=lambda i: (len(needles[i]), i)):
        nd = needles[i]
        L = len(nd)
        size = 8 if L >= 8 else 4 if L >= 4 else 2 if L >= 2 else 1
        if size == 1:
            plan[i] = (0, 1)
            continue
        best_k, best_s = None, None
        for k in range(L - size + 1):
            g = nd[k:k + size]
            if load.get(g, 0) >= ANCHOR_SHARE_CAP:
                continue
            sc = (seq_p(g), k)
            if best_s is None or sc < best_s:
                best_k, best_s = k, sc
        if best_k is None:          # every gram is full: the least loaded one
            best_k = min(range(L - size + 1), key=lambda k: (load[nd[k:k + size]], k))
        g = nd[best_k:best_k + size]
        load[g] = load.get(g, 0) + 1
        plan[i] = (best_k, size)
    return plan


# ---------------------------------------------------------------------------------
# Regexes: what any match must contain (a prefilter), and the literal-chain form.
#
# A prefilter is a necessary condition for a match, checked before RE2 runs:
#   ("any",)                      nothing known
#   ("lit", b)                    the folded text contains b
#   ("and", [f...]) / ("or", [f...])
#   ("run", table, k)             the raw text has k consecutive bytes in the class table
#                                 (bytes 0x80+ count as members when the class may hold
#                                 non-ASCII characters, so runs are never undercounted)
# It is built like RE2's own prefilter: each node is either an *exact* small set of
# strings it can match (folded) or a condition; concatenation multiplies exact sets while
# they stay small, alternation unites them.  Only characters whose presence is certain in
# the folded text make exact sets: ASCII, and under IGNORECASE not ``i``/``s`` (``re``
# folds them with U+0131 / U+017F, whose lower() is not i/s).

EXACT_MAX = 16          # strings in an exact set
CLASS_MAX = 4           # characters of a class turned into alternatives
RUN_MIN = 8             # repeats of one class at least this long become a run condition

_ANY = ("any",)


def _exact_to_cond(ex: set) -> tuple:
    if not ex or b"" in ex:
        return _ANY
    return ("or", [("lit", x) for x in sorted(ex)]) if len(ex) > 1 else ("lit", next(iter(ex)))


def _and(*fs) -> tuple:
    parts = []
    for f in fs:
        if f[0] == "any":
            continue
        if f[0] == "and":
            parts.extend(f[1])
        else:
            parts.append(f)
    if not parts:
        return _ANY
    return parts[0] if len(parts) == 1 else ("and", parts)


def _or(fs) -> tuple:
    if any(f[0] == "any" for f in fs):
        return _ANY
    parts = []
    for f in fs:
        parts.extend(f[1] if f[0] == "or" else [f])
    return parts[0] if len(parts) == 1 else ("or", parts)


def _char_exact(node, flags: int):
    """The folded strings a one-character node can match when they are few and certain;
    None when there are none (a class that matches nothing, e.g. ``(?a)[^\\W\\w]``): as for
    ``.``, nothing is known of it, and the literals around it still count."""
    from .charsets import char_set

    cs = char_set(node, flags)
    if cs.neg or cs.atoms:
        return None
    members = {chr(c) for c in range(128) if cs.ascii >> c & 1}
    if flags & re.IGNORECASE and members & set("iIsS"):
        return None
    folded = {m.lower().encode() for m in members}
    return folded if 0 < len(folded) <= CLASS_MAX else None


def _run_table(node, flags: int) -> bytes:
    from .charsets import char_set

    cs = char_set(node, flags)
    table = bytearray(256)
    for c in range(128):
        table[c] = cs.ascii >> c & 1
    if cs.neg or cs.atoms:
        for c in range(128, 256):
            table[c] = 1
    return bytes(table)


def _info(items, flags: int):
    """(exact set or None, condition) for a sequence of sre items."""
    exact: set = {b""}
    cond = _ANY
    broken = False
    for op, av in items:
        ex, c = _node_info(op, av, flags)
        cond = _and(cond, c)
        if ex is None:
            cond = _and(cond, _exact_to_cond(exact))
            exact = {b""}
            broken = True
        elif len(exact) * len(ex) <= EXACT_MAX:
            exact = {x + y for x in exact for y in ex}
        else:
            cond = _and(cond, _exact_to_cond(exact))
            exact = set(ex)
            broken = True
    if broken:
        return None, _and(cond, _exact_to_cond(exact))
    return exact, cond


def _node_info(op, av, flags: int):
    if op in (_C.LITERAL, _C.NOT_LITERAL, _C.IN, _C.ANY):
        if op is _C.NOT_LITERAL or op is _C.ANY:
            return None, _ANY
        return _char_exact((op, av), flags), _ANY
    if op is _C.SUBPATTERN:
        _grp, add, rem, sub = av
        return _info(list(sub), (flags | add) & ~rem)
    if op is _C.ATOMIC_GROUP:
        return _info(list(av), flags)
    if op is _C.BRANCH:
        subs = [_info(list(alt), flags) for alt in av[1]]
        if all(ex is not None for ex, _c in subs):
            u = set().union(*(ex for ex, _c in subs))
            if len(u) <= EXACT_MAX:
                return u, _ANY
        return None, _or([_and(c, _exact_to_cond(ex) if ex is not None else _ANY) for ex, c in subs])
    if op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT):
        lo, hi, sub = av
        if lo == 0:
            return None, _ANY
        ex, c = _info(list(sub), flags)
        if lo == 1 and hi == 1:
            return ex, c
        cond = _and(c, _exact_to_cond(ex) if ex is not None else _ANY)
        if lo >= RUN_MIN and len(sub) == 1 and sub[0][0] in (_C.LITERAL, _C.NOT_LITERAL, _C.IN, _C.ANY):
            cond = _and(cond, ("run", _run_table(sub[0], flags), lo))
        return None, cond
    return None, _ANY     # anchors, lookaround, backreferences, conditionals: nothing known


def regex_prefilter(pattern: str, flags: int):
    """(minimum length in characters, condition) that every match satisfies; nothing known
    (``("any",)``) for a pattern Python cannot parse or one that needs more character-set
    scans than charsets allows (it is refused at load)."""
    try:
        parsed = _sre_parse.parse(pattern, flags)
        lo = parsed.getwidth()[0]
    except Exception:
        return 0, _ANY
    gflags = parsed.state.flags
    _charsets.scan_count[0] = 0      # the bound on character-set scans is per regex
    try:
        ex, cond = _info(list(parsed), gflags)
    except Exception:
        return lo, _ANY
    return lo, _and(cond, _exact_to_cond(ex) if ex is not None else _ANY)


def prefilter_literals(f) -> list[bytes]:
    """Every literal a prefilter condition names."""
    if f[0] == "lit":
        return [f[1]]
    if f[0] in ("and", "or"):
        return [x for g in f[1] for x in prefilter_literals(g)]
    return []


def prefilter_witness(f, cost) -> tuple[float, list[bytes]] | None:
    """The cheapest set of literals one of which must occur (None when there is none)."""
    k = f[0]
    if k == "lit":
        return cost(f[1]), [f[1]]
    if k == "and":
        best = None
        for g in f[1]:
            w = prefilter_witness(g, cost)
            if w is not None and (best is None or w[0] < best[0]):
                best = w
        return best
    if k == "or":
        total, lits = 0.0, []
        for g in f[1]:
            w = prefilter_witness(g, cost)
            if w is None:
                return None
            total += w[0]
            lits.extend(w[1])
        return total, lits
    return None


def chain_form(pattern: str, flags: int):
    """``([L1, ..., Lk], dotall)`` (raw bytes) when the regex is ``.*``-separated ASCII
    literals (under IGNORECASE only characters without case), else None: ``mt_chain``
    answers such a search with memchr in one pass."""
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except Exception:
        return None
    icase = bool(parsed.state.flags & re.IGNORECASE)
    lits: list[bytes] = []
    run: list[str] = []
    for op, av in parsed:
        if op is _C.LITERAL:
            ch = chr(av)
            if av >= 128 or (icase and ch.lower() != ch.upper()):
                return None
            run.append(ch)
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT) and av[0] == 0 and av[1] == _C.MAXREPEAT \
                and len(av[2]) == 1 and av[2][0][0] is _C.ANY:
            if run:
                lits.append("".join(run).encode())
                run = []
        else:
            return None
    if run:
        lits.append("".join(run).encode())
    if not lits:
        return None
    return lits, bool(parsed.state.flags & re.DOTALL)


# ---------------------------------------------------------------------------------
# Globs.

def glob_program(tokens, star, qmark) -> list[int]:
    """A glob (from ir.glob_tokens, folded) as the uint32 program mt_glob2 reads:
    ``[nseg, lead_star, trail_star, len_1, cp..., len_2, cp..., ...]`` where a code point
    0xFFFFFFFF is ``?`` (any one code point)."""
    segs: list[list[int]] = []
    cur: list[int] = []
    lead = bool(tokens) and tokens[0] is star
    trail = bool(tokens) and tokens[-1] is star
    for t in tokens:
        if t is star:
            if cur:
                segs.append(cur)
                cur = []
        elif t is qmark:
            cur.append(0xFFFFFFFF)
        else:
            cur.extend(ord(c) for c in t)
    if cur:
        segs.append(cur)
    out = [len(segs), int(lead), int(trail)]
    for s in segs:
        out.append(len(s))
        out.extend(s)
    return out


def log2_ceil(x: int) -> int:
    return max(0, math.ceil(math.log2(max(1, x))))
