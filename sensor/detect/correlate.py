"""Streaming evaluation of Sigma correlation rules (event_count, value_count, temporal,
temporal_ordered, value_sum, value_avg, value_percentile, value_median).

The engine is fed every event with the indexes of the rules it matched (after filters and
exclusions) and returns the correlation alerts that became final.  One engine serves ``scan``
(event time from the records) and ``run`` (event time from the source); both read the
event's ``UtcTime``.

Semantics (docs/sigma.md has the reasons and the specification's words):

* A window is sliding: an alert is evaluated at every distinct event time ``T`` at which a
  referenced rule matched in a group, over ``[T - timespan, T]``, both ends included.
  Every qualifying ``(group, T)`` is one alert (pySigma's SQLite backend does the same).
* A group is the tuple of the ``group-by`` values (after ``aliases``), each folded to lower
  case; an event that lacks one of them is not counted (``missing_group_key``).
* ``event_count`` counts distinct events; ``value_count`` distinct case-folded values of
  ``condition.field``; ``value_sum``/``value_avg``/``value_percentile``/``value_median`` the
  numbers in ``condition.field`` (numbers, or text that is a JSON number; anything else is
  left out but still anchors a window); ``temporal`` the number of distinct referenced rules;
  ``temporal_ordered`` also needs the rules in their listed order (strictly increasing
  times, the earliest occurrence of each in turn).
* A correlation over a correlation sees each child alert as one event at the child's window
  end, with the child's group-by values and, for other fields, those of its evidence events.
* Time comes in order after a reorder buffer: an event is held until the newest event time
  seen is ``lateness`` past it; an event older than what was already evaluated is counted as
  late and not correlated.  Anchors at time ``T`` are evaluated once no event at ``T`` can
  still arrive.
* State is bounded: at most ``max_state`` entries and ``max_state_mb`` megabytes (estimated
  from the text the entries and group keys hold) per correlation; beyond either the oldest entry
  of the least recently updated group is dropped and counted (``evicted``).
"""
from __future__ import annotations

import bisect
import datetime as _dt
import heapq
import itertools
import math
import os
import re
import sys
import time
from collections import OrderedDict
from fractions import Fraction
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from .. import __version__
from ..events import field_value
from .alerts import SELECT_FIELDS, alert_id, utcnow
from .fields import FIELD_MAP
from .ir import Rule
from .metarules import Correlation, silent_rules

TIME_FIELD = "UtcTime"
DEFAULT_MAX_STATE = 20_000
DEFAULT_MAX_STATE_MB = 64.0
# What a window entry costs beyond the text it holds: its tuple, its event object and their
# share of the group's bookkeeping (CPython 3.11, 64-bit: about 0.3-0.7 KB in all).
ENTRY_BYTES = 256
_sizeof = sys.getsizeof
DEFAULT_MAX_EVIDENCE = 100

STATE_FORMAT = "etw-sensor-correlation-state"
STATE_VERSION = 1
MAX_STATE_FILE = 512 << 20

GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Collect cycles less often while correlations run (``scan`` and ``run`` call this).

    Correlation windows are many small long-lived objects; with the interpreter's default
    thresholds (700, 10, 10) the cyclic collector walks them again and again and takes about
    half of the engine's CPU (bench/correlation.py).  The engine makes no reference cycles
    (reference counting frees its objects), so collecting less often costs no memory.  The
    objects alive now (rules, matcher) are frozen out of the collector's walks.
    """
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# ---------------------------------------------------------------------------------
# Event time.

_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
                   r"[ ]?(Z|z|[+-]\d\d:?\d\d)?")


@lru_cache(maxsize=4096)
def _day_ms(y: int, m: int, d: int) -> int:
    return (_dt.date(y, m, d) - _dt.date(1970, 1, 1)).days * 86_400_000


def parse_time_ms(value: Any) -> int | None:
    """Milliseconds since 1970 (UTC) of an event time such as Sysmon's ``UtcTime``
    (``2024-01-02 03:04:05.678``) or ISO 8601; rounded to the millisecond.  None when the value
    is not such a time."""
    if not isinstance(value, str):
        return None
    m = _TIME.fullmatch(value.strip())
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        day = _day_ms(int(y), int(mo), int(d))
    except ValueError:
        return None
    h, mi, s = int(h), int(mi), int(s)
    if h > 23 or mi > 59 or s > 60:
        return None
    ms = day + ((h * 60 + mi) * 60 + s) * 1000
    if frac:
        ns = int(frac.ljust(9, "0"))
        ms += (ns + 500_000) // 1_000_000
    if tz and tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        ms -= sign * (int(digits[:2]) * 60 + int(digits[2:])) * 60_000
    return ms


def format_time_ms(ms: int) -> str:
    """ISO 8601 UTC text with milliseconds for a millisecond time."""
    t = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(milliseconds=ms)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------
# Values.

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def number_of(value: Any) -> int | float | None:
    """A metric value: an int or finite float as it is, text that is a JSON number (spaces
    around it allowed) as a float; anything else None (pySigma's SQLite backend's reading)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip(" \t\r\n")
        if len(text) > 400 or not _JSON_NUMBER.fullmatch(text):
            return None
        f = float(text)
        return f if math.isfinite(f) else None
    return None


