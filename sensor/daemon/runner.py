"""Run a built pipeline until asked to stop: shared by ``etw-sensor run`` and the Windows service."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("sensor")


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
