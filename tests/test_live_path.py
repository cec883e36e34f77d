"""The live path of the ETW source: one worker thread decodes, enriches and matches each batch of
records (no second queue, no second thread per event), and the alerts of the batches that arrive
within ``commit_delay`` share one spool transaction.

Real SQLite spool, real matcher, the ETW source over the fake session backend.
"""
from __future__ import annotations

import sqlite3
import threading
import time

from hypothesis import given, settings, strategies as st

from sensor.daemon.config import SensorSection
from sensor.daemon.pipeline import Pipeline, RuleSet
from sensor.deliver.spool import Spool
from sensor.detect.matcher import create as create_matcher
from sensor.detect.seed import seed_rule
from sensor.sources.etw import EtwConfig, EtwSource
from sensor.sources.etw_raw import SRC_KERNEL_PROCESS
from sensor.sources.etw_session import SessionSpec

from .test_etw_session import FakeBackend
from .test_health import VOL, rundown, start

GUARD = 60.0      # only guards a hang


def wait_for(cond, timeout: float = GUARD) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def etw_pipeline(tmp_path, commit_delay: float, **kw):
    be = FakeBackend()
    cfg = EtwConfig(seed_from_psutil=False, backfill=False, watchdog_interval=60.0,
                    session=SessionSpec(name="live", flush_interval=0.02), **kw)
    src = EtwSource(cfg, backend=be, helpers={"device_loader": lambda: {VOL: "C:"}})
    spool = Spool(tmp_path / "spool.sqlite")
    pipe = Pipeline(source=src, rules=[seed_rule()], spool=spool, heartbeat_interval=0,
                    commit_delay=commit_delay, ledger=False)
    return pipe, src, be, spool


def rows(spool_path) -> list[tuple]:
    db = sqlite3.connect(spool_path)
    try:
        return db.execute("SELECT alert_uuid, created FROM alerts ORDER BY rowid").fetchall()
    finally:
        db.close()


def test_events_are_matched_on_the_etw_worker_without_a_matcher_thread(tmp_path):
    pipe, src, be, spool = etw_pipeline(tmp_path, commit_delay=0.0)
    threads: list[str] = []
    pipe.alert_hook = lambda alert: threads.append(threading.current_thread().name)
    pipe.start()
    try:
        sink = be.consumers[0].sink
        sink((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, rundown(100, 5000, VOL + "\\Windows\\System32\\cmd.exe")))
        sink(start(4100, VOL + "\\Windows\\System32\\wbem\\mofcomp.exe"))
        assert wait_for(lambda: threads)
        assert threads == ["etw-worker"]
        assert not [t for t in threading.enumerate() if t.name == "matcher"]
        assert spool.depth() == 1            # committed with its batch (no delay asked)
    finally:
        pipe.stop(drain_timeout=5)
    st = pipe.final
    assert st.events.in_ == 1 and st.alerts.total == 1


def test_alerts_of_batches_within_the_delay_share_one_transaction_and_stop_commits_them(tmp_path):
    # A delay no test outlives: every alert waits for the stop, which commits them together.
    pipe, src, be, spool = etw_pipeline(tmp_path, commit_delay=5.0)
    pipe.start()
    try:
        sink = be.consumers[0].sink
        sink((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, rundown(100, 5000, VOL + "\\Windows\\System32\\cmd.exe")))
        for i in range(3):                    # three batches: each waits until it was matched
            sink(start(4200 + 4 * i, VOL + "\\Windows\\System32\\wbem\\mofcomp.exe"))
            assert wait_for(lambda: pipe.events_in == i + 1)
        assert pipe._pending()                # held for their commit: a drain waits for them
    finally:
        pipe.stop(drain_timeout=5)
    got = rows(tmp_path / "spool.sqlite")
    assert len(got) == 3
    assert len({created for _, created in got}) == 1     # one put_many: one transaction
    assert pipe.final.spool.write_failures == 0 and pipe.final.alerts.total == 3


def test_held_alerts_are_committed_when_their_delay_ends_while_nothing_else_arrives(tmp_path):
    # the configured default: the loss window docs/delivery.md gives closes by itself
    pipe, src, be, spool = etw_pipeline(tmp_path, commit_delay=SensorSection().commit_delay_s)
    pipe.start()
    try:
        sink = be.consumers[0].sink
        sink((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, rundown(100, 5000, VOL + "\\Windows\\System32\\cmd.exe")))
        sink(start(4300, VOL + "\\Windows\\System32\\wbem\\mofcomp.exe"))
        # no other record comes: the worker wakes for the commit alone
        assert wait_for(lambda: spool.depth() == 1)
        assert not pipe._pending()
    finally:
        pipe.stop(drain_timeout=5)


