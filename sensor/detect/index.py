"""How the compiled matcher's literal index is planned (pure Python; native/_matcher.pyx
turns the plan into C arrays).  Nothing here decides an answer: every table is exact or
an over-approximation, and the priors only steer which literals are looked for first.

* **Literal units.**  Every literal a predicate tests anywhere in a field (``contains``
  values, glob tokens, the literals a regex match must contain) goes into one *unit* per
  field (one more for case-sensitive predicates, one for keyword searches).  One pass of
  the unit's automaton over the field finds every literal present, so a ``contains``
  predicate with 145 values costs 145 bit tests, not 145 searches, whatever the text.
  Small units are exact Aho-Corasick DFAs; large ones anchor filters (each literal hashed
  by one of its 4-grams, the text's 4-grams tested against a bitmap, hits verified).
* **Witnesses.**  For each rule, a set of literals one of which must be present for the
  rule to hold (AND: the cheapest operand's; OR: the union); only rules whose witness was
  found are evaluated.
* **Priors** (:class:`Priors`) rank literals by how likely they are to occur in ordinary
  events.  They come from the rule set being loaded, never from recorded events:
  byte frequencies over all the rules' literals; whether the literal appears inside a
  literal the rules use under ``not`` (filters describe benign activity, e.g.
  ``Microsoft Corporation``, ``C:\\Program Files\\``); how many rules share it
  (``\\powershell.exe`` is tested by hundreds: a tool in daily use); and the field's kind
  (``Company``, ``IntegrityLevel``, ``User``... take values from a small vocabulary, so
  any value is common).  Length makes a literal rarer.  The matcher can also re-rank
  witnesses from the hits it counts on the host's own events (``adapt``): that changes
  which rules are evaluated, never what they answer.
"""
from __future__ import annotations

import math
import re
import re._constants as _C
import re._parser as _sre_parse
from collections import deque

SIGMA_FOLD = frozenset("\u03c3\u03c2")   # the only characters whose fold depends on context

# Fields whose values come from a small vocabulary: a literal equal to (or inside) one
# of their values is common whatever it says (Sysmon EID 1 field semantics).
VOCAB_FIELDS = frozenset({"Company", "Product", "Description", "FileVersion", "IntegrityLevel",
                          "User", "ParentUser", "LogonId", "TerminalSessionId", "Provider_Name"})
# Typical number of positions a literal can start at in a field (command lines are
# long, paths shorter): a rule-independent assumption, used for "anywhere" literals.
TYPICAL_POSITIONS = {"CommandLine": 200.0, "ParentCommandLine": 200.0, "Hashes": 150.0}
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
    """Literal rarity estimates drawn from the rule set itself (see the module docstring)."""

    def __init__(self, rules):
        counts = [1] * 256
        total = 256
        neg: dict[str | None, list[bytes]] = {}
        pop: dict[bytes, int] = {}
        for rule in rules:
            negated = set(_negated_preds(rule.condition))
            for i, p in enumerate(rule.predicates):
                for v in p.values:
                    if not isinstance(v, str) or p.op == "re":
                        continue
                    b = enc(v.lower())
                    for c in b:
                        counts[c] += 1
                    total += len(b)
                    if i in negated:
                        neg.setdefault(p.field, []).append(b)
                    else:
                        pop[b] = pop.get(b, 0) + 1
        self.byte_p = [c / total for c in counts]
        self.rank = sorted(range(256), key=lambda c: (-counts[c], c))   # most frequent first
        self._neg = {f: b"\0".join(v) for f, v in neg.items()}
        self._pop = pop
        self._seq: dict[bytes, float] = {}
        self._lit: dict[tuple, float] = {}

    def rarity_rank(self) -> bytes:
        """The 256 byte values, rarest first (the memchr anchor of a needle)."""
        return bytes(reversed(self.rank))

    def seq_p(self, b: bytes) -> float:
        """Probability of ``b`` at one position, from byte frequencies (bytes of real text
        are far from independent: each byte's share is scaled up)."""
        got = self._seq.get(b)
        if got is None:
            p = 1.0
            for c in b:
                p *= self.byte_p[c] * 8.0
                if p < 1e-12:
                    break
            got = self._seq[b] = min(p, 1.0)
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
        elif field in VOCAB_FIELDS:
            p = 0.5
        else:
            if kind == "any":
                p = TYPICAL_POSITIONS.get(field, DEFAULT_POSITIONS) * self.seq_p(b)
            else:
                p = (4.0 if kind != "eq" else 2.0) * self.seq_p(b)
            p = max(p, 2.0 ** -len(b))      # length bounds how rare a literal can be
            pop = self._pop.get(b, 0)
            if pop > 1:                     # many rules test it: a tool in daily use
                p *= 1.0 + pop / 8.0
            blob = self._neg.get(field)
            if blob is not None and len(b) <= 64 and b in blob:
                p *= 20.0                   # inside a filter: describes benign activity
            p = min(p, 1.0)
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
    """Offset of the rarest byte of ``b`` (``rank_of[c]``: 0 = rarest)."""
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
    holds no ASCII capitals).  Otherwise all non-ASCII bytes share one class, which only
    adds spurious hits (fine for a witness trie).  Needles with the same class sequence
    share one output id; ``groups[id]`` lists their indices.
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
    trans = [0] * (n * ncls)
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


ANCHOR_SHARE_CAP = 8     # needles per exact 4-byte anchor, at most (bounds the work per position)


