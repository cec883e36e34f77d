"""``etw-sensor scan``: evaluate rules over recorded events (EVTX, JSON lines)."""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import IO, Sequence

import msgspec

from .._files import open_private
from ..detect.alerts import AlertFactory
from ..sources.base import ReadStats


def add_rule_options(p: argparse.ArgumentParser) -> None:
    """The rule-selection options of scan."""
    p.add_argument("--rules", action="append", default=[], metavar="PATH",
                   help="Sigma YAML file or folder, or compiled rule pack (repeatable)")
    p.add_argument("--no-builtin-rules", action="store_true",
                   help="do not load the built-in seed rule")
    add_rule_load_options(p)


def add_rule_load_options(p: argparse.ArgumentParser) -> None:
    """How rules are read, for every command that loads them (scan and the rules commands), as
    the config's rules.placeholders and rules.allow_backtracking."""
    p.add_argument("--placeholders", metavar="FILE",
                   help="values for |expand placeholders (YAML: name: value or [values])")
    p.add_argument("--allow-backtracking", action="append", default=[], metavar="RULE_ID",
                   help="let this rule's regexes that need backtracking (backreferences, "
                        "lookaround) run under a step budget instead of rejecting the rule "
                        "(repeatable)")


def load_ruleset(paths: Sequence[str], builtin: bool, err: IO[str], allow_backtracking=(),
                 placeholders=None, with_report: bool = False):
    """Load rules; return (rules, number of problems reported) (and the report when asked)."""
    from .. import load_rules

    rules, report = load_rules(paths, builtin=builtin, allow_backtracking=allow_backtracking,
                               placeholders=placeholders)
    problems = report.problems()
    for p in problems:
        print(f"etw-sensor: {p}", file=err)
    if report.not_applicable:
        print(f"etw-sensor: {len(report.not_applicable)} rule(s) not applicable to process "
              f"starts (see `etw-sensor rules validate`)", file=err)
    if with_report:
        return rules, len(problems), report
    return rules, len(problems)


def read_placeholders(path: str | None, err: IO[str]):
    """The placeholders file's values (None without one); prints the error and returns
    False when it cannot be read."""
    if not path:
        return None
    from ..detect.placeholders import PlaceholderError, load_placeholders
    try:
        return load_placeholders(path)
    except PlaceholderError as exc:
        print(f"etw-sensor: {exc}", file=err)
        return False


def register(sub) -> None:
    p = sub.add_parser("scan", help="evaluate rules over recorded events",
                       description="Read .evtx, .jsonl and .jsonl.gz files (or folders of them), "
                                   "evaluate the rules, write alerts as JSON lines.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    add_rule_options(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write alerts here instead of stdout")
    p.add_argument("--engine", choices=("compiled", "reference"), default=None,
                   help="matcher engine (default: compiled when built)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.add_argument("--lateness", type=float, default=600.0, metavar="SECONDS",
                   help="correlations: how far an event may come after a later one in the "
                        "files and still be counted (reorder buffer; default 600)")
    p.add_argument("--max-state", type=int, default=None, metavar="N",
                   help="correlations: entries kept per correlation (default 20000)")
    p.add_argument("--max-state-mb", type=float, default=None, metavar="MB",
                   help="correlations: memory kept per correlation, estimated (default 64)")
    p.set_defaults(func=run)


