"""ETW payload decoding and record processing cost, per record.

Rows: each Kernel-Process / system-logger layout decoded by the fast decoder, with the generic
manifest-driven decoder (its pure-Python twin) as the baseline measured in the same run; then the
whole worker step (``EtwProcessor.handle``: decode, device-path mapping, process-table lookups
and insert, event build; no psutil back-fill) and the consumer-thread hand-off (``sink``).

    python bench/etw_decode.py
    python bench/etw_decode.py --number 200000 --json
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_payload(schema, pointer_size=8, **over) -> bytes:
    """A realistic payload for ``schema`` (field lists from sensor.sources.etw_manifest)."""
    from sensor.sources import etw_manifest as m
    out = bytearray()
    for name, typ in schema.fields:
        v = over.get(name)
        if typ in (m.U32, m.I32):
            out += struct.pack("<I", v if v is not None else 4242)
        elif typ in (m.U64, m.FILETIME):
            out += struct.pack("<Q", v if v is not None else 133_500_000_000_000_000)
        elif typ == m.U16:
            out += struct.pack("<H", 0x8664)
        elif typ == m.PTR:
            out += (0xFFFF_A000_1234_5678 & ((1 << (8 * pointer_size)) - 1)).to_bytes(pointer_size, "little")
        elif typ == m.SID:
            out += bytes([1, 1, 0, 0, 0, 0, 0, 16]) + struct.pack("<I", 12288)
        elif typ == m.TOKEN_SID:
            out += bytes(2 * pointer_size) + bytes([1, 5, 0, 0, 0, 0, 0, 5]) + struct.pack("<5I", 21, 1, 2, 3, 1001)
        elif typ == m.UTF16Z:
            text = v if v is not None else ("\\Device\\HarddiskVolume3\\Windows\\System32\\wbem\\mofcomp.exe"
                                            if name == "ImageName" else
                                            "mofcomp.exe C:\\Users\\Public\\x.mof" if name == "CommandLine" else "")
            out += text.encode("utf-16-le") + b"\0\0"
        elif typ == m.ANSIZ:
            out += b"mofcomp.exe\0"
    return bytes(out)


def per_call_ns(fn, args, number: int) -> float:
    """Best of 3 runs, ns per call."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn(*args)
        best = min(best, (time.perf_counter_ns() - t0) / number)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=50_000, help="calls per measurement")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    from sensor.enrich.devices import DeviceMapper
    from sensor.enrich.process_table import ProcessTable
    from sensor.sources import etw_decode as d
    from sensor.sources import etw_manifest as m
    from sensor.sources.etw_raw import SRC_KERNEL_PROCESS
    from sensor.sources.etw import EtwConfig, EtwProcessor, EtwSource

    rows = []
    cases = [("ProcessStart v2", 1, 2), ("ProcessStart v3", 1, 3), ("ProcessStart v4", 1, 4),
             ("ProcessStart v5", 1, 5), ("ProcessStop v2", 2, 2), ("ProcessRundown v3", 15, 3)]
    for label, eid, ver in cases:
        payload = build_payload(m.KERNEL_PROCESS[(eid, ver)])
        assert d.decode_kernel_process(eid, ver, payload) == d.decode_kernel_process_generic(eid, ver, payload)
        base = per_call_ns(d.decode_kernel_process_generic, (eid, ver, payload), args.number)
        fast = per_call_ns(d.decode_kernel_process, (eid, ver, payload), args.number)
        rows.append({"case": label, "baseline": "generic twin", "baseline_ns": base, "ns": fast,
                     "speedup": base / fast})
    sl = build_payload(m.SYSTEM_PROCESS[(1, 4)])
    base = per_call_ns(d.decode_system_process_generic, (1, 4, sl), args.number)
    fast = per_call_ns(d.decode_system_process, (1, 4, sl), args.number)
    rows.append({"case": "system logger Process v4", "baseline": "generic twin", "baseline_ns": base,
                 "ns": fast, "speedup": base / fast})

    # The worker step for one start: decode + map + table + event (pids vary: table inserts).
    proc = EtwProcessor(ProcessTable(max_entries=65536),
                        device_mapper=DeviceMapper(devices={"\\Device\\HarddiskVolume3": "C:"}))
    payloads = [build_payload(m.KERNEL_PROCESS[(1, 4)], ProcessID=1000 + i, ParentProcessID=1000 + i - 1)
                for i in range(4096)]
    raws = [(SRC_KERNEL_PROCESS, 1, 4, 1, 4, 8, 0, 0, p) for p in payloads]
    n = args.number
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for i in range(n):
            proc.handle(raws[i & 4095])
        best = min(best, (time.perf_counter_ns() - t0) / n)
    base = per_call_ns(d.decode_kernel_process_generic, (1, 4, payloads[0]), n)
    rows.append({"case": "worker step (v4 start → event)", "baseline": "generic decode alone",
                 "baseline_ns": base, "ns": best, "speedup": base / best})

    # The consumer-thread hand-off (what runs inside the ETW callback after the copy).
    src = EtwSource(EtwConfig(queue_size=10 ** 9, seed_from_psutil=False), backend=object(), helpers={})
    sink = src._make_sink(0)
    raw = raws[0]
    hand = per_call_ns(sink, (raw,), n)
    rows.append({"case": "callback hand-off (sink)", "baseline": "fast decode v4",
                 "baseline_ns": per_call_ns(d.decode_kernel_process, (1, 4, payloads[0]), n), "ns": hand,
                 "speedup": None})
    rows[-1]["speedup"] = rows[-1]["baseline_ns"] / hand

    # The whole callback body on a 64-bit EVENT_RECORD laid out in memory (Windows-only module,
    # pure-Python part): header unpack, filter, UserData copy, sink.
    import ctypes

    from sensor.sources import etw_windows
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        data = ctypes.create_string_buffer(payloads[0], len(payloads[0]))
        rec = ctypes.create_string_buffer(112)
        struct.pack_into("<H", rec, 4, 0x40)
        struct.pack_into("<Iq", rec, 12, 4, 133_500_000_000_000_000)
        struct.pack_into("<I", rec, 24, etw_windows.KERNEL_PROCESS_DATA1)
        struct.pack_into("<HB", rec, 40, 1, 4)
        struct.pack_into("<B", rec, 45, 1)
        struct.pack_into("<H", rec, 86, len(payloads[0]))
        struct.pack_into("<Q", rec, 96, ctypes.addressof(data))
        cb = etw_windows.make_record_callback(SRC_KERNEL_PROCESS, sink, [0])
        body = per_call_ns(cb, (ctypes.addressof(rec),), n)
        rows.append({"case": "callback body (unpack+copy+sink)", "baseline": "fast decode v4",
                     "baseline_ns": rows[-1]["baseline_ns"], "ns": body,
                     "speedup": rows[-1]["baseline_ns"] / body})

    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "number": n, "rows": rows}, indent=2))
        return 0
    print(f"Python {sys.version.split()[0]}, {n} calls per measurement (best of 3)")
    print(f"{'case':34} {'baseline':22} {'baseline ns':>12} {'ns':>9} {'ratio':>7}")
    for r in rows:
        print(f"{r['case']:34} {r['baseline']:22} {r['baseline_ns']:12.0f} {r['ns']:9.0f} {r['speedup']:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
