"""Decoders for process-event payloads (ETW ``UserData`` bytes) into field dicts.

Two decoders with one behaviour:

* the fast decoders (``decode_kernel_process``, ``decode_system_process``): one precompiled
  ``struct`` per fixed run of fields, offsets computed as the variable-length SID and strings
  are crossed (reference §1.2: the SID is ``8 + 4 * SubAuthorityCount`` bytes; never assume 60);
* the generic decoder (``decode_generic``), driven by the field lists in ``etw_manifest``: the
  pure-Python twin that defines what the fast one must return;
* the compiled decoder (``sensor.sources._etw_decode``, built from ``native/_etw_decode.pyx``):
  the fast decoders in C for the live path, whose twins are the fast decoders above. Where they
  raise it returns None and ``PayloadDecoder`` runs them, so a malformed record gets the same
  error, counted the same way. Without the build (or with ``SENSOR_NO_EXTENSIONS=1``) the fast
  decoders run alone.

Both return ``{field name: value}`` (integers, FILETIMEs as int, SIDs as ``S-1-...`` strings,
strings as str) or raise ``DecodeError``.  Rules they share: every declared field must be present
(a string needs its terminator), bytes after the last field are ignored (newer versions append
fields), UTF-16 and ANSI text is decoded with replacement characters, a SID must have revision 1
and at most 15 sub-authorities.  ``PayloadDecoder`` wraps them for the ETW path: it never raises,
it counts.
"""
from __future__ import annotations

import struct
from collections import Counter

from .._native import NO_EXTENSIONS
from . import etw_manifest as m

_compiled = None
if not NO_EXTENSIONS:
    try:
        from . import _etw_decode as _compiled  # type: ignore[no-redef]
    except ImportError:  # not built: the pure-Python decoders alone
        _compiled = None
COMPILED = _compiled is not None


class DecodeError(ValueError):
    """A payload that does not match its event's layout."""


ANSI_CODEC = "cp1252"   # the EPROCESS short name is ANSI; cp1252 with replacement never fails
SID_MAX_SUB_AUTHORITIES = 15

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_U32x2 = struct.Struct("<II")
_U32x2_U16 = struct.Struct("<IIH")


# -- primitives shared by both decoders -------------------------------------------------------

def read_utf16z(buf: bytes, pos: int) -> tuple[str, int]:
    """The NUL-terminated UTF-16LE string at ``pos`` and the offset after its terminator."""
    end = buf.find(b"\0\0", pos)
    while end != -1 and (end - pos) & 1:
        end = buf.find(b"\0\0", end + 1)
    if end == -1:
        raise DecodeError(f"unterminated UTF-16 string at offset {pos}")
    return buf[pos:end].decode("utf-16-le", "replace"), end + 2


def read_ansiz(buf: bytes, pos: int) -> tuple[str, int]:
    """The NUL-terminated ANSI string at ``pos`` and the offset after its terminator."""
    end = buf.find(b"\0", pos)
    if end == -1:
        raise DecodeError(f"unterminated ANSI string at offset {pos}")
    return buf[pos:end].decode(ANSI_CODEC, "replace"), end + 1


def read_sid(buf: bytes, pos: int) -> tuple[str, int]:
    """The packed SID at ``pos`` as ``S-R-A-S1-...`` and the offset after it."""
    if pos + 8 > len(buf):
        raise DecodeError(f"SID header past the end at offset {pos}")
    rev = buf[pos]
    count = buf[pos + 1]
    if rev != 1 or count > SID_MAX_SUB_AUTHORITIES:
        raise DecodeError(f"not a SID at offset {pos} (revision {rev}, {count} sub-authorities)")
    end = pos + 8 + 4 * count
    if end > len(buf):
        raise DecodeError(f"SID past the end at offset {pos}")
    auth = int.from_bytes(buf[pos + 2:pos + 8], "big")
    # ConvertSidToStringSid writes authorities >= 2**32 in hex.
    text = "S-1-" + (str(auth) if auth < 1 << 32 else "0x%012X" % auth)
    if count:
        text += "-" + "-".join(map(str, struct.unpack_from("<%dI" % count, buf, pos + 8)))
    return text, end


