"""Alert outputs: the registry that builds one from the ``[output]`` options.

One module per wire format, one shared TLS config (``tls.py``), one contract (``protocol.py``).
Formats (``format`` option): ``ecs`` (ECS NDJSON to any HTTPS endpoint, the default),
``splunk_hec``, ``elasticsearch``, ``webhook``, ``syslog`` (RFC 5424/3164 over TLS or TCP),
``jsonl`` (a local file), ``memory`` (tests).
The option keys are documented in docs/delivery.md and in :data:`OPTION_KEYS`.
"""
from __future__ import annotations

from typing import Any, Mapping

from .options import OPTION_KEYS, check_option_types, set_options
from .protocol import Output
from .tls import ConfigError

__all__ = ["build_output", "check_option_types", "FORMATS", "OPTION_KEYS"]


FORMATS = {
    "ecs": "ecs", "ndjson": "ecs", "ecs_ndjson": "ecs",
    "splunk_hec": "splunk_hec", "splunk": "splunk_hec", "hec": "splunk_hec",
    "elasticsearch": "elasticsearch", "elastic": "elasticsearch", "es": "elasticsearch",
    "webhook": "webhook", "jsonl": "jsonl", "file": "jsonl", "memory": "memory", "null": "memory",
    "syslog": "syslog",
}

# What an operator may choose (``memory`` is for tests and stays out of messages).
PUBLIC_FORMATS = ("ecs", "elasticsearch", "jsonl", "splunk_hec", "syslog", "webhook")


def build_output(options: Mapping[str, Any]) -> Output:
    """An output from a plain dict of options (the config file's ``[output]`` table)."""
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise ConfigError(f"unknown output option(s): {', '.join(unknown)}")
    options = set_options(options)     # every value of the right type; unset (None) ones left out
    fmt = FORMATS.get(str(options.get("format") or "ecs").lower())
    if fmt is None:
        raise ConfigError(f"format must be one of {', '.join(PUBLIC_FORMATS)}")
    if fmt == "memory":
        from .memory import MemoryOutput
        return MemoryOutput()
    if fmt == "jsonl":
        from .jsonl import JsonlOutput
        path = options.get("path")
        if not path:
            raise ConfigError("format jsonl needs path")
        return JsonlOutput(path, document=str(options.get("document") or "ecs"))
    if fmt == "syslog":
        from .syslog import SyslogOutput
        return SyslogOutput.from_options(options)
    if fmt == "splunk_hec":
        from .splunk import SplunkHecOutput as cls
    elif fmt == "elasticsearch":
        from .elastic import ElasticsearchOutput as cls
    elif fmt == "webhook":
        from .webhook import WebhookOutput as cls
    else:
        from .http import EcsNdjsonOutput as cls
    return cls.from_options(options)
