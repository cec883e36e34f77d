"""Turn Windows event records (Sysmon EID 1, Security 4688) into ProcessEvents."""
from __future__ import annotations

from typing import Any, Mapping

from ..events import INT_FIELDS, ProcessEvent, to_int

SYSMON_PROCESS_CREATE = 1
SECURITY_PROCESS_CREATE = 4688

# Security 4688 MandatoryLabel SIDs → the names Sysmon uses for IntegrityLevel.
INTEGRITY_LEVELS = {
    "S-1-16-0": "Untrusted",
    "S-1-16-4096": "Low",
    "S-1-16-8192": "Medium",
    "S-1-16-8448": "MediumPlus",
    "S-1-16-12288": "High",
    "S-1-16-16384": "System",
    "S-1-16-20480": "Protected",
}


def integrity_name(label: Any) -> Any:
    """The Sysmon-style integrity level for a mandatory-label SID (unknown SIDs kept)."""
    if not isinstance(label, str):
        return label
    return INTEGRITY_LEVELS.get(label.strip().upper(), label)


def sysmon_time(ts: Any) -> str | None:
    """``2020-07-09T19:07:25.659137Z`` → Sysmon's ``2020-07-09 19:07:25.659``."""
    if not isinstance(ts, str) or len(ts) < 19:
        return None
    text = ts.strip().replace("T", " ", 1)
    for suffix in (" UTC", "Z", "+00:00"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    if "." in text:
        head, frac = text.split(".", 1)
        frac = (frac + "000")[:3]
        return f"{head}.{frac}"
    return text + ".000"


def _clean(data: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and "#text" in v:  # some EVTX renderings wrap values
            v = v["#text"]
        out[str(k)] = v
    return out


def numeric_pids(ev: ProcessEvent) -> ProcessEvent:
    """Turn pid-like fields given as text (``"7"``, ``"0x1a"``) into numbers, in place."""
    for k in INT_FIELDS:
        v = ev.get(k)
        if v is not None and not isinstance(v, int):
            n = to_int(v)
            if n is not None:
                ev[k] = n
    return ev


def sysmon_event(data: Mapping[str, Any], computer: Any = None, ts: Any = None) -> ProcessEvent:
    """A Sysmon Event ID 1: field names are already the Sigma taxonomy."""
    ev = numeric_pids(ProcessEvent(_clean(data)))
    if ev.get("Computer") is None and computer:
        ev["Computer"] = computer
    if ev.get("UtcTime") is None and ts:
        ev["UtcTime"] = sysmon_time(ts)
    return ev


def security_4688_event(data: Mapping[str, Any], computer: Any = None, ts: Any = None) -> ProcessEvent:
    """A Security 4688 mapped to the taxonomy; the original fields are kept as well."""
    d = _clean(data)
    ev = ProcessEvent(d)
    ev["Image"] = d.get("NewProcessName")
    ev["ParentImage"] = d.get("ParentProcessName")
    ev["CommandLine"] = d.get("CommandLine")
    user, domain = d.get("SubjectUserName"), d.get("SubjectDomainName")
    if user not in (None, "", "-"):
        ev["User"] = f"{domain}\\{user}" if domain not in (None, "", "-") else user
    if d.get("MandatoryLabel") is not None:
        ev["IntegrityLevel"] = integrity_name(d.get("MandatoryLabel"))
    # In 4688, ProcessId is the *creator* (the parent) and NewProcessId the new process.
    ev["ProcessId"] = to_int(d.get("NewProcessId"))
    ev["ParentProcessId"] = to_int(d.get("ProcessId"))
    ev["Computer"] = computer
    ev["UtcTime"] = sysmon_time(ts)
    return ev


def classify(channel: Any, provider: Any, eid: Any, data: Any) -> str | None:
    """``"sysmon"``, ``"4688"`` or None (not a process start this sensor reads)."""
    try:
        eid = int(eid)
    except (TypeError, ValueError):
        return None
    where = f"{channel or ''} {provider or ''}".lower()
    if eid == SECURITY_PROCESS_CREATE and ("security" in where or not where.strip()):
        return "4688"
    if eid == SYSMON_PROCESS_CREATE:
        if "sysmon" in where:
            return "sysmon"
        if not where.strip() and isinstance(data, Mapping) and "Image" in data:
            return "sysmon"
    return None


def event_from_record(channel: Any, provider: Any, eid: Any, data: Any,
                      computer: Any = None, ts: Any = None) -> ProcessEvent | None:
    """The ProcessEvent for a Windows event record, or None when it is not a process start."""
    kind = classify(channel, provider, eid, data)
    if kind is None or not isinstance(data, Mapping):
        return None
    if kind == "sysmon":
        return sysmon_event(data, computer, ts)
    return security_4688_event(data, computer, ts)
