"""Health: one typed status, rendered four ways.

:class:`Status` (msgspec Structs) is the single source of truth about the running sensor.
The pipeline fills it from every component (the source, the queue, enrichment, the matcher,
the rules, the spool, the forwarder), and every report renders that one value:

- the heartbeat line in the log (:func:`heartbeat_line`);
- ``status.json`` in the data folder (:func:`write_status`, read back by :func:`read_status`);
- ``etw-sensor status`` (:func:`render_text`);
- the health documents sent to the SIEM (:class:`Ledger`, ``sensor.deliver.health``).

Health alerts (rules rejected, ETW loss, queue drops, spool write failures, delivery parked)
are derived from two consecutive statuses (:func:`transitions`) and go out as alerts.

New fault states (the spool full or failing, a damaged spool salvaged, a second instance)
are fields of :class:`SpoolHealth` / :class:`SensorInfo` with defaults, and a change of
``SpoolHealth.state`` raises a health alert of kind ``spool_<state>``.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Optional

import msgspec

from .. import __version__
from .._files import private_dir, read_regular
from ..deliver.health import health_alert, health_document

log = logging.getLogger("sensor.health")


class _H(msgspec.Struct, kw_only=True):
    """A part of the status: every field has a default, unknown fields are ignored on read,
    so any version of ``etw-sensor status`` reads any version's status file."""


class SensorInfo(_H):
    version: str = __version__
    pid: int = 0
    host: str = ""
    config: str = ""
    boot_id: str = ""
    started_at: float = 0.0
    uptime_s: float = 0.0
    heartbeat_s: float = 0.0            # 0 = no periodic heartbeat
    state: str = "running"              # running | stopped


class EventsHealth(_H):
    in_: int = msgspec.field(default=0, name="in")
    per_s: float = 0.0
    excluded: int = 0
    queue_dropped: int = 0             # dropped because a queue was full (ETW hand-off and matcher)
    queue_depth: int = 0
    queue_capacity: int = 0
    queue_high_water: int = 0
    enrich_errors: int = 0
    errors: int = 0                    # events whose processing failed
    input_errors: int = 0              # replay: records that could not be read


class EtwHealth(_H):
    events_lost: int = 0
    realtime_buffers_lost: int = 0
    rt_lost_events: int = 0
    lost: int = 0                      # the three above
    restarts: int = 0
    alive: Optional[bool] = None


class EnrichHealth(_H):
    backfill_attempts: int = 0
    backfill_missed: int = 0           # the process was gone, its pid reused, or access denied
    backfill_missed_gone: int = 0
    pe_errors: int = 0                 # images that could not be parsed, resolver errors


class PeCacheHealth(_H):
    reads: int = 0
    found: int = 0
    hits: int = 0
    batch_hits: int = 0
    misses: int = 0
    hit_rate: float = 0.0
    failures: int = 0
    resolver_errors: int = 0
    size: int = 0
    maxsize: int = 0


class MatcherHealth(_H):
    engine: str = "?"
    rules: int = 0
    us_per_event: float = 0.0
    pipeline_us_per_event: float = 0.0
    # rule evaluations a step-budgeted (opted-in backtracking) regex left undecided: the
    # rule did not match that event, every other rule was evaluated
    undecided: int = 0
    undecided_by_rule: dict[str, int] = {}


class PackHealth(_H):
    path: str = ""
    rules: int = 0
    correlations: int = 0              # Sigma correlation rules the pack carries
    filters: int = 0                   # Sigma filters the pack carries
    key_id: Optional[str] = None       # the key the pack is signed with (None: not signed)
    verified: bool = False             # the signature was checked against a trusted key
    signed_at: Optional[str] = None
    sha256: str = ""


class RulesUpdateHealth(_H):
    url: str = ""                      # where rule packs are polled from (no credentials)
    polls: int = 0
    updates: int = 0                   # new packs fetched
    not_modified: int = 0
    failures: int = 0
    last_poll_at: Optional[float] = None
    last_error: Optional[str] = None
    etag: Optional[str] = None


