"""Damage is salvaged, not fatal: real SQLite files cut, overwritten and bit-flipped; a lost -wal
after SIGKILL; the sensor as a process starting on a damaged spool."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sensor.deliver.forwarder import DeliveryConfig, Forwarder
from sensor.deliver.outputs import build_output
from sensor.deliver.salvage import ScanReport, scan
from sensor.deliver.spool import WAL_AUTOCHECKPOINT, Spool, SpoolDamaged
from sensor.testing.receiver import Receiver, sample_alert

REPO = Path(__file__).resolve().parents[1]
N = 300


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def make_spool(path: Path, n: int = N, acked: int = 0, alerts: list | None = None) -> list[str]:
    """A closed spool holding ``n`` alerts, the first ``acked`` of them confirmed (deleted)."""
    with Spool(path, owner=True) as sp:
        sp.put_many(alerts if alerts is not None else [sample_alert(i) for i in range(n)])
        if acked:
            sp.ack([it.rowid for it in sp.fetch(acked)])
        ids = sp.ids()
    assert not Path(str(path) + "-wal").exists()  # closed cleanly: everything is in the main file
    return ids


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    rnd = random.Random(7)
    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(size * 6 // 10 + 123)
    elif how == "random_4k_mid_file":
        overwrite(path, size // 2 - 1000, rnd.randbytes(4096))
    elif how == "header_overwritten":
        overwrite(path, 0, rnd.randbytes(100))
    elif how == "first_page_overwritten":  # the header and the schema
        overwrite(path, 0, rnd.randbytes(4096))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "random_4k_mid_file", "header_overwritten", "first_page_overwritten"])
def test_a_damaged_spool_is_moved_aside_and_its_rows_recovered(tmp_path, how, caplog):
    path = tmp_path / "spool.sqlite"
    ids = make_spool(path, acked=50)
    assert len(ids) == N - 50
    damage(path, how)
    with pytest.raises(SpoolDamaged, match="moves a damaged spool aside"):
        Spool(path)  # only the owner (the running sensor) salvages: a reader is told why it cannot
    events = []
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        sp = Spool(path, owner=True, on_health=events.append)
    info = sp.salvage
    assert info is not None
    aside = Path(info["moved_to"])
    assert aside.exists() and aside.name.startswith("spool.sqlite.damaged-") and aside.parent == tmp_path
    everything = {sample_alert(i)["id"] for i in range(N)}
    recovered = [i for i in sp.ids() if i in everything]
    assert len(recovered) == info["recovered"] > 0
    if how == "first_page_overwritten":
        # the schema is gone, so are the tree and the freelist: stale copies of confirmed alerts
        # may come back (a duplicate, never a loss); every live one is there
        assert set(ids) <= set(recovered) <= everything
        # more rows back than the file counted: duplicates, not losses, and no negative count
        assert info["recovered"] > len(ids) and info["lost"] == 0
        assert "; 0 lost" in caplog.text
    else:
        assert set(recovered) <= set(ids)  # nothing made up, no confirmed alert brought back
    if how == "header_overwritten":
        assert info["recovered"] == len(ids) and info["walked"]  # the rows themselves were untouched
    if info["lost"] is not None and how != "first_page_overwritten":
        assert info["recovered"] + info["damaged"] + info["lost"] == len(ids)
    assert f"recovered {info['recovered']} alert(s)" in caplog.text
    health = [it.decode() for it in sp.fetch(1000) if it.alert_id not in everything]
    assert [h["health"]["event"] for h in health] == ["spool_salvaged"]
    assert health[0]["health"]["recovered"] == info["recovered"]
    assert events and events[-1]["event"] == "spool_salvaged"
    assert sp._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sp.stats()["salvaged"] == info["recovered"]
    sp.close()


def test_the_scanner_reads_committed_rows_from_the_wal_too(tmp_path):
    path = tmp_path / "s.sqlite"
    sp = Spool(path)
    sp.put_many([sample_alert(i) for i in range(10)])
    sp.put(sample_alert(99))  # a small commit the automatic checkpoint leaves in the WAL
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(path.read_bytes())
    Path(str(copy) + "-wal").write_bytes(Path(str(path) + "-wal").read_bytes())
    sp.close()
    report = ScanReport()
    uids = {v[1] for _, v in scan(str(copy), str(copy) + "-wal", report) if len(v) == 10}
    assert sample_alert(99)["id"] in uids and len(uids) == 11 and report.wal_frames > 0
    uids = {v[1] for _, v in scan(str(copy), None) if len(v) == 10}
    assert sample_alert(99)["id"] not in uids  # without the WAL that commit is not there


def test_flipped_bytes_never_reach_the_receiver_as_alerts(tmp_path):
    path = tmp_path / "spool.sqlite"
    originals = {a["id"]: a for a in (sample_alert(i) for i in range(N))}
    make_spool(path, alerts=list(originals.values()))
    size = path.stat().st_size
    rnd = random.Random(16)
    with open(path, "r+b") as fh:
        for off in rnd.sample(range(8192, size), 16):  # 16 random bytes, past the schema page
            fh.seek(off)
            b = fh.read(1)[0]
            fh.seek(off)
            fh.write(bytes([b ^ (1 << rnd.randrange(8))]))
    sp = Spool(path, owner=True)
    with Receiver(keep_documents=True) as rec:
        out = build_output({"url": rec.url, "ca_file": str(rec.ca_file), "document": "alert"})
        fwd = Forwarder(sp, out, DeliveryConfig(linger=0, batch_size=50))
        fwd.start()
        try:
            assert fwd.wait_drained(60)
        finally:
            fwd.stop()
            out.close()
        delivered = {d["id"]: d for d in rec.documents() if d.get("type") != "health"}
    dead = {d["id"]: d for d in sp.dead_letters(1000)}
    # Every alert that arrived is exactly the alert that was spooled: damage is caught by the
    # checksum (or the salvage) and goes to dead letters with its reason, never to the SIEM.
    for uid, doc in delivered.items():
        assert msgspec.json.decode(msgspec.json.encode(doc)) == \
            msgspec.json.decode(msgspec.json.encode(originals[uid])), f"damaged alert {uid} was delivered"
    assert dead, "16 flipped bytes damaged no row?"
    assert all("checksum" in d["reason"] or "damaged" in d["reason"] or "JSON" in d["reason"] for d in dead.values())
    salvage = sp.salvage or {}
    accounted = len(delivered) + len(dead) + (salvage.get("lost") or 0)
    assert accounted == N or salvage.get("lost") is None
    sp.close()


_WRITER = r"""
import sys
from sensor.deliver.spool import Spool
from sensor.testing.receiver import sample_alert
sp = Spool(sys.argv[1], owner=True)
i = 0
while True:
    a = sample_alert(i)
    sp.put(a)
    print(a["id"], flush=True)
    i += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_lost_wal_after_sigkill_costs_little_and_is_noticed(tmp_path, caplog):
    path = tmp_path / "spool.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env())
    committed = []
    assert proc.stdout is not None
    while len(committed) < 400:
        line = proc.stdout.readline()
        assert line, "writer died"
        committed.append(line.decode().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    committed += [ln.decode().strip() for ln in proc.stdout.read().splitlines() if ln.strip()]
    proc.stdout.close()
    for suffix in ("-wal", "-shm"):
        os.unlink(str(path) + suffix)
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        sp = Spool(path, owner=True)
    stored = set(sp.ids())
    lost = [c for c in committed if c not in stored]
    # at most what one WAL between checkpoints holds (WAL_AUTOCHECKPOINT pages of ~1.5 pages per
    # alert, plus the transaction that crossed the mark)
    assert len(lost) <= WAL_AUTOCHECKPOINT
    assert sp.wal_lost is not None and "write-ahead log" in caplog.text
    assert any(e["kind"] == "spool_wal_missing" for e in sp.health_events())
    sp.close()
    with Spool(path, owner=True) as again:  # closed cleanly in between: nothing to report
        assert again.wal_lost is None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths in the config")
def test_run_starts_on_a_damaged_spool_and_delivers_what_was_recovered(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    spool = state / "spool.sqlite"
    ids = make_spool(spool, n=100)
    damage(spool, "header_overwritten")
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps({"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe",
                               "ParentImage": "C:\\Windows\\System32\\cmd.exe", "CommandLine": "mofcomp x.mof"}) + "\n")
    with Receiver(token="tok", keep_documents=True) as receiver:
        cfg = tmp_path / "sensor.toml"
        cfg.write_text(f'[sensor]\ndata_dir = "{state}"\nheartbeat_s = 0\n'
                       f'[source]\nkind = "replay"\n[source.replay]\npaths = ["{rec}"]\n'
                       f'[output]\nformat = "ecs"\nurl = "{receiver.url}/ingest"\nca_file = "{receiver.ca_file}"\n'
                       f'token = "tok"\n[delivery]\nbatch_wait_ms = 20\n')
        cfg.chmod(0o600)  # the sensor refuses a config others can read
        r = subprocess.run([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], capture_output=True,
                           text=True, env=env(), timeout=120)
        assert r.returncode == 0, r.stderr
        assert "moved aside to spool.sqlite.damaged-" in r.stderr and "recovered 100 alert(s)" in r.stderr
        alerts = receiver.documents("alert")   # not the health documents of the ledger
        got = {d["event"]["id"] for d in alerts}
        assert set(ids) <= got  # every recovered alert was delivered
        assert len(got) == len(alerts) == 100 + 2  # plus the new alert and the spool_salvaged health alert
        [salvaged] = [d for d in alerts if d["rule"]["id"] == "sensor-health-spool-salvaged"]
        assert "recovered 100 alert(s)" in salvaged["message"]
        [start] = [d for d in receiver.documents("metric") if d["event"]["action"] == "start"]
        assert start["sensor"]["health"]["spool"]["salvaged_at_start"]["recovered"] == 100
        assert any("salvaged at start" in p for p in start["sensor"]["health"]["problems"])
    assert list(state.glob("spool.sqlite.damaged-*"))
    assert oct(spool.stat().st_mode & 0o777) == "0o600"  # the fresh spool is private like the first


def test_a_damaged_body_that_is_still_valid_json_goes_to_dead_letters(tmp_path):
    path = tmp_path / "spool.sqlite"
    alerts = [sample_alert(i) for i in range(20)]
    make_spool(path, alerts=alerts)
    raw = path.read_bytes()
    at = raw.index(b"evil17.mof")  # inside one alert's body: SQLite's structure is untouched
    overwrite(path, at, b"evim")
    sp = Spool(path, owner=True)
    assert sp.salvage is None  # nothing for SQLite to notice
    with Receiver(keep_documents=True) as rec:
        out = build_output({"url": rec.url, "ca_file": str(rec.ca_file), "document": "alert"})
        fwd = Forwarder(sp, out, DeliveryConfig(linger=0))
        fwd.start()
        try:
            assert fwd.wait_drained(30)
        finally:
            fwd.stop()
            out.close()
        got = {d["id"] for d in rec.documents()}
    (dead,) = sp.dead_letters()
    assert dead["id"] == alerts[17]["id"] and "checksum mismatch" in dead["reason"]
    assert got == {a["id"] for a in alerts} - {alerts[17]["id"]}
    assert fwd.stats()["corrupt_rows"] == 1
    sp.close()


_TEMPLATE: dict = {}


def _template(tmp_root: Path) -> tuple[bytes, set[str]]:
    """One small closed spool (bytes) and the ids ever put into it (built once)."""
    if not _TEMPLATE:
        path = tmp_root / "template.sqlite"
        alerts = [sample_alert(i) for i in range(60)]
        make_spool(path, alerts=alerts, acked=10)
        _TEMPLATE["data"] = path.read_bytes()
        _TEMPLATE["ids"] = {a["id"] for a in alerts}
    return _TEMPLATE["data"], _TEMPLATE["ids"]



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=600)), min_size=1, max_size=6),
       st.one_of(st.none(), st.floats(0.05, 1)))
