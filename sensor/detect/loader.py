"""Load rules from Sigma YAML files, folders and rule packs into the IR."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Callable, Collection, Sequence

from .ir import Rule, RuleError
from .pack import PACK_SUFFIX, MAX_PACK_BYTES, decode_pack_content, is_pack, read_regular, write_pack
from .regex import backtracking_problem

YAML_SUFFIXES = (".yml", ".yaml")


@dataclass
class Rejection:
    """A file or rule that was not loaded (or loaded with a caveat), and why."""

    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        loc = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{loc}: {self.reason}"


@dataclass
class LoadReport:
    """What ``load_rules`` loaded, rejected, found not applicable, and warned about."""

    rules: list[Rule] = dc_field(default_factory=list)
    rejected: list[Rejection] = dc_field(default_factory=list)
    not_applicable: list[Rejection] = dc_field(default_factory=list)
    warnings: list[Rejection] = dc_field(default_factory=list)
    files: int = 0
    seconds: float = 0.0
    # each pack loaded: {"path", "rules", "key_id", "verified", "signed_at", "sha256"}
    packs: list[dict] = dc_field(default_factory=list)
    correlations: list = dc_field(default_factory=list)   # usable, references resolved
    filters: list = dc_field(default_factory=list)        # applied to ``rules`` already
    source_rules: list = dc_field(default_factory=list)   # the rules as read, before filters
    unusable: list = dc_field(default_factory=list)       # refused rules (ids/names) for references

    def problems(self) -> list[str]:
        """What whoever runs the rules must see: rejections, and duplicate ids (rules that
        share an id give identical alert ids, so the spool would keep only one alert)."""
        out = [f"rule rejected: {r}" for r in self.rejected]
        out += [f"rule warning: {w}" for w in self.warnings if "duplicate rule id" in w.reason]
        return out


# Constructs of the Sigma 2.1 specification (and its drafts) this sensor does not evaluate,
# each with the text its rejection reason carries; `rules validate` lists them by name.
UNSUPPORTED = (
    ("rule collections (action: global / reset / repeat)", "collections (action"),
    ("string conditions of temporal correlations (Sigma 2.2 draft)", "string condition"),
    ("several fields in a correlation's condition.field", "a list of fields"),
    ("value_percentile without condition.percentile", "needs condition.percentile"),
    ("ranges in temporal_ordered conditions", "takes one condition operator"),
)


def unsupported_counts(report: "LoadReport") -> list[tuple[str, int]]:
    """Each unsupported construct and how many rejections it caused in ``report``."""
    return [(name, sum(1 for r in report.rejected if marker in r.reason))
            for name, marker in UNSUPPORTED]


def _rule_files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(YAML_SUFFIXES + (PACK_SUFFIX,)):
                out.append(Path(root) / name)
    return out


def _load_pack(path: Path, report: LoadReport, trust, allow_backtracking: Collection[str]) -> None:
    """A pack, once its signature held (``signing.open_pack``: checked when ``trust`` has keys).

    The signature covers the pack's exact bytes whatever its version, so a signed pack's
    correlations and filters are as trusted as its rules and load with them.  The regex
    policy holds for its rules (and filters, see ``_admit_filters``) as for YAML.
    """
    from .signing import open_pack
    p = str(path)
    try:
        try:
            data = read_regular(path, MAX_PACK_BYTES)
        except OSError as exc:
            raise RuleError(f"cannot read rule pack: {exc.strerror or exc}", p) from None
        if data is None:
            raise RuleError(f"rule pack is larger than {MAX_PACK_BYTES:,} bytes; refused", p)
        body, sig = open_pack(data, p, trust)
        content = decode_pack_content(body, p)
    except RuleError as exc:
        report.rejected.append(Rejection(p, exc.line, exc.message))
        return
    from .metarules import Unusable

    kept = 0
    for r in content.rules:
        bad = backtracking_problem(r, allow_backtracking)
        if bad is not None:
            report.rejected.append(Rejection(p, None, f"{bad[1]} [rule {r.id}: {r.title}]"))
            # a correlation naming it says the rule was rejected, not that it is unknown
            name = r.meta.get("name") if isinstance(r.meta, dict) else None
            report.unusable.append(Unusable(r.id, name if isinstance(name, str) else None,
                                            "rejected", p))
        else:
            report.rules.append(r)
            kept += 1
    report.correlations.extend(content.correlations)
    report.filters.extend(content.filters)
    report.packs.append({"path": p, "rules": kept,
                         "correlations": len(content.correlations),
                         "filters": len(content.filters), **sig.as_dict()})


def _load_file(path: Path, report: LoadReport, trust=None,
               allow_backtracking: Collection[str] = (), placeholders=None) -> None:
    p = str(path)
    report.files += 1
    name = path.name.lower()
    if name.endswith(PACK_SUFFIX) or (not name.endswith(YAML_SUFFIXES) and is_pack(path)):
        # (a .pack that is not one, or not a regular file, is refused by the reader with the reason)
        _load_pack(path, report, trust, allow_backtracking)
        return
    if not path.name.lower().endswith(YAML_SUFFIXES):
        report.rejected.append(Rejection(p, None, "neither Sigma YAML (.yml/.yaml) nor a rule pack"))
        return
    if trust:
        report.rejected.append(Rejection(p, None, "not a signed rule pack: [rules] trusted_keys is "
                                         "set, so only signed packs load (etw-sensor rules compile, "
                                         "then rules sign)"))
        return
    try:
        from .sigma import load_sigma_file
        import sigma.rule  # noqa: F401  (pySigma; a pack needs none of this)
    except ImportError:
        report.rejected.append(Rejection(p, None, "reading Sigma YAML needs pySigma "
                                         "(pip install 'etw-sensor[sigma]'); "
                                         "or compile the rules into a pack elsewhere"))
        return
    res = load_sigma_file(p, allow_backtracking, placeholders)
    report.rules.extend(res.rules)
    report.rejected.extend(Rejection(x.path, x.line, x.reason) for x in res.rejected)
    report.not_applicable.extend(Rejection(x.path, x.line, x.reason) for x in res.not_applicable)
    report.correlations.extend(res.correlations)
    report.filters.extend(res.filters)
    report.warnings.extend(Rejection(x.path, x.line, x.reason) for x in res.warnings)
    _note_unusable(report, res.rejected, "rejected")
    _note_unusable(report, res.not_applicable, "not applicable")


def _note_unusable(report: LoadReport, problems, why: str) -> None:
    from .metarules import Unusable

    for x in problems:
        if x.ident or x.name:
            where = f"{x.path}:{x.line}" if x.line is not None else x.path
            report.unusable.append(Unusable(x.ident, x.name, why, where))


def _admit_filters(report: LoadReport, allow_backtracking: Collection[str]) -> None:
    """Drop (and reject) the filters whose regexes need backtracking, unless allowed by the
    filter's id: a filter's selections run inside the rules it names, under the same policy."""
    kept = []
    for f in report.filters:
        bad = backtracking_problem(f, allow_backtracking)
        if bad is None:
            kept.append(f)
        else:
            report.rejected.append(Rejection(f.source or "<rules>", f.line,
                                             f"{bad[1]} [filter {f.id}: {f.title}]"))
    report.filters = kept


def resolve_meta(report: LoadReport) -> None:
    """Apply the filters and resolve the correlations of everything loaded (in place)."""
    from .metarules import resolve

    report.source_rules = list(report.rules)
    if not report.correlations and not report.filters:
        return
    res = resolve(report.rules, report.correlations, report.filters, report.unusable)
    report.rules = res.rules
    report.correlations = res.correlations

    def rej(obj, reason):
        return Rejection(getattr(obj, "source", "") or "<rules>", getattr(obj, "line", None),
                         reason + (f" [correlation {obj.id}: {obj.title}]"
                                   if hasattr(obj, "timespan") else ""))
    report.rejected.extend(rej(o, r) for o, r in res.rejected)
    report.not_applicable.extend(rej(o, r) for o, r in res.not_applicable)
    for obj, reason in res.warnings:
        if obj is None:
            report.warnings.append(Rejection("<rules>", None, reason))
        else:
            report.warnings.append(Rejection(obj.source or "<rules>", obj.line,
                                             f"{reason} [{obj.id}: {obj.title}]"))


def rule_warnings(rules: Sequence[Rule]) -> list[Rejection]:
    """Load-time caveats: fields a source never provides, duplicate rule ids."""
    from .sigma import field_warnings

    out = []
    seen: dict[str, str] = {}
    for r in rules:
        for msg in field_warnings(r):
            out.append(Rejection(r.source, None, f"{msg} [rule {r.id}: {r.title}]"))
        if r.id in seen:
            out.append(Rejection(r.source, None, f"duplicate rule id, also used by {seen[r.id]} [rule {r.id}: {r.title}]"))
        else:
            seen[r.id] = r.source
    return out


class LoadCancelled(Exception):
    """``load_rules`` was told to stop (``cancelled()`` became true) before it finished."""


def load_rules(paths: Sequence[str | os.PathLike], builtin: bool = True, trust=None,
               allow_backtracking: Collection[str] = (), placeholders=None,
               cancelled: Callable[[], bool] | None = None) -> LoadReport:
    """Load rule files, folders (.yml/.yaml/.pack, recursively) and packs; seed rule first.

    ``trust`` (``signing.Trust``): when it holds keys, only packs signed with one of them load
    (with their correlations and filters).
    A rule with a regex that needs backtracking (backreference, lookaround...) is rejected
    unless its id is in ``allow_backtracking``; such a regex then runs on the step-budgeted
    engine (docs/matcher.md).  The same holds for a filter, by the filter's id.
    Correlation and filter documents load with the rules: filters are applied to the rules
    they name and correlation references are resolved across every file (``report.rules``
    are the filtered rules, ``report.correlations`` the usable correlations).
    ``placeholders`` (name -> values) resolves ``|expand`` in YAML rules.
    ``cancelled`` is asked before each file; when it answers true the load raises
    :class:`LoadCancelled` (a stopping sensor does not finish loading a set it will not run).
    """
    allow_backtracking = frozenset(allow_backtracking)
    t0 = time.perf_counter()
    report = LoadReport()
    if builtin:
        from .seed import builtin_rules
        report.rules.extend(builtin_rules())
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = _rule_files(path)
            if not files:
                report.warnings.append(Rejection(str(path), None, "folder holds no rule files"))
            for f in files:
                if cancelled is not None and cancelled():
                    raise LoadCancelled(str(f))
                _load_file(f, report, trust, allow_backtracking, placeholders)
        elif path.exists():
            if cancelled is not None and cancelled():
                raise LoadCancelled(str(path))
            _load_file(path, report, trust, allow_backtracking, placeholders)
        else:
            report.rejected.append(Rejection(str(path), None, "no such file or folder"))
    _admit_filters(report, allow_backtracking)
    resolve_meta(report)
    report.warnings.extend(rule_warnings(report.rules))
    report.seconds = time.perf_counter() - t0
    return report


def compile_paths(paths: Sequence[str | os.PathLike], output: str | os.PathLike,
                  allow_backtracking: Collection[str] = (),
                  placeholders=None) -> tuple[LoadReport, int]:
    """Load ``paths`` (no built-in rules) and write them as a pack; returns (LoadReport, size).

    The pack holds the rules as read (filters are kept apart and applied again when the
    pack loads, so they also reach rules loaded beside it), the usable correlations and the
    filters; placeholders are resolved now (a pack loads without pySigma).
    (A pack does not carry the backtracking permission: whoever loads it allows it again.)
    """
    report = load_rules(paths, builtin=False, allow_backtracking=allow_backtracking,
                        placeholders=placeholders)
    size = write_pack(report.source_rules, output, [str(p) for p in paths],
                      correlations=report.correlations, filters=report.filters)
    return report, size
