"""The forwarder's promises one by one (docs/delivery.md, "[delivery]", "Failure handling", "Faults"),
stepped by hand on a real spool with a scripted output and a fake clock: the documented defaults,
the counters, confirmations the disk refuses (kept in memory, never sent again, retried with a
growing wait), results that settle every alert, and spool errors that are said once then every
tenth time. Fast: the mutation run of sensor/deliver/forwarder.py runs it for every mutant."""
from __future__ import annotations

import logging
import threading

import pytest

from sensor.deliver import forwarder as forwarder_mod
from sensor.deliver.forwarder import IDLE, DeliveryConfig, Forwarder
from sensor.deliver.memory import MemoryOutput
from sensor.deliver.protocol import BISECT, OK, PARK, RESEND, RETRY, SPLIT, SendResult
from sensor.deliver.spool import Spool, SpoolDamaged, SpoolError, SpoolFull
from sensor.deliver.tls import ConfigError


class Clock:
    def __init__(self, t: float = 5_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def alert(i: int) -> dict:
    return {"id": f"f-{i:04d}", "rule": {"id": "r"}, "event": {"n": i}}


def refuse_once(spool: Spool, name: str, times: int = 1) -> list:
    """Make ``spool.<name>`` raise SpoolFull (a full disk) the next ``times`` calls; the calls
    are recorded."""
    real = getattr(spool, name)
    calls: list = []

    def wrapper(*a, **kw):
        calls.append(a)
        if len(calls) <= times:
            raise SpoolFull(f"spool {spool.path}: {name} failed: database or disk is full")
        return real(*a, **kw)

    setattr(spool, name, wrapper)
    return calls


@pytest.fixture()
def clock():
    return Clock()


@pytest.fixture()
def spool(tmp_path, clock):
    sp = Spool(tmp_path / "s.db", clock=clock)
    yield sp
    sp.close()


def forwarder(spool, out, clock, **cfg) -> Forwarder:
    base = dict(linger=0.0, enforce_interval=1e9, backoff_base=1.0, backoff_cap=300.0, park_interval=60.0)
    return Forwarder(spool, out, DeliveryConfig(**{**base, **cfg}), clock=clock, rng=lambda: 1.0)


# -- configuration -------------------------------------------------------------------------------

def test_the_defaults_are_the_documented_ones():
    cfg = DeliveryConfig()
    assert cfg.batch_size == 500
    assert cfg.batch_max_bytes == 4096 * 1024          # batch_max_kb = 4096
    assert cfg.linger == 5.0                            # batch_wait_ms = 5000
    assert cfg.concurrency == 2
    assert (cfg.backoff_base, cfg.backoff_cap) == (1.0, 300.0)
    assert cfg.park_interval == 60.0
    assert cfg.poll_interval == 30.0                    # "wakes every 30 s"
    assert cfg.enforce_interval == 5.0                  # the age cap "at most every 5 s"


@pytest.mark.parametrize("options, message", [
    ({"linger": -0.1}, "must be positive"),
    ({"backoff_cap": -1}, "must be positive"),
    ({"concurrency": 0}, "must be positive"),
    ({"batch_max_bytes": 0}, "must be positive"),
    ({"batch_size": "many"}, "expected a number"),
    ({"park_interval": None}, "expected a number"),
])
def test_bad_options_are_refused_with_the_key(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        DeliveryConfig.from_options(options)
    assert next(iter(options)) in str(info.value)


def test_zero_is_a_valid_wait():
    cfg = DeliveryConfig.from_options({"linger": 0, "backoff_base": 0, "enforce_interval": 0,
                                       "concurrency": 1})
    assert (cfg.linger, cfg.backoff_base, cfg.enforce_interval, cfg.concurrency) == (0.0, 0.0, 0.0, 1)
    assert type(cfg.concurrency) is int and type(cfg.linger) is float


# -- counters ------------------------------------------------------------------------------------

def test_a_fresh_forwarder_reports_zeros(spool, clock):
    st = forwarder(spool, MemoryOutput(), clock).stats()
    for key in ("sent", "requests", "failed_attempts", "retries", "dead_lettered", "splits",
                "consecutive_failures", "corrupt_rows", "rejected_alone", "ack_failures", "ack_pending",
                "mark_failed_errors", "dropped", "spool_depth", "dead_letter_depth"):
        assert st[key] == 0, key
    assert st["ack_retry_in"] == 0.0 and st["next_attempt_in"] == 0.0
    assert st["parked"] is False and st["park_reason"] is None and st["last_error"] is None
    assert st["spool_disk_full"] is False and st["spool_error"] is None
    assert st["batch_cap"] == 500 and st["output"] == "memory"


def test_stats_never_raise_when_the_spool_cannot_be_read(spool, clock):
    fwd = forwarder(spool, MemoryOutput(), clock)
    spool._db.execute("DROP TABLE meta")
    st = fwd.stats()
    assert st["spool_error"] and st["dropped"] == 0 and st["dead_letter_depth"] == 0
    assert st["spool_depth"] == 0


def test_a_park_counts_one_failed_attempt_and_keeps_everything(spool, clock, caplog):
    out = MemoryOutput(lambda b: SendResult(PARK, status=401, error="HTTP 401 token refused"))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(3)])
    assert fwd.step() == 60.0
    st = fwd.stats()
    assert st["failed_attempts"] == 1 and st["retries"] == 0 and st["parked"] is True
    assert st["park_reason"] == "HTTP 401 token refused" and st["next_attempt_in"] == 60.0
    assert spool.depth() == 3 and spool.dead_letters() == []
    clock.t += 10
    assert fwd.step() == 50.0 and len(out.calls) == 1      # parked: nothing sent meanwhile

    def unreadable():
        raise SpoolError(f"spool {spool.path}: read failed: disk I/O error")

    spool.depth = unreadable
    clock.t += 50
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="sensor.deliver.forwarder"):
        assert fwd.step() == 60.0 and len(out.calls) == 2  # the log line's count is unknown: no error
    (line,) = [r.getMessage() for r in caplog.records if "PARKED" in r.getMessage()]
    assert "an unknown number of alert(s) kept in the spool" in line, line
    del spool.depth


def test_a_split_counts_one_failed_attempt_and_lowers_the_cap(spool, clock):
    answers = iter([SendResult(SPLIT, status=413, error="HTTP 413")])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock, batch_size=8)
    spool.put_many([alert(i) for i in range(8)])
    assert fwd.step() == 0.0
    st = fwd.stats()
    assert st["failed_attempts"] == 1 and st["splits"] == 1 and st["batch_cap"] == 4
    assert out.calls == [[f"f-{i:04d}" for i in range(8)], [f"f-{i:04d}" for i in range(4)],
                         [f"f-{i:04d}" for i in range(4, 8)]]
    assert st["sent"] == 8 and spool.depth() == 0


