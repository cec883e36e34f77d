"""Load rules from Sigma YAML files, folders and rule packs into the IR."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Collection, Sequence

from .ir import Rule, RuleError
from .pack import PACK_SUFFIX, MAX_PACK_BYTES, decode_pack, is_pack, read_regular, write_pack
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

    def problems(self) -> list[str]:
        """What whoever runs the rules must see: rejections, and duplicate ids (rules that
        share an id give identical alert ids, so the spool would keep only one alert)."""
        out = [f"rule rejected: {r}" for r in self.rejected]
        out += [f"rule warning: {w}" for w in self.warnings if "duplicate rule id" in w.reason]
        return out


def _rule_files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(YAML_SUFFIXES + (PACK_SUFFIX,)):
                out.append(Path(root) / name)
    return out


def _load_pack(path: Path, report: LoadReport, trust, allow_backtracking: Collection[str]) -> None:
    """A pack, once its signature held (``signing.open_pack``: checked when ``trust`` has keys)."""
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
        rules = decode_pack(body, p)
    except RuleError as exc:
        report.rejected.append(Rejection(p, exc.line, exc.message))
        return
    kept = 0
    for r in rules:
        bad = backtracking_problem(r, allow_backtracking)
        if bad is not None:
            report.rejected.append(Rejection(p, None, f"{bad[1]} [rule {r.id}: {r.title}]"))
        else:
            report.rules.append(r)
            kept += 1
    report.packs.append({"path": p, "rules": kept, **sig.as_dict()})


def _load_file(path: Path, report: LoadReport, trust=None,
               allow_backtracking: Collection[str] = ()) -> None:
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
    res = load_sigma_file(p, allow_backtracking)
    report.rules.extend(res.rules)
    report.rejected.extend(Rejection(x.path, x.line, x.reason) for x in res.rejected)
    report.not_applicable.extend(Rejection(x.path, x.line, x.reason) for x in res.not_applicable)


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


def load_rules(paths: Sequence[str | os.PathLike], builtin: bool = True, trust=None,
               allow_backtracking: Collection[str] = ()) -> LoadReport:
    """Load rule files, folders (.yml/.yaml/.pack, recursively) and packs; seed rule first.

    ``trust`` (``signing.Trust``): when it holds keys, only packs signed with one of them load.
    A rule with a regex that needs backtracking (backreference, lookaround...) is rejected
    unless its id is in ``allow_backtracking``; such a regex then runs on the step-budgeted
    engine (docs/matcher.md)."""
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
                _load_file(f, report, trust, allow_backtracking)
        elif path.exists():
            _load_file(path, report, trust, allow_backtracking)
        else:
            report.rejected.append(Rejection(str(path), None, "no such file or folder"))
    report.warnings.extend(rule_warnings(report.rules))
    report.seconds = time.perf_counter() - t0
    return report


def compile_paths(paths: Sequence[str | os.PathLike], output: str | os.PathLike,
                  allow_backtracking: Collection[str] = ()) -> tuple[LoadReport, int]:
    """Load ``paths`` (no built-in rules) and write them as a pack; returns (LoadReport, size).
    (A pack does not carry the permission: whoever loads it allows backtracking again.)"""
    report = load_rules(paths, builtin=False, allow_backtracking=allow_backtracking)
    size = write_pack(report.rules, output, [str(p) for p in paths])
    return report, size
