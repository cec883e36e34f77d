# cython: boundscheck=False, wraparound=False, cdivision=True
"""The compiled decoder of the process records the live ETW path decodes.

Kernel-Process ProcessStart (1) v0-v5, ProcessStop (2) v0-v2, ProcessRundown (15) v0-v3 and the
kernel logger's Process records (opcodes 1-4 and 39). Its twin, which defines the behaviour, is
``sensor.sources.etw_decode`` (``decode_kernel_process``, ``decode_system_process``): the same
dict, the same keys in the same order, the same values.

Where the twin raises (a truncated or malformed payload, an unknown event, an argument outside
what the live path passes: not ``bytes``, a pointer size other than 4 or 8, a version outside
[0, 2**31)), this decoder returns None and decodes nothing: the caller then runs the twin, whose
``DecodeError`` (and its message) is the answer. So a malformed record is counted exactly as the
twin counts it. Every read is bounds-checked against the payload's length; the work is linear in
the payload.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF16, PyUnicode_DecodeASCII
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.stdio cimport snprintf

cdef extern from "Python.h":
    object PyUnicode_FromStringAndSize(const char *u, Py_ssize_t size)

DEF SID_MAX_SUB_AUTHORITIES = 15


cdef inline uint16_t _u16(const uint8_t *p) noexcept nogil:
    return <uint16_t>p[0] | (<uint16_t>p[1] << 8)


cdef inline uint32_t _u32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _u64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>_u32(p)) | ((<uint64_t>_u32(p + 4)) << 32)


cdef inline uint64_t _ptr(const uint8_t *p, int size) noexcept nogil:
    return _u64(p) if size == 8 else <uint64_t>_u32(p)


# Each reader returns the offset after what it read, or -1 when the payload does not hold it.

cdef Py_ssize_t _utf16z(const uint8_t *b, Py_ssize_t n, Py_ssize_t pos, list out):
    """The NUL-terminated UTF-16LE string at ``pos`` (its terminator at an even distance)."""
    cdef Py_ssize_t i = pos
    cdef int order = -1          # little-endian, no byte-order mark consumed
    if pos > n:
        return -1
    while i + 1 < n:
        if b[i] == 0 and b[i + 1] == 0:
            out.append(PyUnicode_DecodeUTF16(<const char *>(b + pos), i - pos, "replace", &order))
            return i + 2
        i += 2
    return -1


cdef Py_ssize_t _ansiz(const uint8_t *b, Py_ssize_t n, Py_ssize_t pos, list out):
    """The NUL-terminated ANSI (cp1252) string at ``pos``."""
    cdef Py_ssize_t i = pos
    cdef bint ascii = True
    if pos > n:
        return -1
    while i < n:
        if b[i] == 0:
            if ascii:       # cp1252 is ASCII below 0x80
                out.append(PyUnicode_DecodeASCII(<const char *>(b + pos), i - pos, "strict"))
            else:
                out.append((<bytes>(<const char *>b)[pos:i]).decode("cp1252", "replace"))
            return i + 1
        if b[i] >= 0x80:
            ascii = False
        i += 1
    return -1


cdef Py_ssize_t _sid(const uint8_t *b, Py_ssize_t n, Py_ssize_t pos, list out):
    """The packed SID at ``pos`` as ``S-1-A-S1-...`` (revision 1, at most 15 sub-authorities)."""
    cdef char text[256]
    cdef int k, count, w
    cdef uint64_t auth = 0
    cdef Py_ssize_t end
    if pos < 0 or pos + 8 > n:
        return -1
    count = b[pos + 1]
    if b[pos] != 1 or count > SID_MAX_SUB_AUTHORITIES:
        return -1
    end = pos + 8 + 4 * count
    if end > n:
        return -1
    for k in range(6):
        auth = (auth << 8) | b[pos + 2 + k]
    if auth < (<uint64_t>1 << 32):
        w = snprintf(text, sizeof(text), "S-1-%llu", <unsigned long long>auth)
    else:           # ConvertSidToStringSid writes authorities >= 2**32 in hex
        w = snprintf(text, sizeof(text), "S-1-0x%012llX", <unsigned long long>auth)
    for k in range(count):
        w += snprintf(text + w, sizeof(text) - w, "-%u", <unsigned int>_u32(b + pos + 8 + 4 * k))
    out.append(PyUnicode_FromStringAndSize(text, w))
    return end


cdef Py_ssize_t _token_sid(const uint8_t *b, Py_ssize_t n, Py_ssize_t pos, int psize, list out):
    """A kernel-logger UserSID block: None for the 4-byte null form, else the SID after TOKEN_USER."""
    if pos + 4 > n:
        return -1
    if _u32(b + pos) == 0:
        out.append(None)
        return pos + 4
    return _sid(b, n, pos + 2 * psize, out)


cdef inline bint _small(object v):
    return type(v) is int and -2147483648 <= v < 2147483648


cdef object _start_v0_v2(int version, const uint8_t *b, Py_ssize_t n):
    cdef list s = []
    cdef Py_ssize_t pos
    if version == 0:
        if n < 20 or _utf16z(b, n, 20, s) < 0:
            return None
        return {"ProcessID": _u32(b), "CreateTime": _u64(b + 4), "ParentProcessID": _u32(b + 12),
                "SessionID": _u32(b + 16), "ImageName": s[0]}
    if n < 24:
        return None
    pos = _utf16z(b, n, 24, s)
    if pos < 0:
        return None
    out = {"ProcessID": _u32(b), "CreateTime": _u64(b + 4), "ParentProcessID": _u32(b + 12),
           "SessionID": _u32(b + 16), "Flags": _u32(b + 20), "ImageName": s[0]}
    if version >= 2:
        if pos + 8 > n:
            return None
        out["ImageChecksum"] = _u32(b + pos)
        out["TimeDateStamp"] = _u32(b + pos + 4)
        pos = _utf16z(b, n, pos + 8, s)
        if pos < 0 or _utf16z(b, n, pos, s) < 0:
            return None
        out["PackageFullName"] = s[1]
        out["PackageRelativeAppId"] = s[2]
    return out


cdef object _start_v3_v5(int level, const uint8_t *b, Py_ssize_t n):
    cdef list s = []
    cdef Py_ssize_t pos, at
    if n < 48:
        return None
    pos = _sid(b, n, 48, s)
    if pos < 0:
        return None
    pos = _utf16z(b, n, pos, s)
    if pos < 0 or pos + 8 > n:
        return None
    at = pos
    pos = _utf16z(b, n, pos + 8, s)
    if pos < 0:
        return None
    pos = _utf16z(b, n, pos, s)
    if pos < 0:
        return None
    if (level == 4 and pos + 4 > n) or (level >= 5 and pos + 10 > n):
        return None
    out = {"ProcessID": _u32(b), "ProcessSequenceNumber": _u64(b + 4), "CreateTime": _u64(b + 12),
           "ParentProcessID": _u32(b + 20), "ParentProcessSequenceNumber": _u64(b + 24),
           "SessionID": _u32(b + 32), "Flags": _u32(b + 36), "ProcessTokenElevationType": _u32(b + 40),
           "ProcessTokenIsElevated": _u32(b + 44), "MandatoryLabel": s[0], "ImageName": s[1],
           "ImageChecksum": _u32(b + at), "TimeDateStamp": _u32(b + at + 4),
           "PackageFullName": s[2], "PackageRelativeAppId": s[3]}
    if level == 4:
        out["SecurityMitigations"] = _u32(b + pos)
    elif level >= 5:
        out["SecurityMitigations"] = _u32(b + pos)
        out["PartitionID"] = _u32(b + pos + 4)
        out["ProcessMachine"] = _u16(b + pos + 8)
    return out


cdef object _stop(int version, const uint8_t *b, Py_ssize_t n):
    cdef list s = []
    cdef Py_ssize_t head = 48 if version == 0 else (76 if version == 1 else 84)
    cdef const uint8_t *p = b
    if n < head or _ansiz(b, n, head, s) < 0:
        return None
    out = {"ProcessID": _u32(p)}
    p += 4
    if version >= 2:
        out["ProcessSequenceNumber"] = _u64(p)
        p += 8
    out["CreateTime"] = _u64(p)
    out["ExitTime"] = _u64(p + 8)
    out["ExitCode"] = _u32(p + 16)
    out["TokenElevationType"] = _u32(p + 20)
    out["HandleCount"] = _u32(p + 24)
    out["CommitCharge"] = _u64(p + 28)
    out["CommitPeak"] = _u64(p + 36)
    p += 44
    if version >= 1:
        out["CPUCycleCount"] = _u64(p)
        out["ReadOperationCount"] = _u32(p + 8)
        out["WriteOperationCount"] = _u32(p + 12)
        out["ReadTransferKiloBytes"] = _u32(p + 16)
        out["WriteTransferKiloBytes"] = _u32(p + 20)
        out["HardFaultCount"] = _u32(p + 24)
    out["ImageName"] = s[0]
    return out


def kernel_process(event_id, version, buf):
    """``decode_kernel_process``'s dict, or None where it raises (the caller runs it then)."""
    if type(buf) is not bytes or not _small(event_id) or not _small(version):
        return None
    cdef int eid = event_id
    cdef int v = version
    cdef const uint8_t *b = <const uint8_t *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    if v < 0:
        return None
    if eid == 1:
        if v <= 2:
            return _start_v0_v2(v, b, n)
        return _start_v3_v5(min(v, 5), b, n)
    if eid == 15:
        if v == 0:
            return _start_v0_v2(2, b, n)
        return _start_v3_v5(min(v, 3) + 2, b, n)
    if eid == 2:
        return _stop(min(v, 2), b, n)
    return None