class RulesHealth(_H):
    loaded: int = 0
    rejected: int = 0                  # problems found loading the rules (running without them)
    on_error: str = "fail"
    problems: list[str] = []           # file:line: reason, each
    generation: int = 0                # 0 at start, +1 per rule set swapped in by a reload
    trigger: str = ""                  # what loaded the running set: start, control, signal, watch, url
    loaded_at: float = 0.0
    key_ids: list[str] = []            # the keys the running packs are signed with
    packs: list[PackHealth] = []
    reloads: int = 0                   # reloads applied
    reload_failures: int = 0           # reloads refused (the previous set kept running)
    last_reload_error: Optional[str] = None
    last_reload_at: Optional[float] = None
    restart_needed: list[str] = []     # config keys changed on disk that only a restart applies
    update: RulesUpdateHealth = msgspec.field(default_factory=RulesUpdateHealth)
    # rules that can never fire (they name a field the source never fills; `rules doctor`),
    # per source profile, and the profile of the running source ("" when unknown: replay)
    never_fire: dict[str, int] = {}
    profile: str = ""


class BudgetHealth(_H):
    cpu_limit_percent: float = 0.0     # 0 = no limit
    cpu_percent: float = 0.0           # the sensor's own CPU over the last window (% of one core)
    window_s: float = 0.0
    level: int = 0                     # shed steps in force: 0 none .. 4 event sampling
    shedding: list[str] = []           # the steps in force, in order
    over_budget_ticks: int = 0         # measurements (every window/5) over the limit
    shed: dict[str, int] = {}          # step -> work items shed (fields, PE reads, hashes, events)
    sampled_out: int = 0               # events not matched (sampling)
    sample_rate: float = 1.0           # fraction of events matched while sampling
    memory_limit_mb: float = 0.0
    rss_mb: float = 0.0
    caps: dict[str, int] = {}          # table/cache sizes set from the memory limit


class AlertsHealth(_H):
    total: int = 0
    by_rule: dict[str, int] = {}
    titles: dict[str, str] = {}        # rule id -> title, for the rules that alerted


class NoiseHealth(_H):
    throttled: dict[str, int] = {}
    excluded_alerts: dict[str, int] = {}
    excluded_events: int = 0


class SpoolHealth(_H):
    enabled: bool = False
    state: str = "ok"                  # ok, disk_full or damaged (each change raises a health alert)
    depth: int = 0                     # rows waiting for delivery (alerts and health documents)
    oldest_age_s: Optional[float] = None
    bytes: int = 0
    max_bytes: int = 0
    dropped: int = 0                   # by the size or age cap (persisted across restarts)
    expired: int = 0
    written: int = 0
    duplicates: int = 0
    dead_letter_depth: int = 0
    dead_dropped: int = 0
    write_failures: int = 0            # alerts that could not be written (not kept)
    error: Optional[str] = None
    # Fault states (docs/delivery.md, "Faults")
    disk_full: bool = False            # the disk holding the spool is full: it does not grow now
    disk_full_since: Optional[str] = None
    held: int = 0                      # new alerts waiting in memory (disk space, a heal)
    held_dropped: int = 0              # held alerts dropped over the memory cap
    dropped_disk_full: int = 0         # oldest alerts dropped to make room on a full disk (persisted)
    damaged: bool = False              # SQLite reported damage while running: healed at the next use
    heals: int = 0                     # damaged files moved aside and recovered while running
    last_heal: Optional[dict[str, Any]] = None   # what the last of them did
    salvaged: int = 0                  # rows recovered from damaged spools (persisted)
    damaged_rows: int = 0              # rows that failed their checks (to dead letters, persisted)
    salvaged_at_start: Optional[dict[str, Any]] = None   # what the start-up salvage did
    wal_lost_at_start: bool = False    # the -wal of an unclean stop was missing at start


class DeliveryHealth(_H):
    enabled: bool = False
    output: str = ""
    sent: int = 0
    requests: int = 0
    failed_attempts: int = 0
    retries: int = 0
    dead_lettered: int = 0
    splits: int = 0
    parked: bool = False
    park_reason: Optional[str] = None
    last_error: Optional[str] = None
    last_error_time: Optional[float] = None
    last_success_time: Optional[float] = None
    next_attempt_in: float = 0.0
    batch_cap: int = 0
    consecutive_failures: int = 0      # failed rounds in a row (the back-off exponent)
    ack_pending: int = 0               # delivered rows whose confirmation waits for disk space
    corrupt_rows: int = 0              # rows that failed their checksum (to dead letters)
    rejected_alone: int = 0            # alerts a 400 named after the batch was split


