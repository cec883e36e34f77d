"""Adversarial matcher benchmark: the worst event time per rule and for the whole rule set.

For every rule, events aimed at its worst case are built from the rule's own literals
(values, glob tokens, regex literal pieces) and timed against a matcher holding the *whole*
rule set (every applicable SigmaHQ rule plus the built-in one):

  own        each field the rule reads: its literals repeated up to 32,767 characters
  near       each literal without its last character, repeated (anchors hit, checks fail)
  shaped     each field the rule reads starts with its startswith value, ends with its
             endswith value, the middle filled with its literals (so AND operands hold)
  all-max    every event field (the rule's and all others) at 32,767 characters
  non-ascii  the literals separated by characters whose lower-casing is costly or special
             (U+0130, U+212A, final sigma, an astral emoji) - the folding path

Plus whole-set events: all rules' literals in every field, near misses of all of them,
'a' * 32,767 in every field, and a non-ASCII mix.  Each event is timed ``--repeat`` times
(best kept: the machine is shared); the report gives the worst event per rule, the worst
overall, and the same run's baseline (the mean time of an ordinary event from the
regression data, when present) as a ratio.

    .venv/bin/python bench/adversarial.py                 # all rules (several minutes)
    .venv/bin/python bench/adversarial.py --stride 20     # every 20th rule (quick look)
    .venv/bin/python bench/adversarial.py --json          # machine-readable
    .venv/bin/python bench/adversarial.py --clock cpu     # CPU time (a shared machine)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SIGMA = SHARED / "data" / "sigma-rules"
RULE_DIRS = [SIGMA / "rules" / "windows" / "process_creation", SIGMA / "rules-threat-hunting",
             SIGMA / "rules-emerging-threats"]
REGRESSION = SHARED / "data" / "sigma-regression"
MAX = 32_767
sys.path.insert(0, str(ROOT))

# Every field an event of any source can carry, plus what rules name.
BASE_FIELDS = ["Image", "OriginalFileName", "CommandLine", "ParentImage", "ParentCommandLine",
               "User", "IntegrityLevel", "CurrentDirectory", "Company", "Product",
               "Description", "FileVersion", "UtcTime", "Computer", "Hashes", "ParentUser",
               "LogonId", "LogonGuid", "ProcessGuid", "ParentProcessGuid", "RuleName",
               "TerminalSessionId", "GrandParentImage"]
SPECIAL = ["\u0130", "\u212a", "\u03a3", "\U0001f600", "\u017f", "\u00e9"]


def fill(parts: list[str], n: int = MAX) -> str:
    """``parts`` repeated, in order, cut at ``n`` characters."""
    parts = [p for p in parts if p] or ["a"]
    out, size, i = [], 0, 0
    while size < n:
        s = parts[i % len(parts)]
        out.append(s)
        size += len(s)
        i += 1
    return "".join(out)[:n]


def regex_pieces(pattern: str) -> list[str]:
    return [x for x in re.split(r"\\[a-zA-Z]|[\\\[\]\(\)\{\}\?\*\+\|\.\^\$]", pattern) if x]


def rule_literals(rule) -> dict[str | None, dict[str, list[str]]]:
    """Per field: the rule's literals by position kind (any, start, end)."""
    from sensor.detect.ir import STAR, QMARK, glob_tokens

    out: dict = {}
    for p in rule.predicates:
        d = out.setdefault(p.field, {"any": [], "start": [], "end": []})
        for v in p.values:
            if not isinstance(v, str):
                d["any"].append(str(v))
            elif p.op == "re":
                d["any"].extend(regex_pieces(v))
            elif p.op == "glob":
                toks = [t for t in glob_tokens(v) if t is not STAR and t is not QMARK]
                d["any"].extend(toks)
            elif p.op == "startswith":
                d["start"].append(v)
            elif p.op == "endswith":
                d["end"].append(v)
            else:
                d["any"].append(v)
    return out


def rule_events(rule) -> list[tuple[str, dict]]:
    lits = rule_literals(rule)
    fields = [f for f in lits if f is not None and not f.startswith("@")] or ["CommandLine"]
    keyword = lits.get(None)

    def all_of(f):
        d = lits.get(f) or keyword or {"any": [], "start": [], "end": []}
        return d["any"] + d["start"] + d["end"]

    out = []
    out.append(("own", {f: fill(all_of(f)) for f in fields}))
    out.append(("near", {f: fill([x[:-1] + " " for x in all_of(f) if len(x) > 1]) for f in fields}))
    shaped = {}
    for f in fields:
        d = lits.get(f) or {"any": [], "start": [], "end": []}
        head = d["start"][0] if d["start"] else ""
        tail = d["end"][0] if d["end"] else ""
        shaped[f] = head + fill(all_of(f), MAX - len(head) - len(tail)) + tail
    out.append(("shaped", shaped))
    every = {f: fill(sum((all_of(g) for g in fields), []) or ["x"]) for f in BASE_FIELDS}
    every.update(shaped)
    out.append(("all-max", every))
    nonascii = {}
    for f in fields:
        parts = []
        for i, x in enumerate(all_of(f)):
            parts += [x, SPECIAL[i % len(SPECIAL)]]
        nonascii[f] = fill(parts)
    out.append(("non-ascii", nonascii))
    return out


