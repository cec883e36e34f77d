"""Windows-only layer of the ETW source: the only module that imports pywintrace (``etw``) or windll.

Everything is imported lazily inside functions, so this module imports on any OS; the logic it
serves (session lifecycle, decoding, enrichment) lives in pure modules tested on Linux.

pywintrace 0.2.0 (the PyPI release) is used for its ctypes bindings and structures
(``etw.evntrace``, ``etw.evntcons``, ``etw.GUID``, ``TraceProperties``).  Its ``ETW`` and
``EventConsumer`` classes are deliberately not used (reference §2.3-2.5):

* ``EventConsumer._run`` calls ``threading.Event.isSet()`` (deprecated since Python 3.10) and
  compares the OpenTrace result with ``TRACEHANDLE(-1)``, which is never equal, so an OpenTrace
  failure goes unnoticed and the consumer thread dies silently;
* ``ETW.start`` swallows ERROR_ALREADY_EXISTS and then does not enable the providers;
* ``ETW.stop`` raises when the session was stopped from outside, leaving the consumer open;
* ``etw.common.on_event_callback`` imports ``collections.Mapping`` (gone in 3.10).

The consumer here is the raw-record path (what RETURN_RAW_UNFORMATTED_DATA gives): the callback
receives the EVENT_RECORD address, unpacks the header fields it needs in one ``struct`` call,
copies ``UserData``, hands one tuple to the sink (a bounded, non-blocking queue put) and
returns.  No TDH call.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from typing import Any, Callable

from .etw_raw import SRC_KERNEL_PROCESS, SRC_LOST, SRC_SYSTEM_LOGGER
from .etw_session import SessionError, SessionExistsError, SessionSpec

log = logging.getLogger(__name__)

ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87
ERROR_ALREADY_EXISTS = 183
ERROR_WMI_INSTANCE_NOT_FOUND = 4201

EVENT_TRACE_CONTROL_QUERY = 0
EVENT_TRACE_CONTROL_STOP = 1
EVENT_TRACE_CONTROL_FLUSH = 3            # not defined by pywintrace 0.2.0
EVENT_CONTROL_CODE_ENABLE_PROVIDER = 1
EVENT_CONTROL_CODE_CAPTURE_STATE = 2

EVENT_TRACE_REAL_TIME_MODE = 0x00000100
EVENT_TRACE_SYSTEM_LOGGER_MODE = 0x02000000
EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING = 0x10000000
WNODE_FLAG_TRACED_GUID = 0x00020000
PROCESS_TRACE_MODE_REAL_TIME = 0x00000100
PROCESS_TRACE_MODE_EVENT_RECORD = 0x10000000
INVALID_PROCESSTRACE_HANDLES = (0xFFFFFFFFFFFFFFFF, 0x00000000FFFFFFFF)

# ProviderId.Data1 of the records each session delivers.
KERNEL_PROCESS_DATA1 = 0x22FB2CD6        # {22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716}
PROCESS_CLASS_DATA1 = 0x3D6FA8D0         # {3D6FA8D0-FE05-11D0-9DDA-00C04FD7BA7C}
LOST_EVENT_DATA1 = 0x6A399AE0            # {6A399AE0-4BC6-4DE9-870B-3657F8947E7E}
KERNEL_PROCESS_IDS = frozenset({1, 2, 15})

PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
TOKEN_QUERY = 0x0008
TOKEN_INTEGRITY_LEVEL = 25
PROCESS_COMMAND_LINE_INFORMATION = 60    # NtQueryInformationProcess, Windows 8.1+
STATUS_INFO_LENGTH_MISMATCH = 0xC0000004
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_BUFFER_OVERFLOW = 0x80000005


def load_pywintrace() -> Any:
    """Import pywintrace 0.2.0, undoing the ``logging.basicConfig`` it runs at import."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from etw import evntcons, evntrace  # pywintrace; NOT the unrelated PyPI package "etw"
        from etw.etw import TraceProperties
        from etw.GUID import GUID
    except Exception as exc:  # noqa: BLE001 - ImportError, or AttributeError (ctypes.oledll) off Windows
        from .base import SourceUnavailable
        raise SourceUnavailable(f"pywintrace (import name etw) is unusable here: {exc!r}; "
                                "on Windows: pip install pywintrace==0.2.0") from exc
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    return _Etw(evntrace, evntcons, TraceProperties, GUID)


