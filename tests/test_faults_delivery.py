"""Delivery faults: back-off exactly as configured across workers, and a 400 storm that is not a
verdict on the alerts. Real receiver, real TLS and sockets; the round test drives step() directly."""
from __future__ import annotations

import time

import pytest

from sensor.deliver.forwarder import DeliveryConfig, Forwarder
from sensor.deliver.memory import MemoryOutput
from sensor.deliver.outputs import build_output
from sensor.deliver.protocol import RETRY, SendResult
from sensor.deliver.spool import Spool
from sensor.testing.receiver import Receiver, sample_alert

FAST = dict(batch_size=50, linger=0.0, backoff_base=0.01, backoff_cap=0.05, park_interval=0.1,
            poll_interval=0.05, enforce_interval=0.0)


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def output_for(rec: Receiver, **kw):
    return build_output({"url": rec.url, "ca_file": str(rec.ca_file), "connect_timeout": 1, **kw})


def test_concurrent_failures_of_one_round_count_once(tmp_path):
    """Two workers fail together: the back-off grows once per round, as configured."""
    clock = FakeClock()
    sp = Spool(tmp_path / "s.db", clock=clock)
    sp.put_many([sample_alert(i) for i in range(4)])
    fwd: Forwarder

    def script(batch):
        # While this request is in flight, a second worker claims the other batch and fails.
        if not script.nested:
            script.nested = True
            script.inner_delay = fwd.step()
            script.nested = False
        return SendResult(RETRY, error="HTTP 503")

    script.nested = False
    draws = []
    fwd = Forwarder(sp, MemoryOutput(script),
                    DeliveryConfig(batch_size=2, linger=0, backoff_base=1, backoff_cap=300, enforce_interval=1e9),
                    clock=clock, rng=lambda: draws.append(1) or 1.0)
    delays = []
    for _ in range(4):
        delays.append(fwd.step())
        clock.t += delays[-1]
    # base * 2**(n-1) after the n-th failed round; the request already in flight when the round's
    # failure was counted waits for the same time instead of doubling it
    assert delays == [1, 2, 4, 8]
    assert len(draws) == 4 and fwd.stats()["consecutive_failures"] == 4
    assert fwd.stats()["failed_attempts"] == 8  # every request failed and is counted as a failure
    sp.close()


def test_outage_with_two_workers_everything_arrives(tmp_path):
    sp = Spool(tmp_path / "s.db")
    draws = []
    with Receiver() as rec:
        rec.down()
        fwd = Forwarder(sp, output_for(rec), DeliveryConfig(**{**FAST, "batch_size": 5, "concurrency": 2,
                                                                "backoff_base": 0.02, "backoff_cap": 0.5}),
                        rng=lambda: draws.append(1) or 1.0)
        fwd.start()
        try:
            sp.put_many([sample_alert(i) for i in range(40)])
            end = time.monotonic() + 20
            while fwd.stats()["consecutive_failures"] < 4 and time.monotonic() < end:
                time.sleep(0.01)
            st = fwd.stats()
            assert st["consecutive_failures"] >= 4
            rec.up()
            assert fwd.wait_drained(30)
        finally:
            fwd.stop()
        assert sorted(rec.ids()) == sorted(sample_alert(i)["id"] for i in range(40))
    # one random draw per counted failure: the failures that belonged to a round drew nothing
    assert len(draws) <= st["failed_attempts"]
    sp.close()


@pytest.mark.parametrize("fmt", ["ecs", "webhook", "splunk_hec"])
def test_a_storm_of_400s_dead_letters_nothing(tmp_path, fmt):
    sp = Spool(tmp_path / "s.db")
    batch = [sample_alert(i) for i in range(40)]
    with Receiver() as rec:
        rec.fail_next(400, 20)  # 400 to the next 20 requests, whatever they hold
        sp.put_many(batch)
        out = output_for(rec, format=fmt)
        fwd = Forwarder(sp, out, DeliveryConfig(**FAST, concurrency=2))
        fwd.start()
        try:
            assert fwd.wait_drained(30)
        finally:
            fwd.stop()
            out.close()
        assert sp.dead_letters() == []
        assert sorted(rec.ids()) == sorted(a["id"] for a in batch)
    sp.close()


@pytest.mark.parametrize("where", [0, 13, 39])
def test_in_a_400_storm_only_the_rejected_alert_is_dead_lettered(tmp_path, where):
    sp = Spool(tmp_path / "s.db")
    batch = [sample_alert(i) for i in range(40)]
    poison = batch[where]["id"]
    with Receiver() as rec:
        rec.reject_ids = {poison}
        rec.fail_next(400, 10)
        sp.put_many(batch)
        out = output_for(rec)
        fwd = Forwarder(sp, out, DeliveryConfig(**FAST))
        fwd.start()
        try:
            # the poison alert is judged once something is accepted after its lone rejection: the
            # next alert written is enough (here, one more alert after the batch)
            assert rec.wait_for(39, 60)
            sp.put(sample_alert(99))
            assert wait_until(lambda: sp.depth() == 0, 60)
        finally:
            fwd.stop()
            out.close()
        dead = sp.dead_letters()
        assert [d["id"] for d in dead] == [poison] and dead[0]["status"] == 400
        assert "rejected alone twice" in dead[0]["reason"]
        assert sorted(rec.ids()) == sorted([a["id"] for a in batch if a["id"] != poison]
                                           + [sample_alert(99)["id"]])
    sp.close()


def test_a_lone_rejected_alert_does_not_hold_up_the_others(tmp_path):
    """A 400 for an alert sent alone sets it aside; later alerts are delivered meanwhile."""
    sp = Spool(tmp_path / "s.db")
    with Receiver() as rec:
        poison = sample_alert(0)["id"]
        rec.reject_ids = {poison}
        out = output_for(rec)
        # A shared back-off after the lone rejection would hold every alert for 600 s.
        fwd = Forwarder(sp, out, DeliveryConfig(**{**FAST, "backoff_base": 600.0, "backoff_cap": 600.0}),
                        rng=lambda: 1.0)
        fwd.start()
        try:
            sp.put(sample_alert(0))
            assert wait_until(lambda: fwd.stats()["rejected_alone"] >= 1, 60)
            sp.put_many([sample_alert(i) for i in range(1, 6)])
            assert rec.wait_for(5, 60)
            assert fwd.stats()["consecutive_failures"] == 0
            # and the first of them accepted is the evidence that judges the set-aside alert
            assert wait_until(lambda: sp.depth() == 0, 60)
        finally:
            fwd.stop()
            out.close()
        assert [d["id"] for d in sp.dead_letters()] == [poison]
        assert sorted(rec.ids()) == sorted(sample_alert(i)["id"] for i in range(1, 6))
    sp.close()


def wait_until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()
