"""Windows-only layer of the ETW source: pywintrace 0.2.0's ETW bindings, and the Win32 calls
pywintrace does not declare.  The only module that imports pywintrace (import name ``etw``).

pywintrace 0.2.0 (PyPI ``pywintrace``; never the unrelated PyPI package ``etw``) provides the ETW
layer: the prototypes of StartTraceW, ControlTraceW, EnableTraceEx2, OpenTraceW, ProcessTrace
and CloseTrace and the structures EVENT_TRACE_PROPERTIES, EVENT_TRACE_LOGFILE and the record
callback type (``etw.evntrace``), EVENT_RECORD / EVENT_HEADER (``etw.evntcons``), GUID
(``etw.GUID``, parsed by ole32's CLSIDFromString) and the ETW constants.  Its ``ETW``,
``EventConsumer``, ``TraceProperties`` and TDH code is not used (docs/etw.md, "pywintrace"):
the consumer loop misses OpenTrace failures, ``ETW.start`` swallows ERROR_ALREADY_EXISTS without
enabling the providers, ``ETW.stop`` raises for a session stopped from outside, the callback
helper imports ``collections.Mapping`` (gone since Python 3.10).

What 0.2.0 lacks, or where its binding does not serve, the sensor declares here with fixed-width
types (LLP64: ULONG 4 bytes, WCHAR 2), each marked ``gap:``:

* EVENT_TRACE_CONTROL_FLUSH (3) and EVENT_TRACE_USE_MS_FLUSH_TIMER (0x10): not defined;
* the Win32 error codes, and both INVALID_PROCESSTRACE_HANDLE values: pywintrace's
  ``INVALID_PROCESSTRACE_HANDLE`` is a ``c_ulonglong`` object, which never compares equal to the
  integer OpenTraceW returns, and has only the 64-bit form;
* OpenTraceW's last error: pywintrace binds its prototypes through ``ctypes.windll``, without
  ``use_last_error``, so the error OpenTraceW leaves is lost; its prototype is bound again here
  to an advapi32 loaded with ``use_last_error`` (the other five return their error);
* the EVENT_TRACE_PROPERTIES block: ``TraceProperties`` sets LoggerNameOffset but not
  LogFileNameOffset (the ControlTrace documentation asks for both) and writes BufferSize into
  every block, so the block is laid out here over pywintrace's structure;
* kernel32 (drive letters, processes, handles), ntdll (NtQueryInformationProcess and
  UNICODE_STRING) and the token and account calls of advapi32: not declared (its ``LocalFree``
  has no prototype, so a 64-bit pointer would be passed as a C int).

The record callback is pywintrace's ``EVENT_RECORD_CALLBACK``; the header fields it needs are
read with one ``struct`` call whose format is computed from pywintrace's EVENT_RECORD offsets,
which are first checked against the Windows SDK's (``SDK_RECORD_OFFSETS``): a binding that
disagrees refuses to start instead of decoding garbage.

Nothing is imported at module import but the standard library, so this module imports on any
OS.  ``tests/fake_win32.py`` loads pywintrace with Windows' ctypes sizes over a fake Win32
library (``tests/abi/fake_win32.c``), through ``load_etw`` below.
"""
from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
import threading
from ctypes import POINTER, Structure, byref, c_int32, c_uint8, c_uint16, c_uint32, c_void_p
from typing import Any, Callable

from .base import SourceUnavailable
from .etw_raw import SRC_KERNEL_PROCESS, SRC_LOST, SRC_SYSTEM_LOGGER
from .etw_session import SessionError, SessionExistsError, SessionSpec

log = logging.getLogger(__name__)

# gap: Win32 error codes (winerror.h).
ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87
ERROR_ALREADY_EXISTS = 183
ERROR_CANCELLED = 1223
ERROR_TIMEOUT = 1460
ERROR_WMI_INSTANCE_NOT_FOUND = 4201