def run(args) -> int:
    err = sys.stderr
    from .. import create_matcher, read_events

    placeholders = read_placeholders(getattr(args, "placeholders", None), err)
    if placeholders is False:
        return 2
    rules, rule_errors, report = load_ruleset(args.rules, not args.no_builtin_rules, err,
                                              args.allow_backtracking, placeholders,
                                              with_report=True)
    if not rules:
        print("etw-sensor: no rules to evaluate", file=err)
        return 2
    lateness = getattr(args, "lateness", 600.0)
    if not lateness >= 0 or lateness > 86400 * 366:
        print("etw-sensor: --lateness must be between 0 and a year (seconds)", file=err)
        return 2
    try:
        matcher = create_matcher(rules, args.engine)
    except ValueError as exc:
        print(f"etw-sensor: {exc}", file=err)
        return 2
    corr = None
    if report.correlations:
        from ..detect.correlate import DEFAULT_MAX_STATE, DEFAULT_MAX_STATE_MB, CorrelationEngine, tune_gc
        corr = CorrelationEngine(rules, report.correlations, lateness_ms=int(lateness * 1000),
                                 max_state=getattr(args, "max_state", None) or DEFAULT_MAX_STATE,
                                 max_state_mb=getattr(args, "max_state_mb", None) or DEFAULT_MAX_STATE_MB)
        tune_gc()
    silent = corr.silent if corr is not None else frozenset()
    if args.output:
        try:
            out = open_private(args.output, "wb", make_parents=False)
        except OSError as exc:
            print(f"etw-sensor: cannot write {args.output}: {exc.strerror or exc}", file=err)
            return 2
    else:
        out = sys.stdout.buffer
    encode = msgspec.json.Encoder().encode
    make_alert = AlertFactory()
    stats = ReadStats()
    per_rule: Counter = Counter()
    t0 = time.perf_counter()

    def write_correlated(alerts) -> None:
        for a in alerts:
            per_rule[a["rule"]["id"]] += 1
            out.write(encode(a) + b"\n")

    write_error = None
    try:
        for event in read_events(args.paths, stats):
            pos = stats.position
            matched = matcher.match(event)
            for i in matched:
                if i in silent:   # a correlation's building block (generate: false)
                    continue
                rule = matcher.rules[i]
                per_rule[rule.id] += 1
                alert = make_alert(rule, event)
                if pos is not None:   # which file, and where in it, this alert came from
                    alert["input"] = {"file": pos[0], pos[1]: pos[2]}
                out.write(encode(alert) + b"\n")
            if corr is not None:
                write_correlated(corr.feed(event, matched))
        if corr is not None:
            write_correlated(corr.flush())
        out.flush()
    except BrokenPipeError:
        raise                      # the reader went away (`| head`): quiet, see cli.main
    except OSError as exc:         # a full disk, a closed output
        write_error = exc
    finally:
        if args.output:
            try:
                out.close()
            except OSError as exc:
                write_error = write_error or exc
    if write_error is not None:
        print(f"etw-sensor: cannot write {args.output or 'the output'}: "
              f"{write_error.strerror or write_error}", file=err)
        return 1
    elapsed = time.perf_counter() - t0
    for e in stats.errors:
        print(f"etw-sensor: {e}", file=err)
    if stats.error_count > len(stats.errors):
        print(f"etw-sensor: {stats.error_count - len(stats.errors)} more input error(s) not listed", file=err)
    rate = stats.events / elapsed if elapsed > 0 else 0.0
    print(f"scan: {stats.files} file(s), {stats.records} record(s), {stats.events} process "
          f"start(s), {stats.skipped} skipped (not process starts), {stats.error_count} input "
          f"error(s); {len(rules)} rule(s) [{getattr(matcher, 'engine', '?')}]; "
          f"{sum(per_rule.values())} alert(s); {rate:,.0f} events/s", file=err)
    if corr is not None:
        cs = corr.stats()
        print(f"correlations: {cs['correlations']} rule(s), {cs['alerts']} alert(s), "
              f"{cs['events_correlated']} event(s) correlated, {cs['late_events']} late "
              f"(more than {lateness:g} s behind a later event; not correlated), "
              f"{cs['no_event_time']} without an event time, {cs['evicted']} evicted "
              f"(over --max-state or --max-state-mb)", file=err)
        if cs["late_events"]:
            print("etw-sensor: some events came too late to be correlated: give the files in "
                  "time order or raise --lateness", file=err)
    if not args.quiet:
        titles = {r.id: r.title for r in rules}
        titles.update((c.id, c.title) for c in report.correlations)
        for rid, n in per_rule.most_common():
            print(f"  {n:6d}  {titles.get(rid, rid)} [{rid}]", file=err)
    return 1 if (stats.error_count or rule_errors) else 0
