/* Byte-level helpers for the compiled matcher (native/_matcher.pyx).
 *
 * Every routine works on UTF-8 (surrogatepass) bytes.  UTF-8 is a prefix-free,
 * self-synchronising code, so a valid needle occurs in a valid haystack as bytes
 * exactly when it occurs as code points: substring / prefix / suffix / equality
 * tests on bytes give the same answers as the reference matcher's ``str`` tests.
 * Portable C99 only (no memmem: MSVC lacks it).
 */
#ifndef MATCHER_UTIL_H
#define MATCHER_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Glob program codes: 0..255 literal byte, MT_STAR any run, MT_QMARK one code point. */
#define MT_STAR 256
#define MT_QMARK 257

/* Equality of n bytes, inline: the needles are short and usually differ early, so
 * a byte loop beats a library memcmp call. */
static inline int mt_eq_fwd(const unsigned char *a, const unsigned char *b, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* The same, comparing from the last byte (suffix tests: endings like ".exe" agree). */
static inline int mt_eq_bwd(const unsigned char *a, const unsigned char *b, size_t n)
{
    while (n) {
        n--;
        if (a[n] != b[n])
            return 0;
    }
    return 1;
}

/* Does haystack h contain needle n?  Anchor on the needle's rare byte at ``off`` (chosen
 * from byte frequencies over the rules' literals).  Used where no literal unit applies. */
static inline int mt_contains(const unsigned char *h, size_t hn,
                              const unsigned char *n, size_t nn, size_t off)
{
    const unsigned char *p, *end;
    unsigned char c;
    if (nn == 0)
        return 1;
    if (nn > hn)
        return 0;
    c = n[off];
    p = h + off;
    end = h + (hn - nn) + off + 1; /* last admissible anchor position + 1 */
    while (p < end) {
        p = (const unsigned char *)memchr(p, c, (size_t)(end - p));
        if (p == NULL)
            return 0;
        if (p[-(ptrdiff_t)off + (ptrdiff_t)nn - 1] == n[nn - 1] && mt_eq_fwd(p - off, n, nn))
            return 1;
        p++;
    }
    return 0;
}

/* ASCII lower-casing of n bytes (the caller checked the text is ASCII). */
static inline void mt_lower_ascii(unsigned char *dst, const unsigned char *src, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = src[i];
        dst[i] = (unsigned char)(c + ((unsigned char)(c - 'A') < 26u) * 32);
    }
}

/* Length of the UTF-8 (surrogatepass) sequence starting with lead byte b. */
static inline size_t mt_charlen(unsigned char b)
{
    if (b < 0x80)
        return 1;
    if (b >= 0xF0)
        return 4;
    if (b >= 0xE0)
        return 3;
    if (b >= 0xC0)
        return 2;
    return 1; /* a stray continuation byte cannot occur in encoder output */
}

/* Occurrences of byte c in h, stopping once ``enough`` were seen. */
static inline size_t mt_count(const unsigned char *h, size_t n, unsigned char c, size_t enough)
{
    size_t k = 0;
    const unsigned char *p = h, *end = h + n;
    while (p < end && k < enough) {
        p = (const unsigned char *)memchr(p, c, (size_t)(end - p));
        if (p == NULL)
            break;
        k++;
        p++;
    }
    return k;
}

/* Does h hold k consecutive bytes whose table entry is set? */
static inline int mt_has_run(const unsigned char *h, size_t n, const unsigned char *table, size_t k)
{
    size_t i, run = 0, s = 0, g = 0, j;
    if (k > 1) {
        /* Window [s, s + k), bytes [s, g) known to be in the class: test its other bytes
         * from the last one down; a byte outside the class rules out every window that
         * holds it, so the next window starts after it.  No byte is tested twice, and
         * text with few bytes of the class costs about n / k tests. */
        while (s + k <= n) {
            j = s + k;
            while (j > g && table[h[j - 1]])
                j--;
            if (j == g)
                return 1;
            g = s + k;
            s = j;
        }
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (table[h[i]]) {
            if (++run >= k)
                return 1;
        } else {
            run = 0;
        }
    }
    return 0;
}

