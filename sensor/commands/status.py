"""``etw-sensor status``: the running sensor's last heartbeat, readable."""
from __future__ import annotations

import json
import sys
import time

from ..daemon.health import read_status, render_text, to_dict
from . import config_for


def register(sub) -> None:
    p = sub.add_parser("status", help="print the last heartbeat of the running sensor",
                       description="Read the status file the sensor writes every heartbeat. "
                                   "Exit 0: read, and fresh (or the sensor stopped cleanly); "
                                   "1: missing, unreadable, or stale (no heartbeat for three "
                                   "periods: the sensor stopped or hangs); 2: bad config.")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config file (to find the status file); default: as `run`")
    p.add_argument("--status-file", metavar="FILE", help="read this status file")
    p.add_argument("--json", action="store_true", help="print the whole status as JSON")
    p.set_defaults(func=main)


def stale(status, now: float) -> float | None:
    """Seconds since the last heartbeat when a running sensor missed three of them."""
    hb = status.sensor.heartbeat_s
    age = now - status.written_at
    if status.sensor.state == "running" and hb > 0 and age > 3 * hb + 5:
        return age
    return None


def main(args) -> int:
    path = args.status_file
    if not path:
        cfg = config_for(args.config, quiet=True)
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
        json.dump(to_dict(status), sys.stdout, indent=1, sort_keys=True, default=str)
        print()
    else:
        print(render_text(status, path))
    late = stale(status, time.time())
    if late is not None:
        print(f"etw-sensor: STALE: no heartbeat for {late:.0f} s (every {status.sensor.heartbeat_s:g} s "
              f"expected): the sensor stopped or hangs", file=sys.stderr)
        return 1
    return 0
