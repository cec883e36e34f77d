r"""Sigma placeholders (``|expand``): values from a placeholders file.

The file is YAML: each key a placeholder name, each value a string or number or a list of
them::

    Administrators: ['adm_*', 'Administrator']
    JumpServers: jump01

A value is a Sigma string, so ``*`` and ``?`` in it are wildcards (pySigma's
``value_placeholders``).  A placeholder with several values stands for any of them; several
placeholders in one value expand to every combination (at most :data:`MAX_EXPANSIONS`).
``\%`` keeps a percent sign literal, as the specification says (``\%plain%name%`` is the text
``%plain`` followed by the placeholder ``name``), whatever modifiers come before ``expand``
(``|contains|expand``, and ``|re|expand``, where it is a plain ``%`` in the expression);
``\\%name%`` is a backslash and then the placeholder (``DOMAIN\\%user%``).  Otherwise a value
reads as pySigma reads it: a placeholder lies between two wildcards at most, and its name holds
no backslash (``%a\*b%`` is the placeholder ``a*b``; ``%a*b%`` is text around a wildcard).
A rule whose placeholder has no value is rejected naming the placeholder: "If the tool isn't
able to handle placeholders, it must reject the rule."
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any, Mapping

MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 10_000
MAX_EXPANSIONS = 200        # per value, as pySigma bounds it


class PlaceholderError(ValueError):
    """A placeholders file that cannot be used, or a placeholder without a value."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 name: str | None = None):
        self.message, self.path, self.line, self.name = message, path, line, name
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        loc = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{loc}: {self.message}"


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "%" not in name and "\\" not in name


