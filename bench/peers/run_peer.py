"""Time one peer Sigma evaluator; runs inside that peer's own venv (bench/peers/setup.sh).

Reads events (a JSON list of flat string dicts) and Sigma YAML files; prints one
JSON object: engine, rules_loaded, events, ns_per_event, rss_added_mb, errors.
Only the standard library and the peer package are imported.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_azuma(paths):
    import azuma

    rules, errors = [], Counter()
    for p in paths:
        try:
            rules.append(azuma.Rule.model_validate_file(p))
        except Exception as exc:  # a peer's failure to load a rule is data, not a crash
            errors[type(exc).__name__] += 1
    return [r.match for r in rules], errors


def load_srm(paths):
    from sigma.rule import SigmaRule
    from sigma_rule_matcher import RuleMatcher

    rules, errors = [], Counter()
    for p in paths:
        try:
            with open(p, encoding="utf-8") as fh:
                m = RuleMatcher(SigmaRule.from_yaml(fh.read()))
            rules.append(m.match)
        except Exception as exc:
            errors[type(exc).__name__] += 1
    return rules, errors


def run_sqlite(paths, events, min_seconds):
    """pySigma's SQLite backend, Zircolite style: one SQL query per rule over a table."""
    import sqlite3

    from sigma.backends.sqlite import sqliteBackend
    from sigma.collection import SigmaCollection

    before = rss_mb()
    backend = sqliteBackend()
    queries, errors = [], Counter()
    for p in paths:
        try:
            with open(p, encoding="utf-8") as fh:
                queries.extend(backend.convert(SigmaCollection.from_yaml(fh.read())))
        except Exception as exc:
            errors[type(exc).__name__] += 1
    rss = rss_mb() - before
    # table columns: every event key plus every column a query names (SQLite column
    # names are case-insensitive, so keep one spelling per name)
    names = {}
    for ev in events:
        for k in ev:
            names.setdefault(k.lower(), k)
    for q in queries:
        bare = re.sub(r"'(?:[^']|'')*'", "''", q)
        for c in re.findall(r"([A-Za-z_][A-Za-z0-9_.]*)\s*(?:LIKE|=|<>|!=|<=|>=|<|>|REGEXP|GLOB|IS)\b", bare):
            if c.upper() not in {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "COALESCE"}:
                names.setdefault(c.lower(), c)
    cols = sorted(names.values())
    db = sqlite3.connect(":memory:")
    db.create_function("REGEXP", 2, lambda p, s: s is not None and re.search(p, s) is not None,
                       deterministic=True)
    db.execute("CREATE TABLE logs (%s)" % ", ".join(f'"{c}" TEXT COLLATE NOCASE' for c in cols))
    lowered = [{k.lower(): v for k, v in ev.items()} for ev in events]
    db.executemany("INSERT INTO logs (%s) VALUES (%s)" % (", ".join(f'"{c}"' for c in cols),
                                                         ", ".join("?" * len(cols))),
                   [[ev.get(c.lower()) for c in cols] for ev in lowered])
    ok = []
    for q in queries:
        try:
            db.execute(q).fetchall()
            ok.append(q)
        except sqlite3.Error:
            errors["sqlite3.Error"] += 1
    best = None
    t_end = time.perf_counter() + min_seconds
    while True:
        t0 = time.perf_counter()
        for q in ok:
            db.execute(q).fetchall()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        if time.perf_counter() >= t_end:
            break
    return len(ok), best, rss, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["azuma", "sigma-rule-matcher", "sqlite"])
    ap.add_argument("events", help="JSON list of flat event dicts")
    ap.add_argument("rules", nargs="+", help="Sigma YAML files")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    args = ap.parse_args(argv)
    with open(args.events, encoding="utf-8") as fh:
        events = json.load(fh)
    if args.engine == "sqlite":
        loaded, best, rss, errors = run_sqlite(args.rules, events, args.min_seconds)
    else:
        before = rss_mb()
        fns, errors = (load_azuma if args.engine == "azuma" else load_srm)(args.rules)
        rss = rss_mb() - before
        loaded = len(fns)
        best = None
        t_end = time.perf_counter() + args.min_seconds
        while True:
            t0 = time.perf_counter()
            for ev in events:
                for fn in fns:
                    try:
                        fn(ev)
                    except Exception:
                        pass
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
            if time.perf_counter() >= t_end:
                break
    json.dump({"engine": args.engine, "rules_loaded": loaded, "events": len(events),
               "ns_per_event": best / max(len(events), 1) * 1e9, "rss_added_mb": rss,
               "errors": dict(errors.most_common(5))}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
