"""Generic webhook: ``{"alerts": [...]}`` as JSON, signed with HMAC-SHA256.

Convention (style-and-delivery.md B.1 "Generic webhook JSON"): ``Authorization: Bearer <token>``,
``X-Sensor-Signature-256: sha256=<hex HMAC of the body>`` (GitHub style), and ``Idempotency-Key``
so receivers can drop at-least-once duplicates. The signature covers the JSON body as produced,
before any ``Content-Encoding: gzip`` is applied: decompress, then verify.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Mapping, Sequence

from .http import HttpOutput, _common_kwargs
from .tls import Secret, load_secret

SIGNATURE_HEADER = "X-Sensor-Signature-256"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def idempotency_key(ids: Sequence[str]) -> str:
    """The alert id for one alert, else a SHA-256 over the batch's ids."""
    if len(ids) == 1:
        return ids[0]
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


class WebhookOutput(HttpOutput):
    """Alerts POSTed as one JSON object per batch."""

    name = "webhook"
    content_type = "application/json"

    def __init__(self, url: str, *, hmac_secret: Secret | None = None,
                 signature_header: str = SIGNATURE_HEADER, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.hmac_secret = hmac_secret
        self.signature_header = signature_header
        if hmac_secret:
            self._secrets.append(hmac_secret.reveal())

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "WebhookOutput":
        kw = _common_kwargs(options)    # first: it checks every option's type
        return cls(hmac_secret=load_secret(options, "hmac_secret"),
                   signature_header=options.get("signature_header") or SIGNATURE_HEADER, **kw)

    def body(self, encoded: Sequence[bytes]) -> bytes:
        return b'{"alerts":[' + b",".join(encoded) + b"]}"

    def headers(self, alerts: Sequence[Mapping[str, Any]], body: bytes) -> dict[str, str]:
        h = super().headers(alerts, body)
        h["Idempotency-Key"] = idempotency_key([str(a.get("id")) for a in alerts])
        if self.hmac_secret:
            h[self.signature_header] = sign(self.hmac_secret.reveal().encode(), body)
        return h
