"""The CPU and memory budget: the shed order, the sampling controller, what each step sheds
(back-fill fields, PE reads, events), the health alerts, and the memory caps."""
from __future__ import annotations

import json
import threading
import time

import pytest

from sensor.daemon.budget import STEPS, Budget, apply_memory_caps, memory_caps
from sensor.daemon.config import parse
from sensor.daemon.health import transitions
from sensor.daemon.pipeline import Pipeline
from sensor.detect.ir import Predicate, Rule
from sensor.enrich.enricher import Enricher
from sensor.events import ProcessEvent

WAIT = 60.0


class Clock:
    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, seconds: float, busy: float) -> None:
        """``seconds`` pass with the process busy ``busy`` (0..1 of a core)."""
        self.wall += seconds
        self.cpu += seconds * busy


def rule(field="CommandLine"):
    return Rule(id="r", title="r", predicates=(Predicate(field, "contains", ("evil",)),),
                condition=("pred", 0))


class Src:
    name = "fake"

    def __init__(self, processor=None):
        self.processor = processor

    def start(self, emit):
        pass

    def stop(self):
        pass


class FakeBackfiller:
    def __init__(self):
        self.fields = ("CommandLine", "User", "CurrentDirectory", "IntegrityLevel")
        self.attempts = 0


def governor(clock, pipeline, limit=10.0, window=5.0):
    b = Budget(limit, window=window, cpu_clock=lambda: clock.cpu, wall_clock=lambda: clock.wall)
    b.attach(pipeline)
    b._samples.append((clock.wall, clock.cpu))
    return b


def test_steps_are_shed_in_order_one_window_apart_and_given_back():
    clock = Clock()
    proc = type("P", (), {})()
    proc.backfiller = FakeBackfiller()
    pipe = Pipeline(source=Src(proc), rules=[rule()], heartbeat_interval=0,
                    enricher=Enricher(pe_lookup=lambda p: None, hash_lookup=lambda p: None))
    b = governor(clock, pipe)
    levels = []
    for _ in range(30):                       # 30 ticks of 1 s at 100 % of a core
        clock.run(1.0, 1.0)
        b.tick()
        levels.append(b.level)
    assert b.cpu_percent == pytest.approx(100.0)
    # a whole window over the limit before the first step, then one step per window (5 s),
    # in the documented order
    assert levels[:4] == [0, 0, 0, 0]
    assert (levels[4], levels[9], levels[14], levels[19]) == (1, 2, 3, 4)
    assert (levels[8], levels[13], levels[18]) == (1, 2, 3)
    assert b.steps_in_force() == list(STEPS)
    assert proc.backfiller.fields == ("CommandLine",)      # only what the rule reads
    assert b.skip_pe and b.skip_hashes and b.sampling
    assert b.rate < 0.2                                   # steered towards 10 / 100
    # the load goes away: the rate climbs back, then the steps are given back in reverse
    for _ in range(80):
        clock.run(1.0, 0.01)
        b.tick()
    assert b.level == 0 and not b.sampling and not b.skip_pe
    assert proc.backfiller.fields == FakeBackfiller().fields


def test_steps_with_nothing_to_shed_are_skipped():
    clock = Clock()
    pipe = Pipeline(source=Src(), rules=[rule()], heartbeat_interval=0)   # no back-fill, no PE
    b = governor(clock, pipe)
    clock.run(6.0, 1.0)
    b.tick()
    assert b.level == 4 and b.steps_in_force() == ["events"]


def test_sampling_keeps_the_chosen_share_and_counts_the_rest():
    b = Budget(10.0)
    b.sampling, b.rate = True, 0.25
    kept = b.sample(list(range(1000)))
    assert len(kept) == 250 and b.sampled_out == 750 and b.shed["events"] == 750
    b.rate = 1.0
    assert b.sample([1, 2]) == [1, 2]


def test_pe_reads_no_match_needed_are_not_made_for_the_alert():
    reads = []
    enr = Enricher(pe_lookup=lambda p: reads.append(p) or {"OriginalFilename": "x.exe"},
                   path_map={"C:\\": "/nonexistent/"})
    ev = ProcessEvent({"Image": "C:\\a.exe", "CommandLine": "evil"})
    enr(ev)
    assert ev.pending
    b = Budget(10.0)
    b.drop_pe_reads(ev)
    ev.resolve_all()
    assert reads == [] and ev.get("OriginalFileName") is None
    assert ev.origin is None or ev.origin.get("OriginalFileName") in (None, "shed")
    assert b.shed["pe_reads"] == 1


def image_with_hashes(tmp_path):
    exe = tmp_path / "a.exe"
    exe.write_bytes(b"MZ" + b"\0" * 62)
    return exe


