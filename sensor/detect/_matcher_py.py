"""The reference matcher: a plain-Python evaluator of the rule IR.

This module *defines* the matching semantics (see ``sensor.detect.ir``).  The
compiled matcher (``sensor.detect._matcher``) must give exactly the same answers; the
test suite runs against both and a property test compares them.

Regexes have Python ``re`` semantics and run in linear time on RE2
(``sensor.detect.regex``); a regex RE2 cannot run goes to the step-budgeted backtracking
engine (``sensor.detect.backtrack``).  When that budget runs out the predicate is
*undecided*, and a condition is evaluated in three-valued (Kleene) logic: ``false AND
undecided`` is false, ``true OR undecided`` is true, anything else with an undecided
operand is undecided.  The result does not depend on the order operands are evaluated
in.  An undecided rule does not match; it is counted (``undecided``) and every other rule
is still evaluated.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Mapping, Sequence

from ..events import field_value
from .backtrack import BudgetExceeded
from .ir import NUMERIC_OPS, Predicate, Rule, glob_to_regex, time_part
from .regex import compile_regex

ENGINE = "reference"


def as_text(value: Any) -> str:
    """The string a predicate sees for a field value."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_number(value: Any) -> float | int | None:
    """A field value as a number, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    text = as_text(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        if text.lower().startswith("0x"):
            return int(text, 16)
        return float(text)
    except ValueError:
        return None


class _Test:
    """One predicate, prepared for evaluation."""

    __slots__ = ("pred", "values", "regexes", "nets", "fn")

    def __init__(self, pred: Predicate, regex_budget: int | None = None):
        self.pred = pred
        fold = not pred.cased
        self.values = tuple(v.lower() if fold and isinstance(v, str) else v for v in pred.values)
        self.regexes = ()
        self.nets = ()
        op = pred.op
        if op == "glob":
            self.regexes = tuple(glob_to_regex(v, pred.cased) for v in pred.values)
        elif op == "re":
            self.regexes = tuple(compile_regex(v, pred.flags, regex_budget) for v in pred.values)
        elif op == "cidr":
            self.nets = tuple(ipaddress.ip_network(v, strict=False) for v in pred.values)
        self.fn = getattr(self, "_" + op, None)  # exists/null are decided in evaluate()

    # Each op gets the raw value (never None here) and the event.
    def _text(self, value: Any) -> str:
        text = as_text(value)
        return text if self.pred.cased else text.lower()

    def _eq(self, value, event):
        t = self._text(value)
        return any(t == v for v in self.values)

    def _contains(self, value, event):
        t = self._text(value)
        return any(v in t for v in self.values)

    def _startswith(self, value, event):
        return self._text(value).startswith(self.values)

    def _endswith(self, value, event):
        return self._text(value).endswith(self.values)

    def _glob(self, value, event):
        t = self._text(value)
        return any(r.fullmatch(t) is not None for r in self.regexes)

    def _re(self, value, event):
        # raises BudgetExceeded when a budgeted (backtracking) regex runs out of steps
        t = as_text(value)
        return any(r.search(t) for r in self.regexes)

    def _cidr(self, value, event):
        try:
            addr = ipaddress.ip_address(as_text(value).strip())
        except ValueError:
            return False
        return any(addr.version == n.version and addr in n for n in self.nets)

    def _fieldref(self, value, event):
        t = self._text(value)
        mode = self.pred.flags or "eq"
        for name in self.pred.values:
            other = field_value(event, name)
            if other is None:
                continue
            o = self._text(other)
            if (mode == "eq" and t == o) or (mode == "contains" and o in t) \
                    or (mode == "startswith" and t.startswith(o)) \
                    or (mode == "endswith" and t.endswith(o)):
                return True
        return False

    def _numeric(self, value, event):
        n = as_number(value)
        if n is None:
            return False
        op = self.pred.op
        for v in self.values:
            if (op == "lt" and n < v) or (op == "lte" and n <= v) or \
                    (op == "gt" and n > v) or (op == "gte" and n >= v):
                return True
        return False

    _lt = _lte = _gt = _gte = _numeric

    def _timepart(self, value, event):
        part, _, cmp = self.pred.flags.partition(":")
        n = time_part(as_text(value), part)
        if n is None:
            return False
        for v in self.values:
            if (cmp == "eq" and n == v) or (cmp == "lt" and n < v) or (cmp == "lte" and n <= v) \
                    or (cmp == "gt" and n > v) or (cmp == "gte" and n >= v):
                return True
        return False

    def evaluate(self, event: Mapping[str, Any]) -> bool:
        pred = self.pred
        op = pred.op
        if pred.field is None:  # keyword search: any stored value of the event
            if op in ("exists", "null"):
                return False
            for value in list(event.values()):
                if value is not None and self.fn(value, event):
                    return True
            return False
        value = field_value(event, pred.field)
        if op == "exists":
            return (value is not None) == pred.values[0]
        if op == "null":
            return value is None
        if value is None:
            return False
        return self.fn(value, event)


assert NUMERIC_OPS <= {"lt", "lte", "gt", "gte"}


UNDECIDED = None   # a predicate (or condition) whose regex ran out of its step budget


class Matcher:
    """Evaluate a rule set against events; ``match`` returns indices into ``rules``."""

    engine = ENGINE

    def __init__(self, rules: Sequence[Rule], regex_budget: int | None = None):
        self.rules: list[Rule] = list(rules)
        # A predicate shared by several rules is evaluated once per event.
        slots: dict[Predicate, int] = {}
        self._tests: list[_Test] = []
        self._conds: list[tuple] = []
        for rule in self.rules:
            remap = []
            for p in rule.predicates:
                if p not in slots:
                    slots[p] = len(self._tests)
                    self._tests.append(_Test(p, regex_budget))
                remap.append(slots[p])
            self._conds.append(_remap(rule.condition, remap))
        self._undecided = [0] * len(self.rules)

    def match(self, event: Mapping[str, Any]) -> list[int]:
        """Indices of the rules whose condition holds for ``event``, ascending."""
        memo: dict[int, bool | None] = {}
        tests = self._tests

        def ev(cond: tuple) -> bool | None:
            kind = cond[0]
            if kind == "pred":
                i = cond[1]
                if i in memo:
                    return memo[i]
                try:
                    r = tests[i].evaluate(event)
                except BudgetExceeded:
                    r = UNDECIDED
                memo[i] = r
                return r
            if kind == "and":
                out: bool | None = True
                for c in cond[1:]:
                    r = ev(c)
                    if r is False:
                        return False
                    if r is UNDECIDED:
                        out = UNDECIDED
                return out
            if kind == "or":
                out = False
                for c in cond[1:]:
                    r = ev(c)
                    if r is True:
                        return True
                    if r is UNDECIDED:
                        out = UNDECIDED
                return out
            if kind == "not":
                r = ev(cond[1])
                return UNDECIDED if r is UNDECIDED else not r
            return cond[1]  # const

        out = []
        for i, cond in enumerate(self._conds):
            r = ev(cond)
            if r is True:
                out.append(i)
            elif r is UNDECIDED:
                self._undecided[i] += 1
        return out

    def match_rules(self, event: Mapping[str, Any]) -> list[Rule]:
        """The matching rules themselves."""
        return [self.rules[i] for i in self.match(event)]

    @property
    def undecided(self) -> dict[int, int]:
        """Per rule index: events on which the rule was undecided (a regex ran out of its
        step budget), since the matcher was built."""
        return {i: n for i, n in enumerate(self._undecided) if n}

    def regex_engines(self) -> dict[int, list]:
        """Per rule index with a regex: the engine of each of its regexes."""
        return regex_engines(self.rules)

    @property
    def stats(self) -> dict:
        return {"engine": self.engine, "rules": len(self.rules), "predicates": len(self._tests),
                "undecided_events": sum(self._undecided)}


def regex_engines(rules: Sequence[Rule]) -> dict[int, list]:
    """Per rule index with a regex: ``(pattern, engine, reason)`` for each of its regexes."""
    from .regex import plan

    out: dict[int, list] = {}
    for i, rule in enumerate(rules):
        for p in rule.predicates:
            if p.op == "re":
                for v in p.values:
                    pl = plan(v, p.flags)
                    out.setdefault(i, []).append((v, pl.engine, pl.reason))
    return out


def _remap(cond: tuple, remap: list[int]) -> tuple:
    kind = cond[0]
    if kind == "pred":
        return ("pred", remap[cond[1]])
    if kind in ("and", "or"):
        return (kind,) + tuple(_remap(c, remap) for c in cond[1:])
    if kind == "not":
        return ("not", _remap(cond[1], remap))
    return cond
