"""What the sensor says about itself to the SIEM: health alerts and health documents.

Two kinds of self-report travel through the spool and the configured output like alerts:

- **Health alerts** (``"type": "health"``): something an analyst must act on (rules rejected,
  ETW loss, alerts dropped by the spool cap, spool writes failing, delivery parked). Each kind
  has its own rule id (:data:`HEALTH_RULES`), so a SIEM rule can key on it; formats render them
  as alerts (ECS ``event.kind: alert``).
- **Health documents** (``"type": "metric"``): the completeness ledger. One at start, one every
  heartbeat and one at stop, each with the boot id and a sequence number that goes up by one,
  so the SIEM can tell a quiet host (documents keep coming, no alerts) from a blind one
  (documents stop) and a gap (a missing sequence number) from a restart (a new boot id).
  ECS renders them as ``event.kind: metric``, Splunk HEC with their own sourcetype,
  Elasticsearch into their own data stream.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any, Mapping

from .. import __version__

HEALTH = "health"    # the "type" of a health alert
METRIC = "metric"    # the "type" of a health document

# kind -> the rule block a health alert of that kind carries
HEALTH_RULES: dict[str, dict[str, Any]] = {
    "rules_rejected": {
        "id": "sensor-health-rules-rejected", "title": "Sensor started without some of its rules",
        "level": "high",
        "description": "Rule files, rules or rule packs were rejected at start and the sensor runs "
                       "without them ([rules] on_error = \"skip\"). Detection is incomplete.",
    },
    "etw_loss": {
        "id": "sensor-health-etw-loss", "title": "Sensor lost ETW events",
        "level": "high",
        "description": "ETW reported lost events or buffers: process starts happened that the "
                       "sensor never saw.",
    },
    "queue_drops": {
        "id": "sensor-health-queue-drops", "title": "Sensor dropped events (queue full)",
        "level": "high",
        "description": "Process starts were dropped because the matcher could not keep up; they "
                       "were never evaluated.",
    },
    "spool_overflow": {
        "id": "sensor-health-spool-overflow", "title": "Sensor dropped undelivered alerts (spool full)",
        "level": "high",
        "description": "The alert spool reached spool.max_mb and dropped its oldest undelivered "
                       "alerts.",
    },
    "spool_expired": {
        "id": "sensor-health-spool-expired", "title": "Sensor dropped undelivered alerts (too old)",
        "level": "high",
        "description": "Undelivered alerts older than spool.max_age_days were dropped.",
    },
    "spool_write_failed": {
        "id": "sensor-health-spool-write-failed", "title": "Sensor could not write alerts to its spool",
        "level": "critical",
        "description": "Writing alerts to the spool failed (disk full, damaged or unwritable "
                       "spool): those alerts were not kept.",
    },
    "spool_disk_full": {
        "id": "sensor-health-spool-disk-full", "title": "Sensor alert spool on a full disk",
        "level": "critical",
        "description": "The disk holding the alert spool is full (health.state begin), or has room "
                       "again (end). Meanwhile the spool does not grow: new alerts take the room of "
                       "the oldest undelivered ones, or wait in memory.",
    },
    "spool_disk_full_dropped": {
        "id": "sensor-health-spool-disk-full-dropped",
        "title": "Sensor dropped undelivered alerts (disk full)",
        "level": "high",
        "description": "The disk holding the alert spool is full: the oldest undelivered alerts were "
                       "dropped to make room for new ones.",
    },
    "spool_salvaged": {
        "id": "sensor-health-spool-salvaged", "title": "Sensor alert spool was damaged and salvaged",
        "level": "high",
        "description": "At start the alert spool could not be read: it was moved aside and its "
                       "readable rows recovered into a fresh one. The alert says how many rows were "
                       "recovered and how many were lost.",
    },
    "spool_wal_missing": {
        "id": "sensor-health-spool-wal-missing", "title": "Sensor alert spool lost its write-ahead log",
        "level": "high",
        "description": "The previous run stopped without closing the spool and its -wal file was "
                       "gone at start: alerts committed after the last checkpoint are lost.",
    },
    "spool_damaged": {
        "id": "sensor-health-spool-damaged", "title": "Sensor alert spool damaged while running",
        "level": "critical",
        "description": "SQLite reported damage in the alert spool while the sensor ran. A restart "
                       "moves the file aside and recovers its rows.",
    },
    "rules_reload_failed": {
        "id": "sensor-health-rules-reload-failed", "title": "Sensor refused a rule update",
        "level": "high",
        "description": "A rule reload (etw-sensor reload, SIGHUP, a changed rule file or a pack "
                       "fetched from the update URL) was refused: a rule was rejected, a pack was "
                       "unsigned, signed with an unknown or expired key, or its signature did not "
                       "verify, or the config file was invalid. The previous rule set keeps running.",
    },
    "rules_update_failed": {
        "id": "sensor-health-rules-update-failed", "title": "Sensor cannot fetch rule updates",
        "level": "medium",
        "description": "Polling the rule update URL failed (network, TLS, HTTP status, size). "
                       "The current rule set keeps running.",
    },
    "budget_shed_backfill": {
        "id": "sensor-health-budget-shed-backfill", "title": "Sensor over its CPU budget: back-fill reduced",
        "level": "low",
        "description": "Over [sensor] cpu_limit_percent the sensor stopped back-filling fields no "
                       "loaded rule needs (alerts may lack them).",
    },
    "budget_shed_pe_reads": {
        "id": "sensor-health-budget-shed-pe-reads", "title": "Sensor over its CPU budget: PE reads reduced",
        "level": "low",
        "description": "Over its CPU budget the sensor stopped reading PE version fields that no "
                       "rule's match needed (alerts may lack them).",
    },
    "budget_shed_hashes": {
        "id": "sensor-health-budget-shed-hashes", "title": "Sensor over its CPU budget: hashing skipped",
        "level": "medium",
        "description": "Over its CPU budget the sensor stopped computing image hashes.",
    },
    "budget_shed_events": {
        "id": "sensor-health-budget-shed-events", "title": "Sensor over its CPU budget: events sampled",
        "level": "high",
        "description": "Over its CPU budget, with every optional step already shed, the sensor "
                       "matched only a sample of process starts: the others were never evaluated.",
    },
    "memory_over_budget": {
        "id": "sensor-health-memory-over-budget", "title": "Sensor over its memory budget",
        "level": "medium",
        "description": "The sensor's resident memory exceeds [sensor] memory_limit_mb.",
    },
    "delivery_parked": {
        "id": "sensor-health-delivery-parked", "title": "Sensor alert delivery parked",
        "level": "high",
        "description": "The receiver refused the sensor (401/403, TLS verification, wrong URL). "
                       "Alerts are kept in the spool and retried; this alert arrives once "
                       "delivery works again.",
    },
    "correlation_evicted": {
        "id": "sensor-health-correlation-evicted",
        "title": "Sensor dropped correlation window entries (state cap)",
        "level": "medium",
        "description": "A Sigma correlation held more than correlation.max_state window entries "
                       "or correlation.max_state_mb of memory; the oldest were dropped, so a "
                       "correlation spanning them may not fire.",
    },
}


def health_rule(kind: str) -> dict[str, Any]:
    """The rule block for a health alert of ``kind`` (a generic one for a kind not listed)."""
    rule = HEALTH_RULES.get(kind)
    if rule is None:
        rule = {"id": f"sensor-health-{kind.replace('_', '-')}", "title": f"Sensor health: {kind}",
                "level": "medium", "description": "A sensor health event."}
    return dict(rule, source="builtin", origin="sensor-health", author="etw-sensor", tags=["sensor.health"])


def iso_now(ts: float) -> str:
    """ISO 8601 UTC with milliseconds for an epoch time."""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def health_alert(kind: str, message: str, details: Mapping[str, Any], *, sensor: Mapping[str, Any],
                 ts: float, key: str) -> dict[str, Any]:
    """A health alert; ``key`` makes its id (the same key gives the same id: sent once)."""
    alert_id = "health-" + hashlib.sha256(f"{kind}\n{key}".encode()).hexdigest()[:32]
    return {"id": alert_id, "type": HEALTH, "timestamp": iso_now(ts),
            "rule": health_rule(kind), "HOSTNAME": sensor.get("host"),
            "MESSAGE": message,
            "health": {"event": kind, "message": message, **details},
            "sensor": {"version": __version__, **sensor}}


def health_document(status: Mapping[str, Any], *, reason: str, boot_id: str, seq: int,
                    sensor: Mapping[str, Any], ts: float, summary: str) -> dict[str, Any]:
    """A ledger entry: the whole health status at ``ts``, numbered ``seq`` within ``boot_id``."""
    return {"id": f"{boot_id}-{seq:010d}", "type": METRIC, "timestamp": iso_now(ts),
            "HOSTNAME": sensor.get("host"), "MESSAGE": summary,
            "ledger": {"boot_id": boot_id, "seq": seq, "reason": reason},
            "health": dict(status),
            "sensor": {"version": __version__, **sensor}}


def is_metric(alert: Mapping[str, Any]) -> bool:
    return alert.get("type") == METRIC