# gap: not defined by pywintrace 0.2.0 (evntrace.h).
EVENT_TRACE_CONTROL_FLUSH = 3
# gap: FlushTimer counts milliseconds instead of seconds (EVENT_TRACE_PROPERTIES, LogFileMode;
# neither pywintrace nor the mingw-w64 headers define it).
EVENT_TRACE_USE_MS_FLUSH_TIMER = 0x00000010
# gap: INVALID_PROCESSTRACE_HANDLE is (TRACEHANDLE)INVALID_HANDLE_VALUE: all ones from a 64-bit
# process, the zero-extended 32-bit value from a 32-bit one.
INVALID_PROCESSTRACE_HANDLES = (0xFFFFFFFFFFFFFFFF, 0x00000000FFFFFFFF)

# ProviderId.Data1 of the records each session delivers.
KERNEL_PROCESS_DATA1 = 0x22FB2CD6        # {22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716}
PROCESS_CLASS_DATA1 = 0x3D6FA8D0         # {3D6FA8D0-FE05-11D0-9DDA-00C04FD7BA7C}
LOST_EVENT_DATA1 = 0x6A399AE0            # {6A399AE0-4BC6-4DE9-870B-3657F8947E7E}
KERNEL_PROCESS_IDS = frozenset({1, 2, 15})

# gap: process, token and NT constants (winnt.h, winternl.h).
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
# Bytes for each of the logger and log-file names after EVENT_TRACE_PROPERTIES (1024 WCHARs,
# the documented maximum of either name).
NAME_ROOM = 2048

# The EVENT_RECORD fields the callback reads, at their offsets in the Windows SDK (evntcons.h,
# evntprov.h) for 8- and 4-byte pointers.  pywintrace's declarations must agree (checked at
# load); the tests compare both with the offsets the mingw-w64 headers give.
SDK_RECORD_OFFSETS = {
    8: {"EVENT_RECORD.EventHeader": 0, "EVENT_RECORD.UserDataLength": 86, "EVENT_RECORD.UserData": 96,
        "EVENT_HEADER.Flags": 4, "EVENT_HEADER.ThreadId": 8, "EVENT_HEADER.ProcessId": 12,
        "EVENT_HEADER.TimeStamp": 16, "EVENT_HEADER.ProviderId": 24, "EVENT_HEADER.EventDescriptor": 40,
        "EVENT_DESCRIPTOR.Id": 0, "EVENT_DESCRIPTOR.Version": 2, "EVENT_DESCRIPTOR.Opcode": 5},
    4: {"EVENT_RECORD.EventHeader": 0, "EVENT_RECORD.UserDataLength": 86, "EVENT_RECORD.UserData": 92,
        "EVENT_HEADER.Flags": 4, "EVENT_HEADER.ThreadId": 8, "EVENT_HEADER.ProcessId": 12,
        "EVENT_HEADER.TimeStamp": 16, "EVENT_HEADER.ProviderId": 24, "EVENT_HEADER.EventDescriptor": 40,
        "EVENT_DESCRIPTOR.Id": 0, "EVENT_DESCRIPTOR.Version": 2, "EVENT_DESCRIPTOR.Opcode": 5},
}


# gap: ntdll's UNICODE_STRING (NtQueryInformationProcess), with fixed-width types.
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


# The callback's format for this process when no binding is given (the SDK offsets).
RECORD_HEADER = record_header_format(SDK_RECORD_OFFSETS[ctypes.sizeof(c_void_p)], ctypes.sizeof(c_void_p))


# -- pywintrace ---------------------------------------------------------------------------------

class Pywintrace:
    """The pywintrace 0.2.0 modules the sensor uses: ``et`` (etw.evntrace), ``ec``
    (etw.evntcons), ``ep`` (etw.evntprov), ``ws`` (etw.wmistr) and the ``GUID`` class."""

    __slots__ = ("et", "ec", "ep", "ws", "GUID")

    def __init__(self, et: Any, ec: Any, ep: Any, ws: Any, guid: Any) -> None:
        self.et, self.ec, self.ep, self.ws, self.GUID = et, ec, ep, ws, guid


