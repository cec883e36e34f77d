"""The ``[output]`` options: every key an output understands and the type its value must have.

Kept apart from the registry (``outputs.py``), which imports every output module: the outputs
check their own options with :func:`check_option_types` without importing the registry.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from .tls import ConfigError

__all__ = ["OPTION_KEYS", "check_option_types", "set_options"]

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


def set_options(options: Mapping[str, Any]) -> dict:
    """The options that are set, type-checked (:func:`check_option_types`): a key whose value is
    None is left out, so it takes its default exactly as if it were absent."""
    check_option_types(options)
    return {key: value for key, value in options.items() if value is not None}
