r"""Sigma placeholders (``|expand``): values from a placeholders file.

The file is YAML: each key a placeholder name, each value a string or number or a list of
them::

    Administrators: ['adm_*', 'Administrator']
    JumpServers: jump01

A value is a Sigma string, so ``*`` and ``?`` in it are wildcards (pySigma's
``value_placeholders``).  A placeholder with several values stands for any of them; several
placeholders in one value expand to every combination (at most :data:`MAX_EXPANSIONS`).
``\%`` keeps a percent sign literal, as the specification says (``\%plain%name%`` is the text
``%plain`` followed by the placeholder ``name``); ``\\%name%`` is a backslash and then the
placeholder (``DOMAIN\\%user%``).  A rule whose placeholder has no value is rejected naming
the placeholder: "If the tool isn't able to handle placeholders, it must reject the rule."
"""
from __future__ import annotations

import os
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


def spec_parts(text: str) -> list:
    r"""A value's parts read with the Sigma escapes and the specification's placeholder escape.

    ``\\`` ``\*`` ``\?`` are a literal backslash, star and question mark (rules
    specification, "Escaping"); ``\%`` is a literal percent sign ("A plain percent character can
    be used by escaping it with a backslash"); ``%name%`` is a placeholder; ``*`` and ``?``
    are wildcards.  pySigma reads ``\%`` as a backslash and then looks for a placeholder.
    """
    from sigma.types import Placeholder, SpecialChars

    out: list = []

    def emit(s: str) -> None:
        if out and isinstance(out[-1], str):
            out[-1] += s
        else:
            out.append(s)

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "\\*?%":
            emit(text[i + 1])
            i += 2
        elif c == "*":
            out.append(SpecialChars.WILDCARD_MULTI)
            i += 1
        elif c == "?":
            out.append(SpecialChars.WILDCARD_SINGLE)
            i += 1
        elif c == "%":
            end = text.find("%", i + 1)
            name = text[i + 1:end] if end > i + 1 else ""
            if name and "\\" not in name:
                out.append(Placeholder(name))
                i = end + 1
            else:
                emit("%")
                i += 1
        else:
            emit(c)
            i += 1
    return out


@lru_cache(maxsize=1)
def _spec_expand():
    """pySigma's expand modifier, reading an unmodified value with :func:`spec_parts`."""
    from sigma.modifiers import SigmaExpandModifier
    from sigma.types import SigmaRegularExpression, SigmaString

    class SpecExpand(SigmaExpandModifier):
        def modify(self, val):
            original = getattr(val, "original", None)
            if isinstance(val, SigmaString) and isinstance(original, str) and \
                    list(SigmaString(original).s) == list(val.s):
                out = SigmaString(original)
                out.s = spec_parts(original)
                return out
            return super().modify(val)

    SpecExpand.modify.__annotations__ = {
        "val": SigmaString | SigmaRegularExpression,
        "return": SigmaString | SigmaRegularExpression}
    return SigmaExpandModifier, SpecExpand


def _spec_escapes(item) -> None:
    r"""Re-read a detection item's values with the specification's ``\%`` escape, when a
    value uses it (pySigma reads it otherwise)."""
    import copy

    from sigma.rule.detection import SigmaDetectionItem
    from sigma.types import SigmaString

    pysigma_expand, spec_expand = _spec_expand()
    if pysigma_expand not in item.modifiers:
        return
    if not any(
            isinstance(v, SigmaString) and "\\%" in (getattr(v, "original", "") or "")
            for v in item.original_value or ()):
        return
    fresh = SigmaDetectionItem(item.field,
                               [spec_expand if m is pysigma_expand else m for m in item.modifiers],
                               [SigmaString(v.original)
                                if isinstance(v, SigmaString) and isinstance(v.original, str)
                                else copy.deepcopy(v) for v in item.original_value],
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
