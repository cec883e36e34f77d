"""The forwarder: a thread that moves alerts from the spool to an output, losing none.

At-least-once delivery (style-and-delivery.md B.2): rows leave the spool only when the receiver
confirmed them (2xx, HEC code 0, bulk item 201/409). Batches close on count, bytes or time (the
oldest alert waited ``linger`` seconds). Status handling, from B.2's table:

=================================  ===========================================================
receiver says                      forwarder does
=================================  ===========================================================
2xx / item 201 / item 409          delete the rows; reset the backoff; leave the parked state
408, 429, 5xx, timeout, conn. err  keep; full-jitter exponential backoff (Retry-After wins)
413                                split the batch in halves (and send smaller batches after)
400 naming the alert (HEC, bulk)   that alert to dead_letter, the rest resent at once
400 not naming it                  halve until the poison alert is alone, then dead_letter it
401, 403, 404, TLS verification    keep everything, park: loud error, retry every park_interval
=================================  ===========================================================
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import msgspec

from .protocol import BISECT, OK, PARK, RESEND, RETRY, SPLIT, Output, SendResult
from .tls import ConfigError
from .spool import Spool, SpooledAlert, SpoolError

log = logging.getLogger("sensor.delivery")

IDLE = None  # step() result: nothing to send, wait for new alerts


@dataclass
class DeliveryConfig:
    """Forwarder tuning (the ``[delivery]`` options; seconds and bytes)."""

    batch_size: int = 500              # alerts per request at most
    batch_max_bytes: int = 4 * 1024 * 1024   # spooled bytes per request at most (before gzip)
    linger: float = 0.2                # send a partial batch once its oldest alert waited this long
    poll_interval: float = 1.0         # re-read the spool for alerts written by other processes
    backoff_base: float = 1.0          # full jitter: sleep U(0, min(cap, base * 2**failures))
    backoff_cap: float = 300.0         # also caps Retry-After
    park_interval: float = 60.0        # retry period while parked (401/403/TLS)
    enforce_interval: float = 5.0      # how often to apply the spool's age cap when idle
    concurrency: int = 2               # requests in flight at once (each on its own batch)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "DeliveryConfig":
        """Build from a plain dict; unknown keys are an error."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown delivery option(s): {', '.join(unknown)}")
        kw: dict[str, Any] = {}
        for key, value in options.items():
            default = getattr(cls, key)
            try:
                kw[key] = type(default)(value)
            except (TypeError, ValueError):
                raise ConfigError(f"delivery option {key}: expected a number, got {value!r}") from None
            if kw[key] < 0 or (key in ("batch_size", "batch_max_bytes", "concurrency") and kw[key] < 1):
                raise ConfigError(f"delivery option {key} must be positive")
        return cls(**kw)