def read_token_sid(buf: bytes, pos: int, pointer_size: int) -> tuple[str | None, int]:
    """A kernel-logger UserSID block: None for the 4-byte null form, else the SID after TOKEN_USER."""
    if pos + 4 > len(buf):
        raise DecodeError(f"UserSID past the end at offset {pos}")
    if _U32.unpack_from(buf, pos)[0] == 0:
        return None, pos + 4
    return read_sid(buf, pos + 2 * pointer_size)


_SID_CACHE: dict[bytes, str] = {}
_SID_CACHE_MAX = 1024


def _sid_fast(buf: bytes, pos: int) -> tuple[str, int]:
    """``read_sid`` with a cache: the same few integrity-label and user SIDs recur in every event."""
    if pos + 8 <= len(buf):
        end = pos + 8 + 4 * buf[pos + 1]
        if end <= len(buf):
            hit = _SID_CACHE.get(buf[pos:end])
            if hit is not None:
                return hit, end
    text, end = read_sid(buf, pos)
    if len(_SID_CACHE) < _SID_CACHE_MAX:
        _SID_CACHE[buf[pos:end]] = text
    return text, end


def _token_sid_fast(buf: bytes, pos: int, pointer_size: int) -> tuple[str | None, int]:
    if pos + 4 > len(buf):
        raise DecodeError(f"UserSID past the end at offset {pos}")
    if _U32.unpack_from(buf, pos)[0] == 0:
        return None, pos + 4
    return _sid_fast(buf, pos + 2 * pointer_size)


def _need(buf: bytes, end: int, what: str) -> None:
    if end > len(buf):
        raise DecodeError(f"payload too short for {what}: {len(buf)} < {end} bytes")


# -- the generic (twin) decoder ---------------------------------------------------------------

def decode_generic(schema: m.Schema, buf: bytes, pointer_size: int = 8) -> dict:
    """Decode ``buf`` field by field from ``schema`` (the reference the fast decoders must match)."""
    out: dict = {}
    pos = 0
    n = len(buf)
    for name, typ in schema.fields:
        if typ == m.U32 or typ == m.I32:
            if pos + 4 > n:
                raise DecodeError(f"payload too short for {name}")
            out[name] = (_U32 if typ == m.U32 else _I32).unpack_from(buf, pos)[0]
            pos += 4
        elif typ == m.U64 or typ == m.FILETIME:
            if pos + 8 > n:
                raise DecodeError(f"payload too short for {name}")
            out[name] = _U64.unpack_from(buf, pos)[0]
            pos += 8
        elif typ == m.U16:
            if pos + 2 > n:
                raise DecodeError(f"payload too short for {name}")
            out[name] = _U16.unpack_from(buf, pos)[0]
            pos += 2
        elif typ == m.PTR:
            if pos + pointer_size > n:
                raise DecodeError(f"payload too short for {name}")
            out[name] = int.from_bytes(buf[pos:pos + pointer_size], "little")
            pos += pointer_size
        elif typ == m.SID:
            out[name], pos = read_sid(buf, pos)
        elif typ == m.TOKEN_SID:
            out[name], pos = read_token_sid(buf, pos, pointer_size)
        elif typ == m.UTF16Z:
            out[name], pos = read_utf16z(buf, pos)
        elif typ == m.ANSIZ:
            out[name], pos = read_ansiz(buf, pos)
        else:  # pragma: no cover - the manifest module only produces the types above
            raise DecodeError(f"unknown wire type {typ!r}")
    return out


def decode_kernel_process_generic(event_id: int, version: int, buf: bytes) -> dict:
    """Twin of ``decode_kernel_process``."""
    if version < 0:  # before the lookup: the manifest has no negative versions
        raise DecodeError(f"bad version {version}")
    schema = m.kernel_process_schema(event_id, version)
    if schema is None:
        raise DecodeError(f"not a Kernel-Process process event: id {event_id}")
    return decode_generic(schema, buf)


def decode_system_process_generic(opcode: int, version: int, buf: bytes, pointer_size: int = 8) -> dict:
    """Twin of ``decode_system_process``."""
    schema = None if version < 0 else m.system_process_schema(opcode, version)
    if schema is None:
        raise DecodeError(f"not a kernel-logger Process record: opcode {opcode} v{version}")
    return decode_generic(schema, buf, pointer_size)


