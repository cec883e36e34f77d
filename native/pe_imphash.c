/* pe_imphash.c: the IMPHASH text of an in-memory PE image.  Specification: docs/pe.md
 * ("IMPHASH"); the pure-Python twin (sensor/enrich/_imphash_py.py) takes every step and check
 * below in the same order, so both return the same text or the same status.
 *
 * The text is what pefile's get_imphash() hashes, for well-formed images: for each import
 * descriptor in table order, for each symbol of its lookup table, "lib.func" in lower case,
 * where lib is the DLL name without a .dll/.ocx/.sys extension and func the symbol's name or,
 * for an import by ordinal, the name pefile's tables give it (ws2_32, wsock32, oleaut32) or
 * "ordN".  Malformed tables are handled by the rules of the specification, not by pefile's
 * heuristics. */
#include "pe_imphash.h"
#include "pe_imphash_ordinals.h"

#include <string.h>

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

typedef struct pih_img {
    const uint8_t *d;
    size_t len;
    uint64_t sec;  /* file offset of the section table */
    uint32_t nsec;
} pih_img;

/* File offset of `n` bytes at `rva`: the first section whose [VA, VA + (VirtualSize or
 * SizeOfRawData)) holds the RVA, if those bytes lie in its raw data and in the buffer; else -1.
 * `avail` (optional) gets the bytes from there to the end of that section's data. */
static int64_t map_rva(const pih_img *im, uint64_t rva, uint64_t n, uint64_t *avail)
{
    uint32_t i;
    for (i = 0; i < im->nsec; i++) {
        const uint8_t *h = im->d + im->sec + 40u * (uint64_t)i + 8u;
        uint64_t vs = rd32(h), va = rd32(h + 4), rs = rd32(h + 8), ptr = rd32(h + 12);
        uint64_t span = vs ? vs : rs, end;
        if (rva >= va && rva < va + span) {
            uint64_t delta = rva - va;
            if (delta + n > rs || ptr + delta + n > im->len)
                return -1;
            if (avail) {
                end = ptr + rs < im->len ? ptr + rs : im->len;
                *avail = end - (ptr + delta);
            }
            return (int64_t)(ptr + delta);
        }
    }
    return -1;
}

/* An ASCII string at `rva`: NUL-terminated within PIH_MAX_NAME bytes, inside the raw data of
 * the section that holds its first byte.  Its length, or -1 when it cannot be read that way. */
static int read_name(const pih_img *im, uint64_t rva, const uint8_t **s)
{
    uint64_t avail = 0, k;
    int64_t off = map_rva(im, rva, 1, &avail);
    if (off < 0)
        return -1;
    if (avail > PIH_MAX_NAME)
        avail = PIH_MAX_NAME;
    for (k = 0; k < avail; k++) {
        if (im->d[off + (int64_t)k] == 0) {
            *s = im->d + off;
            return (int)k;
        }
    }
    return -1;
}

static int func_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("._?@$()<>", c) != NULL);
}

static int dll_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'()-@^_`{}~+,.;=[]:\\/", c) != NULL);
}

static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

typedef struct pih_out {
    char *p;
    uint32_t cap, n;
    int over;
} pih_out;

static void put(pih_out *o, const void *s, uint32_t n, int fold)
{
    uint32_t i;
    if (o->over || n > o->cap - o->n) {
        o->over = 1;
        return;
    }
    for (i = 0; i < n; i++)
        o->p[o->n + i] = (char)(fold ? lower(((const uint8_t *)s)[i]) : ((const uint8_t *)s)[i]);
    o->n += n;
}

