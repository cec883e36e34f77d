"""The PE readers' named caps (docs/pe.md, docs/hostile-inputs.md), each at its limit and one past.

The limits are the numbers docs/pe.md promises (at most 32 Translation pairs, the first 64
StringTables, 4,096 entries in a resource directory), written here as numbers, not read from
the readers, so a cap moved in either reader fails these tests.

A version resource is attacker-made: the readers consider at most ``MAX_TRANSLATIONS``
Translation pairs and ``MAX_TABLES`` StringTables, and refuse a resource directory of more than
``MAX_DIR_ENTRIES`` entries. Each test builds an image where the answer differs on either side of
the cap, and runs every reader built here (the C reader and its Python twin) on it.
"""
from __future__ import annotations

import struct

import pytest

from sensor.enrich import _pe_py, pe
from sensor.enrich.pe import PeError

from .conftest import DATA, ROOT, load_gen_blobs
from .test_pe_property import LAYOUT, embed

gen = load_gen_blobs()

MAX_TRANSLATIONS = 32   # docs/pe.md, "What is read", step 7
MAX_TABLES = 64         # docs/pe.md, "What is read", step 8
MAX_DIR_ENTRIES = 4096  # docs/pe.md, "What is read", step 4

pytestmark = pytest.mark.skipif(LAYOUT is None, reason="pefile (test dependency) is not installed")


def parsers():
    return [(name, parse) for name, (_read, parse) in pe.READERS.items()]


def test_the_caps_are_the_same_numbers_in_both_readers():
    header = (ROOT / "native" / "pe_version.h").read_text()
    for name, value in (("MAX_DIR_ENTRIES", MAX_DIR_ENTRIES), ("MAX_TABLES", MAX_TABLES),
                        ("MAX_TRANSLATIONS", MAX_TRANSLATIONS)):
        assert f"#define PEV_{name} {value}u" in header, name
        assert getattr(_pe_py, name) == value, name


def _table(i: int) -> bytes:
    # 0x0C0A is Spanish (modern sort): not a fallback table, not language-neutral, so a table
    # with this id is chosen only when a Translation pair names it (or when it comes first).
    return gen.table(f"0C0A{i:04X}", gen.string("OriginalFilename", f"table{i}.exe"))


def _tables_image(n_tables: int, wanted: int) -> bytes:
    """``n_tables`` StringTables; the Translation names only the ``wanted``-th (1-based)."""
    tables = [_table(i) for i in range(1, n_tables + 1)]
    return embed(gen.root([gen.sfi(*tables), gen.translation((0x0C0A, wanted))]))


@pytest.mark.parametrize("name,parse", parsers())
def test_string_tables_past_the_cap_are_not_considered(name, parse):
    cap = MAX_TABLES
    # The table the Translation names is the last one the cap lets in: it is chosen.
    assert parse(_tables_image(cap, cap))["OriginalFilename"] == f"table{cap}.exe", name
    # One table more and the named one is past the cap: the first table is the answer.
    assert parse(_tables_image(cap + 1, cap + 1))["OriginalFilename"] == "table1.exe", name
    # The cap counts tables, not the position of the answer: before it, a later table is found.
    assert parse(_tables_image(cap + 1, cap - 1))["OriginalFilename"] == f"table{cap - 1}.exe", name


def _translations_image(n_pairs: int) -> bytes:
    """``n_pairs`` Translation pairs; only the last names a table that exists (the second)."""
    pairs = [(0x0C0A, 0x0100 + i) for i in range(n_pairs - 1)] + [(0x0C0A, 2)]
    return embed(gen.root([gen.sfi(_table(1), _table(2)), gen.translation(*pairs)]))


@pytest.mark.parametrize("name,parse", parsers())
def test_translation_pairs_past_the_cap_are_not_considered(name, parse):
    cap = MAX_TRANSLATIONS
    assert parse(_translations_image(cap))["OriginalFilename"] == "table2.exe", name
    assert parse(_translations_image(cap + 1))["OriginalFilename"] == "table1.exe", name


def _rsrc_image(n_entries: int) -> bytes:
    """basic64.exe with a new resource section whose root directory has ``n_entries`` ID entries:
    ``n_entries - 1`` of other types, then RT_VERSION (16) leading to a version blob."""
    import pefile

    src = (DATA / "pe" / "basic64.exe").read_bytes()
    p = pefile.PE(data=src)
    rsrc = next(s for s in p.sections if s.Name.rstrip(b"\0") == b".rsrc")
    assert rsrc is p.sections[-1]
    res_dir = p.OPTIONAL_HEADER.DATA_DIRECTORY[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]]
    dir_off = res_dir.get_file_offset()
    base = rsrc.VirtualAddress

    def directory(entries: list[tuple[int, int]]) -> bytes:
        return struct.pack("<IIHHHH", 0, 0, 0, 0, 0, len(entries)) + b"".join(
            struct.pack("<II", ident, target) for ident, target in entries)

    root_len = 16 + 8 * n_entries
    type_off = root_len                         # RT_VERSION's directory: one name (ID 1)
    name_off = type_off + 24                    # its one language (0x409)
    data_off = name_off + 24                    # the data entry
    blob_off = data_off + 16
    blob = gen.root([gen.sfi(gen.table("040904B0", gen.string("OriginalFilename", "many.exe")))])
    others = [(100 + i, 0x80000000 | type_off) for i in range(n_entries - 1)]
    content = (directory(others + [(16, 0x80000000 | type_off)])
               + directory([(1, 0x80000000 | name_off)])
               + directory([(0x409, data_off)])
               + struct.pack("<IIII", base + blob_off, len(blob), 0, 0)
               + blob)
    content += b"\0" * (-len(content) % 512)
    img = bytearray(src[:rsrc.PointerToRawData]) + content
    sec_hdr = rsrc.get_file_offset()
    struct.pack_into("<I", img, sec_hdr + 8, len(content))     # VirtualSize
    struct.pack_into("<I", img, sec_hdr + 16, len(content))    # SizeOfRawData
    struct.pack_into("<II", img, dir_off, base, len(content))  # the resource data directory
    size_of_image = p.OPTIONAL_HEADER.get_file_offset() + 56
    align = p.OPTIONAL_HEADER.SectionAlignment
    struct.pack_into("<I", img, size_of_image, base + (len(content) + align - 1) // align * align)
    return bytes(img)


@pytest.mark.parametrize("name,parse", parsers())
def test_a_resource_directory_past_the_cap_is_refused(name, parse):
    cap = MAX_DIR_ENTRIES
    assert parse(_rsrc_image(1))["OriginalFilename"] == "many.exe", name
    assert parse(_rsrc_image(cap))["OriginalFilename"] == "many.exe", name
    with pytest.raises(PeError) as err:
        parse(_rsrc_image(cap + 1))
    assert err.value.code == "resdir", name
