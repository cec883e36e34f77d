"""Sigma YAML → rule IR, through pySigma's parsed detection and condition tree.

pySigma parses the YAML, applies the value modifiers and expands ``1 of``/``all of``;
this module walks the resulting condition tree (``ConditionAND/OR/NOT`` over
``field = value`` leaves) and turns every leaf into an IR :class:`Predicate`.
The mapping (Sigma specification, ``sigma-rules-specification.md`` and
``sigma-appendix-modifiers.md``; see docs/sigma.md for the table):

* plain strings: ``eq``; ``*x*`` / ``x*`` / ``*x``: ``contains`` / ``startswith`` /
  ``endswith``; any other wildcard use: ``glob``.  Case-insensitive unless ``cased``.
* ``re`` (+ ``i``/``m``/``s``): ``re`` (``re.search``, case-sensitive by default).
* ``windash``, ``base64offset``: pySigma's expansion becomes an OR of the variants.
* ``base64``, ``utf16le``/``utf16be``/``wide``/``utf16``: already applied to the value.
* ``null``: ``null``; ``exists``: ``exists``; ``cidr``: ``cidr``; ``fieldref``: ``fieldref``;
  ``lt``/``lte``/``gt``/``gte``: numeric ops; ``neq``: ``not eq`` (pySigma's tree).
* numbers and booleans: ``eq`` on their text (``4``, ``true``).
* keywords (no field): a substring search over every field (``*kw*``).

pySigma is imported lazily: a rule pack loads without it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Iterable

from .._files import read_regular
from ..events import FIELDS as ETW_FIELDS
from .ir import Predicate, Rule, RuleError, glob_escape
from .regex import backtracking_problem

# The work one rule file may cost (a hostile rule file must not stall `rules validate` or a
# start). The largest SigmaHQ rule file is about 50 KB with about 1,100 values.
MAX_RULE_FILE_BYTES = 1024 * 1024
MAX_RULE_VALUES = 10_000          # detection values (list items and scalars) per file
MAX_CONDITION_CHARS = 65_536      # condition text per file (SigmaHQ's longest: 557)
MAX_CONDITION_DEPTH = 128         # nesting of one condition as written (SigmaHQ's deepest: 3)

# Logsource this sensor evaluates (category process_creation, product windows).
CATEGORY = "process_creation"
PRODUCT = "windows"

# Rule field aliases: Security 4688 names used in a rule read the taxonomy field the
# sources fill from them (sensor/sources/records.py: NewProcessName→Image, ...).
FIELD_ALIASES = {
    "NewProcessName": "Image",
    "ParentProcessName": "ParentImage",
}

# What each event source provides (after sensor.sources' mapping), for load-time
# warnings about rules that read a field a source never fills.
SYSMON_FIELDS = frozenset({
    "RuleName", "UtcTime", "ProcessGuid", "ProcessId", "Image", "FileVersion",
    "Description", "Product", "Company", "OriginalFileName", "CommandLine",
    "CurrentDirectory", "User", "LogonGuid", "LogonId", "TerminalSessionId",
    "IntegrityLevel", "Hashes", "ParentProcessGuid", "ParentProcessId", "ParentImage",
    "ParentCommandLine", "ParentUser", "Computer",
})
SECURITY_4688_FIELDS = frozenset({
    "Image", "ParentImage", "CommandLine", "User", "IntegrityLevel", "ProcessId",
    "ParentProcessId", "Computer", "UtcTime",
    # original 4688 EventData, kept on the event
    "SubjectUserSid", "SubjectUserName", "SubjectDomainName", "SubjectLogonId",
    "NewProcessId", "NewProcessName", "TokenElevationType", "MandatoryLabel",
    "TargetUserSid", "TargetUserName", "TargetDomainName", "TargetLogonId",
    "ParentProcessName",
})
SOURCE_FIELDS: dict[str, frozenset] = {
    "Sysmon EID 1": SYSMON_FIELDS,
    "Security 4688": SECURITY_4688_FIELDS,
    "ETW": frozenset(ETW_FIELDS),
}
DERIVED_FIELDS = frozenset({"@FileName", "@Message"})

# Each rule is also bounded (ir.check_rule_size).


@dataclass
class Problem:
    """A rule-level finding: where and why."""

    path: str
    line: int | None
    reason: str
    ident: str | None = None     # the rule's id and name when known, so a correlation that
    name: str | None = None      # references a refused rule can say so


@dataclass
class FileResult:
    """What one Sigma file gave."""

    rules: list[Rule] = dc_field(default_factory=list)
    rejected: list[Problem] = dc_field(default_factory=list)
    not_applicable: list[Problem] = dc_field(default_factory=list)
    correlations: list = dc_field(default_factory=list)   # metarules.Correlation
    filters: list = dc_field(default_factory=list)        # metarules.Filter
    warnings: list[Problem] = dc_field(default_factory=list)


# ---------------------------------------------------------------------------------
# Locating problems in the YAML text (pySigma's locations carry no line numbers).
# Each document of a file is searched in its own text (a _DocText), so a problem in a later
# document is never placed at a line of an earlier one.

class _DocText(str):
    """The text of one YAML document and the number of lines of its file before it."""

    before: int = 0


def _doc_text(text: str, start: int, end: int, before: int) -> _DocText:
    doc = _DocText(text[start:end])
    doc.before = before
    return doc


def _line_at(text: str, index: int) -> int:
    """The file's line number of ``text[index]`` (``text`` a whole file or a _DocText)."""
    return getattr(text, "before", 0) + text.count("\n", 0, index) + 1


def _first_line(text: str) -> int:
    return getattr(text, "before", 0) + 1


def _reader_problem(exc) -> str:
    """A YAML reader error (a character YAML does not allow) without the reader's offset."""
    ch = exc.character
    code = ord(ch) if isinstance(ch, str) else ch
    return f"unacceptable character #x{code:04x}: {exc.reason}"


