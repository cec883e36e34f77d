"""A full disk is a state, not an error storm: real tmpfs volumes, the real spool and forwarder,
the local HTTPS receiver over real sockets.

Mounting a tmpfs needs root (CI runs as root); elsewhere these tests skip and say why.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import sys
import time
import uuid
from pathlib import Path

import pytest

from sensor.deliver.forwarder import DeliveryConfig, Forwarder
from sensor.deliver.outputs import build_output
from sensor.deliver.spool import Spool, SpoolError, SpoolFull
from sensor.testing.receiver import Receiver, sample_alert

from .conftest import fill

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="tmpfs volumes are Linux")

FAST = dict(batch_size=50, linger=0.0, backoff_base=0.01, backoff_cap=0.05, park_interval=0.2,
            poll_interval=0.05, enforce_interval=0.0)


def output_for(rec: Receiver):
    return build_output({"url": rec.url, "ca_file": str(rec.ca_file), "connect_timeout": 1})


def wait_until(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_a_full_disk_drops_the_oldest_never_raises_and_says_so(volume, caplog):
    vol = volume("2m")
    events = []
    sp = Spool(vol / "spool.sqlite", owner=True, on_health=events.append)
    sent = [sample_alert(i) for i in range(1500)]
    with caplog.at_level(logging.WARNING, logger="sensor.spool"):
        for i in range(0, len(sent), 10):
            # never raises: the disk filling up is not an error; the alerts count as new
            assert sp.put_many(sent[i:i + 10]) == 10
            time.sleep(0.001)
    st = sp.stats()
    ids = sp.ids()
    kept = [i for i in ids if i in {a["id"] for a in sent}]
    assert st["disk_full"] and st["dropped_disk_full"] > 0
    # Drop-oldest: what is kept is the newest run of alerts, and every alert is accounted for.
    order = [a["id"] for a in sent]
    assert kept == order[len(order) - len(kept):] and kept[-1] == order[-1]
    assert len(kept) + st["dropped_disk_full"] + st["held"] + st["held_dropped"] == len(sent)
    assert st["held_dropped"] == 0 and st["held"] == 0
    # The operator hears it once (log), the SIEM through health alerts in the spool itself.
    assert caplog.text.count("ALERT SPOOL DISK FULL") == 1
    health = [it.decode() for it in sp.fetch(10_000) if it.alert_id not in set(order)]
    kinds = {h["health"]["event"] for h in health}
    assert {"spool_disk_full", "spool_disk_full_dropped"} <= kinds
    assert events and events[0]["event"] == "spool_disk_full" and events[0]["state"] == "begin"
    sp.close()


def test_full_disk_receiver_down_then_up_every_kept_alert_arrives_once(volume, capsys):
    vol = volume("2m")
    sp = Spool(vol / "spool.sqlite", owner=True)
    total = 1200
    with Receiver() as rec:
        rec.down()
        fwd = Forwarder(sp, output_for(rec), DeliveryConfig(**FAST))
        fwd.start()
        try:
            for i in range(0, total, 10):
                sp.put_many([sample_alert(j) for j in range(i, i + 10)])
                time.sleep(0.002)
            assert sp.stats()["disk_full"]
            rec.up()
            assert fwd.wait_drained(60)
        finally:
            fwd.stop()
        st = sp.stats()
        got = [i for i in rec.ids() if i in {sample_alert(j)["id"] for j in range(total)}]
        delivered, dropped = len(set(got)), st["dropped_disk_full"]
        duplicates = len(got) - len(set(got))
        with capsys.disabled():
            print(f"\n[disk full, receiver down then up] sent {total}: delivered {delivered}, "
                  f"dropped (oldest) {dropped}, duplicates {duplicates}")
        assert duplicates == 0
        # Every alert that did not arrive was counted as dropped (one dropped while in flight may
        # arrive as well).
        assert total - delivered <= dropped
        newest = [sample_alert(j)["id"] for j in range(total - 50, total)]
        assert set(newest) <= set(got)  # drop-oldest kept the newest
        assert sp.depth() == 0
    sp.close()


def test_disk_filled_by_someone_else_no_resend_storm_and_recovery(volume, capsys):
    vol = volume("16m")
    sp = Spool(vol / "spool.sqlite", owner=True)
    assert sp.stats()["reserve_bytes"] > 0
    with Receiver() as rec:
        fwd = Forwarder(sp, output_for(rec), DeliveryConfig(**FAST))
        fwd.start()
        try:
            sp.put_many([sample_alert(i) for i in range(100)])
            assert rec.wait_for(100, 60)
            filler = fill(vol)
            # A reader pinning the WAL (as `etw-sensor spool status` may) keeps SQLite from reusing
            # it: even confirmations cannot be written now.
            reader = sqlite3.connect(str(vol / "spool.sqlite"))
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM alerts").fetchone()
            for i in range(100, 700, 10):
                sp.put_many([sample_alert(j) for j in range(i, i + 10)])
                time.sleep(0.005)
            time.sleep(1.0)  # a resend loop would show up here as repeated ids
            during = rec.ids()
            st = fwd.stats()
            assert st["spool_disk_full"]
            assert len(during) == len(set(during)), "alerts were sent again while the disk was full"
            reader.rollback()
            reader.close()
            filler.unlink()  # space returns: the sensor recovers by itself
            assert wait_until(lambda: fwd.drained() and not sp.stats()["disk_full"], 60)
        finally:
            fwd.stop()
        st = sp.stats()
        ids = [sample_alert(j)["id"] for j in range(700)]
        got = [i for i in rec.ids() if i in set(ids)]
        duplicates = len(got) - len(set(got))
        with capsys.disabled():
            print(f"\n[disk filled by another file, receiver up] sent 700: delivered {len(set(got))}, "
                  f"dropped {st['dropped_disk_full']}, duplicates {duplicates}, "
                  f"acks that waited for space {fwd.stats()['ack_failures']}")
        assert duplicates == 0
        assert 700 - len(set(got)) <= st["dropped_disk_full"] + st["held_dropped"]
        assert st["reserve_bytes"] > 0  # the reserve is set aside again
        assert sp.depth() == 0
    sp.close()


def test_every_write_path_raises_the_spools_own_error(volume):
    vol = volume("1m")
    sp = Spool(vol / "spool.sqlite")  # not the owner: no reserve, nothing to fall back on
    sp.put_many([sample_alert(i) for i in range(20)])
    rows = [it.rowid for it in sp.fetch(20)]
    reader = sqlite3.connect(str(vol / "spool.sqlite"))
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM alerts").fetchone()  # pins the WAL
    fill(vol)
    big = [{"id": str(uuid.uuid4()), "pad": "x" * 4000} for _ in range(50)]
    sp.put_many(big)  # held in memory, not raised
    assert sp.stats()["held"] > 0
    for call in (lambda: sp.ack(rows[:10]), lambda: sp.mark_failed(rows, "x"),
                 lambda: sp.dead_letter([(rows[0], "x", 400)]), lambda: sp.requeue_dead(),
                 lambda: sp.enforce()):
        try:
            call()
        except SpoolError as exc:
            assert not isinstance(exc, sqlite3.Error)
            assert isinstance(exc, SpoolFull), exc
    reader.rollback()
    reader.close()
    sp.close()


def test_confirmations_the_disk_refuses_are_retried_never_resent(volume):
    vol = volume("2m")
    sp = Spool(vol / "spool.sqlite")  # not the owner: no reserve to fall back on
    batch = [sample_alert(i) for i in range(51)]
    sp.put_many(batch[:50])
    sp.put(batch[50])  # a small commit the automatic checkpoint leaves in the WAL
    reader = sqlite3.connect(str(vol / "spool.sqlite"))
    reader.execute("BEGIN")
    # A reader of that commit pins the WAL (as a concurrent `etw-sensor spool status` may): SQLite
    # cannot start it over, so with the disk full not even a delete can be written.
    reader.execute("SELECT COUNT(*) FROM alerts").fetchone()
    filler = fill(vol)
    rows = [it.rowid for it in sp.fetch(100)]
    with pytest.raises(SpoolFull):  # use up the WAL file's own room: now nothing can be written
        for _ in range(1000):
            sp.mark_failed(rows, "x")
    # A refused write leaves the frames it got in the WAL file for the next one (an update of all
    # rows rewrites more pages than a delete of them): use that room up with one-row updates, until
    # even those are refused.
    for r in rows:
        try:
            sp.mark_failed([r], "x")
        except SpoolFull:
            pass
    with Receiver() as rec:
        fwd = Forwarder(sp, output_for(rec), DeliveryConfig(**FAST))
        fwd.start()
        try:
            assert rec.wait_for(51, 60)
            assert wait_until(lambda: fwd.stats()["ack_pending"] == 51, 60)
            time.sleep(1.5)  # several confirmation retries (back-off from 0.25 s): none may resend
            st = fwd.stats()
            assert st["ack_failures"] >= 1 and st["ack_pending"] == 51
            assert sp.depth() == 51  # still on disk: the deletes could not be written
            assert sorted(rec.ids()) == sorted(a["id"] for a in batch)  # each exactly once, so far
            reader.rollback()
            reader.close()
            filler.unlink()
            assert wait_until(lambda: fwd.stats()["ack_pending"] == 0 and fwd.drained(), 30)
        finally:
            fwd.stop()
        ids = {a["id"] for a in batch}
        assert sorted(i for i in rec.ids() if i in ids) == sorted(ids)  # each exactly once
        assert len(rec.ids()) == len(set(rec.ids()))  # (the rest: the spool_disk_full health alerts)
    sp.close()


def test_the_disk_full_state_reaches_the_health_status_and_ends_by_itself(volume, tmp_path):
    """The daemon's typed status (status.json, heartbeat document) says disk_full while it lasts."""
    from sensor.daemon.health import problems, read_status, transitions
    from sensor.daemon.pipeline import Pipeline
    from sensor.detect.seed import builtin_rules
    from sensor.sources.replay import ReplaySource

    vol = volume("16m")
    rec_file = tmp_path / "empty.jsonl"
    rec_file.write_text("")
    sp = Spool(vol / "spool.sqlite", owner=True)
    status_file = tmp_path / "status.json"
    pipe = Pipeline(source=ReplaySource([str(rec_file)]), rules=builtin_rules(), spool=sp,
                    heartbeat_interval=0, status_file=str(status_file), info={"host": "h"})
    ok = pipe.health()
    assert ok.spool.state == "ok" and not ok.spool.disk_full
    filler = fill(vol)
    try:
        for i in range(0, 400, 10):
            sp.put_many([sample_alert(j) for j in range(i, i + 10)])
        full = pipe.beat()
        assert full.spool.state == "disk_full" and full.spool.disk_full
        assert full.spool.dropped_disk_full + full.spool.held > 0
        assert any(p.startswith("spool disk_full") for p in problems(full))
        on_disk = read_status(str(status_file))
        assert on_disk.spool.state == "disk_full" and on_disk.spool.disk_full_since
        # the spool sends its own begin/end alerts: the transition adds no second one
        assert not [t for t in transitions(ok, full) if t[0].startswith("spool_disk_full")]
    finally:
        filler.unlink()
    # space is back: the forwarder's periodic upkeep ends the state
    assert wait_until(lambda: sp.maintain() or not sp.stats()["disk_full"], 30)
    assert pipe.health().spool.state == "ok"
    sp.close()


