"""Rule matching: the compiled engine when it is built, else the reference one.

``SENSOR_NO_EXTENSIONS=1`` forces the pure-Python reference matcher.
"""
from __future__ import annotations

import os
from typing import Sequence

from ._matcher_py import Matcher as ReferenceMatcher
from .rules.ir import Rule

NO_EXTENSIONS = bool(os.environ.get("SENSOR_NO_EXTENSIONS"))

CompiledMatcher = None
if not NO_EXTENSIONS:
    try:
        from ._matcher import Matcher as CompiledMatcher  # type: ignore[no-redef]
    except ImportError:  # not built: fall back to the reference
        CompiledMatcher = None

Matcher = CompiledMatcher or ReferenceMatcher

ENGINES = {"reference": ReferenceMatcher}
if CompiledMatcher is not None:
    ENGINES["compiled"] = CompiledMatcher


def create(rules: Sequence[Rule], engine: str | None = None):
    """A matcher over ``rules``; ``engine`` is "compiled", "reference" or None (best)."""
    if engine is None:
        return Matcher(rules)
    try:
        return ENGINES[engine](rules)
    except KeyError:
        raise ValueError(f"matcher engine {engine!r} is not available "
                         f"(have: {', '.join(sorted(ENGINES))})") from None
