# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, embedsignature=True
"""Compiled rule matcher (``sensor.detect._matcher``).

Same API and answers as the reference matcher ``sensor.detect._matcher_py`` (which
defines the semantics).  Design (docs/matcher.md):

* The rule IR is compiled into flat C arrays: unique predicates (shared ones are
  evaluated once per event, memoised by an epoch counter), and one condition
  program per rule whose AND/OR operands are ordered cheapest first.
* Each field is fetched and folded once per event, lazily.  Folding is
  ``str.lower()`` exactly as in the reference: ASCII text is lowered in a scratch
  buffer, other text goes through ``str.lower()``.  Pattern tests work on the
  UTF-8 bytes with memchr and inline compares (see native/matcher_util.h), no
  Python objects; the values of a multi-value ``contains`` are first filtered by
  bigram (or, on long texts, hashed 4-gram) presence bitmaps of the field.
* A witness index keeps one event from touching most rules: for every rule a set
  of literals, one of which must occur (in a given position) for the rule to
  hold, is derived from its condition; per field, a small Aho-Corasick DFA or,
  for a large literal set, an anchor filter (hashed 4-gram bitmap plus bucket
  verification) finds the literals present, and prefix/suffix tries check the
  start/end literals; only the rules they name are evaluated.  Each rule also
  gets a fallback witness that avoids lazily resolved fields
  (``OriginalFileName``...), used when such a field is still pending, so a PE read
  is requested only when a candidate rule really reaches that predicate.
* Rare operators (``re``, ``cidr``, numeric, ``fieldref``, keyword searches)
  reuse the reference's prepared tests; only candidate rules reach them.
"""
from cpython cimport array
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.string cimport memset, memcmp, memchr

import array as _pyarray
import sys as _sys
import re as _re
import re._constants as _C
import re._parser as _sre_parse
from collections import deque

from sensor.detect._matcher_py import _Test, _remap, regex_engines  # the same condition rewrite as the reference
from sensor.events import DERIVED, ProcessEvent
from sensor.detect.ir import STAR, QMARK, glob_tokens, regex_flags
from sensor.detect.regex import LinearRegex, compile_regex
from sensor.detect.backtrack import BudgetExceeded

include "_matcher.pxd"

cdef extern from *:
    """
    #include "structmember.h"
    /* Offset of a __slots__ member (e.g. ProcessEvent.pending), -1 if not one. */
    static Py_ssize_t mt_member_offset(PyObject *descr)
    {
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
            return -1;
        return ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    static PyObject *mt_slot_get(PyObject *o, Py_ssize_t off)
    {
        return *(PyObject **)((char *)o + off);
    }
    """
    Py_ssize_t mt_member_offset(PyObject *descr)
    PyObject *mt_slot_get(PyObject *o, Py_ssize_t off)

cdef extern from "Python.h":
    ctypedef uint32_t Py_UCS4
    int PyUnicode_KIND(object o)
    Py_UCS4 PyUnicode_READ(int kind, void *data, Py_ssize_t i)
    bint Py_UNICODE_ISDECIMAL(Py_UCS4 ch)
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch)
    bint Py_UNICODE_ISALNUM(Py_UCS4 ch)
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ
    object PyBytes_FromStringAndSize(const char *v, Py_ssize_t n)
    char *PyBytes_AS_STRING(object o)
    void Py_XINCREF(PyObject *o)
    void Py_XDECREF(PyObject *o)
    Py_ssize_t PyDict_GET_SIZE(PyObject *o)
    Py_ssize_t PyList_GET_SIZE(object o)
    int PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except? NULL

ENGINE = "compiled"

# Where ProcessEvent keeps ``pending`` (a __slots__ member): read directly, it saves
# a getattr per call.  -1 (use getattr) if it is not a plain slot.
_pending_descr = ProcessEvent.__dict__.get("pending")
cdef Py_ssize_t _PENDING_OFF = mt_member_offset(<PyObject *>_pending_descr)


cdef inline object _pending_of(object ev, bint is_pe):
    """``getattr(ev, "pending", None)``, fast for an exact ProcessEvent."""
    cdef PyObject *p
    if is_pe and _PENDING_OFF >= 0:
        p = mt_slot_get(<PyObject *>ev, _PENDING_OFF)
        if p == NULL:
            return None
        return <object>p
    return getattr(ev, "pending", None)

# Fields whose value may be left pending (resolved lazily, e.g. by a PE read).
# Each rule gets a fallback witness that avoids them (see the module docstring).
LAZY_FIELDS = ("OriginalFileName", "Company", "Product", "Description", "FileVersion",
               "Hashes", "md5", "sha1", "sha256", "Imphash")

# predicate kinds
cdef enum:
    K_EQ = 0
    K_CONTAINS = 1
    K_STARTS = 2
    K_ENDS = 3
    K_GLOB = 4
    K_EXISTS = 5      # the field is present
    K_MISSING = 6     # exists:false and null
    K_RE = 7
    K_PY = 8          # reference test (cidr, numeric, fieldref, keyword searches)

# condition node kinds
cdef enum:
    N_PRED = 0
    N_AND = 1
    N_OR = 2
    N_NOT = 3
    N_CONST = 4

# witness literal position kinds (bit 0: at start, bit 1: at end)
cdef enum:
    W_ANY = 0
    W_START = 1
    W_END = 2
    W_EQ = 3

cdef int MAX_WITNESS_FIELDS = 64
# "Anywhere" automata with a larger table than this become anchor filters (mode 3).
cdef int Q_MIN_TABLE = 2048
# Texts at least this long get a 4-gram presence filter for contains values.
cdef Py_ssize_t Q4_MIN_TEXT = 256
# Witness literals are cut to this many bytes (smaller automata; a cut literal
# still has to occur, so the index stays exact, only a little less selective).
cdef int TRUNC_ANY = 8
cdef int TRUNC_TRIE = 64
# An end/equality literal of at least BENIGN_END_LEN bytes found in the benign
# sample (a whole file name such as ``\\cscript.exe``) is scored BENIGN_END
# instead of 1.0: common text, but it ends only a small share of values.
cdef double BENIGN_END = 0.1
cdef Py_ssize_t BENIGN_END_LEN = 10

_LIT_KINDS = {"eq": K_EQ, "contains": K_CONTAINS, "startswith": K_STARTS, "endswith": K_ENDS}
_W_KIND = {K_EQ: W_EQ, K_CONTAINS: W_ANY, K_STARTS: W_START, K_ENDS: W_END}

# A few typical benign process starts (folded).  A witness literal found in this
# text is assumed frequent and avoided.  Only the speed of the index depends on
# it, never its answers.
_BENIGN = """
c:\\windows\\system32\\svchost.exe -k netsvcs -p -s schedule
c:\\windows\\system32\\cmd.exe /c echo "c:\\program files (x86)\\microsoft\\edge\\application\\msedge.exe" --type=renderer --field-trial-handle=1234,i,5678 --lang=en-us --service-sandbox-type=none /d /q /s
"c:\\program files\\windowsapps\\microsoft.windowsterminal_1.0.0.0_x64__8wekyb3d8bbwe\\windowsterminal.exe"
c:\\windows\\system32\\windowspowershell\\v1.0\\powershell.exe -noprofile -executionpolicy bypass -file c:\\users\\admin\\appdata\\local\\temp\\setup.ps1
c:\\windows\\syswow64\\rundll32.exe c:\\windows\\system32\\shell32.dll,control_rundll
c:\\windows\\system32\\conhost.exe 0xffffffff -forcev1
c:\\program files\\common files\\microsoft shared\\clicktorun\\officeclicktorun.exe /service
c:\\windows\\system32\\wbem\\wmiprvse.exe -embedding
c:\\windows\\explorer.exe c:\\windows\\system32\\taskhostw.exe c:\\windows\\system32\\services.exe
c:\\programdata\\microsoft\\windows defender\\platform\\4.18.2104.14-0\\msmpeng.exe
c:\\windows\\microsoft.net\\framework64\\v4.0.30319\\ngen.exe install
c:\\windows\\system32\\msiexec.exe /v c:\\windows\\system32\\wscript.exe c:\\windows\\system32\\cscript.exe
c:\\windows\\system32\\reg.exe query hklm\\software\\microsoft\\windows\\currentversion\\run /v
c:\\windows\\system32\\sc.exe start wuauserv c:\\windows\\system32\\net.exe use \\\\server\\share
c:\\windows\\system32\\schtasks.exe /create /tn update /tr c:\\windows\\temp\\update.bat /sc daily
c:\\users\\user\\appdata\\roaming\\microsoft\\teams\\current\\teams.exe --type=gpu-process
c:\\windows\\system32\\mshta.exe c:\\windows\\system32\\regsvr32.exe c:\\windows\\system32\\wmic.exe
c:\\program files\\google\\chrome\\application\\chrome.exe https://www.example.com/index.html
c:\\windows\\system32\\net1.exe c:\\windows\\system32\\pwsh.exe c:\\windows\\system32\\whoami.exe
nt authority\\system nt authority\\network service system high medium
c:\\windows\\system32\\dllhost.exe /processid:{3eb3c877-1f16-487c-9050-104dbcd66683}
"""

# How often a byte occurs in process text (rank in mt_common_bytes; 0 = most).
_RANKED = b" e\\tsoairnlc.:/mdpwx-\"=uhgb0f1y32kv_'4568%97,;$jq()z{}[]@&+#|<>?*!~`^"


def _enc(s):
    """UTF-8 bytes of a str; lone surrogates pass through (still a prefix-free code)."""
    return s.encode("utf-8", "surrogatepass")


