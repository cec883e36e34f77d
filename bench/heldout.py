"""A held-out event set for the matcher benchmarks: process starts the bench corpus
(../shared/data/events) does not contain, and that nothing in the matcher was tuned on.

It is made of
  * every process start in the SigmaHQ regression data (../shared/data/sigma-regression,
    86 Sysmon EID 1 events from public attack recordings),
  * every process start in ../shared/data/evtx/security-4688 (784 Security 4688 events),
  * generated process starts with long, realistic command lines (browser and Electron
    helpers, Java class paths, PowerShell scripts and encoded commands, MSBuild, installers,
    package managers), written from general knowledge of Windows software: templates and a
    fixed random seed in this file, no recorded data.  Their command lines average about
    650 characters, three times the bench corpus.

The set is split into two halves by position (even: *look*, odd: *measure*).  The look
half may be inspected while working on the matcher; the measure half is only ever timed.
Benchmarks report both.

    .venv/bin/python bench/heldout.py            # summary of the set
"""
from __future__ import annotations

import base64
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REAL = [SHARED / "data" / "sigma-regression", SHARED / "data" / "evtx" / "security-4688"]
SEED = 20261129
GENERATED = 2400
sys.path.insert(0, str(ROOT))

USERS = ["CONTOSO\\alice", "CONTOSO\\bob.smith", "NT AUTHORITY\\SYSTEM", "DESKTOP-7Q2M\\dev",
         "NT AUTHORITY\\LOCAL SERVICE", "CONTOSO\\svc_build", "WORKSTATION\\admin"]
LEVELS = ["Medium", "High", "System", "Low"]
WORDS = ["report", "invoice", "build", "release", "data", "cache", "backup", "config", "users",
         "assets", "logs", "export", "temp", "project", "module", "index", "client", "server"]


def _hex(rng, n):
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _guid(rng):
    return f"{{{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 12)}}}".upper()


def _path(rng, depth=3):
    return "\\".join(rng.choice(WORDS) + (str(rng.randint(1, 99)) if rng.random() < 0.3 else "")
                     for _ in range(depth))


def chromium(rng):
    app, exe, company, product = rng.choice([
        ("C:\\Program Files (x86)\\Microsoft\\Edge\\Application", "msedge.exe", "Microsoft Corporation",
         "Microsoft Edge"),
        ("C:\\Program Files\\Google\\Chrome\\Application", "chrome.exe", "Google LLC", "Google Chrome"),
        ("C:\\Users\\alice\\AppData\\Local\\Programs\\Microsoft VS Code", "Code.exe",
         "Microsoft Corporation", "Visual Studio Code"),
        ("C:\\Users\\bob.smith\\AppData\\Local\\Microsoft\\Teams\\current", "Teams.exe",
         "Microsoft Corporation", "Microsoft Teams"),
    ])
    kind = rng.choice(["renderer", "gpu-process", "utility", "crashpad-handler"])
    args = [f'"{app}\\{exe}"', f"--type={kind}"]
    if kind == "utility":
        args.append(f"--utility-sub-type={rng.choice(['network.mojom.NetworkService', 'storage.mojom.StorageService', 'audio.mojom.AudioService'])}")
    args += [f"--lang={rng.choice(['en-US', 'de', 'fr', 'ja'])}", "--service-sandbox-type=none",
             f"--user-data-dir=\"C:\\Users\\alice\\AppData\\Local\\{product.replace(' ', '')}\\User Data\"",
             f"--renderer-client-id={rng.randint(4, 400)}",
             f"--time-ticks-at-unix-epoch=-{rng.randint(10**15, 10**16)}",
             f"--launch-time-ticks={rng.randint(10**9, 10**11)}",
             f"--field-trial-handle={rng.randint(1000, 9999)},i,{rng.randint(10**18, 10**19)},"
             f"{rng.randint(10**18, 10**19)},262144",
             "--enable-features=" + ",".join(rng.sample(
                 ["msEdgeTranslate", "BackForwardCache", "WebRtcHideLocalIpsWithMdns", "msSmartScreen",
                  "PartitionedCookies", "ThirdPartyStoragePartitioning", "AutofillServerCommunication",
                  "msEdgeSidebarV2", "NetworkServiceInProcess", "UseSkiaRenderer"], 5)),
             "--disable-features=" + ",".join(rng.sample(
                 ["CalculateNativeWinOcclusion", "SpareRendererForSitePerProcess", "WinUseBrowserSpellChecker",
                  "msUndersideButton", "Translate"], 3)),
             f"--variations-seed-version={rng.randint(1, 9)}", f"--mojo-platform-channel-handle={rng.randint(1000, 9000)}",
             f"/prefetch:{rng.randint(1, 8)}"]
    return {"Image": f"{app}\\{exe}", "OriginalFileName": exe, "Company": company, "Product": product,
            "Description": product, "CommandLine": " ".join(args),
            "ParentImage": f"{app}\\{exe}", "ParentCommandLine": f'"{app}\\{exe}" --no-startup-window'}


