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

/* How rare a byte is in Windows command lines and paths (higher = rarer).
 * Used to pick the memchr anchor of a needle: scanning for a rare byte skips
 * most of the haystack in SIMD memchr (physics: shared/reference §4a, d4). */
static const char *mt_common_bytes =
    " e\\tsoairnlc.:/mdpwx-\"=uhgb0f1y32kv_'4568%97,;$jq()z{}[]@&+#|<>?*!~`^";

static inline int mt_byte_rarity(unsigned char b)
{
    const char *p;
    if (b >= 'A' && b <= 'Z')
        b = (unsigned char)(b - 'A' + 'a');
    if (b == 0)
        return 300;
    p = strchr(mt_common_bytes, (int)b);
    if (p == NULL)
        return 255; /* non-ASCII, control: rare */
    return (int)(p - mt_common_bytes);
}

/* Offset of the rarest byte of a needle (the memchr anchor). */
static inline size_t mt_rare_offset(const unsigned char *n, size_t nn)
{
    size_t i, best = 0;
    int br = -1;
    for (i = 0; i < nn; i++) {
        int r = mt_byte_rarity(n[i]);
        if (r > br) {
            br = r;
            best = i;
        }
    }
    return best;
}

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

/* Bigram presence filter: one bit per (hashed) pair of adjacent bytes of a text.
 * A needle of two or more bytes can occur only if all its bigrams are present;
 * aliasing (the hash, non-ASCII bytes) only lets more needles through. */
#define MT_BG_WORDS 128 /* 8192 bits */
#define MT_BG(a, b) (((((unsigned)(a)) & 0x7Fu) << 6) ^ (((unsigned)(b)) & 0x7Fu))

static inline void mt_bigrams(uint64_t *bm, const unsigned char *s, size_t n)
{
    size_t i;
    memset(bm, 0, sizeof(uint64_t) * MT_BG_WORDS);
    for (i = 0; i + 1 < n; i++) {
        unsigned x = MT_BG(s[i], s[i + 1]);
        bm[x >> 6] |= (uint64_t)1 << (x & 63);
    }
}

static inline int mt_bg_has(const uint64_t *bm, unsigned x)
{
    if (x >= 64u * MT_BG_WORDS) /* no bigram (a one-byte needle) */
        return 1;
    return (int)((bm[x >> 6] >> (x & 63)) & 1);
}

/* Does haystack h contain needle n?  Anchor on the needle's rare byte at ``off``. */
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

static inline int mt_has_upper_ascii(const unsigned char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)(s[i] - 'A') < 26u)
            return 1;
    return 0;
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

/* Whole-value wildcard match: ``*`` any run of code points, ``?`` exactly one.
 * Greedy with back-tracking to the last star (linear for literal-heavy globs).
 * Equivalent to re.fullmatch of ir.glob_to_regex on the same (folded) text. */
static inline int mt_glob(const uint16_t *pat, size_t m, const unsigned char *s, size_t n)
{
    size_t p = 0, i = 0, star_p = (size_t)-1, star_i = 0;
    while (i < n) {
        if (p < m && pat[p] == MT_QMARK) {
            i += mt_charlen(s[i]);
            p++;
        } else if (p < m && pat[p] == MT_STAR) {
            star_p = p++;
            star_i = i;
        } else if (p < m && pat[p] == s[i]) {
            i++;
            p++;
        } else if (star_p != (size_t)-1) {
            p = star_p + 1;
            star_i += mt_charlen(s[star_i]);
            i = star_i;
        } else {
            return 0;
        }
    }
    if (i > n) /* a '?' ran past the end: cannot happen on valid text */
        return 0;
    while (p < m && pat[p] == MT_STAR)
        p++;
    return p == m;
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

/* Anchor filter (mode 3): hash of the 4 bytes at p, to (32 - shift) bits. */
static inline uint32_t mt_q_hash4(const unsigned char *p, unsigned shift)
{
    uint32_t x;
    memcpy(&x, p, 4);
    return (uint32_t)(x * 2654435761u) >> shift;
}

/* The 4 bytes at p as one (native-endian) word. */
static inline uint32_t mt_load32(const unsigned char *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    return x;
}

/* First position >= i whose 2-gram (b2, may be NULL) or hashed 4-gram (b4) bit is
 * set; n when none.  Each position's tests are independent loads from small
 * bitmaps, so the loop is not a chain of dependent table loads. */
static inline size_t mt_q_next(const uint64_t *b4, unsigned shift, const uint64_t *b2,
                               const unsigned char *h, size_t i, size_t n)
{
    size_t end4 = n >= 4 ? n - 3 : 0; /* positions < end4 start a whole 4-gram */
    if (b2 != NULL) {
        for (; i + 1 < n; i++) {
            unsigned g2 = (unsigned)h[i] | ((unsigned)h[i + 1] << 8);
            if ((b2[g2 >> 6] >> (g2 & 63)) & 1)
                return i;
            if (i < end4) {
                uint32_t g4 = mt_q_hash4(h + i, shift);
                if ((b4[g4 >> 6] >> (g4 & 63)) & 1)
                    return i;
            }
        }
        return n;
    }
    for (; i < end4; i++) {
        uint32_t g4 = mt_q_hash4(h + i, shift);
        if ((b4[g4 >> 6] >> (g4 & 63)) & 1)
            return i;
    }
    return n;
}

/* Does the needle nd (len bytes, anchored at its offset k) occur with its anchor at i? */
static inline int mt_q_verify(const unsigned char *h, size_t n, size_t i, const unsigned char *nd,
                              unsigned len, unsigned k)
{
    size_t s, j;
    if (i < k)
        return 0;
    s = i - k;
    if (s + len > n)
        return 0;
    for (j = 0; j < len; j++)
        if (h[s + j] != nd[j])
            return 0;
    return 1;
}

/* 4-gram presence filter for long texts (where most bigrams occur): one bit per
 * 16-bit hash (mt_q_hash4) of every 4 adjacent bytes. */
#define MT_Q4_WORDS 1024 /* 65536 bits */

static inline void mt_quads(uint64_t *bm, const unsigned char *s, size_t n)
{
    size_t i;
    memset(bm, 0, sizeof(uint64_t) * MT_Q4_WORDS);
    for (i = 0; i + 4 <= n; i++) {
        uint32_t x = mt_q_hash4(s + i, 16);
        bm[x >> 6] |= (uint64_t)1 << (x & 63);
    }
}

static inline int mt_q4_has(const uint64_t *bm, unsigned x)
{
    if (x >= 64u * MT_Q4_WORDS) /* no 4-gram (a needle under 4 bytes) */
        return 1;
    return (int)((bm[x >> 6] >> (x & 63)) & 1);
}

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

#endif /* MATCHER_UTIL_H */
