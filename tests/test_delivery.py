"""The forwarder: at-least-once delivery from the spool, against the local HTTPS receiver."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.deliver.forwarder import IDLE, DeliveryConfig, Forwarder
from sensor.deliver.protocol import OK, PARK, RETRY, SPLIT, SendResult
from sensor.deliver.tls import ConfigError
from sensor.deliver.outputs import build_output
from sensor.deliver.memory import MemoryOutput
from sensor.deliver.spool import Spool
from sensor.testing.receiver import Receiver, sample_alert

REPO = Path(__file__).resolve().parents[1]
FAST = dict(batch_size=50, linger=0.0, backoff_base=0.01, backoff_cap=0.05, park_interval=0.1,
            poll_interval=0.05, enforce_interval=0.0)


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def alerts(n: int, start: int = 0) -> list[dict]:
    return [sample_alert(i) for i in range(start, start + n)]


@pytest.fixture()
def receiver():
    with Receiver(token="s3cr3t-token") as rec:
        yield rec


@pytest.fixture()
def spool(tmp_path):
    sp = Spool(tmp_path / "spool.db")
    yield sp
    sp.close()


def output_for(rec: Receiver, **kw):
    options = {"url": rec.url, "ca_file": str(rec.ca_file), "token": "s3cr3t-token", "connect_timeout": 1}
    options.update(kw)
    return build_output(options)


def run_forwarder(spool, out, **cfg):
    fwd = Forwarder(spool, out, DeliveryConfig(**{**FAST, **cfg}))
    fwd.start()
    return fwd


def wait_until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# -- acceptance: outages, kills, status codes ------------------------------------------------------

def test_receiver_down_then_up_every_alert_delivered_once(receiver, spool):
    batch = alerts(120)
    receiver.down()
    out = output_for(receiver)
    fwd = run_forwarder(spool, out)
    try:
        spool.put_many(batch[:60])
        assert wait_until(lambda: fwd.stats()["failed_attempts"] >= 3)
        spool.put_many(batch[60:])
        assert spool.depth() == 120  # nothing dropped while the receiver is away
        receiver.up()
        assert fwd.wait_drained(15)
    finally:
        fwd.stop()
        out.close()
    got = receiver.ids()
    assert sorted(got) == sorted(a["id"] for a in batch) and len(got) == len(set(got))
    st = fwd.stats()
    assert st["sent"] == 120 and st["retries"] >= 3 and st["spool_depth"] == 0 and not st["parked"]
    assert "connect" in st["last_error"]


_FORWARDER = r"""
import json, sys, threading, time
from sensor.deliver.forwarder import DeliveryConfig, Forwarder
from sensor.deliver.outputs import build_output
from sensor.deliver.spool import Spool
from sensor.testing.receiver import sample_alert
spool_path, options, produce = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
sp = Spool(spool_path)
fwd = Forwarder(sp, build_output(options), DeliveryConfig(batch_size=40, linger=0.05, backoff_base=0.01,
                                                          backoff_cap=0.05, poll_interval=0.05))
fwd.start()
for i in range(produce):
    sp.put(sample_alert(i))
    print(sample_alert(i)["id"], flush=True)   # only after the commit returned
print("done", flush=True)
while True:
    time.sleep(1)