def test_an_answer_that_settles_every_alert_resets_the_backoff(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    answers = iter([SendResult(RETRY, status=503, error="HTTP 503"),
                    SendResult(RESEND, status=400, delivered=[ids[0]], rejected={ids[1]: "bad field"})])
    fwd = forwarder(spool, MemoryOutput(lambda b: next(answers, None)), clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 1.0 and fwd.stats()["consecutive_failures"] == 1
    clock.t += 1
    assert fwd.step() == 0.0
    st = fwd.stats()
    assert st["consecutive_failures"] == 0 and st["sent"] == 1 and st["dead_lettered"] == 1
    assert spool.depth() == 0 and spool.dead_letters()[0]["reason"] == "bad field"
    assert st["requests"] == 2                 # nothing was left to send again
    assert st["next_attempt_in"] == 0.0


def test_an_answer_that_rejects_every_alert_is_no_success(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    answers = iter([SendResult(RETRY, status=503, error="HTTP 503"),
                    SendResult(RESEND, status=400, rejected={i: "mapping" for i in ids})])
    fwd = forwarder(spool, MemoryOutput(lambda b: next(answers, None)), clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 1.0
    clock.t += 1
    fwd.step()
    st = fwd.stats()
    assert st["consecutive_failures"] == 1 and st["sent"] == 0 and st["dead_lettered"] == 2


# -- confirmations the disk refuses ("a confirmation the disk refuses is kept in memory: that row
#    is never sent again, and the confirmation is retried with back-off (0.25 s doubling, at most
#    park_interval_s)") -------------------------------------------------------------------------

def test_a_refused_confirmation_is_kept_never_resent_and_retried_with_backoff(spool, clock, caplog):
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock, park_interval=1.0)
    spool.put_many([alert(i) for i in range(3)])
    acks = refuse_once(spool, "ack", times=3)
    with caplog.at_level(logging.WARNING, logger="sensor.delivery"):
        assert fwd.step() == 0.0
        assert out.ids == [alert(i)["id"] for i in range(3)]
        st = fwd.stats()
        assert st["ack_pending"] == 3 and st["ack_failures"] == 1 and st["sent"] == 3
        assert st["ack_retry_in"] == 0.25
        assert caplog.text.count("cannot record 3 delivered alert(s)") == 1
        assert sorted(fwd._delivery_state()) == sorted(r[0] for r in spool._db.execute("SELECT id FROM alerts"))
        # nothing else to send: wait for the retry, never send those rows again
        assert fwd.step() == 0.25
        assert len(out.calls) == 1 and len(acks) == 1
        clock.t += 0.3
        assert fwd.stats()["ack_retry_in"] == 0.0   # overdue: never negative
        clock.t -= 0.05
        assert fwd.step() == 0.5                   # refused again: the wait doubles
        assert len(acks) == 2 and fwd.stats()["ack_retry_in"] == 0.5
        assert caplog.text.count("still cannot record 3 delivered alert(s)") == 1
        clock.t += 0.5
        assert fwd.step() == 1.0                   # again: at most park_interval
        assert caplog.text.count("still cannot record") == 1   # said at the 1st, 5th, 10th, 50th
        clock.t += 1.0
        assert fwd.step() is IDLE                  # recorded at last
    assert len(out.calls) == 1 and spool.depth() == 0
    st = fwd.stats()
    assert st["ack_pending"] == 0 and st["ack_retry_in"] == 0.0 and st["ack_failures"] == 1
    assert "recorded 3 delivered alert(s) in the spool after the disk refused it" in caplog.text


def test_the_confirmation_wait_never_exceeds_park_interval(spool, clock, caplog):
    fwd = forwarder(spool, MemoryOutput(), clock, park_interval=2.0)
    spool.put(alert(1))
    refuse_once(spool, "ack", times=100)
    fwd.step()
    waits, said = [], []
    with caplog.at_level(logging.WARNING, logger="sensor.delivery"):
        for k in range(1, 52):
            clock.t += fwd.stats()["ack_retry_in"]
            waits.append(fwd.step())
            if caplog.text.count("still cannot record") > len(said):
                said.append(k)
    assert waits == [0.5, 1.0, 2.0] + [2.0] * 48
    assert said == [1, 5, 10, 50]  # the 1st, 5th and 10th refused retry are said, then every 50th


def _first_delivered_second_rejected(spool, clock, ids: list) -> tuple[MemoryOutput, Forwarder]:
    """Alerts 0 and 1 spooled; the receiver's one answer stores ids[0] and rejects ids[1]
    ("bad field", status 422); every later batch is accepted. Returns the output and forwarder."""
    answers = iter([SendResult(RESEND, status=400, delivered=[ids[0]], rejected={ids[1]: "bad field"},
                               item_status={ids[1]: 422})])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(0), alert(1)])
    return out, fwd


def test_a_refused_dead_letter_is_retried_with_its_reason_and_status(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    out, fwd = _first_delivered_second_rejected(spool, clock, ids)
    refuse_once(spool, "dead_letter")
    assert fwd.step() == 0.0
    st = fwd.stats()
    assert st["ack_pending"] == 1 and st["dead_lettered"] == 1
    assert fwd._delivery_state() == []             # not delivered: dropping it would lose it
    clock.t += 0.25
    assert fwd.step() is IDLE
    (d,) = spool.dead_letters()
    assert d["id"] == ids[1] and d["reason"] == "bad field" and d["status"] == 422
    assert spool.depth() == 0 and len(out.calls) == 1


def test_a_retry_the_disk_refuses_asks_it_once_and_waits_for_the_back_off(spool, clock):
    # docs/delivery.md: a confirmation the disk refuses is retried with back-off. A retry whose
    # acknowledgements the disk refused does not go on to write the dead letters at once (the
    # same full disk, asked again without the wait): they wait for the next retry with the rest
    ids = [alert(i)["id"] for i in range(2)]
    out, fwd = _first_delivered_second_rejected(spool, clock, ids)
    acks = refuse_once(spool, "ack", times=2)
    deads = refuse_once(spool, "dead_letter", times=1)
    assert fwd.step() == 0.0                       # both confirmations refused
    assert len(acks) == 1 and len(deads) == 1
    assert fwd.stats()["ack_pending"] == 2
    clock.t += 0.25
    assert fwd.step() == 0.5                       # the retry: the acknowledgement refused again
    assert len(acks) == 2 and len(deads) == 1      # ... and the disk was not asked a second time
    assert fwd.stats()["ack_pending"] == 2
    clock.t += 0.5
    assert fwd.step() is IDLE                      # the next retry records both
    assert len(acks) == 3 and len(deads) == 2
    (d,) = spool.dead_letters()
    assert d["id"] == ids[1] and d["reason"] == "bad field" and d["status"] == 422
    assert spool.depth() == 0 and fwd.stats()["ack_pending"] == 0 and len(out.calls) == 1


def test_a_refused_failure_count_never_stops_delivery(spool, clock):
    out = MemoryOutput(lambda b: SendResult(RETRY, status=503, error="HTTP 503"))
    fwd = forwarder(spool, out, clock)
    spool.put(alert(1))
    refuse_once(spool, "mark_failed")
    assert fwd.step() == 1.0
    st = fwd.stats()
    assert st["mark_failed_errors"] == 1 and st["retries"] == 1 and st["failed_attempts"] == 1


# -- threads -------------------------------------------------------------------------------------

def test_concurrency_is_the_number_of_workers(spool):
    fwd = Forwarder(spool, MemoryOutput(), DeliveryConfig(concurrency=3, linger=0.0))
    fwd.start()
    try:
        end = threading.Event()
        for _ in range(3000):               # guards a hang only: the workers start at once
            if len(fwd._workers) >= 2:
                break
            end.wait(0.01)
    finally:
        fwd.stop(60)
    assert not fwd.is_alive()
    assert len(fwd._workers) == 2           # and this thread: three in all
    assert all(t.daemon for t in fwd._workers)   # none holds the process open
    assert all(not t.is_alive() for t in fwd._workers)


def test_spool_errors_are_said_once_then_every_tenth_time(spool):
    fwd = Forwarder(spool, MemoryOutput(), DeliveryConfig(concurrency=1, park_interval=0.0, linger=0.0))
    calls, said = [], []

    def broken(*a, **kw):
        calls.append(1)
        if len(calls) >= 21:
            fwd._stop_event.set()
        raise SpoolError(f"spool {spool.path}: read failed: disk I/O error")

    class Said(logging.Handler):
        def emit(self, record):
            if "spool error" in record.getMessage():
                said.append(len(calls))

    spool.fetch = broken
    handler = Said(logging.CRITICAL)
    logging.getLogger("sensor.delivery").addHandler(handler)
    try:
        fwd._loop()
    finally:
        logging.getLogger("sensor.delivery").removeHandler(handler)
    assert len(calls) == 21 and said == [1, 10, 20]
    assert "disk I/O error" in fwd.stats()["last_error"]


def test_idle_upkeep_runs_every_second_while_the_spool_is_in_a_fault(spool, clock):
    # docs: "every second while the spool holds alerts in memory or is in its disk-full state"
    assert forwarder_mod.FAULT_POLL == 1.0
    fwd = forwarder(spool, MemoryOutput(), clock)
    assert fwd._spool_in_fault() is False
    spool._full_since = clock()             # the disk-full state, nothing held
    assert fwd._spool_in_fault() is True
    spool._full_since = None
    spool._held.append(("h-1", clock(), 2, b"{}", 0, "alert"))   # held in memory, state over
    assert fwd._spool_in_fault() is True
    spool._held.clear()


# -- 400s that name no alert (docs: "Failure handling") -------------------------------------------

def test_a_round_of_two_requests_that_accepted_nothing_is_a_failed_round(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    answers = iter([SendResult(RESEND, status=400, rejected={ids[0]: "mapping"}),
                    SendResult(BISECT, status=400, error="HTTP 400")])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 1.0                    # back-off, not "go on"
    st = fwd.stats()
    assert st["consecutive_failures"] == 1 and st["rejected_alone"] == 1 and st["requests"] == 2
    assert spool.ids() == [ids[1]] and [d["id"] for d in spool.dead_letters()] == [ids[0]]


def test_a_suspect_resent_into_an_outage_is_kept_and_backs_off(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),      # both
                    SendResult(BISECT, status=400, error="HTTP 400"),      # the first alone: set aside
                    None,                                                   # the second: accepted
                    SendResult(RETRY, status=503, error="HTTP 503")])     # the first again: outage
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 1.0
    assert out.calls == [ids, [ids[0]], [ids[1]], [ids[0]]]
    assert spool.ids() == [ids[0]] and spool.dead_letters() == []
    st = fwd.stats()
    assert st["sent"] == 1 and st["consecutive_failures"] == 1


def test_a_set_aside_alert_is_sent_again_when_its_time_is_up(spool, clock):
    answers = iter([None, None,                                  # two alerts accepted first
                    SendResult(BISECT, status=400, error="HTTP 400"),
                    SendResult(BISECT, status=400, error="HTTP 400")])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock, backoff_base=2.0)
    for i in (10, 11):
        spool.put(alert(i))
        assert fwd.step() == 0.0
    spool.put(alert(1))
    refuse_once(spool, "mark_failed")
    assert fwd.step() == 0.0                    # rejected alone in a round of one request: set aside
    assert fwd.stats()["mark_failed_errors"] == 1   # its attempt could not be counted: no matter
    assert fwd._suspects and fwd.step() is IDLE
    clock.t += 1.0
    assert fwd.step() is IDLE                   # still set aside (for backoff_base = 2 s)
    clock.t += 1.0                              # exactly when its time is up
    assert fwd.step() == 0.0                    # rejected alone again, nothing accepted between
    clock.t += 3.5
    assert fwd.step() is IDLE                   # set aside twice as long now: 4 s
    clock.t += 0.5
    assert fwd.step() == 0.0
    assert out.calls[2:] == [[alert(1)["id"]]] * 3 and spool.depth() == 0
    assert fwd._suspects == {}                  # delivered: not remembered any more


