"""Alert outputs: one small protocol, one shared TLS config, one module per wire format.

An output makes exactly one delivery attempt per ``send_batch`` call and says what became of each
alert; retrying, splitting, dead-lettering and parking are the forwarder's job (sensor/delivery.py).

Formats (``format`` option): ``ecs`` (ECS NDJSON to any HTTPS endpoint, the default),
``splunk_hec``, ``elasticsearch``, ``webhook``, ``jsonl`` (a local file), ``memory`` (tests).
The option keys are documented in docs/delivery.md and in :data:`OPTION_KEYS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from .tls import ConfigError, Secret, TLSConfig, load_secret

__all__ = [
    "OK", "RETRY", "SPLIT", "BISECT", "PARK", "RESEND", "SendResult", "Output", "ConfigError", "Secret",
    "TLSConfig", "load_secret", "build_output", "FORMATS", "OPTION_KEYS",
]

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


FORMATS = {
    "ecs": "ecs", "ndjson": "ecs", "ecs_ndjson": "ecs",
    "splunk_hec": "splunk_hec", "splunk": "splunk_hec", "hec": "splunk_hec",
    "elasticsearch": "elasticsearch", "elastic": "elasticsearch", "es": "elasticsearch",
    "webhook": "webhook", "jsonl": "jsonl", "file": "jsonl", "memory": "memory", "null": "memory",
}

# Every option key build_output() understands (documented in docs/delivery.md).
OPTION_KEYS = frozenset({
    "format", "url", "path", "token", "token_env", "token_file", "auth_scheme",
    "hmac_secret", "hmac_secret_env", "hmac_secret_file", "signature_header",
    "ca_file", "pin_sha256", "client_cert", "client_key", "insecure_skip_verify", "tls_min_version",
    "allow_http", "gzip", "gzip_level", "connect_timeout", "read_timeout", "pool_maxsize", "headers",
    "index", "source", "sourcetype", "host", "document",
})


def build_output(options: Mapping[str, Any]) -> Output:
    """An output from a plain dict of options (the config file's ``[output]`` table)."""
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise ConfigError(f"unknown output option(s): {', '.join(unknown)}")
    fmt = FORMATS.get(str(options.get("format") or "ecs").lower())
    if fmt is None:
        raise ConfigError(f"format must be one of {', '.join(sorted(set(FORMATS.values())))}")
    if fmt == "memory":
        from .memory import MemoryOutput
        return MemoryOutput()
    if fmt == "jsonl":
        from .jsonl import JsonlOutput
        path = options.get("path")
        if not path:
            raise ConfigError("format jsonl needs path")
        return JsonlOutput(path, document=str(options.get("document") or "ecs"))
    if fmt == "splunk_hec":
        from .splunk import SplunkHecOutput as cls
    elif fmt == "elasticsearch":
        from .elastic import ElasticsearchOutput as cls
    elif fmt == "webhook":
        from .webhook import WebhookOutput as cls
    else:
        from .http import EcsNdjsonOutput as cls
    return cls.from_options(options)
