# C-level declarations of the compiled matcher, included by native/_matcher.pyx.
# (The extension is named sensor._matcher, so Cython does not pair this file with
# the .pyx by name; the .pyx includes it textually.)
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t


cdef extern from "matcher_util.h":
    enum:
        MT_STAR
        MT_QMARK
    size_t mt_rare_offset(const unsigned char *n, size_t nn)
    int mt_contains(const unsigned char *h, size_t hn, const unsigned char *n, size_t nn, size_t off)
    int mt_eq_fwd(const unsigned char *a, const unsigned char *b, size_t n)
    int mt_eq_bwd(const unsigned char *a, const unsigned char *b, size_t n)
    enum:
        MT_BG_WORDS
        MT_Q4_WORDS
    void mt_quads(uint64_t *bm, const unsigned char *s, size_t n)
    int mt_q4_has(const uint64_t *bm, unsigned x)
    void mt_bigrams(uint64_t *bm, const unsigned char *s, size_t n)
    int mt_bg_has(const uint64_t *bm, unsigned x)
    unsigned MT_BG(unsigned a, unsigned b)
    void mt_lower_ascii(unsigned char *dst, const unsigned char *src, size_t n)
    int mt_has_upper_ascii(const unsigned char *s, size_t n)
    int mt_glob(const uint16_t *pat, size_t m, const unsigned char *s, size_t n)
    int mt_ctz64(uint64_t x)
    uint32_t mt_q_hash4(const unsigned char *p, unsigned shift)
    uint32_t mt_load32(const unsigned char *p)
    size_t mt_q_next(const uint64_t *b4, unsigned shift, const uint64_t *b2, const unsigned char *h, size_t i, size_t n)
    int mt_q_verify(const unsigned char *h, size_t n, size_t i, const unsigned char *nd, unsigned len, unsigned k)
    size_t mt_ac_run16(const uint16_t *t, const uint32_t *col, const unsigned char *h, size_t i, size_t n, uint32_t *ps)
    int mt_chain(const unsigned char *h, size_t n, const unsigned char *const *lits, const size_t *lens, const size_t *rare, size_t k, int dotall)
    size_t mt_count(const unsigned char *h, size_t n, unsigned char c, size_t enough)


cdef struct Automaton:
    # One witness automaton of one field (see _build_automaton in the .pyx).
    uint32_t field         # witness field index
    uint32_t mode          # 0 Aho-Corasick over the text, 1 prefix trie, 2 suffix trie
    uint32_t nstates
    uint32_t ncls
    uint8_t cls[256]
    uint32_t col[256]      # cls[b] * nstates: the column of byte b in the transposed table
    uint16_t *trans16      # ncls * nstates next states, class-major (nstates < 32768)
    uint32_t *trans32      # ... otherwise
    uint32_t *out_off      # nstates + 1: outputs of state s are out_ids[out_off[s]:out_off[s+1]]
    uint32_t *out_ids      # needle ids
    uint32_t *nd_len       # per needle: byte length
    uint32_t *nd_eoff      # per needle: entries[nd_eoff[i]:nd_eoff[i+1]]
    uint32_t *en_rule      # entry: rule index
    uint8_t *en_kind       # entry: bit 0 must start the value, bit 1 must end it
    uint8_t *en_tag        # entry: 1 primary witness, 2 fallback (lazy-field-free) witness
    # mode 3 (anchor filter, see Matcher._build_qgram): needle entries, 1-byte ones
    # first (q1e of them), then 2-gram buckets, then hashed 4-gram buckets
    uint32_t qshift        # 32 - log2(4-gram bitmap bits)
    uint32_t q1e
    uint64_t *q4bits
    uint32_t *q4off
    uint64_t *q2bits       # NULL when there are no 2-3 byte needles
    uint32_t *q2off
    const unsigned char *q_bytes
    uint32_t *q_noff       # entry: needle bytes at q_bytes + q_noff, q_len of them
    uint32_t *q_len
    uint32_t *q_k          # entry: anchor offset in the needle
    uint32_t *q_gid        # entry: needle group (nd_eoff index)
    uint32_t *q_ent        # entry: packed (anchor 4 bytes, needle offset, len | k << 16, group)
