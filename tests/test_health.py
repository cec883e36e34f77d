"""One health model, four renderings, and the completeness ledger in the SIEM.

Each counter of the health status is driven above zero through the real component (the ETW
source with a fake session backend, the pipeline queue, psutil back-fill, the PE reader, the
rule loader, the forwarder against the local HTTPS receiver, the SQLite spool), and the same
numbers must appear in the heartbeat log line, status.json, `etw-sensor status` and the health
document the receiver got.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time

import psutil
import pytest

from sensor.cli import main
from sensor.daemon.health import Ledger, Status, read_status, transitions
from sensor.sources.etw_raw import SRC_KERNEL_PROCESS, SRC_LOST

from .test_etw_decode import KP_ROWS, encode, sample_values
from .test_etw_session import FakeBackend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes; the fake ETW backend")


def receiver_cls():
    pytest.importorskip("cryptography", reason="the local receiver generates certificates with it")
    from sensor.testing.receiver import Receiver
    return Receiver


def wait(cond, timeout: float = 20.0, what: str = "condition"):
    """Wait for ``cond()``; the timeout only guards against a hang."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def rundown(pid: int, seq: int, image: str) -> bytes:
    _, fields = KP_ROWS[(15, 1)]
    vals = sample_values(fields, 0)
    vals.update(ProcessID=pid, ParentProcessID=4, CreateTime=132_000_000_000_000_000,
                ProcessSequenceNumber=seq, ImageName=image)
    return encode(fields, vals)


def start(pid: int, image: str, ppid: int = 100, pseq: int = 5000) -> tuple:
    _, fields = KP_ROWS[(1, 3)]
    vals = sample_values(fields, pid)
    vals.update(ProcessID=pid, ParentProcessID=ppid, ParentProcessSequenceNumber=pseq,
                ProcessSequenceNumber=pid * 10, ImageName=image)
    return (SRC_KERNEL_PROCESS, 1, 3, 1, 4, 8, 0, 0, encode(fields, vals))


def free_pids(n: int) -> list[int]:
    """Pids no process has here: back-fill finds them gone."""
    out, pid = [], 3_000_000
    while len(out) < n:
        if not psutil.pid_exists(pid):
            out.append(pid)
        pid += 7
    return out


VOL = "\\Device\\HarddiskVolume3"


