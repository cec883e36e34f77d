# C-level declarations of the compiled matcher, included by native/_matcher.pyx.
# (The extension is named sensor._matcher, so Cython does not pair this file with
# the .pyx by name; the .pyx includes it textually.)
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t


cdef extern from "matcher_util.h":
    int mt_contains(const unsigned char *h, size_t hn, const unsigned char *n, size_t nn, size_t off)
    int mt_eq_fwd(const unsigned char *a, const unsigned char *b, size_t n)
    int mt_eq_bwd(const unsigned char *a, const unsigned char *b, size_t n)
    void mt_lower_ascii(unsigned char *dst, const unsigned char *src, size_t n)
    int mt_has_upper_ascii(const unsigned char *s, size_t n)
    int mt_ctz64(uint64_t x)
    uint32_t mt_load32(const unsigned char *p)
    uint64_t mt_load64(const unsigned char *p)
    uint64_t MT_HI8
    int mt_bit(const uint64_t *b, uint32_t g)
    uint32_t mt_af_fword(uint64_t x, unsigned fshift)
    uint64_t mt_af_fbits(uint64_t x)
    int mt_af_ftest(const uint64_t *f, unsigned fshift, uint64_t x)
    uint32_t mt_af_bucket(uint64_t x, unsigned bshift)
    int mt_popcount64(uint64_t x)
    int64_t mt_af_rank(const uint64_t *bits, const uint32_t *rank, uint32_t g)
    size_t mt_af_next(const uint64_t *f8, unsigned fs8, const uint64_t *f4, unsigned fs4, const uint64_t *b2, int ascii, const unsigned char *h, size_t i, size_t n, unsigned *which)
    void mt_af_block(const uint64_t *f4, unsigned fs4, const uint64_t *b2, int ascii, const unsigned char *h, size_t i0, unsigned cnt, uint64_t *m4, uint64_t *m2)
    int mt_q_verify(const unsigned char *h, size_t n, size_t i, const unsigned char *nd, unsigned len, unsigned k)
    size_t mt_ac_run16(const uint16_t *t, const uint32_t *col, const unsigned char *h, size_t i, size_t n, uint32_t *ps)
    size_t mt_ac_run16s(const uint16_t *t, const uint32_t *col, const unsigned char *start, int one, const unsigned char *h, size_t i, size_t n, uint32_t *ps)
    size_t mt_ac_run32s(const uint32_t *t, const uint32_t *col, const unsigned char *start, int one, const unsigned char *h, size_t i, size_t n, uint32_t *ps)
    int mt_chain(const unsigned char *h, size_t n, const unsigned char *const *lits, const size_t *lens, const size_t *rare, size_t k, int dotall)
    size_t mt_count(const unsigned char *h, size_t n, unsigned char c, size_t enough)
    int mt_has_run(const unsigned char *h, size_t n, const unsigned char *table, size_t k)
    int mt_glob2(const uint32_t *prog, const unsigned char *s, size_t n)
    void mt_prefetch_range(const void *p, size_t n)
    uint32_t mt_t3_hash(const unsigned char *p, unsigned k, unsigned shift)
    uint64_t mt_tick_ms()


cdef struct PredInfo:
    # What evaluating one predicate reads about it, in one place: a cold event touches
    # one cache line per predicate for these instead of one per array.
    int32_t slot           # field slot
    int32_t unit           # the literal unit its values (or required literals) are in
    uint32_t voff          # its values: _v_*[voff:voff + vcnt]
    uint32_t vcnt
    uint8_t kind
    uint8_t cased
    uint8_t pyf            # values hold a sigma: tested on str.lower() itself
    uint8_t empty          # a contains value is empty (true when the field is present)
    uint8_t fmode          # fieldref: 0 eq, 1 contains, 2 startswith, 3 endswith


cdef struct NodeInfo:
    # One node of the condition program.
    int32_t arg            # N_PRED: the predicate; N_CONST: the value
    uint32_t coff          # children: _children[coff:coff + ccnt]
    uint32_t ccnt
    uint8_t kind


cdef struct Automaton:
    # A witness trie of one field: mode 1 walks the value from its start (prefix
    # literals), mode 2 from its end (suffix and whole-value literals).
    uint32_t field         # witness field index
    uint32_t mode
    uint32_t nstates
    uint32_t ncls
    uint32_t col[256]      # class of byte b * nstates: the column of b in the transposed table
    uint16_t *trans16      # ncls * nstates next states, class-major (nstates < 32768)
    uint32_t *trans32      # ... otherwise
    uint32_t *out_off      # nstates + 1: outputs of state s are out_ids[out_off[s]:out_off[s+1]]
    uint32_t *out_ids      # needle group ids
    uint32_t *nd_eoff      # per group: entries[nd_eoff[i]:nd_eoff[i+1]]
    uint32_t *en_rule      # entry: rule index
    uint8_t *en_kind       # entry: bit 0 must also touch the value's start (whole value)
    uint8_t *en_tag        # entry: 1 primary witness, 2 fallback (lazy-field-free) witness


cdef struct Unit:
    # Every literal tested anywhere in one field (or, slot -1, in any value: keyword
    # searches): one pass finds all that occur.  Literal j of the unit is the global
    # literal lit0 + j.
    int32_t slot
    uint32_t cased         # 1: raw text (case-sensitive predicates), 0: folded text
    uint32_t lit0
    uint32_t nlit
    uint32_t mode          # 0 exact Aho-Corasick, 3 anchor filter
    uint32_t marks         # 1: some of its literals are witnesses (scan it during selection)
    # mode 0
    uint32_t nstates
    uint32_t col[256]
    uint16_t *trans16
    uint32_t *trans32
    uint32_t *out_off
    uint32_t *out_ids      # local literal ids
    uint8_t start[256]     # 1: the byte leaves the root state (0: skipped at the root)
    int32_t start1         # the only byte that leaves the root, or -1
    # mode 3 (anchor filter): entries of 8 words: the anchor's first 4 bytes, its next 4
    # (8-byte anchors), needle offset in q_bytes, len | k << 16, local literal id, first
    # overflow entry, overflow count, 0.  The q1e 1-byte literals come first; then per
    # gram size one primary entry per non-empty bucket (index: the bucket's rank), then
    # the overflow entries.
    uint32_t q1e
    uint32_t q_ascii         # 1: no 2/4/8-byte anchor starts with a byte >= 0x80
    uint64_t *q2bits       # exact 2-gram bitmap (65,536 bits); NULL when no 2-3 byte literals
    uint32_t *q2rank       # set bits before each word of q2bits
    uint32_t q2base        # entry index of the first 2-gram bucket
    uint64_t *q2x          # 2-grams whose bucket holds a needle other than 3 bytes long: a
                           # position there is always looked up; NULL when no 3-byte needle
    uint64_t *q3t          # the 3-byte needles (with their anchor offset) in a Bloom filter of
                           # one probe: any other position of the 2-gram bitmap is looked up
                           # only when one of them may be there
    uint32_t q3shift
    uint64_t *q4filt       # blocked Bloom filter of the 4-gram anchors; NULL when none
    uint32_t q4fshift
    uint64_t *q4bits       # non-empty 4-gram buckets
    uint32_t *q4rank
    uint32_t q4bshift
    uint32_t q4base
    uint64_t *q8filt       # the same for 8-gram anchors
    uint32_t q8fshift
    uint64_t *q8bits
    uint32_t *q8rank
    uint32_t q8bshift
    uint32_t q8base
    const unsigned char *q_bytes
    uint32_t *q_ent