def test_any_damage_opens_and_recovers_only_what_was_spooled(tmp_path_factory, hits, cut):
    data, ever = _template(tmp_path_factory.getbasetemp())
    buf = bytearray(data)
    for where, junk in hits:
        at = int(where * (len(buf) - 1))
        buf[at:at + len(junk)] = junk[:len(buf) - at]
    if cut is not None:
        del buf[int(cut * len(buf)):]
    path = tmp_path_factory.mktemp("dmg") / "spool.sqlite"
    path.write_bytes(bytes(buf))
    sp = Spool(path, owner=True)  # never raises for damage: salvages or opens
    try:
        for it in sp.fetch(10_000):
            try:
                alert = it.decode()
            except Exception:  # a damaged row the checksum catches before it is sent
                continue
            assert alert["id"] in ever or alert.get("type") == "health"
    finally:
        sp.close()


def index_damaged_spool(path: Path, n: int = 40) -> tuple[list[dict], list[str]]:
    """A closed spool of ``n`` alerts with damage the quick check cannot see: one alert's entry in
    the unique index on alert ids no longer matches its row, so deleting that row (an ack) finds
    the index malformed. Returns (alerts, ids); alert 5 is the one whose entry is broken."""
    alerts = [sample_alert(i) for i in range(n)]
    ids = make_spool(path, alerts=alerts)
    raw = path.read_bytes()
    victim = alerts[5]["id"].encode()
    at = [i for i in range(len(raw)) if raw.startswith(victim, i) and raw[i - i % 4096] == 0x0A]
    assert len(at) == 1, "the alert id's entry in the index page"
    overwrite(path, at[0], b"X")
    return alerts, ids