def test_every_counter_reaches_all_four_renderings(tmp_path, caplog, capsys):
    Receiver = receiver_cls()
    from sensor.daemon.assemble import build, make_pipeline, validate
    from sensor.daemon.config import load
    from sensor.sources.etw import EtwConfig, EtwSource
    from sensor.sources.etw_session import SessionSpec

    # A Sigma file the loader rejects (rules rejected, on_error = "skip"); an image that is no PE
    # (PE errors through the real reader and cache).
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "broken.yml").write_text("title: broken\ndetection: [\n")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "tool.exe").write_bytes(b"MZ" + b"\x00" * 62 + b"not a PE image" * 10)
    caplog.set_level("INFO")
    with Receiver(token="tok", keep_documents=True) as receiver:
        cfg_path = tmp_path / "sensor.toml"
        cfg_path.write_text(
            '[sensor]\ndata_dir = "state"\nqueue_size = 2\nbatch_size = 1\nheartbeat_s = 0\n'
            '[source]\nkind = "etw"\n'
            '[rules]\npaths = ["rules"]\non_error = "skip"\n'
            '[enrich.pe]\npath_map = { "C:\\\\Users\\\\Public\\\\" = "img" }\n'
            f'[output]\nformat = "ecs"\nurl = "{receiver.url}/ingest"\nca_file = "{receiver.ca_file}"\n'
            'token = "tok"\n'
            '[delivery]\nbatch_wait_ms = 0\nconcurrency = 1\nbackoff_base_s = 0.01\nbackoff_cap_s = 0.05\n'
            'park_interval_s = 0.5\n')
        os.chmod(cfg_path, 0o600)
        cfg = load(str(cfg_path))
        cfg.source.kind = "replay"                       # validate off Windows; the source comes next
        cfg.source.replay.paths = [str(cfg_path)]
        checked = validate(cfg)
        assert checked.ok, checked.errors
        parts = build(cfg, checked, with_source=False)
        be = FakeBackend()
        parts.source = EtwSource(EtwConfig(seed_from_psutil=False, backfill=True, system_logger=False,
                                           watchdog_interval=0.05, queue_size=2,
                                           session=SessionSpec(flush_interval=0.005)),
                                 backend=be, helpers={"device_loader": lambda: {VOL: "C:"}})
        pipe = make_pipeline(parts)
        spool_file = cfg.spool.path
        # A spool write that SQLite refuses (as a full or damaged disk would): the alert of the
        # image named "spoolfail" cannot be written.
        db = sqlite3.connect(spool_file)
        db.execute("CREATE TRIGGER fail_write BEFORE INSERT ON alerts "
                   "WHEN CAST(NEW.body AS TEXT) LIKE '%spoolfail%' "
                   "BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END")
        db.commit()
        db.close()
        src, fwd = parts.source, parts.forwarder
        pipe.start()
        try:
            sink = be.consumers[0].sink
            sink((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, rundown(100, 5000, VOL + "\\Windows\\System32\\cmd.exe")))
            pids = iter(free_pids(20))
            health = pipe.health

            def alerts_at_receiver():
                return [d for d in receiver.documents("alert") if d["event"]["dataset"] == "sensor.alert"]

            # 1. an alert whose process is already gone: a back-fill miss; delivered
            sink(start(next(pids), VOL + "\\Windows\\System32\\wbem\\mofcomp.exe"))
            wait(lambda: len(alerts_at_receiver()) == 1, what="the first alert")
            # 2. an image the PE reader cannot parse (the rule needs its OriginalFileName)
            sink(start(next(pids), VOL + "\\Users\\Public\\tool.exe"))
            wait(lambda: health().enrich.pe_errors > 0, what="a PE error")
            # 3. an alert the spool refuses
            sink(start(next(pids), VOL + "\\spoolfail\\mofcomp.exe"))
            wait(lambda: health().spool.write_failures == 1, what="a spool write failure")
            # 4. a failed delivery attempt (503), then delivered
            receiver.fail_next(503)
            sink(start(next(pids), VOL + "\\retry\\mofcomp.exe"))
            wait(lambda: len(alerts_at_receiver()) == 2 and health().delivery.failed_attempts >= 1,
                 what="a retried delivery")
            # 5. an alert the receiver rejects (400): dead-lettered once the receiver accepted
            # another alert after that rejection (a 400 alone is not yet a verdict on the alert)
            receiver.reject_containing = "poison"
            sink(start(next(pids), VOL + "\\poison\\mofcomp.exe"))
            wait(lambda: health().delivery.rejected_alone >= 1, what="a lone rejection")
            sink(start(next(pids), VOL + "\\accepted\\mofcomp.exe"))
            wait(lambda: health().delivery.dead_lettered == 1, what="a dead letter")
            receiver.reject_containing = None
            # 6. ETW loss: an in-band RT_LostEvent and the session's own counter
            sink((SRC_LOST, 0, 2, 32, 4, 8, 0, 0, b""))
            be.sessions[src.config.session.name]["EventsLost"] = 3
            wait(lambda: health().etw.lost == 4, what="ETW loss")
            # 7. queue drops: the matcher is held while more starts arrive than the queue holds
            held, release = threading.Event(), threading.Event()

            def hold(alert):
                held.set()
                release.wait(20)
            pipe.alert_hook = hold
            sink(start(next(pids), VOL + "\\hold\\mofcomp.exe"))
            held.wait(20)
            for _ in range(5):
                sink(start(next(pids), VOL + "\\Windows\\notepad.exe"))
            wait(lambda: health().events.queue_dropped == 3, what="queue drops")
            pipe.alert_hook = None
            release.set()
            wait(lambda: src.stats()["queued"] == 0 and pipe.events_in == src.emitted, what="the queue drained")
            # 8. delivery parked (401): the alert waits in the spool
            receiver.fail_next(401, count=3)
            sink(start(next(pids), VOL + "\\parked\\mofcomp.exe"))
            wait(lambda: health().delivery.parked, what="parked")
            wait(lambda: (health().spool.oldest_age_s or 0) >= 0.2, what="an alert waiting")

            # The snapshot: one heartbeat, rendered four ways.
            n_logged = len(caplog.records)
            st: Status = pipe.beat()
            line = [r.getMessage() for r in caplog.records[n_logged:] if r.getMessage().startswith("heartbeat:")]
            on_disk = read_status(cfg.sensor.status_file)
            assert main(["status", "--status-file", cfg.sensor.status_file]) == 0
            shown = capsys.readouterr().out
        finally:
            release_all = locals().get("release")
            if release_all is not None:
                release_all.set()
            pipe.stop(drain_timeout=20)
        wait(lambda: any(d["event"].get("sequence") == st.ledger.seq for d in receiver.documents("metric")),
             what="the snapshot's health document")
        [doc] = [d for d in receiver.documents("metric") if d["event"]["sequence"] == st.ledger.seq]
        health_alerts = {d["rule"]["id"]: d for d in receiver.documents("alert")
                         if d["event"]["dataset"] == "sensor.health_alert"}

    counters = {
        # name in the heartbeat line: (status path, value)
        "etw lost": ("etw.lost", st.etw.lost),
        "queue drops": ("events.queue_dropped", st.events.queue_dropped),
        "backfill misses": ("enrich.backfill_missed", st.enrich.backfill_missed),
        "pe errors": ("enrich.pe_errors", st.enrich.pe_errors),
        "rejected": ("rules.rejected", st.rules.rejected),
        "delivery failures": ("delivery.failed_attempts", st.delivery.failed_attempts),
        "dead letters": ("delivery.dead_lettered", st.delivery.dead_lettered),
        "spool depth": ("spool.depth", st.spool.depth),
        "spool write failures": ("spool.write_failures", st.spool.write_failures),
    }
    assert st.etw.lost == 4 and st.events.queue_dropped == 3 and st.spool.write_failures == 1
    assert st.delivery.dead_lettered == 1 and st.rules.rejected == 1 and st.delivery.parked
    [line] = line
    body = doc["sensor"]["health"]
    for name, (path, value) in counters.items():
        assert value > 0, name
        a, b = path.split(".")
        assert getattr(getattr(on_disk, a), b) == value, f"status.json {path}"      # 2. status.json
        assert body[a][b] == value, f"health document {path}"                        # 4. the SIEM
        text = f"{name} {value}" if name != "rejected" else f"({value} rejected)"
        assert text in line, f"log line: {text}"                                     # 1. the log
        assert text in shown, f"status command: {text}"                              # 3. the command
    assert st.spool.oldest_age_s and on_disk.spool.oldest_age_s == st.spool.oldest_age_s
    assert body["spool"]["oldest_age_s"] == st.spool.oldest_age_s and "oldest " in line
    assert "parked yes" in line and "parked yes" in shown and body["delivery"]["parked"] is True
    assert on_disk.delivery.parked
    assert "delivery parked: HTTP 401" in shown                        # under PROBLEMS
    assert doc["message"] == line                                      # the document says the same
    assert doc["event"]["kind"] == "metric" and doc["agent"]["ephemeral_id"] == st.sensor.boot_id
    # and the health alerts, each with its own rule id
    assert {"sensor-health-rules-rejected", "sensor-health-etw-loss", "sensor-health-queue-drops",
            "sensor-health-spool-write-failed", "sensor-health-delivery-parked"} <= set(health_alerts)
    assert health_alerts["sensor-health-etw-loss"]["sensor"]["health"]["new"] == 4
    assert "broken.yml" in health_alerts["sensor-health-rules-rejected"]["message"]


