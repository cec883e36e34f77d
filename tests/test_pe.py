"""PE version info: expected results on the fixtures, native == twin == pefile, cache, resolver."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sensor.enrich import _pe_py, pe
from sensor.enrich.pe import READERS, RESULT_KEYS, PeError, VersionInfoCache
from sensor.events import ProcessEvent, field_value

from .conftest import load_gen_blobs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = ROOT / "tests" / "data" / "pe"
EXPECTED = {k: v for k, v in json.loads((DATA / "expected.json").read_text()).items()
            if not k.startswith("_")}
SHARED_PE = sorted(p for p in (SHARED / "data" / "pe").rglob("*.exe")) if SHARED.is_dir() else []
needs_shared = pytest.mark.skipif(not SHARED_PE, reason="../shared (research data) is not present")
IMPLS = sorted(pe.READERS)
needs_native = pytest.mark.skipif("native" not in pe.READERS,
                                  reason="sensor.enrich._pe is not built (or SENSOR_NO_EXTENSIONS=1)")


def outcome(fn, arg):
    """A reader's answer as comparable data: the dict, or ("error", code)."""
    try:
        return fn(arg)
    except PeError as exc:
        return ("error", exc.code)


def expected(name: str):
    exp = EXPECTED[name]
    if "error" in exp:
        return ("error", exp["error"])
    return {k: exp.get(k) for k in RESULT_KEYS}


