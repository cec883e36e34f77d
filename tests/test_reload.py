"""Hot reload: a full-speed stream matched while the rules are reloaded 100 times (every event
matched by exactly one complete set, nothing dropped, alerts equal to the set in force from its
swap point on), fail-closed reloads, the triggers (control socket, SIGHUP, a changed rule file,
an HTTPS URL with ETag / If-Modified-Since) and what a config change needs."""
from __future__ import annotations

import http.server
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sensor.daemon import reload as reload_mod
from sensor.daemon.config import parse
from sensor.daemon.control import handle_request, peer_allowed
from sensor.daemon.control_windows import PIPE_SDDL, pipe_mode, pipe_name, pipe_open_mode
from sensor.daemon.pipeline import Pipeline
from sensor.detect.ir import Predicate, Rule
from sensor.detect.matcher import create as create_matcher
from sensor.detect.pack import encode_pack
from sensor.detect.seed import builtin_rules
from sensor.events import ProcessEvent
from .https_server import serve_https, stop_https

ROOT = Path(__file__).resolve().parents[1]
WAIT = 120.0      # guards a hang only


def gen_rules(g: int) -> list[Rule]:
    """Generation ``g``: a rule every event matches, and two that depend on ``g``."""
    return [
        Rule(id=f"gen{g}-all", title=f"all {g}", predicates=(Predicate("Image", "endswith", (".exe",)),),
             condition=("pred", 0)),
        Rule(id=f"gen{g}-m", title=f"m {g}",
             predicates=(Predicate("CommandLine", "contains", (f" m{g % 5} ",)),), condition=("pred", 0)),
        Rule(id=f"gen{g}-p", title=f"p {g}",
             predicates=(Predicate("Image", "endswith", (f"\\p{g % 7}.exe",)),), condition=("pred", 0)),
    ]


def event(i: int) -> ProcessEvent:
    return ProcessEvent({"Image": f"C:\\x\\p{i % 7}.exe", "CommandLine": f"run m{i % 5} n{i}",
                         "ProcessId": i})


class CountingSource:
    """Emits numbered process starts as fast as the queue takes them, until stopped."""

    name = "counting"
    blocking = True

    def __init__(self):
        self.finished = threading.Event()
        self._stop = threading.Event()
        self.emitted = 0

    def start(self, emit):
        def run():
            i = 0
            while not self._stop.is_set():
                if emit(event(i)):
                    i += 1
            self.emitted = i
            self.finished.set()
        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()

    def stop(self):
        self._stop.set()
        self._t.join(WAIT)

    def stats(self):
        return {"emitted": self.emitted}


def write_pack(path: Path, rules) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(encode_pack(rules))
    os.replace(tmp, path)