def group_key(fields: Mapping[str, Any], names: tuple) -> tuple | None:
    """The folded values of ``names`` (None when one is missing)."""
    if len(names) == 1:
        v = fields.get(names[0])
        if v is None:
            return None
        return (v.lower() if type(v) is str else fold(v),)
    key = []
    for f in names:
        v = fold(fields.get(f))
        if v is None:
            return None
        key.append(v)
    return tuple(key)


def fold(value: Any) -> str | None:
    """A group-by or value_count value: its text, folded to lower case."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def _exact(v: int | float):
    return v if isinstance(v, int) else Fraction(v)


def _event_bytes(event) -> int:
    """What a whole event held in the reorder buffer keeps (its text values, estimated)."""
    try:
        return ENTRY_BYTES + sum(map(_sizeof, event.values()))
    except AttributeError:
        return ENTRY_BYTES


def _key_bytes(key: tuple) -> int:
    return ENTRY_BYTES + (_sizeof(key[0]) if len(key) == 1 else sum(map(_sizeof, key)))


# ---------------------------------------------------------------------------------
# What sits in a window.

class Ev:
    """One event that a referenced rule matched (shared by every correlation it feeds)."""

    __slots__ = ("seq", "id", "ts", "fields", "event", "size")

    def __init__(self, seq: int, ident: str, ts: int, fields: dict, event=None):
        self.seq, self.id, self.ts, self.fields, self.event = seq, ident, ts, fields, event
        # what it keeps once evaluated (the whole event is let go after its time is final)
        self.size = ENTRY_BYTES + sum(map(_sizeof, fields.values()))


class ChildAlert:
    """A correlation alert as an input event of the correlations that reference it."""

    __slots__ = ("seq", "id", "ts", "node", "group", "metric", "evidence", "children", "anchor",
                 "truncated", "size")

    def __init__(self, seq, ident, ts, node, group, metric, evidence, children, anchor, truncated):
        self.seq, self.id, self.ts, self.node, self.group = seq, ident, ts, node, group
        self.metric, self.evidence, self.children = metric, evidence, children
        self.anchor, self.truncated = anchor, truncated
        # it keeps its evidence events alive (even those its own correlation let go)
        self.size = (_key_bytes(group) + sum([ev.size for ev in evidence])
                     + sum(map(_sizeof, anchor.values())) + 64 * len(children))


# entry tuple layout
_TS, _SEQ, _SLOT, _VAL, _REF, _AGG = range(6)


class _Group:
    """One group's window: its entries (oldest first, from ``lo``) and running aggregates."""

    __slots__ = ("entries", "lo", "distinct", "slot_n", "present", "values", "vsum", "vcount",
                 "sorted", "slot_ts", "slot_lo", "last")

    def __init__(self):
        self.entries: list = []
        self.lo = 0
        self.distinct = 0
        self.slot_n: list | None = None      # temporal types: entries per referenced rule
        self.present = 0
        self.values: dict | None = None      # value_count: value -> entries
        self.vsum: Any = 0
        self.vcount = 0
        self.sorted: list | None = None      # percentile/median: the numbers, sorted
        self.slot_ts: list | None = None     # temporal_ordered: times per referenced rule,
        self.slot_lo: list | None = None     # each list read from its slot_lo index
        self.last = 0

    def __len__(self) -> int:
        return len(self.entries) - self.lo

    def newest_first(self):
        e, lo = self.entries, self.lo
        for i in range(len(e) - 1, lo - 1, -1):
            yield e[i]


class _Slot:
    __slots__ = ("kind", "target", "group_fields", "value_field", "ref")

    def __init__(self, kind, target, group_fields, value_field, ref):
        self.kind, self.target, self.group_fields = kind, target, group_fields
        self.value_field, self.ref = value_field, ref


_CMP = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b, "eq": lambda a, b: a == b, "neq": lambda a, b: a != b}