def damaged_while_running(path: Path, **kw) -> tuple[Spool, list[dict], list[str], list]:
    """An open owner spool that has just found the damage above (an ack raised SpoolDamaged);
    also returns the rows fetched before (in flight)."""
    alerts, ids = index_damaged_spool(path)
    sp = Spool(path, owner=True, **kw)
    assert sp.salvage is None  # quick_check found nothing
    in_flight = sp.fetch(100)
    rowid = next(it.rowid for it in in_flight if it.alert_id == alerts[5]["id"])
    with pytest.raises(SpoolDamaged):
        sp.ack([rowid])
    return sp, alerts, ids, in_flight


def test_damage_found_while_running_is_healed_at_the_next_use(tmp_path, caplog):
    path = tmp_path / "spool.sqlite"
    seen: list[dict] = []
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        sp, alerts, ids, in_flight = damaged_while_running(path, on_health=seen.append)
    try:
        assert sp.fault_stats()["damaged"] and "ALERT SPOOL DAMAGED" in caplog.text
        assert Path(str(path) + ".damaged").exists()
        # The next use of the spool moves the file aside and recovers every row: no restart.
        st = sp.stats()
        assert not st["damaged"] and st["heals"] == 1 and "error" not in st
        assert "while running" in st["last_heal"]["reason"] and st["last_heal"]["recovered"] == 40
        assert st["salvaged_at_start"] is None          # that is the start's, and there was none
        # every alert, plus the health alert that tells the SIEM about the salvage
        extra = [it for it in sp.fetch(100) if it.alert_id not in set(ids)]
        assert set(ids) <= set(sp.ids()) and sp.depth() == 41 and len(extra) == 1
        body = msgspec.json.decode(extra[0].body)
        assert body["type"] == "health" and "salvaged" in json.dumps(body)
        assert not Path(str(path) + ".damaged").exists()
        assert len(list(tmp_path.glob("spool.sqlite.damaged-*"))) == 1
        assert [e["event"] for e in seen] == ["spool_damaged", "spool_salvaged"]
        # Row ids fetched before the heal refer to nothing now: a delivery in flight cannot
        # confirm (delete) a different alert; its recovered copy is simply sent again.
        assert sp.ack([it.rowid for it in in_flight]) == 0 and sp.depth() == 41
        sp.mark_failed([it.rowid for it in in_flight], "x")
        assert sp.dead_letter([(it.rowid, "x", 400) for it in in_flight]) == 0
        assert all(it.attempts == 0 for it in sp.fetch(100))
        # ... and the fresh spool works: new alerts, confirmations, ids above every old one.
        assert sp.put(sample_alert(1000))
        fresh = sp.fetch(100)
        assert min(it.rowid for it in fresh) > max(it.rowid for it in in_flight)
        assert sp.ack([it.rowid for it in fresh]) == 42 and sp.depth() == 0
        assert sp.put(sample_alert(1001))   # an empty table still numbers above the old ids
        assert sp.fetch(1)[0].rowid > max(it.rowid for it in fresh)
    finally:
        sp.close()
    with Spool(path, owner=True) as sp:   # the healed file opens cleanly at the next start
        assert sp.salvage is None and sp.depth() == 1


