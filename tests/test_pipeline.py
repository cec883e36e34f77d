"""The live pipeline on replayed events: enrich → match → spool → deliver, drops, drain, health."""
from __future__ import annotations

import json
import threading

from sensor.deliver.forwarder import DeliveryConfig, Forwarder
from sensor.events import ProcessEvent
from sensor.daemon.health import read_status
from sensor.detect.noise import Exclusion, Exclusions, Throttle
from sensor.deliver.memory import MemoryOutput
from sensor.daemon.pipeline import Pipeline
from sensor.detect.seed import seed_rule
from sensor.sources.replay import ReplaySource
from sensor.deliver.spool import Spool

MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe",
       "CommandLine": "mofcomp a.mof", "Computer": "WS1"}


def recording(tmp_path, events):
    p = tmp_path / "rec.jsonl"
    p.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return str(p)


def alerts_of(out):
    """The detection alerts an output got (not the sensor's health documents and alerts)."""
    return [a for a in out.alerts if a.get("type") is None]


def ids_of(out):
    return [str(a["id"]) for a in alerts_of(out)]


def make(tmp_path, events, engine, **kw):
    spool = Spool(tmp_path / "spool.sqlite")
    out = MemoryOutput()
    fwd = Forwarder(spool, out, DeliveryConfig(linger=0.01, poll_interval=0.05))
    src = ReplaySource([recording(tmp_path, events)])
    p = Pipeline(source=src, rules=[seed_rule()], spool=spool, forwarder=fwd, engine=engine,
                 heartbeat_interval=0, **kw)
    return p, out, spool


def test_alerts_flow_to_the_output(tmp_path, engine):
    events = [dict(MOF, ProcessId=i) for i in range(50)] + [{"Image": "C:\\x.exe"}] * 50
    p, out, spool = make(tmp_path, events, engine)
    p.start()
    assert p.wait_source(60)
    status = p.stop(drain_timeout=10)
    assert status["events"]["in"] == 100
    assert status["alerts"]["total"] == 50
    assert len(set(ids_of(out))) == 50 and len(ids_of(out)) == 50
    assert spool.depth() == 0                       # delivered alerts left the spool
    # and the ledger: a health document at start and one at stop, numbered 0 and 1. Two workers
    # deliver (docs/delivery.md, `concurrency`: alerts may arrive out of order), so the stop's
    # document can arrive first; its sequence number is what orders them
    docs = sorted((a for a in out.alerts if a.get("type") == "metric"), key=lambda d: d["ledger"]["seq"])
    assert [(d["ledger"]["seq"], d["ledger"]["reason"]) for d in docs] == [(0, "start"), (1, "stop")]
    assert status["matcher"]["us_per_event"] > 0


def test_alert_written_to_spool_before_delivery(tmp_path, engine):
    """With delivery failing, every alert stays in the spool (nothing is lost)."""
    from sensor.deliver.protocol import RETRY, SendResult
    p, out, spool = make(tmp_path, [dict(MOF, ProcessId=i) for i in range(10)], engine)
    out.script = lambda alerts: SendResult(RETRY, status=503, error="down")
    p.start()
    assert p.wait_source(60)
    p.stop(drain_timeout=0.5)
    assert spool.depth() == 10 + 2 and out.alerts == []     # + the start and stop health documents


def test_noise_control_in_pipeline(tmp_path, make_matcher, engine):
    events = [dict(MOF)] * 5 + [dict(MOF, ParentImage="C:\\Windows\\System32\\cscript.exe",
                                    CommandLine="cscript ZTITatoo.wsf")]
    excl = Exclusions([Exclusion(rules=["seed-*"], fields={"parent_image|endswith": "\\cscript.exe"})],
                      make_matcher)
    p, out, _ = make(tmp_path, events, engine, exclusions=excl, throttle=Throttle(3600))
    p.start()
    assert p.wait_source(60)
    status = p.stop(drain_timeout=10)
    assert len(ids_of(out)) == 1                     # 5 identical -> 1, cscript one excluded
    assert status["noise"]["throttled"] == {"seed-cc784d634d6f7fd1": 4}
    assert status["noise"]["excluded_alerts"] == {"seed-cc784d634d6f7fd1": 1}


