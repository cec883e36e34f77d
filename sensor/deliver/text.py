"""Text a receiver can carry.

Windows lets a command line (and so an alert, an alert id, a receiver's error text that echoes
one) hold lone UTF-16 surrogates, which UTF-8 and JSON cannot carry. Every delivery path, the
spool and each output, repairs them with this one function, so the SIEM sees the same text
whichever path an alert took: the text read as UTF-16 would read it, two halves of a pair held
as two characters joined into one character, each lone half one U+FFFD.
"""
from __future__ import annotations

from typing import Any, Mapping

_FIRST_SURROGATE = "\ud800"
_LAST_SURROGATE = "\udfff"


def has_surrogate(text: str) -> bool:
    """True when ``text`` holds a UTF-16 surrogate code point (paired or not)."""
    return any(_FIRST_SURROGATE <= c <= _LAST_SURROGATE for c in text)


def repair_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD and each split pair joined."""
    if not has_surrogate(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def repair(value: Any) -> Any:
    """``value`` with :func:`repair_text` applied to every string in it, keys included
    (mappings become dicts and sequences lists, as JSON holds them; other values unchanged)."""
    if isinstance(value, str):
        return repair_text(value)
    if isinstance(value, Mapping):
        return {repair(k): repair(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [repair(v) for v in value]
    return value