def test_alerts_written_while_the_damaged_file_cannot_be_healed_wait_in_memory(tmp_path, monkeypatch, caplog):
    import sensor.deliver.spool as spool_mod

    # "tried again every 5 s": an hour here, so no stall of a loaded machine makes it due early
    monkeypatch.setattr(spool_mod, "HEAL_RETRY_INTERVAL", 3600.0)
    path = tmp_path / "spool.sqlite"
    sp, alerts, ids, _ = damaged_while_running(path)
    try:
        real_replace = os.replace

        def refuse(src, dst):   # the file cannot be moved aside (on Windows: a reader holds it open)
            raise PermissionError(13, "in use")

        monkeypatch.setattr(os, "replace", refuse)
        # More damage: the table leaf new rows go to is no longer a b-tree page, so writes fail.
        raw, last = path.read_bytes(), alerts[-1]["id"].encode()
        leaf = next(i - i % 4096 for i in range(len(raw)) if raw.startswith(last, i) and raw[i - i % 4096] == 0x0D)
        overwrite(path, leaf, b"\x00")
        new = [sample_alert(100 + i) for i in range(5)]
        with caplog.at_level(logging.ERROR, logger="sensor.spool"):
            assert sp.put_many(new) == 5   # accepted: held in memory, not refused, not lost
        st = sp.fault_stats()
        assert st["damaged"] and st["held"] == 5 and st["heals"] == 0
        assert "cannot heal the damaged file now" in caplog.text
        monkeypatch.setattr(os, "replace", real_replace)
        sp.maintain()                      # upkeep before the retry is due changes nothing
        st = sp.fault_stats()
        assert st["held"] == 5 and st["damaged"] and st["heals"] == 0   # (no heal tried yet)
        sp._next_heal = 0.0                # the retry is due (HEAL_RETRY_INTERVAL later)
        sp._next_try = 0.0
        sp.maintain()
        st = sp.fault_stats()
        assert not st["damaged"] and st["heals"] == 1 and st["held"] == 0
        # every alert the damaged file could still give back, and every alert held in memory
        assert {a["id"] for a in new} <= set(sp.ids())
        assert st["last_heal"]["recovered"] + st["last_heal"]["damaged"] + (st["last_heal"]["lost"] or 0) >= 39
    finally:
        sp.close()


