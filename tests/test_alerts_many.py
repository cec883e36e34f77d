"""The alerts of one event are built together (``AlertFactory.many``): what they share (the
event's fields, the select values, the identity key, the time) once. Each alert must be what
building it alone gives, byte for byte in JSON (keys in the same order), whatever the event."""
from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor import __version__
from sensor.detect.alerts import SELECT_FIELDS, AlertFactory, alert_id, rule_summary
from sensor.detect.fields import FIELD_MAP
from sensor.detect.seed import seed_rule
from sensor.events import FIELDS, ProcessEvent, field_value


def one_alert(rule, event, now):
    """An alert built alone, field by field (the layout of alerts.py's module docstring)."""
    if getattr(event, "resolve_all", None) is not None:
        event.resolve_all()
    alert = {"id": alert_id(rule.id, event), "timestamp": now, "event_time": event.get("UtcTime"),
             "rule": rule_summary(rule)}
    for name in SELECT_FIELDS + tuple(s for s in rule.select if s not in SELECT_FIELDS):
        if name in FIELD_MAP:
            alert[name] = field_value(event, FIELD_MAP[name])
    ev = {k: event.get(k) for k in FIELDS}
    ev.update((k, v) for k, v in event.items() if k not in ev)
    alert["event"] = ev
    if getattr(event, "origin", None):
        alert["field_origin"] = dict(event.origin)
    alert["sensor"] = {"version": __version__}
    return alert


values = st.none() | st.integers(-5, 2**40) | st.text(max_size=30)
SEED = seed_rule()
RULES = [SEED, dataclasses.replace(SEED, id="r2", select=("COMMANDLINE", "PROCESSID", "ORIGINALFILENAME", "PROCESSID")),
         dataclasses.replace(SEED, id="r3", title="three", select=())]


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS + ("Extra", "Hashes", "ProcessTree")), values, max_size=20),
       st.sampled_from(["process_event", "plain", "reinserted"]),
       st.dictionaries(st.sampled_from(FIELDS[:8]), st.sampled_from(["etw", "pe"]), max_size=4),
       st.lists(st.sampled_from(range(len(RULES))), min_size=1, max_size=4),
       st.booleans())
def test_many_equals_each_alert_built_alone(data, kind, origin, picks, pending):
    def make():
        if kind == "plain":
            return dict(data)
        ev = ProcessEvent(data)
        if kind == "reinserted" and "Image" in ev:     # a model field moved to the end
            v = ev.pop("Image")
            ev["Image"] = v
        ev.origin = dict(origin) if origin else None
        if pending and ev.get("OriginalFileName") is None:    # the enricher defers missing fields only
            ev.set_pending("OriginalFileName", lambda e, f: "resolved.exe")
        return ev
    rules = [RULES[i] for i in picks]
    now = "2026-01-01T00:00:00.000Z"
    got = AlertFactory().many(rules, make())
    for a in got:
        a["timestamp"] = now
    want = [one_alert(r, make(), now) for r in rules]
    assert [json.dumps(a) for a in got] == [json.dumps(w) for w in want]
    # each alert has its own dicts: changing one leaves the others alone
    if len(got) > 1:
        got[0]["event"]["Image"] = "changed"
        got[0]["sensor"]["host"] = "h"
        assert got[1]["event"].get("Image") != "changed" and "host" not in got[1]["sensor"]


def test_the_pipeline_builds_the_alerts_of_an_event_once(tmp_path):
    from sensor.daemon.pipeline import Pipeline
    from sensor.deliver.spool import Spool

    class Counting(AlertFactory):
        def __init__(self):
            super().__init__()
            self.calls = []

        def many(self, rules, event):
            self.calls.append(len(rules))
            return super().many(rules, event)

    r2 = dataclasses.replace(SEED, id="r2")
    with Spool(tmp_path / "s.db") as sp:
        p = Pipeline(source=None, rules=[SEED, r2], spool=sp, commit_delay=0.0)
        factory = Counting()
        p._active.make_alert = factory
        ev = ProcessEvent(Image="C:\\Windows\\System32\\wbem\\mofcomp.exe", CommandLine="mofcomp x.mof",
                          ParentImage="C:\\Windows\\System32\\cmd.exe", ProcessId=7)
        p._process([ev])
        assert factory.calls == [2] and sp.depth() == 2
        ids = sorted(a.decode()["id"] for a in sp.fetch(10))
        assert ids == sorted([alert_id(SEED.id, ev), alert_id("r2", ev)])