def import_pywintrace() -> Pywintrace:
    """Import pywintrace, undoing the ``logging.basicConfig`` its ``etw.common`` runs at import
    (which would configure the root logger and turn the sensor's own setup into a no-op).

    Off Windows the import fails (``etw.GUID`` reads ``ctypes.oledll``): SourceUnavailable."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from etw import evntcons, evntprov, evntrace, wmistr  # pywintrace; NOT the PyPI package "etw"
        from etw.GUID import GUID
    except Exception as exc:  # noqa: BLE001 - ImportError, or AttributeError (ctypes.oledll) off Windows
        raise SourceUnavailable(f"pywintrace (import name etw) is unusable here: {exc!r}; "
                                "on Windows: pip install pywintrace==0.2.0") from exc
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    return Pywintrace(evntrace, evntcons, evntprov, wmistr, GUID)


def pywintrace_record_offsets(pw: Pywintrace) -> dict[str, int]:
    """The offsets ``record_header_format`` needs, from pywintrace's declarations."""
    rec, hdr, desc = pw.ec.EVENT_RECORD, pw.ec.EVENT_HEADER, pw.ep.EVENT_DESCRIPTOR
    return {"EVENT_RECORD.EventHeader": rec.EventHeader.offset,
            "EVENT_RECORD.UserDataLength": rec.UserDataLength.offset,
            "EVENT_RECORD.UserData": rec.UserData.offset,
            **{f"EVENT_HEADER.{n}": getattr(hdr, n).offset
               for n in ("Flags", "ThreadId", "ProcessId", "TimeStamp", "ProviderId", "EventDescriptor")},
            **{f"EVENT_DESCRIPTOR.{n}": getattr(desc, n).offset for n in ("Id", "Version", "Opcode")}}


def field_type(structure: Any, name: str) -> Any:
    """The ctypes type a structure declares for field ``name``."""
    for field in structure._fields_:
        if field[0] == name:
            return field[1]
    raise KeyError(name)


# -- the sensor's own declarations (the gaps) --------------------------------------------------

def _declare(fn: Any, restype: Any, *argtypes: Any) -> None:
    fn.restype = restype
    fn.argtypes = list(argtypes)


class Win32:
    """The Win32 libraries with the prototypes pywintrace does not declare, and how to read the
    last error.

    ``last_error`` returns the error the most recent call on this thread left (``ctypes.
    get_last_error`` with ``use_last_error=True`` libraries on Windows); ``describe(code)`` the
    text for it."""

    def __init__(self, advapi32: Any, kernel32: Any, ntdll: Any, last_error: Callable[[], int],
                 format_error: Callable[[int], str]) -> None:
        self.adv, self.k32, self.ntdll = advapi32, kernel32, ntdll
        self.last_error = last_error
        self._format_error = format_error
        a, k, n = advapi32, kernel32, ntdll
        p = c_void_p
        # gap: token and account calls (advapi32)
        _declare(a.OpenProcessToken, c_int32, p, c_uint32, POINTER(c_void_p))
        _declare(a.GetTokenInformation, c_int32, p, c_uint32, p, c_uint32, POINTER(c_uint32))
        _declare(a.GetSidSubAuthorityCount, POINTER(c_uint8), p)
        _declare(a.GetSidSubAuthority, POINTER(c_uint32), p, c_uint32)
        _declare(a.ConvertStringSidToSidW, c_int32, p, POINTER(c_void_p))
        _declare(a.LookupAccountSidW, c_int32, p, p, p, POINTER(c_uint32), p, POINTER(c_uint32),
                 POINTER(c_uint32))
        # gap: kernel32 (pywintrace's LocalFree has no prototype)
        _declare(k.GetLogicalDrives, c_uint32)
        _declare(k.QueryDosDeviceW, c_uint32, p, p, c_uint32)
        _declare(k.OpenProcess, c_void_p, c_uint32, c_int32, c_uint32)
        _declare(k.CloseHandle, c_int32, p)
        _declare(k.LocalFree, c_void_p, p)
        # gap: ntdll
        _declare(n.NtQueryInformationProcess, c_uint32, p, c_uint32, p, c_uint32, POINTER(c_uint32))

    def describe(self, code: int) -> str:
        """``Windows error N (text)``."""
        try:
            text = (self._format_error(code) or "").strip()
        except Exception:  # noqa: BLE001 - a message is a courtesy
            text = ""
        return f"Windows error {code}" + (f" ({text})" if text else "")


