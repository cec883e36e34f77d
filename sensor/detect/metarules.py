"""Sigma meta rules as data: correlation rules and filters (Sigma specification 2.1).

A :class:`Correlation` or :class:`Filter` is what a Sigma correlation or filter document becomes
(``sensor.detect.sigma`` parses the YAML); both are plain JSON in a rule pack, and both are
checked again when a pack is read.  After every file of a rule set has loaded,
:func:`resolve` applies the filters to the rules they name and resolves every
correlation's ``rules:`` references (by id or by name, across files), refusing cycles,
ambiguous names and references to rules that did not load.  The streaming evaluation lives in
``sensor.detect.correlate``.  Semantics and the reasons behind every choice: docs/sigma.md.
"""
from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field as dc_field
from typing import Any, Iterable, Sequence

from .ir import Predicate, Rule, RuleError, check_condition, check_rule_size

# Correlation types: the specification's seven, and pySigma's value_median (an extension).
COUNT_TYPES = ("event_count", "value_count")
TEMPORAL_TYPES = ("temporal", "temporal_ordered")
METRIC_TYPES = ("value_sum", "value_avg", "value_percentile", "value_median")
TYPES = COUNT_TYPES + TEMPORAL_TYPES + METRIC_TYPES
VALUE_TYPES = ("value_count",) + METRIC_TYPES   # the types that need condition.field
OPS = ("gt", "gte", "lt", "lte", "eq", "neq")

# Timespan units: the specification's s/m/h/d and pySigma's w/M/y (M and y in mean
# Gregorian lengths, as pySigma has them).
UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2629746, "y": 31556952}
_TIMESPAN = re.compile(r"([0-9]{1,12})([smhdwMy])")

# At most this many ordered subsets are tried for a temporal_ordered "k of n" condition.
MAX_ORDER_SUBSETS = 256
MAX_REFERENCES = 64
MAX_GROUP_BY = 32


class MetaError(RuleError):
    """A correlation or filter that cannot be used (carries file:line like RuleError)."""


