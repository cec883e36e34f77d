/* A small driver over native/pe_version.c for the file-layer tests (tests/test_pe_wine.py).
 *
 * Built twice: with the host compiler (POSIX file layer) and with x86_64-w64-mingw32-gcc (the
 * Windows file layer, run under Wine).  It includes pe_version.c itself, to reach the static
 * path conversion.  Output is UTF-8, one line per item.
 *
 *   pe_driver parse PATH...       "<status>\t<v1>\t...\t<v9>" (the nine text values)
 *   pe_driver lock PATH           parse while this process holds the file open with no sharing
 *   pe_driver restamp PATH        parse, overwrite one byte in place, put every time back,
 *                                 then print "same" or "changed" (pev_same_ident)
 *   pe_driver winpath [-w] PATH.. the path as the Windows layer opens it (-w: as in WOW64)
 */
#include "../../native/pe_version.c"

#include <stdio.h>

static uint8_t blob[PEV_BLOB_MAX];
static uint8_t text[PEV_TEXT_MAX];

static void print_parse(const char *path)
{
    pev_result r;
    uint32_t i;
    int st = pev_file_text(path, &r, blob, text);
    printf("%d", st);
    if (st == PEV_OK) {
        putchar('\t');
        for (i = 0; i < r.text_len; i++)
            putchar(text[i] ? text[i] : '\t');
    }
    putchar('\n');
}

#ifdef _WIN32
#include <shellapi.h>

static char *to_utf8(const wchar_t *w)
{
    int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
    char *s = (char *)malloc((size_t)n);
    WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL);
    return s;
}

static int lock_and_parse(const char *path)
{
    wchar_t *w = win_open_path(path);
    HANDLE h = w ? CreateFileW(w, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL)
                 : INVALID_HANDLE_VALUE;
    free(w);
    if (h == INVALID_HANDLE_VALUE) {
        printf("cannot lock: %lu\n", (unsigned long)GetLastError());
        return 1;
    }
    print_parse(path);
    CloseHandle(h);
    return 0;
}

static int restamp(const char *path)
{
    pev_result r;
    FILETIME c, a, m;
    DWORD got;
    uint8_t b;
    wchar_t *w = win_open_path(path);
    HANDLE h;
    if (pev_parse_file(path, &r, blob) == PEV_E_IO)
        return 1;
    h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE | FILE_WRITE_ATTRIBUTES, FILE_SHARE_READ, NULL,
                    OPEN_EXISTING, 0, NULL);
    free(w);
    if (h == INVALID_HANDLE_VALUE || !GetFileTime(h, &c, &a, &m))
        return 1;
    Sleep(20);
    SetFilePointer(h, 0, NULL, FILE_BEGIN);
    if (!ReadFile(h, &b, 1, &got, NULL) || got != 1)
        return 1;
    b ^= 0x01;
    SetFilePointer(h, 0, NULL, FILE_BEGIN);
    if (!WriteFile(h, &b, 1, &got, NULL) || got != 1)
        return 1;
    FlushFileBuffers(h);
    if (!SetFileTime(h, &c, &a, &m))
        return 1;
    CloseHandle(h);
    printf("%s\n", pev_same_ident(path, &r.ident) == 1 ? "same" : "changed");
    return 0;
}

int wmain(int argc, wchar_t **wargv)
{
    char **argv = (char **)malloc(sizeof(char *) * (size_t)(argc + 1));
    int i, first = 2;
    for (i = 0; i < argc; i++)
        argv[i] = to_utf8(wargv[i]);
    argv[argc] = NULL;
#else
#include <sys/stat.h>
#include <fcntl.h>
#include <time.h>

static int restamp(const char *path)
{
    pev_result r;
    struct stat st;
    struct timespec ts[2];
    uint8_t b;
    int fd;
    if (pev_parse_file(path, &r, blob) == PEV_E_IO || stat(path, &st) != 0)
        return 1;
    fd = open(path, O_RDWR);
    if (fd < 0 || pread(fd, &b, 1, 0) != 1)
        return 1;
    b ^= 0x01;
    if (pwrite(fd, &b, 1, 0) != 1)
        return 1;
    close(fd);
    ts[0] = st.st_atim;
    ts[1] = st.st_mtim;
    if (utimensat(AT_FDCWD, path, ts, 0) != 0)
        return 1;
    printf("%s\n", pev_same_ident(path, &r.ident) == 1 ? "same" : "changed");
    return 0;
}

int main(int argc, char **argv)
{
    int i, first = 2;
#endif
    if (argc < 2) {
        fprintf(stderr, "usage: pe_driver parse|lock|restamp|winpath ...\n");
        return 2;
    }
    if (!strcmp(argv[1], "parse")) {
        for (i = first; i < argc; i++)
            print_parse(argv[i]);
        return 0;
    }
    if (!strcmp(argv[1], "restamp") && argc == 3)
        return restamp(argv[2]);
#ifdef _WIN32
    if (!strcmp(argv[1], "lock") && argc == 3)
        return lock_and_parse(argv[2]);
    if (!strcmp(argv[1], "winpath")) {
        if (argc > 2 && !strcmp(argv[2], "-w")) {
            pev_wow64 = 1; /* as in a WOW64 process */
            first = 3;
        }
        for (i = first; i < argc; i++) {
            wchar_t *w = win_open_path(argv[i]);
            char *u = w ? to_utf8(w) : NULL;
            printf("%s\n", u ? u : "(error)");
            free(u);
            free(w);
        }
        return 0;
    }
#endif
    fprintf(stderr, "pe_driver: unknown command %s\n", argv[1]);
    return 2;
}