class _Node:
    """One correlation and its per-group state."""

    def __init__(self, corr: Correlation, index: int, output: bool):
        self.corr = corr
        self.index = index
        self.kind = corr.type
        self.span = corr.span_ms
        self.cond = corr.effective_condition()
        self.output = output
        self.slots: list[_Slot] = []
        self.parents: list[tuple[_Node, int]] = []
        self.groups: OrderedDict = OrderedDict()
        self.pending: dict = {}
        self.total = 0
        self.bytes = 0                       # estimated: entries, their events, group keys
        self.alerts = 0
        self.evicted = 0
        self.missing_group_key = 0
        self.subsets: list[tuple[int, ...]] | None = None
        self.topo = 0
        self.summary: dict | None = None
        if self.kind == "temporal_ordered":
            op, k = self.cond[0]
            if op in ("gt", "gte"):
                need = max(0, math.floor(k) + 1 if op == "gt" else math.ceil(k))
                n = len(corr.rules)
                self.subsets = list(itertools.combinations(range(n), need)) if need <= n else []
        self.numeric = self.kind in ("value_sum", "value_avg", "value_percentile", "value_median")

    # -- state changes ------------------------------------------------------------------
    def _group(self, key) -> _Group:
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group()
            self.bytes += _key_bytes(key)
            kind = self.kind
            if kind == "temporal" or kind == "temporal_ordered":
                g.slot_n = [0] * len(self.slots)
                if kind == "temporal_ordered":
                    g.slot_ts = [[] for _ in self.slots]
                    g.slot_lo = [0] * len(self.slots)
            elif kind == "value_count":
                g.values = {}
            elif kind == "value_percentile" or kind == "value_median":
                g.sorted = []
        else:
            self.groups.move_to_end(key)
        return g

    def add(self, ref, s: int, ts: int, fields: Mapping[str, Any], max_state: int) -> bool:
        """Count ``ref`` (an event or a child alert) in its group; False when it has no group
        (a group-by field is missing)."""
        slot = self.slots[s]
        key = group_key(fields, slot.group_fields)
        if key is None:
            self.missing_group_key += 1
            return False
        self.put(ref, s, ts, key, self.value_of(fields, slot), max_state)
        return True

    def value_of(self, fields: Mapping[str, Any], slot: "_Slot"):
        if slot.value_field is None:
            return None
        raw = fields.get(slot.value_field)
        return fold(raw) if self.kind == "value_count" else number_of(raw)

    def put(self, ref, s: int, ts: int, key: tuple, value, max_state: int) -> None:
        g = self._group(key)
        entries = g.entries
        if g.lo < len(entries) and entries[g.lo][_TS] < ts - self.span:
            self._expire(g, ts - self.span)
        self._push(g, ts, ref.seq, s, value, ref)
        g.last = ts
        self.pending[key] = ref
        if self.total > max_state or self.bytes > self._cap_bytes:
            self._evict()

    def _push(self, g: _Group, ts, seq, s, value, ref) -> None:
        entries = g.entries
        # One event in two slots of this correlation is one event (and one value)
        agg = True
        if len(entries) > g.lo and entries[-1][_SEQ] == seq:
            for i in range(len(entries) - 1, g.lo - 1, -1):
                e = entries[i]
                if e[_SEQ] != seq:
                    break
                if e[_VAL] == value:
                    agg = False
                    break
        else:
            g.distinct += 1
        entries.append((ts, seq, s, value, ref, agg))
        self.total += 1
        self.bytes += ref.size if value is None else ref.size + _sizeof(value)
        if g.slot_n is not None:
            if g.slot_n[s] == 0:
                g.present += 1
            g.slot_n[s] += 1
            if g.slot_ts is not None:
                g.slot_ts[s].append(ts)
        if value is not None:
            if g.values is not None:
                g.values[value] = g.values.get(value, 0) + 1
            elif self.numeric and agg:
                g.vcount += 1
                if g.sorted is None:
                    g.vsum += _exact(value)
                else:
                    bisect.insort(g.sorted, value)

    def _pop(self, g: _Group) -> None:
        entries = g.entries
        e = entries[g.lo]
        g.lo += 1
        if g.lo > 32 and g.lo * 2 > len(entries):
            del entries[:g.lo]
            g.lo = 0
        self.total -= 1
        value = e[_VAL]
        self.bytes -= e[_REF].size if value is None else e[_REF].size + _sizeof(value)
        if g.lo >= len(entries) or entries[g.lo][_SEQ] != e[_SEQ]:
            g.distinct -= 1
        if g.slot_n is not None:
            s = e[_SLOT]
            g.slot_n[s] -= 1
            if g.slot_n[s] == 0:
                g.present -= 1
            if g.slot_ts is not None:
                lo = g.slot_lo[s] + 1
                times = g.slot_ts[s]
                if lo > 32 and lo * 2 > len(times):
                    del times[:lo]
                    lo = 0
                g.slot_lo[s] = lo
        value = e[_VAL]
        if value is not None:
            if g.values is not None:
                n = g.values[value] - 1
                if n:
                    g.values[value] = n
                else:
                    del g.values[value]
            elif self.numeric and e[_AGG]:
                # the same event may stay in the window through another slot with this value
                # (an eviction dropped only part of it): that entry now carries its one value
                i = g.lo
                while i < len(entries) and entries[i][_SEQ] == e[_SEQ]:
                    if entries[i][_VAL] == value:
                        entries[i] = entries[i][:_AGG] + (True,)
                        return
                    i += 1
                g.vcount -= 1
                if g.sorted is None:
                    g.vsum -= _exact(value)
                else:
                    del g.sorted[bisect.bisect_left(g.sorted, value)]

    def _expire(self, g: _Group, start: int) -> None:
        entries = g.entries
        while g.lo < len(entries) and entries[g.lo][_TS] < start:
            self._pop(g)

    def _evict(self) -> None:
        while (self.total > self._cap or self.bytes > self._cap_bytes) and self.groups:
            key, g = next(iter(self.groups.items()))
            if len(g):
                self._pop(g)
                self.evicted += 1
            if not len(g):
                del self.groups[key]
                self.bytes -= _key_bytes(key)
                self.pending.pop(key, None)

    _cap = DEFAULT_MAX_STATE
    _cap_bytes = int(DEFAULT_MAX_STATE_MB * (1 << 20))

    def sweep(self, now: int) -> None:
        """Forget groups whose every entry left the window."""
        groups = self.groups
        while groups:
            key, g = next(iter(groups.items()))
            if g.last >= now - self.span:
                break
            while len(g):
                self._pop(g)
            del groups[key]
            self.bytes -= _key_bytes(key)

    # -- evaluation ---------------------------------------------------------------------
    def metric(self, g: _Group):
        kind = self.kind
        if kind == "event_count":
            return g.distinct
        if kind == "value_count":
            return len(g.values)
        if kind == "temporal" or kind == "temporal_ordered":
            return g.present
        if not g.vcount:
            return None
        if kind == "value_sum":
            return float(g.vsum)
        if kind == "value_avg":
            return float(g.vsum) / g.vcount
        p = 50.0 if kind == "value_median" else float(self.corr.percentile)
        vals = g.sorted
        pos = (len(vals) - 1) * (p / 100)
        i = int(pos)
        frac = pos - i
        out = float(vals[i]) * (1 - frac)
        if i + 1 < len(vals):
            out += float(vals[i + 1]) * frac
        return out

    def _chain(self, g: _Group, slots: Sequence[int]):
        """Earliest strictly increasing times of ``slots`` in order (None: not ordered)."""
        prev = None
        qs = []
        for s in slots:
            times, lo = g.slot_ts[s], g.slot_lo[s]
            if lo >= len(times):
                qs.append(None)
                continue
            i = lo if prev is None else bisect.bisect_right(times, prev, lo)
            if i >= len(times):
                return None
            qs.append(times[i])
            prev = times[i]
        return qs

    def evaluate(self, g: _Group):
        """(metric, evidence selector) when the window qualifies, else None.  The selector is
        None (every entry), "numeric" (entries with a number) or the set of (slot, time) of
        the ordered chains found."""
        value = self.metric(g)
        if value is None:
            return None
        for op, thr in self.cond:
            if not _CMP[op](value, thr):
                return None
        if self.kind == "temporal_ordered":
            chosen: set = set()
            if self.subsets is not None:
                ok = False
                for sub in self.subsets:
                    if not all(g.slot_n[s] for s in sub):
                        continue
                    qs = self._chain(g, sub)
                    if qs is None:
                        continue
                    ok = True
                    if not sub:
                        return value, None
                    chosen.update(zip(sub, qs))
                if not ok:
                    return None
            else:
                qs = self._chain(g, range(len(self.slots)))
                if qs is None:
                    return None
                chosen.update((s, q) for s, q in enumerate(qs) if q is not None)
            return value, chosen
        return value, ("numeric" if self.numeric else None)