def _reader_line(text: str, exc, loader) -> int:
    """The line of a YAML reader error: libyaml gives a byte offset into the UTF-8 text,
    the pure-Python reader a character offset."""
    try:
        from yaml.cyaml import CParser
    except ImportError:     # PyYAML built without libyaml
        CParser = None
    if CParser is not None and issubclass(loader, CParser):
        return text.encode("utf-8", "surrogatepass").count(b"\n", 0, exc.position) + 1
    return text.count("\n", 0, exc.position) + 1


def _line_of(text: str, pattern: str) -> int | None:
    m = re.search(pattern, text, re.MULTILINE)
    return _line_at(text, m.start()) if m else None


def _key_line(text: str, key: str) -> int | None:
    """Line of a mapping key (optionally quoted, optionally a list item)."""
    return _line_of(text, r"^[ \t]*(?:-[ \t]+)?['\"]?" + re.escape(key) + r"['\"]?[ \t]*:")


def _locate(text: str, exc: BaseException) -> int | None:
    """Best line for a pySigma or conversion error."""
    msg = str(getattr(exc, "args", [""])[0] if getattr(exc, "args", None) else exc)
    name = type(exc).__name__
    m = re.search(r"[Uu]nknown modifier '([^']+)'", msg)
    if m:
        return _line_of(text, r"^[^#\n]*\|" + re.escape(m.group(1))
                        + r"(?:\|[^:\s]*)?['\"]?[ \t]*:") or _key_line(text, "detection")
    if "Condition" in name:   # by its type: a message quotes the rule's own text
        return _key_line(text, "condition")
    m = re.search(r"Regular expression '(.*)' is invalid", msg, re.DOTALL)
    if m or "regular expression" in msg.lower():
        start = text.find("detection:")
        if m and m.group(1) and start >= 0:  # the line holding the bad pattern itself
            at = text.find(m.group(1), start)
            if at >= 0:
                return _line_at(text, at)
        return _line_of(text, r"^[^#\n]*\|re\b[^:\n]*:") or _key_line(text, "detection")
    if "Logsource" in name or "log source" in msg.lower():
        return _key_line(text, "logsource") or _first_line(text)
    m = re.search(r"field '([^']+)'", msg)
    if m:
        return _line_of(text, r"^[ \t]*(?:-[ \t]+)?['\"]?" + re.escape(m.group(1)) + r"[|:]")
    m = re.match(r"Sigma (?:rule )?(\w+) (?:fields )?(?:must|length)", msg)   # an attribute of the wrong kind
    if m:
        key = _ATTRIBUTE_KEYS.get(m.group(1), m.group(1))
        return _line_of(text, r"^['\"]?" + re.escape(key) + r"['\"]?[ \t]*:") or _key_line(text, "detection")
    return _key_line(text, "detection")


# pySigma names a rule attribute by its name in the model; the YAML key where it differs
_ATTRIBUTE_KEYS = {"identifier": "id"}


# ---------------------------------------------------------------------------------
# Condition tree → IR.

class _Leaf:
    """A predicate before numbering (so OR siblings can be merged first)."""

    __slots__ = ("field", "op", "values", "cased", "flags")

    def __init__(self, field, op, values, cased=False, flags=""):
        self.field, self.op, self.values, self.cased, self.flags = field, op, tuple(values), cased, flags

    def key(self):
        return (self.field, self.op, self.cased, self.flags)


# Ops whose value list is an OR and so may be merged across OR siblings.
_MERGEABLE = frozenset({"eq", "contains", "startswith", "endswith", "glob", "re", "cidr",
                        "fieldref", "lt", "lte", "gt", "gte"})


def _string_leaf(field: str | None, s, cased: bool) -> _Leaf:
    """A SigmaString as the cheapest equivalent string predicate."""
    from sigma.types import Placeholder, SpecialChars

    parts: list = []
    for p in s.s:
        if isinstance(p, Placeholder):
            raise RuleError(f"placeholder %{p.name}% needs a processing pipeline "
                            "(expand modifier); not supported")
        if isinstance(p, str) and parts and isinstance(parts[-1], str):
            parts[-1] += p
        elif isinstance(p, str):
            parts.append(p)
        elif p is SpecialChars.WILDCARD_MULTI:
            if not (parts and parts[-1] is SpecialChars.WILDCARD_MULTI):
                parts.append(p)
        else:
            parts.append(p)
    star = SpecialChars.WILDCARD_MULTI
    if field is None:  # keyword: full-text (substring) search over every value
        if not parts or parts[0] is not star:
            parts.insert(0, star)
        if parts[-1] is not star:
            parts.append(star)
    if all(isinstance(p, str) for p in parts):
        return _Leaf(field, "eq", ("".join(parts),), cased)
    if len(parts) == 3 and parts[0] is star and parts[2] is star and isinstance(parts[1], str):
        return _Leaf(field, "contains", (parts[1],), cased)
    if len(parts) == 2 and parts[0] is star and isinstance(parts[1], str):
        return _Leaf(field, "endswith", (parts[1],), cased)
    if len(parts) == 2 and parts[1] is star and isinstance(parts[0], str):
        return _Leaf(field, "startswith", (parts[0],), cased)
    pattern = "".join(glob_escape(p) if isinstance(p, str) else ("*" if p is star else "?")
                      for p in parts)
    return _Leaf(field, "glob", (pattern,), cased)


def _regex_text(rx) -> str:
    from sigma.types import Placeholder, SpecialChars

    out = []
    for p in rx.regexp.s:
        if isinstance(p, str):
            out.append(p)
        elif p is SpecialChars.WILDCARD_MULTI:
            out.append("*")
        elif p is SpecialChars.WILDCARD_SINGLE:
            out.append("?")
        elif isinstance(p, Placeholder):
            raise RuleError(f"placeholder %{p.name}% in a regular expression is not supported")
    return "".join(out)