/* pefile's name for an ordinal of `dll` (the lower-case full DLL name), or NULL. */
static const char *ordinal_name(const uint8_t *dll, uint32_t dlen, uint32_t ord)
{
    const pih_ordinal *t = NULL;
    size_t n = 0, lo, hi;
    if (dlen == 12 && memcmp(dll, "oleaut32.dll", 12) == 0) {
        t = PIH_ORD_OLEAUT32;
        n = sizeof PIH_ORD_OLEAUT32 / sizeof *t;
    } else if (dlen == 10 && memcmp(dll, "ws2_32.dll", 10) == 0) {
        t = PIH_ORD_WS2_32;
        n = sizeof PIH_ORD_WS2_32 / sizeof *t;
    } else if (dlen == 11 && memcmp(dll, "wsock32.dll", 11) == 0) {
        t = PIH_ORD_WSOCK32;
        n = sizeof PIH_ORD_WSOCK32 / sizeof *t;
    }
    lo = 0;
    hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t[mid].ordinal == ord)
            return t[mid].name;
        if (t[mid].ordinal < ord)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static uint32_t put_uint(char *o, uint32_t v)
{
    char tmp[12];
    uint32_t n = 0, k = 0;
    do {
        tmp[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n)
        o[k++] = tmp[--n];
    return k;
}

static int imphash(const uint8_t *d, size_t len, pih_out *o, pih_result *r)
{
    pih_img im;
    uint64_t lfanew, opt, pos, mask, flag;
    uint32_t optsz, magic, nrva_off, dd_off, tsz, examined = 0, thunks = 0;
    int first = 1; /* no ',' before the first symbol of the text */
    static const uint8_t invalid[] = "*invalid*";

    im.d = d;
    im.len = len;
    if (len < 64 || d[0] != 'M' || d[1] != 'Z')
        return PIH_NONE;
    lfanew = rd32(d + 0x3C);
    if (lfanew + 24 > len || memcmp(d + lfanew, "PE\0\0", 4) != 0)
        return PIH_NONE;
    im.nsec = rd16(d + lfanew + 6);
    optsz = rd16(d + lfanew + 20);
    opt = lfanew + 24;
    if (opt + 2 > len)
        return PIH_NONE;
    magic = rd16(d + opt);
    if (magic == 0x10B) {
        nrva_off = 92;
        dd_off = 96;
        tsz = 4;
        mask = 0x7FFFFFFFu;
        flag = 0x80000000u;
    } else if (magic == 0x20B) {
        nrva_off = 108;
        dd_off = 112;
        tsz = 8;
        mask = 0x7FFFFFFFFFFFFFFFull;
        flag = 0x8000000000000000ull;
    } else {
        return PIH_NONE;
    }
    if (optsz < dd_off + 16 || opt + dd_off + 16 > len)
        return PIH_NONE;
    if (rd32(d + opt + nrva_off) < 2)
        return PIH_NONE;
    pos = rd32(d + opt + dd_off + 8); /* DataDirectory[1]: IMPORT */
    if (pos == 0)
        return PIH_NONE;
    if (im.nsec > PIH_MAX_SECTIONS)
        return PIH_E_TOO_LARGE;
    im.sec = opt + optsz;
    if (im.sec + 40u * (uint64_t)im.nsec > len)
        return PIH_NONE;

    for (;;) {
        int64_t off = map_rva(&im, pos, 20, NULL);
        uint64_t oft, ft, table, k;
        uint32_t name_rva, dlen, stem, i;
        const uint8_t *dll = NULL, *desc;
        uint8_t dll_low[PIH_MAX_NAME];
        int nlen, any = 0;
        if (off < 0)
            break;
        desc = d + off;
        for (i = 0; i < 20 && desc[i] == 0; i++)
            ;
        if (i == 20)
            break; /* the all-zero descriptor ends the table */
        if (++examined > PIH_MAX_DLLS)
            return PIH_E_TOO_LARGE;
        pos += 20;
        oft = rd32(desc);
        name_rva = rd32(desc + 12);
        ft = rd32(desc + 16);

        /* The DLL name: NUL-terminated valid file-name characters, else "*invalid*"; an empty
         * name drops the descriptor. */
        nlen = read_name(&im, name_rva, &dll);
        if (nlen == 0)
            continue;
        if (nlen > 0) {
            for (i = 0; i < (uint32_t)nlen && dll_char(dll[i]); i++)
                ;
            if (i != (uint32_t)nlen)
                nlen = -1;
        }
        if (nlen < 0) {
            dll = invalid;
            nlen = 9;
        }
        dlen = (uint32_t)nlen;
        for (i = 0; i < dlen; i++)
            dll_low[i] = lower(dll[i]);
        /* lib: without the last extension when it is dll, ocx or sys */
        stem = dlen;
        for (i = dlen; i > 0; i--) {
            if (dll_low[i - 1] == '.') {
                const uint8_t *ext = dll_low + i;
                uint32_t elen = dlen - i;
                if (elen == 3 && (memcmp(ext, "dll", 3) == 0 || memcmp(ext, "ocx", 3) == 0 ||
                                  memcmp(ext, "sys", 3) == 0))
                    stem = i - 1;
                break;
            }
        }

        /* The lookup table (OriginalFirstThunk) when it has an entry, else the address table. */
        table = ft;
        if (oft) {
            int64_t t0 = map_rva(&im, oft, tsz, NULL);
            if (t0 >= 0 && (tsz == 4 ? rd32(d + t0) : rd64(d + t0)) != 0)
                table = oft;
        }
        for (k = 0;; k++) {
            int64_t to = map_rva(&im, table + k * tsz, tsz, NULL);
            uint64_t v;
            if (table == 0 || to < 0)
                break;
            v = tsz == 4 ? rd32(d + to) : rd64(d + to);
            if (v == 0)
                break;
            if (++thunks > PIH_MAX_SYMBOLS)
                return PIH_E_TOO_LARGE;
            if (v & flag) {
                uint32_t ord = (uint32_t)(v & 0xFFFFu);
                const char *nm;
                char num[16];
                if (ord == 0)
                    continue; /* an ordinal 0 is no import */
                if (!first)
                    put(o, ",", 1, 0);
                put(o, dll_low, stem, 0);
                put(o, ".", 1, 0);
                nm = ordinal_name(dll_low, dlen, ord);
                if (nm) {
                    put(o, nm, (uint32_t)strlen(nm), 1);
                } else {
                    memcpy(num, "ord", 3);
                    put(o, num, 3 + put_uint(num + 3, ord), 0);
                }
            } else {
                uint64_t hint = v & mask;
                const uint8_t *fn = NULL;
                int flen;
                if (hint > 0xFFFFFFFFull - 2u)
                    continue;
                flen = read_name(&im, hint + 2u, &fn);
                if (flen <= 0)
                    continue;
                for (i = 0; i < (uint32_t)flen && func_char(fn[i]); i++)
                    ;
                if (i != (uint32_t)flen)
                    continue; /* not a function name: skipped */
                if (!first)
                    put(o, ",", 1, 0);
                put(o, dll_low, stem, 0);
                put(o, ".", 1, 0);
                put(o, fn, (uint32_t)flen, 1);
            }
            if (o->over)
                return PIH_E_TOO_LARGE;
            r->symbols++;
            any = 1;
            first = 0;
        }
        if (any)
            r->dlls++;
    }
    if (r->symbols == 0)
        return PIH_NONE;
    return PIH_OK;
}

int pih_imphash_text(const uint8_t *data, size_t len, char *out, uint32_t cap, pih_result *r)
{
    pih_out o;
    int rc;
    if (!r)
        return PIH_E_ARG;
    memset(r, 0, sizeof *r);
    if ((!data && len) || !out) {
        r->status = PIH_E_ARG;
        return r->status;
    }
    o.p = out;
    o.cap = cap;
    o.n = 0;
    o.over = 0;
    rc = data ? imphash(data, len, &o, r) : PIH_NONE;
    if (rc == PIH_OK)
        r->out_len = o.n;
    else
        r->dlls = r->symbols = 0;
    r->status = rc;
    return rc;
}