# -- fast decoders ----------------------------------------------------------------------------
# Fixed heads, packed little-endian (reference §1.2 offsets).
_START_V0 = struct.Struct("<IQII")            # ProcessID, CreateTime, ParentProcessID, SessionID
_START_V1 = struct.Struct("<IQIII")           # + Flags; ImageName at 24
_START_V3 = struct.Struct("<IQQIQIIII")       # ... ProcessTokenIsElevated; MandatoryLabel at 48
_STOP_V0 = struct.Struct("<IQQIIIQQ")         # ImageName at 48
_STOP_V1 = struct.Struct("<IQQIIIQQQIIIII")   # ImageName at 76
_STOP_V2 = struct.Struct("<IQQQIIIQQQIIIII")  # ImageName at 84


def _start_v0_v2(version: int, buf: bytes) -> dict:
    if version == 0:
        _need(buf, 20, "ProcessStart v0")
        pid, ct, ppid, sess = _START_V0.unpack_from(buf, 0)
        image, _ = read_utf16z(buf, 20)
        return {"ProcessID": pid, "CreateTime": ct, "ParentProcessID": ppid, "SessionID": sess,
                "ImageName": image}
    _need(buf, 24, "ProcessStart v1")
    pid, ct, ppid, sess, flags = _START_V1.unpack_from(buf, 0)
    image, pos = read_utf16z(buf, 24)
    out = {"ProcessID": pid, "CreateTime": ct, "ParentProcessID": ppid, "SessionID": sess,
           "Flags": flags, "ImageName": image}
    if version >= 2:
        _need(buf, pos + 8, "ImageChecksum/TimeDateStamp")
        out["ImageChecksum"], out["TimeDateStamp"] = _U32x2.unpack_from(buf, pos)
        out["PackageFullName"], pos = read_utf16z(buf, pos + 8)
        out["PackageRelativeAppId"], pos = read_utf16z(buf, pos)
    return out


def _start_v3_v5(level: int, buf: bytes) -> dict:
    """``level`` 3, 4 or 5 = ProcessStart v3/v4/v5 (= ProcessRundown v1/v2/v3)."""
    _need(buf, 48, "ProcessStart v3 head")
    pid, seq, ct, ppid, pseq, sess, flags, etype, elevated = _START_V3.unpack_from(buf, 0)
    label, pos = _sid_fast(buf, 48)
    image, pos = read_utf16z(buf, pos)
    _need(buf, pos + 8, "ImageChecksum/TimeDateStamp")
    checksum, stamp = _U32x2.unpack_from(buf, pos)
    package, pos = read_utf16z(buf, pos + 8)
    app_id, pos = read_utf16z(buf, pos)
    out = {"ProcessID": pid, "ProcessSequenceNumber": seq, "CreateTime": ct,
           "ParentProcessID": ppid, "ParentProcessSequenceNumber": pseq, "SessionID": sess,
           "Flags": flags, "ProcessTokenElevationType": etype, "ProcessTokenIsElevated": elevated,
           "MandatoryLabel": label, "ImageName": image, "ImageChecksum": checksum,
           "TimeDateStamp": stamp, "PackageFullName": package, "PackageRelativeAppId": app_id}
    if level == 4:
        _need(buf, pos + 4, "SecurityMitigations")
        out["SecurityMitigations"] = _U32.unpack_from(buf, pos)[0]
    elif level >= 5:
        _need(buf, pos + 10, "SecurityMitigations/PartitionID/ProcessMachine")
        (out["SecurityMitigations"], out["PartitionID"],
         out["ProcessMachine"]) = _U32x2_U16.unpack_from(buf, pos)
    return out


_STOP_COMMON = ("CreateTime", "ExitTime", "ExitCode", "TokenElevationType", "HandleCount",
                "CommitCharge", "CommitPeak")
_STOP_IO = ("CPUCycleCount", "ReadOperationCount", "WriteOperationCount",
            "ReadTransferKiloBytes", "WriteTransferKiloBytes", "HardFaultCount")