def global_events(rules) -> list[tuple[str, dict]]:
    every = []
    for r in rules:
        for d in rule_literals(r).values():
            every += d["any"] + d["start"] + d["end"]
    near = [x[:-1] + " " for x in every if len(x) > 1]
    mixed = []
    for i, x in enumerate(every):
        mixed += [x, SPECIAL[i % len(SPECIAL)]]
    return [
        ("set: all literals, every field", {f: fill(every) for f in BASE_FIELDS}),
        ("set: near misses, every field", {f: fill(near) for f in BASE_FIELDS}),
        ("set: 'a' * 32767, every field", {f: "a" * MAX for f in BASE_FIELDS}),
        ("set: non-ASCII mix, every field", {f: fill(mixed) for f in BASE_FIELDS}),
        ("set: all literals, CommandLine", {"Image": "C:\\Windows\\System32\\cmd.exe",
                                           "CommandLine": fill(every)}),
    ]


CLOCK = time.perf_counter


def time_event(matcher, event, repeat: int) -> float:
    best = None
    for _ in range(repeat):
        t0 = CLOCK()
        matcher.match(event)
        dt = CLOCK() - t0
        best = dt if best is None else min(best, dt)
    return best


def baseline(matcher) -> float | None:
    """Mean seconds per ordinary event (the SigmaHQ regression events), same run."""
    import sensor

    files = sorted(REGRESSION.rglob("*.evtx"))
    if not files:
        return None
    events = list(sensor.read_events(files))
    if not events:
        return None
    best = None
    for _ in range(5):
        t0 = CLOCK()
        for ev in events:
            matcher.match(ev)
        dt = (CLOCK() - t0) / len(events)
        best = dt if best is None else min(best, dt)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Worst event time per rule and for the whole set.")
    ap.add_argument("--engine", default=None, help="compiled (default when built) or reference")
    ap.add_argument("--stride", type=int, default=1, help="aim at every N-th rule only")
    ap.add_argument("--repeat", type=int, default=3, help="timings per event (best kept)")
    ap.add_argument("--top", type=int, default=15, help="rules listed in the table")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this thread's CPU time (steadier on a shared machine)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter

    import sensor
    from sensor.events import ProcessEvent

    missing = [str(d) for d in RULE_DIRS if not d.is_dir()]
    if missing:
        print(f"rule folders not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    rules, report = sensor.load_rules(RULE_DIRS, builtin=True)
    m = sensor.create_matcher(rules, args.engine)
    base = baseline(m)

    per_rule = []
    t_start = time.perf_counter()
    for i, rule in enumerate(rules):
        if i % args.stride:
            continue
        worst = (0.0, "")
        for name, fields in rule_events(rule):
            dt = time_event(m, ProcessEvent(fields), args.repeat)
            if dt > worst[0]:
                worst = (dt, name)
        per_rule.append({"rule": rule.id, "title": rule.title, "worst_ms": worst[0] * 1e3,
                         "variant": worst[1]})
    sets = []
    for name, fields in global_events(rules):
        sets.append({"event": name, "ms": time_event(m, ProcessEvent(fields), args.repeat) * 1e3})
    elapsed = time.perf_counter() - t_start
    per_rule.sort(key=lambda r: -r["worst_ms"])
    worst_rule = per_rule[0] if per_rule else None
    worst_set = max(sets, key=lambda s: s["ms"])
    overall = max([worst_set["ms"]] + [r["worst_ms"] for r in per_rule])
    summary = {
        "engine": m.engine, "clock": args.clock, "rules": len(rules), "rules_aimed_at": len(per_rule),
        "baseline_us_per_event": None if base is None else base * 1e6,
        "worst_event_ms": overall,
        "median_rule_worst_ms": statistics.median(r["worst_ms"] for r in per_rule) if per_rule else None,
        "seconds": elapsed,
    }
    if args.json:
        print(json.dumps({"summary": summary, "sets": sets, "rules": per_rule}))
        return 0
    print(f"engine {m.engine}: {len(rules)} rules loaded, {len(per_rule)} aimed at, "
          f"fields up to {MAX:,} characters, best of {args.repeat} per event, {args.clock} time")
    if base is not None:
        print(f"baseline (same run): {base * 1e6:.1f} us per ordinary event (SigmaHQ regression events)")
    print(f"\n{'whole-set event':40} {'ms':>9} {'x baseline':>11}")
    for s in sets:
        ratio = f"{s['ms'] / (base * 1e3):11.0f}" if base else f"{'-':>11}"
        print(f"{s['event']:40} {s['ms']:9.3f} {ratio}")
    print(f"\n{'worst rules (event aimed at the rule)':60} {'variant':>10} {'ms':>9}")
    for r in per_rule[:args.top]:
        print(f"{r['title'][:60]:60} {r['variant']:>10} {r['worst_ms']:9.3f}")
    print(f"\nworst event overall: {overall:.3f} ms"
          + (f" ({overall / (base * 1e3):.0f}x the ordinary event)" if base else ""))
    if per_rule:
        print(f"median of the per-rule worst: {summary['median_rule_worst_ms']:.3f} ms; "
              f"bench took {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