def test_a_dead_lettered_suspect_is_forgotten(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),
                    SendResult(BISECT, status=400, error="HTTP 400"),
                    None,
                    SendResult(BISECT, status=400, error="HTTP 400")])    # alone again: a verdict
    fwd = forwarder(spool, MemoryOutput(lambda b: next(answers, None)), clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 0.0
    assert [d["id"] for d in spool.dead_letters()] == [ids[0]] and spool.depth() == 0
    assert fwd._suspects == {}


def test_a_retry_after_a_lone_rejection_keeps_both(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),
                    SendResult(BISECT, status=400, error="HTTP 400"),      # the first alone
                    SendResult(RETRY, status=503, error="HTTP 503")])     # the second: outage
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 1.0
    assert spool.ids() == ids
    assert [it.attempts for it in spool.fetch(2)] == [1, 1]    # both counted a failed attempt


def test_a_batch_fills_up_past_alerts_set_aside(spool, clock):
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400")])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock, batch_size=2)
    spool.put(alert(0))
    assert fwd.step() == 0.0 and fwd._suspects          # set aside
    spool.put_many([alert(1), alert(2)])
    assert fwd.step() == 0.0
    assert out.calls[-1] == [alert(1)["id"], alert(2)["id"]]   # a full batch, not a short one


def test_the_age_cap_on_a_full_disk_does_not_stop_delivery(spool, clock):
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock, enforce_interval=0.0)
    spool.put(alert(1))
    calls = refuse_once(spool, "enforce")
    assert fwd.step() == 0.0 and out.ids == [alert(1)["id"]] and len(calls) == 1


def test_an_unexpected_error_never_ends_the_worker(spool):
    answers = iter([RuntimeError("output bug")])

    def script(batch):
        exc = next(answers, None)
        if exc is not None:
            raise exc
        return None

    out = MemoryOutput(script)
    fwd = Forwarder(spool, out, DeliveryConfig(concurrency=1, linger=0.0, backoff_base=0.01))
    spool.put(alert(1))
    fwd.start()
    try:
        assert fwd.wait_drained(60)        # 60 s guards a hang only
    finally:
        fwd.stop(60)
    assert out.ids == [alert(1)["id"]]
    assert "RuntimeError: output bug" in fwd.stats()["last_error"]


def test_a_new_spool_error_after_a_good_step_is_said_at_once(spool):
    fwd = Forwarder(spool, MemoryOutput(), DeliveryConfig(concurrency=1, park_interval=0.0, linger=0.0,
                                                          poll_interval=0.0))
    calls, said = [], []
    real = spool.fetch

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) >= 6:
            fwd._stop_event.set()
        if len(calls) == 4:
            return real(*a, **kw)          # the spool reads again: the episode is over
        raise SpoolError(f"spool {spool.path}: read failed: disk I/O error")

    class Said(logging.Handler):
        def emit(self, record):
            if "spool error" in record.getMessage():
                said.append(len(calls))

    spool.fetch = flaky
    handler = Said(logging.CRITICAL)
    logging.getLogger("sensor.delivery").addHandler(handler)
    try:
        fwd._loop()
    finally:
        logging.getLogger("sensor.delivery").removeHandler(handler)
    assert said == [1, 5]       # the first error of each episode


# -- what the module's mutation run found unchecked ------------------------------------------------

def test_an_outcome_the_forwarder_does_not_know_keeps_the_alerts_and_backs_off(spool, clock):
    # an output is only trusted to report; an answer outside the protocol is a failed attempt,
    # never a reason to drop the alerts or to raise out of the step
    out = MemoryOutput(lambda b: SendResult("teapot", status=418, error="HTTP 418"))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 1.0                         # the back-off of a first failed round
    st = fwd.stats()
    assert st["failed_attempts"] == 1 and st["retries"] == 1 and st["consecutive_failures"] == 1
    assert "unknown outcome 'teapot'" in st["last_error"]
    assert spool.depth() == 2 and spool.dead_letters() == []
    assert [it.attempts for it in spool.fetch(2)] == [1, 1]


def test_every_alert_set_aside_counts_the_failed_attempt_of_an_outage(spool, clock):
    # three alerts rejected alone, a fourth accepted after them (evidence for all three); the
    # first one asked again meets an outage: all three stay and count the failed attempt
    ids = [alert(i)["id"] for i in range(4)]
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400")] * 6
                   + [None, SendResult(RETRY, status=503, error="HTTP 503")])
    out = MemoryOutput(lambda b: next(answers))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(4)])
    assert fwd.step() == 1.0
    assert out.calls == [ids, ids[:2], [ids[0]], [ids[1]], ids[2:], [ids[2]], [ids[3]], [ids[0]]]
    assert spool.ids() == ids[:3] and spool.dead_letters() == []
    assert [it.attempts for it in spool.fetch(3)] == [1, 1, 1]


