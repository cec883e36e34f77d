/* pe_version.c: static VERSIONINFO reader.  Specification: docs/pe.md; facts:
 * PE/COFF resource directory and VS_VERSIONINFO layouts (reference notes §3).
 * The pure-Python twin (sensor/enrich/_pe_py.py) mirrors every step and check
 * below in the same order, so both return the same result or the same error. */
/* pread and st_mtim are POSIX.1-2008; ask for them under a strict -std=c99. */
#if !defined(_WIN32) && !defined(__APPLE__) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "pe_version.h"

#include <string.h>

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#include <winioctl.h>
#include <wchar.h>
#else
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include <stdlib.h>

/* ------------------------------------------------------------------ */
/* Portable file layer: open, size + mtime, read at an offset, close. */

#define PEV_WINDOW 4096u

typedef struct pev_src {
    const uint8_t *mem; /* buffer mode when non-NULL */
    uint64_t size;
    int is_file;
    int sys_error;
#ifdef _WIN32
    HANDLE h;
#else
    int fd;
#endif
    /* Two read windows: the header page and the resource-directory page serve
     * almost every small read with one system call each. */
    uint8_t win[2][PEV_WINDOW];
    uint64_t win_off[2];
    uint32_t win_len[2];
    int win_next;
} pev_src;

#ifdef _WIN32
/* GetLastError(), never 0 (a failure must not read as success). */
static int last_error(void)
{
    DWORD e = GetLastError();
    return e ? (int)e : (int)ERROR_NOT_ENOUGH_MEMORY;
}

/* Strict UTF-8 -> UTF-16: an invalid sequence (e.g. an encoded lone surrogate) fails
 * instead of becoming U+FFFD, which could name a different file. */
static wchar_t *utf8_to_wide(const char *s)
{
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
    wchar_t *w;
    if (n <= 0)
        return NULL;
    w = (wchar_t *)malloc((size_t)n * sizeof(wchar_t));
    if (!w) {
        SetLastError(ERROR_NOT_ENOUGH_MEMORY);
        return NULL;
    }
    if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w, n) != n) {
        free(w);
        return NULL;
    }
    return w;
}

/* FILETIME (100 ns since 1601) -> ns since 1970, as Python's st_mtime_ns; saturated
 * (SetFileTime accepts values whose ns would not fit in 64 bits). */
