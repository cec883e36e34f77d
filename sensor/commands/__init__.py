"""The sub-commands of ``etw-sensor``; each module has ``register(subparsers)``."""
from __future__ import annotations

import sys
from typing import Callable

from ..daemon.config import Config, ConfigError, find_config


def print_config_error(exc: ConfigError, err=None) -> None:
    """Every problem of a refused configuration, one per line."""
    err = err or sys.stderr
    prefix = f"{exc.path}: " if exc.path else ""
    for e in exc.errors:
        print(f"etw-sensor: config error: {prefix}{e}", file=err)


def config_for(config_arg: str | None, quiet: bool = False,
               full_check: Callable[[Config], list[str]] | None = None) -> Config | None:
    """The config a command reads its paths from: ``-c``, else the default file, else the
    defaults (the same lookup for every command); None after an error (printed).

    ``full_check`` (``run``, ``config test``): when the file's own keys are refused, the checks
    of what the file points to run too, on the decoded config, so one run lists every problem.
    Their findings under a section that already has an error are left out (they would repeat it).
    """
    try:
        cfg, note = find_config(config_arg)
    except ConfigError as exc:
        if full_check is not None and exc.config is not None:
            refused = {e.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0] for e in exc.errors}
            exc.errors += [e for e in full_check(exc.config)
                           if e.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0] not in refused]
        print_config_error(exc)
        return None
    if note and not quiet:
        print(f"etw-sensor: {note}", file=sys.stderr)
    return cfg
