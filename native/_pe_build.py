"""cffi (API mode, out-of-line) builder for ``sensor.enrich._pe``, the native PE version-info reader.

setup.py wires it with ``cffi_modules=["native/_pe_build.py:ffibuilder"]``; to build by hand:
``python native/_pe_build.py`` (writes build/sensor/enrich/_pe*.so; the normal way is
``python setup.py build_ext --inplace``).
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = """
#define PEV_BLOB_MAX 65536
#define PEV_NFIELDS 7

typedef struct pev_ident {
    uint64_t size;
    int64_t mtime_ns;
    int64_t ctime_ns;
    uint64_t ino;
    uint64_t dev;
    uint64_t change;
} pev_ident;

typedef struct pev_result {
    int32_t status;
    int32_t sys_error;
    uint64_t file_size;
    int32_t has_fixed;
    uint32_t file_version_ms, file_version_ls;
    uint32_t product_version_ms, product_version_ls;
    uint32_t blob_len;
    uint32_t str_off[7];
    uint32_t str_len[7];
    uint32_t text_len;
    pev_ident ident;
} pev_result;

#define PEV_TEXT_MAX ...

int pev_parse_file(const char *path, pev_result *r, uint8_t *blob);
int pev_parse_buffer(const uint8_t *data, size_t len, pev_result *r, uint8_t *blob);
int pev_file_text(const char *path, pev_result *r, uint8_t *blob, uint8_t *text);
int pev_buffer_text(const uint8_t *data, size_t len, pev_result *r, uint8_t *blob, uint8_t *text);
int pev_same_ident(const char *path, const pev_ident *id);
const char *pev_strerror(int status);

typedef struct pih_result {
    int32_t status;
    uint32_t dlls;
    uint32_t symbols;
    uint32_t out_len;
} pih_result;

int pih_imphash_text(const uint8_t *data, size_t len, char *out, uint32_t cap, pih_result *r);
"""


SANITIZE = bool(os.environ.get("SENSOR_SANITIZE")) and os.name != "nt"


def _cflags():
    if os.name == "nt":
        return ["/O2"]
    if SANITIZE:  # the same flags as setup.py's SENSOR_SANITIZE build
        return ["-O1", "-g", "-UNDEBUG", "-fno-omit-frame-pointer",
                "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    return ["-O0", "-g", "-UNDEBUG"] if os.environ.get("SENSOR_DEBUG") else ["-O2"]


def make_builder(base: str = "native") -> FFI:
    """The cffi builder; ``base`` is the folder of pe_version.c as the compiler will see it."""
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        "sensor.enrich._pe",
        '#include "pe_version.h"\n#include "pe_imphash.h"\n',
        sources=[os.path.join(base, "pe_version.c"), os.path.join(base, "pe_imphash.c")],
        include_dirs=[base],
        extra_compile_args=_cflags(),
        extra_link_args=["-fsanitize=address,undefined"] if SANITIZE else [],
    )
    return builder


# setup.py runs cffi builders from the project root, so the paths stay relative (portable
# wheels); a direct run compiles inside build/ and needs absolute ones.
ffibuilder = make_builder()

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(HERE), "build")
    print(make_builder(HERE).compile(tmpdir=out, verbose="-v" in sys.argv))
