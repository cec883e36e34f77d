"""``etw-sensor capture -o FILE``: write the raw ETW records the consumer sees (Windows).

The file replays anywhere: ``etw-sensor scan FILE`` and ``etw-sensor run --replay FILE`` read it
through the same decoder, device mapper, process table and system-logger join as live capture
(format: docs/etw.md, "Capture files").
"""
from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any, Callable

from ..sources.base import SourceUnavailable


def register(sub) -> None:
    p = sub.add_parser("capture", help="record raw ETW process records to a file (Windows)",
                       description="Start the ETW sessions and write every raw record the consumer "
                                   "sees to FILE (JSON lines; gzip when FILE ends in .gz), until "
                                   "Ctrl-C, --seconds or --records. Needs Windows, elevated.")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--records", type=int, default=None, help="stop after this many records")
    p.add_argument("--no-system-logger", action="store_true",
                   help="Kernel-Process only (no private system-logger session)")
    p.set_defaults(func=main)


def run_capture(output: str, seconds: float | None = None, records: int | None = None,
                system_logger: bool = True, stop: threading.Event | None = None,
                platform: Callable[[], tuple[Any, dict]] | None = None, config: Any = None,
                on_event: Callable[[Any], None] | None = None) -> dict:
    """Capture until ``stop``, ``seconds`` or ``records``; the source's stats and the count.

    ``platform`` gives the session backend and helpers (``etw_windows.platform_parts`` on
    Windows; the tests pass the fake Win32 library's)."""
    from ..sources.capture import CaptureWriter
    from ..sources.etw import EtwConfig, EtwSource
    if platform is None:
        if sys.platform != "win32":
            raise SourceUnavailable("capture needs Windows (live ETW); replay a capture here with "
                                    "`etw-sensor scan FILE` or `etw-sensor run --replay FILE`")
        from ..sources.etw_windows import platform_parts
        platform = platform_parts
    backend, helpers = platform()
    cfg = config or EtwConfig()
    cfg.system_logger = system_logger
    cfg.seed_from_psutil = False
    computer = cfg.computer or socket.gethostname()
    devices = dict(helpers["device_loader"]()) if helpers.get("device_loader") else {}
    stop = stop or threading.Event()
    writer = CaptureWriter(output, computer, devices, system_root=helpers.get("system_root") or "C:\\Windows",
                           system_logger=system_logger)
    lock = threading.Lock()

    def tap(raw: tuple) -> None:
        with lock:
            writer.write(raw)
            if records is not None and writer.records >= records:
                stop.set()

    def emit(ev: Any) -> bool:
        if on_event is not None:
            on_event(ev)
        return True

    src = EtwSource(cfg, backend=backend, helpers=helpers, tap=tap)
    try:
        src.start(emit)
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.wait(0.1):
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        src.stop()
        writer.close()
    return {"records": writer.records, "stats": src.stats()}


def main(args) -> int:
    from ..daemon.runner import SignalRelay, stop_signals
    stop = threading.Event()
    # the handler only writes to a pipe (one setting the event could hang in stop.wait's lock)
    relay = SignalRelay({sig: lambda signum: stop.set() for sig in stop_signals()}).install()
    try:
        return _capture(args, stop)
    finally:
        relay.close()


def _capture(args, stop: threading.Event) -> int:
    try:
        result = run_capture(args.output, args.seconds, args.records, not args.no_system_logger, stop)
    except SourceUnavailable as exc:
        print(f"etw-sensor: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"etw-sensor: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. the session could not start (not elevated)
        print(f"etw-sensor: capture failed: {exc}", file=sys.stderr)
        return 1
    st = result["stats"]
    print(f"capture: {result['records']} record(s) to {args.output}; events lost {st['events_lost']}, "
          f"real-time buffers lost {st['realtime_buffers_lost']}, dropped in the callback "
          f"{st['callback_drops']}", file=sys.stderr)
    return 0