def test_never_drained_while_alerts_are_being_committed(tmp_path):
    """Alerts taken out of memory but not yet committed are in neither the held queue nor the
    file: a forwarder asked "is everything delivered?" in that moment must say no (a shutdown
    that believed it would stop delivery with those alerts still to send)."""
    import threading
    sp = Spool(tmp_path / "spool.sqlite")
    fwd = Forwarder(sp, build_output({"format": "memory"}), DeliveryConfig(**FAST))
    entered, release = threading.Event(), threading.Event()
    real = sp._write_rows

    def slow_write(rows, now, room=0):
        entered.set()
        assert release.wait(30)
        return real(rows, now, room)

    sp._write_rows = slow_write
    t = threading.Thread(target=sp.put_many, args=([sample_alert(1), sample_alert(2)],))
    t.start()
    try:
        assert entered.wait(30)
        assert sp.depth() == 0 and sp.fault_stats()["held"] == 0   # in neither place yet
        assert sp.fault_stats()["storing"] == 2
        assert not fwd.drained()
    finally:
        release.set()
        t.join(30)
    assert sp.fault_stats()["storing"] == 0 and sp.depth() == 2
    assert not fwd.drained()   # committed and not delivered
    sp.close()


@pytest.mark.parametrize("owner", [False, True])
def test_a_spool_opened_on_a_full_disk_runs_on_what_is_there(volume, owner):
    """A full disk at start is a state like any other: the spool opens (its schema is there), says
    the disk is full, and gives out what it holds. The owner's start writes more (its "not yet
    stopped cleanly" marker) and meets the full disk there too."""
    vol = volume("2m")
    path = vol / "spool.sqlite"
    with Spool(path) as sp:
        sp.put_many([sample_alert(i) for i in range(20)])
    db = sqlite3.connect(str(path))   # a byte total that drifted: the start writes it anew
    db.execute("UPDATE meta SET value=0 WHERE key='bytes'")
    db.commit()
    db.close()
    reader = sqlite3.connect(str(path))   # another process reading: the WAL cannot start over
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM alerts").fetchone()
    filler = fill(vol)
    try:
        sp = Spool(path, owner=owner, reserve_bytes=0)   # its start-up writes meet the full disk
        try:
            st = sp.stats()
            assert st["disk_full"] and "at start" in st["disk_full_error"] and sp.depth() == 20
            assert [it.alert_id for it in sp.fetch(100)] == [sample_alert(i)["id"] for i in range(20)]
        finally:
            sp.close()
    finally:
        reader.rollback()
        reader.close()
        filler.unlink()