class _Etw:
    __slots__ = ("et", "ec", "TraceProperties", "GUID")

    def __init__(self, et, ec, tp, guid):
        self.et, self.ec, self.TraceProperties, self.GUID = et, ec, tp, guid


def _props_dict(p: Any) -> dict:
    return {"EventsLost": p.EventsLost, "RealTimeBuffersLost": p.RealTimeBuffersLost,
            "LogBuffersLost": p.LogBuffersLost, "BuffersWritten": p.BuffersWritten,
            "NumberOfBuffers": p.NumberOfBuffers, "FreeBuffers": p.FreeBuffers,
            "BufferSize": p.BufferSize, "MinimumBuffers": p.MinimumBuffers,
            "MaximumBuffers": p.MaximumBuffers, "LogFileMode": p.LogFileMode}


# EVENT_RECORD as laid out by the Windows SDK (evntcons.h): EVENT_HEADER (80 bytes: Flags @4,
# ProcessId @12, TimeStamp @16, ProviderId.Data1 @24, EventDescriptor Id @40 Version @42
# Opcode @45), ETW_BUFFER_CONTEXT @80, ExtendedDataCount @84, UserDataLength @86, then the
# ExtendedData and UserData pointers.  One unpack instead of a walk through ctypes objects.
RECORD_HEADER_64 = struct.Struct("<4xH6xIqI12xHB2xB40xH8xQ")   # 104 bytes
RECORD_HEADER_32 = struct.Struct("<4xH6xIqI12xHB2xB40xH4xI")   # 96 bytes


def make_record_callback(src: int, sink: Callable[[tuple], None], errors: list[int],
                         pointer_size: int | None = None) -> Callable[[int], None]:
    """The callback body for one session, taking the EVENT_RECORD address (hot path)."""
    import ctypes
    string_at = ctypes.string_at
    hdr = RECORD_HEADER_64 if (pointer_size or ctypes.sizeof(ctypes.c_void_p)) == 8 else RECORD_HEADER_32
    unpack, size = hdr.unpack, hdr.size
    want = KERNEL_PROCESS_DATA1 if src == SRC_KERNEL_PROCESS else PROCESS_CLASS_DATA1
    ids = KERNEL_PROCESS_IDS if src == SRC_KERNEL_PROCESS else None

    def on_record(address):
        try:
            flags, pid, ts, data1, eid, version, opcode, n, user_data = unpack(string_at(address, size))
            if data1 == want:
                if ids is not None and eid not in ids:
                    return
                s = src
            elif data1 == LOST_EVENT_DATA1:
                s = SRC_LOST
            else:
                return            # the session's EventTrace header and anything unexpected
            # UserData is only valid during the call: copy it.
            sink((s, eid, version, opcode, pid, ts, flags, string_at(user_data, n) if n else b""))
        except BaseException:  # noqa: BLE001 - nothing may propagate into ProcessTrace
            errors[0] += 1
    return on_record


