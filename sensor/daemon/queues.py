"""A bounded hand-off queue between pipeline threads.

The producer side never blocks unless asked to: the ETW callback must return
at once, so a full queue drops the item and counts it.  The consumer takes
items in batches, which keeps the per-event locking cost off the hot path.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


class BoundedQueue:
    """A deque bounded by ``maxsize``; ``put`` drops (and counts) when full."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._dq: deque = deque()
        self._ready = threading.Event()   # set when items may be waiting
        self._woken = False               # wake() called: the next get_batch returns at once
        self._space = threading.Condition(threading.Lock())
        self._closed = False              # close(): an empty queue no longer waits
        self.dropped = 0
        self.accepted = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._dq)

    def put(self, item: Any) -> bool:
        """Add ``item`` unless the queue is full; never blocks. False = dropped."""
        dq = self._dq
        n = len(dq)
        if n >= self.maxsize:
            self.dropped += 1
            return False
        dq.append(item)  # deque.append is atomic under the GIL
        self.accepted += 1
        if n >= self.high_water:
            self.high_water = n + 1
        if not self._ready.is_set():
            self._ready.set()
        return True

    def put_wait(self, item: Any, timeout: float | None = None) -> bool:
        """Add ``item``, waiting for room (replay sources use this, never ETW). False: dropped
        (no room within ``timeout``, or the queue was closed: no consumer will make room)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._space:
            # checked under the lock get_batch() notifies under: room made between the check
            # and the wait is not missed, so the wait needs no polling timeout
            while len(self._dq) >= self.maxsize:
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._closed or (remaining is not None and remaining <= 0):
                    self.dropped += 1
                    return False
                self._space.wait(remaining)
        return self.put(item)

    def get_batch(self, max_items: int, timeout: float | None = None) -> list:
        """Up to ``max_items`` items; waits up to ``timeout`` seconds for the first (None: until
        an item arrives or the queue is closed; an idle consumer then never wakes)."""
        dq = self._dq
        if not dq and not self._closed and not self._woken:
            self._ready.clear()
            # re-check after clearing: a racing put/close/wake is seen (each sets the flag
            # or the item first, then the event)
            if not dq and not self._closed and not self._woken:
                self._ready.wait(timeout)
        self._woken = False
        out = []
        pop = dq.popleft
        try:
            for _ in range(max_items):
                out.append(pop())
        except IndexError:
            pass
        if out and len(dq) < self.maxsize:
            with self._space:
                self._space.notify_all()
        return out

    def wake(self) -> None:
        """Wake a consumer blocked in :meth:`get_batch` once (it returns what is queued, maybe
        nothing), e.g. to take over a new rule set between batches."""
        self._woken = True
        self._ready.set()

    def close(self) -> None:
        """Wake a consumer blocked in :meth:`get_batch`; from now on an empty queue returns at
        once. Items still queued are still handed out."""
        self._closed = True
        self._ready.set()
        with self._space:                 # a producer waiting for room gives up
            self._space.notify_all()

    def stats(self) -> dict:
        return {"depth": len(self._dq), "capacity": self.maxsize, "accepted": self.accepted,
                "dropped": self.dropped, "high_water": self.high_water}
