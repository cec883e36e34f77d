"""Elasticsearch ``_bulk`` with ``create`` actions keyed by the alert id.

API facts: style-and-delivery.md B.1 "Elasticsearch _bulk": NDJSON action + source lines, final newline,
data streams take only ``create``; a deterministic ``_id`` makes retries idempotent, so an item 409
means "already stored" and counts as delivered. HTTP 200 with ``errors: true`` carries per-item
statuses: 429/5xx items are retried, other 4xx items go to the dead-letter table.
"""
from __future__ import annotations

import base64
from typing import Any, Mapping, Sequence

from .protocol import OK, PARK, RETRY, SendResult
from .health import is_metric
from .http import HttpOutput, HttpResponse, _common_kwargs, encode_json
from .tls import Secret

DEFAULT_INDEX = "logs-sensor.alert-default"
HEALTH_INDEX = "metrics-sensor.health-default"   # health documents (the completeness ledger)


class ElasticsearchOutput(HttpOutput):
    """ECS documents through the bulk API."""

    name = "elasticsearch"
    content_type = "application/x-ndjson"
    default_auth_scheme = "ApiKey"

    def __init__(self, url: str, *, index: str = DEFAULT_INDEX, health_index: str = HEALTH_INDEX,
                 **kw: Any) -> None:
        token = kw.get("token")
        if token and ":" in token.reveal():
            # An API key given as "id:key" (the Beats form) is sent base64-encoded.
            raw = token.reveal()
            kw["token"] = Secret(base64.b64encode(raw.encode()).decode())
        super().__init__(url, **kw)
        if token:
            self._secrets.append(token.reveal())
        self.index = index
        self.health_index = health_index

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "ElasticsearchOutput":
        return cls(index=options.get("index") or DEFAULT_INDEX,
                   health_index=options.get("health_index") or HEALTH_INDEX, **_common_kwargs(options))

    def request_path(self, path: str) -> str:
        path = path.rstrip("/")
        return path if path.endswith("/_bulk") else path + "/_bulk"

    def encode_one(self, alert: Mapping[str, Any]) -> bytes:
        index = self.health_index if is_metric(alert) else self.index
        action = {"create": {"_index": index, "_id": str(alert.get("id"))}}
        return encode_json(action) + b"\n" + encode_json(self.render(alert))

    def interpret(self, alerts: Sequence[Mapping[str, Any]], resp: HttpResponse) -> SendResult:
        if resp.status != 200:
            return super().interpret(alerts, resp)
        answer = resp.json()
        if not isinstance(answer, dict):
            return SendResult(RETRY, error="_bulk answer is not JSON")
        ids = [str(a.get("id")) for a in alerts]
        if not answer.get("errors"):
            return SendResult(OK, delivered=ids)
        items = answer.get("items")
        if not isinstance(items, list) or len(items) != len(ids):
            return SendResult(RETRY, error="_bulk answer has the wrong number of items")
        result = SendResult(OK)
        first_error = None
        for alert_id, item in zip(ids, items):
            res = next(iter(item.values()), {}) if isinstance(item, dict) and item else {}
            status = res.get("status") if isinstance(res, dict) else None
            if not isinstance(status, int):
                result.outcome = RETRY
                continue
            if 200 <= status < 300 or status == 409:
                result.delivered.append(alert_id)
                continue
            err = res.get("error") or {}
            reason = f"item {status} {err.get('type', '')}: {err.get('reason', '')}".strip()[:300]
            first_error = first_error or reason
            if status in (401, 403):
                result.outcome = PARK
            elif status == 429 or status >= 500 or status == 408:
                if result.outcome != PARK:
                    result.outcome = RETRY
            else:
                result.rejected[alert_id] = reason
                result.item_status[alert_id] = status
        result.error = first_error
        return result
