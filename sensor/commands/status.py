"""``etw-sensor status``: print the running sensor's last heartbeat."""
from __future__ import annotations

import json
import sys
import time

from ..daemon.health import heartbeat_line, read_status
from . import config_for


def register(sub) -> None:
    p = sub.add_parser("status", help="print the last heartbeat of the running sensor")
    p.add_argument("-c", "--config", metavar="FILE", help="config file (to find the status file)")
    p.add_argument("--status-file", metavar="FILE", help="read this status file")
    p.add_argument("--json", action="store_true", help="print the whole status as JSON")
    p.set_defaults(func=main)


def main(args) -> int:
    path = args.status_file
    if not path:
        cfg = config_for(args.config)
        if cfg is None:
            return 2
        path = cfg.sensor.status_file
    try:
        status = read_status(path)
    except FileNotFoundError:
        print(f"etw-sensor: no status at {path} (is the sensor running?)", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"etw-sensor: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(status, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    age = time.time() - float(status.get("written_at", 0))
    print(f"status file {path}, written {age:.0f} s ago")
    print(heartbeat_line(status))
    alerts = status.get("alerts", {}).get("by_rule", {})
    for rid, n in alerts.items():
        print(f"  {n:6d} alert(s)  {rid}")
    d = status.get("delivery", {})
    if d.get("parked"):
        print(f"DELIVERY PARKED: {d.get('park_reason')}")
    return 0