class LedgerHealth(_H):
    boot_id: str = ""
    seq: int = -1                      # of the last health document (start = 0)
    documents: int = 0
    alerts: int = 0
    pending: int = 0                   # health documents/alerts waiting for the spool to work
    lost: int = 0                      # dropped while the spool failed (a gap in seq)


class CorrelationHealth(_H):
    """Sigma correlations (``sensor.detect.correlate``); absent (zero) when none are loaded."""
    correlations: int = 0
    events_correlated: int = 0
    alerts: int = 0
    no_event_time: int = 0             # events without a usable time: not correlated
    late_events: int = 0               # behind the newest event by more than lateness_s
    reorder_buffered: int = 0
    reorder_forced: int = 0            # evaluated before lateness_s: the buffer was over max_state_mb
    lateness_s: float = 0.0
    max_state: int = 0                 # window entries per correlation
    max_state_mb: float = 0.0          # and their memory (estimated) per correlation
    state_mb: float = 0.0              # memory the windows hold now (estimated)
    entries: int = 0
    evicted: int = 0                   # entries dropped over max_state or max_state_mb (oldest first)
    windows_discarded: int = 0         # entries dropped by reloads (their correlation changed or went)
    missing_group_key: int = 0
    state_save_failures: int = 0
    state: dict[str, Any] = {}         # restored at start, or why not
    by_correlation: dict[str, dict[str, Any]] = {}


class Status(_H):
    sensor: SensorInfo = msgspec.field(default_factory=SensorInfo)
    events: EventsHealth = msgspec.field(default_factory=EventsHealth)
    etw: EtwHealth = msgspec.field(default_factory=EtwHealth)
    enrich: EnrichHealth = msgspec.field(default_factory=EnrichHealth)
    pe_cache: PeCacheHealth = msgspec.field(default_factory=PeCacheHealth)
    matcher: MatcherHealth = msgspec.field(default_factory=MatcherHealth)
    rules: RulesHealth = msgspec.field(default_factory=RulesHealth)
    alerts: AlertsHealth = msgspec.field(default_factory=AlertsHealth)
    noise: NoiseHealth = msgspec.field(default_factory=NoiseHealth)
    spool: SpoolHealth = msgspec.field(default_factory=SpoolHealth)
    delivery: DeliveryHealth = msgspec.field(default_factory=DeliveryHealth)
    ledger: LedgerHealth = msgspec.field(default_factory=LedgerHealth)
    budget: BudgetHealth = msgspec.field(default_factory=BudgetHealth)
    correlation: CorrelationHealth = msgspec.field(default_factory=CorrelationHealth)
    problems: list[str] = []           # what an operator must look at now
    source: dict[str, Any] = {}        # the source's own counters, as it reports them
    written_at: float = 0.0