def test_at_the_bound_of_unconfirmed_rows_nothing_more_is_sent_until_the_retry(spool, clock, monkeypatch):
    # MAX_UNCONFIRMED delivered rows waiting for disk space: the forwarder sends nothing more
    # (it would only add to what the disk cannot record) and waits for the next confirmation try
    assert forwarder_mod.MAX_UNCONFIRMED == 100_000      # docs: "At most 100,000 such rows are kept"
    monkeypatch.setattr(forwarder_mod, "MAX_UNCONFIRMED", 2)
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(0), alert(1)])
    acks = refuse_once(spool, "ack", times=2)
    assert fwd.step() == 0.0 and fwd.stats()["ack_pending"] == 2
    spool.put(alert(2))
    assert fwd.step() == 0.25                        # the confirmation is due in 0.25 s
    assert out.calls == [[alert(0)["id"], alert(1)["id"]]]
    clock.t += 0.25
    assert fwd.step() == 0.5                         # refused again: still at the bound, waits longer
    assert len(acks) == 2 and len(out.calls) == 1
    clock.t += 0.5
    assert fwd.step() == 0.0                         # recorded: the third goes out
    assert out.ids == [alert(i)["id"] for i in range(3)] and fwd.stats()["ack_pending"] == 0


def test_the_spools_upkeep_runs_on_its_intervals_not_on_every_step(spool, clock):
    # each upkeep call costs the spool a query: the age cap every enforce_interval, the held
    # alerts and the disk-full state every MAINTAIN_INTERVAL (0.5 s), whatever the number of steps
    assert forwarder_mod.MAINTAIN_INTERVAL == 0.5
    fwd = forwarder(spool, MemoryOutput(), clock, enforce_interval=5.0)
    calls: dict[str, list[float]] = {"maintain": [], "enforce": []}
    for name, seen in calls.items():
        real = getattr(spool, name)

        def wrapper(*a, _real=real, _seen=seen, **kw):
            _seen.append(clock.t)
            return _real(*a, **kw)

        setattr(spool, name, wrapper)
    t0 = clock.t
    for dt in (0.0, 0.25, 0.25, 4.0, 0.25, 0.25):    # at t0, +0.25, +0.5, +4.5, +4.75, +5.0
        clock.t += dt
        assert fwd.step() is IDLE
    assert calls["maintain"] == [t0, t0 + 0.5, t0 + 4.5, t0 + 5.0]
    assert calls["enforce"] == [t0, t0 + 5.0]


def test_the_forwarder_takes_its_parts_by_name_and_its_hooks_by_name_only(spool, clock):
    out = MemoryOutput()
    fwd = Forwarder(spool=spool, output=out, config=DeliveryConfig(linger=0.0), clock=clock)
    assert fwd.spool is spool and fwd.output is out and fwd.clock is clock
    with pytest.raises(TypeError):
        Forwarder(spool, out, DeliveryConfig(), clock)   # a clock by position is a mistaken call


def test_a_batch_of_exactly_the_byte_budget_is_full_and_does_not_wait_for_the_linger(spool, clock):
    # docs: the linger "ends at once when the batch is full (batch_size alerts or batch_max_kb
    # spooled)"
    spool.put_many([alert(i) for i in range(3)])
    budget = sum(len(i.body) for i in spool.fetch(3))
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock, linger=5.0, batch_max_bytes=budget)
    assert fwd.step() == 0.0 and out.ids == [alert(i)["id"] for i in range(3)]
    spool.put_many([alert(i) for i in range(3, 5)])          # two: under the budget, it lingers
    assert fwd.step() == 5.0 and len(out.calls) == 1


def test_alerts_rejected_alone_are_remembered_up_to_a_bound(spool, clock, monkeypatch):
    # MAX_SUSPECTS alerts waiting for a second verdict at most: the oldest is forgotten first
    assert forwarder_mod.MAX_SUSPECTS == 10_000          # docs: "At most 10,000 alerts are set aside"
    monkeypatch.setattr(forwarder_mod, "MAX_SUSPECTS", 2)
    out = MemoryOutput(lambda b: SendResult(BISECT, status=400, error="HTTP 400"))
    fwd = forwarder(spool, out, clock)
    rowids = []
    for i in range(3):
        spool.put(alert(i))
        assert fwd.step() == 0.0                 # a round of one request: set aside
        rowids.append(spool.fetch(10)[-1].rowid)   # the alert just sent
        assert len(fwd._suspects) == min(i + 1, 2)
    assert list(fwd._suspects) == rowids[1:]


def test_an_alert_set_aside_and_then_accepted_is_reported_as_delivered(spool, clock):
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),
                    SendResult(BISECT, status=400, error="HTTP 400"),      # the first alone: set aside
                    None,                                                   # the second: accepted
                    None])                                                  # the first again: accepted
    delivered: list = []
    fwd = Forwarder(spool, MemoryOutput(lambda b: next(answers, None)),
                    DeliveryConfig(linger=0.0, enforce_interval=1e9), clock=clock, rng=lambda: 1.0,
                    on_delivered=delivered.extend)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 0.0
    assert delivered == [alert(1)["id"], alert(0)["id"]] and spool.depth() == 0


def test_the_idle_wait_is_a_second_while_the_spool_is_in_a_fault(spool, clock):
    # docs: one thread wakes every poll_interval (30 s) to re-read the spool, "every second while
    # the spool holds alerts in memory or is in its disk-full state"
    fwd = forwarder(spool, MemoryOutput(), clock, poll_interval=30.0)
    assert fwd.step() is IDLE                    # the first upkeep ran; the next is not due
    waits: list = []

    def wait_for_data(mark, timeout):
        waits.append(timeout)
        fwd._stop_event.set()
        return mark

    spool.wait_for_data = wait_for_data
    fwd._loop()
    spool._full_since = clock()                  # the disk-full state
    fwd._stop_event.clear()
    fwd._loop()
    spool._full_since = None
    assert waits == [30.0, 1.0]


def test_the_second_worker_is_called_only_while_rows_are_left(spool, clock):
    # docs: "The second worker joins only when the first one's fetch left rows behind"; once a
    # fetch holds every row there is, the call is withdrawn, so the second worker sleeps again
    # instead of waking to find nothing (a wake-up that never ends would spin it)
    fwd = forwarder(spool, MemoryOutput(), clock, batch_size=1)
    spool.put_many([alert(0), alert(1)])
    assert fwd.step() == 0.0 and fwd._help.is_set()          # a row left behind: help wanted
    assert fwd.step() == 0.0                                 # (stopped at its limit: maybe more)
    assert fwd.step() is IDLE and not fwd._help.is_set()     # nothing left: withdrawn
    assert fwd.step() is IDLE and not fwd._help.is_set()


def test_a_spool_that_cannot_be_read_is_not_waited_on_to_drain(spool, clock):
    # with nothing in flight or held in memory, an unreadable depth does not hold a stop's drain
    # for its whole timeout: what the spool holds stays there for the next start
    fwd = forwarder(spool, MemoryOutput(), clock)
    spool.put(alert(1))
    assert fwd.drained() is False

    def unreadable():
        raise SpoolError(f"spool {spool.path}: read failed: disk I/O error")

    spool.depth = unreadable
    assert fwd.drained() is True


def test_a_second_refused_confirmation_joins_the_waiting_ones(spool, clock, caplog):
    # docs: a fault is a state: said once when it begins; a confirmation refused while others
    # wait joins them, on their retry schedule (the back-off does not start over)
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock)
    acks = refuse_once(spool, "ack", times=2)
    with caplog.at_level(logging.WARNING, logger="sensor.delivery"):
        spool.put(alert(1))
        assert fwd.step() == 0.0 and fwd.stats()["ack_retry_in"] == 0.25
        clock.t += 0.1
        spool.put(alert(2))
        assert fwd.step() == 0.0 and len(acks) == 2        # sent, its confirmation refused too
        st = fwd.stats()
        assert st["ack_pending"] == 2 and st["ack_retry_in"] == pytest.approx(0.15)
        assert caplog.text.count("cannot record") == 1
        clock.t += 0.15
        assert fwd.step() is IDLE and spool.depth() == 0   # both recorded by the one retry
    assert out.ids == [alert(1)["id"], alert(2)["id"]]


