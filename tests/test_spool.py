"""The SQLite spool: durable, bounded, thread-safe, no pickle."""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from sensor.deliver.spool import Spool

REPO = Path(__file__).resolve().parents[1]


def alert(i: int, pad: int = 0) -> dict:
    return {"id": f"a-{i:06d}", "timestamp": "2026-08-20T10:11:12.345Z", "rule": {"id": "r", "title": "t"},
            "event": {"Image": "C:\\x.exe", "ProcessId": i, "pad": "x" * pad}}


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_pragmas_wal_and_full(tmp_path):
    sp = Spool(tmp_path / "s.db")
    assert sp._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sp._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    sp.close()


def test_put_fetch_ack_roundtrip_and_reopen(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path) as sp:
        assert sp.put_many([alert(i) for i in range(5)]) == 5
        items = sp.fetch(3)
        assert [it.alert_id for it in items] == ["a-000000", "a-000001", "a-000002"]
        assert items[0].decode() == alert(0)
        assert sp.ack([items[0].rowid, items[1].rowid]) == 2
    with Spool(path) as sp:  # survives close/reopen
        assert sp.ids() == ["a-000002", "a-000003", "a-000004"]
        st_ = sp.stats()
        assert st_["depth"] == 3 and st_["written"] == 5
        assert st_["bytes"] == sum(len(msgspec.json.encode(alert(i))) for i in (2, 3, 4))


def test_bodies_are_json_not_pickle(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put(alert(1))
    raw = sqlite3.connect(tmp_path / "s.db").execute("SELECT body FROM alerts").fetchone()[0]
    assert raw.startswith(b"{") and msgspec.json.decode(raw)["id"] == "a-000001"
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol header


def test_duplicate_id_is_stored_once_and_counted(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put(alert(1)) is True
        assert sp.put(alert(1)) is False
        assert sp.depth() == 1 and sp.stats()["duplicates"] == 1


def test_alert_without_id_gets_one(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put({"rule": {"id": "r"}, "event": {}})
        (item,) = sp.fetch(10)
        assert item.decode()["id"] == item.alert_id and len(item.alert_id) == 36


def test_fetch_respects_byte_budget_but_returns_at_least_one(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i, pad=1000) for i in range(10)])
        assert len(sp.fetch(10, max_bytes=2500)) == 2
        assert len(sp.fetch(10, max_bytes=10)) == 1


def test_byte_cap_drops_oldest_counts_and_emits_health(tmp_path, caplog):
    seen = []
    one = len(msgspec.json.encode(alert(0, pad=900)))
    with Spool(tmp_path / "s.db", max_bytes=one * 10 + 50, on_health=seen.append) as sp:
        with caplog.at_level(logging.WARNING, logger="sensor.spool"):
            for i in range(15):
                sp.put(alert(i, pad=900))
        ids = sp.ids()
        st_ = sp.stats()
        assert st_["dropped"] >= 5
        assert st_["bytes"] <= sp.max_bytes
        # Oldest went first: what is left is the newest alerts plus the health alert.
        kept = [i for i in ids if i.startswith("a-")]
        assert kept == [f"a-{i:06d}" for i in range(15 - len(kept), 15)]
        assert "a-000014" in kept and "a-000000" not in kept
        events = sp.health_events()
        assert events and events[0]["kind"] == "spool_overflow"
        assert sum(e["count"] for e in events) == st_["dropped"]
        assert seen and seen[0]["event"] == "spool_overflow"
        health = [it.decode() for it in sp.fetch(100) if not it.alert_id.startswith("a-")]
        assert health and health[0]["type"] == "health" and health[0]["health"]["event"] == "spool_overflow"
        assert "dropped the" in caplog.text


def test_age_cap_expires_old_alerts(tmp_path):
    clock = FakeClock()
    with Spool(tmp_path / "s.db", max_age=60, clock=clock, health_alerts=False) as sp:
        sp.put_many([alert(i) for i in range(3)])
        clock.t += 30
        sp.put(alert(3))
        clock.t += 45  # the first three are now 75 s old, the fourth 45 s
        assert sp.enforce() == 3
        assert sp.ids() == ["a-000003"]
        st_ = sp.stats()
        assert st_["expired"] == 3 and st_["dropped"] == 3
        assert sp.health_events()[0]["kind"] == "spool_expired"


def test_health_events_coalesce(tmp_path):
    clock = FakeClock()
    one = len(msgspec.json.encode(alert(0, pad=500)))
    with Spool(tmp_path / "s.db", max_bytes=one * 3, clock=clock, health_alerts=False) as sp:
        for i in range(10):
            sp.put(alert(i, pad=500))
            clock.t += 1
        events = sp.health_events()
        assert len(events) == 1 and events[0]["count"] == sp.stats()["dropped"] == 7
        clock.t += 120
        sp.put(alert(99, pad=500))
        assert len(sp.health_events()) == 2


def test_dead_letter_move_list_and_requeue(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(3)])
        items = sp.fetch(3)
        assert sp.dead_letter([(items[1].rowid, "bad field", 400)]) == 1
        assert sp.ids() == ["a-000000", "a-000002"]
        dead = sp.dead_letters()
        assert dead[0]["id"] == "a-000001" and dead[0]["status"] == 400 and dead[0]["alert"] == alert(1)
        assert sp.stats()["dead_lettered"] == 1 and sp.stats()["dead_letter_depth"] == 1
        assert sp.requeue_dead(["a-000001"]) == 1
        assert set(sp.ids()) == {"a-000000", "a-000001", "a-000002"}
        assert sp.dead_letters() == []