@pytest.mark.parametrize("shed", [False, True])
def test_hashes_no_match_needed_are_not_computed_for_the_alert(tmp_path, shed):
    """A real pipeline with the Hashes cache: at the hashes step an alert whose match did not
    read Hashes computes none (origin ``shed``, counted); a rule that reads Hashes still gets them."""
    from sensor.enrich.hashes import HashCache
    exe = image_with_hashes(tmp_path)
    cache = HashCache(("SHA256",))
    calls = []

    def lookup(path):
        calls.append(path)
        return cache.lookup(path)

    alerts: list = []
    reads_hashes = Rule(id="h", title="h", predicates=(Predicate("CommandLine", "contains", ("good",)),
                                                       Predicate("Hashes", "contains", ("SHA256=",))),
                        condition=("and", ("pred", 0), ("pred", 1)))
    src = Src()
    pipe = Pipeline(source=src, rules=[rule(), reads_hashes], heartbeat_interval=0, ledger=False,
                    enricher=Enricher(hash_lookup=lookup, path_map={"C:\\": str(tmp_path) + "/"}),
                    alert_hook=alerts.append)
    b = Budget(10.0)
    b.attach(pipe)
    assert b.applicable("hashes")
    b.skip_hashes = shed
    pipe._process([ProcessEvent({"Image": "C:\\a.exe", "CommandLine": "evil"})])
    assert [a["rule"]["id"] for a in alerts] == ["r"]
    if shed:
        assert calls == [] and b.shed["hashes"] == 1
        assert "SHA256=" not in json.dumps(alerts[0])
    else:
        assert len(calls) == 1 and b.shed["hashes"] == 0
        assert "SHA256=" in json.dumps(alerts[0])
    # a rule that reads Hashes gets them, shedding or not
    alerts.clear()
    exe.write_bytes(b"MZ" + b"\0" * 62 + b"SHA")        # a new identity: computed again
    n = len(calls)
    pipe._process([ProcessEvent({"Image": "C:\\a.exe", "CommandLine": "good"})])
    assert len(calls) == n + 1 and [a["rule"]["id"] for a in alerts] == ["h"]


def test_overloaded_pipeline_samples_and_reports(tmp_path):
    """A real pipeline, a real CPU clock: a stream at full speed against a 5 % budget."""
    from sensor.deliver.spool import Spool
    spool = Spool(str(tmp_path / "spool.sqlite"))

    class Flood:
        name = "flood"
        blocking = True

        def __init__(self):
            self.finished = threading.Event()
            self._stop = threading.Event()

        def start(self, emit):
            def run():
                i = 0
                while not self._stop.is_set():
                    emit(ProcessEvent({"Image": f"C:\\p{i % 50}.exe", "CommandLine": f"x {i}"}))
                    i += 1
                self.finished.set()
            threading.Thread(target=run, daemon=True).start()

        def stop(self):
            self._stop.set()
            self.finished.wait(WAIT)

    pipe = Pipeline(source=Flood(), rules=[rule("Image")] * 1, heartbeat_interval=0, spool=spool)
    b = Budget(5.0, window=0.5)
    b.attach(pipe)
    pipe.start()
    b.start()
    try:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and b.sampled_out == 0:
            time.sleep(0.05)
    finally:
        b.stop()
        pipe.source.stop()
        pipe.wait_source(WAIT)
        st0 = pipe.health()
        pipe.beat()
        st = pipe.health()
        pipe.stop(drain_timeout=5)
    assert b.sampled_out > 0 and b.level == 4
    assert st.budget.shedding == ["events"] and st.budget.shed["events"] == b.sampled_out
    assert st.events.in_ == st0.events.in_      # sampled events count as taken in
    assert any("over the CPU budget" in p for p in st.problems)
    rows = [it.decode() for it in spool.fetch(1000, 1 << 26)]
    assert any(r.get("rule", {}).get("id") == "sensor-health-budget-shed-events" for r in rows)
    spool.close()


def test_budget_health_alerts_come_from_what_changed():
    from sensor.daemon.health import BudgetHealth, Status
    a, b = Status(), Status()
    a.budget = BudgetHealth(cpu_limit_percent=10, shed={"events": 5})
    b.budget = BudgetHealth(cpu_limit_percent=10, shed={"events": 9, "pe_reads": 2}, level=4,
                            memory_limit_mb=100, rss_mb=150)
    kinds = {k for k, *_ in transitions(a, b)}
    assert {"budget_shed_events", "budget_shed_pe_reads", "memory_over_budget"} <= kinds


def test_memory_caps_size_the_tables():
    asked = {"queue_size": 16384, "pe_cache_size": 4096, "process_table_size": 65536}
    assert memory_caps(0, asked) == asked
    small = memory_caps(64, asked)
    assert all(small[k] < asked[k] for k in asked)
    assert small["queue_size"] >= 1024
    assert memory_caps(100_000, asked) == asked            # never above what the config asks
    cfg = parse({"sensor": {"memory_limit_mb": 80}}, "<t>")
    caps = apply_memory_caps(cfg)
    assert cfg.sensor.queue_size == caps["queue_size"] < 16384
    assert cfg.enrich.pe.cache_size == caps["pe_cache_size"]
    with pytest.raises(ValueError, match="memory_limit_mb"):
        parse({"sensor": {"memory_limit_mb": 10}}, "<t>")
    with pytest.raises(ValueError, match="cpu_limit_percent"):
        parse({"sensor": {"cpu_limit_percent": 0.5}}, "<t>")


