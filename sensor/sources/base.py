"""What every replay reader shares: input errors and read statistics."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


MAX_ERRORS_KEPT = 1000  # errors about a line or record kept for the report; the rest are counted
# Errors about a whole file (it cannot be read, is given up, or hides records) are kept apart from
# those, so a file of bad lines never hides that a file was skipped: at most this many.
MAX_FILE_ERRORS_KEPT = 1000


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
    # In the order they came: the first MAX_ERRORS_KEPT about a line or record, and the first
    # MAX_FILE_ERRORS_KEPT about a whole file.
    errors: list[InputError] = field(default_factory=list)
    error_count: int = 0      # all of them
    # Where the event just yielded came from: (file, "line" or "record", number).
    position: tuple | None = None

    _line_errors: int = 0
    _file_errors: int = 0

    def error(self, path, where, message, whole_file: bool = False) -> None:
        """Count an input error and keep it for the report while there is room. ``where`` is
        the line or record; an error without one, or with ``whole_file``, is about the file
        (unreadable, given up, records hidden) and has its own allowance."""
        self.error_count += 1
        if whole_file or where is None:
            if self._file_errors >= MAX_FILE_ERRORS_KEPT:
                return
            self._file_errors += 1
        else:
            if self._line_errors >= MAX_ERRORS_KEPT:  # a file of bad lines must not fill the memory
                return
            self._line_errors += 1
        self.errors.append(InputError(str(path), None if where is None else str(where), message))

    def as_dict(self) -> dict:
        return {
            "files": self.files, "records": self.records, "events": self.events,
            "skipped": self.skipped, "skipped_by_id": dict(self.skipped_by_id),
            "errors": self.error_count,
        }


class SourceUnavailable(RuntimeError):
    """A live source cannot run here (not Windows, pywintrace missing, not elevated...)."""
