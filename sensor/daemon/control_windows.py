"""The control channel on Windows: a named pipe that only SYSTEM and Administrators may open.

The plan (the pipe's name for a data folder, its security descriptor, the request framing) is
pure and tested on Linux; the Win32 calls (pywin32: ``win32pipe``, ``win32file``,
``win32security``) are imported inside the functions that make them. Never run on Windows.
"""
from __future__ import annotations

import hashlib
import json
import logging
import ntpath
import threading

from .control import MAX_REQUEST, handle_request

log = logging.getLogger("sensor.control")

# Protected DACL: full access for LocalSystem and the Administrators group, nobody else (not
# even Everyone's read); the pipe refuses remote clients (PIPE_REJECT_REMOTE_CLIENTS).
PIPE_SDDL = "D:P(A;;GA;;;SY)(A;;GA;;;BA)"
PIPE_PREFIX = "\\\\.\\pipe\\"
PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
PIPE_TYPE_MESSAGE = 0x00000004
PIPE_READMODE_MESSAGE = 0x00000002
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008


def pipe_name(data_dir: str) -> str:
    """One pipe per sensor instance (its data folder), like the ETW session name."""
    key = ntpath.normcase(ntpath.normpath(data_dir)).encode("utf-16-le")
    return f"{PIPE_PREFIX}etw-sensor-control-{hashlib.sha256(key).hexdigest()[:16]}"


def pipe_open_mode() -> int:
    # FIRST_PIPE_INSTANCE: a second process cannot squat on the name before the sensor
    return PIPE_ACCESS_DUPLEX | FILE_FLAG_FIRST_PIPE_INSTANCE


def pipe_mode() -> int:
    return PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS


class PipeControlServer:
    """Serves the control protocol on the named pipe (pywin32)."""

    def __init__(self, data_dir: str, reloader) -> None:
        self.name = pipe_name(data_dir)
        self.reloader = reloader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control channel: %s (etw-sensor reload)", self.name)

    def _serve(self) -> None:
        import pywintypes
        import win32file
        import win32pipe
        import win32security
        sa = win32security.SECURITY_ATTRIBUTES()
        sa.SECURITY_DESCRIPTOR = win32security.ConvertStringSecurityDescriptorToSecurityDescriptor(
            PIPE_SDDL, win32security.SDDL_REVISION_1)
        first = True
        while not self._stop.is_set():
            mode = pipe_open_mode() if first else PIPE_ACCESS_DUPLEX
            h = win32pipe.CreateNamedPipe(self.name, mode, pipe_mode(), 1, 65536, MAX_REQUEST, 0, sa)
            first = False
            try:
                win32pipe.ConnectNamedPipe(h, None)
                if self._stop.is_set():
                    return
                _, raw = win32file.ReadFile(h, MAX_REQUEST)
                answer = handle_request(bytes(raw).split(b"\n", 1)[0],
                                        lambda trig: self.reloader.reload(trig))
                win32file.WriteFile(h, json.dumps(answer, default=str).encode("utf-8") + b"\n")
                win32file.FlushFileBuffers(h)
            except pywintypes.error as exc:
                log.warning("control pipe: %s", exc)
            finally:
                try:
                    win32pipe.DisconnectNamedPipe(h)
                finally:
                    win32file.CloseHandle(h)

    def stop(self) -> None:
        self._stop.set()
        try:                       # wake ConnectNamedPipe with a connection of our own
            pipe_request_raw(self.name, b"{}", 1.0)
        except Exception:  # noqa: BLE001
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)


def pipe_request_raw(name: str, payload: bytes, timeout: float) -> bytes:
    import win32file
    import win32pipe
    win32pipe.WaitNamedPipe(name, int(timeout * 1000))
    h = win32file.CreateFile(name, win32file.GENERIC_READ | win32file.GENERIC_WRITE, 0, None,
                             win32file.OPEN_EXISTING, 0, None)
    try:
        win32pipe.SetNamedPipeHandleState(h, PIPE_READMODE_MESSAGE, None, None)
        win32file.WriteFile(h, payload + b"\n")
        _, data = win32file.ReadFile(h, 16 * 1024 * 1024)
        return bytes(data)
    finally:
        win32file.CloseHandle(h)


def pipe_request(data_dir: str, cmd: str, timeout: float) -> dict:
    """Send ``cmd`` over the pipe of the sensor that owns ``data_dir``."""
    try:
        raw = pipe_request_raw(pipe_name(data_dir), json.dumps({"cmd": cmd}).encode(), timeout)
    except Exception as exc:  # noqa: BLE001 - pywintypes.error: no sensor, access denied
        raise OSError(str(exc)) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OSError("the sensor's answer is not JSON") from None