def test_a_write_that_finds_the_damage_heals_and_writes_at_once(tmp_path):
    path = tmp_path / "spool.sqlite"
    alerts, ids = make_spool(path, n=40), None
    with Spool(path, owner=True) as sp:
        # Damage under a running spool: the table leaf new rows go to stops being a b-tree page.
        sp._close_connections()   # (as after any heal attempt: the next write reads the file anew)
        raw, last = path.read_bytes(), alerts[-1].encode()
        leaf = next(i - i % 4096 for i in range(len(raw)) if raw.startswith(last, i) and raw[i - i % 4096] == 0x0D)
        overwrite(path, leaf, b"\x00")
        new = [sample_alert(200), sample_alert(201)]
        assert sp.put_many(new) == 2           # found the damage, healed, wrote into the fresh spool
        st = sp.fault_stats()
        assert st["heals"] == 1 and not st["damaged"] and st["held"] == 0
        assert {a["id"] for a in new} <= set(sp.ids())


def test_a_write_that_finds_the_damage_heals_and_writes_at_once_whatever_the_callback_reads(tmp_path):
    # the same promise with a health callback that looks into the spool when it hears of the
    # damage (a status writer would): the callback runs inside the failing write, and its read
    # does not heal there; the write itself heals and writes into the fresh spool, nothing waits
    path = tmp_path / "spool.sqlite"
    alerts = make_spool(path, n=40)
    seen: list = []
    with Spool(path, owner=True, on_health=lambda e: seen.append((e["event"], sp.stats()["damaged"]))) as sp:
        sp._close_connections()
        raw, last = path.read_bytes(), alerts[-1].encode()
        leaf = next(i - i % 4096 for i in range(len(raw)) if raw.startswith(last, i) and raw[i - i % 4096] == 0x0D)
        overwrite(path, leaf, b"\x00")
        new = [sample_alert(200), sample_alert(201)]
        assert sp.put_many(new) == 2
        st = sp.fault_stats()
        assert st["heals"] == 1 and not st["damaged"] and st["held"] == 0
        assert {a["id"] for a in new} <= set(sp.ids())
        assert seen[0] == ("spool_damaged", True)


def test_a_heal_waits_for_the_threads_using_the_file_and_others_wait_for_it(tmp_path):
    import threading

    sp, _, _, _ = damaged_while_running(tmp_path / "spool.sqlite")
    sp._next_heal = float("inf")           # the threads below do not heal on their way in
    try:
        inside, release, done = threading.Event(), threading.Event(), threading.Event()
        result: list = []

        def reader():                      # a thread in the middle of a read
            with sp._guard("read"):
                sp._db.execute("SELECT COUNT(*) FROM alerts").fetchone()
                inside.set()
                release.wait(30)
                result.append(sp._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0])

        t = threading.Thread(target=reader)
        t.start()
        assert inside.wait(30)
        healer = threading.Thread(target=lambda: (result.append(sp.heal()), done.set()))
        healer.start()
        assert not done.wait(0.3)          # the heal waits for the reader to leave the file
        release.set()
        assert done.wait(30)
        t.join(30)
        healer.join(30)
        assert result == [40, True]        # the reader finished on the old file, then the heal ran
        assert sp.depth() == 41 and not sp.fault_stats()["damaged"]   # + the salvage's health alert
    finally:
        sp.close()