class CorrelationEngine:
    """Evaluates correlations over a stream of (event, matched rule indexes).

    ``rules`` is the rule list the matcher indexes; ``correlations`` are resolved
    (``sensor.detect.metarules.resolve``).  ``silent`` holds the indexes of the rules that make
    no alert of their own (referenced without ``generate: true``).
    """

    def __init__(self, rules: Sequence[Rule], correlations: Sequence[Correlation], *,
                 lateness_ms: int = 0, max_state: int = DEFAULT_MAX_STATE,
                 max_state_mb: float = DEFAULT_MAX_STATE_MB,
                 max_evidence: int = DEFAULT_MAX_EVIDENCE, sensor_info: dict | None = None,
                 now=utcnow):
        self.rules = list(rules)
        self.lateness = int(lateness_ms)
        self.max_state = int(max_state)
        self.max_state_mb = float(max_state_mb)
        self.max_evidence = int(max_evidence)
        self.sensor_info = dict(sensor_info or {})
        self._utcnow = now
        quiet = silent_rules(correlations)
        rule_pos = {id(r): i for i, r in enumerate(self.rules)}
        self.silent = frozenset(i for i, r in enumerate(self.rules) if id(r) in quiet)
        self.nodes: list[_Node] = []
        node_of: dict[int, _Node] = {}
        for c in correlations:
            n = _Node(c, len(self.nodes), output=id(c) not in quiet)
            n._cap = self.max_state
            n._cap_bytes = int(self.max_state_mb * (1 << 20))
            node_of[id(c)] = n
            self.nodes.append(n)
        self.by_rule: dict[int, list[tuple[_Node, int]]] = {}
        carry: set[str] = set()
        for n in self.nodes:
            c = n.corr
            if len(c.targets) != len(c.rules):
                raise ValueError(f"correlation {c.id} is not resolved")
            for s, (ref, target) in enumerate(zip(c.rules, c.targets)):
                names = {ref, getattr(target, "id", None),
                         target.name if isinstance(target, Correlation)
                         else target.meta.get("name")}
                mapping = {alias: field for alias, m in c.aliases.items()
                           for k, field in m.items() if k in names}
                gf = tuple(mapping.get(f, f) for f in c.group_by)
                vf = mapping.get(c.field, c.field) if c.field else None
                if isinstance(target, Correlation):
                    child = node_of.get(id(target))
                    if child is None:
                        raise ValueError(f"correlation {c.id} references {target.id}, "
                                         "which is not in the engine")
                    n.slots.append(_Slot("corr", child, gf, vf, ref))
                    child.parents.append((n, s))
                else:
                    i = rule_pos.get(id(target))
                    if i is None:
                        raise ValueError(f"correlation {c.id} references rule {target.id}, "
                                         "which is not in the rule list")
                    n.slots.append(_Slot("rule", i, gf, vf, ref))
                    self.by_rule.setdefault(i, []).append((n, s))
                carry.update(gf)
                if vf:
                    carry.add(vf)
        self.carry = tuple(sorted(carry))
        self.order = self._topo()
        for i, n in enumerate(self.order):
            n.topo = i
        self._dirty: set[int] = set()
        # time
        self.now: int | None = None         # the time being accumulated (not yet evaluated)
        self.max_seen: int | None = None
        self.floor: int | None = None       # events older than this are late
        self._heap: list = []
        self._heap_bytes = 0                # what the held events keep (estimated)
        self._heap_cap = int(self.max_state_mb * (1 << 20))
        self._seq = itertools.count(1)
        self._at_now: list[Ev] = []
        self._finalized = 0
        # counters
        self.events_correlated = 0
        self.updates = 0                    # window updates (event x correlation)
        self.no_time = 0
        self.late = 0
        self.reorder_forced = 0             # events evaluated early: the buffer was over its bytes
        self.alerts_total = 0
        self.windows_discarded = 0          # entries dropped at reloads (their correlation changed)
        self.evicted_before = 0             # evicted by correlations a reload removed or changed
        self.state_note: dict = {"restored": False, "reason": "not saved or loaded"}

    def _topo(self) -> list[_Node]:
        """The nodes, every child before its parents (resolve() refused cycles)."""
        waiting = {n.index: sum(1 for s in n.slots if s.kind == "corr") for n in self.nodes}
        ready = [n for n in self.nodes if waiting[n.index] == 0]
        out: list[_Node] = []
        while ready:
            n = ready.pop()
            out.append(n)
            for parent, _ in n.parents:
                waiting[parent.index] -= 1
                if waiting[parent.index] == 0:
                    ready.append(parent)
        if len(out) != len(self.nodes):
            raise ValueError("correlation references form a cycle")
        return out

    def __bool__(self) -> bool:
        return bool(self.nodes)

    # -- input --------------------------------------------------------------------------
    def feed(self, event: Mapping[str, Any], matched: Iterable[int],
             ts: int | None = None) -> list[dict]:
        """Take one event and the rules it matched; return the alerts that became final."""
        relevant = [i for i in matched if i in self.by_rule]
        if ts is None:
            ts = parse_time_ms(event.get(TIME_FIELD))
        if ts is None:
            if relevant:
                self.no_time += 1
            return []
        if self.max_seen is None or ts > self.max_seen:
            self.max_seen = ts
        if relevant:
            if self.floor is not None and ts < self.floor:
                self.late += 1
            else:
                seq = next(self._seq)
                fields = {}
                for f in self.carry:
                    v = field_value(event, f)
                    if v is not None:
                        fields[f] = v
                ev = Ev(seq, event_id(event), ts, fields, event)
                held = _event_bytes(event)
                heapq.heappush(self._heap, (ts, seq, ev, tuple(relevant), held))
                self._heap_bytes += held
        return self._advance(self.max_seen - self.lateness)

    def flush(self) -> list[dict]:
        """Evaluate everything held (end of input, idle source, stop)."""
        out = self._advance(None)
        if self.now is not None:
            out += self._finalize()
            self.floor = self.now + 1 if self.floor is None else max(self.floor, self.now + 1)
        return out

    def pending(self) -> bool:
        """True when something waits for evaluation (the reorder buffer or the last time)."""
        return bool(self._heap) or bool(self._dirty)

    def _advance(self, watermark: int | None) -> list[dict]:
        out: list[dict] = []
        heap = self._heap
        while heap and (watermark is None or heap[0][0] <= watermark
                        or self._heap_bytes > self._heap_cap):
            ts, seq, ev, relevant, held = heapq.heappop(heap)
            self._heap_bytes -= held
            if watermark is not None and ts > watermark:
                # Over its bytes the buffer lets its oldest event go before ``lateness`` has
                # passed: from now on an event older than it is late (counted, not correlated).
                self.reorder_forced += 1
                if self.floor is None or ts > self.floor:
                    self.floor = ts
            if self.now is not None and ts > self.now:
                out += self._finalize()
            self.now = ts
            self._ingest(ev, relevant)
        if watermark is not None:
            if self.now is not None and self.now < watermark and (self._at_now or self._dirty):
                out += self._finalize()
            if self.floor is None or watermark > self.floor:
                self.floor = watermark
        return out

    def _ingest(self, ev: Ev, relevant) -> None:
        self.events_correlated += 1
        self._at_now.append(ev)
        dirty = self._dirty
        fields = ev.fields
        keys: dict = {}             # group-by fields -> this event's key (shared by nodes)
        for i in relevant:
            for node, s in self.by_rule[i]:
                slot = node.slots[s]
                gf = slot.group_fields
                key = keys.get(gf, False)
                if key is False:
                    key = keys[gf] = group_key(fields, gf)
                if key is None:
                    node.missing_group_key += 1
                    continue
                node.put(ev, s, ev.ts, key, node.value_of(fields, slot), self.max_state)
                dirty.add(node.topo)
                self.updates += 1

    def _finalize(self) -> list[dict]:
        """Evaluate every anchor at ``self.now`` (children before parents)."""
        t = self.now
        out: list[dict] = []
        dirty = self._dirty
        while dirty:
            node = self.order[min(dirty)]
            dirty.discard(node.topo)
            if not node.pending:
                continue
            pending, node.pending = node.pending, {}
            for key, ref in pending.items():
                g = node.groups.get(key)
                if g is None:
                    continue
                res = node.evaluate(g)      # (every entry was put at t: the window is current)
                if res is None:
                    continue
                metric, selector = res
                alert = self._emit(node, key, t, metric, _select(g, selector), ref)
                if alert is not None:
                    out.append(alert)
        self._finalized += 1
        if self._finalized % 256 == 0:   # forget groups whose windows emptied
            for node in self.nodes:
                node.sweep(t)
        for ev in self._at_now:
            ev.event = None
        self._at_now = []
        return out

    def _evidence(self, entries) -> tuple[list[Ev], list[str], bool]:
        """The newest distinct evidence events and child alert ids (at most ``max_evidence``
        of each), and whether anything was left out."""
        evs: dict[int, Ev] = {}
        kids: dict[str, None] = {}
        cap = self.max_evidence
        truncated = False

        def take(ev: Ev) -> bool:
            nonlocal truncated
            if ev.seq in evs:
                return True
            if len(evs) >= cap:
                truncated = True
                return False
            evs[ev.seq] = ev
            return True

        for e in entries:          # newest first
            ref = e[_REF]
            if isinstance(ref, ChildAlert):
                if ref.id not in kids:
                    if len(kids) >= cap:
                        truncated = True
                        break
                    kids[ref.id] = None
                truncated = truncated or ref.truncated
                if not all(take(ev) for ev in reversed(ref.evidence)):
                    break
            elif not take(ref):
                break
        return sorted(evs.values(), key=lambda ev: ev.seq), sorted(kids), truncated

    def _emit(self, node: _Node, key: tuple, t: int, metric, entries, anchor_ref) -> dict | None:
        corr = node.corr
        node.alerts += 1
        if not node.output and not node.parents:
            return None
        evs, kids, truncated = self._evidence(entries)
        aid = alert_id(corr.id, {"correlation_group": list(key), "window_end": t})
        if isinstance(anchor_ref, ChildAlert):
            anchor = anchor_ref.anchor
        else:
            anchor = _anchor_fields(anchor_ref.event) if anchor_ref.event is not None else {}
        if node.parents:
            child = ChildAlert(next(self._seq), aid, t, node, key, metric, tuple(evs), kids,
                               anchor, truncated)
            for parent, s in node.parents:
                for row in self._child_rows(child, parent.slots[s]):
                    parent.add(child, s, t, row, self.max_state)
                    self._dirty.add(parent.topo)
        if not node.output:
            return None
        self.alerts_total += 1
        if node.summary is None:
            node.summary = correlation_summary(corr)
        return build_correlation_alert(corr, dict(zip(corr.group_by, key)), t, metric,
                                       [ev.id for ev in evs], kids, truncated, anchor, aid,
                                       self._utcnow(), self.sensor_info, node.summary)

    @staticmethod
    def _child_rows(child: ChildAlert, slot: _Slot) -> list[dict]:
        """The parent's view of a child alert: its group-by values and metric, and for any
        other field the distinct values among its evidence events."""
        c = child.node.corr
        own = dict(zip(c.group_by, child.group))
        own["sigma_metric"] = child.metric
        own[c.type] = child.metric
        needed = [f for f in slot.group_fields + ((slot.value_field,) if slot.value_field else ())]
        fixed = {f: own[f] for f in needed if f in own}
        rest = [f for f in needed if f not in own]
        if not rest:
            return [fixed] if child.evidence else []
        rows: dict[tuple, dict] = {}
        for ev in child.evidence:
            row = dict(fixed)
            for f in rest:
                row[f] = ev.fields.get(f)
            rows.setdefault(tuple((f, fold(row[f])) for f in rest), row)
        return list(rows.values())

    # -- health -------------------------------------------------------------------------
    def stats(self) -> dict:
        """Plain counters for the health status."""
        per = {}
        for n in self.nodes:
            per[n.corr.id] = {"title": n.corr.title, "type": n.kind, "alerts": n.alerts,
                              "groups": len(n.groups), "entries": n.total,
                              "state_mb": round(n.bytes / (1 << 20), 3),
                              "evicted": n.evicted, "missing_group_key": n.missing_group_key}
        return {"correlations": len(self.nodes),
                "events_correlated": self.events_correlated,
                "window_updates": self.updates,
                "alerts": self.alerts_total,
                "no_event_time": self.no_time,
                "late_events": self.late,
                "reorder_buffered": len(self._heap),
                "reorder_forced": self.reorder_forced,
                "lateness_s": self.lateness / 1000,
                "max_state": self.max_state,
                "max_state_mb": self.max_state_mb,
                "entries": sum(n.total for n in self.nodes),
                "state_mb": round(sum(n.bytes for n in self.nodes) / (1 << 20), 3),
                "evicted": self.evicted_before + sum(n.evicted for n in self.nodes),
                "windows_discarded": self.windows_discarded,
                "missing_group_key": sum(n.missing_group_key for n in self.nodes),
                "state": dict(self.state_note),
                "by_correlation": per}

    # -- persistence --------------------------------------------------------------------
    def save_state(self, path: str) -> int:
        """Write what the windows hold (call after :meth:`flush`); returns the bytes written.

        The reorder buffer and unevaluated anchors are not saved (flush first)."""
        import msgspec

        data = msgspec.json.encode(self.export_state(), enc_hook=str)
        _write_private(path, data)
        return len(data)

    def export_state(self) -> dict:
        """What the windows hold, as the state file's document (call after :meth:`flush`)."""
        evs: dict[int, Ev] = {}
        kids: dict[int, ChildAlert] = {}
        nodes = {}
        for n in self.nodes:
            groups = []
            for key, g in n.groups.items():
                ents = []
                for e in g.entries[g.lo:]:
                    ref = e[_REF]
                    if isinstance(ref, ChildAlert):
                        kids[ref.seq] = ref
                        for ev in ref.evidence:
                            evs[ev.seq] = ev
                        ents.append([e[_TS], e[_SLOT], "c", ref.seq, _row_of(e, n, key)])
                    else:
                        evs[ref.seq] = ref
                        ents.append([e[_TS], e[_SLOT], "e", ref.seq, None])
                groups.append([list(key), ents])
            nodes[n.corr.id] = {"fingerprint": n.corr.fingerprint(), "groups": groups,
                                "alerts": n.alerts, "evicted": n.evicted}
        doc = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "saved_at": time.time(),
            "generator": f"etw-sensor {__version__}",
            "now": self.now, "max_seen": self.max_seen, "floor": self.floor,
            "seq": next(self._seq),
            "events": [[ev.seq, ev.id, ev.ts, ev.fields] for ev in evs.values()],
            "children": [[k.seq, k.id, k.ts, k.node.corr.id, list(k.group), k.metric,
                          [ev.seq for ev in k.evidence], list(k.children), k.anchor,
                          k.truncated] for k in kids.values()],
            "nodes": nodes,
        }
        return doc

    def take_over(self, old: "CorrelationEngine") -> dict:
        """Continue from the engine of the rule set this one replaces (a hot reload).

        ``old`` must be flushed first (its reorder buffer is evaluated, not carried). The
        windows of correlations whose definition is unchanged (same id, same
        :meth:`Correlation.fingerprint`) carry over, with the engine's clock and counters;
        the windows of correlations that changed or went away are dropped, and counted in
        ``windows_discarded`` (entries) and the returned note."""
        doc = old.export_state()
        try:
            note = self._restore(doc)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            self._reset_state()         # never half a state: start empty, count it all lost
            note = {"discarded": [n.corr.id for n in old.nodes if n.total]}
        dropped = note.get("discarded") or []
        by_id = {n.corr.id: n for n in old.nodes}
        lost = sum(by_id[i].total for i in dropped if i in by_id)
        self.events_correlated += old.events_correlated
        self.no_time += old.no_time
        self.late += old.late
        self.alerts_total += old.alerts_total
        self.windows_discarded = old.windows_discarded + lost
        self.evicted_before = old.evicted_before + sum(by_id[i].evicted for i in dropped
                                                       if i in by_id)
        note = {"restored": True, "at": "reload", "correlations": note.get("correlations", 0),
                **({"discarded": dropped, "entries_discarded": lost,
                    "reason": "a reload dropped the windows of correlations that changed or "
                              "went away"} if dropped else {})}
        self.state_note = note
        return note

    def load_state(self, path: str) -> dict:
        """Restore saved windows; returns (and keeps for the health status) what happened."""
        import msgspec

        note: dict
        try:
            size = os.path.getsize(path)
        except OSError:
            note = {"restored": False, "reason": "no saved state (first start, or the previous "
                                                 "run did not save it)"}
            self.state_note = note
            return note
        try:
            from .pack import read_regular
            # non-blocking and regular only, bounded like every other file the sensor reads
            data = read_regular(path, MAX_STATE_FILE) if size <= MAX_STATE_FILE else None
            if data is None:
                raise ValueError(f"state file is larger than {MAX_STATE_FILE} bytes")
            doc = msgspec.json.decode(data)
            if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or \
                    doc.get("version") != STATE_VERSION:
                raise ValueError("not a correlation state file of this version")
            note = self._restore(doc)
            note["saved_at"] = doc.get("saved_at")
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                msgspec.DecodeError) as exc:
            self._reset_state()
            note = {"restored": False, "reason": f"saved state unusable, windows start empty: "
                                                 f"{exc}"}
        self.state_note = note
        return note

    def _reset_state(self) -> None:
        for n in self.nodes:
            n.groups.clear()
            n.pending.clear()
            n.total = 0
            n.bytes = 0
        self._dirty.clear()
        self.now = self.max_seen = self.floor = None

    def _restore(self, doc: dict) -> dict:
        by_id = {n.corr.id: n for n in self.nodes}
        evs = {}
        for seq, ident, ts, fields in doc["events"]:
            if not isinstance(fields, dict):
                raise ValueError("bad event record")
            evs[int(seq)] = Ev(int(seq), str(ident), int(ts), fields)
        kids = {}
        for rec in doc["children"]:
            seq, ident, ts, nid, group, metric, ev_seqs, children, anchor, trunc = rec
            node = by_id.get(nid)
            if node is None:
                continue
            kids[int(seq)] = ChildAlert(int(seq), str(ident), int(ts), node, tuple(group), metric,
                                        tuple(evs[s] for s in ev_seqs), list(children),
                                        dict(anchor or {}), bool(trunc))
        kept, dropped = [], []
        for nid, saved in doc["nodes"].items():
            node = by_id.get(nid)
            if node is None or saved.get("fingerprint") != node.corr.fingerprint():
                dropped.append(nid)
                continue
            for key, ents in saved["groups"]:
                for ts, s, kind, seq, row in ents:
                    if not 0 <= int(s) < len(node.slots):
                        raise ValueError("bad slot")
                    if kind == "c":
                        ref = kids[int(seq)]
                        node.add(ref, int(s), int(ts), row or {}, self.max_state)
                    else:
                        ref = evs[int(seq)]
                        node.add(ref, int(s), int(ts), ref.fields, self.max_state)
            node.pending.clear()
            self._dirty.discard(node.topo)
            node.alerts = int(saved.get("alerts", 0))
            node.evicted = int(saved.get("evicted", 0))
            kept.append(nid)
        self.now = doc.get("now")
        self.max_seen = doc.get("max_seen")
        self.floor = doc.get("floor")
        # A new event or child alert must not take the number of a restored one (the number is
        # what tells one event in two slots from two events): new ones are numbered above
        # everything restored, whatever the file's `seq` says (a number nothing holds is free).
        self._seq = itertools.count(max([*evs, *kids], default=0) + 1)
        note = {"restored": True, "correlations": len(kept)}
        if dropped:
            note["discarded"] = dropped
            note["reason"] = "the state of correlations that changed or went away was discarded"
        return note


