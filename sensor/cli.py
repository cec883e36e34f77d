"""``etw-sensor`` command line: one sub-command per module in ``sensor.commands``.

Exit codes: 0 success, 1 the work ran but hit errors (bad input, rejected rules,
delivery failure), 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func``.
COMMAND_MODULES = ("scan", "rules", "peinfo", "output", "config", "run", "status", "spool", "service",
                   "demo", "capture", "selftest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etw-sensor",
        description="Windows endpoint sensor: process starts, Sigma rules, alerts over HTTPS.",
    )
    parser.add_argument("--version", action="version", version=f"etw-sensor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"sensor.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sensor.commands.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `etw-sensor scan ... | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