def test_a_heal_gives_up_when_a_thread_does_not_leave_the_file(tmp_path, monkeypatch):
    import threading

    import sensor.deliver.spool as spool_mod

    monkeypatch.setattr(spool_mod, "HEAL_WAIT", 0.2)
    sp, _, _, _ = damaged_while_running(tmp_path / "spool.sqlite")
    sp._next_heal = float("inf")           # the thread below does not heal on its way in
    try:
        inside, release = threading.Event(), threading.Event()

        def stuck():
            with sp._guard("read"):
                inside.set()
                release.wait(30)

        t = threading.Thread(target=stuck)
        t.start()
        assert inside.wait(30)
        assert sp.heal() is False and sp.fault_stats()["damaged"]
        release.set()
        t.join(30)
        assert sp.heal() is True and sp.depth() == 41   # + the salvage's health alert
    finally:
        sp.close()


def test_delivery_goes_on_through_a_heal_and_loses_no_alert(tmp_path):
    """A forwarder delivering and a writer adding alerts while the file is found damaged (the
    forwarder's confirmation of alert 5 hits the broken index): the spool heals under both
    threads and every alert reaches the receiver, the ones in flight perhaps twice."""
    import threading

    path = tmp_path / "spool.sqlite"
    alerts, ids = index_damaged_spool(path, n=40)
    later = [sample_alert(1000 + i) for i in range(200)]
    sp = Spool(path, owner=True)
    with Receiver(keep_documents=True) as rec:
        out = build_output({"url": rec.url, "ca_file": str(rec.ca_file), "document": "alert"})
        fwd = Forwarder(sp, out, DeliveryConfig(linger=0, batch_size=10))
        writer_done = threading.Event()

        def writer():
            for i in range(0, len(later), 5):
                sp.put_many(later[i:i + 5])
            writer_done.set()

        fwd.start()
        t = threading.Thread(target=writer)
        t.start()
        try:
            assert writer_done.wait(60)
            want = set(ids) | {a["id"] for a in later}
            assert rec.wait_for(len(want) + 1, timeout=60), rec.stats()   # + the salvage's health alert
            assert fwd.wait_drained(60)
        finally:
            t.join(30)
            fwd.stop()
            out.close()
        got = set(rec.ids())
    st = sp.fault_stats()
    sp.close()
    assert want <= got and st["heals"] == 1 and not st["damaged"] and st["held"] == 0


def test_damage_that_comes_back_at_once_is_healed_ever_more_slowly(tmp_path):
    """A failing disk: every heal leaves a copy of the file aside, so damage that returns right
    after a heal must not fill the volume with copies."""
    path = tmp_path / "spool.sqlite"
    sp, _, _, _ = damaged_while_running(path)
    try:
        waits = []
        for k in range(4):
            assert sp.heal()
            waits.append(sp._next_heal - time.monotonic())
            sp._mark_damaged(f"damaged again ({k})")     # what SQLite would report next
        assert waits[0] <= 0                            # the first heal costs the next nothing
        # twice as long per heal in the last hour: 10, 20, 40 s after the 2nd, 3rd, 4th heal (the
        # lower bounds leave the time a heal takes after it set the wait, and tell 10 from 5)
        assert 7.5 < waits[1] <= 10 and 15 < waits[2] <= 20 and 30 < waits[3] <= 40
        assert sp.heal_if_due() is False                # not due yet: alerts wait in memory
        assert len(list(tmp_path.glob("spool.sqlite.damaged-*"))) == 4
    finally:
        sp.close()


def test_a_heal_that_fails_after_moving_the_file_aside_loses_no_row(volume):
    """A heal on a full disk moves the damaged file aside, then cannot build the fresh spool. The
    rows of the damaged file must still be recovered by the next heal (not left in the copy set
    aside while the next heal salvages the empty file that took its place)."""
    from tests.conftest import fill
    folder = volume("8m")
    path = folder / "spool.sqlite"
    sp, alerts, ids, _ = damaged_while_running(path, reserve_bytes=0)
    try:
        filler = fill(folder)
        assert sp.heal() is False and sp.fault_stats()["damaged"]
        filler.unlink()
        assert sp.heal() is True
        assert set(ids) <= set(sp.ids())
    finally:
        sp.close()


def test_a_thread_that_reaches_the_file_during_a_heal_writes_into_the_fresh_spool(tmp_path, monkeypatch):
    """On a full disk, a write or a confirmation checkpoints the WAL (``_checkpoint``) before it
    enters a transaction. A thread doing that while a heal has closed the connections but not yet
    moved the file aside must not open a connection to the damaged file and keep it: every later
    write of that thread would go into the copy set aside (the rename follows the open file)."""
    import threading
    path = tmp_path / "spool.sqlite"
    sp, alerts, ids, _ = damaged_while_running(path)
    late = sample_alert(500)
    real_replace = os.replace
    worker: list[threading.Thread] = []

    def replace(src, dst):
        if not worker and str(src) == str(path):
            # another thread's upkeep on a full disk, right when the heal is about to move the file
            t = threading.Thread(target=lambda: (sp._checkpoint(), sp.put(late)))
            worker.append(t)
            t.start()
            t.join(1.0)     # it ran (main) or it waits for the heal (as it must)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    try:
        assert sp.heal() is True
        worker[0].join(30)
        assert not worker[0].is_alive()
        assert late["id"] in set(sp.ids()), "the alert went into the damaged copy set aside"
    finally:
        sp.close()


