"""Hostile input through the compiled parts, for the AddressSanitizer/UBSan build (`make sanitize`).

Run by tools/sanitize.sh inside the sanitizer build; it also runs on the normal build (then it
checks the answers and finds no memory error a sanitizer would). What it feeds:

  matcher   every rule of the SigmaHQ set (../shared/data/sigma-rules, plus the built-in rule)
            in one compiled matcher: bench/adversarial.py's worst-case events aimed at each
            rule, its whole-set events, then random events whose fields are up to 32,767
            characters of mixed 1-4-byte UTF-8, lone surrogates, NULs, case-special characters
            and the rules' own literals; as ProcessEvent and as dict. A sample of the events
            is also matched by the reference matcher and must give the same rules. The fold
            (``fold_utf8``) is checked against ``str.lower()`` on the random fields.
  etw       every Kernel-Process and kernel-logger layout: valid records with 32,767-character
            strings and 15-sub-authority SIDs, every truncation of them, oversized records,
            random bytes; each compared with the twin (``sensor.sources.etw_decode``).
  pe        every PE fixture (tests/data/pe, ../shared/data/pe) truncated, cut inside its
            headers and with random bytes flipped, read through the file layer and the buffer
            layer; compared with the twin on the buffer layer.

    python tools/sanitize_drive.py [--seed N] [--random-events N] [--records N] [--pe-variants N]
                                   [--rules-stride N] [--parity-every N]

Exit 0 when every answer agrees; 1 with the first disagreement. A memory error aborts the
process under the sanitizer (exit non-zero with its report on stderr).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MAX = 32_767
# Characters whose fold is special or long: U+0130 (lower is two code points), Kelvin sign,
# capital sigma (word-final form), long s, astral and CJK letters, a cased astral letter
# (Deseret), a lone high and a lone low surrogate, NUL, and 1-byte ASCII capitals.
SPECIAL = ["\u0130", "\u212a", "\u03a3", "\u017f", "\u00e9", "\u00c9", "\U0001f600", "\u4e2d",
           "\U00010400", "\ud800", "\udfff", "\x00", "A", "\u1e9e", "\u2126", "\uff21"]


def rand_char(rnd: random.Random) -> str:
    k = rnd.random()
    if k < 0.4:
        return chr(rnd.randrange(0x20, 0x7F))
    if k < 0.55:
        return chr(rnd.randrange(0x80, 0x800))
    if k < 0.7:
        return chr(rnd.randrange(0x800, 0x10000))       # lone surrogates included
    if k < 0.8:
        return chr(rnd.randrange(0x10000, 0x110000))
    if k < 0.9:
        return rnd.choice(SPECIAL)
    return "\x00"


def rand_field(rnd: random.Random, literals: list[str]) -> str:
    """Up to MAX characters: random characters, special ones and rule literals, in random runs."""
    n = rnd.choice([0, 1, 2, 7, 63, 64, 65, 255, 4096, MAX - 1, MAX, rnd.randrange(MAX + 1)])
    parts: list[str] = []
    size = 0
    while size < n:
        k = rnd.random()
        if k < 0.35 and literals:
            s = rnd.choice(literals)
            if rnd.random() < 0.3:
                s = s.upper() if rnd.random() < 0.5 else s.swapcase()
            s = s * rnd.randrange(1, 4)
        elif k < 0.5:
            s = rnd.choice(SPECIAL) * rnd.randrange(1, 50)
        else:
            s = "".join(rand_char(rnd) for _ in range(rnd.randrange(1, 64)))
        parts.append(s)
        size += len(s)
    return "".join(parts)[:n]


def drive_matcher(args, rnd: random.Random, out: dict) -> str | None:
    import adversarial
    import sensor
    from sensor.detect import _matcher
    from sensor.events import ProcessEvent

    missing = [str(d) for d in adversarial.RULE_DIRS if not d.is_dir()]
    if missing:
        return f"rule folders not found: {', '.join(missing)}"
    rules, _ = sensor.load_rules(adversarial.RULE_DIRS, builtin=True)
    comp = sensor.create_matcher(rules, "compiled")
    ref = sensor.create_matcher(rules, "reference")
    if comp.engine != "compiled":
        return "the compiled matcher is not built"
    out["rules"] = len(rules)
    literals: list[str] = []
    for r in rules:
        for d in adversarial.rule_literals(r).values():
            literals += [x for x in d["any"] + d["start"] + d["end"] if x]
    fields = adversarial.BASE_FIELDS

    events = 0
    checked = 0

    def run(ev, check: bool) -> str | None:
        nonlocal events, checked
        got = comp.match(ProcessEvent(ev))
        got_d = comp.match(dict(ev))
        events += 2
        if got != got_d:
            return f"ProcessEvent and dict differ: {got} != {got_d}"
        # the reference matcher's globs are Python regexes (``.*`` backtracks: a 32K value
        # against a three-star glob takes minutes), so only short events are compared
        if check and max((len(v) for v in ev.values() if isinstance(v, str)), default=0) <= args.parity_max:
            want = ref.match(ProcessEvent(ev))
            checked += 1
            if got != want:
                keys = {k: (len(v), v[:60]) for k, v in ev.items()}
                return f"compiled {got} != reference {want} on {keys}"
        return None

    n = 0
    for i, rule in enumerate(rules):
        if i % args.rules_stride:
            continue
        if i and i % 200 == 0:
            print(f"  matcher: {i:,} of {len(rules):,} rules' worst-case events", file=sys.stderr, flush=True)
        for _, ev in adversarial.rule_events(rule):
            n += 1
            err = run(ev, args.parity_every and n % args.parity_every == 0)
            if err:
                return f"rule {rule.id}: {err}"
    for _, ev in adversarial.global_events(rules):
        err = run(ev, False)
        if err:
            return err
    out["worst_case_events"] = events
    for k in range(args.random_events):
        ev = {f: rand_field(rnd, literals) for f in rnd.sample(fields, rnd.randrange(1, len(fields) + 1))}
        for v in list(ev.values())[:3]:
            want = v.lower().encode("utf-8", "surrogatepass")
            if _matcher.fold_utf8(v) != want and "\u03a3" not in v:
                return f"fold_utf8 differs from str.lower() on {v[:80]!r}"
        err = run(ev, args.parity_every and k % args.parity_every == 0)
        if err:
            return err
    out["matcher_events"] = events
    out["matcher_parity_checked"] = checked
    return None


def drive_etw(args, rnd: random.Random, out: dict) -> str | None:
    sys.path.insert(0, str(ROOT))
    from sensor.sources import _etw_decode as native
    from sensor.sources.etw_decode import DecodeError, decode_kernel_process, decode_system_process
    from tests.test_etw_decode import KP_ROWS, MOF_ROWS, encode, sample_values

    def twin(fn, *a):
        try:
            return fn(*a)
        except DecodeError:
            return None

    def same(a, b):
        if (a is None) != (b is None):
            return False
        return a is None or list(a.items()) == list(b.items())

    def big(vals: dict, seed: int) -> dict:
        r = random.Random(seed)
        v = dict(vals)
        for name, x in vals.items():
            if isinstance(x, str):
                ansi = name in ("ImageFileName",) or (name == "ImageName" and len(x) < 20)
                if ansi:
                    v[name] = "".join(chr(r.randrange(1, 256)) for _ in range(r.choice([0, 1, MAX])))
                else:
                    v[name] = "".join(chr(r.choice([r.randrange(1, 0xD800), r.randrange(0xD800, 0xE000),
                                                   r.randrange(0xE000, 0x10000)]))
                                      for _ in range(r.choice([0, 1, MAX])))
            elif isinstance(x, tuple):           # a SID: the largest authority, 15 sub-authorities
                v[name] = (r.choice([5, 2**32, 2**48 - 1]), [r.getrandbits(32) for _ in range(15)])
        return v

    records = 0
    layouts = [("kp", k, f, 8) for k, (_, f) in KP_ROWS.items()]
    layouts += [("sp", k, f, p) for k, (_, f) in MOF_ROWS.items() if k[1] >= 0 for p in (8, 4)]
    for kind, (a, ver), flds, psize in layouts:
        mof = kind == "sp"
        for seed in range(3):
            try:
                vals = big(sample_values(flds, seed, mof=mof, pointer_size=psize), seed)
                payload = encode(flds, vals, mof=mof, pointer_size=psize)
            except (UnicodeEncodeError, ValueError, OverflowError):
                vals = sample_values(flds, seed, mof=mof, pointer_size=psize)
                payload = encode(flds, vals, mof=mof, pointer_size=psize)
            cuts = sorted({0, 1, len(payload) - 1, len(payload)} |
                          {rnd.randrange(len(payload) + 1) for _ in range(args.cuts)})
            variants = [payload[:c] for c in cuts if c >= 0]
            variants.append(payload + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 70000))))
            variants.append(payload.replace(b"\x00\x00", b"\x41\x00"))     # no terminators
            for buf in variants:
                for v in {ver, ver + 1, 2**31 - 1}:
                    if kind == "kp":
                        ok = same(native.kernel_process(a, v, buf), twin(decode_kernel_process, a, v, buf))
                    else:
                        ok = same(native.system_process(a, v, buf, psize),
                                  twin(decode_system_process, a, v, buf, psize))
                    records += 1
                    if not ok:
                        return f"{kind} {a} v{v} ({len(buf)} bytes): compiled != twin"
    for _ in range(args.records):
        n = rnd.choice([0, 1, 3, 7, 8, 19, 20, 24, 47, 48, 49, 84, 85, 200, rnd.randrange(70000)])
        fill = rnd.random()
        if fill < 0.3:
            buf = bytes(rnd.randrange(256) for _ in range(n))
        elif fill < 0.6:
            buf = bytes(rnd.choice([0, 1, 0x80, 0xFF, 0x41]) for _ in range(n))
        else:
            buf = b"\x01\x0f" + bytes(rnd.choice([0, 0xFF]) for _ in range(n))
        a = rnd.choice([1, 2, 15, 3, 4, 39, 0, -1, 2**31 - 1])
        v = rnd.choice([0, 1, 2, 3, 4, 5, 6, 7, -1, 2**31 - 1])
        psize = rnd.choice([4, 8])
        if not same(native.kernel_process(a, v, buf), twin(decode_kernel_process, a, v, buf)):
            return f"kernel_process {a} v{v} on {len(buf)} random bytes: compiled != twin"
        if not same(native.system_process(a, v, buf, psize), twin(decode_system_process, a, v, buf, psize)):
            return f"system_process {a} v{v} on {len(buf)} random bytes: compiled != twin"
        records += 2
    out["etw_records"] = records
    return None


def drive_pe(args, rnd: random.Random, out: dict) -> str | None:
    from sensor.enrich import _pe_py, hashes, pe

    if pe.IMPLEMENTATION != "native":
        return "the native PE reader is not built"
    files = sorted(p for d in (ROOT / "tests" / "data" / "pe", ROOT.parent / "shared" / "data" / "pe")
                   if d.is_dir() for p in d.rglob("*") if p.is_file() and p.stat().st_size <= 8 << 20)
    n = 0

    def both(data: bytes) -> tuple:
        try:
            a = pe.native_parse_version_info(data)
        except pe.PeError as e:
            a = ("error", e.code)
        try:
            b = _pe_py.parse_version_info(data)
        except pe.PeError as e:
            b = ("error", e.code)
        return a, b

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.exe"
        for f in files:
            data = f.read_bytes()
            cuts = {0, 1, 2, 64, 0x3C, 0x40, 0x80, 0x100, 0x200, 0x400, len(data) - 1, len(data)}
            cuts |= {rnd.randrange(len(data) + 1) for _ in range(args.pe_variants)}
            variants = [data[:c] for c in sorted(cuts) if 0 <= c <= len(data)]
            for _ in range(args.pe_variants):
                b = bytearray(data)
                for _ in range(rnd.randrange(1, 16)):
                    if b:
                        b[rnd.randrange(len(b))] = rnd.choice([0, 0xFF, 0x7F, 0x80, rnd.randrange(256)])
                variants.append(bytes(b))
            for v in variants:
                path.write_bytes(v)
                try:
                    pe.native_read_version_info(str(path))
                except pe.PeError:
                    pass
                a, b = both(v)
                n += 1
                if a != b:
                    return f"{f.name} variant of {len(v)} bytes: native {a!r} != twin {b!r}"
                a, b = hashes.imphash_text(v, "native"), hashes.imphash_text(v, "python")
                if a != b:
                    return f"{f.name} variant of {len(v)} bytes: imphash native {a!r} != twin {b!r}"
    out["pe_files"] = len(files)
    out["pe_variants"] = n
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--random-events", type=int, default=300)
    ap.add_argument("--rules-stride", type=int, default=1)
    ap.add_argument("--parity-every", type=int, default=10, help="0: no reference matcher")
    ap.add_argument("--parity-max", type=int, default=2000,
                    help="compare with the reference only events whose fields are at most this long")
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--cuts", type=int, default=40, help="random truncations per valid record")
    ap.add_argument("--pe-variants", type=int, default=40)
    ap.add_argument("--only", choices=("matcher", "etw", "pe"), action="append")
    args = ap.parse_args(argv)
    parts = {"etw": drive_etw, "pe": drive_pe, "matcher": drive_matcher}
    import sensor
    if Path(sensor.__file__).resolve().parent != ROOT / "sensor":
        print(f"sensor imported from {sensor.__file__}, not from {ROOT}", file=sys.stderr)
        return 2
    failed = False
    for name in args.only or list(parts):
        out: dict = {}
        t0 = time.perf_counter()
        err = parts[name](args, random.Random(f"{args.seed}:{name}"), out)
        dt = time.perf_counter() - t0
        detail = ", ".join(f"{k} {v:,}" for k, v in out.items())
        print(f"{name}: {'FAIL ' + err if err else 'ok'} ({detail}; {dt:.0f} s)", flush=True)
        failed |= bool(err)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
