"""``etw-sensor rules list|validate|compile|doctor``: inspect, check and pack rule sets."""
from __future__ import annotations

import collections
import sys
from typing import Sequence, TextIO

from ..detect.loader import LoadReport, load_rules


def _rss_mib() -> float | None:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # psutil missing or no permission: memory is simply not shown
        return None


def _measured_load(paths: Sequence[str], builtin: bool,
                   allow_backtracking=(),
                   placeholders=None) -> tuple[LoadReport, float | None, float | None]:
    before = _rss_mib()
    report = load_rules(paths, builtin=builtin, allow_backtracking=allow_backtracking,
                        placeholders=placeholders)
    after = _rss_mib()
    return report, before, after


def _placeholders(args):
    """The --placeholders file's values; None without one; False after printing an error."""
    from .scan import read_placeholders
    return read_placeholders(getattr(args, "placeholders", None), sys.stderr)


def _memory_line(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "memory: not measured (psutil unavailable)"
    return f"memory: RSS {after:.1f} MiB after loading (+{after - before:.1f} MiB)"


def _group_warnings(report: LoadReport) -> list[tuple[str, int]]:
    # "<message> [rule <id>: <title>]" → count per message.
    counts: collections.Counter = collections.Counter()
    for w in report.warnings:
        counts[w.reason.split(" [rule ", 1)[0]] += 1
    return counts.most_common()


def print_report(report: LoadReport, out: TextIO, before=None, after=None,
                 verbose: bool = False, show_unsupported: bool = False) -> None:
    """The human-readable load report."""
    sigma_rules = sum(1 for r in report.rules if r.origin != "builtin")
    total = sigma_rules + len(report.rejected) + len(report.not_applicable)
    print(f"files: {report.files}", file=out)
    print(f"rules: {total} seen, {sigma_rules} loaded, {len(report.rejected)} rejected, "
          f"{len(report.not_applicable)} not applicable"
          + (f" (+{len(report.rules) - sigma_rules} built-in)"
             if len(report.rules) != sigma_rules else ""), file=out)
    applicable = sigma_rules + len(report.rejected)
    if applicable:
        print(f"applicable rules loaded: {100.0 * sigma_rules / applicable:.2f} %", file=out)
    corr_bad = sum(1 for r in report.rejected + report.not_applicable if "[correlation " in r.reason)
    if report.correlations or report.filters or corr_bad:
        print(f"correlations: {len(report.correlations)} loaded; filters: "
              f"{len(report.filters)} loaded", file=out)
    print(f"load time: {report.seconds:.3f} s", file=out)
    print(_memory_line(before, after), file=out)
    _print_regex_engines(report, out, verbose)
    if report.rejected:
        print(f"\nrejected ({len(report.rejected)}):", file=out)
        for r in report.rejected:
            print(f"  {r}", file=out)
    if report.not_applicable:
        print(f"\nnot applicable ({len(report.not_applicable)}):", file=out)
        if verbose:
            for r in report.not_applicable:
                print(f"  {r}", file=out)
        else:
            reasons = collections.Counter(r.reason for r in report.not_applicable)
            for reason, n in reasons.most_common():
                print(f"  {n:5d} x {reason}", file=out)
    if show_unsupported:
        from ..detect.loader import unsupported_counts
        print("\nunsupported constructs (rules that use them are rejected):", file=out)
        for name, n in unsupported_counts(report):
            print(f"  {n:5d} x {name}", file=out)
    if report.warnings:
        print(f"\nwarnings ({len(report.warnings)}):", file=out)
        if verbose:
            for r in report.warnings:
                print(f"  {r}", file=out)
        else:
            for msg, n in _group_warnings(report):
                print(f"  {n:5d} x {msg}", file=out)
            print("  (--verbose lists them one by one)", file=out)


def _print_regex_engines(report: LoadReport, out: TextIO, verbose: bool) -> None:
    """Which engine runs each loaded rule's regexes (RE2: linear time; backtracking: opted in,
    under a step budget)."""
    from ..detect._matcher_py import regex_engines

    per_rule = regex_engines(report.rules)
    if not per_rule:
        print("regex engines: no loaded rule has a regular expression", file=out)
        return
    engines: collections.Counter = collections.Counter()
    for entries in per_rule.values():
        engines["backtrack" if any(e[1] != "re2" for e in entries) else "re2"] += 1
    print(f"regex engines: {len(per_rule)} rules with regular expressions: "
          f"{engines['re2']} on RE2 (linear time), "
          f"{engines['backtrack']} on the step-budgeted backtracking engine (allowed per rule)",
          file=out)
    for i, entries in sorted(per_rule.items()):
        rule = report.rules[i]
        slow = [e for e in entries if e[1] != "re2"]
        if slow or verbose:
            for pattern, engine, reason in entries:
                print(f"  {engine:9} {rule.id} {rule.source}: {pattern!r}"
                      + (f" ({reason})" if reason else ""), file=out)


def _cmd_list(args) -> int:
    from ..detect.metarules import silent_rules

    placeholders = _placeholders(args)
    if placeholders is False:
        return 2
    report = load_rules(list(args.paths) + list(args.rules or []), builtin=not args.no_builtin_rules,
                        allow_backtracking=args.allow_backtracking, placeholders=placeholders)
    out = sys.stdout
    verbose = getattr(args, "verbose", False)
    quiet = silent_rules(report.correlations)
    print(f"{'ID':38} {'LEVEL':9} {'TITLE':60} SOURCE", file=out)
    for r in report.rules:
        title = r.title if len(r.title) <= 60 else r.title[:57] + "..."
        print(f"{r.id:38} {r.level:9} {title:60} {r.source}", file=out)
        if verbose:
            _print_details(r, out)
            if id(r) in quiet:
                print("    alerts: none of its own (a correlation uses it; generate: false)",
                      file=out)
    for c in report.correlations:
        title = f"[{c.type}] {c.title}"
        title = title if len(title) <= 60 else title[:57] + "..."
        print(f"{c.id:38} {c.level:9} {title:60} {c.source}", file=out)
        if verbose:
            _print_correlation(c, out, id(c) in quiet)
    if verbose and report.filters:
        print("\nfilters:", file=out)
        for f in report.filters:
            targets = "any rule" if f.rules is None else ", ".join(f.rules)
            print(f"  {f.id} {f.title}: adds 'and ({f.text})' to {targets} "
                  f"(logsource {f.logsource}) [{f.source}]", file=out)
    print(f"{len(report.rules)} rules, {len(report.correlations)} correlations, "
          f"{len(report.filters)} filters", file=sys.stderr)
    for r in report.rejected:
        print(f"rejected: {r}", file=sys.stderr)
    return 1 if report.rejected else 0


def _print_correlation(c, out: TextIO, silent: bool) -> None:
    """A correlation's definition, indented under its line."""
    def line(label, value):
        if value not in (None, "", [], {}):
            print(f"    {label}: {value}", file=out)
    line("rules", ", ".join(f"{ref} -> {getattr(t, 'id', '?')}"
                            for ref, t in zip(c.rules, c.targets)))
    line("group-by", ", ".join(c.group_by) or "(one group)")
    line("timespan", c.timespan)
    line("condition", ", ".join(f"{op} {v}" for op, v in c.effective_condition()))
    line("field", c.field)
    line("percentile", c.percentile)
    line("aliases", c.aliases)
    line("generate", "true" if c.generate else "false")
    if silent:
        line("alerts", "none of its own (another correlation uses it; generate: false)")
    line("description", " ".join(c.description.split()))


def _print_details(r, out: TextIO) -> None:
    """The metadata an alert carries for rule ``r``, indented under its line."""
    def line(label, value):
        if value:
            print(f"    {label}: {value}", file=out)
    mitre = r.meta.get("mitre") or {}
    line("title", r.title)
    line("description", " ".join(str(r.description).split()))
    line("MITRE ATT&CK", (f"{mitre.get('tactic')}: {mitre.get('technique')} ({mitre.get('technique_id')})"
                          if mitre else ", ".join(r.mitre_techniques)))
    line("severity", r.meta.get("severity") or r.level)
    line("author", r.author)
    for fp in r.falsepositives:
        line("known false positive", fp)
    for item in r.meta.get("impact") or ():
        line("impact", item)
    for step in r.meta.get("next_steps") or ():
        line("next step", step)
    for m in r.meta.get("mitigations") or ():
        line("mitigation", f"{m.get('id')} {m.get('name')}".strip())
    line("security standard", r.meta.get("security_standard"))
    for ref in r.references:
        line("reference", ref)
    for f in r.meta.get("filters") or ():
        line("filter", f"{f.get('title')} [{f.get('id')}]: and ({f.get('condition')})")


def _cmd_validate(args) -> int:
    placeholders = _placeholders(args)
    if placeholders is False:
        return 2
    report, before, after = _measured_load(args.paths, builtin=False,
                                           allow_backtracking=args.allow_backtracking,
                                           placeholders=placeholders)
    print_report(report, sys.stdout, before, after, verbose=args.verbose, show_unsupported=True)
    return 1 if report.rejected else 0


_SHORT = {"fires": "fires", "degraded": "degr.", "never": "NEVER"}


def print_doctor(report, out: TextIO, verbose: bool = False) -> None:
    """The doctor's verdicts as a table (rules with a not-"fires" verdict, all with ``verbose``)."""
    from ..detect.doctor import FIRES, profiles
    names = [p.name for p in profiles()]
    print("sources:", file=out)
    for p in profiles():
        print(f"  {p.name:28} {p.note}", file=out)
    print("\n" + " ".join(f"{n[:14]:>14}" for n in names) + "  RULE", file=out)
    for rule, verdicts in report.rules:
        if not verbose and all(v.verdict == FIRES for v in verdicts):
            continue
        cells = " ".join(f"{_SHORT[v.verdict]:>14}" for v in verdicts)
        title = rule.title if len(rule.title) <= 60 else rule.title[:57] + "..."
        print(f"{cells}  {rule.id} {title}", file=out)
        why = sorted({f for v in verdicts if v.verdict != FIRES for f in v.fields})
        if why:
            print(f"{'':{15 * len(names)}}  fields: {', '.join(why)}", file=out)
    totals = report.totals()
    print(f"\ntotals over {len(report.rules)} rules:", file=out)
    for name in names:
        t = totals[name]
        print(f"  {name:28} fires {t['fires']:5d}  degraded {t['degraded']:5d}  never {t['never']:5d}",
              file=out)


def _cmd_doctor(args) -> int:
    import json

    from ..detect.doctor import doctor
    placeholders = _placeholders(args)
    if placeholders is False:
        return 2
    report = load_rules(list(args.paths), builtin=not args.no_builtin_rules,
                        allow_backtracking=args.allow_backtracking, placeholders=placeholders)
    result = doctor(report.rules)
    if args.json:
        doc = result.to_json()
        doc["rejected"] = [str(r) for r in report.rejected]
        json.dump(doc, sys.stdout, indent=1)
        print(file=sys.stdout)
    else:
        print_doctor(result, sys.stdout, verbose=args.verbose)
    for r in report.rejected:
        print(f"rejected: {r}", file=sys.stderr)
    return 1 if report.rejected else 0


def write_pack_private(rules, output: str, sources: Sequence[str], correlations=(),
                       filters=()) -> int:
    """Write the pack atomically (temp file + rename), private (0600); returns its size."""
    from .._files import write_atomic_private
    from ..detect.pack import encode_pack
    data = encode_pack(rules, [str(p) for p in sources], correlations, filters)
    write_atomic_private(output, data)
    return len(data)


def run_compile(paths: Sequence[str], output: str, out: TextIO, allow_rejected: bool = False,
                allow_backtracking=(), placeholders=None) -> int:
    """Compile ``paths`` into the pack ``output`` and print the report.

    A rule that was rejected means the pack would silently lack it: no pack is written then,
    unless ``allow_rejected``. Exit 0 written, 1 rules rejected (written only if allowed),
    2 the pack cannot be written. The pack holds the rules as read (filters are kept apart
    and applied again when the pack loads), the usable correlations and the filters;
    placeholders are resolved now (a pack loads without pySigma).
    """
    before = _rss_mib()
    report = load_rules(paths, builtin=False, allow_backtracking=allow_backtracking,
                        placeholders=placeholders)
    print_report(report, out, before, _rss_mib())
    if report.rejected and not allow_rejected:
        print(f"\nno pack written: {len(report.rejected)} rule(s) or file(s) rejected (listed "
              f"above); fix them, or pass --allow-rejected to write a pack without them",
              file=sys.stderr)
        return 1
    if not report.source_rules and not report.correlations:
        print("\nno pack written: no rule loaded", file=sys.stderr)
        return 1
    try:
        size = write_pack_private(report.source_rules, output, paths,
                                  report.correlations, report.filters)
    except OSError as exc:
        print(f"error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"\nwrote {output}: {len(report.source_rules)} rules, {len(report.correlations)} "
          f"correlations, {len(report.filters)} filters, {size} bytes"
          + (f" (WITHOUT {len(report.rejected)} rejected)" if report.rejected else ""), file=out)
    return 1 if report.rejected else 0


def _cmd_compile(args) -> int:
    placeholders = _placeholders(args)
    if placeholders is False:
        return 2
    return run_compile(args.paths, args.output, sys.stdout, allow_rejected=args.allow_rejected,
                       allow_backtracking=args.allow_backtracking, placeholders=placeholders)


def _cmd_keygen(args) -> int:
    """Write a new Ed25519 key pair: PREFIX.key (0600, never overwritten) and PREFIX.pub."""
    import os

    from .._files import open_private
    from ..detect.signing import KeyError_, fingerprint, generate_key, parse_public_key
    try:
        private, public = generate_key(args.id)
    except KeyError_ as exc:
        print(f"etw-sensor: {exc}", file=sys.stderr)
        return 2
    key_path, pub_path = f"{args.output}.key", f"{args.output}.pub"
    for p in (key_path, pub_path):
        if os.path.lexists(p):
            print(f"etw-sensor: {p} exists: not overwritten (a key is not replaced by accident)",
                  file=sys.stderr)
            return 2
    try:
        with open_private(key_path, "xb") as fh:
            fh.write(private.encode("ascii"))
        with open(pub_path, "x", encoding="ascii") as fh:
            fh.write(public)
    except OSError as exc:
        print(f"etw-sensor: cannot write the key: {exc.strerror or exc}: {exc.filename or ''}",
              file=sys.stderr)
        return 1
    _kid, raw = parse_public_key(public)
    print(f"key id {args.id}\nprivate key {key_path} (keep it offline; 0600)\npublic key {pub_path} "
          f"(list it in [rules] trusted_keys)\nfingerprint sha256 {fingerprint(raw)}")
    return 0


def _cmd_sign(args) -> int:
    """Sign a pack in place (or to -o): its bytes, followed by the signature block."""
    import os

    from .._files import exposure
    from ..detect.ir import RuleError
    from ..detect.pack import decode_pack, is_pack
    from ..detect.signing import PRIVATE_TAG, KeyError_, open_pack, read_key_file, sign_pack
    try:
        why = exposure(args.key) if os.path.isfile(args.key) else None
    except OSError:
        why = None
    if why:
        print(f"etw-sensor: {args.key}: {why}: a private key must be readable by its owner only; "
              f"not used", file=sys.stderr)
        return 2
    try:
        key_id, raw = read_key_file(args.key, PRIVATE_TAG)
    except KeyError_ as exc:
        print(f"etw-sensor: {exc}", file=sys.stderr)
        return 2
    if not is_pack(args.pack):
        print(f"etw-sensor: {args.pack}: not a rule pack (etw-sensor rules compile makes one)",
              file=sys.stderr)
        return 2
    try:
        with open(args.pack, "rb") as fh:
            data = fh.read()
        body, _old = open_pack(data, args.pack, None)
        rules = decode_pack(body, args.pack)   # sign only a pack this sensor can load
    except OSError as exc:
        print(f"etw-sensor: cannot read {args.pack}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except RuleError as exc:
        print(f"etw-sensor: not signed: {exc}", file=sys.stderr)
        return 1
    out = args.output or args.pack
    try:
        write_bytes_private(sign_pack(body, key_id, raw), out)
    except OSError as exc:
        print(f"etw-sensor: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"signed {out}: {len(rules)} rules, key {key_id}")
    return 0


def write_bytes_private(data: bytes, output: str) -> None:
    """Write ``data`` atomically (temp file + rename), private (0600)."""
    from .._files import write_atomic_private
    write_atomic_private(output, data)


def register(subparsers) -> None:
    """Add ``rules`` and its sub-commands."""
    from .scan import add_rule_load_options
    p = subparsers.add_parser("rules", help="list, validate and compile detection rules",
                              description="List, validate and compile detection rules "
                                          "(Sigma YAML files/folders and rule packs).")
    sub = p.add_subparsers(dest="rules_command", metavar="ACTION")

    lp = sub.add_parser("list", help="show the loaded rules (id, level, title, source)")
    lp.add_argument("paths", nargs="*", metavar="PATH",
                    help="Sigma files/folders or rule packs (besides the built-in rule)")
    lp.add_argument("--rules", action="append", metavar="PATH",
                    help="the same, as an option (repeatable)")
    lp.add_argument("--no-builtin-rules", action="store_true",
                    help="leave out the built-in rule")
    lp.add_argument("-v", "--verbose", action="store_true",
                    help="also print each rule's metadata (description, MITRE, next steps...)")
    add_rule_load_options(lp)
    lp.set_defaults(func=_cmd_list)

    vp = sub.add_parser("validate", help="load rules and report what loaded and what did not "
                                         "(exit 1 if any rule was rejected)")
    vp.add_argument("paths", nargs="+", metavar="PATH")
    vp.add_argument("-v", "--verbose", action="store_true",
                    help="list every not-applicable rule and warning, and each rule's regex engine")
    add_rule_load_options(vp)
    vp.set_defaults(func=_cmd_validate)

    cp = sub.add_parser("compile", help="compile rules into a rule pack (loads without pySigma)")
    cp.add_argument("paths", nargs="+", metavar="PATH")
    cp.add_argument("-o", "--output", required=True, metavar="PACK")
    cp.add_argument("--allow-rejected", action="store_true",
                    help="write the pack even when rules were rejected (they are left out)")
    add_rule_load_options(cp)
    cp.set_defaults(func=_cmd_compile)

    kp = sub.add_parser("keygen", help="make an Ed25519 key pair for signing rule packs",
                        description="Write PREFIX.key (the private key, created 0600, never "
                                    "overwritten) and PREFIX.pub (list it in [rules] "
                                    "trusted_keys on the sensors).")
    kp.add_argument("--id", required=True, metavar="KEY_ID",
                    help="the key id packs signed with it carry (e.g. fleet-2025)")
    kp.add_argument("-o", "--output", required=True, metavar="PREFIX")
    kp.set_defaults(func=_cmd_keygen)

    sp = sub.add_parser("sign", help="sign a rule pack (Ed25519)",
                        description="Append a signature block to PACK (in place, or to -o). "
                                    "A private key other users can read is refused.")
    sp.add_argument("pack", metavar="PACK")
    sp.add_argument("--key", required=True, metavar="KEY", help="the private key file (rules keygen)")
    sp.add_argument("-o", "--output", metavar="FILE", help="write the signed pack here instead")
    sp.set_defaults(func=_cmd_sign)

    dp = sub.add_parser("doctor", help="for each rule and source: can it fire, only sometimes, "
                                       "or never (it names a field the source never fills)")
    dp.add_argument("paths", nargs="*", metavar="PATH",
                    help="Sigma files/folders or rule packs (besides the built-in rules)")
    dp.add_argument("--no-builtin-rules", action="store_true", help="leave out the built-in rules")
    dp.add_argument("--json", action="store_true", help="one JSON document: totals and every verdict")
    dp.add_argument("-v", "--verbose", action="store_true",
                    help="list every rule, also those that can fire on every source")
    add_rule_load_options(dp)
    dp.set_defaults(func=_cmd_doctor)

    def _usage(args) -> int:
        p.print_help(sys.stderr)
        return 2
    p.set_defaults(func=_usage)
