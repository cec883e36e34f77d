"""Lineage for recorded Sysmon starts (sensor/sources/lineage.py): GrandParent* and ParentChain
from the recording's own ProcessGuid/ParentProcessGuid, bounded, never guessed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensor.cli import main
from sensor.sources import ReadStats, read_paths
from sensor.sources.lineage import LINEAGE_FIELDS, MAX_CHAIN, ReplayLineage

WINLOGON = "C:\\Windows\\System32\\winlogon.exe"
EXPLORER = "C:\\Windows\\explorer.exe"
CMD = "C:\\Windows\\System32\\cmd.exe"
PS = "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
WHOAMI = "C:\\Windows\\System32\\whoami.exe"


def start(guid, pid, image, cmd, parent_guid, ppid, parent_image, parent_cmd, t="2026-01-01 10:00:00.000"):
    """A Sysmon EID 1 as JSON lines carry it (the data fields keyed by their Sysmon names)."""
    return {"UtcTime": t, "ProcessGuid": guid, "ProcessId": pid, "Image": image, "CommandLine": cmd,
            "ParentProcessGuid": parent_guid, "ParentProcessId": ppid, "ParentImage": parent_image,
            "ParentCommandLine": parent_cmd}


# explorer (started by winlogon, whose own start is not recorded) -> cmd -> powershell -> whoami
EXPLORER_START = start("{A-1}", 100, EXPLORER, "explorer.exe", "{W-0}", 50, WINLOGON, "winlogon.exe")
CMD_START = start("{A-2}", 200, CMD, "cmd.exe /k", "{A-1}", 100, EXPLORER, "explorer.exe")
PS_START = start("{A-3}", 300, PS, "powershell -nop", "{A-2}", 200, CMD, "cmd.exe /k")
WHOAMI_START = start("{A-4}", 400, WHOAMI, "whoami /all", "{A-3}", 300, PS, "powershell -nop")


def write_jsonl(path: Path, events) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def read(*paths):
    stats = ReadStats()
    events = list(read_paths([str(p) for p in paths], stats))
    assert not stats.errors
    return events


def test_four_generations_get_grandparents_and_the_chain(tmp_path):
    evs = read(write_jsonl(tmp_path / "s.jsonl", [EXPLORER_START, CMD_START, PS_START, WHOAMI_START]))
    explorer, cmd, ps, who = evs
    # explorer's parent (winlogon) was never read: nothing is made up
    assert not any(explorer.get(k) is not None for k in LINEAGE_FIELDS)
    # cmd: its parent explorer was read; explorer's event names winlogon as ITS parent
    assert cmd["GrandParentImage"] == WINLOGON
    assert cmd["GrandParentCommandLine"] == "winlogon.exe"
    assert cmd["GrandParentProcessId"] == 50
    assert cmd["ParentChain"] == f"{WINLOGON} > {EXPLORER}"
    assert ps["GrandParentImage"] == EXPLORER and ps["GrandParentProcessId"] == 100
    assert ps["GrandParentCommandLine"] == "explorer.exe"
    assert ps["ParentChain"] == f"{WINLOGON} > {EXPLORER} > {CMD}"
    assert who["GrandParentImage"] == CMD and who["GrandParentCommandLine"] == "cmd.exe /k"
    assert who["GrandParentProcessId"] == 200
    assert who["ParentChain"] == f"{WINLOGON} > {EXPLORER} > {CMD} > {PS}"


def test_a_parent_read_later_or_never_gives_no_lineage(tmp_path):
    # the child comes first: at its turn the parent is unknown, and the reader does not look ahead
    evs = read(write_jsonl(tmp_path / "s.jsonl", [PS_START, CMD_START]))
    assert not any(evs[0].get(k) is not None for k in LINEAGE_FIELDS)
    only_child = read(write_jsonl(tmp_path / "t.jsonl", [WHOAMI_START]))[0]
    assert not any(only_child.get(k) is not None for k in LINEAGE_FIELDS)


def test_lineage_crosses_files_of_one_read(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [EXPLORER_START, CMD_START])
    write_jsonl(folder / "b.jsonl", [PS_START])
    ps = read(folder)[-1]
    assert ps["GrandParentImage"] == EXPLORER
    # two separate reads share nothing
    assert read(folder / "b.jsonl")[0].get("GrandParentImage") is None


def test_guids_match_whatever_their_braces_and_case():
    lin = ReplayLineage()
    lin.apply(dict(CMD_START, ProcessGuid="{a-2}"))
    ps = lin.apply(dict(PS_START, ParentProcessGuid="A-2"))
    assert ps["GrandParentImage"] == EXPLORER


def test_an_event_that_carries_lineage_is_left_alone():
    lin = ReplayLineage()
    lin.apply(dict(CMD_START))
    ps = lin.apply(dict(PS_START, ParentChain="recorded"))
    assert ps["ParentChain"] == "recorded" and ps.get("GrandParentImage") is None
    # it is still remembered as a parent for its own children
    assert lin.apply(dict(WHOAMI_START))["GrandParentImage"] == CMD


def test_security_4688_records_get_no_lineage(tmp_path):
    recs = []
    for pid, ppid, image, parent in ((0x200, 0x100, CMD, EXPLORER), (0x300, 0x200, PS, CMD)):
        recs.append({"channel": "Security", "provider": "Microsoft-Windows-Security-Auditing", "eid": 4688,
                     "computer": "WS1", "ts": "2026-01-01T10:00:00Z",
                     "data": {"NewProcessId": hex(pid), "ProcessId": hex(ppid), "NewProcessName": image,
                              "ParentProcessName": parent, "CommandLine": "x"}})
    evs = read(write_jsonl(tmp_path / "sec.jsonl", recs))
    assert evs[1]["ParentImage"] == CMD
    assert not any(e.get(k) is not None for e in evs for k in LINEAGE_FIELDS)


def test_a_guid_loop_ends_the_chain_and_the_chain_is_bounded():
    lin = ReplayLineage()
    # two starts that name each other as parent (a malformed or forged recording)
    lin.apply(start("{L-1}", 1, "C:\\a.exe", "a", "{L-2}", 2, "C:\\b.exe", "b"))
    lin.apply(start("{L-2}", 2, "C:\\b.exe", "b", "{L-1}", 1, "C:\\a.exe", "a"))
    ev = lin.apply(start("{L-3}", 3, "C:\\c.exe", "c", "{L-2}", 2, "C:\\b.exe", "b"))
    assert ev["ParentChain"] == "C:\\a.exe > C:\\b.exe"
    # a line of 20 generations: the chain names the MAX_CHAIN nearest ancestors
    lin = ReplayLineage()
    for i in range(20):
        lin.apply(start(f"{{G-{i}}}", i + 10, f"C:\\g{i}.exe", f"g{i}", f"{{G-{i - 1}}}", i + 9,
                        f"C:\\g{i - 1}.exe", f"g{i - 1}"))
    last = lin.apply(start("{G-X}", 99, "C:\\x.exe", "x", "{G-19}", 29, "C:\\g19.exe", "g19"))
    assert last["ParentChain"].split(" > ") == [f"C:\\g{i}.exe" for i in range(20 - MAX_CHAIN, 20)]
    assert last["GrandParentImage"] == "C:\\g18.exe"


def test_memory_is_bounded_by_entries_and_by_text():
    lin = ReplayLineage(max_entries=3)
    for i in range(10):
        lin.apply(start(f"{{E-{i}}}", i, "C:\\e.exe", "e", "{X}", 1, "C:\\p.exe", "p"))
    assert len(lin) == 3 and lin.forgotten == 7
    # the oldest went first: a child of start 0 gets nothing, a child of start 9 gets lineage
    assert lin.apply(start("{C-0}", 50, "C:\\c.exe", "c", "{E-0}", 0, "C:\\e.exe", "e")).get("GrandParentImage") is None
    assert lin.apply(start("{C-9}", 51, "C:\\c.exe", "c", "{E-9}", 9, "C:\\e.exe", "e"))["GrandParentImage"] \
        == "C:\\p.exe"
    # attacker-sized command lines: the text bound holds whatever the count bound allows
    big = "A" * 32_767
    lin = ReplayLineage(max_entries=1_000, max_chars=100_000)
    for i in range(50):
        lin.apply(start(f"{{B-{i}}}", i, "C:\\b.exe", big, f"{{B-{i - 1}}}", i, "C:\\b.exe", big))
    assert lin._chars <= 100_000 and len(lin) == 3 and lin.forgotten == 47
    # guids are text an attacker chooses too: they count against the same bound
    lin = ReplayLineage(max_entries=1_000, max_chars=100_000)
    for i in range(50):
        lin.apply(start(f"{i}" + "G" * 32_000, i, "C:\\b.exe", "b", "P" * 32_000, i, "C:\\p.exe", "p"))
    assert lin._chars <= 100_000 and len(lin) == 1


def test_a_grandparent_rule_matches_in_scan(tmp_path):
    rule = tmp_path / "gp.yml"
    rule.write_text(
        "title: whoami under a shell started by cmd\n"
        "id: 1b7c6a52-9f35-4d55-9a86-3c4b0b2a0f11\n"
        "status: test\n"
        "logsource: {category: process_creation, product: windows}\n"
        "detection:\n"
        "  selection:\n"
        "    Image|endswith: '\\whoami.exe'\n"
        "    GrandParentImage|endswith: '\\cmd.exe'\n"
        "  condition: selection\n"
        "level: high\n", encoding="utf-8")
    src = write_jsonl(tmp_path / "s.jsonl", [EXPLORER_START, CMD_START, PS_START, WHOAMI_START])
    out = tmp_path / "alerts.jsonl"
    assert main(["scan", str(src), "--no-builtin-rules", "--rules", str(rule), "-o", str(out)]) == 0
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(alerts) == 1 and alerts[0]["event"]["ProcessId"] == 400
    assert alerts[0]["event"]["ParentChain"].endswith(f"{CMD} > {PS}")


REGRESSION = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sigma-regression"


@pytest.mark.skipif(not REGRESSION.is_dir(), reason="the SigmaHQ regression EVTX (../shared/data) is not here")
def test_real_sysmon_recordings_agree_with_their_parents_events():
    """On every real Sysmon recording: each GrandParent* equals what the parent's own start
    names as its parent, found by a plain scan of the whole file (an oracle that looks ahead)."""
    files = sorted(str(p) for p in REGRESSION.rglob("*.evtx"))
    checked = 0
    for f in files:
        evs = list(read_paths([f], ReadStats()))
        by_guid = {}
        for ev in evs:
            g = ev.get("ProcessGuid")
            if isinstance(g, str):
                by_guid.setdefault(g.strip("{}").upper(), ev)
        for i, ev in enumerate(evs):
            pg = ev.get("ParentProcessGuid")
            parent = by_guid.get(pg.strip("{}").upper()) if isinstance(pg, str) else None
            if parent is None or evs.index(parent) > i:
                assert ev.get("GrandParentImage") is None
                continue
            if parent.get("ParentImage"):
                assert ev["GrandParentImage"] == parent["ParentImage"]
                assert ev["ParentChain"].endswith(parent["ParentImage"] + " > " + (parent.get("Image") or "?"))
                checked += 1
    assert checked > 0, files