def test_a_rule_set_swap_takes_effect_between_batches_of_the_etw_worker(tmp_path):
    pipe, src, be, spool = etw_pipeline(tmp_path, commit_delay=0.0)
    pipe.start()
    try:
        sink = be.consumers[0].sink
        sink((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, rundown(100, 5000, VOL + "\\Windows\\System32\\cmd.exe")))
        # nothing arrives: the swap does not wait for a batch
        assert pipe.swap_rules(RuleSet([], create_matcher([]), generation=1), wait=GUARD)
        assert pipe.generation == 1
        sink(start(4400, VOL + "\\Windows\\System32\\wbem\\mofcomp.exe"))
        assert wait_for(lambda: pipe.events_in == 1)
    finally:
        pipe.stop(drain_timeout=5)
    assert pipe.final.alerts.total == 0 and spool_rows_empty(tmp_path)


def spool_rows_empty(tmp_path) -> bool:
    return rows(tmp_path / "spool.sqlite") == []


def test_a_held_matcher_fills_the_record_queue_and_the_drops_are_counted(tmp_path):
    # The consumer callback never waits: while the worker is held, records beyond the queue's
    # room are dropped and counted (callback_drops -> events.queue_dropped).
    pipe, src, be, spool = etw_pipeline(tmp_path, commit_delay=0.0, queue_size=2)
    held, release = threading.Event(), threading.Event()

    def hold(alert):
        held.set()
        release.wait(GUARD)
    pipe.alert_hook = hold
    pipe.start()
    try:
        sink = be.consumers[0].sink
        sink((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, rundown(100, 5000, VOL + "\\Windows\\System32\\cmd.exe")))
        sink(start(4500, VOL + "\\Windows\\System32\\wbem\\mofcomp.exe"))
        assert held.wait(GUARD)
        for i in range(5):                    # returns each time while the worker is held
            sink(start(4600 + 4 * i, VOL + "\\Windows\\notepad.exe"))
        assert not release.is_set()
        assert pipe.health().events.queue_dropped == 3
        assert pipe.health().events.queue_depth == 2
        release.set()
        assert wait_for(lambda: pipe.events_in == 3)
    finally:
        release.set()
        pipe.stop(drain_timeout=5)
    assert pipe.final.events.queue_dropped == 3 and pipe.final.events.queue_high_water >= 2


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.integers(min_value=0, max_value=2**64 - 1),
                 st.integers(min_value=116_444_736_000_000_000 - 10**15, max_value=116_444_736_000_000_000 + 10**17)))
def test_utc_time_formats_as_strftime_did(ft):
    # the event's UtcTime is formatted by hand (strftime is the slow part); it must not change
    from datetime import datetime, timezone
    from sensor.enrich.process_table import unix_from_filetime
    from sensor.sources.etw import utc_time
    try:
        dt = datetime.fromtimestamp(unix_from_filetime(ft), timezone.utc) if ft else None
    except (OverflowError, ValueError, OSError):
        dt = None
    want = dt.strftime("%Y-%m-%d %H:%M:%S.") + "%03d" % (dt.microsecond // 1000) if dt else None
    assert utc_time(ft) == want


def test_with_correlation_rules_the_matcher_thread_keeps_the_events(tmp_path):
    # The correlation windows belong to the matcher thread (idle evaluation, checkpoints): with
    # correlations loaded the ETW worker hands its events to the pipeline's queue as before.
    from sensor.detect.correlate import CorrelationEngine
    from .test_correlation import simple
    rep = simple(tmp_path, "gte: 2")              # two starts of a.exe on one host
    be = FakeBackend()
    cfg = EtwConfig(seed_from_psutil=False, backfill=False, watchdog_interval=60.0,
                    session=SessionSpec(name="live-corr", flush_interval=0.02), computer="h")
    src = EtwSource(cfg, backend=be, helpers={"device_loader": lambda: {VOL: "C:"}})
    spool = Spool(tmp_path / "spool.sqlite")
    pipe = Pipeline(source=src, rules=rep.rules, spool=spool, heartbeat_interval=0, ledger=False,
                    correlator=CorrelationEngine(rep.rules, rep.correlations), commit_delay=0.05)
    pipe.start()
    try:
        sink = be.consumers[0].sink
        sink((SRC_KERNEL_PROCESS, 15, 1, 0, 4, 8, 0, 0, rundown(100, 5000, VOL + "\\Windows\\System32\\cmd.exe")))
        for i in range(2):
            sink(start(4700 + 4 * i, VOL + "\\Tools\\a.exe"))
        assert wait_for(lambda: pipe.events_in == 2)
        assert any(t.name == "matcher" for t in threading.enumerate())
    finally:
        pipe.stop(drain_timeout=5)
    assert pipe.queue.accepted == 2 and src.emitted == 2     # through the pipeline's queue
