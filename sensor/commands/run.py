"""``etw-sensor run``: the sensor daemon in the foreground (the service runs the same code)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from ..daemon.config import ConfigError, default_config_path, load, parse
from ..daemon.runner import serve

log = logging.getLogger("sensor")


def register(sub) -> None:
    p = sub.add_parser("run", help="run the sensor (ETW on Windows, replay anywhere)",
                       description="Start the pipeline: source -> enrich -> match -> spool -> deliver. "
                                   "Stops on Ctrl-C/SIGTERM, draining queues and the spool.")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"TOML config (default: {default_config_path()})")
    p.add_argument("--replay", action="append", default=[], metavar="PATH",
                   help="replay these recordings instead of the configured source (repeatable)")
    p.add_argument("--speed", type=float, default=None,
                   help="with --replay: pace by event time (1 = real time)")
    p.set_defaults(func=main)


def main(args) -> int:
    path = args.config or default_config_path()
    try:
        if args.config is None and not os.path.exists(path):
            # No config installed: run with the defaults (live ETW on Windows, the built-in
            # rule, alerts to <data_dir>/alerts.jsonl) rather than refuse to start.
            cfg = parse({} if not args.replay else
                        {"source": {"kind": "replay", "replay": {"paths": list(args.replay)}}},
                        "<defaults>")
            print(f"etw-sensor: no config at {path}: using the defaults "
                  f"(see `etw-sensor config example`)", file=sys.stderr)
        else:
            cfg = load(path)
        if args.replay:
            cfg.source.kind = "replay"
            cfg.source.replay.paths = list(args.replay)
            cfg.source.replay.speed = args.speed or 0.0
        from ..daemon.assemble import prepare, setup_logging
        setup_logging(cfg)
        pipeline = prepare(cfg)
    except ConfigError as exc:
        print(f"etw-sensor: config error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _signal(signum, frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
        if sig is not None:
            signal.signal(sig, _signal)
    return serve(pipeline, stop, drain_timeout=cfg.sensor.drain_timeout_s)
