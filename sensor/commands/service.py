"""``etw-sensor service install|uninstall|start|stop|status`` (Windows)."""
from __future__ import annotations

import sys

from ..daemon.service import ACTIONS, SERVICE_NAME, ServiceError, STARTUP, install_plan


def register(sub) -> None:
    p = sub.add_parser("service", help="manage the Windows service")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("-c", "--config", metavar="FILE", help="install: absolute path of the config file")
    p.add_argument("--startup", choices=sorted(STARTUP), default="delayed",
                   help="install: start type (default: delayed automatic start)")
    p.add_argument("--name", default=SERVICE_NAME, help=f"service name (default: {SERVICE_NAME})")
    p.add_argument("--dry-run", action="store_true", help="install: print the plan, change nothing")
    p.set_defaults(func=main)


def main(args, platform: str = sys.platform) -> int:
    plan = None
    if args.action == "install":
        try:
            plan = install_plan(args.config or "", args.startup, args.name)
        except ServiceError as exc:
            print(f"etw-sensor: service install: {exc}", file=sys.stderr)
            return 2
        if args.dry_run:
            print(f"would install service {plan.name!r} ({plan.class_string}), start type "
                  f"{args.startup}, config {plan.config}, recovery {' '.join(plan.sc_failure_command())}, "
                  f"event source {plan.event_source}")
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
