"""``etw-sensor config test FILE``: check a configuration without starting anything."""
from __future__ import annotations

import sys

from ..daemon.config import ConfigError, default_config_path, load


def register(sub) -> None:
    p = sub.add_parser("config", help="check a configuration file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    t = csub.add_parser("test", help="load and check a config: keys, types, rules, output, spool")
    t.add_argument("file", nargs="?", default=None, help=f"default: {default_config_path()}")
    t.set_defaults(func=test)
    e = csub.add_parser("example", help="print the documented example configuration")
    e.set_defaults(func=example)
    p.set_defaults(func=lambda a: (p.print_help(sys.stderr), 2)[1])


def test(args) -> int:
    path = args.file or default_config_path()
    try:
        cfg = load(path)
        from ..daemon.assemble import build
        parts = build(cfg, with_source=cfg.source.kind == "replay" or sys.platform == "win32")
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    for w in parts.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for p in parts.rule_problems:
        print(p, file=sys.stderr)
    print(f"{path}: OK: source {cfg.source.kind}, {len(parts.rules)} rule(s), output "
          f"{getattr(parts.output, 'name', cfg.output.format)}, spool {cfg.spool.path}, "
          f"status {cfg.sensor.status_file}")
    if parts.spool is not None:
        parts.spool.close()
    return 1 if parts.rule_problems else 0


def example(args) -> int:
    from importlib import resources
    sys.stdout.write(resources.files("sensor").joinpath("data", "sensor.example.toml").read_text())
    return 0