/* re.search for a chain ``L1.*L2.*...Lk`` of literals (raw bytes): true when the
 * literals occur in order, non-overlapping, and (unless dotall) on one line, as
 * ``.`` does not match a newline.  Earliest placement per line is optimal. */
static inline int mt_chain(const unsigned char *h, size_t n, const unsigned char *const *lits,
                           const size_t *lens, const size_t *rare, size_t k, int dotall)
{
    size_t pos = 0;
    for (;;) {
        size_t line_end = n, p, j;
        int ok = 1;
        if (!dotall) {
            const unsigned char *nl = (const unsigned char *)memchr(h + pos, '\n', n - pos);
            if (nl != NULL)
                line_end = (size_t)(nl - h);
        }
        p = pos;
        for (j = 0; j < k; j++) {
            const unsigned char *q;
            size_t off = rare[j], len = lens[j], room = line_end - p;
            const unsigned char *hh = h + p;
            const unsigned char *end;
            if (len > room) {
                ok = 0;
                break;
            }
            /* earliest occurrence of lits[j] in [p, line_end) */
            q = NULL;
            end = hh + (room - len) + off + 1;
            {
                const unsigned char *a = hh + off;
                while (a < end) {
                    a = (const unsigned char *)memchr(a, lits[j][off], (size_t)(end - a));
                    if (a == NULL)
                        break;
                    if (memcmp(a - off, lits[j], len) == 0) {
                        q = a - off;
                        break;
                    }
                    a++;
                }
            }
            if (q == NULL) {
                ok = 0;
                break;
            }
            p = (size_t)(q - h) + len;
        }
        if (ok)
            return 1;
        if (line_end >= n)
            return 0;
        pos = line_end + 1;
    }
}

/* Aho-Corasick walk over h[i..n) from state *ps on a class-major table with 16-bit
 * states (bit 15: the state has outputs).  Returns the position after the first
 * byte that reaches a state with outputs (flag kept in *ps), or n. */
static inline size_t mt_ac_run16(const uint16_t *t, const uint32_t *col, const unsigned char *h,
                                 size_t i, size_t n, uint32_t *ps)
{
    uint32_t s = *ps;
    while (i < n) {
        s = t[col[h[i]] + s];
        i++;
        if (s & 0x8000u)
            break;
    }
    *ps = s;
    return i;
}

/* In the root state (0) of an Aho-Corasick DFA, skip the bytes that lead back to the
 * root without an output (start[b] == 0): independent loads, or one memchr when a single
 * byte value leaves the root (``one`` >= 0).  Skipped bytes would not change the state, so
 * the walk ends in the same state with the same outputs. */
static inline size_t mt_ac_skip(const unsigned char *start, int one, const unsigned char *h,
                                size_t i, size_t n)
{
    if (one >= 0) {
        const unsigned char *p = (const unsigned char *)memchr(h + i, one, n - i);
        return p == NULL ? n : (size_t)(p - h);
    }
    while (i + 4 <= n && !(start[h[i]] | start[h[i + 1]] | start[h[i + 2]] | start[h[i + 3]]))
        i += 4;
    while (i < n && !start[h[i]])
        i++;
    return i;
}

/* mt_ac_run16 with the root skip. */
static inline size_t mt_ac_run16s(const uint16_t *t, const uint32_t *col, const unsigned char *start,
                                  int one, const unsigned char *h, size_t i, size_t n, uint32_t *ps)
{
    uint32_t s = *ps;
    while (i < n) {
        if (s == 0) {
            i = mt_ac_skip(start, one, h, i, n);
            if (i >= n)
                break;
        }
        s = t[col[h[i]] + s];
        i++;
        if (s & 0x8000u)
            break;
    }
    *ps = s;
    return i;
}