def test_a_partial_reserve_is_topped_up_on_a_small_volume_with_room_for_the_rest(volume):
    """The reserve (at most a quarter of a small volume) that a crash left half written is
    completed when the volume has room for the missing part, not only for all of it."""
    vol = volume("1m")
    path = vol / "spool.sqlite"
    reserve = Path(str(path) + ".reserve")
    reserve.write_bytes(b"\0" * 200_000)
    quarter = os.statvfs(vol).f_blocks * os.statvfs(vol).f_frsize // 4
    with Spool(path, owner=True, reserve_bytes=400_000) as sp:
        assert reserve.stat().st_size == quarter == sp.reserve_bytes


def test_alerts_held_on_a_full_disk_survive_a_failed_retry(volume):
    """Alerts waiting in memory for space are not lost when the next attempt to commit them
    fails for another reason (the caller of that attempt only learns about its own alerts)."""
    now = [1000.0]
    vol = volume("2m")
    sp = Spool(vol / "spool.sqlite", clock=lambda: now[0])  # not the owner: no reserve
    sp.put_many([sample_alert(i) for i in range(5)])
    reader = sqlite3.connect(str(vol / "spool.sqlite"))
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM alerts").fetchone()   # pins the WAL
    filler = fill(vol)
    big = [{"id": str(uuid.uuid4()), "pad": "x" * 4000} for _ in range(50)]
    sp.put_many(big)
    held = sp.fault_stats()["held"]
    assert held > 0
    assert sp.flush_held() == 0 and sp.fault_stats()["held"] == held   # not due yet: none written
    reader.rollback()
    reader.close()
    filler.unlink()
    now[0] += 3600                                             # past any retry delay

    def broken(rows, now_, room=0):
        raise SpoolError(f"spool {sp.path}: write failed: simulated I/O error")

    real, sp._write_rows = sp._write_rows, broken
    with pytest.raises(SpoolError):
        sp.put_many([sample_alert(99)])
    assert sp.fault_stats()["held"] == held                    # still waiting, none dropped
    sp._write_rows = real
    now[0] += 3600
    assert sp.flush_held() == held                             # how many it wrote
    assert sp.fault_stats()["held"] == 0
    assert {a["id"] for a in big} <= set(sp.ids())             # every held alert is in the file


