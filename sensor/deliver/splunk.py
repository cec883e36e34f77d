"""Splunk HTTP Event Collector: stacked JSON envelopes to ``/services/collector/event``.

API facts: style-and-delivery.md B.1 "Splunk HTTP Event Collector" (``Authorization: Splunk <token>``,
envelopes back to back with no array, ``invalid-event-number`` on 400, 503 code 9 when busy,
unauthenticated ``GET /services/collector/health``). Without indexer acknowledgment a 200 means
"HEC parsed it"; that is what this output treats as delivered.
"""
from __future__ import annotations

import socket
from typing import Any, Mapping, Sequence

from .protocol import BISECT, OK, PARK, RESEND, RETRY, SendResult
from .ecs import epoch_time
from .health import is_metric
from .http import (
    HttpOutput,
    HttpResponse,
    _common_kwargs,
    classify_status,
    encode_json,
    parse_retry_after,
)

EVENT_PATH = "/services/collector/event"
HEALTH_PATH = "/services/collector/health"
# HEC error codes that are about the token, index or channel, not about one event: configuration.
CONFIG_CODES = frozenset({1, 2, 3, 4, 7, 10, 11, 14})
DEFAULT_SOURCETYPE = "etw-sensor:alert"
HEALTH_SOURCETYPE = "etw-sensor:health"   # health documents (the completeness ledger)


class SplunkHecOutput(HttpOutput):
    """Alerts as HEC event envelopes (``event`` = the ECS document, or the raw alert)."""

    name = "splunk_hec"
    content_type = "application/json"
    default_auth_scheme = "Splunk"

    def __init__(self, url: str, *, index: str | None = None, source: str = "etw-sensor",
                 sourcetype: str = DEFAULT_SOURCETYPE, host: str | None = None,
                 health_sourcetype: str = HEALTH_SOURCETYPE, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.index = index
        self.source = source
        self.sourcetype = sourcetype
        self.health_sourcetype = health_sourcetype
        self.host = host

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "SplunkHecOutput":
        kw = _common_kwargs(options)
        return cls(index=options.get("index"), source=options.get("source") or "etw-sensor",
                   sourcetype=options.get("sourcetype") or DEFAULT_SOURCETYPE,
                   health_sourcetype=options.get("health_sourcetype") or HEALTH_SOURCETYPE,
                   host=options.get("host"), **kw)

    def request_path(self, path: str) -> str:
        return EVENT_PATH if path in ("", "/") else path

    def envelope(self, alert: Mapping[str, Any]) -> dict:
        """The HEC envelope for one alert; ``time`` is the event time, not the send time."""
        doc = self.render(alert)
        env: dict[str, Any] = {}
        t = epoch_time(alert)
        if t is not None:
            env["time"] = t
        host = self.host or alert.get("HOSTNAME") or (alert.get("event") or {}).get("Computer")
        env["host"] = host or socket.gethostname()
        env["source"] = self.source
        env["sourcetype"] = self.health_sourcetype if is_metric(alert) else self.sourcetype
        if self.index:
            env["index"] = self.index
        env["event"] = doc
        return env

    def encode_one(self, alert: Mapping[str, Any]) -> bytes:
        return encode_json(self.envelope(alert))

    def interpret(self, alerts: Sequence[Mapping[str, Any]], resp: HttpResponse) -> SendResult:
        ids = [str(a.get("id")) for a in alerts]
        answer = resp.json()
        answer = answer if isinstance(answer, dict) else {}
        code = answer.get("code")
        text = answer.get("text") or resp.text()
        if 200 <= resp.status < 300 and code in (0, None):
            return SendResult(OK, delivered=ids)
        if resp.status == 400:
            if code in CONFIG_CODES:
                return SendResult(PARK, error=f"HEC 400 code {code}: {text}")
            n = answer.get("invalid-event-number")
            if isinstance(n, int) and 0 <= n < len(ids):
                # The rest were not indexed as a whole request: resend them (at-least-once).
                return SendResult(RESEND, rejected={ids[n]: f"HEC 400 code {code}: {text}"},
                                  error=f"HEC rejected event {n}: {text}")
            return SendResult(BISECT, error=f"HEC 400 code {code}: {text}")
        outcome = classify_status(resp)
        if outcome == OK:  # 2xx with a non-zero code: not a confirmation
            outcome = PARK if code in CONFIG_CODES else RETRY
        ra = parse_retry_after(resp.headers.get("Retry-After")) if resp.status in (429, 503) else None
        return SendResult(outcome, retry_after=ra, error=f"HTTP {resp.status} (HEC code {code}: {text})")

    def check(self) -> SendResult:
        """``GET /services/collector/health`` (unauthenticated)."""
        from .http import TransportFailure
        try:
            resp = self.transport.request("GET", HEALTH_PATH, None, {})
        except TransportFailure as exc:
            return SendResult(exc.outcome, error=self.redact(exc.message))
        ok = resp.status == 200
        return SendResult(OK if ok else classify_status(resp), status=resp.status,
                          detail=self.redact(resp.text()) or "")