def _byte_p(int b):
    i = _RANKED.find(bytes([b]))
    if i < 0:
        return 0.002
    return 0.35 * 2.718281828 ** (-i / 12.0)


def _lit_p(bytes nd, double positions, double benign=1.0):
    """Estimated probability that the literal occurs in a benign value."""
    cdef double p = positions
    if nd in _BENIGN_B:
        return benign
    for b in nd:
        p *= _byte_p(b)
    return min(p, 1.0)


_BENIGN_B = _BENIGN.encode()


NO_BG = 0xFFFFFFFF   # no bigram: the filter lets the value through


def _rare_bigrams(bytes b):
    """The two rarest bigram hashes (MT_BG) of a value, NO_BG where there are none."""
    cdef Py_ssize_t i
    if len(b) < 2:
        return (NO_BG, NO_BG)
    seen = {}
    for i in range(len(b) - 1):
        x = MT_BG(b[i], b[i + 1])
        p = _byte_p(b[i]) * _byte_p(b[i + 1])
        if x not in seen or p < seen[x]:
            seen[x] = p
    ranked = sorted(seen, key=lambda x: (seen[x], x))
    return (ranked[0], ranked[1] if len(ranked) > 1 else NO_BG)


def _rare_quads(bytes b):
    """Hashes (mt_q_hash4, 16 bits) of the two rarest 4-grams of a value, or NO_BG."""
    cdef Py_ssize_t i
    if len(b) < 4:
        return (NO_BG, NO_BG)
    seen = {}
    for i in range(len(b) - 3):
        x = mt_q_hash4(<const unsigned char *>b + i, 16)
        p = _lit_p(b[i:i + 4], 1.0)
        if x not in seen or p < seen[x]:
            seen[x] = p
    ranked = sorted(seen, key=lambda x: (seen[x], x))
    return (ranked[0], ranked[1] if len(ranked) > 1 else ranked[0])


def _best_window(bytes b, int size):
    """The ``size``-byte window of ``b`` least likely to occur in benign text."""
    if len(b) <= size:
        return b
    best = b[:size]
    bp = _lit_p(best, 1.0)
    for i in range(1, len(b) - size + 1):
        w = b[i:i + size]
        p = _lit_p(w, 1.0)
        if p < bp:
            best, bp = w, p
    return best


def _witness_entry(fname, bytes b, int wk):
    """(field, automaton mode, literal as walked, position kind, cost) of one literal.

    Anywhere: Aho-Corasick over the field (literal cut to its rarest window).
    At the start: a prefix trie; at the end or whole value: a suffix trie walked
    from the last byte.  Cut literals still have to occur, so the index stays exact.
    """
    if wk == W_ANY:
        nd = _best_window(b, TRUNC_ANY)
        return (fname, 0, nd, W_ANY, _lit_p(nd, 100.0))
    if wk == W_START:
        nd = b[:TRUNC_TRIE]
        return (fname, 1, nd, W_ANY, _lit_p(nd, 3.0))
    nd = b[-TRUNC_TRIE:]
    bp = BENIGN_END if len(nd) >= BENIGN_END_LEN else 1.0
    if wk == W_EQ and len(b) <= TRUNC_TRIE:
        return (fname, 2, nd[::-1], W_START, 0.3 * _lit_p(nd, 3.0, bp))
    return (fname, 2, nd[::-1], W_ANY, _lit_p(nd, 3.0, bp))


def _build_automaton(list needles, int mode):
    """A dense automaton over ``needles`` (bytes): Aho-Corasick (mode 0, root 0) or a
    plain trie walked from one end of the value (modes 1, 2; root 1, dead state 0).

    Each ASCII byte of the needles gets a class, all non-ASCII bytes share one: that
    only adds spurious hits (a witness may over-approximate, never miss) and keeps
    the table small.  Needles with the same class sequence share one
    output id; ``groups[id]`` lists their indices.
    """
    used = sorted({b for nd in needles for b in nd})
    cls = [0] * 256
    ncls = 1
    wide = 0
    for b in used:
        if b < 0x80:
            cls[b] = ncls
            # Folded needles hold no ASCII capitals: mapping 'A'..'Z' to the class of
            # 'a'..'z' lets the automata walk raw ASCII text exactly as its fold.
            if 0x61 <= b <= 0x7A:
                cls[b - 0x20] = ncls
            ncls += 1
        else:
            if not wide:
                wide = ncls
                ncls += 1
            cls[b] = wide
    keys = {}
    groups = []
    for nid, nd in enumerate(needles):
        k = bytes([cls[b] for b in nd])
        g = keys.get(k)
        if g is None:
            g = keys[k] = len(groups)
            groups.append([])
        groups[g].append(nid)
    root = 0 if mode == 0 else 1
    goto = [{} for _ in range(root + 1)]
    outs = [[] for _ in range(root + 1)]
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
    # Number the states breadth-first: the shallow states, where a scan spends most
    # of its steps, then share a few cache lines of the table.
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
    out_ids = []
    for s in range(n):
        out_ids.extend(outs[s])
        out_off.append(len(out_ids))
    seqlen = [len(k) for k in keys]
    return n, ncls, cls, trans, out_off, out_ids, groups, seqlen


def _regex_witness(str pattern, int flags):
    """Literals one of which any match of the regex must contain (folded), or None.

    Conservative: only ASCII literals; under IGNORECASE, ``i`` and ``s`` split a
    literal (``re`` folds them with U+0131 / U+017F, whose ``lower()`` differs).
    A match of ASCII literal X in text t implies lower(X) in lower(t).
    """
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except Exception:
        return None
    icase = bool(parsed.state.flags & _re.IGNORECASE)
    best = _re_seq(list(parsed), icase)
    return None if best is None else best[1]


def _regex_requirements(str pattern, int flags):
    """What any match must contain: (literals, ((byte, count), ...)) on folded text.

    Mandatory items only (sequence members, groups, repeats with a minimum of 1);
    alternatives add nothing.  Same ASCII/IGNORECASE safety rules as the witness.
    Used as an exact pre-check before ``re.search`` (a failed check means no match).
    """
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except Exception:
        return (), ()
    runs = []
    counts = {}
    _re_req(list(parsed), bool(parsed.state.flags & _re.IGNORECASE), runs, counts)
    lits = tuple(sorted(set(runs), key=lambda b: (-len(b), b)))  # longest first, reproducibly
    return lits, tuple((b, k) for b, k in sorted(counts.items()) if k > 1)


def _re_req_flush(list run, bint icase, list runs, dict counts):
    text = "".join(run)
    parts = _re.split("[isIS]", text) if icase else [text]
    for seg in parts:
        if seg:
            b = _enc(seg.lower())
            runs.append(b)
            for c in b:
                counts[c] = counts.get(c, 0) + 1


def _case_pair(op, av):
    """The lower-case letter when an sre item is a class of exactly one ASCII letter
    in both cases (``[Rr]``), else None.  Such a class matches only those two
    characters (under IGNORECASE the i/s split below applies to it as to a literal),
    so it requires that letter in the folded text, like a literal does."""
    if op is _C.IN and len(av) == 2 and av[0][0] is _C.LITERAL and av[1][0] is _C.LITERAL:
        a, b = av[0][1], av[1][1]
        if a < 128 and b < 128 and a != b and chr(a).isalpha() and chr(a).lower() == chr(b).lower():
            return chr(a).lower()
    return None


def _re_parts(items, bint icase):
    """Walk a sequence of sre items, yielding what any match of it must go through:

    - ``("run", chars, icase)``: a run of adjacent ASCII literals (a one-letter case pair
      ``[Rr]`` counts as its lower-case letter);
    - ``("seq", items, icase)``: a mandatory sub-sequence (group, atomic group, repeat
      with a minimum of 1), with the case flag in force inside it;
    - ``("branch", alternatives, icase)``: an alternation (each alternative a sequence).

    Anything else (classes, optional repeats, anchors) ends the current run.  Shared by
    the required-literal check and the witness choice, which read it differently."""
    run = []
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
            yield "seq", list(sub), (icase or bool(add & _re.IGNORECASE)) and not (rem & _re.IGNORECASE)
        elif op is _C.ATOMIC_GROUP:
            yield "seq", list(av), icase
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT):
            if av[0] >= 1:
                yield "seq", list(av[2]), icase
        elif op is _C.BRANCH:
            yield "branch", av[1], icase
    if run:
        yield "run", run, icase


def _re_req(items, bint icase, list runs, dict counts):
    for kind, x, ic in _re_parts(items, icase):
        if kind == "run":
            _re_req_flush(x, ic, runs, counts)
        elif kind == "seq":
            _re_req(x, ic, runs, counts)
        # alternatives add nothing: no single one is required


def _chain_form(str pattern, int flags):
    """``[L1, ..., Lk]`` (raw bytes) when the regex is ``.*``-separated literals, else None.

    Such a regex (frequent in Sigma: ``\\+.*\\+.*\\+``) backtracks badly in ``re``;
    ``mt_chain`` answers the same search in one pass.  Only ASCII literals, and
    under IGNORECASE only characters without case.
    """
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except Exception:
        return None
    icase = bool(parsed.state.flags & _re.IGNORECASE)
    lits = []
    run = []
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
    return lits, bool(parsed.state.flags & _re.DOTALL)


