"""The event model: one process start, keyed by Sigma ``process_creation`` field names."""
from __future__ import annotations

import ntpath
from typing import Any, Callable, Iterable, Mapping

# The Sigma process_creation taxonomy (Sysmon Event ID 1 names) that every event carries.
FIELDS: tuple[str, ...] = (
    "Image",
    "OriginalFileName",
    "CommandLine",
    "ParentImage",
    "ParentCommandLine",
    "User",
    "IntegrityLevel",
    "ProcessId",
    "ParentProcessId",
    "CurrentDirectory",
    "Company",
    "Product",
    "Description",
    "FileVersion",
    "UtcTime",
    "Computer",
    # Lineage: the parent's parent, the chain of ancestors, and the process that really created
    # this one (the ETW header's ProcessId of the start event), which a spoofed parent hides.
    "GrandParentImage",
    "GrandParentCommandLine",
    "GrandParentProcessId",
    "ParentChain",
    "CreatorProcessId",
    "CreatorImage",
)

# Fields that are integers when known.
INT_FIELDS = frozenset({"ProcessId", "ParentProcessId", "GrandParentProcessId", "CreatorProcessId"})

# ``ParentChain`` joins the ancestors' images, the oldest first, with this separator (``>`` can
# never occur in a Windows path).  ``ProcessTree`` (not a rule field; alerts carry it) lists the
# same ancestors as ``{"ProcessId", "Image", "UtcTime"}`` objects, the oldest first.
CHAIN_SEPARATOR = " > "
# The most ancestors ``ParentChain`` and ``ProcessTree`` name (the nearest ones), live and in a
# replay alike.
MAX_CHAIN = 8

# Where a value came from (issue: each event records the origin of each field).
ORIGIN_ETW = "etw"
ORIGIN_SYSTEM_LOGGER = "system_logger"
ORIGIN_BACKFILL = "backfill"
ORIGIN_PROCESS_TABLE = "process_table"
ORIGIN_PE = "pe"
ORIGIN_REPLAY = "replay"
ORIGIN_MISSING = "missing"

Resolver = Callable[["ProcessEvent", str], Any]


class ProcessEvent(dict):
    """A process start. Keys are Sigma field names; a missing value is ``None``.

    Unknown keys (``Hashes``, ``LogonId``, ...) are kept as they came.  Values that
    are expensive to obtain (``OriginalFileName`` needs a PE read) can be left
    *pending*: ``pending`` maps the field name to a resolver that the matcher
    calls only when a rule still needs that field.
    """

    __slots__ = ("pending", "origin")

    def __init__(self, data: Mapping[str, Any] | Iterable | None = None, **kw: Any) -> None:
        dict.__init__(self, _EMPTY)
        if data is not None:
            self.update(data)
        if kw:
            self.update(kw)
        self.pending: dict[str, Resolver] | None = None
        self.origin: dict[str, str] | None = None

    @classmethod
    def copy_of(cls, event: "ProcessEvent") -> "ProcessEvent":
        """A fresh event with the same stored values (pending resolvers are not copied)."""
        new = cls.__new__(cls)
        dict.update(new, event)
        new.pending = None
        new.origin = None
        return new

    def resolve(self, name: str) -> Any:
        """Return the value of ``name``, running its pending resolver at most once."""
        value = dict.get(self, name)
        if value is None and self.pending:
            resolver = self.pending.pop(name, None)
            if resolver is not None:
                value = resolver(self, name)
                self[name] = value
        return value

    def set_pending(self, name: str, resolver: Resolver) -> None:
        """Defer ``name`` to ``resolver`` (called with the event and the field name)."""
        if self.pending is None:
            self.pending = {}
        self.pending[name] = resolver

    def resolve_all(self) -> None:
        """Run every pending resolver (before the event leaves the sensor)."""
        while self.pending:
            name = next(iter(self.pending))
            if dict.get(self, name) is None:
                self.resolve(name)
            else:  # a value stored after the field was deferred wins; its resolver never runs
                del self.pending[name]

    def __reduce__(self):  # copies and pickles keep values, not resolvers
        return (ProcessEvent, (dict(self),))


_EMPTY = dict.fromkeys(FIELDS)


def image_file_name(path: str | None) -> str | None:
    """The file name of a Windows image path (``C:\\x\\y.exe`` → ``y.exe``)."""
    if not path:
        return None
    return ntpath.basename(str(path)) or None


def summary(event: Mapping[str, Any]) -> str:
    """A readable one-line summary of a process start (the seed's MESSAGE)."""
    head = f"Process started: {event.get('Image') or '<unknown image>'}"
    if event.get("ProcessId") is not None:
        head += f" (pid {event.get('ProcessId')})"
    parts = [head]
    cmd = event.get("CommandLine")
    if cmd:
        cmd = " ".join(str(cmd).split())  # one line, whatever the command line holds
        parts.append("command line: " + (cmd if len(cmd) <= 512 else cmd[:509] + "..."))
    for label, key in (("parent", "ParentImage"), ("user", "User"), ("host", "Computer")):
        if event.get(key):
            parts.append(f"{label}: {event.get(key)}")
    return "; ".join(parts)


# Derived fields: computed from other fields, never stored.  Rule IR may name them.
DERIVED: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "@FileName": lambda ev: image_file_name(ev.get("Image")),
    "@Message": summary,
}


def field_value(event: Mapping[str, Any], name: str) -> Any:
    """The value of ``name`` in ``event``: stored, pending (resolved now) or derived."""
    value = event.get(name)
    if value is None:
        if name in DERIVED:
            return DERIVED[name](event)
        pending = getattr(event, "pending", None)
        if pending and name in pending:
            return event.resolve(name)  # type: ignore[attr-defined]
    return value


def to_int(value: Any) -> int | None:
    """Parse a pid-like value (int, decimal or 0x-hex string); None when not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None
