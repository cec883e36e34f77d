# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, embedsignature=True
"""Compiled rule matcher (``sensor.detect._matcher``).

Same API and answers as the reference matcher ``sensor.detect._matcher_py`` (which
defines the semantics).  Design (docs/matcher.md):

* The rule IR is compiled into flat C arrays: unique predicates (shared ones are
  evaluated once per event, memoised by an epoch counter), and one condition program
  per rule whose AND/OR operands are ordered cheapest first.
* Each field is fetched and folded once per event, lazily, in one C pass that gives
  ``str.lower()`` exactly (the final-sigma rule aside: predicates whose values hold a
  sigma use ``str.lower()`` itself).
* Literal units (sensor.detect.index): every literal tested anywhere in a field is found
  by one pass of an exact automaton (Aho-Corasick, or an anchor filter for large sets),
  so a ``contains`` predicate costs bit tests whatever its number of values.  Equality,
  prefix and suffix tests compare the value's ends.  Globs run a linear wildcard walk
  once their literal tokens are known to occur; regexes run on RE2 (linear) after an
  exact check of the literals every match contains.  Work per event is linear in the
  length of the fields, whatever the rules and the text.
* A witness index keeps one event from touching most rules: for every rule a set of
  literals, one of which must occur for the rule to hold, is derived from its
  condition; the unit scans and prefix/suffix tries mark the rules whose witness
  occurs, and only those are evaluated.  Each rule also gets a fallback witness that
  avoids lazily resolved fields (``OriginalFileName``...), used when such a field is
  still pending, so a PE read is requested only when a candidate rule really reaches
  that predicate.
* Rare operators (``cidr``, numeric, ``fieldref``, keyword searches other than
  ``contains``) reuse the reference's prepared tests; only candidate rules reach them.
"""
from cpython cimport array
from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.string cimport memset, memcmp, memchr

import array as _pyarray
import sys as _sys

from sensor.detect import index as _ix
from sensor.detect._matcher_py import _Test, _remap, regex_engines  # the same condition rewrite as the reference
from sensor.events import DERIVED, ProcessEvent
from sensor.detect.ir import STAR, QMARK, glob_tokens, regex_flags
from sensor.detect.regex import ENGINE_RE2, LinearRegex, compile_regex, plan as _plan
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
    /* Py_UNICODE_TOLOWER through a small direct-mapped cache ((c + 1) << 32 | lower(c)):
     * the Unicode database lookup costs a call per non-ASCII character.  Only touched
     * with the GIL held (every fold runs inside a match call). */
    static uint64_t mt_lower_cache[1024];
    static inline Py_UCS4 mt_tolower(Py_UCS4 c)
    {
        uint64_t e = mt_lower_cache[c & 1023u];
        Py_UCS4 l;
        if ((uint32_t)(e >> 32) == (uint32_t)c + 1u)
            return (Py_UCS4)(uint32_t)e;
        l = Py_UNICODE_TOLOWER(c);
        mt_lower_cache[c & 1023u] = ((uint64_t)((uint32_t)c + 1u) << 32) | (uint64_t)l;
        return l;
    }
    /* One bit per block of 128 code points: set when every code point of the block is its
     * own lower case (CJK, emoji, most scripts without case).  Filled once, at module
     * import (1,114,112 Unicode-database lookups, a few milliseconds); afterwards a
     * character of such a block costs one bit test instead of a cache probe that
     * collides when the text uses many distinct characters.  U+0130 and U+03A3 are in
     * blocks with case, so they never take the short path. */
    static uint8_t mt_lower_id[0x110000 >> 10];
    static void mt_lower_id_init(void)
    {
        Py_UCS4 b, c;
        memset(mt_lower_id, 0, sizeof(mt_lower_id));
        for (b = 0; b < (0x110000 >> 7); b++) {
            int id = 1;
            for (c = b << 7; c < ((b + 1) << 7); c++) {
                if (Py_UNICODE_TOLOWER(c) != c) {
                    id = 0;
                    break;
                }
            }
            if (id)
                mt_lower_id[b >> 3] |= (uint8_t)(1u << (b & 7));
        }
    }
    static inline int mt_is_lower_id(Py_UCS4 c)
    {
        return (mt_lower_id[c >> 10] >> ((c >> 7) & 7)) & 1;
    }
    /* Give the heap's free pages back to the system after a build (glibc keeps them);
     * elsewhere a no-op. */
    #if defined(__GLIBC__)
    #include <malloc.h>
    static void mt_release_free_memory(void) { malloc_trim(0); }
    #else
    static void mt_release_free_memory(void) { }
    #endif
    /* Eight characters at i, all ASCII, lowered into b[o..o+8); the block is left to
     * the character loop (nothing written) as soon as one of them is not ASCII. */
    #define MT_FOLD_ASCII8(T)                                                        \
        while (i + 8 <= n) {                                                         \
            const T *q = (const T *)data + i;                                        \
            uint64_t x;                                                              \
            if (sizeof(T) == 1) {                                                    \
                x = mt_load64((const unsigned char *)q);                             \
                if (x & MT_HI8)                                                      \
                    break;                                                           \
            } else {                                                                 \
                if ((Py_UCS4)(q[0] | q[1] | q[2] | q[3] | q[4] | q[5] | q[6] | q[7]) \
                        >= 0x80)                                                     \
                    break;                                                           \
                /* packed in registers: eight byte stores read back as one word  \
                 * would stall on store forwarding */                                \
                x = MT_BYTE_AT(q[0], 0) | MT_BYTE_AT(q[1], 1) | MT_BYTE_AT(q[2], 2)  \
                    | MT_BYTE_AT(q[3], 3) | MT_BYTE_AT(q[4], 4) | MT_BYTE_AT(q[5], 5) \
                    | MT_BYTE_AT(q[6], 6) | MT_BYTE_AT(q[7], 7);                     \
            }                                                                        \
            x = mt_lower8(x);                                                        \
            memcpy(b + o, &x, 8);                                                    \
            i += 8;                                                                  \
            o += 8;                                                                  \
        }
    /* str.lower() of n characters of one kind as UTF-8 (surrogatepass) into b (room for
     * 4 n bytes); the byte count.  One loop per kind: no kind switch per character.
     * ASCII lowered, U+0130 to "i" + U+0307, anything else to its simple lower case.
     * A run of ASCII goes eight characters at a time, then one at a time up to the
     * character that ends it (at most seven, or the end of the text). */
    #define MT_FOLD_LOOP(T)                                                          \
        for (i = 0; i < n;) {                                                        \
            Py_UCS4 c = ((const T *)data)[i];                                        \
            if (c < 0x80) {                                                          \
                MT_FOLD_ASCII8(T)                                                    \
                while (i < n && (c = ((const T *)data)[i]) < 0x80) {                 \
                    b[o++] = (unsigned char)(c + ((unsigned)(c - 0x41) < 26u) * 32); \
                    i++;                                                             \
                }                                                                    \
                continue;                                                            \
            }                                                                        \
            i++;                                                                     \
            if (sizeof(T) == 1 || !mt_is_lower_id(c)) { /* Latin-1: one cased block */ \
                if (c == 0x130) {                                                    \
                    b[o] = 0x69; b[o + 1] = 0xCC; b[o + 2] = 0x87; o += 3;           \
                    continue;                                                        \
                }                                                                    \
                if (c == 0x3A3 && sigma != NULL)                                     \
                    *sigma = 1;                                                      \
                c = mt_tolower(c);                                                   \
            }                                                                        \
            if (c < 0x80) {                                                          \
                b[o++] = (unsigned char)c;                                           \
            } else if (c < 0x800) {                                                  \
                b[o] = (unsigned char)(0xC0 | (c >> 6));                             \
                b[o + 1] = (unsigned char)(0x80 | (c & 0x3F));                       \
                o += 2;                                                              \
            } else if (c < 0x10000) {                                                \
                b[o] = (unsigned char)(0xE0 | (c >> 12));                            \
                b[o + 1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));                \
                b[o + 2] = (unsigned char)(0x80 | (c & 0x3F));                       \
                o += 3;                                                              \
            } else {                                                                 \
                b[o] = (unsigned char)(0xF0 | (c >> 18));                            \
                b[o + 1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));               \
                b[o + 2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));                \
                b[o + 3] = (unsigned char)(0x80 | (c & 0x3F));                       \
                o += 4;                                                              \
            }                                                                        \
        }
    static Py_ssize_t mt_fold_chars(int kind, const void *data, Py_ssize_t n,
                                    unsigned char *b, uint8_t *sigma)
    {
        Py_ssize_t i, o = 0;
        if (kind == PyUnicode_1BYTE_KIND) {
            MT_FOLD_LOOP(Py_UCS1)
        } else if (kind == PyUnicode_2BYTE_KIND) {
            MT_FOLD_LOOP(Py_UCS2)
        } else {
            MT_FOLD_LOOP(Py_UCS4)
        }
        return o;
    }
    """
    Py_ssize_t mt_member_offset(PyObject *descr)
    PyObject *mt_slot_get(PyObject *o, Py_ssize_t off)
    Py_ssize_t mt_fold_chars(int kind, const void *data, Py_ssize_t n, unsigned char *b, uint8_t *sigma)
    void mt_release_free_memory()
    void mt_lower_id_init()

cdef extern from "Python.h":
    ctypedef uint32_t Py_UCS4
    int PyUnicode_KIND(object o)
    Py_UCS4 PyUnicode_READ(int kind, void *data, Py_ssize_t i)
    bint Py_UNICODE_ISDECIMAL(Py_UCS4 ch)
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch)
    bint Py_UNICODE_ISALNUM(Py_UCS4 ch)
    Py_UCS4 Py_UNICODE_TOLOWER(Py_UCS4 ch)
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
mt_lower_id_init()

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

cdef class _Chain:
    """C arrays for mt_chain."""
    cdef list lits
    cdef const unsigned char **ptrs
    cdef size_t *lens
    cdef size_t *rare
    cdef size_t k
    cdef int dotall

    def __cinit__(self, list lits, bint dotall, list rares):
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
            self.rare[i] = rares[i]

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
    cdef int akey              # regexes of one matcher with equal alphabets share this id

    def __cinit__(self, obj):
        self.akey = -1
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
            self.akey = -1
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

    cdef object alphabet_key(self):
        return (self.amap, tuple(self.bounds_a) if self.nb else (), self.table, self.catmask)

    cdef int search(self, object t, const unsigned char *raw, Py_ssize_t rawlen,
                    object mapped=None) except -1:
        """1 match, 0 no match, 2 undecided (the budgeted engine ran out of steps).
        ``raw``: the text's bytes when it is ASCII (NULL otherwise); ``mapped``: the text
        already in this regex's alphabet (None: map it here)."""
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
            buf = self.alphabet(t) if mapped is None else mapped
            rawlen = len(<bytes>buf)
        return 1 if self.match(self.anchor, buf, 0, rawlen)[0][0] >= 0 else 0


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
    K_PY = 8          # reference test (cidr, numeric, fieldref, other keyword searches)
    K_KW = 9          # keyword contains: any stored value of the event
    K_FREF = 10       # fieldref: the value against other fields' values

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
# A unit whose exact Aho-Corasick table would exceed this many bytes becomes an anchor filter.
cdef Py_ssize_t AC_MAX_TABLE = 64 * 1024
# Prefix/suffix witness literals are cut to this many bytes (a cut literal still has to
# occur, so the witness stays exact, only a little less selective).
cdef int TRUNC_TRIE = 64