def test_a_round_the_receiver_refused_alone_says_its_status(spool, clock):
    # docs: "400 or 422 without naming the alert": the status the receiver gave is the one the
    # round's error and the alert's failed attempt say
    out = MemoryOutput(lambda b: SendResult(BISECT, status=422, error="HTTP 422"))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 1.0                     # a failed round: nothing was accepted
    st = fwd.stats()
    assert st["last_error"].startswith("HTTP 422 for every request of the batch")
    errors = {r[0] for r in spool._db.execute("SELECT last_error FROM alerts")}
    assert errors == {"HTTP 422 for alert(s) sent alone: 2 set aside until the receiver accepts "
                      "something else"}


def test_a_second_lone_rejection_after_an_acceptance_is_a_verdict_at_once(spool, clock):
    answers = {0: SendResult(BISECT, status=400, error="HTTP 400"),      # a0 alone: set aside
               2: SendResult(BISECT, status=400, error="HTTP 400"),      # a0 + a2
               3: SendResult(BISECT, status=400, error="HTTP 400")}      # a0 alone again
    out = MemoryOutput(lambda b: answers.get(len(out.calls) - 1))
    fwd = forwarder(spool, out, clock)
    ids = [alert(i)["id"] for i in range(3)]
    spool.put(alert(0))
    assert fwd.step() == 0.0
    spool.put(alert(1))
    assert fwd.step() == 0.0                     # accepted: the evidence
    spool.put(alert(2))
    assert fwd.step() == 0.0
    assert out.calls == [[ids[0]], [ids[1]], [ids[0], ids[2]], [ids[0]], [ids[2]]]   # no extra ask
    assert [d["id"] for d in spool.dead_letters()] == [ids[0]] and spool.depth() == 0


def test_confirmations_waiting_at_stop_are_tried_once_more_and_said_if_still_refused(spool, clock, caplog):
    out = MemoryOutput()
    fwd = Forwarder(spool, out, DeliveryConfig(concurrency=1, linger=0.0, enforce_interval=1e9),
                    clock=clock)                 # a clock that stands still: no retry is due
    refuse_once(spool, "ack", times=1)
    spool.put(alert(1))
    assert fwd.daemon is True and fwd.name == "sensor-forwarder"   # never holds the process open
    fwd.start()
    try:
        end = threading.Event()
        for _ in range(6000):                    # guards a hang only
            if fwd.stats()["ack_pending"] == 1:
                break
            end.wait(0.01)
    finally:
        fwd.stop(60)
    assert not fwd.is_alive() and spool.depth() == 0 and fwd.stats()["ack_pending"] == 0
    assert out.ids == [alert(1)["id"]]
    # and when the disk still refuses at stop: said, and sent again after the next start
    fwd = Forwarder(spool, out, DeliveryConfig(concurrency=1, linger=0.0, enforce_interval=1e9),
                    clock=clock)
    refuse_once(spool, "ack", times=1000)
    spool.put(alert(2))
    with caplog.at_level(logging.WARNING, logger="sensor.delivery"):
        fwd.start()
        try:
            for _ in range(6000):
                if fwd.stats()["ack_pending"] == 1:
                    break
                end.wait(0.01)
        finally:
            fwd.stop(60)
    assert "1 delivered alert(s) could not be recorded in the spool (disk full)" in caplog.text
    assert spool.ids() == [alert(2)["id"]]


def _stop_at_the_first_wait(fwd: Forwarder) -> list:
    """The forwarder's loop stops at its first wait instead of sleeping; the list that is
    returned gets the delay of every wait asked for."""
    waits: list = []

    def wait(delay):
        waits.append(delay)
        fwd._stop_event.set()
        return True

    fwd._stop_event.wait = wait
    return waits


def test_a_spool_error_waits_park_interval_and_damage_waits_for_the_heal(spool, clock):
    fwd = forwarder(spool, MemoryOutput(), clock, park_interval=60.0)
    waits = _stop_at_the_first_wait(fwd)
    errors = iter([SpoolError("read failed: disk I/O error"), SpoolDamaged("read failed: malformed"),
                   SpoolDamaged("read failed: malformed")])

    def broken(*a, **kw):
        exc = next(errors, None)
        if exc is None:
            fwd._stop_event.set()
            spool.wake()                         # as stop() does: the idle wait ends at once
            return []
        raise exc

    spool.fetch = broken
    fwd._loop()                                  # a spool error: retried after park_interval
    assert waits == [60.0]
    heals = iter([False, True])
    healed: list = []
    spool.heal_if_due = lambda: healed.append(next(heals)) or healed[-1]
    fwd._stop_event.clear()
    fwd._loop()                                  # damage, not healed yet: the next heal's time
    assert waits == [60.0, forwarder_mod.HEAL_RETRY_INTERVAL] and healed == [False]
    fwd._stop_event.clear()
    fwd._loop()                                  # damage healed: on at once, no wait
    assert waits == [60.0, forwarder_mod.HEAL_RETRY_INTERVAL] and healed == [False, True]


def test_a_step_during_stop_never_withdraws_the_call_that_wakes_the_second_worker(spool, clock):
    # stop() sets the call so that a second worker sleeping on it wakes and exits; a step that
    # finds nothing meanwhile must leave it set, or that worker would sleep on (and hold the stop)
    fwd = forwarder(spool, MemoryOutput(), clock)
    fwd._stop_event.set()
    fwd._help.set()
    assert fwd.step() is IDLE and fwd._help.is_set()


def test_a_drain_sends_a_partial_batch_at_once(spool, clock):
    # docs: the linger ends at once "when the sensor stops (it drains: everything spooled is sent
    # at once)"
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock, linger=5.0)
    spool.put(alert(1))
    assert fwd.step() == 5.0 and out.calls == []        # a partial batch lingers
    fwd._draining = 1                                    # what wait_drained() sets
    assert fwd.step() == 0.0 and out.ids == [alert(1)["id"]]


def test_a_worker_never_waits_for_another_ones_confirmation_retry(spool, clock):
    # one worker at a time retries the confirmations the disk refused; another one finding it
    # busy goes on with its own work instead of waiting for the disk
    fwd = forwarder(spool, MemoryOutput(), clock)
    fwd._confirm_lock.acquire()
    try:
        t = threading.Thread(target=fwd._confirm_pending, args=(clock(),), daemon=True)
        t.start()
        t.join(60)                                       # guards a hang only
        assert not t.is_alive()
    finally:
        fwd._confirm_lock.release()


# -- what a round counts as accepted (docs: "Failure handling", 400 that names no alert) --------

def test_a_round_with_a_partial_delivery_is_no_failed_round(spool, clock):
    # docs: "A round of several requests in which the receiver accepted nothing is a failed round";
    # an answer that stores some alerts of the batch (protocol: `delivered`, whatever the outcome
    # says about the others) is an acceptance, so an alert rejected alone after it is only set aside
    ids = [alert(i)["id"] for i in range(3)]
    answers = iter([SendResult(RESEND, status=400, delivered=[ids[0]], rejected={ids[1]: "bad field"},
                               error="HTTP 400"),
                    SendResult(BISECT, status=400, error="HTTP 400")])       # the rest alone
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(3)])
    assert fwd.step() == 0.0                     # no back-off
    st = fwd.stats()
    assert st["consecutive_failures"] == 0 and st["sent"] == 1 and st["rejected_alone"] == 1
    assert out.calls == [ids, [ids[2]]]
    assert spool.ids() == [ids[2]] and [d["id"] for d in spool.dead_letters()] == [ids[1]]


