"""Alert outputs: the registry that builds one from the ``[output]`` options.

One module per wire format, one shared TLS config (``tls.py``), one contract (``protocol.py``).
Formats (``format`` option): ``ecs`` (ECS NDJSON to any HTTPS endpoint, the default),
``splunk_hec``, ``elasticsearch``, ``webhook``, ``syslog`` (RFC 5424/3164 over TLS or TCP),
``jsonl`` (a local file), ``memory`` (tests).
The option keys are documented in docs/delivery.md and in :data:`OPTION_KEYS`.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

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

# Every option key build_output() understands (documented in docs/delivery.md).
OPTION_KEYS = frozenset({
    "format", "url", "path", "token", "token_env", "token_file", "auth_scheme",
    "hmac_secret", "hmac_secret_env", "hmac_secret_file", "signature_header",
    "ca_file", "pin_sha256", "client_cert", "client_key", "insecure_skip_verify", "tls_min_version",
    "allow_http", "gzip", "gzip_level", "connect_timeout", "read_timeout", "pool_maxsize", "headers",
    "index", "source", "sourcetype", "host", "document", "health_index", "health_sourcetype",
    "syslog_format", "syslog_framing", "syslog_facility", "syslog_app_name",
})
# The type of each option (as the config file's [output] table types them); None means unset.
_BOOL = ("insecure_skip_verify", "allow_http", "gzip")
_INT = ("gzip_level", "pool_maxsize")
_NUMBER = ("connect_timeout", "read_timeout")
_PATH = ("path", "token_file", "hmac_secret_file", "ca_file", "client_cert", "client_key")
_TABLE = ("headers",)
# Every other key is text.
assert set(_BOOL + _INT + _NUMBER + _PATH + _TABLE) <= OPTION_KEYS


def _kind(value: Any) -> str:
    """How an error names the type of a value (never the value: it may be a secret)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def check_option_types(options: Mapping[str, Any]) -> None:
    """ConfigError naming the first key whose value has the wrong type (None is unset)."""
    for key in sorted(options):
        value = options[key]
        if value is None or key not in OPTION_KEYS:
            continue
        if key in _BOOL:
            ok, want = isinstance(value, bool), "true or false"
        elif key in _INT:
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif key in _NUMBER:
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif key in _PATH:
            ok, want = isinstance(value, (str, os.PathLike)), "a file path (text)"
        elif key in _TABLE:
            ok, want = isinstance(value, Mapping), 'a table of text values (name = "value")'
            if ok:
                for name, item in value.items():
                    if not isinstance(name, str):
                        raise ConfigError(f"{key}: a name must be text, got {_kind(name)}")
                    if not isinstance(item, str):
                        raise ConfigError(f"{key}.{name}: must be text, got {_kind(item)}")
        else:
            ok, want = isinstance(value, str), "text"
        if not ok:
            raise ConfigError(f"{key}: must be {want}, got {_kind(value)}")


# What an operator may choose (``memory`` is for tests and stays out of messages).
PUBLIC_FORMATS = ("ecs", "elasticsearch", "jsonl", "splunk_hec", "syslog", "webhook")


def build_output(options: Mapping[str, Any]) -> Output:
    """An output from a plain dict of options (the config file's ``[output]`` table)."""
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise ConfigError(f"unknown output option(s): {', '.join(unknown)}")
    check_option_types(options)
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