_LIT_KINDS = {"eq": K_EQ, "contains": K_CONTAINS, "startswith": K_STARTS, "endswith": K_ENDS}
_FREF_MODES = {"eq": 0, "contains": 1, "startswith": 2, "endswith": 3}
_W_KIND = {K_EQ: W_EQ, K_CONTAINS: W_ANY, K_STARTS: W_START, K_ENDS: W_END}
_enc = _ix.enc


def _regex_entry(str v, str letters, budget, Py_ssize_t min_len, raw_cond, cond, list rank_of):
    """(engine, minimum length in characters, prefilter (literal ids), repeated bytes,
    literal chain)."""
    cdef int flags = regex_flags(letters)
    cf = _ix.chain_form(v, flags)
    chain = None if cf is None else _Chain(cf[0], cf[1], [_ix.rare_offset(b, rank_of) for b in cf[0]])
    # single-byte literals the match needs more than once (disjoint parts of the match)
    singles = {}
    if raw_cond[0] == "and":
        for f in raw_cond[1]:
            if f[0] == "lit" and len(f[1]) == 1:
                singles[f[1][0]] = singles.get(f[1][0], 0) + 1
    return (_Rx(compile_regex(v, letters, budget)), min_len, cond,
            tuple((c, k) for c, k in sorted(singles.items()) if k > 1), chain)


cdef Py_ssize_t _cfold(object t, unsigned char **buf, Py_ssize_t *cap, uint8_t *sigma=NULL) except -1:
    """``t.lower()`` as UTF-8 (lone surrogates as surrogatepass) in ``buf``; its length.

    Per character: ASCII lowered, U+0130 to "i" + U+0307, anything else to its simple
    lower-case mapping.  That is ``str.lower()`` exactly, except that a capital sigma always
    becomes U+03C3 (Python picks U+03C2 at the end of a word): predicates whose values hold
    a sigma use ``str.lower()`` itself (``needs_python_fold``)."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(t), i, o = 0
    cdef int kind = PyUnicode_KIND(t)
    cdef void *data = PyUnicode_DATA(t)
    cdef uint32_t c
    cdef unsigned char *b
    if cap[0] < 4 * n + 8:
        b = <unsigned char *>PyMem_Realloc(buf[0], 4 * n + 64)
        if b == NULL:
            raise MemoryError()
        buf[0] = b
        cap[0] = 4 * n + 64
    return mt_fold_chars(kind, data, n, buf[0], sigma)


def fold_utf8(str t):
    """The matcher's one-pass fold of ``t`` (UTF-8); exposed for the tests."""
    cdef unsigned char *buf = NULL
    cdef Py_ssize_t cap = 0, n
    try:
        n = _cfold(t, &buf, &cap)
        return (<char *>buf)[:n] if n else b""
    finally:
        PyMem_Free(buf)


