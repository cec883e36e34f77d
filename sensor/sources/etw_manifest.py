"""Field lists of the process events the ETW source decodes, as data.

Provenance: the signatures below are copied verbatim from the field lists extracted from
Windows manifests and MOF classes (builds 1511 to 26H1) by jdu2600/Windows10EtwEvents @ 84e7261,
files ``manifest/Microsoft-Windows-Kernel-Process.tsv`` and ``mof/Windows_Kernel_Trace.tsv``
(process rows only).  ``tests/data/etw/`` holds the same rows as TSV; a test checks that this
module and those files agree.

Manifest payloads are packed (no padding); strings are NUL-terminated; a ``SID`` is
``8 + 4 * SubAuthorityCount`` bytes.  The MOF dump simplifies three things that the wire format
does not (Microsoft's ``Process_TypeGroup1`` class marks them ``pointer``; Fibratus's raw decoder
``produceParams`` reads them at pointer size):

* ``UniqueProcessKey``, ``PageDirectoryBase`` and ``DirectoryTableBase`` are pointer-sized;
* ``Object UserSID`` is a TOKEN_USER block: a 4-byte zero when there is no SID, otherwise two
  pointer-sized words (``PSID``, ``Attributes``) followed by the SID;
* ``String ImageFileName`` is ANSI; the other MOF strings are UTF-16.
"""
from __future__ import annotations

import re
from typing import NamedTuple

KERNEL_PROCESS_GUID = "{22FB2CD6-0E7B-422B-A0C7-2FAD1FD0E716}"
SYSTEM_PROCESS_GUID = "{3D6FA8D0-FE05-11D0-9DDA-00C04FD7BA7C}"   # MSNT_SystemTrace Process class
LOST_EVENT_GUID = "{6A399AE0-4BC6-4DE9-870B-3657F8947E7E}"       # RT_LostEvent (rt-lostevent.md)

# Kernel-Process event ids (manifest tasks ProcessStart, ProcessStop, ProcessRundown).
PROCESS_START = 1
PROCESS_STOP = 2
PROCESS_RUNDOWN = 15

# Kernel-logger Process opcodes (EVENT_TRACE_TYPE_*).
SL_START = 1
SL_END = 2
SL_DC_START = 3
SL_DC_END = 4
SL_DEFUNCT = 39

# Wire types.
U16 = "u16"
U32 = "u32"
I32 = "i32"
U64 = "u64"
FILETIME = "filetime"    # u64, 100 ns since 1601-01-01 UTC
PTR = "ptr"              # pointer-sized unsigned (4 or 8 bytes)
SID = "sid"              # packed SID
TOKEN_SID = "token_sid"  # TOKEN_USER block (see module docstring); value None when absent
UTF16Z = "utf16z"
ANSIZ = "ansiz"

WIRE_TYPES = frozenset({U16, U32, I32, U64, FILETIME, PTR, SID, TOKEN_SID, UTF16Z, ANSIZ})

_MANIFEST_TYPES = {
    "UInt16": U16, "UInt32": U32, "UInt64": U64, "FILETIME": FILETIME, "SID": SID,
    "UnicodeString": UTF16Z, "AnsiString": ANSIZ,
}
_MOF_POINTERS = frozenset({"UniqueProcessKey", "PageDirectoryBase", "DirectoryTableBase"})


class Schema(NamedTuple):
    """One (event, version): its template name and ``(field name, wire type)`` pairs in order."""

    name: str
    fields: tuple[tuple[str, str], ...]