class _Consumer:
    """OpenTrace + a thread blocked in ProcessTrace; ``alive`` turns False when it returns."""

    def __init__(self, lib: _Etw, spec: SessionSpec, sink: Callable[[tuple], None]) -> None:
        import ctypes
        et = lib.et
        self._lib = lib
        self.errors = [0]
        src = SRC_SYSTEM_LOGGER if spec.kind == "system_logger" else SRC_KERNEL_PROCESS
        # Both objects must outlive ProcessTrace: ETW calls back through them.
        # The callback takes the record's address (c_void_p), cast to pywintrace's prototype
        # (WINFUNCTYPE(None, POINTER(EVENT_RECORD))): the same ABI, no per-call pointer object.
        self._raw_callback = ctypes.WINFUNCTYPE(None, ctypes.c_void_p)(
            make_record_callback(src, sink, self.errors))
        self._callback = ctypes.cast(self._raw_callback, et.EVENT_RECORD_CALLBACK)
        self._logfile = et.EVENT_TRACE_LOGFILE()
        self._logfile.LoggerName = spec.name
        self._logfile.ProcessTraceMode = PROCESS_TRACE_MODE_REAL_TIME | PROCESS_TRACE_MODE_EVENT_RECORD
        self._logfile.EventRecordCallback = self._callback
        handle = et.OpenTraceW(ctypes.byref(self._logfile))
        handle = int(getattr(handle, "value", handle))
        if handle in INVALID_PROCESSTRACE_HANDLES:
            raise SessionError(f"OpenTrace({spec.name!r}) failed: {ctypes.FormatError()}")
        self._handle = et.TRACEHANDLE(handle)
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"etw-consumer-{spec.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ctypes
        self.status = self._lib.et.ProcessTrace(ctypes.byref(self._handle), 1, None, None)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        self._lib.et.CloseTrace(self._handle)
        self._thread.join(timeout)


class PywintraceBackend:
    """The ``etw_session.Backend`` on Windows, over pywintrace 0.2.0's ctypes bindings."""

    def __init__(self) -> None:
        self._lib = load_pywintrace()
        self._handles: dict[str, Any] = {}
        self._flush_props: dict[str, Any] = {}

    def _new_props(self, spec: SessionSpec | None = None) -> Any:
        lib = self._lib
        if spec is None:
            return lib.TraceProperties()
        tp = lib.TraceProperties(ring_buf_size=spec.buffer_kb, min_buffers=spec.min_buffers,
                                 max_buffers=spec.max_buffers)
        c = tp.get().contents
        c.Wnode.Flags = WNODE_FLAG_TRACED_GUID
        c.Wnode.ClientContext = 1                  # QPC timestamps
        c.FlushTimer = 1                           # seconds; the forced flush does better
        mode = EVENT_TRACE_REAL_TIME_MODE
        if spec.no_per_processor_buffering:
            mode |= EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING
        if spec.kind == "system_logger":
            mode |= EVENT_TRACE_SYSTEM_LOGGER_MODE     # Windows 8+: a private kernel logger
            c.EnableFlags = spec.enable_flags
        c.LogFileMode = mode
        return tp

    def _control(self, spec: SessionSpec, code: int, props: Any = None) -> tuple[int, Any]:
        et = self._lib.et
        props = props if props is not None else self._new_props()   # fresh: ControlTrace writes back
        status = et.ControlTraceW(et.TRACEHANDLE(0), spec.name, props.get(), code)
        return status, props

    def stop_session(self, spec: SessionSpec) -> dict | None:
        status, props = self._control(spec, EVENT_TRACE_CONTROL_STOP)
        self._handles.pop(spec.name, None)
        if status == ERROR_WMI_INSTANCE_NOT_FOUND:
            return None
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(STOP, {spec.name!r}) failed: Windows error {status}")
        return _props_dict(props.get().contents)

    def start_session(self, spec: SessionSpec) -> None:
        import ctypes
        et = self._lib.et
        handle = et.TRACEHANDLE()
        props = self._new_props(spec)
        status = et.StartTraceW(ctypes.byref(handle), spec.name, props.get())
        if status == ERROR_ALREADY_EXISTS:
            raise SessionExistsError(f"StartTrace({spec.name!r}): session already exists")
        if status != ERROR_SUCCESS:
            hint = " (run elevated: administrators or Performance Log Users)" if status == ERROR_ACCESS_DENIED else ""
            raise SessionError(f"StartTrace({spec.name!r}) failed: Windows error {status}{hint}")
        self._handles[spec.name] = (handle, props)

    def _enable(self, spec: SessionSpec, code: int) -> None:
        import ctypes
        et = self._lib.et
        handle, _ = self._handles[spec.name]
        guid = self._lib.GUID(spec.provider_guid)
        status = et.EnableTraceEx2(handle, ctypes.byref(guid), code, spec.level, spec.keywords, 0, 0, None)
        if status != ERROR_SUCCESS:
            raise SessionError(f"EnableTraceEx2(code {code}, {spec.provider_guid}) failed: Windows error {status}")

    def enable_provider(self, spec: SessionSpec) -> None:
        self._enable(spec, EVENT_CONTROL_CODE_ENABLE_PROVIDER)

    def capture_state(self, spec: SessionSpec) -> None:
        self._enable(spec, EVENT_CONTROL_CODE_CAPTURE_STATE)

    def open_consumer(self, spec: SessionSpec, sink: Callable[[tuple], None]) -> _Consumer:
        return _Consumer(self._lib, spec, sink)

    def flush(self, spec: SessionSpec) -> None:
        props = self._flush_props.get(spec.name)
        if props is None:
            props = self._flush_props[spec.name] = self._new_props()
        status, _ = self._control(spec, EVENT_TRACE_CONTROL_FLUSH, props)
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(FLUSH, {spec.name!r}) failed: Windows error {status}")

    def query(self, spec: SessionSpec) -> dict | None:
        status, props = self._control(spec, EVENT_TRACE_CONTROL_QUERY)
        if status == ERROR_WMI_INSTANCE_NOT_FOUND:
            return None
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(QUERY, {spec.name!r}) failed: Windows error {status}")
        return _props_dict(props.get().contents)


