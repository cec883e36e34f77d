"""Which rules can fire on which source: ``etw-sensor rules doctor``.

A rule that names a field a source never fills can never fire there, silently.  For each rule and
each source profile the doctor gives a verdict:

* ``never``    - even with every other field at its most favourable value, the condition is false
  when the fields the source never fills are missing;
* ``degraded`` - the rule can fire, but only when fields the source fills only sometimes are
  present (e.g. CommandLine back-filled from a process that may already be gone);
* ``fires``    - the rule can fire from fields the source always fills.

The test is a three-valued evaluation of the rule's condition (true / false / unknown, Kleene
logic): a predicate on a missing field takes the value the matcher gives it for ``None``, every
other predicate is unknown.  "False" is therefore proven; "unknown" means "can fire" as far as
fields go.  The work per rule is linear in its condition.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Iterable

from .ir import Rule

NEVER, DEGRADED, FIRES = "never", "degraded", "fires"

_PE = frozenset({"OriginalFileName", "Company", "Product", "Description", "FileVersion"})
_TABLE = frozenset({"ParentImage", "GrandParentImage", "GrandParentProcessId", "ParentChain",
                    "CreatorImage"})
_ETW_ALWAYS = frozenset({"Image", "ProcessId", "ParentProcessId", "UtcTime", "IntegrityLevel",
                         "Computer", "CreatorProcessId"})
# Sysmon recordings: from the parent's own start when it was read earlier (sources/lineage.py).
_RECORDED_LINEAGE = frozenset({"GrandParentImage", "GrandParentCommandLine", "GrandParentProcessId",
                               "ParentChain"})
# Back-fill reads the live process, which a very short-lived one no longer is.
_BACKFILL = frozenset({"CommandLine", "User", "CurrentDirectory", "ParentCommandLine",
                       "GrandParentCommandLine"})


@dataclass(frozen=True)
class Profile:
    """What a source fills: ``always`` every time, ``sometimes`` when it can."""

    name: str
    always: frozenset
    sometimes: frozenset = frozenset()
    note: str = ""


def _profiles() -> tuple[Profile, ...]:
    from .sigma import SECURITY_4688_FIELDS, SYSMON_FIELDS
    return (
        Profile("etw", _ETW_ALWAYS, _PE | _TABLE | {"Hashes"},
                "live ETW (Kernel-Process) without the system logger and without back-fill"),
        Profile("etw+backfill", _ETW_ALWAYS, _PE | _TABLE | _BACKFILL | {"Hashes"},
                "live ETW with psutil back-fill (the default)"),
        Profile("etw+system_logger", _ETW_ALWAYS | {"CommandLine", "User"}, _PE | _TABLE | {"Hashes"},
                "live ETW with the system logger's exact command line and user, no back-fill"),
        Profile("etw+system_logger+backfill", _ETW_ALWAYS | {"CommandLine", "User"},
                _PE | _TABLE | _BACKFILL - {"CommandLine", "User"} | {"Hashes"},
                "live ETW with the system logger's exact command line and user, and back-fill"),
        Profile("sysmon", frozenset(SYSMON_FIELDS), _RECORDED_LINEAGE,
                "Sysmon EID 1 from EVTX (no creator; the grandparent when the parent's start was "
                "read before)"),
        Profile("security_4688", frozenset(SECURITY_4688_FIELDS), frozenset(),
                "Security 4688 from EVTX (command line only with the audit policy that adds it)"),
    )


PROFILES: tuple[Profile, ...] = ()


def profiles() -> tuple[Profile, ...]:
    global PROFILES
    if not PROFILES:
        PROFILES = _profiles()
    return PROFILES


DERIVED = {"@FileName": "Image", "@Message": None}


def _pred_value(pred, missing: frozenset):
    """True/False when ``missing`` decides the predicate, None (unknown) otherwise."""
    if pred.field is None:
        return None                          # keyword search: any field may hold it
    names = [pred.field]
    if pred.op == "fieldref":
        names.extend(pred.values)
    names = [DERIVED.get(n, n) for n in names]
    if not any(n in missing for n in names if n is not None):
        return None
    if pred.op == "exists":
        return pred.values == (False,)
    if pred.op == "null":
        return True
    return False                             # every other op is false on a missing value


def _eval(cond, preds, missing, values):
    kind = cond[0]
    if kind == "pred":
        i = cond[1]
        if i not in values:
            values[i] = _pred_value(preds[i], missing)
        return values[i]
    if kind == "const":
        return bool(cond[1])
    if kind == "not":
        v = _eval(cond[1], preds, missing, values)
        return None if v is None else not v
    if kind == "and":
        out = True
        for c in cond[1:]:
            v = _eval(c, preds, missing, values)
            if v is False:
                return False
            if v is None:
                out = None
        return out
    if kind == "or":
        out = False
        for c in cond[1:]:
            v = _eval(c, preds, missing, values)
            if v is True:
                return True
            if v is None:
                out = None
        return out
    raise ValueError(f"unknown condition node {kind!r}")


def _can_fire(rule: Rule, missing: frozenset) -> bool:
    return _eval(rule.condition, rule.predicates, missing, {}) is not False


def _read_fields(rule: Rule) -> set[str]:
    return {DERIVED.get(f, f) for f in rule.fields if f is not None} - {None}


@dataclass
class Verdict:
    source: str
    verdict: str
    fields: list[str] = dc_field(default_factory=list)   # the fields behind the verdict

    def to_json(self) -> dict:
        return {"source": self.source, "verdict": self.verdict, "fields": self.fields}


def diagnose(rule: Rule, profile: Profile) -> Verdict:
    """The verdict for ``rule`` on ``profile``, with the fields behind it."""
    read = _read_fields(rule)
    never = frozenset(f for f in read if f not in profile.always and f not in profile.sometimes)
    if never and not _can_fire(rule, never):
        return Verdict(profile.name, NEVER, sorted(never))
    unsure = frozenset(f for f in read if f in profile.sometimes)
    if unsure and not _can_fire(rule, never | unsure):
        return Verdict(profile.name, DEGRADED, sorted(unsure))
    return Verdict(profile.name, FIRES, sorted(never | unsure))


@dataclass
class Report:
    rules: list[tuple[Rule, list[Verdict]]]

    def totals(self) -> dict[str, dict[str, int]]:
        out = {p.name: {FIRES: 0, DEGRADED: 0, NEVER: 0} for p in profiles()}
        for _, verdicts in self.rules:
            for v in verdicts:
                out[v.source][v.verdict] += 1
        return out

    def never_count(self, source: str) -> int:
        return self.totals()[source][NEVER]

    def to_json(self) -> dict:
        return {
            "profiles": {p.name: p.note for p in profiles()},
            "totals": self.totals(),
            "rules": [{"id": r.id, "title": r.title, "source": r.source,
                       "verdicts": [v.to_json() for v in vs]} for r, vs in self.rules],
        }


def profile_for_source(source) -> str | None:
    """The profile of a running source: the ETW source by its settings; None for replays (what a
    recording holds depends on what wrote it)."""
    cfg = getattr(source, "config", None)
    if cfg is None or not hasattr(cfg, "system_logger"):
        return None
    name = "etw" + ("+system_logger" if cfg.system_logger else "") + ("+backfill" if cfg.backfill else "")
    return name if any(p.name == name for p in profiles()) else None


def doctor(rules: Iterable[Rule]) -> Report:
    """Verdicts for every rule on every source profile."""
    return Report([(r, [diagnose(r, p) for p in profiles()]) for r in rules])
