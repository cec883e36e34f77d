"""IMPHASH and Hashes: the native reader, its pure-Python twin and pefile agree; the cache.

Every real PE file available is compared with pefile's ``get_imphash()``: the fixtures here and in
../shared, and the Windows launchers that pip and setuptools ship (real MSVC-built images with
imports), found under this Python's prefixes.
"""
from __future__ import annotations

import glob
import hashlib
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.enrich import _imphash_py, hashes
from sensor.enrich._imphash_ordinals import ORDINALS
from sensor.enrich.enricher import Enricher
from sensor.events import ProcessEvent

pefile = pytest.importorskip("pefile")
HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data" / "pe"
native = pytest.mark.skipif(hashes._native is None, reason="the native PE reader is not built")


def real_pes() -> list[str]:
    pats = [str(HERE / "data" / "pe" / "*.exe"), str(SHARED / "*.exe"), str(SHARED / "*" / "*.exe"),
            str(HERE.parent / "sensor" / "data" / "demo" / "*.exe")]
    for prefix in {sys.prefix, sys.base_prefix}:
        pats += [os.path.join(prefix, "lib", "python*", "site-packages", "**", "*.exe"),
                 os.path.join(prefix, "Lib", "site-packages", "**", "*.exe")]
    out, seen = [], set()
    for pat in pats:
        for p in sorted(glob.glob(pat, recursive=True)):
            if os.path.isfile(p) and os.path.getsize(p) < (8 << 20):
                digest = hashlib.sha256(Path(p).read_bytes()).digest()
                if digest not in seen:
                    seen.add(digest)
                    out.append(p)
    return out


def pefile_imphash(data: bytes) -> str | None:
    try:
        pe = pefile.PE(data=data, fast_load=True)
        pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]])
    except pefile.PEFormatError:
        return None
    return pe.get_imphash() or hashes.NO_IMPORTS


SEEDS = [p for p in real_pes() if pefile_imphash(Path(p).read_bytes()) not in (None, hashes.NO_IMPORTS)][:4]


def test_ordinal_tables_are_pefiles():
    from pefile import ordlookup
    for dll, names in ORDINALS.items():
        ref = {int(k): (v.decode() if isinstance(v, bytes) else v) for k, v in ordlookup.ords[dll.encode()].items()}
        assert names == ref, dll
    header = (HERE.parent / "native" / "pe_imphash_ordinals.h").read_text()
    for dll, names in ORDINALS.items():
        for k, v in names.items():
            assert f'{{{k}, "{v}"}}' in header, (dll, k)


def test_every_real_pe_agrees_with_pefile():
    files = real_pes()
    with_imports = 0
    for p in files:
        data = Path(p).read_bytes()
        ref = pefile_imphash(data)
        twin = hashes.imphash(data, "python")
        if hashes._native is not None:
            assert hashes.imphash(data, "native") == twin, p
        if ref is not None:
            assert twin == ref, p
            with_imports += ref != hashes.NO_IMPORTS
    assert with_imports >= 3, files          # the shared fixtures alone have imports


def test_bounds_are_refused_not_truncated():
    data = bytearray(Path(SEEDS[0]).read_bytes())
    lfanew = int.from_bytes(data[0x3C:0x40], "little")
    data[lfanew + 6:lfanew + 8] = (200).to_bytes(2, "little")       # 200 sections
    for impl in ("python",) + (("native",) if hashes._native is not None else ()):
        assert hashes.imphash_text(bytes(data), impl)[0] == _imphash_py.E_TOO_LARGE
        assert hashes.imphash(bytes(data), impl) is None
    assert hashes.imphash(b"MZ" + bytes(100)) == hashes.NO_IMPORTS


@native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS or [""]), edits=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12),
       cut=st.floats(0.05, 1.0))
def test_native_and_twin_agree_on_damaged_images(seed, edits, cut):
    if not seed:
        pytest.skip("no PE with imports found")
    data = bytearray(Path(seed).read_bytes())
    # damage mostly the headers and the import tables, where the reader looks
    for where, value in edits:
        data[int(where * min(len(data), 4096 if value & 1 else len(data)))] = value
    data = bytes(data[: max(64, int(len(data) * cut))])
    assert hashes.imphash_text(data, "native") == hashes.imphash_text(data, "python")