def test_a_spool_that_filled_its_disk_can_still_confirm_without_a_restart(volume):
    """docs/delivery.md, disk full: while full, no transaction may commit more pages than the
    database file has on disk. Pages past its end would sit in the WAL with no room to checkpoint
    them into, the WAL could never start over, and then not even a confirmation could be written.

    The spool fills its own volume (the owner releases its reserve), the rest of the space goes
    too, and failed delivery attempts are recorded on rows that nearly fill a page each (the error
    text no longer fits beside them). Then the receiver takes every row: all must be confirmed.
    """
    vol = volume("2m")
    sp = Spool(vol / "spool.sqlite", owner=True)
    n = 0
    while not sp.stats()["disk_full"]:
        alert = sample_alert(n)
        alert["pad"] = "x" * 3400   # one row per page, with little room left beside it
        sp.put(alert)
        n += 1
        assert n < 2000, "the spool never filled a 2 MiB volume"
    fill(vol)
    other = sqlite3.connect(str(vol / "spool.sqlite"))

    def checkpoint() -> None:
        # What SQLite's automatic checkpoint does after a commit; like it, a checkpoint the disk
        # refuses is only not done.
        try:
            other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError:
            pass

    checkpoint()
    rows = [it.rowid for it in sp.fetch(10_000)]
    assert rows
    error = "HTTP 503 from the receiver: Service Unavailable (the SIEM is down for maintenance) " * 6
    for i in range(0, 50, 10):
        try:
            sp.mark_failed(rows[i:i + 10], error)
        except SpoolFull:
            pass   # refused: fine, it is only a count of attempts
        checkpoint()
    rows = [it.rowid for it in sp.fetch(10_000)]   # the receiver is back and takes them all
    assert sp.ack(rows) == len(rows)   # not SpoolFull: the confirmations can be written
    assert sp.depth() == 0
    other.close()
    sp.close()
