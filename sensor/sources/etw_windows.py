"""Windows-only layer of the ETW source: the Win32 calls (advapi32, kernel32, ntdll) through ctypes.

The structures and prototypes are declared here with fixed-width types, laid out as the Windows
SDK lays them out (LLP64: ULONG is 4 bytes, WCHAR 2, pointers the process's size).  They never
depend on ``ctypes.wintypes``, whose sizes follow the host: so the same declarations load on
Linux against the test suite's fake Win32 library (``tests/abi/fake_win32.c``), which reads and
writes every structure at the offsets the mingw-w64 headers give (``tests/abi/win64_layout.h``,
generated, and compared with these declarations by ``tests/test_etw_abi.py``).  Strings cross the
boundary as UTF-16LE buffers for the same reason.

The libraries come in through a ``Win32`` object: ``load_win32()`` opens the real ones on Windows;
the tests open the fake one.  Nothing here runs at import except the declarations, so this module
imports on any OS; the logic it serves (session lifecycle, decoding, enrichment) lives in pure
modules tested on Linux.

The consumer is the raw-record path: the callback receives the EVENT_RECORD address, unpacks the
header fields it needs in one ``struct`` call (the format is computed from the declared
structure), copies ``UserData``, hands one tuple to the sink (a bounded, non-blocking queue put)
and returns.  No TDH call.
"""
from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
import threading
from ctypes import POINTER, Structure, byref, c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p
from typing import Any, Callable

from .etw_raw import SRC_KERNEL_PROCESS, SRC_LOST, SRC_SYSTEM_LOGGER
from .etw_session import SessionError, SessionExistsError, SessionSpec

log = logging.getLogger(__name__)

ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87
ERROR_ALREADY_EXISTS = 183
ERROR_CANCELLED = 1223
ERROR_TIMEOUT = 1460
ERROR_WMI_INSTANCE_NOT_FOUND = 4201

EVENT_TRACE_CONTROL_QUERY = 0
EVENT_TRACE_CONTROL_STOP = 1
EVENT_TRACE_CONTROL_FLUSH = 3
EVENT_CONTROL_CODE_ENABLE_PROVIDER = 1
EVENT_CONTROL_CODE_CAPTURE_STATE = 2

EVENT_TRACE_REAL_TIME_MODE = 0x00000100
EVENT_TRACE_SYSTEM_LOGGER_MODE = 0x02000000
EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING = 0x10000000
# FlushTimer counts milliseconds instead of seconds (EVENT_TRACE_PROPERTIES, LogFileMode;
# the mingw-w64 headers do not define it).
EVENT_TRACE_USE_MS_FLUSH_TIMER = 0x00000010
WNODE_FLAG_TRACED_GUID = 0x00020000
PROCESS_TRACE_MODE_REAL_TIME = 0x00000100
PROCESS_TRACE_MODE_EVENT_RECORD = 0x10000000
# INVALID_PROCESSTRACE_HANDLE is (TRACEHANDLE)INVALID_HANDLE_VALUE: all ones from a 64-bit
# process, the zero-extended 32-bit value from a 32-bit one.
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

# EnableTraceEx2 waits this long for the provider to apply an enable or capture-state request;
# with 0 the call is asynchronous and a capture-state request right after an enable can reach
# the provider before the enable did.
ENABLE_TIMEOUT_MS = 10_000
# Room for the logger and log-file names after EVENT_TRACE_PROPERTIES (names <= 1023 chars).
NAME_ROOM = 2048

# -- the declarations (fixed-width, LLP64) ----------------------------------------------------


class GUID(Structure):
    _fields_ = [("Data1", c_uint32), ("Data2", c_uint16), ("Data3", c_uint16), ("Data4", c_uint8 * 8)]

    @classmethod
    def parse(cls, text: str) -> "GUID":
        """A GUID from ``{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}``."""
        h = text.strip("{}").replace("-", "")
        if len(h) != 32:
            raise ValueError(f"not a GUID: {text!r}")
        g = cls(int(h[0:8], 16), int(h[8:12], 16), int(h[12:16], 16))
        g.Data4[:] = bytes.fromhex(h[16:])
        return g


class WNODE_HEADER(Structure):
    _fields_ = [("BufferSize", c_uint32), ("ProviderId", c_uint32), ("HistoricalContext", c_uint64),
                ("TimeStamp", c_int64), ("Guid", GUID), ("ClientContext", c_uint32), ("Flags", c_uint32)]


