"""ETW payload decoders against golden payloads built from the field lists extracted from Windows.

The payloads are built by a type-driven encoder written here from ``tests/data/etw/*.tsv`` (the
manifest and MOF field lists), never from the decoders' offsets.  The fast decoders are then
compared with the manifest-driven generic decoder (their pure-Python twin).
"""
from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.sources import etw_manifest
from sensor.sources.etw_decode import (
    DecodeError,
    PayloadDecoder,
    decode_kernel_process,
    decode_kernel_process_generic,
    decode_system_process,
    decode_generic,
    decode_system_process_generic,
    read_sid,
    read_token_sid,
)

from .conftest import SHARED, needs_shared

DATA = Path(__file__).resolve().parent / "data" / "etw"
KP_TSV = DATA / "kernel-process-manifest.tsv"
MOF_TSV = DATA / "kernel-trace-process-mof.tsv"

_SIG = re.compile(r"^(\w+)\((.*)\)$")


def read_tsv(path: Path, key_cols: tuple[str, ...]) -> dict:
    """{key: (template name, [(type, field), ...])} from one of the extracted TSV files."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    out = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        row = dict(zip(header, line.split("\t")))
        name, body = _SIG.match(row["event(fields)"]).groups()
        fields = [tuple(p.split()) for p in body.split(", ")]
        out[tuple(int(row[c]) for c in key_cols)] = (name, fields)
    return out


KP_ROWS = read_tsv(KP_TSV, ("event_id", "version"))
MOF_ROWS = read_tsv(MOF_TSV, ("event_id", "version"))


# -- the encoder: from TSV type names only -----------------------------------------------------
# The MOF dump writes pointer-sized members as UInt32 and UserSID as "Object"; the wire format
# (Microsoft's Process_TypeGroup1 ``pointer`` qualifiers, TOKEN_USER then SID) is restated here
# independently of sensor.sources.etw_manifest.
MOF_POINTER_FIELDS = {"UniqueProcessKey", "PageDirectoryBase", "DirectoryTableBase"}


def enc_sid(sid) -> bytes:
    auth, subs = sid
    return bytes([1, len(subs)]) + auth.to_bytes(6, "big") + b"".join(struct.pack("<I", s) for s in subs)


def sid_text(sid) -> str:
    auth, subs = sid
    head = str(auth) if auth < 2**32 else "0x%012X" % auth
    return "-".join(["S-1", head] + [str(s) for s in subs])


def encode(fields, values: dict, mof: bool = False, pointer_size: int = 8) -> bytes:
    """Pack ``values`` (wire form) field by field, driven by the TSV type names."""
    out = bytearray()
    for typ, name in fields:
        v = values[name]
        if mof and name in MOF_POINTER_FIELDS:
            out += v.to_bytes(pointer_size, "little")
        elif typ == "UInt16":
            out += struct.pack("<H", v)
        elif typ == "UInt32":
            out += struct.pack("<I", v)
        elif typ == "SInt32":
            out += struct.pack("<i", v)
        elif typ in ("UInt64", "FILETIME"):
            out += struct.pack("<Q", v)
        elif typ == "SID":
            out += enc_sid(v)
        elif typ == "Object":  # UserSID: TOKEN_USER (PSID, Attributes), then the SID; or a null DWORD
            if v is None:
                out += b"\0\0\0\0"
            else:
                out += (0x1000).to_bytes(pointer_size, "little") + bytes(pointer_size) + enc_sid(v)
        elif typ == "UnicodeString" or (typ == "String" and name != "ImageFileName"):
            out += v.encode("utf-16-le") + b"\0\0"
        elif typ in ("AnsiString", "String"):
            out += v.encode("cp1252") + b"\0"
        else:
            raise AssertionError(f"encoder does not know {typ}")
    return bytes(out)


def expected(fields, values: dict) -> dict:
    """What a decoder must return for ``values``."""
    out = {}
    for typ, name in fields:
        v = values[name]
        if typ == "SID" or (typ == "Object" and v is not None):
            v = sid_text(v)
        out[name] = v
    return out


# -- values ---------------------------------------------------------------------------------------
ANSI_ALPHABET = "".join(
    ch for ch in (bytes([b]).decode("cp1252", "ignore") for b in range(1, 256)) if ch
)
utf16_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
ansi_text = st.text(st.sampled_from(ANSI_ALPHABET), max_size=20)
sids = st.tuples(st.integers(0, 2**48 - 1), st.lists(st.integers(0, 2**32 - 1), max_size=15))


def strategy_for(typ: str, name: str, mof: bool, pointer_size: int):
    if mof and name in MOF_POINTER_FIELDS:
        return st.integers(0, 2 ** (8 * pointer_size) - 1)
    return {
        "UInt16": st.integers(0, 2**16 - 1),
        "UInt32": st.integers(0, 2**32 - 1),
        "SInt32": st.integers(-(2**31), 2**31 - 1),
        "UInt64": st.integers(0, 2**64 - 1),
        "FILETIME": st.integers(0, 2**64 - 1),
        "SID": sids,
        "Object": st.none() | sids,
        "UnicodeString": utf16_text,
        "AnsiString": ansi_text,
        "String": ansi_text if name == "ImageFileName" else utf16_text,
    }[typ]


def sample_values(fields, seed: int, mof: bool = False, pointer_size: int = 8) -> dict:
    """Deterministic, realistic-looking values for a golden payload."""
    rnd = random.Random(seed)
    vals = {}
    for typ, name in fields:
        if mof and name in MOF_POINTER_FIELDS:
            vals[name] = rnd.getrandbits(8 * pointer_size)
        elif typ == "UInt16":
            vals[name] = 0x8664
        elif typ in ("UInt32", "SInt32"):
            vals[name] = rnd.randrange(1, 70000)
        elif typ in ("UInt64", "FILETIME"):
            vals[name] = 133_000_000_000_000_000 + rnd.getrandbits(40)
        elif typ == "SID":
            vals[name] = (16, [12288])                        # S-1-16-12288, High integrity
        elif typ == "Object":
            vals[name] = (5, [21, 1004336348, 1177238915, 682003330, 1001])
        elif name == "ImageName" and typ == "UnicodeString":
            vals[name] = r"\Device\HarddiskVolume3\Windows\System32\wbem\mofcomp.exe"
        elif name == "ImageName":
            vals[name] = "mofcomp.exe"
        elif name == "ImageFileName":
            vals[name] = "mofcomp.exe"
        elif name == "CommandLine":
            vals[name] = r'mofcomp.exe "C:\Users\Public\évil ☃.mof"'
        else:
            vals[name] = "" if rnd.random() < 0.5 else "Microsoft.App_1.0_x64__8wekyb3d8bbwe"
    return vals


KP_KEYS = sorted(KP_ROWS)
SL_KEYS = sorted(k for k in MOF_ROWS if k[1] >= 0)


# -- the manifest module is the TSV data --------------------------------------------------------

def test_manifest_module_matches_extracted_field_lists():
    for key, (name, fields) in KP_ROWS.items():
        schema = etw_manifest.KERNEL_PROCESS[key]
        assert schema.name == name
        assert [f for f, _ in schema.fields] == [f for _, f in fields]
    assert set(etw_manifest.KERNEL_PROCESS) == set(KP_ROWS)
    for (opcode, ver), (name, fields) in MOF_ROWS.items():
        schema = etw_manifest.system_process_schema(opcode, ver)
        assert [f for f, _ in schema.fields] == [f for _, f in fields], (opcode, ver)


def test_kernel_process_versions_cover_every_build():
    assert {v for (e, v) in KP_ROWS if e == 1} == set(range(6))
    assert {v for (e, v) in KP_ROWS if e == 2} == set(range(3))
    assert {v for (e, v) in KP_ROWS if e == 15} == set(range(4))


@needs_shared
def test_tests_data_is_a_copy_of_shared():
    for f in (KP_TSV, MOF_TSV):
        assert f.read_bytes() == (SHARED / "data" / "etw" / f.name).read_bytes()


# -- golden payloads --------------------------------------------------------------------------

@pytest.mark.parametrize("key", KP_KEYS, ids=[f"id{e}v{v}" for e, v in KP_KEYS])
def test_kernel_process_golden(key):
    eid, ver = key
    _, fields = KP_ROWS[key]
    for seed in range(3):
        vals = sample_values(fields, seed)
        payload = encode(fields, vals)
        want = expected(fields, vals)
        assert decode_kernel_process(eid, ver, payload) == want
        assert decode_kernel_process_generic(eid, ver, payload) == want


@pytest.mark.parametrize("pointer_size", [8, 4])
@pytest.mark.parametrize("key", SL_KEYS, ids=[f"op{e}v{v}" for e, v in SL_KEYS])
def test_system_logger_golden(key, pointer_size):
    opcode, ver = key
    _, fields = MOF_ROWS[key]
    for seed in range(3):
        vals = sample_values(fields, seed, mof=True, pointer_size=pointer_size)
        if seed == 2 and "UserSID" in vals:
            vals["UserSID"] = None                      # the 4-byte null form
        payload = encode(fields, vals, mof=True, pointer_size=pointer_size)
        want = expected(fields, vals)
        assert decode_system_process(opcode, ver, payload, pointer_size) == want
        assert decode_system_process_generic(opcode, ver, payload, pointer_size) == want


def test_v3_image_name_offset_follows_the_sid_length():
    """Reference §1.2: with a 12-byte integrity SID ImageName starts at 60; a longer SID moves it."""
    _, fields = KP_ROWS[(1, 3)]
    vals = sample_values(fields, 0)
    payload = encode(fields, vals)
    image = vals["ImageName"].encode("utf-16-le")
    assert payload.index(image) == 60
    vals["MandatoryLabel"] = (16, [12288, 7, 9])          # 20 bytes
    payload = encode(fields, vals)
    assert payload.index(image) == 68
    assert decode_kernel_process(1, 3, payload)["ImageName"] == vals["ImageName"]
    assert decode_kernel_process(1, 3, payload)["MandatoryLabel"] == "S-1-16-12288-7-9"


def test_system_logger_v4_layout_matches_fibratus_offsets():
    """x64 Process v4: ProcessId@8, ParentId@12, DirectoryTableBase@24, UserSID block @36."""
    _, fields = MOF_ROWS[(1, 4)]
    vals = sample_values(fields, 1, mof=True)
    payload = encode(fields, vals, mof=True)
    assert struct.unpack_from("<I", payload, 8)[0] == vals["ProcessId"]
    assert struct.unpack_from("<I", payload, 12)[0] == vals["ParentId"]
    assert struct.unpack_from("<Q", payload, 24)[0] == vals["DirectoryTableBase"]
    assert payload[36 + 16] == 1 and payload[36 + 17] == 5   # SID revision/count after TOKEN_USER
    out = decode_system_process(1, 4, payload)
    assert out["CommandLine"] == vals["CommandLine"]
    assert out["UserSID"] == "S-1-5-21-1004336348-1177238915-682003330-1001"


def test_stop_image_name_is_ansi_short_name():
    _, fields = KP_ROWS[(2, 2)]
    vals = sample_values(fields, 0)
    vals["ImageName"] = "cmd.exe"
    out = decode_kernel_process(2, 2, encode(fields, vals))
    assert out["ImageName"] == "cmd.exe" and out["ProcessSequenceNumber"] == vals["ProcessSequenceNumber"]


def test_newer_version_reads_with_newest_layout():
    _, fields = KP_ROWS[(1, 5)]
    vals = sample_values(fields, 0)
    payload = encode(fields, vals) + b"\x01\x02\x03\x04"   # a future v6 appends a field
    want = expected(fields, vals)
    assert decode_kernel_process(1, 6, payload) == want
    assert decode_kernel_process_generic(1, 6, payload) == want
    dec = PayloadDecoder()
    assert dec.kernel_process(1, 6, payload) == want
    assert dec.unknown_versions[(1, 6)] == 1


def test_every_truncation_is_an_error_in_both_and_counted():
    dec = PayloadDecoder()
    checked = 0
    for (eid, ver), (_, fields) in KP_ROWS.items():
        payload = encode(fields, sample_values(fields, 7))
        for cut in range(len(payload)):
            short = payload[:cut]
            with pytest.raises(DecodeError):
                decode_kernel_process(eid, ver, short)
            with pytest.raises(DecodeError):
                decode_kernel_process_generic(eid, ver, short)
            assert dec.kernel_process(eid, ver, short) is None
            checked += 1
    assert dec.errors == checked and dec.decoded == 0


def test_decoder_rejects_bad_sids_and_unknown_events():
    _, fields = KP_ROWS[(1, 4)]
    vals = sample_values(fields, 0)
    payload = bytearray(encode(fields, vals))
    payload[48] = 2                                       # SID revision 2
    dec = PayloadDecoder()
    assert dec.kernel_process(1, 4, bytes(payload)) is None
    payload[48], payload[49] = 1, 16                      # 16 sub-authorities > SID_MAX
    assert dec.kernel_process(1, 4, bytes(payload)) is None
    assert dec.kernel_process(99, 0, b"\0" * 64) is None  # not a process event
    assert dec.system_process(10, 2, b"\0" * 64) is None
    assert dec.errors == 4
    assert dec.stats()["decode_errors"] == 4


# -- property tests: fast == twin, never raises -------------------------------------------------

@st.composite
def kp_cases(draw):
    eid, ver = draw(st.sampled_from(KP_KEYS))
    _, fields = KP_ROWS[(eid, ver)]
    vals = {name: draw(strategy_for(typ, name, False, 8)) for typ, name in fields}
    return eid, ver, fields, vals


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kp_cases(), st.data())
def test_kernel_process_fast_equals_twin_on_random_values(case, data):
    eid, ver, fields, vals = case
    payload = encode(fields, vals)
    want = expected(fields, vals)
    assert decode_kernel_process(eid, ver, payload) == want
    assert decode_kernel_process_generic(eid, ver, payload) == want
    # A truncated or corrupted payload: both agree (same dict or both DecodeError).
    cut = data.draw(st.integers(0, len(payload)))
    flip = data.draw(st.lists(st.tuples(st.integers(0, max(len(payload) - 1, 0)), st.integers(0, 255)), max_size=3))
    mutated = bytearray(payload[:cut])
    for i, b in flip:
        if i < len(mutated):
            mutated[i] = b
    assert_same(lambda: decode_kernel_process(eid, ver, bytes(mutated)),
                lambda: decode_kernel_process_generic(eid, ver, bytes(mutated)))
    PayloadDecoder().kernel_process(eid, ver, bytes(mutated))   # never raises


@st.composite
def sl_cases(draw):
    opcode, ver = draw(st.sampled_from(SL_KEYS))
    psize = draw(st.sampled_from([4, 8]))
    _, fields = MOF_ROWS[(opcode, ver)]
    vals = {name: draw(strategy_for(typ, name, True, psize)) for typ, name in fields}
    return opcode, ver, psize, fields, vals


@settings(max_examples=200, deadline=None)
@given(sl_cases(), st.integers(0, 400))
def test_system_logger_fast_equals_twin_on_random_values(case, cut):
    opcode, ver, psize, fields, vals = case
    payload = encode(fields, vals, mof=True, pointer_size=psize)
    want = expected(fields, vals)
    assert decode_system_process(opcode, ver, payload, psize) == want
    assert decode_system_process_generic(opcode, ver, payload, psize) == want
    short = payload[:cut]
    assert_same(lambda: decode_system_process(opcode, ver, short, psize),
                lambda: decode_system_process_generic(opcode, ver, short, psize))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2, 15, 3, 0]), st.integers(0, 8), st.binary(max_size=200))
def test_random_bytes_never_escape(eid, ver, blob):
    dec = PayloadDecoder()
    dec.kernel_process(eid, ver, blob)
    dec.system_process(eid, ver, blob, 8)
    assert dec.decoded + dec.errors == 2
    if eid in (1, 2, 15):
        assert_same(lambda: decode_kernel_process(eid, ver, blob),
                    lambda: decode_kernel_process_generic(eid, ver, blob))


def assert_same(fast, twin):
    try:
        a = fast()
    except DecodeError:
        a = DecodeError
    try:
        b = twin()
    except DecodeError:
        b = DecodeError
    assert a == b


@pytest.mark.parametrize("authority,text", [
    (5, "S-1-5-18"),
    (2**32 - 1, "S-1-4294967295-18"),        # the largest authority written in decimal
    (2**32, "S-1-0x000100000000-18"),        # from 2**32 on: hex, 12 digits (ConvertSidToStringSid)
    (2**48 - 1, "S-1-0xFFFFFFFFFFFF-18"),
])
def test_sid_identifier_authority_boundary(authority, text):
    raw = bytes([1, 1]) + authority.to_bytes(6, "big") + struct.pack("<I", 18)
    assert read_sid(b"pad" + raw, 3) == (text, 3 + len(raw))


# -- boundaries: what each decoder promises at the edges -----------------------------------------

@pytest.mark.parametrize("pointer_size", [8, 4])
def test_every_system_logger_truncation_is_an_error_in_both_and_counted(pointer_size):
    """The module's rule: every declared field must be present. A payload cut anywhere, in a
    pointer, the UserSID block (null or not) or the Defunct record's trailing ExitTime, is a
    DecodeError in both decoders (never another exception) and is counted, not raised."""
    dec = PayloadDecoder()
    checked = 0
    per_event: dict = {}
    for (opcode, ver), (_, fields) in MOF_ROWS.items():
        if ver < 0:
            continue
        for seed in range(2):
            vals = sample_values(fields, 7 + seed, mof=True, pointer_size=pointer_size)
            if seed and "UserSID" in vals:
                vals["UserSID"] = None
            payload = encode(fields, vals, mof=True, pointer_size=pointer_size)
            for cut in range(len(payload)):
                short = payload[:cut]
                with pytest.raises(DecodeError):
                    decode_system_process(opcode, ver, short, pointer_size)
                with pytest.raises(DecodeError):
                    decode_system_process_generic(opcode, ver, short, pointer_size)
                assert dec.system_process(opcode, ver, short, pointer_size) is None
                checked += 1
                per_event[f"system_process/{opcode}/{ver}"] = per_event.get(f"system_process/{opcode}/{ver}", 0) + 1
    assert dec.errors == checked and dec.decoded == 0
    assert dec.stats()["decode_errors_by_event"] == per_event


def test_a_sid_may_end_exactly_where_the_buffer_ends():
    """A SID is 8 + 4 * SubAuthorityCount bytes (reference §1.2); 0 sub-authorities is a valid
    count, so an 8-byte SID at the very end of the buffer is whole."""
    raw = bytes([1, 0]) + (5).to_bytes(6, "big")
    assert read_sid(b"pad" + raw, 3) == ("S-1-5", 11)
    one = bytes([1, 1]) + (16).to_bytes(6, "big") + struct.pack("<I", 12288)
    assert read_sid(one, 0) == ("S-1-16-12288", 12)
    with pytest.raises(DecodeError):
        read_sid(one[:-1], 0)


@pytest.mark.parametrize("pointer_size", [8, 4])
def test_a_userid_block_may_end_exactly_where_the_buffer_ends(pointer_size):
    """UserSID (kernel logger): the 4-byte null form, or TOKEN_USER (two pointers) then the SID."""
    assert read_token_sid(b"\0\0\0\0", 0, pointer_size) == (None, 4)
    assert read_token_sid(b"xy\0\0\0\0", 2, pointer_size) == (None, 6)
    sid = bytes([1, 1]) + (5).to_bytes(6, "big") + struct.pack("<I", 18)
    block = (0x1000).to_bytes(pointer_size, "little") + bytes(pointer_size) + sid
    assert read_token_sid(block, 0, pointer_size) == ("S-1-5-18", len(block))
    for cut in range(4):
        with pytest.raises(DecodeError):
            read_token_sid(b"\0" * cut, 0, pointer_size)


def test_known_versions_are_not_counted_as_unknown_newer_ones_are():
    """docs/etw.md: a newer version than the ones known is read with the newest known layout and
    counted under unknown_versions; a known version is not counted."""
    dec = PayloadDecoder()
    n = 0
    for (eid, ver), (_, fields) in KP_ROWS.items():
        vals = sample_values(fields, 1)
        assert dec.kernel_process(eid, ver, encode(fields, vals)) == expected(fields, vals)
        n += 1
    for (opcode, ver), (_, fields) in MOF_ROWS.items():
        if ver >= 0:   # x64 payloads, the wrapper's default pointer size
            vals = sample_values(fields, 1, mof=True)
            assert dec.system_process(opcode, ver, encode(fields, vals, mof=True)) == expected(fields, vals)
            n += 1
    assert dec.stats()["unknown_versions"] == {}
    assert dec.stats()["decoded"] == n and dec.errors == 0

    # Kernel logger: v4 is the newest Start/End/DCStart/DCEnd layout; Defunct has a v5.
    _, v4 = MOF_ROWS[(1, 4)]
    vals = sample_values(v4, 2, mof=True)
    newer = encode(v4, vals, mof=True) + b"\x01\x02\x03\x04\x05\x06\x07\x08"
    for opcode in (1, 2, 3, 4):
        assert dec.system_process(opcode, 5, newer) == expected(v4, vals)
    _, d5 = MOF_ROWS[(39, 5)]
    dvals = sample_values(d5, 3, mof=True)
    assert dec.system_process(39, 6, encode(d5, dvals, mof=True) + b"\xff" * 8) == expected(d5, dvals)
    assert dec.stats()["unknown_versions"] == {
        "system_process/1/5": 1, "system_process/2/5": 1, "system_process/3/5": 1,
        "system_process/4/5": 1, "system_process/39/6": 1}
    top = {e: max(v for (e2, v) in KP_ROWS if e2 == e) for e in (1, 2, 15)}
    for eid, v in top.items():
        _, fields = KP_ROWS[(eid, v)]
        assert dec.kernel_process(eid, v + 1, encode(fields, sample_values(fields, 4))) is not None
    assert dec.stats()["unknown_versions"]["1/6"] == 1
    assert dec.stats()["unknown_versions"]["2/3"] == 1
    assert dec.stats()["unknown_versions"]["15/4"] == 1
    assert dec.errors == 0


@pytest.mark.parametrize("version", [-1, -2, -256])
def test_a_negative_version_is_a_decode_error_in_every_decoder(version):
    """The decoders raise DecodeError or return fields, nothing else (the module's contract)."""
    blob = bytes(range(200))
    # Payloads whole for the layouts a negative version would otherwise fall into.
    start_v1 = encode(KP_ROWS[(1, 1)][1], sample_values(KP_ROWS[(1, 1)][1], 0))
    stop_v2 = encode(KP_ROWS[(2, 2)][1], sample_values(KP_ROWS[(2, 2)][1], 0))
    start_v3 = encode(KP_ROWS[(1, 3)][1], sample_values(KP_ROWS[(1, 3)][1], 0))
    for decode in (lambda: decode_kernel_process(1, version, start_v1),
                   lambda: decode_kernel_process(2, version, stop_v2),
                   lambda: decode_kernel_process(15, version, start_v3),
                   lambda: decode_kernel_process_generic(1, version, start_v1),lambda: decode_kernel_process(1, version, blob),
                   lambda: decode_kernel_process_generic(1, version, blob),
                   lambda: decode_kernel_process(15, version, blob),
                   lambda: decode_kernel_process_generic(2, version, blob),
                   lambda: decode_system_process(1, version, blob),
                   lambda: decode_system_process_generic(1, version, blob),
                   lambda: decode_system_process(39, version, blob, 4),
                   lambda: decode_system_process_generic(39, version, blob, 4)):
        with pytest.raises(DecodeError):
            decode()


def test_the_sid_cache_is_bounded_and_never_answers_for_another_sid():
    """Work and memory per event are bounded for any input: a stream of distinct SIDs (one per
    event, as a hostile host can produce) leaves the decoder's SID cache at its cap, and each
    event still gets its own SID."""
    from sensor.sources import etw_decode

    _, fields = KP_ROWS[(1, 3)]
    vals = sample_values(fields, 0)
    for i in range(etw_decode._SID_CACHE_MAX + 200):
        vals["MandatoryLabel"] = (16, [i, 4096 + i])
        out = decode_kernel_process(1, 3, encode(fields, vals))
        assert out["MandatoryLabel"] == f"S-1-16-{i}-{4096 + i}"
    assert len(etw_decode._SID_CACHE) <= etw_decode._SID_CACHE_MAX
    for i in range(0, etw_decode._SID_CACHE_MAX + 200, 97):   # again: cached or not, the same
        vals["MandatoryLabel"] = (16, [i, 4096 + i])
        assert decode_kernel_process(1, 3, encode(fields, vals))["MandatoryLabel"] == f"S-1-16-{i}-{4096 + i}"


def test_the_twin_reads_x64_pointers_by_default_like_the_fast_decoder():
    """Both decoders take the pointer size as an argument defaulting to 8 (x64, the sensor's
    platform): called without it, the twin must give the fast decoder's answer."""
    for (opcode, ver), (_, fields) in MOF_ROWS.items():
        if ver < 0:
            continue
        vals = sample_values(fields, 5, mof=True, pointer_size=8)
        payload = encode(fields, vals, mof=True, pointer_size=8)
        want = expected(fields, vals)
        assert decode_system_process(opcode, ver, payload) == want
        assert decode_system_process_generic(opcode, ver, payload) == want
        assert decode_generic(etw_manifest.system_process_schema(opcode, ver), payload) == want


# -- ProcessStop: only what the process table needs ---------------------------------------------

STOP_KEYS = sorted(k for k in KP_ROWS if k[0] == 2)


def stop_ids_from_fields(fields):
    """What ``process_stop`` must answer, derived from the full decoder's fields."""
    if fields is None:
        return None
    return (fields["ProcessID"], fields.get("CreateTime"), fields.get("ProcessSequenceNumber"),
            fields.get("ExitTime"))


def assert_stop_agrees(version: int, payload: bytes) -> None:
    """process_stop == the full decoder's fields, and both decoders count the same."""
    for compiled in (True, False):
        lean, full = PayloadDecoder(compiled=compiled), PayloadDecoder(compiled=compiled)
        assert lean.process_stop(version, payload) == stop_ids_from_fields(full.kernel_process(2, version, payload))
        assert lean.stats() == full.stats()
        assert lean.last_error == full.last_error


def test_process_stop_every_layout_and_every_truncation():
    checked = 0
    for (eid, ver), (_, fields) in KP_ROWS.items():
        if eid != 2:
            continue
        payload = encode(fields, sample_values(fields, 11))
        ids = PayloadDecoder().process_stop(ver, payload)
        assert ids is not None and ids[0] == sample_values(fields, 11)["ProcessID"]
        for cut in range(len(payload) + 1):
            assert_stop_agrees(ver, payload[:cut])
            checked += 1
    assert checked > 100
    # versions the module does not know: read with the newest layout, counted as unknown
    _, fields = KP_ROWS[(2, 2)]
    payload = encode(fields, sample_values(fields, 12))
    for ver in (-1, 3, 9):
        assert_stop_agrees(ver, payload)


def test_process_stop_reads_every_known_layout_without_the_full_decoder(monkeypatch):
    """The lean read's promise: a well-formed ProcessStop of every layout the module knows is
    answered from its fixed head, without building the full decoder's fields (the full decoder
    is only the fallback for what the lean read does not accept)."""
    full_calls = []
    real = PayloadDecoder.kernel_process

    def counting(self, *a, **k):
        full_calls.append(a)
        return real(self, *a, **k)
    monkeypatch.setattr(PayloadDecoder, "kernel_process", counting)
    versions = sorted(ver for eid, ver in KP_ROWS if eid == 2)
    assert versions[0] == 0
    for ver in versions:
        _, fields = KP_ROWS[(2, ver)]
        vals = sample_values(fields, 13)
        for name in ("ImageName",):        # the shortest ImageName too: its terminator right after the head
            for image in (vals.get(name, ""), ""):
                payload = encode(fields, {**vals, name: image})
                dec = PayloadDecoder(compiled=False)
                ids = dec.process_stop(ver, payload)
                assert ids is not None and ids[0] == vals["ProcessID"], (ver, image)
                assert dec.stats()["decoded"] == 1
    assert full_calls == []
    # and what it does not accept still reaches the full decoder (a cut head)
    _, fields = KP_ROWS[(2, versions[-1])]
    PayloadDecoder(compiled=False).process_stop(versions[-1], encode(fields, sample_values(fields, 13))[:8])
    assert len(full_calls) == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(STOP_KEYS), st.data())
def test_process_stop_equals_the_full_decoder_on_random_values(key, data):
    _, fields = KP_ROWS[key]
    vals = {name: data.draw(strategy_for(typ, name, False, 8)) for typ, name in fields}
    payload = encode(fields, vals)
    assert_stop_agrees(key[1], payload)
    cut = data.draw(st.integers(0, len(payload)))
    flip = data.draw(st.lists(st.tuples(st.integers(0, max(len(payload) - 1, 0)), st.integers(0, 255)), max_size=3))
    mutated = bytearray(payload[:cut])
    for i, b in flip:
        if i < len(mutated):
            mutated[i] = b
    assert_stop_agrees(data.draw(st.integers(-1, 4)), bytes(mutated))


@settings(max_examples=300, deadline=None)
@given(st.integers(-2, 6), st.binary(max_size=160))
def test_process_stop_equals_the_full_decoder_on_random_bytes(version, blob):
    assert_stop_agrees(version, blob)