# -- enrichment helpers (windll) --------------------------------------------------------------

def dos_device_map() -> dict[str, str]:
    """``{"\\Device\\HarddiskVolume3": "C:", ...}`` from QueryDosDevice for every drive letter."""
    import ctypes
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    mask = k32.GetLogicalDrives()
    buf = ctypes.create_unicode_buffer(4096)
    out: dict[str, str] = {}
    for i in range(26):
        if not mask & (1 << i):
            continue
        letter = chr(ord("A") + i) + ":"
        if k32.QueryDosDeviceW(letter, buf, len(buf)):
            target = buf.value                  # the first string of the MULTI_SZ: the current mapping
            if target.startswith("\\Device\\") and target not in out:
                out[target] = letter            # subst drives (\??\C:\dir) are skipped
    return out


def _no_such(pid: int, err: int) -> Exception:
    import psutil
    if err == ERROR_ACCESS_DENIED:
        return psutil.AccessDenied(pid)
    return psutil.NoSuchProcess(pid)


def read_command_line(pid: int) -> str | None:
    """The exact command line via NtQueryInformationProcess(ProcessCommandLineInformation)."""
    import ctypes
    from ctypes import wintypes as wt
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    ntdll = ctypes.WinDLL("ntdll")
    k32.OpenProcess.restype = wt.HANDLE
    ntdll.NtQueryInformationProcess.restype = ctypes.c_ulong
    ntdll.NtQueryInformationProcess.argtypes = [wt.HANDLE, ctypes.c_ulong, ctypes.c_void_p,
                                                ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong)]
    h = k32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not h:
        raise _no_such(pid, ctypes.get_last_error())
    try:
        size = ctypes.c_ulong(0)
        status = ntdll.NtQueryInformationProcess(h, PROCESS_COMMAND_LINE_INFORMATION, None, 0, ctypes.byref(size))
        if status not in (STATUS_INFO_LENGTH_MISMATCH, STATUS_BUFFER_TOO_SMALL, STATUS_BUFFER_OVERFLOW, 0) or not size.value:
            return None
        buf = ctypes.create_string_buffer(size.value)
        status = ntdll.NtQueryInformationProcess(h, PROCESS_COMMAND_LINE_INFORMATION, buf, size, ctypes.byref(size))
        if status != 0:
            return None

        class UNICODE_STRING(ctypes.Structure):
            _fields_ = [("Length", ctypes.c_ushort), ("MaximumLength", ctypes.c_ushort),
                        ("Buffer", ctypes.c_void_p)]
        us = UNICODE_STRING.from_buffer(buf)
        if not us.Buffer or not us.Length:
            return None
        return ctypes.wstring_at(us.Buffer, us.Length // 2)
    finally:
        k32.CloseHandle(h)


def read_integrity_level(pid: int) -> str | None:
    """The process token's integrity level as Sysmon names it (Low, Medium, High, System...)."""
    import ctypes
    from ctypes import wintypes as wt

    from .records import integrity_name
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    adv = ctypes.WinDLL("advapi32", use_last_error=True)
    k32.OpenProcess.restype = wt.HANDLE
    adv.GetSidSubAuthorityCount.restype = ctypes.POINTER(ctypes.c_ubyte)
    adv.GetSidSubAuthority.restype = ctypes.POINTER(wt.DWORD)
    adv.GetSidSubAuthority.argtypes = [ctypes.c_void_p, wt.DWORD]
    adv.GetSidSubAuthorityCount.argtypes = [ctypes.c_void_p]
    h = k32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not h:
        raise _no_such(pid, ctypes.get_last_error())
    token = wt.HANDLE()
    try:
        if not adv.OpenProcessToken(h, TOKEN_QUERY, ctypes.byref(token)):
            raise _no_such(pid, ctypes.get_last_error())
        size = wt.DWORD(0)
        adv.GetTokenInformation(token, TOKEN_INTEGRITY_LEVEL, None, 0, ctypes.byref(size))
        if not size.value:
            return None
        buf = ctypes.create_string_buffer(size.value)
        if not adv.GetTokenInformation(token, TOKEN_INTEGRITY_LEVEL, buf, size, ctypes.byref(size)):
            return None
        psid = ctypes.c_void_p.from_buffer(buf).value    # TOKEN_MANDATORY_LABEL.Label.Sid
        count = adv.GetSidSubAuthorityCount(psid).contents.value
        rid = adv.GetSidSubAuthority(psid, count - 1).contents.value if count else 0
        return integrity_name(f"S-1-16-{rid}")
    finally:
        if token:
            k32.CloseHandle(token)
        k32.CloseHandle(h)


def lookup_account(sid: str) -> str | None:
    """``DOMAIN\\user`` for a SID string via LookupAccountSid; None when it has no name."""
    import ctypes
    from ctypes import wintypes as wt
    adv = ctypes.WinDLL("advapi32", use_last_error=True)
    k32 = ctypes.WinDLL("kernel32")
    psid = ctypes.c_void_p()
    if not adv.ConvertStringSidToSidW(sid, ctypes.byref(psid)):
        return None
    try:
        name = ctypes.create_unicode_buffer(256)
        domain = ctypes.create_unicode_buffer(256)
        n, d, use = wt.DWORD(256), wt.DWORD(256), wt.DWORD()
        if not adv.LookupAccountSidW(None, psid, name, ctypes.byref(n), domain, ctypes.byref(d), ctypes.byref(use)):
            return None
        return f"{domain.value}\\{name.value}" if domain.value else name.value
    finally:
        k32.LocalFree(psid)


def platform_parts() -> tuple["PywintraceBackend", dict]:
    """The session backend and readers the platform-neutral ``EtwSource`` takes."""
    return PywintraceBackend(), helpers()


def helpers() -> dict:
    """The Windows readers the platform-neutral source takes by injection."""
    return {
        "device_loader": dos_device_map,
        "cmdline_reader": read_command_line,
        "integrity_reader": read_integrity_level,
        "sid_resolver": lookup_account,
        "system_root": os.environ.get("SystemRoot", "C:\\Windows"),
    }
