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
400 not naming it                  halve until an alert is rejected alone; dead_letter it only
                                   when it is rejected alone again after the receiver accepted
                                   other alerts (else keep it and back off: a 400 storm is an
                                   outage, not a verdict on the alerts)
401, 403, 404, TLS verification    keep everything, park: loud error, retry every park_interval
=================================  ===========================================================

Back-off is shared by the workers and counts *rounds*: requests that were already in flight when
a failure was counted belong to the same round and do not count again, so the n-th failed round
waits U(0, min(cap, base * 2**(n-1))) whatever ``concurrency`` is.

When the spool cannot record a confirmation (disk full), the delivered rows are remembered in
memory, never sent again, and their acknowledgement is retried with back-off.
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
from .spool import HEAL_RETRY_INTERVAL, Spool, SpoolDamaged, SpooledAlert, SpoolError, SpoolFull, SpoolRowError

log = logging.getLogger("sensor.delivery")

IDLE = None  # step() result: nothing to send, wait for new alerts
MAX_UNCONFIRMED = 100_000   # delivered rows awaiting their acknowledgement on disk, at most
CONFIRM_RETRY_BASE = 0.25   # seconds: first retry of an acknowledgement the disk refused
MAINTAIN_INTERVAL = 0.5     # seconds between spool upkeep calls (held alerts, disk-full state)
FAULT_POLL = 1.0            # seconds between idle upkeep passes while the spool is in a fault state
MAX_SUSPECTS = 10_000       # alerts rejected alone, waiting for a second verdict


