"""``etw-sensor run``: the sensor daemon in the foreground (the service runs the same code)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from ..config import ConfigError, default_config_path, load, parse

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
        from ..app import prepare, setup_logging
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


def serve(pipeline, stop: threading.Event, drain_timeout: float) -> int:
    """Run until ``stop`` is set (or a finite source is done); then stop cleanly."""
    finished = getattr(pipeline.source, "finished", None)
    try:
        try:
            pipeline.start()
        except Exception as exc:  # e.g. ETW access denied, no free session
            log.error("the sensor could not start: %s", exc)
            return 2
        while not stop.wait(0.2):
            if finished is not None and finished.is_set() and pipeline.wait_source(0):
                log.info("replay finished")
                break
    finally:
        status = pipeline.stop(drain_timeout=drain_timeout)
    depth = (status.get("spool") or {}).get("depth", 0)
    log.info("stopped: %d event(s), %d alert(s), %d left in the spool for the next start",
             status["events"]["in"], status["alerts"]["total"], depth)
    return 0