def _raw_records_of_a_start(cmd: str) -> list[tuple]:
    """The raw records of one process start as the ETW consumer queues them: a system-logger
    Start (with the command line), the Kernel-Process ProcessStart and its ProcessStop."""
    import struct
    from sensor.sources.etw_decode import decode_kernel_process, decode_system_process
    from sensor.sources.etw_raw import SRC_KERNEL_PROCESS, SRC_SYSTEM_LOGGER
    sid = bytes([1, 1, 0, 0, 0, 0, 0, 5]) + struct.pack("<I", 18)
    image = "\\Device\\HarddiskVolume3\\Windows\\System32\\svchost.exe"
    ft = 133_700_000_000_000_000
    sl = (struct.pack("<QIIIiQI", 0xFFFF_A000_0000_1234, 4242, 700, 0, 0, 0, 0) + (0x1000).to_bytes(8, "little")
          + bytes(8) + sid + b"svchost.exe\0" + (cmd + "\0").encode("utf-16-le") + b"\0\0\0\0")
    kp = (struct.pack("<IQQIQIIII", 4242, 1001, ft, 700, 900, 0, 0, 1, 1)
          + bytes([1, 1, 0, 0, 0, 0, 0, 16]) + struct.pack("<I", 0x3000)
          + (image + "\0").encode("utf-16-le") + bytes(8) + b"\0\0\0\0")
    stop = struct.pack("<IQQQIIIQQQIIIII", 4242, 1001, ft, ft + 10**7, 0, 1, 30, 1 << 20, 1 << 21, 10**8,
                       1, 2, 3, 4, 5) + b"svchost.exe\0"
    assert decode_system_process(1, 4, sl)["CommandLine"] == cmd
    assert decode_kernel_process(1, 3, kp)["ImageName"] == image
    assert decode_kernel_process(2, 2, stop)["ImageName"] == "svchost.exe"
    return [(SRC_SYSTEM_LOGGER, 0, 4, 1, 700, 8, ft, 0x240, sl), (SRC_KERNEL_PROCESS, 1, 3, 0, 700, 8, ft, 0x240, kp),
            (SRC_KERNEL_PROCESS, 2, 2, 0, 4242, 8, ft + 10**7, 0x240, stop)]


def test_queue_budget_counts_raw_records_under_etw():
    """Under the ETW source the queue holds raw records (payload bytes, not decoded events):
    the budget sizes it by what one of them holds, so the same memory queues more of them; with
    correlations the event queue fills too and a slot costs both."""
    import sys
    from sensor.daemon.budget import ENTRY_BYTES, RECORD_BYTES, queue_entry_bytes
    sizes = []
    for cmd in ("C:\\Windows\\system32\\svchost.exe -k netsvcs -p -s Schedule",
                "\"C:\\Program Files\\Backup\\agent.exe\" --job 1234 --target D:\\data\\set1234 --incremental " * 2):
        for raw in _raw_records_of_a_start(cmd):
            sizes.append(sys.getsizeof(raw) + sum(sys.getsizeof(x) for x in raw) + 8)   # + the deque slot
    assert max(sizes) <= RECORD_BYTES * 1.5 and sum(sizes) / len(sizes) <= RECORD_BYTES
    assert sum(sizes) / len(sizes) >= RECORD_BYTES / 2          # not a generous guess either
    assert queue_entry_bytes("etw") == RECORD_BYTES < ENTRY_BYTES["queue_size"]
    assert queue_entry_bytes("replay") == ENTRY_BYTES["queue_size"]
    assert queue_entry_bytes("etw", correlations=True) == RECORD_BYTES + ENTRY_BYTES["queue_size"]
    asked = {"queue_size": 1_000_000, "pe_cache_size": 4096, "process_table_size": 65536}
    etw = parse({"sensor": {"memory_limit_mb": 80, "queue_size": 1_000_000}, "source": {"kind": "etw"}}, "<t>")
    replay = parse({"sensor": {"memory_limit_mb": 80, "queue_size": 1_000_000}, "source": {"kind": "replay"}}, "<t>")
    corr = parse({"sensor": {"memory_limit_mb": 80, "queue_size": 1_000_000}, "source": {"kind": "etw"}}, "<t>")
    q_etw = apply_memory_caps(etw)["queue_size"]
    q_replay = apply_memory_caps(replay)["queue_size"]
    q_corr = apply_memory_caps(corr, correlations=True)["queue_size"]
    assert q_replay == memory_caps(80, asked)["queue_size"]
    assert q_etw == memory_caps(80, asked, RECORD_BYTES)["queue_size"]
    # the same share of memory: the byte figures scale the counts
    assert abs(q_etw * RECORD_BYTES - q_replay * ENTRY_BYTES["queue_size"]) <= ENTRY_BYTES["queue_size"]
    assert q_corr < q_replay < q_etw
    assert etw.sensor.queue_size == q_etw