class BurstSource:
    """A source that pushes without waiting, like the ETW callback."""

    name = "burst"
    blocking = False

    def __init__(self, n):
        self.n = n
        self.finished = threading.Event()
        self.accepted = 0

    def start(self, emit):
        for i in range(self.n):
            self.accepted += emit(ProcessEvent(Image=f"C:\\{i}.exe"))
        self.finished.set()

    def stop(self):
        pass

    def stats(self):
        return {"kind": "burst"}


def test_full_queue_drops_and_counts(tmp_path, engine):
    src = BurstSource(5000)
    p = Pipeline(source=src, rules=[seed_rule()], engine=engine, queue_size=100, heartbeat_interval=0)
    p.start()
    assert p.wait_source(60)
    status = p.stop(drain_timeout=5)
    dropped = status["events"]["queue_dropped"]
    assert dropped > 0 and dropped + status["events"]["in"] == 5000
    assert src.accepted == status["events"]["in"]


def test_status_file_heartbeat(tmp_path, engine):
    status_file = tmp_path / "status.json"
    p, out, _ = make(tmp_path, [MOF], engine, status_file=str(status_file))
    from sensor.daemon.health import Heartbeat
    p.heartbeat = Heartbeat(p.beat, 0.05)
    p.start()
    assert p.wait_source(60)
    p.stop(drain_timeout=5)
    st = read_status(str(status_file))
    assert st.alerts.by_rule == {"seed-cc784d634d6f7fd1": 1}
    assert st.alerts.titles == {"seed-cc784d634d6f7fd1": "Potential Suspicious Mofcomp Execution"}
    assert st.sensor.state == "stopped"
    assert st.delivery.sent == 1 + st.ledger.seq + 1        # the alert and every health document
    assert st.spool.depth == 0


def test_one_bad_event_does_not_cost_the_batch_its_alerts(tmp_path, engine):
    """A value of the wrong type (Image as a number) must not sink the other alerts."""
    events = [dict(MOF, ProcessId=i) for i in range(6)]
    events.insert(3, {"Image": 123, "OriginalFileName": "mofcomp.exe",
                      "ParentImage": "C:\\Windows\\System32\\cmd.exe"})
    p, out, spool = make(tmp_path, events, engine)
    p.start()
    assert p.wait_source(60)
    status = p.stop(drain_timeout=10)
    assert status["events"]["in"] == 7
    assert len(set(ids_of(out))) == status["alerts"]["total"] >= 6


def test_lone_surrogate_does_not_sink_the_spool_write(tmp_path, engine):
    events = [dict(MOF, ProcessId=i) for i in range(5)] + [dict(MOF, CommandLine="mofcomp \udc80.mof")]
    src_path = tmp_path / "rec.jsonl"
    spool = Spool(tmp_path / "spool.sqlite")
    out = MemoryOutput()
    fwd = Forwarder(spool, out, DeliveryConfig(linger=0.01, poll_interval=0.05))

    class ListSource(BurstSource):
        blocking = True

        def start(self, emit):
            for e in events:
                emit(ProcessEvent(e))
            self.finished.set()

    p = Pipeline(source=ListSource(0), rules=[seed_rule()], spool=spool, forwarder=fwd,
                 engine=engine, heartbeat_interval=0)
    p.start()
    assert p.wait_source(60)
    status = p.stop(drain_timeout=10)
    assert not src_path.exists()
    assert status["spool"]["write_failures"] == 0
    assert len(ids_of(out)) == 6
    assert any("\ufffd" in (a["event"]["CommandLine"] or "") for a in alerts_of(out))


def test_replay_drops_are_counted_once(tmp_path, engine):
    src = ReplaySource([recording(tmp_path, [{"Image": "C:\\a.exe"}] * 3000)], block=False)
    p = Pipeline(source=src, rules=[seed_rule()], engine=engine, queue_size=8, heartbeat_interval=0)
    p.start()
    assert p.wait_source(60)
    status = p.stop(drain_timeout=5)
    assert status["events"]["in"] + status["events"]["queue_dropped"] == 3000