"""


def _spawn(db, rec, produce):
    options = {"url": rec.url, "ca_file": str(rec.ca_file), "token": "s3cr3t-token"}
    return subprocess.Popen([sys.executable, "-c", _FORWARDER, str(db), json.dumps(options), str(produce)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_sigkill_mid_batch_then_restart_loses_nothing(receiver, tmp_path):
    db = tmp_path / "spool.db"
    receiver.delay = 0.3  # keeps a batch in flight when the kill lands
    proc = _spawn(db, receiver, 400)
    committed = []
    try:
        while len(committed) < 150:
            line = proc.stdout.readline().decode().strip()
            assert line, "forwarder process died"
            if line != "done":
                committed.append(line)
        assert wait_until(lambda: receiver.counters["in_flight"] >= 1, 60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        committed += [ln for ln in proc.stdout.read().decode().split() if ln != "done"]
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Spool(db) as sp:
        left = set(sp.ids())
    assert set(committed) <= left | set(receiver.ids())  # every committed alert is somewhere
    assert left, "the kill should have left undelivered alerts"
    receiver.delay = 0
    proc = _spawn(db, receiver, 0)  # restart: forwarder only
    try:
        with Spool(db) as sp:
            assert wait_until(lambda: sp.depth() == 0, 120)   # a fresh process: imports, TLS
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    got = receiver.ids()
    assert set(committed) <= set(got)  # nothing lost
    # At-least-once: only the batches in flight at the kill may arrive twice.
    assert len(got) - len(set(got)) <= 2 * 40  # concurrency 2: two batches may be in flight


def test_429_retry_after_is_honoured(receiver, spool):
    receiver.fail_next(429, headers={"Retry-After": "1"})
    spool.put_many(alerts(5))
    out = output_for(receiver)
    fwd = run_forwarder(spool, out, backoff_base=0.01, backoff_cap=5)
    try:
        assert fwd.wait_drained(60)   # 60 s only guards a hang
    finally:
        fwd.stop()
        out.close()
    log = [e for e in receiver.request_log if e["kind"] == "ndjson"]
    assert [e["status"] for e in log] == [429, 200]
    assert log[1]["time"] - log[0]["time"] >= 0.95  # waited Retry-After, not the 10 ms backoff
    assert len(receiver.ids()) == 5 and fwd.stats()["retries"] == 1


def test_413_splits_the_batch_and_all_arrive(receiver, spool):
    receiver.too_large_over = 7
    batch = alerts(50)
    spool.put_many(batch)
    out = output_for(receiver)
    fwd = run_forwarder(spool, out)
    try:
        assert fwd.wait_drained(60)   # 60 s only guards a hang
    finally:
        fwd.stop()
        out.close()
    got = receiver.ids()
    assert sorted(got) == sorted(a["id"] for a in batch) and len(got) == 50
    st = fwd.stats()
    assert st["splits"] >= 1 and st["batch_cap"] <= 7 and st["dead_lettered"] == 0


@pytest.mark.parametrize("fmt", ["ecs", "jsonl"])
def test_an_alert_the_output_cannot_encode_goes_to_dead_letter_alone(receiver, spool, fmt, tmp_path,
                                                                        monkeypatch, caplog):
    # docs/delivery.md "Formats": whatever one alert's encoding raises (here RecursionError, as
    # a value nested past the encoder's limit raises on the forwarder's stack), that alert goes
    # to dead-letter with the reason, every other alert of its batch is delivered, and the log
    # holds no traceback.
    import sensor.deliver.http as http_mod
    import sensor.deliver.jsonl as jsonl_mod
    batch = alerts(20)
    poison = batch[7]["id"]
    real = http_mod.to_ecs

    def deep(alert):
        if alert.get("id") == poison:
            raise RecursionError("maximum recursion depth exceeded while serializing an object")
        return real(alert)

    monkeypatch.setattr(http_mod, "to_ecs", deep)
    monkeypatch.setattr(jsonl_mod, "to_ecs", deep)
    spool.put_many(batch)
    path = tmp_path / "out.jsonl"
    out = build_output({"format": "jsonl", "path": str(path)}) if fmt == "jsonl" else output_for(receiver)
    with caplog.at_level(logging.DEBUG):
        fwd = run_forwarder(spool, out)
        try:
            assert fwd.wait_drained(30)   # 30 s only guards a hang
        finally:
            fwd.stop()
            out.close()
    dead = spool.dead_letters()
    assert [d["id"] for d in dead] == [poison]
    assert dead[0]["reason"].startswith("cannot encode: RecursionError: maximum recursion depth")
    got = receiver.ids() if fmt == "ecs" else [json.loads(x)["event"]["id"] for x in path.read_text().splitlines()]
    assert sorted(got) == sorted(a["id"] for a in batch if a["id"] != poison)
    assert not [r for r in caplog.records if r.exc_info] and "Traceback" not in caplog.text


@pytest.mark.parametrize("fmt", ["ecs", "splunk_hec", "elasticsearch", "webhook"])
def test_400_poison_alert_goes_to_dead_letter_rest_delivered(receiver, spool, fmt):
    batch = alerts(40)
    poison = batch[13]["id"]
    receiver.reject_ids = {poison}
    spool.put_many(batch)
    out = output_for(receiver, format=fmt)
    fwd = run_forwarder(spool, out)
    try:
        assert fwd.wait_drained(60)   # 60 s only guards a hang
    finally:
        fwd.stop()
        out.close()
    dead = spool.dead_letters()
    assert [d["id"] for d in dead] == [poison] and dead[0]["status"] == 400
    assert dead[0]["alert"]["id"] == poison  # the whole alert is kept for inspection and requeue
    got = receiver.ids()
    assert sorted(got) == sorted(a["id"] for a in batch if a["id"] != poison) and len(got) == 39
    assert fwd.stats()["dead_lettered"] == 1


@pytest.mark.parametrize("case", ["wrong_ca", "hostname_mismatch", "expired", "pin_mismatch"])
def test_tls_failures_park_and_keep_alerts(spool, case, caplog):
    kw = {"cert_hosts": ["other.example"]} if case == "hostname_mismatch" else \
         {"cert_expired": True} if case == "expired" else {}
    with Receiver(token="s3cr3t-token", **kw) as rec, Receiver() as other:
        extra = {"ca_file": str(other.ca_file)} if case == "wrong_ca" else \
                {"pin_sha256": "cd" * 32} if case == "pin_mismatch" else {}
        out = output_for(rec, **extra)
        spool.put_many(alerts(10))
        fwd = Forwarder(spool, out, DeliveryConfig(**FAST))
        with caplog.at_level(logging.ERROR, logger="sensor.delivery"):
            delay = fwd.step()
            assert fwd.step() > 0  # parked: no new attempt before park_interval
        out.close()
        assert delay == pytest.approx(FAST["park_interval"])
        assert rec.ids() == [] and spool.depth() == 10  # refused, nothing dropped
        st = fwd.stats()
        assert st["parked"] and "TLS" in st["park_reason"] and st["sent"] == 0
        assert "PARKED" in caplog.text


def test_401_parks_loudly_then_resumes_when_fixed(receiver, spool, caplog):
    receiver.token = "the-receivers-token"
    spool.put_many(alerts(8))
    out = output_for(receiver)  # sends s3cr3t-token
    with caplog.at_level(logging.WARNING):
        fwd = run_forwarder(spool, out)
        try:
            assert wait_until(lambda: fwd.stats()["parked"])
            assert spool.depth() == 8
            st = fwd.stats()
            assert "401" in st["last_error"] and "s3cr3t-token" not in st["last_error"]
            receiver.token = "s3cr3t-token"  # fixed on the receiver side
            assert fwd.wait_drained(60)   # 60 s only guards a hang
            assert not fwd.stats()["parked"]
        finally:
            fwd.stop()
            out.close()
    assert len(receiver.ids()) == 8
    assert "PARKED" in caplog.text and "resumed" in caplog.text
    assert "s3cr3t-token" not in caplog.text


def test_spool_cap_drops_oldest_counts_and_health_event_is_delivered(receiver, tmp_path):
    one = len(json.dumps(sample_alert(0)).encode())
    sp = Spool(tmp_path / "small.db", max_bytes=one * 10)
    receiver.down()
    out = output_for(receiver)
    fwd = run_forwarder(sp, out)
    try:
        batch = alerts(30)
        for a in batch:
            sp.put(a)
        st = fwd.stats()
        assert st["dropped"] >= 15
        assert sp.health_events()[0]["kind"] == "spool_overflow"
        waiting = sp.ids()
        assert batch[-1]["id"] in waiting and batch[0]["id"] not in waiting  # oldest dropped
        health_ids = {it.alert_id for it in sp.fetch(100) if it.decode().get("type") == "health"}
        assert health_ids
        receiver.up()
        assert fwd.wait_drained(60)   # 60 s only guards a hang
    finally:
        fwd.stop()
        out.close()
        sp.close()
    got = set(receiver.ids())
    assert health_ids <= got  # the SIEM hears about the loss
    assert set(waiting) <= got


# -- unit behaviour with an injectable clock and random source ------------------------------------

def scripted(results):
    """A MemoryOutput answering with the given outcomes in turn (then OK)."""
    it = iter(results)

    def script(batch):
        try:
            r = next(it)
        except StopIteration:
            return None
        return SendResult(r[0], retry_after=r[1] if len(r) > 1 else None, error=f"scripted {r[0]}")

    return MemoryOutput(script)


def test_full_jitter_backoff_grows_caps_and_resets(tmp_path):
    clock = FakeClock()
    sp = Spool(tmp_path / "s.db", clock=clock)
    out = scripted([(RETRY,)] * 5 + [(OK,)] * 0)
    draws = iter([1.0, 1.0, 1.0, 1.0, 0.5, 1.0])
    fwd = Forwarder(sp, out, DeliveryConfig(batch_size=10, linger=0, backoff_base=1, backoff_cap=5,
                                            enforce_interval=1e9),
                    clock=clock, rng=lambda: next(draws))
    sp.put(sample_alert(1))
    delays = []
    for _ in range(5):
        d = fwd.step()
        delays.append(d)
        assert fwd.step() == pytest.approx(d)  # no attempt before the wait is over
        clock.t += d
    assert delays == [1, 2, 4, 5, 2.5]  # U(0, min(cap, base*2^n)) with the draws above
    assert fwd.step() == 0.0 and out.ids == [sample_alert(1)["id"]]  # success
    out.script = scripted([(RETRY,)]).script
    sp.put(sample_alert(2))
    assert fwd.step() == 1.0  # reset on success: back to base
    sp.close()


def test_retry_after_wins_and_is_capped(tmp_path):
    clock = FakeClock()
    sp = Spool(tmp_path / "s.db", clock=clock)
    out = scripted([(RETRY, 7.0), (RETRY, 999.0)])
    fwd = Forwarder(sp, out, DeliveryConfig(linger=0, backoff_base=0.01, backoff_cap=60),
                    clock=clock, rng=lambda: 1.0)
    sp.put(sample_alert(1))
    assert fwd.step() == 7.0
    clock.t += 7
    assert fwd.step() == 60.0
    sp.close()


def test_batches_close_on_count_and_on_time(tmp_path):
    clock = FakeClock()
    sp = Spool(tmp_path / "s.db", clock=clock)
    out = MemoryOutput()
    fwd = Forwarder(sp, out, DeliveryConfig(batch_size=10, linger=1.0, enforce_interval=1e9), clock=clock)
    assert fwd.step() is IDLE
    sp.put_many(alerts(3))
    assert fwd.step() == pytest.approx(1.0) and out.calls == []  # young partial batch waits
    clock.t += 0.4
    assert fwd.step() == pytest.approx(0.6)
    clock.t += 0.6
    assert fwd.step() == 0.0 and [len(c) for c in out.calls] == [3]
    sp.put_many(alerts(25, start=100))
    fwd.step()
    fwd.step()
    assert [len(c) for c in out.calls] == [3, 10, 10]  # full batches go at once
    assert fwd.step() == pytest.approx(1.0)  # the last 5 wait for the linger
    sp.close()


def test_batch_byte_budget(tmp_path):
    sp = Spool(tmp_path / "s.db")
    out = MemoryOutput()
    one = len(json.dumps(sample_alert(0)).encode())
    fwd = Forwarder(sp, out, DeliveryConfig(batch_size=100, batch_max_bytes=one * 3 + 10, linger=0))
    sp.put_many(alerts(7))
    while fwd.step() == 0.0 and sp.depth():
        pass
    assert [len(c) for c in out.calls] == [3, 3, 1]
    sp.close()


def test_single_alert_413_goes_to_dead_letter(tmp_path):
    sp = Spool(tmp_path / "s.db")
    out = scripted([(SPLIT,)])
    fwd = Forwarder(sp, out, DeliveryConfig(linger=0))
    sp.put(sample_alert(1))
    fwd.step()
    assert sp.depth() == 0 and "too large" in sp.dead_letters()[0]["reason"]
    sp.close()


def test_park_keeps_everything_and_retries_later(tmp_path):
    clock = FakeClock()
    sp = Spool(tmp_path / "s.db", clock=clock)
    out = scripted([(PARK,), (PARK,)])
    fwd = Forwarder(sp, out, DeliveryConfig(linger=0, park_interval=30), clock=clock)
    sp.put_many(alerts(4))
    assert fwd.step() == 30 and fwd.stats()["parked"]
    clock.t += 30
    assert fwd.step() == 30 and sp.depth() == 4
    clock.t += 30
    assert fwd.step() == 0.0 and sp.depth() == 0 and not fwd.stats()["parked"]
    assert sp._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0] == 0
    sp.close()


def test_partial_delivery_acks_only_confirmed(tmp_path):
    sp = Spool(tmp_path / "s.db")
    batch = alerts(4)
    ids = [a["id"] for a in batch]

    def script(b):
        return SendResult(RETRY, delivered=ids[:2], error="two items throttled")

    fwd = Forwarder(sp, MemoryOutput(script), DeliveryConfig(linger=0))
    sp.put_many(batch)
    assert fwd.step() > 0
    assert sp.ids() == ids[2:]
    assert [r[0] for r in sp._db.execute("SELECT attempts FROM alerts")] == [1, 1]
    sp.close()


def test_corrupt_spool_row_goes_to_dead_letter(tmp_path):
    sp = Spool(tmp_path / "s.db")
    sp.put(sample_alert(1))
    sp._db.execute("INSERT INTO alerts(alert_uuid, created, size, body) VALUES ('bad', 0, 3, x'ffff00')")
    out = MemoryOutput()
    fwd = Forwarder(sp, out, DeliveryConfig(linger=0))
    assert fwd.step() == 0.0
    assert out.ids == [sample_alert(1)["id"]] and sp.depth() == 0
    assert "corrupt" in sp.dead_letters()[0]["reason"]
    sp.close()


def test_stats_have_the_health_fields(spool):
    fwd = Forwarder(spool, MemoryOutput())
    st = fwd.stats()
    for key in ("sent", "failed_attempts", "retries", "dead_lettered", "dropped", "parked", "spool_depth",
                "last_error"):
        assert key in st


def test_stop_wakes_an_idle_forwarder(spool):
    # idle, it would otherwise sleep for an hour: stop() must wake it (60 s only guards a hang)
    fwd = run_forwarder(spool, MemoryOutput(), poll_interval=3600.0)
    fwd.stop(60)
    assert not fwd.is_alive()


class _StopWhileReading:
    """The spool's write mark, read once by a forwarder, with a stop() landing at that moment:
    the interleaving where stop() comes after the loop's stop check and before the wait."""

    def __init__(self, spool):
        self._spool, self.fwd, self.reads = spool, None, 0

    @property
    def write_mark(self):
        self.reads += 1
        if self.reads == 1:
            self.fwd._stop_event.set()      # what stop() does, in its order
            self.fwd._help.set()
            self._spool.wake()
        return self._spool.write_mark

    def __getattr__(self, name):
        return getattr(self._spool, name)