cdef class _Chain:
    """C arrays for mt_chain."""
    cdef list lits
    cdef const unsigned char **ptrs
    cdef size_t *lens
    cdef size_t *rare
    cdef size_t k
    cdef int dotall

    def __cinit__(self, list lits, bint dotall):
        cdef Py_ssize_t i
        self.lits = lits
        self.k = len(lits)
        self.dotall = dotall
        self.ptrs = <const unsigned char **>PyMem_Malloc(sizeof(char *) * self.k)
        self.lens = <size_t *>PyMem_Malloc(sizeof(size_t) * self.k)
        self.rare = <size_t *>PyMem_Malloc(sizeof(size_t) * self.k)
        if self.ptrs == NULL or self.lens == NULL or self.rare == NULL:
            raise MemoryError()
        for i in range(self.k):
            self.ptrs[i] = <const unsigned char *>(<bytes>lits[i])
            self.lens[i] = len(<bytes>lits[i])
            self.rare[i] = mt_rare_offset(self.ptrs[i], self.lens[i])

    def __dealloc__(self):
        PyMem_Free(self.ptrs)
        PyMem_Free(self.lens)
        PyMem_Free(self.rare)


cdef class _Rx:
    """One rule regex: RE2 (with the byte alphabet of sensor.detect.regex, as C arrays)
    or the budgeted backtracking engine."""
    cdef object match          # the RE2 object's Match, None for the budgeted engine
    cdef object anchor
    cdef object budgeted       # BudgetRegex, or None
    cdef bint empty            # Python's answer on the empty text
    cdef bytes amap            # 128 bytes; None when ASCII stands for itself
    cdef const unsigned char *amap_p
    cdef array.array bounds_a
    cdef const uint32_t *bounds
    cdef Py_ssize_t nb
    cdef bytes table
    cdef const unsigned char *table_p
    cdef uint32_t catmask

    def __cinit__(self, obj):
        if isinstance(obj, LinearRegex):
            al = obj.alphabet
            self.match = obj.match
            self.anchor = obj.anchor
            self.budgeted = None
            self.empty = obj.empty
            self.amap = al.ascii_map
            self.amap_p = NULL if al.ascii_map is None else <const unsigned char *>self.amap
            self.bounds_a = _pyarray.array("I", al.bounds if al.bounds else [0])
            self.bounds = <const uint32_t *>self.bounds_a.data.as_uints
            self.nb = len(al.bounds)
            self.table = al.table
            self.table_p = <const unsigned char *>self.table
            self.catmask = al.catmask
        else:
            self.match = None
            self.budgeted = obj

    cdef bytes alphabet(self, object t):
        """``t`` in the regex's byte alphabet (sensor.detect.regex.to_alphabet)."""
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(t), i, lo, hi, mid
        cdef int kind = PyUnicode_KIND(t)
        cdef void *data = PyUnicode_DATA(t)
        cdef Py_UCS4 c
        cdef uint32_t bits
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        cdef unsigned char *o = <unsigned char *>PyBytes_AS_STRING(out)
        for i in range(n):
            c = PyUnicode_READ(kind, data, i)
            if c < 128:
                o[i] = self.amap_p[c] if self.amap_p != NULL else <unsigned char>c
                continue
            lo = 0
            hi = self.nb
            while lo < hi:          # bisect_right(bounds, c)
                mid = (lo + hi) >> 1
                if c < self.bounds[mid]:
                    hi = mid
                else:
                    lo = mid + 1
            bits = ((1 if Py_UNICODE_ISDECIMAL(c) else 0) | (2 if Py_UNICODE_ISSPACE(c) else 0)
                    | (4 if Py_UNICODE_ISALNUM(c) else 0))
            o[i] = self.table_p[lo * 8 + (bits & self.catmask)]
        return out

    cdef int search(self, object t, const unsigned char *raw, Py_ssize_t rawlen) except -1:
        """1 match, 0 no match, 2 undecided (the budgeted engine ran out of steps).
        ``raw``: the text's bytes when it is ASCII (NULL otherwise)."""
        cdef object buf
        if self.match is None:
            try:
                return 1 if self.budgeted.search(t) else 0
            except BudgetExceeded:
                return 2
        if rawlen == 0 and PyUnicode_GET_LENGTH(t) == 0:
            return 1 if self.empty else 0
        if raw != NULL and self.amap_p == NULL:
            buf = PyMemoryView_FromMemory(<char *>raw, rawlen, PyBUF_READ)
        else:
            buf = self.alphabet(t)
            rawlen = len(<bytes>buf)
        return 1 if self.match(self.anchor, buf, 0, rawlen)[0][0] >= 0 else 0


def _regex_entry(str v, str letters, budget):
    cdef int flags = regex_flags(letters)
    cf = _chain_form(v, flags)
    chain = None if cf is None else _Chain(cf[0], cf[1])
    return (_Rx(compile_regex(v, letters, budget)),) + _regex_requirements(v, flags) + (chain,)


def _re_consider(best, cand):
    if cand is None or not cand[1]:
        return best
    if best is None or cand[0] < best[0]:
        return cand
    return best


def _re_run(best, list run, bint icase):
    text = "".join(run)
    parts = [text]
    if icase:
        parts = _re.split("[isIS]", text)
    for seg in parts:
        if seg:
            b = _enc(seg.lower())
            best = _re_consider(best, (_lit_p(_best_window(b, TRUNC_ANY), 100.0), [b]))
    return best


def _re_seq(items, bint icase):
    """(cost, literals) for a sequence of sre items: the best required literal set."""
    best = None
    for kind, x, ic in _re_parts(items, icase):
        if kind == "run":
            best = _re_run(best, x, ic)
        elif kind == "seq":
            best = _re_consider(best, _re_seq(x, ic))
        else:  # every alternative must yield a set: their union is required
            total = 0.0
            lits = []
            for alt in x:
                r = _re_seq(list(alt), ic)
                if r is None:
                    lits = None
                    break
                total += r[0]
                lits.extend(r[1])
            if lits:
                best = _re_consider(best, (total, lits))
    return best


cdef class _State:
    """Per-call scratch: field texts, predicate memo, candidate bitmap."""
    # Per-call scratch state; epochs make resets O(1) per event.
    cdef uint32_t epoch
    cdef uint32_t *memo          # per predicate: epoch << 2 | result (0, 1, 2 undecided)
    cdef uint32_t *vepoch        # per field: epoch the value was fetched in
    cdef uint8_t *fnone          # per field: value is missing
    cdef PyObject **ftext        # per field: the value as text (strong reference)
    cdef PyObject **flow         # per field: its str.lower() when not ASCII (strong reference)
    cdef uint32_t *lepoch        # per field: epoch the folded text was made in
    cdef const unsigned char **fptr
    cdef Py_ssize_t *flen
    cdef uint32_t *repoch        # per field: epoch the raw (unfolded) text was made in
    cdef const unsigned char **rptr
    cdef Py_ssize_t *rlen
    cdef unsigned char **buf     # per field: scratch for ASCII folding
    cdef Py_ssize_t *bufcap
    cdef uint64_t *cand          # candidate-rule bitmap
    cdef uint64_t *bg            # per field: bigram presence bitmap (MT_BG_WORDS words)
    cdef uint32_t *bgepoch       # per field: epoch the bitmap was made in
    cdef uint64_t *q4            # per field: hashed 4-gram presence bitmap (long texts)
    cdef uint32_t *q4epoch
    cdef list keep               # objects alive until the end of one match
    cdef object event
    cdef bint is_dict
    cdef bint is_pe
    cdef bint busy
    cdef Py_ssize_t nfields
    cdef Py_ssize_t npreds
    cdef Py_ssize_t nwords

    def __cinit__(self, Py_ssize_t nfields, Py_ssize_t npreds, Py_ssize_t nwords):
        self.nfields = nfields
        self.npreds = npreds
        self.nwords = nwords
        self.epoch = 0
        self.keep = []
        n = nfields if nfields else 1
        self.memo = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * (npreds if npreds else 1))
        self.vepoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        self.lepoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        self.repoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        self.fnone = <uint8_t *>PyMem_Malloc(n)
        self.ftext = <PyObject **>PyMem_Malloc(sizeof(PyObject *) * n)
        self.flow = <PyObject **>PyMem_Malloc(sizeof(PyObject *) * n)
        self.fptr = <const unsigned char **>PyMem_Malloc(sizeof(char *) * n)
        self.rptr = <const unsigned char **>PyMem_Malloc(sizeof(char *) * n)
        self.flen = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * n)
        self.rlen = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * n)
        self.buf = <unsigned char **>PyMem_Malloc(sizeof(char *) * n)
        self.bufcap = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * n)
        self.cand = <uint64_t *>PyMem_Malloc(sizeof(uint64_t) * (nwords if nwords else 1))
        self.bg = <uint64_t *>PyMem_Malloc(sizeof(uint64_t) * MT_BG_WORDS * n)
        self.bgepoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        self.q4 = <uint64_t *>PyMem_Malloc(sizeof(uint64_t) * MT_Q4_WORDS * n)
        self.q4epoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        if (self.memo == NULL or self.vepoch == NULL or self.lepoch == NULL or self.repoch == NULL
                or self.fnone == NULL or self.ftext == NULL or self.flow == NULL or self.fptr == NULL
                or self.rptr == NULL or self.flen == NULL or self.rlen == NULL
                or self.buf == NULL or self.bufcap == NULL or self.cand == NULL
                or self.bg == NULL or self.bgepoch == NULL
                or self.q4 == NULL or self.q4epoch == NULL):
            raise MemoryError()
        memset(self.buf, 0, sizeof(char *) * n)
        memset(self.bufcap, 0, sizeof(Py_ssize_t) * n)
        memset(self.ftext, 0, sizeof(PyObject *) * n)
        memset(self.flow, 0, sizeof(PyObject *) * n)
        self._reset()

    cdef void _release(self) noexcept:
        """Drop this call's references to field texts; clear the keep list."""
        self._drop_texts()
        if PyList_GET_SIZE(self.keep):
            del self.keep[:]
        self.event = None

    cdef void _drop_texts(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.nfields):
            if self.ftext[i] != NULL:
                Py_XDECREF(self.ftext[i])
                self.ftext[i] = NULL
            if self.flow[i] != NULL:
                Py_XDECREF(self.flow[i])
                self.flow[i] = NULL

    cdef void _reset(self):
        cdef Py_ssize_t n = self.nfields if self.nfields else 1
        memset(self.memo, 0, sizeof(uint32_t) * (self.npreds if self.npreds else 1))
        memset(self.vepoch, 0, sizeof(uint32_t) * n)
        memset(self.lepoch, 0, sizeof(uint32_t) * n)
        memset(self.repoch, 0, sizeof(uint32_t) * n)
        memset(self.bgepoch, 0, sizeof(uint32_t) * n)
        memset(self.q4epoch, 0, sizeof(uint32_t) * n)
        self.epoch = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.ftext != NULL and self.flow != NULL:
            self._drop_texts()   # (object attributes may already be cleared here)
        if self.buf != NULL:
            for i in range(self.nfields):
                PyMem_Free(self.buf[i])
        PyMem_Free(self.memo)
        PyMem_Free(self.vepoch)
        PyMem_Free(self.lepoch)
        PyMem_Free(self.repoch)
        PyMem_Free(self.fnone)
        PyMem_Free(self.ftext)
        PyMem_Free(self.flow)
        PyMem_Free(self.fptr)
        PyMem_Free(self.rptr)
        PyMem_Free(self.flen)
        PyMem_Free(self.rlen)
        PyMem_Free(self.buf)
        PyMem_Free(self.bufcap)
        PyMem_Free(self.cand)
        PyMem_Free(self.bg)
        PyMem_Free(self.bgepoch)
        PyMem_Free(self.q4)
        PyMem_Free(self.q4epoch)