/* The same for 32-bit tables (output flag 0x80000000). */
static inline size_t mt_ac_run32s(const uint32_t *t, const uint32_t *col, const unsigned char *start,
                                  int one, const unsigned char *h, size_t i, size_t n, uint32_t *ps)
{
    uint32_t s = *ps;
    while (i < n) {
        if (s == 0) {
            i = mt_ac_skip(start, one, h, i, n);
            if (i >= n)
                break;
        }
        s = t[col[h[i]] + s];
        i++;
        if (s & 0x80000000u)
            break;
    }
    *ps = s;
    return i;
}

/* The 4 bytes at p as one (native-endian) word. */
static inline uint32_t mt_load32(const unsigned char *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    return x;
}

/* 1 << k for k < 64, read from a table: on Intel cores a shift by a variable count is three
 * micro-ops, a load from this (L1-resident) table one. */
#define MT_B4(k) 1ull << (k), 1ull << ((k) + 1), 1ull << ((k) + 2), 1ull << ((k) + 3)
#define MT_B16(k) MT_B4(k), MT_B4((k) + 4), MT_B4((k) + 8), MT_B4((k) + 12)
static const uint64_t MT_BIT[64] = {MT_B16(0), MT_B16(16), MT_B16(32), MT_B16(48)};
#undef MT_B16
#undef MT_B4

static inline int mt_bit(const uint64_t *b, uint32_t g)
{
    return (b[g >> 6] & MT_BIT[g & 63]) != 0;
}

/* Anchor filter, hashed grams (4 or 8 bytes loaded as one word x).  A blocked Bloom
 * filter decides whether a position needs a look at all: the word comes from the top bits
 * of one multiplicative hash, three bits of that word from its mixed low bits, so one load
 * rejects all but ~1 % of the positions whose gram is not an anchor.  Only then the bucket
 * (a second, independent hash) is looked up. */
#define MT_AF_C1 0x9E3779B97F4A7C15ull
#define MT_AF_C2 0xC2B2AE3D27D4EB4Full

static inline uint64_t mt_load64(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

static inline uint64_t mt_af_fh(uint64_t x)
{
    uint64_t h = x * MT_AF_C1;
    return h ^ (h >> 32);
}

/* The filter bits of hash h: three bits of one 64-bit word. */
static inline uint64_t mt_af_fmask(uint64_t h)
{
    return MT_BIT[h & 63] | MT_BIT[(h >> 6) & 63] | MT_BIT[(h >> 12) & 63];
}

/* Filter word index of gram x (fshift = 64 - log2(words)). */
static inline uint32_t mt_af_fword(uint64_t x, unsigned fshift)
{
    return (uint32_t)(mt_af_fh(x) >> fshift);
}

static inline uint64_t mt_af_fbits(uint64_t x)
{
    return mt_af_fmask(mt_af_fh(x));
}

static inline int mt_af_ftest(const uint64_t *f, unsigned fshift, uint64_t x)
{
    uint64_t h = mt_af_fh(x), m = mt_af_fmask(h);
    return (f[h >> fshift] & m) == m;
}

/* Bucket of gram x (bshift = 64 - log2(buckets)). */
static inline uint32_t mt_af_bucket(uint64_t x, unsigned bshift)
{
    return (uint32_t)((x * MT_AF_C2) >> bshift);
}

static inline int mt_popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (int)((x * 0x0101010101010101ull) >> 56);
}

/* The rank of bucket g among the non-empty buckets (the index of its first entry), or -1
 * when it is empty: a bitmap of the non-empty buckets and the count of set bits before
 * each of its words, both small, instead of an offset per possible bucket. */
static inline int64_t mt_af_rank(const uint64_t *bits, const uint32_t *rank, uint32_t g)
{
    uint64_t w = bits[g >> 6], b = (uint64_t)1 << (g & 63);
    if (!(w & b))
        return -1;
    return (int64_t)rank[g >> 6] + mt_popcount64(w & (b - 1));
}

