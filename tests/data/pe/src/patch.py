"""Derive malformed fixtures from basic64.exe by patching or cutting bytes.

Offsets are located with pefile (a test dependency) so that the fixtures do not
depend on the parser they test.  Usage: python3 patch.py <fixture dir>
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pefile


def locate(path: Path) -> dict:
    pe = pefile.PE(str(path))
    rsrc_dir = pe.OPTIONAL_HEADER.DATA_DIRECTORY[2]
    rsrc = next(s for s in pe.sections if s.contains_rva(rsrc_dir.VirtualAddress))
    root_off = pe.get_offset_from_rva(rsrc_dir.VirtualAddress)
    ver = next(e for e in pe.DIRECTORY_ENTRY_RESOURCE.entries if e.id == 16)
    name = ver.directory.entries[0]
    lang = name.directory.entries[0]
    data = lang.data.struct
    info = {
        "root": root_off,
        "dd_resource": rsrc_dir.get_file_offset(),
        "magic": pe.OPTIONAL_HEADER.get_file_offset(),
        "ver_entry": ver.struct.get_file_offset(),      # level 0 entry for RT_VERSION
        "name_entry": name.struct.get_file_offset(),    # level 1 entry for ID 1
        "name_dir": root_off + (ver.struct.OffsetToData & 0x7FFFFFFF),
        "data_entry": data.get_file_offset(),
        "blob": pe.get_offset_from_rva(data.OffsetToData),
        "blob_size": data.Size,
        "rsrc_end": rsrc.PointerToRawData + rsrc.SizeOfRawData,
        "sections": pe.sections[0].get_file_offset(),
        "pe_sig": pe.DOS_HEADER.e_lfanew,
    }
    pe.close()
    return info


def put32(b: bytearray, off: int, v: int) -> None:
    struct.pack_into("<I", b, off, v)


def main(d: Path) -> None:
    src = (d / "basic64.exe").read_bytes()
    at = locate(d / "basic64.exe")
    out: dict[str, bytes] = {}

    out["trunc_headers"] = src[:at["sections"] + 20]              # inside the section table
    out["trunc_blob"] = src[:at["blob"] + at["blob_size"] // 2]   # inside the version blob
    out["trunc_resdir"] = src[:at["root"] + 8]                     # inside the root directory

    b = bytearray(src); put32(b, at["data_entry"], 0x7FFF0000)     # data RVA in no section
    out["data_rva_outside"] = bytes(b)
    b = bytearray(src); put32(b, at["data_entry"] + 4, 0x00100000)  # 1 MiB: past EOF
    out["data_size_past_eof"] = bytes(b)
    # Past the section's raw data but inside the file (an overlay follows): rejected too.
    b = bytearray(src) + b"\xCC" * 8192
    put32(b, at["data_entry"] + 4, at["rsrc_end"] - at["blob"] + 16)
    out["data_size_past_section"] = bytes(b)
    b = bytearray(src); put32(b, at["ver_entry"] + 4, 0x80000000)  # RT_VERSION dir = root
    out["loop_to_root"] = bytes(b)
    b = bytearray(src)                                             # ID 1 dir = itself
    put32(b, at["name_entry"] + 4, 0x80000000 | (at["name_dir"] - at["root"]))
    out["loop_to_self"] = bytes(b)
    b = bytearray(src); put32(b, at["name_entry"] + 4, 0xFFFFFFF0)  # subdir far outside
    out["subdir_outside"] = bytes(b)
    b = bytearray(src); put32(b, at["dd_resource"], 0x00F00000)    # resource RVA unmapped
    out["res_rva_unmapped"] = bytes(b)
    b = bytearray(src); struct.pack_into("<H", b, at["magic"], 0x999)
    out["bad_magic"] = bytes(b)
    b = bytearray(src); struct.pack_into("<H", b, at["root"] + 14, 5000)  # 5000 ID entries
    out["too_many_entries"] = bytes(b)
    b = bytearray(src); put32(b, 0x3C, 0x7FFFFFF0)                 # e_lfanew past EOF
    out["lfanew_outside"] = bytes(b)
    b = bytearray(src); b[at["pe_sig"]:at["pe_sig"] + 4] = b"NE\0\0"  # not a PE signature
    out["not_pe"] = bytes(b)
    for name, data in out.items():
        (d / f"{name}.exe").write_bytes(data)
    (d / "short_mz.txt").write_bytes(b"MZ is not enough: this is a text file.\n")
    (d / "plain.txt").write_bytes(b"A text file, not an executable.\n" * 4)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
