"""The sub-commands of ``etw-sensor``; each module has ``register(subparsers)``."""
from __future__ import annotations

import sys

from ..daemon.config import Config, ConfigError, find_config


def print_config_error(exc: ConfigError, err=None) -> None:
    """Every problem of a refused configuration, one per line."""
    err = err or sys.stderr
    prefix = f"{exc.path}: " if exc.path else ""
    for e in exc.errors:
        print(f"etw-sensor: config error: {prefix}{e}", file=err)


def config_for(config_arg: str | None, quiet: bool = False) -> Config | None:
    """The config a command reads its paths from: ``-c``, else the default file, else the
    defaults (the same lookup for every command); None after an error (printed)."""
    try:
        cfg, note = find_config(config_arg)
    except ConfigError as exc:
        print_config_error(exc)
        return None
    if note and not quiet:
        print(f"etw-sensor: {note}", file=sys.stderr)
    return cfg
