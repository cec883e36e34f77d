"""The forwarder's linger: the commits of ``linger`` seconds share one fetch, one request and one
acknowledgement, and only a full batch, a drain or stop ends the wait early.

Every test uses a real spool (SQLite on disk), the real forwarder thread and the jsonl output.
The lingers are an hour long: a wait that the code failed to end would hang, and the generous
deadlines below only guard that hang.
"""
from __future__ import annotations

import threading
import time

from sensor.deliver.forwarder import DeliveryConfig, Forwarder
from sensor.deliver.jsonl import JsonlOutput
from sensor.deliver.spool import Spool
from sensor.testing.receiver import sample_alert

HOUR = 3600.0
GUARD = 60.0      # seconds: guards a hang only


class CountingSpool(Spool):
    """The real spool, counting its fetches and acknowledgements."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.fetches = 0
        self.acks = 0

    def fetch(self, *a, **kw):
        self.fetches += 1
        return super().fetch(*a, **kw)

    def ack(self, *a, **kw):
        self.acks += 1
        return super().ack(*a, **kw)


def start(tmp_path, **cfg):
    sp = CountingSpool(tmp_path / "s.db", clock=time.monotonic)
    out = tmp_path / "alerts.jsonl"
    fwd = Forwarder(sp, JsonlOutput(out), DeliveryConfig(**{"linger": HOUR, "concurrency": 1,
                                                              "poll_interval": HOUR, **cfg}),
                    clock=time.monotonic)
    fwd.start()
    deadline = time.monotonic() + GUARD
    while sp.fetches == 0 and time.monotonic() < deadline:     # its first look at the empty spool
        time.sleep(0.01)
    return sp, fwd, out


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_depth_zero(sp) -> None:
    deadline = time.monotonic() + GUARD
    while sp.depth() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_full_batch_ends_the_linger_at_once(tmp_path):
    sp, fwd, out = start(tmp_path, batch_size=6)
    try:
        sp.put_many([sample_alert(i) for i in range(3)])
        sp.put_many([sample_alert(i) for i in range(3, 6)])     # the batch is full now
        wait_depth_zero(sp)
        assert sp.depth() == 0, "a full batch waited for the linger"
        assert len(lines(out)) == 6
        assert fwd.stats()["requests"] == 1 and sp.acks == 1   # two commits, one request, one ack
    finally:
        fwd.stop()
        fwd.join(GUARD)


def test_a_batch_full_by_bytes_ends_the_linger_at_once(tmp_path):
    sp, fwd, out = start(tmp_path, batch_max_bytes=1)          # any alert fills a batch
    try:
        sp.put_many([sample_alert(0)])
        wait_depth_zero(sp)
        assert sp.depth() == 0 and len(lines(out)) == 1, "a batch full by bytes waited for the linger"
    finally:
        fwd.stop()
        fwd.join(GUARD)


def test_commits_within_the_linger_share_one_fetch_request_and_ack(tmp_path):
    sp, fwd, out = start(tmp_path)
    try:
        before = sp.fetches
        for c in range(4):
            sp.put_many([sample_alert(10 * c + i) for i in range(3)])
        assert lines(out) == []                                 # lingering: nothing sent yet
        assert fwd.wait_drained(GUARD), "a drain did not end the linger"
        assert len(lines(out)) == 12 and sp.depth() == 0
        assert sp.fetches - before == 1 and sp.acks == 1
        assert fwd.stats()["requests"] == 1
    finally:
        fwd.stop()
        fwd.join(GUARD)


def test_stop_ends_the_linger_and_keeps_the_alert(tmp_path):
    sp, fwd, out = start(tmp_path)
    sp.put_many([sample_alert(1)])
    deadline = time.monotonic() + GUARD
    # the forwarder is lingering: blocked on the spool's volume condition
    while not sp._volume._waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sp._volume._waiters
    fwd.stop(timeout=GUARD)
    assert not fwd.is_alive(), "stop did not end the linger"
    assert sp.depth() == 1 and lines(out) == []               # kept for the next start


def test_wait_for_volume(tmp_path):
    sp = Spool(tmp_path / "s.db")
    since = sp.put_volume
    assert sp.wait_for_volume(since, 2, 10**9, 0.0) is False   # nothing yet, no wait
    sp.put_many([sample_alert(1)])
    assert sp.wait_for_volume(since, 2, 10**9, 0.0) is False   # one of two rows
    sp.put_many([sample_alert(2)])
    assert sp.wait_for_volume(since, 2, 10**9, 0.0) is True    # two rows
    size = sp.put_volume[1] - since[1]
    assert sp.wait_for_volume(since, 100, size, 0.0) is True   # or that many bytes
    assert sp.wait_for_volume(since, 100, size + 1, 0.0) is False
    # a waiter wakes for the commit that reaches its goal, and for wake() when done() says so
    got: list[bool] = []
    since = sp.put_volume
    t = threading.Thread(target=lambda: got.append(sp.wait_for_volume(since, 1, 10**9, HOUR)))
    t.start()
    deadline = time.monotonic() + GUARD
    while not sp._volume._waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    sp.put_many([sample_alert(3)])
    t.join(GUARD)
    assert got == [True]
    flag = threading.Event()
    t = threading.Thread(target=lambda: got.append(sp.wait_for_volume(sp.put_volume, 1, 10**9, HOUR,
                                                                      done=flag.is_set)))
    t.start()
    while not sp._volume._waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    flag.set()
    sp.wake()
    t.join(GUARD)
    assert got == [True, False]
    sp.close()
