"""Property tests: the native PE reader and its pure-Python twin agree on any input."""
from __future__ import annotations

import importlib.util
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sensor.enrich import pe
from sensor.enrich.pe import PeError

from .conftest import load_gen_blobs

pytestmark = pytest.mark.skipif("native" not in pe.READERS,
                                reason="sensor.enrich._pe is not built (or SENSOR_NO_EXTENSIONS=1)")

DATA = Path(__file__).resolve().parent / "data" / "pe"
SEEDS = sorted(p.read_bytes() for p in DATA.iterdir() if p.suffix in (".exe", ".txt"))
SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


gen = load_gen_blobs()


def answer(parse, data: bytes):
    try:
        return parse(data)
    except PeError as exc:
        return ("error", exc.code, exc.reason)


def assert_agree(data: bytes) -> None:
    native = answer(pe.READERS["native"][1], data)
    twin = answer(pe.READERS["python"][1], data)
    assert native == twin
    # Shown by --hypothesis-show-statistics: how often the inputs reach the strings.
    if isinstance(native, tuple):
        event(f"error {native[1]}")
    else:
        event("strings" if any(native[k] for k in pe.STRING_KEYS) else "no strings")


@SETTINGS
@given(seed=st.sampled_from(SEEDS),
       writes=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=24),
       cut=st.none() | st.integers(0, 1 << 16))
def test_mutated_fixtures(seed, writes, cut):
    b = bytearray(seed)
    for pos, val in writes:
        if b:
            b[pos % len(b)] = val
    if cut is not None:
        del b[cut:]
    assert_agree(bytes(b))


def _layout():
    """basic64.exe with its .rsrc grown so a new version blob can sit at the end of the file."""
    import pefile
    src = (DATA / "basic64.exe").read_bytes()
    p = pefile.PE(data=src)
    rsrc = next(s for s in p.sections if s.Name.rstrip(b"\0") == b".rsrc")
    ver = next(e for e in p.DIRECTORY_ENTRY_RESOURCE.entries if e.id == 16)
    data_entry = ver.directory.entries[0].directory.entries[0].data.struct.get_file_offset()
    end = rsrc.PointerToRawData + rsrc.SizeOfRawData
    return src[:end], rsrc.get_file_offset(), rsrc.VirtualAddress + rsrc.SizeOfRawData, \
        rsrc.SizeOfRawData, data_entry


def embed(blob: bytes, size_delta: int = 0) -> bytes:
    head, sec_hdr, rva, raw, data_entry = LAYOUT
    img = bytearray(head) + blob + b"\0" * (-len(blob) % 512)
    grown = raw + len(img) - len(head)
    struct.pack_into("<I", img, sec_hdr + 8, grown)   # VirtualSize
    struct.pack_into("<I", img, sec_hdr + 16, grown)  # SizeOfRawData
    struct.pack_into("<II", img, data_entry, rva, max(0, len(blob) + size_delta))
    return bytes(img)


LAYOUT = _layout() if importlib.util.find_spec("pefile") else None

KEYS = st.sampled_from([
    "VS_VERSION_INFO", "vs_version_info", "StringFileInfo", "STRINGFILEINFO", "VarFileInfo",
    "varfileinfo", "Translation", "040904B0", "040904b0", "040904E4", "04090000", "000004B0",
    "040C04B0", "041104B0", "0409ZZZZ", "OriginalFilename", "ORIGINALFILENAME", "CompanyName",
    "ProductName", "FileDescription", "FileVersion", "InternalName", "ProductVersion", "x", "",
])
TEXT = st.text(st.characters(codec="utf-16", exclude_categories=("Cs",)), max_size=10)

VALUES = st.one_of(
    st.just(b""),
    TEXT.map(gen.text),
    st.sampled_from(["a.mui", "x.MUI  ", "  ", "notepad.exe.mui", "abc\0def", "\ud800".encode(
        "utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")])
    .map(lambda s: s.encode("utf-16-le", "surrogatepass") + b"\0\0"),
    st.binary(max_size=24),
    st.lists(st.tuples(st.sampled_from([0, 0x409, 0x40C, 0x411]),
                       st.sampled_from([0, 1200, 1252])), max_size=4)
    .map(lambda pairs: b"".join(struct.pack("<HH", lang, cp) for lang, cp in pairs)),
    st.just(gen.fixed()),
)


