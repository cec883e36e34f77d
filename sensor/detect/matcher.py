"""Rule matching: the compiled engine when it is built, else the reference one.

Both engines keep the :class:`Matcher` contract; ``sensor.detect._matcher_py`` (the reference)
defines what a match is and ``sensor.detect._matcher`` (Cython) must give the same answers.
``SENSOR_NO_EXTENSIONS=1`` forces the reference.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from .._native import NO_EXTENSIONS
from ._matcher_py import Matcher as ReferenceMatcher
from .ir import Rule


@runtime_checkable
class Matcher(Protocol):
    """What every engine offers."""

    engine: str              # "compiled" or "reference"
    rules: list[Rule]        # the rules, in the order ``match`` indexes them

    def match(self, event: Mapping[str, Any]) -> list[int]:
        """Indices into ``rules`` of the rules whose condition holds for ``event``, ascending."""
        ...


CompiledMatcher = None
if not NO_EXTENSIONS:
    try:
        from ._matcher import Matcher as CompiledMatcher  # type: ignore[no-redef]
    except ImportError:  # not built: fall back to the reference
        CompiledMatcher = None

ENGINES = {"reference": ReferenceMatcher}
if CompiledMatcher is not None:
    ENGINES["compiled"] = CompiledMatcher
DEFAULT_ENGINE = "compiled" if CompiledMatcher is not None else "reference"


def create(rules: Sequence[Rule], engine: str | None = None,
           regex_budget: int | None = None) -> Matcher:
    """A matcher over ``rules``; ``engine`` is "compiled", "reference" or None (the best built).

    ``regex_budget``: steps a regex on the backtracking engine may take per search (only
    rules the loader let through with ``allow_backtracking`` have one; default
    sensor.detect.backtrack.DEFAULT_BUDGET)."""
    try:
        cls = ENGINES[engine or DEFAULT_ENGINE]
    except KeyError:
        raise ValueError(f"matcher engine {engine!r} is not available "
                         f"(have: {', '.join(sorted(ENGINES))})") from None
    return cls(rules, regex_budget=regex_budget)


def batch_of(match: Callable[[Mapping[str, Any]], list[int]], events: Iterable) -> list:
    """What a batch call answers, defined by ``match`` on each event in turn: per event, in
    order, a tuple of its matching rules' indices, ascending (``()`` when none), or the
    ``Exception`` its evaluation raised (the events after it are still evaluated)."""
    out: list = []
    for ev in events:
        try:
            out.append(tuple(match(ev)))
        except Exception as exc:  # noqa: BLE001 - the caller counts it; the batch goes on
            out.append(exc)
    return out


def match_batch(matcher: Matcher, events: Iterable) -> list:
    """The answers of ``matcher`` for ``events`` as :func:`batch_of` defines them; the
    compiled engine evaluates the whole batch in one call (``Matcher.match_batch``), which
    saves the Python call and the result list per event."""
    fast = getattr(matcher, "match_batch", None)
    if fast is not None:
        return fast(events)
    return batch_of(matcher.match, events)