def _select(g: _Group, selector):
    """The evidence entries of a qualifying window, newest first."""
    if selector is None:
        return g.newest_first()
    if selector == "numeric":
        return (e for e in g.newest_first() if e[_VAL] is not None)
    return (e for e in g.newest_first() if (e[_SLOT], e[_TS]) in selector)


def _row_of(entry, node: _Node, key: tuple) -> dict:
    """The fields a child entry was counted with (saved so a restore counts it the same)."""
    slot = node.slots[entry[_SLOT]]
    row = dict(zip(slot.group_fields, key))
    if slot.value_field:
        row[slot.value_field] = entry[_VAL]
    return row


def _write_private(path: str, data: bytes) -> None:
    """Write ``data`` atomically (temp file + rename), the file 0600 and new folders 0700."""
    from .._files import private_dir, write_atomic_private
    parent = os.path.dirname(path)
    if parent:
        private_dir(parent)
    write_atomic_private(path, data)


# ---------------------------------------------------------------------------------
# Alerts.

def event_id(event: Mapping[str, Any]) -> str:
    """A stable id for an event (a hash of its stored values), listed as alert evidence."""
    return alert_id("event", event)


def _anchor_fields(event) -> dict:
    """The select fields of the event that completed a window (shown in its alert)."""
    out = {}
    for name in SELECT_FIELDS:
        fld = FIELD_MAP.get(name)
        if fld is not None and name != "MESSAGE":
            v = field_value(event, fld)
            if v is not None:
                out[name] = v
    for k in ("Computer", "User", "Image", "CommandLine", "ParentImage", TIME_FIELD):
        v = event.get(k)
        if v is not None:
            out.setdefault("event", {})[k] = v
    return out