cdef class Matcher:
    """Evaluate a rule set against events; ``match`` returns indices into ``rules``."""
    cdef public list rules
    cdef readonly dict _stats
    cdef list _names
    cdef PyObject **_nameptr       # per field slot: its (interned) name, owned by _names
    cdef uint8_t *_derived         # per field slot: a DERIVED field
    cdef dict _slot_of
    cdef dict _wslot_of
    cdef list _arrays
    cdef list _tests
    cdef list _regexes
    cdef bytes _blob
    cdef object _glob_blob
    cdef Py_ssize_t _nrules
    cdef Py_ssize_t _npreds
    cdef Py_ssize_t _nfields
    cdef Py_ssize_t _nwords
    # predicates
    cdef uint8_t *_p_kind
    cdef uint8_t *_p_cased
    cdef int32_t *_p_slot
    cdef uint32_t *_p_voff
    cdef uint32_t *_p_vcnt
    cdef uint32_t *_v_off
    cdef uint32_t *_v_len
    cdef uint32_t *_v_rare
    cdef uint32_t *_v_goff
    cdef uint32_t *_v_glen
    cdef uint32_t *_v_bg1          # per value: its two rarest bigrams (MT_BG), or NO_BG
    cdef uint32_t *_v_bg2
    cdef uint32_t *_v_q1           # per value: hashes (16 bits) of its two rarest 4-grams, or NO_BG
    cdef uint32_t *_v_q2
    cdef const unsigned char *_bytes
    cdef const uint16_t *_globs
    # condition program
    cdef uint8_t *_n_kind
    cdef int32_t *_n_arg
    cdef uint32_t *_n_coff
    cdef uint32_t *_n_ccnt
    cdef uint32_t *_children
    cdef uint32_t *_root
    cdef uint32_t *_root_nl        # per rule: program ordered for events with nothing pending
    # witness index
    cdef Py_ssize_t _nw
    cdef Automaton *_ac
    cdef Py_ssize_t _nac
    cdef uint32_t *_w_aoff         # per witness field: its automata _ac[_w_aoff[w]:_w_aoff[w+1]]
    cdef int32_t *_w_slot          # witness field -> field slot
    cdef list _w_names
    cdef uint64_t _w_scan1         # witness fields scanned on every event
    cdef uint64_t _w_scan2         # extra fields scanned when a witness field is pending
    cdef uint64_t *_r_f1           # per rule: primary witness fields
    cdef uint32_t *_always
    cdef Py_ssize_t _nalways
    cdef uint32_t *_nw2_off        # per witness field: rules without a fallback
    cdef uint32_t *_nw2
    cdef uint32_t *_f2_off         # per witness field: rules whose fallback reads it
    cdef uint32_t *_f2
    cdef _State _state
    cdef object _regex_budget
    cdef array.array _undecided_a
    cdef uint64_t *_undecided      # per rule: events on which it was undecided
    cdef object __weakref__

    engine = ENGINE

    def __cinit__(self):
        self._ac = NULL
        self._nameptr = NULL
        self._nw = 0

    def __dealloc__(self):
        PyMem_Free(self._ac)
        PyMem_Free(self._nameptr)

    def __init__(self, rules, regex_budget=None, lazy_fields=LAZY_FIELDS):
        self.rules = list(rules)
        self._regex_budget = regex_budget
        self._arrays = []
        self._compile(frozenset(lazy_fields))
        self._state = _State(self._nfields, self._npreds, self._nwords)
        self._undecided_a = _pyarray.array("Q", [0] * (self._nrules + 1))
        self._undecided = <uint64_t *>self._undecided_a.data.as_ulonglongs

    # ------------------------------------------------------------------ compile
    cdef array.array _keep(self, str code, values):
        """A typed array of ``values`` (never empty) that lives as long as the matcher."""
        cdef array.array a = _pyarray.array(code, values if values else [0])
        self._arrays.append(a)
        return a

    cdef uint32_t *_u32(self, values):
        return self._keep("I", values).data.as_uints

    cdef int32_t *_i32(self, values):
        return <int32_t *>self._keep("i", values).data.as_ints

    cdef uint8_t *_u8(self, values):
        return self._keep("B", values).data.as_uchars

    cdef uint64_t *_u64(self, values):
        return <uint64_t *>self._keep("Q", values).data.as_ulonglongs

    def _compile(self, lazy):
        rules = self.rules
        # -- unique predicates (a predicate shared by several rules is evaluated once)
        slots = {}
        preds = []
        conds = []
        for rule in rules:
            remap = []
            for p in rule.predicates:
                i = slots.get(p)
                if i is None:
                    i = slots[p] = len(preds)
                    preds.append(p)
                remap.append(i)
            conds.append(_remap(rule.condition, remap))
        self._npreds = len(preds)
        self._nrules = len(rules)
        self._nwords = (self._nrules + 63) // 64

        # -- fields
        self._slot_of = {}
        self._names = []

        def slot(name):
            s = self._slot_of.get(name)
            if s is None:
                name = _sys.intern(name) if type(name) is str else name
                s = self._slot_of[name] = len(self._names)
                self._names.append(name)
            return s

        blob = bytearray()
        globs = []
        p_kind, p_cased, p_slot, p_voff, p_vcnt = [], [], [], [], []
        v_off, v_len, v_rare, v_goff, v_glen = [], [], [], [], []
        v_bg1, v_bg2 = [], []
        v_q1, v_q2 = [], []
        self._tests = [None] * len(preds)
        self._regexes = [None] * len(preds)
        pcost = []
        pcost_nl = []      # the same without the lazy-field penalty (nothing pending)

        def add_value(bytes b, list prog=None):
            v_off.append(len(blob))
            v_len.append(len(b))
            v_rare.append(mt_rare_offset(b, len(b)) if b else 0)
            bg = _rare_bigrams(b)
            v_bg1.append(bg[0])
            v_bg2.append(bg[1])
            qg = _rare_quads(b)
            v_q1.append(qg[0])
            v_q2.append(qg[1])
            blob.extend(b)
            if prog is None:
                v_goff.append(0)
                v_glen.append(0)
            else:
                v_goff.append(len(globs))
                v_glen.append(len(prog))
                globs.extend(prog)

        for i, p in enumerate(preds):
            op = p.op
            fld = p.field
            p_cased.append(1 if p.cased else 0)
            p_voff.append(len(v_off))
            cost = 0.0
            if fld is None:
                kind = K_PY
                cost = 200.0
            elif op in _LIT_KINDS:
                kind = _LIT_KINDS[op]
                for v in p.values:
                    add_value(_enc(v if p.cased else v.lower()))
                cost = 1.0 + (2.0 if kind == K_CONTAINS else 0.2) * len(p.values)
            elif op == "glob":
                kind = K_GLOB
                for v in p.values:
                    prog = []
                    longest = b""
                    for tok in glob_tokens(v):
                        if tok is STAR:
                            prog.append(MT_STAR)
                        elif tok is QMARK:
                            prog.append(MT_QMARK)
                        else:
                            b = _enc(tok if p.cased else tok.lower())
                            prog.extend(b)
                            if len(b) > len(longest):
                                longest = b
                    add_value(longest, prog)
                cost = 1.0 + 5.0 * len(p.values)
            elif op == "exists":
                kind = K_EXISTS if p.values[0] else K_MISSING
                cost = 1.0
            elif op == "null":
                kind = K_MISSING
                cost = 1.0
            elif op == "re":
                kind = K_RE
                self._regexes[i] = tuple(_regex_entry(v, p.flags, self._regex_budget)
                                         for v in p.values)
                cost = 30.0 * len(p.values)
            else:
                kind = K_PY
                cost = 50.0
            if kind == K_PY:
                self._tests[i] = _Test(p, self._regex_budget)
                p_slot.append(-1)
            cost_nl = cost
            if kind != K_PY:
                p_slot.append(slot(fld))
                if fld in lazy:
                    cost += 1000.0
                elif fld == "@Message":
                    cost += 100.0
                    cost_nl += 100.0
                elif fld in DERIVED:
                    cost += 20.0
                    cost_nl += 20.0
            pcost_nl.append(cost_nl)
            p_vcnt.append(len(v_off) - p_voff[len(p_voff) - 1])
            p_kind.append(kind)
            pcost.append(cost)
        self._nfields = len(self._names)
        self._blob = bytes(blob)
        self._bytes = <const unsigned char *>self._blob
        cdef array.array ga = _pyarray.array("H", globs if globs else [0])
        self._arrays.append(ga)
        self._globs = <const uint16_t *>ga.data.as_ushorts
        self._p_kind = self._u8(p_kind)
        self._p_cased = self._u8(p_cased)
        self._p_slot = self._i32(p_slot)
        self._p_voff = self._u32(p_voff)
        self._p_vcnt = self._u32(p_vcnt)
        self._v_off = self._u32(v_off)
        self._v_len = self._u32(v_len)
        self._v_rare = self._u32(v_rare)
        self._v_goff = self._u32(v_goff)
        self._v_glen = self._u32(v_glen)
        self._v_bg1 = self._u32(v_bg1)
        self._v_bg2 = self._u32(v_bg2)
        self._v_q1 = self._u32(v_q1)
        self._v_q2 = self._u32(v_q2)

        # -- condition programs, operands cheapest first
        n_kind, n_arg, n_coff, n_ccnt, children, root = [], [], [], [], [], []

        # Two orders per rule: one for events with a lazily resolved field still
        # pending (reading it may cost a PE read, so it goes last), one for events
        # with nothing pending (every field is a dict lookup).  The order never
        # changes an answer.
        costs = pcost

        def cost_of(c):
            k = c[0]
            if k == "pred":
                return costs[c[1]]
            if k == "const":
                return 0.0
            if k == "not":
                return cost_of(c[1])
            return sum(cost_of(x) for x in c[1:])

        def emit(c):
            k = c[0]
            idx = len(n_kind)
            n_kind.append(0)
            n_arg.append(0)
            n_coff.append(0)
            n_ccnt.append(0)
            if k == "pred":
                n_kind[idx] = N_PRED
                n_arg[idx] = c[1]
            elif k == "const":
                n_kind[idx] = N_CONST
                n_arg[idx] = 1 if c[1] else 0
            elif k == "not":
                n_kind[idx] = N_NOT
                sub = emit(c[1])
                n_coff[idx] = len(children)
                n_ccnt[idx] = 1
                children.append(sub)
            else:
                n_kind[idx] = N_AND if k == "and" else N_OR
                ops = sorted(c[1:], key=cost_of)
                subs = [emit(x) for x in ops]
                n_coff[idx] = len(children)
                n_ccnt[idx] = len(subs)
                children.extend(subs)
            return idx

        for c in conds:
            root.append(emit(c))
        costs = pcost_nl
        root_nl = []
        for ri, c in enumerate(conds):
            if any(pcost[i] != pcost_nl[i] for i in _pred_ids(c)):
                root_nl.append(emit(c))
            else:
                root_nl.append(root[ri])
        self._n_kind = self._u8(n_kind)
        self._n_arg = self._i32(n_arg)
        self._n_coff = self._u32(n_coff)
        self._n_ccnt = self._u32(n_ccnt)
        self._children = self._u32(children)
        self._root = self._u32(root)
        self._root_nl = self._u32(root_nl)

        # -- witness index
        def pred_witness(int pid, bint avoid_lazy):
            p = preds[pid]
            kind = p_kind[pid]
            if p.cased or p.field is None or (avoid_lazy and p.field in lazy):
                return None
            if p.field == "@Message":
                return None
            out = []
            if kind in (K_EQ, K_CONTAINS, K_STARTS, K_ENDS):
                wk = _W_KIND[kind]
                for v in p.values:
                    b = _enc(v.lower())
                    if not b:
                        return None
                    out.append((p.field, b, wk))
            elif kind == K_GLOB:
                for v in p.values:
                    toks = glob_tokens(v)
                    best = None
                    for j, tok in enumerate(toks):
                        if tok is STAR or tok is QMARK:
                            continue
                        b = _enc(tok.lower())
                        wk = W_ANY
                        if j == 0:
                            wk |= W_START
                        if j == len(toks) - 1:
                            wk |= W_END
                        if best is None or len(b) > len(best[1]):
                            best = (p.field, b, wk)
                    if best is None:
                        return None
                    out.append(best)
            elif kind == K_RE:
                for v in p.values:
                    lits = _regex_witness(v, regex_flags(p.flags))
                    if lits is None:
                        return None
                    out.extend((p.field, b, W_ANY) for b in lits)
            else:
                return None
            return out

        def witness(c, bint avoid_lazy):
            # (cost, entries) or None: "the rule can hold only if one entry occurs".
            k = c[0]
            if k == "pred":
                ents = pred_witness(c[1], avoid_lazy)
                if ents is None:
                    return None
                ents = [_witness_entry(*e) for e in ents]
                return (sum(e[4] for e in ents), ents)
            if k == "const":
                return None if c[1] else (0.0, [])
            if k == "and":
                best = None
                for x in c[1:]:
                    w = witness(x, avoid_lazy)
                    if w is not None and (best is None or w[0] < best[0]):
                        best = w
                return best
            if k == "or":
                total = 0.0
                ents = []
                for x in c[1:]:
                    w = witness(x, avoid_lazy)
                    if w is None:
                        return None
                    total += w[0]
                    ents.extend(w[1])
                return (total, ents)
            return None  # not

        wfields = {}       # field name -> witness field index
        per_field = {}     # witness field -> {needle: [(rule, kind, tag)]}
        always = []
        r_f1 = [0] * self._nrules
        r_f2 = [None] * self._nrules
        nw2 = {}           # witness field -> rules without a usable fallback
        f2_by = {}         # witness field -> rules whose fallback reads it
        scan1 = 0
        scan2 = 0
        no_fallback = 0

        def wfield(name):
            w = wfields.get(name)
            if w is None:
                if len(wfields) >= MAX_WITNESS_FIELDS:
                    return None
                w = wfields[name] = len(wfields)
            return w

        def place(ri, ents, tag):
            mask = 0
            for e in ents:
                w = wfield(e[0])
                if w is None:
                    return None
                mask |= 1 << w
            seen = set()
            for fname, mode, nd, k, _cost in ents:
                key = (fname, mode, nd, k)
                if key in seen:
                    continue
                seen.add(key)
                per_field.setdefault((wfields[fname], mode), {}).setdefault(nd, []).append((ri, k, tag))
            return mask

        for ri, c in enumerate(conds):
            w1 = witness(c, False)
            if w1 is None:
                always.append(ri)
                continue
            m1 = place(ri, w1[1], 1)
            if m1 is None:
                always.append(ri)
                continue
            r_f1[ri] = m1
            scan1 |= m1
            fb = None
            if any(e[0] in lazy for e in w1[1]):
                w2 = witness(c, True)
                if w2 is not None:
                    m2 = place(ri, w2[1], 2)
                    if m2 is not None:
                        fb = m2
                        scan2 |= m2
                        for w in range(MAX_WITNESS_FIELDS):
                            if m2 >> w & 1:
                                f2_by.setdefault(w, []).append(ri)
            if fb is None and any(e[0] in lazy for e in w1[1]):
                no_fallback += 1
            if fb is None:
                # no fallback: when a field of the primary witness is pending, evaluate
                for w in range(MAX_WITNESS_FIELDS):
                    if m1 >> w & 1:
                        nw2.setdefault(w, []).append(ri)

        self._nw = len(wfields)
        self._w_names = sorted(wfields, key=wfields.get)
        self._wslot_of = dict(wfields)
        self._w_slot = self._i32([slot(n) for n in self._w_names])
        # fields created by the witness (never by a predicate) still need state
        self._nfields = len(self._names)
        self._derived = self._u8([1 if n in DERIVED else 0 for n in self._names])
        self._nameptr = <PyObject **>PyMem_Malloc(sizeof(PyObject *) * (self._nfields + 1))
        if self._nameptr == NULL:
            raise MemoryError()
        for i in range(self._nfields):
            self._nameptr[i] = <PyObject *>self._names[i]
        self._w_scan1 = scan1
        self._w_scan2 = scan2 & ~scan1
        self._r_f1 = self._u64(r_f1)
        self._always = self._u32(always)
        self._nalways = len(always)
        off, flat = [0], []
        for w in range(self._nw):
            flat.extend(nw2.get(w, ()))
            off.append(len(flat))
        self._nw2_off = self._u32(off)
        self._nw2 = self._u32(flat)
        off, flat = [0], []
        for w in range(self._nw):
            flat.extend(f2_by.get(w, ()))
            off.append(len(flat))
        self._f2_off = self._u32(off)
        self._f2 = self._u32(flat)

        keys = sorted(per_field)
        self._nac = len(keys)
        self._ac = <Automaton *>PyMem_Malloc(sizeof(Automaton) * (self._nac if self._nac else 1))
        if self._ac == NULL:
            raise MemoryError()
        cdef Automaton *a
        total_states = 0
        total_needles = 0
        aoff = [0] * (self._nw + 1)
        for ai, (w, mode) in enumerate(keys):
            aoff[w + 1] = ai + 1
            table = per_field[(w, mode)]
            needles = list(table)
            n, ncls, cls, trans, out_off, out_ids, groups, seqlen = _build_automaton(needles, mode)
            a = &self._ac[ai]
            a.field = w
            a.mode = mode
            a.nstates = n
            a.ncls = ncls
            for b in range(256):
                a.cls[b] = cls[b]
            a.trans16 = NULL
            a.trans32 = NULL
            a.q4bits = NULL
            a.q2bits = NULL
            a.q_ent = NULL
            eoff, er, ek, et = [0], [], [], []
            for members in groups:
                ents = []
                for nid in members:
                    ents.extend(table[needles[nid]])
                for ri, wk, tag in sorted(set(ents)):
                    er.append(ri)
                    ek.append(wk)
                    et.append(tag)
                eoff.append(len(er))
            a.nd_eoff = self._u32(eoff)
            a.en_rule = self._u32(er)
            a.en_kind = self._u8(ek)
            a.en_tag = self._u8(et)
            total_states += n
            total_needles += len(needles)
            if mode == 0 and n * ncls * 2 > Q_MIN_TABLE and not any(k & W_START for k in ek):
                self._build_qgram(a, needles, groups)
                continue
            # Stored column-major (class-major): the next state is
            # trans[col[byte] + s], so the state chain of a scan costs one add and
            # one load per byte (no multiply), and the breadth-first numbering keeps
            # the shallow states of every class in a few cache lines.
            for b in range(256):
                a.col[b] = cls[b] * n
            trans = [trans[st_ * ncls + c] for c in range(ncls) for st_ in range(n)]
            # the top bit of a next-state id flags "this state has outputs"
            if n < 32768:
                trans = [t | 0x8000 if out_off[t + 1] != out_off[t] else t for t in trans]
                ta = _pyarray.array("H", trans)
                self._arrays.append(ta)
                a.trans16 = <uint16_t *>(<array.array>ta).data.as_ushorts
            else:
                trans = [t | 0x80000000 if out_off[t + 1] != out_off[t] else t for t in trans]
                a.trans32 = self._u32(trans)
            a.out_off = self._u32(out_off)
            a.out_ids = self._u32(out_ids)
            a.nd_len = self._u32(seqlen)
        for w in range(self._nw):   # fields without automata keep an empty range
            if aoff[w + 1] < aoff[w]:
                aoff[w + 1] = aoff[w]
        self._w_aoff = self._u32(aoff)

        self._stats = {
            "engine": ENGINE,
            "rules": self._nrules,
            "predicates": self._npreds,
            "fields": self._nfields,
            "indexed_rules": self._nrules - len(always),
            "always_evaluated_rules": len(always),
            "rules_without_lazy_fallback": no_fallback,
            "witness_fields": list(self._w_names),
            "witness_literals": total_needles,
            "automaton_states": total_states,
            "index_bytes": sum(x.buffer_info()[1] * x.itemsize for x in self._arrays),
        }

    cdef int _build_qgram(self, Automaton *a, list needles, list groups) except -1:
        """Turn a large "anywhere" automaton into an anchor filter (mode 3).

        A big Aho-Corasick table does not stay in cache, and its walk is a chain of
        dependent loads.  Instead each needle (at most TRUNC_ANY bytes) gets an
        anchor: its rarest 4-byte gram (or 2-byte gram for 2-3 byte needles, the
        byte itself for 1-byte needles).  The scan tests every position's grams in
        small bitmaps (independent loads) and verifies the needles of the bucket.
        Every occurrence of a needle contains its anchor, so none is missed.
        """
        cdef bytes nd
        cdef Py_ssize_t L, k, best_k
        gid_of = {}
        for gid, members in enumerate(groups):
            for nid in members:
                gid_of[nid] = gid
        e1, e2, e4 = [], [], []
        n4 = sum(1 for x in needles if len(x) >= 4)
        qb = 10
        while qb < 16 and (1 << qb) < 16 * n4:
            qb += 1
        shift = 32 - qb
        for nid, nd in enumerate(needles):
            L = len(nd)
            gid = gid_of[nid]
            if L == 1:
                e1.append((0, nd, 0, gid))
            elif L <= 3:
                best_k = min(range(L - 1), key=lambda j: (_byte_p(nd[j]) * _byte_p(nd[j + 1]), j))
                e2.append((nd[best_k] | (nd[best_k + 1] << 8), nd, best_k, gid))
            else:
                best_k = min(range(L - 3), key=lambda j: (_lit_p(nd[j:j + 4], 1.0), j))
                e4.append((mt_q_hash4(<const unsigned char *>nd + best_k, shift), nd, best_k, gid))
        e2.sort(key=lambda e: e[0])
        e4.sort(key=lambda e: e[0])
        blob = bytearray()
        noff, nlen, nk, ngid = [], [], [], []
        ent = []
        for _key, nd, k, gid in e1 + e2 + e4:
            noff.append(len(blob))
            # packed entry for the scan: the anchor's 4 bytes (native byte order, as
            # loaded from the text; 0 for shorter needles), offset, len | k << 16, group
            anchor = int.from_bytes(nd[k:k + 4], _sys.byteorder) if len(nd) >= 4 else 0
            ent.extend((anchor, len(blob), len(nd) | (k << 16), gid))
            blob.extend(nd)
            nlen.append(len(nd))
            nk.append(k)
            ngid.append(gid)
        a.q_ent = self._u32(ent)
        qbytes = _pyarray.array("B", bytes(blob) if blob else b"\0")
        self._arrays.append(qbytes)
        a.q_bytes = <const unsigned char *>(<array.array>qbytes).data.as_uchars
        a.q_noff = self._u32(noff)
        a.q_len = self._u32(nlen)
        a.q_k = self._u32(nk)
        a.q_gid = self._u32(ngid)
        a.q1e = len(e1)
        a.qshift = shift

        def offsets(ents, base, nb):
            off = [0] * (nb + 1)
            for key, *_rest in ents:
                off[key + 1] += 1
            acc = base
            for i in range(nb + 1):
                acc += off[i]
                off[i] = acc
            return off

        def bits(ents, nb):
            words = [0] * (nb // 64)
            for key, *_rest in ents:
                words[key >> 6] |= 1 << (key & 63)
            return words

        a.q4off = self._u32(offsets(e4, len(e1) + len(e2), 1 << qb))
        a.q4bits = self._u64(bits(e4, 1 << qb))
        if e2:
            a.q2off = self._u32(offsets(e2, len(e1), 65536))
            a.q2bits = self._u64(bits(e2, 65536))
        a.mode = 3
        return 0

    # ------------------------------------------------------------------ runtime
    cdef int _fetch(self, _State st, int32_t slot) except -1:
        """Fetch field ``slot``'s value as text (once per event); 0 when it is missing."""
        cdef object v, t, name, ev, pending
        cdef PyObject *ptr
        name = <object>self._nameptr[slot]
        ev = st.event
        if st.is_dict:
            ptr = PyDict_GetItem(ev, name)
            v = <object>ptr if ptr != NULL else None
        else:
            v = ev.get(name)
        if v is None:
            # field_value(): derived fields first, then a pending resolver
            if self._derived[slot]:
                v = DERIVED[name](ev)
            else:
                pending = _pending_of(ev, st.is_pe)
                if pending and name in pending:
                    v = ev.resolve(name)
        st.vepoch[slot] = st.epoch
        if v is None:
            st.fnone[slot] = 1
            return 0
        st.fnone[slot] = 0
        if PyUnicode_Check(v):
            t = v
        elif v is True:
            t = "true"
        elif v is False:
            t = "false"
        else:
            t = str(v)
        # a strong reference: a resolver run later in this call may replace the value
        Py_XINCREF(<PyObject *>t)
        Py_XDECREF(st.ftext[slot])
        st.ftext[slot] = <PyObject *>t
        return 1

    cdef inline int _field(self, _State st, int32_t slot, bint raw) except -1:
        """Make field ``slot``'s text ready (folded, or raw); 0 when it is missing."""
        cdef uint32_t ep = st.epoch
        if st.vepoch[slot] != ep:
            if not self._fetch(st, slot):
                return 0
        elif st.fnone[slot]:
            return 0
        if raw:
            if st.repoch[slot] != ep:
                self._make_raw(st, slot)
            return 1
        if st.lepoch[slot] != ep:
            self._fold(st, slot)
        return 1

    cdef inline int _scantext(self, _State st, int32_t slot, const unsigned char **h, Py_ssize_t *n) except -1:
        """Text for the witness automata: the raw bytes when ASCII (the byte classes
        fold ASCII case), else the folded UTF-8.  0 when the field is missing."""
        cdef object t
        if not self._field(st, slot, 1):
            return 0
        t = <object>st.ftext[slot]
        if PyUnicode_IS_ASCII(t):
            h[0] = st.rptr[slot]
            n[0] = st.rlen[slot]
            return 1
        self._field(st, slot, 0)
        h[0] = st.fptr[slot]
        n[0] = st.flen[slot]
        return 1

    cdef int _make_raw(self, _State st, int32_t slot) except -1:
        cdef object t = <object>st.ftext[slot]
        if PyUnicode_IS_ASCII(t):
            st.rptr[slot] = <const unsigned char *>PyUnicode_DATA(t)
            st.rlen[slot] = PyUnicode_GET_LENGTH(t)
        else:
            _utf8(st, t, &st.rptr[slot], &st.rlen[slot])
        st.repoch[slot] = st.epoch
        return 0

    cdef int _fold(self, _State st, int32_t slot) except -1:
        cdef object t = <object>st.ftext[slot]
        cdef Py_ssize_t n
        cdef const char *u
        cdef unsigned char *b
        if PyUnicode_IS_ASCII(t):
            n = PyUnicode_GET_LENGTH(t)
            u = <const char *>PyUnicode_DATA(t)
            if n > 0 and mt_has_upper_ascii(<const unsigned char *>u, n):
                if st.bufcap[slot] < n:
                    b = <unsigned char *>PyMem_Realloc(st.buf[slot], n + 64)
                    if b == NULL:
                        raise MemoryError()
                    st.buf[slot] = b
                    st.bufcap[slot] = n + 64
                mt_lower_ascii(st.buf[slot], <const unsigned char *>u, n)
                st.fptr[slot] = st.buf[slot]
            else:
                st.fptr[slot] = <const unsigned char *>u
            st.flen[slot] = n
        else:
            t = t.lower()   # full Unicode folding, exactly as the reference
            Py_XINCREF(<PyObject *>t)
            Py_XDECREF(st.flow[slot])
            st.flow[slot] = <PyObject *>t
            _utf8(st, t, &st.fptr[slot], &st.flen[slot])
        st.lepoch[slot] = st.epoch
        return 1

    cdef int _pred(self, _State st, uint32_t p) except -1:
        cdef uint32_t m = st.memo[p]
        cdef uint32_t ep = st.epoch
        cdef int r
        if (m >> 2) == ep:
            return m & 3
        r = self._pred_eval(st, p)
        st.memo[p] = (ep << 2) | <uint32_t>r
        return r

    cdef int _pred_eval(self, _State st, uint32_t p) except -1:
        cdef uint8_t kind = self._p_kind[p]
        cdef int32_t slot = self._p_slot[p]
        cdef uint32_t v = self._p_voff[p]
        cdef uint32_t vend = v + self._p_vcnt[p]
        cdef const unsigned char *h
        cdef const unsigned char *nd
        cdef const uint64_t *bm
        cdef const uint64_t *qm
        cdef Py_ssize_t hn
        cdef uint32_t nn
        cdef int present
        if kind == K_PY:
            try:
                return 1 if (<object>self._tests[p]).evaluate(st.event) else 0
            except BudgetExceeded:
                return 2
        present = self._field(st, slot, self._p_cased[p] or kind == K_RE)
        if kind == K_EXISTS:
            return present
        if kind == K_MISSING:
            return 1 - present
        if not present:
            return 0
        if kind == K_RE:
            # exact pre-check: literals (and repeated bytes) every match contains
            self._field(st, slot, 0)
            h = st.fptr[slot]
            hn = st.flen[slot]
            t = <object>st.ftext[slot]
            undecided = False
            for rx, lits, counts, chain in <tuple>self._regexes[p]:
                if (<_Rx>rx).match is None:
                    # the budgeted engine runs as in the reference, with no pre-check, so
                    # both engines agree on when it is undecided
                    r = (<_Rx>rx).search(t, NULL, 0)
                    if r == 1:
                        return 1
                    if r == 2:
                        undecided = True
                    continue
                ok = True
                for lit in <tuple>lits:
                    if not mt_contains(h, hn, <const unsigned char *>(<bytes>lit), len(<bytes>lit),
                                       mt_rare_offset(<const unsigned char *>(<bytes>lit), len(<bytes>lit))):
                        ok = False
                        break
                if ok:
                    for c, k in <tuple>counts:
                        if mt_count(h, hn, <unsigned char>c, k) < <size_t>k:
                            ok = False
                            break
                if not ok:
                    continue
                self._field(st, slot, 1)
                if chain is not None:
                    ch = <_Chain>chain
                    if mt_chain(st.rptr[slot], st.rlen[slot], ch.ptrs, ch.lens, ch.rare, ch.k, ch.dotall):
                        return 1
                    continue
                r = (<_Rx>rx).search(t, st.rptr[slot] if PyUnicode_IS_ASCII(t) else NULL,
                                     st.rlen[slot])
                if r == 1:
                    return 1
                if r == 2:
                    undecided = True
            return 2 if undecided else 0
        if self._p_cased[p]:
            h = st.rptr[slot]
            hn = st.rlen[slot]
        else:
            h = st.fptr[slot]
            hn = st.flen[slot]
        bm = NULL
        qm = NULL
        if (kind == K_CONTAINS or kind == K_GLOB) and not self._p_cased[p] and hn >= 32:
            # Filter the needles by bigram presence (a long text has most bigrams:
            # by hashed 4-grams instead).  The bitmap is built for a predicate with
            # several values; once built, every predicate on the field uses it.
            if hn >= Q4_MIN_TEXT:
                if st.q4epoch[slot] == st.epoch:
                    qm = st.q4 + <Py_ssize_t>slot * MT_Q4_WORDS
                elif vend - v >= 2:
                    qm = st.q4 + <Py_ssize_t>slot * MT_Q4_WORDS
                    mt_quads(qm, h, hn)
                    st.q4epoch[slot] = st.epoch
            elif st.bgepoch[slot] == st.epoch:
                bm = st.bg + <Py_ssize_t>slot * MT_BG_WORDS
            elif vend - v >= 2:
                bm = st.bg + <Py_ssize_t>slot * MT_BG_WORDS
                mt_bigrams(bm, h, hn)
                st.bgepoch[slot] = st.epoch
        if kind == K_CONTAINS:
            while v < vend:
                nn = self._v_len[v]
                if qm != NULL and not (mt_q4_has(qm, self._v_q1[v]) and mt_q4_has(qm, self._v_q2[v])):
                    v += 1
                    continue
                if bm != NULL and not (mt_bg_has(bm, self._v_bg1[v]) and mt_bg_has(bm, self._v_bg2[v])):
                    v += 1
                    continue
                if mt_contains(h, hn, self._bytes + self._v_off[v], nn, self._v_rare[v]):
                    return 1
                v += 1
            return 0
        if kind == K_EQ:
            while v < vend:
                nn = self._v_len[v]
                nd = self._bytes + self._v_off[v]
                if nn == hn and (nn == 0 or (nd[0] == h[0] and mt_eq_bwd(h, nd, nn))):
                    return 1
                v += 1
            return 0
        if kind == K_ENDS:
            while v < vend:
                nn = self._v_len[v]
                nd = self._bytes + self._v_off[v]
                if nn <= hn and mt_eq_bwd(h + hn - nn, nd, nn):
                    return 1
                v += 1
            return 0
        if kind == K_STARTS:
            while v < vend:
                nn = self._v_len[v]
                nd = self._bytes + self._v_off[v]
                if nn <= hn and mt_eq_fwd(h, nd, nn):
                    return 1
                v += 1
            return 0
        # K_GLOB: the longest literal must occur before the wildcard walk
        while v < vend:
            nn = self._v_len[v]
            if qm != NULL and not (mt_q4_has(qm, self._v_q1[v]) and mt_q4_has(qm, self._v_q2[v])):
                v += 1
                continue
            if bm != NULL and not (mt_bg_has(bm, self._v_bg1[v]) and mt_bg_has(bm, self._v_bg2[v])):
                v += 1
                continue
            if mt_contains(h, hn, self._bytes + self._v_off[v], nn, self._v_rare[v]) and \
                    mt_glob(self._globs + self._v_goff[v], self._v_glen[v], h, hn):
                return 1
            v += 1
        return 0

    cdef int _eval(self, _State st, uint32_t node) except -1:
        """1 true, 0 false, 2 undecided (three-valued: the order of operands never
        changes the result; see sensor.detect._matcher_py)."""
        cdef uint8_t k = self._n_kind[node]
        cdef uint32_t c, cend
        cdef int r, out
        if k == N_PRED:
            return self._pred(st, <uint32_t>self._n_arg[node])
        if k == N_CONST:
            return self._n_arg[node]
        c = self._n_coff[node]
        if k == N_NOT:
            r = self._eval(st, self._children[c])
            return 2 if r == 2 else 1 - r
        cend = c + self._n_ccnt[node]
        if k == N_AND:
            out = 1
            while c < cend:
                r = self._eval(st, self._children[c])
                if r == 0:
                    return 0
                if r == 2:
                    out = 2
                c += 1
            return out
        out = 0
        while c < cend:   # N_OR
            r = self._eval(st, self._children[c])
            if r == 1:
                return 1
            if r == 2:
                out = 2
            c += 1
        return out

    cdef int _scan(self, _State st, Py_ssize_t w, uint64_t pmask) except -1:
        """Run field ``w``'s automata; mark the rules whose witness literals occur."""
        cdef int32_t slot = self._w_slot[w]
        cdef Automaton *a
        cdef const unsigned char *h
        cdef Py_ssize_t n, i
        cdef uint32_t ai, s, ncls
        if not self._scantext(st, slot, &h, &n):
            return 0
        for ai in range(self._w_aoff[w], self._w_aoff[w + 1]):
            a = &self._ac[ai]
            ncls = a.ncls
            if a.mode == 0:
                s = 0
                if a.trans16 != NULL:
                    i = 0
                    while i < n:
                        # the walk runs in its own tight C loop (the state stays in a
                        # register); it stops after a state with outputs
                        i = <Py_ssize_t>mt_ac_run16(a.trans16, a.col, h, <size_t>i, <size_t>n, &s)
                        if s & 0x8000:
                            s &= 0x7FFF
                            _hits(a, st.cand, s, 0, i, pmask, self._r_f1)
                else:
                    for i in range(n):
                        s = a.trans32[a.col[h[i]] + s]
                        if s & 0x80000000:
                            s &= 0x7FFFFFFF
                            _hits(a, st.cand, s, 0, i + 1, pmask, self._r_f1)
            elif a.mode == 3:
                self._scan_q(st, a, slot, pmask)
            elif a.mode == 1:
                s = 1
                for i in range(n):
                    if a.trans16 != NULL:
                        s = a.trans16[a.col[h[i]] + s]
                        if s & 0x8000:
                            s &= 0x7FFF
                            _hits(a, st.cand, s, 0, 0, pmask, self._r_f1)
                    else:
                        s = a.trans32[a.col[h[i]] + s]
                        if s & 0x80000000:
                            s &= 0x7FFFFFFF
                            _hits(a, st.cand, s, 0, 0, pmask, self._r_f1)
                    if s == 0:
                        break
            else:
                s = 1
                i = n - 1
                while i >= 0:
                    if a.trans16 != NULL:
                        s = a.trans16[a.col[h[i]] + s]
                        if s & 0x8000:
                            s &= 0x7FFF
                            _hits(a, st.cand, s, (1 if i == 0 else 0), 0, pmask, self._r_f1)
                    else:
                        s = a.trans32[a.col[h[i]] + s]
                        if s & 0x80000000:
                            s &= 0x7FFFFFFF
                            _hits(a, st.cand, s, (1 if i == 0 else 0), 0, pmask, self._r_f1)
                    if s == 0:
                        break
                    i -= 1
        return 0

    cdef int _scan_q(self, _State st, Automaton *a, int32_t slot, uint64_t pmask) except -1:
        """Anchor-filter scan (mode 3) over the folded text."""
        cdef const unsigned char *h
        cdef size_t n, i, e, eend
        cdef unsigned g
        cdef uint32_t x
        cdef const uint32_t *ent
        self._field(st, slot, 0)
        h = st.fptr[slot]
        n = <size_t>st.flen[slot]
        for e in range(a.q1e):
            if memchr(h, a.q_bytes[a.q_noff[e]], n) != NULL:
                _qmark(a, st.cand, a.q_gid[e], pmask, self._r_f1)
        i = 0
        while True:
            i = mt_q_next(a.q4bits, a.qshift, a.q2bits, h, i, n)
            if i >= n:
                break
            if a.q2bits != NULL:
                g = <unsigned>h[i] | (<unsigned>h[i + 1] << 8)
                if (a.q2bits[g >> 6] >> (g & 63)) & 1:
                    eend = a.q2off[g + 1]
                    for e in range(a.q2off[g], eend):
                        if mt_q_verify(h, n, i, a.q_bytes + a.q_noff[e], a.q_len[e], a.q_k[e]):
                            _qmark(a, st.cand, a.q_gid[e], pmask, self._r_f1)
            if i + 4 <= n:
                g = mt_q_hash4(h + i, a.qshift)
                if (a.q4bits[g >> 6] >> (g & 63)) & 1:
                    # the anchor's 4 bytes, kept in the packed entry, reject hash
                    # collisions without touching the needle bytes
                    x = mt_load32(h + i)
                    eend = a.q4off[g + 1]
                    for e in range(a.q4off[g], eend):
                        ent = a.q_ent + 4 * e
                        if ent[0] == x and mt_q_verify(h, n, i, a.q_bytes + ent[1], ent[2] & 0xFFFF, ent[2] >> 16):
                            _qmark(a, st.cand, ent[3], pmask, self._r_f1)
            i += 1
        return 0

    cdef int _select(self, _State st) except -1:
        """Fill the candidate bitmap: rules that can hold for this event."""
        cdef uint64_t *cand = st.cand
        cdef uint64_t pmask = 0, scan
        cdef Py_ssize_t i, w
        cdef uint32_t r, j
        cdef object pending, ev = st.event
        memset(cand, 0, sizeof(uint64_t) * self._nwords)
        for i in range(self._nalways):
            r = self._always[i]
            cand[r >> 6] |= (<uint64_t>1) << (r & 63)
        if not (st.is_dict and not st.is_pe):
            pending = _pending_of(ev, st.is_pe)
            if pending:
                for name in pending:
                    wi = self._wslot_of.get(name)
                    if wi is not None and ev.get(name) is None and name not in DERIVED:
                        pmask |= (<uint64_t>1) << <int>wi
        scan = self._w_scan1 | (self._w_scan2 if pmask else 0)
        scan &= ~pmask
        while scan:
            w = mt_ctz64(scan)
            scan &= scan - 1
            self._scan(st, w, pmask)
        if pmask:
            scan = pmask
            while scan:
                w = mt_ctz64(scan)
                scan &= scan - 1
                for j in range(self._nw2_off[w], self._nw2_off[w + 1]):
                    r = self._nw2[j]
                    cand[r >> 6] |= (<uint64_t>1) << (r & 63)
                for j in range(self._f2_off[w], self._f2_off[w + 1]):
                    r = self._f2[j]
                    if pmask & self._r_f1[r]:
                        cand[r >> 6] |= (<uint64_t>1) << (r & 63)
        return 0

    cpdef list match(self, event):
        """Indices of the rules whose condition holds for ``event``, ascending."""
        cdef _State st = self._state
        cdef list out = []
        cdef Py_ssize_t wd
        cdef uint64_t bits
        cdef uint32_t r
        cdef int res
        cdef const uint32_t *roots
        if st.busy:   # re-entered from a resolver, or another thread: private scratch
            st = _State(self._nfields, self._npreds, self._nwords)
        st.busy = True
        st.epoch += 1
        if st.epoch >= 0x3FFFFFFF:
            st._reset()
            st.epoch = 1
        tp = type(event)
        st.is_pe = tp is ProcessEvent
        st.is_dict = st.is_pe or tp is dict
        st.event = event
        try:
            roots = self._root_nl
            if not (st.is_dict and not st.is_pe) and _pending_of(event, st.is_pe):
                roots = self._root
            self._select(st)
            for wd in range(self._nwords):
                bits = st.cand[wd]
                while bits:
                    r = <uint32_t>(wd * 64 + mt_ctz64(bits))
                    bits &= bits - 1
                    res = self._eval(st, roots[r])
                    if res == 1:
                        out.append(r)
                    elif res == 2:
                        self._undecided[r] += 1
            return out
        finally:
            st._release()
            st.busy = False

    def candidates(self, event):
        """Indices of the rules the index lets through for ``event`` (a superset of ``match``)."""
        cdef _State st = _State(self._nfields, self._npreds, self._nwords)
        cdef list out = []
        cdef Py_ssize_t wd
        cdef uint64_t bits
        st.epoch = 1
        tp = type(event)
        st.is_pe = tp is ProcessEvent
        st.is_dict = st.is_pe or tp is dict
        st.event = event
        try:
            self._select(st)
            for wd in range(self._nwords):
                bits = st.cand[wd]
                while bits:
                    out.append(wd * 64 + mt_ctz64(bits))
                    bits &= bits - 1
            return out
        finally:
            st._release()

    def match_rules(self, event):
        """The matching rules themselves."""
        return [self.rules[i] for i in self.match(event)]

    @property
    def undecided(self):
        """Per rule index: events on which the rule was undecided (a regex ran out of its
        step budget), since the matcher was built."""
        return {i: self._undecided[i] for i in range(self._nrules) if self._undecided[i]}

    def regex_engines(self):
        """Per rule index with a regex: ``(pattern, engine, reason)`` for each."""
        return regex_engines(self.rules)

    @property
    def stats(self):
        """Engine name, rule and predicate counts, and index statistics."""
        out = dict(self._stats)
        out["undecided_events"] = sum(self._undecided[i] for i in range(self._nrules))
        return out


cdef inline void _hits(Automaton *a, uint64_t *cand, uint32_t s, int edge, Py_ssize_t endpos,
                      uint64_t pmask, const uint64_t *r_f1) noexcept:
    """Mark the rules named by the outputs of state ``s``.

    An entry of kind W_START needs its literal to touch the value's start: for the
    Aho-Corasick mode that is ``endpos == len``, for the suffix trie ``edge``.
    """
    cdef uint32_t o = a.out_off[s], oe = a.out_off[s + 1], nid, e, eend, r
    cdef int at_start
    while o < oe:
        nid = a.out_ids[o]
        if a.mode == 0:
            at_start = <Py_ssize_t>a.nd_len[nid] == endpos
        elif a.mode == 2:
            at_start = edge
        else:
            at_start = 1
        e = a.nd_eoff[nid]
        eend = a.nd_eoff[nid + 1]
        while e < eend:
            if at_start or not (a.en_kind[e] & W_START):
                r = a.en_rule[e]
                if a.en_tag[e] == 1 or (pmask & r_f1[r]):
                    cand[r >> 6] |= (<uint64_t>1) << (r & 63)
            e += 1
        o += 1


cdef inline void _qmark(Automaton *a, uint64_t *cand, uint32_t gid, uint64_t pmask,
                        const uint64_t *r_f1) noexcept:
    """Mark the rules of needle group ``gid`` (mode 3: every entry is W_ANY)."""
    cdef uint32_t e = a.nd_eoff[gid], eend = a.nd_eoff[gid + 1], r
    while e < eend:
        r = a.en_rule[e]
        if a.en_tag[e] == 1 or (pmask & r_f1[r]):
            cand[r >> 6] |= (<uint64_t>1) << (r & 63)
        e += 1


cdef int _utf8(_State st, object t, const unsigned char **ptr, Py_ssize_t *n) except -1:
    """UTF-8 bytes of ``t`` (cached in the str; lone surrogates via surrogatepass)."""
    cdef const char *u
    try:
        u = PyUnicode_AsUTF8AndSize(t, n)
    except UnicodeEncodeError:
        b = (<str>t).encode("utf-8", "surrogatepass")
        st.keep.append(b)
        ptr[0] = <const unsigned char *>(<bytes>b)
        n[0] = len(<bytes>b)
        return 0
    ptr[0] = <const unsigned char *>u
    return 0


def _pred_ids(cond):
    """Predicate ids a condition reads."""
    kind = cond[0]
    if kind == "pred":
        return [cond[1]]
    if kind in ("and", "or"):
        return [i for c in cond[1:] for i in _pred_ids(c)]
    if kind == "not":
        return _pred_ids(cond[1])
    return []


