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
