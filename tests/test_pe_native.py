"""The C reader builds for Windows (mingw-w64) and survives a short libFuzzer run."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "native" / "pe_version.c"

DRIVER = r"""
#include <stdio.h>
#include "pe_version.h"
static uint8_t blob[PEV_BLOB_MAX];
int main(int argc, char **argv) {
    pev_result r;
    int i;
    for (i = 1; i < argc; i++)
        printf("%s: %s\n", argv[i], pev_strerror(pev_parse_file(argv[i], &r, blob)));
    return 0;
}
"""


@pytest.mark.skipif(not shutil.which("x86_64-w64-mingw32-gcc"),
                    reason="x86_64-w64-mingw32-gcc not installed (Debian: gcc-mingw-w64-x86-64-win32)")
def test_mingw_compiles_and_links(tmp_path):
    cc = "x86_64-w64-mingw32-gcc"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'native'}"]
    subprocess.run([cc, *flags, "-c", str(SRC), "-o", str(tmp_path / "pe_version.o")],
                   check=True, capture_output=True)
    (tmp_path / "driver.c").write_text(DRIVER)
    exe = tmp_path / "peversion.exe"
    subprocess.run([cc, *flags, str(tmp_path / "driver.c"), str(SRC), "-o", str(exe)],
                   check=True, capture_output=True)
    assert exe.read_bytes()[:2] == b"MZ"  # a Windows executable; the Win32 file layer linked


def _libfuzzer_missing(tmp_path) -> str | None:
    if not shutil.which("clang"):
        return "clang not installed"
    probe = tmp_path / "probe.c"
    probe.write_text("#include <stdint.h>\n#include <stddef.h>\n"
                     "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) "
                     "{ (void)d; (void)n; return 0; }\n")
    res = subprocess.run(["clang", "-fsanitize=fuzzer,address,undefined", str(probe),
                          "-o", str(tmp_path / "probe")], capture_output=True, text=True)
    if res.returncode:
        return "clang cannot link libFuzzer (Debian: libclang-rt-dev, or libclang-rt-<major>-dev): " + res.stderr[-200:]
    return None


def test_short_fuzz_run(tmp_path):
    missing = _libfuzzer_missing(tmp_path)
    if missing:
        pytest.skip(missing)
    # a fixed number of executions, not a time budget: the same work on any machine
    runs = int(os.environ.get("PE_FUZZ_RUNS", "20000"))
    env = dict(os.environ, FUZZ_OUT=str(tmp_path / "out"))
    res = subprocess.run(["sh", str(ROOT / "fuzz" / "run.sh"), f"-runs={runs}"],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    done = [line for line in res.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert done and int(done[0].split(":")[-1]) >= runs, res.stderr[-2000:]
    for kind in ("crash-*", "leak-*", "timeout-*"):
        assert not list((tmp_path / "out").glob(kind)), kind