@dataclass
class DeliveryConfig:
    """Forwarder tuning (the ``[delivery]`` options; seconds and bytes)."""

    batch_size: int = 500              # alerts per request at most
    batch_max_bytes: int = 4 * 1024 * 1024   # spooled bytes per request at most (before gzip)
    linger: float = 5.0                # send a partial batch once its oldest alert waited this long
    poll_interval: float = 30.0        # idle: re-read the spool for alerts written by other processes
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
        # wait_drained() callers: while there is one, no batch waits for its linger.
        self._draining = 0
        self._lock = threading.RLock()  # re-entrant: a spool health callback may ask for stats()
        self._failures = 0                 # consecutive failed rounds (drives the backoff)
        self._round = 0                    # bumped when a failure is counted: in-flight requests of
                                           # that round do not count again
        self._resume_at = 0.0
        self._cap = self.config.batch_size  # lowered after a 413
        self._last_enforce = 0.0
        self._last_maintain = 0.0
        self._claims: dict[int, tuple[int, int]] = {}  # batches in flight: token -> (first, last rowid)
        self._next_claim = 0
        self._workers: list[threading.Thread] = []
        # Per worker thread: its last step sent a batch that held every row there was.
        self._local = threading.local()
        # The last fetch left rows behind (more than one request holds): a second worker that
        # wakes for new alerts joins in only then.
        self._rows_left = False
        # Set while it holds: the other workers wait on this alone, so a commit that fits in one
        # request wakes only the first worker (no thread wake-up that finds nothing to do).
        self._help = threading.Event()
        # Settled rows whose acknowledgement (delete / move to dead letters) the disk refused:
        # rowid -> ("ack",) or ("dead", reason, status). Never fetched again while here.
        self._unconfirmed: dict[int, tuple] = {}
        self._confirm_lock = threading.Lock()
        self._confirm_at = 0.0
        self._confirm_failures = 0
        # Alerts a 400 rejected alone: rowid -> [request number of the first lone rejection,
        # time before which it is not sent again, lone rejections]. A second lone rejection after
        # the receiver accepted anything in between sends one to dead letters.
        self._suspects: dict[int, list] = {}
        self._request_seq = 0
        self._last_accept_seq = 0
        spool.delivery_state = self._delivery_state
        self._stats: dict[str, Any] = {
            "sent": 0, "requests": 0, "failed_attempts": 0, "retries": 0, "dead_lettered": 0,
            "splits": 0, "parked": False, "park_reason": None, "last_error": None,
            "last_error_time": None, "last_success_time": None, "next_attempt_in": 0.0,
            "consecutive_failures": 0, "corrupt_rows": 0, "rejected_alone": 0,
            "ack_failures": 0, "ack_pending": 0, "ack_retry_in": 0.0, "mark_failed_errors": 0,
        }

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters for health: sent, failures, retries, dead-lettered, dropped, parked, depth, last
        error, and the fault state (acknowledgements waiting for disk space, the spool's disk-full
        and salvage flags). Never raises."""
        with self._lock:
            out = dict(self._stats)
            out["consecutive_failures"] = self._failures
            out["ack_pending"] = len(self._unconfirmed)
            out["ack_retry_in"] = max(0.0, self._confirm_at - self.clock()) if self._unconfirmed else 0.0
        spool = self.spool.stats()
        out["dropped"] = spool.get("dropped", 0)
        out["spool_depth"] = spool.get("depth", 0)
        out["dead_letter_depth"] = spool.get("dead_letter_depth", 0)
        out["spool_disk_full"] = spool.get("disk_full", False)
        out["spool_error"] = spool.get("error")
        out["batch_cap"] = self._cap
        out["output"] = getattr(self.output, "name", type(self.output).__name__)
        return out

    def _delivery_state(self) -> list[int]:
        """For the spool's drop-oldest: rows delivered but not yet confirmed on disk."""
        with self._lock:
            return [r for r, op in self._unconfirmed.items() if op[0] == "ack"]

    def _note(self, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                if k in ("sent", "requests", "failed_attempts", "retries", "dead_lettered", "splits",
                         "corrupt_rows", "rejected_alone", "ack_failures", "mark_failed_errors"):
                    self._stats[k] += v
                else:
                    self._stats[k] = v

    def _redact(self, text: str | None) -> str | None:
        redact = getattr(self.output, "redact", None)
        return redact(text) if redact and text else text

    # -- the work -------------------------------------------------------------------------------

    def step(self) -> float | None:
        """One cycle: send what is due. Returns seconds to wait, 0 for "go on", IDLE when empty."""
        self._local.drained = False
        now = self.clock()
        self._upkeep(now)
        with self._lock:
            if self._resume_at > now:
                return self._resume_at - now
            if len(self._unconfirmed) >= MAX_UNCONFIRMED:
                # Everything more would only add to what the disk cannot record: wait for it.
                return max(CONFIRM_RETRY_BASE, self._confirm_at - now)
            # Claim a batch no other worker holds (the rows stay in the spool until confirmed).
            more: list = []
            items = self.spool.fetch(self._cap, self.config.batch_max_bytes,
                                     exclude=list(self._claims.values()), skip=_Skip(self, now), more=more)
            self._rows_left = bool(more)
            if more and items:             # (none taken: nothing for another worker either)
                self._help.set()
            elif self._help.is_set() and not self._stop_event.is_set():
                self._help.clear()          # (under the lock: stop() sets it under the same lock)
            if not items:
                return IDLE if not self._unconfirmed else max(CONFIRM_RETRY_BASE, self._confirm_at - now)
            # A batch the fetch cut at the size or byte cap is full, and a drain (stop) sends at
            # once: neither waits for the linger.
            if (len(items) < self._cap and self.config.linger > 0 and not more and not self._draining
                    and sum(len(i.body) for i in items) < self.config.batch_max_bytes):
                waited = now - items[0].created
                if 0 <= waited < self.config.linger:
                    return self.config.linger - waited
            token = self._next_claim = self._next_claim + 1
            self._claims[token] = (items[0].rowid, items[-1].rowid)
            round_ = self._round
        try:
            delay = self._send_items(items, round_)
        finally:
            with self._lock:
                del self._claims[token]
        if delay == 0 and not more:
            self._local.drained = True
        return delay

    def _upkeep(self, now: float) -> None:
        """Spool upkeep that must not stop delivery: confirmations waiting for disk space, held
        alerts, the disk-full state, the age cap."""
        if self._unconfirmed and now >= self._confirm_at:
            self._confirm_pending(now)
        if now - self._last_maintain >= MAINTAIN_INTERVAL:
            self._last_maintain = now
            self.spool.maintain()
        if now - self._last_enforce >= self.config.enforce_interval:
            self._last_enforce = now
            try:
                self.spool.enforce()
            except SpoolFull:
                pass  # the disk-full state is the spool's; the cap is applied again later

    def _send_items(self, items: list[SpooledAlert], round_: int = 0) -> float:
        batch: list[tuple[SpooledAlert, dict]] = []
        corrupt = []
        for item in items:
            try:
                batch.append((item, item.decode()))
            except (SpoolRowError, msgspec.DecodeError) as exc:
                corrupt.append((item.rowid, f"corrupt spool row: {exc}", None))
        if corrupt:
            self._note(corrupt_rows=len(corrupt))
            self._dead(corrupt)
        return self._deliver(batch, round_)

    def _dead(self, rows: list[tuple[int, str, int | None]]) -> None:
        try:
            n = self.spool.dead_letter(rows)
        except SpoolError as exc:
            self._remember([(rowid, ("dead", reason, status)) for rowid, reason, status in rows], exc)
            n = len(rows)
        with self._lock:
            for rowid, _, _ in rows:
                self._suspects.pop(rowid, None)
        self._note(dead_lettered=n)

    def _ack(self, rowids: list[int]) -> None:
        try:
            self.spool.ack(rowids)
        except SpoolError as exc:
            left = getattr(exc, "remaining", rowids)
            self._remember([(rowid, ("ack",)) for rowid in left], exc)
        with self._lock:
            for rowid in rowids:
                self._suspects.pop(rowid, None)

    def _remember(self, entries: list[tuple[int, tuple]], exc: SpoolError) -> None:
        """Settled rows the spool could not record: keep them in memory, retry with back-off."""
        now = self.clock()
        with self._lock:
            first = not self._unconfirmed
            self._unconfirmed.update(entries)
            if first:
                self._confirm_failures = 0
                self._confirm_at = now + CONFIRM_RETRY_BASE
        self._note(ack_failures=1)
        if first:
            log.warning("cannot record %d delivered alert(s) in the spool (%s): they are not sent again; "
                        "retrying", len(entries), exc)

    def _confirm_pending(self, now: float) -> None:
        """Retry the acknowledgements the disk refused (one worker at a time)."""
        if not self._confirm_lock.acquire(blocking=False):
            return
        try:
            with self._lock:
                pending = dict(self._unconfirmed)
            acks = [r for r, op in pending.items() if op[0] == "ack"]
            dead = [(r, op[1], op[2]) for r, op in pending.items() if op[0] == "dead"]
            done: list[int] = []
            error: SpoolError | None = None
            if acks:
                try:
                    self.spool.ack(acks)
                    done += acks
                except SpoolError as exc:
                    left = set(getattr(exc, "remaining", acks))
                    done += [r for r in acks if r not in left]
                    error = exc
            if dead and error is None:
                try:
                    self.spool.dead_letter(dead)
                    done += [r for r, _, _ in dead]
                except SpoolError as exc:
                    error = exc
            with self._lock:
                for r in done:
                    self._unconfirmed.pop(r, None)
                if self._unconfirmed:
                    self._confirm_failures += 1
                    wait = min(self.config.park_interval,
                               CONFIRM_RETRY_BASE * 2.0 ** min(self._confirm_failures, 30))
                    self._confirm_at = now + wait
                left = len(self._unconfirmed)
            if left == 0:
                log.warning("recorded %d delivered alert(s) in the spool after the disk refused it", len(done))
            elif error is not None and self._confirm_failures in (1, 5, 10) or self._confirm_failures % 50 == 0:
                log.warning("still cannot record %d delivered alert(s) in the spool: %s", left, error)
        finally:
            self._confirm_lock.release()

    def _deliver(self, batch: list[tuple[SpooledAlert, dict]], round_: int = 0) -> float:
        stack = [batch] if batch else []
        suspects: list[tuple[SpooledAlert, dict, SendResult]] = []
        accepted = False
        requests = 0
        while stack:
            chunk = stack.pop()
            result, seq = self._send(chunk)
            requests += 1
            accepted = accepted or result.outcome == OK or bool(result.delivered)
            by_id = {str(a.get("id")): item for item, a in chunk}
            done = [by_id[i].rowid for i in result.delivered if i in by_id]
            if done:
                self._ack(done)
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
                keep = [item.rowid for item, _ in rest] + [s[0].rowid for s in suspects]
                return self._failed(result, keep, round_)
            if outcome not in (RESEND, SPLIT, BISECT):
                # not in the protocol: one failed attempt (counted by _failed alone), kept
                keep = [item.rowid for item, _ in rest] + [s[0].rowid for s in suspects]
                return self._failed(SendResult(RETRY, error=f"unknown outcome {outcome!r}"), keep, round_)
            self._note(failed_attempts=1, last_error=self._redact(result.error), last_error_time=self.clock())
            if outcome == RESEND:
                stack.append(rest)
            else:  # SPLIT, BISECT
                if len(rest) == 1:
                    item, alert = rest[0]
                    if outcome == SPLIT:
                        self._dead([(item.rowid, f"too large for the receiver (413 alone): "
                                                 f"{result.error or ''} {result.detail or ''}".strip(), result.status)])
                    else:
                        self._note(rejected_alone=1)
                        if self._second_verdict(item, seq):
                            self._dead([(item.rowid, self._rejection_reason(result), result.status)])
                        else:
                            suspects.append((item, alert, result))
                    continue
                half = len(rest) // 2
                if outcome == SPLIT:
                    with self._lock:
                        self._cap = max(1, min(self._cap, half))
                    self._note(splits=1)
                stack.append(rest[half:])
                stack.append(rest[:half])
        return self._confirm_suspects(suspects, round_, accepted or requests < 2)

    def _send(self, chunk: list[tuple[SpooledAlert, dict]]) -> tuple[SendResult, int]:
        result = self.output.send_batch([a for _, a in chunk])
        self._note(requests=1)
        with self._lock:
            self._request_seq += 1
            seq = self._request_seq
            if result.outcome == OK or result.delivered:
                self._last_accept_seq = seq
        return result, seq

    def _second_verdict(self, item: SpooledAlert, seq: int) -> bool:
        """Record a lone rejection of ``item``; True when it is the second one with an accepted
        request in between (the 400 is about this alert, not about the receiver's state)."""
        now = self.clock()
        with self._lock:
            entry = self._suspects.get(item.rowid)
            if entry is not None and self._last_accept_seq > entry[0]:
                return True
            if entry is None:
                if len(self._suspects) >= MAX_SUSPECTS:
                    self._suspects.pop(next(iter(self._suspects)))
                entry = self._suspects[item.rowid] = [seq, 0.0, 0]
            entry[2] += 1
            # Set aside (not sent again) for a while that grows with each lone rejection; other
            # alerts flow meanwhile, and the first one accepted is the evidence a verdict needs.
            entry[1] = now + min(self.config.backoff_cap,
                                 max(self.config.backoff_base, 0.05) * 2.0 ** min(entry[2] - 1, 30))
            return False

    @staticmethod
    def _rejection_reason(result: SendResult) -> str:
        return (f"rejected alone twice, with other alerts accepted in between: "
                f"{result.error or ''} {result.detail or ''}").strip()

    def _confirm_suspects(self, suspects: list[tuple[SpooledAlert, dict, SendResult]], round_: int,
                          accepted: bool) -> float:
        """Alerts a 400 rejected alone in this round: ask again at once when the receiver accepted
        anything after that rejection; the others stay set aside (for a time that grows with each
        lone rejection) while other alerts flow. A round of several requests in which the receiver
        accepted nothing is a failed round (shared back-off), never a verdict on the alerts."""
        unresolved: list[SpooledAlert] = []
        last: SendResult | None = None
        for k, (item, alert, first_result) in enumerate(suspects):
            with self._lock:
                entry = self._suspects.get(item.rowid)
                evidence = entry is not None and self._last_accept_seq > entry[0]
            if not evidence:
                unresolved.append(item)
                last = first_result
                continue
            result, seq = self._send([(item, alert)])
            aid = str(alert.get("id"))
            # an answer that names the alert decides it, whatever its outcome: a 200 whose item
            # for it is a 400 (Elasticsearch's bulk answer) is a rejection, not a delivery
            if aid in result.delivered or (result.outcome == OK and aid not in result.rejected):
                accepted = True
                self._ack([item.rowid])
                self._note(sent=1, last_success_time=self.clock())
                if self.on_delivered is not None:
                    self.on_delivered([str(alert.get("id"))])
                self._succeeded()
            elif result.rejected or result.outcome in (BISECT, RESEND):
                self._note(rejected_alone=1, failed_attempts=1, last_error=self._redact(result.error),
                           last_error_time=self.clock())
                reason = (result.rejected.get(aid) or next(iter(result.rejected.values()), None)
                          or self._rejection_reason(result))
                self._dead([(item.rowid, reason, result.item_status.get(aid, result.status))])
            elif result.outcome == SPLIT:
                self._dead([(item.rowid, f"too large for the receiver (413 alone): {result.error or ''}".strip(),
                             result.status)])
            else:  # RETRY / PARK: the receiver's state, not the alert
                keep = [item.rowid] + [u.rowid for u in unresolved] + [s[0].rowid for s in suspects[k + 1:]]
                return self._failed(result, keep, round_)
        if unresolved:
            error = (f"HTTP {last.status if last else 400} for alert(s) sent alone: {len(unresolved)} set "
                     f"aside until the receiver accepts something else")
            try:
                self.spool.mark_failed([u.rowid for u in unresolved], error)
            except SpoolError:
                self._note(mark_failed_errors=1)
            if not accepted:
                return self._failed(SendResult(RETRY, status=last.status if last else 400,
                                               error=f"HTTP {last.status if last else 400} for every request of "
                                                     f"the batch: kept, retried with back-off"), [], round_)
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

    def _failed(self, result: SendResult, rowids: list[int], round_: int | None = None) -> float:
        error = self._redact(result.error) or f"HTTP {result.status}"
        if self._stop_event.is_set() and result.outcome == RETRY:
            # ended by stop() (the request was aborted): not a failure of the receiver
            log.info("delivery of %d alert(s) ended by the stop: they stay in the spool and are "
                     "sent after the next start", len(rowids))
            return 0.0
        try:
            self.spool.mark_failed(rowids, error)
        except SpoolError as exc:  # attempt counters are for display: never worth stopping for
            self._note(mark_failed_errors=1)
            log.debug("cannot count the failed attempt in the spool: %s", exc)
        now = self.clock()
        if result.outcome == PARK:
            delay = self.config.park_interval
            self._note(failed_attempts=1, parked=True, park_reason=error, last_error=error,
                       last_error_time=now, next_attempt_in=delay)
            depth = self._depth()
            log.error("ALERT DELIVERY PARKED: %s. %s alert(s) kept in the spool, none dropped; fix the "
                      "output configuration (token, CA file, pin, URL). Retrying every %.0f s.",
                      error, "an unknown number of" if depth is None else depth, delay)
            with self._lock:
                self._resume_at = max(self._resume_at, now + delay)
            return delay
        with self._lock:
            # One failure per round: a request that was in flight when another one's failure was
            # counted is part of the same attempt.
            counted = round_ is None or round_ == self._round
            if counted:
                self._failures += 1
                self._round += 1
            failures = self._failures
            if result.retry_after is not None:
                delay = min(self.config.backoff_cap, max(0.0, result.retry_after))
            elif counted:
                # The exponent is capped: after days of outage 2**n would overflow a float.
                ceiling = min(self.config.backoff_cap, self.config.backoff_base * 2.0 ** min(failures - 1, 60))
                delay = self.rng() * ceiling
            else:
                delay = max(0.0, self._resume_at - now)
            self._resume_at = max(self._resume_at, now + delay)
            delay = self._resume_at - now
        self._note(failed_attempts=1, retries=1, last_error=error, last_error_time=now,
                   next_attempt_in=delay)
        log.warning("alert delivery failed (%s); retry in %.2f s", error, delay)
        return delay

    def _depth(self) -> int | None:
        """The spool's depth, or None when the spool cannot say (it is in a fault)."""
        try:
            return self.spool.depth()
        except SpoolError:
            return None

    # -- thread ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Loop over step() until stop(), with ``concurrency`` workers in all."""
        log.info("forwarding alerts to %s", getattr(self.output, "url", self.output.name))
        for i in range(1, self.config.concurrency):
            # Only this thread polls when idle; the others wake for new alerts (and stop) alone.
            t = threading.Thread(target=self._loop, args=(None,), name=f"sensor-forwarder-{i}", daemon=True)
            t.start()
            self._workers.append(t)   # started threads only: stats and tests read their ids
        self._loop()
        for t in self._workers:
            t.join()
        if self._unconfirmed:
            self._confirm_pending(self.clock())
            if self._unconfirmed:
                log.warning("%d delivered alert(s) could not be recorded in the spool (disk full): they "
                            "are sent again after the next start (duplicates, never losses)",
                            len(self._unconfirmed))

    def _loop(self, poll: float | None = -1.0) -> None:
        """Step until stop(); idle, wait for an in-process write or ``poll`` seconds (the
        configured poll interval by default). A worker started with ``poll=None`` (the second
        and later ones) waits instead until a fetch left rows behind (more than one request
        holds) and for stop, with no timeout."""
        if poll is not None and poll < 0:
            poll = self.config.poll_interval
        helper = poll is None
        errors = 0
        while True:
            # The mark first, then the stop check: a stop() landing between them bumps the
            # mark (spool.wake), so the wait below returns at once instead of sleeping ``poll``.
            mark = self.spool.write_mark
            if self._stop_event.is_set():
                break
            try:
                delay = self.step()
                errors = 0
                if delay == 0 and self._local.drained and not self._unconfirmed:
                    # Sent, and that fetch held every row there was: wait for new ones instead
                    # of fetching again to find none (a row written since then moved the
                    # write mark, so the wait below returns at once).
                    delay = IDLE
            except SpoolError as exc:
                # Like Vector on disk errors: loud. The sensor keeps trying rather than exiting; the
                # same failure is logged once, then every tenth time.
                errors += 1
                if errors == 1 or errors % 10 == 0:
                    log.critical("spool error: %s", exc)
                self._note(last_error=str(exc), last_error_time=self.clock())
                delay = self.config.park_interval
                if isinstance(exc, SpoolDamaged):
                    # The spool heals itself (moves the file aside, recovers its rows): go on
                    # at once when it did, else try again when the next heal is due.
                    delay = 0.0 if self.spool.heal_if_due() else min(delay, HEAL_RETRY_INTERVAL)
            except Exception as exc:  # never let the thread die with alerts waiting
                log.exception("forwarder error")
                self._note(last_error=self._redact(f"{type(exc).__name__}: {exc}"), last_error_time=self.clock())
                delay = max(self.config.backoff_base, 0.05)
            if delay is IDLE:
                if helper:
                    # new alerts that fit in the first worker's request are its alone: this one
                    # sleeps until a fetch leaves rows behind (or stop), never fetching to find
                    # them taken
                    self._help.wait()
                    continue
                wait = poll
                if poll is not None and self._spool_in_fault():
                    wait = min(poll, FAULT_POLL)   # keep up the upkeep: held alerts, disk full
                volume = self.spool.put_volume
                if self.spool.wait_for_data(mark, wait) != mark and self.config.linger > 0:
                    # New alerts: let the batch fill for ``linger`` before the one fetch that
                    # sends it, so the commits of that time share one fetch, one request and
                    # one acknowledgement. The commits in between do not wake this thread; a
                    # full batch (count or bytes), a drain and stop end the wait at once.
                    self.spool.wait_for_volume(volume, self._cap, self.config.batch_max_bytes,
                                               self.config.linger, done=self._linger_over)
            elif delay > 0:
                self._stop_event.wait(delay)

    def _linger_over(self) -> bool:
        return self._stop_event.is_set() or self._draining > 0

    def _spool_in_fault(self) -> bool:
        """True while the spool holds alerts in memory, is in its disk-full state or damaged."""
        try:
            st = self.spool.fault_stats()
        except Exception:  # noqa: BLE001 - unknown: poll as in a fault
            return True
        return bool(st.get("held") or st.get("disk_full") or st.get("damaged"))

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the threads to exit: a request still in flight is ended now (its alerts stay in
        the spool and are sent after the next start), so a receiver that does not answer cannot
        hold the stop for the output's read timeout."""
        self._stop_event.set()
        with self._lock:                  # a step() clearing _help cannot undo this set
            self._help.set()
        self.spool.wake()
        abort = getattr(self.output, "abort", None)
        if abort is not None:
            try:
                abort()
            except Exception:  # noqa: BLE001 - stopping goes on
                log.exception("could not end the request in flight")
        if self.is_alive():
            self.join(timeout)

    def drained(self) -> bool:
        """True when every spooled alert was delivered (or settled) and no request is in flight."""
        with self._lock:
            busy = bool(self._claims)
            settled = len(self._unconfirmed)
        memory = self.spool.fault_stats()   # alerts held on a full disk, or being committed now
        if busy or memory["held"] or memory["storing"]:
            return False
        # a spool that cannot say what it holds cannot be delivered from either: a stop's drain
        # does not wait its whole timeout for it (what the spool holds stays for the next start)
        depth = self._depth()
        return depth is None or depth <= settled

    def wait_drained(self, timeout: float) -> bool:
        """Wait until everything spooled so far is delivered (tests, shutdown). Meanwhile no
        batch waits for its linger: what is spooled is sent at once."""
        with self._lock:
            self._draining += 1
        self.spool.wake()
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if self.drained():
                    return True
                time.sleep(0.01)
            return self.drained()
        finally:
            with self._lock:
                self._draining -= 1


class _Skip:
    """The rows a fetch passes over: confirmations waiting for disk space, and alerts set aside
    after a lone 400 (until their time is up)."""

    __slots__ = ("fwd", "now")

    def __init__(self, fwd: Forwarder, now: float) -> None:
        self.fwd, self.now = fwd, now

    def __contains__(self, rowid: object) -> bool:
        if rowid in self.fwd._unconfirmed:
            return True
        entry = self.fwd._suspects.get(rowid)  # type: ignore[call-overload]
        # set aside until its time is up, or until the receiver accepted something after its
        # rejection (then the next lone rejection is a verdict)
        return entry is not None and entry[1] > self.now and self.fwd._last_accept_seq <= entry[0]

    def __bool__(self) -> bool:
        return bool(self.fwd._unconfirmed) or bool(self.fwd._suspects)
