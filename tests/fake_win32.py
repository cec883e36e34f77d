"""The Windows ABI on Linux, for the tests: the fake Win32 library and pywintrace loaded over it.

``build`` compiles ``tests/abi/fake_win32.c`` with the host's C compiler.  ``windows_ctypes``
makes a ctypes module as Windows shows it (LLP64 sizes: ``c_ulong``/``c_long`` 4 bytes, so
``wintypes.DWORD``/``ULONG``/``LONG``/``BOOL`` too; ``c_wchar`` 2 bytes; ``c_wchar_p`` marshalling
a ``str`` as a NUL-terminated UTF-16LE buffer; ``WINFUNCTYPE`` = ``CFUNCTYPE``, the same ABI on
x64; ``windll``/``oledll``/``WinDLL``/``OleDLL`` opening the fake library whatever the DLL name,
``OleDLL`` calls raising ``OSError`` for a failing HRESULT; ``get_last_error`` = ``get_errno``).
``load_pywintrace`` imports the installed pywintrace 0.2.0 through
``sensor.sources.etw_windows.load_etw`` with that module standing in for ``ctypes`` and
``ctypes.wintypes``: pywintrace's own declarations, built with Windows sizes, bound to the fake.

The real ``ctypes`` is never modified: the stand-in is a separate module object, placed in
``sys.modules`` only while pywintrace is imported; afterwards ``sys.modules`` is as before (no
``etw`` module left there), and pywintrace's modules keep the stand-in as their ``ct``/``wt``.
"""
from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types
import uuid
from contextlib import contextmanager
from pathlib import Path

from sensor.sources import etw_windows

ABI = Path(__file__).resolve().parent / "abi"
KERNEL_PROCESS_GUID = "{22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716}"
PROCESS_CLASS_GUID = "{3D6FA8D0-FE05-11D0-9DDA-00C04FD7BA7C}"
LOST_EVENT_GUID = "{6A399AE0-4BC6-4DE9-870B-3657F8947E7E}"
EVENT_TRACE_GUID = "{68FDD900-4A3E-11D1-84F4-0000F80464E3}"


def layout(name: str = "win64_layout.h") -> dict[str, int]:
    """The generated table: ``{"EVENT_RECORD__UserData": 96, ...}``."""
    text = (ABI / name).read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^#define WL_(\w+) (-?\d+)$", text, re.M)}


