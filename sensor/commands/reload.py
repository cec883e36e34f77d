"""``etw-sensor reload``: ask the running sensor to reload its rules (and live config)."""
from __future__ import annotations

import json
import sys

from . import config_for


def register(sub) -> None:
    p = sub.add_parser("reload", help="reload the running sensor's rules without a restart",
                       description="Ask the running sensor (the one whose data folder the config "
                                   "names) to load, check and compile its rules again and swap "
                                   "them in between two batches; the config's live keys are "
                                   "applied, other changes are reported as needing a restart. "
                                   "Exit 0: the new set runs; 1: refused (the previous set keeps "
                                   "running) or no sensor answered; 2: bad config.")
    p.add_argument("-c", "--config", metavar="FILE", help="config file (default: as `run`)")
    p.add_argument("--json", action="store_true", help="print the sensor's answer as JSON")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="how long to wait for the answer (default 120 s)")
    p.set_defaults(func=main)


def main(args) -> int:
    if sys.platform == "win32":
        from ..daemon.control_windows import pipe_request as send_command
    else:
        from ..daemon.control import send_command
    cfg = config_for(args.config, quiet=True)
    if cfg is None:
        return 2
    try:
        answer = send_command(cfg.sensor.data_dir, "reload", timeout=max(1.0, args.timeout))
    except (OSError, TimeoutError) as exc:
        print(f"etw-sensor: no running sensor answered on {cfg.sensor.data_dir} "
              f"({getattr(exc, 'strerror', None) or exc})", file=sys.stderr)
        return 1
    if args.json:
        json.dump(answer, sys.stdout, indent=1, sort_keys=True, default=str)
        print()
    if not answer.get("ok"):
        for e in answer.get("errors") or [answer.get("error") or "refused"]:
            print(f"etw-sensor: reload refused: {e}", file=sys.stderr)
        print("etw-sensor: the previous rules keep running", file=sys.stderr)
        return 1
    if not args.json:
        keys = ", ".join(answer.get("key_ids") or []) or "-"
        corr = answer.get("correlations") or 0
        print(f"reloaded: rule set {answer.get('generation')}, {answer.get('rules')} rules, "
              + (f"{corr} correlation(s), " if corr else "")
              + f"signed by {keys}, {answer.get('seconds')} s"
              + ("" if answer.get("applied") else " (handed to the worker, not yet taken)"))
        for w in answer.get("warnings") or []:
            print(f"warning: {w}")
        if answer.get("restart_needed"):
            print(f"restart needed for: {', '.join(answer['restart_needed'])}")
    return 0
