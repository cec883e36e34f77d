"""Noise control: exclusions (per process, per rule) and an alert dedup/throttle window.

Exclusions use Sigma-style matching, compiled to the rule IR: a value is a
case-insensitive whole-value glob (``*`` any run, ``?`` one character, ``\\``
escapes), a list is any-of, and the keys of one exclusion must all hold.  A key
may carry one Sigma modifier: ``command_line|contains``, ``image|endswith``,
``user|startswith``, ``command_line|re``.
"""
from __future__ import annotations

import fnmatch
import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .ir import Predicate, Rule

# exclusion key -> event field
EXCLUSION_FIELDS = {
    "image": "Image",
    "command_line": "CommandLine",
    "user": "User",
    "parent_image": "ParentImage",
    "parent_command_line": "ParentCommandLine",
    "original_file_name": "OriginalFileName",
    "computer": "Computer",
}


# Sigma modifier -> IR op ("" = plain value, a whole-value glob)
MODIFIERS = {"": "glob", "contains": "contains", "startswith": "startswith",
             "endswith": "endswith", "re": "re"}


@dataclass
class Exclusion:
    """One exclusion: field patterns that must all match; ``rules`` limits it to some rules."""

    name: str = ""
    rules: Sequence[str] = ()              # rule ids or titles (globs); empty = every rule
    fields: Mapping[str, Sequence[str]] = field(default_factory=dict)  # exclusion key -> patterns

    def to_rule(self, index: int) -> Rule:
        preds = []
        for key, patterns in self.fields.items():
            name, _, modifier = key.partition("|")
            if name not in EXCLUSION_FIELDS:
                raise ValueError(f"unknown exclusion key {name!r} "
                                 f"(known: {', '.join(sorted(EXCLUSION_FIELDS))})")
            if modifier not in MODIFIERS:
                raise ValueError(f"unknown modifier {modifier!r} in {key!r} "
                                 f"(known: {', '.join(m for m in MODIFIERS if m)})")
            pats = (patterns,) if isinstance(patterns, str) else tuple(patterns)
            if not pats or not all(isinstance(p, str) for p in pats):
                raise ValueError(f"exclusion key {key!r} needs one or more strings")
            preds.append(Predicate(EXCLUSION_FIELDS[name], MODIFIERS[modifier], pats))
        if not preds:
            raise ValueError("an exclusion needs at least one field pattern")
        cond = ("and",) + tuple(("pred", i) for i in range(len(preds)))
        return Rule(id=f"exclusion-{index}", title=self.name or f"exclusion {index}",
                    predicates=tuple(preds), condition=cond, origin="exclusion")

    def applies_to(self, rule: Rule) -> bool:
        if not self.rules:
            return True
        for pat in self.rules:
            p = pat.lower()
            if fnmatch.fnmatchcase(rule.id.lower(), p) or fnmatch.fnmatchcase(rule.title.lower(), p):
                return True
        return False


class Exclusions:
    """Evaluates exclusions with the same matcher as the rules."""

    def __init__(self, exclusions: Sequence[Exclusion], make_matcher: Callable):
        self.exclusions = list(exclusions)
        rules = [e.to_rule(i) for i, e in enumerate(self.exclusions)]
        self._global = [i for i, e in enumerate(self.exclusions) if not e.rules]
        self._matcher = make_matcher(rules) if rules else None
        self.suppressed_events = 0
        self.suppressed_alerts: Counter = Counter()

    def __bool__(self) -> bool:
        return self._matcher is not None

    def matching(self, event: Mapping[str, Any]) -> list[int]:
        """Indices of the exclusions whose patterns hold for ``event``."""
        return self._matcher.match(event) if self._matcher is not None else []

    def drops_event(self, hits: list[int]) -> bool:
        """True when a process exclusion (one without ``rules``) matched."""
        if any(i in self._global for i in hits):
            self.suppressed_events += 1
            return True
        return False

    def drops_alert(self, hits: list[int], rule: Rule) -> bool:
        """True when a rule exclusion for ``rule`` matched."""
        for i in hits:
            if self.exclusions[i].applies_to(rule):
                self.suppressed_alerts[rule.id] += 1
                return True
        return False


class Throttle:
    """Lets the first alert per key through and suppresses repeats within ``window`` seconds.

    The key is the rule plus the process identity that makes an alert "the same"
    to an analyst (image, command line, parent image, user, host).  What was
    suppressed is counted per rule and reported when the window closes.
    """

    KEY_FIELDS = ("Image", "CommandLine", "ParentImage", "User", "Computer")

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000):
        self.window = float(window)
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[bytes, list] = {}   # key -> [first_seen, suppressed, rule_id]
        self._lock = threading.Lock()
        self.suppressed: Counter = Counter()
        # closed windows with suppressions, per (rule, window): [repeats, windows] (drained by
        # health; one entry per rule, however many windows close between two heartbeats)
        self.reports: dict[tuple[str, float], list[int]] = {}

    def key(self, rule_id: str, event: Mapping[str, Any]) -> bytes:
        h = hashlib.blake2b(rule_id.encode(), digest_size=16)
        for f in self.KEY_FIELDS:
            h.update(b"\0" + str(event.get(f)).encode("utf-8", "surrogatepass"))
        return h.digest()

    def allow(self, rule_id: str, event: Mapping[str, Any]) -> bool:
        """True to raise the alert; False when it repeats one within the window."""
        if self.window <= 0:
            return True
        now = self.clock()
        k = self.key(rule_id, event)
        with self._lock:
            entry = self._seen.get(k)
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                self.suppressed[rule_id] += 1
                return False
            if entry is not None:
                self._report(entry)
            self._seen[k] = [now, 0, rule_id]
            if len(self._seen) > self.max_keys:
                self._expire(now)
            return True

    def _expire(self, now: float) -> None:
        for k in [k for k, e in self._seen.items() if now - e[0] >= self.window]:
            self._report(self._seen.pop(k))
        while len(self._seen) > self.max_keys:  # still too many: close the oldest early
            self._report(self._seen.pop(next(iter(self._seen))))

    def _report(self, entry: list) -> None:
        if entry[1]:
            got = self.reports.setdefault((entry[2], self.window), [0, 0])
            got[0] += entry[1]
            got[1] += 1

    def _drain(self) -> list[dict]:
        out = [{"rule": rule, "suppressed": n, "windows": w, "window_s": window_s}
               for (rule, window_s), (n, w) in self.reports.items()]
        self.reports = {}
        return out

    def flush(self) -> list[dict]:
        """Close expired windows and return (and clear) the suppression reports: per rule, the
        repeats suppressed in the windows that closed since the last call, and how many."""
        with self._lock:
            self._expire(self.clock())
            return self._drain()

    def close(self) -> list[dict]:
        """Close every window, open or not (a reload turns the throttle off), and return (and
        clear) the suppression reports."""
        with self._lock:
            for entry in self._seen.values():
                self._report(entry)
            self._seen.clear()
            return self._drain()