class EVENT_TRACE_PROPERTIES(Structure):
    _fields_ = [("Wnode", WNODE_HEADER), ("BufferSize", c_uint32), ("MinimumBuffers", c_uint32),
                ("MaximumBuffers", c_uint32), ("MaximumFileSize", c_uint32), ("LogFileMode", c_uint32),
                ("FlushTimer", c_uint32), ("EnableFlags", c_uint32), ("AgeLimit", c_int32),
                ("NumberOfBuffers", c_uint32), ("FreeBuffers", c_uint32), ("EventsLost", c_uint32),
                ("BuffersWritten", c_uint32), ("LogBuffersLost", c_uint32),
                ("RealTimeBuffersLost", c_uint32), ("LoggerThreadId", c_void_p),
                ("LogFileNameOffset", c_uint32), ("LoggerNameOffset", c_uint32)]


class EVENT_TRACE_HEADER(Structure):
    _fields_ = [("Size", c_uint16), ("FieldTypeFlags", c_uint16), ("Version", c_uint32),
                ("ThreadId", c_uint32), ("ProcessId", c_uint32), ("TimeStamp", c_int64), ("Guid", GUID),
                ("KernelTime", c_uint32), ("UserTime", c_uint32)]


class EVENT_TRACE(Structure):
    _fields_ = [("Header", EVENT_TRACE_HEADER), ("InstanceId", c_uint32), ("ParentInstanceId", c_uint32),
                ("ParentGuid", GUID), ("MofData", c_void_p), ("MofLength", c_uint32),
                ("ClientContext", c_uint32)]


class TRACE_LOGFILE_HEADER(Structure):
    _fields_ = [("BufferSize", c_uint32), ("Version", c_uint32), ("ProviderVersion", c_uint32),
                ("NumberOfProcessors", c_uint32), ("EndTime", c_int64), ("TimerResolution", c_uint32),
                ("MaximumFileSize", c_uint32), ("LogFileMode", c_uint32), ("BuffersWritten", c_uint32),
                ("StartBuffers", c_uint32), ("PointerSize", c_uint32), ("EventsLost", c_uint32),
                ("CpuSpeedInMHz", c_uint32), ("LoggerName", c_void_p), ("LogFileName", c_void_p),
                ("TimeZone", c_uint8 * 172), ("BootTime", c_int64), ("PerfFreq", c_int64),
                ("StartTime", c_int64), ("ReservedFlags", c_uint32), ("BuffersLost", c_uint32)]


class EVENT_TRACE_LOGFILEW(Structure):
    _fields_ = [("LogFileName", c_void_p), ("LoggerName", c_void_p), ("CurrentTime", c_int64),
                ("BuffersRead", c_uint32), ("ProcessTraceMode", c_uint32), ("CurrentEvent", EVENT_TRACE),
                ("LogfileHeader", TRACE_LOGFILE_HEADER), ("BufferCallback", c_void_p),
                ("BufferSize", c_uint32), ("Filled", c_uint32), ("EventsLost", c_uint32),
                ("EventRecordCallback", c_void_p), ("IsKernelTrace", c_uint32), ("Context", c_void_p)]


class EVENT_DESCRIPTOR(Structure):
    _fields_ = [("Id", c_uint16), ("Version", c_uint8), ("Channel", c_uint8), ("Level", c_uint8),
                ("Opcode", c_uint8), ("Task", c_uint16), ("Keyword", c_uint64)]


class EVENT_HEADER(Structure):
    _fields_ = [("Size", c_uint16), ("HeaderType", c_uint16), ("Flags", c_uint16),
                ("EventProperty", c_uint16), ("ThreadId", c_uint32), ("ProcessId", c_uint32),
                ("TimeStamp", c_int64), ("ProviderId", GUID), ("EventDescriptor", EVENT_DESCRIPTOR),
                ("KernelTime", c_uint32), ("UserTime", c_uint32), ("ActivityId", GUID)]


class ETW_BUFFER_CONTEXT(Structure):
    _fields_ = [("ProcessorNumber", c_uint8), ("Alignment", c_uint8), ("LoggerId", c_uint16)]


