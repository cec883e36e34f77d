"""The output contract: one delivery attempt per ``send_batch`` call, and what became of each alert.

Retrying, splitting, dead-lettering and parking are the forwarder's job
(``sensor/deliver/forwarder.py``); an output only reports. Every wire format in this package
implements :class:`Output`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

# What to do with the alerts of a batch that the result does not list as delivered or rejected.
OK = "ok"          # all confirmed
RETRY = "retry"    # transient: keep, back off (Retry-After wins)
SPLIT = "split"    # 413: too large, send in halves
BISECT = "bisect"  # 400 without saying which alert: halve until the poison one is alone
PARK = "park"      # configuration problem (401/403/TLS/404): keep everything, stop, shout
RESEND = "resend"  # the receiver named the poison alert (in ``rejected``); send the rest again now


@dataclass
class SendResult:
    """What one delivery attempt did to each alert of the batch."""

    outcome: str
    delivered: list[str] = field(default_factory=list)   # ids the receiver confirmed
    rejected: dict[str, str] = field(default_factory=dict)  # id -> reason: poison, to dead-letter
    status: int | None = None                              # HTTP status, None if no answer
    retry_after: float | None = None                       # seconds, from Retry-After
    error: str | None = None                               # short, secrets removed
    detail: str = ""                                       # excerpt of the receiver's answer
    item_status: dict[str, int] = field(default_factory=dict)  # per-alert status (bulk items)

    @property
    def ok(self) -> bool:
        return self.outcome == OK


@runtime_checkable
class Output(Protocol):
    """A destination for alerts."""

    name: str

    def send_batch(self, alerts: Sequence[Mapping[str, Any]]) -> SendResult:
        """Try once to deliver ``alerts``; never raises for delivery problems."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
