/* libFuzzer harness for native/pe_version.c and native/pe_imphash.c (clang, ASan, UBSan):
 * fuzz/run.sh builds and runs it.
 * Besides memory errors it checks the result invariants the Python layer relies on. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pe_imphash.h"
#include "pe_version.h"

/* Well-formed UTF-8 with exactly 8 NULs (the separators of the nine values). */
static int text_ok(const uint8_t *t, uint32_t n)
{
    uint32_t i = 0, nuls = 0, k, cp;
    while (i < n) {
        uint8_t c = t[i];
        if (c == 0) {
            nuls++;
            i++;
            continue;
        }
        k = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 9;
        if (k == 9 || i + k >= n + (k ? 0 : 1))
            return 0;
        cp = k == 0 ? c : k == 1 ? (c & 0x1Fu) : k == 2 ? (c & 0x0Fu) : (c & 0x07u);
        for (i++; k; k--, i++) {
            if ((t[i] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (t[i] & 0x3Fu);
        }
        if (cp >= 0xD800u && cp <= 0xDFFFu) /* surrogates never reach the text */
            return 0;
    }
    return nuls == 8;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pev_result r;
    /* Heap blocks of exactly PEV_BLOB_MAX / PEV_TEXT_MAX bytes: ASan reports any write past them. */
    uint8_t *blob = (uint8_t *)malloc(PEV_BLOB_MAX);
    uint8_t *text = (uint8_t *)malloc(PEV_TEXT_MAX);
    int i, st;
    if (!blob || !text) {
        free(blob);
        free(text);
        return 0;
    }
    st = pev_buffer_text(data, size, &r, blob, text);
    if (st != r.status || st < 0 || st > PEV_E_ARG || r.file_size != size)
        __builtin_trap();
    if (st == PEV_OK) {
        if (r.blob_len < 6 || r.blob_len > PEV_BLOB_MAX)
            __builtin_trap();
        for (i = 0; i < PEV_NFIELDS; i++) {
            /* Every reported value lies inside the copied blob. */
            if (r.str_len[i] && (uint64_t)r.str_off[i] + 2u * (uint64_t)r.str_len[i] > r.blob_len)
                __builtin_trap();
        }
        if (r.text_len > PEV_TEXT_MAX || !text_ok(text, r.text_len))
            __builtin_trap();
    } else {
        for (i = 0; i < PEV_NFIELDS; i++)
            if (r.str_len[i])
                __builtin_trap();
        if (r.text_len)
            __builtin_trap();
    }
    free(blob);
    free(text);
    {
        /* IMPHASH text: a heap block of exactly `cap` bytes (ASan reports a write past it);
         * the text is "lib.func" entries of printable ASCII joined by ','. */
        uint32_t cap = 4096, k;
        char *out = (char *)malloc(cap);
        pih_result h;
        if (!out)
            return 0;
        st = pih_imphash_text(data, size, out, cap, &h);
        if (st != h.status || st < PIH_OK || st > PIH_E_ARG)
            __builtin_trap();
        if (st == PIH_OK) {
            if (h.out_len == 0 || h.out_len > cap || h.symbols == 0 || h.dlls == 0 || h.dlls > h.symbols)
                __builtin_trap();
            for (k = 0; k < h.out_len; k++)
                if ((uint8_t)out[k] < 0x20 || (uint8_t)out[k] > 0x7E)
                    __builtin_trap();
        } else if (h.out_len || h.symbols || h.dlls) {
            __builtin_trap();
        }
        free(out);
    }
    return 0;
}