def _mitre(tags) -> list[str]:
    out = []
    for t in tags:
        t = t.lower()
        if t.startswith("attack.t") and t[8:9].isdigit():
            out.append("T" + t[8:].upper())
    return out


def correlation_summary(corr: Correlation) -> dict:
    """The rule block of a correlation alert."""
    out = {"id": corr.id, "title": corr.title, "level": corr.level,
           "description": corr.description, "tags": list(corr.tags),
           "mitre": _mitre(corr.tags), "author": corr.author,
           "references": list(corr.references), "falsepositives": list(corr.falsepositives),
           "source": corr.source, "origin": corr.origin, "kind": "correlation"}
    if corr.name:
        out["name"] = corr.name
    for k, v in corr.meta.items():
        out.setdefault(k, v)
    return out


def build_correlation_alert(corr: Correlation, group: dict, t: int, metric, event_ids: list,
                            child_ids: list, truncated: bool, anchor: dict, aid: str,
                            now: str, sensor_info: dict | None = None,
                            summary: dict | None = None) -> dict:
    """The alert a qualifying correlation window becomes (``summary``: the rule block, when the
    caller keeps one per correlation)."""
    cond = {op: v for op, v in corr.effective_condition()}
    shown = metric if not isinstance(metric, float) or not metric.is_integer() else int(metric)
    desc = ", ".join(f"{k}={v}" for k, v in group.items()) or "all events"
    alert: dict[str, Any] = {
        "id": aid,
        "timestamp": now,
        "event_time": format_time_ms(t),
        "rule": summary if summary is not None else correlation_summary(corr),
        "MESSAGE": (f"Correlation {corr.title!r}: {corr.type} {shown} "
                    f"({', '.join(f'{k} {v}' for k, v in cond.items())}) for {desc} "
                    f"within {corr.timespan}"),
    }
    for name in SELECT_FIELDS:
        if name != "MESSAGE":
            alert[name] = anchor.get(name)
    alert["correlation"] = {
        "type": corr.type, "group": group, "value": shown, "condition": cond,
        "field": corr.field, "timespan": corr.timespan,
        "window": {"start": format_time_ms(t - corr.span_ms), "end": format_time_ms(t)},
        "event_count": len(event_ids), "event_ids": list(event_ids),
        "alert_ids": list(child_ids), "evidence_truncated": bool(truncated),
        "rules": [getattr(x, "id", None) for x in corr.targets] or list(corr.rules),
    }
    if corr.percentile is not None:
        alert["correlation"]["percentile"] = corr.percentile
    alert["event"] = dict(anchor.get("event") or {})
    alert["sensor"] = {"version": __version__, **(sensor_info or {})}
    return alert