class EVENT_RECORD(Structure):
    _fields_ = [("EventHeader", EVENT_HEADER), ("BufferContext", ETW_BUFFER_CONTEXT),
                ("ExtendedDataCount", c_uint16), ("UserDataLength", c_uint16),
                ("ExtendedData", c_void_p), ("UserData", c_void_p), ("UserContext", c_void_p)]


class UNICODE_STRING(Structure):
    _fields_ = [("Length", c_uint16), ("MaximumLength", c_uint16), ("Buffer", c_void_p)]


def record_header_format(off: dict[str, int], pointer_size: int) -> struct.Struct:
    """One ``struct`` reading, from an EVENT_RECORD, the fields the callback needs.

    ``off`` gives the offsets of ``EVENT_HEADER.{Flags,ThreadId,ProcessId,TimeStamp,ProviderId,
    EventDescriptor}``, ``EVENT_DESCRIPTOR.{Id,Version,Opcode}`` and ``EVENT_RECORD.{EventHeader,
    UserDataLength,UserData}``.  The unpacked order: Flags, ThreadId, ProcessId, TimeStamp,
    ProviderId.Data1, Id, Version, Opcode, UserDataLength, UserData."""
    h = off["EVENT_RECORD.EventHeader"]
    d = h + off["EVENT_HEADER.EventDescriptor"]
    fields = [(h + off["EVENT_HEADER.Flags"], "H"), (h + off["EVENT_HEADER.ThreadId"], "I"),
              (h + off["EVENT_HEADER.ProcessId"], "I"), (h + off["EVENT_HEADER.TimeStamp"], "q"),
              (h + off["EVENT_HEADER.ProviderId"], "I"), (d + off["EVENT_DESCRIPTOR.Id"], "H"),
              (d + off["EVENT_DESCRIPTOR.Version"], "B"), (d + off["EVENT_DESCRIPTOR.Opcode"], "B"),
              (off["EVENT_RECORD.UserDataLength"], "H"),
              (off["EVENT_RECORD.UserData"], "Q" if pointer_size == 8 else "I")]
    fmt, pos = "<", 0
    for at, code in fields:
        if at < pos:
            raise ValueError("record fields out of order")
        fmt += f"{at - pos}x" if at > pos else ""
        fmt += code
        pos = at + struct.calcsize("<" + code)
    return struct.Struct(fmt)


def declared_offsets() -> dict[str, int]:
    """The offsets ``record_header_format`` needs, from the declarations above."""
    return {"EVENT_RECORD.EventHeader": EVENT_RECORD.EventHeader.offset,
            "EVENT_RECORD.UserDataLength": EVENT_RECORD.UserDataLength.offset,
            "EVENT_RECORD.UserData": EVENT_RECORD.UserData.offset,
            **{f"EVENT_HEADER.{n}": getattr(EVENT_HEADER, n).offset
               for n in ("Flags", "ThreadId", "ProcessId", "TimeStamp", "ProviderId", "EventDescriptor")},
            **{f"EVENT_DESCRIPTOR.{n}": getattr(EVENT_DESCRIPTOR, n).offset for n in ("Id", "Version", "Opcode")}}


RECORD_HEADER = record_header_format(declared_offsets(), ctypes.sizeof(c_void_p))

# -- the libraries ----------------------------------------------------------------------------


def _declare(fn: Any, restype: Any, *argtypes: Any) -> None:
    fn.restype = restype
    fn.argtypes = list(argtypes)


