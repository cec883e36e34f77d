/* libFuzzer harness for native/pe_version.c (clang, ASan, UBSan): fuzz/run.sh builds and runs it.
 * Besides memory errors it checks the result invariants the Python layer relies on. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pe_version.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pev_result r;
    /* A heap block of exactly PEV_BLOB_MAX bytes: ASan reports any write past it. */
    uint8_t *blob = (uint8_t *)malloc(PEV_BLOB_MAX);
    int i, st;
    if (!blob)
        return 0;
    st = pev_parse_buffer(data, size, &r, blob);
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
    } else {
        for (i = 0; i < PEV_NFIELDS; i++)
            if (r.str_len[i])
                __builtin_trap();
    }
    free(blob);
    return 0;
}
