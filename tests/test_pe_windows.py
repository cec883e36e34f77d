"""Windows only: our static reader agrees with GetFileVersionInfoW / VerQueryValueW."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sensor.enrich import pe

pytestmark = [pytest.mark.windows,
              pytest.mark.skipif(sys.platform != "win32", reason="needs Windows (version.dll)")]

DATA = Path(__file__).resolve().parent / "data" / "pe"
# Fixtures whose first Translation pair names the table our preference picks, without MUI files.
CASES = ["basic64.exe", "basic32.exe", "tables_translation.exe", "key_case.exe"]


def windows_version_strings(path: Path) -> dict:
    import ctypes
    from ctypes import wintypes

    ver = ctypes.WinDLL("version.dll", use_last_error=True)
    size = ver.GetFileVersionInfoSizeW(str(path), None)
    if not size:
        raise OSError(ctypes.get_last_error(), "GetFileVersionInfoSizeW")
    buf = ctypes.create_string_buffer(size)
    if not ver.GetFileVersionInfoW(str(path), 0, size, buf):
        raise OSError(ctypes.get_last_error(), "GetFileVersionInfoW")
    ptr, n = ctypes.c_void_p(), wintypes.UINT()
    assert ver.VerQueryValueW(buf, "\\VarFileInfo\\Translation", ctypes.byref(ptr), ctypes.byref(n))
    lang, cp = ctypes.cast(ptr, ctypes.POINTER(wintypes.WORD * 2)).contents
    out = {}
    for key in pe.STRING_KEYS:
        q = f"\\StringFileInfo\\{lang:04x}{cp:04x}\\{key}"
        if ver.VerQueryValueW(buf, q, ctypes.byref(ptr), ctypes.byref(n)) and n.value:
            out[key] = ctypes.wstring_at(ptr, n.value).rstrip("\0 ") or None
        else:
            out[key] = None
    return out


@pytest.mark.parametrize("name", CASES)
def test_matches_get_file_version_info(name):
    want = windows_version_strings(DATA / name)
    got = pe.read_version_info(DATA / name)
    assert {k: got[k] for k in pe.STRING_KEYS} == want
