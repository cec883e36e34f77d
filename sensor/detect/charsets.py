"""Exact character sets of Python ``re`` nodes (shared by the RE2 translation and the
budgeted backtracking engine; see sensor.detect.regex for the method)."""
from __future__ import annotations

import array
import bisect
import re
import re._compiler as _compiler
import re._constants as _K
import re._parser as _parser
from dataclasses import dataclass

# Non-ASCII letters that Python's IGNORECASE relates to ASCII letters (re module docs,
# IGNORECASE: "[a-z] ... will match the 52 ASCII letters and 4 additional non-ASCII letters").
_ASCII_CASE_PARTNERS = (0x130, 0x131, 0x17F, 0x212A)
_MAXCP = 0x110000
_CATS = {"d": 1, "s": 2, "w": 4}


class RegexUnsupported(ValueError):
    """The regex needs a backtracking engine (or more than RE2 allows); ``reason`` says why.
    ``refused``: no engine may run it (preparing it would cost too much)."""

    def __init__(self, reason: str, refused: bool = False):
        self.reason = reason
        self.refused = refused
        super().__init__(reason)


def py_flags(flags: str) -> int:
    """Python ``re`` flags for the IR's regex flag letters (``i``, ``m``, ``s``)."""
    out = 0
    if "i" in flags:
        out |= re.IGNORECASE
    if "m" in flags:
        out |= re.MULTILINE
    if "s" in flags:
        out |= re.DOTALL
    return out


# ---------------------------------------------------------------------------------
# Character sets.

def cat_bits(cp: int) -> int:
    """Unicode category bits of a code point, as ``re`` tests them for str patterns:
    1 decimal digit (``\\d``), 2 whitespace (``\\s``), 4 alphanumeric (``\\w``)."""
    ch = chr(cp)
    return (1 if ch.isdecimal() else 0) | (2 if ch.isspace() else 0) | (4 if ch.isalnum() else 0)


@dataclass(frozen=True)
class CharSet:
    """A set of code points: ``ascii`` is a 128-bit mask; a non-ASCII code point is a member
    when ``neg`` XOR (it is in one of the ``atoms``).  An atom is ``("r", ranges)`` (explicit
    inclusive ranges) or ``("c", bits, positive)`` (category bits all set / not all set)."""

    ascii: int
    neg: bool
    atoms: frozenset

    def has_nonascii(self, cp: int, bits: int) -> bool:
        hit = False
        for a in self.atoms:
            if a[0] == "r":
                hit = _in_ranges(a[1], cp)
            else:
                hit = ((bits & a[1]) == a[1]) == a[2]
            if hit:
                break
        return hit != self.neg

    def __contains__(self, cp: int) -> bool:
        if cp < 128:
            return bool(self.ascii >> cp & 1)
        return self.has_nonascii(cp, cat_bits(cp))


def _in_ranges(ranges: tuple, cp: int) -> bool:
    i = bisect.bisect_right(ranges, (cp, _MAXCP)) - 1
    return i >= 0 and ranges[i][0] <= cp <= ranges[i][1]


_ALL = "all"
_NONE = "none"


def _union(parts: list) -> tuple[bool, frozenset]:
    """(neg, atoms) of a union of parts, each _ALL, _NONE or an atom."""
    if _ALL in parts:
        return True, frozenset()
    return False, frozenset(p for p in parts if p != _NONE)


def _node_regex(node, flags: int) -> re.Pattern:
    """A compiled Python pattern that is just this one node under these flags."""
    state = _parser.State()
    state.flags = flags
    return _compiler.compile(_parser.SubPattern(state, [node]), 0)


_NONASCII_TEXT: str | None = None


def _nonascii_text() -> str:
    """Every non-ASCII code point, in order (built on first need, then kept)."""
    global _NONASCII_TEXT
    if _NONASCII_TEXT is None:
        _NONASCII_TEXT = array.array("I", range(128, _MAXCP)).tobytes().decode(
            "utf-32-le", "surrogatepass")
    return _NONASCII_TEXT


_SCANS: dict = {}
# Each set computed by a scan costs ~0.1 s: a regex may need at most this many (SigmaHQ's
# need none); more is refused, which bounds the work of loading any regex.
MAX_SCANS_PER_REGEX = 8
scan_count = [0]


def _scan_ranges(node, flags: int) -> tuple:
    """Non-ASCII members of a one-character node, by running Python's engine over every
    non-ASCII code point (the exact answer, whatever the node)."""
    scan_count[0] += 1
    if scan_count[0] > MAX_SCANS_PER_REGEX:
        raise RegexUnsupported(f"needs more than {MAX_SCANS_PER_REGEX} case-insensitive "
                               "non-ASCII character sets", refused=True)
    key = (_freeze(node), flags)
    got = _SCANS.get(key)
    if got is None:
        state = _parser.State()
        state.flags = flags
        rx = _node_regex((_K.MAX_REPEAT, (1, _K.MAXREPEAT, _parser.SubPattern(state, [node]))),
                         flags)
        got = _SCANS[key] = tuple((128 + m.start(), 128 + m.end() - 1)
                                  for m in rx.finditer(_nonascii_text()))
    return got