def timespan_ms(spec: Any) -> int:
    """Milliseconds of a Sigma timespan (``90m``); MetaError when it is not one."""
    if not isinstance(spec, str) or not _TIMESPAN.fullmatch(spec):
        raise MetaError(f"timespan {spec!r} is not a number followed by one unit letter "
                        "(s, m, h, d; pySigma also reads w, M, y), e.g. '90m'")
    m = _TIMESPAN.fullmatch(spec)
    n = int(m.group(1))
    if n <= 0:
        raise MetaError(f"timespan {spec!r} must be longer than zero")
    return n * UNITS_S[m.group(2)] * 1000


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, bool):
        raise MetaError(f"{what} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        n = value
    elif isinstance(value, str):
        try:
            n = float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
        except ValueError:
            raise MetaError(f"{what} must be a number, got {value!r}") from None
    else:
        raise MetaError(f"{what} must be a number, got {value!r}")
    if isinstance(n, float):
        if not math.isfinite(n):
            raise MetaError(f"{what} must be a finite number, got {value!r}")
        if n.is_integer():
            n = int(n)
    return n


def canonical_uuid(ref: str) -> str | None:
    """The canonical form of a UUID reference (any case, with or without hyphens, braces or
    ``urn:uuid:``), None when ``ref`` is not a UUID: pySigma's test for an id reference."""
    try:
        return str(uuid.UUID(ref))
    except (ValueError, TypeError, AttributeError):
        return None


@dataclass(slots=True)
class Correlation:
    """A Sigma correlation rule."""

    id: str
    title: str
    type: str
    rules: tuple[str, ...]
    timespan: str
    group_by: tuple[str, ...] = ()
    condition: tuple[tuple[str, Any], ...] = ()   # (op, threshold) pairs, all must hold
    field: str | None = None                      # condition.field (value_* types)
    percentile: float | None = None               # condition.percentile (value_percentile)
    aliases: dict = dc_field(default_factory=dict)  # alias -> {rule reference -> field}
    generate: bool = False
    name: str | None = None
    level: str = "medium"
    description: str = ""
    tags: tuple[str, ...] = ()
    author: str = ""
    references: tuple[str, ...] = ()
    falsepositives: tuple[str, ...] = ()
    source: str = ""
    line: int | None = None
    origin: str = "sigma"
    meta: dict = dc_field(default_factory=dict)
    # Set by resolve(): the Rule or Correlation each of ``rules`` names (not serialised).
    targets: tuple = ()

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Validate (raises MetaError); also used on what a pack holds."""
        if self.type not in TYPES:
            raise MetaError(f"correlation type {self.type!r} is not one of {', '.join(TYPES)}")
        if not self.rules:
            raise MetaError("correlation rules: needs at least one rule reference")
        if len(self.rules) > MAX_REFERENCES:
            raise MetaError(f"correlation rules: at most {MAX_REFERENCES} references")
        if not all(isinstance(r, str) and r for r in self.rules):
            raise MetaError("correlation rules: references must be rule ids or names")
        dup = sorted({r for r in self.rules if self.rules.count(r) > 1})
        if dup:
            raise MetaError("correlation rules: listed twice: " + ", ".join(map(repr, dup)))
        timespan_ms(self.timespan)
        if not all(isinstance(g, str) and g for g in self.group_by):
            raise MetaError("correlation group-by: needs field names")
        if len(self.group_by) > MAX_GROUP_BY:
            raise MetaError(f"correlation group-by: at most {MAX_GROUP_BY} fields")
        for op, value in self.condition:
            if op not in OPS:
                raise MetaError(f"correlation condition: unknown operator {op!r} "
                                f"(one of {', '.join(OPS)})")
            _number(value, f"condition {op}")
        if not self.condition and self.type not in TEMPORAL_TYPES:
            raise MetaError(f"a {self.type} correlation needs a condition "
                            f"({', '.join(OPS)}: <number>)")
        if self.type == "temporal_ordered" and len(self.condition) > 1:
            raise MetaError("a temporal_ordered correlation takes one condition operator "
                            "(a range is not defined for the order of events)")
        if self.type in VALUE_TYPES and not self.field:
            raise MetaError(f"a {self.type} correlation needs condition.field")
        if self.type not in VALUE_TYPES and self.field:
            raise MetaError(f"condition.field is for the value_* types, not {self.type}")
        if self.type == "value_percentile":
            if self.percentile is None or not 0 <= self.percentile <= 100:
                raise MetaError("a value_percentile correlation needs condition.percentile "
                                "between 0 and 100 (the specification names no key for it; "
                                "pySigma and its backends read condition.percentile)")
        elif self.percentile is not None:
            raise MetaError("condition.percentile is for value_percentile only")
        if self.type == "temporal_ordered":
            op, k = self.effective_condition()[0]
            if op in ("gt", "gte"):
                need = max(0, math.floor(k) + 1 if op == "gt" else math.ceil(k))
                if need <= len(self.rules) and math.comb(len(self.rules), need) > MAX_ORDER_SUBSETS:
                    raise MetaError(f"temporal_ordered: {need} of {len(self.rules)} rules gives "
                                    f"{math.comb(len(self.rules), need)} orders to check "
                                    f"(at most {MAX_ORDER_SUBSETS})")
        if not isinstance(self.aliases, dict):
            raise MetaError("correlation aliases: must map alias names to {rule: field}")
        for alias, mapping in self.aliases.items():
            if not isinstance(alias, str) or not isinstance(mapping, dict) or not mapping or \
                    not all(isinstance(k, str) and isinstance(v, str) and v
                            for k, v in mapping.items()):
                raise MetaError(f"correlation aliases: {alias!r} must map rule names to "
                                "field names")

    def effective_condition(self) -> tuple[tuple[str, Any], ...]:
        """The condition; a temporal correlation without one needs all its rules (``gte: n``)."""
        if not self.condition and self.type in TEMPORAL_TYPES:
            return (("gte", len(self.rules)),)
        return tuple((op, _number(v, op)) for op, v in self.condition)

    @property
    def span_ms(self) -> int:
        return timespan_ms(self.timespan)

    def to_json(self) -> dict:
        return {
            "id": self.id, "title": self.title, "type": self.type, "rules": list(self.rules),
            "timespan": self.timespan, "group_by": list(self.group_by),
            "condition": [[op, v] for op, v in self.condition], "field": self.field,
            "percentile": self.percentile, "aliases": self.aliases, "generate": self.generate,
            "name": self.name, "level": self.level, "description": self.description,
            "tags": list(self.tags), "author": self.author, "references": list(self.references),
            "falsepositives": list(self.falsepositives), "source": self.source,
            "line": self.line, "origin": self.origin, "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Correlation":
        try:
            return cls(
                id=str(d["id"]), title=str(d["title"]), type=d["type"],
                rules=tuple(d["rules"]), timespan=d["timespan"],
                group_by=tuple(d.get("group_by") or ()),
                condition=tuple((str(op), v) for op, v in d.get("condition") or ()),
                field=d.get("field"), percentile=d.get("percentile"),
                aliases=dict(d.get("aliases") or {}), generate=bool(d.get("generate")),
                name=d.get("name"), level=d.get("level") or "medium",
                description=d.get("description") or "", tags=tuple(d.get("tags") or ()),
                author=d.get("author") or "", references=tuple(d.get("references") or ()),
                falsepositives=tuple(d.get("falsepositives") or ()),
                source=d.get("source") or "", line=d.get("line"), origin="pack",
                meta=dict(d.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, RuleError):
                raise
            raise MetaError(f"malformed correlation: {exc}") from None

    def fingerprint(self) -> str:
        """What the evaluation depends on (saved state is only reused for the same one)."""
        import hashlib
        import json
        keep = {k: v for k, v in self.to_json().items()
                if k in ("id", "type", "rules", "timespan", "group_by", "condition", "field",
                         "percentile", "aliases")}
        keep["targets"] = [getattr(t, "id", "") for t in self.targets]
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(slots=True)
class Filter:
    """A Sigma filter (meta-filter): a condition ANDed to the rules it names."""

    id: str
    title: str
    rules: tuple[str, ...] | None          # None: every rule of the filter's logsource
    logsource: dict
    predicates: tuple[Predicate, ...]
    condition: tuple
    description: str = ""
    source: str = ""
    line: int | None = None
    origin: str = "sigma"
    text: str = ""                         # the filter's condition as written

    def __post_init__(self) -> None:
        self.predicates = tuple(self.predicates)
        check_rule_size(self.predicates)     # a filter is bounded like a rule
        self.condition = check_condition(self.condition, len(self.predicates))
        if self.rules is not None and not all(isinstance(r, str) and r for r in self.rules):
            raise MetaError("filter rules: references must be rule ids or names")
        if not isinstance(self.logsource, dict) or not all(
                k in ("category", "product", "service") and isinstance(v, str)
                for k, v in self.logsource.items()):
            raise MetaError("filter logsource: category/product/service strings")

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title,
                "rules": None if self.rules is None else list(self.rules),
                "logsource": self.logsource, "predicates": [p.to_json() for p in self.predicates],
                "condition": self.condition, "description": self.description,
                "source": self.source, "line": self.line, "text": self.text}

    @classmethod
    def from_json(cls, d: dict) -> "Filter":
        try:
            rules = d.get("rules")
            return cls(id=str(d["id"]), title=str(d["title"]),
                       rules=None if rules is None else tuple(rules),
                       logsource=dict(d.get("logsource") or {}),
                       predicates=tuple(Predicate.from_json(p) for p in d["predicates"]),
                       condition=d["condition"], description=d.get("description") or "",
                       source=d.get("source") or "", line=d.get("line"), origin="pack",
                       text=d.get("text") or "")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, RuleError):
                raise
            raise MetaError(f"malformed filter: {exc}") from None


# ---------------------------------------------------------------------------------
# Filters on rules.

DEFAULT_LOGSOURCE = {"category": "process_creation", "product": "windows"}


def rule_logsource(rule: Rule) -> dict:
    """A rule's logsource (rules that are not Sigma YAML are process_creation/windows)."""
    ls = rule.meta.get("logsource")
    return ls if isinstance(ls, dict) else DEFAULT_LOGSOURCE


def logsource_covers(filter_ls: dict, rule_ls: dict) -> bool:
    """pySigma's reading: every attribute the filter sets equals the rule's (exactly)."""
    return all(rule_ls.get(k) == v for k, v in filter_ls.items() if v)


def _shift(cond: tuple, offset: int) -> tuple:
    kind = cond[0]
    if kind == "pred":
        return ("pred", cond[1] + offset)
    if kind in ("and", "or"):
        return (kind,) + tuple(_shift(c, offset) for c in cond[1:])
    if kind == "not":
        return ("not", _shift(cond[1], offset))
    return cond


def apply_filter(rule: Rule, flt: Filter) -> Rule:
    """``rule`` with ``(rule condition) and (filter condition)``, as pySigma applies filters."""
    n = len(rule.predicates)
    meta = dict(rule.meta)
    meta["filters"] = list(meta.get("filters") or ()) + [
        {"id": flt.id, "title": flt.title, "condition": flt.text, "source": flt.source}]
    return Rule(id=rule.id, title=rule.title, predicates=rule.predicates + flt.predicates,
                condition=("and", rule.condition, _shift(flt.condition, n)), level=rule.level,
                description=rule.description, tags=rule.tags, author=rule.author,
                references=rule.references, falsepositives=rule.falsepositives,
                source=rule.source, origin=rule.origin, meta=meta, select=rule.select)


# ---------------------------------------------------------------------------------
# References.

def rule_name(obj) -> str | None:
    if isinstance(obj, Correlation):
        return obj.name
    name = obj.meta.get("name") if isinstance(getattr(obj, "meta", None), dict) else None
    return name if isinstance(name, str) and name else None


class RefIndex:
    """Looks up ``rules:`` references as pySigma does: a UUID reference names an id (any
    spelling of the UUID), anything else a ``name``.  A reference that is neither a UUID nor a
    name may also name a non-UUID id exactly (the built-in rule's ``seed-...``)."""

    def __init__(self) -> None:
        self.ids: dict[str, list] = {}
        self.names: dict[str, list] = {}
        self.raw_ids: dict[str, list] = {}

    def add(self, obj, ident: str | None, name: str | None) -> None:
        if ident:
            u = canonical_uuid(ident)
            if u is not None:
                self.ids.setdefault(u, []).append(obj)
            else:
                self.raw_ids.setdefault(ident, []).append(obj)
        if name:
            self.names.setdefault(name, []).append(obj)

    def lookup(self, ref: str) -> list:
        u = canonical_uuid(ref)
        if u is not None:
            return self.ids.get(u, [])
        return self.names.get(ref) or self.raw_ids.get(ref, [])


@dataclass
class Unusable:
    """A rule that could not be used, kept so references to it explain themselves."""

    id: str | None
    name: str | None
    why: str                 # "rejected" or "not applicable"
    where: str


@dataclass
class Resolution:
    rules: list[Rule]
    correlations: list[Correlation]
    rejected: list[tuple[Any, str]] = dc_field(default_factory=list)       # (obj, reason)
    not_applicable: list[tuple[Any, str]] = dc_field(default_factory=list)
    warnings: list[tuple[Any, str]] = dc_field(default_factory=list)


def _describe(obj) -> str:
    if isinstance(obj, Unusable):
        return f"{obj.id or obj.name} ({obj.where})"
    kind = "correlation" if isinstance(obj, Correlation) else "rule"
    return f"{kind} {obj.id} ({obj.title})"


def resolve(rules: Sequence[Rule], correlations: Sequence[Correlation],
            filters: Sequence[Filter], unusable: Iterable[Unusable] = ()) -> Resolution:
    """Apply ``filters`` and resolve every correlation's references.

    Returns the effective rules (filtered), the usable correlations (with ``targets`` set),
    and the correlations that could not be used with the reason.
    """
    res = Resolution(rules=list(rules), correlations=[])
    # Filters, in load order, on the rules they name (never on correlations).
    rule_index = RefIndex()
    for r in res.rules:
        rule_index.add(r, r.id, rule_name(r))
    for flt in filters:
        targets: set[int] | None = None
        if flt.rules is not None:
            targets = set()
            for ref in flt.rules:
                hits = rule_index.lookup(ref)
                if not hits:
                    res.warnings.append((flt, f"filter rules: {ref!r} names no loaded rule "
                                              "(ignored, as pySigma does)"))
                targets.update(id(h) for h in hits)
        applied = 0
        for i, r in enumerate(res.rules):
            if targets is not None and id(rules[i]) not in targets:
                continue
            if not logsource_covers(flt.logsource, rule_logsource(r)):
                if targets is not None:
                    res.warnings.append((flt, f"filter does not apply to rule {r.id}: its "
                                              f"logsource {flt.logsource} does not cover the "
                                              f"rule's {rule_logsource(r)}"))
                continue
            try:
                res.rules[i] = apply_filter(r, flt)
            except RuleError as exc:   # the rule with the filter is past a rule bound
                res.rejected.append((flt, f"filter not applied to rule {r.id} ({r.title}): "
                                          f"{exc.message}; the rule runs without it"))
                continue
            applied += 1
        if not applied:
            res.warnings.append((flt, "filter applies to no loaded rule"))

    # Correlation references.
    index = RefIndex()
    for r in res.rules:
        index.add(r, r.id, rule_name(r))
    for c in correlations:
        index.add(c, c.id, c.name)
    for u in unusable:
        index.add(u, u.id, u.name)
    names_seen: dict[str, int] = {}
    for obj in list(res.rules) + list(correlations):
        n = rule_name(obj)
        if n:
            names_seen[n] = names_seen.get(n, 0) + 1
    bad: dict[int, tuple[str, str]] = {}   # id(corr) -> (kind, reason)
    targets_of: dict[int, tuple] = {}
    for c in correlations:
        found = []
        for ref in c.rules:
            hits = index.lookup(ref)
            if not hits:
                bad[id(c)] = ("rejected", f"rules: {ref!r} names no loaded rule or correlation "
                                          "(ids and names are looked up across all rule files)")
                break
            if len({id(h) for h in hits}) > 1:
                bad[id(c)] = ("rejected", f"rules: {ref!r} is ambiguous: "
                                          + ", ".join(_describe(h) for h in hits[:3])
                                          + " (names must be unique)")
                break
            hit = hits[0]
            if isinstance(hit, Unusable):
                kind = "not_applicable" if hit.why == "not applicable" else "rejected"
                bad[id(c)] = (kind, f"rules: {ref!r} names a rule that is {hit.why} "
                                    f"({hit.where})")
                break
            if hit is c:
                bad[id(c)] = ("rejected", f"rules: {ref!r} names the correlation itself")
                break
            found.append(hit)
        else:
            targets_of[id(c)] = tuple(found)
    for n, k in names_seen.items():
        if k > 1:
            res.warnings.append((None, f"name {n!r} is used by {k} rules or correlations "
                                       "(a correlation that references it is refused)"))
    # An unusable child makes its parents unusable; then what is left that cannot be put in
    # an order (children first) is on, or depends on, a cycle.  Both walks are iterative and
    # linear, whatever the depth of the chains.
    parents: dict[int, list[Correlation]] = {}
    for c in correlations:
        for t in targets_of.get(id(c), ()):
            if isinstance(t, Correlation):
                parents.setdefault(id(t), []).append(c)

    def spread(start: list[Correlation]) -> None:
        work = list(start)
        while work:
            t = work.pop()
            kind = bad[id(t)][0]
            for p in parents.get(id(t), ()):
                if id(p) not in bad:
                    bad[id(p)] = (kind, f"rules: references correlation {t.id} ({t.title}), "
                                        f"which is {'not applicable' if kind == 'not_applicable' else 'refused'}")
                    work.append(p)

    spread([c for c in correlations if id(c) in bad])
    pending = {id(c): sum(1 for t in targets_of[id(c)] if isinstance(t, Correlation))
               for c in correlations if id(c) not in bad}
    ready = [c for c in correlations if pending.get(id(c)) == 0]
    while ready:
        c = ready.pop()
        for p in parents.get(id(c), ()):
            if id(p) in pending:
                pending[id(p)] -= 1
                if pending[id(p)] == 0:
                    ready.append(p)
    cyclic = [c for c in correlations if pending.get(id(c), 0) > 0]
    for c in cyclic:
        bad[id(c)] = ("rejected", "rules: the correlation is part of, or depends on, a cycle "
                                  "of correlation references")
    for c in correlations:
        if id(c) in bad:
            kind, reason = bad[id(c)]
            (res.not_applicable if kind == "not_applicable" else res.rejected).append((c, reason))
        else:
            c.targets = targets_of[id(c)]
            res.correlations.append(c)
            unknown = [k for m in c.aliases.values() for k in m
                       if not any(k in (ref, rule_name(t), getattr(t, "id", None))
                                  for ref, t in zip(c.rules, c.targets))]
            for k in unknown:
                res.warnings.append((c, f"aliases: {k!r} is not one of the correlation's rules "
                                        "(ignored)"))
    return res


def silent_rules(correlations: Iterable[Correlation]) -> set[int]:
    """``id()`` of every rule or correlation that makes no alert of its own: each one a
    correlation references without ``generate: true`` (pySigma: any such reference silences)."""
    out: set[int] = set()
    for c in correlations:
        if not c.generate:
            out.update(id(t) for t in c.targets)
    return out