def test_a_stop_between_the_stop_check_and_the_wait_is_not_lost(spool):
    # A stop() that lands just as the idle forwarder reads the write mark must still end it,
    # not leave it asleep for the whole poll interval (an hour here; 60 s only guards a hang).
    racing = _StopWhileReading(spool)
    fwd = Forwarder(racing, MemoryOutput(), DeliveryConfig(**{**FAST, "poll_interval": 3600.0}))
    racing.fwd = fwd
    fwd.start()
    fwd.join(60)
    assert racing.reads >= 1 and not fwd.is_alive()
    fwd.stop(1)


def test_stop_ends_a_request_the_receiver_never_answers(receiver, spool):
    # The receiver takes the request and never answers (its read timeout is an hour): stop()
    # ends the request in flight instead of waiting for it; the alert stays in the spool.
    receiver.delay = 3600.0
    spool.put(sample_alert(1))
    fwd = run_forwarder(spool, output_for(receiver, read_timeout=3600), poll_interval=3600.0)
    try:
        assert wait_until(lambda: receiver.stats()["in_flight"] == 1, 60)
        fwd.stop(60)                       # 60 s only guards a hang
        assert not fwd.is_alive()
        assert spool.depth() == 1 and fwd.stats()["sent"] == 0
        assert fwd.stats()["failed_attempts"] == 0        # the stop ended it, not the receiver
    finally:
        receiver.delay = 0.0
        fwd.stop(1)


