"""The sub-commands of ``etw-sensor``; each module has ``register(subparsers)``."""
from __future__ import annotations

import sys

from ..daemon.config import Config, ConfigError, default_config_path, load


def config_for(config_arg: str | None) -> Config | None:
    """The config a command reads its paths from (``-c`` or the default); None after an error."""
    try:
        return load(config_arg or default_config_path())
    except ConfigError as exc:
        print(f"etw-sensor: config error: {exc}", file=sys.stderr)
        return None