def test_dead_letter_is_bounded(tmp_path):
    with Spool(tmp_path / "s.db", dead_max_rows=2) as sp:
        sp.put_many([alert(i) for i in range(4)])
        sp.dead_letter([(it.rowid, "x", 400) for it in sp.fetch(4)])
        assert [d["id"] for d in sp.dead_letters()] == ["a-000003", "a-000002"]
        assert sp.stats()["dead_dropped"] == 2


def test_threads_write_and_ack_concurrently(tmp_path):
    sp = Spool(tmp_path / "s.db")
    n = 400
    errors: list[BaseException] = []
    acked: list[str] = []

    def writer() -> None:
        try:
            for i in range(n):
                sp.put(alert(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            deadline = time.monotonic() + 30
            while len(acked) < n and time.monotonic() < deadline:
                items = sp.fetch(50)
                if not items:
                    time.sleep(0.001)
                    continue
                sp.ack([it.rowid for it in items])
                acked.extend(it.alert_id for it in items)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(acked) == [f"a-{i:06d}" for i in range(n)]
    assert sp.depth() == 0 and sp.stats()["bytes"] == 0
    sp.close()


_WRITER = r"""
import sys
from sensor.deliver.spool import Spool
sp = Spool(sys.argv[1], sync=sys.argv[2] if len(sys.argv) > 2 else "full")
i = 0
while True:
    sp.put({"id": f"k-{i:07d}", "event": {"n": i, "pad": "y" * 300}})
    print(f"k-{i:07d}", flush=True)   # printed only after the commit returned
    i += 1
"""


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sigkill_while_writing_loses_no_committed_alert(tmp_path, sync):
    """Whatever [spool] sync says, a kill of the process loses no committed alert (``normal``
    gives up only the power-cut guarantee: the WAL is in the OS's cache when the process dies)."""
    db = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), sync], stdout=subprocess.PIPE,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    committed = []
    assert proc.stdout is not None
    while len(committed) < 200:
        line = proc.stdout.readline()
        assert line, "writer died"
        committed.append(line.decode().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    committed += [ln.decode().strip() for ln in proc.stdout.read().splitlines() if ln.strip()]
    proc.stdout.close()
    with Spool(db) as sp:
        assert sp._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = set(sp.ids())
        assert set(committed) <= stored
        assert sp.stats()["bytes"] == sp._db.execute("SELECT SUM(size) FROM alerts").fetchone()[0]


def test_sync_setting_is_what_every_transaction_commits_with(tmp_path):
    """full (the default): new alerts commit with synchronous=FULL, confirmations switch to NORMAL
    for their own transaction only; normal: NORMAL throughout. Anything else is refused."""
    levels = {}
    for sync in ("full", "normal"):
        with Spool(tmp_path / f"{sync}.db", sync=sync) as sp:
            sp.put(alert(1))
            seen = [sp._db.execute("PRAGMA synchronous").fetchone()[0]]
            sp.ack([r.rowid for r in sp.fetch(10)])
            seen.append(sp._db.execute("PRAGMA synchronous").fetchone()[0])
            levels[sync] = seen
    assert levels == {"full": [2, 2], "normal": [1, 1]}
    with pytest.raises(ValueError, match="sync must be one of full, normal"):
        Spool(tmp_path / "x.db", sync="off")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "ack", "dead", "requeue"]), st.integers(0, 30),
                          st.integers(0, 400)), max_size=40))
