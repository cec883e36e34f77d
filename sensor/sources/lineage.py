"""Lineage for recorded Sysmon starts: GrandParent* and ParentChain from the recording itself.

A Sysmon Event ID 1 names its process and its parent by ``ProcessGuid`` and
``ParentProcessGuid``: ids that Sysmon never reuses, unlike pids. While a replay or a scan reads
its files in order, :class:`ReplayLineage` remembers each start by its ``ProcessGuid``; a later
start whose parent was seen gets the fields the live sensor takes from its process table:

- ``GrandParentImage``, ``GrandParentCommandLine``, ``GrandParentProcessId``: the parent's own
  ``ParentImage``, ``ParentCommandLine`` and ``ParentProcessId``, as the parent's event recorded
  them (so a grandparent whose own start is not in the recording is still named);
- ``ParentChain``: the ancestors' images, oldest first, joined by ``" > "``, at most
  :data:`MAX_CHAIN`; the walk follows ``ParentProcessGuid`` through the starts seen and ends with
  the image the oldest of them names as its parent. A guid seen twice ends the walk.

Nothing is guessed: a start whose parent's start was not read earlier gets none of these fields
(as live, where lineage needs the parent in the table), and an event that already carries any
lineage field (a capture replayed through the ETW decoder, a JSON line written by the sensor) is
left as it is. Security 4688 records have no guids and get no lineage: pids alone are reused.

The memory is bounded for any input: at most ``max_entries`` starts and ``max_chars`` characters
of remembered text (guids and an attacker's 32,767-character values included); past either bound the
oldest starts are forgotten first and counted in ``forgotten``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Iterator, NamedTuple

from ..events import CHAIN_SEPARATOR, MAX_CHAIN, ProcessEvent

LINEAGE_FIELDS = ("GrandParentImage", "GrandParentCommandLine", "GrandParentProcessId", "ParentChain")


class _Start(NamedTuple):
    image: Any
    parent_guid: str | None
    parent_image: Any
    parent_command_line: Any
    parent_pid: Any
    chars: int


def _guid(value: Any) -> str | None:
    """A guid as a lookup key: braces and case do not matter; anything not a non-empty text is
    no guid."""
    if not isinstance(value, str):
        return None
    key = value.strip().strip("{}").upper()
    return key or None


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


class ReplayLineage:
    """Adds lineage fields to recorded starts, in the order they are read (see the module)."""

    def __init__(self, max_entries: int = 65_536, max_chars: int = 16 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._starts: OrderedDict[str, _Start] = OrderedDict()
        self._chars = 0
        self.added = 0        # events that got lineage fields
        self.forgotten = 0    # starts dropped to stay inside the bounds

    def __len__(self) -> int:
        return len(self._starts)

    def apply(self, ev: ProcessEvent) -> ProcessEvent:
        """Add lineage to ``ev`` (in place) from the starts seen before it, then remember it."""
        parent_guid = _guid(ev.get("ParentProcessGuid"))
        if parent_guid is not None and not any(ev.get(k) is not None for k in LINEAGE_FIELDS):
            parent = self._starts.get(parent_guid)
            if parent is not None:
                self._lineage(ev, parent, parent_guid)
        self._remember(ev, parent_guid)
        return ev

    def _lineage(self, ev: ProcessEvent, parent: _Start, parent_guid: str) -> None:
        for field, value in (("GrandParentImage", parent.parent_image),
                             ("GrandParentCommandLine", parent.parent_command_line),
                             ("GrandParentProcessId", parent.parent_pid)):
            if value is not None and value != "":
                ev[field] = value
        chain = [parent.image]
        seen = {parent_guid}
        cur = parent
        while len(chain) < MAX_CHAIN:
            nxt_guid = cur.parent_guid
            nxt = self._starts.get(nxt_guid) if nxt_guid is not None and nxt_guid not in seen else None
            if nxt is None:
                # the oldest start seen names its own parent: the last link known
                if nxt_guid not in seen and isinstance(cur.parent_image, str) and cur.parent_image:
                    chain.append(cur.parent_image)
                break
            seen.add(nxt_guid)
            chain.append(nxt.image)
            cur = nxt
        chain.reverse()
        ev["ParentChain"] = CHAIN_SEPARATOR.join(i if isinstance(i, str) and i else "?" for i in chain)
        self.added += 1

    def _remember(self, ev: ProcessEvent, parent_guid: str | None) -> None:
        guid = _guid(ev.get("ProcessGuid"))
        if guid is None:
            return
        image, parent_image, parent_cmd = ev.get("Image"), ev.get("ParentImage"), ev.get("ParentCommandLine")
        chars = len(guid) + _length(parent_guid) + _length(image) + _length(parent_image) + _length(parent_cmd)
        start = _Start(image, parent_guid, parent_image, parent_cmd, ev.get("ParentProcessId"), chars)
        old = self._starts.pop(guid, None)
        if old is not None:
            self._chars -= old.chars
        self._starts[guid] = start
        self._chars += chars
        while self._starts and (len(self._starts) > self.max_entries or self._chars > self.max_chars):
            _, gone = self._starts.popitem(last=False)
            self._chars -= gone.chars
            self.forgotten += 1


def with_lineage(events: Iterable[ProcessEvent], lineage: ReplayLineage | None = None) -> Iterator[ProcessEvent]:
    """``events`` with lineage added by one :class:`ReplayLineage` (a new one unless given)."""
    lineage = lineage if lineage is not None else ReplayLineage()
    for ev in events:
        yield lineage.apply(ev)
