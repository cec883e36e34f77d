"""native/matcher_util.h's Windows lines (``GetTickCount64`` behind the matcher's idle
prefetch, the prefetch hint), the fold's word packing and the block scan's bigram, built with mingw-w64 for x64 and x86 and run under Wine beside
the host build (``tests/abi/matcher_util_driver.c``).  MSVC's own branch (``_mm_prefetch``)
is not built here."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_pe_wine import _wine

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "abi" / "matcher_util_driver.c"
FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function",
         f"-I{ROOT / 'native'}"]
WANT = "1 40 8 az@[`az{ 6261"


def _build(cc: str, out: Path, *extra: str) -> Path:
    res = subprocess.run([cc, *FLAGS, *extra, str(DRIVER), "-o", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_the_host_build_ticks_and_counts(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no host C compiler")
    exe = _build(cc, tmp_path / "driver", "-D_POSIX_C_SOURCE=200809L")
    assert subprocess.run([str(exe)], capture_output=True, text=True, timeout=60).stdout.strip() == WANT


@pytest.mark.parametrize("cc", ["x86_64-w64-mingw32-gcc", "i686-w64-mingw32-gcc"])
def test_mingw_builds_the_windows_lines(tmp_path, cc):
    if not shutil.which(cc):
        pytest.skip(f"{cc} not installed (.ci/run installs mingw-w64 where it can)")
    exe = _build(cc, tmp_path / "driver.exe")
    assert exe.read_bytes()[:2] == b"MZ"


@pytest.mark.slow
def test_the_windows_build_ticks_under_wine(tmp_path):
    cc, wine = shutil.which("x86_64-w64-mingw32-gcc"), _wine()
    if cc is None or wine is None:
        pytest.skip("mingw-w64 or Wine not installed (.ci/run installs both where it can)")
    exe = _build(cc, tmp_path / "driver.exe")
    env = dict(os.environ, WINEPREFIX=str(tmp_path / "prefix"), WINEDEBUG="-all",
               WINEDLLOVERRIDES="mscoree,mshtml=")
    for _ in range(3):          # (a first run that prints nothing is Wine failing to start)
        p = subprocess.run([wine, str(exe)], env=env, capture_output=True, text=True, timeout=300)
        if p.stdout:
            break
    assert p.stdout.strip() == WANT, p.stderr[-600:]
