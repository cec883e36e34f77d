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
    void mt_lower_ascii(unsigned char *dst, const unsigned char *src, size_t n)
    int mt_has_upper_ascii(const unsigned char *s, size_t n)
    int mt_glob(const uint16_t *pat, size_t m, const unsigned char *s, size_t n)
    int mt_ctz64(uint64_t x)
    int mt_chain(const unsigned char *h, size_t n, const unsigned char *const *lits, const size_t *lens, const size_t *rare, size_t k, int dotall)
    size_t mt_count(const unsigned char *h, size_t n, unsigned char c, size_t enough)


cdef struct Automaton:
    # One witness automaton of one field (see _build_automaton in the .pyx).
    uint32_t field         # witness field index
    uint32_t mode          # 0 Aho-Corasick over the text, 1 prefix trie, 2 suffix trie
    uint32_t nstates
    uint32_t ncls
    uint8_t cls[256]
    uint16_t *trans16      # nstates * ncls next states (when nstates < 65536)
    uint32_t *trans32      # ... otherwise
    uint32_t *out_off      # nstates + 1: outputs of state s are out_ids[out_off[s]:out_off[s+1]]
    uint32_t *out_ids      # needle ids
    uint32_t *nd_len       # per needle: byte length
    uint32_t *nd_eoff      # per needle: entries[nd_eoff[i]:nd_eoff[i+1]]
    uint32_t *en_rule      # entry: rule index
    uint8_t *en_kind       # entry: bit 0 must start the value, bit 1 must end it
    uint8_t *en_tag        # entry: 1 primary witness, 2 fallback (lazy-field-free) witness
