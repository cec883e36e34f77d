"""One fetch per batch: the forwarder's loop reads the spool once for the alerts of a commit.

Before, a commit cost the forwarder a fetch on the wake-up (a partial batch younger than
``linger``: put back), the fetch that sent it after the linger, and one more that found
nothing left. The loop now lingers before its first fetch and, when the batch it sent held
every row there was, waits for the next write instead of fetching again.
"""
from __future__ import annotations

import os
import time

import pytest

from sensor.deliver.forwarder import DeliveryConfig, Forwarder
from sensor.deliver.jsonl import JsonlOutput
from sensor.deliver.spool import Spool
from sensor.testing.receiver import sample_alert


class CountingSpool(Spool):
    """The real spool, counting its fetches."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.fetches = 0

    def fetch(self, *a, **kw):
        self.fetches += 1
        return super().fetch(*a, **kw)


def deliver_commits(tmp_path, linger: float, commits: int = 3, per_commit: int = 4):
    # one clock for the rows' ages and the linger wait
    sp = CountingSpool(tmp_path / "s.db", clock=time.monotonic)
    out_path = tmp_path / "alerts.jsonl"
    fwd = Forwarder(sp, JsonlOutput(out_path), DeliveryConfig(linger=linger, concurrency=1),
                    clock=time.monotonic)
    fwd.start()
    try:
        deadline = time.monotonic() + 60          # guards a hang only
        while sp.fetches == 0 and time.monotonic() < deadline:   # the first look at an empty spool
            time.sleep(0.01)
        before = sp.fetches
        n = 0
        for c in range(commits):
            sp.put_many([sample_alert(n + i) for i in range(per_commit)])
            n += per_commit
            while sp.depth() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sp.depth() == 0
        time.sleep(0.05)
    finally:
        fwd.stop()
        fwd.join(30)
    lines = out_path.read_text().splitlines()
    assert len(lines) == n
    return sp.fetches - before


def test_one_fetch_per_commit_with_linger(tmp_path):
    assert deliver_commits(tmp_path, linger=0.05) == 3


def test_one_fetch_per_commit_without_linger(tmp_path):
    assert deliver_commits(tmp_path, linger=0.0) == 3


def test_a_batch_cut_by_the_cap_is_followed_at_once(tmp_path):
    """A fetch that stopped at the batch size leaves rows: the loop goes on without a write."""
    sp = CountingSpool(tmp_path / "s.db", clock=time.monotonic)
    sp.put_many([sample_alert(i) for i in range(25)])
    fwd = Forwarder(sp, JsonlOutput(tmp_path / "a.jsonl"), DeliveryConfig(linger=0.0, batch_size=10, concurrency=1,
                                                                         poll_interval=3600.0),
                    clock=time.monotonic)
    fwd.start()
    deadline = time.monotonic() + 60
    while sp.depth() and time.monotonic() < deadline:
        time.sleep(0.01)
    fwd.stop()
    fwd.join(30)
    assert sp.depth() == 0 and sp.fetches == 3
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 25


def test_a_second_worker_sleeps_through_a_commit_the_first_takes(tmp_path):
    """With two workers, the alerts of a commit that fit in one request cost one fetch: the
    second worker wakes for the write but leaves them to the first."""
    sp = CountingSpool(tmp_path / "s.db", clock=time.monotonic)
    # (no idle poll during the test: a periodic fetch would count on a slow machine)
    fwd = Forwarder(sp, JsonlOutput(tmp_path / "a.jsonl"),
                    DeliveryConfig(linger=0.02, concurrency=2, poll_interval=3600.0), clock=time.monotonic)
    fwd.start()
    deadline = time.monotonic() + 60
    try:
        while sp.fetches < 2 and time.monotonic() < deadline:     # each worker's first look
            time.sleep(0.01)
        before = sp.fetches
        for c in range(4):
            sp.put_many([sample_alert(10 * c + i) for i in range(3)])
            while sp.depth() and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(0.1)
    finally:
        fwd.stop()
        fwd.join(30)
    assert sp.depth() == 0 and len((tmp_path / "a.jsonl").read_text().splitlines()) == 12
    assert sp.fetches - before == 4


def test_a_second_worker_joins_a_backlog(tmp_path):
    """A commit larger than one request: both workers send (no row twice, none lost)."""
    sp = CountingSpool(tmp_path / "s.db", clock=time.monotonic)

    class Slow(JsonlOutput):
        def send_batch(self, alerts):
            time.sleep(0.05)          # keeps a request in flight while the other worker looks
            return super().send_batch(alerts)
    fwd = Forwarder(sp, Slow(tmp_path / "a.jsonl"), DeliveryConfig(linger=0.0, batch_size=5, concurrency=2),
                    clock=time.monotonic)
    fwd.start()
    deadline = time.monotonic() + 60
    try:
        while sp.fetches < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        sp.put_many([sample_alert(i) for i in range(60)])
        while sp.depth() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        fwd.stop()
        fwd.join(30)
    ids = [line for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(ids) == 60 and len(set(ids)) == 60
    assert fwd.stats()["requests"] == 12


def _state(tid: int) -> str:
    with open(f"/proc/self/task/{tid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def _switches(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as fh:
        return sum(int(line.split()[1]) for line in fh if "ctxt_switches" in line)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="counts thread wake-ups from /proc (Linux)")
def test_a_second_worker_is_not_woken_by_a_commit_the_first_takes(tmp_path):
    """A commit that fits in one request wakes the first worker alone: the second one sleeps
    through it (it waits for a fetch that left rows behind, and for stop)."""
    sp = CountingSpool(tmp_path / "s.db", clock=time.monotonic)
    # (no idle poll during the test: a periodic fetch would count on a slow machine)
    fwd = Forwarder(sp, JsonlOutput(tmp_path / "a.jsonl"),
                    DeliveryConfig(linger=0.02, concurrency=2, poll_interval=3600.0), clock=time.monotonic)
    fwd.start()
    deadline = time.monotonic() + 60
    try:
        while (sp.fetches < 2 or not fwd._workers) and time.monotonic() < deadline:   # each worker's first look
            time.sleep(0.01)
        helper = fwd._workers[0].native_id
        # the second worker is asleep: waiting for help to be needed, and blocked in the kernel
        while not (fwd._help._cond._waiters and _state(helper) == "S") and time.monotonic() < deadline:
            time.sleep(0.01)
        before = _switches(helper)
        for c in range(5):
            sp.put_many([sample_alert(10 * c + i) for i in range(3)])
            while sp.depth() and time.monotonic() < deadline:
                time.sleep(0.01)
        woken = _switches(helper) - before
    finally:
        fwd.stop()
        fwd.join(30)
    assert sp.depth() == 0 and len((tmp_path / "a.jsonl").read_text().splitlines()) == 15
    assert woken == 0, f"the second worker woke {woken} time(s) for 5 commits"
