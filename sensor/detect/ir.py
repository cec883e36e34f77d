"""The rule IR: predicates over event fields and a boolean condition over them.

Every rule source (the seed's criteria language, Sigma YAML, compiled rule packs)
produces this IR; both matchers evaluate it.  It is deliberately small so that the
compiled matcher can be proven equal to the reference one.

Semantics (the reference matcher, ``sensor.detect._matcher_py``, is the executable form):

* A predicate reads one field (``field``) or, when ``field`` is ``None``, every
  field of the event (a Sigma keyword search: true when any value satisfies it).
* Values are compared as strings: ``str`` as is, ``int`` in decimal, ``bool`` as
  ``true``/``false``.  A missing (``None``) value makes every op false except
  ``exists`` and ``null``, which test for it.
* Unless ``cased`` is set, comparison is case-insensitive: both sides are folded
  with ``str.lower()`` (full Unicode lower-casing, the same in both matchers).
* ``values`` is an OR: the predicate holds when any value does.
* Ops:
    ``eq``/``contains``/``startswith``/``endswith``  literal string tests;
    ``glob``       a whole-value wildcard match; ``*`` = any run of characters,
                   ``?`` = exactly one character, ``\\`` escapes ``*``, ``?``
                   and ``\\`` (the escapes are resolved by :func:`glob_tokens`);
    ``re``         ``re.search`` on the unfolded value; ``flags`` may hold
                   ``i``, ``m``, ``s``;
    ``exists``     ``values == (True,)``: the field is present; ``(False,)``: absent;
    ``null``       the field is absent (``None``);
    ``fieldref``   the value equals another field's value (``values`` holds field
                   names; ``flags`` may be ``contains``/``startswith``/``endswith``);
    ``cidr``       the value is an IP address inside one of the networks;
    ``lt``/``lte``/``gt``/``gte``  numeric comparison (a non-number is false);
    ``timepart``   a part of the date in the value (``flags`` = ``<part>:<cmp>``, part one
                   of :data:`TIME_PARTS`, cmp one of ``eq``/``lt``/``lte``/``gt``/``gte``)
                   compared with the integer ``values`` (see :func:`time_part`; a value
                   that is not a date is false).
* The condition is a tree of tuples: ``("pred", i)``, ``("and", c, ...)``,
  ``("or", c, ...)``, ``("not", c)``, ``("const", bool)``.
"""
from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass, field as dc_field
from typing import Any, Iterator

from .fields import FIELD_MAP

STRING_OPS = frozenset({"eq", "contains", "startswith", "endswith", "glob"})
NUMERIC_OPS = frozenset({"lt", "lte", "gt", "gte"})
OPS = STRING_OPS | NUMERIC_OPS | frozenset({"re", "exists", "null", "fieldref", "cidr",
                                           "timepart"})
FIELDREF_MODES = ("", "eq", "contains", "startswith", "endswith")
TIME_PARTS = ("minute", "hour", "day", "week", "month", "year")
TIME_CMPS = ("eq", "lt", "lte", "gt", "gte")
# A date as events carry it: ``2024-03-05 14:07:09.123`` (Sysmon's UtcTime), ``T`` instead of
# the space, seconds and fractions optional, an optional ``Z``; no offset (no time-zone
# conversion: the specification says the time modifiers are "not designed to handle
# timezone or format conversions").
_DATE = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?)?Z?\s*",
                   re.ASCII)

# Bounds on one rule, so that loading a rule (and building the matcher over it) takes
# bounded work whatever the file says.  SigmaHQ's largest process_creation rule has 1,093
# values, 30 KB of value text and 42 predicates; its longest regex is under 200 characters.
MAX_VALUES_PER_RULE = 10_000
MAX_VALUE_CHARS_PER_RULE = 256 * 1024
MAX_PREDICATES_PER_RULE = 2_000
MAX_REGEX_CHARS = 4_096
MAX_CONDITION_DEPTH = 64
MAX_CONDITION_NODES = 20_000


