/* pe_version: read the VERSIONINFO strings of a PE image (OriginalFilename, ...).
 *
 * Static parse of the on-disk image (never LoadLibrary/GetFileVersionInfo: those
 * substitute the MUI file's strings).  Only the ranges needed are read: DOS and NT
 * headers, the section table, the resource directory path RT_VERSION/1/<lang>, and
 * the version blob.  Every read is bounds-checked; the walk has fixed depth and
 * node caps.  The pure-Python twin sensor/enrich/_pe_py.py defines the same
 * behaviour step by step; docs/pe.md is the specification of both.
 *
 * Portable C99: on Windows the file layer uses CreateFileW/ReadFile, elsewhere
 * open/pread.  Only regular files are read: POSIX opens with O_NONBLOCK (a FIFO
 * without a writer would block the open) and checks fstat before any read; Windows
 * checks GetFileType.  No allocation except for section tables of more than 96
 * entries.
 */
#ifndef PE_VERSION_H
#define PE_VERSION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version blob is a tree whose root wLength is a WORD: 64 KiB holds any of it. */
#define PEV_BLOB_MAX 65536u

/* Caps (docs/pe.md "Limits"). */
#define PEV_MAX_DIR_ENTRIES 4096u /* entries in one resource directory */
#define PEV_MAX_NODES 8192u       /* version-tree nodes visited in total */
#define PEV_MAX_TABLES 64u        /* StringTables considered */
#define PEV_MAX_TRANSLATIONS 32u  /* Translation pairs considered */

/* Result codes; the names (without PEV_) are the public error codes. */
enum pev_status {
    PEV_OK = 0,
    PEV_E_IO = 1,           /* cannot open or read the file */
    PEV_E_NOT_MZ = 2,       /* no MZ signature */
    PEV_E_TRUNCATED = 3,    /* a structure runs past the end of the file */
    PEV_E_NOT_PE = 4,       /* no PE\0\0 signature at e_lfanew */
    PEV_E_BAD_OPTIONAL = 5, /* optional header magic is neither PE32 nor PE32+ */
    PEV_E_NO_RESOURCES = 6, /* no resource data directory */
    PEV_E_RVA = 7,          /* an RVA is not backed by section data in the file */
    PEV_E_RESDIR = 8,       /* malformed resource directory */
    PEV_E_NO_VERSION = 9,   /* no RT_VERSION / ID 1 resource */
    PEV_E_PAST_EOF = 10,    /* the version resource's declared size runs past EOF */
    PEV_E_BAD_VERSION = 11, /* the version blob is malformed */
    PEV_E_ARG = 12,         /* bad argument */
    PEV_E_NOT_REGULAR = 13  /* not a regular file (folder, FIFO, device, pipe): never read */
};

/* Version strings, in this order in pev_result.str_off / str_len. */
enum pev_field {
    PEV_ORIGINAL_FILENAME = 0,
    PEV_INTERNAL_NAME,
    PEV_COMPANY_NAME,
    PEV_PRODUCT_NAME,
    PEV_FILE_DESCRIPTION,
    PEV_FILE_VERSION,
    PEV_PRODUCT_VERSION,
    PEV_NFIELDS
};

/* What identifies the file a result came from: when any field differs, the file may
 * have changed since.  POSIX: size, st_mtim, st_ctim (the inode change time, which no
 * user call can set back), st_ino, st_dev; change 0.  Windows: size, last-write time,
 * ChangeTime (FILE_BASIC_INFO; SetFileTime cannot set it), file index, volume serial
 * number, and in `change` the file's USN in the volume's change journal (0 without a
 * journal), which nothing can set back. */
typedef struct pev_ident {
    uint64_t size;
    int64_t mtime_ns;
    int64_t ctime_ns;
    uint64_t ino;
    uint64_t dev;
    uint64_t change;
} pev_ident;

typedef struct pev_result {
    int32_t status;       /* enum pev_status */
    int32_t sys_error;    /* errno / GetLastError() for PEV_E_IO, else 0 */
    uint64_t file_size;   /* size of the file or buffer parsed */
    int32_t has_fixed;    /* VS_FIXEDFILEINFO present with its signature */
    uint32_t file_version_ms, file_version_ls;
    uint32_t product_version_ms, product_version_ls;
    uint32_t blob_len;    /* bytes of the version blob copied into the caller's buffer */
    /* Value of field i: UTF-16LE code units at blob + str_off[i], str_len[i] units;
     * str_len[i] == 0 means absent (after stripping). */
    uint32_t str_off[PEV_NFIELDS];
    uint32_t str_len[PEV_NFIELDS];
    /* Filled by pev_file_text / pev_buffer_text only: bytes written to `text`. */
    uint32_t text_len;
    pev_ident ident;      /* of the opened file (path mode), else zero */
} pev_result;

/* Capacity of the `text` buffer of pev_file_text / pev_buffer_text.  The values come
 * from distinct nodes of one blob (at most PEV_BLOB_MAX / 2 UTF-16 units in all, each
 * at most 3 UTF-8 bytes), plus two "a.b.c.d" versions and the separators. */
#define PEV_TEXT_MAX (3u * (PEV_BLOB_MAX / 2u) + 64u)

/* Parse the file at `path` (UTF-8).  `blob` must hold PEV_BLOB_MAX bytes.
 * Returns r->status. */
int pev_parse_file(const char *path, pev_result *r, uint8_t *blob);

/* Parse an in-memory image (the whole file, or its first `len` bytes). */
int pev_parse_buffer(const uint8_t *data, size_t len, pev_result *r, uint8_t *blob);

/* Parse like pev_parse_file / pev_parse_buffer, then, on success, write the nine
 * result values as UTF-8 into `text` (PEV_TEXT_MAX bytes), separated by one NUL each,
 * in this order: the PEV_NFIELDS strings, then the file and product versions of
 * VS_FIXEDFILEINFO as "a.b.c.d".  An absent value is written empty (a present string
 * is never empty, and no value contains NUL).  UTF-16 is decoded as Python's
 * utf-16-le codec with errors="replace" does: an unpaired surrogate becomes U+FFFD.
 * r->text_len is the number of bytes written (0 on failure). */
int pev_file_text(const char *path, pev_result *r, uint8_t *blob, uint8_t *text);
int pev_buffer_text(const uint8_t *data, size_t len, pev_result *r, uint8_t *blob, uint8_t *text);

/* 1 when `path` still has identity `id`, 0 when it differs, -(errno / GetLastError())
 * when it cannot be checked.  The cache's validity check: one stat (on Windows, a handle
 * opened for attributes only), never a read. */
int pev_same_ident(const char *path, const pev_ident *id);

/* Static description of a status code. */
const char *pev_strerror(int status);

#ifdef __cplusplus
}
#endif
#endif /* PE_VERSION_H */
