"""The compiled process-record decoder (native/_etw_decode.pyx) against its twin.

The twin is ``sensor.sources.etw_decode`` (``decode_kernel_process``, ``decode_system_process``):
on every input, valid, truncated, corrupted or hostile, the compiled decoder returns the twin's
dict (same keys, same order, same values) or None exactly where the twin raises DecodeError.
``PayloadDecoder`` with it counts what it counts without it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.sources import etw_decode
from sensor.sources.etw_decode import DecodeError, PayloadDecoder, decode_kernel_process, decode_system_process

from .conftest import ROOT
from .test_etw_decode import KP_ROWS, MOF_ROWS, encode, kp_cases, sample_values, sl_cases

native = pytest.importorskip("sensor.sources._etw_decode",
                             reason="the compiled ETW decoder is not built (`make build`)")


def twin_kp(eid, ver, buf):
    try:
        return decode_kernel_process(eid, ver, buf)
    except DecodeError:
        return None


def twin_sp(op, ver, buf, psize):
    try:
        return decode_system_process(op, ver, buf, psize)
    except DecodeError:
        return None


def same(a, b) -> None:
    assert (a is None) == (b is None), (a, b)
    if a is not None:
        assert list(a.items()) == list(b.items())
        assert [type(v) for v in a.values()] == [type(v) for v in b.values()]


def mutate(payload: bytes, cut: int, flips, tail: bytes) -> bytes:
    out = bytearray(payload[:cut])
    for i, b in flips:
        if i < len(out):
            out[i] = b
    return bytes(out) + tail


flips = st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kp_cases(), st.data())
def test_kernel_process_compiled_equals_twin(case, data):
    eid, ver, fields, vals = case
    payload = encode(fields, vals)
    same(native.kernel_process(eid, ver, payload), twin_kp(eid, ver, payload))
    assert native.kernel_process(eid, ver, payload) is not None
    cut = data.draw(st.integers(0, len(payload)))
    bad = mutate(payload, cut, data.draw(flips), data.draw(st.binary(max_size=8)))
    # newer versions read with the newest layout; an unknown id is refused by both
    for v in (ver, ver + 1, 7):
        same(native.kernel_process(eid, v, bad), twin_kp(eid, v, bad))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sl_cases(), st.data())
def test_system_logger_compiled_equals_twin(case, data):
    opcode, ver, psize, fields, vals = case
    payload = encode(fields, vals, mof=True, pointer_size=psize)
    same(native.system_process(opcode, ver, payload, psize), twin_sp(opcode, ver, payload, psize))
    assert native.system_process(opcode, ver, payload, psize) is not None
    cut = data.draw(st.integers(0, len(payload)))
    bad = mutate(payload, cut, data.draw(flips), data.draw(st.binary(max_size=8)))
    for op in (opcode, 39, 2):
        same(native.system_process(op, ver, bad, psize), twin_sp(op, ver, bad, psize))


ids = st.integers(-3, 40) | st.integers(-(2**70), 2**70) | st.sampled_from([1, 2, 15, 39])


@settings(max_examples=600, deadline=None)
@given(ids, ids, st.binary(max_size=300), st.sampled_from([4, 8, 0, 2, 16]))
def test_hostile_records_compiled_equals_twin(eid, ver, blob, psize):
    same(native.kernel_process(eid, ver, blob), twin_kp(eid, ver, blob))
    same(native.system_process(eid, ver, blob, psize), twin_sp(eid, ver, blob, psize))


@pytest.mark.parametrize("sid", [bytes([1, 0]) + bytes(6),                      # S-1-0, no sub-authority
                                 bytes([1, 15]) + b"\xff" * 6 + b"\xff" * 60,   # 15 x 4294967295, hex authority
                                 bytes([1, 1, 0, 0, 0, 0, 0, 16]) + b"\x00\x30\x00\x00",
                                 # the identifier authority either side of 2**32, where the text
                                 # turns from decimal to hex (ConvertSidToStringSid)
                                 bytes([1, 1]) + (2**32 - 1).to_bytes(6, "big") + b"\x12\x00\x00\x00",
                                 bytes([1, 1]) + (2**32).to_bytes(6, "big") + b"\x12\x00\x00\x00"])
def test_sid_forms(sid):
    _, fields = KP_ROWS[(1, 3)]
    payload = bytearray(encode(fields, sample_values(fields, 3)))
    payload[48:60] = sid
    same(native.kernel_process(1, 3, bytes(payload)), twin_kp(1, 3, bytes(payload)))
    assert native.kernel_process(1, 3, bytes(payload)) is not None


def test_strings_with_replacement_characters():
    # a lone surrogate, an unpaired high byte, cp1252's undefined 0x81 and a byte order mark
    _, fields = MOF_ROWS[(1, 4)]
    vals = sample_values(fields, 5, mof=True)
    payload = encode(fields, vals, mof=True)
    cmd = vals["CommandLine"].encode("utf-16-le")
    odd = b"\xff\xfe" + b"\x00\xd8" + b"a\x00"                # BOM, lone high surrogate, "a"
    payload = payload.replace(cmd, odd)
    name = vals["ImageFileName"].encode("cp1252")
    payload = payload.replace(name + b"\0", b"x\x81\xe9" + b"\0")
    got = native.system_process(1, 4, payload, 8)
    same(got, twin_sp(1, 4, payload, 8))
    assert got["ImageFileName"] == "x\ufffd\xe9" and "\ufffd" in got["CommandLine"]


def test_arguments_the_live_path_never_passes_go_to_the_twin():
    _, fields = KP_ROWS[(1, 3)]
    payload = encode(fields, sample_values(fields, 1))
    assert native.kernel_process(1, 3, bytearray(payload)) is None     # not bytes
    assert native.kernel_process(1, 2**40, payload) is None            # version out of range
    assert native.kernel_process(True, 3, payload) is None
    assert native.system_process(1, 2, payload, 6) is None             # pointer size
    # ... and PayloadDecoder gives the twin's answer for them, counted the same way
    _, fields5 = KP_ROWS[(1, 5)]
    payload5 = encode(fields5, sample_values(fields5, 1))
    with_, without = PayloadDecoder(), PayloadDecoder(compiled=False)
    for args in ((1, 2**40, payload5), (1, 3, bytearray(payload)), (True, 3, payload)):
        same(with_.kernel_process(*args), without.kernel_process(*args))
    assert PayloadDecoder().kernel_process(1, 2**40, payload5) == decode_kernel_process(1, 5, payload5)
    same(with_.system_process(1, 2, payload, 6), without.system_process(1, 2, payload, 6))
    assert with_.stats() == without.stats() and with_.last_error == without.last_error


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 15, 39, 3, 99]), st.integers(-1, 7),
                          st.binary(max_size=120)), max_size=12))
def test_payload_decoder_counts_the_same_with_and_without(records):
    a, b = PayloadDecoder(), PayloadDecoder(compiled=False)
    for eid, ver, blob in records:
        same(a.kernel_process(eid, ver, blob), b.kernel_process(eid, ver, blob))
        same(a.system_process(eid, ver, blob, 8), b.system_process(eid, ver, blob, 8))
    assert a.stats() == b.stats()
    assert a.last_error == b.last_error


@pytest.mark.skipif(not etw_decode.COMPILED, reason="the compiled ETW decoder is switched off (SENSOR_NO_EXTENSIONS=1)")
def test_payload_decoder_uses_the_compiled_decoder():
    assert etw_decode.COMPILED
    assert PayloadDecoder()._kp is native.kernel_process
    assert PayloadDecoder(compiled=False)._kp is None


def test_switched_off_the_twin_decodes_alone():
    code = ("from sensor.sources import etw_decode as d; assert not d.COMPILED; "
            "p = d.PayloadDecoder(); assert p._kp is None and p._sp is None; "
            "assert p.kernel_process(2, 0, bytes(48) + b'a\\0')['ImageName'] == 'a'; print('ok')")
    env = dict(os.environ, SENSOR_NO_EXTENSIONS="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_a_build_without_the_compiled_decoder_runs_the_twin():
    # An install where the extension did not build (no compiler): importing it fails, and the
    # module must still load and decode with the twin alone.
    code = ("import sys; sys.modules['sensor.sources._etw_decode'] = None\n"
            "from sensor.sources import etw_decode as d; assert not d.COMPILED\n"
            "p = d.PayloadDecoder(); assert p._kp is None and p._sp is None\n"
            "assert p.kernel_process(2, 0, bytes(48) + b'a\\0')['ImageName'] == 'a'; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "SENSOR_NO_EXTENSIONS"}
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@pytest.mark.parametrize("pointer_size", [8, 4])
def test_every_truncation_of_every_layout(pointer_size):
    """Cut anywhere (every byte of every layout, with and without a user SID): the compiled
    decoder refuses it where the twin does, and reads nothing past the end."""
    checked = 0
    for (eid, ver), (_, fields) in KP_ROWS.items():
        payload = encode(fields, sample_values(fields, 7))
        for cut in range(len(payload) + 1):
            for v in (ver, ver + 1):
                same(native.kernel_process(eid, v, payload[:cut]), twin_kp(eid, v, payload[:cut]))
                checked += 1
    for (opcode, ver), (_, fields) in MOF_ROWS.items():
        if ver < 0:
            continue
        for seed in range(2):
            vals = sample_values(fields, 7 + seed, mof=True, pointer_size=pointer_size)
            if seed and "UserSID" in vals:
                vals["UserSID"] = None
            payload = encode(fields, vals, mof=True, pointer_size=pointer_size)
            for cut in range(len(payload) + 1):
                same(native.system_process(opcode, ver, payload[:cut], pointer_size),
                     twin_sp(opcode, ver, payload[:cut], pointer_size))
                checked += 1
    assert checked > 5000