def make_node(key, value, wtype, children, vlen, wlen_delta):
    body = gen.node(key, value, wtype, children, vlen=vlen)
    if wlen_delta:
        wlen = max(0, struct.unpack_from("<H", body)[0] + wlen_delta) & 0xFFFF
        body = struct.pack("<H", wlen) + body[2:]
    return body


PERTURB_VLEN = st.none() | st.integers(0, 0xFFFF)
PERTURB_WLEN = st.sampled_from([0, 0, 0, -6, -2, 2, 8, 100, -1000])
NODES = st.recursive(
    st.builds(make_node, KEYS, VALUES, st.sampled_from([0, 1]), st.just(()), PERTURB_VLEN,
              PERTURB_WLEN),
    lambda kids: st.builds(make_node, KEYS, VALUES, st.sampled_from([0, 1]),
                           st.lists(kids, max_size=5), PERTURB_VLEN, PERTURB_WLEN),
    max_leaves=24,
)

# Plausible trees (mostly well-formed, sometimes perturbed) so that many parses find strings.
MOSTLY_NONE = st.one_of(*[st.just(None)] * 9, st.integers(0, 0xFFFF))
MOSTLY_ZERO = st.sampled_from([0] * 24 + [-2, 2, 6, -8, 200])
WORDS = st.text(st.characters(codec="utf-16", exclude_categories=("Cs",)), min_size=1, max_size=8)
STRING_VALUES = st.one_of(*[WORDS.map(gen.text)] * 3, VALUES)
STRINGS = st.builds(
    make_node,
    st.sampled_from(list(pe.STRING_KEYS) + ["originalFILENAME", "Comments", "OriginalFilenam"]),
    STRING_VALUES, st.sampled_from([1, 1, 1, 0]), st.just(()), MOSTLY_NONE, MOSTLY_ZERO)
TABLES = st.builds(
    make_node,
    st.sampled_from(["040904B0", "040904b0", "040904E4", "04090000", "000004B0", "040C04B0",
                     "041104E4", "0409ZZZZ", "040904B", ""]),
    st.just(b""), st.just(1), st.lists(STRINGS, min_size=1, max_size=8), MOSTLY_NONE, MOSTLY_ZERO)
SFI = st.builds(make_node, st.sampled_from(["StringFileInfo", "stringfileinfo", "StringFileInf"]),
                st.just(b""), st.just(1), st.lists(TABLES, min_size=1, max_size=4), MOSTLY_NONE, MOSTLY_ZERO)
TRANSLATION = st.builds(
    make_node, st.sampled_from(["Translation", "TRANSLATION", "Translatio"]),
    st.lists(st.sampled_from([0x04B00409, 0x04E40409, 0x04B0040C, 0x04E40411, 0x04B00000, 7]),
             max_size=6).map(lambda v: struct.pack(f"<{len(v)}I", *v)),
    st.sampled_from([0, 0, 1]), st.just(()), MOSTLY_NONE, MOSTLY_ZERO)
VFI = st.builds(make_node, st.sampled_from(["VarFileInfo", "VARFILEINFO"]), st.just(b""),
                st.just(1), st.lists(TRANSLATION, max_size=2), MOSTLY_NONE, MOSTLY_ZERO)
ROOT_CHILDREN = st.lists(st.one_of(SFI, SFI, VFI, NODES), min_size=1, max_size=4)


@settings(SETTINGS, max_examples=400)
@given(children=ROOT_CHILDREN,
       root_key=st.sampled_from(["VS_VERSION_INFO"] * 4 + ["vs_version_info", "VS_VERSION_INF"]),
       root_value=st.sampled_from([gen.fixed(), b"", gen.fixed(sig=1), gen.fixed()[:40]]),
       size_delta=st.sampled_from([0] * 6 + [-4, 4, 1 << 20]),
       cut=st.none() | st.integers(0, 1 << 12))
def test_generated_version_trees(children, root_key, root_value, size_delta, cut):
    if LAYOUT is None:
        pytest.skip("pefile (test dependency) is not installed")
    blob = gen.node(root_key, root_value, 0, children)
    img = embed(blob, size_delta)
    assert_agree(img)
    if cut is not None:
        assert_agree(img[:len(img) - cut])


