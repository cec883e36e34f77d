"""An in-memory output for tests and dry runs: keeps what it is given, answers as scripted."""
from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Sequence

from .protocol import OK, SendResult


class MemoryOutput:
    """Records every alert it accepts; ``script`` (a callable) can answer instead of OK."""

    name = "memory"

    def __init__(self, script: Callable[[Sequence[Mapping[str, Any]]], SendResult | None] | None = None) -> None:
        self.script = script
        self.alerts: list[dict] = []
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    @property
    def ids(self) -> list[str]:
        return [str(a.get("id")) for a in self.alerts]

    def send_batch(self, alerts: Sequence[Mapping[str, Any]]) -> SendResult:
        """Accept (or answer as scripted)."""
        ids = [str(a.get("id")) for a in alerts]
        with self._lock:
            self.calls.append(ids)
        result = self.script(alerts) if self.script else None
        if result is None:
            result = SendResult(OK, delivered=ids)
        with self._lock:
            keep = set(result.delivered)
            self.alerts.extend(dict(a) for a in alerts if str(a.get("id")) in keep)
        return result

    def close(self) -> None:
        pass