def _freeze(node):
    """A hashable key for a parser node."""
    if isinstance(node, (list, tuple)):
        return tuple(_freeze(x) for x in node)
    if isinstance(node, _parser.SubPattern):
        return ("sub",) + tuple(_freeze(x) for x in node.data)
    return node if isinstance(node, (int, str, type(None))) else str(node)


_MASKS: dict = {}


def _ascii_mask(node, flags: int) -> int:
    """The ASCII members of a one-character node (bit c set: chr(c) matches)."""
    key = (_freeze(node), flags)
    mask = _MASKS.get(key)
    if mask is None:
        rx = _node_regex(node, flags)
        mask = 0
        for c in range(128):
            if rx.fullmatch(chr(c)) is not None:
                mask |= 1 << c
        _MASKS[key] = mask
    return mask


def _partners(node, flags: int) -> frozenset:
    """Which of the four ASCII case partners a one-character node matches."""
    rx = _node_regex(node, flags)
    return frozenset(c for c in _ASCII_CASE_PARTNERS if rx.fullmatch(chr(c)) is not None)


def _cat_atom(code, ascii_only: bool):
    """A CATEGORY item's non-ASCII part."""
    name = code.name if hasattr(code, "name") else str(code)
    table = {
        "CATEGORY_DIGIT": ("d", True), "CATEGORY_NOT_DIGIT": ("d", False),
        "CATEGORY_SPACE": ("s", True), "CATEGORY_NOT_SPACE": ("s", False),
        "CATEGORY_WORD": ("w", True), "CATEGORY_NOT_WORD": ("w", False),
    }
    if name not in table:
        raise RegexUnsupported(f"character category {name} is not supported")
    cat, positive = table[name]
    if ascii_only:        # (?a): the category holds no non-ASCII character
        return _NONE if positive else _ALL
    return ("c", _CATS[cat], positive)


def char_set(node, flags: int) -> CharSet:
    """The exact set of code points a one-character node matches under ``flags``."""
    mask = _ascii_mask(node, flags)
    op, av = node
    icase = bool(flags & re.IGNORECASE)
    ascii_only = bool(flags & re.ASCII)

    def scanned() -> CharSet:
        rng = _scan_ranges(node, flags)
        return CharSet(mask, False, frozenset([("r", rng)]) if rng else frozenset())

    if op is _K.ANY:
        return CharSet(mask, True, frozenset())
    if op is _K.NOT_LITERAL:      # the complement of the literal (Python tests it so)
        pos = char_set((_K.LITERAL, av), flags)
        return CharSet(mask, not pos.neg, pos.atoms)
    if op is _K.LITERAL:
        if av < 128:
            part = _partners(node, flags) if icase else frozenset()
            return CharSet(mask, False, frozenset([("r", tuple((c, c) for c in sorted(part)))])
                           if part else frozenset())
        if not icase:
            return CharSet(mask, False, frozenset([("r", ((av, av),))]))
        return scanned()
    if op is _K.IN:
        items = list(av)
        neg = bool(items) and items[0][0] is _K.NEGATE
        if neg:
            items = items[1:]
        has_cat = any(it[0] is _K.CATEGORY for it in items)
        cased = any(it[0] in (_K.LITERAL, _K.RANGE) for it in items)
        if icase and has_cat and cased:
            # Python tests categories on the lower-cased character here: computed exactly.
            return scanned()
        parts: list = []
        for it in items:
            iop, iav = it
            if iop is _K.CATEGORY:
                parts.append(_cat_atom(iav, ascii_only))
            elif iop in (_K.LITERAL, _K.RANGE):
                lo, hi = (iav, iav) if iop is _K.LITERAL else iav
                if hi < 128:
                    if icase:
                        part = _partners((_K.IN, [it]), flags)
                        if part:
                            parts.append(("r", tuple((c, c) for c in sorted(part))))
                    continue
                if icase:
                    rng = _scan_ranges((_K.IN, [it]), flags)
                    if rng:
                        parts.append(("r", rng))
                else:
                    parts.append(("r", ((max(lo, 128), hi),)))
            else:
                raise RegexUnsupported(f"class item {iop} is not supported")
        uneg, atoms = _union(parts)
        return CharSet(mask, uneg != neg, atoms)
    raise RegexUnsupported(f"{op} is not a character node")