/* Bit 7 of each byte of a 64-bit word. */
#define MT_HI8 0x8080808080808080ull

/* Of eight ASCII bytes (bit 7 clear in each), bit 7 set in each capital letter A-Z.
 * Per byte, adding 0x3F sets bit 7 from 'A' (0x41) up and adding 0x25 from '[' (0x5B)
 * up; no sum leaves its byte (0x7F + 0x3F = 0xBE), so the bytes never carry into each
 * other, and the result does not depend on the machine's byte order. */
static inline uint64_t mt_upper8(uint64_t x)
{
    return (x + 0x3F3F3F3F3F3F3F3Full) & ~(x + 0x2525252525252525ull) & MT_HI8;
}

/* Whether ASCII text (every byte below 0x80) holds a capital letter: eight bytes a step. */
static inline int mt_has_upper_ascii(const unsigned char *s, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        if (mt_upper8(mt_load64(s + i)))
            return 1;
    for (; i < n; i++)
        if ((unsigned char)(s[i] - 'A') < 26u)
            return 1;
    return 0;
}

/* Byte k (0 = lowest address) of an 8-byte word stored with memcpy. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define MT_BYTE_AT(v, k) ((uint64_t)(v) << (56 - 8 * (k)))
#else
#define MT_BYTE_AT(v, k) ((uint64_t)(v) << (8 * (k)))
#endif

/* p[0] | p[1] << 8 of a 4-byte word x loaded from p with memcpy. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define MT_LO16(x) ((unsigned)((x) >> 24) | ((unsigned)((x) >> 8) & 0xFF00u))
#else
#define MT_LO16(x) ((unsigned)(x) & 0xFFFFu)
#endif

/* Eight ASCII bytes with A-Z lowered, every other byte as it was: each capital's flag
 * (mt_upper8) moved down to bit 5, the case bit (clear in every capital letter). */
static inline uint64_t mt_lower8(uint64_t x)
{
    return x | (mt_upper8(x) >> 2);
}

/* The first position >= i that the 8-gram filter (f8), the 4-gram filter (f4) or the
 * exact 2-gram bitmap (b2) lets through (each may be NULL), n when none, and in *which
 * the tables that let it through (bit 0 f8, bit 1 f4, bit 2 b2), so the caller looks up
 * only those buckets without testing the position again.  f4 is the gate: it also holds
 * the first 4 bytes of every 8-gram anchor, so f8 is probed only where f4 lets the
 * position through (bit 1 then says "look up the 4-gram bucket", which is empty for
 * most such positions), and an ordinary position costs one hashed probe and one bit
 * of b2 instead of two probes and a bit.  ``ascii``: no anchor starts with a byte >= 0x80,
 * so a position holding one cannot start an anchor and is passed over without a probe
 * (runs of such bytes, i.e. non-ASCII text, eight at a time). */
static inline size_t mt_af_next(const uint64_t *f8, unsigned fs8, const uint64_t *f4, unsigned fs4,
                                 const uint64_t *b2, int ascii, const unsigned char *h, size_t i,
                                 size_t n, unsigned *which)
{
    unsigned w;
    while (i + 8 <= n) {
        if (ascii && (h[i] & 0x80u)) {
            i++;
            while (i + 8 <= n && (mt_load64(h + i) & MT_HI8) == MT_HI8)
                i += 8;
            continue;
        }
        w = 0;
        /* f4 is the gate: it holds the first 4 bytes of the 8-gram anchors too (f8 is
         * never set without f4) */
        if (f4 != NULL && mt_af_ftest(f4, fs4, (uint64_t)mt_load32(h + i))) {
            w = 2u;
            if (f8 != NULL && mt_af_ftest(f8, fs8, mt_load64(h + i)))
                w |= 1u;
        }
        if (b2 != NULL && mt_bit(b2, (unsigned)h[i] | ((unsigned)h[i + 1] << 8)))
            w |= 4u;
        if (w) {
            *which = w;
            return i;
        }
        i++;
    }
    for (; i < n; i++) {
        if (ascii && (h[i] & 0x80u))
            continue;
        w = 0;
        if (f4 != NULL && i + 4 <= n && mt_af_ftest(f4, fs4, (uint64_t)mt_load32(h + i)))
            w |= 2u;
        if (b2 != NULL && i + 2 <= n && mt_bit(b2, (unsigned)h[i] | ((unsigned)h[i + 1] << 8)))
            w |= 4u;
        if (w) {
            *which = w;
            return i;
        }
    }
    *which = 0;
    return n;
}

