"""Alerts: what a rule match becomes before it is spooled and delivered.

An alert is a plain JSON-ready dict::

    {"id": "<uuid>",                 # stable: same rule + same event -> same id
     "timestamp": "<ISO 8601 UTC>",  # when the alert was raised
     "event_time": "<event UtcTime or None>",
     "rule": {"id", "title", "level", "description", "tags", "mitre": [...],
              "author", "references", "falsepositives", "source", "origin", ...meta},
     "HOSTNAME": ..., "MESSAGE": ..., "COMMANDLINE": ..., "FILE_NAME": ...,
     "PROCESSNAME": ..., "USERNAME": ..., "PARENTPROCESSNAME": ...,
     "event": {<every event field>},
     "sensor": {"host": ..., "version": ...}}
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid
from itertools import islice
from typing import Any, Mapping

import msgspec

from .. import __version__
from ..events import FIELDS, ProcessEvent, field_value
from .fields import FIELD_MAP
from .ir import Rule

# The seed page's select list: every alert carries these, under these names.
SELECT_FIELDS = ("HOSTNAME", "MESSAGE", "COMMANDLINE", "FILE_NAME", "PROCESSNAME",
                 "USERNAME", "PARENTPROCESSNAME")

_NS_BYTES = uuid.UUID("4f1f6a52-3c1e-4d0e-9a57-0c5b2e9a7d10").bytes  # namespace of alert ids
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


_KEY_ENC = msgspec.json.Encoder(order="sorted")
_NFIELDS = len(FIELDS)


def event_key(event: Mapping[str, Any]) -> bytes:
    """A canonical byte string of an event's identity (all stored values, keys sorted)."""
    items = {k: v for k, v in event.items() if v is not None}
    try:
        return _KEY_ENC.encode(items)
    except (msgspec.EncodeError, TypeError, UnicodeEncodeError, OverflowError):
        # lone surrogates or odd types: the slower stdlib path keeps the key stable
        return json.dumps(items, sort_keys=True, ensure_ascii=False, default=str,
                          separators=(",", ":")).encode("utf-8", "surrogatepass")


def alert_id(rule_id: str, event: Mapping[str, Any]) -> str:
    """Stable alert id: the same rule and the same event always give the same id."""
    return _alert_id(rule_id, event_key(event))


def _alert_id(rule_id: str, key: bytes) -> str:
    h = hashlib.sha256(_NS_BYTES + rule_id.encode("utf-8", "surrogatepass") + b"\0" + key).hexdigest()
    # RFC 4122 layout (version 5 nibble, variant bits) over the first 128 bits of the hash
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def rule_summary(rule: Rule) -> dict:
    """The rule metadata an alert carries."""
    out = {
        "id": rule.id, "title": rule.title, "level": rule.level,
        "description": rule.description, "tags": list(rule.tags),
        "mitre": rule.mitre_techniques, "author": rule.author,
        "references": list(rule.references), "falsepositives": list(rule.falsepositives),
        "source": rule.source, "origin": rule.origin,
    }
    for k, v in rule.meta.items():
        out.setdefault(k, v)
    return out


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_alert(rule: Rule, event: Mapping[str, Any], now: str | None = None,
                rule_info: dict | None = None) -> dict:
    """The alert for ``rule`` matching ``event``."""
    return build_alerts([(rule, rule_info if rule_info is not None else rule_summary(rule))], event, now)[0]


def _event_copy(event: Mapping[str, Any]) -> dict:
    """Every event field (the model's fields first, in their order, then the others)."""
    if type(event) is ProcessEvent and tuple(islice(event, _NFIELDS)) == FIELDS:
        # A ProcessEvent starts with every model field in the model's order (events.py): a
        # copy is that dict already (the pending resolvers and origin are not items).
        return dict(event)
    ev = {k: event.get(k) for k in FIELDS}
    ev.update((k, v) for k, v in event.items() if k not in ev)
    return ev


def build_alerts(rules: list[tuple[Rule, dict]], event: Mapping[str, Any], now: str | None = None) -> list[dict]:
    """The alerts of ``event`` for each ``(rule, rule metadata block)``, in that order.

    What the alerts share (the event's fields, the select values, its identity key, the time)
    is computed once; each alert gets its own dicts."""
    resolve_all = getattr(event, "resolve_all", None)
    if resolve_all is not None:
        resolve_all()  # an alert shows every field, lazy ones included
    key = event_key(event)
    stamp = now or utcnow()
    event_time = event.get("UtcTime")
    select = {name: field_value(event, FIELD_MAP[name]) for name in SELECT_FIELDS if name in FIELD_MAP}
    ev = _event_copy(event)
    origin = getattr(event, "origin", None)
    out = []
    for rule, info in rules:
        alert: dict[str, Any] = {"id": _alert_id(rule.id, key), "timestamp": stamp, "event_time": event_time,
                                 "rule": info}
        alert.update(select)
        for name in rule.select:
            if name not in SELECT_FIELDS:
                fld = FIELD_MAP.get(name)
                if fld is not None:  # a pack could name a field the sensor does not know
                    alert[name] = field_value(event, fld)
        alert["event"] = dict(ev)
        if origin:
            alert["field_origin"] = dict(origin)
        alert["sensor"] = {"version": __version__}
        out.append(alert)
    return out


class AlertFactory:
    """Builds alerts, caching each rule's metadata block."""

    def __init__(self) -> None:
        self._info: dict[int, dict] = {}

    def _summary(self, rule: Rule) -> dict:
        info = self._info.get(id(rule))
        if info is None:
            info = self._info[id(rule)] = rule_summary(rule)
        return info

    def __call__(self, rule: Rule, event: Mapping[str, Any]) -> dict:
        return build_alerts([(rule, self._summary(rule))], event)[0]

    def many(self, rules: list[Rule], event: Mapping[str, Any]) -> list[dict]:
        """The alerts of one event for several rules (what they share is built once)."""
        return build_alerts([(rule, self._summary(rule)) for rule in rules], event)
