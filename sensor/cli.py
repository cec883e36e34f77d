"""``etw-sensor`` command line: one sub-command per module in ``sensor.commands``.

Exit codes: 0 success, 1 the work ran but hit errors (bad input, rejected rules, an alert
not delivered, output that could not be written), 2 usage or configuration error. No
traceback reaches the user: a reader that goes away (``| head -1``) ends the command
quietly, a full disk or a closed output is one line on stderr, and anything unexpected is
reported as one line (``ETW_SENSOR_DEBUG=1`` prints the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func``.
COMMAND_MODULES = ("scan", "rules", "peinfo", "output", "config", "run", "reload", "status", "spool", "service",
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


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's last flush has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _flush_stdout() -> OSError | None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as exc:
        _silence_stdout()
        return exc
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # --help, --version, usage errors: argparse's own code
        if _flush_stdout() is not None:
            return 1
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `etw-sensor scan ... | head -1`: the reader has what it wanted
        _silence_stdout()
        return 0
    except OSError as exc:   # e.g. stdout on a full disk (/dev/full)
        _silence_stdout()
        print(f"etw-sensor: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
              file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line, not a traceback (ETW_SENSOR_DEBUG=1 shows it)
        if os.environ.get("ETW_SENSOR_DEBUG") == "1":
            raise
        print(f"etw-sensor: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    failed = _flush_stdout()
    if failed is not None:
        print(f"etw-sensor: cannot write the output: {failed.strerror or failed}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