/* The same tests for a block of cnt (<= 64) positions i0 .. i0 + cnt - 1, each with 8
 * bytes of text from it on, without a branch per position: bit j of *m4 is set when the
 * 4-gram filter (the gate) lets position i0 + j through, of *m2 when its bigram is in b2;
 * with ``ascii``, positions holding a byte >= 0x80 are left out of both.  Most positions
 * pass neither table, and which ones do cannot be predicted, so testing them all and
 * then visiting the set bits costs no mispredicted branch per position. */
static inline void mt_af_block(const uint64_t *f4, unsigned fs4, const uint64_t *b2, int ascii,
                               const unsigned char *h, size_t i0, unsigned cnt,
                               uint64_t *m4, uint64_t *m2)
{
    uint64_t a = 0, b = 0, hi = 0;
    const unsigned char *p = h + i0;
    unsigned j;
    uint32_t x;
    /* The positions are visited from the last to the first and each result shifted in at
     * bit 0, so position j ends at bit j with a shift by a constant (a shift by j would be a
     * shift by a variable count: three micro-ops on Intel cores). */
    if (f4 != NULL && b2 != NULL) {
        /* both tables in one pass: the bigram is the first two bytes of the 4-gram */
        for (j = cnt; j-- > 0;) {
            x = mt_load32(p + j);
            a = (a << 1) | (uint64_t)mt_af_ftest(f4, fs4, x);
            b = (b << 1) | (uint64_t)mt_bit(b2, MT_LO16(x));
        }
    } else if (f4 != NULL) {
        for (j = cnt; j-- > 0;)
            a = (a << 1) | (uint64_t)mt_af_ftest(f4, fs4, mt_load32(p + j));
    } else if (b2 != NULL) {
        for (j = cnt; j-- > 0;)
            b = (b << 1) | (uint64_t)mt_bit(b2, (unsigned)p[j] | ((unsigned)p[j + 1] << 8));
    }
    if (ascii) {
        for (j = cnt; j-- > 0;)
            hi = (hi << 1) | (uint64_t)(p[j] >> 7);
        a &= ~hi;
        b &= ~hi;
    }
    *m4 = a;
    *m2 = b;
}

/* The bit of a 3-byte needle p[0..2] anchored at its offset k (0 or 1) in the trigram filter
 * of 2^(32 - shift) bits (one probe). */
static inline uint32_t mt_t3_hash(const unsigned char *p, unsigned k, unsigned shift)
{
    uint32_t x = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)k << 24);
    return (x * 0x9E3779B1u) >> shift;
}

/* Does the needle nd (len bytes, anchored at its offset k) occur with its anchor at i?
 * Compared inline: needles are short and usually differ early. */
static inline int mt_q_verify(const unsigned char *h, size_t n, size_t i, const unsigned char *nd,
                              unsigned len, unsigned k)
{
    size_t s;
    if (i < k)
        return 0;
    s = i - k;
    if (s + len > n)
        return 0;
    return mt_eq_fwd(h + s, nd, len);
}

/* Ask for every cache line of [p, p + n) to be brought in: the tables a scan will probe at
 * random positions, read ahead in one pass whose misses overlap (a hint: no effect on any
 * result). */
#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <xmmintrin.h>
#define MT_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#elif defined(_MSC_VER)
#define MT_PREFETCH(p) ((void)(p))
#else
#define MT_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#endif