# Column "event(fields)" of kernel-process-manifest.tsv, keyed by (event id, version).
KERNEL_PROCESS_SIGNATURES: dict[tuple[int, int], str] = {
    (1, 0): "ProcessStart(UInt32 ProcessID, FILETIME CreateTime, UInt32 ParentProcessID, UInt32 SessionID, UnicodeString ImageName)",
    (1, 1): "ProcessStart_V1(UInt32 ProcessID, FILETIME CreateTime, UInt32 ParentProcessID, UInt32 SessionID, UInt32 Flags, UnicodeString ImageName)",
    (1, 2): "ProcessStart_V2(UInt32 ProcessID, FILETIME CreateTime, UInt32 ParentProcessID, UInt32 SessionID, UInt32 Flags, UnicodeString ImageName, UInt32 ImageChecksum, UInt32 TimeDateStamp, UnicodeString PackageFullName, UnicodeString PackageRelativeAppId)",
    (1, 3): "ProcessStart_V3(UInt32 ProcessID, UInt64 ProcessSequenceNumber, FILETIME CreateTime, UInt32 ParentProcessID, UInt64 ParentProcessSequenceNumber, UInt32 SessionID, UInt32 Flags, UInt32 ProcessTokenElevationType, UInt32 ProcessTokenIsElevated, SID MandatoryLabel, UnicodeString ImageName, UInt32 ImageChecksum, UInt32 TimeDateStamp, UnicodeString PackageFullName, UnicodeString PackageRelativeAppId)",
    (1, 4): "ProcessStart_V4(UInt32 ProcessID, UInt64 ProcessSequenceNumber, FILETIME CreateTime, UInt32 ParentProcessID, UInt64 ParentProcessSequenceNumber, UInt32 SessionID, UInt32 Flags, UInt32 ProcessTokenElevationType, UInt32 ProcessTokenIsElevated, SID MandatoryLabel, UnicodeString ImageName, UInt32 ImageChecksum, UInt32 TimeDateStamp, UnicodeString PackageFullName, UnicodeString PackageRelativeAppId, UInt32 SecurityMitigations)",
    (1, 5): "ProcessStart_V5(UInt32 ProcessID, UInt64 ProcessSequenceNumber, FILETIME CreateTime, UInt32 ParentProcessID, UInt64 ParentProcessSequenceNumber, UInt32 SessionID, UInt32 Flags, UInt32 ProcessTokenElevationType, UInt32 ProcessTokenIsElevated, SID MandatoryLabel, UnicodeString ImageName, UInt32 ImageChecksum, UInt32 TimeDateStamp, UnicodeString PackageFullName, UnicodeString PackageRelativeAppId, UInt32 SecurityMitigations, UInt32 PartitionID, UInt16 ProcessMachine)",
    (2, 0): "ProcessStop(UInt32 ProcessID, FILETIME CreateTime, FILETIME ExitTime, UInt32 ExitCode, UInt32 TokenElevationType, UInt32 HandleCount, UInt64 CommitCharge, UInt64 CommitPeak, AnsiString ImageName)",
    (2, 1): "ProcessStop_V1(UInt32 ProcessID, FILETIME CreateTime, FILETIME ExitTime, UInt32 ExitCode, UInt32 TokenElevationType, UInt32 HandleCount, UInt64 CommitCharge, UInt64 CommitPeak, UInt64 CPUCycleCount, UInt32 ReadOperationCount, UInt32 WriteOperationCount, UInt32 ReadTransferKiloBytes, UInt32 WriteTransferKiloBytes, UInt32 HardFaultCount, AnsiString ImageName)",
    (2, 2): "ProcessStop_V2(UInt32 ProcessID, UInt64 ProcessSequenceNumber, FILETIME CreateTime, FILETIME ExitTime, UInt32 ExitCode, UInt32 TokenElevationType, UInt32 HandleCount, UInt64 CommitCharge, UInt64 CommitPeak, UInt64 CPUCycleCount, UInt32 ReadOperationCount, UInt32 WriteOperationCount, UInt32 ReadTransferKiloBytes, UInt32 WriteTransferKiloBytes, UInt32 HardFaultCount, AnsiString ImageName)",
    (15, 0): "ProcessRundown(UInt32 ProcessID, FILETIME CreateTime, UInt32 ParentProcessID, UInt32 SessionID, UInt32 Flags, UnicodeString ImageName, UInt32 ImageChecksum, UInt32 TimeDateStamp, UnicodeString PackageFullName, UnicodeString PackageRelativeAppId)",
    (15, 1): "ProcessRundown_V1(UInt32 ProcessID, UInt64 ProcessSequenceNumber, FILETIME CreateTime, UInt32 ParentProcessID, UInt64 ParentProcessSequenceNumber, UInt32 SessionID, UInt32 Flags, UInt32 ProcessTokenElevationType, UInt32 ProcessTokenIsElevated, SID MandatoryLabel, UnicodeString ImageName, UInt32 ImageChecksum, UInt32 TimeDateStamp, UnicodeString PackageFullName, UnicodeString PackageRelativeAppId)",
    (15, 2): "ProcessRundown_V2(UInt32 ProcessID, UInt64 ProcessSequenceNumber, FILETIME CreateTime, UInt32 ParentProcessID, UInt64 ParentProcessSequenceNumber, UInt32 SessionID, UInt32 Flags, UInt32 ProcessTokenElevationType, UInt32 ProcessTokenIsElevated, SID MandatoryLabel, UnicodeString ImageName, UInt32 ImageChecksum, UInt32 TimeDateStamp, UnicodeString PackageFullName, UnicodeString PackageRelativeAppId, UInt32 SecurityMitigations)",
    (15, 3): "ProcessRundown_V3(UInt32 ProcessID, UInt64 ProcessSequenceNumber, FILETIME CreateTime, UInt32 ParentProcessID, UInt64 ParentProcessSequenceNumber, UInt32 SessionID, UInt32 Flags, UInt32 ProcessTokenElevationType, UInt32 ProcessTokenIsElevated, SID MandatoryLabel, UnicodeString ImageName, UInt32 ImageChecksum, UInt32 TimeDateStamp, UnicodeString PackageFullName, UnicodeString PackageRelativeAppId, UInt32 SecurityMitigations, UInt32 PartitionID, UInt16 ProcessMachine)",
}