cdef class _State:
    """Per-call scratch: field texts, predicate memo, literal hits, candidate bitmap."""
    # Epochs make resets O(1) per event.
    cdef uint32_t epoch
    cdef uint32_t *memo          # per predicate: epoch << 2 | result (0, 1, 2 undecided)
    cdef uint32_t *vepoch        # per field: epoch the value was fetched in
    cdef uint8_t *fnone          # per field: value is missing
    cdef PyObject **ftext        # per field: the value as text (strong reference)
    cdef PyObject **flow         # per field: its str.lower() (sigma predicates only)
    cdef uint32_t *lepoch        # per field: epoch the folded text was made in
    cdef uint8_t *fsigma         # per field: the folded text met a capital sigma
    cdef const unsigned char **fptr
    cdef Py_ssize_t *flen
    cdef uint32_t *repoch        # per field: epoch the raw (unfolded) text was made in
    cdef const unsigned char **rptr
    cdef Py_ssize_t *rlen
    cdef uint32_t *pepoch        # per field: epoch the str.lower() text was made in
    cdef const unsigned char **pptr
    cdef Py_ssize_t *plen
    cdef unsigned char **buf     # per field: scratch for folding
    cdef Py_ssize_t *bufcap
    cdef unsigned char *kwbuf    # scratch for keyword values
    cdef Py_ssize_t kwcap
    cdef uint64_t *cand          # candidate-rule bitmap
    cdef uint32_t *lit_epoch     # per literal: epoch it was found in
    cdef uint32_t *uepoch        # per unit: epoch it was scanned in
    cdef list keep               # objects alive until the end of one match
    cdef dict mapped             # (field slot, alphabet id) -> the text in that regex alphabet
    cdef Py_ssize_t mapped_bytes
    cdef object event
    cdef bint is_dict
    cdef bint is_pe
    cdef bint busy
    cdef Py_ssize_t nfields
    cdef Py_ssize_t npreds
    cdef Py_ssize_t nwords
    cdef Py_ssize_t nlits
    cdef Py_ssize_t nunits

    def __cinit__(self, Py_ssize_t nfields, Py_ssize_t npreds, Py_ssize_t nwords,
                  Py_ssize_t nlits, Py_ssize_t nunits):
        self.nfields = nfields
        self.npreds = npreds
        self.nwords = nwords
        self.nlits = nlits
        self.nunits = nunits
        self.epoch = 0
        self.keep = []
        self.mapped = {}
        self.mapped_bytes = 0
        n = nfields if nfields else 1
        self.memo = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * (npreds if npreds else 1))
        self.vepoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        self.lepoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        self.repoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        self.pepoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * n)
        self.fnone = <uint8_t *>PyMem_Malloc(n)
        self.fsigma = <uint8_t *>PyMem_Malloc(n)
        self.ftext = <PyObject **>PyMem_Malloc(sizeof(PyObject *) * n)
        self.flow = <PyObject **>PyMem_Malloc(sizeof(PyObject *) * n)
        self.fptr = <const unsigned char **>PyMem_Malloc(sizeof(char *) * n)
        self.rptr = <const unsigned char **>PyMem_Malloc(sizeof(char *) * n)
        self.pptr = <const unsigned char **>PyMem_Malloc(sizeof(char *) * n)
        self.flen = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * n)
        self.rlen = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * n)
        self.plen = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * n)
        self.buf = <unsigned char **>PyMem_Malloc(sizeof(char *) * n)
        self.bufcap = <Py_ssize_t *>PyMem_Malloc(sizeof(Py_ssize_t) * n)
        self.cand = <uint64_t *>PyMem_Malloc(sizeof(uint64_t) * (nwords if nwords else 1))
        self.lit_epoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * (nlits if nlits else 1))
        self.uepoch = <uint32_t *>PyMem_Malloc(sizeof(uint32_t) * (nunits if nunits else 1))
        self.kwbuf = NULL
        self.kwcap = 0
        if (self.memo == NULL or self.vepoch == NULL or self.lepoch == NULL or self.repoch == NULL
                or self.pepoch == NULL or self.fnone == NULL or self.fsigma == NULL or self.ftext == NULL
                or self.flow == NULL or self.fptr == NULL or self.rptr == NULL or self.pptr == NULL
                or self.flen == NULL or self.rlen == NULL or self.plen == NULL
                or self.buf == NULL or self.bufcap == NULL or self.cand == NULL
                or self.lit_epoch == NULL or self.uepoch == NULL):
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
        if self.mapped_bytes:
            self.mapped.clear()
            self.mapped_bytes = 0
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
        memset(self.pepoch, 0, sizeof(uint32_t) * n)
        memset(self.lit_epoch, 0, sizeof(uint32_t) * (self.nlits if self.nlits else 1))
        memset(self.uepoch, 0, sizeof(uint32_t) * (self.nunits if self.nunits else 1))
        self.epoch = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.ftext != NULL and self.flow != NULL:
            self._drop_texts()   # (object attributes may already be cleared here)
        if self.buf != NULL:
            for i in range(self.nfields):
                PyMem_Free(self.buf[i])
        PyMem_Free(self.kwbuf)
        PyMem_Free(self.memo)
        PyMem_Free(self.vepoch)
        PyMem_Free(self.lepoch)
        PyMem_Free(self.repoch)
        PyMem_Free(self.pepoch)
        PyMem_Free(self.fnone)
        PyMem_Free(self.fsigma)
        PyMem_Free(self.ftext)
        PyMem_Free(self.flow)
        PyMem_Free(self.fptr)
        PyMem_Free(self.rptr)
        PyMem_Free(self.pptr)
        PyMem_Free(self.flen)
        PyMem_Free(self.rlen)
        PyMem_Free(self.plen)
        PyMem_Free(self.buf)
        PyMem_Free(self.bufcap)
        PyMem_Free(self.cand)
        PyMem_Free(self.lit_epoch)
        PyMem_Free(self.uepoch)


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
    cdef Py_ssize_t _nrules
    cdef Py_ssize_t _npreds
    cdef Py_ssize_t _nfields
    cdef Py_ssize_t _nwords
    cdef Py_ssize_t _nlits
    cdef Py_ssize_t _nunits
    # predicates
    cdef PredInfo *_pi
    cdef uint32_t *_v_off          # per value: bytes in _blob (folded unless cased)
    cdef uint32_t *_v_len
    cdef uint32_t *_v_rare         # memchr anchor (sigma predicates)
    cdef uint32_t *_v_lit          # contains: the value's literal; fieldref: the other field's slot
    cdef uint32_t *_v_goff         # glob: its program in _globs
    cdef uint32_t *_v_toff         # glob: its literal tokens, _tok[_v_toff:_v_toff + _v_tcnt]
    cdef uint32_t *_v_tcnt
    cdef uint32_t *_tok
    cdef const unsigned char *_bytes
    cdef const uint32_t *_globs
    # condition program
    cdef NodeInfo *_ni
    cdef uint32_t *_children
    cdef uint32_t *_root
    cdef uint32_t *_root_nl        # per rule: program ordered for events with nothing pending
    # literal units
    cdef Unit *_units
    cdef int32_t _kw_unit
    cdef bint _kw_num              # a keyword literal could occur in a number's or bool's text
    cdef Py_ssize_t _kw_minlen     # bytes of the shortest keyword literal
    cdef size_t _warm_bytes        # bytes of the anchor filters' probe tables
    cdef list _probe_tables        # (address, bytes) of each, recorded as they are made
    cdef uint64_t *_warm_ranges    # the same as a C array: address, bytes, address, ...
    cdef Py_ssize_t _nwarm
    cdef uint64_t _warm_tick       # the coarse clock's tick of the last prefetch
    cdef uint64_t _warms           # prefetches made (stats)
    cdef uint32_t *_lw_off         # per literal: rules it is a witness of
    cdef uint32_t *_lw_rule
    cdef uint8_t *_lw_tag
    # witness fields and tries
    cdef Py_ssize_t _nw
    cdef Automaton *_ac
    cdef Py_ssize_t _nac
    cdef uint32_t *_w_aoff         # per witness field: its tries _ac[_w_aoff[w]:_w_aoff[w+1]]
    cdef int32_t *_w_slot          # witness field -> field slot
    cdef int32_t *_w_unit          # witness field -> unit scanned during selection, or -1
    cdef list _w_names
    cdef uint64_t _w_scan1         # witness fields scanned on every event
    cdef uint64_t _kw_wbit         # the keyword unit's witness-field bit (0: no keyword witness)
    cdef uint64_t _w_scan2         # extra fields scanned when a witness field is pending
    cdef uint64_t *_r_f1           # per rule: primary witness fields
    cdef uint32_t *_always
    cdef Py_ssize_t _nalways
    cdef uint32_t *_nw2_off        # per witness field: rules without a fallback
    cdef uint32_t *_nw2
    cdef uint32_t *_f2_off         # per witness field: rules whose fallback reads it
    cdef uint32_t *_f2
    cdef _State _state
    cdef list _witness_desc        # per rule: its primary witness, readable (None: always evaluated)
    cdef object _regex_budget
    cdef array.array _undecided_a
    cdef uint64_t *_undecided      # per rule: events on which it was undecided
    cdef object __weakref__

    engine = ENGINE

    def __cinit__(self):
        self._ac = NULL
        self._units = NULL
        self._nameptr = NULL
        self._nw = 0

    def __dealloc__(self):
        PyMem_Free(self._ac)
        PyMem_Free(self._units)
        PyMem_Free(self._nameptr)

    def __init__(self, rules, regex_budget=None, lazy_fields=LAZY_FIELDS):
        self.rules = list(rules)
        self._regex_budget = regex_budget
        self._arrays = []
        self._compile(frozenset(lazy_fields))
        # the build's temporaries (a few times the index) are gone: hand their pages back
        mt_release_free_memory()
        self._state = self._new_state()
        self._undecided_a = _pyarray.array("Q", [0] * (self._nrules + 1))
        self._undecided = <uint64_t *>self._undecided_a.data.as_ulonglongs

    cdef _State _new_state(self):
        return _State(self._nfields, self._npreds, self._nwords, self._nlits, self._nunits)

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

    cdef void *_probe(self, str code, values):
        """A table the anchor-filter scan probes at random positions (see _warm): kept like
        any other, and its place recorded for the prefetch."""
        cdef array.array a = self._keep(code, values)
        self._probe_tables.append((a.buffer_info()[0], len(a) * a.itemsize))
        return <void *>a.data.as_voidptr

    cdef uint16_t *_u16(self, values):
        return <uint16_t *>self._keep("H", values).data.as_ushorts

    def _compile(self, lazy):
        rules = self.rules
        priors = _ix.Priors(rules)
        rank_of = [0] * 256
        for i, c in enumerate(priors.rarity_rank()):
            rank_of[c] = i
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

        # -- literal units: (field slot or -1 for keywords, cased) -> {literal: local id}
        unit_of = {}
        unit_lits = []
        unit_key = []

        def lit(int s, int cased, bytes b):
            k = (s, cased)
            u = unit_of.get(k)
            if u is None:
                u = unit_of[k] = len(unit_lits)
                unit_lits.append({})
                unit_key.append(k)
            d = unit_lits[u]
            j = d.get(b)
            if j is None:
                j = d[b] = len(d)
            return (u, j)

        blob = bytearray()
        globs = []
        p_kind, p_cased, p_pyf, p_empty, p_slot, p_unit, p_voff, p_vcnt = [], [], [], [], [], [], [], []
        p_fmode = []
        v_off, v_len, v_rare, v_lit, v_goff, v_toff, v_tcnt = [], [], [], [], [], [], []
        tok = []
        self._tests = [None] * len(preds)
        self._regexes = [None] * len(preds)
        re_lits = [None] * len(preds)     # per regex predicate: per value, required literal refs
        re_wit = [None] * len(preds)      # per regex predicate: per value, witness literals
        pcost = []
        pcost_nl = []      # the same without the lazy-field penalty (nothing pending)

        def add_bytes(bytes b):
            v_off.append(len(blob))
            v_len.append(len(b))
            v_rare.append(_ix.rare_offset(b, rank_of) if b else 0)
            blob.extend(b)

        for i, p in enumerate(preds):
            op = p.op
            fld = p.field
            cased = 1 if p.cased else 0
            pyf = 1 if (not cased and op in ("eq", "contains", "startswith", "endswith", "glob")
                        and _ix.needs_python_fold(p.values)) else 0
            p_cased.append(cased)
            p_pyf.append(pyf)
            p_voff.append(len(v_off))
            empty = 0
            unit = -1
            cost = 0.0
            kind = K_PY
            s = slot(fld) if fld is not None else -1
            if fld is None:
                if op == "contains" and not cased and not pyf and all(p.values):
                    kind = K_KW
                    for v in p.values:
                        b = _enc(v.lower())
                        add_bytes(b)
                        v_lit.append(lit(-1, 0, b))
                        v_goff.append(0)
                        v_toff.append(0)
                        v_tcnt.append(0)
                    unit = unit_of[(-1, 0)]
                    cost = 200.0
                else:
                    cost = 200.0
            elif op in _LIT_KINDS:
                kind = _LIT_KINDS[op]
                for v in p.values:
                    b = _enc(v if cased else v.lower())
                    add_bytes(b)
                    if kind == K_CONTAINS and not pyf and b:
                        v_lit.append(lit(s, cased, b))
                    else:
                        v_lit.append(None)
                        if kind == K_CONTAINS and not b:
                            empty = 1
                    v_goff.append(0)
                    v_toff.append(0)
                    v_tcnt.append(0)
                if kind == K_CONTAINS and not pyf and any(x is not None for x in v_lit[p_voff[i]:]):
                    unit = unit_of[(s, cased)]
                cost = 1.0 + (0.5 if kind == K_CONTAINS else 0.2) * len(p.values)
            elif op == "glob":
                kind = K_GLOB
                for v in p.values:
                    toks = glob_tokens(v)
                    folded = [t if (t is STAR or t is QMARK or cased) else t.lower() for t in toks]
                    prog = _ix.glob_program(folded, STAR, QMARK)
                    add_bytes(b"")
                    v_lit.append(None)
                    v_goff.append(len(globs))
                    globs.extend(prog)
                    v_toff.append(len(tok))
                    n_t = 0
                    if not pyf:
                        for t in folded:
                            if t is not STAR and t is not QMARK and t:
                                tok.append(lit(s, cased, _enc(t)))
                                n_t += 1
                    v_tcnt.append(n_t)
                if not pyf and len(tok) > v_toff[p_voff[i]]:
                    unit = unit_of[(s, cased)]
                cost = 5.0 + 5.0 * len(p.values)
            elif op == "fieldref" and not cased:
                kind = K_FREF
                for v in p.values:
                    add_bytes(b"")
                    v_lit.append(("slot", slot(v)))
                    v_goff.append(0)
                    v_toff.append(0)
                    v_tcnt.append(0)
                self._tests[i] = _Test(p, self._regex_budget)   # sigma in a value: str.lower()
                cost = 3.0 * len(p.values)
            elif op == "exists":
                kind = K_EXISTS if p.values[0] else K_MISSING
                cost = 1.0
            elif op == "null":
                kind = K_MISSING
                cost = 1.0
            elif op == "re":
                kind = K_RE
                flags = regex_flags(p.flags)
                refs = []
                wits = []
                for v in p.values:
                    lo, cond = _ix.regex_prefilter(v, flags)
                    for b in _ix.prefilter_literals(cond):
                        lit(s, 0, b)
                    refs.append((lo, cond))
                    w = _ix.prefilter_witness(cond, lambda b, f=fld: priors.lit_p(f, b, "any"))
                    if _plan(v, p.flags).engine != ENGINE_RE2:
                        # a budgeted regex may be undecided, not false: it is never a
                        # witness, so a rule the index skips is false (never undecided)
                        w = None
                    wits.append(None if w is None else [lit(s, 0, b) for b in w[1]])
                re_lits[i] = refs
                re_wit[i] = wits
                if (s, 0) in unit_of:
                    unit = unit_of[(s, 0)]
                cost = 30.0 * len(p.values)
            else:
                cost = 50.0
            if kind == K_PY:
                self._tests[i] = _Test(p, self._regex_budget)
            p_slot.append(s)
            p_unit.append(unit)
            p_empty.append(empty)
            cost_nl = cost
            if fld is not None:
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
            p_fmode.append(_FREF_MODES.get(p.flags or "eq", 0) if kind == K_FREF else 0)
            pcost.append(cost)

        # -- lay the units out: global literal ids
        lit0 = []
        total = 0
        for d in unit_lits:
            lit0.append(total)
            total += len(d)
        self._nlits = total
        self._nunits = len(unit_lits)
        self._kw_unit = unit_of.get((-1, 0), -1)
        numeric = set(b"0123456789-+.eEtruefalsinINFAN")
        self._kw_num = any(set(b) <= numeric for b in unit_lits[self._kw_unit]) \
            if self._kw_unit >= 0 else False
        self._kw_minlen = min((len(b) for b in unit_lits[self._kw_unit]), default=0) \
            if self._kw_unit >= 0 else 0

        def gid(ref, j=None):
            return lit0[ref] + j if j is not None else lit0[ref[0]] + ref[1]

        v_lit = [0 if r is None else (r[1] if r[0] == "slot" else gid(r)) for r in v_lit]
        tok = [gid(r) for r in tok]
        for i in range(len(preds)):
            if re_lits[i] is not None:
                p = preds[i]
                key = p_slot[i]

                def resolve(f, key=key):
                    k = f[0]
                    if k == "lit":
                        return ("lit", gid(unit_of[(key, 0)], unit_lits[unit_of[(key, 0)]][f[1]]))
                    if k in ("and", "or"):
                        return (k, tuple(resolve(x) for x in f[1]))
                    return f

                self._regexes[i] = tuple(
                    _regex_entry(v, p.flags, self._regex_budget, re_lits[i][k][0],
                                 re_lits[i][k][1], resolve(re_lits[i][k][1]), rank_of)
                    for k, v in enumerate(p.values))

        # regexes with equal alphabets map a text once per event (Matcher._mapped)
        akeys = {}
        for entries in self._regexes:
            if entries is None:
                continue
            for e in <tuple>entries:
                rx = <_Rx>e[0]
                if rx.match is not None:
                    rx.akey = akeys.setdefault(rx.alphabet_key(), len(akeys))
        akeys = None
        self._blob = bytes(blob)
        self._bytes = <const unsigned char *>self._blob
        self._globs = <const uint32_t *>self._u32(globs)
        self._pi = <PredInfo *>self._keep("B", bytes(sizeof(PredInfo) * len(p_kind))).data.as_voidptr
        for i in range(len(p_kind)):
            self._pi[i].kind = p_kind[i]
            self._pi[i].cased = p_cased[i]
            self._pi[i].pyf = p_pyf[i]
            self._pi[i].empty = p_empty[i]
            self._pi[i].fmode = p_fmode[i]
            self._pi[i].slot = p_slot[i]
            self._pi[i].unit = p_unit[i]
            self._pi[i].voff = p_voff[i]
            self._pi[i].vcnt = p_vcnt[i]
        self._v_off = self._u32(v_off)
        self._v_len = self._u32(v_len)
        self._v_rare = self._u32(v_rare)
        self._v_lit = self._u32(v_lit)
        self._v_goff = self._u32(v_goff)
        self._v_toff = self._u32(v_toff)
        self._v_tcnt = self._u32(v_tcnt)
        self._tok = self._u32(tok)

        # -- condition programs, operands cheapest first
        n_kind, n_arg, n_coff, n_ccnt, children, root = [], [], [], [], [], []
        # Two orders per rule: one for events with a lazily resolved field still pending
        # (reading it may cost a PE read, so it goes last), one for events with nothing
        # pending.  The order never changes an answer.
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
        self._ni = <NodeInfo *>self._keep("B", bytes(sizeof(NodeInfo) * len(n_kind))).data.as_voidptr
        for i in range(len(n_kind)):
            self._ni[i].kind = n_kind[i]
            self._ni[i].arg = n_arg[i]
            self._ni[i].coff = n_coff[i]
            self._ni[i].ccnt = n_ccnt[i]
        self._children = self._u32(children)
        self._root = self._u32(root)
        self._root_nl = self._u32(root_nl)

        # -- witnesses
        unit_field = [None if k[0] < 0 else self._names[k[0]] for k in unit_key]
        unit_bytes = [list(d) for d in unit_lits]     # local id order (dicts keep insertion order)

        def lit_entry(ref, str fname):
            b = unit_bytes[ref[0]][ref[1]]
            return ("L", fname, gid(ref), priors.lit_p(fname, b, "any"))

        def trie_entry(str fname, bytes b, int wk):
            if wk == W_START:
                nd = b[:TRUNC_TRIE]
                return ("T", fname, 1, nd, W_ANY, priors.lit_p(fname, b, "start"))
            nd = b[max(0, len(b) - TRUNC_TRIE):]
            if wk == W_EQ and len(b) <= TRUNC_TRIE:
                return ("T", fname, 2, nd[::-1], W_START, priors.lit_p(fname, b, "eq"))
            return ("T", fname, 2, nd[::-1], W_ANY, priors.lit_p(fname, b, "end"))

        def pred_witness(int pid, bint avoid_lazy):
            p = preds[pid]
            kind = p_kind[pid]
            f = p.field
            if kind == K_KW:
                # a keyword search: its literals in any stored value, found by the keyword
                # unit (witness field None), which selection then scans for every event.
                # Not a fallback: while a field is pending, which values a keyword search
                # sees depends on what the rules evaluated before it resolved (as in the
                # reference), so it is scanned then, at evaluation, never at selection
                if avoid_lazy:
                    return None
                return [lit_entry(lit(-1, 0, _enc(v.lower())), None) for v in p.values]
            if p.cased or f is None or p_pyf[pid] or (avoid_lazy and f in lazy) or f == "@Message":
                return None
            s = p_slot[pid]
            out = []
            if kind == K_CONTAINS:
                if p_empty[pid]:
                    return None
                for v in p.values:
                    out.append(lit_entry(lit(s, 0, _enc(v.lower())), f))
            elif kind in (K_EQ, K_STARTS, K_ENDS):
                wk = _W_KIND[kind]
                for v in p.values:
                    b = _enc(v.lower())
                    if not b:
                        return None
                    out.append(trie_entry(f, b, wk))
            elif kind == K_GLOB:
                for v in p.values:
                    toks = glob_tokens(v)
                    best = None
                    for j, t in enumerate(toks):
                        if t is STAR or t is QMARK or not t:
                            continue
                        b = _enc(t.lower())
                        if j == 0:
                            e = trie_entry(f, b, W_START)
                        elif j == len(toks) - 1:
                            e = trie_entry(f, b, W_END)
                        else:
                            e = lit_entry(lit(s, 0, b), f)
                        if best is None or _ecost(e) < _ecost(best):
                            best = e
                    if best is None:
                        return None
                    out.append(best)
            elif kind == K_RE:
                for w in re_wit[pid]:
                    if not w:
                        return None
                    out.extend(lit_entry(r, f) for r in w)
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
                return (sum(_ecost(e) for e in ents), ents)
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
        tries = {}         # (witness field, mode) -> {needle: [(rule, kind, tag)]}
        lw = {}            # literal -> [(rule, tag)]
        always = []
        r_f1 = [0] * self._nrules
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
                w = wfield(e[1])
                if w is None:
                    return None
                mask |= 1 << w
            seen = set()
            for e in ents:
                if e[0] == "L":
                    key = ("L", e[2])
                    if key not in seen:
                        seen.add(key)
                        lw.setdefault(e[2], []).append((ri, tag))
                else:
                    _t, fname, mode, nd, k, _c = e
                    key = (fname, mode, nd, k)
                    if key not in seen:
                        seen.add(key)
                        tries.setdefault((wfields[fname], mode), {}).setdefault(nd, []).append((ri, k, tag))
            return mask

        lit_text = {}
        for u in range(len(unit_bytes)):
            for j, b in enumerate(unit_bytes[u]):
                lit_text[lit0[u] + j] = b
        self._witness_desc = [None] * self._nrules
        for ri, c in enumerate(conds):
            w1 = witness(c, False)
            if w1 is None:
                always.append(ri)
                continue
            self._witness_desc[ri] = [
                (e[1], "anywhere", lit_text[e[2]], e[3]) if e[0] == "L" else
                (e[1], "start" if e[2] == 1 else ("whole" if e[4] == W_START else "end"),
                 e[3] if e[2] == 1 else e[3][::-1], e[5]) for e in w1[1]]
            m1 = place(ri, w1[1], 1)
            if m1 is None:
                always.append(ri)
                continue
            r_f1[ri] = m1
            scan1 |= m1
            fb = None
            if any(e[1] in lazy or e[1] is None for e in w1[1]):
                w2 = witness(c, True)
                if w2 is not None:
                    m2 = place(ri, w2[1], 2)
                    if m2 is not None:
                        fb = m2
                        scan2 |= m2
                        for w in range(MAX_WITNESS_FIELDS):
                            if m2 >> w & 1:
                                f2_by.setdefault(w, []).append(ri)
                if fb is None:
                    no_fallback += 1
            if fb is None:
                # no fallback: when a field of the primary witness is pending, evaluate
                for w in range(MAX_WITNESS_FIELDS):
                    if m1 >> w & 1:
                        nw2.setdefault(w, []).append(ri)

        self._nw = len(wfields)
        self._w_names = sorted(wfields, key=wfields.get)
        self._wslot_of = dict(wfields)
        self._w_slot = self._i32([slot(n) if n is not None else -1 for n in self._w_names])
        # fields created by the witness (never by a predicate) still need state
        self._nfields = len(self._names)
        self._derived = self._u8([1 if n in DERIVED else 0 for n in self._names])
        self._nameptr = <PyObject **>PyMem_Malloc(sizeof(PyObject *) * (self._nfields + 1))
        if self._nameptr == NULL:
            raise MemoryError()
        for i in range(self._nfields):
            self._nameptr[i] = <PyObject *>self._names[i]
        self._w_scan1 = scan1
        self._kw_wbit = (<uint64_t>1) << <int>wfields[None] if None in wfields else 0
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
        off, lr, lt = [0], [], []
        for g in range(self._nlits):
            for ri, tag in sorted(set(lw.get(g, ()))):
                lr.append(ri)
                lt.append(tag)
            off.append(len(lr))
        self._lw_off = self._u32(off)
        self._lw_rule = self._u32(lr)
        self._lw_tag = self._u8(lt)

        # -- build the units
        self._units = <Unit *>PyMem_Malloc(sizeof(Unit) * (self._nunits if self._nunits else 1))
        if self._units == NULL:
            raise MemoryError()
        unit_stats = []
        self._probe_tables = []
        marks = set()
        for g in lw:
            for u in range(self._nunits):
                if lit0[u] <= g < lit0[u] + len(unit_lits[u]):
                    marks.add(u)
                    break
        for u in range(self._nunits):
            unit_stats.append(self._build_unit(u, unit_key[u], lit0[u], unit_bytes[u],
                                               1 if u in marks else 0, priors))
        w_unit = []
        for name in self._w_names:
            u = unit_of.get((self._slot_of[name] if name is not None else -1, 0), -1)
            w_unit.append(u if u in marks else -1)
        self._w_unit = self._i32(w_unit)

        # -- the witness tries
        keys = sorted(tries)
        self._nac = len(keys)
        self._ac = <Automaton *>PyMem_Malloc(sizeof(Automaton) * (self._nac if self._nac else 1))
        if self._ac == NULL:
            raise MemoryError()
        cdef Automaton *a
        total_states = 0
        aoff = [0] * (self._nw + 1)
        for ai, (w, mode) in enumerate(keys):
            aoff[w + 1] = ai + 1
            table = tries[(w, mode)]
            needles = list(table)
            n, ncls, cls, trans, out_off, out_ids, groups, seqlen = _ix.build_automaton(needles, mode, False, True)
            a = &self._ac[ai]
            a.field = w
            a.mode = mode
            a.nstates = n
            a.ncls = ncls
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
            self._dense(cls, n, ncls, trans, out_off, a.col, &a.trans16, &a.trans32)
            a.out_off = self._u32(out_off)
            a.out_ids = self._u32(out_ids)
        for w in range(self._nw):   # fields without tries keep an empty range
            if aoff[w + 1] < aoff[w]:
                aoff[w + 1] = aoff[w]
        self._w_aoff = self._u32(aoff)

        self._nwarm = len(self._probe_tables)
        self._warm_ranges = self._u64([x for t in self._probe_tables for x in t])
        self._warm_bytes = sum(n for _a, n in self._probe_tables)
        self._stats = {
            "engine": ENGINE,
            "rules": self._nrules,
            "predicates": self._npreds,
            "fields": self._nfields,
            "indexed_rules": self._nrules - len(always),
            "always_evaluated_rules": len(always),
            "rules_without_lazy_fallback": no_fallback,
            "witness_fields": list(self._w_names),
            "literals": self._nlits,
            "witness_literals": len(lw),
            "units": unit_stats,
            "trie_states": total_states,
            "index_bytes": sum(x.buffer_info()[1] * x.itemsize for x in self._arrays),
            "prefetch_bytes": self._warm_bytes,
        }
        # The helper functions above refer to themselves through this call's closure: a
        # reference cycle that would keep every build-time structure (the priors, the
        # witness lists: ~20 MiB for SigmaHQ) alive until the next full collection.
        slot = lit = add_bytes = gid = cost_of = emit = lit_entry = trie_entry = None
        pred_witness = witness = wfield = place = resolve = priors = None

    cdef int _dense(self, list cls, Py_ssize_t n, Py_ssize_t ncls, array.array trans, list out_off,
                    uint32_t *col, uint16_t **t16, uint32_t **t32) except -1:
        """Store a transition table class-major (the next state is trans[col[byte] + s]:
        one add and one load per byte), the top bit of a state id flagging outputs.
        ``trans`` (state-major, array of uint32) is read in C: no Python int per entry."""
        cdef Py_ssize_t b, c, st, total = n * ncls
        cdef const uint32_t *src = trans.data.as_uints
        cdef uint32_t t, flag = 0x8000 if n < 32768 else 0x80000000
        cdef array.array has_out = _pyarray.array("B", bytes(n + 1))
        cdef uint8_t *ho
        cdef array.array dst
        cdef uint16_t *d16
        cdef uint32_t *d32
        assert len(trans) == total
        for b in range(256):
            col[b] = cls[b] * n
        ho = has_out.data.as_uchars
        for st in range(n):
            ho[st] = 1 if out_off[st + 1] != out_off[st] else 0
        t16[0] = NULL
        t32[0] = NULL
        if n < 32768:
            dst = self._keep("H", bytes(2 * total))
            d16 = <uint16_t *>dst.data.as_ushorts
            for c in range(ncls):
                for st in range(n):
                    t = src[st * ncls + c]
                    d16[c * n + st] = <uint16_t>(t | flag if ho[t] else t)
            t16[0] = d16
        else:
            dst = self._keep("I", bytes(4 * total))
            d32 = dst.data.as_uints
            for c in range(ncls):
                for st in range(n):
                    t = src[st * ncls + c]
                    d32[c * n + st] = t | flag if ho[t] else t
            t32[0] = d32
        return 0

    cdef int _root_skip(self, Unit *un, Py_ssize_t n) except -1:
        """The bytes that leave the root state of unit ``un``'s DFA (see mt_ac_skip)."""
        cdef int b, nstart = 0
        cdef uint32_t t
        un.start1 = -1
        for b in range(256):
            t = un.trans16[un.col[b]] if un.trans16 != NULL else un.trans32[un.col[b]]
            un.start[b] = 1 if t != 0 else 0
            if t != 0:
                nstart += 1
                un.start1 = b
        if nstart != 1:
            un.start1 = -1
        return 0

    def _build_unit(self, int u, tuple key, int lit0, list needles, int marks, priors):
        """The automaton of one literal unit: exact Aho-Corasick when its table is small,
        else an anchor filter."""
        cdef Unit *un = &self._units[u]
        un.slot = key[0]
        un.cased = key[1]
        un.lit0 = lit0
        un.nlit = len(needles)
        un.marks = marks
        un.trans16 = NULL
        un.trans32 = NULL
        un.q8filt = NULL
        un.q8bits = NULL
        un.q4filt = NULL
        un.q4bits = NULL
        un.q2bits = NULL
        un.q2x = NULL
        un.q3t = NULL
        un.q_ent = NULL
        nbytes = sum(len(x) for x in needles)
        distinct = len({b for nd in needles for b in nd})
        if nbytes * (distinct + 1) * 2 <= AC_MAX_TABLE:
            n, ncls, cls, trans, out_off, out_ids, groups, _seqlen = _ix.build_automaton(
                needles, 0, True, not un.cased)
            if n * ncls * (2 if n < 32768 else 4) <= AC_MAX_TABLE:
                un.mode = 0
                un.nstates = n
                self._dense(cls, n, ncls, trans, out_off, un.col, &un.trans16, &un.trans32)
                self._root_skip(un, n)
                un.out_off = self._u32(out_off)
                # output ids are needle groups; exact classes keep one needle per group
                un.out_ids = self._u32([groups[g][0] for g in out_ids])
                return {"field": self._names[un.slot] if un.slot >= 0 else None,
                        "cased": bool(un.cased), "literals": len(needles),
                        "mode": "aho-corasick", "states": n}
        self._build_anchor_filter(un, needles, priors)
        return {"field": self._names[un.slot] if un.slot >= 0 else None, "cased": bool(un.cased),
                "literals": len(needles), "mode": "anchor filter", "ascii_anchors": bool(un.q_ascii),
                "three_byte_gate": un.q3t != NULL}

    cdef int _build_anchor_filter(self, Unit *un, list needles, priors) except -1:
        """Anchor filter (mode 3): each needle is anchored at one of its grams (1 byte:
        memchr; 2-3 bytes: a 2-gram; 4-7: a 4-gram; 8+: an 8-gram, see
        index.anchor_plan).  The scan tests each text position's grams against small
        tables (the exact 2-gram bitmap; a blocked Bloom filter per hashed gram size), and
        only where one lets the position through looks up the bucket (a bitmap of the
        non-empty buckets with per-word ranks: no offset table per possible bucket) and
        verifies its needles.  Every occurrence contains its anchor, so none is missed."""
        cdef bytes nd
        cdef Py_ssize_t k, j, alen
        cdef uint64_t x
        cdef unsigned fshift, bshift
        plan = _ix.anchor_plan(needles, priors)
        blob = bytearray()
        noff = []
        for nd in needles:
            noff.append(len(blob))
            blob.extend(nd)
        grams = {4: set(), 8: set()}
        gate = set()      # 4-byte words the 4-gram filter lets through (see below)
        un.q_ascii = 1
        for j in range(len(needles)):
            k, alen = plan[j]
            if alen >= 2 and needles[j][k] >= 0x80:
                un.q_ascii = 0
            if alen == 4 or alen == 8:
                grams[alen].add(needles[j][k:k + alen])
                gate.add(needles[j][k:k + 4])

        def log2_at_least(v, lo, hi):
            b = lo
            while b < hi and (1 << b) < v:
                b += 1
            return b

        # filter: >= 16 bits per distinct anchor (3 bits each: ~1 % let through by
        # chance); buckets: >= 4 per distinct anchor
        # The 4-gram filter also holds the first 4 bytes of every 8-gram anchor, so it is
        # the gate of a position: the 8-gram filter is probed only where it lets the
        # position through (a position whose 4 bytes begin no anchor costs one probe).
        fw = {4: log2_at_least(len(gate) // 4 + 1, 1, 24),
              8: log2_at_least(len(grams[8]) // 4 + 1, 1, 24)}
        qb = {a: log2_at_least(4 * len(grams[a]), 6, 26) for a in (4, 8)}
        filt = {a: [0] * (1 << fw[a]) for a in (4, 8)}
        buckets = {2: {}, 4: {}, 8: {}}
        e1 = []

        def entry(j, k, alen):
            nd = needles[j]
            w0 = int.from_bytes(nd[k:k + 4], _sys.byteorder) if alen >= 4 else 0
            w1 = int.from_bytes(nd[k + 4:k + 8], _sys.byteorder) if alen >= 8 else 0
            return [w0, w1, noff[j], len(nd), j, 0, 0, k]

        # 2-gram buckets: a position whose 2-gram holds only 3-byte needles is looked up
        # only when the trigram filter has one of them there (most such positions are a
        # common pair of bytes, e.g. " -", before a third byte no needle has)
        words2x = [0] * 1024
        tri = []
        for j in range(len(needles)):
            k, alen = plan[j]
            nd = needles[j]
            if alen == 1:
                e1.append(entry(j, k, alen))
                continue
            if alen == 2:
                g = nd[k] | (nd[k + 1] << 8)
                if len(nd) == 3:
                    tri.append((nd, k))
                else:
                    words2x[g >> 6] |= 1 << (g & 63)
            else:
                fshift = 64 - fw[alen]
                bshift = 64 - qb[alen]
                x = mt_load64(<const unsigned char *>nd + k) if alen == 8 else \
                    <uint64_t>mt_load32(<const unsigned char *>nd + k)
                filt[alen][mt_af_fword(x, fshift)] |= mt_af_fbits(x)
                if alen == 8:
                    x = <uint64_t>mt_load32(<const unsigned char *>nd + k)
                    filt[4][mt_af_fword(x, 64 - fw[4])] |= mt_af_fbits(x)
                    x = mt_load64(<const unsigned char *>nd + k)
                g = mt_af_bucket(x, bshift)
            buckets[alen].setdefault(g, []).append(entry(j, k, alen))
        ents = list(e1)
        overflow = []
        bases = {}
        bitmaps = {}
        for alen in (2, 4, 8):
            bases[alen] = len(ents)
            nb = 65536 if alen == 2 else (1 << qb[alen])
            words = [0] * max(1, nb // 64)
            for g in sorted(buckets[alen]):
                group = buckets[alen][g]
                words[g >> 6] |= 1 << (g & 63)
                first = group[0]
                if len(group) > 1:
                    first[6] = len(group) - 1
                    overflow.append((first, group[1:]))
                ents.append(first)
            rank = []
            acc = 0
            for w in words:
                rank.append(acc)
                acc += bin(w).count("1")
            bitmaps[alen] = (words, rank)
        for first, rest in overflow:
            first[5] = len(ents)
            ents.extend(rest)
        flat = []
        for e in ents:
            flat.extend(e)
        un.q_ent = self._u32(flat)
        qbytes = _pyarray.array("B", bytes(blob) if blob else b"\0")
        self._arrays.append(qbytes)
        un.q_bytes = <const unsigned char *>(<array.array>qbytes).data.as_uchars
        un.q1e = len(e1)
        un.q2bits = NULL
        un.q4filt = un.q4bits = NULL
        un.q8filt = un.q8bits = NULL
        if buckets[2]:
            un.q2bits = <uint64_t *>self._probe("Q", bitmaps[2][0])
            un.q2rank = <uint32_t *>self._probe("I", bitmaps[2][1])
            un.q2base = bases[2]
            if tri:
                # 32 bits per needle, one probe: ~3 % of the positions without one let through
                tb = log2_at_least(32 * len(tri), 10, 24)
                un.q3shift = 32 - tb
                words3 = [0] * ((1 << tb) // 64)
                for nd, k in tri:
                    t = mt_t3_hash(<const unsigned char *>nd, <unsigned>k, un.q3shift)
                    words3[t >> 6] |= 1 << (t & 63)
                un.q3t = <uint64_t *>self._probe("Q", words3)
                un.q2x = <uint64_t *>self._probe("Q", words2x)
        if buckets[4] or buckets[8]:
            un.q4filt = <uint64_t *>self._probe("Q", filt[4])
            un.q4fshift = 64 - fw[4]
        if buckets[4]:
            un.q4bits = <uint64_t *>self._probe("Q", bitmaps[4][0])
            un.q4rank = <uint32_t *>self._probe("I", bitmaps[4][1])
            un.q4bshift = 64 - qb[4]
            un.q4base = bases[4]
        if buckets[8]:
            un.q8filt = <uint64_t *>self._probe("Q", filt[8])
            un.q8fshift = 64 - fw[8]
            un.q8bits = <uint64_t *>self._probe("Q", bitmaps[8][0])
            un.q8rank = <uint32_t *>self._probe("I", bitmaps[8][1])
            un.q8bshift = 64 - qb[8]
            un.q8base = bases[8]
        un.mode = 3
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
            elif st.is_dict and not st.is_pe:
                pass        # a plain dict has no ``pending`` (no failed getattr per field)
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
        """Text for the exact automata: the raw bytes when ASCII (their byte classes fold
        ASCII case), else the folded UTF-8.  0 when the field is missing."""
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
        st.fsigma[slot] = 0
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
            st.flen[slot] = _cfold(t, &st.buf[slot], &st.bufcap[slot], &st.fsigma[slot])
            st.fptr[slot] = st.buf[slot]
        st.lepoch[slot] = st.epoch
        return 1

    cdef int _pyfold(self, _State st, int32_t slot) except -1:
        """``str.lower()`` of the field as UTF-8 (for predicates whose values hold a sigma)."""
        cdef object t = <object>st.ftext[slot]
        if st.pepoch[slot] == st.epoch:
            return 0
        if PyUnicode_IS_ASCII(t):
            self._field(st, slot, 0)
            st.pptr[slot] = st.fptr[slot]
            st.plen[slot] = st.flen[slot]
        else:
            t = t.lower()
            Py_XINCREF(<PyObject *>t)
            Py_XDECREF(st.flow[slot])
            st.flow[slot] = <PyObject *>t
            _utf8(st, t, &st.pptr[slot], &st.plen[slot])
        st.pepoch[slot] = st.epoch
        return 0

    cdef int _pred(self, _State st, uint32_t p) except -1:
        cdef uint32_t m = st.memo[p]
        cdef uint32_t ep = st.epoch
        cdef int r
        if (m >> 2) == ep:
            return m & 3
        r = self._pred_eval(st, p)
        st.memo[p] = (ep << 2) | <uint32_t>r
        return r

    cdef inline int _any_found(self, _State st, uint32_t v, uint32_t vend) noexcept:
        cdef uint32_t ep = st.epoch
        while v < vend:
            if st.lit_epoch[self._v_lit[v]] == ep:
                return 1
            v += 1
        return 0

    cdef int _pred_eval(self, _State st, uint32_t p) except -1:
        cdef uint8_t kind = self._pi[p].kind
        cdef int32_t slot = self._pi[p].slot
        cdef int32_t u = self._pi[p].unit
        cdef uint32_t v = self._pi[p].voff
        cdef uint32_t vend = v + self._pi[p].vcnt
        cdef uint32_t ep = st.epoch, t0, tend
        cdef const unsigned char *h
        cdef const unsigned char *nd
        cdef Py_ssize_t hn
        cdef uint32_t nn
        cdef int present, r
        if kind == K_PY:
            try:
                return 1 if (<object>self._tests[p]).evaluate(st.event) else 0
            except BudgetExceeded:
                return 2
        if kind == K_KW:
            if st.uepoch[u] != ep:
                self._run_unit(st, u, 0, 0)
            return self._any_found(st, v, vend)
        present = self._field(st, slot, self._pi[p].cased or kind == K_RE)
        if kind == K_EXISTS:
            return present
        if kind == K_MISSING:
            return 1 - present
        if not present:
            return 0
        if kind == K_FREF:
            return self._pred_fieldref(st, p)
        if self._pi[p].pyf:
            return self._pred_sigma(st, p)
        if kind == K_RE:
            return self._pred_re(st, p)
        if kind == K_CONTAINS:
            if self._pi[p].empty:
                return 1
            if st.uepoch[u] != ep:
                self._run_unit(st, u, 0, 0)
            return self._any_found(st, v, vend)
        if self._pi[p].cased:
            h = st.rptr[slot]
            hn = st.rlen[slot]
        else:
            self._field(st, slot, 0)
            h = st.fptr[slot]
            hn = st.flen[slot]
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
        # K_GLOB: its literal tokens must all occur before the (linear) wildcard walk
        if u >= 0 and st.uepoch[u] != ep:
            self._run_unit(st, u, 0, 0)
        while v < vend:
            t0 = self._v_toff[v]
            tend = t0 + self._v_tcnt[v]
            while t0 < tend and st.lit_epoch[self._tok[t0]] == ep:
                t0 += 1
            if t0 == tend:
                r = mt_glob2(self._globs + self._v_goff[v], h, hn)
                if r < 0:
                    raise MemoryError()
                if r:
                    return 1
            v += 1
        return 0

    cdef int _pred_fieldref(self, _State st, uint32_t p) except -1:
        """The field (folded) against each other field named (folded), in order."""
        cdef int32_t slot = self._pi[p].slot, os
        cdef uint32_t v = self._pi[p].voff
        cdef uint32_t vend = v + self._pi[p].vcnt
        cdef uint8_t mode = self._pi[p].fmode
        cdef const unsigned char *h
        cdef const unsigned char *o
        cdef Py_ssize_t hn, on
        self._field(st, slot, 0)
        if st.fsigma[slot]:
            return self._py_test(st, p)
        while v < vend:
            os = <int32_t>self._v_lit[v]
            v += 1
            if not self._field(st, os, 0):
                continue
            if st.fsigma[os]:
                return self._py_test(st, p)
            h = st.fptr[slot]
            hn = st.flen[slot]
            o = st.fptr[os]
            on = st.flen[os]
            if mode == 0:
                if hn == on and mt_eq_fwd(h, o, hn):
                    return 1
            elif mode == 2:
                if on <= hn and mt_eq_fwd(h, o, on):
                    return 1
            elif mode == 3:
                if on <= hn and mt_eq_bwd(h + hn - on, o, on):
                    return 1
            elif on <= hn:
                # a needle as long as the text: Python's bytes search (linear for long
                # needles), not a memchr walk
                if on == 0 or (<const char *>o)[:on] in (<const char *>h)[:hn]:
                    return 1
        return 0

    cdef int _py_test(self, _State st, uint32_t p) except -1:
        try:
            return 1 if (<object>self._tests[p]).evaluate(st.event) else 0
        except BudgetExceeded:
            return 2

    cdef int _pred_sigma(self, _State st, uint32_t p) except -1:
        """A predicate whose values hold a sigma, on ``str.lower()`` of the field."""
        cdef uint8_t kind = self._pi[p].kind
        cdef int32_t slot = self._pi[p].slot
        cdef uint32_t v = self._pi[p].voff
        cdef uint32_t vend = v + self._pi[p].vcnt
        cdef const unsigned char *h
        cdef const unsigned char *nd
        cdef Py_ssize_t hn
        cdef uint32_t nn
        cdef int r
        self._pyfold(st, slot)
        h = st.pptr[slot]
        hn = st.plen[slot]
        while v < vend:
            nn = self._v_len[v]
            nd = self._bytes + self._v_off[v]
            if kind == K_CONTAINS:
                if mt_contains(h, hn, nd, nn, self._v_rare[v]):
                    return 1
            elif kind == K_EQ:
                if nn == hn and mt_eq_fwd(h, nd, nn):
                    return 1
            elif kind == K_STARTS:
                if nn <= hn and mt_eq_fwd(h, nd, nn):
                    return 1
            elif kind == K_ENDS:
                if nn <= hn and mt_eq_bwd(h + hn - nn, nd, nn):
                    return 1
            else:
                r = mt_glob2(self._globs + self._v_goff[v], h, hn)
                if r < 0:
                    raise MemoryError()
                if r:
                    return 1
            v += 1
        return 0

    cdef int _prefilter(self, _State st, int32_t slot, object f) except -1:
        """Evaluate a regex prefilter (index.regex_prefilter, literals as ids)."""
        cdef str k = f[0]
        cdef uint32_t ep = st.epoch
        if k == "lit":
            return st.lit_epoch[<uint32_t>f[1]] == ep
        if k == "and":
            for x in <tuple>f[1]:
                if not self._prefilter(st, slot, x):
                    return 0
            return 1
        if k == "or":
            for x in <tuple>f[1]:
                if self._prefilter(st, slot, x):
                    return 1
            return 0
        if k == "run":
            return mt_has_run(st.rptr[slot], st.rlen[slot],
                              <const unsigned char *>(<bytes>f[1]), <size_t>f[2])
        return 1

    cdef int _pred_re(self, _State st, uint32_t p) except -1:
        cdef int32_t slot = self._pi[p].slot
        cdef int32_t u = self._pi[p].unit
        cdef uint32_t ep = st.epoch
        cdef const unsigned char *h
        cdef Py_ssize_t hn, tlen
        cdef int r
        cdef bint undecided = False
        t = <object>st.ftext[slot]
        tlen = PyUnicode_GET_LENGTH(t)
        for rx, min_len, cond, counts, chain in <tuple>self._regexes[p]:
            if (<_Rx>rx).match is None:
                # the budgeted engine runs as in the reference, with no pre-check, so
                # both engines agree on when it is undecided
                r = (<_Rx>rx).search(t, NULL, 0)
                if r == 1:
                    return 1
                if r == 2:
                    undecided = True
                continue
            # exact pre-check: what every match needs (length, literals, runs, repeats)
            if tlen < <Py_ssize_t>min_len:
                continue
            if cond[0] != "any":
                if u >= 0 and st.uepoch[u] != ep:
                    self._run_unit(st, u, 0, 0)
                if not self._prefilter(st, slot, cond):
                    continue
            if counts:
                self._field(st, slot, 0)
                h = st.fptr[slot]
                hn = st.flen[slot]
                ok = True
                for c, k in <tuple>counts:
                    if mt_count(h, hn, <unsigned char>c, k) < <size_t>k:
                        ok = False
                        break
                if not ok:
                    continue
            if chain is not None:
                ch = <_Chain>chain
                if mt_chain(st.rptr[slot], st.rlen[slot], ch.ptrs, ch.lens, ch.rare, ch.k, ch.dotall):
                    return 1
                continue
            if PyUnicode_IS_ASCII(t) and (<_Rx>rx).amap_p == NULL:
                r = (<_Rx>rx).search(t, st.rptr[slot], st.rlen[slot])
            else:
                r = (<_Rx>rx).search(t, NULL, 0, self._mapped(st, slot, <_Rx>rx, t))
            if r == 1:
                return 1
        return 2 if undecided else 0

    cdef object _mapped(self, _State st, int32_t slot, _Rx rx, object t):
        """Field ``slot``'s text in ``rx``'s alphabet, made once per event for all the
        regexes that share the alphabet (mapping a non-ASCII text costs a lookup per
        character).  At most 1 MiB is kept per event; beyond it texts are mapped per regex."""
        cdef object key, buf
        if rx.akey < 0:
            return None
        key = (slot, rx.akey)
        buf = st.mapped.get(key)
        if buf is None:
            buf = rx.alphabet(t)
            if st.mapped_bytes + len(<bytes>buf) <= (1 << 20):
                st.mapped[key] = buf
                st.mapped_bytes += len(<bytes>buf) + 1
        return buf

    cdef int _eval(self, _State st, uint32_t node) except -1:
        """1 true, 0 false, 2 undecided (three-valued: the order of operands never
        changes the result; see sensor.detect._matcher_py)."""
        cdef uint8_t k = self._ni[node].kind
        cdef uint32_t c, cend
        cdef int r, out
        if k == N_PRED:
            return self._pred(st, <uint32_t>self._ni[node].arg)
        if k == N_CONST:
            return self._ni[node].arg
        c = self._ni[node].coff
        if k == N_NOT:
            r = self._eval(st, self._children[c])
            return 2 if r == 2 else 1 - r
        cend = c + self._ni[node].ccnt
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

    # ------------------------------------------------------------------ literal units
    cdef inline void _found(self, _State st, uint32_t g, bint mark, uint64_t pmask) noexcept:
        """Literal ``g`` occurs: note it, and (during selection) mark the rules it
        is a witness of."""
        cdef uint32_t e, eend, r
        if st.lit_epoch[g] == st.epoch:
            return
        st.lit_epoch[g] = st.epoch
        if mark:
            e = self._lw_off[g]
            eend = self._lw_off[g + 1]
            while e < eend:
                r = self._lw_rule[e]
                if self._lw_tag[e] == 1 or (pmask & self._r_f1[r]):
                    st.cand[r >> 6] |= (<uint64_t>1) << (r & 63)
                e += 1

    cdef int _run_unit(self, _State st, int32_t u, bint mark, uint64_t pmask) except -1:
        """Find every literal of unit ``u`` in its field (once per event)."""
        cdef Unit *un = &self._units[u]
        cdef const unsigned char *h
        cdef Py_ssize_t n
        st.uepoch[u] = st.epoch
        if un.slot < 0:
            return self._run_keywords(st, un, mark, pmask)
        if un.cased:
            if not self._field(st, un.slot, 1):
                return 0
            h = st.rptr[un.slot]
            n = st.rlen[un.slot]
        elif un.mode == 0:
            if not self._scantext(st, un.slot, &h, &n):
                return 0
        else:
            if not self._field(st, un.slot, 0):
                return 0
            h = st.fptr[un.slot]
            n = st.flen[un.slot]
        self._scan_text(st, un, h, n, mark, pmask)
        return 0

    cdef int _run_keywords(self, _State st, Unit *un, bint mark, uint64_t pmask) except -1:
        """Keyword searches: the unit over every stored value of the event (folded); with
        ``mark`` (selection), the rules whose witness a keyword found become candidates."""
        cdef object value, ev = st.event
        cdef Py_ssize_t pos = 0
        cdef PyObject *kp
        cdef PyObject *vp
        if not st.is_dict:
            for value in list(ev.values()):
                self._kw_value(st, un, value, None, mark, pmask)
            return 0
        while PyDict_Next(ev, &pos, &kp, &vp):
            self._kw_value(st, un, <object>vp, <object>kp, mark, pmask)
        return 0

    cdef int _kw_value(self, _State st, Unit *un, object value, object key, bint mark,
                       uint64_t pmask) except -1:
        """One stored value (of field ``key``; None: not known) through the keyword unit."""
        cdef object t
        cdef Py_ssize_t n
        cdef int32_t sl
        cdef const unsigned char *h
        if value is None:
            return 0
        if PyUnicode_Check(value):
            t = value
        else:
            tp = type(value)
            if not self._kw_num and (tp is int or tp is bool or tp is float):
                return 0         # its text cannot hold any keyword literal
            t = "true" if value is True else "false" if value is False else str(value)
        if PyUnicode_IS_ASCII(t):
            # ASCII folds to as many bytes: a shorter value holds no literal; the automaton's
            # classes fold ASCII capitals, so it walks the value as stored, whichever field
            # holds it
            n = PyUnicode_GET_LENGTH(t)
            if n < self._kw_minlen:
                return 0
            if un.mode == 0:
                self._scan_text(st, un, <const unsigned char *>PyUnicode_DATA(t), n, mark, pmask)
                return 0
        sl = self._slot_of.get(key, -1) if key is not None else -1
        if sl >= 0 and st.vepoch[sl] == st.epoch and not st.fnone[sl] \
                and <PyObject *>t == st.ftext[sl] and st.lepoch[sl] == st.epoch:
            h = st.fptr[sl]      # folded already for a predicate on this field
            n = st.flen[sl]
        elif sl >= 0 and (st.vepoch[sl] == st.epoch or self._fetch(st, sl)) \
                and not st.fnone[sl] and <PyObject *>t == st.ftext[sl]:
            # a stored value of a field the rules read: fold it once, in the field's
            # slot, where its predicates and literal unit find it
            self._field(st, sl, 0)
            h = st.fptr[sl]
            n = st.flen[sl]
        else:
            n = _cfold(t, &st.kwbuf, &st.kwcap)
            h = st.kwbuf
        self._scan_text(st, un, h, n, mark, pmask)
        return 0

    cdef int _scan_text(self, _State st, Unit *un, const unsigned char *h, Py_ssize_t n,
                        bint mark, uint64_t pmask) except -1:
        cdef Py_ssize_t i
        cdef uint32_t s, o, oe
        if un.mode == 3:
            return self._scan_anchor(st, un, h, <size_t>n, mark, pmask)
        s = 0
        if un.trans16 != NULL:
            i = 0
            while i < n:
                # the walk runs in its own tight C loop (the state stays in a register);
                # it stops after a state with outputs
                i = <Py_ssize_t>mt_ac_run16s(un.trans16, un.col, un.start, un.start1, h,
                                             <size_t>i, <size_t>n, &s)
                if s & 0x8000:
                    s &= 0x7FFF
                    o = un.out_off[s]
                    oe = un.out_off[s + 1]
                    while o < oe:
                        self._found(st, un.lit0 + un.out_ids[o], mark, pmask)
                        o += 1
        else:
            i = 0
            while i < n:
                i = <Py_ssize_t>mt_ac_run32s(un.trans32, un.col, un.start, un.start1, h,
                                             <size_t>i, <size_t>n, &s)
                if s & 0x80000000:
                    s &= 0x7FFFFFFF
                    o = un.out_off[s]
                    oe = un.out_off[s + 1]
                    while o < oe:
                        self._found(st, un.lit0 + un.out_ids[o], mark, pmask)
                        o += 1
        return 0

    cdef int _scan_anchor(self, _State st, Unit *un, const unsigned char *h, size_t n,
                          bint mark, uint64_t pmask) except -1:
        """Anchor-filter scan (mode 3) over folded (or, cased, raw) text."""
        cdef size_t i, e
        cdef int64_t r
        cdef uint64_t x
        cdef uint32_t ep = st.epoch
        cdef const uint32_t *ent
        cdef unsigned which = 0, cnt, b
        cdef uint64_t m4, m2
        cdef unsigned char seen[256]
        if un.q1e >= 8:
            # many 1-byte literals (CommandLine: 39): one pass notes the bytes present,
            # instead of one memchr per literal that mostly runs to the end of the text
            memset(seen, 0, sizeof(seen))
            for i in range(n):
                seen[h[i]] = 1
            for e in range(un.q1e):
                ent = un.q_ent + 8 * e
                if seen[un.q_bytes[ent[2]]]:
                    self._found(st, un.lit0 + ent[4], mark, pmask)
        else:
            for e in range(un.q1e):
                ent = un.q_ent + 8 * e
                if st.lit_epoch[un.lit0 + ent[4]] != ep and memchr(h, un.q_bytes[ent[2]], n) != NULL:
                    self._found(st, un.lit0 + ent[4], mark, pmask)
        i = 0
        # blocks of up to 64 positions with 8 bytes of text from each: all positions'
        # tables tested without a branch each, then only the ones let through visited
        while i + 8 <= n:
            if un.q_ascii and (h[i] & 0x80):
                i += 1
                while i + 8 <= n and (mt_load64(h + i) & MT_HI8) == MT_HI8:
                    i += 8
                continue
            cnt = <unsigned>(n - 7 - i) if n - 7 - i < 64 else 64
            mt_af_block(un.q4filt, un.q4fshift, un.q2bits, un.q_ascii, h, i, cnt, &m4, &m2)
            x = m4 | m2
            while x:
                b = <unsigned>mt_ctz64(x)
                x &= x - 1
                which = 0
                if (m4 >> b) & 1:
                    which = 2
                    if un.q8filt != NULL and mt_af_ftest(un.q8filt, un.q8fshift, mt_load64(h + i + b)):
                        which = 3
                if (m2 >> b) & 1:
                    which |= 4
                self._af_at(st, un, h, n, i + b, which, mark, pmask)
            i += cnt
        while True:
            # the last positions (fewer than 8 bytes left): the tables that let position i
            # through, each tested once
            i = mt_af_next(un.q8filt, un.q8fshift, un.q4filt, un.q4fshift, un.q2bits,
                            un.q_ascii, h, i, n, &which)
            if i >= n:
                break
            self._af_at(st, un, h, n, i, which, mark, pmask)
            i += 1
        return 0

    cdef inline void _af_at(self, _State st, Unit *un, const unsigned char *h, size_t n, size_t i,
                            unsigned which, bint mark, uint64_t pmask) noexcept:
        """Look up the buckets of position ``i`` whose tables let it through (``which``:
        1 the 8-gram filter, 2 the 4-gram one, 4 the bigram bitmap) and verify them."""
        cdef int64_t r
        cdef unsigned g
        if which & 1:
            r = mt_af_rank(un.q8bits, un.q8rank, mt_af_bucket(mt_load64(h + i), un.q8bshift))
            if r >= 0:
                self._af_bucket(st, un, un.q8base + <size_t>r, h, n, i, 8, mark, pmask)
        if which & 2 and un.q4bits != NULL:
            r = mt_af_rank(un.q4bits, un.q4rank, mt_af_bucket(<uint64_t>mt_load32(h + i), un.q4bshift))
            if r >= 0:
                self._af_bucket(st, un, un.q4base + <size_t>r, h, n, i, 4, mark, pmask)
        if which & 4:
            g = <unsigned>h[i] | (<unsigned>h[i + 1] << 8)
            if un.q3t != NULL and not mt_bit(un.q2x, g) \
                    and not (i + 3 <= n and mt_bit(un.q3t, mt_t3_hash(h + i, 0, un.q3shift))) \
                    and not (i >= 1 and mt_bit(un.q3t, mt_t3_hash(h + i - 1, 1, un.q3shift))):
                return      # only 3-byte needles are anchored here, and none of them is
            r = mt_af_rank(un.q2bits, un.q2rank, g)
            if r >= 0:
                self._af_bucket(st, un, un.q2base + <size_t>r, h, n, i, 2, mark, pmask)

    cdef inline void _af_bucket(self, _State st, Unit *un, size_t e, const unsigned char *h, size_t n,
                                size_t i, int alen, bint mark, uint64_t pmask) noexcept:
        """Verify the needles of one anchor-filter bucket (its primary entry ``e`` and
        the overflow entries it names) with their anchor at text position ``i``."""
        cdef const uint32_t *ent = un.q_ent + 8 * e
        cdef size_t more = ent[6], nxt = ent[5]
        cdef uint32_t x0 = mt_load32(h + i) if alen >= 4 else 0
        cdef uint32_t x1 = mt_load32(h + i + 4) if alen == 8 else 0
        cdef uint32_t lid, ep = st.epoch
        while True:
            # the anchor's bytes, kept in the entry, reject other grams of the bucket
            # without touching the needle bytes
            if ent[0] == x0 and ent[1] == x1:
                lid = un.lit0 + ent[4]
                # a needle that is its whole anchor (2-byte bucket: the bigram itself; 4 and
                # 8: the bytes just compared) is found without reading its bytes
                if st.lit_epoch[lid] != ep and (ent[3] == <uint32_t>alen or mt_q_verify(
                        h, n, i, un.q_bytes + ent[2], ent[3], ent[7])):
                    self._found(st, lid, mark, pmask)
            if more == 0:
                break
            more -= 1
            ent = un.q_ent + 8 * nxt
            nxt += 1

    # ------------------------------------------------------------------ selection
    cdef int _scan_tries(self, _State st, Py_ssize_t w, uint64_t pmask) except -1:
        """Walk field ``w``'s prefix and suffix tries; mark the rules whose literals match."""
        cdef int32_t slot = self._w_slot[w]
        cdef Automaton *a
        cdef const unsigned char *h
        cdef Py_ssize_t n, i
        cdef uint32_t ai, s
        if self._w_aoff[w] == self._w_aoff[w + 1]:
            return 0
        if not self._scantext(st, slot, &h, &n):
            return 0
        for ai in range(self._w_aoff[w], self._w_aoff[w + 1]):
            a = &self._ac[ai]
            if a.mode == 1:
                s = 1
                for i in range(n):
                    if a.trans16 != NULL:
                        s = a.trans16[a.col[h[i]] + s]
                        if s & 0x8000:
                            s &= 0x7FFF
                            _hits(a, st.cand, s, 0, pmask, self._r_f1)
                    else:
                        s = a.trans32[a.col[h[i]] + s]
                        if s & 0x80000000:
                            s &= 0x7FFFFFFF
                            _hits(a, st.cand, s, 0, pmask, self._r_f1)
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
                            _hits(a, st.cand, s, (1 if i == 0 else 0), pmask, self._r_f1)
                    else:
                        s = a.trans32[a.col[h[i]] + s]
                        if s & 0x80000000:
                            s &= 0x7FFFFFFF
                            _hits(a, st.cand, s, (1 if i == 0 else 0), pmask, self._r_f1)
                    if s == 0:
                        break
                    i -= 1
        return 0

    cdef int _select(self, _State st) except -1:
        """Fill the candidate bitmap: rules that can hold for this event."""
        cdef uint64_t *cand = st.cand
        cdef uint64_t pmask = 0, scan
        cdef Py_ssize_t i, w
        cdef int32_t u
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
                    if ev.get(name) is None and name not in DERIVED:
                        wi = self._wslot_of.get(name)
                        if wi is not None:
                            pmask |= (<uint64_t>1) << <int>wi
                        # a value still to be resolved: keyword searches wait for evaluation
                        pmask |= self._kw_wbit
        scan = self._w_scan1 | (self._w_scan2 if pmask else 0)
        scan &= ~pmask
        while scan:
            w = mt_ctz64(scan)
            scan &= scan - 1
            self._scan_tries(st, w, pmask)
            u = self._w_unit[w]
            if u >= 0 and st.uepoch[u] != st.epoch:
                self._run_unit(st, u, 1, pmask)
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

    cdef inline void _begin(self, _State st, object event):
        tp = type(event)
        st.is_pe = tp is ProcessEvent
        st.is_dict = st.is_pe or tp is dict
        st.event = event

    cdef int _run(self, _State st, object event, list out) except -1:
        """Evaluate ``event`` with ``st`` (held busy by the caller): append the indices of
        the matching rules to ``out``, ascending."""
        cdef Py_ssize_t wd
        cdef uint64_t bits
        cdef uint32_t r
        cdef int res
        cdef const uint32_t *roots
        st.epoch += 1
        if st.epoch >= 0x3FFFFFFF:
            st._reset()
            st.epoch = 1
        self._begin(st, event)
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
        finally:
            st._release()
        return 0

    cdef void _warm(self) noexcept:
        """After the matcher has been idle (the coarse clock ticked since the last call),
        ask for the anchor filters' probe tables (~128 KB for the SigmaHQ set) ahead of the
        scan: a scan of a cold event probes most of their cache lines at random positions,
        and reading them ahead lets the misses overlap.  A hint: no answer depends on it.
        Back-to-back calls (a busy host, a batch) pay one clock read each."""
        cdef Py_ssize_t k
        cdef uint64_t t = mt_tick_ms()
        if t == self._warm_tick:
            return
        self._warm_tick = t
        self._warms += 1
        for k in range(self._nwarm):
            mt_prefetch_range(<const void *><size_t>self._warm_ranges[2 * k],
                              <size_t>self._warm_ranges[2 * k + 1])

    cpdef list match(self, event):
        """Indices of the rules whose condition holds for ``event``, ascending."""
        cdef _State st = self._state
        cdef list out = []
        if self._warm_bytes:
            self._warm()
        if st.busy:   # re-entered from a resolver, or another thread: private scratch
            st = self._new_state()
        st.busy = True
        try:
            self._run(st, event, out)
            return out
        finally:
            st.busy = False

    def match_batch(self, events):
        """``match`` for every event of ``events`` (any iterable), in one call: a list as
        long as ``events``, in their order, holding for each event a tuple of the indices
        of its matching rules, ascending (``()`` when none), or the exception its
        evaluation raised (a failing resolver, say); the events after it are still
        evaluated.  Exceptions that are not ``Exception`` (KeyboardInterrupt) propagate.
        Answers equal ``sensor.detect.matcher.match_batch`` over ``match``."""
        cdef _State st = self._state
        cdef list seq = events if type(events) is list else list(events)
        cdef Py_ssize_t i, n = PyList_GET_SIZE(seq)
        cdef list res = [()] * n
        cdef list hits = []
        if self._warm_bytes:
            self._warm()
        if st.busy:
            st = self._new_state()
        st.busy = True
        i = 0
        try:
            while i < n:
                # one try for the run of events up to a failing one, not one per event
                try:
                    while i < n:
                        self._run(st, seq[i], hits)
                        if PyList_GET_SIZE(hits):
                            res[i] = tuple(hits)
                            del hits[:]
                        i += 1
                except Exception as exc:
                    res[i] = exc
                    if PyList_GET_SIZE(hits):
                        del hits[:]
                    i += 1
        finally:
            st.busy = False
        return res

    def candidates(self, event):
        """Indices of the rules the index lets through for ``event`` (a superset of ``match``)."""
        cdef _State st = self._new_state()
        cdef list out = []
        cdef Py_ssize_t wd
        cdef uint64_t bits
        st.epoch = 1
        self._begin(st, event)
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

    def time_phases(self, events, int passes=3):
        """(selection ns/event, whole match ns/event, mean candidates): the best of
        ``passes`` passes over ``events`` (for the benchmarks)."""
        import time
        cdef _State st = self._state
        cdef Py_ssize_t wd, ncand = 0
        cdef uint64_t bits
        best_s = best_m = None
        evs = list(events)
        for _ in range(passes):
            t0 = time.perf_counter()
            for ev in evs:
                st.epoch += 1
                if st.epoch >= 0x3FFFFFFF:
                    st._reset()
                    st.epoch = 1
                self._begin(st, ev)
                self._select(st)
                st._release()
            dt = time.perf_counter() - t0
            best_s = dt if best_s is None else min(best_s, dt)
            t0 = time.perf_counter()
            for ev in evs:
                self.match(ev)
            dt = time.perf_counter() - t0
            best_m = dt if best_m is None else min(best_m, dt)
        for ev in evs:
            ncand += len(self.candidates(ev))
        n = max(1, len(evs))
        return best_s / n * 1e9, best_m / n * 1e9, ncand / n

    def witness(self, int rule):
        """The literals one of which must occur for rule ``rule`` to be evaluated:
        ``[(field, position, literal bytes, estimated probability)]``; None when the rule
        is evaluated for every event."""
        return self._witness_desc[rule]

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
        out["prefetches"] = self._warms
        return out


cdef inline void _hits(Automaton *a, uint64_t *cand, uint32_t s, int edge,
                      uint64_t pmask, const uint64_t *r_f1) noexcept:
    """Mark the rules named by the outputs of trie state ``s``.  An entry with W_START
    (a whole-value literal walked from the end) also needs the walk to have reached the
    value's first byte (``edge``); the prefix trie always starts there."""
    cdef uint32_t o = a.out_off[s], oe = a.out_off[s + 1], nid, e, eend, r
    cdef int at_start = 1 if a.mode == 1 else edge
    while o < oe:
        nid = a.out_ids[o]
        e = a.nd_eoff[nid]
        eend = a.nd_eoff[nid + 1]
        while e < eend:
            if at_start or not (a.en_kind[e] & W_START):
                r = a.en_rule[e]
                if a.en_tag[e] == 1 or (pmask & r_f1[r]):
                    cand[r >> 6] |= (<uint64_t>1) << (r & 63)
            e += 1
        o += 1


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


def _ecost(e):
    """The estimated cost of a witness entry (its last item)."""
    return e[len(e) - 1]


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
