"""``etw-sensor run``: the sensor daemon in the foreground (the service runs the same code)."""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading

from ..daemon.config import ConfigError, default_config_path
from . import config_for, print_config_error

log = logging.getLogger("sensor")


def speed(text: str) -> float:
    """``--speed``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0 or value > 1e6:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1000000, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser("run", help="run the sensor (ETW on Windows, replay anywhere)",
                       description="Check the configuration (as `config test` does), then start "
                                   "the pipeline: source -> enrich -> match -> spool -> deliver. "
                                   "Stops on Ctrl-C/SIGTERM, draining queues and the spool. "
                                   "Exit 0: ran and delivered everything; 1: ran, but alerts were "
                                   "left undelivered or dead-lettered, or input was unreadable; "
                                   "2: refused to start (every problem is listed).")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"TOML config (default: {default_config_path()}, else the built-in defaults)")
    p.add_argument("--replay", action="append", default=[], metavar="PATH",
                   help="replay these recordings instead of the configured source (repeatable)")
    p.add_argument("--speed", type=speed, default=None, metavar="X",
                   help="with --replay: pace by event time (1 = real time, 0 = as fast as possible)")
    p.add_argument("--allow-readable-config", action="store_true",
                   help="accept a config file that other users can read (it may hold secrets)")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..daemon.assemble import instance_lock, prepare, setup_logging, validate
    from ..daemon.lock import AlreadyRunning
    from ..daemon.runner import SignalRelay, serve, stop_signals
    if args.speed is not None and not args.replay:
        print("etw-sensor: --speed needs --replay", file=sys.stderr)
        return 2

    def with_replay(c):
        if args.replay:
            c.source.kind = "replay"
            c.source.replay.paths = [os.path.abspath(p) for p in args.replay]
            c.source.replay.speed = args.speed or 0.0
        return c

    def check(c):
        return validate(with_replay(c), allow_readable_config=args.allow_readable_config,
                        replay_inputs_given=bool(args.replay)).errors
    cfg = config_for(args.config, full_check=check)
    if cfg is None:
        print("etw-sensor: not started: the configuration is refused", file=sys.stderr)
        return 2
    with_replay(cfg)
    checked = validate(cfg, allow_readable_config=args.allow_readable_config,
                       replay_inputs_given=bool(args.replay))
    for w in checked.warnings:
        print(f"etw-sensor: warning: {w}", file=sys.stderr)
    if checked.errors:
        print_config_error(ConfigError(checked.errors, cfg.path))
        print(f"etw-sensor: not started: {len(checked.errors)} configuration error(s)",
              file=sys.stderr)
        return 2
    try:
        setup_logging(cfg)
    except OSError as exc:               # e.g. the log file cannot be created after all
        print(f"etw-sensor: not started: {exc}", file=sys.stderr)
        return 2
    checked.warnings = []                # printed above
    lock = instance_lock(cfg)
    try:
        lock.acquire()  # before the spool is opened: only the lock holder may salvage it
    except AlreadyRunning as exc:
        print(f"etw-sensor: not started: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"etw-sensor: not started: cannot take the instance lock in {cfg.sensor.data_dir}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        pipeline = prepare(cfg, checked, owner=True)
    except (ConfigError, OSError) as exc:
        lock.release()
        if isinstance(exc, ConfigError):
            print_config_error(exc)
        else:
            print(f"etw-sensor: not started: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum):
        log.info("signal %d: stopping", signum)
        stop.set()

    actions = {sig: _stop for sig in stop_signals()}
    reloader = getattr(pipeline, "reloader", None)
    if hasattr(signal, "SIGHUP") and reloader is not None:
        actions[signal.SIGHUP] = lambda signum: reloader.request("signal")   # reload the rules
    # the handlers only write to a pipe: one that set the event itself could land inside the
    # main thread's stop.wait() while it holds the event's lock, and hang (SignalRelay)
    relay = SignalRelay(actions).install()
    try:
        return serve(pipeline, stop, drain_timeout=cfg.sensor.drain_timeout_s)
    finally:
        relay.close()
        lock.release()