def test_an_acceptance_early_in_a_round_still_counts_after_later_rejections(spool, clock):
    # the first half is accepted, then the second half and each of its alerts alone answer 400:
    # the receiver accepted something in this round, so it is no failed round
    ids = [alert(i)["id"] for i in range(3)]
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),        # all three
                    None,                                                     # the first: accepted
                    SendResult(BISECT, status=400, error="HTTP 400"),        # the other two
                    SendResult(BISECT, status=400, error="HTTP 400"),        # each alone
                    SendResult(BISECT, status=400, error="HTTP 400")])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(3)])
    assert fwd.step() == 0.0
    assert out.calls == [ids, [ids[0]], ids[1:], [ids[1]], [ids[2]]]
    st = fwd.stats()
    assert st["consecutive_failures"] == 0 and st["rejected_alone"] == 2
    assert spool.ids() == ids[1:] and spool.dead_letters() == []   # set aside, not dead-lettered


def test_a_partial_delivery_is_the_acceptance_a_second_verdict_needs(spool, clock):
    # docs: an alert rejected alone goes to dead-letter when it is rejected alone again "after the
    # receiver accepted something in between": an answer that stored one alert of its batch did
    ids = [alert(i)["id"] for i in range(3)]
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),        # all three
                    SendResult(BISECT, status=400, error="HTTP 400"),        # the first alone
                    SendResult(RESEND, status=400, delivered=[ids[1]], rejected={ids[2]: "bad field"},
                               error="HTTP 400"),                            # the other two
                    SendResult(BISECT, status=400, error="HTTP 400")])       # the first again
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(3)])
    assert fwd.step() == 0.0
    assert out.calls == [ids, [ids[0]], ids[1:], [ids[0]]]      # asked again at once
    assert sorted(d["id"] for d in spool.dead_letters()) == [ids[0], ids[2]]
    assert spool.depth() == 0 and fwd.stats()["sent"] == 1


def _the_first_alert_set_aside_then_answered(spool, clock, last: SendResult):
    """Alerts 0 and 1 spooled; the receiver splits the pair, then refuses alert 0 alone (a lone
    400: set aside), accepts alert 1, and answers `last` when alert 0 is asked again. Returns
    the output, the forwarder and the list its on_delivered fills."""
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),        # both
                    SendResult(BISECT, status=400, error="HTTP 400"),        # the first alone
                    None,                                                     # the second: accepted
                    last])
    delivered: list = []
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = Forwarder(spool, out, DeliveryConfig(linger=0.0, enforce_interval=1e9), clock=clock,
                    rng=lambda: 1.0, on_delivered=delivered.extend)
    spool.put_many([alert(i) for i in range(2)])
    return out, fwd, delivered


def test_an_alert_listed_as_delivered_is_delivered_whatever_the_outcome(spool, clock):
    # protocol: the outcome is for the alerts a result does not list as delivered or rejected;
    # an alert set aside and asked again that the answer lists as delivered is delivered, never
    # dead-lettered or sent again
    ids = [alert(i)["id"] for i in range(2)]
    out, fwd, delivered = _the_first_alert_set_aside_then_answered(
        spool, clock, SendResult(RESEND, status=400, delivered=[ids[0]], error="HTTP 400"))
    assert fwd.step() == 0.0
    assert len(out.calls) == 4 and delivered == [ids[1], ids[0]]
    assert spool.depth() == 0 and spool.dead_letters() == []
    st = fwd.stats()
    assert st["sent"] == 2 and st["dead_lettered"] == 0 and st["consecutive_failures"] == 0


def test_alerts_held_in_memory_or_being_committed_are_not_drained(spool, clock, monkeypatch):
    # drained(): "every spooled alert was delivered (or settled)": alerts the spool holds in
    # memory (a full disk) or is committing now are not delivered, even with its file empty
    fwd = forwarder(spool, MemoryOutput(), clock)
    assert spool.depth() == 0 and fwd.drained() is True
    real = spool.fault_stats
    for held, storing in ((3, 0), (0, 2), (3, 2)):
        monkeypatch.setattr(spool, "fault_stats", lambda h=held, s=storing: {**real(), "held": h, "storing": s})
        assert fwd.drained() is False, (held, storing)


@pytest.mark.parametrize("others", [{}, {"a-999999": "item 400 another alert's reason"}], ids=["alone", "among-others"])
def test_an_alert_set_aside_and_rejected_by_name_in_a_200_answer_is_dead_lettered(spool, clock, others):
    # protocol: an alert the result lists as rejected is rejected, whatever the outcome (an
    # Elasticsearch bulk answer is a 200 whose item for that alert is a 400); an alert set aside
    # after a lone 400 and rejected by name when asked again is dead-lettered with the
    # receiver's reason and its item's status: never counted as sent, never lost
    ids = [alert(i)["id"] for i in range(2)]
    why = "item 400 mapper_parsing_exception: failed to parse field [process.pid]"
    out, fwd, delivered = _the_first_alert_set_aside_then_answered(
        spool, clock, SendResult(OK, status=200, rejected={**others, ids[0]: why}, item_status={ids[0]: 400}))
    assert fwd.step() == 0.0
    assert len(out.calls) == 4 and delivered == [ids[1]]
    assert spool.depth() == 0
    (d,) = spool.dead_letters()
    assert d["id"] == ids[0] and d["reason"] == why and d["status"] == 400
    st = fwd.stats()
    assert st["sent"] == 1 and st["dead_lettered"] == 1


# -- dead letters say why (docs: "spool dead" lists rejected alerts "with their reason and HTTP
#    status"; the reason carries the receiver's error and the excerpt of its answer) ------------

def test_a_single_alert_too_large_is_dead_lettered_with_the_receivers_words(spool, clock):
    # docs: "413: ... A single alert that still gets 413 goes to dead-letter"
    error, detail = "HTTP 413 from https://siem.example/ingest", "body over the 1 MiB limit"
    out = MemoryOutput(lambda b: SendResult(SPLIT, status=413, error=error, detail=detail))
    fwd = forwarder(spool, out, clock)
    spool.put(alert(1))
    assert fwd.step() == 0.0
    (d,) = spool.dead_letters()
    assert d["id"] == alert(1)["id"] and d["status"] == 413
    assert "too large" in d["reason"] and error in d["reason"] and detail in d["reason"]
    assert spool.depth() == 0 and len(out.calls) == 1


def test_an_alert_set_aside_then_too_large_alone_is_dead_lettered_with_the_error(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    error = "HTTP 413 from https://siem.example/ingest"
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),        # both
                    SendResult(BISECT, status=400, error="HTTP 400"),        # the first alone
                    None,                                                     # the second: accepted
                    SendResult(SPLIT, status=413, error=error)])             # the first again: 413
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 0.0
    (d,) = spool.dead_letters()
    assert d["id"] == ids[0] and d["status"] == 413
    assert "too large" in d["reason"] and error in d["reason"]
    assert spool.depth() == 0 and out.calls[-1] == [ids[0]]