static inline void mt_prefetch_range(const void *p, size_t n)
{
    const char *c = (const char *)p, *e = (const char *)p + n;
    for (; c < e; c += 64)
        MT_PREFETCH(c);
}

/* A coarse monotonic clock in milliseconds, as cheap as the platform has: it only says
 * whether time has passed since the last call (its tick is 1-16 ms).  (Python.h, included
 * before this header, makes clock_gettime visible.) */
#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
static inline uint64_t mt_tick_ms(void) { return (uint64_t)GetTickCount64(); }
#else
#include <time.h>
static inline uint64_t mt_tick_ms(void)
{
    struct timespec ts;
#if defined(CLOCK_MONOTONIC_COARSE)
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
#endif

/* Index of the lowest set bit of a non-zero word. */
#if defined(_MSC_VER)
#include <intrin.h>
static inline int mt_ctz64(uint64_t x)
{
    unsigned long i;
    _BitScanForward64(&i, x);
    return (int)i;
}
#else
static inline int mt_ctz64(uint64_t x) { return __builtin_ctzll(x); }
#endif

/* ---- Linear-time glob (whole-value wildcard match) ------------------------------------
 * Program (uint32): nseg, lead_star, trail_star, then per segment its length and code
 * points, MT_QM standing for ``?`` (exactly one code point).  Segments are separated by
 * ``*``.  The first segment (no leading star) must match at the start, the last (no
 * trailing star) at the end, and each middle one is placed at its earliest end: that
 * placement leaves the most room to the rest, so the answer is re.fullmatch's.  A middle
 * segment is found with bit-parallel Shift-And over code points: O(n * ceil(m / 64)). */
#define MT_QM 0xFFFFFFFFu

#include <stdlib.h>

/* The code point at s[i] (i < n) of UTF-8 (surrogatepass) text; *len its bytes. */
static inline uint32_t mt_cp_at(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    unsigned char b = s[i];
    size_t L;
    if (b < 0x80) {
        *len = 1;
        return b;
    }
    L = mt_charlen(b);
    if (i + L > n) { /* cannot happen for encoder output */
        *len = 1;
        return 0xFFFFFFFEu;
    }
    *len = L;
    if (L == 2)
        return ((uint32_t)(b & 0x1F) << 6) | (s[i + 1] & 0x3F);
    if (L == 3)
        return ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    return ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
           ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
}

/* Segment seg[0..m) matched forward from byte i: the end byte, or (size_t)-1. */
static inline size_t mt_seg_at(const uint32_t *seg, size_t m, const unsigned char *s, size_t n, size_t i)
{
    size_t k, L;
    uint32_t c;
    for (k = 0; k < m; k++) {
        if (i >= n)
            return (size_t)-1;
        c = mt_cp_at(s, n, i, &L);
        if (seg[k] != MT_QM && seg[k] != c)
            return (size_t)-1;
        i += L;
    }
    return i;
}

/* Segment matched backward so that it ends at byte e and starts at or after lo: its
 * start byte, or (size_t)-1. */
static inline size_t mt_seg_end(const uint32_t *seg, size_t m, const unsigned char *s, size_t n,
                                size_t lo, size_t e)
{
    size_t k = m, st, L;
    uint32_t c;
    while (k > 0) {
        if (e <= lo)
            return (size_t)-1;
        st = e - 1;
        while (st > lo && (s[st] & 0xC0) == 0x80)
            st--;
        c = mt_cp_at(s, n, st, &L);
        k--;
        if (seg[k] != MT_QM && seg[k] != c)
            return (size_t)-1;
        e = st;
    }
    return e;
}

/* Earliest end (byte) of an occurrence of the segment inside s[i..e), or (size_t)-1. */
static size_t mt_seg_find(const uint32_t *seg, size_t m, const unsigned char *s, size_t n,
                          size_t i, size_t e)
{
    size_t W = (m + 63) / 64, w, k, nna = 0, L, found = (size_t)-1;
    uint64_t *ascii, *qmask, *D, *M, *nam, carry, nd;
    uint32_t *nacp;
    uint32_t c;
    uint64_t topbit = (uint64_t)1 << ((m - 1) % 64);
    if (m == 0)
        return i;
    for (k = 0; k < m; k++)
        if (seg[k] != MT_QM && seg[k] >= 0x80)
            nna++;
    /* ascii[128][W], qmask[W], D[W], M[W], nam[nna][W]; nacp[nna] */
    ascii = (uint64_t *)calloc((128 + 3 + nna) * W, sizeof(uint64_t));
    nacp = (uint32_t *)malloc((nna ? nna : 1) * sizeof(uint32_t));
    if (ascii == NULL || nacp == NULL) {
        free(ascii);
        free(nacp);
        return (size_t)-2; /* out of memory */
    }
    qmask = ascii + 128 * W;
    D = qmask + W;
    M = D + W;
    nam = M + W;
    nna = 0;
    for (k = 0; k < m; k++) {
        uint64_t bit = (uint64_t)1 << (k % 64);
        if (seg[k] == MT_QM) {
            qmask[k / 64] |= bit;
        } else if (seg[k] < 0x80) {
            ascii[seg[k] * W + k / 64] |= bit;
        } else {
            size_t j;
            for (j = 0; j < nna; j++)
                if (nacp[j] == seg[k])
                    break;
            if (j == nna)
                nacp[nna++] = seg[k];
            nam[j * W + k / 64] |= bit;
        }
    }
    while (i < e) {
        c = mt_cp_at(s, n, i, &L);
        for (w = 0; w < W; w++)
            M[w] = qmask[w];
        if (c < 0x80) {
            for (w = 0; w < W; w++)
                M[w] |= ascii[c * W + w];
        } else {
            size_t j;
            for (j = 0; j < nna; j++)
                if (nacp[j] == c) {
                    for (w = 0; w < W; w++)
                        M[w] |= nam[j * W + w];
                    break;
                }
        }
        carry = 1;
        for (w = 0; w < W; w++) {
            nd = (D[w] << 1) | carry;
            carry = D[w] >> 63;
            D[w] = nd & M[w];
        }
        i += L;
        if (i > e)
            break;
        if (D[W - 1] & topbit) {
            found = i;
            break;
        }
    }
    free(ascii);
    free(nacp);
    return found;
}

/* Whole-value glob match of the program on UTF-8 text (folded unless cased).
 * 1 match, 0 no match, -1 out of memory. */
static int mt_glob2(const uint32_t *prog, const unsigned char *s, size_t n)
{
    uint32_t nseg = prog[0], lead = prog[1], trail = prog[2], k;
    const uint32_t *p = prog + 3, *seg, *last;
    size_t pos = 0, end = n, r, m, first = 0, stop = nseg, mlast;
    if (nseg == 0)
        return (lead || trail) ? 1 : n == 0;
    if (!lead && !trail && nseg == 1)
        return mt_seg_at(p + 1, p[0], s, n, 0) == n;
    /* the last segment */
    last = p;
    for (k = 0; k + 1 < nseg; k++)
        last += 1 + last[0];
    mlast = last[0];
    if (!lead) {
        r = mt_seg_at(p + 1, p[0], s, n, 0);
        if (r == (size_t)-1)
            return 0;
        pos = r;
        first = 1;
    }
    if (!trail) {
        r = mt_seg_end(last + 1, mlast, s, n, pos, n);
        if (r == (size_t)-1)
            return 0;
        end = r;
        stop = nseg - 1;
    }
    seg = p;
    for (k = 0; k < nseg; k++) {
        m = seg[0];
        if (k >= first && k < stop) {
            r = mt_seg_find(seg + 1, m, s, n, pos, end);
            if (r == (size_t)-2)
                return -1;
            if (r == (size_t)-1)
                return 0;
            pos = r;
        }
        seg += 1 + m;
    }
    return 1;
}

#endif /* MATCHER_UTIL_H */
