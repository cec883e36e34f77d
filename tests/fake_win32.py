"""The fake Win32 library (tests/abi/fake_win32.c) built with the host's C compiler and loaded
with ctypes, plus the ``Win32`` object that points ``sensor.sources.etw_windows`` at it."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from sensor.sources import etw_windows

ABI = Path(__file__).resolve().parent / "abi"
KERNEL_PROCESS_GUID = "{22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716}"
PROCESS_CLASS_GUID = "{3D6FA8D0-FE05-11D0-9DDA-00C04FD7BA7C}"
LOST_EVENT_GUID = "{6A399AE0-4BC6-4DE9-870B-3657F8947E7E}"
EVENT_TRACE_GUID = "{68FDD900-4A3E-11D1-84F4-0000F80464E3}"


def layout(name: str = "win64_layout.h") -> dict[str, int]:
    """The generated table: ``{"EVENT_RECORD__UserData": 96, ...}``."""
    import re
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


class Fake:
    """The loaded fake: its scripting knobs, its log, and a ``Win32`` over it."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path), use_errno=True)
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
        self.api = etw_windows.Win32(lib, lib, lib, ctypes.get_errno,
                                     lambda code: f"fake message {code}", ctypes.CFUNCTYPE)

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
        g = bytes(etw_windows.GUID.parse(guid))
        assert self.lib.fake_push(session.encode(), g, event_id, version, opcode, pid, tid, ts, flags,
                                  payload, len(payload)) == 0

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
