"""Lineage: grandparent fields, the ancestor chain, the real creator and "Parent process spoofing".

Every trace here is raw Kernel-Process records (payloads built from the manifest field lists by
tests/test_etw_decode.py's encoder) written to a capture file and replayed through the same
processor as live capture; the ETW header's ProcessId is the creator.
"""
from __future__ import annotations

from sensor.detect import matcher as matchers
from sensor.detect.alerts import build_alert
from sensor.detect.seed import builtin_rules
from sensor.detect.spoofing import RULE_ID, spoofing_rule
from sensor.enrich.process_table import ProcessTable
from sensor.events import ProcessEvent
from sensor.sources import read_paths
from sensor.sources.base import ReadStats
from sensor.sources.etw_raw import SRC_KERNEL_PROCESS

from .test_capture import FT0, kp, rec, write_capture

S = 10_000_000
VOL = "\\Device\\HarddiskVolume3"


def rundown(pid, ppid, seq, pseq, image, ct):
    return rec(SRC_KERNEL_PROCESS, 15, 1, 0, kp(15, 1, ProcessID=pid, ParentProcessID=ppid, CreateTime=ct,
                                                ProcessSequenceNumber=seq, ImageName=VOL + image))


def start(pid, ppid, seq, pseq, image, ct, creator=None):
    return rec(SRC_KERNEL_PROCESS, 1, 5, 1, kp(1, 5, ProcessID=pid, ParentProcessID=ppid, CreateTime=ct,
                                               ProcessSequenceNumber=seq, ParentProcessSequenceNumber=pseq,
                                               MandatoryLabel=(16, [0x2000]), ImageName=VOL + image),
               pid=ppid if creator is None else creator, tid=1, ts=ct)


def stop(pid, seq, ct, exit_ft):
    return rec(SRC_KERNEL_PROCESS, 2, 2, 2, kp(2, 2, ProcessID=pid, ProcessSequenceNumber=seq, CreateTime=ct,
                                               ExitTime=exit_ft), ts=exit_ft)


def replay(tmp_path, records):
    path = write_capture(tmp_path / "t.capture.jsonl", records, system_logger=False)
    stats = ReadStats()
    events = list(read_paths([str(path)], stats))
    assert stats.errors == []
    return {ev["ProcessId"]: ev for ev in events}


EXPLORER = "\\Windows\\explorer.exe"
CMD = "\\Windows\\System32\\cmd.exe"
PS = "\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
WORD = "\\Program Files\\Office\\WINWORD.EXE"
SVCHOST = "\\Windows\\System32\\svchost.exe"


def test_grandparent_and_chain_survive_the_exit_of_parent_and_grandparent(tmp_path):
    evs = replay(tmp_path, [
        rundown(500, 400, 5, 4, "\\Windows\\System32\\winlogon.exe", FT0 - 100 * S),
        start(1000, 500, 10, 5, EXPLORER, FT0 - 50 * S),
        start(2000, 1000, 20, 10, CMD, FT0 - 10 * S),
        stop(1000, 10, FT0 - 50 * S, FT0 - 5 * S),          # explorer exits
        start(3000, 2000, 30, 20, PS, FT0 - 2 * S),
        stop(2000, 20, FT0 - 10 * S, FT0 - 1 * S),           # cmd exits
        start(4000, 3000, 40, 30, "\\Windows\\System32\\whoami.exe", FT0),
    ])
    ps, who = evs[3000], evs[4000]
    assert ps["ParentImage"] == "C:" + CMD and ps["GrandParentImage"] == "C:" + EXPLORER
    assert ps["GrandParentProcessId"] == 1000
    assert ps["ParentChain"] == " > ".join("C:" + p for p in ("\\Windows\\System32\\winlogon.exe", EXPLORER, CMD))
    assert [a["ProcessId"] for a in ps["ProcessTree"]] == [500, 1000, 2000]
    assert ps["ProcessTree"][1]["UtcTime"] == "2024-01-17 21:19:10.000"
    assert who["ParentImage"] == "C:" + PS and who["GrandParentImage"] == "C:" + CMD
    assert who["ParentChain"].endswith("C:" + CMD + " > C:" + PS)
    assert who.origin["GrandParentImage"] == "process_table"
    assert who["CreatorProcessId"] == 3000 and who["CreatorImage"] == "C:" + PS


def test_a_reused_pid_never_becomes_a_grandparent(tmp_path):
    evs = replay(tmp_path, [
        start(1000, 4, 10, 1, EXPLORER, FT0 - 50 * S),
        start(2000, 1000, 20, 10, CMD, FT0 - 10 * S),
        stop(1000, 10, FT0 - 50 * S, FT0 - 8 * S),
        start(1000, 4, 11, 1, WORD, FT0 - 7 * S),            # pid 1000 reused by another process
        start(3000, 2000, 30, 20, PS, FT0),
    ])
    ps = evs[3000]
    # cmd's parent is the first pid-1000 process (sequence 10), not Word (sequence 11)
    assert ps["GrandParentImage"] == "C:" + EXPLORER and ps["GrandParentProcessId"] == 1000
    # without sequence numbers the lifetimes decide: a grandparent that started after its child is refused
    t = ProcessTable()
    t.add(1000, FT0 - 50 * S, image="old")
    t.exited(1000, FT0 - 50 * S, exit_time=FT0 - 8 * S)
    parent = t.add(2000, FT0 - 10 * S, ppid=1000, image="cmd")
    t.add(1000, FT0 - 7 * S, image="new")
    assert [a.image for a in t.ancestors(t.add(3000, FT0, ppid=2000))] == ["cmd", "old"]
    t2 = ProcessTable()
    t2.add(2000, FT0 - 10 * S, ppid=1000, image="cmd")
    t2.add(1000, FT0 - 7 * S, image="new")                 # only the reuse is known
    assert [a.image for a in t2.ancestors(t2.add(3000, FT0, ppid=2000))] == ["cmd"]
    assert parent is not None