def java(rng):
    jdk = rng.choice(["C:\\Program Files\\Java\\jdk-17.0.2", "C:\\Program Files\\Eclipse Adoptium\\jdk-21.0.1.12-hotspot",
                      "C:\\Program Files\\Amazon Corretto\\jdk11.0.20_9"])
    base = f"C:\\{rng.choice(['apps', 'opt', 'srv'])}\\{rng.choice(WORDS)}"
    jars = ";".join(f"{base}\\lib\\{rng.choice(WORDS)}-{rng.choice(WORDS)}-{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}.jar"
                    for _ in range(rng.randint(15, 45)))
    cmd = (f'"{jdk}\\bin\\java.exe" -Xms{rng.choice([256, 512])}m -Xmx{rng.choice([1, 2, 4])}g '
           f"-XX:+UseG1GC -Dfile.encoding=UTF-8 -Duser.timezone=UTC -Dlog4j.configurationFile={base}\\conf\\log4j2.xml "
           f'-cp "{jars}" com.{rng.choice(WORDS)}.{rng.choice(WORDS)}.Main --config {base}\\conf\\app.yaml')
    return {"Image": f"{jdk}\\bin\\java.exe", "OriginalFileName": "java.exe", "Company": "Oracle Corporation",
            "Product": "Java(TM) Platform SE 17", "Description": "Java(TM) Platform SE binary",
            "CommandLine": cmd, "ParentImage": "C:\\Windows\\System32\\services.exe",
            "ParentCommandLine": "C:\\Windows\\system32\\services.exe"}


def powershell(rng):
    script = "; ".join([
        f"$items = Get-ChildItem -Path 'C:\\{_path(rng)}' -Recurse -Filter '*.{rng.choice(['log', 'json', 'csv'])}'",
        "$items | Where-Object { $_.LastWriteTime -lt (Get-Date).AddDays(-%d) } | Remove-Item -Force" % rng.randint(7, 90),
        f"Write-Output ('Cleaned ' + $items.Count + ' files from {rng.choice(WORDS)}')",
        f"Import-Module {rng.choice(['Az.Accounts', 'ActiveDirectory', 'PSReadLine', 'Pester'])}",
        f"Set-Location 'C:\\{_path(rng, 2)}'",
    ][:rng.randint(2, 5)])
    if rng.random() < 0.4:
        enc = base64.b64encode(script.encode("utf-16-le")).decode()
        cmd = f"powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy RemoteSigned -EncodedCommand {enc}"
    else:
        cmd = f'powershell.exe -NoLogo -NoProfile -NonInteractive -Command "& {{ {script} }}"'
    return {"Image": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
            "OriginalFileName": "PowerShell.EXE", "Company": "Microsoft Corporation",
            "Product": "Microsoft® Windows® Operating System", "Description": "Windows PowerShell",
            "CommandLine": cmd, "ParentImage": "C:\\Windows\\System32\\svchost.exe",
            "ParentCommandLine": "C:\\Windows\\system32\\svchost.exe -k netsvcs -p -s Schedule"}