def anchor_plan(needles: list[bytes], priors: Priors):
    """Anchors for an anchor filter: per needle ``(anchor offset k, anchor length 1/2/4)``.

    A needle of 4+ bytes is anchored at one of its 4-grams: a rare one (by the priors),
    preferably one other needles already use (fewer distinct anchors: fewer text positions
    pass the bitmap), but never one shared by more than ANCHOR_SHARE_CAP needles, so the
    work per text position stays small even on text made of the needles themselves."""
    load: dict[bytes, int] = {}
    plan: list[tuple[int, int]] = [(0, 0)] * len(needles)
    seq_p = priors.seq_p
    for i in sorted(range(len(needles)), key=lambda i: (len(needles[i]), i)):
        nd = needles[i]
        L = len(nd)
        if L == 1:
            plan[i] = (0, 1)
            continue
        if L <= 3:
            plan[i] = (min(range(L - 1), key=lambda j: (seq_p(nd[j:j + 2]), j)), 2)
            continue
        best_k, best_s = 0, None
        for k in range(L - 3):
            g = nd[k:k + 4]
            used = load.get(g, 0)
            if used >= ANCHOR_SHARE_CAP:
                continue
            s = seq_p(g) * (0.25 if used else 1.0)
            if best_s is None or s < best_s:
                best_k, best_s = k, s
        if best_s is None:          # every 4-gram is full: the least loaded one
            best_k = min(range(L - 3), key=lambda k: (load[nd[k:k + 4]], k))
        g = nd[best_k:best_k + 4]
        load[g] = load.get(g, 0) + 1
        plan[i] = (best_k, 4)
    return plan


# ---------------------------------------------------------------------------------
# Regexes: what any match must contain, and the literal-chain form.

def regex_requirements(pattern: str, flags: int):
    """What any match must contain: (literals, ((byte, count), ...)) on folded text.

    Mandatory items only (sequence members, groups, repeats with a minimum of 1);
    alternatives add nothing.  Only ASCII literals; under IGNORECASE ``i`` and ``s``
    split a literal (``re`` folds them with U+0131 / U+017F, whose ``lower()`` differs).
    Used as an exact pre-check (a failed check means no match).
    """
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except Exception:
        return (), ()
    runs: list[bytes] = []
    counts: dict[int, int] = {}
    _re_req(list(parsed), bool(parsed.state.flags & re.IGNORECASE), runs, counts)
    lits = tuple(sorted(set(runs), key=lambda b: (-len(b), b)))
    return lits, tuple((b, k) for b, k in sorted(counts.items()) if k > 1)


def regex_witness(pattern: str, flags: int, cost) -> list[bytes] | None:
    """Literals (folded) one of which any match must contain, or None; ``cost(b)`` ranks
    the choices (alternatives add up)."""
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except Exception:
        return None
    best = _re_seq(list(parsed), bool(parsed.state.flags & re.IGNORECASE), cost)
    return None if best is None else best[1]


def _split_case(text: str, icase: bool) -> list[str]:
    return [s for s in (re.split("[isIS]", text) if icase else [text]) if s]


def _case_pair(op, av):
    """The lower-case letter when an sre item is a class of exactly one ASCII letter in
    both cases (``[Rr]``), else None: it requires that letter, like a literal."""
    if op is _C.IN and len(av) == 2 and av[0][0] is _C.LITERAL and av[1][0] is _C.LITERAL:
        a, b = av[0][1], av[1][1]
        if a < 128 and b < 128 and a != b and chr(a).isalpha() and chr(a).lower() == chr(b).lower():
            return chr(a).lower()
    return None


def _re_parts(items, icase: bool):
    """What any match of a sequence must go through: ``("run", chars, icase)`` (adjacent
    ASCII literals), ``("seq", items, icase)`` (a mandatory sub-sequence) or ``("branch",
    alternatives, icase)``.  Anything else ends the current run."""
    run: list[str] = []
    for op, av in items:
        if op is _C.LITERAL and av < 128:
            run.append(chr(av))
            continue
        c = _case_pair(op, av)
        if c is not None:
            run.append(c)
            continue
        if run:
            yield "run", run, icase
            run = []
        if op is _C.SUBPATTERN:
            _grp, add, rem, sub = av
            yield "seq", list(sub), (icase or bool(add & re.IGNORECASE)) and not (rem & re.IGNORECASE)
        elif op is _C.ATOMIC_GROUP:
            yield "seq", list(av), icase
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT):
            if av[0] >= 1:
                yield "seq", list(av[2]), icase
        elif op is _C.BRANCH:
            yield "branch", av[1], icase
    if run:
        yield "run", run, icase


def _re_req(items, icase: bool, runs: list, counts: dict) -> None:
    for kind, x, ic in _re_parts(items, icase):
        if kind == "run":
            for seg in _split_case("".join(x), ic):
                b = enc(seg.lower())
                runs.append(b)
                for c in b:
                    counts[c] = counts.get(c, 0) + 1
        elif kind == "seq":
            _re_req(x, ic, runs, counts)


def _re_seq(items, icase: bool, cost):
    best = None

    def consider(cand):
        nonlocal best
        if cand is not None and cand[1] and (best is None or cand[0] < best[0]):
            best = cand

    for kind, x, ic in _re_parts(items, icase):
        if kind == "run":
            for seg in _split_case("".join(x), ic):
                b = enc(seg.lower())
                consider((cost(b), [b]))
        elif kind == "seq":
            consider(_re_seq(x, ic, cost))
        else:
            total, lits = 0.0, []
            for alt in x:
                r = _re_seq(list(alt), ic, cost)
                if r is None:
                    lits = None
                    break
                total += r[0]
                lits.extend(r[1])
            if lits:
                consider((total, lits))
    return best


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
