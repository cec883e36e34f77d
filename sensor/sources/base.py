"""What every replay reader shares: input errors and read statistics."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


MAX_ERRORS_KEPT = 1000  # input errors kept for the report; the rest are counted


@dataclass(frozen=True)
class InputError:
    """A problem with one input: file, where in it (line/record), and what."""

    path: str
    where: str | None
    message: str

    def __str__(self) -> str:
        loc = f"{self.path}:{self.where}" if self.where else self.path
        return f"{loc}: {self.message}"


@dataclass
class ReadStats:
    """Counters for one read (a scan or a replay)."""

    files: int = 0
    records: int = 0          # records/lines seen
    events: int = 0           # process starts produced
    skipped: int = 0          # records that are not process starts
    skipped_by_id: Counter = field(default_factory=Counter)
    errors: list[InputError] = field(default_factory=list)  # the first MAX_ERRORS_KEPT
    error_count: int = 0      # all of them
    # Where the event just yielded came from: (file, "line" or "record", number).
    position: tuple | None = None

    def error(self, path, where, message) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:  # a file of bad lines must not fill the memory
            self.errors.append(InputError(str(path), None if where is None else str(where), message))

    def as_dict(self) -> dict:
        return {
            "files": self.files, "records": self.records, "events": self.events,
            "skipped": self.skipped, "skipped_by_id": dict(self.skipped_by_id),
            "errors": self.error_count,
        }


class SourceUnavailable(RuntimeError):
    """A live source cannot run here (not Windows, pywintrace missing, not elevated...)."""