def msbuild(rng):
    proj = f"C:\\src\\{rng.choice(WORDS)}\\{rng.choice(WORDS)}.{rng.choice(['csproj', 'vcxproj', 'sln'])}"
    props = ";".join(f"{k}={v}" for k, v in rng.sample([
        ("Configuration", "Release"), ("Platform", "x64"), ("OutDir", f"C:\\build\\out\\{rng.randint(1, 999)}\\"),
        ("RestorePackages", "true"), ("TreatWarningsAsErrors", "false"), ("DeployOnBuild", "false"),
        ("VersionPrefix", f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 300)}"),
        ("ContinuousIntegrationBuild", "true"), ("SolutionDir", "C:\\src\\")], 6))
    cmd = (f'"C:\\Program Files\\Microsoft Visual Studio\\2022\\Enterprise\\MSBuild\\Current\\Bin\\amd64\\MSBuild.exe" '
           f'"{proj}" /t:Restore;Build /m /nr:false /v:minimal /p:{props} '
           f'/bl:C:\\build\\logs\\{rng.randint(10000, 99999)}.binlog /clp:Summary;ForceNoAlign')
    return {"Image": "C:\\Program Files\\Microsoft Visual Studio\\2022\\Enterprise\\MSBuild\\Current\\Bin\\amd64\\MSBuild.exe",
            "OriginalFileName": "MSBuild.exe", "Company": "Microsoft Corporation",
            "Product": "Microsoft® Build Tools®", "Description": "MSBuild.exe", "CommandLine": cmd,
            "ParentImage": "C:\\agent\\bin\\Agent.Worker.exe", "ParentCommandLine": "C:\\agent\\bin\\Agent.Worker.exe spawnclient 3904 3908"}


def package_manager(rng):
    tool = rng.choice(["node", "python", "git"])
    if tool == "node":
        img = "C:\\Program Files\\nodejs\\node.exe"
        pkgs = " ".join(f"@{rng.choice(WORDS)}/{rng.choice(WORDS)}@{rng.randint(1, 20)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}"
                        for _ in range(rng.randint(12, 35)))
        cmd = f'"{img}" "C:\\Program Files\\nodejs\\node_modules\\npm\\bin\\npm-cli.js" install --save-exact --no-audit {pkgs}'
        return {"Image": img, "OriginalFileName": "node.exe", "Company": "Node.js", "Product": "Node.js",
                "Description": "Node.js JavaScript Runtime", "CommandLine": cmd,
                "ParentImage": "C:\\Windows\\System32\\cmd.exe", "ParentCommandLine": "C:\\Windows\\system32\\cmd.exe /d /s /c \"npm ci\""}
    if tool == "python":
        img = "C:\\Users\\dev\\AppData\\Local\\Programs\\Python\\Python311\\python.exe"
        pkgs = " ".join(f"{rng.choice(WORDS)}-{rng.choice(WORDS)}=={rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
                        for _ in range(rng.randint(12, 40)))
        cmd = f'"{img}" -m pip install --disable-pip-version-check --no-input --upgrade {pkgs}'
        return {"Image": img, "OriginalFileName": "python.exe", "Company": "Python Software Foundation",
                "Product": "Python", "Description": "Python", "CommandLine": cmd,
                "ParentImage": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
                "ParentCommandLine": "powershell.exe -NoProfile"}
    img = "C:\\Program Files\\Git\\mingw64\\bin\\git.exe"
    files = " ".join(f"src/{rng.choice(WORDS)}/{rng.choice(WORDS)}_{rng.randint(1, 99)}.{rng.choice(['py', 'cs', 'ts', 'json'])}"
                     for _ in range(rng.randint(20, 50)))
    cmd = f'"{img}" -c core.quotepath=false -c color.ui=false diff --no-ext-diff --stat HEAD~{rng.randint(1, 9)} -- {files}'
    return {"Image": img, "OriginalFileName": "git.exe", "Company": "The Git Development Community",
            "Product": "Git", "Description": "Git for Windows", "CommandLine": cmd,
            "ParentImage": "C:\\Users\\dev\\AppData\\Local\\Programs\\Microsoft VS Code\\Code.exe",
            "ParentCommandLine": '"C:\\Users\\dev\\AppData\\Local\\Programs\\Microsoft VS Code\\Code.exe" --type=utility'}


