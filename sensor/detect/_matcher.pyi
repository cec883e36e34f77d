"""Type stubs for the compiled matcher (native/_matcher.pyx)."""
from typing import Any, Iterable, Mapping, Sequence

from ..._matcher.rules.ir import Rule

ENGINE: str
LAZY_FIELDS: tuple[str, ...]

class Matcher:
    """Evaluate a rule set against events; ``match`` returns indices into ``rules``."""

    engine: str
    rules: list[Rule]
    def __init__(self, rules: Sequence[Rule], lazy_fields: Iterable[str] = ...) -> None: ...
    def match(self, event: Mapping[str, Any]) -> list[int]: ...
    def match_rules(self, event: Mapping[str, Any]) -> list[Rule]: ...
    def candidates(self, event: Mapping[str, Any]) -> list[int]: ...
    @property
    def stats(self) -> dict[str, Any]: ...
