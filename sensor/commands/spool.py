"""``etw-sensor spool status|dead|requeue``: look into the alert spool, bring dead letters back."""
from __future__ import annotations

import json
import os
import sqlite3
import sys

from . import config_for


def _limit(text: str) -> int:
    import argparse
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= n <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1000000, got {n}")
    return n


def register(sub) -> None:
    p = sub.add_parser("spool", help="inspect the alert spool; requeue dead-lettered alerts")
    p.add_argument("action", choices=("status", "dead", "requeue"),
                   help="status: counters and health events; dead: alerts a receiver rejected; "
                        "requeue: send dead-lettered alerts again (after fixing the cause)")
    p.add_argument("ids", nargs="*", metavar="ALERT_ID", help="requeue: only these alerts")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config file (to find the spool); default: as `run`")
    p.add_argument("--path", metavar="FILE", help="the spool file itself")
    p.add_argument("--limit", type=_limit, default=50, help="dead: how many to show (newest first)")
    p.set_defaults(func=main)


def main(args) -> int:
    path = args.path
    if not path:
        cfg = config_for(args.config, quiet=True)
        if cfg is None:
            return 2
        path = cfg.spool.path
    if not os.path.exists(path):
        print(f"etw-sensor: no spool at {path}", file=sys.stderr)
        return 1
    from ..deliver.spool import Spool, SpoolError
    if not os.path.isfile(path):
        print(f"etw-sensor: {path} is not a spool file", file=sys.stderr)
        return 1
    try:
        spool = Spool(path)
    except (SpoolError, OSError) as exc:
        print(f"etw-sensor: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "status":
            print(json.dumps({"path": path, **spool.stats(),
                              "health_events": spool.health_events(10)}, indent=1, default=str))
        elif args.action == "dead":
            for d in spool.dead_letters(args.limit):
                a = d.get("alert") or {}
                print(json.dumps({"id": d["id"], "status": d["status"], "reason": d["reason"],
                                  "attempts": d["attempts"], "rule": (a.get("rule") or {}).get("title"),
                                  "process": a.get("PROCESSNAME")}, default=str))
        else:
            n = spool.requeue_dead(args.ids or None)
            print(f"requeued {n} alert(s); the running sensor sends them with the next batch")
    except (SpoolError, sqlite3.Error) as exc:
        print(f"etw-sensor: spool {path}: {exc}", file=sys.stderr)
        return 1
    finally:
        spool.close()
    return 0