def test_a_request_after_the_abort_is_not_sent(receiver, spool):
    # A stop that lands while the worker is between two requests: the next one is refused at
    # once instead of connecting (and then waiting on a receiver that does not answer).
    out = output_for(receiver)
    out.abort()
    result = out.send_batch([sample_alert(1)])
    assert result.outcome == RETRY and "stopping" in result.error
    assert receiver.stats()["requests"] == 0


def test_in_process_writes_wake_the_forwarder(spool):
    out = MemoryOutput()
    # it would sleep an hour without the wake-up (60 s only guards a hang)
    fwd = run_forwarder(spool, out, poll_interval=3600.0)
    try:
        time.sleep(0.05)
        spool.put(sample_alert(1))
        assert wait_until(lambda: out.ids == [sample_alert(1)["id"]], 60)
    finally:
        fwd.stop()


def test_delivery_config_from_options():
    cfg = DeliveryConfig.from_options({"batch_size": "100", "linger": 0.5})
    assert cfg.batch_size == 100 and cfg.linger == 0.5
    with pytest.raises(ConfigError, match="unknown"):
        DeliveryConfig.from_options({"bach_size": 1})
    with pytest.raises(ConfigError, match="positive"):
        DeliveryConfig.from_options({"batch_size": 0})


def test_concurrent_workers_never_send_a_row_twice(spool):
    def slow(batch):
        time.sleep(0.002)  # keep batches in flight so the workers overlap
        return None

    out = MemoryOutput(slow)
    spool.put_many(alerts(600))
    fwd = run_forwarder(spool, out, batch_size=25, concurrency=3)
    try:
        assert fwd.wait_drained(20)
    finally:
        fwd.stop()
    assert len(out.ids) == 600 and len(set(out.ids)) == 600
    assert len(out.calls) == 24


def test_backoff_survives_a_very_long_outage(tmp_path):
    clock = FakeClock()
    sp = Spool(tmp_path / "s.db", clock=clock)
    out = scripted([(RETRY,)] * 3)
    fwd = Forwarder(sp, out, DeliveryConfig(linger=0, backoff_base=1, backoff_cap=300), clock=clock,
                    rng=lambda: 1.0)
    fwd._failures = 5000  # days of failures in a row
    sp.put(sample_alert(1))
    assert fwd.step() == 300.0
    sp.close()
