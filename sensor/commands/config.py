"""``etw-sensor config test|example``: check a configuration exactly as ``run`` would, without
starting anything; print the documented example."""
from __future__ import annotations

import re
import sys

from ..daemon.config import ConfigError, default_config_path


def register(sub) -> None:
    p = sub.add_parser("config", help="check a configuration file; print the example")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    t = csub.add_parser("test", help="every check `run` makes, without starting: keys, types, "
                                     "ranges, rules, output, secrets, TLS material, folders, platform",
                        description="Check a configuration exactly as `run` does before it starts, "
                                    "and create nothing. Every problem is listed with its key. "
                                    "Exit 0 and OK: `run` would start; 2: it would refuse.")
    t.add_argument("file", nargs="?", default=None,
                   help=f"default: {default_config_path()}, else the built-in defaults")
    t.add_argument("--allow-readable-config", action="store_true",
                   help="accept a config file that other users can read")
    t.set_defaults(func=test)
    e = csub.add_parser("example", help="print the documented example configuration")
    e.set_defaults(func=example)
    p.set_defaults(func=lambda a: (p.print_help(sys.stderr), 2)[1])


def test(args) -> int:
    from ..daemon.assemble import validate
    from . import config_for, print_config_error
    def check(c):
        return validate(c, allow_readable_config=args.allow_readable_config).errors
    cfg = config_for(args.file, full_check=check)
    if cfg is None:
        print("etw-sensor: `run` would refuse to start", file=sys.stderr)
        return 2
    checked = validate(cfg, allow_readable_config=args.allow_readable_config)
    for w in checked.warnings:
        print(f"etw-sensor: warning: {w}", file=sys.stderr)
    if checked.errors:
        print_config_error(ConfigError(checked.errors, cfg.path))
        print(f"{cfg.path}: {len(checked.errors)} error(s): `run` would refuse to start",
              file=sys.stderr)
        return 2
    print(f"{cfg.path}: OK: source {cfg.source.kind}, {len(checked.rules)} rule(s)"
          f"{f' ({len(checked.rule_problems)} skipped)' if checked.rule_problems else ''}, "
          f"output {checked.output_name}, spool {cfg.spool.path}, status {cfg.sensor.status_file}")
    return 0


# The line of the example that names the replay recordings.
_REPLAY_LINE = re.compile(r"^paths = \[\](?=\s+# recordings)", re.M)


def example_text(platform: str = sys.platform) -> str:
    """The example configuration for this platform: on Windows the live ETW source; elsewhere
    a replay of the bundled recording, so the example passes `config test` and `run` as is."""
    from importlib import resources
    text = resources.files("sensor").joinpath("data", "sensor.example.toml").read_text(encoding="utf-8")
    if platform != "win32":
        rec = resources.files("sensor").joinpath("data", "demo", "recording.jsonl.gz")
        path = str(rec).replace("\\", "\\\\").replace('"', '\\"')
        text = _REPLAY_LINE.sub(f'paths = ["{path}"]', text, count=1)
    return text


def example(args) -> int:
    sys.stdout.write(example_text())
    return 0