def test_a_heal_that_can_move_the_file_but_not_its_wal_loses_no_row(tmp_path, monkeypatch):
    """On Windows another process holding the -wal open makes its rename fail after the database
    file itself was moved: the file must come back, so the next heal recovers its rows."""
    path = tmp_path / "spool.sqlite"
    sp, alerts, ids, _ = damaged_while_running(path)
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith("-wal"):
            raise PermissionError(13, "in use")
        return real_replace(src, dst)

    other = sqlite3.connect(str(path))   # another process's connection keeps the -wal in place
    try:
        other.execute("SELECT COUNT(*) FROM meta").fetchall()
        monkeypatch.setattr(os, "replace", replace)
        assert sp.heal() is False and sp.fault_stats()["damaged"]
        monkeypatch.setattr(os, "replace", real_replace)
        other.close()
        assert sp.heal() is True
        assert set(ids) <= set(sp.ids())
    finally:
        sp.close()


def test_a_heal_that_cannot_build_the_fresh_spool_puts_the_file_and_its_wal_back(tmp_path, monkeypatch):
    """The damaged file was moved aside with its -wal and -shm (another process holds them), then
    the fresh spool cannot be made: all three go back in place, so the next heal recovers every
    row, including what only the -wal holds."""
    import sensor.deliver.spool as spool_mod

    path = tmp_path / "spool.sqlite"
    sp, alerts, ids, _ = damaged_while_running(path)
    other = sqlite3.connect(str(path))   # another process's connection keeps the -wal in place
    real_touch = spool_mod.touch_private

    def refuse(p, *a, **kw):
        if Path(p) == path:
            raise PermissionError(13, "denied")
        return real_touch(p, *a, **kw)

    try:
        other.execute("SELECT COUNT(*) FROM meta").fetchall()
        wal = Path(str(path) + "-wal")
        assert wal.exists()
        monkeypatch.setattr(spool_mod, "touch_private", refuse)
        assert sp.heal() is False and sp.fault_stats()["damaged"]
        assert path.exists() and wal.exists() and Path(str(path) + "-shm").exists()
        assert not any(tmp_path.glob("spool.sqlite.damaged-*")), "a part of the file stayed aside"
        monkeypatch.setattr(spool_mod, "touch_private", real_touch)
        other.close()
        assert sp.heal() is True
        assert set(ids) <= set(sp.ids())
    finally:
        other.close()
        sp.close()


def test_a_damage_marker_that_cannot_be_read_still_makes_the_start_salvage(tmp_path):
    """The ``<spool>.damaged`` marker says the sensor found damage while it last ran; one whose
    text cannot be read (here a folder in its place) still makes the owner's start salvage the
    file, and never stops the start."""
    path = tmp_path / "spool.sqlite"
    ids = make_spool(path, n=10)
    Path(str(path) + ".damaged").mkdir()
    with Spool(path, owner=True) as sp:
        assert sp.salvage is not None and "damage found while the sensor last ran" in sp.salvage["reason"]
        assert set(ids) <= set(sp.ids())


def test_a_salvage_counts_rows_failing_their_checksum_apart_from_the_lost(tmp_path, caplog):
    """L lost is counted against the row count the damaged file kept: rows recovered and rows
    that failed their checksum (moved to dead letters) are not lost."""
    path = tmp_path / "spool.sqlite"
    alerts = [sample_alert(i) for i in range(20)]
    make_spool(path, alerts=alerts)
    raw = path.read_bytes()
    overwrite(path, raw.index(b"evil17.mof"), b"evim")   # one body: its checksum fails
    damage(path, "header_overwritten")                   # and SQLite can no longer read the file
    with caplog.at_level(logging.ERROR, logger="sensor.spool"):
        sp = Spool(path, owner=True)
    try:
        info = sp.salvage
        assert info is not None
        assert (info["recovered"], info["damaged"], info["lost"]) == (19, 1, 0)
        assert "1 failed their checksum (moved to dead letters); 0 lost" in caplog.text
        (dead,) = sp.dead_letters()
        assert dead["id"] == alerts[17]["id"] and "checksum mismatch" in dead["reason"]
    finally:
        sp.close()