def test_every_fixture_has_an_expectation():
    files = {p.name for p in DATA.iterdir() if p.is_file() and p.suffix in (".exe", ".txt")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_expected(impl, name):
    read, parse = pe.READERS[impl]
    path = DATA / name
    assert outcome(read, path) == expected(name)
    assert outcome(parse, path.read_bytes()) == expected(name)


def all_pe_files():
    return sorted(DATA.glob("*.exe")) + SHARED_PE


@pytest.mark.parametrize("path", all_pe_files(), ids=lambda p: p.name)
def test_readers_agree(path):
    data = path.read_bytes()
    answers = {f"{impl}/{mode}": outcome(fn, arg)
               for impl, (read, parse) in pe.READERS.items()
               for mode, fn, arg in (("path", read, path), ("bytes", parse, data))}
    first = next(iter(answers.values()))
    assert all(a == first for a in answers.values()), answers


@needs_shared
def test_shared_renamed_tool():
    for impl, (read, _) in pe.READERS.items():
        info = read(SHARED / "data" / "pe" / "renamed_tool.exe")
        assert info["OriginalFilename"] == "mofcomp.exe", impl
        assert info["file_version"] == "10.0.19041.1"


# --- pefile as an independent oracle ------------------------------------------------------

# Fixtures where pefile 2024.8.26 answers differently, each checked by hand (see docs/pe.md).
_PEFILE_TABLE_BUG = ("pefile stops reading StringTables once a table's offset in the blob passes "
                     "the StringFileInfo's own length, dropping later tables")
PEFILE_DIVERGES = {
    "neutral_table.exe": _PEFILE_TABLE_BUG,
    "no_varfileinfo.exe": _PEFILE_TABLE_BUG,
    "tables_translation_order.exe": _PEFILE_TABLE_BUG,
    "blob_varfileinfo_first.exe": _PEFILE_TABLE_BUG + "; it also merges a second StringFileInfo",
    "blob_bad_fixed_sig.exe": "pefile does not check the VS_FIXEDFILEINFO signature",
    "blob_no_fixed.exe": "pefile reads the first child's header as VS_FIXEDFILEINFO",
    "blob_root_key_case.exe": "pefile compares VS_VERSION_INFO/StringFileInfo keys exactly",
    "data_size_past_eof.exe": "pefile answers from a resource cut by the end of the file",
    "data_size_past_section.exe": "pefile answers from a resource running past its section",
}


def pefile_expectation(path: Path):
    """What the selection rules give over pefile's own parse of the tree (None: no answer)."""
    pefile = pytest.importorskip("pefile")
    try:
        p = pefile.PE(str(path), fast_load=True)
        p.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]])
    except pefile.PEFormatError:
        return None
    rt = next((e for e in getattr(p, "DIRECTORY_ENTRY_RESOURCE", None).entries
               if e.id == 16), None) if hasattr(p, "DIRECTORY_ENTRY_RESOURCE") else None
    if rt is None or not hasattr(p, "FileInfo"):
        return None
    name = next((n for n in rt.directory.entries if n.id == 1), None)
    if name is None or name is not rt.directory.entries[0]:
        return None  # pefile parses only the first name entry
    langs = [entry.id for entry in name.directory.entries]
    idx = langs.index(0) if 0 in langs else langs.index(0x409) if 0x409 in langs else 0
    if idx >= len(p.FileInfo) or idx >= len(getattr(p, "VS_FIXEDFILEINFO", [])):
        return None
    raw = path.read_bytes()
    tables, trans = [], []
    for fi in p.FileInfo[idx]:
        if fi.Key == b"StringFileInfo" and not tables:
            tables = [(st.LangID.decode(), st.entries) for st in fi.StringTable]
        elif fi.Key == b"VarFileInfo" and not trans:
            for var in fi.Var:
                if b"Translation" in var.entry:
                    off = var.get_file_offset() + 32  # header 6 + "Translation\0" 24, aligned
                    for i in range(var.ValueLength // 4):
                        lang, cp = struct.unpack_from("<HH", raw, off + 4 * i)
                        trans.append(f"{lang:04X}{cp:04X}")
    ids = [t[0].upper() for t in tables]
    chosen = None
    for want in trans + ["040904B0", "040904E4", "04090000"]:
        if want in ids:
            chosen = ids.index(want)
            break
    if chosen is None:
        chosen = next((i for i, t in enumerate(ids) if t.startswith("0000")), 0 if ids else None)
    out = dict.fromkeys(RESULT_KEYS)
    if chosen is not None:
        folded = {}
        for key, value in tables[chosen][1].items():
            folded.setdefault(key.decode().lower(), value)
        for key in _pe_py.STRING_KEYS:
            value = folded.get(key.lower())
            if value is None:
                continue
            text = value.decode("utf-8", "replace").rstrip(" ")
            if text[-4:].lower() == ".mui":
                text = text[:-4]
            out[key] = text or None
    ffi = p.VS_FIXEDFILEINFO[idx]
    for key, ms, ls in (("file_version", ffi.FileVersionMS, ffi.FileVersionLS),
                        ("product_version", ffi.ProductVersionMS, ffi.ProductVersionLS)):
        out[key] = f"{ms >> 16}.{ms & 0xFFFF}.{ls >> 16}.{ls & 0xFFFF}"
    return out


@pytest.mark.parametrize("path", all_pe_files(), ids=lambda p: p.name)
def test_pefile_oracle(path):
    if path.name in PEFILE_DIVERGES and path.parent == DATA:
        pytest.skip(PEFILE_DIVERGES[path.name])
    want = pefile_expectation(path)
    got = outcome(pe.read_version_info, path)
    if want is None:  # pefile found no version info: neither may we
        assert isinstance(got, tuple), got
    else:
        assert got == want


def test_pefile_oracle_covers_the_main_fixtures():
    # Guard against the oracle silently answering None everywhere.
    assert pefile_expectation(DATA / "tables_translation.exe")["OriginalFilename"] == "fr.exe"
    assert pefile_expectation(DATA / "lang_enus.exe")["OriginalFilename"] == "en.exe"


# --- API details --------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_buffer_types_and_errors(impl, tmp_path):
    read, parse = pe.READERS[impl]
    data = (DATA / "basic64.exe").read_bytes()
    want = parse(data)
    assert parse(bytearray(data)) == want
    assert parse(memoryview(data)) == want
    assert read(str(DATA / "basic64.exe")) == want
    assert outcome(parse, b"") == ("error", "not_mz")
    with pytest.raises(PeError) as err:
        read(tmp_path / "missing.exe")
    assert err.value.code == "io" and "No such file" in err.value.reason
    # a folder is not a file: opened and refused on POSIX, not even opened on Windows
    assert outcome(read, tmp_path) == ("error", "io" if sys.platform == "win32" else "not_regular")
    assert outcome(read, str(DATA / "basic64.exe") + "\0x") == ("error", "arg")


def test_public_api_is_the_selected_reader():
    assert pe.IMPLEMENTATION in pe.READERS
    assert pe.read_version_info is pe.READERS[pe.IMPLEMENTATION][0]
    want = "python" if os.environ.get("SENSOR_NO_EXTENSIONS") else pe.IMPLEMENTATION
    assert pe.IMPLEMENTATION == want


def test_no_extensions_forces_the_twin():
    code = "from sensor.enrich import pe; print(pe.IMPLEMENTATION, sorted(pe.READERS))"
    env = dict(os.environ, SENSOR_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == ["python", "['python']"]


def test_error_codes_match_native_table():
    if "native" not in pe.READERS:
        pytest.skip("sensor.enrich._pe is not built")
    from sensor.enrich._pe import ffi, lib
    for status, (_, reason) in enumerate(_pe_py.ERRORS):
        assert ffi.string(lib.pev_strerror(status)).decode() == reason


def image_before_an_overlay(tmp_path):
    """basic64.exe followed by a 32 MiB overlay, and this process's count of bytes read."""
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("/proc/self/io (read byte counter) is Linux-only")
    big = tmp_path / "big.exe"
    big.write_bytes((DATA / "basic64.exe").read_bytes() + b"\0" * (32 << 20))

    def rchar():
        return int(next(line for line in io.read_text().splitlines()
                        if line.startswith("rchar")).split()[1])
    return big, rchar


@needs_native
def test_native_reads_only_the_needed_ranges(tmp_path):
    # The version resource sits before a 32 MiB overlay: none of the overlay may be read.
    big, rchar = image_before_an_overlay(tmp_path)
    read = pe.READERS["native"][0]
    read(big)  # warm the per-thread buffers
    before = rchar()
    assert read(big)["OriginalFilename"] == "basic.exe"
    used = rchar() - before - 400  # the /proc read itself
    assert used < 3 * 4096 + 1024, used


# --- cache ------------------------------------------------------------------------------

@pytest.fixture(params=IMPLS)
def cache(request):
    return VersionInfoCache(maxsize=3, implementation=request.param)


def test_cache_hits_misses_and_copies(cache, tmp_path):
    f = tmp_path / "a.exe"
    shutil.copy(DATA / "basic64.exe", f)
    first = cache.get(f)
    first["OriginalFilename"] = "mutated"
    again = cache.get(str(f))
    assert again["OriginalFilename"] == "basic.exe"  # callers get copies
    assert (cache.hits, cache.misses) == (1, 1)


def test_cache_negative_results(cache, tmp_path):
    f = tmp_path / "bad.exe"
    shutil.copy(DATA / "trunc_blob.exe", f)
    for _ in range(3):
        with pytest.raises(PeError) as err:
            cache.get(f)
        assert err.value.code == "past_eof"
    assert (cache.hits, cache.misses, cache.failures) == (2, 1, 1)
    assert cache.lookup(f) is None
    # A file that does not exist has no identity to key on: not cached, still an error.
    with pytest.raises(PeError):
        cache.get(tmp_path / "nope.exe")
    assert len(cache) == 1


def test_cache_sees_a_replaced_file(cache, tmp_path):
    f = tmp_path / "x.exe"
    shutil.copy(DATA / "basic64.exe", f)
    assert cache.get(f)["OriginalFilename"] == "basic.exe"
    data = (DATA / "tables_translation.exe").read_bytes()
    f.write_bytes(data)
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert cache.get(f)["OriginalFilename"] == "fr.exe"
    assert cache.misses == 2


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no ctime that users cannot set")
def test_cache_sees_a_same_size_backdated_replacement(cache, tmp_path):
    # Padded to the same size, mtime set back: the inode change time still moves.
    f = tmp_path / "x.exe"
    shutil.copy(DATA / "basic64.exe", f)
    st = os.stat(f)
    original = cache.get(f)
    other = (DATA / "tables_translation.exe").read_bytes()
    time.sleep(0.01)  # let the clock move past the first ctime on coarse file systems
    f.write_bytes(other[:st.st_size].ljust(st.st_size, b"\0"))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(f).st_size, os.stat(f).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    got = outcome(cache.get, f)
    assert got == outcome(READERS[cache.implementation][0], f) and got != original
    assert cache.misses == 2


def test_cache_sees_a_file_replaced_by_rename(cache, tmp_path):
    # Same size and mtime copied over, different inode.
    f = tmp_path / "x.exe"
    shutil.copy(DATA / "basic64.exe", f)
    original = cache.get(f)
    st = os.stat(f)
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes((DATA / "tables_translation.exe").read_bytes()[:st.st_size].ljust(st.st_size, b"\0"))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, f)
    got = outcome(cache.get, f)
    assert got == outcome(READERS[cache.implementation][0], f) and got != original
    assert cache.misses == 2


def test_batch_checks_each_path_once(cache, tmp_path, monkeypatch):
    f = tmp_path / "a.exe"
    shutil.copy(DATA / "basic64.exe", f)
    checks = []
    real_same = cache._same
    monkeypatch.setattr(cache, "_same", lambda p, i: checks.append(p) or real_same(p, i))
    cache.get(f)                       # outside a batch: parsed
    cache.get(f)                       # outside a batch: checked every time
    assert len(checks) == 1
    with cache.batch():
        for _ in range(5):
            assert cache.get(f)["OriginalFilename"] == "basic.exe"
    assert len(checks) == 2 and cache.batch_hits == 4
    with cache.batch():                # a new batch checks again
        cache.get(f)
        cache.get(f)
    assert len(checks) == 3 and cache.batch_hits == 5
    cache.get(f)                       # and after it, every lookup checks again
    assert len(checks) == 4


def test_batch_parsed_entry_needs_no_check_in_the_same_batch(cache, tmp_path, monkeypatch):
    f = tmp_path / "a.exe"
    shutil.copy(DATA / "basic64.exe", f)
    with cache.batch():
        cache.get(f)
        monkeypatch.setattr(cache, "_same", lambda p, i: pytest.fail("checked twice in a batch"))
        cache.get(f)
    assert (cache.misses, cache.batch_hits) == (1, 1)


def test_batches_are_per_thread_and_nest(cache, tmp_path):
    f = tmp_path / "a.exe"
    shutil.copy(DATA / "basic64.exe", f)
    with cache.batch():
        cache.get(f)
        done = []
        t = threading.Thread(target=lambda: done.append(cache.get(f)))
        t.start()
        t.join()
        assert cache.batch_hits == 0  # another thread is not in this batch
        with cache.batch():           # an inner batch has its own checks
            cache.get(f)
            cache.get(f)
        assert cache.batch_hits == 1
        cache.get(f)                  # back in the outer batch: checked again (inner epoch)
        cache.get(f)
        assert cache.batch_hits == 2


def test_batch_scope_ends_even_on_error(cache, tmp_path, monkeypatch):
    f = tmp_path / "a.exe"
    shutil.copy(DATA / "basic64.exe", f)
    with pytest.raises(RuntimeError):
        with cache.batch():
            cache.get(f)
            raise RuntimeError("boom")
    checks = []
    real_same = cache._same
    monkeypatch.setattr(cache, "_same", lambda p, i: checks.append(p) or real_same(p, i))
    cache.get(f)
    cache.get(f)
    assert len(checks) == 2  # no batch is left open: each lookup is checked


def test_cached_file_that_went_away(cache, tmp_path):
    f = tmp_path / "a.exe"
    shutil.copy(DATA / "basic64.exe", f)
    cache.get(f)
    f.unlink()
    with pytest.raises(PeError) as err:
        cache.get(f)
    assert err.value.code == "io" and len(cache) == 0
    assert (cache.hits, cache.misses, cache.failures) == (0, 2, 1)


def test_changed_then_unreadable_drops_the_old_entry(cache, tmp_path, monkeypatch):
    f = tmp_path / "a.exe"
    shutil.copy(DATA / "basic64.exe", f)
    cache.get(f)
    os.utime(f, ns=(1, 1))  # changed ...
    monkeypatch.setattr(cache, "_read", lambda p: (None, PeError("io", "gone"), None, p))
    with pytest.raises(PeError):
        cache.get(f)           # ... and the re-read fails: nothing stale stays behind
    assert len(cache) == 0


def test_nul_in_path_counts_alike(cache):
    with pytest.raises(PeError) as err:
        cache.get("a\0b.exe")
    assert err.value.code == "arg" and (cache.misses, cache.failures) == (1, 1)


def test_cache_is_bounded_lru(cache, tmp_path):
    files = []
    for i in range(4):
        f = tmp_path / f"f{i}.exe"
        shutil.copy(DATA / "basic64.exe", f)
        files.append(f)
    for f in files[:3]:
        cache.get(f)
    cache.get(files[0])  # refresh f0: f1 is now the oldest
    cache.get(files[3])  # evicts f1
    assert len(cache) == 3
    hits = cache.hits
    cache.get(files[0])
    assert cache.hits == hits + 1
    cache.get(files[1])
    assert cache.hits == hits + 1 and cache.stats()["misses"] == 5
    cache.clear()
    assert len(cache) == 0


def test_cache_lookup_never_raises_on_odd_paths(cache):
    assert cache.lookup("bad\0path") is None
    assert cache.lookup(DATA) is None


def test_cache_rejects_bad_arguments():
    with pytest.raises(ValueError):
        VersionInfoCache(maxsize=0)
    with pytest.raises(ValueError):
        VersionInfoCache(implementation="rust")


# --- ProcessEvent resolver --------------------------------------------------------------

def test_resolver_fills_pe_fields(cache):
    ev = ProcessEvent(Image=str(DATA / "basic64.exe"), Product="kept as given")
    cache.attach(ev)
    assert set(ev.pending) == {"OriginalFileName", "Company", "Description", "FileVersion"}
    assert field_value(ev, "OriginalFileName") == "basic.exe"
    # One parse answered every pending PE field.
    assert not ev.pending
    assert ev["Company"] == "Sensor Fixtures Ltd"
    assert ev["Description"] == "Baseline version resource"
    assert ev["FileVersion"] == "1.2.3.4"
    assert ev["Product"] == "kept as given"
    assert cache.misses == 1 and cache.hits == 0


def test_resolver_records_origin(cache):
    ev = ProcessEvent(Image=str(DATA / "basic64.exe"))
    ev.origin = {}
    cache.attach(ev, ("OriginalFileName", "Company"))
    ev.resolve_all()
    assert ev.origin == {"OriginalFileName": "pe", "Company": "pe"}


@pytest.mark.parametrize("image", [None, "", "C:\\Windows\\System32\\nope.exe",
                                   str(DATA / "plain.txt"), str(DATA / "trunc_blob.exe")])
def test_resolver_never_raises(cache, image):
    ev = ProcessEvent(Image=image)
    cache.attach(ev)
    ev.resolve_all()
    assert all(ev[f] is None for f in pe.EVENT_FIELDS)
    assert cache.resolver_errors == 0


def test_resolver_counts_unexpected_errors(cache, monkeypatch):
    def boom(path):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(cache, "lookup", boom)
    ev = ProcessEvent(Image=str(DATA / "basic64.exe"))
    cache.attach(ev)
    assert field_value(ev, "OriginalFileName") is None
    assert cache.resolver_errors == 1
    assert cache.resolve_field(ev, "NotAPeField") is None


def test_default_cache_is_shared():
    assert pe.default_cache() is pe.default_cache()


# --- hand-built images at the format's edges (reference notes §3; docs/pe.md) -------------
# A minimal PE32 image written from the layouts: MZ header with e_lfanew 64, "PE\0\0", the COFF
# header (one section, a 224-byte optional header), the optional header with 16 data
# directories (entry 2: resources), one section table entry, and the .rsrc section at file
# offset 512, RVA 0x1000. The section holds the three directory levels (RT_VERSION = 16,
# ID 1, one language), the version blob, and the IMAGE_RESOURCE_DATA_ENTRY last, so the
# section's raw data ends exactly where that entry ends.

gen = load_gen_blobs()
SEC_VA, SEC_PTR = 0x1000, 512


def _directory(entry_id: int, target: int) -> bytes:
    """A resource directory with one ID entry: Characteristics, TimeDateStamp, Major/Minor,
    0 named and 1 ID entries, then the entry (ID, offset; high bit = a subdirectory)."""
    return struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + struct.pack("<II", entry_id, target)


def version_section(blob: bytes, lang: int = 0x409) -> bytes:
    blob_at = 72                                     # after three 24-byte directories
    entry_at = blob_at + len(blob) + (-len(blob) % 4)
    rsrc = (_directory(16, 0x80000000 | 24) + _directory(1, 0x80000000 | 48)
            + _directory(lang, entry_at)             # no high bit: a data entry
            + blob + b"\0" * (-len(blob) % 4)
            + struct.pack("<IIII", SEC_VA + blob_at, len(blob), 0, 0))
    assert len(rsrc) == entry_at + 16
    return rsrc


def minimal_pe(blob: bytes = b"", lang: int = 0x409, *, rsrc: bytes | None = None,
               nrva: int = 16, optsz: int = 224, res_dir: tuple[int, int] | None = None,
               vsize: int | None = None, plus: bool = False) -> bytes:
    """The image; ``rsrc`` replaces the section's bytes, ``res_dir`` DataDirectory[2],
    ``vsize`` the section's VirtualSize (its raw size by default); ``plus`` makes the
    optional header PE32+ (NumberOfRvaAndSizes and the directories 16 bytes further on)."""
    if rsrc is None:
        rsrc = version_section(blob, lang)
    img = bytearray(SEC_PTR)
    img[0:2] = b"MZ"
    struct.pack_into("<I", img, 0x3C, 64)
    img[64:68] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", img, 68, 0x14C, 1, 0, 0, 0, optsz, 0x102)
    opt = 88
    nrva_off, dd_off = (108, 112) if plus else (92, 96)
    struct.pack_into("<H", img, opt, 0x20B if plus else 0x10B)       # PE32+ or PE32
    struct.pack_into("<I", img, opt + nrva_off, nrva)                # NumberOfRvaAndSizes
    struct.pack_into("<II", img, opt + dd_off + 16, *(res_dir or (SEC_VA, len(rsrc))))
    sec = opt + optsz
    img[sec:sec + 40] = bytes(40)                # the section entry replaces what lay there
    img[sec:sec + 8] = b".rsrc\0\0\0"
    struct.pack_into("<IIII", img, sec + 8, len(rsrc) if vsize is None else vsize, SEC_VA,
                     len(rsrc), SEC_PTR)
    return bytes(img) + rsrc


EDGE_BLOB = gen.root([gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "edge.exe")))])


