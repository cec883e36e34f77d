"""etw-sensor: a lightweight Windows endpoint sensor with a compiled Sigma matcher.

The engine can be embedded; this small API stays stable across internal moves::

    import sensor
    rules, report = sensor.load_rules(["rules/"])          # Sigma YAML, folders, packs
    matcher = sensor.create_matcher(rules)                 # engine="compiled" | "reference"
    for event in sensor.read_events(["events.jsonl.gz"]):  # .evtx, .jsonl, .jsonl.gz
        for i in matcher.match(event):
            print(rules[i].title, event["CommandLine"])
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from .events import ProcessEvent

if TYPE_CHECKING:
    import os

    from .detect.ir import Rule
    from .detect.loader import LoadReport
    from .detect.matcher import Matcher
    from .sources.base import ReadStats

__version__ = "0.1.0"
__all__ = ["ProcessEvent", "create_matcher", "load_rules", "read_events", "__version__"]


def read_events(paths: Iterable[str | os.PathLike], stats: ReadStats | None = None) -> Iterator[ProcessEvent]:
    """Every process start in ``paths`` (files or folders of .evtx, .jsonl, .jsonl.gz).

    A record that cannot be read is skipped and reported in ``stats`` (a
    ``sensor.sources.base.ReadStats``) with its file and line or record number.
    """
    from .sources import read_paths
    return read_paths(paths, stats)


def load_rules(paths: Sequence[str | os.PathLike] = (), builtin: bool = True,
               allow_backtracking: Sequence[str] = (),
               placeholders=None) -> tuple[list[Rule], LoadReport]:
    """The rules in ``paths`` (Sigma YAML files or folders, rule packs), after the built-in rule
    unless ``builtin=False``; and the load report (rejected rules with file:line and reason;
    ``report.correlations``: the Sigma correlation rules, evaluated by
    ``sensor.detect.correlate.CorrelationEngine``).  ``allow_backtracking``: ids of rules whose
    regexes may run on the step-budgeted backtracking engine (others with such a regex are
    rejected).  ``placeholders`` maps ``|expand`` placeholder names to their values."""
    from .detect.loader import load_rules as _load
    report = _load(paths, builtin=builtin, allow_backtracking=allow_backtracking,
                   placeholders=placeholders)
    return report.rules, report


def create_matcher(rules: Sequence[Rule], engine: str | None = None,
                   regex_budget: int | None = None) -> Matcher:
    """A matcher over ``rules``: ``.match(event)`` gives the indexes of the matching rules.

    ``engine`` is ``"compiled"``, ``"reference"`` (the pure-Python twin that defines the
    semantics) or None for the best one built.  ``regex_budget``: steps per search for
    regexes on the backtracking engine (rules loaded with ``allow_backtracking``).
    """
    from .detect.matcher import create
    return create(rules, engine, regex_budget)