def problems(s: Status) -> list[str]:
    """The conditions an operator must act on, in words."""
    out = []
    if s.rules.rejected:
        out.append(f"{s.rules.rejected} rule problem(s): running without them")
    if s.etw.lost:
        out.append(f"ETW lost {s.etw.lost} event(s)")
    if s.etw.alive is False and s.sensor.state == "running":
        out.append("the ETW source is not running")
    if s.events.queue_dropped:
        out.append(f"{s.events.queue_dropped} event(s) dropped: queue full")
    if s.matcher.undecided:
        out.append(f"{s.matcher.undecided} rule evaluation(s) undecided: a backtracking regex "
                   f"ran out of its step budget")
    if s.events.errors:
        out.append(f"{s.events.errors} event(s) failed processing")
    if s.events.input_errors:
        out.append(f"{s.events.input_errors} input file(s) or record(s) could not be read")
    if s.spool.write_failures:
        out.append(f"{s.spool.write_failures} alert(s) could not be written to the spool")
    if s.spool.state != "ok":
        out.append(f"spool {s.spool.state}" + (f": {s.spool.error}" if s.spool.error else ""))
    if s.spool.held:
        out.append(f"{s.spool.held} alert(s) held in memory until the spool can take them")
    if s.spool.salvaged_at_start:
        out.append("the spool was damaged and salvaged at start: "
                   + str(s.spool.salvaged_at_start.get("message") or s.spool.salvaged_at_start)[:300])
    if s.spool.last_heal:
        out.append(f"the spool was damaged while running and healed {s.spool.heals} time(s); last: "
                   f"recovered {s.spool.last_heal.get('recovered')}, lost {s.spool.last_heal.get('lost')}, "
                   f"moved aside to {s.spool.last_heal.get('moved_to')}"[:400])
    if s.spool.wal_lost_at_start:
        out.append("the spool's write-ahead log was missing at start: recent alerts may be lost")
    if s.spool.dropped:
        out.append(f"{s.spool.dropped} undelivered alert(s) dropped by the spool cap")
    if s.delivery.parked:
        out.append(f"delivery parked: {s.delivery.park_reason or '-'}")
    if s.delivery.dead_lettered:
        out.append(f"{s.delivery.dead_lettered} alert(s) dead-lettered (etw-sensor spool dead)")
    if s.ledger.lost:
        out.append(f"{s.ledger.lost} health document(s) lost while the spool failed")
    if s.rules.last_reload_error:
        out.append(f"rule reload refused (the previous rules run): {s.rules.last_reload_error}")
    if s.rules.restart_needed:
        out.append(f"config changed, restart needed for: {', '.join(s.rules.restart_needed[:10])}")
    if s.rules.update.last_error:
        out.append(f"rule update from {s.rules.update.url or '-'} failed: {s.rules.update.last_error}")
    if s.budget.level:
        out.append(f"over the CPU budget ({s.budget.cpu_percent:.0f} % of {s.budget.cpu_limit_percent:g} %):"
                   f" shedding {', '.join(s.budget.shedding)}")
    if s.budget.memory_limit_mb and s.budget.rss_mb > s.budget.memory_limit_mb:
        out.append(f"memory {s.budget.rss_mb:.0f} MB over the budget of {s.budget.memory_limit_mb:g} MB")
    c = s.correlation
    if c.evicted:
        out.append(f"{c.evicted} correlation window entr(y/ies) evicted over correlation.max_state "
                   f"or max_state_mb ({c.max_state} entries, {c.max_state_mb:g} MB per correlation)")
    if c.state_save_failures:
        out.append(f"correlation windows could not be saved {c.state_save_failures} time(s)")
    if c.correlations and str(c.state.get("reason", "")).startswith("saved state unusable"):
        out.append(f"correlation windows lost at restart: {c.state.get('reason')}")
    return out


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _never(r: RulesHealth) -> str:
    if r.profile and r.profile in r.never_fire:
        return f"{r.never_fire[r.profile]} on {r.profile}"
    if not r.never_fire:
        return "?"
    lo, hi = min(r.never_fire.values()), max(r.never_fire.values())
    return f"{lo}" if lo == hi else f"{lo}-{hi} by source"


def heartbeat_line(s: Status) -> str:
    """One log line with every counter an operator looks at first."""
    ev, d, sp = s.events, s.delivery, s.spool
    return (f"heartbeat: {ev.in_} events ({ev.per_s:.1f}/s), etw lost {s.etw.lost}, "
            f"queue drops {ev.queue_dropped}, backfill misses {s.enrich.backfill_missed}, "
            f"pe errors {s.enrich.pe_errors}, pe hit rate {s.pe_cache.hit_rate:.0%}, "
            f"rules {s.rules.loaded} ({s.rules.rejected} rejected), "
            f"rule set {s.rules.generation}{' signed ' + ','.join(s.rules.key_ids) if s.rules.key_ids else ''} "
            f"(reloads {s.rules.reloads}, refused {s.rules.reload_failures}), "
            f"never fire {_never(s.rules)}, "
            f"matcher {s.matcher.us_per_event:.2f} us/event, alerts {s.alerts.total}, "
            f"spool depth {sp.depth} (oldest {_age(sp.oldest_age_s)}), "
            f"spool write failures {sp.write_failures}, delivery sent {d.sent}, "
            f"delivery failures {d.failed_attempts}, dead letters {d.dead_lettered}, "
            f"parked {'yes' if d.parked else 'no'}"
            + (f", cpu {s.budget.cpu_percent:.1f}/{s.budget.cpu_limit_percent:g} %, shed level "
               f"{s.budget.level}, sampled out {s.budget.sampled_out}"
               if s.budget.cpu_limit_percent else ""))