def load_win32(ct: Any = None) -> Win32:
    """advapi32, kernel32 and ntdll loaded with ``use_last_error`` from ``ct`` (the ``ctypes``
    module; on Windows only: SourceUnavailable elsewhere)."""
    if ct is None:
        if sys.platform != "win32":
            raise SourceUnavailable("the ETW source needs Windows (use replay on other systems)")
        ct = ctypes
    return Win32(ct.WinDLL("advapi32", use_last_error=True), ct.WinDLL("kernel32", use_last_error=True),
                 ct.WinDLL("ntdll", use_last_error=True), ct.get_last_error, ct.FormatError)


class EtwApi:
    """What the backend calls: pywintrace's ETW bindings (``et``, ``ec``, ``GUID``), with the
    gaps filled from ``api`` (the sensor's own declarations)."""

    def __init__(self, pw: Pywintrace, api: Win32) -> None:
        self.pw, self.api = pw, api
        self.et, self.ec, self.ws = pw.et, pw.ec, pw.ws
        # gap: pywintrace binds OpenTraceW through ctypes.windll (no use_last_error), so the error
        # it leaves is lost.  The same prototype, bound to the use_last_error advapi32.
        proto = pw.et.OpenTraceW
        self.OpenTraceW = getattr(api.adv, proto.__name__)
        self.OpenTraceW.argtypes, self.OpenTraceW.restype = proto.argtypes, proto.restype
        # The type pywintrace declares for the LoggerName string of EVENT_TRACE_LOGFILE.
        self.logger_name = field_type(pw.et.EVENT_TRACE_LOGFILE, "LoggerName")
        pointer = ctypes.sizeof(c_void_p)
        offsets = pywintrace_record_offsets(pw)
        sdk = SDK_RECORD_OFFSETS.get(pointer, {})
        wrong = {k: (v, sdk.get(k)) for k, v in offsets.items() if sdk.get(k) != v}
        if wrong:
            raise SourceUnavailable("pywintrace's EVENT_RECORD disagrees with the Windows SDK "
                                    f"(field: (pywintrace, SDK) offsets): {wrong}")
        self.record_header = record_header_format(offsets, pointer)

    def guid(self, text: str) -> Any:
        """pywintrace's GUID for ``{...}`` text (ole32 CLSIDFromString)."""
        try:
            return self.pw.GUID(text)
        except (OSError, TypeError, ValueError) as exc:
            raise SessionError(f"not a GUID: {text!r} ({exc})") from exc


def load_etw(ct: Any = None) -> EtwApi:
    """pywintrace's ETW bindings and the sensor's own declarations (``ct`` as in ``load_win32``)."""
    api = load_win32(ct)
    return EtwApi(import_pywintrace(), api)


def wide(text: str) -> ctypes.Array:
    """A NUL-terminated UTF-16LE buffer (LPCWSTR), the same on every host."""
    return ctypes.create_string_buffer(text.encode("utf-16-le") + b"\0\0")


def from_wide(raw: bytes) -> str:
    """The UTF-16LE text up to the first NUL."""
    text = raw.decode("utf-16-le", "replace")
    return text.split("\0", 1)[0]


# -- the record callback ----------------------------------------------------------------------

