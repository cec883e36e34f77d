"""The PE reader's Windows file layer, built with mingw-w64 and run under Wine, against the Linux build.

``tests/abi/pe_driver.c`` includes ``native/pe_version.c``; it is built with the host compiler
(the POSIX file layer) and with ``x86_64-w64-mingw32-gcc`` (the Windows one: CreateFileW,
ReadFile, the path conversion, the file identity).  Both read the same files; their answers
must be the same.  Wine is not Windows: it does not limit paths to 260 characters, has no
``\\Device\\HarddiskVolumeN`` objects and no change journal, and cannot run 32-bit programs in a
64-bit-only prefix; what that leaves unverified is listed in docs/pe.md.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.enrich.pe import windows_open_path

ROOT = Path(__file__).resolve().parents[1]
ABI = ROOT / "tests" / "abi"
FIXTURES = ROOT / "tests" / "data" / "pe"

pytestmark = pytest.mark.slow


def _wine() -> str | None:
    for name in ("wine", "wine64"):
        if shutil.which(name):
            return shutil.which(name)
    for path in ("/usr/lib/wine/wine64", "/usr/lib/wine/wine"):
        if os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def drivers(tmp_path_factory):
    mingw = shutil.which("x86_64-w64-mingw32-gcc")
    wine = _wine()
    cc = shutil.which("cc") or shutil.which("gcc")
    if mingw is None:
        pytest.skip("mingw-w64 (x86_64-w64-mingw32-gcc) is not installed: .ci/run installs it where it can")
    if wine is None:
        pytest.skip("Wine is not installed: .ci/run installs it (wine64) where it can")
    if cc is None:
        pytest.skip("no host C compiler")
    out = tmp_path_factory.mktemp("pe-driver")
    exe, native = out / "pe_driver.exe", out / "pe_driver"
    subprocess.run([mingw, "-std=c99", "-municode", "-O2", "-Wall", "-Werror", "-o", str(exe),
                    str(ABI / "pe_driver.c")], check=True, capture_output=True)
    subprocess.run([cc, "-std=c99", "-D_GNU_SOURCE", "-O2", "-Wall", "-Werror", "-o", str(native),
                    str(ABI / "pe_driver.c")], check=True, capture_output=True)
    env = dict(os.environ, WINEPREFIX=str(out / "prefix"), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml=")
    # The first run creates the prefix (slow); a failure here means Wine cannot run at all.
    probe = subprocess.run([wine, str(exe), "parse", "Z:" + win(FIXTURES / "basic64.exe")], env=env,
                           capture_output=True, timeout=300)
    if probe.returncode != 0 or not probe.stdout.startswith(b"0\t"):
        pytest.skip(f"Wine cannot run the driver here: {probe.stderr[-300:]!r}")
    return {"wine": wine, "exe": str(exe), "native": str(native), "env": env, "dir": out}


def win(path: Path | str) -> str:
    """A Linux path as Wine's Z: drive shows it (without the drive letter)."""
    return str(path).replace("/", "\\")


def run_wine(d, *args, cwd=None) -> list[str]:
    """The driver's output lines. The driver prints a line for every path it was given before it
    exits; a run that printed nothing and failed is Wine failing to start it (seen under load on
    a 2-core machine: wineserver start-up), tried again twice before the test fails with Wine's
    own words."""
    for _ in range(3):
        p = subprocess.run([d["wine"], d["exe"], *args], env=d["env"], capture_output=True, timeout=300,
                           cwd=cwd)
        if p.stdout or p.returncode == 0:
            return p.stdout.decode("utf-8").splitlines()
    raise AssertionError(f"Wine did not run the driver (exit {p.returncode}): {p.stderr[-600:]!r}")


def run_native(d, *args) -> list[str]:
    p = subprocess.run([d["native"], *args], capture_output=True, timeout=120)
    return p.stdout.decode("utf-8").splitlines()