def build(out_dir: Path) -> Path | None:
    """Compile the fake into ``out_dir``; None when there is no C compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    out = out_dir / "fake_win32.so"
    subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O1", "-g", "-Wall", "-Werror", "-shared", "-fPIC",
                    "-fvisibility=hidden", "-I", str(ABI), "-o", str(out), str(ABI / "fake_win32.c"),
                    "-lpthread"], check=True, capture_output=True)
    return out


def guid_bytes(text: str) -> bytes:
    """A GUID as Windows lays it out in memory (Data1..3 little-endian, then Data4)."""
    return uuid.UUID(text).bytes_le


# -- ctypes as Windows shows it -----------------------------------------------------------------

def _utf16(text: str) -> ctypes.Array:
    return ctypes.create_string_buffer(text.encode("utf-16-le") + b"\0\0")


class c_wchar_p(ctypes.c_void_p):
    """LPWSTR as on Windows: a ``str`` is passed as a NUL-terminated UTF-16LE buffer."""

    def __new__(cls, value=None):
        if isinstance(value, str):
            # cast() records the buffer in the result's _objects: a structure field assigned
            # from this object keeps the buffer alive, as with ctypes' own c_wchar_p.
            return ctypes.cast(_utf16(value), cls)
        return super().__new__(cls)

    def __init__(self, value=None):
        if not isinstance(value, str):
            super().__init__(value)

    @classmethod
    def from_param(cls, value):
        if isinstance(value, str):
            return cls(value)
        return ctypes.c_void_p.from_param(value)

    @property
    def value(self):
        address = ctypes.c_void_p.from_buffer(self).value
        if not address:
            return None
        out = bytearray()
        while len(out) < 65536:
            unit = ctypes.string_at(address + len(out), 2)
            if unit == b"\0\0":
                break
            out += unit
        return out.decode("utf-16-le", "replace")


class HRESULT(ctypes._SimpleCData):
    """A 32-bit HRESULT; a negative one raises OSError, as ctypes does on Windows."""
    _type_ = "i"

    @staticmethod
    def _check_retval_(result):
        code = getattr(result, "value", result)
        if code < 0:
            raise OSError(None, f"HRESULT 0x{code & 0xFFFFFFFF:08X}", None, code)
        return code


def windows_ctypes(library: Path) -> types.ModuleType:
    """A stand-in for the ``ctypes`` module with Windows' sizes, whose DLLs are ``library``."""
    real = ctypes
    shim = types.ModuleType("ctypes")
    shim.__dict__.update({k: v for k, v in vars(real).items() if k not in ("__name__", "__spec__", "__loader__")})
    shim.__doc__ = "ctypes with the sizes of Windows (LLP64), over the fake Win32 library"
    path = str(library)

    class WinDLL(real.CDLL):
        """Any DLL name opens the fake; use_last_error is errno (the fake sets errno)."""

        def __init__(self, name, mode=real.DEFAULT_MODE, handle=None, use_errno=False, use_last_error=False,
                     winmode=None):
            super().__init__(path, mode, None, use_errno or use_last_error)
            base = self._FuncPtr

            class _FuncPtr(base):
                _flags_ = base._flags_
                _restype_ = base._restype_

                def __call__(self, *args):
                    # Without argtypes ctypes passes a str as wchar_t*: UTF-16 on Windows.
                    if self.argtypes is None and any(isinstance(a, str) for a in args):
                        args = tuple(_utf16(a) if isinstance(a, str) else a for a in args)
                    return super().__call__(*args)

            self._FuncPtr = _FuncPtr

    class OleDLL(WinDLL):
        _func_restype_ = HRESULT

    shim.c_long, shim.c_ulong = real.c_int32, real.c_uint32
    shim.c_wchar, shim.c_wchar_p = real.c_uint16, c_wchar_p
    shim.WinDLL, shim.OleDLL, shim.HRESULT = WinDLL, OleDLL, HRESULT
    shim.windll, shim.oledll = real.LibraryLoader(WinDLL), real.LibraryLoader(OleDLL)
    shim.WINFUNCTYPE = real.CFUNCTYPE
    shim.get_last_error, shim.set_last_error = real.get_errno, real.set_errno
    shim.GetLastError = real.get_errno
    shim.FormatError = lambda code=None: f"fake message {real.get_errno() if code is None else code}"
    shim.WinError = lambda code=None, descr=None: OSError(None, descr or shim.FormatError(code), None, code)

    # ctypes.wintypes, executed against the stand-in: DWORD, BOOL, LPWSTR... get Windows' sizes.
    spec = importlib.util.find_spec("ctypes.wintypes")
    wintypes = importlib.util.module_from_spec(spec)
    with _modules({"ctypes": shim}):
        spec.loader.exec_module(wintypes)
    shim.wintypes = wintypes
    return shim


_import_lock = threading.Lock()


@contextmanager
def _modules(replace: dict[str, types.ModuleType]):
    """``sys.modules`` with ``replace`` in place and no ``etw`` package; put back afterwards."""
    with _import_lock:
        names = set(replace) | {k for k in sys.modules if k == "etw" or k.startswith("etw.")}
        saved = {k: sys.modules[k] for k in names if k in sys.modules}
        for k in names:
            sys.modules.pop(k, None)
        sys.modules.update(replace)
        try:
            yield
        finally:
            for k in list(sys.modules):
                if k in names or k == "etw" or k.startswith("etw."):
                    del sys.modules[k]
            sys.modules.update(saved)