def test_hundred_reloads_under_a_full_speed_stream(tmp_path):
    pack = tmp_path / "rules.pack"
    write_pack(pack, gen_rules(0))
    cfg = parse({"rules": {"paths": [str(pack)], "builtin": False, "watch_s": 0},
                 "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
    alerts: list[dict] = []
    from sensor.daemon.reload import load_configured
    pipe = Pipeline(source=CountingSource(), rules=load_configured(cfg).rules, heartbeat_interval=0,
                    alert_hook=alerts.append, batch_size=64, queue_size=4096)
    reloader = reload_mod.Reloader(pipe, cfg)
    pipe.start()
    refused = 0
    try:
        for g in range(1, 101):
            if g % 10 == 0:     # a damaged update in between: refused, the set in force stays
                pack.write_bytes(encode_pack(gen_rules(999))[:-10])
                res = reloader.reload("control")
                assert not res.ok and "truncated" in " ".join(res.errors)
                refused += 1
            write_pack(pack, gen_rules(g))
            res = reloader.reload("control")
            assert res.ok and res.applied, res.errors
            assert res.generation == g     # a refused reload does not count as a set
            time.sleep(0.002)          # let some events through with this set
    finally:
        pipe.source.stop()
        assert pipe.wait_source(WAIT)
        pipe.stop(drain_timeout=WAIT)
    n = pipe.source.emitted
    assert n > 1000 and pipe.events_in == n
    assert pipe.queue.stats()["dropped"] == 0
    assert pipe.reload_stats["reloads"] == 100 and pipe.reload_stats["failures"] == refused == 10

    # which set matched each event: the one whose catch-all rule fired (exactly one)
    by_event: dict[int, list[str]] = {}
    for a in alerts:
        by_event.setdefault(a["event"]["ProcessId"], []).append(a["rule"]["id"])
    assert sorted(by_event) == list(range(n)), "an event was not matched"
    gens = []
    for i in range(n):
        ids = by_event[i]
        alls = [r for r in ids if r.endswith("-all")]
        assert len(alls) == 1, (i, ids)
        g = int(alls[0][3:-4])
        assert all(r.startswith(f"gen{g}-") for r in ids), (i, ids)   # no mix of two sets
        gens.append(g)
    assert gens == sorted(gens), "a set ran again after its successor"
    # the swap points: every event from a swap on runs that set, the events before it do not
    seen = sorted(set(gens))
    assert seen[-1] == 100
    for g, at in pipe.swap_log:
        assert all(x >= g for x in gens[at:]) and all(x < g for x in gens[:at]), g
    # the alerts equal what the set in force gives for each event
    matchers = {g: (create_matcher(gen_rules(g)), gen_rules(g)) for g in seen}
    for i, g in enumerate(gens):
        m, rules = matchers[g]
        assert sorted(by_event[i]) == sorted(rules[j].id for j in m.match(event(i))), i


def test_failed_reload_keeps_the_set_and_raises_a_health_alert(tmp_path):
    from sensor.deliver.memory import MemoryOutput  # noqa: F401  (the spool takes the alert)
    from sensor.deliver.spool import Spool
    pack = tmp_path / "rules.pack"
    write_pack(pack, gen_rules(1))
    cfg = parse({"rules": {"paths": [str(pack)], "builtin": False, "watch_s": 0},
                 "sensor": {"data_dir": str(tmp_path / "data")}}, "<test>")
    spool = Spool(str(tmp_path / "spool.sqlite"))
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(1), heartbeat_interval=0, spool=spool)
    reloader = reload_mod.Reloader(pipe, cfg)
    pack.unlink()
    res = reloader.reload("signal")
    assert not res.ok and "no such file" in res.errors[0] and pipe.generation == 0
    assert [r.id for r in pipe.rules] == [r.id for r in gen_rules(1)]
    st = pipe.health()
    assert st.rules.reload_failures == 1 and "no such file" in st.rules.last_reload_error
    assert any("rule reload refused" in p for p in st.problems)
    rows = [it.decode() for it in spool.fetch(100, 1 << 24)]
    health = [r for r in rows if r.get("type") == "health"]
    assert health and health[0]["rule"]["id"] == "sensor-health-rules-reload-failed"
    assert health[0]["health"]["trigger"] == "signal"
    spool.close()


def test_config_changes_live_and_needing_a_restart():
    a = parse({"output": {"format": "jsonl", "path": "/tmp/a.jsonl"}}, "<a>")
    b = parse({"output": {"format": "jsonl", "path": "/tmp/b.jsonl"}, "throttle": {"window_s": 5},
               "logging": {"level": "debug"}, "spool": {"max_mb": 10},
               "rules": {"paths": ["/r"], "watch_s": 1},
               "exclusions": [{"match": {"image": "x"}}], "sensor": {"cpu_limit_percent": 20}}, "<b>")
    live, restart = reload_mod.split_changes(a, b)
    assert set(live) == {"throttle.window_s", "logging.level", "rules.paths", "rules.watch_s",
                         "exclusions", "sensor.cpu_limit_percent"}
    assert set(restart) == {"output.path", "spool.max_mb"}


def test_stat_signature_sees_changes_without_reading(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "a.yml").write_text("x")
    (d / "notes.txt").write_text("x")
    s0 = reload_mod.stat_signature([str(d), str(tmp_path / "missing.pack")])
    assert reload_mod.stat_signature([str(d), str(tmp_path / "missing.pack")]) == s0
    (d / "notes.txt").write_text("yy")                # not a rule file
    assert reload_mod.stat_signature([str(d), str(tmp_path / "missing.pack")]) == s0
    (d / "a.yml").write_text("y2")
    s1 = reload_mod.stat_signature([str(d), str(tmp_path / "missing.pack")])
    assert s1 != s0
    (d / "b.yaml").write_text("z")
    assert reload_mod.stat_signature([str(d), str(tmp_path / "missing.pack")]) != s1


def test_a_watch_past_its_file_cap_says_so(tmp_path, monkeypatch, caplog):
    # Past MAX_WATCHED_FILES rule files the watch stats no more: the signature ends with a marker
    # and the reloader warns once, naming what still works (lowered from 100,000 for the test).
    monkeypatch.setattr(reload_mod, "MAX_WATCHED_FILES", 5)
    d = tmp_path / "rules"
    d.mkdir()
    for i in range(5):
        (d / f"r{i}.yml").write_text("x")
    sig = reload_mod.stat_signature([str(d)])
    assert len(sig) == 5 and reload_mod.WATCH_CAPPED not in sig       # at the cap: all watched
    (d / "r5.yml").write_text("x")
    sig = reload_mod.stat_signature([str(d)])
    assert len(sig) == 6 and sig[-1] == reload_mod.WATCH_CAPPED
    r = object.__new__(reload_mod.Reloader)
    monkeypatch.setattr(r, "_watch_paths", lambda: [str(d)], raising=False)
    with caplog.at_level("WARNING", logger="sensor.reload"):
        assert r._watch_signature() == sig
        r._watch_signature()
    said = [m for m in caplog.messages if "more than 5 rule files" in m]
    assert len(said) == 1 and "etw-sensor reload" in said[0]


def test_control_protocol_and_windows_plan():
    calls = []

    class R:
        def as_dict(self):
            return {"ok": True, "generation": 3}

    assert handle_request(b'{"cmd": "reload"}', lambda t: calls.append(t) or R()) == {"ok": True, "generation": 3}
    assert calls == ["control"]
    assert handle_request(b'{"cmd": "ping"}', None)["pid"] == os.getpid()
    assert "unknown command" in handle_request(b'{"cmd": "rm"}', None)["error"]
    assert handle_request(b"\xff[", None) == {"ok": False, "error": "not a JSON object"}
    assert peer_allowed(1000, 1000) and peer_allowed(0, 1000) and not peer_allowed(1001, 1000)
    # Windows: one pipe per data folder (case-insensitive), SYSTEM and Administrators only
    n = pipe_name(r"C:\ProgramData\etw-sensor")
    assert n.startswith("\\\\.\\pipe\\etw-sensor-control-")
    assert n == pipe_name(r"c:\programdata\ETW-SENSOR\.") != pipe_name(r"C:\other")
    assert PIPE_SDDL == "D:P(A;;GA;;;SY)(A;;GA;;;BA)"
    assert pipe_open_mode() & 0x00080000 and pipe_mode() & 0x8     # first instance, no remote


# -- the running sensor: control socket, SIGHUP, file watch, restart-needed keys ----------------

YAML = """
title: Reload rule {n}
id: 7d7a3c1e-0000-4000-8000-00000000000{n}
status: test
logsource: {{category: process_creation, product: windows}}
detection:
  sel: {{Image|endswith: '\\\\reload{n}.exe'}}
  condition: sel
level: high
"""


def _run_config(tmp_path: Path, rules_dir: Path, extra: str = "") -> Path:
    rec = tmp_path / "rec.jsonl"
    # two starts an hour apart, replayed in real time: the sensor runs until stopped
    rec.write_text('{"Image": "C:\\\\a.exe", "UtcTime": "2024-01-01 00:00:00.000"}\n'
                   '{"Image": "C:\\\\b.exe", "UtcTime": "2024-01-01 01:00:00.000"}\n')
    cfg = tmp_path / "sensor.toml"
    cfg.write_text(f"""
[sensor]
data_dir = "{tmp_path / 'data'}"
heartbeat_s = 3600
{extra}
[source]
kind = "replay"
[source.replay]
paths = ["{rec}"]
speed = 1.0
[rules]
paths = ["{rules_dir}"]
watch_s = 0.2
[output]
format = "jsonl"
path = "{tmp_path / 'out.jsonl'}"
""")
    cfg.chmod(0o600)
    return cfg


def _wait(pred, what):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _status(tmp_path):
    try:
        return json.loads((tmp_path / "data" / "status.json").read_text())
    except (OSError, ValueError):
        return None


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True,
                          timeout=WAIT, cwd=ROOT)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX socket and SIGHUP")