class RuleError(ValueError):
    """A rule that cannot be compiled; carries the source location."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        super().__init__(self.__str__())

    @property
    def location(self) -> str:
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line is not None else str(self.path)

    def __str__(self) -> str:
        loc = self.location
        return f"{loc}: {self.message}" if loc else self.message


@dataclass(frozen=True, slots=True)
class Predicate:
    """One test on one field (or on every field when ``field`` is None)."""

    field: str | None
    op: str
    values: tuple
    cased: bool = False
    flags: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise RuleError(f"unknown predicate op {self.op!r}")
        if not isinstance(self.values, tuple):
            object.__setattr__(self, "values", tuple(self.values))
        if self.op in ("exists",) and self.values not in ((True,), (False,)):
            raise RuleError("exists takes exactly one boolean value")
        if self.op == "re":
            bad = set(self.flags) - set("ims")
            if bad:
                raise RuleError(f"unknown regex flag(s) {''.join(sorted(bad))!r}")
            for v in self.values:
                try:
                    re.compile(v, regex_flags(self.flags))
                except re.error as exc:
                    raise RuleError(f"invalid regular expression {v!r}: {exc}") from None
        elif self.op == "fieldref":
            if self.flags not in FIELDREF_MODES:
                raise RuleError(f"unknown fieldref mode {self.flags!r}")
        elif self.op == "cidr":
            for v in self.values:
                try:
                    ipaddress.ip_network(v, strict=False)
                except ValueError as exc:
                    raise RuleError(f"invalid network {v!r}: {exc}") from None
        elif self.op == "timepart":
            part, _, cmp = self.flags.partition(":")
            if part not in TIME_PARTS or cmp not in TIME_CMPS:
                raise RuleError(f"unknown time part test {self.flags!r}")
            for v in self.values:
                if not isinstance(v, int) or isinstance(v, bool):
                    raise RuleError(f"time parts are integers, got {v!r}")
        elif self.op in NUMERIC_OPS:
            for v in self.values:
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise RuleError(f"{self.op} needs numbers, got {v!r}")
        elif self.op in STRING_OPS:
            for v in self.values:
                if not isinstance(v, str):
                    raise RuleError(f"{self.op} needs strings, got {v!r}")

    def to_json(self) -> list:
        return [self.field, self.op, list(self.values), self.cased, self.flags]

    @classmethod
    def from_json(cls, data: list) -> "Predicate":
        fld, op, values, cased, flags = data
        return cls(fld, op, tuple(values), bool(cased), flags)


def time_part(text: str, part: str) -> int | None:
    """The ``part`` of the date written in ``text``, or None when ``text`` is not a date.

    ``week`` is the week of the year with Monday as its first day, the days before the
    first Monday being week 0 (``strftime('%W')``, as pySigma's SQLite backend reads it).
    """
    m = _DATE.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, sec = (int(g) if g is not None else 0 for g in m.groups())
    try:
        date = datetime.date(y, mo, d)
    except ValueError:
        return None
    if h > 23 or mi > 59 or sec > 59:
        return None
    if part == "minute":
        return mi
    if part == "hour":
        return h
    if part == "day":
        return d
    if part == "month":
        return mo
    if part == "year":
        return y
    return (date.timetuple().tm_yday + 6 - date.weekday()) // 7   # week, %W


def regex_flags(flags: str) -> int:
    """Python ``re`` flags for the IR's regex flag letters."""
    out = 0
    if "i" in flags:
        out |= re.IGNORECASE
    if "m" in flags:
        out |= re.MULTILINE
    if "s" in flags:
        out |= re.DOTALL
    return out


# Glob tokens: a literal str, or one of these two markers.
STAR = object()
QMARK = object()


def glob_tokens(pattern: str) -> list:
    """Split a glob into literal strings and ``STAR``/``QMARK`` markers, resolving escapes.

    ``\\*`` and ``\\?`` are literal; ``\\\\`` is one backslash; any other backslash is
    literal (Sigma specification, "Escaping").
    """
    out: list = []
    buf: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n and pattern[i + 1] in "*?\\":
            buf.append(pattern[i + 1])
            i += 2
            continue
        if c in "*?":
            if buf:
                out.append("".join(buf))
                buf = []
            if c == "*":
                if not (out and out[-1] is STAR):  # ** == *
                    out.append(STAR)
            else:
                out.append(QMARK)
        else:
            buf.append(c)
        i += 1
    if buf:
        out.append("".join(buf))
    return out


def glob_escape(text: str) -> str:
    """Escape a literal so that :func:`glob_tokens` gives it back unchanged."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def glob_to_regex(pattern: str, cased: bool = False) -> re.Pattern:
    """A compiled regex equivalent to the whole-value glob (folded unless ``cased``), for
    ``fullmatch``, in time linear in the text for a given pattern.

    ``a*b*c*d`` as ``a.*b.*c.*d`` backtracks (cubic on text like ``abdabd...``). Here each
    segment between two stars but the last is found at its earliest place and never
    reconsidered (an atomic group, ``(?>.*?b)``): the earliest place leaves the most text for
    the segments after it, so if any way of placing them matches, this one does. The last
    segment is anchored at the end, after all of them."""
    segments: list[list[str]] = [[]]
    for tok in glob_tokens(pattern):
        if tok is STAR:
            segments.append([])
        elif tok is QMARK:
            segments[-1].append(".")
        else:
            segments[-1].append(re.escape(tok if cased else tok.lower()))
    first, *rest = ["".join(seg) for seg in segments]
    if not rest:
        return re.compile(first, re.DOTALL)
    *middle, last = rest
    return re.compile(first + "".join(f"(?>.*?{m})" for m in middle if m) + ".*" + last,
                      re.DOTALL)


def cond_preds(cond: tuple) -> Iterator[int]:
    """Every predicate index a condition refers to."""
    kind = cond[0]
    if kind == "pred":
        yield cond[1]
    elif kind in ("and", "or"):
        for c in cond[1:]:
            yield from cond_preds(c)
    elif kind == "not":
        yield from cond_preds(cond[1])


def check_condition(cond: Any, npreds: int, _depth: int = 0, _count: list | None = None) -> tuple:
    """Validate a condition tree (and turn JSON lists back into tuples)."""
    if _count is None:
        _count = [0]
    _count[0] += 1
    if _depth > MAX_CONDITION_DEPTH:
        raise RuleError(f"condition is nested more than {MAX_CONDITION_DEPTH} levels deep")
    if _count[0] > MAX_CONDITION_NODES:
        raise RuleError(f"condition has more than {MAX_CONDITION_NODES:,} nodes")
    if not isinstance(cond, (list, tuple)) or not cond:
        raise RuleError(f"malformed condition node {cond!r}")
    kind = cond[0]
    if kind == "pred":
        if len(cond) != 2 or not isinstance(cond[1], int) or not 0 <= cond[1] < npreds:
            raise RuleError(f"condition refers to a missing predicate: {cond!r}")
        return ("pred", cond[1])
    if kind == "const":
        if len(cond) != 2 or not isinstance(cond[1], bool):
            raise RuleError(f"malformed constant {cond!r}")
        return ("const", cond[1])
    if kind == "not":
        if len(cond) != 2:
            raise RuleError("'not' takes one operand")
        return ("not", check_condition(cond[1], npreds, _depth + 1, _count))
    if kind in ("and", "or"):
        if len(cond) < 2:
            raise RuleError(f"'{kind}' needs operands")
        return (kind,) + tuple(check_condition(c, npreds, _depth + 1, _count) for c in cond[1:])
    raise RuleError(f"unknown condition node {kind!r}")


def check_rule_size(predicates: tuple) -> None:
    """RuleError when a rule is larger than the bounds above."""
    if len(predicates) > MAX_PREDICATES_PER_RULE:
        raise RuleError(f"rule has {len(predicates):,} predicates; at most "
                        f"{MAX_PREDICATES_PER_RULE:,} are accepted")
    nvalues = 0
    nchars = 0
    for p in predicates:
        nvalues += len(p.values)
        for v in p.values:
            if isinstance(v, str):
                nchars += len(v)
                if p.op == "re" and len(v) > MAX_REGEX_CHARS:
                    raise RuleError(f"regular expression of {len(v):,} characters; at most "
                                    f"{MAX_REGEX_CHARS:,} are accepted")
    if nvalues > MAX_VALUES_PER_RULE:
        raise RuleError(f"rule has {nvalues:,} values; at most {MAX_VALUES_PER_RULE:,} are "
                        "accepted (split it into several rules)")
    if nchars > MAX_VALUE_CHARS_PER_RULE:
        raise RuleError(f"rule has {nchars:,} characters of values; at most "
                        f"{MAX_VALUE_CHARS_PER_RULE:,} are accepted (split it into several rules)")


@dataclass(slots=True)
class Rule:
    """A detection rule: predicates, a condition, and the metadata an alert carries."""

    id: str
    title: str
    predicates: tuple[Predicate, ...]
    condition: tuple
    level: str = "medium"
    description: str = ""
    tags: tuple[str, ...] = ()
    author: str = ""
    references: tuple[str, ...] = ()
    falsepositives: tuple[str, ...] = ()
    source: str = ""                       # file (and line) the rule came from
    origin: str = "sigma"                  # "builtin", "sigma", "pack"
    meta: dict = dc_field(default_factory=dict)   # anything else worth carrying into alerts
    select: tuple[str, ...] = ()            # extra output fields (seed's `select`)

    def __post_init__(self) -> None:
        self.predicates = tuple(self.predicates)
        check_rule_size(self.predicates)
        self.condition = check_condition(self.condition, len(self.predicates))
        self.select = tuple(self.select)
        if self.select:
            bad = [s for s in self.select if s not in FIELD_MAP]
            if bad:
                raise RuleError(f"unknown select field(s): {', '.join(map(str, bad))}")

    @property
    def fields(self) -> frozenset:
        """Field names the rule reads (None stands for a keyword search)."""
        out = set()
        for p in self.predicates:
            out.add(p.field)
            if p.op == "fieldref":
                out.update(p.values)
        return frozenset(out)

    @property
    def mitre_techniques(self) -> list[str]:
        """ATT&CK technique ids from the tags (``attack.t1218.011`` → ``T1218.011``)."""
        out = []
        for t in self.tags:
            t = t.lower()
            if t.startswith("attack.t") and t[8:9].isdigit():
                out.append("T" + t[8:].upper())
        return out

    def to_json(self) -> dict:
        return {
            "id": self.id, "title": self.title, "level": self.level,
            "description": self.description, "tags": list(self.tags), "author": self.author,
            "references": list(self.references), "falsepositives": list(self.falsepositives),
            "source": self.source, "origin": self.origin, "meta": self.meta,
            "select": list(self.select),
            "predicates": [p.to_json() for p in self.predicates],
            "condition": self.condition,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Rule":
        return cls(
            id=d["id"], title=d["title"], level=d.get("level", "medium"),
            description=d.get("description", ""), tags=tuple(d.get("tags", ())),
            author=d.get("author", ""), references=tuple(d.get("references", ())),
            falsepositives=tuple(d.get("falsepositives", ())), source=d.get("source", ""),
            origin=d.get("origin", "pack"), meta=d.get("meta") or {},
            select=tuple(d.get("select", ())),
            predicates=tuple(Predicate.from_json(p) for p in d["predicates"]),
            condition=d["condition"],
        )
