"""A local JSON Lines file: one document per line, flushed and fsynced before success is reported."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._files import open_private
from .protocol import OK, RETRY, SendResult
from .ecs import to_ecs
from .http import encode_json


class JsonlOutput:
    """Appends alerts (ECS documents by default) to ``path``."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike, document: str = "ecs") -> None:
        self.path = Path(path)
        self.document = document
        self._lock = threading.Lock()

    def send_batch(self, alerts: Sequence[Mapping[str, Any]]) -> SendResult:
        """Append and fsync; an I/O error keeps the alerts in the spool."""
        rejected: dict[str, str] = {}
        lines = []
        ids = []
        for a in alerts:
            try:
                lines.append(encode_json(to_ecs(a) if self.document == "ecs" else dict(a)) + b"\n")
                ids.append(str(a.get("id")))
            except (TypeError, ValueError) as exc:
                rejected[str(a.get("id"))] = f"cannot encode: {exc}"
        try:
            with self._lock:
                with open_private(self.path, "ab") as f:   # alerts hold command lines: 0600
                    f.write(b"".join(lines))
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            return SendResult(RETRY, error=f"cannot write {self.path}: {exc.strerror or exc}")
        return SendResult(OK, delivered=ids, rejected=rejected)

    def close(self) -> None:
        pass