def test_running_sensor_reloads_on_command_signal_and_file_change(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r1.yml").write_text(YAML.format(n=1))
    cfg = _run_config(tmp_path, rules)
    proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-c", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sock = tmp_path / "data" / "control.sock"
        _wait(lambda: sock.exists() and _status(tmp_path), "the control socket")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        builtin = len(builtin_rules())
        assert _status(tmp_path)["rules"]["loaded"] == builtin + 1      # built-in + r1

        # etw-sensor reload: a new rule file
        (rules / "r2.yml").write_text(YAML.format(n=2))
        res = _cli("reload", "-c", str(cfg))
        assert res.returncode == 0, res.stderr
        assert "rule set" in res.stdout and f"{builtin + 2} rules" in res.stdout
        # a bad rule: refused, the running set stays, a health alert goes to the output
        (rules / "r3.yml").write_text("title: broken\ndetection: {condition: nothing}\n")
        res = _cli("reload", "-c", str(cfg), "--json")
        assert res.returncode == 1 and "reload refused" in res.stderr
        assert "r3.yml" in res.stderr
        st = _status(tmp_path)
        assert st["rules"]["loaded"] == builtin + 2 and st["rules"]["reload_failures"] >= 1
        (rules / "r3.yml").unlink()

        # the file watch picks the removal up by itself
        _wait(lambda: (_status(tmp_path) or {}).get("rules", {}).get("last_reload_error") is None
              and _status(tmp_path)["rules"]["trigger"] == "watch", "the watch reload")
        gen = _status(tmp_path)["rules"]["generation"]

        # SIGHUP
        os.kill(proc.pid, signal.SIGHUP)
        _wait(lambda: _status(tmp_path)["rules"]["generation"] > gen
              and _status(tmp_path)["rules"]["trigger"] == "signal", "the SIGHUP reload")

        # a config change that needs a restart is reported, a live one applied
        text = cfg.read_text().replace("heartbeat_s = 3600", "heartbeat_s = 3600\nqueue_size = 999")
        text = text.replace("watch_s = 0.2", "watch_s = 0.2\non_error = \"skip\"")
        cfg.write_text(text)
        res = _cli("reload", "-c", str(cfg))
        assert res.returncode == 0, res.stderr
        assert "restart needed for: sensor.queue_size" in res.stdout
        st = _status(tmp_path)
        assert st["rules"]["restart_needed"] == ["sensor.queue_size"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode in (0, 1), err
    assert not (tmp_path / "data" / "control.sock").exists()
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    ids = [x.get("rule", {}).get("id") for x in lines]
    assert "sensor-health-rules-reload-failed" in ids
    # every reload sent a health document naming its rule set
    docs = [x for x in lines if x.get("event", {}).get("dataset") == "sensor.health"]
    assert any(d["event"].get("action") == "reload" for d in docs)
    assert "Traceback" not in err


def test_reload_without_a_sensor_says_so(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[sensor]\ndata_dir = "{tmp_path / "nothing"}"\n')
    cfg.chmod(0o600)
    res = _cli("reload", "-c", str(cfg))
    assert res.returncode == 1 and "no running sensor answered" in res.stderr


# -- the update URL ------------------------------------------------------------------------------

class _PackServer:
    """A real HTTPS server serving one pack with an ETag, counting conditional requests."""

    def __init__(self, cert, body: bytes, drip: float = 0.0):
        self.body = body
        self.etag = '"v1"'
        self.drip = drip                # seconds between bytes of the body (0: all at once)
        self.requests: list[dict] = []
        owner = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(dict(self.headers))
                if self.headers.get("If-None-Match") == owner.etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", owner.etag)
                self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                if not owner.drip:
                    self.wfile.write(owner.body)
                    return
                for i in range(len(owner.body)):
                    try:
                        self.wfile.write(owner.body[i:i + 1])
                        self.wfile.flush()
                    except OSError:
                        return              # the client gave up
                    time.sleep(owner.drip)

            def log_message(self, *a):
                pass

        self.httpd = serve_https(H, cert)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/rules.pack"

    def set(self, body: bytes, etag: str):
        self.body, self.etag = body, etag

    def close(self):
        stop_https(self.httpd)


def test_update_url_polled_with_etag_signed_and_fail_closed(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    from sensor.detect.signing import PRIVATE_TAG, generate_key, sign_pack
    priv, pub = generate_key("fleet")
    (tmp_path / "fleet.pub").write_text(pub)
    seed = __import__("base64").b64decode(priv.split()[2])
    server = _PackServer(cert, sign_pack(encode_pack(gen_rules(1)), "fleet", seed))
    try:
        cfg = parse({"sensor": {"data_dir": str(tmp_path / "data"), "control": False},
                     "rules": {"watch_s": 0, "builtin": False,
                               "trusted_keys": [{"file": str(tmp_path / "fleet.pub")}],
                               "update": {"url": server.url, "ca_file": str(ca_file)}}}, "<t>")
        pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
        r = reload_mod.Reloader(pipe, cfg)
        r._tick()                                           # first poll: 200, checked, loaded
        assert [x.id for x in pipe.rules] == [x.id for x in gen_rules(1)]
        st = pipe.health()
        assert st.rules.update.updates == 1 and st.rules.key_ids == ["fleet"]
        assert st.rules.packs[0].verified and st.rules.trigger == "url"
        kept = tmp_path / "data" / "rules-update.pack"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        r._next_poll = 0                                    # the next poll is due now
        r._tick()                                           # conditional: 304
        assert server.requests[-1].get("If-None-Match") == '"v1"'
        assert server.requests[-1].get("If-Modified-Since") == "Mon, 01 Jan 2024 00:00:00 GMT"
        assert pipe.health().rules.update.not_modified == 1 and pipe.generation == 1
        # an unsigned pack at the URL: refused before it replaces the kept one
        server.set(encode_pack(gen_rules(2)), '"v2"')
        r._next_poll = 0
        r._tick()
        st = pipe.health()
        assert pipe.generation == 1 and "not signed" in st.rules.update.last_error
        assert [x.id for x in pipe.rules] == [x.id for x in gen_rules(1)]
        # a new signed pack: loaded
        server.set(sign_pack(encode_pack(gen_rules(3)), "fleet", seed), '"v3"')
        r._next_poll = 0
        r._tick()
        assert [x.id for x in pipe.rules] == [x.id for x in gen_rules(3)] and pipe.generation == 2
        # a restart keeps the validators and the pack: the next poll is conditional
        r2 = reload_mod.Reloader(pipe, cfg)
        r2.poller.poll()
        assert server.requests[-1].get("If-None-Match") == '"v3"'
        assert PRIVATE_TAG
        # the wrong CA: a TLS failure, counted, nothing changes
        other = trustme.CA()
        bad_ca = tmp_path / "other.pem"
        other.cert_pem.write_to_path(str(bad_ca))
        cfg2 = parse({"sensor": {"data_dir": str(tmp_path / "d2"), "control": False},
                      "rules": {"watch_s": 0, "update": {"url": server.url, "ca_file": str(bad_ca)}}},
                     "<t>")
        p = reload_mod.UpdatePoller(cfg2)
        assert p.poll() == "error" and "TLS" in p.stats["last_error"]
    finally:
        server.close()


def test_an_update_server_sending_a_byte_at_a_time_cannot_hold_the_reload_thread(tmp_path):
    # The reload thread also runs the rule-file watch: the body's read is bounded as a whole by
    # rules.update.timeout_s, not per read (before: each byte within the timeout, 100 s for a
    # 1,000-byte answer, accepted).
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = _PackServer(cert, b"x" * 1000, drip=0.1)
    try:
        cfg = parse({"sensor": {"data_dir": str(tmp_path / "data"), "control": False},
                     "rules": {"watch_s": 0, "update": {"url": server.url, "ca_file": str(ca_file),
                                                        "timeout_s": 1}}}, "<t>")
        p = reload_mod.UpdatePoller(cfg)
        assert p.poll() == "error"
        assert "took longer than 1 s to read" in p.stats["last_error"], p.stats
        server.drip = 0.0
        server.set(b"y" * 10, '"v2"')
        assert p.poll() == "error" and "refused" in p.stats["last_error"]   # answered again
    finally:
        server.close()


def test_closing_the_update_poller_ends_a_fetch_in_flight(tmp_path):
    # A stop closes the poller: a fetch from a server that sends nothing more (its timeout is
    # an hour) ends then, instead of holding the reload thread past the stop.
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = _PackServer(cert, b"x" * 1000, drip=3600.0)
    try:
        cfg = parse({"sensor": {"data_dir": str(tmp_path / "data"), "control": False},
                     "rules": {"watch_s": 0, "update": {"url": server.url, "ca_file": str(ca_file),
                                                        "timeout_s": 3600}}}, "<t>")
        p = reload_mod.UpdatePoller(cfg)
        outcome: list[str] = []
        t = threading.Thread(target=lambda: outcome.append(p.poll()), daemon=True)
        t.start()
        end = time.monotonic() + WAIT
        while not server.requests and time.monotonic() < end:
            time.sleep(0.01)
        assert server.requests
        p.close()
        t.join(WAIT)
        assert not t.is_alive() and outcome == ["error"]
    finally:
        server.close()


# -- correlations across a reload --------------------------------------------------------------

CORR_KEPT = "20000000-0000-4000-8000-00000000000a"
CORR_CHANGED = "20000000-0000-4000-8000-00000000000b"


def corr_rules_yaml(g: int) -> str:
    """Set ``g``: a building-block rule, a correlation that never changes, one whose condition
    changes with every set, and a rule of its own per set."""
    return f"""title: building block
name: a
logsource: {{category: process_creation, product: windows}}
detection: {{sel: {{Image|endswith: '\\\\a.exe'}}, condition: sel}}
---
title: set {g}
id: 20000000-0000-4000-8000-{g:012d}
logsource: {{category: process_creation, product: windows}}
detection: {{sel: {{CommandLine|contains: ' set{g} '}}, condition: sel}}
---
title: kept
id: {CORR_KEPT}
correlation: {{type: event_count, rules: [a], group-by: [Computer], timespan: 30s, condition: {{gte: 4}}}}
---
title: changed
id: {CORR_CHANGED}
correlation: {{type: event_count, rules: [a], group-by: [Computer], timespan: 30s, condition: {{gte: {3 + g % 2}}}}}
"""


def corr_event(i: int) -> ProcessEvent:
    import datetime as dt
    t = dt.datetime(2025, 1, 1, 12, 0, 0) + dt.timedelta(seconds=i)
    return ProcessEvent({"Image": "C:\\x\\a.exe", "CommandLine": f"a.exe set{i % 3} n{i}",
                         "Computer": f"h{i % 7}", "ProcessId": i,
                         "UtcTime": t.strftime("%Y-%m-%d %H:%M:%S.000")})


class ManualSource:
    """The test emits the stream itself, in chunks, reloading between (and during) them."""

    name = "manual"
    blocking = True

    def __init__(self):
        self.finished = threading.Event()
        self.emit = None

    def start(self, emit):
        self.emit = emit

    def stop(self):
        self.finished.set()

    def stats(self):
        return {}


def test_reload_under_a_stream_carries_unchanged_correlation_windows(tmp_path, caplog):
    """A reload builds the correlation engine for the new set at the swap: the windows of a
    correlation whose definition did not change carry over (its alerts are exactly those of
    one engine that saw the whole stream without reloads); the windows of one that changed are
    dropped, counted (``correlation.windows_discarded``) and logged."""
    import logging

    from sensor.detect.correlate import CorrelationEngine
    from sensor.detect.loader import load_rules

    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(corr_rules_yaml(0))
    cfg = parse({"rules": {"paths": [str(rules_file)], "builtin": False, "watch_s": 0},
                 "correlation": {"lateness_s": 0, "persist": False},
                 "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
    loaded = reload_mod.load_configured(cfg)
    assert not loaded.errors and len(loaded.correlations) == 2
    alerts: list[dict] = []
    pipe = Pipeline(source=ManualSource(), rules=loaded.rules, heartbeat_interval=0,
                    alert_hook=alerts.append, batch_size=16, queue_size=256,
                    correlator=reload_mod.build_correlator(cfg, loaded), idle_flush_s=0)
    reloader = reload_mod.Reloader(pipe, cfg)
    caplog.set_level(logging.INFO, logger="sensor.pipeline")
    n, chunk = 2000, 100
    pipe.start()
    try:
        for start in range(0, n, chunk):
            for i in range(start, start + chunk):
                assert pipe.source.emit(corr_event(i))
            g = start // chunk + 1
            rules_file.write_text(corr_rules_yaml(g))
            res = reloader.reload("control")       # events of the chunk still queued: mid-stream
            assert res.ok and res.applied and res.correlations == 2, res.errors
    finally:
        pipe.source.stop()
        assert pipe.wait_source(WAIT)
        status = pipe.stop(drain_timeout=WAIT)
    assert pipe.events_in == n and pipe.generation == n // chunk

    def key(a):
        c = a["correlation"]
        return (c["window"]["end"], json.dumps(c["group"], sort_keys=True), c["value"],
                tuple(c["event_ids"]))

    got = sorted(key(a) for a in alerts if a["rule"]["id"] == CORR_KEPT)
    # the reference: one engine, the first set, the whole stream, no reload
    (tmp_path / "ref.yml").write_text(corr_rules_yaml(0))
    ref_set = load_rules([str(tmp_path / "ref.yml")], builtin=False)
    eng = CorrelationEngine(ref_set.rules, ref_set.correlations)
    m = create_matcher(ref_set.rules, "reference")
    want = []
    for i in range(n):
        ev = corr_event(i)
        want += eng.feed(ev, m.match(ev))
    want += eng.flush()
    want = sorted(key(a) for a in want if a["rule"]["id"] == CORR_KEPT)
    assert len(want) > 100 and got == want

    # the changed correlation lost its windows at every swap: counted, in the state and the log
    c = status["correlation"]
    assert c["windows_discarded"] > 0
    assert c["state"]["at"] == "reload" and c["state"]["discarded"] == [CORR_CHANGED]
    assert c["events_correlated"] == n          # counters continue across the swaps
    dropped = [r for r in caplog.records if "correlation windows dropped" in r.getMessage()]
    assert len(dropped) == n // chunk and CORR_CHANGED in dropped[0].getMessage()
    assert CORR_KEPT not in " ".join(r.getMessage() for r in dropped)


def test_reload_to_a_set_without_correlations_counts_the_windows_lost(tmp_path):
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(corr_rules_yaml(0))
    cfg = parse({"rules": {"paths": [str(rules_file)], "builtin": False, "watch_s": 0},
                 "correlation": {"lateness_s": 0, "persist": False},
                 "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
    loaded = reload_mod.load_configured(cfg)
    pipe = Pipeline(source=ManualSource(), rules=loaded.rules, heartbeat_interval=0,
                    correlator=reload_mod.build_correlator(cfg, loaded), idle_flush_s=0)
    reloader = reload_mod.Reloader(pipe, cfg)
    pipe.start()
    try:
        for i in (0, 7, 14):                      # three events of host h0: 3 entries per window
            assert pipe.source.emit(corr_event(i))
        deadline = time.monotonic() + WAIT         # guards a hang only
        while pipe.events_in < 3 and time.monotonic() < deadline:
            time.sleep(0.01)                       # the old set matched them before the swap
        assert pipe.events_in == 3
        rules_file.write_text(corr_rules_yaml(1).split("\n---\ntitle: kept")[0])
        res = reloader.reload("control")
        assert res.ok and res.applied and res.correlations == 0, res.errors
        assert pipe.correlator is None
        # correlation "changed" at gte 3 alerted for those three at the swap (evaluated, then
        # dropped); both correlations' windows are gone
        st = pipe.status()["correlation"]
        assert st["windows_discarded"] == 6 and st["state"]["entries_discarded"] == 6
    finally:
        pipe.source.stop()
        pipe.wait_source(WAIT)
        pipe.stop(drain_timeout=WAIT)
    assert pipe.alerts_by_rule[CORR_CHANGED] == 1 and pipe.alerts_by_rule[CORR_KEPT] == 0


# -- stop while a reload runs; requests that race the reload thread ------------------------------

def _idle_pipeline(tmp_path, n_files: int = 1):
    """A started pipeline on generation 0 and a reloader over ``n_files`` rule packs."""
    paths = []
    for i in range(n_files):
        pack = tmp_path / f"rules{i}.pack"
        write_pack(pack, gen_rules(1))
        paths.append(str(pack))
    cfg = parse({"rules": {"paths": paths, "builtin": False, "watch_s": 0},
                 "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
    beats: list[str] = []
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    real_beat = pipe.beat
    pipe.beat = lambda reason="heartbeat": (beats.append(reason), real_beat(reason))[1]
    return pipe, reload_mod.Reloader(pipe, cfg), beats


def test_a_stop_does_not_wait_for_a_reload_and_nothing_is_swapped_in_after_it(tmp_path, monkeypatch):
    # The reload is held inside its matcher compile (seconds of CPU for a large set, which
    # cannot be cut short) when the stop comes: stop() returns without waiting for it, and the
    # set it finishes afterwards is neither swapped in nor reported.
    import sensor.detect.matcher as matcher_mod
    entered, release = threading.Event(), threading.Event()
    real_create = matcher_mod.create

    def held_create(rules, engine=None):
        entered.set()
        release.wait(WAIT)
        return real_create(rules, engine)

    pipe, reloader, beats = _idle_pipeline(tmp_path)
    monkeypatch.setattr(matcher_mod, "create", held_create)
    reloader.start()
    try:
        reloader.request("signal")
        assert entered.wait(WAIT)
        reloader.stop()
        stopped_first = not release.is_set()
    finally:
        release.set()
    reloader._thread.join(WAIT)
    assert stopped_first and not reloader._thread.is_alive()
    assert pipe.generation == 0 and [r.id for r in pipe.rules] == [r.id for r in gen_rules(0)]
    assert pipe.reload_stats["reloads"] == 0 and pipe.reload_stats["failures"] == 0
    assert "reload" not in beats


def test_a_stop_during_the_load_ends_it_before_the_next_file(tmp_path, monkeypatch):
    import sensor.detect.loader as loader_mod
    entered, release = threading.Event(), threading.Event()
    real_load_file = loader_mod._load_file
    loaded: list[str] = []

    def held_load_file(path, *args, **kwargs):
        loaded.append(str(path))
        entered.set()
        release.wait(WAIT)
        return real_load_file(path, *args, **kwargs)

    pipe, reloader, beats = _idle_pipeline(tmp_path, n_files=3)
    monkeypatch.setattr(loader_mod, "_load_file", held_load_file)
    reloader.start()
    try:
        reloader.request("signal")
        assert entered.wait(WAIT)
        reloader.stop()
    finally:
        release.set()
    reloader._thread.join(WAIT)
    assert not reloader._thread.is_alive()
    assert len(loaded) == 1               # the other two files were never read
    assert pipe.generation == 0 and "reload" not in beats


def test_a_request_landing_while_the_reload_thread_takes_the_requests_is_not_lost(tmp_path):
    # request() reads the reloader's request queue, then appends to it. The reload thread takes
    # the requests in between: the append must still be seen by its next pass.
    pipe, reloader, _ = _idle_pipeline(tmp_path)
    done: list[str] = []
    reloader.reload = lambda trigger="control", wait=10.0: done.append(trigger)
    reloader.request("signal")
    queue_seen_by_a_request = reloader._requests      # the racing request() has read it ...
    reloader._tick()                                   # ... the reload thread takes the requests ...
    queue_seen_by_a_request.append("control")          # ... and then the request() appends
    reloader._wake.set()
    reloader._tick()
    assert done == ["signal", "control"]


def test_beats_after_the_stop_beat_spool_nothing(tmp_path):
    # The stop's health document is the ledger's last entry for a boot: a reload abandoned by
    # the stop that still calls beat() must not spool a document after it.
    from sensor.deliver.spool import Spool
    spool = Spool(str(tmp_path / "spool.sqlite"))
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0, spool=spool)
    pipe.start()
    pipe.stop(drain_timeout=WAIT)
    seq = pipe.ledger.seq
    depth = spool.depth()
    pipe.beat("reload")
    assert pipe.ledger.seq == seq and spool.depth() == depth
    spool.close()


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX control socket")
def test_control_stop_cuts_off_a_client_that_sends_nothing(tmp_path, monkeypatch):
    # One connection at a time: a client that connects and stays silent held the channel's
    # thread for the whole I/O timeout (an hour here) past the stop.
    import socket as _socket
    from sensor.daemon import control as control_mod
    monkeypatch.setattr(control_mod, "IO_TIMEOUT", 3600.0)
    accepted = threading.Event()
    real_allowed = control_mod.peer_allowed

    def allowed(uid, own):              # called once the server took the connection
        accepted.set()
        return real_allowed(uid, own)
    monkeypatch.setattr(control_mod, "peer_allowed", allowed)
    server = control_mod.UnixControlServer(str(tmp_path / "ctl" / "control.sock"), reloader=None)
    server.start()
    client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        client.connect(server.path)
        assert accepted.wait(WAIT)
        server.stop()
        server._thread.join(WAIT / 2)
        assert not server._thread.is_alive()
    finally:
        client.close()


class _QuietSource:
    name = "quiet"

    def start(self, emit):
        pass

    def stop(self):
        pass

    def stats(self):
        return {}


def test_a_swap_waiting_for_a_worker_that_ends_gives_up_then(tmp_path):
    # A reload hands its set over just as the stop ends the matcher thread: nobody will take
    # the set, so the swap must not wait out its whole timeout (an hour here).
    swapping: list[threading.Thread] = []
    result: list[bool] = []

    class Racing(Pipeline):
        def commit(self):
            if self._stop.is_set() and not swapping:   # the worker's last act before it ends
                t = threading.Thread(target=lambda: result.append(
                    self.swap_rules(reload_mod.RuleSet(gen_rules(1), create_matcher(gen_rules(1)),
                                                       generation=1), wait=3600.0)), daemon=True)
                swapping.append(t)
                t.start()
                end = time.monotonic() + WAIT
                while not self._swapped._waiters and t.is_alive() and time.monotonic() < end:
                    time.sleep(0.005)                 # the swap waits for this worker now
            super().commit()

    pipe = Racing(source=_QuietSource(), rules=gen_rules(0), heartbeat_interval=0, ledger=False)
    pipe.start()
    pipe.stop(drain_timeout=WAIT)
    swapping[0].join(WAIT)
    assert not swapping[0].is_alive() and result == [False]
    assert pipe.generation == 0


# -- the reloader's answer, its thread, the live config ------------------------------------------

def _toml(sections: dict) -> str:
    """A config file's text (JSON scalars and lists are TOML values too)."""
    return "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kv.items())
                   for name, kv in sections.items())


def _file_config(tmp_path: Path, **changes) -> tuple[Path, dict]:
    """A config file naming one pack of generation 1; ``changes`` add or replace sections."""
    pack = tmp_path / "rules.pack"
    if not pack.exists():
        write_pack(pack, gen_rules(1))
    sections = {"sensor": {"data_dir": str(tmp_path / "data"), "control": False},
                "rules": {"paths": [str(pack)], "builtin": False, "watch_s": 0},
                "logging": {"level": "info"}}
    for name, kv in changes.items():
        sections[name.replace("__", ".")] = kv
    path = tmp_path / "sensor.toml"
    path.write_text(_toml(sections))
    path.chmod(0o600)
    return path, sections


def _rewrite(path: Path, sections: dict, **changes) -> None:
    for name, kv in changes.items():
        sections[name.replace("__", ".")] = kv
    path.write_text(_toml(sections))


def _health_rows(spool) -> list[dict]:
    return [r for r in (it.decode() for it in spool.fetch(1000, 1 << 26)) if r.get("type") == "health"]


def test_a_refused_reload_names_no_new_set_and_speaks_of_the_running_sensor(tmp_path):
    # README ("Distribute and reload"): a refused reload's answer names no new set; the reason
    # tells the operator of a running sensor that no set was swapped in (not that it "does not
    # start", the start-up wording)
    rules = tmp_path / "rules"
    rules.mkdir()
    write_pack(rules / "a.pack", gen_rules(1))
    (rules / "broken.yml").write_text("title: broken\ndetection: {condition: nothing}\n")
    cfg = parse({"rules": {"paths": [str(rules)], "builtin": False, "watch_s": 0},
                 "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    reloader = reload_mod.Reloader(pipe, cfg=cfg)
    res = reloader.reload("control")
    answer = res.as_dict()
    assert not answer["ok"] and "broken.yml" in answer["errors"][0]
    assert (answer["generation"], answer["rules"], answer["correlations"], answer["applied"]) \
        == (0, 0, 0, False)
    assert "does not swap in a rule set" in answer["errors"][-1]
    assert "does not start" not in answer["errors"][-1]
    assert pipe.generation == 0
    (rules / "broken.yml").unlink()
    res = reloader.reload("control")
    assert res.ok and res.applied and res.generation == 1 and res.rules == 3


def test_an_invalid_config_file_refuses_the_reload_and_does_not_break_the_reloader(tmp_path):
    # The config file is read again on every reload; an invalid one changes nothing and is
    # refused like a bad rule. It may already be invalid when the reloader starts (edited after
    # the sensor read it): that is no reason for the reloader itself to fail.
    path, sections = _file_config(tmp_path)
    cfg = reload_mod.load_config(str(path))
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    path.write_text(path.read_text() + "[throttle]\nwindow_s = -5\n")
    reloader = reload_mod.Reloader(pipe, cfg)
    res = reloader.reload("signal")
    assert not res.ok and res.errors and all(e.startswith("config: ") for e in res.errors)
    assert "window_s" in " ".join(res.errors)
    assert pipe.generation == 0 and pipe.reload_stats["failures"] == 1
    _rewrite(path, sections, throttle={"window_s": 5})
    res = reloader.reload("signal")
    assert res.ok and pipe.generation == 1 and pipe.throttle.window == 5.0


def test_a_stopped_reloader_abandons_a_reload_and_answers_so(tmp_path):
    # stop() before start() (a sensor stopping before its services all ran) stops nothing that
    # is not there; a reload asked for afterwards is abandoned, answered, and changes nothing
    pipe, reloader, beats = _idle_pipeline(tmp_path)
    reloader.stop()
    res = reloader.reload("control")
    assert not res.ok and res.errors == ["the sensor is stopping: the reload was abandoned"]
    assert res.seconds == 0 and res.generation == 0 and not res.applied
    assert pipe.generation == 0 and "reload" not in beats
    assert pipe.reload_stats["reloads"] == 0 and pipe.reload_stats["failures"] == 0


def test_the_reload_thread_is_a_daemon_and_stop_waits_for_it(tmp_path):
    # docs/threads.md: Reloader.stop() waits for the thread (1 s by default), which is a daemon
    # so that a reload it cannot wait for does not hold the process
    pipe, reloader, _ = _idle_pipeline(tmp_path)
    reloader.start()
    assert reloader._thread.daemon
    reloader.stop(timeout=WAIT)
    assert not reloader._thread.is_alive()


class _RecordingWake(threading.Event):
    """The reload thread's wake event: records how long each wait may last and returns at once
    (``stop_after`` waits: the reloader is stopped then, so ``_run`` returns)."""

    def __init__(self, reloader, stop_after: int = 1):
        super().__init__()
        self.reloader, self.stop_after, self.timeouts = reloader, stop_after, []

    def wait(self, timeout=None):
        self.timeouts.append(timeout)
        if len(self.timeouts) >= self.stop_after:
            self.reloader._stop.set()
        return True


def _first_wait(reloader) -> float | None:
    wake = _RecordingWake(reloader)
    reloader._wake = wake
    reloader._run()
    reloader._stop.clear()
    return wake.timeouts[0]


def test_the_reload_thread_sleeps_until_the_next_watch_or_poll(tmp_path):
    # docs/threads.md: the thread waits up to watch_s or the next update poll; not at all when a
    # poll is due; with the watch off and no update URL it waits for a request alone
    def reloader_for(watch_s, url=""):
        cfg = parse({"rules": {"paths": [str(tmp_path / "r.pack")], "builtin": False,
                               "watch_s": watch_s, "update": {"url": url}},
                     "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
        pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
        return reload_mod.Reloader(pipe, cfg)

    assert _first_wait(reloader_for(0)) is None
    assert _first_wait(reloader_for(2.5)) == 2.5
    url = "https://127.0.0.1:9/rules.pack"            # never fetched here
    r = reloader_for(0, url)
    assert _first_wait(r) <= 0                          # the first poll is due at once
    r._next_poll = time.monotonic() + 50
    assert 0 < _first_wait(r) <= 50                     # until the next poll
    assert _first_wait(reloader_for(20, url)) <= 0      # a due poll beats the watch
    r = reloader_for(20, url)
    r._next_poll = time.monotonic() + 50
    assert 0 < _first_wait(r) <= 20


def test_the_reload_thread_survives_a_pass_that_fails(tmp_path, caplog):
    pipe, reloader, _ = _idle_pipeline(tmp_path)
    passes = []

    def tick():
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("an unforeseen failure")
    reloader._tick = tick
    reloader._wake = _RecordingWake(reloader, stop_after=3)
    with caplog.at_level("ERROR", logger="sensor.reload"):
        reloader._run()                     # returns (stopped), does not raise
    assert len(passes) == 2
    assert any("rule reload failed unexpectedly" in m for m in caplog.messages)


class _FakePoller:
    """The update URL's poller as the reload thread sees it: ``poll`` answers from a script."""

    interval = 60.0
    safe_url = "https://updates.example/rules.pack"

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.stats = {"url": self.safe_url, "polls": 0, "failures": 0, "last_error": None}
        self.closed = False

    def poll(self):
        self.stats["polls"] += 1
        outcome = self.outcomes.pop(0)
        if outcome == "error":
            self.stats["failures"] += 1
            self.stats["last_error"] = f"HTTP 503 ({self.stats['failures']})"
        return outcome

    def close(self):
        self.closed = True


def test_the_update_url_is_polled_every_interval_and_a_failure_raises_a_health_alert(tmp_path, monkeypatch):
    # README: the URL is polled every interval_s; a failed poll raises
    # sensor-health-rules-update-failed (a 304 does not)
    import types
    from sensor.deliver.spool import Spool
    now = [1000.0]
    monkeypatch.setattr(reload_mod, "time", types.SimpleNamespace(
        monotonic=lambda: now[0], perf_counter=time.perf_counter, time=time.time))
    spool = Spool(str(tmp_path / "spool.sqlite"))
    try:
        pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0, spool=spool)
        cfg = parse({"rules": {"paths": [str(tmp_path / "r.pack")], "builtin": False, "watch_s": 0},
                     "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
        reloader = reload_mod.Reloader(pipe, cfg)
        poller = reloader.poller = _FakePoller(["not_modified", "error", "error"])
        reloader._tick()                                   # due at once
        assert poller.stats["polls"] == 1 and pipe.reload_stats["update"]["polls"] == 1
        assert _health_rows(spool) == []                   # a 304 is no failure
        now[0] = 1059.9
        reloader._tick()
        assert poller.stats["polls"] == 1                  # not yet due
        now[0] = 1060.0
        reloader._tick()                                   # interval_s after the last poll
        assert poller.stats["polls"] == 2
        rows = _health_rows(spool)
        assert [r["rule"]["id"] for r in rows] == ["sensor-health-rules-update-failed"]
        assert rows[0]["health"]["url"] == poller.safe_url
        assert rows[0]["health"]["error"] == "HTTP 503 (1)"
        reloader._tick()
        assert poller.stats["polls"] == 2                  # the next one is due at 1120
        now[0] = 1120.0
        reloader._tick()
        assert poller.stats["polls"] == 3
        assert [r["health"]["error"] for r in _health_rows(spool)] == ["HTTP 503 (1)", "HTTP 503 (2)"]
    finally:
        spool.close()


def test_the_watch_sees_rule_and_placeholder_files_and_is_off_at_watch_s_0(tmp_path):
    # README: a change of a rule file or of the placeholders file reloads (watch_s); 0 turns
    # the watch off, whatever changes
    pack = tmp_path / "rules.pack"
    write_pack(pack, gen_rules(1))
    ph = tmp_path / "placeholders.yml"
    ph.write_text("Admins: [adm]\n")

    def setup(watch_s):
        cfg = parse({"rules": {"paths": [str(pack)], "builtin": False, "watch_s": watch_s,
                               "placeholders": str(ph)},
                     "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
        pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
        return pipe, reload_mod.Reloader(pipe, cfg)

    off_pipe, off = setup(0)
    on_pipe, on = setup(5)
    on._tick()
    assert on_pipe.generation == 0                     # nothing changed yet
    write_pack(pack, gen_rules(2))
    off._tick()
    on._tick()
    assert off_pipe.generation == 0 and off_pipe.reload_stats["reloads"] == 0
    assert on_pipe.generation == 1 and on_pipe.health().rules.trigger == "watch"
    ph.write_text("Admins: [adm, root]\n")
    off._tick()
    on._tick()
    assert off_pipe.generation == 0
    assert on_pipe.generation == 2 and on_pipe.reload_stats["reloads"] == 2


def test_a_reload_survives_a_health_alert_or_a_heartbeat_that_fails(tmp_path, caplog):
    # No traceback reaches the one who asked: a ledger that cannot take the alert, a beat that
    # fails, are logged; the reload's answer and its counters stand
    pipe, reloader, _ = _idle_pipeline(tmp_path)

    class BrokenLedger:
        boot_id = "b"

        def alert(self, *args):
            raise OSError("the spool is gone")

    def broken_beat(reason="heartbeat"):
        raise OSError("the status file is gone")
    pipe.ledger = BrokenLedger()
    pipe.beat = broken_beat
    pack = tmp_path / "rules0.pack"
    pack.write_bytes(b"not a pack")
    with caplog.at_level("ERROR", logger="sensor.reload"):
        res = reloader.reload("signal")
        assert not res.ok and pipe.reload_stats["failures"] == 1
        write_pack(pack, gen_rules(2))
        res = reloader.reload("signal")
        assert res.ok and pipe.generation == 1 and pipe.reload_stats["reloads"] == 1
    said = caplog.messages
    assert any("cannot raise the health alert rules_reload_failed" in m for m in said)
    assert sum("heartbeat after reload failed" in m for m in said) == 2


def test_a_refusal_is_reported_in_bounded_form(tmp_path):
    # README: rules.last_reload_error keeps the first 1,000 characters; the health alert's
    # message names the first five reasons (" ..." when there are more), its details up to 100
    from sensor.deliver.spool import Spool
    rules = tmp_path / "rules"
    rules.mkdir()
    write_pack(rules / "a.pack", gen_rules(1))
    cfg = parse({"rules": {"paths": [str(rules)], "builtin": False, "watch_s": 0},
                 "sensor": {"data_dir": str(tmp_path / "data"), "control": False}}, "<test>")
    spool = Spool(str(tmp_path / "spool.sqlite"))
    try:
        pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0, spool=spool)
        reloader = reload_mod.Reloader(pipe, cfg)
        seen = 0

        def refuse(n_broken):
            nonlocal seen
            for i in range(n_broken):
                (rules / f"b{i:03d}.yml").write_text("title: broken\ndetection: {condition: x}\n")
            res = reloader.reload("control")
            assert not res.ok and len(res.errors) == n_broken + 1     # one per file, a summary
            rows = _health_rows(spool)[seen:]
            seen += len(rows)
            assert len(rows) == 1
            return res, rows[0]

        res, doc = refuse(4)                   # five reasons: all named, nothing left out
        msg = doc["health"]["message"]
        assert msg == "rule reload (control) refused: " + "; ".join(res.errors)
        assert not msg.endswith(" ...")
        res, doc = refuse(5)                   # six: the first five, then " ..."
        assert doc["health"]["message"] == ("rule reload (control) refused: "
                                            + "; ".join(res.errors[:5]) + " ...")
        assert len(doc["health"]["errors"]) == 6
        res, doc = refuse(100)                 # 101 reasons
        assert doc["health"]["errors"] == res.errors[:100]
        last = pipe.reload_stats["last_error"]
        assert last == "; ".join(res.errors)[:1000] and len(last) == 1000
        assert pipe.health().rules.last_reload_error == last
    finally:
        spool.close()


def test_the_log_line_of_a_reload_names_the_keys_needing_a_restart(tmp_path, caplog):
    path, sections = _file_config(tmp_path)
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    reloader = reload_mod.Reloader(pipe, reload_mod.load_config(str(path)))
    with caplog.at_level("INFO", logger="sensor.reload"):
        assert reloader.reload("control").ok
        _rewrite(path, sections, sensor=dict(sections["sensor"], queue_size=999))
        res = reloader.reload("control")
    assert res.ok and res.restart_needed == ["sensor.queue_size"]
    lines = [m for m in caplog.messages if m.startswith("rules reloaded (control)")]
    assert len(lines) == 2
    assert "restart needed" not in lines[0]
    assert lines[1].endswith("; restart needed for sensor.queue_size")
    assert pipe.reload_stats["restart_needed"] == ["sensor.queue_size"]


def test_a_reload_applies_the_live_config(tmp_path):
    # README: the log level and the CPU limit apply live (the CPU limit through the callback
    # the sensor gives the reloader)
    import logging
    path, sections = _file_config(tmp_path)
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    seen = []
    reloader = reload_mod.Reloader(pipe, reload_mod.load_config(str(path)), on_config=seen.append)
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.INFO)
        _rewrite(path, sections, logging={"level": "error"},
                 sensor=dict(sections["sensor"], cpu_limit_percent=20))
        res = reloader.reload("control")
        assert res.ok and set(res.live) == {"logging.level", "sensor.cpu_limit_percent"}
        assert root.level == logging.ERROR
        assert seen and seen[-1].sensor.cpu_limit_percent == 20 and seen[-1].logging.level == "error"
        assert reloader.cfg.sensor.cpu_limit_percent == 20
    finally:
        root.setLevel(level)


def test_a_reload_that_changes_the_update_section_starts_the_polling_over(tmp_path):
    # README: a changed [rules.update] starts its polling over (the first poll at once); a reload
    # that leaves it as it was keeps the poll's schedule and counters
    path, sections = _file_config(tmp_path)
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    reloader = reload_mod.Reloader(pipe, reload_mod.load_config(str(path)))
    assert reloader.poller is None and "update" not in pipe.reload_stats
    url = "https://127.0.0.1:9/rules.pack"               # never fetched here
    _rewrite(path, sections, rules__update={"url": url, "interval_s": 600})
    assert reloader.reload("control").ok
    first = reloader.poller
    assert first is not None and first.interval == 600
    assert pipe.reload_stats["update"]["url"] == url
    assert _first_wait(reloader) <= 0                      # its first poll is due at once
    reloader._next_poll = time.monotonic() + 600           # as after a poll
    first.stats["polls"] = 1
    reloader._publish_update_stats()
    _rewrite(path, sections, throttle={"window_s": 5})      # the update section as it was
    assert reloader.reload("control").ok
    assert reloader.poller is first and not first._aborter.aborted
    assert _first_wait(reloader) > 0 and pipe.reload_stats["update"]["polls"] == 1
    _rewrite(path, sections, rules__update={"url": url, "interval_s": 900})
    assert reloader.reload("control").ok
    assert reloader.poller is not first and reloader.poller.interval == 900
    assert first._aborter.aborted                          # the old one is closed
    assert _first_wait(reloader) <= 0 and pipe.reload_stats["update"]["polls"] == 0


def test_a_reload_waits_for_the_worker_as_documented(tmp_path):
    # docs/threads.md: a swap waits for the worker to take the set up to 10 s
    pipe, reloader, _ = _idle_pipeline(tmp_path)
    waits = []
    real_swap = pipe.swap_rules
    pipe.swap_rules = lambda new, wait=None: (waits.append(wait), real_swap(new, wait=wait))[1]
    assert reloader.reload("control").ok
    assert waits == [10.0]


def test_the_answer_times_the_reload_to_the_millisecond(tmp_path, monkeypatch):
    import types
    pipe, reloader, _ = _idle_pipeline(tmp_path)
    ticks = iter([100.0, 100.0123456])
    monkeypatch.setattr(reload_mod, "time", types.SimpleNamespace(
        perf_counter=lambda: next(ticks), monotonic=time.monotonic, time=time.time))
    res = reloader.reload("control")
    assert res.ok and res.seconds == 0.012 and res.as_dict()["seconds"] == 0.012


def test_a_reload_turns_the_throttle_on_and_off(tmp_path):
    # README: the throttle applies live; window_s > 0 suppresses repeats, 0 turns it off
    path, sections = _file_config(tmp_path)
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    reloader = reload_mod.Reloader(pipe, reload_mod.load_config(str(path)))
    ev = {"Image": "C:\\x\\a.exe", "CommandLine": "a"}

    def repeat_suppressed():
        t = pipe.throttle
        if t is None:
            return False
        t.clock = lambda: 5000.0                # both alerts at the same instant
        return t.allow("r", ev) and not t.allow("r", ev)

    assert not repeat_suppressed()
    _rewrite(path, sections, throttle={"window_s": 1})
    assert reloader.reload("control").ok and repeat_suppressed()
    assert pipe.throttle.window == 1.0
    _rewrite(path, sections, throttle={"window_s": 0})
    assert reloader.reload("control").ok and not repeat_suppressed()


def test_the_noise_counts_and_open_throttle_windows_outlive_a_reload(tmp_path, caplog):
    # README (Health): noise.* count what noise control suppressed since the start; the log
    # reports each closed throttle window's count. A reload rebuilds the exclusions and may turn
    # the throttle off: the counts so far stay in the status, and the windows still open are
    # closed with their counts logged
    path, sections = _file_config(tmp_path)
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    reloader = reload_mod.Reloader(pipe, reload_mod.load_config(str(path)))
    import logging

    def write(window_s: int, image: str) -> None:
        sections["throttle"] = {"window_s": window_s}
        path.write_text(_toml(sections) + f"[[exclusions]]\nmatch = {{ image = '*\\{image}' }}\n")

    write(60, "quiet.exe")
    assert reloader.reload("control").ok
    ev = {"Image": "C:\\x\\a.exe", "CommandLine": "a"}
    t = pipe.throttle
    assert t.allow("r", ev) and not t.allow("r", ev) and not t.allow("r", ev)
    ev2 = dict(ev, CommandLine="b")                         # a second window of the same rule
    assert t.allow("r", ev2) and not t.allow("r", ev2)
    hits = pipe.exclusions.matching({"Image": "C:\\x\\quiet.exe"})
    assert pipe.exclusions.drops_event(hits)
    before = pipe.health().noise
    assert before.throttled == {"r": 3} and before.excluded_events == 1
    write(0, "other.exe")
    with caplog.at_level(logging.INFO, logger="sensor.pipeline"):
        assert reloader.reload("control").ok
    assert pipe.throttle is None
    # one line for the rule, however many of its windows closed
    assert caplog.text.count("throttle: suppressed") == 1
    assert "throttle: suppressed 3 repeat(s) of rule r in 2 window(s) of 60 s" in caplog.text
    after = pipe.health().noise
    assert after.throttled == {"r": 3} and after.excluded_events == 1
    hits = pipe.exclusions.matching({"Image": "C:\\x\\other.exe"})
    assert pipe.exclusions.drops_event(hits)
    assert pipe.health().noise.excluded_events == 2


def test_a_stop_during_the_load_of_a_reload_asked_for_directly_answers_it_abandoned(tmp_path, monkeypatch):
    # The control channel's thread runs the reload itself: a stop that ends its load must give
    # that thread an answer, not an exception
    import sensor.detect.loader as loader_mod
    entered, release = threading.Event(), threading.Event()
    real_load_file = loader_mod._load_file

    def held_load_file(path, *args, **kwargs):
        entered.set()
        release.wait(WAIT)
        return real_load_file(path, *args, **kwargs)

    pipe, reloader, beats = _idle_pipeline(tmp_path, n_files=2)
    monkeypatch.setattr(loader_mod, "_load_file", held_load_file)
    out: list = []

    def ask():
        try:
            out.append(reloader.reload("control"))
        except BaseException as exc:  # noqa: BLE001 - what the caller would have got
            out.append(exc)
    t = threading.Thread(target=ask, daemon=True)
    t.start()
    try:
        assert entered.wait(WAIT)
        reloader.stop()
    finally:
        release.set()
    t.join(WAIT)
    assert len(out) == 1 and isinstance(out[0], reload_mod.ReloadResult), out
    assert not out[0].ok and "abandoned" in out[0].errors[0]
    assert pipe.generation == 0 and "reload" not in beats


def test_a_set_that_cannot_be_compiled_is_refused(tmp_path):
    # An exclusion whose regular expression does not compile passes the config's own checks;
    # the reload refuses it like a bad rule, and the running set stays
    path, sections = _file_config(tmp_path)
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    reloader = reload_mod.Reloader(pipe, reload_mod.load_config(str(path)))
    text = path.read_text() + '[[exclusions]]\nmatch = { "image|re" = "(" }\n'
    path.write_text(text)
    res = reloader.reload("control")
    assert not res.ok and res.errors[-1].startswith("rules: cannot compile: ")
    assert "invalid regular expression" in res.errors[-1]
    assert pipe.generation == 0 and pipe.reload_stats["failures"] == 1


def test_a_reload_that_removes_the_update_url_stops_naming_it_in_the_status(tmp_path):
    # status rules.update is "the update URL's polls": once a reload removed the URL, nothing is
    # polled and the status names no URL (before: the removed URL and its counters stayed)
    url = "https://127.0.0.1:9/rules.pack"               # never fetched here
    path, sections = _file_config(tmp_path, rules__update={"url": url})
    pipe = Pipeline(source=CountingSource(), rules=gen_rules(0), heartbeat_interval=0)
    reloader = reload_mod.Reloader(pipe, reload_mod.load_config(str(path)))
    first = reloader.poller
    assert pipe.health().rules.update.url == url
    _rewrite(path, sections, rules__update={})
    assert reloader.reload("control").ok
    assert reloader.poller is None and first._aborter.aborted
    assert _first_wait(reloader) is None                   # no poll to wait for (watch_s 0)
    assert pipe.health().rules.update.url == ""
    assert pipe.health().rules.update.polls == 0