def test_a_second_lone_rejection_is_dead_lettered_with_the_receivers_words(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    error, detail = "HTTP 400 from https://siem.example/ingest", '{"error": "field event.n: not a date"}'
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),        # both
                    SendResult(BISECT, status=400, error="HTTP 400"),        # the first alone
                    None,                                                     # the second: accepted
                    SendResult(BISECT, status=400, error=error, detail=detail)])   # alone again
    fwd = forwarder(spool, MemoryOutput(lambda b: next(answers, None)), clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 0.0
    (d,) = spool.dead_letters()
    assert d["id"] == ids[0] and d["status"] == 400
    assert "rejected alone twice" in d["reason"] and error in d["reason"] and detail in d["reason"]
    st = fwd.stats()   # four requests: three refused (both, the first alone twice), two of them alone
    assert st["requests"] == 4 and st["failed_attempts"] == 3 and st["rejected_alone"] == 2


# -- the workers' waits --------------------------------------------------------------------------

def test_an_idle_poll_that_finds_no_new_alert_does_not_linger(spool, clock):
    # docs: the linger is the wait of a forwarder "woken by a commit"; the poll that finds nothing
    # new goes back to its upkeep at once ("every second while the spool ... is in its disk-full
    # state"), it does not wait a linger on top
    fwd = forwarder(spool, MemoryOutput(), clock, linger=5.0, poll_interval=30.0)
    assert fwd.step() is IDLE                    # the first upkeep ran; the next is not due
    spool._full_since = clock()                  # the disk-full state: polls every second
    waits: list = []
    new = [0]

    def wait_for_data(mark, timeout):
        waits.append(("poll", timeout))
        fwd._stop_event.set()
        return mark + new[0]

    def wait_for_volume(since, rows, nbytes, timeout, done=None):
        waits.append(("linger", timeout))
        return False

    spool.wait_for_data = wait_for_data
    spool.wait_for_volume = wait_for_volume
    fwd._loop()                                  # nothing new: back to the upkeep
    assert waits == [("poll", 1.0)]
    new[0] = 1                                   # a commit woke it: the batch fills for the linger
    fwd._stop_event.clear()
    fwd._loop()
    spool._full_since = None
    assert waits == [("poll", 1.0), ("poll", 1.0), ("linger", 5.0)]


def test_the_second_worker_helps_each_time_it_is_called_until_stop(spool, clock):
    # docs: the second worker "joins only when the first one's fetch left rows behind"; after
    # that work it sleeps again until the next such fetch, and ends on stop only
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock, batch_size=1)
    changed, asleep, ended = threading.Event(), threading.Event(), threading.Event()

    class Watched(threading.Event):
        def wait(self, timeout=None):
            asleep.set()
            changed.set()
            return super().wait(timeout)

    def work():
        try:
            fwd._loop(None)
        finally:
            ended.set()
            changed.set()

    fwd._help = Watched()
    helper = threading.Thread(target=work, daemon=True)
    helper.start()
    try:
        assert changed.wait(60) and asleep.is_set()          # 60 s guards a hang only
        for rnd in range(2):
            asleep.clear()
            changed.clear()
            spool.put_many([alert(3 * rnd + i) for i in range(3)])
            assert fwd.step() == 0.0                 # one alert; rows left behind: help called
            assert changed.wait(60)
            assert not ended.is_set() and asleep.is_set()   # helped (the other two), asleep again
            assert sorted(out.ids) == [alert(i)["id"] for i in range(3 * rnd + 3)]
            assert spool.depth() == 0
    finally:
        fwd.stop()
        helper.join(60)
    assert not helper.is_alive()


# -- confirmations the disk refuses, again ---------------------------------------------------------

def test_a_dead_letter_refused_again_on_its_retry_waits_longer_and_delivery_goes_on(spool, clock, caplog):
    # docs (Faults, disk full): "Delivery goes on. A confirmation the disk refuses is kept in
    # memory ... and retried with back-off (0.25 s doubling)"; a fault is a state, not an error
    ids = [alert(i)["id"] for i in range(3)]
    out, fwd = _first_delivered_second_rejected(spool, clock, ids)
    calls = refuse_once(spool, "dead_letter", times=2)
    with caplog.at_level(logging.WARNING, logger="sensor.delivery"):
        assert fwd.step() == 0.0 and fwd.stats()["ack_pending"] == 1
        spool.put(alert(2))
        clock.t += 0.25
        assert fwd.step() == 0.0                 # the retry refused again: the new alert goes out
        assert len(calls) == 2 and out.ids == [ids[0], ids[2]]
        st = fwd.stats()
        assert st["ack_pending"] == 1 and st["ack_retry_in"] == 0.5     # the wait doubled
        assert "still cannot record 1 delivered alert(s)" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        clock.t += 0.5
        assert fwd.step() is IDLE
    (d,) = spool.dead_letters()
    assert d["id"] == ids[1] and d["reason"] == "bad field" and d["status"] == 422
    assert spool.depth() == 0 and fwd.stats()["ack_pending"] == 0 and len(out.calls) == 2


# -- the linger (docs: "a partial batch is sent once its oldest alert has waited this long") -----

def test_a_partial_batch_waits_for_the_linger_of_its_oldest_alert(spool, clock):
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock, linger=5.0)
    spool.put(alert(0))
    clock.t += 3.0
    spool.put(alert(1))
    clock.t += 1.0
    assert fwd.step() == 1.0 and out.calls == []      # the oldest waited 4 s of 5
    clock.t += 1.0
    assert fwd.step() == 0.0 and out.ids == [alert(0)["id"], alert(1)["id"]]


def test_a_clock_that_stepped_back_never_holds_a_batch_past_the_linger(spool, clock):
    # docs, latency bound: an alert reaches the output at most the linger (and the commit delay
    # and one request) after it was committed, also when the clock was set back meanwhile
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock, linger=5.0)
    spool.put(alert(0))
    clock.t -= 0.5                                    # the alert looks half a second younger than now
    delay = fwd.step()
    assert delay is not IDLE and 0.0 <= delay <= 5.0
    clock.t += delay
    fwd.step()
    assert out.ids == [alert(0)["id"]]


# -- stop ----------------------------------------------------------------------------------------

def test_an_output_that_cannot_end_its_request_never_fails_the_stop(spool, clock, caplog):
    # stop() ends a request in flight through the output's abort(); an abort that fails is said,
    # and the stop goes on: the threads end, nothing raises to the caller
    class Output(MemoryOutput):
        def abort(self):
            raise RuntimeError("connection already gone")

    fwd = Forwarder(spool, Output(), DeliveryConfig(concurrency=1, linger=0.0, enforce_interval=1e9),
                    clock=clock)
    fwd.start()
    with caplog.at_level(logging.ERROR, logger="sensor.delivery"):
        fwd.stop(60)                             # 60 s guards a hang only
    assert not fwd.is_alive()
    assert "could not end the request in flight" in caplog.text


# -- rounds, waits and the stop ------------------------------------------------------------------

def test_an_unknown_outcome_after_a_lone_rejection_keeps_both(spool, clock):
    ids = [alert(i)["id"] for i in range(2)]
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400"),        # both
                    SendResult(BISECT, status=400, error="HTTP 400"),        # the first alone
                    SendResult("teapot", status=418, error="HTTP 418")])     # the second: unknown
    fwd = forwarder(spool, MemoryOutput(lambda b: next(answers, None)), clock)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == 1.0                     # one failed round, backed off
    assert spool.ids() == ids and spool.dead_letters() == []
    assert [it.attempts for it in spool.fetch(2)] == [1, 1]    # both counted the failed attempt


def test_after_a_413_on_two_alerts_batches_hold_one(spool, clock):
    # docs: "413: splits the batch in halves and sends smaller batches from then on"
    answers = iter([SendResult(SPLIT, status=413, error="HTTP 413")])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock, batch_size=8)
    spool.put_many([alert(0), alert(1)])
    assert fwd.step() == 0.0 and fwd.stats()["batch_cap"] == 1
    spool.put_many([alert(2), alert(3)])
    assert fwd.step() == 0.0
    assert out.calls[3:] == [[alert(2)["id"]]]


@pytest.mark.parametrize("base, aside", [(0.5, 0.5), (0.01, 0.05)])
def test_an_alert_rejected_alone_is_set_aside_for_the_backoff_base_at_least_50_ms(spool, clock, base, aside):
    # docs: set aside "for backoff_base_s, at least 0.05 s" after its first lone rejection
    answers = iter([SendResult(BISECT, status=400, error="HTTP 400")])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock, backoff_base=base)
    spool.put(alert(1))
    assert fwd.step() == 0.0 and len(out.calls) == 1     # rejected alone: set aside
    t0 = clock.t
    clock.t = t0 + aside * 0.9
    assert fwd.step() is IDLE and len(out.calls) == 1    # still set aside
    clock.t = t0 + aside
    assert fwd.step() == 0.0 and out.ids == [alert(1)["id"]]