def load_placeholders(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Read a placeholders file; PlaceholderError (file:line) when it is not one."""
    import yaml

    from .pack import read_regular

    p = str(path)
    try:
        # opened non-blocking and refused unless regular (a FIFO would block the start)
        raw = read_regular(p, MAX_FILE_BYTES)
    except OSError as exc:
        raise PlaceholderError(f"cannot read placeholders file: {exc.strerror or exc}", p) from None
    if raw is None:
        raise PlaceholderError(f"placeholders file is larger than {MAX_FILE_BYTES} bytes", p)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlaceholderError(f"not UTF-8 text: {exc.reason}", p,
                               raw.count(b"\n", 0, exc.start) + 1) from None
    try:
        node = yaml.compose(text, yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PlaceholderError(f"YAML syntax error: {getattr(exc, 'problem', None) or exc}", p,
                               mark.line + 1 if mark is not None else None) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlaceholderError("a placeholders file maps names to values "
                               "(name: value, or name: [value, ...])", p, 1)
    lines = {}
    if node is not None and hasattr(node, "value") and isinstance(node.value, list):
        for k, v in node.value:
            lines[getattr(k, "value", None)] = k.start_mark.line + 1
    out: dict[str, tuple[str, ...]] = {}
    total = 0
    for name, value in data.items():
        line = lines.get(name if isinstance(name, str) else str(name))
        if not _valid_name(name):
            raise PlaceholderError(f"placeholder name {name!r} must be text without % or \\",
                                   p, line)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise PlaceholderError(f"placeholder {name!r} needs at least one value", p, line)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise PlaceholderError(f"placeholder {name!r}: values must be strings or "
                                       f"numbers, got {v!r}", p, line)
        total += len(values)
        if total > MAX_VALUES:
            raise PlaceholderError(f"more than {MAX_VALUES} placeholder values", p, line)
        out[name] = tuple(str(v) for v in values)
    return out


# Marks for the specification's \% while pySigma's modifiers run: a private-use character the
# item's values do not contain stands for each escaped percent sign, so no modifier and no
# placeholder reading can take it for a %; it becomes a plain % when the value is expanded.
_MARKS = range(0xE000, 0xF900)
_ESCAPE_PAIR = re.compile(r"\\(.)", re.DOTALL)


def _mark_escaped_percents(text: str, mark: str) -> str:
    r"""``text`` with each ``\%`` escape replaced by ``mark``.

    A backslash and the character after it are read as a pair, as pySigma reads a string's
    escapes (and as a regular expression reads ``\\``): ``\\%name%`` is an escaped backslash
    and then a placeholder, ``\%name%`` the text ``%name`` and then a plain ``%``.
    """
    return _ESCAPE_PAIR.sub(lambda m: mark if m.group(1) == "%" else m.group(0), text)


def _read_placeholders(parts: list, mark: str) -> list:
    """pySigma's reading of ``%name%`` in a value's parts (a placeholder lies within one text
    part, its name is not empty and holds no backslash; any other ``%`` is text), where
    ``mark`` is an escaped percent sign: never a placeholder's end, never in a name, and a
    plain ``%`` in the result."""
    from sigma.types import Placeholder

    # at each %, the name runs to the next %; a failed match makes that % text and the scan
    # goes on from the next character, as pySigma's does
    placeholder = re.compile("%([^%\\\\" + mark + "]+)%")
    out: list = []
    for part in parts:
        if not isinstance(part, str):
            out.append(part)
            continue
        pos = 0
        for m in placeholder.finditer(part):
            text = part[pos:m.start()]
            if text:
                out.append(text.replace(mark, "%"))
            out.append(Placeholder(m.group(1)))
            pos = m.end()
        text = part[pos:]
        if text:
            out.append(text.replace(mark, "%"))
    return out


@lru_cache(maxsize=1)
def _spec_expand():
    """pySigma's expand modifier, and the one that reads a marked value's placeholders with
    :func:`_read_placeholders` (its subclasses set ``mark``)."""
    from sigma.modifiers import SigmaExpandModifier
    from sigma.types import SigmaRegularExpression, SigmaString

    class SpecExpand(SigmaExpandModifier):
        def modify(self, val):
            if isinstance(val, SigmaRegularExpression):
                val.regexp.s = _read_placeholders(val.regexp.s, self.mark)
                val.compile()
            else:
                val.s = _read_placeholders(val.s, self.mark)
            return val

    SpecExpand.modify.__annotations__ = {
        "val": SigmaString | SigmaRegularExpression,
        "return": SigmaString | SigmaRegularExpression}
    return SigmaExpandModifier, SpecExpand


def _spec_escapes(item) -> None:
    r"""Re-read a detection item's values with the specification's ``\%`` escape, when a
    value uses it (pySigma reads it as a backslash before a placeholder), whatever modifiers
    come before ``expand`` (``|contains|expand``, ``|re|expand``)."""
    from sigma.rule.detection import SigmaDetectionItem
    from sigma.types import SigmaString

    pysigma_expand, spec_expand = _spec_expand()
    if pysigma_expand not in item.modifiers:
        return
    # pySigma refuses expand on a value that is not a string when it parses the rule, so
    # every value here is a SigmaString
    values = item.original_value or ()
    if not any("\\%" in v.original for v in values):
        return
    used = set().union(*(v.original for v in values))
    mark = next((chr(c) for c in _MARKS if chr(c) not in used), None)
    if mark is None:
        raise PlaceholderError("a value with \\% uses every private-use character "
                               f"(U+{_MARKS[0]:04X} to U+{_MARKS[-1]:04X}); the sensor marks "
                               "escaped percent signs with one of them")
    expand = type("SpecExpand", (spec_expand,), {"mark": mark})
    fresh = SigmaDetectionItem(item.field,
                               [expand if m is pysigma_expand else m for m in item.modifiers],
                               [SigmaString(_mark_escaped_percents(v.original, mark))
                                for v in values],
                               source=item.source, policy=getattr(item, "policy", None))
    item.value = fresh.value
    item.value_linking = fresh.value_linking
    item.negated = fresh.negated


def _names(parts) -> list[str]:
    from sigma.types import Placeholder
    return [p.name for p in parts if isinstance(p, Placeholder)]


def _expand_value(value, values: Mapping[str, tuple[str, ...]] | None) -> list | None:
    """The values one detection value becomes (None: unchanged)."""
    from sigma.types import SigmaExpansion, SigmaRegularExpression, SigmaString

    if isinstance(value, SigmaExpansion):
        inner = [_expand_value(v, values) for v in value.values]
        if all(x is None for x in inner):
            return None
        flat = []
        for v, x in zip(value.values, inner):
            flat.extend([v] if x is None else x)
        return [SigmaExpansion(flat)]
    if isinstance(value, SigmaRegularExpression):
        s = value.regexp
    elif isinstance(value, SigmaString):
        s = value
    else:
        return None
    if not s.contains_placeholder():
        return None
    names = _names(s.s)
    for name in names:
        if not values or name not in values:
            raise PlaceholderError(
                f"placeholder %{name}% has no value: give it one in a placeholders file "
                "([rules] placeholders in the config, or --placeholders FILE)", name=name)
    count = 1
    for name in names:
        count *= len(values[name])
    if count > MAX_EXPANSIONS:
        raise PlaceholderError(f"placeholders expand one value into {count} values "
                               f"(at most {MAX_EXPANSIONS})", name=names[0])
    return list(value.replace_placeholders(
        lambda p: [SigmaString(v) for v in values[p.name]]))


def resolve_placeholders(srule, values: Mapping[str, tuple[str, ...]] | None) -> None:
    """Replace every placeholder of a parsed pySigma rule with its values (in place).

    A value list stands where the value stood, as pySigma's ``value_placeholders`` puts it
    (so under ``|all`` every expansion must hold).
    """
    from sigma.rule.detection import SigmaDetection

    def walk(d):
        for item in d.detection_items:
            if isinstance(item, SigmaDetection):
                walk(item)
                continue
            _spec_escapes(item)
            new, changed = [], False
            for v in item.value:
                x = _expand_value(v, values)
                if x is None:
                    new.append(v)
                else:
                    new.extend(x)
                    changed = True
            if changed:
                item.value = new

    for det in srule.detection.detections.values():
        walk(det)