def test_every_fixture_reads_the_same_under_wine(drivers):
    files = sorted(p for p in FIXTURES.iterdir() if p.is_file() and p.suffix in (".exe", ".txt", ".json"))
    assert len(files) > 40
    want = run_native(drivers, "parse", *map(str, files))
    got = run_wine(drivers, "parse", *("Z:" + win(f) for f in files))
    assert len(want) == len(files) and got == want


def test_long_and_non_ascii_paths(drivers, tmp_path):
    deep = tmp_path.joinpath(*["ñ" * 40 + str(i) for i in range(7)])
    deep.mkdir(parents=True)
    target = deep / "ünï名前 ☃.exe"
    shutil.copy(FIXTURES / "basic64.exe", target)
    wpath = "Z:" + win(target)
    assert len(wpath) > 300
    assert windows_open_path(wpath).startswith("\\\\?\\Z:\\")
    got = run_wine(drivers, "parse", wpath, wpath.replace("\\", "/"))
    assert got == run_native(drivers, "parse", str(target), str(target))
    assert got[0].startswith("0\tbasic.exe")
    assert run_wine(drivers, "winpath", wpath) == ["\\\\?\\" + wpath]


def test_an_unmapped_device_path_never_opens_a_file_of_the_current_drive(drivers):
    """``\\Device\\HarddiskVolume9\\x.exe`` (a volume the mapper did not know) used to be opened
    as a folder of the current drive; a planted C:\\Device\\... file answered for it."""
    prefix = Path(drivers["env"]["WINEPREFIX"]) / "drive_c" / "Device" / "HarddiskVolume9"
    prefix.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "basic64.exe", prefix / "planted.exe")
    # run from C:\ (the prefix's drive_c), where the old reading would find it
    got = run_wine(drivers, "parse", "\\Device\\HarddiskVolume9\\planted.exe", cwd=str(prefix.parents[1]))
    assert got == ["1"]                                   # cannot open: not C:\Device\...
    assert run_wine(drivers, "parse", "C:\\Device\\HarddiskVolume9\\planted.exe")[0].startswith("0\t")


def test_locked_file_is_an_io_error(drivers, tmp_path):
    f = tmp_path / "locked.exe"
    shutil.copy(FIXTURES / "basic64.exe", f)
    assert run_wine(drivers, "lock", "Z:" + win(f)) == ["1"]


def test_overwrite_in_place_with_times_put_back_is_seen(drivers, tmp_path):
    """SetFileTime restores the creation and last-write times, not ChangeTime."""
    a, b = tmp_path / "a.exe", tmp_path / "b.exe"
    shutil.copy(FIXTURES / "basic64.exe", a)
    shutil.copy(FIXTURES / "basic64.exe", b)
    assert run_wine(drivers, "restamp", "Z:" + win(a)) == ["changed"]
    assert run_native(drivers, "restamp", str(b)) == ["changed"]


CASES = ["C:\\Windows\\System32\\cmd.exe", "c:\\windows\\system32\\wbem\\mofcomp.exe",
         "C:\\Windows\\SysWOW64\\cmd.exe", "\\Device\\HarddiskVolumeShadowCopy3\\Windows\\x.exe",
         "\\??\\C:\\Temp\\a.exe", "\\\\?\\C:\\Temp\\a.exe", "\\\\.\\PhysicalDrive0",
         "\\\\server\\share\\dir\\a.exe", "C:\\a\\..\\b\\.\\c.exe", "C:/fwd/slash.exe", "rel\\x.exe",
         "C:\\trailing.exe. .", "NUL", "C:\\dir\\NUL"]


@pytest.mark.parametrize("wow64", [False, True], ids=["native", "wow64"])
def test_path_conversion_matches_its_twin(drivers, tmp_path, wow64):
    args = (["-w"] if wow64 else []) + CASES
    got = run_wine(drivers, "winpath", *args, cwd=str(tmp_path))
    cwd = "Z:" + win(tmp_path.resolve())
    want = [windows_open_path(p, cwd=cwd, wow64=wow64, windir="C:\\windows") for p in CASES]
    assert got == want