def installer(rng):
    msi = f"C:\\Windows\\Installer\\{_hex(rng, 7)}.msi"
    props = " ".join(f"{k}=\"{v}\"" for k, v in rng.sample([
        ("INSTALLDIR", f"C:\\Program Files\\{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}"),
        ("ALLUSERS", "1"), ("REBOOT", "ReallySuppress"), ("TRANSFORMS", f"C:\\deploy\\{rng.choice(WORDS)}.mst"),
        ("PRODUCTCODE", _guid(rng)), ("UPGRADECODE", _guid(rng)), ("LICENSEKEY", _hex(rng, 24).upper())], 5))
    cmd = f'C:\\Windows\\System32\\msiexec.exe /i "{msi}" /qn /norestart /l*v "C:\\Windows\\Temp\\{rng.choice(WORDS)}_install.log" {props}'
    return {"Image": "C:\\Windows\\System32\\msiexec.exe", "OriginalFileName": "msiexec.exe",
            "Company": "Microsoft Corporation", "Product": "Windows Installer - Unicode",
            "Description": "Windows® installer", "CommandLine": cmd,
            "ParentImage": "C:\\Program Files\\Microsoft Configuration Manager\\bin\\x64\\CcmExec.exe",
            "ParentCommandLine": "C:\\Windows\\CCM\\CcmExec.exe"}


KINDS = [chromium, chromium, java, powershell, msbuild, package_manager, installer]


def generated(n: int = GENERATED, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ev = rng.choice(KINDS)(rng)
        ev.update({
            "User": rng.choice(USERS), "IntegrityLevel": rng.choice(LEVELS),
            "CurrentDirectory": f"C:\\{_path(rng, 2)}\\",
            "Hashes": f"SHA1={_hex(rng, 40).upper()},MD5={_hex(rng, 32).upper()},"
                      f"SHA256={_hex(rng, 64).upper()},IMPHASH={_hex(rng, 32).upper()}",
            "ProcessId": rng.randint(100, 60000), "ParentProcessId": rng.randint(100, 60000),
            "UtcTime": f"2026-11-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}",
            "Computer": f"{rng.choice(['WS', 'SRV', 'LAPTOP'])}-{rng.randint(100, 999)}.contoso.local",
            "ProcessGuid": _guid(rng), "ParentProcessGuid": _guid(rng), "LogonId": hex(rng.randint(0x3e7, 0xFFFFFF)),
        })
        out.append(ev)
    return out


def load() -> list:
    """The held-out events (ProcessEvent): real ones first, then the generated ones."""
    import sensor
    from sensor.events import ProcessEvent

    real = list(sensor.read_events([p for p in REAL if p.exists()]))
    return real + [ProcessEvent(e) for e in generated()]


def halves(events: list) -> tuple[list, list]:
    """(look, measure): even and odd positions."""
    return events[0::2], events[1::2]


def main() -> int:
    events = load()
    look, measure = halves(events)
    for name, evs in (("all", events), ("look", look), ("measure", measure)):
        lens = [len(e.get("CommandLine") or "") for e in evs]
        print(f"{name:8} {len(evs):6} events, CommandLine mean {statistics.mean(lens):6.0f} "
              f"median {statistics.median(lens):6.0f} max {max(lens):6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
