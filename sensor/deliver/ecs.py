"""Render an alert dict (sensor/detect/alerts.py) as an ECS document.

Field names: style-and-delivery.md B.1 "ECS field names for a process-start alert" (checked against
elastic/ecs generated/csv/fields.csv 9.4.0). The Sigma -> ECS names follow pySigma-backend-elasticsearch
``ecs_windows()`` (Image -> process.executable, CommandLine -> process.command_line, ...). Values the
ECS schema has no field for (IntegrityLevel, per-field provenance, the seed's select fields) go under
the custom ``sensor.*`` namespace so nothing the sensor knows is lost.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping

import msgspec

from .. import __version__
from .health import HEALTH, METRIC, health_rule

ECS_VERSION = "9.4.0"

# Sigma level -> event.severity / event.risk_score (the scale Elastic detection rules use).
SEVERITY = {"informational": 21, "low": 21, "medium": 47, "high": 73, "critical": 99}

# ATT&CK enterprise tactics: Sigma tag suffix -> (id, name).
TACTICS = {
    "reconnaissance": ("TA0043", "Reconnaissance"),
    "resource_development": ("TA0042", "Resource Development"),
    "initial_access": ("TA0001", "Initial Access"),
    "execution": ("TA0002", "Execution"),
    "persistence": ("TA0003", "Persistence"),
    "privilege_escalation": ("TA0004", "Privilege Escalation"),
    "defense_evasion": ("TA0005", "Defense Evasion"),
    "credential_access": ("TA0006", "Credential Access"),
    "discovery": ("TA0007", "Discovery"),
    "lateral_movement": ("TA0008", "Lateral Movement"),
    "collection": ("TA0009", "Collection"),
    "command_and_control": ("TA0011", "Command and Control"),
    "exfiltration": ("TA0010", "Exfiltration"),
    "impact": ("TA0040", "Impact"),
}

# Sigma process_creation field -> ECS dotted path (pySigma-backend-elasticsearch ecs_windows()).
FIELD_MAP = {
    "Image": "process.executable",
    "CommandLine": "process.command_line",
    "ProcessId": "process.pid",
    "ProcessGuid": "process.entity_id",
    "CurrentDirectory": "process.working_directory",
    "OriginalFileName": "process.pe.original_file_name",
    "Company": "process.pe.company",
    "Product": "process.pe.product",
    "Description": "process.pe.description",
    "FileVersion": "process.pe.file_version",
    "ParentImage": "process.parent.executable",
    "ParentCommandLine": "process.parent.command_line",
    "ParentProcessId": "process.parent.pid",
    "ParentProcessGuid": "process.parent.entity_id",
    "EventID": "event.code",
}

# Alert rule keys already rendered as ECS fields above; the rest go to sensor.rule.
_RULE_MAPPED = frozenset({"id", "title", "description", "author", "references", "version", "license",
                          "tags", "mitre", "level"})

_HASH_KEYS = {"SHA256": "sha256", "SHA1": "sha1", "MD5": "md5", "IMPHASH": "imphash"}


def _put(doc: dict, dotted: str, value: Any) -> None:
    if value is None or value == "" or value == []:
        return
    parts = dotted.split(".")
    cur = doc
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def _basename(path: Any) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    return path.replace("/", "\\").rsplit("\\", 1)[-1] or None


_ISO_CACHE: dict[str, str | None] = {}
_ISO_CACHE_MAX = 64          # entries; a value longer than _ISO_CACHE_TEXT is not remembered
_ISO_CACHE_TEXT = 64


def iso_time(value: Any) -> str | None:
    """ISO 8601 UTC text for a Sysmon ``UtcTime`` ("2026-08-20 10:11:12.345") or ISO string.

    Remembered for the last few values: the alerts of one event share their times."""
    if not isinstance(value, str):
        return None
    try:
        return _ISO_CACHE[value]
    except KeyError:
        pass
    out = _iso_time(value)
    if len(value) <= _ISO_CACHE_TEXT:
        if len(_ISO_CACHE) >= _ISO_CACHE_MAX:
            _ISO_CACHE.clear()
        _ISO_CACHE[value] = out
    return out


def _iso_time(value: str) -> str | None:
    if not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_time(alert: Mapping[str, Any]) -> float | None:
    """Event time (or alert time) as epoch seconds, for Splunk HEC ``time``."""
    for key in ("event_time", "timestamp"):
        iso = iso_time(alert.get(key))
        if iso:
            return round(_dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp(), 3)
    return None


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0) if v.lower().startswith("0x") else int(v)
        except ValueError:
            return None
    return None


def _list(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [x for x in v if x not in (None, "")]
    return [v] if v != "" else []


def _threat(rule: Mapping[str, Any]) -> dict | None:
    techniques = [str(t).upper() for t in _list(rule.get("mitre"))]
    tags = [str(t).lower() for t in _list(rule.get("tags"))]
    if not techniques:
        techniques = ["T" + t[8:].upper() for t in tags if t.startswith("attack.t") and t[8:9].isdigit()]
    # Sigma writes tactics as attack.defense-evasion (current) or attack.defense_evasion (older rules).
    names = [t[7:].replace("-", "_") for t in tags if t.startswith("attack.")]
    tactics = [TACTICS[n] for n in dict.fromkeys(names) if n in TACTICS]
    if not techniques and not tactics:
        return None
    out: dict[str, Any] = {"framework": "MITRE ATT&CK"}
    top = sorted({t.split(".")[0] for t in techniques})
    subs = sorted({t for t in techniques if "." in t})
    if top:
        out["technique"] = {"id": top, "reference": [f"https://attack.mitre.org/techniques/{t}/" for t in top]}
        if subs:
            out["technique"]["subtechnique"] = {
                "id": subs,
                "reference": [f"https://attack.mitre.org/techniques/{t.replace('.', '/')}/" for t in subs]}
    if tactics:
        out["tactic"] = {"id": [t[0] for t in tactics], "name": [t[1] for t in tactics]}
    return out


_RULE_CACHE: dict[bytes, tuple] = {}
_RULE_ENC = msgspec.json.Encoder(enc_hook=str)


def _rule_part(rule: Mapping[str, Any]) -> tuple:
    """(rule, threat, tags, sensor.rule) for a rule block; cached, since every alert of a rule shares it.

    The cached dicts are shared between documents: they are only read (encoded), never changed.
    """
    try:
        key = _RULE_ENC.encode(rule)
    except (TypeError, ValueError, msgspec.EncodeError):
        key = None
    hit = _RULE_CACHE.get(key) if key is not None else None
    if hit is not None:
        return hit
    doc: dict[str, Any] = {}
    _put(doc, "id", rule.get("id"))
    _put(doc, "uuid", rule.get("id"))
    _put(doc, "name", rule.get("title"))
    _put(doc, "description", rule.get("description"))
    _put(doc, "author", _list(rule.get("author")))
    _put(doc, "reference", _list(rule.get("references")))
    if doc:
        doc["ruleset"] = "sigma"
    _put(doc, "version", None if rule.get("version") is None else str(rule.get("version")))
    _put(doc, "license", rule.get("license"))
    extra = {k: v for k, v in rule.items() if k not in _RULE_MAPPED and v not in (None, "", [], {})}
    part = (doc, _threat(rule), _list(rule.get("tags")), extra or None)
    if key is not None:
        if len(_RULE_CACHE) >= 1024:
            _RULE_CACHE.clear()
        _RULE_CACHE[key] = part
    return part


_EVENT_CACHE: dict[bytes, tuple] = {}
# The alerts of one event come one after the other: a few entries are enough, and an event may
# be large (command lines of 32,767 characters), so few are kept.
_EVENT_CACHE_MAX = 8


def _event_part(ev: Mapping[str, Any]) -> tuple[dict, str | None]:
    """(the fields an event gives a document: process, user; its event.code) for an alert's
    event; cached, since the alerts of one event (several rules) share it.

    Like the rule block, the cached dicts are shared between documents: only read (encoded).
    """
    try:
        key = _RULE_ENC.encode(ev)
    except (TypeError, ValueError, msgspec.EncodeError):
        key = None
    hit = _EVENT_CACHE.get(key) if key is not None else None
    if hit is not None:
        return hit
    doc: dict[str, Any] = {}
    code = None
    for sigma, dotted in FIELD_MAP.items():
        value = ev.get(sigma)
        if sigma in ("ProcessId", "ParentProcessId", "EventID"):
            value = _as_int(value)
            if sigma == "EventID":
                if value is not None:
                    code = str(value)  # event.code is a keyword
                continue
        _put(doc, dotted, value)
    _put(doc, "process.name", _basename(ev.get("Image")))
    _put(doc, "process.parent.name", _basename(ev.get("ParentImage")))
    hashes = ev.get("Hashes")
    if isinstance(hashes, str):
        for part in hashes.split(","):
            k, _, v = part.partition("=")
            if k.strip().upper() in _HASH_KEYS and v.strip():
                key_ = _HASH_KEYS[k.strip().upper()]
                _put(doc, "process.pe.imphash" if key_ == "imphash" else f"process.hash.{key_}", v.strip().lower())
    user = ev.get("User")
    if isinstance(user, str) and user:
        domain, sep, name = user.rpartition("\\")
        _put(doc, "user.name", name if sep else user)
        if sep:
            _put(doc, "user.domain", domain)
    out = (doc, code)
    if key is not None:
        if len(_EVENT_CACHE) >= _EVENT_CACHE_MAX:
            _EVENT_CACHE.clear()
        _EVENT_CACHE[key] = out
    return out


def to_ecs(alert: Mapping[str, Any]) -> dict:
    """The ECS document for one alert (or health event)."""
    doc: dict[str, Any] = {}
    created = iso_time(alert.get("timestamp"))
    doc["@timestamp"] = iso_time(alert.get("event_time")) or created
    doc["ecs"] = {"version": ECS_VERSION}
    sensor = alert.get("sensor") if isinstance(alert.get("sensor"), dict) else {}
    host = alert.get("HOSTNAME") or (alert.get("event") or {}).get("Computer") or sensor.get("host")
    if host:
        doc["host"] = {"hostname": host, "name": host, "os": {"type": "windows", "family": "windows"}}
    doc["agent"] = {"type": "etw-sensor", "version": sensor.get("version") or __version__}
    if host:
        doc["agent"]["name"] = host
    custom: dict[str, Any] = {}

    if alert.get("type") == METRIC:
        # A health document (the completeness ledger): the sensor's whole status, numbered.
        ledger = alert.get("ledger") if isinstance(alert.get("ledger"), dict) else {}
        doc["@timestamp"] = created
        doc["event"] = {"kind": "metric", "category": ["host"], "type": ["info"],
                        "action": ledger.get("reason"), "module": "sensor", "dataset": "sensor.health",
                        "id": alert.get("id"), "created": created, "sequence": ledger.get("seq")}
        if ledger.get("boot_id"):
            doc["agent"]["ephemeral_id"] = ledger["boot_id"]
        _put(doc, "message", alert.get("MESSAGE"))
        custom["ledger"] = dict(ledger)
        custom["health"] = dict(alert.get("health") or {})
        doc["sensor"] = custom
        return doc

    if alert.get("type") == HEALTH:
        # A health alert: an alert about the sensor itself, with its own rule id.
        health = alert.get("health") if isinstance(alert.get("health"), dict) else {}
        kind = str(health.get("event") or "unknown")
        rule = alert.get("rule") if isinstance(alert.get("rule"), dict) else health_rule(kind)
        level = str(rule.get("level") or "").lower()
        doc["@timestamp"] = created
        event = {"kind": "alert", "category": ["host"], "type": ["info"], "action": kind,
                 "module": "sensor", "dataset": "sensor.health_alert", "id": alert.get("id"),
                 "created": created}
        if level in SEVERITY:
            event["severity"] = SEVERITY[level]
            event["risk_score"] = float(SEVERITY[level])
        doc["event"] = event
        doc["message"] = alert.get("MESSAGE") or health.get("message") or kind
        rule_doc, _threat, tags, _extra = _rule_part(rule)
        doc["rule"] = dict(rule_doc, ruleset="sensor-health")   # the cached block is shared
        if tags:
            doc["tags"] = tags
        custom["health"] = dict(health)
        _put(custom, "rule_level", rule.get("level"))
        doc["sensor"] = custom
        return doc

    rule = alert.get("rule") if isinstance(alert.get("rule"), dict) else {}
    ev = alert.get("event") if isinstance(alert.get("event"), dict) else {}
    level = str(rule.get("level") or "").lower()
    event = {"kind": "alert", "category": ["process"], "type": ["start"], "action": "process_started",
             "module": "sensor", "dataset": "sensor.alert", "id": alert.get("id"), "created": created}
    if level in SEVERITY:
        event["severity"] = SEVERITY[level]
        event["risk_score"] = float(SEVERITY[level])
    doc["event"] = event
    part, code = _event_part(ev)
    if code is not None:
        event["code"] = code
    doc.update(part)
    _put(doc, "message", alert.get("MESSAGE") or rule.get("title"))
    rule_doc, threat, tags, extra = _rule_part(rule)
    if rule_doc:
        doc["rule"] = rule_doc
    if threat:
        doc["threat"] = threat
    if tags:
        doc["tags"] = tags
    # Not in ECS: kept so no field the sensor produced is lost.
    _put(custom, "integrity_level", ev.get("IntegrityLevel"))
    _put(custom, "rule_level", rule.get("level"))
    select = {k: alert[k] for k in alert if k.isupper() and alert[k] is not None}
    _put(custom, "select", select or None)
    _put(custom, "field_origin", alert.get("field_origin") or None)
    if extra:
        custom["rule"] = extra  # next steps, mitigations, ...: what an analyst reads next
    if isinstance(alert.get("correlation"), dict):   # a Sigma correlation alert: its window
        custom["correlation"] = dict(alert["correlation"])
        event["action"] = "sigma_correlation"
    if custom:
        doc["sensor"] = custom
    return doc