def make_record_callback(src: int, sink: Callable[[tuple], None], errors: list[int],
                         header: struct.Struct | None = None) -> Callable[[Any], None]:
    """The callback body for one session, taking the EVENT_RECORD's address or pointer (hot path)."""
    string_at = ctypes.string_at
    hdr = header or RECORD_HEADER
    unpack, size = hdr.unpack, hdr.size
    want = KERNEL_PROCESS_DATA1 if src == SRC_KERNEL_PROCESS else PROCESS_CLASS_DATA1
    ids = KERNEL_PROCESS_IDS if src == SRC_KERNEL_PROCESS else None

    def on_record(record):
        try:
            flags, tid, pid, ts, data1, eid, version, opcode, n, user_data = unpack(string_at(record, size))
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

    def __init__(self, etw: EtwApi, spec: SessionSpec, sink: Callable[[tuple], None]) -> None:
        et, ec = etw.et, etw.ec
        self._etw = etw
        self.errors = [0]
        self.status: int | None = None
        self.error: str | None = None
        self.on_exit: Callable[[], None] | None = None   # set by the session manager
        src = SRC_SYSTEM_LOGGER if spec.kind == "system_logger" else SRC_KERNEL_PROCESS
        # These objects must outlive ProcessTrace: ETW calls back through them.
        self._callback = et.EVENT_RECORD_CALLBACK(
            make_record_callback(src, sink, self.errors, etw.record_header))
        self._logfile = et.EVENT_TRACE_LOGFILE()
        self._logfile.LoggerName = etw.logger_name(spec.name)
        self._logfile.ProcessTraceMode = ec.PROCESS_TRACE_MODE_REAL_TIME | ec.PROCESS_TRACE_MODE_EVENT_RECORD
        self._logfile.EventRecordCallback = self._callback
        handle = int(etw.OpenTraceW(byref(self._logfile)))
        if handle in INVALID_PROCESSTRACE_HANDLES:
            api = etw.api
            raise SessionError(f"OpenTrace({spec.name!r}) failed: {api.describe(api.last_error())}")
        self._handle = et.TRACEHANDLE(handle)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"etw-consumer-{spec.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            status = int(self._etw.et.ProcessTrace(byref(self._handle), 1, None, None))
        except BaseException as exc:  # noqa: BLE001 - recorded; the watchdog acts on it
            self.error = f"ProcessTrace raised {exc!r}"
            status = -1
        if status not in (ERROR_SUCCESS, -1):
            self.error = f"ProcessTrace returned {self._etw.api.describe(status)}"
        self.status = status
        on_exit = self.on_exit
        if on_exit is not None:
            on_exit()                  # the session manager's watchdog acts now, not at its next pass

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        if not self._closed:
            self._closed = True
            self._etw.et.CloseTrace(self._handle.value)
        self._thread.join(timeout)