static int64_t filetime_ns(FILETIME ft)
{
    const int64_t max100 = INT64_MAX / 100;
    int64_t t = (int64_t)(((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime);
    if (t < 0)
        return INT64_MAX;
    t -= 116444736000000000LL;
    if (t > max100)
        return INT64_MAX;
    if (t < -max100)
        return INT64_MIN;
    return t * 100;
}

/* The file's update sequence number in its volume's change journal: every change the file
 * system records for the file (data, size, times set by SetFileTime or SetFileInformation-
 * ByHandle, renames...) moves it, and no caller can set it back.  0 when the volume keeps no
 * journal or the query fails.  Queried through an attributes-only handle (`h`), in the parse
 * and in the validity check alike, so both see the same value for the same file. */
static uint64_t handle_usn(HANDLE h)
{
    union {
        uint8_t b[1024];
        uint64_t align;
    } out;
    struct {
        WORD min_major, max_major;
    } in = {2, 3};
    DWORD got = 0;
    WORD major;
    int64_t usn;
    if (!DeviceIoControl(h, FSCTL_READ_FILE_USN_DATA, &in, sizeof in, out.b, sizeof out.b, &got, NULL))
        return 0;
    if (got < 8)
        return 0;
    memcpy(&major, out.b + 4, 2);
    /* USN_RECORD_V2: 8-byte file references, Usn at 24; V3: 16-byte references, Usn at 40. */
    if (major == 2 && got >= 32)
        memcpy(&usn, out.b + 24, 8);
    else if (major == 3 && got >= 48)
        memcpy(&usn, out.b + 40, 8);
    else
        return 0;
    return usn > 0 ? (uint64_t)usn : 0;
}

/* Identity from an open handle: size, last-write time, ChangeTime, the file's volume serial
 * number and file index (a rename over the path gives a new index), and the USN (from `ah`,
 * an attributes-only handle to the same file, or none).  ChangeTime, not the creation time:
 * SetFileTime sets the creation and last-write times but never ChangeTime, which the file
 * system moves on every write, so an in-place overwrite whose times were put back still
 * shows. */
static int handle_ident(HANDLE h, HANDLE ah, pev_ident *id)
{
    BY_HANDLE_FILE_INFORMATION info;
    FILE_BASIC_INFO basic;
    FILETIME change;
    if (!GetFileInformationByHandle(h, &info))
        return last_error();
    if (!GetFileInformationByHandleEx(h, FileBasicInfo, &basic, sizeof basic))
        return last_error();
    id->size = ((uint64_t)info.nFileSizeHigh << 32) | info.nFileSizeLow;
    id->mtime_ns = filetime_ns(info.ftLastWriteTime);
    change.dwLowDateTime = (DWORD)((uint64_t)basic.ChangeTime.QuadPart & 0xFFFFFFFFu);
    change.dwHighDateTime = (DWORD)((uint64_t)basic.ChangeTime.QuadPart >> 32);
    id->ctime_ns = filetime_ns(change);
    id->ino = ((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow;
    id->dev = info.dwVolumeSerialNumber;
    id->change = ah != INVALID_HANDLE_VALUE ? handle_usn(ah) : 0;
    return 0;
}

/* Is this a 32-bit process on 64-bit Windows (whose System32 is redirected to SysWOW64)?
 * Asked once; -1 until then. */
static volatile LONG pev_wow64 = -1;

static int is_wow64(void)
{
    typedef BOOL(WINAPI * wow64_fn)(HANDLE, PBOOL);
    LONG k = pev_wow64;
    if (k < 0) {
        BOOL w = FALSE;
        HMODULE k32 = GetModuleHandleW(L"kernel32.dll");
        FARPROC f = k32 ? GetProcAddress(k32, "IsWow64Process") : NULL;
        wow64_fn fn;
        memcpy(&fn, &f, sizeof fn);
        if (!fn || !fn(GetCurrentProcess(), &w))
            w = FALSE;
        k = w ? 1 : 0;
        pev_wow64 = k;
    }
    return (int)k;
}

static int starts_ci(const wchar_t *s, const wchar_t *prefix)
{
    size_t n = wcslen(prefix);
    return wcslen(s) >= n && CompareStringOrdinal(s, (int)n, prefix, (int)n, TRUE) == CSTR_EQUAL;
}

/* The path as CreateFileW must be given it.  Specification (docs/pe.md, "Windows paths"); its
 * twin is sensor.enrich.pe.windows_open_path:
 *   \\?\... and \\.\...   unchanged (already literal);
 *   \??\X          \\?\X (the object manager's DOS-device prefix, the same thing);
 *   \Device\...    \\?\GLOBALROOT\Device\... (a volume without a drive letter, a shadow
 *                  copy: Win32 would read it as a folder of the current drive);
 *   otherwise      the full path (GetFullPathNameW), then \\?\UNC\server\... for UNC and
 *                  \\?\X:\... for drive paths, so 260 characters and more open without
 *                  LongPathsEnabled; a device name (NUL, CON) stays \\.\NUL and is refused
 *                  later as not a disk file.
 * In a WOW64 process, <Windows>\System32\ becomes <Windows>\Sysnative\ so the native file
 * is read, not its SysWOW64 namesake.  Returns a malloc'd string, or NULL with the last error
 * set. */
static wchar_t *win_open_path(const char *path)
{
    wchar_t *w = utf8_to_wide(path), *full = NULL, *out = NULL;
    const wchar_t *prefix = L"", *rest;
    DWORD n;
    size_t len;
    if (!w)
        return NULL;
    if (starts_ci(w, L"\\\\?\\") || starts_ci(w, L"\\\\.\\"))
        return w;
    if (starts_ci(w, L"\\??\\")) {
        prefix = L"\\\\?\\";
        rest = w + 4;
    } else if (starts_ci(w, L"\\Device\\")) {
        prefix = L"\\\\?\\GLOBALROOT";
        rest = w;
    } else {
        n = GetFullPathNameW(w, 0, NULL, NULL);
        if (n == 0 || n > 32768) {
            if (n)
                SetLastError(ERROR_FILENAME_EXCED_RANGE);
            free(w);
            return NULL;
        }
        full = (wchar_t *)malloc((size_t)n * sizeof(wchar_t));
        if (!full || GetFullPathNameW(w, n, full, NULL) >= n) {
            free(full);
            free(w);
            SetLastError(ERROR_NOT_ENOUGH_MEMORY);
            return NULL;
        }
        free(w);
        w = full;
        if (starts_ci(w, L"\\\\?\\") || starts_ci(w, L"\\\\.\\"))
            return w;
        if (w[0] == L'\\' && w[1] == L'\\') {
            prefix = L"\\\\?\\UNC\\";
            rest = w + 2;
        } else {
            prefix = L"\\\\?\\";
            rest = w;
        }
    }
    len = wcslen(prefix) + wcslen(rest) + 16;
    out = (wchar_t *)malloc(len * sizeof(wchar_t));
    if (!out) {
        free(w);
        SetLastError(ERROR_NOT_ENOUGH_MEMORY);
        return NULL;
    }
    wcscpy(out, prefix);
    wcscat(out, rest);
    free(w);
    if (is_wow64()) {
        wchar_t windir[MAX_PATH + 16];
        UINT k = GetSystemWindowsDirectoryW(windir, MAX_PATH);
        if (k > 0 && k < MAX_PATH) {
            wchar_t sys32[MAX_PATH + 32];
            size_t head = 4; /* \\?\ */
            wcscpy(sys32, windir);
            if (sys32[wcslen(sys32) - 1] != L'\\')
                wcscat(sys32, L"\\");
            wcscat(sys32, L"System32\\");
            if (wcsncmp(out, L"\\\\?\\", 4) == 0 && starts_ci(out + head, sys32)) {
                /* same length: "System32" and "Sysnative" differ by one; rebuild */
                size_t at = head + wcslen(sys32) - wcslen(L"System32\\");
                wchar_t *alt = (wchar_t *)malloc((wcslen(out) + 8) * sizeof(wchar_t));
                if (alt) {
                    wcsncpy(alt, out, at);
                    alt[at] = 0;
                    wcscat(alt, L"Sysnative\\");
                    wcscat(alt, out + at + wcslen(L"System32\\"));
                    free(out);
                    out = alt;
                }
            }
        }
    }
    return out;
}

#define PEV_SHARE_ALL (FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)

static int src_open(pev_src *s, const char *path, pev_ident *id)
{
    int err;
    HANDLE ah;
    wchar_t *w = win_open_path(path);
    if (!w) {
        s->sys_error = last_error();
        return PEV_E_IO;
    }
    /* Share read|write|delete: the image may be running or about to be deleted. */
    s->h = CreateFileW(w, GENERIC_READ, PEV_SHARE_ALL, NULL, OPEN_EXISTING,
                       FILE_ATTRIBUTE_NORMAL, NULL);
    free(w);
    if (s->h == INVALID_HANDLE_VALUE) {
        s->sys_error = last_error();
        return PEV_E_IO;
    }
    /* A pipe or character device would block or never end: never read one. */
    if (GetFileType(s->h) != FILE_TYPE_DISK) {
        s->sys_error = 0;
        CloseHandle(s->h);
        return PEV_E_NOT_REGULAR;
    }
    /* The same file again, for attributes only: the USN is read as the check reads it. */
    ah = ReOpenFile(s->h, FILE_READ_ATTRIBUTES, PEV_SHARE_ALL, 0);
    err = handle_ident(s->h, ah, id);
    if (ah != INVALID_HANDLE_VALUE)
        CloseHandle(ah);
    if (err) {
        s->sys_error = err;
        CloseHandle(s->h);
        return PEV_E_IO;
    }
    s->size = id->size;
    s->is_file = 1;
    return 0;
}

static int src_raw_read(pev_src *s, uint64_t off, uint8_t *dst, uint32_t n)
{
    while (n > 0) {
        OVERLAPPED ov;
        DWORD got = 0;
        memset(&ov, 0, sizeof ov);
        ov.Offset = (DWORD)(off & 0xFFFFFFFFu);
        ov.OffsetHigh = (DWORD)(off >> 32);
        if (!ReadFile(s->h, dst, n, &got, &ov)) {
            s->sys_error = (int)GetLastError();
            return -1;
        }
        if (got == 0) { /* the file shrank under us */
            s->sys_error = (int)ERROR_HANDLE_EOF;
            return -1;
        }
        off += got;
        dst += got;
        n -= got;
    }
    return 0;
}

static void src_close(pev_src *s)
{
    if (s->is_file)
        CloseHandle(s->h);
}

static int stat_path_ident(const char *path, pev_ident *id)
{
    /* Through a handle opened for attributes only, like the parse's own handle (so a
     * symlink resolves the same way) and like os.stat: GetFileAttributesExW has no file
     * index. */
    HANDLE h;
    int err;
    wchar_t *w;
    if (!path || !id)
        return ERROR_INVALID_PARAMETER;
    w = win_open_path(path);
    if (!w)
        return last_error();
    h = CreateFileW(w, FILE_READ_ATTRIBUTES, PEV_SHARE_ALL, NULL, OPEN_EXISTING,
                    FILE_FLAG_BACKUP_SEMANTICS, NULL);
    free(w);
    if (h == INVALID_HANDLE_VALUE)
        return last_error();
    err = handle_ident(h, h, id);
    CloseHandle(h);
    return err;
}

#else /* POSIX */

#if defined(__APPLE__)
#define PEV_MTIM st_mtimespec
#define PEV_CTIM st_ctimespec
#else
#define PEV_MTIM st_mtim
#define PEV_CTIM st_ctim
#endif

static int64_t ts_ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void stat_ident(const struct stat *st, pev_ident *id)
{
    id->size = (uint64_t)st->st_size;
    id->mtime_ns = ts_ns(st->PEV_MTIM);
    id->ctime_ns = ts_ns(st->PEV_CTIM);
    id->ino = (uint64_t)st->st_ino;
    id->dev = (uint64_t)st->st_dev;
}

/* 0, PEV_E_IO (s->sys_error set) or PEV_E_NOT_REGULAR. */
static int src_open(pev_src *s, const char *path, pev_ident *id)
{
    struct stat st;
    /* O_NONBLOCK: opening a FIFO that has no writer would otherwise block forever (and a
     * terminal or device open may too).  It changes nothing for a regular file's pread. */
    int flags = O_RDONLY | O_NONBLOCK;
#ifdef O_CLOEXEC
    flags |= O_CLOEXEC;
#endif
#ifdef O_NOCTTY
    flags |= O_NOCTTY;
#endif
    do {
        s->fd = open(path, flags);
    } while (s->fd < 0 && errno == EINTR);
    if (s->fd < 0) {
        s->sys_error = errno;
        return PEV_E_IO;
    }
    if (fstat(s->fd, &st) != 0) {
        s->sys_error = errno;
        close(s->fd);
        return PEV_E_IO;
    }
    /* The identity first: a refusal is cached against it like any other parse failure. */
    stat_ident(&st, id);
    if (!S_ISREG(st.st_mode)) { /* a folder, FIFO, socket or device: never read */
        close(s->fd);
        return PEV_E_NOT_REGULAR;
    }
    s->size = (uint64_t)st.st_size;
    s->is_file = 1;
    return 0;
}

static int src_raw_read(pev_src *s, uint64_t off, uint8_t *dst, uint32_t n)
{
    while (n > 0) {
        ssize_t got = pread(s->fd, dst, n, (off_t)off);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            s->sys_error = errno;
            return -1;
        }
        if (got == 0) { /* the file shrank under us */
            s->sys_error = EIO;
            return -1;
        }
        off += (uint64_t)got;
        dst += got;
        n -= (uint32_t)got;
    }
    return 0;
}

static void src_close(pev_src *s)
{
    if (s->is_file)
        close(s->fd);
}

static int stat_path_ident(const char *path, pev_ident *id)
{
    struct stat st;
    if (!path || !id)
        return EINVAL;
    if (stat(path, &st) != 0)
        return errno ? errno : EIO;
    stat_ident(&st, id);
    return 0;
}
#endif

int pev_same_ident(const char *path, const pev_ident *id)
{
    pev_ident now;
    int err;
    if (!id)
        return -1;
    memset(&now, 0, sizeof now);
    err = stat_path_ident(path, &now);
    if (err)
        return err > 0 ? -err : -1;
    return now.size == id->size && now.mtime_ns == id->mtime_ns && now.ctime_ns == id->ctime_ns &&
           now.ino == id->ino && now.dev == id->dev && now.change == id->change;
}

/* Read n bytes at off; the caller has checked off + n <= s->size. */
static int rd(pev_src *s, uint64_t off, void *dst, uint32_t n)
{
    int i;
    if (s->mem) {
        memcpy(dst, s->mem + off, n);
        return 0;
    }
    if (n > PEV_WINDOW)
        return src_raw_read(s, off, (uint8_t *)dst, n);
    for (i = 0; i < 2; i++) {
        if (s->win_len[i] && off >= s->win_off[i] &&
            off + n <= s->win_off[i] + s->win_len[i]) {
            memcpy(dst, s->win[i] + (off - s->win_off[i]), n);
            return 0;
        }
    }
    i = s->win_next;
    s->win_next ^= 1;
    {
        uint64_t avail = s->size - off;
        uint32_t len = avail < PEV_WINDOW ? (uint32_t)avail : PEV_WINDOW;
        s->win_len[i] = 0;
        if (src_raw_read(s, off, s->win[i], len) != 0)
            return -1;
        s->win_off[i] = off;
        s->win_len[i] = len;
    }
    memcpy(dst, s->win[i], n);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Little-endian helpers and the parse. */

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint32_t align4(uint32_t v) { return (v + 3u) & ~3u; }

#define RD(off, dst, n)                                                                            \
    do {                                                                                           \
        if (rd(s, (off), (dst), (n)) != 0)                                                         \
            return PEV_E_IO;                                                                       \
    } while (0)

typedef struct pev_ctx {
    pev_src *s;
    uint64_t sec;   /* file offset of the section table */
    uint32_t nsec;
    uint64_t rbase; /* file offset of the resource root directory */
    uint64_t rlim;  /* end of the resource section's data in the file */
} pev_ctx;

/* Map an RVA to a file offset: the first section whose [VA, VA + (VirtualSize or
 * SizeOfRawData)) holds it.  Returns the offset, the delta into the section and the
 * section's raw size; PEV_E_RVA when no section holds it. */
static int map_rva(pev_ctx *c, uint32_t rva, uint64_t *off, uint64_t *delta, uint64_t *raw)
{
    pev_src *s = c->s;
    uint32_t i;
    uint8_t h[16];
    for (i = 0; i < c->nsec; i++) {
        uint32_t vs, va, rs, ptr;
        uint64_t span;
        RD(c->sec + 40u * (uint64_t)i + 8u, h, 16);
        vs = le32(h);
        va = le32(h + 4);
        rs = le32(h + 8);
        ptr = le32(h + 12);
        span = vs ? vs : rs;
        if (rva >= va && (uint64_t)rva < (uint64_t)va + span) {
            *delta = rva - va;
            *off = (uint64_t)ptr + *delta;
            *raw = rs;
            return PEV_OK;
        }
    }
    return PEV_E_RVA;
}

/* A resource-directory structure at root-relative `rel` of `need` bytes must lie in
 * the resource section's file data. */
static int dir_check(pev_ctx *c, uint64_t rel, uint64_t need)
{
    uint64_t a = c->rbase + rel;
    if (a + need > c->rlim)
        return a + need > c->s->size ? PEV_E_TRUNCATED : PEV_E_RESDIR;
    return PEV_OK;
}

/* Read a directory header at root-relative `rel`: number of entries; bounds checked. */
static int dir_open(pev_ctx *c, uint32_t rel, uint32_t *n)
{
    pev_src *s = c->s;
    uint8_t h[16];
    int rc = dir_check(c, rel, 16);
    if (rc)
        return rc;
    RD(c->rbase + rel, h, 16);
    *n = (uint32_t)le16(h + 12) + le16(h + 14);
    if (*n > PEV_MAX_DIR_ENTRIES)
        return PEV_E_RESDIR;
    return dir_check(c, (uint64_t)rel + 16u, 8u * (uint64_t)*n);
}

/* Find the first ID entry `id` in directory `rel`; it must be a subdirectory. */
static int dir_find_subdir(pev_ctx *c, uint32_t rel, uint32_t id, uint32_t *sub)
{
    pev_src *s = c->s;
    uint32_t n, i;
    uint8_t e[8];
    int rc = dir_open(c, rel, &n);
    if (rc)
        return rc;
    for (i = 0; i < n; i++) {
        uint32_t name, otd;
        RD(c->rbase + rel + 16u + 8u * (uint64_t)i, e, 8);
        name = le32(e);
        otd = le32(e + 4);
        if (name & 0x80000000u) /* a named entry: RT_VERSION and ID 1 are IDs */
            continue;
        if (name == id) {
            if (!(otd & 0x80000000u))
                return PEV_E_RESDIR;
            *sub = otd & 0x7FFFFFFFu;
            return PEV_OK;
        }
    }
    return PEV_E_NO_VERSION;
}

/* Version-tree node (VS_VERSIONINFO, StringFileInfo, StringTable, String, Var). */
typedef struct node {
    uint32_t end, key, keylen, val, vbytes, kids;
} node;

#define NODE_OK 0
#define NODE_STOP (-1) /* no room for a header, or wLength < 6: end of the sibling list */
#define NODE_BAD (-2)  /* key not NUL-terminated inside the node: skip it */

static int node_at(const uint8_t *b, uint32_t pos, uint32_t limit, node *nd)
{
    uint32_t wlen, vlen, wtype, k;
    if (pos + 6u > limit)
        return NODE_STOP;
    wlen = le16(b + pos);
    if (wlen < 6u)
        return NODE_STOP;
    nd->end = pos + wlen < limit ? pos + wlen : limit;
    vlen = le16(b + pos + 2);
    wtype = le16(b + pos + 4);
    nd->key = pos + 6u;
    for (k = nd->key;; k += 2) {
        if (k + 2u > nd->end)
            return NODE_BAD;
        if (le16(b + k) == 0)
            break;
    }
    nd->keylen = (k - nd->key) / 2u;
    nd->val = align4(k + 2u);
    nd->vbytes = wtype ? 2u * vlen : vlen; /* text values count WCHARs, binary bytes */
    nd->kids = align4(nd->val + nd->vbytes);
    return NODE_OK;
}

static unsigned fold(unsigned u) { return (u >= 'A' && u <= 'Z') ? u + 32u : u; }

/* Case-insensitive (ASCII) comparison of a node key with a literal. */
static int key_is(const uint8_t *b, const node *nd, const char *lit)
{
    uint32_t i, n = (uint32_t)strlen(lit);
    if (nd->keylen != n)
        return 0;
    for (i = 0; i < n; i++)
        if (fold(le16(b + nd->key + 2u * i)) != fold((unsigned char)lit[i]))
            return 0;
    return 1;
}

/* A StringTable key "LLLLCCCC" (8 hex digits) as (lang << 16) | codepage. */
static int key_hex(const uint8_t *b, const node *nd, uint32_t *out)
{
    uint32_t i, v = 0;
    if (nd->keylen != 8u)
        return 0;
    for (i = 0; i < 8u; i++) {
        unsigned u = le16(b + nd->key + 2u * i), d;
        if (u >= '0' && u <= '9')
            d = u - '0';
        else if (u >= 'a' && u <= 'f')
            d = u - 'a' + 10u;
        else if (u >= 'A' && u <= 'F')
            d = u - 'A' + 10u;
        else
            return 0;
        v = (v << 4) | d;
    }
    *out = v;
    return 1;
}

static const char *const FIELD_KEYS[PEV_NFIELDS] = {
    "OriginalFilename", "InternalName",    "CompanyName",   "ProductName",
    "FileDescription",  "FileVersion",     "ProductVersion",
};

/* Walk the children of `parent`; `nodes` counts every header examined (cap). */
#define FOR_CHILDREN(b, parent, pos, rc, child, nodes)                                             \
    for ((pos) = (parent).kids;                                                                    \
         (pos) < (parent).end && (nodes) < PEV_MAX_NODES &&                                        \
         ((nodes)++, ((rc) = node_at((b), (pos), (parent).end, &(child))) != NODE_STOP);           \
         (pos) += align4(le16((b) + (pos))))

static void parse_blob(const uint8_t *b, uint32_t blen, const node *root, pev_result *r)
{
    uint32_t pos, nodes = 0, ntrans = 0, ntab = 0, i, j;
    int rc, have_sfi = 0, have_vfi = 0, chosen = -1;
    node ch, sfi, vfi;
    uint32_t trans[PEV_MAX_TRANSLATIONS];
    node tab[PEV_MAX_TABLES];
    uint32_t tab_id[PEV_MAX_TABLES];
    int tab_has_id[PEV_MAX_TABLES];
    int seen[PEV_NFIELDS];
    static const uint32_t fallback[3] = {0x040904B0u, 0x040904E4u, 0x04090000u};
    (void)blen;
    memset(&ch, 0, sizeof ch);
    memset(&sfi, 0, sizeof sfi);
    memset(&vfi, 0, sizeof vfi);

    /* VS_FIXEDFILEINFO: optional here (Windows rejects its absence; we keep the strings). */
    if (root->vbytes >= 52u && root->val + 52u <= root->end && le32(b + root->val) == 0xFEEF04BDu) {
        r->has_fixed = 1;
        r->file_version_ms = le32(b + root->val + 8);
        r->file_version_ls = le32(b + root->val + 12);
        r->product_version_ms = le32(b + root->val + 16);
        r->product_version_ls = le32(b + root->val + 20);
    }

    FOR_CHILDREN(b, *root, pos, rc, ch, nodes) {
        if (rc != NODE_OK)
            continue;
        if (!have_sfi && key_is(b, &ch, "StringFileInfo")) {
            sfi = ch;
            have_sfi = 1;
        } else if (!have_vfi && key_is(b, &ch, "VarFileInfo")) {
            vfi = ch;
            have_vfi = 1;
        }
        if (have_sfi && have_vfi)
            break;
    }

    if (have_vfi) {
        FOR_CHILDREN(b, vfi, pos, rc, ch, nodes) {
            if (rc == NODE_OK && key_is(b, &ch, "Translation")) {
                uint32_t avail = ch.val <= ch.end ? ch.end - ch.val : 0;
                if (ch.vbytes < avail)
                    avail = ch.vbytes;
                ntrans = avail / 4u;
                if (ntrans > PEV_MAX_TRANSLATIONS)
                    ntrans = PEV_MAX_TRANSLATIONS;
                for (i = 0; i < ntrans; i++) {
                    uint32_t d = le32(b + ch.val + 4u * i); /* LOWORD lang, HIWORD codepage */
                    trans[i] = ((d & 0xFFFFu) << 16) | (d >> 16);
                }
                break;
            }
        }
    }

    if (!have_sfi)
        return;
    FOR_CHILDREN(b, sfi, pos, rc, ch, nodes) {
        if (rc != NODE_OK)
            continue;
        tab[ntab] = ch;
        tab_has_id[ntab] = key_hex(b, &ch, &tab_id[ntab]);
        if (++ntab == PEV_MAX_TABLES)
            break;
    }

    /* StringTable preference: Translation order, en-US fallbacks, neutral, first. */
    for (i = 0; i < ntrans && chosen < 0; i++)
        for (j = 0; j < ntab && chosen < 0; j++)
            if (tab_has_id[j] && tab_id[j] == trans[i])
                chosen = (int)j;
    for (i = 0; i < 3u && chosen < 0; i++)
        for (j = 0; j < ntab && chosen < 0; j++)
            if (tab_has_id[j] && tab_id[j] == fallback[i])
                chosen = (int)j;
    for (j = 0; j < ntab && chosen < 0; j++)
        if (tab_has_id[j] && (tab_id[j] >> 16) == 0)
            chosen = (int)j;
    if (chosen < 0 && ntab > 0)
        chosen = 0;
    if (chosen < 0)
        return;

    memset(seen, 0, sizeof seen);
    FOR_CHILDREN(b, tab[chosen], pos, rc, ch, nodes) {
        int f;
        if (rc != NODE_OK)
            continue;
        for (f = 0; f < PEV_NFIELDS; f++) {
            uint32_t u, len;
            if (seen[f] || !key_is(b, &ch, FIELD_KEYS[f]))
                continue;
            seen[f] = 1;
            /* The value is NUL-terminated UTF-16 bounded by the node end; wValueLength
             * is only a hint (it is in bytes in some files, characters in others). */
            for (u = ch.val; u + 2u <= ch.end && le16(b + u) != 0; u += 2)
                ;
            len = u > ch.val ? (u - ch.val) / 2u : 0;
            while (len > 0 && le16(b + ch.val + 2u * (len - 1)) == 0x20)
                len--;
            if (len >= 4u) {
                const uint8_t *t = b + ch.val + 2u * (len - 4);
                if (le16(t) == '.' && fold(le16(t + 2)) == 'm' && fold(le16(t + 4)) == 'u' &&
                    fold(le16(t + 6)) == 'i')
                    len -= 4;
            }
            r->str_off[f] = ch.val;
            r->str_len[f] = len;
            break;
        }
    }
}

static int parse(pev_src *s, pev_result *r, uint8_t *blob)
{
    uint8_t h[64];
    uint64_t size = s->size, lfanew, opt, sec, off, delta, raw, eoff, edelta, eraw;
    uint32_t nsec, optsz, magic, dd_off, nrva_off, nrva, res_rva, res_size;
    uint32_t d1, d2, n, i, data_rel = 0, have0 = 0, have409 = 0, havefirst = 0;
    uint32_t rel0 = 0, rel409 = 0, relfirst = 0, drva, dsize, nread, wlen;
    pev_ctx c;
    node root;
    int rc;

    r->file_size = size;
    if (size < 2)
        return PEV_E_NOT_MZ;
    RD(0, h, size < 64 ? 2 : 64);
    if (h[0] != 'M' || h[1] != 'Z')
        return PEV_E_NOT_MZ;
    if (size < 64)
        return PEV_E_TRUNCATED;
    lfanew = le32(h + 0x3C);
    if (lfanew + 4 > size)
        return PEV_E_TRUNCATED;
    RD(lfanew, h, 4);
    if (memcmp(h, "PE\0\0", 4) != 0)
        return PEV_E_NOT_PE;
    if (lfanew + 24 > size)
        return PEV_E_TRUNCATED;
    RD(lfanew + 4, h, 20);
    nsec = le16(h + 2);
    optsz = le16(h + 16);
    opt = lfanew + 24;
    if (opt + 2 > size)
        return PEV_E_TRUNCATED;
    RD(opt, h, 2);
    magic = le16(h);
    if (magic == 0x10B) { /* PE32 */
        nrva_off = 92;
        dd_off = 96;
    } else if (magic == 0x20B) { /* PE32+ */
        nrva_off = 108;
        dd_off = 112;
    } else {
        return PEV_E_BAD_OPTIONAL;
    }
    if (optsz < dd_off + 24) /* no room for DataDirectory[2] (RESOURCE) */
        return PEV_E_NO_RESOURCES;
    if (opt + dd_off + 24 > size)
        return PEV_E_TRUNCATED;
    RD(opt + nrva_off, h, 4);
    nrva = le32(h);
    RD(opt + dd_off + 16, h, 8);
    res_rva = le32(h);
    res_size = le32(h + 4);
    if (nrva < 3 || res_rva == 0 || res_size == 0)
        return PEV_E_NO_RESOURCES;
    sec = opt + optsz;
    if (sec + 40u * (uint64_t)nsec > size)
        return PEV_E_TRUNCATED;

    c.s = s;
    c.sec = sec;
    c.nsec = nsec;
    rc = map_rva(&c, res_rva, &off, &delta, &raw);
    if (rc)
        return rc;
    if (delta + 16 > raw)
        return PEV_E_RVA;
    c.rbase = off;
    c.rlim = off - delta + raw;
    if (c.rlim > size)
        c.rlim = size;

    /* Fixed depth: type RT_VERSION (16) -> name ID 1 -> language; no recursion, so a
     * directory offset that points back up cannot loop. */
    rc = dir_find_subdir(&c, 0, 16, &d1);
    if (rc)
        return rc;
    rc = dir_find_subdir(&c, d1, 1, &d2);
    if (rc)
        return rc;
    rc = dir_open(&c, d2, &n);
    if (rc)
        return rc;
    for (i = 0; i < n; i++) {
        uint32_t name, otd;
        RD(c.rbase + d2 + 16u + 8u * (uint64_t)i, h, 8);
        name = le32(h);
        otd = le32(h + 4);
        if ((name & 0x80000000u) || (otd & 0x80000000u))
            continue; /* languages are IDs and must lead to a data entry */
        if (!havefirst) {
            havefirst = 1;
            relfirst = otd;
        }
        if (name == 0 && !have0) {
            have0 = 1;
            rel0 = otd;
        } else if (name == 0x409 && !have409) {
            have409 = 1;
            rel409 = otd;
        }
    }
    /* Language preference: neutral, en-US, then the first. */
    if (have0)
        data_rel = rel0;
    else if (have409)
        data_rel = rel409;
    else if (havefirst)
        data_rel = relfirst;
    else
        return PEV_E_NO_VERSION;

    rc = dir_check(&c, data_rel, 16);
    if (rc)
        return rc;
    RD(c.rbase + data_rel, h, 16);
    drva = le32(h); /* IMAGE_RESOURCE_DATA_ENTRY.OffsetToData is an RVA */
    dsize = le32(h + 4);
    rc = map_rva(&c, drva, &eoff, &edelta, &eraw);
    if (rc)
        return rc;
    if (eoff + dsize > size) /* no partial answers from a cut file */
        return PEV_E_PAST_EOF;
    if (edelta + dsize > eraw)
        return PEV_E_RVA;
    if (dsize < 6)
        return PEV_E_BAD_VERSION;
    nread = dsize < PEV_BLOB_MAX ? dsize : PEV_BLOB_MAX;
    RD(eoff, blob, nread);
    wlen = le16(blob);
    if (wlen < 6 || wlen > dsize)
        return PEV_E_BAD_VERSION;
    r->blob_len = wlen;
    if (node_at(blob, 0, wlen, &root) != NODE_OK || !key_is(blob, &root, "VS_VERSION_INFO"))
        return PEV_E_BAD_VERSION;
    parse_blob(blob, wlen, &root, r);
    return PEV_OK;
}

static void result_init(pev_result *r)
{
    memset(r, 0, sizeof *r);
}

int pev_parse_buffer(const uint8_t *data, size_t len, pev_result *r, uint8_t *blob)
{
    pev_src s;
    if (!r)
        return PEV_E_ARG;
    result_init(r);
    if ((!data && len) || !blob) {
        r->status = PEV_E_ARG;
        return r->status;
    }
    s.sys_error = 0;
    s.is_file = 0;
    s.win_len[0] = s.win_len[1] = 0;
    s.win_off[0] = s.win_off[1] = 0;
    s.win_next = 0;
    s.mem = data ? data : (const uint8_t *)"";
    s.size = (uint64_t)len;
    r->status = parse(&s, r, blob);
    return r->status;
}

int pev_parse_file(const char *path, pev_result *r, uint8_t *blob)
{
    pev_src s;
    if (!r)
        return PEV_E_ARG;
    result_init(r);
    if (!path || !blob) {
        r->status = PEV_E_ARG;
        return r->status;
    }
    s.mem = NULL;
    s.size = 0;
    s.is_file = 0;
    s.sys_error = 0;
    s.win_len[0] = s.win_len[1] = 0;
    s.win_off[0] = s.win_off[1] = 0;
    s.win_next = 0;
    r->status = src_open(&s, path, &r->ident);
    if (r->status != PEV_OK) {
        r->sys_error = r->status == PEV_E_IO ? s.sys_error : 0;
        return r->status;
    }
    r->status = parse(&s, r, blob);
    if (r->status == PEV_E_IO)
        r->sys_error = s.sys_error;
    if (r->status != PEV_OK) /* keep the identity of the file for negative caching */
        r->file_size = s.size;
    src_close(&s);
    return r->status;
}

/* One code point as UTF-8 at o; returns the bytes written (1-4). */
static uint32_t put_utf8(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80u) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800u) {
        o[0] = (uint8_t)(0xC0u | (cp >> 6));
        o[1] = (uint8_t)(0x80u | (cp & 0x3Fu));
        return 2;
    }
    if (cp < 0x10000u) {
        o[0] = (uint8_t)(0xE0u | (cp >> 12));
        o[1] = (uint8_t)(0x80u | ((cp >> 6) & 0x3Fu));
        o[2] = (uint8_t)(0x80u | (cp & 0x3Fu));
        return 3;
    }
    o[0] = (uint8_t)(0xF0u | (cp >> 18));
    o[1] = (uint8_t)(0x80u | ((cp >> 12) & 0x3Fu));
    o[2] = (uint8_t)(0x80u | ((cp >> 6) & 0x3Fu));
    o[3] = (uint8_t)(0x80u | (cp & 0x3Fu));
    return 4;
}

/* `units` UTF-16LE code units at s as UTF-8 at o (at most 3 bytes per unit); an
 * unpaired surrogate becomes U+FFFD and the decoding goes on with the next unit. */
static uint32_t utf16_to_utf8(const uint8_t *s, uint32_t units, uint8_t *o)
{
    uint32_t i = 0, n = 0, u, lo;
    while (i < units) {
        u = le16(s + 2u * i++);
        if (u >= 0xD800u && u <= 0xDFFFu) {
            if (u <= 0xDBFFu && i < units && (lo = le16(s + 2u * i)) >= 0xDC00u && lo <= 0xDFFFu) {
                u = 0x10000u + ((u - 0xD800u) << 10) + (lo - 0xDC00u);
                i++;
            } else {
                u = 0xFFFDu;
            }
        }
        n += put_utf8(o + n, u);
    }
    return n;
}

static uint32_t put_uint(uint8_t *o, uint32_t v)
{
    uint8_t tmp[10];
    uint32_t n = 0, k = 0;
    do {
        tmp[n++] = (uint8_t)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n)
        o[k++] = tmp[--n];
    return k;
}

static uint32_t put_version(uint8_t *o, uint32_t ms, uint32_t ls)
{
    uint32_t n = put_uint(o, ms >> 16);
    o[n++] = '.';
    n += put_uint(o + n, ms & 0xFFFFu);
    o[n++] = '.';
    n += put_uint(o + n, ls >> 16);
    o[n++] = '.';
    n += put_uint(o + n, ls & 0xFFFFu);
    return n;
}

static void result_text(pev_result *r, const uint8_t *blob, uint8_t *text)
{
    uint32_t n = 0, f, units = 0;
    for (f = 0; f < PEV_NFIELDS; f++)
        units += r->str_len[f];
    /* Cannot happen (distinct nodes of one blob); refuse rather than overrun. */
    if (units > PEV_BLOB_MAX / 2u) {
        r->status = PEV_E_BAD_VERSION;
        return;
    }
    for (f = 0; f < PEV_NFIELDS; f++) {
        if (r->str_len[f])
            n += utf16_to_utf8(blob + r->str_off[f], r->str_len[f], text + n);
        text[n++] = 0;
    }
    if (r->has_fixed)
        n += put_version(text + n, r->file_version_ms, r->file_version_ls);
    text[n++] = 0;
    if (r->has_fixed)
        n += put_version(text + n, r->product_version_ms, r->product_version_ls);
    r->text_len = n;
}

/* A parse's status, with the text written when it succeeded. */
static int with_text(int rc, pev_result *r, const uint8_t *blob, uint8_t *text)
{
    if (rc != PEV_OK)
        return rc;
    result_text(r, blob, text);
    return r->status;
}

int pev_file_text(const char *path, pev_result *r, uint8_t *blob, uint8_t *text)
{
    if (!text)
        return r ? (r->status = PEV_E_ARG) : PEV_E_ARG;
    return with_text(pev_parse_file(path, r, blob), r, blob, text);
}

int pev_buffer_text(const uint8_t *data, size_t len, pev_result *r, uint8_t *blob, uint8_t *text)
{
    if (!text)
        return r ? (r->status = PEV_E_ARG) : PEV_E_ARG;
    return with_text(pev_parse_buffer(data, len, r, blob), r, blob, text);
}

const char *pev_strerror(int status)
{
    switch (status) {
    case PEV_OK: return "ok";
    case PEV_E_IO: return "cannot open or read the file";
    case PEV_E_NOT_MZ: return "not an executable (no MZ signature)";
    case PEV_E_TRUNCATED: return "truncated file: a header or table runs past the end";
    case PEV_E_NOT_PE: return "not a PE image (no PE signature)";
    case PEV_E_BAD_OPTIONAL: return "unknown optional header magic (neither PE32 nor PE32+)";
    case PEV_E_NO_RESOURCES: return "no resource directory";
    case PEV_E_RVA: return "an RVA is not backed by section data in the file";
    case PEV_E_RESDIR: return "malformed resource directory";
    case PEV_E_NO_VERSION: return "no version resource (RT_VERSION, ID 1)";
    case PEV_E_PAST_EOF: return "the version resource runs past the end of the file";
    case PEV_E_BAD_VERSION: return "malformed version resource";
    case PEV_E_ARG: return "bad argument";
    case PEV_E_NOT_REGULAR: return "not a regular file (a folder, device or pipe)";
    default: return "unknown error";
    }
}