class Win32:
    """The three Win32 libraries with their prototypes declared, and how to read the last error.

    ``last_error`` returns the error the most recent call on this thread left (``ctypes.
    get_last_error`` with ``use_last_error=True`` libraries on Windows); ``describe(code)`` the
    text for it; ``functype`` makes the callback type (WINFUNCTYPE; the same ABI as CFUNCTYPE
    on x64)."""

    def __init__(self, advapi32: Any, kernel32: Any, ntdll: Any, last_error: Callable[[], int],
                 format_error: Callable[[int], str], functype: Callable[..., Any]) -> None:
        self.adv, self.k32, self.ntdll = advapi32, kernel32, ntdll
        self.last_error = last_error
        self._format_error = format_error
        self.functype = functype
        a, k, n = advapi32, kernel32, ntdll
        p = c_void_p
        _declare(a.StartTraceW, c_uint32, POINTER(c_uint64), p, p)
        _declare(a.ControlTraceW, c_uint32, c_uint64, p, p, c_uint32)
        # Level is a UCHAR: c_uint8 takes 0..255 (and the spec validates it before).
        _declare(a.EnableTraceEx2, c_uint32, c_uint64, POINTER(GUID), c_uint32, c_uint8, c_uint64,
                 c_uint64, c_uint32, p)
        _declare(a.OpenTraceW, c_uint64, POINTER(EVENT_TRACE_LOGFILEW))
        _declare(a.ProcessTrace, c_uint32, POINTER(c_uint64), c_uint32, p, p)
        _declare(a.CloseTrace, c_uint32, c_uint64)
        _declare(a.OpenProcessToken, c_int32, p, c_uint32, POINTER(c_void_p))
        _declare(a.GetTokenInformation, c_int32, p, c_uint32, p, c_uint32, POINTER(c_uint32))
        _declare(a.GetSidSubAuthorityCount, POINTER(c_uint8), p)
        _declare(a.GetSidSubAuthority, POINTER(c_uint32), p, c_uint32)
        _declare(a.ConvertStringSidToSidW, c_int32, p, POINTER(c_void_p))
        _declare(a.LookupAccountSidW, c_int32, p, p, p, POINTER(c_uint32), p, POINTER(c_uint32),
                 POINTER(c_uint32))
        _declare(k.GetLogicalDrives, c_uint32)
        _declare(k.QueryDosDeviceW, c_uint32, p, p, c_uint32)
        _declare(k.OpenProcess, c_void_p, c_uint32, c_int32, c_uint32)
        _declare(k.CloseHandle, c_int32, p)
        _declare(k.LocalFree, c_void_p, p)
        _declare(n.NtQueryInformationProcess, c_uint32, p, c_uint32, p, c_uint32, POINTER(c_uint32))

    def describe(self, code: int) -> str:
        """``Windows error N (text)``."""
        try:
            text = (self._format_error(code) or "").strip()
        except Exception:  # noqa: BLE001 - a message is a courtesy
            text = ""
        return f"Windows error {code}" + (f" ({text})" if text else "")


def load_win32() -> Win32:
    """The real libraries (Windows only); SourceUnavailable elsewhere."""
    if sys.platform != "win32":
        from .base import SourceUnavailable
        raise SourceUnavailable("the ETW source needs Windows (use replay on other systems)")
    return Win32(ctypes.WinDLL("advapi32", use_last_error=True),
                 ctypes.WinDLL("kernel32", use_last_error=True),
                 ctypes.WinDLL("ntdll", use_last_error=True),
                 ctypes.get_last_error, ctypes.FormatError, ctypes.WINFUNCTYPE)


def wide(text: str) -> ctypes.Array:
    """A NUL-terminated UTF-16LE buffer (LPCWSTR), the same on every host."""
    return ctypes.create_string_buffer(text.encode("utf-16-le") + b"\0\0")


def from_wide(raw: bytes) -> str:
    """The UTF-16LE text up to the first NUL."""
    text = raw.decode("utf-16-le", "replace")
    return text.split("\0", 1)[0]


# -- the record callback ----------------------------------------------------------------------

def make_record_callback(src: int, sink: Callable[[tuple], None], errors: list[int],
                         header: struct.Struct | None = None) -> Callable[[int], None]:
    """The callback body for one session, taking the EVENT_RECORD address (hot path)."""
    string_at = ctypes.string_at
    hdr = header or RECORD_HEADER
    unpack, size = hdr.unpack, hdr.size
    want = KERNEL_PROCESS_DATA1 if src == SRC_KERNEL_PROCESS else PROCESS_CLASS_DATA1
    ids = KERNEL_PROCESS_IDS if src == SRC_KERNEL_PROCESS else None

    def on_record(address):
        try:
            flags, tid, pid, ts, data1, eid, version, opcode, n, user_data = unpack(string_at(address, size))
            if data1 == want:
                if ids is not None and eid not in ids:
                    return
                s = src
            elif data1 == LOST_EVENT_DATA1:
                s = SRC_LOST
            else:
                return            # the session's EventTrace header and anything unexpected
            # UserData is only valid during the call: copy it.
            sink((s, eid, version, opcode, pid, tid, ts, flags, string_at(user_data, n) if n else b""))
        except BaseException:  # noqa: BLE001 - nothing may propagate into ProcessTrace
            errors[0] += 1
    return on_record