# -- the completeness ledger, in every format ------------------------------------------------

MOFS = [{"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe",
         "CommandLine": f"mofcomp {i}.mof"} for i in range(3)]


def _run_with_output(tmp_path, output: str, beats: int = 2):
    """The assembled sensor on a replay, ``beats`` heartbeats by hand, stopped: the pipeline."""
    from sensor.daemon.assemble import build, make_pipeline, validate
    from sensor.daemon.config import load
    rec = tmp_path / "rec.jsonl"
    rec.write_text("".join(json.dumps(e) + "\n" for e in MOFS))
    cfg_path = tmp_path / "sensor.toml"
    cfg_path.write_text(f'[sensor]\ndata_dir = "state"\nheartbeat_s = 0\n[source]\nkind = "replay"\n'
                        f'[source.replay]\npaths = ["{rec}"]\n' + output +
                        '[delivery]\nbatch_wait_ms = 0\n')
    os.chmod(cfg_path, 0o600)
    cfg = load(str(cfg_path))
    checked = validate(cfg)
    assert checked.ok, checked.errors
    pipe = make_pipeline(build(cfg, checked))
    pipe.start()
    assert pipe.wait_source(60)
    for _ in range(beats):
        pipe.beat()
    pipe.stop(drain_timeout=20)
    return pipe


@pytest.mark.parametrize("fmt", ["ecs", "splunk_hec", "elasticsearch", "webhook"])
def test_health_documents_reach_the_receiver_in_every_format(tmp_path, fmt):
    Receiver = receiver_cls()
    with Receiver(token="tok", hmac_secret="sec", keep_documents=True) as receiver:
        pipe = _run_with_output(tmp_path, f'[output]\nformat = "{fmt}"\nurl = "{receiver.url}"\n'
                                          f'ca_file = "{receiver.ca_file}"\ntoken = "tok"\n'
                                          f'hmac_secret = "sec"\n')
        records = receiver.records()
    assert pipe.final.spool.depth == 0
    metrics = [(m, d) for m, d in records if d["event"]["kind"] == "metric"]
    alerts = [(m, d) for m, d in records if d["event"]["kind"] == "alert"]
    # start, two heartbeats, stop: numbered 0..3 within one boot, each once
    assert sorted(d["event"]["sequence"] for _, d in metrics) == [0, 1, 2, 3]
    assert [d["event"]["action"] for _, d in sorted(metrics, key=lambda md: md[1]["event"]["sequence"])] == \
        ["start", "heartbeat", "heartbeat", "stop"]
    assert {d["agent"]["ephemeral_id"] for _, d in metrics} == {pipe.ledger.boot_id}
    assert len(alerts) == 3
    stop = max(metrics, key=lambda md: md[1]["event"]["sequence"])[1]
    assert stop["sensor"]["health"]["alerts"]["total"] == 3 and stop["sensor"]["health"]["sensor"]["state"] == "stopped"
    if fmt == "splunk_hec":        # their own sourcetype
        assert {m["sourcetype"] for m, _ in metrics} == {"etw-sensor:health"}
        assert {m["sourcetype"] for m, _ in alerts} == {"etw-sensor:alert"}
    if fmt == "elasticsearch":     # their own data stream
        assert {m["_index"] for m, _ in metrics} == {"metrics-sensor.health-default"}
        assert {m["_index"] for m, _ in alerts} == {"logs-sensor.alert-default"}


