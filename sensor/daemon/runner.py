"""Run a built pipeline until asked to stop: shared by ``etw-sensor run`` and the Windows service.

Exit codes (README): 0 everything ran and was delivered; 1 the sensor ran but its work has
errors (alerts left undelivered in the spool or dead-lettered, alerts not written to the spool,
input records that could not be read); 2 it could not start.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

from .health import Status

log = logging.getLogger("sensor")

OK, WORK_ERRORS, CANNOT_START = 0, 1, 2


def outcome(final: Status) -> tuple[int, list[str]]:
    """The exit code for a sensor that stopped with ``final``, and the reasons for a 1."""
    why = []
    if final.spool.enabled and final.spool.depth:
        why.append(f"{final.spool.depth} alert(s)/health document(s) NOT delivered: kept in the "
                   f"spool, sent after the next start")
    if final.delivery.dead_lettered:
        why.append(f"{final.delivery.dead_lettered} alert(s) rejected by the receiver and "
                   f"dead-lettered (etw-sensor spool dead)")
    if final.spool.write_failures:
        why.append(f"{final.spool.write_failures} alert(s) could not be written to the spool "
                   f"and are lost")
    if final.events.input_errors:
        why.append(f"{final.events.input_errors} input file(s) or record(s) could not be read")
    if final.events.errors:
        why.append(f"{final.events.errors} event(s) failed processing")
    if final.ledger.pending or final.ledger.lost:
        why.append(f"{final.ledger.pending + final.ledger.lost} health document(s)/alert(s) "
                   f"not spooled")
    return (WORK_ERRORS if why else OK), why


def serve(pipeline, stop: threading.Event, drain_timeout: float) -> int:
    """Run until ``stop`` is set (or a finite source is done); stop cleanly; the exit code."""
    finished = getattr(pipeline.source, "finished", None)
    services = list(getattr(pipeline, "services", ()) or ())
    started: list = []
    try:
        try:
            pipeline.start()
            for s in services:
                s.start()
                started.append(s)
        except Exception as exc:  # e.g. ETW access denied, no free session
            log.error("the sensor could not start: %s", exc)
            return CANNOT_START
        if finished is None:
            # A live source never finishes: block until asked to stop. On POSIX a signal
            # interrupts the wait; on Windows a console Ctrl-C is only seen between waits, so
            # the wait there is cut into 1 s pieces (the service sets ``stop`` from its own thread).
            piece = 1.0 if os.name == "nt" else None
            while not stop.wait(piece):
                pass
        else:
            while not stop.wait(0.2):
                if finished.is_set() and pipeline.wait_source(0):
                    log.info("replay finished")
                    break
    finally:
        for s in reversed(started):
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - stopping must go on
                log.exception("stopping %s failed", type(s).__name__)
        pipeline.stop(drain_timeout=drain_timeout)
    final: Status = pipeline.final
    log.info("stopped: %d event(s), %d alert(s), %d left in the spool for the next start",
             final.events.in_, final.alerts.total, final.spool.depth)
    code, why = outcome(final)
    for w in why:
        log.error("%s", w)
    return code


class SignalRelay:
    """Signal handlers that take no lock.

    Python runs a signal handler in the main thread between two bytecodes, also inside
    ``Event.wait()`` while that holds the event's own lock: a handler calling ``stop.set()``
    then waits for a lock its own thread holds, for ever (a SIGTERM that hangs the sensor). The
    handler here only writes the signal number to a pipe; a thread of its own reads it and runs
    the action (set the stop event, ask for a reload), where taking a lock is safe. At rest the
    thread blocks on the pipe: no wake-up."""

    def __init__(self, actions: dict[int, Callable[[int], None]]) -> None:
        self.actions = {int(k): v for k, v in actions.items()}
        self._r, self._w = os.pipe()
        if hasattr(os, "set_blocking"):
            os.set_blocking(self._w, False)    # a full pipe drops a repeat, never blocks the handler
        self._thread = threading.Thread(target=self._run, name="signals", daemon=True)
        self._previous: dict[int, object] = {}

    def handler(self, signum, frame) -> None:
        try:
            os.write(self._w, bytes([signum & 0xFF]))
        except OSError:
            pass

    def install(self) -> "SignalRelay":
        """Start the thread and install the handler for every signal of ``actions`` (main thread)."""
        self._thread.start()
        for sig in self.actions:
            self._previous[sig] = signal.signal(sig, self.handler)
        return self

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self._r, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                action = self.actions.get(signum)
                if action is None:
                    continue
                try:
                    action(signum)
                except Exception:  # noqa: BLE001 - the relay must outlive one failed action
                    log.exception("handling signal %d failed", signum)

    def close(self) -> None:
        """Put the handlers found at install() back and end the thread."""
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            except (OSError, ValueError, TypeError):
                pass
        os.close(self._w)                  # the thread reads the end of the pipe and returns
        self._thread.join(1.0)
        os.close(self._r)


def stop_signals() -> list[int]:
    """The signals that stop the sensor on this OS."""
    return [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s is not None]

