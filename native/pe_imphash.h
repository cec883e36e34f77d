/* pe_imphash: the IMPHASH input of an in-memory PE image.
 *
 * IMPHASH (Mandiant, 2014) is the MD5 of the image's imported symbols, in import-table order,
 * each written "library.function", lower case, joined with ",".  This reader produces that
 * text; the caller hashes it (hashlib).  The pure-Python twin sensor/enrich/_imphash_py.py
 * defines the same behaviour step by step; docs/pe.md ("IMPHASH") is the specification.
 *
 * Every read is bounds-checked against the buffer, and the work is capped: at most
 * PIH_MAX_SECTIONS sections (the Windows loader's limit), PIH_MAX_DLLS descriptors and
 * PIH_MAX_SYMBOLS symbols, names of at most PIH_MAX_NAME bytes, and at most `cap` bytes of
 * output.  A table beyond a cap is refused (PIH_E_TOO_LARGE), never truncated: a partial
 * list would hash to a value that names another import set.
 */
#ifndef PE_IMPHASH_H
#define PE_IMPHASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PIH_MAX_SECTIONS 96u
#define PIH_MAX_DLLS 4096u
#define PIH_MAX_SYMBOLS 16384u
#define PIH_MAX_NAME 512u

enum pih_status {
    PIH_OK = 0,          /* `out` holds the text (never empty) */
    PIH_NONE = 1,        /* not a PE image, or no import with a symbol: IMPHASH is all zeros */
    PIH_E_TOO_LARGE = 2, /* more sections, descriptors, symbols or text than the caps */
    PIH_E_ARG = 3        /* bad argument */
};

typedef struct pih_result {
    int32_t status;
    uint32_t dlls;    /* descriptors that contributed */
    uint32_t symbols; /* symbols written */
    uint32_t out_len; /* bytes written to `out` (no NUL) */
} pih_result;

/* Write the IMPHASH text of `data` (`len` bytes, the whole file) into `out` (`cap` bytes).
 * Returns r->status. */
int pih_imphash_text(const uint8_t *data, size_t len, char *out, uint32_t cap, pih_result *r);

#ifdef __cplusplus
}
#endif
#endif /* PE_IMPHASH_H */