def test_health_documents_in_the_jsonl_output(tmp_path):
    pipe = _run_with_output(tmp_path, '[output]\nformat = "jsonl"\n', beats=1)
    lines = [json.loads(x) for x in (tmp_path / "state" / "alerts.jsonl").read_text().splitlines()]
    metrics = [d for d in lines if d["event"]["kind"] == "metric"]
    assert [d["event"]["sequence"] for d in metrics] == [0, 1, 2]
    assert all(d["agent"]["ephemeral_id"] == pipe.ledger.boot_id for d in metrics)


def test_ledger_keeps_order_while_the_spool_fails_and_counts_what_it_drops(tmp_path):
    from sensor.deliver.spool import Spool
    spool = Spool(tmp_path / "spool.sqlite")
    ledger = Ledger(spool, {"host": "WS1"}, max_pending=3)
    ledger.record(Status(), "start")
    db = sqlite3.connect(tmp_path / "spool.sqlite")
    db.execute("CREATE TRIGGER full BEFORE INSERT ON alerts BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    db.commit()
    for _ in range(5):
        ledger.record(Status(), "heartbeat")          # seq 1..5: refused, kept in memory (3 at most)
    assert ledger.stats().pending == 3 and ledger.stats().lost == 2 and spool.depth() == 1
    db.execute("DROP TRIGGER full")
    db.commit()
    db.close()
    ledger.record(Status(), "heartbeat")              # seq 6: the spool works again
    rows = [json.loads(r.body) for r in spool.fetch(100)]
    assert [r["ledger"]["seq"] for r in rows] == [0, 3, 4, 5, 6]    # in order; 1 and 2 are the gap
    assert ledger.stats().pending == 0 and ledger.stats().lost == 2
    spool.close()


def test_transitions_raise_each_health_alert_once():
    a = Status()
    a.sensor.boot_id = "b"
    b = read_status_from(a)
    b.etw.lost = 5
    b.delivery.parked, b.delivery.park_reason = True, "HTTP 401"
    kinds = [k for k, *_ in transitions(a, b)]
    assert kinds == ["etw_loss", "delivery_parked"]
    assert transitions(b, b) == []                    # nothing new: nothing raised
    first = Status()
    first.rules.rejected, first.rules.problems = 2, ["rule rejected: a.yml:1: x", "rule rejected: b"]
    [(kind, message, details, _)] = transitions(None, first)
    assert kind == "rules_rejected" and "a.yml:1: x" in message and details["rejected"] == 2


def read_status_from(s: Status) -> Status:
    import msgspec
    return msgspec.json.decode(msgspec.json.encode(s), type=Status)


def test_status_file_of_another_version_still_reads(tmp_path):
    p = tmp_path / "status.json"
    p.write_text(json.dumps({"events": {"in": 7, "future_counter": 1}, "spool": {"depth": 2},
                             "something_new": {"x": 1}, "written_at": 1.0}))
    st = read_status(str(p))
    assert st.events.in_ == 7 and st.spool.depth == 2 and st.delivery.sent == 0
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a sensor status file"):
        read_status(str(p))


def test_status_command_says_when_the_sensor_went_quiet(tmp_path, capsys):
    from sensor.daemon.health import write_status
    st = Status()
    st.sensor.heartbeat_s, st.sensor.state, st.written_at = 1.0, "running", time.time() - 100
    path = str(tmp_path / "status.json")
    write_status(path, st)
    assert main(["status", "--status-file", path]) == 1          # three heartbeats missed
    assert "STALE: no heartbeat for" in capsys.readouterr().err
    st.sensor.state = "stopped"                                  # a clean stop is not stale
    write_status(path, st)
    assert main(["status", "--status-file", path]) == 0
    out = capsys.readouterr().out
    assert "sensor stopped" in out and "None" not in out