_STOP_V0_NAMES = ("ProcessID",) + _STOP_COMMON
_STOP_V1_NAMES = _STOP_V0_NAMES + _STOP_IO
_STOP_V2_NAMES = ("ProcessID", "ProcessSequenceNumber") + _STOP_COMMON + _STOP_IO


def _stop(version: int, buf: bytes) -> dict:
    if version == 0:
        head, names = _STOP_V0, _STOP_V0_NAMES
    elif version == 1:
        head, names = _STOP_V1, _STOP_V1_NAMES
    else:
        head, names = _STOP_V2, _STOP_V2_NAMES
    _need(buf, head.size, f"ProcessStop v{version} head")
    out = dict(zip(names, head.unpack_from(buf, 0)))
    out["ImageName"], _ = read_ansiz(buf, head.size)
    return out


def decode_kernel_process(event_id: int, version: int, buf: bytes) -> dict:
    """Decode a Kernel-Process ProcessStart (1) v0-v5, ProcessStop (2) v0-v2 or ProcessRundown (15) v0-v3."""
    if version < 0:
        raise DecodeError(f"bad version {version}")
    if event_id == m.PROCESS_START:
        if version <= 2:
            return _start_v0_v2(version, buf)
        return _start_v3_v5(min(version, 5), buf)
    if event_id == m.PROCESS_RUNDOWN:
        # Rundown v0 is the ProcessStart v2 field set; v1/v2/v3 are the v3/v4/v5 sets.
        if version == 0:
            return _start_v0_v2(2, buf)
        return _start_v3_v5(min(version, 3) + 2, buf)
    if event_id == m.PROCESS_STOP:
        return _stop(min(version, 2), buf)
    raise DecodeError(f"not a Kernel-Process process event: id {event_id}")


_SL_HEAD = struct.Struct("<IIIi")  # ProcessId, ParentId, SessionId, ExitStatus (after the key)


def decode_system_process(opcode: int, version: int, buf: bytes, pointer_size: int = 8) -> dict:
    """Decode a kernel-logger Process record (Start 1, End 2, DCStart 3, DCEnd 4, Defunct 39)."""
    if version < 0 or m.system_process_schema(opcode, version) is None:
        raise DecodeError(f"not a kernel-logger Process record: opcode {opcode} v{version}")
    if version == 0:
        _need(buf, 8, "Process v0 head")
        pid, ppid = _U32x2.unpack_from(buf, 0)
        sid, pos = _token_sid_fast(buf, 8, pointer_size)
        name, _ = read_ansiz(buf, pos)
        return {"ProcessId": pid, "ParentId": ppid, "UserSID": sid, "ImageFileName": name}
    p = pointer_size
    _need(buf, p + 16, f"Process v{version} head")
    key = int.from_bytes(buf[0:p], "little")
    pid, ppid, sess, status = _SL_HEAD.unpack_from(buf, p)
    out = {"PageDirectoryBase" if version == 1 else "UniqueProcessKey": key,
           "ProcessId": pid, "ParentId": ppid, "SessionId": sess, "ExitStatus": status}
    pos = p + 16
    if version >= 3:
        _need(buf, pos + p, "DirectoryTableBase")
        out["DirectoryTableBase"] = int.from_bytes(buf[pos:pos + p], "little")
        pos += p
    if version >= 4:
        _need(buf, pos + 4, "Flags")
        out["Flags"] = _U32.unpack_from(buf, pos)[0]
        pos += 4
    out["UserSID"], pos = _token_sid_fast(buf, pos, p)
    out["ImageFileName"], pos = read_ansiz(buf, pos)
    if version >= 2:
        out["CommandLine"], pos = read_utf16z(buf, pos)
    if version >= 4:
        out["PackageFullName"], pos = read_utf16z(buf, pos)
        out["ApplicationId"], pos = read_utf16z(buf, pos)
        if opcode == m.SL_DEFUNCT and version >= 5:
            _need(buf, pos + 8, "ExitTime")
            out["ExitTime"] = _U64.unpack_from(buf, pos)[0]
    return out


