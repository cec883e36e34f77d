"""The bounded hand-off queue: never blocks the producer, counts drops, batches."""
from __future__ import annotations

import threading

from sensor.daemon.queues import BoundedQueue


def test_drop_when_full():
    q = BoundedQueue(3)
    assert all(q.put(i) for i in range(3))
    assert q.put(99) is False
    assert q.stats() == {"depth": 3, "capacity": 3, "accepted": 3, "dropped": 1, "high_water": 3}
    assert q.get_batch(10, 0) == [0, 1, 2]


def test_get_batch_waits_for_first_item():
    # no timeout: only the put can wake the consumer (the join's 60 s guards against a hang)
    q = BoundedQueue(10)
    got = []
    t = threading.Thread(target=lambda: got.append(q.get_batch(5, None)), daemon=True)
    t.start()
    q.put("x")
    t.join(60)
    assert not t.is_alive() and got == [["x"]]


def test_put_wait_waits_for_room():
    q = BoundedQueue(1)
    q.put(1)
    threading.Timer(0.05, q.get_batch, args=(1, 0)).start()
    assert q.put_wait(2, timeout=60.0)         # 60 s only guards a hang
    assert q.put_wait(3, timeout=0.05) is False and q.dropped == 1


def test_many_producers_lose_nothing_below_capacity():
    q = BoundedQueue(100_000)
    threads = [threading.Thread(target=lambda k=k: [q.put((k, i)) for i in range(5000)]) for k in range(4)]
    for t in threads:
        t.start()
    got = []
    while len(got) < 20000:
        got += q.get_batch(1000, 1.0)
    for t in threads:
        t.join()
    assert len(set(got)) == 20000 and q.dropped == 0


def test_a_producer_waiting_for_room_gives_up_when_the_queue_is_closed():
    # The consumer is gone for good (the pipeline stopped): nobody will make room, so a producer
    # waiting without a timeout must not wait forever.
    q = BoundedQueue(1)
    q.put(1)
    got = []
    t = threading.Thread(target=lambda: got.append(q.put_wait(2)), daemon=True)
    t.start()
    while not q._space._waiters and t.is_alive():   # it waits for room
        t.join(0.01)
    q.close()
    t.join(60)                                       # 60 s only guards a hang
    assert not t.is_alive() and got == [False] and q.dropped == 1


def test_capacity_must_be_at_least_one_item():
    # a queue that can hold nothing would drop every start: refused when it is made
    for bad in (0, -1):
        try:
            BoundedQueue(bad)
        except ValueError as e:
            assert "at least 1" in str(e)
        else:
            raise AssertionError(f"maxsize {bad} was accepted")
    q = BoundedQueue(1)
    assert q.put("a") is True and q.put("b") is False
    assert q.get_batch(5, 0) == ["a"]


def test_high_water_is_the_most_items_waiting_at_once():
    q = BoundedQueue(4)
    assert q.stats() == {"depth": 0, "capacity": 4, "accepted": 0, "dropped": 0, "high_water": 0}
    q.put(1)
    assert q.stats()["high_water"] == 1
    q.put(2)
    q.put(3)
    assert q.get_batch(10, 0) == [1, 2, 3]
    q.put(4)                                  # fewer waiting than before: the mark stays
    assert q.stats() == {"depth": 1, "capacity": 4, "accepted": 4, "dropped": 0, "high_water": 3}


class _Clock:
    """A monotonic clock that does not move (a coarse clock between two ticks); it refuses to
    be read more often than a put_wait that does not spin needs."""

    def __init__(self, reads_allowed):
        self.reads_left = reads_allowed

    def monotonic(self):
        self.reads_left -= 1
        if self.reads_left < 0:
            raise AssertionError("put_wait keeps reading a clock that does not move: it spins")
        return 1000.0


def test_put_wait_with_no_time_left_drops_at_once_even_if_the_clock_has_not_moved(monkeypatch):
    # a timeout of 0 (or less) means: room now or dropped; it must not spin until the clock ticks
    import sensor.daemon.queues as queues
    for timeout in (0, 0.0, -0.5, -1):
        q = BoundedQueue(1)
        q.put(1)
        monkeypatch.setattr(queues, "time", _Clock(reads_allowed=2))  # the deadline and one check
        assert q.put_wait(2, timeout=timeout) is False
        assert q.dropped == 1 and q.get_batch(5, 0) == [1]


def test_put_wait_with_less_than_a_second_left_still_waits_for_room(monkeypatch):
    # The clock stands still, so the 0.5 s never run out: only room can end the wait, and a
    # consumer makes room once the producer waits (the join's 60 s only guards against a hang).
    import sensor.daemon.queues as queues
    monkeypatch.setattr(queues, "time", _Clock(reads_allowed=10_000))
    q = BoundedQueue(1)
    q.put(1)
    got = []
    t = threading.Thread(target=lambda: got.append(q.put_wait(2, timeout=0.5)), daemon=True)
    t.start()
    while not q._space._waiters and t.is_alive():   # it waits for room
        t.join(0.01)
    taken = q.get_batch(5, 0)
    t.join(60)
    assert not t.is_alive() and got == [True] and taken == [1]
    assert q.get_batch(5, 0) == [2] and q.dropped == 0


class _RacedEvent(threading.Event):
    """The consumer's event, with `race` run just before get_batch clears it (a put, wake or
    close from another thread at the worst moment: after the first check, before the clear
    erases the event it set). A wait on a cleared event is counted and returns at once: in this
    single-threaded test nothing else could ever set it, so the real wait would never end."""

    def __init__(self, race=None):
        super().__init__()
        self.race = race
        self.waits_that_never_end = 0

    def clear(self):
        race, self.race = self.race, None
        if race:
            race()
        super().clear()

    def wait(self, timeout=None):
        if not self.is_set():
            self.waits_that_never_end += 1
            return False
        return True


def test_a_put_wake_or_close_racing_the_consumer_is_not_lost():
    # docs/threads.md: get_batch clears its event, then checks the queue, the closed flag and
    # the wake flag again before it waits; each of put, wake and close is seen
    for race, expected in (("put", ["x"]), ("wake", []), ("close", [])):
        q = BoundedQueue(4)
        q._ready = ev = _RacedEvent()
        ev.race = {"put": lambda: q.put("x"), "wake": q.wake, "close": q.close}[race]
        assert q.get_batch(5, None) == expected, race
        assert ev.waits_that_never_end == 0, race


def test_a_wake_before_the_consumer_waits_is_kept_for_its_next_get_batch():
    # wake() between batches (a new rule set): the next get_batch returns at once, once
    q = BoundedQueue(4)
    q._ready = ev = _RacedEvent()
    q.wake()
    assert q.get_batch(5, None) == [] and ev.waits_that_never_end == 0
    assert q.get_batch(5, None) == [] and ev.waits_that_never_end == 1   # spent: it would wait