def _value_node(field: str | None, value) -> Any:
    """One ``field = value`` leaf of pySigma's condition tree as an IR sub-tree."""
    from sigma import types as st

    if field is not None:
        field = FIELD_ALIASES.get(field, field)
    if isinstance(value, st.SigmaExpansion):
        return ("or",) + tuple(_value_node(field, v) for v in value.values)
    if isinstance(value, st.SigmaString):
        return _string_leaf(field, value, isinstance(value, st.SigmaCasedString))
    if isinstance(value, st.SigmaRegularExpression):
        letters = {st.SigmaRegularExpressionFlag.IGNORECASE: "i",
                   st.SigmaRegularExpressionFlag.MULTILINE: "m",
                   st.SigmaRegularExpressionFlag.DOTALL: "s"}
        flags = "".join(sorted(letters[f] for f in value.flags))
        return _Leaf(field, "re", (_regex_text(value),), False, flags)
    if isinstance(value, st.SigmaNull):
        if field is None:
            raise RuleError("null needs a field")
        return _Leaf(field, "null", ())
    if isinstance(value, st.SigmaExists):
        if field is None:
            raise RuleError("exists needs a field")
        return _Leaf(field, "exists", (bool(value.exists),))
    if isinstance(value, st.SigmaBool):
        return _Leaf(field, "eq", ("true" if value.boolean else "false",))
    if isinstance(value, st.SigmaTimestampPart):
        if field is None:
            raise RuleError("time-part modifiers need a field")
        return _Leaf(field, "timepart", (int(value.number),),
                     False, f"{value.timestamp_part.name.lower()}:eq")
    if isinstance(value, st.SigmaNumber):
        return _Leaf(field, "contains" if field is None else "eq", (str(value.number),))
    if isinstance(value, st.SigmaCompareExpression):
        ops = {st.CompareOperators.LT: "lt", st.CompareOperators.LTE: "lte",
               st.CompareOperators.GT: "gt", st.CompareOperators.GTE: "gte"}
        if isinstance(value.number, st.SigmaTimestampPart):     # |hour|gte: 20 ...
            if field is None:
                raise RuleError("time-part modifiers need a field")
            part = value.number.timestamp_part.name.lower()
            if value.op == st.CompareOperators.NEQ:
                return ("not", _Leaf(field, "timepart", (int(value.number.number),), False,
                                     f"{part}:eq"))
            return _Leaf(field, "timepart", (int(value.number.number),), False,
                         f"{part}:{ops[value.op]}")
        if value.op == st.CompareOperators.NEQ:
            return ("not", _Leaf(field, "eq", (str(value.number.number),)))
        return _Leaf(field, ops[value.op], (value.number.number,))
    if isinstance(value, st.SigmaCIDRExpression):
        return _Leaf(field, "cidr", (str(value.network),))
    if isinstance(value, st.SigmaFieldReference):
        if field is None:
            raise RuleError("fieldref needs a field")
        mode = ("contains" if value.starts_with and value.ends_with else
                "startswith" if value.starts_with else
                "endswith" if value.ends_with else "")
        return _Leaf(field, "fieldref", (FIELD_ALIASES.get(value.field, value.field),), False, mode)
    raise RuleError(f"unsupported value type {type(value).__name__}")


def _tree(node) -> Any:
    from sigma.conditions import (ConditionAND, ConditionFieldEqualsValueExpression,
                                  ConditionNOT, ConditionOR, ConditionValueExpression)

    if node is None:  # pySigma drops empty detections; nothing can match them
        return ("const", False)
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return _value_node(node.field, node.value)
    if isinstance(node, ConditionValueExpression):
        return _value_node(None, node.value)
    if isinstance(node, ConditionNOT):
        return ("not", _tree(node.args[0]))
    if isinstance(node, ConditionAND):
        return ("and",) + tuple(_tree(a) for a in node.args)
    if isinstance(node, ConditionOR):
        return ("or",) + tuple(_tree(a) for a in node.args)
    raise RuleError(f"unsupported condition element {type(node).__name__}")


def _simplify(node) -> Any:
    """Flatten nested and/or, drop single-operand groups, merge OR-ed leaves."""
    if isinstance(node, _Leaf) or node[0] == "const":
        return node
    kind = node[0]
    if kind == "not":
        return ("not", _simplify(node[1]))
    kids: list = []
    for c in node[1:]:
        c = _simplify(c)
        if not isinstance(c, _Leaf) and c[0] == kind:
            kids.extend(c[1:])
        else:
            kids.append(c)
    if kind == "or":
        merged: list = []
        index: dict = {}
        # per merged leaf: its values in order and the set of them (a linear merge: thousands
        # of OR-ed values must not cost a scan of the list per value)
        vals: dict[int, tuple[list, set]] = {}
        for c in kids:
            if isinstance(c, _Leaf) and c.op in _MERGEABLE:
                k = c.key()
                if k in index:
                    order, seen = vals[index[k]]
                    new = [v for v in c.values if v not in seen]
                    order.extend(new)
                    seen.update(new)
                    continue
                c = _Leaf(c.field, c.op, c.values, c.cased, c.flags)  # copy: merging mutates
                index[k] = len(merged)
                vals[index[k]] = (list(c.values), set(c.values))
            merged.append(c)
        for i, (order, _) in vals.items():
            merged[i].values = tuple(order)
        kids = merged
    if len(kids) == 1:
        return kids[0]
    return (kind,) + tuple(kids)


def _number(node, preds: list[Predicate], slots: dict) -> tuple:
    if isinstance(node, _Leaf):
        p = Predicate(node.field, node.op, node.values, node.cased, node.flags)
        i = slots.get(p)
        if i is None:
            i = slots[p] = len(preds)
            preds.append(p)
        return ("pred", i)
    if node[0] == "const":
        return node
    if node[0] == "not":
        return ("not", _number(node[1], preds, slots))
    return (node[0],) + tuple(_number(c, preds, slots) for c in node[1:])


def convert_condition(conditions: Iterable) -> tuple[tuple[Predicate, ...], tuple]:
    """pySigma parsed conditions (a list means OR) → (predicates, IR condition)."""
    trees = [_tree(c.parse()) for c in conditions]
    tree = _simplify(trees[0] if len(trees) == 1 else ("or",) + tuple(trees))
    preds: list[Predicate] = []
    cond = _number(tree, preds, {})
    return tuple(preds), cond


# ---------------------------------------------------------------------------------
# Rules and files.