def _answers(img: bytes, tmp_path) -> dict:
    f = tmp_path / "x.exe"
    f.write_bytes(img)
    return {f"{impl}/{mode}": outcome(fn, arg) for impl, (read, parse) in pe.READERS.items()
            for mode, fn, arg in (("path", read, f), ("bytes", parse, img))}


def test_a_resource_table_ending_exactly_at_its_sections_end_is_read(tmp_path):
    # The data entry's 16 bytes are the section's (and the file's) last bytes: inside, not past
    img = minimal_pe(EDGE_BLOB)
    for who, got in _answers(img, tmp_path).items():
        assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", (who, got)


def test_a_version_root_with_only_its_fixed_info_gives_the_versions(tmp_path):
    # VS_VERSIONINFO without children: wLength 92 = 6 + the 32-byte key + 2 padding + the
    # 52-byte VS_FIXEDFILEINFO, which therefore ends exactly at the root's end
    blob = gen.node("VS_VERSION_INFO", gen.fixed(fv=(10, 0, 19041, 1), pv=(10, 0, 19041, 2)))
    assert struct.unpack_from("<H", blob)[0] == 92
    for who, got in _answers(minimal_pe(blob), tmp_path).items():
        assert isinstance(got, dict), (who, got)
        assert got["file_version"] == "10.0.19041.1" and got["product_version"] == "10.0.19041.2", who
        assert got["OriginalFilename"] is None, who


def test_a_string_table_key_in_lower_case_hex_is_matched_to_its_translation(tmp_path):
    # The Translation pair (0x0411, 0xFDE9) names table 0411FDE9; its key is written in lower
    # case (hex digits, compared without case), so it is chosen over the en-US fallback.
    blob = gen.root([
        gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "en.exe")),
                gen.table("0411fde9", gen.string("OriginalFilename", "ja.exe"))),
        gen.translation((0x411, 0xFDE9)),
    ])
    for who, got in _answers(minimal_pe(blob), tmp_path).items():
        assert isinstance(got, dict) and got["OriginalFilename"] == "ja.exe", (who, got)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo (POSIX)")
@pytest.mark.parametrize("impl", IMPLS)
def test_a_fifo_is_refused_not_waited_on(impl, tmp_path):
    # No writer ever opens the FIFO: a blocking open would wait for good. The read runs in a
    # thread; the join timeout only guards that hang.
    read, _ = pe.READERS[impl]
    fifo = tmp_path / "pipe.exe"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.append(outcome(read, fifo)), daemon=True)
    t.start()
    t.join(60)
    try:
        assert not t.is_alive(), f"{impl} waited on a FIFO"
    finally:
        if t.is_alive():      # let the stuck open() return, so the thread ends
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(60)
    assert got == [("error", "not_regular")]


