"""Two builds of the compiled matcher in one process, timed alternately on the same events.

On a shared machine a benchmark run minutes after another says little; this loads two
builds of ``sensor.detect._matcher`` (e.g. main's, copied aside, and this checkout's) into
one interpreter, checks that they give the same answers, and times them in alternating
rounds (best of 3 passes in CPU time per round) on the bench corpus and both halves of the
held-out set (bench/heldout.py).

    .venv/bin/python bench/matcher_ab.py old=/tmp/main_matcher.so,new=sensor/detect/_matcher.cpython-311-x86_64-linux-gnu.so
    .venv/bin/python bench/matcher_ab.py A=a.so,B=b.so --rulesets seed --rounds 6
    .venv/bin/python bench/matcher_ab.py A=a.so,B=b.so --batch   # and B's match_batch (B/batch)
    .venv/bin/python bench/matcher_ab.py A=a.so,B=b.so --rulesets all --adversarial

``--adversarial`` adds, per rule set, the whole-set events of bench/adversarial.py (every
rule's literals, their near misses, 'a' * 32,767 and a non-ASCII mix in every field, and
all literals in CommandLine alone), each its own row.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def load_build(path: str):
    """A build of the extension as its own module object (same name, another file)."""
    name = "sensor.detect._matcher"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


BATCH = 512   # the pipeline's batch size


def best_of(match, events, passes=3, batch=False) -> float:
    """Best of ``passes`` passes in CPU time, ns/event: ``match`` called per event, or (batch)
    ``match_batch`` called per BATCH events."""
    chunks = [events[k:k + BATCH] for k in range(0, len(events), BATCH)]
    best = None
    for _ in range(passes):
        t0 = time.thread_time()
        if batch:
            for c in chunks:
                match(c)
        else:
            for ev in events:
                match(ev)
        dt = time.thread_time() - t0
        best = dt if best is None else min(best, dt)
    return best / len(events) * 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Two matcher builds, alternately, same events.")
    ap.add_argument("builds", help="TAG=path.so,TAG=path.so")
    ap.add_argument("--rulesets", default="seed,sigmahq,all")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", action="store_true",
                    help="also time match_batch (batches of 512) of the builds that have it: TAG/batch")
    ap.add_argument("--adversarial", action="store_true",
                    help="also time the whole-set events of bench/adversarial.py, one row each")
    args = ap.parse_args(argv)
    import heldout
    import matcher as bm

    builds = []
    for item in args.builds.split(","):
        tag, _, path = item.partition("=")
        builds.append((tag, load_build(path)))
    look, measure = heldout.halves(heldout.load())
    sets = {"corpus": bm.load_events(bm.CORPUS), "look": look, "measure": measure}
    print(f"load before: {os.getloadavg()[0]:.2f}")
    for rs in args.rulesets.split(","):
        rules = bm.load_ruleset(rs)
        ms = [(tag, mod.Matcher(rules)) for tag, mod in builds]
        runs = [(tag, m.match, False) for tag, m in ms]
        if args.adversarial:
            import adversarial

            from sensor.events import ProcessEvent

            sets = {k: v for k, v in sets.items() if not k.startswith("adv:")}
            for k, (name, fields) in enumerate(adversarial.global_events(rules)):
                sets[f"adv:{k}"] = [ProcessEvent(fields)]
                print(f"adv:{k} = {name}")
        if args.batch:
            runs += [(tag + "/batch", m.match_batch, True) for tag, m in ms if hasattr(m, "match_batch")]
        for name, evs in sets.items():
            ref = [ms[0][1].match(e) for e in evs]
            for tag, m in ms[1:]:
                if [m.match(e) for e in evs] != ref:
                    print(f"{rs} {name}: {tag} answers differently from {ms[0][0]}")
                    return 1
            for tag, fn, batch in runs:
                if batch and [list(x) for x in fn(evs)] != ref:
                    print(f"{rs} {name}: {tag} answers differently from {ms[0][0]}")
                    return 1
        res: dict = {}
        for r in range(args.rounds):
            for name, evs in sets.items():
                for tag, fn, batch in (runs if r % 2 == 0 else runs[::-1]):
                    res.setdefault((name, tag), []).append(best_of(fn, evs, batch=batch))
        for name in sets:
            cols = "  ".join(f"{tag} {min(res[(name, tag)]):9,.0f} ns (rounds "
                             + "/".join(f"{x:,.0f}" for x in res[(name, tag)]) + ")" for tag, _, _ in runs)
            a = runs[0][0]
            ratio = "".join(f"  {a}/{t} {min(res[(name, a)]) / min(res[(name, t)]):.2f}"
                            for t, _, _ in runs[1:])
            print(f"{rs:8} {name:8} {cols}{ratio}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