def logsource_problem(logsource) -> str | None:
    """Why a rule's logsource is not this sensor's (None when it applies)."""
    cat = (logsource.category or "").lower() or None
    prod = (logsource.product or "").lower() or None
    svc = (logsource.service or "").lower() or None
    if cat == CATEGORY and prod in (None, PRODUCT) and svc is None:
        return None
    desc = ", ".join(f"{k}: {v}" for k, v in (("category", cat), ("product", prod),
                                                ("service", svc)) if v) or "none"
    return (f"logsource ({desc}) is not {CATEGORY}/{PRODUCT}; "
            "this sensor evaluates Windows process_creation rules only")


def _meta(srule, path: str) -> dict:
    ls = srule.logsource
    meta: dict = {"format": "sigma"}
    if srule.status is not None:
        meta["status"] = str(srule.status.name).lower()
    if srule.date is not None:
        meta["date"] = srule.date.isoformat()
    if srule.modified is not None:
        meta["modified"] = srule.modified.isoformat()
    meta["logsource"] = {k: v for k, v in (("category", ls.category), ("product", ls.product),
                                           ("service", ls.service)) if v}
    meta["file"] = os.path.basename(path)
    name = getattr(srule, "name", None)
    if name:  # correlations and filters reference rules by id or by name
        meta["name"] = str(name)
    return meta


def rule_from_sigma(srule, path: str, text: str) -> Rule:
    """A parsed pySigma rule → IR Rule (RuleError with path:line when it cannot be)."""
    try:
        preds, cond = convert_condition(srule.detection.parsed_condition)
        level = srule.level.name.lower() if srule.level is not None else "medium"
        return Rule(
            id=str(srule.id) if srule.id else "sigma-" + Path(path).stem,
            title=srule.title or Path(path).stem,
            predicates=preds,
            condition=cond,
            level=level,
            description=(srule.description or "").strip(),
            tags=tuple(str(t) for t in srule.tags),
            author=srule.author or "",
            references=tuple(srule.references or ()),
            falsepositives=tuple(str(f) for f in (srule.falsepositives or ())),
            source=path,
            origin="sigma",
            meta=_meta(srule, path),
        )
    except RuleError as exc:
        raise RuleError(exc.message, path, _locate(text, exc)) from None
    except Exception as exc:  # pySigma raises SigmaError subclasses (and a few others)
        raise RuleError(_reason(exc), path, _locate(text, exc)) from None


def _reason(exc: BaseException) -> str:
    # pySigma's str() appends "in <absolute path>"; the report already names the file.
    msg = str(exc.args[0]) if exc.args else str(exc)
    return f"{type(exc).__name__}: {msg}"


def _register_aliases() -> None:
    # The Sigma modifier appendix names UTF-16LE ``utf16le`` (alias ``wide``); pySigma 2.0
    # knows only ``wide``.  Teach it the spec's name (reverse mapping keeps ``wide``).
    from sigma import modifiers

    modifiers.modifier_mapping.setdefault("utf16le", modifiers.SigmaWideModifier)


def _policy():
    # Regexes are validated with Python's re, the engine both matchers use (pySigma's
    # default policy validates with RE2, whose syntax differs).
    from sigma.policy.profiles import TrustedPolicy
    return TrustedPolicy


_WINDASH = re.compile(r"\B[-/]\b")      # the dashes pySigma's |windash expands (5 ways each)


def _expansion(value: Any, modifiers: tuple[str, ...]) -> int:
    """How many values pySigma makes of one detection value: |windash 5 per expanded dash (at
    most 3; more is pySigma's own error), |base64offset 3."""
    n = 1
    if "windash" in modifiers and isinstance(value, str):
        dashes = len(_WINDASH.findall(value))
        n *= 5 ** dashes if dashes <= 3 else 1
    if "base64offset" in modifiers:
        n *= 3
    return n


def _count_values(node: Any, limit: int) -> int:
    """Values under ``node`` (detection values, as pySigma will expand them: see _expansion),
    counting stops past ``limit``. YAML aliases make shared sub-trees that count once per use,
    so a small alias bomb is counted as big as it would expand."""
    n = 0
    stack: list[tuple[Any, tuple[str, ...]]] = [(node, ())]
    while stack:
        x, mods = stack.pop()
        if isinstance(x, dict):
            stack.extend((v, tuple(str(k).split("|")[1:]) if "|" in str(k) else mods)
                         for k, v in x.items())
        elif isinstance(x, (list, tuple)):
            stack.extend((v, mods) for v in x)
        else:
            n += _expansion(x, mods) if mods else 1
            if n > limit:
                return n
    return n


_COND_TOKEN = re.compile(r"[()]|[^\s()]+")


def _condition_depth(cond: str) -> int:
    """How deeply a condition nests: each open parenthesis, and each ``not`` still waiting
    for the operand it applies to, is one level (``not (not (a))`` is four). One pass."""
    depth = best = pending = 0          # pending: nots read since the last operand
    stack: list[int] = []               # per open parenthesis: the levels it added
    for tok in _COND_TOKEN.findall(cond):
        if tok == "(":
            stack.append(pending + 1)
            depth += 1
            pending = 0
        elif tok == ")":
            depth -= stack.pop() if stack else 0
            pending = 0
        elif tok.lower() == "not":
            pending += 1
            depth += 1
        else:
            depth -= pending
            pending = 0
        best = max(best, depth)
    return best


def _condition_problem(docs: list) -> tuple[str, str] | None:
    """(reason, the key to place it at) when the conditions of a file are beyond what is
    parsed in bounded time: pySigma's condition parser costs about a third of a millisecond
    per term and recurses per level of nesting."""
    total = 0
    for d, _ in docs:
        if not isinstance(d, dict):
            continue
        for key in ("detection", "filter"):
            block = d.get(key)
            cond = block.get("condition") if isinstance(block, dict) else None
            for c in (cond if isinstance(cond, list) else [cond]):
                if not isinstance(c, str):
                    continue
                total += len(c)
                if total > MAX_CONDITION_CHARS:
                    return (f"conditions too long (more than {MAX_CONDITION_CHARS:,} characters "
                            f"in one file): split the rule"), "condition"
                if _condition_depth(c) > MAX_CONDITION_DEPTH:
                    return (f"condition nested more than {MAX_CONDITION_DEPTH} levels deep as "
                            f"written (parentheses and not): simplify it"), "condition"
    return None