# Column "event(fields)" of kernel-trace-process-mof.tsv, keyed by (opcode, version).  Start,
# End, DCStart and DCEnd share one layout per version (Process_TypeGroup1).
SYSTEM_PROCESS_SIGNATURES: dict[tuple[int, int], str] = {
    (1, 0): "Process_Start(UInt32 ProcessId, UInt32 ParentId, Object UserSID, String ImageFileName)",
    (1, 1): "Process_Start_V1(UInt32 PageDirectoryBase, UInt32 ProcessId, UInt32 ParentId, UInt32 SessionId, SInt32 ExitStatus, Object UserSID, String ImageFileName)",
    (1, 2): "Process_Start_V2(UInt32 UniqueProcessKey, UInt32 ProcessId, UInt32 ParentId, UInt32 SessionId, SInt32 ExitStatus, Object UserSID, String ImageFileName, String CommandLine)",
    (1, 3): "Process_Start_V3(UInt32 UniqueProcessKey, UInt32 ProcessId, UInt32 ParentId, UInt32 SessionId, SInt32 ExitStatus, UInt32 DirectoryTableBase, Object UserSID, String ImageFileName, String CommandLine)",
    (1, 4): "Process_Start_V4(UInt32 UniqueProcessKey, UInt32 ProcessId, UInt32 ParentId, UInt32 SessionId, SInt32 ExitStatus, UInt32 DirectoryTableBase, UInt32 Flags, Object UserSID, String ImageFileName, String CommandLine, String PackageFullName, String ApplicationId)",
    (39, 5): "Process_Defunct_V5(UInt32 UniqueProcessKey, UInt32 ProcessId, UInt32 ParentId, UInt32 SessionId, SInt32 ExitStatus, UInt32 DirectoryTableBase, UInt32 Flags, Object UserSID, String ImageFileName, String CommandLine, String PackageFullName, String ApplicationId, UInt64 ExitTime)",
}
# Opcodes whose layout is the Start layout of the same version (the TSV lists them separately
# with identical field lists; the test checks that).
SYSTEM_PROCESS_SAME_AS_START = (SL_END, SL_DC_START, SL_DC_END, SL_DEFUNCT)

_SIG = re.compile(r"^\s*(\w+)\((.*)\)\s*$")


def parse_signature(text: str, mof: bool = False) -> Schema:
    """``Name(Type Field, ...)`` → Schema with wire types (MOF rules when ``mof``)."""
    m = _SIG.match(text)
    if not m:
        raise ValueError(f"not an event signature: {text!r}")
    fields = []
    for part in m.group(2).split(","):
        typ, name = part.split()
        fields.append((name, _mof_type(typ, name) if mof else _MANIFEST_TYPES[typ]))
    return Schema(m.group(1), tuple(fields))


def _mof_type(typ: str, name: str) -> str:
    if name in _MOF_POINTERS:
        return PTR
    if typ == "Object" and name == "UserSID":
        return TOKEN_SID
    if typ == "String":
        return ANSIZ if name == "ImageFileName" else UTF16Z
    return {"UInt32": U32, "SInt32": I32, "UInt64": U64}[typ]


KERNEL_PROCESS: dict[tuple[int, int], Schema] = {
    key: parse_signature(sig) for key, sig in KERNEL_PROCESS_SIGNATURES.items()
}
SYSTEM_PROCESS: dict[tuple[int, int], Schema] = {
    key: parse_signature(sig, mof=True) for key, sig in SYSTEM_PROCESS_SIGNATURES.items()
}

# Highest version known per Kernel-Process event id: newer versions append fields, so a newer
# payload is read with the newest known layout (trailing bytes ignored).
KERNEL_PROCESS_MAX_VERSION = {
    eid: max(v for (e, v) in KERNEL_PROCESS if e == eid) for eid in {e for (e, _) in KERNEL_PROCESS}
}
SYSTEM_PROCESS_MAX_VERSION = 4


def kernel_process_schema(event_id: int, version: int) -> Schema | None:
    """The schema for a Kernel-Process event, or None (not a process event this source reads)."""
    top = KERNEL_PROCESS_MAX_VERSION.get(event_id)
    if top is None:
        return None
    return KERNEL_PROCESS[(event_id, min(version, top))]


def system_process_schema(opcode: int, version: int) -> Schema | None:
    """The schema for a kernel-logger Process record (Start/End/DCStart/DCEnd/Defunct), or None."""
    if opcode == SL_DEFUNCT and version >= 5:
        return SYSTEM_PROCESS[(39, 5)]
    if opcode != SL_START and opcode not in SYSTEM_PROCESS_SAME_AS_START:
        return None
    return SYSTEM_PROCESS[(SL_START, min(version, SYSTEM_PROCESS_MAX_VERSION))]