class PywintraceBackend:
    """The ``etw_session.Backend`` on Windows, over pywintrace's bindings (or over the fake
    Win32 library in the tests)."""

    def __init__(self, etw: EtwApi | None = None) -> None:
        self.etw = etw if etw is not None else load_etw()
        self.api = self.etw.api
        self._handles: dict[str, int] = {}

    def new_props(self, spec: SessionSpec | None = None) -> Any:
        """A zeroed EVENT_TRACE_PROPERTIES (pywintrace's) with room for both names; StartTrace's
        settings when ``spec`` is given.  Every ControlTrace call gets a new one: ETW writes the
        session's state back into it, and the documentation asks for a zeroed structure on input."""
        et, ws = self.etw.et, self.etw.ws
        base = ctypes.sizeof(et.EVENT_TRACE_PROPERTIES)
        buf = ctypes.create_string_buffer(base + 2 * NAME_ROOM)
        p = et.EVENT_TRACE_PROPERTIES.from_buffer(buf)
        p.Wnode.BufferSize = len(buf)
        p.Wnode.Flags = ws.WNODE_FLAG_TRACED_GUID
        p.LoggerNameOffset = base
        p.LogFileNameOffset = base + NAME_ROOM
        if spec is not None:
            p.Wnode.ClientContext = 1                  # QPC timestamps
            p.BufferSize = spec.buffer_kb
            p.MinimumBuffers = spec.min_buffers
            p.MaximumBuffers = spec.max_buffers
            # ETW flushes on its own every flush interval, in milliseconds.
            p.FlushTimer = max(1, round(spec.flush_interval * 1000))
            mode = et.EVENT_TRACE_REAL_TIME_MODE | EVENT_TRACE_USE_MS_FLUSH_TIMER
            if spec.no_per_processor_buffering:
                mode |= et.EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING
            if spec.kind == "system_logger":
                mode |= et.EVENT_TRACE_SYSTEM_LOGGER_MODE     # Windows 8+: a private kernel logger
                p.EnableFlags = spec.enable_flags
            p.LogFileMode = mode
        return p

    def _control(self, spec: SessionSpec, code: int) -> tuple[int, Any]:
        props = self.new_props()
        status = self.etw.et.ControlTraceW(0, spec.name, byref(props), code)
        return int(status), props

    def stop_session(self, spec: SessionSpec) -> dict | None:
        status, props = self._control(spec, self.etw.et.EVENT_TRACE_CONTROL_STOP)
        self._handles.pop(spec.name, None)
        if status == ERROR_WMI_INSTANCE_NOT_FOUND:
            return None
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(STOP, {spec.name!r}) failed: {self.api.describe(status)}")
        return props_dict(props)

    def start_session(self, spec: SessionSpec) -> None:
        et = self.etw.et
        handle = et.TRACEHANDLE(0)
        props = self.new_props(spec)
        status = int(et.StartTraceW(byref(handle), spec.name, byref(props)))
        if status == ERROR_ALREADY_EXISTS:
            raise SessionExistsError(f"StartTrace({spec.name!r}): session already exists")
        if status != ERROR_SUCCESS:
            hint = " (run elevated: administrators or Performance Log Users)" if status == ERROR_ACCESS_DENIED else ""
            raise SessionError(f"StartTrace({spec.name!r}) failed: {self.api.describe(status)}{hint}")
        self._handles[spec.name] = handle.value

    def _enable(self, spec: SessionSpec, code: int) -> None:
        guid = self.etw.guid(spec.provider_guid or "")
        # Level goes through pywintrace's c_char argument: the spec validated it as 0..255.
        status = int(self.etw.et.EnableTraceEx2(self._handles[spec.name], byref(guid), code, spec.level,
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
        self._enable(spec, self.etw.et.EVENT_CONTROL_CODE_ENABLE_PROVIDER)

    def capture_state(self, spec: SessionSpec) -> None:
        self._enable(spec, self.etw.et.EVENT_CONTROL_CODE_CAPTURE_STATE)

    def open_consumer(self, spec: SessionSpec, sink: Callable[[tuple], None]) -> _Consumer:
        return _Consumer(self.etw, spec, sink)

    def flush(self, spec: SessionSpec) -> None:
        status, _ = self._control(spec, EVENT_TRACE_CONTROL_FLUSH)
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(FLUSH, {spec.name!r}) failed: {self.api.describe(status)}")

    def query(self, spec: SessionSpec) -> dict | None:
        status, props = self._control(spec, self.etw.et.EVENT_TRACE_CONTROL_QUERY)
        if status == ERROR_WMI_INSTANCE_NOT_FOUND:
            return None
        if status != ERROR_SUCCESS:
            raise SessionError(f"ControlTrace(QUERY, {spec.name!r}) failed: {self.api.describe(status)}")
        return props_dict(props)


def props_dict(p: Any) -> dict:
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


def platform_parts(etw: EtwApi | None = None) -> tuple[PywintraceBackend, dict]:
    """The session backend and readers the platform-neutral ``EtwSource`` takes."""
    etw = etw if etw is not None else load_etw()
    return PywintraceBackend(etw), helpers(etw.api)


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