def render_text(s: Status, path: str, now: float | None = None) -> str:
    """``etw-sensor status``: readable, rule titles rather than ids, ``-`` for what is unknown."""
    now = time.time() if now is None else now
    lines = [f"status file {path}, written {_age(max(0.0, now - s.written_at))} ago",
             f"sensor {s.sensor.state}: host {s.sensor.host or '-'}, pid {s.sensor.pid or '-'}, "
             f"version {s.sensor.version or '-'}, up {_age(s.sensor.uptime_s)}, "
             f"boot {s.sensor.boot_id or '-'}, health document #{s.ledger.seq}",
             heartbeat_line(s)]
    if s.alerts.by_rule:
        lines.append("alerts by rule:")
        for rid, n in sorted(s.alerts.by_rule.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:6d}  {s.alerts.titles.get(rid) or rid}  [{rid}]")
    if s.problems:
        lines.append("PROBLEMS:")
        lines += [f"  {p}" for p in s.problems]
    for p in s.rules.problems[:20]:
        lines.append(f"  {p}")
    if len(s.rules.problems) > 20:
        lines.append(f"  ... and {len(s.rules.problems) - 20} more (etw-sensor rules validate)")
    if s.delivery.last_error:
        lines.append(f"last delivery error: {s.delivery.last_error}")
    return "\n".join(lines)


_ENC = msgspec.json.Encoder(enc_hook=str)
_DEC = msgspec.json.Decoder(Status)


def to_dict(s: Status) -> dict:
    """The status as plain data (what status.json holds)."""
    return msgspec.to_builtins(s, enc_hook=str)


def write_status(path: str, status: Status) -> None:
    """Write the status file atomically (a reader never sees half a file), private (0600)."""
    import tempfile
    d = os.path.dirname(os.path.abspath(path)) or "."
    private_dir(d)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=d)   # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.format(_ENC.encode(status), indent=1))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# A status the sensor writes is a few KiB; anything past this is not one.
MAX_STATUS_BYTES = 16 << 20


def read_status(path: str) -> Status:
    """The last status the sensor wrote (ValueError when the file is not one).

    A FIFO or a device given as the status file is refused (OSError), not waited on."""
    data = read_regular(path, MAX_STATUS_BYTES)
    if data is None:
        raise ValueError(f"not a sensor status file: larger than {MAX_STATUS_BYTES >> 20} MiB")
    try:
        return _DEC.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a sensor status file: {exc}") from None


# -- health alerts from what changed -----------------------------------------------------------

def transitions(prev: Status | None, cur: Status) -> list[tuple[str, str, dict, str]]:
    """Health alerts for what got worse since ``prev``: (kind, message, details, key).

    ``key`` makes the alert id, so the same episode is sent once even if asked twice.
    """
    boot = cur.sensor.boot_id
    out: list[tuple[str, str, dict, str]] = []
    if prev is None:
        if cur.rules.rejected:
            out.append(("rules_rejected",
                        f"sensor started without {cur.rules.rejected} rule file(s)/rule(s): "
                        + "; ".join(cur.rules.problems[:5])
                        + (" ..." if len(cur.rules.problems) > 5 else ""),
                        {"rejected": cur.rules.rejected, "problems": cur.rules.problems[:100],
                         "rules_loaded": cur.rules.loaded}, f"{boot}"))
        return out

    def grew(kind: str, before: int, now: int, what: str, extra: dict | None = None) -> None:
        if now > before:
            out.append((kind, f"{what}: {now - before} since the last report ({now} since start)",
                        {"new": now - before, "total": now, **(extra or {})}, f"{boot}:{now}"))

    grew("etw_loss", prev.etw.lost, cur.etw.lost, "ETW lost events",
         {"events_lost": cur.etw.events_lost, "realtime_buffers_lost": cur.etw.realtime_buffers_lost,
          "rt_lost_events": cur.etw.rt_lost_events})
    grew("queue_drops", prev.events.queue_dropped, cur.events.queue_dropped,
         "events dropped because the queue was full", {"queue_capacity": cur.events.queue_capacity})
    for step, n in cur.budget.shed.items():
        grew(f"budget_shed_{step}", prev.budget.shed.get(step, 0), n,
             f"over the CPU budget: shed {step.replace('_', ' ')}",
             {"cpu_percent": cur.budget.cpu_percent, "cpu_limit_percent": cur.budget.cpu_limit_percent,
              "level": cur.budget.level, "shedding": cur.budget.shedding})
    if cur.budget.memory_limit_mb and cur.budget.rss_mb > cur.budget.memory_limit_mb \
            and not prev.budget.rss_mb > prev.budget.memory_limit_mb:
        out.append(("memory_over_budget", f"sensor memory {cur.budget.rss_mb:.0f} MB is over its budget "
                    f"of {cur.budget.memory_limit_mb:g} MB",
                    {"rss_mb": cur.budget.rss_mb, "memory_limit_mb": cur.budget.memory_limit_mb,
                     "caps": cur.budget.caps}, f"{boot}:{cur.written_at}"))
    grew("spool_write_failed", prev.spool.write_failures, cur.spool.write_failures,
         "alerts not written to the spool", {"error": cur.spool.error})
    grew("correlation_evicted", prev.correlation.evicted, cur.correlation.evicted,
         "correlation window entries evicted over correlation.max_state or max_state_mb",
         {"max_state": cur.correlation.max_state, "max_state_mb": cur.correlation.max_state_mb})
    if cur.delivery.parked and not prev.delivery.parked:
        out.append(("delivery_parked", f"alert delivery parked: {cur.delivery.park_reason or '-'}",
                    {"reason": cur.delivery.park_reason, "spool_depth": cur.spool.depth},
                    f"{boot}:{cur.delivery.failed_attempts}"))
    # disk_full: the spool sends its own begin and end alerts (spool_disk_full, with the counts)
    if cur.spool.state != prev.spool.state and cur.spool.state not in ("ok", "disk_full"):
        out.append((f"spool_{cur.spool.state}", f"spool {cur.spool.state}: {cur.spool.error or '-'}",
                    {"state": cur.spool.state, "error": cur.spool.error}, f"{boot}:{cur.written_at}"))
    return out