def test_alerts_held_for_a_heal_not_yet_due_are_written_at_close(tmp_path, monkeypatch):
    """A heal that failed makes the next one wait (HEAL_RETRY_INTERVAL, longer after repeated
    damage); alerts written meanwhile wait in memory. Stopping the sensor then must heal and
    write them, not drop them as 'held for lack of disk space'."""
    path = tmp_path / "spool.sqlite"
    sp, alerts, ids, _ = damaged_while_running(path)
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(PermissionError(13, "in use")))
    raw, last = path.read_bytes(), alerts[-1]["id"].encode()
    leaf = next(i - i % 4096 for i in range(len(raw)) if raw.startswith(last, i) and raw[i - i % 4096] == 0x0D)
    overwrite(path, leaf, b"\x00")
    new = [sample_alert(300 + i) for i in range(3)]
    assert sp.put_many(new) == 3
    assert sp.fault_stats()["held"] == 3 and sp.fault_stats()["damaged"]
    monkeypatch.setattr(os, "replace", real_replace)
    sp.close()                      # the stop comes before the next heal is due
    with Spool(path, owner=True) as again:
        assert {a["id"] for a in new} <= set(again.ids())


def test_a_heal_in_the_disk_full_state_once_space_is_back(volume):
    """The disk filled while the file was damaged, then space came back: the heal must build the
    fresh spool (which has to grow) instead of failing on the full state's page limit."""
    from tests.conftest import fill
    folder = volume("8m")
    path = folder / "spool.sqlite"
    sp, alerts, ids, _ = damaged_while_running(path, reserve_bytes=0)
    sp._next_heal = float("inf")           # the writes below do not heal on their way in
    try:
        filler = fill(folder)
        n = 0
        while not sp.fault_stats()["disk_full"] and n < 2000:
            sp.put(sample_alert(1000 + n))
            n += 1
        assert sp.fault_stats()["disk_full"]
        waiting = set(sp.ids())            # (the full disk dropped the oldest to make room)
        filler.unlink()
        assert sp.heal() is True
        assert waiting <= set(sp.ids())
    finally:
        sp.close()


def test_alerts_dropped_while_waiting_for_a_heal_are_counted_and_said_at_the_heal(tmp_path, monkeypatch, caplog):
    path = tmp_path / "spool.sqlite"
    sp, alerts, ids, _ = damaged_while_running(path, held_max_bytes=3000)
    try:
        real_replace = os.replace
        monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(PermissionError(13, "in use")))
        # More damage so that writes fail (the leaf new rows go to is no longer a b-tree page).
        raw, last = path.read_bytes(), alerts[-1]["id"].encode()
        leaf = next(i - i % 4096 for i in range(len(raw)) if raw.startswith(last, i) and raw[i - i % 4096] == 0x0D)
        overwrite(path, leaf, b"\x00")
        new = [sample_alert(300 + i) for i in range(20)]
        for a in new:
            sp.put(a)
        st = sp.fault_stats()
        assert st["damaged"] and st["held_dropped"] > 0
        assert st["held"] + st["held_dropped"] == 20 and sp.stats()["dropped"] >= st["held_dropped"]
        dropped = st["held_dropped"]
        monkeypatch.setattr(os, "replace", real_replace)
        sp._next_heal = sp._next_try = 0.0
        with caplog.at_level(logging.ERROR, logger="sensor.spool"):
            sp.maintain()
        st = sp.fault_stats()
        assert not st["damaged"] and st["held_dropped"] == 0 and st["held"] == 0
        assert st["last_heal"]["held_dropped"] == dropped
        assert f"{dropped} alert(s) waiting in memory for the heal were dropped" in caplog.text
        assert {a["id"] for a in new[dropped:]} <= set(sp.ids())   # the newest were kept
    finally:
        sp.close()


def test_a_heal_that_cannot_be_done_keeps_the_last_heals_report(tmp_path, monkeypatch):
    sp, _, _, _ = damaged_while_running(tmp_path / "spool.sqlite")
    try:
        assert sp.heal()
        first = sp.fault_stats()["last_heal"]
        assert first and "while running" in first["reason"]
        sp._mark_damaged("damaged again")
        monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(PermissionError(13, "in use")))
        assert sp.heal() is False
        st = sp.fault_stats()
        assert st["damaged"] and st["heals"] == 1 and st["last_heal"] == first
        assert st["salvaged_at_start"] is None
    finally:
        monkeypatch.undo()
        sp.close()