class _Consumer:
    """OpenTrace + a thread blocked in ProcessTrace; ``alive`` turns False when it returns.

    ``status`` is ProcessTrace's return value once it returned (None while it runs),
    ``errors[0]`` the records whose callback failed."""

    def __init__(self, api: Win32, spec: SessionSpec, sink: Callable[[tuple], None]) -> None:
        self._api = api
        self.errors = [0]
        self.status: int | None = None
        self.error: str | None = None
        src = SRC_SYSTEM_LOGGER if spec.kind == "system_logger" else SRC_KERNEL_PROCESS
        # These objects must outlive ProcessTrace: ETW calls back through them.
        self._callback = api.functype(None, c_void_p)(make_record_callback(src, sink, self.errors))
        self._name = wide(spec.name)
        self._logfile = EVENT_TRACE_LOGFILEW()
        self._logfile.LoggerName = ctypes.addressof(self._name)
        self._logfile.ProcessTraceMode = PROCESS_TRACE_MODE_REAL_TIME | PROCESS_TRACE_MODE_EVENT_RECORD
        self._logfile.EventRecordCallback = ctypes.cast(self._callback, c_void_p).value
        handle = api.adv.OpenTraceW(byref(self._logfile))
        if handle in INVALID_PROCESSTRACE_HANDLES:
            raise SessionError(f"OpenTrace({spec.name!r}) failed: {api.describe(api.last_error())}")
        self._handle = c_uint64(handle)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"etw-consumer-{spec.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            status = int(self._api.adv.ProcessTrace(byref(self._handle), 1, None, None))
        except BaseException as exc:  # noqa: BLE001 - recorded; the watchdog acts on it
            self.error = f"ProcessTrace raised {exc!r}"
            status = -1
        if status not in (ERROR_SUCCESS, -1):
            self.error = f"ProcessTrace returned {self._api.describe(status)}"
        self.status = status

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        if not self._closed:
            self._closed = True
            self._api.adv.CloseTrace(self._handle.value)
        self._thread.join(timeout)