def system_process(opcode, version, buf, pointer_size=8):
    """``decode_system_process``'s dict, or None where it raises (the caller runs it then)."""
    if (type(buf) is not bytes or not _small(opcode) or not _small(version)
            or type(pointer_size) is not int or (pointer_size != 4 and pointer_size != 8)):
        return None
    cdef int op = opcode
    cdef int v = version
    cdef int p = pointer_size
    cdef const uint8_t *b = <const uint8_t *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t pos
    cdef list s = []
    if v < 0 or not (op == 1 or op == 2 or op == 3 or op == 4 or op == 39):
        return None
    if v == 0:
        if n < 8:
            return None
        pos = _token_sid(b, n, 8, p, s)
        if pos < 0 or _ansiz(b, n, pos, s) < 0:
            return None
        return {"ProcessId": _u32(b), "ParentId": _u32(b + 4), "UserSID": s[0], "ImageFileName": s[1]}
    if n < p + 16:
        return None
    out = {"PageDirectoryBase" if v == 1 else "UniqueProcessKey": _ptr(b, p),
           "ProcessId": _u32(b + p), "ParentId": _u32(b + p + 4), "SessionId": _u32(b + p + 8),
           "ExitStatus": <int32_t>_u32(b + p + 12)}
    pos = p + 16
    if v >= 3:
        if pos + p > n:
            return None
        out["DirectoryTableBase"] = _ptr(b + pos, p)
        pos += p
    if v >= 4:
        if pos + 4 > n:
            return None
        out["Flags"] = _u32(b + pos)
        pos += 4
    pos = _token_sid(b, n, pos, p, s)
    if pos < 0:
        return None
    out["UserSID"] = s[0]
    pos = _ansiz(b, n, pos, s)
    if pos < 0:
        return None
    out["ImageFileName"] = s[1]
    if v >= 2:
        pos = _utf16z(b, n, pos, s)
        if pos < 0:
            return None
        out["CommandLine"] = s[2]
    if v >= 4:
        pos = _utf16z(b, n, pos, s)
        if pos < 0:
            return None
        out["PackageFullName"] = s[3]
        pos = _utf16z(b, n, pos, s)
        if pos < 0:
            return None
        out["ApplicationId"] = s[4]
        if op == 39 and v >= 5:
            if pos + 8 > n:
                return None
            out["ExitTime"] = _u64(b + pos)
    return out