def load_pywintrace(library: Path) -> tuple[etw_windows.Pywintrace, etw_windows.Win32, types.ModuleType]:
    """pywintrace 0.2.0 imported with Windows' ctypes over ``library`` (through the sensor's own
    import, which undoes pywintrace's logging.basicConfig), the sensor's own declarations over
    the same library, and the stand-in ctypes.  ``EtwApi(pw, api)`` joins them as ``load_etw``
    does on Windows."""
    shim = windows_ctypes(library)
    with _modules({"ctypes": shim, "ctypes.wintypes": shim.wintypes}):
        pw = etw_windows.import_pywintrace()
    return pw, etw_windows.load_win32(shim), shim


# -- the fake, loaded once per process ------------------------------------------------------------

class Fake:
    """The loaded fake: its scripting knobs, its log, and pywintrace's bindings over it."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path), use_errno=True)
        self.path = path
        self.lib = lib
        lib.fake_session_get.restype = ctypes.c_int64
        lib.fake_session_get.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.fake_session_set.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64]
        lib.fake_push.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint16, ctypes.c_uint8,
                                  ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int64,
                                  ctypes.c_uint16, ctypes.c_char_p, ctypes.c_uint16]
        lib.fake_log.restype = ctypes.c_size_t
        lib.fake_add_process.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                         ctypes.c_int]
        lib.fake_add_account.argtypes = [ctypes.c_char_p] * 3
        lib.fake_add_device.argtypes = [ctypes.c_char, ctypes.c_char_p]
        lib.fake_add_session.argtypes = [ctypes.c_char_p]
        self.pw, self.api, self.ctypes = load_pywintrace(path)
        # What the backend calls; None (and the reason) when the sensor refuses this binding.
        self.etw: etw_windows.EtwApi | None = None
        self.refused: Exception | None = None
        try:
            self.etw = etw_windows.EtwApi(self.pw, self.api)
        except etw_windows.SourceUnavailable as exc:
            self.refused = exc

    def knob(self, name: str) -> ctypes.c_int64:
        return ctypes.c_int64.in_dll(self.lib, "fake_" + name)

    def set(self, **knobs: int) -> None:
        for k, v in knobs.items():
            self.knob(k).value = v

    def reset(self) -> None:
        self.lib.fake_reset()
        self.lib.fake_clear_world()

    def log(self) -> list[str]:
        buf = ctypes.create_string_buffer(1 << 16)
        self.lib.fake_log(buf, len(buf))
        return buf.value.decode().splitlines()

    def session(self, name: str, field: str) -> int:
        return self.lib.fake_session_get(name.encode(), field.encode())

    def set_session(self, name: str, field: str, value: int) -> None:
        assert self.lib.fake_session_set(name.encode(), field.encode(), value) == 0

    def push(self, session: str, guid: str, event_id: int, version: int, opcode: int, payload: bytes,
             pid: int = 4, tid: int = 8, ts: int = 133_000_000_000_000_000, flags: int = 0x40) -> None:
        assert self.lib.fake_push(session.encode(), guid_bytes(guid), event_id, version, opcode, pid, tid, ts,
                                  flags, payload, len(payload)) == 0

    def wait_drained(self, timeout_ms: int = 10_000) -> bool:
        return self.lib.fake_wait_drained(timeout_ms) == 0

    def add_process(self, pid: int, cmdline: str, rid: int = 0x2000, denied: bool = False) -> None:
        w = cmdline.encode("utf-16-le")
        self.lib.fake_add_process(pid, w, len(w) // 2, rid, int(denied))

    def add_account(self, sid: str, domain: str, name: str) -> None:
        self.lib.fake_add_account(sid.encode(), domain.encode(), name.encode())

    def add_device(self, letter: str, target: str) -> None:
        self.lib.fake_add_device(letter.encode(), target.encode())

    def add_session(self, name: str) -> None:
        self.lib.fake_add_session(name.encode())


_shared: Fake | None = None
_shared_lock = threading.Lock()


def shared_fake() -> Fake | None:
    """The fake of this test process (built once: pywintrace is bound to one copy of it);
    None when there is no C compiler."""
    global _shared
    with _shared_lock:
        if _shared is None:
            out = Path(tempfile.mkdtemp(prefix="fake-win32-"))
            atexit.register(shutil.rmtree, out, True)
            path = build(out)
            if path is None:
                return None
            _shared = Fake(path)
        return _shared