def test_byte_counter_always_matches_the_rows(tmp_path_factory, ops):
    one = len(msgspec.json.encode(alert(0, pad=200)))
    path = tmp_path_factory.mktemp("prop") / "s.db"
    with Spool(path, max_bytes=one * 8, health_alerts=False) as sp:
        for op, k, pad in ops:
            if op == "put":
                sp.put(alert(k, pad=pad))
            elif op == "ack":
                sp.ack([it.rowid for it in sp.fetch(k % 4 + 1)])
            elif op == "dead":
                sp.dead_letter([(it.rowid, "x", 400) for it in sp.fetch(k % 3 + 1)])
            else:
                sp.requeue_dead()
            total = sp._db.execute("SELECT COALESCE(SUM(size), 0) FROM alerts").fetchone()[0]
            assert sp.stats()["bytes"] == total <= sp.max_bytes


def test_confirmations_skip_fsync_but_alert_writes_stay_full(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put(alert(1))
        sp.ack([it.rowid for it in sp.fetch(1)])
        sp.mark_failed([1], "x")
        # The NORMAL used for deletes is switched back before the next alert write.
        assert sp._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_fetch_excludes_ranges_in_flight(tmp_path):
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(10)])
        first = sp.fetch(4)
        rest = sp.fetch(4, exclude=[(first[0].rowid, first[-1].rowid)])
        assert [i.alert_id for i in rest] == [f"a-{i:06d}" for i in range(4, 8)]


def test_ack_and_mark_failed_cover_every_row_of_large_batches(tmp_path):
    # ack() and mark_failed() work in chunks of SQL parameters: sizes at and around the chunk
    # boundary must touch every row they are given, no more and no less
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i) for i in range(1601)])
        items = sp.fetch(2000)
        assert len(items) == 1601
        sp.mark_failed([it.rowid for it in items[:1001]], "HTTP 503")
        attempts = dict(sp._db.execute("SELECT id, attempts FROM alerts").fetchall())
        assert [attempts[it.rowid] for it in items] == [1] * 1001 + [0] * 600
        for n in (500, 501, 499, 1):
            batch = sp.fetch(n)
            assert sp.ack([it.rowid for it in batch]) == n
        assert sp.depth() == 1601 - 1501
        assert sp.ack([it.rowid for it in sp.fetch(1000)]) == 100
        assert sp.depth() == 0 and sp.stats()["bytes"] == 0


@pytest.mark.parametrize("returning", [True, False])
def test_acknowledged_rows_leave_the_counters_with_or_without_delete_returning(tmp_path, monkeypatch, returning):
    # DELETE ... RETURNING needs SQLite 3.35; older libraries take the SELECT + DELETE path
    from sensor.deliver import spool as spool_mod
    monkeypatch.setattr(spool_mod, "_RETURNING", returning)
    with Spool(tmp_path / "s.db") as sp:
        sp.put_many([alert(i, pad=100 * i) for i in range(6)])
        sp.put(alert(0))                                  # a duplicate: counted, not stored
        full, full_rows = sp.stats(), sp._counter("rows")
        rows = [it.rowid for it in sp.fetch(10)]
        assert sp.ack(rows[:4] + [10_000]) == 4           # an unknown row id is no row
        st, st_rows = sp.stats(), sp._counter("rows")
        left = sum(len(it.body) for it in sp.fetch(10))
    assert full["written"] == 6 and full["duplicates"] == 1 and full["depth"] == full_rows == 6
    assert st["depth"] == st_rows == 2 and st["bytes"] == left


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 300)), max_size=6), min_size=1, max_size=6))
def test_counters_follow_the_rows_whatever_ids_a_commit_repeats(tmp_path_factory, batches):
    # One commit's rows go in with one statement; the ids already spooled (or repeated within the
    # commit) are ignored, and the counters must count exactly the rows that went in.
    path = tmp_path_factory.mktemp("dup") / "s.db"
    seen: set[int] = set()
    with Spool(path) as sp:
        for batch in batches:
            new = len({i for i, _ in batch} - seen)
            assert sp.put_many([alert(i, pad) for i, pad in batch]) == new
            seen |= {i for i, _ in batch}
        st_, rows = sp.stats(), sp._counter("rows")
        depth, total = sp._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM alerts").fetchone()
    n = sum(len(b) for b in batches)
    assert depth == rows == len(seen)
    assert st_["bytes"] == total and st_["depth"] == depth
    assert st_["written"] == len(seen) and st_["duplicates"] == n - len(seen)