def test_generated_tree_answers_are_real():
    # The embedding itself works: a well-formed generated tree is read back.
    if LAYOUT is None:
        pytest.skip("pefile (test dependency) is not installed")
    long = "D" * 6000  # a 12 KB blob: read past the 4 KiB windows of the file layer
    blob = gen.root([gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "gen.exe"),
                                       gen.string("FileDescription", long)))])
    img = embed(blob)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "gen.exe"
        f.write_bytes(img)
        for read, parse in pe.READERS.values():
            for info in (parse(img), read(f)):
                assert info["OriginalFilename"] == "gen.exe" and info["FileDescription"] == long


@settings(SETTINGS, max_examples=150)
@given(seed=st.sampled_from(SEEDS),
       writes=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=16),
       cut=st.none() | st.integers(0, 1 << 16))
def test_file_and_buffer_modes_agree(seed, writes, cut):
    # The file layer (read windows, pread/ReadFile) answers like the in-memory parse.
    b = bytearray(seed)
    for pos, val in writes:
        b[pos % len(b)] = val
    if cut is not None:
        del b[cut:]
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "x.exe"
        f.write_bytes(b)
        for read, parse in pe.READERS.values():
            assert answer(read, f) == answer(parse, bytes(b))


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    assert_agree(b"MZ" + data)
    assert_agree(data)


SURROGATE_CASES = {
    "pair": ["\U0001F600", "\ud83d\ude00"],  # a valid pair is one code point
    "lone high at end": ["ab\ud800"],
    "high then letter": ["\ud800b"],
    "lone low": ["a\udc00b"],
    "low then high": ["\udc00\ud800"],
    "two highs then low": ["\ud800\ud800\udc00"],
    "non-BMP and BMP mix": ["\u00e9\u4e2d\U00010348x"],
}


@pytest.mark.parametrize("case", sorted(SURROGATE_CASES))
def test_utf16_values_decode_like_the_python_codec(case):
    # The native reader converts UTF-16 to UTF-8 in C; unpaired surrogates must become
    # U+FFFD exactly where Python's utf-16-le codec with errors="replace" puts them.
    if LAYOUT is None:
        pytest.skip("pefile (test dependency) is not installed")
    value = "".join(SURROGATE_CASES[case])
    raw = value.encode("utf-16-le", "surrogatepass")
    want = raw.decode("utf-16-le", "replace")
    blob = gen.root([gen.sfi(gen.table("040904B0", gen.node("OriginalFilename", raw + b"\0\0", 1)))])
    img = embed(blob)
    for _read, parse in pe.READERS.values():
        assert parse(img)["OriginalFilename"] == want


def test_native_result_keys_in_order():
    # The native result is a dict literal: its keys must be RESULT_KEYS, in order.
    info = pe.READERS["native"][0](DATA / "basic64.exe")
    assert tuple(info) == pe.RESULT_KEYS
    assert info["file_version"] and info["product_version"]


def test_version_blob_ending_exactly_at_end_of_file():
    # A resource that ends on the file's last byte is inside the file (docs/pe.md: a range is
    # refused only when it runs *past* the end); one byte more of it and it is refused.
    if LAYOUT is None:
        pytest.skip("pefile (test dependency) is not installed")
    head, sec_hdr, rva, raw, data_entry = LAYOUT
    blob = gen.root([gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "edge.exe")))])
    pre = (-len(blob)) % 512               # pad before the blob, so it ends on the section's end

    def image(data_size: int, cut: int = 0) -> bytes:
        img = bytearray(head) + b"\0" * pre + blob
        grown = raw + pre + len(blob)
        struct.pack_into("<I", img, sec_hdr + 8, grown)    # VirtualSize
        struct.pack_into("<I", img, sec_hdr + 16, grown)   # SizeOfRawData
        struct.pack_into("<II", img, data_entry, rva + pre, data_size)
        return bytes(img[:len(img) - cut])

    edge = image(len(blob))
    assert len(edge) % 512 == 0 and edge.endswith(blob)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "edge.exe"
        f.write_bytes(edge)
        for name, (read, parse) in pe.READERS.items():
            for info in (parse(edge), read(f)):
                assert info["OriginalFilename"] == "edge.exe", name
            for bad in (image(len(blob) + 1), image(len(blob), cut=1)):
                with pytest.raises(PeError):
                    parse(bad)
