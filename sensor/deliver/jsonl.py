"""A local JSON Lines file: one document per line, written and fsynced before success is reported.

A batch is one ``write`` of all its lines and one ``fsync`` (durability per batch): the file is
opened for each batch and closed after it, so it is never held open between batches (rotation,
and on Windows a rename, stay possible), through a raw descriptor rather than a buffered file
object. Its folder is created once; a folder removed later is created again."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._files import open_private_fd
from .protocol import OK, RETRY, SendResult
from .ecs import to_ecs
from .http import encode_failure, encode_json


class JsonlOutput:
    """Appends alerts (ECS documents by default) to ``path``."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike, document: str = "ecs") -> None:
        if document not in ("ecs", "alert"):
            from .tls import ConfigError
            raise ConfigError("document must be ecs or alert")
        self.path = Path(path)
        self.document = document
        self._lock = threading.Lock()
        self._opened = False   # the folder exists (made on the first batch)

    def send_batch(self, alerts: Sequence[Mapping[str, Any]]) -> SendResult:
        """Append and fsync; an I/O error keeps the alerts in the spool."""
        rejected: dict[str, str] = {}
        lines = []
        ids = []
        ecs = self.document == "ecs"
        for a in alerts:
            try:
                lines.append(encode_json(to_ecs(a) if ecs else dict(a)))
                ids.append(str(a.get("id")))
            except Exception as exc:  # noqa: BLE001 - that alert's rejection (encode_failure)
                rejected[str(a.get("id"))] = encode_failure(exc)
        data = b"\n".join(lines) + b"\n" if lines else b""
        try:
            with self._lock:
                try:   # alerts hold command lines: 0600
                    fd = open_private_fd(self.path, make_parents=not self._opened)
                except FileNotFoundError:
                    if not self._opened:
                        raise
                    fd = open_private_fd(self.path)   # the folder went away: make it again
                self._opened = True
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            return SendResult(RETRY, error=f"cannot write {self.path}: {exc.strerror or exc}")
        return SendResult(OK, delivered=ids, rejected=rejected)

    def close(self) -> None:
        pass