class Forwarder(threading.Thread):
    """Delivers spooled alerts through ``output`` until stopped."""

    def __init__(self, spool: Spool, output: Output, config: DeliveryConfig | None = None, *,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 on_delivered: Callable[[Sequence[str]], None] | None = None) -> None:
        super().__init__(name="sensor-forwarder", daemon=True)
        self.spool = spool
        self.output = output
        self.config = config or DeliveryConfig()
        self.clock = clock
        self.rng = rng
        self.on_delivered = on_delivered
        self._stop_event = threading.Event()
        self._lock = threading.RLock()  # re-entrant: a spool health callback may ask for stats()
        self._failures = 0                 # consecutive failed attempts (drives the backoff)
        self._resume_at = 0.0
        self._cap = self.config.batch_size  # lowered after a 413
        self._last_enforce = 0.0
        self._claims: dict[int, tuple[int, int]] = {}  # batches in flight: token -> (first, last rowid)
        self._next_claim = 0
        self._workers: list[threading.Thread] = []
        self._stats: dict[str, Any] = {
            "sent": 0, "requests": 0, "failed_attempts": 0, "retries": 0, "dead_lettered": 0,
            "splits": 0, "parked": False, "park_reason": None, "last_error": None,
            "last_error_time": None, "last_success_time": None, "next_attempt_in": 0.0,
        }

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters for health: sent, failures, retries, dead-lettered, dropped, parked, depth, last error."""
        with self._lock:
            out = dict(self._stats)
        spool = self.spool.stats()
        out["dropped"] = spool["dropped"]
        out["spool_depth"] = spool["depth"]
        out["dead_letter_depth"] = spool["dead_letter_depth"]
        out["batch_cap"] = self._cap
        out["output"] = getattr(self.output, "name", type(self.output).__name__)
        return out

    def _note(self, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                if k in ("sent", "requests", "failed_attempts", "retries", "dead_lettered", "splits"):
                    self._stats[k] += v
                else:
                    self._stats[k] = v

    def _redact(self, text: str | None) -> str | None:
        redact = getattr(self.output, "redact", None)
        return redact(text) if redact and text else text

    # -- the work -------------------------------------------------------------------------------

    def step(self) -> float | None:
        """One cycle: send what is due. Returns seconds to wait, 0 for "go on", IDLE when empty."""
        now = self.clock()
        with self._lock:
            if self._resume_at > now:
                return self._resume_at - now
            if now - self._last_enforce >= self.config.enforce_interval:
                self._last_enforce = now
                self.spool.enforce()
            # Claim a batch no other worker holds (the rows stay in the spool until confirmed).
            items = self.spool.fetch(self._cap, self.config.batch_max_bytes, exclude=list(self._claims.values()))
            if not items:
                return IDLE
            if len(items) < self._cap and self.config.linger > 0:
                waited = now - items[0].created
                if 0 <= waited < self.config.linger:
                    return self.config.linger - waited
            token = self._next_claim = self._next_claim + 1
            self._claims[token] = (items[0].rowid, items[-1].rowid)
        try:
            return self._send_items(items)
        finally:
            with self._lock:
                del self._claims[token]

    def _send_items(self, items: list[SpooledAlert]) -> float:
        batch: list[tuple[SpooledAlert, dict]] = []
        corrupt = []
        for item in items:
            try:
                batch.append((item, item.decode()))
            except msgspec.DecodeError as exc:
                corrupt.append((item.rowid, f"corrupt spool row: {exc}", None))
        if corrupt:
            self._dead(corrupt)
        return self._deliver(batch)

    def _dead(self, rows: list[tuple[int, str, int | None]]) -> None:
        n = self.spool.dead_letter(rows)
        self._note(dead_lettered=n)

    def _deliver(self, batch: list[tuple[SpooledAlert, dict]]) -> float:
        stack = [batch] if batch else []
        while stack:
            chunk = stack.pop()
            result = self.output.send_batch([a for _, a in chunk])
            self._note(requests=1)
            by_id = {str(a.get("id")): item for item, a in chunk}
            done = [by_id[i].rowid for i in result.delivered if i in by_id]
            if done:
                self.spool.ack(done)
                self._note(sent=len(done), last_success_time=self.clock())
                if self.on_delivered is not None:
                    self.on_delivered([i for i in result.delivered if i in by_id])
            if result.rejected:
                self._dead([(by_id[i].rowid, reason, result.item_status.get(i, result.status))
                            for i, reason in result.rejected.items() if i in by_id])
            settled = set(result.delivered) | set(result.rejected)
            rest = [(item, a) for item, a in chunk if str(a.get("id")) not in settled]
            outcome = result.outcome
            if outcome == OK or not rest:
                if outcome == OK or done:
                    self._succeeded()
                continue
            if outcome in (RETRY, PARK):
                return self._failed(result, [item.rowid for item, _ in rest])
            self._note(failed_attempts=1, last_error=self._redact(result.error), last_error_time=self.clock())
            if outcome == RESEND:
                stack.append(rest)
            elif outcome in (SPLIT, BISECT):
                if len(rest) == 1:
                    item, alert = rest[0]
                    why = "too large for the receiver (413 alone)" if outcome == SPLIT else "rejected alone"
                    self._dead([(item.rowid, f"{why}: {result.error or ''} {result.detail or ''}".strip(),
                                 result.status)])
                    continue
                half = len(rest) // 2
                if outcome == SPLIT:
                    with self._lock:
                        self._cap = max(1, min(self._cap, half))
                    self._note(splits=1)
                stack.append(rest[half:])
                stack.append(rest[:half])
            else:
                return self._failed(SendResult(RETRY, error=f"unknown outcome {outcome!r}"),
                                    [item.rowid for item, _ in rest])
        return 0.0

    def _succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            was_parked = self._stats["parked"]
            self._stats["parked"] = False
            self._stats["park_reason"] = None
            self._stats["next_attempt_in"] = 0.0
        if was_parked:
            log.warning("alert delivery to %s resumed", getattr(self.output, "url", self.output.name))

    def _failed(self, result: SendResult, rowids: list[int]) -> float:
        error = self._redact(result.error) or f"HTTP {result.status}"
        self.spool.mark_failed(rowids, error)
        now = self.clock()
        if result.outcome == PARK:
            delay = self.config.park_interval
            self._note(failed_attempts=1, parked=True, park_reason=error, last_error=error,
                       last_error_time=now, next_attempt_in=delay)
            log.error("ALERT DELIVERY PARKED: %s. %d alert(s) kept in the spool, none dropped; fix the "
                      "output configuration (token, CA file, pin, URL). Retrying every %.0f s.",
                      error, self.spool.depth(), delay)
        else:
            with self._lock:
                self._failures += 1
                failures = self._failures
            if result.retry_after is not None:
                delay = min(self.config.backoff_cap, max(0.0, result.retry_after))
            else:
                # The exponent is capped: after days of outage 2**n would overflow a float.
                ceiling = min(self.config.backoff_cap, self.config.backoff_base * 2.0 ** min(failures - 1, 60))
                delay = self.rng() * ceiling
            self._note(failed_attempts=1, retries=1, last_error=error, last_error_time=now,
                       next_attempt_in=delay)
            log.warning("alert delivery failed (%s); retry in %.2f s", error, delay)
        with self._lock:
            self._resume_at = max(self._resume_at, now + delay)
        return delay

    # -- thread ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Loop over step() until stop(), with ``concurrency`` workers in all."""
        log.info("forwarding alerts to %s", getattr(self.output, "url", self.output.name))
        for i in range(1, self.config.concurrency):
            t = threading.Thread(target=self._loop, name=f"sensor-forwarder-{i}", daemon=True)
            self._workers.append(t)
            t.start()
        self._loop()
        for t in self._workers:
            t.join()

    def _loop(self) -> None:
        while not self._stop_event.is_set():
            mark = self.spool.write_mark
            try:
                delay = self.step()
            except SpoolError as exc:
                # Like Vector on disk errors: loud. The sensor keeps trying rather than exiting.
                log.critical("spool error: %s", exc)
                self._note(last_error=str(exc), last_error_time=self.clock())
                delay = self.config.park_interval
            except Exception as exc:  # never let the thread die with alerts waiting
                log.exception("forwarder error")
                self._note(last_error=self._redact(f"{type(exc).__name__}: {exc}"), last_error_time=self.clock())
                delay = max(self.config.backoff_base, 0.05)
            if delay is IDLE:
                self.spool.wait_for_data(mark, self.config.poll_interval)
            elif delay > 0:
                self._stop_event.wait(delay)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the thread to finish its current request and exit."""
        self._stop_event.set()
        self.spool.wake()
        if self.is_alive():
            self.join(timeout)

    def drained(self) -> bool:
        """True when the spool is empty and no request is in flight."""
        with self._lock:
            busy = bool(self._claims)
        return not busy and self.spool.depth() == 0

    def wait_drained(self, timeout: float) -> bool:
        """Wait until everything spooled so far is delivered (tests, shutdown)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.drained():
                return True
            time.sleep(0.01)
        return self.drained()