def test_a_request_the_stop_ended_is_no_failure_and_is_said_once_per_alert(spool, clock, caplog):
    # docs (stop): a request still in flight is ended, "its alerts stay in the spool and are sent
    # after the next start"; it is no failed attempt of the receiver and starts no back-off
    ids = [alert(i)["id"] for i in range(2)]

    def script(batch):
        n = len(out.calls)
        if n <= 2:                                # both, then the first alone: 400
            return SendResult(BISECT, status=400, error="HTTP 400")
        if n == 3:                                # the second: accepted
            return None
        fwd._stop_event.set()                     # the first asked again: stop() ends it
        return SendResult(RETRY, error="request ended by the stop")

    out = MemoryOutput(script)
    fwd = forwarder(spool, out, clock)
    spool.put_many([alert(i) for i in range(2)])
    with caplog.at_level(logging.INFO, logger="sensor.delivery"):
        assert fwd.step() == 0.0                  # no wait: not a failure
    assert len(out.calls) == 4
    assert "delivery of 1 alert(s) ended by the stop" in caplog.text
    st = fwd.stats()
    assert st["consecutive_failures"] == 0 and st["retries"] == 0
    assert spool.ids() == [ids[0]] and [it.attempts for it in spool.fetch(1)] == [0]


@pytest.mark.parametrize("retry_after", [0.0, -5.0])
def test_a_retry_after_that_is_due_already_is_no_wait(spool, clock, retry_after):
    # docs: "Retry-After on 429/503 ... replaces the jittered wait": 0 s (or a date already past)
    # means now, never a negative wait
    answers = iter([SendResult(RETRY, status=503, retry_after=retry_after, error="HTTP 503")])
    out = MemoryOutput(lambda b: next(answers, None))
    fwd = forwarder(spool, out, clock)
    spool.put(alert(1))
    assert fwd.step() == 0.0
    st = fwd.stats()
    assert st["next_attempt_in"] == 0.0 and st["consecutive_failures"] == 1
    assert fwd.step() == 0.0 and out.ids == [alert(1)["id"]]


@pytest.mark.parametrize("elapsed, left", [(0.2, 0.3), (1.0, 0.0)])
def test_a_request_in_flight_when_its_round_failed_waits_only_what_is_left(spool, clock, elapsed, left):
    # docs: "requests already in flight when a failure was counted belong to that round and do not
    # count again, so the n-th failed round waits U(0, min(cap, base·2ⁿ⁻¹))": the round's one wait
    ids = [alert(i)["id"] for i in range(2)]
    inner: list = []

    def script(batch):
        if batch[0]["id"] == ids[0]:
            inner.append(fwd.step())              # another worker's request fails meanwhile
            clock.t += elapsed
        return SendResult(RETRY, status=503, error="HTTP 503")

    out = MemoryOutput(script)
    fwd = Forwarder(spool, out, DeliveryConfig(linger=0.0, enforce_interval=1e9, batch_size=1,
                                               backoff_base=1.0), clock=clock, rng=lambda: 0.5)
    spool.put_many([alert(i) for i in range(2)])
    assert fwd.step() == pytest.approx(left)
    assert inner == [0.5] and out.calls == [[ids[0]], [ids[1]]]
    st = fwd.stats()
    assert st["consecutive_failures"] == 1 and st["next_attempt_in"] == pytest.approx(left)


@pytest.mark.parametrize("base, wait", [(0.5, 0.5), (0.01, 0.05)])
def test_an_unexpected_error_is_tried_again_after_the_backoff_base_at_least_50_ms(spool, clock, base, wait):
    # docs (Failure handling): an output that raises: the alerts are kept and tried again after
    # backoff_base_s, at least 0.05 s
    calls: list = []

    def script(batch):
        calls.append(1)
        if len(calls) >= 50:                     # guards a spin only
            fwd._stop_event.set()
        raise RuntimeError("output bug")

    fwd = forwarder(spool, MemoryOutput(script), clock, backoff_base=base, concurrency=1)
    waits = _stop_at_the_first_wait(fwd)
    spool.put(alert(1))
    fwd._loop()
    assert waits == [wait] and len(calls) == 1 and spool.ids() == [alert(1)["id"]]
    assert fwd.stats()["last_error"] == "RuntimeError: output bug"


def test_a_worker_sleeps_through_a_backoff_shorter_than_a_second(spool, clock):
    # the back-off is a wait: a worker sleeps until it is over instead of stepping again and again
    out = MemoryOutput(lambda b: SendResult(RETRY, status=503, error="HTTP 503"))
    fwd = Forwarder(spool, out, DeliveryConfig(linger=0.0, enforce_interval=1e9, concurrency=1),
                    clock=clock, rng=lambda: 0.5)
    waits = _stop_at_the_first_wait(fwd)
    steps: list = []

    real_step = fwd.step

    def step():
        steps.append(1)
        if len(steps) >= 50:                     # guards a spin only
            fwd._stop_event.set()
        return real_step()

    fwd.step = step
    spool.put(alert(1))
    fwd._loop()
    assert waits == [0.5] and len(steps) == 1 and len(out.calls) == 1


def test_after_a_drain_a_partial_batch_lingers_again(spool, clock):
    # wait_drained(): "Meanwhile no batch waits for its linger"; once it returned, batches do
    out = MemoryOutput()
    fwd = forwarder(spool, out, clock, linger=5.0)
    assert fwd.wait_drained(60)                  # nothing spooled: drained at once
    spool.put(alert(1))
    assert fwd.step() == 5.0 and out.calls == []


def test_stop_waits_for_the_forwarder_thread_10_s_at_most(spool, clock):
    # docs/threads.md: the forwarder's stop is bounded by its join, 10 s
    fwd = forwarder(spool, MemoryOutput(), clock)
    joins: list = []
    fwd.is_alive = lambda: True                  # a thread that does not end
    fwd.join = lambda timeout=None: joins.append(timeout)
    fwd.stop()
    assert joins == [10.0]


def test_the_forwarder_thread_ends_only_after_its_workers(spool):
    # docs/threads.md: the forwarder's stop is bounded by its join; that join covers every worker,
    # so a forwarder thread that ended leaves no worker delivering behind it
    changed, joining, ended, helper_in, main_in, release = (threading.Event() for _ in range(6))

    class Output(MemoryOutput):
        def send_batch(self, alerts):
            if threading.current_thread().name == "sensor-forwarder":
                helper_in.wait(60)                # (guards a hang only) the other worker joins first
                main_in.set()                     # (the workers are all started by now)
            else:
                helper_in.set()
                release.wait(60)                  # a request of the second worker, in flight
            return super().send_batch(alerts)

    fwd = Forwarder(spool, Output(), DeliveryConfig(concurrency=2, batch_size=1, linger=0.0))
    real_run = fwd.run

    def run():
        try:
            real_run()
        finally:
            ended.set()
            changed.set()

    fwd.run = run
    spool.put_many([alert(i) for i in range(4)])
    fwd.start()
    try:
        assert helper_in.wait(60) and main_in.wait(60)
        (worker,) = fwd._workers
        real_join = worker.join

        def join(timeout=None):
            joining.set()
            changed.set()
            return real_join(timeout)

        worker.join = join
        fwd._stop_event.set()                     # what stop() does, before its own join
        fwd._help.set()
        spool.wake()
        assert changed.wait(60)
        assert joining.is_set() and not ended.is_set()   # it waits for the worker in flight
    finally:
        release.set()
        fwd.stop(60)
    assert not fwd.is_alive() and not worker.is_alive()