def _pattern_line(text: str, pattern: str) -> int | None:
    """Line of a regex value in the YAML text (the first |re line when not found as is)."""
    start = max(text.find("detection:"), 0)
    for needle in (pattern, pattern.replace("'", "''"), pattern.replace("\\", "\\\\")):
        at = text.find(needle, start)
        if at >= 0:
            return _line_at(text, at)
    return _line_of(text, r"^[^#\n]*\|re\b[^:\n]*:") or _key_line(text, "detection")


_LOADER: type | None = None


def _yaml_loader() -> type:
    """pySigma's YAML loader, refusing what YAML cannot make a value of as a YAML error at its
    line: a value its tag cannot read (``date: 2024-02-30``, ``!!int high``: the constructor's
    ValueError, KeyError, ...; the value is quoted when it has at most 60 characters) and a
    list or mapping as a key (pySigma's duplicate-key check hashes each key before PyYAML's
    own check can refuse it)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml
    from sigma.rule.base import SigmaYAMLLoader
    from yaml.constructor import ConstructorError

    class Loader(SigmaYAMLLoader):
        def construct_object(self, node, *args, **kwargs):
            try:
                return super().construct_object(node, *args, **kwargs)
            except yaml.YAMLError:
                raise
            except Exception as exc:    # ValueError, KeyError, IndexError, AttributeError
                kind = str(node.tag).rpartition(":")[2]
                why = f" ({exc})" if isinstance(exc, ValueError) else ""
                # the value is only quoted when short (float()'s message quotes all of it)
                short = isinstance(node, yaml.ScalarNode) and len(node.value) <= 60
                raise ConstructorError(None, None, f"cannot read {node.value!r} as a {kind}{why}"
                                       if short else f"cannot read this {kind}",
                                       node.start_mark) from None

        def construct_mapping(self, node, *args, **kwargs):
            if not isinstance(node, yaml.MappingNode):      # (!!set on a scalar or a list)
                raise ConstructorError(None, None, f"expected a mapping, found a {node.id}",
                                       node.start_mark)
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise ConstructorError(None, None, "found unhashable key (a list or a "
                                           "mapping cannot be a key)", key.start_mark)
            return super().construct_mapping(node, *args, **kwargs)

    _LOADER = Loader
    return Loader


def load_sigma_text(text: str, path: str, allow_backtracking=(), placeholders=None) -> FileResult:
    """Parse and convert every rule document of one Sigma YAML text (bounded: at most
    MAX_RULE_FILE_BYTES of text and MAX_RULE_VALUES detection values).  A rule with a regex
    that needs backtracking is rejected unless its id is in ``allow_backtracking``.

    ``placeholders`` (name -> values) gives ``|expand`` placeholders their values; a rule with
    a placeholder that has none is rejected, as the specification requires.
    """
    import yaml
    from sigma.rule import SigmaRule

    SigmaYAMLLoader = _yaml_loader()
    _register_aliases()
    out = FileResult()
    if len(text) > MAX_RULE_FILE_BYTES:
        out.rejected.append(Problem(path, None, f"rule file too large (more than "
                                                f"{MAX_RULE_FILE_BYTES:,} bytes): split it"))
        return out
    docs: list[tuple[Any, _DocText]] = []     # each document and its own text
    loader = None
    current: _DocText | None = None         # the text of the document being read
    try:
        # yaml.load_all, one document at a time, to keep where each document starts: a
        # problem is then searched for in its own document's text (each text is sliced once,
        # so the cost stays linear in the file's size).
        loader = SigmaYAMLLoader(text)
        at, before = 0, 0                   # a line start and the lines before it
        while loader.check_node():
            node = loader.get_node()
            start = max(node.start_mark.index - node.start_mark.column, at)
            before += text.count("\n", at, start)
            at = start
            current = _doc_text(text, start, max(node.end_mark.index, start), before)
            data = loader.construct_document(node)
            if data is not None:
                docs.append((data, current))
    except yaml.YAMLError as exc:
        # The context mark is where the broken construct starts (an unclosed quote);
        # the problem mark is where the parser gave up.  Point at the start.
        pmark = getattr(exc, "problem_mark", None)
        cmark = getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        parts = []
        if context and cmark is not None:
            parts.append(f"{context} (line {cmark.line + 1})")
        parts.append(f"{problem} (line {pmark.line + 1})" if pmark is not None else problem)
        mark = cmark if (context and cmark is not None) else pmark
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, yaml.reader.ReaderError):   # a character YAML does not allow
            parts, line = [_reader_problem(exc)], _reader_line(text, exc, SigmaYAMLLoader)
        dup = re.match(r"Duplicate key '(.*)'", str(exc))
        if dup and line is None:  # pySigma's loader raises this one without a mark
            where = current if current is not None else text   # in the document being read
            hits = [m.start() for m in re.finditer(
                r"^[ \t]*(?:-[ \t]+)?['\"]?" + re.escape(dup.group(1)) + r"['\"]?[ \t]*:",
                where, re.MULTILINE)]
            if len(hits) > 1:
                line = _line_at(where, hits[1])
        out.rejected.append(Problem(path, line, "YAML syntax error: " + ": ".join(parts)))
        return out
    finally:
        if loader is not None:
            loader.dispose()
    if not docs:
        out.rejected.append(Problem(path, None, "empty file (no Sigma rule)"))
        return out
    n = _count_values([d.get("detection") or d.get("filter") for d, _ in docs
                       if isinstance(d, dict)],
                      MAX_RULE_VALUES)      # a filter document's selections count too
    if n > MAX_RULE_VALUES:
        out.rejected.append(Problem(path, _key_line(text, "detection"),
                                    f"too many detection values (more than {MAX_RULE_VALUES:,} in one "
                                    f"file): split the rule"))
        return out
    bad = _condition_problem(docs)
    if bad is not None:
        out.rejected.append(Problem(path, _key_line(text, bad[1]), bad[0]))
        return out
    collection = next((t for d, t in docs if isinstance(d, dict) and "action" in d), None)
    if collection is not None:
        out.rejected.append(Problem(path, _key_line(collection, "action") or _first_line(collection),
                                    "Sigma rule collections (action: global/reset/repeat) "
                                    "are not supported; write each rule as its own document"))
        return out
    from sigma.exceptions import SigmaRuleLocation

    for doc, text in docs:      # from here on, ``text`` is the document's own text
        if not isinstance(doc, dict):
            out.rejected.append(Problem(path, _first_line(text),
                                        "not a Sigma rule (the document is not a mapping)"))
            continue
        if "correlation" in doc or ("filter" in doc and "detection" not in doc):
            load_meta_document(doc, path, text, _locator(text), out, placeholders)
            continue
        ident, name = _ident(doc)
        if doc.get("id") is not None and not isinstance(doc["id"], str):
            # (pySigma raised AttributeError on a number or a list here)
            out.rejected.append(Problem(path, _line_of(text, r"^['\"]?id['\"]?[ \t]*:") or _first_line(text),
                                        "Sigma rule identifier must be an UUID (text)", ident, name))
            continue
        try:
            srule = SigmaRule.from_dict(doc, source=SigmaRuleLocation(Path(path)), policy=_policy())
            prepare_rule(srule, placeholders, text)
        except Exception as exc:
            line = exc.line if isinstance(exc, RuleError) and exc.line else _locate(text, exc)
            reason = exc.message if isinstance(exc, RuleError) else _reason(exc)
            # a missing key (no detection) has no line of its own: the document's start
            out.rejected.append(Problem(path, line or _first_line(text), reason, ident, name))
            continue
        not_app = logsource_problem(srule.logsource)
        try:
            rule = rule_from_sigma(srule, path, text)
        except RuleError as exc:
            out.rejected.append(Problem(path, exc.line or _first_line(text), exc.message,
                                        ident, name))
            continue
        if not_app:
            out.not_applicable.append(Problem(path, _key_line(text, "logsource")
                                              or _first_line(text), not_app, ident, name))
            continue
        bad = backtracking_problem(rule, allow_backtracking)
        if bad is not None:
            out.rejected.append(Problem(path, _pattern_line(text, bad[0]), bad[1], ident, name))
        else:
            out.rules.append(rule)
    return out


def load_sigma_file(path: str | os.PathLike, allow_backtracking=(),
                    placeholders=None) -> FileResult:
    """Read and convert one Sigma YAML file."""
    p = str(path)
    try:
        raw = read_regular(p, MAX_RULE_FILE_BYTES)
    except OSError as exc:
        return FileResult(rejected=[Problem(p, None, f"cannot read: {exc.strerror or exc}")])
    if raw is None:
        return FileResult(rejected=[Problem(p, None, f"rule file too large (more than "
                                                     f"{MAX_RULE_FILE_BYTES:,} bytes): split it")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return FileResult(rejected=[Problem(p, line, f"not UTF-8 text: {exc.reason}")])
    return load_sigma_text(text, p, allow_backtracking, placeholders)


def field_warnings(rule: Rule) -> list[str]:
    """Sources that never provide a field the rule reads (one message per field)."""
    out = []
    for name in sorted(f for f in rule.fields if f is not None and f not in DERIVED_FIELDS):
        lacking = [src for src, fields in SOURCE_FIELDS.items() if name not in fields]
        if len(lacking) == len(SOURCE_FIELDS):
            out.append(f"reads {name}, which no event source provides "
                       "(predicates on it are always false)")
        elif lacking:
            out.append(f"reads {name}, which {' and '.join(lacking)} never provide"
                       f"{'s' if len(lacking) == 1 else ''}")
    return out


# ---------------------------------------------------------------------------------
# Rule preparation before conversion: placeholders and the specification's own checks.

_TIME_MODIFIERS = ("minute", "hour", "day", "week", "month", "year")


def prepare_rule(srule, placeholders=None, text: str = "") -> None:
    """Resolve ``|expand`` placeholders in a parsed rule (or filter) and apply the checks the
    specification states that pySigma does not (RuleError with a line when one fails)."""
    from sigma.modifiers import SigmaAllModifier, modifier_mapping

    from .placeholders import PlaceholderError, resolve_placeholders

    time_parts = {modifier_mapping[k]: k for k in _TIME_MODIFIERS if k in modifier_mapping}
    for item in _detection_items(srule.detection):
        used = [time_parts[m] for m in item.modifiers if m in time_parts]
        if used and item.field is None:
            raise RuleError(f"time-part modifiers need a field (|{used[0]} on a keyword)", None,
                            _line_of(text, r"^[^#\n]*\|" + re.escape(used[0]) + r"\b"))
        if len(used) > 1:   # pySigma keeps the last part only (|hour|minute reads the minute)
            raise RuleError(f"two time-part modifiers on one value (|{used[0]}|{used[1]}): a "
                            "value is compared with one part of the date; write one item per "
                            "part", None, _modifiers_line(text, used))
        if SigmaAllModifier in item.modifiers and len(item.original_value or ()) == 1:
            raise RuleError("the all modifier needs a list of values (specification: "
                            "\"Single item values are not allowed to have an all modifier\")",
                            None, _line_of(text, r"^[^#\n]*\|all\b"))
    try:
        resolve_placeholders(srule, placeholders)
    except PlaceholderError as exc:
        line = None
        if exc.name:
            line = _line_of(text, r"^[^#\n]*%" + re.escape(exc.name) + "%")
        raise RuleError(exc.message, None, line or _line_of(text, r"^[^#\n]*\|expand\b")) from None


_MODIFIER_CHAIN = re.compile(r"(?:\|\w+)+")      # |hour|minute (each found once: linear)
_KEY_END = re.compile(r"['\"]?[ \t]*:")         # what ends a key after its chain


def _modifiers_line(text: str, modifiers: list[str]) -> int | None:
    """The first line with a key that carries all of ``modifiers`` (``|name``, block or flow
    style; one pass over the text). The modifiers must be on one key: two items of a flow
    mapping, a value or a comment that mention them are not the item."""
    for i, line in enumerate(text.split("\n")):
        if "|" in line:
            code = line.split("#", 1)[0]
            for chain in _MODIFIER_CHAIN.finditer(code):
                have = set(chain.group().split("|"))
                if _KEY_END.match(code, chain.end()) and all(m in have for m in modifiers):
                    return _first_line(text) + i
    return None


def _detection_items(detection):
    from sigma.rule.detection import SigmaDetection

    def walk(d):
        for item in d.detection_items:
            if isinstance(item, SigmaDetection):
                yield from walk(item)
            else:
                yield item
    for det in detection.detections.values():
        yield from walk(det)


# ---------------------------------------------------------------------------------
# Correlation and filter documents (Sigma meta rules).

CORRELATION_KEYS = frozenset({"type", "rules", "group-by", "timespan", "condition", "aliases",
                              "generate"})
LEVELS = ("informational", "low", "medium", "high", "critical")
MAX_KEY_WARNINGS = 10    # unknown keys of one correlation named one by one


def _locator(doc: _DocText):
    """``line_of(key=None, pattern=None)`` for one document: the line of the first of the
    comma-separated ``key``s (or of ``pattern``) in the document, else the document's first
    line (the line its content starts on: a ``--- {...}`` document starts on its marker)."""
    lines: list[str] | None = None

    def line_of(key: str | None = None, pattern: str | None = None) -> int:
        nonlocal lines
        start = _first_line(doc)
        if key is None and pattern is None:
            return start
        if lines is None:
            lines = doc.split("\n")
        for k in (key.split(",") if key else [None]):
            rx = re.compile(pattern if k is None else
                            r"^[ \t]*(?:-[ \t]+)?['\"]?" + re.escape(k) + r"['\"]?[ \t]*:")
            for i, line in enumerate(lines):
                if rx.search(line):
                    return start + i
        return start
    return line_of


def _ident(doc: dict) -> tuple[str | None, str | None]:
    ident = doc.get("id")
    name = doc.get("name")
    return (str(ident) if isinstance(ident, (str, int)) and ident != "" else None,
            name if isinstance(name, str) and name else None)


def _strings(value, what: str) -> tuple[str, ...]:
    from .metarules import MetaError

    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                       for v in value):
        return tuple(str(v) for v in value)
    raise MetaError(f"{what}: must be a string or a list of strings")


def load_meta_document(doc: dict, path: str, text: str, line_of, out: FileResult,
                       placeholders=None) -> None:
    """A correlation or filter document into ``out`` (or a rejection with file:line)."""
    from .metarules import MetaError

    ident, name = _ident(doc)
    kind = "correlation" if "correlation" in doc else "filter"
    try:
        if kind == "correlation":
            corr, warnings = correlation_from_dict(doc, path, line_of)
            out.correlations.append(corr)
            out.warnings.extend(Problem(path, line, msg) for line, msg in warnings)
        else:
            flt, not_app = filter_from_dict(doc, path, text, line_of, placeholders)
            if not_app:
                out.not_applicable.append(Problem(path, line_of("logsource"), not_app))
            else:
                out.filters.append(flt)
    except MetaError as exc:
        out.rejected.append(Problem(path, exc.line or line_of(), exc.message, ident, name))
    except RuleError as exc:
        out.rejected.append(Problem(path, exc.line or line_of(), exc.message, ident, name))
    except Exception as exc:  # pySigma errors in a filter's detection
        out.rejected.append(Problem(path, _locate(text, exc) or line_of(), _reason(exc),
                                    ident, name))


def correlation_from_dict(doc: dict, path: str, line_of) -> tuple[Any, list]:
    """A correlation document as a :class:`~sensor.detect.metarules.Correlation`, and the
    warnings about it ((line, message) pairs)."""
    from .metarules import Correlation, MetaError

    def fail(msg: str, key: str | None = None, pattern: str | None = None):
        raise MetaError(msg, path, line_of(key, pattern) if (key or pattern) else line_of())

    warnings: list = []
    corr = doc.get("correlation")
    if not isinstance(corr, dict):
        fail("correlation: must be a mapping (type, rules, group-by, timespan, condition)",
             "correlation")
    title = doc.get("title")
    if not isinstance(title, str) or not title.strip():
        fail("a correlation needs a title (specification: title is mandatory)")
    if "name" in doc and not (isinstance(doc["name"], str) and doc["name"].strip()):
        # other correlations refer to it by name: dropping one silently broke them elsewhere
        fail("name: must be text (a correlation is referred to by its name)", "name")
    if doc.get("id") is not None and not isinstance(doc["id"], str):
        fail("id: must be text (a UUID)", "id")
    ident, name = _ident(doc)
    unknown = [key for key in corr if key not in CORRELATION_KEYS]
    # each named at its line (one search of the document apiece), so only the first few:
    # a hostile file with a hundred thousand keys must not cost keys x lines
    for key in unknown[:MAX_KEY_WARNINGS]:
        warnings.append((line_of(str(key)), f"correlation: unknown key {key!r} ignored"))
    if len(unknown) > MAX_KEY_WARNINGS:
        warnings.append((line_of("correlation"), f"correlation: {len(unknown) - MAX_KEY_WARNINGS:,} "
                                                 f"more unknown keys ignored"))
    ctype = corr.get("type")
    if not isinstance(ctype, str):
        fail("correlation type: missing", "correlation")
    try:
        rules = _strings(corr.get("rules"), "correlation rules")
        group_by = _strings(corr.get("group-by"), "correlation group-by")
    except MetaError as exc:
        fail(exc.message, "rules" if "rules" in exc.message else "group-by")
    cond_raw = corr.get("condition")
    condition: list = []
    field = None
    percentile = None
    if isinstance(cond_raw, str):
        fail("a string condition (a boolean expression over rule names) is a Sigma 2.2 draft "
             "for temporal correlations; not supported", "condition")
    elif isinstance(cond_raw, dict):
        for key, value in cond_raw.items():
            if key == "field":
                if isinstance(value, list):
                    fail("condition.field: a list of fields is not supported (the "
                         "specification does not define how several fields combine)",
                         "field")
                if not isinstance(value, str) or not value:
                    fail("condition.field: must be a field name", "field")
                field = value
            elif key == "percentile":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    fail("condition.percentile: must be a number from 0 to 100", "percentile")
                percentile = value
            elif key in ("gt", "gte", "lt", "lte", "eq", "neq"):
                condition.append((key, value))
            else:
                fail(f"condition: unknown key {key!r} (gt, gte, lt, lte, eq, neq, field, "
                     "percentile)", f"{key},condition")
    elif cond_raw is not None:
        fail("condition: must be a mapping such as {gte: 10}", "condition")
    gen_top, gen_in = doc.get("generate"), corr.get("generate")
    for g, where in ((gen_top, "generate"), (gen_in, "generate")):
        if g is not None and not isinstance(g, bool):
            fail("generate: must be true or false", where)
    if gen_top is not None and gen_in is not None and gen_top != gen_in:
        fail("generate: given at the top level and inside correlation with different values",
             "generate")
    generate = bool(gen_top if gen_top is not None else gen_in)
    aliases = corr.get("aliases") or {}
    if not isinstance(aliases, dict):
        fail("correlation aliases: must map alias names to {rule name: field}", "aliases")
    level = doc.get("level")
    if level is not None and (not isinstance(level, str) or level.lower() not in LEVELS):
        fail(f"level: must be one of {', '.join(LEVELS)}", "level")
    timespan = corr.get("timespan")
    meta: dict = {"format": "sigma", "kind": "correlation", "file": os.path.basename(path)}
    for key in ("status", "date", "modified", "license"):
        if doc.get(key) is not None:
            meta[key] = str(doc[key])
    if isinstance(doc.get("taxonomy"), str):
        meta["taxonomy"] = doc["taxonomy"]
    try:
        return Correlation(
            id=ident or (f"sigma-{Path(path).stem}-{name}" if name else
                         f"sigma-{Path(path).stem}-{line_of()}"),
            title=title.strip(), type=ctype, rules=rules,
            timespan=timespan if isinstance(timespan, str) else repr(timespan),
            group_by=group_by, condition=tuple(condition), field=field,
            percentile=percentile, aliases={str(k): dict(v) if isinstance(v, dict) else v
                                            for k, v in aliases.items()},
            generate=generate, name=name, level=(level or "medium").lower(),
            description=str(doc.get("description") or "").strip(),
            tags=tuple(str(t) for t in (doc.get("tags") or ()) if t is not None)
            if isinstance(doc.get("tags"), list) else (),
            author=str(doc.get("author") or ""),
            references=tuple(str(r) for r in doc.get("references") or ())
            if isinstance(doc.get("references"), list) else (),
            falsepositives=tuple(str(f) for f in doc.get("falsepositives") or ())
            if isinstance(doc.get("falsepositives"), list) else (),
            source=path, line=line_of(), meta=meta), warnings
    except MetaError as exc:
        msg = exc.message
        key = ("timespan,correlation" if "timespan" in msg else
               "type,correlation" if "correlation type" in msg else
               "rules,correlation" if "rules:" in msg else
               "aliases,correlation" if "aliases" in msg else
               "percentile,condition,correlation" if "percentile" in msg else
               "group-by,correlation" if "group-by" in msg else
               # an empty condition is the line that is wrong; a missing one, the correlation
               "condition,correlation" if "condition" in msg else "correlation")
        fail(msg, key)


def filter_from_dict(doc: dict, path: str, text: str, line_of, placeholders=None):
    """A filter document as a :class:`~sensor.detect.metarules.Filter`; and, when it cannot
    apply to any process_creation rule, why (the filter is then not applicable)."""
    from sigma.exceptions import SigmaRuleLocation
    from sigma.rule import SigmaRule

    from .metarules import DEFAULT_LOGSOURCE, Filter, MetaError, logsource_covers

    def fail(msg: str, key: str | None = None):
        raise MetaError(msg, path, line_of(key) if key else line_of())

    title = doc.get("title")
    if not isinstance(title, str) or not title.strip():
        fail("a filter needs a title (specification: title is mandatory)")
    ls = doc.get("logsource")
    if not isinstance(ls, dict) or not ls:
        fail("a filter needs a logsource (specification: logsource is mandatory)", "logsource")
    body = doc.get("filter")
    if not isinstance(body, dict):
        fail("filter: must be a mapping with rules, the selections and a condition", "filter")
    if "rules" not in body:
        fail("filter: needs rules (rule ids or names, or 'any')", "filter")
    raw = body["rules"]
    if isinstance(raw, str) and raw.strip().lower() == "any":
        targets = None
    elif raw is None or raw == []:
        targets = None      # pySigma: an empty list means every rule
    else:
        try:
            targets = _strings(raw, "filter rules")
        except MetaError as exc:
            fail(exc.message, "rules")
    cond = body.get("condition")
    if not isinstance(cond, str) or not cond.strip():
        fail("filter condition: must be a string (e.g. 'not selection')", "condition")
    dets = {k: v for k, v in body.items() if k not in ("rules", "condition")}
    if not dets:
        fail("filter: needs at least one selection", "filter")
    ident, _ = _ident(doc)
    srule = SigmaRule.from_dict({"title": title, "logsource": ls,
                                 "detection": {**dets, "condition": cond}},
                                source=SigmaRuleLocation(Path(path)), policy=_policy())
    prepare_rule(srule, placeholders, text)
    preds, condition = convert_condition(srule.detection.parsed_condition)
    logsource = {k: str(v) for k, v in (("category", srule.logsource.category),
                                        ("product", srule.logsource.product),
                                        ("service", srule.logsource.service)) if v}
    flt = Filter(id=ident or f"sigma-{Path(path).stem}-{line_of()}", title=title.strip(),
                 rules=targets, logsource=logsource, predicates=preds, condition=condition,
                 description=str(doc.get("description") or "").strip(), source=path,
                 line=line_of(), text=cond.strip())
    not_app = None
    if not (logsource_covers(logsource, DEFAULT_LOGSOURCE)
            or logsource_covers(logsource, {"category": CATEGORY})):
        not_app = (f"filter logsource {logsource} covers no {CATEGORY}/{PRODUCT} rule; "
                   "this sensor evaluates Windows process_creation rules only")
    return flt, not_app