@native
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_native_and_twin_agree_on_junk(data):
    data = b"MZ" + data[2:] if len(data) > 2 else data
    assert hashes.imphash_text(data, "native") == hashes.imphash_text(data, "python")


def test_hashes_value_matches_hashlib_and_the_sysmon_format():
    data = Path(SEEDS[0] if SEEDS else real_pes()[0]).read_bytes()
    value = hashes.hashes_of(data, ("SHA256", "MD5", "IMPHASH", "SHA1"))
    parts = dict(p.split("=") for p in value.split(","))
    assert list(parts) == ["SHA256", "MD5", "IMPHASH", "SHA1"]
    assert parts["SHA256"] == hashlib.sha256(data).hexdigest().upper()
    assert parts["MD5"] == hashlib.md5(data).hexdigest().upper()
    assert parts["SHA1"] == hashlib.sha1(data).hexdigest().upper()
    assert parts["IMPHASH"] == (pefile_imphash(data) or hashes.NO_IMPORTS).upper()
    with pytest.raises(ValueError, match="unknown hash algorithm 'crc'"):
        hashes.check_algorithms(["sha256", "crc"])


def test_cache_by_file_identity_and_size_bound(tmp_path):
    src = Path(SEEDS[0] if SEEDS else real_pes()[0]).read_bytes()
    f = tmp_path / "a.exe"
    f.write_bytes(src)
    cache = hashes.HashCache(("SHA256",))
    first = cache.lookup(str(f))
    assert first == "SHA256=" + hashlib.sha256(src).hexdigest().upper()
    assert cache.lookup(str(f)) == first and cache.stats()["hash_hits"] == 1
    f.write_bytes(src + b"x")                     # another file at the same path
    os.utime(f, ns=(1, 1))
    assert cache.lookup(str(f)) == "SHA256=" + hashlib.sha256(src + b"x").hexdigest().upper()
    small = hashes.HashCache(("MD5",), max_size=100)
    assert small.lookup(str(f)) is None and small.stats()["hash_too_large"] == 1
    assert cache.lookup(str(tmp_path / "missing.exe")) is None and cache.stats()["hash_errors"] == 1


def test_enricher_hashes_lazily_and_only_when_asked(tmp_path):
    f = tmp_path / "a.exe"
    f.write_bytes(Path(real_pes()[0]).read_bytes())
    calls = []
    cache = hashes.HashCache()

    def lookup(path):
        calls.append(path)
        return cache.lookup(path)
    enrich = Enricher(hash_lookup=lookup, hash_stats=cache.stats)
    ev = ProcessEvent(Image=str(f))
    enrich(ev)
    assert calls == [] and "Hashes" in ev.pending
    assert ev.resolve("Hashes").startswith("SHA256=") and calls == [str(f)]
    assert enrich.stats()["hash_misses"] == 1
    plain = ProcessEvent(Image=str(f))
    Enricher()(plain)
    assert not plain.pending


def test_the_sensor_hashes_only_when_a_rule_or_the_config_asks():
    from sensor.daemon.assemble import _hash_cache
    from sensor.daemon.config import ConfigError, parse
    from sensor.detect.seed import builtin_rules
    from sensor.detect.sigma import load_sigma_text
    cfg = parse({})
    assert _hash_cache(cfg, builtin_rules()) is None
    text = ("title: t\nid: 0e3b1d8a-0000-4000-8000-000000000003\nlogsource:\n  category: process_creation\n"
            "  product: windows\ndetection:\n  s:\n    Hashes|contains: 'IMPHASH=AB'\n  condition: s\n")
    rules = load_sigma_text(text, "t.yml").rules
    assert _hash_cache(cfg, rules).algorithms == ("SHA256", "MD5", "IMPHASH")
    cfg = parse({"enrich": {"hashes": {"in_alerts": True, "algorithms": ["MD5"]}}})
    assert _hash_cache(cfg, builtin_rules()).algorithms == ("MD5",)
    with pytest.raises(ConfigError, match="enrich.hashes.algorithms"):
        parse({"enrich": {"hashes": {"algorithms": ["CRC32"]}}})