def _strings_of(img: bytes, tmp_path):
    answers = _answers(img, tmp_path)
    assert len(set(map(repr, answers.values()))) == 1, answers      # all four agree
    return next(iter(answers.values()))


@pytest.mark.parametrize("res_dir", [(SEC_VA, 0), (0, 4096)], ids=["size 0", "rva 0"])
def test_a_resource_directory_entry_with_a_zero_rva_or_size_means_no_resources(res_dir, tmp_path):
    assert _strings_of(minimal_pe(EDGE_BLOB, res_dir=res_dir), tmp_path) == ("error", "no_resources")


def test_fewer_than_three_data_directories_means_no_resources(tmp_path):
    # NumberOfRvaAndSizes 2: DataDirectory[2] is not there, whatever its bytes say
    assert _strings_of(minimal_pe(EDGE_BLOB, nrva=2), tmp_path) == ("error", "no_resources")


@pytest.mark.parametrize("plus", [False, True], ids=["PE32", "PE32+"])
def test_the_directory_count_is_read_where_each_optional_header_layout_keeps_it(plus, tmp_path):
    # NumberOfRvaAndSizes sits at offset 92 (PE32) or 108 (PE32+) of the optional header:
    # 2 there means no DataDirectory[2] (step 1), 3 means it is read
    assert _strings_of(minimal_pe(EDGE_BLOB, nrva=2, plus=plus), tmp_path) == ("error", "no_resources")
    got = _strings_of(minimal_pe(EDGE_BLOB, nrva=3, plus=plus), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got


def test_an_optional_header_just_long_enough_for_the_resource_entry_is_read(tmp_path):
    # SizeOfOptionalHeader 120 = 96 + 3 directories of 8 bytes: DataDirectory[2] is its last
    got = _strings_of(minimal_pe(EDGE_BLOB, nrva=3, optsz=120), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got


def test_a_node_too_short_for_its_key_is_skipped_and_its_siblings_are_read(tmp_path):
    # A 6-byte node (wLength 6: no room for the key's NUL) is not a "wLength below 6" end of
    # the list: its key is not terminated inside it, so it is skipped (docs/pe.md, step 5).
    short = struct.pack("<HHH", 6, 0, 0)
    blob = gen.root([short, gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "after.exe")))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "after.exe", got


def test_a_table_key_that_is_not_hex_is_never_the_neutral_table(tmp_path):
    # "0000:000" has the shape of a neutral key but ':' is no hex digit: no table is neutral,
    # so the first table is chosen (docs/pe.md, step 8)
    blob = gen.root([gen.sfi(gen.table("041104B0", gen.string("OriginalFilename", "ja.exe")),
                             gen.table("0000:000", gen.string("OriginalFilename", "colon.exe")))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "ja.exe", got


def test_only_the_first_translation_var_is_used(tmp_path):
    # VarFileInfo with two Translation vars: the second (0411/04B0, which has a table) is
    # ignored; the first (040C/04B0) has none, so the en-US fallback is chosen (step 7)
    trans = lambda lang: gen.node("Translation", struct.pack("<HH", lang, 0x4B0))  # noqa: E731
    blob = gen.root([
        gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "en.exe")),
                gen.table("041104B0", gen.string("OriginalFilename", "ja.exe"))),
        gen.node("VarFileInfo", children=[trans(0x40C), trans(0x411)]),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "en.exe", got


def test_a_resource_directory_cut_by_the_end_of_the_file_is_truncated(tmp_path):
    # The root directory's entry points at a subdirectory whose 16-byte header has only 15
    # bytes before the end of the section, which is the end of the file
    rsrc = _directory(16, 0x80000000 | 24) + bytes(15)
    assert _strings_of(minimal_pe(rsrc=rsrc), tmp_path) == ("error", "truncated")


# --- the reader's bounds, at the bound and one past it (docs/pe.md, steps 3, 7 and 8) ---------

def _dir_table(entries, named: int = 0) -> bytes:
    """A resource directory: the 16-byte header (``named`` name entries, the rest IDs), then
    the 8-byte entries (name or ID, offset; high bit of the offset = a subdirectory)."""
    return struct.pack("<IIHHHH", 0, 0, 0, 0, named, len(entries) - named) + b"".join(
        struct.pack("<II", name, target) for name, target in entries)


def resource_tree(blob: bytes, types=((16, True),), names=((1, True),), langs=((0x409, True),),
                  named=(0, 0, 0)) -> bytes:
    """A .rsrc section of three directories (type, name, language) and one data entry for
    ``blob``. Each level lists (id, leads on); an entry that leads on points at the next
    level (a subdirectory for the first two, the data entry for the languages), any other
    at a subdirectory with no entries, so it leads nowhere."""
    sizes = [16 + 8 * len(level) for level in (types, names, langs)]
    d1, d2 = sizes[0], sizes[0] + sizes[1]
    empty = d2 + sizes[2]                     # a directory with no entries
    data_at = empty + 16
    blob_at = data_at + 16
    sub = 0x80000000
    rsrc = (_dir_table([(i, sub | d1 if on else sub | empty) for i, on in types], named[0])
            + _dir_table([(i, sub | d2 if on else sub | empty) for i, on in names], named[1])
            + _dir_table([(i, data_at if on else sub | empty) for i, on in langs], named[2])
            + _dir_table([])
            + struct.pack("<IIII", SEC_VA + blob_at, len(blob), 0, 0)
            + blob)
    return rsrc + b"\0" * (-len(rsrc) % 4)


def test_the_resource_tree_builder_reads_like_the_plain_one(tmp_path):
    # the builder above, with one entry per level, gives what version_section gives
    got = _strings_of(minimal_pe(rsrc=resource_tree(EDGE_BLOB)), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got


@pytest.mark.parametrize("level", [0, 1, 2])
def test_a_directory_of_4096_entries_is_walked_and_4097_is_malformed(level, tmp_path):
    # At most 4,096 entries per directory (step 3). The wanted entry is the last of 4,096: the
    # reader walks to it; one entry more and the directory is refused, whole as it is.
    def level_entries(n):
        want = (16, 1, 0x409)[level]
        return tuple((i, False) for i in range(10000, 10000 + n - 1)) + ((want, True),)
    for n, want in ((4096, "edge.exe"), (4097, "resdir")):
        kw = {("types", "names", "langs")[level]: level_entries(n)}
        got = _strings_of(minimal_pe(rsrc=resource_tree(EDGE_BLOB, **kw)), tmp_path)
        assert (got["OriginalFilename"] if isinstance(got, dict) else got[1]) == want, (n, got)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_named_entries_count_toward_the_directory_and_are_skipped(level, tmp_path):
    # The header gives the named entries first, then the IDs; both are entries of the table.
    # A named entry (high bit of its name set) never is RT_VERSION, ID 1 or a language.
    entries = [((0x80000000 | 0x40), True), (((16, 1, 0x409)[level]), True)]
    named = tuple(1 if i == level else 0 for i in range(3))
    kw = {("types", "names", "langs")[level]: tuple(entries)}
    got = _strings_of(minimal_pe(rsrc=resource_tree(EDGE_BLOB, named=named, **kw)), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got
    # 4,096 IDs and one named entry are 4,097 entries: too many
    ids = tuple((i, False) for i in range(10000, 14095)) + (((16, 1, 0x409)[level], True),)
    kw = {("types", "names", "langs")[level]: ((0x80000040, False),) + ids}
    got = _strings_of(minimal_pe(rsrc=resource_tree(EDGE_BLOB, named=named, **kw)), tmp_path)
    assert got == ("error", "resdir"), got


def _tables_blob(n_before: int, trans=()) -> bytes:
    """A StringFileInfo of ``n_before`` tables 041104B0 (first.exe, then other.exe), then an
    040904B0 table (late.exe); Translation pairs ``trans``."""
    tables = [gen.table("041104B0", gen.string("OriginalFilename", "first.exe" if i == 0 else "other.exe"))
              for i in range(n_before)]
    tables.append(gen.table("040904B0", gen.string("OriginalFilename", "late.exe")))
    children = [gen.sfi(*tables)]
    if trans:
        children.append(gen.translation(*trans))
    return gen.root(children)


def test_only_the_first_64_string_tables_are_considered(tmp_path):
    # The en-US table as the 64th is chosen by the fallback order; as the 65th it is not seen,
    # and with no Translation, fallback or neutral table among the 64 the first one is used
    for n_before, want in ((63, "late.exe"), (64, "first.exe")):
        got = _strings_of(minimal_pe(_tables_blob(n_before)), tmp_path)
        assert isinstance(got, dict) and got["OriginalFilename"] == want, (n_before, got)


def test_only_the_first_32_translation_pairs_are_used(tmp_path):
    # 31 or 32 pairs naming tables that do not exist, then the pair of the 041104B0 tables.
    # As the 32nd pair it is used (first.exe is its first table); as the 33rd it is not read,
    # so the en-US fallback (late.exe) is chosen
    for n_missing, want in ((31, "first.exe"), (32, "late.exe")):
        trans = [(0x800 + i, 0x4B0) for i in range(n_missing)] + [(0x411, 0x4B0)]
        got = _strings_of(minimal_pe(_tables_blob(2, trans)), tmp_path)
        assert isinstance(got, dict) and got["OriginalFilename"] == want, (n_missing, got)


def test_thousands_of_nodes_below_the_node_cap_are_all_read(tmp_path):
    # 5,000 empty Strings (12 bytes each), then OriginalFilename: 5,004 nodes in all, well
    # under the 8,192 the walk may visit (step 5), so the last String is still read
    filler = gen.node("x", wtype=1)
    blob = gen.root([gen.sfi(gen.table("040904B0", *[filler] * 5000,
                                       gen.string("OriginalFilename", "last.exe")))])
    assert len(blob) < 65536
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "last.exe", got


def test_fixed_info_cut_by_the_roots_end_is_not_read(tmp_path):
    # wValueLength says 52 bytes of VS_FIXEDFILEINFO, but the root's wLength (88) ends 4 bytes
    # into it: the value must lie inside the node (step 6), so no versions, even though the
    # resource (92 bytes) holds the rest
    for wlen, vlen in ((88, 52), (91, 52), (92, 51)):
        # (... and 91, one byte short; or the whole root with wValueLength 51, one short)
        blob = bytearray(gen.node("VS_VERSION_INFO", gen.fixed(fv=(1, 2, 3, 4))))
        assert len(blob) == 92
        struct.pack_into("<HH", blob, 0, wlen, vlen)
        got = _strings_of(minimal_pe(bytes(blob)), tmp_path)
        assert isinstance(got, dict) and got["file_version"] is None and got["product_version"] is None, (wlen, got)
    # the same root whole: the versions are read
    whole = _strings_of(minimal_pe(gen.node("VS_VERSION_INFO", gen.fixed(fv=(1, 2, 3, 4)))), tmp_path)
    assert whole["file_version"] == "1.2.3.4", whole


@pytest.mark.parametrize("size", [64 + 23, 64 + 24, 64 + 25])
def test_an_image_cut_before_the_optional_header_magic_is_truncated(size, tmp_path):
    # e_lfanew 64: the PE signature and the COFF header are whole at 88 bytes, the optional
    # header's 2-byte magic at 88 is not (step 1)
    img = minimal_pe(EDGE_BLOB)[:size]
    assert _strings_of(img, tmp_path) == ("error", "truncated")


def test_an_optional_header_one_byte_short_of_the_resource_entry_has_no_resources(tmp_path):
    # SizeOfOptionalHeader 119: DataDirectory[2] (bytes 112-119 of a PE32 optional header)
    # is not wholly inside it, whatever the bytes there say (step 1)
    assert _strings_of(minimal_pe(EDGE_BLOB, nrva=3, optsz=119), tmp_path) == ("error", "no_resources")


@pytest.mark.parametrize("gap", [2, 4, 5])
def test_a_version_root_ending_a_few_bytes_after_its_last_child_is_read(gap, tmp_path):
    # The root's wLength leaves ``gap`` bytes after its last child (and its padding), and the
    # resource ends there: no room for another node header, so the child list ends (step 5)
    # without reading past
    blob = EDGE_BLOB + b"\0" * (-len(EDGE_BLOB) % 4) + b"\0" * gap
    blob = struct.pack("<H", len(blob)) + blob[2:]
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got


def test_a_key_terminated_only_in_the_padding_after_its_node_is_skipped(tmp_path):
    # A "StringFileInfo" whose wLength (34) ends right after its 14 key characters: the NUL
    # is in the 2 padding bytes after the node, outside it, so the node is skipped (step 5)
    # and the StringFileInfo after it is the one read
    cut = gen.node("x", raw_key="StringFileInfo".encode("utf-16-le"), wlen=34)
    assert len(cut) == 36 and cut[34:] == b"\0\0"
    got = _strings_of(minimal_pe(gen.root([cut, gen.sfi(gen.table(
        "040904B0", gen.string("OriginalFilename", "real.exe")))])), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "real.exe", got


def test_a_key_unit_with_a_zero_low_byte_does_not_end_the_key(tmp_path):
    # U+0100 is written 00 01: only a whole zero unit ends a key. A node of 8 bytes whose key
    # is that one unit has no terminator inside it and is skipped, so the real table after it
    # is the first table (step 8)
    odd = struct.pack("<HHH", 8, 0, 0) + "\u0100".encode("utf-16-le")
    got = _strings_of(minimal_pe(gen.root([gen.sfi(odd, gen.table(
        "041104B0", gen.string("OriginalFilename", "ja.exe")))])), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "ja.exe", got


@pytest.mark.parametrize("back, want", [(16, "no_version"), (15, "rva"), (8, "rva")])
def test_the_resource_directory_header_must_lie_in_the_sections_raw_data(back, want, tmp_path):
    # DataDirectory[2] points ``back`` bytes before the end of the section's raw data (inside
    # its virtual span): 16 bytes there hold a whole directory header (the data entry's last
    # 16 bytes: no entries, so no version resource); fewer do not (step 2: ``rva``)
    rsrc = version_section(EDGE_BLOB)
    img = minimal_pe(rsrc=rsrc, res_dir=(SEC_VA + len(rsrc) - back, 16))
    assert _strings_of(img, tmp_path) == ("error", want)


@pytest.mark.parametrize("size", [88 + 2, 88 + 100, 88 + 119, 312, 312 + 8, 312 + 39])
def test_an_image_cut_inside_the_optional_header_or_the_section_table_is_truncated(size, tmp_path):
    # e_lfanew 64: the optional header starts at 88 and DataDirectory[2] ends at 88 + 120;
    # the section table (one 40-byte entry) starts at 88 + 224 = 312. A file that ends
    # inside either is cut (step 1)
    img = minimal_pe(EDGE_BLOB)[:size]
    assert _strings_of(img, tmp_path) == ("error", "truncated")


def _dos(size: int, lfanew: int = 64, sig: bytes = b"") -> bytes:
    """``size`` bytes: "MZ", e_lfanew at 0x3C (when it fits), ``sig`` at e_lfanew."""
    img = bytearray(size)
    img[0:2] = b"MZ"[:size]
    if size >= 64:
        struct.pack_into("<I", img, 0x3C, lfanew)
    img[lfanew:lfanew + len(sig)] = sig
    return bytes(img[:size])


@pytest.mark.parametrize("img, want", [
    (b"", "not_mz"), (b"M", "not_mz"), (b"ZM", "not_mz"),
    (b"MZ", "truncated"), (_dos(63), "truncated"),               # a DOS header is 64 bytes
    (_dos(64, lfanew=0), "not_pe"),                              # "MZ\0\0" is no "PE\0\0"
    (_dos(68, sig=b"NE\0\0"), "not_pe"),                         # the signature ends the file
    (_dos(68, sig=b"PE\0\0"), "truncated"),                      # ... and no COFF header
    (_dos(128, lfanew=125), "truncated"),                        # a signature cut by the end
    (_dos(128, lfanew=0xFFFFFFF0), "truncated"),
], ids=["empty", "M", "ZM", "MZ", "63", "64-lfanew-0", "NE", "PE-only", "sig-cut", "lfanew-huge"])
def test_the_dos_header_and_pe_signature_at_their_edges(img, want, tmp_path):
    # step 1: MZ first, then at least 64 bytes, then "PE\0\0" at e_lfanew inside the file
    assert _strings_of(img, tmp_path) == ("error", want)


def test_a_directory_past_the_sections_raw_data_is_malformed_even_inside_the_file(tmp_path):
    # The root directory sits 16 bytes into the section; its entry points at a subdirectory
    # that would start at the section's end. The file goes on (an overlay of zeros, which
    # would read as an empty directory), but resource structures must lie in the section's
    # raw data (step 3): resdir, not truncated and not "no version"
    rsrc = bytes(16) + _directory(16, 0x80000000 | 24)
    img = minimal_pe(rsrc=rsrc, res_dir=(SEC_VA + 16, len(rsrc) - 16)) + bytes(64)
    assert _strings_of(img, tmp_path) == ("error", "resdir")
    # ... also when the file ends exactly where that header would end
    assert _strings_of(img[:-48], tmp_path) == ("error", "resdir")
    # the same image cut at the section's end: the subdirectory runs past the end of the file
    assert _strings_of(img[:-64], tmp_path) == ("error", "truncated")


def _odd_tree(blob: bytes, type_sub: bool = True, name_sub: bool = True) -> bytes:
    """A .rsrc section whose name directory (25), language directory (49), data entry (73)
    and blob (89) all sit at odd offsets; ``type_sub``/``name_sub`` False clear the
    subdirectory bit of the type or name entry (the offset stays odd)."""
    sub = 0x80000000
    rsrc = (_directory(16, (sub if type_sub else 0) | 25) + b"\0"
            + _directory(1, (sub if name_sub else 0) | 49)
            + _directory(0x409, 73)                          # no high bit: the data entry
            + struct.pack("<IIII", SEC_VA + 89, len(blob), 0, 0)
            + blob)
    assert len(rsrc) == 89 + len(blob)
    return rsrc + b"\0" * (-len(rsrc) % 4)


def test_directory_and_data_entry_offsets_are_used_as_written_odd_ones_too(tmp_path):
    # An entry's offset is the low 31 bits as they are (step 3: the high bit says a
    # subdirectory, and only that bit): odd offsets lead to the directories written there
    got = _strings_of(minimal_pe(rsrc=_odd_tree(EDGE_BLOB)), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got
    # without the high bit, the type or name entry is not a subdirectory: malformed
    for kw in ({"type_sub": False}, {"name_sub": False}):
        assert _strings_of(minimal_pe(rsrc=_odd_tree(EDGE_BLOB, **kw)), tmp_path) == ("error", "resdir"), kw


def test_a_data_entry_one_byte_past_the_sections_raw_data_is_malformed(tmp_path):
    # The data entry is the last 16 bytes of the section; with SizeOfRawData one byte short
    # its last byte lies past the raw data, still inside the file (step 3): resdir. The blob
    # itself lies inside the raw data
    rsrc = version_section(EDGE_BLOB)
    img = bytearray(minimal_pe(rsrc=rsrc))
    assert _strings_of(bytes(img), tmp_path)["OriginalFilename"] == "edge.exe"
    struct.pack_into("<I", img, 312 + 16, len(rsrc) - 1)       # SizeOfRawData
    assert _strings_of(bytes(img), tmp_path) == ("error", "resdir")


def test_a_section_table_at_the_end_of_the_file_must_be_whole(tmp_path):
    # Two 40-byte entries placed after the section data (SizeOfOptionalHeader reaches
    # there): the first maps the resources. A file that ends one byte before the second
    # entry's end is cut (step 1: the section table must lie inside the file)
    img = bytearray(minimal_pe(EDGE_BLOB))
    entry = bytes(img[312:352])
    sec = len(img)
    struct.pack_into("<H", img, 64 + 4 + 2, 2)                 # NumberOfSections
    struct.pack_into("<H", img, 64 + 4 + 16, sec - 88)         # SizeOfOptionalHeader
    whole = bytes(img) + entry + b".second" + bytes(33)
    got = _strings_of(whole, tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got
    assert _strings_of(whole[:-1], tmp_path) == ("error", "truncated")


def test_an_image_without_sections_maps_no_rva(tmp_path):
    img = bytearray(minimal_pe(EDGE_BLOB))
    struct.pack_into("<H", img, 64 + 6, 0)                 # COFF NumberOfSections
    assert _strings_of(bytes(img), tmp_path) == ("error", "rva")


def test_a_directory_whose_entries_run_past_the_end_of_the_file_is_truncated(tmp_path):
    # The root directory says 2 ID entries; the first (type 3) is whole, the second is cut
    for cut in (4, 7):
        rsrc = struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 2) + struct.pack("<II", 3, 0x80000000 | 40) + bytes(cut)
        assert _strings_of(minimal_pe(rsrc=rsrc), tmp_path) == ("error", "truncated"), cut
    # whole, and ending exactly at the end of the section and the file: read (no RT_VERSION)
    rsrc = struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 2) + struct.pack("<IIII", 3, 0x80000000 | 40, 4, 0x80000000 | 40)
    assert _strings_of(minimal_pe(rsrc=rsrc), tmp_path) == ("error", "no_version")


@pytest.mark.parametrize("status", [-1, len(_pe_py.ERRORS), len(_pe_py.ERRORS) + 7])
def test_a_status_outside_the_table_is_an_unknown_error(status):
    err = _pe_py.error_for(status)
    assert (err.code, err.reason) == ("unknown", "unknown error")


def test_each_status_names_its_own_code_and_reason():
    for status, (code, reason) in enumerate(_pe_py.ERRORS):
        err = _pe_py.error_for(status)
        assert (err.code, err.reason) == (code, reason)
        assert _pe_py.error_for(status, "detail").reason == f"{reason}: detail"
        assert _pe_py.PeError(code).reason == reason       # the table's reason by default
    assert _pe_py.PeError("io", "why").reason == "why"
    assert _pe_py.PeError("other").reason == "other"


def _with_data_entry(rva_delta: int, size: int) -> bytes:
    """version_section(EDGE_BLOB) with its data entry (the last 16 bytes) set to RVA
    SEC_VA + ``rva_delta`` and ``size``."""
    rsrc = bytearray(version_section(EDGE_BLOB))
    struct.pack_into("<II", rsrc, len(rsrc) - 16, SEC_VA + rva_delta, size)
    return bytes(rsrc)


def test_a_data_entry_at_the_sections_end_maps_to_no_section(tmp_path):
    # RVA = VirtualAddress + VirtualSize is outside the section's range (step 2), even for a
    # declared size of 0 (which would otherwise be a malformed version resource)
    rsrc = _with_data_entry(0, 0)
    rsrc = _with_data_entry(len(rsrc), 0)
    assert _strings_of(minimal_pe(rsrc=rsrc), tmp_path) == ("error", "rva")


@pytest.mark.parametrize("size, want", [(5, "bad_version"), (6, "bad_version")])
def test_a_version_resource_too_small_for_a_node_is_malformed(size, want, tmp_path):
    assert _strings_of(minimal_pe(rsrc=_with_data_entry(72, size)), tmp_path) == ("error", want)


def test_every_key_is_matched_in_upper_case(tmp_path):
    # Keys are compared without ASCII case (step 4): every structural key and every String
    # name written in capitals (which holds the A and Y that other fixtures never capitalise)
    names = {k: k.upper() for k in _pe_py.STRING_KEYS}
    blob = gen.root([
        gen.node("STRINGFILEINFO", children=[
            gen.table("040904B0", gen.string("ORIGINALFILENAME", "en.exe")),
            gen.table("041104B0", *[gen.string(names[k], f"v-{k}") for k in _pe_py.STRING_KEYS])]),
        gen.node("VARFILEINFO", children=[gen.node("TRANSLATION", struct.pack("<HH", 0x411, 0x4B0))]),
    ], key="VS_VERSION_INFO")
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict), got
    assert {k: got[k] for k in _pe_py.STRING_KEYS} == {k: f"v-{k}" for k in _pe_py.STRING_KEYS}


def test_keys_with_letters_past_the_alphabets_edges_are_not_folded(tmp_path):
    # Only A-Z fold to a-z: '@' and '[' (either side of A-Z) and '`' and '{' (either side of
    # a-z) stay what they are, so none of these Strings is OriginalFilename
    blob = gen.root([gen.sfi(gen.table("040904B0",
                                       gen.string("`riginalFilename", "tick.exe"),
                                       gen.string("@RIGINALFILENAME", "at.exe"),
                                       gen.string("OriginalFilenam{", "brace.exe"),
                                       gen.string("ORIGINALFILENAM[", "bracket.exe"),
                                       gen.string("COMPANYNAME", "Zed")))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] is None and got["CompanyName"] == "Zed", got


def test_table_keys_use_every_hex_digit_range_at_its_edges(tmp_path):
    # "09afAF90": 0, 9, a, f, A and F, the first and last digit of each range (step 8). The
    # Translation pair (09AF, AF90) names it; an en-US table is the fallback
    blob = gen.root([
        gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "en.exe")),
                gen.table("09afAF90", gen.string("OriginalFilename", "edges.exe"))),
        gen.translation((0x09AF, 0xAF90)),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edges.exe", got


@pytest.mark.parametrize("key", ["/0000000", "0000000:", "`0000000", "0000000g", "@0000000", "0000000G"])
def test_a_character_next_to_a_hex_digit_range_makes_the_key_no_table_id(key, tmp_path):
    # Each of these is one character outside 0-9, a-f or A-F: no table id, so the table is
    # neither the translation's nor neutral, and the first table (ja) is chosen (step 8)
    blob = gen.root([
        gen.sfi(gen.table("041104B0", gen.string("OriginalFilename", "ja.exe")),
                gen.table(key, gen.string("OriginalFilename", "odd.exe"))),
        gen.translation((0, 0)),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "ja.exe", (key, got)


@pytest.mark.parametrize("key", ["`0000000", "@0000000"])
def test_a_character_just_below_a_letter_range_is_not_the_digit_after_it(key, tmp_path):
    # '`' and '@' sit just below a-f and A-F, where a reader that let them in would take them
    # for the digit 9 (a - 1 + 10). The Translation names table 90000000, which the key is
    # not: the first table (ja) is chosen (step 8: 8 hex digits in either case)
    blob = gen.root([
        gen.sfi(gen.table("041104B0", gen.string("OriginalFilename", "ja.exe")),
                gen.table(key, gen.string("OriginalFilename", "odd.exe"))),
        gen.translation((0x9000, 0x0000)),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "ja.exe", (key, got)
    # the same Translation does name a table keyed 90000000
    blob = gen.root([
        gen.sfi(gen.table("041104B0", gen.string("OriginalFilename", "ja.exe")),
                gen.table("90000000", gen.string("OriginalFilename", "nine.exe"))),
        gen.translation((0x9000, 0x0000)),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "nine.exe", got


def test_a_value_without_its_nul_is_read_to_its_nodes_end(tmp_path):
    # "abc" with no terminator, the String ending right after it: all three units are read
    blob = gen.root([gen.sfi(gen.table("040904B0",
                                       gen.node("OriginalFilename", "abc".encode("utf-16-le"), 1)))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "abc", got


def test_the_first_string_file_info_is_used_even_when_it_ends_at_its_key(tmp_path):
    # A StringFileInfo of wLength 36 (header and key only: no tables) is a whole node and the
    # first one, so it is the one used (step 7): no strings, the second is not read
    empty = gen.node("StringFileInfo")
    assert struct.unpack_from("<H", empty)[0] == 36
    blob = gen.root([empty, gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "second.exe")))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] is None, got


def test_translation_pairs_past_the_nodes_end_are_not_read(tmp_path):
    # wValueLength says 8 bytes (two pairs), but the Translation's wLength ends after the
    # first (which names no table); the second, outside the node, would name the ja table
    pairs = struct.pack("<HHHH", 0x800, 0x4B0, 0x411, 0x4B0)
    trans = gen.node("Translation", pairs, wlen=36)
    blob = gen.root([
        gen.sfi(gen.table("041104B0", gen.string("OriginalFilename", "ja.exe")),
                gen.table("040904B0", gen.string("OriginalFilename", "en.exe"))),
        gen.node("VarFileInfo", children=[trans]),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "en.exe", got


@pytest.mark.parametrize("level", [0, 1])
def test_a_type_or_name_entry_that_is_not_a_subdirectory_is_malformed(level, tmp_path):
    # RT_VERSION and ID 1 must lead to subdirectories (high bit of the offset set, step 3);
    # the same offset without the high bit names a data entry: resdir, not followed
    rsrc = bytearray(version_section(EDGE_BLOB))
    at = 24 * level + 20                                   # the one entry's offset field
    struct.pack_into("<I", rsrc, at, struct.unpack_from("<I", rsrc, at)[0] & 0x7FFFFFFF)
    assert _strings_of(minimal_pe(rsrc=bytes(rsrc)), tmp_path) == ("error", "resdir")


def test_a_section_with_no_virtual_size_spans_its_raw_data(tmp_path):
    # VirtualSize 0 (as some linkers write for data-only sections): SizeOfRawData gives the
    # range an RVA may fall in (step 2)
    got = _strings_of(minimal_pe(EDGE_BLOB, vsize=0), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got


@pytest.mark.parametrize("tables, want", [
    (("041104B0", "040904E4"), "040904E4"),
    (("041104B0", "04090000"), "04090000"),
    (("04090000", "040904E4", "040904B0"), "040904B0"),
    (("04090000", "040904E4"), "040904E4"),
    (("041104B0", "00000000", "04090000"), "04090000"),
], ids=["E4", "0000", "B0-first", "E4-before-0000", "0000-before-neutral"])
def test_the_en_us_fallback_tables_in_their_order(tables, want, tmp_path):
    # No Translation: 040904B0, then 040904E4, then 04090000, before a neutral table and
    # before the first table (step 8)
    blob = gen.root([gen.sfi(*[gen.table(t, gen.string("OriginalFilename", f"{t}.exe")) for t in tables])])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == f"{want}.exe", got


def test_a_repeated_string_keeps_its_first_value_and_the_strings_after_it_are_read(tmp_path):
    blob = gen.root([gen.sfi(gen.table("040904B0",
                                       gen.string("OriginalFilename", "first.exe"),
                                       gen.string("originalfilename", "second.exe"),
                                       gen.string("CompanyName", "After Co")))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict), got
    assert (got["OriginalFilename"], got["CompanyName"]) == ("first.exe", "After Co"), got


def test_a_language_entry_leading_to_a_subdirectory_is_skipped(tmp_path):
    # The language level must name data entries: a neutral entry that leads to another
    # directory is passed over, and the next language (0x407, the first data entry) is read
    langs = [(0, True), (0x407, True)]
    rsrc = bytearray(resource_tree(EDGE_BLOB, langs=tuple(langs)))
    d3 = 16 + 8 + 16 + 8                                   # the language directory
    struct.pack_into("<I", rsrc, d3 + 16 + 4, 0x80000000 | 48)   # entry 0 -> a directory
    got = _strings_of(minimal_pe(rsrc=bytes(rsrc)), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "edge.exe", got


def test_the_first_var_file_info_is_found_after_other_root_children(tmp_path):
    # Between StringFileInfo and VarFileInfo: an unknown root child; in VarFileInfo a Var
    # that is not Translation comes first. Only the keys decide (step 7): the Translation
    # (ja) is found and used
    blob = gen.root([
        gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "en.exe")),
                gen.table("041104B0", gen.string("OriginalFilename", "ja.exe"))),
        gen.node("Comments", children=[gen.node("Translation", struct.pack("<HH", 0x409, 0x4B0))]),
        gen.node("VarFileInfo", children=[gen.node("Other", struct.pack("<HH", 0x409, 0x4B0)),
                                          gen.node("Translation", struct.pack("<HH", 0x411, 0x4B0))]),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "ja.exe", got


def test_fixed_info_bytes_not_declared_as_the_value_are_not_read(tmp_path):
    # A whole VS_FIXEDFILEINFO after the key, but wValueLength 0: the root has no value, so
    # no versions (step 6)
    blob = gen.node("VS_VERSION_INFO", gen.fixed(fv=(1, 2, 3, 4)), vlen=0)
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["file_version"] is None, got


@pytest.mark.parametrize("value, want", [(".mui", None), (".MUI", None), ("a.mui", "a"), ("a.mux", "a.mux")])
def test_a_value_that_is_only_a_mui_suffix_is_empty(value, want, tmp_path):
    blob = gen.root([gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", value)))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == want, got


def test_cuts_at_each_header_boundary_give_the_next_check_its_say(tmp_path):
    full = minimal_pe(EDGE_BLOB, optsz=119)
    # 90 bytes: the magic is whole (a bad one is bad_optional; a good one with too short an
    # optional header is no_resources)
    bad_magic = bytearray(full[:90])
    struct.pack_into("<H", bad_magic, 88, 0x107)
    assert _strings_of(bytes(bad_magic), tmp_path) == ("error", "bad_optional")
    assert _strings_of(full[:90], tmp_path) == ("error", "no_resources")
    # 208 bytes: DataDirectory[2] is whole; with 2 directories only, no resources
    assert _strings_of(minimal_pe(EDGE_BLOB, nrva=2)[:208], tmp_path) == ("error", "no_resources")
    # 352 bytes: the section table is whole; an RVA in no section is rva
    assert _strings_of(minimal_pe(EDGE_BLOB, res_dir=(0x9000, 16))[:352], tmp_path) == ("error", "rva")


@pytest.mark.parametrize("impl", IMPLS)
def test_a_file_that_cannot_be_opened_says_why_in_the_same_words_for_both_readers(impl, tmp_path):
    read, _ = pe.READERS[impl]
    with pytest.raises(PeError) as err:
        read(tmp_path / "missing.exe")
    # the system's reason, not the exception's text (no errno, no path)
    assert (err.value.code, err.value.reason) == ("io", "cannot open or read the file: "
                                                  + os.strerror(2))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd (Linux)")
@pytest.mark.parametrize("impl", IMPLS)
def test_refusing_a_folder_leaves_no_descriptor_open(impl, tmp_path):
    read, _ = pe.READERS[impl]
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(16):
        assert outcome(read, tmp_path) == ("error", "not_regular")
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_twin_reads_only_the_needed_ranges(tmp_path):
    # As the native reader (test_native_reads_only_the_needed_ranges): unbuffered reads of
    # the ranges it needs, so a read-ahead buffer never pulls in the 32 MiB overlay's start
    big, rchar = image_before_an_overlay(tmp_path)
    read = pe.READERS["python"][0]
    before = rchar()
    assert read(big)["OriginalFilename"] == "basic.exe"
    used = rchar() - before - 400  # the /proc read itself
    # about 1 KB of headers, directories and blob (the image is 5 KB); a buffered reader
    # would fill a 4 KiB block at the first read
    assert used < 2048, used


_TTY_PROBE = """
import os, sys
from sensor.enrich import pe
master, slave = os.openpty()
name = os.ttyname(slave)
os.close(slave)
try:
    pe.READERS[sys.argv[1]][0](name)
except pe.PeError as exc:
    print(exc.code)
try:
    os.close(os.open("/dev/tty", os.O_RDONLY))
    print("controlling-terminal")
except OSError:
    print("none")
"""


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "openpty") or not os.path.exists("/dev/tty"),
                    reason="POSIX terminals only")
@pytest.mark.parametrize("impl", IMPLS)
def test_a_terminal_named_as_an_image_never_becomes_the_controlling_terminal(impl):
    # An image path naming a terminal (an attacker's choice) is opened with O_NOCTTY: in a
    # process that has no controlling terminal (a new session, as a service runs), a plain
    # open would make that terminal its own. Refused as not_regular, and no terminal after.
    out = subprocess.run([sys.executable, "-c", _TTY_PROBE, impl], cwd=ROOT, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, start_new_session=True, timeout=120)
    assert out.stdout.split() == ["not_regular", "none"], out.stderr


_NO_FLAGS_PROBE = """
import os, sys
for flag in ("O_NONBLOCK", "O_NOCTTY", "O_BINARY"):
    if hasattr(os, flag):
        delattr(os, flag)
from sensor.enrich import _pe_py
assert _pe_py._OPEN_FLAGS == os.O_RDONLY, _pe_py._OPEN_FLAGS
print(_pe_py.read_version_info(sys.argv[1])["OriginalFilename"])
"""


def test_a_platform_without_the_optional_open_flags_opens_read_only(tmp_path):
    # O_NONBLOCK and O_NOCTTY are POSIX, O_BINARY is Windows': where one is missing it adds
    # nothing, so the file is opened for reading only (a read-only copy of a fixture is read)
    f = tmp_path / "ro.exe"
    shutil.copyfile(DATA / "basic64.exe", f)
    f.chmod(0o444)
    out = subprocess.run([sys.executable, "-c", _NO_FLAGS_PROBE, str(f)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["basic.exe"], out.stderr
    assert f.read_bytes() == (DATA / "basic64.exe").read_bytes()


def _languages_section(langs) -> bytes:
    """A .rsrc section whose language directory holds ``langs`` ((id, OriginalFilename)
    in the order given), each with its own data entry and version blob."""
    n = len(langs)
    d1, d2 = 24, 48
    entries_at = d2 + 16 + 8 * n
    blobs = [gen.root([gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", name)))])
             for _, name in langs]
    blob_at, at = [], entries_at + 16 * n
    for b in blobs:
        blob_at.append(at)
        at += len(b) + (-len(b) % 4)
    rsrc = (_directory(16, 0x80000000 | d1) + _directory(1, 0x80000000 | d2)
            + _dir_table([(lang, entries_at + 16 * i) for i, (lang, _) in enumerate(langs)])
            + b"".join(struct.pack("<IIII", SEC_VA + a, len(b), 0, 0) for a, b in zip(blob_at, blobs))
            + b"".join(b + b"\0" * (-len(b) % 4) for b in blobs))
    return rsrc


@pytest.mark.parametrize("langs, want", [
    (((0x407, "de"), (0x409, "en")), "en"),
    (((0, "neutral"), (0x409, "en")), "neutral"),
    (((0x409, "en"), (0, "neutral")), "neutral"),
    (((0x407, "de"), (0x40C, "fr")), "de"),
    (((0, "n1"), (0, "n2")), "n1"),
    (((0x407, "de"), (0x409, "e1"), (0x409, "e2")), "e1"),
], ids=["en-over-first", "neutral-over-en", "neutral-listed-last", "first", "first-neutral", "first-en"])
def test_the_language_preference(langs, want, tmp_path):
    # Neutral (0), then 0x409, then the first entry, each the first of its kind (step 3)
    got = _strings_of(minimal_pe(rsrc=_languages_section(langs)), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == want, got


def test_a_wlength_of_5_ends_the_list(tmp_path):
    # "A wLength below 6 ends the sibling list" (step 5): 5 as well as 0, so the String after
    # it is not read
    five = struct.pack("<HHH", 5, 0, 0) + b"\0\0"
    blob = gen.root([gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "before.exe"),
                                       five, gen.string("CompanyName", "After Co")))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and (got["OriginalFilename"], got["CompanyName"]) == ("before.exe", None), got


def test_a_key_whose_nul_straddles_the_nodes_end_is_skipped(tmp_path):
    # wLength 39 ends one byte into the key's NUL: the key is not terminated inside the node,
    # which is skipped (step 5), so the OriginalFilename after it is the first one
    cut = gen.node("OriginalFilename", wtype=1, wlen=39)
    blob = gen.root([gen.sfi(gen.table("040904B0", cut, gen.string("OriginalFilename", "real.exe")))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "real.exe", got


@pytest.mark.parametrize("pairs, want", [
    (((0x801, 0x4B0), (0x802, 0x4B0), (0x411, 0x4B0)), "en.exe"),
    (((0x801, 0x4B0), (0x407, 0x4B0)), "de.exe"),
], ids=["third-pair-outside-the-value", "second-pair-inside"])
def test_a_text_typed_translation_counts_its_value_in_16_bit_units(pairs, want, tmp_path):
    # wType 1: wValueLength 4 is 4 units, 8 bytes, 2 pairs (step 5). A third pair that the
    # node holds after them is not part of the value
    value = b"".join(struct.pack("<HH", *p) for p in pairs)
    trans = gen.node("Translation", value, wtype=1, vlen=4)
    blob = gen.root([
        gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "en.exe")),
                gen.table("040704B0", gen.string("OriginalFilename", "de.exe")),
                gen.table("041104B0", gen.string("OriginalFilename", "ja.exe"))),
        gen.node("VarFileInfo", children=[trans]),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == want, got


def test_translation_pairs_are_whole_4_byte_pairs_of_the_value(tmp_path):
    # Three pairs (12 bytes) naming no table; the node after the Translation begins with
    # wLength 16, wValueLength 0, which read as a fourth pair would name table 00100000
    trans = gen.node("Translation", struct.pack("<6H", 0x801, 0x4B0, 0x802, 0x4B0, 0x803, 0x4B0))
    after = gen.node("Pad")
    assert struct.unpack_from("<HH", after) == (16, 0)
    blob = gen.root([
        gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "en.exe")),
                gen.table("00100000", gen.string("OriginalFilename", "odd.exe"))),
        gen.node("VarFileInfo", children=[trans, after]),
    ])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "en.exe", got


def test_a_neutral_table_is_one_whose_language_is_0(tmp_path):
    # Language 0001 is not neutral; 0000 with any code page (FDE9 included) is (step 8)
    blob = gen.root([gen.sfi(gen.table("041104B0", gen.string("OriginalFilename", "ja.exe")),
                             gen.table("000104B0", gen.string("OriginalFilename", "one.exe")),
                             gen.table("0000FDE9", gen.string("OriginalFilename", "neutral.exe")))])
    got = _strings_of(minimal_pe(blob), tmp_path)
    assert isinstance(got, dict) and got["OriginalFilename"] == "neutral.exe", got