class Win32Backend:
    """The ``etw_session.Backend`` on Windows (or on the fake Win32 library in the tests)."""

    def __init__(self, api: Win32 | None = None) -> None:
        self.api = api if api is not None else load_win32()
        self._handles: dict[str, int] = {}

    @staticmethod
    def new_props(spec: SessionSpec | None = None) -> ctypes.Array:
        """A zeroed EVENT_TRACE_PROPERTIES with room for the names; StartTrace's settings when
        ``spec`` is given.  Every ControlTrace call gets a new one: ETW writes the session's
        state back into it, and the documentation asks for a zeroed structure on input."""
        size = ctypes.sizeof(EVENT_TRACE_PROPERTIES) + NAME_ROOM * 2
        buf = ctypes.create_string_buffer(size)
        p = EVENT_TRACE_PROPERTIES.from_buffer(buf)
        p.Wnode.BufferSize = size
        p.Wnode.Flags = WNODE_FLAG_TRACED_GUID
        p.LoggerNameOffset = ctypes.sizeof(EVENT_TRACE_PROPERTIES)
        p.LogFileNameOffset = ctypes.sizeof(EVENT_TRACE_PROPERTIES) + NAME_ROOM
        if spec is not None:
            p.Wnode.ClientContext = 1                  # QPC timestamps
            p.BufferSize = spec.buffer_kb
            p.MinimumBuffers = spec.min_buffers
            p.MaximumBuffers = spec.max_buffers
            # ETW flushes on its own every flush interval, in milliseconds.
            p.FlushTimer = max(1, round(spec.flush_interval * 1000))
            mode = EVENT_TRACE_REAL_TIME_MODE | EVENT_TRACE_USE_MS_FLUSH_TIMER
            if spec.no_per_processor_buffering:
                mode |= EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING
            if spec.kind == "system_logger":
                mode |= EVENT_TRACE_SYSTEM_LOGGER_MODE     # Windows 8+: a private kernel logger
                p.EnableFlags = spec.enable_flags
            p.LogFileMode = mode
        return buf

    def _control(self, spec: SessionSpec, code: int) -> tuple[int, EVENT_TRACE_PROPERTIES]:
        buf = self.new_props()
        name = wide(spec.name)
        status = self.api.adv.ControlTraceW(0, name, buf, code)
        return int(status), EVENT_TRACE_PROPERTIES.from_buffer(buf)

    def stop_session(self, spec: SessionSpec) -> dict | None:
        status, props = self._control(spec, EVENT_TRACE_CONTROL_STOP)
        self._handles.pop(spec.name, None)
        if status == ERROR_WMI_INSTANCE_NOT_FOUND:
            return None
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(STOP, {spec.name!r}) failed: {self.api.describe(status)}")
        return props_dict(props)

    def start_session(self, spec: SessionSpec) -> None:
        handle = c_uint64(0)
        buf = self.new_props(spec)
        status = int(self.api.adv.StartTraceW(byref(handle), wide(spec.name), buf))
        if status == ERROR_ALREADY_EXISTS:
            raise SessionExistsError(f"StartTrace({spec.name!r}): session already exists")
        if status != ERROR_SUCCESS:
            hint = " (run elevated: administrators or Performance Log Users)" if status == ERROR_ACCESS_DENIED else ""
            raise SessionError(f"StartTrace({spec.name!r}) failed: {self.api.describe(status)}{hint}")
        self._handles[spec.name] = handle.value

    def _enable(self, spec: SessionSpec, code: int) -> None:
        guid = GUID.parse(spec.provider_guid or "")
        status = int(self.api.adv.EnableTraceEx2(self._handles[spec.name], byref(guid), code, spec.level,
                                                 spec.keywords, 0, ENABLE_TIMEOUT_MS, None))
        if status == ERROR_TIMEOUT:
            # The request stands; the provider has not confirmed it within the time-out.
            log.warning("EnableTraceEx2(code %d, %s): the provider did not confirm within %d ms",
                        code, spec.provider_guid, ENABLE_TIMEOUT_MS)
            return
        if status != ERROR_SUCCESS:
            raise SessionError(f"EnableTraceEx2(code {code}, {spec.provider_guid}) failed: "
                               f"{self.api.describe(status)}")

    def enable_provider(self, spec: SessionSpec) -> None:
        self._enable(spec, EVENT_CONTROL_CODE_ENABLE_PROVIDER)

    def capture_state(self, spec: SessionSpec) -> None:
        self._enable(spec, EVENT_CONTROL_CODE_CAPTURE_STATE)

    def open_consumer(self, spec: SessionSpec, sink: Callable[[tuple], None]) -> _Consumer:
        return _Consumer(self.api, spec, sink)

    def flush(self, spec: SessionSpec) -> None:
        status, _ = self._control(spec, EVENT_TRACE_CONTROL_FLUSH)
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(FLUSH, {spec.name!r}) failed: {self.api.describe(status)}")

    def query(self, spec: SessionSpec) -> dict | None:
        status, props = self._control(spec, EVENT_TRACE_CONTROL_QUERY)
        if status == ERROR_WMI_INSTANCE_NOT_FOUND:
            return None
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(QUERY, {spec.name!r}) failed: {self.api.describe(status)}")
        return props_dict(props)


def props_dict(p: EVENT_TRACE_PROPERTIES) -> dict:
    """The counters and settings ControlTrace wrote back, as plain data."""
    return {"EventsLost": p.EventsLost, "RealTimeBuffersLost": p.RealTimeBuffersLost,
            "LogBuffersLost": p.LogBuffersLost, "BuffersWritten": p.BuffersWritten,
            "NumberOfBuffers": p.NumberOfBuffers, "FreeBuffers": p.FreeBuffers,
            "BufferSize": p.BufferSize, "MinimumBuffers": p.MinimumBuffers,
            "MaximumBuffers": p.MaximumBuffers, "LogFileMode": p.LogFileMode,
            "FlushTimer": p.FlushTimer}


# -- enrichment helpers ----------------------------------------------------------------------

def dos_device_map(api: Win32) -> dict[str, str]:
    """``{"\\Device\\HarddiskVolume3": "C:", ...}`` from QueryDosDevice for every drive letter."""
    mask = api.k32.GetLogicalDrives()
    buf = ctypes.create_string_buffer(4096 * 2)
    out: dict[str, str] = {}
    for i in range(26):
        if not mask & (1 << i):
            continue
        letter = chr(ord("A") + i) + ":"
        if api.k32.QueryDosDeviceW(wide(letter), buf, 4096):
            target = from_wide(buf.raw)        # the first string of the MULTI_SZ: the current mapping
            if target.startswith("\\Device\\") and target not in out:
                out[target] = letter            # subst drives (\??\C:\dir) are skipped
    return out