# ProcessStop's identity fields (what the process table needs), at the heads' offsets.
_STOP_HEADS = (_STOP_V0, _STOP_V1, _STOP_V2)
_STOP_TOP = 2                                  # the newest layout this module knows
_STOP_IDS_V0 = struct.Struct("<IQQ")           # ProcessID, CreateTime, ExitTime (v0, v1)
_STOP_IDS_V2 = struct.Struct("<IQQQ")          # ProcessID, ProcessSequenceNumber, CreateTime, ExitTime


class PayloadDecoder:
    """The decoders for the ETW path: return None instead of raising, and count what happened."""

    __slots__ = ("decoded", "errors", "errors_by_event", "unknown_versions", "last_error", "_kp", "_sp")

    def __init__(self, compiled: bool = True) -> None:
        # The compiled decoder answers None where the Python one raises: it runs first, the
        # Python one only for what it did not decode (the error and its message are Python's).
        use = _compiled if compiled else None
        self._kp = use.kernel_process if use is not None else None
        self._sp = use.system_process if use is not None else None
        self.decoded = 0
        self.errors = 0
        self.errors_by_event: Counter = Counter()
        self.unknown_versions: Counter = Counter()
        self.last_error: str | None = None

    def kernel_process(self, event_id: int, version: int, buf: bytes) -> dict | None:
        """Decoded fields, or None (malformed or not a process event; counted)."""
        top = m.KERNEL_PROCESS_MAX_VERSION.get(event_id)
        if top is not None and version > top:
            self.unknown_versions[(event_id, version)] += 1
        try:
            out = self._kp(event_id, version, buf) if self._kp is not None else None
            if out is None:
                out = decode_kernel_process(event_id, version, buf)
        except Exception as exc:  # noqa: BLE001 - nothing may escape into the ETW path
            self._fail(("kernel_process", event_id, version), exc)
            return None
        self.decoded += 1
        return out

    def process_stop(self, version: int, buf: bytes) -> tuple | None:
        """What the process table needs of a ProcessStop: ``(ProcessID, CreateTime,
        ProcessSequenceNumber or None, ExitTime)``, or None (malformed; counted).

        The same answer as ``kernel_process(2, version, buf)``'s fields, without building them:
        the fixed head is read at its offsets and the ImageName's terminator only looked for.
        Whatever that does not accept (a short head, no terminator, a negative version) goes
        through ``kernel_process``, so the error and its count are the full decoder's."""
        if 0 <= version <= _STOP_TOP:
            head = _STOP_HEADS[version]
            if len(buf) >= head.size and buf.find(b"\0", head.size) != -1:
                self.decoded += 1
                if version >= 2:
                    pid, seq, ct, exit_time = _STOP_IDS_V2.unpack_from(buf, 0)
                    return pid, ct, seq, exit_time
                pid, ct, exit_time = _STOP_IDS_V0.unpack_from(buf, 0)
                return pid, ct, None, exit_time
        fields = self.kernel_process(m.PROCESS_STOP, version, buf)
        if fields is None:
            return None
        return (fields["ProcessID"], fields.get("CreateTime"), fields.get("ProcessSequenceNumber"),
                fields.get("ExitTime"))

    def system_process(self, opcode: int, version: int, buf: bytes, pointer_size: int = 8) -> dict | None:
        """Decoded fields of a kernel-logger Process record, or None (counted)."""
        if version > 5 or (version > m.SYSTEM_PROCESS_MAX_VERSION and opcode != m.SL_DEFUNCT):
            self.unknown_versions[("system_process", opcode, version)] += 1
        try:
            out = self._sp(opcode, version, buf, pointer_size) if self._sp is not None else None
            if out is None:
                out = decode_system_process(opcode, version, buf, pointer_size)
        except Exception as exc:  # noqa: BLE001
            self._fail(("system_process", opcode, version), exc)
            return None
        self.decoded += 1
        return out

    def _fail(self, key, exc: Exception) -> None:
        self.errors += 1
        self.errors_by_event[key] += 1
        self.last_error = f"{key}: {exc}"

    def stats(self) -> dict:
        """Counters as plain data."""
        return {"decoded": self.decoded, "decode_errors": self.errors,
                "decode_errors_by_event": {"/".join(map(str, k)): v for k, v in self.errors_by_event.items()},
                "unknown_versions": {"/".join(map(str, k)): v for k, v in self.unknown_versions.items()}}
