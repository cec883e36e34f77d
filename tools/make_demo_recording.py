"""Build the demo recording shipped in sensor/data/demo/ (reproducible).

Real process starts whose licences allow bundling (EVTX-to-MITRE-Attack, CC0-1.0;
OTRF Security-Datasets, MIT) are sampled from the research corpus, and four
mofcomp.exe starts are built from the public observations (see the README in
sensor/data/demo/).  Usage: python tools/make_demo_recording.py [../shared]
"""
from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LICENSED = {"evtx-to-mitre-attack": "CC0-1.0", "otrf-security-datasets": "MIT"}
PER_SOURCE = {("evtx-to-mitre-attack", 4688): 150, ("evtx-to-mitre-attack", 1): 14,
              ("otrf-security-datasets", 1): 200, ("otrf-security-datasets", 4688): 120}


def mofcomp_events(observations: list[dict]) -> list[dict]:
    pr6204, art = observations[0], observations[1]
    out = []
    # 1. PR #6204's false positive as transcribed (no parent in the excerpt).
    out.append({"src": "public-observation", "path": pr6204["source"], "rec": 1,
                "channel": pr6204["channel"], "eid": 1, "computer": "DEMO-WS01",
                "ts": "2026-07-24T07:09:58.691Z", "licence": "facts transcribed from public text",
                "data": dict(pr6204["data"])})
    # 2. Atomic Red Team T1546.003-3: the analysis says the parent is PowerShell.
    data = dict(art["data"])
    data.update(ParentImage="C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
                UtcTime="2026-03-13 10:15:02.120", ProcessId="5128")
    out.append({"src": "public-observation", "path": art["source"], "rec": 2,
                "channel": art["channel"], "eid": 1, "computer": "ACME-WS02",
                "ts": "2026-03-13T10:15:02.120Z", "licence": "CC0-1.0", "data": data})
    # 3. The same technique through a renamed copy: only the PE version resource
    #    (OriginalFilename mofcomp.exe) gives it away.  Sysmon would fill
    #    OriginalFileName itself; the live sensor reads it from the image, so it is
    #    left out here and resolved from the bundled PE file at replay time.
    out.append({"src": "constructed", "path": "renamed mofcomp (demo)", "rec": 3,
                "channel": "Microsoft-Windows-Sysmon/Operational", "eid": 1,
                "computer": "DEMO-WS01", "ts": "2026-03-13T10:20:00.000Z", "licence": "CC0-1.0",
                "data": {"UtcTime": "2026-03-13 10:20:00.000", "ProcessId": "6240",
                         "Image": "C:\\Users\\Public\\renamed_tool.exe",
                         "CommandLine": "renamed_tool.exe C:\\Users\\Public\\persist.mof",
                         "CurrentDirectory": "C:\\Users\\Public\\",
                         "User": "DEMO-WS01\\alice", "IntegrityLevel": "High",
                         "ParentProcessId": "4410",
                         "ParentImage": "C:\\Windows\\System32\\cmd.exe",
                         "ParentCommandLine": "cmd.exe /c renamed_tool.exe C:\\Users\\Public\\persist.mof"}})
    # 4. A benign WMI provider compile: WmiPrvSE parent, .mof under C:\Windows\TEMP
    #    -> the rule's filters suppress it (no alert expected).
    out.append({"src": "constructed", "path": "WmiPrvSE mof compile (demo)", "rec": 4,
                "channel": "Microsoft-Windows-Sysmon/Operational", "eid": 1,
                "computer": "DEMO-SRV01", "ts": "2026-03-13T10:25:00.000Z", "licence": "CC0-1.0",
                "data": {"UtcTime": "2026-03-13 10:25:00.000", "ProcessId": "7001",
                         "Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe",
                         "OriginalFileName": "mofcomp.exe",
                         "CommandLine": "mofcomp.exe C:\\Windows\\TEMP\\provider.mof",
                         "User": "NT AUTHORITY\\SYSTEM", "ParentProcessId": "2200",
                         "ParentImage": "C:\\Windows\\System32\\wbem\\WmiPrvSE.exe"}})
    return out


def main(argv: list[str]) -> int:
    shared = Path(argv[1]) if len(argv) > 1 else ROOT.parent / "shared"
    corpus = shared / "data/events/process_creation_corpus.jsonl.gz"
    pools: dict = {k: [] for k in PER_SOURCE}
    with gzip.open(corpus, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            key = (rec["src"], rec["eid"])
            if key in pools:
                pools[key].append(rec)
    rng = random.Random(20261127)
    events = []
    for key, n in PER_SOURCE.items():
        picked = rng.sample(pools[key], min(n, len(pools[key])))
        for rec in picked:
            rec["licence"] = LICENSED[key[0]]
        events.extend(picked)
    events.sort(key=lambda r: r.get("ts") or "")
    obs = json.loads((shared / "data/events/mofcomp_public_observations.json").read_text())
    mof = mofcomp_events(obs)
    # spread the four mofcomp starts through the recording
    for i, rec in enumerate(mof):
        events.insert((i + 1) * len(events) // (len(mof) + 1), rec)
    out = ROOT / "sensor/data/demo/recording.jsonl.gz"
    with gzip.GzipFile(out, "wb", mtime=0) as fh:
        for rec in events:
            fh.write((json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode())
    print(f"wrote {out} ({len(events)} events)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