def test_the_chain_is_bounded_and_a_pid_loop_ends_it():
    t = ProcessTable()
    for pid in range(1, 40):
        t.add(pid, FT0 + pid, ppid=pid - 1, image=f"p{pid}")
    assert len(t.ancestors(t.get(39))) == 8
    loop = ProcessTable()
    loop.add(1, FT0, ppid=2, image="a")
    loop.add(2, FT0, ppid=1, image="b")
    assert [a.image for a in loop.ancestors(loop.add(3, FT0 + 1, ppid=1))] == ["a", "b"]


def test_a_live_chain_names_the_same_number_of_ancestors_as_a_replayed_one(tmp_path):
    # one bound for ParentChain and ProcessTree, whether the ancestors come from the live
    # process table or from a Sysmon recording (sensor.sources.lineage uses the same constant)
    from sensor.events import MAX_CHAIN
    from sensor.sources import lineage
    assert lineage.MAX_CHAIN is MAX_CHAIN
    line = [rec(SRC_KERNEL_PROCESS, 15, 1, 0,
                kp(15, 1, ProcessID=100 + i, ParentProcessID=99 + i, CreateTime=FT0 - (100 - i) * S,
                   ProcessSequenceNumber=1 + i, ParentProcessSequenceNumber=i,
                   ImageName=f"{VOL}\\Windows\\g{i}.exe"))
            for i in range(20)]
    ev = replay(tmp_path, [*line, start(500, 119, 500, 20, CMD, FT0)])[500]
    chain = ev["ParentChain"].split(" > ")
    assert len(chain) == MAX_CHAIN and len(ev["ProcessTree"]) == MAX_CHAIN
    assert [c.rsplit("\\", 1)[1] for c in chain] == [f"g{i}.exe" for i in range(20 - MAX_CHAIN, 20)]
    assert [a["ProcessId"] for a in ev["ProcessTree"]] == list(range(120 - MAX_CHAIN, 120))


def spoof_trace(creator_image=WORD, extra=()):
    return [
        rundown(700, 600, 7, 6, creator_image, FT0 - 90 * S),
        rundown(1000, 900, 10, 9, EXPLORER, FT0 - 80 * S),
        *extra,
        # a process declares explorer as parent, but pid 700 created it
        start(3000, 1000, 30, 10, PS, FT0, creator=700),
        start(3100, 1000, 31, 10, CMD, FT0 + S),             # a plain child of explorer
    ]


def match_ids(events):
    rules = builtin_rules()
    out = {}
    for engine in matchers.ENGINES:
        m = matchers.create(rules, engine)
        out[engine] = {ev["ProcessId"]: sorted(rules[i].id for i in m.match(ev)) for ev in events}
    first = next(iter(out.values()))
    assert all(v == first for v in out.values())        # both engines agree
    return first


def test_a_spoofed_parent_alerts_with_the_real_creator(tmp_path):
    evs = replay(tmp_path, spoof_trace())
    ps = evs[3000]
    assert ps["ParentProcessId"] == 1000 and ps["ParentImage"] == "C:" + EXPLORER
    assert ps["CreatorProcessId"] == 700 and ps["CreatorImage"] == "C:" + WORD
    assert ps.origin["CreatorProcessId"] == "etw" and ps.origin["CreatorImage"] == "process_table"
    got = match_ids(evs.values())
    assert got == {3000: [RULE_ID], 3100: []}
    alert = build_alert(spoofing_rule(), ps)
    assert alert["rule"]["title"] == "Parent process spoofing"
    assert alert["event"]["CreatorImage"] == "C:" + WORD and alert["event"]["ParentChain"] == "C:" + EXPLORER
    assert alert["event"]["ProcessTree"] == [{"ProcessId": 1000, "Image": "C:" + EXPLORER,
                                              "UtcTime": "2024-01-17 21:18:40.000"}]


def test_documented_brokers_and_the_kernel_do_not_alert(tmp_path):
    evs = replay(tmp_path, spoof_trace(SVCHOST) + [start(3200, 1000, 32, 10, CMD, FT0 + 2 * S, creator=4)])
    assert evs[3000]["CreatorImage"] == "C:" + SVCHOST
    assert match_ids(evs.values()) == {3000: [], 3100: [], 3200: []}
    # a file called svchost.exe outside System32 is no broker
    evs = replay(tmp_path, spoof_trace("\\Users\\Public\\svchost.exe"))
    assert match_ids(evs.values())[3000] == [RULE_ID]
    reasons = [e["reason"] for e in spoofing_rule().meta["exceptions"]]
    assert all(len(r) > 20 for r in reasons) and any("seclogon" in r for r in reasons)


def test_an_unknown_creator_still_alerts_and_sources_without_a_creator_never_do(tmp_path):
    evs = replay(tmp_path, [rundown(1000, 900, 10, 9, EXPLORER, FT0 - 80 * S),
                            start(3000, 1000, 30, 10, PS, FT0, creator=777)])
    assert evs[3000]["CreatorImage"] is None and match_ids(evs.values()) == {3000: [RULE_ID]}
    sysmon_like = ProcessEvent(Image="C:" + PS, ProcessId=5, ParentProcessId=6, ParentImage="C:" + EXPLORER)
    assert match_ids([sysmon_like]) == {5: []}
