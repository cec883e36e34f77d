"""``etw-sensor service install|uninstall|start|stop|status`` (Windows)."""
from __future__ import annotations

import os
import sys

from ..daemon.service import ACCOUNTS, ACTIONS, SERVICE_NAME, ServiceError, STARTUP, install_plan


def register(sub) -> None:
    p = sub.add_parser("service", help="manage the Windows service",
                       description="Install (check the config, lock the config and data folders "
                                   "down to SYSTEM and Administrators, register the service), "
                                   "uninstall, start, stop or query the Windows service.")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("-c", "--config", metavar="FILE", help="install: absolute path of the config file")
    p.add_argument("--startup", choices=sorted(STARTUP), default="delayed",
                   help="install: start type (default: delayed automatic start)")
    p.add_argument("--account", choices=ACCOUNTS, default="localsystem",
                   help="install: run as LocalSystem (default) or as the service's virtual account "
                        "NT SERVICE\\<name> (less power: see the README)")
    p.add_argument("--name", default=SERVICE_NAME, help=f"service name (default: {SERVICE_NAME})")
    p.add_argument("--dry-run", action="store_true", help="install: print the plan, change nothing")
    p.set_defaults(func=main)


def _data_dir(config: str, platform: str) -> tuple[str, list[str]]:
    """The data folder the config names, and the config's problems (checked on Windows only)."""
    if platform != "win32" or not os.path.isfile(config):
        return "", []
    from ..daemon.assemble import validate
    from ..daemon.config import ConfigError, load
    try:
        cfg = load(config)
    except ConfigError as exc:
        return "", exc.errors
    checked = validate(cfg, allow_readable_config=True)
    return cfg.sensor.data_dir, checked.errors


def main(args, platform: str = sys.platform) -> int:
    plan = None
    if args.action == "install":
        data_dir, problems = _data_dir(args.config or "", platform)
        if problems and not args.dry_run:
            for e in problems:
                print(f"etw-sensor: config error: {args.config}: {e}", file=sys.stderr)
            print("etw-sensor: service install: the service would refuse to start with this config "
                  "(`etw-sensor config test` lists the same problems)", file=sys.stderr)
            return 2
        try:
            plan = install_plan(args.config or "", args.startup, args.name, args.account, data_dir)
        except ServiceError as exc:
            print(f"etw-sensor: service install: {exc}", file=sys.stderr)
            return 2
        if args.dry_run:
            print(f"would install service {plan.name!r} ({plan.class_string}), start type "
                  f"{args.startup}, account {plan.account_name or 'LocalSystem'}, config {plan.config}, "
                  f"recovery {' '.join(plan.sc_failure_command())}, event source {plan.event_source}")
            for folder, sddl in plan.acl:
                print(f"would set the ACL of {folder} to {sddl}")
            for group, account in plan.groups:
                print(f"would add {account} to the local group {group} (Performance Log Users)")
            return 0
    if platform != "win32":
        print("etw-sensor: the service commands need Windows (use `etw-sensor run` here)",
              file=sys.stderr)
        return 2
    from ..daemon import service_windows as sw
    try:
        if plan is not None:
            sw.install(plan)
        elif args.action == "uninstall":
            sw.uninstall(args.name)
        elif args.action == "start":
            sw.start(args.name)
        elif args.action == "stop":
            sw.stop(args.name)
        else:
            print(f"{args.name}: {sw.status(args.name)}")
            return 0
    except Exception as exc:  # pywin32 raises pywintypes.error with the Win32 message
        print(f"etw-sensor: service {args.action}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {args.action} done")
    return 0