# -- the completeness ledger -------------------------------------------------------------------

class Ledger:
    """Health documents and health alerts into the spool, numbered per boot.

    A document or alert the spool refuses (disk full, damaged spool) waits in memory, in
    order, and goes in with the next one; past ``max_pending`` the oldest is dropped and
    counted (the SIEM sees the gap in the sequence numbers).
    """

    def __init__(self, spool, sensor: dict, *, clock: Callable[[], float] = time.time,
                 max_pending: int = 256) -> None:
        self.spool = spool
        self.sensor = dict(sensor)
        self.clock = clock
        self.boot_id = uuid.uuid4().hex
        self.sensor["boot_id"] = self.boot_id
        self.seq = -1
        self.documents = 0
        self.alerts = 0
        self.lost = 0
        self.max_pending = max_pending
        self._pending: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def stats(self) -> LedgerHealth:
        return LedgerHealth(boot_id=self.boot_id, seq=self.seq, documents=self.documents,
                            alerts=self.alerts, pending=len(self._pending), lost=self.lost)

    def next_seq(self) -> int:
        """The sequence number the next health document gets (the status reports it)."""
        return self.seq + 1

    def record(self, status: Status, reason: str) -> dict:
        """Spool the health document for ``status`` (its ``ledger.seq`` is its number)."""
        with self._lock:
            self.seq += 1
            status.ledger.seq = self.seq
            body = to_dict(status)
            body.pop("source", None)           # the source's raw counters stay in status.json
            doc = health_document(body, reason=reason, boot_id=self.boot_id, seq=self.seq,
                                  sensor=self.sensor, ts=self.clock(), summary=heartbeat_line(status))
            self.documents += 1
            self._put(doc, "alert")
        return doc

    def alert(self, kind: str, message: str, details: dict, key: str) -> dict:
        """Spool a health alert."""
        doc = health_alert(kind, message, details, sensor=self.sensor, ts=self.clock(), key=key)
        with self._lock:
            self.alerts += 1
            self._put(doc, "health")
        log.warning("health alert %s: %s", doc["rule"]["id"], message)
        return doc

    def flush(self) -> None:
        """Retry what the spool refused before."""
        with self._lock:
            self._put(None, "")

    def _put(self, doc: dict | None, kind: str) -> None:
        if doc is not None:
            self._pending.append((doc, kind))
        while self._pending:
            doc_, kind_ = self._pending[0]
            try:
                self.spool.put_many([doc_], kind=kind_)
            except Exception as exc:  # the spool's own errors, sqlite errors, a full disk
                log.error("cannot spool health %s %s: %s (kept in memory, retried)",
                          "document" if kind_ == "alert" else "alert", doc_.get("id"), exc)
                while len(self._pending) > self.max_pending:
                    self._pending.popleft()
                    self.lost += 1
                return
            self._pending.popleft()


class Heartbeat:
    """Calls ``beat()`` every ``interval`` seconds on its own thread."""

    def __init__(self, beat: Callable[[], Any], interval: float):
        self.beat = beat
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