def test_serve_reports_a_source_that_cannot_start(engine, caplog):
    from sensor.daemon.runner import serve

    class Broken(BurstSource):
        def start(self, emit):
            raise OSError("StartTrace failed: access denied")

    p = Pipeline(source=Broken(0), rules=[seed_rule()], engine=engine, heartbeat_interval=0)
    assert serve(p, threading.Event(), drain_timeout=1) == 2
    assert "could not start: StartTrace failed" in caplog.text


def test_pe_cache_checks_each_image_once_per_batch(tmp_path, engine):
    # A renamed mofcomp started 40 times: one parse, then at most one identity check per
    # batch the worker takes; every start still alerts through OriginalFileName.
    import shutil
    from pathlib import Path

    from sensor.enrich.enricher import Enricher
    from sensor.enrich.pe import VersionInfoCache
    tool = Path(__file__).resolve().parents[1] / "sensor" / "data" / "demo" / "renamed_tool.exe"
    (tmp_path / "img").mkdir()
    shutil.copy(tool, tmp_path / "img" / "renamed_tool.exe")
    cache = VersionInfoCache()
    enr = Enricher(pe_lookup=cache.lookup, pe_stats=cache.stats, pe_batch=cache.batch,
                   path_map={"C:\\Users\\Public\\": str(tmp_path / "img")})
    events = [{"Image": "C:\\Users\\Public\\renamed_tool.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe",
               "CommandLine": "renamed_tool.exe C:\\Users\\Public\\persist.mof", "ProcessId": i}
              for i in range(40)]
    p, out, _spool = make(tmp_path, events, engine, enricher=enr, batch_size=8)
    p.start()
    assert p.wait_source(60)
    status = p.stop(drain_timeout=10)
    assert status["alerts"]["total"] == 40
    st = cache.stats()
    assert st["misses"] == 1 and st["hits"] == 39
    batches = -(-40 // 8)
    assert st["batch_hits"] >= 39 - batches  # at most one check per batch


def test_pe_cache_reads_a_changed_image_in_the_next_batch(tmp_path, engine):
    # The same path holds mofcomp's disguise for the first run, then a different
    # program: the second run's batch checks the file and reads it again.
    import shutil
    from pathlib import Path

    from sensor.enrich.enricher import Enricher
    from sensor.enrich.pe import VersionInfoCache
    root = Path(__file__).resolve().parents[1]
    img = tmp_path / "img" / "renamed_tool.exe"
    img.parent.mkdir()
    shutil.copy(root / "sensor" / "data" / "demo" / "renamed_tool.exe", img)
    cache = VersionInfoCache()
    enr = Enricher(pe_lookup=cache.lookup, pe_stats=cache.stats, pe_batch=cache.batch,
                   path_map={"C:\\Users\\Public\\": str(tmp_path / "img")})
    ev = {"Image": "C:\\Users\\Public\\renamed_tool.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe",
          "CommandLine": "renamed_tool.exe C:\\Users\\Public\\persist.mof"}
    totals = []
    for run in range(2):
        sub = tmp_path / f"run{run}"
        sub.mkdir()
        p, _out, _spool = make(sub, [dict(ev, ProcessId=i) for i in range(5)], engine,
                               enricher=enr)
        p.start()
        assert p.wait_source(60)
        totals.append(p.stop(drain_timeout=10)["alerts"]["total"])
        shutil.copy(root / "tests" / "data" / "pe" / "basic64.exe", img)  # not mofcomp any more
    assert totals == [5, 0] and cache.stats()["misses"] == 2


def test_matcher_thread_commits_held_alerts_when_their_delay_ends(tmp_path, engine):
    # The replay source runs on the matcher thread's queue: with a commit delay the worker wakes
    # for the commit by itself, so the source is drained (nothing pending) without a stop.
    spool = Spool(tmp_path / "spool.sqlite")
    src = ReplaySource([recording(tmp_path, [dict(MOF, ProcessId=i) for i in range(5)])])
    p = Pipeline(source=src, rules=[seed_rule()], spool=spool, engine=engine, heartbeat_interval=0,
                 commit_delay=0.05, ledger=False)
    p.start()
    try:
        assert p.wait_source(60)
        assert spool.depth() == 5
    finally:
        p.stop(drain_timeout=5)
    assert p.final.alerts.total == 5 and p.final.spool.write_failures == 0


def _mof_events():
    """Matching and non-matching starts, one excluded by its parent, one whose pending field
    fails when the matcher asks for it, a repeated one the throttle holds back."""
    def broken(ev, name):
        raise OSError("the image cannot be read")
    evs = []
    for i in range(12):
        if i % 3 == 0:
            ev = ProcessEvent(dict(MOF, ProcessId=i, CommandLine=f"mofcomp {i}.mof"))
        elif i % 3 == 1:
            ev = ProcessEvent({"Image": "C:\\x.exe", "ProcessId": i})
        else:
            ev = ProcessEvent(dict(MOF, ProcessId=i, CommandLine="mofcomp same.mof"))
        if i == 5:
            ev = ProcessEvent(dict(MOF, ProcessId=i, ParentImage="C:\\Windows\\System32\\cscript.exe"))
        if i == 6:
            ev = ProcessEvent({"ProcessId": i, "Image": MOF["Image"]})
            ev.set_pending("CommandLine", broken)
        evs.append(ev)
    return evs


def _alerts_by_batches(tmp_path, engine, make_matcher, sizes, caplog):
    excl = Exclusions([Exclusion(rules=["seed-*"], fields={"parent_image|endswith": "\\cscript.exe"}),
                       Exclusion(fields={"command_line": "mofcomp 9.mof"})], make_matcher)
    spool = Spool(tmp_path / f"spool-{'-'.join(map(str, sizes))}.sqlite")
    p = Pipeline(source=ReplaySource([]), rules=[seed_rule()], spool=spool,
                 forwarder=Forwarder(spool, MemoryOutput(), DeliveryConfig()), engine=engine,
                 heartbeat_interval=0, exclusions=excl, throttle=Throttle(3600))
    evs, at = _mof_events(), 0
    for n in sizes:
        p.run_batch(evs[at:at + n])
        at += n
    p.commit()
    got = [(a["event"]["ProcessId"], a["rule"]["id"])
           for a in (it.decode() for it in spool.fetch(100)) if a.get("type") is None]
    spool.close()
    return got, p.event_errors, p.events_excluded, p.events_in


def test_batches_of_any_size_give_the_same_alerts_and_a_failing_event_costs_only_itself(tmp_path, engine, make_matcher, caplog):
    """However the source cuts the events into batches, the alerts, their order, the
    exclusions, the throttle and the event that fails are the same; the event whose matching
    fails (a pending field that raises) is counted and skipped, the others keep their alerts."""
    one, errs1, excl1, in1 = _alerts_by_batches(tmp_path, engine, make_matcher, [1] * 12, caplog)
    whole, errs2, excl2, in2 = _alerts_by_batches(tmp_path, engine, make_matcher, [12], caplog)
    split, errs3, excl3, in3 = _alerts_by_batches(tmp_path, engine, make_matcher, [5, 4, 3], caplog)
    assert one == whole == split
    # the seed rule alerts on mofcomp starts: 0 and 3 (distinct command lines); 2 is the first
    # "same.mof" one, 8 and 11 repeat it inside the throttle window; 5's alert is excluded, 9 is
    # dropped whole by an exclusion of every rule, 6 fails
    assert [pid for pid, _ in one] == [0, 2, 3], one
    assert (errs1, excl1, in1) == (errs2, excl2, in2) == (errs3, excl3, in3) == (1, 1, 12)
    assert "event skipped: processing failed" in caplog.text and "the image cannot be read" in caplog.text