def _no_such(pid: int, err: int) -> Exception:
    import psutil
    if err == ERROR_ACCESS_DENIED:
        return psutil.AccessDenied(pid)
    return psutil.NoSuchProcess(pid)


def read_command_line(api: Win32, pid: int) -> str | None:
    """The exact command line via NtQueryInformationProcess(ProcessCommandLineInformation)."""
    h = api.k32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid)
    if not h:
        raise _no_such(pid, api.last_error())
    try:
        size = c_uint32(0)
        status = api.ntdll.NtQueryInformationProcess(h, PROCESS_COMMAND_LINE_INFORMATION, None, 0, byref(size))
        if status not in (STATUS_INFO_LENGTH_MISMATCH, STATUS_BUFFER_TOO_SMALL, STATUS_BUFFER_OVERFLOW, 0) \
                or not size.value or size.value > 1 << 20:
            return None
        buf = ctypes.create_string_buffer(size.value)
        status = api.ntdll.NtQueryInformationProcess(h, PROCESS_COMMAND_LINE_INFORMATION, buf, size, byref(size))
        if status != 0:
            return None
        us = UNICODE_STRING.from_buffer(buf)
        if not us.Buffer or not us.Length:
            return None
        return ctypes.string_at(us.Buffer, us.Length).decode("utf-16-le", "replace")
    finally:
        api.k32.CloseHandle(h)


def read_integrity_level(api: Win32, pid: int) -> str | None:
    """The process token's integrity level as Sysmon names it (Low, Medium, High, System...)."""
    from .records import integrity_name
    h = api.k32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid)
    if not h:
        raise _no_such(pid, api.last_error())
    token = c_void_p()
    try:
        if not api.adv.OpenProcessToken(h, TOKEN_QUERY, byref(token)):
            raise _no_such(pid, api.last_error())
        size = c_uint32(0)
        api.adv.GetTokenInformation(token, TOKEN_INTEGRITY_LEVEL, None, 0, byref(size))
        if not size.value or size.value > 4096:
            return None
        buf = ctypes.create_string_buffer(size.value)
        if not api.adv.GetTokenInformation(token, TOKEN_INTEGRITY_LEVEL, buf, size, byref(size)):
            return None
        psid = c_void_p.from_buffer(buf).value    # TOKEN_MANDATORY_LABEL.Label.Sid
        count = api.adv.GetSidSubAuthorityCount(psid).contents.value
        rid = api.adv.GetSidSubAuthority(psid, count - 1).contents.value if count else 0
        return integrity_name(f"S-1-16-{rid}")
    finally:
        if token.value:
            api.k32.CloseHandle(token)
        api.k32.CloseHandle(h)


def lookup_account(api: Win32, sid: str) -> str | None:
    """``DOMAIN\\user`` for a SID string via LookupAccountSid; None when it has no name.

    It may wait on a domain controller: the source calls it from its resolver thread only."""
    psid = c_void_p()
    if not api.adv.ConvertStringSidToSidW(wide(sid), byref(psid)):
        return None
    try:
        name = ctypes.create_string_buffer(512)
        domain = ctypes.create_string_buffer(512)
        n, d, use = c_uint32(256), c_uint32(256), c_uint32()
        if not api.adv.LookupAccountSidW(None, psid, name, byref(n), domain, byref(d), byref(use)):
            return None
        user, dom = from_wide(name.raw), from_wide(domain.raw)
        return f"{dom}\\{user}" if dom else user
    finally:
        api.k32.LocalFree(psid)


def platform_parts(api: Win32 | None = None) -> tuple[Win32Backend, dict]:
    """The session backend and readers the platform-neutral ``EtwSource`` takes."""
    api = api if api is not None else load_win32()
    return Win32Backend(api), helpers(api)


def helpers(api: Win32) -> dict:
    """The Windows readers the platform-neutral source takes by injection."""
    return {
        "device_loader": lambda: dos_device_map(api),
        "cmdline_reader": lambda pid: read_command_line(api, pid),
        "integrity_reader": lambda pid: read_integrity_level(api, pid),
        "sid_resolver": lambda sid: lookup_account(api, sid),
        "system_root": os.environ.get("SystemRoot", "C:\\Windows"),
    }


def is_elevated() -> bool | None:
    """True when this process runs elevated (Windows), None when it cannot be told."""
    try:
        return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return None

